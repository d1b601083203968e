//! SASL AUTH (RFC 5034) end to end against the real binary: a small Rust SASL client for
//! PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-1 and SCRAM-SHA-256; hashes made by Dovecot's own
//! `doveadm pw`; bad input; per-IP penalties across cores; `corepop pw`; and the real
//! clients curl (PLAIN, LOGIN, CRAM-MD5) and mpop (SCRAM via GNU SASL).

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::{expected_wire, Fixture, Pop3Client, Server};
use corepop::auth::scheme::{self, ScramAlg};

fn b64(s: impl AsRef<[u8]>) -> String {
    B64.encode(s)
}

/// Decodes a `+ <base64>` continuation.
fn continuation(line: &str) -> Vec<u8> {
    let data = line
        .strip_prefix("+ ")
        .or_else(|| (line == "+").then_some(""))
        .unwrap_or_else(|| panic!("expected a continuation, got {line:?}"));
    B64.decode(data)
        .unwrap_or_else(|e| panic!("bad base64 in {line:?}: {e}"))
}

fn auth_plain(c: &mut Pop3Client, user: &str, pw: &str) -> String {
    c.cmd(&format!("AUTH PLAIN {}", b64(format!("\0{user}\0{pw}"))))
}

fn auth_login(c: &mut Pop3Client, user: &str, pw: &str) -> String {
    assert_eq!(continuation(&c.cmd("AUTH LOGIN")), b"Username:");
    assert_eq!(continuation(&c.cmd(&b64(user))), b"Password:");
    c.cmd(&b64(pw))
}

fn auth_cram(c: &mut Pop3Client, user: &str, pw: &str) -> String {
    let challenge = String::from_utf8(continuation(&c.cmd("AUTH CRAM-MD5"))).unwrap();
    assert!(
        challenge.starts_with('<') && challenge.ends_with('>'),
        "{challenge}"
    );
    let digest = scheme::cram_md5_digest(pw.as_bytes(), &challenge);
    c.cmd(&b64(format!("{user} {digest}")))
}

/// A SCRAM client (RFC 5802). `tamper` changes the client-final message before sending.
/// Returns the reply to the client-final message and, on success, the final `+OK`.
fn auth_scram_with(
    c: &mut Pop3Client,
    alg: ScramAlg,
    user: &str,
    pw: &str,
    tamper: impl Fn(String) -> String,
) -> String {
    let mech = match alg {
        ScramAlg::Sha1 => "SCRAM-SHA-1",
        ScramAlg::Sha256 => "SCRAM-SHA-256",
    };
    let cnonce = b64(rand::random::<[u8; 12]>());
    let bare = format!("n={user},r={cnonce}");
    let sf = c.cmd(&format!("AUTH {mech} {}", b64(format!("n,,{bare}"))));
    let sf = String::from_utf8(continuation(&sf)).unwrap();
    let mut fields = sf.split(',');
    let r = fields
        .next()
        .unwrap()
        .strip_prefix("r=")
        .unwrap()
        .to_string();
    let s = B64
        .decode(fields.next().unwrap().strip_prefix("s=").unwrap())
        .unwrap();
    let i: u32 = fields
        .next()
        .unwrap()
        .strip_prefix("i=")
        .unwrap()
        .parse()
        .unwrap();
    assert!(r.starts_with(&cnonce) && r.len() > cnonce.len(), "{sf}");
    assert!(i >= 4096);
    let without_proof = format!("c=biws,r={r}");
    let am = format!("{bare},{sf},{without_proof}");
    let proof = scheme::scram_client_proof(alg, pw.as_bytes(), &s, i, am.as_bytes());
    let fin = tamper(format!("{without_proof},p={}", b64(&proof)));
    let reply = c.cmd(&b64(fin));
    if !reply.starts_with('+') || reply.starts_with("+OK") {
        return reply;
    }
    // Server-final: check the server knows the password too (mutual authentication).
    let v = String::from_utf8(continuation(&reply)).unwrap();
    let secret = scheme::scram_derive(alg, pw.as_bytes(), &s, i);
    let want = scheme::scram_server_signature(&secret, am.as_bytes());
    assert_eq!(v, format!("v={}", b64(want)), "server signature");
    c.cmd("")
}

fn auth_scram(c: &mut Pop3Client, alg: ScramAlg, user: &str, pw: &str) -> String {
    auth_scram_with(c, alg, user, pw, |s| s)
}

