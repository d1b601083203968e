//! Crash injection: many POP3 sessions doing DELE + QUIT against the real binary, which is
//! killed with SIGKILL at random moments (during login and the index write, during
//! TRANSACTION, inside UPDATE, or after the sessions ended), then restarted. After every
//! restart the invariants are checked exactly, on disk and through POP3:
//!
//! - every message whose deletion was acknowledged (`+OK` to QUIT) is gone;
//! - every message never marked for deletion is present, byte for byte, with its old UIDL;
//!   a message marked by a session whose QUIT was not acknowledged is either present whole
//!   or gone (UPDATE may have been interrupted), never anything else;
//! - no message appears twice (e.g. in both `new/` and `cur/`), and no unknown file appears;
//! - the index is consistent: it parses, and LIST (served from it) gives every message's
//!   exact CRLF size; RETR gives its exact bytes;
//! - no stale lock: every user logs in (`+OK`, not `[IN-USE]`) on the restarted server.
//!
//! Budget: `KILL9_SECONDS` (default 75) or `KILL9_TRIALS` (default 1500) trials, whichever
//! ends first; `KILL9_SEED` replays a run. The trial count is printed (`--nocapture`).

mod common;
mod robust;

use common::{expected_wire, wire_size, Fixture, Server};
use rand::{rngs::StdRng, Rng, SeedableRng};
use robust::{env_num, listing, RawClient};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::time::{Duration, Instant};

const USERS: usize = 4;
const TARGET_MESSAGES: usize = 7;
const TIMEOUT: Duration = Duration::from_secs(20);

/// The expected contents of one maildrop.
#[derive(Default)]
struct Expect {
    /// Base name (= UIDL) → bytes, for messages that must be there.
    present: BTreeMap<String, Vec<u8>>,
    /// Messages that may be there (whole) or gone: marked by an unacknowledged session.
    maybe: BTreeMap<String, Vec<u8>>,
}

/// What one session saw before it ended or the server died.
#[derive(Default, Debug)]
struct Outcome {
    marked: Vec<String>,
    quit_acked: bool,
}

fn message(rng: &mut StdRng, id: &str) -> Vec<u8> {
    let mut m = format!("Message-ID: <{id}@kill9>\nSubject: trial\n\n").into_bytes();
    for _ in 0..rng.gen_range(1..30) {
        match rng.gen_range(0..6) {
            0 => m.extend_from_slice(b".dot line\n"),
            1 => m.extend_from_slice(b"crlf line\r\n"),
            2 => m.push(b'\n'),
            _ => {
                let n = rng.gen_range(0..80);
                m.extend((0..n).map(|_| rng.gen_range(b' '..=b'~')));
                m.push(b'\n');
            }
        }
    }
    m
}

fn session(addr: std::net::SocketAddr, user: &str, seed: u64) -> Outcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Outcome::default();
    let mut run = |out: &mut Outcome| -> std::io::Result<()> {
        let mut c = RawClient::connect(addr, TIMEOUT)?;
        let r = c.login(user, "pw")?;
        if !r.starts_with("+OK") {
            return Ok(());
        }
        let (_, body) = c.multi("UIDL")?;
        let uidls = listing(&body);
        for (n, uidl) in &uidls {
            if rng.gen_bool(0.4) {
                let r = c.cmd(&format!("DELE {n}"))?;
                assert!(r.starts_with("+OK"), "DELE {n} -> {r}");
                out.marked.push(uidl.clone());
            } else if rng.gen_bool(0.1) {
                c.multi(&format!("RETR {n}"))?;
            }
        }
        let r = c.cmd("QUIT")?;
        out.quit_acked = r.starts_with("+OK");
        Ok(())
    };
    let _ = run(&mut out);
    out
}

/// Checks the Maildir on disk against `exp`, resolving `maybe` entries.
fn check_disk(fx: &Fixture, user: &str, exp: &mut Expect, trial: usize) {
    let root = fx.maildir(user);
    let mut seen: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for sub in ["new", "cur"] {
        for e in fs::read_dir(root.join(sub)).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let base = name.split(':').next().unwrap().to_string();
            let bytes = fs::read(e.path()).unwrap();
            assert!(
                seen.insert(base.clone(), bytes).is_none(),
                "trial {trial}: {user}: message {base} appears twice"
            );
        }
    }
    for (base, bytes) in &exp.present {
        let got = seen.get(base).unwrap_or_else(|| {
            panic!("trial {trial}: {user}: message {base} (never acknowledged as deleted) is gone")
        });
        assert!(got == bytes, "trial {trial}: {user}: {base} changed");
    }
    for (base, bytes) in std::mem::take(&mut exp.maybe) {
        if let Some(got) = seen.get(&base) {
            assert!(*got == bytes, "trial {trial}: {user}: {base} changed");
            exp.present.insert(base, bytes);
        }
    }
    for base in seen.keys() {
        assert!(
            exp.present.contains_key(base),
            "trial {trial}: {user}: {base} should have been deleted (or is unknown)"
        );
    }
    // The index, when present, parses (a torn or half-written index would not).
    let index = root.join(corepop::mailbox::index::INDEX_FILE);
    if let Ok(bytes) = fs::read(&index) {
        assert!(
            corepop::mailbox::index::parse(&bytes).is_some(),
            "trial {trial}: {user}: index does not parse"
        );
    }
}

