//! Storage faults against the real binary. Each fault must give `-ERR [SYS/TEMP]` (or
//! `[SYS/PERM]`, or the plain "removed by another client" `-ERR` for a vanished message) to
//! the affected client only, be logged, and leave other clients and later sessions unharmed.
//!
//! Disk-full and read-only tests mount a small tmpfs over one user's Maildir, so they need
//! root (CI runs as root); without it they print a note and pass without checking.

mod common;
mod robust;

use common::{expected_wire, Fixture, Server};
use robust::RawClient;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn fixture() -> Fixture {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    fx.add_user("bob", "pw");
    for (i, body) in ["one\n", "two\n", "three\n"].iter().enumerate() {
        let m = format!("Subject: {i}\n\n{body}");
        fx.deliver(
            "alice",
            "new",
            &format!("17000000{i:02}.M1P1.f"),
            m.as_bytes(),
        );
    }
    fx.deliver("bob", "new", "1700000000.M1P1.f", b"Subject: bob\n\nhi\n");
    fx.config("");
    fx
}

fn login(server: &Server, user: &str) -> RawClient {
    let mut c = RawClient::connect(server.addr, T).unwrap();
    let r = c.login(user, "pw").unwrap();
    assert!(r.starts_with("+OK"), "{user}: {r}");
    c
}

/// Bob, unaffected, does a whole session.
fn bob_is_fine(server: &Server) {
    let mut c = login(server, "bob");
    let (s, body) = c.multi("RETR 1").unwrap();
    assert!(s.starts_with("+OK"), "{s}");
    assert_eq!(body, expected_wire(b"Subject: bob\n\nhi\n"));
    assert!(c.cmd("QUIT").unwrap().starts_with("+OK"));
}

