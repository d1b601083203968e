//! `corepop bench`: a closed-loop POP3 load generator for any POP3 server.
//!
//! Each of `--concurrency` worker tasks runs POP3 sessions back to back. The tasks are spread
//! over `--threads` threads (default: one per CPU), each a single-threaded tokio event loop
//! over non-blocking sockets. (It used to be one blocking thread per connection: at 256
//! connections that cost ~0.73 ms of the generator's CPU per full-download session against
//! ~0.56 ms now, on cores the server under test shares; docs/benchmarks.md §1. No glommio
//! here: the generator must not share the server's runtime or its quirks.) A session takes
//! the next free user from a FIFO pool and returns it when done, so users are used
//! round-robin and never by two sessions at once (POP3 servers lock a
//! maildrop per session). Every RETR body is checked against the sizes the server announced.
//!
//! Measurement: after `--warmup` seconds the counters are snapshot; the window ends after
//! `--duration` seconds or when `--sessions` sessions (started after the warmup) have ended.
//! Throughput is the counter difference over the window; latency percentiles cover sessions
//! that ended inside it. A progress line goes to stderr every second.
//!
//! TLS (`--tls implicit|starttls`): every connection, idle ones included, speaks TLS; each
//! user's sessions keep their own session cache, so a user's sessions resume unless
//! `--tls-no-resume` (idle connections, opened once per user, share one).
//!
//! Modules: [`client`] (the POP3 wire client), [`login`] (`--auth`: USER/PASS, APOP and
//! SASL logins), [`session`] (what a session does per mode, and the live counters),
//! [`idle`] (`--idle` connections, spread over child processes when many), [`hist`]
//! (latency histograms), [`cpu`] (server CPU from `/proc`), [`report`] (text/JSON output),
//! [`tls`] (the TLS client side), [`users`] (the users file).

pub mod client;
pub mod cpu;
pub mod hist;
pub mod idle;
pub mod login;
pub mod report;
pub mod session;
pub mod tls;
pub mod users;

use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use crossbeam::channel;
use rand::SeedableRng as _;

use client::{ErrorKind, SessionError};
use hist::Histogram;
pub use login::Auth;
pub use session::Mode;
use session::{Counters, SessionCfg, Snapshot};
pub use tls::TlsMode;
use users::User;