/// Adds `user` with the stored password `stored` (any scheme) and a Maildir.
fn add_hashed_user(fx: &Fixture, user: &str, stored: &str) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(fx.passwd_path())
        .unwrap();
    writeln!(f, "{user}:{stored}::::::").unwrap();
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(fx.maildir(user).join(sub)).unwrap();
    }
}

fn capa_sasl(c: &mut Pop3Client) -> String {
    let (st, body) = c.multi("CAPA");
    assert!(st.starts_with("+OK"), "{st}");
    String::from_utf8(body)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("SASL ").map(str::to_string))
        .unwrap_or_default()
}

const MSG: &[u8] = b"From: a@example.org\nSubject: sasl\n\nhello\n.dot line\n";

fn deliver(fx: &Fixture, user: &str) {
    fx.deliver(user, "new", "1700000000.M1P1.corepop-test", MSG);
}

fn assert_session_works(c: &mut Pop3Client, what: &str) {
    let (st, body) = c.multi("RETR 1");
    assert!(st.starts_with("+OK"), "{what}: RETR -> {st}");
    assert_eq!(body, expected_wire(MSG), "{what}: RETR body");
    assert_eq!(c.cmd("QUIT"), "+OK Logging out.", "{what}");
}

/// Every mechanism logs in, over a Rust client, and the session then works.
#[test]
fn every_mechanism_end_to_end() {
    let mut fx = Fixture::new();
    fx.add_user("alice", "s3cret pass");
    add_hashed_user(
        &fx,
        "scram",
        &scheme::hash("SCRAM-SHA-256", b"pencil").unwrap(),
    );
    add_hashed_user(&fx, "cram", &scheme::hash("CRAM-MD5", b"pencil").unwrap());
    for u in ["alice", "scram", "cram"] {
        deliver(&fx, u);
    }
    // Not every user can do every mechanism, so list them explicitly.
    fx.config(
        "[auth]\nmechanisms = [\"PLAIN\", \"LOGIN\", \"CRAM-MD5\", \"SCRAM-SHA-1\", \"SCRAM-SHA-256\"]\n",
    );
    let server = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(server.addr);
    assert_eq!(
        capa_sasl(&mut c),
        "SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN"
    );
    let (st, list) = c.multi("AUTH");
    assert!(st.starts_with("+OK"), "{st}");
    assert_eq!(
        String::from_utf8(list).unwrap(),
        "SCRAM-SHA-256\r\nSCRAM-SHA-1\r\nCRAM-MD5\r\nPLAIN\r\nLOGIN\r\n"
    );

    type Mech = fn(&mut Pop3Client, &str, &str) -> String;
    let cases: &[(&str, &str, &str, Mech)] = &[
        ("PLAIN", "alice", "s3cret pass", auth_plain),
        ("LOGIN", "alice", "s3cret pass", auth_login),
        ("CRAM-MD5 (plaintext)", "alice", "s3cret pass", auth_cram),
        ("CRAM-MD5 ({CRAM-MD5})", "cram", "pencil", auth_cram),
        ("PLAIN ({SCRAM-SHA-256})", "scram", "pencil", auth_plain),
        (
            "SCRAM-SHA-256 (plaintext)",
            "alice",
            "s3cret pass",
            |c, u, p| auth_scram(c, ScramAlg::Sha256, u, p),
        ),
        (
            "SCRAM-SHA-1 (plaintext)",
            "alice",
            "s3cret pass",
            |c, u, p| auth_scram(c, ScramAlg::Sha1, u, p),
        ),
        (
            "SCRAM-SHA-256 ({SCRAM-SHA-256})",
            "scram",
            "pencil",
            |c, u, p| auth_scram(c, ScramAlg::Sha256, u, p),
        ),
    ];
    for (what, user, pw, mech) in cases {
        let mut c = Pop3Client::connect(server.addr);
        assert_eq!(mech(&mut c, user, pw), "+OK Logged in.", "{what}");
        assert_session_works(&mut c, what);
        // Wrong password: the usual [AUTH] failure.
        let mut c = Pop3Client::connect(server.addr);
        assert_eq!(
            mech(&mut c, user, "wrong"),
            "-ERR [AUTH] Authentication failed.",
            "{what} with a wrong password"
        );
        // Unknown user: the same reply.
        assert_eq!(
            mech(&mut c, "nobody", pw),
            "-ERR [AUTH] Authentication failed.",
            "{what} for an unknown user"
        );
    }
    // SCRAM-SHA-1 for a user that only has a SCRAM-SHA-256 secret fails like a wrong password.
    let mut c = Pop3Client::connect(server.addr);
    assert_eq!(
        auth_scram(&mut c, ScramAlg::Sha1, "scram", "pencil"),
        "-ERR [AUTH] Authentication failed."
    );
    // APOP keeps working.
    let mut c = Pop3Client::connect(server.addr);
    let ts = c.greeting.split_whitespace().last().unwrap().to_string();
    let digest = scheme::apop_digest(&ts, b"s3cret pass");
    assert_eq!(c.cmd(&format!("APOP alice {digest}")), "+OK Logged in.");
}

