//! The Maildir store.
//!
//! Owns: where a user's Maildir is ([`location`]), reading a maildrop snapshot from `new/`
//! and `cur/` ([`Snapshot::load_with`]), the persistent per-Maildir index ([`index`]) and the
//! in-memory copy shared by all cores ([`cache`]), UIDL formats ([`uidl`]), Dovecot's and
//! Courier's UID lists ([`uidlist`]), Maildir file names ([`name`]), the maildrop lock
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

pub mod cache;
pub mod index;
pub mod location;
pub mod lock;
pub mod map;
pub mod name;
pub mod transfer;
pub mod uidl;
pub mod uidlist;

use std::collections::HashMap;
use std::ffi::CStr;
use std::fs;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use cache::IndexCache;
pub use index::{Entry, Shape};
pub use lock::{LockError, MaildropLock};
pub use map::MappedFile;
pub use name::MaildirName;
pub use transfer::{
    crlf_size, stored_compressed, StreamTransform, TransferPlan, COMPRESSION_MAGIC_LEN, TERMINATOR,
};
pub use uidl::UidlFormat;

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
    /// IMAP UID from `dovecot-uidlist` (0: the Maildir has none).
    pub uid: u32,
    /// Physical size, line-ending shape, dot-stuffing and body offset, as far as known.
    pub entry: Entry,
}

/// How UIDLs are chosen (the `[mail]` settings that concern the index).
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `mail.uidl_format`; `None`: automatic (see [`Snapshot::load_with`]).
    pub uidl_format: Option<UidlFormat>,
}

/// The messages of a maildrop at login, in POP3 order. Message numbers are positions in this
/// list and never change during a session. Cheap to clone (shared, immutable): sessions on
/// every core that log in to an unchanged Maildir share one copy through [`IndexCache`].
#[derive(Debug, Clone)]
pub struct Snapshot {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    messages: Vec<Message>,
    stamp: cache::Stamp,
    /// Bit i: message i was found to be wire form by a RETR since this snapshot was built
    /// ([`Snapshot::learn_wire_form`]); set by any core, read by all.
    learned: Box<[AtomicU64]>,
}

impl Snapshot {
    /// [`Snapshot::load_with`] with automatic UIDLs and no shared cache.
    pub fn load(root: &Path) -> io::Result<Snapshot> {
        Self::load_with(root, &LoadOptions::default(), None)
    }

    /// Lists `new/` and `cur/` of the Maildir at `root`, creating the Maildir if it does not
    /// exist yet (a user who never got mail has an empty maildrop). With a `cache`, a Maildir
    /// unchanged since the cached snapshot (same directory and UID-list stamps, see
    /// [`cache`]) is not listed again.
    ///
    /// Sizes come from the index ([`index`]), else `,W=` in the file name, else Dovecot's `W`
    /// record, else from reading the file once (and the index is updated).
    ///
    /// UIDLs: a `P` record of `dovecot-uidlist` wins; then the configured format. Without one:
    /// `%08Xu%08Xv` (Dovecot's default) when the Maildir has a `dovecot-uidlist`, Courier's
    /// `UID<u>-<v>` for messages listed in `courierpop3dsizelist`, otherwise `%f` (the base
    /// name). A UIDL that is not valid (over 70 characters, characters outside 0x21–0x7E) is
    /// replaced by `H` + the MD5 of it. A `dovecot-uidlist` whose header is not understood is
    /// not used: with a format that needs UIDs, `Err(InvalidData)`.
    ///
    /// Order: by UID (after any `O` POP3 order records, as Dovecot) when UIDs are in use,
    /// otherwise delivery order (the seconds of the file name, then `M<usecs>`, then the name).
    pub fn load_with(
        root: &Path,
        opts: &LoadOptions,
        cache: Option<&IndexCache>,
    ) -> io::Result<Snapshot> {
        ensure_maildir(root)?;
        let stamp = cache::Stamp::read(root)?;
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(c) = cache {
            if let Some(s) = c.get(root, &stamp) {
                c.stats().hits.fetch_add(1, Relaxed);
                return Ok(s);
            }
        }
        // What RETRs learned about the previous snapshot of this Maildir goes into the new
        // one (and its index file).
        let previous = cache.and_then(|c| c.previous(root));
        let learned = previous
            .as_ref()
            .map(Snapshot::newly_wire_form)
            .unwrap_or_default();
        let loaded = load_uncached(root, opts, stamp, &learned)?;
        let snapshot = loaded.snapshot;
        if let Some(c) = cache {
            c.stats().misses.fetch_add(1, Relaxed);
            if loaded.wrote_index {
                c.stats().index_writes.fetch_add(1, Relaxed);
            }
            // A snapshot that left a message out for a passing reason (no UID yet) is not
            // reused: nothing in the stamp changes when that reason goes away. (The cached
            // one, if any, has another stamp: it is not served either.)
            if loaded.complete {
                c.put(root, &snapshot);
            }
        }
        Ok(snapshot)
    }

    /// The Maildir's root.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The messages, in message-number order.
    pub fn messages(&self) -> &[Message] {
        &self.inner.messages
    }

