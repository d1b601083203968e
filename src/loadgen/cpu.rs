//! CPU time of a process tree, from `/proc/<pid>/stat` (Linux).
//!
//! For each live process in the tree we add `utime + stime + cutime + cstime`. A child that
//! exited and was reaped has its time added to its parent's `cutime/cstime`, so a server that
//! forks a process per session (Dovecot) is measured completely as long as its master is a
//! root of the tree. Threads are included in their process's figures.

use std::collections::HashMap;
use std::fs;

/// Clock ticks per second for `/proc` times: `AT_CLKTCK` from the auxiliary vector (what
/// `sysconf(_SC_CLK_TCK)` returns), read without `unsafe`; 100 if unavailable.
pub fn ticks_per_second() -> f64 {
    const AT_NULL: u64 = 0;
    const AT_CLKTCK: u64 = 17;
    let word = std::mem::size_of::<usize>();
    if let Ok(b) = fs::read("/proc/self/auxv") {
        let num = |c: &[u8]| -> u64 {
            let mut v = [0u8; 8];
            if cfg!(target_endian = "little") {
                v[..c.len()].copy_from_slice(c);
                u64::from_le_bytes(v)
            } else {
                v[8 - c.len()..].copy_from_slice(c);
                u64::from_be_bytes(v)
            }
        };
        for pair in b.chunks_exact(2 * word) {
            let (k, v) = (num(&pair[..word]), num(&pair[word..]));
            if k == AT_CLKTCK && v > 0 {
                return v as f64;
            }
            if k == AT_NULL {
                break;
            }
        }
    }
    100.0
}

/// `(ppid, utime + stime + cutime + cstime)` from the text of `/proc/<pid>/stat`.
fn parse_stat(text: &str) -> Option<(i32, u64)> {
    // The command name (field 2) is in parentheses and may contain spaces or ')'.
    let after = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = after.split_ascii_whitespace().collect();
    // After the name: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14).
    let ppid = f.get(1)?.parse().ok()?;
    let mut sum = 0u64;
    for i in 11..=14 {
        sum += f.get(i)?.parse::<i64>().ok()?.max(0) as u64;
    }
    Some((ppid, sum))
}

/// CPU seconds used so far by `roots` and all their descendants (0 for an empty list).
pub fn tree_cpu_seconds(roots: &[i32]) -> f64 {
    if roots.is_empty() {
        return 0.0;
    }
    let mut procs: HashMap<i32, (i32, u64)> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(v) = fs::read_to_string(e.path().join("stat"))
                .ok()
                .and_then(|t| parse_stat(&t))
            {
                procs.insert(pid, v);
            }
        }
    }
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for (&pid, &(ppid, _)) in &procs {
        children.entry(ppid).or_default().push(pid);
    }
    let mut total = 0u64;
    let mut seen = std::collections::HashSet::new();
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
    total as f64 / ticks_per_second()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines() {
        let line = "1234 (pop3 (x) y) S 77 1234 1234 0 -1 4194560 100 0 0 0 15 7 3 2 20 0 1 0";
        assert_eq!(parse_stat(line), Some((77, 15 + 7 + 3 + 2)));
        assert_eq!(parse_stat("garbage"), None);
        let hz = ticks_per_second();
        assert!((10.0..=10_000.0).contains(&hz), "{hz}");
    }

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
}
