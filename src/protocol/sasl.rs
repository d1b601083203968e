//! SASL mechanisms for POP3 `AUTH` (RFC 5034), sans I/O.
//!
//! Owns: mechanism names and sets, the base64 framing of client responses, and the parsing
//! half of each mechanism's exchange: PLAIN (RFC 4616), LOGIN (de facto), CRAM-MD5
//! (RFC 2195) and SCRAM-SHA-1 / SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding.
//! The session ([`super::session`]) drives the exchange with these pieces; this module has
//! no state of its own.
//!
//! Does not own: any cryptography (verifying a CRAM-MD5 digest or a SCRAM proof, deriving
//! SCRAM keys: that is `auth/`, run by the runtime), random nonces (given by the runtime) or
//! password storage.
//!
//! # Limits
//! A client response (and an `AUTH` line with an initial response) may be up to
//! [`MAX_SASL_LINE`] octets including CRLF; RFC 5034 §4 lifts the 255-octet command limit for
//! them. A longer line is discarded and the exchange fails with `-ERR`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Longest SASL line accepted (a response, or `AUTH` with an initial response), with CRLF.
pub const MAX_SASL_LINE: usize = 8192;

/// A SASL mechanism corepop implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Plain,
    Login,
    CramMd5,
    ScramSha1,
    ScramSha256,
}

impl Mechanism {
    /// Every mechanism, strongest first (the order CAPA and `AUTH` list them in).
    pub const ALL: [Mechanism; 5] = [
        Mechanism::ScramSha256,
        Mechanism::ScramSha1,
        Mechanism::CramMd5,
        Mechanism::Plain,
        Mechanism::Login,
    ];

    /// The IANA name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::CramMd5 => "CRAM-MD5",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }

    /// Parses a mechanism name (case-insensitive).
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Self::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// Mechanisms that send the password itself (subject to the plaintext policy).
    pub fn sends_password(self) -> bool {
        matches!(self, Mechanism::Plain | Mechanism::Login)
    }

    /// True for the SCRAM family.
    pub fn is_scram(self) -> bool {
        matches!(self, Mechanism::ScramSha1 | Mechanism::ScramSha256)
    }

