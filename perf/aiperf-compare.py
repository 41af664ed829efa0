#!/usr/bin/env python3
"""favo bench checked against aiperf (PyPI, NVIDIA's LLM benchmark) on the
same favo serve and the same load (issue #10: TTFT and end-to-end p50 within
5 %, p99 within 10 %).

    .venv/bin/python3 perf/aiperf-compare.py [--url URL | --model FILE]
        [--rate R | --concurrency C] [--requests N] [--input-tokens I]
        [--output-tokens O] [--mode sequential|concurrent] [--arrivals
        constant|poisson] [--aiperf PATH] [--tokenizer DIR] [--threads T]
        [--out DIR] [--json]

What it does:
  1. finds aiperf: --aiperf, $FAVO_AIPERF, $FAVO_BUILD/aiperf-venv/bin/aiperf,
     build/aiperf-venv/bin/aiperf, then PATH. None: exit 77 (skip) saying so.
  2. gives aiperf a tokenizer without any network: the model's GGUF
     tokenizer (read with the `gguf` package of the interpreter running this
     script) is converted to a Hugging Face tokenizer directory by
     transformers' own GGUF converter inside aiperf's venv, and kept beside
     that venv (favo-tokenizers/MODEL) for the next run (--tokenizer DIR
     skips this). aiperf is passed the directory's absolute path and run
     WITHOUT HF_HUB_OFFLINE: in offline mode aiperf 0.13 looks a local path
     up in the hub cache and fails; with a path it never asks the hub.
  3. starts favo serve (unless --url), warms it up with two requests, then
     runs `favo bench` and `aiperf profile` with the same endpoint
     (/v1/completions, streaming, ignore_eos), fixed input/output lengths,
     the same arrivals (constant or Poisson at --rate, or closed loop at
     --concurrency) and request count: one after the other (sequential:
     each sees the server alone, but aiperf's own CPU use - about a dozen
     Python processes - shares this machine's cores with the server) or both
     at once (concurrent: both sample the same server state; the server gets
     twice the rate). Concurrent open loop defaults to Poisson arrivals:
     two constant-rate schedules lock in phase, and whichever tool's requests
     come just after the other's always wait behind them (measured: TTFT p50
     461 vs 233 ms at 0.25/s each); Poisson arrivals see the server's time
     average (PASTA), the same for both tools.
  4. prints a table and (--json) one JSON object: TTFT and E2E p50/p99 of
     each tool as each reports it (favo bench: nearest rank; aiperf: numpy's
     linear interpolation), the difference in %, whether it is within the
     issue's bounds, and the same percentiles with the definitions aligned
     (from both tools' per-request records) to show where a difference
     comes from.

Definitions (read from aiperf 0.13's source, aiperf/metrics/types and
aiperf/transports/aiohttp_client.py):
  aiperf TTFT   first SSE message with content - request start, where the
                start is taken when the worker process begins the HTTP
                request (after the timing manager's credit reached it over
                ZeroMQ): the actual send, not the scheduled time.
  aiperf E2E    ("request_latency") last SSE message with content - request
                start; [DONE] and the end of the body do not count.
  favo bench    TTFT: first data event with text - INTENDED send time;
                E2E: end of the body - intended send time (dp_bench.h), so a
                client or server stall before the send counts.
Aligned rows: favo bench from its actual connect (start_ms) to first/last
token; aiperf from its credit (credit_issued_ns, its scheduled time).

Numbers only: no prompt or generated text is printed or kept here (aiperf's
own artifact directory holds its inputs.json; it is under --out).
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.dirname(HERE)
BOUNDS = {"p50": 5.0, "p99": 10.0}  # issue #10: % difference allowed


T0 = time.time()


def log(*a):
    print(f"aiperf-compare: [{time.time() - T0:6.1f}s]", *a, file=sys.stderr, flush=True)


def nearest_rank(v, p):
    """favo bench's percentile: x[ceil(p/100 n) - 1] of the sorted samples."""
    v = sorted(x for x in v if x is not None and math.isfinite(x))
    if not v:
        return None
    k = max(1, min(len(v), math.ceil(p / 100.0 * len(v))))
    return v[k - 1]


