//! The maildrop lock: one POP3 session per maildrop, across cores, processes and hosts.
//!
//! Owns: the lock file `corepop-pop3.lock` in the Maildir's root and the rules for taking,
//! recognising as stale, and releasing it.
//!
//! Design. A held lock must not cost a file descriptor (one process serves ~19,000 logged-in
//! sessions under a 20,000-fd limit), so the lock is a *token written into the file*, not an
//! open `flock`. `flock` is used only for the few microseconds it takes to read and write the
//! token, which makes take-over of a stale lock race-free. The token is
//! `pid starttime host nonce seq` (`seq` makes every lock's token unique, so releasing an old
//! lock never clears a newer one):
//! - same host, same pid and nonce as this process: held if a session of this process holds
//!   it, according to the in-process set of held Maildirs (so a release that could not be
//!   written, e.g. for want of a free descriptor, does not leave the maildrop locked);
//! - same host, another pid: held while that pid runs with the same start time (a crashed
//!   owner, or a pid reused by an unrelated process, makes it stale);
//! - another host (NFS): held until the file is older than [`FOREIGN_STALE`].
//!
//! The file itself is never unlinked (unlinking a file others may have open would split the
//! `flock`); releasing truncates it to empty.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// Name of the lock file inside a Maildir.
pub const LOCK_FILE: &str = "corepop-pop3.lock";

/// A lock from another host is taken over after this long without change.
pub const FOREIGN_STALE: Duration = Duration::from_secs(2 * 3600);

/// Why the lock was not taken.
#[derive(Debug)]
pub enum LockError {
    /// Another live session holds it.
    InUse,
    /// The lock file could not be used.
    Io(io::Error),
}

impl From<io::Error> for LockError {
    fn from(e: io::Error) -> Self {
        LockError::Io(e)
    }
}

struct Identity {
    pid: u32,
    start: u64,
    host: String,
    nonce: u64,
}

fn identity() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| {
        let pid = std::process::id();
        Identity {
            pid,
            start: process_start(pid).unwrap_or(0),
            host: hostname(),
            nonce: rand::random(),
        }
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().replace(char::is_whitespace, "_"))
        .unwrap_or_else(|_| "localhost".into())
}

/// Start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat).
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip past its last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

/// A number unique to one lock of this process: with the process identity it makes the
/// lock's token ([`token`]), so releasing an old lock can never clear a newer one.
fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    SEQ.fetch_add(1, Ordering::Relaxed)
}

/// The token of this process's lock number `seq`, as written into the lock file. Held locks
/// keep only `seq` and make the text again when they need it (at release): one string less
/// per logged-in session.
fn token(seq: u64) -> String {
    let id = identity();
    format!("{} {} {} {} {seq}\n", id.pid, id.start, id.host, id.nonce)
}

/// Maildirs whose lock a session of this process holds. The file's token says which process
/// holds a lock; for this process, this set is the truth: a lock whose release could not be
/// written (no free descriptor, I/O error) is not left held for the life of the process.
/// Touched only at login and logout.
/// The set shares each path with the lock that holds it (one allocation per held lock).
fn held_here() -> &'static std::sync::Mutex<std::collections::HashSet<Arc<Path>>> {
    static HELD: OnceLock<std::sync::Mutex<std::collections::HashSet<Arc<Path>>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

/// Is the lock of `path` described by `content` (modified at `mtime`) held by a live owner?
fn is_held(path: &Path, content: &str, mtime: Option<SystemTime>) -> bool {
    let mut f = content.split_whitespace();
    let (Some(pid), Some(start), Some(host), Some(nonce)) =
        (f.next(), f.next(), f.next(), f.next())
    else {
        return false; // empty or garbage: not held
    };
    let id = identity();
    if host != id.host {
        let age = mtime.and_then(|m| SystemTime::now().duration_since(m).ok());
        return age.is_none_or(|a| a < FOREIGN_STALE);
    }
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return false;
    };
    if pid == id.pid {
        return nonce.parse::<u64>().ok() == Some(id.nonce)
            && held_here().lock().is_ok_and(|h| h.contains(path));
    }
    process_start(pid) == Some(start)
}

/// A held maildrop lock. Released by [`MaildropLock::release`] or on drop.
#[derive(Debug)]
pub struct MaildropLock {
    path: Arc<Path>,
    /// This lock's number; its token is [`token`]`(seq)`.
    seq: u64,
    released: bool,
}

fn open_locked(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        // Never follow a link planted in the Maildir: the file is truncated and written.
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    // flock(2), held only while the token is read or written; closing `f` releases it.
    f.lock()?;
    Ok(f)
}

