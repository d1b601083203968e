#!/usr/bin/env python3
"""Generate a Maildir corpus for POP3 benchmarks (stdlib only, deterministic per --seed).

Layout under --out:
  passwd             Dovecot passwd-file, all users:  userNNNN:{PLAIN}pw-NNNN::::::
  users.txt          workload logins (user:password), for `corepop bench --users`
  idle-users.txt     logins of the --idle-users extra users (empty maildirs), if any
  mail/<user>/Maildir/{cur,new,tmp}
  stats.txt          one line: messages, total octets, mean/median/max size

Messages are written to new/ as Postfix delivers them: LF line endings, Dovecot-style names
`<secs>.M<usecs>P<pid>.<host>,S=<size>,W=<CRLF size>`. Sizes are mostly 2-30 KB (log-uniform),
some 30-120 KB and about 1 % 150 KB-1 MB (base64 attachments). About 2 % of body lines
start with '.', including lone "." lines, so servers must dot-stuff. One message in 200 lacks
a final newline (servers then add CRLF before the terminator).
"""

import argparse
import base64
import math
import os
import random
import statistics

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would make "
    "like him into time has look two more write go see number no way could people my than "
    "first water been call who oil its now find long down day did get come made may part "
    "invoice meeting schedule report quarterly budget project server mailbox delivery backup "
    "attached please regards thanks tomorrow review update status customer order shipment"
).split()

HOST = "mail.example.net"


def make_line_pool(rng, n=4000):
    pool = []
    for _ in range(n):
        k = rng.randint(3, 14)
        pool.append(" ".join(rng.choice(WORDS) for _ in range(k)))
    return pool


DOT_LINES = [".", "..", ". indented with a dot", ".signature follows", "...and so on", ".hidden"]


def loguniform(rng, lo, hi):
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def pick_size(rng):
    r = rng.random()
    if r < 0.01:
        return loguniform(rng, 150_000, 1_000_000)
    if r < 0.10:
        return loguniform(rng, 30_000, 120_000)
    return loguniform(rng, 2_000, 30_000)


def text_body(rng, pool, target):
    out = []
    n = 0
    while n < target:
        if rng.random() < 0.02:
            line = rng.choice(DOT_LINES)
        else:
            line = rng.choice(pool)
        out.append(line)
        n += len(line) + 1
    return "\n".join(out) + "\n"


def message(rng, pool, user, seq, when, target):
    sender = f"{rng.choice(WORDS)}.{rng.choice(WORDS)}@example.org"
    date = f"Tue, 14 Jan 2025 {when % 24:02d}:{when % 60:02d}:{(when * 7) % 60:02d} +0000"
    subj = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8)))
    qid = "%010X" % rng.getrandbits(40)
    hdr = (
        f"Return-Path: <{sender}>\n"
        f"X-Original-To: {user}@example.net\n"
        f"Delivered-To: {user}@example.net\n"
        f"Received: from mx.example.org (mx.example.org [192.0.2.{rng.randint(1, 254)}])\n"
        f"\tby {HOST} (Postfix) with ESMTPS id {qid}\n"
        f"\tfor <{user}@example.net>; {date} (UTC)\n"
        f"Received: by mx.example.org (Postfix, from userid 1000)\n"
        f"\tid {qid[::-1]}; {date}\n"
        f"From: {sender.split('@')[0].replace('.', ' ').title()} <{sender}>\n"
        f"To: {user}@example.net\n"
        f"Subject: {subj}\n"
        f"Date: {date}\n"
        f"Message-ID: <{when}.{seq}.{rng.getrandbits(32):08x}@example.org>\n"
        f"MIME-Version: 1.0\n"
    )
    if target > 40_000 and rng.random() < 0.7:
        boundary = f"=_b{rng.getrandbits(48):012x}"
        text = text_body(rng, pool, rng.randint(500, 3000))
        att_len = max(1000, (target - len(hdr) - len(text) - 400) * 3 // 4)
        att = base64.encodebytes(rng.randbytes(att_len)).decode()
        body = (
            f"Content-Type: multipart/mixed; boundary=\"{boundary}\"\n\n"
            f"This is a multi-part message in MIME format.\n\n--{boundary}\n"
            f"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n{text}\n"
            f"--{boundary}\nContent-Type: application/pdf; name=\"doc{seq}.pdf\"\n"
            f"Content-Transfer-Encoding: base64\n"
            f"Content-Disposition: attachment; filename=\"doc{seq}.pdf\"\n\n{att}\n--{boundary}--\n"
        )
    else:
        body = (
            "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
            + text_body(rng, pool, max(100, target - len(hdr) - 80))
        )
    msg = hdr + body
    if rng.random() < 0.005:
        msg = msg.rstrip("\n")
    return msg.encode()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--users", type=int, default=320)
    ap.add_argument("--messages", type=int, default=40, help="messages per user")
    ap.add_argument("--idle-users", type=int, default=0, help="extra users with empty maildirs")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()

    rng = random.Random(a.seed)
    pool = make_line_pool(rng)
    os.makedirs(a.out, exist_ok=True)
    mail = os.path.join(a.out, "mail")
    sizes = []
    base = 1736848800  # 2025-01-14
    with open(os.path.join(a.out, "passwd"), "w") as pw, open(
        os.path.join(a.out, "users.txt"), "w"
    ) as ul, open(os.path.join(a.out, "idle-users.txt"), "w") as il:
        names = [(f"user{i:04d}", f"pw-{i:04d}", False) for i in range(a.users)]
        names += [(f"idle{i:05d}", f"ipw-{i:05d}", True) for i in range(a.idle_users)]
        for name, password, idle in names:
            pw.write(f"{name}:{{PLAIN}}{password}::::::\n")
            (il if idle else ul).write(f"{name}:{password}\n")
            md = os.path.join(mail, name, "Maildir")
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(md, sub), exist_ok=True)
            if idle:
                continue
            for seq in range(a.messages):
                when = base + seq * 3600 + rng.randint(0, 3599)
                data = message(rng, pool, name, seq, when, pick_size(rng))
                size = len(data)
                wsize = size + data.count(b"\n")
                fname = (
                    f"{when}.M{rng.randint(0, 999999)}P{rng.randint(1000, 99999)}.{HOST},"
                    f"S={size},W={wsize}"
                )
                path = os.path.join(md, "new", fname)
                with open(path, "wb") as f:
                    f.write(data)
                os.utime(path, (when, when))
                sizes.append(size)
    if sizes:
        line = (
            f"{len(sizes)} messages, {sum(sizes) / 1e6:.1f} MB, mean {statistics.mean(sizes) / 1e3:.1f} KB, "
            f"median {statistics.median(sizes) / 1e3:.1f} KB, max {max(sizes) / 1e3:.0f} KB"
        )
    else:
        line = "0 messages"
    with open(os.path.join(a.out, "stats.txt"), "w") as f:
        f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
