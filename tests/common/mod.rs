//! Shared harness for corepop's end-to-end tests.
//!
//! Use it from an integration test with `mod common;` and then:
//!
//! ```ignore
//! let mut fx = common::Fixture::new();
//! fx.add_user("alice", "secret");
//! let samples = fx.deliver_samples("alice");
//! let server = common::Server::start(&fx, &[]);
//! let mut c = common::Pop3Client::connect(server.addr);
//! c.login("alice", "secret");
//! let (status, body) = c.multi("RETR 1");
//! ```
//!
//! What is here:
//! - [`Fixture`]: a temporary directory holding a passwd file, one Maildir per user and a
//!   `corepop.toml` pointing at them.
//! - [`Server`]: a `corepop serve` child process on `127.0.0.1:<ephemeral port>`, stopped
//!   (SIGTERM, then SIGKILL) when dropped.
//! - [`Pop3Client`]: a tiny blocking POP3 client with 30 s timeouts, so a hung server fails the
//!   test instead of hanging it.
//! - [`sample_messages`] (delivered by [`Fixture::deliver_samples`]): awkward messages (LF,
//!   CRLF, mixed, dot-lines, no final newline, all header, NULs, a 5,000-octet line, 1 MiB),
//!   each with a unique `Message-ID` ([`message_id`], [`by_message_id`]).
//! - [`expected_wire`], [`wire_size`], [`expected_top`], [`crlf_to_lf`], [`uidl_of`]: what RETR
//!   and TOP must return, what STAT/LIST must count, what UIDL must say.
//! - [`describe_diff`]: where two byte strings first differ, for assertion messages.
//!
//! Set `COREPOP_TEST_KEEP_DIRS=1` to keep the temporary directories for inspection.
//! Nothing here talks to anything but loopback.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long [`Server::start`] waits for the `corepop: listening on ADDR` line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long [`Server`]'s `Drop` waits after SIGTERM before sending SIGKILL.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Read/write timeout of [`Pop3Client`].
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The host name used in the sample Maildir file names.
pub const SAMPLE_HOST: &str = "corepop-test";

// ---------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------

/// A temporary world for one test: `<dir>/passwd`, `<dir>/mail/<user>/Maildir/{cur,new,tmp}`
/// and `<dir>/corepop.toml`. Everything is removed when the fixture is dropped (unless
/// `COREPOP_TEST_KEEP_DIRS` is set, see [`temp_dir`]).
pub struct Fixture {
    /// The temporary directory; `dir.path()` is the root of everything below.
    pub dir: tempfile::TempDir,
    /// Users added so far, in order, with their plaintext passwords.
    users: Vec<(String, String)>,
    /// Counter making the names of files written by [`Fixture::deliver`] via tmp/ unique.
    tmp_seq: std::cell::Cell<u64>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    /// A fresh fixture with an empty passwd file and no users.
    pub fn new() -> Fixture {
        let dir = temp_dir("corepop-test-");
        fs::create_dir_all(dir.path().join("mail")).expect("create mail root");
        fs::write(dir.path().join("passwd"), b"").expect("create passwd file");
        Fixture {
            dir,
            users: Vec::new(),
            tmp_seq: std::cell::Cell::new(0),
        }
    }

    /// The root of the fixture (`self.dir.path()`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `<dir>/passwd`.
    pub fn passwd_path(&self) -> PathBuf {
        self.path().join("passwd")
    }

    /// `<dir>/corepop.toml` (written by [`Fixture::config`], or by [`Server::start`] if absent).
    pub fn config_path(&self) -> PathBuf {
        self.path().join("corepop.toml")
    }

    /// The `mail.location` value used in the config: `maildir:<dir>/mail/%u/Maildir`.
    pub fn mail_location(&self) -> String {
        format!("maildir:{}/mail/%u/Maildir", self.path().display())
    }

