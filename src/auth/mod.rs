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
//! - No failed-login throttling or per-IP penalties (runtime), no SASL
//!   mechanism state machines (protocol). For APOP the protocol hands over the
//!   greeting timestamp and the client digest as a [`Credential::Apop`].
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

mod passwd;
pub mod scheme;
mod username;

use std::fmt;
use std::path::PathBuf;

use zeroize::Zeroize;

pub use passwd::{
    ParseWarning, ParseWarningKind, PasswdEntry, PasswdError, PasswdFile, PasswdOptions,
};
pub use scheme::SchemeError;
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
}

impl fmt::Debug for Credential {
    /// Redacted: shows only which kind of credential it is.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Plain(_) => f.write_str("Credential::Plain(<redacted>)"),
            Credential::Apop { .. } => f.write_str("Credential::Apop(<redacted>)"),
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
