#!/usr/bin/env python3
"""Turn `corepop bench --json` results into a Markdown table of medians and ratios.

Usage: summarize.py RESULTS_DIR [--title TEXT] [--note TEXT]...

RESULTS_DIR holds files named <server>-<mode>-c<concurrency>-r<rep>.json, one JSON object
each, where <server> is `corepop` or `dovecot`.
"""

import argparse
import json
import os
import re
import statistics

NAME = re.compile(r"^(corepop|dovecot)-([a-z0-9-]+)-c(\d+)-r(\d+)\.json$")

# (label, how to get the value from one result, format, ratio wanted)
METRICS = [
    ("sessions/s", lambda r: r["sessions_per_s"], "{:.1f}", True),
    ("messages/s", lambda r: r["messages_per_s"], "{:.0f}", True),
    ("MB/s (RETR bodies)", lambda r: r["mb_per_s"], "{:.1f}", True),
    ("session p50 ms", lambda r: r["latency_ms"]["session"]["p50"], "{:.2f}", True),
    ("session p90 ms", lambda r: r["latency_ms"]["session"]["p90"], "{:.2f}", True),
    ("session p99 ms", lambda r: r["latency_ms"]["session"]["p99"], "{:.2f}", True),
    ("session max ms", lambda r: r["latency_ms"]["session"]["max"], "{:.1f}", True),
    ("login p50 ms", lambda r: r["latency_ms"]["login"]["p50"], "{:.2f}", True),
    ("login p99 ms", lambda r: r["latency_ms"]["login"]["p99"], "{:.2f}", True),
    ("server CPU ms/session", lambda r: r["server_cpu_ms_per_session"], "{:.3f}", True),
    ("load generator CPU s", lambda r: r["client_cpu_s"], "{:.2f}", False),
]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--title", default="corepop vs Dovecot (POP3)")
    ap.add_argument("--note", action="append", default=[])
    a = ap.parse_args()

    runs = {}
    for f in sorted(os.listdir(a.dir)):
        m = NAME.match(f)
        if not m:
            continue
        server, mode, conc, _rep = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
        with open(os.path.join(a.dir, f)) as fh:
            runs.setdefault((mode, conc), {}).setdefault(server, []).append(json.load(fh))

    out = [f"### {a.title}", ""]
    for n in a.note:
        out.append(f"- {n}")
    if a.note:
        out.append("")
    out.append("| workload | metric | corepop | Dovecot | corepop / Dovecot |")
    out.append("|---|---|---:|---:|---:|")
    for (mode, conc) in sorted(runs, key=lambda k: (k[0], k[1])):
        by = runs[(mode, conc)]
        reps = min(len(by.get("corepop", [])), len(by.get("dovecot", [])))
        first = True
        for label, get, fmt, want_ratio in METRICS:
            vals = {}
            for s in ("corepop", "dovecot"):
                try:
                    vals[s] = median(get(r) for r in by.get(s, []))
                except (KeyError, TypeError):
                    vals[s] = None
            c, d = vals["corepop"], vals["dovecot"]
            cs = fmt.format(c) if c is not None else "–"
            ds = fmt.format(d) if d is not None else "–"
            ratio = f"{c / d:.2f}×" if want_ratio and c is not None and d else ""
            wl = f"{mode}, {conc} conns ({reps} runs)" if first else ""
            first = False
            out.append(f"| {wl} | {label} | {cs} | {ds} | {ratio} |")
        errs = {}
        for s in ("corepop", "dovecot"):
            tot = {}
            for r in by.get(s, []):
                for k, v in r["errors_all"].items():
                    tot[k] = tot.get(k, 0) + v
            nz = ", ".join(f"{k} {v}" for k, v in tot.items() if v)
            errs[s] = nz or "0"
        out.append(f"|  | errors (all runs, incl. warmup) | {errs['corepop']} | {errs['dovecot']} |  |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
