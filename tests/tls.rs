//! TLS end to end: implicit TLS (POP3S) and STLS against the real binary, with an in-process
//! rustls client for byte-exact and adversarial checks, and with the real clients Python
//! `poplib`, `curl`, `mpop`, `fetchmail` and `openssl s_client`.
//!
//! Every test makes its own CA and two leaf certificates with rcgen: the default one
//! (`CN=corepop-default`, SAN localhost and 127.0.0.1) and an SNI one (`CN=corepop-sni`, SAN
//! pop.example.org). The messages cover wire-clean CRLF messages (sent as stored; under TLS
//! never from a mapping, which is for plaintext `sendfile` only) and LF / dot-line messages
//! (transformed in chunks), small and several hundred KiB.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{crlf_to_lf, describe_diff, expected_wire, message_id, Fixture, Server};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

const USER: &str = "alice";
const PASS: &str = "secret";

struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    sni_cert: PathBuf,
    sni_key: PathBuf,
}

fn make_certs(dir: &Path) -> Certs {
    let ca = common::TestCa::new("corepop test CA");
    let leaf = |cn: &str, names: &[&str], tag: &str| -> (PathBuf, PathBuf) {
        let (cert, key) = ca.leaf(cn, names);
        let (cp, kp) = (
            dir.join(format!("{tag}.pem")),
            dir.join(format!("{tag}.key")),
        );
        fs::write(&cp, cert).unwrap();
        fs::write(&kp, key).unwrap();
        fs::set_permissions(&kp, fs::Permissions::from_mode(0o600)).unwrap();
        (cp, kp)
    };
    let (cert, key) = leaf("corepop-default", &["localhost", "127.0.0.1"], "default");
    let (sni_cert, sni_key) = leaf("corepop-sni", &["pop.example.org"], "sni");
    let ca_path = dir.join("ca.pem");
    fs::write(&ca_path, ca.ca_pem()).unwrap();
    Certs {
        ca: ca_path,
        cert,
        key,
        sni_cert,
        sni_key,
    }
}

/// Test messages: (Maildir name, bytes).
fn messages() -> Vec<(String, Vec<u8>)> {
    let hdr = |id: &str, nl: &str| {
        format!("From: a@example.org{nl}To: b@example.org{nl}Subject: {id}{nl}Message-ID: <{id}@tls.test>{nl}{nl}")
    };
    let mut big_crlf = hdr("big-crlf", "\r\n").into_bytes();
    let mut big_lf = hdr("big-lf", "\n").into_bytes();
    // Both large messages pass 1 MiB, so under TLS too they are read 64 KiB first and then in
    // the driver's 256 KiB chunks.
    for i in 0..24000 {
        big_crlf.extend_from_slice(
            format!("line {i:05} of a wire-clean message, sent from the mapping\r\n").as_bytes(),
        );
        big_lf.extend_from_slice(
            format!("line {i:05} of an LF message\n.dot-stuffed line {i}\n").as_bytes(),
        );
    }
    assert!(big_crlf.len() > 1 << 20 && big_lf.len() > 1 << 20);
    let small_crlf = format!("{}Hello over TLS.\r\n", hdr("small-crlf", "\r\n")).into_bytes();
    let small_lf =
        format!("{}Dots:\n.\n..two\nno final newline", hdr("small-lf", "\n")).into_bytes();
    [
        ("1700000001.M1P1.tls", small_crlf),
        ("1700000002.M1P1.tls", small_lf),
        ("1700000003.M1P1.tls", big_crlf),
        ("1700000004.M1P1.tls", big_lf),
    ]
    .into_iter()
    .map(|(n, b)| (n.to_string(), b))
    .collect()
}

struct Setup {
    fx: Fixture,
    certs: Certs,
    srv: Server,
    plain: SocketAddr,
    tls: SocketAddr,
    msgs: Vec<(String, Vec<u8>)>,
}

impl Setup {
    fn new() -> Setup {
        Self::with_config("")
    }

