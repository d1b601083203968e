//! Read-only memory maps of message files: the crate's one home for `unsafe`.
//!
//! Owns: opening a message file and mapping it, and the safety argument for doing so.
//!
//! # Safety argument and residual risk
//! A mapping is only sound while nobody changes the file under it. Maildir guarantees this
//! by convention: deliveries are written to `tmp/` and renamed into `new/`, and a delivered
//! file is never modified in place (flag changes rename it; a rename or unlink does not
//! affect an existing mapping, which keeps the inode alive). The residual risk is an outside
//! process that truncates or rewrites a delivered file in place (a broken tool, an
//! administrator's editor): reading a truncated page raises SIGBUS. corepop never writes
//! message files, and the runtime only maps files under the Maildirs it serves.
//!
//! Empty files are not mapped (mapping zero bytes fails); they read as an empty slice.

use std::fs::File;
use std::io;
use std::path::Path;

/// Files up to this size are pre-faulted when mapped (MAP_POPULATE), so the first read on an
/// executor does not stall on a page fault. Larger ones get sequential read-ahead.
const POPULATE_LIMIT: u64 = 4 << 20;

/// Opens a message file for reading. Symbolic links are not followed (`O_NOFOLLOW`) and only
/// regular files are accepted (a FIFO cannot block the open: `O_NONBLOCK`): a user who can
/// write into their Maildir must not make the server read other files.
pub fn open_message(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Reads a whole message file (opened as [`open_message`] does), without mapping it.
pub fn read_message(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = open_message(path)?;
    let mut v = Vec::with_capacity(f.metadata()?.len() as usize);
    f.read_to_end(&mut v)?;
    Ok(v)
}

/// A message file mapped read-only.
#[derive(Debug)]
pub struct MappedFile {
    map: Option<memmap2::Mmap>,
}

impl MappedFile {
    /// Opens and maps `path`. The file descriptor is closed before returning; the mapping
    /// stays valid. Blocking: call it off the executor.
    ///
    /// Symbolic links are not followed (`O_NOFOLLOW`), and only regular files are mapped: a
    /// user who can write into their Maildir must not make the server read other files.
    pub fn open(path: &Path) -> io::Result<Self> {
        Self::from_file(&open_message(path)?)
    }

    /// Maps an open file.
    pub fn from_file(file: &File) -> io::Result<Self> {
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(Self { map: None });
        }
        let mut opts = memmap2::MmapOptions::new();
        if len <= POPULATE_LIMIT {
            opts.populate();
        }
        // SAFETY: the file is a delivered Maildir message, which by Maildir convention is never
        // modified in place (see the module docs for the residual risk of outside truncation).
        // The mapping is read-only and private to this process.
        let map = unsafe { opts.map(file)? };
        if len > POPULATE_LIMIT {
            let _ = map.advise(memmap2::Advice::Sequential);
            let _ = map.advise(memmap2::Advice::WillNeed);
        }
        Ok(Self { map: Some(map) })
    }

    /// Length of the mapping.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_and_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m");
        std::fs::write(&p, b"hello\n").unwrap();
        let m = MappedFile::open(&p).unwrap();
        // The mapping survives the unlink of its file (Maildir deletes while another reads).
        std::fs::remove_file(&p).unwrap();
        assert_eq!(m.bytes(), b"hello\n");
        std::fs::write(&p, b"").unwrap();
        assert_eq!(MappedFile::open(&p).unwrap().bytes(), b"");
        assert!(MappedFile::open(&dir.path().join("missing")).is_err());
        // Links and non-files are refused.
        std::fs::write(dir.path().join("target"), b"secret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("target"), dir.path().join("link")).unwrap();
        assert!(MappedFile::open(&dir.path().join("link")).is_err());
        assert!(MappedFile::open(dir.path()).is_err());
    }
}
