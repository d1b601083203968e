//! TLS: the one shared [`rustls::ServerConfig`] for implicit TLS (POP3S) and STLS.
//!
//! Owns: loading certificate chains and private keys from PEM files (with errors that name the
//! file), checking that each key matches its certificate, choosing a certificate by SNI (the
//! `[tls]` default when the client sends no name or an unknown one), protocol versions (TLS 1.2
//! and 1.3 only, ring provider), ALPN (`pop3` only: clients offering other protocols are
//! refused), session resumption (stateless tickets and a session cache), and the reloadable
//! holder the runtime reads a fresh config from for each new connection.
//!
//! Does not own: sockets, handshakes or timeouts (the runtime does those).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, Context as _};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config;

/// Reads a PEM certificate chain (leaf first).
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read certificate file {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("certificate file {}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!(
            "certificate file {}: no CERTIFICATE block found",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC; the first one in the file).
/// An encrypted (passphrase-protected) key is refused with a message saying so.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem =
        std::fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))?;
    let text = String::from_utf8_lossy(&pem);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || text.contains("Proc-Type: 4,ENCRYPTED")
    {
        return Err(anyhow!(
            "key file {p}: the key is encrypted (passphrase-protected), which corepop does not \
             support; write an unencrypted copy readable only by corepop's user: \
             openssl pkey -in {p} -out NEW.key",
            p = path.display()
        ));
    }
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            anyhow!("key file {}: no PRIVATE KEY block found", path.display())
        }
        e => anyhow!("key file {}: bad PEM: {e}", path.display()),
    })
}

/// Loads one certificate chain and its key, checking that they belong together.
pub fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = load_certs(cert)?;
    let der = load_key(key)?;
    // Loading the key and matching it are separate steps, so that a key rustls cannot sign
    // with is not reported as a mismatch with the certificate.
    let signing = provider.key_provider.load_private_key(der).map_err(|e| {
        anyhow!(
            "key file {}: unsupported private key ({e}); corepop uses RSA (2048 to 8192 bits), \
             ECDSA P-256 or P-384, and Ed25519 keys",
            key.display()
        )
    })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        anyhow!(
            "key file {} does not fit certificate file {} (the certificate for this key must \
             come first): {e}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(ck))
}

/// The ALPN protocol id of POP3 (IANA "TLS Application-Layer Protocol Negotiation (ALPN)
/// Protocol IDs" registry, RFC 7301).
pub const ALPN_POP3: &[u8] = b"pop3";

/// Chooses a certificate by the SNI name; the default one otherwise.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    /// Lower-case exact names, and wildcards stored as `*.rest`.
    names: HashMap<String, Arc<CertifiedKey>>,
}

impl SniResolver {
    fn lookup(&self, name: &str) -> Option<&Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(ck) = self.names.get(&name) {
            return Some(ck);
        }
        let (_, parent) = name.split_once('.')?;
        self.names.get(&format!("*.{parent}"))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let ck = hello
            .server_name()
            .and_then(|n| self.lookup(n))
            .unwrap_or(&self.default);
        Some(ck.clone())
    }
}

/// Builds the server configuration from `[tls]`; `None` when no certificate is configured.
pub fn server_config(cfg: &config::Tls) -> anyhow::Result<Option<Arc<ServerConfig>>> {
    Ok(build(cfg)?.map(Arc::new))
}

fn build(cfg: &config::Tls) -> anyhow::Result<Option<ServerConfig>> {
    let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
        return Ok(None);
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let default = load_certified_key(cert, key, &provider)?;
    let mut names = HashMap::new();
    for s in &cfg.sni {
        let ck = load_certified_key(&s.cert, &s.key, &provider)
            .with_context(|| format!("tls.sni name {:?}", s.name))?;
        names.insert(s.name.trim_end_matches('.').to_ascii_lowercase(), ck);
    }
    let mut sc = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { default, names }));
    sc.ticketer = rustls::crypto::ring::Ticketer::new().context("TLS session ticketer")?;
    // RFC 7301: a client offering only protocols we do not speak gets the fatal
    // `no_application_protocol` alert (rustls sends it); one offering none is served. This
    // stops cross-protocol attacks (ALPACA) that point an HTTPS client at port 995.
    sc.alpn_protocols = vec![ALPN_POP3.to_vec()];
    Ok(Some(sc))
}

/// The current server configuration, replaceable at run time (SIGHUP) without affecting
/// connections that already have one.
pub struct Reloadable {
    current: RwLock<Arc<ServerConfig>>,
}

impl Reloadable {
    pub fn new(sc: Arc<ServerConfig>) -> Self {
        Self {
            current: RwLock::new(sc),
        }
    }

    /// The configuration for a new handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reloads the files named by `cfg`; on error the old configuration stays. The session
    /// ticket keys and the session cache carry over: a reload (every SIGHUP, also one for
    /// the passwd-file) does not cost every client a full handshake.
    pub fn reload(&self, cfg: &config::Tls) -> anyhow::Result<()> {
        let mut sc = build(cfg)?.ok_or_else(|| anyhow!("no certificate configured"))?;
        let old = self.current();
        sc.ticketer = old.ticketer.clone();
        sc.session_storage = old.session_storage.clone();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(sc);
        Ok(())
    }
}

