//! Dovecot-compatible passwd-file: parsing, lookup, and the [`Authenticator`]
//! built on it.
//!
//! Format (one user per line):
//!
//! ```text
//! user:password:uid:gid:gecos:home:shell:extra_fields
//! ```
//!
//! Only `user` is required (`user:password` is the usual passdb-only form).
//! As in Dovecot's db-passwd-file.c:
//! - empty lines and lines starting with `#` or `:` are skipped; a last line
//!   without a newline counts; CRLF line endings are tolerated;
//! - the first of duplicate users wins (later ones are reported);
//! - everything after the 7th field is joined back with `:` and split on
//!   spaces into `key=value` extra fields (a bare `key` has an empty value),
//!   so `userdb_mail=maildir:~/Maildir` survives;
//! - the old form with an empty 8th field (`…:shell::maildir:~/Maildir`)
//!   means `userdb_mail=` the rest of the line;
//! - libpam-pwdfile `password[NN]` suffixes: `[34]` is PLAIN-MD5, `[13]` and
//!   others CRYPT, `[56]` DIGEST-MD5;
//! - a uid/gid of 0 (root) or one that is not a number makes the line
//!   invalid. Dovecot would resolve a user/group *name* with getpwnam();
//!   corepop does no such lookups and rejects the line, loudly.
//!
//! Lines corepop cannot use are skipped with a warning (line number, never
//! the password); see [`PasswdFile::warnings`].

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use zeroize::Zeroizing;

use super::cache::AuthCache;
use super::scheme::{self, SchemeError};
use super::scheme::{ScramAlg, ScramSecret};
use super::username::{validate_username, BadUsername};
use super::{AuthOutcome, Authenticator, Credential, SaslCapabilities, Secret, UserInfo};

/// How a passwd-file is interpreted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PasswdOptions {
    /// Lowercase (ASCII) the login name before lookup, like Dovecot 2.3's
    /// default `auth_username_format = %Lu`. As in Dovecot, entries written
    /// with uppercase letters can then never match (a warning says so).
    pub lowercase_usernames: bool,
    /// Scheme for passwords without a `{SCHEME}` prefix (Dovecot
    /// `default_pass_scheme`, normally `CRYPT`).
    pub default_scheme: String,
    /// Accept weak schemes (MD5-CRYPT, PLAIN-MD5, LDAP-MD5, SMD5, DES…).
    /// When `false` they are refused like Dovecot 2.4's
    /// `auth_allow_weak_schemes = no`.
    pub allow_weak_schemes: bool,
}

impl Default for PasswdOptions {
    fn default() -> Self {
        PasswdOptions {
            lowercase_usernames: true,
            default_scheme: "CRYPT".to_string(),
            allow_weak_schemes: true,
        }
    }
}

/// Loading a passwd-file failed.
#[derive(Debug)]
pub enum PasswdError {
    /// The file could not be read (missing, permissions, …).
    Read {
        /// The passwd-file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl fmt::Display for PasswdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswdError::Read { path, source } => {
                write!(f, "cannot read passwd-file {}: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for PasswdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PasswdError::Read { source, .. } => Some(source),
        }
    }
}

/// Something noticed while parsing, with its 1-based line number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseWarning {
    /// 1-based line number in the file.
    pub line: usize,
    /// What is wrong.
    pub kind: ParseWarningKind,
}

/// What a [`ParseWarning`] is about. None of these carries a password; field
/// values are not echoed either (a stray `:` in a password shifts it into
/// the uid field).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseWarningKind {
    /// A field corepop needs is not valid UTF-8. Line skipped.
    NotUtf8 {
        /// Which field.
        field: &'static str,
    },
    /// The username would be refused at login anyway. Line skipped.
    BadUsername(BadUsername),
    /// Same user as an earlier line. Line skipped (the first one wins).
    Duplicate {
        /// The user.
        user: String,
        /// Line of the entry that is kept.
        first_line: usize,
    },
    /// uid field is 0, too large, or not a number. Line skipped.
    BadUid {
        /// The user.
        user: String,
    },
    /// gid field is 0, too large, or not a number. Line skipped.
    BadGid {
        /// The user.
        user: String,
    },
    /// Has uppercase letters but logins are lowercased: can never log in.
    /// Entry kept (as Dovecot does).
    Unreachable {
        /// The user.
        user: String,
    },
    /// The stored password cannot be verified (unknown, unsupported, refused
    /// or malformed scheme). Entry kept; logins fail.
    Scheme {
        /// The user.
        user: String,
        /// Why.
        error: SchemeError,
    },
}

impl fmt::Display for ParseWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: ", self.line)?;
        match &self.kind {
            ParseWarningKind::NotUtf8 { field } => {
                write!(f, "{field} field is not valid UTF-8; line skipped")
            }
            ParseWarningKind::BadUsername(e) => write!(f, "{e}; line skipped"),
            ParseWarningKind::Duplicate { user, first_line } => write!(
                f,
                "user {user:?} already defined on line {first_line}; line skipped"
            ),
            ParseWarningKind::BadUid { user } => write!(
                f,
                "user {user:?} has an invalid uid (must be a non-zero number; \
                 names are not resolved); line skipped"
            ),
            ParseWarningKind::BadGid { user } => write!(
                f,
                "user {user:?} has an invalid gid (must be a non-zero number; \
                 names are not resolved); line skipped"
            ),
            ParseWarningKind::Unreachable { user } => write!(
                f,
                "user {user:?} contains uppercase letters but usernames are \
                 lowercased before lookup; this user can never log in"
            ),
            ParseWarningKind::Scheme { user, error } => {
                write!(f, "user {user:?}: {error}; logins will fail")
            }
        }
    }
}

/// One user from the passwd-file.
#[derive(Clone)]
pub struct PasswdEntry {
    /// Username, exactly as in the file.
    pub user: String,
    /// Stored password (`{SCHEME}data` or bare). Empty: cannot log in.
    password: Zeroizing<String>,
    /// Field 3, `None` if absent or empty.
    pub uid: Option<u32>,
    /// Field 4, `None` if absent or empty.
    pub gid: Option<u32>,
    /// Field 6, `None` if absent or empty.
    pub home: Option<PathBuf>,
    /// `userdb_mail=` extra field (or the old 9th-field form).
    pub mail: Option<String>,
    /// Other extra fields, in file order.
    pub extra: Vec<(String, String)>,
    /// 1-based line number.
    pub line: usize,
}

