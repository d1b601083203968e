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
//!   lock `seq`, according to the in-process set of held lock numbers (so a release that
//!   could not be written, e.g. for want of a free descriptor, does not leave the maildrop
//!   locked; and one Maildir reached by two spellings of its path is still one lock);
//! - same host, another pid: held while that pid runs with the same start time (a crashed
//!   owner, or a pid reused by an unrelated process, makes it stale). Only "no such process"
//!   makes it stale: if `/proc` cannot be read (no free descriptor, no permission), or the
//!   lock file itself cannot, the lock is not taken (an I/O error), never taken over;
//! - another host (NFS): held until the file is older than [`FOREIGN_STALE`].
//!
//! The file itself is never unlinked (unlinking a file others may have open would split the
//! `flock`); releasing truncates it to empty. It is used only if it is a regular file with
//! one link: a symbolic link, hard link or FIFO planted in a Maildir is refused, so the
//! server never truncates or writes a file it shares a name with, nor waits on a FIFO.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::OnceLock;
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
            start: process_start(pid).ok().flatten().unwrap_or(0),
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

/// Start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat); `None` if
/// there is no such process. Any other failure (no free descriptor, no permission, a format
/// not understood) is an error: it says nothing about whether the process runs.
fn process_start(pid: u32) -> io::Result<Option<u64>> {
    let stat = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        // ESRCH: it ended between the open and the read.
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    // The command name (field 2) may contain spaces and parentheses: skip past its last ')'.
    stat.rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .and_then(|after| after.split(' ').nth(19)?.parse().ok())
        .map(Some)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("/proc/{pid}/stat")))
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

/// Numbers (`seq`) of the locks a session of this process holds. The file's token says which
/// process holds a lock and which lock it is; for this process, this set is the truth: a lock
/// whose release could not be written (no free descriptor, I/O error) is not left held for
/// the life of the process. Keyed by lock number, not by path, so a Maildir reached by two
/// spellings of its path (a symbolic link, `..`, two users' `mail=`) is still one lock.
/// Touched only at login and logout.
fn held_here() -> &'static std::sync::Mutex<std::collections::HashSet<u64>> {
    static HELD: OnceLock<std::sync::Mutex<std::collections::HashSet<u64>>> = OnceLock::new();
    HELD.get_or_init(Default::default)
}

/// Is the lock described by `content` (modified at `mtime`) held by a live owner? An error
/// if that cannot be found out (the owner's `/proc` entry unreadable): not a dead owner.
fn is_held(content: &str, mtime: Option<SystemTime>) -> io::Result<bool> {
    let mut f = content.split_whitespace();
    let (Some(pid), Some(start), Some(host), Some(nonce)) =
        (f.next(), f.next(), f.next(), f.next())
    else {
        return Ok(false); // empty or garbage: not held
    };
    let id = identity();
    if host != id.host {
        let age = mtime.and_then(|m| SystemTime::now().duration_since(m).ok());
        return Ok(age.is_none_or(|a| a < FOREIGN_STALE));
    }
    let (Ok(pid), Ok(start)) = (pid.parse::<u32>(), start.parse::<u64>()) else {
        return Ok(false);
    };
    if pid == id.pid {
        let seq = f.next().and_then(|s| s.parse::<u64>().ok());
        return Ok(nonce.parse::<u64>().ok() == Some(id.nonce)
            && seq.is_some_and(|seq| held_here().lock().is_ok_and(|h| h.contains(&seq))));
    }
    Ok(process_start(pid)? == Some(start))
}

/// A held maildrop lock. Released by [`MaildropLock::release`] or on drop.
#[derive(Debug)]
pub struct MaildropLock {
    path: Box<Path>,
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
    // Only the file corepop made: not a FIFO (reading it would wait forever) or a device,
    // nor a hard link to a file that has another name (it would be truncated and written).
    let meta = f.metadata()?;
    if !meta.file_type().is_file() || meta.nlink() != 1 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a regular file with one link; remove it",
                path.display()
            ),
        ));
    }
    // flock(2), held only while the token is read or written; closing `f` releases it.
    f.lock()?;
    Ok(f)
}

