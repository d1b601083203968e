#!/usr/bin/env bash
# Compare corepop with Dovecot's POP3 server on the same Maildir corpus, driven by the same
# load generator (`corepop bench`), and print a Markdown table of medians and ratios.
#
#   sudo benches/compare/run.sh            # default run, about 4-5 minutes on 2 cores
#   QUICK=1 benches/compare/run.sh         # smoke run, under a minute
#
# What it does, all inside one temporary directory and on 127.0.0.1 only:
#  1. generates a corpus (gen_corpus.py): USERS users x MSGS messages, LF line endings,
#     Dovecot-style names in new/, a passwd-file with {PLAIN} passwords;
#  2. starts a private Dovecot (its own config, base_dir and log; Maildirs are a hard-linked
#     copy of the corpus, since Dovecot renames new/ -> cur/ and writes index files) and
#     corepop (`serve --listen 127.0.0.1:0`) on the original;
#  3. primes both (one full pass over every user), then runs `corepop bench --mode MODE` at
#     each CONCURRENCY against both, REPS times, alternating which server goes first;
#  4. prints medians and corepop/Dovecot ratios, including server CPU per session (utime +
#     stime of each server's whole process tree from /proc, sampled by the load generator
#     at the edges of its measurement window).
# Servers are stopped on exit, error or Ctrl-C.
#
# Environment (defaults in brackets; QUICK=1 changes the ones marked *):
#   QUICK [0]            1 = smoke run
#   USERS* [320]         users in the corpus (must exceed the largest concurrency)
#   MSGS* [40]           messages per user
#   REPS* [3]            repetitions of each (server, concurrency)
#   DURATION* [8]        measured seconds per run
#   WARMUP* [2]          warmup seconds per run
#   CONCURRENCY ["32 256"]  connection counts to test
#   MODE [full]          bench mode (full, retr-sample, top, login)
#   IDLE [0]             hold this many extra logged-in, silent connections (users with empty
#                        maildirs) during every measured run (`bench --idle`); Dovecot needs
#                        one pop3 process per idle session, so its process_limit is raised
#   COREPOP [<repo>/target/release/corepop]  binary to serve and to run `bench` with
#   BUILD [1]            run `cargo build --release` first (only for the default COREPOP)
#   COREPOP_THREADS []   set [server] threads for corepop (default: corepop's own default)
#   DOVECOT_POP3_SERVICE_COUNT [1000]  pop3 processes are reused for this many sessions
#                        (Dovecot's default is 1: a fresh process per session)
#   RESULTS []           also write the Markdown table to this file
#   KEEP [0]             1 = keep the temporary directory (corpus, configs, logs, JSON)
#   TMPDIR [/tmp]        where the temporary directory goes (about 1x the corpus, 250 MB by
#                        default: Dovecot's copy is hard-linked)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
  d_users=300 d_msgs=8 d_reps=1 d_dur=3 d_warm=1
else
  d_users=320 d_msgs=40 d_reps=3 d_dur=8 d_warm=2
fi
USERS=${USERS:-$d_users}
MSGS=${MSGS:-$d_msgs}
REPS=${REPS:-$d_reps}
DURATION=${DURATION:-$d_dur}
WARMUP=${WARMUP:-$d_warm}
CONCURRENCY=${CONCURRENCY:-"32 256"}
MODE=${MODE:-full}
IDLE=${IDLE:-0}
DEFAULT_COREPOP=$REPO/target/release/corepop
COREPOP=${COREPOP:-$DEFAULT_COREPOP}
BUILD=${BUILD:-1}
COREPOP_THREADS=${COREPOP_THREADS:-}
DOVECOT_POP3_SERVICE_COUNT=${DOVECOT_POP3_SERVICE_COUNT:-1000}
RESULTS=${RESULTS:-}
KEEP=${KEEP:-0}

