//! Operations, end to end against the real binary: SIGHUP reloads (passwd-file, invalid
//! configuration), connection limits, LOGIN-DELAY and EXPIRE, the PROXY protocol (v1, v2,
//! untrusted, malformed, truncated), the metrics endpoint, systemd notifications and socket
//! activation, `check-config`, and privilege drop (as root).

mod common;

use common::{Fixture, Pop3Client, Server, CLIENT_TIMEOUT};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MSG: &[u8] = b"Subject: hello\r\n\r\nbody\r\n";

fn fixture(extra: &str) -> Fixture {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    fx.deliver("alice", "new", "1700000001.M1P1.h", MSG);
    fx.config(extra);
    fx
}

/// Polls `f` for up to 10 s (for effects of a signal, which arrive asynchronously).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for: {what}");
}

/// USER/PASS on a fresh connection; returns the PASS reply.
fn try_login(addr: SocketAddr, user: &str, pass: &str) -> String {
    let mut c = Pop3Client::connect(addr);
    assert!(c.cmd(&format!("USER {user}")).starts_with("+OK"));
    let r = c.cmd(&format!("PASS {pass}"));
    if r.starts_with("+OK") {
        c.cmd("QUIT");
    }
    r
}

/// USER/PASS as alice on `c`, whose PROXY header named 192.0.2.7:40001, must succeed
/// (`what` says how the connection came), and the login must be logged with that address.
fn log_in_as_the_remote_client(c: &mut Raw, srv: &Server, what: &str) {
    let r = c.cmd("USER alice");
    assert!(r.starts_with("+OK"), "USER {what}: {r}");
    let r = c.cmd("PASS pw");
    assert!(r.starts_with("+OK"), "PASS {what}: {r}");
    assert!(c.cmd("QUIT").starts_with("+OK"));
    eventually("login logged with the client's address", || {
        srv.stderr_text()
            .lines()
            .any(|l| l.contains("login") && l.contains("peer=192.0.2.7:40001"))
    });
}

/// A line-based client over any stream that already carries what a proxy would send.
struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    fn connect(addr: SocketAddr, preamble: &[u8]) -> Raw {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        s.write_all(preamble).unwrap();
        Raw {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }
    /// The next line, or `None` when the server closed the connection.
    fn line(&mut self) -> Option<String> {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) => None,
            Ok(_) => Some(l.trim_end().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("read: {e}"),
        }
    }
    fn cmd(&mut self, c: &str) -> String {
        self.writer
            .write_all(format!("{c}\r\n").as_bytes())
            .unwrap();
        self.line().expect("server closed the connection")
    }
}

fn v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = corepop::proxy::V2_SIGNATURE.to_vec();
    h.push(0x21); // version 2, PROXY
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11); // TCP over IPv4
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => panic!("IPv4 only in this helper"),
    }
    h
}

/// [`v2_header`] followed by `tlvs` (the length field covering them).
fn v2_header_with_tlvs(src: SocketAddr, dst: SocketAddr, tlvs: &[u8]) -> Vec<u8> {
    let mut h = v2_header(src, dst);
    let len = u16::from_be_bytes([h[14], h[15]]) + u16::try_from(tlvs.len()).unwrap();
    h[14..16].copy_from_slice(&len.to_be_bytes());
    h.extend_from_slice(tlvs);
    h
}

/// The admin address from `corepop: metrics on http://ADDR/metrics`.
fn metrics_addr(srv: &Server) -> SocketAddr {
    let mut found = None;
    eventually("metrics address announced", || {
        found = srv
            .stdout_text()
            .lines()
            .find_map(|l| l.strip_prefix("corepop: metrics on http://"))
            .and_then(|r| r.strip_suffix("/metrics"))
            .and_then(|a| a.parse().ok());
        found.is_some()
    });
    found.unwrap()
}

fn scrape(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn check_config_prints_effective_settings_and_names_bad_keys() {
    let fx = fixture("[limits]\nlogin_delay_secs = 300\n");
    let bin = env!("CARGO_BIN_EXE_corepop");
    let out = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(fx.config_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
    // Defaults are shown next to what the file set.
    assert!(stdout.contains("login_delay_secs = 300"), "{stdout}");
    assert!(stdout.contains("idle_timeout_secs = 600"), "{stdout}");
    // What start-up warns about, check-config shows too: here a passwd-file line that serve
    // would skip (the user could not log in), which check-config used to pass silently.
    let mut passwd = fs::read_to_string(fx.passwd_path()).unwrap();
    passwd.push_str("bob:{PLAIN}pw:0:0::/nonexistent::\n");
    fs::write(fx.passwd_path(), passwd).unwrap();
    let out = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(fx.config_path())
        .env_remove("COREPOP_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("WARN") && err.contains("\"bob\"") && err.contains("line skipped"),
        "check-config did not warn about the skipped passwd-file line:\n{err}"
    );

    fs::write(
        fx.config_path(),
        "[limits]\nmax_connections = 10\nmax_conections_per_ip = 3\n",
    )
    .unwrap();
    let out = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(fx.config_path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("max_conections_per_ip") && err.contains("line 3"),
        "{err}"
    );

    let out = Command::new(bin).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("corepop "));
    let out = Command::new(bin).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for section in ["SIGNALS:", "SIGHUP", "check-config", "EXIT STATUS:"] {
        assert!(help.contains(section), "--help lacks {section}:\n{help}");
    }
}

