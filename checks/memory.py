#!/usr/bin/env python3
"""Memory under hostile input (issue 9, SPEC §9): run by checks/memory.sh.

Starts one sidewire per probe (the shipped config.yaml on free loopback ports, plus the
probe's `limits`), runs the probe, and prints the server's RSS before and after and its
peak (VmRSS / VmHWM from /proc/PID/status). Standard library only; 127.0.0.1 only; every
process it starts is stopped on exit. Usage: memory.py path/to/sidewire
"""

import ctypes
import http.client
import json
import os
import random
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KB60 = 60_000
# Hostile data: 60 kB of `[0,0,...]`. A JSON tree of it (what a re-parse builds) is ~16x
# its text, so any path that parses stored data shows in the figures.
DATA = "[" + ",".join(["0"] * (KB60 // 2 - 1)) + "]"
assert len(DATA) <= 65_536  # limits.max_message_bytes


def mib(kb):
    return f"{kb / 1024:7.1f}"


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One sidewire on the shipped config with free ports and the probe's limits."""

    def __init__(self, binary, tmp, limits):
        self.port, self.admin = free_port(), free_port()
        with open(os.path.join(ROOT, "config.yaml")) as f:
            text = f.read()
        text = text.replace("127.0.0.1:8080", f"127.0.0.1:{self.port}")
        text = text.replace("127.0.0.1:9090", f"127.0.0.1:{self.admin}")
        text = text.replace("127.0.0.1:3000", f"127.0.0.1:{free_port()}")  # no backend needed
        assert "\nlimits:" not in text, "config.yaml grew a limits block: merge instead of append"
        if limits:
            text += "limits: " + json.dumps(limits) + "\n"
        path = os.path.join(tmp, f"config-{self.port}.yaml")
        with open(path, "w") as f:
            f.write(text)
        self.log = open(os.path.join(tmp, f"sidewire-{self.port}.log"), "w")
        env = dict(os.environ, RUST_LOG="warn")
        self.proc = subprocess.Popen(
            [binary, "--config", path], stdout=self.log, stderr=self.log, env=env, preexec_fn=die_with_parent
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.admin_request("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sidewire did not become ready (log in {self.log.name})")

    def admin_request(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=60)
        try:
            headers = {"content-type": "application/json"} if body is not None else {}
            conn.request(method, path, body=body, headers=headers)
            res = conn.getresponse()
            return res.status, res.read()
        finally:
            conn.close()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def die_with_parent():
    """In the child: SIGKILL when this script dies, however it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def rand(n=10):
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=n))


# --- WebSocket: a minimal RFC 6455 client over a raw socket -------------------------


def ws_connect(port, source):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed during the WebSocket handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"WebSocket handshake refused: {head[:80]!r}")
    return sock, bytearray(head.split(b"\r\n\r\n", 1)[1])


def ws_send(sock, text):
    payload = text.encode()
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    # An all-zero masking key: valid framing, and no per-byte work in Python.
    sock.sendall(head + b"\0\0\0\0" + payload)


def ws_recv(sock, buf):
    """Next frame's (opcode, payload); `buf` holds bytes already read."""

    def need(k):
        while len(buf) < k:
            chunk = sock.recv(65536)
            if not chunk:
                raise EOFError
            buf.extend(chunk)

    need(2)
    op, n = buf[0] & 0x0F, buf[1] & 0x7F
    at = 2
    if n == 126:
        need(4)
        n, at = int.from_bytes(buf[2:4], "big"), 4
    elif n == 127:
        need(10)
        n, at = int.from_bytes(buf[2:10], "big"), 10
    need(at + n)
    payload = bytes(buf[at : at + n])
    del buf[: at + n]
    return op, payload


def flood_publisher(port, source, until, counts, lock):
    """Publishes 60 kB to a new `room:<random>` at 9/s (under limits.client_rate)."""
    try:
        sock, buf = ws_connect(port, source)
    except (OSError, RuntimeError):
        with lock:
            counts["failed"] += 1
        return
    try:
        next_at = time.monotonic()
        while time.monotonic() < until:
            ws_send(sock, '{"type":"publish","channel":"room:%s","data":%s}' % (rand(), DATA))
            while True:
                op, payload = ws_recv(sock, buf)
                if op == 0x8:
                    raise EOFError
                if op == 0x1 and b'"published"' in payload:
                    key = "published"
                elif op == 0x1 and b'"error"' in payload:
                    key = "refused"
                else:
                    continue  # welcome, pings, ...
                with lock:
                    counts[key] += 1
                break
            next_at += 1 / 9
            time.sleep(max(0.0, next_at - time.monotonic()))
    except (OSError, EOFError):
        with lock:
            counts["closed"] += 1
    finally:
        sock.close()


# --- probes --------------------------------------------------------------------------


def probe_ws_flood(server):
    counts = {"published": 0, "refused": 0, "closed": 0, "failed": 0}
    lock = threading.Lock()
    until = time.monotonic() + 10
    # One loopback address per client: each is its own anonymous identity (per-IP budget).
    threads = [
        threading.Thread(target=flood_publisher, args=(server.port, f"127.0.0.{2 + i}", until, counts, lock))
        for i in range(30)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return f"{counts['published']} x 60 kB published ({counts['published'] * KB60 / 2**20:.0f} MiB), " + (
        f"{counts['refused']} refused, {counts['closed']} closed, {counts['failed']} failed to connect"
    )


def probe_longpoll(server):
    channels = [f"lp:{i}" for i in range(10)]
    query = "&".join(f"channel={c}" for c in channels)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", f"/poll?{query}&timeout=0")
    start = json.loads(conn.getresponse().read())["cursor"]
    conn.close()  # the publishes below may outlast the server's keep-alive idle timeout
    for _ in range(100):
        batch = [{"channel": c, "data": json.loads(DATA)} for c in channels]
        status, body = server.admin_request("POST", "/publish", json.dumps({"messages": batch}, separators=(",", ":")))
        assert status == 200, body[:200]
    before = status_now(server)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.request("GET", f"/poll?{query}&since={start}&timeout=0")
    res = conn.getresponse()
    body = res.read()
    conn.close()
    answer = json.loads(body)
    return before, (
        f"replayed {len(answer['messages'])} messages ({len(body) / 2**20:.0f} MiB body), "
        f"reset {len(answer.get('reset', []))} channels"
    )


def probe_fanout(server):
    channels = [f"fan:{i}" for i in range(2000)]
    body = '{"channels":%s,"data":%s}' % (json.dumps(channels), DATA)
    status, reply = server.admin_request("POST", "/publish", body)
    assert status == 200, reply[:200]
    return f"1 publish to 2,000 channels x 60 kB ({2000 * KB60 / 2**20:.0f} MiB if copied per channel)"


def probe_idempotency(server):
    statuses = []
    for i in range(40):
        key = (str(i) + "k" * 900_000)[:900_000]
        body = json.dumps({"channel": f"idem:{i}", "data": 1, "idempotency_key": key})
        statuses.append(server.admin_request("POST", "/publish", body)[0])
    return "40 x 900 kB keys: statuses " + ",".join(f"{s}x{statuses.count(s)}" for s in sorted(set(statuses)))


def status_now(server):
    time.sleep(0.3)
    return status(server.proc.pid)


PROBES = [
    ("30 WS x 60 kB to new room:* for 10 s", {}, probe_ws_flood, "limits.history_bytes (64 MiB)"),
    (
        "long-poll from the start of 10 ch x 100 x 60 kB",
        # 10 x 100 x 60 kB is over the default replay_bytes (4 MiB per request), which
        # would answer `reset` without replaying: raised so the whole replay happens.
        {"replay_bytes": 64 << 20},
        probe_longpoll,
        "limits.replay_bytes per request (64 MiB here)",
    ),
    (
        "1 admin publish to 2,000 ch x 60 kB",
        {"channels_per_publish": 2000},
        probe_fanout,
        "one copy of the data (SPEC §9); limits.channels_per_publish",
    ),
    ("40 idempotency keys of 900 kB", {}, probe_idempotency, "200-byte key cap (400); admin body 1 MiB"),
]


def main():
    binary = sys.argv[1]
    # `timeout` sends SIGTERM: unwind, so every `finally` stops its sidewire.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    rows = []
    with tempfile.TemporaryDirectory(prefix="sidewire-memory-") as tmp:
        for name, limits, probe, bound in PROBES:
            server = Server(binary, tmp, limits)
            try:
                idle = status_now(server)
                result = probe(server)
                before, note = result if isinstance(result, tuple) else (idle, result)
                after = status_now(server)
                if server.proc.poll() is not None:
                    raise RuntimeError(f"sidewire exited during the probe (log in {server.log.name})")
            finally:
                server.stop()
            rows.append((name, before, after, note, bound))
            print(
                f"{name}: RSS {mib(before['VmRSS']).strip()} -> {mib(after['VmRSS']).strip()} MiB, "
                f"peak {mib(before['VmHWM']).strip()} -> {mib(after['VmHWM']).strip()} MiB ({note}; bound: {bound})",
                flush=True,
            )
    print()
    print("| probe | RSS before (MiB) | RSS after (MiB) | peak (MiB) | limit that bounds it |")
    print("|---|---|---|---|---|")
    for name, before, after, _, bound in rows:
        print(f"| {name} | {mib(before['VmRSS'])} | {mib(after['VmRSS'])} | {mib(after['VmHWM'])} | {bound} |")


if __name__ == "__main__":
    main()
