//! The Maildir store.
//!
//! Owns: where a user's Maildir is ([`location`]), reading a maildrop snapshot from `new/`
//! and `cur/` ([`Snapshot::load`]), Maildir file names ([`name`]), the maildrop lock
//! ([`lock`]), mapping message files ([`map`], the home of the crate's mmap `unsafe`), turning
//! stored bytes into wire bytes ([`transfer`]) and the UPDATE-state commit
//! ([`Snapshot::commit`]).
//!
//! Does not own: sessions, sockets or the protocol; the runtime connects a [`Snapshot`] to a
//! session. All functions here are blocking: the runtime calls them off the executor.
//!
//! Deliveries are never lost: corepop only reads message files and, in UPDATE, unlinks the
//! ones the client deleted; unlink is atomic, so after a crash at any point each message is
//! either still there or gone.

pub mod index;
pub mod location;
pub mod lock;
pub mod map;
pub mod name;
pub mod transfer;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

pub use lock::{LockError, MaildropLock};
pub use map::MappedFile;
pub use name::MaildirName;
pub use transfer::{crlf_size, TransferPlan, TERMINATOR};

/// Which Maildir subdirectory a message was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    New,
    Cur,
}

impl Sub {
    fn dir(self) -> &'static str {
        match self {
            Sub::New => "new",
            Sub::Cur => "cur",
        }
    }
}

/// One message of a snapshot.
#[derive(Debug, Clone)]
pub struct Message {
    pub sub: Sub,
    /// File name inside `sub`.
    pub file_name: Box<str>,
    /// Size with CRLF line endings (what LIST reports).
    pub octets: u64,
    pub uidl: Box<str>,
}

/// The messages of a maildrop at login, in delivery order. Message numbers are positions in
/// this list and never change during a session.
#[derive(Debug)]
pub struct Snapshot {
    root: PathBuf,
    messages: Vec<Message>,
}

impl Snapshot {
    /// Lists `new/` and `cur/` of the Maildir at `root`, creating the Maildir if it does not
    /// exist yet (a user who never got mail has an empty maildrop). Sizes come from `,W=` in
    /// the file name when present, otherwise from the index ([`index`]), otherwise from reading
    /// the file once (and the index is updated).
    pub fn load(root: &Path) -> io::Result<Snapshot> {
        ensure_maildir(root)?;
        let mut found: Vec<(Sub, String)> = Vec::new();
        for sub in [Sub::New, Sub::Cur] {
            for entry in fs::read_dir(root.join(sub.dir()))? {
                let entry = entry?;
                let Ok(name) = entry.file_name().into_string() else {
                    tracing::warn!(dir = %root.display(), "skipping a file name that is not UTF-8");
                    continue;
                };
                if MaildirName::parse(&name).is_some() {
                    found.push((sub, name));
                }
            }
        }
        // Delivery order: by name first, then (stably) by the time fields of the name.
        found.sort_unstable_by(|a, b| a.1.cmp(&b.1));
        found.sort_by_cached_key(|(_, name)| {
            let (secs, usecs, _) = MaildirName::parse(name)
                .expect("filtered above")
                .order_key();
            (secs, usecs)
        });
        // The same base in new/ and cur/ (a rename racing the listing) counts once.
        let mut seen = std::collections::HashSet::with_capacity(found.len());
        found.retain(|(_, name)| {
            let base = MaildirName::parse(name).map_or(name.as_str(), |n| n.base);
            seen.insert(base.to_owned())
        });
        let known = index::load(root);
        let mut misses = 0usize;
        let mut entries: Vec<index::Entry> = Vec::with_capacity(found.len());
        let mut messages = Vec::with_capacity(found.len());
        for (sub, file_name) in found {
            let parsed = MaildirName::parse(&file_name).expect("filtered above");
            let entry = match (parsed.crlf_size, known.get(parsed.base)) {
                (Some(w), _) => index::Entry {
                    crlf_size: w,
                    size: parsed.size.unwrap_or(0),
                },
                (None, Some(e)) => *e,
                (None, None) => match MappedFile::open(&root.join(sub.dir()).join(&file_name)) {
                    Ok(m) => {
                        misses += 1;
                        index::Entry {
                            crlf_size: crlf_size(m.bytes()),
                            size: m.bytes().len() as u64,
                        }
                    }
                    // Moved or removed by another agent since the listing: not in this snapshot.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                },
            };
            let uidl = name::uidl_for_base(parsed.base).into_boxed_str();
            entries.push(entry);
            messages.push(Message {
                sub,
                file_name: file_name.into_boxed_str(),
                octets: entry.crlf_size,
                uidl,
            });
        }
        if misses > 0 || known.len() != messages.len() {
            let bases = messages
                .iter()
                .map(|m| MaildirName::parse(&m.file_name).map_or(&*m.file_name, |n| n.base));
            let bytes = index::encode(bases.zip(entries.iter().copied()));
            if let Err(e) = index::store(root, &bytes) {
                tracing::warn!(dir = %root.display(), error = %e, "cannot write index; will retry at next login");
            }
        }
        Ok(Snapshot {
            root: root.to_path_buf(),
            messages,
        })
    }

    /// The Maildir's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The messages, in message-number order.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Path of message `index` as listed at login.
    pub fn path(&self, index: usize) -> PathBuf {
        let m = &self.messages[index];
        self.root.join(m.sub.dir()).join(&*m.file_name)
    }

    /// Opens and maps message `index`. If another agent moved it (new/ → cur/, or changed its
    /// flags) it is found again by its base name. `NotFound` means it is gone.
    pub fn open(&self, index: usize) -> io::Result<MappedFile> {
        match MappedFile::open(&self.path(index)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let base = self.base(index);
                match find_by_base(&self.root, base)? {
                    Some(p) => MappedFile::open(&p),
                    None => Err(e),
                }
            }
            r => r,
        }
    }

