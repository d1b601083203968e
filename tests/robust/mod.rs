//! Helpers shared by the robustness tests (`kill9`, `faults`, `floods`, `security`): a POP3
//! client that returns errors instead of panicking (the server may be killed under it), and
//! reading a process's memory from `/proc`.

#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A blocking POP3 client whose every call returns `io::Result`.
pub struct RawClient {
    pub greeting: String,
    r: BufReader<TcpStream>,
    w: TcpStream,
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")
}

impl RawClient {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<RawClient> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        let w = s.try_clone()?;
        let mut c = RawClient {
            greeting: String::new(),
            r: BufReader::with_capacity(16 * 1024, s),
            w,
        };
        c.greeting = c.line()?;
        Ok(c)
    }

    pub fn stream(&self) -> &TcpStream {
        &self.w
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.w.write_all(bytes)
    }

    /// One line without its CRLF.
    pub fn line(&mut self) -> io::Result<String> {
        let mut l = Vec::new();
        if self.r.read_until(b'\n', &mut l)? == 0 || !l.ends_with(b"\n") {
            return Err(eof());
        }
        l.truncate(l.len() - 1);
        if l.ends_with(b"\r") {
            l.pop();
        }
        Ok(String::from_utf8_lossy(&l).into_owned())
    }

    pub fn cmd(&mut self, line: &str) -> io::Result<String> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.line()
    }

    /// The body of a multi-line reply (un-stuffed, CRLFs kept), after its `+OK` line.
    pub fn body(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let mut l = Vec::new();
            if self.r.read_until(b'\n', &mut l)? == 0 || !l.ends_with(b"\n") {
                return Err(eof());
            }
            if l == b".\r\n" {
                return Ok(out);
            }
            out.extend_from_slice(l.strip_prefix(b".").unwrap_or(&l));
        }
    }

    /// A multi-line command: the status line and, after `+OK`, the body.
    pub fn multi(&mut self, line: &str) -> io::Result<(String, Vec<u8>)> {
        let status = self.cmd(line)?;
        if status.starts_with("+OK") {
            let body = self.body()?;
            Ok((status, body))
        } else {
            Ok((status, Vec::new()))
        }
    }

    pub fn login(&mut self, user: &str, pass: &str) -> io::Result<String> {
        let r = self.cmd(&format!("USER {user}"))?;
        if !r.starts_with("+OK") {
            return Ok(r);
        }
        self.cmd(&format!("PASS {pass}"))
    }

    /// Reads until EOF (or error); returns what arrived.
    pub fn rest(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = self.r.read_to_end(&mut v);
        v
    }
}

/// `(number, text)` pairs of a LIST or UIDL body.
pub fn listing(body: &[u8]) -> Vec<(u32, String)> {
    String::from_utf8_lossy(body)
        .lines()
        .map(|l| {
            let (n, v) = l.split_once(' ').expect("listing line");
            (n.parse().expect("message number"), v.to_string())
        })
        .collect()
}

/// A field of `/proc/<pid>/status` in KiB (e.g. `VmRSS`).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Number of open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// An environment variable parsed as a number, or `default`.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
