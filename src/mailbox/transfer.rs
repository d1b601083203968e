//! Transfer plans: the stored bytes of a message turned into POP3 wire bytes.
//!
//! Owns: CRLF normalisation (a bare LF becomes CRLF, CRLF stays, a lone CR is data),
//! dot-stuffing (a line starting with "." gets one more), the CRLF added when the stored
//! message does not end in a line ending (not counted in the message's size, as in Dovecot),
//! the `.` CRLF terminator, TOP's cut (headers, the empty line, the first k body lines), and
//! the wire size of a stored message ([`crlf_size`]).
//!
//! A message that is already wire form (CRLF only, no line starting with ".", ends in CRLF)
//! needs no transformation: [`TransferPlan::as_slice`] returns the one slice of the source to
//! send as is, so RETR can go from the mapping to the socket with no copy. Otherwise
//! [`TransferPlan::fill`] streams the transformed bytes into a caller's buffer, chunk by chunk
//! (RETR finds line feeds with a SIMD mask per 64 bytes, TOP with memchr per line).
//!
//! It also recognises a stored message that is not mail text at all but a file compressed by
//! Dovecot's `zlib` (2.3) or `mail_compress` (2.4) plugin ([`stored_compressed`]), whose bytes
//! must never be sent as the message.
//!
//! Does not own: files, mappings or sockets; it works on any `&[u8]`.

/// The multi-line terminator.
pub const TERMINATOR: &[u8] = b".\r\n";

/// Bytes of a message's start that [`stored_compressed`] needs to see (Dovecot's LZ4 magic).
pub const COMPRESSION_MAGIC_LEN: usize = 15;

/// The compression format of a stored message whose first bytes are `head` (at least
/// [`COMPRESSION_MAGIC_LEN`] of them when the file is that long), recognised as Dovecot
/// recognises it when its compression plugin reads a mail: gzip (`1f 8b`), bzip2 (`BZh` and
/// a level digit), xz (`fd 37 7a 58 5a 00`, Dovecot before 2.3.19), Dovecot's own LZ4 header,
/// zstd (`28 b5 2f fd`). `None` for anything else, which is mail text: a message begins with
/// a header field, and none of these byte sequences can begin one. The maildir file names
/// of such messages carry the uncompressed sizes (`,S=`, `,W=`).
pub fn stored_compressed(head: &[u8]) -> Option<&'static str> {
    match head {
        [0x1f, 0x8b, ..] => Some("gzip"),
        [b'B', b'Z', b'h', b'1'..=b'9', ..] => Some("bzip2"),
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Some("xz"),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Some("zstd"),
        _ if head.starts_with(b"Dovecot-LZ4\x0d\x2a\x9b\xc5") => Some("lz4"),
        _ => None,
    }
}

/// Size in octets of `src` with CRLF line endings: its length plus one for each LF not preceded
/// by CR. This is what STAT and LIST report and what RETR sends before dot-stuffing.
pub fn crlf_size(src: &[u8]) -> u64 {
    let mut bare = 0u64;
    for p in memchr::memchr_iter(b'\n', src) {
        if p == 0 || src[p - 1] != b'\r' {
            bare += 1;
        }
    }
    src.len() as u64 + bare
}

/// Where a TOP command's output ends: after the header block and the empty line that ends it,
/// plus `lines` body lines. A message without an empty line is all headers.
pub fn top_end(src: &[u8], lines: u64) -> usize {
    let mut line_start = 0;
    let mut body_start = None;
    for p in memchr::memchr_iter(b'\n', src) {
        let line = &src[line_start..p];
        line_start = p + 1;
        if line.is_empty() || line == b"\r" {
            body_start = Some(line_start);
            break;
        }
    }
    let Some(body) = body_start else {
        return src.len();
    };
    if lines == 0 {
        return body;
    }
    let mut seen = 0u64;
    for p in memchr::memchr_iter(b'\n', &src[body..]) {
        seen += 1;
        if seen == lines {
            return body + p + 1;
        }
    }
    src.len()
}

/// True when `src` is already POP3 wire form: every LF preceded by CR, no line starting with
/// ".", and empty or ending in CRLF.
pub fn is_wire_clean(src: &[u8]) -> bool {
    if src.is_empty() {
        return true;
    }
    if src[0] == b'.' || src[src.len() - 1] != b'\n' {
        return false;
    }
    for p in memchr::memchr_iter(b'\n', src) {
        if p == 0 || src[p - 1] != b'\r' || src.get(p + 1) == Some(&b'.') {
            return false;
        }
    }
    true
}

