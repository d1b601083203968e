//! The POP3 session state machine (RFC 1939, RFC 2449, RFC 3206), sans I/O.
//!
//! Owns: the states AUTHORIZATION → TRANSACTION → UPDATE, which commands are valid where,
//! message-number resolution (out of range and deleted messages are rejected in one place),
//! deletion marks, every reply's wire text, and the per-session counters for the logout line.
//!
//! Does not own: sockets, files, clocks, password checking or the Maildir. Those are the
//! runtime's; the session asks for them through [`Step`]s and is told the outcome.
//!
//! # Contract (call order)
//! 1. [`Session::new`], then [`Session::greeting`] writes the greeting into `out`.
//! 2. Loop on [`Session::poll`], which writes replies into `out` and returns what it needs:
//!    - [`Step::NeedInput`]: write `out` to the client, read bytes, pass them to
//!      [`Session::feed`], poll again.
//!    - [`Step::Flush`]: `out` is large; write it and poll again.
//!    - [`Step::Login`]: verify the credentials and open the maildrop, then call
//!      [`Session::login_done`]. For a [`LoginRequest::Scram`] that verified, first call
//!      [`Session::set_scram_signature`] with the ServerSignature: the session then answers
//!      with the SCRAM server-final continuation and waits for the client's empty response
//!      before `+OK` (RFC 5034 §4: POP3 has no "additional data with success").
//!    - [`Step::SaslChallenge`]: a CRAM-MD5 or SCRAM exchange needs server data. Make a fresh
//!      random nonce (printable ASCII without `,`; for CRAM-MD5 the whole `<…@host>`
//!      challenge) and, for SCRAM, look up the user's salt and iteration count (fake but
//!      stable ones for unknown users); then call [`Session::sasl_challenge`], which writes the
//!      `+ ` continuation. The runtime keeps the SCRAM keys it looked up until the
//!      [`Step::Login`] with the client's proof.
//!    - [`Step::Retrieve`]: map the message; then call [`Session::retrieve_ready`] (which writes
//!      the status line) and send `out` followed by the message's wire form and terminator, or
//!      call [`Session::retrieve_failed`].
//!    - [`Step::Commit`]: UPDATE state. Remove [`Session::deletions`] from the maildrop, then
//!      call [`Session::commit_done`].
//!    - [`Step::Close`]: write `out` and close the connection. Nothing is deleted unless
//!      [`Step::Commit`] came first.
//! 3. On an idle timeout or shutdown call [`Session::abort`]; it writes a final `-ERR`.
//!
//! # SASL (RFC 5034)
//! `AUTH mech [initial-response]` starts an exchange; while it runs every input line is a
//! base64 client response (up to [`super::sasl::MAX_SASL_LINE`] octets), `*` cancels. PLAIN and
//! LOGIN end in the same [`LoginRequest::Pass`] as USER/PASS and follow the same plaintext
//! policy; CRAM-MD5 ends in [`LoginRequest::CramMd5`], SCRAM in [`LoginRequest::Scram`]
//! (the session checks nonce and channel-binding data; the proof is checked by the runtime).
//! `AUTH` alone lists the mechanisms. Malformed base64 or messages, over-long responses,
//! unknown mechanisms and cancelled exchanges are `-ERR` and count as invalid commands; a
//! refused authorization identity or a SCRAM nonce mismatch counts as a failed login.
//!
//! Time never enters the session: the runtime owns timeouts and delays.

use super::command::{self, Command, MsgNum, ParseError};
use super::line::{Line, LineDecoder, MAX_LINE};
use super::sasl::{self, Mechanism, Mechanisms, SaslError, ScramClientFirst};

/// `out` is handed back to the runtime once it holds this many octets.
pub const FLUSH_AT: usize = 16 * 1024;

/// What the session needs to know about a maildrop: a snapshot taken at login. Message numbers
/// never shift during a session, so indexes are stable.
pub trait Maildrop {
    /// Number of messages in the snapshot (deleted ones included).
    fn count(&self) -> usize;
    /// Size in octets with CRLF line endings, before dot-stuffing (what RETR sends).
    fn octets(&self, index: usize) -> u64;
    /// The unique id listed by UIDL (1–70 characters in 0x21..=0x7E).
    fn uidl(&self, index: usize) -> &str;
    /// The LOGIN-DELAY in effect for the user who logged in, when the runtime knows it;
    /// CAPA announces it after login (RFC 2449 §6.5). `None`: the configured one.
    fn login_delay(&self) -> Option<u64> {
        None
    }
}

/// Settings shared by all sessions of a server.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Text of the greeting after `+OK `.
    pub greeting: String,
    /// Text after the `IMPLEMENTATION` capability.
    pub implementation: String,
    /// After this many invalid commands the session is closed; 0 means never.
    pub max_bad_commands: u32,
    /// After this many failed logins the session is closed; 0 means never.
    pub max_auth_failures: u32,
    /// RFC 2449 LOGIN-DELAY seconds advertised in CAPA; 0: not advertised.
    pub login_delay_secs: u64,
    /// RFC 2449 EXPIRE value advertised in CAPA (`NEVER` or days); `None`: not advertised.
    pub expire: Option<String>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            greeting: "corepop ready.".into(),
            implementation: "corepop".into(),
            max_bad_commands: 20,
            max_auth_failures: 3,
            login_delay_secs: 0,
            expire: None,
        }
    }
}

