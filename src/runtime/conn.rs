//! The per-connection driver: feeds a [`Session`] and carries out its [`Step`]s.
//!
//! Owns: reading and writing one connection, idle timeouts, running logins, message mapping
//! and commits on the blocking pool, sending messages (the status line, then the file with
//! `sendfile` and the terminator when the message is known to be wire form already, the
//! connection is plaintext and the message large enough to map, so only the kernel reads it;
//! otherwise `pread` in chunks (64 KiB; 256 KiB after the first for a message of 1 MiB or
//! more) through a [`StreamTransform`], so a file truncated by another process reads short
//! and can never raise SIGBUS), the session's handle on its
//! maildrop's directory that messages are opened from ([`RootDir`]), holding and releasing
//! the maildrop lock, and the login/logout log lines. Also the TLS transport: the handshake
//! before the greeting on an implicit-TLS listener and after `+OK` to STLS, both bounded by
//! `tls.handshake_timeout_secs`. Under TLS a message goes from its mapping through rustls
//! (which copies it once, encrypting) and every write is flushed; the vectored raw
//! `sendmsg` is for plaintext only.
//!
//! Logins: credentials (USER/PASS, APOP, SASL) are checked on the blocking pool. For SASL the
//! driver answers `Step::SaslChallenge` with a random nonce (and, for SCRAM, the user's
//! `ScramSecret`, looked up on the blocking pool and kept until the proof arrives). Per-IP
//! penalties (see `Registry::penalty_*`): the delay owed by the client's address is slept on
//! the executor's timer before the reply to every login attempt, and a failure raises it on
//! every core before the `-ERR` is sent.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::server::TlsStream;
use glommio::net::TcpStream;

use super::limits::{self, ConnSlot, UserSlot};
use super::ops::ListenerSpec;
use super::{sys, Registry, Shared};
use crate::auth::penalty::ip_key;
use crate::auth::{scheme, AuthOutcome, Credential, ScramAlg, ScramSecret, Secret};
use crate::mailbox::{
    self, location, map, LockError, MaildropLock, MappedFile, Snapshot, StreamTransform, TERMINATOR,
};
use crate::metrics::{LoginOutcome, Penalty, Refusal};
use crate::protocol::{
    AbortReason, ConnInfo, LoginRequest, LoginResult, Mechanism, RetrieveError, Session, Step,
};

/// A logged-in session's view of its maildrop: one reference to the shared, immutable
/// snapshot (sizes, UIDLs); the session itself keeps only its deleted marks. Also the
/// user's own LOGIN-DELAY, if their passwd-file entry sets one, for CAPA.
pub(crate) struct Maildrop(Snapshot, Option<u64>);

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
    fn login_delay(&self) -> Option<u64> {
        self.1
    }
}

/// Largest first chunk of a message read and transformed at once: most messages are smaller,
/// so they cost one `pread` and one `sendmsg`, and their buffers stay in the executor's pool.
const CHUNK: usize = 64 * 1024;
/// Largest later chunk of a message of at least [`LARGE_MESSAGE`] octets. Fewer, larger reads
/// and sends mean fewer system calls and fewer wake-ups of the reader: a 20 MB LF-stored RETR
/// took 12-17 % less server CPU than with 64 KiB chunks (docs/benchmarks.md §3). The chunk
/// and its wire form take about 520 KiB while such a message is being sent.
const LARGE_CHUNK: usize = 256 * 1024;
/// Messages from this size on are read in [`LARGE_CHUNK`]s after the first chunk. Buffers
/// that large are freed after the message rather than kept in the executor's pool, so for
/// a message of a few hundred KiB their allocation costs about what the saved calls gain (a
/// full-download A/B with 256 KiB chunks for every message over 64 KiB showed no gain: a
/// median 9 % more CPU per session in seven pairs, within this host's noise); from 1 MiB
/// on, that cost is spread over the message.
const LARGE_MESSAGE: u64 = 1024 * 1024;
/// Bytes read from the socket at a time; small, since this buffer lives as long as the session
/// (commands are a few dozen octets; a pipelining client or a long AUTH line just takes more
/// reads). 64 keeps an idle connection's task in a smaller allocator size class.
const READ_BUF: usize = 64;

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
///
/// Not an `async fn`: the connection's state is built here, before the future, so that the
/// future holds it once (an `async fn` keeps its arguments in the future for its whole life,
/// next to the `Conn` they are moved into). The task of an idle connection is this future;
/// see docs/architecture.md, "An idle connection's memory".
pub(crate) fn run(
    stream: TcpStream,
    spec: ListenerSpec,
    shared: Arc<Shared>,
    registry: Rc<Registry>,
    id: u64,
) -> impl std::future::Future<Output = ()> {
    let peer = stream.peer_addr().ok();
    let mut c = Conn {
        stream: Transport::Plain(stream),
        implicit_tls: spec.tls,
        shared,
        peer,
        user: None,
        lock: None,
        scram: None,
        registry,
        sent: 0,
        received: 0,
        user_slot: None,
        root_dir: RootDir::NotYet,
        _slot: None,
    };
    // `c` is moved into the future once and served in place (an `async fn` taking `self`
    // by value would hold a second copy of it).
    async move { c.serve(spec, id).await }
}

