//! Session transcripts without sockets: every reply path, fed whole and in chunks.

use super::*;
use std::sync::Arc;

/// A fake maildrop: (octets, uidl) per message.
struct Fake(Vec<(u64, String)>);

impl Maildrop for Fake {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn octets(&self, i: usize) -> u64 {
        self.0[i].0
    }
    fn uidl(&self, i: usize) -> &str {
        &self.0[i].1
    }
}

fn fake() -> Fake {
    Fake(vec![
        (120, "a1".into()),
        (200, "b2".into()),
        (5, "c3".into()),
    ])
}

/// A scripted runtime: logins succeed for alice/secret (PASS) and for APOP digest "0"*32;
/// RETR sends "<body of n>"; commits fail for `fail_commit` messages.
struct Harness {
    s: Session<Fake>,
    out: Vec<u8>,
    wire: Vec<u8>,
    in_use: bool,
    fail_commit: usize,
    committed: Vec<usize>,
    closed: bool,
    gone: Option<usize>,
    tls_handshakes: u32,
    challenges: u32,
}

impl Harness {
    fn new() -> Self {
        Self::with(SessionConfig::default(), true)
    }
    fn with(cfg: SessionConfig, plaintext: bool) -> Self {
        let conn = ConnInfo {
            apop_timestamp: Some("<1.2@test>".into()),
            plaintext_auth: plaintext,
            stls: true,
            secure: false,
            sasl: Mechanisms::all(),
            login_delay_per_user: false,
        };
        Self::with_conn(cfg, conn)
    }
    fn with_conn(cfg: SessionConfig, conn: ConnInfo) -> Self {
        let s = Session::new(Arc::new(cfg), conn);
        let mut wire = Vec::new();
        s.greeting(&mut wire);
        Self {
            s,
            out: Vec::new(),
            wire,
            in_use: false,
            fail_commit: 0,
            committed: Vec::new(),
            closed: false,
            gone: None,
            tls_handshakes: 0,
            challenges: 0,
        }
    }

    /// Runs the session until it needs input; returns everything written.
    fn drive(&mut self) {
        loop {
            match self.s.poll(&mut self.out) {
                Step::NeedInput => break,
                Step::Flush => {}
                Step::Login(req) => {
                    let ok = match &*req.0 {
                        LoginRequest::Pass { user, password } => {
                            user == "alice" && password == b"secret word"
                        }
                        LoginRequest::Apop {
                            user,
                            digest,
                            timestamp,
                        } => {
                            assert_eq!(timestamp, "<1.2@test>");
                            user == "alice" && digest == &"0".repeat(32)
                        }
                        LoginRequest::CramMd5 {
                            user,
                            challenge,
                            digest,
                        } => {
                            assert_eq!(challenge, RFC2195_CHALLENGE);
                            user == "tim" && digest == "b913a602c7eda7a495b4e6e7334d3890"
                        }
                        LoginRequest::Scram {
                            user,
                            mechanism,
                            auth_message,
                            proof,
                        } => {
                            let v = scram_vector(*mechanism);
                            assert_eq!(String::from_utf8_lossy(auth_message), v.auth_message);
                            let good = user == "user" && B64.encode(proof) == v.proof;
                            if good {
                                self.s
                                    .set_scram_signature(B64.decode(v.server_signature).unwrap());
                            }
                            good
                        }
                    };
                    let r = if !ok {
                        LoginResult::Failed
                    } else if self.in_use {
                        LoginResult::InUse
                    } else {
                        LoginResult::Ok(fake())
                    };
                    self.s.login_done(&mut self.out, r);
                }
                Step::Retrieve { index, lines } => {
                    if self.gone == Some(index) {
                        self.s.retrieve_failed(&mut self.out, RetrieveError::Gone);
                        continue;
                    }
                    self.s.retrieve_ready(&mut self.out);
                    let body = match lines {
                        None => format!("body {index}\r\n.\r\n"),
                        Some(k) => format!("top {index} {k}\r\n.\r\n"),
                    };
                    self.out.extend_from_slice(body.as_bytes());
                }
                Step::Commit => {
                    self.committed = self.s.deletions().collect();
                    self.s.commit_done(&mut self.out, self.fail_commit);
                }
                Step::StartTls => {
                    self.tls_handshakes += 1;
                    self.s.tls_started();
                }
                Step::SaslChallenge(ch) => {
                    self.challenges += 1;
                    if ch.mechanism == Mechanism::CramMd5 {
                        assert_eq!(ch.user, None);
                        self.s
                            .sasl_challenge(&mut self.out, RFC2195_CHALLENGE, None);
                    } else {
                        let v = scram_vector(ch.mechanism);
                        let salt = B64.decode(v.salt).unwrap();
                        self.s
                            .sasl_challenge(&mut self.out, v.server_nonce, Some((&salt, 4096)));
                    }
                }
                Step::Close => {
                    self.closed = true;
                    break;
                }
            }
        }
        self.wire.append(&mut self.out);
    }

