//! UIDLs and LIST sizes compared with Dovecot on the same Maildir, and the UIDL settings.
//!
//! The Dovecot test runs Debian's `dovecot-pop3d` (a private instance on 127.0.0.1, see
//! `interop/dovecot.rs`; needs root) with its default `pop3_uidl_format` (`%08Xu%08Xv`) on
//! a Maildir, then corepop (automatic UIDLs, no configuration) on the same Maildir, and
//! requires identical UIDL and LIST output, before and after new deliveries, whichever server
//! sees the new mail first, and after a deletion through corepop. Both servers run at once,
//! as Dovecot IMAP and corepop would: Dovecot's `dovecot-uidlist` lock is what keeps them
//! consistent.

mod common;
#[path = "interop/dovecot.rs"]
#[allow(dead_code)]
mod dovecot;

use std::fs;
use std::net::SocketAddr;
use std::process::Command;

use common::{Fixture, Pop3Client, Server};

const USER: &str = "alice";
const PASS: &str = "Uidl-pw-42";
/// The tests run as root (Dovecot needs it); corepop must be told that this is intended.
const ROOT_OK: &str = "[privileges]\nallow_root = true\n";

/// (UIDL lines, LIST lines) of a fresh session; the session ends with QUIT.
fn listings(addr: SocketAddr) -> (Vec<String>, Vec<String>) {
    let mut c = Pop3Client::connect(addr);
    let r = c.login(USER, PASS);
    assert!(r.starts_with("+OK"), "login: {r}");
    let (st, uidl) = c.multi("UIDL");
    assert!(st.starts_with("+OK"), "UIDL: {st}");
    let (st, list) = c.multi("LIST");
    assert!(st.starts_with("+OK"), "LIST: {st}");
    c.cmd("QUIT");
    let lines = |b: Vec<u8>| -> Vec<String> {
        String::from_utf8(b)
            .unwrap()
            .lines()
            .filter(|l| *l != ".")
            .map(str::to_owned)
            .collect()
    };
    (lines(uidl), lines(list))
}

fn chown_dovecot(fx: &Fixture) {
    let st = Command::new("chown")
        .args(["-R", "dovecot:dovecot"])
        .arg(fx.path())
        .status()
        .expect("chown");
    assert!(st.success());
}

/// Delivers `n` Postfix-style messages (LF endings, no `,W=`) at time `t0 + i`.
fn deliver_batch(fx: &Fixture, t0: u64, n: u64) {
    for i in 0..n {
        let body = format!(
            "From: a@example.org\nSubject: batch {t0} {i}\nMessage-ID: <{t0}.{i}@corepop.test>\n\n.dot line\nbody {i}\n"
        );
        fx.deliver(
            USER,
            "new",
            &format!("{}.V803I{i:x}M{}.mx", t0 + i, 1000 + i),
            body.as_bytes(),
        );
    }
}

#[test]
fn same_uidls_and_sizes_as_dovecot_before_and_after_new_mail() {
    let mut fx = Fixture::new();
    fx.add_user(USER, PASS);
    fx.deliver_samples(USER);
    chown_dovecot(&fx);
    let dv = dovecot::Dovecot::start_with(&fx, "");
    let (d_uidl, d_list) = listings(dv.addr);
    assert_eq!(
        d_uidl.len(),
        common::sample_messages().len(),
        "{}",
        dv.log()
    );
    // Dovecot's default format: 8 hex digits of UID then of UIDVALIDITY, lower case.
    assert!(
        d_uidl[0].split(' ').nth(1).unwrap().starts_with("00000001"),
        "{d_uidl:?}"
    );

    fx.config(ROOT_OK);
    let srv = Server::start(&fx, &[]);
    let (c_uidl, c_list) = listings(srv.addr);
    assert_eq!(c_uidl, d_uidl, "UIDL, first login");
    assert_eq!(c_list, d_list, "LIST, first login");

    // New mail, corepop sees it first (and gives it UIDs in dovecot-uidlist).
    deliver_batch(&fx, 1_800_000_000, 3);
    let (c_uidl, c_list) = listings(srv.addr);
    assert_eq!(c_uidl.len(), d_uidl.len() + 3);
    assert_eq!(c_uidl[..d_uidl.len()], d_uidl[..], "old UIDLs unchanged");
    chown_dovecot(&fx);
    let (d_uidl, d_list) = listings(dv.addr);
    assert_eq!(
        c_uidl,
        d_uidl,
        "UIDL after corepop saw new mail first\n{}",
        dv.log()
    );
    assert_eq!(c_list, d_list, "LIST after corepop saw new mail first");

    // New mail, Dovecot sees it first.
    deliver_batch(&fx, 1_800_001_000, 4);
    chown_dovecot(&fx);
    let (d_uidl, d_list) = listings(dv.addr);
    let (c_uidl, c_list) = listings(srv.addr);
    assert_eq!(d_uidl.len(), c_list.len());
    assert_eq!(c_uidl, d_uidl, "UIDL after Dovecot saw new mail first");
    assert_eq!(c_list, d_list, "LIST after Dovecot saw new mail first");

    // Both at once: one batch, then each server in turn twice (caches and indexes warm).
    deliver_batch(&fx, 1_800_002_000, 2);
    let (c1, _) = listings(srv.addr);
    chown_dovecot(&fx);
    let (d1, _) = listings(dv.addr);
    let (c2, _) = listings(srv.addr);
    assert_eq!(c1, d1);
    assert_eq!(c2, d1);

    // A deletion through corepop: both servers list the rest alike.
    let mut c = Pop3Client::connect(srv.addr);
    c.login(USER, PASS);
    assert!(c.cmd("DELE 2").starts_with("+OK"));
    assert!(c.cmd("QUIT").starts_with("+OK"));
    chown_dovecot(&fx);
    let (d_uidl, d_list) = listings(dv.addr);
    let (c_uidl, c_list) = listings(srv.addr);
    assert_eq!(d_uidl.len(), c1.len() - 1);
    assert_eq!(c_uidl, d_uidl, "UIDL after a deletion");
    assert_eq!(c_list, d_list, "LIST after a deletion");
    let list = fs::read_to_string(fx.maildir(USER).join("dovecot-uidlist")).unwrap();
    assert!(list.starts_with("3 V"), "{list}");
}

