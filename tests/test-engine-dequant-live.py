#!/usr/bin/env python3
"""eng_dequant_row against the installed gguf package, on fresh blocks.

The committed fixtures (tests/fixtures/quant/) pin one random draw; this
test draws new random valid blocks every run (seed printed, FAVO_SEED to
repeat one) with the gguf package actually installed in .venv, and runs
favo's dequantizer through the helper mode of the test-engine-dequant
executable. Bit-exact, NaN meets NaN, as in test-engine-dequant.c.
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
                src, dst = os.path.join(tmp, "in.bin"), os.path.join(tmp, "out.bin")
                with open(src, "wb") as f:
                    f.write(raw)
                r = subprocess.run([exe, "--dequant", qtype.name.lower(), str(n), src, dst],
                                   capture_output=True, text=True)
                if r.returncode:
                    print(f"FAIL {qtype.name}: helper exit {r.returncode}: {r.stderr.strip()}")
                    fails += 1
                    continue
                got = np.fromfile(dst, dtype="<f4")
                both_nan = np.isnan(got) & np.isnan(exp)
                same = (got.view(np.uint32) == exp.view(np.uint32)) | both_nan
                if not same.all():
                    i = int(np.argmin(same))
                    print(f"FAIL {qtype.name}: {int((~same).sum())} of {n} differ, first at {i}: "
                          f"gguf {exp[i]!r} favo {got[i]!r}")
                    fails += 1
            print(f"{qtype.name.lower():5s} 4 x fresh blocks: {'ok' if not fails else 'see above'}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
