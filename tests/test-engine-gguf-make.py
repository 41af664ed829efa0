#!/usr/bin/env python3
"""test-engine-gguf-make.py - `favo model make` output checked by an
independent reader (the gguf Python package): tensor names, shapes and
types as llama.cpp's converters write them, the metadata keys, weight
statistics (std 0.02, norms 1.0), byte-for-byte determinism; and
`favo model info` agreeing with gguf on every key of a real vocab file
(every real model and vocab file with FAVO_LONG=1). Exit 0 pass, 1 fail, 77 skip."""
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import gguf
    from gguf import quants
except ImportError as e:  # pragma: no cover
    print(f"skip: {e}")
    sys.exit(77)

FAVO = os.environ.get("FAVO_BIN")
if not FAVO or not os.access(FAVO, os.X_OK):
    print("skip: FAVO_BIN not set")
    sys.exit(77)

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL:", msg)


def run(*args):
    p = subprocess.run([FAVO, *args], capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr


PRESETS = {
    # name: (arch, dim, layers, heads, kv heads, head_dim, ffn, vocab, tied, bias, qk_norm)
    "tiny": ("llama", 256, 4, 8, 4, 32, 768, 512, False, False, False),
    "qwen2-tiny": ("qwen2", 256, 4, 8, 2, 32, 768, 512, True, True, False),
    "gemma3-tiny": ("gemma3", 256, 6, 4, 1, 64, 768, 512, True, False, True),
}
TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
         "q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0,
         "q4_k": gguf.GGMLQuantizationType.Q4_K}


def expected_tensors(p):
    arch, dim, nl, nh, nkv, hd, ffn, vocab, tied, bias, qkn = p
    q, kv = nh * hd, nkv * hd
    t = {"token_embd.weight": (dim, vocab, True), "output_norm.weight": (dim, None, False)}
    if not tied:
        t["output.weight"] = (dim, vocab, True)
    for i in range(nl):
        b = f"blk.{i}."
        t[b + "attn_norm.weight"] = (dim, None, False)
        t[b + "attn_q.weight"] = (dim, q, True)
        t[b + "attn_k.weight"] = (dim, kv, True)
        t[b + "attn_v.weight"] = (dim, kv, True)
        t[b + "attn_output.weight"] = (q, dim, True)
        t[b + "ffn_norm.weight"] = (dim, None, False)
        t[b + "ffn_gate.weight"] = (dim, ffn, True)
        t[b + "ffn_up.weight"] = (dim, ffn, True)
        t[b + "ffn_down.weight"] = (ffn, dim, True)
        if bias:
            t[b + "attn_q.bias"] = (q, None, False)
            t[b + "attn_k.bias"] = (kv, None, False)
            t[b + "attn_v.bias"] = (kv, None, False)
        if qkn:
            t[b + "attn_q_norm.weight"] = (hd, None, False)
            t[b + "attn_k_norm.weight"] = (hd, None, False)
            t[b + "post_attention_norm.weight"] = (dim, None, False)
            t[b + "post_ffw_norm.weight"] = (dim, None, False)
    return t


def field_value(r, key):
    f = r.fields[key]
    if len(f.types) == 1 and f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode()
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        return len(f.data)
    return f.parts[f.data[0]][0].item()


