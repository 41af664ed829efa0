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
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from serve_util import MODEL_ID, Serve, check, finish, free_port, require_model, skip

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
if not NGINX:
    skip("nginx is not installed (./setup.sh test installs it)")
require_model()


def Replica(name, port):
    """One whole favo instance in its own process group (killpg kills it all)."""
    return Serve(defaults=("--kv-cache-mb", "256", "--ctx-size", "2048", "--max-seqs", "16",
                           "--max-batch-tokens", "256", "--threads", "1", "--drain-timeout", "20"),
                 port=port, prefix="rep" + name, new_session=True)


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
    body = json.dumps({"model": MODEL_ID, "prompt": "Tell me about rivers.",
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
            os.unlink(f"/dev/shm/favo.{A.inst}")
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
    finish()
