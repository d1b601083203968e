//! A minimal POP3 client for load generation, on tokio's non-blocking sockets.
//!
//! One [`Conn`] owns a [`Stream`] (a `TcpStream`, or TLS over one) and a read buffer.
//! Multi-line bodies (RETR/TOP) are scanned in place: the terminating `.CRLF` is found and the
//! un-stuffed length counted without copying the message anywhere. Under TLS the decrypted
//! octets land in the same buffer and go through the same scan.

use std::io::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustls::ClientConnection;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

use crate::protocol::spare::Spares;

use super::tls::{self, TlsClient, TlsIo, TlsMode};

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

/// The `<...>` timestamp in a greeting, brackets included (RFC 1939 §7).
fn apop_stamp(greeting: &[u8]) -> Option<String> {
    let start = memchr::memchr(b'<', greeting)?;
    let len = memchr::memchr(b'>', &greeting[start..])?;
    String::from_utf8(greeting[start..=start + len].to_vec()).ok()
}

/// The kind for a `-ERR` line: `[SYS/...]` replies are the server's own failures.
pub(super) fn err_kind(line: &[u8], otherwise: ErrorKind) -> ErrorKind {
    if memchr::memmem::find(line, b"[SYS/").is_some() {
        ErrorKind::Sys
    } else if memchr::memmem::find(line, b"[IN-USE]").is_some() {
        ErrorKind::InUse
    } else {
        otherwise
    }
}

/// The transport under a [`Conn`]: non-blocking sockets driven by the thread's tokio loop.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsIo>),
}

impl Stream {
    #[inline]
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
        }
    }

    #[inline]
    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(data).await,
            Stream::Tls(s) => {
                s.write_all(data).await?;
                // rustls keeps the records until flushed.
                s.flush().await
            }
        }
    }
}

/// An idle connection taken off the event loop (`--idle`): a blocking socket that is only
/// checked, and sent QUIT, when the run ends.
pub enum Held {
    Plain(std::net::TcpStream),
    Tls(Box<HeldTls>),
}

/// [`Held`] under TLS: the socket, the TLS state, and ciphertext read ahead of the TLS
/// layer when the connection left the event loop.
pub struct HeldTls {
    tcp: std::net::TcpStream,
    conn: ClientConnection,
    pending: Vec<u8>,
}