    /// `<dir>/mail/<user>/Maildir`.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.path().join("mail").join(user).join("Maildir")
    }

    /// The users added so far, with their passwords.
    pub fn users(&self) -> &[(String, String)] {
        &self.users
    }

    /// Adds `user:{PLAIN}password::::::` to `<dir>/passwd` and creates
    /// `<dir>/mail/<user>/Maildir/{cur,new,tmp}`; returns the Maildir path.
    pub fn add_user(&mut self, user: &str, password: &str) -> PathBuf {
        assert!(
            !user.contains([':', '\n', '/']) && !password.contains(['\n', ':']),
            "user/password unusable in a passwd file: {user:?}"
        );
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(self.passwd_path())
            .expect("open passwd file");
        writeln!(f, "{user}:{{PLAIN}}{password}::::::").expect("write passwd file");
        let maildir = self.maildir(user);
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(maildir.join(sub)).expect("create Maildir");
        }
        self.users.push((user.to_string(), password.to_string()));
        maildir
    }

    /// Writes a message file into `<maildir>/<sub>` (`sub` = `"new"` or `"cur"`) under `name`,
    /// the way an MTA does: first into `tmp/`, then renamed. Returns the final path.
    pub fn deliver(&self, user: &str, sub: &str, name: &str, bytes: &[u8]) -> PathBuf {
        assert!(
            sub == "new" || sub == "cur",
            "sub must be new or cur, not {sub:?}"
        );
        let maildir = self.maildir(user);
        assert!(
            maildir.is_dir(),
            "no Maildir for {user:?}: call add_user first"
        );
        let seq = self.tmp_seq.get();
        self.tmp_seq.set(seq + 1);
        let tmp = maildir
            .join("tmp")
            .join(format!("delivery.{}.{seq}", std::process::id()));
        {
            let mut f = fs::File::create(&tmp).expect("create file in tmp/");
            f.write_all(bytes).expect("write message");
            f.sync_all().ok();
        }
        let dest = maildir.join(sub).join(name);
        fs::rename(&tmp, &dest).expect("rename message into place");
        dest
    }

    /// Delivers [`sample_messages`] to `user`: the first four into `new/` with Postfix-style
    /// names (`<secs>.V<dev>I<inode>M<usecs>.<host>`), the rest into `cur/` with Dovecot-style
    /// names (`<secs>.M<usecs>P<pid>.<host>,S=<size>,W=<crlf size>:2,S`). Seconds increase
    /// with delivery order, so sorting by name gives delivery order too.
    ///
    /// Returns the delivered `(file name, bytes)` in delivery order. The UIDL of each message
    /// is the part of the name before `':'` (see [`uidl_of`]).
    pub fn deliver_samples(&self, user: &str) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for (i, (_label, bytes)) in sample_messages().into_iter().enumerate() {
            let secs = 1_700_000_000u64 + 60 * i as u64;
            let usecs = 100_000 + 7_919 * i as u64;
            let name = if i < 4 {
                format!(
                    "{secs}.V803I{:x}M{usecs}.{SAMPLE_HOST}",
                    0x1a2b00 + i as u64
                )
            } else {
                format!(
                    "{secs}.M{usecs}P{}.{SAMPLE_HOST},S={},W={}:2,S",
                    4242 + i,
                    bytes.len(),
                    wire_size(&bytes)
                )
            };
            let sub = if i < 4 { "new" } else { "cur" };
            self.deliver(user, sub, &name, &bytes);
            out.push((name, bytes));
        }
        out
    }

    /// Writes `<dir>/corepop.toml` and returns its path:
    ///
    /// ```toml
    /// [auth]
    /// passwd_file = "<dir>/passwd"
    /// failure_delay_ms = 0
    ///
    /// [mail]
    /// location = "maildir:<dir>/mail/%u/Maildir"
    /// ```
    ///
    /// followed by `extra` appended verbatim (it may contain its own `[sections]`).
    ///
    /// Because TOML forbids defining a table twice, an `extra` that is valid TOML and has an
    /// `[auth]` or `[mail]` table is merged instead: its keys are added to (or override) the
    /// base ones and the whole file is written by the `toml` crate. An `extra` that is not valid
    /// TOML is always appended verbatim, so tests can check how bad configs are rejected.
    pub fn config(&self, extra: &str) -> PathBuf {
        let base = format!(
            "[auth]\npasswd_file = {}\nfailure_delay_ms = 0\n\n[mail]\nlocation = {}\n",
            toml_string(&self.passwd_path().display().to_string()),
            toml_string(&self.mail_location()),
        );
        let merged = match extra.parse::<toml::Table>() {
            Ok(extra_table)
                if extra_table.contains_key("auth") || extra_table.contains_key("mail") =>
            {
                let mut table: toml::Table = base.parse().expect("base config is valid TOML");
                for (key, value) in extra_table {
                    match (table.get_mut(&key), value) {
                        (Some(toml::Value::Table(dst)), toml::Value::Table(src)) => {
                            dst.extend(src);
                        }
                        (_, value) => {
                            table.insert(key, value);
                        }
                    }
                }
                toml::to_string(&table).expect("serialise config")
            }
            _ => {
                let mut s = base;
                if !extra.is_empty() {
                    s.push('\n');
                    s.push_str(extra);
                    if !extra.ends_with('\n') {
                        s.push('\n');
                    }
                }
                s
            }
        };
        let path = self.config_path();
        fs::write(&path, merged).expect("write corepop.toml");
        path
    }

    /// The files currently in `<maildir>/new` and `<maildir>/cur` of `user`, as
    /// `"new/<name>"` / `"cur/<name>"`, sorted.
    pub fn maildir_files(&self, user: &str) -> Vec<String> {
        let maildir = self.maildir(user);
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(rd) = fs::read_dir(maildir.join(sub)) else {
                continue;
            };
            for entry in rd {
                let entry = entry.expect("read Maildir entry");
                out.push(format!("{sub}/{}", entry.file_name().to_string_lossy()));
            }
        }
        out.sort();
        out
    }

    /// The UIDLs (base names, see [`uidl_of`]) of the messages currently in `user`'s Maildir
    /// (`new/` and `cur/`), sorted. Flags and the new/cur move do not change them.
    pub fn maildir_uidls(&self, user: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .maildir_files(user)
            .iter()
            .map(|f| uidl_of(f.split_once('/').map_or(f.as_str(), |(_, n)| n)).to_string())
            .collect();
        v.sort();
        v
    }
}

