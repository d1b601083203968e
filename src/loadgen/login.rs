//! How a load-generator session logs in (`--auth`): USER/PASS, APOP, or SASL through `AUTH`
//! (RFC 5034) with PLAIN, LOGIN, CRAM-MD5, SCRAM-SHA-1 or SCRAM-SHA-256, so a benchmark can
//! measure what each costs the server. The digests come from [`crate::auth::scheme`], the
//! server's own implementations; SCRAM also checks the server's signature, as a real client
//! does.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::auth::scheme::{self, ScramAlg};
use crate::protocol::sasl::Mechanism;

use super::client::{err_kind, show, Conn, ErrorKind, Result, SessionError};

/// A login method (`--auth`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Auth {
    /// USER and PASS (RFC 1939).
    #[default]
    User,
    /// APOP with the greeting's timestamp (RFC 1939).
    Apop,
    /// AUTH PLAIN with the credentials as initial response (RFC 4616).
    Plain,
    /// AUTH LOGIN: user name and password as two base64 answers.
    Login,
    /// AUTH CRAM-MD5 (RFC 2195).
    CramMd5,
    /// AUTH SCRAM-SHA-1 (RFC 5802), without channel binding.
    #[value(name = "scram-sha-1")]
    ScramSha1,
    /// AUTH SCRAM-SHA-256 (RFC 7677), without channel binding.
    #[value(name = "scram-sha-256")]
    ScramSha256,
}

impl Auth {
    pub fn name(self) -> &'static str {
        match self {
            Auth::User => "user",
            Auth::Apop => "apop",
            Auth::Plain => "plain",
            Auth::Login => "login",
            Auth::CramMd5 => "cram-md5",
            Auth::ScramSha1 => "scram-sha-1",
            Auth::ScramSha256 => "scram-sha-256",
        }
    }
}

fn refused(line: &[u8], what: &str, user: &str) -> SessionError {
    SessionError::new(
        err_kind(line, ErrorKind::Auth),
        format!("{what} for {user}: {}", show(line)),
    )
}

fn protocol(what: &str, detail: impl std::fmt::Display) -> SessionError {
    SessionError::new(ErrorKind::Protocol, format!("{what}: {detail}"))
}

/// Reads the reply that ends a login step: `+OK` or a refusal.
async fn expect_ok(c: &mut Conn, what: &str, user: &str) -> Result<()> {
    match c.status().await? {
        Ok(_) => Ok(()),
        Err(line) => Err(refused(line, what, user)),
    }
}

/// Reads a SASL continuation `+ <base64>` and decodes it; `-ERR` is a refusal.
async fn challenge(c: &mut Conn, what: &str, user: &str) -> Result<Vec<u8>> {
    let line = c.read_line().await?;
    if line.starts_with(b"-ERR") {
        return Err(refused(line, what, user));
    }
    let data = match line.strip_prefix(b"+") {
        Some(rest) if !rest.starts_with(b"OK") => rest.trim_ascii(),
        _ => {
            return Err(protocol(
                what,
                format!("expected `+ `, got {:?}", show(line)),
            ))
        }
    };
    B64.decode(data)
        .map_err(|e| protocol(what, format!("bad base64 in the challenge: {e}")))
}

