#!/usr/bin/env python3
"""Request smuggling and hygiene probes for sidewire's pass-through (checks/smuggling.sh).

Runs a raw TCP backend on --backend-port that parses HTTP/1.1 strictly (Content-Length or
chunked, keep-alive) and records every request it sees, then sends each probe to
sidewire's public listener on a fresh connection. A probe passes when sidewire's answer
is one of the expected ones and nothing desynchronised:

  - the backend never parsed a request for a `/smuggled/...` target, nor bytes it could
    not parse as a request (a body's leftovers taken for the next request);
  - sidewire sent one response per request the client meant to send;
  - the head the backend got has one framing: not both Content-Length and
    Transfer-Encoding, one Content-Length at most, only `chunked`, CRLF line ends.

HTTP/2 probes (h2c prior knowledge, the `h2` package) report the status or the
RST_STREAM / GOAWAY error sidewire answered with.

Prints one line per probe and a summary; exits 1 when a probe failed.
"""

import argparse
import re
import socket
import socketserver
import sys
import threading
import time

SMUGGLED = "GET /smuggled/{name} HTTP/1.1\r\nHost: app.example\r\n\r\n"


class Backend(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port):
        super().__init__(("127.0.0.1", port), Conn)
        self.lock = threading.Lock()
        self.seen = []  # dicts: target, head, body, flags, conn

    def record(self, **entry):
        with self.lock:
            self.seen.append(entry)

    def since(self, n):
        with self.lock:
            return list(self.seen[n:])

    def count(self):
        with self.lock:
            return len(self.seen)


def hygiene(head):
    """What is wrong with a head as forwarded to the backend (should be nothing)."""
    flags = []
    if re.search(rb"[^\r]\n", head):
        flags.append("bare-LF")
    lines = head.split(b"\r\n")[1:]
    if any(line[:1] in (b" ", b"\t") for line in lines if line):
        flags.append("obs-fold")
    names = [line.split(b":", 1)[0].strip().lower() for line in lines if b":" in line]
    if names.count(b"content-length") > 1:
        flags.append("several Content-Length")
    if names.count(b"host") != 1:
        flags.append(f"{names.count(b'host')} Host")
    if b"transfer-encoding" in names and b"content-length" in names:
        flags.append("CL+TE")
    for line in lines:
        if line.lower().startswith(b"transfer-encoding:") and line.split(b":", 1)[1].strip().lower() != b"chunked":
            flags.append("TE not chunked")
    return flags