    /// True when both snapshots are the same shared copy.
    pub fn ptr_eq(&self, other: &Snapshot) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// True when message `index` can be sent as stored: the index knows it is wire form, or
    /// a RETR in this process found it was ([`Snapshot::learn_wire_form`]).
    pub fn is_wire_form(&self, index: usize) -> bool {
        self.inner.messages[index].entry.is_wire_form() || self.learned(index)
    }

    /// Records that a whole RETR of message `index` found its stored bytes already wire form
    /// (nothing inserted, ends with a line end), so later RETRs of it, on any core, can send
    /// the file as it is. It is written to the on-disk index when this Maildir's snapshot is
    /// next rebuilt (see [`Snapshot::load_with`]). Message files are never rewritten in
    /// place, so the fact holds for as long as the file exists.
    ///
    /// Called after every streamed RETR that changed nothing; the word is shared by all
    /// cores, so it is only written when the fact is new.
    pub fn learn_wire_form(&self, index: usize) {
        if self.is_wire_form(index) {
            return;
        }
        if let Some(w) = self.inner.learned.get(index / 64) {
            w.fetch_or(1 << (index % 64), Ordering::Relaxed);
        }
    }

    fn learned(&self, index: usize) -> bool {
        self.inner
            .learned
            .get(index / 64)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (index % 64)) != 0)
    }

    /// Base names and sizes of the messages learned to be wire form ([`Snapshot::learn_wire_form`])
    /// that the index does not yet record as such.
    fn newly_wire_form(&self) -> HashMap<&str, u64> {
        let mut found = HashMap::new();
        for (w, word) in self.inner.learned.iter().enumerate() {
            let mut bits = word.load(Ordering::Relaxed);
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let m = &self.inner.messages[i];
                if !m.entry.is_wire_form() {
                    found.insert(base_of(&m.file_name), m.entry.size);
                }
            }
        }
        found
    }

    pub(crate) fn stamp(&self) -> &cache::Stamp {
        &self.inner.stamp
    }

    /// How many holders share this snapshot (the cache counts as one).
    pub(crate) fn shared_count(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// Path of message `index` as listed at login.
    pub fn path(&self, index: usize) -> PathBuf {
        let m = &self.inner.messages[index];
        self.inner.root.join(m.sub.dir()).join(&*m.file_name)
    }

    /// Opens message `index` for reading. If another agent moved it (new/ → cur/, or changed
    /// its flags) it is found again by its base name. `NotFound` means it is gone. Also
    /// returns the file's size, as [`Snapshot::open_file_cached`] does.
    pub fn open_file(&self, index: usize) -> io::Result<(std::fs::File, u64)> {
        match map::open_message(&self.path(index)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let base = self.base(index);
                match find_by_base(self.root(), base)? {
                    Some(p) => map::open_message(&p),
                    None => Err(e),
                }
            }
            r => r,
        }
    }

    /// [`Snapshot::open_file`] without waiting for the disk ([`map::open_message_cached`]):
    /// only where the index says the message is, and only from the kernel's caches. Any error
    /// (`WouldBlock`, moved, gone) means: call [`Snapshot::open_file`] on a blocking thread.
    /// With `root`, a handle on this maildrop's directory from [`Snapshot::open_root_cached`],
    /// the path is looked up from there (`cur/…` or `new/…`) instead of from `/`.
    /// Also returns the file's size.
    ///
    /// Runs on the executors for every message a client retrieves, so the path is built in a
    /// per-thread scratch buffer, NUL-terminated, instead of a `PathBuf` and a `CString`
    /// (five allocations per message).
    pub fn open_file_cached(
        &self,
        index: usize,
        root: Option<BorrowedFd<'_>>,
    ) -> io::Result<(std::fs::File, u64)> {
        use std::os::unix::ffi::OsStrExt;
        let m = &self.inner.messages[index];
        let (sub, name) = (m.sub.dir().as_bytes(), m.file_name.as_bytes());
        let open = |path: &CStr| map::open_message_cached(root, path);
        match root {
            Some(_) => with_c_path(&[sub, name], open),
            None => with_c_path(&[self.inner.root.as_os_str().as_bytes(), sub, name], open),
        }
    }

    /// A handle on this maildrop's directory for [`Snapshot::open_file_cached`], from the
    /// kernel's caches alone (else `WouldBlock`). It costs a descriptor: the runtime holds
    /// one from a session's first RETR or TOP to its end, and only so many per core.
    pub fn open_root_cached(&self) -> io::Result<OwnedFd> {
        use std::os::unix::ffi::OsStrExt;
        with_c_path(
            &[self.inner.root.as_os_str().as_bytes()],
            map::open_dir_cached,
        )
    }

    fn base(&self, index: usize) -> &str {
        let name = &self.inner.messages[index].file_name;
        MaildirName::parse(name).map_or(name, |n| n.base)
    }

    /// UPDATE state: removes the messages at `indexes`. A message already gone counts as
    /// removed; one that moved is removed where it is now, found again by its base name (also
    /// when it moves again meanwhile). Returns how many could not be removed (they stay in
    /// the maildrop, whole). Then syncs the directories so the removal survives a power loss.
    pub fn commit(&self, indexes: &[usize]) -> usize {
        let mut failed = 0;
        let mut names: Option<HashMap<String, PathBuf>> = None;
        for &i in indexes {
            if let Err(e) = self.remove(i, &mut names) {
                failed += 1;
                tracing::error!(path = %self.path(i).display(), error = %e, "could not delete message");
            }
        }
        for sub in [Sub::New, Sub::Cur] {
            if let Err(e) = fs::File::open(self.root().join(sub.dir())).and_then(|d| d.sync_all()) {
                tracing::warn!(dir = %self.root().display(), error = %e, "could not sync Maildir directory");
            }
        }
        failed
    }

    /// Unlinks message `index`. When it is not where the snapshot saw it (another agent
    /// renamed it: new/ → cur/, a flag change), it is looked up by its base name in `names`, a
    /// listing of new/ and cur/ kept for the rest of the commit, and the listing is made again
    /// whenever it is missing or out of date. It counts as removed only when a listing made
    /// after it went missing does not have it. A message that keeps moving is given up after
    /// a few tries (Dovecot retries a rename race 10 times), and an error listing the
    /// directories is a failure: the message is then kept and the client told so.
    fn remove(&self, index: usize, names: &mut Option<HashMap<String, PathBuf>>) -> io::Result<()> {
        const TRIES: usize = 10;
        let base = self.base(index);
        let mut path = self.path(index);
        let mut listed_since = false;
        for _ in 0..TRIES {
            match fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                r => return r,
            }
            match names.as_ref().and_then(|m| m.get(base)) {
                Some(p) if *p != path => {
                    path = p.clone();
                    continue;
                }
                None if listed_since => return Ok(()),
                _ => {}
            }
            *names = Some(index_by_base(self.root())?);
            listed_since = true;
        }
        Err(io::Error::other(
            "the message kept being renamed by another process",
        ))
    }
}

