# Shared pieces for the scripts in benches/compare/ (run.sh and its tls.sh wrapper,
# retr_large.sh, idle_mem.sh, login_100k.sh, map_min.sh; sourced, not run): the private Dovecot and
# corepop they all compare, loopback only, everything in one temporary directory $TMP,
# servers stopped on exit, error and Ctrl-C.
#
# The caller sets REPO, HERE and COREPOP, then calls lib_init; after that:
#   start_dovecot MAILDIR_ROOT PASSWD PROCESS_LIMIT   -> DOVECOT_PID, DOVECOT_ADDR
#   start_corepop MAILDIR_ROOT PASSWD [THREADS]        -> COREPOP_PID, COREPOP_ADDR
#   tree_pids PID                                      -> PID and all its descendants
#   tree_rss_kb PID                                    -> summed VmRSS of that tree, in kB
#   tree_pss_kb PID                                    -> summed Pss of that tree, in kB
# MAILDIR_ROOT holds <user>/Maildir; Dovecot gets a hard-linked copy (it renames new/ -> cur/).
# COREPOP_MAIL_EXTRA adds lines to corepop's [mail] section; LIB_NO_DOVECOT=1 lets a script
# that starts only corepop (map_min.sh) run where Dovecot is not installed.
#
# Optional TLS (run.sh with TLS set, i.e. tls.sh): set LIB_TLS_CERT and LIB_TLS_KEY (PEM files) before start_dovecot /
# start_corepop and each server also gets an implicit-TLS listener on 127.0.0.1 with that
# certificate -> DOVECOT_TLS_ADDR, COREPOP_TLS_ADDR. Dovecot then runs with `ssl = required`
# (its plaintext listener offers STLS; note that Dovecot counts loopback connections as
# secured, so it would still accept plaintext logins there); corepop offers STLS on its
# plaintext listener too. Unset (the default), the configs are exactly the no-TLS ones.

