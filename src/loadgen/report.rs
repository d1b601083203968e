//! The final report: human-readable text, or one JSON object (`--json`).

use std::fmt::Write as _;

use super::client::ErrorKind;
use super::hist::Summary;
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

/// A JSON number (finite; NaN/inf become null).
fn num(v: f64) -> String {
    if v.is_finite() {
        let r = (v * 1000.0).round() / 1000.0;
        format!("{r}")
    } else {
        "null".into()
    }
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn summary_json(s: &Summary) -> String {
    format!(
        "{{\"count\":{},\"mean\":{},\"p50\":{},\"p90\":{},\"p99\":{},\"max\":{}}}",
        s.count,
        num(s.mean / 1000.0),
        num(ms(s.p50)),
        num(ms(s.p90)),
        num(ms(s.p99)),
        num(ms(s.max))
    )
}

fn errors_json(e: &[u64; ErrorKind::COUNT]) -> String {
    let parts: Vec<String> = ErrorKind::ALL
        .iter()
        .map(|k| format!("{}:{}", json_str(k.name()), e[k.index()]))
        .collect();
    format!("{{{}}}", parts.join(","))
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
        let mut o = String::with_capacity(2048);
        o.push('{');
        let _ = write!(
            o,
            "\"addr\":{},\"mode\":{},\"concurrency\":{},\"users\":{},\"warmup_s\":{},\"measured_s\":{},",
            json_str(&self.addr),
            json_str(self.mode.name()),
            self.concurrency,
            self.users,
            num(self.warmup_s),
            num(self.measured_s)
        );
        let _ = write!(
            o,
            "\"tls\":{},\"tls_resume\":{},\"tls_handshakes\":{},\"tls_resumed\":{},",
            json_str(self.tls_name()),
            if self.tls.is_some() {
                if self.tls_resume {
                    "true"
                } else {
                    "false"
                }
            } else {
                "null"
            },
            w.tls_handshakes,
            w.tls_resumed
        );
        let _ = write!(
            o,
            "\"sessions\":{},\"failed_sessions\":{},\"sessions_per_s\":{},\"messages\":{},\"messages_per_s\":{},\
             \"bytes\":{},\"mb_per_s\":{},\"noops\":{},\"noops_per_s\":{},",
            w.sessions_ok,
            w.sessions_failed,
            num(self.sessions_per_s()),
            w.messages,
            num(per_s(w.messages, self.measured_s)),
            w.bytes,
            num(self.mb_per_s()),
            w.noops,
            num(per_s(w.noops, self.measured_s)),
        );
        let _ = write!(
            o,
            "\"latency_ms\":{{\"session\":{},\"login\":{},\"noop\":{}}},",
            summary_json(&self.session),
            summary_json(&self.login),
            summary_json(&self.noop)
        );
        let _ = write!(
            o,
            "\"errors\":{},\"error_total\":{},\"errors_all\":{},\"error_total_all\":{},\"sessions_all\":{},",
            errors_json(&w.errors),
            w.error_total(),
            errors_json(&self.all.errors),
            self.all.error_total(),
            self.all.sessions_ok
        );
        let _ = write!(
            o,
            "\"server_cpu_s\":{},\"server_cpu_ms_per_session\":{},\"client_cpu_s\":{}",
            self.server_cpu_s.map_or("null".into(), num),
            self.server_cpu_ms_per_session().map_or("null".into(), num),
            num(self.client_cpu_s)
        );
        match &self.idle {
            None => o.push_str(",\"idle\":null"),
            Some(i) => {
                let _ = write!(
                    o,
                    ",\"idle\":{{\"requested\":{},\"opened\":{},\"logged_in\":{},\"failed\":{},\"alive_at_end\":{},\
                     \"processes\":{},\"setup_s\":{}}}",
                    i.requested,
                    i.opened,
                    i.logged_in,
                    errors_json(&i.failed),
                    i.alive_at_end,
                    i.processes,
                    num(i.setup_s)
                );
            }
        }
        o.push('}');
        o
    }

    pub fn to_text(&self) -> String {
        let w = &self.window;
        let secs = self.measured_s;
        let mut o = String::new();
        let _ = writeln!(
            o,
            "corepop bench: mode {} against {} (TLS: {}), {} connections, {} users, {:.1} s measured after {:.1} s warmup",
            self.mode.name(),
            self.addr,
            self.tls_name(),
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
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        assert_eq!(num(f64::NAN), "null");
        assert_eq!(num(1.23456), "1.235");
    }

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
        let j = r.to_json();
        assert!(j.contains("\"sessions_per_s\":5,"), "{j}");
        assert!(j.contains("\"mb_per_s\":2.5,"), "{j}");
        assert!(j.contains("\"timeout\":1"), "{j}");
        assert!(j.contains("\"server_cpu_ms_per_session\":100,"), "{j}");
        assert!(r.to_text().contains("timeout 1"));
        assert!(j.contains("\"tls\":\"none\",\"tls_resume\":null,"), "{j}");
        assert!(r.to_text().contains("(TLS: none)"));
        let r = Report {
            tls: Some(TlsMode::StartTls),
            tls_resume: false,
            window: Snapshot {
                tls_handshakes: 10,
                ..window
            },
            ..r
        };
        let j = r.to_json();
        assert!(
            j.contains("\"tls\":\"starttls\",\"tls_resume\":false,\"tls_handshakes\":10,"),
            "{j}"
        );
        assert!(r
            .to_text()
            .contains("10 handshakes, 0 resumed (--tls-no-resume)"));
    }
}
