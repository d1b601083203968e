//! Configuration: TOML → typed, validated [`Config`], passed explicitly (no globals).
//!
//! Owns: every setting, its default and unit, and validation with clear messages (unknown keys
//! and wrong types are refused, naming the key and line). Settings that weaken security carry
//! `insecure` in their name. `docs/configuration.md` documents every key and must match this
//! file.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: Server,
    pub auth: Auth,
    pub mail: Mail,
    pub limits: Limits,
    pub log: Log,
    pub tls: Tls,
    pub admin: Admin,
    pub proxy: Proxy,
    pub privileges: Privileges,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Advertised in CAPA as `EXPIRE` (RFC 2449): `"NEVER"` or a number of days.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expire: Option<Expire>,
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
            expire: None,
        }
    }
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize, Serialize)]
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
    /// Penalty after the first failed login from an address, in milliseconds; it doubles
    /// with each further failure up to `failure_delay_max_ms` (0 disables penalties).
    pub failure_delay_ms: u64,
    /// Largest per-address penalty, in milliseconds.
    pub failure_delay_max_ms: u64,
    /// Quiet seconds after which an address's failures are forgotten.
    pub penalty_reset_secs: u64,
    /// Close the connection after this many failed logins (0: never).
    pub max_failures: u32,
    /// Allow USER/PASS (and SASL PLAIN/LOGIN) on unencrypted non-loopback connections.
    pub insecure_plaintext_auth: bool,
    /// SASL mechanisms to offer; empty means automatic (PLAIN and LOGIN, plus CRAM-MD5 and
    /// SCRAM-SHA-1/-256 when every user's stored password supports them).
    pub mechanisms: Vec<String>,
    /// Seconds a successful password verification is remembered (0 disables the cache).
    pub cache_ttl_secs: u64,
    /// Most verifications remembered.
    pub cache_size: usize,
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            passwd_file: PathBuf::from("/etc/corepop/passwd"),
            lowercase_usernames: true,
            default_scheme: "CRYPT".into(),
            allow_weak_schemes: true,
            failure_delay_ms: 2000,
            failure_delay_max_ms: 15_000,
            penalty_reset_secs: 300,
            max_failures: 3,
            insecure_plaintext_auth: false,
            mechanisms: Vec::new(),
            cache_ttl_secs: 300,
            cache_size: 10_000,
        }
    }
}

/// `[mail]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mail {
    /// Dovecot-style mail location template (`%u`, `%n`, `%d`, `%h`, `~`).
    pub location: String,
    /// UIDL format in Dovecot's `pop3_uidl_format` syntax (`%u`, `%v`, `%f`, `%g`, `%m`,
    /// `%08Xu`-style modifiers). Empty (the default) means automatic: `%08Xu%08Xv` for a
    /// Maildir with a `dovecot-uidlist`, Courier's UIDLs where `courierpop3dsizelist` lists
    /// the message, otherwise `%f` (the Maildir base name).
    pub uidl_format: String,
    /// Maildirs whose index is kept in memory while no session uses them.
    pub index_cache_size: usize,
    /// Octets from which a message already in wire form is sent from a mapping of its file
    /// (made on the blocking pool) instead of read and copied on the executor.
    pub map_min_size: u64,
}

impl Default for Mail {
    fn default() -> Self {
        Self {
            location: "maildir:~/Maildir".into(),
            uidl_format: String::new(),
            index_cache_size: 4096,
            map_min_size: 256 * 1024,
        }
    }
}