/// The SASL tag lists exactly what works: with hashed passwords in the file, only PLAIN and
/// LOGIN (and none of them on an insecure non-loopback connection — covered by the session
/// tests, since tests only reach the server over loopback).
#[test]
fn automatic_mechanisms_follow_the_passwd_file() {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    let server = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(server.addr);
    assert_eq!(
        capa_sasl(&mut c),
        "SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN"
    );
    drop(server);
    add_hashed_user(&fx, "bob", &scheme::hash("SHA512-CRYPT", b"pw").unwrap());
    let server = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(server.addr);
    assert_eq!(capa_sasl(&mut c), "PLAIN LOGIN");
    assert_eq!(
        c.cmd("AUTH CRAM-MD5"),
        "-ERR Unsupported authentication mechanism."
    );
    drop(server);
    fs::write(
        fx.passwd_path(),
        format!(
            "alice:{{PLAIN}}pw::::::\nscram:{}::::::\n",
            scheme::hash("SCRAM-SHA-256", b"pw").unwrap()
        ),
    )
    .unwrap();
    let server = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(server.addr);
    assert_eq!(capa_sasl(&mut c), "SCRAM-SHA-256 PLAIN LOGIN");
}

/// Hashes made by Dovecot's `doveadm pw` (Debian dovecot-core) log in over PLAIN, and the
/// SCRAM-SHA-256 one over SCRAM-SHA-256 too.
#[test]
fn doveadm_hashes_log_in() {
    if Command::new("doveadm").arg("help").output().is_err() {
        eprintln!("SKIPPED: doveadm is not installed");
        return;
    }
    let pw = "Corr3ct horse";
    let mut fx = Fixture::new();
    let mut users = Vec::new();
    for scheme in ["SHA512-CRYPT", "BLF-CRYPT", "ARGON2ID", "SCRAM-SHA-256"] {
        let out = Command::new("doveadm")
            .args(["pw", "-s", scheme, "-p", pw])
            .output()
            .unwrap();
        assert!(out.status.success(), "doveadm pw -s {scheme}: {out:?}");
        let stored = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(stored.starts_with(&format!("{{{scheme}}}")), "{stored}");
        let user = scheme.to_ascii_lowercase();
        add_hashed_user(&fx, &user, &stored);
        deliver(&fx, &user);
        users.push((scheme, user));
    }
    let _ = &mut fx;
    let server = Server::start(&fx, &[]);
    for (scheme, user) in &users {
        let mut c = Pop3Client::connect(server.addr);
        assert_eq!(
            auth_plain(&mut c, user, "wrong"),
            "-ERR [AUTH] Authentication failed.",
            "{scheme}"
        );
        assert_eq!(auth_plain(&mut c, user, pw), "+OK Logged in.", "{scheme}");
        assert_session_works(&mut c, scheme);
        let mut c = Pop3Client::connect(server.addr);
        c.login(user, pw);
        assert_eq!(c.cmd("QUIT"), "+OK Logging out.");
    }
    // SCRAM against the doveadm SCRAM-SHA-256 secret (the server must be told to offer it,
    // as the other users cannot do SCRAM).
    drop(server);
    fx.config("[auth]\nmechanisms = [\"SCRAM-SHA-256\", \"PLAIN\"]\n");
    let server = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(server.addr);
    assert_eq!(
        auth_scram(&mut c, ScramAlg::Sha256, "scram-sha-256", pw),
        "+OK Logged in."
    );
    assert_session_works(&mut c, "SCRAM against doveadm");
}