/// Logs in (no stale lock), and checks UIDL, LIST and one RETR against `exp`.
fn check_pop3(server: &Server, user: &str, exp: &Expect, rng: &mut StdRng, trial: usize) {
    let mut c = RawClient::connect(server.addr, TIMEOUT).expect("connect");
    let r = c.login(user, "pw").expect("login");
    assert!(
        r.starts_with("+OK"),
        "trial {trial}: {user} cannot log in after restart: {r}"
    );
    let (_, uidl) = c.multi("UIDL").expect("UIDL");
    let (_, list) = c.multi("LIST").expect("LIST");
    let uidl = listing(&uidl);
    let list = listing(&list);
    let got: BTreeSet<&str> = uidl.iter().map(|(_, u)| u.as_str()).collect();
    let want: BTreeSet<&str> = exp.present.keys().map(String::as_str).collect();
    assert_eq!(got, want, "trial {trial}: {user}: UIDL list");
    assert_eq!(
        got.len(),
        uidl.len(),
        "trial {trial}: {user}: duplicate UIDL"
    );
    for ((n, u), (m, size)) in uidl.iter().zip(&list) {
        assert_eq!(n, m);
        let bytes = &exp.present[u];
        assert_eq!(
            size.parse::<usize>().unwrap(),
            wire_size(bytes),
            "trial {trial}: {user}: LIST {n} ({u}) size"
        );
    }
    if !uidl.is_empty() {
        let (n, u) = &uidl[rng.gen_range(0..uidl.len())];
        let (status, body) = c.multi(&format!("RETR {n}")).expect("RETR");
        assert!(status.starts_with("+OK"), "{status}");
        assert!(
            body == expected_wire(&exp.present[u]),
            "trial {trial}: {user}: RETR {n} ({u}) bytes differ"
        );
    }
    let r = c.cmd("QUIT").expect("QUIT");
    assert!(r.starts_with("+OK"), "{r}");
}

#[test]
fn kill9_during_sessions_keeps_every_invariant() {
    let seconds: u64 = env_num("KILL9_SECONDS", 75);
    let max_trials: usize = env_num("KILL9_TRIALS", 1500);
    let seed: u64 = env_num("KILL9_SEED", rand::random());
    eprintln!("kill9: seed {seed} (KILL9_SEED={seed} replays)");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut fx = Fixture::new();
    let users: Vec<String> = (0..USERS).map(|i| format!("k{i}")).collect();
    for u in &users {
        fx.add_user(u, "pw");
    }
    fx.config("");
    let mut exp: Vec<Expect> = (0..USERS).map(|_| Expect::default()).collect();
    let mut seq = 0u64;
    let started = Instant::now();
    let mut trials = 0usize;
    let (mut acked, mut unacked, mut deleted) = (0usize, 0usize, 0usize);
    let mut server = Server::start(&fx, &[]);
    while trials < max_trials && started.elapsed() < Duration::from_secs(seconds) {
        // Verify the state left by the previous trial on the freshly started server.
        for (i, u) in users.iter().enumerate() {
            check_pop3(&server, u, &exp[i], &mut rng, trials);
        }
        // Top up each maildrop: new/ without ,W= (the login must read and index them), and
        // some in cur/ with Dovecot sizes.
        for (i, u) in users.iter().enumerate() {
            while exp[i].present.len() < TARGET_MESSAGES {
                seq += 1;
                let bytes = message(&mut rng, &format!("{u}.{seq}"));
                let base = if rng.gen_bool(0.7) {
                    format!("{}.M{seq}P{i}.kill9", 1_700_000_000 + seq)
                } else {
                    format!(
                        "{}.M{seq}P{i}.kill9,S={},W={}",
                        1_700_000_000 + seq,
                        bytes.len(),
                        wire_size(&bytes)
                    )
                };
                if base.contains(",S=") {
                    fx.deliver(u, "cur", &format!("{base}:2,S"), &bytes);
                } else {
                    fx.deliver(u, "new", &base, &bytes);
                }
                exp[i].present.insert(base, bytes);
            }
        }
        // Concurrent sessions, and a SIGKILL at a random moment (sometimes after they end).
        let addr = server.addr;
        let handles: Vec<_> = users
            .iter()
            .map(|u| {
                let (u, s) = (u.clone(), rng.gen());
                std::thread::spawn(move || session(addr, &u, s))
            })
            .collect();
        let delay = match rng.gen_range(0..10) {
            0 => 30_000,
            _ => rng.gen_range(0..12_000),
        };
        std::thread::sleep(Duration::from_micros(delay));
        server.signal(libc::SIGKILL);
        let outcomes: Vec<Outcome> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        server.stop();
        trials += 1;
        for (i, o) in outcomes.iter().enumerate() {
            for uidl in &o.marked {
                let bytes = exp[i].present.remove(uidl).expect("marked a known message");
                if o.quit_acked {
                    deleted += 1;
                } else {
                    exp[i].maybe.insert(uidl.clone(), bytes);
                }
            }
            if !o.marked.is_empty() {
                if o.quit_acked {
                    acked += 1;
                } else {
                    unacked += 1;
                }
            }
        }
        for (i, u) in users.iter().enumerate() {
            check_disk(&fx, u, &mut exp[i], trials);
        }
        server = Server::start(&fx, &[]);
    }
    for (i, u) in users.iter().enumerate() {
        check_pop3(&server, u, &exp[i], &mut rng, trials);
    }
    drop(server);
    eprintln!(
        "kill9: {trials} SIGKILL trials in {:.1} s: {acked} sessions with acknowledged deletions \
         ({deleted} messages, all gone), {unacked} sessions killed before their QUIT was \
         acknowledged; every invariant held",
        started.elapsed().as_secs_f64()
    );
    assert!(
        trials >= 50,
        "only {trials} trials ran: too slow to mean anything"
    );
}