/// The wire form of one whole in-memory message (or its TOP part), terminator included: the
/// slice to send as is when it is already wire form ([`TransferPlan::as_slice`]), otherwise
/// the bytes of a [`StreamTransform`] fed from the slice ([`TransferPlan::fill`]). The
/// transformation itself lives only in [`StreamTransform`].
#[derive(Debug)]
pub struct TransferPlan<'a> {
    src: &'a [u8],
    /// Next source byte to feed to the transform.
    pos: usize,
    clean: bool,
    stream: StreamTransform,
    /// Transformed bytes not yet handed out.
    staged: Vec<u8>,
    staged_pos: usize,
    finished: bool,
}

/// Source bytes transformed per step of [`TransferPlan::fill`].
const STEP: usize = 16 * 1024;

impl<'a> TransferPlan<'a> {
    /// The whole message, for RETR.
    pub fn retr(src: &'a [u8]) -> Self {
        Self::new(src)
    }

    /// Headers and the first `lines` body lines, for TOP.
    pub fn top(src: &'a [u8], lines: u64) -> Self {
        Self::new(&src[..top_end(src, lines)])
    }

    fn new(src: &'a [u8]) -> Self {
        Self {
            src,
            pos: 0,
            clean: is_wire_clean(src),
            stream: StreamTransform::retr(),
            staged: Vec::new(),
            staged_pos: 0,
            finished: false,
        }
    }

    /// When the message is already wire form: the slice to send as is, followed by
    /// [`TERMINATOR`]. `None` means use [`TransferPlan::fill`].
    pub fn as_slice(&self) -> Option<&'a [u8]> {
        self.clean.then_some(self.src)
    }

    /// The stored bytes this plan covers (TOP's cut applied).
    pub fn source(&self) -> &'a [u8] {
        self.src
    }

    /// Writes the next wire bytes (the terminator included, at the end) into `buf` and returns
    /// how many; 0 means the plan is finished.
    pub fn fill(&mut self, buf: &mut [u8]) -> usize {
        let mut w = 0;
        while w < buf.len() {
            if self.staged_pos < self.staged.len() {
                let n = (self.staged.len() - self.staged_pos).min(buf.len() - w);
                buf[w..w + n].copy_from_slice(&self.staged[self.staged_pos..self.staged_pos + n]);
                w += n;
                self.staged_pos += n;
                continue;
            }
            if self.finished {
                break;
            }
            self.staged.clear();
            self.staged_pos = 0;
            if self.pos < self.src.len() {
                let end = (self.pos + STEP).min(self.src.len());
                self.stream.push(&self.src[self.pos..end], &mut self.staged);
                self.pos = end;
            } else {
                self.stream.finish(&mut self.staged);
                self.finished = true;
            }
        }
        w
    }
}

/// POP3 wire form (see the module docs) produced from bytes that arrive in chunks (read with
/// `pread`, never through a mapping, so a file truncated by another process can only make a
/// read come up short, never raise SIGBUS). State that spans chunks (the byte before a LF,
/// whether a line has just begun, TOP's position) is carried between calls.
#[derive(Debug, Clone)]
pub struct StreamTransform {
    at_line_start: bool,
    last: Option<u8>,
    /// Bytes of the current line seen so far (for TOP's empty-line test).
    line_len: u64,
    top: Option<Top>,
    done: bool,
    consumed: u64,
    /// Something was inserted (a CR before a bare LF, a stuffing dot): the input so far
    /// was not already wire form.
    altered: bool,
}

#[derive(Debug, Clone, Copy)]
enum Top {
    Headers { lines: u64 },
    Body { left: u64 },
}

impl StreamTransform {
    /// The whole message (RETR).
    pub fn retr() -> Self {
        Self::new(None)
    }

    /// Headers, the empty line and `lines` body lines (TOP).
    pub fn top(lines: u64) -> Self {
        Self::new(Some(Top::Headers { lines }))
    }

    fn new(top: Option<Top>) -> Self {
        Self {
            at_line_start: true,
            last: None,
            line_len: 0,
            top,
            done: false,
            consumed: 0,
            altered: false,
        }
    }

    /// True when everything pushed so far was already wire form and ends a line (or nothing
    /// was pushed): the output is the input unchanged, [`StreamTransform::finish`] adds only
    /// the terminator. After a whole RETR this says the message can be sent as stored.
    pub fn unaltered(&self) -> bool {
        !self.altered && matches!(self.last, None | Some(b'\n'))
    }