/// Per-connection facts the runtime knows.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// The `<...>` timestamp for APOP, included in the greeting when set.
    pub apop_timestamp: Option<String>,
    /// Whether USER/PASS may be used on this connection before TLS (loopback or configured).
    /// Once TLS is up they are always allowed.
    pub plaintext_auth: bool,
    /// Whether STLS is offered (a certificate is configured and TLS is not up yet).
    pub stls: bool,
    /// Whether the client's connection is already encrypted: implicit TLS, or TLS the
    /// client used to a proxy that says so (PROXY v2 `PP2_TYPE_SSL`).
    pub secure: bool,
    /// SASL mechanisms the server can verify. PLAIN and LOGIN are withheld (from CAPA and
    /// AUTH) while plaintext authentication is not allowed on the connection.
    pub sasl: Mechanisms,
    /// Whether LOGIN-DELAY may differ from user to user (a passwd-file entry overrides it):
    /// CAPA then says `LOGIN-DELAY n USER` before login and the user's own value after it.
    pub login_delay_per_user: bool,
}

/// Credentials the client presented, for the runtime to verify.
pub enum LoginRequest {
    /// USER then PASS. `password` is the raw rest of the PASS line.
    Pass { user: String, password: Vec<u8> },
    /// APOP: `digest` is the client's hex MD5 of `timestamp` + secret.
    Apop {
        user: String,
        timestamp: String,
        digest: String,
    },
    /// SASL CRAM-MD5: `digest` is the client's lowercase hex HMAC-MD5(secret, challenge).
    CramMd5 {
        user: String,
        challenge: String,
        digest: String,
    },
    /// SASL SCRAM-SHA-1/-256: verify `proof` over `auth_message` with the keys looked up for
    /// the preceding [`Step::SaslChallenge`].
    Scram {
        user: String,
        mechanism: Mechanism,
        auth_message: Vec<u8>,
        proof: Vec<u8>,
    },
}

impl LoginRequest {
    /// The username the client gave.
    pub fn user(&self) -> &str {
        match self {
            LoginRequest::Pass { user, .. }
            | LoginRequest::Apop { user, .. }
            | LoginRequest::CramMd5 { user, .. }
            | LoginRequest::Scram { user, .. } => user,
        }
    }
}

/// What a [`Step::SaslChallenge`] needs: a nonce for `mechanism`, and for SCRAM the salt and
/// iteration count of `user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslChallenge {
    pub mechanism: Mechanism,
    /// The SCRAM authentication identity; `None` for CRAM-MD5.
    pub user: Option<String>,
}

/// Outcome of a login, from the runtime.
pub enum LoginResult<M> {
    /// Credentials valid and maildrop locked and read.
    Ok(M),
    /// Wrong user or password (never says which).
    Failed,
    /// Another session holds the maildrop.
    InUse,
    /// A transient failure (I/O error, overload): try again later.
    TempFail,
    /// A permanent failure (e.g. misconfigured mail location).
    PermFail,
    /// Credentials valid, but the user logged in too recently (RFC 2449 LOGIN-DELAY).
    LoginDelay,
}

/// Why a message could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrieveError {
    /// Removed by another agent since the snapshot.
    Gone,
    /// An I/O error that may pass.
    Temporary,
    /// The stored file is not mail text the server can send (compressed by another server);
    /// retrying will not help.
    Unreadable,
}

/// What the session needs next from the runtime.
#[derive(Debug)]
pub enum Step {
    /// Write `out`, then read more input.
    NeedInput,
    /// `out` is large: write it, then poll again.
    Flush,
    /// Verify credentials and open the maildrop; answer with [`Session::login_done`].
    Login(LoginRequestBox),
    /// A SASL exchange needs a nonce (and SCRAM parameters); answer with
    /// [`Session::sasl_challenge`].
    SaslChallenge(Box<SaslChallenge>),
    /// Send message `index` (zero-based); `lines: Some(k)` for TOP (headers + k body lines).
    Retrieve { index: usize, lines: Option<u64> },
    /// Apply the deletions (UPDATE state); answer with [`Session::commit_done`].
    Commit,
    /// STLS accepted: write `out` (the `+OK`), run the TLS handshake on the connection, then
    /// call [`Session::tls_started`]. Input pipelined behind STLS has already been discarded.
    StartTls,
    /// Write `out` and close.
    Close,
}

/// A [`LoginRequest`] in a box, so that `Step` stays small and secrets are not debug-printed.
pub struct LoginRequestBox(pub Box<LoginRequest>);

impl std::fmt::Debug for LoginRequestBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoginRequest({:?})", self.0.user())
    }
}

/// Counters for the logout log line (Dovecot-like `top=%t/%p, retr=%r/%b, del=%d/%m, size=%s`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub top: u32,
    pub top_octets: u64,
    pub retr: u32,
    pub retr_octets: u64,
    pub deleted: u32,
    pub messages: u32,
    pub size: u64,
}

