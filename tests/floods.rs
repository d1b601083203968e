//! Floods and misbehaving clients against the real binary (loopback only). Each test holds a
//! flood and checks that the server (1) stays within a memory bound, (2) still serves a normal
//! client a whole session, and (3) cuts the misbehaving client off by a limit or a timeout
//! where one applies. No timing assertions: timeouts here are generous upper bounds for
//! "was cut off at all", not performance checks.
//!
//! Sizes (defaults for CI; raise them to run bigger floods):
//! - `FLOOD_CONNECTIONS` (default 5000, at most ~15000: the test process and the server each
//!   have a 20,000-descriptor limit);
//! - `FLOOD_PIPELINE` (default 100000 commands).

mod common;
mod robust;

use common::{expected_wire, Fixture, Server};
use robust::{env_num, open_fds, proc_status_kib, RawClient};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn setup(extra: &str) -> (Fixture, Vec<u8>) {
    let mut fx = Fixture::new();
    fx.add_user("alice", "pw");
    fx.add_user("bob", "pw");
    // 1 MiB with LF endings and dot lines: not wire form, so RETR streams it through the
    // 64 KiB transformation buffer.
    let mut big = b"Subject: big\n\n".to_vec();
    while big.len() < 1 << 20 {
        big.extend_from_slice(b".a line that needs stuffing and a CRLF\n");
    }
    fx.deliver("alice", "new", "1700000000.M1P1.flood", &big);
    fx.deliver(
        "bob",
        "new",
        "1700000000.M1P1.flood",
        b"Subject: hi\n\nsmall\n",
    );
    fx.config(extra);
    (fx, big)
}

/// A normal client does a whole session while a flood is held.
fn normal_session(addr: SocketAddr) {
    let mut c = RawClient::connect(addr, T).expect("normal client connects");
    assert!(c.greeting.starts_with("+OK"), "{}", c.greeting);
    let r = c.login("bob", "pw").expect("login");
    assert!(r.starts_with("+OK"), "{r}");
    let (s, body) = c.multi("RETR 1").expect("RETR");
    assert!(s.starts_with("+OK"), "{s}");
    assert_eq!(body, expected_wire(b"Subject: hi\n\nsmall\n"));
    assert!(c.cmd("QUIT").expect("QUIT").starts_with("+OK"));
}

fn rss_kib(server: &Server) -> u64 {
    proc_status_kib(server.pid().unwrap(), "VmRSS").unwrap()
}

/// Waits until the peer closes `s` (EOF or reset); false if it is still open after `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while Instant::now() < end {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn thousands_of_connections_at_once() {
    let n: usize = env_num("FLOOD_CONNECTIONS", 5000);
    let (fx, _) = setup("");
    let server = Server::start(&fx, &[]);
    let pid = server.pid().unwrap();
    let before = rss_kib(&server);
    let addr = server.addr;
    // Four threads open the connections as fast as they can, each reading its greeting.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                for _ in (t..n).step_by(4) {
                    let mut s = TcpStream::connect_timeout(&addr, T).expect("connect");
                    s.set_read_timeout(Some(T)).unwrap();
                    let mut g = [0u8; 64];
                    let k = s.read(&mut g).expect("greeting");
                    assert!(g[..k].starts_with(b"+OK"), "greeting of a flood connection");
                    v.push(s);
                }
                v
            })
        })
        .collect();
    let held: Vec<TcpStream> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(held.len(), n);
    assert!(open_fds(pid) >= n, "server holds the connections");
    // Held: the server still serves a normal session.
    normal_session(addr);
    let per_conn = (rss_kib(&server).saturating_sub(before)) * 1024 / n as u64;
    eprintln!("flood: {n} connections held; server RSS grew {per_conn} bytes per connection");
    assert!(
        per_conn < 16 * 1024,
        "{per_conn} bytes of server memory per idle connection"
    );
    drop(held);
    normal_session(addr);
}