impl Mail {
    /// The mailbox loading options these settings give (the format is validated).
    pub fn load_options(&self) -> Result<crate::mailbox::LoadOptions, ConfigError> {
        let uidl_format = if self.uidl_format.is_empty() {
            None
        } else {
            Some(
                crate::mailbox::UidlFormat::parse(&self.uidl_format)
                    .map_err(|e| ConfigError::Invalid(format!("mail.uidl_format: {e}")))?,
            )
        };
        Ok(crate::mailbox::LoadOptions { uidl_format })
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Idle seconds allowed before login.
    pub login_timeout_secs: u64,
    /// Seconds from connect until login must have succeeded, however active the client is
    /// (a client trickling valid commands cannot hold an unauthenticated connection forever).
    pub login_deadline_secs: u64,
    /// Idle seconds allowed after login (RFC 1939 requires at least 600).
    pub idle_timeout_secs: u64,
    /// Close after this many invalid commands (0: never).
    pub max_bad_commands: u32,
    /// Connections open at once, all listeners and cores together (0: no limit).
    pub max_connections: u32,
    /// Connections open at once from one client address (0: no limit).
    pub max_connections_per_ip: u32,
    /// Logged-in sessions of one user at once (0: no limit).
    pub max_connections_per_user: u32,
    /// RFC 2449 LOGIN-DELAY: seconds between two logins of one user (0: none). Advertised in
    /// CAPA; a passwd-file extra field `login_delay=N` overrides it per user.
    pub login_delay_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            login_timeout_secs: 60,
            login_deadline_secs: 180,
            idle_timeout_secs: 600,
            max_bad_commands: 20,
            max_connections: 0,
            max_connections_per_ip: 0,
            max_connections_per_user: 0,
            login_delay_secs: 0,
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SniCert {
    /// Host name, e.g. `pop.example.org`, or a wildcard `*.example.org` (one label).
    pub name: String,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Checks that a `[[tls.sni]]` name is one a client can send (RFC 6066: a DNS host name, no
/// IP address) or a wildcard `*.` followed by one; `Err` says why not.
fn check_sni_name(name: &str) -> Result<(), &'static str> {
    let host = name.trim_end_matches('.');
    let rest = host.strip_prefix("*.").unwrap_or(host);
    if rest.parse::<IpAddr>().is_ok() {
        return Err("is an IP address; clients send only host names in SNI");
    }
    if rest.contains('*') {
        return Err("is not a host name: `*` may only be a whole first label (`*.example.org`)");
    }
    if rustls_pki_types::DnsName::try_from(rest).is_err() {
        return Err("is not a host name");
    }
    Ok(())
}

/// `server.expire`: what CAPA's `EXPIRE` says (RFC 2449 §6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "ExpireRepr", into = "ExpireRepr")]
pub enum Expire {
    /// `EXPIRE NEVER`: messages are never deleted by the server.
    Never,
    /// `EXPIRE n`: messages may be deleted `n` days after their first retrieval.
    Days(u32),
}

#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum ExpireRepr {
    Days(u32),
    Word(String),
}

impl TryFrom<ExpireRepr> for Expire {
    type Error = String;
    fn try_from(r: ExpireRepr) -> Result<Self, String> {
        match r {
            ExpireRepr::Days(d) => Ok(Expire::Days(d)),
            ExpireRepr::Word(w) if w.eq_ignore_ascii_case("never") => Ok(Expire::Never),
            ExpireRepr::Word(w) => {
                Err(format!("expected \"NEVER\" or a number of days, got {w:?}"))
            }
        }
    }
}

impl From<Expire> for ExpireRepr {
    fn from(e: Expire) -> Self {
        match e {
            Expire::Never => ExpireRepr::Word("NEVER".into()),
            Expire::Days(d) => ExpireRepr::Days(d),
        }
    }
}

impl Expire {
    /// The CAPA argument: `NEVER` or the number of days.
    pub fn capa_value(&self) -> String {
        match self {
            Expire::Never => "NEVER".into(),
            Expire::Days(d) => d.to_string(),
        }
    }
}

/// `[admin]`: the administration listener (Prometheus metrics).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Address of the plain-HTTP admin listener serving `GET /metrics`; none: no listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

/// `[proxy]`: listeners behind a load balancer speaking the HAProxy PROXY protocol.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Proxy {
    /// Plaintext POP3 listeners that expect a PROXY v1/v2 header first.
    pub listen: Vec<SocketAddr>,
    /// Implicit-TLS listeners that expect a PROXY header before the TLS handshake.
    pub listen_tls: Vec<SocketAddr>,
    /// Networks (`10.0.0.0/8`, `::1`, …) allowed to send a PROXY header; connections from
    /// elsewhere to a PROXY listener are closed.
    pub trusted_networks: Vec<Cidr>,
    /// Seconds a trusted peer gets to send the complete header.
    pub header_timeout_secs: u64,
    /// Allow USER/PASS and SASL PLAIN/LOGIN on the plaintext PROXY listeners whatever the
    /// client's address: the proxy in front terminates TLS and refuses plaintext passwords
    /// from its clients itself (nginx `mail` with `starttls only` or `ssl` listeners, which
    /// always talks USER/PASS to its back end). Off: the client address from the header
    /// decides, as on any plaintext listener.
    pub plaintext_auth: bool,
}

impl Default for Proxy {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            listen_tls: Vec::new(),
            trusted_networks: Vec::new(),
            header_timeout_secs: 5,
            plaintext_auth: false,
        }
    }
}

