"""Keep-alive and HTTP pipelining through the whole pipeline (favo serve
--backend null): a connection that egress answered goes back to ingress,
which keeps its armed receive when nothing of a next request is buffered
and takes it back (cancel, then parse) when the next request arrived while
the answer was being written. Every answer must come, in order, with the
request's own id:

  - 200 requests one after the other on one connection (the armed receive
    stays across every answer);
  - 5 requests in one write (the rest arrives while the first is parked);
  - a request split in two writes around an answer, with pauses;
  - a request whose bytes come one at a time after an answer;
  - 8 connections interleaved.
"""
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_util import Serve, check, finish, require_model  # noqa: E402


def req(i, extra=""):
    body = '{"prompt":"Say hello.","max_tokens":3,"temperature":0}'
    return (f"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"X-Request-Id: k-{i}\r\n{extra}Content-Length: {len(body)}\r\n\r\n{body}").encode()


def read_answers(s, n, timeout=20):
    """n HTTP answers from s, in order: [(status, request id, body)]."""
    s.settimeout(timeout)
    buf = b""
    out = []
    while len(out) < n:
        while b"\r\n\r\n" not in buf:
            d = s.recv(65536)
            if not d:
                return out
            buf += d
        head, rest = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        hdr = {k.strip().lower(): v.strip() for k, v in
               (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        cl = int(hdr.get("content-length", "0"))
        while len(rest) < cl:
            d = s.recv(65536)
            if not d:
                return out
            rest += d
        out.append((int(lines[0].split()[1]), hdr.get("x-request-id"), rest[:cl]))
        buf = rest[cl:]
    return out


def ids_ok(ans, first, n):
    return len(ans) == n and all(a[0] == 200 and a[1] == f"k-{first + i}" and b'"text"' in a[2]
                                 for i, a in enumerate(ans))


def main():
    require_model()
    S = Serve("--backend", "null", prefix="ka")
    try:
        port = S.port
        s = socket.create_connection(("127.0.0.1", port))
        ok = True
        for i in range(200):
            s.sendall(req(i))
            ans = read_answers(s, 1)
            ok = ok and ids_ok(ans, i, 1)
        check(ok, "200 keep-alive requests on one connection, each answered with its id")

        s.sendall(b"".join(req(1000 + i) for i in range(5)))
        check(ids_ok(read_answers(s, 5), 1000, 5), "5 pipelined requests answered in order")

        r = req(2000)
        s.sendall(req(1999) + r[:40])
        time.sleep(0.2)
        s.sendall(r[40:])
        check(ids_ok(read_answers(s, 2), 1999, 2),
              "a request split around the previous answer is answered")

        s.sendall(req(2999))
        check(ids_ok(read_answers(s, 1), 2999, 1), "answer before a trickled request")
        for b in req(3000):
            s.sendall(bytes([b]))
        check(ids_ok(read_answers(s, 1), 3000, 1), "a request sent a byte at a time is answered")
        s.close()

        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
        ok = True
        for rnd in range(20):
            for k, c in enumerate(conns):
                c.sendall(req(10000 + rnd * 8 + k) + (req(20000 + rnd * 8 + k) if k % 2 else b""))
            for k, c in enumerate(conns):
                a = read_answers(c, 2 if k % 2 else 1)
                ok = ok and ids_ok(a[:1], 10000 + rnd * 8 + k, 1)
                if k % 2:
                    ok = ok and ids_ok(a[1:], 20000 + rnd * 8 + k, 1)
        check(ok, "8 connections interleaved, some pipelining, 20 rounds")
        for c in conns:
            c.close()
        check(S.ready(), "the server is still ready")
    finally:
        rc = S.stop()
    check(rc == 0, f"favo serve exits 0 (got {rc})")
    finish()


main()