/// Run a closed-loop POP3 load test against any POP3 server (corepop, Dovecot, ...).
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Server address (host:port). Only loopback addresses unless --allow-non-loopback.
    #[arg(long, default_value = "127.0.0.1:110", value_name = "HOST:PORT")]
    pub addr: String,
    /// Logins: `user:password` lines, or a Dovecot passwd-file with {PLAIN} passwords.
    #[arg(long, value_name = "FILE")]
    pub users: PathBuf,
    /// Sessions run at once, each on its own connection (0: only hold --idle connections).
    #[arg(long, short = 'c', default_value_t = 16, value_name = "N")]
    pub concurrency: usize,
    /// Load generator threads; the --concurrency sessions are tasks spread over them, each
    /// thread an event loop (epoll) of its own [default: one per online CPU].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Length of the measurement window after the warmup [default: 10].
    #[arg(long, value_name = "SECS", conflicts_with = "sessions")]
    pub duration: Option<f64>,
    /// Measure this many sessions (started after the warmup) instead of a fixed time.
    #[arg(long, value_name = "N")]
    pub sessions: Option<u64>,
    /// Run the workload this long before measuring.
    #[arg(long, value_name = "SECS", default_value_t = 2.0)]
    pub warmup: f64,
    /// What each session does.
    #[arg(long, value_enum, default_value_t = Mode::Full)]
    pub mode: Mode,
    /// How sessions (and idle connections) log in.
    #[arg(long, value_enum, default_value_t = Auth::User)]
    pub auth: Auth,
    /// DELE each retrieved message before QUIT (full and retr-sample; default: never delete).
    #[arg(long)]
    pub dele: bool,
    /// Fraction of the messages that retr-sample retrieves (at least one).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.2)]
    pub sample: f64,
    /// Body lines that top mode asks for (TOP n LINES).
    #[arg(long, value_name = "LINES", default_value_t = 0)]
    pub top_lines: u64,
    /// Open and log in N connections first and hold them, silent, during the workload.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub idle: usize,
    /// Logins for the idle connections [default: the first N users of --users, which the
    /// workload then does not use].
    #[arg(long, value_name = "FILE")]
    pub idle_users: Option<PathBuf>,
    /// Idle connections stop after the greeting instead of logging in.
    #[arg(long)]
    pub idle_no_login: bool,
    /// Idle connections per process; more are spread over child processes.
    #[arg(long, value_name = "N", default_value_t = 15_000)]
    pub idle_per_process: usize,
    /// Timeout for connect and for every read and write.
    #[arg(long, value_name = "SECS", default_value_t = 30.0)]
    pub timeout: f64,
    /// Read buffer per connection.
    #[arg(long, value_name = "BYTES", default_value_t = 128 * 1024)]
    pub buffer: usize,
    /// Print one JSON object on stdout instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr (warnings and error samples still go there).
    #[arg(long, short)]
    pub quiet: bool,
    /// Server process to charge CPU time to (it and all its descendants; repeatable).
    #[arg(long = "server-pid", value_name = "PID")]
    pub server_pid: Vec<i32>,
    /// Random seed for retr-sample.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Allow a server address outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    pub allow_non_loopback: bool,
    /// Speak TLS: `implicit` handshakes right after connecting (POP3S, port 995 style),
    /// `starttls` sends STLS after the greeting [default: no TLS]. Needs --tls-ca or
    /// --tls-insecure.
    #[arg(long, value_enum, value_name = "MODE")]
    pub tls: Option<TlsMode>,
    /// Verify the server's certificate against the CA certificates in this PEM file.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub tls_ca: Option<PathBuf>,
    /// Accept any server certificate without verifying it (for benchmarks on loopback with
    /// self-signed certificates; the handshake signature is still checked). Insecure: never
    /// use it where an attacker could be in the path.
    #[arg(long, requires = "tls", conflicts_with = "tls_ca")]
    pub tls_insecure: bool,
    /// Name sent in SNI and checked against the certificate (with --tls-ca).
    #[arg(long, value_name = "NAME", default_value = "localhost")]
    pub tls_server_name: String,
    /// No TLS session resumption: every connection makes a full handshake (by default each
    /// user's sessions keep their own session cache and resume, as a mailbox's client does).
    #[arg(long, requires = "tls")]
    pub tls_no_resume: bool,
    /// Internal: run as an idle-connection worker process for users START..START+COUNT.
    #[arg(long, hide = true, value_name = "START:COUNT")]
    pub idle_worker: Option<String>,
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Keeps the first few error messages of each kind for the end of the run.
#[derive(Default)]
pub struct ErrorLog {
    samples: Mutex<Vec<(ErrorKind, String, u64)>>,
}

impl ErrorLog {
    const PER_KIND: usize = 3;

    pub fn record(&self, e: &SessionError) {
        let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(x) = s.iter_mut().find(|x| x.0 == e.kind && x.1 == e.detail) {
            x.2 += 1;
        } else if s.iter().filter(|x| x.0 == e.kind).count() < Self::PER_KIND {
            s.push((e.kind, e.detail.clone(), 1));
        }
    }

    pub fn print_to_stderr(&self, who: &str) {
        let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        for (kind, detail, n) in s.iter() {
            let times = if *n > 1 {
                format!(" (x{n})")
            } else {
                String::new()
            };
            eprintln!("{who}: {} error: {detail}{times}", kind.name());
        }
    }
}

/// State shared by the workers, the progress thread and the main thread.
struct Shared {
    counters: Counters,
    phase: AtomicU8,
    /// `--sessions`: tickets handed out / sessions with a ticket that have ended.
    session_limit: Option<u64>,
    tickets: AtomicU64,
    tickets_done: AtomicU64,
    workers_left: AtomicU64,
    errors: ErrorLog,
}

/// Per-worker latency histograms.
#[derive(Default)]
struct Hists {
    session: Histogram,
    login: Histogram,
    noop: Histogram,
}

