//! Real-client interoperability: real POP3 clients download a Maildir served by corepop, and
//! every downloaded message is compared byte for byte with the file it came from.
//!
//! Clients (Debian packages; CI installs them, and a missing one fails the test, it is never
//! skipped): Python's `poplib` (python3), `curl`, `fetchmail`, `mpop`, `getmail` (getmail6).
//!
//! Each test builds a [`Fixture`] with the sample messages ([`common::sample_messages`]),
//! starts a server on 127.0.0.1, runs the client with all of its state (HOME, rc files, UIDL
//! files, output) in a temporary directory, and checks:
//! - every downloaded message equals the original after the normalisation that the client is
//!   documented to apply, and nothing else: clients handing you the wire lines (poplib, curl)
//!   must give exactly [`expected_wire`]; clients that deliver into a mailbox/MDA with Unix line
//!   endings must give `crlf_to_lf(expected_wire(original))` (mpop exactly; fetchmail and
//!   getmail also end an all-header message with an empty line, and getmail puts its own
//!   `Return-Path:` first: see [`fetchmail_form`] and [`getmail_form`]). Headers the clients
//!   would add (Received:, Delivered-To:) are turned off by option;
//! - the sizes in STAT/LIST and the UIDLs (Maildir base names, [`common::uidl_of`]);
//! - "keep" runs leave every message on the server;
//! - "delete" runs remove exactly the downloaded messages from the Maildir.
//!
//! Messages are paired with their originals by their unique `Message-ID`, so the order in which
//! the server numbers them or the client stores them does not matter.
//!
//! Set `COREPOP_INTEROP_SERVER=dovecot` to run the same checks against a private Dovecot
//! instance instead (reference run; needs `dovecot-pop3d`), see `interop/dovecot.rs`.

mod common;
#[path = "interop/dovecot.rs"]
mod dovecot;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{
    crlf_to_lf, describe_diff, expected_top, expected_wire, message_id, uidl_of, wire_size,
    Fixture, Server,
};

const USER: &str = "alice";
const PASS: &str = "Interop-pw-42";
/// How long one client invocation may take before it is killed and the test fails.
const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Plumbing
// ---------------------------------------------------------------------------------------------

/// The server the clients talk to: corepop, or Dovecot for a reference run.
enum Under {
    Corepop(Server),
    Dovecot(dovecot::Dovecot),
}

impl Under {
    fn addr(&self) -> SocketAddr {
        match self {
            Under::Corepop(s) => s.addr,
            Under::Dovecot(d) => d.addr,
        }
    }
    fn log(&self) -> String {
        match self {
            Under::Corepop(s) => s.stderr_text(),
            Under::Dovecot(d) => d.log(),
        }
    }
}

/// One test's world. Field order matters: the server is stopped before the directories go.
struct Setup {
    server: Under,
    fx: Fixture,
    /// The delivered `(Maildir file name, bytes)`, in delivery order.
    samples: Vec<(String, Vec<u8>)>,
    /// The client's private directory: HOME, rc files, state, downloaded messages.
    work: tempfile::TempDir,
    /// Number of client runs so far (names their log files).
    runs: std::cell::Cell<u32>,
}

impl Setup {
    fn new() -> Setup {
        let mut fx = Fixture::new();
        fx.add_user(USER, PASS);
        let samples = fx.deliver_samples(USER);
        fx.config("");
        let server = match std::env::var("COREPOP_INTEROP_SERVER").as_deref() {
            Err(_) | Ok("") | Ok("corepop") => Under::Corepop(Server::start(&fx, &[])),
            Ok("dovecot") => Under::Dovecot(dovecot::Dovecot::start(&fx)),
            Ok(other) => panic!("COREPOP_INTEROP_SERVER={other:?}: use corepop or dovecot"),
        };
        let work = common::temp_dir("corepop-interop-");
        Setup {
            server,
            fx,
            samples,
            work,
            runs: std::cell::Cell::new(0),
        }
    }

    fn port(&self) -> u16 {
        self.server.addr().port()
    }

    fn w(&self, rel: &str) -> PathBuf {
        self.work.path().join(rel)
    }

    /// A new empty directory in the work dir.
    fn mkdir(&self, rel: &str) -> PathBuf {
        let p = self.w(rel);
        fs::create_dir_all(&p).unwrap();
        p
    }

    /// The UIDLs of all samples, sorted.
    fn all_uidls(&self) -> BTreeSet<String> {
        self.samples
            .iter()
            .map(|(n, _)| uidl_of(n).to_string())
            .collect()
    }

    fn maildir_uidls(&self) -> BTreeSet<String> {
        self.fx.maildir_uidls(USER).into_iter().collect()
    }

    /// Delivers one more message into new/ while the server runs (as an MTA would between two
    /// polls), adds it to `samples` and returns its UIDL.
    fn deliver_late(&mut self) -> String {
        let name = format!("1700999999.V803I1a2bffM999999.{}", common::SAMPLE_HOST);
        let bytes = b"From: Carol <carol@example.org>\nTo: bob@example.org\n\
                      Subject: arrived between two polls\nMessage-ID: <late@corepop.test>\n\
                      \nThis message was delivered after the first download.\n"
            .to_vec();
        self.fx.deliver(USER, "new", &name, &bytes);
        self.samples.push((name.clone(), bytes));
        uidl_of(&name).to_string()
    }

