//! Authentication: who may log in, and as whom.
//!
//! # What this module owns
//!
//! - The [`Authenticator`] trait: the one question the runtime asks ("does this
//!   user with this credential get in, and what do we know about them?").
//! - [`PasswdFile`]: a Dovecot-compatible passwd-file
//!   (`user:password:uid:gid:gecos:home:shell:extra_fields`), parsed once into
//!   memory, with Dovecot's quirks (comment/`:` lines, first duplicate wins,
//!   `[NN]` libpam-pwdfile suffixes, the old "empty 8th field then mail" form,
//!   `userdb_mail=` and `nologin` extra fields).
//! - [`scheme`]: Dovecot password schemes (`{SHA512-CRYPT}`, `{BLF-CRYPT}`,
//!   `{ARGON2ID}`, `{SSHA512}`, `{PLAIN-MD5}`, `{CRAM-MD5}`, `{SCRAM-SHA-256}` …),
//!   verification in constant time and hashing like `doveadm pw`.
//! - [`validate_username`]: the gate every wire username passes first.
//! - [`Secret`]: password bytes that are never printed and are zeroed on drop.
//!
//! # What it deliberately does not do
//!
//! - No sockets, no async, no glommio, no clock. [`Authenticator::authenticate`]
//!   is blocking and may burn tens of milliseconds of CPU (bcrypt, argon2): the
//!   runtime must call it off the executor (a blocking thread pool).
//! - No I/O except reading the passwd-file in [`PasswdFile::load`]. Reloading on
//!   change (SIGHUP, mtime) is the runtime's job: load a new `PasswdFile` and
//!   swap it in.
//! - SASL: the mechanism state machines are the protocol's. This module does
//!   their cryptography: CRAM-MD5 digests ([`Credential::CramMd5`], from a
//!   plaintext-equivalent or a `{CRAM-MD5}` context), SCRAM secrets
//!   ([`Authenticator::scram_secret`], from `{SCRAM-SHA-*}` entries or derived
//!   from plaintext equivalents; stable fake ones for unknown users) and proof
//!   checks ([`Credential::Scram`]). For APOP the protocol hands over the
//!   greeting timestamp and the client digest as a [`Credential::Apop`].
//! - [`cache`]: the cache of successful password verifications, and
//!   [`penalty`]: the per-IP failure penalty table (pure: the clock is passed
//!   in; the runtime keeps one table per core and applies the delays).
//! - No `allow_nets`, `proxy`, `nopassword`, `userdb_uid`… semantics: those
//!   extra fields are kept, untouched, in [`UserInfo::extra`]. Only `nologin`
//!   (refuse) and `userdb_mail` ([`UserInfo::mail`]) are interpreted here.
//! - Never logs a password, a hash or a digest. Warnings name the user, the
//!   line number and the scheme, nothing more.
//!
//! # Timing
//!
//! A login for a user that does not exist costs about as much CPU as one for
//! a user that does: the presented password is verified against a hash of the
//! scheme most common in the file (or a fixed SHA512-CRYPT dummy) and the
//! result thrown away. Digest comparisons use the `subtle` crate.

pub mod cache;
mod passwd;
pub mod penalty;
pub mod scheme;
mod username;

use std::fmt;
use std::path::PathBuf;

use zeroize::Zeroize;

pub use cache::AuthCache;
pub use passwd::{
    ParseWarning, ParseWarningKind, PasswdEntry, PasswdError, PasswdFile, PasswdOptions,
};
pub use scheme::{SchemeError, ScramAlg, ScramSecret};
pub use username::{validate_username, BadUsername, MAX_USERNAME_LEN};

