//! Maildir file names as Postfix, Dovecot and Courier write them.
//!
//! Owns: splitting `<base>[:2,<flags>]` (the base ends at the first `:`), reading Dovecot's
//! `,S=<size>` and `,W=<crlf size>` fields exactly as Dovecot 2.3's `maildir_filename_get_size`
//! does, the delivery-order sort key, and the UIDL derived from the base name.
//!
//! Does not own: touching the file system.

/// A parsed Maildir file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaildirName<'a> {
    /// Everything before the `:` info separator (the part that stays when flags change).
    pub base: &'a str,
    /// The flags after `:2,`, if any.
    pub flags: Option<&'a str>,
    /// `,S=`: physical size, when present.
    pub size: Option<u64>,
    /// `,W=`: size with CRLF line endings, when present.
    pub crlf_size: Option<u64>,
}

impl<'a> MaildirName<'a> {
    /// Parses a file name. Names starting with "." are not messages (`None`).
    pub fn parse(name: &'a str) -> Option<Self> {
        if name.is_empty() || name.starts_with('.') {
            return None;
        }
        let (base, info) = match name.find(':') {
            Some(i) => (&name[..i], Some(&name[i + 1..])),
            None => (name, None),
        };
        if base.is_empty() {
            return None;
        }
        let flags = info.and_then(|i| i.strip_prefix("2,"));
        Some(Self {
            base,
            flags,
            size: extension_size(name, b'S'),
            crlf_size: extension_size(name, b'W'),
        })
    }

    /// Sort key for delivery order: the leading seconds, then Dovecot's `M<usecs>`, then the
    /// base name itself.
    pub fn order_key(&self) -> (u64, u64, &'a str) {
        let mut parts = self.base.splitn(3, '.');
        let secs = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        let usecs = parts
            .next()
            .and_then(|p| p.strip_prefix('M'))
            .map(|p| {
                let digits = p.bytes().take_while(u8::is_ascii_digit).count();
                p[..digits].parse().unwrap_or(0)
            })
            .unwrap_or(0);
        (secs, usecs, self.base)
    }
}

/// A size field of the name, read as Dovecot's `maildir_filename_get_size` reads it: only the
/// first `,<key>=` in the whole name (the flags part included) counts; its decimal digits
/// must be followed by `,`, `:` or the end of the name. A malformed first field is not made
/// up for by a later one. Overlong numbers wrap, as Dovecot's `uoff_t` arithmetic does. One
/// departure: a field without digits is no size (the file is read), where Dovecot takes 0 and
/// would list the message as empty while sending its bytes.
fn extension_size(name: &str, key: u8) -> Option<u64> {
    let b = name.as_bytes();
    let start = b
        .windows(3)
        .position(|w| w[0] == b',' && w[1] == key && w[2] == b'=')?
        + 3;
    let digits = &b[start..];
    let n = digits.iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 || !matches!(digits.get(n), None | Some(b',' | b':')) {
        return None;
    }
    Some(digits[..n].iter().fold(0u64, |acc, d| {
        acc.wrapping_mul(10).wrapping_add(u64::from(d - b'0'))
    }))
}

/// True when `s` may be used as a UIDL as is: 1–70 characters in 0x21..=0x7E (RFC 1939 §7).
pub fn valid_uidl(s: &str) -> bool {
    (1..=70).contains(&s.len()) && s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// The UIDL of a message with this base name: the base itself when it is a valid UIDL,
/// otherwise `H` and the hex MD5 of the base (stable, 33 characters).
pub fn uidl_for_base(base: &str) -> String {
    if valid_uidl(base) {
        base.to_owned()
    } else {
        use md5::{Digest, Md5};
        format!("H{}", hex::encode(Md5::digest(base.as_bytes())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dovecot_name() {
        let n = MaildirName::parse("1700000000.M123P45.host,S=1000,W=1030:2,S").unwrap();
        assert_eq!(n.base, "1700000000.M123P45.host,S=1000,W=1030");
        assert_eq!(n.flags, Some("S"));
        assert_eq!(n.size, Some(1000));
        assert_eq!(n.crlf_size, Some(1030));
    }

    #[test]
    fn postfix_name_and_oddities() {
        let n = MaildirName::parse("1700000000.V801I1M2.mx").unwrap();
        assert_eq!(
            (n.base, n.flags, n.size, n.crlf_size),
            ("1700000000.V801I1M2.mx", None, None, None)
        );
        assert_eq!(MaildirName::parse("x:1,odd").unwrap().flags, None);
        assert_eq!(MaildirName::parse("x,S=zz").unwrap().size, None);
        assert!(MaildirName::parse(".hidden").is_none());
        assert!(MaildirName::parse(":2,S").is_none());
        assert!(MaildirName::parse("").is_none());
        assert_eq!(
            MaildirName::parse("not-a-maildir-name").unwrap().base,
            "not-a-maildir-name"
        );
    }

    #[test]
    fn sizes_are_read_like_dovecot_maildir_filename_get_size() {
        let sizes = |n: &str| {
            let p = MaildirName::parse(n).unwrap();
            (p.size, p.crlf_size)
        };
        // Only the first `,S=` counts, even when a later one would parse.
        assert_eq!(sizes("1.M1P1.h,S=10,S=20,W=30"), (Some(10), Some(30)));
        assert_eq!(sizes("1.M1P1.h,S=x,S=20"), (None, None));
        // No digits at all is no size: the file is read (Dovecot would take 0).
        assert_eq!(sizes("1.M1P1.h,S=,W=:2,S"), (None, None));
        assert_eq!(sizes("1.M1P1.h,W="), (None, None));
        assert_eq!(sizes("1.M1P1.h,S=,S=9"), (None, None));
        // Only digits: no sign, no spaces.
        assert_eq!(sizes("1.M1P1.h,S=+5,W=+7"), (None, None));
        // The flags part is searched too, as Dovecot passes the whole file name.
        assert_eq!(sizes("1.M1P1.h:2,W=42"), (None, Some(42)));
    }

    #[test]
    fn order() {
        let a = MaildirName::parse("1700000000.M99P1.h").unwrap();
        let b = MaildirName::parse("1700000000.M100P1.h").unwrap();
        let c = MaildirName::parse("1700000001.M1P1.h").unwrap();
        assert!(a.order_key() < b.order_key());
        assert!(b.order_key() < c.order_key());
    }

    #[test]
    fn uidl() {
        assert_eq!(uidl_for_base("1700000000.M1P1.h"), "1700000000.M1P1.h");
        let long = "1".repeat(71);
        let u = uidl_for_base(&long);
        assert_eq!(u.len(), 33);
        assert!(valid_uidl(&u));
        assert_eq!(u, uidl_for_base(&long));
        assert!(valid_uidl(&uidl_for_base("has space")));
    }
}
