//! Mail locations: Dovecot-style templates such as `maildir:/srv/mail/%d/%n/Maildir` or
//! `maildir:~/Maildir` expanded for one user, the way Dovecot 2.3 expands `mail_location`.
//!
//! Owns: the template syntax and the rule that an expanded location is an absolute path that
//! cannot climb out of its directory. As in Dovecot, variables are expanded in the whole
//! string first (`lib/var-expand.c`), then the driver prefix and the `:`-separated options
//! are split off (`mail_storage_create_full`, `mailbox_list_settings_parse`), then a leading
//! `~` of the path is expanded. Variables: `%u`/`%{user}` the user, `%n`/`%{username}` the
//! part before the first `@`, `%d`/`%{domain}` the part after it (empty without one),
//! `%h`/`%{home}` the home directory, `%s`/`%{service}` `pop3`, `%{auth_user}`,
//! `%{auth_username}`, `%{auth_domain}` (the same as the user's, there are no master users),
//! `%%` a percent sign; Dovecot's `[-][0]<width>`/`<offset>.<width>` substrings and zero
//! padding and its modifiers `L U E X R H N M D T` apply to all of them. The driver prefix
//! (`maildir:`, any case) may be left out. `::` in the path stands for a `:`. Dovecot's
//! `:KEY=VALUE` options after the path are accepted and ignored. A path of `~` or `~/…` is in
//! the home directory; `~name/…` (another account's home) is refused.
//!
//! Does not own: validating the username itself (`auth` refuses names with `/`, `..`, control
//! characters); this module checks the result again anyway.

use std::borrow::Cow;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};

/// Why a location could not be expanded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocationError {
    #[error("mail location must start with 'maildir:' or be an absolute path: {0}")]
    Format(String),
    #[error("unknown variable %{0} in mail location")]
    UnknownVariable(char),
    #[error("unknown variable %{{{0}}} in mail location")]
    UnknownLongVariable(String),
    #[error("mail location uses the home directory, but the user has none")]
    NoHome,
    #[error("mail location uses another account's home directory ({0}), which is not supported")]
    OtherHome(String),
    #[error("expanded mail location is not a safe absolute path")]
    Unsafe,
}

/// Checks a template's syntax without a user (for configuration validation).
pub fn validate(template: &str) -> Result<(), LocationError> {
    expand(template, "user@example.org", Some(Path::new("/home/user"))).map(|_| ())
}

/// Expands `template` for `user` (whose home directory is `home`).
pub fn expand(template: &str, user: &str, home: Option<&Path>) -> Result<PathBuf, LocationError> {
    let bad = || LocationError::Format(template.into());
    // Dovecot splits at the first '@' (t_strcut / i_strchr_to_next).
    let (local, domain) = match user.split_once('@') {
        Some((l, d)) => (l, d),
        None => (user, ""),
    };
    let vars = Vars {
        user,
        local,
        domain,
        home: home.map(|h| h.as_os_str().as_bytes()),
    };
    let expanded = var_expand(template, &vars)?;
    // "driver:data" when the location starts with [A-Za-z0-9_]+ and a ':'.
    let driver_len = expanded
        .iter()
        .take_while(|&&c| c.is_ascii_alphanumeric() || c == b'_')
        .count();
    let data = if driver_len > 0 && expanded.get(driver_len) == Some(&b':') {
        if !expanded[..driver_len].eq_ignore_ascii_case(b"maildir") {
            return Err(bad());
        }
        &expanded[driver_len + 1..]
    } else {
        &expanded[..]
    };
    if data.is_empty() {
        return Err(bad());
    }
    let root = first_arg(data);
    let root = match root.strip_prefix(b"~") {
        None => root,
        Some(rest) if rest.is_empty() || rest.starts_with(b"/") => {
            let mut p = vars.home()?.to_vec();
            p.extend_from_slice(rest);
            p
        }
        Some(rest) => {
            let name = rest.split(|&c| c == b'/').next().unwrap_or_default();
            return Err(LocationError::OtherHome(format!(
                "~{}",
                String::from_utf8_lossy(name)
            )));
        }
    };
    let p = PathBuf::from(OsString::from_vec(root));
    if !p.is_absolute() {
        return Err(bad());
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(LocationError::Unsafe);
    }
    Ok(p)
}