log() { echo "$(basename "$0"): $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

tree_pids() {
  python3 - "$1" <<'PY'
import os, sys
root = int(sys.argv[1])
kids = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            s = open(f"/proc/{p}/stat").read()
            ppid = int(s[s.rindex(")") + 2:].split()[1])
            kids.setdefault(ppid, []).append(int(p))
        except (OSError, ValueError):
            pass
out, stack = [], [root]
while stack:
    p = stack.pop()
    out.append(p)
    stack.extend(kids.get(p, []))
print(" ".join(map(str, out)))
PY
}

# tree_kb PID FILE FIELD: FIELD (in kB) of /proc/<pid>/FILE summed over the process tree.
tree_kb() {
  local total=0 pid kb
  for pid in $(tree_pids "$1"); do
    kb=$(awk -v f="$3:" '$1 == f {print $2}' "/proc/$pid/$2" 2>/dev/null || true)
    total=$((total + ${kb:-0}))
  done
  echo "$total"
}
tree_rss_kb() { tree_kb "$1" status VmRSS; }
# Proportional set size: shared pages counted once, not once per process.
tree_pss_kb() { tree_kb "$1" smaps_rollup Pss; }

slab_kb() { awk '/^Slab:/ {print $2}' /proc/meminfo; }

SERVER_PIDS=()
FAILED=1
lib_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  local pid all=()
  for pid in "${SERVER_PIDS[@]}"; do
    # shellcheck disable=SC2207
    all+=($(tree_pids "$pid" 2>/dev/null || echo "$pid"))
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${SERVER_PIDS[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  done
  for pid in "${all[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ $FAILED == 1 ]]; then
    for f in "$TMP/corepop.log" "$TMP/dovecot/log"; do
      [[ -s $f ]] && { log "last lines of $f:"; tail -n 15 "$f" >&2; }
    done
  fi
  if [[ ${KEEP:-0} == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}

lib_init() {
  [[ $(id -u) == 0 ]] || die "run as root: Dovecot's master process needs it"
  [[ -n ${LIB_NO_DOVECOT:-} ]] || command -v dovecot >/dev/null || die "dovecot not found (apt-get install dovecot-pop3d)"
  [[ -x $COREPOP ]] || die "$COREPOP not found (cargo build --release, or set COREPOP)"
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/corepop-$(basename "$0" .sh).XXXXXX")
  chmod 755 "$TMP"
  trap lib_cleanup EXIT
  trap 'exit 130' INT TERM
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_dovecot() {
  local mail=$1 passwd=$2 plimit=$3
  D=$TMP/dovecot
  mkdir -p "$D/run" "$D/state"
  cp -al "$mail" "$TMP/mail-dovecot"
  chown -R dovecot:dovecot "$TMP/mail-dovecot"
  local port
  port=$(free_port)
  ((plimit >= 1024)) || plimit=1024
  local ssl_conf="ssl = no" pop3s_conf="    port = 0" tls_note="no TLS"
  DOVECOT_TLS_ADDR=
  if [[ -n ${LIB_TLS_CERT:-} ]]; then
    local tls_port
    tls_port=$(free_port)
    ssl_conf="ssl = required
ssl_cert = <$LIB_TLS_CERT
ssl_key = <$LIB_TLS_KEY"
    pop3s_conf="    address = 127.0.0.1
    port = $tls_port
    ssl = yes"
    DOVECOT_TLS_ADDR=127.0.0.1:$tls_port
    tls_note="implicit TLS on $DOVECOT_TLS_ADDR"
  fi
  cat >"$D/dovecot.conf" <<CONF
# Private Dovecot (benches/compare/lib.sh): loopback only, $tls_note, state in $D.
base_dir = $D/run
state_dir = $D/state
log_path = $D/log
instance_name = corepop-$(basename "$0" .sh)-$port
protocols = pop3
listen = 127.0.0.1
$ssl_conf
disable_plaintext_auth = no
# Every method "corepop bench --auth" speaks (run.sh AUTH=...); the passwords are {PLAIN},
# so Dovecot can answer APOP, CRAM-MD5 and SCRAM from them.
auth_mechanisms = plain login apop cram-md5 scram-sha-1 scram-sha-256
first_valid_uid = 1
default_login_user = dovenull
default_internal_user = dovecot
default_process_limit = $plimit
default_client_limit = 20000
default_vsz_limit = 1G
mail_location = maildir:$TMP/mail-dovecot/%u/Maildir
passdb {
  driver = passwd-file
  args = $passwd
}
userdb {
  driver = static
  args = uid=dovecot gid=dovecot home=$TMP/mail-dovecot/%u
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $port
  }
  inet_listener pop3s {
$pop3s_conf
  }
  service_count = 0
  process_min_avail = 2
}
service pop3 {
  process_limit = $plimit
  client_limit = ${DOVECOT_POP3_CLIENT_LIMIT:-100}
  service_count = ${DOVECOT_POP3_SERVICE_COUNT:-1000}
  process_min_avail = 2
}
service anvil {
  chroot =
}
service stats {
  unix_listener stats-reader {
    mode = 0666
  }
  unix_listener stats-writer {
    mode = 0666
  }
}
CONF
  dovecot -F -c "$D/dovecot.conf" </dev/null >"$D/stdout" 2>&1 &
  DOVECOT_PID=$!
  SERVER_PIDS+=("$DOVECOT_PID")
  local i
  for i in $(seq 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    kill -0 "$DOVECOT_PID" 2>/dev/null || die "Dovecot exited: $(tail -5 "$D/stdout" "$D/log" 2>/dev/null)"
    ((i < 200)) || die "Dovecot did not listen on $port"
    sleep 0.1
  done
  DOVECOT_ADDR=127.0.0.1:$port
  log "Dovecot $(dovecot --version | cut -d' ' -f1) on $DOVECOT_ADDR${DOVECOT_TLS_ADDR:+ and $DOVECOT_TLS_ADDR (tls)} (pid $DOVECOT_PID)"
}

start_corepop() {
  local mail=$1 passwd=$2 threads=${3:-}
  {
    [[ -n $threads ]] && printf '[server]\nthreads = %s\n' "$threads"
    printf '[auth]\npasswd_file = "%s"\nfailure_delay_ms = 0\n' "$passwd"
    printf '[mail]\nlocation = "maildir:%s/%%u/Maildir"\n' "$mail"
    # Extra [mail] settings, e.g. COREPOP_MAIL_EXTRA='map_min_size = 0'.
    [[ -n ${COREPOP_MAIL_EXTRA:-} ]] && printf '%s\n' "$COREPOP_MAIL_EXTRA"
  } >"$TMP/corepop.toml"
  local tls_args=()
  if [[ -n ${LIB_TLS_CERT:-} ]]; then
    tls_args=(--listen-tls 127.0.0.1:0 --tls-cert "$LIB_TLS_CERT" --tls-key "$LIB_TLS_KEY")
  fi
  "$COREPOP" serve --allow-root --config "$TMP/corepop.toml" --listen 127.0.0.1:0 "${tls_args[@]}" </dev/null \
    >"$TMP/corepop.out" 2>"$TMP/corepop.log" &
  COREPOP_PID=$!
  SERVER_PIDS+=("$COREPOP_PID")
  COREPOP_ADDR=
  COREPOP_TLS_ADDR=
  local i
  for i in $(seq 200); do
    # Plaintext listeners print a bare address; TLS ones add " (tls)".
    COREPOP_ADDR=$(sed -n '/(/!s/^corepop: listening on //p' "$TMP/corepop.out" | head -n 1)
    if [[ -n ${LIB_TLS_CERT:-} ]]; then
      COREPOP_TLS_ADDR=$(sed -n 's/^corepop: listening on \([^ ]*\) (tls)$/\1/p' "$TMP/corepop.out" | head -n 1)
      [[ -n $COREPOP_TLS_ADDR ]] || COREPOP_ADDR=
    fi
    [[ -n $COREPOP_ADDR ]] && break
    kill -0 "$COREPOP_PID" 2>/dev/null || die "corepop exited: $(tail -5 "$TMP/corepop.log")"
    ((i < 200)) || die "corepop did not report its address"
    sleep 0.1
  done
  [[ $COREPOP_ADDR == 127.0.0.1:* ]] || die "corepop listens on $COREPOP_ADDR, not loopback"
  log "corepop on $COREPOP_ADDR${COREPOP_TLS_ADDR:+ and $COREPOP_TLS_ADDR (tls)} (pid $COREPOP_PID)"
}
