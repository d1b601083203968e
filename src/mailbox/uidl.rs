//! UIDL formats in Dovecot's `pop3_uidl_format` syntax.
//!
//! Owns: parsing a format once ([`UidlFormat::parse`]) and expanding it for one message
//! ([`UidlFormat::expand`]). Variables: `%u` IMAP UID, `%v` UIDVALIDITY, `%f` Maildir base
//! name (the file name up to `:`), `%g` message GUID (Dovecot: the `G` record of
//! `dovecot-uidlist`, else the base name), `%m` hex MD5 of the header block, `%%` a percent
//! sign; long forms `%{uid}`, `%{uidvalidity}`, `%{filename}`, `%{guid}`, `%{md5}`.
//! Modifiers as Dovecot's `var_expand`: `[-][0][width]` then any of `X` (number to hex, as
//! Dovecot: lower case), `L`/`U` (lower/upper case), `R` (reverse), `M` (MD5 of the value,
//! hex). With a leading `0` the value is zero-padded to `width`; without it, `width` keeps the
//! first `width` characters (`-width`: the last ones), as Dovecot does.
//!
//! Does not own: where UIDs and UIDVALIDITY come from ([`super::uidlist`]).

use std::fmt;

/// What a UIDL may be built from, for one message.
#[derive(Debug, Clone, Copy, Default)]
pub struct UidlVars<'a> {
    pub uid: u32,
    pub uidvalidity: u32,
    pub base: &'a str,
    /// `G` record of `dovecot-uidlist`; `None` means the base name.
    pub guid: Option<&'a str>,
    /// Hex MD5 of the header block; `None` when not computed (the format does not use it).
    pub header_md5: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Uid,
    Uidvalidity,
    File,
    Guid,
    Md5,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var {
        var: Var,
        zero: bool,
        neg: bool,
        width: usize,
        mods: String,
    },
}

/// A parsed UIDL format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidlFormat {
    text: String,
    parts: Vec<Part>,
}

/// A format that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FormatError {}

/// Dovecot's default `pop3_uidl_format`.
pub const DOVECOT_DEFAULT: &str = "%08Xu%08Xv";

impl UidlFormat {
    /// Parses `text`. Unknown variables and modifiers are refused (a typo would otherwise
    /// change every UIDL).
    pub fn parse(text: &str) -> Result<UidlFormat, FormatError> {
        let err = |m: &str| Err(FormatError(format!("UIDL format {text:?}: {m}")));
        if text.is_empty() {
            return err("empty");
        }
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut it = text.chars().peekable();
        while let Some(c) = it.next() {
            if c != '%' {
                if !(c.is_ascii_graphic()) {
                    return err("only printable ASCII without spaces is allowed");
                }
                lit.push(c);
                continue;
            }
            if it.peek() == Some(&'%') {
                it.next();
                lit.push('%');
                continue;
            }
            let neg = it.next_if_eq(&'-').is_some();
            let zero = it.next_if_eq(&'0').is_some();
            let mut width = 0usize;
            while let Some(d) = it.next_if(|c| c.is_ascii_digit()) {
                width = width
                    .saturating_mul(10)
                    .saturating_add(d as usize - '0' as usize);
            }
            let mut mods = String::new();
            while let Some(m) = it.next_if(|c| matches!(c, 'X' | 'L' | 'U' | 'R' | 'M')) {
                mods.push(m);
            }
            let var = match it.next() {
                Some('u') => Var::Uid,
                Some('v') => Var::Uidvalidity,
                Some('f') => Var::File,
                Some('g') => Var::Guid,
                Some('m') => Var::Md5,
                Some('{') => {
                    let name: String = it.by_ref().take_while(|&c| c != '}').collect();
                    match name.as_str() {
                        "uid" => Var::Uid,
                        "uidvalidity" => Var::Uidvalidity,
                        "filename" => Var::File,
                        "guid" => Var::Guid,
                        "md5" => Var::Md5,
                        _ => return err(&format!("unknown variable %{{{name}}}")),
                    }
                }
                Some(c) => return err(&format!("unknown variable or modifier %{c}")),
                None => return err("ends in %"),
            };
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(Part::Var {
                var,
                zero,
                neg,
                width,
                mods,
            });
        }
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(UidlFormat {
            text: text.to_owned(),
            parts,
        })
    }

