//! The admin listener: plain HTTP `GET /metrics` (and `HEAD`) in OpenMetrics text format.
//!
//! Owns: a std thread with a blocking listener (bound before privileges are dropped, like the
//! POP3 listeners) that hands each connection to a short-lived thread of its own, the few
//! lines of HTTP, and asking every shard for a snapshot of its counters over flume channels
//! (glommio executors accept wake-ups from foreign threads). The shards' snapshots are summed
//! here, so no counter is shared between cores.
//!
//! Abuse: a client gets [`READ_DEADLINE`] in all to send its request head and
//! [`WRITE_DEADLINE`] in all to take the answer (deadlines for the whole exchange, not per
//! read or write, so trickling one byte at a time does not extend them), and at most
//! [`MAX_CLIENTS`] are served at once; further connections wait in the listen queue until one
//! of those ends. So a stuck or slow client delays a scrape by at most the read deadline
//! while the others are full, and never stops it. There is no authentication: bind it to
//! loopback or a management network.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::{self, ListenerLabel, Snapshot};

use super::Shared;

/// A shard's end: requests carry the channel to answer on.
pub(crate) type SnapshotRequest = flume::Sender<Snapshot>;

/// Time a client has to send its whole request head.
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// Time a client has to take the whole answer.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Connections served at once.
const MAX_CLIENTS: usize = 16;
/// Longest request head read; the rest is ignored.
const MAX_HEAD: usize = 4096;

/// Serves scrapes until the process exits.
pub(crate) fn spawn(
    listener: TcpListener,
    shards: Vec<flume::Sender<SnapshotRequest>>,
    labels: Vec<ListenerLabel>,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    let ctx = Arc::new(Scraper {
        shards,
        labels,
        shared,
    });
    std::thread::Builder::new()
        .name("corepop-admin".into())
        .spawn(move || {
            // A token per connection being served: sending blocks while MAX_CLIENTS are.
            let (busy_tx, busy_rx) = flume::bounded::<()>(MAX_CLIENTS);
            loop {
                let conn = match listener.accept() {
                    Ok((conn, _)) => conn,
                    Err(e) => {
                        // Out of descriptors (EMFILE) and the like: the connection stays
                        // queued and accept fails again at once, so wait instead of spinning.
                        if e.kind() != ErrorKind::Interrupted {
                            tracing::warn!(error = %e, "admin listener: accept failed");
                            std::thread::sleep(Duration::from_millis(200));
                        }
                        continue;
                    }
                };
                if busy_tx.send(()).is_err() {
                    return;
                }
                let ctx = ctx.clone();
                let done = busy_rx.clone();
                let spawned = std::thread::Builder::new()
                    .name("corepop-admin-conn".into())
                    .stack_size(256 << 10)
                    .spawn(move || {
                        // Gives the token back however the handler ends.
                        struct Release(flume::Receiver<()>);
                        impl Drop for Release {
                            fn drop(&mut self) {
                                let _ = self.0.try_recv();
                            }
                        }
                        let _release = Release(done);
                        serve(conn, &ctx);
                    });
                if let Err(e) = spawned {
                    tracing::warn!(error = %e, "admin listener: cannot start a thread");
                    let _ = busy_rx.try_recv();
                }
            }
        })?;
    Ok(())
}

/// What the admin thread needs to answer a scrape.
struct Scraper {
    shards: Vec<flume::Sender<SnapshotRequest>>,
    labels: Vec<ListenerLabel>,
    shared: Arc<Shared>,
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `GET /metrics` (`head`: `HEAD /metrics`, the same headers without the body).
    Metrics {
        head: bool,
    },
    NotFound {
        head: bool,
    },
    MethodNotAllowed,
}

/// Routes a request by its first line. The query string is ignored (Prometheus' `params`
/// scrape setting adds one); methods are case-sensitive (RFC 9110 §9.1).
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let head = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => return Route::MethodNotAllowed,
    };
    if path == b"/metrics" {
        Route::Metrics { head }
    } else {
        Route::NotFound { head }
    }
}

