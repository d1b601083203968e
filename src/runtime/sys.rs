//! Raw socket operations glommio 0.9 does not expose: the runtime's only `unsafe`.
//!
//! Owns: creating the listening sockets ourselves (one per address, shared by all executors, a
//! large backlog) and adopting them into glommio; a non-blocking vectored
//! `sendmsg` so a status line and a message's first chunk leave in one system call; a
//! non-blocking `sendfile` for messages sent as stored; `shutdown(SHUT_RD)` to wake idle
//! sessions at server shutdown; and the thread id and `tgkill` the watchdog uses to interrupt
//! an executor's thread.
//!
//! Every `unsafe` here is a plain system call or turns a descriptor that a live object owns
//! into a borrowed or owned handle; no memory is shared with the kernel beyond the duration of
//! one call.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Listen backlog; glommio's own `bind` hard-codes 1024, too small for login floods.
pub const BACKLOG: i32 = 4096;

/// Creates the listening socket on `addr` and returns `count` descriptors of it, one per
/// executor: all executors accept from the one queue (`balance` spreads the connections),
/// rather than each from its own SO_REUSEPORT socket, where the kernel's hash would fix the
/// executor at arrival. SO_REUSEPORT is still set, so another process (a second instance,
/// or the new one during a restart) can bind the same port. Port 0 is resolved by the bind.
/// Returns the descriptors and the address actually bound.
pub fn listeners(addr: SocketAddr, count: usize) -> io::Result<(Vec<OwnedFd>, SocketAddr)> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_cloexec(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    let bound = s
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("listener has no inet address"))?;
    let fd = OwnedFd::from(s);
    let mut out = Vec::with_capacity(count.max(1));
    for _ in 1..count {
        out.push(dup(&fd)?);
    }
    out.push(fd);
    Ok((out, bound))
}

/// Hands a listening socket to glommio on the current executor.
pub fn adopt_listener(fd: OwnedFd) -> glommio::net::TcpListener {
    // SAFETY: `fd` is an owned, open, listening TCP socket; ownership moves into the listener,
    // which closes it on drop.
    unsafe { glommio::net::TcpListener::from_raw_fd(fd.into_raw_fd()) }
}

fn sock<T: AsRawFd>(s: &T) -> BorrowedFd<'_> {
    // SAFETY: the descriptor belongs to `s`, which outlives the returned borrow.
    unsafe { BorrowedFd::borrow_raw(s.as_raw_fd()) }
}

/// One non-blocking `sendmsg` of `bufs`; `WouldBlock` when the socket buffer is full.
pub fn send_vectored<T: AsRawFd>(s: &T, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let fd = sock(s);
    SockRef::from(&fd).send_vectored_with_flags(bufs, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// One `sendfile` of up to `count` bytes of `file` from `offset` to the socket, without
/// waiting: `WouldBlock` when the socket buffer is full. `sendfile` takes no `MSG_DONTWAIT`,
/// so the socket is non-blocking for the length of the call (glommio keeps it blocking and
/// has nothing of its own in flight on it while a connection's task runs this). The pages
/// go from the page cache to the socket without a copy in user space.
pub fn sendfile<T: AsRawFd>(
    s: &T,
    file: &std::fs::File,
    offset: u64,
    count: usize,
) -> io::Result<usize> {
    let fd = s.as_raw_fd();
    let mut off = libc::off_t::try_from(offset).map_err(io::Error::other)?;
    // SAFETY: plain fcntl/sendfile calls on descriptors that `s` and `file` own for the
    // duration of this call; `off` is a local the kernel writes back.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::sendfile(fd, file.as_raw_fd(), &mut off, count);
        let err = io::Error::last_os_error();
        libc::fcntl(fd, libc::F_SETFL, flags);
        if n < 0 {
            Err(err)
        } else {
            Ok(n as usize)
        }
    }
}

/// Stops further reads on a connection: a pending read returns end-of-file.
pub fn shutdown_read(fd: RawFd) {
    // SAFETY: called only for descriptors of connections the caller's registry knows are open.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = SockRef::from(&fd).shutdown(std::net::Shutdown::Read);
}

// ---------------------------------------------------------------------------------------------
// systemd: socket activation and readiness notification
// ---------------------------------------------------------------------------------------------

/// A listening socket passed by systemd (`LISTEN_FDS`), with its `FileDescriptorName=`.
pub struct Inherited {
    pub fd: OwnedFd,
    pub name: String,
    pub addr: SocketAddr,
}

/// Takes the listening sockets systemd passed (`LISTEN_PID` = us, `LISTEN_FDS` = n, fds 3…),
/// and clears the variables so no child inherits them. Empty without socket activation.
pub fn take_listen_fds() -> io::Result<Vec<Inherited>> {
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|s| s.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    if !pid_ok || n <= 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for i in 0..n {
        let raw = 3 + i;
        // SAFETY: systemd's socket-activation protocol hands us descriptors 3..3+LISTEN_FDS,
        // open and owned by this process; nothing else in the process claims them (the
        // variables are checked against our pid and removed above, so this runs once).
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let s = Socket::from(fd);
        s.set_cloexec(true)?;
        if !s.is_listener()? || s.r#type()? != Type::STREAM {
            return Err(io::Error::other(format!(
                "descriptor {raw} from systemd is not a listening stream socket"
            )));
        }
        let addr = s
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other(format!("descriptor {raw} is not an inet socket")))?;
        out.push(Inherited {
            fd: OwnedFd::from(s),
            name: names.get(i as usize).cloned().unwrap_or_default(),
            addr,
        });
    }
    Ok(out)
}

