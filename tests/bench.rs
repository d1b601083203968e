//! `corepop bench` (the load generator) against the real server: every login method, the
//! octet counts it verifies, DELE, TOP, idle connections and how refused logins are counted;
//! and against Debian's Dovecot (a private instance, `interop/dovecot.rs`; needs root), since
//! it is meant for any POP3 server. Checks what the report says against what the fixture
//! holds; no timing is asserted.

mod common;
#[path = "interop/dovecot.rs"]
#[allow(dead_code)]
mod dovecot;

use common::{expected_wire, Fixture, Server};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

const METHODS: [&str; 7] = [
    "user",
    "apop",
    "plain",
    "login",
    "cram-md5",
    "scram-sha-1",
    "scram-sha-256",
];

const USERS: usize = 4;

/// `USERS` users, each with the sample messages (LF and CRLF, dot lines, no final newline).
fn fixture() -> (Fixture, usize, u64) {
    let mut fx = Fixture::new();
    let mut per_user = (0, 0);
    for i in 0..USERS {
        let user = format!("user{i}");
        fx.add_user(&user, &format!("pw-{i}"));
        let msgs = fx.deliver_samples(&user);
        per_user = (
            msgs.len(),
            msgs.iter()
                .map(|(_, m)| expected_wire(m).len() as u64)
                .sum(),
        );
    }
    fx.config("");
    (fx, per_user.0, per_user.1)
}

/// Runs `corepop bench --json` against `srv` and returns the report.
fn bench(srv: &Server, users: &Path, args: &[&str]) -> Value {
    let pid = srv.pid().expect("server running").to_string();
    bench_at(srv.addr, users, &[&["--server-pid", &pid], args].concat())
}

