#!/usr/bin/env python3
"""Independent black-box POP3 conformance suite for corepop.

Written from the RFCs (RFC 1939 POP3, RFC 2449 extension mechanism / CAPA /
response codes / PIPELINING, RFC 3206 SYS and AUTH response codes, RFC 1957
implementation notes) and the project's protocol facts
(shared/design/COMPATIBILITY.md), never from corepop's source.

Usage:
    python3 tests/conformance/pop3_conformance.py --bin PATH_TO_COREPOP [-v]

The suite builds its own fixture (passwd-file + Maildirs) in a temporary
directory, starts corepop (`serve --listen 127.0.0.1:0 --threads 1`), runs
every test over real sockets on 127.0.0.1, stops the server (SIGTERM, SIGKILL
after 10 s) and prints a final line `N passed, M failed`.  Exit status is 0
only if every test passed.

Development aid: `--dovecot` runs the same suite against a private Dovecot
instance on 127.0.0.1 (to validate the suite's expectations against a mature
implementation).  Tests that need corepop-only configuration are skipped then.

Standard library only (Python 3.11).
"""

import argparse
import base64
import hashlib
import os
import random
import re
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import unittest

HOST = "127.0.0.1"
TIMEOUT = 5.0          # default socket timeout for a single read
LOCK_RETRY_S = 4.0     # how long we wait for a maildrop lock to be released

OPTS = None            # argparse namespace
FIX = None             # Fixture
SERVERS = {}           # role -> Server
VIOLATIONS = []        # response-syntax violations seen anywhere in the run
CURRENT_TEST = "<setup>"

RFC1939 = "RFC 1939"
RFC2449 = "RFC 2449"
RFC3206 = "RFC 3206"

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def to_crlf(raw: bytes) -> bytes:
    """Normalise every line ending (LF or CRLF) to CRLF."""
    return re.sub(rb"\r?\n", b"\r\n", raw)


def short(b, n=240):
    r = repr(b)
    return r if len(r) <= n else r[:n] + "...(%d bytes)" % len(b)


def first_diff(got: bytes, exp: bytes) -> str:
    n = min(len(got), len(exp))
    i = 0
    while i < n and got[i] == exp[i]:
        i += 1
    lo = max(0, i - 40)
    return ("lengths got=%d expected=%d; first difference at offset %d:\n"
            "   expected ...%r...\n   observed ...%r..." %
            (len(got), len(exp), i, exp[lo:i + 40], got[lo:i + 40]))


RESP_CODE_RE = re.compile(
    rb"^\[([\x21-\x2e\x30-\x5c\x5e-\x7f]+(?:/[\x21-\x2e\x30-\x5c\x5e-\x7f]+)*)\]")
AUTH_VERBS = {"USER", "PASS", "APOP", "AUTH"}


def record_violation(where, msg, raw):
    VIOLATIONS.append("%s: %s: %s [%s]" % (CURRENT_TEST, where, msg, short(raw, 160)))


def verb_of(cmd) -> str:
    if isinstance(cmd, bytes):
        cmd = cmd.decode("latin-1")
    return cmd.strip().split(" ")[0].upper() if cmd.strip() else ""


def check_status_line(raw: bytes, cmd) -> list:
    """Validate one status line (RFC 1939 §3, RFC 2449 §3/§4/§8, RFC 3206).

    Returns the list of problems found (also recorded globally)."""
    probs = []
    where = "response to %r" % (cmd,)
    if not raw.endswith(b"\r\n"):
        probs.append("status line not terminated by CRLF (RFC 1939 §3)")
    body = raw[:-2] if raw.endswith(b"\r\n") else raw.rstrip(b"\n")
    if b"\r" in body or b"\n" in body:
        probs.append("bare CR or LF inside a status line (RFC 1939 §3)")
    if len(raw) > 512:
        probs.append("status line is %d octets, limit is 512 incl. CRLF (RFC 2449 §4, RFC 1939 §3)" % len(raw))
    m = re.match(rb"^(\+OK|-ERR)( |$)", body)
    if not m:
        probs.append("status must be '+OK' or '-ERR' in upper case followed by SP or CRLF (RFC 1939 §3, RFC 2449 §3)")
    else:
        status = m.group(1)
        text = body[len(status) + 1:]
        if text.startswith(b"["):
            rc = RESP_CODE_RE.match(text)
            if not rc:
                probs.append("text starts with '[' but is not a valid resp-code (RFC 2449 §3, §6.4 RESP-CODES)")
            elif cmd != "<greeting>":
                code = rc.group(1).decode("latin-1").upper()
                top = code.split("/")[0]
                verb = verb_of(cmd)
                if status == b"+OK" and top in ("IN-USE", "LOGIN-DELAY", "AUTH", "SYS"):
                    probs.append("response code [%s] is only defined for -ERR (RFC 2449 §8, RFC 3206)" % code)
                if top == "IN-USE" and verb not in ("PASS", "APOP", "AUTH"):
                    probs.append("[IN-USE] only valid on -ERR to PASS/APOP/AUTH, not %s (RFC 2449 §8.1.2)" % verb)
                if top == "LOGIN-DELAY" and verb not in AUTH_VERBS:
                    probs.append("[LOGIN-DELAY] only valid for USER/PASS/APOP/AUTH, not %s (RFC 2449 §8.1.1)" % verb)
                if top == "AUTH" and verb not in AUTH_VERBS:
                    probs.append("[AUTH] only valid for USER/PASS/APOP/AUTH, not %s (RFC 3206 §5)" % verb)
                if top == "SYS" and (len(code.split("/")) < 2 or code.split("/")[1] not in ("TEMP", "PERM")):
                    probs.append("SYS response code must be SYS/TEMP or SYS/PERM (RFC 3206 §4)")
    for p in probs:
        record_violation(where, p, raw)
    return probs


# --------------------------------------------------------------------------
# POP3 client
# --------------------------------------------------------------------------