    fn send(&mut self, input: &str) -> String {
        let before = self.wire.len();
        self.s.feed(input.as_bytes());
        self.drive();
        String::from_utf8_lossy(&self.wire[before..]).into_owned()
    }

    fn login(&mut self) {
        self.send("USER alice\r\n");
        assert_eq!(self.send("PASS secret word\r\n"), "+OK Logged in.\r\n");
    }
}

#[test]
fn greeting_carries_apop_timestamp() {
    let h = Harness::new();
    assert_eq!(
        String::from_utf8_lossy(&h.wire),
        "+OK corepop ready. <1.2@test>\r\n"
    );
}

#[test]
fn full_transaction() {
    let mut h = Harness::new();
    h.login();
    assert_eq!(h.send("STAT\r\n"), "+OK 3 325\r\n");
    assert_eq!(
        h.send("LIST\r\n"),
        "+OK 3 messages (325 octets)\r\n1 120\r\n2 200\r\n3 5\r\n.\r\n"
    );
    assert_eq!(h.send("LIST 2\r\n"), "+OK 2 200\r\n");
    assert_eq!(
        h.send("UIDL\r\n"),
        "+OK 3 messages (325 octets)\r\n1 a1\r\n2 b2\r\n3 c3\r\n.\r\n"
    );
    assert_eq!(h.send("UIDL 3\r\n"), "+OK 3 c3\r\n");
    assert_eq!(h.send("RETR 1\r\n"), "+OK 120 octets\r\nbody 0\r\n.\r\n");
    assert_eq!(
        h.send("TOP 2 5\r\n"),
        "+OK Message follows.\r\ntop 1 5\r\n.\r\n"
    );
    assert_eq!(h.send("DELE 1\r\n"), "+OK Marked to be deleted.\r\n");
    // Deleted messages cannot be referenced; numbers do not shift.
    for cmd in ["RETR 1", "TOP 1 0", "LIST 1", "UIDL 1", "DELE 1"] {
        assert_eq!(
            h.send(&format!("{cmd}\r\n")),
            "-ERR Message is deleted.\r\n",
            "{cmd}"
        );
    }
    assert_eq!(h.send("LIST 2\r\n"), "+OK 2 200\r\n");
    assert_eq!(h.send("STAT\r\n"), "+OK 2 205\r\n");
    assert_eq!(
        h.send("LIST\r\n"),
        "+OK 2 messages (205 octets)\r\n2 200\r\n3 5\r\n.\r\n"
    );
    assert_eq!(
        h.send("RSET\r\n"),
        "+OK Maildrop has 3 messages (325 octets).\r\n"
    );
    assert_eq!(h.send("STAT\r\n"), "+OK 3 325\r\n");
    h.send("DELE 3\r\nDELE 2\r\n");
    assert_eq!(h.send("NOOP\r\n"), "+OK Nothing happened.\r\n");
    assert_eq!(
        h.send("QUIT\r\n"),
        "+OK Logging out, 2 messages deleted.\r\n"
    );
    assert!(h.closed);
    assert_eq!(h.committed, vec![1, 2]);
    let st = h.s.stats();
    assert_eq!(
        (
            st.retr,
            st.retr_octets,
            st.top,
            st.deleted,
            st.messages,
            st.size
        ),
        (1, 120, 1, 2, 3, 325)
    );
}

#[test]
fn no_update_without_quit_and_none_after_rset() {
    let mut h = Harness::new();
    h.login();
    h.send("DELE 1\r\nRSET\r\n");
    assert_eq!(h.send("QUIT\r\n"), "+OK Logging out.\r\n");
    assert!(h.committed.is_empty());
}

#[test]
fn failed_commit_is_reported() {
    let mut h = Harness::new();
    h.login();
    h.fail_commit = 1;
    h.send("DELE 1\r\nDELE 2\r\n");
    assert_eq!(
        h.send("QUIT\r\n"),
        "-ERR [SYS/TEMP] Could not delete 1 of 2 messages; they are still in the maildrop.\r\n"
    );
}

