//! Other servers' UID state in a Maildir: Dovecot's `dovecot-uidlist` and Courier's
//! `courierpop3dsizelist`.
//!
//! Owns: reading both files (tolerantly), and adding UIDs for new messages to
//! `dovecot-uidlist` under Dovecot's own lock protocol, so that Dovecot (IMAP, LDA, POP3) and
//! corepop can work on one Maildir side by side.
//!
//! `dovecot-uidlist` (version 3, as Dovecot 2.x writes it):
//! ```text
//! 3 V<uidvalidity> N<next uid> G<mailbox guid>
//! <uid> [<key><value> ...] :<file name>
//! ```
//! Record keys: `S` physical size, `W` CRLF size, `P` saved POP3 UIDL, `O` POP3 order,
//! `G` message GUID; unknown keys are kept as they are. Reading is tolerant: a garbage line,
//! a duplicate UID (the first wins) or a torn last line (Dovecot appends in place) is skipped;
//! a file whose header is not understood is not used at all and never rewritten.
//!
//! Writing follows Dovecot's dotlock: create `dovecot-uidlist.lock` with `O_EXCL`, re-read the
//! list, write the whole new list into the lock file, fsync, rename it over `dovecot-uidlist`.
//! A lock file not modified for [`STALE_AFTER`] is stale (Dovecot's
//! `MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT`, 2 minutes) and removed. New UIDs continue at `N`, in
//! delivery order (Dovecot sorts new files by the time in their names, too). Records whose
//! files are gone are kept: Dovecot drops them itself on its next sync.
//!
//! `courierpop3dsizelist`: `/<version> <next uid> [<uidvalidity>]` then
//! `<file name> <size> <uid>:<uidvalidity>[:<utf8>]` lines; Courier's UIDL is
//! `UID<uid>-<uidvalidity>` with the line's own UIDVALIDITY (see [`read_courier`]). corepop
//! only reads it.
//!
//! Does not own: listing the Maildir or choosing UIDLs (see [`super::Snapshot`]).

use std::collections::HashMap;
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
/// A `dovecot-uidlist.lock` untouched this long belongs to a dead process.
pub const STALE_AFTER: Duration = Duration::from_secs(120);
/// How long to wait for a live lock before giving up (new mail then waits for a later login).
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// One record of `dovecot-uidlist`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub uid: u32,
    /// The extension fields as written (`W123 P...`), without the file name.
    pub ext: String,
    pub file_name: String,
}

impl Record {
    /// The value of extension `key` (`P`, `O`, `G`, `W`, `S`).
    pub fn ext(&self, key: char) -> Option<&str> {
        self.ext
            .split(' ')
            .find_map(|f| f.strip_prefix(key).filter(|_| !f.is_empty()))
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
    pub records: Vec<Record>,
}

impl UidList {
    /// Parses a list. `None` when the header is not understood.
    pub fn parse(bytes: &[u8]) -> Option<UidList> {
        let text = String::from_utf8_lossy(bytes);
        // Dovecot appends in place: a last line without its newline may be half-written.
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => return None,
        };
        let mut lines = complete.lines();
        let header = lines.next()?;
        let mut f = header.split(' ');
        let version = f.next()?;
        let (mut uidv, mut next, mut extra) = (None, None, Vec::new());
        match version {
            "3" => {
                for field in f.filter(|s| !s.is_empty()) {
                    if let Some(v) = field.strip_prefix('V') {
                        uidv = v.parse::<u32>().ok();
                    } else if let Some(n) = field.strip_prefix('N') {
                        next = n.parse::<u32>().ok();
                    } else {
                        extra.push(field.to_owned());
                    }
                }
            }
            "1" => {
                uidv = f.next()?.parse().ok();
                next = f.next()?.parse().ok();
            }
            _ => return None,
        }
        let (uidvalidity, mut next_uid) = (uidv?, next?);
        let mut records = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for line in lines {
            let Some(r) = parse_record(line, version == "1") else {
                continue;
            };
            if r.uid == 0 || !seen.insert(r.uid) {
                continue;
            }
            next_uid = next_uid.max(r.uid.saturating_add(1));
            records.push(r);
        }
        Some(UidList {
            uidvalidity,
            next_uid,
            header_extra: extra,
            records,
        })
    }

    /// Serialises the list as version 3.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format!("3 V{} N{}", self.uidvalidity, self.next_uid);
        for e in &self.header_extra {
            out.push(' ');
            out.push_str(e);
        }
        out.push('\n');
        for r in &self.records {
            out.push_str(itoa::Buffer::new().format(r.uid));
            if !r.ext.is_empty() {
                out.push(' ');
                out.push_str(&r.ext);
            }
            out.push_str(" :");
            out.push_str(&r.file_name);
            out.push('\n');
        }
        out.into_bytes()
    }

    /// Record index by base name (the first record of a base wins).
    pub fn by_base(&self) -> HashMap<&str, usize> {
        let mut m = HashMap::with_capacity(self.records.len());
        for (i, r) in self.records.iter().enumerate() {
            m.entry(r.base()).or_insert(i);
        }
        m
    }
}

