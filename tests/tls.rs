//! TLS termination (SPEC §1, §2 `tls`): ALPN h2 and http/1.1, TLS 1.2+, and certificate
//! reload from file changes and from `Handle::reload` (what SIGHUP does).
// Helpers outside #[test] fns panic on failure too (the lint only exempts #[test]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use http::Version;
use rustls::ProtocolVersion;
use support::tls::{self, Cert, CertFiles, Client};
use support::*;

/// How long a reload may take to show before the test fails (a deadline, not a delay).
const DEADLINE: Duration = Duration::from_secs(10);

async fn start(backend: &FakeBackend, files: &CertFiles, watch_interval: &str) -> TestServer {
    let yaml = format!("backend: {{ url: \"{}\" }}\n{}", backend.url(), files.yaml(watch_interval));
    TestServer::start(&yaml).await
}

fn tls_addr(server: &TestServer) -> SocketAddr {
    server.tls.unwrap()
}

/// The certificate a new connection is served.
async fn served_cert(client: &Client, addr: SocketAddr) -> rustls::pki_types::CertificateDer<'static> {
    tls::peer_cert(&client.connect(addr).await.unwrap())
}

/// Polls new connections until they are served `want`, or fails at the deadline.
async fn wait_for_cert(client: &Client, addr: SocketAddr, want: &Cert) {
    let until = tokio::time::Instant::now() + DEADLINE;
    while served_cert(client, addr).await != want.der {
        assert!(tokio::time::Instant::now() < until, "new certificate not served within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `sidewire_reloads_total{subject="tls",outcome="…"}`, 0 when not counted yet.
fn reloads(server: &TestServer, outcome: &str) -> u64 {
    let prefix = format!("sidewire_reloads_total{{subject=\"tls\",outcome=\"{outcome}\"}} ");
    let text = server.handle.metrics().encode();
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |n| n.trim().parse().unwrap())
}

/// Polls until the watcher has counted more than `seen` failed certificate reloads.
async fn wait_for_failed_reload(server: &TestServer, seen: u64) -> u64 {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let n = reloads(server, "failed");
        if n > seen {
            return n;
        }
        assert!(tokio::time::Instant::now() < until, "the watcher never tried the bad certificate");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn http2_over_tls_with_alpn_h2() {
    let backend = FakeBackend::echo().await;
    let cert = Cert::new("sidewire test");
    let files = CertFiles::new(&cert);
    let server = start(&backend, &files, "1h").await;

    let stream = Client::new(&[&cert], &[b"h2", b"http/1.1"]).connect(tls_addr(&server)).await.unwrap();
    assert_eq!(tls::alpn(&stream).as_deref(), Some(&b"h2"[..]));
    let res = tls::get(stream, Version::HTTP_2, "/over/h2?q=1").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_2);

    let seen = backend.recorded();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].uri, "/over/h2?q=1");
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");
    assert_eq!(seen[0].headers["x-forwarded-host"], "localhost");
    server.stop().await;
}

