//! End-to-end tests against the real `corepop` binary on 127.0.0.1: maildrop semantics
//! (snapshot, lock, UPDATE-only deletion), storage surprises, limits, shutdown.

mod common;

use common::{expected_wire, Fixture, Pop3Client, Server};
use std::fs;
use std::time::{Duration, Instant};

fn fixture_with(user: &str, msgs: &[(&str, &[u8])]) -> Fixture {
    let mut fx = Fixture::new();
    fx.add_user(user, "pw");
    for (name, body) in msgs {
        fx.deliver(user, "new", name, body);
    }
    fx.config("");
    fx
}

const M1: &[u8] = b"Subject: one\n\nfirst\n";
const M2: &[u8] = b"Subject: two\r\n\r\nsecond\r\n";
const M3: &[u8] = b"Subject: three\n\n.dot\nthird";

fn three() -> Fixture {
    fixture_with(
        "alice",
        &[
            ("1700000001.M1P1.h", M1),
            ("1700000002.M1P1.h", M2),
            ("1700000003.M1P1.h", M3),
        ],
    )
}

/// A user whose Maildir does not exist yet (nothing delivered, or a new account) logs in to
/// an empty maildrop, and the Maildir is created as Maildir readers expect it.
#[test]
fn first_login_creates_the_maildir() {
    let fx = fixture_with("alice", &[]);
    let maildir = fx.maildir("alice");
    fs::remove_dir_all(&maildir).unwrap();
    let srv = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(srv.addr);
    assert!(c.login("alice", "pw").starts_with("+OK"));
    assert_eq!(c.cmd("STAT"), "+OK 0 0");
    for sub in ["cur", "new", "tmp"] {
        assert!(maildir.join(sub).is_dir(), "{sub}/ not created");
    }
    assert!(c.cmd("QUIT").starts_with("+OK"));
    // Mail delivered into it afterwards is seen at the next login.
    fx.deliver("alice", "new", "1700000001.M1P1.h", M1);
    let mut c = Pop3Client::connect(srv.addr);
    assert!(c.login("alice", "pw").starts_with("+OK"));
    assert!(c.cmd("STAT").starts_with("+OK 1 "));
    assert_eq!(c.multi("RETR 1").1, expected_wire(M1));
}

#[test]
fn deletions_happen_only_after_quit() {
    let fx = three();
    let srv = Server::start(&fx, &[]);
    let before = fx.maildir_files("alice");

    // Dropped connection after DELE: nothing is deleted.
    let mut c = Pop3Client::connect(srv.addr);
    c.login("alice", "pw");
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    drop(c);
    // Wait until the lock is free again (the server noticed the close).
    let mut c = login_when_free(&srv, "alice");
    assert_eq!(fx.maildir_files("alice"), before);
    assert_eq!(c.cmd("STAT"), format!("+OK 3 {}", 23 + 24 + 29));

    // RSET undoes marks; QUIT applies only the remaining ones.
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    assert!(c.cmd("DELE 2").starts_with("+OK"));
    assert!(c.cmd("RSET").starts_with("+OK"));
    assert!(c.cmd("DELE 3").starts_with("+OK"));
    assert_eq!(c.cmd("QUIT"), "+OK Logging out, 1 messages deleted.");
    let after = fx.maildir_files("alice");
    assert_eq!(after, before[..2].to_vec());

    let mut c = Pop3Client::connect(srv.addr);
    c.login("alice", "pw");
    let (_, body) = c.multi("RETR 2");
    assert_eq!(body, expected_wire(M2));
    c.cmd("QUIT");
}