class POP:
    """A deliberately low-level POP3 client that keeps the raw bytes."""

    def __init__(self, port=None, timeout=TIMEOUT, role="main", read_greeting=True):
        if port is None:
            port = SERVERS[role].port
        self.port = port
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self.buf = bytearray()
        self.closed_by_peer = False
        self.problems = []
        self.greeting = None
        self.greeting_raw = None
        if read_greeting:
            self.greeting = self.status("<greeting>")

    # -- low level ---------------------------------------------------------
    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes):
        self.sock.sendall(data)

    def _fill(self, timeout=None) -> bool:
        if timeout is not None:
            self.sock.settimeout(timeout)
        try:
            d = self.sock.recv(262144)
        finally:
            if timeout is not None:
                self.sock.settimeout(self.timeout)
        if not d:
            self.closed_by_peer = True
            return False
        self.buf += d
        return True

    def read_line(self, timeout=None) -> bytes:
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > 1 << 20:
                raise AssertionError("no line terminator in 1 MiB of response data")
            if not self._fill(timeout):
                raise EOFError("server closed the connection (pending bytes: %s)" % short(bytes(self.buf)))

    def status(self, cmd, timeout=None) -> str:
        raw = self.read_line(timeout)
        if cmd == "<greeting>":
            self.greeting_raw = raw
        self.problems += check_status_line(raw, cmd)
        return raw.decode("latin-1").rstrip("\r\n")

    def multi(self, cmd="<multi>") -> bytes:
        """Read a multi-line body up to the terminating '.' line.

        Returns the data with byte-stuffing removed (CRLF line endings kept)."""
        pos = 0
        while True:
            if self.buf.startswith(b".\r\n"):
                data_end, term_end = 0, 3
                break
            i = self.buf.find(b"\r\n.\r\n", pos)
            if i >= 0:
                data_end, term_end = i + 2, i + 5
                break
            pos = max(0, len(self.buf) - 4)
            if not self._fill():
                raise EOFError("connection closed inside a multi-line response to %r (got %s)"
                               % (cmd, short(bytes(self.buf))))
        raw = bytes(self.buf[:data_end])
        del self.buf[:term_end]
        self.last_multi_raw = raw
        where = "multi-line response to %r" % (cmd,)
        if re.search(rb"(?<!\r)\n", raw):
            p = "bare LF inside a multi-line response (RFC 1939 §3: lines end with CRLF)"
            self.problems.append(p)
            record_violation(where, p, raw[:200])
        if re.search(rb"\r(?!\n)", raw):
            p = "bare CR inside a multi-line response"
            self.problems.append(p)
            record_violation(where, p, raw[:200])
        m = re.search(rb"(?:^|(?<=\r\n))\.(?!\.)", raw)
        if m:
            p = "line beginning with '.' not byte-stuffed (RFC 1939 §3)"
            self.problems.append(p)
            record_violation(where, p, raw[max(0, m.start() - 40):m.start() + 40])
        return re.sub(rb"(?:^|(?<=\r\n))\.", b"", raw)

    def multi_unstuffed_last(self) -> bytes:
        return re.sub(rb"(?:^|(?<=\r\n))\.", b"", self.last_multi_raw)

    # -- commands ------------------------------------------------------------
    def cmd(self, line, timeout=None) -> str:
        if isinstance(line, str):
            line = line.encode("latin-1")
        self.send(line + b"\r\n")
        return self.status(line.decode("latin-1"), timeout)

    def cmd_multi(self, line):
        """Send a command whose +OK answer is multi-line; return (status, data or None)."""
        st = self.cmd(line)
        if st.startswith("+OK"):
            return st, self.multi(line)
        return st, None

    def expect_eof(self, timeout=3.0) -> bool:
        """True if the server closes the connection within timeout without sending more."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.buf:
                return False
            try:
                if not self._fill(max(0.05, deadline - time.time())):
                    return True
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True
        return False

    def login(self, user, password=None, retry_in_use=True):
        """USER/PASS; retries on [IN-USE] (a previous test's lock may still be releasing)."""
        if password is None:
            password = FIX.passwords[user]
        deadline = time.time() + (LOCK_RETRY_S if retry_in_use else 0)
        while True:
            st1 = self.cmd("USER " + user)
            st2 = self.cmd("PASS " + password)
            if st2.startswith("+OK") or "[IN-USE]" not in st2.upper() or time.time() > deadline:
                break
            time.sleep(0.1)
            if self.closed_by_peer or self.expect_eof(0.01):
                self.close()
                self.__init__(self.port)
        if not st2.startswith("+OK"):
            raise AssertionError("login as %r failed: USER -> %r, PASS -> %r" % (user, st1, st2))
        return st2

    def quit(self):
        st = self.cmd("QUIT")
        return st

    # -- convenience -----------------------------------------------------------
    def stat(self):
        st = self.cmd("STAT")
        m = re.match(r"^\+OK (\d+) (\d+)(?: .*)?$", st)
        if not m:
            raise AssertionError("STAT: malformed drop listing %r (RFC 1939 §5: '+OK nn mm')" % st)
        return int(m.group(1)), int(m.group(2))

    def list_all(self):
        st, data = self.cmd_multi("LIST")
        if data is None:
            raise AssertionError("LIST failed: %r" % st)
        out = []
        for line in data.split(b"\r\n")[:-1]:
            m = re.match(rb"^(\d+) (\d+)(?: .*)?$", line)
            if not m:
                raise AssertionError("LIST: malformed scan listing %r (RFC 1939 §5)" % line)
            out.append((int(m.group(1)), int(m.group(2))))
        return out

    def uidl_all(self):
        st, data = self.cmd_multi("UIDL")
        if data is None:
            raise AssertionError("UIDL failed: %r" % st)
        out = []
        for line in data.split(b"\r\n")[:-1]:
            m = re.match(rb"^(\d+) ([\x21-\x7e]{1,70})$", line)
            if not m:
                raise AssertionError("UIDL: malformed unique-id listing %r (RFC 1939 §7: "
                                     "'n uid', uid 1-70 chars in 0x21-0x7E)" % line)
            out.append((int(m.group(1)), m.group(2).decode()))
        return out

    def retr(self, n):
        st, data = self.cmd_multi("RETR %d" % n)
        if data is None:
            raise AssertionError("RETR %d failed: %r" % (n, st))
        return data


def pipeline_send(conn, payload: bytes):
    """Write a big pipelined payload from a thread so we can read concurrently."""
    err = []

    def run():
        try:
            conn.sock.sendall(payload)
        except OSError as e:
            err.append(e)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, err


def is_multi(line: str) -> bool:
    parts = line.split(" ")
    v = parts[0].upper()
    if v in ("CAPA", "RETR", "TOP"):
        return True
    if v in ("LIST", "UIDL") and len(parts) == 1:
        return True
    return False


# --------------------------------------------------------------------------
# fixture
# --------------------------------------------------------------------------


class Msg:
    def __init__(self, raw, subdir, name):
        self.raw = raw
        self.subdir = subdir
        self.name = name
        self.uniq = name.split(":")[0]
        self.crlf = to_crlf(raw)
        self.size = len(self.crlf)
        if self.crlf and not self.crlf.endswith(b"\r\n"):
            self.wire = self.crlf + b"\r\n"   # CRLF added before '.', not counted in size
        else:
            self.wire = self.crlf

    def top(self, k):
        """Expected TOP n k data, or None if the message has no header/body separator."""
        lines = self.crlf.split(b"\r\n")
        if self.crlf.endswith(b"\r\n"):
            lines = lines[:-1]
        try:
            h = lines.index(b"")
        except ValueError:
            return None
        body = lines[h + 1:]
        if k >= len(body):
            return self.wire
        return b"".join(l + b"\r\n" for l in lines[:h + 1 + k])


def mk_name(secs, seq, subdir, raw=None, dovecot=False, flags="S"):
    name = "%d.M%dP%d.mx.example.org" % (secs, 100000 + seq * 7, 2000 + seq)
    if dovecot == "S-only":
        name += ",S=%d" % len(raw)        # physical (LF) size only: not the POP3 size
    elif dovecot:
        name += ",S=%d,W=%d" % (len(raw), len(to_crlf(raw)))
    if subdir == "cur":
        name += ":2," + flags
    return name


def big_message():
    rnd = random.Random(1939)
    parts = [b"From: Big Sender <big@example.org>\n",
             b"To: alice@example.org\n",
             b"Subject: a large message of about one megabyte\n",
             b"Message-ID: <large-1@example.org>\n",
             b"MIME-Version: 1.0\n",
             b"\n"]
    total = sum(len(p) for p in parts)
    i = 0
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:-_=+/"
    while total < 1_000_000:
        i += 1
        if i % 97 == 0:
            line = b"." + bytes(rnd.choice(alphabet) for _ in range(rnd.randint(0, 60)))
        elif i % 389 == 0:
            line = b"."
        elif i % 1000 == 0:
            line = b"x" * 5000          # a very long line
        else:
            line = bytes(rnd.choice(alphabet) for _ in range(rnd.randint(0, 76)))
        line += b"\n"
        parts.append(line)
        total += len(line)
    parts.append(b"-- \nlast line of the big one\n")
    return b"".join(parts)


M_LF = (b"Return-Path: <sender@example.org>\n"
        b"From: Sender <sender@example.org>\n"
        b"To: alice@example.org\n"
        b"Subject: plain message with LF line endings\n"
        b"Message-ID: <lf-1@example.org>\n"
        b"Date: Tue, 14 Nov 2023 22:13:21 +0000\n"
        b"\n"
        b"First body line.\n"
        b"Second body line.\n"
        b"\n"
        b"Fourth body line, after an empty line.\n")
M_CRLF = (b"From: Crlf Sender <crlf@example.org>\r\n"
          b"To: alice@example.org\r\n"
          b"Subject: message stored with CRLF line endings and a\r\n"
          b"\tfolded header line\r\n"
          b"Message-ID: <crlf-1@example.org>\r\n"
          b"\r\n"
          b"Body line 1\r\n"
          b"Body line 2\r\n"
          b"Body line 3\r\n")
M_MIXED = (b"From: mixed@example.org\n"
           b"To: alice@example.org\r\n"
           b"Subject: mixed line endings\n"
           b"\r\n"
           b"lf line\n"
           b"crlf line\r\n"
           b"\n"
           b"\r\n"
           b"last, crlf\r\n")
M_DOTS = (b"From: dots@example.org\n"
          b"To: alice@example.org\n"
          b"Subject: lines starting with dots\n"
          b"\n"
          b".\n"
          b"..\n"
          b"...\n"
          b".leading dot\n"
          b". dot space\n"
          b"a line with . inside\n"
          b".\r\n"
          b"\n"
          b"..double\n"
          b"last line is a lone dot:\n"
          b".\n")
M_NOFINAL = (b"From: nofinal@example.org\n"
             b"Subject: message without final newline\n"
             b"\n"
             b"line 1\n"
             b"line 2 has no newline")
M_NOFINAL_DOT = (b"From: nofinaldot@example.org\n"
                 b"Subject: ends with a lone dot and no newline\n"
                 b"\n"
                 b"text\n"
                 b".")
M_HDR_BLANK = (b"From: hdrblank@example.org\n"
               b"Subject: headers and the separator line, empty body\n"
               b"\n")
M_HDR_ONLY = (b"From: hdronly@example.org\n"
              b"Subject: headers only, no separator line\n")
M_NUL = (b"From: nul@example.org\n"
         b"Subject: NUL \x00 in a header\n"
         b"\n"
         b"body \x00 with a NUL\n"
         b"\x00\n"
         b"\x00\x00\x00 three NULs\n")
M_8BIT = (b"From: eight@example.org\n"
          b"Subject: 8-bit and invalid UTF-8\n"
          b"\n"
          b"Latin-1: caf\xe9 na\xefve\n"
          b"invalid UTF-8: \xc3\x28 \xff\xfe \x80\n"
          b"UTF-8: \xe2\x82\xac \xf0\x9f\x93\xac\n"
          + b"L" * 3000 + b"\n")
M_SONLY = (b"From: sonly@example.org\n"
           b"Subject: Dovecot-style name with ,S= (LF size) but no ,W=\n"
           b"\n"
           b"one\n"
           b"two\n"
           b"three\n")
M_CRLF_DOVECOT = (b"From: crlfdovecot@example.org\r\n"
                  b"Subject: CRLF file with ,S= and ,W= (equal)\r\n"
                  b"\r\n"
                  b".dot first\r\n"
                  b"end\r\n")
M_FIRSTDOT = (b".the very first line starts with a dot\n"
              b"Subject: first-line dot\n"
              b"\n"
              b".\n")
M_LAST = (b"From: last@example.org\r\n"
          b"Subject: small message after the large one\r\n"
          b"\r\n"
          b"bye\r\n")


def small_set(base_secs):
    """A 5-message mailbox used for destructive tests."""
    msgs = []
    for i, (raw, sub, dov) in enumerate([(M_LF, "new", False), (M_CRLF, "cur", False),
                                         (M_MIXED, "new", False), (M_DOTS, "cur", True),
                                         (M_NOFINAL, "new", False)]):
        msgs.append(Msg(raw, sub, mk_name(base_secs + i, i + 1, sub, raw, dov)))
    return msgs


class Fixture:
    def __init__(self, root, dovecot=False):
        self.root = root
        self.dovecot = dovecot
        self.mailroot = os.path.join(root, "mail")
        self.passwd = os.path.join(root, "passwd")
        self.passwords = {}
        self.mailboxes = {}      # user -> [Msg] in delivery order
        self._build()

    def maildir(self, user):
        return os.path.join(self.mailroot, user, "Maildir")

    def own(self, path):
        if self.dovecot:
            for dp, dns, fns in os.walk(path):
                os.chown(dp, 65534, 65534)
                for f in fns:
                    os.chown(os.path.join(dp, f), 65534, 65534)
            if os.path.isfile(path):
                os.chown(path, 65534, 65534)

    def write_maildir(self, user, msgs):
        md = self.maildir(user)
        for d in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(md, d), exist_ok=True)
        for m in msgs:
            with open(os.path.join(md, m.subdir, m.name), "wb") as f:
                f.write(m.raw)
        self.mailboxes[user] = list(msgs)

    def deliver(self, user, raw, secs, seq):
        """Deliver like an MTA: write to tmp/, rename into new/."""
        md = self.maildir(user)
        name = mk_name(secs, seq, "new")
        tmp = os.path.join(md, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(raw)
        self.own(tmp)
        os.rename(tmp, os.path.join(md, "new", name))
        return Msg(raw, "new", name)

    def find_file(self, user, uniq):
        """Path of the message whose unique part (before ':') is uniq, or None."""
        md = self.maildir(user)
        for d in ("new", "cur"):
            for fn in os.listdir(os.path.join(md, d)):
                if fn.split(":")[0] == uniq:
                    return os.path.join(md, d, fn)
        return None

    def _build(self):
        os.makedirs(self.mailroot)
        lines = []

        def user(name, pw, scheme="PLAIN", stored=None):
            self.passwords[name] = pw
            lines.append("%s:{%s}%s::::::" % (name, scheme, stored if stored is not None else pw))

        # -- alice: the main read-only fixture ---------------------------------
        user("alice", "secret")
        spec = [(M_LF, "new", False, "S"), (M_CRLF, "cur", False, "S"), (M_MIXED, "new", False, "S"),
                (M_DOTS, "cur", True, "S"), (M_NOFINAL, "new", False, "S"),
                (M_NOFINAL_DOT, "cur", False, ""), (M_HDR_BLANK, "new", False, "S"),
                (M_HDR_ONLY, "new", False, "S"), (M_NUL, "cur", False, "S"),
                (M_8BIT, "new", False, "S"), (big_message(), "cur", True, "RS"),
                (M_LAST, "new", False, "S"), (M_SONLY, "cur", "S-only", "S"),
                (M_CRLF_DOVECOT, "new", True, "")]
        msgs = [Msg(raw, sub, mk_name(1700000001 + i * 60, i + 1, sub, raw, dov, fl))
                for i, (raw, sub, dov, fl) in enumerate(spec)]
        self.write_maildir("alice", msgs)
        # a delivery in progress: files in tmp/ are not messages
        with open(os.path.join(self.maildir("alice"), "tmp", "1700009999.M1P1.mx.example.org"), "wb") as f:
            f.write(b"Subject: half written\n\n")
        self.idx = {"lf": 1, "crlf": 2, "mixed": 3, "dots": 4, "nofinal": 5, "nofinal_dot": 6,
                    "hdr_blank": 7, "hdr_only": 8, "nul": 9, "8bit": 10, "large": 11, "last": 12,
                    "s_only": 13, "crlf_dovecot": 14}

        # -- bob: hashed password (APOP impossible) -----------------------------
        user("bob", "bob-Secret-1", "SHA256",
             base64.b64encode(hashlib.sha256(b"bob-Secret-1").digest()).decode())
        self.write_maildir("bob", [Msg(M_LF, "new", mk_name(1700000001, 1, "new"))])

        # -- carol: empty maildrop -------------------------------------------------
        user("carol", "carol-pw")
        self.write_maildir("carol", [])

        # -- destructive-test users, each with its own 5-message mailbox -----------
        for i, u in enumerate(["dave", "erin", "frank", "gina", "henry", "ivan", "ivy",
                               "jack", "olga", "pete", "quinn", "rita", "sam", "tina", "vera",
                               "walt"]):
            user(u, u + "-pw")
            self.write_maildir(u, small_set(1700100000 + i * 1000))

        # -- uma: byte-identical messages must still get distinct unique-ids --------
        user("uma", "uma-pw")
        self.write_maildir("uma", [Msg(M_LF, "new", mk_name(1700000001, 1, "new")),
                                   Msg(M_LF, "new", mk_name(1700000001, 2, "new")),
                                   Msg(M_LF, "cur", mk_name(1700000002, 3, "cur")),
                                   Msg(M_CRLF, "new", mk_name(1700000003, 4, "new")),
                                   Msg(M_CRLF, "cur", mk_name(1700000003, 5, "cur"))])

        # -- mike: lock release after a reset during a big RETR -------------------
        user("mike", "mike-pw")
        big = Msg(big_message(), "new", mk_name(1700000001, 1, "new"))
        self.write_maildir("mike", [big, Msg(M_LF, "new", mk_name(1700000002, 2, "new"))])

        # -- judy: delivery order (numeric seconds, then name) and ignored files ----
        user("judy", "judy-pw")
        o = []

        def om(secs, tag, sub, flags="S"):
            raw = b"Subject: order " + tag.encode() + b"\n\n" + tag.encode() + b"\n"
            name = "%d.M%sP1.mx.example.org" % (secs, tag)
            if sub == "cur":
                name += ":2," + flags
            return Msg(raw, sub, name)
        # expected order: 999999999 < 1000000000 < 1700000000(a) < 1700000000(b) < 1700000005
        o = [om(999999999, "one", "cur"), om(1000000000, "two", "new"),
             om(1700000000, "three-a", "new"), om(1700000000, "three-b", "cur", ""),
             om(1700000005, "four", "new")]
        write_order = [o[4], o[2], o[0], o[3], o[1]]
        md = self.maildir("judy")
        for d in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(md, d), exist_ok=True)
        for m in write_order:
            with open(os.path.join(md, m.subdir, m.name), "wb") as f:
                f.write(m.raw)
        with open(os.path.join(md, "tmp", "1700000001.Mtmp.mx.example.org"), "wb") as f:
            f.write(b"Subject: in tmp\n\nnot a message yet\n")
        self.mailboxes["judy"] = o

        # -- kate: a zero-length message and a CRLF-only one ------------------------
        user("kate", "kate-pw")
        self.write_maildir("kate", [Msg(b"", "new", mk_name(1700000001, 1, "new")),
                                    Msg(b"\r\n", "new", mk_name(1700000002, 2, "new")),
                                    Msg(M_LF, "new", mk_name(1700000003, 3, "new")),
                                    Msg(M_FIRSTDOT, "new", mk_name(1700000004, 4, "new"))])

        # -- nora: many messages ---------------------------------------------------
        user("nora", "nora-pw")
        many = []
        for i in range(250):
            raw = b"Subject: message %d\n\n" % (i + 1) + b"x" * (i % 37) + b"\n"
            sub = "new" if i % 3 else "cur"
            many.append(Msg(raw, sub, mk_name(1700000000 + i, i + 1, sub)))
        self.write_maildir("nora", many)

        # -- longpw: a command of exactly 255 octets must be accepted -----------------
        pw = "".join(random.Random(2449).choice("abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789")
                     for _ in range(248))
        user("longpw", pw)   # "PASS " + 248 + CRLF = 255 octets
        self.write_maildir("longpw", [Msg(M_LF, "new", mk_name(1700000001, 1, "new"))])

        # -- broken: the Maildir path is a regular file (a system problem) ---------------
        user("broken", "broken-pw")
        os.makedirs(os.path.join(self.mailroot, "broken"))
        with open(self.maildir("broken"), "wb") as f:
            f.write(b"this is not a directory\n")

        with open(self.passwd, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.own(self.mailroot)


# --------------------------------------------------------------------------
# server processes
# --------------------------------------------------------------------------


class Server:
    LISTEN_RE = re.compile(rb"corepop: listening on 127\.0\.0\.1:(\d+)")

    def __init__(self, role, config_text):
        self.role = role
        self.config_path = os.path.join(FIX.root, "%s.toml" % role)
        with open(self.config_path, "w") as f:
            f.write(config_text)
        self.log_path = os.path.join(FIX.root, "%s.log" % role)
        self.proc = None
        self.port = None
        self.crashes = 0

    def start(self):
        logf = open(self.log_path, "ab")
        cmd = [OPTS.bin, "serve", "--config", self.config_path, "--listen", "127.0.0.1:0",
               "--threads", "1", "--allow-root"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=logf, cwd=FIX.root)
        logf.close()
        fd = self.proc.stdout.fileno()
        deadline = time.time() + 30
        seen = b""
        while time.time() < deadline:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                seen += chunk
                m = self.LISTEN_RE.search(seen)
                if m and b"\n" in seen[m.end():m.end() + 2] + b"\n":
                    self.port = int(m.group(1))
                    break
            if self.proc.poll() is not None:
                break
        if self.port is None:
            self.stop()
            raise RuntimeError("server %s did not announce 'corepop: listening on 127.0.0.1:PORT' "
                               "on stdout within 30 s; stdout was %s; log tail:\n%s"
                               % (self.role, short(seen), self.log_tail()))

        def drain():
            try:
                while os.read(fd, 4096):
                    pass
            except OSError:
                pass
        threading.Thread(target=drain, daemon=True).start()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self):
        self.stop()
        self.port = None
        self.start()

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                data = f.read()
            return data[-n:].decode("utf-8", "replace")
        except OSError:
            return "<no log>"


