//! Architecture rules enforced by a test: `protocol/` is sans-I/O and depends on nothing
//! else in the crate; only `runtime/` names glommio; `unsafe` lives only in its two homes.

use std::fs;
use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<(String, String)>) {
    for entry in fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push((p.display().to_string(), fs::read_to_string(&p).unwrap()));
        }
    }
}

fn src() -> Vec<(String, String)> {
    let mut v = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut v);
    v
}

/// Code lines only (comments dropped), so docs may mention what the code may not use.
fn code(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn protocol_uses_no_io() {
    let forbidden = [
        "glommio",
        "std::net",
        "std::fs",
        "std::io",
        "std::time",
        "std::thread",
        "std::process",
        "rustls",
        "memmap2",
        "libc",
        "socket2",
        "crate::mailbox",
        "crate::auth",
        "crate::runtime",
        "crate::config",
        "tracing",
    ];
    let mut checked = 0;
    for (path, text) in src() {
        if !path.contains("/src/protocol/") {
            continue;
        }
        checked += 1;
        let code = code(&text);
        for f in forbidden {
            assert!(
                !code.contains(f),
                "{path} uses {f}: protocol/ must stay sans-I/O"
            );
        }
    }
    assert!(checked >= 4, "protocol sources not found");
}

#[test]
fn only_runtime_names_glommio() {
    for (path, text) in src() {
        if path.contains("/src/runtime/") {
            continue;
        }
        assert!(
            !code(&text).contains("glommio"),
            "{path} names glommio outside runtime/"
        );
    }
}

#[test]
fn unsafe_only_in_its_homes() {
    let homes = ["/src/mailbox/map.rs", "/src/runtime/sys.rs"];
    for (path, text) in src() {
        let has_unsafe = code(&text).contains("unsafe ");
        if has_unsafe {
            assert!(
                homes.iter().any(|h| path.ends_with(h)),
                "{path} has unsafe code"
            );
        }
    }
}