fn login_when_free(srv: &Server, user: &str) -> Pop3Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = Pop3Client::connect(srv.addr);
        assert!(c.cmd(&format!("USER {user}")).starts_with("+OK"));
        let r = c.cmd("PASS pw");
        if r.starts_with("+OK") {
            return c;
        }
        assert!(r.starts_with("-ERR [IN-USE]"), "{r}");
        assert!(Instant::now() < deadline, "maildrop lock never released");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_session_per_maildrop_across_processes_and_after_a_crash() {
    let fx = three();
    let a = Server::start(&fx, &[]);
    let b = Server::start(&fx, &["--threads", "2"]);
    let mut ca = Pop3Client::connect(a.addr);
    ca.login("alice", "pw");
    let mut cb = Pop3Client::connect(b.addr);
    cb.cmd("USER alice");
    assert_eq!(
        cb.cmd("PASS pw"),
        "-ERR [IN-USE] Mailbox is locked by another POP3 session."
    );
    // Same process, other connection: also refused.
    let mut ca2 = Pop3Client::connect(a.addr);
    ca2.cmd("USER alice");
    assert!(ca2.cmd("PASS pw").starts_with("-ERR [IN-USE]"));
    // The refused session is still usable: QUIT works.
    assert!(ca2.cmd("QUIT").starts_with("+OK"));
    // After QUIT the lock is free.
    ca.cmd("QUIT");
    cb.cmd("USER alice");
    assert!(cb.cmd("PASS pw").starts_with("+OK"));
    cb.cmd("QUIT");

    // A server killed with SIGKILL while holding the lock leaves a stale lock that the next
    // login takes over; nothing was deleted.
    let mut a = a;
    let mut ca = Pop3Client::connect(a.addr);
    ca.login("alice", "pw");
    assert!(ca.cmd("DELE 1").starts_with("+OK"));
    a.signal(libc_sigkill());
    a.stop();
    let mut cb = login_when_free(&b, "alice");
    assert!(cb.cmd("STAT").starts_with("+OK 3 "));
    cb.cmd("QUIT");
}

fn libc_sigkill() -> i32 {
    9
}

#[test]
fn snapshot_is_taken_at_login() {
    let fx = three();
    let srv = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(srv.addr);
    c.login("alice", "pw");
    fx.deliver(
        "alice",
        "new",
        "1700000004.M1P1.h",
        b"Subject: four\n\nlate\n",
    );
    assert!(c.cmd("STAT").starts_with("+OK 3 "));
    assert!(c.cmd("LIST 4").starts_with("-ERR"));
    c.cmd("QUIT");
    let mut c = Pop3Client::connect(srv.addr);
    c.login("alice", "pw");
    assert!(c.cmd("STAT").starts_with("+OK 4 "));
    assert_eq!(c.cmd("UIDL 4"), "+OK 4 1700000004.M1P1.h");
    c.cmd("QUIT");
}

#[test]
fn other_agents_moving_or_removing_messages() {
    let fx = three();
    let srv = Server::start(&fx, &[]);
    let md = fx.maildir("alice");
    let mut c = Pop3Client::connect(srv.addr);
    c.login("alice", "pw");
    // An IMAP client marks message 1 seen (new/ → cur/ with flags) and expunges message 2.
    fs::rename(
        md.join("new/1700000001.M1P1.h"),
        md.join("cur/1700000001.M1P1.h:2,S"),
    )
    .unwrap();
    fs::remove_file(md.join("new/1700000002.M1P1.h")).unwrap();
    let (st, body) = c.multi("RETR 1");
    assert!(st.starts_with("+OK"), "{st}");
    assert_eq!(body, expected_wire(M1));
    let r = c.cmd("RETR 2");
    assert!(r.starts_with("-ERR"), "{r}");
    // The session goes on, and message numbers have not shifted.
    let (_, body) = c.multi("TOP 3 0");
    assert_eq!(body, b"Subject: three\r\n\r\n");
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    assert!(c.cmd("DELE 2").starts_with("+OK"));
    assert!(c.cmd("QUIT").starts_with("+OK"));
    assert_eq!(
        fx.maildir_files("alice"),
        vec!["new/1700000003.M1P1.h".to_string()]
    );
}