impl PasswdEntry {
    /// Whether a password is stored (an empty field means nobody can log in
    /// as this user; the entry is still useful as user data).
    pub fn has_password(&self) -> bool {
        !self.password.is_empty()
    }

    /// The `nologin` extra field is present: logins are refused.
    pub fn nologin(&self) -> bool {
        self.extra.iter().any(|(k, _)| k == "nologin")
    }

    /// The value of the first extra field `key`.
    pub fn extra_field(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Canonical name of the password scheme, see [`scheme::identify`].
    pub fn scheme(&self, opts: &PasswdOptions) -> Result<&'static str, SchemeError> {
        scheme::identify(&self.password, opts)
    }

    /// What a successful login reports.
    pub fn user_info(&self) -> UserInfo {
        UserInfo {
            user: self.user.clone(),
            uid: self.uid,
            gid: self.gid,
            home: self.home.clone(),
            mail: self.mail.clone(),
            extra: self.extra.clone(),
        }
    }
}

impl fmt::Debug for PasswdEntry {
    /// The stored password is shown only as present/absent.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswdEntry")
            .field("user", &self.user)
            .field(
                "password",
                &if self.has_password() {
                    "<redacted>"
                } else {
                    "<none>"
                },
            )
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("home", &self.home)
            .field("mail", &self.mail)
            .field("extra", &self.extra)
            .field("line", &self.line)
            .finish()
    }
}

/// A parsed passwd-file, held in memory. Implements [`Authenticator`].
pub struct PasswdFile {
    users: HashMap<String, PasswdEntry>,
    opts: PasswdOptions,
    warnings: Vec<ParseWarning>,
    /// User whose stored password is verified for unknown users, so that a
    /// miss costs what a hit costs: the first entry of the most common
    /// scheme in the file. `None`: use the built-in SHA512-CRYPT dummy.
    timing_reference: Option<String>,
    path: Option<PathBuf>,
    /// Successful verifications, shared with other `PasswdFile` generations.
    cache: Option<std::sync::Arc<AuthCache>>,
    /// Distinguishes this parse from earlier ones in cache keys.
    generation: u64,
    /// What every user with a password can do (computed at load).
    sasl: SaslCapabilities,
    /// Some entry sets its own LOGIN-DELAY (extra field `login_delay=N`).
    login_delay_per_user: bool,
}

impl fmt::Debug for PasswdFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswdFile")
            .field("path", &self.path)
            .field("users", &self.users.len())
            .field("warnings", &self.warnings.len())
            .field("opts", &self.opts)
            .finish()
    }
}

impl PasswdFile {
    /// Read and parse the passwd-file at `path`. An unreadable file is an
    /// error; unusable lines are skipped with a `tracing` warning each (also
    /// available from [`PasswdFile::warnings`]).
    pub fn load(path: &Path, opts: PasswdOptions) -> Result<Self, PasswdError> {
        let data = Zeroizing::new(std::fs::read(path).map_err(|source| PasswdError::Read {
            path: path.to_path_buf(),
            source,
        })?);
        Ok(Self::parse_bytes(&data, opts, Some(path)))
    }

    /// Parse passwd-file text. Malformed lines are skipped with a
    /// `tracing::warn` naming the line number.
    pub fn parse(text: &str, opts: PasswdOptions) -> Self {
        Self::parse_bytes(text.as_bytes(), opts, None)
    }

    /// Parse raw passwd-file bytes (fields corepop does not use, such as
    /// gecos, may be in any encoding).
    pub fn parse_bytes(data: &[u8], opts: PasswdOptions, path: Option<&Path>) -> Self {
        let mut users: HashMap<String, PasswdEntry> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut warnings = Vec::new();
        for (idx, line) in data.split(|&b| b == b'\n').enumerate() {
            let lineno = idx + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() || line[0] == b'#' || line[0] == b':' {
                continue;
            }
            let mut warn = |kind| warnings.push(ParseWarning { line: lineno, kind });
            let entry = match parse_line(line, lineno) {
                Ok(e) => e,
                Err(kind) => {
                    warn(kind);
                    continue;
                }
            };
            if let Some(first) = users.get(&entry.user) {
                warn(ParseWarningKind::Duplicate {
                    user: entry.user.clone(),
                    first_line: first.line,
                });
                continue;
            }
            if opts.lowercase_usernames && entry.user.bytes().any(|b| b.is_ascii_uppercase()) {
                warn(ParseWarningKind::Unreachable {
                    user: entry.user.clone(),
                });
            }
            if entry.has_password() {
                if let Err(error) = check_scheme(&entry.password, &opts) {
                    warn(ParseWarningKind::Scheme {
                        user: entry.user.clone(),
                        error,
                    });
                }
            }
            order.push(entry.user.clone());
            users.insert(entry.user.clone(), entry);
        }

        let shown = path.map_or_else(|| "<inline>".into(), |p| p.display().to_string());
        for w in &warnings {
            tracing::warn!(passwd_file = %shown, line = w.line, "passwd-file: {w}");
        }

        let timing_reference = pick_timing_reference(&users, &order, &opts);
        let with_pw = || users.values().filter(|e| e.has_password());
        let sasl = SaslCapabilities {
            cram_md5: with_pw().all(|e| scheme::cram_md5_capable(&e.password, &opts)),
            scram_sha1: with_pw().all(|e| scram_capable(&e.password, ScramAlg::Sha1, &opts)),
            scram_sha256: with_pw().all(|e| scram_capable(&e.password, ScramAlg::Sha256, &opts)),
        };
        let login_delay_per_user = users
            .values()
            .any(|e| super::login_delay_field(e.extra_field("login_delay")).is_some());
        static GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        PasswdFile {
            users,
            opts,
            warnings,
            timing_reference,
            path: path.map(Path::to_path_buf),
            cache: None,
            generation: GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            sasl,
            login_delay_per_user,
        }
    }

