//! The POP3 wire form, written the slow and obvious way: the oracle that the proptest suite
//! (`tests/transfer_props.rs`) and the `transfer` fuzz target (`fuzz/fuzz_targets/transfer.rs`,
//! which includes this file by path) check `TransferPlan` against.

use corepop::mailbox::TERMINATOR;

/// The message with every bare LF turned into CRLF (an existing CRLF is kept, a lone CR is data).
pub fn normalise(src: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(src.len() + 16);
    for (i, &b) in src.iter().enumerate() {
        if b == b'\n' && (i == 0 || src[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// Checks the wire form's shape (every line ends in CRLF, every line starting with `.` is
/// stuffed, exactly one terminator at the end) and returns it un-stuffed, without the
/// terminator.
pub fn unstuff(wire: &[u8]) -> Result<Vec<u8>, String> {
    if !(wire == TERMINATOR || wire.ends_with(b"\r\n.\r\n")) {
        return Err("no terminator".into());
    }
    let body = &wire[..wire.len() - TERMINATOR.len()];
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        if !line.ends_with(b"\r\n") {
            return Err(format!("line without CRLF: {line:?}"));
        }
        match line.strip_prefix(b".") {
            Some(rest) if rest.starts_with(b".") => out.extend_from_slice(rest),
            // A lone "." line would be a terminator inside the body.
            Some(_) => return Err(format!("unstuffed dot line {line:?}")),
            None => out.extend_from_slice(line),
        }
    }
    Ok(out)
}
