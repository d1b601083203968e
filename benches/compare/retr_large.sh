#!/usr/bin/env bash
# Large-message RETR throughput: corepop vs Dovecot vs a plain loopback socket copy.
#
#   sudo benches/compare/retr_large.sh          # about 2-3 minutes on 2 cores
#
# Corpus: USERS users (4) with one ~SIZE_MB (20) MB message each, in two variants served by
# separate servers:
#   lf   - LF line endings as Postfix delivers them (the common case): a short text part with
#          dot-lines plus a base64 attachment; servers must convert to CRLF and dot-stuff.
#   crlf - the same message with CRLF endings and no line starting with '.': already wire
#          form. Its ,S=,W= name says nothing about dot-lines, so corepop streams it through
#          the transform once (the priming pass), learns that nothing needed changing, and
#          from then on sends the file with sendfile.
# For each variant and each CONNS (1 and 4) it runs, REPS times alternating the order,
#   corepop bench --mode full --sessions SESSIONS_PER_CONN*c -c c --warmup 0 --json
# against corepop and Dovecot (after one priming pass each), and a plain socket copy of the
# same file (sockcopy.py: os.sendfile server, recv_into-and-discard client) as the physical
# baseline. MB/s = RETR body bytes / s (10^6 bytes); prints medians, ranges and ratios.
#
# Environment: USERS [4] SIZE_MB [20] CONNS ["1 4"] REPS [3] SESSIONS_PER_CONN [8]
#              COREPOP [<repo>/target/release/corepop] KEEP [0]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
COREPOP=${COREPOP:-$REPO/target/release/corepop}
USERS=${USERS:-4}
SIZE_MB=${SIZE_MB:-20}
CONNS=${CONNS:-"1 4"}
REPS=${REPS:-3}
SESSIONS_PER_CONN=${SESSIONS_PER_CONN:-8}
# shellcheck source=lib.sh
source "$HERE/lib.sh"
lib_init

