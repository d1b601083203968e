//! The runtime: the only module that names glommio.
//!
//! Owns: the executor pool (one executor pinned per core), every executor accepting from the
//! same listening sockets with connections spread evenly over them (`balance`), the
//! per-connection driver that feeds a [`crate::protocol::Session`]
//! and carries out its steps (`conn`), timeouts, running blocking work (password hashing,
//! Maildir scans, mapping files, unlinks) on glommio's blocking thread pool, TLS handshakes
//! (implicit TLS listeners and STLS) with their timeout, graceful shutdown on SIGTERM/SIGINT,
//! and reloading the TLS certificates on SIGHUP. Operations (`ops`): systemd socket
//! activation and notifications, privilege drop before any thread starts, SIGHUP reloads of
//! the configuration and passwd-file; connection limits and LOGIN-DELAY (`limits`); PROXY
//! listeners (in `conn`); the metrics endpoint (`admin`); waking an executor whose thread
//! has stopped making progress (`watchdog`).
//!
//! Executor settings measured on this project's machines (see RUNTIME-NOTES.md):
//! `io_memory(64 KiB)` so that several servers fit an 8 MiB locked-memory limit, and
//! `ring_depth(4096)` so glommio's per-loop timer cancel does not scan a small poll hash.
//!
//! Does not own: protocol rules, the Maildir format or password schemes.

mod admin;
mod balance;
mod conn;
mod limits;
mod ops;
mod sys;
mod watchdog;

pub use ops::ServeOptions;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use glommio::{Latency, LocalExecutorPoolBuilder, PoolPlacement, Shares};

use crate::auth::penalty::{Penalties, PenaltyPolicy};
use crate::auth::{AuthCache, Authenticator, PasswdFile, PasswdOptions};
use crate::config::Config;
use crate::protocol::{Mechanism, Mechanisms, SessionConfig};

/// What every shard shares (read-only; `Send + Sync`).
pub(crate) struct Shared {
    pub cfg: Config,
    pub session_cfg: Arc<SessionConfig>,
    pub auth: Arc<dyn Authenticator>,
    pub hostname: String,
    /// The TLS configuration when a certificate is configured (STLS offered, POP3S served).
    pub tls: Option<crate::tls::Reloadable>,
    /// SASL mechanisms offered (PLAIN/LOGIN still subject to the plaintext policy).
    pub sasl: Mechanisms,
    /// One sender per shard, for telling every core about failed logins (index = shard).
    pub penalty_tx: Vec<flume::Sender<PenaltyEvent>>,
    /// UIDL settings from `[mail]`.
    pub mail_opts: crate::mailbox::LoadOptions,
    /// Mailbox snapshots shared by all cores (read-mostly; validated by directory stamps).
    pub index_cache: crate::mailbox::IndexCache,
    /// Connection limits, the swappable passwd-file, reload counters.
    pub ops: ops::Ops,
    /// Open connections per executor, for spreading new ones evenly.
    pub balance: balance::Balance,
    /// Heartbeats of the executors, and the thread that wakes one that stops beating.
    pub watchdog: Arc<watchdog::Watchdog>,
}

/// A login outcome from one core, for the penalty tables of the others.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PenaltyEvent {
    key: u128,
    at: std::time::Instant,
    failure: bool,
}

/// One shard's penalty table and the receiving end of its channel. Lock-free: only this
/// shard's executor touches it; other shards' failures arrive through the channel and are
/// applied whenever this shard next looks at the table.
pub(crate) struct ShardPenalties {
    shard: usize,
    table: Penalties,
    rx: flume::Receiver<PenaltyEvent>,
}

impl ShardPenalties {
    fn drain(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            if ev.failure {
                self.table.failure(ev.key, ev.at);
            } else {
                self.table.success(ev.key);
            }
        }
    }
}

fn penalty_policy(cfg: &Config) -> PenaltyPolicy {
    PenaltyPolicy {
        base: Duration::from_millis(cfg.auth.failure_delay_ms),
        max: Duration::from_millis(cfg.auth.failure_delay_max_ms),
        reset_after: Duration::from_secs(cfg.auth.penalty_reset_secs),
    }
}