    fn with_config(extra: &str) -> Setup {
        let mut fx = Fixture::new();
        fx.add_user(USER, PASS);
        let msgs = messages();
        for (name, bytes) in &msgs {
            fx.deliver(USER, "new", name, bytes);
        }
        let certs = make_certs(fx.path());
        let q = |p: &Path| format!("{:?}", p.display().to_string());
        fx.config(&format!(
            "[tls]\ncert = {}\nkey = {}\nhandshake_timeout_secs = 2\n{extra}\n\
             [[tls.sni]]\nname = \"pop.example.org\"\ncert = {}\nkey = {}\n",
            q(&certs.cert),
            q(&certs.key),
            q(&certs.sni_cert),
            q(&certs.sni_key),
        ));
        let srv = Server::start(&fx, &["--listen-tls", "127.0.0.1:0"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !srv.stdout_text().contains("(tls)") {
            assert!(
                Instant::now() < deadline,
                "no `(tls)` line: {}",
                srv.stdout_text()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = srv.stdout_text();
        let line = text.lines().find(|l| l.ends_with(" (tls)")).unwrap();
        let tls = line
            .strip_prefix("corepop: listening on ")
            .and_then(|r| r.strip_suffix(" (tls)"))
            .unwrap()
            .parse()
            .unwrap();
        let plain = srv.addr;
        assert_ne!(plain, tls);
        Setup {
            fx,
            certs,
            srv,
            plain,
            tls,
            msgs,
        }
    }

    fn w(&self, rel: &str) -> PathBuf {
        self.fx.path().join(rel)
    }

    fn by_id(&self) -> BTreeMap<String, &Vec<u8>> {
        self.msgs
            .iter()
            .map(|(_, b)| (message_id(b).unwrap(), b))
            .collect()
    }

    /// Checks downloaded files (one message each) against `want(original)` by Message-ID;
    /// every message must be there exactly once.
    fn check(&self, client: &str, files: &[PathBuf], want: &dyn Fn(&[u8]) -> Vec<u8>) {
        let by_id = self.by_id();
        let mut seen = Vec::new();
        for f in files {
            let got = fs::read(f).unwrap();
            let id = message_id(&got)
                .unwrap_or_else(|| panic!("{client}: {} has no Message-ID", f.display()));
            let orig = by_id
                .get(&id)
                .unwrap_or_else(|| panic!("{client}: unknown Message-ID {id}"));
            let exp = want(orig);
            assert!(
                got == exp,
                "{client}: {id} differs: {}\n--- server log ---\n{}",
                describe_diff(&got, &exp),
                self.srv.stderr_text()
            );
            seen.push(id);
        }
        seen.sort();
        let all: Vec<String> = by_id.keys().cloned().collect();
        assert_eq!(seen, all, "{client}: downloaded set");
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("HOME", self.fx.path())
            .env("LC_ALL", "C")
            .env_remove("MAIL")
            .env_remove("FETCHMAILHOME")
            .current_dir(self.fx.path())
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, what: &str, cmd: &mut Command, ok: &[i32]) -> String {
        let out = run_with_deadline(cmd, Duration::from_secs(60));
        let code = out.status.code().unwrap_or(-1);
        let text = format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            ok.contains(&code),
            "{what} exited {code}\n{text}\n--- server log ---\n{}",
            self.srv.stderr_text()
        );
        text
    }
}

fn run_with_deadline(cmd: &mut Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    std::thread::spawn(move || {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if d2.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: kill(2) of our own child, which has not been waited for yet.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    });
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let _ = so.read_to_end(&mut stdout);
    stderr.extend(t.join().unwrap());
    let status = child.wait().unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    std::process::Output {
        status,
        stdout,
        stderr,
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_in(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// In-process rustls client
// ---------------------------------------------------------------------------------------------

fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    common::tls_client_config(&fs::read(ca).unwrap())
}

type TlsConn = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A line-oriented POP3 client over any stream (plain or TLS); reads byte by byte so that it
/// never consumes more than one reply (needed to hand the socket to TLS after `+OK` to STLS).
struct Client<S: Read + Write> {
    s: S,
}

impl<S: Read + Write> Client<S> {
    fn line(&mut self) -> String {
        let mut v = Vec::new();
        let mut b = [0u8; 1];
        while !v.ends_with(b"\r\n") {
            match self.s.read(&mut b) {
                Ok(1) => v.push(b[0]),
                other => panic!(
                    "read failed after {:?}: {other:?}",
                    String::from_utf8_lossy(&v)
                ),
            }
        }
        v.truncate(v.len() - 2);
        String::from_utf8_lossy(&v).into_owned()
    }
    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
        self.s.flush().unwrap();
    }
    fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.line()
    }
    /// The un-stuffed body of a multi-line reply, with its CRLFs (terminator excluded).
    fn body(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let l = self.line();
            if l == "." {
                return out;
            }
            let l = l.strip_prefix('.').unwrap_or(&l);
            out.extend_from_slice(l.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    fn login(&mut self) {
        assert!(self.cmd(&format!("USER {USER}")).starts_with("+OK"));
        let r = self.cmd(&format!("PASS {PASS}"));
        assert!(r.starts_with("+OK"), "PASS: {r}");
    }
}

fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn tls_over(sock: TcpStream, ca: &Path, name: &str) -> TlsConn {
    let conn = rustls::ClientConnection::new(
        client_config(ca),
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .unwrap_or_else(|e| panic!("TLS handshake with {name}: {e}"));
    }
    s
}

fn capa<S: Read + Write>(c: &mut Client<S>) -> String {
    let r = c.cmd("CAPA");
    assert!(r.starts_with("+OK"), "CAPA: {r}");
    String::from_utf8(c.body()).unwrap()
}

/// RETR of every message through `c` must give exactly the wire form.
fn retr_all<S: Read + Write>(s: &Setup, c: &mut Client<S>, what: &str) {
    let stat = c.cmd("STAT");
    assert_eq!(
        stat.split(' ').nth(1),
        Some(&*s.msgs.len().to_string()),
        "{stat}"
    );
    let by_id = s.by_id();
    for n in 1..=s.msgs.len() {
        let r = c.cmd(&format!("RETR {n}"));
        assert!(r.starts_with("+OK"), "{what}: RETR {n}: {r}");
        let got = c.body();
        let orig = by_id[&message_id(&got).unwrap()];
        let want = expected_wire(orig);
        assert!(
            got == want,
            "{what}: RETR {n}: {}",
            describe_diff(&got, &want)
        );
    }
}

/// Implicit TLS: greeting after the handshake, no STLS offered, STLS refused, USER/PASS
/// allowed, RETR of every message byte-exact (both send paths), clean QUIT.
#[test]
fn implicit_tls_downloads_byte_exact() {
    let s = Setup::new();
    let mut c = Client {
        s: tls_over(tcp(s.tls), &s.certs.ca, "localhost"),
    };
    assert!(c.line().starts_with("+OK"));
    let caps = capa(&mut c);
    assert!(!caps.contains("STLS"), "CAPA under TLS: {caps}");
    assert!(c.cmd("STLS").starts_with("-ERR"));
    c.login();
    retr_all(&s, &mut c, "POP3S");
    assert!(c.cmd("STLS").starts_with("-ERR"), "STLS after login");
    assert!(c.cmd("QUIT").starts_with("+OK"));
    let mut rest = Vec::new();
    let _ = c.s.read_to_end(&mut rest);
    assert!(rest.is_empty());
}

/// A session the server ends (here the login timeout; the idle timeout and shutdown take the
/// same path) ends with TLS close_notify after the `-ERR`, on implicit TLS and after STLS:
/// clients see a clean end of the TLS stream, not a truncation (which rustls, and
/// OpenSSL 3 by default, report as an error).
#[test]
fn the_servers_own_timeouts_end_tls_with_close_notify() {
    let s = Setup::with_config("[limits]\nlogin_timeout_secs = 1\nlogin_deadline_secs = 1\n");
    let implicit = tls_over(tcp(s.tls), &s.certs.ca, "localhost");
    let mut plain = Client { s: tcp(s.plain) };
    assert!(plain.line().starts_with("+OK"));
    assert!(plain.cmd("STLS").starts_with("+OK"));
    let upgraded = tls_over(plain.s, &s.certs.ca, "localhost");
    for (what, conn, greeting) in [("POP3S", implicit, true), ("STLS", upgraded, false)] {
        let mut c = Client { s: conn };
        if greeting {
            assert!(c.line().starts_with("+OK"));
        }
        let r = c.line();
        assert!(r.starts_with("-ERR"), "{what}: {r}");
        let mut rest = Vec::new();
        match c.s.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "{what}: {rest:?}"),
            Err(e) => panic!("{what}: the TLS stream ended without close_notify: {e}"),
        }
    }
}

/// STLS: offered in CAPA; plaintext pipelined behind STLS is discarded (the first reply after
/// the handshake answers the first command sent under TLS); STLS again is -ERR; RETR of every
/// message byte-exact; STLS after login is -ERR.
#[test]
fn stls_upgrade_discards_pipelined_plaintext() {
    let s = Setup::new();
    let mut c = Client { s: tcp(s.plain) };
    assert!(c.line().starts_with("+OK"));
    let caps = capa(&mut c);
    assert!(caps.contains("STLS\r\n"), "CAPA before TLS: {caps}");
    // STLS and a command in one write: the USER must never be executed.
    c.send(format!("STLS\r\nUSER {USER}\r\n").as_bytes());
    let r = c.line();
    assert!(r.starts_with("+OK"), "STLS: {r}");
    let mut c = Client {
        s: tls_over(c.s, &s.certs.ca, "localhost"),
    };
    // If the pipelined USER had been executed, this PASS would log in (or its +OK would come
    // first); it must fail as PASS without USER.
    let r = c.cmd(&format!("PASS {PASS}"));
    assert!(r.starts_with("-ERR"), "first reply under TLS: {r}");
    let caps = capa(&mut c);
    assert!(!caps.contains("STLS"), "CAPA after STLS: {caps}");
    assert!(c.cmd("STLS").starts_with("-ERR"), "STLS twice");
    c.login();
    retr_all(&s, &mut c, "STLS");
    assert!(c.cmd("STLS").starts_with("-ERR"), "STLS after login");
    assert!(c.cmd("QUIT").starts_with("+OK"));
}

/// The SNI name picks the certificate: pop.example.org verifies against the SNI certificate,
/// localhost against the default one, on both the TLS port and after STLS; `openssl s_client`
/// sees the matching subjects, and the default one without SNI or for an unknown name.
#[test]
fn sni_picks_the_certificate() {
    let s = Setup::new();
    for name in ["pop.example.org", "localhost"] {
        let mut c = Client {
            s: tls_over(tcp(s.tls), &s.certs.ca, name),
        };
        assert!(c.line().starts_with("+OK"));
        assert!(c.cmd("QUIT").starts_with("+OK"));
        let mut c = Client { s: tcp(s.plain) };
        c.line();
        assert!(c.cmd("STLS").starts_with("+OK"));
        let mut c = Client {
            s: tls_over(c.s, &s.certs.ca, name),
        };
        assert!(c.cmd("QUIT").starts_with("+OK"));
    }
    let subject = |args: &[&str]| -> String {
        let mut cmd = s.command("openssl");
        cmd.args(["s_client", "-connect"]).args(args);
        let text = s.run(&format!("openssl {args:?}"), &mut cmd, &[0, 1]);
        let line = text
            .lines()
            .find(|l| l.starts_with("subject="))
            .unwrap_or_else(|| panic!("no subject= in {text}"));
        line.to_string()
    };
    let tls = s.tls.to_string();
    let plain = s.plain.to_string();
    assert!(subject(&[&tls, "-servername", "pop.example.org"]).contains("corepop-sni"));
    assert!(subject(&[&tls, "-servername", "POP.EXAMPLE.ORG"]).contains("corepop-sni"));
    assert!(subject(&[&tls, "-servername", "other.example"]).contains("corepop-default"));
    assert!(subject(&[&tls, "-noservername"]).contains("corepop-default"));
    assert!(subject(&[
        &plain,
        "-starttls",
        "pop3",
        "-servername",
        "pop.example.org"
    ])
    .contains("corepop-sni"));
}

/// A TLS handshake offering `alpn` (none when empty), TLS 1.2 only if `tls12`, or the error it
/// failed with.
fn try_tls_alpn(sock: TcpStream, ca: &Path, alpn: &[&str], tls12: bool) -> Result<TlsConn, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12 {
        &[&rustls::version::TLS12]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let conn = rustls::ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from("localhost".to_string()).unwrap(),
    )
    .unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).map_err(|e| e.to_string())?;
    }
    Ok(s)
}