    fn base(&self, index: usize) -> &str {
        let name = &self.messages[index].file_name;
        MaildirName::parse(name).map_or(name, |n| n.base)
    }

    /// UPDATE state: removes the messages at `indexes`. A message already gone counts as
    /// removed; one that moved is removed where it is now. Returns how many could not be
    /// removed (they stay in the maildrop, whole). Then syncs the directories so the removal
    /// survives a power loss.
    pub fn commit(&self, indexes: &[usize]) -> usize {
        let mut failed = 0;
        let mut moved: Option<HashMap<String, PathBuf>> = None;
        for &i in indexes {
            let r = match fs::remove_file(self.path(i)) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let map = moved.get_or_insert_with(|| index_by_base(&self.root));
                    match map.get(self.base(i)) {
                        Some(p) => match fs::remove_file(p) {
                            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                            r => r,
                        },
                        None => Ok(()),
                    }
                }
                r => r,
            };
            if let Err(e) = r {
                failed += 1;
                tracing::error!(path = %self.path(i).display(), error = %e, "could not delete message");
            }
        }
        for sub in [Sub::New, Sub::Cur] {
            if let Err(e) = fs::File::open(self.root.join(sub.dir())).and_then(|d| d.sync_all()) {
                tracing::warn!(dir = %self.root.display(), error = %e, "could not sync Maildir directory");
            }
        }
        failed
    }
}

/// Creates `root/{cur,new,tmp}` (mode 0700) where missing.
pub fn ensure_maildir(root: &Path) -> io::Result<()> {
    let mut b = fs::DirBuilder::new();
    b.recursive(true).mode(0o700);
    for sub in ["cur", "new", "tmp"] {
        let p = root.join(sub);
        if !p.is_dir() {
            b.create(&p)?;
        }
    }
    Ok(())
}

fn find_by_base(root: &Path, base: &str) -> io::Result<Option<PathBuf>> {
    Ok(index_by_base(root).remove(base))
}

