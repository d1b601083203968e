//! Security checks against the real binary: path traversal through usernames, mail-location
//! templates and Maildir names; user enumeration by reply or timing; isolation between users.

mod common;
mod robust;

use common::{expected_wire, Fixture, Server};
use robust::RawClient;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn tree(p: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            out.push(path.display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

fn pass_reply(server: &Server, user: &[u8], pass: &str) -> (String, String) {
    let mut c = RawClient::connect(server.addr, T).unwrap();
    c.send(&[b"USER ", user, b"\r\n"].concat()).unwrap();
    let u = c.line().unwrap();
    let p = if u.starts_with("+OK") {
        c.cmd(&format!("PASS {pass}")).unwrap()
    } else {
        String::new()
    };
    (u, p)
}

#[test]
fn usernames_cannot_traverse_paths() {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    // The passwd-file itself holds a hostile name: it must still not be usable.
    fs::write(
        fx.passwd_path(),
        "alice:{PLAIN}pw::::::\n../../escape:{PLAIN}pw::::::\nx/../../y:{PLAIN}pw::::::\n",
    )
    .unwrap();
    fx.config("");
    let server = Server::start(&fx, &[]);
    let before = tree(fx.path());
    for user in [
        &b"../../escape"[..],
        b"x/../../y",
        b"..",
        b".",
        b"%u",
        b"%d/../x",
        b"/etc/passwd",
        b"alice/../alice",
        b"alice\x00",
        b"~root",
    ] {
        let (u, p) = pass_reply(&server, user, "pw");
        let shown = String::from_utf8_lossy(user);
        assert!(
            !p.starts_with("+OK"),
            "user {shown:?} logged in (USER -> {u})"
        );
    }
    assert_eq!(tree(fx.path()), before, "a directory was created");
    assert!(!fx.path().join("escape").exists());
}

#[test]
fn unsafe_mail_locations_are_refused() {
    use corepop::mailbox::location::{expand, LocationError};
    let home = Some(Path::new("/home/u"));
    assert_eq!(
        expand("maildir:/m/%u", "a/../../etc", home),
        Err(LocationError::Unsafe)
    );
    assert_eq!(
        expand("maildir:%h/../x", "u", home),
        Err(LocationError::Unsafe)
    );
    assert!(expand("maildir:rel/%u", "u", home).is_err());
    // Through the server: a userdb_mail that climbs out is a permanent failure for that user.
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    let up = format!("{}/mail/../..", fx.path().display());
    fs::write(
        fx.passwd_path(),
        format!(
            "alice:{{PLAIN}}pw::::::\nmallory:{{PLAIN}}pw:::::: userdb_mail=maildir:{up}\n\
             rel:{{PLAIN}}pw:::::: userdb_mail=maildir:relative/path\n"
        ),
    )
    .unwrap();
    fx.config("");
    let server = Server::start(&fx, &[]);
    for user in ["mallory", "rel"] {
        let (_, p) = pass_reply(&server, user.as_bytes(), "pw");
        assert!(p.starts_with("-ERR [SYS/PERM]"), "{user}: {p}");
    }
    let (_, p) = pass_reply(&server, b"alice", "pw");
    assert!(p.starts_with("+OK"), "{p}");
}

/// Delivers `names` (each with a small message) and checks two logins: UIDLs valid, RETR exact.
fn odd_names(names: &[&str]) {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    fx.config("");
    for (i, n) in names.iter().enumerate() {
        fx.deliver(
            "alice",
            "new",
            n,
            format!("Subject: {i}\n\nbody {i}\n").as_bytes(),
        );
    }
    let server = Server::start(&fx, &[]);
    for round in 0..2 {
        let mut c = RawClient::connect(server.addr, T).unwrap();
        let r = c.login("alice", "pw").unwrap();
        assert!(r.starts_with("+OK"), "round {round}: {r}");
        let (_, uidl) = c.multi("UIDL").unwrap();
        let uidl = robust::listing(&uidl);
        assert_eq!(uidl.len(), names.len(), "round {round}");
        for (_, u) in &uidl {
            assert!(
                (1..=70).contains(&u.len()) && u.bytes().all(|b| (0x21..=0x7e).contains(&b)),
                "invalid UIDL {u:?}"
            );
        }
        for i in 0..names.len() {
            let (s, body) = c.multi(&format!("RETR {}", i + 1)).unwrap();
            assert!(s.starts_with("+OK"), "{s}");
            assert_eq!(
                body,
                expected_wire(format!("Subject: {i}\n\nbody {i}\n").as_bytes())
            );
        }
        assert!(c.cmd("QUIT").unwrap().starts_with("+OK"));
    }
}

#[test]
fn odd_maildir_names_are_served_safely() {
    let long = format!("1700000005.{}", "x".repeat(200));
    odd_names(&[
        "1700000001.M1P1.with space",
        "1700000002..",
        "1700000003.M1P1.%u",
        &long,
    ]);
}

#[test]
fn maildir_names_with_tab_or_newline() {
    odd_names(&["1700000001.M1P1.tab\there", "1700000002.M1P1.new\nline"]);
}

#[test]
fn symlinks_in_a_maildir_are_not_followed() {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    fx.add_user("bob", "pw");
    let secret = fx.deliver(
        "bob",
        "new",
        "1700000001.M1P1.b",
        b"Subject: bob's secret\n\nx\n",
    );
    fx.config("");
    std::os::unix::fs::symlink(&secret, fx.maildir("alice").join("new/1700000002.M1P1.a")).unwrap();
    let server = Server::start(&fx, &[]);
    let mut c = RawClient::connect(server.addr, T).unwrap();
    assert!(c.login("alice", "pw").unwrap().starts_with("+OK"));
    let (s, body) = c.multi("RETR 1").unwrap();
    assert!(
        !(s.starts_with("+OK") && body.windows(6).any(|w| w == b"secret")),
        "alice read bob's message through a symlink"
    );
}

#[test]
fn no_user_enumeration_by_reply_or_timing() {
    let fx = Fixture::new();
    // A real hash, so a wrong password costs a real verification.
    let hash = corepop::auth::scheme::hash("SHA512-CRYPT", b"right").unwrap();
    fs::write(fx.passwd_path(), format!("alice:{hash}::::::\n")).unwrap();
    fs::create_dir_all(fx.maildir("alice")).unwrap();
    fx.config("");
    let server = Server::start(&fx, &[]);
    let (u1, p1) = pass_reply(&server, b"alice", "wrong");
    let (u2, p2) = pass_reply(&server, b"nobody", "wrong");
    assert_eq!(u1, u2, "USER replies differ");
    assert_eq!(p1, p2, "PASS replies differ");
    assert!(p1.starts_with("-ERR [AUTH]"), "{p1}");
    // Timing: an unknown user must cost a comparable verification (a dummy hash), not an
    // instant refusal. Generous bound (a factor of 4 between medians) on a noisy machine:
    // this checks that the work is done, not how fast it is.
    let time = |user: &[u8]| {
        let mut c = RawClient::connect(server.addr, T).unwrap();
        c.send(&[b"USER ", user, b"\r\n"].concat()).unwrap();
        c.line().unwrap();
        let t = Instant::now();
        let r = c.cmd("PASS wrong").unwrap();
        assert!(r.starts_with("-ERR"));
        t.elapsed()
    };
    let (mut known, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..9 {
        known.push(time(b"alice"));
        unknown.push(time(b"nobody"));
    }
    known.sort();
    unknown.sort();
    let (k, u) = (known[4].as_secs_f64(), unknown[4].as_secs_f64());
    eprintln!("median PASS time: known user {k:.4} s, unknown user {u:.4} s");
    assert!(
        u * 4.0 > k && k * 4.0 > u,
        "known {k:.4} s vs unknown {u:.4} s"
    );
}

/// Two users whose mail locations resolve to the same Maildir.
fn shared_maildir_fixture() -> Fixture {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    let shared = fx.maildir("alice");
    fs::write(
        fx.passwd_path(),
        format!(
            "alice:{{PLAIN}}pw::::::\nbob:{{PLAIN}}pw:::::: userdb_mail=maildir:{}\n",
            shared.display()
        ),
    )
    .unwrap();
    fx.deliver(
        "alice",
        "new",
        "1700000001.M1P1.a",
        b"Subject: alice only\n\nx\n",
    );
    fx.config("");
    fx
}

#[test]
fn shared_maildir_is_refused_at_startup() {
    let fx = shared_maildir_fixture();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_corepop"))
        .args([
            "serve",
            "--allow-root",
            "--threads",
            "1",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(fx.config_path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.is_some_and(|s| !s.success()),
        "the server started with two users sharing one Maildir"
    );
}