/// ALPN (RFC 7301, ALPACA mitigation as in nginx's mail proxy): "pop3" is the registered id.
/// A client offering it gets it; a client offering no ALPN is served; a client offering only
/// other protocols (an HTTPS or IMAP client sent here by a cross-protocol attacker) gets the
/// fatal `no_application_protocol` alert instead of a POP3 session. Implicit TLS and STLS.
#[test]
fn alpn_pop3_is_selected_and_foreign_protocols_refused() {
    let s = Setup::new();
    let stls = |s: &Setup| {
        let mut c = Client { s: tcp(s.plain) };
        assert!(c.line().starts_with("+OK"));
        assert!(c.cmd("STLS").starts_with("+OK"));
        c.s
    };
    let sock = |s: &Setup, what: &str| if what == "POP3S" { tcp(s.tls) } else { stls(s) };
    for what in ["POP3S", "STLS"] {
        for (alpn, want) in [(&["h2", "pop3"][..], Some(&b"pop3"[..])), (&[][..], None)] {
            for tls12 in [false, true] {
                let c = try_tls_alpn(sock(&s, what), &s.certs.ca, alpn, tls12)
                    .unwrap_or_else(|e| panic!("{what}: ALPN {alpn:?}: {e}"));
                assert_eq!(c.conn.alpn_protocol(), want, "{what}: ALPN {alpn:?}");
                let mut c = Client { s: c };
                if what == "POP3S" {
                    assert!(c.line().starts_with("+OK"));
                }
                assert!(c.cmd("QUIT").starts_with("+OK"), "{what}");
            }
        }
        for tls12 in [false, true] {
            match try_tls_alpn(sock(&s, what), &s.certs.ca, &["http/1.1", "imap"], tls12) {
                Ok(c) => panic!(
                    "{what}: http/1.1,imap accepted (negotiated {:?})",
                    c.conn.alpn_protocol()
                ),
                // Under TLS 1.3 the alert follows the ServerHello and is not always delivered
                // before the close (see the runtime's handshake); the refusal is what counts.
                Err(e) if tls12 => assert!(e.contains("NoApplicationProtocol"), "{what}: {e}"),
                Err(_) => {}
            }
        }
    }
}

