//! Micro-benchmarks of the pure parts: command framing and parsing, transfer plans and the
//! streaming transform on the message shapes Maildirs hold, and a whole session transcript
//! without sockets.
//! Run: `cargo bench --bench engine`.

use std::sync::Arc;

use corepop::mailbox::{crlf_size, StreamTransform, TransferPlan};
use corepop::protocol::{
    command, ConnInfo, Line, LineDecoder, LoginResult, Maildrop, Session, SessionConfig, Step,
};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn message(lines: usize, crlf: bool, dot_every: usize) -> Vec<u8> {
    let nl: &[u8] = if crlf { b"\r\n" } else { b"\n" };
    let mut m = Vec::new();
    for h in [
        "From: a@example.org",
        "To: b@example.org",
        "Subject: benchmark",
    ] {
        m.extend_from_slice(h.as_bytes());
        m.extend_from_slice(nl);
    }
    m.extend_from_slice(nl);
    for i in 0..lines {
        if dot_every > 0 && i % dot_every == 0 {
            m.push(b'.');
        }
        m.extend_from_slice(
            b"The quick brown fox jumps over the lazy dog, line of a message body.",
        );
        m.extend_from_slice(nl);
    }
    m
}

fn transfer(c: &mut Criterion) {
    let mut g = c.benchmark_group("transfer_plan");
    let mut buf = vec![0u8; 64 * 1024];
    for (name, msg) in [
        ("crlf_clean_14k", message(200, true, 0)),
        ("lf_14k", message(200, false, 0)),
        ("lf_dot_heavy_14k", message(200, false, 2)),
        ("lf_1m", message(14_000, false, 0)),
    ] {
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_with_input(BenchmarkId::new("wire", name), &msg, |b, msg| {
            b.iter(|| {
                let mut plan = TransferPlan::retr(black_box(msg));
                if let Some(s) = plan.as_slice() {
                    return s.len();
                }
                let mut total = 0;
                loop {
                    let n = plan.fill(&mut buf);
                    if n == 0 {
                        break total;
                    }
                    total += n;
                }
            })
        });
        // What the server runs for a message it reads with pread: 64 KiB chunks through a
        // StreamTransform into one reused output buffer.
        let mut wire = Vec::with_capacity(160 * 1024);
        g.bench_with_input(BenchmarkId::new("stream", name), &msg, |b, msg| {
            b.iter(|| {
                let mut t = StreamTransform::retr();
                let mut total = 0;
                for chunk in black_box(msg).chunks(64 * 1024) {
                    wire.clear();
                    t.push(chunk, &mut wire);
                    total += wire.len();
                }
                wire.clear();
                t.finish(&mut wire);
                total + wire.len()
            })
        });
        g.bench_with_input(BenchmarkId::new("crlf_size", name), &msg, |b, msg| {
            b.iter(|| crlf_size(black_box(msg)))
        });
    }
    g.finish();
}

fn parsing(c: &mut Criterion) {
    let mut input = Vec::new();
    for i in 1..=1000 {
        input.extend_from_slice(
            format!("RETR {i}\r\nLIST {i}\r\nUIDL\r\nTOP {i} 10\r\n").as_bytes(),
        );
    }
    let mut g = c.benchmark_group("commands");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("decode_and_parse", |b| {
        b.iter(|| {
            let mut d = LineDecoder::new();
            d.push(black_box(&input));
            let mut n = 0;
            while let Some(Line::Complete(l)) = d.next_line() {
                if command::parse(l).is_ok() {
                    n += 1;
                }
            }
            n
        })
    });
    g.finish();
}

struct Drop(Vec<(u64, String)>);

impl Maildrop for Drop {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn octets(&self, i: usize) -> u64 {
        self.0[i].0
    }
    fn uidl(&self, i: usize) -> &str {
        &self.0[i].1
    }
}

fn session(c: &mut Criterion) {
    let cfg = Arc::new(SessionConfig::default());
    let mut script = String::from("CAPA\r\nUSER u\r\nPASS p\r\nSTAT\r\nUIDL\r\nLIST\r\n");
    for i in 1..=50 {
        script.push_str(&format!("RETR {i}\r\n"));
    }
    script.push_str("QUIT\r\n");
    let drop: Vec<(u64, String)> = (0..50)
        .map(|i| (14_000, format!("1700000{i:03}.M1P1.host")))
        .collect();
    let mut g = c.benchmark_group("session");
    g.throughput(Throughput::Elements(1));
    g.bench_function("full_download_transcript_50_msgs", |b| {
        b.iter(|| {
            let mut s = Session::new(
                cfg.clone(),
                ConnInfo {
                    apop_timestamp: None,
                    plaintext_auth: true,
                    ..Default::default()
                },
            );
            let mut out = Vec::with_capacity(4096);
            s.greeting(&mut out);
            s.feed(script.as_bytes());
            loop {
                match s.poll(&mut out) {
                    Step::Login(_) => s.login_done(&mut out, LoginResult::Ok(Drop(drop.clone()))),
                    Step::Retrieve { .. } => s.retrieve_ready(&mut out),
                    Step::Flush => out.clear(),
                    Step::Commit => s.commit_done(&mut out, 0),
                    Step::NeedInput | Step::Close | Step::StartTls | Step::SaslChallenge(_) => {
                        break
                    }
                }
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, transfer, parsing, session);
criterion_main!(benches);
