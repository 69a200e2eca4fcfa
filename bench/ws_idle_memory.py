#!/usr/bin/env python3
"""Idle memory per WebSocket: the server's RSS delta over N idle connections, / N.

Opens N WebSockets to ws://127.0.0.1:PORT/ with the `websockets` package, offering
permessage-deflate (its default) unless --no-deflate, and reads the server's VmRSS from
/proc/PID/status before the first connection, once all N are open and idle, and again
after each has echoed one short text message (so a lazily allocated compressor exists).
Prints one line per phase. Used for docs/conformance.md#permessage-deflate:

    python3 -m venv /tmp/v && /tmp/v/bin/pip install websockets
    /tmp/v/bin/python bench/ws_idle_memory.py --pid PID --port PORT [-n 1000] [--no-deflate]
"""

import argparse
import asyncio
import resource

from websockets.asyncio.client import connect


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


async def settle(pid: int) -> int:
    # Let the server finish what the last frames started, then take the reading.
    await asyncio.sleep(2)
    return rss_kib(pid)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pid", type=int, required=True, help="the server's pid")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--no-deflate", action="store_true", help="offer no extension")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, a.n + 100)), hard))

    uri = f"ws://127.0.0.1:{a.port}/"
    compression = None if a.no_deflate else "deflate"
    base = await settle(a.pid)
    conns = []
    for i in range(a.n):
        conns.append(await connect(uri, compression=compression, max_size=None, open_timeout=30))
    negotiated = sum(1 for ws in conns if ws.response.headers.get("Sec-WebSocket-Extensions"))
    idle = await settle(a.pid)
    for ws in conns:
        await ws.send("hello, idle world")
        assert await ws.recv() == "hello, idle world"
    echoed = await settle(a.pid)
    n = a.n
    print(f"n={n} offered={'none' if a.no_deflate else 'permessage-deflate'} negotiated={negotiated}"
          f" answer={conns[0].response.headers.get('Sec-WebSocket-Extensions')!r}")
    print(f"rss before: {base} KiB")
    print(f"after open (idle): {idle} KiB, {(idle - base) / n:.1f} KiB/conn")
    print(f"after one echo each: {echoed} KiB, {(echoed - base) / n:.1f} KiB/conn")
    await asyncio.gather(*(ws.close() for ws in conns))


if __name__ == "__main__":
    asyncio.run(main())
