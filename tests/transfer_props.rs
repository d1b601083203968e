//! Property tests (proptest) for `TransferPlan`, the RETR/TOP wire form.
//!
//! For any message bytes and any output buffer size:
//! - un-stuffing the wire form gives back the CRLF-normalised input (a bare LF becomes CRLF,
//!   CRLF stays, a lone CR is data), plus one CRLF when the input does not end in LF;
//! - the wire form has no bare LF, no unstuffed line starting with ".", and ends with exactly
//!   one `.` CRLF terminator;
//! - `crlf_size` (what STAT/LIST report) equals the octets RETR sends before stuffing and
//!   terminator (not counting the CRLF added to a message without a final line ending);
//! - the zero-copy slice, when offered, is byte-identical to the streamed form;
//! - TOP n k is the CRLF-normalised prefix up to `top_end`;
//! - RETR's streaming transform gives the same bytes however the message is cut into the
//!   chunks that `pread` returns (a CR, LF or "." on either side of a cut, or of the 64-byte
//!   blocks its line-feed scan works in), and says it changed nothing exactly when the message
//!   was already wire form (what lets a later RETR send the stored bytes as they are).
//!
//! `PROPTEST_CASES=100000 cargo test --test transfer_props` runs longer.

use corepop::mailbox::transfer::{is_wire_clean, top_end};
use corepop::mailbox::{crlf_size, StreamTransform, TransferPlan, TERMINATOR};
use proptest::prelude::*;

#[path = "oracle/wire.rs"]
mod oracle;
use oracle::{normalise, unstuff};

fn stream(mut plan: TransferPlan<'_>, bufsize: usize) -> Vec<u8> {
    let mut buf = vec![0u8; bufsize];
    let mut wire = Vec::new();
    loop {
        let n = plan.fill(&mut buf);
        if n == 0 {
            return wire;
        }
        wire.extend_from_slice(&buf[..n]);
    }
}

/// RETR of `src` through a [`StreamTransform`] fed in pieces of the sizes in `cuts` (repeated),
/// terminator included.
fn retr_in_pieces(src: &[u8], cuts: &[usize]) -> (StreamTransform, Vec<u8>) {
    let mut t = StreamTransform::retr();
    let mut wire = Vec::new();
    let mut rest = src;
    for n in cuts.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, more) = rest.split_at((*n).min(rest.len()));
        t.push(chunk, &mut wire);
        rest = more;
    }
    t.finish(&mut wire);
    (t, wire)
}

/// Message-like bytes: lots of line endings, dots and CRs, some arbitrary bytes.
fn message() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b".".to_vec()),
        Just(b"..".to_vec()),
        Just(b"\n.\r\n".to_vec()),
        Just(b"Subject: x".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..20),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(2000)
    ))]

    #[test]
    fn retr_unstuffs_to_the_crlf_normalised_input(
        src in prop_oneof![message(), proptest::collection::vec(any::<u8>(), 0..300)],
        bufsize in 1usize..200,
    ) {
        let wire = stream(TransferPlan::retr(&src), bufsize);
        let mut want = normalise(&src);
        prop_assert_eq!(crlf_size(&src), want.len() as u64, "LIST size != RETR octets");
        if !src.is_empty() && !src.ends_with(b"\n") {
            want.extend_from_slice(b"\r\n");
        }
        let got = unstuff(&wire).map_err(TestCaseError::fail)?;
        prop_assert_eq!(got, want);
        if let Some(slice) = TransferPlan::retr(&src).as_slice() {
            prop_assert_eq!([slice, TERMINATOR].concat(), wire);
        }
    }

    #[test]
    fn retr_is_the_same_however_the_message_is_read(
        src in proptest::collection::vec(message(), 1..8).prop_map(|v| v.concat()),
        cuts in proptest::collection::vec(1usize..150, 1..20),
    ) {
        let whole = stream(TransferPlan::retr(&src), 4096);
        let (t, wire) = retr_in_pieces(&src, &cuts);
        prop_assert_eq!(t.consumed(), src.len() as u64);
        prop_assert_eq!(t.unaltered(), is_wire_clean(&src));
        if t.unaltered() {
            prop_assert_eq!(&wire, &[&src[..], TERMINATOR].concat());
        }
        prop_assert_eq!(wire, whole);
    }

    #[test]
    fn unaltered_exactly_when_already_wire_form(
        lines in proptest::collection::vec(
            ("[a-z .]{0,70}", prop_oneof![20 => Just("\r\n"), 1 => Just("\n"), 1 => Just("")]),
            0..30,
        ),
        cuts in proptest::collection::vec(1usize..200, 1..10),
    ) {
        let src: Vec<u8> = lines.iter().flat_map(|(t, e)| [t.as_bytes(), e.as_bytes()].concat()).collect();
        let (t, wire) = retr_in_pieces(&src, &cuts);
        prop_assert_eq!(t.unaltered(), is_wire_clean(&src));
        prop_assert_eq!(t.unaltered(), wire == [&src[..], TERMINATOR].concat());
    }

    #[test]
    fn top_is_the_normalised_prefix(src in message(), lines in 0u64..6, bufsize in 1usize..64) {
        let end = top_end(&src, lines);
        prop_assert!(end <= src.len());
        let wire = stream(TransferPlan::top(&src, lines), bufsize);
        let mut want = normalise(&src[..end]);
        if end > 0 && src[end - 1] != b'\n' {
            want.extend_from_slice(b"\r\n");
        }
        let got = unstuff(&wire).map_err(TestCaseError::fail)?;
        prop_assert_eq!(got, want);
    }
}
