"""test-engine-tok-llamacpp.py - favo's tokenizer against llama-cpp-python's.

For the two real models ($FAVO_MODELS) and every vocab fixture in
$FAVO_SHARED/vocab: a large varied text (several languages, code, digits,
emoji, whitespace runs, special-token look-alikes) is tokenized by
`favo tokenize --no-special --batch` and by llama.cpp (vocab_only,
add_bos=False, special=False); every string must give the same ids.

Skips (77) when llama_cpp is not importable in the venv (it is not part of
./setup.sh: it builds llama.cpp from source) or no vocabulary is present.
"""
import os
import random
import subprocess
import sys
import tempfile

try:
    from llama_cpp import Llama
except Exception as e:  # noqa: BLE001 - any import failure means "not installed"
    print(f"SKIP: llama_cpp not importable ({e.__class__.__name__}); pip install llama-cpp-python")
    sys.exit(77)

SEP = "\n__ggml_vocab_test__\n"
PARTS = [
    "The quick brown fox jumps over the lazy dog. It's 3:45pm; we'll see—maybe they've left? I'd say \"no\".",
    "  Leading spaces\tand\ttabs\n\n\nmultiple newlines\r\nCRLF lines   trailing   ",
    "Numbers: 0 7 42 123 4567 89012 3.14159 2,718,281 1e-9 0x1F 0b1010 ١٢٣٤ ४५६ 五六七",
    "Deutsch: Äpfel, Größe, Straße. Français: déjà vu, naïve, œuvre. Español: ¿Qué tal? ¡Olé!",
    "Русский: Съешь же ещё этих мягких французских булок. Ελληνικά: Γειά σου Κόσμε.",
    "中文：我能吞下玻璃而不伤身体。日本語：私はガラスを食べられます。한국어: 나는 유리를 먹을 수 있어요.",
    "العربية: أنا قادر على أكل الزجاج. עברית: אני יכול לאכול זכוכית. हिन्दी: मैं काँच खा सकता हूँ।",
    "Emoji 😀😃😄 👩‍💻 🏳️‍🌈 👍🏽 🇯🇵 ❤️ ✨ 🤖 and math ∑∫√∞ ≤≥≠ and arrows ←→↑↓",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n-1) + fib(n-2)  # recursion\n",
    "#include <stdio.h>\nint main(int argc, char **argv) {\n\tprintf(\"%s\\n\", argv[0]);\n\treturn 0;\n}\n",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    "URLs: https://example.com/path?q=1&r=two#frag and a.b@c.io; C:\\Windows\\sys32 /usr/bin/env",
    "         many spaces          and\u00a0nbsp\u2009thin\u3000ideographic\u200bzero-width",
    "ALLCAPS CamelCase snake_case kebab-case SCREAMING_SNAKE mixedCASEWords I'M YOU'RE WE'LL",
    "<|im_start|> <s> </s> [INST] <<SYS>> <start_of_turn> <|endoftext|> literal tags",
    "Combining: e\u0301 a\u0308 n\u0303 o\u0302; Vietnamese: Tiếng Việt có dấu. Thai: ภาษาไทย",
    "Repeated: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa !!!!!!!!!!!! ............ ------------ ============",
    "JSON: {\"key\": [1, 2.5, true, null], \"nested\": {\"a\": \"b\"}}\n",
]


def strings():
    rnd = random.Random(7)
    out = list(PARTS)
    for _ in range(200):
        k = rnd.randint(1, 5)
        out.append("".join(rnd.choice(PARTS) + rnd.choice(["", " ", "\n", "\n\n", "  ", "\t"])
                           for _ in range(k)))
    return out


def main():
    favo = os.environ.get("FAVO_BIN", "build/favo")
    models = os.environ.get("FAVO_MODELS", "models")
    shared = os.environ.get("FAVO_SHARED", "../shared")
    files = [os.path.join(models, f) for f in ("SmolLM2-135M-Instruct.Q4_1.gguf", "gemma-3-270m-q4_k_m.gguf")]
    vdir = os.path.join(shared, "vocab")
    if os.path.isdir(vdir):
        files += [os.path.join(vdir, f) for f in sorted(os.listdir(vdir)) if f.endswith(".gguf")]
    files = [f for f in files if os.path.exists(f)]
    if not files:
        print("SKIP: no models or vocab fixtures")
        return 77
    texts = strings()
    with tempfile.NamedTemporaryFile("wb", suffix=".inp", delete=False) as f:
        f.write((SEP.join(texts) + SEP).encode())
        inp = f.name
    failures = 0
    try:
        for path in files:
            got = subprocess.run([favo, "tokenize", "--model", path, "--no-special", "--batch", inp],
                                 capture_output=True, check=True).stdout.decode().splitlines()
            llm = Llama(model_path=path, vocab_only=True, verbose=False)
            bad = 0
            for i, s in enumerate(texts):
                ref = llm.tokenize(s.encode(), add_bos=False, special=False)
                mine = [int(x) for x in got[i].split()] if i < len(got) else None
                if mine != ref:
                    bad += 1
                    if bad <= 3:
                        print(f"FAIL {os.path.basename(path)} string {i}: {s[:60]!r}\n  llama.cpp {ref[:24]}\n  favo      {(mine or [])[:24]}")
            print(f"{os.path.basename(path)}: {len(texts)} strings, {bad} differ from llama.cpp")
            failures += bad
    finally:
        os.unlink(inp)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