def find_aiperf(arg):
    cands = [arg, os.environ.get("FAVO_AIPERF")]
    for b in (os.environ.get("FAVO_BUILD"), os.path.join(SRC, "build")):
        if b:
            cands.append(os.path.join(b, "aiperf-venv", "bin", "aiperf"))
    cands.append(shutil.which("aiperf"))
    for c in cands:
        if c and os.access(c, os.X_OK):
            return os.path.abspath(c)
    return None


def find_favo():
    for c in (os.environ.get("FAVO_BIN"),
              os.path.join(os.environ.get("FAVO_BUILD", ""), "favo") if os.environ.get("FAVO_BUILD") else None,
              os.path.join(SRC, "build", "favo")):
        if c and os.access(c, os.X_OK):
            return c
    return None


# ---------- tokenizer: GGUF -> Hugging Face directory, offline ----------

_CONVERT = r"""
import json, sys
from transformers import PreTrainedTokenizerFast
from transformers.integrations.gguf.gguf_tokenizer_mapping import convert_gguf_tokenizer
d = json.load(open(sys.argv[1]))
backend, _ = convert_gguf_tokenizer(d["arch"], d["tokenizer"])
t = PreTrainedTokenizerFast(tokenizer_object=backend, **d["special"])
t.save_pretrained(sys.argv[2])
print(len(t))
"""

# GGUF key -> transformers' tokenizer_dict name (transformers' own mapping,
# GGUF_TOKENIZER_MAPPING["tokenizer"]).
_TOK_KEYS = {
    "ggml.model": "tokenizer_type", "ggml.pre": "pre_tokenizer_type", "ggml.tokens": "tokens",
    "ggml.scores": "scores", "ggml.token_type": "token_type", "ggml.merges": "merges",
    "ggml.bos_token_id": "bos_token_id", "ggml.eos_token_id": "eos_token_id",
    "ggml.unknown_token_id": "unk_token_id", "ggml.padding_token_id": "pad_token_id",
    "ggml.add_space_prefix": "add_prefix_space",
}
_SPECIAL = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
            "unk_token": "unknown_token_id", "pad_token": "padding_token_id"}


def export_tokenizer(model, aiperf, out):
    done = os.path.join(out, "tokenizer.json")
    if os.path.exists(done) and os.path.getmtime(done) >= os.path.getmtime(model):
        return out
    try:
        from gguf import GGUFReader
    except ImportError:
        sys.exit("aiperf-compare: the gguf package is missing: run with .venv/bin/python3 or give --tokenizer DIR")
    r = GGUFReader(model)
    md = {}
    for k, f in r.fields.items():
        if k.startswith("tokenizer.ggml.") or k == "general.architecture":
            v = f.contents()
            md[k] = v.tolist() if hasattr(v, "tolist") else v
    tok = {name: md["tokenizer." + key] for key, name in _TOK_KEYS.items() if "tokenizer." + key in md}
    special = {n: tok["tokens"][md["tokenizer.ggml." + k]] for n, k in _SPECIAL.items()
               if "tokenizer.ggml." + k in md}
    os.makedirs(out, exist_ok=True)
    meta = os.path.join(out, "gguf-tokenizer.json")
    with open(meta, "w") as f:
        json.dump({"arch": md["general.architecture"], "tokenizer": tok, "special": special}, f)
    py = os.path.join(os.path.dirname(aiperf), "python")
    p = subprocess.run([py, "-c", _CONVERT, meta, out], capture_output=True, text=True, timeout=300)
    os.unlink(meta)
    if p.returncode:
        sys.exit(f"aiperf-compare: tokenizer conversion failed: {p.stderr.strip()[-600:]}")
    return out


# ---------- favo serve ----------