#[test]
fn message_number_errors() {
    let mut h = Harness::new();
    h.login();
    for (cmd, reply) in [
        ("RETR 0", "-ERR Invalid message number.\r\n"),
        ("RETR -1", "-ERR Invalid message number.\r\n"),
        ("RETR x", "-ERR Invalid message number.\r\n"),
        ("RETR 4", "-ERR No such message.\r\n"),
        (
            "RETR 99999999999999999999",
            "-ERR Invalid message number.\r\n",
        ),
        ("RETR", "-ERR Invalid arguments.\r\n"),
        ("RETR 1 2", "-ERR Invalid arguments.\r\n"),
        ("TOP 1", "-ERR Invalid arguments.\r\n"),
        ("TOP 1 x", "-ERR Invalid arguments.\r\n"),
        ("LIST 4", "-ERR No such message.\r\n"),
        ("UIDL 0", "-ERR Invalid message number.\r\n"),
        ("DELE 4", "-ERR No such message.\r\n"),
    ] {
        assert_eq!(h.send(&format!("{cmd}\r\n")), reply, "{cmd}");
    }
    assert_eq!(h.send("STAT\r\n"), "+OK 3 325\r\n");
}

#[test]
fn wrong_state_commands() {
    let mut h = Harness::new();
    for cmd in [
        "STAT", "LIST", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 1", "UIDL",
    ] {
        assert_eq!(
            h.send(&format!("{cmd}\r\n")),
            "-ERR Command not valid in this state.\r\n",
            "{cmd}"
        );
    }
    assert_eq!(
        h.send("PASS x\r\n"),
        "-ERR No username given; send USER first.\r\n"
    );
    h.login();
    for cmd in [
        "USER alice",
        "PASS secret word",
        "APOP alice 00000000000000000000000000000000",
    ] {
        assert_eq!(
            h.send(&format!("{cmd}\r\n")),
            "-ERR Command not valid in this state.\r\n",
            "{cmd}"
        );
    }
    assert!(h.s.logged_in());
}

#[test]
fn bad_logins_look_alike_and_are_limited() {
    let mut h = Harness::new();
    h.send("USER alice\r\n");
    let wrong_pw = h.send("PASS nope\r\n");
    h.send("USER mallory\r\n");
    let unknown = h.send("PASS secret word\r\n");
    assert_eq!(wrong_pw, unknown);
    assert_eq!(wrong_pw, "-ERR [AUTH] Authentication failed.\r\n");
    // The failed PASS forgot the user: PASS alone is refused.
    assert!(h.send("PASS secret word\r\n").starts_with("-ERR"));
    assert!(!h.closed);
    h.send("USER alice\r\n");
    assert_eq!(
        h.send("PASS again wrong\r\n"),
        "-ERR [AUTH] Authentication failed.\r\n"
    );
    assert!(h.closed, "third failure closes the connection");
}

#[test]
fn in_use_and_apop() {
    let mut h = Harness::new();
    h.in_use = true;
    h.send("USER alice\r\n");
    assert_eq!(
        h.send("PASS secret word\r\n"),
        "-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n"
    );
    h.in_use = false;
    assert_eq!(
        h.send("APOP alice 0000\r\n"),
        "-ERR Invalid APOP digest.\r\n"
    );
    assert_eq!(
        h.send(&format!("APOP alice {}\r\n", "0".repeat(32))),
        "+OK Logged in.\r\n"
    );
}

#[test]
fn plaintext_refused_on_insecure_connections() {
    let mut h = Harness::with(SessionConfig::default(), false);
    let capa = h.send("CAPA\r\n");
    assert!(!capa.contains("\r\nUSER\r\n"), "{capa}");
    assert!(h
        .send("USER alice\r\n")
        .starts_with("-ERR [AUTH] Plaintext"));
    assert!(h
        .send("PASS secret word\r\n")
        .starts_with("-ERR [AUTH] Plaintext"));
    // APOP never sends the password.
    assert_eq!(
        h.send(&format!("APOP alice {}\r\n", "0".repeat(32))),
        "+OK Logged in.\r\n"
    );
}

#[test]
fn capa_same_before_and_after_login() {
    let mut h = Harness::new();
    let before = h.send("capa\r\n");
    assert_eq!(
        before,
        "+OK Capability list follows\r\nTOP\r\nUSER\r\nSASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN\r\nSTLS\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nUIDL\r\nIMPLEMENTATION corepop\r\n.\r\n"
    );
    h.login();
    assert_eq!(h.send("CAPA\r\n"), before);
}

#[test]
fn junk_gets_err_and_session_continues() {
    let mut h = Harness::new();
    assert_eq!(h.send("\r\n"), "-ERR Unknown command.\r\n");
    assert_eq!(h.send("HELO x\r\n"), "-ERR Unknown command.\r\n");
    let mut long = "NOOP ".to_string() + &"x".repeat(600);
    long.push_str("\r\n");
    assert_eq!(h.send(&long), "-ERR Line too long.\r\n");
    let mut h2 = Harness::new();
    h2.s.feed(b"USER \xff\xfe\r\nNO\0OP\r\n");
    h2.drive();
    let w = String::from_utf8_lossy(&h2.wire).into_owned();
    assert!(
        w.ends_with("-ERR Invalid characters in command.\r\n-ERR Unknown command.\r\n"),
        "{w}"
    );
    assert!(!h.closed);
}