impl MaildropLock {
    /// Takes the lock of the Maildir at `maildir`. Blocking: call it off the executor.
    pub fn acquire(maildir: &Path) -> Result<Self, LockError> {
        let path: Arc<Path> = maildir.join(LOCK_FILE).into();
        let mut f = open_locked(&path)?;
        let mut content = String::new();
        let _ = f.read_to_string(&mut content);
        let meta = f.metadata().ok();
        let mtime = meta.as_ref().and_then(|m| m.modified().ok());
        if is_held(&path, &content, mtime) {
            return Err(LockError::InUse);
        }
        let seq = next_seq();
        // A released lock is an empty file, and the read left us at its start: the token is
        // simply written. Anything else (a stale token, unreadable bytes) is cut first.
        if meta.is_none_or(|m| m.len() != 0) {
            f.set_len(0)?;
            f.rewind()?;
        }
        f.write_all(token(seq).as_bytes())?;
        // Still under flock, so no other session of this process can look in between.
        if let Ok(mut h) = held_here().lock() {
            h.insert(path.clone());
        }
        Ok(Self {
            path,
            seq,
            released: false,
        })
    }

    /// Releases the lock (if the file still holds our token). Blocking.
    pub fn release(mut self) -> io::Result<()> {
        self.released = true;
        release(&self.path, self.seq)
    }
}

fn release(path: &Path, seq: u64) -> io::Result<()> {
    // Forget it here first: even if the file cannot be rewritten, the lock is free for the
    // next session of this process.
    if let Ok(mut h) = held_here().lock() {
        h.remove(path);
    }
    let mut f = open_locked(path)?;
    let mut content = String::new();
    f.read_to_string(&mut content)?;
    if content == token(seq) {
        f.set_len(0)?;
    }
    Ok(())
}

impl Drop for MaildropLock {
    fn drop(&mut self) {
        if !self.released {
            if let Err(e) = release(&self.path, self.seq) {
                tracing::warn!(path = %self.path.display(), error = %e, "could not release maildrop lock");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(LOCK_FILE)).unwrap();
        assert!(matches!(
            MaildropLock::acquire(dir.path()),
            Err(LockError::Io(_))
        ));
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn exclusive_then_released() {
        let dir = tempfile::tempdir().unwrap();
        let a = MaildropLock::acquire(dir.path()).unwrap();
        assert!(matches!(
            MaildropLock::acquire(dir.path()),
            Err(LockError::InUse)
        ));
        a.release().unwrap();
        let b = MaildropLock::acquire(dir.path()).unwrap();
        drop(b);
        MaildropLock::acquire(dir.path())
            .unwrap()
            .release()
            .unwrap();
    }

    #[test]
    fn stale_locks_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        let id = identity();
        // A dead process on this host (pid far beyond pid_max), a reused pid (our parent's pid
        // with a wrong start time), this process in an earlier life (other nonce), garbage.
        for stale in [
            format!("4194399 1 {} 7\n", id.host),
            format!("{} 1 {} 7\n", std::os::unix::process::parent_id(), id.host),
            format!(
                "{} {} {} {}\n",
                id.pid,
                id.start,
                id.host,
                id.nonce.wrapping_add(1)
            ),
            "garbage".to_string(),
            "x".repeat(300),
            String::new(),
        ] {
            std::fs::write(&path, &stale).unwrap();
            let l = MaildropLock::acquire(dir.path()).expect(&stale);
            // Exactly our token: nothing of a longer stale one is left behind it.
            assert_eq!(std::fs::read_to_string(&path).unwrap(), token(l.seq));
            l.release().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), b"", "released: empty");
        }
        // Bytes that are not UTF-8 (unreadable as a token) are replaced whole too.
        std::fs::write(&path, [0xff_u8; 200]).unwrap();
        let l = MaildropLock::acquire(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), token(l.seq));
        l.release().unwrap();
        // A live process on this host (our parent, with its real start time) holds it.
        let ppid = std::os::unix::process::parent_id();
        let held = format!("{} {} {} 1\n", ppid, process_start(ppid).unwrap(), id.host);
        std::fs::write(&path, &held).unwrap();
        assert!(matches!(
            MaildropLock::acquire(dir.path()),
            Err(LockError::InUse)
        ));
        // Another host: held while fresh.
        std::fs::write(&path, "1 1 other-host 1\n").unwrap();
        assert!(matches!(
            MaildropLock::acquire(dir.path()),
            Err(LockError::InUse)
        ));
    }
}