#[tokio::test]
async fn http1_over_tls() {
    let backend = FakeBackend::echo().await;
    let cert = Cert::new("sidewire test");
    let files = CertFiles::new(&cert);
    let server = start(&backend, &files, "1h").await;

    let stream = Client::new(&[&cert], &[b"http/1.1"]).connect(tls_addr(&server)).await.unwrap();
    assert_eq!(tls::alpn(&stream).as_deref(), Some(&b"http/1.1"[..]));
    let res = tls::get(stream, Version::HTTP_11, "/over/h1").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.version(), Version::HTTP_11);
    let seen = backend.recorded();
    assert_eq!(seen[0].uri, "/over/h1");
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");

    // A client offering no ALPN at all gets HTTP/1.1.
    let stream = Client::new(&[&cert], &[]).connect(tls_addr(&server)).await.unwrap();
    assert_eq!(tls::alpn(&stream), None);
    assert_eq!(tls::get(stream, Version::HTTP_11, "/no-alpn").await.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn tls12_and_tls13_accepted() {
    let backend = FakeBackend::echo().await;
    let cert = Cert::new("sidewire test");
    let files = CertFiles::new(&cert);
    let server = start(&backend, &files, "1h").await;

    // rustls implements nothing older than TLS 1.2, so 1.0/1.1 can never be offered;
    // what matters is that 1.2-only clients still get in.
    let tls12 = Client::with_versions(&[&cert], &[b"h2"], &[&rustls::version::TLS12]);
    let stream = tls12.connect(tls_addr(&server)).await.unwrap();
    assert_eq!(tls::protocol_version(&stream), Some(ProtocolVersion::TLSv1_2));
    assert_eq!(tls::get(stream, Version::HTTP_2, "/tls12").await.status(), 200);

    let stream = Client::new(&[&cert], &[b"h2"]).connect(tls_addr(&server)).await.unwrap();
    assert_eq!(tls::protocol_version(&stream), Some(ProtocolVersion::TLSv1_3));
    server.stop().await;
}

#[tokio::test]
async fn certificate_reloaded_when_files_change() {
    let backend = FakeBackend::echo().await;
    let (old, new) = (Cert::new("old"), Cert::new("new"));
    let files = CertFiles::new(&old);
    let server = start(&backend, &files, "100ms").await;
    let client = Client::new(&[&old, &new], &[b"h2"]);

    // A connection opened before the change keeps working on the old certificate.
    let before = client.connect(tls_addr(&server)).await.unwrap();
    assert_eq!(tls::peer_cert(&before), old.der);

    files.write(&new.cert_pem, &new.key_pem);
    wait_for_cert(&client, tls_addr(&server), &new).await;
    assert!(reloads(&server, "ok") >= 1);
    assert_eq!(tls::get(before, Version::HTTP_2, "/still-open").await.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn bad_certificate_keeps_the_old_one() {
    let backend = FakeBackend::echo().await;
    let (old, other, unrelated) = (Cert::new("old"), Cert::new("other"), Cert::new("unrelated"));
    let files = CertFiles::new(&old);
    let server = start(&backend, &files, "100ms").await;
    let client = Client::new(&[&old, &other], &[b"h2"]);
    let addr = tls_addr(&server);
    let garbage = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n";
    // The right leaf, then a broken block (say, a truncated copy): serving the leaf alone
    // would break every client that needs the intermediate.
    let broken_chain = format!("{}-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n", other.cert_pem);

    // One file at a time, each seen by the watcher before the next, so every state it
    // tries is known and bad.
    let steps: [(&std::path::Path, &str, &str); 5] = [
        (&files.cert, garbage, "garbage certificate"),
        (&files.key, &other.key_pem, "garbage certificate, good key"),
        (&files.cert, &broken_chain, "chain with a broken block, matching key"),
        (&files.key, &unrelated.key_pem, "chain with a broken block, wrong key"),
        (&files.cert, &other.cert_pem, "valid certificate, someone else's key"),
    ];
    for (n, (path, pem, what)) in (1..).zip(steps) {
        if path == files.cert {
            files.write_cert(pem);
        } else {
            files.write_key(pem);
        }
        assert_eq!(wait_for_failed_reload(&server, n - 1).await, n, "{what}");
        assert_eq!(served_cert(&client, addr).await, old.der, "{what}");
    }
    assert_eq!(reloads(&server, "ok"), 0);

    // The watcher is still alive: the matching key fixes it.
    files.write_key(&other.key_pem);
    wait_for_cert(&client, addr, &other).await;
    server.stop().await;
}

#[tokio::test]
async fn handle_reload_reloads_the_certificate() {
    let backend = FakeBackend::echo().await;
    let (old, new, moved) = (Cert::new("old"), Cert::new("new"), Cert::new("moved"));
    let files = CertFiles::new(&old);
    // The watcher is effectively off: only the explicit reload may pick the change up.
    let yaml = format!("backend: {{ url: \"{}\" }}\n{}", backend.url(), files.yaml("1h"));
    let server = TestServer::start(&yaml).await;
    let client = Client::new(&[&old, &new, &moved], &[b"h2"]);
    let addr = tls_addr(&server);

    files.write(&new.cert_pem, &new.key_pem);
    let restart = server.handle.reload(config(&yaml)).await.unwrap();
    assert!(restart.is_empty(), "{restart:?}");
    assert_eq!(served_cert(&client, addr).await, new.der);

    // A reload may also point at other files.
    let elsewhere = CertFiles::new(&moved);
    let yaml = format!("backend: {{ url: \"{}\" }}\n{}", backend.url(), elsewhere.yaml("1h"));
    server.handle.reload(config(&yaml)).await.unwrap();
    assert_eq!(served_cert(&client, addr).await, moved.der);
    assert_eq!(tls::get(client.connect(addr).await.unwrap(), Version::HTTP_2, "/").await.status(), 200);
    server.stop().await;
}
