//! A real HAProxy (Debian's `haproxy`) in front of corepop, speaking PROXY v1 to one backend
//! and v2 to another: the client address corepop logs is the client's, not HAProxy's.

mod common;

use common::{temp_dir, Fixture, Pop3Client, Server};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Haproxy(Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
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

#[test]
fn haproxy_in_front_passes_the_client_address_v1_and_v2() {
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

    let (p1, p2) = (free_port(), free_port());
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
    let child = Command::new("haproxy")
        .args(["-db", "-f"])
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("haproxy not installed (apt-get install haproxy)");
    let _haproxy = Haproxy(child);

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
