//! Dovecot password schemes: parse a stored password, verify a candidate
//! against it, and make new hashes the way `doveadm pw -s SCHEME` does.
//!
//! A stored password is `{SCHEME}data` or a bare value. The scheme name is
//! case-insensitive and may carry an encoding suffix, `.b64`/`.base64` or
//! `.hex`, saying how `data` is encoded (`{PLAIN.b64}`, `{SHA256.hex}`).
//! Without a suffix a scheme's default encoding applies; for fixed-length
//! digests (SHA, SHA256, PLAIN-MD5 …) Dovecot guesses hex when the data is
//! exactly twice the digest length and base64 otherwise, and so do we.
//! Base64 is decoded like Dovecot 2.3's `base64_decode()`: spaces, tabs, CR
//! and LF are skipped, the `=` padding is required (SCRAM salts excepted:
//! Dovecot decodes those leniently).
//!
//! Bare values (Dovecot `password_get_scheme()`): `$1$salt$hash` is
//! MD5-CRYPT (anything after a further `$` is ignored); anything else uses the
//! configured default scheme, normally CRYPT, which dispatches on the crypt(3)
//! prefix (`$1$`, `$5$`, `$6$`, `$2a$`/`$2b$`/`$2x$`/`$2y$`) and falls back to
//! DES. So a bare `$argon2id$…` needs `{ARGON2ID}` (or that default scheme),
//! as in Dovecot, where crypt(3) cannot check it. DES-CRYPT, SHA256-CRYPT and
//! SHA512-CRYPT are, like CRYPT, crypt(3) in Dovecot: each accepts any of
//! these formats (`{SHA512-CRYPT}$5$…` verifies).
//!
//! Not supported (verification returns [`SchemeError::Unsupported`]):
//! DIGEST-MD5 (needs the login name), OTP, SKEY, LANMAN, NTLM, RPA, and
//! crypt(3) formats other than DES/`$1$`/`$2?$`/`$5$`/`$6$` (notably yescrypt
//! `$y$`, the Debian default for /etc/shadow since bullseye, which Dovecot
//! checks through libxcrypt).
//!
//! Rules that hold for every scheme:
//! - digest comparisons are constant-time (`subtle`);
//! - an empty candidate password, or one containing a NUL byte, never matches
//!   (Dovecot passwords are C strings; POP3 clients cannot send either
//!   meaningfully);
//! - errors never contain the stored hash or the candidate password.

use std::borrow::Cow;
use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use md4::Md4;
use md5::Md5;
use rand::rngs::OsRng;
use rand::{Rng, RngCore};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::PasswdOptions;

/// Why a stored password could not be checked (or a hash not made).
///
/// The `Display` form names the scheme and a fixed reason; it never contains
/// the stored hash or the password, so it is safe to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SchemeError {
    /// `{NAME}` is not a scheme Dovecot knows (or the encoding suffix is not
    /// `b64`/`base64`/`hex`). Holds a log-safe rendering of the name.
    Unknown(String),
    /// A real Dovecot scheme (or crypt(3) format) that corepop does not
    /// implement.
    Unsupported(String),
    /// The scheme is weak and [`PasswdOptions::allow_weak_schemes`] is off
    /// (Dovecot 2.4 `auth_allow_weak_schemes = no`).
    WeakRefused(&'static str),
    /// The stored data does not have the scheme's format.
    Malformed {
        /// Canonical scheme name.
        scheme: &'static str,
        /// What is wrong, in a few words.
        reason: &'static str,
    },
    /// Making a hash failed (bad rounds/cost, password not representable).
    Hashing {
        /// Canonical scheme name.
        scheme: &'static str,
        /// What is wrong, in a few words.
        reason: &'static str,
    },
}

impl fmt::Display for SchemeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchemeError::Unknown(name) => write!(f, "unknown password scheme {name}"),
            SchemeError::Unsupported(name) => {
                write!(f, "password scheme {name} is not supported")
            }
            SchemeError::WeakRefused(name) => write!(
                f,
                "weak password scheme {name} refused (allow_weak_schemes is off)"
            ),
            SchemeError::Malformed { scheme, reason } => {
                write!(f, "malformed {scheme} password: {reason}")
            }
            SchemeError::Hashing { scheme, reason } => {
                write!(f, "cannot hash with {scheme}: {reason}")
            }
        }
    }
}

impl std::error::Error for SchemeError {}

/// How `data` after `{SCHEME}` is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Enc {
    None,
    B64,
    Hex,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alg {
    /// PLAIN-MD4 only (RFC 1320).
    Md4,
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl Alg {
    fn len(self) -> usize {
        match self {
            Alg::Md4 | Alg::Md5 => 16,
            Alg::Sha1 => 20,
            Alg::Sha256 => 32,
            Alg::Sha512 => 64,
        }
    }

    /// Digest of the concatenation of `parts`.
    fn digest(self, parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        fn run<D: Digest>(parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            Zeroizing::new(d.finalize().to_vec())
        }
        match self {
            Alg::Md4 => run::<Md4>(parts),
            Alg::Md5 => run::<Md5>(parts),
            Alg::Sha1 => run::<Sha1>(parts),
            Alg::Sha256 => run::<Sha256>(parts),
            Alg::Sha512 => run::<Sha512>(parts),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Cleartext.
    Plain,
    /// `<len>-<password>`: a password stored truncated to `len` bytes.
    PlainTrunc,
    /// Unsalted digest of the password.
    Digest(Alg),
    /// digest(password ‖ salt) ‖ salt.
    Salted(Alg),
    /// Dovecot's "MD5": MD5-CRYPT if `$1$`, else PLAIN-MD5.
    Md5Any,
    Md5Crypt,
    /// crypt(3): dispatch on the prefix.
    Crypt,
    DesCrypt,
    Sha256Crypt,
    Sha512Crypt,
    BlfCrypt,
    Argon2i,
    Argon2id,
    /// `iter,salt,StoredKey,ServerKey` (RFC 5802 verifier).
    Scram(Alg),
    /// `$1$salt$rounds$hex` (PBKDF2-HMAC-SHA1, 20 bytes).
    Pbkdf2,
    /// HMAC-MD5 inner/outer states (RFC 2104 §4 precomputation).
    CramMd5,
    Unsupported,
}

#[derive(Debug)]
struct SchemeDef {
    name: &'static str,
    kind: Kind,
    enc: Enc,
    /// Expected decoded length, 0 if variable.
    raw_len: usize,
    /// Refused when `allow_weak_schemes` is off (Dovecot 2.4's list).
    weak: bool,
}

const fn def(name: &'static str, kind: Kind, enc: Enc, raw_len: usize, weak: bool) -> SchemeDef {
    SchemeDef {
        name,
        kind,
        enc,
        raw_len,
        weak,
    }
}

/// Every scheme name Dovecot 2.3/2.4 registers, with its default encoding,
/// raw length and weak flag as in Dovecot's password-scheme.c.
static SCHEMES: &[SchemeDef] = &[
    def("PLAIN", Kind::Plain, Enc::None, 0, false),
    def("CLEAR", Kind::Plain, Enc::None, 0, false),
    def("CLEARTEXT", Kind::Plain, Enc::None, 0, false),
    def("PLAIN-TRUNC", Kind::PlainTrunc, Enc::None, 0, false),
    def("PLAIN-MD5", Kind::Digest(Alg::Md5), Enc::Hex, 16, true),
    def("LDAP-MD5", Kind::Digest(Alg::Md5), Enc::B64, 16, true),
    def("MD5", Kind::Md5Any, Enc::None, 0, true),
    def("MD5-CRYPT", Kind::Md5Crypt, Enc::None, 0, true),
    def("SMD5", Kind::Salted(Alg::Md5), Enc::B64, 0, true),
    def("SHA", Kind::Digest(Alg::Sha1), Enc::B64, 20, false),
    def("SHA1", Kind::Digest(Alg::Sha1), Enc::B64, 20, false),
    def("SHA256", Kind::Digest(Alg::Sha256), Enc::B64, 32, false),
    def("SHA512", Kind::Digest(Alg::Sha512), Enc::B64, 64, false),
    def("SSHA", Kind::Salted(Alg::Sha1), Enc::B64, 0, false),
    def("SSHA256", Kind::Salted(Alg::Sha256), Enc::B64, 0, false),
    def("SSHA512", Kind::Salted(Alg::Sha512), Enc::B64, 0, false),
    def("CRYPT", Kind::Crypt, Enc::None, 0, false),
    def("DES-CRYPT", Kind::DesCrypt, Enc::None, 0, true),
    def("SHA256-CRYPT", Kind::Sha256Crypt, Enc::None, 0, false),
    def("SHA512-CRYPT", Kind::Sha512Crypt, Enc::None, 0, false),
    def("BLF-CRYPT", Kind::BlfCrypt, Enc::None, 0, false),
    def("ARGON2I", Kind::Argon2i, Enc::None, 0, false),
    def("ARGON2ID", Kind::Argon2id, Enc::None, 0, false),
    def("SCRAM-SHA-1", Kind::Scram(Alg::Sha1), Enc::None, 0, false),
    def(
        "SCRAM-SHA-256",
        Kind::Scram(Alg::Sha256),
        Enc::None,
        0,
        false,
    ),
    def("PBKDF2", Kind::Pbkdf2, Enc::None, 0, false),
    def("CRAM-MD5", Kind::CramMd5, Enc::Hex, 32, false),
    // Dovecot's HMAC-MD5 is the same as CRAM-MD5 (same generate function).
    def("HMAC-MD5", Kind::CramMd5, Enc::Hex, 32, true),
    def("DIGEST-MD5", Kind::Unsupported, Enc::Hex, 16, false),
    def("PLAIN-MD4", Kind::Digest(Alg::Md4), Enc::Hex, 16, true),
    def("LANMAN", Kind::Unsupported, Enc::Hex, 16, true),
    def("NTLM", Kind::Unsupported, Enc::Hex, 16, true),
    def("OTP", Kind::Unsupported, Enc::None, 0, false),
    def("SKEY", Kind::Unsupported, Enc::None, 0, true),
    def("RPA", Kind::Unsupported, Enc::Hex, 16, true),
];

static SUPPORTED: &[&str] = &[
    "PLAIN",
    "CLEAR",
    "CLEARTEXT",
    "PLAIN-TRUNC",
    "PLAIN-MD5",
    "LDAP-MD5",
    "MD5",
    "MD5-CRYPT",
    "SMD5",
    "SHA",
    "SHA1",
    "SHA256",
    "SHA512",
    "SSHA",
    "SSHA256",
    "SSHA512",
    "CRYPT",
    "DES-CRYPT",
    "SHA256-CRYPT",
    "SHA512-CRYPT",
    "BLF-CRYPT",
    "ARGON2I",
    "ARGON2ID",
    "SCRAM-SHA-1",
    "SCRAM-SHA-256",
    "PBKDF2",
    "CRAM-MD5",
    "HMAC-MD5",
    "PLAIN-MD4",
];

/// Canonical names of the schemes [`verify`] can check (most can also be
/// produced by [`hash`]; PLAIN-TRUNC cannot).
pub fn supported() -> &'static [&'static str] {
    SUPPORTED
}

fn lookup_def(name: &str) -> Option<&'static SchemeDef> {
    SCHEMES.iter().find(|d| d.name.eq_ignore_ascii_case(name))
}

fn def_of(kind: Kind) -> &'static SchemeDef {
    SCHEMES
        .iter()
        .find(|d| d.kind == kind)
        .expect("every dispatch target is in SCHEMES")
}

/// A name that is safe to put in a log line: scheme-name characters only,
/// otherwise just its length (a `{...}` prefix could in theory be part of a
/// cleartext password).
fn loggable_name(name: &str) -> String {
    let looks_like_scheme = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if looks_like_scheme {
        format!("{{{name}}}")
    } else {
        format!("<{} bytes>", name.len())
    }
}

/// `NAME[.enc]` → scheme and explicit encoding.
fn lookup_scheme(full: &str) -> Result<(&'static SchemeDef, Option<Enc>), SchemeError> {
    let (name, enc) = match full.split_once('.') {
        Some((n, e)) => (n, Some(e)),
        None => (full, None),
    };
    let unknown = || SchemeError::Unknown(loggable_name(full));
    let def = lookup_def(name).ok_or_else(unknown)?;
    let enc = match enc {
        None => None,
        Some(e) if e.eq_ignore_ascii_case("b64") || e.eq_ignore_ascii_case("base64") => {
            Some(Enc::B64)
        }
        Some(e) if e.eq_ignore_ascii_case("hex") => Some(Enc::Hex),
        Some(_) => return Err(unknown()),
    };
    Ok((def, enc))
}

/// A stored password split into scheme and data.
struct Parsed<'a> {
    def: &'static SchemeDef,
    explicit_enc: Option<Enc>,
    data: &'a str,
}

fn parse_stored<'a>(stored: &'a str, default_scheme: &str) -> Result<Parsed<'a>, SchemeError> {
    // Dovecot password_get_scheme(): "$1$<salt>$<hash>[$<ignored>]".
    if let Some(rest) = stored.strip_prefix("$1$") {
        if let Some(p) = rest.find('$') {
            let after = &rest[p + 1..];
            let end = 3 + p + 1 + after.find('$').unwrap_or(after.len());
            return Ok(Parsed {
                def: def_of(Kind::Md5Crypt),
                explicit_enc: None,
                data: &stored[..end],
            });
        }
    }
    if let Some(rest) = stored.strip_prefix('{') {
        if let Some(close) = rest.find('}') {
            let (def, explicit_enc) = lookup_scheme(&rest[..close])?;
            return Ok(Parsed {
                def,
                explicit_enc,
                data: &rest[close + 1..],
            });
        }
    }
    // Any other bare value ($6$…, $2y$…, $argon2id$…, DES) is the default
    // scheme's: CRYPT (the usual default) then dispatches on the prefix.
    let (def, explicit_enc) = lookup_scheme(default_scheme)?;
    Ok(Parsed {
        def,
        explicit_enc,
        data: stored,
    })
}

fn is_bcrypt_prefix(s: &[u8]) -> bool {
    s.len() > 4
        && s[0] == b'$'
        && s[1] == b'2'
        && matches!(s[2], b'a' | b'b' | b'x' | b'y')
        && s[3] == b'$'
}

