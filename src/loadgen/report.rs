//! The final report: human-readable text, or one JSON object (`--json`).

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::client::ErrorKind;
use super::hist::Summary;
use super::login::Auth;
use super::session::{Mode, Snapshot};
use super::tls::{TlsMode, NO_TLS};

/// Idle-connection figures (`--idle`).
#[derive(Clone, Debug, Default)]
pub struct IdleReport {
    pub requested: usize,
    pub opened: usize,
    pub failed: [u64; ErrorKind::COUNT],
    /// Still open and silent when the workload ended.
    pub alive_at_end: usize,
    /// Processes holding them (0 = this process).
    pub processes: usize,
    pub setup_s: f64,
    pub logged_in: bool,
}

/// Everything the run measured.
#[derive(Clone, Debug)]
pub struct Report {
    pub addr: String,
    pub mode: Mode,
    pub auth: Auth,
    pub concurrency: usize,
    pub users: usize,
    pub warmup_s: f64,
    /// Length of the measurement window.
    pub measured_s: f64,
    /// Counter increments inside the measurement window.
    pub window: Snapshot,
    /// Counter totals over the whole run (warmup and the drain after the window included).
    pub all: Snapshot,
    pub session: Summary,
    pub login: Summary,
    pub noop: Summary,
    /// CPU seconds of the `--server-pid` process trees during the window.
    pub server_cpu_s: Option<f64>,
    /// CPU seconds of this process (and its idle workers) during the window.
    pub client_cpu_s: f64,
    pub idle: Option<IdleReport>,
    /// `--tls`, and whether sessions could be resumed (not `--tls-no-resume`).
    pub tls: Option<TlsMode>,
    pub tls_resume: bool,
}

fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// A JSON number rounded to 3 decimals (NaN and infinities become null).
fn num(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

fn summary_json(s: &Summary) -> Value {
    json!({
        "count": s.count,
        "mean": num(s.mean / 1000.0),
        "p50": num(ms(s.p50)),
        "p90": num(ms(s.p90)),
        "p99": num(ms(s.p99)),
        "max": num(ms(s.max)),
    })
}

/// Every error kind by name, zeros included.
fn errors_json(e: &[u64; ErrorKind::COUNT]) -> Value {
    ErrorKind::ALL
        .iter()
        .map(|k| (k.name().to_string(), json!(e[k.index()])))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn errors_text(e: &[u64; ErrorKind::COUNT]) -> String {
    let parts: Vec<String> = ErrorKind::ALL
        .iter()
        .filter(|k| e[k.index()] > 0)
        .map(|k| format!("{} {}", k.name(), e[k.index()]))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

impl Report {
    pub fn sessions_per_s(&self) -> f64 {
        per_s(self.window.sessions_ok, self.measured_s)
    }

    pub fn mb_per_s(&self) -> f64 {
        per_s(self.window.bytes, self.measured_s) / 1e6
    }

    fn server_cpu_ms_per_session(&self) -> Option<f64> {
        let cpu = self.server_cpu_s?;
        (self.window.sessions_ok > 0).then(|| cpu * 1000.0 / self.window.sessions_ok as f64)
    }

    fn tls_name(&self) -> &'static str {
        self.tls.map_or(NO_TLS, TlsMode::name)
    }

    pub fn to_json(&self) -> String {
        let w = &self.window;
        let secs = self.measured_s;
        let idle = self.idle.as_ref().map(|i| {
            json!({
                "requested": i.requested,
                "opened": i.opened,
                "logged_in": i.logged_in,
                "failed": errors_json(&i.failed),
                "alive_at_end": i.alive_at_end,
                "processes": i.processes,
                "setup_s": num(i.setup_s),
            })
        });
        json!({
            "addr": self.addr,
            "mode": self.mode.name(),
            "auth": self.auth.name(),
            "concurrency": self.concurrency,
            "users": self.users,
            "warmup_s": num(self.warmup_s),
            "measured_s": num(secs),
            "tls": self.tls_name(),
            "tls_resume": self.tls.map(|_| self.tls_resume),
            "tls_handshakes": w.tls_handshakes,
            "tls_resumed": w.tls_resumed,
            "sessions": w.sessions_ok,
            "failed_sessions": w.sessions_failed,
            "sessions_per_s": num(self.sessions_per_s()),
            "messages": w.messages,
            "messages_per_s": num(per_s(w.messages, secs)),
            "bytes": w.bytes,
            "mb_per_s": num(self.mb_per_s()),
            "noops": w.noops,
            "noops_per_s": num(per_s(w.noops, secs)),
            "latency_ms": {
                "session": summary_json(&self.session),
                "login": summary_json(&self.login),
                "noop": summary_json(&self.noop),
            },
            "errors": errors_json(&w.errors),
            "error_total": w.error_total(),
            "errors_all": errors_json(&self.all.errors),
            "error_total_all": self.all.error_total(),
            "sessions_all": self.all.sessions_ok,
            "server_cpu_s": self.server_cpu_s.map(num),
            "server_cpu_ms_per_session": self.server_cpu_ms_per_session().map(num),
            "client_cpu_s": num(self.client_cpu_s),
            "idle": idle,
        })
        .to_string()
    }

    pub fn to_text(&self) -> String {
        let w = &self.window;
        let secs = self.measured_s;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "corepop bench: mode {} against {} (TLS: {}, login: {}), {} connections, {} users, {:.1} s measured after {:.1} s warmup",
            self.mode.name(),
            self.addr,
            self.tls_name(),
            self.auth.name(),
            self.concurrency,
            self.users,
            secs,
            self.warmup_s
        );
        let lat = |name: &str, s: &Summary, o: &mut String| {
            if s.count > 0 {
                let _ = writeln!(
                    o,
                    "  {name:<14} p50 {:.3}  p90 {:.3}  p99 {:.3}  max {:.3}  (n={})",
                    ms(s.p50),
                    ms(s.p90),
                    ms(s.p99),
                    ms(s.max),
                    s.count
                );
            }
        };
        if self.mode == Mode::Idle {
            let _ = writeln!(
                o,
                "  noops          {:<12} {:.1}/s",
                w.noops,
                per_s(w.noops, secs)
            );
            lat("noop ms", &self.noop, &mut o);
        } else {
            let _ = writeln!(
                o,
                "  sessions       {:<12} {:.1}/s   ({} failed)",
                w.sessions_ok,
                self.sessions_per_s(),
                w.sessions_failed
            );
            if self.mode != Mode::Login {
                let _ = writeln!(
                    o,
                    "  messages       {:<12} {:.1}/s",
                    w.messages,
                    per_s(w.messages, secs)
                );
                let _ = writeln!(
                    o,
                    "  body MB        {:<12.1} {:.1} MB/s",
                    w.bytes as f64 / 1e6,
                    self.mb_per_s()
                );
            }
            lat("session ms", &self.session, &mut o);
        }
        lat("login ms", &self.login, &mut o);
        if self.tls.is_some() {
            let _ = writeln!(
                o,
                "  tls            {} handshakes, {} resumed{}",
                w.tls_handshakes,
                w.tls_resumed,
                if self.tls_resume {
                    ""
                } else {
                    " (--tls-no-resume)"
                }
            );
        }
        let _ = write!(o, "  errors         {}", errors_text(&w.errors));
        let outside = self.all.error_total() - w.error_total();
        if outside > 0 {
            let _ = write!(o, "   (whole run: {})", errors_text(&self.all.errors));
        }
        o.push('\n');
        if let Some(cpu) = self.server_cpu_s {
            let _ = write!(o, "  server CPU     {cpu:.2} s");
            if let Some(per) = self.server_cpu_ms_per_session() {
                let _ = write!(o, " ({per:.3} ms/session)");
            }
            o.push('\n');
        }
        let _ = writeln!(o, "  client CPU     {:.2} s", self.client_cpu_s);
        if let Some(i) = &self.idle {
            let _ = writeln!(
                o,
                "  idle           {} of {} opened{} in {:.1} s ({}), {} still open at the end; failed: {}",
                i.opened,
                i.requested,
                if i.logged_in { " and logged in" } else { "" },
                i.setup_s,
                if i.processes == 0 {
                    "in this process".to_string()
                } else {
                    format!("{} worker processes", i.processes)
                },
                i.alive_at_end,
                errors_text(&i.failed)
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_renders() {
        let mut window = Snapshot {
            sessions_ok: 10,
            messages: 100,
            bytes: 5_000_000,
            ..Default::default()
        };
        window.errors[ErrorKind::Timeout.index()] = 1;
        let r = Report {
            addr: "127.0.0.1:110".into(),
            mode: Mode::Full,
            auth: Auth::Plain,
            concurrency: 4,
            users: 8,
            warmup_s: 1.0,
            measured_s: 2.0,
            window,
            all: window,
            session: Summary::default(),
            login: Summary::default(),
            noop: Summary::default(),
            server_cpu_s: Some(1.0),
            client_cpu_s: 0.5,
            idle: Some(IdleReport::default()),
            tls: None,
            tls_resume: true,
        };
        let j: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(j["sessions_per_s"], 5.0, "{j}");
        assert_eq!(j["mb_per_s"], 2.5, "{j}");
        assert_eq!(j["errors"]["timeout"], 1, "{j}");
        assert_eq!(j["errors"]["auth"], 0, "{j}");
        assert_eq!(j["server_cpu_ms_per_session"], 100.0, "{j}");
        assert_eq!(j["idle"]["requested"], 0, "{j}");
        assert_eq!(
            (&j["tls"], &j["tls_resume"]),
            (&json!("none"), &Value::Null)
        );
        assert!(r.to_text().contains("timeout 1"));
        assert!(r.to_text().contains("(TLS: none, login: plain)"));
        assert_eq!(j["auth"], "plain");
        let odd = Report {
            addr: "a\"b\\c\n\u{1}".into(),
            measured_s: 0.0,
            client_cpu_s: f64::NAN,
            ..r.clone()
        };
        let j: Value = serde_json::from_str(&odd.to_json()).unwrap();
        assert_eq!(j["addr"], "a\"b\\c\n\u{1}");
        assert_eq!(j["sessions_per_s"], 0.0);
        assert_eq!(j["client_cpu_s"], Value::Null);
        let r = Report {
            tls: Some(TlsMode::StartTls),
            tls_resume: false,
            window: Snapshot {
                tls_handshakes: 10,
                ..window
            },
            ..r
        };
        let j: Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(
            (&j["tls"], &j["tls_resume"], &j["tls_handshakes"]),
            (&json!("starttls"), &json!(false), &json!(10)),
            "{j}"
        );
        assert!(r
            .to_text()
            .contains("10 handshakes, 0 resumed (--tls-no-resume)"));
    }
}
