//! Waking an executor that has stopped making progress.
//!
//! Owns: a heartbeat per executor (a timer task on the executor counts up every [`BEAT`]) and
//! the thread that watches them: when an executor's count has not moved for [`STALL`], the
//! thread sends that executor's thread a signal whose handler does nothing, counts it for the
//! metrics and logs a warning.
//!
//! Why: under load on the project's test machine an executor was seen asleep in io_uring,
//! with nothing to collect, while every one of its connections (128 at the time) held an
//! unread command, for 10–30 s, until something interrupted the thread (a debugger attaching;
//! docs/benchmarks.md §1). An interrupted wait returns `EINTR`, the kernel runs the thread's
//! pending io_uring work on the way, and glommio goes round its loop and finds the
//! completions. The cause is below us (glommio or the kernel) and was not found; this bounds
//! what it can cost to about [`STALL`], and the count shows whether it happens.
//!
//! A busy executor (a task that runs long without yielding) also misses beats; the signal
//! costs it nothing (the handler only sets a flag, and system calls restart).
//! Costs when idle: each executor wakes every [`BEAT`], the watch thread every [`CHECK`].

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sys;

/// How often an executor's heartbeat counts up.
const BEAT: Duration = Duration::from_millis(100);
/// How often the watch thread looks.
const CHECK: Duration = Duration::from_millis(250);
/// No heartbeat for this long: the executor's thread is interrupted.
pub const STALL: Duration = Duration::from_secs(1);
/// Default-ignored, so a stray one (after a thread id was reused) does nothing.
const SIGNAL: i32 = signal_hook::consts::SIGURG;

/// Per-executor heartbeats, thread ids and interruption counts, shared with the watch thread.
#[derive(Debug)]
pub(crate) struct Watchdog {
    beats: Box<[AtomicU64]>,
    /// The executor's thread id, 0 while it is not running.
    tids: Box<[AtomicI32]>,
    wakeups: Box<[AtomicU64]>,
    stall: Duration,
}

/// What the watch thread remembers about one executor between looks.
#[derive(Clone, Copy)]
struct Seen {
    beat: u64,
    since: Instant,
}

impl Watchdog {
    pub fn new(executors: usize, stall: Duration) -> Arc<Watchdog> {
        let n = executors.max(1);
        Arc::new(Watchdog {
            beats: (0..n).map(|_| AtomicU64::new(0)).collect(),
            tids: (0..n).map(|_| AtomicI32::new(0)).collect(),
            wakeups: (0..n).map(|_| AtomicU64::new(0)).collect(),
            stall,
        })
    }

    /// Called on the executor's own thread when it starts: records the thread and starts its
    /// heartbeat task (dropped with the executor).
    pub fn watch(self: &Arc<Self>, executor: usize) {
        self.register(executor);
        let me = Arc::clone(self);
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(BEAT).await;
                me.beat(executor);
            }
        })
        .detach();
    }

    fn register(&self, executor: usize) {
        self.tids[executor].store(sys::thread_id(), Relaxed);
    }

    /// Called when the executor stops: it is no longer watched.
    pub fn unregister(&self, executor: usize) {
        self.tids[executor].store(0, Relaxed);
    }

    /// Counts one heartbeat of `executor`. Private: only the task that [`Watchdog::watch`]
    /// starts (and this module's tests) may beat, so a beat always means the executor ran.
    fn beat(&self, executor: usize) {
        self.beats[executor].fetch_add(1, Relaxed);
    }

    /// Interruptions so far, by executor (for the metrics).
    pub fn wakeups(&self) -> Vec<u64> {
        self.wakeups.iter().map(|w| w.load(Relaxed)).collect()
    }

    /// Installs the (empty) signal handler and starts the watch thread. The thread runs until
    /// the process ends.
    pub fn start(self: &Arc<Self>) -> std::io::Result<()> {
        // A handler that sets a flag nobody reads: what matters is that a sleeping system
        // call of the executor's thread returns.
        signal_hook::flag::register(SIGNAL, Arc::new(AtomicBool::new(false)))?;
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("corepop-watchdog".into())
            .spawn(move || {
                let mut seen: Vec<Option<Seen>> = vec![None; me.beats.len()];
                loop {
                    std::thread::sleep(CHECK);
                    me.look(&mut seen, Instant::now());
                }
            })?;
        Ok(())
    }

    /// One look at every executor; interrupts those without a heartbeat for the stall time.
    fn look(&self, seen: &mut [Option<Seen>], now: Instant) {
        for (i, s) in seen.iter_mut().enumerate() {
            let tid = self.tids[i].load(Relaxed);
            let beat = self.beats[i].load(Relaxed);
            match s {
                Some(prev) if tid != 0 && prev.beat == beat => {
                    let quiet = now.saturating_duration_since(prev.since);
                    if quiet >= self.stall {
                        self.wakeups[i].fetch_add(1, Relaxed);
                        tracing::warn!(
                            executor = i,
                            quiet_ms = quiet.as_millis() as u64,
                            "executor made no progress; interrupting its thread"
                        );
                        if let Err(e) = sys::signal_thread(tid, SIGNAL) {
                            tracing::warn!(executor = i, error = %e, "could not signal executor");
                        }
                        // Give it another full stall time before the next signal.
                        prev.since = now;
                    }
                }
                _ => *s = Some(Seen { beat, since: now }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd as _;
    use std::os::unix::net::UnixStream;

    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    /// A thread asleep in a wait that nothing else would end (poll(2) with no timeout on a
    /// socket nobody writes to; like io_uring's wait, it is not restarted after a handled
    /// signal) is interrupted once its heartbeat stops, and the interruption is counted.
    #[test]
    fn a_thread_without_heartbeat_is_interrupted_in_its_wait() {
        let dog = Watchdog::new(2, Duration::from_millis(200));
        dog.start().expect("watch thread");
        let (quiet, _peer) = UnixStream::pair().expect("socket pair");
        let watched = Arc::clone(&dog);
        let sleeper = std::thread::spawn(move || {
            watched.register(1);
            let mut fds = [PollFd::new(quiet.as_fd(), PollFlags::POLLIN)];
            let r = poll(&mut fds, PollTimeout::NONE);
            watched.unregister(1);
            r
        });
        // Executor 0 keeps beating (and is never registered): it is never interrupted.
        for _ in 0..60 {
            dog.beat(0);
            std::thread::sleep(Duration::from_millis(50));
            if sleeper.is_finished() {
                break;
            }
        }
        assert!(
            sleeper.is_finished(),
            "the sleeping thread was not interrupted"
        );
        assert_eq!(
            sleeper.join().expect("thread"),
            Err(nix::errno::Errno::EINTR)
        );
        let w = dog.wakeups();
        assert_eq!(w[0], 0);
        assert!(w[1] >= 1);
    }

    #[test]
    fn beating_executors_and_stopped_ones_are_left_alone() {
        let dog = Watchdog::new(2, Duration::from_millis(100));
        let t0 = Instant::now();
        let mut seen = vec![None; 2];
        dog.register(0);
        // Executor 1 never registered (tid 0): not running, never signalled.
        dog.look(&mut seen, t0);
        for k in 1..10u64 {
            dog.beat(0);
            dog.look(&mut seen, t0 + Duration::from_millis(50 * k));
        }
        assert_eq!(dog.wakeups(), vec![0, 0]);
    }
}