/// Standard base64 as Dovecot 2.3's `base64_decode()` takes it: padding
/// required, non-zero trailing bits accepted.
const B64_DOVECOT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// Like [`B64_DOVECOT`] with the padding optional: for SCRAM salts, which
/// Dovecot decodes with `t_base64_decode_str()`, ignoring a missing `=`.
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decode base64 the way Dovecot does: spaces, tabs, CRs and LFs anywhere
/// are skipped (`doveadm pw -t '{SHA}h0Vy56Wu aklG…='` verifies).
fn b64_decode(engine: &GeneralPurpose, data: &str) -> Option<Vec<u8>> {
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\r' | b'\n');
    if data.bytes().any(is_space) {
        let compact = Zeroizing::new(data.bytes().filter(|&b| !is_space(b)).collect::<Vec<u8>>());
        engine.decode(&*compact).ok()
    } else {
        engine.decode(data).ok()
    }
}

/// A decimal number as Dovecot's `str_to_uint()` takes it: digits only (no
/// sign, no spaces), no overflow. Also the passwd-file's uid/gid rule.
pub(super) fn parse_uint(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Dovecot password_decode().
fn decode<'a>(
    def: &'static SchemeDef,
    explicit: Option<Enc>,
    data: &'a str,
) -> Result<Cow<'a, [u8]>, SchemeError> {
    let malformed = |reason| SchemeError::Malformed {
        scheme: def.name,
        reason,
    };
    let enc = explicit.unwrap_or(def.enc);
    let guessed = explicit.is_none() && enc != Enc::None && def.raw_len != 0;
    let raw: Cow<'a, [u8]> = match enc {
        Enc::None => Cow::Borrowed(data.as_bytes()),
        Enc::Hex if !guessed => {
            Cow::Owned(hex::decode(data).map_err(|_| malformed("invalid hex encoding"))?)
        }
        Enc::Hex | Enc::B64 => {
            // Explicit hex was handled above; a guess prefers hex when the
            // length fits and falls back to base64, as Dovecot does.
            let try_hex = guessed && data.len() == def.raw_len * 2;
            match try_hex.then(|| hex::decode(data).ok()).flatten() {
                Some(v) => Cow::Owned(v),
                None => Cow::Owned(
                    b64_decode(&B64_DOVECOT, data).ok_or(malformed("invalid base64 encoding"))?,
                ),
            }
        }
    };
    if def.raw_len != 0 && raw.len() != def.raw_len {
        return Err(malformed("wrong length"));
    }
    Ok(raw)
}

fn as_str<'a>(scheme: &'static str, raw: &'a [u8]) -> Result<&'a str, SchemeError> {
    std::str::from_utf8(raw).map_err(|_| SchemeError::Malformed {
        scheme,
        reason: "not UTF-8",
    })
}

/// Schemes that are crypt(3) in Dovecot (password-scheme-crypt.c registers
/// DES-CRYPT, SHA256-CRYPT and SHA512-CRYPT with the same verify function as
/// CRYPT): the data's prefix, not the scheme name, picks the algorithm.
fn is_crypt3(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Crypt | Kind::DesCrypt | Kind::Sha256Crypt | Kind::Sha512Crypt
    )
}

/// Resolve crypt(3) data ([`is_crypt3`]) to the concrete algorithm.
/// `None` means "empty data": nothing matches it.
fn crypt_target(data: &[u8]) -> Result<Option<Kind>, SchemeError> {
    if data.is_empty() {
        return Ok(None);
    }
    if is_bcrypt_prefix(data) {
        return Ok(Some(Kind::BlfCrypt));
    }
    if data.starts_with(b"$1$") {
        return Ok(Some(Kind::Md5Crypt));
    }
    if data.starts_with(b"$5$") {
        return Ok(Some(Kind::Sha256Crypt));
    }
    if data.starts_with(b"$6$") {
        return Ok(Some(Kind::Sha512Crypt));
    }
    if data[0] == b'$' {
        let id = data[1..].split(|&b| b == b'$').next().unwrap_or_default();
        let id = String::from_utf8_lossy(id);
        return Err(SchemeError::Unsupported(format!(
            "CRYPT({})",
            loggable_name(&id)
        )));
    }
    if data[0] == b'_' {
        return Err(SchemeError::Unsupported("CRYPT(BSDi extended DES)".into()));
    }
    Ok(Some(Kind::DesCrypt))
}

/// The canonical name of the scheme `stored` uses, after resolving bare
/// values, the default scheme and CRYPT's prefix dispatch (so
/// `{CRYPT}$6$…` reports `SHA512-CRYPT` and a DES hash `DES-CRYPT`).
///
/// Checks only the scheme, not that the data is well-formed.
pub fn identify(stored: &str, opts: &PasswdOptions) -> Result<&'static str, SchemeError> {
    let p = parse_stored(stored, &opts.default_scheme)?;
    match p.def.kind {
        k if is_crypt3(k) && p.explicit_enc.is_none() => match crypt_target(p.data.as_bytes())? {
            Some(Kind::DesCrypt) | None => Ok(def_of(Kind::DesCrypt).name),
            Some(k) => Ok(def_of(k).name),
        },
        Kind::Unsupported => Err(SchemeError::Unsupported(p.def.name.into())),
        _ => Ok(p.def.name),
    }
}

/// Whether `stored` uses a scheme that Dovecot 2.4 counts as weak
/// (MD5-based, DES). `Err` as for [`identify`].
pub fn is_weak(stored: &str, opts: &PasswdOptions) -> Result<bool, SchemeError> {
    let name = identify(stored, opts)?;
    Ok(lookup_def(name).is_some_and(|d| d.weak))
}

/// Check `password` against the stored password `stored`.
///
/// `Ok(false)` is a mismatch; `Err` means the stored password cannot be
/// checked at all (unknown/unsupported/weak-refused scheme, malformed data).
pub fn verify(stored: &str, password: &[u8], opts: &PasswdOptions) -> Result<bool, SchemeError> {
    let matched = run(stored, Some(password), opts)?.1;
    // Decided after the work is done, so that these cases cost the same.
    Ok(matched && !password.is_empty() && !password.contains(&0))
}

/// Check, without hashing anything, that `stored` could be verified: known
/// and supported scheme, not weak-refused, data of the right shape. Returns
/// the canonical scheme name as [`identify`] does. Cheap enough to run on
/// every line of a passwd-file at load time.
pub fn check(stored: &str, opts: &PasswdOptions) -> Result<&'static str, SchemeError> {
    Ok(run(stored, None, opts)?.0)
}

/// Parse, decode, dispatch, and (with a password) verify.
fn run(
    stored: &str,
    password: Option<&[u8]>,
    opts: &PasswdOptions,
) -> Result<(&'static str, bool), SchemeError> {
    let p = parse_stored(stored, &opts.default_scheme)?;
    if p.def.weak && !opts.allow_weak_schemes {
        return Err(SchemeError::WeakRefused(p.def.name));
    }
    let raw = Zeroizing::new(decode(p.def, p.explicit_enc, p.data)?.into_owned());
    let mut def = p.def;
    if is_crypt3(def.kind) {
        match crypt_target(&raw)? {
            // Empty crypt data: crypt(3) would "match" it; Dovecot refuses.
            None => return Ok((def_of(Kind::DesCrypt).name, false)),
            Some(k) => {
                def = def_of(k);
                if def.weak && !opts.allow_weak_schemes {
                    return Err(SchemeError::WeakRefused(def.name));
                }
            }
        }
    }
    let matched = verify_kind(def.kind, def.name, &raw, password)?;
    Ok((def.name, matched))
}

/// Parse `raw` for `kind`; with `Some(password)` also verify it, with `None`
/// stop after parsing and return `Ok(true)`.
fn verify_kind(
    kind: Kind,
    scheme: &'static str,
    raw: &[u8],
    password: Option<&[u8]>,
) -> Result<bool, SchemeError> {
    let malformed = |reason| SchemeError::Malformed { scheme, reason };
    match kind {
        Kind::Plain => Ok(password.is_none_or(|pw| ct_eq(raw, pw))),
        Kind::PlainTrunc => {
            // Dovecot plain_trunc_verify(): digits (possibly none: length 0)
            // then '-'.
            let dash = raw
                .iter()
                .position(|&b| !b.is_ascii_digit())
                .filter(|&i| raw[i] == b'-')
                .ok_or(malformed("missing <length>- prefix"))?;
            let trunc_len: usize = match &raw[..dash] {
                [] => 0,
                digits => std::str::from_utf8(digits)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(malformed("bad length"))?,
            };
            let Some(password) = password else {
                return Ok(true);
            };
            let stored = &raw[dash + 1..];
            if stored.len() == trunc_len && password.len() >= trunc_len {
                // Possibly truncated when stored: the prefix must match.
                Ok(ct_eq(stored, &password[..trunc_len]))
            } else {
                Ok(ct_eq(stored, password))
            }
        }
        Kind::Digest(alg) => Ok(password.is_none_or(|pw| ct_eq(&alg.digest(&[pw]), raw))),
        Kind::Salted(alg) => {
            if raw.len() <= alg.len() {
                return Err(malformed("too short"));
            }
            let (digest, salt) = raw.split_at(alg.len());
            Ok(password.is_none_or(|pw| ct_eq(&alg.digest(&[pw, salt]), digest)))
        }
        Kind::Md5Any => {
            if raw.starts_with(b"$1$") {
                verify_kind(Kind::Md5Crypt, "MD5-CRYPT", raw, password)
            } else {
                let md5 = def_of(Kind::Digest(Alg::Md5));
                let digest = decode(md5, None, as_str(scheme, raw)?)
                    .map_err(|_| malformed("neither MD5-CRYPT nor PLAIN-MD5"))?;
                Ok(password.is_none_or(|pw| ct_eq(&Alg::Md5.digest(&[pw]), &digest)))
            }
        }
        Kind::Md5Crypt => {
            let malformed = |reason| SchemeError::Malformed {
                scheme: "MD5-CRYPT",
                reason,
            };
            let s = as_str("MD5-CRYPT", raw)?;
            let body = s
                .strip_prefix("$1$")
                .ok_or(malformed("missing $1$ prefix"))?;
            let (salt, hash) = body.split_once('$').ok_or(malformed("missing hash"))?;
            if salt.len() > 8 || !is_crypt_b64(salt) || hash.len() != 22 || !is_crypt_b64(hash) {
                return Err(malformed("not $1$<salt>$<22 characters>"));
            }
            let Some(password) = password else {
                return Ok(true);
            };
            #[allow(deprecated)] // pwhash marks MD5-CRYPT deprecated for *new* hashes
            let computed =
                pwhash::md5_crypt::hash_with(s, password).map_err(|_| malformed("invalid salt"))?;
            Ok(ct_eq(computed.as_bytes(), s.as_bytes()))
        }
        Kind::DesCrypt => {
            let s = as_str("DES-CRYPT", raw)?;
            let bad = SchemeError::Malformed {
                scheme: "DES-CRYPT",
                reason: "not a 13-character DES crypt hash",
            };
            if s.len() != 13 || !is_crypt_b64(s) {
                return Err(bad);
            }
            let Some(password) = password else {
                return Ok(true);
            };
            #[allow(deprecated)] // pwhash marks DES deprecated for *new* hashes
            let computed = pwhash::unix_crypt::hash_with(s, password).map_err(|_| bad)?;
            Ok(ct_eq(computed.as_bytes(), s.as_bytes()))
        }
        Kind::Sha256Crypt => sha_crypt_verify(false, raw, password),
        Kind::Sha512Crypt => sha_crypt_verify(true, raw, password),
        Kind::BlfCrypt => {
            let s = as_str("BLF-CRYPT", raw)?;
            check_bcrypt(s)?;
            let Some(password) = password else {
                return Ok(true);
            };
            bcrypt::verify(password, s).map_err(|_| SchemeError::Malformed {
                scheme: "BLF-CRYPT",
                reason: "invalid bcrypt hash",
            })
        }
        Kind::Argon2i | Kind::Argon2id => argon2_verify(scheme, raw, password),
        Kind::Scram(alg) => scram_verify(scheme, alg, raw, password),
        Kind::Pbkdf2 => pbkdf2_verify(raw, password),
        Kind::CramMd5 => Ok(password.is_none_or(|pw| ct_eq(&cram_md5_context(pw)[..], raw))),
        Kind::Crypt => unreachable!("CRYPT is dispatched before verify_kind"),
        Kind::Unsupported => Err(SchemeError::Unsupported(scheme.into())),
    }
}

/// Constant-time equality (length is not secret).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Only characters of the crypt(3) base64 alphabet.
fn is_crypt_b64(s: &str) -> bool {
    s.bytes().all(|b| SALT_CHARS.contains(&b))
}

/// `$2y$NN$` + 22 salt + 31 hash characters, cost 4..=31.
fn check_bcrypt(s: &str) -> Result<(), SchemeError> {
    let malformed = |reason| SchemeError::Malformed {
        scheme: "BLF-CRYPT",
        reason,
    };
    let b = s.as_bytes();
    if b.len() != 60 || !is_bcrypt_prefix(b) || b[6] != b'$' {
        return Err(malformed("not $2?$NN$<53 characters>"));
    }
    let cost: u32 = s[4..6].parse().map_err(|_| malformed("bad cost"))?;
    if !(4..=31).contains(&cost) {
        return Err(malformed("cost out of range"));
    }
    if !is_crypt_b64(&s[7..]) {
        return Err(malformed("invalid characters"));
    }
    Ok(())
}

// ---------------------------------------------------------------- SHA-crypt

const SHA_CRYPT_ROUNDS_DEFAULT: usize = 5_000;

/// `$6$[rounds=N$]salt$hash` / `$5$…`: recompute what crypt(3) would output
/// for this setting and compare the whole string, as Dovecot does.
fn sha_crypt_verify(is512: bool, raw: &[u8], password: Option<&[u8]>) -> Result<bool, SchemeError> {
    let scheme = if is512 {
        "SHA512-CRYPT"
    } else {
        "SHA256-CRYPT"
    };
    let malformed = |reason| SchemeError::Malformed { scheme, reason };
    let s = as_str(scheme, raw)?;
    let prefix = if is512 { "$6$" } else { "$5$" };
    let body = s.strip_prefix(prefix).ok_or(malformed("wrong prefix"))?;
    let (rounds, explicit_rounds, rest) = match body.strip_prefix("rounds=") {
        Some(r) => {
            let (n, rest) = r.split_once('$').ok_or(malformed("bad rounds="))?;
            let n: usize = n.parse().map_err(|_| malformed("bad rounds="))?;
            // libxcrypt refuses out-of-range rounds (old glibc clamped and
            // printed the clamped value, so such a string never verified).
            if !(sha_crypt::ROUNDS_MIN..=sha_crypt::ROUNDS_MAX).contains(&n) {
                return Err(malformed("rounds out of range"));
            }
            (n, true, rest)
        }
        None => (SHA_CRYPT_ROUNDS_DEFAULT, false, body),
    };
    let (salt, hash) = rest.split_once('$').ok_or(malformed("missing hash"))?;
    let want_len = if is512 { 86 } else { 43 };
    if hash.len() != want_len || !is_crypt_b64(hash) {
        return Err(malformed("wrong hash length"));
    }
    let Some(password) = password else {
        return Ok(true);
    };
    let computed = sha_crypt_string(is512, password, salt.as_bytes(), rounds, explicit_rounds)?;
    Ok(ct_eq(computed.as_bytes(), s.as_bytes()))
}

