/*
 * bench-engine.c - the CPU engine's throughput: prefill (512 tokens in one
 * step) and decode (batch 1, 8, 32) tokens/s per model, the machine's
 * memory read bandwidth measured in the same run, and the batch-1 decode
 * roofline it implies (bandwidth / weight bytes read per token).
 *
 *   bench-engine [--json] [--threads N] [--decode N] [--llama-1b] [--mmap]
 *                [--only NAME] [--profile] [--cpu] [--no-llamacpp]
 *                [--kv-cache-type auto|f16|f32]
 *
 * --kv-cache-type: the KV pool's element type, chosen as favo serve
 * chooses it (auto: f16 for quantized models, f32 for F32 ones).
 *
 * Models: `tiny` (q8_0, generated), the real models in FAVO_MODELS (or
 * ./models) when present, and with --llama-1b the llama-1b preset in q8_0,
 * q4_0 and q4_k (generated into $TMPDIR; ~1.3 GB each, slow on 2 cores).
 * --mmap adds batch-1 decode with the weights read through the file
 * mapping (ENG_MODEL_USE_MMAP) beside the anonymous copy.
 * --only runs the models whose name contains NAME. --profile adds, per
 * model, where one decode step's time goes at batch 1, 8 and 32 and in
 * the 512-token prefill (eng_ctx_prof: per phase, microseconds per step
 * averaged over the threads, and the share of the step), measured in
 * separate runs with the engine's profiling on. --cpu divides by the
 * process's CPU time instead of wall time (see bench_now).
 *
 * JSON keys: mem_bw_gbs, threads, and per model M (e.g. smollm2_q4_1):
 * M_prefill_tps, M_decode_b1_tps, M_decode_b8_tps, M_decode_b32_tps,
 * M_roofline_tps, M_roofline_fraction, M_weight_mb [, M_decode_b1_mmap_tps].
 * M_llamacpp_prefill_tps, M_llamacpp_decode_b1_tps, M_b1_vs_llamacpp.
 *
 * llama.cpp: right after favo's figures for a model, the same file is run
 * through llama.cpp with the same thread count, prefill length, prompt and
 * decode steps (perf/llamacpp-baseline.py under the project's python:
 * $FAVO_VENV_PY or .venv/bin/python3; the script under $FAVO_SRC or ./),
 * weights read into memory as favo's are. Where llama-cpp-python is not
 * installed, or llama.cpp refuses the file, its keys are absent and the
 * table says why. --no-llamacpp skips it.
 */
#include "perf_util.h"

#include "eng_kv.h"
#include "eng_model.h"
#include "eng_model_make.h"
#include "eng_step.h"
#include "eng_types.h"
#include "favo_base.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PREFILL 512
#define CTX_PROMPT 16

struct bw_arg {
    const uint64_t *p;
    size_t n;
    uint64_t sum;
};

static void *bw_thread(void *v)
{
    struct bw_arg *a = v;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;

    for (size_t i = 0; i + 4 <= a->n; i += 4) {
        s0 += a->p[i];
        s1 += a->p[i + 1];
        s2 += a->p[i + 2];
        s3 += a->p[i + 3];
    }
    a->sum = s0 + s1 + s2 + s3;
    return NULL;
}

/* Read bandwidth in GB/s: nth threads summing disjoint parts of 1 GiB,
 * best of 5 passes. */
static double mem_bw(unsigned nth)
{
    size_t bytes = 1ull << 30, n = bytes / 8;
    uint64_t *buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    double best = 0;
    volatile uint64_t sink = 0;

    if (buf == MAP_FAILED)
        return 0;
    (void)madvise(buf, bytes, MADV_HUGEPAGE);
    for (size_t i = 0; i < n; i++)
        buf[i] = i;
    for (int pass = 0; pass < 5; pass++) {
        pthread_t t[64];
        struct bw_arg a[64];
        uint64_t t0 = favo_now_ns();
        double s;

        for (unsigned i = 0; i < nth; i++) {
            a[i] = (struct bw_arg){ buf + n / nth * i, n / nth, 0 };
            pthread_create(&t[i], NULL, bw_thread, &a[i]);
        }
        for (unsigned i = 0; i < nth; i++) {
            pthread_join(t[i], NULL);
            sink += a[i].sum;
        }
        s = (double)(favo_now_ns() - t0) / 1e9;
        if (bytes / s / 1e9 > best)
            best = bytes / s / 1e9;
    }
    (void)sink;
    munmap(buf, bytes);
    return best;
}

