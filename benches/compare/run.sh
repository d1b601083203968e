#!/usr/bin/env bash
# Compare corepop with Dovecot's POP3 server on the same Maildir corpus, driven by the same
# load generator (`corepop bench`), and print a Markdown table of medians and ratios.
#
#   sudo benches/compare/run.sh            # default run, about 4-5 minutes on 2 cores
#   QUICK=1 benches/compare/run.sh         # smoke run, under a minute
#   TLS=implicit sudo benches/compare/run.sh   # the same over TLS (tls.sh does this)
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
# With TLS=implicit or TLS=starttls (tls.sh is a wrapper that sets TLS=$TLS_MODE), also:
#  - before 2., openssl makes a throw-away CA and a certificate for localhost/127.0.0.1 signed
#    by it in $TMP/pki (keys never leave the directory); lib.sh then gives Dovecot
#    `ssl = required` and a pop3s inet_listener with `ssl = yes`, and corepop an implicit-TLS
#    listener (--listen-tls), both on that certificate;
#  - openssl s_client reports what each server negotiates, and every bench call gets
#    `--tls TLS --tls-ca <the CA> --tls-server-name localhost` (implicit: the TLS listeners;
#    starttls: STLS on the plaintext ones);
#  - results are named <server>-MODE-tls-c<conns>-r<rep>.json, so the table's workload reads
#    "MODE-tls" (summarize.py takes it from the file name), and the notes give the negotiated
#    protocol and suite and the share of resumed handshakes per server.
#  The load generator shares one rustls client configuration across its workers, so a new
#  connection resumes a session when the server accepts the ticket it was given earlier
#  (TLS_RESUME=0: every handshake is a full one).
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
#   AUTH [user]          how the measured sessions log in (`bench --auth`: user, apop, plain,
#                        login, cram-md5, scram-sha-1, scram-sha-256); not `user` adds
#                        -AUTH to the result names and the title
#   TLS [none]           none (plaintext), implicit (the servers' POP3S listeners) or starttls
#                        (STLS on their plaintext listeners)
#   TLS_RESUME [1]       with TLS: 0 = `bench --tls-no-resume`, full handshakes only
#   KEY [rsa2048]        with TLS: server key, rsa2048 or ec256 (ECDSA P-256)
#   IDLE [0]             hold this many extra logged-in, silent connections (users with empty
#                        maildirs) during every measured run (`bench --idle`); Dovecot's
#                        process_limit is raised to cover them
#   COREPOP [<repo>/target/release/corepop]  binary to serve and to run `bench` with
#   BUILD [1]            run `cargo build --release` first (only for the default COREPOP)
#   COREPOP_THREADS []   set [server] threads for corepop (default: corepop's own default)
#   DOVECOT_POP3_SERVICE_COUNT [1000]  pop3 processes are reused for this many sessions
#                        (Dovecot's default is 1: a fresh process per session)
#   DOVECOT_POP3_CLIENT_LIMIT [100]  sessions one pop3 process serves at once: the
#                        performance issue's tuned Dovecot; 1 is Dovecot's default and
#                        costs it ~1.5x the CPU per session (docs/benchmarks.md §1)
#   RESULTS []           also write the Markdown table to this file
#   KEEP [0]             1 = keep the temporary directory (corpus, certificate, configs, logs,
#                        JSON)
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
AUTH=${AUTH:-user}
AUTH_SUFFIX=""
if [[ $AUTH != user ]]; then AUTH_SUFFIX=-$AUTH; fi
TLS=${TLS:-none}
TLS_RESUME=${TLS_RESUME:-1}
KEY=${KEY:-rsa2048}
IDLE=${IDLE:-0}
DEFAULT_COREPOP=$REPO/target/release/corepop
COREPOP=${COREPOP:-$DEFAULT_COREPOP}
BUILD=${BUILD:-1}
COREPOP_THREADS=${COREPOP_THREADS:-}
DOVECOT_POP3_SERVICE_COUNT=${DOVECOT_POP3_SERVICE_COUNT:-1000}
DOVECOT_POP3_CLIENT_LIMIT=${DOVECOT_POP3_CLIENT_LIMIT:-100}
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
case $TLS in
  none) ;;
  implicit | starttls)
    command -v openssl >/dev/null || die "openssl not found (apt-get install openssl)"
    case $KEY in
      rsa2048) KEY_ARGS=(-newkey rsa:2048) ;;
      ec256) KEY_ARGS=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) ;;
      *) die "KEY must be rsa2048 or ec256" ;;
    esac
    ;;
  *) die "TLS must be none, implicit or starttls" ;;
