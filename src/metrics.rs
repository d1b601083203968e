//! Metrics: per-core counters without atomics, summed and rendered for Prometheus on scrape.
//!
//! Owns: the counters ([`ShardMetrics`], plain `Cell`s owned by one executor, so counting on
//! the hot path is an ordinary add), the plain-data [`Snapshot`] a shard hands over when
//! asked, summing snapshots, and the Prometheus text format (version 0.0.4).
//!
//! Does not own: asking the shards or serving HTTP (the runtime's admin listener does that),
//! or the values that are global anyway (open connections come from the connection table).
//!
//! Metric names are documented in `docs/deployment.md` ("Metrics").

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::time::Duration;

/// Login outcomes, in the order of [`Snapshot::logins`].
pub const LOGIN_RESULTS: [&str; 8] = [
    "ok",
    "failed",
    "in_use",
    "login_delay",
    "max_per_user",
    "temp_fail",
    "perm_fail",
    "other",
];

/// A login outcome, indexing [`LOGIN_RESULTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    Ok = 0,
    Failed = 1,
    InUse = 2,
    LoginDelay = 3,
    MaxPerUser = 4,
    TempFail = 5,
    PermFail = 6,
    Other = 7,
}

/// Commands counted by name (anything else counts as `unknown`), in [`Snapshot::commands`]
/// order.
pub const COMMANDS: [&str; crate::protocol::command::KEYWORDS.len()] =
    crate::protocol::command::KEYWORDS;

/// Why a connection was refused or a penalty applied, in [`Snapshot::refused`] order.
pub const REFUSALS: [&str; 4] = [
    "max_connections",
    "max_connections_per_ip",
    "proxy_untrusted",
    "proxy_bad_header",
];

/// A refusal reason, indexing [`REFUSALS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections = 0,
    MaxPerIp = 1,
    ProxyUntrusted = 2,
    ProxyBadHeader = 3,
}

/// Penalties, in [`Snapshot::penalties`] order.
pub const PENALTIES: [&str; 2] = ["auth_failure_delay", "auth_failures_close"];

/// A penalty, indexing [`PENALTIES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Penalty {
    AuthFailureDelay = 0,
    AuthFailuresClose = 1,
}

/// Upper bounds (seconds) of the RETR/TOP latency histogram buckets; `+Inf` is implied.
pub const LATENCY_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0,
];

/// One core's counters. Not `Sync`: only its own executor touches it.
#[derive(Default)]
pub struct ShardMetrics {
    /// Per listener (index in the runtime's listener list): connections accepted.
    accepted: RefCell<Vec<u64>>,
    open: Cell<i64>,
    logins: [Cell<u64>; LOGIN_RESULTS.len()],
    commands: [Cell<u64>; COMMANDS.len()],
    refused: [Cell<u64>; REFUSALS.len()],
    penalties: [Cell<u64>; PENALTIES.len()],
    bytes_sent: Cell<u64>,
    bytes_received: Cell<u64>,
    /// `[retr, top]` × buckets (+Inf last).
    latency: [[Cell<u64>; LATENCY_BUCKETS.len() + 1]; 2],
    latency_sum_us: [Cell<u64>; 2],
    lock_conflicts: Cell<u64>,
    tls_handshake_failures: Cell<u64>,
    blocking_reads: Cell<u64>,
}

impl ShardMetrics {
    /// Counters for a runtime with `listeners` listeners.
    pub fn new(listeners: usize) -> Self {
        Self {
            accepted: RefCell::new(vec![0; listeners]),
            open: Cell::new(0),
            logins: Default::default(),
            commands: Default::default(),
            refused: Default::default(),
            penalties: Default::default(),
            bytes_sent: Cell::new(0),
            bytes_received: Cell::new(0),
            latency: Default::default(),
            latency_sum_us: Default::default(),
            lock_conflicts: Cell::new(0),
            tls_handshake_failures: Cell::new(0),
            blocking_reads: Cell::new(0),
        }
    }

    fn inc(c: &Cell<u64>, n: u64) {
        c.set(c.get().wrapping_add(n));
    }

