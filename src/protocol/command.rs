//! POP3 command parsing.
//!
//! Owns: turning one framed line into a typed [`Command`]. Keywords are case-insensitive;
//! arguments are separated by single spaces (RFC 1939 §3): a lone trailing space after the
//! keyword means no arguments, any other empty argument (`LIST  1`, `RETR 1 `) is an error.
//! Message numbers are parsed into [`MsgNum`], which cannot be zero, so `RETR 0` can never
//! mean message 1. `PASS` takes the rest of the line verbatim, since passwords may contain
//! spaces (RFC 1939 §7 notes this).
//!
//! Does not own: deciding whether a command is allowed in the current state (see `session`).

use std::num::NonZeroU32;

/// A message number as the client writes it: 1-based and never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MsgNum(NonZeroU32);

impl MsgNum {
    /// Message number `n`, if it is not zero.
    pub fn new(n: u32) -> Option<Self> {
        NonZeroU32::new(n).map(Self)
    }
    /// The number as sent on the wire.
    pub fn get(self) -> u32 {
        self.0.get()
    }
    /// Zero-based index into the maildrop.
    pub fn index(self) -> usize {
        (self.0.get() - 1) as usize
    }
    /// The number of the message at zero-based `index`.
    pub fn from_index(index: usize) -> Self {
        let n = u32::try_from(index + 1).expect("maildrop larger than u32::MAX messages");
        Self(NonZeroU32::new(n).expect("index + 1 is never zero"))
    }
}

/// A parsed command.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    User(&'a str),
    /// Rest of the line after `PASS `, as raw bytes.
    Pass(&'a [u8]),
    Apop {
        user: &'a str,
        digest: &'a str,
    },
    Capa,
    Stls,
    /// `AUTH [mechanism [initial-response]]` (RFC 5034).
    Auth {
        mechanism: Option<&'a str>,
        initial: Option<&'a str>,
    },
    Quit,
    Stat,
    List(Option<MsgNum>),
    Uidl(Option<MsgNum>),
    Retr(MsgNum),
    Top(MsgNum, u64),
    Dele(MsgNum),
    Noop,
    Rset,
}

/// Why a line is not a valid command. Each maps to one `-ERR` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The keyword is not a POP3 command we know.
    UnknownCommand,
    /// Wrong number of arguments or a malformed argument.
    BadArguments,
    /// A message number that is zero, negative, not a number or too large.
    BadMessageNumber,
    /// Bytes that are not valid UTF-8 where text is required.
    NotUtf8,
}

impl ParseError {
    /// The reply text (after `-ERR `).
    pub fn reply(self) -> &'static str {
        match self {
            ParseError::UnknownCommand => "Unknown command.",
            ParseError::BadArguments => "Invalid arguments.",
            ParseError::BadMessageNumber => "Invalid message number.",
            ParseError::NotUtf8 => "Invalid characters in command.",
        }
    }
}

/// Command keywords counted for metrics, in a fixed order; the last one stands for anything
/// that is not a POP3 command.
pub const KEYWORDS: [&str; 16] = [
    "USER", "PASS", "APOP", "AUTH", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "QUIT", "TOP",
    "UIDL", "CAPA", "STLS", "unknown",
];

/// Index into [`KEYWORDS`] of a command line's keyword (case-insensitive).
pub fn keyword_index(line: &[u8]) -> usize {
    let word = line.split(|&b| b == b' ').next().unwrap_or(b"");
    KEYWORDS[..KEYWORDS.len() - 1]
        .iter()
        .position(|k| k.as_bytes().eq_ignore_ascii_case(word))
        .unwrap_or(KEYWORDS.len() - 1)
}