esac
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
if [[ $TLS != none ]]; then
  grep -q -- '--tls-ca' <<<"$("$COREPOP" bench --help 2>/dev/null)" ||
    die "$COREPOP bench has no --tls option (build the current tree)"
fi

# ---- temporary directory, cleanup on exit, server start-up: shared with the other scripts -
# shellcheck source=lib.sh
. "$HERE/lib.sh"
lib_init

# ---- 1. corpus ----------------------------------------------------------------------------
log "generating the corpus: $USERS users x $MSGS messages in $TMP"
CORPUS_STATS=$(python3 "$HERE/gen_corpus.py" --out "$TMP/corpus" --users "$USERS" --messages "$MSGS" \
  --idle-users "$IDLE")
log "corpus: $CORPUS_STATS"

# TLS only: a throw-away CA and a certificate for localhost signed by it, for both servers.
if [[ $TLS != none ]]; then
  PKI=$TMP/pki
  mkdir -m 700 "$PKI"
  log "generating a CA and a $KEY certificate for localhost with openssl in $PKI"
  (
    cd "$PKI"
    umask 077
    openssl req -x509 "${KEY_ARGS[@]}" -nodes -keyout ca.key -out ca.pem -days 2 \
      -subj "/CN=corepop bench CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -new "${KEY_ARGS[@]}" -nodes -keyout server.key -out server.csr -subj "/CN=localhost"
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile server.ext -out server.pem
    chmod 644 ca.pem server.pem
  ) >"$PKI/openssl.log" 2>&1 || die "openssl failed: $(tail -5 "$PKI/openssl.log")"
  CA=$PKI/ca.pem
  # lib.sh: with these set, each server also gets an implicit-TLS listener on the certificate.
  LIB_TLS_CERT=$PKI/server.pem
  LIB_TLS_KEY=$PKI/server.key
fi

# ---- 2. servers ---------------------------------------------------------------------------
start_dovecot "$TMP/corpus/mail" "$TMP/corpus/passwd" $((IDLE + MAXC + 64))
start_corepop "$TMP/corpus/mail" "$TMP/corpus/passwd" "$COREPOP_THREADS"

# Implicit TLS uses the servers' TLS listeners; plaintext and STARTTLS the plaintext ones.
addr_of() {
  case $1-$TLS in
    corepop-implicit) echo "$COREPOP_TLS_ADDR" ;;
    dovecot-implicit) echo "$DOVECOT_TLS_ADDR" ;;
    corepop-*) echo "$COREPOP_ADDR" ;;
    *) echo "$DOVECOT_ADDR" ;;
  esac
}
pid_of() { if [[ $1 == corepop ]]; then echo "$COREPOP_PID"; else echo "$DOVECOT_PID"; fi; }