    /// Caches successful password verifications in `cache` (see [`AuthCache`]).
    pub fn set_cache(&mut self, cache: std::sync::Arc<AuthCache>) {
        self.cache = Some(cache);
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// No users at all.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The entry a login name refers to: lowercased first if
    /// [`PasswdOptions::lowercase_usernames`], then matched exactly.
    /// Does not validate the name (invalid names are never in the file).
    pub fn lookup(&self, user: &str) -> Option<&PasswdEntry> {
        self.users.get(&*self.lookup_name(user))
    }

    /// The name [`PasswdFile::lookup`] looks `user` up by.
    fn lookup_name<'a>(&self, user: &'a str) -> std::borrow::Cow<'a, str> {
        if self.opts.lowercase_usernames && user.bytes().any(|b| b.is_ascii_uppercase()) {
            std::borrow::Cow::Owned(user.to_ascii_lowercase())
        } else {
            std::borrow::Cow::Borrowed(user)
        }
    }

    /// All entries, in no particular order.
    pub fn entries(&self) -> impl Iterator<Item = &PasswdEntry> {
        self.users.values()
    }

    /// What was wrong with the file, in line order.
    pub fn warnings(&self) -> &[ParseWarning] {
        &self.warnings
    }

    /// The options this file was parsed with.
    pub fn options(&self) -> &PasswdOptions {
        &self.opts
    }

    /// The file this was loaded from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Verify `password` against something that costs what a real user
    /// costs, and forget the answer.
    fn burn_time(&self, password: &[u8]) {
        let stored: &str = match self
            .timing_reference
            .as_deref()
            .and_then(|u| self.users.get(u))
        {
            Some(e) => &e.password,
            None => dummy_hash(),
        };
        let _ = std::hint::black_box(scheme::verify(stored, password, &self.opts));
    }

    fn check_plain(&self, entry: Option<&PasswdEntry>, password: &[u8]) -> AuthOutcome {
        let Some(entry) = entry.filter(|e| e.has_password()) else {
            self.burn_time(password);
            return AuthOutcome::Failed;
        };
        let cached = self.cache.as_ref().map(|c| {
            let key = c.key(&entry.user, self.generation, &entry.password, password);
            let now = std::time::Instant::now();
            (c, key, c.hit(&key, now))
        });
        let verified = match cached {
            Some((_, _, true)) => Ok(true),
            _ => scheme::verify(&entry.password, password, &self.opts),
        };
        if let (Ok(true), Some((c, key, false))) = (&verified, cached) {
            c.insert(key, std::time::Instant::now());
        }
        match verified {
            Ok(true) if entry.nologin() => {
                tracing::info!(user = %entry.user, "login refused: nologin");
                AuthOutcome::Failed
            }
            Ok(true) => AuthOutcome::Ok(entry.user_info()),
            Ok(false) => AuthOutcome::Failed,
            Err(error) => {
                tracing::warn!(
                    user = %entry.user,
                    line = entry.line,
                    "cannot verify password: {error}"
                );
                AuthOutcome::Failed
            }
        }
    }

    fn check_apop(
        &self,
        entry: Option<&PasswdEntry>,
        timestamp: &str,
        digest_hex: &str,
    ) -> AuthOutcome {
        let plain = entry
            .and_then(|e| scheme::plaintext_equivalent_with(&e.password, &self.opts))
            .filter(|p| !p.is_empty())
            .map(Secret::new);
        let (Some(entry), Some(plain)) = (entry, plain) else {
            if let Some(e) = entry {
                tracing::debug!(user = %e.user, "APOP refused: no plaintext-equivalent password");
            }
            // Same work as a real check.
            let _ = std::hint::black_box(scheme::apop_verify(timestamp, digest_hex, b"-"));
            return AuthOutcome::Failed;
        };
        if !scheme::apop_verify(timestamp, digest_hex, plain.expose()) {
            return AuthOutcome::Failed;
        }
        if entry.nologin() {
            tracing::info!(user = %entry.user, "login refused: nologin");
            return AuthOutcome::Failed;
        }
        AuthOutcome::Ok(entry.user_info())
    }
}

impl PasswdFile {
    fn finish_ok(&self, entry: &PasswdEntry) -> AuthOutcome {
        if entry.nologin() {
            tracing::info!(user = %entry.user, "login refused: nologin");
            return AuthOutcome::Failed;
        }
        AuthOutcome::Ok(entry.user_info())
    }

    fn check_cram_md5(
        &self,
        entry: Option<&PasswdEntry>,
        challenge: &str,
        digest_hex: &str,
    ) -> AuthOutcome {
        let ok = entry
            .filter(|e| e.has_password())
            .and_then(|e| scheme::cram_md5_verify(&e.password, challenge, digest_hex, &self.opts));
        match (entry, ok) {
            (Some(e), Some(true)) => self.finish_ok(e),
            (Some(e), None) if e.has_password() => {
                tracing::debug!(user = %e.user, "CRAM-MD5 refused: no plaintext-equivalent or CRAM-MD5 password");
                AuthOutcome::Failed
            }
            _ => AuthOutcome::Failed,
        }
    }

    fn check_scram(
        &self,
        entry: Option<&PasswdEntry>,
        secret: &ScramSecret,
        auth_message: &[u8],
        proof: &[u8],
    ) -> AuthOutcome {
        let good = scheme::scram_verify_proof(secret, auth_message, proof);
        match entry.filter(|e| e.has_password()) {
            Some(e) if good => self.finish_ok(e),
            _ => AuthOutcome::Failed,
        }
    }

    fn lookup_scram(&self, user: &str, alg: ScramAlg) -> Option<ScramSecret> {
        validate_username(user).ok()?;
        let entry = self.lookup(user).filter(|e| e.has_password())?;
        if let Some(s) = scheme::scram_secret_of(&entry.password, alg, &self.opts) {
            // Cost what a derived or fake secret costs, so timing does not tell the cases
            // (unknown user, plaintext entry, stored SCRAM entry) apart.
            let _ = std::hint::black_box(super::fake_scram_secret(user, alg));
            return Some(s);
        }
        let plain = Zeroizing::new(scheme::plaintext_equivalent_with(
            &entry.password,
            &self.opts,
        )?);
        if plain.is_empty() || plain.contains(&0) {
            return None;
        }
        Some(scheme::scram_derive(
            alg,
            &plain,
            &super::derived_scram_salt(&entry.user),
            scheme::SCRAM_DERIVED_ITERATIONS,
        ))
    }
}

fn scram_capable(stored: &str, alg: ScramAlg, opts: &PasswdOptions) -> bool {
    scheme::scram_secret_of(stored, alg, opts).is_some()
        || scheme::plaintext_equivalent_with(stored, opts)
            .is_some_and(|p| !p.is_empty() && !p.contains(&0))
}

