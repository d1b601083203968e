//! The `corepop` command line.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use corepop::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// corepop — a thread-per-core POP3 server for Maildir.
#[derive(Parser)]
#[command(version, about, long_about = None, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve POP3 with a configuration file (flags override it).
    Serve(ServeArgs),
    /// Create a demo Maildir, user and configuration, and serve it on 127.0.0.1.
    Demo {
        /// Directory for the demo's files (created if missing).
        #[arg(long, default_value = "corepop-demo")]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:1110")]
        listen: SocketAddr,
        /// Address for implicit TLS (POP3S) with the demo's self-signed certificate.
        #[arg(long, default_value = "127.0.0.1:1995")]
        listen_tls: SocketAddr,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file; without it the built-in defaults apply.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Plaintext listener address (repeatable); replaces `server.listen`.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Dovecot-format passwd-file; replaces `auth.passwd_file`.
    #[arg(long, value_name = "PATH")]
    passwd_file: Option<PathBuf>,
    /// Mail location template, e.g. `maildir:/srv/mail/%d/%n/Maildir`; replaces `mail.location`.
    #[arg(long, value_name = "TEMPLATE")]
    mail_location: Option<String>,
    /// Executor threads (one per core; 0 = all CPUs); replaces `server.threads`.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Implicit-TLS (POP3S) listener address (repeatable); replaces `server.listen_tls`.
    #[arg(long = "listen-tls", value_name = "ADDR")]
    listen_tls: Vec<SocketAddr>,
    /// PEM certificate chain of the default certificate; replaces `tls.cert`.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the default certificate; replaces `tls.key`.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<Config> {
        let mut cfg = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if !self.listen.is_empty() {
            cfg.server.listen = self.listen.clone();
        }
        if let Some(p) = &self.passwd_file {
            cfg.auth.passwd_file = p.clone();
        }
        if let Some(l) = &self.mail_location {
            cfg.mail.location = l.clone();
        }
        if let Some(t) = self.threads {
            cfg.server.threads = t;
        }
        if !self.listen_tls.is_empty() {
            cfg.server.listen_tls = self.listen_tls.clone();
        }
        if let (Some(c), Some(k)) = (&self.tls_cert, &self.tls_key) {
            cfg.tls.cert = Some(c.clone());
            cfg.tls.key = Some(k.clone());
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("COREPOP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn print_ready(listeners: &[corepop::runtime::Listening]) {
    let mut stdout = std::io::stdout().lock();
    for l in listeners {
        let tls = if l.tls { " (tls)" } else { "" };
        let _ = writeln!(stdout, "corepop: listening on {}{tls}", l.addr);
    }
    let _ = stdout.flush();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let cfg = args.config()?;
            init_logging(&cfg.log.level);
            corepop::runtime::serve_with(cfg, print_ready)
        }
        Command::Demo {
            dir,
            listen,
            listen_tls,
        } => {
            let cfg =
                corepop::demo::prepare(&dir, listen, listen_tls).context("preparing the demo")?;
            init_logging(&cfg.log.level);
            corepop::runtime::serve_with(cfg, |listeners| {
                print_ready(listeners);
                let plain = listeners.iter().find(|l| !l.tls).map(|l| l.addr);
                let tls = listeners.iter().find(|l| l.tls).map(|l| l.addr);
                if let (Some(plain), Some(tls)) = (plain, tls) {
                    corepop::demo::print_instructions(&dir, plain, tls);
                }
            })
        }
    }
}