impl Conn {
    /// Admission (PROXY header, connection limits), then the session.
    async fn serve(&mut self, spec: ListenerSpec, id: u64) {
        // Admission: the PROXY header (from trusted networks only) names the real client,
        // whose address then counts for limits, penalties and logs. Boxed: it is over before
        // the session starts, and unboxed its state (the header read, its timer) would stay
        // in the task for the connection's whole life.
        let Transport::Plain(stream) = &mut self.stream else {
            unreachable!("a new connection is plaintext")
        };
        let mut client_tls = false;
        match Box::pin(admit(
            stream,
            spec,
            &self.shared,
            &mut self.peer,
            &mut client_tls,
        ))
        .await
        {
            Ok(slot) => self._slot = slot,
            Err(refusal) => {
                self.registry.metrics.refused(refusal);
                if !spec.tls && matches!(refusal, Refusal::MaxConnections | Refusal::MaxPerIp) {
                    let _ = self
                        .stream
                        .write_all(b"-ERR [SYS/TEMP] Too many connections, try again later.\r\n")
                        .await;
                }
                self.registry.closed(id, &self.shared);
                return;
            }
        }
        if let Err(e) = self.drive(spec.proxy, client_tls).await {
            tracing::debug!(peer = %Peer(self.peer), error = %e, "connection ended with an error");
        }
        self.registry.closed(id, &self.shared);
        self.release_lock().await;
    }
}

/// Reads the PROXY header on a PROXY listener and takes the connection's place in the
/// connection limits. `peer` becomes the client the header names; `client_tls`, whether the
/// header says that client used TLS to the proxy.
async fn admit(
    stream: &mut TcpStream,
    spec: ListenerSpec,
    shared: &Shared,
    peer: &mut Option<SocketAddr>,
    client_tls: &mut bool,
) -> Result<Option<ConnSlot>, Refusal> {
    if spec.proxy {
        let from = *peer;
        let trusted = from.is_some_and(|p| {
            shared
                .cfg
                .proxy
                .trusted_networks
                .iter()
                .any(|n| n.contains(p.ip()))
        });
        if !trusted {
            tracing::warn!(peer = %Peer(from), "PROXY listener: connection from an untrusted address refused");
            return Err(Refusal::ProxyUntrusted);
        }
        let limit = Duration::from_secs(shared.cfg.proxy.header_timeout_secs);
        let header =
            futures_lite::future::or(async { Some(read_proxy_header(stream).await) }, async {
                glommio::timer::sleep(limit).await;
                None
            })
            .await;
        match header {
            Some(Ok(header)) => {
                // LOCAL / UNKNOWN (health checks): the proxy itself is the peer.
                if let Some(source) = header.source {
                    *peer = Some(source);
                }
                *client_tls = header.client_tls;
            }
            Some(Err(e)) => {
                tracing::warn!(peer = %Peer(from), error = %e, "bad PROXY header; connection closed");
                return Err(Refusal::ProxyBadHeader);
            }
            None => {
                tracing::warn!(peer = %Peer(from), "no complete PROXY header in time; connection closed");
                return Err(Refusal::ProxyBadHeader);
            }
        }
    }
    let Some(p) = *peer else { return Ok(None) };
    match shared.ops.limits.connect(p.ip()) {
        Ok(slot) => Ok(Some(slot)),
        Err(r) => {
            tracing::info!(peer = %p, limit = ?r, "connection refused: limit reached");
            Err(if r == limits::Refused::Total {
                Refusal::MaxConnections
            } else {
                Refusal::MaxPerIp
            })
        }
    }
}

