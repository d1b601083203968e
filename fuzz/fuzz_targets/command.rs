//! The command parser on arbitrary lines. Invariants: no panic; message numbers are never
//! zero; a parsed command, written back in canonical form, parses to the same command; the
//! keyword is case-insensitive.
#![no_main]

use corepop::protocol::command::{parse, Command};
use libfuzzer_sys::fuzz_target;

/// The canonical text of a command; `None` for commands this target does not know (the
/// enum grows, e.g. SASL `AUTH`).
fn canonical(c: &Command<'_>) -> Option<Vec<u8>> {
    Some(match c {
        Command::User(u) => format!("USER {u}").into_bytes(),
        Command::Pass(p) => [b"PASS ".as_slice(), p].concat(),
        Command::Apop { user, digest } => format!("APOP {user} {digest}").into_bytes(),
        Command::Capa => b"CAPA".to_vec(),
        Command::Stls => b"STLS".to_vec(),
        Command::Quit => b"QUIT".to_vec(),
        Command::Stat => b"STAT".to_vec(),
        Command::List(None) => b"LIST".to_vec(),
        Command::List(Some(n)) => format!("LIST {}", n.get()).into_bytes(),
        Command::Uidl(None) => b"UIDL".to_vec(),
        Command::Uidl(Some(n)) => format!("UIDL {}", n.get()).into_bytes(),
        Command::Retr(n) => format!("RETR {}", n.get()).into_bytes(),
        Command::Top(n, k) => format!("TOP {} {k}", n.get()).into_bytes(),
        Command::Dele(n) => format!("DELE {}", n.get()).into_bytes(),
        Command::Noop => b"NOOP".to_vec(),
        Command::Rset => b"RSET".to_vec(),
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

fuzz_target!(|line: &[u8]| {
    let Ok(cmd) = parse(line) else {
        return;
    };
    match &cmd {
        Command::List(Some(n)) | Command::Uidl(Some(n)) => assert!(n.get() > 0),
        Command::Retr(n) | Command::Dele(n) | Command::Top(n, _) => {
            assert!(n.get() > 0);
            assert_eq!(n.index() as u64, u64::from(n.get()) - 1);
        }
        Command::User(u) => assert!(!u.is_empty() && !u.contains(' ')),
        Command::Pass(p) => assert!(!p.is_empty()),
        _ => {}
    }
    let Some(text) = canonical(&cmd) else {
        return;
    };
    assert_eq!(
        parse(&text).as_ref(),
        Ok(&cmd),
        "canonical form {:?}",
        String::from_utf8_lossy(&text)
    );
    let lower: Vec<u8> = text.iter().map(u8::to_ascii_lowercase).collect();
    if let (Ok(a), Command::Capa | Command::Quit | Command::Stat | Command::Noop | Command::Rset) =
        (parse(&lower), &cmd)
    {
        assert_eq!(&a, &cmd);
    }
});
