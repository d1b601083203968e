//! Other servers' UID state in a Maildir: Dovecot's `dovecot-uidlist` and Courier's
//! `courierpop3dsizelist`.
//!
//! Owns: reading both files (tolerantly), and adding UIDs for new messages to
//! `dovecot-uidlist` under Dovecot's own lock protocol, so that Dovecot (IMAP, LDA, POP3) and
//! corepop can work on one Maildir side by side.
//!
//! `dovecot-uidlist` (version 3, as Dovecot 2.x writes it; version 1 is read too):
//! ```text
//! 3 V<uidvalidity> N<next uid> G<mailbox guid>
//! <uid> [<key><value> ...] :<file name>
//! ```
//! Record keys: `S` physical size, `W` CRLF size, `P` saved POP3 UIDL (empty: the base name),
//! `O` POP3 order, `G` message GUID; other `A`–`Z` keys are kept as they are, a field whose
//! key is not `A`–`Z` is dropped (the record stays), as Dovecot does. A version 1 record is
//! `<uid> <file name>` (the rest of the line) and its UID must be below the header's. `V` and
//! `N` must be non-zero decimal numbers, or the header is not understood. A base name listed
//! twice keeps its higher UID (Dovecot's rule for a message moved back after an expunge).
//!
//! Reading is tolerant where Dovecot is not: a line Dovecot would call corrupt (garbage, a
//! UID of 0, a duplicate UID (the first wins), no file name, a `/` in it) is skipped, where
//! Dovecot stops there, deletes the list and numbers the rest anew; records out of UID order
//! are kept and sorted, so that a list corepop writes is one Dovecot reads whole. A torn last
//! line (Dovecot appends in place) is not read, as Dovecot does not read it. A line that is
//! not UTF-8 is written back byte for byte. A file whose header is not understood is not used
//! at all and never rewritten.
//!
//! Writing follows Dovecot's dotlock: create `dovecot-uidlist.lock` with `O_EXCL` (with the
//! list's mode exactly, as Dovecot sets its umask for it), re-read the list, write the whole
//! new list into the lock file, fsync, check the lock is still ours, rename it over
//! `dovecot-uidlist`. A lock is stale (Dovecot's `MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT`, 2
//! minutes, see [`STALE_AFTER`]) when neither it nor `dovecot-uidlist` has changed (ctime, or
//! a later mtime) for that long, and is then removed; a lock that is no longer ours is never
//! renamed or removed. New UIDs continue at `N`, in delivery order (Dovecot sorts new files by
//! the time in their names, too). Records whose files are gone are kept: Dovecot drops them
//! itself on its next sync.
//!
//! `courierpop3dsizelist`: `/<version> <next uid> [<uidvalidity>]` then
//! `<file name> <size> <uid>:<uidvalidity>[:<utf8>]` lines; Courier's UIDL is
//! `UID<uid>-<uidvalidity>` with the line's own UIDVALIDITY (see [`read_courier`]). corepop
//! only reads it.
//!
//! Does not own: listing the Maildir or choosing UIDLs (see [`super::Snapshot`]).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

/// Dovecot's UID list in a Maildir's root.
pub const DOVECOT_UIDLIST: &str = "dovecot-uidlist";
/// Dovecot's dotlock for it.
pub const DOVECOT_UIDLIST_LOCK: &str = "dovecot-uidlist.lock";
/// Courier's POP3 UIDL/size list.
pub const COURIER_SIZELIST: &str = "courierpop3dsizelist";
/// A `dovecot-uidlist.lock` that has not changed this long, while `dovecot-uidlist` has not
/// either, belongs to a dead process.
pub const STALE_AFTER: Duration = Duration::from_secs(120);
/// How long to wait for a live lock before giving up (new mail then waits for a later login).
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// One record of `dovecot-uidlist`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub uid: u32,
    /// The extension fields (`W123 P...`), without the file name.
    pub ext: String,
    /// The file name; empty when it is not UTF-8 (no file corepop lists has such a name).
    pub file_name: String,
    /// When the line is not UTF-8: the record as written back, its bytes kept as they are.
    raw: Option<Box<[u8]>>,
}

impl Record {
    /// The value of extension `key` (`P`, `O`, `G`, `W`, `S`). An empty `P` is Dovecot's
    /// shorthand for "the UIDL is the base name" (it writes one when a saved UIDL equals the
    /// base name), so it gives [`Record::base`].
    pub fn ext(&self, key: char) -> Option<&str> {
        let value = self
            .ext
            .split(' ')
            .find_map(|f| f.strip_prefix(key).filter(|_| !f.is_empty()))?;
        Some(if key == 'P' && value.is_empty() {
            self.base()
        } else {
            value
        })
    }

