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
#[command(
    version,
    about,
    long_about = LONG_ABOUT,
    after_long_help = AFTER_LONG_HELP,
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Hash a password for the passwd-file, like `doveadm pw` (or test one with -t).
    Pw(PwArgs),
    /// Serve POP3 with a configuration file (flags override it).
    Serve(ServeArgs),
    /// Validate the configuration (and the files it names) and print the effective
    /// configuration, defaults included, as TOML. Exit status 1 if anything is wrong.
    CheckConfig(ServeArgs),
    /// Run a closed-loop POP3 load test against a POP3 server (corepop, Dovecot, ...).
    Bench(corepop::loadgen::BenchArgs),
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
struct PwArgs {
    /// Password scheme (SHA512-CRYPT, BLF-CRYPT, ARGON2ID, SCRAM-SHA-256, CRAM-MD5, …;
    /// `.b64`/`.hex` suffixes allowed). CRYPT makes BLF-CRYPT, as current Dovecot does.
    #[arg(short = 's', long, default_value = "CRYPT")]
    scheme: String,
    /// The password; without it one line is read from standard input.
    #[arg(short = 'p', long)]
    password: Option<String>,
    /// Cost: rounds for SHA*-CRYPT, cost for BLF-CRYPT, passes for ARGON2*, iterations
    /// for SCRAM-* and PBKDF2.
    #[arg(short = 'r', long)]
    rounds: Option<u32>,
    /// Instead of hashing, test the password against this stored hash (`{SCHEME}data`).
    #[arg(short = 't', long, value_name = "HASH")]
    test: Option<String>,
    /// List the supported schemes.
    #[arg(short = 'l', long)]
    list: bool,
}

impl PwArgs {
    fn run(self) -> anyhow::Result<()> {
        use corepop::auth::{scheme, PasswdOptions};
        if self.list {
            println!("{}", scheme::supported().join(" "));
            return Ok(());
        }
        let password = match self.password {
            Some(p) => zeroize::Zeroizing::new(p.into_bytes()),
            None => {
                if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                    eprint!("Enter password (it will be shown): ");
                }
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("reading the password from standard input")?;
                let pw = line.trim_end_matches(['\r', '\n']).as_bytes().to_vec();
                zeroize::Zeroize::zeroize(&mut line);
                zeroize::Zeroizing::new(pw)
            }
        };
        if password.is_empty() {
            anyhow::bail!("empty password");
        }
        let opts = PasswdOptions::default();
        if let Some(stored) = self.test {
            return match scheme::verify(&stored, &password, &opts) {
                Ok(true) => {
                    println!("{stored} (verified)");
                    Ok(())
                }
                Ok(false) => {
                    eprintln!("corepop pw: password mismatch");
                    std::process::exit(1);
                }
                Err(e) => anyhow::bail!("cannot verify: {e}"),
            };
        }
        let hashed = scheme::hash_with_rounds(&self.scheme, &password, self.rounds)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // Like doveadm: check the new hash before printing it.
        if scheme::verify(&hashed, &password, &opts) != Ok(true) {
            anyhow::bail!("reverse verification of the new hash failed");
        }
        println!("{hashed}");
        Ok(())
    }
}

const LONG_ABOUT: &str = "\
corepop serves POP3 (RFC 1939, 2449, 2595, SASL) from Maildir, with one executor pinned
per CPU core (io_uring). Users come from a Dovecot-format passwd-file; mail
locations use Dovecot's templates, so an existing Dovecot POP3 setup can be replaced
without touching the mail store.

Run `corepop serve --config /etc/corepop/corepop.toml` as a service (see the systemd units
corepop.service and corepop.socket), `corepop check-config --config FILE` before a reload,
and `corepop demo` for a self-contained trial on 127.0.0.1.";