    /// Length of the SCRAM hash (proof and signature length).
    pub fn scram_hash_len(self) -> usize {
        match self {
            Mechanism::ScramSha1 => 20,
            _ => 32,
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of mechanisms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mechanisms(u8);

impl Mechanisms {
    /// No mechanism.
    pub const fn none() -> Self {
        Mechanisms(0)
    }
    /// Every mechanism.
    pub fn all() -> Self {
        Mechanism::ALL.into_iter().fold(Self::none(), Self::with)
    }
    /// This set plus `m`.
    pub fn with(self, m: Mechanism) -> Self {
        Mechanisms(self.0 | m.bit())
    }
    /// This set without `m`.
    pub fn without(self, m: Mechanism) -> Self {
        Mechanisms(self.0 & !m.bit())
    }
    /// Whether `m` is in the set.
    pub fn contains(self, m: Mechanism) -> bool {
        self.0 & m.bit() != 0
    }
    /// True when empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The members, strongest first.
    pub fn iter(self) -> impl Iterator<Item = Mechanism> {
        Mechanism::ALL
            .into_iter()
            .filter(move |m| self.contains(*m))
    }
}

/// Why a client response was refused. Each maps to one `-ERR` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslError {
    /// Not valid base64.
    BadBase64,
    /// Longer than [`MAX_SASL_LINE`].
    TooLong,
    /// The decoded message does not follow the mechanism's syntax.
    Malformed,
    /// PLAIN/SCRAM authorization identity other than the authentication identity.
    AuthzidRefused,
    /// SCRAM channel binding requested (`p=`); not offered.
    ChannelBinding,
    /// SCRAM client-final nonce differs from the one the server sent.
    NonceMismatch,
    /// SCRAM `c=` does not repeat the GS2 header.
    BindingMismatch,
    /// The client cancelled with `*`.
    Cancelled,
}

impl SaslError {
    /// The reply text (after `-ERR `).
    pub fn reply(self) -> &'static str {
        match self {
            SaslError::BadBase64 => "Invalid base64 data in SASL response.",
            SaslError::TooLong => "SASL response too long.",
            SaslError::Malformed => "Malformed SASL response.",
            SaslError::AuthzidRefused => {
                "[AUTH] Authorization identity must be empty or the authentication identity."
            }
            SaslError::ChannelBinding => "Channel binding is not supported.",
            SaslError::NonceMismatch => "[AUTH] SCRAM nonce mismatch.",
            SaslError::BindingMismatch => "[AUTH] SCRAM channel binding data mismatch.",
            // No `[AUTH]`: RFC 3206 §4 reserves it for a problem with the credentials, and a
            // client that cancels has not been told its password is wrong (Dovecot: no code).
            SaslError::Cancelled => "Authentication cancelled.",
        }
    }
}

/// Decodes one client response line: `*` cancels, an empty line is an empty response, `=`
/// (only allowed as an initial response) is an empty response too.
pub fn decode_response(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    if line == b"*" {
        return Err(SaslError::Cancelled);
    }
    if line.is_empty() || line == b"=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(line).map_err(|_| SaslError::BadBase64)
}

/// `+ <base64>` continuation.
pub fn continuation(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(b"+ ");
    let start = out.len();
    out.resize(
        start + base64::encoded_len(data.len(), true).unwrap_or(0),
        0,
    );
    let n = STANDARD
        .encode_slice(data, &mut out[start..])
        .unwrap_or_default();
    out.truncate(start + n);
    out.extend_from_slice(b"\r\n");
}

/// PLAIN (RFC 4616): `[authzid] NUL authcid NUL passwd`. Returns (authcid, password).
/// An authzid other than empty or the authcid is refused (no proxy/master users).
pub fn parse_plain(msg: &[u8]) -> Result<(String, Vec<u8>), SaslError> {
    let mut parts = msg.splitn(3, |&b| b == 0);
    let (Some(authz), Some(authc), Some(pass)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(SaslError::Malformed);
    };
    if authc.is_empty() || pass.is_empty() || pass.contains(&0) {
        return Err(SaslError::Malformed);
    }
    let authc = std::str::from_utf8(authc).map_err(|_| SaslError::Malformed)?;
    if !authz.is_empty() && authz != authc.as_bytes() {
        return Err(SaslError::AuthzidRefused);
    }
    Ok((authc.to_owned(), pass.to_vec()))
}

/// LOGIN's username (or any UTF-8 text field without NUL).
pub fn parse_text(msg: &[u8]) -> Result<String, SaslError> {
    if msg.is_empty() || msg.contains(&0) {
        return Err(SaslError::Malformed);
    }
    std::str::from_utf8(msg)
        .map(str::to_owned)
        .map_err(|_| SaslError::Malformed)
}

/// CRAM-MD5 response: `user SP 32-hex-digest`. Returns (user, lowercase hex digest).
pub fn parse_cram_md5(msg: &[u8]) -> Result<(String, String), SaslError> {
    let text = std::str::from_utf8(msg).map_err(|_| SaslError::Malformed)?;
    let (user, digest) = text.rsplit_once(' ').ok_or(SaslError::Malformed)?;
    if user.is_empty()
        || user.contains('\0')
        || digest.len() != 32
        || !digest.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err(SaslError::Malformed);
    }
    Ok((user.to_owned(), digest.to_ascii_lowercase()))
}

/// A parsed SCRAM client-first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramClientFirst {
    /// The GS2 header exactly as sent (`n,,` or `y,,`, or with `a=`), for the `c=` check.
    pub gs2_header: String,
    /// The authentication identity (`n=`, with `=2C`/`=3D` decoded).
    pub user: String,
    /// The client nonce (`r=`).
    pub client_nonce: String,
    /// `client-first-message-bare`, for the AuthMessage.
    pub bare: String,
}

/// Decodes a SCRAM `saslname` (`=2C` → `,`, `=3D` → `=`; any other `=` is an error).
fn saslname(s: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3).ok_or(SaslError::Malformed)?;
        match esc {
            "=2C" | "=2c" => out.push(','),
            "=3D" | "=3d" => out.push('='),
            _ => return Err(SaslError::Malformed),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if out.is_empty() || out.contains('\0') {
        return Err(SaslError::Malformed);
    }
    Ok(out)
}

