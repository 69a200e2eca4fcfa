//! The `sidewire` binary: CLI, logging, config load, run, exit code.
//! Exit codes: 0 after a clean shutdown, 2 for a bad config, 1 when startup fails.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use sidewire::shutdown::{Signal, Signals};
use sidewire::{App, Config};

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// Reverse-proxy sidecar adding WebSocket, SSE and long-poll to an HTTP app.
#[derive(Parser)]
#[command(version, after_help = HELP)]
struct Cli {
    /// Config file.
    #[arg(long, default_value = "config.yaml")]
    config: PathBuf,
    /// Validate the config, print every problem, exit 0 (valid) or 2 (invalid).
    #[arg(long)]
    check: bool,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, value_enum, default_value = "human")]
    log_format: LogFormat,
}

const HELP: &str = "\
Examples:
  sidewire --config config.yaml                 run (the repository's config.yaml works as is)
  sidewire --check --config config.yaml         validate: exit 0, or print every problem, exit 2
  RUST_LOG=debug sidewire                       more logs (RUST_LOG=info,sidewire::access=debug: access lines)
  sidewire --log-format json                    JSON log lines

Signals: SIGTERM/SIGINT drain and exit 0; SIGHUP reloads the config and certificates.
Exit codes: 0 clean shutdown, 1 startup failed (e.g. address in use), 2 invalid config.
Admin listener (admin.listen, default 127.0.0.1:9090): POST /publish, GET /presence?channel=,
GET /channels, GET /metrics, GET /healthz, GET /readyz.";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.config.exists() {
        eprintln!(
            "no config file at {}: start with `sidewire --config path/to/config.yaml` (the repository's \
             config.yaml runs as is; `sidewire --help` for more)",
            cli.config.display()
        );
        return ExitCode::from(2);
    }
    let config = match Config::load(&cli.config, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: invalid config:\n{e}", cli.config.display());
            return ExitCode::from(2);
        }
    };
    if cli.check {
        for w in config.warnings() {
            eprintln!("{}: warning: {w}", cli.config.display());
        }
        let _ = writeln!(std::io::stdout(), "{}: OK", cli.config.display());
        return ExitCode::SUCCESS;
    }
    init_tracing(cli.log_format);
    log_warnings(&config);
    // This thread runs the admin listener and background tasks; `App::bind` readies one
    // serving thread per core (`workers`) for the public listeners, `App::run` starts them.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.config, config))
}

async fn run(path: PathBuf, config: Config) -> ExitCode {
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let app = match App::bind(config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "startup failed");
            return ExitCode::FAILURE;
        }
    };
    let addrs = app.local_addrs();
    // Plain `ip:port` values (no `Some(..)`): scripts and tests read the bound ports here.
    let tls = addrs.tls.map(tracing::field::display);
    tracing::info!(public = %addrs.public, tls, admin = %addrs.admin, "listening");
    let handle = app.handle();
    let running = app.run();
    tokio::pin!(running);
    loop {
        tokio::select! {
            () = &mut running => break,
            signal = signals.next() => match signal {
                Signal::Terminate => handle.shutdown(),
                Signal::Reload => reload(&handle, &path).await,
            },
        }
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

async fn reload(handle: &sidewire::Handle, path: &std::path::Path) {
    match Config::load(path, &env) {
        Ok(new) => {
            log_warnings(&new);
            match handle.reload(new).await {
                Ok(restart) => tracing::info!(restart_required = ?restart, "config reloaded"),
                Err(e) => tracing::warn!(problem = %e, "config reload refused; keeping the running config"),
            }
        }
        Err(e) => {
            handle.metrics().reload("config", "invalid");
            tracing::warn!(problems = %e, "config reload refused; keeping the running config")
        }
    }
}

/// Logs what `--check` warns about (valid, but surely not meant).
fn log_warnings(config: &Config) {
    for w in config.warnings() {
        tracing::warn!(problem = %w, "config warning");
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
}