# TLS only: what each server negotiates (openssl's client; the load generator offers the
# same TLS 1.3 suites in the same order: AES-256-GCM first), and the bench arguments. The
# other TLS differences: OVER_TLS in messages and the title, RESULT_SUFFIX in the result
# file names, the *_NOTE pieces in the table's notes.
TLS_ARGS=() NEGOTIATED=() OVER_TLS="" RESULT_SUFFIX=""
MACHINE_TLS_NOTE="" DOVECOT_TLS_NOTE="" COREPOP_TLS_NOTE=""
if [[ $TLS != none ]]; then
  for s in corepop dovecot; do
    st=()
    [[ $TLS == starttls ]] && st=(-starttls pop3)
    out=$(openssl s_client -connect "$(addr_of "$s")" -servername localhost -CAfile "$CA" \
      -verify_return_error -brief "${st[@]}" </dev/null 2>&1 | tr -d '\0') ||
      die "openssl s_client against $s failed: $(tail -5 <<<"$out")"
    proto=$(sed -n 's/^Protocol version: //p' <<<"$out")
    suite=$(sed -n 's/^Ciphersuite: //p' <<<"$out")
    group=$(sed -n 's/^\(Negotiated TLS1.3 group\|Server Temp Key\): //p' <<<"$out" | head -n 1)
    log "$s: $proto $suite ${group:+($group)}"
    NEGOTIATED+=("$s $proto $suite${group:+, $group}")
  done
  TLS_ARGS=(--tls "$TLS" --tls-ca "$CA" --tls-server-name localhost)
  [[ $TLS_RESUME == 1 ]] || TLS_ARGS+=(--tls-no-resume)
  OVER_TLS=" over $TLS TLS"
  RESULT_SUFFIX=-tls
  MACHINE_TLS_NOTE=", $(openssl version | cut -d' ' -f1-2) (Dovecot)"
  DOVECOT_TLS_NOTE="ssl = required, pop3s listener ssl = yes, "
  COREPOP_TLS_NOTE="--listen-tls, "
fi

# run_bench SERVER OUTFILE ARGS... : one `corepop bench --json` run (over TLS if TLS is set);
# fails on any error (with TLS, also when there was no handshake).
run_bench() {
  local server=$1 out=$2
  shift 2
  "$COREPOP" bench --addr "$(addr_of "$server")" --users "$TMP/corpus/users.txt" \
    --server-pid "$(pid_of "$server")" --json --quiet "${TLS_ARGS[@]}" "$@" >"$out" 2>"$out.err" ||
    die "bench against $server failed: $(tail -5 "$out.err")"
  if ! python3 - "$server" "$out" "$TLS" <<'EOF' >&2; then
import json, sys
server, path, tls = sys.argv[1], sys.argv[2], sys.argv[3] != "none"
r = json.load(open(path))
errs = {k: v for k, v in r["errors_all"].items() if v}
cpu = r["server_cpu_ms_per_session"]
hs = r.get("tls_handshakes")
print(f"compare:   {server:<8} {r['mode']}{' ' + r['tls'] if tls else ''} c={r['concurrency']:<4} {r['sessions_per_s']:9.1f} sessions/s "
      f"{r['mb_per_s']:8.1f} MB/s  p50 {r['latency_ms']['session']['p50']:7.2f} ms  "
      f"p99 {r['latency_ms']['session']['p99']:7.2f} ms  server CPU "
      f"{'-' if cpu is None else format(cpu, '.3f')} ms/session  "
      + (f"resumed {r['tls_resumed']}/{hs}  " if tls else "") + f"errors {errs or 0}"
      + (f"  idle {r['idle']['alive_at_end']}/{r['idle']['requested']}" if r["idle"] else ""))
idle_ok = not r["idle"] or r["idle"]["alive_at_end"] == r["idle"]["requested"]
sys.exit(1 if errs or r["sessions"] == 0 or not idle_ok or (tls and not hs) else 0)
EOF
    die "$server: errors, no sessions${TLS_ARGS:+, no TLS handshakes} or lost idle connections in $out (details: $(head -c 600 "$out.err"))"
  fi
}

# ---- 3. priming and measured runs ---------------------------------------------------------
mkdir -p "$TMP/prime" "$TMP/results"
for s in corepop dovecot; do
  log "priming $s$OVER_TLS: one full session per user"
  run_bench "$s" "$TMP/prime/$s.json" --mode full --sessions "$USERS" --concurrency 16 --warmup 0
done

