#!/usr/bin/env bash
# Login+STAT+UIDL on a 100,000-message Maildir: corepop vs Dovecot (Debian dovecot-pop3d), same
# run, same machine; then memory per idle logged-in corepop session on 10,000-message Maildirs.
#
# Usage: benches/compare/login_100k.sh [messages=100000] [idle_sessions=200] [idle_msgs=10000]
#   SKIP_100K=1: only the idle-session memory part.
# Needs root (Dovecot's master process; its mail processes run as the `dovecot` user) and
# python3. Builds target/release/corepop first unless COREPOP is set; KEEP=1 keeps the
# temporary directory.
# Servers, temporary directory and cleanup come from lib.sh, as in retr_large.sh and
# idle_mem.sh: corepop (one thread here) serves the generated Maildir root and Dovecot its own
# hard-linked copy (cp -al), so neither sees the other's renames or list files. Dovecot is the
# tuned one all these scripts use (pop3-login with service_count = 0, pop3 processes serving
# up to 100 sessions at once and reused for DOVECOT_POP3_SERVICE_COUNT [1000]; see
# README.md), so its figures are
# comparable with theirs. Timings are the client's wall time for
# connect + USER + PASS + STAT + UIDL (whole listing read) + QUIT, median of 7 runs.
#   warm:       the same Maildir logged into again (indexes and caches warm)
#   after-new:  the first login after 1,000 new deliveries into new/
set -euo pipefail
N=${1:-100000}
IDLE=${2:-200}
IDLE_MSGS=${3:-10000}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
if [[ -z ${COREPOP:-} ]]; then
  cargo build --release --quiet --manifest-path "$REPO/Cargo.toml"
  COREPOP=$REPO/target/release/corepop
fi
# shellcheck source=lib.sh
source "$HERE/lib.sh"
lib_init

if [ -z "${SKIP_100K:-}" ]; then
python3 - "$TMP" "$N" <<'PY'
import os, sys
w, n = sys.argv[1], int(sys.argv[2])
md = f"{w}/mail/bench/Maildir"
for s in ("cur", "new", "tmp"):
    os.makedirs(f"{md}/{s}", exist_ok=True)
body = "From: a@example.org\nTo: b@example.org\nSubject: message {i}\n\nLine one of {i}.\n.dot line\nLast line.\n"
for i in range(n):
    # Half Postfix-style (no sizes in the name), half Dovecot-style with ,S= and ,W=.
    b = body.format(i=i).encode()
    w_size = len(b) + b.count(b"\n")
    if i % 2:
        name = f"cur/{1600000000+i}.M{i}P1.bench,S={len(b)},W={w_size}:2,S"
    else:
        name = f"cur/{1600000000+i}.V803I{i:x}M1.bench:2,S"
    with open(f"{md}/{name}", "wb") as f:
        f.write(b)
with open(f"{w}/passwd", "w") as f:
    f.write("bench:{PLAIN}pw::::::\n")
PY
start_dovecot "$TMP/mail" "$TMP/passwd" 1024
# COREPOP_LOG=warn (overrides [log] level): no per-session log lines, as before lib.sh.
COREPOP_LOG=warn start_corepop "$TMP/mail" "$TMP/passwd" 1

python3 - "$TMP/mail-dovecot/bench/Maildir" "${DOVECOT_ADDR##*:}" \
  "$TMP/mail/bench/Maildir" "${COREPOP_ADDR##*:}" <<'PY'
import os, socket, statistics, sys, time
dc_root, pd, cp_root, pc = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def session(port):
    t = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    def line():
        l = f.readline()
        assert l.startswith(b"+OK"), l
        return l
    line()
    for c in (b"USER bench", b"PASS pw", b"STAT"):
        s.sendall(c + b"\r\n"); st = line()
    s.sendall(b"UIDL\r\n"); line()
    n = 0
    while f.readline() != b".\r\n":
        n += 1
    s.sendall(b"QUIT\r\n"); line()
    s.close()
    return time.perf_counter() - t, st.split()[1].decode(), n

def deliver(root, t0, k):
    for i in range(k):
        b = f"Subject: new {i}\n\nnew mail {i}\n".encode()
        tmp = f"{root}/tmp/d.{t0}.{i}"
        with open(tmp, "wb") as fh:
            fh.write(b)
        os.rename(tmp, f"{root}/new/{t0+i}.V803I{i:x}M2.bench")

