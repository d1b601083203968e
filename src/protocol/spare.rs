//! Per-thread lists of spare byte buffers.
//!
//! Owns: [`Spares`], a bounded list of buffers that code gives back when it is done with one
//! and takes from before allocating a new one. Kept per thread (`thread_local!`), so with
//! one executor per core a list is one core's and needs no lock. The line decoder keeps its
//! buffers in one ([`super::line`]); the runtime keeps its reply and message-body buffers in
//! others, and the load generator its receive buffers. A stream of commands and retrievals
//! then reuses a few buffers instead of allocating for every command, and a connection that
//! waits for its client holds none.

use std::cell::RefCell;

/// A bounded list of spare buffers (see the module docs).
#[derive(Debug)]
pub struct Spares {
    list: RefCell<Vec<Vec<u8>>>,
    /// Most buffers kept; more are freed.
    keep: usize,
    /// Largest capacity kept; larger buffers are freed.
    largest: usize,
}

impl Spares {
    /// An empty list keeping at most `keep` buffers of at most `largest` bytes of capacity.
    pub const fn new(keep: usize, largest: usize) -> Self {
        Self {
            list: RefCell::new(Vec::new()),
            keep,
            largest,
        }
    }

    /// A spare buffer as it was given back (length and contents included), if there is one.
    pub fn take(&self) -> Option<Vec<u8>> {
        self.list.borrow_mut().pop()
    }

    /// Keeps `buf` for a later [`Spares::take`], unless it has no capacity, more than the
    /// largest kept, or the list is full.
    pub fn give(&self, buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > self.largest {
            return;
        }
        let mut list = self.list.borrow_mut();
        if list.len() < self.keep {
            list.push(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_bounded_number_of_bounded_buffers() {
        let s = Spares::new(2, 100);
        s.give(Vec::new());
        s.give(Vec::with_capacity(101));
        assert!(
            s.take().is_none(),
            "empty and oversized buffers are not kept"
        );
        s.give(vec![7; 3]);
        s.give(Vec::with_capacity(10));
        s.give(Vec::with_capacity(20));
        let a = s.take().unwrap();
        let b = s.take().unwrap();
        assert!(s.take().is_none(), "only two kept");
        assert_eq!(b, vec![7; 3], "given back as it was");
        assert!(a.capacity() >= 10 && a.is_empty());
    }
}
