//! `corepop demo`: a ready-to-try server with a sample Maildir and a demo user.
//!
//! Owns: writing the demo's passwd-file, configuration and sample messages (LF and CRLF
//! endings, a dot-line, no final newline: the shapes a real Maildir has) into a directory of its
//! own, a self-signed certificate for `localhost`/127.0.0.1 (`cert.pem`, `key.pem` mode 0600,
//! reused by later runs) for POP3S and STLS, and the instructions printed for a new user.
//! Existing sample messages are left alone, so mail deleted in one demo run stays deleted in
//! the next.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::Config;

/// Demo credentials.
pub const USER: &str = "demo";
pub const PASSWORD: &str = "demo";

const SAMPLES: &[(&str, &[u8])] = &[
    (
        "1700000001.M1P1.demo",
        b"From: corepop <postmaster@example.org>\nTo: demo@example.org\nSubject: Welcome to corepop\nDate: Tue, 14 Nov 2023 22:13:21 +0000\nMessage-ID: <welcome@example.org>\n\nHello!\n\nThis message is stored with LF line endings, as Postfix delivers it;\ncorepop sends it with CRLF and counts its size that way.\n",
    ),
    (
        "1700000002.M1P1.demo",
        b"From: corepop <postmaster@example.org>\r\nTo: demo@example.org\r\nSubject: Already in wire form\r\nDate: Tue, 14 Nov 2023 22:13:22 +0000\r\n\r\nThis one has CRLF endings and no line starting with a dot,\r\nso RETR sends it as stored, without converting it.\r\n",
    ),
    (
        "1700000003.M1P1.demo",
        b"From: corepop <postmaster@example.org>\nTo: demo@example.org\nSubject: Dots\nDate: Tue, 14 Nov 2023 22:13:23 +0000\n\nThe next line starts with a dot and is dot-stuffed on the wire:\n.like this\n.\nand this message has no final newline",
    ),
];

/// Writes a self-signed certificate and key for `localhost` and 127.0.0.1 unless both exist.
fn ensure_certificate(cert: &Path, key: &Path) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if cert.exists() && key.exists() {
        return Ok(());
    }
    let (cert_pem, key_pem) = crate::tls::self_signed_pem(&["localhost", "127.0.0.1", "::1"])
        .map_err(|e| io::Error::other(format!("{e:#}")))?;
    let _ = fs::remove_file(key);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key)?;
    f.write_all(key_pem.as_bytes())?;
    fs::write(cert, cert_pem)
}

/// Creates (or reuses) the demo directory and returns the configuration to serve it:
/// plaintext (with STLS) on `listen`, implicit TLS on `listen_tls`.
pub fn prepare(dir: &Path, listen: SocketAddr, listen_tls: SocketAddr) -> io::Result<Config> {
    fs::create_dir_all(dir)?;
    let dir = fs::canonicalize(dir)?;
    let maildir = dir.join("mail").join(USER).join("Maildir");
    let fresh = !maildir.exists();
    crate::mailbox::ensure_maildir(&maildir)?;
    if fresh {
        for (name, body) in SAMPLES {
            let tmp = maildir.join("tmp").join(name);
            fs::write(&tmp, body)?;
            fs::rename(&tmp, maildir.join("new").join(name))?;
        }
    }
    let passwd = dir.join("passwd");
    fs::write(&passwd, format!("{USER}:{{PLAIN}}{PASSWORD}::::::\n"))?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    ensure_certificate(&cert, &key)?;
    let mut cfg = Config::default();
    cfg.server.listen = vec![listen];
    cfg.server.listen_tls = vec![listen_tls];
    cfg.tls.cert = Some(cert);
    cfg.tls.key = Some(key);
    cfg.server.threads = 1;
    cfg.auth.passwd_file = passwd;
    cfg.mail.location = format!("maildir:{}/mail/%u/Maildir", dir.display());
    cfg.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    Ok(cfg)
}

/// What a new user reads after `corepop demo` starts.
pub fn print_instructions(dir: &Path, addr: SocketAddr, tls: SocketAddr) {
    let port = addr.port();
    let tls_port = tls.port();
    println!(
        "\ncorepop demo: user '{USER}', password '{PASSWORD}', mail in {}/mail/{USER}/Maildir\n\
         Try it:\n  \
         curl -u {USER}:{PASSWORD} pop3://127.0.0.1:{port}/        # list messages\n  \
         curl -u {USER}:{PASSWORD} pop3://127.0.0.1:{port}/1       # read message 1\n  \
         python3 -c \"import poplib; p = poplib.POP3('127.0.0.1', {port}); p.user('{USER}'); p.pass_('{PASSWORD}'); print(p.stat()); p.quit()\"\n\
         With TLS (self-signed certificate {dir}/cert.pem, hence --insecure or --cacert):\n  \
         curl --insecure pop3s://127.0.0.1:{tls_port}/ -u {USER}:{PASSWORD}          # implicit TLS\n  \
         curl --insecure --ssl-reqd pop3://127.0.0.1:{port}/ -u {USER}:{PASSWORD}    # STLS\n\
         Stop with Ctrl-C.",
        dir.display(),
        dir = dir.display()
    );
}