fn printable_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Parses a SCRAM client-first message (RFC 5802 §7). Channel binding (`p=`) and the
/// reserved `m=` extension are refused; an authzid must equal the username.
pub fn parse_scram_client_first(msg: &[u8]) -> Result<ScramClientFirst, SaslError> {
    let text = std::str::from_utf8(msg).map_err(|_| SaslError::Malformed)?;
    let mut it = text.splitn(3, ',');
    let (Some(cbind), Some(authzid), Some(bare)) = (it.next(), it.next(), it.next()) else {
        return Err(SaslError::Malformed);
    };
    match cbind {
        "n" | "y" => {}
        c if c.starts_with("p=") => return Err(SaslError::ChannelBinding),
        _ => return Err(SaslError::Malformed),
    }
    let gs2_len = cbind.len() + authzid.len() + 2;
    let authzid = match authzid {
        "" => None,
        a => Some(saslname(a.strip_prefix("a=").ok_or(SaslError::Malformed)?)?),
    };
    let mut fields = bare.split(',');
    let user = fields
        .next()
        .and_then(|f| f.strip_prefix("n="))
        .ok_or(SaslError::Malformed)
        .and_then(saslname)?;
    let nonce = fields
        .next()
        .and_then(|f| f.strip_prefix("r="))
        .filter(|n| printable_nonce(n))
        .ok_or(SaslError::Malformed)?;
    for ext in fields {
        if ext.starts_with("m=") || ext.len() < 2 || ext.as_bytes()[1] != b'=' {
            return Err(SaslError::Malformed);
        }
    }
    if authzid.is_some_and(|a| a != user) {
        return Err(SaslError::AuthzidRefused);
    }
    Ok(ScramClientFirst {
        gs2_header: text[..gs2_len].to_owned(),
        user,
        client_nonce: nonce.to_owned(),
        bare: bare.to_owned(),
    })
}

/// The server-first message: `r=<client nonce><server nonce>,s=<salt>,i=<iterations>`.
pub fn scram_server_first(
    client_nonce: &str,
    server_nonce: &str,
    salt: &[u8],
    iterations: u32,
) -> String {
    format!(
        "r={client_nonce}{server_nonce},s={},i={iterations}",
        STANDARD.encode(salt)
    )
}

/// A checked SCRAM client-final message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramClientFinal {
    /// `client-final-message-without-proof`, for the AuthMessage.
    pub without_proof: String,
    /// The decoded ClientProof.
    pub proof: Vec<u8>,
}

/// Parses a SCRAM client-final message and checks it against the exchange so far:
/// `c=` must be the base64 of the GS2 header, `r=` the combined nonce, `p=` a proof of
/// `hash_len` octets, last.
pub fn parse_scram_client_final(
    msg: &[u8],
    gs2_header: &str,
    nonce: &str,
    hash_len: usize,
) -> Result<ScramClientFinal, SaslError> {
    let text = std::str::from_utf8(msg).map_err(|_| SaslError::Malformed)?;
    let (without_proof, proof) = text.rsplit_once(",p=").ok_or(SaslError::Malformed)?;
    let mut fields = without_proof.split(',');
    let c = fields
        .next()
        .and_then(|f| f.strip_prefix("c="))
        .ok_or(SaslError::Malformed)?;
    let r = fields
        .next()
        .and_then(|f| f.strip_prefix("r="))
        .ok_or(SaslError::Malformed)?;
    for ext in fields {
        if ext.len() < 2 || ext.as_bytes()[1] != b'=' || ext.starts_with("p=") {
            return Err(SaslError::Malformed);
        }
    }
    let cbind = STANDARD.decode(c).map_err(|_| SaslError::Malformed)?;
    let proof = STANDARD.decode(proof).map_err(|_| SaslError::Malformed)?;
    if proof.len() != hash_len {
        return Err(SaslError::Malformed);
    }
    if r != nonce {
        return Err(SaslError::NonceMismatch);
    }
    if cbind != gs2_header.as_bytes() {
        return Err(SaslError::BindingMismatch);
    }
    Ok(ScramClientFinal {
        without_proof: without_proof.to_owned(),
        proof,
    })
}

