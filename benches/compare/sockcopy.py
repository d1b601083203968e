#!/usr/bin/env python3
"""Physical baseline for large RETR: copy FILE over loopback TCP with socket.sendfile.

Usage: sockcopy.py FILE CONNS TRANSFERS_PER_CONN
Forks CONNS server processes (accept, os.sendfile the whole file, close) and CONNS client
processes (connect, recv_into one 128 KiB buffer until EOF, discard), all on 127.0.0.1, and
prints one JSON line: bytes, seconds, MB/s (1 MB = 10^6 bytes), server and client CPU seconds.
"""
import json, os, socket, sys, time

path, conns, per = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
size = os.path.getsize(path)
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(256)
port = ls.getsockname()[1]


def cpu_of(pids):
    t = 0.0
    for p in pids:
        try:
            s = open(f"/proc/{p}/stat").read()
            f = s[s.rindex(")") + 2:].split()
            t += (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return t


servers = []
for _ in range(conns):
    pid = os.fork()
    if pid == 0:
        fd = os.open(path, os.O_RDONLY)
        while True:
            c, _ = ls.accept()
            c.sendfile(os.fdopen(os.dup(fd), "rb"))
            c.close()
    servers.append(pid)
ls.close()
r, w = os.pipe()
clients = []
for _ in range(conns):
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)  # start signal
        buf = bytearray(131072)
        for _ in range(per):
            s = socket.create_connection(("127.0.0.1", port))
            got = 0
            while True:
                n = s.recv_into(buf)
                if not n:
                    break
                got += n
            s.close()
            if got != size:
                os._exit(2)
        os._exit(0)
    clients.append(pid)
os.close(r)
scpu0 = cpu_of(servers)
t0 = time.perf_counter()
os.write(w, b"x" * conns)
ok = True
ccpu = 0.0
for p in clients:
    _, st, ru = os.wait4(p, 0)
    ccpu += ru.ru_utime + ru.ru_stime
    ok &= os.waitstatus_to_exitcode(st) == 0
dt = time.perf_counter() - t0
scpu = cpu_of(servers) - scpu0
for p in servers:
    os.kill(p, 9)
    os.waitpid(p, 0)
total = size * conns * per
print(json.dumps({"ok": ok, "bytes": total, "seconds": dt, "mb_per_s": total / dt / 1e6,
                  "server_cpu_s": scpu, "client_cpu_s": ccpu}))
sys.exit(0 if ok else 1)
