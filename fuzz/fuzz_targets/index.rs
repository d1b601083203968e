//! The per-Maildir index (`corepop-index`): arbitrary bytes must parse or be refused without
//! panicking, and whatever parses must re-encode to bytes that parse to the same records, so
//! rewriting an index never changes a size or a UIDL.
//!
//! Written against `mailbox::index`'s public API only (`parse`, `encode`, `Loaded`, `Record`).
#![no_main]

use corepop::mailbox::index::{encode, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(loaded) = parse(data) else {
        return;
    };
    let mut records: Vec<_> = loaded.records.iter().collect();
    records.sort_by(|a, b| a.0.cmp(b.0));
    let bytes = encode(
        &loaded.format,
        loaded.uidvalidity,
        records.iter().map(|(k, r)| (k.as_str(), *r)),
    );
    let back = parse(&bytes).expect("a re-encoded index must parse");
    assert_eq!(back.format, loaded.format);
    assert_eq!(back.uidvalidity, loaded.uidvalidity);
    assert_eq!(back.records, loaded.records);
    // Encoding is canonical: the same records give the same bytes.
    let again = encode(
        &back.format,
        back.uidvalidity,
        records
            .iter()
            .map(|(k, _)| (k.as_str(), &back.records[k.as_str()])),
    );
    assert_eq!(again, bytes);
});