impl Authenticator for PasswdFile {
    fn scram_secret(&self, user: &str, alg: ScramAlg) -> ScramSecret {
        self.lookup_scram(user, alg).unwrap_or_else(|| {
            // Made up from the name as looked up: spellings that find one user must get one
            // salt whether or not the user exists, or comparing them tells which users do.
            super::fake_scram_secret(&self.lookup_name(user), alg)
        })
    }

    fn sasl_capabilities(&self) -> SaslCapabilities {
        self.sasl
    }

    fn login_delay_per_user(&self) -> bool {
        self.login_delay_per_user
    }

    /// Validate the name (invalid → `Failed`), lowercase it if configured,
    /// look it up and verify. Unknown users, users without a password and
    /// users whose hash cannot be checked all give `Failed` after a
    /// comparable amount of work. Never `TempFail`: the file is in memory.
    fn authenticate(&self, user: &str, cred: &Credential) -> AuthOutcome {
        if let Err(reason) = validate_username(user) {
            tracing::debug!("login refused: {reason}");
            return AuthOutcome::Failed;
        }
        let entry = self.lookup(user);
        match cred {
            Credential::Plain(secret) => self.check_plain(entry, secret.expose()),
            Credential::Apop {
                timestamp,
                digest_hex,
            } => self.check_apop(entry, timestamp, digest_hex),
            Credential::CramMd5 {
                challenge,
                digest_hex,
            } => self.check_cram_md5(entry, challenge, digest_hex),
            Credential::Scram {
                secret,
                auth_message,
                proof,
            } => self.check_scram(entry, secret, auth_message, proof),
        }
    }
}

const DUMMY_FALLBACK: &str = "$6$corepopdummysalt$mi.AamY4Uc9DUSEAfFosBa4xta58nHzuzQWKHwA715GZe2ghld2NNcufaIqoOmhmaHKu9RJto0dDzoW32Bik3/";

/// A SHA512-CRYPT hash (5000 rounds) of a fixed string with a random salt,
/// made on first use.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        scheme::hash("SHA512-CRYPT", b"corepop timing dummy").unwrap_or_else(|_| {
            // Only if the OS RNG fails. crypt(3) of the same string.
            DUMMY_FALLBACK.to_string()
        })
    })
}

/// Scheme problems worth a load-time warning.
fn check_scheme(stored: &str, opts: &PasswdOptions) -> Result<&'static str, SchemeError> {
    scheme::check(stored, opts)
}

