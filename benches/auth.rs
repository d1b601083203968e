//! Authentication and TLS costs.
//!
//! `cargo bench --bench auth` runs:
//! - criterion group `login`: one password verification through the passwd-file
//!   [`Authenticator`] for ARGON2ID (Dovecot's default m=64 MiB, t=3, p=1) and SHA512-CRYPT
//!   (5000 rounds) entries, without and with the auth cache (a polling client's second login);
//!   plus the SASL crypto (SCRAM proof check, SCRAM key derivation from a plaintext entry,
//!   CRAM-MD5).
//! - a TLS harness against the real binary (one executor, `--threads 1`): full TLS 1.3
//!   handshakes per second (no resumption, sequential, ECDSA P-256 certificate) and TLS RETR
//!   throughput of a 10 MiB wire-clean message, median of several runs. The client runs in
//!   this process on another core where one is free.
//!
//! `cargo bench --bench auth -- login` runs only the criterion part; `COREPOP_BENCH_TLS=0`
//! skips the TLS part.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corepop::auth::scheme::{self, ScramAlg};
use corepop::auth::{
    AuthCache, AuthOutcome, Authenticator, Credential, PasswdFile, PasswdOptions, Secret,
};
use criterion::Criterion;

fn plain(pw: &str) -> Credential {
    Credential::Plain(Secret::new(pw.as_bytes().to_vec()))
}