/// Makes a file immutable (chattr +i: even root cannot unlink it) until dropped.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn new(path: std::path::PathBuf) -> Self {
        let st = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&path)
            .status();
        assert!(
            st.is_ok_and(|s| s.success()),
            "chattr +i failed (needs root and a file system with attributes, e.g. ext4)"
        );
        Immutable(path)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn failed_unlink_keeps_the_message_and_says_so() {
    let fx = three();
    let md = fx.maildir("alice");
    let srv = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(srv.addr);
    c.login("alice", "pw");
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    assert!(c.cmd("DELE 2").starts_with("+OK"));
    // Message 1 cannot be unlinked, even by root.
    let _guard = Immutable::new(md.join("new/1700000001.M1P1.h"));
    let r = c.cmd("QUIT");
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    assert_eq!(
        fs::read(md.join("new/1700000001.M1P1.h")).unwrap(),
        M1,
        "kept whole"
    );
    assert!(
        !md.join("new/1700000002.M1P1.h").exists(),
        "the other deletion still applies"
    );
    assert!(md.join("new/1700000003.M1P1.h").exists());
}

#[test]
fn listing_sizes_equal_retr_octets_and_uidls_survive_restart() {
    let mut fx = Fixture::new();
    fx.add_user("bob", "pw");
    let samples = fx.deliver_samples("bob");
    fx.config("");
    let mut uidls = Vec::new();
    for round in 0..2 {
        let srv = Server::start(&fx, &["--threads", "2"]);
        let mut c = Pop3Client::connect(srv.addr);
        c.login("bob", "pw");
        let (_, list) = c.multi("LIST");
        let sizes: Vec<u64> = String::from_utf8(list)
            .unwrap()
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
            .collect();
        assert_eq!(sizes.len(), samples.len());
        for (i, (name, bytes)) in samples.iter().enumerate() {
            let (st, body) = c.multi(&format!("RETR {}", i + 1));
            assert_eq!(st, format!("+OK {} octets", sizes[i]), "{name}");
            assert_eq!(body, expected_wire(bytes), "{name}");
            let added = if bytes.is_empty() || bytes.ends_with(b"\n") {
                0
            } else {
                2
            };
            assert_eq!(
                body.len() as u64,
                sizes[i] + added,
                "{name}: LIST size vs RETR octets"
            );
        }
        let (_, u) = c.multi("UIDL");
        c.cmd("QUIT");
        uidls.push(u);
        let _ = round;
    }
    assert_eq!(uidls[0], uidls[1]);
}

#[test]
fn sigterm_tells_idle_sessions_and_exits() {
    let fx = three();
    let mut srv = Server::start(&fx, &["--threads", "2"]);
    let mut c = Pop3Client::connect(srv.addr);
    c.login("alice", "pw");
    c.cmd("DELE 1");
    let mut idle = Pop3Client::connect(srv.addr);
    srv.signal(15);
    assert_eq!(c.read_line(), "-ERR [SYS/TEMP] Server shutting down.");
    assert_eq!(idle.read_line(), "-ERR [SYS/TEMP] Server shutting down.");
    let status = srv.stop().expect("server exited");
    assert!(status.success(), "{status:?}");
    assert_eq!(
        fx.maildir_files("alice").len(),
        3,
        "shutdown deletes nothing"
    );
}

#[test]
fn login_timeout_and_bad_command_limit() {
    let fx = three();
    fx.config("[limits]\nlogin_timeout_secs = 1\nmax_bad_commands = 3\n");
    let srv = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(srv.addr);
    assert_eq!(c.read_line(), "-ERR Disconnected for inactivity.");
    assert!(c.read_to_end().is_empty());

    let mut c = Pop3Client::connect(srv.addr);
    assert!(c.cmd("FOO").starts_with("-ERR"));
    assert!(c.cmd("BAR").starts_with("-ERR"));
    assert_eq!(
        c.cmd("BAZ"),
        "-ERR Too many invalid commands, closing connection."
    );
    assert!(c.read_to_end().is_empty());
}