/// What crypt(3) outputs for this password and setting.
fn sha_crypt_string(
    is512: bool,
    password: &[u8],
    salt: &[u8],
    rounds: usize,
    explicit_rounds: bool,
) -> Result<Zeroizing<String>, SchemeError> {
    let scheme = if is512 {
        "SHA512-CRYPT"
    } else {
        "SHA256-CRYPT"
    };
    let salt = &salt[..salt.len().min(16)];
    let bad_rounds = SchemeError::Malformed {
        scheme,
        reason: "rounds out of range",
    };
    let hash = if is512 {
        let params = sha_crypt::Sha512Params::new(rounds).map_err(|_| bad_rounds)?;
        sha_crypt::sha512_crypt_b64(password, salt, &params)
    } else {
        let params = sha_crypt::Sha256Params::new(rounds).map_err(|_| bad_rounds)?;
        sha_crypt::sha256_crypt_b64(password, salt, &params)
    }
    .map_err(|_| SchemeError::Malformed {
        scheme,
        reason: "cannot compute",
    })?;
    let mut out = Zeroizing::new(String::with_capacity(130));
    out.push_str(if is512 { "$6$" } else { "$5$" });
    if explicit_rounds {
        out.push_str(&format!("rounds={rounds}$"));
    }
    // The salt came from a &str and was cut at a byte boundary; crypt salts
    // are ASCII, anything else cannot have been produced by crypt(3).
    out.push_str(&String::from_utf8_lossy(salt));
    out.push('$');
    out.push_str(&hash);
    Ok(out)
}

// ------------------------------------------------------------------ Argon2

fn argon2_verify(
    scheme: &'static str,
    raw: &[u8],
    password: Option<&[u8]>,
) -> Result<bool, SchemeError> {
    use argon2::password_hash::{Error as PhError, PasswordHash, PasswordVerifier};
    let malformed = |reason| SchemeError::Malformed { scheme, reason };
    let s = as_str(scheme, raw)?;
    let parsed = PasswordHash::new(s).map_err(|_| malformed("not a PHC string"))?;
    if parsed.algorithm.as_str() != "argon2i" && parsed.algorithm.as_str() != "argon2id" {
        return Err(malformed("not argon2i/argon2id"));
    }
    if parsed.salt.is_none() || parsed.hash.is_none() {
        return Err(malformed("missing salt or hash"));
    }
    argon2::Params::try_from(&parsed).map_err(|_| malformed("invalid argon2 parameters"))?;
    let Some(password) = password else {
        return Ok(true);
    };
    match argon2::Argon2::default().verify_password(password, &parsed) {
        Ok(()) => Ok(true),
        Err(PhError::Password) => Ok(false),
        Err(_) => Err(malformed("invalid argon2 parameters")),
    }
}

// ------------------------------------------------------- HMAC, PBKDF2, SCRAM

/// HMAC (the `hmac` crate) of the concatenation of `parts`, with SHA-1 or SHA-256.
fn hmac(alg: ScramAlg, key: &[u8], parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    fn run<M: Mac + KeyInit>(key: &[u8], parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
        let mut m = <M as Mac>::new_from_slice(key).expect("HMAC takes keys of any length");
        for p in parts {
            m.update(p);
        }
        Zeroizing::new(m.finalize().into_bytes().to_vec())
    }
    match alg {
        ScramAlg::Sha1 => run::<Hmac<Sha1>>(key, parts),
        ScramAlg::Sha256 => run::<Hmac<Sha256>>(key, parts),
    }
}

/// PBKDF2-HMAC (the `pbkdf2` crate), one hash-sized block: SCRAM's
/// `Hi(password, salt, iterations)` and Dovecot's PBKDF2 scheme (SHA-1).
fn hi(alg: ScramAlg, password: &[u8], salt: &[u8], iterations: u32) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(vec![0u8; alg.len()]);
    match alg {
        ScramAlg::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out),
        ScramAlg::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
    }
    out
}

const SCRAM_MIN_ITERATIONS: u32 = 4096;
const SCRAM_MAX_ITERATIONS: u32 = i32::MAX as u32;

/// `(StoredKey, ServerKey)` for a SCRAM verifier (`alg` SHA-1, otherwise SHA-256).
fn scram_keys(
    alg: Alg,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
) -> (Zeroizing<Vec<u8>>, Zeroizing<Vec<u8>>) {
    let alg = if alg == Alg::Sha1 {
        ScramAlg::Sha1
    } else {
        ScramAlg::Sha256
    };
    let salted = hi(alg, password, salt, iterations);
    let client_key = hmac(alg, &salted, &[b"Client Key"]);
    let stored_key = alg.alg().digest(&[&client_key]);
    let server_key = hmac(alg, &salted, &[b"Server Key"]);
    (stored_key, server_key)
}

fn scram_verify(
    scheme: &'static str,
    alg: Alg,
    raw: &[u8],
    password: Option<&[u8]>,
) -> Result<bool, SchemeError> {
    let s = as_str(scheme, raw)?;
    let f = parse_scram(alg, s).map_err(|reason| SchemeError::Malformed { scheme, reason })?;
    let Some(password) = password else {
        return Ok(true);
    };
    let (computed, _) = scram_keys(alg, password, &f.salt, f.iterations);
    Ok(ct_eq(&computed, &f.stored_key))
}

/// The fields of a stored SCRAM verifier.
struct ScramFields {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Zeroizing<Vec<u8>>,
    server_key: Zeroizing<Vec<u8>>,
}

/// `iter,salt,StoredKey,ServerKey` as Dovecot's scram_scheme_parse() takes
/// it: a plain decimal iteration count in range, keys in (padded) base64 of
/// the hash's length; the salt is decoded leniently, as Dovecot does.
fn parse_scram(alg: Alg, s: &str) -> Result<ScramFields, &'static str> {
    let fields: Vec<&str> = s.split(',').collect();
    let [iter, salt, stored_key, server_key] = fields[..] else {
        return Err("expected iter,salt,StoredKey,ServerKey");
    };
    let iterations = parse_uint(iter).ok_or("bad iteration count")?;
    if !(SCRAM_MIN_ITERATIONS..=SCRAM_MAX_ITERATIONS).contains(&iterations) {
        return Err("iteration count out of range");
    }
    let key = |f: &str| {
        b64_decode(&B64_DOVECOT, f)
            .filter(|k| k.len() == alg.len())
            .map(Zeroizing::new)
    };
    Ok(ScramFields {
        iterations,
        salt: b64_decode(&B64_LENIENT, salt).ok_or("bad salt")?,
        stored_key: key(stored_key).ok_or("bad StoredKey")?,
        server_key: key(server_key).ok_or("bad ServerKey")?,
    })
}

const PBKDF2_ROUNDS_DEFAULT: u32 = 5_000;

/// Dovecot PBKDF2: `$1$<salt>$<rounds>$<40 hex>`, PBKDF2-HMAC-SHA1 over the
/// salt *string*, 20 bytes.
fn pbkdf2_verify(raw: &[u8], password: Option<&[u8]>) -> Result<bool, SchemeError> {
    let malformed = |reason| SchemeError::Malformed {
        scheme: "PBKDF2",
        reason,
    };
    let s = as_str("PBKDF2", raw)?;
    let body = s
        .strip_prefix("$1$")
        .ok_or(malformed("missing $1$ prefix"))?;
    let fields: Vec<&str> = body.split('$').collect();
    let [salt, rounds, hash_hex] = fields[..] else {
        return Err(malformed("expected $1$salt$rounds$hash"));
    };
    // Dovecot's str_to_uint(): digits only. (Dovecot takes 0 too, then its
    // PBKDF2 fails and leaves an all-zero key; that is refused here.)
    let rounds: u32 = parse_uint(rounds)
        .filter(|&r| r > 0)
        .ok_or(malformed("bad rounds"))?;
    let want = hex::decode(hash_hex)
        .ok()
        .filter(|h| h.len() == 20)
        .ok_or(malformed("hash is not 40 hex digits"))?;
    let Some(password) = password else {
        return Ok(true);
    };
    let got = hi(ScramAlg::Sha1, password, salt.as_bytes(), rounds);
    Ok(ct_eq(&got, &want))
}

// ----------------------------------------------------------------- CRAM-MD5

/// MD5's initial state (RFC 1321 §3.3).
const MD5_IV: [u32; 4] = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476];

/// The MD5 state after one block: what Dovecot's `{CRAM-MD5}` stores (the HMAC-MD5 inner
/// and outer states). md-5 0.10's `Md5` does not expose its state; 0.11's block function
/// (`md5_block`) takes one.
fn md5_state_after(block: &[u8; 64]) -> [u32; 4] {
    let mut state = MD5_IV;
    md5_block::block_api::compress(&mut state, std::slice::from_ref(block));
    state
}

/// MD5 of (one 64-byte block already absorbed into `state`) ‖ `data`.
fn md5_continue(mut state: [u32; 4], data: &[u8]) -> [u8; 16] {
    let total_bits = ((64 + data.len()) as u64).wrapping_mul(8);
    let mut tail = Zeroizing::new(data.to_vec());
    tail.push(0x80);
    while tail.len() % 64 != 56 {
        tail.push(0);
    }
    tail.extend_from_slice(&total_bits.to_le_bytes());
    let (blocks, rest) = tail.as_chunks::<64>();
    debug_assert!(rest.is_empty());
    md5_block::block_api::compress(&mut state, blocks);
    let mut out = [0u8; 16];
    for (i, w) in state.iter().enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// HMAC-MD5(password, challenge) from a CRAM-MD5 context (outer then inner state).
fn cram_md5_from_context(context: &[u8; 32], challenge: &[u8]) -> [u8; 16] {
    let word = |i: usize| {
        u32::from_le_bytes([
            context[4 * i],
            context[4 * i + 1],
            context[4 * i + 2],
            context[4 * i + 3],
        ])
    };
    let outer = [word(0), word(1), word(2), word(3)];
    let inner = [word(4), word(5), word(6), word(7)];
    let ih = md5_continue(inner, challenge);
    md5_continue(outer, &ih)
}

/// Whether `stored` can answer a CRAM-MD5 challenge: a plaintext equivalent or a
/// `{CRAM-MD5}` context.
pub fn cram_md5_capable(stored: &str, opts: &PasswdOptions) -> bool {
    cram_md5_context_of(stored, opts).is_some()
}

fn cram_md5_context_of(stored: &str, opts: &PasswdOptions) -> Option<Zeroizing<[u8; 32]>> {
    if let Some(plain) = plaintext_equivalent_with(stored, opts) {
        let plain = Zeroizing::new(plain);
        if plain.is_empty() || plain.contains(&0) {
            return None;
        }
        return Some(cram_md5_context(&plain));
    }
    let p = parse_stored(stored, &opts.default_scheme).ok()?;
    // {CRAM-MD5} or its alias {HMAC-MD5} (weak in Dovecot 2.4).
    if p.def.kind != Kind::CramMd5 || (p.def.weak && !opts.allow_weak_schemes) {
        return None;
    }
    let raw = Zeroizing::new(decode(p.def, p.explicit_enc, p.data).ok()?.into_owned());
    let mut ctx = Zeroizing::new([0u8; 32]);
    if raw.len() != 32 {
        return None;
    }
    ctx.copy_from_slice(&raw);
    Some(ctx)
}

/// Check a CRAM-MD5 response (RFC 2195): `digest_hex` is HMAC-MD5(secret, challenge) in hex,
/// compared case-insensitively in constant time. `None` when `stored` cannot answer
/// CRAM-MD5 (neither plaintext-equivalent nor `{CRAM-MD5}`).
pub fn cram_md5_verify(
    stored: &str,
    challenge: &str,
    digest_hex: &str,
    opts: &PasswdOptions,
) -> Option<bool> {
    let ctx = cram_md5_context_of(stored, opts)?;
    let want = cram_md5_from_context(&ctx, challenge.as_bytes());
    Some(match hex::decode(digest_hex) {
        Ok(got) => ct_eq(&got, &want),
        Err(_) => false,
    })
}

/// The RFC 2195 digest for a cleartext password (for clients and tests).
pub fn cram_md5_digest(password: &[u8], challenge: &str) -> String {
    hex::encode(cram_md5_from_context(
        &cram_md5_context(password),
        challenge.as_bytes(),
    ))
}

// ------------------------------------------------------------------- SCRAM (SASL)

/// The hash of a SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScramAlg {
    Sha1,
    Sha256,
}

impl ScramAlg {
    fn alg(self) -> Alg {
        match self {
            ScramAlg::Sha1 => Alg::Sha1,
            ScramAlg::Sha256 => Alg::Sha256,
        }
    }
    /// Digest length in octets.
    pub fn len(self) -> usize {
        self.alg().len()
    }
    /// Always false (a hash has a length); for clippy.
    pub fn is_empty(self) -> bool {
        false
    }
}

/// What a SCRAM server needs for one user: salt, iteration count, StoredKey, ServerKey.
/// Never printed; zeroed on drop.
pub struct ScramSecret {
    pub alg: ScramAlg,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Zeroizing<Vec<u8>>,
    pub server_key: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for ScramSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ScramSecret({:?}, i={}, <redacted>)",
            self.alg, self.iterations
        )
    }
}

/// Iterations used when SCRAM keys are derived from a plaintext-equivalent password.
pub const SCRAM_DERIVED_ITERATIONS: u32 = 4096;

/// SCRAM keys derived from a cleartext password (what `{SCRAM-SHA-*}` stores).
pub fn scram_derive(alg: ScramAlg, password: &[u8], salt: &[u8], iterations: u32) -> ScramSecret {
    let (stored_key, server_key) = scram_keys(alg.alg(), password, salt, iterations);
    ScramSecret {
        alg,
        salt: salt.to_vec(),
        iterations,
        stored_key,
        server_key,
    }
}

