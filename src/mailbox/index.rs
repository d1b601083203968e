//! The persistent per-Maildir size index, so a login reads only messages it has not seen.
//!
//! Owns: the file `corepop-index` in the Maildir's root, which records for each message base
//! name its size with CRLF line endings and its physical size, its format, and how it is
//! written and validated.
//!
//! Format (text, one record per line, so an operator can read it):
//! ```text
//! corepop-index 1
//! <base>\t<crlf size>\t<physical size>
//! ...
//! end <record count> <FNV-1a 64 of every preceding byte, hex>
//! ```
//! A file that is missing, truncated, has flipped bits (checksum), another version, or any
//! malformed line is ignored as a whole and rebuilt: a wrong size is never served. The file
//! is written to a temporary name and renamed into place (atomic), under the maildrop lock.
//! A failed write (disk full, permissions) is logged and the session goes on; the next login
//! tries again.
//!
//! Base names identify a delivered message for its whole life (Maildir files are never
//! modified after delivery; flag changes keep the base), so a recorded size stays true.
//!
//! Does not own: listing the Maildir or reading messages (see [`super::Snapshot`]).

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Name of the index file inside a Maildir.
pub const INDEX_FILE: &str = "corepop-index";
const MAGIC: &str = "corepop-index 1\n";

/// What the index knows about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub crlf_size: u64,
    pub size: u64,
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

/// Parses an index file's bytes; `None` if anything is wrong with it.
pub fn parse(bytes: &[u8]) -> Option<HashMap<String, Entry>> {
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
    let count: usize = count.parse().ok()?;
    let records = &body[..body.len() - trailer.len()];
    let mut map = HashMap::with_capacity(count);
    for line in records.lines() {
        let mut f = line.split('\t');
        let (Some(base), Some(crlf), Some(size), None) = (f.next(), f.next(), f.next(), f.next())
        else {
            return None;
        };
        let e = Entry {
            crlf_size: crlf.parse().ok()?,
            size: size.parse().ok()?,
        };
        if base.is_empty() || map.insert(base.to_owned(), e).is_some() {
            return None;
        }
    }
    (map.len() == count).then_some(map)
}

/// Reads the index of the Maildir at `root`; empty when missing or invalid.
pub fn load(root: &Path) -> HashMap<String, Entry> {
    match fs::read(root.join(INDEX_FILE)) {
        Ok(bytes) => parse(&bytes).unwrap_or_else(|| {
            tracing::warn!(dir = %root.display(), "index is invalid; rebuilding it");
            HashMap::new()
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => HashMap::new(),
        Err(e) => {
            tracing::warn!(dir = %root.display(), error = %e, "cannot read index; rebuilding it");
            HashMap::new()
        }
    }
}

/// Serialises `entries` (in the given order).
pub fn encode<'a>(entries: impl Iterator<Item = (&'a str, Entry)>) -> Vec<u8> {
    let mut out = Vec::from(MAGIC.as_bytes());
    let mut n = 0usize;
    for (base, e) in entries {
        debug_assert!(!base.contains(['\t', '\n']));
        out.extend_from_slice(base.as_bytes());
        out.push(b'\t');
        out.extend_from_slice(itoa::Buffer::new().format(e.crlf_size).as_bytes());
        out.push(b'\t');
        out.extend_from_slice(itoa::Buffer::new().format(e.size).as_bytes());
        out.push(b'\n');
        n += 1;
    }
    let sum = fnv1a(&out);
    out.extend_from_slice(format!("end {n} {sum:016x}\n").as_bytes());
    out
}

/// Writes the index atomically: a temporary file in the Maildir's root, then rename.
pub fn store(root: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = root.join(format!(
        "{INDEX_FILE}.tmp.{}.{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        fs::rename(&tmp, root.join(INDEX_FILE))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        encode(
            [
                (
                    "1700000001.M1P1.h",
                    Entry {
                        crlf_size: 23,
                        size: 20,
                    },
                ),
                (
                    "1700000002.M1P1.h",
                    Entry {
                        crlf_size: 5,
                        size: 5,
                    },
                ),
            ]
            .into_iter(),
        )
    }

    #[test]
    fn roundtrip() {
        let m = parse(&sample()).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(
            m["1700000001.M1P1.h"],
            Entry {
                crlf_size: 23,
                size: 20
            }
        );
        assert_eq!(parse(&encode(std::iter::empty())).unwrap().len(), 0);
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
            .replace("index 1", "index 2");
        assert!(parse(other_version.as_bytes()).is_none());
        assert!(parse(b"").is_none());
    }

    #[test]
    fn store_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), &sample()).unwrap();
        assert_eq!(load(dir.path()).len(), 2);
        fs::write(dir.path().join(INDEX_FILE), b"garbage").unwrap();
        assert!(load(dir.path()).is_empty());
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files left behind");
    }
}
