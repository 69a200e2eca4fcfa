#!/usr/bin/env python3
"""Renders bench/out/fanout.jsonl (one loadgen JSON line per run) as markdown tables:
every run, then sidewire / Nchan ratios per transport × size × repeat.
Usage: fanout_table.py fanout.jsonl
"""
import json
import sys

ORDER = {"sidewire_b": 0, "sidewire": 1, "nchan": 2, "pushpin": 3}
NAMES = {"sidewire": "sidewire", "sidewire_b": "sidewire (B)", "nchan": "Nchan", "pushpin": "Pushpin"}


def fmt(v, digits=0):
    if v is None:
        return "–"
    if isinstance(v, (int, float)):
        return f"{v:,.{digits}f}"
    return str(v)


def note(r):
    bits = []
    if r.get("error"):
        bits.append(r["error"])
    if r.get("connect_failed"):
        bits.append(f"{r['connect_failed']} connect failures")
    if r.get("end") and r["end"] != "all delivered":
        bits.append(r["end"])
    if r.get("closed_early"):
        bits.append(f"{r['closed_early']} closed early")
    if r.get("duplicates"):
        bits.append(f"{r['duplicates']} duplicates")
    if r.get("publish_errors"):
        bits.append(f"{r['publish_errors']} publish errors")
    pr = r.get("publish_rate")
    if pr is not None and pr < 0.9 * r.get("rate_target", 0):
        bits.append(f"publish reached {pr:g} msg/s")
    return "; ".join(bits)


def main(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    rows.sort(key=lambda r: (r.get("subscribers", 0), r.get("transport", ""), r.get("rep", 0),
                             ORDER.get(r.get("system"), 9)))
    print("| system | transport | subscribers × messages | run | deliveries/s | lost | p50 ms | p99 ms | max ms "
          "| server CPU µs/delivery | idle KiB/conn (RSS) | idle KiB/conn (PSS) | load tool CPU % | other CPU % | notes |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join([
            NAMES.get(r.get("system"), str(r.get("system"))),
            r.get("transport", "").upper(),
            f"{r.get('subscribers', 0):,} × {r.get('messages', 0)}",
            str(r.get("rep", "")),
            fmt(r.get("deliveries_per_s")),
            fmt(r.get("lost")),
            fmt(r.get("p50_ms"), 1),
            fmt(r.get("p99_ms"), 1),
            fmt(r.get("max_ms"), 1),
            fmt(r.get("server_cpu_us_per_delivery"), 2),
            fmt(r.get("idle_kib_per_conn"), 1),
            fmt(r.get("idle_kib_per_conn_pss"), 1),
            fmt(r.get("tool_cpu_pct"), 0),
            fmt(r.get("other_cpu_pct"), 0),
            note(r),
        ]) + " |")

    by = {(r.get("system"), r.get("transport"), r.get("subscribers"), r.get("rep")): r for r in rows}
    pairs = []
    for (s, t, n, rep), sw in sorted(by.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][3])):
        nc = by.get(("nchan", t, n, rep))
        if s in ("sidewire", "sidewire_b") and nc and not sw.get("error") and not nc.get("error"):
            pairs.append((s, t, n, rep, sw, nc))
    medians(rows)
    if not pairs:
        return
    print()
    print("sidewire ÷ Nchan (target: deliveries/s ≥ 1 — or both at the offered load, subscribers × rate —, "
          "CPU/delivery ≤ 1, p99 ≤ 1, 0 lost; sidewire idle ≤ 8 KiB/conn):")
    print()
    print("| system | transport | subscribers | run | deliveries/s | CPU/delivery | p99 | sidewire lost "
          "| sidewire idle KiB/conn | targets met |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def ratio(a, b):
        if a is None or b in (None, 0):
            return None
        return a / b

    for s, t, n, rep, sw, nc in pairs:
        d = ratio(sw.get("deliveries_per_s"), nc.get("deliveries_per_s"))
        c = ratio(sw.get("server_cpu_us_per_delivery"), nc.get("server_cpu_us_per_delivery"))
        p = ratio(sw.get("p99_ms"), nc.get("p99_ms"))
        mem = sw.get("idle_kib_per_conn")
        missed = []
        # Both at the offered load (subscribers × publish target): a tie, whatever the last digit.
        offered = n * sw.get("rate_target", 0)
        at_cap = offered > 0 and all(r.get("deliveries_per_s", 0) >= 0.98 * offered for r in (sw, nc))
        if (d is None or d < 1) and not at_cap:
            missed.append("deliveries/s")
        if c is None or c > 1:
            missed.append("CPU")
        if p is None or p > 1:
            missed.append("p99")
        if sw.get("lost"):
            missed.append("lost")
        if mem is None or mem > 8:
            missed.append("memory")
        print("| " + " | ".join([
            NAMES[s], t.upper(), f"{n:,}", str(rep), fmt(d, 2) + (" (both at offered load)" if at_cap else ""), fmt(c, 2), fmt(p, 2), fmt(sw.get("lost")), fmt(mem, 1),
            "all" if not missed else "missed: " + ", ".join(missed),
        ]) + " |")


def medians(rows):
    """Median (and range) of CPU/delivery and p99 per system × transport × size over the
    repeats: with 2 shared cores one run is noisy, the median of interleaved runs less so."""
    groups = {}
    for r in rows:
        if r.get("error"):
            continue
        groups.setdefault((r.get("subscribers", 0), r.get("transport", ""), ORDER.get(r.get("system"), 9),
                           r.get("system")), []).append(r)
    if not groups:
        return
    print()
    print("Median over the repeats [min–max]:")
    print()
    print("| system | transport | subscribers | runs | CPU µs/delivery | p99 ms |")
    print("|---|---|---|---|---|---|")

    def med(rs, key, digits):
        v = sorted(x[key] for x in rs if isinstance(x.get(key), (int, float)))
        if not v:
            return "–"
        m = v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2
        return f"{fmt(m, digits)} [{fmt(v[0], digits)}–{fmt(v[-1], digits)}]"

    for (n, t, _, s), rs in sorted(groups.items()):
        print("| " + " | ".join([NAMES.get(s, str(s)), t.upper(), f"{n:,}", str(len(rs)),
                                 med(rs, "server_cpu_us_per_delivery", 2), med(rs, "p99_ms", 1)]) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
