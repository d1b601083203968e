//! A real nginx mail proxy (Debian's `nginx` with `libnginx-mod-mail`) in front of corepop, the
//! way ISPs run it: nginx talks to the client until the login (its own greeting, CAPA, STLS,
//! USER/PASS, APOP, AUTH PLAIN/CRAM-MD5), asks an `auth_http` server where the user lives,
//! then connects to corepop's PROXY listener, sends a PROXY v1 header naming the client, logs
//! in with USER/PASS and relays bytes both ways.
//!
//! Checked, as a user would notice it: the same STAT/LIST/UIDL/TOP/RETR answers and bytes as
//! talking to corepop directly; DELE + QUIT removes exactly the marked message, RSET or a
//! dropped connection removes nothing; a wrong password and a maildrop in use reach the client
//! as corepop's `-ERR [AUTH]` / `-ERR [IN-USE]`; APOP, AUTH PLAIN and AUTH CRAM-MD5 at nginx
//! work (the `auth_http` answer carries the password nginx then sends as PASS); corepop logs
//! the client's address from the PROXY header, not nginx's; and STLS terminated at nginx
//! (`starttls only`) with plaintext USER/PASS from nginx to corepop works for a remote client
//! (`proxy.plaintext_auth`), without `auth.insecure_plaintext_auth`.
//!
//! A remote client on loopback: a second nginx server block accepts a PROXY header itself
//! (`listen … proxy_protocol` + `set_real_ip_from`, nginx's mail realip module), so the test
//! client can claim 192.0.2.10 (TEST-NET-1); nginx passes that address on to corepop. Nothing
//! leaves loopback.
//!
//! nginx runs as one foreground process (`daemon off; master_process off;`) with its own
//! prefix, config, pid file and error log in a temporary directory, killed when the test ends.
//! A missing nginx or mail module fails the test (`.ci/run` installs both).

mod common;

use common::{describe_diff, expected_wire, temp_dir, Fixture, Server};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where Debian's `libnginx-mod-mail` puts the module.
const MAIL_MODULE: &str = "/usr/lib/nginx/modules/ngx_mail_module.so";
/// The address the test client claims through the realip server block.
const REMOTE_IP: &str = "192.0.2.10";

// ---------------------------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------------------------

/// The nginx binary. A missing nginx or mail module fails the test, as a missing haproxy
/// does in `tests/haproxy.rs`: the README's test command needs them (`.ci/run` installs them).
fn nginx_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let binary = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file());
    let hint = "apt-get install -y --no-install-recommends nginx libnginx-mod-mail";
    let binary = binary.unwrap_or_else(|| panic!("nginx is not installed ({hint})"));
    assert!(
        Path::new(MAIL_MODULE).is_file(),
        "nginx's mail module is not installed, no {MAIL_MODULE} ({hint})"
    );
    binary
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private nginx; killed on drop.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    /// `starttls on`, `pop3_auth plain apop cram-md5`: clients connect directly.
    direct: SocketAddr,
    /// `starttls only` behind `listen … proxy_protocol`: the client sends a PROXY header naming
    /// the remote address it stands for.
    remote: SocketAddr,
}