#[test]
fn sighup_reloads_passwd_file_without_dropping_sessions() {
    let mut fx = fixture("");
    let srv = Server::start(&fx, &[]);
    let mut a = Pop3Client::connect(srv.addr);
    a.login("alice", "pw");

    // A new user appears after SIGHUP; alice's session carries on.
    assert!(try_login(srv.addr, "bob", "pw2").starts_with("-ERR"));
    fx.add_user("bob", "pw2");
    srv.signal(libc::SIGHUP);
    eventually("bob can log in after SIGHUP", || {
        try_login(srv.addr, "bob", "pw2").starts_with("+OK")
    });
    assert!(a.cmd("STAT").starts_with("+OK 1 "));

    // The passwd-file disappears: logged loudly, the old users keep working.
    fs::rename(fx.passwd_path(), fx.path().join("passwd.moved")).unwrap();
    srv.signal(libc::SIGHUP);
    eventually("reload failure logged", || {
        srv.stderr_text().contains("PASSWD-FILE NOT RELOADED")
    });
    assert!(try_login(srv.addr, "bob", "pw2").starts_with("+OK"));

    // An invalid configuration is refused, naming the key; the old one stays.
    fs::rename(fx.path().join("passwd.moved"), fx.passwd_path()).unwrap();
    let good = fs::read_to_string(fx.config_path()).unwrap();
    fs::write(
        fx.config_path(),
        format!("{good}\n[limits]\nmax_conections = 1\n"),
    )
    .unwrap();
    srv.signal(libc::SIGHUP);
    eventually("invalid configuration logged", || {
        let e = srv.stderr_text();
        e.contains("configuration not reloaded") && e.contains("max_conections")
    });
    assert!(try_login(srv.addr, "alice", "pw").starts_with("-ERR [IN-USE]"));
    assert!(a.cmd("QUIT").starts_with("+OK"));
    assert!(try_login(srv.addr, "bob", "pw2").starts_with("+OK"));
}

#[test]
fn connection_limits_per_ip_and_reload_of_limits() {
    let fx = fixture("[limits]\nmax_connections_per_ip = 2\n");
    let srv = Server::start(&fx, &[]);
    let c1 = Pop3Client::connect(srv.addr);
    let _c2 = Pop3Client::connect(srv.addr);
    let mut c3 = Raw::connect(srv.addr, b"");
    assert_eq!(
        c3.line().as_deref(),
        Some("-ERR [SYS/TEMP] Too many connections, try again later.")
    );
    assert_eq!(c3.line(), None, "refused connection is closed");
    drop(c1);
    eventually("a place is free again", || {
        Raw::connect(srv.addr, b"")
            .line()
            .is_some_and(|l| l.starts_with("+OK"))
    });

    // Limits are applied by SIGHUP.
    let cfg = fs::read_to_string(fx.config_path()).unwrap();
    fs::write(
        fx.config_path(),
        cfg.replace("max_connections_per_ip = 2", "max_connections_per_ip = 5"),
    )
    .unwrap();
    srv.signal(libc::SIGHUP);
    eventually("reload applied", || {
        srv.stderr_text().contains("reload complete")
    });
    let more: Vec<Pop3Client> = (0..3).map(|_| Pop3Client::connect(srv.addr)).collect();
    assert!(more.iter().all(|c| c.greeting.starts_with("+OK")));
}

