/*
 * bench-tokenize.c - tokenizer throughput (MB/s of input text, one core)
 * and load time, per vocabulary, on English prose and on C source code.
 *
 *   prose: every file of /usr/share/common-licenses concatenated (≈ 260 KB of English)
 *   code:  the repository's own engine/, shm/, dataplane/ .c and .h files
 *
 * Vocabularies: every ../shared/vocab GGUF (llama.cpp fixtures) and the models
 * in models/ (SmolLM2: byte-level BPE, smollm pre-tokenizer; Gemma 3: SPM,
 * 262k tokens). Each text is tokenized whole (one call: BPE's per-call word
 * cache helps), and the prose again in 1 KiB calls (prompt-sized: every word
 * merged); best of 3 runs of >= 0.3 s of thread CPU time. Load time is the
 * thread CPU time of eng_tok_load (page faults included). Goal (issue #5): >= 20 MB/s for
 * byte-level BPE.
 *
 *   build/perf/bench-tokenize [--json] [--src DIR] [--shared DIR] [--models DIR]
 * (defaults: $FAVO_SRC or ".", $FAVO_SHARED or SRC/../shared, $FAVO_MODELS or SRC/models)
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "eng_gguf.h"
#include "eng_tok.h"
#include "favo_base.h"
#include "perf_util.h"

struct text {
    const char *name;
    char *buf;
    size_t len, cap;
};

static void add_file(struct text *t, const char *path)
{
    FILE *f = fopen(path, "rb");
    size_t r;

    if (!f)
        return;
    for (;;) {
        if (t->len + 65536 > t->cap) {
            t->cap = (t->cap + 65536) * 2;
            t->buf = realloc(t->buf, t->cap);
        }
        r = fread(t->buf + t->len, 1, 65536, f);
        if (!r)
            break;
        t->len += r;
    }
    fclose(f);
}

static void add_dir(struct text *t, const char *dir, const char *const *exts)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char p[2048];

    if (!d)
        return;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        int ok = !exts;
        for (int i = 0; exts && exts[i]; i++) {
            size_t el = strlen(exts[i]);
            ok |= l > el && !strcmp(de->d_name + l - el, exts[i]);
        }
        if (!ok || de->d_name[0] == '.')
            continue;
        snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
        add_file(t, p);
    }
    closedir(d);
}

/* CPU time of this thread: the machine may be shared (CI, other builds),
 * and what matters is the cost on the core that tokenizes. */
static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* MB/s of input, best of 3 runs of >= 0.3 s CPU. chunk = 0: the whole text
 * per call; otherwise calls of `chunk` bytes (prompt-sized: no word cache). */
static double bench_one(const eng_tok_t *tok, const struct text *tx, size_t chunk, int32_t *ids,
                        size_t max, int64_t *ntok)
{
    double best = 0;

    for (int run = 0; run < 3; run++) {
        uint64_t t0 = cpu_ns(), t1;
        size_t bytes = 0;
        do {
            if (!chunk) {
                *ntok = eng_tok_encode(tok, tx->buf, tx->len, 0, ids, max);
            } else {
                *ntok = 0;
                for (size_t o = 0; o < tx->len; o += chunk)
                    *ntok += eng_tok_encode(tok, tx->buf + o, FAVO_MIN(chunk, tx->len - o), 0, ids, max);
            }
            bytes += tx->len;
            t1 = cpu_ns();
        } while (t1 - t0 < 300000000ull);
        double mbs = (double)bytes / 1e6 / ((double)(t1 - t0) / 1e9);
        if (mbs > best)
            best = mbs;
    }
    return best;
}