class DovecotServer(Server):
    """Development aid: a private Dovecot on 127.0.0.1 using the same fixture."""

    def __init__(self, role):
        self.role = role
        self.crashes = 0
        s = socket.socket()
        s.bind((HOST, 0))
        self.port = s.getsockname()[1]
        s.close()
        d = FIX.root
        os.makedirs(os.path.join(d, "dovecot-run"), exist_ok=True)
        os.makedirs(os.path.join(d, "dovecot-state"), exist_ok=True)
        self.log_path = os.path.join(d, "dovecot.log")
        self.config_path = os.path.join(d, "dovecot.conf")
        with open(self.config_path, "w") as f:
            f.write("""base_dir = {d}/dovecot-run
state_dir = {d}/dovecot-state
log_path = {d}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain apop
first_valid_uid = 0
mail_location = maildir:{d}/mail/%u/Maildir
pop3_lock_session = yes
auth_failure_delay = 0
login_trusted_networks = 127.0.0.0/8
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""".format(d=d, port=self.port))
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["dovecot", "-F", "-c", self.config_path],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("dovecot did not start")


def server_answers(srv) -> bool:
    if not srv.alive():
        return False
    try:
        c = POP(port=srv.port, timeout=5)
        ok = c.greeting.startswith("+OK")
        c.send(b"QUIT\r\n")
        c.close()
        return ok
    except Exception:
        return False


# --------------------------------------------------------------------------
# test base
# --------------------------------------------------------------------------


class Base(unittest.TestCase):
    roles = ("main",)
    maxDiff = 4000

    def setUp(self):
        global CURRENT_TEST
        CURRENT_TEST = self.id().split(".", 1)[-1]
        self._conns = []

    def tearDown(self):
        for c in self._conns:
            try:
                if not c.closed_by_peer:
                    c.sock.settimeout(2)
                    c.send(b"\r\nRSET\r\nQUIT\r\n")
                    t0 = time.time()
                    while time.time() - t0 < 2 and c._fill(2):
                        pass
            except Exception:
                pass
            c.close()
        # every test doubles as a "the server survives this" test
        for role in self.roles:
            srv = SERVERS.get(role)
            if srv is None:
                continue
            if not server_answers(srv):
                time.sleep(0.5)
                if not server_answers(srv):
                    srv.crashes += 1
                    tail = srv.log_tail(1500)
                    try:
                        srv.restart()
                    except Exception as e:
                        tail += "\n(restart failed: %s)" % e
                    self.fail("server %r no longer answers new connections after this test "
                              "(restarted it for the following tests). log tail:\n%s" % (role, tail))

    # -- helpers --------------------------------------------------------------
    def conn(self, role="main", **kw):
        c = POP(port=SERVERS[role].port, **kw)
        self._conns.append(c)
        return c

    def session(self, user, role="main"):
        c = self.conn(role)
        c.login(user)
        return c

    def assertOK(self, st, what):
        self.assertTrue(st.startswith("+OK"), "%s: expected +OK, observed %r" % (what, st))

    def assertERR(self, st, what):
        self.assertTrue(st.startswith("-ERR"), "%s: expected -ERR, observed %r" % (what, st))

    def assertBytes(self, got, exp, what):
        if got != exp:
            self.fail("%s: data differs.\n%s" % (what, first_diff(got, exp)))

    def assertCode(self, st, code, what=""):
        """RFC 2449 §3/§8: a response code is '[CODE]' immediately after '-ERR '."""
        self.assertTrue(st.upper().startswith("-ERR [%s]" % code),
                        "%s: expected '-ERR [%s] ...', observed %r" % (what or "response", code, st))

    def assertNoCode(self, st, codes, what):
        for code in codes:
            self.assertNotIn("[" + code, st.upper(), "%s: must not carry [%s]: %r" % (what, code, st))

    def msgs(self, user="alice"):
        return FIX.mailboxes[user]

    def wait_login(self, user, timeout=LOCK_RETRY_S):
        """Log in, retrying while the maildrop is still locked; returns the connection."""
        deadline = time.time() + timeout
        last = None
        while True:
            c = self.conn()
            c.cmd("USER " + user)
            last = c.cmd("PASS " + FIX.passwords[user])
            if last.startswith("+OK") or time.time() > deadline:
                break
            c.close()
            time.sleep(0.1)
        self.assertOK(last, "login as %s (lock should have been released)" % user)
        return c


def skip_unless_corepop(fn):
    def wrapper(self, *a, **kw):
        if OPTS.dovecot:
            self.skipTest("needs corepop-specific configuration")
        return fn(self, *a, **kw)
    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


# ==========================================================================
# Greeting
# ==========================================================================


class T01Greeting(Base):
    def test_greeting_is_positive_single_line(self):
        """RFC 1939 §4: on connect the server issues a one-line +OK greeting (≤512 octets, RFC 2449 §4)."""
        c = self.conn()
        self.assertTrue(c.greeting.startswith("+OK"), "greeting %r" % c.greeting)
        self.assertEqual(c.problems, [], "greeting syntax problems: %s" % c.problems)

    def test_nothing_unsolicited_after_greeting(self):
        """RFC 1939 §3: the server only responds to commands; nothing follows the greeting by itself."""
        c = self.conn()
        try:
            got = c._fill(0.5)
        except socket.timeout:
            got = False
        self.assertFalse(got or c.buf, "unsolicited data after greeting: %s" % short(bytes(c.buf)))

    def test_commands_sent_before_greeting_is_read(self):
        """RFC 2449 §6.6 PIPELINING: commands already queued when the greeting goes out are processed
        in order."""
        c = self.conn(read_greeting=False)
        c.send(b"CAPA\r\nUSER alice\r\nPASS secret\r\nSTAT\r\nQUIT\r\n")
        self.assertTrue(c.status("<greeting>").startswith("+OK"))
        self.assertOK(c.status("CAPA"), "CAPA")
        c.multi("CAPA")
        self.assertOK(c.status("USER"), "USER")
        self.assertOK(c.status("PASS"), "PASS")
        self.assertRegex(c.status("STAT"), r"^\+OK %d " % len(self.msgs()))
        self.assertOK(c.status("QUIT"), "QUIT")

    def test_greeting_apop_timestamp_syntax(self):
        """RFC 1939 §7: an APOP server includes a timestamp with msg-id syntax <local@domain> in its greeting."""
        c = self.conn()
        m = re.search(r"<[^<>\s@]+@[^<>\s@]+>", c.greeting)
        self.assertIsNotNone(m, "no <unique@host> timestamp in greeting %r" % c.greeting)

    def test_greeting_timestamp_unique_per_connection(self):
        """RFC 1939 §7: the timestamp MUST be different each time the server issues a greeting."""
        seen = []
        for _ in range(6):
            c = self.conn()
            m = re.search(r"<[^<>]*>", c.greeting)
            self.assertIsNotNone(m, "no timestamp in greeting %r" % c.greeting)
            seen.append(m.group(0))
            c.close()
        self.assertEqual(len(set(seen)), len(seen), "timestamps repeat: %r" % seen)

    def test_many_simultaneous_connections_get_greeting(self):
        """RFC 1939 §3: every connection gets a greeting; 30 idle connections at once (1 server thread)."""
        cs = [self.conn() for _ in range(30)]
        for c in cs:
            self.assertTrue(c.greeting.startswith("+OK"))


# ==========================================================================
# CAPA
# ==========================================================================


def parse_capa(data: bytes):
    caps = {}
    for line in data.split(b"\r\n")[:-1]:
        parts = line.decode("latin-1").split(" ")
        caps[parts[0].upper()] = parts[1:]
    return caps


