//! Configuration: TOML → typed, validated [`Config`], passed explicitly (no globals).
//!
//! Owns: every setting, its default and unit, and validation with clear messages (unknown keys
//! and wrong types are refused, naming the key and line). Settings that weaken security carry
//! `insecure` in their name. `docs/configuration.md` documents every key and must match this
//! file.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub auth: Auth,
    pub mail: Mail,
    pub limits: Limits,
    pub log: Log,
    pub tls: Tls,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    /// Plaintext POP3 listeners (STLS is offered on them when `[tls]` has a certificate).
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS POP3 listeners (POP3S, usually port 995); need `[tls]` `cert` and `key`.
    pub listen_tls: Vec<SocketAddr>,
    /// Executor threads, one per core; 0 means one per online CPU.
    pub threads: usize,
    /// Host name used in the APOP timestamp; empty means the system host name.
    pub hostname: String,
    /// Greeting text after `+OK `.
    pub greeting: String,
    /// Offer APOP (a timestamp in the greeting). Works only for plaintext-equivalent passwords.
    pub apop: bool,
    /// Seconds sessions get to finish after SIGTERM/SIGINT before the process exits.
    pub shutdown_grace_secs: u64,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: vec!["0.0.0.0:110".parse().expect("valid")],
            listen_tls: Vec::new(),
            threads: 0,
            hostname: String::new(),
            greeting: "corepop ready.".into(),
            apop: true,
            shutdown_grace_secs: 30,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Dovecot-format passwd-file.
    pub passwd_file: PathBuf,
    /// Lower-case usernames before lookup (Dovecot 2.3's default `auth_username_format=%Lu`).
    pub lowercase_usernames: bool,
    /// Scheme of password fields without a `{SCHEME}` prefix.
    pub default_scheme: String,
    /// Accept MD5-based and DES password schemes (Dovecot 2.4 refuses them by default).
    pub allow_weak_schemes: bool,
    /// Delay before a failed-login reply, in milliseconds.
    pub failure_delay_ms: u64,
    /// Close the connection after this many failed logins (0: never).
    pub max_failures: u32,
    /// Allow USER/PASS on unencrypted non-loopback connections.
    pub insecure_plaintext_auth: bool,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            passwd_file: PathBuf::from("/etc/corepop/passwd"),
            lowercase_usernames: true,
            default_scheme: "CRYPT".into(),
            allow_weak_schemes: true,
            failure_delay_ms: 2000,
            max_failures: 3,
            insecure_plaintext_auth: false,
        }
    }
}

/// `[mail]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mail {
    /// Dovecot-style mail location template (`%u`, `%n`, `%d`, `%h`, `~`).
    pub location: String,
}

impl Default for Mail {
    fn default() -> Self {
        Self {
            location: "maildir:~/Maildir".into(),
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Idle seconds allowed before login.
    pub login_timeout_secs: u64,
    /// Idle seconds allowed after login (RFC 1939 requires at least 600).
    pub idle_timeout_secs: u64,
    /// Close after this many invalid commands (0: never).
    pub max_bad_commands: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            login_timeout_secs: 60,
            idle_timeout_secs: 600,
            max_bad_commands: 20,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    /// `tracing` filter: `error`, `warn`, `info`, `debug`, `trace` or a directive list.
    pub level: String,
}

impl Default for Log {
    fn default() -> Self {
        Self {
            level: "info".into(),
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain of the default certificate (leaf first).
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the default certificate.
    pub key: Option<PathBuf>,
    /// Further certificates, chosen by the name the client asks for (SNI).
    pub sni: Vec<SniCert>,
    /// Seconds a client gets to complete the TLS handshake.
    pub handshake_timeout_secs: u64,
}

impl Default for Tls {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            sni: Vec::new(),
            handshake_timeout_secs: 10,
        }
    }
}

impl Tls {
    /// True when a default certificate is configured (TLS is on).
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

/// `[[tls.sni]]`: a certificate served when the client's SNI name is `name`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCert {
    /// Host name, e.g. `pop.example.org`, or a wildcard `*.example.org` (one label).
    pub name: String,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.server.listen.is_empty() && self.server.listen_tls.is_empty() {
            return bad("server.listen: at least one listener is needed".into());
        }
        let tls = &self.tls;
        if tls.cert.is_some() != tls.key.is_some() {
            return bad("tls.cert and tls.key must be set together".into());
        }
        if !self.server.listen_tls.is_empty() && !tls.enabled() {
            return bad("server.listen_tls needs a certificate: set tls.cert and tls.key".into());
        }
        if !tls.sni.is_empty() && !tls.enabled() {
            return bad("tls.sni needs a default certificate: set tls.cert and tls.key".into());
        }
        for s in &tls.sni {
            if s.name.is_empty() || s.name.contains(char::is_whitespace) {
                return bad(format!("tls.sni: invalid name {:?}", s.name));
            }
        }
        if tls.handshake_timeout_secs == 0 {
            return bad("tls.handshake_timeout_secs must be at least 1".into());
        }
        if let Err(e) = crate::mailbox::location::validate(&self.mail.location) {
            return bad(format!("mail.location: {e}"));
        }
        if self.limits.idle_timeout_secs < 600 {
            return bad(format!(
                "limits.idle_timeout_secs = {}: RFC 1939 requires at least 600",
                self.limits.idle_timeout_secs
            ));
        }
        if self.limits.login_timeout_secs == 0 {
            return bad("limits.login_timeout_secs must be at least 1".into());
        }
        if self.server.greeting.contains(['\r', '\n']) || self.server.greeting.len() > 200 {
            return bad("server.greeting must be one line of at most 200 characters".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_types_are_named() {
        let e = toml::from_str::<Config>("[auth]\npasswd_fil = \"x\"\n").unwrap_err();
        assert!(e.to_string().contains("passwd_fil"), "{e}");
        let e = toml::from_str::<Config>("[limits]\nidle_timeout_secs = \"ten\"\n").unwrap_err();
        assert!(e.to_string().contains("idle_timeout_secs"), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn tls_section_and_validation() {
        let c: Config = toml::from_str(
            "[server]\nlisten_tls = [\"127.0.0.1:995\"]\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n\
             [[tls.sni]]\nname = \"pop.example.org\"\ncert = \"c2.pem\"\nkey = \"k2.pem\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.tls.handshake_timeout_secs, 10);
        assert_eq!(c.tls.sni[0].name, "pop.example.org");
        let c: Config = toml::from_str("[server]\nlisten_tls = [\"127.0.0.1:995\"]\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("listen_tls"), "{e}");
        let c: Config = toml::from_str("[tls]\ncert = \"c.pem\"\n").unwrap();
        assert!(c.validate().is_err());
        let e = toml::from_str::<Config>("[[tls.sni]]\nname = \"a\"\ncert = \"c\"\n").unwrap_err();
        assert!(e.to_string().contains("key"), "{e}");
    }

    #[test]
    fn rfc_minimum_idle_timeout() {
        let c: Config = toml::from_str("[limits]\nidle_timeout_secs = 30\n").unwrap();
        assert!(c.validate().is_err());
    }
}
