/*
 * dp_cmd_model.c - `favo model info FILE` and `favo model make`.
 *
 *   favo model info FILE
 *       version, alignment, every metadata key with its type and value
 *       (arrays: element type, length, first elements; long strings cut),
 *       the tensor table, totals per type and memory needs (weights; KV
 *       cache per token from the architecture keys). Errors go to stderr
 *       as "favo model info: FILE: <message>", exit 1.
 *   favo model make --preset P --type T --out FILE [--vocab FILE] [--seed N]
 *       a deterministic random-weight model (engine/eng_model_make.h).
 *
 * Both print metadata only (file structure, shapes, sizes); the one thing
 * printed from inside a file is its metadata values, which is what info is
 * for.
 */
#include "dp.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_gguf.h"
#include "eng_model_make.h"
#include "eng_types.h"
#include "favo_base.h"

int dp_cmd_model(const struct dp_cmd *cmd, int argc, char **argv);

#define STR_SHOW 60   /* characters of a string value shown */
#define ARR_SHOW 6    /* array elements shown */

/* Print a GGUF string quoted, escaped, cut at max characters. */
static void put_str(FILE *f, struct eng_gguf_str s, size_t max)
{
    size_t shown = 0;

    fputc('\'', f);
    for (uint64_t i = 0; i < s.len && shown < max; i++, shown++) {
        unsigned char c = (unsigned char)s.p[i];

        if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c == '\'' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\x%02x", c);
        else
            fputc(c, f);      /* UTF-8 bytes pass through */
    }
    fputc('\'', f);
    if (s.len > max)
        fprintf(f, "... (%llu bytes)", (unsigned long long)s.len);
}

static void put_scalar(FILE *f, const eng_gguf_t *g, int64_t i)
{
    enum eng_gguf_vtype t = eng_gguf_kv_type(g, i);
    uint64_t u;
    int64_t v;
    double d;
    int b;
    struct eng_gguf_str s;

    switch (t) {
    case ENG_GGUF_U8: case ENG_GGUF_U16: case ENG_GGUF_U32: case ENG_GGUF_U64:
        eng_gguf_kv_u64(g, i, &u);
        fprintf(f, "%llu", (unsigned long long)u);
        break;
    case ENG_GGUF_I8: case ENG_GGUF_I16: case ENG_GGUF_I32: case ENG_GGUF_I64:
        eng_gguf_kv_i64(g, i, &v);
        fprintf(f, "%lld", (long long)v);
        break;
    case ENG_GGUF_F32: case ENG_GGUF_F64:
        eng_gguf_kv_f64(g, i, &d);
        fprintf(f, "%.9g", d);
        break;
    case ENG_GGUF_BOOL:
        eng_gguf_kv_bool(g, i, &b);
        fputs(b ? "true" : "false", f);
        break;
    case ENG_GGUF_STRING:
        eng_gguf_kv_str(g, i, &s);
        put_str(f, s, STR_SHOW);
        break;
    default:
        break;
    }
}

static void put_array(FILE *f, const eng_gguf_t *g, int64_t i)
{
    enum eng_gguf_vtype et;
    uint64_t n;

    eng_gguf_kv_arr(g, i, &et, &n);
    fputc('[', f);
    for (uint64_t j = 0; j < n && j < ARR_SHOW; j++) {
        struct eng_gguf_str s;
        int64_t v;
        double d;

        if (j)
            fputs(", ", f);
        if (et == ENG_GGUF_STRING) {
            eng_gguf_kv_arr_str(g, i, j, &s);
            put_str(f, s, 24);
        } else if (et == ENG_GGUF_F32 || et == ENG_GGUF_F64) {
            eng_gguf_kv_arr_f64(g, i, j, &d);
            fprintf(f, "%.6g", d);
        } else if (et == ENG_GGUF_U64) {
            eng_gguf_kv_arr_f64(g, i, j, &d);
            if (eng_gguf_kv_arr_i64(g, i, j, &v))
                fprintf(f, "%.0f", d);
            else
                fprintf(f, "%lld", (long long)v);
        } else {
            eng_gguf_kv_arr_i64(g, i, j, &v);
            fprintf(f, "%lld", (long long)v);
        }
    }
    if (n > ARR_SHOW)
        fputs(", ...", f);
    fputc(']', f);
}

static void put_bytes(FILE *f, uint64_t b)
{
    if (b >= (1ull << 30))
        fprintf(f, "%llu bytes (%.2f GiB)", (unsigned long long)b, (double)b / (1 << 30));
    else
        fprintf(f, "%llu bytes (%.2f MiB)", (unsigned long long)b, (double)b / (1 << 20));
}