log() { echo "compare: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---- checks -------------------------------------------------------------------------------
[[ $(id -u) == 0 ]] || die "run as root: Dovecot's master process needs it"
command -v dovecot >/dev/null || die "dovecot not found (apt-get install dovecot-pop3d)"
command -v python3 >/dev/null || die "python3 not found"
getent passwd dovecot >/dev/null || die "no 'dovecot' user (apt-get install dovecot-core)"
MAXC=0
for c in $CONCURRENCY; do
  ((c > MAXC)) && MAXC=$c
  ((c < USERS)) || die "CONCURRENCY $c needs more than $c users (USERS=$USERS): a user is never in two sessions at once"
done
if [[ $COREPOP == "$DEFAULT_COREPOP" && $BUILD == 1 ]]; then
  log "building corepop (cargo build --release)"
  (cd "$REPO" && cargo build --release --quiet) || die "cargo build --release failed"
fi
[[ -x $COREPOP ]] || die "$COREPOP not found (cargo build --release, or set COREPOP)"
"$COREPOP" bench --help >/dev/null 2>&1 ||
  die "$COREPOP has no 'bench' subcommand (wire corepop::loadgen::run into src/main.rs)"

# ---- temporary directory, cleanup on exit, server start-up: shared with the other scripts -
# shellcheck source=lib.sh
. "$HERE/lib.sh"
lib_init

# ---- 1. corpus ----------------------------------------------------------------------------
log "generating the corpus: $USERS users x $MSGS messages in $TMP"
CORPUS_STATS=$(python3 "$HERE/gen_corpus.py" --out "$TMP/corpus" --users "$USERS" --messages "$MSGS" \
  --idle-users "$IDLE")
log "corpus: $CORPUS_STATS"

# ---- 2. servers ---------------------------------------------------------------------------
start_dovecot "$TMP/corpus/mail" "$TMP/corpus/passwd" $((IDLE + MAXC + 64))
start_corepop "$TMP/corpus/mail" "$TMP/corpus/passwd" "$COREPOP_THREADS"

addr_of() { if [[ $1 == corepop ]]; then echo "$COREPOP_ADDR"; else echo "$DOVECOT_ADDR"; fi; }
pid_of() { if [[ $1 == corepop ]]; then echo "$COREPOP_PID"; else echo "$DOVECOT_PID"; fi; }

# run_bench SERVER OUTFILE ARGS... : one `corepop bench --json` run; fails on any error.
run_bench() {
  local server=$1 out=$2
  shift 2
  "$COREPOP" bench --addr "$(addr_of "$server")" --users "$TMP/corpus/users.txt" \
    --server-pid "$(pid_of "$server")" --json --quiet "$@" >"$out" 2>"$out.err" ||
    die "bench against $server failed: $(tail -5 "$out.err")"
  if ! python3 - "$server" "$out" <<'EOF' >&2; then
import json, sys
server, path = sys.argv[1], sys.argv[2]
r = json.load(open(path))
errs = {k: v for k, v in r["errors_all"].items() if v}
cpu = r["server_cpu_ms_per_session"]
print(f"compare:   {server:<8} {r['mode']} c={r['concurrency']:<4} {r['sessions_per_s']:9.1f} sessions/s "
      f"{r['mb_per_s']:8.1f} MB/s  p50 {r['latency_ms']['session']['p50']:7.2f} ms  "
      f"p99 {r['latency_ms']['session']['p99']:7.2f} ms  server CPU "
      f"{'-' if cpu is None else format(cpu, '.3f')} ms/session  errors {errs or 0}"
      + (f"  idle {r['idle']['alive_at_end']}/{r['idle']['requested']}" if r["idle"] else ""))
idle_ok = not r["idle"] or r["idle"]["alive_at_end"] == r["idle"]["requested"]
sys.exit(1 if errs or r["sessions"] == 0 or not idle_ok else 0)
EOF
    die "$server: errors, no sessions or lost idle connections in $out (details: $(head -c 600 "$out.err"))"
  fi
}

# ---- 3. priming and measured runs ---------------------------------------------------------
mkdir -p "$TMP/prime" "$TMP/results"
for s in corepop dovecot; do
  log "priming $s: one full session per user"
  run_bench "$s" "$TMP/prime/$s.json" --mode full --sessions "$USERS" --concurrency 16 --warmup 0
done

IDLE_ARGS=()
if ((IDLE > 0)); then
  IDLE_ARGS=(--idle "$IDLE" --idle-users "$TMP/corpus/idle-users.txt")
fi
log "measuring: mode $MODE, concurrency {$CONCURRENCY}, $REPS x ${DURATION}s (+${WARMUP}s warmup) per server${IDLE_ARGS:+, $IDLE idle connections}"
for ((rep = 1; rep <= REPS; rep++)); do
  for c in $CONCURRENCY; do
    if ((rep % 2)); then order="corepop dovecot"; else order="dovecot corepop"; fi
    for s in $order; do
      run_bench "$s" "$TMP/results/$s-$MODE-c$c-r$rep.json" --mode "$MODE" --concurrency "$c" \
        --duration "$DURATION" --warmup "$WARMUP" "${IDLE_ARGS[@]}"
    done
  done
done

# ---- 4. table -----------------------------------------------------------------------------
TABLE=$(python3 "$HERE/summarize.py" "$TMP/results" \
  --title "corepop vs Dovecot $(dovecot --version | cut -d' ' -f1), POP3 mode '$MODE' (medians of $REPS)" \
  --note "corpus: $USERS users × $MSGS messages, $CORPUS_STATS; LF endings, Dovecot-style names in new/" \
  --note "each run: ${WARMUP} s warmup + ${DURATION} s measured; closed loop, one user never in two sessions at once${IDLE_ARGS:+; $IDLE idle logged-in connections held during each run}" \
  --note "machine: $(nproc) CPUs, $(uname -r); load generator, corepop and Dovecot share the CPUs (loopback)" \
  --note "Dovecot: pop3-login service_count=0 (process_min_avail 2), pop3 client_limit=1, service_count=$DOVECOT_POP3_SERVICE_COUNT; corepop: failure_delay_ms=0${COREPOP_THREADS:+, threads=$COREPOP_THREADS}" \
  --note "server CPU = utime+stime of the server's whole process tree during the window / sessions in the window")
echo
echo "$TABLE"
if [[ -n $RESULTS ]]; then
  echo "$TABLE" >"$RESULTS"
  log "table written to $RESULTS"
fi
FAILED=0
