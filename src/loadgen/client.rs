//! A minimal blocking POP3 client for load generation.
//!
//! One [`Conn`] owns a [`Stream`] (a `TcpStream`, or TLS over one) and a read buffer.
//! Multi-line bodies (RETR/TOP) are scanned in place: the terminating `.CRLF` is found and the
//! un-stuffed length counted without copying the message anywhere. Under TLS the decrypted
//! octets land in the same buffer and go through the same scan.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::tls::{self, TlsClient, TlsMode, TlsStream};

/// What went wrong, for the per-kind error counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// TCP connect failed, or the server closed / refused before or in its greeting.
    Connect,
    /// USER or PASS refused (other than `[IN-USE]` or `[SYS/...]`).
    Auth,
    /// PASS refused with `[IN-USE]` (maildrop locked by another session).
    InUse,
    /// An unexpected reply: `-ERR` to a transaction command (other than `[SYS/...]`),
    /// malformed lines, wrong counts.
    Protocol,
    /// A RETR body whose un-stuffed length differs from the `+OK n octets` / LIST size.
    SizeMismatch,
    /// A read, write or connect timed out.
    Timeout,
    /// The connection broke (reset, unexpected EOF) after the greeting.
    Io,
    /// `-ERR [SYS/TEMP]` or `[SYS/PERM]`: the server reports a failure of its own.
    Sys,
    /// The TLS handshake failed (certificate not verified, no common parameters, the server
    /// closed during it), or STLS was refused.
    Tls,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Connect,
        ErrorKind::Auth,
        ErrorKind::InUse,
        ErrorKind::Protocol,
        ErrorKind::SizeMismatch,
        ErrorKind::Timeout,
        ErrorKind::Io,
        ErrorKind::Sys,
        ErrorKind::Tls,
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Auth => "auth",
            ErrorKind::InUse => "in-use",
            ErrorKind::Protocol => "protocol",
            ErrorKind::SizeMismatch => "size-mismatch",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Io => "io",
            ErrorKind::Sys => "sys",
            ErrorKind::Tls => "tls",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_name(s: &str) -> Option<ErrorKind> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// A failed session step.
#[derive(Debug)]
pub struct SessionError {
    pub kind: ErrorKind,
    pub detail: String,
}