/// Reads exactly the PROXY header (peeking first, so no byte of the session that follows is
/// taken).
async fn read_proxy_header(stream: &mut TcpStream) -> io::Result<crate::proxy::Header> {
    let mut taken: Vec<u8> = Vec::new();
    let mut peeked = vec![0u8; 1024];
    loop {
        let n = stream.peek(&mut peeked).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the PROXY header ended",
            ));
        }
        let mut all = taken.clone();
        all.extend_from_slice(&peeked[..n]);
        match crate::proxy::parse(&all) {
            Ok(Some((header, used))) => {
                let mut rest = vec![0u8; used - taken.len()];
                stream.read_exact(&mut rest).await?;
                return Ok(header);
            }
            Ok(None) => {
                // Everything seen so far is header: take it and wait for more.
                let mut part = vec![0u8; n];
                stream.read_exact(&mut part).await?;
                taken.extend_from_slice(&part);
                if taken.len() > crate::proxy::V2_MAX {
                    return Err(io::Error::other("PROXY header too long"));
                }
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

struct Conn {
    stream: Transport,
    implicit_tls: bool,
    shared: Arc<Shared>,
    peer: Option<SocketAddr>,
    user: Option<String>,
    lock: Option<MaildropLock>,
    /// The SCRAM secret looked up for the exchange in progress.
    scram: Option<Box<ScramSecret>>,
    /// This core's registry (metrics).
    registry: Rc<Registry>,
    /// Bytes written to / read from the client (plaintext side), for the logout line.
    sent: u64,
    received: u64,
    /// The logged-in user's place in the per-user limit.
    user_slot: Option<UserSlot>,
    /// A handle on the maildrop's directory once the session retrieves messages.
    root_dir: RootDir,
    /// The connection's place in the connection limits, given back on drop.
    _slot: Option<ConnSlot>,
}

/// Directory handles held at once on one core. A session takes one at its first RETR or TOP
/// and keeps it to the end (so an idle logged-in session holds no descriptor but its
/// socket); while this many are held on its core, a session opens its messages by their
/// full paths instead.
const MAX_ROOT_DIRS: usize = 256;

thread_local! {
    /// [`HeldDir`]s alive on this thread (this executor).
    static ROOT_DIRS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A session's handle on its maildrop's directory, so that opening each message looks up
/// `cur/<name>` or `new/<name>` from there instead of every directory from `/` (about half of
/// the path lookup's cost per message was the directories above the maildrop).
enum RootDir {
    /// No message retrieved yet.
    NotYet,
    Held(HeldDir),
    /// Not in the kernel's caches, or [`MAX_ROOT_DIRS`] held on this core: full paths.
    Unavailable,
}

/// One of this core's [`MAX_ROOT_DIRS`].
struct HeldDir(std::os::fd::OwnedFd);

impl Drop for HeldDir {
    fn drop(&mut self) {
        ROOT_DIRS.with(|n| n.set(n.get() - 1));
    }
}

/// The result of a login attempt done on the blocking pool.
enum Login {
    Ok {
        user: String,
        lock: MaildropLock,
        snapshot: Snapshot,
        /// SCRAM ServerSignature, for the server-final message.
        scram_signature: Option<Vec<u8>>,
        /// The session's place in the per-user limit.
        user_slot: UserSlot,
        /// The user's own LOGIN-DELAY (passwd-file), if any.
        login_delay: Option<u64>,
    },
    Failed,
    InUse,
    TempFail,
    PermFail,
    /// Credentials valid, but LOGIN-DELAY or the per-user limit says no.
    Refused(limits::Refused),
}

impl Conn {
    /// `proxied`: the connection came through a PROXY listener (its peer is the client the
    /// header named); `client_tls`: its PROXY v2 header said the client used TLS to the proxy.
    async fn drive(&mut self, proxied: bool, client_tls: bool) -> io::Result<()> {
        self.stream.tcp()?.set_nodelay(true)?;
        // Settings are read from `self.shared` where they are used rather than kept in
        // locals: this future lives as long as the connection (see docs/architecture.md,
        // "An idle connection's memory").
        let login_deadline = std::time::Instant::now()
            + Duration::from_secs(self.shared.cfg.limits.login_deadline_secs);
        if self.implicit_tls {
            if let Err(e) = Box::pin(self.start_tls()).await {
                self.registry.metrics.tls_handshake_failed();
                tracing::debug!(peer = %Peer(self.peer), error = %e, "implicit TLS handshake failed");
                return Ok(());
            }
        }
        self.stream
            .tcp()?
            .set_read_timeout(Some(self.login_timeout()))?;
        self.stream
            .tcp()?
            .set_write_timeout(Some(self.idle_timeout()))?;
        let loopback = self.peer.is_some_and(|p| p.ip().is_loopback());
        // A proxy that terminates TLS (nginx `mail`) talks USER/PASS to us in plaintext for
        // clients it made use TLS; `proxy.plaintext_auth` says it does.
        let tls_at_proxy = proxied && self.shared.cfg.proxy.plaintext_auth;
        let info = ConnInfo {
            apop_timestamp: self
                .shared
                .cfg
                .server
                .apop
                .then(|| apop_timestamp(&self.shared.hostname)),
            plaintext_auth: loopback
                || tls_at_proxy
                || self.shared.cfg.auth.insecure_plaintext_auth,
            stls: self.shared.tls.is_some() && !self.implicit_tls,
            // HAProxy `send-proxy-v2-ssl`: the trusted header says the client's connection is
            // TLS (PP2_CLIENT_SSL). It counts as secure as TLS here (Dovecot: `secured`):
            // plaintext auth allowed, and no STLS inside the client's TLS.
            secure: self.implicit_tls || client_tls,
            sasl: self.shared.sasl,
            login_delay_per_user: self.shared.auth.login_delay_per_user(),
        };
        // Boxed: it lives as long as the connection, and keeping it out of the task future
        // keeps the task smaller (see docs/architecture.md, "An idle connection's memory").
        let mut session: Box<Session<Maildrop>> =
            Box::new(Session::new(self.shared.session_cfg.clone(), info));
        let mut out = spare::take_reply();
        session.greeting(&mut out);
        let mut buf = [0u8; READ_BUF];
        loop {
            let step = session.poll(&mut out);
            session.take_command_counts(|k, n| self.registry.metrics.command(k, n));
            match step {
                Step::NeedInput => {
                    self.flush(&mut out).await?;
                    // Waiting for input may take minutes: hold no buffers meanwhile.
                    session.shrink_if_idle();
                    spare::give_reply(std::mem::take(&mut out));
                    if !session.logged_in() {
                        // Before login, idle time and total time are both bounded.
                        let left =
                            login_deadline.saturating_duration_since(std::time::Instant::now());
                        if left.is_zero() {
                            session.abort(&mut out, AbortReason::IdleTimeout);
                            self.finish(&mut out).await;
                            self.log_logout(&session, "login deadline");
                            return Ok(());
                        }
                        self.stream
                            .tcp()?
                            .set_read_timeout(Some(self.login_timeout().min(left)))?;
                    }
                    let n = match self.stream.read(&mut buf).await {
                        Ok(n) => n,
                        // A TLS peer that closed without close_notify: an ordinary disconnect.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                            session.abort(&mut out, AbortReason::IdleTimeout);
                            self.finish(&mut out).await;
                            self.log_logout(&session, "idle timeout");
                            return Ok(());
                        }
                        Err(e) => return Err(e),
                    };
                    if n == 0 {
                        if self.registry.stopping.get() {
                            session.abort(&mut out, AbortReason::Shutdown);
                            self.finish(&mut out).await;
                            self.log_logout(&session, "shutdown");
                        } else {
                            self.log_logout(&session, "disconnected");
                        }
                        return Ok(());
                    }
                    self.received += n as u64;
                    self.registry.metrics.received(n);
                    out = spare::take_reply();
                    session.feed(&buf[..n]);
                }
                Step::Flush => self.flush(&mut out).await?,
                Step::Login(req) => {
                    let idle = self.idle_timeout();
                    Box::pin(self.on_login(&mut session, &mut out, *req.0, idle)).await?;
                }
                Step::SaslChallenge(ch) => {
                    Box::pin(self.on_sasl_challenge(&mut session, &mut out, *ch)).await;
                }
                Step::Retrieve { index, lines } => {
                    Box::pin(self.on_retrieve(&mut session, &mut out, index, lines)).await?;
                }
                Step::Commit => {
                    Box::pin(self.on_commit(&mut session, &mut out)).await;
                }
                Step::StartTls => {
                    // The session has already dropped anything pipelined behind STLS.
                    self.flush(&mut out).await?;
                    if let Err(e) = Box::pin(self.start_tls()).await {
                        self.registry.metrics.tls_handshake_failed();
                        tracing::debug!(peer = %Peer(self.peer), error = %e, "STLS handshake failed");
                        return Ok(());
                    }
                    self.stream
                        .tcp()?
                        .set_read_timeout(Some(self.login_timeout()))?;
                    session.tls_started();
                }
                Step::Close => {
                    // Free the maildrop before the final reply, so a client that logs in
                    // again right after QUIT is not told the maildrop is in use.
                    self.release_lock().await;
                    self.finish(&mut out).await;
                    self.log_logout(&session, "logout");
                    return Ok(());
                }
            }
        }
    }

    // The steps that wait on something other than the socket. Each runs as its own boxed
    // future, so the connection's task does not carry their locals while it is idle.

    /// `Step::Login`: verify, lock, snapshot; penalties; the reply.
    async fn on_login(
        &mut self,
        session: &mut Session<Maildrop>,
        out: &mut Vec<u8>,
        req: LoginRequest,
        idle_timeout: Duration,
    ) -> io::Result<()> {
        // A penalised address waits before any reply to its next attempt (a SCRAM attempt
        // waited before its challenge: see `on_sasl_challenge`).
        let key = self.peer.map(|p| ip_key(p.ip()));
        let scram = self.scram.take().map(|s| *s);
        let owed = match (key, &scram) {
            (Some(k), None) => self.registry.penalty_delay(k),
            _ => Duration::ZERO,
        };
        let result = self.login(req, scram).await;
        let mut outcome = None;
        let result = match result {
            Login::Ok {
                user,
                lock,
                snapshot,
                scram_signature,
                user_slot,
                login_delay,
            } => {
                self.user_slot = Some(user_slot);
                if let Some(k) = key {
                    self.registry.penalty_success(&self.shared, k);
                }
                if !owed.is_zero() {
                    glommio::timer::sleep(owed).await;
                }
                if let Some(sig) = scram_signature {
                    session.set_scram_signature(sig);
                }
                tracing::info!(user = %user, peer = %Peer(self.peer), messages = snapshot.messages().len(), "login");
                self.user = Some(user);
                self.lock = Some(lock);
                self.stream.tcp()?.set_read_timeout(Some(idle_timeout))?;
                LoginResult::Ok(Maildrop(snapshot, login_delay))
            }
            Login::Failed => {
                if let Some(k) = key {
                    let (level, delay) = self.registry.penalty_failure(&self.shared, k);
                    if level > 0 {
                        tracing::info!(
                            peer = %Peer(self.peer),
                            shard = self.registry.shard(),
                            penalty = level,
                            delay_ms = delay.as_millis() as u64,
                            "login penalty"
                        );
                    }
                    let delay = delay.max(owed);
                    if !delay.is_zero() {
                        self.registry.metrics.penalty(Penalty::AuthFailureDelay);
                        glommio::timer::sleep(delay).await;
                    }
                }
                LoginResult::Failed
            }
            Login::InUse => LoginResult::InUse,
            Login::TempFail => LoginResult::TempFail,
            Login::PermFail => LoginResult::PermFail,
            Login::Refused(limits::Refused::LoginDelay) => LoginResult::LoginDelay,
            Login::Refused(_) => {
                outcome = Some(LoginOutcome::MaxPerUser);
                LoginResult::InUse
            }
        };
        self.count_login(&result, outcome);
        session.login_done(out, result);
        if session.is_closed() && !session.logged_in() {
            self.registry.metrics.penalty(Penalty::AuthFailuresClose);
        }
        Ok(())
    }

    /// `Step::SaslChallenge`: CRAM-MD5's challenge, or SCRAM's server-first message.
    async fn on_sasl_challenge(
        &mut self,
        session: &mut Session<Maildrop>,
        out: &mut Vec<u8>,
        ch: crate::protocol::SaslChallenge,
    ) {
        let nonce = crate::auth::scheme::sasl_nonce();
        match ch.mechanism {
            Mechanism::CramMd5 => {
                let challenge = format!("<{nonce}@{}>", self.shared.hostname);
                session.sasl_challenge(out, &challenge, None);
            }
            mech => {
                // A penalised address waits before the key derivation (PBKDF2 for a
                // plaintext password or an unknown user, about 1 ms of CPU), as it waits
                // before a password check: else it could have keys derived at full speed.
                // The login that follows does not wait again for the same attempt.
                let owed = self.peer.map_or(Duration::ZERO, |p| {
                    self.registry.penalty_delay(ip_key(p.ip()))
                });
                if !owed.is_zero() {
                    self.registry.metrics.penalty(Penalty::AuthFailureDelay);
                    tracing::info!(peer = %Peer(self.peer), delay_ms = owed.as_millis() as u64, "penalised address waits before the SCRAM exchange");
                    glommio::timer::sleep(owed).await;
                }
                let alg = scram_alg(mech);
                let user = ch.user.clone().unwrap_or_default();
                let auth = self.shared.auth.clone();
                // May derive keys from a plaintext password (PBKDF2): off the executor.
                let looked_up = {
                    let user = user.clone();
                    off_executor(move || auth.scram_secret(&user, alg)).await
                };
                // A lookup that panicked: the exchange goes on with the secret an unknown
                // user gets, so it fails like a wrong password.
                let secret =
                    looked_up.unwrap_or_else(|Panicked| crate::auth::fake_scram_secret(&user, alg));
                session.sasl_challenge(out, &nonce, Some((&secret.salt, secret.iterations)));
                self.scram = Some(Box::new(secret));
            }
        }
    }

    /// The session's handle on its maildrop's directory ([`RootDir`]), opened at the first
    /// call if this core holds fewer than [`MAX_ROOT_DIRS`] and the kernel has it cached.
    fn root_dir(&mut self, snapshot: &Snapshot) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        if let RootDir::NotYet = self.root_dir {
            let room = ROOT_DIRS.with(|n| n.get()) < MAX_ROOT_DIRS;
            self.root_dir = match room.then(|| snapshot.open_root_cached()) {
                Some(Ok(fd)) => {
                    ROOT_DIRS.with(|n| n.set(n.get() + 1));
                    RootDir::Held(HeldDir(fd))
                }
                Some(Err(_)) | None => RootDir::Unavailable,
            };
        }
        match &self.root_dir {
            RootDir::Held(dir) => Some(dir.0.as_fd()),
            RootDir::NotYet | RootDir::Unavailable => None,
        }
    }

    /// `Step::Retrieve`: open (from the kernel's caches here, else on the blocking pool) and
    /// send one message.
    async fn on_retrieve(
        &mut self,
        session: &mut Session<Maildrop>,
        out: &mut Vec<u8>,
        index: usize,
        lines: Option<u64>,
    ) -> io::Result<()> {
        let Some(Maildrop(snapshot, _)) = session.maildrop() else {
            session.retrieve_failed(out, RetrieveError::Temporary);
            return Ok(());
        };
        let snapshot = snapshot.clone();
        // Zero-copy only where nothing but the kernel reads the mapping: a plaintext RETR
        // of a message known to be wire form already (from the index, or from an earlier
        // RETR of it), and large enough (`mail.map_min_size`) that the hop to the blocking
        // pool, where it is mapped, costs less than the copies it saves. Everything else
        // is read with pread and transformed, so a file that another process truncates
        // reads short instead of raising SIGBUS.
        let zero_copy = lines.is_none()
            && matches!(self.stream, Transport::Plain(_))
            && snapshot.messages()[index].entry.size >= self.shared.cfg.mail.map_min_size
            && snapshot.is_wire_form(index);
        let started = std::time::Instant::now();
        // A message whose directory entry, inode and first bytes are cached is
        // opened and read right here; anything that would wait for the disk (or
        // a moved message) goes to the blocking pool, so a cold mailbox never
        // stalls this core. Mappings are made there too (pre-faulted).
        let cached = if zero_copy {
            None
        } else {
            let root = self.root_dir(&snapshot);
            open_body_cached(&snapshot, index, root)
        };
        let opened = match cached {
            Some(body) => Ok(body),
            None => {
                self.registry.metrics.blocking_read();
                let snapshot = snapshot.clone();
                flat(off_executor(move || open_body(&snapshot, index, zero_copy)).await)
            }
        };
        match opened {
            Ok(body) => {
                session.retrieve_ready(out);
                let (taken, unaltered) = self.send_body(out, body, lines).await?;
                if unaltered {
                    snapshot.learn_wire_form(index);
                }
                if lines.is_some() {
                    session.count_top_octets(taken);
                }
                self.registry
                    .metrics
                    .retrieved(lines.is_some(), started.elapsed());
            }
            Err(e) if e.get_ref().is_some_and(|i| i.is::<Compressed>()) => {
                let path = snapshot.path(index);
                tracing::error!(user = ?self.user, index, path = %path.display(), error = %e, "message not sent: corepop does not decompress");
                session.retrieve_failed(out, RetrieveError::Unreadable);
            }
            Err(e) => {
                tracing::warn!(user = ?self.user, index, error = %e, "cannot open message");
                let kind = if e.kind() == io::ErrorKind::NotFound {
                    RetrieveError::Gone
                } else {
                    RetrieveError::Temporary
                };
                session.retrieve_failed(out, kind);
            }
        }
        Ok(())
    }

    /// `Step::Commit`: the UPDATE state's deletions, on the blocking pool.
    async fn on_commit(&mut self, session: &mut Session<Maildrop>, out: &mut Vec<u8>) {
        let indexes: Vec<usize> = session.deletions().collect();
        let failed = match session.maildrop() {
            Some(Maildrop(snapshot, _)) => {
                let snapshot = snapshot.clone();
                // Shutdown waits for this UPDATE to finish, even past its grace.
                self.registry
                    .committing
                    .set(self.registry.committing.get() + 1);
                let count = indexes.len();
                // Panicked: what was removed before is unknown; none is reported removed.
                let failed = off_executor(move || snapshot.commit(&indexes))
                    .await
                    .unwrap_or(count);
                self.registry
                    .committing
                    .set(self.registry.committing.get() - 1);
                failed
            }
            None => indexes.len(),
        };
        session.commit_done(out, failed);
    }

    async fn release_lock(&mut self) {
        if let Some(lock) = self.lock.take() {
            let r = flat(off_executor(move || lock.release()).await);
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

    /// Sends the session's last words in `out`, then, under TLS, close_notify, so the client
    /// sees the server end the TLS stream rather than a truncation. Errors are of no more
    /// use: the connection is ending.
    async fn finish(&mut self, out: &mut Vec<u8>) {
        let _ = self.flush(out).await;
        if matches!(self.stream, Transport::Tls(_)) {
            let _ = self.stream.close().await;
        }
    }

    async fn flush(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        if !out.is_empty() {
            self.count_sent(out.len());
            self.stream.write_all(out).await?;
            out.clear();
        }
        // The buffer keeps its capacity (a long listing is flushed in parts); before the
        // driver waits for input it goes back to the executor's spare list, which frees
        // large ones, so an idle connection holds none.
        self.flush_tls().await
    }

    /// Sends the status line in `out` followed by the message's wire form and terminator.
    /// Returns the stored octets sent (TOP's cut applied), and true when that was a whole
    /// message read and found already in wire form (it could have been sent as stored).
    async fn send_body(
        &mut self,
        out: &mut Vec<u8>,
        body: Body,
        lines: Option<u64>,
    ) -> io::Result<(u64, bool)> {
        match body {
            Body::Mapped { map, file, ends_lf } => {
                // Already wire form: the status line, then the file with `sendfile` (page
                // cache to socket, no copy in user space; the mapping keeps the pre-faulted
                // pages and gives glommio something to write while it waits for room),
                // then the terminator.
                let tail: &[u8] = if ends_lf { TERMINATOR } else { b"\r\n.\r\n" };
                self.write_parts(&[out]).await?;
                out.clear();
                // Plaintext only (`send_file` refuses TLS), so nothing to flush.
                self.send_file(&file, map.bytes()).await?;
                self.write_parts(&[tail]).await?;
                Ok((map.len() as u64, false))
            }
            Body::Read {
                mut file,
                end,
                mut chunk,
                mut len,
                mut eof,
                mut offset,
            } => {
                let mut t = match lines {
                    None => StreamTransform::retr(),
                    Some(k) => StreamTransform::top(k),
                };
                let mut wire = spare::take();
                loop {
                    wire.clear();
                    t.push(&chunk[..len], &mut wire);
                    let done = eof || t.is_done();
                    if done {
                        t.finish(&mut wire);
                    }
                    // The status line and the first chunk leave together.
                    self.write_parts(&[out, &wire]).await?;
                    out.clear();
                    if done {
                        spare::give(wire);
                        spare::give(chunk);
                        self.flush_tls().await?;
                        let whole = lines.is_none() && t.consumed() == end;
                        return Ok((t.consumed(), whole && t.unaltered()));
                    }
                    offset += len as u64;
                    (len, eof) = match read_chunk(&file, &mut chunk, offset, end, true) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            self.registry.metrics.blocking_read();
                            let mut c = std::mem::take(&mut chunk);
                            // Panicked: the message cannot be finished; the `?` ends
                            // the connection.
                            let (f, c, r) = off_executor(move || {
                                let r = read_chunk(&file, &mut c, offset, end, false);
                                (file, c, r)
                            })
                            .await?;
                            (file, chunk) = (f, c);
                            r?
                        }
                        r => r?,
                    };
                }
            }
        }
    }

    /// Sends `file`, whose contents `map` maps, on a plaintext connection: `sendfile` while
    /// the socket takes it; when its buffer is full, a small piece of the mapping through
    /// glommio, which parks the task until there is room. A file that shrinks meanwhile
    /// ends the connection (the client cannot be sent what was announced).
    async fn send_file(&mut self, file: &std::fs::File, map: &[u8]) -> io::Result<()> {
        self.count_sent(map.len());
        let Transport::Plain(tcp) = &mut self.stream else {
            return Err(io::Error::other("sendfile needs a plaintext connection"));
        };
        let mut off = 0;
        while off < map.len() {
            let n = match sys::sendfile(&*tcp, file, off as u64, map.len() - off) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "message file shrank while being sent",
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    tcp.write(&map[off..map.len().min(off + 4096)]).await?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e),
            };
            off += n;
        }
        Ok(())
    }

    fn login_timeout(&self) -> Duration {
        Duration::from_secs(self.shared.cfg.limits.login_timeout_secs)
    }

    fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.shared.cfg.limits.idle_timeout_secs)
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
        self.count_sent(parts.iter().map(|p| p.len()).sum());
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

    async fn login(&self, req: LoginRequest, scram: Option<ScramSecret>) -> Login {
        let shared = self.shared.clone();
        off_executor(move || login_blocking(&shared, req, scram))
            .await
            .unwrap_or(Login::TempFail)
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
            bytes = format_args!("{}/{}", self.received, self.sent),
            "logout"
        );
    }

    fn count_sent(&mut self, n: usize) {
        self.sent += n as u64;
        self.registry.metrics.sent(n);
    }

    /// Counts a login's outcome (`outcome` overrides the one read from `result`).
    fn count_login(&self, result: &LoginResult<Maildrop>, outcome: Option<LoginOutcome>) {
        let m = &self.registry.metrics;
        let o = outcome.unwrap_or(match result {
            LoginResult::Ok(_) => LoginOutcome::Ok,
            LoginResult::Failed => LoginOutcome::Failed,
            LoginResult::InUse => LoginOutcome::InUse,
            LoginResult::TempFail => LoginOutcome::TempFail,
            LoginResult::PermFail => LoginOutcome::PermFail,
            LoginResult::LoginDelay => LoginOutcome::LoginDelay,
            #[allow(unreachable_patterns)]
            _ => LoginOutcome::Other,
        });
        if o == LoginOutcome::InUse {
            m.lock_conflict();
        }
        m.login(o);
    }
}

