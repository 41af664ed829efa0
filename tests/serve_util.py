"""Shared pieces of the tests that drive a real `favo serve` (test-serve-*.py).

Not a test itself (ctest runs tests/test-*.py only). Each test script does
`from serve_util import ...`; Python puts the script's folder on sys.path.

- check(cond, what) prints one ok/FAIL line and remembers failures;
  finish() turns them into the exit status (0 pass, 1 fail).
- skip(why) exits 77 (ctest's skip) with a message; require_model() and
  sanitizer_build() are the usual reasons.
- Serve starts `favo serve` on a free port with its own instance name (so
  its stats segment /favo.NAME is its own), waits for the "ready in" line
  and offers plain-HTTP helpers, the OpenAI SDK client, `favo stat --json`
  and a clean stop. The server gets SIGTERM if the test process dies.
"""
import ctypes
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

FAVO = os.path.join(os.environ.get("FAVO_BUILD", "build"), "favo")
MODELS = os.environ.get("FAVO_MODELS", "models")
MODEL = os.path.join(MODELS, "SmolLM2-135M-Instruct.Q4_1.gguf")
MODEL_ID = "SmolLM2-135M-Instruct.Q4_1"
T0 = time.time()
failures = []


def check(cond, what, timed=False):
    stamp = f"  [{time.time() - T0:.1f} s]" if timed else ""
    print(("ok   " if cond else "FAIL ") + what + stamp, flush=True)
    if not cond:
        failures.append(what)
    return cond


def finish():
    """Exit with the test's status after printing the failures."""
    if failures:
        print(f"{len(failures)} check(s) failed:")
        for f in failures:
            print("  - " + f)
        sys.exit(1)
    print("all checks passed")
    sys.exit(0)


def skip(why):
    print("SKIP: " + why)
    sys.exit(77)


def require_model(model=MODEL):
    if not os.path.exists(FAVO):
        skip(f"{FAVO} is not built")
    if not os.path.exists(model):
        skip(f"{model} is missing (./setup.sh installs it)")


def sanitizer_build():
    out = subprocess.run([FAVO, "--version"], capture_output=True, text=True).stdout
    return "sanitizer" in out


def die_with_parent():
    """preexec_fn: the child gets SIGTERM when the test dies (a ctest timeout)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


# The serve options most tests want: a small KV pool and batch, two threads.
DEFAULT_ARGS = ("--kv-cache-mb", "512", "--max-seqs", "32", "--max-batch-tokens", "512",
                "--threads", "2", "--drain-timeout", "20")


class Serve:
    """favo serve on a free port (or `port`) with its own instance name.

    extra: more options after `defaults`; env: added to the environment;
    new_session: its own process group (to kill the whole instance)."""

    def __init__(self, *extra, env=None, defaults=DEFAULT_ARGS, port=0, model=MODEL,
                 prefix="t", new_session=False, ready_timeout=120):
        self.inst = f"{prefix}{os.getpid()}x{int(time.time() * 1000) % 100000}"
        self.log = tempfile.NamedTemporaryFile(prefix=f"favo-{prefix}-", suffix=".log",
                                               delete=False)
        self.args = [FAVO, "serve", "--model", model, "--port", str(port), "--instance",
                     self.inst, *defaults, *extra]
        e = dict(os.environ)
        e.update(env or {})
        self.p = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=e,
                                  preexec_fn=None if new_session else die_with_parent,
                                  start_new_session=new_session)
        self.port = None
        t0 = time.time()
        while time.time() - t0 < ready_timeout:
            m = re.search(r"on https?://127\.0\.0\.1:(\d+) .*ready in", Serve.logtext(self))
            if m:
                self.port = int(m.group(1))
                break
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        if not self.port:
            print(Serve.logtext(self)[-4000:])
            self.stop()
            raise SystemExit("FAIL: favo serve did not become ready")
        self.base = f"http://127.0.0.1:{self.port}"

    def client(self, key="none", **kw):
        import openai
        return openai.OpenAI(base_url=self.base + "/v1", api_key=key, max_retries=0,
                             timeout=120, **kw)

    def request(self, method, path, body=None, headers=None, conn=None, timeout=120):
        """One request; (status, body bytes). conn: reuse that connection."""
        c = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        h = {"Content-Type": "application/json"} if body is not None else {}
        h.update(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        if conn is None:
            c.close()
        return r.status, data

    def get(self, path, headers=None, **kw):
        return self.request("GET", path, None, headers, **kw)

    def post(self, path, obj, headers=None, **kw):
        return self.request("POST", path, obj, headers, **kw)

    def ready(self):
        try:
            return self.get("/ready", timeout=5)[0] == 200
        except OSError:
            return False

    def stat(self):
        out = subprocess.run([FAVO, "stat", "--instance", self.inst, "--json"],
                             capture_output=True, text=True, timeout=30)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode

    def logtext(self):
        return open(self.log.name, errors="replace").read()

    def logbytes(self):
        return open(self.log.name, "rb").read()


def gauge(snap, name):
    """A gauge's value from `favo stat --json`, wherever the view puts it."""
    if snap is None:
        return None
    for sect in ("gauges", "gauge"):
        if isinstance(snap.get(sect), dict) and name in snap[sect]:
            v = snap[sect][name]
            return v.get("value") if isinstance(v, dict) else v
    return None


def wait_idle(S, secs=30):
    """Wait for running == 0 and waiting == 0; returns the last values."""
    t0 = time.time()
    r = w = None
    while time.time() - t0 < secs:
        snap = S.stat()
        r, w = gauge(snap, "running"), gauge(snap, "waiting")
        if r == 0 and (w in (0, None)):
            return r, w
        time.sleep(0.05)
    return r, w


def sse_events(resp):
    """Yield the JSON objects of an SSE response until `data: [DONE]`;
    a final None marks that [DONE] arrived."""
    for line in resp:
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        if line == b"data: [DONE]":
            yield None
            return
        yield json.loads(line[6:])
