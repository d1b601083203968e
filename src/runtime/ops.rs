//! Operations: what makes corepop a well-behaved service.
//!
//! Owns: opening the listeners (our own sockets, or the ones systemd passed with
//! `LISTEN_FDS`), the admin listener, dropping root privileges before any thread starts,
//! readiness/reload/stop notifications to systemd, and SIGHUP reloads (configuration file,
//! passwd-file, certificates, connection limits), with the passwd-file behind a swappable
//! [`SwapAuth`] so sessions in progress are not disturbed.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context as _};

use super::limits::{ConnLimits, Settings};
use super::{load_authenticator, sys, Listening, Shared};
use crate::auth::{AuthOutcome, Authenticator, Credential};
use crate::config::Config;
use crate::metrics::ListenerLabel;

/// How `serve` was asked to run, beyond the configuration.
#[derive(Default)]
pub struct ServeOptions {
    /// `--allow-root`: serve as root when started as root without `privileges.user`.
    pub allow_root: bool,
    /// Re-reads the configuration for SIGHUP (the file plus command-line overrides). Without
    /// it, SIGHUP re-reads the files the start-up configuration names.
    pub reload: Option<Box<dyn Fn() -> anyhow::Result<Config> + Send>>,
}

/// What one listener is: its position in the list (for metrics), TLS, PROXY.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListenerSpec {
    pub index: usize,
    pub tls: bool,
    pub proxy: bool,
}

/// Process-wide operational state in [`Shared`].
pub(crate) struct Ops {
    pub limits: Arc<ConnLimits>,
    /// The same object as `Shared::auth`, typed so a reload can swap what it delegates to.
    pub auth: Arc<SwapAuth>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub start_time_secs: u64,
}