/// Plaintext on the TLS port is closed at once; a client that stalls the handshake (on the TLS
/// port, or after STLS) is closed within handshake_timeout_secs (2 s here); meanwhile other
/// clients are served.
#[test]
fn bad_and_stalled_handshakes_are_closed() {
    let s = Setup::new();
    let closed_within = |mut sock: TcpStream, limit: Duration, what: &str| {
        let start = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            match sock.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            assert!(start.elapsed() < limit, "{what}: still open");
        }
        let took = start.elapsed();
        assert!(took < limit, "{what}: closed after {took:?}");
        let _ = sock.write_all(b"x");
    };
    let mut p = tcp(s.tls);
    p.write_all(b"USER alice\r\n").unwrap();
    closed_within(p, Duration::from_secs(2), "plaintext on the TLS port");

    let stalled = tcp(s.tls);
    let mut stls = Client { s: tcp(s.plain) };
    stls.line();
    assert!(stls.cmd("STLS").starts_with("+OK"));
    // While both stall, another client is served.
    let mut ok = Client {
        s: tls_over(tcp(s.tls), &s.certs.ca, "localhost"),
    };
    assert!(ok.line().starts_with("+OK"));
    ok.login();
    assert!(ok.cmd("QUIT").starts_with("+OK"));
    closed_within(stalled, Duration::from_secs(6), "stalled TLS handshake");
    closed_within(stls.s, Duration::from_secs(6), "stalled STLS handshake");

    // A failed STLS handshake closes the connection.
    let mut c = Client { s: tcp(s.plain) };
    c.line();
    assert!(c.cmd("STLS").starts_with("+OK"));
    c.s.write_all(b"this is not a ClientHello\r\n").unwrap();
    closed_within(c.s, Duration::from_secs(2), "garbage after STLS");
}