impl MaildropLock {
    /// Takes the lock of the Maildir at `maildir`. Blocking: call it off the executor.
    pub fn acquire(maildir: &Path) -> Result<Self, LockError> {
        let path = maildir.join(LOCK_FILE).into_boxed_path();
        let mut f = open_locked(&path)?;
        // A read that fails is not an empty (free) lock: the error ends the login.
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        let content = std::str::from_utf8(&bytes).unwrap_or(""); // not UTF-8: garbage, stale
        let meta = f.metadata().ok();
        let mtime = meta.as_ref().and_then(|m| m.modified().ok());
        if is_held(content, mtime)? {
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
            h.insert(seq);
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
        h.remove(&seq);
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
        let held = format!(
            "{} {} {} 1\n",
            ppid,
            process_start(ppid).unwrap().unwrap(),
            id.host
        );
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

    /// One Maildir reached by two spellings of its path (a symlinked home, `..`, two users'
    /// `mail=` for one Maildir): still one session at a time within this process.
    #[test]
    fn one_maildir_by_two_paths_is_still_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("alias")).unwrap();
        let a = MaildropLock::acquire(&real).unwrap();
        for other in [dir.path().join("alias"), real.join("..").join("real")] {
            assert!(
                matches!(MaildropLock::acquire(&other), Err(LockError::InUse)),
                "{}",
                other.display()
            );
        }
        a.release().unwrap();
        MaildropLock::acquire(&dir.path().join("alias"))
            .unwrap()
            .release()
            .unwrap();
    }

    /// A hard link planted as the lock file: the file it shares (another user's message,
    /// anything the server may write) is neither truncated nor written.
    #[test]
    fn a_planted_hard_link_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious mail").unwrap();
        std::fs::hard_link(&victim, dir.path().join(LOCK_FILE)).unwrap();
        assert!(matches!(
            MaildropLock::acquire(dir.path()),
            Err(LockError::Io(_))
        ));
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious mail");
    }

    /// A FIFO planted as the lock file: login fails at once instead of a blocking-pool thread
    /// waiting forever to read it (a few such logins would stall every login).
    #[test]
    fn a_planted_fifo_does_not_hang_the_login() {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mkfifo")
            .arg(dir.path().join(LOCK_FILE))
            .status()
            .unwrap();
        assert!(ok.success());
        let (tx, rx) = std::sync::mpsc::channel();
        let root = dir.path().to_owned();
        std::thread::spawn(move || {
            let _ = tx.send(matches!(
                MaildropLock::acquire(&root),
                Err(LockError::Io(_))
            ));
        });
        let refused = rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(refused, Ok(true), "acquire must fail, not block");
    }

    /// When whether the owner lives cannot be found out (here: no descriptor left to read
    /// `/proc/<pid>/stat` with, as when ~19,000 sessions fill the limit), the lock is not
    /// taken over: a live owner's session would be doubled. Runs in a child process, whose
    /// descriptors it may use up without disturbing the other tests.
    #[test]
    fn an_owner_that_cannot_be_checked_is_not_taken_for_dead() {
        const CHILD: &str = "COREPOP_LOCK_TEST_CHILD";
        let name = concat!(
            module_path!(),
            "::an_owner_that_cannot_be_checked_is_not_taken_for_dead"
        );
        let name = name.split_once("::").unwrap().1;
        if std::env::var_os(CHILD).is_none() {
            let status = std::process::Command::new("sh")
                .args(["-c", "ulimit -n 256 && exec \"$0\" \"$@\""])
                .arg(std::env::current_exe().unwrap())
                .args(["--exact", name, "--test-threads=1", "--nocapture"])
                .env(CHILD, "1")
                .status()
                .unwrap();
            assert!(status.success(), "child: {status}");
            return;
        }
        // The child: the lock is held by its parent, a live process on this host.
        let dir = tempfile::tempdir().unwrap();
        let id = identity();
        let ppid = std::os::unix::process::parent_id();
        let start = process_start(ppid).unwrap().unwrap();
        let held = format!("{ppid} {start} {} 1 0\n", id.host);
        std::fs::write(dir.path().join(LOCK_FILE), &held).unwrap();
        // Leave exactly one descriptor free: the lock file takes it.
        let mut hog = Vec::new();
        while let Ok(f) = File::open("/dev/null") {
            hog.push(f);
        }
        hog.pop();
        let r = MaildropLock::acquire(dir.path());
        drop(hog);
        assert!(
            matches!(r, Err(LockError::Io(_))),
            "a live owner's lock was taken over"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap(),
            held
        );
    }
}
