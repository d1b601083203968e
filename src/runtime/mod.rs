//! The runtime: the only module that names glommio.
//!
//! Owns: the executor pool (one executor pinned per core), per-core listeners sharing a port
//! through SO_REUSEPORT, the per-connection driver that feeds a [`crate::protocol::Session`]
//! and carries out its steps ([`conn`]), timeouts, running blocking work (password hashing,
//! Maildir scans, mapping files, unlinks) on glommio's blocking thread pool, TLS handshakes
//! (implicit TLS listeners and STLS) with their timeout, graceful shutdown on SIGTERM/SIGINT,
//! and reloading the TLS certificates on SIGHUP.
//!
//! Executor settings measured on this project's machines (see RUNTIME-NOTES.md):
//! `io_memory(64 KiB)` so that several servers fit an 8 MiB locked-memory limit, and
//! `ring_depth(4096)` so glommio's per-loop timer cancel does not scan a small poll hash.
//!
//! Does not own: protocol rules, the Maildir format or password schemes.

mod conn;
mod sys;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use glommio::{Latency, LocalExecutorPoolBuilder, PoolPlacement, Shares};

use crate::auth::{Authenticator, PasswdFile, PasswdOptions};
use crate::config::Config;
use crate::protocol::SessionConfig;

/// What every shard shares (read-only; `Send + Sync`).
pub(crate) struct Shared {
    pub cfg: Config,
    pub session_cfg: Arc<SessionConfig>,
    pub auth: Arc<dyn Authenticator>,
    pub hostname: String,
    /// The TLS configuration when a certificate is configured (STLS offered, POP3S served).
    pub tls: Option<crate::tls::Reloadable>,
}

/// A listener that is open: its bound address and whether it speaks implicit TLS.
#[derive(Debug, Clone, Copy)]
pub struct Listening {
    pub addr: SocketAddr,
    pub tls: bool,
}

/// Loads the passwd-file named by the configuration.
pub fn load_authenticator(cfg: &Config) -> anyhow::Result<Arc<dyn Authenticator>> {
    let opts = PasswdOptions {
        lowercase_usernames: cfg.auth.lowercase_usernames,
        default_scheme: cfg.auth.default_scheme.clone(),
        allow_weak_schemes: cfg.auth.allow_weak_schemes,
    };
    let file = PasswdFile::load(&cfg.auth.passwd_file, opts)
        .with_context(|| format!("loading passwd-file {}", cfg.auth.passwd_file.display()))?;
    tracing::info!(path = %cfg.auth.passwd_file.display(), users = file.len(), "passwd-file loaded");
    Ok(Arc::new(file))
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs the server until SIGTERM or SIGINT. `on_ready` is called with the bound addresses
/// (plaintext listeners first, then implicit-TLS ones) once every listener is open.
pub fn serve(cfg: Config, on_ready: impl FnOnce(&[SocketAddr])) -> anyhow::Result<()> {
    serve_with(cfg, |l| {
        let addrs: Vec<SocketAddr> = l.iter().map(|l| l.addr).collect();
        on_ready(&addrs)
    })
}

/// Like [`serve`], but tells `on_ready` which listeners are implicit TLS (the CLI prints them).
pub fn serve_with(cfg: Config, on_ready: impl FnOnce(&[Listening])) -> anyhow::Result<()> {
    let auth = load_authenticator(&cfg)?;
    let tls = crate::tls::server_config(&cfg.tls)?.map(crate::tls::Reloadable::new);
    let threads = match cfg.server.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // Listening sockets are made here, before any executor runs, so that port 0 resolves to
    // one port for all shards and binding errors are reported at once.
    let mut per_shard: Vec<Vec<(OwnedFd, bool)>> = (0..threads).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    let all = (cfg.server.listen.iter().map(|a| (a, false)))
        .chain(cfg.server.listen_tls.iter().map(|a| (a, true)));
    for (addr, is_tls) in all {
        let (fds, actual) =
            sys::listeners(*addr, threads).with_context(|| format!("cannot listen on {addr}"))?;
        for (shard, fd) in fds.into_iter().enumerate() {
            per_shard[shard].push((fd, is_tls));
        }
        bound.push(Listening {
            addr: actual,
            tls: is_tls,
        });
    }
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
    });
    let shared = Arc::new(Shared {
        cfg,
        session_cfg,
        auth,
        hostname,
        tls,
    });

    // Shutdown: a signal thread drops the only sender; every receiver then wakes at once.
    let (stop_tx, stop_rx) = flume::bounded::<()>(1);
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])?;
    let for_signals = shared.clone();
    std::thread::Builder::new()
        .name("corepop-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == signal_hook::consts::SIGHUP {
                    reload_tls(&for_signals);
                    continue;
                }
                tracing::info!(signal = sig, "shutting down");
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
            async move { shard(shared, fds, stop).await }
        })
        .map_err(|e| anyhow::anyhow!("starting executors: {e}"))?;
    for r in handles.join_all() {
        r.map_err(|e| anyhow::anyhow!("executor failed: {e}"))?;
    }
    Ok(())
}

/// SIGHUP: re-reads the certificate and key files; new connections use them. On error the
/// old certificates stay in use.
fn reload_tls(shared: &Shared) {
    let Some(tls) = &shared.tls else {
        tracing::info!("SIGHUP: no TLS configured, nothing to reload");
        return;
    };
    match tls.reload(&shared.cfg.tls) {
        Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "SIGHUP: TLS reload failed; keeping the old certificates")
        }
    }
}

/// Open connections of one shard, so shutdown can wake idle sessions.
#[derive(Default)]
pub(crate) struct Registry {
    next: std::cell::Cell<u64>,
    open: std::cell::RefCell<std::collections::HashMap<u64, RawFd>>,
    pub stopping: std::cell::Cell<bool>,
}

impl Registry {
    pub fn add(&self, fd: RawFd) -> u64 {
        let id = self.next.get();
        self.next.set(id + 1);
        self.open.borrow_mut().insert(id, fd);
        id
    }
    pub fn remove(&self, id: u64) {
        self.open.borrow_mut().remove(&id);
    }
    fn wake_all(&self) {
        for &fd in self.open.borrow().values() {
            sys::shutdown_read(fd);
        }
    }
}

async fn shard(shared: Arc<Shared>, fds: Vec<(OwnedFd, bool)>, stop: flume::Receiver<()>) {
    let tq = glommio::executor().create_task_queue(
        Shares::Static(1000),
        Latency::Matters(Duration::from_millis(5)),
        "pop3",
    );
    let gate = glommio::sync::Gate::new();
    let registry = std::rc::Rc::new(Registry::default());
    let mut loops = Vec::new();
    for (fd, implicit_tls) in fds {
        let listener = sys::adopt_listener(fd);
        let (shared, gate, registry, stop) =
            (shared.clone(), gate.clone(), registry.clone(), stop.clone());
        loops.push(glommio::spawn_local(async move {
            loop {
                let accepted =
                    futures_lite::future::or(async { Some(listener.accept().await) }, async {
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
                let fut = conn::run(stream, implicit_tls, shared.clone(), registry.clone(), id);
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
        tracing::warn!("shutdown grace period over; closing remaining sessions");
    }
}
