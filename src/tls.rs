//! TLS termination: rustls (ring provider, TLS 1.2+, ALPN h2 + http/1.1) with a
//! certificate that is reloaded on SIGHUP and whenever its files change.
//!
//! Owns: the current `ServerConfig` behind an `ArcSwap`; each accepted connection takes
//! the config current at that moment, so a reload never touches open connections.
//! Invariant: a certificate that fails to load or does not match its key is refused
//! and the previous one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: unreadable PEM certificate: {detail}")]
    BadCert { path: PathBuf, detail: String },
    #[error("{path}: no PEM certificate found")]
    NoCert { path: PathBuf },
    #[error("{path}: no usable PEM private key: {detail}")]
    BadKey { path: PathBuf, detail: String },
    #[error("certificate rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// File identity used to notice a change: modification time and length of both files.
type Stamp = Option<[(SystemTime, u64); 2]>;

/// The live TLS configuration.
pub struct Tls {
    current: ArcSwap<ServerConfig>,
    paths: Mutex<(PathBuf, PathBuf)>,
    stamp: Mutex<Stamp>,
}

impl Tls {
    /// Loads the certificate and key; fails when either is unusable.
    pub async fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let stamp = stamp(cert, key).await;
        let config = build(cert, key).await?;
        Ok(Self {
            current: ArcSwap::from(config),
            paths: Mutex::new((cert.to_owned(), key.to_owned())),
            stamp: Mutex::new(stamp),
        })
    }

    /// An acceptor using the certificate current now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Points at new files (config reload); takes effect at the next [`Tls::reload`].
    pub fn set_paths(&self, cert: &Path, key: &Path) {
        *self.paths.lock().unwrap_or_else(PoisonError::into_inner) = (cert.to_owned(), key.to_owned());
    }

    fn paths(&self) -> (PathBuf, PathBuf) {
        self.paths.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Loads the files again; on failure the old certificate stays.
    pub async fn reload(&self) -> Result<(), TlsError> {
        let (cert, key) = self.paths();
        let new_stamp = stamp(&cert, &key).await;
        let config = build(&cert, &key).await?;
        self.current.store(config);
        *self.stamp.lock().unwrap_or_else(PoisonError::into_inner) = new_stamp;
        Ok(())
    }

    /// Whether the files differ from the last successful (or attempted) load.
    async fn changed(&self) -> bool {
        let (cert, key) = self.paths();
        let now = stamp(&cert, &key).await;
        let mut last = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = now.is_some() && *last != now;
        if changed {
            // Remember even a failed attempt so a broken file is reported once, not every tick.
            *last = now;
        }
        changed
    }

    /// Polls the files every `interval` until shutdown and reloads when they change.
    /// Polling (rather than inotify) also sees Kubernetes' symlink-swapped secrets.
    pub async fn watch(self: Arc<Self>, interval: Duration, metrics: Arc<Metrics>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if self.changed().await {
                self.reload_and_log(&metrics, "file change").await;
            }
        }
    }

    /// Reloads, logging and counting the outcome.
    pub async fn reload_and_log(&self, metrics: &Metrics, why: &'static str) {
        match self.reload().await {
            Ok(()) => {
                metrics.reload("tls", "ok");
                tracing::info!(trigger = why, "TLS certificate reloaded");
            }
            Err(e) => {
                metrics.reload("tls", "failed");
                tracing::warn!(trigger = why, error = %e, "TLS certificate reload failed; keeping the previous certificate");
            }
        }
    }
}

async fn stamp(cert: &Path, key: &Path) -> Stamp {
    let a = tokio::fs::metadata(cert).await.ok()?;
    let b = tokio::fs::metadata(key).await.ok()?;
    Some([(a.modified().ok()?, a.len()), (b.modified().ok()?, b.len())])
}

async fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    tokio::fs::read(path).await.map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

async fn build(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_pem = read(cert_path).await?;
    let key_pem = read(key_path).await?;
    // One unreadable block fails the load: skipping it would serve an incomplete chain
    // that clients reject, while the previous certificate still works.
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadCert { path: cert_path.to_owned(), detail: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert { path: cert_path.to_owned() });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsError::BadKey { path: key_path.to_owned(), detail: e.to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
