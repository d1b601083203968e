//! Spreading connections evenly over the executors.
//!
//! Owns: the count of open connections per executor, and the rule that an executor holding
//! clearly more than the least loaded one pauses before accepting. Every executor accepts from
//! the same listening socket (one per address, `sys::listeners`), so a connection one executor
//! leaves in the queue is taken by another.
//!
//! Why: with a socket per executor (SO_REUSEPORT) the kernel's hash picks the executor when
//! the connection arrives, and nothing pulls the executors' counts back together afterwards;
//! the busier executor's sessions then take longer. Measured on 2 executors, 256 closed-loop
//! full-download sessions: p99 / p50 2.2 with per-executor sockets, 1.5 with this rule
//! (`docs/benchmarks.md` §2).
//!
//! The counts are relaxed atomics, touched once per connection at accept and at close; no
//! lock, and nothing on the per-command path.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

/// Connections an executor may hold above the least loaded one and still accept at once.
const SLACK: usize = 2;
/// How long an executor that is ahead waits before looking again.
const PAUSE: Duration = Duration::from_micros(500);
/// At most this many pauses in a row (5 ms): an executor that has stalled must not leave new
/// connections waiting in the queue because it looks least loaded.
const MAX_PAUSES: u32 = 10;

/// Open connections per executor, shared by all of them.
#[derive(Debug)]
pub(crate) struct Balance {
    open: Box<[AtomicUsize]>,
    joined: AtomicUsize,
}

impl Balance {
    pub fn new(executors: usize) -> Balance {
        Balance {
            open: (0..executors.max(1)).map(|_| AtomicUsize::new(0)).collect(),
            joined: AtomicUsize::new(0),
        }
    }

    /// An executor's index, once per executor at start-up.
    pub fn join(&self) -> usize {
        self.joined.fetch_add(1, Relaxed) % self.open.len()
    }

    pub fn opened(&self, executor: usize) {
        self.open[executor].fetch_add(1, Relaxed);
    }

    pub fn closed(&self, executor: usize) {
        self.open[executor].fetch_sub(1, Relaxed);
    }

    /// Connections open now on each executor (for the metrics).
    pub fn counts(&self) -> Vec<u64> {
        self.open.iter().map(|o| o.load(Relaxed) as u64).collect()
    }

    /// True when `executor` holds more than [`SLACK`] connections above another executor.
    fn ahead(&self, executor: usize) -> bool {
        let mine = self.open[executor].load(Relaxed);
        self.open.iter().any(|o| o.load(Relaxed) + SLACK < mine)
    }

    /// Returns when `executor` should accept its next connection: at once unless it is
    /// ahead, else once it no longer is, or after [`MAX_PAUSES`] pauses.
    pub async fn my_turn(&self, executor: usize) {
        for _ in 0..MAX_PAUSES {
            if !self.ahead(executor) {
                return;
            }
            glommio::timer::sleep(PAUSE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_executor_clearly_above_the_least_loaded_one_waits() {
        let b = Balance::new(3);
        let (x, y, z) = (b.join(), b.join(), b.join());
        assert_eq!((x, y, z), (0, 1, 2));
        for _ in 0..3 {
            b.opened(x);
        }
        // 3 vs 0: ahead by more than the slack.
        assert!(b.ahead(x));
        assert!(!b.ahead(y) && !b.ahead(z));
        b.opened(y);
        b.opened(z);
        // 3 vs 1 and 1: within the slack.
        assert!(!b.ahead(x));
        b.opened(x);
        assert!(b.ahead(x));
        b.closed(x);
        assert!(!b.ahead(x));
    }

    #[test]
    fn a_single_executor_never_waits() {
        let b = Balance::new(1);
        let me = b.join();
        for _ in 0..100 {
            b.opened(me);
        }
        assert!(!b.ahead(me));
    }
}