#[test]
fn login_delay_and_expire_are_advertised_and_enforced() {
    let mut fx = fixture("[server]\nexpire = \"NEVER\"\n[limits]\nlogin_delay_secs = 3600\n");
    // bob's passwd-file entry overrides the delay.
    fs::OpenOptions::new()
        .append(true)
        .open(fx.passwd_path())
        .unwrap()
        .write_all(b"bob:{PLAIN}pw::::::login_delay=0\n")
        .unwrap();
    fs::create_dir_all(fx.maildir("bob").join("new")).unwrap();
    let _ = &mut fx;
    let srv = Server::start(&fx, &[]);
    let capa = |c: &mut Pop3Client| String::from_utf8_lossy(&c.multi("CAPA").1).into_owned();
    // RFC 2449 §6.5: the delay differs per user (bob's entry), so before login it is
    // tagged USER, and after login each user is told their own.
    let mut c = Pop3Client::connect(srv.addr);
    let before = capa(&mut c);
    assert!(before.contains("LOGIN-DELAY 3600 USER\r\n"), "{before}");
    assert!(before.contains("EXPIRE NEVER\r\n"), "{before}");
    assert!(c.login("alice", "pw").starts_with("+OK"));
    let alice = capa(&mut c);
    assert!(alice.contains("LOGIN-DELAY 3600\r\n"), "{alice}");
    c.cmd("QUIT");
    let mut b = Pop3Client::connect(srv.addr);
    assert!(b.login("bob", "pw").starts_with("+OK"));
    let bob = capa(&mut b);
    assert!(bob.contains("LOGIN-DELAY 0\r\n"), "{bob}");
    b.cmd("QUIT");

    let again = try_login(srv.addr, "alice", "pw");
    assert!(again.starts_with("-ERR [LOGIN-DELAY]"), "{again}");
    // Wrong password: still an ordinary failure, the delay does not reveal the password.
    assert!(!try_login(srv.addr, "alice", "nope").contains("LOGIN-DELAY"));
    assert!(try_login(srv.addr, "bob", "pw").starts_with("+OK"));

    // A login refused after the password (the maildrop held by a session on another host)
    // does not start the delay: once the lock is gone, the user gets in.
    fs::OpenOptions::new()
        .append(true)
        .open(fx.passwd_path())
        .unwrap()
        .write_all(b"carol:{PLAIN}pw::::::\n")
        .unwrap();
    let carol = fx.maildir("carol");
    for d in ["new", "cur", "tmp"] {
        fs::create_dir_all(carol.join(d)).unwrap();
    }
    srv.signal(libc::SIGHUP);
    let lock = carol.join("corepop-pop3.lock");
    fs::write(&lock, "1 1 other-host 1\n").unwrap();
    eventually("carol known after the reload", || {
        try_login(srv.addr, "carol", "pw").starts_with("-ERR [IN-USE]")
    });
    fs::write(&lock, "").unwrap();
    let r = try_login(srv.addr, "carol", "pw");
    assert!(r.starts_with("+OK"), "{r}");
    assert!(try_login(srv.addr, "carol", "pw").starts_with("-ERR [LOGIN-DELAY]"));
}

fn proxy_fixture(trusted: &str) -> (Fixture, Server) {
    let fx = fixture(&format!(
        "[limits]\nmax_connections_per_ip = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [proxy]\nlisten = [\"127.0.0.1:0\"]\ntrusted_networks = [\"{trusted}\"]\nheader_timeout_secs = 1\n"
    ));
    let srv = Server::start(&fx, &[]);
    eventually("two listeners", || srv.addrs().len() == 2);
    (fx, srv)
}