    /// The sample whose UIDL is `uid`.
    fn by_uidl(&self, uid: &str) -> Option<&(String, Vec<u8>)> {
        self.samples.iter().find(|(n, _)| uidl_of(n) == uid)
    }

    /// A client command with a clean environment: HOME is the work dir, C locale.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(require(program));
        cmd.env("HOME", self.work.path())
            .env("LC_ALL", "C")
            .env("LANG", "C")
            .env_remove("MAIL")
            .env_remove("MAILDIR")
            .env_remove("FETCHMAILHOME")
            .env_remove("FETCHMAILUSER")
            .current_dir(self.work.path());
        cmd
    }

    /// Runs a client; panics (with its output and the server's log) if it fails.
    fn run_ok(&self, what: &str, cmd: &mut Command) -> ClientRun {
        let run = run_client(self, what, cmd);
        if !run.status.success() {
            panic!("{what} failed: {}", run.describe(self));
        }
        run
    }
}

/// Output of one client invocation.
struct ClientRun {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl ClientRun {
    fn describe(&self, s: &Setup) -> String {
        format!(
            "{} exited with {}\n--- client stdout ---\n{}\n--- client stderr ---\n{}\n--- server log ---\n{}",
            self.what,
            self.status,
            tail(&self.stdout),
            tail(&self.stderr),
            tail(&s.server.log())
        )
    }
}

fn tail(s: &str) -> &str {
    let max = 8000;
    if s.len() <= max {
        return s;
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The absolute path of `program` on PATH; a missing client fails the test (never a skip).
fn require(program: &str) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(program);
        if p.is_file() {
            return p;
        }
    }
    let package = match program {
        "getmail" => "getmail6",
        "python3" => "python3",
        other => other,
    };
    panic!(
        "interop client `{program}` is not installed (not on PATH). These tests need it: \
         apt-get install -y {package}   (CI installs fetchmail mpop getmail6 curl python3)"
    );
}

/// Runs `cmd` with stdout/stderr captured to files, killing it after [`CLIENT_DEADLINE`].
fn run_client(s: &Setup, what: &str, cmd: &mut Command) -> ClientRun {
    let seq = s.runs.get() + 1;
    s.runs.set(seq);
    let tag: String = what
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(40)
        .collect();
    let tag = format!("{seq:02}-{tag}");
    let out_path = s.w(&format!("{tag}.stdout"));
    let err_path = s.w(&format!("{tag}.stderr"));
    cmd.stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {CLIENT_DEADLINE:?}\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- server log ---\n{}",
                tail(&fs::read_to_string(&out_path).unwrap_or_default()),
                tail(&fs::read_to_string(&err_path).unwrap_or_default()),
                tail(&s.server.log())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    ClientRun {
        what: what.to_string(),
        status,
        stdout: String::from_utf8_lossy(&fs::read(&out_path).unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&fs::read(&err_path).unwrap()).into_owned(),
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) {
    fs::write(path, contents).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Every regular file in `dir` (recursively), as `(relative path, bytes)`, sorted.
fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                out.push((rel, fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Checks downloaded messages against the samples. Each downloaded message is paired with the
/// sample of the same Message-ID and must equal `want(sample bytes)` exactly. Every problem is
/// collected before panicking. Returns the UIDLs of the samples that were downloaded.
fn check_downloads(
    s: &Setup,
    client: &str,
    got: &[(String, Vec<u8>)],
    want: &dyn Fn(&[u8]) -> Vec<u8>,
) -> BTreeSet<String> {
    let by_id = common::by_message_id(&s.samples);
    let mut errors = Vec::new();
    let mut seen = BTreeSet::new();
    for (file, bytes) in got {
        let Some(id) = message_id(bytes) else {
            errors.push(format!(
                "{client}: downloaded {file} has no Message-ID header (starts {:?})",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ));
            continue;
        };
        let Some((name, original)) = by_id.get(&id).copied() else {
            errors.push(format!(
                "{client}: downloaded {file} has unknown Message-ID {id}"
            ));
            continue;
        };
        let uid = uidl_of(name).to_string();
        if !seen.insert(uid.clone()) {
            errors.push(format!("{client}: {id} downloaded twice (again as {file})"));
        }
        let expected = want(original);
        if *bytes != expected {
            errors.push(format!(
                "{client}: message {id} (Maildir file {name}, stored as {file}) differs: {}",
                describe_diff(bytes, &expected)
            ));
        }
    }
    if !errors.is_empty() {
        panic!(
            "{} problem(s):\n{}\n--- server log ---\n{}",
            errors.len(),
            errors.join("\n"),
            tail(&s.server.log())
        );
    }
    seen
}

/// Checks that the downloaded set is exactly all samples.
fn assert_all(s: &Setup, client: &str, downloaded: &BTreeSet<String>) {
    let all = s.all_uidls();
    let missing: Vec<_> = all.difference(downloaded).collect();
    assert!(
        missing.is_empty(),
        "{client}: these messages were not downloaded: {missing:?}\n--- server log ---\n{}",
        tail(&s.server.log())
    );
}

/// Checks the Maildir holds exactly `expected` (by UIDL).
fn assert_maildir(s: &Setup, client: &str, expected: &BTreeSet<String>) {
    let now = s.maildir_uidls();
    assert_eq!(
        &now,
        expected,
        "{client}: Maildir content after the run (left) differs from the expectation (right); \
         files now: {:?}",
        s.fx.maildir_files(USER)
    );
}

/// The wire-line form (poplib, curl).
fn wire(b: &[u8]) -> Vec<u8> {
    expected_wire(b)
}

/// The Unix-line-ending form (fetchmail, mpop, getmail).
fn lf(b: &[u8]) -> Vec<u8> {
    crlf_to_lf(&expected_wire(b))
}

// ---------------------------------------------------------------------------------------------
// Baseline: the harness itself
// ---------------------------------------------------------------------------------------------

/// The expectations the client tests rely on, checked on tiny inputs.
#[test]
fn harness_expectations_are_sound() {
    assert_eq!(expected_wire(b"a\nb"), b"a\r\nb\r\n");
    assert_eq!(expected_wire(b"a\r\nb\n"), b"a\r\nb\r\n");
    assert_eq!(expected_wire(b"a\rb\n"), b"a\rb\r\n");
    assert_eq!(wire_size(b"a\nb"), 4, "added final CRLF is not counted");
    assert_eq!(wire_size(b"a\r\nb\n"), 6);
    assert_eq!(crlf_to_lf(b"a\r\nb\r\r\n"), b"a\nb\r\n");
    assert_eq!(expected_top(b"H: 1\n\nb1\nb2\n", 0), b"H: 1\r\n\r\n");
    assert_eq!(expected_top(b"H: 1\n\nb1\nb2\n", 1), b"H: 1\r\n\r\nb1\r\n");
    assert_eq!(
        expected_top(b"H: 1\n\nb1\nb2", 9),
        b"H: 1\r\n\r\nb1\r\nb2\r\n"
    );
    assert_eq!(expected_top(b"H: 1\nH: 2\n", 0), b"H: 1\r\nH: 2\r\n");
    assert_eq!(with_header_end(b"H: 1\n".to_vec()), b"H: 1\n\n");
    assert_eq!(with_header_end(b"H: 1\n\nb\n".to_vec()), b"H: 1\n\nb\n");
    assert_eq!(
        getmail_form(b"Return-Path: <a@b>\r\nX: y\r\n\r\nReturn-Path: body\r\n"),
        b"Return-Path: <a@b>\nX: y\n\nReturn-Path: body\n"
    );
    assert_eq!(getmail_form(b"X: y\n"), b"Return-Path: <unknown>\nX: y\n\n");

    let fx = {
        let mut fx = Fixture::new();
        fx.add_user(USER, PASS);
        fx
    };
    let samples = fx.deliver_samples(USER);
    assert_eq!(samples.len(), common::sample_messages().len());
    assert_eq!(fx.maildir_files(USER).len(), samples.len());
    for (name, bytes) in &samples {
        assert!(message_id(bytes).is_some(), "{name}");
        if let Some(rest) = name.split_once(",S=").map(|x| x.1) {
            // Dovecot-style names carry the file size and the CRLF size.
            let (size, rest) = rest.split_once(",W=").unwrap();
            let (wsize, _) = rest.split_once(':').unwrap();
            assert_eq!(size.parse::<usize>().unwrap(), bytes.len(), "{name}");
            assert_eq!(wsize.parse::<usize>().unwrap(), wire_size(bytes), "{name}");
        }
    }
    let big = samples.iter().map(|(_, b)| b.len()).max().unwrap();
    assert!(big >= 1024 * 1024, "the big sample is {big} octets");
}

/// The test's own POP3 client (tests/common) downloads every sample: RETR must give exactly
/// the wire form, LIST the wire size. A baseline for the third-party clients below.
#[test]
fn raw_client_retr_matches_expected_wire() {
    let s = Setup::new();
    let mut c = common::Pop3Client::connect(s.server.addr());
    assert!(c.greeting.starts_with("+OK"), "greeting {:?}", c.greeting);
    c.login(USER, PASS);
    let (st, uidl) = c.multi("UIDL");
    assert!(st.starts_with("+OK"), "UIDL -> {st}");
    let uidl = String::from_utf8(uidl).unwrap();
    let mut errors = Vec::new();
    for line in uidl.lines() {
        let (num, uid) = line.split_once(' ').unwrap();
        let (name, original) = s.by_uidl(uid).expect("UIDL is a sample's base name");
        let list = c.cmd(&format!("LIST {num}"));
        if list != format!("+OK {num} {}", wire_size(original)) {
            errors.push(format!("LIST {num} ({name}) -> {list}"));
        }
        let (st, body) = c.multi(&format!("RETR {num}"));
        if !st.starts_with("+OK") {
            errors.push(format!("RETR {num} -> {st}"));
        } else if body != expected_wire(original) {
            errors.push(format!(
                "RETR {num} ({name}): {}",
                describe_diff(&body, &expected_wire(original))
            ));
        }
    }
    assert!(c.cmd("QUIT").starts_with("+OK"));
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    assert_maildir(&s, "raw client", &s.all_uidls());
}

// ---------------------------------------------------------------------------------------------
// Python poplib
// ---------------------------------------------------------------------------------------------

fn poplib_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/poplib_client.py")
}

/// Runs poplib_client.py in `mode`; returns the report lines `(key, value)` and the out dir.
fn run_poplib(s: &Setup, mode: &str, tag: &str) -> (Vec<(String, String)>, PathBuf) {
    let out = s.mkdir(&format!("poplib-{tag}"));
    let mut cmd = s.command("python3");
    cmd.arg(poplib_script())
        .arg("127.0.0.1")
        .arg(s.port().to_string())
        .arg(USER)
        .arg(PASS)
        .arg(&out)
        .arg(mode);
    s.run_ok(&format!("python3 poplib ({mode})"), &mut cmd);
    let report = fs::read_to_string(out.join("report.txt")).unwrap();
    let lines = report
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect();
    (lines, out)
}

fn values<'a>(report: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    report
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn value<'a>(report: &'a [(String, String)], key: &str) -> &'a str {
    let v = values(report, key);
    assert_eq!(v.len(), 1, "poplib report has {} {key:?} lines", v.len());
    v[0]
}

/// `"n rest"` lines into a map n → rest.
fn numbered(lines: &[&str]) -> BTreeMap<usize, String> {
    lines
        .iter()
        .map(|l| {
            let (n, rest) = l.split_once(' ').unwrap_or((l, ""));
            (
                n.parse()
                    .unwrap_or_else(|_| panic!("bad listing line {l:?}")),
                rest.to_string(),
            )
        })
        .collect()
}

/// The checks shared by the poplib keep and APOP runs.
fn check_poplib_session(s: &Setup, report: &[(String, String)], out: &Path, client: &str) {
    let n = s.samples.len();
    let total: usize = s.samples.iter().map(|(_, b)| wire_size(b)).sum();
    assert_eq!(
        value(report, "stat"),
        format!("{n} {total}"),
        "{client}: STAT"
    );

    let list = numbered(&values(report, "list"));
    let uidl = numbered(&values(report, "uidl"));
    assert_eq!(
        list.keys().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "{client}: LIST numbers"
    );
    assert_eq!(
        uidl.keys().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>(),
        "{client}: UIDL numbers"
    );
    assert_eq!(
        uidl.values().cloned().collect::<BTreeSet<_>>(),
        s.all_uidls(),
        "{client}: UIDL values must be the Maildir base names"
    );
    let list_n = values(report, "list_n");
    let uidl_n = values(report, "uidl_n");

    let mut errors = Vec::new();
    for num in 1..=n {
        let uid = &uidl[&num];
        let Some((name, original)) = s.by_uidl(uid) else {
            errors.push(format!("UIDL {num} = {uid:?} is no sample"));
            continue;
        };
        let size = wire_size(original);
        if list[&num] != size.to_string() {
            errors.push(format!(
                "LIST: {num} {} but {name} is {size} octets",
                list[&num]
            ));
        }
        if list_n[num - 1] != format!("+OK {num} {size}") {
            errors.push(format!(
                "LIST {num} -> {:?}, want \"+OK {num} {size}\"",
                list_n[num - 1]
            ));
        }
        if uidl_n[num - 1] != format!("+OK {num} {uid}") {
            errors.push(format!(
                "UIDL {num} -> {:?}, want \"+OK {num} {uid}\"",
                uidl_n[num - 1]
            ));
        }
        let checks = [
            (format!("retr.{num}"), expected_wire(original)),
            (format!("top0.{num}"), expected_top(original, 0)),
            (format!("top3.{num}"), expected_top(original, 3)),
        ];
        for (file, want) in checks {
            let got = fs::read(out.join(&file)).unwrap();
            if got != want {
                errors.push(format!(
                    "{} of {name}: {}",
                    file.replace('.', " ").to_uppercase(),
                    describe_diff(&got, &want)
                ));
            }
        }
    }
    assert!(
        errors.is_empty(),
        "{client}: {} problem(s):\n{}\n--- server log ---\n{}",
        errors.len(),
        errors.join("\n"),
        tail(&s.server.log())
    );
    assert!(value(report, "noop").starts_with("+OK"), "{client}: NOOP");
    assert!(value(report, "quit").starts_with("+OK"), "{client}: QUIT");
}

/// poplib: USER/PASS, STAT, LIST, UIDL, LIST n, UIDL n, RETR n, TOP n 0, TOP n 3 for every
/// message, compared byte for byte with the wire form; nothing deleted.
#[test]
fn poplib_keep_downloads_every_message_byte_for_byte() {
    let s = Setup::new();
    let (report, out) = run_poplib(&s, "keep", "keep");
    check_poplib_session(&s, &report, &out, "poplib");
    assert_maildir(&s, "poplib (keep)", &s.all_uidls());
}

/// poplib: APOP login (poplib.POP3.apop uses the greeting's timestamp), then the same session.
#[test]
fn poplib_apop_login_and_download() {
    let s = Setup::new();
    let (report, out) = run_poplib(&s, "apop", "apop");
    check_poplib_session(&s, &report, &out, "poplib APOP");
    assert_maildir(&s, "poplib APOP (keep)", &s.all_uidls());
}

/// poplib: DELE of three messages (one from new/, one from cur/, the big one) then QUIT
/// removes exactly those files; a second session sees the rest.
#[test]
fn poplib_dele_removes_exactly_the_deleted_messages() {
    let s = Setup::new();
    let doomed: BTreeSet<String> = [1usize, 3, 5]
        .iter()
        .map(|&i| uidl_of(&s.samples[i].0).to_string())
        .collect();
    let mode = format!(
        "dele:{}",
        doomed.iter().cloned().collect::<Vec<_>>().join("/")
    );
    let (report, _) = run_poplib(&s, &mode, "dele");
    let dele = values(&report, "dele");
    assert_eq!(dele.len(), 3, "poplib: DELE replies {dele:?}");
    assert!(
        dele.iter().all(|r| r.starts_with("+OK")),
        "poplib: DELE replies {dele:?}"
    );
    assert!(value(&report, "quit").starts_with("+OK"), "poplib: QUIT");

    let rest: BTreeSet<String> = s.all_uidls().difference(&doomed).cloned().collect();
    let rest_size: usize = s
        .samples
        .iter()
        .filter(|(n, _)| rest.contains(uidl_of(n)))
        .map(|(_, b)| wire_size(b))
        .sum();
    assert_eq!(
        value(&report, "stat_after"),
        format!("{} {rest_size}", rest.len()),
        "poplib: STAT in the session after the DELEs"
    );
    let after: BTreeSet<String> = numbered(&values(&report, "uidl_after"))
        .into_values()
        .collect();
    assert_eq!(after, rest, "poplib: UIDL in the session after the DELEs");
    assert_maildir(&s, "poplib (dele)", &rest);
}

// ---------------------------------------------------------------------------------------------
// curl
// ---------------------------------------------------------------------------------------------

/// curl: LIST (`pop3://host/`), `-X UIDL`, RETR n (`pop3://host/n`) and `-X 'TOP n 0'` for
/// every message; RETR/TOP output must be exactly the wire form. curl picks its login method
/// itself (SASL from CAPA if offered, else APOP if the greeting has a timestamp, else USER).
#[test]
fn curl_list_uidl_retr_top() {
    let s = Setup::new();
    let base = format!("pop3://127.0.0.1:{}/", s.port());
    let userpass = format!("{USER}:{PASS}");
    let login = std::cell::RefCell::new(BTreeSet::new());
    let curl = |what: &str, url: &str, extra: &[&str]| -> Vec<u8> {
        let out = s.w(&format!("curl-{}.out", what.replace(' ', "_")));
        let mut cmd = s.command("curl");
        cmd.args(["-sS", "-v", "--max-time", "30", "-u", &userpass, "-o"])
            .arg(&out)
            .args(extra)
            .arg(url);
        let run = s.run_ok(&format!("curl {what}"), &mut cmd);
        // Which login commands curl chose (shown in the -v trace as "> CMD ...").
        for line in run.stderr.lines() {
            if let Some(c) = line.strip_prefix("> ") {
                let c = c
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                if ["USER", "PASS", "APOP", "AUTH"].contains(&c.as_str()) {
                    login.borrow_mut().insert(c);
                }
            }
        }
        fs::read(&out).unwrap()
    };

    let n = s.samples.len();
    let list = curl("LIST", &base, &[]);
    eprintln!("curl logged in with: {:?}", login.borrow());
    let list = String::from_utf8(list).expect("LIST output is text");
    assert!(
        list.ends_with("\r\n") && !list.contains("\r\n.\r\n"),
        "curl LIST output {list:?}"
    );
    let list = numbered(&list.lines().collect::<Vec<_>>());
    let uidl = curl("UIDL", &base, &["-X", "UIDL"]);
    let uidl = numbered(&String::from_utf8(uidl).unwrap().lines().collect::<Vec<_>>());
    assert_eq!(list.len(), n, "curl LIST: {list:?}");
    assert_eq!(
        uidl.values()
            .map(|v| v.trim_end().to_string())
            .collect::<BTreeSet<_>>(),
        s.all_uidls(),
        "curl -X UIDL"
    );

    let mut errors = Vec::new();
    for num in 1..=n {
        let uid = uidl[&num].trim_end();
        let (name, original) = s.by_uidl(uid).expect("known UIDL");
        let size = wire_size(original);
        if list[&num].trim_end() != size.to_string() {
            errors.push(format!(
                "LIST: {num} {} but {name} is {size} octets",
                list[&num]
            ));
        }
        let got = curl(&format!("RETR {num}"), &format!("{base}{num}"), &[]);
        if got != wire(original) {
            errors.push(format!(
                "RETR {num} ({name}): {}",
                describe_diff(&got, &wire(original))
            ));
        }
        let top = format!("TOP {num} 0");
        let got = curl(&top, &base, &["-X", &top]);
        if got != expected_top(original, 0) {
            errors.push(format!(
                "{top} ({name}): {}",
                describe_diff(&got, &expected_top(original, 0))
            ));
        }
    }
    assert!(
        errors.is_empty(),
        "curl: {} problem(s):\n{}\n--- server log ---\n{}",
        errors.len(),
        errors.join("\n"),
        tail(&s.server.log())
    );
    assert_maildir(&s, "curl", &s.all_uidls());
}

// ---------------------------------------------------------------------------------------------
// fetchmail
// ---------------------------------------------------------------------------------------------

/// Runs fetchmail once against the server with `extra` options; returns the directory the
/// MDA stored the messages in. The rc file only holds the server and the credentials (mode
/// 0600: fetchmail refuses a readable one); everything else is on the command line:
/// - `--sslproto ''`: no opportunistic STARTTLS (plaintext on loopback);
/// - `--mda "<script> <dir>"`: each message is piped to a script that stores stdin unchanged
///   in a new file in `<dir>`;
/// - `--invisible`: fetchmail adds no `Received:` header; `--norewrite`: it does not rewrite
///   addresses in headers;
/// - `--pidfile`, `--idfile` (its UIDL memory) and HOME / FETCHMAILHOME in the work dir so it
///   never touches the real home.
///
/// `extra` adds the mode (`--keep`/`--nokeep`, `--fetchall`, `--uidl`, `--fetchlimit N`). The
/// exit status must be one of `ok_codes`: 0 = mail fetched, 1 = no mail (PS_NOMAIL), 13 =
/// `--fetchlimit` reached (PS_MAXFETCH).
fn run_fetchmail(s: &Setup, tag: &str, extra: &[&str], ok_codes: &[i32]) -> PathBuf {
    let out = s.mkdir(&format!("fetchmail-{tag}"));
    let mut cmd = s.command("fetchmail");
    cmd.env("FETCHMAILHOME", s.work.path());
    common::fetchmail_args(
        &mut cmd,
        s.work.path(),
        tag,
        s.port(),
        "password",
        USER,
        PASS,
        &out,
    )
    .args(["--sslproto", ""])
    .args(extra);
    let what = format!("fetchmail {}", extra.join(" "));
    let run = run_client(s, &what, &mut cmd);
    if !run.status.code().is_some_and(|c| ok_codes.contains(&c)) {
        panic!(
            "{what} failed (want exit {ok_codes:?}): {}",
            run.describe(s)
        );
    }
    out
}

/// What fetchmail hands its MDA: Unix line endings (it strips the CR of each CRLF, its
/// default when delivering to an MDA), and the header block always ends in an empty line: for a
/// message that has no empty line (all header), fetchmail appends one.
fn fetchmail_form(original: &[u8]) -> Vec<u8> {
    with_header_end(lf(original))
}

/// Appends the empty line that ends the header block if an LF-form message has none.
fn with_header_end(mut m: Vec<u8>) -> Vec<u8> {
    if !m.starts_with(b"\n") && !m.windows(2).any(|w| w == b"\n\n") {
        m.push(b'\n');
    }
    m
}

/// fetchmail --keep --fetchall: all messages delivered (LF line endings, via the MDA) and all
/// still on the server afterwards.
#[test]
fn fetchmail_keep_downloads_every_message() {
    let s = Setup::new();
    let out = run_fetchmail(&s, "keep", &["--keep", "--fetchall"], &[0]);
    let got = check_downloads(&s, "fetchmail --keep", &files_in(&out), &fetchmail_form);
    assert_all(&s, "fetchmail --keep", &got);
    assert_maildir(&s, "fetchmail --keep", &s.all_uidls());
}

/// fetchmail --nokeep --fetchlimit 3 deletes exactly the 3 it fetched; a second --nokeep run
/// fetches the rest and leaves the Maildir empty.
#[test]
fn fetchmail_nokeep_deletes_exactly_what_it_fetched() {
    let s = Setup::new();
    let out = run_fetchmail(
        &s,
        "nokeep1",
        &["--nokeep", "--fetchall", "--fetchlimit", "3"],
        &[13],
    );
    let first = check_downloads(
        &s,
        "fetchmail --nokeep --fetchlimit 3",
        &files_in(&out),
        &fetchmail_form,
    );
    assert_eq!(first.len(), 3, "fetchmail --fetchlimit 3 fetched {first:?}");
    let rest: BTreeSet<String> = s.all_uidls().difference(&first).cloned().collect();
    assert_maildir(&s, "fetchmail --nokeep --fetchlimit 3", &rest);

    let out = run_fetchmail(&s, "nokeep2", &["--nokeep", "--fetchall"], &[0]);
    let second = check_downloads(
        &s,
        "fetchmail --nokeep (2nd run)",
        &files_in(&out),
        &fetchmail_form,
    );
    assert_eq!(second, rest, "fetchmail 2nd --nokeep run fetched");
    assert_maildir(&s, "fetchmail --nokeep (2nd run)", &BTreeSet::new());
}

/// fetchmail --keep --uidl (no --fetchall): the first poll fetches everything, the second
/// nothing (the UIDLs are remembered in its idfile), and after one more delivery the third
/// fetches exactly the new message. Needs UIDLs that are stable across sessions.
#[test]
fn fetchmail_uidl_fetches_only_new_messages() {
    let mut s = Setup::new();
    let out = run_fetchmail(&s, "uidl1", &["--keep", "--uidl"], &[0]);
    let got = check_downloads(
        &s,
        "fetchmail --uidl (1st)",
        &files_in(&out),
        &fetchmail_form,
    );
    assert_all(&s, "fetchmail --uidl (1st)", &got);

    let out = run_fetchmail(&s, "uidl2", &["--keep", "--uidl"], &[1]);
    let got = files_in(&out);
    assert!(
        got.is_empty(),
        "fetchmail --uidl (2nd) fetched {} messages again",
        got.len()
    );

    let late = s.deliver_late();
    let out = run_fetchmail(&s, "uidl3", &["--keep", "--uidl"], &[0]);
    let got = check_downloads(
        &s,
        "fetchmail --uidl (3rd)",
        &files_in(&out),
        &fetchmail_form,
    );
    assert_eq!(
        got,
        BTreeSet::from([late]),
        "fetchmail --uidl (3rd) fetched"
    );
    assert_maildir(&s, "fetchmail --uidl", &s.all_uidls());
}

// ---------------------------------------------------------------------------------------------
// mpop
// ---------------------------------------------------------------------------------------------

/// Runs mpop once: `--keep=on|off`, `--only-new=on|off` (with `only_new`, messages whose UIDL
/// is in its uidls_file are skipped); maildir delivery, no Received: header.
fn run_mpop(s: &Setup, tag: &str, keep: bool, only_new: bool) -> PathBuf {
    let out = s.mkdir(&format!("mpop-{tag}"));
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(out.join(sub)).unwrap();
    }
    let pwfile = s.w("mpop-password");
    write_file(&pwfile, PASS, 0o600);
    let cfg = s.w("mpoprc");
    write_file(
        &cfg,
        &format!(
            "defaults\n\
             account interop\n\
             host 127.0.0.1\n\
             port {port}\n\
             user {USER}\n\
             uidls_file {uidls}\n\
             account default : interop\n",
            port = s.port(),
            uidls = s.w("mpop-uidls").display()
        ),
        0o600,
    );
    let mut cmd = s.command("mpop");
    cmd.arg("-C")
        .arg(&cfg)
        .args(["--tls=off", "--auth=user"])
        .arg(format!("--passwordeval=cat {}", pwfile.display()))
        .arg(format!("--delivery=maildir,{}", out.display()))
        .arg(if keep { "--keep=on" } else { "--keep=off" })
        .arg(if only_new {
            "--only-new=on"
        } else {
            "--only-new=off"
        })
        .args(["--received-header=off", "--half-quiet"]);
    s.run_ok(&format!("mpop {tag} keep={keep}"), &mut cmd);
    out
}

/// mpop --keep=on: all messages delivered to a maildir (LF endings, no Received: header) and
/// still on the server.
#[test]
fn mpop_keep_downloads_every_message() {
    let s = Setup::new();
    let out = run_mpop(&s, "keep", true, false);
    let got = check_downloads(&s, "mpop --keep=on", &files_in(&out), &lf);
    assert_all(&s, "mpop --keep=on", &got);
    assert_maildir(&s, "mpop --keep=on", &s.all_uidls());
}

/// mpop --keep=off: all downloaded, all deleted.
#[test]
fn mpop_nokeep_deletes_what_it_fetched() {
    let s = Setup::new();
    let out = run_mpop(&s, "nokeep", false, false);
    let got = check_downloads(&s, "mpop --keep=off", &files_in(&out), &lf);
    assert_all(&s, "mpop --keep=off", &got);
    assert_maildir(&s, "mpop --keep=off", &BTreeSet::new());
}

/// mpop --keep=on --only-new=on: first run fetches everything, second nothing, and after one
/// more delivery the third fetches exactly the new message (UIDLs stable across sessions).
#[test]
fn mpop_only_new_fetches_only_new_messages() {
    let mut s = Setup::new();
    let out = run_mpop(&s, "new1", true, true);
    let got = check_downloads(&s, "mpop --only-new=on (1st)", &files_in(&out), &lf);
    assert_all(&s, "mpop --only-new=on (1st)", &got);

    let out = run_mpop(&s, "new2", true, true);
    let got = files_in(&out);
    assert!(
        got.is_empty(),
        "mpop --only-new=on (2nd) fetched {} messages again",
        got.len()
    );

    let late = s.deliver_late();
    let out = run_mpop(&s, "new3", true, true);
    let got = check_downloads(&s, "mpop --only-new=on (3rd)", &files_in(&out), &lf);
    assert_eq!(
        got,
        BTreeSet::from([late]),
        "mpop --only-new=on (3rd) fetched"
    );
    assert_maildir(&s, "mpop --only-new=on", &s.all_uidls());
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// uid and gid of the `nobody` user (asked of `id`, which goes through NSS).
fn nobody() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "nobody"])
            .output()
            .expect("run id");
        assert!(out.status.success(), "no user `nobody` on this machine");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

