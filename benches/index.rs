//! The per-Maildir index at 100,000 messages: parsing and writing the index file, a login's
//! snapshot from the index (warm, disk), from the shared in-memory cache, and the update after
//! 1,000 new deliveries. Run: `cargo bench --bench index`.
//!
//! The Maildir is built once in a temporary directory (100,000 small files in `cur/`, half
//! of them with Dovecot's `,S=`/`,W=` sizes in the name).

use std::fs;
use std::path::Path;
use std::time::Duration;

use corepop::mailbox::{index, IndexCache, LoadOptions, Snapshot};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};

const N: usize = 100_000;
const NEW: usize = 1_000;

fn build(root: &Path) {
    corepop::mailbox::ensure_maildir(root).unwrap();
    for i in 0..N {
        let body = format!("From: a@example.org\nSubject: message {i}\n\nLine one.\n.dot\n");
        let name = if i % 2 == 1 {
            format!(
                "{}.M{i}P1.bench,S={},W={}:2,S",
                1_600_000_000 + i,
                body.len(),
                body.len() + body.matches('\n').count()
            )
        } else {
            format!("{}.V803I{i:x}M1.bench:2,S", 1_600_000_000 + i)
        };
        fs::write(root.join("cur").join(name), body).unwrap();
    }
}

fn deliver_new(root: &Path) {
    for i in 0..NEW {
        fs::write(
            root.join("new")
                .join(format!("{}.V803I{i:x}M2.bench", 1_700_000_000 + i)),
            format!("Subject: new {i}\n\nnew mail\n"),
        )
        .unwrap();
    }
}

fn remove_new(root: &Path) {
    for e in fs::read_dir(root.join("new")).unwrap() {
        fs::remove_file(e.unwrap().path()).unwrap();
    }
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("Maildir");
    build(&root);
    let opts = LoadOptions::default();
    let first = Snapshot::load(&root).unwrap();
    assert_eq!(first.messages().len(), N);
    let bytes = fs::read(root.join(index::INDEX_FILE)).unwrap();

    let mut g = c.benchmark_group("index_100k");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    g.bench_function("parse_file", |b| {
        b.iter(|| index::parse(black_box(&bytes)).unwrap())
    });
    let loaded = index::parse(&bytes).unwrap();
    g.bench_function("encode_file", |b| {
        b.iter(|| {
            index::encode(
                &loaded.format,
                loaded.uidvalidity,
                loaded.records.iter().map(|(k, v)| (k.as_str(), v)),
            )
        })
    });
    g.bench_function("login_snapshot_from_disk_index", |b| {
        b.iter(|| Snapshot::load_with(&root, &opts, None).unwrap())
    });
    // Let directory times age past the cache's racy window, then fill the cache.
    std::thread::sleep(Duration::from_millis(1200));
    let cache = IndexCache::new(16);
    let warm = Snapshot::load_with(&root, &opts, Some(&cache)).unwrap();
    g.bench_function("login_snapshot_from_shared_cache", |b| {
        b.iter(|| {
            let s = Snapshot::load_with(&root, &opts, Some(&cache)).unwrap();
            assert!(s.ptr_eq(&warm));
            s
        })
    });
    // 1,000 new deliveries: the login reads just those and rewrites the index.
    g.bench_function("login_after_1000_new_deliveries", |b| {
        b.iter_batched(
            || {
                remove_new(&root);
                fs::write(root.join(index::INDEX_FILE), &bytes).unwrap();
                deliver_new(&root);
            },
            |()| {
                let s = Snapshot::load_with(&root, &opts, None).unwrap();
                assert_eq!(s.messages().len(), N + NEW);
                s
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(index_benches, benches);
criterion_main!(index_benches);
