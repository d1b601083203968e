//! Dovecot passwd-file parsing: arbitrary bytes never panic; every parsed entry can be looked
//! up by its name, reports a scheme (or a scheme error) and user data without panicking.
//! Password verification is not fuzzed here (a stored bcrypt cost of 31 is slow by design,
//! and the file is the administrator's, not the peer's).
#![no_main]

use corepop::auth::{validate_username, PasswdFile, PasswdOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (flags, data) = data.split_first().unwrap_or((&0, data));
    let opts = PasswdOptions {
        lowercase_usernames: flags & 1 != 0,
        default_scheme: if flags & 2 != 0 { "CRYPT" } else { "PLAIN" }.to_string(),
        allow_weak_schemes: flags & 4 != 0,
    };
    let file = PasswdFile::parse_bytes(data, opts.clone(), None);
    let _ = file.warnings().len();
    let mut n = 0;
    for e in file.entries() {
        n += 1;
        let _ = e.scheme(&opts);
        let info = e.user_info();
        assert_eq!(info.user, e.user);
        let _ = e.has_password();
        let _ = e.nologin();
        if validate_username(&e.user).is_ok() {
            // Lookups of a listed name find an entry (perhaps an earlier duplicate).
            let key = if opts.lowercase_usernames {
                e.user.to_ascii_lowercase()
            } else {
                e.user.clone()
            };
            if key == e.user {
                assert!(file.lookup(&key).is_some(), "entry {:?} not found", e.user);
            }
        }
    }
    assert_eq!(n, file.len());
});
