#!/usr/bin/env bash
# Idle logged-in connections: server memory per connection and new-session latency while
# they are held. corepop (one process) and, optionally, Dovecot (up to 100 logged-in
# sessions per pop3 process, lib.sh's client_limit; capped at DOVECOT_IDLE).
#
#   sudo benches/compare/idle_mem.sh                      # IDLE="5000 15000", DOVECOT_IDLE=2000
#
# For each server and each N:
#  memory: start `corepop bench --idle N -c 0` (N distinct users with empty Maildirs, logged in,
#    silent), wait until all N are open, wait SETTLE s, then read the server's whole process tree
#    (VmRSS sum, and Pss sum from smaps_rollup, which does not count shared pages N times)
#    and Slab from /proc/meminfo, and compare with the same figures just before.
#    Slab delta covers both ends of each loopback connection (client and server sockets);
#    "server-side" estimates take half of it. Per connection = (tree delta + slab delta[/2]) / N.
#  latency: REPS runs each of `bench --mode full -c C --duration DURATION` with and without
#    --idle N held, alternating; the table shows the median session p99 (and p50, sessions/s).
#  PRIME=1: before the memory pass, log the N idle users in and out once and take the Slab
#    baseline after that, so the kernel's inodes and dentries of each mailbox's files (made
#    at its first login) are not counted per connection; the process figures still include
#    the server's per-mailbox caches. Default 0: every login in the measured pass is its
#    mailbox's first, and the Slab delta includes those files.
# Environment: IDLE ["5000 15000"] DOVECOT ["1"] DOVECOT_IDLE ["2000"] C [32] REPS [3]
#   DURATION [5] WARMUP [1] SETTLE [3] WORK_USERS [64] WORK_MSGS [20] PRIME [0] COREPOP KEEP
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
COREPOP=${COREPOP:-$REPO/target/release/corepop}
IDLE=${IDLE:-"5000 15000"}
DOVECOT=${DOVECOT:-1}
DOVECOT_IDLE=${DOVECOT_IDLE:-2000}
C=${C:-32}
REPS=${REPS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
SETTLE=${SETTLE:-3}
WORK_USERS=${WORK_USERS:-64}
WORK_MSGS=${WORK_MSGS:-20}
PRIME=${PRIME:-0}
# shellcheck source=lib.sh
source "$HERE/lib.sh"
lib_init

MAXIDLE=0
for n in $IDLE; do ((n > MAXIDLE)) && MAXIDLE=$n; done
log "corpus: $WORK_USERS workload users x $WORK_MSGS messages + $MAXIDLE idle users"
STATS=$(python3 "$HERE/gen_corpus.py" --out "$TMP/corpus" --users "$WORK_USERS" --messages "$WORK_MSGS" --idle-users "$MAXIDLE")
log "corpus: $STATS"
RES=$TMP/results
mkdir -p "$RES"

bench_json() { # out addr pid args...
  local out=$1 addr=$2 pid=$3
  shift 3
  "$COREPOP" bench --addr "$addr" --users "$TMP/corpus/users.txt" --idle-users "$TMP/corpus/idle-users.txt" \
    --server-pid "$pid" --json --quiet "$@" >"$out" 2>"$out.err" || die "bench failed: $(tail -5 "$out.err")"
}

measure() { # server addr pid n
  local s=$1 addr=$2 pid=$3 n=$4
  local rss0 pss0 slab0 rss1 pss1 slab1 bpid

  sleep 1
  rss0=$(tree_rss_kb "$pid"); pss0=$(tree_pss_kb "$pid"); slab0=$(slab_kb)
  if [[ $PRIME == 1 ]]; then
    # Log every idle user in and out once, then take the Slab baseline again: the kernel's
    # inodes and dentries for each mailbox's files (created at its first login) are then not
    # counted per connection. The process baseline stays the one from before: the server's
    # allocator keeps and reuses what the priming pass freed, so a later baseline would
    # hide the per-connection memory.
    "$COREPOP" bench --addr "$addr" --users "$TMP/corpus/users.txt" --idle-users "$TMP/corpus/idle-users.txt" \
      --idle "$n" -c 0 --warmup 0 --duration 1 --json >"$RES/prime-$s-$n.json" 2>"$RES/prime-$s-$n.err" ||
      die "priming $n idle connections failed: $(tail -3 "$RES/prime-$s-$n.err")"
    sleep "$SETTLE"
    slab0=$(slab_kb)
  fi
  "$COREPOP" bench --addr "$addr" --users "$TMP/corpus/users.txt" --idle-users "$TMP/corpus/idle-users.txt" \
    --idle "$n" -c 0 --warmup 0 --duration $((SETTLE + 20)) --json >"$RES/mem-$s-$n.json" 2>"$RES/mem-$s-$n.err" &
  bpid=$!
  for _ in $(seq 600); do
    grep -q 'idle connections open after' "$RES/mem-$s-$n.err" && break
    kill -0 "$bpid" 2>/dev/null || break
    sleep 0.2
  done
  sleep "$SETTLE"
  rss1=$(tree_rss_kb "$pid"); pss1=$(tree_pss_kb "$pid"); slab1=$(slab_kb)
  local procs
  procs=$(tree_pids "$pid" | wc -w)
  kill -TERM "$bpid" 2>/dev/null || true
  wait "$bpid" 2>/dev/null || true
  local opened
  opened=$(sed -n 's/.*bench: \([0-9]*\) idle connections open after \([0-9.]*\) s.*/\1 \2/p' "$RES/mem-$s-$n.err")
  echo "$s $n $rss0 $rss1 $pss0 $pss1 $slab0 $slab1 $procs $opened" >>"$RES/mem.txt"
  log "$s idle=$n opened/setup_s=[$opened] RSS $rss0->$rss1 kB, PSS $pss0->$pss1 kB, Slab $slab0->$slab1 kB, processes $procs"
  sleep 2   # let the server reap the closed connections
}

latency() { # server addr pid n
  local s=$1 addr=$2 pid=$3 n=$4 rep
  for ((rep = 1; rep <= REPS; rep++)); do
    local order="with without"
    ((rep % 2)) || order="without with"
    for w in $order; do
      if [[ $w == with ]]; then
        bench_json "$RES/lat-$s-$n-with-r$rep.json" "$addr" "$pid" --mode full -c "$C" --duration "$DURATION" --warmup "$WARMUP" --idle "$n"
      else
        bench_json "$RES/lat-$s-$n-without-r$rep.json" "$addr" "$pid" --mode full -c "$C" --duration "$DURATION" --warmup "$WARMUP"
      fi
      python3 - "$RES/lat-$s-$n-$w-r$rep.json" "$s" "$n" "$w" <<'PY' >&2
import json, sys
r = json.load(open(sys.argv[1]))
errs = {k: v for k, v in r["errors_all"].items() if v}
idle = r["idle"]
print(f"  {sys.argv[2]} idle={sys.argv[3]} {sys.argv[4]:<7} {r['sessions_per_s']:7.1f} sessions/s  p50 {r['latency_ms']['session']['p50']:.2f}  p99 {r['latency_ms']['session']['p99']:.2f} ms  errors {errs or 0}"
      + (f"  idle alive {idle['alive_at_end']}/{idle['requested']}" if idle else ""))
PY
    done
  done
}

start_corepop "$TMP/corpus/mail" "$TMP/corpus/passwd"
log "priming corepop"
bench_json "$RES/prime-corepop.json" "$COREPOP_ADDR" "$COREPOP_PID" --mode full --sessions "$WORK_USERS" -c 8 --warmup 0
for n in $IDLE; do
  measure corepop "$COREPOP_ADDR" "$COREPOP_PID" "$n"
  latency corepop "$COREPOP_ADDR" "$COREPOP_PID" "$n"
done
kill -TERM "$COREPOP_PID"; wait "$COREPOP_PID" 2>/dev/null || true

if [[ $DOVECOT == 1 ]]; then
  start_dovecot "$TMP/corpus/mail" "$TMP/corpus/passwd" $((DOVECOT_IDLE + C + 64))
  log "priming Dovecot"
  bench_json "$RES/prime-dovecot.json" "$DOVECOT_ADDR" "$DOVECOT_PID" --mode full --sessions "$WORK_USERS" -c 8 --warmup 0
  measure dovecot "$DOVECOT_ADDR" "$DOVECOT_PID" "$DOVECOT_IDLE"
  latency dovecot "$DOVECOT_ADDR" "$DOVECOT_PID" "$DOVECOT_IDLE"
fi

python3 - "$RES" <<'PY'
import glob, json, os, re, statistics, sys
res = sys.argv[1]
print("\n| server | idle N | opened | server processes | RSS delta kB/conn | PSS delta kB/conn | Slab delta kB/conn (both ends) | (PSS + Slab) kB/conn | (PSS + Slab/2) kB/conn, server side |")
print("|---|---|---|---|---|---|---|---|---|")
for line in open(f"{res}/mem.txt"):
    f = line.split()
    s, n = f[0], int(f[1])
    rss0, rss1, pss0, pss1, sl0, sl1, procs = map(int, f[2:9])
    opened = f[9] if len(f) > 9 else "?"
    d_rss, d_pss, d_sl = (rss1 - rss0) / n, (pss1 - pss0) / n, (sl1 - sl0) / n
    print(f"| {s} | {n} | {opened} | {procs} | {d_rss:.1f} | {d_pss:.1f} | {d_sl:.1f} | {d_pss + d_sl:.1f} | {d_pss + d_sl / 2:.1f} |")
print("\n| server | idle N | C | sessions/s without → with idle | session p50 ms without → with | session p99 ms without → with | p99 ratio with/without | idle alive at end |")
print("|---|---|---|---|---|---|---|---|")
groups = {}
for f in glob.glob(f"{res}/lat-*.json"):
    m = re.match(r"lat-(\w+)-(\d+)-(with|without)-r\d+\.json", os.path.basename(f))
    r = json.load(open(f))
    groups.setdefault((m[1], int(m[2])), {}).setdefault(m[3], []).append(r)
def med(rs, key):
    xs = sorted(key(r) for r in rs)
    return statistics.median(xs), xs[0], xs[-1]
for (s, n), g in sorted(groups.items()):
    cells = []
    for key, fmt in ((lambda r: r["sessions_per_s"], "{:.0f}"), (lambda r: r["latency_ms"]["session"]["p50"], "{:.2f}"),
                     (lambda r: r["latency_ms"]["session"]["p99"], "{:.2f}")):
        a, b = med(g["without"], key), med(g["with"], key)
        cells.append(f"{fmt.format(a[0])} ({fmt.format(a[1])}–{fmt.format(a[2])}) → {fmt.format(b[0])} ({fmt.format(b[1])}–{fmt.format(b[2])})")
    p99 = med(g["with"], lambda r: r["latency_ms"]["session"]["p99"])[0] / med(g["without"], lambda r: r["latency_ms"]["session"]["p99"])[0]
    alive = ", ".join(f"{r['idle']['alive_at_end']}/{r['idle']['requested']}" for r in g["with"])
    c = g["with"][0]["concurrency"]
    print(f"| {s} | {n} | {c} | " + " | ".join(cells) + f" | {p99:.2f}× | {alive} |")
print(f"\nmedians of {len(next(iter(groups.values()))['with'])} runs, ranges in brackets")
PY
FAILED=0