// ---------------------------------------------------------------------------------------------
// getmail
// ---------------------------------------------------------------------------------------------

/// What getmail's Maildir destination stores (getmailcore/message.py, `Message.flatten`):
/// - Unix line endings (it joins the RETR lines with os.linesep);
/// - its own `Return-Path: <sender>` as the first line, where sender is the address of the
///   message's `Return-Path:` (that header is removed from where it was) or `unknown`;
///   `delivered_to = false` and `received = false` turn off its Delivered-To:/Received:;
/// - the message re-serialised by Python's email generator, which always ends the header block
///   with an empty line (so an all-header message gains one); otherwise bytes are unchanged.
fn getmail_form(original: &[u8]) -> Vec<u8> {
    let m = lf(original);
    let mut sender = "unknown".to_string();
    let mut rest = Vec::with_capacity(m.len());
    let mut in_header = true;
    for line in m.split_inclusive(|&b| b == b'\n') {
        if in_header && line == b"\n" {
            in_header = false;
        }
        if in_header && line.len() >= 12 && line[..12].eq_ignore_ascii_case(b"return-path:") {
            let v = String::from_utf8_lossy(&line[12..]);
            sender = v
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string();
            continue;
        }
        rest.extend_from_slice(line);
    }
    let mut out = format!("Return-Path: <{sender}>\n").into_bytes();
    out.extend_from_slice(&with_header_end(rest));
    out
}