/// A message opened for sending.
enum Body {
    /// Mapped (and pre-faulted); known to be wire form. `ends_lf` was read with pread, not
    /// through the mapping. Sent from `file` with `sendfile`.
    Mapped {
        map: MappedFile,
        file: std::fs::File,
        ends_lf: bool,
    },
    /// To be read chunk by chunk with pread up to `end` (its size at open); `chunk[..len]`
    /// holds the bytes at `offset` (the rest of `chunk` is scratch), and `eof` says the
    /// message ends with them.
    Read {
        file: std::fs::File,
        end: u64,
        chunk: Vec<u8>,
        len: usize,
        eof: bool,
        offset: u64,
    },
}

/// Spare buffers, one set per executor thread ([`Spares`](crate::protocol::spare::Spares)):
/// the pread chunk and the transformed bytes of a RETR or TOP come from here and go back
/// when the transfer ends, and so do reply buffers between commands, so a steady stream of
/// commands and retrievals does not allocate (or zero) them each time, and a connection
/// holds none while it waits for its next command. A body buffer keeps its length when it
/// is given back: all of it is initialised, so a chunk read into it needs no zeroing.
mod spare {
    use crate::protocol::spare::Spares;

    thread_local! {
        /// Message-body buffers: enough for the connections that are sending a message at
        /// the same moment on one core, which a loaded core rarely exceeds; a 64 KiB chunk
        /// never needs more than the largest kept (buffers grown for the 256 KiB chunks of a
        /// message of 1 MiB or more are freed when it has been sent).
        static BODIES: Spares = const { Spares::new(32, 2 * super::CHUNK + 64) };
        /// Reply buffers (status lines, listings): a connection takes one when a command
        /// arrives and gives it back, empty, before it waits for the next, so an idle
        /// connection holds none and a busy core allocates none. Long listings are freed.
        static REPLIES: Spares = const { Spares::new(64, 4096) };
    }