/// Parses one command line (without its line ending).
pub fn parse(line: &[u8]) -> Result<Command<'_>, ParseError> {
    let (keyword, rest) = match memchr::memchr(b' ', line) {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    if keyword.is_empty() || keyword.len() > 4 {
        return Err(ParseError::UnknownCommand);
    }
    let mut kw = [0u8; 4];
    for (d, s) in kw.iter_mut().zip(keyword) {
        *d = s.to_ascii_uppercase();
    }
    let kw = &kw[..keyword.len()];
    // PASS keeps its argument verbatim (spaces included).
    if kw == b"PASS" {
        if rest.is_empty() {
            return Err(ParseError::BadArguments);
        }
        return Ok(Command::Pass(rest));
    }
    let rest = std::str::from_utf8(rest).map_err(|_| ParseError::NotUtf8)?;
    // Arguments are separated by single spaces (RFC 1939 §3). A lone trailing space ("STAT ")
    // means no arguments; an empty argument anywhere else ("LIST  1", "RETR 1 ") is an error.
    if !rest.is_empty() && rest.split(' ').any(str::is_empty) {
        return Err(ParseError::BadArguments);
    }
    let mut args = rest.split(' ').filter(|a| !a.is_empty());
    let mut arg = || args.next();
    let cmd = match kw {
        b"USER" => Command::User(arg().ok_or(ParseError::BadArguments)?),
        b"APOP" => {
            let user = arg().ok_or(ParseError::BadArguments)?;
            let digest = arg().ok_or(ParseError::BadArguments)?;
            Command::Apop { user, digest }
        }
        b"CAPA" => Command::Capa,
        b"AUTH" => Command::Auth {
            mechanism: arg(),
            initial: arg(),
        },
        b"STLS" => Command::Stls,
        b"QUIT" => Command::Quit,
        b"STAT" => Command::Stat,
        b"NOOP" => Command::Noop,
        b"RSET" => Command::Rset,
        b"LIST" => Command::List(arg().map(msgnum).transpose()?),
        b"UIDL" => Command::Uidl(arg().map(msgnum).transpose()?),
        b"RETR" => Command::Retr(msgnum(arg().ok_or(ParseError::BadArguments)?)?),
        b"DELE" => Command::Dele(msgnum(arg().ok_or(ParseError::BadArguments)?)?),
        b"TOP" => {
            let n = msgnum(arg().ok_or(ParseError::BadArguments)?)?;
            let k = lines(arg().ok_or(ParseError::BadArguments)?)?;
            Command::Top(n, k)
        }
        _ => return Err(ParseError::UnknownCommand),
    };
    if arg().is_some() {
        return Err(ParseError::BadArguments);
    }
    Ok(cmd)
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// A message number: decimal digits only, not zero. Out-of-range values are not valid numbers.
fn msgnum(s: &str) -> Result<MsgNum, ParseError> {
    if !digits(s) {
        return Err(ParseError::BadMessageNumber);
    }
    s.parse::<u32>()
        .ok()
        .and_then(MsgNum::new)
        .ok_or(ParseError::BadMessageNumber)
}

/// TOP's line count: decimal digits, zero allowed, at most u64::MAX (as Dovecot).
fn lines(s: &str) -> Result<u64, ParseError> {
    if !digits(s) {
        return Err(ParseError::BadArguments);
    }
    s.parse::<u64>().map_err(|_| ParseError::BadArguments)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(x: u32) -> MsgNum {
        MsgNum::new(x).unwrap()
    }

    #[test]
    fn table() {
        use Command::*;
        let ok: &[(&[u8], Command)] = &[
            (b"USER alice", User("alice")),
            (b"user alice", User("alice")),
            (b"PASS secret with spaces ", Pass(b"secret with spaces ")),
            (b"pAsS x", Pass(b"x")),
            (
                b"APOP bob c4c9334bac560ecc979e58001b3e22fb",
                Apop {
                    user: "bob",
                    digest: "c4c9334bac560ecc979e58001b3e22fb",
                },
            ),
            (b"CAPA", Capa),
            (
                b"AUTH",
                Auth {
                    mechanism: None,
                    initial: None,
                },
            ),
            (
                b"auth plain AGEAYg==",
                Auth {
                    mechanism: Some("plain"),
                    initial: Some("AGEAYg=="),
                },
            ),
            (b"stls", Stls),
            (b"quit", Quit),
            (b"STAT", Stat),
            (b"STAT ", Stat),
            (b"LIST", List(None)),
            (b"LIST 3", List(Some(n(3)))),
            (b"UIDL", Uidl(None)),
            (b"uidl 10", Uidl(Some(n(10)))),
            (b"RETR 1", Retr(n(1))),
            (b"DELE 4294967295", Dele(n(u32::MAX))),
            (b"TOP 1 0", Top(n(1), 0)),
            (b"TOP 2 10", Top(n(2), 10)),
            (b"TOP 2 18446744073709551615", Top(n(2), u64::MAX)),
            (b"NOOP", Noop),
            (b"RSET", Rset),
        ];
        for (line, want) in ok {
            assert_eq!(
                parse(line).as_ref(),
                Ok(want),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        use ParseError::*;
        let bad: &[(&[u8], ParseError)] = &[
            (b"", UnknownCommand),
            (b"FOO", UnknownCommand),
            (b"RETRX 1", UnknownCommand),
            (b" RETR 1", UnknownCommand),
            (b"USER", BadArguments),
            (b"USER a b", BadArguments),
            (b"PASS", BadArguments),
            (b"PASS ", BadArguments),
            (b"APOP bob", BadArguments),
            (b"RETR", BadArguments),
            (b"RETR 0", BadMessageNumber),
            (b"RETR -1", BadMessageNumber),
            (b"RETR +1", BadMessageNumber),
            (b"RETR 1a", BadMessageNumber),
            (b"RETR 4294967296", BadMessageNumber),
            (b"RETR 99999999999999999999", BadMessageNumber),
            (b"LIST 0", BadMessageNumber),
            (b"LIST 1 2", BadArguments),
            (b"STAT 1", BadArguments),
            (b"QUIT now", BadArguments),
            (b"STLS x", BadArguments),
            (b"AUTH PLAIN x y", BadArguments),
            (b"TOP 1", BadArguments),
            (b"TOP 1 -1", BadArguments),
            (b"TOP 1 18446744073709551616", BadArguments),
            (b"LIST  3", BadArguments),
            (b"LIST  ", BadArguments),
            (b"RETR 1 ", BadArguments),
            (b"USER  alice", BadArguments),
            (b"TOP 0 1", BadMessageNumber),
            (b"DELE", BadArguments),
            (b"USER \xff\xfe", NotUtf8),
            (b"NOOP\0", UnknownCommand),
        ];
        for (line, want) in bad {
            assert_eq!(parse(line), Err(*want), "{}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn msgnum_index_roundtrip() {
        assert_eq!(n(1).index(), 0);
        assert_eq!(MsgNum::from_index(0), n(1));
        assert!(MsgNum::new(0).is_none());
    }
}