#[test]
fn too_many_bad_commands_close() {
    let cfg = SessionConfig {
        max_bad_commands: 3,
        ..SessionConfig::default()
    };
    let mut h = Harness::with(cfg, true);
    h.send("X\r\nY\r\n");
    assert!(!h.closed);
    assert_eq!(
        h.send("Z\r\nNOOP\r\n"),
        "-ERR Too many invalid commands, closing connection.\r\n"
    );
    assert!(h.closed);
}

#[test]
fn retrieve_of_vanished_message() {
    let mut h = Harness::new();
    h.login();
    h.gone = Some(1);
    assert_eq!(
        h.send("RETR 2\r\n"),
        "-ERR Message was removed by another client.\r\n"
    );
    assert_eq!(h.send("RETR 1\r\n"), "+OK 120 octets\r\nbody 0\r\n.\r\n");
}

#[test]
fn quit_in_authorization_and_abort() {
    let mut h = Harness::new();
    assert_eq!(h.send("QUIT\r\n"), "+OK Logging out.\r\n");
    assert!(h.closed);
    let mut h = Harness::new();
    h.login();
    h.send("DELE 1\r\n");
    let mut out = Vec::new();
    h.s.abort(&mut out, AbortReason::IdleTimeout);
    assert_eq!(out, b"-ERR Disconnected for inactivity.\r\n");
    assert!(h.s.is_closed());
}

#[test]
fn pipelined_transcript_in_any_chunking_gives_same_bytes() {
    let script = "CAPA\r\nUSER alice\nPASS secret word\r\nSTAT\r\nLIST\r\nUIDL 2\r\nRETR 3\r\nTOP 1 0\r\nDELE 2\r\nLIST 2\r\nRSET\r\nNOOP\r\nDELE 3\r\nQUIT\r\n";
    let mut whole = Harness::new();
    whole.send(script);
    assert!(whole.closed);
    assert_eq!(whole.committed, vec![2]);
    let mut size = 1;
    while size <= 512 {
        let mut h = Harness::new();
        for chunk in script.as_bytes().chunks(size) {
            h.s.feed(chunk);
            h.drive();
        }
        assert_eq!(h.wire, whole.wire, "chunk size {size}");
        size *= 2;
    }
}

#[test]
fn large_listing_is_flushed_in_bounded_chunks() {
    let drop = Fake((0..20_000).map(|i| (1000 + i, format!("uid{i}"))).collect());
    let mut s = Session::new(
        Arc::new(SessionConfig::default()),
        ConnInfo {
            apop_timestamp: None,
            plaintext_auth: true,
            ..ConnInfo::default()
        },
    );
    let mut out = Vec::new();
    s.feed(b"USER a\r\nPASS b\r\nUIDL\r\nSTAT\r\n");
    let mut wire = Vec::new();
    let mut max = 0;
    loop {
        match s.poll(&mut out) {
            Step::Login(_) => s.login_done(&mut out, LoginResult::Ok(Fake(drop.0.clone()))),
            Step::Flush => {
                max = max.max(out.len());
                wire.append(&mut out);
            }
            Step::NeedInput => break,
            other => panic!("{other:?}"),
        }
    }
    wire.append(&mut out);
    assert!(max < FLUSH_AT + 200, "out grew to {max}");
    let text = String::from_utf8(wire).unwrap();
    assert_eq!(text.matches("\r\n").count(), 2 + 1 + 20_000 + 1 + 1);
    assert!(text.contains("\r\n20000 uid19999\r\n.\r\n+OK 20000 "));
}

#[test]
fn stls_discards_pipelined_plaintext_and_enables_user_pass() {
    let mut h = Harness::with(SessionConfig::default(), false);
    let capa = h.send("CAPA\r\n");
    assert!(
        capa.contains("\r\nSTLS\r\n") && !capa.contains("\r\nUSER\r\n"),
        "{capa}"
    );
    // A command injected behind STLS in the same packet must never run.
    assert_eq!(
        h.send("STLS\r\nUSER alice\r\nPASS secret word\r\n"),
        "+OK Begin TLS negotiation now.\r\n"
    );
    assert_eq!(h.tls_handshakes, 1);
    assert!(!h.s.logged_in());
    let capa = h.send("CAPA\r\n");
    assert!(
        !capa.contains("STLS") && capa.contains("\r\nUSER\r\n"),
        "{capa}"
    );
    assert_eq!(h.send("STLS\r\n"), "-ERR TLS is already active.\r\n");
    h.login();
    assert_eq!(
        h.send("STLS\r\n"),
        "-ERR Command not valid in this state.\r\n"
    );
}