#[test]
fn silent_and_slowloris_clients_before_login() {
    let (fx, _) = setup("[limits]\nlogin_timeout_secs = 1\n");
    let server = Server::start(&fx, &[]);
    // Silent: cut off by the login timeout.
    let mut silent = TcpStream::connect(server.addr).unwrap();
    // Slowloris, one byte per 300 ms of a never-ending line: each byte restarts the read
    // timeout, so it is not cut off here (over-long lines count as bad commands, so it is
    // after `limits.max_bad_commands` × 255 bytes); what matters is that it costs the server
    // one line of buffer while others are served. (A trickle of valid commands is never cut
    // off before login: see the ignored test below.)
    let mut slow = TcpStream::connect(server.addr).unwrap();
    normal_session(server.addr);
    assert!(
        closed_within(&mut silent, Duration::from_secs(10)),
        "a silent client was not cut off by the login timeout"
    );
    slow.set_nonblocking(true).unwrap();
    let mut drained = Vec::new();
    let end = Instant::now() + Duration::from_secs(4);
    while Instant::now() < end {
        let _ = slow.write(b"x");
        let mut b = [0u8; 512];
        if let Ok(k) = slow.read(&mut b) {
            drained.extend_from_slice(&b[..k]);
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Still connected after 4 s of trickling (each byte resets the timeout) — the server
    // holds only the bytes of one line, and serves others meanwhile.
    normal_session(server.addr);
    assert!(drained.starts_with(b"+OK"));
}

#[test]
fn slowloris_trickling_valid_commands_is_cut_off_before_login() {
    let (fx, _) = setup("[limits]\nlogin_timeout_secs = 1\nlogin_deadline_secs = 3\n");
    let server = Server::start(&fx, &[]);
    let mut c = TcpStream::connect(server.addr).unwrap();
    c.set_nonblocking(true).unwrap();
    let end = Instant::now() + Duration::from_secs(20);
    let mut closed = false;
    'outer: while Instant::now() < end {
        for &b in b"CAPA\r\n" {
            if c.write(&[b]).is_err() {
                closed = true;
                break 'outer;
            }
            std::thread::sleep(Duration::from_millis(150));
            let mut buf = [0u8; 1024];
            if let Ok(0) = c.read(&mut buf) {
                closed = true;
                break 'outer;
            }
        }
    }
    assert!(
        closed,
        "a client trickling CAPA was never cut off before login"
    );
}

#[test]
fn client_that_never_reads_does_not_grow_server_memory() {
    let (fx, big) = setup("");
    let server = Server::start(&fx, &[]);
    let mut c = RawClient::connect(server.addr, T).unwrap();
    assert!(c.login("alice", "pw").unwrap().starts_with("+OK"));
    let before = rss_kib(&server);
    // Ask for the 1 MiB message a thousand times (1 GiB of replies) and never read.
    let s = c.stream().try_clone().unwrap();
    s.set_nonblocking(true).unwrap();
    let mut sent = 0usize;
    let req = b"RETR 1\r\n".repeat(1000);
    let end = Instant::now() + Duration::from_secs(3);
    let mut w = &s;
    while Instant::now() < end && sent < req.len() {
        match w.write(&req[sent..]) {
            Ok(k) => sent += k,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss_kib(&server).saturating_sub(before);
    eprintln!("never-reading client: {sent} octets of commands accepted, server RSS +{grown} KiB");
    // The server is blocked writing to this client; it must not buffer the replies.
    assert!(
        grown < 16 * 1024,
        "server grew {grown} KiB for a client that never reads"
    );
    normal_session(server.addr);
    // Reading now gets the replies, in order and intact.
    s.set_nonblocking(false).unwrap();
    let status = c.line().unwrap();
    assert_eq!(status, format!("+OK {} octets", common::wire_size(&big)));
    assert_eq!(c.body().unwrap(), expected_wire(&big));
}

#[test]
fn one_megabyte_lines_are_refused_without_buffering() {
    let (fx, _) = setup("");
    let server = Server::start(&fx, &[]);
    let mut line = vec![b'A'; 1 << 20];
    line.extend_from_slice(b"\r\nCAPA\r\n");
    let one_line = |c: &mut RawClient| {
        c.send(&line).unwrap();
        assert_eq!(c.line().unwrap(), "-ERR Line too long.");
        assert!(c.line().unwrap().starts_with("+OK"));
        c.body().unwrap();
    };
    // Before login, then after login; the session goes on. The first round warms the
    // server up (blocking-pool threads, allocator arenas); later rounds must not grow it.
    let mut before = 0;
    for round in 0..6 {
        if round == 1 {
            before = rss_kib(&server);
        }
        let mut c = RawClient::connect(server.addr, T).unwrap();
        one_line(&mut c);
        assert!(c.login("bob", "pw").unwrap().starts_with("+OK"));
        one_line(&mut c);
        assert!(c.cmd("STAT").unwrap().starts_with("+OK 1 "));
        assert!(c.cmd("QUIT").unwrap().starts_with("+OK"));
    }
    let grown = rss_kib(&server).saturating_sub(before);
    assert!(
        grown < 2 * 1024,
        "server grew {grown} KiB for ten 1 MB lines"
    );
}

#[test]
fn pipeline_of_100000_commands() {
    let n: usize = env_num("FLOOD_PIPELINE", 100_000);
    let (fx, _) = setup("");
    let server = Server::start(&fx, &[]);
    let mut c = RawClient::connect(server.addr, T).unwrap();
    assert!(c.login("bob", "pw").unwrap().starts_with("+OK"));
    let w = c.stream().try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut w = w;
        let mut batch = Vec::new();
        for i in 0..n {
            batch.extend_from_slice(match i % 3 {
                0 => b"NOOP\r\n".as_slice(),
                1 => b"STAT\r\n",
                _ => b"LIST 1\r\n",
            });
            if batch.len() > 64 * 1024 {
                w.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        w.write_all(&batch).unwrap();
    });
    for i in 0..n {
        let r = c.line().unwrap();
        let want = match i % 3 {
            0 => "+OK",
            1 => "+OK 1 ",
            _ => "+OK 1 ",
        };
        assert!(r.starts_with(want), "reply {i}: {r}");
    }
    writer.join().unwrap();
    assert!(c.cmd("QUIT").unwrap().starts_with("+OK"));
    eprintln!("pipeline: {n} commands answered in order");
}

#[test]
fn stalled_tls_handshakes_are_cut_off() {
    let mut fx = Fixture::new();
    fx.add_user("bob", "pw");
    fx.deliver(
        "bob",
        "new",
        "1700000000.M1P1.flood",
        b"Subject: hi\n\nsmall\n",
    );
    let (cert, key) = corepop::tls::self_signed_pem(&["localhost"]).unwrap();
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    std::fs::write(fx.path().join("cert.pem"), cert).unwrap();
    std::fs::write(fx.path().join("key.pem"), key).unwrap();
    fx.config(&format!(
        "[tls]\ncert = {}\nkey = {}\nhandshake_timeout_secs = 1\n",
        q(&fx.path().join("cert.pem")),
        q(&fx.path().join("key.pem"))
    ));
    let server = Server::start(&fx, &["--listen-tls", "127.0.0.1:0"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let tls_addr: SocketAddr = loop {
        if let Some(l) = server.stdout_text().lines().find(|l| l.ends_with(" (tls)")) {
            break l
                .trim_start_matches("corepop: listening on ")
                .trim_end_matches(" (tls)")
                .parse()
                .unwrap();
        }
        assert!(Instant::now() < deadline, "no TLS listener");
        std::thread::sleep(Duration::from_millis(10));
    };
    // 200 stalled handshakes on the implicit-TLS port (silent, or a partial ClientHello) and
    // 200 on STLS (the +OK read, then silence).
    let mut stalled = Vec::new();
    for i in 0..200 {
        let mut s = TcpStream::connect(tls_addr).unwrap();
        if i % 2 == 0 {
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
        }
        stalled.push(s);
    }
    for _ in 0..200 {
        let mut c = RawClient::connect(server.addr, T).unwrap();
        assert!(c.cmd("STLS").unwrap().starts_with("+OK"));
        stalled.push(c.stream().try_clone().unwrap());
    }
    normal_session(server.addr);
    for (i, s) in stalled.iter_mut().enumerate() {
        assert!(
            closed_within(s, Duration::from_secs(20)),
            "stalled handshake {i} was not cut off"
        );
    }
    normal_session(server.addr);
}

/// The admin address from `corepop: metrics on http://ADDR/metrics`.
fn metrics_addr(server: &Server) -> SocketAddr {
    let end = Instant::now() + T;
    loop {
        if let Some(a) = server
            .stdout_text()
            .lines()
            .find_map(|l| l.strip_prefix("corepop: metrics on http://"))
            .and_then(|r| r.strip_suffix("/metrics"))
            .and_then(|a| a.parse().ok())
        {
            return a;
        }
        assert!(Instant::now() < end, "metrics address not announced");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A scrape, with `T` as the upper bound for the whole answer.
fn scrape(admin: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(admin)?;
    s.set_read_timeout(Some(T))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

#[test]
fn slow_metrics_clients_do_not_stop_scrapes() {
    let (fx, _) = setup("[admin]\nlisten = \"127.0.0.1:0\"\n");
    let server = Server::start(&fx, &[]);
    let admin = metrics_addr(&server);
    // Clients that connect first: a slowloris sending its request head one byte every 200 ms
    // (each byte well within any per-read timeout), and some that never send anything.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut slow = TcpStream::connect(admin).unwrap();
    let trickler = {
        let stop = stop.clone();
        let mut slow = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            for b in b"GET /metrics HTTP/1.1\r\nX-Slow: "
                .iter()
                .chain([b'a'; 4096].iter())
            {
                if stop.load(std::sync::atomic::Ordering::Relaxed) || slow.write_all(&[*b]).is_err()
                {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(admin).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500));
    // Prometheus still gets its answer…
    let text = scrape(admin).expect("scrape while slow clients are connected");
    assert!(text.starts_with("HTTP/1.0 200 OK\r\n"), "{text}");
    assert!(
        text.ends_with("# EOF\n") || text.ends_with("# EOF"),
        "{text}"
    );
    // …and the slowloris is cut off by a deadline for the whole request, not kept for as
    // long as it trickles.
    let cut = closed_within(&mut slow, Duration::from_secs(60));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    trickler.join().unwrap();
    assert!(cut, "a client trickling its request head was never cut off");
    drop(silent);
    normal_session(server.addr);
}
