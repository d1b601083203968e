//! TLS for the load generator (`--tls implicit|starttls`): the rustls [`ClientConfig`]s and
//! the handshake.
//!
//! Each user's sessions get their own session cache ([`TlsClient::for_user`]), as each
//! mailbox's client keeps its own: a user's session resumes the session that user's previous
//! one was given, whatever the concurrency. (One cache shared by all workers, as before, holds
//! only rustls's 8 tickets per server name, so at 256 connections about half the handshakes
//! were full ones although the server would have resumed them.) `--tls-no-resume` turns
//! caching off so every handshake is a full one.
//! Certificates are verified against `--tls-ca`, or not at all with `--tls-insecure` (the
//! handshake signature is still checked, so the client's handshake work stays realistic).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, HandshakeKind, RootCertStore, SignatureScheme};
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::client::{limited, ErrorKind, Result};

/// When the TLS handshake happens (`--tls`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Handshake right after the TCP connect, before the greeting (POP3S, port 995 style).
    Implicit,
    /// Read the plaintext greeting, send STLS (RFC 2595), then handshake.
    #[value(name = "starttls", alias = "stls")]
    StartTls,
}

impl TlsMode {
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::Implicit => "implicit",
            TlsMode::StartTls => "starttls",
        }
    }
}

/// The TLS name for a run without TLS, in reports.
pub const NO_TLS: &str = "none";

/// Everything a connection needs to speak TLS. Cheap to clone (the config is shared).
#[derive(Clone, Debug)]
pub struct TlsClient {
    pub mode: TlsMode,
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
    /// With resumption on, each user's configuration (a copy of `config` with its own session
    /// cache), made on the user's first session.
    per_user: Option<Arc<UserConfigs>>,
}

/// User name → that user's client configuration.
type UserConfigs = Mutex<HashMap<String, Arc<ClientConfig>>>;

/// Server names one user's session cache holds (tickets per name: rustls keeps up to 8).
const USER_CACHE_NAMES: usize = 2;

/// Largest read-ahead of the socket under TLS (see [`TlsIo`]).
pub const READ_AHEAD: usize = 32 * 1024;

/// How certificates are checked.
#[derive(Clone, Copy, Debug)]
pub enum Verify<'a> {
    /// Against the CA certificates in this PEM file.
    Ca(&'a Path),
    /// Not at all (handshake signatures are still verified).
    Insecure,
}

impl TlsClient {
    /// Builds the shared client configuration.
    pub fn new(
        mode: TlsMode,
        verify: Verify<'_>,
        server_name: &str,
        resume: bool,
    ) -> anyhow::Result<TlsClient> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let mut config = match verify {
            Verify::Ca(path) => {
                let mut roots = RootCertStore::empty();
                for cert in crate::tls::load_certs(path)? {
                    roots
                        .add(cert)
                        .with_context(|| format!("CA file {}", path.display()))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Verify::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
        };
        if !resume {
            config.resumption = Resumption::disabled();
        }
        if server_name.is_empty() {
            bail!("empty --tls-server-name");
        }
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| anyhow::anyhow!("bad --tls-server-name {server_name:?}: {e}"))?;
        Ok(TlsClient {
            mode,
            config: Arc::new(config),
            server_name,
            per_user: resume.then(Default::default),
        })
    }

    /// The client `user`'s sessions use: with resumption on, one whose session cache only
    /// that user's sessions fill and draw on; otherwise this one.
    pub fn for_user(&self, user: &str) -> TlsClient {
        let Some(per_user) = &self.per_user else {
            return self.clone();
        };
        let mut map = per_user.lock().unwrap_or_else(|e| e.into_inner());
        let config = match map.get(user) {
            Some(c) => Arc::clone(c),
            None => {
                let mut c = (*self.config).clone();
                c.resumption = Resumption::in_memory_sessions(USER_CACHE_NAMES);
                let c = Arc::new(c);
                map.insert(user.to_string(), Arc::clone(&c));
                c
            }
        };
        TlsClient {
            mode: self.mode,
            config,
            server_name: self.server_name.clone(),
            per_user: None,
        }
    }

    /// Runs the handshake over `tcp`, within `limit`; the TLS layer reads the socket through
    /// a buffer of `read_ahead` octets.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        read_ahead: usize,
        limit: Duration,
    ) -> Result<Box<TlsIo>> {
        let io = BufReader::with_capacity(read_ahead.max(1024), tcp);
        let connector = TlsConnector::from(Arc::clone(&self.config));
        let handshake = connector.connect(self.server_name.clone(), io);
        let s = limited(limit, "TLS handshake", ErrorKind::Tls, handshake).await?;
        Ok(Box::new(s))
    }
}

