#!/usr/bin/env python3
"""Idle memory per SSE stream over HTTP/1.1, plain or TLS: the server's RSS delta over N
idle streams, / N.

Opens N connections to 127.0.0.1:PORT (with --tls CERT: TLS, ALPN http/1.1, the server
certificate CERT trusted for "localhost"), sends each `GET PATH` and reads until its
first SSE block (`retry:`) has arrived, then holds them all idle. Reads the server's
VmRSS from /proc/PID/status before the first connection and once all N are open and
idle (2 s after the last). Prints both and the delta per stream. Used for
docs/benchmarks.md (SSE over TLS):

    bench/sse_idle_memory.py --pid PID --port PORT [--tls cert.pem] [-n 2000] [--path /events?channel=a]
"""

import argparse
import asyncio
import resource
import ssl


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


async def open_stream(port: int, ctx, path: str):
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None
    )
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    got = b""
    while b"retry:" not in got:
        chunk = await asyncio.wait_for(reader.read(4096), 10)
        if not chunk:
            raise SystemExit(f"stream closed before its first block: {got[:200]!r}")
        got += chunk
    return reader, writer


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, required=True, help="the server's pid")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tls", metavar="CERT", help="connect with TLS, trusting this PEM certificate")
    p.add_argument("-n", type=int, default=2000)
    p.add_argument("--path", default="/events?channel=a")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.n + 100)), hard))
    ctx = None
    if a.tls:
        ctx = ssl.create_default_context(cafile=a.tls)
        ctx.set_alpn_protocols(["http/1.1"])
    await asyncio.sleep(1)
    before = rss_kib(a.pid)
    streams = []
    for i in range(0, a.n, 100):
        streams += await asyncio.gather(*(open_stream(a.port, ctx, a.path) for _ in range(min(100, a.n - i))))
    await asyncio.sleep(2)
    after = rss_kib(a.pid)
    print(f"{'tls' if ctx else 'plain'} n={a.n} rss_before={before} KiB rss_after={after} KiB "
          f"per_stream={(after - before) / a.n:.2f} KiB")
    for _, w in streams:
        w.close()


asyncio.run(main())