/// The path: the data up to the first lone ':' (Dovecot's `split_next_arg`: an empty field,
/// i.e. "::", joins its neighbours with a ':').
fn first_arg(data: &[u8]) -> Vec<u8> {
    let mut fields = data.split(|&c| c == b':');
    let mut out = fields.next().unwrap_or_default().to_vec();
    let mut rest = fields.peekable();
    while rest.next_if(|f| f.is_empty()).is_some() {
        match rest.next() {
            Some(f) => {
                out.push(b':');
                out.extend_from_slice(f);
            }
            None => break,
        }
    }
    out
}

/// The values a location can use.
struct Vars<'a> {
    user: &'a str,
    local: &'a str,
    domain: &'a str,
    home: Option<&'a [u8]>,
}

impl Vars<'_> {
    fn home(&self) -> Result<&[u8], LocationError> {
        self.home.ok_or(LocationError::NoHome)
    }

    fn short(&self, key: char) -> Result<&[u8], LocationError> {
        Ok(match key {
            'u' => self.user.as_bytes(),
            'n' => self.local.as_bytes(),
            'd' => self.domain.as_bytes(),
            's' => b"pop3",
            'h' => self.home()?,
            '%' => b"%",
            other => return Err(LocationError::UnknownVariable(other)),
        })
    }

    fn long(&self, key: &str) -> Result<&[u8], LocationError> {
        Ok(match key {
            "user" | "auth_user" => self.user.as_bytes(),
            "username" | "auth_username" => self.local.as_bytes(),
            "domain" | "auth_domain" => self.domain.as_bytes(),
            "service" => b"pop3",
            "home" => self.home()?,
            other => return Err(LocationError::UnknownLongVariable(other.into())),
        })
    }
}

/// Dovecot's `var_expand`: `%[-][0]<n>[.[0][-]<n>][modifiers]<key>` or `%…{long key}`.
fn var_expand(template: &str, vars: &Vars) -> Result<Vec<u8>, LocationError> {
    const MAX_MODIFIERS: usize = 10;
    let t = template.as_bytes();
    let mut out = Vec::with_capacity(t.len() + 32);
    let mut i = 0;
    while i < t.len() {
        if t[i] != b'%' {
            out.push(t[i]);
            i += 1;
            continue;
        }
        i += 1;
        let number = |i: &mut usize| {
            let mut n: i64 = 0;
            while let Some(d) = t.get(*i).filter(|d| d.is_ascii_digit()) {
                n = n.saturating_mul(10).saturating_add(i64::from(d - b'0'));
                *i += 1;
            }
            n
        };
        let mut ctx = Ctx::default();
        let mut sign = 1;
        if t.get(i) == Some(&b'-') {
            sign = -1;
            i += 1;
        }
        if t.get(i) == Some(&b'0') {
            ctx.zero_padding = true;
            i += 1;
        }
        ctx.width = number(&mut i);
        if t.get(i) == Some(&b'.') {
            ctx.offset = sign * ctx.width;
            sign = 1;
            i += 1;
            ctx.zero_padding = false;
            if t.get(i) == Some(&b'0') {
                ctx.zero_padding = true;
                i += 1;
            }
            if t.get(i) == Some(&b'-') {
                sign = -1;
                i += 1;
            }
            ctx.width = sign * number(&mut i);
        }
        let mut modifiers = Vec::new();
        while modifiers.len() < MAX_MODIFIERS {
            match t.get(i) {
                Some(&m) if b"LUEXRHNMDT".contains(&m) => {
                    modifiers.push(m);
                    i += 1;
                }
                _ => break,
            }
        }
        if i >= t.len() {
            // Dovecot stops at a '%' (and its modifiers) that ends the string.
            break;
        }
        let value: &[u8] = if t[i] == b'{' && t[i..].contains(&b'}') {
            let end = long_key_end(t, i);
            let key = &template[i + 1..end];
            i = end + 1;
            vars.long(key)?
        } else {
            let key = template[i..].chars().next().expect("inside the template");
            i += key.len_utf8();
            vars.short(key)?
        };
        let mut value = Cow::Borrowed(value);
        for m in modifiers {
            value = Cow::Owned(modify(m, &value, &mut ctx));
        }
        ctx.append(&value, &mut out);
    }
    Ok(out)
}

