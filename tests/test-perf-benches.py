#!/usr/bin/env python3
"""The pipeline benchmarks run end to end (briefly) and say something sane,
so they cannot rot between recorded runs. No speed is asserted here: speed
goals live in perf/RESULTS.md, measured on a quiet machine.

bench-egress: the real egress stage over real sockets; p50 > 0, p99 >= p50,
no token missed. bench-ingress: favo serve --backend null and nginx under
wrk; both answered, no errors (skips with 77 when wrk or nginx is missing).
bench-fairness: tenant B alone and under tenant A's flood through favo
serve; both phases measured a TTFT and A produced tokens. bench-engine: the
generated tiny model, every contract key, and llama.cpp's columns beside
favo's where llama-cpp-python is installed in the project's venv.
"""
import json
import os
import subprocess
import sys
import tempfile

BUILD = os.environ.get("FAVO_BUILD", "build")
MODEL = os.path.join(os.environ.get("FAVO_MODELS", "models"), "SmolLM2-135M-Instruct.Q4_1.gguf")
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def run(args, timeout=180):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    try:
        return p.returncode, json.loads(p.stdout)
    except ValueError:
        return p.returncode, {"_out": p.stdout[-800:], "_err": p.stderr[-800:]}


if not os.path.exists(MODEL):
    print(f"SKIP: {MODEL} missing")
    sys.exit(77)

rc, j = run([os.path.join(BUILD, "perf", "bench-egress"), "--duration", "1", "--streams", "8",
             "--tokens", "8", "--model", MODEL, "--json"])
check(rc == 0, f"bench-egress runs ({rc} {str(j)[:300]})")
if rc == 0:
    check(j.get("egress_us_p50", 0) > 0 and j.get("egress_us_p99", 0) >= j["egress_us_p50"],
          f"bench-egress percentiles ({j.get('egress_us_p50')}, {j.get('egress_us_p99')})")
    check(j.get("missed", 0) == 0, f"bench-egress missed no token ({j.get('missed')})")

rc, j = run([os.path.join(BUILD, "perf", "bench-ingress"), "--duration", "1", "--rounds", "1",
             "--warmup", "0", "--model", MODEL, "--favo", os.path.join(BUILD, "favo"), "--json"])
if rc == 77:
    print("SKIP: bench-ingress needs wrk and nginx")
else:
    check(rc == 0, f"bench-ingress runs ({rc} {str(j)[:300]})")
    if rc == 0:
        check(j.get("favo_rps", 0) > 0 and j.get("nginx_rps", 0) > 0,
              f"both servers answered ({j.get('favo_rps')}, {j.get('nginx_rps')})")
        check(j.get("errors_all_rounds", 1) == 0, f"no errors ({j.get('errors_all_rounds')})")

rc, j = run([os.path.join(BUILD, "perf", "bench-fairness"), "--duration", "3", "--max-seqs", "2",
             "--flood", "6", "--b-rate", "2", "--input-tokens", "16", "--output-tokens", "4",
             "--model", MODEL, "--json"], timeout=240)
check(rc == 0 and j.get("b_ttft_p99_unloaded_ms", 0) > 0 and j.get("b_ttft_p99_flood_ms", 0) > 0
      and j.get("a_output_tps", 0) > 0, f"bench-fairness runs ({rc} {str(j)[:300]})")

with tempfile.TemporaryDirectory() as tmp:
    env = dict(os.environ, TMPDIR=tmp)
    p = subprocess.run([os.path.join(BUILD, "perf", "bench-engine"), "--only", "tiny",
                        "--decode", "8", "--json"], capture_output=True, text=True, timeout=300,
                       env=env)
    try:
        j = json.loads(p.stdout)
    except ValueError:
        j = {}
    check(p.returncode == 0 and j, f"bench-engine runs ({p.returncode} {p.stderr[-300:]})")
    keys = ["mem_bw_gbs"] + ["tiny_q8_0_" + k for k in
                             ("prefill_tps", "decode_b1_tps", "decode_b8_tps", "decode_b32_tps",
                              "roofline_fraction")]
    check(all(j.get(k, 0) > 0 for k in keys), f"bench-engine keys {[(k, j.get(k)) for k in keys]}")
    py = os.environ.get("FAVO_VENV_PY", ".venv/bin/python3")
    has_llamacpp = subprocess.run([py, "-c", "import llama_cpp"], capture_output=True).returncode == 0
    if has_llamacpp:
        lk = ["tiny_q8_0_llamacpp_prefill_tps", "tiny_q8_0_llamacpp_decode_b1_tps"]
        check(all(j.get(k, 0) > 0 for k in lk),
              f"bench-engine measured llama.cpp beside favo {[(k, j.get(k)) for k in lk]} "
              f"{p.stderr[-300:]}")
    else:
        print("SKIP: llama.cpp columns (llama-cpp-python not installed)")

print(f"{len(failures)} failures")
sys.exit(1 if failures else 0)
