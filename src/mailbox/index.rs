//! The persistent per-Maildir index, so a login reads only messages it has not seen.
//!
//! Owns: the file `corepop-index` in the Maildir's root, which records for each message (by
//! base name) its physical size, its size with CRLF line endings, its line-ending shape
//! (CRLF-clean, LF, mixed), whether any line needs dot-stuffing, where its body starts (for
//! TOP), its IMAP UID (0: none) and the UIDL served for it; its format; and how it is written
//! and validated. Also [`scan`], which reads those facts from a message's bytes in one pass.
//!
//! Format (text, one record per line, so an operator can read it):
//! ```text
//! corepop-index 2
//! uidl\t<format>\t<uidvalidity>
//! <base>\t<size>\t<crlf size>\t<shape><dots>\t<body offset>\t<uid>\t<uidl>
//! ...
//! end <record count> <FNV-1a 64 of every preceding byte, hex>
//! ```
//! `<shape>` is `c` (CRLF only), `l` (LF only), `m` (mixed) or `?` (not read: the size came
//! from `,W=` in the file name or from Dovecot's `W` record); `<dots>` is `d` (some line starts
//! with "."), `-` (none) or `?`; `<body offset>` is `-` when unknown. The stored UIDLs are
//! reused only while the format and UIDVALIDITY in the `uidl` line are still the ones in use
//! and the record's UID is unchanged; otherwise they are recomputed.
//!
//! A file that is missing, truncated, of zero length, has flipped bits (checksum), another
//! version (an older corepop's), or any malformed line is ignored and rebuilt: a wrong size
//! or UIDL is never served. Only its `uidl` line, when whole, is still used to tell which
//! UIDL format the automatic mode chose for this Maildir. Only a regular file is read (never
//! through a symbolic link), and only as long as the listed messages can need ([`load`]).
//!
//! The file (mode 0600, whatever the umask) is written to a new temporary file, synced, and
//! renamed into place (atomic), under the maildrop lock. The directory is not synced: after
//! a power loss the previous index (or none) may be back, which is still true of every
//! message it lists. A failed write (disk full, permissions) is logged and the session goes
//! on; the next login tries again. Temporary files a crashed writer left behind are removed
//! by the next write.
//!
//! Base names identify a delivered message for its whole life (Maildir files are never
//! modified after delivery; flag changes keep the base), so recorded facts stay true.
//!
//! Does not own: listing the Maildir or reading messages (see [`super::Snapshot`]).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Name of the index file inside a Maildir.
pub const INDEX_FILE: &str = "corepop-index";
const MAGIC: &str = "corepop-index 2\n";
const TMP_PREFIX: &str = "corepop-index.tmp.";

/// Line endings of a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Not read (size known from the file name or Dovecot's list).
    Unknown,
    /// Every LF is preceded by CR (or there is no LF).
    Crlf,
    /// Bare LFs only.
    Lf,
    /// Both.
    Mixed,
}

impl Shape {
    fn code(self) -> char {
        match self {
            Shape::Unknown => '?',
            Shape::Crlf => 'c',
            Shape::Lf => 'l',
            Shape::Mixed => 'm',
        }
    }
    fn from_code(c: char) -> Option<Shape> {
        Some(match c {
            '?' => Shape::Unknown,
            'c' => Shape::Crlf,
            'l' => Shape::Lf,
            'm' => Shape::Mixed,
            _ => return None,
        })
    }
}

/// What the index knows about one message's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Size with CRLF line endings (what LIST reports).
    pub crlf_size: u64,
    /// Physical size.
    pub size: u64,
    pub shape: Shape,
    /// Some line starts with "." (RETR must dot-stuff); `None` when not read.
    pub dots: Option<bool>,
    /// Offset of the first body byte (after the empty line); `None` when not read.
    pub body_off: Option<u64>,
}

impl Entry {
    /// Known to be POP3 wire form as stored (CRLF line endings, no line starting with "."):
    /// RETR may send the file unchanged.
    pub fn is_wire_form(&self) -> bool {
        self.shape == Shape::Crlf && self.dots == Some(false)
    }

    /// This entry with what a RETR found: the stored bytes were already wire form.
    pub fn wire_form(self) -> Entry {
        Entry {
            shape: Shape::Crlf,
            dots: Some(false),
            ..self
        }
    }

    /// An entry known only from sizes (file name or Dovecot's list).
    pub fn sizes(crlf_size: u64, size: u64) -> Entry {
        Entry {
            crlf_size,
            size,
            shape: Shape::Unknown,
            dots: None,
            body_off: None,
        }
    }
}

/// One record of the index file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub entry: Entry,
    pub uid: u32,
    pub uidl: Box<str>,
}