/// `[privileges]`: whom to serve as.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Privileges {
    /// After binding the listeners, switch to this user (e.g. `vmail`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group to switch to; default: the user's primary group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Serve as root when started as root and no `user` is set (same as `--allow-root`).
    pub allow_root: bool,
}

/// An IP network in CIDR notation (`192.0.2.0/24`, `2001:db8::/32`) or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        format!("{}/{}", c.addr, c.prefix)
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an address or network (a.b.c.d/n, x::y/n)");
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// True when `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
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
        if self.server.listen.is_empty()
            && self.server.listen_tls.is_empty()
            && self.proxy.listen.is_empty()
            && self.proxy.listen_tls.is_empty()
        {
            return bad("server.listen: at least one listener is needed".into());
        }
        let proxied = !self.proxy.listen.is_empty() || !self.proxy.listen_tls.is_empty();
        if proxied && self.proxy.trusted_networks.is_empty() {
            return bad(
                "proxy.listen needs proxy.trusted_networks (who may send PROXY headers)".into(),
            );
        }
        if !self.proxy.listen_tls.is_empty() && !self.tls.enabled() {
            return bad("proxy.listen_tls needs a certificate: set tls.cert and tls.key".into());
        }
        if self.proxy.header_timeout_secs == 0 {
            return bad("proxy.header_timeout_secs must be at least 1".into());
        }
        if self.privileges.group.is_some() && self.privileges.user.is_none() {
            return bad("privileges.group needs privileges.user".into());
        }
        if self.privileges.user.as_deref() == Some("") {
            return bad("privileges.user must not be empty".into());
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
        let mut sni_names = std::collections::HashSet::new();
        for s in &tls.sni {
            if let Err(why) = check_sni_name(&s.name) {
                return bad(format!("tls.sni: name {:?} {why}", s.name));
            }
            if !sni_names.insert(s.name.trim_end_matches('.').to_ascii_lowercase()) {
                return bad(format!("tls.sni: name {:?} is listed twice", s.name));
            }
        }
        for m in &self.auth.mechanisms {
            if crate::protocol::Mechanism::from_name(m).is_none() {
                return bad(format!(
                    "auth.mechanisms: unknown mechanism {m:?} (supported: PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-1, SCRAM-SHA-256)"
                ));
            }
        }
        if self.auth.failure_delay_ms > 0 && self.auth.penalty_reset_secs == 0 {
            return bad("auth.penalty_reset_secs must be at least 1".into());
        }
        if tls.handshake_timeout_secs == 0 {
            return bad("tls.handshake_timeout_secs must be at least 1".into());
        }
        if let Err(e) = crate::mailbox::location::validate(&self.mail.location) {
            return bad(format!("mail.location: {e}"));
        }
        self.mail.load_options()?;
        if self.limits.idle_timeout_secs < 600 {
            return bad(format!(
                "limits.idle_timeout_secs = {}: RFC 1939 requires at least 600",
                self.limits.idle_timeout_secs
            ));
        }
        if self.limits.login_timeout_secs == 0 {
            return bad("limits.login_timeout_secs must be at least 1".into());
        }
        if self.limits.login_deadline_secs < self.limits.login_timeout_secs {
            return bad(format!(
                "limits.login_deadline_secs = {} must be at least limits.login_timeout_secs = {}",
                self.limits.login_deadline_secs, self.limits.login_timeout_secs
            ));
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

    /// SNI names that no client can send would silently never match (the default
    /// certificate is served instead): refused at start-up, as is a name listed twice.
    #[test]
    fn sni_names_that_cannot_match_are_refused() {
        let with = |names: &[&str]| -> Result<(), String> {
            let mut t = String::from("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n");
            for n in names {
                t.push_str(&format!(
                    "[[tls.sni]]\nname = \"{n}\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n"
                ));
            }
            let c: Config = toml::from_str(&t).unwrap();
            c.validate().map_err(|e| e.to_string())
        };
        for ok in [
            "pop.example.org",
            "*.example.org",
            "POP.Example.ORG.",
            "localhost",
        ] {
            with(&[ok]).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "*example.org",
            "pop.*.example.org",
            "*",
            "*.",
            "192.0.2.1",
            "::1",
            "pop_3.example.org:995",
            "pop..example.org",
        ] {
            let e = with(&[bad]).expect_err(bad);
            assert!(e.contains("tls.sni") && e.contains(bad), "{bad}: {e}");
        }
        let e = with(&["pop.example.org", "POP.example.org."]).unwrap_err();
        assert!(e.contains("twice"), "{e}");
    }

    #[test]
    fn ops_sections() {
        let c: Config = toml::from_str(
            "[server]\nexpire = \"NEVER\"\n[limits]\nmax_connections_per_ip = 3\nlogin_delay_secs = 60\n\
             [admin]\nlisten = \"127.0.0.1:9110\"\n[proxy]\nlisten = [\"127.0.0.1:1110\"]\n\
             trusted_networks = [\"10.0.0.0/8\", \"::1\"]\n[privileges]\nuser = \"vmail\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.server.expire, Some(Expire::Never));
        assert!(c.proxy.trusted_networks[0].contains("10.1.2.3".parse().unwrap()));
        assert!(c.proxy.trusted_networks[0].contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.proxy.trusted_networks[0].contains("11.0.0.1".parse().unwrap()));
        assert!(c.proxy.trusted_networks[1].contains("::1".parse().unwrap()));
        assert!(
            !c.proxy.plaintext_auth,
            "plaintext passwords through a proxy: opt-in"
        );
        let c: Config = toml::from_str("[proxy]\nplaintext_auth = true\n").unwrap();
        assert!(c.proxy.plaintext_auth);
        let c: Config = toml::from_str("[server]\nexpire = 30\n").unwrap();
        assert_eq!(c.server.expire, Some(Expire::Days(30)));
        assert!(toml::from_str::<Config>("[server]\nexpire = \"soon\"\n").is_err());
        let e = toml::from_str::<Config>("[proxy]\ntrusted_networks = [\"10.0.0.0/33\"]\n")
            .unwrap_err();
        assert!(e.to_string().contains("trusted_networks"), "{e}");
        // A PROXY listener without trusted networks is refused.
        let c: Config = toml::from_str("[proxy]\nlisten = [\"127.0.0.1:1\"]\n").unwrap();
        assert!(c.validate().is_err());
        // The effective configuration prints as TOML that reads back.
        let text = toml::to_string(&Config::default()).unwrap();
        toml::from_str::<Config>(&text).unwrap().validate().unwrap();
    }

    #[test]
    fn auth_section() {
        let c = Config::default();
        assert_eq!(c.auth.cache_ttl_secs, 300);
        assert_eq!(c.auth.failure_delay_max_ms, 15_000);
        let c: Config = toml::from_str(
            "[auth]\nmechanisms = [\"plain\", \"SCRAM-SHA-256\"]\ncache_ttl_secs = 0\n",
        )
        .unwrap();
        c.validate().unwrap();
        let c: Config = toml::from_str("[auth]\nmechanisms = [\"DIGEST-MD5\"]\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("DIGEST-MD5"), "{e}");
    }

    #[test]
    fn uidl_format_is_validated() {
        let c: Config = toml::from_str("[mail]\nuidl_format = \"%08Xu%08Xv\"\n").unwrap();
        c.validate().unwrap();
        assert!(c.mail.load_options().unwrap().uidl_format.is_some());
        let c: Config = toml::from_str("[mail]\nuidl_format = \"%q\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("mail.uidl_format"), "{e}");
        assert!(Config::default()
            .mail
            .load_options()
            .unwrap()
            .uidl_format
            .is_none());
    }

    #[test]
    fn rfc_minimum_idle_timeout() {
        let c: Config = toml::from_str("[limits]\nidle_timeout_secs = 30\n").unwrap();
        assert!(c.validate().is_err());
    }
}