    /// The base name (up to `:`) of the record's file.
    pub fn base(&self) -> &str {
        self.file_name
            .split_once(':')
            .map_or(&self.file_name, |(b, _)| b)
    }
}

/// A parsed `dovecot-uidlist`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidList {
    pub uidvalidity: u32,
    pub next_uid: u32,
    /// Header fields other than `V` and `N` (e.g. `G<guid>`), kept as written.
    pub header_extra: Vec<String>,
    /// In UID order.
    pub records: Vec<Record>,
}

impl UidList {
    /// Parses a list. `None` when the header is not understood.
    pub fn parse(bytes: &[u8]) -> Option<UidList> {
        // Dovecot appends in place: a last line without its newline may be half-written, and
        // Dovecot does not read it either. Like Dovecot, a CR before the LF is not part of
        // the line.
        let complete = &bytes[..bytes.iter().rposition(|&b| b == b'\n')?];
        let mut lines = complete
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        let header = String::from_utf8_lossy(lines.next()?);
        let mut f = header.split(' ');
        let version = f.next()?;
        let (mut uidv, mut next, mut extra) = (None, None, Vec::new());
        match version {
            "3" => {
                for field in f.filter(|s| !s.is_empty()) {
                    if let Some(v) = field.strip_prefix('V') {
                        uidv = Some(decimal(v.as_bytes())?);
                    } else if let Some(n) = field.strip_prefix('N') {
                        next = Some(decimal(n.as_bytes())?);
                    } else {
                        extra.push(field.to_owned());
                    }
                }
            }
            "1" => {
                let mut f = f.filter(|s| !s.is_empty());
                uidv = f.next()?.parse().ok();
                next = f.next()?.parse().ok();
            }
            _ => return None,
        }
        // Dovecot calls a header with either of them 0 (or missing) broken.
        let (uidvalidity, header_next) = (uidv.filter(|&v| v != 0)?, next.filter(|&n| n != 0)?);
        let v1 = version == "1";
        let mut next_uid = header_next;
        let mut records = Vec::new();
        let mut seen = HashSet::new();
        for line in lines {
            let Some(r) = parse_record(line, v1) else {
                continue;
            };
            // Version 1 lists could not hold a UID at or above the header's next UID.
            if (v1 && r.uid >= header_next) || !seen.insert(r.uid) {
                continue;
            }
            next_uid = next_uid.max(r.uid + 1);
            records.push(r);
        }
        records.sort_by_key(|r| r.uid);
        // A base name listed again under a higher UID (a message moved back after an expunge
        // and appended anew): Dovecot drops the older record.
        let mut bases = HashSet::new();
        let mut keep: Vec<bool> = records
            .iter()
            .rev()
            .map(|r| r.file_name.is_empty() || bases.insert(r.base()))
            .collect();
        keep.reverse();
        let mut keep = keep.into_iter();
        records.retain(|_| keep.next().unwrap_or(true));
        Some(UidList {
            uidvalidity,
            next_uid,
            header_extra: extra,
            records,
        })
    }

    /// Serialises the list as version 3.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("3 V{} N{}", self.uidvalidity, self.next_uid).into_bytes();
        for e in &self.header_extra {
            out.push(b' ');
            out.extend_from_slice(e.as_bytes());
        }
        out.push(b'\n');
        for r in &self.records {
            if let Some(raw) = &r.raw {
                out.extend_from_slice(raw);
                out.push(b'\n');
                continue;
            }
            out.extend_from_slice(itoa::Buffer::new().format(r.uid).as_bytes());
            if !r.ext.is_empty() {
                out.push(b' ');
                out.extend_from_slice(r.ext.as_bytes());
            }
            out.extend_from_slice(b" :");
            out.extend_from_slice(r.file_name.as_bytes());
            out.push(b'\n');
        }
        out
    }

    /// Record index by base name (a parsed list has one record per base; otherwise the first
    /// wins). Records whose name is not UTF-8 are not in it.
    pub fn by_base(&self) -> HashMap<&str, usize> {
        let mut m = HashMap::with_capacity(self.records.len());
        for (i, r) in self.records.iter().enumerate() {
            if !r.file_name.is_empty() {
                m.entry(r.base()).or_insert(i);
            }
        }
        m
    }
}

