#!/usr/bin/env python3
"""favo serve over TLS 1.3 (--tls-cert/--tls-key) end to end: the real
pipeline on the default model, certificates made here with the `openssl`
command (a CA and a leaf for localhost / 127.0.0.1 signed by it).

Covers: serve refuses a bad certificate, a key that does not match, an
encrypted key and a missing file with a message naming the file; curl
--cacert: /health, chat non-streaming and streaming; the OpenAI Python SDK
over https (httpx verifying against the CA file); keep-alive (several
requests, generation included, on one TLS connection); three requests
pipelined in one TLS record answered in order; `openssl s_client
-tls1_2` refused (protocol_version alert), `-tls1_3 -alpn http/1.1`
accepted with ALPN http/1.1, and a client offering only h2 refused; a
client that disconnects mid-stream over TLS has its sequence cancelled
(running gauge back to 0); plain HTTP to the TLS port is closed at once,
not left hanging; kill -9 of egress mid-stream: the TLS stream resumes
byte-exact; kill -9 of ingress mid-stream: the TLS client's connection ends
promptly (the keys died with ingress), its sequence is cancelled, and the
server serves TLS again; the server exits 0 on SIGTERM; no prompt text in
the log; a TLS client that stops reading is cut off by the write timeout
(egress -> ingress abort), counted, and the server serves on.

This host has no kernel `tls` module, so every answer from egress takes the
userspace path (egress -> ingress -> OpenSSL -> socket); the log line says
which path the server uses.
"""
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from serve_util import (FAVO, MODEL, MODEL_ID, Serve, check, finish, gauge, require_model,
                        skip, sse_events)

require_model()
if not shutil.which("openssl"):
    skip("the openssl command is not installed")
if not shutil.which("curl"):
    skip("curl is not installed")

D = tempfile.mkdtemp(prefix="favo-tls-")
CA, CAKEY = os.path.join(D, "ca.pem"), os.path.join(D, "ca.key")
CERT, KEY = os.path.join(D, "cert.pem"), os.path.join(D, "key.pem")
PROMPT = "Write one sentence about a lighthouse."


def ossl(*args, inp=None):
    r = subprocess.run(["openssl", *args], capture_output=True, text=True, input=inp,
                       timeout=30)
    if r.returncode != 0:
        raise SystemExit(f"FAIL: openssl {' '.join(args)}: {r.stderr}")
    return r.stdout


def make_certs():
    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", CAKEY, "-out", CA, "-days", "2", "-subj", "/CN=favo test CA")
    csr = os.path.join(D, "leaf.csr")
    ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", KEY, "-out", csr, "-subj", "/CN=localhost")
    ext = os.path.join(D, "ext.cnf")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    ossl("x509", "-req", "-in", csr, "-CA", CA, "-CAkey", CAKEY, "-CAcreateserial", "-out",
         CERT, "-days", "2", "-extfile", ext)


def bad_configs():
    """serve stops before serving, with a message that names the file."""
    other_key = os.path.join(D, "other.key")
    ossl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out",
         other_key)
    enc_key = os.path.join(D, "enc.key")
    ossl("pkey", "-in", KEY, "-aes256", "-passout", "pass:secret", "-out", enc_key)
    garbage = os.path.join(D, "garbage.pem")
    with open(garbage, "w") as f:
        f.write("this is not a certificate\n")
    missing = os.path.join(D, "missing.pem")
    cases = [("a certificate that is not PEM", garbage, KEY, garbage),
             ("a key that does not match the certificate", CERT, other_key, other_key),
             ("an encrypted key", CERT, enc_key, enc_key),
             ("a missing certificate file", missing, KEY, missing)]
    for what, cert, key, named in cases:
        r = subprocess.run([FAVO, "serve", "--model", MODEL, "--port", "0", "--instance",
                            f"tlsbad{os.getpid()}", "--tls-cert", cert, "--tls-key", key],
                           capture_output=True, text=True, timeout=60)
        out = r.stdout + r.stderr
        check(r.returncode != 0 and named in out and "serving" not in out,
              f"serve refuses {what}, naming the file (rc {r.returncode}: "
              f"{out.strip().splitlines()[-1] if out.strip() else ''!r})")
    r = subprocess.run([FAVO, "serve", "--model", MODEL, "--port", "0", "--tls-cert", CERT],
                       capture_output=True, text=True, timeout=60)
    check(r.returncode != 0 and "--tls-key" in r.stdout + r.stderr,
          "serve refuses --tls-cert without --tls-key")


