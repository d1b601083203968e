//! `--idle N`: connections opened (and logged in) before the workload and held, silent,
//! while it runs.
//!
//! One process can hold only as many sockets as its open-file limit allows (20,000 on the
//! development machine), so above `--idle-per-process` the connections are spread over
//! child processes: the current executable re-run with the same arguments plus the hidden
//! `--idle-worker START:COUNT`. A child opens its share, prints one `ready` line on stdout,
//! holds the connections until its stdin says `stop` (or closes, e.g. because the parent
//! died), then prints one `done` line with how many were still open and silent.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use super::client::{idle_source, Conn, ErrorKind, Held, SessionError};
use super::login::{login, Auth};
use super::tls::TlsClient;
use super::users::User;
use super::ErrorLog;

const READY: &str = "corepop-bench-idle ready";
const DONE: &str = "corepop-bench-idle done";
/// Logins refused with `[IN-USE]` are tried again this many times, 50 ms apart.
const IN_USE_RETRIES: usize = 40;

/// How idle connections are opened.
#[derive(Clone, Debug)]
pub struct IdleCfg {
    pub addr: SocketAddr,
    pub timeout: Duration,
    /// Log in this way, or (`None`) stop after the greeting (after STLS and the handshake
    /// with `--tls starttls`).
    pub login: Option<Auth>,
    pub tls: Option<TlsClient>,
}

/// The result of opening a batch of idle connections.
pub struct Opened {
    pub streams: Vec<Held>,
    pub failed: [u64; ErrorKind::COUNT],
}

