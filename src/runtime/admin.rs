//! The admin listener: plain HTTP/1.0 `GET /metrics` in OpenMetrics text format.
//!
//! Owns: a std thread with a blocking listener (bound before privileges are dropped, like the
//! POP3 listeners), the few lines of HTTP, and asking every shard for a snapshot of its
//! counters over flume channels (glommio executors accept wake-ups from foreign threads). The
//! shards' snapshots are summed here, so no counter is shared between cores.
//!
//! Scrapes are rare and cheap; one is served at a time, with short socket timeouts so a slow
//! client cannot hold the thread for long. Bind it to loopback or a management network.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{self, ListenerLabel, Snapshot};

use super::Shared;

/// A shard's end: requests carry the channel to answer on.
pub(crate) type SnapshotRequest = flume::Sender<Snapshot>;

/// Serves scrapes until the process exits.
pub(crate) fn spawn(
    listener: TcpListener,
    shards: Vec<flume::Sender<SnapshotRequest>>,
    labels: Vec<ListenerLabel>,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("corepop-admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
                let mut req = [0u8; 2048];
                let mut n = 0;
                // Read until the end of the request head (or the buffer is full).
                while n < req.len() {
                    match conn.read(&mut req[n..]) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                    if req[..n].windows(4).any(|w| w == b"\r\n\r\n")
                        || req[..n].windows(2).any(|w| w == b"\n\n")
                    {
                        break;
                    }
                }
                let line = req[..n].split(|&b| b == b'\n').next().unwrap_or_default();
                let mut parts = line.split(|&b| b == b' ');
                let (method, path) = (parts.next(), parts.next());
                let (status, body, ctype) = match (method, path) {
                    (Some(b"GET"), Some(b"/metrics")) => (
                        "200 OK",
                        scrape(&shards, &labels, &shared),
                        crate::metrics::CONTENT_TYPE,
                    ),
                    (Some(b"GET"), _) => ("404 Not Found", "not found\n".into(), "text/plain"),
                    _ => (
                        "405 Method Not Allowed",
                        "only GET\n".into(),
                        "text/plain",
                    ),
                };
                let head = format!(
                    "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(body.as_bytes());
            }
        })?;
    Ok(())
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