    pub fn take() -> Vec<u8> {
        BODIES.with(Spares::take).unwrap_or_default()
    }

    pub fn give(buf: Vec<u8>) {
        BODIES.with(|s| s.give(buf));
    }

    pub fn take_reply() -> Vec<u8> {
        REPLIES
            .with(Spares::take)
            .unwrap_or_else(|| Vec::with_capacity(256))
    }

    pub fn give_reply(mut buf: Vec<u8>) {
        buf.clear();
        REPLIES.with(|s| s.give(buf));
    }
}

/// Runs `f` on glommio's blocking pool. The future is boxed: glommio's is ~700 bytes, and a
/// connection's task would otherwise carry that space for its whole life, idle or not.
///
/// A panic in `f` (a bug) comes back as [`Panicked`]: glommio 0.9 does not catch it, so
/// the pool's thread would die and this task wait forever, holding the user's maildrop
/// lock. Caught, the unwinding drops what `f` owned (the lock of a login, files) and the
/// caller answers `-ERR [SYS/TEMP]` or ends the connection; the panic message is logged by
/// the panic hook.
fn off_executor<F, R>(f: F) -> Pin<Box<impl std::future::Future<Output = Result<R, Panicked>>>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    Box::pin(glommio::executor().spawn_blocking(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| Panicked)
    }))
}

