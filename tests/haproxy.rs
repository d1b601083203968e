//! A real HAProxy (Debian's `haproxy`) in front of corepop, speaking PROXY v1 to one backend
//! and v2 to another: the client address corepop logs is the client's, not HAProxy's. And
//! HAProxy terminating TLS with `send-proxy-v2-ssl`: its PP2_TYPE_SSL TLV lets a client that
//! used TLS log in with USER/PASS, while one that did not stays refused.

mod common;

use common::{temp_dir, Fixture, Pop3Client, Server};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on `ip` now (HAProxy binds with SO_REUSEPORT: two tests' instances handed
/// the same port would share it, so tests running in parallel use different addresses).
fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "haproxy did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// corepop with alice's one message and a PROXY listener trusting 127.0.0.1; returns the
/// fixture (keep it alive), the server and the PROXY listener's address.
fn backend() -> (Fixture, Server, std::net::SocketAddr) {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    fx.deliver(
        "alice",
        "new",
        "1700000001.M1P1.h",
        b"Subject: x\r\n\r\nhi\r\n",
    );
    fx.config("[proxy]\nlisten = [\"127.0.0.1:0\"]\ntrusted_networks = [\"127.0.0.1/32\"]\n");
    let srv = Server::start(&fx, &[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while srv.addrs().len() < 2 {
        assert!(Instant::now() < deadline, "proxy listener not announced");
        std::thread::sleep(Duration::from_millis(20));
    }
    let backend = srv.addrs()[1];
    (fx, srv, backend)
}

#[test]
fn haproxy_in_front_passes_the_client_address_v1_and_v2() {
    let (_fx, srv, backend) = backend();

    let (p1, p2) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    let dir = temp_dir("corepop-haproxy-");
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend pop3_v1\n  bind 127.0.0.1:{p1}\n  default_backend corepop_v1\n\
             frontend pop3_v2\n  bind 127.0.0.1:{p2}\n  default_backend corepop_v2\n\
             backend corepop_v1\n  server c1 {backend} send-proxy\n\
             backend corepop_v2\n  server c2 {backend} send-proxy-v2\n"
        ),
    )
    .unwrap();
    let _haproxy = start_haproxy(&cfg);

    for port in [p1, p2] {
        let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_listening(front);
        let mut c = Pop3Client::connect(front);
        assert!(c.greeting.starts_with("+OK"), "{}", c.greeting);
        let me = c.stream().local_addr().unwrap();
        c.login("alice", "pw");
        let (ok, body) = c.multi("RETR 1");
        assert!(ok.starts_with("+OK"));
        assert_eq!(body, b"Subject: x\r\n\r\nhi\r\n");
        assert!(c.cmd("QUIT").starts_with("+OK"));
        // corepop saw the client's own address and port, carried by the PROXY header.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = srv.stderr_text();
            if log
                .lines()
                .any(|l| l.contains("logout") && l.contains(&format!("peer={me}")))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no logout line with peer={me}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn start_haproxy(cfg: &Path) -> Haproxy {
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy not installed (apt-get install haproxy)");
    Haproxy(child)
}

/// Writes a CA (returned as PEM) and, to `pem`, a `localhost` certificate it signed followed
/// by its key, as HAProxy's `crt` wants them.
fn make_certs(pem: &Path) -> String {
    let ca = common::TestCa::new("haproxy test CA");
    let (cert, key) = ca.leaf("localhost", &["localhost"]);
    std::fs::write(pem, format!("{cert}{key}")).unwrap();
    ca.ca_pem()
}

/// A TLS client of `addr` trusting `ca_pem`.
fn tls_connect(
    addr: SocketAddr,
    ca_pem: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let config = common::tls_client_config(ca_pem.as_bytes());
    let conn = rustls::ClientConnection::new(
        config,
        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(common::CLIENT_TIMEOUT)).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// POP3 lines over any stream.
struct Lines<S: Read + Write>(BufReader<S>);

impl<S: Read + Write> Lines<S> {
    fn line(&mut self) -> String {
        let mut l = String::new();
        assert!(self.0.read_line(&mut l).unwrap() > 0, "connection closed");
        l.trim_end().to_string()
    }
    fn cmd(&mut self, c: &str) -> String {
        let s = self.0.get_mut();
        s.write_all(format!("{c}\r\n").as_bytes()).unwrap();
        s.flush().unwrap();
        self.line()
    }
    fn capa(&mut self) -> Vec<String> {
        assert!(self.cmd("CAPA").starts_with("+OK"));
        std::iter::from_fn(|| Some(self.line()))
            .take_while(|l| l != ".")
            .collect()
    }
}

#[test]
fn haproxy_terminating_tls_with_send_proxy_v2_ssl_lets_tls_clients_log_in() {
    // No proxy.plaintext_auth: only the header's PP2_CLIENT_SSL can allow USER/PASS.
    let (_fx, srv, backend) = backend();

    let dir = temp_dir("corepop-haproxy-ssl-");
    let pem = dir.path().join("pop3.pem");
    let ca = make_certs(&pem);
    let (tls_port, plain_port) = (free_port("127.0.0.2"), free_port("127.0.0.2"));
    let cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             frontend pop3s\n  bind 127.0.0.2:{tls_port} ssl crt {pem}\n{remote}  default_backend corepop\n\
             frontend pop3\n  bind 127.0.0.2:{plain_port}\n{remote}  default_backend corepop\n\
             backend corepop\n  server c1 {backend} send-proxy-v2-ssl\n",
            pem = pem.display(),
            // The client as a remote one (a loopback client may always send its password).
            remote = "  tcp-request connection set-src ipv4(192.0.2.7)\n",
        ),
    )
    .unwrap();
    let _haproxy = start_haproxy(&cfg);

    let front: SocketAddr = format!("127.0.0.2:{tls_port}").parse().unwrap();
    wait_listening(front);
    let tls = tls_connect(front, &ca);
    let me = format!("192.0.2.7:{}", tls.sock.local_addr().unwrap().port());
    let mut c = Lines(BufReader::new(tls));
    let greeting = c.line();
    assert!(greeting.starts_with("+OK"), "{greeting}");
    let capa = c.capa();
    assert!(capa.iter().any(|l| l == "USER"), "{capa:?}");
    assert!(!capa.iter().any(|l| l == "STLS"), "{capa:?}");
    let r = c.cmd("USER alice");
    assert!(r.starts_with("+OK"), "USER over TLS to haproxy: {r}");
    let r = c.cmd("PASS pw");
    assert!(r.starts_with("+OK"), "PASS over TLS to haproxy: {r}");
    assert!(c.cmd("STAT").starts_with("+OK 1 "));
    assert!(c.cmd("QUIT").starts_with("+OK"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !srv
        .stderr_text()
        .lines()
        .any(|l| l.contains("logout") && l.contains(&format!("peer={me}")))
    {
        assert!(
            Instant::now() < deadline,
            "no logout line with peer={me}:\n{}",
            srv.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The same backend for a plaintext client: HAProxy sends the SSL TLV without
    // PP2_CLIENT_SSL, and the password is refused as on any plaintext connection.
    let front: SocketAddr = format!("127.0.0.2:{plain_port}").parse().unwrap();
    wait_listening(front);
    let mut c = Pop3Client::connect(front);
    assert!(c.greeting.starts_with("+OK"), "{}", c.greeting);
    let r = c.cmd("USER alice");
    assert!(r.contains("Plaintext authentication disallowed"), "{r}");
    assert!(c.cmd("QUIT").starts_with("+OK"));
}