def med(xs):
    return statistics.median(xs) * 1000

res = {}
for name, port, root in (("dovecot", pd, dc_root), ("corepop", pc, cp_root)):
    first, cnt, n = session(port)
    time.sleep(1.5)  # let directory times age past corepop's racy window
    warm = [session(port)[0] for _ in range(7)]
    deliver(root, 1700000000, 1000)
    if name == "dovecot":
        os.system(f"chown -R dovecot:dovecot {root}")
    after, cnt2, n2 = session(port)
    time.sleep(1.5)
    warm2 = [session(port)[0] for _ in range(7)]
    res[name] = (first, med(warm), after, med(warm2), cnt, cnt2, n, n2)
    print(f"{name:8} messages={cnt}->{cnt2} uidl_lines={n}->{n2} first(cold)={first*1000:.1f} ms "
          f"warm(median of 7)={med(warm):.1f} ms after-1000-new={after*1000:.1f} ms "
          f"warm-again={med(warm2):.1f} ms")
d, c = res["dovecot"], res["corepop"]
print(f"speed-up warm: {d[1]/c[1]:.1f}x   after 1000 new: {d[2]/c[2]:.1f}x   cold: {d[0]/c[0]:.1f}x")
PY

kill -TERM "$DOVECOT_PID" "$COREPOP_PID" 2>/dev/null || true
wait "$DOVECOT_PID" "$COREPOP_PID" 2>/dev/null || true
fi

# ---- memory per idle logged-in session (corepop) ----
python3 - "$TMP" "$IDLE" "$IDLE_MSGS" <<'PY'
import os, sys
w, users, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
base = f"{w}/idle/proto/Maildir"
for s in ("cur", "new", "tmp"):
    os.makedirs(f"{base}/{s}", exist_ok=True)
for i in range(n):
    b = f"From: a@example.org\nSubject: m {i}\n\nbody {i}\n".encode()
    with open(f"{base}/cur/{1600000000+i}.M{i}P1.idle:2,S", "wb") as f:
        f.write(b)
with open(f"{w}/idle/passwd", "w") as f:
    for u in range(users):
        f.write(f"u{u}:{{PLAIN}}pw::::::\n")
PY
for u in $(seq 0 $((IDLE-1))); do mkdir -p "$TMP/idle/mail/u$u"; cp -al "$TMP/idle/proto/Maildir" "$TMP/idle/mail/u$u/Maildir"; done
# mimalloc returns freed pages at once, so RSS follows live memory closely.
MIMALLOC_PURGE_DELAY=0 COREPOP_LOG=warn start_corepop "$TMP/idle/mail" "$TMP/idle/passwd" 1
python3 - "${COREPOP_ADDR##*:}" "$COREPOP_PID" "$IDLE" "$IDLE_MSGS" <<'PY'
import socket, sys, time
port, pid, users, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"):
            return int(l.split()[1]) * 1024
def login(u):
    s = socket.create_connection(("127.0.0.1", port))
    f = s.makefile("rb")
    f.readline()
    for c in (f"USER u{u}", "PASS pw", "STAT"):
        s.sendall(c.encode() + b"\r\n"); l = f.readline(); assert l.startswith(b"+OK"), l
    return s, f
time.sleep(1.5)
r0 = rss()
for rnd in range(2):   # each Maildir's index built and cached; sessions closed (twice: warm)
    for u in range(users):
        s, f = login(u); s.sendall(b"QUIT\r\n"); f.readline(); s.close()
    time.sleep(1.5)
r1 = rss()
held = [login(u) for u in range(users)]   # now the same Maildirs, sessions kept open, idle
time.sleep(1.5)
r2 = rss()
print(f"idle sessions: {users} users, {n} messages each (hard-linked Maildirs)")
print(f"  shared index per Maildir (in the cache, shared by all sessions/cores): {(r1-r0)/users/1024:.1f} KiB")
for s, f in held:
    s.close()
time.sleep(1.5)
r3 = rss()
print(f"  per idle logged-in session: {(r2-r1)/users:.0f} bytes (RSS with sessions held minus before), "
      f"{(r2-r3)/users:.0f} bytes (minus after they closed)")
print(f"  RSS: start {r0>>10} KiB, indexes cached {r1>>10} KiB, sessions held {r2>>10} KiB, closed {r3>>10} KiB")
PY
FAILED=0