class Conn(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.settimeout(30)
        buf = b""
        cid = id(self)

        def fill():
            nonlocal buf
            data = sock.recv(65536)
            if not data:
                raise EOFError
            buf += data

        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    if len(buf) > 65536:
                        raise ValueError("head too long")
                    fill()
                head, buf = buf.split(b"\r\n\r\n", 1)
                head += b"\r\n\r\n"
                request_line = head.split(b"\r\n", 1)[0]
                m = re.fullmatch(rb"([A-Z]+) (\S+) HTTP/1\.[01]", request_line)
                if not m:
                    self.server.record(target=None, head=head, body=b"", flags=["unparsable"], conn=cid)
                    return
                target = m.group(2).decode("latin-1")
                headers = {}
                for line in head.split(b"\r\n")[1:]:
                    if b":" in line:
                        k, v = line.split(b":", 1)
                        headers.setdefault(k.strip().lower(), v.strip())
                body = b""
                if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
                    while True:
                        while b"\r\n" not in buf:
                            fill()
                        size_line, buf = buf.split(b"\r\n", 1)
                        size = int(size_line.split(b";")[0], 16)
                        while len(buf) < size + 2:
                            fill()
                        body += buf[:size]
                        buf = buf[size + 2 :]
                        if size == 0:
                            break
                elif b"content-length" in headers:
                    n = int(headers[b"content-length"])
                    while len(buf) < n:
                        fill()
                    body, buf = buf[:n], buf[n:]
                self.server.record(target=target, head=head, body=body, flags=hygiene(head), conn=cid)
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        except EOFError:
            if buf.strip():
                self.server.record(target=None, head=buf[:200], body=b"", flags=["cut short"], conn=cid)
        except (ValueError, OSError) as e:
            self.server.record(target=None, head=buf[:200], body=b"", flags=[f"parse error: {e}"], conn=cid)


def exchange(port, data, wait=3.0):
    """Sends raw bytes; reads until sidewire closes or is quiet for `wait` s. Returns (reply, closed)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=wait)
    try:
        s.sendall(data)
    except OSError:
        pass
    reply, closed = b"", False
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            break
        except OSError:
            closed = True
            break
        if not chunk:
            closed = True
            break
        reply += chunk
    s.close()
    return reply, closed


def statuses(reply):
    """The status of every response in `reply`, read one after another by their framing."""
    out, pos = [], 0
    while True:
        m = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n").match(reply, pos)
        if not m:
            return out
        out.append(int(m.group(1)))
        end = reply.find(b"\r\n\r\n", m.start())
        if end < 0:
            return out
        head, pos = reply[m.start() : end].lower(), end + 4
        cl = re.search(rb"\r\ncontent-length: *(\d+)", head)
        if cl:
            pos += int(cl.group(1))
        elif b"transfer-encoding: chunked" in head:
            while True:
                eol = reply.find(b"\r\n", pos)
                if eol < 0:
                    return out
                size = int(reply[pos:eol].split(b";")[0] or b"0", 16)
                pos = eol + 2 + size + 2
                if size == 0:
                    break


def h1_probes():
    """(name, bytes, expected statuses, requests the client meant to send, note)."""
    s = lambda name: SMUGGLED.format(name=name)  # noqa: E731
    host = "Host: app.example\r\n"
    p = []

    def add(name, raw, expect, note, sent=1):
        p.append((name, raw.replace("{S}", s(name)).encode("latin-1"), expect, sent, note))

    body = "0\r\n\r\n" + s("cl-te")
    add("cl-te", f"POST /probe/cl-te HTTP/1.1\r\n{host}Content-Length: {len(body)}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        {400, "200+close"}, "CL+TE: 400, or chunked wins and the connection closes (RFC 9112 6.3)")
    chunk = s("te-cl")
    add("te-cl", f"POST /probe/te-cl HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
        f"{len(chunk):x}\r\n{chunk}\r\n0\r\n\r\n", {400, "200+close"}, "TE+CL, smuggled request inside a chunk")
    add("cl-cl-differ", f"POST /probe/cl-cl-differ HTTP/1.1\r\n{host}Content-Length: 0\r\nContent-Length: {len(s('cl-cl-differ'))}\r\n\r\n{{S}}",
        {400}, "two different Content-Length")
    add("cl-cl-equal", f"POST /probe/cl-cl-equal HTTP/1.1\r\n{host}Content-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        {200, 400}, "two equal Content-Length: merged or refused (RFC 9110 8.6)")
    add("cl-list-differ", f"POST /probe/cl-list-differ HTTP/1.1\r\n{host}Content-Length: 0, 38\r\n\r\n{{S}}",
        {400}, "Content-Length: 0, 38")
    add("cl-plus-sign", f"POST /probe/cl-plus-sign HTTP/1.1\r\n{host}Content-Length: +5\r\n\r\nhello",
        {400}, "Content-Length: +5")
    add("obs-fold", f"GET /probe/obs-fold HTTP/1.1\r\n{host}X-Folded: a\r\n b\r\n\r\n", {400}, "obs-fold continuation line")
    add("obs-fold-te", f"POST /probe/obs-fold-te HTTP/1.1\r\n{host}Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        {400}, "Transfer-Encoding value on an obs-fold line")
    add("te-space-colon", f"POST /probe/te-space-colon HTTP/1.1\r\n{host}Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
        {400}, "whitespace before the colon (RFC 9112 5.1)")
    add("bare-lf-head", f"GET /probe/bare-lf-head HTTP/1.1\n{host[:-2]}\nConnection: close\n\n",
        {400, 200}, "bare LF line ends in the head: refused, or read as CRLF and forwarded normalised (RFC 9112 2.2)")
    add("bare-lf-chunk", f"POST /probe/bare-lf-chunk HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n{{S}}",
        {400}, "bare LF after a chunk size")
    add("bare-cr-header", f"GET /probe/bare-cr-header HTTP/1.1\r\n{host}X-A: a\rTransfer-Encoding: chunked\r\n\r\n",
        {400}, "bare CR inside a header value")
    add("chunk-size-overflow", f"POST /probe/chunk-size-overflow HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n"
        "10000000000000005\r\nhello\r\n0\r\n\r\n{S}", {400}, "chunk size > 2^64")
    add("chunk-ext-long", f"POST /probe/chunk-ext-long HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n"
        f"5;{'a' * 70000}\r\nhello\r\n0\r\n\r\n{{S}}", {400}, "70 kB chunk extension")
    add("two-host", f"GET /probe/two-host HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", {400}, "two Host headers")
    add("no-host", "GET /probe/no-host HTTP/1.1\r\nConnection: close\r\n\r\n", {400}, "HTTP/1.1 without Host")
    add("te-gzip", f"POST /probe/te-gzip HTTP/1.1\r\n{host}Transfer-Encoding: gzip\r\n\r\n{{S}}",
        {400}, "Transfer-Encoding: gzip (chunked not final: 400, RFC 9112 6.3)")
    add("te-gzip-chunked", f"POST /probe/te-gzip-chunked HTTP/1.1\r\n{host}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{{S}}",
        {501}, "Transfer-Encoding: gzip, chunked (unknown coding: 501)")
    add("te-x-chunked", f"POST /probe/te-x-chunked HTTP/1.1\r\n{host}Transfer-Encoding: x-custom\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{{S}}",
        {501}, "Transfer-Encoding: x-custom + chunked on two lines")
    add("te-xchunked", f"POST /probe/te-xchunked HTTP/1.1\r\n{host}Transfer-Encoding: xchunked\r\nContent-Length: 38\r\n\r\n{{S}}",
        {400, 501}, "Transfer-Encoding: xchunked with Content-Length")
    add("pipelined-ok", f"GET /probe/pipelined-ok HTTP/1.1\r\n{host}\r\nGET /probe/pipelined-ok-2 HTTP/1.1\r\n{host}Connection: close\r\n\r\n",
        {200}, "control: two honest pipelined requests, both answered", sent=2)
    return p


def run_h1(port, backend, probes):
    results = []
    for name, raw, expect, sent, note in probes:
        before = backend.count()
        reply, closed = exchange(port, raw)
        time.sleep(0.3)
        seen = backend.since(before)
        st = statuses(reply)
        first = st[0] if st else None
        close_hdr = bool(re.search(rb"\r\nconnection: close\r\n", reply.split(b"\r\n\r\n")[0].lower() + b"\r\n"))
        ok_status = first in expect or (first == 200 and "200+close" in expect and (closed or close_hdr))
        if sent > 1:
            ok_status = st == [200] * sent
        smuggled = [e for e in seen if e["target"] and "smuggled" in e["target"]]
        garbage = [e for e in seen if e["target"] is None and e["flags"] != ["cut short"]]
        dirty = [e for e in seen if e["target"] and e["flags"]]
        extra = len(st) > sent
        desync = bool(smuggled or garbage or extra)
        passed = ok_status and not desync and not dirty
        got = "/".join(map(str, st)) if st else ("closed" if closed else "no answer")
        if first == 200 and sent == 1 and (closed or close_hdr):
            got += "+close"
        detail = []
        if smuggled:
            detail.append(f"backend saw {smuggled[0]['target']}")
        if garbage:
            detail.append(f"backend: {garbage[0]['flags']}")
        if extra:
            detail.append(f"{len(st)} responses to {sent} request(s)")
        if dirty:
            detail.append(f"forwarded head: {dirty[0]['flags']}")
        forwarded = len([e for e in seen if e["target"] and "/probe/" in e["target"]])
        results.append((name, got, expect_text(expect), forwarded, desync, passed, note, "; ".join(detail)))
    return results


def expect_text(expect):
    return "|".join(sorted(str(e) for e in expect))


def run_h2(port, backend):
    import h2.config
    import h2.connection
    import h2.events

    def probe(name, headers, body=None, note=""):
        before = backend.count()
        cfg = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                        normalize_outbound_headers=False, validate_inbound_headers=False)
        conn = h2.connection.H2Connection(config=cfg)
        s = socket.create_connection(("127.0.0.1", port), timeout=3)
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers, end_stream=body is None)
        if body is not None:
            conn.send_data(sid, body, end_stream=True)
        s.sendall(conn.data_to_send())
        outcome = None
        deadline = time.monotonic() + 5
        while outcome is None and time.monotonic() < deadline:
            try:
                data = s.recv(65536)
            except (socket.timeout, OSError):
                break
            if not data:
                outcome = outcome or "closed"
                break
            try:
                events = conn.receive_data(data)
            except Exception as e:  # noqa: BLE001 - a protocol error on our side is an outcome too
                outcome = f"client error {type(e).__name__}"
                break
            for ev in events:
                if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                    outcome = dict(ev.headers).get(b":status", b"?").decode()
                elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                    outcome = f"RST_STREAM {ev.error_code.name}"
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    outcome = f"GOAWAY {ev.error_code.name}"
            pending = conn.data_to_send()
            if pending:
                s.sendall(pending)
        s.close()
        time.sleep(0.3)
        seen = backend.since(before)
        smuggled = [e for e in seen if e["target"] and "smuggled" in e["target"]]
        garbage = [e for e in seen if e["target"] is None and e["flags"] != ["cut short"]]
        dirty = [e for e in seen if e["target"] and e["flags"]]
        return outcome or "no answer", len([e for e in seen if e["target"]]), bool(smuggled or garbage), dirty

    base = lambda path, extra=(): [  # noqa: E731
        (":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "app.example")] + list(extra)
    smug = SMUGGLED.format(name="h2").encode()
    cases = [
        ("h2-authority-host", [(":method", "GET"), (":scheme", "http"), (":path", "/probe/h2-authority-host"),
                               (":authority", "a.example"), ("host", "b.example")], None, {"400"},
         ":authority differs from host"),
        ("h2-cl-cl", base("/probe/h2-cl-cl", [("content-length", "0"), ("content-length", str(len(smug)))]), smug,
         {"400", "RST_STREAM PROTOCOL_ERROR"}, "two content-length"),
        ("h2-cl-short", base("/probe/h2-cl-short", [("content-length", "0")]), smug,
         {"400", "RST_STREAM PROTOCOL_ERROR"}, "content-length 0, DATA carries a request"),
        ("h2-te", base("/probe/h2-te", [("transfer-encoding", "chunked")]), b"0\r\n\r\n" + smug,
         {"400", "RST_STREAM PROTOCOL_ERROR"}, "transfer-encoding in HTTP/2 (connection-specific)"),
        ("h2-crlf-value", base("/probe/h2-crlf-value", [("x-a", "a\r\nTransfer-Encoding: chunked")]), b"0\r\n\r\n" + smug,
         {"400", "RST_STREAM PROTOCOL_ERROR", "GOAWAY PROTOCOL_ERROR"}, "CRLF inside a header value (h2 -> h1 injection)"),
        ("h2-crlf-path", base("/probe/h2-crlf-path HTTP/1.1\r\nHost: x\r\n\r\nGET /smuggled/h2p"), None,
         {"400", "RST_STREAM PROTOCOL_ERROR"}, "CRLF and a request inside :path"),
        ("h2-ok", [(":method", "GET"), (":scheme", "http"), (":path", "/probe/h2-ok"), (":authority", "app.example")],
         None, {"200"}, "control: an honest HTTP/2 request"),
    ]
    results = []
    for name, headers, body, expect, note in cases:
        outcome, forwarded, desync, dirty = probe(name, headers, body, note)
        passed = outcome in expect and not desync and not dirty
        detail = f"forwarded head: {dirty[0]['flags']}" if dirty else ""
        results.append((name, outcome, "|".join(sorted(expect)), forwarded, desync, passed, note, detail))
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--public", type=int, required=True)
    ap.add_argument("--backend-port", type=int, required=True)
    ap.add_argument("--no-h2", action="store_true")
    args = ap.parse_args()
    backend = Backend(args.backend_port)
    threading.Thread(target=backend.serve_forever, daemon=True).start()

    results = run_h1(args.public, backend, h1_probes())
    if not args.no_h2:
        results += run_h2(args.public, backend)

    print(f"{'probe':<22} {'sidewire':<26} {'expected':<30} {'fwd':>3} {'desync':<6} result")
    for name, got, expect, forwarded, desync, passed, note, detail in results:
        print(f"{name:<22} {got:<26} {expect:<30} {forwarded:>3} {'YES' if desync else 'no':<6} "
              f"{'PASS' if passed else 'FAIL'}  {note}{'  -- ' + detail if detail else ''}")
    failed = [r for r in results if not r[5]]
    desyncs = sum(1 for r in results if r[4])
    print(f"\n{len(results)} probes, {len(results) - len(failed)} passed, {len(failed)} failed, {desyncs} desyncs")
    backend.shutdown()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