/// Runs `f` on the NUL-terminated path made of `parts` joined by `/`, built in a per-thread
/// scratch buffer (no allocation on the serving path).
fn with_c_path<T>(parts: &[&[u8]], f: impl FnOnce(&CStr) -> io::Result<T>) -> io::Result<T> {
    thread_local! {
        static PATH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    PATH.with_borrow_mut(|path| {
        path.clear();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(part);
        }
        path.push(0);
        let path = CStr::from_bytes_with_nul(path)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))?;
        f(path)
    })
}

/// Lists `new/` then `cur/`: Maildir message names, in delivery order, each base once.
fn list(root: &Path) -> io::Result<Vec<(Sub, String)>> {
    let mut found: Vec<(Sub, String)> = Vec::new();
    for sub in [Sub::New, Sub::Cur] {
        for entry in fs::read_dir(root.join(sub.dir()))? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                tracing::warn!(dir = %root.display(), "skipping a file name that is not UTF-8");
                continue;
            };
            // Only regular files are messages: a symbolic link could point at another user's
            // mail or any file the server can read; directories and FIFOs are not mail.
            // (The type comes from readdir itself; no stat per file.)
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                if !name.starts_with('.') {
                    tracing::warn!(dir = %root.display(), name = %name.escape_debug(), "skipping an entry that is not a regular file");
                }
                continue;
            }
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
    Ok(found)
}

fn base_of(name: &str) -> &str {
    MaildirName::parse(name).map_or(name, |n| n.base)
}

/// Where the UIDLs of this login come from.
enum UidSource {
    /// `dovecot-uidlist` (read, and extended for new mail).
    Dovecot(uidlist::UidList),
    /// No UIDs.
    None,
}

/// What [`load_uncached`] built.
struct Uncached {
    snapshot: Snapshot,
    /// The on-disk index was written.
    wrote_index: bool,
    /// Every message listed is in the snapshot, or left out for good (gone, or a name that
    /// can never get a UID); false when one waits for a later login (UIDs could not be given).
    complete: bool,
}