#[test]
fn home_and_userdb_mail_from_passwd_file() {
    let fx = Fixture::new();
    let home = fx.path().join("homes/carol");
    let other = fx.path().join("elsewhere/dave/Maildir");
    fs::write(
        fx.passwd_path(),
        format!(
            "carol:{{PLAIN}}pw::::{}::\ndave:{{PLAIN}}pw:::::: userdb_mail=maildir:{}\n",
            home.display(),
            other.display()
        ),
    )
    .unwrap();
    fx.config("[mail]\nlocation = \"maildir:~/Maildir\"\n");
    for (dir, body) in [(home.join("Maildir"), M1), (other.clone(), M2)] {
        for sub in ["new", "cur", "tmp"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        fs::write(dir.join("new/1700000001.M1P1.h"), body).unwrap();
    }
    let srv = Server::start(&fx, &[]);
    for (user, body) in [("carol", M1), ("dave", M2)] {
        let mut c = Pop3Client::connect(srv.addr);
        c.login(user, "pw");
        assert_eq!(c.multi("RETR 1").1, expected_wire(body), "{user}");
        c.cmd("QUIT");
    }
}

#[test]
fn many_clients_on_two_cores() {
    let mut fx = Fixture::new();
    let users: Vec<String> = (0..16).map(|i| format!("u{i}")).collect();
    for u in &users {
        fx.add_user(u, "pw");
        for k in 0..5 {
            let body = format!("Subject: {u} {k}\n\n{}\n", "line\n".repeat(200 * k));
            fx.deliver(u, "new", &format!("17000000{k:02}.M1P1.h"), body.as_bytes());
        }
    }
    fx.config("");
    let srv = Server::start(&fx, &["--threads", "2"]);
    let addr = srv.addr;
    let handles: Vec<_> = users
        .into_iter()
        .map(|u| {
            std::thread::spawn(move || {
                for _ in 0..3 {
                    let mut c = Pop3Client::connect(addr);
                    c.login(&u, "pw");
                    assert!(c.cmd("STAT").starts_with("+OK 5 "));
                    for k in 0..5 {
                        let (_, body) = c.multi(&format!("RETR {}", k + 1));
                        let want = format!("Subject: {u} {k}\n\n{}\n", "line\n".repeat(200 * k));
                        assert_eq!(body, expected_wire(want.as_bytes()));
                    }
                    assert!(c.cmd("QUIT").starts_with("+OK"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn pipelined_commands_answer_in_order() {
    let fx = three();
    let srv = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(srv.addr);
    let mut script = String::from("USER alice\r\nPASS pw\r\n");
    for _ in 0..2000 {
        script.push_str("STAT\r\nLIST 2\r\nNOOP\r\n");
    }
    script.push_str("RETR 3\r\nQUIT\r\n");
    c.send_raw(script.as_bytes());
    assert!(c.read_line().starts_with("+OK"));
    assert!(c.read_line().starts_with("+OK"));
    for _ in 0..2000 {
        assert!(c.read_line().starts_with("+OK 3 "));
        assert_eq!(c.read_line(), "+OK 2 24");
        assert!(c.read_line().starts_with("+OK"));
    }
    assert!(c.read_line().starts_with("+OK"));
    assert_eq!(c.read_multi_body(), expected_wire(M3));
    assert!(c.read_line().starts_with("+OK Logging out"));
}

#[test]
fn messages_around_the_read_chunk_size_are_exact() {
    // The driver reads non-wire-form messages in 64 KiB chunks, and those of 1 MiB or more
    // in 256 KiB chunks after the first: sizes on and around the chunk boundaries and the
    // 1 MiB threshold, with a line end or a dot-line right at the boundary.
    const CHUNK: usize = 64 * 1024;
    const LARGE: usize = 256 * 1024;
    const LARGE_MESSAGE: usize = 1024 * 1024;
    let mut fx = Fixture::new();
    fx.add_user("eve", "pw");
    let mut bodies = Vec::new();
    for (i, size) in [
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        2 * CHUNK,
        2 * CHUNK + 2,
        LARGE_MESSAGE - 1,
        LARGE_MESSAGE,
        CHUNK + 4 * LARGE - 1,
        CHUNK + 4 * LARGE,
        CHUNK + 4 * LARGE + 1,
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = b"Subject: chunks\n\n".to_vec();
        while m.len() < size {
            let line: &[u8] = if m.len().is_multiple_of(7) {
                b".dot\n"
            } else {
                b"x\n"
            };
            m.extend_from_slice(line);
        }
        m.truncate(size);
        let name = format!("17000000{i:02}.M1P1.h");
        fx.deliver("eve", "new", &name, &m);
        bodies.push(m);
    }
    fx.config("");
    let srv = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(srv.addr);
    c.login("eve", "pw");
    for (i, m) in bodies.iter().enumerate() {
        let (st, body) = c.multi(&format!("RETR {}", i + 1));
        assert!(st.starts_with("+OK"), "{st}");
        assert_eq!(body, expected_wire(m), "message of {} octets", m.len());
        let (_, top) = c.multi(&format!("TOP {} 3", i + 1));
        assert_eq!(top, common::expected_top(m, 3), "TOP of {} octets", m.len());
    }
    // Largest first: each transfer reuses buffers a larger one left behind (the executor
    // keeps spare body buffers), and must send only its own bytes.
    for (i, m) in bodies.iter().enumerate().rev() {
        let (_, body) = c.multi(&format!("RETR {}", i + 1));
        assert_eq!(
            body,
            expected_wire(m),
            "again, message of {} octets",
            m.len()
        );
    }
    c.cmd("QUIT");
}

#[test]
fn wire_form_messages_sent_from_the_file_are_exact() {
    // Messages already in wire form go out with sendfile from the page cache; with
    // `map_min_size = 0` all of them do. A reader that waits before reading makes the socket
    // buffer fill in the middle of the 8 MiB one; a message without a final line end gets
    // one; a command pipelined behind a RETR is answered after the terminator.
    let mut fx = Fixture::new();
    fx.add_user("eve", "pw");
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    let mut i = 0u64;
    while big.len() < 8 << 20 {
        big.extend_from_slice(
            format!("{i:08} wire-form line, CRLF and no leading dot\r\n").as_bytes(),
        );
        i += 1;
    }
    let msgs: [&[u8]; 3] = [
        &big,
        b"Subject: short\r\n\r\nno final line end",
        b"Subject: e\r\n\r\n",
    ];
    for (i, m) in msgs.iter().enumerate() {
        fx.deliver("eve", "new", &format!("17000000{i:02}.M1P1.h"), m);
    }
    fx.config("[mail]\nmap_min_size = 0\n");
    let srv = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(srv.addr);
    c.login("eve", "pw");
    for (i, m) in msgs.iter().enumerate() {
        c.send_raw(format!("RETR {}\r\nNOOP\r\n", i + 1).as_bytes());
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(c.read_line().starts_with("+OK"));
        assert!(c.read_multi_body() == expected_wire(m), "RETR {}", i + 1);
        assert!(
            c.read_line().starts_with("+OK"),
            "NOOP after RETR {}",
            i + 1
        );
    }
    c.cmd("QUIT");
}

#[test]
fn a_wire_form_message_rewritten_in_place_is_still_sent_dot_stuffed() {
    // Maildir files are never rewritten, and the index's "stored as wire form" fact relies on
    // it: such a message goes out from a mapping, unchanged. A tool that rewrites one anyway,
    // now with a line that is only ".", must not have it sent raw: the client would take that
    // line for the end of the message and the rest for replies.
    let mut fx = Fixture::new();
    fx.add_user("eve", "pw");
    let path = fx.deliver(
        "eve",
        "cur",
        "1700000000.M1P1.h:2,S",
        b"Subject: a\r\n\r\nplain line\r\n",
    );
    fx.config("[mail]\nmap_min_size = 0\n");
    let srv = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(srv.addr);
    c.login("eve", "pw");
    let rewritten = b"Subject: a\r\n\r\n.\r\nafter the dot line\r\n";
    fs::write(&path, rewritten).unwrap();
    let (st, body) = c.multi("RETR 1");
    assert!(st.starts_with("+OK"), "{st}");
    assert_eq!(body, expected_wire(rewritten));
    assert!(c.cmd("NOOP").starts_with("+OK"));
    c.cmd("QUIT");
}

#[test]
fn messages_stored_compressed_are_refused_not_sent() {
    // Dovecot's compression plugin stores messages gzip-, bzip2-, xz-, LZ4- or
    // zstd-compressed, under names with the uncompressed sizes. Their bytes are not mail:
    // RETR and TOP answer -ERR [SYS/PERM] and the session goes on; the files stay. The last
    // one is CRLF-clean after its zstd magic, so the index takes it for wire form and, with
    // `map_min_size = 0`, RETR would send it from a mapping of the file.
    let text = b"Subject: packed\n\nThe text that was compressed.\n".to_vec();
    let packed = |module: &str| -> Vec<u8> {
        let out = std::process::Command::new("python3")
            .args([
                "-c",
                &format!("import sys,{module}; sys.stdout.buffer.write({module}.compress(sys.stdin.buffer.read()))"),
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut p| {
                use std::io::Write;
                p.stdin.take().unwrap().write_all(&text)?;
                p.wait_with_output()
            })
            .expect("python3");
        assert!(out.status.success());
        out.stdout
    };
    let mut lz4 = b"Dovecot-LZ4\x0d\x2a\x9b\xc5".to_vec();
    lz4.extend_from_slice(&[0, 0x80, 0, 0, 0, 0, 0, 0x31]);
    let stored: Vec<Vec<u8>> = vec![
        text.clone(),
        packed("gzip"),
        packed("bz2"),
        packed("lzma"),
        lz4,
        b"\x28\xb5\x2f\xfdzstd frame, CRLF-clean\r\n".to_vec(),
    ];
    let mut fx = Fixture::new();
    fx.add_user("eve", "pw");
    let mut paths = Vec::new();
    let sizes = format!(",S={},W={}", text.len(), text.len() + 3);
    for (i, m) in stored.iter().enumerate() {
        // The last without sizes in its name: the login reads it to index it.
        let sizes = if i + 1 < stored.len() { &sizes[..] } else { "" };
        let name = format!("17000000{i:02}.M1P1.h{sizes}:2,S");
        paths.push(fx.deliver("eve", "cur", &name, m));
    }
    fx.config("[mail]\nmap_min_size = 0\n");
    let srv = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(srv.addr);
    c.login("eve", "pw");
    let (st, list) = c.multi("LIST");
    assert!(st.starts_with("+OK"), "{st}");
    assert_eq!(list.iter().filter(|&&b| b == b'\n').count(), stored.len());
    let (st, body) = c.multi("RETR 1");
    assert!(st.starts_with("+OK"), "{st}");
    assert_eq!(body, expected_wire(&text));
    for n in 2..=stored.len() {
        for cmd in [format!("RETR {n}"), format!("TOP {n} 0")] {
            let r = c.cmd(&cmd);
            assert!(r.starts_with("-ERR [SYS/PERM] "), "{cmd}: {r}");
        }
    }
    assert!(c.cmd("NOOP").starts_with("+OK"));
    assert!(c.cmd("QUIT").starts_with("+OK"));
    drop(srv);
    for (p, m) in paths.iter().zip(&stored) {
        assert_eq!(&fs::read(p).unwrap(), m, "{}", p.display());
    }
}