    /// True once TOP has all it needs; further input is ignored.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Stored octets taken so far (TOP's cut applied).
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// Appends the wire form of the next `input` bytes to `out` (at most twice their size).
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        // One allocation up front instead of a doubling (and a copy of everything so far)
        // every few lines: room for a CR per 32 octets; very short lines may grow it once.
        out.reserve(input.len() + input.len() / 32 + 8 + WIDE);
        if self.top.is_none() {
            self.push_whole(input, out);
            return;
        }
        let mut start = 0;
        while start < input.len() && !self.done {
            if self.at_line_start {
                self.at_line_start = false;
                if input[start] == b'.' {
                    out.push(b'.');
                    self.altered = true;
                }
            }
            match memchr::memchr(b'\n', &input[start..]) {
                Some(i) => {
                    let lf = start + i;
                    out.extend_from_slice(&input[start..lf]);
                    let had_cr = if lf > 0 {
                        input[lf - 1] == b'\r'
                    } else {
                        self.last == Some(b'\r')
                    };
                    if !had_cr {
                        out.push(b'\r');
                        self.altered = true;
                    }
                    out.push(b'\n');
                    let line_len = self.line_len + i as u64;
                    let empty = line_len == 0 || (line_len == 1 && had_cr);
                    self.line_len = 0;
                    self.at_line_start = true;
                    start = lf + 1;
                    self.end_of_line(empty);
                }
                None => {
                    out.extend_from_slice(&input[start..]);
                    self.line_len += (input.len() - start) as u64;
                    start = input.len();
                }
            }
        }
        self.consumed += start as u64;
        if start > 0 {
            self.last = Some(input[start - 1]);
        }
    }

    /// [`StreamTransform::push`] for RETR, where no line needs counting: the line feeds are
    /// found 64 bytes at a time as a bit mask ([`lf_mask`]), and only the bytes around each
    /// one are looked at. A message's lines average ~60 bytes, so this replaces a `memchr`
    /// call per line (whose set-up dominates on short lines) with one mask per block, and
    /// each line is copied with one fixed-size copy ([`copy_line`]) instead of a `memcpy`
    /// call of its length.
    fn push_whole(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(&last) = input.last() else {
            return;
        };
        let mut altered = self.at_line_start && input[0] == b'.';
        if altered {
            out.push(b'.');
        }
        let cr_before_input = self.last == Some(b'\r');
        // Start of the bytes not yet copied to `out`.
        let mut copied = 0;
        for base in (0..input.len()).step_by(64) {
            let mut mask = match input.get(base..base + 64) {
                Some(block) => lf_mask(block.try_into().expect("64-byte block")),
                None => {
                    let mut block = [0u8; 64];
                    block[..input.len() - base].copy_from_slice(&input[base..]);
                    lf_mask(&block)
                }
            };
            while mask != 0 {
                let p = base + mask.trailing_zeros() as usize;
                mask &= mask - 1;
                // Every line goes out as its bytes up to its CR or LF, then CRLF. A CR
                // that ended the previous input went out with it; only the LF is left.
                if p == 0 && cr_before_input {
                    out.push(b'\n');
                } else {
                    let had_cr = p > 0 && input[p - 1] == b'\r';
                    copy_line(out, input, copied, p - usize::from(had_cr));
                    out.extend_from_slice(b"\r\n");
                    altered |= !had_cr;
                }
                copied = p + 1;
                if input.get(p + 1) == Some(&b'.') {
                    out.push(b'.');
                    altered = true;
                }
            }
        }
        out.extend_from_slice(&input[copied..]);
        self.altered |= altered;
        self.at_line_start = last == b'\n';
        self.last = Some(last);
        self.consumed += input.len() as u64;
    }

    fn end_of_line(&mut self, empty: bool) {
        self.top = match self.top {
            Some(Top::Headers { lines }) if empty => {
                if lines == 0 {
                    self.done = true;
                }
                Some(Top::Body { left: lines })
            }
            Some(Top::Body { left }) => {
                if left <= 1 {
                    self.done = true;
                }
                Some(Top::Body {
                    left: left.saturating_sub(1),
                })
            }
            other => other,
        };
    }

    /// Appends what ends the response: a CRLF if the last line had none, and the terminator.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if matches!(self.last, Some(b) if b != b'\n') {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(TERMINATOR);
    }
}

/// Lines up to this long are copied with one fixed-size copy (see [`copy_line`]): most mail
/// lines are shorter (RFC 5322 recommends at most 78 characters; base64 bodies use 76).
const WIDE: usize = 128;