/// A secret (password bytes), as presented by a client.
///
/// Has no `Debug`/`Display`, so it cannot end up in a log line by accident,
/// and its buffer (including spare capacity) is overwritten with zeros when it
/// is dropped.
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wrap password bytes. The vector is moved, not copied.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    /// The password bytes. Do not copy them anywhere that outlives the check.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// What the client presented.
pub enum Credential {
    /// `USER`/`PASS` (or SASL PLAIN/LOGIN): the cleartext password.
    Plain(Secret),
    /// `APOP name digest`.
    ///
    /// `timestamp` is the banner timestamp exactly as sent in the greeting,
    /// angle brackets included (`<1896.697170952@dbc.mtview.ca.us>`);
    /// `digest_hex` is what the client sent: hex MD5(timestamp ‖ password),
    /// compared case-insensitively and in constant time. Works only for users
    /// whose stored password is plaintext-equivalent (`{PLAIN}` and friends).
    Apop {
        /// Greeting timestamp, including `<` and `>`.
        timestamp: String,
        /// Client digest, 32 hex digits.
        digest_hex: String,
    },
    /// SASL CRAM-MD5 (RFC 2195): hex HMAC-MD5(secret, challenge). Works for
    /// plaintext-equivalent and `{CRAM-MD5}` stored passwords.
    CramMd5 {
        /// The challenge sent to the client, `<…>` included.
        challenge: String,
        /// Client digest, 32 hex digits.
        digest_hex: String,
    },
    /// SASL SCRAM (RFC 5802): the client proof over the exchange's AuthMessage,
    /// checked against `secret`, which must be what
    /// [`Authenticator::scram_secret`] returned for the same user.
    Scram {
        secret: ScramSecret,
        auth_message: Vec<u8>,
        proof: Vec<u8>,
    },
}

impl fmt::Debug for Credential {
    /// Redacted: shows only which kind of credential it is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Plain(_) => f.write_str("Credential::Plain(<redacted>)"),
            Credential::Apop { .. } => f.write_str("Credential::Apop(<redacted>)"),
            Credential::CramMd5 { .. } => f.write_str("Credential::CramMd5(<redacted>)"),
            Credential::Scram { .. } => f.write_str("Credential::Scram(<redacted>)"),
        }
    }
}

/// Who logged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    /// Canonical name, as found in the passwd-file.
    pub user: String,
    /// passwd field 3; `None` if empty.
    pub uid: Option<u32>,
    /// passwd field 4; `None` if empty.
    pub gid: Option<u32>,
    /// passwd field 6; `None` if empty.
    pub home: Option<PathBuf>,
    /// From the extra field `userdb_mail=…` (overrides the server's mail
    /// location); may contain Dovecot `%` templates and `~`, unexpanded.
    pub mail: Option<String>,
    /// All other extra fields in file order, `key=value`; a bare key has an
    /// empty value. Keys are as written (`userdb_quota_rule`, `allow_nets`, …).
    pub extra: Vec<(String, String)>,
}

impl UserInfo {
    /// The value of the first extra field named `key` (exact match).
    pub fn extra_field(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The user's own RFC 2449 LOGIN-DELAY in seconds ([`login_delay_field`]).
    pub fn login_delay(&self) -> Option<u64> {
        login_delay_field(self.extra_field("login_delay"))
    }
}

/// The value of a `login_delay=N` extra field: seconds, or `None` when absent or not a
/// number (the configured delay then applies).
pub fn login_delay_field(value: Option<&str>) -> Option<u64> {
    value.and_then(|v| v.trim().parse().ok())
}

/// The answer to an authentication attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Credentials accepted.
    Ok(UserInfo),
    /// Wrong user, wrong password, refused user or unusable stored password.
    /// The client gets `-ERR [AUTH]`; the reason is never told apart.
    Failed,
    /// The backend could not answer (e.g. a database is down). The client
    /// gets `-ERR [SYS/TEMP]`. The string is for the server log only.
    TempFail(String),
}

