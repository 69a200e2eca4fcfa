//! Echo server for the Autobahn testsuite's fuzzingclient (`bench/autobahn.sh`).
//!
//! Every request is upgraded exactly as sidewire upgrades a `websocket` route, through
//! [`sidewire::ws::frames`]: the same handshake check and 101, the same tungstenite
//! config, the same read-error → close-code mapping (1009, 1007, 1002) and the same
//! closing handshake. Only the session differs: text and binary messages are echoed
//! back instead of being read as the JSON protocol.
//!
//! One setting differs from production's default: the message size. Autobahn's 9.*
//! cases send messages of up to 16 MiB, so `--max-message-bytes` defaults to 16 MiB, the
//! most `limits.max_message_bytes` accepts (production's default is 64 KiB).
//!
//! ```sh
//! cargo run --release --example ws_echo -- 9001 --max-message-bytes 16777216
//! kosoku -m fuzzingclient -p 4 -x '12.*' -x '13.*' -o bench/out/autobahn 127.0.0.1:9001
//! ```
//! It listens on 127.0.0.1 only and runs until killed.

use std::convert::Infallible;
use std::net::Ipv4Addr;

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use sidewire::respond::{Body, empty};
use sidewire::ws::frames;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::Role;

#[derive(Parser)]
struct Args {
    /// Port on 127.0.0.1.
    #[arg(default_value_t = 9001)]
    port: u16,
    /// Largest message (and frame) accepted; larger ones close with 1009.
    #[arg(long, default_value_t = 16 << 20)]
    max_message_bytes: usize,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.port)).await?;
    eprintln!("ws_echo listening on ws://{}", listener.local_addr()?);
    let max = args.max_message_bytes;
    loop {
        // A failed accept (e.g. out of file descriptors) must not end the run.
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                eprintln!("accept: {e}");
                continue;
            }
        };
        tokio::spawn(async move {
            let service = service_fn(move |req| async move { Ok::<_, Infallible>(upgrade(req, max)) });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(tcp), service).with_upgrades();
            if let Err(e) = conn.await {
                eprintln!("connection: {e}");
            }
        });
    }
}

/// Answers 101 (or the handshake's rejection, as sidewire does) and echoes on the upgrade.
fn upgrade(mut req: Request<Incoming>, max: usize) -> Response<Body> {
    let handshake = match frames::handshake(&req) {
        Ok(key) => key,
        Err(rejection) => return rejection.into_response(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(io) => echo(io, max).await,
            Err(e) => eprintln!("upgrade: {e}"),
        }
    });
    frames::accept(&handshake).map(|()| empty())
}

async fn echo(io: Upgraded, max: usize) {
    let config = Some(frames::config(max));
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, config).await;
    while let Some(frame) = ws.next().await {
        let written = match frame {
            Ok(msg @ (Frame::Text(_) | Frame::Binary(_))) => ws.send(msg).await,
            // tungstenite answers pings on the next write; flush so the pong goes now.
            Ok(Frame::Ping(_) | Frame::Pong(_) | Frame::Frame(_)) => ws.flush().await,
            Ok(Frame::Close(_)) => return frames::finish_close(&mut ws).await,
            Err(e) => {
                if let Some(c) = frames::close_for(&e) {
                    frames::fail(&mut ws, c).await;
                }
                return;
            }
        };
        // A failed write means the peer is gone: nothing left to close.
        if written.is_err() {
            return;
        }
    }
}
