//! The on-disk index end to end: whatever state `corepop-index` is in (written by a crashed
//! process, by an older version, empty, with flipped bits, impossible to write), LIST and UIDL
//! are right; and snapshot semantics under concurrent delivery and removal.

mod common;

use std::fs;

use common::{expected_wire, uidl_of, wire_size, Fixture, Pop3Client, Server};

const ROOT_OK: &str = "[privileges]\nallow_root = true\n";

fn fixture() -> (Fixture, Vec<(String, Vec<u8>)>) {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    let samples = fx.deliver_samples("alice");
    fx.config(ROOT_OK);
    (fx, samples)
}

/// LIST sizes and UIDLs, in message order, from a fresh session.
fn list_and_uidl(srv: &Server) -> (Vec<u64>, Vec<String>) {
    let mut c = Pop3Client::connect(srv.addr);
    assert!(c.login("alice", "pw").starts_with("+OK"));
    let (_, list) = c.multi("LIST");
    let (_, uidl) = c.multi("UIDL");
    c.cmd("QUIT");
    let second = |b: Vec<u8>| -> Vec<String> {
        String::from_utf8(b)
            .unwrap()
            .lines()
            .filter(|l| *l != ".")
            .map(|l| l.split(' ').nth(1).unwrap().to_owned())
            .collect()
    };
    (
        second(list).iter().map(|s| s.parse().unwrap()).collect(),
        second(uidl),
    )
}

fn expected(samples: &[(String, Vec<u8>)]) -> (Vec<u64>, Vec<String>) {
    (
        samples.iter().map(|(_, b)| wire_size(b) as u64).collect(),
        samples.iter().map(|(n, _)| uidl_of(n).to_owned()).collect(),
    )
}

#[test]
fn damaged_or_foreign_indexes_never_give_wrong_answers() {
    let (fx, samples) = fixture();
    let md = fx.maildir("alice");
    let want = expected(&samples);
    let srv = Server::start(&fx, &[]);
    assert_eq!(list_and_uidl(&srv), want);
    let good = fs::read(md.join("corepop-index")).expect("index written at first login");
    assert!(good.starts_with(b"corepop-index 2\n"));

    let mut flipped = good.clone();
    let i = good.len() / 2;
    flipped[i] ^= 0x04;
    let lies = String::from_utf8(good.clone())
        .unwrap()
        .replace(&format!("\t{}\t", wire_size(&samples[0].1)), "\t1\t");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("zero length", Vec::new()),
        (
            "truncated (crashed writer)",
            good[..good.len() - 9].to_vec(),
        ),
        ("one flipped bit", flipped),
        (
            "older version",
            b"corepop-index 1\nx\t1\t1\nend 1 0000000000000000\n".to_vec(),
        ),
        ("wrong size, stale checksum", lies.into_bytes()),
        ("garbage", b"\x00\xffnot an index at all".to_vec()),
    ];
    for (what, bytes) in cases {
        fs::write(md.join("corepop-index"), &bytes).unwrap();
        // Another process's leftovers from a crash, too.
        fs::write(
            md.join("corepop-index.tmp.99999.1"),
            b"corepop-index 2\nhalf",
        )
        .unwrap();
        assert_eq!(list_and_uidl(&srv), want, "{what}");
        let rewritten = fs::read(md.join("corepop-index")).unwrap();
        assert!(
            rewritten.starts_with(b"corepop-index 2\n"),
            "{what}: rebuilt"
        );
    }
}

#[test]
fn unwritable_index_leaves_sessions_working_and_is_written_later() {
    let (fx, samples) = fixture();
    let md = fx.maildir("alice");
    // A directory where the index goes: every write fails (like a full disk).
    fs::create_dir(md.join("corepop-index")).unwrap();
    let srv = Server::start(&fx, &[]);
    assert_eq!(list_and_uidl(&srv), expected(&samples));
    let mut c = Pop3Client::connect(srv.addr);
    c.login("alice", "pw");
    let (st, body) = c.multi("RETR 2");
    assert!(st.starts_with("+OK"), "{st}");
    assert_eq!(body, expected_wire(&samples[1].1));
    c.cmd("QUIT");
    fs::remove_dir(md.join("corepop-index")).unwrap();
    // A delivery makes the next login rebuild, and the index is written this time.
    fx.deliver("alice", "new", "1800000000.M1P1.x", b"Subject: late\n\nx\n");
    let (sizes, _) = list_and_uidl(&srv);
    assert_eq!(sizes.len(), samples.len() + 1);
    assert!(fs::read(md.join("corepop-index"))
        .unwrap()
        .starts_with(b"corepop-index 2\n"));
}