enum Awaiting {
    Nothing,
    Login,
    SaslChallenge {
        mechanism: Mechanism,
        first: Option<Box<ScramClientFirst>>,
    },
    Tls,
    Retrieve {
        index: usize,
        top: bool,
    },
    Commit,
}

#[derive(Clone, Copy)]
enum ListKind {
    List,
    Uidl,
}

struct Listing {
    kind: ListKind,
    next: usize,
}

struct Transaction<M> {
    drop: M,
    /// Deletion marks, one bit per message; empty until the first DELE.
    deleted: Vec<u64>,
    deleted_count: usize,
    deleted_octets: u64,
    total_octets: u64,
    listing: Option<Listing>,
}

impl<M: Maildrop> Transaction<M> {
    fn new(drop: M) -> Self {
        let total_octets = (0..drop.count()).map(|i| drop.octets(i)).sum();
        Self {
            drop,
            deleted: Vec::new(),
            deleted_count: 0,
            deleted_octets: 0,
            total_octets,
            listing: None,
        }
    }

    fn is_deleted(&self, i: usize) -> bool {
        self.deleted
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn mark_deleted(&mut self, i: usize) {
        if self.deleted.is_empty() {
            self.deleted = vec![0; self.drop.count().div_ceil(64)];
        }
        self.deleted[i / 64] |= 1 << (i % 64);
        self.deleted_count += 1;
        self.deleted_octets += self.drop.octets(i);
    }

    /// The one place a message number from the wire is resolved.
    fn resolve(&self, n: MsgNum) -> Result<usize, &'static str> {
        let i = n.index();
        if i >= self.drop.count() {
            Err("No such message.")
        } else if self.is_deleted(i) {
            Err("Message is deleted.")
        } else {
            Ok(i)
        }
    }
}

/// Where a SASL exchange is: which client response comes next.
enum Exchange {
    Plain,
    LoginUser,
    LoginPass {
        user: String,
    },
    CramMd5 {
        challenge: String,
    },
    ScramFirst {
        mechanism: Mechanism,
    },
    ScramFinal {
        mechanism: Mechanism,
        first: Box<ScramClientFirst>,
        nonce: String,
        server_first: String,
    },
    /// SCRAM succeeded and the server-final was sent: waiting for the empty response.
    Ack,
}

enum State<M> {
    Authorization { user: Option<String> },
    Transaction(Transaction<M>),
    Closed,
}

/// One POP3 session. See the module docs for the call contract.
pub struct Session<M> {
    cfg: std::sync::Arc<SessionConfig>,
    conn: ConnInfo,
    decoder: LineDecoder,
    state: State<M>,
    awaiting: Awaiting,
    bad_commands: u32,
    auth_failures: u32,
    stats: Stats,
    exchange: Option<Exchange>,
    scram_signature: Option<Vec<u8>>,
    /// Command lines seen since [`Session::take_command_counts`] last drained them, by
    /// [`command::KEYWORDS`] index (SASL responses are not commands and are not counted).
    commands: [u16; command::KEYWORDS.len()],
}

fn put_num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn ok(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b"+OK ");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn err(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(b"-ERR ");
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(b"\r\n");
}

const WRONG_STATE: &str = "Command not valid in this state.";
const AUTH_FAILED: &str = "[AUTH] Authentication failed.";
const PLAINTEXT_REFUSED: &str =
    "[AUTH] Plaintext authentication disallowed on non-secure connections; use TLS.";

impl<M: Maildrop> Session<M> {
    /// A new session in the AUTHORIZATION state.
    pub fn new(cfg: std::sync::Arc<SessionConfig>, conn: ConnInfo) -> Self {
        Self {
            cfg,
            conn,
            decoder: LineDecoder::new(),
            state: State::Authorization { user: None },
            awaiting: Awaiting::Nothing,
            bad_commands: 0,
            auth_failures: 0,
            stats: Stats::default(),
            exchange: None,
            scram_signature: None,
            commands: [0; command::KEYWORDS.len()],
        }
    }

