//! The whole sans-I/O `Session`, driven like the runtime drives it, with arbitrary client bytes
//! (arbitrary lines in arbitrary chunks), arbitrary connection facts, arbitrary login outcomes
//! and maildrops, and arbitrary retrieve and commit outcomes.
//!
//! A model tracks what the session must do, using the crate's own line framing and command
//! parser as the oracle for *which* command a line is, and checks:
//! - every reply is CRLF-terminated, at most 512 octets, and starts with `+OK`/`-ERR` where a
//!   status line is due;
//! - STAT, LIST and LIST n report exactly the sizes the maildrop reports (what RETR sends) for
//!   undeleted messages only; UIDL lists undeleted messages only;
//! - RETR/TOP of a deleted or out-of-range message never reaches the runtime (no
//!   `Step::Retrieve`), and the `+OK <n> octets` line of RETR is the message's size;
//! - `Step::Commit` happens only after QUIT in TRANSACTION with deletions, and the deletions
//!   handed over are exactly the messages marked (and not reset);
//! - nothing needing a maildrop happens before login; after `Step::Close` the session stays
//!   closed.
#![no_main]

use std::collections::BTreeSet;
use std::sync::Arc;

use corepop::protocol::command::{parse, Command};
use corepop::protocol::{
    ConnInfo, LoginResult, Maildrop, RetrieveError, Session, SessionConfig, Step, MAX_LINE,
};
use libfuzzer_sys::fuzz_target;

struct Drop_ {
    octets: Vec<u64>,
    uidls: Vec<String>,
}

impl Maildrop for Drop_ {
    fn count(&self) -> usize {
        self.octets.len()
    }
    fn octets(&self, i: usize) -> u64 {
        self.octets[i]
    }
    fn uidl(&self, i: usize) -> &str {
        &self.uidls[i]
    }
}

/// A byte source that never runs dry (zeros after the end).
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a
    }
}

enum ModelState {
    Auth,
    Trans {
        count: usize,
        octets: Vec<u64>,
        deleted: BTreeSet<usize>,
    },
}

/// Splits `out` into CRLF lines and checks their length.
fn reply_lines(out: &[u8]) -> Vec<&[u8]> {
    assert!(
        out.is_empty() || out.ends_with(b"\r\n"),
        "reply not CRLF-terminated: {:?}",
        String::from_utf8_lossy(out)
    );
    let mut v = Vec::new();
    for l in out.split_inclusive(|&b| b == b'\n') {
        assert!(l.ends_with(b"\r\n"), "bare LF in reply");
        assert!(l.len() <= 512, "reply line of {} octets", l.len());
        v.push(&l[..l.len() - 2]);
    }
    v
}

fn num(b: &[u8]) -> u64 {
    std::str::from_utf8(b)
        .expect("ascii")
        .parse()
        .expect("number")
}

