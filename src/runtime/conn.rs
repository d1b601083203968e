//! The per-connection driver: feeds a [`Session`] and carries out its [`Step`]s.
//!
//! Owns: reading and writing one connection, idle timeouts, running logins, message mapping
//! and commits on the blocking pool, sending messages from their mappings (one vectored
//! `sendmsg` for status line + message + terminator when the stored form is already wire
//! form; a streamed transformation otherwise), holding and releasing the maildrop lock, and the
//! login/logout log lines. Also the TLS transport: the handshake before the greeting on an
//! implicit-TLS listener and after `+OK` to STLS, both bounded by `tls.handshake_timeout_secs`.
//! Under TLS a message goes from its mapping through rustls (which copies it once, encrypting)
//! and every write is flushed; the vectored raw `sendmsg` is for plaintext only.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::server::TlsStream;
use glommio::net::TcpStream;

use super::{sys, Registry, Shared};
use crate::auth::{AuthOutcome, Credential, Secret};
use crate::mailbox::{self, location, LockError, MaildropLock, Snapshot, TransferPlan, TERMINATOR};
use crate::protocol::{
    AbortReason, ConnInfo, LoginRequest, LoginResult, RetrieveError, Session, Step,
};

/// A logged-in session's view of its maildrop.
pub(crate) struct Maildrop(Arc<Snapshot>);

impl crate::protocol::Maildrop for Maildrop {
    fn count(&self) -> usize {
        self.0.messages().len()
    }
    fn octets(&self, index: usize) -> u64 {
        self.0.messages()[index].octets
    }
    fn uidl(&self, index: usize) -> &str {
        &self.0.messages()[index].uidl
    }
}

/// Largest chunk of a transformed message written at once.
const CHUNK: usize = 64 * 1024;
/// Bytes read from the socket at a time; small, since this buffer lives as long as the session.
const READ_BUF: usize = 512;

/// The connection's byte stream: plaintext, or TLS over the same socket. The TLS state is
/// boxed so a plaintext connection pays nothing for it.
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Only while the socket is being handed to the TLS handshake.
    Upgrading,
}

impl Transport {
    fn tcp(&self) -> io::Result<&TcpStream> {
        match self {
            Transport::Plain(s) => Ok(s),
            Transport::Tls(s) => Ok(s.get_ref().0),
            Transport::Upgrading => Err(upgrading()),
        }
    }
}

fn upgrading() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "TLS handshake failed")
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Transport::Upgrading => std::task::Poll::Ready(Err(upgrading())),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Upgrading => std::task::Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Upgrading => std::task::Poll::Ready(Err(upgrading())),
        }
    }

    fn poll_close(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_close(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_close(cx),
            Transport::Upgrading => std::task::Poll::Ready(Err(upgrading())),
        }
    }
}

/// Runs one connection to its end. On an implicit-TLS listener the TLS handshake comes first.
pub(crate) async fn run(
    stream: TcpStream,
    implicit_tls: bool,
    shared: Arc<Shared>,
    registry: Rc<Registry>,
    id: u64,
) {
    let peer = stream.peer_addr().ok();
    let mut c = Conn {
        stream: Transport::Plain(stream),
        implicit_tls,
        shared,
        peer,
        user: None,
        lock: None,
    };
    if let Err(e) = c.drive(&registry).await {
        tracing::debug!(peer = %Peer(c.peer), error = %e, "connection ended with an error");
    }
    registry.remove(id);
    c.release_lock().await;
}

struct Conn {
    stream: Transport,
    implicit_tls: bool,
    shared: Arc<Shared>,
    peer: Option<SocketAddr>,
    user: Option<String>,
    lock: Option<MaildropLock>,
}

/// The result of a login attempt done on the blocking pool.
enum Login {
    Ok {
        user: String,
        lock: MaildropLock,
        snapshot: Arc<Snapshot>,
    },
    Failed,
    InUse,
    TempFail,
    PermFail,
}