/// Builds a snapshot from the directories.
///
/// `learned`: base names (with their sizes) of messages a RETR found to be wire form.
fn load_uncached(
    root: &Path,
    opts: &LoadOptions,
    stamp: cache::Stamp,
    learned: &HashMap<&str, u64>,
) -> io::Result<Uncached> {
    let mut wrote_index = false;
    let mut complete = true;
    let found = list(root)?;
    let dovecot = match uidlist::read_dovecot(root, found.len()) {
        Ok(l) => Ok(l),
        Err(e) => {
            tracing::error!(dir = %root.display(), error = %e, "dovecot-uidlist not understood; not using or changing it");
            Err(())
        }
    };
    let known = index::load(root, found.len());
    let auto_format;
    let format = match (&opts.uidl_format, &dovecot) {
        (Some(f), _) => f,
        // Automatic UIDLs stick to what this Maildir's clients have already seen, so that a
        // dovecot-uidlist appearing later (Dovecot IMAP started on the same Maildir) does
        // not change them.
        (None, _) if known.format == "%f" || known.format == uidl::DOVECOT_DEFAULT => {
            auto_format = UidlFormat::parse(&known.format).expect("valid");
            &auto_format
        }
        (None, Ok(Some(_))) => {
            auto_format = UidlFormat::parse(uidl::DOVECOT_DEFAULT).expect("valid");
            &auto_format
        }
        (None, _) => {
            auto_format = UidlFormat::parse("%f").expect("valid");
            &auto_format
        }
    };
    if dovecot.is_err() && format.needs_uids() {
        // Without the list there are no UIDs to build these UIDLs from, and a new list would
        // give the messages new ones. Refusing the login (the caller answers [SYS/TEMP]) tells
        // the user something is wrong; an empty listing would say there is no mail.
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "dovecot-uidlist not understood, and the UIDL format {} needs its UIDs",
                format.as_str()
            ),
        ));
    }
    let courier = match &opts.uidl_format {
        None if format.is_base_name() => uidlist::read_courier(root, found.len()),
        _ => None,
    };
    // UIDs: when Dovecot keeps them here, or the format needs them (then corepop starts a
    // dovecot-uidlist itself). New files get theirs under Dovecot's lock.
    let source = match dovecot {
        Err(()) => UidSource::None,
        Ok(list) if list.is_some() || format.needs_uids() => {
            let known: std::collections::HashSet<&str> = list
                .as_ref()
                .map(|l| l.records.iter().map(|r| r.base()).collect())
                .unwrap_or_default();
            let missing: Vec<&str> = found
                .iter()
                .map(|(_, n)| n.as_str())
                .filter(|n| !known.contains(base_of(n)))
                .collect();
            match list {
                Some(l) if missing.is_empty() => UidSource::Dovecot(l),
                list => match uidlist::assign_uids(root, &missing, list.is_none(), found.len()) {
                    Ok(l) => UidSource::Dovecot(l),
                    Err(e) => {
                        tracing::warn!(dir = %root.display(), error = %e, "cannot add UIDs to dovecot-uidlist; new mail waits for a later login");
                        complete = false;
                        match list {
                            Some(l) => UidSource::Dovecot(l),
                            None => UidSource::None,
                        }
                    }
                },
            }
        }
        Ok(_) => UidSource::None,
    };
    let (uidvalidity, records) = match &source {
        UidSource::Dovecot(l) => (l.uidvalidity, Some((l, l.by_base()))),
        UidSource::None => (0, None),
    };
    let needs_uids = format.needs_uids() || records.is_some();
    let uidls_reusable = known.format == format.as_str()
        && (known.uidvalidity == uidvalidity || !format.needs_uids());
    let mut dirty = !uidls_reusable;
    let mut misses = 0usize;
    let mut messages: Vec<Message> = Vec::with_capacity(found.len());
    let mut order: Vec<(u64, u32)> = Vec::new();
    for (sub, file_name) in found {
        let parsed = MaildirName::parse(&file_name).expect("listed");
        let base = parsed.base;
        let rec = records
            .as_ref()
            .and_then(|(l, by)| by.get(base).map(|&i| &l.records[i]));
        let uid = rec.map_or(0, |r| r.uid);
        if needs_uids && uid == 0 {
            // No UID could be given (lock busy): this message waits for a later login.
            continue;
        }
        let stored = known.records.get(base);
        // Read, not mapped: a file truncated meanwhile then reads short instead of raising
        // SIGBUS.
        let mut bytes: Option<Vec<u8>> = None;
        let read = |bytes: &mut Option<Vec<u8>>| -> io::Result<bool> {
            if bytes.is_none() {
                match map::read_message(&root.join(sub.dir()).join(&file_name)) {
                    Ok(m) => *bytes = Some(m),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            Ok(true)
        };
        let mut entry = if let Some(r) = stored {
            r.entry
        } else if let Some(w) = parsed.crlf_size {
            Entry::sizes(w, parsed.size.unwrap_or(0))
        } else if let Some(w) = rec.and_then(|r| r.ext('W')).and_then(|w| w.parse().ok()) {
            let s = parsed
                .size
                .or_else(|| rec.and_then(|r| r.ext('S')).and_then(|s| s.parse().ok()));
            Entry::sizes(w, s.unwrap_or(0))
        } else {
            // Moved or removed by another agent since the listing: not in this snapshot.
            if !read(&mut bytes)? {
                continue;
            }
            misses += 1;
            index::scan(bytes.as_deref().expect("read"))
        };
        if !entry.is_wire_form() && learned.get(base) == Some(&entry.size) {
            entry = entry.wire_form();
            dirty = true;
        }
        let saved = rec.and_then(|r| r.ext('P'));
        let uidl: Box<str> = match (saved, stored) {
            (Some(p), _) => name::uidl_for_base(p).into(),
            (None, Some(r)) if uidls_reusable && r.uid == uid => r.uidl.clone(),
            _ => {
                dirty = true;
                if let Some(u) = courier.as_ref().and_then(|c| c.get(base)) {
                    name::uidl_for_base(u).into()
                } else {
                    let md5 = if format.needs_header_md5() {
                        if !read(&mut bytes)? {
                            continue;
                        }
                        Some(uidl::header_md5(bytes.as_deref().expect("read")))
                    } else {
                        None
                    };
                    let vars = uidl::UidlVars {
                        uid,
                        uidvalidity,
                        base,
                        guid: rec.and_then(|r| r.ext('G')),
                        header_md5: md5.as_deref(),
                    };
                    name::uidl_for_base(&format.expand(&vars)).into()
                }
            }
        };
        if records.is_some() {
            let o = rec.and_then(|r| r.ext('O')).and_then(|o| o.parse().ok());
            order.push((o.unwrap_or(u64::MAX), uid));
        }
        messages.push(Message {
            sub,
            file_name: file_name.into_boxed_str(),
            octets: entry.crlf_size,
            uidl,
            uid,
            entry,
        });
    }
    if !order.is_empty() {
        let mut keyed: Vec<((u64, u32), Message)> = order.into_iter().zip(messages).collect();
        keyed.sort_by_key(|(k, _)| *k);
        messages = keyed.into_iter().map(|(_, m)| m).collect();
    }
    // An empty Maildir that never had an index needs none: there are no UIDLs to keep
    // stable, and rebuilding nothing is free. (Many mailboxes are empty; this saves a file,
    // a write and a cached inode for each.)
    let nothing_to_keep =
        messages.is_empty() && fs::symlink_metadata(root.join(index::INDEX_FILE)).is_err();
    if (dirty || misses > 0 || known.records.len() != messages.len()) && !nothing_to_keep {
        let recs: Vec<(&str, index::Record)> = messages
            .iter()
            .map(|m| {
                (
                    base_of(&m.file_name),
                    index::Record {
                        entry: m.entry,
                        uid: m.uid,
                        uidl: m.uidl.clone(),
                    },
                )
            })
            .collect();
        let bytes = index::encode(
            format.as_str(),
            uidvalidity,
            recs.iter().map(|(b, r)| (*b, r)),
        );
        match index::store(root, &bytes) {
            Ok(()) => wrote_index = true,
            Err(e) => {
                tracing::warn!(dir = %root.display(), error = %e, "cannot write index; will retry at next login");
            }
        }
    }
    Ok(Uncached {
        snapshot: Snapshot {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                learned: (0..messages.len().div_ceil(64))
                    .map(|_| AtomicU64::new(0))
                    .collect(),
                messages,
                stamp,
            }),
        },
        wrote_index,
        complete,
    })
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
    Ok(index_by_base(root)?.remove(base))
}

