//! Raw socket operations glommio 0.9 does not expose: the runtime's only `unsafe`.
//!
//! Owns: creating the listening sockets ourselves (SO_REUSEPORT, a large backlog, port 0
//! resolved once for all shards) and adopting them into glommio; a non-blocking vectored
//! `sendmsg` so a status line, a mapped message and the terminator leave in one system call;
//! and `shutdown(SHUT_RD)` to wake idle sessions at server shutdown.
//!
//! Every `unsafe` here only turns a descriptor that a live object owns into a borrowed or owned
//! handle; no memory is shared with the kernel beyond the duration of one call.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Listen backlog; glommio's own `bind` hard-codes 1024, too small for login floods.
pub const BACKLOG: i32 = 4096;

/// Creates `count` listening sockets on `addr` sharing the port through SO_REUSEPORT (the
/// kernel spreads connections across them). Port 0 is resolved by the first socket and used
/// for the rest. Returns the sockets and the address actually bound.
pub fn listeners(addr: SocketAddr, count: usize) -> io::Result<(Vec<OwnedFd>, SocketAddr)> {
    let mut bound = addr;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let s = Socket::new(
            Domain::for_address(bound),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        if bound.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.set_cloexec(true)?;
        s.bind(&bound.into())?;
        s.listen(BACKLOG)?;
        if bound.port() == 0 {
            bound = s
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("listener has no inet address"))?;
        }
        out.push(OwnedFd::from(s));
    }
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

/// Stops further reads on a connection: a pending read returns end-of-file.
pub fn shutdown_read(fd: RawFd) {
    // SAFETY: called only for descriptors of connections the caller's registry knows are open.
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = SockRef::from(&fd).shutdown(std::net::Shutdown::Read);
}