fn wait_log(server: &Server, needle: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    while !server.stderr_text().contains(needle) {
        assert!(
            Instant::now() < end,
            "log line {needle:?} missing:\n{}",
            server.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn file_of(fx: &Fixture, user: &str, n: usize) -> PathBuf {
    let mut files = fx.maildir_files(user);
    files.sort();
    fx.maildir(user).join(&files[n])
}

#[test]
fn message_vanishing_between_listing_and_retr() {
    let fx = fixture();
    let server = Server::start(&fx, &[]);
    let mut c = login(&server, "alice");
    fs::remove_file(file_of(&fx, "alice", 0)).unwrap();
    let r = c.cmd("RETR 1").unwrap();
    assert!(r.starts_with("-ERR"), "{r}");
    wait_log(&server, "cannot open message");
    // The session goes on; the other messages are served.
    let (s, body) = c.multi("RETR 2").unwrap();
    assert!(s.starts_with("+OK"), "{s}");
    assert_eq!(body, expected_wire(b"Subject: 1\n\ntwo\n"));
    // Deleting the vanished one is not a failure.
    assert!(c.cmd("DELE 1").unwrap().starts_with("+OK"));
    assert!(c.cmd("QUIT").unwrap().starts_with("+OK"));
    bob_is_fine(&server);
}

#[test]
fn unreadable_message_gives_sys_temp() {
    let fx = fixture();
    let server = Server::start(&fx, &[]);
    let mut c = login(&server, "alice");
    // A directory where the message file was: open works, mapping fails (ENODEV).
    let p = file_of(&fx, "alice", 1);
    fs::remove_file(&p).unwrap();
    fs::create_dir(&p).unwrap();
    let r = c.cmd("RETR 2").unwrap();
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    let r = c.cmd("TOP 2 0").unwrap();
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    wait_log(&server, "cannot open message");
    assert!(c.multi("RETR 1").unwrap().0.starts_with("+OK"));
    assert!(c.cmd("QUIT").unwrap().starts_with("+OK"));
    bob_is_fine(&server);
}

#[test]
fn unusable_maildir_gives_sys_temp_to_that_user_only() {
    let fx = fixture();
    let server = Server::start(&fx, &[]);
    let cur = fx.maildir("alice").join("cur");
    fs::remove_dir_all(&cur).unwrap();
    fs::write(&cur, b"not a directory").unwrap();
    let mut c = RawClient::connect(server.addr, T).unwrap();
    c.cmd("USER alice").unwrap();
    let r = c.cmd("PASS pw").unwrap();
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    wait_log(&server, "alice");
    bob_is_fine(&server);
    // Repaired, the next login works and no stale lock is left.
    fs::remove_file(&cur).unwrap();
    fs::create_dir(&cur).unwrap();
    let r = c.cmd("USER alice").unwrap();
    assert!(r.starts_with("+OK"), "{r}");
    let r = c.cmd("PASS pw").unwrap();
    assert!(r.starts_with("+OK"), "{r}");
}

#[test]
fn unwritable_index_does_not_stop_logins() {
    let fx = fixture();
    let index = fx
        .maildir("alice")
        .join(corepop::mailbox::index::INDEX_FILE);
    fs::create_dir(&index).unwrap();
    let server = Server::start(&fx, &[]);
    let mut c = login(&server, "alice");
    let (_, list) = c.multi("LIST").unwrap();
    assert_eq!(robust::listing(&list).len(), 3);
    assert!(c.cmd("QUIT").unwrap().starts_with("+OK"));
    wait_log(&server, "cannot write index");
}

/// A tmpfs of `size` mounted over `dir` for the life of the guard.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("cannot mount a tmpfs (not root?): storage-fault test skipped");
            return None;
        }
        Some(Mount(dir.to_path_buf()))
    }
    fn remount(&self, opt: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {opt}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Alice's Maildir on its own small tmpfs, with three messages.
fn alice_on_tmpfs(fx: &mut Fixture) -> Option<Mount> {
    let dir = fx.maildir("alice");
    let m = Mount::tmpfs(&dir, "256k")?;
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    for (i, body) in ["one\n", "two\n", "three\n"].iter().enumerate() {
        let msg = format!("Subject: {i}\n\n{body}");
        fx.deliver(
            "alice",
            "new",
            &format!("17000000{i:02}.M1P1.f"),
            msg.as_bytes(),
        );
    }
    Some(m)
}

#[test]
fn disk_full_while_writing_the_index() {
    let mut fx = fixture();
    let Some(_mount) = alice_on_tmpfs(&mut fx) else {
        return;
    };
    // Fill the file system: the lock token still fits in the lock file's first block only if
    // it exists already, so log in once to create it, then fill.
    let server = Server::start(&fx, &[]);
    let c = login(&server, "alice");
    drop(c);
    std::thread::sleep(Duration::from_millis(200));
    let index = fx
        .maildir("alice")
        .join(corepop::mailbox::index::INDEX_FILE);
    let _ = fs::remove_file(&index);
    // A new message (no ,W=) makes the login read it and try to write the index: ENOSPC.
    fx.deliver(
        "alice",
        "new",
        "1700000099.M1P1.f",
        b"Subject: new\n\nnew\n",
    );
    let filler = fx.maildir("alice").join("filler");
    let _ = fs::write(&filler, vec![0u8; 1 << 20]); // ENOSPC part-way: the disk is full
                                                    // Free one page: room for the lock token, none for the index.
    let len = fs::metadata(&filler).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(len.saturating_sub(4096))
        .unwrap();
    let mut c = RawClient::connect(server.addr, T).unwrap();
    let r = c.login("alice", "pw").unwrap();
    eprintln!("login on a full disk: {r}");
    let deleted = r.starts_with("+OK");
    if deleted {
        let (_, list) = c.multi("LIST").unwrap();
        assert_eq!(robust::listing(&list).len(), 4);
        let (s, body) = c.multi("RETR 4").unwrap();
        assert!(s.starts_with("+OK"), "{s}");
        assert_eq!(body, expected_wire(b"Subject: new\n\nnew\n"));
        // Deleting needs no space.
        assert!(c.cmd("DELE 4").unwrap().starts_with("+OK"));
        assert!(c.cmd("QUIT").unwrap().starts_with("+OK"));
        wait_log(&server, "cannot write index");
    } else {
        // Refusing the login for lack of space is acceptable only as a temporary failure.
        assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    }
    bob_is_fine(&server);
    fs::remove_file(&filler).unwrap();
    let mut c = login(&server, "alice");
    let (_, list) = c.multi("LIST").unwrap();
    assert_eq!(robust::listing(&list).len(), if deleted { 3 } else { 4 });
    assert!(c.cmd("QUIT").unwrap().starts_with("+OK"));
}

#[test]
fn read_only_maildir_during_update() {
    let mut fx = fixture();
    let Some(mount) = alice_on_tmpfs(&mut fx) else {
        return;
    };
    let server = Server::start(&fx, &[]);
    let mut c = login(&server, "alice");
    assert!(c.cmd("DELE 1").unwrap().starts_with("+OK"));
    // The file system goes read-only (an admin, a failing disk) before QUIT: the unlink fails
    // with EROFS, QUIT says so, and the message stays whole.
    mount.remount("ro");
    let r = c.cmd("QUIT").unwrap();
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    wait_log(&server, "could not delete message");
    assert_eq!(fx.maildir_files("alice").len(), 3);
    // While read-only, a login is refused temporarily (the lock cannot be written).
    let mut c = RawClient::connect(server.addr, T).unwrap();
    let r = c.login("alice", "pw").unwrap();
    assert!(r.starts_with("-ERR [SYS/"), "{r}");
    bob_is_fine(&server);
    mount.remount("rw");
}

#[test]
fn failed_lock_release_leaves_no_stale_lock() {
    let mut fx = fixture();
    let Some(mount) = alice_on_tmpfs(&mut fx) else {
        return;
    };
    let server = Server::start(&fx, &[]);
    let mut c = login(&server, "alice");
    mount.remount("ro");
    assert!(c.cmd("QUIT").unwrap().starts_with("+OK"));
    std::thread::sleep(Duration::from_millis(200));
    mount.remount("rw");
    let mut c = RawClient::connect(server.addr, T).unwrap();
    let r = c.login("alice", "pw").unwrap();
    assert!(
        r.starts_with("+OK"),
        "after the file system is writable again: {r}"
    );
}

#[test]
fn message_truncated_while_mapped_does_not_kill_the_server() {
    truncate_during_retr(false);
}

/// The same with a message already in wire form (CRLF, no dot lines): it is sent by
/// `sendmsg` straight from the mapping, and the kernel reports the truncated pages as EFAULT
/// instead of raising SIGBUS. The client's connection ends; the server lives.
#[test]
fn wire_form_message_truncated_while_mapped() {
    truncate_during_retr(true);
}

fn truncate_during_retr(crlf: bool) {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    fx.add_user("bob", "pw");
    fx.deliver("bob", "new", "1700000000.M1P1.f", b"Subject: bob\n\nhi\n");
    // 8 MiB with LF endings: streamed through the transformation (user-space reads of the
    // mapping), and above the 4 MiB MAP_POPULATE limit.
    let mut big = b"Subject: big\n\n".to_vec();
    while big.len() < 8 << 20 {
        big.extend_from_slice(b"0123456789 0123456789 0123456789 0123456789 0123456789\n");
    }
    if crlf {
        big = big
            .split_inclusive(|&b| b == b'\n')
            .flat_map(|l| [&l[..l.len() - 1], b"\r\n"].concat())
            .collect();
    }
    let path = fx.deliver("alice", "new", "1700000000.M1P1.big", &big);
    fx.config("");
    let server = Server::start(&fx, &[]);
    let mut c = login(&server, "alice");
    c.send(b"RETR 1\r\n").unwrap();
    let status = c.line().unwrap();
    assert!(status.starts_with("+OK"), "{status}");
    for _ in 0..100 {
        c.line().unwrap();
    }
    // Another process truncates the file in place while it is being sent.
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    // Whatever this client gets (a cut-off message, a closed connection), the server lives.
    let _ = c.rest();
    std::thread::sleep(Duration::from_millis(200));
    let pid = server.pid().unwrap();
    let state = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        !state.contains("State:\tZ"),
        "the server died:\n{}",
        server.stderr_text()
    );
    bob_is_fine(&server);
}

/// A Maildir the server's (dropped) user may not read: `-ERR [SYS/PERM]` (a misconfiguration,
/// not worth retrying) to that user only.
#[test]
fn permission_denied_maildir_gives_sys_perm_to_that_user_only() {
    use std::os::unix::fs::PermissionsExt;
    let fx = fixture();
    fx.config("[privileges]\nuser = \"nobody\"\n");
    let chmod = |p: &Path, mode: u32| {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    };
    // The server runs as nobody: it may traverse the fixture and owns bob's Maildir, while
    // alice's Maildir stays root's, mode 0700.
    for p in [
        fx.path().to_path_buf(),
        fx.path().join("mail"),
        fx.path().join("mail/bob"),
    ] {
        chmod(&p, 0o755);
    }
    chmod(&fx.path().join("mail/alice"), 0o755);
    chmod(&fx.maildir("alice"), 0o700);
    let st = Command::new("chown")
        .args(["-R", "nobody"])
        .arg(fx.maildir("bob"))
        .status()
        .unwrap();
    assert!(st.success(), "chown (the test needs root)");
    let server = Server::start(&fx, &[]);
    let mut c = RawClient::connect(server.addr, T).unwrap();
    let r = c.login("alice", "pw").unwrap();
    assert!(r.starts_with("-ERR [SYS/PERM]"), "{r}");
    wait_log(&server, "Permission denied");
    bob_is_fine(&server);
}