/// A duplicate of a listening socket, so each shard can own one handle to it.
pub fn dup(fd: &OwnedFd) -> io::Result<OwnedFd> {
    fd.try_clone()
}

/// `CLOCK_MONOTONIC` in microseconds (for `MONOTONIC_USEC=` in `RELOADING=1`).
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if r != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// Sends `state` (e.g. `READY=1`) to systemd's notification socket if `NOTIFY_SOCKET` is set.
/// Errors are ignored: without systemd this does nothing.
pub fn sd_notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let addr = match bytes.strip_prefix(b"@") {
        Some(abs) => UnixAddr::from_abstract_name(abs),
        None => UnixAddr::from_pathname(std::path::Path::new(&path)),
    };
    let Ok(addr) = addr else { return };
    if let Ok(sock) = UnixDatagram::unbound() {
        if let Err(e) = sock.send_to_addr(state.as_bytes(), &addr) {
            tracing::debug!(error = %e, "sd_notify failed");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Privilege drop
// ---------------------------------------------------------------------------------------------

/// A system account: name, uid, primary gid, home.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Looks up a user by name or numeric id (NSS, like `id(1)`).
pub fn lookup_user(name: &str) -> io::Result<Account> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero `passwd` is a valid value of this plain C struct.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let cname = std::ffi::CString::new(name).map_err(|_| io::Error::other("NUL in user name"))?;
    // SAFETY: every pointer is valid for the call; getpwnam_r writes strings into `buf` only,
    // and `pw`'s pointers are read before `buf` is dropped.
    let r = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if r == 0 && !result.is_null() {
        return Ok(Account {
            name: name.to_owned(),
            uid: pw.pw_uid,
            gid: pw.pw_gid,
        });
    }
    if let Ok(uid) = name.parse::<u32>() {
        return Ok(Account {
            name: name.to_owned(),
            uid,
            gid: uid,
        });
    }
    Err(io::Error::other(format!("no such user: {name}")))
}

/// Looks up a group id by name or number.
pub fn lookup_group(name: &str) -> io::Result<u32> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero `group` is a valid value of this plain C struct.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    let cname = std::ffi::CString::new(name).map_err(|_| io::Error::other("NUL in group name"))?;
    // SAFETY: as in `lookup_user`.
    let r = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut gr,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if r == 0 && !result.is_null() {
        return Ok(gr.gr_gid);
    }
    name.parse::<u32>()
        .map_err(|_| io::Error::other(format!("no such group: {name}")))
}

/// The effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Switches the whole process to `uid`/`gid` with no supplementary groups but `gid`, for
/// good (real, effective and saved ids). Must run before any thread is started, so every
/// thread glommio creates inherits the new credentials. Verifies that root cannot be regained.
pub fn drop_privileges(uid: u32, gid: u32) -> io::Result<()> {
    let groups = [gid as libc::gid_t];
    // SAFETY: plain system calls with a valid one-element array.
    unsafe {
        if libc::setgroups(1, groups.as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::setresuid(uid, uid, uid) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    if uid != 0 {
        // SAFETY: as above; this call must fail now.
        let regained = unsafe { libc::setuid(0) } == 0;
        if regained {
            return Err(io::Error::other(
                "could regain root after dropping privileges",
            ));
        }
    }
    // glommio's io_uring setup and our own operations need nothing more.
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Threads: waking an executor's thread (runtime/watchdog.rs)
// ---------------------------------------------------------------------------------------------

/// The calling thread's kernel id.
pub fn thread_id() -> i32 {
    // SAFETY: gettid(2) has no arguments and cannot fail.
    unsafe { libc::gettid() }
}

/// Sends `signal` to thread `tid` of this process (tgkill(2)): a thread of another process
/// that happens to reuse the id is never hit.
pub fn signal_thread(tid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: tgkill takes plain integers; the process id restricts it to our own threads.
    let r = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid() as libc::c_long,
            tid as libc::c_long,
            signal as libc::c_long,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