const AFTER_LONG_HELP: &str = "\
SIGNALS:
    SIGHUP      Re-read the configuration file, the passwd-file and the TLS certificates.
                Sessions in progress are not affected. An invalid new configuration or an
                unreadable passwd-file is logged and the previous one stays in use.
    SIGTERM, SIGINT
                Stop accepting, tell idle sessions `-ERR [SYS/TEMP] Server shutting down.`,
                let busy ones finish for server.shutdown_grace_secs; a QUIT whose deletions
                are running always completes.

ENVIRONMENT:
    COREPOP_LOG         Log filter (overrides log.level), e.g. `info` or `corepop=debug`.
    COREPOP_ALLOW_ROOT  `1`: same as --allow-root.
    NOTIFY_SOCKET, LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES
                        systemd readiness notification and socket activation.

FILES:
    /etc/corepop/corepop.toml   Configuration (configuration.md).
    /etc/corepop/passwd         Users, Dovecot passwd-file format.

EXIT STATUS:
    0 after a clean shutdown; 1 on a configuration, start-up or runtime error
    (the reason is printed on standard error).

Documentation: /usr/share/doc/corepop (configuration.md, deployment.md).";

#[derive(clap::Args, Clone)]
struct ServeArgs {
    /// Serve as root when started as root without `privileges.user` (tests, trials).
    #[arg(long)]
    allow_root: bool,
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
    /// UIDL format (Dovecot `pop3_uidl_format` syntax, e.g. `%08Xu%08Xv`); replaces
    /// `mail.uidl_format`.
    #[arg(long, value_name = "FORMAT")]
    uidl_format: Option<String>,
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
        if let Some(f) = &self.uidl_format {
            cfg.mail.uidl_format = f.clone();
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        // Under systemd the journal stamps every line itself; no colours, no timestamps.
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}

fn allow_root(args: &ServeArgs) -> bool {
    args.allow_root || std::env::var("COREPOP_ALLOW_ROOT").is_ok_and(|v| v == "1")
}

/// `check-config`: everything start-up checks except binding, then the effective settings.
fn check_config(args: &ServeArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    // The warnings start-up logs (skipped passwd-file lines, mechanisms some users cannot
    // use) are what an operator runs this for: log them the same way, to standard error.
    init_logging(&cfg.log.level);
    corepop::runtime::load_authenticator(&cfg)?;
    corepop::tls::server_config(&cfg.tls)?;
    let text = toml::to_string(&cfg).context("printing the configuration")?;
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "# corepop {}: configuration OK",
        env!("CARGO_PKG_VERSION")
    )?;
    stdout.write_all(text.as_bytes())?;
    Ok(())
}

fn print_ready(listeners: &[corepop::runtime::Listening]) {
    let mut stdout = std::io::stdout().lock();
    for l in listeners {
        let tls = if l.tls { " (tls)" } else { "" };
        let proxy = if l.proxy { " (proxy)" } else { "" };
        let _ = writeln!(stdout, "corepop: listening on {}{tls}{proxy}", l.addr);
    }
    let _ = stdout.flush();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Pw(args) => args.run(),
        Command::Bench(args) => corepop::loadgen::run(args),
        Command::Serve(args) => {
            let cfg = args.config()?;
            init_logging(&cfg.log.level);
            let opts = corepop::runtime::ServeOptions {
                allow_root: allow_root(&args),
                reload: Some(Box::new({
                    let args = args.clone();
                    move || args.config()
                })),
            };
            corepop::runtime::serve_opts(cfg, opts, print_ready)
        }
        Command::CheckConfig(args) => check_config(&args),
        Command::Demo {
            dir,
            listen,
            listen_tls,
        } => {
            let cfg =
                corepop::demo::prepare(&dir, listen, listen_tls).context("preparing the demo")?;
            init_logging(&cfg.log.level);
            // A trial on loopback: running it as root is fine.
            let opts = corepop::runtime::ServeOptions {
                allow_root: true,
                reload: None,
            };
            corepop::runtime::serve_opts(cfg, opts, |listeners| {
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