/// The SASL mechanisms to offer: `auth.mechanisms`, or automatically what every user of
/// the authenticator can do.
fn sasl_mechanisms(cfg: &Config, auth: &dyn Authenticator) -> Mechanisms {
    let caps = auth.sasl_capabilities();
    if cfg.auth.mechanisms.is_empty() {
        let mut m = Mechanisms::none()
            .with(Mechanism::Plain)
            .with(Mechanism::Login);
        for (ok, mech) in [
            (caps.cram_md5, Mechanism::CramMd5),
            (caps.scram_sha1, Mechanism::ScramSha1),
            (caps.scram_sha256, Mechanism::ScramSha256),
        ] {
            if ok {
                m = m.with(mech);
            }
        }
        return m;
    }
    let mut m = Mechanisms::none();
    for name in &cfg.auth.mechanisms {
        let Some(mech) = Mechanism::from_name(name) else {
            continue;
        };
        let works = match mech {
            Mechanism::CramMd5 => caps.cram_md5,
            Mechanism::ScramSha1 => caps.scram_sha1,
            Mechanism::ScramSha256 => caps.scram_sha256,
            Mechanism::Plain | Mechanism::Login => true,
        };
        if !works {
            tracing::warn!(
                mechanism = mech.name(),
                "auth.mechanisms: some users' stored passwords cannot be used with this mechanism; they will fail to log in with it"
            );
        }
        m = m.with(mech);
    }
    m
}

/// A listener that is open: its bound address and whether it speaks implicit TLS.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    pub addr: SocketAddr,
    pub tls: bool,
    /// Expects a PROXY protocol header from a trusted load balancer.
    pub proxy: bool,
}

/// Loads the passwd-file named by the configuration.
pub fn load_authenticator(cfg: &Config) -> anyhow::Result<Arc<dyn Authenticator>> {
    let opts = PasswdOptions {
        lowercase_usernames: cfg.auth.lowercase_usernames,
        default_scheme: cfg.auth.default_scheme.clone(),
        allow_weak_schemes: cfg.auth.allow_weak_schemes,
    };
    let mut file = PasswdFile::load(&cfg.auth.passwd_file, opts)
        .with_context(|| format!("loading passwd-file {}", cfg.auth.passwd_file.display()))?;
    if let Some(cache) = AuthCache::new(
        Duration::from_secs(cfg.auth.cache_ttl_secs),
        cfg.auth.cache_size,
    ) {
        file.set_cache(Arc::new(cache));
    }
    check_distinct_maildirs(&file, &cfg.mail.location)?;
    tracing::info!(path = %cfg.auth.passwd_file.display(), users = file.len(), "passwd-file loaded");
    Ok(Arc::new(file))
}