/// Logs in as `user` with `auth`.
pub async fn login(c: &mut Conn, user: &str, password: &str, auth: Auth) -> Result<()> {
    match auth {
        Auth::User => {
            c.command_str(b"USER", user).await?;
            expect_ok(c, "USER", user).await?;
            c.command_str(b"PASS", password).await?;
            expect_ok(c, "PASS", user).await
        }
        Auth::Apop => {
            let Some(stamp) = c.greeting_stamp() else {
                return Err(protocol("APOP", "the greeting has no <timestamp>"));
            };
            let digest = scheme::apop_digest(stamp, password.as_bytes());
            c.command_str(b"APOP", &format!("{user} {digest}")).await?;
            expect_ok(c, "APOP", user).await
        }
        Auth::Plain => {
            let ir = B64.encode(format!("\0{user}\0{password}"));
            c.command_str(b"AUTH", &format!("PLAIN {ir}")).await?;
            expect_ok(c, "AUTH PLAIN", user).await
        }
        Auth::Login => {
            c.command_str(b"AUTH", "LOGIN").await?;
            challenge(c, "AUTH LOGIN", user).await?;
            c.send_line(B64.encode(user).as_bytes()).await?;
            challenge(c, "AUTH LOGIN", user).await?;
            c.send_line(B64.encode(password).as_bytes()).await?;
            expect_ok(c, "AUTH LOGIN", user).await
        }
        Auth::CramMd5 => {
            c.command_str(b"AUTH", "CRAM-MD5").await?;
            let ch = challenge(c, "AUTH CRAM-MD5", user).await?;
            let ch = String::from_utf8(ch)
                .map_err(|_| protocol("AUTH CRAM-MD5", "challenge is not UTF-8"))?;
            let digest = scheme::cram_md5_digest(password.as_bytes(), &ch);
            c.send_line(B64.encode(format!("{user} {digest}")).as_bytes())
                .await?;
            expect_ok(c, "AUTH CRAM-MD5", user).await
        }
        Auth::ScramSha1 => scram(c, Mechanism::ScramSha1, ScramAlg::Sha1, user, password).await,
        Auth::ScramSha256 => {
            scram(c, Mechanism::ScramSha256, ScramAlg::Sha256, user, password).await
        }
    }
}

/// `saslname` of RFC 5802: `=` and `,` escaped.
fn saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

/// `r=`, `s=` (decoded) and `i=` of a server-first message.
fn server_first(msg: &str) -> Option<(&str, Vec<u8>, u32)> {
    let mut f = msg.split(',');
    let nonce = f.next()?.strip_prefix("r=")?;
    let salt = B64.decode(f.next()?.strip_prefix("s=")?).ok()?;
    let iterations = f.next()?.strip_prefix("i=")?.parse().ok()?;
    Some((nonce, salt, iterations))
}

async fn scram(
    c: &mut Conn,
    mech: Mechanism,
    alg: ScramAlg,
    user: &str,
    password: &str,
) -> Result<()> {
    let what = &format!("AUTH {}", mech.name());
    let cnonce = scheme::sasl_nonce();
    let bare = format!("n={},r={cnonce}", saslname(user));
    let first = B64.encode(format!("n,,{bare}"));
    c.send_line(format!("{what} {first}").as_bytes()).await?;
    let sf = challenge(c, what, user).await?;
    let sf = String::from_utf8(sf).map_err(|_| protocol(what, "server-first is not UTF-8"))?;
    let Some((nonce, salt, iterations)) = server_first(&sf) else {
        return Err(protocol(what, format!("bad server-first {sf:?}")));
    };
    if !nonce.starts_with(&cnonce) || nonce.len() == cnonce.len() {
        return Err(protocol(what, "the server's nonce does not extend ours"));
    }
    // `biws` = base64("n,,"): no channel binding.
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{bare},{sf},{without_proof}");
    let (proof, signature) = scheme::scram_client_answer(
        alg,
        password.as_bytes(),
        &salt,
        iterations,
        auth_message.as_bytes(),
    );
    let fin = format!("{without_proof},p={}", B64.encode(proof));
    c.send_line(B64.encode(fin).as_bytes()).await?;
    let server_final = challenge(c, what, user).await?;
    if server_final != format!("v={}", B64.encode(signature)).as_bytes() {
        return Err(SessionError::new(
            ErrorKind::Auth,
            format!("{what} for {user}: the server's signature does not match"),
        ));
    }
    // RFC 5034 §4: the server sent its last data in a continuation; an empty answer ends it.
    c.send_line(b"").await?;
    expect_ok(c, what, user).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scram_helpers() {
        assert_eq!(saslname("a=b,c"), "a=3Db=2Cc");
        let (r, s, i) = server_first("r=abcXYZ,s=QSXCR+Q6sek8bf92,i=4096").unwrap();
        assert_eq!((r, s.len(), i), ("abcXYZ", 12, 4096));
        assert!(server_first("r=abc,s=!!,i=4096").is_none());
        assert!(server_first("r=abc,s=QSXCR+Q6sek8bf92").is_none());
    }
}