struct result {
    char name[64];
    double prefill, b1, b8, b32, b1_mmap, roof, weight_mb;
    double lc_prefill, lc_b1;   /* llama.cpp's; 0: not measured, lc_why says why */
    const char *lc_why;
};

/* --cpu: time the runs in CPU seconds of the whole process (every
 * engine thread, spinning included) instead of wall seconds, so that
 * figures taken on a loaded machine compare (a thread that waits for a
 * core costs nothing; one that spins at a barrier does). */
static int use_cpu;
static const char *kv_type = "auto";       /* --kv-cache-type, as favo serve's */

/* The KV pool favo serve would make for m (--kv-cache-type). */
static int kv_init(struct eng_kv *kv, const struct eng_model *m, uint32_t n_blocks)
{
    enum eng_kv_type t;
    int rc = eng_kv_type_pick(m, kv_type, &t);

    return rc ? rc : eng_kv_init_type(kv, &m->hp, n_blocks, t);
}

static uint64_t bench_now(void)
{
    struct timespec ts;

    if (!use_cpu)
        return favo_now_ns();
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Decode tokens/s with nseq sequences, each after a CTX_PROMPT prefill. */
static double decode_tps(eng_ctx_t *c, struct eng_kv *kv, uint32_t nv, uint32_t nseq,
                         uint32_t steps)
{
    struct eng_seq s[32];
    struct eng_sample_out out[32];
    int32_t blocks[32][16], toks[32][CTX_PROMPT], last[32];
    uint32_t nb = eng_kv_blocks_for(CTX_PROMPT + steps);
    struct eng_batch b = { nseq, s };
    uint64_t t0;
    double tps;

    for (uint32_t i = 0; i < nseq; i++) {
        for (uint32_t j = 0; j < nb; j++)
            blocks[i][j] = eng_kv_block_alloc(kv);
        for (uint32_t j = 0; j < CTX_PROMPT; j++)
            toks[i][j] = (int32_t)((i * 131 + j * 17 + 5) % nv);
        s[i] = (struct eng_seq){ .n_new = CTX_PROMPT, .pos = 0, .tokens = toks[i],
                                 .block_table = blocks[i], .n_blocks = nb };
    }
    if (eng_step(c, &b, out, NULL))
        return 0;
    eng_ctx_prof_reset(c);
    t0 = bench_now();
    for (uint32_t st = 0; st < steps; st++) {
        for (uint32_t i = 0; i < nseq; i++) {
            last[i] = out[i].token;
            s[i].pos = CTX_PROMPT + st;
            s[i].n_new = 1;
            s[i].tokens = &last[i];
        }
        if (eng_step(c, &b, out, NULL))
            return 0;
    }
    tps = (double)nseq * steps / ((double)(bench_now() - t0) / 1e9);
    for (uint32_t i = 0; i < nseq; i++)
        for (uint32_t j = 0; j < nb; j++)
            eng_kv_block_release(kv, blocks[i][j]);
    return tps;
}

static double prefill_tps(eng_ctx_t *c, struct eng_kv *kv, uint32_t nv)
{
    static int32_t toks[PREFILL];
    int32_t blocks[PREFILL / ENG_KV_BLOCK];
    struct eng_seq s = { .n_new = PREFILL, .tokens = toks, .block_table = blocks,
                         .n_blocks = PREFILL / ENG_KV_BLOCK };
    struct eng_batch b = { 1, &s };
    struct eng_sample_out out;
    uint64_t t0;
    int rc;

    for (uint32_t j = 0; j < PREFILL; j++)
        toks[j] = (int32_t)((j * 7919 + 3) % nv);
    for (uint32_t j = 0; j < PREFILL / ENG_KV_BLOCK; j++)
        blocks[j] = eng_kv_block_alloc(kv);
    eng_ctx_prof_reset(c);
    t0 = bench_now();
    rc = eng_step(c, &b, &out, NULL);
    for (uint32_t j = 0; j < PREFILL / ENG_KV_BLOCK; j++)
        eng_kv_block_release(kv, blocks[j]);
    return rc ? 0 : PREFILL / ((double)(bench_now() - t0) / 1e9);
}

static double run_decode_b1(const char *path, unsigned flags, unsigned nth, uint32_t steps)
{
    char err[256];
    struct eng_model *m;
    struct eng_kv kv;
    eng_ctx_t *c;
    struct eng_ctx_opts o = { .n_threads = nth, .max_tokens = PREFILL, .max_seqs = 32,
                              .n_ctx = 1024 };
    double r = 0;

    if (eng_model_load(&m, path, flags, err, sizeof(err)))
        return 0;
    if (!kv_init(&kv, m, 64)) {
        if (!eng_ctx_init(&c, m, &kv, &o)) {
            r = decode_tps(c, &kv, m->hp.n_vocab, 1, steps);
            eng_ctx_free(c);
        }
        eng_kv_destroy(&kv);
    }
    eng_model_free(m);
    return r;
}

/* The phase table of one run: per phase, us per step per thread and its
 * share of the time spent in phases; then the time in no phase (pool
 * wake-up, the wait at the end; with --cpu, also time spent preempted). */
static void prof_print(const char *model, const char *what, eng_ctx_t *c)
{
    struct eng_step_prof p;
    double per, tot = 0;

    eng_ctx_prof(c, &p);
    if (!p.steps)
        return;
    per = (double)p.steps * p.n_threads * 1e3;   /* ns summed -> us per step per thread */
    for (unsigned op = 0; op < ENG_PROF_COUNT; op++)
        tot += (double)p.ns[op];
    fprintf(stderr, "%-20s %-8s wall %8.1f us/step, in phases %8.1f us/step/thread (%s), "
                    "%.1f barriers/step\n",
            model, what, (double)p.wall_ns / p.steps / 1e3, tot / per,
            use_cpu ? "CPU time" : "wall time", (double)p.barriers / p.steps);
    for (unsigned op = 0; op < ENG_PROF_COUNT; op++)
        if (p.ns[op])
            fprintf(stderr, "    %-12s %9.1f us %5.1f%%\n", eng_prof_name(op),
                    (double)p.ns[op] / per, 100.0 * (double)p.ns[op] / tot);
    fprintf(stderr, "    %-12s %9.1f us\n", "(no phase)",
            ((double)p.wall_ns * p.n_threads - tot) / per);
}

/* Per-phase split of prefill and decode at batch 1, 8, 32 (--profile). */
static void profile_model(const char *name, struct eng_model *m, struct eng_kv *kv,
                          unsigned nth, uint32_t steps)
{
    eng_ctx_t *c;
    struct eng_ctx_opts o = { .n_threads = nth, .max_tokens = PREFILL, .max_seqs = 32,
                              .n_ctx = 1024,
                              .profile = use_cpu ? ENG_PROF_CPU : ENG_PROF_WALL };
    static const uint32_t bs[] = { 1, 8, 32 };

    if (eng_ctx_init(&c, m, kv, &o))
        return;
    (void)prefill_tps(c, kv, m->hp.n_vocab);
    prof_print(name, "prefill", c);
    for (unsigned i = 0; i < FAVO_ARRAY_SIZE(bs); i++) {
        char what[16];

        snprintf(what, sizeof(what), "b%u", bs[i]);
        (void)decode_tps(c, kv, m->hp.n_vocab, bs[i], steps);
        prof_print(name, what, c);
    }
    eng_ctx_free(c);
}

static int bench_model(const char *name, const char *path, unsigned nth, uint32_t steps,
                       double bw, int with_mmap, int profile, struct result *r)
{
    char err[256] = "";
    struct eng_model *m;
    struct eng_kv kv;
    eng_ctx_t *c;
    struct eng_ctx_opts o = { .n_threads = nth, .max_tokens = PREFILL, .max_seqs = 32,
                              .n_ctx = 1024 };
    size_t read_bytes;
    int rc;

    memset(r, 0, sizeof(*r));
    snprintf(r->name, sizeof(r->name), "%s", name);
    if ((rc = eng_model_load(&m, path, 0, err, sizeof(err)))) {
        fprintf(stderr, "bench-engine: %s: %s\n", path, err);
        return rc;
    }
    /* Bytes a decode step reads: every weight except the embedding table,
     * of which it reads one row (unless it doubles as the output). */
    read_bytes = m->weight_bytes;
    if (m->output.data != m->tok_embd.data)
        read_bytes -= m->tok_embd.row_bytes * m->tok_embd.ne1;
    r->weight_mb = (double)read_bytes / 1e6;
    if ((rc = kv_init(&kv, m, 32 * eng_kv_blocks_for(CTX_PROMPT + steps) + 64)) ||
        (rc = eng_ctx_init(&c, m, &kv, &o))) {
        fprintf(stderr, "bench-engine: %s: engine init: %d\n", path, rc);
        eng_model_free(m);
        return rc;
    }
    r->prefill = prefill_tps(c, &kv, m->hp.n_vocab);
    r->b1 = decode_tps(c, &kv, m->hp.n_vocab, 1, steps);
    r->b8 = decode_tps(c, &kv, m->hp.n_vocab, 8, steps);
    r->b32 = decode_tps(c, &kv, m->hp.n_vocab, 32, steps);
    r->roof = bw * 1e9 / (double)read_bytes;
    eng_ctx_free(c);
    if (profile)
        profile_model(name, m, &kv, nth, steps);
    eng_kv_destroy(&kv);
    eng_model_free(m);
    if (with_mmap)
        r->b1_mmap = run_decode_b1(path, ENG_MODEL_USE_MMAP, nth, steps);
    return 0;
}

/* Pull "key": number out of a JSON line; 0 when absent. */
static double json_num(const char *line, const char *key)
{
    char k[64];
    const char *p;

    snprintf(k, sizeof(k), "\"%s\":", key);
    p = strstr(line, k);
    return p ? strtod(p + strlen(k), NULL) : 0;
}

/* llama.cpp on the file at path, nth threads, steps decode steps: fills
 * r->lc_prefill and r->lc_b1. 0; 77 when llama-cpp-python is missing;
 * else another exit code or -errno (why: a few words). */
static int llamacpp_run(const char *path, unsigned nth, uint32_t steps, struct result *r,
                        const char **why)
{
    const char *py = getenv("FAVO_VENV_PY"), *src = getenv("FAVO_SRC");
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char script[1024], out[1024], nths[16], nsteps[16], npre[16], nprompt[16];
    char *argv[16], *b;
    int fd, rc;

    py = py && *py ? py : ".venv/bin/python3";
    snprintf(script, sizeof(script), "%s/perf/llamacpp-baseline.py", src && *src ? src : ".");
    if (access(py, X_OK) || access(script, R_OK)) {
        *why = "no project python or perf/llamacpp-baseline.py (set FAVO_VENV_PY, FAVO_SRC)";
        return -ENOENT;
    }
    snprintf(out, sizeof(out), "%s/favo-bench-llamacpp-XXXXXX", tmp);
    if ((fd = mkstemp(out)) < 0) {
        *why = "no temporary file";
        return -errno;
    }
    close(fd);
    snprintf(nths, sizeof(nths), "%u", nth);
    snprintf(nsteps, sizeof(nsteps), "%u", steps);
    snprintf(npre, sizeof(npre), "%d", PREFILL);
    snprintf(nprompt, sizeof(nprompt), "%d", CTX_PROMPT);
    argv[0] = (char *)py;
    argv[1] = script;
    argv[2] = "--json";
    argv[3] = "--model";
    argv[4] = (char *)path;
    argv[5] = "--threads";
    argv[6] = nths;
    argv[7] = "--decode";
    argv[8] = nsteps;
    argv[9] = "--prefill";
    argv[10] = npre;
    argv[11] = "--prompt";
    argv[12] = nprompt;
    argv[13] = NULL;
    rc = perf_run_to_end(argv, out, 600);
    b = perf_slurp(out, 0, NULL);
    unlink(out);
    if (rc == 0 && b) {
        r->lc_prefill = json_num(b, "prefill_tps");
        r->lc_b1 = json_num(b, "decode_b1_tps");
        if (!(r->lc_prefill > 0 && r->lc_b1 > 0))
            rc = -EPROTO;
    }
    free(b);
    *why = rc == 77 ? "llama-cpp-python not installed (./setup.sh test installs it)"
         : rc == -ETIMEDOUT ? "llama.cpp took over 600 s"
         : rc ? "llama.cpp failed on the file (run perf/llamacpp-baseline.py to see why)" : "";
    if (rc)
        r->lc_prefill = r->lc_b1 = 0;
    return rc;
}

/* llama.cpp's figures for the model just measured, while *on; the first
 * "not installed" (or --cpu, whose CPU seconds llama.cpp's wall-clock
 * figures cannot be compared with) turns it off for the rest of the run. */
static void with_llamacpp(int *on, const char **why, const char *path, unsigned nth,
                          uint32_t steps, struct result *r)
{
    if (*on && use_cpu) {
        *why = "not with --cpu (llama.cpp is timed in wall seconds)";
        *on = 0;
    }
    if (*on && llamacpp_run(path, nth, steps, r, why) == 77)
        *on = 0;
    else if (*on && **why)
        fprintf(stderr, "bench-engine: %s: %s\n", path, *why);
    r->lc_why = **why ? *why : "not measured (--no-llamacpp)";
}

int main(int argc, char **argv)
{
    bool json = perf_want_json(argc, argv);
    unsigned nth = (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
    uint32_t steps = 128;
    int llama1b = 0, with_mmap = 0, profile = 0, n = 0, llamacpp = 1;
    const char *lc_why = "";
    const char *only = NULL;
    struct result res[16];
    char machine[256], *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    const char *models = getenv("FAVO_MODELS") ? getenv("FAVO_MODELS") : "models";
    char path[1024], err[256];
    double bw;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            nth = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--decode") && i + 1 < argc)
            steps = (uint32_t)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--llama-1b"))
            llama1b = 1;
        else if (!strcmp(argv[i], "--mmap"))
            with_mmap = 1;
        else if (!strcmp(argv[i], "--cpu"))
            use_cpu = 1;
        else if (!strcmp(argv[i], "--profile"))
            profile = 1;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--no-llamacpp"))
            llamacpp = 0;
        else if (!strcmp(argv[i], "--kv-cache-type") && i + 1 < argc)
            kv_type = argv[++i];
        else if (strcmp(argv[i], "--json")) {
            fprintf(stderr, "usage: bench-engine [--json] [--threads N] [--decode N] "
                            "[--llama-1b] [--mmap] [--only NAME] [--profile] [--cpu] "
                            "[--no-llamacpp] [--kv-cache-type auto|f16|f32]\n");
            return 2;
        }
    }
    if (!nth || nth > 64 || !steps || steps > 240)   /* block tables hold 16 blocks */
        return 2;
    bw = mem_bw(nth);
    {
        struct { const char *preset; uint32_t type; const char *name; } gen[] = {
            { "tiny", ENG_TYPE_Q8_0, "tiny_q8_0" },
            { "llama-1b", ENG_TYPE_Q8_0, "llama1b_q8_0" },
            { "llama-1b", ENG_TYPE_Q4_0, "llama1b_q4_0" },
            { "llama-1b", ENG_TYPE_Q4_K, "llama1b_q4_k" },
        };
        struct { const char *file, *name; } real[] = {
            { "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2_q4_1" },
            { "gemma-3-270m-q4_k_m.gguf", "gemma3_270m_q4_k_m" },
        };

        for (unsigned i = 0; i < sizeof(gen) / sizeof(gen[0]); i++) {
            struct eng_model_make_opts mo = { .preset = gen[i].preset, .type = gen[i].type,
                                              .seed = 1 };

            if (i > 0 && !llama1b)
                break;
            if (only && !strstr(gen[i].name, only))
                continue;
            snprintf(path, sizeof(path), "%s/favo-bench-%s.gguf", tmp, gen[i].name);
            mo.out = path;
            if (access(path, R_OK) && eng_model_make(&mo, err, sizeof(err))) {
                fprintf(stderr, "bench-engine: make %s: %s\n", gen[i].name, err);
                continue;
            }
            if (!bench_model(gen[i].name, path, nth, steps, bw, with_mmap, profile, &res[n]))
                with_llamacpp(&llamacpp, &lc_why, path, nth, steps, &res[n++]);
        }
        for (unsigned i = 0; i < sizeof(real) / sizeof(real[0]); i++) {
            snprintf(path, sizeof(path), "%s/%s", models, real[i].file);
            if (access(path, R_OK) || (only && !strstr(real[i].name, only)))
                continue;
            if (!bench_model(real[i].name, path, nth, steps, bw, with_mmap, profile, &res[n]))
                with_llamacpp(&llamacpp, &lc_why, path, nth, steps, &res[n++]);
        }
    }
    perf_machine(machine, sizeof(machine));
    if (json) {
        char key[160];

        perf_json_begin(stdout);
        perf_json_str(stdout, "machine", machine);
        perf_json_num(stdout, "threads", nth);
        perf_json_num(stdout, "mem_bw_gbs", bw);
        perf_json_str(stdout, "timing", use_cpu ? "cpu" : "wall");
        perf_json_str(stdout, "kv_cache_type", kv_type);
        for (int i = 0; i < n; i++) {
#define K(suffix, v)                                                    \
    do {                                                                \
        snprintf(key, sizeof(key), "%.63s_%s", res[i].name, suffix);       \
        perf_json_num(stdout, key, v);                                  \
    } while (0)
            K("prefill_tps", res[i].prefill);
            K("decode_b1_tps", res[i].b1);
            K("decode_b8_tps", res[i].b8);
            K("decode_b32_tps", res[i].b32);
            K("roofline_tps", res[i].roof);
            K("roofline_fraction", res[i].b1 / res[i].roof);
            K("weight_mb", res[i].weight_mb);
            if (with_mmap)
                K("decode_b1_mmap_tps", res[i].b1_mmap);
            if (res[i].lc_b1 > 0) {
                K("llamacpp_prefill_tps", res[i].lc_prefill);
                K("llamacpp_decode_b1_tps", res[i].lc_b1);
                K("b1_vs_llamacpp", res[i].b1 / res[i].lc_b1);
                K("prefill_vs_llamacpp", res[i].prefill / res[i].lc_prefill);
            }
#undef K
        }
        perf_json_end(stdout);
        return 0;
    }
    printf("bench-engine: %s, %u threads, decode %u steps, KV cache %s\n", machine, nth, steps,
           kv_type);
    printf("memory read bandwidth: %.1f GB/s%s\n\n", bw,
           use_cpu ? "; tok/s per CPU second of the process (--cpu)" : "");
    printf("%-20s %9s %10s %10s %10s %10s %9s %9s%s\n", "model", "weights", "prefill",
           "decode b1", "decode b8", "decode b32", "roofline", "fraction",
           with_mmap ? "  b1 (mmap)" : "");
    printf("%-20s %9s %10s %10s %10s %10s %9s %9s%s\n", "", "MB", "tok/s", "tok/s", "tok/s",
           "tok/s", "tok/s", "", with_mmap ? "      tok/s" : "");
    for (int i = 0; i < n; i++) {
        printf("%-20s %9.1f %10.1f %10.1f %10.1f %10.1f %9.1f %9.2f", res[i].name,
               res[i].weight_mb, res[i].prefill, res[i].b1, res[i].b8, res[i].b32, res[i].roof,
               res[i].b1 / res[i].roof);
        if (with_mmap)
            printf(" %11.1f", res[i].b1_mmap);
        printf("\n");
    }
    printf("\n%-20s %10s %10s %12s %12s\n", "llama.cpp, same run", "prefill", "decode b1",
           "favo/llama.cpp", "favo/llama.cpp");
    printf("%-20s %10s %10s %12s %12s\n", "", "tok/s", "tok/s", "prefill", "decode b1");
    for (int i = 0; i < n; i++) {
        if (res[i].lc_b1 > 0)
            printf("%-20s %10.1f %10.1f %12.2f %12.2f\n", res[i].name, res[i].lc_prefill,
                   res[i].lc_b1, res[i].prefill / res[i].lc_prefill, res[i].b1 / res[i].lc_b1);
        else
            printf("%-20s %s\n", res[i].name, res[i].lc_why);
    }
    return 0;
}
