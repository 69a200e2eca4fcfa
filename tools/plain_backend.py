#!/usr/bin/env python3
"""A plain threaded HTTP/1.1 backend for checks: GET /big answers --big-bytes bytes, any
other GET answers `ok`, POST reads its Content-Length body and answers `ok`.

    tools/plain_backend.py PORT [--big-bytes N]
"""

import argparse
import http.server


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    big = b""

    def log_message(self, *args):
        pass

    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.answer(self.big if self.path.startswith("/big") else b"ok")

    def do_POST(self):  # noqa: N802
        n = int(self.headers.get("Content-Length") or 0)
        while n > 0:
            chunk = self.rfile.read(min(n, 65536))
            if not chunk:
                return
            n -= len(chunk)
        self.answer(b"ok")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--big-bytes", type=int, default=2 << 20)
    args = ap.parse_args()
    Handler.big = b"x" * args.big_bytes
    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.request_queue_size = 1024
    server.serve_forever()


if __name__ == "__main__":
    main()