// ---------------------------------------------------------------------------------------------
// Real clients
// ---------------------------------------------------------------------------------------------

const POPLIB: &str = r#"
import os, poplib, ssl, sys
poplib._MAXLINE = 1 << 20
host, tls_port, plain_port, user, pw, ca, out = sys.argv[1:8]
ctx = ssl.create_default_context(cafile=ca)
for mode in ("ssl", "stls"):
    if mode == "ssl":
        p = poplib.POP3_SSL(host, int(tls_port), context=ctx, timeout=30)
    else:
        p = poplib.POP3(host, int(plain_port), timeout=30)
        assert "STLS" in p.capa(), p.capa()
        p.stls(ctx)
    p.user(user)
    p.pass_(pw)
    n = p.stat()[0]
    d = os.path.join(out, mode)
    os.makedirs(d)
    for i in range(1, n + 1):
        resp, lines, octets = p.retr(i)
        with open(os.path.join(d, str(i)), "wb") as f:
            f.write(b"".join(l + b"\r\n" for l in lines))
    p.quit()
"#;

/// Python poplib: POP3_SSL and POP3.stls with a verifying context (the test CA); every
/// message byte-exact in wire form.
#[test]
fn python_poplib_pop3_ssl_and_stls() {
    let s = Setup::new();
    let out = s.w("poplib");
    fs::create_dir_all(&out).unwrap();
    let mut cmd = s.command("python3");
    cmd.arg("-c")
        .arg(POPLIB)
        .arg("127.0.0.1")
        .arg(s.tls.port().to_string())
        .arg(s.plain.port().to_string())
        .args([USER, PASS])
        .arg(&s.certs.ca)
        .arg(&out);
    s.run("python3 poplib", &mut cmd, &[0]);
    s.check(
        "poplib POP3_SSL",
        &files_in(&out.join("ssl")),
        &expected_wire,
    );
    s.check("poplib stls", &files_in(&out.join("stls")), &expected_wire);
}

