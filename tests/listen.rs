//! Binding (SPEC §10, one instance per listen address; STYLE 4): `App::bind` refuses an
//! address another process serves (also when two start at once), binds port 0, binds
//! again where an instance has just exited, and its serving threads are gone once `run`
//! returns.
// Helpers outside #[test] fns panic on failure too (the lint only exempts #[test]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use sidewire::{App, BindError, Config};
use support::tls::{Cert, CertFiles};
use support::*;

/// Tests here count this process's serving threads: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn yaml(backend: &FakeBackend) -> String {
    format!("workers: 2\nbackend: {{ url: \"{}\" }}\n", backend.url())
}

/// Binds `config` and expects a listen error for `what` on `addr` that says why.
async fn refused(config: Config, what: &str, addr: SocketAddr) {
    let err = App::bind(config).await.err().expect("bind succeeded on a served address");
    let message = err.to_string();
    assert!(matches!(err, BindError::Listen { what: w, addr: a, .. } if w == what && a == addr), "{err:?}");
    assert!(message.contains(&addr.to_string()), "{message}");
    assert!(message.contains("another process already serves this address"), "{message}");
}

#[tokio::test]
async fn bind_refuses_a_public_address_held_by_another_listener() {
    let _serial = SERIAL.lock().await;
    let backend = FakeBackend::echo().await;
    // A plain listener, no SO_REUSEPORT: what any other program would hold.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = config(&yaml(&backend));
    config.listen = held.local_addr().unwrap();
    refused(config, "listen", held.local_addr().unwrap()).await;
}

#[tokio::test]
async fn bind_refuses_a_public_address_another_sidewire_serves() {
    let _serial = SERIAL.lock().await;
    let backend = FakeBackend::echo().await;
    let first = TestServer::start(&yaml(&backend)).await;
    let mut second = config(&yaml(&backend));
    second.listen = first.public;
    refused(second, "listen", first.public).await;
    // The first one is untouched.
    assert_eq!(http().get(first.url("/still")).send().await.unwrap().status(), 200);
    first.stop().await;
}

#[tokio::test]
async fn bind_refuses_taken_tls_and_admin_addresses() {
    let _serial = SERIAL.lock().await;
    let backend = FakeBackend::echo().await;
    let files = CertFiles::new(&Cert::new("listen"));
    let first = TestServer::start(&format!("{}{}", yaml(&backend), files.yaml("2s"))).await;
    let tls = first.tls.unwrap();

    let mut second = config(&format!("{}{}", yaml(&backend), files.yaml("2s")));
    second.tls.as_mut().unwrap().listen = tls;
    refused(second, "tls.listen", tls).await;

    // The admin listener binds without SO_REUSEPORT: the OS refuses, the message says why.
    let mut second = config(&yaml(&backend));
    second.admin.listen = first.admin;
    refused(second, "admin.listen", first.admin).await;
    first.stop().await;
}

#[tokio::test]
async fn of_two_instances_binding_one_address_at_once_exactly_one_wins() {
    let _serial = SERIAL.lock().await;
    let backend = FakeBackend::echo().await;
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut config = config(&yaml(&backend));
    config.listen = free;
    // Interleaved on one runtime: each yields while its serving threads bind.
    let (a, b) = tokio::join!(App::bind(config.clone()), App::bind(config));
    let won = [&a, &b].iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "{:?} / {:?}", a.as_ref().err(), b.as_ref().err());
    let lost = a.err().or(b.err()).unwrap();
    assert!(matches!(lost, BindError::Listen { what: "listen", addr, .. } if addr == free), "{lost:?}");
}

#[tokio::test]
async fn an_address_binds_again_once_its_instance_has_exited() {
    let _serial = SERIAL.lock().await;
    let backend = FakeBackend::echo().await;
    let first = TestServer::start(&yaml(&backend)).await;
    let port = first.public;
    assert_ne!(port.port(), 0);
    // A served connection leaves TIME_WAIT behind on the server side after the drain.
    assert_eq!(http().get(first.url("/once")).send().await.unwrap().status(), 200);
    first.stop().await;

    let mut again = config(&yaml(&backend));
    again.listen = port;
    let second = TestServer::start_config(again).await;
    assert_eq!(second.public, port);
    assert_eq!(http().get(second.url("/twice")).send().await.unwrap().status(), 200);
    second.stop().await;

    // An app bound but never run lets go of the address too.
    let mut unrun = config(&yaml(&backend));
    unrun.listen = port;
    drop(App::bind(unrun.clone()).await.unwrap());
    drop(App::bind(unrun).await.unwrap());
}

/// Names of this process's threads (Linux: `/proc/self/task/*/comm`).
#[cfg(target_os = "linux")]
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_owned())
        .collect()
}

/// How many serving threads this process has.
#[cfg(target_os = "linux")]
fn serving() -> usize {
    thread_names().into_iter().filter(|n| n.starts_with("sidewire-")).count()
}

/// Polls until this process has no serving thread left. Threads of an app that was
/// dropped unrun, or whose bind failed, exit on their own shortly after.
#[cfg(target_os = "linux")]
async fn wait_no_serving_threads() {
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while serving() > 0 {
        assert!(tokio::time::Instant::now() < until, "{:?}", thread_names());
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn run_joins_the_serving_threads() {
    let _serial = SERIAL.lock().await;
    wait_no_serving_threads().await;
    let backend = FakeBackend::echo().await;
    let server = TestServer::start(&yaml(&backend)).await;
    assert_eq!(serving(), 2);
    assert_eq!(http().get(server.url("/x")).send().await.unwrap().status(), 200);
    server.stop().await;
    // Joined: gone by the time `run` returns, not eventually.
    assert_eq!(serving(), 0, "{:?}", thread_names());

    // A failed bind stops the threads it had started (here the admin address is taken).
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = config(&yaml(&backend));
    config.admin.listen = held.local_addr().unwrap();
    assert!(App::bind(config).await.is_err());
    wait_no_serving_threads().await;
}