def check_model(path, name, tname):
    p = PRESETS[name]
    arch, dim, nl, nh, nkv, hd, ffn, vocab, tied, bias, qkn = p
    what = f"{name}/{tname}"
    r = gguf.GGUFReader(path)
    check(field_value(r, "general.architecture") == arch, f"{what}: architecture")
    for k, v in (("block_count", nl), ("embedding_length", dim), ("feed_forward_length", ffn),
                 ("attention.head_count", nh), ("attention.head_count_kv", nkv),
                 ("vocab_size", vocab), ("context_length", None)):
        check(f"{arch}.{k}" in r.fields, f"{what}: {arch}.{k} missing")
        if v is not None and f"{arch}.{k}" in r.fields:
            check(field_value(r, f"{arch}.{k}") == v, f"{what}: {arch}.{k} != {v}")
    for k in ("rope.freq_base", "attention.layer_norm_rms_epsilon"):
        check(f"{arch}.{k}" in r.fields, f"{what}: {arch}.{k} missing")
    if arch == "llama":
        check(field_value(r, "llama.rope.dimension_count") == hd, f"{what}: rope dims")
    if arch == "gemma3":
        check(field_value(r, "gemma3.attention.key_length") == hd, f"{what}: key_length")
        check("gemma3.attention.sliding_window" in r.fields, f"{what}: sliding_window")
    check(field_value(r, "tokenizer.ggml.model") == "gpt2", f"{what}: tokenizer model")
    check(field_value(r, "tokenizer.ggml.tokens") == vocab, f"{what}: token count")
    check(field_value(r, "tokenizer.ggml.merges") > 0, f"{what}: merges")
    tokens = r.fields["tokenizer.ggml.tokens"]
    toks = [bytes(tokens.parts[i]).decode() for i in tokens.data]
    check(len(set(toks)) == len(toks), f"{what}: duplicate tokens")
    check(toks[-1] == "<|end_of_text|>", f"{what}: eos token")
    exp = expected_tensors(p)
    got = {t.name: t for t in r.tensors}
    check(set(got) == set(exp), f"{what}: tensor set differs: {sorted(set(got) ^ set(exp))[:6]}")
    for n, (ne0, ne1, matrix) in exp.items():
        if n not in got:
            continue
        t = got[n]
        shape = [int(x) for x in t.shape]
        want = [ne0] if ne1 is None else [ne0, ne1]
        check(shape == want, f"{what}: {n} shape {shape} != {want}")
        want_type = TYPES[tname] if matrix else gguf.GGMLQuantizationType.F32
        check(t.tensor_type == want_type, f"{what}: {n} type {t.tensor_type.name}")
        if t.tensor_type == gguf.GGMLQuantizationType.F32 or t.tensor_type == gguf.GGMLQuantizationType.F16:
            vals = np.asarray(t.data, dtype=np.float32).ravel()
        else:
            vals = quants.dequantize(t.data, t.tensor_type).ravel()
        check(np.all(np.isfinite(vals)), f"{what}: {n} not finite")
        if n.endswith("norm.weight"):
            check(np.all(vals == 1.0), f"{what}: {n} not all 1.0")
        elif vals.size >= 4096:
            sd = float(vals.std())
            tol = 0.25 if tname.startswith("q4") else 0.05
            check(abs(sd - 0.02) < 0.02 * tol, f"{what}: {n} std {sd:.5f}, want 0.02")
            check(abs(float(vals.mean())) < 0.002, f"{what}: {n} mean {vals.mean():.5f}")