/// Appends `input[from..to]` to `out`. When the input holds [`WIDE`] bytes from `from` and
/// `out` has room for them, it copies all of them and cuts `out` back: a copy of a constant
/// size compiles to a few vector moves, where a copy of a line's own length is a `memcpy`
/// call whose set-up costs more than a short line.
#[inline(always)]
fn copy_line(out: &mut Vec<u8>, input: &[u8], from: usize, to: usize) {
    let len = out.len();
    if to - from <= WIDE && from + WIDE <= input.len() && out.capacity() - len >= WIDE {
        out.extend_from_slice(&input[from..from + WIDE]);
        out.truncate(len + (to - from));
    } else {
        out.extend_from_slice(&input[from..to]);
    }
}

/// Bit i is set when `block[i]` is a line feed: 16 bytes per SIMD compare (SSE2 on x86-64,
/// NEON on aarch64, plain code elsewhere, all behind the safe `wide` API).
#[inline(always)]
fn lf_mask(block: &[u8; 64]) -> u64 {
    let lf = wide::u8x16::splat(b'\n');
    let mut mask = 0u64;
    for (k, lane) in block.chunks_exact(16).enumerate() {
        let lane: [u8; 16] = lane.try_into().expect("16-byte lane");
        let hits = wide::u8x16::new(lane).simd_eq(lf).to_bitmask();
        mask |= u64::from(hits) << (16 * k);
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressed_messages_are_recognised() {
        let gz = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
        assert_eq!(stored_compressed(&gz), Some("gzip"));
        assert_eq!(stored_compressed(b"BZh91AY&SY"), Some("bzip2"));
        assert_eq!(stored_compressed(b"\xfd7zXZ\x00\x00\x04"), Some("xz"));
        assert_eq!(
            stored_compressed(&[0x28, 0xb5, 0x2f, 0xfd, 0x24]),
            Some("zstd")
        );
        assert_eq!(
            stored_compressed(b"Dovecot-LZ4\x0d\x2a\x9b\xc5\x00\x01"),
            Some("lz4")
        );
        for text in [
            &b"Return-Path: <a@example.org>\r\n"[..],
            b"From: a\n\nbody",
            b"BZh: not a level digit\n",
            b"Dovecot-LZ4 is a header name here\n",
            b"\x1f",
            b"",
        ] {
            assert_eq!(stored_compressed(text), None, "{text:?}");
        }
    }

    /// Whole wire form (terminator included) through `fill` with a given buffer size.
    fn wire(plan: &mut TransferPlan<'_>, bufsize: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; bufsize];
        loop {
            let n = plan.fill(&mut buf);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    /// Reference implementation, written the slow obvious way.
    fn reference(src: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut start = 0;
        while start < src.len() {
            let end = src[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| start + i + 1);
            let line = &src[start..end.unwrap_or(src.len())];
            if line.first() == Some(&b'.') {
                out.push(b'.');
            }
            let body = line.strip_suffix(b"\n").unwrap_or(line);
            let body = if end.is_some() {
                body.strip_suffix(b"\r").unwrap_or(body)
            } else {
                body
            };
            out.extend_from_slice(body);
            out.extend_from_slice(b"\r\n");
            start = end.unwrap_or(src.len());
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    fn check(src: &[u8]) {
        let want = reference(src);
        for bufsize in [1, 2, 3, 7, 64, 4096, 65536] {
            assert_eq!(
                wire(&mut TransferPlan::retr(src), bufsize),
                want,
                "src {:?} bufsize {bufsize}",
                String::from_utf8_lossy(src)
            );
        }
        let plan = TransferPlan::retr(src);
        if let Some(slice) = plan.as_slice() {
            assert_eq!([slice, TERMINATOR].concat(), want);
        }
    }

    #[test]
    fn shapes() {
        let long = [b"X: ".to_vec(), b"y".repeat(5000), b"\n\nbody\n".to_vec()].concat();
        for src in [
            &b""[..],
            b"a\n",
            b"a\r\n",
            b"Subject: x\n\nbody\n",
            b"Subject: x\r\n\r\nbody\r\n",
            b"Subject: x\r\n\nmixed\r\nlines\n",
            b"Subject: x\n\n.hidden\n..two\n.\nend\n",
            b".starts with dot\r\n",
            b"no final newline",
            b"S: x\n\nno final newline",
            b"nul\0bytes\n\0\n",
            b"lone\rcr\n",
            b"ends with cr\r",
            b"\n\n\n",
            b"Header-only: yes\n",
            &long,
        ] {
            check(src);
        }
    }

    /// The streaming transform gives exactly TransferPlan's bytes, however the input is cut.
    fn stream(src: &[u8], top: Option<u64>, chunk: usize) -> (Vec<u8>, u64) {
        let mut t = match top {
            None => StreamTransform::retr(),
            Some(k) => StreamTransform::top(k),
        };
        let mut out = Vec::new();
        for c in src.chunks(chunk.max(1)) {
            t.push(c, &mut out);
            if t.is_done() {
                break;
            }
        }
        t.finish(&mut out);
        (out, t.consumed())
    }

    #[test]
    fn stream_transform_matches_transfer_plan() {
        let long = [b"X: ".to_vec(), b"y".repeat(5000), b"\n\nbody\n".to_vec()].concat();
        let srcs: Vec<&[u8]> = vec![
            b"",
            b"a\n",
            b"Subject: x\r\n\r\n.a\r\n..b\r\nc",
            b"Subject: x\n\n.hidden\n..two\n.\nend\n",
            b"S: x\r\n\nmixed\r\n\r\n\nlines\n",
            b"no final newline",
            b"lone\rcr\n\r\n\r",
            b"\n\n\n",
            b"Header-only: yes\n",
            b".\r\n",
            &long,
        ];
        for src in srcs {
            for chunk in [1, 2, 3, 5, 64, 1 << 20] {
                let (got, n) = stream(src, None, chunk);
                assert_eq!(
                    got,
                    wire(&mut TransferPlan::retr(src), 4096),
                    "{src:?} {chunk}"
                );
                assert_eq!(n, src.len() as u64);
                for k in [0, 1, 2, 7, u64::MAX] {
                    let (got, n) = stream(src, Some(k), chunk);
                    let plan = TransferPlan::top(src, k);
                    assert_eq!(
                        n,
                        plan.source().len() as u64,
                        "{src:?} top {k} chunk {chunk}"
                    );
                    assert_eq!(
                        got,
                        wire(&mut TransferPlan::top(src, k), 4096),
                        "{src:?} top {k}"
                    );
                }
            }
        }
    }

    #[test]
    fn clean_message_is_one_slice() {
        let src = b"Subject: a\r\n\r\nbody\r\n";
        let plan = TransferPlan::retr(src);
        assert_eq!(plan.as_slice(), Some(&src[..]));
        for src in [
            &b"Subject: a\n\nbody\n"[..],
            b"a\r\n.b\r\n",
            b"a\r\nb",
            b".\r\n",
        ] {
            assert!(TransferPlan::retr(src).as_slice().is_none());
        }
    }

    #[test]
    fn size_counts_crlf_not_added_terminator() {
        for (src, size) in [
            (&b""[..], 0),
            (b"a\n", 3),
            (b"a\r\n", 3),
            (b"a\nb\r\nc", 7),
            (b"\n", 2),
        ] {
            assert_eq!(crlf_size(src), size, "{:?}", String::from_utf8_lossy(src));
        }
        // The size equals the un-stuffed wire bytes when the message ends in a newline.
        let src = b"Subject: x\n\n.dot\nbody\n";
        let wire = reference(src);
        let unstuffed_len = wire.len() - TERMINATOR.len() - 1; // one stuffed dot
        assert_eq!(crlf_size(src), unstuffed_len as u64);
    }

    #[test]
    fn top_cuts() {
        let src = b"A: 1\nB: 2\n\nl1\nl2\nl3\n";
        assert_eq!(&src[..top_end(src, 0)], b"A: 1\nB: 2\n\n");
        assert_eq!(&src[..top_end(src, 2)], b"A: 1\nB: 2\n\nl1\nl2\n");
        assert_eq!(&src[..top_end(src, 99)], &src[..]);
        let crlf = b"A: 1\r\n\r\nl1\r\nl2\r\n";
        assert_eq!(&crlf[..top_end(crlf, 1)], b"A: 1\r\n\r\nl1\r\n");
        let headers_only = b"A: 1\nB: 2\n";
        assert_eq!(top_end(headers_only, 5), headers_only.len());
        let no_nl = b"A: 1\n\nlast";
        assert_eq!(top_end(no_nl, 5), no_nl.len());
        assert_eq!(
            wire(&mut TransferPlan::top(b"A: 1\n\n.x\ny\n", 1), 4096),
            b"A: 1\r\n\r\n..x\r\n.\r\n"
        );
    }
}