impl Hists {
    fn merge(&mut self, o: &Hists) {
        self.session.merge(&o.session);
        self.login.merge(&o.login);
        self.noop.merge(&o.noop);
    }
}

fn secs(v: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(v).map_err(|_| anyhow::anyhow!("bad {what}: {v}"))
}

fn resolve(addr: &str, allow_non_loopback: bool) -> anyhow::Result<SocketAddr> {
    let a = addr
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to nothing"))?;
    if !a.ip().is_loopback() && !allow_non_loopback {
        bail!("{a} is not a loopback address; pass --allow-non-loopback to load a remote server");
    }
    Ok(a)
}

/// The soft and hard open-files limits, from `/proc/self/limits`.
fn nofile_limits() -> Option<(usize, usize)> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let rest = text
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    let parse = |s: &str| match s {
        "unlimited" => Some(usize::MAX),
        s => s.parse().ok(),
    };
    let mut f = rest.split_ascii_whitespace();
    Some((parse(f.next()?)?, parse(f.next()?)?))
}

/// Splits the logins into (idle, workload) users.
fn split_users(args: &BenchArgs) -> anyhow::Result<(Vec<User>, Vec<User>)> {
    let all = users::load(&args.users)?;
    if args.idle == 0 {
        return Ok((Vec::new(), all));
    }
    if let Some(path) = &args.idle_users {
        let idle = users::load(path)?;
        if idle.len() < args.idle {
            bail!(
                "--idle {} but {} lists only {} users",
                args.idle,
                path.display(),
                idle.len()
            );
        }
        return Ok((idle[..args.idle].to_vec(), all));
    }
    let needed = args.idle + usize::from(args.concurrency > 0);
    if all.len() < needed {
        bail!(
            "--idle {} takes the first {} users of {} (which lists {}), leaving none for the workload; \
             pass --idle-users FILE",
            args.idle,
            args.idle,
            args.users.display(),
            all.len()
        );
    }
    let mut all = all;
    let work = all.split_off(args.idle);
    Ok((all, work))
}

/// The TLS client for `--tls`, or `None`.
fn tls_client(args: &BenchArgs) -> anyhow::Result<Option<tls::TlsClient>> {
    let Some(mode) = args.tls else {
        return Ok(None);
    };
    let verify = match (&args.tls_ca, args.tls_insecure) {
        (Some(ca), false) => tls::Verify::Ca(ca),
        (None, true) => tls::Verify::Insecure,
        (Some(_), true) => bail!("--tls-ca and --tls-insecure exclude each other"),
        (None, false) => bail!(
            "--tls needs --tls-ca FILE to verify the server's certificate, or --tls-insecure \
             to accept any"
        ),
    };
    let t = tls::TlsClient::new(mode, verify, &args.tls_server_name, !args.tls_no_resume)?;
    Ok(Some(t))
}