class T02Capa(Base):
    def capa(self, c):
        st, data = c.cmd_multi("CAPA")
        self.assertOK(st, "CAPA")
        return data

    def test_capa_in_authorization_lists_required_tags(self):
        """RFC 2449 §5/§6: CAPA lists TOP USER UIDL RESP-CODES PIPELINING AUTH-RESP-CODE (RFC 3206 §6) IMPLEMENTATION."""
        caps = parse_capa(self.capa(self.conn()))
        for tag in ("TOP", "USER", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE", "IMPLEMENTATION"):
            self.assertIn(tag, caps, "capability %s missing from %r" % (tag, sorted(caps)))

    def test_capa_line_syntax(self):
        """RFC 2449 §3/§5: capa-tag = 1*cchar (no '.'), params separated by single SP, each line ≤512 octets."""
        for c in (self.conn(), self.session("alice")):
            data = self.capa(c)
            lines = data.split(b"\r\n")[:-1]
            self.assertTrue(lines, "empty capability list")
            tags = []
            for line in lines:
                self.assertLessEqual(len(line) + 2, 512, "capability line too long: %r" % line)
                self.assertRegex(line, rb"^[\x21-\x2d\x2f-\x7f]+(?: [\x21-\x7f]+)*$",
                                 "malformed capability line %r" % line)
                tags.append(line.split(b" ")[0].upper())
            self.assertEqual(len(tags), len(set(tags)), "duplicate capability tags: %r" % tags)

    def test_capa_transaction_announces_authorization_caps(self):
        """RFC 2449 §5: capabilities available in the AUTHORIZATION state MUST be announced in both states."""
        before = parse_capa(self.capa(self.conn()))
        after = parse_capa(self.capa(self.session("alice")))
        # STLS is the one tolerated omission: RFC 2595 §4 makes it usable only before login, so
        # leaving it out of the TRANSACTION list misleads no client. Everything else (USER, SASL...)
        # must be listed in both states.
        missing = [t for t in before if t not in after and t != "STLS"]
        self.assertEqual(missing, [], "announced before login but not in TRANSACTION: %r (after=%r)"
                         % (missing, sorted(after)))

    def test_capa_implementation_has_argument(self):
        """RFC 2449 §6.9: IMPLEMENTATION takes a string argument describing the server."""
        caps = parse_capa(self.capa(self.conn()))
        if "IMPLEMENTATION" not in caps:
            self.fail("IMPLEMENTATION not announced (corepop contract)")
        self.assertTrue(caps["IMPLEMENTATION"], "IMPLEMENTATION without its text argument")

    def test_capa_optional_tag_arguments(self):
        """RFC 2449 §6.5/§6.7: LOGIN-DELAY secs [USER], EXPIRE days|NEVER [USER], SASL mech list (if announced)."""
        for c in (self.conn(), self.session("alice")):
            caps = parse_capa(self.capa(c))
            if "LOGIN-DELAY" in caps:
                self.assertRegex(" ".join(caps["LOGIN-DELAY"]), r"^\d+( USER)?$")
            if "EXPIRE" in caps:
                self.assertRegex(" ".join(caps["EXPIRE"]), r"^(\d+|NEVER)( USER)?$")
            if "SASL" in caps:
                self.assertTrue(caps["SASL"], "SASL without mechanisms")

    def test_capa_case_insensitive(self):
        """RFC 1939 §3: keywords are case-insensitive (capa == CAPA)."""
        c = self.conn()
        st, data = c.cmd_multi("capa")
        self.assertOK(st, "capa")
        st2, data2 = c.cmd_multi("CaPa")
        self.assertOK(st2, "CaPa")
        self.assertEqual(parse_capa(data).keys(), parse_capa(data2).keys())

    def test_sasl_if_announced(self):
        """RFC 2449 §6.3 / RFC 5034: if SASL PLAIN is announced, AUTH PLAIN works; otherwise AUTH is -ERR
        and the session stays in AUTHORIZATION."""
        c = self.conn()
        caps = parse_capa(self.capa(c))
        if "SASL" in caps and "PLAIN" in [m.upper() for m in caps["SASL"]]:
            ir = base64.b64encode(b"\0alice\0secret").decode()
            st = c.cmd("AUTH PLAIN " + ir)
            self.assertOK(st, "AUTH PLAIN with initial response")
            self.assertEqual(c.stat()[0], len(self.msgs()))
            c.quit()
            c2 = self.conn()
            st = c2.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong").decode())
            self.assertERR(st, "AUTH PLAIN wrong password")
            self.assertCode(st, "AUTH", "RFC 3206 §6: AUTH-RESP-CODE -> [AUTH] on bad credentials")
        else:
            st = c.cmd("AUTH PLAIN " + base64.b64encode(b"\0alice\0secret").decode())
            self.assertERR(st, "AUTH while SASL is not announced")
            c.login("alice")
            self.assertEqual(c.stat()[0], len(self.msgs()))

    def test_stls_if_announced(self):
        """RFC 2595 §4: if STLS is announced, it starts TLS in AUTHORIZATION; STLS is -ERR in TRANSACTION."""
        c = self.conn()
        caps = parse_capa(self.capa(c))
        if "STLS" not in caps:
            st = c.cmd("STLS")
            self.assertERR(st, "STLS while not announced")
            c.login("alice")
            return
        st = c.cmd("STLS")
        self.assertOK(st, "STLS")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
        c.login("alice")
        self.assertEqual(c.stat()[0], len(self.msgs()))
        st = c.cmd("STLS")
        self.assertERR(st, "STLS in TRANSACTION/after TLS")


# ==========================================================================
# AUTHORIZATION state
# ==========================================================================


class T03Authorization(Base):
    def test_user_pass_success(self):
        """RFC 1939 §7 USER/PASS: +OK then the session is in TRANSACTION (STAT works)."""
        c = self.conn()
        self.assertOK(c.cmd("USER alice"), "USER alice")
        self.assertOK(c.cmd("PASS secret"), "PASS secret")
        self.assertEqual(c.stat()[0], len(self.msgs()))

    def test_transaction_commands_rejected_before_login(self):
        """RFC 1939 §5: STAT LIST RETR DELE NOOP RSET TOP UIDL are TRANSACTION-only; -ERR in AUTHORIZATION,
        and nothing happens (DELE 1 does not mark anything)."""
        c = self.conn()
        for cmd in ("STAT", "LIST", "LIST 1", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 0", "UIDL",
                    "UIDL 1", "LAST"):
            st = c.cmd(cmd)
            self.assertERR(st, "%s in AUTHORIZATION" % cmd)
            self.assertNoCode(st, ["IN-USE", "LOGIN-DELAY"], cmd)
        c.login("alice")
        n, size = c.stat()
        self.assertEqual(n, len(self.msgs()), "DELE before login must not have marked anything")
        self.assertEqual(size, sum(m.size for m in self.msgs()))

    def test_unknown_commands_authorization(self):
        """RFC 1939 §3: unknown keywords get -ERR; the session continues."""
        c = self.conn()
        for cmd in ("FOO", "HELO example.org", "XTND XMIT", "USERX alice", "US", "PASSWORD x", "RETRIEVE 1"):
            self.assertERR(c.cmd(cmd), cmd)
        c.login("alice")

    def test_commands_case_insensitive(self):
        """RFC 1939 §3: command keywords are case-insensitive."""
        c = self.conn()
        self.assertOK(c.cmd("user alice"), "user")
        self.assertOK(c.cmd("pAsS secret"), "pAsS")
        self.assertRegex(c.cmd("stat"), r"^\+OK \d+ \d+")
        st, _ = c.cmd_multi("lIsT")
        self.assertOK(st, "lIsT")
        self.assertOK(c.cmd("list 1"), "list 1")
        st, d = c.cmd_multi("retr 1")
        self.assertOK(st, "retr 1")
        self.assertBytes(d, self.msgs()[0].wire, "retr 1")
        st, _ = c.cmd_multi("Top 1 0")
        self.assertOK(st, "Top 1 0")
        st, _ = c.cmd_multi("uidl")
        self.assertOK(st, "uidl")
        self.assertOK(c.cmd("Uidl 1"), "Uidl 1")
        self.assertOK(c.cmd("noop"), "noop")
        self.assertOK(c.cmd("dele 1"), "dele 1")
        self.assertOK(c.cmd("rset"), "rset")
        self.assertOK(c.cmd("quit"), "quit")

    def test_pass_without_user(self):
        """RFC 1939 §7: PASS is only valid immediately after a successful USER."""
        c = self.conn()
        st = c.cmd("PASS secret")
        self.assertERR(st, "PASS without USER")
        self.assertNoCode(st, ["IN-USE"], "PASS without USER")
        c.login("alice")

    def test_missing_arguments(self):
        """RFC 1939 §7: USER/PASS/APOP arguments are required."""
        c = self.conn()
        self.assertERR(c.cmd("USER"), "USER without name")
        self.assertERR(c.cmd("APOP"), "APOP without arguments")
        self.assertERR(c.cmd("APOP alice"), "APOP without digest")
        self.assertOK(c.cmd("USER alice"), "USER alice")
        self.assertERR(c.cmd("PASS"), "PASS without password")
        c.login("alice")

    def test_wrong_password_auth_code(self):
        """RFC 3206 §5/§6: with AUTH-RESP-CODE announced, a bad password gives -ERR [AUTH]."""
        c = self.conn()
        c.cmd("USER alice")
        st = c.cmd("PASS wrong-password")
        self.assertERR(st, "wrong password")
        self.assertTrue(st.upper().startswith("-ERR [AUTH]"), "expected '-ERR [AUTH] ...', observed %r" % st)

    def test_password_is_case_sensitive(self):
        """RFC 1939 §7: the password must match exactly."""
        c = self.conn()
        c.cmd("USER alice")
        self.assertERR(c.cmd("PASS SECRET"), "PASS SECRET")

    def test_unknown_user_same_reply_as_wrong_password(self):
        """Unknown user and wrong password must be indistinguishable (project contract; RFC 3206 §5 [AUTH])."""
        a = self.conn()
        u1 = a.cmd("USER alice")
        p1 = a.cmd("PASS not-the-password")
        b = self.conn()
        u2 = b.cmd("USER nosuchuser")
        p2 = b.cmd("PASS not-the-password")
        self.assertEqual(u1.replace("alice", "<u>"), u2.replace("nosuchuser", "<u>"),
                         "USER replies differ (existing vs unknown user)")
        self.assertEqual(p1.replace("alice", "<u>"), p2.replace("nosuchuser", "<u>"),
                         "PASS replies differ (wrong password vs unknown user)")
        self.assertCode(p2, "AUTH", "unknown user -> -ERR [AUTH] (RFC 3206 §5)")

    def test_retry_after_failed_login(self):
        """RFC 1939 §4: after a failed authentication, if the server keeps the connection, the client may
        start again with a new authentication command."""
        c = self.conn()
        c.cmd("USER alice")
        self.assertERR(c.cmd("PASS bad"), "bad password")
        if c.expect_eof(0.2):
            return  # the server MAY close (RFC 1939 §4)
        c.login("alice")
        self.assertEqual(c.stat()[0], len(self.msgs()))

    def test_pass_after_failed_pass_needs_new_user(self):
        """RFC 1939 §7 PASS restrictions: only immediately after a successful USER; a second PASS after a
        failed one is -ERR (the USER is consumed)."""
        c = self.conn()
        c.cmd("USER alice")
        self.assertERR(c.cmd("PASS bad"), "bad password")
        if c.expect_eof(0.2):
            return
        st = c.cmd("PASS secret")
        self.assertERR(st, "PASS directly after a failed PASS (no USER in between)")

    def test_user_twice_last_one_counts(self):
        """RFC 1939 §7: USER may be repeated; PASS applies to the user named by the immediately preceding USER."""
        c = self.conn()
        c.cmd("USER carol")
        self.assertOK(c.cmd("USER alice"), "second USER")
        self.assertOK(c.cmd("PASS secret"), "PASS for alice")
        self.assertEqual(c.stat()[0], len(self.msgs("alice")))

    def test_hashed_password_user_pass(self):
        """RFC 1939 §7 USER/PASS for a user whose password is stored hashed ({SHA256})."""
        c = self.conn()
        c.login("bob")
        self.assertEqual(c.stat()[0], 1)

    def test_quit_in_authorization(self):
        """RFC 1939 §4: QUIT in AUTHORIZATION -> +OK, connection closed, no UPDATE state."""
        c = self.conn()
        c.cmd("USER alice")
        c.send(b"QUIT\r\nPASS secret\r\nSTAT\r\n")
        self.assertOK(c.status("QUIT"), "QUIT")
        self.assertTrue(c.expect_eof(), "server did not close the connection after QUIT (or answered "
                        "commands pipelined after it): %s" % short(bytes(c.buf)))

    def test_nul_in_user_is_not_truncated(self):
        """RFC 2449 §3: arguments are printable ASCII; 'alice\\0junk' is not 'alice' (must not log in)."""
        c = self.conn()
        c.send(b"USER alice\x00junk\r\n")
        c.status("USER alice\\0junk")
        c.send(b"PASS secret\r\n")
        st = c.status("PASS")
        self.assertERR(st, "login with NUL-injected user name")
        if not c.expect_eof(0.1):
            c.login("alice")

    def test_invalid_utf8_user(self):
        """RFC 2449 §3: invalid bytes in USER must not crash the server; PASS then fails with [AUTH]."""
        c = self.conn()
        c.send(b"USER \xc3\x28\xff\r\n")
        c.status("USER <bad utf8>")
        c.send(b"PASS secret\r\n")
        st = c.status("PASS")
        self.assertERR(st, "PASS for an invalid UTF-8 user name")
        if not c.expect_eof(0.1):
            c.login("alice")

    def test_broken_maildrop_is_sys_not_auth(self):
        """RFC 3206 §4/§5: correct credentials but a maildrop that cannot be opened (Maildir path is a
        file) -> -ERR with [SYS/TEMP] or [SYS/PERM], never [AUTH] (the credentials were fine)."""
        c = self.conn()
        c.cmd("USER broken")
        st = c.cmd("PASS " + FIX.passwords["broken"])
        self.assertERR(st, "login to a maildrop that cannot be opened")
        self.assertNoCode(st, ["AUTH", "IN-USE"], "broken maildrop")
        self.assertRegex(st.upper(), r"^-ERR \[SYS/(TEMP|PERM)\]", "expected a SYS response code")

    def test_failed_open_releases_lock(self):
        """RFC 1939 §4: if a lock was acquired but the server answers -ERR, it must release the lock first:
        a second attempt on the unopenable maildrop is not [IN-USE]."""
        for _ in range(2):
            c = self.conn()
            c.cmd("USER broken")
            st = c.cmd("PASS " + FIX.passwords["broken"])
            self.assertERR(st, "login to a maildrop that cannot be opened")
            self.assertNotIn("[IN-USE]", st.upper(), "lock leaked by a failed open: %r" % st)
            c.close()


# ==========================================================================
# APOP
# ==========================================================================


def apop_digest(greeting, secret):
    ts = re.search(r"<[^<>]*>", greeting).group(0)
    return hashlib.md5((ts + secret).encode("latin-1")).hexdigest()


class T04Apop(Base):
    def test_apop_success(self):
        """RFC 1939 §7 APOP: MD5(timestamp + secret) in lower-case hex logs in."""
        c = self.conn()
        st = c.cmd("APOP alice " + apop_digest(c.greeting, "secret"))
        self.assertOK(st, "APOP")
        self.assertEqual(c.stat()[0], len(self.msgs()))

    def test_apop_wrong_digest(self):
        """RFC 1939 §7, RFC 3206 §5: wrong digest -> -ERR [AUTH]."""
        c = self.conn()
        st = c.cmd("APOP alice " + apop_digest(c.greeting, "wrong"))
        self.assertERR(st, "APOP wrong digest")
        self.assertCode(st, "AUTH")

    def test_apop_unknown_user_same_reply(self):
        """APOP for an unknown user answers exactly like a wrong digest (no user enumeration)."""
        a = self.conn()
        s1 = a.cmd("APOP alice " + "0" * 32)
        b = self.conn()
        s2 = b.cmd("APOP nosuchuser " + "0" * 32)
        self.assertERR(s1, "APOP wrong digest")
        self.assertEqual(s1.replace("alice", "<u>"), s2.replace("nosuchuser", "<u>"))

    def test_apop_replay_on_other_connection_fails(self):
        """RFC 1939 §7/§13: the digest is bound to this greeting's timestamp; replay elsewhere fails."""
        a = self.conn()
        d = apop_digest(a.greeting, "secret")
        b = self.conn()
        st = b.cmd("APOP alice " + d)
        self.assertERR(st, "APOP replay of another connection's digest")

    def test_apop_malformed(self):
        """RFC 1939 §7: digest is 32 lower-case hex chars; malformed -> -ERR; session continues."""
        c = self.conn()
        good = apop_digest(c.greeting, "secret")
        for arg in ("alice", "alice " + good[:31], "alice " + good + "0", "alice zz" + good[2:],
                    "alice " + good + " extra"):
            st = c.cmd("APOP " + arg)
            self.assertERR(st, "APOP " + arg)
            if c.expect_eof(0.05):
                return
        self.assertOK(c.cmd("APOP alice " + good), "APOP after malformed attempts")

    def test_apop_hashed_password_user_fails(self):
        """RFC 1939 §7: APOP needs a shared plaintext secret; a {SHA256} user cannot use it -> -ERR."""
        c = self.conn()
        st = c.cmd("APOP bob " + apop_digest(c.greeting, "bob-Secret-1"))
        self.assertERR(st, "APOP for hashed-password user")
        self.assertNoCode(st, ["IN-USE"], "APOP hashed user")

    def test_apop_after_failed_user_pass(self):
        """RFC 1939 §7: APOP may be given after an unsuccessful USER/PASS."""
        c = self.conn()
        c.cmd("USER alice")
        self.assertERR(c.cmd("PASS bad"), "bad PASS")
        if c.expect_eof(0.1):
            return
        self.assertOK(c.cmd("APOP alice " + apop_digest(c.greeting, "secret")), "APOP after failed PASS")


# ==========================================================================
# TRANSACTION state: STAT / LIST / RETR / TOP / UIDL / NOOP / RSET
# ==========================================================================


class T05Transaction(Base):
    def test_authorization_commands_rejected_in_transaction(self):
        """RFC 1939 §4/§7: USER PASS APOP (and AUTH) only in AUTHORIZATION; -ERR in TRANSACTION and the
        session stays in TRANSACTION on the same maildrop."""
        c = self.session("alice")
        before = c.stat()
        for cmd in ("USER carol", "PASS carol-pw", "APOP carol " + apop_digest(c.greeting, "carol-pw"),
                    "USER alice", "PASS secret", "AUTH PLAIN " + base64.b64encode(b"\0carol\0carol-pw").decode()):
            st = c.cmd(cmd)
            self.assertERR(st, "%s in TRANSACTION" % cmd.split(" ")[0])
            self.assertNoCode(st, ["IN-USE"], cmd)
        self.assertEqual(c.stat(), before, "maildrop changed after AUTHORIZATION commands in TRANSACTION")

    def test_unknown_commands_transaction(self):
        """RFC 1939 §3: unknown keywords -> -ERR, session continues."""
        c = self.session("alice")
        for cmd in ("FOO", "RETRX 1", "STATS", "LISTALL", "XTND XLST", "TOPP 1 0", "LAST"):
            st = c.cmd(cmd)
            self.assertERR(st, cmd)
        self.assertOK(c.cmd("NOOP"), "NOOP after unknown commands")

    def test_stat(self):
        """RFC 1939 §5 STAT: '+OK nn mm' = count and total CRLF size of the maildrop."""
        c = self.session("alice")
        n, size = c.stat()
        self.assertEqual(n, len(self.msgs()))
        self.assertEqual(size, sum(m.size for m in self.msgs()),
                         "total size must count CRLF line endings: per message %r"
                         % [m.size for m in self.msgs()])

    def test_list_all(self):
        """RFC 1939 §5 LIST: multi-line scan listings 'n size', ascending, CRLF sizes."""
        c = self.session("alice")
        lst = c.list_all()
        self.assertEqual([n for n, _ in lst], list(range(1, len(self.msgs()) + 1)))
        exp = [(i + 1, m.size) for i, m in enumerate(self.msgs())]
        self.assertEqual(lst, exp, "scan listing sizes (CRLF-counted)")
        self.assertEqual(c.stat(), (len(lst), sum(s for _, s in lst)), "STAT disagrees with LIST")

    def test_list_single(self):
        """RFC 1939 §5 LIST n: '+OK n size' equal to the corresponding multi-line entry."""
        c = self.session("alice")
        for i, m in enumerate(self.msgs()):
            st = c.cmd("LIST %d" % (i + 1))
            mm = re.match(r"^\+OK (\d+) (\d+)(?: .*)?$", st)
            self.assertIsNotNone(mm, "LIST %d: %r" % (i + 1, st))
            self.assertEqual((int(mm.group(1)), int(mm.group(2))), (i + 1, m.size), "LIST %d" % (i + 1))

    def test_bad_message_numbers(self):
        """RFC 1939 §5: message-number must refer to an existing message; 0, -1, non-numeric, huge,
        beyond range -> -ERR for LIST/RETR/TOP/UIDL/DELE; nothing gets deleted."""
        c = self.session("alice")
        n = len(self.msgs())
        bad = ["0", "-1", "abc", "1x", "x1", "99999999999999999999", "18446744073709551617",
               "4294967297", str(n + 1), "1.0", "0x1", "", " "]
        for b in bad:
            for cmd in ("LIST", "RETR", "UIDL", "DELE"):
                if b.strip() == "" and cmd in ("LIST", "UIDL"):
                    continue  # bare LIST/UIDL are valid multi-line commands
                line = ("%s %s" % (cmd, b)).rstrip(" ") if b != " " else cmd + "  "
                if b == "" and cmd in ("RETR", "DELE"):
                    line = cmd
                st = c.cmd(line)
                self.assertERR(st, repr(line))
                self.assertNoCode(st, ["AUTH", "IN-USE", "LOGIN-DELAY"], line)
            st = c.cmd("TOP %s 0" % b) if b.strip() else c.cmd("TOP")
            self.assertERR(st, "TOP %s 0" % b)
        self.assertEqual(c.stat(), (n, sum(m.size for m in self.msgs())), "a bad DELE deleted something")

    def test_plus_or_leading_zero_numbers(self):
        """'+1' / '01' are not canonical message-numbers: either -ERR or treated exactly as 1."""
        c = self.session("alice")
        ref = c.cmd("LIST 1")
        for arg in ("+1", "01", "001"):
            st = c.cmd("LIST " + arg)
            if st.startswith("+OK"):
                self.assertEqual(st, ref, "LIST %s" % arg)

    def test_missing_arguments(self):
        """RFC 1939 §5/§7: RETR, DELE, TOP need their (required) arguments."""
        c = self.session("alice")
        for cmd in ("RETR", "DELE", "TOP", "TOP 1"):
            self.assertERR(c.cmd(cmd), cmd)
        self.assertEqual(c.stat()[0], len(self.msgs()))

    def test_extra_arguments_are_rejected_or_ignored(self):
        """RFC 1939 §5: extra arguments must never change the meaning (e.g. 'DELE 1 2' may not delete 2):
        either -ERR or exactly the response of the command without them."""
        c = self.session("alice")
        n, size = c.stat()
        for base, extra in (("STAT", " x"), ("NOOP", " x"), ("LIST 1", " 2"), ("UIDL 1", " 2"),
                            ("RSET", " 1")):
            ref = c.cmd(base)
            st = c.cmd(base + extra)
            if st.startswith("+OK"):
                self.assertEqual(st, ref, "%r answered differently from %r" % (base + extra, base))
        for base, extra in (("RETR 1", " 2"), ("TOP 1 0", " 5")):
            ref_st, ref = c.cmd_multi(base)
            st, data = c.cmd_multi(base + extra)
            if st.startswith("+OK"):
                self.assertBytes(data, ref, base + extra)
        st = c.cmd("DELE 1 2")
        self.assertOK(c.cmd("LIST 2"), "'DELE 1 2' must not delete message 2")
        c.cmd("RSET")
        self.assertEqual(c.stat(), (n, size))

    def test_retr_every_message_byte_exact(self):
        """RFC 1939 §5 RETR / §11: message sent with CRLF line endings, byte-stuffed, '.' terminated;
        un-stuffed data equals the stored message with CRLF normalisation."""
        c = self.session("alice")
        for i, m in enumerate(self.msgs()):
            st, data = c.cmd_multi("RETR %d" % (i + 1))
            self.assertOK(st, "RETR %d" % (i + 1))
            self.assertBytes(data, m.wire, "RETR %d (%s)" % (i + 1, m.name))
        self.assertEqual(c.problems, [], "syntax problems: %s" % c.problems)

    def test_size_equals_octets_sent(self):
        """RFC 1939 §5/§11: LIST size = exact octets RETR transmits (before stuffing, without the CRLF
        added to a message lacking a final newline)."""
        c = self.session("alice")
        lst = dict(c.list_all())
        for i, m in enumerate(self.msgs()):
            data = c.retr(i + 1)
            sent = len(data) - (2 if not m.crlf.endswith(b"\r\n") and m.crlf else 0)
            self.assertEqual(lst[i + 1], sent, "message %d: LIST says %d, RETR sent %d octets"
                             % (i + 1, lst[i + 1], sent))

    def test_retr_octets_in_status_line(self):
        """RFC 1939 §5 RETR example '+OK 120 octets': if the RETR status states an octet count, it must be right."""
        c = self.session("alice")
        for i, m in enumerate(self.msgs()):
            st, _ = c.cmd_multi("RETR %d" % (i + 1))
            mm = re.match(r"^\+OK (\d+) octets", st)
            if mm:
                self.assertEqual(int(mm.group(1)), m.size, "RETR %d status %r" % (i + 1, st))

    def test_dot_stuffing_on_the_wire(self):
        """RFC 1939 §3: every line starting with '.' is sent with an extra '.'; raw wire check."""
        c = self.session("alice")
        c.cmd_multi("RETR %d" % FIX.idx["dots"])
        raw = c.last_multi_raw
        exp = re.sub(rb"(^|(?<=\r\n))\.", b"..", self.msgs()[FIX.idx["dots"] - 1].wire)
        self.assertBytes(raw, exp, "stuffed RETR of the dot message")

    def test_message_without_final_newline(self):
        """RFC 1939 §3: the terminator is on its own line, so a CRLF is added (not counted in LIST size)."""
        c = self.session("alice")
        for key in ("nofinal", "nofinal_dot"):
            i = FIX.idx[key]
            m = self.msgs()[i - 1]
            c.cmd("RETR %d" % i)
            c.multi("RETR")
            self.assertBytes(c.last_multi_raw, re.sub(rb"(^|(?<=\r\n))\.", b"..", m.crlf) + b"\r\n",
                             "raw RETR %d (%s)" % (i, key))
            self.assertRegex(c.cmd("LIST %d" % i), r"^\+OK %d %d(\s|$)" % (i, m.size))

    def test_large_message(self):
        """RFC 1939 §5 RETR: ~1 MB message with long lines and dot lines, byte exact."""
        c = self.session("alice")
        i = FIX.idx["large"]
        m = self.msgs()[i - 1]
        self.assertBytes(c.retr(i), m.wire, "RETR of the large message")
        self.assertRegex(c.cmd("LIST %d" % i), r"^\+OK %d %d(\s|$)" % (i, m.size))
        self.assertBytes(c.retr(i + 1), self.msgs()[i].wire, "message after the large one")

    def test_nul_and_8bit_bytes_verbatim(self):
        """RFC 1939 §5 RETR/§11: the message is transmitted as stored (NUL and 8-bit octets untouched)."""
        c = self.session("alice")
        for key in ("nul", "8bit"):
            i = FIX.idx[key]
            self.assertBytes(c.retr(i), self.msgs()[i - 1].wire, "RETR %d (%s)" % (i, key))

    def test_top_zero(self):
        """RFC 1939 §7 TOP n 0: the headers and the blank separator line, nothing of the body."""
        c = self.session("alice")
        for i, m in enumerate(self.msgs()):
            st, data = c.cmd_multi("TOP %d 0" % (i + 1))
            self.assertOK(st, "TOP %d 0" % (i + 1))
            exp = m.top(0)
            if exp is None:  # headers only, no separator: the whole message, maybe plus a blank line
                self.assertIn(data, (m.wire, m.wire + b"\r\n"), "TOP %d 0 of headers-only message: %s"
                              % (i + 1, short(data)))
            else:
                self.assertBytes(data, exp, "TOP %d 0" % (i + 1))

    def test_top_k_lines(self):
        """RFC 1939 §7 TOP n k: headers, blank line, first k body lines (byte-stuffed)."""
        c = self.session("alice")
        for key in ("lf", "crlf", "mixed", "dots", "nofinal", "nofinal_dot", "nul", "8bit", "large"):
            i = FIX.idx[key]
            m = self.msgs()[i - 1]
            for k in (1, 2, 3, 5, 8):
                st, data = c.cmd_multi("TOP %d %d" % (i, k))
                self.assertOK(st, "TOP %d %d" % (i, k))
                self.assertBytes(data, m.top(k), "TOP %d %d (%s)" % (i, k, key))

    def test_top_more_lines_than_body(self):
        """RFC 1939 §7: if k exceeds the body's line count the entire message is sent."""
        c = self.session("alice")
        for i, m in enumerate(self.msgs()):
            if m.size > 100000:
                continue
            st, data = c.cmd_multi("TOP %d 100000" % (i + 1))
            self.assertOK(st, "TOP %d 100000" % (i + 1))
            if m.top(0) is None:
                self.assertIn(data, (m.wire, m.wire + b"\r\n"))
            else:
                self.assertBytes(data, m.wire, "TOP %d 100000" % (i + 1))

    def test_top_bad_arguments(self):
        """RFC 1939 §7: TOP msg n, n a non-negative number (required)."""
        c = self.session("alice")
        for line in ("TOP", "TOP 1", "TOP 1 -1", "TOP 1 x", "TOP 1 1x", "TOP x 0", "TOP 0 0", "TOP -1 0",
                     "TOP %d 0" % (len(self.msgs()) + 1)):
            st = c.cmd(line)
            self.assertERR(st, line)
        self.assertOK(c.cmd("NOOP"), "NOOP")

    def test_top_huge_line_count(self):
        """RFC 1939 §7: a line count larger than any counter: -ERR, or the whole message (never garbage)."""
        c = self.session("alice")
        for k in ("99999999999999999999", "4294967296", "4294967297", "18446744073709551616",
                  "18446744073709551617"):
            st = c.cmd("TOP 1 " + k)
            if st.startswith("+OK"):   # must then be the whole message, not a wrapped-around count
                self.assertBytes(c.multi("TOP"), self.msgs()[0].wire, "TOP 1 " + k)
        self.assertOK(c.cmd("NOOP"), "NOOP after TOP with a huge count")

    def test_uidl_listing_format(self):
        """RFC 1939 §7 UIDL: 'n uid', uid 1..70 chars 0x21..0x7E, unique within the maildrop."""
        c = self.session("alice")
        u = c.uidl_all()
        self.assertEqual([n for n, _ in u], list(range(1, len(self.msgs()) + 1)))
        ids = [x for _, x in u]
        self.assertEqual(len(set(ids)), len(ids), "unique-ids are not unique: %r" % ids)

    def test_uidl_single_matches_listing(self):
        """RFC 1939 §7 UIDL n: '+OK n uid' equals the multi-line entry."""
        c = self.session("alice")
        u = dict(c.uidl_all())
        for n, uid in u.items():
            st = c.cmd("UIDL %d" % n)
            self.assertEqual(st, "+OK %d %s" % (n, uid), "UIDL %d" % n)

    def test_uidl_stable_across_sessions(self):
        """RFC 1939 §7: the unique-id persists across sessions (also sessions ending without UPDATE)."""
        c = self.session("alice")
        u1 = c.uidl_all()
        for i in range(1, len(self.msgs()) + 1):
            if i != FIX.idx["large"]:
                c.retr(i)
        c.quit()      # a server may move new/ -> cur/ now; unique-ids must not change
        c.expect_eof()
        c2 = self.wait_login("alice")
        u2 = c2.uidl_all()
        c2.close()    # ends without UPDATE
        c3 = self.wait_login("alice")
        self.assertEqual(u1, u2)
        self.assertEqual(u1, c3.uidl_all())

    def test_uidl_distinct_for_identical_messages(self):
        """RFC 1939 §7: the unique-id identifies a message, not its content: byte-identical messages
        (different Maildir files) get different unique-ids."""
        c = self.session("uma")
        u = c.uidl_all()
        self.assertEqual(len(u), 5)
        self.assertEqual(len(set(x for _, x in u)), 5, "identical messages share a unique-id: %r" % u)

    def test_noop(self):
        """RFC 1939 §5 NOOP: +OK, nothing changes."""
        c = self.session("alice")
        before = c.stat()
        for _ in range(3):
            self.assertOK(c.cmd("NOOP"), "NOOP")
        self.assertEqual(c.stat(), before)

    def test_rset_without_deletions(self):
        """RFC 1939 §5 RSET: +OK even when nothing is marked."""
        c = self.session("alice")
        before = c.stat()
        self.assertOK(c.cmd("RSET"), "RSET")
        self.assertEqual(c.stat(), before)

    def test_responses_are_512_octets_max(self):
        """RFC 2449 §4 / RFC 1939 §3: first line of every response ≤ 512 octets incl. CRLF, even when the
        command has long arguments that a server might echo."""
        c = self.conn()
        arg = "A" * 240
        for cmd in ("X" * 4 + " " + arg, "USER " + arg, "PASS " + arg, "APOP " + arg + " " + "0" * 8):
            c.cmd(cmd)
            if c.expect_eof(0.01):
                c = self.conn()
        c = self.session("alice")
        for cmd in ("RETR " + "9" * 245, "TOP 1 " + "9" * 244, "LIST " + "1" * 245, "UIDL " + arg,
                    "DELE " + arg, "ZZZZ " + arg):
            c.cmd(cmd)
        self.assertEqual(c.problems, [], "%s" % c.problems)


# ==========================================================================
# DELE / RSET / QUIT (UPDATE)
# ==========================================================================


class T06Update(Base):
    def test_deleted_message_cannot_be_referenced(self):
        """RFC 1939 §5/§7: after DELE n, LIST n / RETR n / TOP n / UIDL n / DELE n are -ERR; LIST and UIDL
        without argument omit it; STAT excludes it; numbers do not shift; RSET restores."""
        c = self.session("alice")
        msgs = self.msgs()
        n = len(msgs)
        uid_before = dict(c.uidl_all())
        self.assertOK(c.cmd("DELE 2"), "DELE 2")
        for cmd in ("LIST 2", "RETR 2", "TOP 2 0", "UIDL 2", "DELE 2"):
            st = c.cmd(cmd)
            self.assertERR(st, "%s of a deleted message" % cmd)
            self.assertNoCode(st, ["AUTH", "IN-USE"], cmd)
        self.assertEqual(c.stat(), (n - 1, sum(m.size for m in msgs) - msgs[1].size))
        lst = c.list_all()
        self.assertEqual([k for k, _ in lst], [k for k in range(1, n + 1) if k != 2])
        self.assertEqual([k for k, _ in c.uidl_all()], [k for k in range(1, n + 1) if k != 2])
        self.assertBytes(c.retr(3), msgs[2].wire, "RETR 3 after DELE 2 (numbers must not shift)")
        self.assertEqual(c.cmd("UIDL 3"), "+OK 3 %s" % uid_before[3])
        self.assertOK(c.cmd("RSET"), "RSET")
        self.assertEqual(c.stat(), (n, sum(m.size for m in msgs)))
        self.assertBytes(c.retr(2), msgs[1].wire, "RETR 2 after RSET")
        self.assertOK(c.cmd("QUIT"), "QUIT")
        for m in msgs:
            self.assertIsNotNone(FIX.find_file("alice", m.uniq), "RSET then QUIT removed %s" % m.name)

    def test_delete_everything_then_rset(self):
        """RFC 1939 §5: with all messages marked, STAT is '+OK 0 0' and LIST/UIDL are empty listings."""
        c = self.session("alice")
        n = len(self.msgs())
        for i in range(1, n + 1):
            self.assertOK(c.cmd("DELE %d" % i), "DELE %d" % i)
        self.assertEqual(c.stat(), (0, 0))
        self.assertEqual(c.list_all(), [])
        self.assertEqual(c.uidl_all(), [])
        self.assertERR(c.cmd("RETR 1"), "RETR 1")
        self.assertOK(c.cmd("RSET"), "RSET")
        self.assertEqual(c.stat()[0], n)
        c.cmd("QUIT")

    def test_quit_commits_deletions(self):
        """RFC 1939 §6: QUIT in TRANSACTION enters UPDATE: marked messages are removed (files disappear),
        others stay, +OK and the connection closes; next session renumbers from 1 with same unique-ids."""
        user = "dave"
        msgs = self.msgs(user)
        c = self.session(user)
        uids = dict(c.uidl_all())
        self.assertOK(c.cmd("DELE 1"), "DELE 1")
        self.assertOK(c.cmd("DELE 3"), "DELE 3")
        self.assertOK(c.cmd("QUIT"), "QUIT (UPDATE)")
        self.assertTrue(c.expect_eof(), "connection not closed after QUIT")
        for k, m in enumerate(msgs):
            path = FIX.find_file(user, m.uniq)
            if k in (0, 2):
                self.assertIsNone(path, "deleted message %d still on disk: %s" % (k + 1, path))
            else:
                self.assertIsNotNone(path, "undeleted message %d vanished (RFC 1939 §6)" % (k + 1))
        c2 = self.wait_login(user)
        remain = [msgs[1], msgs[3], msgs[4]]
        self.assertEqual(c2.stat(), (3, sum(m.size for m in remain)))
        for k, m in enumerate(remain):
            self.assertBytes(c2.retr(k + 1), m.wire, "message %d after UPDATE" % (k + 1))
        self.assertEqual([u for _, u in c2.uidl_all()], [uids[2], uids[4], uids[5]],
                         "unique-ids must persist across sessions (RFC 1939 §7)")

        # RFC 1939 §7: the server should never reuse a unique-id in a given maildrop
        newm = FIX.deliver(user, b"Subject: new after delete\n\nhi\n", 1800000000, 77)
        c2.quit()
        c3 = self.wait_login(user)
        u3 = c3.uidl_all()
        self.assertEqual(len(u3), 4)
        self.assertNotIn(u3[-1][1], uids.values(), "a unique-id of a deleted message was reused")
        self.assertBytes(c3.retr(4), newm.wire, "newly delivered message")

    def test_rset_then_quit_keeps_everything(self):
        """RFC 1939 §5 RSET unmarks; QUIT then removes nothing."""
        user = "erin"
        msgs = self.msgs(user)
        c = self.session(user)
        for i in range(1, len(msgs) + 1):
            c.cmd("DELE %d" % i)
        self.assertOK(c.cmd("RSET"), "RSET")
        self.assertOK(c.cmd("QUIT"), "QUIT")
        c.expect_eof()
        for m in msgs:
            self.assertIsNotNone(FIX.find_file(user, m.uniq), "%s removed despite RSET" % m.name)
        c2 = self.wait_login(user)
        self.assertEqual(c2.stat()[0], len(msgs))

    def test_dropped_connection_does_not_update(self):
        """RFC 1939 §6: a session ending without QUIT does NOT enter UPDATE: nothing removed; the
        maildrop lock is released (a new login succeeds)."""
        user = "frank"
        msgs = self.msgs(user)
        c = self.session(user)
        self.assertOK(c.cmd("DELE 1"), "DELE 1")
        self.assertOK(c.cmd("DELE 2"), "DELE 2")
        c.close()
        c2 = self.wait_login(user)
        self.assertEqual(c2.stat()[0], len(msgs), "dropped connection committed deletions")
        for m in msgs:
            self.assertIsNotNone(FIX.find_file(user, m.uniq))
        # same with a half-close (client EOF, no QUIT)
        self.assertOK(c2.cmd("DELE 3"), "DELE 3")
        c2.sock.shutdown(socket.SHUT_WR)
        c2.expect_eof(3)
        c2.close()
        c3 = self.wait_login(user)
        self.assertEqual(c3.stat()[0], len(msgs), "EOF without QUIT committed deletions")
        # and with a TCP reset
        self.assertOK(c3.cmd("DELE 4"), "DELE 4")
        c3.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c3.close()
        c4 = self.wait_login(user)
        self.assertEqual(c4.stat()[0], len(msgs), "reset connection committed deletions")

    def test_quit_closes_and_ignores_following_commands(self):
        """RFC 1939 §6: after QUIT's +OK the server closes the connection; pipelined commands after QUIT
        are not executed."""
        user = "gina"
        c = self.session(user)
        c.send(b"DELE 1\r\nQUIT\r\nDELE 2\r\nNOOP\r\n")
        self.assertOK(c.status("DELE 1"), "DELE 1")
        self.assertOK(c.status("QUIT"), "QUIT")
        self.assertTrue(c.expect_eof(), "server sent more after QUIT or did not close: %s"
                        % short(bytes(c.buf)))
        self.assertIsNone(FIX.find_file(user, self.msgs(user)[0].uniq))
        self.assertIsNotNone(FIX.find_file(user, self.msgs(user)[1].uniq), "DELE after QUIT was executed")

    def test_delete_all_and_quit(self):
        """RFC 1939 §6: deleting every message and QUIT leaves an empty maildrop ('+OK 0 0')."""
        user = "tina"
        c = self.session(user)
        for i in range(1, len(self.msgs(user)) + 1):
            self.assertOK(c.cmd("DELE %d" % i), "DELE %d" % i)
        self.assertOK(c.cmd("QUIT"), "QUIT")
        c.expect_eof()
        for m in self.msgs(user):
            self.assertIsNone(FIX.find_file(user, m.uniq), "%s survived UPDATE" % m.name)
        c2 = self.wait_login(user)
        self.assertEqual(c2.stat(), (0, 0))
        self.assertEqual(c2.list_all(), [])

    def test_quit_without_deletions(self):
        """RFC 1939 §6: QUIT with nothing marked -> +OK, nothing removed, connection closed."""
        c = self.session("alice")
        self.assertOK(c.cmd("QUIT"), "QUIT")
        self.assertTrue(c.expect_eof())
        for m in self.msgs():
            self.assertIsNotNone(FIX.find_file("alice", m.uniq))


# ==========================================================================
# Exclusive-access lock
# ==========================================================================


class T07Locking(Base):
    def test_second_login_gets_in_use(self):
        """RFC 1939 §4 exclusive-access lock; RFC 2449 §8.1.2: -ERR [IN-USE] to PASS/APOP while another
        session holds the maildrop; a wrong password still says [AUTH], not [IN-USE]; the holder is
        unaffected; after its QUIT a new login succeeds."""
        a = self.session("ivan")
        before = a.stat()
        b = self.conn()
        b.cmd("USER ivan")
        st = b.cmd("PASS " + FIX.passwords["ivan"], timeout=15)   # a server may wait a little for the lock
        self.assertERR(st, "second concurrent login")
        self.assertCode(st, "IN-USE", "second concurrent USER/PASS")
        c = self.conn()
        st = c.cmd("APOP ivan " + apop_digest(c.greeting, FIX.passwords["ivan"]), timeout=15)
        self.assertERR(st, "second concurrent login via APOP")
        self.assertCode(st, "IN-USE", "second concurrent APOP")
        d = self.conn()
        d.cmd("USER ivan")
        st = d.cmd("PASS wrong")
        self.assertERR(st, "wrong password while locked")
        self.assertNotIn("[IN-USE]", st.upper(), "IN-USE means authentication succeeded (RFC 2449 §8.1.2)")
        self.assertCode(st, "AUTH")
        # a failed attempt must not have broken or stolen the holder's lock
        e = self.conn()
        e.cmd("USER ivan")
        self.assertCode(e.cmd("PASS " + FIX.passwords["ivan"], timeout=15), "IN-USE",
                        "lock lost after failures")
        self.assertEqual(a.stat(), before, "lock holder disturbed")
        # RFC 1939 §4: after -ERR the client may issue a new authentication command on the same
        # connection; once the holder is gone that must succeed
        retry = self.conn()
        retry.cmd("USER ivan")
        self.assertCode(retry.cmd("PASS " + FIX.passwords["ivan"], timeout=15), "IN-USE")
        self.assertOK(a.cmd("DELE 1"), "holder DELE 1")
        self.assertOK(a.cmd("QUIT"), "holder QUIT")
        a.expect_eof()
        self.assertIsNone(FIX.find_file("ivan", self.msgs("ivan")[0].uniq), "holder's UPDATE failed")
        if not retry.expect_eof(0.1):
            deadline = time.time() + LOCK_RETRY_S
            while True:
                retry.cmd("USER ivan")
                st = retry.cmd("PASS " + FIX.passwords["ivan"], timeout=15)
                if st.startswith("+OK") or time.time() > deadline:
                    break
                time.sleep(0.1)
            self.assertOK(st, "re-authentication on the connection that got [IN-USE], after the holder quit")
            self.assertEqual(retry.stat()[0], len(self.msgs("ivan")) - 1)
            retry.cmd("QUIT")
            retry.expect_eof()
        f = self.wait_login("ivan")
        self.assertEqual(f.stat()[0], len(self.msgs("ivan")) - 1)

    def test_lock_released_after_reset_during_retr(self):
        """RFC 1939 §4/§6: connection reset mid-RETR of a large message: no UPDATE, lock released."""
        a = self.session("mike")
        a.send(b"DELE 2\r\nRETR 1\r\n")
        a.status("DELE 2")
        a.status("RETR 1")
        a._fill()
        a.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        a.close()
        b = self.wait_login("mike")
        self.assertEqual(b.stat()[0], 2)
        self.assertBytes(b.retr(1), self.msgs("mike")[0].wire, "large message after reset")

    def test_lock_released_after_quit_in_authorization(self):
        """RFC 1939 §4: a failed/abandoned AUTHORIZATION holds no lock."""
        a = self.conn()
        a.cmd("USER jack")
        a.cmd("PASS wrong")
        a.cmd("QUIT")
        b = self.conn()
        b.cmd("USER jack")
        self.assertOK(b.cmd("PASS " + FIX.passwords["jack"]), "login after another client's failed attempt")


# ==========================================================================
# Robustness: lengths, odd bytes, line endings
# ==========================================================================


class T08Robustness(Base):
    def test_command_of_255_octets_accepted(self):
        """RFC 2449 §4: servers supporting CAPA MUST support commands up to 255 octets incl. CRLF."""
        c = self.conn()
        c.cmd("USER longpw")
        line = b"PASS " + FIX.passwords["longpw"].encode() + b"\r\n"
        self.assertEqual(len(line), 255)
        c.send(line)
        self.assertOK(c.status("PASS <248 chars>"), "255-octet PASS command")

    def test_line_longer_than_255_rejected_session_continues(self):
        """RFC 2449 §4 limit (project contract: longer lines -> one -ERR, session continues)."""
        c = self.conn()
        c.send(b"USER " + b"u" * 300 + b"\r\n")
        self.assertERR(c.status("USER <300>"), "300-octet USER line")
        c.login("alice")
        c.send(b"NOOP " + b"x" * 300 + b"\r\nNOOP\r\n")
        self.assertERR(c.status("NOOP <300>"), "300-octet command line in TRANSACTION")
        self.assertOK(c.status("NOOP"), "NOOP after overlong line")
        c.send(b"RETR 1" + b" " * 300 + b"\r\n")
        self.assertERR(c.status("RETR <300>"), "RETR padded to 306 octets")
        self.assertEqual(c.stat()[0], len(self.msgs()))

    def test_very_long_line(self):
        """A 64 KiB line: one -ERR, the session continues (no unbounded buffering, no crash)."""
        c = self.session("alice")
        t, err = pipeline_send(c, b"NOOP " + b"y" * 65536 + b"\r\nNOOP\r\n")
        st = c.status("NOOP <64k>", timeout=10)
        self.assertERR(st, "64 KiB command line")
        self.assertOK(c.status("NOOP", timeout=10), "NOOP after a 64 KiB line")
        t.join(5)

    def test_empty_line(self):
        """An empty command line is not a command: -ERR, session continues (both states)."""
        c = self.conn()
        c.send(b"\r\n")
        self.assertERR(c.status("<empty>"), "empty line in AUTHORIZATION")
        c.login("alice")
        c.send(b"\r\n")
        self.assertERR(c.status("<empty>"), "empty line in TRANSACTION")
        self.assertOK(c.cmd("NOOP"), "NOOP after empty line")

    def test_whitespace_only_and_leading_space(self):
        """RFC 1939 §3: keyword first, single-space separators; ' NOOP' / '   ' are not valid commands."""
        c = self.session("alice")
        for line in (b"   \r\n", b"\t\r\n"):
            c.send(line)
            self.assertERR(c.status(repr(line)), repr(line))
        self.assertOK(c.cmd("NOOP"), "NOOP")

    def test_nul_bytes_in_commands(self):
        """RFC 2449 §3: commands are printable ASCII; NUL inside a command -> -ERR, session continues."""
        c = self.session("alice")
        for line in (b"NO\x00OP\r\n", b"\x00\r\n", b"STAT\x00\r\n", b"RETR 1\x00\r\n", b"DELE \x001\r\n"):
            c.send(line)
            st = c.status(repr(line))
            self.assertERR(st, repr(line))
        self.assertEqual(c.stat()[0], len(self.msgs()))

    def test_invalid_utf8_and_8bit_commands(self):
        """RFC 2449 §3: 8-bit / invalid UTF-8 command lines -> -ERR, session continues."""
        c = self.session("alice")
        for line in (b"\xff\xfe\r\n", b"ST\xc3\x28T\r\n", b"RETR \xd9\xa1\r\n", b"\x80\x80\x80\x80\r\n"):
            c.send(line)
            self.assertERR(c.status(repr(line)), repr(line))
        self.assertOK(c.cmd("NOOP"), "NOOP")

    def test_bare_lf_line_endings(self):
        """RFC 1939 §3 says CRLF; a robust server still answers a bare-LF command (never hangs). The
        answer is the same as for CRLF or -ERR; the session continues."""
        c = self.conn()
        c.send(b"USER alice\n")
        st = c.status("USER (LF)", timeout=3)
        if st.startswith("-ERR"):
            c.cmd("USER alice")
        c.send(b"PASS secret\n")
        st = c.status("PASS (LF)", timeout=3)
        if st.startswith("-ERR"):
            c.login("alice")
        c.send(b"STAT\n")
        st = c.status("STAT (LF)", timeout=3)
        if st.startswith("+OK"):
            self.assertEqual(st, c.cmd("STAT"))
        c.send(b"NOOP\nNOOP\n")
        c.status("NOOP (LF)", timeout=3)
        c.status("NOOP (LF)", timeout=3)
        self.assertOK(c.cmd("NOOP"), "NOOP (CRLF) after LF commands")

    def test_command_split_across_writes(self):
        """RFC 1939 §3: a command is a line, however TCP segments it."""
        c = self.conn()
        for part in (b"US", b"ER al", b"ice\r", b"\n"):
            c.send(part)
            time.sleep(0.05)
        self.assertOK(c.status("USER"), "USER in pieces")
        for ch in b"PASS secret\r\n":
            c.send(bytes([ch]))
        self.assertOK(c.status("PASS"), "PASS byte by byte")
        self.assertEqual(c.stat()[0], len(self.msgs()))

    def test_binary_garbage(self):
        """Random bytes must not crash the server; it stays usable for new clients."""
        rnd = random.Random(3206)
        c = self.conn()
        c.send(bytes(rnd.randrange(256) for _ in range(8192)) + b"\r\n")
        deadline = time.time() + 2
        try:
            while time.time() < deadline and c._fill(0.5):
                pass
        except (socket.timeout, OSError):
            pass

    def test_disconnect_mid_command(self):
        """A client vanishing in the middle of a line / during a response must not hurt the server."""
        c = self.conn()
        c.send(b"USE")
        c.close()
        d = self.session("alice")
        d.send(b"RETR %d\r\n" % FIX.idx["large"])
        d.status("RETR")
        d.close()
        e = self.wait_login("alice")
        self.assertEqual(e.stat()[0], len(self.msgs()))

    def test_unlimited_bad_commands_when_zero(self):
        """Project contract: max_bad_commands = 0 means unlimited: 40 bad commands all get -ERR."""
        if OPTS.dovecot:
            self.skipTest("corepop configuration")
        c = self.session("alice")
        c.send(b"BOGUS\r\n" * 40 + b"NOOP\r\n")
        for i in range(40):
            self.assertERR(c.status("BOGUS"), "bad command %d" % (i + 1))
        self.assertOK(c.status("NOOP"), "NOOP after 40 bad commands")


class T09BadCommandLimit(Base):
    roles = ("main", "strict")

    @skip_unless_corepop
    def test_max_bad_commands_closes(self):
        """Project contract ([limits] max_bad_commands = 5): after too many bad commands the server says
        -ERR and closes; good commands in between keep working until then."""
        c = self.conn("strict")
        errs = 0
        closed = False
        for i in range(12):
            try:
                c.send(b"BOGUS%d\r\n" % i)
                st = c.status("BOGUS")
            except (EOFError, ConnectionError, BrokenPipeError):
                closed = True
                break
            self.assertERR(st, "bad command %d" % (i + 1))
            errs += 1
            if c.expect_eof(0.1):
                closed = True
                break
        self.assertTrue(closed, "connection still open after 12 bad commands with max_bad_commands = 5")
        self.assertIn(errs, (5, 6), "closed after %d -ERR replies (limit 5)" % errs)
        c2 = self.conn("strict")
        c2.login("alice")
        for _ in range(4):
            self.assertERR(c2.cmd("BOGUS"), "bad command below the limit")
        self.assertOK(c2.cmd("NOOP"), "session usable below the limit")
        c2.cmd("QUIT")


# ==========================================================================
# PIPELINING (RFC 2449 §6.6)
# ==========================================================================


class T10Pipelining(Base):
    def run_pipeline(self, c, lines):
        c.send(b"".join(l.encode("latin-1") + b"\r\n" for l in lines))
        out = []
        for l in lines:
            st = c.status(l)
            data = c.multi(l) if st.startswith("+OK") and is_multi(l) else None
            out.append((st, data))
        return out

    def test_pipelined_session_in_order(self):
        """RFC 2449 §6.6: commands sent in one write are processed in turn, responses in the same order,
        identical to the unpipelined responses."""
        lines = ["USER alice", "PASS secret", "STAT", "LIST", "UIDL", "RETR 1", "TOP 4 1", "LIST 2",
                 "UIDL 3", "NOOP", "RETR 99", "CAPA", "DELE 5", "STAT", "RSET", "STAT", "RETR 5", "QUIT"]
        c = self.conn()
        piped = self.run_pipeline(c, lines)
        self.assertTrue(c.expect_eof(), "no close after pipelined QUIT")
        d = self.conn()
        single = []
        for l in lines:
            single.append(d.cmd_multi(l) if is_multi(l) else (d.cmd(l), None))
        self.assertEqual(len(piped), len(single))
        for l, p, s in zip(lines, piped, single):
            self.assertEqual(p, s, "pipelined response to %r differs from the unpipelined one" % l)

    def test_pipelined_failed_login_then_commands(self):
        """RFC 2449 §6.6: the server must process each command in turn even after a failed PASS."""
        c = self.conn()
        out = self.run_pipeline(c, ["USER alice", "PASS wrong", "STAT", "USER alice", "PASS secret", "STAT"])
        self.assertERR(out[1][0], "PASS wrong")
        self.assertERR(out[2][0], "STAT before login")
        self.assertOK(out[4][0], "PASS secret")
        self.assertRegex(out[5][0], r"^\+OK %d " % len(self.msgs()))

    def test_pipelined_many_commands(self):
        """RFC 2449 §6.6: 300 pipelined commands incl. 3 large RETRs; the client writes while reading."""
        c = self.session("alice")
        lines = []
        for i in range(300):
            lines.append(["NOOP", "STAT", "LIST 1", "RETR 1", "UIDL 2", "TOP 3 1"][i % 6])
        big = FIX.idx["large"]
        lines[100] = lines[200] = lines[299] = "RETR %d" % big
        t, err = pipeline_send(c, b"".join(l.encode() + b"\r\n" for l in lines))
        ref_stat = "+OK %d %d" % (len(self.msgs()), sum(m.size for m in self.msgs()))
        for i, l in enumerate(lines):
            st = c.status(l, timeout=15)
            self.assertTrue(st.startswith("+OK"), "response %d to %r: %r" % (i, l, st))
            if l == "STAT":
                self.assertTrue(st.startswith(ref_stat), "response %d out of order? %r" % (i, st))
            if l.startswith("RETR"):
                n = int(l.split()[1])
                self.assertBytes(c.multi(l), self.msgs()[n - 1].wire, "pipelined %s (#%d)" % (l, i))
            elif l.startswith("TOP"):
                self.assertBytes(c.multi(l), self.msgs()[2].top(1), "pipelined TOP (#%d)" % i)
        t.join(10)
        self.assertEqual(err, [])

    def test_pipelined_dele_quit_commits(self):
        """RFC 2449 §6.6 + RFC 1939 §6: USER/PASS/DELE/DELE/QUIT in one write commit the deletions."""
        user = "henry"
        msgs = self.msgs(user)
        c = self.conn()
        out = self.run_pipeline(c, ["USER henry", "PASS " + FIX.passwords[user], "DELE 1", "DELE 2", "QUIT"])
        for (st, _), l in zip(out, ["USER", "PASS", "DELE 1", "DELE 2", "QUIT"]):
            self.assertOK(st, l)
        c.expect_eof()
        self.assertIsNone(FIX.find_file(user, msgs[0].uniq))
        self.assertIsNone(FIX.find_file(user, msgs[1].uniq))
        self.assertIsNotNone(FIX.find_file(user, msgs[2].uniq))

    def test_slow_client_does_not_block_others(self):
        """One server thread: a client stuck mid-line, or not reading a big response, must not block
        other sessions."""
        a = self.conn()
        a.send(b"NO")                      # incomplete line, never finished for now
        big = FIX.idx["large"]
        b = self.session("alice")
        b.send(b"".join(b"RETR %d\r\n" % big for _ in range(6)))   # ~6 MB nobody reads yet
        time.sleep(0.3)
        t0 = time.time()
        c = self.session("carol")
        self.assertEqual(c.stat(), (0, 0))
        self.assertLess(time.time() - t0, 3.0, "other sessions were blocked")
        a.send(b"OP\r\n")
        self.assertERR(a.status("NOOP"), "NOOP in AUTHORIZATION")
        b.close()


# ==========================================================================
# Maildrop content: order, empty, odd messages, concurrency with delivery
# ==========================================================================


class T11Maildrop(Base):
    def test_empty_maildrop(self):
        """RFC 1939 §5: an empty maildrop: STAT '+OK 0 0', empty LIST/UIDL listings, -ERR for numbers."""
        c = self.session("carol")
        self.assertEqual(c.stat(), (0, 0))
        self.assertEqual(c.list_all(), [])
        self.assertEqual(c.uidl_all(), [])
        for cmd in ("LIST 1", "RETR 1", "TOP 1 0", "UIDL 1", "DELE 1"):
            self.assertERR(c.cmd(cmd), cmd)
        self.assertOK(c.cmd("RSET"), "RSET")
        self.assertOK(c.cmd("QUIT"), "QUIT")

    def test_delivery_order_and_ignored_files(self):
        """Maildir contract: messages numbered by delivery time (numeric seconds, then name), across
        new/ and cur/; files in tmp/ are not messages."""
        c = self.session("judy")
        msgs = self.msgs("judy")
        self.assertEqual(c.stat()[0], len(msgs), "tmp/ file must not count")
        for i, m in enumerate(msgs):
            self.assertBytes(c.retr(i + 1), m.wire, "message %d should be %s" % (i + 1, m.name))

    def test_many_messages(self):
        """RFC 1939 §5: a 250-message scan listing, in order, sizes right."""
        c = self.session("nora")
        msgs = self.msgs("nora")
        self.assertEqual(c.list_all(), [(i + 1, m.size) for i, m in enumerate(msgs)])
        u = c.uidl_all()
        self.assertEqual(len(set(x for _, x in u)), 250)
        self.assertBytes(c.retr(250), msgs[249].wire, "RETR 250")

    def test_zero_length_and_blank_messages(self):
        """RFC 1939 §3/§11: a 0-octet message (size 0) and a CRLF-only message are still well-formed."""
        c = self.session("kate")
        lst = c.list_all()
        self.assertEqual([s for _, s in lst], [0, 2, len(to_crlf(M_LF)), len(to_crlf(M_FIRSTDOT))])
        st, data = c.cmd_multi("RETR 1")
        self.assertOK(st, "RETR of a 0-octet message")
        self.assertIn(data, (b"", b"\r\n"))
        self.assertBytes(c.retr(2), b"\r\n", "RETR of CRLF-only message")
        st, data = c.cmd_multi("TOP 1 0")
        self.assertOK(st, "TOP 1 0 of 0-octet message")
        self.assertIn(data, (b"", b"\r\n"))
        self.assertBytes(c.retr(3), to_crlf(M_LF), "message after the empty ones")
        c.cmd_multi("RETR 4")
        self.assertTrue(c.last_multi_raw.startswith(b"..the very first"),
                        "first line of the message must be byte-stuffed too: %s" % short(c.last_multi_raw))
        self.assertBytes(c.multi_unstuffed_last(), to_crlf(M_FIRSTDOT), "RETR 4")
        st, data = c.cmd_multi("TOP 4 0")
        self.assertBytes(data, to_crlf(M_FIRSTDOT)[:-3], "TOP 4 0 (first line starts with '.')")

    def test_new_delivery_during_session_invisible(self):
        """RFC 1939 §4: message numbers and sizes are fixed when the maildrop is opened; a delivery during
        the session appears in the next session as the last message."""
        user = "olga"
        c = self.session(user)
        before = c.stat()
        lst = c.list_all()
        newm = FIX.deliver(user, b"From: late@example.org\nSubject: late\n\nlate\n", 1900000000, 9)
        self.assertEqual(c.stat(), before)
        self.assertEqual(c.list_all(), lst)
        self.assertERR(c.cmd("RETR %d" % (before[0] + 1)), "RETR of a message delivered after open")
        c.quit()
        c2 = self.wait_login(user)
        self.assertEqual(c2.stat()[0], before[0] + 1)
        self.assertBytes(c2.retr(before[0] + 1), newm.wire, "late delivery in next session")

    def test_uidl_stable_when_other_client_changes_flags(self):
        """RFC 1939 §7: unique-ids persist; another Maildir client moving new/->cur/ or changing flags
        (the part after ':2,') does not change them."""
        user = "pete"
        c = self.session(user)
        u1 = c.uidl_all()
        c.quit()
        md = FIX.maildir(user)
        for m in self.msgs(user):
            p = FIX.find_file(user, m.uniq)
            if "/new/" in p:
                os.rename(p, os.path.join(md, "cur", os.path.basename(p) + ":2,S"))
            else:
                base = os.path.basename(p).split(":")[0]
                os.rename(p, os.path.join(md, "cur", base + ":2,FRS"))
        c2 = self.wait_login(user)
        self.assertEqual(c2.uidl_all(), u1)
        for i, m in enumerate(self.msgs(user)):
            self.assertBytes(c2.retr(i + 1), m.wire, "message %d after external rename" % (i + 1))

    def test_message_renamed_during_session_still_served_and_deleted(self):
        """RFC 1939 §5/§6: a message renamed by another Maildir client (new/ -> cur/:2,S) during the
        session is still the same message: RETR works, DELE+QUIT removes it."""
        user = "quinn"
        msgs = self.msgs(user)
        c = self.session(user)
        md = FIX.maildir(user)
        p = FIX.find_file(user, msgs[0].uniq)
        self.assertIn("/new/", p)
        os.rename(p, os.path.join(md, "cur", os.path.basename(p) + ":2,S"))
        self.assertBytes(c.retr(1), msgs[0].wire, "RETR after another client renamed the file")
        self.assertOK(c.cmd("DELE 1"), "DELE 1")
        self.assertOK(c.cmd("QUIT"), "QUIT")
        c.expect_eof()
        self.assertIsNone(FIX.find_file(user, msgs[0].uniq), "renamed message not removed in UPDATE")

    def test_message_removed_externally_during_session(self):
        """A message expunged by another client mid-session: -ERR (no [AUTH]/[IN-USE]) or the old content;
        the session and the server continue."""
        user = "rita"
        msgs = self.msgs(user)
        c = self.session(user)
        os.unlink(FIX.find_file(user, msgs[2].uniq))
        st = c.cmd("RETR 3")
        if st.startswith("+OK"):
            self.assertBytes(c.multi("RETR 3"), msgs[2].wire, "RETR 3")
        else:
            self.assertNoCode(st, ["AUTH", "IN-USE"], "RETR of vanished message")
        self.assertOK(c.cmd("NOOP"), "NOOP")
        self.assertBytes(c.retr(4), msgs[3].wire, "RETR 4")
        c.cmd("DELE 3")            # +OK or -ERR: the message is gone either way
        self.assertOK(c.cmd("DELE 4"), "DELE 4")
        c.cmd("QUIT")              # RFC 1939 §6: UPDATE, then the connection closes
        self.assertTrue(c.expect_eof(), "connection not closed after QUIT")
        self.assertIsNone(FIX.find_file(user, msgs[3].uniq), "DELE 4 not committed")
        for k in (0, 1, 4):
            self.assertIsNotNone(FIX.find_file(user, msgs[k].uniq), "unmarked message %d removed" % (k + 1))

    def test_missing_maildir(self):
        """A user without any Maildir yet: +OK with an empty maildrop, or -ERR [SYS/...]; never [AUTH]."""
        md = FIX.maildir("sam")
        shutil.rmtree(md)
        c = self.conn()
        c.cmd("USER sam")
        st = c.cmd("PASS " + FIX.passwords["sam"])
        if st.startswith("+OK"):
            self.assertEqual(c.stat(), (0, 0))
        else:
            self.assertNoCode(st, ["AUTH", "IN-USE"], "missing Maildir")
            self.assertRegex(st.upper(), r"^-ERR \[SYS/(TEMP|PERM)\]")


class T12Restart(Base):
    roles = ("main",)

    @skip_unless_corepop
    def test_uidl_stable_across_server_restart(self):
        """RFC 1939 §7: unique-ids persist across sessions — including a different server process."""
        c = self.session("alice")
        u1 = c.uidl_all()
        lst1 = c.list_all()
        c.quit()
        c.expect_eof()
        with open(SERVERS["main"].config_path) as f:
            cfg = f.read()
        other = Server("second", cfg)
        other.start()
        try:
            d = POP(port=other.port)
            deadline = time.time() + LOCK_RETRY_S
            while True:
                d.cmd("USER alice")
                st = d.cmd("PASS secret")
                if st.startswith("+OK") or time.time() > deadline:
                    break
                time.sleep(0.2)
            self.assertOK(st, "login on a second server process")
            self.assertEqual(d.uidl_all(), u1, "unique-ids changed with a new server process")
            self.assertEqual(d.list_all(), lst1)
            d.quit()
            d.close()
        finally:
            other.stop()

    @skip_unless_corepop
    def test_sigterm_with_open_sessions_does_not_update(self):
        """RFC 1939 §6: a session that ends without QUIT (here: the server is told to stop) must not
        remove messages; the server exits on SIGTERM within 10 s with sessions open."""
        user = "vera"
        with open(SERVERS["main"].config_path) as f:
            cfg = f.read()
        other = Server("fourth", cfg)
        other.start()
        try:
            a = POP(port=other.port)
            a.login(user)
            self.assertOK(a.cmd("DELE 1"), "DELE 1")
            idle = POP(port=other.port)      # an idle AUTHORIZATION session too
            other.proc.send_signal(signal.SIGTERM)
            try:
                other.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.fail("server did not exit within 10 s of SIGTERM with open sessions")
            a.close()
            idle.close()
        finally:
            other.stop()
        for m in self.msgs(user):
            self.assertIsNotNone(FIX.find_file(user, m.uniq), "%s removed without QUIT" % m.name)
        b = self.wait_login(user)
        self.assertEqual(b.stat()[0], len(self.msgs(user)))

    @skip_unless_corepop
    def test_no_stale_lock_after_server_crash(self):
        """RFC 1939 §4/§6: a session killed with its server (SIGKILL) holds no lock afterwards."""
        user = "ivy"
        with open(SERVERS["main"].config_path) as f:
            cfg = f.read()
        other = Server("fifth", cfg)
        other.start()
        try:
            a = POP(port=other.port)
            a.login(user)
            self.assertOK(a.cmd("DELE 1"), "DELE 1")
            other.proc.kill()
            other.proc.wait()
            a.close()
        finally:
            other.stop()
        b = self.wait_login(user)
        self.assertEqual(b.stat()[0], len(self.msgs(user)), "killed session committed deletions")

    @skip_unless_corepop
    def test_lock_exclusive_across_server_processes(self):
        """RFC 1939 §4: the exclusive-access lock is on the maildrop: a second server process serving the
        same Maildirs must not open a maildrop that is in a session elsewhere ([IN-USE])."""
        user = "walt"
        a = self.session(user)
        with open(SERVERS["main"].config_path) as f:
            cfg = f.read()
        other = Server("third", cfg)
        other.start()
        try:
            d = POP(port=other.port)
            d.cmd("USER " + user)
            st = d.cmd("PASS " + FIX.passwords[user], timeout=15)
            self.assertERR(st, "login through a second server process while the maildrop is in use")
            self.assertCode(st, "IN-USE")
            d.close()
        finally:
            other.stop()
        self.assertOK(a.cmd("NOOP"), "holder still fine")


# ==========================================================================
# Response syntax over the whole run (keep this class last: name sorts last)
# ==========================================================================


class T99ResponseSyntax(Base):
    def test_resp_codes_only_on_right_commands(self):
        """RFC 2449 §8 / RFC 3206: [AUTH]/[IN-USE]/[LOGIN-DELAY] only on authentication commands,
        response codes only on -ERR, and well-formed."""
        c = self.conn()
        for cmd in ("STAT", "LIST", "RETR 1", "NOOP", "FOO", "PASS x"):
            c.cmd(cmd)
        c.login("alice")
        for cmd in ("RETR 0", "RETR 999", "LIST x", "TOP 1 x", "UIDL 999", "DELE 0", "USER x",
                    "APOP a b", "FOO", "PASS x"):
            c.cmd(cmd)
        self.assertEqual(c.problems, [], "%s" % c.problems)

    def test_zz_no_response_syntax_violations_in_whole_run(self):
        """RFC 1939 §3, RFC 2449 §3/§4/§8, RFC 3206: every response line seen by any test was well-formed:
        +OK/-ERR upper case + SP/CRLF, CRLF terminated, ≤512 octets, valid response codes, byte-stuffing."""
        if VIOLATIONS:
            uniq = []
            for v in VIOLATIONS:
                if v not in uniq:
                    uniq.append(v)
            self.fail("%d violation(s):\n  %s" % (len(uniq), "\n  ".join(uniq[:40])))


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------


def corepop_config(max_bad):
    return ("[auth]\n"
            "passwd_file = \"%s\"\n"
            "failure_delay_ms = 0\n"
            "\n"
            "[mail]\n"
            "location = \"maildir:%s/%%u/Maildir\"\n"
            "\n"
            "[limits]\n"
            "max_bad_commands = %d\n" % (FIX.passwd, FIX.mailroot, max_bad))


def main():
    global OPTS, FIX
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="path to the corepop binary")
    ap.add_argument("--dovecot", action="store_true", help="development aid: test a private Dovecot instead")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("-k", dest="pattern", action="append", help="only run tests whose id contains this")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    OPTS = ap.parse_args()
    if not OPTS.bin and not OPTS.dovecot:
        ap.error("--bin is required")
    if OPTS.bin:
        OPTS.bin = os.path.abspath(OPTS.bin)

    loader = unittest.TestLoader()
    if OPTS.pattern:
        loader.testNamePatterns = ["*%s*" % p for p in OPTS.pattern]
    suite = loader.loadTestsFromModule(sys.modules[__name__])
    total = suite.countTestCases()

    root = tempfile.mkdtemp(prefix="corepop-conformance-")
    os.chmod(root, 0o755)
    rc = 1
    try:
        FIX = Fixture(root, dovecot=OPTS.dovecot)
        try:
            if OPTS.dovecot:
                SERVERS["main"] = DovecotServer("main")
                SERVERS["main"].start()
            else:
                if not os.path.isfile(OPTS.bin) or not os.access(OPTS.bin, os.X_OK):
                    raise RuntimeError("corepop binary %r not found / not executable" % OPTS.bin)
                SERVERS["main"] = Server("main", corepop_config(0))
                SERVERS["main"].start()
                SERVERS["strict"] = Server("strict", corepop_config(5))
                SERVERS["strict"].start()
        except Exception as e:
            print("FATAL: could not start the server under test: %s" % e)
            traceback.print_exc(file=sys.stdout)
            for s in SERVERS.values():
                s.stop()
            print("0 passed, %d failed" % total)
            return 1

        runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=2 if OPTS.verbose else 1,
                                         resultclass=unittest.TextTestResult)
        t0 = time.time()
        result = runner.run(suite)
        for s in SERVERS.values():
            s.stop()
        failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
        skipped = len(result.skipped)
        passed = result.testsRun - failed - skipped
        if failed:
            for role, s in SERVERS.items():
                if getattr(s, "crashes", 0):
                    print("server %r stopped answering %d time(s); log %s" % (role, s.crashes, s.log_path))
            print("(server logs kept in %s)" % root)
            OPTS.keep = True
        if skipped:
            print("%d skipped" % skipped)
        print("elapsed %.1f s" % (time.time() - t0))
        print("%d passed, %d failed" % (passed, failed))
        sys.stdout.flush()
        rc = 0 if failed == 0 and passed + skipped == total else 1
    finally:
        for s in SERVERS.values():
            try:
                s.stop()
            except Exception:
                pass
        if not OPTS.keep:
            shutil.rmtree(root, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