/// A loaded index: the `uidl` line and the records by base name.
#[derive(Debug, Default)]
pub struct Loaded {
    pub format: String,
    pub uidvalidity: u32,
    pub records: HashMap<String, Record>,
}

/// Reads the facts of a message from its bytes, in one pass.
pub fn scan(src: &[u8]) -> Entry {
    let (mut bare, mut crlf) = (0u64, 0u64);
    let mut dots = src.first() == Some(&b'.');
    let mut body_off = None;
    let mut line_start = 0usize;
    for p in memchr::memchr_iter(b'\n', src) {
        let had_cr = p > 0 && src[p - 1] == b'\r';
        if had_cr {
            crlf += 1;
        } else {
            bare += 1;
        }
        if body_off.is_none() && (p == line_start || (had_cr && p == line_start + 1)) {
            body_off = Some(p as u64 + 1);
        }
        line_start = p + 1;
        if src.get(line_start) == Some(&b'.') {
            dots = true;
        }
    }
    let shape = match (bare, crlf) {
        (0, _) => Shape::Crlf,
        (_, 0) => Shape::Lf,
        _ => Shape::Mixed,
    };
    Entry {
        crlf_size: src.len() as u64 + bare,
        size: src.len() as u64,
        shape,
        dots: Some(dots),
        body_off: Some(body_off.unwrap_or(src.len() as u64)),
    }
}

/// FNV-1a, 64 bit: detects torn writes and flipped bits (not an adversary, who could as well
/// rewrite the Maildir).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn parse_record(line: &str) -> Option<(&str, Record)> {
    let mut f = line.split('\t');
    let (Some(base), Some(size), Some(crlf), Some(sd), Some(body), Some(uid), Some(uidl), None) = (
        f.next(),
        f.next(),
        f.next(),
        f.next(),
        f.next(),
        f.next(),
        f.next(),
        f.next(),
    ) else {
        return None;
    };
    let mut sd = sd.chars();
    let (Some(s), Some(d), None) = (sd.next(), sd.next(), sd.next()) else {
        return None;
    };
    let dots = match d {
        'd' => Some(true),
        '-' => Some(false),
        '?' => None,
        _ => return None,
    };
    let body_off = match body {
        "-" => None,
        b => Some(b.parse().ok()?),
    };
    if base.is_empty() || !super::name::valid_uidl(uidl) {
        return None;
    }
    Some((
        base,
        Record {
            entry: Entry {
                crlf_size: crlf.parse().ok()?,
                size: size.parse().ok()?,
                shape: Shape::from_code(s)?,
                dots,
                body_off,
            },
            uid: uid.parse().ok()?,
            uidl: uidl.into(),
        },
    ))
}

/// Parses an index file's bytes; `None` if anything is wrong with it.
pub fn parse(bytes: &[u8]) -> Option<Loaded> {
    let text = std::str::from_utf8(bytes).ok()?;
    let body = text.strip_prefix(MAGIC)?;
    if !text.ends_with('\n') {
        return None;
    }
    let trailer_at = text.trim_end_matches('\n').rfind('\n')? + 1;
    let (covered, trailer) = text.split_at(trailer_at);
    let mut t = trailer.trim_end_matches('\n').split(' ');
    let (Some("end"), Some(count), Some(sum), None) = (t.next(), t.next(), t.next(), t.next())
    else {
        return None;
    };
    let canonical = sum.len() == 16 && sum.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !canonical || u64::from_str_radix(sum, 16).ok()? != fnv1a(covered.as_bytes()) {
        return None;
    }
    if trailer.len() > body.len() {
        return None;
    }
    let count: usize = count.parse().ok()?;
    let body = &body[..body.len() - trailer.len()];
    let (head, records) = body.split_once('\n')?;
    let mut h = head.split('\t');
    let (Some("uidl"), Some(format), Some(uidv), None) = (h.next(), h.next(), h.next(), h.next())
    else {
        return None;
    };
    // `count` comes from the file and is not covered by the checksum: never trust it for an
    // allocation (a flipped digit would abort the process). Each record is a line.
    let mut map = HashMap::with_capacity(count.min(records.len() / 2 + 1));
    for line in records.lines() {
        let (base, r) = parse_record(line)?;
        if map.insert(base.to_owned(), r).is_some() {
            return None;
        }
    }
    (map.len() == count).then(|| Loaded {
        format: format.to_owned(),
        uidvalidity: uidv.parse().unwrap_or(0),
        records: map,
    })
}

