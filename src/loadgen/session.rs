//! One load-generator session per workload mode, and the live counters they update.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use rand::Rng;

use super::client::{first_number, show, Conn, ErrorKind, Result, SessionError};
use super::login::{self, Auth};
use super::tls::TlsClient;
use super::users::User;

/// What each session does (`--mode`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// USER/PASS, STAT, UIDL, LIST, RETR every message (DELE each with --dele), QUIT.
    Full,
    /// USER/PASS, STAT, UIDL, LIST, RETR a random subset (--sample), QUIT.
    RetrSample,
    /// USER/PASS, STAT, UIDL, TOP n <--top-lines> of every message, QUIT.
    Top,
    /// USER/PASS, STAT, UIDL, QUIT.
    Login,
    /// Each worker logs in once, then sends NOOPs back to back and measures their round
    /// trip (use with --idle to see command latency under idle load).
    Idle,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::RetrSample => "retr-sample",
            Mode::Top => "top",
            Mode::Login => "login",
            Mode::Idle => "idle",
        }
    }
}

/// Settings shared by every session.
#[derive(Clone, Debug)]
pub struct SessionCfg {
    pub addr: SocketAddr,
    pub timeout: Duration,
    pub mode: Mode,
    pub dele: bool,
    pub sample: f64,
    pub top_lines: u64,
    pub buf_size: usize,
    /// `--auth`: how to log in.
    pub auth: Auth,
    /// `--tls`: how to speak TLS; `None` for plaintext.
    pub tls: Option<TlsClient>,
}

impl SessionCfg {
    /// How long to wait for the server's close after `+OK` to QUIT.
    pub fn linger(&self) -> Duration {
        self.timeout.min(Duration::from_secs(2))
    }
}

/// Live totals, updated as work completes (read by the progress line and the report).
#[derive(Default)]
pub struct Counters {
    pub sessions_ok: AtomicU64,
    pub sessions_failed: AtomicU64,
    /// Messages retrieved (RETR) or headers fetched (TOP).
    pub messages: AtomicU64,
    /// Un-stuffed RETR/TOP body octets received.
    pub bytes: AtomicU64,
    pub noops: AtomicU64,
    /// Completed TLS handshakes, and how many of them resumed a session.
    pub tls_handshakes: AtomicU64,
    pub tls_resumed: AtomicU64,
    pub errors: [AtomicU64; ErrorKind::COUNT],
}

/// A copy of [`Counters`] at one instant.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    pub sessions_ok: u64,
    pub sessions_failed: u64,
    pub messages: u64,
    pub bytes: u64,
    pub noops: u64,
    pub tls_handshakes: u64,
    pub tls_resumed: u64,
    pub errors: [u64; ErrorKind::COUNT],
}

impl Counters {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            sessions_ok: self.sessions_ok.load(Relaxed),
            sessions_failed: self.sessions_failed.load(Relaxed),
            messages: self.messages.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            noops: self.noops.load(Relaxed),
            tls_handshakes: self.tls_handshakes.load(Relaxed),
            tls_resumed: self.tls_resumed.load(Relaxed),
            errors: std::array::from_fn(|i| self.errors[i].load(Relaxed)),
        }
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind.index()].fetch_add(1, Relaxed);
    }
}

impl Snapshot {
    /// `self - earlier`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            sessions_ok: self.sessions_ok - earlier.sessions_ok,
            sessions_failed: self.sessions_failed - earlier.sessions_failed,
            messages: self.messages - earlier.messages,
            bytes: self.bytes - earlier.bytes,
            noops: self.noops - earlier.noops,
            tls_handshakes: self.tls_handshakes - earlier.tls_handshakes,
            tls_resumed: self.tls_resumed - earlier.tls_resumed,
            errors: std::array::from_fn(|i| self.errors[i] - earlier.errors[i]),
        }
    }

    pub fn error_total(&self) -> u64 {
        self.errors.iter().sum()
    }
}

/// Timings of a completed session.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// Connect through `+OK` to PASS.
    pub login: Duration,
    /// Connect through the server's close after QUIT.
    pub total: Duration,
}

/// Connects (with TLS as configured), reads the greeting and logs in. Counts the TLS
/// handshake.
pub async fn open(cfg: &SessionCfg, user: &User, counters: &Counters) -> Result<Conn> {
    let tls = cfg.tls.as_ref().map(|t| t.for_user(&user.name));
    let mut c = Conn::open(cfg.addr, None, cfg.timeout, cfg.buf_size, tls.as_ref()).await?;
    if let Some(resumed) = c.tls_resumed() {
        counters.tls_handshakes.fetch_add(1, Relaxed);
        if resumed {
            counters.tls_resumed.fetch_add(1, Relaxed);
        }
    }
    login::login(&mut c, &user.name, &user.password, cfg.auth).await?;
    Ok(c)
}