/// First user (in file order) of the most common usable scheme.
fn pick_timing_reference(
    users: &HashMap<String, PasswdEntry>,
    order: &[String],
    opts: &PasswdOptions,
) -> Option<String> {
    let mut counts: Vec<(&'static str, usize, &str)> = Vec::new();
    for name in order {
        let entry = &users[name];
        if !entry.has_password() {
            continue;
        }
        let Ok(scheme) = check_scheme(&entry.password, opts) else {
            continue;
        };
        match counts.iter_mut().find(|(s, _, _)| *s == scheme) {
            Some((_, n, _)) => *n += 1,
            None => counts.push((scheme, 1, name)),
        }
    }
    // max_by_key keeps the last maximum; iterate reversed so ties go to the
    // scheme seen first.
    counts
        .iter()
        .rev()
        .max_by_key(|(_, n, _)| *n)
        .map(|(_, _, user)| user.to_string())
}

fn utf8<'a>(bytes: &'a [u8], field: &'static str) -> Result<&'a str, ParseWarningKind> {
    std::str::from_utf8(bytes).map_err(|_| ParseWarningKind::NotUtf8 { field })
}

/// uid/gid field: empty → `None`; else a number other than 0 and u32::MAX.
/// Digits only, as Dovecot's str_to_uid() (`+1000` is not a number there;
/// it would be looked up as a user name and fail).
fn parse_id(field: Option<&[u8]>) -> Result<Option<u32>, ()> {
    match field {
        None | Some(b"") => Ok(None),
        Some(f) => std::str::from_utf8(f)
            .ok()
            .and_then(super::scheme::parse_uint)
            .filter(|&id| id != 0 && id != u32::MAX)
            .map(Some)
            .ok_or(()),
    }
}

/// libpam-pwdfile compatibility: `password[NN]`.
fn convert_pam_suffix(pass: &str) -> Zeroizing<String> {
    let b = pass.as_bytes();
    let len = b.len();
    if len > 4 && b[0] != b'{' && b[0] != b'$' && b[len - 1] == b']' && b[len - 4] == b'[' {
        let num = &pass[len - 3..len - 1];
        let body = &pass[..len - 4];
        let scheme = match num {
            "34" => "{PLAIN-MD5}",
            "56" => "{DIGEST-MD5}",
            _ => "{CRYPT}",
        };
        return Zeroizing::new(format!("{scheme}{body}"));
    }
    Zeroizing::new(pass.to_string())
}

fn parse_line(line: &[u8], lineno: usize) -> Result<PasswdEntry, ParseWarningKind> {
    let fields: Vec<&[u8]> = line.split(|&b| b == b':').collect();
    let user = utf8(fields[0], "user")?;
    validate_username(user).map_err(ParseWarningKind::BadUsername)?;
    let password = match fields.get(1) {
        Some(p) => convert_pam_suffix(utf8(p, "password")?),
        None => Zeroizing::new(String::new()),
    };
    let uid = parse_id(fields.get(2).copied()).map_err(|()| ParseWarningKind::BadUid {
        user: user.to_string(),
    })?;
    let gid = parse_id(fields.get(3).copied()).map_err(|()| ParseWarningKind::BadGid {
        user: user.to_string(),
    })?;
    // fields[4] (gecos) and fields[6] (shell) are not used.
    let home = match fields.get(5) {
        Some(h) if !h.is_empty() => Some(PathBuf::from(utf8(h, "home")?)),
        _ => None,
    };

    let mut mail = None;
    let mut extra = Vec::new();
    if fields.len() > 7 {
        let rest = &fields[7..];
        let text = if rest[0].is_empty() {
            // Old format: empty 8th field, then the mail location, which may
            // itself contain ':'.
            match rest.get(1) {
                Some(m) if !m.is_empty() => {
                    format!("userdb_mail={}", utf8(&rest[1..].join(&b':'), "mail")?)
                }
                _ => String::new(),
            }
        } else {
            utf8(&rest.join(&b':'), "extra")?.to_string()
        };
        for token in text.split(' ').filter(|t| !t.is_empty()) {
            let (key, value) = token.split_once('=').unwrap_or((token, ""));
            if key == "userdb_mail" {
                mail = (!value.is_empty()).then(|| value.to_string());
            } else {
                extra.push((key.to_string(), value.to_string()));
            }
        }
    }

    Ok(PasswdEntry {
        user: user.to_string(),
        password,
        uid,
        gid,
        home,
        mail,
        extra,
        line: lineno,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(pw: &str) -> Credential {
        Credential::Plain(Secret::new(pw.as_bytes().to_vec()))
    }

    fn parse(text: &str) -> PasswdFile {
        PasswdFile::parse(text, PasswdOptions::default())
    }

    fn ok_user(outcome: AuthOutcome) -> UserInfo {
        match outcome {
            AuthOutcome::Ok(info) => info,
            other => panic!("expected Ok, got {other:?}"),
        }
    }

    #[test]
    fn line_table() {
        // (line, expected (user, uid, gid, home, mail, extra) or None if the
        // line yields no entry)
        type Want = Option<(
            &'static str,
            Option<u32>,
            Option<u32>,
            Option<&'static str>,
            Option<&'static str>,
            &'static [(&'static str, &'static str)],
        )>;
        let table: &[(&str, Want)] = &[
            ("", None),
            ("# comment:with:colons", None),
            (":nouser:1000:1000", None),
            ("alice", Some(("alice", None, None, None, None, &[]))),
            ("bob:{PLAIN}pw", Some(("bob", None, None, None, None, &[]))),
            ("carol:{PLAIN}pw:", Some(("carol", None, None, None, None, &[]))),
            (
                "dave:{PLAIN}pw:1001:1002",
                Some(("dave", Some(1001), Some(1002), None, None, &[])),
            ),
            (
                "erin:{PLAIN}pw:1001::Erin E.:/home/erin",
                Some(("erin", Some(1001), None, Some("/home/erin"), None, &[])),
            ),
            (
                "frank:{PLAIN}pw:::::",
                Some(("frank", None, None, None, None, &[])),
            ),
            (
                "gina:{PLAIN}pw:1000:1000::/home/gina::userdb_mail=maildir:~/Maildir:LAYOUT=fs nologin allow_nets=10.0.0.0/8,::1",
                Some((
                    "gina",
                    Some(1000),
                    Some(1000),
                    Some("/home/gina"),
                    Some("maildir:~/Maildir:LAYOUT=fs"),
                    &[("nologin", ""), ("allow_nets", "10.0.0.0/8,::1")],
                )),
            ),
            (
                "hank:{PLAIN}pw::::::  userdb_quota_rule=*:storage=1G   key=a=b ",
                Some((
                    "hank",
                    None,
                    None,
                    None,
                    None,
                    &[("userdb_quota_rule", "*:storage=1G"), ("key", "a=b")],
                )),
            ),
            // Old format: empty 8th field, then the mail location.
            (
                "ivy:{PLAIN}pw:1000:1000::/home/ivy:/bin/false::maildir:/var/mail/ivy",
                Some((
                    "ivy",
                    Some(1000),
                    Some(1000),
                    Some("/home/ivy"),
                    Some("maildir:/var/mail/ivy"),
                    &[],
                )),
            ),
            (
                "jack:{PLAIN}pw:1000:1000::/home/jack:/bin/false::",
                Some(("jack", Some(1000), Some(1000), Some("/home/jack"), None, &[])),
            ),
            (
                "kim:{PLAIN}pw::::::userdb_mail=",
                Some(("kim", None, None, None, None, &[])),
            ),
            // Unusable lines.
            ("root0:{PLAIN}pw:0:0", None),
            ("named:{PLAIN}pw:vmail:vmail", None),
            ("biggid:{PLAIN}pw:1000:4294967295", None),
            // Dovecot's str_to_uid() takes digits only; "+1000" would be
            // looked up as a user name.
            ("plusuid:{PLAIN}pw:+1000:1000", None),
            ("plusgid:{PLAIN}pw:1000:+1000", None),
            ("../etc:{PLAIN}pw", None),
            ("%u:{PLAIN}pw", None),
            (".hidden:{PLAIN}pw", None),
        ];
        for (line, want) in table {
            let f = parse(line);
            match want {
                None => assert!(f.is_empty(), "{line:?} gave {:?}", f.entries().next()),
                Some((user, uid, gid, home, mail, extra)) => {
                    assert_eq!(f.len(), 1, "{line:?}");
                    let e = f.lookup(user).unwrap_or_else(|| panic!("{line:?}"));
                    assert_eq!(e.user, *user, "{line:?}");
                    assert_eq!(e.uid, *uid, "{line:?}");
                    assert_eq!(e.gid, *gid, "{line:?}");
                    assert_eq!(e.home.as_deref(), home.map(Path::new), "{line:?}");
                    assert_eq!(e.mail.as_deref(), *mail, "{line:?}");
                    let got: Vec<(&str, &str)> = e
                        .extra
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    assert_eq!(got, *extra, "{line:?}");
                    assert_eq!(e.line, 1);
                }
            }
        }
    }

    #[test]
    fn whole_file_with_warnings() {
        let text = "# users\n\
                    alice:{PLAIN}one:1000:1000::/home/alice\n\
                    \n\
                    :skipped\n\
                    bob:{PLAIN}two\n\
                    alice:{PLAIN}impostor\n\
                    Carol:{PLAIN}three\n\
                    dave:{PLAIN}x:0:1000\n\
                    erin:{PLAIN}x:1000:wheel\n\
                    frank:{NOPE}x\n\
                    gina:{PLAIN}last-line-no-newline";
        let f = parse(text);
        assert_eq!(f.len(), 5); // alice bob Carol frank gina
        assert_eq!(f.lookup("alice").unwrap().line, 2);
        assert_eq!(f.lookup("gina").unwrap().line, 11);
        let got: Vec<(usize, ParseWarningKind)> = f
            .warnings()
            .iter()
            .map(|w| (w.line, w.kind.clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    6,
                    ParseWarningKind::Duplicate {
                        user: "alice".into(),
                        first_line: 2
                    }
                ),
                (
                    7,
                    ParseWarningKind::Unreachable {
                        user: "Carol".into()
                    }
                ),
                (
                    8,
                    ParseWarningKind::BadUid {
                        user: "dave".into()
                    }
                ),
                (
                    9,
                    ParseWarningKind::BadGid {
                        user: "erin".into()
                    }
                ),
                (
                    10,
                    ParseWarningKind::Scheme {
                        user: "frank".into(),
                        error: SchemeError::Unknown("{NOPE}".into())
                    }
                ),
            ]
        );
        // First duplicate wins.
        assert!(matches!(
            f.authenticate("alice", &plain("one")),
            AuthOutcome::Ok(_)
        ));
        assert_eq!(
            f.authenticate("alice", &plain("impostor")),
            AuthOutcome::Failed
        );
        assert!(matches!(
            f.authenticate("gina", &plain("last-line-no-newline")),
            AuthOutcome::Ok(_)
        ));
        // Uppercase entries are unreachable with lowercasing on (Dovecot %Lu).
        assert_eq!(
            f.authenticate("Carol", &plain("three")),
            AuthOutcome::Failed
        );
        assert_eq!(
            f.authenticate("carol", &plain("three")),
            AuthOutcome::Failed
        );
    }

    #[test]
    fn warnings_never_echo_passwords() {
        // A ':' inside a cleartext password shifts the rest into the uid field.
        let f = parse("alice:{PLAIN}sec:ret-tail\nbob:{my secret}x\n");
        assert!(f.lookup("alice").is_none());
        for w in f.warnings() {
            let shown = w.to_string();
            assert!(!shown.contains("ret-tail"), "{shown}");
            assert!(!shown.contains("secret"), "{shown}");
        }
        assert_eq!(f.warnings().len(), 2);
    }

    /// Whitespace after a base64 hash (here at the end of the line) is
    /// skipped by Dovecot's base64 decoder: `doveadm pw -t` verifies it.
    #[test]
    fn trailing_space_after_base64_hash() {
        let f = parse(
            "alice:{SHA}h0Vy56WuaklGamrFeLmK26eMaqY= \n\
             bob:{SSHA256}SjxoC5ZHUDzhF4ZDWfP0i04+gqKs2AtXoXmB9TjjyNS3WWve :1000:1000\n",
        );
        assert!(f.warnings().is_empty(), "{:?}", f.warnings());
        for u in ["alice", "bob"] {
            assert_eq!(ok_user(f.authenticate(u, &plain("Tr0ub4dor&3"))).user, u);
            assert_eq!(f.authenticate(u, &plain("Tr0ub4dor&")), AuthOutcome::Failed);
        }
    }

    #[test]
    fn crlf_and_missing_final_newline() {
        let f = parse("alice:{PLAIN}one\r\nbob:{PLAIN}two\r\n# c\r\n\r\ncarol:{PLAIN}three");
        assert_eq!(f.len(), 3);
        assert!(f.warnings().is_empty());
        for (u, p) in [("alice", "one"), ("bob", "two"), ("carol", "three")] {
            let info = ok_user(f.authenticate(u, &plain(p)));
            assert_eq!(info.user, u);
        }
        // The CR is not part of the password.
        assert_eq!(
            f.authenticate("alice", &plain("one\r")),
            AuthOutcome::Failed
        );
    }

    #[test]
    fn non_utf8_gecos_is_fine_non_utf8_password_is_not() {
        let data = b"alice:{PLAIN}pw:1000:1000:J\xfcrgen:/home/alice\nbob:\xff\xfe\n";
        let f = PasswdFile::parse_bytes(data, PasswdOptions::default(), None);
        assert_eq!(f.len(), 1);
        assert!(f.lookup("alice").is_some());
        assert_eq!(
            f.warnings(),
            &[ParseWarning {
                line: 2,
                kind: ParseWarningKind::NotUtf8 { field: "password" }
            }]
        );
    }

    #[test]
    fn pam_pwdfile_suffixes() {
        let f = parse(
            "a:4ece57a61323b52ccffdbef021956754[34]\n\
             b:abWL7Sj501Z46[13]\n",
        );
        assert_eq!(f.lookup("a").unwrap().scheme(f.options()), Ok("PLAIN-MD5"));
        assert_eq!(f.lookup("b").unwrap().scheme(f.options()), Ok("DES-CRYPT"));
        assert!(matches!(
            f.authenticate("a", &plain("Tr0ub4dor&3")),
            AuthOutcome::Ok(_)
        ));
        assert!(matches!(
            f.authenticate("b", &plain("Tr0ub4dor&3")),
            AuthOutcome::Ok(_)
        ));
    }

    #[test]
    fn authenticate_outcomes() {
        let text = "\
alice:{SHA256-CRYPT}$5$rounds=1000$0123456789abcdef$80KmIwVQ/1gziP50UdbxffRwyzE7Vr2b18lYFuMiOx6:1000:1000::/home/alice::userdb_mail=maildir:~/Maildir quota=1G
bob:{PLAIN}hunter2::::::nologin
carol:
dave::1000:1000::/home/dave
erin:{NOPE}whatever
frank:$1$abcdefgh$FErPkDeIHv781e9EexumS.
gina:{PLAIN}
";
        let f = parse(text);
        let info = ok_user(f.authenticate("alice", &plain("Tr0ub4dor&3")));
        assert_eq!(
            info,
            UserInfo {
                user: "alice".into(),
                uid: Some(1000),
                gid: Some(1000),
                home: Some(PathBuf::from("/home/alice")),
                mail: Some("maildir:~/Maildir".into()),
                extra: vec![("quota".into(), "1G".into())],
            }
        );
        // Login names are lowercased (ASCII) before lookup by default.
        let info = ok_user(f.authenticate("ALICE", &plain("Tr0ub4dor&3")));
        assert_eq!(info.user, "alice");
        let cases: &[(&str, &str)] = &[
            ("alice", "wrong"),
            ("alice", ""),
            ("bob", "hunter2"), // nologin
            ("bob", "wrong"),
            ("carol", ""), // no password field
            ("carol", "x"),
            ("dave", ""),         // empty password field
            ("erin", "whatever"), // unknown scheme
            ("gina", ""),         // {PLAIN} with empty data
            ("nobody", "Tr0ub4dor&3"),
            ("", "x"),
            ("../alice", "Tr0ub4dor&3"),
            ("alice%d", "Tr0ub4dor&3"),
        ];
        for (user, pw) in cases {
            assert_eq!(
                f.authenticate(user, &plain(pw)),
                AuthOutcome::Failed,
                "{user:?}/{pw:?}"
            );
        }
        // Weak schemes: accepted by default, refused when configured.
        assert!(matches!(
            f.authenticate("frank", &plain("Tr0ub4dor&3")),
            AuthOutcome::Ok(_)
        ));
        let strict = PasswdFile::parse(
            text,
            PasswdOptions {
                allow_weak_schemes: false,
                ..PasswdOptions::default()
            },
        );
        assert_eq!(
            strict.authenticate("frank", &plain("Tr0ub4dor&3")),
            AuthOutcome::Failed
        );
        assert!(strict.warnings().iter().any(|w| w.kind
            == ParseWarningKind::Scheme {
                user: "frank".into(),
                error: SchemeError::WeakRefused("MD5-CRYPT")
            }));
    }

    #[test]
    fn case_sensitive_when_lowercasing_is_off() {
        let opts = PasswdOptions {
            lowercase_usernames: false,
            ..PasswdOptions::default()
        };
        let f = PasswdFile::parse("Alice:{PLAIN}pw\n", opts);
        assert!(f.warnings().is_empty());
        assert!(matches!(
            f.authenticate("Alice", &plain("pw")),
            AuthOutcome::Ok(_)
        ));
        assert_eq!(f.authenticate("alice", &plain("pw")), AuthOutcome::Failed);
        assert!(f.lookup("ALICE").is_none());
    }

    #[test]
    fn default_scheme_applies_to_bare_passwords() {
        let opts = PasswdOptions {
            default_scheme: "PLAIN".into(),
            ..PasswdOptions::default()
        };
        let f = PasswdFile::parse("alice:sesame\n", opts);
        assert!(matches!(
            f.authenticate("alice", &plain("sesame")),
            AuthOutcome::Ok(_)
        ));
        // With the default CRYPT, "sesame" is a (malformed) DES hash.
        let f = parse("alice:sesame\n");
        assert_eq!(
            f.authenticate("alice", &plain("sesame")),
            AuthOutcome::Failed
        );
        assert!(matches!(
            f.warnings()[0].kind,
            ParseWarningKind::Scheme {
                error: SchemeError::Malformed { .. },
                ..
            }
        ));
    }

    #[test]
    fn sasl_capabilities_and_mechanisms() {
        let plain = parse("a:{PLAIN}pw\nb:{CRAM-MD5}c0a49b541c47c13e0fed75e90df0510e8e19d265316dbafce5048e1f92c94232\n");
        let caps = plain.sasl_capabilities();
        assert!(caps.cram_md5 && !caps.scram_sha256);
        let mixed = parse(&format!(
            "a:{{PLAIN}}pw\nb:{}\n",
            scheme::hash("SCRAM-SHA-256", b"pw").unwrap()
        ));
        let caps = mixed.sasl_capabilities();
        assert!(!caps.cram_md5 && caps.scram_sha256 && !caps.scram_sha1);
        let hashed = parse(&format!(
            "a:{}\n",
            scheme::hash("SHA256-CRYPT", b"pw").unwrap()
        ));
        assert_eq!(hashed.sasl_capabilities(), SaslCapabilities::default());
    }

    #[test]
    fn cram_md5_and_scram_through_the_authenticator() {
        let f = parse(&format!(
            "plain:{{PLAIN}}pencil\nscram:{}\nhashed:{}\nlocked:{{PLAIN}}pencil::::::nologin\n",
            scheme::hash("SCRAM-SHA-256", b"pencil").unwrap(),
            scheme::hash("SHA512-CRYPT", b"pencil").unwrap(),
        ));
        let ch = "<1.2@host>";
        let cram = |d: String| Credential::CramMd5 {
            challenge: ch.into(),
            digest_hex: d,
        };
        let good = scheme::cram_md5_digest(b"pencil", ch);
        assert!(matches!(
            f.authenticate("plain", &cram(good.clone())),
            AuthOutcome::Ok(_)
        ));
        assert_eq!(
            f.authenticate("hashed", &cram(good.clone())),
            AuthOutcome::Failed
        );
        assert_eq!(
            f.authenticate("nobody", &cram(good.clone())),
            AuthOutcome::Failed
        );
        assert_eq!(f.authenticate("locked", &cram(good)), AuthOutcome::Failed);

        let am = b"n=x,r=1,r=12,s=AA==,i=4096,c=biws,r=12";
        let try_scram = |user: &str, pw: &[u8]| {
            let secret = f.scram_secret(user, ScramAlg::Sha256);
            let proof = scheme::scram_client_proof(
                ScramAlg::Sha256,
                pw,
                &secret.salt,
                secret.iterations,
                am,
            );
            f.authenticate(
                user,
                &Credential::Scram {
                    secret,
                    auth_message: am.to_vec(),
                    proof,
                },
            )
        };
        assert!(matches!(try_scram("plain", b"pencil"), AuthOutcome::Ok(_)));
        assert!(matches!(try_scram("scram", b"pencil"), AuthOutcome::Ok(_)));
        assert_eq!(try_scram("scram", b"pencilx"), AuthOutcome::Failed);
        assert_eq!(try_scram("hashed", b"pencil"), AuthOutcome::Failed);
        assert_eq!(try_scram("nobody", b"pencil"), AuthOutcome::Failed);
        assert_eq!(try_scram("locked", b"pencil"), AuthOutcome::Failed);
        // Salts are stable per user, for known and unknown users alike.
        for u in ["plain", "nobody", "hashed"] {
            let a = f.scram_secret(u, ScramAlg::Sha256);
            let b = f.scram_secret(u, ScramAlg::Sha256);
            assert_eq!((a.salt, a.iterations), (b.salt, b.iterations), "{u}");
        }
    }

    /// With `lowercase_usernames` (the default) `ALICE` and `alice` are one user, so a known
    /// user's salt is the same for both spellings. An unknown user's made-up salt must behave
    /// the same way, or comparing the salts for `X` and `x` tells which users exist.
    #[test]
    fn scram_salt_does_not_tell_users_apart_by_case() {
        let f = parse(&format!(
            "plain:{{PLAIN}}pencil\nscram:{}\n",
            scheme::hash("SCRAM-SHA-256", b"pencil").unwrap()
        ));
        let salt = |u: &str| f.scram_secret(u, ScramAlg::Sha256).salt;
        for (upper, lower) in [("PLAIN", "plain"), ("Scram", "scram"), ("NoBody", "nobody")] {
            assert_eq!(salt(upper), salt(lower), "{upper} vs {lower}");
        }
        // Without lowercasing the spellings are different (unknown) users: nothing to hide.
        let opts = PasswdOptions {
            lowercase_usernames: false,
            ..PasswdOptions::default()
        };
        let f = PasswdFile::parse("plain:{PLAIN}pencil\n", opts);
        let salt = |u: &str| f.scram_secret(u, ScramAlg::Sha256).salt;
        assert_ne!(salt("PLAIN"), salt("plain"));
        assert_ne!(salt("NOBODY"), salt("nobody"));
    }

    #[test]
    fn cache_skips_the_hash_and_never_caches_failures() {
        use std::sync::Arc;
        let mut f = parse(&format!(
            "u:{}\n",
            scheme::hash("SHA512-CRYPT", b"right").unwrap()
        ));
        let cache = Arc::new(AuthCache::new(std::time::Duration::from_secs(60), 100).unwrap());
        f.set_cache(cache.clone());
        assert_eq!(f.authenticate("u", &plain("wrong")), AuthOutcome::Failed);
        assert_eq!(f.authenticate("u", &plain("wrong")), AuthOutcome::Failed);
        assert!(cache.is_empty(), "failures are never cached");
        assert!(matches!(
            f.authenticate("u", &plain("right")),
            AuthOutcome::Ok(_)
        ));
        assert_eq!(cache.len(), 1);
        assert!(matches!(
            f.authenticate("u", &plain("right")),
            AuthOutcome::Ok(_)
        ));
        assert_eq!(cache.stats().0, 1, "second login was a hit");
        assert_eq!(f.authenticate("u", &plain("wrong")), AuthOutcome::Failed);
        // A changed password (new file generation, new hash) misses.
        let mut g = parse(&format!(
            "u:{}\n",
            scheme::hash("SHA512-CRYPT", b"new").unwrap()
        ));
        g.set_cache(cache.clone());
        assert_eq!(g.authenticate("u", &plain("right")), AuthOutcome::Failed);
        assert!(matches!(
            g.authenticate("u", &plain("new")),
            AuthOutcome::Ok(_)
        ));
    }

    #[test]
    fn apop() {
        let f = parse(
            "mrose:{PLAIN}tanstaaf\n\
             b64:{PLAIN.b64}dGFuc3RhYWY=\n\
             hashed:{SHA256}K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols=\n\
             locked:{PLAIN}tanstaaf::::::nologin\n",
        );
        let ts = "<1896.697170952@dbc.mtview.ca.us>";
        let apop = |digest: &str| Credential::Apop {
            timestamp: ts.into(),
            digest_hex: digest.into(),
        };
        // RFC 1939 section 7 example.
        let good = "c4c9334bac560ecc979e58001b3e22fb";
        assert_eq!(ok_user(f.authenticate("mrose", &apop(good))).user, "mrose");
        assert!(matches!(
            f.authenticate("mrose", &apop(&good.to_uppercase())),
            AuthOutcome::Ok(_)
        ));
        assert!(matches!(
            f.authenticate("b64", &apop(good)),
            AuthOutcome::Ok(_)
        ));
        assert_eq!(
            f.authenticate("mrose", &apop("c4c9334bac560ecc979e58001b3e22fc")),
            AuthOutcome::Failed
        );
        // Hashed passwords cannot do APOP, even with the right digest.
        assert_eq!(
            f.authenticate("hashed", &apop(&scheme::apop_digest(ts, b"secret"))),
            AuthOutcome::Failed
        );
        assert_eq!(f.authenticate("locked", &apop(good)), AuthOutcome::Failed);
        assert_eq!(f.authenticate("nobody", &apop(good)), AuthOutcome::Failed);
    }

    #[test]
    fn timing_reference_is_the_dominant_scheme() {
        let f = parse(
            "a:{PLAIN}x\n\
             b:{BLF-CRYPT}$2y$04$0Ne81H86OeNCPOkzwZuIOOivpZng/X2xTd5u90ia1Jdq3PUbsB.Fi\n\
             c:{CRYPT}$2y$05$PE.aBREm5A.WeEKNKOnXwuiEqejPjvFadEUXE8PA2tGVlpFKfmQNq\n\
             d:{NOPE}x\n\
             e:{NOPE}y\n\
             f:{NOPE}z\n\
             g:\n",
        );
        assert_eq!(f.timing_reference.as_deref(), Some("b"));
        // Ties go to the scheme seen first.
        let f = parse("a:{PLAIN}x\nb:{SSHA}Du67+7gPGZILBY0XU/3YoMqa9o4uPfl9\n");
        assert_eq!(f.timing_reference.as_deref(), Some("a"));
        // Nothing usable: the built-in dummy, which is a SHA512-CRYPT hash.
        let f = parse("a:\nb:{NOPE}x\n");
        assert_eq!(f.timing_reference, None);
        let opts = PasswdOptions::default();
        assert_eq!(scheme::identify(dummy_hash(), &opts), Ok("SHA512-CRYPT"));
        assert_eq!(scheme::verify(dummy_hash(), b"guess", &opts), Ok(false));
        assert_eq!(f.authenticate("zed", &plain("guess")), AuthOutcome::Failed);
        assert_eq!(
            scheme::verify(DUMMY_FALLBACK, b"corepop timing dummy", &opts),
            Ok(true)
        );
    }

    #[test]
    fn debug_output_redacts_passwords() {
        let f = parse("alice:{PLAIN}hunter2:1000:1000\n");
        let shown = format!("{:?} {:?}", f, f.lookup("alice").unwrap());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn load_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(
            &path,
            "alice:{PLAIN}pw:1000:1000::/home/alice\nbad:x:nope\n",
        )
        .unwrap();
        let f = PasswdFile::load(&path, PasswdOptions::default()).unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f.path(), Some(path.as_path()));
        assert_eq!(f.warnings()[0].line, 2);
        assert!(matches!(
            f.authenticate("alice", &plain("pw")),
            AuthOutcome::Ok(_)
        ));

        let missing = dir.path().join("missing");
        let err = PasswdFile::load(&missing, PasswdOptions::default()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("cannot read passwd-file "), "{msg}");
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
        assert!(std::error::Error::source(&err).is_some());
    }

    #[test]
    fn warning_display() {
        let w = ParseWarning {
            line: 7,
            kind: ParseWarningKind::Duplicate {
                user: "alice".into(),
                first_line: 2,
            },
        };
        assert_eq!(
            w.to_string(),
            "line 7: user \"alice\" already defined on line 2; line skipped"
        );
    }
}