    /// A connection was accepted on listener `listener`.
    pub fn accepted(&self, listener: usize) {
        let mut a = self.accepted.borrow_mut();
        if a.len() <= listener {
            a.resize(listener + 1, 0);
        }
        a[listener] = a[listener].wrapping_add(1);
        self.open.set(self.open.get() + 1);
    }
    /// An accepted connection ended.
    pub fn closed(&self) {
        self.open.set(self.open.get() - 1);
    }
    pub fn login(&self, o: LoginOutcome) {
        Self::inc(&self.logins[o as usize], 1);
    }
    /// A command with this name (any case) arrived.
    /// `n` more command lines with keyword `name` (one of [`COMMANDS`]).
    pub fn command(&self, name: &str, n: u32) {
        let i = COMMANDS
            .iter()
            .position(|c| *c == name)
            .unwrap_or(COMMANDS.len() - 1);
        Self::inc(&self.commands[i], u64::from(n));
    }
    pub fn refused(&self, r: Refusal) {
        Self::inc(&self.refused[r as usize], 1);
    }
    pub fn penalty(&self, p: Penalty) {
        Self::inc(&self.penalties[p as usize], 1);
    }
    pub fn sent(&self, n: usize) {
        Self::inc(&self.bytes_sent, n as u64);
    }
    pub fn received(&self, n: usize) {
        Self::inc(&self.bytes_received, n as u64);
    }
    pub fn lock_conflict(&self) {
        Self::inc(&self.lock_conflicts, 1);
    }
    pub fn tls_handshake_failed(&self) {
        Self::inc(&self.tls_handshake_failures, 1);
    }

    /// A message open or read that the kernel could not answer from its caches, so it went
    /// to the blocking pool (also every mapped, zero-copy RETR).
    pub fn blocking_read(&self) {
        Self::inc(&self.blocking_reads, 1);
    }
    /// A RETR (`top == false`) or TOP finished sending after `took`.
    pub fn retrieved(&self, top: bool, took: Duration) {
        let k = usize::from(top);
        let secs = took.as_secs_f64();
        let b = LATENCY_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        Self::inc(&self.latency[k][b], 1);
        Self::inc(&self.latency_sum_us[k], took.as_micros() as u64);
    }

    /// A copy of the counters, to send to the thread serving a scrape.
    pub fn snapshot(&self) -> Snapshot {
        let get = |c: &Cell<u64>| c.get();
        Snapshot {
            accepted: self.accepted.borrow().clone(),
            open: self.open.get(),
            logins: self.logins.each_ref().map(get),
            commands: self.commands.each_ref().map(get),
            refused: self.refused.each_ref().map(get),
            penalties: self.penalties.each_ref().map(get),
            bytes_sent: self.bytes_sent.get(),
            bytes_received: self.bytes_received.get(),
            latency: self.latency.each_ref().map(|r| r.each_ref().map(get)),
            latency_sum_us: self.latency_sum_us.each_ref().map(get),
            lock_conflicts: self.lock_conflicts.get(),
            tls_handshake_failures: self.tls_handshake_failures.get(),
            blocking_reads: self.blocking_reads.get(),
        }
    }
}

/// Plain counter values of one core, or the sum over all cores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub accepted: Vec<u64>,
    pub open: i64,
    pub logins: [u64; LOGIN_RESULTS.len()],
    pub commands: [u64; COMMANDS.len()],
    pub refused: [u64; REFUSALS.len()],
    pub penalties: [u64; PENALTIES.len()],
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub latency: [[u64; LATENCY_BUCKETS.len() + 1]; 2],
    pub latency_sum_us: [u64; 2],
    pub lock_conflicts: u64,
    pub tls_handshake_failures: u64,
    pub blocking_reads: u64,
}

fn add_all<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x = x.wrapping_add(*y);
    }
}

impl Snapshot {
    /// Adds another core's counters.
    pub fn add(&mut self, o: &Snapshot) {
        if self.accepted.len() < o.accepted.len() {
            self.accepted.resize(o.accepted.len(), 0);
        }
        for (x, y) in self.accepted.iter_mut().zip(&o.accepted) {
            *x = x.wrapping_add(*y);
        }
        self.open += o.open;
        add_all(&mut self.logins, &o.logins);
        add_all(&mut self.commands, &o.commands);
        add_all(&mut self.refused, &o.refused);
        add_all(&mut self.penalties, &o.penalties);
        self.bytes_sent = self.bytes_sent.wrapping_add(o.bytes_sent);
        self.bytes_received = self.bytes_received.wrapping_add(o.bytes_received);
        for k in 0..2 {
            add_all(&mut self.latency[k], &o.latency[k]);
        }
        add_all(&mut self.latency_sum_us, &o.latency_sum_us);
        self.lock_conflicts = self.lock_conflicts.wrapping_add(o.lock_conflicts);
        self.tls_handshake_failures = self
            .tls_handshake_failures
            .wrapping_add(o.tls_handshake_failures);
        self.blocking_reads = self.blocking_reads.wrapping_add(o.blocking_reads);
    }
}