#[test]
fn stls_not_offered_without_a_certificate() {
    let mut h = Harness::with_conn(
        SessionConfig::default(),
        ConnInfo {
            plaintext_auth: true,
            ..ConnInfo::default()
        },
    );
    assert!(!h.send("CAPA\r\n").contains("STLS"));
    assert_eq!(h.send("STLS\r\n"), "-ERR STLS is not available.\r\n");
}

// ---------------------------------------------------------------------------------- SASL

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

const RFC2195_CHALLENGE: &str = "<1896.697170952@postoffice.reston.mci.net>";

/// A published SCRAM exchange (user "user", password "pencil").
struct ScramVector {
    client_first: &'static str,
    server_nonce: &'static str,
    salt: &'static str,
    server_first: &'static str,
    client_final: &'static str,
    auth_message: &'static str,
    proof: &'static str,
    server_signature: &'static str,
}

/// RFC 7677 §3 (SCRAM-SHA-256) and RFC 5802 §5 (SCRAM-SHA-1).
fn scram_vector(m: Mechanism) -> ScramVector {
    match m {
        Mechanism::ScramSha256 => ScramVector {
            client_first: "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            server_nonce: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            salt: "W22ZaJ0SNY7soEsUEjb6gQ==",
            server_first: "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            client_final: "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            auth_message: "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            proof: "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            server_signature: "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
        },
        _ => ScramVector {
            client_first: "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            server_nonce: "3rfcNHYJY1ZVvWVs7j",
            salt: "QSXCR+Q6sek8bf92",
            server_first: "r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
            client_final: "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            auth_message: "n=user,r=fyko+d2lbbFgONRv9qkxdawL,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096,c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j",
            proof: "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
            server_signature: "rmF9pqV8S7suAoZWja4dJRkFsKQ=",
        },
    }
}

fn b64(s: impl AsRef<[u8]>) -> String {
    B64.encode(s)
}

fn cont(s: impl AsRef<[u8]>) -> String {
    format!("+ {}\r\n", b64(s))
}

#[test]
fn capa_lists_sasl_and_auth_lists_mechanisms() {
    let mut h = Harness::new();
    let capa = h.send("CAPA\r\n");
    assert!(
        capa.contains("\r\nSASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 PLAIN LOGIN\r\n"),
        "{capa}"
    );
    assert_eq!(
        h.send("AUTH\r\n"),
        "+OK List of supported mechanisms follows.\r\nSCRAM-SHA-256\r\nSCRAM-SHA-1\r\nCRAM-MD5\r\nPLAIN\r\nLOGIN\r\n.\r\n"
    );
    // Insecure, non-loopback: PLAIN and LOGIN are withheld, the others stay.
    let mut h = Harness::with(SessionConfig::default(), false);
    let capa = h.send("CAPA\r\n");
    assert!(
        capa.contains("\r\nSASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5\r\n"),
        "{capa}"
    );
    let plain = b64("\0alice\0secret word");
    assert!(h
        .send(&format!("AUTH PLAIN {plain}\r\n"))
        .starts_with("-ERR [AUTH] Plaintext authentication disallowed"));
    assert!(h
        .send("AUTH LOGIN\r\n")
        .starts_with("-ERR [AUTH] Plaintext authentication disallowed"));
    // After STLS they are offered.
    h.send("STLS\r\n");
    assert!(h.send("CAPA\r\n").contains("CRAM-MD5 PLAIN LOGIN\r\n"));
    assert_eq!(
        h.send(&format!("AUTH PLAIN {plain}\r\n")),
        "+OK Logged in.\r\n"
    );
    // Listed in TRANSACTION too (RFC 2449 §5); AUTH itself is not valid there.
    assert!(h.send("CAPA\r\n").contains("\r\nSASL "));
    assert_eq!(
        h.send("AUTH PLAIN\r\n"),
        "-ERR Command not valid in this state.\r\n"
    );
}

#[test]
fn no_sasl_line_without_mechanisms() {
    let mut h = Harness::with_conn(
        SessionConfig::default(),
        ConnInfo {
            plaintext_auth: true,
            ..ConnInfo::default()
        },
    );
    assert!(!h.send("CAPA\r\n").contains("SASL"));
    assert_eq!(
        h.send("AUTH PLAIN\r\n"),
        "-ERR Unsupported authentication mechanism.\r\n"
    );
}

