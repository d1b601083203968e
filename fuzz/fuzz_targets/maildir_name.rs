//! Maildir file names: `MaildirName::parse`, the delivery-order key and the UIDL derived from
//! the base name. Invariants: the base is the non-empty part before the first `:`, flags come
//! from `:2,`, and the UIDL is always a valid RFC 1939 UIDL and stable.
#![no_main]

use corepop::mailbox::name::{uidl_for_base, valid_uidl, MaildirName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Some(n) = MaildirName::parse(s) else {
        assert!(s.is_empty() || s.starts_with('.') || s.starts_with(':'));
        return;
    };
    assert!(!n.base.is_empty());
    assert!(!n.base.contains(':'));
    assert!(s.starts_with(n.base));
    if let Some(flags) = n.flags {
        assert_eq!(&s[n.base.len()..n.base.len() + 3], ":2,");
        assert!(s.ends_with(flags));
    }
    let (_, _, base) = n.order_key();
    assert_eq!(base, n.base);
    let uidl = uidl_for_base(n.base);
    assert!(valid_uidl(&uidl), "invalid UIDL {uidl:?} for {s:?}");
    assert_eq!(uidl, uidl_for_base(n.base), "UIDL not stable");
    // The same base with other flags keeps its UIDL (flag changes rename the file).
    let renamed = format!("{}:2,S", n.base);
    let again = MaildirName::parse(&renamed).expect("renamed name parses");
    assert_eq!(again.base, n.base);
});
