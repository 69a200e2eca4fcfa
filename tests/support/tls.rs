//! TLS test helpers: self-signed certificates written to a tempdir, and a rustls client
//! (ring provider) that trusts exactly the certificates a test hands it.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate for `localhost` and its private key, PEM and DER.
pub struct Cert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Cert {
    /// A fresh key pair and certificate whose subject CN is `cn` (so each call gives a
    /// different subject, key and serial).
    pub fn new(cn: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        Self { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }
}

/// Certificate files in a tempdir, at fixed paths a test can overwrite.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl CertFiles {
    pub fn new(initial: &Cert) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = Self { cert: dir.path().join("cert.pem"), key: dir.path().join("key.pem"), _dir: dir };
        files.write(&initial.cert_pem, &initial.key_pem);
        files
    }

    /// Replaces both files, each atomically (write + rename) so the watcher never reads
    /// half a file; it may still see the new certificate with the old key in between.
    pub fn write(&self, cert_pem: &str, key_pem: &str) {
        self.write_cert(cert_pem);
        self.write_key(key_pem);
    }

    pub fn write_cert(&self, pem: &str) {
        replace(&self.cert, pem);
    }

    pub fn write_key(&self, pem: &str) {
        replace(&self.key, pem);
    }

    /// The `tls:` section of a sidewire config for these files.
    pub fn yaml(&self, watch_interval: &str) -> String {
        format!(
            "tls: {{ listen: \"127.0.0.1:0\", cert: \"{}\", key: \"{}\", watch_interval: {watch_interval} }}\n",
            self.cert.display(),
            self.key.display()
        )
    }
}

fn replace(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// What a client needs to connect: trusted certificates, ALPN and TLS versions.
pub struct Client {
    config: Arc<ClientConfig>,
}

impl Client {
    /// TLS 1.2 and 1.3, trusting `trusted`, offering `alpn`.
    pub fn new(trusted: &[&Cert], alpn: &[&[u8]]) -> Self {
        Self::with_versions(trusted, alpn, rustls::ALL_VERSIONS)
    }

    pub fn with_versions(
        trusted: &[&Cert],
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Self {
        let mut roots = RootCertStore::empty();
        for c in trusted {
            roots.add(c.der.clone()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Self { config: Arc::new(config) }
    }

    /// Connects and completes the handshake for `localhost`.
    pub async fn connect(&self, addr: std::net::SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        TlsConnector::from(Arc::clone(&self.config)).connect(name, tcp).await
    }
}

/// The leaf certificate the server presented.
pub fn peer_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned()
}

pub fn alpn(stream: &TlsStream<TcpStream>) -> Option<Vec<u8>> {
    stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
}

pub fn protocol_version(stream: &TlsStream<TcpStream>) -> Option<ProtocolVersion> {
    stream.get_ref().1.protocol_version()
}

/// Sends one GET over an established TLS stream, HTTP/2 or HTTP/1.1 as `version` says,
/// and returns the response with its body read.
pub async fn get(stream: TlsStream<TcpStream>, version: Version, path: &str) -> Response<Bytes> {
    let io = TokioIo::new(stream);
    let res = if version == Version::HTTP_2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://localhost{path}")).body(Empty::<Bytes>::new()).unwrap();
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(path).header("host", "localhost").body(Empty::<Bytes>::new()).unwrap();
        sender.send_request(req).await.unwrap()
    };
    let (parts, body) = res.into_parts();
    Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}