int main(int argc, char **argv)
{
    const char *src = getenv("FAVO_SRC"), *shared = getenv("FAVO_SHARED"), *models = getenv("FAVO_MODELS");
    bool json = perf_want_json(argc, argv);
    char machine[256], p[2048];
    struct text prose = { .name = "prose" }, code = { .name = "code" };
    static const char *const cext[] = { ".c", ".h", NULL };
    struct {
        char path[2048], name[64];
    } vocabs[32];
    int nv = 0;

    for (int i = 1; i + 1 < argc; i++) {
        if (!strcmp(argv[i], "--src"))
            src = argv[++i];
        else if (!strcmp(argv[i], "--shared"))
            shared = argv[++i];
        else if (!strcmp(argv[i], "--models"))
            models = argv[++i];
    }
    if (!src)
        src = ".";
    add_dir(&prose, "/usr/share/common-licenses", NULL);
    snprintf(p, sizeof(p), "%s/engine", src);
    add_dir(&code, p, cext);
    snprintf(p, sizeof(p), "%s/shm", src);
    add_dir(&code, p, cext);
    snprintf(p, sizeof(p), "%s/dataplane", src);
    add_dir(&code, p, cext);
    if (!prose.len || !code.len) {
        fprintf(stderr, "bench-tokenize: no input text (prose %zu B, code %zu B)\n", prose.len, code.len);
        return 1;
    }
    {
        char sdir[1400], mdir[1400];
        if (shared)
            snprintf(sdir, sizeof(sdir), "%s/vocab", shared);
        else
            snprintf(sdir, sizeof(sdir), "%s/../shared/vocab", src);
        DIR *d = opendir(sdir);
        struct dirent *de;
        while (d && (de = readdir(d)) && nv < 30) {
            size_t l = strlen(de->d_name);
            if (l > 5 && !strcmp(de->d_name + l - 5, ".gguf")) {
                snprintf(vocabs[nv].path, sizeof(vocabs[nv].path), "%s/%s", sdir, de->d_name);
                snprintf(vocabs[nv].name, sizeof(vocabs[nv].name), "%.*s", (int)(l - 5), de->d_name);
                nv++;
            }
        }
        if (d)
            closedir(d);
        if (models)
            snprintf(mdir, sizeof(mdir), "%s", models);
        else
            snprintf(mdir, sizeof(mdir), "%s/models", src);
        snprintf(vocabs[nv].path, sizeof(vocabs[nv].path), "%.1000s/SmolLM2-135M-Instruct.Q4_1.gguf", mdir);
        snprintf(vocabs[nv].name, sizeof(vocabs[nv].name), "SmolLM2-135M");
        nv++;
        snprintf(vocabs[nv].path, sizeof(vocabs[nv].path), "%.1000s/gemma-3-270m-q4_k_m.gguf", mdir);
        snprintf(vocabs[nv].name, sizeof(vocabs[nv].name), "gemma-3-270m");
        nv++;
    }

    size_t max = FAVO_MAX(prose.len, code.len) + 16;
    int32_t *ids = malloc(max * sizeof(*ids));
    perf_machine(machine, sizeof(machine));
    if (json) {
        perf_json_begin(stdout);
        perf_json_str(stdout, "machine", machine);
        perf_json_num(stdout, "prose_bytes", (double)prose.len);
        perf_json_num(stdout, "code_bytes", (double)code.len);
    } else {
        printf("tokenizer throughput, one core - %s\n", machine);
        printf("prose %zu bytes (common-licenses), code %zu bytes (favo .c/.h)\n\n", prose.len, code.len);
        printf("MB/s per CPU-second of one thread; 'prompt' = the prose in 1 KiB calls; load = CPU ms\n\n");
        printf("%-22s %-4s %-10s %7s %8s %10s %10s %11s %8s\n", "vocabulary", "kind", "pre", "n_vocab",
               "load ms", "prose MB/s", "code MB/s", "prompt MB/s", "B/token");
    }
    for (int i = 0; i < nv; i++) {
        char err[256];
        eng_gguf_t *g = NULL;
        eng_tok_t *tok = NULL;
        uint64_t t0;
        double load_ms, mp, mc;
        int64_t np, nc;

        if (eng_gguf_open(&g, vocabs[i].path, err, sizeof(err)))
            continue;
        t0 = cpu_ns();
        if (eng_tok_load(&tok, g, err, sizeof(err))) {
            eng_gguf_close(g);
            continue;
        }
        load_ms = (double)(cpu_ns() - t0) / 1e6;
        eng_gguf_close(g);
        mp = bench_one(tok, &prose, 0, ids, max, &np);
        mc = bench_one(tok, &code, 0, ids, max, &nc);
        int64_t nq;
        double mq = bench_one(tok, &prose, 1024, ids, max, &nq);
        const char *kind = eng_tok_kind(tok) == ENG_TOK_SPM ? "spm" : "bpe";
        if (json) {
            char k[128];
            snprintf(k, sizeof(k), "%s_load_ms", vocabs[i].name);
            perf_json_num(stdout, k, load_ms);
            snprintf(k, sizeof(k), "%s_prose_mbs", vocabs[i].name);
            perf_json_num(stdout, k, mp);
            snprintf(k, sizeof(k), "%s_code_mbs", vocabs[i].name);
            perf_json_num(stdout, k, mc);
            snprintf(k, sizeof(k), "%s_prompt_mbs", vocabs[i].name);
            perf_json_num(stdout, k, mq);
        } else {
            printf("%-22s %-4s %-10s %7u %8.1f %10.1f %10.1f %11.1f %8.2f\n", vocabs[i].name, kind,
                   eng_tok_pre_name(tok)[0] ? eng_tok_pre_name(tok) : "-", eng_tok_n_vocab(tok),
                   load_ms, mp, mc, mq, np > 0 ? (double)prose.len / (double)np : 0);
        }
        eng_tok_free(tok);
    }
    if (json)
        perf_json_end(stdout);
    free(ids);
    free(prose.buf);
    free(code.buf);
    return 0;
}
