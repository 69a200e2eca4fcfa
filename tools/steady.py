#!/usr/bin/env python3
"""A steady trickle of normal requests, for checks that attack sidewire meanwhile.

Sends GETs one after another (each on a new connection, from --source so a per-address
limit hit by the attacker does not apply) to every --url in turn for --duration seconds,
and prints one line: `attempted served failed p50_ms p99_ms max_ms` (a request is served
when it gets a 2xx within --timeout). --json prints the same as a JSON object.
"""

import argparse
import http.client
import json
import time
import urllib.parse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", action="append", required=True)
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--timeout", type=float, default=5)
    ap.add_argument("--source", default="127.0.0.2")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    urls = [urllib.parse.urlsplit(u) for u in args.url]
    attempted = served = 0
    lat, errors = [], {}
    end = time.monotonic() + args.duration
    i = 0
    while time.monotonic() < end:
        u = urls[i % len(urls)]
        i += 1
        attempted += 1
        t0 = time.monotonic()
        try:
            c = http.client.HTTPConnection(u.hostname, u.port, timeout=args.timeout, source_address=(args.source, 0))
            c.request("GET", u.path or "/")
            r = c.getresponse()
            r.read()
            c.close()
            if 200 <= r.status < 300:
                served += 1
                lat.append((time.monotonic() - t0) * 1000)
            else:
                errors[str(r.status)] = errors.get(str(r.status), 0) + 1
        except Exception as e:  # noqa: BLE001 - every failure counts the same
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
        time.sleep(args.interval)
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else 0  # noqa: E731
    out = {"attempted": attempted, "served": served, "failed": attempted - served,
           "p50_ms": round(pct(0.5), 1), "p99_ms": round(pct(0.99), 1), "max_ms": round(lat[-1] if lat else 0, 1),
           "errors": errors}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{attempted} {served} {attempted - served} {out['p50_ms']} {out['p99_ms']} {out['max_ms']} {errors}")


if __name__ == "__main__":
    main()
