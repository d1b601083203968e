//! Metrics: per-core counters without atomics, summed and rendered for Prometheus on scrape.
//!
//! Owns: the counters ([`ShardMetrics`], plain `Cell`s owned by one executor, so counting on
//! the hot path is an ordinary add), the plain-data [`Snapshot`] a shard hands over when
//! asked, summing snapshots, and what the exposition says (names, help, labels), written in the
//! OpenMetrics text format by `prometheus-client`.
//!
//! Does not own: asking the shards or serving HTTP (the runtime's admin listener does that),
//! or the values that are global anyway (open connections come from the connection table).
//!
//! Metric names are documented in `docs/deployment.md` ("Metrics").

use std::cell::{Cell, RefCell};
use std::fmt;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    text, DescriptorEncoder, EncodeLabelValue, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

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
    /// Times the watchdog interrupted each executor's thread (index = executor).
    pub executor_stall_wakeups: Vec<u64>,
}

/// One scrape's values, written out by `prometheus-client`'s OpenMetrics text encoder.
#[derive(Debug)]
struct Exposition {
    s: Snapshot,
    listeners: Vec<ListenerLabel>,
    g: Globals,
}

/// A counter or gauge with one unlabelled series. Counter names are given without the
/// `_total` the encoder appends to their samples.
fn single(
    e: &mut DescriptorEncoder,
    name: &str,
    kind: MetricType,
    help: &str,
    value: u64,
) -> fmt::Result {
    let m = e.encode_descriptor(name, help, None, kind)?;
    value_of(m, kind, value)
}

fn value_of(mut m: MetricEncoder, kind: MetricType, value: u64) -> fmt::Result {
    match kind {
        MetricType::Counter => m.encode_counter::<NoLabelSet, u64, f64>(&value, None),
        _ => m.encode_gauge(&value),
    }
}

/// A metric with one label: a series `name{label="key"} value` per item.
fn family<K: EncodeLabelValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    kind: MetricType,
    help: &str,
    label: &str,
    items: impl IntoIterator<Item = (K, u64)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (key, value) in items {
        value_of(m.encode_family(&[(label, key)])?, kind, value)?;
    }
    Ok(())
}

impl Collector for Exposition {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let (s, g, e) = (&self.s, &self.g, &mut e);
        single(
            e,
            "corepop_connections_current",
            Gauge,
            "Connections open now.",
            s.open.max(0) as u64,
        )?;
        family(
            e,
            "corepop_executor_connections",
            Gauge,
            "Connections open now, by executor (new ones go to the least loaded).",
            "executor",
            g.executor_connections.iter().copied().enumerate(),
        )?;
        family(
            e,
            "corepop_executor_stall_wakeups",
            Counter,
            "Times an executor made no progress for a second and the watchdog interrupted its thread.",
            "executor",
            g.executor_stall_wakeups.iter().copied().enumerate(),
        )?;
        let mut m = e.encode_descriptor(
            "corepop_connections",
            "Connections accepted, by listener.",
            None,
            Counter,
        )?;
        for (i, l) in self.listeners.iter().enumerate() {
            let labels = [
                ("listener", l.addr.as_str()),
                ("tls", if l.tls { "true" } else { "false" }),
                ("proxy", if l.proxy { "true" } else { "false" }),
            ];
            let accepted = s.accepted.get(i).copied().unwrap_or(0);
            value_of(m.encode_family(&labels)?, Counter, accepted)?;
        }
        family(
            e,
            "corepop_connections_refused",
            Counter,
            "Connections closed before the greeting, by reason.",
            "reason",
            REFUSALS.iter().copied().zip(s.refused),
        )?;
        family(
            e,
            "corepop_logins",
            Counter,
            "Login attempts, by result.",
            "result",
            LOGIN_RESULTS.iter().copied().zip(s.logins),
        )?;
        family(
            e,
            "corepop_commands",
            Counter,
            "Commands received, by name.",
            "command",
            COMMANDS.iter().copied().zip(s.commands),
        )?;
        family(
            e,
            "corepop_penalties",
            Counter,
            "Penalties applied, by kind.",
            "kind",
            PENALTIES.iter().copied().zip(s.penalties),
        )?;
        for (name, help, value) in [
            (
                "corepop_bytes_sent",
                "Bytes sent to clients (before TLS).",
                s.bytes_sent,
            ),
            (
                "corepop_bytes_received",
                "Bytes received from clients (after TLS).",
                s.bytes_received,
            ),
            (
                "corepop_lock_conflicts",
                "Logins refused because another session holds the maildrop.",
                s.lock_conflicts,
            ),
            (
                "corepop_tls_handshake_failures",
                "TLS handshakes that failed or timed out.",
                s.tls_handshake_failures,
            ),
            (
                "corepop_message_blocking_reads",
                "Message opens and reads done on the blocking pool because the kernel did not \
                 have them cached (and every mapped RETR); the rest were served on the executor.",
                s.blocking_reads,
            ),
        ] {
            single(e, name, Counter, help, value)?;
        }
        let mut m = e.encode_descriptor(
            "corepop_retrieve_duration_seconds",
            "Time to open and send one message for RETR or TOP.",
            None,
            MetricType::Histogram,
        )?;
        for (k, cmd) in ["RETR", "TOP"].into_iter().enumerate() {
            // Per-bucket counts; the encoder makes them cumulative. f64::MAX is +Inf to it.
            let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                .iter()
                .copied()
                .chain([f64::MAX])
                .zip(s.latency[k])
                .collect();
            let count = s.latency[k].iter().sum();
            let sum = s.latency_sum_us[k] as f64 / 1e6;
            m.encode_family(&[("command", cmd)])?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        family(
            e,
            "corepop_reloads",
            Counter,
            "SIGHUP reloads, by result.",
            "result",
            [("ok", g.reloads_ok), ("failed", g.reloads_failed)],
        )?;
        single(
            e,
            "corepop_scrape_shards_missing",
            Gauge,
            "Cores that did not answer this scrape in time.",
            g.shards_missing,
        )?;
        single(
            e,
            "corepop_start_time_seconds",
            Gauge,
            "Start time of the process since the Unix epoch.",
            g.start_time_secs,
        )?;
        family(
            e,
            "corepop_index_lookups",
            Counter,
            "Logins by where their maildrop snapshot came from: the shared in-memory index (hit) \
             or the directories and on-disk index (miss).",
            "result",
            [("hit", g.index_hits), ("miss", g.index_misses)],
        )?;
        single(
            e,
            "corepop_index_writes",
            Counter,
            "On-disk index rewrites: new or removed messages, or a damaged index rebuilt.",
            g.index_writes,
        )
    }
}

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The OpenMetrics text exposition of `s` (Prometheus scrapes it natively).
pub fn render(s: &Snapshot, listeners: &[ListenerLabel], g: &Globals) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition {
        s: s.clone(),
        listeners: listeners.to_vec(),
        g: g.clone(),
    }));
    let mut out = String::with_capacity(8192);
    text::encode(&mut out, &registry).expect("formatting into a String cannot fail");
    out
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
            "corepop_retrieve_duration_seconds_bucket{le=\"0.005\",command=\"RETR\"} 1",
            "corepop_retrieve_duration_seconds_bucket{le=\"0.0025\",command=\"RETR\"} 0",
            "corepop_retrieve_duration_seconds_bucket{le=\"10.0\",command=\"TOP\"} 0",
            "corepop_retrieve_duration_seconds_bucket{le=\"+Inf\",command=\"TOP\"} 1",
            "corepop_retrieve_duration_seconds_count{command=\"TOP\"} 1",
            "# TYPE corepop_logins counter",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
