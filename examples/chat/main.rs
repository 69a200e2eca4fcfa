//! `cargo run --example chat`: the example chat app (`examples/chat/app.py`, Python's
//! standard library only) with sidewire in front of it, in one command.
//!
//! sidewire runs in this process (the library API the tests use) with
//! `examples/chat/sidewire.yaml` (memory broker, no Redis); the app runs as a `python3`
//! child (`PYTHON` overrides the interpreter) on the config's `backend.url` port, told
//! where the admin API is and the secret both share (`SIDEWIRE_SECRET`, random per run
//! unless set). The child is killed when this process ends, on Ctrl-C / SIGTERM too.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use sidewire::shutdown::{Signal, Signals};
use sidewire::{App, Config};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/chat");
/// How long the app may take to accept connections.
const APP_START: Duration = Duration::from_secs(10);

/// The app's process: killed and reaped on drop, whatever way `main` ends.
struct AppProcess(Child);

impl Drop for AppProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn say(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// A fresh random secret (hex), for the admin API and webhook signatures of this run.
fn random_secret() -> Result<String, ring::error::Unspecified> {
    let bytes: [u8; 16] = ring::rand::generate(&ring::rand::SystemRandom::new())?.expose();
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat example: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let secret = match std::env::var("SIDEWIRE_SECRET") {
        Ok(s) if !s.is_empty() => s,
        _ => random_secret().map_err(|_| "no randomness for a secret".to_owned())?,
    };
    let path = PathBuf::from(DIR).join("sidewire.yaml");
    let env = |name: &str| if name == "SIDEWIRE_SECRET" { Some(secret.clone()) } else { std::env::var(name).ok() };
    let config = Config::load(&path, &env).map_err(|e| format!("{}: invalid config:\n{e}", path.display()))?;
    let app_addr: SocketAddr = config
        .backend
        .origin
        .as_str()
        .parse()
        .map_err(|e| format!("backend.url must be http://<ip>:<port> here: {e}"))?;
    let admin = config.admin.listen;

    let mut signals = Signals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let sidewire = App::bind(config).await.map_err(|e| e.to_string())?;
    let public = sidewire.local_addrs().public;

    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let child = Command::new(&python)
        .arg(PathBuf::from(DIR).join("app.py"))
        .env("CHAT_HOST", app_addr.ip().to_string())
        .env("CHAT_PORT", app_addr.port().to_string())
        .env("SIDEWIRE_ADMIN", format!("http://{admin}"))
        .env("SIDEWIRE_SECRET", &secret)
        .spawn()
        .map_err(|e| format!("cannot start `{python}` (the example app needs Python 3): {e}"))?;
    let mut app = AppProcess(child);
    wait_for_app(&mut app, app_addr).await?;

    let handle = sidewire.handle();
    let running = sidewire.run();
    tokio::pin!(running);
    say(&format!("open http://{public}/   (sign in as two users in two browser windows; Ctrl-C stops)"));
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let (mut result, mut stopping) = (Ok(()), false);
    loop {
        tokio::select! {
            biased; // a Ctrl-C also reaches the app: hear it before noticing the app is gone
            () = &mut running => break,
            signal = signals.next() => {
                if let Signal::Terminate = signal {
                    stopping = true;
                    handle.shutdown();
                }
            }
            _ = check.tick(), if !stopping => {
                if let Ok(Some(status)) = app.0.try_wait() {
                    result = Err(format!("the app exited ({status}); stopping sidewire"));
                    stopping = true;
                    handle.shutdown();
                }
            }
        }
    }
    drop(app);
    result
}

/// Waits until the app accepts connections on `addr`, or fails if it exits first.
async fn wait_for_app(app: &mut AppProcess, addr: SocketAddr) -> Result<(), String> {
    let start = Instant::now();
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = app.0.try_wait() {
            return Err(format!("the app exited ({status}) before listening on {addr} (is the port in use?)"));
        }
        if start.elapsed() > APP_START {
            return Err(format!("the app did not listen on {addr} within {APP_START:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