impl Nginx {
    fn start(binary: &Path, auth_http: SocketAddr, certs: &Certs) -> Nginx {
        let dir = temp_dir("corepop-nginx-");
        let direct: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let remote: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let d = dir.path().display();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "load_module {MAIL_MODULE};\n\
                 daemon off;\n\
                 master_process off;\n\
                 pid {d}/nginx.pid;\n\
                 error_log {d}/error.log info;\n\
                 events {{ worker_connections 64; }}\n\
                 mail {{\n\
                 \x20 auth_http {auth_http}/auth;\n\
                 \x20 proxy_protocol on;\n\
                 \x20 proxy_pass_error_message on;\n\
                 \x20 ssl_certificate {cert};\n\
                 \x20 ssl_certificate_key {key};\n\
                 \x20 server {{\n\
                 \x20   listen {direct};\n\
                 \x20   protocol pop3;\n\
                 \x20   starttls on;\n\
                 \x20   pop3_auth plain apop cram-md5;\n\
                 \x20 }}\n\
                 \x20 server {{\n\
                 \x20   listen {remote} proxy_protocol;\n\
                 \x20   set_real_ip_from 127.0.0.1;\n\
                 \x20   protocol pop3;\n\
                 \x20   starttls only;\n\
                 \x20 }}\n\
                 }}\n",
                cert = certs.cert.display(),
                key = certs.key.display(),
            ),
        )
        .unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            // The error log before the configuration is read (default /var/log/nginx).
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let mut nginx = Nginx {
            child,
            dir,
            direct,
            remote,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in [direct, remote] {
            while TcpStream::connect(addr).is_err() {
                if let Ok(Some(status)) = nginx.child.try_wait() {
                    panic!("nginx exited ({status}):\n{}", nginx.error_log());
                }
                assert!(
                    Instant::now() < deadline,
                    "nginx did not listen on {addr}:\n{}",
                    nginx.error_log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        nginx
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// auth_http
// ---------------------------------------------------------------------------------------------

/// A tiny `auth_http` server (https://nginx.org/en/docs/mail/ngx_mail_auth_http_module.html):
/// every user lives on corepop's PROXY listener. For USER/PASS and AUTH PLAIN/LOGIN it only
/// routes (corepop checks the password); for APOP and CRAM-MD5 it checks the digest against
/// the cleartext password and returns it in `Auth-Pass`, which nginx then sends as PASS.
struct AuthHttp {
    addr: SocketAddr,
    /// Every request's headers, in arrival order.
    requests: Arc<Mutex<Vec<BTreeMap<String, String>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AuthHttp {
    fn start(backend: SocketAddr, users: Vec<(String, String)>) -> AuthHttp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log, stopped) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let headers = read_request(&conn);
                let reply = answer(&headers, backend, &users);
                log.lock().unwrap().push(headers);
                let _ = (&conn).write_all(reply.as_bytes());
            }
        });
        AuthHttp {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<BTreeMap<String, String>> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for AuthHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The request's headers (names lower-cased).
fn read_request(conn: &TcpStream) -> BTreeMap<String, String> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut headers = BTreeMap::new();
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { break };
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    headers
}

fn answer(
    headers: &BTreeMap<String, String>,
    backend: SocketAddr,
    users: &[(String, String)],
) -> String {
    let h = |k: &str| headers.get(k).map(String::as_str).unwrap_or("");
    let password = users
        .iter()
        .find(|(u, _)| u == h("auth-user"))
        .map(|(_, p)| p.as_str());
    let ok = |pass: Option<&str>| {
        let mut r = format!(
            "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: {}\r\nAuth-Port: {}\r\n",
            backend.ip(),
            backend.port()
        );
        if let Some(p) = pass {
            r += &format!("Auth-Pass: {p}\r\n");
        }
        r + "\r\n"
    };
    let denied = "HTTP/1.0 200 OK\r\nAuth-Status: Invalid login or password\r\n\r\n".to_string();
    match h("auth-method") {
        "apop" => match password {
            Some(p) if hex_md5(format!("{}{p}", h("auth-salt")).as_bytes()) == h("auth-pass") => {
                ok(Some(p))
            }
            _ => denied,
        },
        "cram-md5" => match password {
            Some(p) if hmac_md5_hex(p, h("auth-salt")) == h("auth-pass") => ok(Some(p)),
            _ => denied,
        },
        // plain, login: corepop checks the password nginx passes on.
        _ => ok(None),
    }
}

fn hex_md5(data: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(data))
}

fn hmac_md5_hex(key: &str, msg: &str) -> String {
    use hmac::Mac;
    let mut m = hmac::Hmac::<md5::Md5>::new_from_slice(key.as_bytes()).unwrap();
    m.update(msg.as_bytes());
    hex::encode(m.finalize().into_bytes())
}

// ---------------------------------------------------------------------------------------------
// TLS material and a POP3 client over plain TCP or TLS
// ---------------------------------------------------------------------------------------------

struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// A CA and a `localhost` certificate it signed, for nginx's STLS.
fn make_certs(dir: &Path) -> Certs {
    let ca = common::TestCa::new("nginx test CA");
    let (cert, key) = ca.leaf("localhost", &["localhost"]);
    let certs = Certs {
        ca: dir.join("ca.pem"),
        cert: dir.join("nginx.pem"),
        key: dir.join("nginx.key"),
    };
    std::fs::write(&certs.ca, ca.ca_pem()).unwrap();
    std::fs::write(&certs.cert, cert).unwrap();
    std::fs::write(&certs.key, key).unwrap();
    certs
}

fn tls_over(
    sock: TcpStream,
    ca: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = common::tls_client_config(&std::fs::read(ca).unwrap());
    let conn = rustls::ClientConnection::new(
        config,
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn
            .complete_io(&mut s.sock)
            .unwrap_or_else(|e| panic!("TLS handshake with nginx: {e}"));
    }
    s
}

/// A POP3 client over any stream, keeping replies as raw bytes.
struct Client<S: Read + Write> {
    s: S,
    buf: Vec<u8>,
    /// The greeting line, without CRLF.
    greeting: String,
}

fn tcp(addr: SocketAddr, preamble: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(common::CLIENT_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(common::CLIENT_TIMEOUT)).unwrap();
    s.write_all(preamble).unwrap();
    s
}

impl<S: Read + Write> Client<S> {
    fn new(s: S) -> Client<S> {
        let mut c = Client {
            s,
            buf: Vec::new(),
            greeting: String::new(),
        };
        c.greeting = c.line();
        c
    }

    /// One line with its CRLF; panics if the connection ends first.
    fn raw_line(&mut self) -> Vec<u8> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                return self.buf.drain(..=i).collect();
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.s.read(&mut chunk) {
                Ok(0) => panic!(
                    "connection closed (expected a line; have {:?})",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    fn line(&mut self) -> String {
        let l = self.raw_line();
        String::from_utf8_lossy(&l)
            .trim_end_matches(['\r', '\n'])
            .to_string()
    }

    fn send(&mut self, line: &str) {
        self.s.write_all(format!("{line}\r\n").as_bytes()).unwrap();
        self.s.flush().unwrap();
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(line);
        self.line()
    }

    /// The whole raw reply to `line` (status line, and for a `+OK` to a multi-line command
    /// everything up to and including the terminator), exactly as received.
    fn raw(&mut self, line: &str) -> Vec<u8> {
        self.send(line);
        let mut out = self.raw_line();
        let words: Vec<&str> = line.split(' ').collect();
        let multi = match words[0] {
            "LIST" | "UIDL" | "CAPA" => words.len() == 1,
            "RETR" | "TOP" => true,
            _ => false,
        };
        if multi && out.starts_with(b"+OK") {
            loop {
                let l = self.raw_line();
                out.extend_from_slice(&l);
                if l == b".\r\n" {
                    break;
                }
            }
        }
        out
    }

    fn login(&mut self, user: &str, pass: &str) {
        let r = self.cmd(&format!("USER {user}"));
        assert!(r.starts_with("+OK"), "USER {user}: {r}");
        let r = self.cmd(&format!("PASS {pass}"));
        assert!(r.starts_with("+OK"), "PASS for {user}: {r}");
    }

    /// Whether the peer has closed the connection (EOF or reset, nothing more to read).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        self.buf.is_empty()
            && match self.s.read(&mut b) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            }
    }

    /// The stream, for STLS; nothing may be buffered behind the `+OK`.
    fn into_inner(self) -> S {
        assert!(self.buf.is_empty(), "bytes after +OK to STLS");
        self.s
    }
}

/// Un-stuffs a raw multi-line reply into the message it carries (status line and terminator
/// removed).
fn unstuff(raw: &[u8]) -> Vec<u8> {
    let mut lines: Vec<&[u8]> = raw.split_inclusive(|&b| b == b'\n').collect();
    assert_eq!(lines.pop(), Some(&b".\r\n"[..]), "no terminator");
    let mut out = Vec::new();
    for l in &lines[1..] {
        out.extend_from_slice(l.strip_prefix(b".").unwrap_or(l));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The rig: corepop, the auth_http server, nginx
// ---------------------------------------------------------------------------------------------

struct Rig {
    fx: Fixture,
    /// (name, bytes) of alice's messages in delivery order.
    samples: Vec<(String, Vec<u8>)>,
    srv: Server,
    auth: AuthHttp,
    nginx: Nginx,
    certs: Certs,
    _certs_dir: tempfile::TempDir,
}

impl Rig {
    fn start() -> Rig {
        let binary = nginx_binary();
        let mut fx = Fixture::new();
        fx.add_user("alice", "alice-pw");
        fx.add_user("bob", "bob-pw");
        let samples = fx.deliver_samples("alice");
        for i in 1..=3u32 {
            fx.deliver(
                "bob",
                "new",
                &format!("170000000{i}.M{i}P1.h"),
                format!("Subject: bob {i}\r\n\r\nmessage {i}\r\n").as_bytes(),
            );
        }
        // No auth.insecure_plaintext_auth: plaintext passwords are accepted on the PROXY
        // listener only, because nginx enforces TLS for its clients (`starttls only`).
        fx.config(
            "[proxy]\nlisten = [\"127.0.0.1:0\"]\ntrusted_networks = [\"127.0.0.1/32\"]\n\
             plaintext_auth = true\n",
        );
        let srv = Server::start(&fx, &[]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while srv.addrs().len() < 2 {
            assert!(Instant::now() < deadline, "proxy listener not announced");
            std::thread::sleep(Duration::from_millis(20));
        }
        let backend = srv.addrs()[1];
        let auth = AuthHttp::start(backend, fx.users().to_vec());
        let certs_dir = temp_dir("corepop-nginx-certs-");
        let certs = make_certs(certs_dir.path());
        let nginx = Nginx::start(&binary, auth.addr, &certs);
        Rig {
            fx,
            samples,
            srv,
            auth,
            nginx,
            certs,
            _certs_dir: certs_dir,
        }
    }

    /// A client of nginx's direct server block (on loopback).
    fn via_nginx(&self) -> Client<TcpStream> {
        let c = Client::new(tcp(self.nginx.direct, b""));
        assert!(c.greeting.starts_with("+OK"), "nginx: {}", c.greeting);
        c
    }

    /// A client of nginx's `starttls only` server block standing for `REMOTE_IP:port`.
    fn via_nginx_remote(&self, port: u16) -> Client<TcpStream> {
        let header = format!("PROXY TCP4 {REMOTE_IP} 127.0.0.1 {port} 110\r\n");
        let c = Client::new(tcp(self.nginx.remote, header.as_bytes()));
        assert!(c.greeting.starts_with("+OK"), "nginx: {}", c.greeting);
        c
    }

    /// A client of corepop's own plaintext listener (loopback, so USER/PASS is allowed).
    fn direct(&self) -> Client<TcpStream> {
        Client::new(tcp(self.srv.addr, b""))
    }

    /// Waits (10 s at most) for a corepop log line containing all of `parts`.
    fn wait_log(&self, parts: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.srv.stderr_text();
            if log.lines().any(|l| parts.iter().all(|p| l.contains(p))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no corepop log line with {parts:?}:\n{log}\n--- nginx ---\n{}",
                self.nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Log lines containing `what`.
    fn log_count(&self, what: &str) -> usize {
        self.srv
            .stderr_text()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    }
}

/// Every maildrop-reading command's raw reply, for alice's `n` messages.
fn transcript<S: Read + Write>(c: &mut Client<S>, n: usize) -> Vec<(String, Vec<u8>)> {
    let mut cmds = vec!["STAT".to_string(), "LIST".into(), "UIDL".into()];
    for i in 1..=n {
        cmds.push(format!("LIST {i}"));
        cmds.push(format!("UIDL {i}"));
        cmds.push(format!("TOP {i} 0"));
        cmds.push(format!("TOP {i} 3"));
        cmds.push(format!("RETR {i}"));
    }
    cmds.push(format!("RETR {}", n + 1));
    cmds.into_iter()
        .map(|cmd| {
            let reply = c.raw(&cmd);
            (cmd, reply)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn answers_and_bytes_through_nginx_equal_direct_and_the_log_names_the_client() {
    let rig = Rig::start();
    let n = rig.samples.len();

    let mut c = rig.via_nginx();
    // Before login nginx answers CAPA itself (pop3_capabilities, its SASL list, STLS).
    let capa = String::from_utf8(c.raw("CAPA")).unwrap();
    for tag in ["TOP", "USER", "UIDL", "STLS"] {
        assert!(capa.contains(&format!("\r\n{tag}\r\n")), "{capa}");
    }
    let me = c.s.local_addr().unwrap();
    c.login("alice", "alice-pw");
    let through = transcript(&mut c, n);
    assert!(c.cmd("QUIT").starts_with("+OK"));

    let mut d = rig.direct();
    d.login("alice", "alice-pw");
    let direct = transcript(&mut d, n);
    assert!(d.cmd("QUIT").starts_with("+OK"));

    for ((cmd, got), (_, want)) in through.iter().zip(&direct) {
        assert!(
            got == want,
            "{cmd} through nginx differs from direct: {}",
            describe_diff(got, want)
        );
    }
    // And direct is right: every RETR is the message's wire form.
    for (i, (name, bytes)) in rig.samples.iter().enumerate() {
        let (_, raw) = &through[3 + 5 * i + 4];
        let got = unstuff(raw);
        assert!(
            got == expected_wire(bytes),
            "RETR {} ({name}): {}",
            i + 1,
            describe_diff(&got, &expected_wire(bytes))
        );
    }
    // corepop logged the client's own address and port (from the PROXY header), not nginx's
    // connection to it.
    rig.wait_log(&["login", "user=alice", &format!("peer={me}")]);
    let plain = rig.auth.requests();
    assert!(
        plain
            .iter()
            .any(|r| r.get("auth-method").map(String::as_str) == Some("plain")),
        "{plain:?}"
    );
}

#[test]
fn dele_quit_removes_the_message_and_rset_or_a_drop_removes_nothing() {
    let rig = Rig::start();
    let before = rig.fx.maildir_files("bob");
    assert_eq!(before.len(), 3);

    // DELE then RSET then QUIT: nothing removed.
    let mut c = rig.via_nginx();
    c.login("bob", "bob-pw");
    assert!(c.cmd("DELE 1").starts_with("+OK"));
    assert!(c.cmd("RSET").starts_with("+OK"));
    assert!(c.cmd("QUIT").starts_with("+OK"));
    assert_eq!(rig.fx.maildir_files("bob"), before);

    // DELE then the client goes away without QUIT: nothing removed (no UPDATE state).
    let mut c = rig.via_nginx();
    c.login("bob", "bob-pw");
    assert!(c.cmd("DELE 2").starts_with("+OK"));
    c.s.shutdown(Shutdown::Both).unwrap();
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(10);
    while rig.log_count("user=bob") < 4 {
        assert!(Instant::now() < deadline, "{}", rig.srv.stderr_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rig.fx.maildir_files("bob"), before);

    // DELE 2 then QUIT: exactly message 2 is gone when QUIT's +OK arrives. (The dropped
    // session's lock is released just after its logout line: a login racing it gets
    // [IN-USE], and nginx closes; try again on a new connection.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        let mut c = rig.via_nginx();
        assert!(c.cmd("USER bob").starts_with("+OK"));
        let r = c.cmd("PASS bob-pw");
        if r.starts_with("+OK") {
            break c;
        }
        assert!(
            r.starts_with("-ERR [IN-USE]") && Instant::now() < deadline,
            "PASS for bob: {r}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let uidl2 = c.cmd("UIDL 2");
    let uidl2 = uidl2.split(' ').nth(2).unwrap().to_string();
    assert!(c.cmd("DELE 2").starts_with("+OK"));
    assert!(c.cmd("QUIT").starts_with("+OK"));
    let after = rig.fx.maildir_files("bob");
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(!after.iter().any(|f| f.contains(&uidl2)), "{after:?}");

    let mut d = rig.direct();
    d.login("bob", "bob-pw");
    assert!(d.cmd("STAT").starts_with("+OK 2 "));
    let uidl = String::from_utf8(d.raw("UIDL")).unwrap();
    assert!(!uidl.contains(&uidl2), "{uidl}");
    d.cmd("QUIT");
}

#[test]
fn wrong_password_and_maildrop_in_use_reach_the_client_as_corepops_err() {
    let rig = Rig::start();
    let before = rig.fx.maildir_files("alice");

    let mut c = rig.via_nginx();
    assert!(c.cmd("USER alice").starts_with("+OK"));
    let r = c.cmd("PASS wrong");
    assert!(
        r.starts_with("-ERR [AUTH]"),
        "wrong password through nginx: {r}"
    );
    // nginx ends the session after a back end's -ERR to PASS; a retry is a new connection.
    assert!(c.closed(), "nginx kept the connection after the -ERR");
    rig.wait_log(&["authentication failed", "user=alice"]);
    assert_eq!(rig.fx.maildir_files("alice"), before);

    // The maildrop is locked by a session through nginx; a second one gets [IN-USE].
    let mut first = rig.via_nginx();
    first.login("alice", "alice-pw");
    let mut second = rig.via_nginx();
    assert!(second.cmd("USER alice").starts_with("+OK"));
    let r = second.cmd("PASS alice-pw");
    assert!(
        r.starts_with("-ERR [IN-USE]"),
        "second session through nginx: {r}"
    );
    assert!(first.cmd("DELE 1").starts_with("+OK"));
    assert!(first.cmd("QUIT").starts_with("+OK"));
    assert_eq!(rig.fx.maildir_files("alice").len(), before.len() - 1);
}

#[test]
fn apop_auth_plain_and_cram_md5_at_nginx_log_in_to_corepop() {
    use base64::Engine;
    let rig = Rig::start();
    let b64 = base64::engine::general_purpose::STANDARD;
    let stat_direct = {
        let mut d = rig.direct();
        d.login("alice", "alice-pw");
        let s = d.cmd("STAT");
        d.cmd("QUIT");
        s
    };

    // APOP: nginx's greeting carries the timestamp (pop3_auth apop).
    let mut c = rig.via_nginx();
    let ts = &c.greeting[c.greeting.find('<').expect("APOP timestamp")..];
    let ts = &ts[..=ts.find('>').unwrap()];
    let digest = hex_md5(format!("{ts}alice-pw").as_bytes());
    let r = c.cmd(&format!("APOP alice {digest}"));
    assert!(r.starts_with("+OK"), "APOP through nginx: {r}");
    assert_eq!(c.cmd("STAT"), stat_direct);
    assert!(c.cmd("QUIT").starts_with("+OK"));

    // AUTH PLAIN with an initial response.
    let mut c = rig.via_nginx();
    let r = c.cmd(&format!("AUTH PLAIN {}", b64.encode("\0alice\0alice-pw")));
    assert!(r.starts_with("+OK"), "AUTH PLAIN through nginx: {r}");
    assert_eq!(c.cmd("STAT"), stat_direct);
    assert!(c.cmd("QUIT").starts_with("+OK"));

    // AUTH CRAM-MD5.
    let mut c = rig.via_nginx();
    let r = c.cmd("AUTH CRAM-MD5");
    let challenge = r.strip_prefix("+ ").unwrap_or_else(|| panic!("{r}"));
    let challenge = String::from_utf8(b64.decode(challenge).unwrap()).unwrap();
    let response = format!("alice {}", hmac_md5_hex("alice-pw", &challenge));
    let r = c.cmd(&b64.encode(response));
    assert!(r.starts_with("+OK"), "AUTH CRAM-MD5 through nginx: {r}");
    assert_eq!(c.cmd("STAT"), stat_direct);
    assert!(c.cmd("QUIT").starts_with("+OK"));

    let methods: Vec<String> = rig
        .auth
        .requests()
        .iter()
        .filter_map(|r| r.get("auth-method").cloned())
        .collect();
    assert_eq!(methods, ["apop", "plain", "cram-md5"]);
}

#[test]
fn stls_at_nginx_then_user_pass_from_a_remote_client() {
    let rig = Rig::start();
    let mut c = rig.via_nginx_remote(40110);
    // `starttls only`: nginx itself refuses a password before TLS.
    let r = c.cmd("USER alice");
    assert!(
        r.starts_with("-ERR"),
        "USER before STLS at a starttls-only nginx: {r}"
    );
    let r = c.cmd("STLS");
    assert!(r.starts_with("+OK"), "STLS: {r}");
    let tls = tls_over(c.into_inner(), &rig.certs.ca);
    let mut c = Client {
        s: tls,
        buf: Vec::new(),
        greeting: String::new(),
    };
    // nginx sends USER/PASS to corepop in plaintext for 192.0.2.10, which is not loopback:
    // accepted because proxy.plaintext_auth says nginx enforced TLS.
    c.login("alice", "alice-pw");
    for (i, (name, bytes)) in rig.samples.iter().enumerate() {
        let raw = c.raw(&format!("RETR {}", i + 1));
        let got = unstuff(&raw);
        assert!(
            got == expected_wire(bytes),
            "RETR {} ({name}) over TLS at nginx: {}",
            i + 1,
            describe_diff(&got, &expected_wire(bytes))
        );
    }
    assert!(c.cmd("QUIT").starts_with("+OK"));
    rig.wait_log(&["login", "user=alice", &format!("peer={REMOTE_IP}:40110")]);
    let req = rig.auth.requests();
    assert_eq!(
        req.last()
            .and_then(|r| r.get("client-ip"))
            .map(String::as_str),
        Some(REMOTE_IP),
        "{req:?}"
    );
}