/// Runs `corepop bench --json` against `addr` and returns the report.
fn bench_at(addr: SocketAddr, users: &Path, args: &[&str]) -> Value {
    let addr = addr.to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_corepop"))
        .args(["bench", "--addr", &addr, "--users"])
        .arg(users)
        .args(["--warmup", "0", "--json", "--quiet", "--timeout", "20"])
        .args(["--threads", "1"])
        .args(args)
        .output()
        .expect("run corepop bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench {args:?} failed: {stderr}");
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("bench {args:?}: not JSON ({e}): {stdout}\n{stderr}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Checks a full-download report: no errors, at least `at_least` sessions, and every
/// session retrieved all `msgs` messages of its user, `octets` in all. Returns the sessions.
fn downloaded_everything(r: &Value, at_least: u64, msgs: usize, octets: u64, ctx: &str) -> u64 {
    assert_eq!(n(&r["error_total_all"]), 0, "{ctx}: {r}");
    let sessions = n(&r["sessions"]);
    assert!(sessions >= at_least, "{ctx}: {r}");
    assert_eq!(n(&r["messages"]), sessions * msgs as u64, "{ctx}: {r}");
    assert_eq!(n(&r["bytes"]), sessions * octets, "{ctx}: {r}");
    sessions
}

/// A users file with a wrong password for the first `count` users.
fn wrong_users(fx: &Fixture, count: usize) -> std::path::PathBuf {
    let path = fx.path().join("wrong-users");
    let lines: String = (0..count).map(|i| format!("user{i}:nope\n")).collect();
    std::fs::write(&path, lines).unwrap();
    path
}

#[test]
fn every_login_method_retrieves_every_octet() {
    let (fx, msgs, octets) = fixture();
    let srv = Server::start(&fx, &[]);
    for auth in METHODS {
        let r = bench(
            &srv,
            &fx.passwd_path(),
            &["--auth", auth, "--sessions", "6", "-c", "2"],
        );
        assert_eq!(r["auth"], auth);
        let sessions = downloaded_everything(&r, 6, msgs, octets, auth);
        let lat = &r["latency_ms"]["session"];
        assert_eq!(n(&lat["count"]), sessions, "{auth}: {r}");
        let (p50, p99, max) = (f(&lat["p50"]), f(&lat["p99"]), f(&lat["max"]));
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{auth}: {lat}");
        assert!(f(&r["server_cpu_s"]) >= 0.0, "{auth}: {r}");
    }
    // Nothing was deleted by any of it.
    for i in 0..USERS {
        assert_eq!(fx.maildir_files(&format!("user{i}")).len(), msgs);
    }
}

#[test]
fn refused_logins_are_counted_by_kind() {
    let (fx, _, _) = fixture();
    let srv = Server::start(&fx, &[]);
    let wrong = wrong_users(&fx, USERS);
    for auth in ["user", "scram-sha-256"] {
        let r = bench(
            &srv,
            &wrong,
            &["--auth", auth, "--sessions", "3", "-c", "1"],
        );
        assert_eq!(n(&r["sessions"]), 0, "{auth}: {r}");
        assert!(n(&r["errors_all"]["auth"]) >= 3, "{auth}: {r}");
        assert_eq!(
            n(&r["error_total_all"]),
            n(&r["errors_all"]["auth"]),
            "{auth}: {r}"
        );
    }
}

#[test]
fn dele_empties_the_maildrops_and_top_counts_headers() {
    let (fx, msgs, octets) = fixture();
    let srv = Server::start(&fx, &[]);

    let r = bench(
        &srv,
        &fx.passwd_path(),
        &["--mode", "top", "--sessions", "4"],
    );
    assert_eq!(n(&r["error_total_all"]), 0, "{r}");
    let sessions = n(&r["sessions"]);
    assert_eq!(n(&r["messages"]), sessions * msgs as u64, "{r}");
    // Headers only: less than the messages, more than nothing.
    assert!(
        0 < n(&r["bytes"]) && n(&r["bytes"]) < sessions * octets,
        "{r}"
    );

    // One session per user (-c 1 takes users round-robin) deletes everything it retrieved.
    let r = bench(
        &srv,
        &fx.passwd_path(),
        &["--dele", "--sessions", &USERS.to_string(), "-c", "1"],
    );
    assert_eq!(n(&r["error_total_all"]), 0, "{r}");
    assert_eq!(n(&r["sessions"]), USERS as u64, "{r}");
    assert_eq!(n(&r["bytes"]), USERS as u64 * octets, "{r}");
    for i in 0..USERS {
        assert_eq!(fx.maildir_files(&format!("user{i}")), Vec::<String>::new());
    }
}

#[test]
fn idle_connections_stay_logged_in_while_sessions_run() {
    let (fx, msgs, _) = fixture();
    let srv = Server::start(&fx, &[]);
    // Two users held idle (logged in with AUTH PLAIN), the other two do the workload.
    let r = bench(
        &srv,
        &fx.passwd_path(),
        &[
            "--idle",
            "2",
            "--auth",
            "plain",
            "--sessions",
            "4",
            "-c",
            "1",
        ],
    );
    assert_eq!(n(&r["error_total_all"]), 0, "{r}");
    let idle = &r["idle"];
    assert_eq!(
        (n(&idle["opened"]), n(&idle["alive_at_end"])),
        (2, 2),
        "{r}"
    );
    assert_eq!(idle["logged_in"], true);
    assert_eq!(n(&r["messages"]), n(&r["sessions"]) * msgs as u64, "{r}");
}

#[test]
fn every_login_method_works_against_dovecot_too() {
    let (fx, msgs, octets) = fixture();
    let dv = dovecot::Dovecot::start_with(
        &fx,
        "auth_mechanisms = plain login apop cram-md5 scram-sha-1 scram-sha-256\n",
    );
    for auth in METHODS {
        let r = bench_at(
            dv.addr,
            &fx.passwd_path(),
            &["--auth", auth, "--sessions", "4", "-c", "1"],
        );
        downloaded_everything(&r, 4, msgs, octets, &format!("{auth}\n{}", dv.log()));
    }
    // A wrong password is an auth error there as well.
    let wrong = wrong_users(&fx, 1);
    let r = bench_at(dv.addr, &wrong, &["--sessions", "1", "-c", "1"]);
    assert_eq!(n(&r["sessions"]), 0, "{r}");
    assert!(n(&r["errors_all"]["auth"]) >= 1, "{r}");
}