/// Refuses a user database in which two users' mail locations are the same Maildir: each
/// would see, and could delete, the other's mail. Checked at start-up and on every reload.
fn check_distinct_maildirs(file: &PasswdFile, location: &str) -> anyhow::Result<()> {
    let mut seen: std::collections::HashMap<std::path::PathBuf, String> =
        std::collections::HashMap::with_capacity(file.len());
    for entry in file.entries() {
        let info = entry.user_info();
        let template = info.mail.as_deref().unwrap_or(location);
        // A location that does not expand fails that user's login with [SYS/PERM] instead.
        let Ok(path) = crate::mailbox::location::expand(template, &info.user, info.home.as_deref())
        else {
            continue;
        };
        if let Some(other) = seen.insert(path.clone(), info.user.clone()) {
            anyhow::bail!(
                "users {other:?} and {:?} have the same mail location {}: each would see and \
                 delete the other's mail; give every user a Maildir of their own",
                info.user,
                path.display()
            );
        }
    }
    Ok(())
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Penalty events queued for one core at most (about 40 bytes each).
const PENALTY_QUEUE: usize = 1 << 16;

/// Runs the server until SIGTERM or SIGINT. `on_ready` is called with the bound addresses
/// (plaintext listeners first, then implicit-TLS ones) once every listener is open.
pub fn serve(cfg: Config, on_ready: impl FnOnce(&[SocketAddr])) -> anyhow::Result<()> {
    serve_with(cfg, |l| {
        let addrs: Vec<SocketAddr> = l.iter().map(|l| l.addr).collect();
        on_ready(&addrs)
    })
}

/// Like [`serve`], but tells `on_ready` which listeners are implicit TLS (the CLI prints them).
/// Serves as root only if the configuration allows it (tests and trials).
pub fn serve_with(cfg: Config, on_ready: impl FnOnce(&[Listening])) -> anyhow::Result<()> {
    serve_opts(cfg, ServeOptions::default(), on_ready)
}

/// Runs the server with [`ServeOptions`] (privileges, how SIGHUP re-reads the configuration).
///
/// Order matters: files are read and sockets bound first (possibly as root), then root is
/// dropped, and only then do threads start (the signal thread, the admin thread, the
/// executors), so every thread runs with the reduced privileges.
pub fn serve_opts(
    cfg: Config,
    opts: ServeOptions,
    on_ready: impl FnOnce(&[Listening]),
) -> anyhow::Result<()> {
    let swap_auth = ops::SwapAuth::new(load_authenticator(&cfg)?);
    let auth: Arc<dyn Authenticator> = swap_auth.clone();
    let tls = crate::tls::server_config(&cfg.tls)?.map(crate::tls::Reloadable::new);
    let threads = match cfg.server.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let ops::Listeners {
        per_shard,
        bound,
        labels,
    } = ops::open_listeners(&cfg, threads)?;
    let admin_listener = ops::open_admin(&cfg)?;
    ops::drop_privileges(&cfg, opts.allow_root)?;
    let ops_state = ops::Ops::new(&cfg, swap_auth);
    let hostname = if cfg.server.hostname.is_empty() {
        system_hostname()
    } else {
        cfg.server.hostname.clone()
    };
    let session_cfg = Arc::new(SessionConfig {
        greeting: cfg.server.greeting.clone(),
        implementation: "corepop".into(),
        max_bad_commands: cfg.limits.max_bad_commands,
        max_auth_failures: cfg.auth.max_failures,
        login_delay_secs: cfg.limits.login_delay_secs,
        expire: cfg.server.expire.map(|e| e.capa_value()),
    });
    let sasl = sasl_mechanisms(&cfg, &*auth);
    let policy = penalty_policy(&cfg);
    // Bounded: a core drains its channel only when it handles a login, so one that handles
    // none while the others take a flood of failures from many addresses would otherwise
    // queue without limit. When full, events are dropped (`try_send`): that core then
    // counts fewer of the flood's failures, and the cores that see them still do.
    let (penalty_tx, penalty_rx): (Vec<_>, Vec<_>) =
        (0..threads).map(|_| flume::bounded(PENALTY_QUEUE)).unzip();
    let penalty_rx = Arc::new(Mutex::new(
        penalty_rx.into_iter().enumerate().collect::<Vec<_>>(),
    ));
    let mail_opts = cfg.mail.load_options()?;
    let index_cache = crate::mailbox::IndexCache::new(cfg.mail.index_cache_size);
    let watchdog = watchdog::Watchdog::new(threads, watchdog::STALL);
    watchdog.start().context("starting the executor watchdog")?;
    let shared = Arc::new(Shared {
        cfg,
        session_cfg,
        auth,
        hostname,
        tls,
        sasl,
        penalty_tx,
        mail_opts,
        index_cache,
        ops: ops_state,
        balance: balance::Balance::new(threads),
        watchdog,
    });
    let (metrics_tx, metrics_rx): (Vec<_>, Vec<_>) = (0..threads)
        .map(|_| flume::bounded::<admin::SnapshotRequest>(4))
        .unzip();
    let metrics_rx = Arc::new(Mutex::new(metrics_rx));
    if let Some(l) = admin_listener {
        let addr = l.local_addr()?;
        admin::spawn(l, metrics_tx, labels, shared.clone())?;
        println!("corepop: metrics on http://{addr}/metrics");
    }

    // Shutdown: a signal thread drops the only sender; every receiver then wakes at once.
    let (stop_tx, stop_rx) = flume::bounded::<()>(1);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;
    let for_signals = shared.clone();
    let reread = opts.reload;
    let mut last_cfg = shared.cfg.clone();
    std::thread::Builder::new()
        .name("corepop-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == signal_hook::consts::SIGHUP {
                    ops::reload(&for_signals, reread.as_deref(), &mut last_cfg);
                    continue;
                }
                tracing::info!(signal = sig, "shutting down");
                ops::notify_stopping();
                break;
            }
            drop(stop_tx);
        })?;

    on_ready(&bound);

    let placement = if threads <= std::thread::available_parallelism().map_or(1, |n| n.get()) {
        PoolPlacement::MaxSpread(threads, None)
    } else {
        PoolPlacement::Unbound(threads)
    };
    let fds = Arc::new(Mutex::new(per_shard));
    let handles = LocalExecutorPoolBuilder::new(placement)
        .name("corepop")
        .io_memory(64 << 10)
        .ring_depth(4096)
        .blocking_thread_pool_placement(PoolPlacement::Unbound(2))
        .on_all_shards(move || {
            let fds = fds.lock().expect("fd list").pop().unwrap_or_default();
            let shared = shared.clone();
            let stop = stop_rx.clone();
            let metrics_rx = metrics_rx.lock().expect("metrics channels").pop();
            let penalties =
                penalty_rx
                    .lock()
                    .expect("penalty channels")
                    .pop()
                    .map(|(shard, rx)| ShardPenalties {
                        shard,
                        table: Penalties::new(policy),
                        rx,
                    });
            async move { shard(shared, fds, stop, penalties, metrics_rx).await }
        })
        .map_err(|e| anyhow::anyhow!("starting executors: {e}"))?;
    ops::notify_ready(&bound);
    for r in handles.join_all() {
        r.map_err(|e| anyhow::anyhow!("executor failed: {e}"))?;
    }
    Ok(())
}