/// Where the long key starting with the '{' at `open` ends: its matching '}' (nesting and
/// backslash escapes counted), or the end of the template when it has none.
fn long_key_end(t: &[u8], open: usize) -> usize {
    let mut depth = 1;
    let mut escape = false;
    for (j, &c) in t.iter().enumerate().skip(open + 1) {
        if escape {
            escape = false;
        } else if c == b'\\' {
            escape = true;
        } else if c == b'{' {
            depth += 1;
        } else if c == b'}' {
            depth -= 1;
            if depth == 0 {
                return j;
            }
        }
    }
    t.len()
}

/// Offset, width and padding of one variable (Dovecot's `var_expand_context`).
#[derive(Default)]
struct Ctx {
    offset: i64,
    width: i64,
    zero_padding: bool,
}

impl Ctx {
    fn append(&self, value: &[u8], out: &mut Vec<u8>) {
        let len = value.len() as i64;
        let value = if self.offset < 0 {
            if len > -self.offset {
                &value[(len + self.offset) as usize..]
            } else {
                value
            }
        } else {
            &value[self.offset.min(len) as usize..]
        };
        let len = value.len() as i64;
        if self.width == 0 {
            out.extend_from_slice(value);
        } else if !self.zero_padding {
            // A negative width counts from the end; one larger than the value keeps it all.
            let width = if self.width < 0 {
                len + self.width
            } else {
                self.width
            };
            let keep = if width < 0 { len } else { width.min(len) };
            out.extend_from_slice(&value[..keep as usize]);
        } else {
            // "%05n"-like padding, no truncation.
            for _ in len..self.width {
                out.push(b'0');
            }
            out.extend_from_slice(value);
        }
    }
}

/// One of Dovecot's variable modifiers.
fn modify(m: u8, s: &[u8], ctx: &mut Ctx) -> Vec<u8> {
    use md5::{Digest, Md5};
    match m {
        b'L' => s.to_ascii_lowercase(),
        b'U' => s.to_ascii_uppercase(),
        b'E' => {
            let mut o = Vec::with_capacity(s.len());
            for &c in s {
                if matches!(c, b'"' | b'\\' | b'\'') {
                    o.push(b'\\');
                }
                o.push(c);
            }
            o
        }
        b'X' => {
            let n = std::str::from_utf8(s)
                .ok()
                .filter(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()))
                .and_then(|d| d.parse::<u64>().ok())
                .unwrap_or(0);
            format!("{n:x}").into_bytes()
        }
        b'R' => s.iter().rev().copied().collect(),
        b'H' => {
            // C: unsigned int %= int.
            let v = str_hash(s);
            let v = match ctx.take_width() {
                Some(w) => v.checked_rem(w as u32).unwrap_or(v),
                None => v,
            };
            ctx.hash_hex(v)
        }
        b'N' => {
            // The first 8 bytes of the MD5, big-endian; C: uint64_t %= int.
            let digest = Md5::digest(s);
            let v = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"));
            let v = match ctx.take_width() {
                Some(w) => v.checked_rem(w as u64).unwrap_or(v),
                None => v,
            };
            ctx.hash_hex(v as u32)
        }
        b'M' => hex::encode(Md5::digest(s)).into_bytes(),
        b'D' => {
            let mut o = Vec::with_capacity(s.len());
            for &c in s {
                if c == b'.' {
                    o.extend_from_slice(b",dc=");
                } else {
                    o.push(c);
                }
            }
            o
        }
        b'T' => {
            // C isspace(): space, \t, \n, \v, \f, \r.
            let keep = s
                .iter()
                .rposition(|c| !matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'))
                .map_or(0, |p| p + 1);
            s[..keep].to_vec()
        }
        _ => unreachable!("not a modifier"),
    }
}