/// Work on the blocking pool panicked ([`off_executor`]).
#[derive(Debug)]
struct Panicked;

impl From<Panicked> for io::Error {
    fn from(_: Panicked) -> Self {
        io::Error::other("internal error: blocking work panicked")
    }
}

/// The result of blocking I/O work, a panic in it counting as an I/O error.
fn flat<T>(r: Result<io::Result<T>, Panicked>) -> io::Result<T> {
    r?
}

/// Opens message `index` (blocking): mapped for zero-copy, or with its first chunk read.
fn open_body(snapshot: &Snapshot, index: usize, zero_copy: bool) -> io::Result<Body> {
    use std::os::unix::fs::FileExt;
    let (file, end) = snapshot.open_file(index)?;
    // Sent as stored only if it still has the size the index recorded: Maildir files are
    // never rewritten in place, but a tool that rewrites one anyway (changing its size, as
    // nearly any edit does) must not get its raw bytes sent: a "." line in them would end
    // the message early for the client. The transform sends it correctly stuffed.
    let recorded = snapshot.messages()[index].entry.size;
    if zero_copy && end != recorded {
        tracing::warn!(index, path = %snapshot.path(index).display(), recorded, size = end, "message file changed size since it was indexed (rewritten in place?); sending it through the transform");
    }
    if zero_copy && end == recorded {
        // Checked before mapping: a refused file is not mapped and pre-faulted for nothing.
        let mut head = [0u8; mailbox::COMPRESSION_MAGIC_LEN];
        let n = file.read_at(&mut head, 0)?;
        refuse_compressed(&head[..n])?;
        let map = MappedFile::from_file(&file, end)?;
        let mut last = [b'\n'];
        if !map.is_empty() {
            file.read_exact_at(&mut last, map.len() as u64 - 1)?;
        }
        return Ok(Body::Mapped {
            map,
            file,
            ends_lf: last[0] == b'\n',
        });
    }
    first_chunk(file, end, Vec::new(), false).map_err(|(e, _)| e)
}