/* An architecture key "<arch>.<suffix>" as u64; 0 when absent. */
static uint64_t arch_u64(const eng_gguf_t *g, const char *arch, const char *suffix)
{
    char k[160];
    uint64_t v = 0;

    snprintf(k, sizeof(k), "%s.%s", arch, suffix);
    if (eng_gguf_get_u64(g, k, &v))
        return 0;
    return v;
}

static int model_info(const char *path)
{
    char err[512], arch[64] = "";
    eng_gguf_t *g;
    uint64_t nkv, nt, weights = 0, per_type_n[ENG_TYPE_COUNT] = { 0 },
                      per_type_b[ENG_TYPE_COUNT] = { 0 };
    struct eng_gguf_str as;
    int rc = eng_gguf_open(&g, path, err, sizeof(err));

    if (rc) {
        fprintf(stderr, "favo model info: %s: %s\n", path, err);
        return 1;
    }
    nkv = eng_gguf_kv_count(g);
    nt = eng_gguf_tensor_count(g);
    printf("file: %s\n", path);
    printf("GGUF v%u, alignment %llu, ", eng_gguf_version(g),
           (unsigned long long)eng_gguf_alignment(g));
    put_bytes(stdout, eng_gguf_file_size(g));
    printf(", %llu keys, %llu tensors", (unsigned long long)nkv, (unsigned long long)nt);
    if (nt)
        printf(", data at byte %llu", (unsigned long long)eng_gguf_data_offset(g));
    printf("\n\nmetadata:\n");
    for (int64_t i = 0; i < (int64_t)nkv; i++) {
        struct eng_gguf_str k = eng_gguf_kv_key(g, i);
        enum eng_gguf_vtype t = eng_gguf_kv_type(g, i);
        char tname[32];

        if (t == ENG_GGUF_ARRAY) {
            enum eng_gguf_vtype et;
            uint64_t n;

            eng_gguf_kv_arr(g, i, &et, &n);
            snprintf(tname, sizeof(tname), "[%s; %llu]", eng_gguf_vtype_name(et),
                     (unsigned long long)n);
        } else {
            snprintf(tname, sizeof(tname), "%s", eng_gguf_vtype_name(t));
        }
        printf("  %-44.*s %-16s ", (int)FAVO_MIN(k.len, 200), k.p, tname);
        if (t == ENG_GGUF_ARRAY)
            put_array(stdout, g, i);
        else
            put_scalar(stdout, g, i);
        putchar('\n');
    }
    if (!eng_gguf_get_str(g, "general.architecture", &as) && as.len < sizeof(arch) &&
        !memchr(as.p, 0, as.len)) {
        memcpy(arch, as.p, as.len);
        arch[as.len] = 0;
    }
    if (nt) {
        printf("\ntensors:\n  %5s  %-40s %-6s %-28s %14s %14s\n", "#", "name", "type", "shape",
               "offset", "bytes");
        for (uint64_t i = 0; i < nt; i++) {
            const struct eng_gguf_tensor *t = eng_gguf_tensor(g, i);
            const struct eng_type_info *ti = eng_type_get(t->type);
            char shape[96];
            int o = 0;

            for (uint32_t d = 0; d < t->ndim; d++)
                o += snprintf(shape + o, sizeof(shape) - (size_t)o, "%s%llu", d ? " x " : "",
                              (unsigned long long)t->ne[d]);
            printf("  %5llu  %-40.*s %-6s %-28s %14llu %14llu\n", (unsigned long long)i,
                   (int)FAVO_MIN(t->name.len, 200), t->name.p, ti->name, shape,
                   (unsigned long long)t->offset, (unsigned long long)t->size);
            per_type_n[t->type]++;
            per_type_b[t->type] += t->size;
            weights += t->size;
        }
        printf("\ntotals per type:\n");
        for (unsigned ty = 0; ty < ENG_TYPE_COUNT; ty++)
            if (per_type_n[ty]) {
                printf("  %-6s %6llu tensors  ", eng_type_get(ty)->name,
                       (unsigned long long)per_type_n[ty]);
                put_bytes(stdout, per_type_b[ty]);
                putchar('\n');
            }
    }
    printf("\nmemory:\n  weights: ");
    put_bytes(stdout, weights);
    putchar('\n');
    if (arch[0]) {
        uint64_t nl = arch_u64(g, arch, "block_count"), nh = arch_u64(g, arch, "attention.head_count"),
                 nkvh = arch_u64(g, arch, "attention.head_count_kv"),
                 dim = arch_u64(g, arch, "embedding_length"),
                 hk = arch_u64(g, arch, "attention.key_length"),
                 hv = arch_u64(g, arch, "attention.value_length"),
                 ctx = arch_u64(g, arch, "context_length");

        if (!nkvh)
            nkvh = nh;
        if (!hk && nh)
            hk = dim / nh;
        if (!hv && nh)
            hv = dim / nh;
        if (nl && nkvh && hk && hv && nl < (1u << 20) && nkvh < (1u << 20) &&
            hk < (1u << 20) && hv < (1u << 20)) {
            uint64_t per_tok = nl * nkvh * (hk + hv) * 2;   /* f16 K and V */

            printf("  kv cache (f16): %llu bytes per token (%llu layers x %llu kv heads x "
                   "(%llu + %llu) dims x 2 bytes)\n", (unsigned long long)per_tok,
                   (unsigned long long)nl, (unsigned long long)nkvh, (unsigned long long)hk,
                   (unsigned long long)hv);
            if (ctx && ctx < (1ull << 32)) {
                printf("  kv cache at context_length %llu: ", (unsigned long long)ctx);
                put_bytes(stdout, per_tok * ctx);
                putchar('\n');
            }
        }
    }
    eng_gguf_close(g);
    return 0;
}