/// Something that can check credentials.
///
/// Blocking and CPU-heavy (password hashing): the runtime calls it off the
/// async executor.
pub trait Authenticator: Send + Sync + 'static {
    /// Check `cred` for the login name `user` (as sent by the client).
    fn authenticate(&self, user: &str, cred: &Credential) -> AuthOutcome;

    /// The SCRAM secret (salt, iterations, StoredKey, ServerKey) for `user`. For unknown
    /// users, or users whose stored password cannot do SCRAM with `alg`, a fake secret that
    /// is the same on every call and costs comparable work, so the server-first message does
    /// not tell whether the user exists. The default: always the fake.
    fn scram_secret(&self, user: &str, alg: ScramAlg) -> ScramSecret {
        fake_scram_secret(user, alg)
    }

    /// Which challenge-response mechanisms every user with a password can use (so the
    /// server only advertises what works). The default: none.
    fn sasl_capabilities(&self) -> SaslCapabilities {
        SaslCapabilities::default()
    }

    /// Whether some user has a LOGIN-DELAY of their own (RFC 2449 §6.5: CAPA then tags the
    /// configured one `USER` before login). The default: no.
    fn login_delay_per_user(&self) -> bool {
        false
    }
}

/// Challenge-response mechanisms an [`Authenticator`] can serve for all its users.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SaslCapabilities {
    pub cram_md5: bool,
    pub scram_sha1: bool,
    pub scram_sha256: bool,
}

/// A random key made once per process: keys the auth cache and the fake SCRAM secrets.
pub(crate) fn process_key() -> &'static [u8; 32] {
    static KEY: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
    KEY.get_or_init(rand::random)
}

/// `SHA-256(process key ‖ label ‖ user)`: per-user values that are stable for the process
/// and unpredictable to clients.
pub(crate) fn keyed_hash(label: &[u8], user: &str) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(process_key());
    h.update((label.len() as u64).to_le_bytes());
    h.update(label);
    h.update(user.as_bytes());
    h.finalize().into()
}

/// The salt used when SCRAM keys are derived from a plaintext-equivalent password: stable
/// per user (so repeated attempts see the same salt, as for a stored SCRAM secret).
pub(crate) fn derived_scram_salt(user: &str) -> [u8; 16] {
    let h = keyed_hash(b"scram-salt", user);
    let mut salt = [0u8; 16];
    salt.copy_from_slice(&h[..16]);
    salt
}

/// A SCRAM secret for a user who cannot log in with SCRAM: derived from an unguessable
/// password with the same work as a real derivation.
pub fn fake_scram_secret(user: &str, alg: ScramAlg) -> ScramSecret {
    let pw = zeroize::Zeroizing::new(keyed_hash(b"scram-fake-password", user));
    scheme::scram_derive(
        alg,
        &pw[..],
        &derived_scram_salt(user),
        scheme::SCRAM_DERIVED_ITERATIONS,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_exposes_bytes() {
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(s.expose(), b"hunter2");
    }

    #[test]
    fn credential_debug_is_redacted() {
        let c = Credential::Plain(Secret::new(b"hunter2".to_vec()));
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let a = Credential::Apop {
            timestamp: "<1.2@host>".into(),
            digest_hex: "c4c9334bac560ecc979e58001b3e22fb".into(),
        };
        let shown = format!("{a:?}");
        assert!(!shown.contains("c4c9334b"), "{shown}");
    }

    #[test]
    fn user_info_extra_field_lookup() {
        let info = UserInfo {
            user: "a".into(),
            uid: None,
            gid: None,
            home: None,
            mail: None,
            extra: vec![
                ("allow_nets".into(), "10.0.0.0/8".into()),
                ("nodelay".into(), String::new()),
            ],
        };
        assert_eq!(info.extra_field("allow_nets"), Some("10.0.0.0/8"));
        assert_eq!(info.extra_field("nodelay"), Some(""));
        assert_eq!(info.extra_field("missing"), None);
    }

    // Compile-time check: the trait objects the runtime will hold are usable.
    #[allow(dead_code)]
    fn assert_object_safe(a: std::sync::Arc<dyn Authenticator>) -> AuthOutcome {
        a.authenticate("x", &Credential::Plain(Secret::new(Vec::new())))
    }
}