/// curl with --cacert: `pop3s://` (implicit TLS) and `pop3://` with --ssl-reqd (STLS), RETR of
/// every message byte-exact.
#[test]
fn curl_pop3s_and_ssl_reqd() {
    let s = Setup::new();
    let userpass = format!("{USER}:{PASS}");
    let ca = s.certs.ca.display().to_string();
    for (tag, base, extra) in [
        (
            "pop3s",
            format!("pop3s://127.0.0.1:{}/", s.tls.port()),
            None,
        ),
        (
            "stls",
            format!("pop3://127.0.0.1:{}/", s.plain.port()),
            Some("--ssl-reqd"),
        ),
    ] {
        let dir = s.w(&format!("curl-{tag}"));
        fs::create_dir_all(&dir).unwrap();
        for n in 1..=s.msgs.len() {
            let mut cmd = s.command("curl");
            cmd.args(["-sS", "--max-time", "30", "--cacert", &ca, "-u", &userpass])
                .args(extra)
                .arg("-o")
                .arg(dir.join(n.to_string()))
                .arg(format!("{base}{n}"));
            s.run(&format!("curl {tag} RETR {n}"), &mut cmd, &[0]);
        }
        s.check(&format!("curl {tag}"), &files_in(&dir), &expected_wire);
    }
}