/// Reads the request head until its blank line, `MAX_HEAD` bytes, EOF, or the deadline.
fn read_head(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let deadline = Instant::now() + READ_DEADLINE;
    let mut req = vec![0u8; MAX_HEAD];
    let mut n = 0;
    while n < req.len() {
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
            return None;
        }
        match conn.read(&mut req[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
        if req[..n].windows(4).any(|w| w == b"\r\n\r\n")
            || req[..n].windows(2).any(|w| w == b"\n\n")
        {
            break;
        }
    }
    req.truncate(n);
    Some(req)
}

/// Writes all of `buf` before `deadline`.
fn write_by(conn: &mut TcpStream, mut buf: &[u8], deadline: Instant) -> std::io::Result<()> {
    while !buf.is_empty() {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ErrorKind::TimedOut)?;
        conn.set_write_timeout(Some(left))?;
        match conn.write(buf) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(k) => buf = &buf[k..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One connection: one request, one answer, close.
fn serve(mut conn: TcpStream, ctx: &Scraper) {
    let Some(req) = read_head(&mut conn) else {
        return;
    };
    if req.is_empty() {
        return;
    }
    let (status, body, ctype, head_only, allow) = match route(&req) {
        Route::Metrics { head } => (
            "200 OK",
            scrape(&ctx.shards, &ctx.labels, &ctx.shared),
            metrics::CONTENT_TYPE,
            head,
            "",
        ),
        Route::NotFound { head } => (
            "404 Not Found",
            "not found\n".into(),
            "text/plain",
            head,
            "",
        ),
        Route::MethodNotAllowed => (
            "405 Method Not Allowed",
            "only GET and HEAD\n".into(),
            "text/plain",
            false,
            "Allow: GET, HEAD\r\n",
        ),
    };
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    let deadline = Instant::now() + WRITE_DEADLINE;
    if write_by(&mut conn, &out, deadline).is_ok() {
        // Close our side first, then take what else the client sent for a moment: closing
        // with request bytes unread (a long head, a body) would send a reset, which can
        // destroy the answer before the client has read it.
        let _ = conn.shutdown(std::net::Shutdown::Write);
        let until = Instant::now() + Duration::from_secs(1);
        let mut sink = [0u8; 1024];
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if left.is_zero() || conn.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match conn.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

fn scrape(
    shards: &[flume::Sender<SnapshotRequest>],
    labels: &[ListenerLabel],
    shared: &Shared,
) -> String {
    let mut sum = Snapshot::default();
    let mut missing = 0;
    let mut waiting = Vec::new();
    for s in shards {
        let (tx, rx) = flume::bounded(1);
        if s.send(tx).is_ok() {
            waiting.push(rx);
        } else {
            missing += 1;
        }
    }
    for rx in waiting {
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(snap) => sum.add(&snap),
            Err(_) => missing += 1,
        }
    }
    let globals = metrics::Globals {
        reloads_ok: shared.ops.reloads_ok.load(Ordering::Relaxed),
        reloads_failed: shared.ops.reloads_failed.load(Ordering::Relaxed),
        shards_missing: missing,
        start_time_secs: shared.ops.start_time_secs,
        index_hits: shared.index_cache.stats().hits.load(Ordering::Relaxed),
        index_misses: shared.index_cache.stats().misses.load(Ordering::Relaxed),
        index_writes: shared
            .index_cache
            .stats()
            .index_writes
            .load(Ordering::Relaxed),
        executor_connections: shared.balance.counts(),
        executor_stall_wakeups: shared.watchdog.wakeups(),
    };
    metrics::render(&sum, labels, &globals)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let m = |head| Route::Metrics { head };
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), m(false));
        assert_eq!(route(b"GET /metrics"), m(false));
        assert_eq!(route(b"GET /metrics?a=b&c HTTP/1.0\n\n"), m(false));
        assert_eq!(route(b"HEAD /metrics HTTP/1.1\r\n\r\n"), m(true));
        assert_eq!(
            route(b"GET /metricsx HTTP/1.1\r\n\r\n"),
            Route::NotFound { head: false }
        );
        assert_eq!(
            route(b"HEAD / HTTP/1.1\r\n\r\n"),
            Route::NotFound { head: true }
        );
        assert_eq!(route(b"get /metrics HTTP/1.1\r\n"), Route::MethodNotAllowed);
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n"),
            Route::MethodNotAllowed
        );
        assert_eq!(route(b""), Route::MethodNotAllowed);
    }
}