fn run_getmail(s: &Setup, tag: &str, delete: bool, max: Option<usize>) -> PathBuf {
    let out = s.mkdir(&format!("getmail-{tag}"));
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(out.join(sub)).unwrap();
    }
    let state = s.mkdir("getmail-state");
    // getmail's Maildir destination refuses to deliver as root; when we are root (CI is), it
    // is told to deliver as `nobody`, which then needs to reach and write the output maildir.
    let as_user = if unsafe_geteuid() == 0 {
        let (uid, gid) = nobody();
        fs::set_permissions(s.work.path(), fs::Permissions::from_mode(0o711)).unwrap();
        for d in [
            out.clone(),
            out.join("cur"),
            out.join("new"),
            out.join("tmp"),
        ] {
            std::os::unix::fs::chown(&d, Some(uid), Some(gid)).unwrap();
        }
        "user = nobody\n"
    } else {
        ""
    };
    let rc = s.w(&format!("getmailrc-{tag}"));
    // received/delivered_to = false: getmail would otherwise add Received: and Delivered-To:
    // headers.
    write_file(
        &rc,
        &format!(
            "[retriever]\n\
             type = SimplePOP3Retriever\n\
             server = 127.0.0.1\n\
             port = {port}\n\
             username = {USER}\n\
             password = {PASS}\n\
             timeout = 30\n\
             \n\
             [destination]\n\
             type = Maildir\n\
             path = {out}/\n\
             {as_user}\
             \n\
             [options]\n\
             verbose = 1\n\
             read_all = true\n\
             delete = {delete}\n\
             delivered_to = false\n\
             received = false\n\
             message_log_syslog = false\n\
             {max}",
            port = s.port(),
            out = out.display(),
            max = max.map_or(String::new(), |m| format!(
                "max_messages_per_session = {m}\n"
            )),
        ),
        0o600,
    );
    let mut cmd = s.command("getmail");
    cmd.arg(format!("--rcfile={}", rc.display()))
        .arg(format!("--getmaildir={}", state.display()));
    s.run_ok(&format!("getmail delete={delete}"), &mut cmd);
    out
}