impl SessionError {
    pub fn new(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

pub type Result<T> = std::result::Result<T, SessionError>;

fn io_error(e: &io::Error, what: &str, otherwise: ErrorKind) -> SessionError {
    let kind = match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ErrorKind::Timeout,
        _ => otherwise,
    };
    SessionError::new(kind, format!("{what}: {e}"))
}

/// Shows a server line in an error message (lossy, truncated).
pub fn show(line: &[u8]) -> String {
    let s = String::from_utf8_lossy(&line[..line.len().min(200)]);
    s.into_owned()
}

/// The first decimal number in `s` (e.g. the `n` of `+OK n octets`).
pub fn first_number(s: &[u8]) -> Option<u64> {
    let start = s.iter().position(u8::is_ascii_digit)?;
    let digits = &s[start..];
    let end = digits
        .iter()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(digits.len());
    std::str::from_utf8(&digits[..end]).ok()?.parse().ok()
}

/// The kind for a `-ERR` line: `[SYS/...]` replies are the server's own failures.
fn err_kind(line: &[u8], otherwise: ErrorKind) -> ErrorKind {
    if memchr::memmem::find(line, b"[SYS/").is_some() {
        ErrorKind::Sys
    } else if memchr::memmem::find(line, b"[IN-USE]").is_some() {
        ErrorKind::InUse
    } else {
        otherwise
    }
}

/// The transport under a [`Conn`].
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }

    #[inline]
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(data),
            Stream::Tls(s) => {
                s.write_all(data)?;
                // Surfaces a failed socket write now rather than at the next read.
                s.flush()
            }
        }
    }

    /// The TCP socket (under TLS: the one TLS runs over).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock.tcp,
        }
    }

    /// Tells whether the server has closed or written to an idle connection. True when the
    /// connection is still open and the server has sent nothing. Under TLS, handshake
    /// messages that arrive late (session tickets) do not count as writing.
    pub fn is_idle(&mut self) -> bool {
        if self.tcp().set_nonblocking(true).is_err() {
            return false;
        }
        let idle = match self {
            Stream::Plain(s) => {
                let mut b = [0u8; 1];
                matches!(s.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Stream::Tls(s) => tls_is_idle(s),
        };
        let _ = self.tcp().set_nonblocking(false);
        idle
    }

    /// Sends QUIT without waiting (the socket is switched to non-blocking; a write that
    /// would block is dropped).
    pub fn send_quit_nonblocking(&mut self) {
        let _ = self.tcp().set_nonblocking(true);
        match self {
            Stream::Plain(s) => {
                let _ = s.write_all(b"QUIT\r\n");
            }
            Stream::Tls(s) => {
                if s.conn.writer().write_all(b"QUIT\r\n").is_ok() {
                    let _ = s.conn.write_tls(&mut s.sock);
                }
            }
        }
    }
}

/// [`Stream::is_idle`] for TLS, on a non-blocking socket: processes whatever has arrived.
fn tls_is_idle(s: &mut TlsStream) -> bool {
    loop {
        if !s.conn.wants_read() {
            // Plaintext not delivered yet, or the server's close_notify.
            return false;
        }
        match s.conn.read_tls(&mut s.sock) {
            Ok(0) => return false,
            Ok(_) => match s.conn.process_new_packets() {
                Ok(st) if st.plaintext_bytes_to_read() > 0 || st.peer_has_closed() => return false,
                Ok(_) => continue,
                Err(_) => return false,
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

/// A connection's receive buffer. A worker runs one session after another: when a
/// connection ends its buffer goes to a per-thread spare that the thread's next connection
/// takes, so a session does not pay for a fresh 128 KiB allocation (page faults and zeroing
/// were ~5 % of the load generator's CPU in a full-download run).
struct RecvBuf(Box<[u8]>);

thread_local! {
    static SPARE: std::cell::Cell<Option<Box<[u8]>>> = const { std::cell::Cell::new(None) };
}

impl RecvBuf {
    fn new(size: usize) -> RecvBuf {
        match SPARE.take() {
            Some(b) if b.len() == size => RecvBuf(b),
            _ => RecvBuf(vec![0; size].into_boxed_slice()),
        }
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        SPARE.set(Some(std::mem::take(&mut self.0)));
    }
}

impl std::ops::Deref for RecvBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for RecvBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

/// One POP3 connection.
pub struct Conn {
    stream: Stream,
    buf: RecvBuf,
    pos: usize,
    end: usize,
    wbuf: Vec<u8>,
}

impl Conn {
    /// Connects with `timeout` for the connect and every later read and write.
    pub fn connect(addr: SocketAddr, timeout: Duration, buf_size: usize) -> Result<Conn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| io_error(&e, "connect", ErrorKind::Connect))?;
        let setup = |s: &TcpStream| -> io::Result<()> {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))
        };
        setup(&stream).map_err(|e| io_error(&e, "socket setup", ErrorKind::Connect))?;
        Ok(Conn {
            stream: Stream::Plain(stream),
            buf: RecvBuf::new(buf_size.max(1024)),
            pos: 0,
            end: 0,
            wbuf: Vec::with_capacity(128),
        })
    }

    /// Connects and reads the greeting, with TLS when `tls` is given: implicit TLS
    /// handshakes before the greeting, STARTTLS sends STLS after it and handshakes on `+OK`.
    pub fn open(
        addr: SocketAddr,
        timeout: Duration,
        buf_size: usize,
        tls: Option<&TlsClient>,
    ) -> Result<Conn> {
        let mut c = Conn::connect(addr, timeout, buf_size)?;
        match tls {
            None => c.greeting()?,
            Some(t) if t.mode == TlsMode::Implicit => {
                c = c.start_tls(t)?;
                c.greeting()?;
            }
            Some(t) => {
                c.greeting()?;
                c.command(b"STLS", &[])?;
                if let Err(line) = c.status()? {
                    return Err(SessionError::new(
                        ErrorKind::Tls,
                        format!("STLS: {}", show(line)),
                    ));
                }
                c = c.start_tls(t)?;
            }
        }
        Ok(c)
    }

    /// Runs the TLS handshake on this plaintext connection; everything after it is
    /// encrypted. The server must not have sent anything the client has not read yet.
    pub fn start_tls(self, tls: &TlsClient) -> Result<Conn> {
        if self.pos != self.end {
            return Err(SessionError::new(
                ErrorKind::Protocol,
                "the server sent more before the TLS handshake",
            ));
        }
        let Conn {
            stream, buf, wbuf, ..
        } = self;
        let Stream::Plain(tcp) = stream else {
            return Err(SessionError::new(ErrorKind::Tls, "TLS is already on"));
        };
        let s = tls.handshake(tcp, buf.len().min(tls::READ_AHEAD))?;
        Ok(Conn {
            stream: Stream::Tls(s),
            buf,
            pos: 0,
            end: 0,
            wbuf,
        })
    }

    /// `Some(true)` when the TLS handshake resumed a session, `Some(false)` for a full one,
    /// `None` without TLS.
    pub fn tls_resumed(&self) -> Option<bool> {
        match &self.stream {
            Stream::Plain(_) => None,
            Stream::Tls(s) => Some(tls::resumed(s)),
        }
    }

    /// Gives up the buffer and returns the transport (for idle connections). Any unread
    /// input is discarded.
    pub fn into_stream(self) -> Stream {
        self.stream
    }

    /// Reads more input. Compacts the buffer when it is full; a line longer than the whole
    /// buffer is a protocol error for callers that need whole lines.
    fn fill(&mut self) -> Result<()> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.pos == 0 {
                return Err(SessionError::new(
                    ErrorKind::Protocol,
                    format!("line longer than {} octets", self.buf.len()),
                ));
            }
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        loop {
            match self.stream.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    return Err(SessionError::new(
                        ErrorKind::Io,
                        "connection closed by the server",
                    ))
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_error(&e, "read", ErrorKind::Io)),
            }
        }
    }

    /// Reads one line; the returned slice excludes the CRLF (or bare LF).
    pub fn read_line(&mut self) -> Result<&[u8]> {
        let mut scanned = 0;
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.pos + scanned..self.end]) {
                let start = self.pos;
                let nl = start + scanned + i;
                self.pos = nl + 1;
                let mut e = nl;
                if e > start && self.buf[e - 1] == b'\r' {
                    e -= 1;
                }
                return Ok(&self.buf[start..e]);
            }
            scanned = self.end - self.pos;
            self.fill()?;
        }
    }

    /// Reads a status line: `Ok(Ok(rest))` for `+OK rest`, `Ok(Err(line))` for `-ERR ...`.
    /// Anything else is a protocol error.
    pub fn status(&mut self) -> Result<std::result::Result<&[u8], &[u8]>> {
        let line = self.read_line()?;
        if line.starts_with(b"+OK") {
            Ok(Ok(line[3..].trim_ascii_start()))
        } else if line.starts_with(b"-ERR") {
            Ok(Err(line))
        } else {
            Err(SessionError::new(
                ErrorKind::Protocol,
                format!("not a status line: {:?}", show(line)),
            ))
        }
    }

    /// Expects `+OK`; `-ERR` becomes a protocol error naming `what`.
    pub fn expect_ok(&mut self, what: &str) -> Result<&[u8]> {
        match self.status()? {
            Ok(rest) => Ok(rest),
            Err(line) => Err(SessionError::new(
                err_kind(line, ErrorKind::Protocol),
                format!("{what}: {}", show(line)),
            )),
        }
    }

    /// Sends `verb` + optional numeric arguments + CRLF in one write.
    pub fn command(&mut self, verb: &[u8], args: &[u64]) -> Result<()> {
        self.wbuf.clear();
        self.wbuf.extend_from_slice(verb);
        let mut fmt = itoa::Buffer::new();
        for a in args {
            self.wbuf.push(b' ');
            self.wbuf.extend_from_slice(fmt.format(*a).as_bytes());
        }
        self.wbuf.extend_from_slice(b"\r\n");
        self.send_wbuf()
    }

    /// Sends `verb arg` + CRLF (for USER/PASS).
    pub fn command_str(&mut self, verb: &[u8], arg: &str) -> Result<()> {
        self.wbuf.clear();
        self.wbuf.extend_from_slice(verb);
        self.wbuf.push(b' ');
        self.wbuf.extend_from_slice(arg.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
        self.send_wbuf()
    }

    fn send_wbuf(&mut self) -> Result<()> {
        self.stream
            .write_all(&self.wbuf)
            .map_err(|e| io_error(&e, "write", ErrorKind::Io))
    }

    /// Reads the greeting; a missing or negative greeting counts as a connect error.
    pub fn greeting(&mut self) -> Result<()> {
        let r = match self.status() {
            Ok(r) => r,
            Err(e) if e.kind == ErrorKind::Timeout => return Err(e),
            Err(e) => {
                return Err(SessionError::new(
                    ErrorKind::Connect,
                    format!("greeting: {}", e.detail),
                ))
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(line) => Err(SessionError::new(
                ErrorKind::Connect,
                format!("greeting: {}", show(line)),
            )),
        }
    }

    /// USER + PASS.
    pub fn login(&mut self, user: &str, password: &str) -> Result<()> {
        self.command_str(b"USER", user)?;
        if let Err(line) = self.status()? {
            return Err(SessionError::new(
                err_kind(line, ErrorKind::Auth),
                format!("USER {user}: {}", show(line)),
            ));
        }
        self.command_str(b"PASS", password)?;
        if let Err(line) = self.status()? {
            return Err(SessionError::new(
                err_kind(line, ErrorKind::Auth),
                format!("PASS for {user}: {}", show(line)),
            ));
        }
        Ok(())
    }

    /// Reads a multi-line body up to its terminating `.CRLF` and returns its length after
    /// removing dot-stuffing, line terminators included as received.
    ///
    /// Only line starts that begin with `.` matter (stuffing or the terminator), so the scan
    /// looks for `"\n."` with a SIMD substring search instead of visiting every line.
    pub fn read_body(&mut self) -> Result<u64> {
        static FINDER: std::sync::OnceLock<memchr::memmem::Finder<'static>> =
            std::sync::OnceLock::new();
        let finder = FINDER.get_or_init(|| memchr::memmem::Finder::new(b"\n."));
        let mut total = 0u64;
        // True when the next octet starts a line.
        let mut at_start = true;
        loop {
            if self.pos == self.end {
                self.fill()?;
            }
            if at_start && self.buf[self.pos] == b'.' {
                // Need the octets after the dot to tell the terminator from stuffing.
                loop {
                    let avail = self.end - self.pos;
                    if avail >= 3 || (avail == 2 && self.buf[self.pos + 1] != b'\r') {
                        break;
                    }
                    self.fill()?;
                }
                let rest = &self.buf[self.pos + 1..self.end];
                if rest.starts_with(b"\r\n") {
                    self.pos += 3;
                    return Ok(total);
                }
                if rest.first() == Some(&b'\n') {
                    self.pos += 2;
                    return Ok(total);
                }
                self.pos += 1;
                if self.pos == self.end {
                    at_start = false;
                    continue;
                }
            }
            let chunk = &self.buf[self.pos..self.end];
            match finder.find(chunk) {
                Some(i) => {
                    total += i as u64 + 1;
                    self.pos += i + 1;
                    at_start = true;
                }
                None => {
                    at_start = chunk.last() == Some(&b'\n');
                    total += chunk.len() as u64;
                    self.pos = self.end;
                }
            }
        }
    }

    /// Reads a multi-line listing (LIST/UIDL) and calls `f` for each un-stuffed line.
    pub fn read_lines(&mut self, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        loop {
            let line = self.read_line()?;
            if line == b"." {
                return Ok(());
            }
            let line = line.strip_prefix(b".").unwrap_or(line);
            f(line)?;
        }
    }

    /// Sends QUIT, expects `+OK`, then waits (at most `linger`) for the server to close, so
    /// the server has released the maildrop before the user is handed to another session.
    pub fn quit(mut self, linger: Duration) -> Result<()> {
        self.command(b"QUIT", &[])?;
        self.expect_ok("QUIT")?;
        let _ = self.stream.tcp().set_read_timeout(Some(linger));
        if let Stream::Tls(s) = &mut self.stream {
            // As clients do on an orderly close; then the server's close ends the read loop.
            s.conn.send_close_notify();
            let _ = s.flush();
        }
        let mut scratch = [0u8; 256];
        loop {
            match self.stream.read(&mut scratch) {
                Ok(0) | Err(_) => return Ok(()),
                Ok(_) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A connection whose server side writes `script` (in `chunk`-sized pieces) and closes.
    fn conn_reading(script: Vec<u8>, chunk: usize, buf: usize) -> Conn {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.set_nodelay(true).unwrap();
            for c in script.chunks(chunk) {
                s.write_all(c).unwrap();
                s.flush().unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        let c = Conn::connect(addr, Duration::from_secs(5), buf).unwrap();
        t.join().unwrap();
        c
    }

    #[test]
    fn body_length_unstuffs_and_finds_terminator() {
        // Message "a\r\n.b\r\n..\r\nlast" has wire form with stuffing plus added CRLF.
        let wire = b"+OK 15 octets\r\na\r\n..b\r\n...\r\nlast\r\n.\r\n+OK next\r\n".to_vec();
        for chunk in [1, 2, 3, 5, 1000] {
            let mut c = conn_reading(wire.clone(), chunk, 1024);
            let st = c.expect_ok("RETR").unwrap().to_vec();
            assert_eq!(first_number(&st), Some(15));
            assert_eq!(c.read_body().unwrap(), 3 + 4 + 4 + 6, "chunk {chunk}");
            assert_eq!(c.expect_ok("x").unwrap(), b"next");
        }
    }

    #[test]
    fn body_length_matches_reference_under_random_chunking() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let pieces: [&[u8]; 8] = [b"", b".", b"..", b".x", b"x.", b"abc", b"\n.", b"."];
        for _ in 0..40 {
            let mut wire = b"+OK\r\n".to_vec();
            let mut expected = 0u64;
            for _ in 0..rng.gen_range(0..60) {
                let line = pieces[rng.gen_range(0..pieces.len())];
                let line: Vec<u8> = line.iter().copied().filter(|b| *b != b'\n').collect();
                if line.first() == Some(&b'.') {
                    wire.push(b'.');
                }
                wire.extend_from_slice(&line);
                wire.extend_from_slice(b"\r\n");
                expected += line.len() as u64 + 2;
            }
            wire.extend_from_slice(b".\r\n+OK after\r\n");
            let chunk = rng.gen_range(1..9);
            let mut c = conn_reading(wire, chunk, 1024);
            c.expect_ok("RETR").unwrap();
            assert_eq!(c.read_body().unwrap(), expected);
            assert_eq!(c.expect_ok("x").unwrap(), b"after");
        }
    }

    #[test]
    fn long_lines_and_small_buffers() {
        let mut wire = b"+OK\r\n".to_vec();
        wire.extend(std::iter::repeat_n(b'x', 5000));
        wire.extend_from_slice(b"\r\n.\r\n");
        let mut c = conn_reading(wire, 700, 1024);
        c.expect_ok("RETR").unwrap();
        assert_eq!(c.read_body().unwrap(), 5002);
    }

    #[test]
    fn listing_and_errors() {
        let wire = b"+OK\r\n1 100\r\n2 200\r\n.\r\n-ERR [IN-USE] locked\r\n".to_vec();
        let mut c = conn_reading(wire, 4, 1024);
        c.expect_ok("LIST").unwrap();
        let mut sizes = Vec::new();
        c.read_lines(|l| {
            sizes.push(first_number(&l[2..]).unwrap());
            Ok(())
        })
        .unwrap();
        assert_eq!(sizes, [100, 200]);
        assert!(c.status().unwrap().is_err());
        assert_eq!(
            err_kind(b"-ERR [IN-USE] x", ErrorKind::Auth),
            ErrorKind::InUse
        );
        assert_eq!(
            err_kind(b"-ERR [SYS/TEMP] x", ErrorKind::Auth),
            ErrorKind::Sys
        );
        assert_eq!(err_kind(b"-ERR nope", ErrorKind::Auth), ErrorKind::Auth);
        let e = c.read_line().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Io);
    }

    #[test]
    fn error_kind_names_round_trip() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(k.name()), Some(k));
            assert_eq!(ErrorKind::ALL[k.index()], k);
        }
    }
}