/// mpop --tls=on with --tls-starttls=off (implicit TLS) and =on (STLS), verifying with the test
/// CA; messages delivered to a Maildir with LF endings, byte-exact.
#[test]
fn mpop_tls_and_starttls() {
    let s = Setup::new();
    let pw = s.w("mpop-password");
    fs::write(&pw, PASS).unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    for (tag, port, starttls) in [
        ("tls", s.tls.port(), "off"),
        ("starttls", s.plain.port(), "on"),
    ] {
        let out = s.w(&format!("mpop-{tag}"));
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(out.join(sub)).unwrap();
        }
        let rc = s.w(&format!("mpoprc-{tag}"));
        fs::write(
            &rc,
            format!(
                "defaults\naccount t\nhost 127.0.0.1\nport {port}\nuser {USER}\n\
                 uidls_file {}\naccount default : t\n",
                s.w(&format!("mpop-uidls-{tag}")).display()
            ),
        )
        .unwrap();
        fs::set_permissions(&rc, fs::Permissions::from_mode(0o600)).unwrap();
        let mut cmd = s.command("mpop");
        cmd.arg("-C")
            .arg(&rc)
            .args(["--tls=on", &format!("--tls-starttls={starttls}")])
            .arg(format!("--tls-trust-file={}", s.certs.ca.display()))
            .arg("--auth=user")
            .arg(format!("--passwordeval=cat {}", pw.display()))
            .arg(format!("--delivery=maildir,{}", out.display()))
            .args(["--keep=on", "--only-new=off", "--received-header=off"]);
        s.run(&format!("mpop {tag}"), &mut cmd, &[0]);
        s.check(&format!("mpop {tag}"), &files_in(&out), &|b| {
            crlf_to_lf(&expected_wire(b))
        });
    }
}

/// fetchmail --ssl (implicit TLS) and --sslproto tls1.2+ without --ssl (STLS, mandatory),
/// both with --sslcertck against the test CA (--sslcertfile; --sslcommonname localhost since
/// fetchmail ignores IP SANs); LF form through the MDA.
#[test]
fn fetchmail_ssl_and_stls() {
    let s = Setup::new();
    for (tag, port, mode) in [
        ("ssl", s.tls.port(), ["--ssl", "--sslproto", "tls1.2+"]),
        (
            "stls",
            s.plain.port(),
            ["--sslproto", "tls1.2+", "--sslcertck"],
        ),
    ] {
        let out = s.w(&format!("fetchmail-{tag}"));
        fs::create_dir_all(&out).unwrap();
        let mut cmd = s.command("fetchmail");
        cmd.env("FETCHMAILHOME", s.fx.path());
        common::fetchmail_args(
            &mut cmd,
            s.fx.path(),
            tag,
            port,
            "password",
            USER,
            PASS,
            &out,
        )
        .args(mode)
        // fetchmail matches DNS names only, not IP SANs: check the name `localhost`.
        .args([
            "--sslcommonname",
            "localhost",
            "--sslcertck",
            "--sslcertfile",
        ])
        .arg(&s.certs.ca)
        .args(["--keep", "--fetchall"]);
        let text = s.run(&format!("fetchmail {tag}"), &mut cmd, &[0]);
        if tag == "stls" {
            assert!(text.contains("STLS"), "fetchmail did not use STLS:\n{text}");
        }
        s.check(&format!("fetchmail {tag}"), &files_in(&out), &|b| {
            crlf_to_lf(&expected_wire(b))
        });
    }
}

/// Start-up refuses an implicit-TLS listener without a certificate, and names a bad PEM file.
#[test]
fn startup_errors() {
    let fx = Fixture::new();
    fx.config("");
    let bin = env!("CARGO_BIN_EXE_corepop");
    let cfg = fx.config_path();
    let out = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", "127.0.0.1:0", "--listen-tls", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_tls"), "{err}");

    let bad = fx.path().join("bad.pem");
    fs::write(&bad, "not a PEM file\n").unwrap();
    let out = Command::new(bin)
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&bad)
        .arg("--tls-key")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.pem"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}