#[test]
fn proxy_protocol_v1_and_v2_carry_the_client_address() {
    let (_fx, srv) = proxy_fixture("127.0.0.0/8");
    let proxy = srv.addrs()[1];
    assert!(srv
        .stdout_text()
        .contains(&format!("listening on {proxy} (proxy)")));

    let mut v1 = Raw::connect(proxy, b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 110\r\n");
    assert!(v1.line().unwrap().starts_with("+OK"));
    // The client address is not loopback now: plaintext USER/PASS is refused for it.
    let r = v1.cmd("USER alice");
    assert!(r.contains("Plaintext authentication disallowed"), "{r}");
    v1.cmd("QUIT");

    // v2, and the per-IP limit counts the proxied address, not the proxy's.
    let src: SocketAddr = "198.51.100.9:40002".parse().unwrap();
    let mut a = Raw::connect(proxy, &v2_header(src, proxy));
    assert!(a.line().unwrap().starts_with("+OK"));
    let other: SocketAddr = "198.51.100.10:40003".parse().unwrap();
    let mut b = Raw::connect(proxy, &v2_header(other, proxy));
    assert!(b.line().unwrap().starts_with("+OK"));
    let mut same = Raw::connect(proxy, &v2_header(src, proxy));
    assert!(same
        .line()
        .unwrap()
        .starts_with("-ERR [SYS/TEMP] Too many connections"));
    // The session right behind a v2 header works (no byte of it was eaten).
    assert!(a.cmd("CAPA").starts_with("+OK"));

    // Malformed and truncated headers: closed without a greeting.
    assert_eq!(Raw::connect(proxy, b"PROXY TCP9 nonsense\r\n").line(), None);
    assert_eq!(Raw::connect(proxy, b"USER alice\r\n").line(), None);
    assert_eq!(Raw::connect(proxy, b"PROXY TCP4 192.0.2.").line(), None);
    assert_eq!(
        Raw::connect(proxy, &v2_header(src, proxy)[..20]).line(),
        None
    );

    let text = scrape(metrics_addr(&srv));
    assert_eq!(
        metric(
            &text,
            "corepop_connections_refused_total{reason=\"proxy_bad_header\"}"
        ),
        4
    );
    assert_eq!(
        metric(
            &text,
            "corepop_connections_refused_total{reason=\"max_connections_per_ip\"}"
        ),
        1
    );
}

/// `proxy.plaintext_auth`: a proxy that terminates TLS itself (nginx `mail`) sends USER/PASS
/// in plaintext for a remote client; corepop accepts them on the PROXY listener only.
#[test]
fn proxy_plaintext_auth_accepts_user_pass_from_a_tls_terminating_proxy() {
    let fx = fixture(
        "[proxy]\nlisten = [\"127.0.0.1:0\"]\ntrusted_networks = [\"127.0.0.0/8\"]\n\
         plaintext_auth = true\n",
    );
    let srv = Server::start(&fx, &[]);
    eventually("two listeners", || srv.addrs().len() == 2);
    let proxy = srv.addrs()[1];

    let mut c = Raw::connect(proxy, b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 110\r\n");
    assert!(c.line().unwrap().starts_with("+OK"));
    log_in_as_the_remote_client(&mut c, &srv, "through the TLS-terminating proxy");
}

/// The CAPA list (without the `+OK` and `.` lines), on a [`Raw`] connection.
fn raw_capa(c: &mut Raw) -> Vec<String> {
    let first = c.cmd("CAPA");
    assert!(first.starts_with("+OK"), "{first}");
    std::iter::from_fn(|| c.line())
        .take_while(|l| l != ".")
        .collect()
}

/// HAProxy's `send-proxy-v2-ssl`: a PROXY v2 header whose PP2_TYPE_SSL TLV has PP2_CLIENT_SSL
/// set says the client talked TLS to HAProxy. corepop then treats the connection as one with
/// TLS (as Dovecot does): USER/PASS and SASL PLAIN/LOGIN allowed for a remote client, no STLS.
/// Without the bit (or the TLV) plaintext stays refused, and a malformed TLV closes it.
#[test]
fn proxy_v2_ssl_tlv_allows_plaintext_auth_for_a_client_that_used_tls() {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    fx.deliver("alice", "new", "1700000001.M1P1.h", MSG);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (fx.path().join("tls.pem"), fx.path().join("tls.key"));
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    fs::set_permissions(
        &key_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    fx.config(&format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n\n\
         [proxy]\nlisten = [\"127.0.0.1:0\"]\ntrusted_networks = [\"127.0.0.0/8\"]\n\
         header_timeout_secs = 1\n",
        cert_path.display().to_string(),
        key_path.display().to_string(),
    ));
    let srv = Server::start(&fx, &[]);
    eventually("two listeners", || srv.addrs().len() == 2);
    let proxy = srv.addrs()[1];
    let src: SocketAddr = "192.0.2.7:40001".parse().unwrap();
    // PP2_TYPE_SSL: `client`, `verify`, then PP2_SUBTYPE_SSL_VERSION, as HAProxy sends it.
    let with_ssl = |client: u8| {
        let mut tlv = vec![0x20, 0x00, 15, client, 0, 0, 0, 0, 0x21, 0x00, 0x07];
        tlv.extend_from_slice(b"TLSv1.3");
        v2_header_with_tlvs(src, proxy, &tlv)
    };

    let mut c = Raw::connect(proxy, &with_ssl(0x01));
    assert!(c.line().unwrap().starts_with("+OK"));
    let capa = raw_capa(&mut c);
    assert!(capa.iter().any(|l| l == "USER"), "{capa:?}");
    assert!(
        capa.iter().any(|l| l.starts_with("SASL ")
            && l.split(' ').any(|m| m == "PLAIN")
            && l.split(' ').any(|m| m == "LOGIN")),
        "{capa:?}"
    );
    assert!(!capa.iter().any(|l| l == "STLS"), "{capa:?}");
    assert_eq!(c.cmd("STLS"), "-ERR TLS is already active.");
    log_in_as_the_remote_client(&mut c, &srv, "after a TLS client's header");

    // The SSL TLV without PP2_CLIENT_SSL (HAProxy: a client without TLS), or no TLV at all.
    for header in [with_ssl(0x00), v2_header(src, proxy)] {
        let mut c = Raw::connect(proxy, &header);
        assert!(c.line().unwrap().starts_with("+OK"));
        let capa = raw_capa(&mut c);
        assert!(!capa.iter().any(|l| l == "USER"), "{capa:?}");
        assert!(capa.iter().any(|l| l == "STLS"), "{capa:?}");
        let r = c.cmd("USER alice");
        assert!(r.contains("Plaintext authentication disallowed"), "{r}");
        c.cmd("QUIT");
    }

    // An SSL TLV too short for `client` and `verify`: no greeting.
    let short = v2_header_with_tlvs(src, proxy, &[0x20, 0x00, 0x01, 0x01]);
    assert_eq!(Raw::connect(proxy, &short).line(), None);
}

#[test]
fn proxy_header_from_untrusted_network_is_refused() {
    let (_fx, srv) = proxy_fixture("10.0.0.0/8");
    let proxy = srv.addrs()[1];
    let mut c = Raw::connect(proxy, b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 110\r\n");
    assert_eq!(c.line(), None);
    eventually("refusal logged", || srv.stderr_text().contains("untrusted"));
    // The plain listener is unaffected.
    assert!(Pop3Client::connect(srv.addr).greeting.starts_with("+OK"));
    let text = scrape(metrics_addr(&srv));
    assert_eq!(
        metric(
            &text,
            "corepop_connections_refused_total{reason=\"proxy_untrusted\"}"
        ),
        1
    );
}

#[test]
fn metrics_endpoint_counts_what_happened() {
    let fx = fixture("[admin]\nlisten = \"127.0.0.1:0\"\n");
    let srv = Server::start(&fx, &[]);
    let admin = metrics_addr(&srv);
    assert!(try_login(srv.addr, "alice", "wrong").starts_with("-ERR"));
    let mut c = Pop3Client::connect(srv.addr);
    c.login("alice", "pw");
    let (ok, body) = c.multi("RETR 1");
    assert!(ok.starts_with("+OK"));
    assert_eq!(body, MSG);
    c.multi("TOP 1 0");
    c.cmd("QUIT");
    eventually("logout logged", || srv.stderr_text().contains("logout"));

    eventually("all connections closed", || {
        metric(&scrape(admin), "corepop_connections_current") == 0
    });
    let text = scrape(admin);
    let listener = format!(
        "corepop_connections_total{{listener=\"{}\",tls=\"false\",proxy=\"false\"}}",
        srv.addr
    );
    assert_eq!(metric(&text, &listener), 2);
    assert_eq!(metric(&text, "corepop_logins_total{result=\"ok\"}"), 1);
    assert_eq!(metric(&text, "corepop_logins_total{result=\"failed\"}"), 1);
    assert_eq!(metric(&text, "corepop_commands_total{command=\"USER\"}"), 2);
    assert_eq!(metric(&text, "corepop_commands_total{command=\"RETR\"}"), 1);
    assert_eq!(metric(&text, "corepop_commands_total{command=\"TOP\"}"), 1);
    assert_eq!(
        metric(
            &text,
            "corepop_retrieve_duration_seconds_count{command=\"RETR\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &text,
            "corepop_retrieve_duration_seconds_count{command=\"TOP\"}"
        ),
        1
    );
    assert!(metric(&text, "corepop_bytes_sent_total") > MSG.len() as u64);
    assert!(text.contains("# TYPE corepop_retrieve_duration_seconds histogram"));
    // One login built the snapshot from disk (and wrote the index: the message was new).
    assert_eq!(
        metric(&text, "corepop_index_lookups_total{result=\"miss\"}"),
        1
    );
    assert_eq!(metric(&text, "corepop_index_writes_total"), 1);
    // A second login of the unchanged Maildir shares the in-memory snapshot. (The cache
    // trusts a directory stamp only once it is over a second old.)
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut c = Pop3Client::connect(srv.addr);
    c.login("alice", "pw");
    c.cmd("QUIT");
    let mut c = Pop3Client::connect(srv.addr);
    c.login("alice", "pw");
    c.cmd("QUIT");
    eventually("index hit counted", || {
        metric(
            &scrape(admin),
            "corepop_index_lookups_total{result=\"hit\"}",
        ) >= 1
    });

    // The logout line: client address, Dovecot-like counters and bytes; never the password.
    let log = srv.stderr_text();
    let line = log
        .lines()
        .find(|l| l.contains("logout") && l.contains("alice"))
        .unwrap();
    for field in [
        "peer=127.0.0.1:",
        "retr=1/",
        "top=1/",
        "del=0/1",
        "size=",
        "bytes=",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    assert!(
        !log.contains("wrong") && !log.contains("pw\""),
        "password in log:\n{log}"
    );

    let mut s = TcpStream::connect(admin).unwrap();
    s.write_all(b"GET /nope HTTP/1.0\r\n\r\n").unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.0 404"), "{r}");
}

#[test]
fn connections_are_spread_over_the_executors_and_counted_per_executor() {
    let fx = fixture("[admin]\nlisten = \"127.0.0.1:0\"\n");
    let srv = Server::start(&fx, &["--threads", "2"]);
    let admin = metrics_addr(&srv);
    let per_executor = |text: &str| {
        [0, 1].map(|i| {
            metric(
                text,
                &format!("corepop_executor_connections{{executor=\"{i}\"}}"),
            )
        })
    };
    // Held open one after another: each executor takes its share, however the kernel would
    // have hashed them.
    let held: Vec<Pop3Client> = (0..12).map(|_| Pop3Client::connect(srv.addr)).collect();
    eventually("12 connections open", || {
        metric(&scrape(admin), "corepop_connections_current") == 12
    });
    let text = scrape(admin);
    let [a, b] = per_executor(&text);
    assert_eq!(a + b, 12, "{text}");
    assert!(a.abs_diff(b) <= 6, "executors hold {a} and {b} connections");
    // Each executor is watched: its watchdog count is exported, whatever its value.
    for i in [0, 1] {
        metric(
            &text,
            &format!("corepop_executor_stall_wakeups_total{{executor=\"{i}\"}}"),
        );
    }
    drop(held);
    eventually("both executors back to 0", || {
        per_executor(&scrape(admin)) == [0, 0]
    });
}

/// Drops a file's pages from the page cache (`POSIX_FADV_DONTNEED`; a no-op on tmpfs).
fn evict_from_page_cache(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(path).unwrap();
    // SAFETY: advice on a descriptor `f` owns; no memory is passed.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0, "posix_fadvise {}", path.display());
}

/// Whether `path` is on tmpfs, where page-cache eviction does not apply.
fn on_tmpfs(path: &std::path::Path) -> bool {
    let out = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "tmpfs"
}

/// A warm message is read on the executor; one that the kernel would have to fetch from disk
/// (evicted from the page cache) or that another client moved meanwhile is read on the
/// blocking pool. Every one arrives whole, and the metric counts the blocking reads.
#[test]
fn cold_and_moved_messages_are_served_whole_and_counted() {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    let samples = fx.deliver_samples("alice");
    fx.config("[admin]\nlisten = \"127.0.0.1:0\"\n");
    let srv = Server::start(&fx, &[]);
    let admin = metrics_addr(&srv);
    let blocking = || metric(&scrape(admin), "corepop_message_blocking_reads_total");
    let mut c = Pop3Client::connect(srv.addr);
    c.login("alice", "pw");
    let retr_all = |c: &mut Pop3Client| {
        for (i, (name, bytes)) in samples.iter().enumerate() {
            let (st, body) = c.multi(&format!("RETR {}", i + 1));
            assert!(st.starts_with("+OK"), "{name}: {st}");
            assert_eq!(body, common::expected_wire(bytes), "{name}");
        }
    };
    // Warm (just written): served whole, wherever it was read.
    retr_all(&mut c);
    let warm = blocking();

    // Cold: every message evicted from the page cache.
    let maildir = fx.maildir("alice");
    let files: Vec<_> = fx.maildir_files("alice");
    for f in &files {
        evict_from_page_cache(&maildir.join(f));
    }
    retr_all(&mut c);
    let cold = blocking();
    if !on_tmpfs(&maildir) {
        assert!(
            cold > warm,
            "evicted messages were not read on the blocking pool ({warm} -> {cold})"
        );
    }

    // Moved by another client (flags changed): found again by its base name.
    for f in &files {
        let from = maildir.join(f);
        let name = from.file_name().unwrap().to_str().unwrap().to_string();
        let base = name.split(':').next().unwrap();
        fs::rename(&from, maildir.join("cur").join(format!("{base}:2,P"))).unwrap();
    }
    retr_all(&mut c);
    let moved = blocking();
    assert!(
        moved >= cold + samples.len() as u64,
        "moved messages must be looked up on the blocking pool ({cold} -> {moved})"
    );
    assert!(c.cmd("QUIT").starts_with("+OK"));
}

/// Spawns `corepop serve` with extra environment, returning the child and a reader for
/// its stdout lines.
fn spawn_with_env(
    fx: &Fixture,
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corepop"));
    cmd.arg("serve")
        .arg("--config")
        .arg(fx.config_path())
        .args(["--threads", "1"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn listening_addr(rx: &std::sync::mpsc::Receiver<String>) -> SocketAddr {
    loop {
        let l = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("listening line");
        if let Some(a) = l.strip_prefix("corepop: listening on ") {
            return a.split(' ').next().unwrap().parse().unwrap();
        }
    }
}

fn kill(child: &mut std::process::Child, sig: i32) {
    // SAFETY: kill(2) on our own, not yet reaped, child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

#[test]
fn systemd_notifications_ready_reloading_stopping() {
    let fx = fixture("");
    let sock_path = fx.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let (mut child, rx) = spawn_with_env(
        &fx,
        &["--listen", "127.0.0.1:0", "--allow-root"],
        &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())],
    );
    let addr = listening_addr(&rx);
    let mut buf = [0u8; 4096];
    let mut next = || {
        let n = sock.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains(&addr.to_string()), "{ready}");
    kill(&mut child, libc::SIGHUP);
    let reloading = next();
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    let ready = next();
    assert!(
        ready.contains("READY=1") && ready.contains("STATUS=Reloaded"),
        "{ready}"
    );
    kill(&mut child, libc::SIGTERM);
    assert!(next().contains("STOPPING=1"));
    assert!(child.wait().unwrap().success());
}

#[test]
fn socket_activation_uses_the_passed_sockets() {
    let fx = fixture("");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = format!("127.0.0.1:{port}");
    let mut child = Command::new("systemd-socket-activate")
        .args([
            "-l",
            &listen,
            "--fdname=pop3",
            env!("CARGO_BIN_EXE_corepop"),
            "serve",
        ])
        .arg("--config")
        .arg(fx.config_path())
        // The configured listener would conflict; socket activation replaces it.
        .args(["--listen", "127.0.0.1:1", "--threads", "2", "--allow-root"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(fx.path().join("activated.log")).unwrap())
        .spawn()
        .expect("systemd-socket-activate (package systemd)");
    let addr: SocketAddr = listen.parse().unwrap();
    let mut ok = false;
    for _ in 0..200 {
        if TcpStream::connect(addr).is_ok() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ok, "socket-activate did not listen");
    // The first connection starts corepop, which serves it on the inherited socket.
    assert_eq!(try_login(addr, "alice", "pw"), "+OK Logged in.");
    for _ in 0..4 {
        assert!(Pop3Client::connect(addr).greeting.starts_with("+OK"));
    }
    kill(&mut child, libc::SIGTERM);
    let _ = child.wait();
    // The configured listener that systemd did not pass is named, not silently dropped.
    let log = fs::read_to_string(fx.path().join("activated.log")).unwrap();
    let warning = log.lines().find(|l| l.contains("NOT served"));
    assert!(
        warning.is_some_and(|l| l.contains("127.0.0.1:1 (server.listen)")),
        "{log}"
    );
}

#[test]
fn refuses_to_serve_as_root_without_permission() {
    if !is_root() {
        eprintln!("skipped: not running as root");
        return;
    }
    let fx = fixture("");
    let out = Command::new(env!("CARGO_BIN_EXE_corepop"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(fx.config_path())
        .env_remove("COREPOP_ALLOW_ROOT")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to serve as root"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening on"));
}

/// As root: a fixture whose server drops to `nobody`, its files owned by `nobody` (the mail
/// user must be able to read them, as with vmail in production). Not root: `None`, skipped.
fn fixture_for_nobody() -> Option<Fixture> {
    if !is_root() {
        eprintln!("skipped: not running as root");
        return None;
    }
    let fx = fixture("[privileges]\nuser = \"nobody\"\n");
    let st = Command::new("chown")
        .args(["-R", "nobody:"])
        .arg(fx.path())
        .status()
        .unwrap();
    assert!(st.success());
    Some(fx)
}

#[test]
fn drops_root_privileges_to_the_configured_user() {
    let Some(fx) = fixture_for_nobody() else {
        return;
    };
    let srv = Server::start(&fx, &[]);
    let status = fs::read_to_string(format!("/proc/{}/status", srv.pid().unwrap())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let gid_line = status.lines().find(|l| l.starts_with("Groups:")).unwrap();
    let nobody = String::from_utf8(
        Command::new("id")
            .args(["-u", "nobody"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let nobody = nobody.trim();
    let ids: Vec<&str> = uid_line.split_whitespace().skip(1).collect();
    assert_eq!(ids, vec![nobody; 4], "{uid_line}");
    assert!(!gid_line.split_whitespace().any(|g| g == "0"), "{gid_line}");
    // Every thread (executors, blocking pool) runs as nobody too.
    for t in fs::read_dir(format!("/proc/{}/task", srv.pid().unwrap())).unwrap() {
        let st = fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        let l = st.lines().find(|l| l.starts_with("Uid:")).unwrap();
        assert!(l.split_whitespace().skip(1).all(|u| u == nobody), "{l}");
    }
    // And it serves mail.
    let mut c = Pop3Client::connect(srv.addr);
    c.login("alice", "pw");
    assert_eq!(c.multi("RETR 1").1, MSG);
    c.cmd("QUIT");
}

/// A file a SIGHUP re-reads (here the passwd-file) that root could read at start-up but the
/// dropped user cannot is named in a warning at once, not only when a reload fails.
#[test]
fn warns_at_start_up_of_files_a_reload_could_not_read() {
    use std::os::unix::fs::PermissionsExt;
    let Some(fx) = fixture_for_nobody() else {
        return;
    };
    // Root's only, as a careless `install -m 600` leaves it.
    std::os::unix::fs::chown(fx.passwd_path(), Some(0), Some(0)).unwrap();
    fs::set_permissions(fx.passwd_path(), fs::Permissions::from_mode(0o600)).unwrap();
    let srv = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(srv.addr);
    c.login("alice", "pw");
    c.cmd("QUIT");
    let log = srv.stderr_text();
    let warning = log
        .lines()
        .find(|l| l.contains("a SIGHUP reload will fail"));
    assert!(
        warning.is_some_and(|l| l.contains(&*fx.passwd_path().to_string_lossy())),
        "{log}"
    );
}

/// The `cargo deb` metadata names files that exist, and the configuration it installs is
/// valid (what `cargo deb` would otherwise only find out when building the package).
#[test]
fn debian_package_metadata_is_complete() {
    use std::os::unix::fs::PermissionsExt;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest: toml::Table = fs::read_to_string(root.join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    for asset in deb["assets"].as_array().unwrap() {
        let src = asset[0].as_str().unwrap();
        if !src.starts_with("target/") {
            assert!(root.join(src).exists(), "deb asset {src} is missing");
        }
    }
    let units = root.join(deb["systemd-units"]["unit-scripts"].as_str().unwrap());
    for unit in ["corepop.service", "corepop.socket"] {
        assert!(units.join(unit).exists(), "{unit} missing");
    }
    let scripts = root.join(deb["maintainer-scripts"].as_str().unwrap());
    let postinst = scripts.join("postinst");
    let text = fs::read_to_string(&postinst).unwrap();
    assert!(text.contains("adduser --system") && text.contains("vmail"));
    assert!(text.contains("#DEBHELPER#"));
    assert!(fs::metadata(&postinst).unwrap().permissions().mode() & 0o111 != 0);

    let fx = Fixture::new();
    let out = Command::new(env!("CARGO_BIN_EXE_corepop"))
        .args(["check-config", "--config"])
        .arg(root.join("debian/corepop.toml"))
        .arg("--passwd-file")
        .arg(fx.passwd_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "shipped configuration invalid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SIGTERM while a client is in the middle of a large RETR with DELE and QUIT pipelined
/// behind it: the download completes, the UPDATE is applied in full, the server exits cleanly.
#[test]
fn sigterm_lets_a_busy_session_finish_and_apply_its_update() {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    while big.len() < 8 << 20 {
        big.extend_from_slice(
            b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrs\r\n",
        );
    }
    fx.deliver("alice", "new", "1700000001.M1P1.h", &big);
    fx.deliver("alice", "new", "1700000002.M1P1.h", MSG);
    fx.config("");
    let mut srv = Server::start(&fx, &[]);
    let mut c = Pop3Client::connect(srv.addr);
    c.login("alice", "pw");
    c.send_raw(b"RETR 1\r\nDELE 1\r\nQUIT\r\n");
    // The status line is out: the transfer is under way (the client is not reading yet).
    assert!(c.read_line().starts_with("+OK"));
    srv.signal(libc::SIGTERM);
    assert_eq!(c.read_multi_body(), big);
    assert!(c.read_line().starts_with("+OK"), "DELE");
    assert_eq!(c.read_line(), "+OK Logging out, 1 messages deleted.");
    let status = srv.stop().expect("server exited");
    assert!(status.success(), "{status:?}");
    assert_eq!(fx.maildir_files("alice").len(), 1);
}

/// The total and per-user limits, told apart in the metrics.
#[test]
fn total_and_per_user_limits() {
    let fx = fixture(
        "[limits]\nmax_connections = 3\nmax_connections_per_user = 1\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    let srv = Server::start(&fx, &[]);
    let mut a = Pop3Client::connect(srv.addr);
    a.login("alice", "pw");
    let r = try_login(srv.addr, "alice", "pw");
    assert!(r.starts_with("-ERR [IN-USE]"), "{r}");
    let _b = Pop3Client::connect(srv.addr);
    let _c = Pop3Client::connect(srv.addr);
    let mut d = Raw::connect(srv.addr, b"");
    assert!(d
        .line()
        .unwrap()
        .starts_with("-ERR [SYS/TEMP] Too many connections"));
    let text = scrape(metrics_addr(&srv));
    assert_eq!(
        metric(&text, "corepop_logins_total{result=\"max_per_user\"}"),
        1
    );
    assert_eq!(metric(&text, "corepop_lock_conflicts_total"), 0);
    assert_eq!(
        metric(
            &text,
            "corepop_connections_refused_total{reason=\"max_connections\"}"
        ),
        1
    );
    assert!(a.cmd("QUIT").starts_with("+OK"));
}

/// The server's descriptors that refer to `dir` itself (not to files in it).
fn descriptors_on(pid: u32, dir: &std::path::Path) -> usize {
    let dir = fs::canonicalize(dir).unwrap();
    fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .filter(|target| *target == dir)
        .count()
}

/// A logged-in session costs no descriptor but its socket until it retrieves a message; from
/// then to its end it holds one on its maildrop's directory (messages are opened from there),
/// and gives it back when it ends. Retrieval is unchanged by it.
#[test]
fn a_session_holds_its_maildrop_open_only_once_it_retrieves() {
    let fx = fixture("");
    fx.deliver("alice", "cur", "1700000000.M1P1.h:2,S", MSG);
    let srv = Server::start(&fx, &[]);
    let pid = srv.pid().unwrap();
    let maildir = fx.maildir("alice");
    let mut c = Pop3Client::connect(srv.addr);
    assert!(c.login("alice", "pw").starts_with("+OK"));
    assert!(c.cmd("STAT").starts_with("+OK 2 "));
    assert_eq!(descriptors_on(pid, &maildir), 0, "held before any RETR");
    for n in [1, 2, 1] {
        let (st, body) = c.multi(&format!("RETR {n}"));
        assert!(st.starts_with("+OK"), "{st}");
        assert_eq!(body, common::expected_wire(MSG));
        assert_eq!(descriptors_on(pid, &maildir), 1, "after RETR {n}");
    }
    assert!(c.cmd("QUIT").starts_with("+OK"));
    eventually("the maildrop's descriptor closed", || {
        descriptors_on(pid, &maildir) == 0
    });
}

/// One raw HTTP exchange with the admin listener.
fn http(admin: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(admin).unwrap();
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    s.write_all(request).unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    r
}

#[test]
fn metrics_endpoint_http_edges() {
    let fx = fixture("[admin]\nlisten = \"127.0.0.1:0\"\n");
    let srv = Server::start(&fx, &[]);
    let admin = metrics_addr(&srv);
    // A query string (Prometheus' `params` scrape setting adds one) still names /metrics.
    let r = http(
        admin,
        b"GET /metrics?module=pop3 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
    assert!(r.contains(
        "\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
    ));
    assert!(r.ends_with("# EOF\n"), "{r}");
    // HEAD: the same headers, no body (RFC 9110 §9.3.2).
    let r = http(admin, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
    assert!(r.ends_with("\r\n\r\n"), "a body after HEAD: {r}");
    // Other methods: 405 with the Allow header RFC 9110 §15.5.6 requires.
    let r = http(
        admin,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    );
    assert!(r.starts_with("HTTP/1.0 405"), "{r}");
    assert!(r.contains("\r\nAllow: GET, HEAD\r\n"), "{r}");
    // A request line sent with bare LFs is understood too.
    let r = http(admin, b"GET /metrics HTTP/1.0\n\n");
    assert!(r.starts_with("HTTP/1.0 200 OK\r\n"), "{r}");
}
