#!/usr/bin/env bash
# Login+STAT+UIDL on a 100,000-message Maildir: corepop vs Dovecot (Debian dovecot-pop3d), same
# run, same machine; then memory per idle logged-in corepop session on 10,000-message Maildirs.
#
# Usage: benches/compare/login_100k.sh [messages=100000] [idle_sessions=200] [idle_msgs=10000]
# Needs root (Dovecot's mail processes run as the `dovecot` user) and python3.
# Each server gets its own hard-linked copy of the Maildir (cp -al), so neither sees the
# other's renames or list files. Timings are the client's wall time for
# connect + USER + PASS + STAT + UIDL (whole listing read) + QUIT, median of 7 runs.
#   warm:       the same Maildir logged into again (indexes and caches warm)
#   after-new:  the first login after 1,000 new deliveries into new/
set -euo pipefail
N=${1:-100000}
IDLE=${2:-200}
IDLE_MSGS=${3:-10000}
HERE=$(cd "$(dirname "$0")/../.." && pwd)
W=$(mktemp -d /tmp/corepop-login100k.XXXXXX)
chmod 755 "$W"  # Dovecot's auth process reads the passwd file as another user
trap 'kill $(cat "$W"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$W"' EXIT

cargo build --release --quiet --manifest-path "$HERE/Cargo.toml"
BIN="$HERE/target/release/corepop"
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
if [ -z "${SKIP_100K:-}" ]; then   # SKIP_100K=1: only the idle-session memory part

python3 - "$W" "$N" <<'PY'
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
mkdir -p "$W/dc" "$W/cp"
cp -al "$W/mail" "$W/dc/mail"
cp -al "$W/mail" "$W/cp/mail"
chown -R dovecot:dovecot "$W/dc"
mkdir -p "$W/dv/run" "$W/dv/state"
PD=$(free_port); PC=$(free_port)
cat > "$W/dv/dovecot.conf" <<CONF
base_dir = $W/dv/run
state_dir = $W/dv/state
log_path = $W/dv/log
instance_name = corepop-bench-$PD
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
first_valid_uid = 1
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:$W/dc/mail/%u/Maildir
passdb {
  driver = passwd-file
  args = $W/passwd
}
userdb {
  driver = static
  args = uid=dovecot gid=dovecot home=$W/dc/mail/%u
}
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = $PD
  }
  inet_listener pop3s {
    port = 0
  }
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
dovecot -F -c "$W/dv/dovecot.conf" & echo $! > "$W/dovecot.pid"
cat > "$W/corepop.toml" <<CONF
[auth]
passwd_file = "$W/passwd"
failure_delay_ms = 0
[mail]
location = "maildir:$W/cp/mail/%u/Maildir"
[log]
level = "warn"
[privileges]
allow_root = true
CONF
"$BIN" serve --allow-root --config "$W/corepop.toml" --listen "127.0.0.1:$PC" --threads 1 > "$W/corepop.out" 2>&1 & echo $! > "$W/corepop.pid"
sleep 2

python3 - "$W" "$PD" "$PC" <<'PY'
import os, socket, statistics, sys, time
w, pd, pc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

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
for name, port, root in (("dovecot", pd, f"{w}/dc/mail/bench/Maildir"),
                         ("corepop", pc, f"{w}/cp/mail/bench/Maildir")):
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

kill "$(cat "$W/dovecot.pid")" "$(cat "$W/corepop.pid")" 2>/dev/null || true
fi

# ---- memory per idle logged-in session (corepop) ----
python3 - "$W" "$IDLE" "$IDLE_MSGS" <<'PY'
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
for u in $(seq 0 $((IDLE-1))); do mkdir -p "$W/idle/mail/u$u"; cp -al "$W/idle/proto/Maildir" "$W/idle/mail/u$u/Maildir"; done
PI=$(free_port)
cat > "$W/idle.toml" <<CONF
[auth]
passwd_file = "$W/idle/passwd"
failure_delay_ms = 0
[mail]
location = "maildir:$W/idle/mail/%u/Maildir"
[log]
level = "warn"
[privileges]
allow_root = true
CONF
# mimalloc returns freed pages at once, so RSS follows live memory closely.
MIMALLOC_PURGE_DELAY=0 "$BIN" serve --allow-root --config "$W/idle.toml" --listen "127.0.0.1:$PI" --threads 1 > "$W/idle.out" 2>&1 & echo $! > "$W/idle.pid"
sleep 2
python3 - "$PI" "$(cat "$W/idle.pid")" "$IDLE" "$IDLE_MSGS" <<'PY'
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