static int model_make(struct dp_opt *opts)
{
    struct eng_model_make_opts mo = { 0 };
    const char *type = dp_opt_str(opts, "type");
    char err[512];
    uint64_t t0 = favo_now_ns();
    int t, rc;

    mo.preset = dp_opt_str(opts, "preset");
    mo.out = dp_opt_str(opts, "out");
    mo.vocab = dp_opt_str(opts, "vocab");
    mo.seed = (uint64_t)dp_opt_int(opts, "seed");
    if (!mo.out) {
        fprintf(stderr, "favo model make: --out FILE is required\n");
        return 2;
    }
    t = eng_type_by_name(type);
    if (t < 0) {
        fprintf(stderr, "favo model make: --type: unknown type '%s'\n", type);
        return 2;
    }
    mo.type = (uint32_t)t;
    rc = eng_model_make(&mo, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "favo model make: %s: %s\n", mo.out, err);
        return 1;
    }
    printf("wrote %s (preset %s, %s, seed %llu) in %.2f s\n", mo.out, mo.preset, type,
           (unsigned long long)mo.seed, (double)(favo_now_ns() - t0) / 1e9);
    return 0;
}

int dp_cmd_model(const struct dp_cmd *cmd, int argc, char **argv)
{
    struct dp_opt opts[] = {
        { "preset", 0, DP_OPT_STR, "NAME", "tiny", "make: tiny (llama, dim 256, 4 layers, 8/4 heads, ffn 768), llama-1b (dim 2048, 16 layers, 32/8 heads, ffn 8192, vocab 128256), qwen2-tiny, gemma3-tiny." },
        { "type", 0, DP_OPT_STR, "TYPE", "f32", "make: weight type of the matrices: f32 f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1 q4_k q5_k q6_k (norms and biases stay f32)." },
        { "out", 'o', DP_OPT_STR, "FILE", NULL, "make: output GGUF file (written to FILE.tmp, then renamed)." },
        { "vocab", 0, DP_OPT_STR, "FILE", NULL, "make: copy the tokenizer.* keys of this GGUF file; without it a synthetic byte-level BPE vocabulary is generated." },
        { "seed", 0, DP_OPT_INT, "N", "1", "make: PRNG seed; the same arguments give the same bytes." },
        DP_OPT_END
    };
    int npos, rc = dp_opt_parse(cmd, opts, argc, argv, &npos);

    if (rc)
        return rc > 0 ? 0 : 2;
    if (npos >= 1 && !strcmp(argv[1], "info")) {
        if (npos != 2) {
            fprintf(stderr, "favo model info: want exactly one FILE\n");
            return 2;
        }
        return model_info(argv[2]);
    }
    if (npos >= 1 && !strcmp(argv[1], "make")) {
        if (npos != 1) {
            fprintf(stderr, "favo model make: unexpected argument '%s'\n", argv[2]);
            return 2;
        }
        return model_make(opts);
    }
    fprintf(stderr, "favo model: want 'info FILE' or 'make --preset P --type T --out FILE' "
            "(see 'favo model --help')\n");
    return 2;
}
