#!/usr/bin/env bash
# Where sending a wire-form message from a mapping starts to pay: the crossover behind the
# default of `mail.map_min_size` (docs/configuration.md). corepop only, no Dovecot.
#
#   sudo benches/compare/map_min.sh          # about 2 minutes on 2 cores
#
# For each SIZES_KIB message size: USERS users with ~640 KiB of CRLF messages each, no line
# starting with "." (wire form), named with ,S=,W= as Dovecot delivers them. Two corepop
# servers in turn on the same Maildirs: `map_min_size = 0` (every wire-form RETR goes from a
# mapping made on the blocking pool) and `map_min_size = 2^62` (every RETR is read and copied
# on the executor). Each gets one priming pass (the first RETRs learn that the messages are
# wire form), then REPS runs of
#   corepop bench --mode full -c 4 --duration 4 --warmup 1 --json
# Prints medians (range) of server CPU ms per session and MB/s, and the ratio mapped / copied
# (below 1: mapping is cheaper).
#
# Environment: SIZES_KIB ["16 64 128 256 1024"] USERS [8] REPS [3] COREPOP [target/release/corepop]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
COREPOP=${COREPOP:-$REPO/target/release/corepop}
SIZES_KIB=${SIZES_KIB:-"16 64 128 256 1024"}
USERS=${USERS:-8}
REPS=${REPS:-3}
LIB_NO_DOVECOT=1
# shellcheck source=lib.sh
source "$HERE/lib.sh"
lib_init

RES=$TMP/results
mkdir -p "$RES"
for kib in $SIZES_KIB; do
  log "corpus: $USERS users x ${kib} KiB wire-form messages"
  python3 - "$TMP/k$kib" "$USERS" "$kib" <<'PY'
import os, sys
root, users, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(f"{root}-passwd", "w") as pw, open(f"{root}-users.txt", "w") as ul:
    for u in range(users):
        pw.write(f"u{u}:{{PLAIN}}pw::::::\n")
        ul.write(f"u{u}:pw\n")
        md = f"{root}/u{u}/Maildir"
        for s in ("cur", "new", "tmp"):
            os.makedirs(f"{md}/{s}", exist_ok=True)
        for m in range(max(2, 640 // kib)):
            lines = [b"Subject: message %d of u%d\r\n\r\n" % (m, u)]
            size, i = len(lines[0]), 0
            while size < kib * 1024:
                line = b"line %d of a message stored with CRLF line ends, no dots\r\n" % i
                lines.append(line)
                size += len(line)
                i += 1
            data = b"".join(lines)
            with open(f"{md}/new/17000{m:05d}.M{m}P{u}.h,S={len(data)},W={len(data)}", "wb") as f:
                f.write(data)
PY
  # A Maildir changed less than a second ago is listed again at every login (its snapshot
  # is not shared), so what the priming pass learns would not be kept.
  sleep 1.2
  for mode in mapped copied; do
    if [[ $mode == mapped ]]; then COREPOP_MAIL_EXTRA='map_min_size = 0'; else COREPOP_MAIL_EXTRA='map_min_size = 4611686018427387904'; fi
    before=${#SERVER_PIDS[@]}
    start_corepop "$TMP/k$kib" "$TMP/k$kib-passwd"
    U=$TMP/k$kib-users.txt
    "$COREPOP" bench --addr "$COREPOP_ADDR" --users "$U" --mode full --sessions "$USERS" -c 2 --warmup 0 --quiet --json >/dev/null
    for ((rep = 1; rep <= REPS; rep++)); do
      out=$RES/k$kib-$mode-r$rep.json
      "$COREPOP" bench --addr "$COREPOP_ADDR" --users "$U" --mode full -c 4 --duration 4 --warmup 1 \
        --server-pid "$COREPOP_PID" --quiet --json >"$out"
      python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("  %5s KiB %-7s %.3f ms/session %.0f MB/s" % (sys.argv[2], sys.argv[3], r["server_cpu_ms_per_session"], r["mb_per_s"]), file=sys.stderr)' "$out" "$kib" "$mode"
    done
    kill -TERM "$COREPOP_PID"
    wait "$COREPOP_PID" 2>/dev/null || true
    SERVER_PIDS=("${SERVER_PIDS[@]:0:$before}")
  done
done

python3 - "$RES" "$REPS" <<'PY'
import glob, json, os, re, statistics, sys
res, reps = sys.argv[1], sys.argv[2]
rows = {}
for f in glob.glob(f"{res}/k*-r*.json"):
    m = re.match(r"k(\d+)-(mapped|copied)-r\d+\.json", os.path.basename(f))
    r = json.load(open(f))
    rows.setdefault(int(m[1]), {}).setdefault(m[2], []).append((r["server_cpu_ms_per_session"], r["mb_per_s"]))
def fmt(v, i, d):
    xs = sorted(x[i] for x in v)
    return f"{statistics.median(xs):.{d}f} ({xs[0]:.{d}f}–{xs[-1]:.{d}f})"
print("\n| message KiB | server CPU ms/session mapped | copied | mapped / copied | MB/s mapped | copied |")
print("|---|---|---|---|---|---|")
for kib in sorted(rows):
    mp, cp = rows[kib]["mapped"], rows[kib]["copied"]
    ratio = statistics.median(x[0] for x in mp) / statistics.median(x[0] for x in cp)
    print(f"| {kib} | {fmt(mp, 0, 3)} | {fmt(cp, 0, 3)} | {ratio:.2f} | {fmt(mp, 1, 0)} | {fmt(cp, 1, 0)} |")
print(f"\nmedians of {reps} runs (range); a session retrieves ~640 KiB")
PY
FAILED=0