def curl(S, path, body=None, extra=()):
    args = ["curl", "-sS", "--max-time", "60", "--cacert", CA, *extra,
            f"https://localhost:{S.port}{path}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    r = subprocess.run(args + ["-w", "\n%{http_code} %{http_version}"], capture_output=True,
                       text=True, timeout=90)
    out, _, tail = r.stdout.rpartition("\n")
    return r.returncode, tail, out, r.stderr


def tls_ctx():
    ctx = ssl.create_default_context(cafile=CA)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def https_conn(S, timeout=60):
    return http.client.HTTPSConnection("localhost", S.port, context=tls_ctx(), timeout=timeout)


def s_client(S, *args, inp=""):
    r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{S.port}",
                        "-servername", "localhost", "-CAfile", CA, *args],
                       capture_output=True, text=True, input=inp, timeout=30)
    return r.returncode, r.stdout + r.stderr


def run(S):
    # curl: health, chat, streamed chat
    rc, tail, out, err = curl(S, "/health")
    check(rc == 0 and tail.startswith("200") and '"ok"' in out,
          f"curl --cacert https /health: 200 ({rc} {tail} {err.strip()[:120]})")
    rc, tail, out, err = curl(S, "/v1/chat/completions",
                              {"model": MODEL_ID, "max_tokens": 16, "temperature": 0,
                               "messages": [{"role": "user", "content": PROMPT}]})
    try:
        text = json.loads(out)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        text = None
    check(rc == 0 and tail.startswith("200") and isinstance(text, str) and text,
          f"curl https chat completion: 200 with text ({rc} {tail} {(text or out)[:80]!r})")
    rc, tail, out, err = curl(S, "/v1/chat/completions",
                              {"model": MODEL_ID, "max_tokens": 16, "temperature": 0,
                               "stream": True,
                               "messages": [{"role": "user", "content": PROMPT}]}, ("-N",))
    parts = []
    for line in out.splitlines():
        if line.startswith("data: {"):
            for c in json.loads(line[6:])["choices"]:
                parts.append((c.get("delta") or {}).get("content") or "")
    check(rc == 0 and tail.startswith("200") and out.rstrip().endswith("data: [DONE]") and
          "".join(parts) == text,
          f"curl https streamed chat: complete and equal to the greedy answer ({''.join(parts)[:60]!r})")

    # the OpenAI SDK over https, verifying against the CA
    try:
        import openai
    except ImportError:
        openai = None
    if openai is None:
        check(False, "the openai package is in the project venv")
    else:
        # the SDK's own httpx client (httpx or httpx2, whichever this
        # openai release ships with), verifying against our CA file
        hc = openai.DefaultHttpxClient(verify=CA)
        cl = openai.OpenAI(base_url=f"https://localhost:{S.port}/v1", api_key="none",
                           max_retries=0, timeout=120, http_client=hc)
        r = cl.chat.completions.create(model=MODEL_ID, max_tokens=16, temperature=0,
                                       messages=[{"role": "user", "content": PROMPT}])
        check(r.choices[0].message.content == text,
              f"OpenAI SDK over https: the same greedy answer ({r.choices[0].message.content[:60]!r})")
        got = []
        for ch in cl.chat.completions.create(model=MODEL_ID, max_tokens=16, temperature=0,
                                             stream=True, stream_options={"include_usage": True},
                                             messages=[{"role": "user", "content": PROMPT}]):
            for c in ch.choices:
                if c.delta and c.delta.content:
                    got.append(c.delta.content)
        check("".join(got) == text, "OpenAI SDK streaming over https: the same text")
        ms = cl.models.list()
        check([m.id for m in ms.data] == [MODEL_ID], "OpenAI SDK /v1/models over https")

    # keep-alive: several requests, generation included, on one TLS connection
    c = https_conn(S)
    statuses, socks = [], set()
    for i in range(4):
        if i % 2:
            c.request("POST", "/v1/completions", body=json.dumps(
                {"model": MODEL_ID, "prompt": f"Count: {i},", "max_tokens": 6}),
                headers={"Content-Type": "application/json"})
        else:
            c.request("GET", "/health")
        resp = c.getresponse()
        resp.read()
        statuses.append(resp.status)
        socks.add(id(c.sock))
    c.request("POST", "/v1/chat/completions", body=json.dumps(
        {"model": MODEL_ID, "max_tokens": 8, "stream": True,
         "messages": [{"role": "user", "content": PROMPT}]}),
        headers={"Content-Type": "application/json"})
    resp = c.getresponse()
    evs = list(sse_events(resp))
    statuses.append(resp.status)
    socks.add(id(c.sock))
    check(statuses == [200] * 5 and len(socks) == 1 and evs and evs[-1] is None,
          f"keep-alive: 5 requests (2 generated, 1 streamed) on one TLS connection ({statuses}, "
          f"{len(socks)} socket)")
    c.close()

    # pipelining inside TLS: three requests in one write (one record), the
    # generation in the middle; answers in order on the same session
    raw = tls_ctx().wrap_socket(socket.create_connection(("127.0.0.1", S.port), timeout=60),
                                server_hostname="localhost")
    gen = json.dumps({"model": MODEL_ID, "prompt": "Hello", "max_tokens": 5})
    raw.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" +
                f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(gen)}\r\n\r\n{gen}".encode() +
                b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    buf = b""
    try:
        while True:
            b = raw.recv(65536)
            if not b:
                break
            buf += b
    except (OSError, ssl.SSLError):
        pass
    raw.close()
    heads = [m.start() for m in re.finditer(rb"HTTP/1\.1 200 OK", buf)]
    order = [buf.find(b'"status":"ok"'), buf.find(b'"text_completion"'), buf.find(b'"object":"list"')]
    check(len(heads) == 3 and all(x >= 0 for x in order) and order == sorted(order),
          f"three pipelined requests in one TLS record: answered in order ({len(heads)} answers, "
          f"{order})")

    # openssl s_client: TLS 1.2 refused, TLS 1.3 + ALPN http/1.1 served
    rc, out = s_client(S, "-tls1_2")
    check(rc != 0 and ("alert protocol version" in out or "alert number 70" in out),
          "openssl s_client -tls1_2 is refused (protocol_version alert)")
    rc, out = s_client(S, "-tls1_3", "-alpn", "http/1.1", "-ign_eof",
                       inp="GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    check("Protocol  : TLSv1.3" in out or "TLSv1.3" in out, "s_client -tls1_3: TLSv1.3 negotiated")
    check("ALPN protocol: http/1.1" in out, "s_client -tls1_3 -alpn http/1.1: ALPN http/1.1")
    check("HTTP/1.1 200 OK" in out and '{"status":"ok"}' in out,
          "s_client -tls1_3: /health answered over the session")
    rc, out = s_client(S, "-tls1_3", "-alpn", "h2")
    check(rc != 0 and ("no application protocol" in out or "alert number 120" in out),
          "a client offering only h2 is refused (no_application_protocol)")

    # a client that disconnects mid-stream: its sequence is cancelled
    base = (S.stat() or {}).get("counters", {})
    c = https_conn(S)
    c.request("POST", "/v1/completions", body=json.dumps(
        {"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 2000, "stream": True,
         "temperature": 0.8, "seed": 3}), headers={"Content-Type": "application/json"})
    resp = c.getresponse()
    first = resp.readline()
    running = None
    for _ in range(100):
        running = gauge(S.stat(), "running")
        if running == 1:
            break
        time.sleep(0.05)
    check(resp.status == 200 and first.startswith(b"data: ") and running == 1,
          f"a long TLS stream runs ({resp.status}, running {running})")
    c.sock.close()  # no close_notify: the TCP connection just goes
    c.close()
    t0 = time.time()
    while time.time() - t0 < 20:
        running = gauge(S.stat(), "running")
        if running == 0:
            break
        time.sleep(0.05)
    check(running == 0, f"the disconnected TLS client's sequence is cancelled (running {running}, "
          f"{time.time() - t0:.2f} s)")
    after = {}
    for _ in range(40):  # egress counts the outcome once the cell comes back
        after = (S.stat() or {}).get("counters", {})
        if after.get("req_cancel", 0) > base.get("req_cancel", 0):
            break
        time.sleep(0.05)
    check(after.get("req_cancel", 0) == base.get("req_cancel", 0) + 1,
          f"...and counted cancelled once ({base.get('req_cancel')} -> {after.get('req_cancel')})")

    # plain HTTP to the TLS port: closed at once, never answered in clear
    s = socket.create_connection(("127.0.0.1", S.port), timeout=10)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    got, t0 = b"", time.time()
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
            got += b
    except (socket.timeout, ConnectionResetError):
        pass
    dt = time.time() - t0
    s.close()
    check(dt < 5 and b"HTTP/1.1" not in got and b"ok" not in got,
          f"plain HTTP to the TLS port is closed ({len(got)} bytes, {dt:.2f} s)")

    # a client that connects and says nothing is not served forever either:
    # and the server still answers afterwards
    rc, tail, out, _ = curl(S, "/health")
    check(rc == 0 and tail.startswith("200"), "the server still answers over TLS afterwards")
    st = S.stat() or {}
    print("stats counters:", {k: v for k, v in (st.get("counters") or {}).items()
                             if "req" in k}, flush=True)


def stage_pid(S, name):
    out = subprocess.run(["pgrep", "-f", f"^favo: {name}$", "-P", str(S.p.pid)],
                         capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def tls_ready(S, secs=60):
    t0 = time.time()
    while time.time() - t0 < secs:
        try:
            c = https_conn(S, timeout=5)
            c.request("GET", "/ready")
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def restarts(S):
    """kill -9 of egress mid-stream: the TLS stream resumes byte-exact (its
    chunks come back to ingress from the new egress). kill -9 of ingress
    mid-stream: the TLS keys are gone, so the client sees its connection
    close promptly; its sequence is cancelled and nothing hangs."""
    body = {"model": MODEL_ID, "prompt": "The history of the bicycle", "max_tokens": 60,
            "temperature": 0, "stream": True}
    c = https_conn(S)
    c.request("POST", "/v1/completions", body=json.dumps(body),
              headers={"Content-Type": "application/json"})
    ref = "".join(e["choices"][0]["text"] for e in sse_events(c.getresponse()) if e)
    c.close()

    c = https_conn(S)
    c.request("POST", "/v1/completions", body=json.dumps(body),
              headers={"Content-Type": "application/json"})
    resp = c.getresponse()
    it = sse_events(resp)
    text = [next(it)["choices"][0]["text"]]
    pid = stage_pid(S, "egress")
    check(pid is not None, "egress stage found")
    if pid:
        os.kill(pid, 9)
    done = False
    try:
        for e in it:
            if e is None:
                done = True
                break
            text.append(e["choices"][0]["text"])
    except (OSError, http.client.HTTPException) as ex:
        text.append(f"<{ex!r}>")
    c.close()
    check(done and "".join(text) == ref,
          f"kill -9 of egress mid-stream: the TLS stream completes byte-exact ({done}, "
          f"{''.join(text)[-40:]!r} vs {ref[-40:]!r})")
    check(tls_ready(S), "ready again over TLS after the egress restart")

    body["max_tokens"] = 2000
    body["temperature"] = 0.8
    c = https_conn(S, timeout=30)
    c.request("POST", "/v1/completions", body=json.dumps(body),
              headers={"Content-Type": "application/json"})
    resp = c.getresponse()
    first = resp.readline()
    pid = stage_pid(S, "ingress")
    check(first.startswith(b"data: ") and pid is not None, "a TLS stream runs; ingress found")
    t0 = time.time()
    if pid:
        os.kill(pid, 9)
    closed = False
    try:
        while time.time() - t0 < 20:
            if not resp.readline():
                closed = True
                break
    except (OSError, http.client.HTTPException, ssl.SSLError):
        closed = True
    dt = time.time() - t0
    c.close()
    check(closed and dt < 10, f"kill -9 of ingress: the TLS client sees its connection end "
          f"({closed}, {dt:.2f} s)")
    running = None
    while time.time() - t0 < 30:
        running = gauge(S.stat(), "running")
        if running == 0:
            break
        time.sleep(0.05)
    check(running == 0, f"...its sequence is cancelled (running {running})")
    check(tls_ready(S), "ready again over TLS after the ingress restart")
    rc, tail, out, _ = curl(S, "/v1/completions", {"model": MODEL_ID, "prompt": "Hi",
                                                    "max_tokens": 4})
    check(rc == 0 and tail.startswith("200"), "a new TLS request is answered after both restarts")


def write_timeout():
    """A TLS client that stops reading: egress's write timeout (1 s here)
    reaches ingress, which holds the socket and the keys (SHM_CONN_ABORT):
    the connection is cut, the sequence cancelled and counted as a
    timeout, and the server goes on serving. The null backend fills the
    socket buffers fast; six long answers are pipelined, since one answer
    alone fits the kernel's send buffer (up to tcp_wmem's 4 MiB)."""
    S = Serve("--tls-cert", CERT, "--tls-key", KEY, "--backend", "null", "--write-timeout", "1",
              prefix="tlswt")
    try:
        base = (S.stat() or {}).get("counters", {}).get("req_tmo", 0)
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(30)
        raw.connect(("127.0.0.1", S.port))
        c = tls_ctx().wrap_socket(raw, server_hostname="localhost")
        body = json.dumps({"model": MODEL_ID, "prompt": "Hi", "max_tokens": 8000,
                           "stream": True})
        one = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
               f"application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()
        # six long answers pipelined: more than the kernel's largest send
        # buffer (tcp_wmem, 4 MiB) takes while nobody reads
        c.sendall(one * 6)
        c.recv(100)  # the answer started; then nothing is read
        t0, tmo = time.time(), base
        while time.time() - t0 < 15:
            tmo = (S.stat() or {}).get("counters", {}).get("req_tmo", 0)
            if tmo > base:
                break
            time.sleep(0.1)
        dt = time.time() - t0
        check(tmo == base + 1 and dt < 10,
              f"a TLS client that stops reading is cut off by the write timeout ({base} -> {tmo}, "
              f"{dt:.1f} s)")
        ended = False
        try:
            c.settimeout(10)
            while c.recv(65536):
                pass
            ended = True
        except (OSError, ssl.SSLError):
            ended = True
        c.close()
        check(ended, "...its connection ends")
        running = None
        for _ in range(100):
            running = gauge(S.stat(), "running")
            if running == 0:
                break
            time.sleep(0.05)
        check(running == 0, f"...its sequence is no longer running ({running})")
        rc, tail, out, _ = curl(S, "/v1/completions", {"model": MODEL_ID, "prompt": "Hi",
                                                        "max_tokens": 4})
        check(rc == 0 and tail.startswith("200"), "the server serves TLS after the timeout")
    finally:
        check(S.stop() == 0, "the write-timeout server exits 0")


def main():
    make_certs()
    bad_configs()
    S = Serve("--tls-cert", CERT, "--tls-key", KEY, prefix="tls")
    try:
        check("https://127.0.0.1:" in S.logtext(), "serve says https:// in its ready line")
        run(S)
        restarts(S)
    finally:
        rc = S.stop()
        check(rc == 0, f"favo serve exits 0 after SIGTERM (got {rc})")
        log = S.logtext()
        check(PROMPT not in log and "lighthouse" not in log, "no prompt text in the log")
    try:
        write_timeout()
    finally:
        shutil.rmtree(D, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