/// Malformed base64, oversized responses, unknown mechanisms, wrong SCRAM nonce or proof,
/// cancel: each a clear -ERR or a clean close, and other clients are served throughout.
#[test]
fn bad_input_gets_err_and_others_are_served() {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    deliver(&fx, "alice");
    fx.add_user("bob", "pw");
    deliver(&fx, "bob");
    fx.config("[auth]\nmax_failures = 10\n");
    let server = Server::start(&fx, &[]);
    // A bystander logged in the whole time.
    let mut bystander = Pop3Client::connect(server.addr);
    assert_eq!(auth_plain(&mut bystander, "bob", "pw"), "+OK Logged in.");

    let mut c = Pop3Client::connect(server.addr);
    assert_eq!(
        c.cmd("AUTH X-UNKNOWN"),
        "-ERR Unsupported authentication mechanism."
    );
    assert_eq!(
        c.cmd("AUTH PLAIN %%%%"),
        "-ERR Invalid base64 data in SASL response."
    );
    assert_eq!(c.cmd("AUTH PLAIN"), "+ ");
    assert_eq!(
        c.cmd("not base64!"),
        "-ERR Invalid base64 data in SASL response."
    );
    assert_eq!(c.cmd("AUTH PLAIN"), "+ ");
    assert_eq!(c.cmd("*"), "-ERR Authentication cancelled.");
    // An oversized response is discarded without being buffered.
    assert_eq!(c.cmd("AUTH LOGIN"), format!("+ {}", b64("Username:")));
    let huge = "QUFB".repeat(10_000);
    assert_eq!(c.cmd(&huge), "-ERR SASL response too long.");
    // SCRAM: wrong nonce, wrong proof, a refused authorization identity.
    assert_eq!(
        auth_scram_with(&mut c, ScramAlg::Sha256, "alice", "pw", |f| f
            .replacen(",p=", "x,p=", 1)),
        "-ERR [AUTH] SCRAM nonce mismatch."
    );
    assert_eq!(
        auth_scram_with(&mut c, ScramAlg::Sha256, "alice", "pw", |f| {
            let (head, p) = f.rsplit_once(",p=").unwrap();
            let mut proof = B64.decode(p).unwrap();
            proof[0] ^= 0x80;
            format!("{head},p={}", b64(proof))
        }),
        "-ERR [AUTH] Authentication failed."
    );
    assert_eq!(
        c.cmd(&format!("AUTH PLAIN {}", b64("bob\0alice\0pw"))),
        "-ERR [AUTH] Authorization identity must be empty or the authentication identity."
    );
    // After all that, the same connection still logs in.
    assert_eq!(auth_plain(&mut c, "alice", "pw"), "+OK Logged in.");
    assert_session_works(&mut c, "after bad input");
    // A client that vanishes mid-exchange does not disturb anyone.
    let mut gone = Pop3Client::connect(server.addr);
    gone.send_raw(b"AUTH SCRAM-SHA-256\r\n");
    assert_eq!(gone.read_line(), "+ ");
    drop(gone);
    assert_eq!(bystander.cmd("STAT").split(' ').next(), Some("+OK"));
    assert_session_works(&mut bystander, "bystander");
}

/// Reads the server's `login penalty` log lines: (shard, penalty level), in order.
fn penalty_lines(server: &Server, want: usize) -> Vec<(u32, u32)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let lines: Vec<(u32, u32)> = server
            .stderr_text()
            .lines()
            .filter(|l| l.contains("login penalty"))
            .map(|l| {
                let field = |k: &str| -> u32 {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .unwrap_or_else(|| panic!("no {k} in {l}"))
                        .parse()
                        .unwrap()
                };
                (field("shard="), field("penalty="))
            })
            .collect();
        if lines.len() >= want || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Penalties grow per IP across connections and across cores, and a success clears them.
