#!/usr/bin/env python3
"""Egress killed (SIGKILL) while a response's send is in flight: the client
gets every byte exactly once, in order, from the restarted egress.

A restarted egress resumes each response from its cell; for the send that
was in flight it works out how much the kernel took from the byte counts
of the connection (egr_stage.h, invariant 6: what ingress wrote, stamped in
shm_req.conn_out, plus what egress's sends wrote, against the kernel's
count). Off by one byte there, and a stream repeats or loses bytes: the
checks below parse the chunked framing strictly, every SSE event as JSON,
require `data: [DONE]` last and the exact text of the same request read at
full speed; a body must parse whole and equal its reference.

Clients read slowly (a small receive buffer, then not at all while egress
dies), so the send queue is full and egress has a send in flight. The
keep-alive connection also carries answers ingress writes itself (/health,
"100 Continue", /v1/models) before egress answers on it, and a second kill
comes on the same connection after the first restart (the new egress must
learn what the dead one wrote there). FAVO_EGR_KCHECK=1 makes egress compare
each user-space count with the kernel's. --backend null: ids from the seed,
no model compute. ~2.5 s, in the ASan build too.
"""
import json
import os
import re
import signal
import socket
import subprocess
import time

from serve_util import MODEL_ID, Serve, check, finish, require_model

require_model()

MAXTOK = 6000          # ~1.3 MB of SSE: far more than the socket buffers hold
PROMPT = "Once upon a time"


class Conn:
    """A raw HTTP/1.1 client connection with a small receive buffer."""

    def __init__(self, port, rcvbuf=8192, small=True):
        self.s = socket.socket()
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if small:
            # the server's send buffer grows with the peer's MSS (loopback:
            # 64 KiB segments, a buffer of MBs): a small MSS keeps it ~50 KiB
            self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        self.s.settimeout(30)
        self.s.connect(("127.0.0.1", port))
        self.buf = b""
        self.got = 0

    def fill(self, n=4096):
        d = self.s.recv(n)
        if not d:
            raise EOFError("connection closed by the server")
        self.got += len(d)
        self.buf += d

    def until(self, sep):
        while sep not in self.buf:
            self.fill()
        i = self.buf.index(sep) + len(sep)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def exact(self, n):
        while len(self.buf) < n:
            self.fill(max(4096, n - len(self.buf)))
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def head(self):
        h = self.until(b"\r\n\r\n").decode("latin-1")
        lines = h.split("\r\n")
        m = re.match(r"HTTP/1\.1 (\d{3}) ", lines[0])
        if not m:
            raise ValueError(f"bad status line {lines[0][:80]!r}")
        hd = {}
        for ln in lines[1:]:
            if ln:
                k, v = ln.split(":", 1)
                hd[k.strip().lower()] = v.strip()
        return int(m.group(1)), hd

    def body(self, hd):
        """The whole body, chunked framing checked strictly."""
        if hd.get("transfer-encoding") == "chunked":
            out = []
            while True:
                ln = self.until(b"\r\n")
                if not re.fullmatch(rb"[0-9a-fA-F]+\r\n", ln):
                    raise ValueError(f"bad chunk size line {ln[:40]!r}")
                n = int(ln[:-2], 16)
                data = self.exact(n + 2)
                if data[-2:] != b"\r\n":
                    raise ValueError("chunk not followed by CRLF")
                if n == 0:
                    if data != b"\r\n":
                        raise ValueError("trailers after the last chunk")
                    return b"".join(out)
                out.append(data[:-2])
        return self.exact(int(hd["content-length"]))

    def send(self, method, path, obj=None, expect=False):
        body = json.dumps(obj).encode() if obj is not None else b""
        h = f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
        if obj is not None:
            h += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        if expect:
            h += "Expect: 100-continue\r\n"
        self.s.sendall((h + "\r\n").encode())
        if expect:
            st, _ = self.head()
            if st != 100:
                raise ValueError(f"expected 100 Continue, got {st}")
        if body:
            self.s.sendall(body)

    def request(self, method, path, obj=None, expect=False):
        self.send(method, path, obj, expect)
        st, hd = self.head()
        return st, self.body(hd)


def sse_text(raw):
    """(text, finish_reason, events) of an SSE body; raises when malformed."""
    if not raw.endswith(b"data: [DONE]\n\n"):
        raise ValueError("the stream does not end with data: [DONE]")
    parts = raw[:-len(b"data: [DONE]\n\n")].split(b"\n\n")
    if parts[-1] != b"":
        raise ValueError("an event not ended by a blank line")
    text, fin, n = [], None, 0
    for p in parts[:-1]:
        if not p.startswith(b"data: "):
            raise ValueError(f"not an SSE data line: {p[:40]!r}")
        ev = json.loads(p[6:])
        if ev["choices"]:
            text.append(ev["choices"][0]["text"])
            fin = ev["choices"][0]["finish_reason"] or fin
        n += 1
    return "".join(text), fin, n


def req(seed, stream, maxtok=MAXTOK):
    return {"model": MODEL_ID, "prompt": PROMPT, "max_tokens": maxtok, "seed": seed,
            "stream": stream}