IDLE_ARGS=()
if ((IDLE > 0)); then
  IDLE_ARGS=(--idle "$IDLE" --idle-users "$TMP/corpus/idle-users.txt")
fi
log "measuring: mode $MODE$OVER_TLS, login $AUTH, concurrency {$CONCURRENCY}, $REPS x ${DURATION}s (+${WARMUP}s warmup) per server${IDLE_ARGS:+, $IDLE idle connections}"
for ((rep = 1; rep <= REPS; rep++)); do
  for c in $CONCURRENCY; do
    if ((rep % 2)); then order="corepop dovecot"; else order="dovecot corepop"; fi
    for s in $order; do
      run_bench "$s" "$TMP/results/$s-$MODE$AUTH_SUFFIX$RESULT_SUFFIX-c$c-r$rep.json" --mode "$MODE" \
        --auth "$AUTH" --concurrency "$c" --duration "$DURATION" --warmup "$WARMUP" "${IDLE_ARGS[@]}"
    done
  done
done

# ---- 4. table -----------------------------------------------------------------------------
TLS_NOTES=()
if [[ $TLS != none ]]; then
  # Share of resumed handshakes in the measured windows, per server and concurrency.
  RESUMED=$(python3 - "$TMP/results" <<'EOF'
import json, os, re, sys
d = sys.argv[1]
tot = {}
for f in os.listdir(d):
    m = re.match(r"^(corepop|dovecot)-.*-c(\d+)-r\d+\.json$", f)
    if m:
        r = json.load(open(os.path.join(d, f)))
        t = tot.setdefault((m.group(1), int(m.group(2))), [0, 0])
        t[0] += r["tls_resumed"]
        t[1] += r["tls_handshakes"]
parts = [f"{s} {c} conns {100 * a / b:.0f} %" for (s, c), (a, b) in sorted(tot.items()) if b]
print("; ".join(parts))
EOF
  )
  if [[ $TLS_RESUME == 1 ]]; then
    resume_note="each user's sessions keep their own rustls session cache in the load generator (resumption on); resumed handshakes in the measured windows: $RESUMED"
  else
    resume_note="bench --tls-no-resume: every handshake is a full one"
  fi
  TLS_NOTES=(
    --note "TLS: $TLS, $KEY server key (certificate signed by a throw-away CA, verified by the client); negotiated: ${NEGOTIATED[0]}; ${NEGOTIATED[1]}"
    --note "$resume_note"
  )
fi
TABLE=$(python3 "$HERE/summarize.py" "$TMP/results" \
  --title "corepop vs Dovecot $(dovecot --version | cut -d' ' -f1), POP3 mode '$MODE'$OVER_TLS, login '$AUTH' (medians of $REPS)" \
  --note "corpus: $USERS users × $MSGS messages, $CORPUS_STATS; LF endings, Dovecot-style names in new/" \
  --note "each run: ${WARMUP} s warmup + ${DURATION} s measured; closed loop, one user never in two sessions at once${IDLE_ARGS:+; $IDLE idle logged-in connections held during each run}" \
  "${TLS_NOTES[@]}" \
  --note "machine: $(nproc) CPUs, $(uname -r)$MACHINE_TLS_NOTE; load generator, corepop and Dovecot share the CPUs (loopback)" \
  --note "Dovecot: ${DOVECOT_TLS_NOTE}pop3-login service_count=0 (process_min_avail 2), pop3 client_limit=$DOVECOT_POP3_CLIENT_LIMIT, service_count=$DOVECOT_POP3_SERVICE_COUNT; corepop: ${COREPOP_TLS_NOTE}failure_delay_ms=0${COREPOP_THREADS:+, threads=$COREPOP_THREADS}" \
  --note "server CPU = utime+stime of the server's whole process tree during the window / sessions in the window")
echo
echo "$TABLE"
if [[ -n $RESULTS ]]; then
  echo "$TABLE" >"$RESULTS"
  log "table written to $RESULTS"
fi
FAILED=0