/// `n m` of a STAT reply.
fn parse_stat(rest: &[u8]) -> Result<(u64, u64)> {
    let mut it = rest
        .split(|b| *b == b' ')
        .filter(|w| !w.is_empty())
        .map(|w| {
            std::str::from_utf8(w)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
        });
    match (it.next().flatten(), it.next().flatten()) {
        (Some(n), Some(m)) => Ok((n, m)),
        _ => Err(SessionError::new(
            ErrorKind::Protocol,
            format!("bad STAT reply: {:?}", show(rest)),
        )),
    }
}

/// Checks a received body length against the sizes the server announced. The body may be 2
/// octets longer: servers end a message that lacks a final newline with an added CRLF.
fn check_size(msg: u64, got: u64, status: Option<u64>, list: Option<u64>) -> Result<()> {
    let fits = |e: u64| got == e || got == e + 2;
    if status.is_none_or(fits) && list.is_none_or(fits) {
        Ok(())
    } else {
        Err(SessionError::new(
            ErrorKind::SizeMismatch,
            format!(
                "RETR {msg}: received {got} octets, +OK said {}, LIST said {}",
                status.map_or("-".into(), |v| v.to_string()),
                list.map_or("-".into(), |v| v.to_string()),
            ),
        ))
    }
}

/// The message sizes from LIST, checked against STAT.
async fn list(c: &mut Conn, count: u64, total: u64) -> Result<Vec<u64>> {
    c.command(b"LIST", &[]).await?;
    c.expect_ok("LIST").await?;
    let mut sizes = Vec::with_capacity(count as usize);
    c.read_lines(|line| {
        let mut w = line.split(|b| *b == b' ').filter(|w| !w.is_empty());
        let num = w.next().and_then(first_number);
        let size = w.next().and_then(first_number);
        match (num, size) {
            (Some(n), Some(s)) if n == sizes.len() as u64 + 1 => {
                sizes.push(s);
                Ok(())
            }
            _ => Err(SessionError::new(
                ErrorKind::Protocol,
                format!("unexpected LIST line {:?}", show(line)),
            )),
        }
    })
    .await?;
    if sizes.len() as u64 != count || sizes.iter().sum::<u64>() != total {
        return Err(SessionError::new(
            ErrorKind::Protocol,
            format!(
                "LIST has {} messages / {} octets, STAT said {count} / {total}",
                sizes.len(),
                sizes.iter().sum::<u64>()
            ),
        ));
    }
    Ok(sizes)
}

/// RETR one message, verifying its size; returns the body length.
async fn retr(c: &mut Conn, msg: u64, list_size: Option<u64>) -> Result<u64> {
    c.command(b"RETR", &[msg]).await?;
    let announced = first_number(c.expect_ok("RETR").await?);
    let got = c.read_body().await?;
    check_size(msg, got, announced, list_size)?;
    Ok(got)
}