#[test]
fn plain_with_and_without_initial_response() {
    let mut h = Harness::new();
    assert_eq!(
        h.send(&format!("AUTH PLAIN {}\r\n", b64("\0alice\0secret word"))),
        "+OK Logged in.\r\n"
    );
    let mut h = Harness::new();
    assert_eq!(h.send("auth plain\r\n"), "+ \r\n");
    assert_eq!(
        h.send(&format!("{}\r\n", b64("alice\0alice\0secret word"))),
        "+OK Logged in.\r\n"
    );
    // Wrong password: the same [AUTH] reply as USER/PASS.
    let mut h = Harness::new();
    assert_eq!(
        h.send(&format!("AUTH PLAIN {}\r\n", b64("\0alice\0nope"))),
        "-ERR [AUTH] Authentication failed.\r\n"
    );
    // Another authorization identity (a master user) is refused.
    assert_eq!(
        h.send(&format!(
            "AUTH PLAIN {}\r\n",
            b64("bob\0alice\0secret word")
        )),
        "-ERR [AUTH] Authorization identity must be empty or the authentication identity.\r\n"
    );
    // Third failure closes (max_auth_failures = 3).
    assert_eq!(
        h.send("AUTH PLAIN =\r\n"),
        "-ERR Malformed SASL response.\r\n"
    );
    assert!(!h.closed);
    h.send(&format!("AUTH PLAIN {}\r\n", b64("\0x\0y")));
    assert!(h.closed);
}

#[test]
fn login_mechanism() {
    let mut h = Harness::new();
    assert_eq!(h.send("AUTH LOGIN\r\n"), cont("Username:"));
    assert_eq!(h.send(&format!("{}\r\n", b64("alice"))), cont("Password:"));
    assert_eq!(
        h.send(&format!("{}\r\n", b64("secret word"))),
        "+OK Logged in.\r\n"
    );
    // Initial response = the username.
    let mut h = Harness::new();
    assert_eq!(
        h.send(&format!("AUTH LOGIN {}\r\n", b64("alice"))),
        cont("Password:")
    );
    assert_eq!(
        h.send(&format!("{}\r\n", b64("secret word"))),
        "+OK Logged in.\r\n"
    );
}

#[test]
fn cram_md5_rfc2195() {
    let mut h = Harness::new();
    assert_eq!(h.send("AUTH CRAM-MD5\r\n"), cont(RFC2195_CHALLENGE));
    assert_eq!(h.challenges, 1);
    assert_eq!(
        h.send(&format!(
            "{}\r\n",
            b64("tim b913a602c7eda7a495b4e6e7334d3890")
        )),
        "+OK Logged in.\r\n"
    );
    let mut h = Harness::new();
    h.send("AUTH CRAM-MD5\r\n");
    assert_eq!(
        h.send(&format!(
            "{}\r\n",
            b64("tim b913a602c7eda7a495b4e6e7334d3891")
        )),
        "-ERR [AUTH] Authentication failed.\r\n"
    );
    // CRAM-MD5 has no initial response.
    assert_eq!(
        h.send("AUTH CRAM-MD5 dGlt\r\n"),
        "-ERR Malformed SASL response.\r\n"
    );
    h.send("AUTH CRAM-MD5\r\n");
    assert_eq!(
        h.send(&format!("{}\r\n", b64("tim nothex"))),
        "-ERR Malformed SASL response.\r\n"
    );
}

#[test]
fn scram_published_vectors() {
    for mech in [Mechanism::ScramSha256, Mechanism::ScramSha1] {
        let v = scram_vector(mech);
        // Without and with an initial response.
        for ir in [false, true] {
            let mut h = Harness::new();
            let got = if ir {
                h.send(&format!("AUTH {} {}\r\n", mech.name(), b64(v.client_first)))
            } else {
                assert_eq!(h.send(&format!("AUTH {}\r\n", mech.name())), "+ \r\n");
                h.send(&format!("{}\r\n", b64(v.client_first)))
            };
            assert_eq!(got, cont(v.server_first), "{mech:?}");
            let got = h.send(&format!("{}\r\n", b64(v.client_final)));
            assert_eq!(got, cont(format!("v={}", v.server_signature)), "{mech:?}");
            // Logged in only after the client's empty response.
            assert_eq!(h.send("\r\n"), "+OK Logged in.\r\n");
            assert_eq!(h.send("STAT\r\n"), "+OK 3 325\r\n");
        }
    }
}