/// What a damaged index still tells: its `uidl` line, when that line is whole (records and
/// sizes are never taken from a damaged file). The automatic UIDL format sticks to what this
/// Maildir's clients have seen through it (see [`super::Snapshot::load_with`]), so a damaged
/// index must not make it forget.
fn salvage(bytes: &[u8]) -> Loaded {
    let head = bytes
        .strip_prefix(MAGIC.as_bytes())
        .and_then(|b| {
            b.split(|&c| c == b'\n')
                .next()
                .filter(|l| l.len() < b.len())
        })
        .and_then(|l| std::str::from_utf8(l).ok());
    let mut f = head.unwrap_or_default().split('\t');
    match (f.next(), f.next(), f.next(), f.next()) {
        (Some("uidl"), Some(format), Some(uidv), None) if !format.is_empty() => Loaded {
            format: format.to_owned(),
            uidvalidity: uidv.parse().unwrap_or(0),
            records: HashMap::new(),
        },
        _ => Loaded::default(),
    }
}

/// Reads the index of the Maildir at `root`, where `listed` messages were just listed;
/// without records when missing or invalid (a damaged one still gives its `uidl` line when
/// that line is whole).
///
/// Only a regular file is read, and only if it is no larger than an index of that many
/// messages can be ([`super::map::read_bounded`]).
pub fn load(root: &Path, listed: usize) -> Loaded {
    match super::map::read_bounded(&root.join(INDEX_FILE), listed) {
        // An older corepop's index: its sizes are not reused, but it tells that this Maildir's
        // clients have seen base-name UIDLs (`%f`), which automatic UIDLs then keep.
        Ok(bytes) if bytes.starts_with(b"corepop-index 1\n") => Loaded {
            format: "%f".into(),
            ..Loaded::default()
        },
        Ok(bytes) => parse(&bytes).unwrap_or_else(|| {
            tracing::warn!(dir = %root.display(), "index is invalid or from another version; rebuilding it");
            salvage(&bytes)
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Loaded::default(),
        Err(e) => {
            tracing::warn!(dir = %root.display(), error = %e, "cannot read index; rebuilding it");
            Loaded::default()
        }
    }
}

/// Serialises records (in the given order) under a `uidl` line.
pub fn encode<'a>(
    format: &str,
    uidvalidity: u32,
    records: impl Iterator<Item = (&'a str, &'a Record)>,
) -> Vec<u8> {
    let mut out = Vec::from(MAGIC.as_bytes());
    debug_assert!(!format.contains(['\t', '\n']));
    out.extend_from_slice(format!("uidl\t{format}\t{uidvalidity}\n").as_bytes());
    let mut n = 0usize;
    let mut num = itoa::Buffer::new();
    for (base, r) in records {
        if base.contains(['\t', '\n']) {
            // Not representable; such a (hostile) file name is simply read at every login.
            continue;
        }
        let e = &r.entry;
        out.extend_from_slice(base.as_bytes());
        out.push(b'\t');
        out.extend_from_slice(num.format(e.size).as_bytes());
        out.push(b'\t');
        out.extend_from_slice(num.format(e.crlf_size).as_bytes());
        out.push(b'\t');
        out.push(e.shape.code() as u8);
        out.push(match e.dots {
            Some(true) => b'd',
            Some(false) => b'-',
            None => b'?',
        });
        out.push(b'\t');
        match e.body_off {
            Some(b) => out.extend_from_slice(num.format(b).as_bytes()),
            None => out.push(b'-'),
        }
        out.push(b'\t');
        out.extend_from_slice(num.format(r.uid).as_bytes());
        out.push(b'\t');
        out.extend_from_slice(r.uidl.as_bytes());
        out.push(b'\n');
        n += 1;
    }
    let sum = fnv1a(&out);
    out.extend_from_slice(format!("end {n} {sum:016x}\n").as_bytes());
    out
}

/// Writes the index atomically: a temporary file in the Maildir's root, then rename.
/// Temporary files of crashed writers (older than a minute) are removed first.
pub fn store(root: &Path, bytes: &[u8]) -> io::Result<()> {
    remove_stale_temporaries(root);
    let tmp = root.join(format!(
        "{TMP_PREFIX}{}.{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        // Only for the server, as the lock file: it lists every message's name, size and
        // UIDL. A new file, never one planted under that name (a link is not followed).
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        fs::rename(&tmp, root.join(INDEX_FILE))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn remove_stale_temporaries(root: &Path) {
    let Ok(rd) = fs::read_dir(root) else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with(TMP_PREFIX) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 60);
        if old {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(crlf: u64, size: u64, uid: u32, uidl: &str) -> Record {
        Record {
            entry: Entry::sizes(crlf, size),
            uid,
            uidl: uidl.into(),
        }
    }

    fn sample() -> Vec<u8> {
        let a = Record {
            entry: scan(b"A: 1\n\n.dot\n"),
            uid: 1,
            uidl: "000000016553f100".into(),
        };
        let b = rec(5, 5, 2, "000000026553f100");
        encode(
            "%08Xu%08Xv",
            1_700_000_000,
            [("1700000001.M1P1.h", &a), ("1700000002.M1P1.h", &b)].into_iter(),
        )
    }

    #[test]
    fn roundtrip() {
        let m = parse(&sample()).unwrap();
        assert_eq!(m.records.len(), 2);
        assert_eq!(
            (m.format.as_str(), m.uidvalidity),
            ("%08Xu%08Xv", 1_700_000_000)
        );
        let a = &m.records["1700000001.M1P1.h"];
        assert_eq!(a.entry, scan(b"A: 1\n\n.dot\n"));
        assert_eq!(&*a.uidl, "000000016553f100");
        assert_eq!(
            m.records["1700000002.M1P1.h"],
            rec(5, 5, 2, "000000026553f100")
        );
        let empty = encode("%f", 0, std::iter::empty());
        assert_eq!(parse(&empty).unwrap().records.len(), 0);
    }

    #[test]
    fn scan_facts() {
        let e = scan(b"A: 1\n\n.dot\nx");
        assert_eq!(
            (e.crlf_size, e.size, e.shape, e.dots, e.body_off),
            (15, 12, Shape::Lf, Some(true), Some(6))
        );
        let e = scan(b"A: 1\r\n\r\nbody\r\n");
        assert_eq!(
            (e.shape, e.dots, e.body_off),
            (Shape::Crlf, Some(false), Some(8))
        );
        let e = scan(b"A: 1\r\nB: 2\n\nb\n");
        assert_eq!((e.shape, e.body_off), (Shape::Mixed, Some(12)));
        assert_eq!(scan(b"headers only\n").body_off, Some(13));
        assert_eq!(scan(b"").crlf_size, 0);
        for src in [&b"a\nb\r\nc"[..], b"\n", b".", b"x\r\n.\r\n"] {
            assert_eq!(scan(src).crlf_size, super::super::crlf_size(src));
        }
    }

    #[test]
    fn every_damage_is_detected() {
        let good = sample();
        // Every truncation, and every single flipped bit, is refused.
        for len in 0..good.len() {
            assert!(parse(&good[..len]).is_none(), "truncated to {len}");
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                assert!(parse(&bad).is_none(), "bit {bit} of byte {i}");
            }
        }
        let other_version = String::from_utf8(good)
            .unwrap()
            .replace("index 2", "index 1");
        assert!(parse(other_version.as_bytes()).is_none());
        assert!(parse(b"").is_none());
        // A version-1 index (an older corepop's) is refused, not misread.
        assert!(parse(b"corepop-index 1\na\t3\t2\nend 1 0000000000000000\n").is_none());
    }

    /// A user who can write into their Maildir must not make the server read other files
    /// through the index: not another user's index, not a FIFO (a login that never ends),
    /// not `/dev/zero` or a huge sparse file (memory for the whole server).
    #[test]
    fn only_a_regular_file_of_bounded_size_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        store(other.path(), &sample()).unwrap();
        let path = dir.path().join(INDEX_FILE);
        std::os::unix::fs::symlink(other.path().join(INDEX_FILE), &path).unwrap();
        assert!(
            load(dir.path(), 2).records.is_empty(),
            "a symlink is followed"
        );
        // Writing replaces the link, never its target.
        store(dir.path(), &encode("%f", 0, std::iter::empty())).unwrap();
        assert!(!path.is_symlink());
        assert_eq!(load(other.path(), 2).records.len(), 2);
        fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        assert!(load(dir.path(), 2).records.is_empty());
        fs::remove_file(&path).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&path).status();
        assert!(made.unwrap().success());
        assert!(load(dir.path(), 2).records.is_empty());
        fs::remove_file(&path).unwrap();
        // Sparse: no disk blocks, no quota; its size is far beyond what 2 messages need.
        let f = fs::File::create(&path).unwrap();
        f.set_len(1 << 40).unwrap();
        assert!(load(dir.path(), 2).records.is_empty());
        // A large index is read when that many messages are listed.
        fs::write(&path, sample()).unwrap();
        assert_eq!(load(dir.path(), 2).records.len(), 2);
    }

    #[test]
    fn store_replaces_atomically_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        // A crashed writer's leftover, old enough to be removed.
        let stale = dir.path().join(format!("{TMP_PREFIX}1.2"));
        fs::write(&stale, b"half").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
        fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        store(dir.path(), &sample()).unwrap();
        assert_eq!(load(dir.path(), 2).records.len(), 2);
        // Readable by the server only, whatever the umask (here usually 022).
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path().join(INDEX_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        fs::write(dir.path().join(INDEX_FILE), b"garbage").unwrap();
        assert!(load(dir.path(), 2).records.is_empty());
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files left behind");
    }
}
