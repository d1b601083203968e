//! Username validation.
//!
//! Runs on every login name that comes off the wire, before it goes near a
//! lookup, a log line or a path template. The rules are deliberately strict
//! about things that have a meaning somewhere else in a mail system (path
//! separators, `..`, template `%`, the passwd-file field separator) and
//! deliberately lax about everything else: non-ASCII UTF-8 names (RFC 6856),
//! `@domain` suffixes, `+` tags and spaces are all allowed.

use std::fmt;

/// Longest accepted username, in bytes.
pub const MAX_USERNAME_LEN: usize = 255;

/// Why a username was refused.
///
/// The `Display` form never echoes the offending name (it may contain control
/// characters meant to forge log lines); it only says which rule was broken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadUsername {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_USERNAME_LEN`] bytes.
    TooLong {
        /// Length of the refused name in bytes.
        len: usize,
    },
    /// The name contains `/` (would escape a home/mail path template).
    Slash,
    /// The name contains `..` (path traversal).
    DotDot,
    /// The name starts with `.` (hidden files, `.`/`..` directory names).
    LeadingDot,
    /// The name contains a NUL byte.
    Nul,
    /// The name contains a control character (C0, DEL or C1).
    Control,
    /// The name contains `%` (would be expanded by `%u`-style templates).
    Percent,
    /// The name contains `:` (the passwd-file field separator).
    Colon,
}

impl fmt::Display for BadUsername {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadUsername::Empty => f.write_str("username is empty"),
            BadUsername::TooLong { len } => write!(
                f,
                "username is too long ({len} bytes, at most {MAX_USERNAME_LEN})"
            ),
            BadUsername::Slash => f.write_str("username contains '/'"),
            BadUsername::DotDot => f.write_str("username contains '..'"),
            BadUsername::LeadingDot => f.write_str("username starts with '.'"),
            BadUsername::Nul => f.write_str("username contains a NUL byte"),
            BadUsername::Control => f.write_str("username contains a control character"),
            BadUsername::Percent => f.write_str("username contains '%'"),
            BadUsername::Colon => f.write_str("username contains ':'"),
        }
    }
}

impl std::error::Error for BadUsername {}

/// Check that `user` is acceptable as a login name.
///
/// Refused: the empty name, names longer than 255 bytes, `/`, `..`, a NUL
/// byte, control characters (ASCII < 0x20 and 0x7f, and also the Unicode C1
/// controls U+0080..U+009F), a leading `.`, `%` (no template injection) and
/// `:` (cannot appear in a passwd-file). Everything else is accepted,
/// including non-ASCII UTF-8.
pub fn validate_username(user: &str) -> Result<(), BadUsername> {
    if user.is_empty() {
        return Err(BadUsername::Empty);
    }
    if user.len() > MAX_USERNAME_LEN {
        return Err(BadUsername::TooLong { len: user.len() });
    }
    if user.starts_with('.') {
        return Err(BadUsername::LeadingDot);
    }
    if user.contains("..") {
        return Err(BadUsername::DotDot);
    }
    for c in user.chars() {
        match c {
            '\0' => return Err(BadUsername::Nul),
            '/' => return Err(BadUsername::Slash),
            '%' => return Err(BadUsername::Percent),
            ':' => return Err(BadUsername::Colon),
            c if c.is_control() => return Err(BadUsername::Control),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in [
            "alice",
            "Alice",
            "alice@example.com",
            "alice+tag@example.com",
            "first.last",
            "a.b.c",
            "a-b_c",
            "x",
            "jürgen@exämple.de",
            "ユーザー",
            "with space",
            "trailing.",
            "#hash",
        ] {
            assert_eq!(validate_username(ok), Ok(()), "{ok:?} should be accepted");
        }
        let max = "a".repeat(MAX_USERNAME_LEN);
        assert_eq!(validate_username(&max), Ok(()));
    }

    #[test]
    fn refuses_dangerous_names() {
        let long = "a".repeat(MAX_USERNAME_LEN + 1);
        let cases: &[(&str, BadUsername)] = &[
            ("", BadUsername::Empty),
            (&long, BadUsername::TooLong { len: 256 }),
            ("a/b", BadUsername::Slash),
            ("/etc", BadUsername::Slash),
            ("a..b", BadUsername::DotDot),
            ("user/..", BadUsername::DotDot),
            ("..", BadUsername::LeadingDot),
            (".hidden", BadUsername::LeadingDot),
            ("a\0b", BadUsername::Nul),
            ("a\nb", BadUsername::Control),
            ("a\rb", BadUsername::Control),
            ("a\tb", BadUsername::Control),
            ("a\x1bb", BadUsername::Control),
            ("a\x7fb", BadUsername::Control),
            ("a\u{85}b", BadUsername::Control),
            ("%u", BadUsername::Percent),
            ("a%d", BadUsername::Percent),
            ("a:b", BadUsername::Colon),
        ];
        for (name, want) in cases {
            assert_eq!(validate_username(name), Err(*want), "{name:?}");
        }
    }

    #[test]
    fn length_limit_counts_bytes_not_chars() {
        // 128 two-byte characters = 256 bytes.
        let name = "é".repeat(128);
        assert_eq!(name.chars().count(), 128);
        assert_eq!(
            validate_username(&name),
            Err(BadUsername::TooLong { len: 256 })
        );
    }

    #[test]
    fn display_never_echoes_the_name() {
        let err = validate_username("evil\r\nforged log line").unwrap_err();
        let shown = err.to_string();
        assert_eq!(shown, "username contains a control character");
        assert!(!shown.contains("evil"));
        assert_eq!(
            BadUsername::TooLong { len: 300 }.to_string(),
            "username is too long (300 bytes, at most 255)"
        );
    }
}