/// Where each message of new/ and cur/ is now, by base name. An error reading a directory
/// is an error (a missing one is empty): a message must not be taken for gone because its
/// directory could not be read.
fn index_by_base(root: &Path) -> io::Result<HashMap<String, PathBuf>> {
    let mut map = HashMap::new();
    for sub in [Sub::New, Sub::Cur] {
        let dir = root.join(sub.dir());
        let rd = match fs::read_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            r => r?,
        };
        for entry in rd {
            if let Ok(name) = entry?.file_name().into_string() {
                if let Some(n) = MaildirName::parse(&name) {
                    map.insert(n.base.to_owned(), dir.join(&name));
                }
            }
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn put(root: &Path, sub: &str, name: &str, bytes: &[u8]) {
        fs::write(root.join(sub).join(name), bytes).unwrap();
    }

    #[test]
    fn commit_follows_a_message_renamed_after_the_listing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("Maildir");
        ensure_maildir(&root).unwrap();
        put(&root, "new", "1700000001.M1P1.h", b"a\n");
        put(&root, "new", "1700000002.M1P1.h", b"b\n");
        let s = Snapshot::load(&root).unwrap();
        // The commit's listing (made for an earlier message) still shows message 2 in new/;
        // then another agent moves it to cur/ and sets a flag.
        let mut names = Some(index_by_base(&root).unwrap());
        fs::rename(
            root.join("new/1700000002.M1P1.h"),
            root.join("cur/1700000002.M1P1.h:2,S"),
        )
        .unwrap();
        s.remove(1, &mut names).unwrap();
        assert!(!root.join("cur/1700000002.M1P1.h:2,S").exists());
        // Gone for good: removed, and no error.
        fs::remove_file(root.join("new/1700000001.M1P1.h")).unwrap();
        s.remove(0, &mut names).unwrap();
        assert!(fs::read_dir(root.join("cur")).unwrap().next().is_none());
        assert!(fs::read_dir(root.join("new")).unwrap().next().is_none());
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
        assert_eq!(
            std::io::read_to_string(s.open_file(2).unwrap().0).unwrap(),
            "a\nb\n"
        );
        assert_eq!(s.commit(&[0, 2]), 0);
        let left = Snapshot::load(&root).unwrap();
        assert_eq!(left.messages().len(), 1);
        assert_eq!(&*left.messages()[0].file_name, "1700000001.M40P1.h:2,");
        // Deleting something already gone is not a failure.
        assert_eq!(s.commit(&[0]), 0);
    }

    #[test]
    fn cached_open_from_the_maildrop_handle_or_the_full_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("Maildir");
        ensure_maildir(&root).unwrap();
        put(&root, "new", "1700000002.M1P1.h", b"in new\n");
        put(&root, "cur", "1700000001.M1P1.h:2,S", b"in cur\n");
        let s = Snapshot::load(&root).unwrap();
        // Just written: the kernel has every path cached.
        let handle = s.open_root_cached().unwrap();
        let read = |r: io::Result<(fs::File, u64)>| {
            let (f, size) = r.unwrap();
            (io::read_to_string(f).unwrap(), size)
        };
        for root in [Some(handle.as_fd()), None] {
            assert_eq!(read(s.open_file_cached(0, root)), ("in cur\n".into(), 7));
            assert_eq!(read(s.open_file_cached(1, root)), ("in new\n".into(), 7));
        }
        // A message moved by another agent is not where the index says, with or without
        // the handle: the caller falls back to `open_file`, which finds it.
        fs::rename(
            root.join("new/1700000002.M1P1.h"),
            root.join("cur/1700000002.M1P1.h:2,S"),
        )
        .unwrap();
        assert!(s.open_file_cached(1, Some(handle.as_fd())).is_err());
        assert!(s.open_file_cached(1, None).is_err());
        assert_eq!(
            io::read_to_string(s.open_file(1).unwrap().0).unwrap(),
            "in new\n"
        );
        // Only regular files, and no symbolic link as the message.
        fs::remove_file(root.join("cur/1700000001.M1P1.h:2,S")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("cur/1700000001.M1P1.h:2,S")).unwrap();
        assert!(s.open_file_cached(0, Some(handle.as_fd())).is_err());
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
        fs::write(root.join(index::INDEX_FILE), b"corepop-index 2\nbad").unwrap();
        let third = Snapshot::load(&root).unwrap();
        assert_eq!(third.messages()[0].octets, 12);
        assert_eq!(index::load(&root, usize::MAX).records.len(), 2);
        // New mail is indexed; removed mail leaves the index.
        fs::remove_file(root.join("cur/1700000002.M1P1.h:2,S")).unwrap();
        put(&root, "new", "1700000003.M1P1.h", b"d\n");
        let fourth = Snapshot::load(&root).unwrap();
        assert_eq!(fourth.messages().len(), 2);
        let idx = index::load(&root, usize::MAX);
        assert_eq!(idx.records.len(), 2);
        let r = &idx.records["1700000003.M1P1.h"];
        assert_eq!((r.entry.crlf_size, r.entry.size), (3, 2));
        assert_eq!((r.entry.shape, r.entry.dots), (Shape::Lf, Some(false)));
        assert_eq!(&*r.uidl, "1700000003.M1P1.h");
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

    fn uidls(s: &Snapshot) -> Vec<&str> {
        s.messages().iter().map(|m| &*m.uidl).collect()
    }

    #[test]
    fn dovecot_uidlist_gives_uidls_order_and_new_uids() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        ensure_maildir(&root).unwrap();
        // File names in the list are bases; delivery order differs from UID order.
        put(&root, "cur", "1700000003.M1P1.h:2,S", b"c\n");
        put(&root, "cur", "1700000001.M1P1.h,S=2,W=3:2,", b"a\n");
        put(&root, "new", "1700000002.M1P1.h", b"bb\n");
        put(&root, "new", "no-colon-odd-name", b"x\n");
        fs::write(
            root.join(uidlist::DOVECOT_UIDLIST),
            "3 V1795689417 N12 Gabc\n\
             5 :1700000003.M1P1.h\n\
             garbage\n\
             9 W4 Xunknown :1700000002.M1P1.h\n\
             9 :dup\n\
             10 P+saved.uidl :1700000001.M1P1.h,S=2,W=3\n\
             11 :gone.h\n",
        )
        .unwrap();
        let s = Snapshot::load(&root).unwrap();
        assert_eq!(
            uidls(&s),
            [
                "000000056b080bc9",
                "000000096b080bc9",
                "+saved.uidl",
                "0000000c6b080bc9"
            ]
        );
        let sizes: Vec<_> = s.messages().iter().map(|m| m.octets).collect();
        assert_eq!(sizes, [3, 4, 3, 3]);
        let list = fs::read_to_string(root.join(uidlist::DOVECOT_UIDLIST)).unwrap();
        assert!(list.starts_with("3 V1795689417 N13 Gabc\n"), "{list}");
        assert!(
            list.ends_with("11 :gone.h\n12 :no-colon-odd-name\n"),
            "{list}"
        );
        // Same again from the index; the configured format overrides.
        assert_eq!(uidls(&Snapshot::load(&root).unwrap()), uidls(&s));
        let opts = LoadOptions {
            uidl_format: Some(UidlFormat::parse("%v.%u").unwrap()),
        };
        let t = Snapshot::load_with(&root, &opts, None).unwrap();
        assert_eq!(
            uidls(&t),
            [
                "1795689417.5",
                "1795689417.9",
                "+saved.uidl",
                "1795689417.12"
            ]
        );
        // O records come first, as in Dovecot.
        let list = list.replace("9 W4 Xunknown", "9 W4 O1 Xunknown");
        fs::write(root.join(uidlist::DOVECOT_UIDLIST), list).unwrap();
        assert_eq!(Snapshot::load(&root).unwrap().messages()[0].uid, 9);
    }

    #[test]
    fn unusable_uidlist_is_left_alone_and_busy_lock_defers_new_mail() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        ensure_maildir(&root).unwrap();
        put(&root, "new", "1700000001.M1P1.h", b"a\n");
        fs::write(root.join(uidlist::DOVECOT_UIDLIST), "garbage\n").unwrap();
        let s = Snapshot::load(&root).unwrap();
        assert_eq!(uidls(&s), ["1700000001.M1P1.h"]);
        assert_eq!(
            fs::read(root.join(uidlist::DOVECOT_UIDLIST)).unwrap(),
            b"garbage\n"
        );
        // A format built from UIDs cannot be served from it: an error, not an empty listing,
        // and the list is still not touched.
        let uid_opts = LoadOptions {
            uidl_format: Some(UidlFormat::parse(uidl::DOVECOT_DEFAULT).unwrap()),
        };
        let e = Snapshot::load_with(&root, &uid_opts, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        assert_eq!(
            fs::read(root.join(uidlist::DOVECOT_UIDLIST)).unwrap(),
            b"garbage\n"
        );
        // A live lock: the new message waits for a later login rather than get no UID.
        fs::write(root.join(uidlist::DOVECOT_UIDLIST), "3 V7 N1\n").unwrap();
        fs::write(root.join(uidlist::DOVECOT_UIDLIST_LOCK), "").unwrap();
        let opts = LoadOptions {
            uidl_format: Some(UidlFormat::parse(uidl::DOVECOT_DEFAULT).unwrap()),
        };
        assert!(Snapshot::load_with(&root, &opts, None)
            .unwrap()
            .messages()
            .is_empty());
        fs::remove_file(root.join(uidlist::DOVECOT_UIDLIST_LOCK)).unwrap();
        let s = Snapshot::load_with(&root, &opts, None).unwrap();
        assert_eq!(uidls(&s), ["0000000100000007"]);
    }

    #[test]
    fn courier_uidls_and_sticky_automatic_format() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        ensure_maildir(&root).unwrap();
        put(&root, "cur", "1700000001.M1P1.h:2,S", b"a\n");
        put(&root, "new", "1700000002.M1P1.h", b"b\n");
        fs::write(
            root.join(uidlist::COURIER_SIZELIST),
            "/2 4 1234\n1700000001.M1P1.h:2,S 3 3:1234\n",
        )
        .unwrap();
        let s = Snapshot::load(&root).unwrap();
        assert_eq!(uidls(&s), ["UID3-1234", "1700000002.M1P1.h"]);
        // Dovecot IMAP starts on this Maildir later: the UIDLs clients know do not change.
        fs::write(root.join(uidlist::DOVECOT_UIDLIST), "3 V9 N1\n").unwrap();
        let t = Snapshot::load(&root).unwrap();
        assert_eq!(uidls(&t), uidls(&s));
        // An old corepop's version-1 index means base-name UIDLs were served.
        let dir2 = tempfile::tempdir().unwrap();
        let root2 = dir2.path().to_path_buf();
        ensure_maildir(&root2).unwrap();
        put(&root2, "new", "1700000002.M1P1.h", b"b\n");
        fs::write(root2.join(uidlist::DOVECOT_UIDLIST), "3 V9 N1\n").unwrap();
        fs::write(root2.join(index::INDEX_FILE), "corepop-index 1\nend 0 0\n").unwrap();
        assert_eq!(
            uidls(&Snapshot::load(&root2).unwrap()),
            ["1700000002.M1P1.h"]
        );
    }

    #[test]
    fn a_damaged_index_keeps_the_automatic_uidl_format() {
        // Base-name UIDLs were served; then Dovecot IMAP created a dovecot-uidlist.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        ensure_maildir(&root).unwrap();
        put(&root, "new", "1700000001.M1P1.h", b"a\n");
        put(&root, "cur", "1700000002.M1P1.h:2,S", b"b\n");
        let seen = ["1700000001.M1P1.h", "1700000002.M1P1.h"];
        assert_eq!(uidls(&Snapshot::load(&root).unwrap()), seen);
        fs::write(
            root.join(uidlist::DOVECOT_UIDLIST),
            "3 V9 N3\n1 :1700000001.M1P1.h\n2 :1700000002.M1P1.h\n",
        )
        .unwrap();
        let good = fs::read(root.join(index::INDEX_FILE)).unwrap();
        // A torn write or flipped bits in the records, or a crashed writer's empty file: the
        // index is rebuilt, but the UIDLs clients know must not change.
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 0x01;
        let damaged: [(&str, Vec<u8>); 2] = [
            ("truncated", good[..good.len() - 5].to_vec()),
            ("flipped bit", flipped),
        ];
        for (what, bytes) in damaged {
            fs::write(root.join(index::INDEX_FILE), bytes).unwrap();
            assert_eq!(uidls(&Snapshot::load(&root).unwrap()), seen, "{what}");
            // And the rebuilt index keeps the format for the next login.
            assert_eq!(index::load(&root, usize::MAX).format, "%f", "{what}");
        }
    }

    #[test]
    fn cache_shares_one_copy_and_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        ensure_maildir(&root).unwrap();
        put(&root, "new", "1700000001.M1P1.h", b"a\n");
        let cache = IndexCache::new(8);
        let opts = LoadOptions::default();
        // Let the directories' times age past the racy window (their change time cannot be
        // set back), so the snapshot is not "racily clean".
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(10);
        for d in ["new", "cur"] {
            fs::File::open(root.join(d))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        std::thread::sleep(cache::RACY + std::time::Duration::from_millis(100));
        let a = Snapshot::load_with(&root, &opts, Some(&cache)).unwrap();
        let b = Snapshot::load_with(&root, &opts, Some(&cache)).unwrap();
        assert!(a.ptr_eq(&b), "second login shares the first one's copy");
        // A delivery within the same timestamp tick: restore the old mtime to simulate it.
        put(&root, "new", "1700000002.M1P1.h", b"b\n");
        fs::File::open(root.join("new"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        // The change time (which nobody can set back) still tells.
        let d = Snapshot::load_with(&root, &opts, Some(&cache)).unwrap();
        assert_eq!(d.messages().len(), 2);
        assert!(!d.ptr_eq(&a));
        // The old session's view is unchanged.
        assert_eq!(a.messages().len(), 1);
        // A fresh (racy) snapshot is never served from the cache.
        let e = Snapshot::load_with(&root, &opts, Some(&cache)).unwrap();
        assert!(!e.ptr_eq(&d));
    }

    #[test]
    fn a_snapshot_that_left_new_mail_out_is_not_cached() {
        // UIDs are in use and dovecot-uidlist's lock is busy: the new message gets no UID
        // and waits for a later login. Nothing in new/, cur/ or the list changes when the
        // lock goes away, so a cached snapshot would hide the message until the next
        // delivery.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        ensure_maildir(&root).unwrap();
        put(&root, "new", "1700000001.M1P1.h", b"a\n");
        fs::write(root.join(uidlist::DOVECOT_UIDLIST), "3 V7 N1\n").unwrap();
        // Old enough that the stamp is trustworthy (the snapshot would be cached).
        std::thread::sleep(cache::RACY + std::time::Duration::from_millis(100));
        fs::write(root.join(uidlist::DOVECOT_UIDLIST_LOCK), "").unwrap();
        let cache = IndexCache::new(8);
        let opts = LoadOptions::default();
        let s = Snapshot::load_with(&root, &opts, Some(&cache)).unwrap();
        assert!(s.messages().is_empty());
        fs::remove_file(root.join(uidlist::DOVECOT_UIDLIST_LOCK)).unwrap();
        let t = Snapshot::load_with(&root, &opts, Some(&cache)).unwrap();
        assert_eq!(uidls(&t), ["0000000100000007"]);
    }

    #[test]
    fn index_is_shared_across_processes_through_the_file() {
        // Another process = another cache: it reads the index file, not the messages.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        ensure_maildir(&root).unwrap();
        put(&root, "new", "1700000001.M1P1.h", b"a\n.b\n");
        let first =
            Snapshot::load_with(&root, &LoadOptions::default(), Some(&IndexCache::new(1))).unwrap();
        put(
            &root,
            "new",
            "1700000001.M1P1.h",
            b"changed behind our back",
        );
        let other =
            Snapshot::load_with(&root, &LoadOptions::default(), Some(&IndexCache::new(1))).unwrap();
        assert_eq!(other.messages()[0].octets, first.messages()[0].octets);
        assert_eq!(other.messages()[0].entry.dots, Some(true));
    }

    #[test]
    fn file_names_with_line_breaks_are_served_but_not_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        ensure_maildir(&root).unwrap();
        put(&root, "new", "1700000001.a\tb\nc", b"y\n");
        put(&root, "new", "1700000002.M1P1.h", b"x\n");
        let s = Snapshot::load(&root).unwrap();
        assert_eq!(s.messages().len(), 2);
        assert!(name::valid_uidl(&s.messages()[0].uidl));
        let idx = index::load(&root, usize::MAX);
        assert_eq!(idx.records.len(), 1, "index stays valid, without that name");
        // With UIDs in use, such a name is never written into dovecot-uidlist.
        fs::write(root.join(uidlist::DOVECOT_UIDLIST), "3 V5 N1\n").unwrap();
        let opts = LoadOptions {
            uidl_format: Some(UidlFormat::parse(uidl::DOVECOT_DEFAULT).unwrap()),
        };
        let s = Snapshot::load_with(&root, &opts, None).unwrap();
        assert_eq!(uidls(&s), ["0000000100000005"]);
        let list = fs::read_to_string(root.join(uidlist::DOVECOT_UIDLIST)).unwrap();
        assert_eq!(list, "3 V5 N2\n1 :1700000002.M1P1.h\n");
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