    /// Writes the greeting.
    pub fn greeting(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"+OK ");
        out.extend_from_slice(self.cfg.greeting.as_bytes());
        if let Some(ts) = &self.conn.apop_timestamp {
            out.push(b' ');
            out.extend_from_slice(ts.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Bytes received from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.decoder.push(bytes);
    }

    /// Releases buffer memory while the session waits for input.
    pub fn shrink_if_idle(&mut self) {
        self.decoder.shrink_if_idle();
    }

    /// True once logged in (TRANSACTION state).
    pub fn logged_in(&self) -> bool {
        matches!(self.state, State::Transaction(_))
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The maildrop snapshot, once logged in.
    pub fn maildrop(&self) -> Option<&M> {
        match &self.state {
            State::Transaction(t) => Some(&t.drop),
            _ => None,
        }
    }

    /// Hands the command counts since the last call to `f` (keyword, count) and resets them.
    /// The runtime calls it before it reads more input; the counts are bounded by what one
    /// buffer of input can hold, so they never saturate in practice.
    pub fn take_command_counts(&mut self, mut f: impl FnMut(&'static str, u32)) {
        for (k, n) in self.commands.iter_mut().enumerate() {
            if *n > 0 {
                f(command::KEYWORDS[k], u32::from(std::mem::take(n)));
            }
        }
    }

    /// Counters for the logout line.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Zero-based indexes of the messages marked for deletion.
    pub fn deletions(&self) -> impl Iterator<Item = usize> + '_ {
        let t = match &self.state {
            State::Transaction(t) => Some(t),
            _ => None,
        };
        t.into_iter()
            .flat_map(|t| (0..t.drop.count()).filter(|&i| t.is_deleted(i)))
    }

    /// Processes buffered input, writing replies to `out`, until the runtime must act.
    pub fn poll(&mut self, out: &mut Vec<u8>) -> Step {
        debug_assert!(
            matches!(self.awaiting, Awaiting::Nothing),
            "poll() while a result is awaited"
        );
        loop {
            if let State::Closed = self.state {
                return Step::Close;
            }
            if !matches!(self.awaiting, Awaiting::Nothing) {
                // Contract violation by the caller; do not process further input.
                return Step::NeedInput;
            }
            if out.len() >= FLUSH_AT {
                return Step::Flush;
            }
            if let State::Transaction(t) = &mut self.state {
                if t.listing.is_some() {
                    continue_listing(t, out);
                    continue;
                }
            }
            let mut line = [0u8; MAX_LINE];
            // AUTH lines and SASL responses may be longer than a command line.
            let mut long = Vec::new();
            let len = match self.decoder.next_line() {
                None => return Step::NeedInput,
                Some(Line::TooLong) => {
                    if let Some(Exchange::Ack) = self.exchange {
                        // Not the empty response that acknowledges the server-final.
                        self.exchange = None;
                        return self.refuse_server_final(out);
                    } else if self.exchange.is_some() {
                        if let Some(step) = self.sasl_fail(out, SaslError::TooLong) {
                            return step;
                        }
                    } else {
                        self.bad(out, "Line too long.");
                    }
                    continue;
                }
                Some(Line::Complete(l)) if l.len() > MAX_LINE => {
                    long = l.to_vec();
                    l.len()
                }
                Some(Line::Complete(l)) => {
                    line[..l.len()].copy_from_slice(l);
                    l.len()
                }
            };
            let bytes: &[u8] = if long.is_empty() { &line[..len] } else { &long };
            let step = if self.exchange.is_some() {
                self.sasl_input(bytes, out)
            } else {
                let k = command::keyword_index(bytes);
                self.commands[k] = self.commands[k].saturating_add(1);
                match command::parse(bytes) {
                    Ok(cmd) => self.handle(cmd, out),
                    Err(e) => {
                        self.bad_parse(out, e);
                        None
                    }
                }
            };
            // The line may have held a password.
            line.fill(0);
            long.fill(0);
            if let Some(step) = step {
                return step;
            }
        }
    }

    fn bad_parse(&mut self, out: &mut Vec<u8>, e: ParseError) {
        self.bad(out, e.reply());
    }

    /// An invalid command: `-ERR`, and close after too many.
    fn bad(&mut self, out: &mut Vec<u8>, text: &str) {
        self.bad_commands += 1;
        if self.cfg.max_bad_commands > 0 && self.bad_commands >= self.cfg.max_bad_commands {
            err(out, "Too many invalid commands, closing connection.");
            self.state = State::Closed;
        } else {
            err(out, text);
        }
    }

    fn handle(&mut self, cmd: Command<'_>, out: &mut Vec<u8>) -> Option<Step> {
        match cmd {
            Command::Capa => {
                self.capa(out);
                return None;
            }
            Command::Quit => return self.quit(out),
            Command::Auth { mechanism, initial } => return self.auth(mechanism, initial, out),
            _ => {}
        }
        let plaintext_ok = self.plaintext_ok();
        match &mut self.state {
            State::Authorization { user } => match cmd {
                Command::User(name) => {
                    if !plaintext_ok {
                        err(out, PLAINTEXT_REFUSED);
                    } else {
                        *user = Some(name.to_owned());
                        ok(out, "Send your password.");
                    }
                }
                Command::Pass(password) => {
                    if !plaintext_ok {
                        err(out, PLAINTEXT_REFUSED);
                    } else if let Some(user) = user.take() {
                        self.awaiting = Awaiting::Login;
                        return Some(Step::Login(LoginRequestBox(Box::new(LoginRequest::Pass {
                            user,
                            password: password.to_vec(),
                        }))));
                    } else {
                        self.bad(out, "No username given; send USER first.");
                    }
                }
                Command::Apop { user: name, digest } => {
                    *user = None;
                    match &self.conn.apop_timestamp {
                        None => self.bad(out, "APOP is not available."),
                        Some(ts) => {
                            if digest.len() != 32 || !digest.bytes().all(|b| b.is_ascii_hexdigit())
                            {
                                self.bad(out, "Invalid APOP digest.");
                            } else {
                                self.awaiting = Awaiting::Login;
                                return Some(Step::Login(LoginRequestBox(Box::new(
                                    LoginRequest::Apop {
                                        user: name.to_owned(),
                                        timestamp: ts.clone(),
                                        digest: digest.to_owned(),
                                    },
                                ))));
                            }
                        }
                    }
                }
                Command::Stls => {
                    if self.conn.secure {
                        self.bad(out, "TLS is already active.");
                    } else if !self.conn.stls {
                        self.bad(out, "STLS is not available.");
                    } else {
                        *user = None;
                        ok(out, "Begin TLS negotiation now.");
                        // RFC 2595 §4 / RFC 8314: nothing sent before the handshake may be
                        // acted upon after it.
                        self.decoder.clear();
                        self.awaiting = Awaiting::Tls;
                        return Some(Step::StartTls);
                    }
                }
                _ => self.bad(out, WRONG_STATE),
            },
            State::Transaction(t) => match cmd {
                Command::Stat => {
                    out.extend_from_slice(b"+OK ");
                    put_num(out, (t.drop.count() - t.deleted_count) as u64);
                    out.push(b' ');
                    put_num(out, t.total_octets - t.deleted_octets);
                    out.extend_from_slice(b"\r\n");
                }
                Command::List(None) | Command::Uidl(None) => {
                    let kind = if matches!(cmd, Command::List(_)) {
                        ListKind::List
                    } else {
                        ListKind::Uidl
                    };
                    out.extend_from_slice(b"+OK ");
                    put_num(out, (t.drop.count() - t.deleted_count) as u64);
                    out.extend_from_slice(b" messages (");
                    put_num(out, t.total_octets - t.deleted_octets);
                    out.extend_from_slice(b" octets)\r\n");
                    t.listing = Some(Listing { kind, next: 0 });
                }
                Command::List(Some(n)) | Command::Uidl(Some(n)) => match t.resolve(n) {
                    Ok(i) => {
                        out.extend_from_slice(b"+OK ");
                        let kind = if matches!(cmd, Command::List(_)) {
                            ListKind::List
                        } else {
                            ListKind::Uidl
                        };
                        scan_line(t, kind, i, out);
                    }
                    Err(e) => err(out, e),
                },
                Command::Retr(n) | Command::Top(n, _) => match t.resolve(n) {
                    Ok(index) => {
                        let lines = match cmd {
                            Command::Top(_, k) => Some(k),
                            _ => None,
                        };
                        self.awaiting = Awaiting::Retrieve {
                            index,
                            top: lines.is_some(),
                        };
                        return Some(Step::Retrieve { index, lines });
                    }
                    Err(e) => err(out, e),
                },
                Command::Dele(n) => match t.resolve(n) {
                    Ok(i) => {
                        t.mark_deleted(i);
                        ok(out, "Marked to be deleted.");
                    }
                    Err(e) => err(out, e),
                },
                Command::Noop => ok(out, "Nothing happened."),
                Command::Rset => {
                    t.deleted = Vec::new();
                    t.deleted_count = 0;
                    t.deleted_octets = 0;
                    out.extend_from_slice(b"+OK Maildrop has ");
                    put_num(out, t.drop.count() as u64);
                    out.extend_from_slice(b" messages (");
                    put_num(out, t.total_octets);
                    out.extend_from_slice(b" octets).\r\n");
                }
                _ => self.bad(out, WRONG_STATE),
            },
            State::Closed => {}
        }
        None
    }

    fn capa(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"+OK Capability list follows\r\nTOP\r\n");
        if self.plaintext_ok() {
            out.extend_from_slice(b"USER\r\n");
        }
        let mechs = self.offered();
        if !mechs.is_empty() {
            out.extend_from_slice(b"SASL");
            for m in mechs.iter() {
                out.push(b' ');
                out.extend_from_slice(m.name().as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        if self.conn.stls && !self.conn.secure {
            out.extend_from_slice(b"STLS\r\n");
        }
        self.capa_login_delay(out);
        if let Some(expire) = &self.cfg.expire {
            out.extend_from_slice(b"EXPIRE ");
            out.extend_from_slice(expire.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            b"RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nUIDL\r\nIMPLEMENTATION ",
        );
        out.extend_from_slice(self.cfg.implementation.as_bytes());
        out.extend_from_slice(b"\r\n.\r\n");
    }

    /// RFC 2449 §6.5: where the delay may differ per user, the AUTHORIZATION state
    /// announces the configured one tagged `USER`, the TRANSACTION state the user's own;
    /// otherwise the configured one in both states, if any.
    fn capa_login_delay(&self, out: &mut Vec<u8>) {
        let configured = self.cfg.login_delay_secs;
        let per_user = self.conn.login_delay_per_user;
        let (secs, tag): (u64, &[u8]) = match &self.state {
            State::Transaction(t) if per_user || configured > 0 => {
                (t.drop.login_delay().unwrap_or(configured), b"")
            }
            State::Transaction(_) => return,
            _ if per_user => (configured, b" USER"),
            _ if configured > 0 => (configured, b""),
            _ => return,
        };
        out.extend_from_slice(b"LOGIN-DELAY ");
        put_num(out, secs);
        out.extend_from_slice(tag);
        out.extend_from_slice(b"\r\n");
    }

    fn quit(&mut self, out: &mut Vec<u8>) -> Option<Step> {
        match &self.state {
            State::Transaction(t) if t.deleted_count > 0 => {
                self.awaiting = Awaiting::Commit;
                Some(Step::Commit)
            }
            _ => {
                ok(out, "Logging out.");
                self.finish();
                Some(Step::Close)
            }
        }
    }

    fn finish(&mut self) {
        if let State::Transaction(t) = &self.state {
            self.stats.messages = t.drop.count() as u32;
            self.stats.size = t.total_octets;
        }
        self.state = State::Closed;
    }

    /// The TLS handshake after [`Step::StartTls`] succeeded: the connection is now secure.
    /// (If it failed, the runtime closes the connection.)
    pub fn tls_started(&mut self) {
        debug_assert!(matches!(self.awaiting, Awaiting::Tls));
        self.awaiting = Awaiting::Nothing;
        self.conn.secure = true;
        self.decoder.clear();
    }

    /// True when the connection is encrypted.
    pub fn is_secure(&self) -> bool {
        self.conn.secure
    }

    fn plaintext_ok(&self) -> bool {
        self.conn.plaintext_auth || self.conn.secure
    }

    /// Mechanisms offered on this connection now.
    fn offered(&self) -> Mechanisms {
        let mut m = self.conn.sasl;
        if !self.plaintext_ok() {
            m = m.without(Mechanism::Plain).without(Mechanism::Login);
        }
        m
    }

    /// `AUTH [mechanism [initial-response]]`.
    fn auth(
        &mut self,
        mechanism: Option<&str>,
        initial: Option<&str>,
        out: &mut Vec<u8>,
    ) -> Option<Step> {
        let State::Authorization { user } = &mut self.state else {
            self.bad(out, WRONG_STATE);
            return None;
        };
        *user = None;
        let Some(name) = mechanism else {
            // Old Outlook: AUTH without an argument lists the mechanisms.
            out.extend_from_slice(b"+OK List of supported mechanisms follows.\r\n");
            for m in self.offered().iter() {
                out.extend_from_slice(m.name().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
            return None;
        };
        let mech = match Mechanism::from_name(name).filter(|m| self.conn.sasl.contains(*m)) {
            None => {
                self.bad(out, "Unsupported authentication mechanism.");
                return None;
            }
            Some(m) if m.sends_password() && !self.plaintext_ok() => {
                err(out, PLAINTEXT_REFUSED);
                return None;
            }
            Some(m) => m,
        };
        let initial = match initial.map(|ir| sasl::decode_response(ir.as_bytes())) {
            None => None,
            Some(Ok(msg)) => Some(msg),
            Some(Err(e)) => return self.sasl_fail(out, e),
        };
        self.decoder.set_sasl(true);
        let first = match mech {
            Mechanism::Plain => Exchange::Plain,
            Mechanism::Login => Exchange::LoginUser,
            Mechanism::CramMd5 => {
                if initial.is_some() {
                    return self.sasl_fail(out, SaslError::Malformed);
                }
                self.awaiting = Awaiting::SaslChallenge {
                    mechanism: mech,
                    first: None,
                };
                return Some(Step::SaslChallenge(Box::new(SaslChallenge {
                    mechanism: mech,
                    user: None,
                })));
            }
            Mechanism::ScramSha1 | Mechanism::ScramSha256 => {
                Exchange::ScramFirst { mechanism: mech }
            }
        };
        match initial {
            Some(msg) => self.sasl_advance(first, msg, out),
            None => {
                let prompt: &[u8] = match first {
                    Exchange::LoginUser => b"Username:",
                    _ => b"",
                };
                sasl::continuation(out, prompt);
                self.exchange = Some(first);
                None
            }
        }
    }

    /// One client response line during an exchange.
    fn sasl_input(&mut self, line: &[u8], out: &mut Vec<u8>) -> Option<Step> {
        let ex = self.exchange.take()?;
        if let Exchange::Ack = ex {
            self.decoder.set_sasl(false);
            if line.is_empty() {
                ok(out, "Logged in.");
                return None;
            }
            return Some(self.refuse_server_final(out));
        }
        match sasl::decode_response(line) {
            Ok(msg) => self.sasl_advance(ex, msg, out),
            Err(e) => self.sasl_fail(out, e),
        }
    }

    /// The client answered the SCRAM server-final with something other than the empty
    /// response (`*`, data, an over-long line): it does not trust us, so it is not logged in.
    fn refuse_server_final(&mut self, out: &mut Vec<u8>) -> Step {
        self.decoder.set_sasl(false);
        err(out, SaslError::Cancelled.reply());
        self.finish();
        Step::Close
    }

    /// Feeds a decoded client message to the exchange at `ex`.
    fn sasl_advance(&mut self, ex: Exchange, mut msg: Vec<u8>, out: &mut Vec<u8>) -> Option<Step> {
        let r = match ex {
            Exchange::Plain => sasl::parse_plain(&msg)
                .map(|(user, password)| LoginRequest::Pass { user, password }),
            Exchange::LoginUser => match sasl::parse_text(&msg) {
                Ok(user) => {
                    sasl::continuation(out, b"Password:");
                    self.exchange = Some(Exchange::LoginPass { user });
                    return None;
                }
                Err(e) => Err(e),
            },
            Exchange::LoginPass { user } => {
                if msg.is_empty() || msg.contains(&0) {
                    Err(SaslError::Malformed)
                } else {
                    Ok(LoginRequest::Pass {
                        user,
                        password: std::mem::take(&mut msg),
                    })
                }
            }
            Exchange::CramMd5 { challenge } => {
                sasl::parse_cram_md5(&msg).map(|(user, digest)| LoginRequest::CramMd5 {
                    user,
                    challenge,
                    digest,
                })
            }
            Exchange::ScramFirst { mechanism } => match sasl::parse_scram_client_first(&msg) {
                Ok(first) => {
                    let user = first.user.clone();
                    self.awaiting = Awaiting::SaslChallenge {
                        mechanism,
                        first: Some(Box::new(first)),
                    };
                    return Some(Step::SaslChallenge(Box::new(SaslChallenge {
                        mechanism,
                        user: Some(user),
                    })));
                }
                Err(e) => Err(e),
            },
            Exchange::ScramFinal {
                mechanism,
                first,
                nonce,
                server_first,
            } => sasl::parse_scram_client_final(
                &msg,
                &first.gs2_header,
                &nonce,
                mechanism.scram_hash_len(),
            )
            .map(|fin| {
                let auth_message =
                    format!("{},{},{}", first.bare, server_first, fin.without_proof).into_bytes();
                LoginRequest::Scram {
                    user: first.user,
                    mechanism,
                    auth_message,
                    proof: fin.proof,
                }
            }),
            Exchange::Ack => Err(SaslError::Malformed),
        };
        msg.fill(0);
        match r {
            Ok(req) => {
                self.decoder.set_sasl(false);
                self.awaiting = Awaiting::Login;
                Some(Step::Login(LoginRequestBox(Box::new(req))))
            }
            Err(e) => self.sasl_fail(out, e),
        }
    }

    /// Ends the exchange with the `-ERR` for `e`.
    fn sasl_fail(&mut self, out: &mut Vec<u8>, e: SaslError) -> Option<Step> {
        self.exchange = None;
        self.decoder.set_sasl(false);
        match e {
            // Not a failed login, but an invalid command: each SCRAM client-first costs the
            // server a key derivation, and start-and-cancel must not loop without end.
            SaslError::Cancelled => self.bad(out, e.reply()),
            SaslError::AuthzidRefused | SaslError::NonceMismatch | SaslError::BindingMismatch => {
                self.auth_failed(out, e.reply())
            }
            _ => self.bad(out, e.reply()),
        }
        if self.is_closed() {
            Some(Step::Close)
        } else {
            None
        }
    }

    /// A failed login: `-ERR`, and close after too many.
    fn auth_failed(&mut self, out: &mut Vec<u8>, text: &str) {
        self.auth_failures += 1;
        err(out, text);
        if self.cfg.max_auth_failures > 0 && self.auth_failures >= self.cfg.max_auth_failures {
            self.state = State::Closed;
        } else {
            self.state = State::Authorization { user: None };
        }
    }

    /// The answer to a [`Step::SaslChallenge`]: `nonce` is fresh and random (printable ASCII
    /// without `,`); for CRAM-MD5 it is the whole challenge. `scram` is the user's
    /// `(salt, iterations)`; `None` for SCRAM means the lookup failed (`-ERR [SYS/TEMP]`).
    pub fn sasl_challenge(&mut self, out: &mut Vec<u8>, nonce: &str, scram: Option<(&[u8], u32)>) {
        let Awaiting::SaslChallenge { mechanism, first } =
            std::mem::replace(&mut self.awaiting, Awaiting::Nothing)
        else {
            debug_assert!(false, "sasl_challenge() without Step::SaslChallenge");
            return;
        };
        match (mechanism, first, scram) {
            (Mechanism::CramMd5, _, _) => {
                sasl::continuation(out, nonce.as_bytes());
                self.exchange = Some(Exchange::CramMd5 {
                    challenge: nonce.to_owned(),
                });
            }
            (_, Some(first), Some((salt, iterations))) => {
                let server_first =
                    sasl::scram_server_first(&first.client_nonce, nonce, salt, iterations);
                sasl::continuation(out, server_first.as_bytes());
                self.exchange = Some(Exchange::ScramFinal {
                    mechanism,
                    nonce: format!("{}{nonce}", first.client_nonce),
                    first,
                    server_first,
                });
            }
            _ => {
                self.decoder.set_sasl(false);
                err(out, "[SYS/TEMP] Temporary server failure, try again later.");
            }
        }
    }

    /// Before [`Session::login_done`] with `Ok` for a [`LoginRequest::Scram`]: the
    /// ServerSignature to send in the server-final message.
    pub fn set_scram_signature(&mut self, signature: Vec<u8>) {
        self.scram_signature = Some(signature);
    }

    /// The outcome of a [`Step::Login`].
    pub fn login_done(&mut self, out: &mut Vec<u8>, result: LoginResult<M>) {
        debug_assert!(matches!(self.awaiting, Awaiting::Login));
        self.awaiting = Awaiting::Nothing;
        let signature = self.scram_signature.take();
        match result {
            LoginResult::Ok(drop) => {
                match signature {
                    Some(sig) => {
                        sasl::continuation(out, &sasl::scram_server_final(&sig));
                        self.exchange = Some(Exchange::Ack);
                    }
                    None => ok(out, "Logged in."),
                }
                self.state = State::Transaction(Transaction::new(drop));
                // APOP's challenge is of no more use; a logged-in session may be held
                // for a long time.
                self.conn.apop_timestamp = None;
            }
            LoginResult::Failed => self.auth_failed(out, AUTH_FAILED),
            LoginResult::InUse => {
                err(out, "[IN-USE] Mailbox is locked by another POP3 session.");
                self.state = State::Authorization { user: None };
            }
            LoginResult::TempFail => {
                err(out, "[SYS/TEMP] Temporary server failure, try again later.");
                self.state = State::Authorization { user: None };
            }
            LoginResult::PermFail => {
                err(out, "[SYS/PERM] Mailbox is unavailable.");
                self.state = State::Authorization { user: None };
            }
            LoginResult::LoginDelay => {
                err(
                    out,
                    "[LOGIN-DELAY] Minimum time between logins not yet passed.",
                );
                self.state = State::Authorization { user: None };
            }
        }
    }

    /// The message of the last [`Step::Retrieve`] is mapped: writes the `+OK` status line.
    /// The runtime then sends the message's wire form, including its terminator.
    pub fn retrieve_ready(&mut self, out: &mut Vec<u8>) {
        let Awaiting::Retrieve { index, top } = self.awaiting else {
            debug_assert!(false, "retrieve_ready() without Step::Retrieve");
            return;
        };
        self.awaiting = Awaiting::Nothing;
        let State::Transaction(t) = &self.state else {
            return;
        };
        let octets = t.drop.octets(index);
        if top {
            self.stats.top += 1;
            out.extend_from_slice(b"+OK Message follows.\r\n");
        } else {
            self.stats.retr += 1;
            self.stats.retr_octets += octets;
            out.extend_from_slice(b"+OK ");
            put_num(out, octets);
            out.extend_from_slice(b" octets\r\n");
        }
    }

    /// Adds octets sent for TOP (known only to the runtime) to the counters.
    pub fn count_top_octets(&mut self, octets: u64) {
        self.stats.top_octets += octets;
    }

    /// The message of the last [`Step::Retrieve`] could not be read.
    pub fn retrieve_failed(&mut self, out: &mut Vec<u8>, e: RetrieveError) {
        self.awaiting = Awaiting::Nothing;
        match e {
            RetrieveError::Gone => err(out, "Message was removed by another client."),
            RetrieveError::Temporary => err(
                out,
                "[SYS/TEMP] Unable to read the message, try again later.",
            ),
            RetrieveError::Unreadable => err(
                out,
                "[SYS/PERM] The message is stored in a form this server cannot read.",
            ),
        }
    }

    /// The outcome of a [`Step::Commit`]: `failed` messages could not be removed.
    pub fn commit_done(&mut self, out: &mut Vec<u8>, failed: usize) {
        debug_assert!(matches!(self.awaiting, Awaiting::Commit));
        self.awaiting = Awaiting::Nothing;
        if let State::Transaction(t) = &self.state {
            let n = t.deleted_count;
            self.stats.deleted = (n - failed.min(n)) as u32;
            if failed == 0 {
                out.extend_from_slice(b"+OK Logging out, ");
                put_num(out, n as u64);
                out.extend_from_slice(b" messages deleted.\r\n");
            } else {
                out.extend_from_slice(b"-ERR [SYS/TEMP] Could not delete ");
                put_num(out, failed as u64);
                out.extend_from_slice(b" of ");
                put_num(out, n as u64);
                out.extend_from_slice(b" messages; they are still in the maildrop.\r\n");
            }
        }
        self.finish();
    }

    /// Ends the session without UPDATE (idle timeout, shutdown): writes a final `-ERR`.
    /// Deletion marks are forgotten.
    pub fn abort(&mut self, out: &mut Vec<u8>, reason: AbortReason) {
        match reason {
            AbortReason::IdleTimeout => err(out, "Disconnected for inactivity."),
            AbortReason::Shutdown => err(out, "[SYS/TEMP] Server shutting down."),
        }
        self.finish();
    }
}

/// Why the runtime ends a session on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortReason {
    IdleTimeout,
    Shutdown,
}

fn scan_line<M: Maildrop>(t: &Transaction<M>, kind: ListKind, i: usize, out: &mut Vec<u8>) {
    put_num(out, (i + 1) as u64);
    out.push(b' ');
    match kind {
        ListKind::List => put_num(out, t.drop.octets(i)),
        ListKind::Uidl => out.extend_from_slice(t.drop.uidl(i).as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes more lines of a multi-line LIST/UIDL, stopping when `out` is full.
fn continue_listing<M: Maildrop>(t: &mut Transaction<M>, out: &mut Vec<u8>) {
    let Some(listing) = &mut t.listing else {
        return;
    };
    let (kind, mut i) = (listing.kind, listing.next);
    let count = t.drop.count();
    while i < count && out.len() < FLUSH_AT {
        if !t.is_deleted(i) {
            scan_line(t, kind, i, out);
        }
        i += 1;
    }
    if i >= count {
        out.extend_from_slice(b".\r\n");
        t.listing = None;
    } else if let Some(l) = &mut t.listing {
        l.next = i;
    }
}
