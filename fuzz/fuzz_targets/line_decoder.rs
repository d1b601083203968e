//! The command-line decoder, fed arbitrary bytes in arbitrary chunks. Invariants: the same
//! lines come out whatever the chunking; no line holds a LF or exceeds its limit (RFC 2449's
//! 255 octets, or RFC 5034's longer limit for an `AUTH` line); the decoder never buffers much
//! more than one line (a hostile client cannot grow it).
#![no_main]

use corepop::protocol::{Line, LineDecoder, MAX_LINE, MAX_SASL_LINE};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq)]
enum Got {
    Line(Vec<u8>),
    TooLong,
}

fn drain(d: &mut LineDecoder, out: &mut Vec<Got>) {
    while let Some(l) = d.next_line() {
        out.push(match l {
            Line::Complete(b) => {
                assert!(!b.contains(&b'\n'), "LF inside a line");
                // The limit counts the line ending, which `b` no longer holds.
                let auth = b.len() >= 5 && b[..5].eq_ignore_ascii_case(b"AUTH ");
                let limit = if auth { MAX_SASL_LINE } else { MAX_LINE };
                assert!(b.len() < limit, "line of {} octets (auth: {auth})", b.len());
                Got::Line(b.to_vec())
            }
            Line::TooLong => Got::TooLong,
        });
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // The first bytes choose chunk sizes; the rest is the stream.
    let (sizes, stream) = data.split_at(data.len().min(8));
    let mut whole = LineDecoder::new();
    whole.push(stream);
    let mut want = Vec::new();
    drain(&mut whole, &mut want);

    let mut chunked = LineDecoder::new();
    let mut got = Vec::new();
    let mut rest = stream;
    let mut i = 0;
    while !rest.is_empty() {
        let n = (sizes[i % sizes.len()] as usize % 300 + 1).min(rest.len());
        i += 1;
        chunked.push(&rest[..n]);
        rest = &rest[n..];
        drain(&mut chunked, &mut got);
        assert!(
            chunked.buffered() <= MAX_SASL_LINE + 300,
            "decoder holds {} octets",
            chunked.buffered()
        );
        if i % 7 == 0 {
            chunked.shrink_if_idle();
        }
    }
    // Chunking may only differ in when an over-long line is detected, never in the lines.
    let lines = |v: &[Got]| {
        v.iter()
            .filter_map(|g| match g {
                Got::Line(l) => Some(l.clone()),
                Got::TooLong => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(lines(&got), lines(&want));
    assert_eq!(
        got.len(),
        want.len(),
        "same number of lines and over-long lines"
    );
    chunked.clear();
    assert_eq!(chunked.buffered(), 0);
    assert!(chunked.next_line().is_none());
});