fuzz_target!(|data: &[u8]| {
    let mut src = Bytes(data);
    let flags = src.byte();
    let cfg = Arc::new(SessionConfig {
        greeting: "ready.".into(),
        implementation: "fuzz".into(),
        max_bad_commands: u32::from(src.byte() % 30),
        max_auth_failures: u32::from(src.byte() % 5),
        ..SessionConfig::default()
    });
    let conn = ConnInfo {
        apop_timestamp: (flags & 1 != 0).then(|| "<1.2@fuzz>".to_string()),
        plaintext_auth: flags & 2 != 0,
        stls: flags & 4 != 0,
        secure: flags & 8 != 0,
        ..ConnInfo::default()
    };
    let mut s: Session<Drop_> = Session::new(cfg, conn);
    let mut out = Vec::new();
    s.greeting(&mut out);
    assert!(out.starts_with(b"+OK ") && out.ends_with(b"\r\n"));
    out.clear();
    let mut model = ModelState::Auth;

    // Each round: one line of client input (arbitrary bytes, maybe over-long), fed in chunks.
    while !src.0.is_empty() {
        let kind = src.byte();
        let mut line: Vec<u8> = match kind % 4 {
            // A well-formed-ish command with a small message number, to reach deep states.
            0 => {
                let verbs: [&[u8]; 14] = [
                    b"USER u", b"PASS p", b"STAT", b"LIST", b"UIDL", b"RETR ", b"TOP ", b"DELE ",
                    b"RSET", b"NOOP", b"QUIT", b"CAPA", b"STLS", b"LIST ",
                ];
                let v = verbs[usize::from(src.byte()) % verbs.len()].to_vec();
                let mut l = v.clone();
                if v.ends_with(b" ") {
                    l.extend_from_slice((src.byte() % 12).to_string().as_bytes());
                    if v == b"TOP " {
                        l.extend_from_slice(format!(" {}", src.byte() % 4).as_bytes());
                    }
                }
                l
            }
            // Arbitrary bytes.
            1 | 2 => {
                let n = usize::from(src.byte());
                src.take(n).to_vec()
            }
            // Over-long.
            _ => vec![b'A'; MAX_LINE + usize::from(src.byte())],
        };
        line.retain(|&b| b != b'\n');
        let crlf = src.byte() & 1 == 0;
        let mut wire = line.clone();
        wire.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
        // What the decoder will hand the session: the line without CR, or "too long".
        let framed_len = wire.len();
        let mut content = line.clone();
        if !crlf && content.ends_with(b"\r") {
            content.pop();
        }
        let too_long = framed_len > MAX_LINE;
        let expect: Option<Command<'_>> = if too_long { None } else { parse(&content).ok() };

        // Feed in chunks; a partial line produces nothing.
        let mut rest = &wire[..];
        while rest.len() > 1 {
            let n = (usize::from(src.byte()) % 64 + 1).min(rest.len() - 1);
            s.feed(&rest[..n]);
            rest = &rest[n..];
            match s.poll(&mut out) {
                Step::NeedInput => assert!(out.is_empty(), "reply before the line was complete"),
                Step::Close => return,
                other => panic!("{other:?} before the line was complete"),
            }
        }
        s.feed(rest);

        // Drive until the session wants input again.
        let mut steps = Vec::new();
        let mut acc = Vec::new();
        loop {
            let step = s.poll(&mut out);
            match step {
                Step::NeedInput => break,
                Step::Flush => {
                    steps.push("flush");
                    acc.extend_from_slice(&out);
                    out.clear();
                    continue;
                }
                Step::Close => {
                    steps.push("close");
                    break;
                }
                Step::Login(req) => {
                    steps.push("login");
                    assert!(
                        matches!(model, ModelState::Auth),
                        "login step in TRANSACTION"
                    );
                    let _ = req.0.user();
                    let r = src.byte() % 5;
                    let result = match r {
                        0 => {
                            let count = usize::from(src.byte() % 70);
                            let octets: Vec<u64> = (0..count)
                                .map(|i| u64::from(src.byte()) * (i as u64 + 1))
                                .collect();
                            let uidls = (0..count).map(|i| format!("uid{i}")).collect();
                            model = ModelState::Trans {
                                count,
                                octets: octets.clone(),
                                deleted: BTreeSet::new(),
                            };
                            LoginResult::Ok(Drop_ { octets, uidls })
                        }
                        1 => LoginResult::Failed,
                        2 => LoginResult::InUse,
                        3 => LoginResult::TempFail,
                        _ => LoginResult::PermFail,
                    };
                    s.login_done(&mut out, result);
                    assert_eq!(s.logged_in(), r == 0);
                }
                Step::Retrieve { index, lines } => {
                    steps.push("retrieve");
                    let ModelState::Trans {
                        count,
                        octets,
                        deleted,
                    } = &model
                    else {
                        panic!("Step::Retrieve before login");
                    };
                    assert!(
                        index < *count,
                        "retrieve of message {} of {count}",
                        index + 1
                    );
                    assert!(!deleted.contains(&index), "a deleted message was served");
                    match &expect {
                        Some(Command::Retr(n)) => assert!(lines.is_none() && n.index() == index),
                        Some(Command::Top(n, k)) => {
                            assert!(lines == Some(*k) && n.index() == index)
                        }
                        other => panic!("Step::Retrieve for {other:?}"),
                    }
                    if src.byte() % 4 == 0 {
                        let e = match src.byte() % 3 {
                            0 => RetrieveError::Gone,
                            1 => RetrieveError::Temporary,
                            _ => RetrieveError::Unreadable,
                        };
                        s.retrieve_failed(&mut out, e);
                        assert!(out.starts_with(b"-ERR"));
                    } else {
                        s.retrieve_ready(&mut out);
                        if lines.is_none() {
                            let want = format!("+OK {} octets\r\n", octets[index]);
                            assert!(
                                out.ends_with(want.as_bytes()),
                                "RETR status {:?}",
                                String::from_utf8_lossy(&out)
                            );
                        } else {
                            assert!(out.starts_with(b"+OK"));
                        }
                    }
                    out.clear();
                }
                Step::Commit => {
                    steps.push("commit");
                    let ModelState::Trans { deleted, .. } = &model else {
                        panic!("Step::Commit before login");
                    };
                    assert!(matches!(expect, Some(Command::Quit)), "commit without QUIT");
                    assert!(!deleted.is_empty(), "commit with nothing to delete");
                    let got: BTreeSet<usize> = s.deletions().collect();
                    assert_eq!(
                        &got, deleted,
                        "deletions handed to UPDATE differ from DELE marks"
                    );
                    let failed = usize::from(src.byte()) % (deleted.len() + 1);
                    s.commit_done(&mut out, failed);
                    assert_eq!(out.starts_with(b"+OK"), failed == 0);
                }
                Step::StartTls => {
                    steps.push("stls");
                    assert!(matches!(model, ModelState::Auth));
                    assert!(out.ends_with(b"+OK Begin TLS negotiation now.\r\n"));
                    if src.byte() & 1 == 0 {
                        return; // handshake failed: the runtime closes
                    }
                    s.tls_started();
                    assert!(s.is_secure());
                }
                // Steps added later (e.g. SASL exchanges) end the run: nothing to model yet.
                #[allow(unreachable_patterns)]
                _ => return,
            }
        }
        acc.extend_from_slice(&out);
        out.clear();
        let lines = reply_lines(&acc);
        // Check the model for commands that completed normally in TRANSACTION.
        if let (
            ModelState::Trans {
                count,
                octets,
                deleted,
            },
            Some(cmd),
        ) = (&mut model, &expect)
        {
            if s.logged_in() && !steps.contains(&"retrieve") && !lines.is_empty() {
                let first = lines[0];
                let undeleted: Vec<usize> = (0..*count).filter(|i| !deleted.contains(i)).collect();
                let resolve = |n: u32| -> Option<usize> {
                    let i = n as usize - 1;
                    (i < *count && !deleted.contains(&i)).then_some(i)
                };
                match cmd {
                    Command::Stat => {
                        let f: Vec<&[u8]> = first.split(|&b| b == b' ').collect();
                        assert_eq!(f[0], b"+OK");
                        assert_eq!(num(f[1]), undeleted.len() as u64);
                        assert_eq!(num(f[2]), undeleted.iter().map(|&i| octets[i]).sum::<u64>());
                    }
                    Command::List(None) | Command::Uidl(None)
                        if first.starts_with(b"+OK") && lines.last() == Some(&&b"."[..]) =>
                    {
                        let body = &lines[1..lines.len() - 1];
                        assert_eq!(body.len(), undeleted.len(), "listing length");
                        for (l, &i) in body.iter().zip(&undeleted) {
                            let (n, v) =
                                l.split_at(l.iter().position(|&b| b == b' ').expect("space"));
                            assert_eq!(num(n), i as u64 + 1);
                            if matches!(cmd, Command::List(_)) {
                                assert_eq!(num(&v[1..]), octets[i], "LIST size");
                            } else {
                                assert_eq!(&v[1..], format!("uid{i}").as_bytes());
                            }
                        }
                    }
                    Command::List(Some(n)) => match resolve(n.get()) {
                        Some(i) => {
                            assert_eq!(first, format!("+OK {} {}", i + 1, octets[i]).as_bytes())
                        }
                        None => assert!(first.starts_with(b"-ERR")),
                    },
                    Command::Uidl(Some(n)) => match resolve(n.get()) {
                        Some(i) => assert_eq!(first, format!("+OK {} uid{i}", i + 1).as_bytes()),
                        None => assert!(first.starts_with(b"-ERR")),
                    },
                    Command::Retr(n) | Command::Top(n, _) => {
                        assert!(
                            resolve(n.get()).is_none(),
                            "RETR of an available message did not retrieve"
                        );
                        assert!(first.starts_with(b"-ERR"));
                    }
                    Command::Dele(n) => match resolve(n.get()) {
                        Some(i) => {
                            assert!(first.starts_with(b"+OK"), "DELE refused");
                            deleted.insert(i);
                        }
                        None => assert!(
                            first.starts_with(b"-ERR"),
                            "DELE of a deleted message accepted"
                        ),
                    },
                    Command::Rset => {
                        assert!(first.starts_with(b"+OK"));
                        deleted.clear();
                    }
                    _ => {}
                }
            }
        }
        if steps.contains(&"close") {
            assert!(s.is_closed());
            assert!(matches!(s.poll(&mut out), Step::Close));
            if let ModelState::Trans { deleted, .. } = &model {
                if matches!(expect, Some(Command::Quit)) && s.logged_in() {
                    assert!(deleted.is_empty() || steps.contains(&"commit"));
                }
                if matches!(expect, Some(Command::Quit)) && !deleted.is_empty() {
                    assert!(
                        steps.contains(&"commit"),
                        "QUIT with deletions closed without UPDATE"
                    );
                }
            }
            return;
        }
    }
});