/// A listener's labels.
#[derive(Debug, Clone)]
pub struct ListenerLabel {
    /// `ip:port` as configured (or as inherited from systemd).
    pub addr: String,
    pub tls: bool,
    pub proxy: bool,
}

/// Process-wide values rendered next to the summed counters.
#[derive(Debug, Clone, Default)]
pub struct Globals {
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Cores that did not answer the scrape in time (their counters are missing).
    pub shards_missing: u64,
    pub start_time_secs: u64,
    /// Logins whose snapshot came from the shared in-memory index.
    pub index_hits: u64,
    /// Logins whose snapshot was built from the directories and the on-disk index.
    pub index_misses: u64,
    /// On-disk index rewrites (new or removed messages, or a damaged index rebuilt).
    pub index_writes: u64,
    /// Connections open now on each executor (index = executor).
    pub executor_connections: Vec<u64>,
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A metric with one unlabelled series.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    header(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// A metric with one label: a series `name{label="key"} value` per item.
fn family<'a>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    label: &str,
    items: impl IntoIterator<Item = (&'a str, u64)>,
) {
    header(out, name, kind, help);
    for (key, value) in items {
        let _ = writeln!(out, "{name}{{{label}=\"{key}\"}} {value}");
    }
}

/// The Prometheus text exposition of `s`.
pub fn render(s: &Snapshot, listeners: &[ListenerLabel], g: &Globals) -> String {
    let mut o = String::with_capacity(4096);
    let o = &mut o;
    single(
        o,
        "corepop_connections_current",
        "gauge",
        "Connections open now.",
        s.open.max(0),
    );
    let executors: Vec<String> = (0..g.executor_connections.len())
        .map(|i| i.to_string())
        .collect();
    family(
        o,
        "corepop_executor_connections",
        "gauge",
        "Connections open now, by executor (new ones go to the least loaded).",
        "executor",
        executors
            .iter()
            .map(String::as_str)
            .zip(g.executor_connections.iter().copied()),
    );
    header(
        o,
        "corepop_connections_total",
        "counter",
        "Connections accepted, by listener.",
    );
    for (i, l) in listeners.iter().enumerate() {
        let _ = writeln!(
            o,
            "corepop_connections_total{{listener=\"{}\",tls=\"{}\",proxy=\"{}\"}} {}",
            l.addr,
            l.tls,
            l.proxy,
            s.accepted.get(i).copied().unwrap_or(0)
        );
    }
    family(
        o,
        "corepop_connections_refused_total",
        "counter",
        "Connections closed before the greeting, by reason.",
        "reason",
        REFUSALS.iter().copied().zip(s.refused),
    );
    family(
        o,
        "corepop_logins_total",
        "counter",
        "Login attempts, by result.",
        "result",
        LOGIN_RESULTS.iter().copied().zip(s.logins),
    );
    family(
        o,
        "corepop_commands_total",
        "counter",
        "Commands received, by name.",
        "command",
        COMMANDS.iter().copied().zip(s.commands),
    );
    family(
        o,
        "corepop_penalties_total",
        "counter",
        "Penalties applied, by kind.",
        "kind",
        PENALTIES.iter().copied().zip(s.penalties),
    );
    single(
        o,
        "corepop_bytes_sent_total",
        "counter",
        "Bytes sent to clients (before TLS).",
        s.bytes_sent,
    );
    single(
        o,
        "corepop_bytes_received_total",
        "counter",
        "Bytes received from clients (after TLS).",
        s.bytes_received,
    );
    single(
        o,
        "corepop_lock_conflicts_total",
        "counter",
        "Logins refused because another session holds the maildrop.",
        s.lock_conflicts,
    );
    single(
        o,
        "corepop_tls_handshake_failures_total",
        "counter",
        "TLS handshakes that failed or timed out.",
        s.tls_handshake_failures,
    );
    single(
        o,
        "corepop_message_blocking_reads_total",
        "counter",
        "Message opens and reads done on the blocking pool because the kernel did not have \
         them cached (and every mapped RETR); the rest were served on the executor.",
        s.blocking_reads,
    );
    header(
        o,
        "corepop_retrieve_duration_seconds",
        "histogram",
        "Time to open and send one message for RETR or TOP.",
    );
    for (k, cmd) in ["RETR", "TOP"].iter().enumerate() {
        let mut cum = 0u64;
        for (b, le) in LATENCY_BUCKETS.iter().enumerate() {
            cum += s.latency[k][b];
            let _ = writeln!(
                o,
                "corepop_retrieve_duration_seconds_bucket{{command=\"{cmd}\",le=\"{le}\"}} {cum}"
            );
        }
        cum += s.latency[k][LATENCY_BUCKETS.len()];
        let _ = writeln!(
            o,
            "corepop_retrieve_duration_seconds_bucket{{command=\"{cmd}\",le=\"+Inf\"}} {cum}"
        );
        let _ = writeln!(
            o,
            "corepop_retrieve_duration_seconds_sum{{command=\"{cmd}\"}} {}",
            s.latency_sum_us[k] as f64 / 1e6
        );
        let _ = writeln!(
            o,
            "corepop_retrieve_duration_seconds_count{{command=\"{cmd}\"}} {cum}"
        );
    }
    family(
        o,
        "corepop_reloads_total",
        "counter",
        "SIGHUP reloads, by result.",
        "result",
        [("ok", g.reloads_ok), ("failed", g.reloads_failed)],
    );
    single(
        o,
        "corepop_scrape_shards_missing",
        "gauge",
        "Cores that did not answer this scrape in time.",
        g.shards_missing,
    );
    single(
        o,
        "corepop_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch.",
        g.start_time_secs,
    );
    family(
        o,
        "corepop_index_lookups_total",
        "counter",
        "Logins by where their maildrop snapshot came from: the shared in-memory index (hit) or the directories and on-disk index (miss).",
        "result",
        [("hit", g.index_hits), ("miss", g.index_misses)],
    );
    single(
        o,
        "corepop_index_writes_total",
        "counter",
        "On-disk index rewrites: new or removed messages, or a damaged index rebuilt.",
        g.index_writes,
    );
    std::mem::take(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_sum_and_render() {
        let a = ShardMetrics::new(2);
        let b = ShardMetrics::new(2);
        a.accepted(0);
        a.accepted(1);
        b.accepted(1);
        b.closed();
        a.login(LoginOutcome::Ok);
        b.login(LoginOutcome::Failed);
        a.command("RETR", 1);
        a.command("unknown", 1);
        a.sent(10);
        b.sent(5);
        a.retrieved(false, Duration::from_millis(3));
        b.retrieved(true, Duration::from_secs(60));
        let mut sum = Snapshot::default();
        sum.add(&a.snapshot());
        sum.add(&b.snapshot());
        assert_eq!(sum.accepted, vec![1, 2]);
        assert_eq!(sum.open, 2);
        let labels = [
            ListenerLabel {
                addr: "127.0.0.1:110".into(),
                tls: false,
                proxy: false,
            },
            ListenerLabel {
                addr: "127.0.0.1:995".into(),
                tls: true,
                proxy: false,
            },
        ];
        let text = render(&sum, &labels, &Globals::default());
        for line in [
            "corepop_connections_current 2",
            "corepop_connections_total{listener=\"127.0.0.1:995\",tls=\"true\",proxy=\"false\"} 2",
            "corepop_logins_total{result=\"ok\"} 1",
            "corepop_logins_total{result=\"failed\"} 1",
            "corepop_commands_total{command=\"RETR\"} 1",
            "corepop_commands_total{command=\"unknown\"} 1",
            "corepop_bytes_sent_total 15",
            "corepop_retrieve_duration_seconds_bucket{command=\"RETR\",le=\"0.005\"} 1",
            "corepop_retrieve_duration_seconds_bucket{command=\"RETR\",le=\"0.0025\"} 0",
            "corepop_retrieve_duration_seconds_bucket{command=\"TOP\",le=\"10\"} 0",
            "corepop_retrieve_duration_seconds_bucket{command=\"TOP\",le=\"+Inf\"} 1",
            "corepop_retrieve_duration_seconds_count{command=\"TOP\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