/// Open connections of one shard, so shutdown can wake idle sessions.
#[derive(Default)]
pub(crate) struct Registry {
    /// This executor's index in [`Shared::balance`].
    executor: usize,
    next: std::cell::Cell<u64>,
    open: std::cell::RefCell<std::collections::HashMap<u64, RawFd>>,
    pub stopping: std::cell::Cell<bool>,
    penalties: std::cell::RefCell<Option<ShardPenalties>>,
    /// This core's counters (plain cells; summed across cores on scrape).
    pub metrics: crate::metrics::ShardMetrics,
    /// Sessions of this core in the middle of an UPDATE (deleting their marked messages).
    pub committing: std::cell::Cell<u32>,
}

impl Registry {
    pub fn add(&self, fd: RawFd) -> u64 {
        let id = self.next.get();
        self.next.set(id + 1);
        self.open.borrow_mut().insert(id, fd);
        id
    }
    /// Connection `id` has ended.
    pub fn closed(&self, id: u64, shared: &Shared) {
        self.open.borrow_mut().remove(&id);
        self.metrics.closed();
        shared.balance.closed(self.executor);
    }
    /// The penalty owed by `key` now (failures from every core counted).
    pub fn penalty_delay(&self, key: u128) -> Duration {
        let mut p = self.penalties.borrow_mut();
        let Some(p) = p.as_mut() else {
            return Duration::ZERO;
        };
        p.drain();
        p.table.delay(key, std::time::Instant::now())
    }

    /// Records a failed login from `key` here and on every other core. Returns the new
    /// level and its delay.
    pub fn penalty_failure(&self, shared: &Shared, key: u128) -> (u32, Duration) {
        let mut p = self.penalties.borrow_mut();
        let Some(p) = p.as_mut() else {
            return (0, Duration::ZERO);
        };
        let at = std::time::Instant::now();
        p.drain();
        let level = p.table.failure(key, at);
        self.broadcast(shared, p.shard, key, at, true);
        (level, p.table.policy().delay_for(level))
    }

    /// A successful login from `key`: its failures are forgotten on every core.
    pub fn penalty_success(&self, shared: &Shared, key: u128) {
        let mut p = self.penalties.borrow_mut();
        let Some(p) = p.as_mut() else {
            return;
        };
        p.drain();
        if p.table.level(key, std::time::Instant::now()) == 0 {
            return;
        }
        p.table.success(key);
        self.broadcast(shared, p.shard, key, std::time::Instant::now(), false);
    }

    /// This shard's index (for log lines).
    pub fn shard(&self) -> usize {
        self.penalties.borrow().as_ref().map_or(0, |p| p.shard)
    }

    fn broadcast(
        &self,
        shared: &Shared,
        me: usize,
        key: u128,
        at: std::time::Instant,
        failure: bool,
    ) {
        for (i, tx) in shared.penalty_tx.iter().enumerate() {
            if i != me {
                let _ = tx.try_send(PenaltyEvent { key, at, failure });
            }
        }
    }