impl Conn {
    async fn drive(&mut self, registry: &Registry) -> io::Result<()> {
        let shared = self.shared.clone();
        let cfg = &shared.cfg;
        self.stream.tcp()?.set_nodelay(true)?;
        let login_timeout = Duration::from_secs(cfg.limits.login_timeout_secs);
        let idle_timeout = Duration::from_secs(cfg.limits.idle_timeout_secs);
        if self.implicit_tls {
            if let Err(e) = self.start_tls().await {
                tracing::debug!(peer = %Peer(self.peer), error = %e, "implicit TLS handshake failed");
                return Ok(());
            }
        }
        self.stream.tcp()?.set_read_timeout(Some(login_timeout))?;
        self.stream.tcp()?.set_write_timeout(Some(idle_timeout))?;
        let loopback = self.peer.is_some_and(|p| p.ip().is_loopback());
        let info = ConnInfo {
            apop_timestamp: cfg
                .server
                .apop
                .then(|| apop_timestamp(&self.shared.hostname)),
            plaintext_auth: loopback || cfg.auth.insecure_plaintext_auth,
            stls: self.shared.tls.is_some() && !self.implicit_tls,
            secure: self.implicit_tls,
        };
        let mut session: Session<Maildrop> = Session::new(self.shared.session_cfg.clone(), info);
        let mut out = Vec::with_capacity(256);
        session.greeting(&mut out);
        let mut buf = [0u8; READ_BUF];
        loop {
            match session.poll(&mut out) {
                Step::NeedInput => {
                    self.flush(&mut out).await?;
                    session.shrink_if_idle();
                    let n = match self.stream.read(&mut buf).await {
                        Ok(n) => n,
                        // A TLS peer that closed without close_notify: an ordinary disconnect.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                            session.abort(&mut out, AbortReason::IdleTimeout);
                            self.flush(&mut out).await?;
                            self.log_logout(&session, "idle timeout");
                            return Ok(());
                        }
                        Err(e) => return Err(e),
                    };
                    if n == 0 {
                        if registry.stopping.get() {
                            session.abort(&mut out, AbortReason::Shutdown);
                            let _ = self.flush(&mut out).await;
                            self.log_logout(&session, "shutdown");
                        } else {
                            self.log_logout(&session, "disconnected");
                        }
                        return Ok(());
                    }
                    session.feed(&buf[..n]);
                }
                Step::Flush => self.flush(&mut out).await?,
                Step::Login(req) => {
                    let result = self.login(*req.0).await;
                    let result = match result {
                        Login::Ok {
                            user,
                            lock,
                            snapshot,
                        } => {
                            tracing::info!(user = %user, peer = %Peer(self.peer), messages = snapshot.messages().len(), "login");
                            self.user = Some(user);
                            self.lock = Some(lock);
                            self.stream.tcp()?.set_read_timeout(Some(idle_timeout))?;
                            LoginResult::Ok(Maildrop(snapshot))
                        }
                        Login::Failed => {
                            let delay = self.shared.cfg.auth.failure_delay_ms;
                            if delay > 0 {
                                glommio::timer::sleep(Duration::from_millis(delay)).await;
                            }
                            LoginResult::Failed
                        }
                        Login::InUse => LoginResult::InUse,
                        Login::TempFail => LoginResult::TempFail,
                        Login::PermFail => LoginResult::PermFail,
                    };
                    session.login_done(&mut out, result);
                }
                Step::Retrieve { index, lines } => {
                    let Some(Maildrop(snapshot)) = session.maildrop() else {
                        session.retrieve_failed(&mut out, RetrieveError::Temporary);
                        continue;
                    };
                    let snapshot = snapshot.clone();
                    let mapped = glommio::executor()
                        .spawn_blocking(move || snapshot.open(index))
                        .await;
                    match mapped {
                        Ok(map) => {
                            session.retrieve_ready(&mut out);
                            let plan = match lines {
                                None => TransferPlan::retr(map.bytes()),
                                Some(k) => TransferPlan::top(map.bytes(), k),
                            };
                            if lines.is_some() {
                                session.count_top_octets(plan.source().len() as u64);
                            }
                            self.send_message(&mut out, plan).await?;
                        }
                        Err(e) => {
                            tracing::warn!(user = ?self.user, index, error = %e, "cannot open message");
                            let kind = if e.kind() == io::ErrorKind::NotFound {
                                RetrieveError::Gone
                            } else {
                                RetrieveError::Temporary
                            };
                            session.retrieve_failed(&mut out, kind);
                        }
                    }
                }
                Step::Commit => {
                    let indexes: Vec<usize> = session.deletions().collect();
                    let failed = match session.maildrop() {
                        Some(Maildrop(snapshot)) => {
                            let snapshot = snapshot.clone();
                            glommio::executor()
                                .spawn_blocking(move || snapshot.commit(&indexes))
                                .await
                        }
                        None => indexes.len(),
                    };
                    session.commit_done(&mut out, failed);
                }
                Step::StartTls => {
                    // The session has already dropped anything pipelined behind STLS.
                    self.flush(&mut out).await?;
                    if let Err(e) = self.start_tls().await {
                        tracing::debug!(peer = %Peer(self.peer), error = %e, "STLS handshake failed");
                        return Ok(());
                    }
                    self.stream.tcp()?.set_read_timeout(Some(login_timeout))?;
                    session.tls_started();
                }
                Step::Close => {
                    // Free the maildrop before the final reply, so a client that logs in
                    // again right after QUIT is not told the maildrop is in use.
                    self.release_lock().await;
                    let _ = self.flush(&mut out).await;
                    if matches!(self.stream, Transport::Tls(_)) {
                        // close_notify, so clients see a clean TLS end.
                        let _ = self.stream.close().await;
                    }
                    self.log_logout(&session, "logout");
                    return Ok(());
                }
            }
        }
    }

    async fn release_lock(&mut self) {
        if let Some(lock) = self.lock.take() {
            let r = glommio::executor()
                .spawn_blocking(move || lock.release())
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not release maildrop lock");
            }
        }
    }

    /// Runs the TLS handshake on the plaintext socket, bounded by `tls.handshake_timeout_secs`.
    async fn start_tls(&mut self) -> io::Result<()> {
        let Some(tls) = &self.shared.tls else {
            return Err(io::Error::other("TLS is not configured"));
        };
        let acceptor = futures_rustls::TlsAcceptor::from(tls.current());
        let limit = Duration::from_secs(self.shared.cfg.tls.handshake_timeout_secs);
        let Transport::Plain(tcp) = std::mem::replace(&mut self.stream, Transport::Upgrading)
        else {
            return Err(io::Error::other("TLS is already active"));
        };
        tcp.set_read_timeout(Some(limit))?;
        tcp.set_write_timeout(Some(limit))?;
        let handshake = async { Some(acceptor.accept(tcp).await) };
        let deadline = async {
            glommio::timer::sleep(limit).await;
            None
        };
        match futures_lite::future::or(handshake, deadline).await {
            Some(Ok(s)) => {
                s.get_ref().0.set_write_timeout(Some(Duration::from_secs(
                    self.shared.cfg.limits.idle_timeout_secs,
                )))?;
                self.stream = Transport::Tls(Box::new(s));
                Ok(())
            }
            Some(Err(e)) => Err(e),
            None => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }

    async fn flush(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if !out.is_empty() {
            self.stream.write_all(out).await?;
            out.clear();
        }
        if matches!(self.stream, Transport::Tls(_)) {
            self.stream.flush().await?;
        }
        if out.capacity() > 4096 {
            // Do not keep a large buffer for an idle connection.
            *out = Vec::with_capacity(256);
        }
        Ok(())
    }

    /// Sends the status line in `out` followed by the message's wire form and terminator.
    async fn send_message(
        &mut self,
        out: &mut Vec<u8>,
        mut plan: TransferPlan<'_>,
    ) -> io::Result<()> {
        if let Some(slice) = plan.as_slice() {
            // Already wire form: straight from the mapping, no copy (under TLS, rustls's
            // copy-and-encrypt is the only one).
            self.write_parts(&[out, slice, TERMINATOR]).await?;
            out.clear();
            return self.flush_tls().await;
        }
        let mut chunk = vec![0u8; CHUNK.min(plan.source().len() * 2 + 64)];
        let n = plan.fill(&mut chunk);
        self.write_parts(&[out, &chunk[..n]]).await?;
        out.clear();
        loop {
            let n = plan.fill(&mut chunk);
            if n == 0 {
                return self.flush_tls().await;
            }
            self.stream.write_all(&chunk[..n]).await?;
        }
    }

    /// rustls buffers: push out what it holds.
    async fn flush_tls(&mut self) -> io::Result<()> {
        if matches!(self.stream, Transport::Tls(_)) {
            self.stream.flush().await?;
        }
        Ok(())
    }

    /// Writes all `parts` in order, in as few system calls as the socket buffer allows.
    async fn write_parts(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let tcp = match &mut self.stream {
            Transport::Plain(tcp) => tcp,
            other => {
                for p in parts {
                    other.write_all(p).await?;
                }
                return Ok(());
            }
        };
        let mut idx = 0;
        let mut off = 0;
        while idx < parts.len() {
            if off == parts[idx].len() {
                idx += 1;
                off = 0;
                continue;
            }
            let mut slices = [IoSlice::new(&[]); 4];
            let mut k = 0;
            for (j, p) in parts[idx..].iter().enumerate().take(4) {
                slices[j] = IoSlice::new(if j == 0 { &p[off..] } else { p });
                k = j + 1;
            }
            let n = match sys::send_vectored(&*tcp, &slices[..k]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Socket buffer full: let glommio wait for POLLOUT by writing a small piece.
                    let piece = &parts[idx][off..];
                    tcp.write(&piece[..piece.len().min(4096)]).await?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e),
            };
            let mut n = n;
            while n > 0 && idx < parts.len() {
                let left = parts[idx].len() - off;
                if n >= left {
                    n -= left;
                    idx += 1;
                    off = 0;
                } else {
                    off += n;
                    n = 0;
                }
            }
        }
        Ok(())
    }

    async fn login(&self, req: LoginRequest) -> Login {
        let shared = self.shared.clone();
        glommio::executor()
            .spawn_blocking(move || login_blocking(&shared, req))
            .await
    }

    fn log_logout(&self, session: &Session<Maildrop>, reason: &str) {
        let Some(user) = &self.user else {
            tracing::debug!(peer = %Peer(self.peer), reason, "connection closed before login");
            return;
        };
        let s = session.stats();
        tracing::info!(
            user = %user,
            peer = %Peer(self.peer),
            reason,
            top = format_args!("{}/{}", s.top, s.top_octets),
            retr = format_args!("{}/{}", s.retr, s.retr_octets),
            del = format_args!("{}/{}", s.deleted, s.messages),
            size = s.size,
            "logout"
        );
    }
}