def egress_pid(S):
    out = subprocess.run(["pgrep", "-f", "^favo: egress$", "-P", str(S.p.pid)],
                         capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def kill_egress(S, what):
    pid = egress_pid(S)
    if not check(pid is not None, f"{what}: egress is running"):
        return
    os.kill(pid, signal.SIGKILL)
    t0 = time.time()
    while time.time() - t0 < 10 and (egress_pid(S) in (None, pid) or not S.ready()):
        time.sleep(0.02)
    check(egress_pid(S) not in (None, pid) and S.ready(),
          f"{what}: egress restarted ({(time.time() - t0) * 1000:.0f} ms)")


def stream_across(conn, st, hd, ref, what):
    """The SSE body on conn, read after a kill, must equal ref byte for byte."""
    try:
        got = sse_text(conn.body(hd))
        check(st == 200 and got == ref, f"{what} is byte-exact ({got[2]} events, [DONE])")
    except (ValueError, EOFError, OSError) as e:
        check(False, f"{what} is byte-exact ({e!r})")


def still_answers(conn, what):
    st, raw = conn.request("POST", "/v1/completions", req(5, False, 8))
    check(st == 200 and json.loads(raw)["usage"]["completion_tokens"] == 8, what)


def stalled():
    """Let the server fill the socket: the client reads nothing more (the
    server's send buffer grows with what the client reads fast, so not even
    a little) until egress waits on a full send queue."""
    time.sleep(0.4)


def main():
    S = Serve("--backend", "null", env={"FAVO_EGR_KCHECK": "1"}, prefix="egrrst")
    port = S.port

    # references at full speed (fresh connections, nothing in their way)
    r = Conn(port, rcvbuf=1 << 20, small=False)
    st, raw = r.request("POST", "/v1/completions", req(11, True))
    ref11 = sse_text(raw)
    st2, raw = r.request("POST", "/v1/completions", req(12, True))
    ref12 = sse_text(raw)
    st3, raw = r.request("POST", "/v1/completions", req(13, False, 3000))
    ref13 = json.loads(raw)["choices"][0]["text"]
    check(st == st2 == st3 == 200 and ref11[2] > 1000 and len(ref13) > 1000,
          f"references: {ref11[2]} and {ref12[2]} events, a body of {len(ref13)} chars")
    r.s.close()

    # connection A: ingress answers on it first, then egress
    a = Conn(port)
    st, _ = a.request("GET", "/health")
    check(st == 200, "A: /health (ingress answers)")
    st, raw = a.request("POST", "/v1/completions", req(5, False, 8), expect=True)
    check(st == 200 and json.loads(raw)["usage"]["completion_tokens"] == 8,
          "A: a completion after 100 Continue (ingress wrote the 100)")
    st, _ = a.request("GET", "/v1/models")
    check(st == 200, "A: /v1/models (ingress answers)")
    # connection C: egress answers once before the first kill
    c = Conn(port)
    st, raw = c.request("POST", "/v1/completions", req(6, False, 8))
    check(st == 200, "C: a completion before the first kill")
    # connection B: a large body, never read until after the kill
    b = Conn(port, rcvbuf=4096)
    b.send("POST", "/v1/completions", req(13, False, 3000))

    # A's long stream, stalled; egress dies with a send in flight
    a.send("POST", "/v1/completions", req(11, True))
    sta, hda = a.head()
    stalled()
    kill_egress(S, "kill 1")
    stream_across(a, sta, hda, ref11, "A: the stream across the kill")
    try:
        stb, hdb = b.head()
        body = json.loads(b.body(hdb))
        check(stb == 200 and body["choices"][0]["text"] == ref13 and
              body["usage"]["completion_tokens"] == 3000,
              "B: the body across the kill parses whole and equals its reference")
    except (ValueError, EOFError, OSError) as e:
        check(False, f"B: the body across the kill parses whole and equals its reference ({e!r})")
    still_answers(a, "A: the connection still answers after the restart")

    # C again, with the new egress: it learns what the dead one wrote on C
    # (once, from the kernel), then dies with C's send in flight
    st, _ = c.request("GET", "/health")
    check(st == 200, "C: /health after the restart")
    c.send("POST", "/v1/completions", req(12, True))
    stc, hdc = c.head()
    stalled()
    kill_egress(S, "kill 2")
    stream_across(c, stc, hdc, ref12, "C: the stream across the second kill")
    still_answers(c, "C: the connection still answers after two restarts")
    still_answers(a, "A: the connection answers the third egress too")
    for x in (a, b, c):
        x.s.close()

    S.stop()
    log = S.logtext()
    resumed = re.findall(r"(\d+) of the (\d+) bytes in flight at the restart had left", log)
    print("sends in flight at the kills (taken/in flight):",
          ", ".join(f"{t}/{n}" for t, n in resumed))
    check(len(resumed) >= 2, f"each kill found a send in flight and resumed it ({len(resumed)})")
    check("does not match: closing" not in log, "no resume was refused")
    check("kernel count check:" not in log, "every user-space count agreed with the kernel's")
    m = re.search(r"kernel count checks: (\d+) agreed, (\d+) differed", log)
    check(m is not None and int(m.group(1)) >= 2 and m.group(2) == "0",
          f"the last egress compared its counts ({m.group(0) if m else 'no summary'})")
    check(S.p.returncode == 0, f"drain exits 0 ({S.p.returncode})")


if __name__ == "__main__":
    main()
    finish()