def main():
    with tempfile.TemporaryDirectory() as d:
        # every type on the llama preset, two each on the others
        combos = [("tiny", t) for t in TYPES] + [("qwen2-tiny", "f16"), ("qwen2-tiny", "q4_0"),
                                                ("gemma3-tiny", "q8_0"), ("gemma3-tiny", "q4_k")]
        for name, tname in combos:
            path = os.path.join(d, f"{name}-{tname}.gguf")
            rc, out, err = run("model", "make", "--preset", name, "--type", tname,
                               "--out", path, "--seed", "7")
            check(rc == 0, f"make {name} {tname}: rc {rc} {err}")
            if rc == 0:
                check_model(path, name, tname)
                rc, out, err = run("model", "info", path)
                check(rc == 0 and "tensors:" in out and "kv cache" in out,
                      f"info {name} {tname}: rc {rc}")
                os.unlink(path)
        # determinism and the seed
        a, b, c = (os.path.join(d, x) for x in ("a.gguf", "b.gguf", "c.gguf"))
        for path, seed in ((a, "3"), (b, "3"), (c, "4")):
            rc, _, err = run("model", "make", "--preset", "qwen2-tiny", "--type", "q8_0",
                             "--out", path, "--seed", seed)
            check(rc == 0, f"make seed {seed}: {err}")
        da, db, dc = (open(x, "rb").read() for x in (a, b, c))
        check(da == db, "same arguments gave different bytes")
        check(da != dc, "another seed gave the same bytes")
        check(not os.path.exists(a + ".tmp"), "temporary file left behind")
        # --vocab copies the tokenizer keys
        vocab = os.path.join(os.environ.get("FAVO_SHARED", "../shared"), "vocab",
                             "ggml-vocab-llama-spm.gguf")
        if os.path.exists(vocab):
            path = os.path.join(d, "v.gguf")
            rc, _, err = run("model", "make", "--preset", "tiny", "--type", "q4_0",
                             "--vocab", vocab, "--out", path)
            check(rc == 0, f"make --vocab: {err}")
            if rc == 0:
                r, rv = gguf.GGUFReader(path), gguf.GGUFReader(vocab)
                for k, f in rv.fields.items():
                    if k.startswith("tokenizer."):
                        check(k in r.fields, f"--vocab: {k} not copied")
                        if k in r.fields:
                            check(r.fields[k].types == f.types and
                                  all(bytes(r.fields[k].parts[i]) == bytes(f.parts[j])
                                      for i, j in zip(r.fields[k].data, f.data)),
                                  f"--vocab: {k} differs")
                nv = len(rv.fields["tokenizer.ggml.tokens"].data)
                check(field_value(r, "llama.vocab_size") == nv, "--vocab: vocab_size")
                emb = [t for t in r.tensors if t.name == "token_embd.weight"][0]
                check(int(emb.shape[1]) == nv, "--vocab: token_embd rows")
        # errors
        rc, _, err = run("model", "make", "--preset", "nope", "--out", os.path.join(d, "n"))
        check(rc == 1 and "unknown preset 'nope'" in err, f"bad preset: {rc} {err}")
        rc, _, err = run("model", "make", "--preset", "tiny", "--type", "q9",
                         "--out", os.path.join(d, "n"))
        check(rc == 2 and "q9" in err, f"bad type: {rc} {err}")
        bad = os.path.join(d, "bad.gguf")
        with open(bad, "wb") as f:
            f.write(b"GGUF\x01\x00\x00\x00" + b"\x00" * 16)
        rc, _, err = run("model", "info", bad)
        check(rc == 1 and err.startswith(f"favo model info: {bad}: ") and "v1" in err,
              f"info on v1: {rc} {err}")

    # favo model info lists every key of the real files with gguf's type
    vt = {gguf.GGUFValueType.UINT8: "u8", gguf.GGUFValueType.INT8: "i8",
          gguf.GGUFValueType.UINT16: "u16", gguf.GGUFValueType.INT16: "i16",
          gguf.GGUFValueType.UINT32: "u32", gguf.GGUFValueType.INT32: "i32",
          gguf.GGUFValueType.FLOAT32: "f32", gguf.GGUFValueType.BOOL: "bool",
          gguf.GGUFValueType.STRING: "string", gguf.GGUFValueType.UINT64: "u64",
          gguf.GGUFValueType.INT64: "i64", gguf.GGUFValueType.FLOAT64: "f64"}
    files = []
    for base in (os.environ.get("FAVO_MODELS", "models"),
                 os.path.join(os.environ.get("FAVO_SHARED", "../shared"), "vocab")):
        if os.path.isdir(base):
            files += [os.path.join(base, x) for x in sorted(os.listdir(base)) if x.endswith(".gguf")]
    if not os.environ.get("FAVO_LONG"):
        # gguf.GGUFReader takes seconds per 50k-token vocabulary: by default
        # only the smallest real file; FAVO_LONG=1 checks them all.
        files = [f for f in files if f.endswith("ggml-vocab-llama-spm.gguf")]
    for path in files:
        rc, out, err = run("model", "info", path)
        check(rc == 0, f"info {path}: {err}")
        lines = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines()
                 if ln.startswith("  ") and ln.split()}
        r = gguf.GGUFReader(path)
        for k, f in r.fields.items():
            if k.startswith("GGUF."):
                continue
            if f.types[0] == gguf.GGUFValueType.ARRAY:
                want = f"[{vt[f.types[-1]]};"
            else:
                want = vt[f.types[0]]
            check(k in lines and lines[k][0] == want,
                  f"info {os.path.basename(path)}: key {k} type {lines.get(k, ['?'])[0]} != {want}")
        tcount = sum(1 for ln in out.splitlines() if ln.strip()[:1].isdigit() and len(ln.split()) >= 5)
        check(tcount == len(r.tensors), f"info {path}: {tcount} tensor rows, gguf has {len(r.tensors)}")
    print(f"{'FAIL' if failures else 'ok'}: {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
