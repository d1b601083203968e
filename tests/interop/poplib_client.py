"""Drives a POP3 server with Python's standard-library poplib for tests/interop.rs.

usage: poplib_client.py HOST PORT USER PASSWORD OUTDIR MODE

MODE is one of
  keep        USER/PASS, then CAPA, STAT, LIST, UIDL, LIST n, UIDL n, RETR n, TOP n 0,
              TOP n 3 for every message, NOOP, QUIT; nothing is deleted.
  apop        like keep, but logs in with APOP (poplib.POP3.apop).
  dele:U/U/..  USER/PASS, UIDL, DELE of the messages whose UIDL is listed, QUIT; then a
              second session that records STAT and UIDL.

Everything is written to OUTDIR: report.txt (one `KEY<TAB>VALUE` line per reply or listing
line, in order; keys may repeat) and one file per message
and command (retr.N, top0.N, top3.N) holding the un-stuffed lines joined with CRLF, i.e.
exactly the bytes the server sent between the status line and the terminator.
"""

import os
import poplib
import sys

# poplib refuses lines longer than 2048 octets by default (poplib._MAXLINE, a guard against
# hostile servers); the sample set has a 5,000-octet line, so raise the limit.
poplib._MAXLINE = 1 << 20


def text(b):
    return b.decode("latin-1")


def joined(lines):
    # poplib strips the CRLF from each line and un-stuffs leading dots.
    return b"".join(line + b"\r\n" for line in lines)


def login(p, user, password, mode):
    if mode == "apop":
        return text(p.apop(user, password))
    r1 = text(p.user(user))
    r2 = text(p.pass_(password))
    return r1 + " / " + r2


class Report:
    def __init__(self):
        self.lines = []

    def __setitem__(self, key, value):
        self.add(key, value)

    def add(self, key, value):
        if isinstance(value, bytes):
            value = text(value)
        value = str(value)
        assert "\n" not in value and "\t" not in key, (key, value)
        self.lines.append("%s\t%s\n" % (key, value))


def main():
    host, port, user, password, outdir, mode = sys.argv[1:7]
    report = Report()
    p = poplib.POP3(host, int(port), timeout=30)
    report["welcome"] = text(p.getwelcome())
    try:
        for k, v in p.capa().items():
            report.add("capa", " ".join([k] + v))
    except poplib.error_proto as e:
        report["capa_error"] = str(e)
    report["login"] = login(p, user, password, mode)

    if mode.startswith("dele:"):
        # UIDLs are Maildir base names, which may contain commas but never "/".
        wanted = set(u for u in mode[5:].split("/") if u)
        resp, lines, _ = p.uidl()
        for line in lines:
            num, uid = text(line).split(" ", 1)
            if uid in wanted:
                report.add("dele", p.dele(int(num)))
        report["quit"] = text(p.quit())
        p = poplib.POP3(host, int(port), timeout=30)
        login(p, user, password, "keep")
        report["stat_after"] = "%d %d" % p.stat()
        resp, lines, _ = p.uidl()
        for line in lines:
            report.add("uidl_after", line)
        report["quit_after"] = text(p.quit())
    else:
        count, size = p.stat()
        report["stat"] = "%d %d" % (count, size)
        resp, lines, _ = p.list()
        report["list_resp"] = resp
        for line in lines:
            report.add("list", line)
        resp, lines, _ = p.uidl()
        report["uidl_resp"] = resp
        for line in lines:
            report.add("uidl", line)
        for n in range(1, count + 1):
            report.add("list_n", p.list(n))
            report.add("uidl_n", p.uidl(n))
            resp, lines, octets = p.retr(n)
            report.add("retr_resp", resp)
            report.add("retr_octets", "%d %d" % (n, octets))
            with open(os.path.join(outdir, "retr.%d" % n), "wb") as f:
                f.write(joined(lines))
            for k in (0, 3):
                resp, lines, octets = p.top(n, k)
                with open(os.path.join(outdir, "top%d.%d" % (k, n)), "wb") as f:
                    f.write(joined(lines))
        report["noop"] = text(p.noop())
        report["quit"] = text(p.quit())

    with open(os.path.join(outdir, "report.txt"), "w") as f:
        f.writelines(report.lines)


if __name__ == "__main__":
    main()