    fn wake_all(&self) {
        for &fd in self.open.borrow().values() {
            sys::shutdown_read(fd);
        }
    }
}

/// Serialises the polls of `listener.accept()` across executors.
///
/// glommio's accept starts with a non-blocking `accept(2)`, made by setting `O_NONBLOCK` on
/// the listening socket and restoring the previous flags right after. Those flags belong to
/// the open file, which the executors share (their descriptors are dups of one socket): if
/// two executors interleave, one can restore "blocking" just before the other's `accept`,
/// which then blocks that executor's thread, and every connection on it, until the next
/// connection arrives. Holding one process-wide lock while the accept future is polled (a
/// poll never waits; the wait is an io_uring operation) keeps each set-accept-restore whole.
/// Taken once or twice per accepted connection, never on the per-command path.
async fn accept_one_at_a_time(
    listener: &glommio::net::TcpListener,
) -> glommio::Result<glommio::net::TcpStream, ()> {
    static ACCEPT: Mutex<()> = Mutex::new(());
    let mut accept = std::pin::pin!(listener.accept());
    futures_lite::future::poll_fn(|cx| {
        let _one = ACCEPT.lock().unwrap_or_else(|e| e.into_inner());
        std::future::Future::poll(accept.as_mut(), cx)
    })
    .await
}

async fn shard(
    shared: Arc<Shared>,
    fds: Vec<(OwnedFd, ops::ListenerSpec)>,
    stop: flume::Receiver<()>,
    penalties: Option<ShardPenalties>,
    metrics_rx: Option<flume::Receiver<admin::SnapshotRequest>>,
) {
    let tq = glommio::executor().create_task_queue(
        Shares::Static(1000),
        Latency::Matters(Duration::from_millis(5)),
        "pop3",
    );
    let gate = glommio::sync::Gate::new();
    let me = shared.balance.join();
    shared.watchdog.watch(me);
    let registry = std::rc::Rc::new(Registry {
        executor: me,
        penalties: std::cell::RefCell::new(penalties),
        ..Registry::default()
    });
    if let Some(rx) = metrics_rx {
        // Scrapes: the admin thread asks, this core answers with a copy of its counters.
        let registry = registry.clone();
        glommio::spawn_local(async move {
            while let Ok(reply) = rx.recv_async().await {
                let _ = reply.send(registry.metrics.snapshot());
            }
        })
        .detach();
    }
    let mut loops = Vec::new();
    for (fd, spec) in fds {
        let listener = sys::adopt_listener(fd);
        let (shared, gate, registry, stop) =
            (shared.clone(), gate.clone(), registry.clone(), stop.clone());
        loops.push(glommio::spawn_local(async move {
            loop {
                let next = async {
                    // An executor well ahead of the others lets them take this one.
                    shared.balance.my_turn(me).await;
                    Some(accept_one_at_a_time(&listener).await)
                };
                let accepted = futures_lite::future::or(next, async {
                    let _ = stop.recv_async().await;
                    None
                })
                .await;
                let stream = match accepted {
                    None => break,
                    Some(Ok(s)) => s,
                    Some(Err(e)) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let id = registry.add(stream.as_raw_fd());
                registry.metrics.accepted(spec.index);
                shared.balance.opened(me);
                // Boxed: the gate wraps the future in its own, and an unboxed connection
                // future would then be held twice in the task (~4 KB per idle connection
                // instead of ~2 KB).
                let fut = Box::pin(conn::run(
                    stream,
                    spec,
                    shared.clone(),
                    registry.clone(),
                    id,
                ));
                if gate.spawn_into(fut, tq).map(|t| t.detach()).is_err() {
                    break;
                }
            }
        }));
    }
    let _ = stop.recv_async().await;
    registry.stopping.set(true);
    for l in loops {
        l.await;
    }
    registry.wake_all();
    let grace = Duration::from_secs(shared.cfg.server.shutdown_grace_secs);
    let closed = futures_lite::future::or(async { gate.close().await.is_ok() }, async {
        glommio::timer::sleep(grace).await;
        false
    })
    .await;
    if !closed {
        // Never stop in the middle of an UPDATE: a QUIT whose deletions are running
        // finishes them (they are short: unlinks and two fsyncs).
        while registry.committing.get() > 0 {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!("shutdown grace period over; closing remaining sessions");
    }
    shared.watchdog.unregister(me);
}