class Serve:
    def __init__(self, favo, model, threads, log_path):
        self.inst = f"aipc{os.getpid()}"
        self.log = open(log_path, "w")
        self.p = subprocess.Popen([favo, "serve", "--model", model, "--port", "0", "--instance",
                                   self.inst, "--threads", str(threads), "--poll", "block"],
                                  stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.time()
        self.url = None
        while time.time() - t0 < 120 and self.p.poll() is None:
            m = re.search(r"on (http://127\.0\.0\.1:\d+) .*ready in", open(log_path).read())
            if m:
                self.url = m.group(1)
                break
            time.sleep(0.05)
        if not self.url:
            self.stop()
            sys.exit(f"aiperf-compare: favo serve did not start (log {log_path})")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait()
        try:
            os.unlink(f"/dev/shm/favo.{self.inst}")
        except OSError:
            pass
        self.log.close()


def model_id(url):
    with urllib.request.urlopen(url + "/v1/models", timeout=10) as r:
        return json.load(r)["data"][0]["id"]


# ---------- the two tools ----------

def run_favo_bench(a, favo, url, out):
    cmd = [favo, "bench", "-u", url, "-n", str(a.requests), "--input-tokens", str(a.input_tokens),
           "--output-tokens", str(a.output_tokens), "--timeout", str(a.timeout), "-q",
           "--json", os.path.join(out, "favo-bench.json"),
           "--records", os.path.join(out, "favo-bench-records.jsonl")]
    cmd += (["--rate", str(a.rate), "--arrivals", a.arrivals] if a.rate else
            ["--concurrency", str(a.concurrency)])
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout + 600)
    if p.returncode:
        raise RuntimeError(f"favo bench failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    return cmd


def run_aiperf(a, aiperf, tok, model, url, out):
    art = os.path.join(out, "aiperf")
    cmd = [aiperf, "profile", "--model", model, "--tokenizer", tok, "--url", url,
           "--endpoint-type", "completions", "--streaming",
           "--isl", str(a.input_tokens), "--isl-stddev", "0",
           "--osl", str(a.output_tokens), "--osl-stddev", "0",
           "--extra-inputs", "ignore_eos:true", "--use-legacy-max-tokens",
           "--request-count", str(a.requests), "--random-seed", "1",
           "--connection-reuse-strategy", "never",  # favo bench: a connection per request
           "--request-timeout-seconds", str(a.timeout),
           "--no-server-metrics", "--no-gpu-telemetry", "--ui", "none", "--artifact-dir", art]
    cmd += (["--request-rate", str(a.rate), "--arrival-pattern", a.arrivals] if a.rate else
            ["--concurrency", str(a.concurrency)])
    if a.aiperf_workers:
        cmd += ["--workers-max", str(a.aiperf_workers), "--record-processors", str(a.aiperf_workers)]
    env = dict(os.environ)
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # see the top of this file
        env.pop(k, None)
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["HF_HOME"] = os.path.join(out, "hf-home")  # nothing from a user cache
    with open(os.path.join(out, "aiperf.log"), "w") as lf:
        p = subprocess.run(cmd, stdout=lf, stderr=subprocess.STDOUT, env=env, cwd=out,
                           timeout=a.timeout + 900)
    if p.returncode:
        raise RuntimeError(f"aiperf failed ({p.returncode}); see {out}/aiperf.log")
    return cmd


# ---------- figures ----------

def figures(out):
    fb = json.load(open(os.path.join(out, "favo-bench.json")))["run"]
    ap = json.load(open(os.path.join(out, "aiperf", "profile_export_aiperf.json")))
    recs = [json.loads(l) for l in open(os.path.join(out, "favo-bench-records.jsonl"))]
    ok = [r for r in recs if r["outcome"] == "ok"]
    arec = []
    for l in open(os.path.join(out, "aiperf", "profile_export.jsonl")):
        j = json.loads(l)
        if j.get("error") or "time_to_first_token" not in j.get("metrics", {}):
            continue
        md, m = j["metadata"], j["metrics"]
        lag = (md["request_start_ns"] - md["credit_issued_ns"]) / 1e6
        arec.append({"ttft": m["time_to_first_token"]["value"], "e2e": m["request_latency"]["value"],
                     "lag": lag, "osl": m.get("output_sequence_length", {}).get("value")})
    f = {
        "favo_bench": {
            "ok": fb["ok"], "errors": fb["errors"],
            "ttft_p50": fb["ttft_ms"]["p50"], "ttft_p99": fb["ttft_ms"]["p99"],
            "e2e_p50": fb["e2e_ms"]["p50"], "e2e_p99": fb["e2e_ms"]["p99"],
            "output_tokens_per_request": fb["output_tokens"] / fb["ok"] if fb["ok"] else None,
        },
        "aiperf": {
            "ok": len(arec), "errors": int(ap.get("error_request_count", {}).get("avg", 0) or 0),
            "ttft_p50": ap["time_to_first_token"]["p50"], "ttft_p99": ap["time_to_first_token"]["p99"],
            "e2e_p50": ap["request_latency"]["p50"], "e2e_p99": ap["request_latency"]["p99"],
            "output_tokens_per_request": ap.get("output_sequence_length", {}).get("avg"),
            "send_lag_p50": nearest_rank([r["lag"] for r in arec], 50),
            "send_lag_p99": nearest_rank([r["lag"] for r in arec], 99),
        },
        # one definition for both, nearest rank for both
        "aligned": {
            "favo_bench_from_send": {
                "ttft_p50": nearest_rank([r["first_ms"] - r["start_ms"] for r in ok], 50),
                "ttft_p99": nearest_rank([r["first_ms"] - r["start_ms"] for r in ok], 99),
                "e2e_p50": nearest_rank([r["last_ms"] - r["start_ms"] for r in ok], 50),
                "e2e_p99": nearest_rank([r["last_ms"] - r["start_ms"] for r in ok], 99),
                "send_lag_p50": nearest_rank([r["start_ms"] - r["intended_ms"] for r in ok], 50),
                "send_lag_p99": nearest_rank([r["start_ms"] - r["intended_ms"] for r in ok], 99),
            },
            "aiperf_nearest_rank": {
                "ttft_p50": nearest_rank([r["ttft"] for r in arec], 50),
                "ttft_p99": nearest_rank([r["ttft"] for r in arec], 99),
                "e2e_p50": nearest_rank([r["e2e"] for r in arec], 50),
                "e2e_p99": nearest_rank([r["e2e"] for r in arec], 99),
            },
            "aiperf_from_schedule": {
                "ttft_p50": nearest_rank([r["ttft"] + r["lag"] for r in arec], 50),
                "ttft_p99": nearest_rank([r["ttft"] + r["lag"] for r in arec], 99),
                "e2e_p50": nearest_rank([r["e2e"] + r["lag"] for r in arec], 50),
                "e2e_p99": nearest_rank([r["e2e"] + r["lag"] for r in arec], 99),
            },
        },
    }
    cmp = {}
    for m in ("ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99"):
        x, y = f["favo_bench"][m], f["aiperf"][m]
        d = 100.0 * (x - y) / y if x is not None and y else None
        bound = BOUNDS[m.split("_")[1]]
        cmp[m] = {"favo_bench": x, "aiperf": y, "diff_pct": d, "bound_pct": bound,
                  "within": d is not None and abs(d) <= bound}
    f["compare"] = cmp
    f["agree"] = all(c["within"] for c in cmp.values())
    return f


def add_server(f, out, n, mode):
    sv = server_side(out, n, mode)
    f["server_log"] = sv
    if sv:
        for tool in ("favo_bench", "aiperf"):
            sv[tool + "_minus_server"] = {m: (f[tool][m] - sv[tool][m]) if f[tool][m] is not None else None
                                          for m in ("ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99")}


def server_side(out, n, mode):
    """favo serve's own access log (metadata: ttft_ms, total_ms per request)
    as a third observer. Sequential runs only, where its lines split by
    order: 2 warm-up requests, then favo bench's n, then aiperf's n. Each
    tool's percentile minus the server's for the same requests is what the
    client adds (connect, loopback, its own scheduling); that difference
    does not move with the machine's load the way the raw figures do."""
    path = os.path.join(out, "favo-serve.log")
    if mode != "sequential" or not os.path.exists(path):
        return None
    recs = []
    for l in open(path):
        if l.startswith('{"time"'):
            try:
                recs.append(json.loads(l))
            except ValueError:
                pass
    if len(recs) != 2 + 2 * n:
        return None
    res = {}
    for tool, part in (("favo_bench", recs[2:2 + n]), ("aiperf", recs[2 + n:])):
        res[tool] = {"ttft_p50": nearest_rank([r["ttft_ms"] for r in part], 50),
                     "ttft_p99": nearest_rank([r["ttft_ms"] for r in part], 99),
                     "e2e_p50": nearest_rank([r["total_ms"] for r in part], 50),
                     "e2e_p99": nearest_rank([r["total_ms"] for r in part], 99)}
    return res


def fmt(v, p=1):
    return "-" if v is None else f"{v:.{p}f}"


def table(f, a, load):
    print(f"favo bench vs aiperf: {a.mode}, "
          + (f"{a.arrivals} {a.rate}/s" if a.rate else f"concurrency {a.concurrency}")
          + f", {a.requests} requests {a.input_tokens}->{a.output_tokens} tokens, streaming; "
          f"load average {load[0]:.2f} before, {load[1]:.2f} after")
    print(f"{'ms':10s} {'favo bench':>11s} {'aiperf':>11s} {'diff %':>8s} {'bound':>6s}  verdict")
    for m, c in f["compare"].items():
        print(f"{m:10s} {fmt(c['favo_bench']):>11s} {fmt(c['aiperf']):>11s} {fmt(c['diff_pct']):>8s} "
              f"{c['bound_pct']:>5.0f}%  {'agrees' if c['within'] else 'DIFFERS'}")
    al = f["aligned"]
    print("aligned definitions (nearest rank; from the actual send, to the last token):")
    print(f"{'ms':10s} {'favo bench':>11s} {'aiperf':>11s} {'aiperf+lag':>11s}")
    for m in ("ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99"):
        print(f"{m:10s} {fmt(al['favo_bench_from_send'][m]):>11s} {fmt(al['aiperf_nearest_rank'][m]):>11s} "
              f"{fmt(al['aiperf_from_schedule'][m]):>11s}")
    fb, ap = f["favo_bench"], f["aiperf"]
    print(f"send lag (scheduled -> request start) p50/p99 ms: favo bench "
          f"{fmt(al['favo_bench_from_send']['send_lag_p50'], 2)}/{fmt(al['favo_bench_from_send']['send_lag_p99'], 2)}, "
          f"aiperf {fmt(ap['send_lag_p50'], 2)}/{fmt(ap['send_lag_p99'], 2)}")
    sv = f.get("server_log")
    if sv:
        print("favo serve's access log for each tool's requests, and what each tool adds to it (ms):")
        print(f"{'ms':10s} {'server|fb':>11s} {'server|ap':>11s} {'fb-server':>11s} {'ap-server':>11s}")
        for m in ("ttft_p50", "ttft_p99", "e2e_p50", "e2e_p99"):
            print(f"{m:10s} {fmt(sv['favo_bench'][m]):>11s} {fmt(sv['aiperf'][m]):>11s} "
                  f"{fmt(sv['favo_bench_minus_server'][m]):>11s} {fmt(sv['aiperf_minus_server'][m]):>11s}")
    print(f"ok/errors: favo bench {fb['ok']}/{fb['errors']}, aiperf {ap['ok']}/{ap['errors']}; "
          f"output tokens per request: favo bench {fmt(fb['output_tokens_per_request'])} (events), "
          f"aiperf {fmt(ap['output_tokens_per_request'])} (re-tokenized text)")
    print("verdict:", "within the issue's bounds (p50 5 %, p99 10 %)" if f["agree"]
          else "outside the issue's bounds: see the aligned rows for where it comes from")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="an already running OpenAI-compatible server (else favo serve is started)")
    ap.add_argument("--model", default=os.path.join(os.environ.get("FAVO_MODELS", os.path.join(SRC, "models")),
                                                    "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--rate", type=float, default=None, help="open-loop arrivals per second")
    ap.add_argument("--concurrency", type=int, default=None, help="closed loop instead of --rate")
    ap.add_argument("--arrivals", choices=("constant", "poisson"), default=None,
                    help="default: constant (sequential), poisson (concurrent)")
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--input-tokens", type=int, default=64)
    ap.add_argument("--output-tokens", type=int, default=32)
    ap.add_argument("--mode", choices=("sequential", "concurrent"), default="sequential")
    ap.add_argument("--threads", type=int, default=2, help="favo serve --threads")
    ap.add_argument("--timeout", type=float, default=120, help="per request, both tools")
    ap.add_argument("--aiperf", help="the aiperf executable (default: see the top of this file)")
    ap.add_argument("--tokenizer", help="a Hugging Face tokenizer directory for aiperf")
    ap.add_argument("--aiperf-workers", type=int, default=0,
                    help="aiperf --workers-max and --record-processors (default: aiperf's choice)")
    ap.add_argument("--out", help="directory for both tools' outputs (default: a new temporary one)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = ap.parse_args()
    if a.rate is None and a.concurrency is None:
        a.rate = 1.0
    if a.arrivals is None:
        a.arrivals = "poisson" if a.mode == "concurrent" else "constant"
    if (a.rate is not None) == (a.concurrency is not None):
        ap.error("give one of --rate, --concurrency")
    if (a.rate is not None and a.rate <= 0) or (a.concurrency is not None and a.concurrency < 1) \
            or a.requests < 1 or a.input_tokens < 1 or a.output_tokens < 1:
        ap.error("--rate, --concurrency, --requests and the token counts must be positive")

    if not a.url and not os.path.exists(a.model):
        sys.exit(f"aiperf-compare: model {a.model} not found (--model FILE)")
    aiperf = find_aiperf(a.aiperf)
    if not aiperf:
        print("SKIP: aiperf is not installed (pip install aiperf into build/aiperf-venv, "
              "or give --aiperf / FAVO_AIPERF)")
        return 77
    favo = find_favo()
    if not favo:
        sys.exit("aiperf-compare: no favo binary (set FAVO_BIN or FAVO_BUILD)")
    out = os.path.abspath(a.out or tempfile.mkdtemp(prefix="aiperf-compare-"))
    os.makedirs(out, exist_ok=True)
    if a.tokenizer:
        tok = os.path.abspath(a.tokenizer)
    else:
        cache = os.path.join(os.path.dirname(os.path.dirname(aiperf)), "favo-tokenizers")
        if not os.access(os.path.dirname(cache), os.W_OK):
            cache = out
        tok = export_tokenizer(a.model, aiperf, os.path.join(cache, os.path.basename(a.model)))
    log(f"tokenizer {tok}")

    srv = None
    if not a.url:
        srv = Serve(favo, a.model, a.threads, os.path.join(out, "favo-serve.log"))
        a.url = srv.url
        log(f"favo serve on {a.url}")
    try:
        mid = model_id(a.url)
        subprocess.run([favo, "bench", "-u", a.url, "-c", "1", "-n", "2", "--input-tokens", "16",
                        "--output-tokens", "4", "-q"], capture_output=True, timeout=120)  # warm-up
        load0 = os.getloadavg()[0]
        log(f"warmed up; {a.mode} runs, load average {load0:.2f}")
        cmds = {}
        if a.mode == "sequential":
            cmds["favo_bench"] = run_favo_bench(a, favo, a.url, out)
            cmds["aiperf"] = run_aiperf(a, aiperf, tok, mid, a.url, out)
        else:
            errs = []

            def bg():
                try:
                    cmds["aiperf"] = run_aiperf(a, aiperf, tok, mid, a.url, out)
                except Exception as e:  # reported below
                    errs.append(e)
            t = threading.Thread(target=bg)
            t.start()
            # aiperf spends seconds starting its services: start favo bench
            # when aiperf says its profiling phase began, so the runs overlap.
            t0 = time.time()
            alog = os.path.join(out, "aiperf.log")
            while time.time() - t0 < 120 and t.is_alive():
                if os.path.exists(alog) and "Phase profiling (profiling) started" in open(alog).read():
                    break
                time.sleep(0.05)
            cmds["favo_bench"] = run_favo_bench(a, favo, a.url, out)
            t.join()
            if errs:
                raise errs[0]
        load1 = os.getloadavg()[0]
        log("runs done")
    finally:
        if srv:
            srv.stop()
    f = figures(out)
    if srv:
        add_server(f, out, a.requests, a.mode)
    f.update({"mode": a.mode, "rate": a.rate, "arrivals": a.arrivals if a.rate else None,
              "concurrency": a.concurrency, "requests": a.requests, "input_tokens": a.input_tokens,
              "output_tokens": a.output_tokens, "url": a.url, "model": os.path.basename(a.model),
              "load1_before": load0, "load1_after": load1, "out_dir": out,
              "commands": {k: " ".join(v) for k, v in cmds.items()}})
    if a.json:
        print(json.dumps(f))
    else:
        table(f, a, (load0, load1))
        print(f"outputs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