/// A new self-signed certificate and its key, as PEM (for `corepop demo` and tests).
pub fn self_signed_pem(names: &[&str]) -> anyhow::Result<(String, String)> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let ck = rcgen::generate_simple_self_signed(names).context("generating a certificate")?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(
        dir: &Path,
        tag: &str,
        names: &[&str],
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let (c, k) = self_signed_pem(names).unwrap();
        let (cp, kp) = (
            dir.join(format!("{tag}.crt")),
            dir.join(format!("{tag}.key")),
        );
        std::fs::write(&cp, c).unwrap();
        std::fs::write(&kp, k).unwrap();
        (cp, kp)
    }

    #[test]
    fn loads_and_names_files_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = write_pair(dir.path(), "a", &["localhost"]);
        let (c2, k2) = write_pair(dir.path(), "b", &["pop.example.org"]);
        let mut cfg = config::Tls {
            cert: Some(c1.clone()),
            key: Some(k1.clone()),
            ..Default::default()
        };
        assert!(server_config(&cfg).unwrap().is_some());
        assert!(server_config(&config::Tls::default()).unwrap().is_none());

        // Mismatched key.
        cfg.key = Some(k2.clone());
        let e = format!("{:#}", server_config(&cfg).unwrap_err());
        assert!(e.contains("does not fit") && e.contains("b.key"), "{e}");
        // Missing file.
        cfg.key = Some(dir.path().join("missing.key"));
        let e = format!("{:#}", server_config(&cfg).unwrap_err());
        assert!(e.contains("missing.key"), "{e}");
        // Key file given as certificate.
        cfg.cert = Some(k1.clone());
        cfg.key = Some(k1.clone());
        let e = format!("{:#}", server_config(&cfg).unwrap_err());
        assert!(e.contains("a.key") && e.contains("CERTIFICATE"), "{e}");
        // Certificate given as key.
        cfg.cert = Some(c1.clone());
        cfg.key = Some(c1.clone());
        let e = format!("{:#}", server_config(&cfg).unwrap_err());
        assert!(e.contains("a.crt") && e.contains("PRIVATE KEY"), "{e}");
        // A bad SNI entry names itself.
        cfg.key = Some(k1);
        cfg.sni = vec![config::SniCert {
            name: "pop.example.org".into(),
            cert: c2,
            key: dir.path().join("nope.key"),
        }];
        let e = format!("{:#}", server_config(&cfg).unwrap_err());
        assert!(
            e.contains("pop.example.org") && e.contains("nope.key"),
            "{e}"
        );
        let _ = k2;
    }

    #[test]
    fn sni_lookup() {
        let provider = rustls::crypto::ring::default_provider();
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "a", &["x"]);
        let ck = load_certified_key(&c, &k, &provider).unwrap();
        let (c2, k2) = write_pair(dir.path(), "b", &["y"]);
        let other = load_certified_key(&c2, &k2, &provider).unwrap();
        let mut names = HashMap::new();
        names.insert("pop.example.org".to_string(), other.clone());
        names.insert("*.example.net".to_string(), other.clone());
        let r = SniResolver { default: ck, names };
        assert!(r.lookup("POP.example.org.").is_some());
        assert!(r.lookup("a.example.net").is_some());
        assert!(r.lookup("a.b.example.net").is_none());
        assert!(r.lookup("example.org").is_none());
    }

    /// A P-521 key (SEC1, as `openssl ecparam -name secp521r1 -genkey -noout` writes it):
    /// valid PEM, but ring signs only with P-256/P-384.
    const P521_KEY: &str = "-----BEGIN EC PRIVATE KEY-----
MIHcAgEBBEIAQhis/9SttgRt17tAnfUYmhkS94eYdCTg3oVTsKZHIB9lb3gNLw5D
hGXekEqrBtVQwdHn3isVGdC6rvZDLxycnJigBwYFK4EEACOhgYkDgYYABADYRs+W
MRDt7UCv7w/GyPFsy49SSSadHGCxyW6NMki+T6otl7fzX8gOyLzPPnIdjGK/aZ4u
BhyeZqEB1o2HRLUzugARO9xDqOt2JrrJyLThCRNVeg7p8RMZextx3tUv6yfNTu1N
SdAW2FizOZyNolk5qLT8bxkpXCsEewG93Agw0QbAMA==
-----END EC PRIVATE KEY-----
";

    /// Keys corepop cannot use are named for what they are, not reported as a mismatch with
    /// the certificate (which sends the administrator looking at the wrong file).
    #[test]
    fn encrypted_and_unsupported_keys_say_so() {
        let provider = rustls::crypto::ring::default_provider();
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = write_pair(dir.path(), "a", &["localhost"]);
        let pem = std::fs::read_to_string(&k).unwrap();
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .join("\n");
        let check = |name: &str, text: String, want: &[&str]| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            let e = format!("{:#}", load_certified_key(&c, &p, &provider).unwrap_err());
            for w in want {
                assert!(e.contains(w), "{name}: {e}");
            }
            assert!(!e.contains("does not fit"), "{name}: {e}");
        };
        // PKCS#8 encrypted (openssl genpkey -aes256, Dovecot's ssl_key_password setups).
        check(
            "p8.key",
            format!("-----BEGIN ENCRYPTED PRIVATE KEY-----\n{body}\n-----END ENCRYPTED PRIVATE KEY-----\n"),
            &["p8.key", "encrypted"],
        );
        // Traditional OpenSSL encryption (openssl genrsa -aes256 -traditional).
        check(
            "trad.key",
            format!(
                "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                 DEK-Info: AES-256-CBC,A89E90AAC88BD080AFDB5BA0BDB71A92\n\n{body}\n\
                 -----END RSA PRIVATE KEY-----\n"
            ),
            &["trad.key", "encrypted"],
        );
        check(
            "p521.key",
            P521_KEY.into(),
            &["p521.key", "unsupported", "P-256"],
        );
    }
}