/// The SCRAM secret stored in a `{SCRAM-SHA-1}`/`{SCRAM-SHA-256}` entry of the matching
/// hash; `None` for any other stored form (plaintext equivalents are derived by the caller,
/// see [`plaintext_equivalent_with`]).
pub fn scram_secret_of(stored: &str, alg: ScramAlg, opts: &PasswdOptions) -> Option<ScramSecret> {
    let p = parse_stored(stored, &opts.default_scheme).ok()?;
    if p.def.kind != Kind::Scram(alg.alg()) {
        return None;
    }
    let raw = Zeroizing::new(decode(p.def, p.explicit_enc, p.data).ok()?.into_owned());
    let s = std::str::from_utf8(&raw).ok()?;
    let f = parse_scram(alg.alg(), s).ok()?;
    Some(ScramSecret {
        alg,
        salt: f.salt,
        iterations: f.iterations,
        stored_key: f.stored_key,
        server_key: f.server_key,
    })
}

/// RFC 5802 §3: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); the proof is good
/// when H(ClientKey) = StoredKey (constant-time).
pub fn scram_verify_proof(secret: &ScramSecret, auth_message: &[u8], proof: &[u8]) -> bool {
    let signature = hmac(secret.alg, &secret.stored_key, &[auth_message]);
    if proof.len() != signature.len() {
        return false;
    }
    let client_key: Zeroizing<Vec<u8>> = Zeroizing::new(
        proof
            .iter()
            .zip(signature.iter())
            .map(|(a, b)| a ^ b)
            .collect(),
    );
    let h = secret.alg.alg().digest(&[&client_key]);
    ct_eq(&h, &secret.stored_key)
}

/// ServerSignature = HMAC(ServerKey, AuthMessage), sent in the server-final message.
pub fn scram_server_signature(secret: &ScramSecret, auth_message: &[u8]) -> Vec<u8> {
    hmac(secret.alg, &secret.server_key, &[auth_message]).to_vec()
}

/// The ClientProof a client computes (for tests and clients).
pub fn scram_client_proof(
    alg: ScramAlg,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
    auth_message: &[u8],
) -> Vec<u8> {
    scram_client_answer(alg, password, salt, iterations, auth_message).0
}

/// What a SCRAM client computes from the password: its ClientProof and the ServerSignature
/// it must see in the server-final message, with one `Hi()` for both.
pub fn scram_client_answer(
    alg: ScramAlg,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
    auth_message: &[u8],
) -> (Vec<u8>, Vec<u8>) {
    let salted = hi(alg, password, salt, iterations);
    let client_key = hmac(alg, &salted, &[b"Client Key"]);
    let server_key = hmac(alg, &salted, &[b"Server Key"]);
    let stored_key = alg.alg().digest(&[&client_key]);
    let signature = hmac(alg, &stored_key, &[auth_message]);
    let proof = client_key
        .iter()
        .zip(signature.iter())
        .map(|(a, b)| a ^ b)
        .collect();
    let server_signature = hmac(alg, &server_key, &[auth_message]).to_vec();
    (proof, server_signature)
}