/// Runs `corepop bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let addr = resolve(&args.addr, args.allow_non_loopback)?;
    let timeout = secs(args.timeout, "--timeout")?;
    let tls = tls_client(&args)?;
    let idle_cfg = idle::IdleCfg {
        addr,
        timeout,
        login: (!args.idle_no_login).then_some(args.auth),
        tls: tls.clone(),
    };
    let (nofile, nofile_hard) = nofile_limits().unwrap_or((1024, 1024));
    if let Some(spec) = &args.idle_worker {
        let (idle_users, _) = split_users(&args)?;
        return idle::child_main(idle_cfg, &idle_users, spec);
    }

    if args.dele && !matches!(args.mode, Mode::Full | Mode::RetrSample) {
        bail!("--dele applies only to --mode full and retr-sample");
    }
    if args.mode == Mode::Idle && args.sessions.is_some() {
        bail!("--mode idle runs for --duration; --sessions does not apply");
    }
    if !(args.sample > 0.0 && args.sample <= 1.0) {
        bail!("--sample must be in (0, 1]");
    }
    if args.concurrency == 0 && args.sessions.is_some() {
        bail!("--sessions needs --concurrency > 0");
    }
    let warmup = secs(args.warmup, "--warmup")?;
    let duration = secs(args.duration.unwrap_or(10.0), "--duration")?;
    let (idle_users, work_users) = split_users(&args)?;
    if args.concurrency > work_users.len() {
        eprintln!(
            "bench: warning: {} workers share {} users; workers wait for a free user",
            args.concurrency,
            work_users.len()
        );
    }
    let cfg = Arc::new(SessionCfg {
        addr,
        timeout,
        mode: args.mode,
        dele: args.dele,
        sample: args.sample,
        top_lines: args.top_lines,
        buf_size: args.buffer,
        auth: args.auth,
        tls,
    });

    // Idle connections first.
    let mut idle_report = None;
    let mut idle_local = Vec::new();
    let mut idle_workers = Vec::new();
    if args.idle > 0 {
        let t0 = Instant::now();
        // This process also needs descriptors for the workers; children only hold idle ones.
        let here = args
            .idle_per_process
            .min(nofile.saturating_sub(args.concurrency + 256));
        let per_child = args.idle_per_process.min(nofile.saturating_sub(256)).max(1);
        if nofile < nofile_hard && args.idle + args.concurrency + 256 > nofile {
            eprintln!(
                "bench: the open-files limit is {nofile} (hard limit {nofile_hard}); \
                 `ulimit -n {nofile_hard}` would need fewer idle worker processes"
            );
        }
        let mut rep = report::IdleReport {
            requested: args.idle,
            logged_in: idle_cfg.login.is_some(),
            ..Default::default()
        };
        if !args.quiet {
            eprintln!("bench: opening {} idle connections", args.idle);
        }
        if args.idle > here {
            idle_workers = idle::spawn_workers(args.idle, per_child)?;
            rep.processes = idle_workers.len();
            for w in &idle_workers {
                rep.opened += w.opened;
                for (a, b) in rep.failed.iter_mut().zip(w.failed) {
                    *a += b;
                }
            }
        } else {
            let log = ErrorLog::default();
            let opened = idle::open_local(&idle_cfg, &idle_users, 0, &log);
            log.print_to_stderr("bench: idle");
            rep.opened = opened.streams.len();
            rep.failed = opened.failed;
            idle_local = opened.streams;
        }
        rep.setup_s = t0.elapsed().as_secs_f64();
        if !args.quiet {
            eprintln!(
                "bench: {} idle connections open after {:.1} s",
                rep.opened, rep.setup_s
            );
        }
        idle_report = Some(rep);
    }

    let shared = Arc::new(Shared {
        counters: Counters::default(),
        phase: AtomicU8::new(if warmup.is_zero() { MEASURE } else { WARMUP }),
        session_limit: args.sessions,
        tickets: AtomicU64::new(0),
        tickets_done: AtomicU64::new(0),
        workers_left: AtomicU64::new(args.concurrency as u64),
        errors: ErrorLog::default(),
    });
    let users = Arc::new(work_users);
    let (pool_tx, pool_rx) = channel::bounded::<usize>(users.len());
    for i in 0..users.len() {
        pool_tx.send(i).expect("pool has room");
    }
    let seed = args.seed.unwrap_or_else(rand::random);

    let start = Instant::now();
    // Sessions are tasks, spread evenly over the threads; each thread runs its own
    // single-threaded event loop, so a session never moves between threads.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args
        .threads
        .unwrap_or(cpus)
        .clamp(1, args.concurrency.max(1));
    let mut workers = Vec::with_capacity(threads);
    for t in 0..threads {
        let tasks: Vec<usize> = (t..args.concurrency).step_by(threads).collect();
        let shared = Arc::clone(&shared);
        let cfg = Arc::clone(&cfg);
        let users = Arc::clone(&users);
        let (tx, rx) = (pool_tx.clone(), pool_rx.clone());
        let h = std::thread::Builder::new()
            .name(format!("bench-{t}"))
            .spawn(move || -> anyhow::Result<Hists> {
                let rt = runtime()?;
                let local = tokio::task::LocalSet::new();
                let hists = local.block_on(&rt, async move {
                    let handles: Vec<_> = tasks
                        .into_iter()
                        .map(|id| {
                            let rng_seed = seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                            let w = worker(
                                Arc::clone(&shared),
                                Arc::clone(&cfg),
                                Arc::clone(&users),
                                tx.clone(),
                                rx.clone(),
                                rng_seed,
                            );
                            let shared = Arc::clone(&shared);
                            tokio::task::spawn_local(async move {
                                let h = w.await;
                                shared.workers_left.fetch_sub(1, Relaxed);
                                h
                            })
                        })
                        .collect();
                    let mut all = Hists::default();
                    let mut panicked = 0;
                    for h in handles {
                        match h.await {
                            Ok(h) => all.merge(&h),
                            Err(_) => panicked += 1,
                        }
                    }
                    (all, panicked)
                });
                match hists {
                    (h, 0) => Ok(h),
                    (_, n) => bail!("{n} load generator task(s) panicked"),
                }
            })
            .context("starting a load generator thread")?;
        workers.push(h);
    }
    drop((pool_tx, pool_rx));

    let progress_done = Arc::new(AtomicBool::new(false));
    let progress = (!args.quiet).then(|| {
        let shared = Arc::clone(&shared);
        let done = Arc::clone(&progress_done);
        let mode = args.mode;
        std::thread::spawn(move || progress_loop(&shared, &done, start, mode))
    });

    let me = std::process::id() as i32;
    if !warmup.is_zero() {
        std::thread::sleep(warmup);
    }
    let s0 = shared.counters.snapshot();
    let srv0 = cpu::tree_cpu_seconds(&args.server_pid);
    let cli0 = cpu::tree_cpu_seconds(&[me]);
    let t0 = Instant::now();
    shared.phase.store(MEASURE, Relaxed);
    match args.sessions {
        None => std::thread::sleep(duration),
        Some(n) => {
            while shared.tickets_done.load(Relaxed) < n && shared.workers_left.load(Relaxed) > 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    shared.phase.store(STOP, Relaxed);
    let s1 = shared.counters.snapshot();
    let measured = t0.elapsed();
    let srv1 = cpu::tree_cpu_seconds(&args.server_pid);
    let cli1 = cpu::tree_cpu_seconds(&[me]);

    let mut hists = Hists::default();
    for w in workers {
        let h = w
            .join()
            .map_err(|_| anyhow::anyhow!("a load generator thread panicked"))??;
        hists.merge(&h);
    }
    progress_done.store(true, Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    if let Some(rep) = &mut idle_report {
        rep.alive_at_end = if idle_workers.is_empty() {
            idle::close_all(std::mem::take(&mut idle_local))
        } else {
            idle::stop_workers(std::mem::take(&mut idle_workers))
        };
    }
    shared.errors.print_to_stderr("bench");

    let rep = report::Report {
        addr: addr.to_string(),
        mode: args.mode,
        auth: args.auth,
        concurrency: args.concurrency,
        users: users.len(),
        warmup_s: warmup.as_secs_f64(),
        measured_s: measured.as_secs_f64(),
        window: s1.since(&s0),
        all: shared.counters.snapshot(),
        session: hists.session.summary(),
        login: hists.login.summary(),
        noop: hists.noop.summary(),
        server_cpu_s: (!args.server_pid.is_empty()).then_some(srv1 - srv0),
        client_cpu_s: cli1 - cli0,
        idle: idle_report,
        tls: args.tls,
        tls_resume: !args.tls_no_resume,
    };
    if args.json {
        println!("{}", rep.to_json());
    } else {
        print!("{}", rep.to_text());
    }
    Ok(())
}

/// Takes the next free user, or `None` once the run is stopping.
async fn take_user(shared: &Shared, rx: &channel::Receiver<usize>) -> Option<usize> {
    loop {
        if shared.phase.load(Relaxed) == STOP {
            return None;
        }
        match rx.try_recv() {
            Ok(u) => return Some(u),
            // More workers than users: wait for one to come back.
            Err(channel::TryRecvError::Empty) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(channel::TryRecvError::Disconnected) => return None,
        }
    }
}

async fn failed(shared: &Shared, e: &SessionError) {
    shared.counters.sessions_failed.fetch_add(1, Relaxed);
    shared.counters.error(e.kind);
    shared.errors.record(e);
    // Do not spin on a server that refuses everything.
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// One worker task: sessions back to back until the run stops.
async fn worker(
    shared: Arc<Shared>,
    cfg: Arc<SessionCfg>,
    users: Arc<Vec<User>>,
    tx: channel::Sender<usize>,
    rx: channel::Receiver<usize>,
    seed: u64,
) -> Hists {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut h = Hists::default();
    while let Some(u) = take_user(&shared, &rx).await {
        let mut ticketed = false;
        if let Some(limit) = shared.session_limit {
            if shared.phase.load(Relaxed) == MEASURE {
                if shared.tickets.fetch_add(1, Relaxed) >= limit {
                    let _ = tx.send(u);
                    break;
                }
                ticketed = true;
            }
        }
        if cfg.mode == Mode::Idle {
            noop_loop(&shared, &cfg, &users[u], &mut h).await;
        } else {
            let r = session::run(&cfg, &users[u], &mut rng, &shared.counters).await;
            let counted = shared.phase.load(Relaxed) == MEASURE
                && (shared.session_limit.is_none() || ticketed);
            match r {
                Ok(o) => {
                    shared.counters.sessions_ok.fetch_add(1, Relaxed);
                    if counted {
                        h.session.record(o.total);
                        h.login.record(o.login);
                    }
                }
                Err(e) => failed(&shared, &e).await,
            }
        }
        let _ = tx.send(u);
        if ticketed {
            shared.tickets_done.fetch_add(1, Relaxed);
        }
    }
    h
}

/// `--mode idle`: log in once, then NOOP round trips until the run stops.
async fn noop_loop(shared: &Shared, cfg: &SessionCfg, user: &User, h: &mut Hists) {
    let t0 = Instant::now();
    let mut c = match session::open(cfg, user, &shared.counters).await {
        Ok(c) => c,
        Err(e) => return failed(shared, &e).await,
    };
    if shared.phase.load(Relaxed) == MEASURE {
        h.login.record(t0.elapsed());
    }
    while shared.phase.load(Relaxed) != STOP {
        let t = Instant::now();
        let r = match c.command(b"NOOP", &[]).await {
            Ok(()) => c.expect_ok("NOOP").await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            return failed(shared, &e).await;
        }
        shared.counters.noops.fetch_add(1, Relaxed);
        if shared.phase.load(Relaxed) == MEASURE {
            h.noop.record(t.elapsed());
        }
    }
    match c.quit(cfg.linger()).await {
        Ok(()) => {
            shared.counters.sessions_ok.fetch_add(1, Relaxed);
        }
        Err(e) => failed(shared, &e).await,
    }
}

/// A single-threaded tokio runtime with sockets and timers: one per load generator thread.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .context("starting an event loop")
}

/// Runs `f` to completion on a fresh [`runtime`] (idle connection set-up, tests).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().expect("event loop").block_on(f)
}

fn progress_loop(shared: &Shared, done: &AtomicBool, start: Instant, mode: Mode) {
    let mut last: Snapshot = shared.counters.snapshot();
    let mut last_t = Instant::now();
    let mut next = last_t + Duration::from_secs(1);
    while !done.load(Relaxed) {
        let now = Instant::now();
        if now < next {
            std::thread::sleep((next - now).min(Duration::from_millis(50)));
            continue;
        }
        next += Duration::from_secs(1);
        let s = shared.counters.snapshot();
        let dt = now.duration_since(last_t).as_secs_f64().max(1e-9);
        let d = s.since(&last);
        let phase = match shared.phase.load(Relaxed) {
            WARMUP => "warmup",
            MEASURE => "run",
            _ => "stop",
        };
        let rate = if mode == Mode::Idle {
            format!("{:>9.1} noops/s", d.noops as f64 / dt)
        } else {
            format!(
                "{:>8.1} sessions/s {:>8.1} MB/s",
                d.sessions_ok as f64 / dt,
                d.bytes as f64 / dt / 1e6
            )
        };
        eprintln!(
            "[{:>4.0}s {phase:<6}] {rate}   errors {} (total {})",
            start.elapsed().as_secs_f64(),
            d.error_total(),
            s.error_total()
        );
        last = s;
        last_t = now;
    }
}