impl Held {
    fn tcp(&self) -> &std::net::TcpStream {
        match self {
            Held::Plain(s) => s,
            Held::Tls(s) => &s.tcp,
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
            Held::Plain(s) => {
                let mut b = [0u8; 1];
                matches!(s.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Held::Tls(s) => tls_is_idle(s),
        };
        let _ = self.tcp().set_nonblocking(false);
        idle
    }

    /// Sends QUIT without waiting (the socket is switched to non-blocking; a write that
    /// would block is dropped).
    pub fn send_quit_nonblocking(&mut self) {
        let _ = self.tcp().set_nonblocking(true);
        match self {
            Held::Plain(s) => {
                let _ = s.write_all(b"QUIT\r\n");
            }
            Held::Tls(s) => {
                if s.conn.writer().write_all(b"QUIT\r\n").is_ok() {
                    let _ = s.conn.write_tls(&mut s.tcp);
                }
            }
        }
    }
}

/// [`Held::is_idle`] for TLS, on a non-blocking socket: processes whatever has arrived.
fn tls_is_idle(s: &mut HeldTls) -> bool {
    loop {
        if !s.conn.wants_read() {
            // Plaintext not delivered yet, or the server's close_notify.
            return false;
        }
        let read = if s.pending.is_empty() {
            s.conn.read_tls(&mut s.tcp)
        } else {
            let mut rest: &[u8] = &s.pending;
            let r = s.conn.read_tls(&mut rest);
            let used = s.pending.len() - rest.len();
            s.pending.drain(..used);
            r
        };
        match read {
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

/// A connection's receive buffer. A thread runs one session after another on each of its
/// tasks: when a connection ends its buffer goes to the thread's spares, which the next
/// connection takes, so a session does not pay for a fresh 128 KiB allocation (page faults
/// and zeroing were ~5 % of the load generator's CPU in a full-download run).
struct RecvBuf(Vec<u8>);

thread_local! {
    /// Spare receive buffers of this thread: enough for every task of a large run.
    static SPARE: Spares = const { Spares::new(1024, usize::MAX) };
}

impl RecvBuf {
    fn new(size: usize) -> RecvBuf {
        match SPARE.with(Spares::take) {
            Some(b) if b.len() == size => RecvBuf(b),
            _ => RecvBuf(vec![0; size]),
        }
    }
}

impl Drop for RecvBuf {
    fn drop(&mut self) {
        SPARE.with(|s| s.give(std::mem::take(&mut self.0)));
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
    /// Limit for the connect and for every later read and write.
    timeout: Duration,
    /// The `<...>` timestamp of the greeting, for APOP.
    stamp: Option<String>,
}

/// Connects to `addr`, from the address `source` when given. The local port is still chosen
/// by the kernel at connect time (`IP_BIND_ADDRESS_NO_PORT`), as for an unbound socket, so
/// it only has to make the 4-tuple unique: connections from other source addresses never
/// stand in its way.
async fn connect_from(addr: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let Some(ip) = source else {
        return TcpStream::connect(addr).await;
    };
    let s = if ip.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::IpBindAddressNoPort, &true)
        .map_err(io::Error::from)?;
    s.bind(SocketAddr::new(ip, 0))?;
    s.connect(addr).await
}

/// The source address of the `k`-th idle connection to `server`: one of 16 loopback
/// addresses other than 127.0.0.1 when the server is on IPv4 loopback, else `None` (the
/// system's choice). On one source address, every connect has to find a local port not
/// yet used towards the same server address and port; with 19,000 idle connections held
/// from 127.0.0.1, that search was over half the load generator's CPU for the measured
/// sessions (`__inet_hash_connect`, `__inet_check_established`), so idle connections come
/// from elsewhere and the sessions measured beside them do not pay for them.
pub fn idle_source(server: SocketAddr, k: usize) -> Option<IpAddr> {
    match server.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => Some(IpAddr::V4(std::net::Ipv4Addr::new(
            127,
            0,
            0,
            2 + (k % 16) as u8,
        ))),
        _ => None,
    }
}

/// The index of the first `"\n."` in `s`. Searches for the dot alone (one SIMD compare per
/// block, no hits at all in base64) and checks the byte before each: as a `"\n."` substring
/// search this was 18 % of the load generator's CPU on a 20 MB message.
fn line_dot(s: &[u8]) -> Option<usize> {
    let rest = s.get(1..)?;
    memchr::memchr_iter(b'.', rest).find(|&i| s[i] == b'\n')
}

/// `op` within `limit`; its I/O errors become `otherwise` (or [`ErrorKind::Timeout`]), and
/// so does running out of time.
pub(super) async fn limited<T>(
    limit: Duration,
    what: &str,
    otherwise: ErrorKind,
    op: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, op).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(io_error(&e, what, otherwise)),
        Err(_) => Err(SessionError::new(
            ErrorKind::Timeout,
            format!("{what}: no progress in {limit:?}"),
        )),
    }
}

impl Conn {
    /// Connects with `timeout` for the connect and every later read and write, from
    /// `source` when given (see `connect_from`).
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        timeout: Duration,
        buf_size: usize,
    ) -> Result<Conn> {
        let stream = limited(
            timeout,
            "connect",
            ErrorKind::Connect,
            connect_from(addr, source),
        )
        .await?;
        stream
            .set_nodelay(true)
            .map_err(|e| io_error(&e, "socket setup", ErrorKind::Connect))?;
        Ok(Conn {
            stream: Stream::Plain(stream),
            buf: RecvBuf::new(buf_size.max(1024)),
            pos: 0,
            end: 0,
            wbuf: Vec::with_capacity(128),
            timeout,
            stamp: None,
        })
    }

    /// Connects and reads the greeting, with TLS when `tls` is given: implicit TLS
    /// handshakes before the greeting, STARTTLS sends STLS after it and handshakes on `+OK`.
    pub async fn open(
        addr: SocketAddr,
        source: Option<IpAddr>,
        timeout: Duration,
        buf_size: usize,
        tls: Option<&TlsClient>,
    ) -> Result<Conn> {
        let mut c = Conn::connect(addr, source, timeout, buf_size).await?;
        match tls {
            None => c.greeting().await?,
            Some(t) if t.mode == TlsMode::Implicit => {
                c = c.start_tls(t).await?;
                c.greeting().await?;
            }
            Some(t) => {
                c.greeting().await?;
                c.command(b"STLS", &[]).await?;
                if let Err(line) = c.status().await? {
                    return Err(SessionError::new(
                        ErrorKind::Tls,
                        format!("STLS: {}", show(line)),
                    ));
                }
                c = c.start_tls(t).await?;
            }
        }
        Ok(c)
    }

    /// Runs the TLS handshake on this plaintext connection; everything after it is
    /// encrypted. The server must not have sent anything the client has not read yet.
    pub async fn start_tls(self, tls: &TlsClient) -> Result<Conn> {
        if self.pos != self.end {
            return Err(SessionError::new(
                ErrorKind::Protocol,
                "the server sent more before the TLS handshake",
            ));
        }
        let Conn {
            stream,
            buf,
            wbuf,
            timeout,
            stamp,
            ..
        } = self;
        let Stream::Plain(tcp) = stream else {
            return Err(SessionError::new(ErrorKind::Tls, "TLS is already on"));
        };
        let s = tls
            .handshake(tcp, buf.len().min(tls::READ_AHEAD), timeout)
            .await?;
        Ok(Conn {
            stream: Stream::Tls(s),
            buf,
            pos: 0,
            end: 0,
            wbuf,
            timeout,
            stamp,
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

    /// Takes the connection off the event loop to be held idle (see [`Held`]). Unread
    /// plaintext is discarded.
    pub fn into_held(self) -> Result<Held> {
        let blocking = |tcp: TcpStream| -> Result<std::net::TcpStream> {
            let tcp = tcp
                .into_std()
                .map_err(|e| io_error(&e, "holding", ErrorKind::Io))?;
            tcp.set_nonblocking(false)
                .map_err(|e| io_error(&e, "holding", ErrorKind::Io))?;
            Ok(tcp)
        };
        Ok(match self.stream {
            Stream::Plain(tcp) => Held::Plain(blocking(tcp)?),
            Stream::Tls(s) => {
                let (io, conn) = s.into_inner();
                let pending = io.buffer().to_vec();
                Held::Tls(Box::new(HeldTls {
                    tcp: blocking(io.into_inner())?,
                    conn,
                    pending,
                }))
            }
        })
    }

    /// Reads more input. Compacts the buffer when it is full; a line longer than the whole
    /// buffer is a protocol error for callers that need whole lines.
    async fn fill(&mut self) -> Result<()> {
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
        let n = limited(
            self.timeout,
            "read",
            ErrorKind::Io,
            self.stream.read(&mut self.buf[self.end..]),
        )
        .await?;
        if n == 0 {
            return Err(SessionError::new(
                ErrorKind::Io,
                "connection closed by the server",
            ));
        }
        self.end += n;
        Ok(())
    }

    /// Reads one line; the returned slice excludes the CRLF (or bare LF).
    pub async fn read_line(&mut self) -> Result<&[u8]> {
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
            self.fill().await?;
        }
    }

    /// Reads a status line: `Ok(Ok(rest))` for `+OK rest`, `Ok(Err(line))` for `-ERR ...`.
    /// Anything else is a protocol error.
    pub async fn status(&mut self) -> Result<std::result::Result<&[u8], &[u8]>> {
        let line = self.read_line().await?;
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
    pub async fn expect_ok(&mut self, what: &str) -> Result<&[u8]> {
        match self.status().await? {
            Ok(rest) => Ok(rest),
            Err(line) => Err(SessionError::new(
                err_kind(line, ErrorKind::Protocol),
                format!("{what}: {}", show(line)),
            )),
        }
    }

    /// Sends `verb` + optional numeric arguments + CRLF in one write.
    pub async fn command(&mut self, verb: &[u8], args: &[u64]) -> Result<()> {
        self.wbuf.clear();
        self.wbuf.extend_from_slice(verb);
        let mut fmt = itoa::Buffer::new();
        for a in args {
            self.wbuf.push(b' ');
            self.wbuf.extend_from_slice(fmt.format(*a).as_bytes());
        }
        self.wbuf.extend_from_slice(b"\r\n");
        self.send_wbuf().await
    }

    /// Sends `verb arg` + CRLF (for USER/PASS).
    pub async fn command_str(&mut self, verb: &[u8], arg: &str) -> Result<()> {
        self.wbuf.clear();
        self.wbuf.extend_from_slice(verb);
        self.wbuf.push(b' ');
        self.wbuf.extend_from_slice(arg.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
        self.send_wbuf().await
    }

    /// Sends `line` + CRLF (a SASL response).
    pub async fn send_line(&mut self, line: &[u8]) -> Result<()> {
        self.wbuf.clear();
        self.wbuf.extend_from_slice(line);
        self.wbuf.extend_from_slice(b"\r\n");
        self.send_wbuf().await
    }

    async fn send_wbuf(&mut self) -> Result<()> {
        limited(
            self.timeout,
            "write",
            ErrorKind::Io,
            self.stream.write_all(&self.wbuf),
        )
        .await
    }

    /// Reads the greeting; a missing or negative greeting counts as a connect error.
    pub async fn greeting(&mut self) -> Result<()> {
        let r = match self.status().await {
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
            Ok(rest) => {
                self.stamp = apop_stamp(rest);
                Ok(())
            }
            Err(line) => Err(SessionError::new(
                ErrorKind::Connect,
                format!("greeting: {}", show(line)),
            )),
        }
    }

    /// The greeting's `<...>` timestamp (RFC 1939 APOP), if it had one.
    pub fn greeting_stamp(&self) -> Option<&str> {
        self.stamp.as_deref()
    }

    /// Reads a multi-line body up to its terminating `.CRLF` and returns its length after
    /// removing dot-stuffing, line terminators included as received.
    ///
    /// Only line starts that begin with `.` matter (stuffing or the terminator), so the scan
    /// looks only for dots (`line_dot`) instead of visiting every line.
    pub async fn read_body(&mut self) -> Result<u64> {
        let mut total = 0u64;
        // True when the next octet starts a line.
        let mut at_start = true;
        loop {
            if self.pos == self.end {
                self.fill().await?;
            }
            if at_start && self.buf[self.pos] == b'.' {
                // Need the octets after the dot to tell the terminator from stuffing.
                loop {
                    let avail = self.end - self.pos;
                    if avail >= 3 || (avail == 2 && self.buf[self.pos + 1] != b'\r') {
                        break;
                    }
                    self.fill().await?;
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
            match line_dot(chunk) {
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
    pub async fn read_lines(&mut self, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        loop {
            let line = self.read_line().await?;
            if line == b"." {
                return Ok(());
            }
            let line = line.strip_prefix(b".").unwrap_or(line);
            f(line)?;
        }
    }

    /// Sends QUIT, expects `+OK`, then waits (at most `linger`) for the server to close, so
    /// the server has released the maildrop before the user is handed to another session.
    pub async fn quit(mut self, linger: Duration) -> Result<()> {
        self.command(b"QUIT", &[]).await?;
        self.expect_ok("QUIT").await?;
        let drain = async {
            if let Stream::Tls(s) = &mut self.stream {
                // As clients do on an orderly close; then the server's close ends the read loop.
                s.get_mut().1.send_close_notify();
                let _ = s.flush().await;
            }
            let mut scratch = [0u8; 256];
            while let Ok(1..) = self.stream.read(&mut scratch).await {}
        };
        let _ = tokio::time::timeout(linger, drain).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::block_on;
    use std::net::TcpListener;

    /// Runs `f` on a connection whose server side writes `script` (in `chunk`-sized pieces)
    /// and closes.
    fn with_conn_reading<T>(
        script: Vec<u8>,
        chunk: usize,
        buf: usize,
        f: impl AsyncFnOnce(&mut Conn) -> T,
    ) -> T {
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
        block_on(async {
            let mut c = Conn::connect(addr, None, Duration::from_secs(5), buf)
                .await
                .unwrap();
            let r = f(&mut c).await;
            t.join().unwrap();
            r
        })
    }

    #[test]
    fn body_length_unstuffs_and_finds_terminator() {
        // Message "a\r\n.b\r\n..\r\nlast" has wire form with stuffing plus added CRLF.
        let wire = b"+OK 15 octets\r\na\r\n..b\r\n...\r\nlast\r\n.\r\n+OK next\r\n".to_vec();
        for chunk in [1, 2, 3, 5, 1000] {
            with_conn_reading(wire.clone(), chunk, 1024, async |c| {
                let st = c.expect_ok("RETR").await.unwrap().to_vec();
                assert_eq!(first_number(&st), Some(15));
                assert_eq!(c.read_body().await.unwrap(), 3 + 4 + 4 + 6, "chunk {chunk}");
                assert_eq!(c.expect_ok("x").await.unwrap(), b"next");
            });
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
            with_conn_reading(wire, chunk, 1024, async |c| {
                c.expect_ok("RETR").await.unwrap();
                assert_eq!(c.read_body().await.unwrap(), expected);
                assert_eq!(c.expect_ok("x").await.unwrap(), b"after");
            });
        }
    }

    #[test]
    fn long_lines_and_small_buffers() {
        let mut wire = b"+OK\r\n".to_vec();
        wire.extend(std::iter::repeat_n(b'x', 5000));
        wire.extend_from_slice(b"\r\n.\r\n");
        with_conn_reading(wire, 700, 1024, async |c| {
            c.expect_ok("RETR").await.unwrap();
            assert_eq!(c.read_body().await.unwrap(), 5002);
        });
    }

    #[test]
    fn listing_and_errors() {
        let wire = b"+OK\r\n1 100\r\n2 200\r\n.\r\n-ERR [IN-USE] locked\r\n".to_vec();
        with_conn_reading(wire, 4, 1024, async |c| {
            c.expect_ok("LIST").await.unwrap();
            let mut sizes = Vec::new();
            c.read_lines(|l| {
                sizes.push(first_number(&l[2..]).unwrap());
                Ok(())
            })
            .await
            .unwrap();
            assert_eq!(sizes, [100, 200]);
            assert!(c.status().await.unwrap().is_err());
            let e = c.read_line().await.unwrap_err();
            assert_eq!(e.kind, ErrorKind::Io);
        });
        assert_eq!(
            err_kind(b"-ERR [IN-USE] x", ErrorKind::Auth),
            ErrorKind::InUse
        );
        assert_eq!(
            err_kind(b"-ERR [SYS/TEMP] x", ErrorKind::Auth),
            ErrorKind::Sys
        );
        assert_eq!(err_kind(b"-ERR nope", ErrorKind::Auth), ErrorKind::Auth);
    }

    #[test]
    fn idle_connections_come_from_other_loopback_addresses() {
        let v4: SocketAddr = "127.0.0.1:110".parse().unwrap();
        assert_eq!(idle_source(v4, 0), Some("127.0.0.2".parse().unwrap()));
        assert_eq!(idle_source(v4, 17), Some("127.0.0.3".parse().unwrap()));
        assert!((0..1000).all(|k| idle_source(v4, k) != Some(v4.ip())));
        assert_eq!(idle_source("[::1]:110".parse().unwrap(), 3), None);
        // The server sees the chosen source address.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let source = idle_source(addr, 4);
        let c = block_on(Conn::connect(addr, source, Duration::from_secs(5), 1024)).unwrap();
        let (_s, peer) = l.accept().unwrap();
        assert_eq!(Some(peer.ip()), source);
        drop(c);
    }

    #[test]
    fn line_dot_finds_the_first_dot_after_a_line_feed() {
        assert_eq!(line_dot(b""), None);
        assert_eq!(line_dot(b"."), None);
        assert_eq!(line_dot(b"\n."), Some(0));
        assert_eq!(line_dot(b"a.b.\nc\n.d\n."), Some(6));
        assert_eq!(line_dot(b"no dots\r\nat line starts.\r\n"), None);
        let mut long = vec![b'x'; 5000];
        long[4000] = b'\n';
        long[4001] = b'.';
        long[100] = b'.';
        assert_eq!(line_dot(&long), Some(4000));
    }

    #[test]
    fn error_kind_names_round_trip() {
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(k.name()), Some(k));
            assert_eq!(ErrorKind::ALL[k.index()], k);
        }
    }
}
