//! TransferPlan (RETR/TOP wire form) on arbitrary message bytes and arbitrary output buffer
//! sizes. Invariants: un-stuffing the wire form gives back the CRLF-normalised message (plus
//! the CRLF added to a message without a final line ending); the wire form has no bare LF and
//! ends in exactly one terminator; the size LIST reports (`crlf_size`) is what RETR sends
//! before stuffing; the zero-copy path, when offered, is byte-identical to the streamed one;
//! a streamed RETR fed in pieces that says it changed nothing (which makes later RETRs send
//! the stored bytes as they are) really sent the message unchanged.
#![no_main]

use corepop::mailbox::transfer::{is_wire_clean, top_end};
use corepop::mailbox::{crlf_size, StreamTransform, TransferPlan, TERMINATOR};
use libfuzzer_sys::fuzz_target;

/// The same oracle as the proptest suite's.
#[path = "../../tests/oracle/wire.rs"]
mod oracle;
use oracle::normalise;

/// [`oracle::unstuff`], failing the run on a malformed wire form.
fn unstuff(wire: &[u8]) -> Vec<u8> {
    oracle::unstuff(wire).unwrap_or_else(|e| panic!("{e}"))
}

fn run(mut plan: TransferPlan<'_>, bufsize: usize) -> Vec<u8> {
    let mut buf = vec![0u8; bufsize];
    let mut wire = Vec::new();
    loop {
        let n = plan.fill(&mut buf);
        if n == 0 {
            break;
        }
        wire.extend_from_slice(&buf[..n]);
        assert!(wire.len() <= 4 * plan.source().len() + 16, "runaway output");
    }
    assert_eq!(plan.fill(&mut buf), 0, "plan restarted after its end");
    wire
}

fuzz_target!(|data: &[u8]| {
    let Some((&b0, rest)) = data.split_first() else {
        return;
    };
    let Some((&b1, src)) = rest.split_first() else {
        return;
    };
    let bufsize = usize::from(b0) % 64 + 1;
    let lines = u64::from(b1 % 8);

    let wire = run(TransferPlan::retr(src), bufsize);
    let mut want = normalise(src);
    assert_eq!(
        crlf_size(src),
        want.len() as u64,
        "LIST size differs from RETR octets"
    );
    if !src.is_empty() && !src.ends_with(b"\n") {
        want.extend_from_slice(b"\r\n");
    }
    assert_eq!(unstuff(&wire), want);
    let plan = TransferPlan::retr(src);
    if let Some(slice) = plan.as_slice() {
        assert_eq!([slice, TERMINATOR].concat(), wire, "zero-copy path differs");
    }

    let mut t = StreamTransform::retr();
    let mut streamed = Vec::new();
    for piece in src.chunks(bufsize) {
        t.push(piece, &mut streamed);
    }
    t.finish(&mut streamed);
    assert_eq!(streamed, wire, "pieces differ from the plan");
    assert_eq!(t.unaltered(), is_wire_clean(src), "unaltered() is wrong");
    if t.unaltered() {
        assert_eq!([src, TERMINATOR].concat(), wire, "unaltered, yet changed");
    }

    let end = top_end(src, lines);
    assert!(end <= src.len());
    let top = run(TransferPlan::top(src, lines), bufsize);
    let mut want_top = normalise(&src[..end]);
    if end > 0 && src[end - 1] != b'\n' {
        want_top.extend_from_slice(b"\r\n");
    }
    assert_eq!(unstuff(&top), want_top);
});