/// [`open_body`] (not mapped) on the executor, using only what the kernel has cached:
/// `None` when that is not enough, or on any error (the blocking path then reports it).
fn open_body_cached(
    snapshot: &Snapshot,
    index: usize,
    root: Option<std::os::fd::BorrowedFd<'_>>,
) -> Option<Body> {
    let (file, end) = snapshot.open_file_cached(index, root).ok()?;
    first_chunk(file, end, spare::take(), true)
        .map_err(|(_, chunk)| spare::give(chunk))
        .ok()
}

/// `file` (`end` octets at open) as a body to send, its first chunk read into `chunk`
/// ([`read_chunk`]); on failure (also a file stored compressed), the error and the buffer
/// back.
fn first_chunk(
    file: std::fs::File,
    end: u64,
    mut chunk: Vec<u8>,
    cached_only: bool,
) -> Result<Body, (io::Error, Vec<u8>)> {
    let read = read_chunk(&file, &mut chunk, 0, end, cached_only)
        .and_then(|(len, eof)| refuse_compressed(&chunk[..len]).map(|()| (len, eof)));
    match read {
        Ok((len, eof)) => Ok(Body::Read {
            file,
            end,
            chunk,
            len,
            eof,
            offset: 0,
        }),
        Err(e) => Err((e, chunk)),
    }
}

/// A message stored compressed (Dovecot's compression plugin, see
/// [`mailbox::stored_compressed`]): its bytes are not mail and are never sent.
#[derive(Debug)]
struct Compressed(&'static str);

impl std::fmt::Display for Compressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "message file is {}-compressed", self.0)
    }
}

impl std::error::Error for Compressed {}

/// `Err` (an [`io::Error`] carrying [`Compressed`]) when a message starting with `head` is
/// stored compressed.
fn refuse_compressed(head: &[u8]) -> io::Result<()> {
    match mailbox::stored_compressed(head) {
        Some(format) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            Compressed(format),
        )),
        None => Ok(()),
    }
}