/// A number as Dovecot's `str_to_uint` reads it: decimal digits only, no sign, no overflow.
fn decimal(s: &[u8]) -> Option<u32> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// One record line, checked as Dovecot's `maildir_uidlist_next` checks it. `None`: a line
/// Dovecot would call corrupt.
fn parse_record(line: &[u8], v1: bool) -> Option<Record> {
    let digits = line.iter().take_while(|b| b.is_ascii_digit()).count();
    let uid = decimal(&line[..digits])?;
    // Dovecot: the UID is followed by a space; 0 and 2^32-1 are not UIDs.
    let mut rest = line[digits..].strip_prefix(b" ")?;
    if uid == 0 || uid == u32::MAX {
        return None;
    }
    rest = trim_spaces(rest);
    let mut fields: Vec<&[u8]> = Vec::new();
    let name = if v1 {
        // `<uid> <file name>`: the rest of the line, spaces and all.
        rest
    } else {
        // Extension fields up to the first field that starts with ':'; a field whose key is
        // not A-Z is dropped (Dovecot: "Invalid extension record, removing").
        while let Some(&c) = rest.first() {
            if c == b':' {
                break;
            }
            let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
            if c.is_ascii_uppercase() {
                fields.push(&rest[..end]);
            }
            rest = trim_spaces(&rest[end..]);
        }
        // No ':' (no file name) is corrupt.
        rest.strip_prefix(b":")?
    };
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) || name.starts_with(b":") {
        return None;
    }
    let mut ext = String::new();
    for f in &fields {
        if !ext.is_empty() {
            ext.push(' ');
        }
        ext.push_str(&String::from_utf8_lossy(f));
    }
    // Not UTF-8: the record in version 3 form, its bytes as they are.
    let raw = std::str::from_utf8(line).is_err().then(|| {
        let mut out = itoa::Buffer::new().format(uid).as_bytes().to_vec();
        for f in &fields {
            out.push(b' ');
            out.extend_from_slice(f);
        }
        out.extend_from_slice(b" :");
        out.extend_from_slice(name);
        out.into_boxed_slice()
    });
    Some(Record {
        uid,
        ext,
        file_name: std::str::from_utf8(name).unwrap_or("").to_owned(),
        raw,
    })
}

fn trim_spaces(s: &[u8]) -> &[u8] {
    let n = s.iter().take_while(|&&b| b == b' ').count();
    &s[n..]
}

/// Reads `dovecot-uidlist` of the Maildir at `root`, where `listed` messages were just
/// listed. `Ok(None)`: there is none. `Err`: there is one, but it is not a regular file of
/// a size such a list can have ([`super::map::read_bounded`]) or its header is not
/// understood.
pub fn read_dovecot(root: &Path, listed: usize) -> io::Result<Option<UidList>> {
    match super::map::read_bounded(&root.join(DOVECOT_UIDLIST), listed) {
        Ok(bytes) => UidList::parse(&bytes)
            .map(Some)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "dovecot-uidlist header")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// When Dovecot's dotlock code counts a file as last changed: its ctime, or its mtime when
/// that is later (and not in the future).
fn last_change(m: &fs::Metadata, now: SystemTime) -> SystemTime {
    let ctime = u64::try_from(m.ctime()).map_or(SystemTime::UNIX_EPOCH, |s| {
        SystemTime::UNIX_EPOCH + Duration::new(s, u32::try_from(m.ctime_nsec()).unwrap_or(0))
    });
    match m.modified() {
        Ok(mtime) if mtime > ctime && mtime <= now => mtime,
        _ => ctime,
    }
}

/// Holds `dovecot-uidlist.lock`; removed on drop unless consumed by [`DotLock::replace`].
pub struct DotLock<'a> {
    root: &'a Path,
    file: Option<fs::File>,
    /// Device and inode of our lock file: a lock file that is not this one is not ours.
    id: (u64, u64),
}