/// getmail, read_all = true, delete = false: all messages delivered to a Maildir (LF endings,
/// Received:/Delivered-To: disabled) and all still on the server.
#[test]
fn getmail_keep_downloads_every_message() {
    let s = Setup::new();
    let out = run_getmail(&s, "keep", false, None);
    let got = check_downloads(&s, "getmail delete=false", &files_in(&out), &getmail_form);
    assert_all(&s, "getmail delete=false", &got);
    assert_maildir(&s, "getmail delete=false", &s.all_uidls());
}

/// getmail, delete = true, max_messages_per_session = 4: deletes exactly the 4 it fetched; a
/// second run fetches and deletes the rest.
#[test]
fn getmail_delete_removes_exactly_what_it_fetched() {
    let s = Setup::new();
    let out = run_getmail(&s, "delete1", true, Some(4));
    let first = check_downloads(
        &s,
        "getmail delete=true (max 4)",
        &files_in(&out),
        &getmail_form,
    );
    assert_eq!(
        first.len(),
        4,
        "getmail max_messages_per_session = 4 fetched {first:?}"
    );
    let rest: BTreeSet<String> = s.all_uidls().difference(&first).cloned().collect();
    assert_maildir(&s, "getmail delete=true (max 4)", &rest);

    let out = run_getmail(&s, "delete2", true, None);
    let second = check_downloads(
        &s,
        "getmail delete=true (2nd run)",
        &files_in(&out),
        &getmail_form,
    );
    assert_eq!(second, rest, "getmail 2nd delete=true run fetched");
    assert_maildir(&s, "getmail delete=true (2nd run)", &BTreeSet::new());
}