    /// The format as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    fn uses(&self, v: Var) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Var { var, .. } if *var == v))
    }

    /// True when the format needs IMAP UIDs (`%u` or `%v`).
    pub fn needs_uids(&self) -> bool {
        self.uses(Var::Uid) || self.uses(Var::Uidvalidity)
    }

    /// True when the format needs the header MD5 (`%m`), i.e. reading the message.
    pub fn needs_header_md5(&self) -> bool {
        self.uses(Var::Md5)
    }

    /// True when the format is exactly the base name (`%f`).
    pub fn is_base_name(&self) -> bool {
        matches!(self.parts.as_slice(), [Part::Var { var: Var::File, zero: false, neg: false, width: 0, mods }] if mods.is_empty())
    }

    /// Expands the format for one message. The result may still be an invalid UIDL (too
    /// long, odd characters); [`super::name::uidl_for_base`]-style hashing is the caller's.
    pub fn expand(&self, v: &UidlVars<'_>) -> String {
        let mut out = String::with_capacity(24);
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var {
                    var,
                    zero,
                    neg,
                    width,
                    mods,
                } => {
                    let mut val = match var {
                        Var::Uid => v.uid.to_string(),
                        Var::Uidvalidity => v.uidvalidity.to_string(),
                        Var::File => v.base.to_owned(),
                        Var::Guid => v.guid.unwrap_or(v.base).to_owned(),
                        Var::Md5 => v.header_md5.unwrap_or("").to_owned(),
                    };
                    for m in mods.chars() {
                        val = match m {
                            'X' => format!("{:x}", val.parse::<u64>().unwrap_or(0)),
                            'L' => val.to_ascii_lowercase(),
                            'U' => val.to_ascii_uppercase(),
                            'R' => val.chars().rev().collect(),
                            'M' => {
                                use md5::{Digest, Md5};
                                hex::encode(Md5::digest(val.as_bytes()))
                            }
                            _ => val,
                        };
                    }
                    if *width > 0 {
                        if *zero {
                            for _ in val.len()..*width {
                                out.push('0');
                            }
                        } else if val.len() > *width {
                            // Octets, as Dovecot counts; a cut inside a character leaves
                            // U+FFFD for its part (such a UIDL is not valid, and is hashed).
                            let b = val.as_bytes();
                            let kept = if *neg {
                                &b[b.len() - width..]
                            } else {
                                &b[..*width]
                            };
                            val = String::from_utf8_lossy(kept).into_owned();
                        }
                    }
                    out.push_str(&val);
                }
            }
        }
        out
    }
}

/// Hex MD5 of a message's header block (up to and including the empty line that ends it).
pub fn header_md5(msg: &[u8]) -> String {
    use md5::{Digest, Md5};
    let end = super::transfer::top_end(msg, 0);
    hex::encode(Md5::digest(&msg[..end]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> UidlVars<'static> {
        UidlVars {
            uid: 26,
            uidvalidity: 1_700_000_000,
            base: "1700000000.M1P2.host,S=10",
            guid: None,
            header_md5: Some("0123abcd"),
        }
    }

    #[test]
    fn dovecot_formats() {
        let e = |f: &str| UidlFormat::parse(f).unwrap().expand(&vars());
        assert_eq!(e("%08Xu%08Xv"), "0000001a6553f100");
        assert_eq!(e("%v.%u"), "1700000000.26");
        assert_eq!(e("%f"), "1700000000.M1P2.host,S=10");
        assert_eq!(e("%g"), "1700000000.M1P2.host,S=10");
        assert_eq!(e("UID%u-%v"), "UID26-1700000000");
        assert_eq!(e("%{uidvalidity}-%{uid}"), "1700000000-26");
        assert_eq!(e("%m"), "0123abcd");
        assert_eq!(e("%4f"), "1700");
        assert_eq!(e("%-4f"), "S=10");
        assert_eq!(e("%XUv"), "6553F100");
        assert_eq!(e("a%%b%u"), "a%b26");
        assert!(UidlFormat::parse("%08Xu%08Xv").unwrap().needs_uids());
        assert!(!UidlFormat::parse("%f").unwrap().needs_uids());
        assert!(UidlFormat::parse("%f").unwrap().is_base_name());
        assert!(UidlFormat::parse("%m").unwrap().needs_header_md5());
    }

    #[test]
    fn a_width_that_cuts_a_character_does_not_panic() {
        // Base names are UTF-8 (listing skips others) but need not be ASCII; a width counts
        // octets, as in Dovecot, and may fall inside a character. The result is deterministic
        // (and, not being a valid UIDL, hashed by the caller).
        let v = UidlVars {
            base: "abcé.h",
            ..vars()
        };
        let e = |f: &str| UidlFormat::parse(f).unwrap().expand(&v);
        assert_eq!(e("%3f"), "abc");
        assert_eq!(e("%4f"), e("%4f"));
        assert_ne!(e("%4f"), e("%3f"));
        assert_eq!(e("%-2f"), ".h");
        let w = UidlVars {
            base: "x.hé",
            ..vars()
        };
        let back = UidlFormat::parse("%-1f").unwrap().expand(&w);
        assert_ne!(back, UidlFormat::parse("%-2f").unwrap().expand(&w));
    }

    #[test]
    fn bad_formats_are_refused() {
        for f in ["", "%", "%q", "%{nope}", "a b", "%08Zu"] {
            assert!(UidlFormat::parse(f).is_err(), "{f:?}");
        }
    }

    #[test]
    fn md5_of_headers() {
        assert_eq!(
            header_md5(b"A: 1\n\nbody\n"),
            header_md5(b"A: 1\n\nother body\n")
        );
    }
}