impl Ops {
    pub fn new(cfg: &Config, auth: Arc<SwapAuth>) -> Self {
        Self {
            limits: ConnLimits::new(Settings::from_config(&cfg.limits)),
            auth,
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            start_time_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

/// An [`Authenticator`] whose passwd-file can be replaced at run time. Each call reads the
/// current one once (a short read lock and an `Arc` clone): logins, not commands, pay it.
pub(crate) struct SwapAuth {
    current: RwLock<Arc<dyn Authenticator>>,
    /// The current one's [`Authenticator::login_delay_per_user`], read by every new
    /// connection without the lock.
    login_delay_per_user: std::sync::atomic::AtomicBool,
}

impl SwapAuth {
    pub fn new(a: Arc<dyn Authenticator>) -> Arc<Self> {
        Arc::new(Self {
            login_delay_per_user: a.login_delay_per_user().into(),
            current: RwLock::new(a),
        })
    }
    fn get(&self) -> Arc<dyn Authenticator> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn swap(&self, a: Arc<dyn Authenticator>) {
        let per_user = a.login_delay_per_user();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = a;
        self.login_delay_per_user
            .store(per_user, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Authenticator for SwapAuth {
    fn authenticate(&self, user: &str, cred: &Credential) -> AuthOutcome {
        self.get().authenticate(user, cred)
    }
    fn scram_secret(&self, user: &str, alg: crate::auth::ScramAlg) -> crate::auth::ScramSecret {
        self.get().scram_secret(user, alg)
    }
    fn sasl_capabilities(&self) -> crate::auth::SaslCapabilities {
        self.get().sasl_capabilities()
    }
    fn login_delay_per_user(&self) -> bool {
        self.login_delay_per_user
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The listeners, per shard, plus what to announce and how to label them in metrics.
pub(crate) struct Listeners {
    pub per_shard: Vec<Vec<(OwnedFd, ListenerSpec)>>,
    pub bound: Vec<Listening>,
    pub labels: Vec<ListenerLabel>,
}

/// Opens every listener before any executor runs (port 0 resolves to one port for all
/// shards; binding errors are reported at once). With systemd socket activation the passed
/// sockets replace the configured POP3 listeners: a socket whose `FileDescriptorName=`
/// contains `pop3s` or `tls` is implicit TLS, one containing `proxy` expects a PROXY header.
pub(crate) fn open_listeners(cfg: &Config, threads: usize) -> anyhow::Result<Listeners> {
    let mut out = Listeners {
        per_shard: (0..threads).map(|_| Vec::new()).collect(),
        bound: Vec::new(),
        labels: Vec::new(),
    };
    let mut add = |fds: Vec<OwnedFd>, addr: SocketAddr, tls: bool, proxy: bool| {
        let spec = ListenerSpec {
            index: out.labels.len(),
            tls,
            proxy,
        };
        for (shard, fd) in fds.into_iter().enumerate() {
            out.per_shard[shard].push((fd, spec));
        }
        out.bound.push(Listening { addr, tls, proxy });
        out.labels.push(ListenerLabel {
            addr: addr.to_string(),
            tls,
            proxy,
        });
    };
    let inherited = sys::take_listen_fds().context("adopting sockets passed by systemd")?;
    if !inherited.is_empty() {
        tracing::info!(
            sockets = inherited.len(),
            "socket activation: using the sockets systemd passed instead of the configured listeners"
        );
        for s in inherited {
            let name = s.name.to_ascii_lowercase();
            let tls = name.contains("pop3s") || name.contains("tls");
            let proxy = name.contains("proxy");
            if tls && !cfg.tls.enabled() {
                bail!(
                    "systemd passed TLS socket {:?} ({}) but tls.cert/tls.key are not set",
                    s.name,
                    s.addr
                );
            }
            if proxy && cfg.proxy.trusted_networks.is_empty() {
                bail!(
                    "systemd passed PROXY socket {:?} ({}) but proxy.trusted_networks is empty",
                    s.name,
                    s.addr
                );
            }
            let mut fds = Vec::with_capacity(threads);
            for _ in 1..threads {
                fds.push(sys::dup(&s.fd)?);
            }
            fds.push(s.fd);
            add(fds, s.addr, tls, proxy);
        }
        // A configured listener systemd did not pass is not served: say which, so that a
        // unit passing only port 110 does not silently drop 995 (or a PROXY listener).
        let unserved: Vec<String> = configured_listeners(cfg)
            .filter(|&(addr, tls, proxy)| !covered(&out.bound, addr, tls, proxy))
            .map(|(addr, tls, proxy)| match (tls, proxy) {
                (false, false) => format!("{addr} (server.listen)"),
                (true, false) => format!("{addr} (server.listen_tls)"),
                (false, true) => format!("{addr} (proxy.listen)"),
                (true, true) => format!("{addr} (proxy.listen_tls)"),
            })
            .collect();
        if !unserved.is_empty() {
            tracing::warn!(
                listeners = %unserved.join(", "),
                "socket activation: configured listeners that systemd did not pass are NOT served; add them to the socket unit (with a FileDescriptorName= naming their kind) or stop using socket activation"
            );
        }
        return Ok(out);
    }
    for (addr, tls, proxy) in configured_listeners(cfg) {
        let (fds, actual) =
            sys::listeners(*addr, threads).with_context(|| format!("cannot listen on {addr}"))?;
        add(fds, actual, tls, proxy);
    }
    Ok(out)
}

/// Whether a configured listener (`addr`, implicit TLS, PROXY) is served by one of the
/// `passed` sockets: one of its kind on its port, bound to its address or to a wildcard
/// (`ListenStream=110` is [::]:110, which also takes IPv4).
fn covered(passed: &[Listening], addr: &SocketAddr, tls: bool, proxy: bool) -> bool {
    passed.iter().any(|l| {
        l.tls == tls
            && l.proxy == proxy
            && l.addr.port() == addr.port()
            && (l.addr.ip() == addr.ip() || l.addr.ip().is_unspecified())
    })
}

/// The configured POP3 listeners: address, implicit TLS, PROXY header.
fn configured_listeners(cfg: &Config) -> impl Iterator<Item = (&SocketAddr, bool, bool)> {
    (cfg.server.listen.iter().map(|a| (a, false, false)))
        .chain(cfg.server.listen_tls.iter().map(|a| (a, true, false)))
        .chain(cfg.proxy.listen.iter().map(|a| (a, false, true)))
        .chain(cfg.proxy.listen_tls.iter().map(|a| (a, true, true)))
}

/// Opens the admin listener (`admin.listen`), if configured.
pub(crate) fn open_admin(cfg: &Config) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Some(addr) = cfg.admin.listen else {
        return Ok(None);
    };
    let l = std::net::TcpListener::bind(addr)
        .with_context(|| format!("cannot listen on admin.listen {addr}"))?;
    Ok(Some(l))
}

/// Switches to `privileges.user` when started as root; refuses to serve as root unless
/// allowed. Runs after binding (so ports below 1024 work) and before any thread starts.
pub(crate) fn drop_privileges(cfg: &Config, allow_root: bool) -> anyhow::Result<()> {
    let euid = sys::euid();
    let Some(user) = &cfg.privileges.user else {
        if euid == 0 {
            if allow_root || cfg.privileges.allow_root {
                tracing::warn!(
                    "serving as root (allowed by --allow-root or privileges.allow_root)"
                );
            } else {
                bail!(
                    "refusing to serve as root: set privileges.user (e.g. \"vmail\") to switch \
                     to after binding, or pass --allow-root (or privileges.allow_root = true)"
                );
            }
        }
        return Ok(());
    };
    let account = sys::lookup_user(user).with_context(|| format!("privileges.user = {user:?}"))?;
    let gid = match &cfg.privileges.group {
        Some(g) => sys::lookup_group(g).with_context(|| format!("privileges.group = {g:?}"))?,
        None => account.gid,
    };
    if euid != 0 {
        if euid == account.uid {
            return Ok(());
        }
        bail!(
            "privileges.user = {user:?} (uid {}), but corepop was started as uid {euid}, not root",
            account.uid
        );
    }
    if account.uid == 0 && !(allow_root || cfg.privileges.allow_root) {
        bail!("privileges.user = {user:?} is root; pass --allow-root if that is really meant");
    }
    sys::drop_privileges(account.uid, gid)
        .with_context(|| format!("switching to user {user} (uid {}, gid {gid})", account.uid))?;
    tracing::info!(user = %account.name, uid = account.uid, gid, "dropped root privileges");
    warn_unreadable_for_reload(cfg, user);
    Ok(())
}

/// The files a SIGHUP re-reads are read as `privileges.user`: say now, not at the first
/// reload, which of them that user cannot open (a key readable by root only is the usual
/// one; the reload would then fail and keep the old certificate until its expiry).
fn warn_unreadable_for_reload(cfg: &Config, user: &str) {
    let tls = [cfg.tls.cert.as_ref(), cfg.tls.key.as_ref()]
        .into_iter()
        .flatten();
    let sni = cfg.tls.sni.iter().flat_map(|s| [&s.cert, &s.key]);
    let files = std::iter::once(&cfg.auth.passwd_file).chain(tls).chain(sni);
    for path in files {
        if let Err(e) = std::fs::File::open(path) {
            tracing::warn!(
                path = %path.display(),
                user,
                error = %e,
                "this file was read at start-up but cannot be read as privileges.user: a SIGHUP reload will fail until it can (systemctl reload, certificate renewal hooks)"
            );
        }
    }
}

/// Tells systemd we are ready (no-op without `NOTIFY_SOCKET`).
pub(crate) fn notify_ready(listeners: &[Listening]) {
    let list: Vec<String> = listeners.iter().map(|l| l.addr.to_string()).collect();
    sys::sd_notify(&format!(
        "READY=1\nSTATUS=Serving POP3 on {}\nMAINPID={}",
        list.join(", "),
        std::process::id()
    ));
}

/// Tells systemd we are stopping.
pub(crate) fn notify_stopping() {
    sys::sd_notify("STOPPING=1\nSTATUS=Shutting down: draining sessions");
}

/// SIGHUP: re-reads the configuration, the passwd-file and the certificates; applies the
/// limits. Anything that fails keeps its old value and is logged; systemd's STATUS says how
/// the reload went. `last` is the configuration of the previous successful load.
pub(crate) fn reload(
    shared: &Shared,
    reread: Option<&(dyn Fn() -> anyhow::Result<Config> + Send)>,
    last: &mut Config,
) {
    sys::sd_notify(&format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        sys::monotonic_usec()
    ));
    let status = match reload_inner(shared, reread, last) {
        Ok(()) => {
            shared.ops.reloads_ok.fetch_add(1, Ordering::Relaxed);
            tracing::info!("SIGHUP: reload complete");
            "Reloaded".to_string()
        }
        Err(e) => {
            shared.ops.reloads_failed.fetch_add(1, Ordering::Relaxed);
            let msg = format!("{e:#}");
            tracing::error!(error = %msg, "SIGHUP: reload failed; the previous settings stay in use");
            format!("Reload failed, previous settings in use: {msg}")
        }
    };
    let status = status.replace('\n', " ");
    sys::sd_notify(&format!("READY=1\nSTATUS={status}"));
}

fn reload_inner(
    shared: &Shared,
    reread: Option<&(dyn Fn() -> anyhow::Result<Config> + Send)>,
    last: &mut Config,
) -> anyhow::Result<()> {
    let new = match reread {
        Some(f) => f().context("configuration not reloaded")?,
        None => last.clone(),
    };
    let mut failures = Vec::new();
    // The passwd-file: a file that vanished or became unreadable keeps the old one.
    match load_authenticator(&new) {
        Ok(a) => {
            shared.ops.auth.swap(a);
        }
        Err(e) => {
            tracing::error!(
                error = %format!("{e:#}"),
                "SIGHUP: PASSWD-FILE NOT RELOADED; still serving with the previously loaded users"
            );
            failures.push(format!("passwd-file: {e:#}"));
        }
    }
    match (&shared.tls, new.tls.enabled()) {
        (Some(tls), true) => match tls.reload(&new.tls) {
            Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "SIGHUP: TLS reload failed; keeping the old certificates");
                failures.push(format!("TLS: {e:#}"));
            }
        },
        (None, false) => {}
        _ => tracing::warn!("SIGHUP: turning TLS on or off needs a restart"),
    }
    let mut settings = Settings::from_config(&new.limits);
    // CAPA advertises the LOGIN-DELAY fixed at start-up; keep enforcement consistent with it.
    settings.login_delay = shared.ops.limits.settings().login_delay;
    shared.ops.limits.update(settings);
    for (section, old, new) in restart_sections(last, &new) {
        if old != new {
            tracing::warn!(
                section,
                "SIGHUP: changes in this section take effect after a restart"
            );
        }
    }
    *last = new;
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}", failures.join("; "))
    }
}

/// Sections (or keys) a reload does not apply, rendered for comparison.
fn restart_sections(a: &Config, b: &Config) -> Vec<(&'static str, String, String)> {
    let s = |v: &dyn erased::Ser| v.render();
    let mut la = a.limits.clone();
    let mut lb = b.limits.clone();
    for l in [&mut la, &mut lb] {
        l.max_connections = 0;
        l.max_connections_per_ip = 0;
        l.max_connections_per_user = 0;
    }
    vec![
        ("server", s(&a.server), s(&b.server)),
        ("mail", s(&a.mail), s(&b.mail)),
        ("log", s(&a.log), s(&b.log)),
        ("admin", s(&a.admin), s(&b.admin)),
        ("proxy", s(&a.proxy), s(&b.proxy)),
        ("privileges", s(&a.privileges), s(&b.privileges)),
        ("limits", s(&la), s(&lb)),
    ]
}

mod erased {
    /// Renders any serialisable section as TOML text (for comparing sections).
    pub trait Ser {
        fn render(&self) -> String;
    }
    impl<T: serde::Serialize> Ser for T {
        fn render(&self) -> String {
            toml::to_string(self).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passed_wildcard_socket_covers_the_configured_listeners_on_its_port() {
        let l = |a: &str, tls: bool, proxy: bool| Listening {
            addr: a.parse().unwrap(),
            tls,
            proxy,
        };
        let a = |a: &str| a.parse::<SocketAddr>().unwrap();
        // The Debian package: corepop.socket passes [::]:110; the configuration lists
        // 0.0.0.0:110 and [::]:110, both served.
        let passed = [l("[::]:110", false, false)];
        assert!(covered(&passed, &a("0.0.0.0:110"), false, false));
        assert!(covered(&passed, &a("[::]:110"), false, false));
        assert!(covered(&passed, &a("192.0.2.1:110"), false, false));
        // Another port, or the same port of another kind, is not.
        assert!(!covered(&passed, &a("0.0.0.0:995"), true, false));
        assert!(!covered(&passed, &a("0.0.0.0:110"), true, false));
        assert!(!covered(&passed, &a("0.0.0.0:110"), false, true));
        // A socket bound to one address covers only that address.
        let passed = [l("127.0.0.1:110", false, false)];
        assert!(covered(&passed, &a("127.0.0.1:110"), false, false));
        assert!(!covered(&passed, &a("0.0.0.0:110"), false, false));
    }
}
