#!/usr/bin/env python3
"""llama.cpp baseline for bench-engine: prefill 512 tokens in one eval, then
128 single-token evals, on the same model files and thread count.
Run with the project venv: .venv/bin/python3 perf/llamacpp-baseline.py"""
import time, sys
from llama_cpp import Llama
for path in ['models/SmolLM2-135M-Instruct.Q4_1.gguf', 'models/gemma-3-270m-q4_k_m.gguf']:
    m = Llama(path, n_ctx=1024, n_batch=512, n_threads=2, verbose=False)
    toks = [ (i*7919) % 20000 + 100 for i in range(512)]
    m.reset(); t=time.perf_counter(); m.eval(toks); pf = 512/(time.perf_counter()-t)
    m.reset(); m.eval(toks[:8]); n=128; t=time.perf_counter()
    for i in range(n): m.eval([toks[8+i]])
    dc = n/(time.perf_counter()-t)
    print(f"{path.split('/')[-1]:40s} llama.cpp prefill {pf:8.1f} tok/s  decode b1 {dc:7.1f} tok/s")
