//! A private Dovecot POP3 instance as a *reference* server for the interop tests.
//!
//! Used only when `COREPOP_INTEROP_SERVER=dovecot` is set (needs Debian's `dovecot-pop3d` and
//! root): the same client checks then run against Dovecot, which shows whether a failure is
//! corepop's or the test's. The instance listens on 127.0.0.1 only, keeps all of its state in
//! a temporary directory and serves the fixture's passwd file and Maildirs. Its mail processes
//! run as the `dovecot` user (Dovecot refuses uid 0), so the fixture directory is chowned to it.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::Fixture;

pub struct Dovecot {
    pub addr: SocketAddr,
    child: Child,
    run: tempfile::TempDir,
}

impl Dovecot {
    pub fn start(fx: &Fixture) -> Dovecot {
        Self::start_with(fx, "pop3_uidl_format = %f\n")
    }

    /// Like [`Dovecot::start`], with `settings` (dovecot.conf lines) instead of the
    /// `pop3_uidl_format = %f` line; empty settings leave Dovecot's defaults.
    pub fn start_with(fx: &Fixture, settings: &str) -> Dovecot {
        let run = tempfile::Builder::new()
            .prefix("corepop-dovecot-")
            .tempdir()
            .expect("tempdir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("pick a free port")
            .port();
        let r = run.path().display().to_string();
        let root = fx.path().display().to_string();
        let conf = format!(
            r#"base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/log
instance_name = corepop-ref-{port}
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login apop
first_valid_uid = 1
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:{root}/mail/%u/Maildir
{settings}
passdb {{
  driver = passwd-file
  args = {root}/passwd
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={root}/mail/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"#
        );
        for d in ["run", "state"] {
            fs::create_dir_all(run.path().join(d)).unwrap();
        }
        let conf_path = run.path().join("dovecot.conf");
        fs::write(&conf_path, conf).unwrap();
        chown_dovecot(fx.path());

        let child = Command::new("dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run dovecot (apt-get install dovecot-pop3d)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut d = Dovecot { addr, child, run };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("dovecot exited ({st}): {}", d.log());
            }
            assert!(
                Instant::now() < deadline,
                "dovecot did not listen: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.run.path().join("log")).unwrap_or_default()
    }
}

fn chown_dovecot(path: &Path) {
    let st = Command::new("chown")
        .arg("-R")
        .arg("dovecot:dovecot")
        .arg(path)
        .status()
        .expect("chown");
    assert!(st.success());
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own, not yet reaped, child (the Dovecot master, which stops
        // its own children on SIGTERM).
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