/// Verifies credentials, finds the Maildir, takes its lock and reads the snapshot.
fn login_blocking(shared: &Shared, req: LoginRequest) -> Login {
    let (user, cred) = match req {
        LoginRequest::Pass { user, password } => (user, Credential::Plain(Secret::new(password))),
        LoginRequest::Apop {
            user,
            timestamp,
            digest,
        } => (
            user,
            Credential::Apop {
                timestamp,
                digest_hex: digest,
            },
        ),
    };
    let info = match shared.auth.authenticate(&user, &cred) {
        AuthOutcome::Ok(info) => info,
        AuthOutcome::Failed => {
            tracing::info!(user = %user.escape_debug(), "authentication failed");
            return Login::Failed;
        }
        AuthOutcome::TempFail(why) => {
            tracing::warn!(user = %user.escape_debug(), reason = %why, "authentication unavailable");
            return Login::TempFail;
        }
    };
    let template = info.mail.as_deref().unwrap_or(&shared.cfg.mail.location);
    let root = match location::expand(template, &info.user, info.home.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(user = %info.user, error = %e, "bad mail location");
            return Login::PermFail;
        }
    };
    if let Err(e) = mailbox::ensure_maildir(&root) {
        tracing::error!(user = %info.user, path = %root.display(), error = %e, "cannot create Maildir");
        return Login::TempFail;
    }
    let lock = match MaildropLock::acquire(&root) {
        Ok(l) => l,
        Err(LockError::InUse) => return Login::InUse,
        Err(LockError::Io(e)) => {
            tracing::error!(user = %info.user, path = %root.display(), error = %e, "cannot lock maildrop");
            return Login::TempFail;
        }
    };
    match Snapshot::load(&root) {
        Ok(snapshot) => Login::Ok {
            user: info.user,
            lock,
            snapshot: Arc::new(snapshot),
        },
        Err(e) => {
            tracing::error!(user = %info.user, path = %root.display(), error = %e, "cannot read maildrop");
            Login::TempFail
        }
    }
}

/// A unique `<...>` timestamp for the APOP greeting (RFC 1939 §7).
fn apop_timestamp(host: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "<{}.{}.{}.{}@{}>",
        std::process::id(),
        seq,
        now.as_secs(),
        now.subsec_nanos(),
        host
    )
}

/// Displays a peer address, or `unknown`.
struct Peer(Option<SocketAddr>);

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}