/// The server-final message `v=<base64 ServerSignature>`.
pub fn scram_server_final(signature: &[u8]) -> Vec<u8> {
    format!("v={}", STANDARD.encode(signature)).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_sets() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(&m.name().to_lowercase()), Some(m));
        }
        assert_eq!(Mechanism::from_name("DIGEST-MD5"), None);
        let s = Mechanisms::none()
            .with(Mechanism::Login)
            .with(Mechanism::ScramSha256);
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [Mechanism::ScramSha256, Mechanism::Login]
        );
        assert!(!s.without(Mechanism::Login).contains(Mechanism::Login));
        assert_eq!(Mechanisms::all().iter().count(), 5);
    }

    #[test]
    fn responses() {
        assert_eq!(decode_response(b"*"), Err(SaslError::Cancelled));
        assert_eq!(decode_response(b""), Ok(vec![]));
        assert_eq!(decode_response(b"="), Ok(vec![]));
        assert_eq!(decode_response(b"YWJj"), Ok(b"abc".to_vec()));
        assert_eq!(decode_response(b"YWJj!"), Err(SaslError::BadBase64));
        assert_eq!(decode_response(b"YWJ"), Err(SaslError::BadBase64));
        let mut out = Vec::new();
        continuation(&mut out, b"abc");
        assert_eq!(out, b"+ YWJj\r\n");
    }

    #[test]
    fn plain() {
        assert_eq!(
            parse_plain(b"\0tim\0tanstaaftanstaaf"),
            Ok(("tim".into(), b"tanstaaftanstaaf".to_vec()))
        );
        assert_eq!(
            parse_plain(b"tim\0tim\0pw"),
            Ok(("tim".into(), b"pw".to_vec()))
        );
        assert_eq!(
            parse_plain(b"Ursel\0Kurt\0xipj3plmq"),
            Err(SaslError::AuthzidRefused)
        );
        for bad in [&b"\0tim"[..], b"\0\0pw", b"\0tim\0", b"", b"\0\xff\0pw"] {
            assert_eq!(parse_plain(bad), Err(SaslError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn cram_md5() {
        // RFC 2195 example.
        assert_eq!(
            parse_cram_md5(b"tim b913a602c7eda7a495b4e6e7334d3890"),
            Ok(("tim".into(), "b913a602c7eda7a495b4e6e7334d3890".into()))
        );
        for bad in [
            &b"tim"[..],
            b"tim xyz",
            b" b913a602c7eda7a495b4e6e7334d3890",
        ] {
            assert_eq!(parse_cram_md5(bad), Err(SaslError::Malformed));
        }
    }

    /// RFC 7677 §3 exchange (SCRAM-SHA-256, user/pencil), the parsing half.
    #[test]
    fn scram_rfc7677_messages() {
        let first = parse_scram_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(first.gs2_header, "n,,");
        assert_eq!(first.user, "user");
        assert_eq!(first.client_nonce, "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(first.bare, "n=user,r=rOprNGfwEbeRWgbNEkqO");
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let sf = scram_server_first(
            &first.client_nonce,
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            &salt,
            4096,
        );
        assert_eq!(
            sf,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let fin = parse_scram_client_final(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "n,,",
            "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            32,
        )
        .unwrap();
        assert_eq!(
            fin.without_proof,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
        );
        assert_eq!(fin.proof.len(), 32);
        assert_eq!(
            scram_server_final(
                &STANDARD
                    .decode("6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
                    .unwrap()
            ),
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn scram_client_first_errors() {
        use SaslError::*;
        let cases: &[(&[u8], SaslError)] = &[
            (b"p=tls-unique,,n=user,r=abc", ChannelBinding),
            (b"x,,n=user,r=abc", Malformed),
            (b"n,,n=user", Malformed),
            (b"n,,r=abc,n=user", Malformed),
            (b"n,,n=,r=abc", Malformed),
            (b"n,,n=us=er,r=abc", Malformed),
            (b"n,,m=ext,n=user,r=abc", Malformed),
            (b"n,,n=user,r=abc,m=x", Malformed),
            (b"n,,n=user,r=", Malformed),
            (b"n,a=other,n=user,r=abc", AuthzidRefused),
            (b"n,z=user,n=user,r=abc", Malformed),
        ];
        for (msg, want) in cases {
            assert_eq!(
                parse_scram_client_first(msg),
                Err(*want),
                "{}",
                String::from_utf8_lossy(msg)
            );
        }
        let ok = parse_scram_client_first(b"y,a=a=2Cb,n=a=2Cb,r=xyz,x=ext").unwrap();
        assert_eq!(ok.user, "a,b");
        assert_eq!(ok.gs2_header, "y,a=a=2Cb,");
    }

    #[test]
    fn scram_client_final_errors() {
        use SaslError::*;
        let p = STANDARD.encode([0u8; 32]);
        let f = |s: String| parse_scram_client_final(s.as_bytes(), "n,,", "abcDEF", 32);
        assert!(f(format!("c=biws,r=abcDEF,p={p}")).is_ok());
        assert_eq!(f(format!("c=biws,r=abcXYZ,p={p}")), Err(NonceMismatch));
        assert_eq!(f(format!("c=eSws,r=abcDEF,p={p}")), Err(BindingMismatch));
        assert_eq!(f("c=biws,r=abcDEF,p=AAAA".into()), Err(Malformed));
        assert_eq!(f("c=biws,r=abcDEF,p=!!".into()), Err(Malformed));
        assert_eq!(f(format!("r=abcDEF,c=biws,p={p}")), Err(Malformed));
        assert_eq!(f("c=biws,r=abcDEF".into()), Err(Malformed));
    }
}
