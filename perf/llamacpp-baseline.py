#!/usr/bin/env python3
"""llama.cpp's side of bench-engine: on the same model file and thread count,
prefill PREFILL tokens in one eval, then, after a PROMPT-token prompt, DECODE
single-token evals (batch 1), timed the way bench-engine times favo.

    .venv/bin/python3 perf/llamacpp-baseline.py [--model FILE ...] [--threads N]
        [--prefill 512] [--prompt 16] [--decode 128] [--mmap] [--json]

Without --model: the two real models under $FAVO_MODELS (or models/).
Weights are read into memory (use_mmap=False), as favo's engine does, unless
--mmap. --json prints one object per model per line:
{"model": FILE, "prefill_tps": ..., "decode_b1_tps": ..., "threads": N}.
Exit 77 when llama_cpp cannot be imported (bench-engine leaves the columns
out then). llama-cpp-python's eval copies the last logits each call, a cost
favo's step does not have; it is small beside a decode step.
"""
import argparse
import json
import os
import sys
import time

try:
    from llama_cpp import Llama
except ImportError as e:
    print(f"llamacpp-baseline: llama_cpp not importable ({e})", file=sys.stderr)
    sys.exit(77)


def measure(path, threads, prefill, prompt, decode, mmap):
    n_ctx = max(prefill, prompt + decode) + 16
    m = Llama(path, n_ctx=n_ctx, n_batch=prefill, n_ubatch=prefill, n_threads=threads,
              n_threads_batch=threads, use_mmap=mmap, verbose=False)
    nv = m.n_vocab()
    # the same token ids bench-engine feeds favo (prefill_tps, decode_tps)
    toks = [(j * 7919 + 3) % nv for j in range(prefill)]
    m.reset()
    t = time.perf_counter()
    m.eval(toks)
    pf = prefill / (time.perf_counter() - t)
    m.reset()
    m.eval([(j * 17 + 5) % nv for j in range(prompt)])
    nxt = (prompt * 17 + 5) % nv
    t = time.perf_counter()
    for i in range(decode):
        m.eval([nxt])
        nxt = (nxt * 31 + 7 + i) % nv
    dc = decode / (time.perf_counter() - t)
    del m
    return pf, dc


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--mmap", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.threads < 1 or a.prefill < 1 or a.prompt < 1 or a.decode < 1:
        ap.error("--threads, --prefill, --prompt and --decode must be positive")
    models = a.model or [os.path.join(os.environ.get("FAVO_MODELS", "models"), f)
                         for f in ("SmolLM2-135M-Instruct.Q4_1.gguf",
                                   "gemma-3-270m-q4_k_m.gguf")]
    rc = 0
    for path in models:
        if not os.access(path, os.R_OK):
            print(f"llamacpp-baseline: {path}: not readable", file=sys.stderr)
            rc = 1
            continue
        try:
            pf, dc = measure(path, a.threads, a.prefill, a.prompt, a.decode, a.mmap)
        except Exception as e:   # llama.cpp refuses the file: say so, go on
            print(f"llamacpp-baseline: {path}: {e}", file=sys.stderr)
            rc = 1
            continue
        if a.json:
            print(json.dumps({"model": path, "prefill_tps": round(pf, 2),
                              "decode_b1_tps": round(dc, 2), "threads": a.threads}),
                  flush=True)
        else:
            print(f"{os.path.basename(path):40s} llama.cpp prefill {pf:8.1f} tok/s  "
                  f"decode b1 {dc:7.1f} tok/s", flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