log "generating $USERS x ${SIZE_MB} MB messages (lf and crlf variants) in $TMP"
python3 - "$TMP" "$USERS" "$SIZE_MB" <<'PY'
import base64, os, random, sys
tmp, users, size_mb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(7)
for variant in ("lf", "crlf"):
    root = f"{tmp}/{variant}"
    with open(f"{root}.passwd" if False else f"{tmp}/{variant}-passwd", "w") as pw, \
         open(f"{tmp}/{variant}-users.txt", "w") as ul:
        for u in range(users):
            name = f"big{u}"
            pw.write(f"{name}:{{PLAIN}}pw{u}::::::\n")
            ul.write(f"{name}:pw{u}\n")
            md = f"{root}/{name}/Maildir"
            for s in ("cur", "new", "tmp"):
                os.makedirs(f"{md}/{s}", exist_ok=True)
            r = random.Random(u)
            text = "".join(
                (". a dot-line\n" if (i % 50 == 7 and variant == "lf") else
                 f"line {i} of the covering note, quarterly report attached\n")
                for i in range(200))
            att = base64.encodebytes(r.randbytes(size_mb * 1_000_000 * 3 // 4)).decode()
            msg = (f"From: sender@example.org\nTo: {name}@example.net\nSubject: big {u}\n"
                   f"Date: Tue, 14 Jan 2025 10:00:00 +0000\nMessage-ID: <big{u}@example.org>\n"
                   "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n\n"
                   "--b1\nContent-Type: text/plain\n\n" + text +
                   "\n--b1\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
                   + att + "\n--b1--\n")
            data = msg.encode()
            if variant == "crlf":
                data = data.replace(b"\n", b"\r\n")
                assert b"\r\n." not in data
                w = len(data)
            else:
                w = len(data) + data.count(b"\n")
            fn = f"{md}/new/1736848800.M{u}P1.mail.example.net,S={len(data)},W={w}"
            with open(fn, "wb") as f:
                f.write(data)
    print(variant, len(data), "bytes per message", file=sys.stderr)
PY

RES=$TMP/results
mkdir -p "$RES"
run_bench() { # server addr pid users out args...
  local server=$1 addr=$2 pid=$3 users=$4 out=$5
  shift 5
  "$COREPOP" bench --addr "$addr" --users "$users" --server-pid "$pid" --json --quiet "$@" \
    >"$out" 2>"$out.err" || die "bench against $server failed: $(tail -5 "$out.err")"
  python3 - "$server" "$out" <<'PY' >&2
import json, sys
r = json.load(open(sys.argv[2]))
errs = {k: v for k, v in r["errors_all"].items() if v}
print(f"  {sys.argv[1]:<8} c={r['concurrency']} {r['mb_per_s']:8.1f} MB/s  {r['sessions']} sessions  "
      f"server CPU {r['server_cpu_ms_per_session']} ms/session  errors {errs or 0}")
sys.exit(1 if errs or r["sessions"] == 0 else 0)
PY
}

for variant in lf crlf; do
  SERVER_PIDS_BEFORE=${#SERVER_PIDS[@]}
  start_dovecot "$TMP/$variant" "$TMP/$variant-passwd" 1024
  start_corepop "$TMP/$variant" "$TMP/$variant-passwd"
  U=$TMP/$variant-users.txt
  for s in corepop dovecot; do
    if [[ $s == corepop ]]; then a=$COREPOP_ADDR p=$COREPOP_PID; else a=$DOVECOT_ADDR p=$DOVECOT_PID; fi
    log "$variant: priming $s"
    run_bench "$s" "$a" "$p" "$U" "$RES/prime-$variant-$s.json" --mode full --sessions "$USERS" -c 1 --warmup 0
  done
  for ((rep = 1; rep <= REPS; rep++)); do
    for c in $CONNS; do
      if ((rep % 2)); then order="corepop dovecot socket"; else order="socket dovecot corepop"; fi
      for s in $order; do
        out=$RES/$variant-$s-c$c-r$rep.json
        if [[ $s == socket ]]; then
          f=$(ls "$TMP/$variant/big0/Maildir/new/"*)
          python3 "$HERE/sockcopy.py" "$f" "$c" "$SESSIONS_PER_CONN" >"$out" || die "sockcopy failed"
          log "  socket   c=$c $(python3 -c 'import json,sys; print("%8.1f MB/s" % json.load(open(sys.argv[1]))["mb_per_s"])' "$out")"
          continue
        fi
        if [[ $s == corepop ]]; then a=$COREPOP_ADDR p=$COREPOP_PID; else a=$DOVECOT_ADDR p=$DOVECOT_PID; fi
        run_bench "$s" "$a" "$p" "$U" "$out" --mode full --sessions $((SESSIONS_PER_CONN * c)) -c "$c" --warmup 0
      done
    done
  done
  # stop this variant's servers before the next variant
  for pid in "${SERVER_PIDS[@]:$SERVER_PIDS_BEFORE}"; do
    all=$(tree_pids "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    # shellcheck disable=SC2086
    kill -KILL $all 2>/dev/null || true
  done
  wait "${SERVER_PIDS[@]:$SERVER_PIDS_BEFORE}" 2>/dev/null || true
  rm -rf "$TMP/mail-dovecot" "$TMP/dovecot"
done

python3 - "$RES" "$REPS" <<'PY'
import glob, json, os, re, statistics, sys
res, reps = sys.argv[1], sys.argv[2]
rows = {}
for f in glob.glob(f"{res}/*-r*.json"):
    m = re.match(r"(lf|crlf)-(corepop|dovecot|socket)-c(\d+)-r\d+\.json", os.path.basename(f))
    if not m: continue
    r = json.load(open(f))
    cpu = r.get("server_cpu_ms_per_session")
    if m[2] == "socket":
        cpu = r["server_cpu_s"] * 1000 / (r["bytes"] / os.path.getsize(glob.glob(f"{res}/../{m[1]}/big0/Maildir/new/*")[0]))
    rows.setdefault((m[1], int(m[3])), {}).setdefault(m[2], []).append((r["mb_per_s"], cpu))
def fmt(v):
    if not v: return "-"
    xs = sorted(x[0] for x in v)
    return f"{statistics.median(xs):.0f} ({xs[0]:.0f}–{xs[-1]:.0f})"
def med(v, i=0):
    xs = [x[i] for x in v if x[i] is not None]
    return statistics.median(xs) if xs else None
print(f"\n| corpus | conns | corepop MB/s | Dovecot MB/s | socket copy MB/s | corepop/Dovecot | corepop/socket | server CPU ms per RETR of one message: corepop / Dovecot / socket |")
print("|---|---|---|---|---|---|---|---|")
for (v, c) in sorted(rows, key=lambda k: (k[0] != "lf", k[1])):
    d = rows[(v, c)]
    cp, dv, so = d.get("corepop", []), d.get("dovecot", []), d.get("socket", [])
    ratio = lambda a, b: f"{med(a)/med(b):.2f}×" if a and b else "-"
    cpus = " / ".join("-" if med(x, 1) is None else f"{med(x, 1):.1f}" for x in (cp, dv, so))
    print(f"| {v} | {c} | {fmt(cp)} | {fmt(dv)} | {fmt(so)} | {ratio(cp, dv)} | {ratio(cp, so)} | {cpus} |")
print(f"\nmedians of {reps} runs (range in brackets); MB/s = 10^6 bytes of message data per second")
PY
FAILED=0