impl<'a> DotLock<'a> {
    /// Takes the lock, waiting up to `wait` for a live holder and removing a stale one.
    pub fn acquire(root: &'a Path, wait: Duration) -> io::Result<DotLock<'a>> {
        Self::acquire_with(root, wait, STALE_AFTER)
    }

    fn acquire_with(
        root: &'a Path,
        wait: Duration,
        stale_after: Duration,
    ) -> io::Result<DotLock<'a>> {
        let path = root.join(DOVECOT_UIDLIST_LOCK);
        let list = root.join(DOVECOT_UIDLIST);
        let mode = fs::metadata(&list)
            .map(|m| m.permissions().mode() & 0o666)
            .unwrap_or(0o600);
        let deadline = Instant::now() + wait;
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
            {
                Ok(file) => {
                    let lock = DotLock {
                        root,
                        id: file.metadata().map(|m| (m.dev(), m.ino()))?,
                        file: Some(file),
                    };
                    // The mode exactly, whatever our umask (Dovecot sets its umask for this).
                    let file = lock.file.as_ref().expect("just opened");
                    file.set_permissions(fs::Permissions::from_mode(mode))?;
                    return Ok(lock);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // Dovecot's rule: stale when neither the lock nor the list it protects has
                    // changed for `stale_after`.
                    let now = SystemTime::now();
                    let stale = fs::symlink_metadata(&path).is_ok_and(|lock| {
                        let mut changed = last_change(&lock, now);
                        if let Ok(l) = fs::metadata(&list) {
                            changed = changed.max(last_change(&l, now));
                        }
                        now.duration_since(changed)
                            .is_ok_and(|age| age > stale_after)
                    });
                    if stale {
                        tracing::warn!(dir = %root.display(), "removing stale dovecot-uidlist.lock");
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    if Instant::now() >= deadline {
                        return Err(io::Error::new(
                            io::ErrorKind::WouldBlock,
                            "dovecot-uidlist.lock is held",
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether `dovecot-uidlist.lock` is still our lock file (not removed as stale and taken
    /// by another process meanwhile).
    fn still_ours(&self) -> bool {
        fs::symlink_metadata(self.root.join(DOVECOT_UIDLIST_LOCK))
            .is_ok_and(|m| (m.dev(), m.ino()) == self.id)
    }

    /// Writes `bytes` as the new `dovecot-uidlist` (into the lock file, then renamed over the
    /// list), keeping the old list's owner where we may. Fails without touching the list when
    /// the lock is no longer ours.
    pub fn replace(mut self, bytes: &[u8]) -> io::Result<()> {
        let mut file = self.file.take().expect("lock file is open");
        let lock = self.root.join(DOVECOT_UIDLIST_LOCK);
        let result = (|| {
            let owner = fs::metadata(self.root.join(DOVECOT_UIDLIST))
                .or_else(|_| fs::metadata(self.root))
                .ok();
            if let Some(m) = owner {
                // Only possible as root; corepop running as the mail user needs nothing.
                let _ = std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()));
            }
            file.write_all(bytes)?;
            file.sync_data()?;
            if !self.still_ours() {
                return Err(io::Error::other(
                    "dovecot-uidlist.lock was taken over as stale; list not written",
                ));
            }
            fs::rename(&lock, self.root.join(DOVECOT_UIDLIST))
        })();
        if result.is_err() && self.still_ours() {
            let _ = fs::remove_file(&lock);
        }
        result
    }
}

impl Drop for DotLock<'_> {
    fn drop(&mut self) {
        if self.file.take().is_some() && self.still_ours() {
            let _ = fs::remove_file(self.root.join(DOVECOT_UIDLIST_LOCK));
        }
    }
}

/// Gives UIDs to `new_files` (file names, in delivery order) that `dovecot-uidlist` does
/// not know yet (recorded by base name, as Dovecot does; a new list's UIDVALIDITY is the
/// current time, as Dovecot's first one is), under Dovecot's lock, creating the list when
/// `create` is set and there is none. Returns the list as written (or as found, when nothing
/// was missing). `listed`: messages in the Maildir's listing ([`read_dovecot`]).
pub fn assign_uids(
    root: &Path,
    new_files: &[&str],
    create: bool,
    listed: usize,
) -> io::Result<UidList> {
    let lock = DotLock::acquire(root, LOCK_WAIT)?;
    let mut list = match read_dovecot(root, listed)? {
        Some(l) => l,
        None if create => UidList {
            uidvalidity: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() as u32)
                .max(1),
            next_uid: 1,
            header_extra: vec![format!("G{:032x}", rand::random::<u128>())],
            records: Vec::new(),
        },
        None => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "no dovecot-uidlist",
            ))
        }
    };
    let known: HashSet<String> = list.records.iter().map(|r| r.base().to_owned()).collect();
    let mut added = false;
    for name in new_files {
        let base = name.split_once(':').map_or(*name, |(b, _)| b);
        // A name with a line break cannot be recorded (it would corrupt the list for
        // Dovecot too): such a message gets no UID and is not served while UIDs are in use.
        if known.contains(base) || list.next_uid == u32::MAX || base.contains(['\n', '\r']) {
            continue;
        }
        // Dovecot records the base name (no `:2,` info), as here.
        list.records.push(Record {
            uid: list.next_uid,
            ext: String::new(),
            file_name: base.to_owned(),
            raw: None,
        });
        list.next_uid += 1;
        added = true;
    }
    if added || create {
        lock.replace(&list.encode())?;
    }
    Ok(list)
}

/// Courier's record of each message it listed: base name → the UIDL Courier reported, read
/// as Courier's `pop3dserver` reads the file. The header must be `/2` or `/3` and the next
/// UID (its UIDVALIDITY field is not used: each line carries its own). A line is
/// `<file name> <size> <uid>:<uidvalidity>[:<utf8>]`, split at its last two spaces (a file
/// name may hold spaces); a line that does not parse is skipped. The UIDL is
/// `UID<uid>-<uidvalidity>`, `UID<uid>` when the line's UIDVALIDITY is 0, and for UID 0 the
/// base name with bytes outside 0x21–0x7E and `'`, `"`, `+` written as `+XX` (hex).
///
/// Read as [`read_dovecot`] reads its list; one that cannot be read so is not used.
pub fn read_courier(root: &Path, listed: usize) -> Option<HashMap<String, String>> {
    let bytes = match super::map::read_bounded(&root.join(COURIER_SIZELIST), listed) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(dir = %root.display(), error = %e, "courierpop3dsizelist not used");
            return None;
        }
    };
    let text = String::from_utf8(bytes).ok()?;
    let mut lines = text.split('\n');
    let mut h = lines.next()?.strip_prefix('/')?.split(' ');
    let version: u32 = h.next()?.parse().ok()?;
    let _next: u64 = h.next()?.parse().ok()?;
    if version != 2 && version != 3 {
        return None;
    }
    let mut map = HashMap::new();
    for line in lines {
        let Some((base, uidl)) = courier_line(line) else {
            continue;
        };
        map.entry(base.to_owned()).or_insert(uidl);
    }
    Some(map)
}

