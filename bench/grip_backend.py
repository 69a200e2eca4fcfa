#!/usr/bin/env python3
"""Tiny GRIP backend for the Pushpin leg of bench/fanout.sh (127.0.0.1 only).

- GET  /sse?channel=C  -> 200 text/event-stream, `Grip-Hold: stream`, `Grip-Channel: C`
                          (Pushpin holds the client open and streams published items).
- POST /ws?channel=C   -> WebSocket-over-HTTP (Pushpin `over_http` route): an OPEN event is
                          accepted with a GRIP `subscribe` control message for channel C;
                          CLOSE is answered with CLOSE; everything else gets an empty reply.
Usage: grip_backend.py PORT
"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


def channel_of(path):
    return parse_qs(urlparse(path).query).get("channel", ["bench"])[0]


def ws_event(name, content=None):
    if content is None:
        return name.encode() + b"\r\n"
    data = content.encode()
    return b"%s %x\r\n%s\r\n" % (name.encode(), len(data), data)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Grip-Hold", "stream")
        self.send_header("Grip-Channel", channel_of(self.path))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        out = b""
        if body.startswith(b"OPEN"):
            control = '{"type":"subscribe","channel":"%s"}' % channel_of(self.path)
            out = ws_event("OPEN") + ws_event("TEXT", "c:" + control)
        elif b"CLOSE" in body:
            out = ws_event("CLOSE")
        self.send_response(200)
        self.send_header("Content-Type", "application/websocket-events")
        self.send_header("Sec-WebSocket-Extensions", "grip")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


if __name__ == "__main__":
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.request_queue_size = 1024
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