fn index_by_base(root: &Path) -> HashMap<String, PathBuf> {
    let mut map = HashMap::new();
    for sub in [Sub::New, Sub::Cur] {
        let dir = root.join(sub.dir());
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for entry in rd.flatten() {
            if let Ok(name) = entry.file_name().into_string() {
                if let Some(n) = MaildirName::parse(&name) {
                    map.insert(n.base.to_owned(), dir.join(&name));
                }
            }
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, sub: &str, name: &str, bytes: &[u8]) {
        fs::write(root.join(sub).join(name), bytes).unwrap();
    }

    #[test]
    fn snapshot_order_sizes_and_commit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("Maildir");
        ensure_maildir(&root).unwrap();
        put(&root, "new", "1700000002.M1P1.h", b"a\nb\n");
        put(&root, "cur", "1700000001.M5P1.h,S=2,W=999:2,S", b"x\n");
        put(&root, "cur", "1700000001.M40P1.h:2,", b"y\r\n");
        put(&root, "new", ".hidden", b"not mail");
        let s = Snapshot::load(&root).unwrap();
        let names: Vec<_> = s.messages().iter().map(|m| &*m.file_name).collect();
        assert_eq!(
            names,
            [
                "1700000001.M5P1.h,S=2,W=999:2,S",
                "1700000001.M40P1.h:2,",
                "1700000002.M1P1.h"
            ]
        );
        let sizes: Vec<_> = s.messages().iter().map(|m| m.octets).collect();
        assert_eq!(sizes, [999, 3, 6]);
        assert_eq!(&*s.messages()[1].uidl, "1700000001.M40P1.h");

        // Another agent renames message 3 into cur/ with flags: it is still found and deleted.
        fs::rename(
            root.join("new/1700000002.M1P1.h"),
            root.join("cur/1700000002.M1P1.h:2,S"),
        )
        .unwrap();
        assert_eq!(s.open(2).unwrap().bytes(), b"a\nb\n");
        assert_eq!(s.commit(&[0, 2]), 0);
        let left = Snapshot::load(&root).unwrap();
        assert_eq!(left.messages().len(), 1);
        assert_eq!(&*left.messages()[0].file_name, "1700000001.M40P1.h:2,");
        // Deleting something already gone is not a failure.
        assert_eq!(s.commit(&[0]), 0);
    }

    #[test]
    fn a_message_seen_in_new_and_cur_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        ensure_maildir(&root).unwrap();
        put(&root, "new", "1700000001.M1P1.h", b"a\n");
        put(&root, "new", "1700000001.M1P1.h.x", b"b\n");
        put(&root, "cur", "1700000001.M1P1.h:2,S", b"a\n");
        let s = Snapshot::load(&root).unwrap();
        let uidls: Vec<_> = s.messages().iter().map(|m| &*m.uidl).collect();
        assert_eq!(uidls, ["1700000001.M1P1.h", "1700000001.M1P1.h.x"]);
    }

    #[test]
    fn index_spares_rereading_and_is_rebuilt_when_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        ensure_maildir(&root).unwrap();
        put(&root, "new", "1700000001.M1P1.h", b"a\nb\n");
        put(&root, "cur", "1700000002.M1P1.h:2,S", b"c\r\n");
        let first = Snapshot::load(&root).unwrap();
        assert!(root.join(index::INDEX_FILE).exists());
        // Prove the second login uses the index: make the file unreadable to the scan by
        // replacing it with a same-named file of another size; the recorded size wins.
        put(&root, "new", "1700000001.M1P1.h", b"zzzzzzzzzzzz");
        let second = Snapshot::load(&root).unwrap();
        assert_eq!(second.messages()[0].octets, first.messages()[0].octets);
        // A damaged index is ignored and rebuilt from the files.
        fs::write(root.join(index::INDEX_FILE), b"corepop-index 1\nbad").unwrap();
        let third = Snapshot::load(&root).unwrap();
        assert_eq!(third.messages()[0].octets, 12);
        assert_eq!(index::load(&root).len(), 2);
        // New mail is indexed; removed mail leaves the index.
        fs::remove_file(root.join("cur/1700000002.M1P1.h:2,S")).unwrap();
        put(&root, "new", "1700000003.M1P1.h", b"d\n");
        let fourth = Snapshot::load(&root).unwrap();
        assert_eq!(fourth.messages().len(), 2);
        let idx = index::load(&root);
        assert_eq!(idx.len(), 2);
        assert_eq!(
            idx["1700000003.M1P1.h"],
            index::Entry {
                crlf_size: 3,
                size: 2
            }
        );
    }

    #[test]
    fn unwritable_index_does_not_stop_the_login() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        ensure_maildir(&root).unwrap();
        put(&root, "new", "1700000001.M1P1.h", b"a\n");
        // A directory where the index should be: the rename fails.
        fs::create_dir(root.join(index::INDEX_FILE)).unwrap();
        let s = Snapshot::load(&root).unwrap();
        assert_eq!(s.messages()[0].octets, 3);
    }

    #[test]
    fn missing_maildir_is_created_empty() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b/Maildir");
        let s = Snapshot::load(&root).unwrap();
        assert!(s.messages().is_empty());
        assert!(root.join("tmp").is_dir());
    }
}