#[test]
fn odd_file_names_are_served_or_skipped_sensibly() {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    fx.config(ROOT_OK);
    let names = [
        "1700000001.M1P1.h",                // no :2,
        "1700000002.M1P1.h:2,",             // no flags
        "1700000003.M1P1.h:2,zyxSRF",       // odd/keyword flags
        "1700000004.M1P1.h:1,experimental", // another info version
        "1700000005.M1P1.h,S=abc,W=:2,S",   // unparsable sizes: read the file
        "not-a-maildir-name",
        &"x".repeat(120), // too long for a UIDL: hashed
    ];
    for n in names {
        fx.deliver("alice", "cur", n, b"Subject: x\n\nbody\n");
    }
    fx.deliver("alice", "cur", ".hidden", b"not a message\n");
    let srv = Server::start(&fx, &[]);
    let (sizes, uidls) = list_and_uidl(&srv);
    assert_eq!(sizes, vec![20; names.len()]);
    assert_eq!(uidls.len(), names.len());
    for u in &uidls {
        assert!((1..=70).contains(&u.len()) && u.bytes().all(|b| (0x21..=0x7e).contains(&b)));
    }
    assert!(uidls.contains(&"not-a-maildir-name".to_owned()));
    assert!(uidls.contains(&"1700000005.M1P1.h,S=abc,W=".to_owned()));
}

#[test]
fn snapshot_semantics_under_concurrent_delivery_and_removal() {
    let (fx, samples) = fixture();
    let md = fx.maildir("alice");
    let srv = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(srv.addr);
    c.login("alice", "pw");
    let stat = c.cmd("STAT");
    // Arrives during the session: not shown until the next login.
    fx.deliver("alice", "new", "1800000000.M1P1.x", b"Subject: late\n\nx\n");
    assert_eq!(c.cmd("STAT"), stat);
    let n = samples.len();
    assert!(c.cmd(&format!("LIST {}", n + 1)).starts_with("-ERR"));
    // Removed by another agent (an IMAP expunge) during the session: RETR fails, no crash.
    let victim = md.join("cur").join(&samples[5].0);
    fs::remove_file(&victim).unwrap();
    let r = c.cmd("RETR 6");
    assert!(r.starts_with("-ERR"), "{r}");
    let r = c.cmd("TOP 6 0");
    assert!(r.starts_with("-ERR"), "{r}");
    let (st, body) = c.multi("RETR 7");
    assert!(st.starts_with("+OK"), "{st}");
    assert_eq!(body, expected_wire(&samples[6].1));
    assert!(c.cmd("NOOP").starts_with("+OK"));
    c.cmd("QUIT");
    // The next login sees both changes.
    let (sizes, uidls) = list_and_uidl(&srv);
    assert_eq!(sizes.len(), n);
    assert!(!uidls.contains(&uidl_of(&samples[5].0).to_owned()));
    assert_eq!(uidls.last().unwrap(), "1800000000.M1P1.x");
}

/// An empty mailbox (many are) gets no index file: nothing to keep stable. Once mail arrives
/// the index is written, and emptying the mailbox again keeps it (with no records), so the
/// UIDL format its clients saw stays.
#[test]
fn empty_mailboxes_get_no_index_until_mail_arrives() {
    let mut fx = Fixture::new();
    fx.add_user("bob", "pw");
    fx.config(ROOT_OK);
    let index = fx.maildir("bob").join("corepop-index");
    let srv = Server::start(&fx, &[]);
    let login = || {
        let mut c = Pop3Client::connect(srv.addr);
        assert!(c.login("bob", "pw").starts_with("+OK"));
        c
    };
    let mut c = login();
    assert_eq!(c.cmd("STAT"), "+OK 0 0");
    c.cmd("QUIT");
    assert!(!index.exists(), "an empty Maildir got an index");

    fx.deliver("bob", "new", "1700000000.M1P1.h", b"Subject: x\n\nhi\n");
    let mut c = login();
    assert!(c.cmd("STAT").starts_with("+OK 1 "));
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    assert!(c.cmd("QUIT").starts_with("+OK"));
    assert!(index.exists(), "no index after a delivery");

    let mut c = login();
    assert_eq!(c.cmd("STAT"), "+OK 0 0");
    c.cmd("QUIT");
    assert!(
        index.exists(),
        "the index of a Maildir that was emptied went away"
    );
}

