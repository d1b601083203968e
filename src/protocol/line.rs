//! Line framing for POP3 commands.
//!
//! Owns: splitting the client's byte stream into command lines. Lines end in CRLF; a bare LF
//! is tolerated (old clients and people typing into `nc`). A command line may be at most
//! [`MAX_LINE`] octets including the CRLF (RFC 2449 §4); a longer line is reported once as
//! [`Line::TooLong`] and the rest of it is discarded up to its LF, so a hostile client cannot
//! make the decoder buffer without bound.
//!
//! Exception: `AUTH` lines and the client's lines during a SASL exchange may be up to
//! [`MAX_SASL_LINE`] octets (RFC 5034 §4 exempts them from the 255-octet limit).
//!
//! Does not own: interpreting the line (see `command`), reading from sockets.

use super::sasl::MAX_SASL_LINE;

/// Longest command line accepted, including CRLF (RFC 2449 §4: 255 octets).
pub const MAX_LINE: usize = 255;

/// One framed line, without its line ending.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A complete line (CR LF or LF stripped).
    Complete(&'a [u8]),
    /// A line longer than [`MAX_LINE`]; its bytes were discarded.
    TooLong,
}

/// Incremental line decoder. Feed bytes with [`LineDecoder::push`], then take lines with
/// [`LineDecoder::next_line`] until it returns `None` (incomplete input is a state, not an error).
#[derive(Debug, Default)]
pub struct LineDecoder {
    buf: Vec<u8>,
    /// Start of unconsumed data in `buf`.
    start: usize,
    /// True while discarding the remainder of an over-long line.
    discarding: bool,
    /// True during a SASL exchange: every line may be up to [`MAX_SASL_LINE`] octets.
    sasl: bool,
}

/// Whether `line` (possibly incomplete) is an `AUTH` command with an argument, which may be
/// up to [`MAX_SASL_LINE`] octets long (RFC 5034 §4).
fn is_auth_line(line: &[u8]) -> bool {
    line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"AUTH ")
}

impl LineDecoder {
    /// A decoder with no buffered input (allocates nothing until input arrives).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes received from the client.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.buf.capacity() == 0 {
            self.buf = spare::take();
        }
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Number of buffered bytes not yet returned as lines.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Drops all buffered input (used after STLS: plaintext pipelined behind it is never run).
    pub fn clear(&mut self) {
        self.buf = Vec::new();
        self.start = 0;
        self.discarding = false;
    }

    /// During a SASL exchange, client responses may be up to [`MAX_SASL_LINE`] octets.
    pub fn set_sasl(&mut self, on: bool) {
        self.sasl = on;
    }

    fn limit(&self, line: &[u8]) -> usize {
        if self.sasl || is_auth_line(line) {
            MAX_SASL_LINE
        } else {
            MAX_LINE
        }
    }

    /// Gives the buffer back when it is empty (keeps idle sessions small): to this thread's
    /// spare buffers, where the next session that receives a command takes it from.
    pub fn shrink_if_idle(&mut self) {
        if self.buffered() == 0 && self.buf.capacity() > 0 {
            spare::give(std::mem::take(&mut self.buf));
            self.start = 0;
        }
    }

    /// The next complete line, or `None` when more input is needed.
    pub fn next_line(&mut self) -> Option<Line<'_>> {
        let pending = &self.buf[self.start..];
        match memchr::memchr(b'\n', pending) {
            Some(pos) => {
                let line_start = self.start;
                self.start += pos + 1;
                // The line has pos + 1 octets including its LF (and its CR, if any).
                let limit = self.limit(pending);
                if std::mem::take(&mut self.discarding) || pos + 1 > limit {
                    return Some(Line::TooLong);
                }
                let mut end = line_start + pos;
                if end > line_start && self.buf[end - 1] == b'\r' {
                    end -= 1;
                }
                Some(Line::Complete(&self.buf[line_start..end]))
            }
            None => {
                if pending.len() >= self.limit(pending) {
                    // No LF within the limit: the line is too long. Forget what we have and
                    // report it once its LF arrives.
                    self.discarding = true;
                    self.buf.clear();
                    self.start = 0;
                }
                None
            }
        }
    }
}

/// Spare line buffers, one list per thread (with one executor per core, per core): a
/// decoder takes one when input arrives and gives it back once it has consumed it, so a
/// session waiting for its next command holds none and a stream of commands on a busy core
/// allocates none. Longer buffers (long SASL lines) are freed.
mod spare {
    use super::super::spare::Spares;

    thread_local! {
        static LINES: Spares = const { Spares::new(64, 1024) };
    }

    pub fn take() -> Vec<u8> {
        LINES.with(Spares::take).unwrap_or_default()
    }

    pub fn give(mut buf: Vec<u8>) {
        buf.clear();
        LINES.with(|s| s.give(buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<Result<Vec<u8>, ()>> {
        let mut d = LineDecoder::new();
        d.push(input);
        let mut out = Vec::new();
        while let Some(l) = d.next_line() {
            out.push(match l {
                Line::Complete(b) => Ok(b.to_vec()),
                Line::TooLong => Err(()),
            });
        }
        out
    }

    #[test]
    fn crlf_and_bare_lf() {
        assert_eq!(
            lines(b"USER a\r\nPASS b\nNOOP"),
            vec![Ok(b"USER a".to_vec()), Ok(b"PASS b".to_vec())]
        );
    }

    #[test]
    fn empty_lines() {
        assert_eq!(lines(b"\r\n\n"), vec![Ok(vec![]), Ok(vec![])]);
    }

    #[test]
    fn limit_is_255_including_crlf() {
        let ok = [b"a".repeat(253), b"\r\n".to_vec()].concat();
        assert_eq!(lines(&ok), vec![Ok(b"a".repeat(253))]);
        let too_long = [b"a".repeat(254), b"\r\n".to_vec()].concat();
        assert_eq!(lines(&too_long), vec![Err(())]);
        // Bare LF: 254 octets of text + LF = 255 octets.
        let lf_ok = [b"a".repeat(254), b"\n".to_vec()].concat();
        assert_eq!(lines(&lf_ok), vec![Ok(b"a".repeat(254))]);
    }

    #[test]
    fn over_long_line_is_discarded_across_pushes() {
        let mut d = LineDecoder::new();
        for _ in 0..100 {
            d.push(&[b'x'; 512]);
            assert!(d.next_line().is_none());
            assert!(
                d.buffered() < 1024,
                "decoder must not buffer an over-long line"
            );
        }
        d.push(b"yyy\r\nNOOP\r\n");
        assert_eq!(d.next_line(), Some(Line::TooLong));
        assert_eq!(d.next_line(), Some(Line::Complete(b"NOOP")));
        assert_eq!(d.next_line(), None);
    }

    #[test]
    fn byte_at_a_time() {
        let mut d = LineDecoder::new();
        let mut got = Vec::new();
        for &b in b"STAT\r\nLIST 1\r\n" {
            d.push(&[b]);
            while let Some(Line::Complete(l)) = d.next_line() {
                got.push(l.to_vec());
            }
        }
        assert_eq!(got, vec![b"STAT".to_vec(), b"LIST 1".to_vec()]);
    }
}
