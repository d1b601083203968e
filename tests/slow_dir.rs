//! An NFS-like slow Maildir: directory reads of one user's Maildir take seconds. Listing runs
//! on the blocking pool, so that user's login waits, and only that user's: a session on the
//! same (single) executor goes on meanwhile. The slowness comes from a tiny LD_PRELOAD shim
//! (built here with the system C compiler) that delays `readdir64` for directories whose
//! path contains a marker.

mod common;

use common::{expected_wire, Fixture, Pop3Client, Server};
use std::process::Command;
use std::time::Duration;

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct dirent64 *readdir64(DIR *d) {
    static struct dirent64 *(*real)(DIR *);
    if (!real) real = (struct dirent64 *(*)(DIR *))dlsym(RTLD_NEXT, "readdir64");
    const char *mark = getenv("SLOW_DIR_MARK");
    const char *ms = getenv("SLOW_DIR_MS");
    if (mark && ms) {
        char link[64], path[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd(d));
        ssize_t n = readlink(link, path, sizeof path - 1);
        if (n > 0) {
            path[n] = 0;
            if (strstr(path, mark)) usleep(atoi(ms) * 1000);
        }
    }
    return real(d);
}
"#;

#[test]
fn a_slow_maildir_delays_only_its_own_login() {
    let mut fx = Fixture::new();
    fx.add_user("snail", "pw");
    fx.add_user("hare", "pw");
    let msg = b"Subject: hi\n\nbody\n";
    for k in 0..5 {
        fx.deliver("snail", "new", &format!("170000000{k}.M1P1.h"), msg);
        fx.deliver("hare", "new", &format!("170000000{k}.M1P1.h"), msg);
    }
    fx.config("");

    let so = fx.path().join("slowdir.so");
    let src = fx.path().join("slowdir.c");
    std::fs::write(&src, SHIM).unwrap();
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&so)
        .arg(&src)
        .arg("-ldl")
        .status()
        .expect("a C compiler (cc) is needed for this test");
    assert!(cc.success(), "building the readdir shim failed");
    // This test is alone in its binary: the environment is inherited by the server only.
    std::env::set_var("LD_PRELOAD", &so);
    std::env::set_var("SLOW_DIR_MARK", "/snail/");
    std::env::set_var("SLOW_DIR_MS", "400");
    let srv = Server::start(&fx, &[]);
    std::env::remove_var("LD_PRELOAD");

    // hare logs in (fast) and keeps its session.
    let mut hare = Pop3Client::connect(srv.addr);
    hare.login("hare", "pw");

    // snail's login lists a Maildir whose every readdir takes 400 ms (seconds in all).
    let addr = srv.addr;
    let (tx, rx) = std::sync::mpsc::channel();
    let snail = std::thread::spawn(move || {
        let mut c = Pop3Client::connect(addr);
        c.cmd("USER snail");
        let r = c.cmd("PASS pw");
        tx.send(()).unwrap();
        (c, r)
    });
    // While snail's listing is under way, hare's session on the same executor is served:
    // every command completes before snail's login does.
    std::thread::sleep(Duration::from_millis(200));
    for i in 1..=5 {
        let (st, body) = hare.multi(&format!("RETR {i}"));
        assert!(st.starts_with("+OK"), "{st}");
        assert_eq!(body, expected_wire(msg));
        assert!(hare.cmd("NOOP").starts_with("+OK"));
    }
    assert!(
        rx.try_recv().is_err(),
        "snail's login finished before hare's commands: the directory was not slow \
         (is the shim working?)"
    );
    assert!(hare.cmd("QUIT").starts_with("+OK"));
    let (mut c, r) = snail.join().unwrap();
    assert!(
        r.starts_with("+OK"),
        "the slow Maildir's own login still succeeds: {r}"
    );
    assert!(c.cmd("STAT").starts_with("+OK 5 "));
    c.cmd("QUIT");
}