/// (No timing assertions: the level is read from the log.)
#[test]
fn penalties_grow_across_connections_and_cores() {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    fx.config("[auth]\nfailure_delay_ms = 5\nfailure_delay_max_ms = 20\n");
    let server = Server::start(&fx, &["--threads", "2"]);
    let n = 8;
    for _ in 0..n {
        // A new connection each time, as a brute-forcer escaping the per-connection limit.
        let mut c = Pop3Client::connect(server.addr);
        assert_eq!(
            auth_plain(&mut c, "alice", "wrong"),
            "-ERR [AUTH] Authentication failed."
        );
    }
    let lines = penalty_lines(&server, n);
    let levels: Vec<u32> = lines.iter().map(|l| l.1).collect();
    assert_eq!(levels, (1..=n as u32).collect::<Vec<_>>(), "{lines:?}");
    let shards: std::collections::BTreeSet<u32> = lines.iter().map(|l| l.0).collect();
    eprintln!("failures were handled by shards {shards:?}");
    // A success clears the address's penalty everywhere.
    let mut c = Pop3Client::connect(server.addr);
    assert_eq!(auth_plain(&mut c, "alice", "pw"), "+OK Logged in.");
    c.cmd("QUIT");
    for _ in 0..4 {
        let mut c = Pop3Client::connect(server.addr);
        auth_plain(&mut c, "alice", "wrong");
    }
    let lines = penalty_lines(&server, n + 4);
    assert_eq!(
        lines[n..].iter().map(|l| l.1).collect::<Vec<_>>(),
        [1, 2, 3, 4],
        "{lines:?}"
    );
    // Unknown users and wrong passwords: the same reply (and both penalised).
    let mut c = Pop3Client::connect(server.addr);
    assert_eq!(
        auth_plain(&mut c, "nobody", "wrong"),
        "-ERR [AUTH] Authentication failed."
    );
    assert_eq!(penalty_lines(&server, n + 5).len(), n + 5);
    // The log never shows a password.
    assert!(
        !server.stderr_text().contains("wrong"),
        "password in the log"
    );
}

/// A penalised address waits before a SCRAM exchange's key derivation too (PBKDF2 costs the
/// server about 1 ms), not only before a password check. (No timing assertion: the wait is
/// read from the log.)
#[test]
fn a_penalised_address_waits_before_scram_key_derivation() {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    fx.config("[auth]\nfailure_delay_ms = 5\nfailure_delay_max_ms = 20\n");
    let server = Server::start(&fx, &[]);
    let waits = || {
        server
            .stderr_text()
            .matches("waits before the SCRAM exchange")
            .count()
    };
    // Not penalised: no wait.
    let mut c = Pop3Client::connect(server.addr);
    assert_eq!(
        auth_scram(&mut c, ScramAlg::Sha256, "alice", "pw"),
        "+OK Logged in."
    );
    c.cmd("QUIT");
    assert_eq!(waits(), 0);
    let mut c = Pop3Client::connect(server.addr);
    assert_eq!(
        auth_plain(&mut c, "alice", "wrong"),
        "-ERR [AUTH] Authentication failed."
    );
    assert_eq!(penalty_lines(&server, 1).len(), 1);
    let mut c = Pop3Client::connect(server.addr);
    assert!(auth_scram(&mut c, ScramAlg::Sha256, "alice", "wrong").starts_with("-ERR [AUTH]"));
    assert_eq!(waits(), 1, "{}", server.stderr_text());
}

/// `corepop pw` hashes like `doveadm pw` and `-t` tests a hash.
#[test]
fn pw_subcommand() {
    let bin = env!("CARGO_BIN_EXE_corepop");
    for scheme in [
        "SHA512-CRYPT",
        "BLF-CRYPT",
        "SCRAM-SHA-256",
        "CRAM-MD5",
        "SSHA512",
    ] {
        let out = Command::new(bin)
            .args(["pw", "-s", scheme, "-p", "pencil"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{scheme}: {out:?}");
        let stored = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(stored.starts_with(&format!("{{{scheme}}}")), "{stored}");
        let ok = Command::new(bin)
            .args(["pw", "-t", &stored, "-p", "pencil"])
            .output()
            .unwrap();
        assert!(ok.status.success(), "{scheme} -t: {ok:?}");
        assert!(String::from_utf8_lossy(&ok.stdout).contains("(verified)"));
        let bad = Command::new(bin)
            .args(["pw", "-t", &stored, "-p", "pencil2"])
            .output()
            .unwrap();
        assert_eq!(bad.status.code(), Some(1), "{scheme} -t wrong");
        // Dovecot accepts our hash.
        if let Ok(d) = Command::new("doveadm")
            .args(["pw", "-t", &stored, "-p", "pencil"])
            .output()
        {
            assert!(d.status.success(), "doveadm -t {stored}: {d:?}");
        }
    }
    // Password from standard input.
    let mut child = Command::new(bin)
        .args(["pw", "-s", "SHA256-CRYPT"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"pencil\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let stored = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(
        scheme::verify(&stored, b"pencil", &Default::default()),
        Ok(true)
    );
}

/// curl uses SASL when CAPA lists it: PLAIN, LOGIN and CRAM-MD5 (curl has no SCRAM), RETR
/// byte-exact.
#[test]
fn curl_sasl_mechanisms() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIPPED: curl is not installed");
        return;
    }
    let mut fx = Fixture::new();
    fx.add_user("alice", "s3cret");
    deliver(&fx, "alice");
    let server = Server::start(&fx, &[]);
    let url = format!("pop3://127.0.0.1:{}/1", server.addr.port());
    for mech in ["PLAIN", "LOGIN", "CRAM-MD5", "*"] {
        let out = Command::new("curl")
            .args(["-sS", "-v", "--max-time", "30", "-u", "alice:s3cret"])
            .args(["--login-options", &format!("AUTH={mech}")])
            .arg(&url)
            .output()
            .unwrap();
        let trace = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "curl AUTH={mech}: {trace}");
        let want = if mech == "*" { "CRAM-MD5" } else { mech };
        assert!(
            trace.contains(&format!("> AUTH {want}")),
            "curl AUTH={mech} did not use {want}: {trace}"
        );
        assert_eq!(out.stdout, expected_wire(MSG), "curl AUTH={mech} body");
    }
}

