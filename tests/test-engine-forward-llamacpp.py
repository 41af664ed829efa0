#!/usr/bin/env python3
"""
test-engine-forward-llamacpp.py - favo's greedy continuations against
llama.cpp's on the same model files (llama.cpp through llama-cpp-python,
a test-only dependency; the test skips without it or without the models).

Both run from the same prompt token ids (llama.cpp's tokenizer, so only
the forward passes are compared): favo `run --tokens ... --print-ids
--ignore-eos` and llama.cpp's eval with argmax, N tokens each. The
issue's bar is 32 identical tokens. Both engines quantize activations
(q8_0 / q8_1 / q8_k), and on these 4-bit models that moves the logits by
3-6% relative L2 from an f32 forward pass - for llama.cpp itself as much as
for favo (measured against tests/test-engine-forward-ref.py's numpy
oracle). So where llama.cpp's own top-2 margin is below 0.5 (the same
slack the oracle test allows) the continuations may part ways
legitimately: the test then reports it and checks only the tokens before.
"""
import os
import subprocess
import sys

try:
    import numpy as np
    import llama_cpp
except ImportError as e:
    print(f"skip: {e}")
    sys.exit(77)

MODELS = os.environ.get("FAVO_MODELS", os.path.join(os.path.dirname(__file__), "..", "models"))
FAVO = os.environ.get("FAVO_BIN")
N = int(os.environ.get("FAVO_LLAMACPP_N", "32"))
TIE = 0.5
PROMPTS = [b"The capital of France is", b"Once upon a time, there was a little",
           b"def fibonacci(n):"]
FILES = ["SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf"]


def llama_greedy(llm, ids, n):
    llm.reset()
    llm.eval(ids)
    out, margins = [], []
    for _ in range(n):
        lg = np.array(llm.eval_logits[-1], dtype=np.float64)
        top = np.argsort(-lg)[:2]
        out.append(int(top[0]))
        margins.append(float(lg[top[0]] - lg[top[1]]))
        llm.eval([int(top[0])])
    return out, margins


def main():
    if not FAVO or not os.path.exists(FAVO):
        print("skip: FAVO_BIN not set")
        return 77
    ok, ran = True, False
    for f in FILES:
        path = os.path.join(MODELS, f)
        if not os.path.exists(path):
            print(f"skip {f}: not in {MODELS}")
            continue
        llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_threads=2, n_batch=64, logits_all=True,
                              verbose=False)
        for p in PROMPTS:
            ids = llm.tokenize(p, add_bos=True, special=False)
            ref, margins = llama_greedy(llm, ids, N)
            r = subprocess.run([FAVO, "run", "--model", path, "--tokens",
                                " ".join(map(str, ids)), "-n", str(N), "--print-ids",
                                "--ignore-eos"], capture_output=True, text=True, timeout=300)
            if r.returncode:
                print(f"FAIL {f}: favo run exited {r.returncode}: {r.stderr.strip()}")
                ok = False
                continue
            got = [int(t) for t in r.stdout.split()]
            ran = True
            same = next((i for i in range(N) if i >= len(got) or got[i] != ref[i]), N)
            if same == N:
                print(f"{f} {p!r}: {N}/{N} tokens identical to llama.cpp")
                continue
            tie = min(margins[:same + 1])
            if tie < TIE:
                print(f"{f} {p!r}: identical for {same} tokens, then a near-tie in llama.cpp "
                      f"(margin {tie:.3f} < {TIE}) - accepted")
            else:
                print(f"FAIL {f} {p!r}: differs at token {same} (llama.cpp margin "
                      f"{margins[same]:.3f})")
                ok = False
    if not ran:
        return 77
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