/// Reads the next chunk of a message at `offset` into the start of `buf`: up to [`CHUNK`]
/// bytes for the first, [`LARGE_CHUNK`] for later ones of a message of [`LARGE_MESSAGE`] or
/// more, and never past `end`, the file's size when it was opened, so a small message costs
/// one `pread`. `buf` only grows (zero-filled) when it is shorter than that; bytes
/// past the chunk are left as they were. Returns the chunk's length, and true at the end
/// of the message: `end` reached, or the file ended early (truncated by another process:
/// the transfer ends short, the driver closes cleanly). `cached_only`: never wait for the
/// disk ([`map::read_at_cached`]); `WouldBlock` then means "read it on the blocking pool".
fn read_chunk(
    file: &std::fs::File,
    buf: &mut Vec<u8>,
    offset: u64,
    end: u64,
    cached_only: bool,
) -> io::Result<(usize, bool)> {
    use std::os::unix::fs::FileExt;
    let limit = if offset == 0 || end < LARGE_MESSAGE {
        CHUNK
    } else {
        LARGE_CHUNK
    };
    let size = end.saturating_sub(offset).min(limit as u64) as usize;
    if buf.len() < size {
        buf.resize(size, 0);
    }
    let mut n = 0;
    while n < size {
        let at = offset + n as u64;
        let r = if cached_only {
            map::read_at_cached(file, &mut buf[n..size], at)
        } else {
            file.read_at(&mut buf[n..size], at)
        };
        match r {
            Ok(0) => return Ok((n, true)),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((n, offset + n as u64 >= end))
}

/// Verifies credentials, finds the Maildir, takes its lock and reads the snapshot.
///
/// `scram` is the secret looked up for a SCRAM exchange's server-first message.
fn login_blocking(shared: &Shared, req: LoginRequest, scram: Option<ScramSecret>) -> Login {
    let (user, cred) = match req {
        LoginRequest::CramMd5 {
            user,
            challenge,
            digest,
        } => (
            user,
            Credential::CramMd5 {
                challenge,
                digest_hex: digest,
            },
        ),
        LoginRequest::Scram {
            user,
            mechanism,
            auth_message,
            proof,
        } => {
            let alg = scram_alg(mechanism);
            let secret = match scram.filter(|s| s.alg == alg) {
                Some(s) => s,
                None => crate::auth::fake_scram_secret(&user, alg),
            };
            (
                user,
                Credential::Scram {
                    secret,
                    auth_message,
                    proof,
                },
            )
        }
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
    // LOGIN-DELAY (passwd-file extra field `login_delay=N` overrides the configured value)
    // and the per-user session limit.
    let own_delay = info.login_delay();
    let delay = own_delay.map(Duration::from_secs);
    let user_slot = match shared.ops.limits.login(&info.user, delay) {
        Ok(slot) => slot,
        Err(r) => {
            tracing::info!(user = %info.user, refused = ?r, "login refused by limits");
            return Login::Refused(r);
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
    // The lock file lives in the Maildir: a first login finds no Maildir and creates it.
    // (`Snapshot::load_with` makes sure of `cur/`, `new/` and `tmp/` under the lock.)
    let mut acquired = MaildropLock::acquire(&root);
    if matches!(&acquired, Err(LockError::Io(e)) if e.kind() == io::ErrorKind::NotFound) {
        if let Err(e) = mailbox::ensure_maildir(&root) {
            tracing::error!(user = %info.user, path = %root.display(), error = %e, "cannot create Maildir");
            return io_failure(&e);
        }
        acquired = MaildropLock::acquire(&root);
    }
    let lock = match acquired {
        Ok(l) => l,
        Err(LockError::InUse) => return Login::InUse,
        Err(LockError::Io(e)) => {
            tracing::error!(user = %info.user, path = %root.display(), error = %e, "cannot lock maildrop");
            return io_failure(&e);
        }
    };
    match Snapshot::load_with(&root, &shared.mail_opts, Some(&shared.index_cache)) {
        Ok(snapshot) => {
            user_slot.logged_in();
            Login::Ok {
                user: info.user,
                lock,
                snapshot,
                user_slot,
                login_delay: own_delay,
                scram_signature: match &cred {
                    Credential::Scram {
                        secret,
                        auth_message,
                        ..
                    } => Some(scheme::scram_server_signature(secret, auth_message)),
                    _ => None,
                },
            }
        }
        Err(e) => {
            tracing::error!(user = %info.user, path = %root.display(), error = %e, "cannot read maildrop");
            io_failure(&e)
        }
    }
}

/// RFC 3206: a permission problem is a misconfiguration that will not go away by retrying
/// ([SYS/PERM]); other I/O errors may pass ([SYS/TEMP]).
fn io_failure(e: &io::Error) -> Login {
    if e.kind() == io::ErrorKind::PermissionDenied {
        Login::PermFail
    } else {
        Login::TempFail
    }
}

/// The SCRAM hash of a mechanism.
fn scram_alg(mech: Mechanism) -> ScramAlg {
    if mech == Mechanism::ScramSha1 {
        ScramAlg::Sha1
    } else {
        ScramAlg::Sha256
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic on the blocking pool comes back as an error, and the pool still works after
    /// more panics than it has threads: before, the thread died and the caller (a login
    /// holding the user's lock) waited forever.
    #[test]
    fn a_panic_on_the_blocking_pool_is_an_error_not_a_hang() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 << 10)
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(2))
            .spawn(|| async {
                for _ in 0..3 {
                    let r: Result<u32, Panicked> =
                        off_executor(|| panic!("deliberate test panic")).await;
                    assert!(r.is_err());
                }
                off_executor(|| 42).await.unwrap()
            })
            .unwrap();
        assert_eq!(ex.join().unwrap(), 42);
    }
}