/// Whether the installed mpop can do SCRAM (GNU SASL); says so when it cannot.
fn mpop_has_scram() -> bool {
    let has = Command::new("mpop")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("scram-sha-256"))
        .unwrap_or(false);
    if !has {
        eprintln!("SKIPPED: mpop with SCRAM support is not installed");
    }
    has
}

/// Runs mpop for `user` against `server` with `--auth=auth` and the password in `pwfile`,
/// keeping the mail on the server; asserts it succeeded and returns the Maildir it
/// delivered into.
fn mpop_fetch(
    fx: &Fixture,
    server: &Server,
    user: &str,
    auth: &str,
    pwfile: &std::path::Path,
) -> std::path::PathBuf {
    let out = fx.path().join(format!("mpop-out-{auth}"));
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(out.join(sub)).unwrap();
    }
    let rc = fx.path().join(format!("mpoprc-{auth}"));
    fs::write(
        &rc,
        format!(
            "defaults\naccount t\nhost 127.0.0.1\nport {}\nuser {user}\n\
             uidls_file {}\naccount default : t\n",
            server.addr.port(),
            fx.path().join(format!("mpop-uidls-{auth}")).display()
        ),
    )
    .unwrap();
    fs::set_permissions(&rc, fs::Permissions::from_mode(0o600)).unwrap();
    let run = Command::new("mpop")
        .arg("-C")
        .arg(&rc)
        .args(["--tls=off", &format!("--auth={auth}")])
        .arg(format!("--passwordeval=cat {}", pwfile.display()))
        .arg(format!("--delivery=maildir,{}", out.display()))
        .args(["--keep=on", "--only-new=off", "--received-header=off"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "mpop --auth={auth}: {}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    out
}

/// mpop (GNU SASL) with SCRAM-SHA-256, SCRAM-SHA-1 and CRAM-MD5.
#[test]
fn mpop_scram_and_cram() {
    if !mpop_has_scram() {
        return;
    }
    let mut fx = Fixture::new();
    fx.add_user("alice", "s3cret");
    deliver(&fx, "alice");
    let server = Server::start(&fx, &[]);
    let pwfile = fx.path().join("mpop-password");
    fs::write(&pwfile, "s3cret").unwrap();
    for auth in ["scram-sha-256", "scram-sha-1", "cram-md5"] {
        let out = mpop_fetch(&fx, &server, "alice", auth, &pwfile);
        let got: Vec<_> = fs::read_dir(out.join("new"))
            .unwrap()
            .map(|e| fs::read(e.unwrap().path()).unwrap())
            .collect();
        assert_eq!(got.len(), 1, "mpop --auth={auth}");
        assert_eq!(
            got[0],
            common::crlf_to_lf(&expected_wire(MSG)),
            "mpop --auth={auth}: delivered message"
        );
    }
    let log = server.stderr_text();
    assert!(!log.contains("s3cret"), "password in the log");
}

/// fetchmail `--auth cram-md5` (fetchmail speaks CRAM-MD5 but not SCRAM for POP3).
#[test]
fn fetchmail_cram_md5() {
    if Command::new("fetchmail").arg("--version").output().is_err() {
        eprintln!("SKIPPED: fetchmail is not installed");
        return;
    }
    let mut fx = Fixture::new();
    fx.add_user("alice", "s3cret");
    deliver(&fx, "alice");
    let server = Server::start(&fx, &[]);
    let work = fx.path().join("fetchmail");
    let out = work.join("out");
    fs::create_dir_all(&out).unwrap();
    let mut cmd = Command::new("fetchmail");
    cmd.env("HOME", &work).env("FETCHMAILHOME", &work);
    common::fetchmail_args(
        &mut cmd,
        &work,
        "cram",
        server.addr.port(),
        "cram-md5",
        "alice",
        "s3cret",
        &out,
    )
    .args(["--sslproto", "", "--keep"]);
    let run = cmd.output().unwrap();
    let trace =
        String::from_utf8_lossy(&run.stderr).into_owned() + &String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "fetchmail: {trace}");
    assert!(
        trace.contains("AUTH CRAM-MD5"),
        "fetchmail did not use CRAM-MD5: {trace}"
    );
    let got: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(got, [common::crlf_to_lf(&expected_wire(MSG))]);
}