/// Opens one idle connection per user, with a few threads. `first` is the index of
/// `users[0]` among all idle users (it picks the source addresses, [`idle_source`]).
pub fn open_local(cfg: &IdleCfg, users: &[User], first: usize, errors: &ErrorLog) -> Opened {
    let threads = (users.len() / 256).clamp(1, 16);
    let chunk = users.len().div_ceil(threads).max(1);
    let results: Vec<Opened> = std::thread::scope(|s| {
        let handles: Vec<_> = users
            .chunks(chunk)
            .enumerate()
            .map(|(n, part)| {
                s.spawn(move || {
                    let mut out = Opened {
                        streams: Vec::with_capacity(part.len()),
                        failed: [0; ErrorKind::COUNT],
                    };
                    let rt = match super::runtime() {
                        Ok(rt) => rt,
                        Err(e) => {
                            errors.record(&SessionError::new(ErrorKind::Connect, e.to_string()));
                            out.failed[ErrorKind::Connect.index()] += part.len() as u64;
                            return out;
                        }
                    };
                    for (i, u) in part.iter().enumerate() {
                        let source = idle_source(cfg.addr, first + n * chunk + i);
                        let open = || async {
                            let mut c =
                                Conn::open(cfg.addr, source, cfg.timeout, 1024, cfg.tls.as_ref())
                                    .await?;
                            if let Some(auth) = cfg.login {
                                login(&mut c, &u.name, &u.password, auth).await?;
                            }
                            c.into_held()
                        };
                        // The previous run's connection of the same user sent QUIT without
                        // waiting for the reply ([`close_all`]); until the server has
                        // processed it the maildrop is still locked. Not what is measured:
                        // retry for up to ~2 s.
                        let mut r = rt.block_on(open());
                        for _ in 0..IN_USE_RETRIES {
                            match &r {
                                Err(e) if e.kind == ErrorKind::InUse => {
                                    std::thread::sleep(Duration::from_millis(50));
                                    r = rt.block_on(open());
                                }
                                _ => break,
                            }
                        }
                        match r {
                            Ok(c) => out.streams.push(c),
                            Err(e) => {
                                out.failed[e.kind.index()] += 1;
                                errors.record(&e);
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("idle opener panicked"))
            .collect()
    });
    let mut all = Opened {
        streams: Vec::with_capacity(users.len()),
        failed: [0; ErrorKind::COUNT],
    };
    for r in results {
        all.streams.extend(r.streams);
        for (a, b) in all.failed.iter_mut().zip(r.failed) {
            *a += b;
        }
    }
    all
}

/// Counts the connections that are still open and silent, then sends QUIT on all of them
/// (without waiting for replies) and closes them.
pub fn close_all(streams: Vec<Held>) -> usize {
    let mut streams = streams;
    let alive = streams.iter_mut().map(Held::is_idle).filter(|i| *i).count();
    for mut s in streams {
        s.send_quit_nonblocking();
    }
    alive
}

fn format_failed(failed: &[u64; ErrorKind::COUNT]) -> String {
    let parts: Vec<String> = ErrorKind::ALL
        .iter()
        .filter(|k| failed[k.index()] > 0)
        .map(|k| format!("{}:{}", k.name(), failed[k.index()]))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(",")
    }
}

fn parse_failed(s: &str) -> [u64; ErrorKind::COUNT] {
    let mut out = [0; ErrorKind::COUNT];
    for part in s.split(',') {
        if let Some((k, v)) = part.split_once(':') {
            if let (Some(k), Ok(v)) = (ErrorKind::from_name(k), v.parse::<u64>()) {
                out[k.index()] += v;
            }
        }
    }
    out
}

/// `key=value` from a status line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_ascii_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// The body of a child process (`--idle-worker START:COUNT`).
pub fn child_main(cfg: IdleCfg, users: &[User], spec: &str) -> anyhow::Result<()> {
    let (start, count) = spec
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .context("--idle-worker wants START:COUNT")?;
    let Some(mine) = users.get(start..start + count) else {
        bail!("--idle-worker {spec}: only {} idle users", users.len());
    };
    let errors = ErrorLog::default();
    let t0 = Instant::now();
    let opened = open_local(&cfg, mine, start, &errors);
    errors.print_to_stderr("idle worker");
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{READY} opened={} failed={} setup_ms={}",
        opened.streams.len(),
        format_failed(&opened.failed),
        t0.elapsed().as_millis()
    )?;
    out.flush()?;
    // Hold until told to stop, or until the parent goes away (EOF).
    let mut line = String::new();
    let stdin = std::io::stdin();
    loop {
        line.clear();
        match stdin.lock().read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line.trim() == "stop" => break,
            Ok(_) => continue,
        }
    }
    let alive = close_all(opened.streams);
    writeln!(out, "{DONE} alive={alive}")?;
    out.flush()?;
    Ok(())
}

/// One child process holding idle connections.
pub struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub opened: usize,
    pub failed: [u64; ErrorKind::COUNT],
}

/// Starts children for `total` idle connections, `per_process` at most each, and waits
/// until all have opened theirs.
pub fn spawn_workers(total: usize, per_process: usize) -> anyhow::Result<Vec<Worker>> {
    let exe = std::env::current_exe().context("finding the current executable")?;
    let n = total.div_ceil(per_process.max(1));
    let base = total / n;
    let extra = total % n;
    let mut workers = Vec::with_capacity(n);
    let mut start = 0;
    for i in 0..n {
        let count = base + usize::from(i < extra);
        let mut child = Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .arg("--idle-worker")
            .arg(format!("{start}:{count}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting idle worker {}", exe.display()))?;
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().context("child stdout")?);
        workers.push(Worker {
            child,
            stdin,
            stdout,
            opened: 0,
            failed: [0; ErrorKind::COUNT],
        });
        start += count;
    }
    for w in &mut workers {
        let mut line = String::new();
        w.stdout.read_line(&mut line)?;
        if !line.starts_with(READY) {
            bail!("idle worker did not start (said {line:?})");
        }
        w.opened = field(&line, "opened")
            .and_then(|v| v.parse().ok())
            .context("idle worker: no opened=")?;
        w.failed = parse_failed(field(&line, "failed").unwrap_or("-"));
    }
    Ok(workers)
}

/// Tells the children to stop; returns how many connections were still alive in total.
pub fn stop_workers(workers: Vec<Worker>) -> usize {
    let mut workers = workers;
    for w in &mut workers {
        if let Some(mut s) = w.stdin.take() {
            let _ = s.write_all(b"stop\n");
        }
    }
    let mut alive = 0;
    for mut w in workers {
        let mut line = String::new();
        if w.stdout.read_line(&mut line).is_ok() && line.starts_with(DONE) {
            alive += field(&line, "alive")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
        }
        let _ = w.child.wait();
    }
    alive
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing stdin makes the child close its connections and exit.
        self.stdin.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_round_trip() {
        let mut f = [0; ErrorKind::COUNT];
        f[ErrorKind::Auth.index()] = 3;
        f[ErrorKind::Timeout.index()] = 1;
        let line = format!("{READY} opened=12 failed={} setup_ms=5", format_failed(&f));
        assert_eq!(field(&line, "opened"), Some("12"));
        assert_eq!(parse_failed(field(&line, "failed").unwrap()), f);
        assert_eq!(parse_failed("-"), [0; ErrorKind::COUNT]);
    }
}