/// One `courierpop3dsizelist` line: (base name, UIDL).
fn courier_line(line: &str) -> Option<(&str, String)> {
    let mut f = line.rsplitn(3, ' ');
    let ids = f.next()?;
    let _size: u64 = f.next()?.parse().ok()?;
    let name = f.next().filter(|n| !n.is_empty())?;
    let mut ids = ids.split(':');
    let uid: u64 = ids.next()?.parse().ok()?;
    let uidv: u64 = ids.next()?.parse().ok()?;
    if let Some(utf8) = ids.next() {
        let _: i32 = utf8.parse().ok()?;
    }
    let base = name.split_once(':').map_or(name, |(b, _)| b);
    let uidl = match (uid, uidv) {
        (0, _) => base.bytes().fold(String::new(), |mut out, b| {
            if (0x21..=0x7e).contains(&b) && !matches!(b, b'\'' | b'"' | b'+') {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("+{b:02X}"));
            }
            out
        }),
        (u, 0) => format!("UID{u}"),
        (u, v) => format!("UID{u}-{v}"),
    };
    Some((base, uidl))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A user who can write into their Maildir must not make a login read other files
    /// through Dovecot's or Courier's list: not `/dev/zero` (memory for the whole server),
    /// not a FIFO (a login that never ends, holding the maildrop lock), not a huge sparse
    /// file, not another user's list through a link.
    #[test]
    fn lists_are_read_only_from_regular_files_of_bounded_size() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (dovecot, courier) = (root.join(DOVECOT_UIDLIST), root.join(COURIER_SIZELIST));
        let other = tempfile::tempdir().unwrap();
        fs::write(other.path().join(DOVECOT_UIDLIST), b"3 V1 N2\n1 :a.h\n").unwrap();
        fs::write(other.path().join(COURIER_SIZELIST), b"/2 2 5\na.h 10 1:5\n").unwrap();
        for (link, target) in [
            (&dovecot, other.path().join(DOVECOT_UIDLIST)),
            (&courier, other.path().join(COURIER_SIZELIST)),
        ] {
            std::os::unix::fs::symlink(target, link).unwrap();
        }
        assert!(read_dovecot(root, 1).is_err(), "a symlink is followed");
        assert!(read_courier(root, 1).is_none(), "a symlink is followed");
        for path in [&dovecot, &courier] {
            fs::remove_file(path).unwrap();
            std::os::unix::fs::symlink("/dev/zero", path).unwrap();
        }
        assert!(read_dovecot(root, 1).is_err());
        assert!(read_courier(root, 1).is_none());
        for path in [&dovecot, &courier] {
            fs::remove_file(path).unwrap();
            let made = std::process::Command::new("mkfifo").arg(path).status();
            assert!(made.unwrap().success());
        }
        assert!(read_dovecot(root, 1).is_err());
        assert!(read_courier(root, 1).is_none());
        for path in [&dovecot, &courier] {
            fs::remove_file(path).unwrap();
            // Sparse: no disk blocks, no quota; far more than one message's list needs.
            fs::File::create(path).unwrap().set_len(1 << 40).unwrap();
        }
        assert!(read_dovecot(root, 1).is_err());
        assert!(read_courier(root, 1).is_none());
        // Regular files of a plausible size are read.
        fs::write(&dovecot, b"3 V1 N2\n1 :a.h\n").unwrap();
        fs::write(&courier, b"/2 2 5\na.h 10 1:5\n").unwrap();
        assert_eq!(read_dovecot(root, 1).unwrap().unwrap().next_uid, 2);
        assert_eq!(read_courier(root, 1).unwrap()["a.h"], "UID1-5");
    }

    #[test]
    fn parse_dovecot_list() {
        let l = UidList::parse(
            b"3 V1700000000 N5 G0123456789abcdef0123456789abcdef\n\
              1 :1.M1P1.h:2,S\n\
              2 W120 P+old-uidl Zfuture :2.M1P1.h,S=100\n\
              garbage line\n\
              2 :dup.h\n\
              4 G1234 O1 :4.M1P1.h:2,\n\
              7 :torn",
        )
        .unwrap();
        assert_eq!((l.uidvalidity, l.next_uid), (1_700_000_000, 5));
        assert_eq!(
            l.records.iter().map(|r| r.uid).collect::<Vec<_>>(),
            [1, 2, 4]
        );
        assert_eq!(l.records[1].ext('P'), Some("+old-uidl"));
        assert_eq!(l.records[1].ext('W'), Some("120"));
        assert_eq!(l.records[2].ext('O'), Some("1"));
        assert_eq!(l.records[2].base(), "4.M1P1.h");
        let again = UidList::parse(&l.encode()).unwrap();
        assert_eq!(again, l);
        assert!(UidList::parse(b"garbage\n").is_none());
        assert!(UidList::parse(b"").is_none());
        assert!(UidList::parse(b"3 V1 N2").is_none());
        assert!(UidList::parse(b"3 N2\n").is_none());
    }

    #[test]
    fn assign_under_lock_continues_the_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join(DOVECOT_UIDLIST), b"3 V42 N8 Gabc\n7 :a.h:2,S\n").unwrap();
        let l = assign_uids(root, &["a.h:2,S", "b.h", "c.h"], false, 10).unwrap();
        assert_eq!(l.next_uid, 10);
        let text = fs::read_to_string(root.join(DOVECOT_UIDLIST)).unwrap();
        assert_eq!(text, "3 V42 N10 Gabc\n7 :a.h:2,S\n8 :b.h\n9 :c.h\n");
        let l = assign_uids(root, &["e.h:2,S"], false, 10).unwrap();
        assert_eq!(l.records.last().unwrap().file_name, "e.h");
        assert!(!root.join(DOVECOT_UIDLIST_LOCK).exists());
        // A live lock held by someone else: we wait, then give up without touching anything.
        fs::write(root.join(DOVECOT_UIDLIST_LOCK), b"").unwrap();
        let e = DotLock::acquire(root, Duration::from_millis(50))
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // A stale one (neither it nor the list changed for the stale time) is taken over.
        std::thread::sleep(Duration::from_millis(300));
        let short = Duration::from_millis(200);
        let lock = DotLock::acquire_with(root, Duration::from_millis(50), short).unwrap();
        drop(lock);
        assert!(!root.join(DOVECOT_UIDLIST_LOCK).exists());
        let l = assign_uids(root, &["d.h"], false, 10).unwrap();
        assert_eq!(l.records.last().unwrap().uid, 11);
    }

    #[test]
    fn empty_pop3_uidl_is_the_base_name() {
        // Dovecot's maildir_update_pop3_uidl() saves "P" alone when the UIDL equals the base
        // name, and maildir_mail_get_special() reads it back as the base name.
        let l = UidList::parse(b"3 V1 N3\n1 P :1.M1P1.h:2,S\n2 P+x W5 :2.M1P1.h\n").unwrap();
        assert_eq!(l.records[0].ext('P'), Some("1.M1P1.h"));
        assert_eq!(l.records[1].ext('P'), Some("+x"));
        assert_eq!(l.records[1].ext('W'), Some("5"));
        assert_eq!(l.records[0].ext('W'), None);
        assert_eq!(
            l.encode(),
            b"3 V1 N3\n1 P :1.M1P1.h:2,S\n2 P+x W5 :2.M1P1.h\n"
        );
    }

    #[test]
    fn a_base_listed_again_keeps_its_higher_uid() {
        // maildir_uidlist_next(): "Duplicate file entry" -- the older record is deleted and
        // the later one (a higher UID, the list being in UID order) stands.
        let l = UidList::parse(b"3 V1 N1\n3 :a.h\n5 :b.h\n7 :a.h:2,S\n").unwrap();
        assert_eq!(l.records[l.by_base()["a.h"]].uid, 7);
        assert_eq!(l.next_uid, 8);
        assert_eq!(l.encode(), b"3 V1 N8\n5 :b.h\n7 :a.h:2,S\n");
    }

    #[test]
    fn a_bad_extension_field_is_dropped_not_its_record() {
        // maildir_uidlist_read_extended(): keys are A-Z; another field is removed, the
        // record stays.
        let l = UidList::parse(b"3 V1 N9\n4 W12 1x :a.h\n5 lower Zok  :b.h\n").unwrap();
        assert_eq!(l.records.iter().map(|r| r.uid).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(l.records[0].ext, "W12");
        assert_eq!(l.records[1].ext, "Zok");
        assert_eq!(l.encode(), b"3 V1 N9\n4 W12 :a.h\n5 Zok :b.h\n");
    }

    #[test]
    fn records_out_of_order_are_written_in_uid_order() {
        // Dovecot stops reading at a UID that is not above the one before ("UIDs not
        // ordered"), so a list must be written in UID order to be read whole.
        let l = UidList::parse(b"3 V1 N1\n5 :a.h\n3 :b.h\n").unwrap();
        assert_eq!(l.encode(), b"3 V1 N6\n3 :b.h\n5 :a.h\n");
    }

    #[test]
    fn numbers_as_dovecot_reads_them() {
        // maildir_uidlist_read_header(): V and N must be there and not 0; str_to_uint()
        // takes digits only.
        assert!(UidList::parse(b"3 V0 N5\n").is_none());
        assert!(UidList::parse(b"3 V5 N0\n").is_none());
        assert!(UidList::parse(b"3 V+5 N7\n").is_none());
        assert!(UidList::parse(b"3 V5 N7x\n").is_none());
        assert!(UidList::parse(b"1 0 7\n").is_none());
        // A UID is digits then a space; 0 and 4294967295 are not UIDs.
        let l = UidList::parse(b"3 V5 N2\n+4 :a.h\n4294967295 :b.h\n0 :c.h\n6 :d.h\n").unwrap();
        assert_eq!(l.records.iter().map(|r| r.uid).collect::<Vec<_>>(), [6]);
        assert_eq!(l.next_uid, 7);
        // Version 1: the file name is the rest of the line; a UID at or above the header's
        // next UID is corrupt.
        let l = UidList::parse(b"1 5 9\n1 a b.h:2,S\n2  c.h\n9 d.h\n").unwrap();
        assert_eq!((l.uidvalidity, l.next_uid), (5, 9));
        let names: Vec<_> = l.records.iter().map(|r| r.file_name.as_str()).collect();
        assert_eq!(names, ["a b.h:2,S", "c.h"]);
        assert_eq!(l.records[0].base(), "a b.h");
    }

    #[test]
    fn lines_that_are_not_utf8_are_written_back_unchanged() {
        let text = b"3 V1 N5 Gx\n1 :caf\xe9.h:2,S\n2 P\xe9t\xe9 :b.h\n4 W3 :c.h\n";
        let l = UidList::parse(text).unwrap();
        assert_eq!(l.encode(), text);
        // The record of a name that is not UTF-8 matches no listed file; a name that is
        // still finds its record.
        let by = l.by_base();
        assert_eq!(by.len(), 2);
        assert_eq!(l.records[by["b.h"]].uid, 2);
        // A version 1 line is written back in version 3 form.
        let l = UidList::parse(b"1 5 9\n1 caf\xe9 x.h:2,S\n").unwrap();
        assert_eq!(l.encode(), b"3 V5 N9\n1 :caf\xe9 x.h:2,S\n");
    }

    #[test]
    fn lock_changed_recently_is_not_stale() {
        // file-dotlock.c check_lock(): the lock's ctime counts (an mtime set back does not
        // make it stale), and so does a change of the list it protects.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join(DOVECOT_UIDLIST), b"3 V42 N1\n").unwrap();
        fs::write(root.join(DOVECOT_UIDLIST_LOCK), b"").unwrap();
        let old = SystemTime::now() - Duration::from_secs(600);
        fs::File::options()
            .write(true)
            .open(root.join(DOVECOT_UIDLIST_LOCK))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let e = DotLock::acquire(root, Duration::from_millis(50))
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(root.join(DOVECOT_UIDLIST_LOCK).exists());
        // The lock unchanged for longer than the stale time, the list not.
        let short = Duration::from_millis(200);
        std::thread::sleep(Duration::from_millis(300));
        fs::write(root.join(DOVECOT_UIDLIST), b"3 V42 N2\n").unwrap();
        let e = DotLock::acquire_with(root, Duration::from_millis(50), short)
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        std::thread::sleep(Duration::from_millis(300));
        assert!(DotLock::acquire_with(root, Duration::from_millis(50), short).is_ok());
    }

    #[test]
    fn a_lock_taken_over_is_neither_renamed_nor_removed() {
        // Dovecot checks its dotlock is still its own before it deletes it; corepop must not
        // rename another process's lock file over the list, nor remove it.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join(DOVECOT_UIDLIST), b"3 V42 N1\n").unwrap();
        let lock_path = root.join(DOVECOT_UIDLIST_LOCK);
        let ours = DotLock::acquire(root, LOCK_WAIT).unwrap();
        fs::remove_file(&lock_path).unwrap();
        fs::write(&lock_path, b"4242:otherhost").unwrap();
        assert!(ours.replace(b"3 V42 N2\n1 :a.h\n").is_err());
        assert_eq!(fs::read(root.join(DOVECOT_UIDLIST)).unwrap(), b"3 V42 N1\n");
        assert_eq!(fs::read(&lock_path).unwrap(), b"4242:otherhost");
        fs::remove_file(&lock_path).unwrap();
        let ours = DotLock::acquire(root, LOCK_WAIT).unwrap();
        fs::remove_file(&lock_path).unwrap();
        fs::write(&lock_path, b"4243:otherhost").unwrap();
        drop(ours);
        assert_eq!(fs::read(&lock_path).unwrap(), b"4243:otherhost");
    }

    #[test]
    fn written_list_keeps_its_mode_whatever_the_umask() {
        // Dovecot sets its umask so that the lock and the list get the mailbox's file mode
        // exactly.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let list = root.join(DOVECOT_UIDLIST);
        fs::write(&list, b"3 V42 N1\n").unwrap();
        fs::set_permissions(&list, fs::Permissions::from_mode(0o666)).unwrap();
        assign_uids(root, &["a.h"], false, 10).unwrap();
        let mode = fs::metadata(&list).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666);
    }

    #[test]
    fn courier_list() {
        let dir = tempfile::tempdir().unwrap();
        let read = |text: &str| {
            fs::write(dir.path().join(COURIER_SIZELIST), text).unwrap();
            read_courier(dir.path(), 10)
        };
        let m = read("/2 10 1234\n1.M1.h:2,S 100 3:1234\nold.h 5\n\nx\n").unwrap();
        assert_eq!(m["1.M1.h"], "UID3-1234");
        assert_eq!(m.len(), 1);
        // Each line's own UIDVALIDITY (Courier gives a new message the one of the session
        // that first saw it), `UID<n>` without one, the escaped name for UID 0, names with
        // spaces, version 3's UTF-8 flag, a header without UIDVALIDITY.
        let m = read(
            "/3 9\n\
             1.M1.h:2,S 10 1:1600000000:0\n\
             2.M1.h 20 2:1700000000:1\n\
             3.M1.h 30 3:0:0\n\
             4 a+b'c\"d.h:2, 40 0:1700000000:0\n\
             5 x.h 50 5:1700000000:0\n\
             6.M1.h 60 6\n\
             7.M1.h 70 7:1:x\n\
             8.M1.h 1700000000 8:7:0",
        )
        .unwrap();
        assert_eq!(m["1.M1.h"], "UID1-1600000000");
        assert_eq!(m["2.M1.h"], "UID2-1700000000");
        assert_eq!(m["3.M1.h"], "UID3");
        assert_eq!(m["4 a+b'c\"d.h"], "4+20a+2Bb+27c+22d.h");
        assert_eq!(m["5 x.h"], "UID5-1700000000");
        assert_eq!(m["8.M1.h"], "UID8-7");
        assert_eq!(m.len(), 6, "{m:?}");
        // Versions Courier does not read itself.
        assert!(read("/1 9 5\n1.M1.h 10 1:5\n").is_none());
        assert!(read("/4 9 5\n1.M1.h 10 1:5\n").is_none());
        assert!(read("/3\n1.M1.h 10 1:5\n").is_none());
        assert!(read("3 9 5\n1.M1.h 10 1:5\n").is_none());
    }
}
