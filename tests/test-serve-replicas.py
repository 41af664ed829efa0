#!/usr/bin/env python3
"""Two favo instances behind a real nginx (Debian) with upstream failover.

1. Steady load through nginx; SIGTERM to replica A: A drains (its port
   closes at once, requests in flight finish), nginx sends the rest to B:
   zero failed requests at the client, and A exits 0.
2. A is started again; kill -9 of the whole instance A (supervisor and
   stages): only requests in flight on A may fail, every request sent after
   the kill succeeds (on B).
Skips (77) when nginx or the model is missing.
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

FAVO = os.path.join(os.environ.get("FAVO_BUILD", "build"), "favo")
MODEL = os.path.join(os.environ.get("FAVO_MODELS", "models"), "SmolLM2-135M-Instruct.Q4_1.gguf")
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


if not NGINX:
    print("SKIP: nginx is not installed (./setup.sh test installs it)")
    sys.exit(77)
if not os.path.exists(MODEL):
    print(f"SKIP: {MODEL} missing")
    sys.exit(77)


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Replica:
    def __init__(self, name, port):
        self.log = tempfile.NamedTemporaryFile(prefix=f"favo-{name}-", suffix=".log", delete=False)
        self.p = subprocess.Popen(
            [FAVO, "serve", "--model", MODEL, "--port", str(port), "--instance",
             f"rep{os.getpid()}{name}", "--kv-cache-mb", "256", "--ctx-size", "2048", "--max-seqs", "16",
             "--max-batch-tokens", "256", "--threads", "1", "--drain-timeout", "20"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(2400):
            if "ready in" in open(self.log.name, errors="replace").read():
                return
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        print(open(self.log.name, errors="replace").read()[-3000:])
        raise SystemExit(f"FAIL: replica {name} did not start")


def nginx_start(d, port, ups):
    conf = os.path.join(d, "nginx.conf")
    servers = "\n".join(f"        server 127.0.0.1:{u} max_fails=1 fail_timeout=2s;" for u in ups)
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream favo {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://favo;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
        }}
    }}
}}
""")
    p = subprocess.Popen([NGINX, "-p", d, "-c", conf, "-g", "daemon off;"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(100):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            c.getresponse().read()
            return p
        except OSError:
            time.sleep(0.05)
    raise SystemExit("FAIL: nginx did not start: " + open(f"{d}/error.log").read()[-1000:])


def request(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "Tell me about rivers.",
                       "max_tokens": 12, "temperature": 0})
    try:
        c.request("POST", "/v1/completions", body=body,
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        b = r.read()
        ok = r.status == 200 and json.loads(b)["object"] == "text_completion"
        return ok, r.status
    except Exception as e:  # noqa: BLE001
        return False, repr(e)
    finally:
        c.close()


def load(port, stop, out, threads=4):
    def w():
        while not stop.is_set():
            t0 = time.time()
            ok, st = request(port)
            out.append((t0, ok, st))
    th = [threading.Thread(target=w) for _ in range(threads)]
    for t in th:
        t.start()
    return th


def main():
    d = tempfile.mkdtemp(prefix="favo-nginx-")
    pa, pb, pn = free_port(), free_port(), free_port()
    A, B = Replica("a", pa), Replica("b", pb)
    ng = nginx_start(d, pn, [pa, pb])
    try:
        # 1. SIGTERM to A under load: zero failures
        stop, out = threading.Event(), []
        th = load(pn, stop, out)
        time.sleep(2)
        A.p.send_signal(signal.SIGTERM)
        rc = A.p.wait(60)
        time.sleep(2)
        stop.set()
        for t in th:
            t.join()
        bad = [o for o in out if not o[1]]
        check(len(out) >= 10, f"load ran ({len(out)} requests)")
        check(not bad, f"SIGTERM to one replica: zero failed requests ({len(bad)} of {len(out)}: "
                       f"{[b[2] for b in bad[:5]]})")
        check(rc == 0, f"the drained replica exits 0 ({rc})")

        # 2. kill -9 of the whole instance A: only its in-flight requests may fail
        A = Replica("a2", pa)
        time.sleep(0.5)
        stop, out = threading.Event(), []
        th = load(pn, stop, out)
        time.sleep(2)
        t_kill = time.time()
        os.killpg(A.p.pid, signal.SIGKILL)
        A.p.wait()
        try:  # a killed supervisor cannot remove its stats segment: the test does
            os.unlink(f"/dev/shm/favo.rep{os.getpid()}a2")
        except OSError:
            pass
        time.sleep(3)
        stop.set()
        for t in th:
            t.join()
        late = [o for o in out if o[0] > t_kill + 0.05]
        bad_late = [o for o in late if not o[1]]
        bad = [o for o in out if not o[1]]
        check(len(late) >= 5, f"requests were sent after the kill ({len(late)})")
        check(not bad_late, f"kill -9 of a replica: every request sent after it succeeds "
                            f"({len(bad_late)} of {len(late)} failed)")
        check(len(bad) <= 4, f"only requests in flight on the killed replica failed ({len(bad)})")
    finally:
        ng.send_signal(signal.SIGQUIT)
        try:
            ng.wait(10)
        except subprocess.TimeoutExpired:
            ng.kill()
        for r in (A, B):
            if r.p.poll() is None:
                r.p.send_signal(signal.SIGTERM)
                try:
                    r.p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(r.p.pid, signal.SIGKILL)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
    print(f"{len(failures)} failures")
    sys.exit(1 if failures else 0)