fn login_benches(c: &mut Criterion) {
    let argon = scheme::hash("ARGON2ID", b"pencil").unwrap();
    let sha = scheme::hash("SHA512-CRYPT", b"pencil").unwrap();
    let text = format!("argon:{argon}\nsha:{sha}\nplain:{{PLAIN}}pencil\n");
    let uncached = PasswdFile::parse(&text, PasswdOptions::default());
    let mut cached = PasswdFile::parse(&text, PasswdOptions::default());
    cached.set_cache(Arc::new(
        AuthCache::new(Duration::from_secs(300), 10_000).unwrap(),
    ));
    for u in ["argon", "sha"] {
        assert!(matches!(
            cached.authenticate(u, &plain("pencil")),
            AuthOutcome::Ok(_)
        ));
    }
    let mut g = c.benchmark_group("login");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    for (user, label) in [("argon", "ARGON2ID"), ("sha", "SHA512-CRYPT")] {
        g.bench_function(format!("{label}/no_cache"), |b| {
            b.iter(|| uncached.authenticate(user, &plain("pencil")))
        });
        g.bench_function(format!("{label}/cache_hit"), |b| {
            b.iter(|| cached.authenticate(user, &plain("pencil")))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("sasl");
    g.sample_size(20);
    let salt = [7u8; 16];
    let secret = scheme::scram_derive(ScramAlg::Sha256, b"pencil", &salt, 4096);
    let am = b"n=user,r=abc,r=abcdef,s=BwcHBwcHBwcHBwcHBwcHBw==,i=4096,c=biws,r=abcdef";
    let proof = scheme::scram_client_proof(ScramAlg::Sha256, b"pencil", &salt, 4096, am);
    g.bench_function("SCRAM-SHA-256/verify_proof", |b| {
        b.iter(|| scheme::scram_verify_proof(&secret, am, &proof))
    });
    g.bench_function("SCRAM-SHA-256/derive_from_plaintext_4096", |b| {
        b.iter(|| uncached.scram_secret("plain", ScramAlg::Sha256))
    });
    let digest = scheme::cram_md5_digest(b"pencil", "<1.2@host>");
    g.bench_function("CRAM-MD5/verify", |b| {
        b.iter(|| {
            uncached.authenticate(
                "plain",
                &Credential::CramMd5 {
                    challenge: "<1.2@host>".into(),
                    digest_hex: digest.clone(),
                },
            )
        })
    });
    g.finish();
}

// ------------------------------------------------------------------------------------- TLS

struct ServerProc {
    child: std::process::Child,
    tls: SocketAddr,
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn make_cert(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, "bench CA");
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = p.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.as_ref().pem()).unwrap();
}

fn start_server(dir: &Path) -> ServerProc {
    make_cert(dir);
    std::fs::write(dir.join("passwd"), "bench:{PLAIN}pencil::::::\n").unwrap();
    let md = dir.join("mail/bench/Maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    // 10 MiB, CRLF, no dot lines: sent from the mapping through rustls.
    let line = format!("{}\r\n", "x".repeat(78));
    let mut msg = b"Subject: bench\r\n\r\n".to_vec();
    while msg.len() < 10 << 20 {
        msg.extend_from_slice(line.as_bytes());
    }
    std::fs::write(md.join("new/1700000000.M1P1.bench"), &msg).unwrap();
    let cfg = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nlisten_tls = [\"127.0.0.1:0\"]\nthreads = 1\n\
         [auth]\npasswd_file = \"{}\"\nfailure_delay_ms = 0\n\
         [mail]\nlocation = \"maildir:{}/mail/%u/Maildir\"\n\
         [tls]\ncert = \"{}\"\nkey = \"{}\"\n[log]\nlevel = \"warn\"\n",
        dir.join("passwd").display(),
        dir.display(),
        dir.join("cert.pem").display(),
        dir.join("key.pem").display()
    );
    std::fs::write(dir.join("corepop.toml"), cfg).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_corepop"))
        .args(["serve", "--config"])
        .arg(dir.join("corepop.toml"))
        .env("COREPOP_ALLOW_ROOT", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start corepop");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut tls = None;
    for _ in 0..4 {
        let mut l = String::new();
        if out.read_line(&mut l).unwrap() == 0 {
            break;
        }
        if let Some(a) = l.trim().strip_suffix(" (tls)") {
            tls = Some(a.rsplit(' ').next().unwrap().parse().unwrap());
            break;
        }
    }
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut out, &mut std::io::sink());
    });
    ServerProc {
        child,
        tls: tls.expect("TLS listener"),
    }
}

fn client_config(dir: &Path) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(dir.join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn connect(addr: SocketAddr, cfg: &Arc<rustls::ClientConfig>) -> BufReader<Tls> {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_nodelay(true).unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut s = BufReader::with_capacity(256 << 10, rustls::StreamOwned::new(conn, sock));
    let mut greeting = String::new();
    s.read_line(&mut greeting).unwrap();
    assert!(greeting.starts_with("+OK"), "{greeting}");
    s
}

fn cmd(s: &mut BufReader<Tls>, line: &str) -> String {
    s.get_mut()
        .write_all(format!("{line}\r\n").as_bytes())
        .unwrap();
    s.get_mut().flush().unwrap();
    let mut r = String::new();
    s.read_line(&mut r).unwrap();
    r
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn tls_bench() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path());
    let cfg = client_config(dir.path());
    // Warm-up.
    for _ in 0..20 {
        drop(connect(server.tls, &cfg));
    }
    let mut rates = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let mut n = 0u32;
        while t.elapsed() < Duration::from_secs(2) {
            let mut s = connect(server.tls, &cfg);
            let _ = cmd(&mut s, "QUIT");
            n += 1;
        }
        rates.push(f64::from(n) / t.elapsed().as_secs_f64());
    }
    println!(
        "tls/handshakes_per_sec (1 server core, full TLS 1.3 handshake + greeting + QUIT, sequential): median {:.0} /s  (runs: {:?})",
        median(rates.clone()),
        rates.iter().map(|r| r.round()).collect::<Vec<_>>()
    );

    let mut s = connect(server.tls, &cfg);
    assert!(cmd(&mut s, "USER bench").starts_with("+OK"));
    assert!(cmd(&mut s, "PASS pencil").starts_with("+OK"));
    let mut rates = Vec::new();
    let mut buf = vec![0u8; 256 << 10];
    for run in 0..7 {
        let t = Instant::now();
        let mut bytes = 0usize;
        for _ in 0..5 {
            let status = cmd(&mut s, "RETR 1");
            assert!(status.starts_with("+OK"), "{status}");
            let mut tail = Vec::new();
            loop {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "EOF during RETR");
                bytes += n;
                tail.extend_from_slice(&buf[n.saturating_sub(5)..n]);
                if tail.len() > 5 {
                    tail.drain(..tail.len() - 5);
                }
                if tail.ends_with(b"\r\n.\r\n") {
                    break;
                }
            }
        }
        if run > 0 {
            rates.push(bytes as f64 / t.elapsed().as_secs_f64() / 1e6);
        }
    }
    println!(
        "tls/retr_10MiB: median {:.0} MB/s  (runs: {:?})",
        median(rates.clone()),
        rates.iter().map(|r| r.round()).collect::<Vec<_>>()
    );
    let _ = cmd(&mut s, "QUIT");
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    login_benches(&mut c);
    c.final_summary();
    let filtered = std::env::args().skip(1).any(|a| !a.starts_with('-'));
    if std::env::var("COREPOP_BENCH_TLS").as_deref() != Ok("0") && !filtered {
        tls_bench();
    }
}
