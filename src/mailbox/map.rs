//! Read-only memory maps of message files, and reads that never wait for the disk: the
//! mailbox layer's one home for `unsafe`.
//!
//! Owns: opening a message file and mapping it, and the safety argument for doing so; and
//! the cache-only variants the serving core uses so that it never blocks on a cold disk
//! ([`open_message_cached`] and [`open_dir_cached`]: `openat2` with `RESOLVE_CACHED`;
//! [`read_at_cached`]: `preadv2` with `RWF_NOWAIT`). Either answers `WouldBlock` when the
//! kernel would have to wait for I/O, and the caller then does the same work with the
//! blocking calls on another thread.
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

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

/// Files up to this size are pre-faulted when mapped (MAP_POPULATE, on the blocking pool), so
/// the `sendmsg` on an executor that reads the mapping neither stalls on the disk nor takes
/// one page fault per page. Larger ones get sequential read-ahead.
const POPULATE_LIMIT: u64 = 64 << 20;

/// Opens a message file for reading. Symbolic links are not followed (`O_NOFOLLOW`) and only
/// regular files are accepted (a FIFO cannot block the open: `O_NONBLOCK`): a user who can
/// write into their Maildir must not make the server read other files. Also returns the
/// file's size (from the same `fstat` that checks its type).
pub fn open_message(path: &Path) -> io::Result<(File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    regular(file)
}

/// The regular file at `path`, opened as [`open_message`] opens messages (never through a
/// symbolic link, never a FIFO or device), if it is no larger than a control file of a
/// Maildir where `listed` messages were just listed can be: 1 KiB per message (a record is a
/// base name of at most 255 octets and a few fields) and at least 16 MiB (records of messages
/// removed since). For the files a user who can write into their Maildir could replace (the
/// index, `dovecot-uidlist`, `courierpop3dsizelist`): a link to `/dev/zero` or to another
/// user's file, a FIFO (a login that never ends) or a huge sparse file (memory for the whole
/// server) is refused (`InvalidData` when too large) and never read whole.
pub fn read_bounded(path: &Path, listed: usize) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let limit = (listed as u64).saturating_mul(1024).max(16 << 20);
    let (file, len) = open_message(path)?;
    let take = limit.saturating_add(1);
    let mut bytes = Vec::with_capacity(len.min(take) as usize);
    file.take(take).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {limit} octets", path.display()),
        ));
    }
    Ok(bytes)
}

/// `file` and its size, if it is a regular file.
fn regular(file: File) -> io::Result<(File, u64)> {
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    Ok((file, meta.len()))
}

fn not_regular() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "not a regular file")
}

/// [`open_message`] for a thread that must not wait for the disk: the path must resolve from
/// the kernel's dentry and inode caches alone (`openat2(2)` with `RESOLVE_CACHED`), else
/// `WouldBlock`. Kernels without `openat2` (or a seccomp filter that refuses it) also give
/// `WouldBlock`; every error means "use [`open_message`] on a blocking thread instead".
/// A relative `path` is resolved from `dir` (a handle from [`open_dir_cached`]), which
/// spares the lookup of every directory above it; an absolute one ignores `dir`.
/// Returns the file and its size.
pub fn open_message_cached(dir: Option<BorrowedFd<'_>>, path: &CStr) -> io::Result<(File, u64)> {
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
    regular(File::from(openat2_cached(dir, path, flags)?))
}

/// A handle (`O_PATH`) on the directory `path`, from the kernel's caches alone, to resolve
/// [`open_message_cached`]'s relative paths from. Errors as for [`open_message_cached`].
pub fn open_dir_cached(path: &CStr) -> io::Result<OwnedFd> {
    openat2_cached(
        None,
        path,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
    )
}

/// `openat2(dir or AT_FDCWD, path, flags, RESOLVE_CACHED)`; the errors that mean "not
/// possible without waiting or without `openat2`" become `WouldBlock`.
fn openat2_cached(dir: Option<BorrowedFd<'_>>, path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    /// `struct open_how` of linux/openat2.h (libc's is `non_exhaustive`).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: flags as u64,
        mode: 0,
        resolve: libc::RESOLVE_CACHED,
    };
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `path` is NUL-terminated and `how` has open_how's layout and size; both
    // outlive the call, and the kernel only reads them. `dirfd` is AT_FDCWD or a descriptor
    // borrowed for the duration of the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EAGAIN | libc::ENOSYS | libc::EPERM | libc::E2BIG | libc::EINVAL) => {
                io::ErrorKind::WouldBlock.into()
            }
            _ => e,
        });
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Reads into `buf` at `offset` only what the page cache already holds (`preadv2(2)` with
/// `RWF_NOWAIT`): `WouldBlock` when the read would wait for the disk. Like `pread`, it may
/// read less than asked; 0 is the end of the file.
pub fn read_at_cached(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: `iov` describes `buf`, which is writable for its whole length and borrowed
    // mutably for the duration of the call; the descriptor is owned by `file`.
    let n = unsafe {
        libc::preadv2(
            file.as_raw_fd(),
            &iov,
            1,
            offset as libc::off_t,
            libc::RWF_NOWAIT,
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::ENOSYS | libc::EPERM) => {
                io::ErrorKind::WouldBlock.into()
            }
            _ => e,
        });
    }
    Ok(n as usize)
}

/// Reads a whole message file (opened as [`open_message`] does), without mapping it.
pub fn read_message(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let (mut f, len) = open_message(path)?;
    let mut v = Vec::with_capacity(len as usize);
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
        let (file, len) = open_message(path)?;
        Self::from_file(&file, len)
    }

    /// Maps an open file of `len` octets (its size when opened, see [`open_message`]).
    pub fn from_file(file: &File, len: u64) -> io::Result<Self> {
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