/// RFC 5802 §5.1 and RFC 4013 with a real client: mpop (GNU SASL) escapes `,` and `=` in the
/// username as `=2C`/`=3D` and SASLpreps the password, which leaves a non-ASCII password in
/// NFC unchanged; corepop (like Dovecot, whose SCRAM does not SASLprep) then derives the same
/// keys from the stored password as the client, so that user logs in with SCRAM and PLAIN.
#[test]
fn mpop_scram_escaped_username_and_non_ascii_password() {
    if !mpop_has_scram() {
        return;
    }
    let (user, pw) = ("a=b,c", "pässwörd €");
    let mut fx = Fixture::new();
    fx.add_user(user, pw);
    deliver(&fx, user);
    let server = Server::start(&fx, &[]);
    // The Rust client sends the name escaped and the password's UTF-8 as is.
    for alg in [ScramAlg::Sha256, ScramAlg::Sha1] {
        let mut c = Pop3Client::connect(server.addr);
        assert_eq!(auth_scram(&mut c, alg, "a=3Db=2Cc", pw), "+OK Logged in.");
    }
    let mut c = Pop3Client::connect(server.addr);
    assert_eq!(auth_plain(&mut c, user, pw), "+OK Logged in.");
    drop(c);
    let pwfile = fx.path().join("mpop-password");
    fs::write(&pwfile, pw).unwrap();
    for auth in ["scram-sha-256", "plain"] {
        let out = mpop_fetch(&fx, &server, user, auth, &pwfile);
        assert_eq!(fs::read_dir(out.join("new")).unwrap().count(), 1, "{auth}");
    }
}

/// Each SCRAM client-first makes the server derive keys (4,096 PBKDF2 iterations for a
/// plaintext password, and as many for an unknown user's made-up secret), and `*` ends the
/// exchange. Cancelling is not a failed login, but a client that starts and cancels exchanges
/// without end must not get unlimited key derivations on one connection: each cancel counts
/// as an invalid command, so `max_bad_commands` ends the loop.
#[test]
fn endless_scram_start_and_cancel_is_cut_off() {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    fx.config("[limits]\nmax_bad_commands = 5\n");
    let server = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(server.addr);
    let first = b64("n,,n=alice,r=abcdefgh");
    let mut replies = Vec::new();
    for _ in 0..5 {
        let sf = c.cmd(&format!("AUTH SCRAM-SHA-256 {first}"));
        assert!(sf.starts_with("+ "), "{sf}");
        replies.push(c.cmd("*"));
    }
    assert_eq!(
        replies,
        [
            "-ERR Authentication cancelled.",
            "-ERR Authentication cancelled.",
            "-ERR Authentication cancelled.",
            "-ERR Authentication cancelled.",
            "-ERR Too many invalid commands, closing connection."
        ]
    );
    assert!(c.read_to_end().is_empty());
    // A cancel now and then does not stop a client from logging in.
    let mut c = Pop3Client::connect(server.addr);
    assert_eq!(c.cmd("AUTH PLAIN"), "+ ");
    assert_eq!(c.cmd("*"), "-ERR Authentication cancelled.");
    assert_eq!(auth_plain(&mut c, "alice", "pw"), "+OK Logged in.");
}