/// SIGHUP reloads the certificate files: new connections get the new certificate; invalid new
/// files are logged and the old certificate stays in use.
#[test]
fn sighup_reloads_certificates() {
    let s = Setup::new();
    let fingerprint =
        |c: &TlsConn| -> Vec<u8> { c.conn.peer_certificates().unwrap()[0].as_ref().to_vec() };
    let first = fingerprint(&tls_over(tcp(s.tls), &s.certs.ca, "localhost"));
    // New files come from a new CA: the client trusts both.
    let dir2 = s.w("new");
    fs::create_dir_all(&dir2).unwrap();
    let new = make_certs(&dir2);
    let mut both = fs::read(&s.certs.ca).unwrap();
    both.extend(fs::read(&new.ca).unwrap());
    let both_ca = s.w("both-ca.pem");
    fs::write(&both_ca, both).unwrap();

    // Invalid files first: the old certificate stays.
    fs::write(&s.certs.cert, "garbage").unwrap();
    s.srv.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.srv.stderr_text().contains("reload failed") {
        assert!(
            Instant::now() < deadline,
            "no reload error logged: {}",
            s.srv.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        fingerprint(&tls_over(tcp(s.tls), &both_ca, "localhost")),
        first
    );

    fs::copy(&new.cert, &s.certs.cert).unwrap();
    fs::copy(&new.key, &s.certs.key).unwrap();
    s.srv.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.srv.stderr_text().contains("certificates reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload logged: {}",
            s.srv.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = Client {
        s: tls_over(tcp(s.tls), &both_ca, "localhost"),
    };
    assert_ne!(fingerprint(&c.s), first);
    assert!(c.line().starts_with("+OK"));
    c.login();
    assert!(c.cmd("QUIT").starts_with("+OK"));
}

/// A SIGHUP (it reloads the certificates, whatever it was sent for) keeps TLS sessions
/// resumable: the ticket keys and the session cache carry over, so a reload does not cost
/// every client a full handshake.
#[test]
fn sighup_keeps_tls_sessions_resumable() {
    let s = Setup::new();
    let config = client_config(&s.certs.ca);
    let connect = || {
        let conn = rustls::ClientConnection::new(
            config.clone(),
            ServerName::try_from("localhost").unwrap(),
        )
        .unwrap();
        let mut c = Client {
            s: rustls::StreamOwned::new(conn, tcp(s.tls)),
        };
        // The greeting comes after the TLS 1.3 tickets, so they are taken in.
        assert!(c.line().starts_with("+OK"));
        let kind = c.s.conn.handshake_kind();
        assert!(c.cmd("QUIT").starts_with("+OK"));
        kind
    };
    assert_eq!(connect(), Some(rustls::HandshakeKind::Full));
    assert_eq!(connect(), Some(rustls::HandshakeKind::Resumed));
    s.srv.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.srv.stderr_text().contains("certificates reloaded") {
        assert!(Instant::now() < deadline, "{}", s.srv.stderr_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(connect(), Some(rustls::HandshakeKind::Resumed));
}

#[test]
fn tls_client_hello_on_the_plaintext_port_gets_err_and_others_are_served() {
    let s = Setup::new();
    // A real ClientHello, as a client configured for POP3S would send to port 110 by mistake.
    let mut conn = rustls::ClientConnection::new(
        client_config(&s.certs.ca),
        ServerName::try_from("localhost".to_string()).unwrap(),
    )
    .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert!(
        hello.len() > 100 && hello[0] == 0x16,
        "not a TLS handshake record"
    );

    let mut sock = tcp(s.plain);
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.write_all(&hello).unwrap();
    sock.write_all(b"\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let start = Instant::now();
    while !got.ends_with(b"\r\n") || got.split(|&b| b == b'\n').count() < 3 {
        match sock.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if start.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    let mut lines = text.lines();
    assert!(
        lines.next().unwrap_or("").starts_with("+OK"),
        "greeting: {text}"
    );
    let replies: Vec<&str> = lines.collect();
    assert!(!replies.is_empty(), "no reply to the ClientHello: {text}");
    for r in &replies {
        assert!(
            r.starts_with("-ERR"),
            "the ClientHello was answered with {r:?}"
        );
    }
    drop(sock);
    // Everyone else is still served.
    let mut ok = Client { s: tcp(s.plain) };
    assert!(ok.line().starts_with("+OK"));
    ok.login();
    assert!(ok.cmd("QUIT").starts_with("+OK"));
}