/// A TLS connection as the client sees it. rustls asks for at most 4 KiB at a time; the
/// buffer under it saves three or more `read` calls per full 16 KiB record.
pub type TlsIo = tokio_rustls::client::TlsStream<BufReader<TcpStream>>;

/// Whether a finished handshake resumed a session.
pub fn resumed(s: &TlsIo) -> bool {
    s.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed)
}

/// `--tls-insecure`: any certificate is accepted, but the handshake signature made with its
/// key is verified as usual.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::client::Conn;
    use crate::loadgen::client::SessionError;
    use crate::loadgen::idle::{close_all, open_local, IdleCfg};
    use crate::loadgen::login::Auth;
    use crate::loadgen::session::{self, Counters, Mode, SessionCfg};
    use crate::loadgen::users::User;
    use crate::loadgen::ErrorLog;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    use rustls::pki_types::PrivateKeyDer;
    use rustls::{ServerConfig, ServerConnection, StreamOwned};
    use std::io::{self, Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::mpsc;
    use std::time::Duration;

    /// A test CA, a `localhost` certificate it signed, and an unrelated second CA.
    struct Pki {
        _dir: tempfile::TempDir,
        ca: std::path::PathBuf,
        other_ca: std::path::PathBuf,
        server: Arc<ServerConfig>,
    }

    fn make_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
    }

    fn pki() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = make_ca("corepop bench test CA");
        let other = make_ca("some other CA");
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = p.signed_by(&key, &*ca).unwrap();
        let server =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![leaf.der().clone(), ca.der().clone()],
                    PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .unwrap();
        let ca_path = dir.path().join("ca.pem");
        let other_path = dir.path().join("other.pem");
        std::fs::write(&ca_path, ca.pem()).unwrap();
        std::fs::write(&other_path, other.pem()).unwrap();
        Pki {
            _dir: dir,
            ca: ca_path,
            other_ca: other_path,
            server: Arc::new(server),
        }
    }

    /// The two messages the test server holds: a short one with dot-lines and one of about
    /// 300 KB, many TLS records long.
    fn messages() -> Vec<Vec<u8>> {
        let short = b"Subject: one\r\n\r\n.starts with a dot\r\n..two\r\n.\r\nend\r\n".to_vec();
        let mut long = b"Subject: two\r\n\r\n".to_vec();
        for i in 0..3000 {
            if i % 97 == 0 {
                long.push(b'.');
            }
            long.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, 98));
            long.extend_from_slice(b"\r\n");
        }
        vec![short, long]
    }

    fn stuffed(msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(msg.len() + 64);
        for line in msg.split_inclusive(|b| *b == b'\n') {
            if line.first() == Some(&b'.') {
                out.push(b'.');
            }
            out.extend_from_slice(line);
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    /// One line from `r`, without its CRLF; `None` at EOF or on an error.
    fn read_line(r: &mut impl Read) -> Option<String> {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        loop {
            match r.read(&mut b) {
                Ok(1) if b[0] == b'\n' => break,
                Ok(1) => line.push(b[0]),
                _ => return None,
            }
        }
        Some(String::from_utf8_lossy(&line).trim_end().to_string())
    }

    type ServerStream = StreamOwned<ServerConnection, TcpStream>;

    /// A POP3 server that speaks only over TLS: implicit, or after STLS (refused when
    /// `refuse_stls`); before TLS every other command but QUIT is refused. Serves `conns`
    /// connections, each on its own thread, and reports `QUIT` on `events` for each QUIT
    /// received under TLS.
    fn serve(
        pki: &Pki,
        mode: TlsMode,
        conns: usize,
        refuse_stls: bool,
    ) -> (SocketAddr, mpsc::Receiver<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let cfg = Arc::clone(&pki.server);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..conns {
                let Ok((tcp, _)) = l.accept() else { return };
                let (cfg, tx) = (Arc::clone(&cfg), tx.clone());
                std::thread::spawn(move || {
                    let _ = pop3_session(tcp, mode, cfg, refuse_stls, &tx);
                });
            }
        });
        (addr, rx)
    }

    fn pop3_session(
        mut tcp: TcpStream,
        mode: TlsMode,
        cfg: Arc<ServerConfig>,
        refuse_stls: bool,
        events: &mpsc::Sender<String>,
    ) -> io::Result<()> {
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        if mode == TlsMode::StartTls {
            tcp.write_all(b"+OK test server\r\n")?;
            loop {
                let Some(line) = read_line(&mut tcp) else {
                    return Ok(());
                };
                match line.as_str() {
                    "STLS" if refuse_stls => tcp.write_all(b"-ERR not today\r\n")?,
                    "STLS" => {
                        tcp.write_all(b"+OK begin TLS\r\n")?;
                        break;
                    }
                    "QUIT" => return tcp.write_all(b"+OK bye\r\n"),
                    _ => tcp.write_all(b"-ERR [AUTH] TLS first\r\n")?,
                }
            }
        }
        let conn = ServerConnection::new(cfg).map_err(io::Error::other)?;
        let mut s: ServerStream = StreamOwned::new(conn, tcp);
        if mode == TlsMode::Implicit {
            s.write_all(b"+OK test server\r\n")?;
        }
        let msgs = messages();
        let total: usize = msgs.iter().map(Vec::len).sum();
        while let Some(line) = read_line(&mut s) {
            let mut words = line.split_ascii_whitespace();
            let verb = words.next().unwrap_or("");
            let arg = words.next().and_then(|w| w.parse::<usize>().ok());
            let reply = match (verb, arg) {
                ("USER" | "PASS" | "NOOP", _) => b"+OK\r\n".to_vec(),
                ("STAT", _) => format!("+OK {} {total}\r\n", msgs.len()).into_bytes(),
                ("UIDL", _) => b"+OK\r\n1 one\r\n2 two\r\n.\r\n".to_vec(),
                ("LIST", _) => {
                    format!("+OK\r\n1 {}\r\n2 {}\r\n.\r\n", msgs[0].len(), msgs[1].len())
                        .into_bytes()
                }
                ("RETR", Some(n)) if (1..=msgs.len()).contains(&n) => {
                    let mut v = format!("+OK {} octets\r\n", msgs[n - 1].len()).into_bytes();
                    v.extend(stuffed(&msgs[n - 1]));
                    v
                }
                ("QUIT", _) => {
                    let _ = events.send("QUIT".to_string());
                    s.write_all(b"+OK bye\r\n")?;
                    s.conn.send_close_notify();
                    return s.flush();
                }
                _ => b"-ERR what\r\n".to_vec(),
            };
            s.write_all(&reply)?;
        }
        Ok(())
    }

    fn user() -> User {
        User {
            name: "u".into(),
            password: "p".into(),
        }
    }

    fn cfg(addr: SocketAddr, tls: TlsClient) -> SessionCfg {
        SessionCfg {
            addr,
            timeout: Duration::from_secs(20),
            mode: Mode::Full,
            dele: false,
            sample: 1.0,
            top_lines: 0,
            buf_size: 8192,
            auth: Auth::User,
            tls: Some(tls),
        }
    }

    /// Runs `sessions` full-download sessions one after another with one shared client.
    fn full_sessions(
        mode: TlsMode,
        verify: Verify<'_>,
        resume: bool,
        pki: &Pki,
        sessions: usize,
    ) -> Counters {
        let (addr, events) = serve(pki, mode, sessions, false);
        let tls = TlsClient::new(mode, verify, "localhost", resume).unwrap();
        let cfg = cfg(addr, tls);
        let counters = Counters::default();
        let mut rng = rand::rngs::mock::StepRng::new(0, 1);
        for _ in 0..sessions {
            crate::loadgen::block_on(session::run(&cfg, &user(), &mut rng, &counters)).unwrap();
            assert_eq!(events.recv().unwrap(), "QUIT");
        }
        counters
    }

    fn expected_octets() -> u64 {
        messages().iter().map(|m| m.len() as u64).sum()
    }

    #[test]
    fn implicit_tls_full_download_verifies_octets_and_resumes() {
        let pki = pki();
        let c = full_sessions(TlsMode::Implicit, Verify::Ca(&pki.ca), true, &pki, 3).snapshot();
        assert_eq!((c.messages, c.bytes), (6, 3 * expected_octets()));
        assert_eq!(c.tls_handshakes, 3);
        // The first handshake is a full one; the session cache makes the others resume.
        assert_eq!(c.tls_resumed, 2);
    }

    #[test]
    fn each_user_resumes_only_its_own_sessions() {
        let pki = pki();
        let (addr, events) = serve(&pki, TlsMode::Implicit, 4, false);
        let tls = TlsClient::new(TlsMode::Implicit, Verify::Ca(&pki.ca), "localhost", true);
        let cfg = cfg(addr, tls.unwrap());
        let counters = Counters::default();
        let mut rng = rand::rngs::mock::StepRng::new(0, 1);
        let other = User {
            name: "v".into(),
            password: "p".into(),
        };
        // u, v, u, v: each user's first handshake is a full one although the other user
        // has tickets by then; each user's second one resumes.
        let mut resumed = Vec::new();
        for u in [user(), other.clone(), user(), other] {
            let before = counters.snapshot().tls_resumed;
            crate::loadgen::block_on(session::run(&cfg, &u, &mut rng, &counters)).unwrap();
            assert_eq!(events.recv().unwrap(), "QUIT");
            resumed.push(counters.snapshot().tls_resumed - before);
        }
        assert_eq!(resumed, [0, 0, 1, 1]);
    }

    #[test]
    fn starttls_full_download_verifies_octets() {
        let pki = pki();
        let c = full_sessions(TlsMode::StartTls, Verify::Ca(&pki.ca), true, &pki, 2).snapshot();
        assert_eq!((c.messages, c.bytes), (4, 2 * expected_octets()));
        assert_eq!((c.tls_handshakes, c.tls_resumed), (2, 1));
    }

    #[test]
    fn no_resume_makes_full_handshakes() {
        let pki = pki();
        let c = full_sessions(TlsMode::Implicit, Verify::Ca(&pki.ca), false, &pki, 2).snapshot();
        assert_eq!((c.tls_handshakes, c.tls_resumed), (2, 0));
        let c = full_sessions(TlsMode::StartTls, Verify::Insecure, false, &pki, 2).snapshot();
        assert_eq!((c.tls_handshakes, c.tls_resumed), (2, 0));
    }

    #[test]
    fn insecure_accepts_a_certificate_no_ca_vouches_for() {
        let pki = pki();
        let c = full_sessions(TlsMode::Implicit, Verify::Insecure, true, &pki, 1).snapshot();
        assert_eq!(c.bytes, expected_octets());
    }

    fn open_err(pki: &Pki, mode: TlsMode, tls: TlsClient, refuse_stls: bool) -> SessionError {
        let (addr, _events) = serve(pki, mode, 1, refuse_stls);
        match crate::loadgen::block_on(Conn::open(
            addr,
            None,
            Duration::from_secs(20),
            4096,
            Some(&tls),
        )) {
            Ok(_) => panic!("connection with {tls:?} succeeded"),
            Err(e) => e,
        }
    }

    #[test]
    fn wrong_ca_or_name_fails_the_handshake() {
        let pki = pki();
        for mode in [TlsMode::Implicit, TlsMode::StartTls] {
            let tls = TlsClient::new(mode, Verify::Ca(&pki.other_ca), "localhost", true).unwrap();
            let e = open_err(&pki, mode, tls, false);
            assert_eq!(e.kind, ErrorKind::Tls, "{}", e.detail);
            assert!(e.detail.contains("certificate"), "{}", e.detail);

            let tls = TlsClient::new(mode, Verify::Ca(&pki.ca), "pop.example.org", true).unwrap();
            let e = open_err(&pki, mode, tls, false);
            assert_eq!(e.kind, ErrorKind::Tls, "{}", e.detail);
        }
    }

    #[test]
    fn refused_stls_is_a_tls_error() {
        let pki = pki();
        let tls =
            TlsClient::new(TlsMode::StartTls, Verify::Ca(&pki.ca), "localhost", true).unwrap();
        let e = open_err(&pki, TlsMode::StartTls, tls, true);
        assert_eq!(e.kind, ErrorKind::Tls);
        assert!(e.detail.contains("not today"), "{}", e.detail);
    }

    #[test]
    fn bad_ca_file_and_name_are_refused_up_front() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(TlsClient::new(TlsMode::Implicit, Verify::Ca(&empty), "localhost", true).is_err());
        assert!(TlsClient::new(TlsMode::Implicit, Verify::Insecure, "", true).is_err());
        assert!(TlsClient::new(TlsMode::Implicit, Verify::Insecure, "a b", true).is_err());
    }

    #[test]
    fn idle_connections_over_tls_stay_open_and_quit() {
        let pki = pki();
        for (mode, login) in [
            (TlsMode::Implicit, true),
            (TlsMode::StartTls, true),
            (TlsMode::StartTls, false),
        ] {
            let (addr, events) = serve(&pki, mode, 2, false);
            let cfg = IdleCfg {
                addr,
                timeout: Duration::from_secs(20),
                login: login.then_some(Auth::User),
                tls: Some(TlsClient::new(mode, Verify::Ca(&pki.ca), "localhost", true).unwrap()),
            };
            let log = ErrorLog::default();
            let opened = open_local(&cfg, &[user(), user()], 0, &log);
            assert_eq!(opened.streams.len(), 2, "{mode:?} login={login}");
            assert_eq!(close_all(opened.streams), 2, "{mode:?} login={login}");
            // QUIT arrived, encrypted, on both.
            for _ in 0..2 {
                assert_eq!(events.recv().unwrap(), "QUIT");
            }
        }
    }
}
