#!/usr/bin/env python3
"""eng_dequant_row against the installed gguf package, on fresh blocks.

The committed fixtures (tests/fixtures/quant/) pin one random draw; this
test draws new random valid blocks every run (seed printed, FAVO_SEED to
repeat one) with the gguf package actually installed in .venv, and runs
favo's dequantizer through the helper mode of the test-engine-dequant
executable. Then the same on the first rows of one real tensor per weight
type of each model in FAVO_MODELS. Bit-exact, NaN meets NaN, as in
test-engine-dequant.c.
Skips (77) when the executable or the gguf package is missing.
"""
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf import GGML_QUANT_SIZES
    from gguf.quants import dequantize
except ImportError as e:
    print(f"skip: {e}")
    sys.exit(77)

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "quant"))
import make_fixtures  # noqa: E402  (block generator shared with the fixtures)


def run_helper(exe, tmp, qtype, n, raw, exp, what):
    """favo's dequantization of raw via the helper, compared bit for bit."""
    src, dst = os.path.join(tmp, "in.bin"), os.path.join(tmp, "out.bin")
    with open(src, "wb") as f:
        f.write(raw)
    r = subprocess.run([exe, "--dequant", qtype.name.lower(), str(n), src, dst],
                       capture_output=True, text=True)
    if r.returncode:
        print(f"FAIL {what}: helper exit {r.returncode}: {r.stderr.strip()}")
        return 1
    got = np.fromfile(dst, dtype="<f4")
    exp = np.asarray(exp, dtype=np.float32).reshape(-1)
    same = (got.view(np.uint32) == exp.view(np.uint32)) | (np.isnan(got) & np.isnan(exp))
    if not same.all():
        i = int(np.argmin(same))
        print(f"FAIL {what}: {int((~same).sum())} of {n} differ, first at {i}: "
              f"gguf {exp[i]!r} favo {got[i]!r}")
        return 1
    return 0


def model_tensors(exe, tmp):
    """The first rows of one tensor per weight type of each model in
    FAVO_MODELS (real scales and codes, not random ones). gguf's Python
    reader takes ~5 s on SmolLM2 and ~18 s on Gemma 3 (its 262k-token
    vocabulary), so Gemma only with FAVO_LONG=1."""
    from gguf import GGUFReader
    fails = 0
    mdir = os.environ.get("FAVO_MODELS", "models")
    names = sorted(f for f in os.listdir(mdir) if f.endswith(".gguf")) if os.path.isdir(mdir) else []
    for name in names:
        if "gemma" in name.lower() and not os.environ.get("FAVO_LONG"):
            print(f"{name}: skipped (FAVO_LONG=1 to include)")
            continue
        seen = set()
        for t in GGUFReader(os.path.join(mdir, name)).tensors:
            qtype = t.tensor_type
            if qtype in seen or qtype not in GGML_QUANT_SIZES or len(t.data.shape) < 2:
                continue
            seen.add(qtype)
            rows = np.ascontiguousarray(t.data[:4])
            n = int(t.shape[0]) * rows.shape[0]
            exp = dequantize(rows, qtype)
            fails += run_helper(exe, tmp, qtype, n, rows.tobytes(), exp,
                                f"{name} {t.name} ({qtype.name})")
            print(f"{name}: {t.name} {qtype.name.lower()} 4 rows x {int(t.shape[0])}: "
                  f"{'ok' if not fails else 'see above'}")
    return fails


def main():
    build = os.environ.get("FAVO_BUILD", "build")
    exe = os.path.join(build, "tests", "test-engine-dequant")
    if not os.access(exe, os.X_OK):
        print(f"skip: {exe} not built")
        return 77
    seed = int(os.environ.get("FAVO_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"seed {seed}")
    rng = np.random.default_rng(seed)
    fails = 0
    with tempfile.TemporaryDirectory() as tmp:
        for qtype in [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
                      T.Q4_K, T.Q5_K, T.Q6_K]:
            for rep in range(4):
                n, raw, exp = make_fixtures.make(qtype, rng)
                fails += run_helper(exe, tmp, qtype, n, raw, exp, qtype.name)
            print(f"{qtype.name.lower():5s} 4 x fresh blocks: {'ok' if not fails else 'see above'}")
        fails += model_tensors(exe, tmp)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