/// Runs one whole session (every mode except [`Mode::Idle`]).
pub async fn run(
    cfg: &SessionCfg,
    user: &User,
    rng: &mut impl Rng,
    counters: &Counters,
) -> Result<Outcome> {
    let t0 = Instant::now();
    let mut c = open(cfg, user, counters).await?;
    let login = t0.elapsed();

    c.command(b"STAT", &[]).await?;
    let (count, total) = parse_stat(c.expect_ok("STAT").await?)?;
    c.command(b"UIDL", &[]).await?;
    c.expect_ok("UIDL").await?;
    let mut uidls = 0u64;
    c.read_lines(|_| {
        uidls += 1;
        Ok(())
    })
    .await?;
    if uidls != count {
        return Err(SessionError::new(
            ErrorKind::Protocol,
            format!("UIDL listed {uidls} messages, STAT said {count}"),
        ));
    }

    match cfg.mode {
        Mode::Full | Mode::RetrSample => {
            let sizes = list(&mut c, count, total).await?;
            let picked: Vec<u64> = if cfg.mode == Mode::Full {
                (1..=count).collect()
            } else if count == 0 {
                Vec::new()
            } else {
                let k = ((count as f64 * cfg.sample).round() as usize).clamp(1, count as usize);
                let mut v: Vec<u64> = rand::seq::index::sample(rng, count as usize, k)
                    .into_iter()
                    .map(|i| i as u64 + 1)
                    .collect();
                v.sort_unstable();
                v
            };
            for msg in picked {
                let got = retr(&mut c, msg, Some(sizes[msg as usize - 1])).await?;
                counters.messages.fetch_add(1, Relaxed);
                counters.bytes.fetch_add(got, Relaxed);
                if cfg.dele {
                    c.command(b"DELE", &[msg]).await?;
                    c.expect_ok("DELE").await?;
                }
            }
        }
        Mode::Top => {
            for msg in 1..=count {
                c.command(b"TOP", &[msg, cfg.top_lines]).await?;
                c.expect_ok("TOP").await?;
                let got = c.read_body().await?;
                counters.messages.fetch_add(1, Relaxed);
                counters.bytes.fetch_add(got, Relaxed);
            }
        }
        Mode::Login | Mode::Idle => {}
    }
    c.quit(cfg.linger()).await?;
    Ok(Outcome {
        login,
        total: t0.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::net::TcpListener;

    /// A one-connection scripted POP3 server with one message: LIST/STAT say `size`, RETR
    /// sends `wire` (already stuffed, without the terminator).
    fn fake_server(wire: &'static [u8], size: u64) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            w.write_all(b"+OK hi\r\n").unwrap();
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let verb = line.split_whitespace().next().unwrap_or("").to_string();
                let reply: Vec<u8> = match verb.as_str() {
                    "USER" | "PASS" | "DELE" => b"+OK\r\n".to_vec(),
                    "STAT" => format!("+OK 1 {size}\r\n").into_bytes(),
                    "UIDL" => b"+OK\r\n1 abc\r\n.\r\n".to_vec(),
                    "LIST" => format!("+OK\r\n1 {size}\r\n.\r\n").into_bytes(),
                    "RETR" => {
                        let mut v = format!("+OK {size} octets\r\n").into_bytes();
                        v.extend_from_slice(wire);
                        v.extend_from_slice(b".\r\n");
                        v
                    }
                    "QUIT" => {
                        let _ = w.write_all(b"+OK bye\r\n");
                        return;
                    }
                    _ => b"-ERR what\r\n".to_vec(),
                };
                if w.write_all(&reply).is_err() {
                    return;
                }
            }
        });
        addr
    }

    fn run_against(wire: &'static [u8], size: u64, dele: bool) -> (Result<Outcome>, Counters) {
        let cfg = SessionCfg {
            addr: fake_server(wire, size),
            timeout: Duration::from_secs(5),
            mode: Mode::Full,
            dele,
            sample: 1.0,
            top_lines: 0,
            buf_size: 4096,
            auth: Auth::User,
            tls: None,
        };
        let user = User {
            name: "u".into(),
            password: "p".into(),
        };
        let counters = Counters::default();
        let mut rng = rand::rngs::mock::StepRng::new(0, 1);
        let r = crate::loadgen::block_on(run(&cfg, &user, &mut rng, &counters));
        (r, counters)
    }

    #[test]
    fn full_session_counts_unstuffed_octets() {
        // The message "a\r\n.b\r\n" (7 octets) dot-stuffed on the wire.
        let (r, c) = run_against(b"a\r\n..b\r\n", 7, true);
        r.unwrap();
        let s = c.snapshot();
        assert_eq!((s.messages, s.bytes), (1, 7));
    }

    #[test]
    fn full_session_accepts_added_final_crlf() {
        // "a\r\n.b" lacks a final newline: 5 octets, the server adds CRLF.
        let (r, _) = run_against(b"a\r\n..b\r\n", 5, false);
        r.unwrap();
    }

    #[test]
    fn full_session_reports_size_mismatch() {
        let (r, _) = run_against(b"a\r\n..b\r\n", 8, false);
        assert_eq!(r.unwrap_err().kind, ErrorKind::SizeMismatch);
        // An unstuffed dot line shrinks the message by one octet: also caught.
        let (r, _) = run_against(b"a\r\n.b\r\n", 7, false);
        assert_eq!(r.unwrap_err().kind, ErrorKind::SizeMismatch);
    }

    #[test]
    fn size_check_allows_added_crlf_only() {
        assert!(check_size(1, 100, Some(100), Some(100)).is_ok());
        assert!(check_size(1, 102, Some(100), Some(100)).is_ok());
        assert!(check_size(1, 100, None, Some(100)).is_ok());
        let e = check_size(1, 101, Some(100), Some(100)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::SizeMismatch);
        assert!(check_size(1, 100, Some(100), Some(98)).is_ok());
        assert!(check_size(1, 100, Some(90), None).is_err());
    }

    #[test]
    fn stat_reply() {
        assert_eq!(parse_stat(b"2 320").unwrap(), (2, 320));
        assert_eq!(parse_stat(b"0 0").unwrap(), (0, 0));
        assert!(parse_stat(b"two").is_err());
    }
}