#[test]
fn scram_errors() {
    let v = scram_vector(Mechanism::ScramSha256);
    let start = |h: &mut Harness| {
        h.send(&format!("AUTH SCRAM-SHA-256 {}\r\n", b64(v.client_first)));
    };
    // Wrong nonce in client-final.
    let mut h = Harness::new();
    start(&mut h);
    let bad_nonce = v.client_final.replace("k0,p=", "k1,p=");
    assert_eq!(
        h.send(&format!("{}\r\n", b64(bad_nonce))),
        "-ERR [AUTH] SCRAM nonce mismatch.\r\n"
    );
    // Wrong proof: the runtime says no.
    start(&mut h);
    let bad_proof = v.client_final.replace("p=dHzb", "p=eHzb");
    assert_eq!(
        h.send(&format!("{}\r\n", b64(bad_proof))),
        "-ERR [AUTH] Authentication failed.\r\n"
    );
    assert!(!h.closed, "two failures so far");
    // Channel binding, c= mismatch, garbage.
    let mut h = Harness::new();
    assert_eq!(
        h.send(&format!(
            "AUTH SCRAM-SHA-256 {}\r\n",
            b64("p=tls-server-end-point,,n=user,r=abc")
        )),
        "-ERR Channel binding is not supported.\r\n"
    );
    start(&mut h);
    assert_eq!(
        h.send(&format!(
            "{}\r\n",
            b64(v.client_final.replace("c=biws", "c=eSws"))
        )),
        "-ERR [AUTH] SCRAM channel binding data mismatch.\r\n"
    );
    assert_eq!(
        h.send(&format!("AUTH SCRAM-SHA-256 {}\r\n", b64("hello"))),
        "-ERR Malformed SASL response.\r\n"
    );
    // The client refuses the server-final: never logged in, closed.
    let mut h = Harness::new();
    start(&mut h);
    h.send(&format!("{}\r\n", b64(v.client_final)));
    assert_eq!(h.send("*\r\n"), "-ERR Authentication cancelled.\r\n");
    assert!(h.closed);
}

#[test]
fn sasl_bad_input() {
    let mut h = Harness::new();
    assert_eq!(
        h.send("AUTH DIGEST-MD5\r\n"),
        "-ERR Unsupported authentication mechanism.\r\n"
    );
    assert_eq!(
        h.send("AUTH PLAIN !!!!\r\n"),
        "-ERR Invalid base64 data in SASL response.\r\n"
    );
    assert_eq!(h.send("AUTH PLAIN\r\n"), "+ \r\n");
    assert_eq!(
        h.send("AGFsaWNl*\r\n"),
        "-ERR Invalid base64 data in SASL response.\r\n"
    );
    // Cancel: not a failed login, the session carries on.
    assert_eq!(h.send("AUTH LOGIN\r\n"), cont("Username:"));
    assert_eq!(h.send("*\r\n"), "-ERR Authentication cancelled.\r\n");
    // Commands during an exchange are responses, not commands.
    assert_eq!(h.send("AUTH PLAIN\r\n"), "+ \r\n");
    assert_eq!(
        h.send("USER alice\r\n"),
        "-ERR Invalid base64 data in SASL response.\r\n"
    );
    // Responses may exceed 255 octets (RFC 5034 §4), but not MAX_SASL_LINE.
    let long_pw = "p".repeat(400);
    assert_eq!(
        h.send(&format!(
            "AUTH PLAIN {}\r\n",
            b64(format!("\0alice\0{long_pw}"))
        )),
        "-ERR [AUTH] Authentication failed.\r\n"
    );
    let mut h = Harness::new();
    h.send("AUTH PLAIN\r\n");
    let huge = "A".repeat(MAX_SASL_LINE + 10);
    assert_eq!(
        h.send(&format!("{huge}\r\nNOOP\r\n")),
        "-ERR SASL response too long.\r\n-ERR Command not valid in this state.\r\n"
    );
    // Ordinary commands are still limited to 255 octets.
    assert_eq!(
        h.send(&format!("NOOP {}\r\n", "x".repeat(300))),
        "-ERR Line too long.\r\n"
    );
    // The session still works.
    h.login();
}

#[test]
fn sasl_transcript_in_chunks() {
    let v = scram_vector(Mechanism::ScramSha256);
    let script = format!(
        "AUTH SCRAM-SHA-256\r\n{}\r\n{}\r\n\r\nSTAT\r\nQUIT\r\n",
        b64(v.client_first),
        b64(v.client_final)
    );
    let mut whole = Harness::new();
    whole.send(&script);
    assert!(whole.closed);
    let mut size = 1;
    while size <= 512 {
        let mut h = Harness::new();
        for chunk in script.as_bytes().chunks(size) {
            h.send(std::str::from_utf8(chunk).unwrap());
        }
        assert_eq!(h.wire, whole.wire, "chunk size {size}");
        size *= 2;
    }
    let text = String::from_utf8_lossy(&whole.wire).into_owned();
    assert!(
        text.ends_with("+OK Logged in.\r\n+OK 3 325\r\n+OK Logging out.\r\n"),
        "{text}"
    );
}

#[test]
fn command_counts_by_keyword_are_drained_once() {
    let mut h = Harness::new();
    h.send("user alice\r\nPASS secret word\r\nSTAT\r\nSTAT\r\nFOO\r\n");
    let mut counts = Vec::new();
    h.s.take_command_counts(|k, n| counts.push((k, n)));
    counts.sort();
    assert_eq!(
        counts,
        vec![("PASS", 1), ("STAT", 2), ("USER", 1), ("unknown", 1)]
    );
    h.s.take_command_counts(|k, n| panic!("drained twice: {k} {n}"));
}

