//! CPU time of a process tree, from `/proc/<pid>/stat` (Linux; read with the `procfs` crate).
//!
//! For each live process in the tree we add `utime + stime + cutime + cstime`. A child that
//! exited and was reaped has its time added to its parent's `cutime/cstime`, so a server that
//! forks a process per session (Dovecot) is measured completely as long as its master is a
//! root of the tree. Threads are included in their process's figures.

use std::collections::{HashMap, HashSet};

/// `(ppid, utime + stime + cutime + cstime)` in clock ticks.
fn ticks(stat: &procfs::process::Stat) -> (i32, u64) {
    let children = stat.cutime.max(0) as u64 + stat.cstime.max(0) as u64;
    (stat.ppid, stat.utime + stat.stime + children)
}

/// CPU seconds used so far by `roots` and all their descendants (0 for an empty list).
/// Processes that exit while `/proc` is read are skipped.
pub fn tree_cpu_seconds(roots: &[i32]) -> f64 {
    if roots.is_empty() {
        return 0.0;
    }
    let procs: HashMap<i32, (i32, u64)> = procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|p| Some((p.pid, ticks(&p.stat().ok()?))))
        .collect();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (&pid, &(ppid, _)) in &procs {
        children.entry(ppid).or_default().push(pid);
    }
    let mut total = 0u64;
    let mut seen = HashSet::new();
    let mut stack: Vec<i32> = roots.to_vec();
    while let Some(pid) = stack.pop() {
        if !seen.insert(pid) {
            continue;
        }
        if let Some(&(_, t)) = procs.get(&pid) {
            total += t;
        }
        if let Some(c) = children.get(&pid) {
            stack.extend_from_slice(c);
        }
    }
    total as f64 / procfs::ticks_per_second() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_found() {
        let me = std::process::id() as i32;
        // Burn a little CPU so the figure is non-zero on a coarse clock.
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed().as_millis() < 30 {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        assert!(tree_cpu_seconds(&[me]) > 0.0);
        assert_eq!(tree_cpu_seconds(&[]), 0.0);
    }

    #[test]
    fn reaped_children_count_towards_their_root() {
        // A child that does a fixed amount of work (about half a second of CPU, whatever the
        // machine's load) and is then reaped: its time moves into our cutime/cstime and must
        // show up in our tree.
        let me = std::process::id() as i32;
        let before = tree_cpu_seconds(&[me]);
        let st = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done"])
            .status()
            .expect("run sh");
        assert!(st.success());
        let used = tree_cpu_seconds(&[me]) - before;
        assert!(used >= 0.2, "the child's CPU is not counted: {used} s");
    }
}
