//! `corepop demo`: a ready-to-try server with a sample Maildir and a demo user.
//!
//! Owns: writing the demo's passwd-file, configuration and sample messages (LF and CRLF
//! endings, a dot-line, no final newline: the shapes a real Maildir has) into a directory of its
//! own, and the instructions printed for a new user. Existing sample messages are left alone,
//! so mail deleted in one demo run stays deleted in the next.

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
        b"From: corepop <postmaster@example.org>\r\nTo: demo@example.org\r\nSubject: Already in wire form\r\nDate: Tue, 14 Nov 2023 22:13:22 +0000\r\n\r\nThis one has CRLF endings and no line starting with a dot,\r\nso RETR sends it straight from the memory mapping.\r\n",
    ),
    (
        "1700000003.M1P1.demo",
        b"From: corepop <postmaster@example.org>\nTo: demo@example.org\nSubject: Dots\nDate: Tue, 14 Nov 2023 22:13:23 +0000\n\nThe next line starts with a dot and is dot-stuffed on the wire:\n.like this\n.\nand this message has no final newline",
    ),
];

/// Creates (or reuses) the demo directory and returns the configuration to serve it.
pub fn prepare(dir: &Path, listen: SocketAddr) -> io::Result<Config> {
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
    let mut cfg = Config::default();
    cfg.server.listen = vec![listen];
    cfg.server.threads = 1;
    cfg.auth.passwd_file = passwd;
    cfg.mail.location = format!("maildir:{}/mail/%u/Maildir", dir.display());
    cfg.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    Ok(cfg)
}

/// What a new user reads after `corepop demo` starts.
pub fn print_instructions(dir: &Path, addr: SocketAddr) {
    let port = addr.port();
    println!(
        "\ncorepop demo: user '{USER}', password '{PASSWORD}', mail in {}/mail/{USER}/Maildir\n\
         Try it:\n  \
         curl -u {USER}:{PASSWORD} pop3://127.0.0.1:{port}/        # list messages\n  \
         curl -u {USER}:{PASSWORD} pop3://127.0.0.1:{port}/1       # read message 1\n  \
         python3 -c \"import poplib; p = poplib.POP3('127.0.0.1', {port}); p.user('{USER}'); p.pass_('{PASSWORD}'); print(p.stat()); p.quit()\"\n\
         Stop with Ctrl-C.",
        dir.display()
    );
}