fn parse_record(line: &str, v1: bool) -> Option<Record> {
    if v1 {
        let (uid, name) = line.split_once(' ')?;
        let name = name.rsplit(' ').next()?;
        return Some(Record {
            uid: uid.parse().ok()?,
            ext: String::new(),
            file_name: valid_name(name)?.to_owned(),
        });
    }
    // `<uid> :name` with no extensions has the " :" right after the uid.
    let (head, name) = line.split_once(" :")?;
    let mut f = head.splitn(2, ' ');
    let uid: u32 = f.next()?.parse().ok()?;
    let ext = f.next().unwrap_or("").trim().to_owned();
    if ext
        .split(' ')
        .any(|e| !e.is_empty() && !e.starts_with(|c: char| c.is_ascii_alphabetic()))
    {
        return None;
    }
    Some(Record {
        uid,
        ext,
        file_name: valid_name(name)?.to_owned(),
    })
}

fn valid_name(name: &str) -> Option<&str> {
    (!name.is_empty() && !name.contains(['/', '\0']) && !name.starts_with(':')).then_some(name)
}

/// Reads `dovecot-uidlist` of the Maildir at `root`. `Ok(None)`: there is none.
/// `Err(InvalidData)`: there is one, but its header is not understood.
pub fn read_dovecot(root: &Path) -> io::Result<Option<UidList>> {
    match fs::read(root.join(DOVECOT_UIDLIST)) {
        Ok(bytes) => UidList::parse(&bytes)
            .map(Some)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "dovecot-uidlist header")),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Holds `dovecot-uidlist.lock`; removed on drop unless consumed by [`DotLock::replace`].
pub struct DotLock<'a> {
    root: &'a Path,
    file: Option<fs::File>,
}

impl<'a> DotLock<'a> {
    /// Takes the lock, waiting up to `wait` for a live holder and removing a stale one.
    pub fn acquire(root: &'a Path, wait: Duration) -> io::Result<DotLock<'a>> {
        let path = root.join(DOVECOT_UIDLIST_LOCK);
        let mode = fs::metadata(root.join(DOVECOT_UIDLIST))
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
                    return Ok(DotLock {
                        root,
                        file: Some(file),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let stale = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .map(|t| {
                            SystemTime::now()
                                .duration_since(t)
                                .is_ok_and(|age| age > STALE_AFTER)
                        })
                        .unwrap_or(false);
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

    /// Writes `bytes` as the new `dovecot-uidlist` (into the lock file, then renamed over the
    /// list), keeping the old list's owner where we may.
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
            fs::rename(&lock, self.root.join(DOVECOT_UIDLIST))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&lock);
        }
        result
    }
}

impl Drop for DotLock<'_> {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(self.root.join(DOVECOT_UIDLIST_LOCK));
        }
    }
}

/// Gives UIDs to `new_files` (file names, in delivery order) that `dovecot-uidlist` does
/// not know yet (recorded by base name, as Dovecot does; a new list's UIDVALIDITY is the
/// current time, as Dovecot's first one is), under Dovecot's lock, creating the list when `create` is set and there is
/// none. Returns the list as written (or as found, when nothing was missing).
pub fn assign_uids(root: &Path, new_files: &[&str], create: bool) -> io::Result<UidList> {
    let lock = DotLock::acquire(root, LOCK_WAIT)?;
    let mut list = match read_dovecot(root)? {
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
    let known: std::collections::HashSet<String> =
        list.records.iter().map(|r| r.base().to_owned()).collect();
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
pub fn read_courier(root: &Path) -> Option<HashMap<String, String>> {
    let text = fs::read_to_string(root.join(COURIER_SIZELIST)).ok()?;
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
        let l = assign_uids(root, &["a.h:2,S", "b.h", "c.h"], false).unwrap();
        assert_eq!(l.next_uid, 10);
        let text = fs::read_to_string(root.join(DOVECOT_UIDLIST)).unwrap();
        assert_eq!(text, "3 V42 N10 Gabc\n7 :a.h:2,S\n8 :b.h\n9 :c.h\n");
        let l = assign_uids(root, &["e.h:2,S"], false).unwrap();
        assert_eq!(l.records.last().unwrap().file_name, "e.h");
        assert!(!root.join(DOVECOT_UIDLIST_LOCK).exists());
        // A live lock held by someone else: we wait, then give up without touching anything.
        fs::write(root.join(DOVECOT_UIDLIST_LOCK), b"").unwrap();
        let e = DotLock::acquire(root, Duration::from_millis(50))
            .err()
            .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        // A stale one is taken over.
        let old = SystemTime::now() - Duration::from_secs(600);
        fs::File::options()
            .write(true)
            .open(root.join(DOVECOT_UIDLIST_LOCK))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let l = assign_uids(root, &["d.h"], false).unwrap();
        assert_eq!(l.records.last().unwrap().uid, 11);
    }

    #[test]
    fn courier_list() {
        let dir = tempfile::tempdir().unwrap();
        let read = |text: &str| {
            fs::write(dir.path().join(COURIER_SIZELIST), text).unwrap();
            read_courier(dir.path())
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