impl Ctx {
    /// `%H`/`%N` use the width as their modulus (and then it is gone).
    fn take_width(&mut self) -> Option<i64> {
        (self.width != 0).then(|| std::mem::take(&mut self.width))
    }

    /// `%H`/`%N`: the hash in hex, zero-padded to the offset's length (which is used up).
    fn hash_hex(&mut self, value: u32) -> Vec<u8> {
        let hex = format!("{value:x}");
        let pad = usize::try_from(std::mem::take(&mut self.offset))
            .unwrap_or(0)
            .saturating_sub(hex.len());
        let mut o = vec![b'0'; pad];
        o.extend_from_slice(hex.as_bytes());
        o
    }
}

/// Dovecot's `str_hash` (the ASU hash from glib).
fn str_hash(s: &[u8]) -> u32 {
    let mut h: u32 = 0;
    for &c in s {
        h = (h << 4).wrapping_add(u32::from(c));
        let g = h & 0xf000_0000;
        if g != 0 {
            h ^= g >> 24;
            h ^= g;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansions() {
        let home = Some(Path::new("/home/al"));
        let cases = [
            (
                "maildir:/srv/mail/%d/%n/Maildir",
                "al@ex.org",
                "/srv/mail/ex.org/al/Maildir",
            ),
            ("maildir:/srv/mail/%u", "al", "/srv/mail/al"),
            ("maildir:~/Maildir", "al", "/home/al/Maildir"),
            ("maildir:%h/Maildir:LAYOUT=fs", "al", "/home/al/Maildir"),
            ("/var/mail/%u/100%%", "al", "/var/mail/al/100%"),
        ];
        for (t, u, want) in cases {
            assert_eq!(expand(t, u, home).unwrap(), PathBuf::from(want), "{t}");
        }
        assert_eq!(
            expand("maildir:~/M", "al", None),
            Err(LocationError::NoHome)
        );
        assert_eq!(
            expand("maildir:/m/%x", "al", home),
            Err(LocationError::UnknownVariable('x'))
        );
        assert!(matches!(
            expand("maildir:rel/%u", "al", home),
            Err(LocationError::Format(_))
        ));
        assert!(matches!(
            expand("mbox:", "al", home),
            Err(LocationError::Format(_))
        ));
        assert_eq!(
            expand("maildir:/m/%u", "..", home),
            Err(LocationError::Unsafe)
        );
        assert!(validate("maildir:/srv/%d/%n").is_ok());
    }

    #[test]
    fn local_part_and_domain_split_at_the_first_at_sign() {
        // Dovecot: %n = t_strcut(user, '@'), %d = i_strchr_to_next(user, '@').
        assert_eq!(
            expand("maildir:/srv/%d/%n", "al@branch@ex.org", None),
            Ok(PathBuf::from("/srv/branch@ex.org/al"))
        );
    }

    #[test]
    fn dovecot_modifiers_substrings_and_long_names() {
        let home = Some(Path::new("/home/al"));
        let cases = [
            ("maildir:/srv/%Ld/%Ln", "Al@Ex.ORG", "/srv/ex.org/al"),
            ("maildir:/srv/%Lu", "Al@Ex.ORG", "/srv/al@ex.org"),
            ("maildir:/srv/%Uu", "al", "/srv/AL"),
            (
                "maildir:/srv/%d/%1n/%n",
                "alice@ex.org",
                "/srv/ex.org/a/alice",
            ),
            ("maildir:/srv/%1n/%2.1n/%n", "alice", "/srv/a/i/alice"),
            ("maildir:/srv/%-2.2n", "alice", "/srv/ce"),
            ("maildir:/srv/%0.-2n", "alice", "/srv/ali"),
            ("maildir:/srv/%05n", "al", "/srv/000al"),
            ("maildir:/srv/%1Ln%n", "Al", "/srv/aAl"),
            (
                "maildir:/srv/%{domain}/%{username}",
                "al@ex.org",
                "/srv/ex.org/al",
            ),
            ("maildir:/srv/%{user}/%s", "al", "/srv/al/pop3"),
            ("maildir:%{home}/Maildir", "al", "/home/al/Maildir"),
            ("maildir:/srv/%L{user}", "AL", "/srv/al"),
            ("maildir:/srv/%Rn", "alice", "/srv/ecila"),
            (
                "maildir:/srv/%Dd",
                "al@mail.ex.org",
                "/srv/mail,dc=ex,dc=org",
            ),
            ("maildir:/srv/%Xu", "255", "/srv/ff"),
            // str_hash("al") = 0x67c; 0x67c % 256 = 0x7c.
            ("maildir:/srv/%Hn", "al", "/srv/67c"),
            ("maildir:/srv/%2.256Hn/%n", "al", "/srv/7c/al"),
            ("maildir:/srv/%4.256Hn", "al", "/srv/007c"),
            // MD5("al") = 97282b27 8e5d5186 …: the 64-bit prefix % 256 = 0x86.
            ("maildir:/srv/%2.256Nn", "al", "/srv/86"),
            ("maildir:/srv/%Nn", "al", "/srv/8e5d5186"),
            (
                "maildir:/srv/%Mn",
                "al",
                "/srv/97282b278e5d51866f8e57204e4820e5",
            ),
            ("maildir:/srv/%3Mn/%n", "al", "/srv/972/al"),
            // A '%' (with modifiers) at the very end is dropped, as in Dovecot.
            ("maildir:/srv/%u%L", "al", "/srv/al"),
            ("maildir:/srv/%u%", "al", "/srv/al"),
        ];
        for (t, u, want) in cases {
            assert_eq!(expand(t, u, home), Ok(PathBuf::from(want)), "{t} for {u}");
        }
        assert_eq!(
            expand("maildir:/srv/%{nosuch}", "al", home),
            Err(LocationError::UnknownLongVariable("nosuch".into()))
        );
        assert_eq!(
            expand("maildir:/srv/%{user", "al", home),
            Err(LocationError::UnknownVariable('{'))
        );
        assert_eq!(
            expand("maildir:%{home}/M", "al", None),
            Err(LocationError::NoHome)
        );
    }

    #[test]
    fn driver_prefix_escaped_colons_and_tilde() {
        let home = Some(Path::new("/home/al"));
        let cases = [
            // Storage driver names are matched case-insensitively (mail_storage_find_class).
            ("Maildir:~/Maildir", "/home/al/Maildir"),
            ("MAILDIR:/srv/%u", "/srv/al"),
            // "::" is a ':' inside the path (split_next_arg); options still follow a lone ':'.
            ("maildir:/srv/a::b/%u:LAYOUT=fs", "/srv/a:b/al"),
            ("maildir:/srv/%u:", "/srv/al"),
            ("maildir:~", "/home/al"),
            ("~/Maildir", "/home/al/Maildir"),
        ];
        for (t, want) in cases {
            assert_eq!(expand(t, "al", home), Ok(PathBuf::from(want)), "{t}");
        }
        // Dovecot reads ~vmail as vmail's home directory (getpwnam), not as "$HOME" + "vmail".
        assert_eq!(
            expand("maildir:~vmail/%d/%n", "al@ex.org", home),
            Err(LocationError::OtherHome("~vmail".into()))
        );
        assert!(matches!(
            expand("sdbox:/srv/%u", "al", home),
            Err(LocationError::Format(_))
        ));
        assert!(matches!(
            expand("maildir:", "al", home),
            Err(LocationError::Format(_))
        ));
    }
}
