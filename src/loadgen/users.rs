//! The users file: `user:password` lines, or a Dovecot passwd-file with plaintext passwords.

use anyhow::{bail, Context as _};
use std::path::Path;

/// A login the load generator can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password: String,
}

/// Plaintext schemes Dovecot knows; any other `{SCHEME}` cannot be logged into.
const PLAIN_SCHEMES: [&str; 4] = ["PLAIN", "CLEAR", "CLEARTEXT", "PLAIN-TRUNC"];

/// Parses one line. `Ok(None)` for blank lines and `#` comments.
///
/// Accepted forms:
/// - `user:password`: the password is the rest of the line (it may contain `:`), unless
/// - the line has the passwd-file shape (at least 7 `:`-separated fields, as in
///   `user:{PLAIN}pw::::::`), where the password is the second field; or
/// - the password field starts with `{SCHEME}`: then only plaintext schemes (`{PLAIN}`,
///   `{CLEAR}`, `{CLEARTEXT}`, `{PLAIN-TRUNC}`) are accepted and the field ends at the next `:`.
pub fn parse_line(line: &str) -> anyhow::Result<Option<User>> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() || line.trim_start().starts_with('#') {
        return Ok(None);
    }
    let Some((name, rest)) = line.split_once(':') else {
        bail!("expected `user:password`");
    };
    if name.is_empty() {
        bail!("empty user name");
    }
    let password = if let Some(after) = rest.strip_prefix('{') {
        let Some((scheme, pw)) = after.split_once('}') else {
            bail!("unterminated {{SCHEME}} in the password field");
        };
        if !PLAIN_SCHEMES.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
            bail!("user {name:?} has a {{{scheme}}} password; the load generator needs plaintext ({{PLAIN}}) passwords");
        }
        pw.split(':').next().unwrap_or("")
    } else if line.split(':').count() >= 7 {
        rest.split(':').next().unwrap_or("")
    } else {
        rest
    };
    if password.contains(['\r', '\n']) {
        bail!("password contains a line break");
    }
    Ok(Some(User {
        name: name.to_string(),
        password: password.to_string(),
    }))
}

pub fn parse(text: &str) -> anyhow::Result<Vec<User>> {
    let mut users = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if let Some(u) = parse_line(line).with_context(|| format!("line {}", n + 1))? {
            users.push(u);
        }
    }
    Ok(users)
}

pub fn load(path: &Path) -> anyhow::Result<Vec<User>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the users file {}", path.display()))?;
    let users = parse(&text).with_context(|| format!("in {}", path.display()))?;
    if users.is_empty() {
        bail!("{} lists no users", path.display());
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(name: &str, pw: &str) -> User {
        User {
            name: name.into(),
            password: pw.into(),
        }
    }

    #[test]
    fn forms() {
        let text =
            "# comment\n\nalice:secret\nbob:{PLAIN}pw:1000:1000::/home/bob::\ncarol:{plain}x\n\
                    dave:a:b\nerin:pw::::::\nfrank:{CLEAR}p:q\n";
        assert_eq!(
            parse(text).unwrap(),
            [
                u("alice", "secret"),
                u("bob", "pw"),
                u("carol", "x"),
                u("dave", "a:b"),
                u("erin", "pw"),
                u("frank", "p"),
            ]
        );
    }

    #[test]
    fn refuses_hashes_and_garbage() {
        assert!(parse("x:{SHA512-CRYPT}$6$abc\n").is_err());
        assert!(parse("nocolon\n").is_err());
        assert!(parse(":pw\n").is_err());
        assert!(parse("x:{PLAIN\n").is_err());
    }
}