#[test]
fn configured_format_and_command_line_override() {
    let mut fx = Fixture::new();
    fx.add_user(USER, PASS);
    fx.deliver(USER, "new", "1700000001.M1P1.h", b"Subject: a\n\nx\n");
    fx.deliver(USER, "new", "1700000002.M1P1.h", b"Subject: b\n\ny\n");
    fx.config(&format!("[mail]\nuidl_format = \"%v.%u\"\n{ROOT_OK}"));
    let uidls = |srv: &Server| -> Vec<String> {
        listings(srv.addr)
            .0
            .into_iter()
            .map(|l| l.split(' ').nth(1).unwrap().to_owned())
            .collect()
    };
    let srv = Server::start(&fx, &[]);
    let a = uidls(&srv);
    let v = a[0].split('.').next().unwrap().to_owned();
    assert_eq!(a, [format!("{v}.1"), format!("{v}.2")]);
    drop(srv);
    // corepop started the Dovecot-format UID list itself.
    let list = fs::read_to_string(fx.maildir(USER).join("dovecot-uidlist")).unwrap();
    assert!(list.starts_with(&format!("3 V{v} N3 G")), "{list}");
    let srv = Server::start(&fx, &["--uidl-format", "UID%u-%v"]);
    assert_eq!(uidls(&srv), [format!("UID1-{v}"), format!("UID2-{v}")]);
    drop(srv);
    let srv = Server::start(&fx, &["--uidl-format", "%08Xu%08Xv"]);
    let v: u32 = v.parse().unwrap();
    assert_eq!(
        uidls(&srv),
        [format!("00000001{v:08x}"), format!("00000002{v:08x}")]
    );
}

#[test]
fn bad_format_is_refused_at_startup() {
    let mut fx = Fixture::new();
    fx.add_user(USER, PASS);
    fx.config(ROOT_OK);
    let out = Command::new(env!("CARGO_BIN_EXE_corepop"))
        .args(["serve", "--config"])
        .arg(fx.config_path())
        .args(["--listen", "127.0.0.1:0", "--uidl-format", "%q"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("uidl_format"), "{err}");
}

/// A `dovecot-uidlist` whose header corepop does not understand, with a UIDL format built
/// from UIDs: the login is refused with [SYS/TEMP] (the mail is not shown as gone), and
/// neither the list nor the message is changed. The same Maildir with `%f` UIDLs is served.
#[test]
fn damaged_uidlist_refuses_a_uid_format_login_and_changes_nothing() {
    let mut fx = Fixture::new();
    fx.add_user(USER, PASS);
    let name = "1700000001.M1P1.h";
    fx.deliver(USER, "new", name, b"Subject: a\n\nx\n");
    let list = fx.maildir(USER).join("dovecot-uidlist");
    fs::write(&list, "9 V1 N2\n1 1700000001.M1P1.h\n").unwrap();
    fx.config(&format!("[mail]\nuidl_format = \"%08Xu%08Xv\"\n{ROOT_OK}"));
    let srv = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(srv.addr);
    assert!(c.cmd(&format!("USER {USER}")).starts_with("+OK"));
    let r = c.cmd(&format!("PASS {PASS}"));
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "PASS: {r}");
    drop(c);
    drop(srv);
    assert_eq!(
        fs::read_to_string(&list).unwrap(),
        "9 V1 N2\n1 1700000001.M1P1.h\n"
    );
    assert!(fx.maildir(USER).join("new").join(name).exists());
    let srv = Server::start(&fx, &["--uidl-format", "%f"]);
    let (uidl, _) = listings(srv.addr);
    assert_eq!(uidl, [format!("1 {name}")]);
}
