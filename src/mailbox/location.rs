//! Mail locations: Dovecot-style templates such as `maildir:/srv/mail/%d/%n/Maildir` or
//! `maildir:~/Maildir` expanded for one user.
//!
//! Owns: the template syntax (`%u` user, `%n` local part, `%d` domain, `%h` and a leading
//! `~` the home directory, `%%` a percent sign; Dovecot's `:KEY=VALUE` options after the path
//! are accepted and ignored) and the rule that an expanded location is an absolute path that
//! cannot climb out of its directory.
//!
//! Does not own: validating the username itself (`auth` refuses names with `/`, `..`, control
//! characters); this module checks the result again anyway.

use std::path::{Component, Path, PathBuf};

/// Why a location could not be expanded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LocationError {
    #[error("mail location must start with 'maildir:' or be an absolute path: {0}")]
    Format(String),
    #[error("unknown variable %{0} in mail location")]
    UnknownVariable(char),
    #[error("mail location uses the home directory, but the user has none")]
    NoHome,
    #[error("expanded mail location is not a safe absolute path")]
    Unsafe,
}

/// Checks a template's syntax without a user (for configuration validation).
pub fn validate(template: &str) -> Result<(), LocationError> {
    expand(template, "user@example.org", Some(Path::new("/home/user"))).map(|_| ())
}

/// Expands `template` for `user` (whose home directory is `home`).
pub fn expand(template: &str, user: &str, home: Option<&Path>) -> Result<PathBuf, LocationError> {
    let spec = template.strip_prefix("maildir:").unwrap_or(template);
    // Dovecot allows options after the path: maildir:~/Maildir:LAYOUT=fs:INBOX=...
    let path = spec.split(':').next().unwrap_or("");
    if path.is_empty() {
        return Err(LocationError::Format(template.into()));
    }
    let (local, domain) = match user.rsplit_once('@') {
        Some((l, d)) => (l, d),
        None => (user, ""),
    };
    let home_str = || home.and_then(Path::to_str).ok_or(LocationError::NoHome);
    let mut out = String::new();
    let mut rest = path;
    if let Some(r) = rest.strip_prefix('~') {
        out.push_str(home_str()?);
        rest = r;
    }
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('u') => out.push_str(user),
            Some('n') => out.push_str(local),
            Some('d') => out.push_str(domain),
            Some('h') => out.push_str(home_str()?),
            Some('%') => out.push('%'),
            Some(v) => return Err(LocationError::UnknownVariable(v)),
            None => return Err(LocationError::Format(template.into())),
        }
    }
    let p = PathBuf::from(out);
    if !p.is_absolute() {
        return Err(LocationError::Format(template.into()));
    }
    if p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(LocationError::Unsafe);
    }
    Ok(p)
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
}