/// A new temporary directory named `<prefix>XXXXXX` in the system temp dir. If the environment
/// variable `COREPOP_TEST_KEEP_DIRS` is set (to anything), it is kept after the test (and its
/// path printed on stderr) so that its contents can be inspected.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("create temporary directory");
    if std::env::var_os("COREPOP_TEST_KEEP_DIRS").is_some() {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}

/// TOML basic string literal for `s`.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// The UIDL corepop gives a Maildir file name: the base name, i.e. the part before `':'`.
pub fn uidl_of(file_name: &str) -> &str {
    file_name
        .split_once(':')
        .map_or(file_name, |(base, _)| base)
}

// ---------------------------------------------------------------------------------------------
// Sample messages
// ---------------------------------------------------------------------------------------------

/// The sample messages, as `(label, bytes)`, in delivery order. Every one has a unique
/// `Message-ID: <LABEL@corepop.test>` header, so a downloaded copy can be paired with its
/// original whatever order a client stores it in (see [`message_id`]).
///
/// | label | what it exercises |
/// | --- | --- |
/// | `lf-postfix` | bare LF endings, `Return-Path:`/`Delivered-To:` as Postfix writes them |
/// | `crlf` | CRLF endings throughout |
/// | `dots` | lines `.`, `..`, `...`, `.x`, `. x` (byte-stuffing), ending in a `.` line |
/// | `big` | ~1 MiB, LF, with dot-lines scattered through it (stuffing across buffer edges) |
/// | `mixed` | LF and CRLF endings mixed in one message |
/// | `no-final-newline` | last line has no line ending |
/// | `headers-only` | header lines only, no blank line, no body |
/// | `nul` | NUL bytes in the body |
/// | `long-line` | one body line of 5,000 octets (plus its LF) |
/// | `dot-no-newline` | ends in a line `.` that has no line ending |
pub fn sample_messages() -> Vec<(&'static str, Vec<u8>)> {
    fn hdr(label: &str, subject: &str, nl: &str) -> String {
        format!(
            "From: Alice Example <alice@example.org>{nl}\
             To: Bob Example <bob@example.org>{nl}\
             Subject: {subject}{nl}\
             Date: Tue, 14 Nov 2023 22:13:20 +0000{nl}\
             Message-ID: <{label}@corepop.test>{nl}\
             MIME-Version: 1.0{nl}\
             Content-Type: text/plain; charset=us-ascii{nl}"
        )
    }

    let mut v: Vec<(&'static str, Vec<u8>)> = Vec::new();

    // Postfix local(8) delivery: Return-Path and Delivered-To prepended, bare LF.
    let mut m = String::from(
        "Return-Path: <alice@example.org>\nX-Original-To: bob@example.org\n\
         Delivered-To: bob@example.org\n\
         Received: from mx.example.org (mx.example.org [192.0.2.1])\n\
         \tby mail.example.org (Postfix) with ESMTP id 4SVZ1x0abcz9sW\n\
         \tfor <bob@example.org>; Tue, 14 Nov 2023 22:13:21 +0000 (UTC)\n",
    );
    m += &hdr("lf-postfix", "plain LF message", "\n");
    m += "\nHello Bob,\n\nthis message uses bare LF line endings, as Postfix stores it.\n\n-- \nAlice\n";
    v.push(("lf-postfix", m.into_bytes()));

    let mut m = hdr("crlf", "CRLF message", "\r\n");
    m += "\r\nThis message was stored with CRLF line endings.\r\nSecond line.\r\n";
    v.push(("crlf", m.into_bytes()));

    let mut m = hdr("dots", "dot lines", "\n");
    m += "\n.\n..\n...\n.hidden\n. leading dot and space\nmiddle.dot.\n\n.\r\n.. crlf dots\r\nend\n.\n";
    v.push(("dots", m.into_bytes()));

    // ~1 MiB, with dot-lines scattered so stuffing lands on every kind of buffer boundary.
    let mut m = hdr("big", "one mebibyte", "\n").into_bytes();
    m.push(b'\n');
    let mut i = 0u32;
    while m.len() < 1024 * 1024 {
        let line = match i % 97 {
            0 => ".\n".to_string(),
            13 => format!(".line {i} starts with a dot\n"),
            41 => format!("..line {i} starts with two dots\n"),
            _ => format!("line {i:07} of the big message: abcdefghijklmnopqrstuvwxyz 0123456789\n"),
        };
        m.extend_from_slice(line.as_bytes());
        i += 1;
    }
    m.extend_from_slice(b"last line of the big message\n");
    v.push(("big", m));

    let mut m = hdr("mixed", "mixed line endings", "\r\n");
    m += "X-Mixed: yes\n\r\nfirst LF line\nfirst CRLF line\r\nLF again\n\nCRLF again\r\n\r\nend LF\n";
    v.push(("mixed", m.into_bytes()));

    let mut m = hdr("no-final-newline", "no final newline", "\n");
    m += "\nThe last line of this message has no line ending.";
    v.push(("no-final-newline", m.into_bytes()));

    let m = hdr("headers-only", "headers only", "\n");
    v.push(("headers-only", m.into_bytes()));

    let mut m = hdr("nul", "NUL bytes", "\n").into_bytes();
    m.extend_from_slice(b"\nbefore\0after\n\0\0\0\nNUL at end of line\0\nplain last line\n");
    v.push(("nul", m));

    let mut m = hdr("long-line", "5000-octet line", "\n");
    m += "\nThe next line is 5000 octets long.\n";
    let long: String = (0..5000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    m += &long;
    m += "\nafter the long line\n";
    v.push(("long-line", m.into_bytes()));

    let mut m = hdr("dot-no-newline", "ends in a dot", "\n");
    m += "\nThe last line is a single dot without a line ending.\n.";
    v.push(("dot-no-newline", m.into_bytes()));

    v
}

/// The `Message-ID` header value of `bytes` (e.g. `<crlf@corepop.test>`), searched for in the
/// header section only, case-insensitively.
pub fn message_id(bytes: &[u8]) -> Option<String> {
    for line in bytes.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return None;
        }
        if line.len() > 11 && line[..11].eq_ignore_ascii_case(b"message-id:") {
            return Some(String::from_utf8_lossy(&line[11..]).trim().to_string());
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Wire form
// ---------------------------------------------------------------------------------------------

/// The message as a POP3 client must receive it (after un-stuffing, before the terminator):
/// every line ends in CRLF (bare LF becomes CRLF, an existing CRLF is kept, a lone CR is left
/// alone), and a final CRLF is added if the message does not end in a line ending.
pub fn expected_wire(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16 + 2);
    let mut prev = 0u8;
    for &b in bytes {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    if !out.ends_with(b"\r\n") && !out.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The size STAT and LIST must report for a message: its length with every line ending counted
/// as CRLF; the CRLF that is added after a message lacking a final newline is not counted
/// (Dovecot does the same).
pub fn wire_size(bytes: &[u8]) -> usize {
    let mut size = bytes.len();
    let mut prev = 0u8;
    for &b in bytes {
        if b == b'\n' && prev != b'\r' {
            size += 1;
        }
        prev = b;
    }
    size
}

/// Replaces every CRLF in `bytes` with LF (a lone CR is left alone): what clients that deliver
/// with Unix line endings (fetchmail, mpop, getmail) are expected to store.
pub fn crlf_to_lf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// What `TOP <n> <lines>` must return for a message (wire form, un-stuffed): the header
/// section, the empty line that ends it, and the first `lines` lines of the body. A message
/// without an empty line is all header and is returned whole.
pub fn expected_top(bytes: &[u8], lines: usize) -> Vec<u8> {
    let wire = expected_wire(bytes);
    let mut pos = 0;
    // Header section: up to and including the first empty line.
    loop {
        match find(&wire[pos..], b"\r\n") {
            None => return wire,
            Some(i) => {
                let empty = i == 0;
                pos += i + 2;
                if empty {
                    break;
                }
            }
        }
        if pos >= wire.len() {
            return wire;
        }
    }
    for _ in 0..lines {
        match find(&wire[pos..], b"\r\n") {
            None => return wire,
            Some(i) => pos += i + 2,
        }
    }
    wire[..pos].to_vec()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A short human-readable description of where `got` first differs from `want`.
pub fn describe_diff(got: &[u8], want: &[u8]) -> String {
    if got == want {
        return "identical".into();
    }
    let at = got
        .iter()
        .zip(want.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let lo = at.saturating_sub(40);
    let show = |b: &[u8]| {
        let hi = (at + 40).min(b.len());
        format!("{:?}", String::from_utf8_lossy(&b[lo.min(b.len())..hi]))
    };
    format!(
        "lengths got {} / want {}; first difference at byte {at}: got …{}… want …{}…",
        got.len(),
        want.len(),
        show(got),
        show(want)
    )
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// A running `corepop serve` child process. Dropping it sends SIGTERM, waits up to
/// [`SHUTDOWN_TIMEOUT`], then SIGKILLs it.
pub struct Server {
    /// The first address from a `corepop: listening on ADDR` line.
    pub addr: SocketAddr,
    child: Option<Child>,
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Server {
    /// Starts `corepop serve --config <fx config> --listen 127.0.0.1:0 --threads 1 <args>` and
    /// waits (at most [`STARTUP_TIMEOUT`]) for the line `corepop: listening on ADDR`. Writes a
    /// default config first ([`Fixture::config`] with no extra) if none exists yet.
    ///
    /// stdout and stderr are drained by background threads for the server's whole life, so it
    /// never blocks on a full pipe; see [`Server::stderr_text`] / [`Server::stdout_text`].
    ///
    /// Panics, showing the server's stderr, if it exits or stays silent before listening.
    pub fn start(fx: &Fixture, args: &[&str]) -> Server {
        let config = fx.config_path();
        if !config.exists() {
            fx.config("");
        }
        let config = config.to_str().expect("UTF-8 temp path").to_string();
        let mut full: Vec<&str> = vec![
            "serve",
            "--config",
            &config,
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
        ];
        full.extend_from_slice(args);
        Self::start_raw(&full)
    }

    /// Starts the corepop binary with exactly `args` (no defaults added) and waits for the
    /// listening line like [`Server::start`]. For tests of the command line itself.
    pub fn start_raw(args: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_corepop"));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_BACKTRACE", "1")
            // Tests run as root in CI; corepop refuses that unless told.
            .env("COREPOP_ALLOW_ROOT", "1");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run corepop {args:?}: {e}"));

        let addrs = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        let readers = vec![
            drain(
                child.stdout.take().unwrap(),
                stdout.clone(),
                addrs.clone(),
                tx.clone(),
            ),
            drain(
                child.stderr.take().unwrap(),
                stderr.clone(),
                addrs.clone(),
                tx,
            ),
        ];

        let mut server = Server {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child: Some(child),
            addrs,
            stdout,
            stderr,
            readers,
        };

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => {
                    server.addr = addr;
                    return server;
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Both pipes closed: the process is gone or going.
                }
            }
            let status = server.child.as_mut().unwrap().try_wait().expect("try_wait");
            if let Some(status) = status {
                // Let the readers collect the last output.
                server.child = None;
                server.join_readers();
                panic!(
                    "corepop {args:?} exited ({status}) before listening.\n--- stderr ---\n{}\n--- stdout ---\n{}",
                    server.stderr_text(),
                    server.stdout_text()
                );
            }
            if Instant::now() >= deadline {
                let stderr = server.stderr_text();
                let stdout = server.stdout_text();
                drop(server);
                panic!(
                    "corepop {args:?} did not print `corepop: listening on ADDR` within {:?}.\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}",
                    STARTUP_TIMEOUT
                );
            }
        }
    }

    /// Every address announced so far with `corepop: listening on ADDR` (one per `--listen`).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.addrs.lock().unwrap().clone()
    }

    /// The process id of the server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything the server wrote to stderr so far (lossy UTF-8).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Everything the server wrote to stdout so far (lossy UTF-8).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to the server.
    pub fn signal(&self, signal: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
            unsafe {
                libc::kill(pid as libc::pid_t, signal);
            }
        }
    }

    /// Sends SIGTERM and waits up to [`SHUTDOWN_TIMEOUT`] for the server to exit; returns its
    /// exit status, or `None` if it had to be SIGKILLed (or was already stopped).
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
        let result = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        self.join_readers();
        result
    }
}

impl Server {
    /// Waits (at most 2 s: a grandchild could keep a pipe open) for the output readers to see
    /// EOF, so that the text accessors have everything the server wrote.
    fn join_readers(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !self.readers.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        for h in self.readers.drain(..) {
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies everything from `pipe` into `buf`; each `corepop: listening on ADDR` line also goes
/// to `addrs` and `tx`.
fn drain(
    pipe: impl Read + Send + 'static,
    buf: Arc<Mutex<Vec<u8>>>,
    addrs: Arc<Mutex<Vec<SocketAddr>>>,
    tx: mpsc::Sender<SocketAddr>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            buf.lock().unwrap().extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line);
            if let Some(rest) = text.split("corepop: listening on ").nth(1) {
                let token = rest.split_whitespace().next().unwrap_or("");
                if let Ok(addr) = token.parse::<SocketAddr>() {
                    addrs.lock().unwrap().push(addr);
                    let _ = tx.send(addr);
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Pop3Client
// ---------------------------------------------------------------------------------------------

/// A tiny blocking POP3 client for tests. Every read and write has a [`CLIENT_TIMEOUT`]
/// timeout; a timeout, an unexpected EOF or an I/O error panics with a clear message.
pub struct Pop3Client {
    /// The greeting line, without CRLF (not checked: may be `-ERR …`).
    pub greeting: String,
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Pop3Client {
    /// Connects to `addr` and reads the greeting.
    pub fn connect(addr: SocketAddr) -> Pop3Client {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream.set_nodelay(true).ok();
        let writer = stream.try_clone().expect("clone TcpStream");
        let mut c = Pop3Client {
            greeting: String::new(),
            reader: BufReader::with_capacity(64 * 1024, stream),
            writer,
        };
        c.greeting = c.read_line();
        c
    }

    /// The underlying stream (e.g. to shut down the write half).
    pub fn stream(&self) -> &TcpStream {
        &self.writer
    }

    /// Sends `line` + CRLF and returns the single-line reply, without CRLF.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.read_line()
    }

    /// Sends `line` + CRLF and reads a multi-line reply: returns the status line (without CRLF)
    /// and, if it starts with `+OK`, the body up to the `.` terminator, un-stuffed, with its
    /// CRLFs kept. On `-ERR` the body is empty.
    pub fn multi(&mut self, line: &str) -> (String, Vec<u8>) {
        let status = self.cmd(line);
        if status.starts_with("+OK") {
            let body = self.read_multi_body();
            (status, body)
        } else {
            (status, Vec::new())
        }
    }

    /// `USER` + `PASS`; panics unless both reply `+OK`. Returns the `PASS` reply.
    pub fn login(&mut self, user: &str, pass: &str) -> String {
        let r = self.cmd(&format!("USER {user}"));
        assert!(r.starts_with("+OK"), "USER {user} -> {r}");
        let r = self.cmd(&format!("PASS {pass}"));
        assert!(r.starts_with("+OK"), "PASS for {user} -> {r}");
        r
    }

    /// Writes `bytes` as they are (no CRLF added).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write to POP3 server: {e}"));
        self.writer.flush().ok();
    }

    /// Reads one line and returns it without its line ending (lossy UTF-8).
    pub fn read_line(&mut self) -> String {
        let line = self.read_line_bytes();
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        String::from_utf8_lossy(line).into_owned()
    }

    /// Reads one line, returning its bytes including the line ending. Panics on EOF.
    pub fn read_line_bytes(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line) {
            Ok(0) => panic!("POP3 server closed the connection (expected a line)"),
            Ok(_) if !line.ends_with(b"\n") => panic!(
                "POP3 server closed the connection mid-line: {:?}",
                String::from_utf8_lossy(&line)
            ),
            Ok(_) => line,
            Err(e) => panic!(
                "reading from POP3 server: {e} (partial line {:?})",
                String::from_utf8_lossy(&line)
            ),
        }
    }

    /// Reads the body of a multi-line reply whose `+OK` line was already read: lines up to
    /// the `.` CRLF terminator, each un-stuffed (a leading `.` removed), CRLFs kept.
    pub fn read_multi_body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line_bytes();
            if line == b".\r\n" {
                return body;
            }
            match line.strip_prefix(b".") {
                Some(rest) => body.extend_from_slice(rest),
                None => body.extend_from_slice(&line),
            }
        }
    }

    /// Reads until the server closes the connection; returns what arrived.
    pub fn read_to_end(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        self.reader
            .read_to_end(&mut out)
            .unwrap_or_else(|e| panic!("reading from POP3 server: {e}"));
        out
    }
}

/// Indexes `(name, bytes)` messages (e.g. from [`Fixture::deliver_samples`]) by their
/// `Message-ID`, to pair downloaded copies with their originals. Panics if a message has no
/// Message-ID or two share one.
pub fn by_message_id(messages: &[(String, Vec<u8>)]) -> BTreeMap<String, &(String, Vec<u8>)> {
    let mut map = BTreeMap::new();
    for m in messages {
        let id = message_id(&m.1).unwrap_or_else(|| panic!("{} has no Message-ID", m.0));
        assert!(
            map.insert(id.clone(), m).is_none(),
            "duplicate Message-ID {id}"
        );
    }
    map
}

// ---------------------------------------------------------------------------------------------
// fetchmail
// ---------------------------------------------------------------------------------------------

/// Adds to `cmd` (a `fetchmail` command whose environment the caller has set up) what every
/// test's fetchmail run shares, writing its files into `dir`: a run-control file
/// `fetchmailrc-<tag>` that polls `127.0.0.1:port` with `auth` (`password`, `cram-md5`) as
/// `user`/`pass`; pid and id files (`fetchmail.pid`, `fetchmail.ids`: the id file is fetchmail's
/// UIDL memory, so it is the same for every run in `dir`); and an MDA script that stores each
/// message fetchmail hands it unchanged as a new file in `out`. Options: no syslog, no bounces,
/// no `Received:` header (`--invisible`), no address rewriting, verbose. Callers add the mode
/// (`--keep`, `--uidl`, TLS options, ...).
#[allow(dead_code, clippy::too_many_arguments)]
pub fn fetchmail_args<'a>(
    cmd: &'a mut Command,
    dir: &Path,
    tag: &str,
    port: u16,
    auth: &str,
    user: &str,
    pass: &str,
    out: &Path,
) -> &'a mut Command {
    use std::os::unix::fs::PermissionsExt;
    let mda = dir.join("fetchmail-mda.sh");
    fs::write(
        &mda,
        "#!/bin/sh\nset -e\nf=$(mktemp \"$1/msg.XXXXXXXX\")\ncat > \"$f\"\n",
    )
    .expect("write the fetchmail MDA");
    fs::set_permissions(&mda, fs::Permissions::from_mode(0o755)).unwrap();
    let rc = dir.join(format!("fetchmailrc-{tag}"));
    fs::write(
        &rc,
        format!(
            "poll 127.0.0.1 with service {port} protocol pop3 auth {auth} timeout 30\n\
             \tuser \"{user}\" there with password \"{pass}\"\n"
        ),
    )
    .expect("write the fetchmailrc");
    // fetchmail refuses a run-control file others can read.
    fs::set_permissions(&rc, fs::Permissions::from_mode(0o600)).unwrap();
    cmd.arg("-f")
        .arg(&rc)
        .arg("--pidfile")
        .arg(dir.join("fetchmail.pid"))
        .arg("--idfile")
        .arg(dir.join("fetchmail.ids"))
        .arg("--mda")
        .arg(format!("{} {}", mda.display(), out.display()))
        .args([
            "--nosyslog",
            "--nobounce",
            "--invisible",
            "--norewrite",
            "-v",
        ])
}

/// A test certificate authority (rcgen) for the TLS tests: `ca_pem()` is what clients
/// trust, [`TestCa::leaf`] signs server certificates.
pub struct TestCa(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

impl TestCa {
    /// A new CA named `cn`.
    pub fn new(cn: &str) -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        TestCa(CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap())
    }

    /// The CA certificate as PEM.
    pub fn ca_pem(&self) -> String {
        self.0.as_ref().pem()
    }

    /// A certificate for `names` (common name `cn`) signed by this CA, and its key, as PEM.
    pub fn leaf(&self, cn: &str, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = p.signed_by(&key, &self.0).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// A rustls client configuration (ring, TLS 1.2 and 1.3) trusting the PEM certificates in
/// `ca_pem`.
pub fn tls_client_config(ca_pem: &[u8]) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}