/// A CRLF message of about `kib` KiB (above the size RETR maps), with `dot_line` inserted
/// after that many lines (`None`: no line starts with a dot, so it is already wire form).
fn crlf_message(kib: usize, dot_line: Option<usize>) -> Vec<u8> {
    let mut m = b"Subject: big\r\n\r\n".to_vec();
    let mut i = 0;
    while m.len() < kib << 10 {
        if Some(i) == dot_line {
            m.extend_from_slice(b".a line that starts with a dot\r\n");
        }
        m.extend_from_slice(
            format!("line {i} of a message stored with CRLF endings\r\n").as_bytes(),
        );
        i += 1;
    }
    m
}

/// Delivered the way Dovecot's LDA names files (`,S=` and `,W=`), so the index learns their
/// sizes from the names and nothing about dot-lines until a RETR reads them.
fn deliver_named(fx: &Fixture, n: u32, bytes: &[u8]) -> String {
    let name = format!(
        "17000000{n:02}.M{n}P1.h,S={},W={}",
        bytes.len(),
        wire_size(bytes)
    );
    fx.deliver("alice", "new", &name, bytes);
    name
}

/// The `shape` and `dots` codes of the index record for `name`.
fn index_codes(fx: &Fixture, name: &str) -> String {
    let index = fs::read_to_string(fx.maildir("alice").join("corepop-index")).unwrap();
    let line = index
        .lines()
        .find(|l| l.starts_with(&format!("{name}\t")))
        .unwrap_or_else(|| panic!("no record for {name} in\n{index}"));
    line.split('\t').nth(3).unwrap().to_owned()
}

/// A RETR that streams a message and finds it already in wire form lets later RETRs send it
/// as stored (from the mapping), in this process and, through the index, after a restart.
/// Messages with dot-lines anywhere, even only after what a TOP read, are never taken for
/// wire form: every RETR of them stays byte-exact.
#[test]
fn a_retr_that_finds_wire_form_is_remembered_and_never_misapplied() {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    fx.config(ROOT_OK);
    let msgs = [
        crlf_message(300, None),
        crlf_message(300, Some(5000)),
        crlf_message(300, Some(3)),
        crlf_message(300, Some(0)),
    ];
    let names: Vec<String> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| deliver_named(&fx, i as u32 + 1, m))
        .collect();
    // A snapshot listed within a second of a change is not shared; this test needs the
    // first login's snapshot to be the cached one.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut srv = Server::start(&fx, &[]);
    let retr_all = |srv: &Server, top_first: bool| {
        let mut c = Pop3Client::connect(srv.addr);
        assert!(c.login("alice", "pw").starts_with("+OK"));
        if top_first {
            // Headers and a few body lines of each: no dot-line among them in message 3.
            for i in 1..=msgs.len() {
                let (st, _) = c.multi(&format!("TOP {i} 2"));
                assert!(st.starts_with("+OK"), "{st}");
            }
        }
        for round in 0..2 {
            for (i, m) in msgs.iter().enumerate() {
                let (st, body) = c.multi(&format!("RETR {}", i + 1));
                assert!(st.starts_with("+OK"), "{st}");
                assert!(
                    body == expected_wire(m),
                    "RETR {} (round {round}) is not the message's wire form",
                    i + 1
                );
            }
        }
        assert!(c.cmd("QUIT").starts_with("+OK"));
    };
    retr_all(&srv, true);
    retr_all(&srv, false);
    for n in &names {
        assert_eq!(index_codes(&fx, n), "??", "before any rebuild");
    }
    // New mail: the next login rebuilds the snapshot and records what the RETRs found.
    fx.deliver("alice", "new", "1800000000.M1P1.x", b"Subject: late\n\nx\n");
    retr_all(&srv, false);
    assert_eq!(index_codes(&fx, &names[0]), "c-");
    for n in &names[1..] {
        assert_eq!(index_codes(&fx, n), "??", "{n} has dot-lines");
    }
    // A new process knows it from the index alone.
    srv.stop();
    let srv = Server::start(&fx, &[]);
    retr_all(&srv, false);
    retr_all(&srv, true);
}