/// RFC 3206 §4: `[AUTH]` says the user's credentials are at fault. A client that cancels an
/// exchange with `*` (RFC 5034 §4), or refuses the SCRAM server-final, has not been told its
/// credentials are wrong; Dovecot answers `-ERR Authentication aborted by client.` without a
/// code. A client that sees `[AUTH]` may ask its user for a new password.
#[test]
fn sasl_cancel_has_no_auth_code() {
    let mut h = Harness::new();
    assert_eq!(h.send("AUTH PLAIN\r\n"), "+ \r\n");
    assert_eq!(h.send("*\r\n"), "-ERR Authentication cancelled.\r\n");
    assert!(!h.closed);
    h.login();
    // Refusing the SCRAM server-final.
    let v = scram_vector(Mechanism::ScramSha256);
    let mut h = Harness::new();
    h.send(&format!("AUTH SCRAM-SHA-256 {}\r\n", b64(v.client_first)));
    h.send(&format!("{}\r\n", b64(v.client_final)));
    assert_eq!(h.send("*\r\n"), "-ERR Authentication cancelled.\r\n");
    assert!(h.closed);
}

/// RFC 5034 §4: after the SCRAM server-final the client must answer with an empty response
/// before it is logged in. An over-long line in its place is no acknowledgement: the session
/// must not be left in TRANSACTION after an `-ERR` (the client would believe the login failed
/// while it holds the maildrop lock).
#[test]
fn scram_overlong_acknowledgement_is_a_refusal() {
    let v = scram_vector(Mechanism::ScramSha256);
    let mut h = Harness::new();
    h.send(&format!("AUTH SCRAM-SHA-256 {}\r\n", b64(v.client_first)));
    assert_eq!(
        h.send(&format!("{}\r\n", b64(v.client_final))),
        cont(format!("v={}", v.server_signature))
    );
    let long = "A".repeat(MAX_LINE + 10);
    assert_eq!(
        h.send(&format!("{long}\r\nSTAT\r\n")),
        "-ERR Authentication cancelled.\r\n"
    );
    assert!(h.closed);
    assert!(h.committed.is_empty());
}

/// A maildrop whose user has a LOGIN-DELAY of their own.
struct Delayed(Fake, Option<u64>);

impl Maildrop for Delayed {
    fn count(&self) -> usize {
        self.0.count()
    }
    fn octets(&self, i: usize) -> u64 {
        self.0.octets(i)
    }
    fn uidl(&self, i: usize) -> &str {
        self.0.uidl(i)
    }
    fn login_delay(&self) -> Option<u64> {
        self.1
    }
}

/// The LOGIN-DELAY lines of CAPA before and after a login with `own` as the user's delay.
fn login_delay_capa(configured: u64, per_user: bool, own: Option<u64>) -> (String, String) {
    let cfg = SessionConfig {
        login_delay_secs: configured,
        ..SessionConfig::default()
    };
    let conn = ConnInfo {
        plaintext_auth: true,
        login_delay_per_user: per_user,
        ..ConnInfo::default()
    };
    let mut s = Session::new(Arc::new(cfg), conn);
    let mut out = Vec::new();
    s.feed(b"CAPA\r\nUSER a\r\nPASS b\r\nCAPA\r\n");
    loop {
        match s.poll(&mut out) {
            Step::Login(_) => s.login_done(&mut out, LoginResult::Ok(Delayed(fake(), own))),
            Step::NeedInput => break,
            Step::Flush => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let text = String::from_utf8(out).unwrap();
    let (before, after) = text.split_once("Logged in.").unwrap();
    let pick = |t: &str| {
        t.lines()
            .filter(|l| l.starts_with("LOGIN-DELAY"))
            .collect::<Vec<_>>()
            .join("|")
    };
    (pick(before), pick(after))
}

#[test]
fn login_delay_is_announced_per_user_as_rfc_2449_asks() {
    // One delay for everyone: the same line in both states, or none at all.
    assert_eq!(
        login_delay_capa(600, false, None),
        ("LOGIN-DELAY 600".into(), "LOGIN-DELAY 600".into())
    );
    assert_eq!(
        login_delay_capa(0, false, None),
        (String::new(), String::new())
    );
    // A delay that may differ per user: tagged USER before login, the user's own after.
    assert_eq!(
        login_delay_capa(600, true, Some(0)),
        ("LOGIN-DELAY 600 USER".into(), "LOGIN-DELAY 0".into())
    );
    assert_eq!(
        login_delay_capa(0, true, Some(3600)),
        ("LOGIN-DELAY 0 USER".into(), "LOGIN-DELAY 3600".into())
    );
    // A user without a delay of their own has the configured one.
    assert_eq!(
        login_delay_capa(600, true, None),
        ("LOGIN-DELAY 600 USER".into(), "LOGIN-DELAY 600".into())
    );
}
