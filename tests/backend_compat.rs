//! A backend written with Python's standard library (`http.server`), as many legacy apps
//! are: it reads request bodies by `Content-Length` only, so sidewire's auth calls and
//! webhooks must carry one (SPEC §7), never a chunked body.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

use serde_json::Value;
use support::realtime::{sse, sse_try, within};
use support::{TestServer, http};

const BACKEND: &str = r#"
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get('Content-Length') or 0)
        raw = self.rfile.read(n)
        body = json.loads(raw) if raw else None
        if self.path == '/realtime/auth':
            ok = bool(body) and body.get('token') == 'py-token'
            out = json.dumps({'user': 'py', 'channels': ['*']} if ok else {}).encode()
            self.send_response(200 if ok else 401)
        else:
            print(json.dumps({'path': self.path, 'te': self.headers.get('Transfer-Encoding'), 'body': body}), flush=True)
            out = b'{}'
            self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *args):
        pass
s = http.server.HTTPServer(('127.0.0.1', 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

struct Python {
    child: Child,
    out: BufReader<ChildStdout>,
    port: u16,
}

impl Python {
    fn start() -> Self {
        let mut child = Command::new("python3")
            .args(["-c", BACKEND])
            .stdout(Stdio::piped())
            .spawn()
            .expect("the compatibility tests need python3 on PATH");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        Self { child, out, port: line.trim().parse().unwrap() }
    }

    /// The next webhook POST the backend printed.
    fn next_post(&mut self) -> Value {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_python_http_server_backend_reads_auth_calls_and_webhooks() {
    let mut py = Python::start();
    let yaml = format!(
        r#"
backend: {{ url: "http://127.0.0.1:{}" }}
channels: [ {{ match: "*" }} ]
webhooks: {{ events: [connect], secret: "s" }}
"#,
        py.port
    );
    let server = TestServer::start(&yaml).await;
    // The backend allows the token only if it could read the JSON body.
    let refused = sse_try(&server, "channel=room:1&token=wrong").await.err().expect("a wrong token is refused");
    assert_eq!(refused.status, 401);
    let _stream = sse(&server, "channel=room:1&token=py-token").await;
    let post = tokio::task::spawn_blocking(move || {
        let post = py.next_post();
        (py, post)
    });
    let (_py, post) = within("the connect webhook", post).await.unwrap();
    assert_eq!(post["path"], "/realtime/events");
    assert_eq!(post["te"], Value::Null, "no Transfer-Encoding");
    assert_eq!(post["body"]["type"], "connect");
    assert_eq!(post["body"]["user"], "py");
    drop(http());
    server.stop().await;
}
