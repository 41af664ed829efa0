"""favo stat and /metrics against a real `favo serve` (issue #10, restart
stats of issue #9).

Two API keys of two tenants send requests; then `favo stat --json` must
show per-tenant request and token counts equal to what the responses'
usage says, every pipeline ring with its depth, capacity and rates, the
latency windows (10 s, 60 s, since start) with p50 <= p95 <= p99, and each
stage's CPU use; the text view and a `--watch` run into a pipe (no terminal:
no escape codes, one separator per redraw) read sanely; /metrics carries
the same counts and passes `promtool check metrics`. Then (not in sanitizer
builds, whose restarts take seconds) egress is killed with SIGKILL: its row
must show restarts == 1 and a restart time (exit -> replacement up) > 0,
and /metrics a favo_stage_restart_seconds observation.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from serve_util import (FAVO, MODEL_ID, Serve, check, finish, require_model, sanitizer_build)

require_model()


def add_key(kf, name, tenant):
    out = subprocess.run([FAVO, "keys", "add", "--keys", kf, "--name", name, "--tenant", tenant,
                          "--rpm", "0", "--tpm", "0"], capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr)
        raise SystemExit("FAIL: favo keys add")
    return out.stdout.strip().split()[-1]


def tenant(snap, name):
    for t in (snap or {}).get("tenants", []):
        if t.get("tenant") == name:
            return t
    return None


def main():
    d = tempfile.mkdtemp()
    kf = os.path.join(d, "keys")
    keys = {"alpha": add_key(kf, "ka", "alpha"), "beta": add_key(kf, "kb", "beta")}
    want = {"alpha": 3, "beta": 2}
    S = Serve("--keys", kf)
    try:
        usage = {t: [0, 0] for t in want}
        for t, n in want.items():
            for i in range(n):
                st, body = S.post("/v1/completions",
                                  {"model": MODEL_ID, "prompt": f"Count to {i + 3}:",
                                   "max_tokens": 6, "temperature": 0},
                                  headers={"Authorization": "Bearer " + keys[t]})
                check(st == 200, f"tenant {t} request {i} answered 200 ({st})")
                if st == 200:
                    import json
                    u = json.loads(body)["usage"]
                    usage[t][0] += u["prompt_tokens"]
                    usage[t][1] += u["completion_tokens"]
        # egress counts after the last byte: poll briefly
        t0 = time.time()
        snap = None
        while time.time() - t0 < 10:
            snap = S.stat()
            # the ring figures are sampled by the supervisor every 100 ms
            if (all((tenant(snap, t) or {}).get("requests") == n for t, n in want.items()) and
                    snap.get("rings", {}).get("req", {}).get("messages", 0) >= 5):
                break
            time.sleep(0.1)
        check(snap is not None, "favo stat --json parses")
        for t, n in want.items():
            row = tenant(snap, t) or {}
            check(row.get("requests") == n, f"tenant {t}: {n} requests counted ({row})")
            check(row.get("prompt_tokens") == usage[t][0] and row.get("gen_tokens") == usage[t][1],
                  f"tenant {t}: tokens match the responses' usage {usage[t]} ({row})")
            check(row.get("errors") == 0, f"tenant {t}: no errors")

        # rings: all six with a capacity, and the requests went through req
        rings = snap.get("rings", {})
        for r in ("req", "plan", "done", "ev", "ctl", "conn"):
            x = rings.get(r, {})
            check(x.get("capacity", 0) > 0 and 0 <= x.get("depth", -1) <= x["capacity"],
                  f"ring {r}: depth {x.get('depth')} of capacity {x.get('capacity')}")
            check("per_s_10s" in x and "per_s_60s" in x, f"ring {r}: rates over 10 s and 60 s")
        check(rings.get("req", {}).get("messages", 0) >= 5,
              f"req ring carried the 5 requests ({rings.get('req')})")

        # windows: the supervisor recomputes them every second
        time.sleep(1.2)
        snap = S.stat()
        win = snap.get("windows", {})
        check(set(win) == {"10s", "60s"}, f"windows 10s and 60s ({sorted(win)})")
        for w in ("10s", "60s"):
            h = win.get(w, {}).get("histograms", {})
            check(win.get(w, {}).get("span_s", 0) > 0, f"window {w} covers time")
            for name in ("queue", "ttft", "itl", "e2e"):
                x = h.get(name, {})
                ok = x.get("count", 0) >= (5 if name != "itl" else 1) and \
                    0 < x.get("p50_s", 0) <= x.get("p95_s", 0) <= x.get("p99_s", 0) \
                    if name != "queue" else x.get("count", 0) >= 5
                check(ok, f"window {w}: {name} count and p50 <= p95 <= p99 ({x})")
        for name in ("queue", "ttft", "itl", "e2e"):
            x = snap.get("histograms", {}).get(name, {})
            check("p95_s" in x and x.get("count", 0) >= 1, f"since start: {name} has p95 ({x})")
        check(win.get("10s", {}).get("per_s", {}).get("gen_tok", 0) > 0,
              "generated tokens per second over the last 10 s")
        # stages: pid, cores, CPU use, heartbeat, version
        for s in snap.get("stages", []):
            check(s.get("state") == "running" and s.get("pid", 0) > 0 and s.get("cpu_s", -1) >= 0
                  and s.get("cpu_pct", -1) >= 0 and s.get("heartbeat_age_s", -1) >= 0,
                  f"stage {s.get('stage')}: running, CPU {s.get('cpu_s')} s "
                  f"({s.get('cpu_pct')} %), heartbeat")
        check(len(snap.get("stages", [])) == 4, "four stage rows")
        check(snap.get("version") and snap.get("uptime_s", 0) > 0,
              f"version {snap.get('version')} and uptime {snap.get('uptime_s')}")

        # text view, and --watch into a pipe
        out = subprocess.run([FAVO, "stat", "--instance", S.inst], capture_output=True, text=True,
                             timeout=30).stdout
        check("| 10s" in out and "| 60s" in out and "alpha" in out and "beta" in out,
              "the text view shows the windows and the tenants")
        p = subprocess.Popen([FAVO, "stat", "--instance", S.inst, "--watch", "0.2"],
                             stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        p.send_signal(signal.SIGINT)
        try:
            wout = p.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            p.kill()
            wout = p.communicate()[0]
        check("\033" not in wout and wout.count("\n----\n") >= 2 and "per second" in wout,
              f"--watch into a pipe: no escape codes, {wout.count(chr(10) + '----')} separators, "
              "rates")

        # /metrics
        st, body = S.get("/metrics")
        text = body.decode()
        check(st == 200, "/metrics answers 200")
        for t, n in want.items():
            check(f'favo_tenant_requests_total{{tenant="{t}"}} {n}' in text,
                  f"/metrics counts tenant {t}")
        check('favo_ring_depth{ring="req"}' in text and 'favo_ring_capacity{ring="plan"}' in text,
              "/metrics has the ring gauges")
        promtool = shutil.which("promtool")
        if promtool:
            r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                               text=True)
            check(r.returncode == 0 and not (r.stdout + r.stderr).strip(),
                  f"promtool check metrics: clean ({(r.stdout + r.stderr)[:300]})")

        # kill -9 egress: restarts and restart time
        if sanitizer_build():
            print("skip: the restart check (sanitizer build: restarts take seconds)")
        else:
            eg = [s for s in snap["stages"] if s["stage"] == "egress"][0]
            os.kill(eg["pid"], signal.SIGKILL)
            t0 = time.time()
            row = {}
            while time.time() - t0 < 15:
                snap = S.stat() or {}
                row = [s for s in snap.get("stages", []) if s["stage"] == "egress"][0]
                if row["restarts"] == 1 and row["state"] == "running" and row["pid"] != eg["pid"]:
                    break
                time.sleep(0.05)
            check(row.get("restarts") == 1 and row.get("state") == "running",
                  f"egress restarted once and is running ({row})")
            check(0 < row.get("last_restart_s", 0) < 10 and
                  row.get("max_restart_s", 0) >= row.get("last_restart_s", 1),
                  f"egress restart time {row.get('last_restart_s')} s (exit -> up)")
            others = [s["restarts"] for s in snap.get("stages", []) if s["stage"] != "egress"]
            check(others == [0, 0, 0], f"the other stages did not restart ({others})")
            text = S.get("/metrics")[1].decode()
            m = re.search(r"^favo_stage_restart_seconds_count (\d+)", text, re.M)
            check(m and int(m.group(1)) == 1, "/metrics: one favo_stage_restart_seconds observation")
            check('favo_stage_restarts_total{stage="egress",index="0"} 1' in text,
                  "/metrics: favo_stage_restarts_total{stage=egress} 1")
            st, _ = S.post("/v1/completions", {"model": MODEL_ID, "prompt": "Hi", "max_tokens": 2},
                           headers={"Authorization": "Bearer " + keys["alpha"]})
            check(st == 200, "a request after the restart is answered")
    finally:
        rc = S.stop()
        check(rc == 0, f"favo serve drains and exits 0 ({rc})")
        shutil.rmtree(d, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
