//! The in-memory index cache shared by every core of a process.
//!
//! Owns: [`IndexCache`], a read-mostly map (crossbeam's [`ShardedLock`]: a read lock touches
//! only the reading thread's shard) from a Maildir's root to its last [`Snapshot`], and the
//! [`Stamp`] that decides whether a cached snapshot is still the Maildir's content.
//!
//! A snapshot is immutable and shared (`Arc`): a logged-in session holds one reference to it
//! plus its own deleted marks, never a copy of sizes or UIDLs. When the Maildir changes, the
//! next login builds a new snapshot and replaces the cached one; sessions still holding the
//! old one keep their view (mail delivered during a session shows at the next login).
//!
//! Validation. The stamp records, for `new/`, `cur/`, `dovecot-uidlist` and
//! `courierpop3dsizelist`, the inode, size, modification and change times (ns). Any delivery, rename
//! or unlink in `new/`/`cur/` changes that directory's mtime; Dovecot rewriting or appending
//! to its list changes the list's. Because file-system timestamps come from a coarse clock,
//! two changes in the same tick can leave an mtime unchanged: a snapshot listed less than
//! [`RACY`] after the newest of those mtimes is never served from the cache (the next login
//! lists again), the way git treats "racily clean" index entries. A snapshot that left a
//! listed message out for a passing reason (it could not get a UID: `dovecot-uidlist`'s lock
//! busy, the list unwritable) is not cached either: the stamp would not change when that
//! reason goes away.
//!
//! Across processes nothing is shared in memory: each process has its own cache, and all of
//! them share the on-disk index ([`super::index`]).

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crossbeam::sync::ShardedLock;

use super::{uidlist, Snapshot};

/// A snapshot listed closer than this to the newest mtime it depends on is not reused.
pub const RACY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    fn read(path: &Path) -> io::Result<Option<FileStamp>> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(FileStamp {
                dev: m.dev(),
                ino: m.ino(),
                size: m.size(),
                mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// What a snapshot was built from, and when.
#[derive(Debug, Clone)]
pub struct Stamp {
    files: [Option<FileStamp>; 4],
    /// Wall-clock time (ns since the epoch) when the stamp was taken, before listing.
    taken_ns: i128,
}

impl PartialEq for Stamp {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files
    }
}

impl Stamp {
    /// Stats the directories and lists a Maildir's contents depend on.
    pub fn read(root: &Path) -> io::Result<Stamp> {
        let taken_ns = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Ok(Stamp {
            files: [
                FileStamp::read(&root.join("new"))?,
                FileStamp::read(&root.join("cur"))?,
                FileStamp::read(&root.join(uidlist::DOVECOT_UIDLIST))?,
                FileStamp::read(&root.join(uidlist::COURIER_SIZELIST))?,
            ],
            taken_ns,
        })
    }

    /// True when a change after the stamp was taken is bound to change an mtime.
    pub fn trustworthy(&self) -> bool {
        let newest = self
            .files
            .iter()
            .flatten()
            .map(|f| f.mtime_ns.max(f.ctime_ns))
            .max()
            .unwrap_or(0);
        self.taken_ns - newest > RACY.as_nanos() as i128
    }
}

/// Snapshots by Maildir root, shared by all cores.
pub struct IndexCache {
    map: ShardedLock<HashMap<PathBuf, Snapshot>>,
    capacity: usize,
    stats: CacheStats,
}

/// Process-wide counters of how logins got their snapshot (for metrics). Touched once per
/// login, never per command, so plain atomics are fine here.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Snapshot shared from memory (no directory listing).
    pub hits: std::sync::atomic::AtomicU64,
    /// Snapshot built from the directories and the on-disk index.
    pub misses: std::sync::atomic::AtomicU64,
    /// On-disk index rewritten (new or removed messages, or a damaged index rebuilt).
    pub index_writes: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for IndexCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexCache")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Default for IndexCache {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl IndexCache {
    /// A cache that keeps at most about `capacity` Maildirs that no session is using.
    pub fn new(capacity: usize) -> IndexCache {
        IndexCache {
            map: ShardedLock::new(HashMap::new()),
            capacity: capacity.max(1),
            stats: CacheStats::default(),
        }
    }

    /// Hit, miss and index-write counts since start.
    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The cached snapshot of `root` if it still matches `current`.
    pub fn get(&self, root: &Path, current: &Stamp) -> Option<Snapshot> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let s = map.get(root)?;
        (s.stamp() == current && s.stamp().trustworthy()).then(|| s.clone())
    }

    /// The cached snapshot of `root`, current or not.
    pub fn previous(&self, root: &Path) -> Option<Snapshot> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(root).cloned()
    }

    /// Remembers `snapshot` as the content of `root` (only when its stamp can be trusted).
    pub fn put(&self, root: &Path, snapshot: &Snapshot) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if !snapshot.stamp().trustworthy() {
            map.remove(root);
            return;
        }
        map.insert(root.to_path_buf(), snapshot.clone());
        if map.len() > self.capacity {
            // Drop the snapshots no session holds; if all are in use, drop them all from
            // the map anyway (sessions keep theirs).
            map.retain(|_, s| s.shared_count() > 1);
            if map.len() > self.capacity {
                map.clear();
            }
        }
    }

    /// Number of cached Maildirs.
    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
