//! Black-box RFC conformance suite (RFC 1939, RFC 2449, RFC 3206, RFC 1957).
//!
//! The suite itself is `tests/conformance/pop3_conformance.py` (Python 3.11, standard library
//! only). It builds its own passwd-file and Maildir fixture in a temporary directory, starts the
//! corepop binary built by Cargo on 127.0.0.1 with an ephemeral port, talks POP3 to it over real
//! sockets, and stops it again. This wrapper only runs it and reports its output.

use std::process::Command;

#[test]
fn rfc_conformance() {
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    let output = Command::new("python3")
        .arg("tests/conformance/pop3_conformance.py")
        .arg("--bin")
        .arg(env!("CARGO_BIN_EXE_corepop"))
        .current_dir(manifest_dir)
        .output()
        .expect("could not run python3 (is Python 3.11 installed?)");

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    eprint!("{stderr}");

    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.ends_with(" failed") && l.contains(" passed, "))
        .unwrap_or("no summary line");
    assert!(
        output.status.success(),
        "POP3 conformance suite failed ({summary}); exit status {:?}",
        output.status
    );
}