/// Dovecot hmac_md5_get_cram_context(): outer state a,b,c,d then inner
/// state a,b,c,d, each word little-endian.
fn cram_md5_context(password: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 64]);
    if password.len() > 64 {
        key[..16].copy_from_slice(&Md5::digest(password));
    } else {
        key[..password.len()].copy_from_slice(password);
    }
    let mut ipad = Zeroizing::new([0u8; 64]);
    let mut opad = Zeroizing::new([0u8; 64]);
    for i in 0..64 {
        ipad[i] = key[i] ^ 0x36;
        opad[i] = key[i] ^ 0x5c;
    }
    let inner = md5_state_after(&ipad);
    let outer = md5_state_after(&opad);
    let mut out = Zeroizing::new([0u8; 32]);
    for (i, w) in outer.iter().chain(inner.iter()).enumerate() {
        out[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

// -------------------------------------------------------------------- APOP

/// The cleartext password if `stored` is plaintext-equivalent
/// (`{PLAIN}`, `{CLEAR}`, `{CLEARTEXT}`, also with `.b64`/`.hex`), as needed
/// for APOP. Bare values are not (the default scheme is CRYPT); use
/// [`plaintext_equivalent_with`] to honour another default scheme.
pub fn plaintext_equivalent(stored: &str) -> Option<Vec<u8>> {
    plaintext_equivalent_with(stored, &PasswdOptions::default())
}

/// Like [`plaintext_equivalent`], resolving bare values with
/// `opts.default_scheme`.
pub fn plaintext_equivalent_with(stored: &str, opts: &PasswdOptions) -> Option<Vec<u8>> {
    let p = parse_stored(stored, &opts.default_scheme).ok()?;
    if p.def.kind != Kind::Plain {
        return None;
    }
    Some(decode(p.def, p.explicit_enc, p.data).ok()?.into_owned())
}

/// Lowercase hex MD5(timestamp ‖ password): the APOP digest (RFC 1939).
pub fn apop_digest(timestamp: &str, password: &[u8]) -> String {
    hex::encode(&Alg::Md5.digest(&[timestamp.as_bytes(), password])[..])
}

/// Check an APOP client digest against the cleartext `password`:
/// case-insensitive, constant-time.
pub fn apop_verify(timestamp: &str, digest_hex: &str, password: &[u8]) -> bool {
    let want = Alg::Md5.digest(&[timestamp.as_bytes(), password]);
    match hex::decode(digest_hex) {
        Ok(got) => ct_eq(&got, &want),
        Err(_) => false,
    }
}

// ----------------------------------------------------------------- hashing

/// Characters of crypt(3) salts (Dovecot `salt_chars`).
const SALT_CHARS: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn salt_string(len: usize) -> String {
    let mut rng = OsRng;
    (0..len)
        .map(|_| SALT_CHARS[rng.gen_range(0..SALT_CHARS.len())] as char)
        .collect()
}

/// A fresh nonce for SASL: 18 random bytes in base64 (printable, no `,`), for a SCRAM
/// nonce or a CRAM-MD5 challenge, on either side of the exchange. From the thread's
/// CSPRNG, so a login does not pay for a `getrandom` call.
pub fn sasl_nonce() -> String {
    STANDARD.encode(rand::random::<[u8; 18]>())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    OsRng.fill_bytes(&mut b);
    b
}

/// bcrypt cost used by [`hash`] (Dovecot's own default is 5, too low today).
pub const BLF_CRYPT_DEFAULT_COST: u32 = 10;
/// Argon2 parameters used by [`hash`]: Dovecot's (libsodium "interactive"
/// for ARGON2ID, "moderate"-ish for ARGON2I). Memory in KiB.
pub const ARGON2ID_DEFAULT: (u32, u32, u32) = (65_536, 3, 1);
/// See [`ARGON2ID_DEFAULT`].
pub const ARGON2I_DEFAULT: (u32, u32, u32) = (32_768, 4, 1);
const SALTED_DIGEST_SALT_LEN: usize = 8;

/// Hash `password` with `scheme` (optionally `SCHEME.b64`/`SCHEME.hex`) and a
/// fresh random salt, returning `{SCHEME}data` like `doveadm pw -s SCHEME`.
///
/// Defaults: SHA*-CRYPT 5000 rounds and a 16-character salt, BLF-CRYPT cost
/// 10 (`$2y$`), ARGON2ID m=64 MiB t=3 p=1, ARGON2I m=32 MiB t=4 p=1,
/// SSHA* 8-byte salt, SCRAM 4096 iterations, PBKDF2 5000 rounds. CRYPT
/// produces BLF-CRYPT, as current Dovecot does. A password containing a NUL
/// byte is refused.
pub fn hash(scheme: &str, password: &[u8]) -> Result<String, SchemeError> {
    hash_with_rounds(scheme, password, None)
}

/// [`hash`] with a cost parameter, like `doveadm pw -r ROUNDS`: rounds for
/// SHA*-CRYPT (1000..=999999999), the cost for BLF-CRYPT (4..=31), t (passes)
/// for ARGON2*, iterations for SCRAM-* (≥ 4096) and PBKDF2. Ignored by
/// schemes without a cost.
pub fn hash_with_rounds(
    scheme: &str,
    password: &[u8],
    rounds: Option<u32>,
) -> Result<String, SchemeError> {
    let (def, explicit_enc) = lookup_scheme(scheme)?;
    let name = def.name;
    let fail = |reason| SchemeError::Hashing {
        scheme: name,
        reason,
    };
    if password.contains(&0) {
        return Err(fail("password contains a NUL byte"));
    }
    let raw: Zeroizing<Vec<u8>> = match def.kind {
        Kind::Plain => Zeroizing::new(password.to_vec()),
        Kind::Digest(alg) => alg.digest(&[password]),
        Kind::Salted(alg) => {
            let salt = random_bytes::<SALTED_DIGEST_SALT_LEN>();
            let mut v = alg.digest(&[password, &salt]);
            v.extend_from_slice(&salt);
            v
        }
        Kind::Md5Any | Kind::Md5Crypt => {
            #[allow(deprecated)] // asked for explicitly by the caller
            let h = pwhash::md5_crypt::hash(password).map_err(|_| fail("cannot compute"))?;
            Zeroizing::new(h.into_bytes())
        }
        Kind::DesCrypt => {
            #[allow(deprecated)] // asked for explicitly by the caller
            let h = pwhash::unix_crypt::hash(password).map_err(|_| fail("cannot compute"))?;
            Zeroizing::new(h.into_bytes())
        }
        Kind::Sha256Crypt | Kind::Sha512Crypt => {
            let r = rounds.map_or(SHA_CRYPT_ROUNDS_DEFAULT, |r| r as usize);
            if !(sha_crypt::ROUNDS_MIN..=sha_crypt::ROUNDS_MAX).contains(&r) {
                return Err(fail("rounds must be 1000..=999999999"));
            }
            let salt = salt_string(16);
            let s = sha_crypt_string(
                def.kind == Kind::Sha512Crypt,
                password,
                salt.as_bytes(),
                r,
                rounds.is_some(),
            )
            .map_err(|_| fail("cannot compute"))?;
            Zeroizing::new(s.as_bytes().to_vec())
        }
        Kind::Crypt | Kind::BlfCrypt => {
            let cost = rounds.unwrap_or(BLF_CRYPT_DEFAULT_COST);
            if !(4..=31).contains(&cost) {
                return Err(fail("cost must be 4..=31"));
            }
            let parts =
                bcrypt::hash_with_result(password, cost).map_err(|_| fail("cannot compute"))?;
            Zeroizing::new(parts.format_for_version(bcrypt::Version::TwoY).into_bytes())
        }
        Kind::Argon2i | Kind::Argon2id => {
            let (alg, (m, t, p)) = if def.kind == Kind::Argon2id {
                (argon2::Algorithm::Argon2id, ARGON2ID_DEFAULT)
            } else {
                (argon2::Algorithm::Argon2i, ARGON2I_DEFAULT)
            };
            argon2_hash(alg, m, rounds.unwrap_or(t), p, password)
                .map_err(|_| fail("invalid argon2 parameters"))?
        }
        Kind::Scram(alg) => {
            let iterations = rounds.unwrap_or(SCRAM_MIN_ITERATIONS);
            if !(SCRAM_MIN_ITERATIONS..=SCRAM_MAX_ITERATIONS).contains(&iterations) {
                return Err(fail("iterations must be at least 4096"));
            }
            let salt = random_bytes::<16>();
            let (stored_key, server_key) = scram_keys(alg, password, &salt, iterations);
            Zeroizing::new(
                format!(
                    "{iterations},{},{},{}",
                    STANDARD.encode(salt),
                    STANDARD.encode(&stored_key[..]),
                    STANDARD.encode(&server_key[..])
                )
                .into_bytes(),
            )
        }
        Kind::Pbkdf2 => {
            let r = rounds.unwrap_or(PBKDF2_ROUNDS_DEFAULT);
            if r == 0 {
                return Err(fail("rounds must be positive"));
            }
            let salt = salt_string(16);
            let key = hi(ScramAlg::Sha1, password, salt.as_bytes(), r);
            Zeroizing::new(format!("$1${salt}${r}${}", hex::encode(&key[..])).into_bytes())
        }
        Kind::CramMd5 => Zeroizing::new(cram_md5_context(password).to_vec()),
        Kind::PlainTrunc | Kind::Unsupported => {
            return Err(SchemeError::Unsupported(name.into()));
        }
    };
    let enc = explicit_enc.unwrap_or(def.enc);
    let data = match enc {
        Enc::None => String::from_utf8(raw.to_vec())
            .map_err(|_| fail("password is not UTF-8; use the .b64 or .hex form"))?,
        Enc::B64 => STANDARD.encode(&raw[..]),
        Enc::Hex => hex::encode(&raw[..]),
    };
    let suffix = match explicit_enc {
        None => "",
        Some(Enc::B64) => ".B64",
        Some(Enc::Hex) => ".HEX",
        Some(Enc::None) => unreachable!("no suffix means no encoding"),
    };
    Ok(format!("{{{name}{suffix}}}{data}"))
}

fn argon2_hash(
    alg: argon2::Algorithm,
    m: u32,
    t: u32,
    p: u32,
    password: &[u8],
) -> Result<Zeroizing<Vec<u8>>, argon2::password_hash::Error> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(m, t, p, Some(32))?;
    let hasher = argon2::Argon2::new(alg, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(&random_bytes::<16>())?;
    let phc = hasher.hash_password(password, &salt)?;
    Ok(Zeroizing::new(phc.to_string().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> PasswdOptions {
        PasswdOptions::default()
    }

    fn strict() -> PasswdOptions {
        PasswdOptions {
            allow_weak_schemes: false,
            ..PasswdOptions::default()
        }
    }

    const PW: &[u8] = b"Tr0ub4dor&3";

    /// Hashes made by Dovecot 2.3.19.1 `doveadm pw -s SCHEME -p 'Tr0ub4dor&3'`
    /// (plus `-r` for the rounds variants), pasted verbatim.
    const DOVEADM: &[(&str, &str)] = &[
        ("SHA512-CRYPT", "{SHA512-CRYPT}$6$i6lebws624USjG3g$1Fcz2QXxHsPCYwPY/Yuz/hNIVSnhxbJ4kWrP.N.8oP45/LXvsX.838LUKx8C8za4n2U3.gSclvzydQml8Pn3Q."),
        ("SHA512-CRYPT", "{SHA512-CRYPT}$6$rounds=10000$BjAa5myF/oJLabk0$dTWN6mtFmUmcmo6bjpsN/052RhanTXLUaEBE4EtzUR14w/yS/7HQk7WvmitSxE3KLisYkEmYgVcuOuD8Hhlms/"),
        ("SHA256-CRYPT", "{SHA256-CRYPT}$5$pK/M7QSLzzqjSZEZ$MnvklnJHNTvL7G2tbYDw6wIhx0hl54E1cESmxMlwOd/"),
        ("SHA256-CRYPT", "{SHA256-CRYPT}$5$rounds=1000$1Ik7Z8SXGnHxQa7n$6Uy8Uy8Qqv.yLqAVBE1/jdkCpCVII78WAbcuxwtcoZA"),
        ("BLF-CRYPT", "{BLF-CRYPT}$2y$05$PE.aBREm5A.WeEKNKOnXwuiEqejPjvFadEUXE8PA2tGVlpFKfmQNq"),
        ("BLF-CRYPT", "{BLF-CRYPT}$2y$04$0Ne81H86OeNCPOkzwZuIOOivpZng/X2xTd5u90ia1Jdq3PUbsB.Fi"),
        ("SSHA512", "{SSHA512}eW0w2BmlpQpGEWO1Q9v1dv8sH2MqifnQ4OJHZyVjS8GBPC3UL9fZRhDXWDWhhvH/aDP9E2u63P3urA44C1zp8weU3yk="),
        ("SSHA512", "{SSHA512.HEX}7870b7fbf0ce6d53315b99d5b12387b2cb146c76b9d07927118b7df5238e754b028452c039119eb9c2af2200803687c38528b2e60fb424290c17551da944e2a4af43651f"),
        ("SSHA256", "{SSHA256}SjxoC5ZHUDzhF4ZDWfP0i04+gqKs2AtXoXmB9TjjyNS3WWve"),
        ("SSHA", "{SSHA}Du67+7gPGZILBY0XU/3YoMqa9o4uPfl9"),
        ("SHA512", "{SHA512}xyu2IccEDPS2R0BjqaeXJpDiUvNa2+fPr/Wx7iMW7+c4LnI9QeATor+8M8MAfFDFhH0hqInM6DhTbqxyeAjeQA=="),
        ("SHA512", "{SHA512.HEX}c72bb621c7040cf4b6474063a9a7972690e252f35adbe7cfaff5b1ee2316efe7382e723d41e013a2bfbc33c3007c50c5847d21a889cce838536eac727808de40"),
        ("SHA256", "{SHA256}SEhuFRToQjRv9AWx5F9EBZroJhnyMG+Z0JQNyzhukfc="),
        ("SHA256", "{SHA256.HEX}48486e1514e842346ff405b1e45f44059ae82619f2306f99d0940dcb386e91f7"),
        ("SHA", "{SHA}h0Vy56WuaklGamrFeLmK26eMaqY="),
        ("SHA1", "{SHA1}h0Vy56WuaklGamrFeLmK26eMaqY="),
        ("PLAIN-MD5", "{PLAIN-MD5}4ece57a61323b52ccffdbef021956754"),
        ("PLAIN-MD5", "{PLAIN-MD5.B64}Ts5XphMjtSzP/b7wIZVnVA=="),
        ("LDAP-MD5", "{LDAP-MD5}Ts5XphMjtSzP/b7wIZVnVA=="),
        ("MD5-CRYPT", "{MD5-CRYPT}$1$2VIlXgBJ$wCcOr7lU62Cxf5s13Hfom1"),
        ("SMD5", "{SMD5}DTQ9lqHAjW4pHtqe5929uOv3/jk="),
        ("DES-CRYPT", "{DES-CRYPT}by.0ld3yPzDSs"),
        ("SCRAM-SHA-256", "{SCRAM-SHA-256}4096,81+mkfWYKX8uDMHX1ZOZaQ==,gDj5ZIEweLJu9GFUeVvPgxvWm6lHiMXg5H0WRVM1AYU=,xWKOsjZGxHEWGLdcEgMLbMRQ26eqtDWCy7/WAHD7O3A="),
        ("SCRAM-SHA-1", "{SCRAM-SHA-1}4096,vosJOF5m2Dz0iAmVuOrTUA==,6VKvFDECJb/n8uwuv2Y7fWDvk+8=,BKvKwOSl2Of1ImKEGBU+wMCDEaQ="),
        ("PBKDF2", "{PBKDF2}$1$dpuYXxUzwEX7Vs2j$5000$c7c2ad1d13c57c592ffae510c895349e6a8b433a"),
        ("CRAM-MD5", "{CRAM-MD5}c0a49b541c47c13e0fed75e90df0510e8e19d265316dbafce5048e1f92c94232"),
        ("PLAIN", "{PLAIN.B64}VHIwdWI0ZG9yJjM="),
        ("PLAIN", "{PLAIN.HEX}547230756234646f722633"),
    ];

    #[test]
    fn doveadm_vectors_verify() {
        for (scheme, stored) in DOVEADM {
            assert_eq!(identify(stored, &opts()), Ok(*scheme), "{stored}");
            assert_eq!(verify(stored, PW, &opts()), Ok(true), "{stored}");
            // Differs within the first 8 bytes: DES crypt ignores the rest.
            assert_eq!(
                verify(stored, b"Xr0ub4dor&3", &opts()),
                Ok(false),
                "{stored}"
            );
            assert_eq!(check(stored, &opts()), Ok(*scheme), "{stored}");
            assert_eq!(verify(stored, b"", &opts()), Ok(false), "{stored}");
        }
    }

    /// Dovecot's argon2 defaults (ARGON2ID 64 MiB t=3, ARGON2I 32 MiB t=4),
    /// from doveadm. Slow in an unoptimised build, so these are the only
    /// full-size argon2 verifications; mismatches are tested with small
    /// parameters below.
    #[test]
    fn doveadm_argon2_default_params() {
        for (scheme, stored) in [
            ("ARGON2ID", "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$0ugu3s/ne/CY5yb1MoMmTg$o5MXFjhG5WY2K9Qkmt4xKHNPUyXeVCstgBb4G5m/LDI"),
            ("ARGON2I", "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$rEmPvZUOcqLfmSvfG4GJtw$Efjnln7VWJz1w0oBiSZjLBuCoC9IS9vWlsM8Qp6nDfA"),
        ] {
            assert_eq!(check(stored, &opts()), Ok(scheme));
            assert_eq!(verify(stored, PW, &opts()), Ok(true), "{stored}");
        }
    }

    /// Argon2 hashes with small parameters, made by this module and checked
    /// with `doveadm pw -t HASH -p PASSWORD` (libsodium): "(verified)".
    #[test]
    fn small_argon2_vectors_cross_checked_with_doveadm() {
        for stored in [
            "{ARGON2ID}$argon2id$v=19$m=256,t=2,p=1$JJAPFP9eQiD1/nmn07i0yQ$Ua5/scILcYxxqYWs1dZhpII3kpFllElzgfJQmWnaR/Q",
            "{ARGON2I}$argon2i$v=19$m=256,t=3,p=1$YXlcFsT4gJXPNzzDubDsvg$VEnkSRGOMpZZYxS1EqJTuxrwdC/hEuyF3WSZMdf7c3g",
        ] {
            assert_eq!(verify(stored, PW, &opts()), Ok(true), "{stored}");
            assert_eq!(verify(stored, b"wrong", &opts()), Ok(false), "{stored}");
        }
    }

    /// Output of this module's `hash()` (password "Grüße pw"), each one
    /// checked with `doveadm pw -t HASH -p 'Grüße pw'` → "(verified)": our
    /// hashes are usable by Dovecot, not just by us.
    #[test]
    fn our_hashes_accepted_by_doveadm() {
        let pw = "Grüße pw".as_bytes();
        for stored in [
            "{SHA512-CRYPT}$6$4I2Cbkj9I2qAKPqT$e5QfRqnUa0NjP0tvHFI7vF13rGN1g0iYmyt.rpzZrMsAOXh8M4P1huokr57g589LRQC1w2woXhLbo6LVW8Ll4/",
            "{SHA256-CRYPT}$5$uQiZCFPz9eZgJ8RL$CaWuRyYwAlLo4ebwYtwMbE2b2Qzb0V50.gd69RaEBL1",
            "{BLF-CRYPT}$2y$05$wF2PRTMYL2xqPwOom/CZBOAo2u.xijwiVUDlPP7R.T5ziU64IYXfS",
            "{CRYPT}$2y$05$D9TnnjT0oIK2JDs2C5qTJ.Q.vLTAKf4wYPQsW5py4miCmHj6eCuEu",
            "{SSHA512}c5H/e0Aa/aVTC6/bQjzC5OF87Kxveq55mlLumsH2JlAcaIpQ2MwWxa/Ns/oFrkv5ciQnlwfXeH2krZJmCTGslDQ6DtGIkvJF",
            "{SSHA256}R80QaNbxOMVXW2zi6AwsaU6DJQUySFoG32UsK60eIf81xEjk6KgVFA==",
            "{SSHA}/u2pjG10QHRq4DW5KFyJXFbQAePuPwmZs4RWoQ==",
            "{SMD5}3H4/z7GlYChTI0HLlmQA0hJfFDc2QkMm",
            "{SHA512}V+cqqa+D/q7lvrc8kvYcHBtW3+1Afns6OGKRnJZQ7o5ewihxFDLdbi2KPaOYGnPXctMwtBVWkgIZYP8qwMuHlw==",
            "{PLAIN-MD5}c9cf928e1d54f13b98fb9dc39928270e",
            "{LDAP-MD5}yc+Sjh1U8TuY+53DmSgnDg==",
            "{MD5-CRYPT}$1$U/LU1Itp$33ci2.i/aAmR1WpL7AXtF/",
            "{MD5}$1$CuzTH9o8$toP/vuS5zFtPsRS75VZO80",
            "{SCRAM-SHA-256}4096,7tERSHP9UVkc9S5A/Z0Vow==,lGIMTRT8uo7z5jm0OYot5nJgbbwzaFh3V4VzsdUkoqg=,RkEPxfn3c3h2z9fiGX0YHiZ4h1Bya1/6Jl/QxgT69Hs=",
            "{SCRAM-SHA-1}4096,WxTs6yWnLDDZhGnVH7kezw==,ABDdQEL2/m3ySylZjNyDEC8e7Vs=,zyccErKvK6HpezreZ4RHQPkYAQM=",
            "{PBKDF2}$1$JvGTlSkR7tPJLrPO$5000$577630c00bd77a43e7fbef4afd643162e550c6a4",
            "{CRAM-MD5}4e885ba2ab403bd84d301e8c58df1759838837d941ac4db7088f2e18d8bcd3e2",
            "{PLAIN.B64}R3LDvMOfZSBwdw==",
            "{SHA256.HEX}3d1cdc9a507721b56a11f498ec38e6d16ffa141daf45384e0710a8bba49cc415",
        ] {
            assert_eq!(verify(stored, pw, &opts()), Ok(true), "{stored}");
            assert_eq!(verify(stored, "Grüße pX".as_bytes(), &opts()), Ok(false), "{stored}");
        }
        // DES crypt sees only the first 8 bytes ("Grüße p").
        assert_eq!(verify("{DES-CRYPT}GLg/bcCq9UawY", pw, &opts()), Ok(true));
        assert_eq!(
            verify("{DES-CRYPT}GLg/bcCq9UawY", b"Gruesse", &opts()),
            Ok(false)
        );
    }

    /// Non-ASCII password (UTF-8 bytes), from doveadm.
    #[test]
    fn doveadm_utf8_password() {
        let pw = "pässwörd".as_bytes();
        for stored in [
            "{SHA512-CRYPT}$6$iYiNh3nOhnOv8XKZ$uUGnpGDWLVcbFVS8DTQmSIZ2xnIox4x6ZysZDEtm/V3QWiXnROis8d.YIfE6Ub5uI9/asApQ1niayk25X.pJj/",
            "{SSHA256}l0GND2t0auOJh7qh3lMpMP09vzhASJYyGKyXxBVjJMcuQ5G+",
            "{PLAIN-MD5}12841e4ba5e37d2fbfc78458c6714ade",
            "{BLF-CRYPT}$2y$05$VCRja88Iwf6ugzjZcgDPGOmKlV4lf.FzOYiv/NlajOjSTy3ozv3Lq",
        ] {
            assert_eq!(verify(stored, pw, &opts()), Ok(true), "{stored}");
            assert_eq!(verify(stored, b"passwoerd", &opts()), Ok(false), "{stored}");
        }
    }

    /// Bare values (no `{SCHEME}`), as found in older passwd-files and in
    /// /etc/shadow copies. Vectors from Python 3.11 crypt.crypt (libxcrypt)
    /// and from the doveadm hashes above with the prefix removed.
    #[test]
    fn bare_values() {
        let cases: &[(&str, &str)] = &[
            ("$6$i6lebws624USjG3g$1Fcz2QXxHsPCYwPY/Yuz/hNIVSnhxbJ4kWrP.N.8oP45/LXvsX.838LUKx8C8za4n2U3.gSclvzydQml8Pn3Q.", "SHA512-CRYPT"),
            ("$6$rounds=5000$saltsalt$fwlamBrOqmO1d1IGBZuoDbiBLysiZpmO29PF6JYPeFNWtUpYlWGacpfo3kQaQ6Jc9AgBbqPXfLKeJCECo1N.m1", "SHA512-CRYPT"),
            ("$6$saltsalt$fwlamBrOqmO1d1IGBZuoDbiBLysiZpmO29PF6JYPeFNWtUpYlWGacpfo3kQaQ6Jc9AgBbqPXfLKeJCECo1N.m1", "SHA512-CRYPT"),
            ("$6$0123456789abcdef$qyuvBrh3303/TMqALTZatADhsJXNYwV5CagfQDpITVMVeXagfR6LXvFzrp4nYExqIqa8h7vJxFQDNOVMZdjVv1", "SHA512-CRYPT"),
            ("$6$$Nbc6RrTKbbvdxtqWsTntjbDN.szrc0BFrVh1cHEy.kmHhK7R7zcn4Y2bXA0T79kXiq/fIbl2vdcQ9r3aQ8M4Z0", "SHA512-CRYPT"),
            ("$5$rounds=1000$0123456789abcdef$80KmIwVQ/1gziP50UdbxffRwyzE7Vr2b18lYFuMiOx6", "SHA256-CRYPT"),
            ("$5$pK/M7QSLzzqjSZEZ$MnvklnJHNTvL7G2tbYDw6wIhx0hl54E1cESmxMlwOd/", "SHA256-CRYPT"),
            ("$2y$04$abcdefghijklmnopqrstuu5UWyuxawIwQzpnlr0Mft5nu6B9cYh/C", "BLF-CRYPT"),
            ("$2y$05$PE.aBREm5A.WeEKNKOnXwuiEqejPjvFadEUXE8PA2tGVlpFKfmQNq", "BLF-CRYPT"),
            ("$1$abcdefgh$FErPkDeIHv781e9EexumS.", "MD5-CRYPT"),
            // Dovecot ignores anything after a third '$' of a bare MD5-CRYPT.
            ("$1$abcdefgh$FErPkDeIHv781e9EexumS.$ignored", "MD5-CRYPT"),
            // Default scheme CRYPT → traditional DES.
            ("abWL7Sj501Z46", "DES-CRYPT"),
            ("by.0ld3yPzDSs", "DES-CRYPT"),
        ];
        for (stored, scheme) in cases {
            assert_eq!(identify(stored, &opts()), Ok(*scheme), "{stored}");
            assert_eq!(verify(stored, PW, &opts()), Ok(true), "{stored}");
            assert_eq!(
                verify(stored, b"tr0ub4dor&3", &opts()),
                Ok(false),
                "{stored}"
            );
        }
    }

    #[test]
    fn crypt_scheme_dispatches_on_prefix() {
        let cases: &[(&str, &str)] = &[
            ("{CRYPT}$6$i6lebws624USjG3g$1Fcz2QXxHsPCYwPY/Yuz/hNIVSnhxbJ4kWrP.N.8oP45/LXvsX.838LUKx8C8za4n2U3.gSclvzydQml8Pn3Q.", "SHA512-CRYPT"),
            ("{CRYPT}$5$pK/M7QSLzzqjSZEZ$MnvklnJHNTvL7G2tbYDw6wIhx0hl54E1cESmxMlwOd/", "SHA256-CRYPT"),
            ("{CRYPT}$2y$05$PE.aBREm5A.WeEKNKOnXwuiEqejPjvFadEUXE8PA2tGVlpFKfmQNq", "BLF-CRYPT"),
            ("{CRYPT}$1$2VIlXgBJ$wCcOr7lU62Cxf5s13Hfom1", "MD5-CRYPT"),
            ("{crypt}abWL7Sj501Z46", "DES-CRYPT"),
            ("{DES-CRYPT}abWL7Sj501Z46", "DES-CRYPT"),
        ];
        for (stored, scheme) in cases {
            assert_eq!(identify(stored, &opts()), Ok(*scheme), "{stored}");
            assert_eq!(verify(stored, PW, &opts()), Ok(true), "{stored}");
            assert_eq!(verify(stored, b"nope", &opts()), Ok(false), "{stored}");
        }
        // Empty CRYPT data matches nothing (crypt("", "") would).
        assert_eq!(verify("{CRYPT}", PW, &opts()), Ok(false));
        // Formats we do not implement are reported, not silently failed.
        assert!(matches!(
            verify(
                "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$X3DX6M94c7o.9agCG9G317fhZg9SqC.5i5rd.RhAtQ7",
                PW,
                &opts()
            ),
            Err(SchemeError::Unsupported(_))
        ));
        assert!(matches!(
            verify("{CRYPT}_J9..CCCCXBrJUJV154M", PW, &opts()),
            Err(SchemeError::Unsupported(_))
        ));
    }

    #[test]
    fn scheme_names_are_case_insensitive() {
        for stored in [
            "{plain}Tr0ub4dor&3",
            "{Clear}Tr0ub4dor&3",
            "{cleartext}Tr0ub4dor&3",
            "{sha256.hex}48486e1514e842346ff405b1e45f44059ae82619f2306f99d0940dcb386e91f7",
            "{Sha256.Base64}SEhuFRToQjRv9AWx5F9EBZroJhnyMG+Z0JQNyzhukfc=",
            "{plain-md5}4ECE57A61323B52CCFFDBEF021956754",
        ] {
            assert_eq!(verify(stored, PW, &opts()), Ok(true), "{stored}");
        }
    }

    #[test]
    fn digest_encoding_is_guessed_like_dovecot() {
        // SHA256 is base64 by default, but 64 characters = hex.
        let hex = "48486e1514e842346ff405b1e45f44059ae82619f2306f99d0940dcb386e91f7";
        assert_eq!(verify(&format!("{{SHA256}}{hex}"), PW, &opts()), Ok(true));
        // PLAIN-MD5 is hex by default, but base64 is accepted too.
        assert_eq!(
            verify("{PLAIN-MD5}Ts5XphMjtSzP/b7wIZVnVA==", PW, &opts()),
            Ok(true)
        );
        // Unpadded base64 is refused, as by Dovecot's base64_decode().
        assert!(matches!(
            verify(
                "{SHA256}SEhuFRToQjRv9AWx5F9EBZroJhnyMG+Z0JQNyzhukfc",
                PW,
                &opts()
            ),
            Err(SchemeError::Malformed { .. })
        ));
        // "MD5" is MD5-CRYPT or PLAIN-MD5 depending on the data.
        assert_eq!(
            verify("{MD5}$1$2VIlXgBJ$wCcOr7lU62Cxf5s13Hfom1", PW, &opts()),
            Ok(true)
        );
        assert_eq!(
            verify("{MD5}4ece57a61323b52ccffdbef021956754", PW, &opts()),
            Ok(true)
        );
    }

    #[test]
    fn malformed_and_unknown() {
        let cases: &[&str] = &[
            "{SHA256}c2hvcnQ=",              // decodes to 5 bytes
            "{SHA256.hex}zz",                // explicit hex, invalid
            "{SSHA256}SEhuFRToQjRv9AWx5F9EBZroJhnyMG+Z0JQNyzhukfc=", // no salt
            "{SHA512-CRYPT}$6$salt",         // no hash
            "{SHA512-CRYPT}$6$salt$short",   // hash too short
            "$6$rounds=10$saltsalt$fwlamBrOqmO1d1IGBZuoDbiBLysiZpmO29PF6JYPeFNWtUpYlWGacpfo3kQaQ6Jc9AgBbqPXfLKeJCECo1N.m1",
            "$6$rounds=abc$saltsalt$fwlamBrOqmO1d1IGBZuoDbiBLysiZpmO29PF6JYPeFNWtUpYlWGacpfo3kQaQ6Jc9AgBbqPXfLKeJCECo1N.m1",
            "{BLF-CRYPT}$2y$05$tooshort",
            "{ARGON2ID}$argon2id$v=19$m=65536",
            "{ARGON2ID}$argon2d$v=19$m=256,t=2,p=1$yz5LoQ05CEqwMgzbxhjYbQ$6YLBUvAXhyBlzw2Qs/4lR6aIBUi4vmiAZg1gNJfu3MM",
            "{SCRAM-SHA-256}4096,c2FsdA==,AAAA",
            "{SCRAM-SHA-256}100,81+mkfWYKX8uDMHX1ZOZaQ==,gDj5ZIEweLJu9GFUeVvPgxvWm6lHiMXg5H0WRVM1AYU=,xWKOsjZGxHEWGLdcEgMLbMRQ26eqtDWCy7/WAHD7O3A=",
            "{PBKDF2}$1$salt$5000$abcd",
            "{PBKDF2}salt$5000$c7c2ad1d13c57c592ffae510c895349e6a8b433a",
            "{MD5-CRYPT}nodollar",
            "{MD5}not-md5-at-all",
            "{PLAIN-TRUNC}nolength",
            "{CRYPT}toolong-for-des",
            "{CRAM-MD5}abcd",
        ];
        for stored in cases {
            let got = verify(stored, PW, &opts());
            assert!(
                matches!(got, Err(SchemeError::Malformed { .. })),
                "{stored}: {got:?}"
            );
            // The load-time check finds the same problem without hashing.
            assert_eq!(
                check(stored, &opts()).map(|_| ()),
                got.map(|_| ()),
                "{stored}"
            );
        }
        assert_eq!(
            verify("{NOPE}x", PW, &opts()),
            Err(SchemeError::Unknown("{NOPE}".into()))
        );
        assert_eq!(
            verify("{SHA256.b32}x", PW, &opts()),
            Err(SchemeError::Unknown("{SHA256.b32}".into()))
        );
        assert_eq!(
            verify("{DIGEST-MD5}0123456789abcdef0123456789abcdef", PW, &opts()),
            Err(SchemeError::Unsupported("DIGEST-MD5".into()))
        );
        // An unknown default scheme is reported for bare values.
        let bad_default = PasswdOptions {
            default_scheme: "BOGUS".into(),
            ..PasswdOptions::default()
        };
        assert!(matches!(
            verify("whatever", PW, &bad_default),
            Err(SchemeError::Unknown(_))
        ));
    }

    #[test]
    fn errors_never_contain_secrets() {
        // A '{' prefix that is not a scheme name is rendered by length only.
        let err = verify("{my secret pw}rest", PW, &opts()).unwrap_err();
        assert_eq!(err, SchemeError::Unknown("<12 bytes>".into()));
        assert!(!err.to_string().contains("secret"));
        let stored = "{SHA512-CRYPT}$6$saltsalt$tooshortXYZ";
        let msg = verify(stored, PW, &opts()).unwrap_err().to_string();
        assert_eq!(msg, "malformed SHA512-CRYPT password: wrong hash length");
        let msg = verify("{SHA256}c2hvcnQ=", PW, &opts())
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("c2hvcnQ"), "{msg}");
    }

    #[test]
    fn weak_schemes_refused_when_configured() {
        for (stored, name) in [
            ("{PLAIN-MD5}4ece57a61323b52ccffdbef021956754", "PLAIN-MD5"),
            ("{LDAP-MD5}Ts5XphMjtSzP/b7wIZVnVA==", "LDAP-MD5"),
            ("{MD5-CRYPT}$1$2VIlXgBJ$wCcOr7lU62Cxf5s13Hfom1", "MD5-CRYPT"),
            ("$1$2VIlXgBJ$wCcOr7lU62Cxf5s13Hfom1", "MD5-CRYPT"),
            ("{CRYPT}$1$2VIlXgBJ$wCcOr7lU62Cxf5s13Hfom1", "MD5-CRYPT"),
            ("{MD5}$1$2VIlXgBJ$wCcOr7lU62Cxf5s13Hfom1", "MD5"),
            ("{SMD5}DTQ9lqHAjW4pHtqe5929uOv3/jk=", "SMD5"),
            ("abWL7Sj501Z46", "DES-CRYPT"),
            ("{CRYPT}abWL7Sj501Z46", "DES-CRYPT"),
            ("{DES-CRYPT}abWL7Sj501Z46", "DES-CRYPT"),
        ] {
            assert_eq!(
                verify(stored, PW, &strict()),
                Err(SchemeError::WeakRefused(name)),
                "{stored}"
            );
            assert_eq!(is_weak(stored, &opts()), Ok(true), "{stored}");
        }
        // Strong and cleartext schemes are unaffected (Dovecot 2.4 likewise).
        for stored in [
            "{SHA256-CRYPT}$5$pK/M7QSLzzqjSZEZ$MnvklnJHNTvL7G2tbYDw6wIhx0hl54E1cESmxMlwOd/",
            "{CRYPT}$2y$04$0Ne81H86OeNCPOkzwZuIOOivpZng/X2xTd5u90ia1Jdq3PUbsB.Fi",
            "{SSHA}Du67+7gPGZILBY0XU/3YoMqa9o4uPfl9",
            "{PLAIN}Tr0ub4dor&3",
            "{CRAM-MD5}c0a49b541c47c13e0fed75e90df0510e8e19d265316dbafce5048e1f92c94232",
        ] {
            assert_eq!(verify(stored, PW, &strict()), Ok(true), "{stored}");
            assert_eq!(is_weak(stored, &opts()), Ok(false), "{stored}");
        }
    }

    #[test]
    fn empty_and_nul_passwords_never_match() {
        assert_eq!(verify("{PLAIN}", b"", &opts()), Ok(false));
        assert_eq!(verify("{PLAIN.hex}610062", b"a\0b", &opts()), Ok(false));
        assert_eq!(
            verify("{PLAIN-MD5}d41d8cd98f00b204e9800998ecf8427e", b"", &opts()),
            Ok(false)
        );
        assert!(hash("PLAIN", b"a\0b").is_err());
    }

    #[test]
    fn plain_trunc() {
        assert_eq!(verify("{PLAIN-TRUNC}11-Tr0ub4dor&3", PW, &opts()), Ok(true));
        assert_eq!(
            verify("{PLAIN-TRUNC}11-Tr0ub4dor&3", b"Tr0ub4dor&", &opts()),
            Ok(false)
        );
        // Stored truncated to 8 bytes: any password with that prefix matches.
        assert_eq!(verify("{PLAIN-TRUNC}8-Tr0ub4do", PW, &opts()), Ok(true));
        assert_eq!(
            verify("{PLAIN-TRUNC}8-Tr0ub4do", b"Tr0ub4do", &opts()),
            Ok(true)
        );
        assert_eq!(
            verify("{PLAIN-TRUNC}8-Tr0ub4do", b"Tr0ub4d", &opts()),
            Ok(false)
        );
        assert_eq!(
            verify("{PLAIN-TRUNC}8-Tr0ub4do", b"Xr0ub4dor", &opts()),
            Ok(false)
        );
    }

    #[test]
    fn bcrypt_truncates_at_72_bytes_like_crypt_blowfish() {
        let long = [b'x'; 80];
        let stored = hash_with_rounds("BLF-CRYPT", &long, Some(4)).unwrap();
        assert_eq!(verify(&stored, &long[..72], &opts()), Ok(true));
        assert_eq!(verify(&stored, &long[..71], &opts()), Ok(false));
    }

    #[test]
    fn plaintext_equivalents_for_apop() {
        assert_eq!(
            plaintext_equivalent("{PLAIN}secret"),
            Some(b"secret".to_vec())
        );
        assert_eq!(
            plaintext_equivalent("{CLEAR}secret"),
            Some(b"secret".to_vec())
        );
        assert_eq!(
            plaintext_equivalent("{cleartext}secret"),
            Some(b"secret".to_vec())
        );
        assert_eq!(
            plaintext_equivalent("{PLAIN.b64}c2VjcmV0"),
            Some(b"secret".to_vec())
        );
        assert_eq!(
            plaintext_equivalent("{PLAIN.HEX}736563726574"),
            Some(b"secret".to_vec())
        );
        assert_eq!(plaintext_equivalent("{PLAIN.hex}zz"), None);
        assert_eq!(plaintext_equivalent("secret"), None); // bare → CRYPT
        assert_eq!(
            plaintext_equivalent("{SHA256}K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols="),
            None
        );
        assert_eq!(
            plaintext_equivalent("{PLAIN-MD5}5ebe2294ecd0e0f08eab7690d2a6ee69"),
            None
        );
        let plain_default = PasswdOptions {
            default_scheme: "PLAIN".into(),
            ..PasswdOptions::default()
        };
        assert_eq!(
            plaintext_equivalent_with("secret", &plain_default),
            Some(b"secret".to_vec())
        );
    }

    #[test]
    fn apop_rfc1939_example() {
        // RFC 1939 section 7: shared secret "tanstaaf".
        let ts = "<1896.697170952@dbc.mtview.ca.us>";
        assert_eq!(
            apop_digest(ts, b"tanstaaf"),
            "c4c9334bac560ecc979e58001b3e22fb"
        );
        assert!(apop_verify(
            ts,
            "c4c9334bac560ecc979e58001b3e22fb",
            b"tanstaaf"
        ));
        assert!(apop_verify(
            ts,
            "C4C9334BAC560ECC979E58001B3E22FB",
            b"tanstaaf"
        ));
        assert!(!apop_verify(
            ts,
            "c4c9334bac560ecc979e58001b3e22fc",
            b"tanstaaf"
        ));
        assert!(!apop_verify(ts, "c4c9334b", b"tanstaaf"));
        assert!(!apop_verify(
            ts,
            "not hex at all, not hex at all!!",
            b"tanstaaf"
        ));
        assert!(!apop_verify(
            ts,
            "c4c9334bac560ecc979e58001b3e22fb",
            b"tanstaaF"
        ));
    }

    #[test]
    fn cram_md5_context_matches_doveadm() {
        // `doveadm pw -s CRAM-MD5 -p secret` (another doveadm vector is in
        // DOVEADM above).
        let ctx = cram_md5_context(b"secret");
        assert_eq!(
            hex::encode(&ctx[..]),
            "cd3ba7deaad6e5ca23448ba42e379747a9e0f7f1fbc00c8a81bbaac395731b56"
        );
        // Keys longer than 64 bytes are hashed first.
        let long = [b'k'; 100];
        let stored = hash("CRAM-MD5", &long).unwrap();
        assert_eq!(verify(&stored, &long, &opts()), Ok(true));
    }

    /// RFC 2195's example, from a plaintext password and from a stored CRAM-MD5 context.
    #[test]
    fn cram_md5_rfc2195() {
        let ch = "<1896.697170952@postoffice.reston.mci.net>";
        let want = "b913a602c7eda7a495b4e6e7334d3890";
        assert_eq!(cram_md5_digest(b"tanstaaftanstaaf", ch), want);
        let ctx = hash("CRAM-MD5", b"tanstaaftanstaaf").unwrap();
        for stored in ["{PLAIN}tanstaaftanstaaf", ctx.as_str()] {
            assert_eq!(cram_md5_verify(stored, ch, want, &opts()), Some(true));
            assert_eq!(
                cram_md5_verify(stored, ch, &want.to_uppercase(), &opts()),
                Some(true)
            );
            assert_eq!(
                cram_md5_verify(stored, ch, "b913a602c7eda7a495b4e6e7334d3891", &opts()),
                Some(false)
            );
            assert_eq!(cram_md5_verify(stored, ch, "zz", &opts()), Some(false));
            assert!(cram_md5_capable(stored, &opts()));
        }
        // A long challenge (several MD5 blocks) agrees with the plaintext path.
        let long = "x".repeat(300);
        let ctx = hash("CRAM-MD5", b"pw").unwrap();
        let d = cram_md5_digest(b"pw", &long);
        assert_eq!(cram_md5_verify(&ctx, &long, &d, &opts()), Some(true));
        // Hashes cannot answer CRAM-MD5.
        let sha = hash("SHA512-CRYPT", b"pw").unwrap();
        assert_eq!(cram_md5_verify(&sha, ch, want, &opts()), None);
        assert!(!cram_md5_capable(&sha, &opts()));
    }

    /// RFC 7677 §3 (SCRAM-SHA-256) and RFC 5802 §5 (SCRAM-SHA-1): user/pencil.
    #[test]
    fn scram_published_vectors() {
        let cases = [
            (
                ScramAlg::Sha256,
                "W22ZaJ0SNY7soEsUEjb6gQ==",
                "n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
                "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
                "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
            ),
            (
                ScramAlg::Sha1,
                "QSXCR+Q6sek8bf92",
                "n=user,r=fyko+d2lbbFgONRv9qkxdawL,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096,c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j",
                "v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
                "rmF9pqV8S7suAoZWja4dJRkFsKQ=",
            ),
        ];
        for (alg, salt, am, proof, sig) in cases {
            let salt = STANDARD.decode(salt).unwrap();
            let proof = STANDARD.decode(proof).unwrap();
            let secret = scram_derive(alg, b"pencil", &salt, 4096);
            assert!(
                scram_verify_proof(&secret, am.as_bytes(), &proof),
                "{alg:?}"
            );
            assert_eq!(
                STANDARD.encode(scram_server_signature(&secret, am.as_bytes())),
                sig
            );
            assert_eq!(
                scram_client_proof(alg, b"pencil", &salt, 4096, am.as_bytes()),
                proof
            );
            let (p, v) = scram_client_answer(alg, b"pencil", &salt, 4096, am.as_bytes());
            assert_eq!((p, STANDARD.encode(v)), (proof.clone(), sig.to_string()));
            let mut bad = proof.clone();
            bad[0] ^= 1;
            assert!(!scram_verify_proof(&secret, am.as_bytes(), &bad));
            assert!(!scram_verify_proof(&secret, am.as_bytes(), &proof[1..]));
            // The same secret, stored the way doveadm stores it.
            let stored = format!(
                "{{SCRAM-SHA-{}}}4096,{},{},{}",
                if alg == ScramAlg::Sha1 { "1" } else { "256" },
                STANDARD.encode(&salt),
                STANDARD.encode(&secret.stored_key[..]),
                STANDARD.encode(&secret.server_key[..])
            );
            let from_file = scram_secret_of(&stored, alg, &opts()).unwrap();
            assert!(scram_verify_proof(&from_file, am.as_bytes(), &proof));
            let other = if alg == ScramAlg::Sha1 {
                ScramAlg::Sha256
            } else {
                ScramAlg::Sha1
            };
            assert!(scram_secret_of(&stored, other, &opts()).is_none());
        }
    }

    /// The doveadm SCRAM-SHA-256 hash in DOVEADM drives a full exchange.
    #[test]
    fn doveadm_scram_sha256_exchange() {
        let stored = DOVEADM
            .iter()
            .find(|(s, _)| *s == "SCRAM-SHA-256")
            .unwrap()
            .1;
        let secret = scram_secret_of(stored, ScramAlg::Sha256, &opts()).unwrap();
        let am = b"n=u,r=abc,r=abcdef,s=x,i=4096,c=biws,r=abcdef";
        let proof = scram_client_proof(ScramAlg::Sha256, PW, &secret.salt, secret.iterations, am);
        assert!(scram_verify_proof(&secret, am, &proof));
        let wrong = scram_client_proof(
            ScramAlg::Sha256,
            b"Xr0ub4dor&3",
            &secret.salt,
            secret.iterations,
            am,
        );
        assert!(!scram_verify_proof(&secret, am, &wrong));
    }

    #[test]
    fn hashes_roundtrip_for_every_generating_scheme() {
        let pw = "Grüße, 世界!".as_bytes();
        let schemes: &[(&str, Option<u32>, &str)] = &[
            ("SHA512-CRYPT", None, "{SHA512-CRYPT}$6$"),
            ("SHA512-CRYPT", Some(1000), "{SHA512-CRYPT}$6$rounds=1000$"),
            ("SHA256-CRYPT", None, "{SHA256-CRYPT}$5$"),
            ("BLF-CRYPT", Some(4), "{BLF-CRYPT}$2y$04$"),
            ("CRYPT", Some(4), "{CRYPT}$2y$04$"),
            ("SSHA512", None, "{SSHA512}"),
            ("SSHA256", None, "{SSHA256}"),
            ("SSHA", None, "{SSHA}"),
            ("SMD5", None, "{SMD5}"),
            ("SHA512", None, "{SHA512}"),
            ("SHA256", None, "{SHA256}"),
            ("SHA", None, "{SHA}"),
            ("PLAIN", None, "{PLAIN}"),
            ("plain.b64", None, "{PLAIN.B64}"),
            ("SHA256.hex", None, "{SHA256.HEX}"),
            ("PLAIN-MD5", None, "{PLAIN-MD5}"),
            ("LDAP-MD5", None, "{LDAP-MD5}"),
            ("MD5-CRYPT", None, "{MD5-CRYPT}$1$"),
            ("MD5", None, "{MD5}$1$"),
            ("DES-CRYPT", None, "{DES-CRYPT}"),
            ("SCRAM-SHA-256", None, "{SCRAM-SHA-256}4096,"),
            ("SCRAM-SHA-1", None, "{SCRAM-SHA-1}4096,"),
            ("PBKDF2", Some(100), "{PBKDF2}$1$"),
            ("CRAM-MD5", None, "{CRAM-MD5}"),
        ];
        for (scheme, rounds, prefix) in schemes {
            let stored = hash_with_rounds(scheme, pw, *rounds).unwrap();
            assert!(stored.starts_with(prefix), "{scheme}: {stored}");
            // DES crypt only looks at 8 bytes of 7-bit ASCII.
            let (good, bad): (&[u8], &[u8]) = if *scheme == "DES-CRYPT" {
                (b"password", b"passwore")
            } else {
                (pw, b"Grusse, world!")
            };
            let stored = if *scheme == "DES-CRYPT" {
                hash(scheme, good).unwrap()
            } else {
                stored
            };
            assert_eq!(verify(&stored, good, &opts()), Ok(true), "{stored}");
            assert_eq!(verify(&stored, bad, &opts()), Ok(false), "{stored}");
        }
        // Salts are random: two hashes of the same password differ.
        assert_ne!(hash("SSHA512", pw).unwrap(), hash("SSHA512", pw).unwrap());
        assert_ne!(
            hash_with_rounds("SHA512-CRYPT", pw, Some(1000)).unwrap(),
            hash_with_rounds("SHA512-CRYPT", pw, Some(1000)).unwrap()
        );
    }

    #[test]
    fn default_hash_parameters() {
        let s = hash("SHA512-CRYPT", PW).unwrap();
        // No rounds= for the default 5000, 16-character salt, 86-char hash.
        let body = s.strip_prefix("{SHA512-CRYPT}$6$").unwrap();
        let (salt, h) = body.split_once('$').unwrap();
        assert_eq!((salt.len(), h.len()), (16, 86));
        assert!(salt.bytes().all(|b| SALT_CHARS.contains(&b)));
        let s = hash("SSHA512", PW).unwrap();
        let raw = STANDARD
            .decode(s.strip_prefix("{SSHA512}").unwrap())
            .unwrap();
        assert_eq!(raw.len(), 64 + SALTED_DIGEST_SALT_LEN);
        assert_eq!(
            hash("PLAIN-MD5", PW).unwrap(),
            "{PLAIN-MD5}4ece57a61323b52ccffdbef021956754"
        );
        assert_eq!(
            hash("SHA256", PW).unwrap(),
            "{SHA256}SEhuFRToQjRv9AWx5F9EBZroJhnyMG+Z0JQNyzhukfc="
        );
        assert_eq!(
            hash("PLAIN.hex", PW).unwrap(),
            "{PLAIN.HEX}547230756234646f722633"
        );
        assert_eq!(
            hash("CRAM-MD5", PW).unwrap(),
            "{CRAM-MD5}c0a49b541c47c13e0fed75e90df0510e8e19d265316dbafce5048e1f92c94232"
        );
    }

    /// Full-cost hashes with the public defaults (bcrypt cost 10, argon2id
    /// at 64 MiB). Slow without optimisation, so ARGON2I (same code, other
    /// constants) is only hashed with t=1.
    #[test]
    fn default_cost_hashes() {
        let s = hash("BLF-CRYPT", PW).unwrap();
        assert!(s.starts_with("{BLF-CRYPT}$2y$10$"), "{s}");
        assert_eq!(verify(&s, PW, &opts()), Ok(true));
        let s = hash("ARGON2ID", PW).unwrap();
        assert!(
            s.starts_with("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$"),
            "{s}"
        );
        assert_eq!(verify(&s, PW, &opts()), Ok(true));
        let s = hash_with_rounds("ARGON2I", PW, Some(1)).unwrap();
        assert!(
            s.starts_with("{ARGON2I}$argon2i$v=19$m=32768,t=1,p=1$"),
            "{s}"
        );
        assert_eq!(check(&s, &opts()), Ok("ARGON2I"));
    }

    #[test]
    fn hash_rejects_bad_input() {
        assert!(matches!(hash("NOPE", PW), Err(SchemeError::Unknown(_))));
        assert!(matches!(hash("NTLM", PW), Err(SchemeError::Unsupported(_))));
        assert!(matches!(
            hash("PLAIN-TRUNC", PW),
            Err(SchemeError::Unsupported(_))
        ));
        assert!(matches!(
            hash_with_rounds("BLF-CRYPT", PW, Some(3)),
            Err(SchemeError::Hashing { .. })
        ));
        assert!(matches!(
            hash_with_rounds("SHA512-CRYPT", PW, Some(999)),
            Err(SchemeError::Hashing { .. })
        ));
        assert!(matches!(
            hash_with_rounds("SCRAM-SHA-256", PW, Some(100)),
            Err(SchemeError::Hashing { .. })
        ));
        // Not UTF-8: only representable in an encoded form.
        assert!(matches!(
            hash("PLAIN", b"\xff\xfe"),
            Err(SchemeError::Hashing { .. })
        ));
        assert_eq!(hash("PLAIN.hex", b"\xff\xfe").unwrap(), "{PLAIN.HEX}fffe");
    }

    #[test]
    fn sasl_nonces_are_fresh_and_fit_scram() {
        let (a, b) = (sasl_nonce(), sasl_nonce());
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
        assert!(
            a.bytes().all(|c| (0x21..=0x7e).contains(&c) && c != b','),
            "{a}"
        );
    }

    /// Dovecot 2.3's base64_decode() skips spaces, tabs, CRs and LFs and
    /// requires the `=` padding. Each case was checked with
    /// `doveadm pw -t STORED -p 'Tr0ub4dor&3'` (2.3.19.1).
    #[test]
    fn base64_is_decoded_like_dovecot() {
        for stored in [
            // A trailing space (a hand-edited passwd-file line).
            "{SHA256}SEhuFRToQjRv9AWx5F9EBZroJhnyMG+Z0JQNyzhukfc= ",
            "{SHA}h0Vy56Wuak lGamrFeLmK26eMaqY=",
            "{SHA}h0Vy56Wuak\tlGamrFeLmK26eMaqY=",
            "{SHA}h0Vy56Wuak\r\nlGamrFeLmK26eMaqY=",
            "{SHA}h0Vy56WuaklGamrFeLmK26eMaqY =",
            "{SSHA256}SjxoC5ZHUDzhF4ZDWfP0i04+gqKs2AtXoXmB9TjjyNS3WWve\t",
            "{CRAM-MD5}wKSbVBxHwT4P7XXpDfBRDo4Z0mUxbbr85QSOH5LJQjI=",
            "{SCRAM-SHA-1}4096,vosJOF5m2Dz0iAmVuOrTUA==,6VKvFDECJb/n8uw uv2Y7fWDvk+8=,BKvKwOSl2Of1ImKEGBU+wMCDEaQ=",
            // The salt alone is decoded leniently (t_base64_decode_str()).
            "{SCRAM-SHA-1}4096,vosJOF5m2Dz0iAmVuOrTUA,6VKvFDECJb/n8uwuv2Y7fWDvk+8=,BKvKwOSl2Of1ImKEGBU+wMCDEaQ=",
            "{SCRAM-SHA-1}4096, vosJOF5m2Dz0iAmVuOrTUA==,6VKvFDECJb/n8uwuv2Y7fWDvk+8=,BKvKwOSl2Of1ImKEGBU+wMCDEaQ=",
        ] {
            assert_eq!(verify(stored, PW, &opts()), Ok(true), "{stored:?}");
            assert_eq!(verify(stored, b"wrong", &opts()), Ok(false), "{stored:?}");
        }
        // "Input isn't valid base64 encoded data" (or "Invalid … Key").
        for stored in [
            "{SHA256}SEhuFRToQjRv9AWx5F9EBZroJhnyMG+Z0JQNyzhukfc",
            "{SHA256}SEhuFRToQjRv9AWx5F9EBZroJhnyMG+Z0JQNyzhukfc==",
            "{SHA512}xyu2IccEDPS2R0BjqaeXJpDiUvNa2+fPr/Wx7iMW7+c4LnI9QeATor+8M8MAfFDFhH0hqInM6DhTbqxyeAjeQA",
            "{PLAIN-MD5}Ts5XphMjtSzP/b7wIZVnVA",
            "{PLAIN.b64}VHIwdWI0ZG9yJjM",
            "{SHA}h0Vy56WuaklGamrFeLmK26eMaqY=x",
            "{SHA}h0Vy56Wuak\x0blGamrFeLmK26eMaqY=",
            "{SHA}h0Vy56Wu-klGamrFeLmK26eMaqY=",
            "{SCRAM-SHA-1}4096,vosJOF5m2Dz0iAmVuOrTUA==,6VKvFDECJb/n8uwuv2Y7fWDvk+8,BKvKwOSl2Of1ImKEGBU+wMCDEaQ=",
            "{SCRAM-SHA-1}4096,vosJOF5m2Dz0iAmVuOrTUA==,6VKvFDECJb/n8uwuv2Y7fWDvk+8=,BKvKwOSl2Of1ImKEGBU+wMCDEaQ",
        ] {
            assert!(
                matches!(verify(stored, PW, &opts()), Err(SchemeError::Malformed { .. })),
                "{stored:?}"
            );
        }
        assert!(scram_secret_of(
            "{SCRAM-SHA-1}4096,vosJOF5m2Dz0iAmVuOrTUA==,6VKvFDECJb/n8uwuv2Y7fWDvk+8,BKvKwOSl2Of1ImKEGBU+wMCDEaQ=",
            ScramAlg::Sha1,
            &opts()
        )
        .is_none());
    }

    /// Dovecot registers DES-CRYPT, SHA256-CRYPT and SHA512-CRYPT with the
    /// same crypt(3) verify function as CRYPT, so the data's prefix decides:
    /// `doveadm pw -t` verifies each of these (2.3.19.1).
    #[test]
    fn crypt_named_schemes_take_any_crypt_format() {
        let cases: &[(&str, &str)] = &[
            ("{SHA512-CRYPT}$5$pK/M7QSLzzqjSZEZ$MnvklnJHNTvL7G2tbYDw6wIhx0hl54E1cESmxMlwOd/", "SHA256-CRYPT"),
            ("{SHA256-CRYPT}abWL7Sj501Z46", "DES-CRYPT"),
            ("{DES-CRYPT}$6$i6lebws624USjG3g$1Fcz2QXxHsPCYwPY/Yuz/hNIVSnhxbJ4kWrP.N.8oP45/LXvsX.838LUKx8C8za4n2U3.gSclvzydQml8Pn3Q.", "SHA512-CRYPT"),
            ("{SHA256-CRYPT}$2b$05$abcdefghijklmnopqrstuujyowYzwa5GTkdJQ1hID4j4yIozDs7U.", "BLF-CRYPT"),
            ("{SHA512-CRYPT}$1$2VIlXgBJ$wCcOr7lU62Cxf5s13Hfom1", "MD5-CRYPT"),
        ];
        for (stored, scheme) in cases {
            assert_eq!(identify(stored, &opts()), Ok(*scheme), "{stored}");
            assert_eq!(check(stored, &opts()), Ok(*scheme), "{stored}");
            assert_eq!(verify(stored, PW, &opts()), Ok(true), "{stored}");
            assert_eq!(verify(stored, b"nope", &opts()), Ok(false), "{stored}");
        }
        // MD5-CRYPT and BLF-CRYPT are Dovecot's own code, not crypt(3):
        // "Password mismatch" / "Password is not blowfish password".
        for stored in [
            "{MD5-CRYPT}$6$i6lebws624USjG3g$1Fcz2QXxHsPCYwPY/Yuz/hNIVSnhxbJ4kWrP.N.8oP45/LXvsX.838LUKx8C8za4n2U3.gSclvzydQml8Pn3Q.",
            "{BLF-CRYPT}$6$i6lebws624USjG3g$1Fcz2QXxHsPCYwPY/Yuz/hNIVSnhxbJ4kWrP.N.8oP45/LXvsX.838LUKx8C8za4n2U3.gSclvzydQml8Pn3Q.",
        ] {
            assert_ne!(verify(stored, PW, &opts()), Ok(true), "{stored}");
        }
        // DES under a strong name is still DES.
        assert_eq!(
            verify("{SHA256-CRYPT}abWL7Sj501Z46", PW, &strict()),
            Err(SchemeError::WeakRefused("DES-CRYPT"))
        );
    }

    /// Dovecot's HMAC-MD5 scheme is CRAM-MD5 under another name (same
    /// generate function): `doveadm pw -s HMAC-MD5` prints the CRAM-MD5
    /// context, and `doveadm pw -t` verifies it.
    #[test]
    fn hmac_md5_is_cram_md5() {
        let stored = "{HMAC-MD5}c0a49b541c47c13e0fed75e90df0510e8e19d265316dbafce5048e1f92c94232";
        assert_eq!(identify(stored, &opts()), Ok("HMAC-MD5"));
        assert_eq!(verify(stored, PW, &opts()), Ok(true));
        assert_eq!(verify(stored, b"Xr0ub4dor&3", &opts()), Ok(false));
        assert!(cram_md5_capable(stored, &opts()));
        assert_eq!(hash("HMAC-MD5", PW).unwrap(), stored);
        assert_eq!(
            verify(stored, PW, &strict()),
            Err(SchemeError::WeakRefused("HMAC-MD5"))
        );
        assert!(!cram_md5_capable(stored, &strict()));
    }

    /// `doveadm pw -s PLAIN-MD4 -p 'Tr0ub4dor&3'`.
    #[test]
    fn plain_md4() {
        for stored in [
            "{PLAIN-MD4}962f9fc2d0ca37bffa8502f6b69df1c8",
            "{PLAIN-MD4}li+fwtDKN7/6hQL2tp3xyA==",
            "{plain-md4.HEX}962F9FC2D0CA37BFFA8502F6B69DF1C8",
        ] {
            assert_eq!(identify(stored, &opts()), Ok("PLAIN-MD4"), "{stored}");
            assert_eq!(verify(stored, PW, &opts()), Ok(true), "{stored}");
            assert_eq!(
                verify(stored, b"Xr0ub4dor&3", &opts()),
                Ok(false),
                "{stored}"
            );
        }
        assert_eq!(
            hash("PLAIN-MD4", PW).unwrap(),
            "{PLAIN-MD4}962f9fc2d0ca37bffa8502f6b69df1c8"
        );
        assert!(matches!(
            verify("{PLAIN-MD4}962f9fc2d0ca37bffa8502f6b69df1c8", PW, &strict()),
            Err(SchemeError::WeakRefused(_))
        ));
    }

    /// Dovecot's plain_trunc_verify() takes an empty length (0): `doveadm pw
    /// -t '{PLAIN-TRUNC}-Tr0ub4dor&3'` verifies, compared in full.
    #[test]
    fn plain_trunc_with_empty_length() {
        assert_eq!(verify("{PLAIN-TRUNC}-Tr0ub4dor&3", PW, &opts()), Ok(true));
        assert_eq!(
            verify("{PLAIN-TRUNC}-Tr0ub4dor&3", b"Tr0ub4dor&", &opts()),
            Ok(false)
        );
        assert_eq!(
            verify("{PLAIN-TRUNC}-Tr0ub4dor&3", b"Tr0ub4dor&3x", &opts()),
            Ok(false)
        );
        assert!(matches!(
            verify("{PLAIN-TRUNC}Tr0ub4dor&3", PW, &opts()),
            Err(SchemeError::Malformed { .. })
        ));
    }

    /// Dovecot's password_get_scheme() only recognises `$1$…` without a
    /// `{SCHEME}`; every other bare value goes to the default scheme. With
    /// CRYPT that is crypt(3), which cannot check argon2 (`doveadm pw -t
    /// '{CRYPT}$argon2id$…'`: "Password mismatch").
    #[test]
    fn bare_values_use_the_default_scheme() {
        let argon2id = "$argon2id$v=19$m=256,t=2,p=1$JJAPFP9eQiD1/nmn07i0yQ$Ua5/scILcYxxqYWs1dZhpII3kpFllElzgfJQmWnaR/Q";
        let argon2i = "$argon2i$v=19$m=256,t=3,p=1$YXlcFsT4gJXPNzzDubDsvg$VEnkSRGOMpZZYxS1EqJTuxrwdC/hEuyF3WSZMdf7c3g";
        for stored in [argon2id, argon2i] {
            assert_ne!(verify(stored, PW, &opts()), Ok(true), "{stored}");
            assert_ne!(verify(&format!("{{CRYPT}}{stored}"), PW, &opts()), Ok(true));
        }
        let with_default = |scheme: &str| PasswdOptions {
            default_scheme: scheme.into(),
            ..PasswdOptions::default()
        };
        assert_eq!(verify(argon2id, PW, &with_default("ARGON2ID")), Ok(true));
        assert_eq!(
            identify(argon2id, &with_default("ARGON2ID")),
            Ok("ARGON2ID")
        );
        // With default_pass_scheme = PLAIN a bare "$6$…" is a cleartext password.
        let sha512 = "$6$i6lebws624USjG3g$1Fcz2QXxHsPCYwPY/Yuz/hNIVSnhxbJ4kWrP.N.8oP45/LXvsX.838LUKx8C8za4n2U3.gSclvzydQml8Pn3Q.";
        assert_eq!(identify(sha512, &with_default("PLAIN")), Ok("PLAIN"));
        assert_eq!(verify(sha512, PW, &with_default("PLAIN")), Ok(false));
        assert_eq!(
            verify(sha512, sha512.as_bytes(), &with_default("PLAIN")),
            Ok(true)
        );
        // But "$1$salt$hash" is MD5-CRYPT whatever the default.
        assert_eq!(
            verify(
                "$1$2VIlXgBJ$wCcOr7lU62Cxf5s13Hfom1",
                PW,
                &with_default("PLAIN")
            ),
            Ok(true)
        );
    }

    /// Counts are parsed like Dovecot's str_to_uint(): digits only.
    /// `doveadm pw -t`: "Invalid PBKDF2 passdb entry format", "Invalid
    /// SCRAM-SHA-1 iteration count in passdb".
    #[test]
    fn counts_are_digits_only() {
        for stored in [
            "{PBKDF2}$1$dpuYXxUzwEX7Vs2j$+5000$c7c2ad1d13c57c592ffae510c895349e6a8b433a",
            "{SCRAM-SHA-1}+4096,vosJOF5m2Dz0iAmVuOrTUA==,6VKvFDECJb/n8uwuv2Y7fWDvk+8=,BKvKwOSl2Of1ImKEGBU+wMCDEaQ=",
            "{SCRAM-SHA-1} 4096,vosJOF5m2Dz0iAmVuOrTUA==,6VKvFDECJb/n8uwuv2Y7fWDvk+8=,BKvKwOSl2Of1ImKEGBU+wMCDEaQ=",
        ] {
            assert!(
                matches!(verify(stored, PW, &opts()), Err(SchemeError::Malformed { .. })),
                "{stored}"
            );
        }
        assert!(scram_secret_of(
            "{SCRAM-SHA-1}+4096,vosJOF5m2Dz0iAmVuOrTUA==,6VKvFDECJb/n8uwuv2Y7fWDvk+8=,BKvKwOSl2Of1ImKEGBU+wMCDEaQ=",
            ScramAlg::Sha1,
            &opts()
        )
        .is_none());
    }

    #[test]
    fn supported_list_is_consistent() {
        for name in supported() {
            let d = lookup_def(name).expect(name);
            assert_ne!(d.kind, Kind::Unsupported, "{name}");
        }
        for d in SCHEMES {
            assert_eq!(
                supported().contains(&d.name),
                d.kind != Kind::Unsupported,
                "{}",
                d.name
            );
        }
    }
}
