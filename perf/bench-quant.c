/*
 * bench-quant.c - matvec (m = 1, the batch-1 decode case) throughput per
 * weight type and implementation, in GB/s of weights streamed, beside the
 * machine's memory read bandwidth measured in the same run.
 *
 * So that every matvec reads its weights from DRAM and not from cache (the
 * development machines have a 480 MiB L3), each shape is laid out many
 * times over a pool of POOL_BYTES (default 1 GiB, --pool MiB) and the runs
 * walk through the pool. Weights are random bytes with sane f16 scales
 * (the values do not change the work done). Threads split the rows of
 * each matrix as the forward pass does.
 *
 *   build/perf/bench-quant [--json] [--quick] [--pool MiB] [--type q4_1]
 *
 * Columns: GB/s of weight bytes per impl, then the best impl's fraction of
 * the measured read bandwidth with the same thread count.
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_cpu.h"
#include "eng_quant.h"
#include "eng_quant_int.h"
#include "favo_base.h"
#include "perf_util.h"

static size_t pool_bytes = (size_t)1 << 30;
static double min_secs = 0.4;

static uint64_t rng_state = 0x1234567;

static uint64_t xrand(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

/* ---- memory read bandwidth ---- */

struct rd_arg {
    const uint8_t *p;
    size_t n;
    uint64_t sink;
};

__attribute__((target("avx512f"))) static void *rd_avx512(void *a_)
{
    struct rd_arg *a = a_;
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;

    for (size_t i = 0; i + 256 <= a->n; i += 256) {
        s0 = _mm512_add_epi64(s0, _mm512_load_si512((const void *)(a->p + i)));
        s1 = _mm512_add_epi64(s1, _mm512_load_si512((const void *)(a->p + i + 64)));
        s2 = _mm512_add_epi64(s2, _mm512_load_si512((const void *)(a->p + i + 128)));
        s3 = _mm512_add_epi64(s3, _mm512_load_si512((const void *)(a->p + i + 192)));
    }
    s0 = _mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3));
    a->sink = (uint64_t)_mm512_reduce_add_epi64(s0);
    return NULL;
}

static void *rd_plain(void *a_)
{
    struct rd_arg *a = a_;
    const uint64_t *p = (const uint64_t *)a->p;
    uint64_t s = 0;

    for (size_t i = 0; i < a->n / 8; i++)
        s += p[i];
    a->sink = s;
    return NULL;
}

static double read_bw(const uint8_t *buf, size_t n, int threads)
{
    double best = 0;
    void *(*fn)(void *) = (eng_cpu_features() & ENG_CPU_AVX512) ? rd_avx512 : rd_plain;

    for (int rep = 0; rep < 3; rep++) {
        struct rd_arg a[2];
        pthread_t th[2];
        size_t part = n / (size_t)threads / 256 * 256;
        uint64_t t0 = favo_now_ns();
        for (int t = 0; t < threads; t++) {
            a[t] = (struct rd_arg){ buf + (size_t)t * part, part, 0 };
            pthread_create(&th[t], NULL, fn, &a[t]);
        }
        for (int t = 0; t < threads; t++)
            pthread_join(th[t], NULL);
        double gbs = (double)part * threads / (double)(favo_now_ns() - t0);
        best = gbs > best ? gbs : best;
    }
    return best;
}

/* ---- matvec ---- */

struct mv_job {
    const struct eng_quant_kern *kn;
    uint32_t wt;
    const uint8_t *pool;
    size_t mat_bytes, wrb;
    int nmat;
    int64_t rows, k, r0, r1;
    const void *x;
    float *y;
    int passes;
};

static void *mv_run(void *a_)
{
    struct mv_job *j = a_;

    for (int p = 0; p < j->passes; p++)
        for (int i = 0; i < j->nmat; i++)
            eng_matmul_kern(j->kn, j->wt, j->pool + (size_t)i * j->mat_bytes, j->wrb, j->k,
                            j->r0, j->r1, j->x, 0, 1, j->y, j->rows);
    return NULL;
}

/* GB/s of weights over `passes` walks of the pool with `threads` threads */
static double mv_time(struct mv_job *base, int threads, int passes)
{
    struct mv_job jobs[2];
    pthread_t th[2];
    uint64_t t0 = favo_now_ns();

    for (int t = 0; t < threads; t++) {
        jobs[t] = *base;
        jobs[t].passes = passes;
        /* split rows on ENG_QUANT_NR boundaries */
        int64_t half = (base->rows / threads + ENG_QUANT_NR - 1) / ENG_QUANT_NR * ENG_QUANT_NR;
        jobs[t].r0 = threads == 1 ? 0 : t * half;
        jobs[t].r1 = threads == 1 ? base->rows : FAVO_MIN(base->rows, (t + 1) * half);
        pthread_create(&th[t], NULL, mv_run, &jobs[t]);
    }
    for (int t = 0; t < threads; t++)
        pthread_join(th[t], NULL);
    double ns = (double)(favo_now_ns() - t0);
    return (double)base->mat_bytes * base->nmat * passes / ns;
}

/* one warm pass to learn the speed, then `reps` timed runs of enough
 * passes for min_secs each; the best run (the least disturbed by other
 * work on the machine) is reported */
static double mv_bench(struct mv_job *j, int threads, int reps)
{
    uint64_t t0 = favo_now_ns();
    double best = 0;

    mv_time(j, threads, 1);
    double s1 = (double)(favo_now_ns() - t0) / 1e9;
    int passes = (int)(min_secs / (s1 > 1e-6 ? s1 : 1e-6)) + 1;
    for (int r = 0; r < reps; r++) {
        double g = mv_time(j, threads, passes > 20 ? 20 : passes);
        best = g > best ? g : best;
    }
    return best;
}

/* byte offsets of f16 scale fields in each block (so random bytes decode
 * to finite, moderate values) */
static void sanitize(uint32_t wt, uint8_t *p, size_t n)
{
    const struct eng_type_info *ti = eng_type_get(wt);
    static const uint16_t scale = 0x2266; /* ~0.0125 */
    int offs[2] = { -1, -1 };

    switch (wt) {
    case ENG_TYPE_F32:
        for (size_t i = 0; i + 4 <= n; i += 4) {
            uint32_t u;
            memcpy(&u, p + i, 4);
            u = (u & 0x807fffffu) | 0x3c000000u;
            memcpy(p + i, &u, 4);
        }
        return;
    case ENG_TYPE_F16:
        for (size_t i = 0; i + 2 <= n; i += 2)
            p[i + 1] = (uint8_t)((p[i + 1] & 0x83) | 0x28);
        return;
    case ENG_TYPE_BF16:
        for (size_t i = 0; i + 2 <= n; i += 2)
            p[i + 1] = (uint8_t)((p[i + 1] & 0x80) | 0x3c);
        return;
    case ENG_TYPE_Q4_0: case ENG_TYPE_Q5_0: case ENG_TYPE_Q8_0:
        offs[0] = 0;
        break;
    case ENG_TYPE_Q4_1: case ENG_TYPE_Q5_1: case ENG_TYPE_Q4_K: case ENG_TYPE_Q5_K:
        offs[0] = 0;
        offs[1] = 2;
        break;
    case ENG_TYPE_Q6_K:
        offs[0] = 208;
        break;
    default:
        return;
    }
    for (size_t b = 0; b + ti->size <= n; b += ti->size)
        for (int i = 0; i < 2; i++)
            if (offs[i] >= 0)
                memcpy(p + b + offs[i], &scale, 2);
}

struct impl {
    const char *name;
    unsigned mask;
};

int main(int argc, char **argv)
{
    bool json = perf_want_json(argc, argv);
    const char *only = NULL;
    static const uint32_t types[] = {
        ENG_TYPE_F32, ENG_TYPE_F16, ENG_TYPE_BF16, ENG_TYPE_Q8_0, ENG_TYPE_Q4_0,
        ENG_TYPE_Q4_1, ENG_TYPE_Q5_0, ENG_TYPE_Q5_1, ENG_TYPE_Q4_K, ENG_TYPE_Q5_K,
        ENG_TYPE_Q6_K,
    };
    static const int64_t shapes[][2] = { { 4096, 4096 }, { 2048, 8192 } }; /* rows x k */
    unsigned f = eng_cpu_features();
    struct impl impls[3] = { { "scalar", 0 } };
    int nimpl = 1;
    char machine[256];

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick"))
            min_secs = 0.1, pool_bytes = (size_t)256 << 20;
        else if (!strcmp(argv[i], "--pool") && i + 1 < argc)
            pool_bytes = (size_t)atol(argv[++i]) << 20;
        else if (!strcmp(argv[i], "--type") && i + 1 < argc)
            only = argv[++i];
    }
    if (f & ENG_CPU_AVX2)
        impls[nimpl++] = (struct impl){ "avx2", ENG_CPU_AVX2 };
    if ((f & ENG_CPU_AVX512) && (f & ENG_CPU_AVX512VNNI))
        impls[nimpl++] = (struct impl){ "avx512vnni", f };

    uint8_t *pool = aligned_alloc(4096, pool_bytes);
    if (!pool) {
        fprintf(stderr, "bench-quant: cannot allocate %zu MiB\n", pool_bytes >> 20);
        return 1;
    }
    for (size_t i = 0; i < pool_bytes; i += 8) {
        uint64_t r = xrand();
        memcpy(pool + i, &r, 8);
    }
    double bw[3] = { 0, read_bw(pool, pool_bytes, 1), read_bw(pool, pool_bytes, 2) };

    perf_machine(machine, sizeof(machine));
    if (json) {
        perf_json_begin(stdout);
        perf_json_str(stdout, "machine", machine);
        perf_json_num(stdout, "pool_mib", (double)(pool_bytes >> 20));
        perf_json_num(stdout, "read_gbs_1t", bw[1]);
        perf_json_num(stdout, "read_gbs_2t", bw[2]);
    } else {
        printf("machine: %s\n", machine);
        printf("memory read bandwidth (%zu MiB, %s loads): 1 thread %.1f GB/s, 2 threads %.1f GB/s\n",
               pool_bytes >> 20, (f & ENG_CPU_AVX512) ? "AVX-512" : "64-bit", bw[1], bw[2]);
        printf("matvec GB/s of weights (m = 1, weights streamed from a %zu MiB pool)\n", pool_bytes >> 20);
        printf("%-5s %-11s %3s", "type", "rows x k", "thr");
        for (int i = 0; i < nimpl; i++)
            printf(" %10s", impls[i].name);
        printf("  best/read-bw  (impl used)\n");
    }

    float *xf = malloc(4 * 8192), *y = malloc(4 * 8192);
    void *xq = aligned_alloc(64, 8192 * 4);
    for (int i = 0; i < 8192; i++)
        xf[i] = (float)((int)(xrand() % 2001) - 1000) / 1000.0f;

    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
        uint32_t wt = types[t];
        if (only && strcmp(only, eng_type_get(wt)->name))
            continue;
        sanitize(wt, pool, pool_bytes);
        /* the read bandwidth again beside each type (best seen so far): a
         * figure taken while something else loaded the machine would make
         * every fraction after it look too good */
        for (int th = 1; th <= 2; th++) {
            double b = read_bw(pool, pool_bytes, th);
            bw[th] = b > bw[th] ? b : bw[th];
        }
        for (size_t s = 0; s < 2; s++) {
            int64_t rows = shapes[s][0], k = shapes[s][1];
            struct mv_job j = { .wt = wt, .pool = pool, .rows = rows, .k = k, .y = y, .x = xq };
            j.wrb = eng_type_row_size(wt, (uint64_t)k);
            j.mat_bytes = j.wrb * (size_t)rows;
            j.nmat = (int)(pool_bytes / j.mat_bytes);
            eng_quant_row(eng_vec_dot_type(wt), xf, xq, k);
            for (int th = 1; th <= 2; th++) {
                double best = 0;
                double res[3];
                if (!json)
                    printf("%-5s %4lldx%-6lld %3d", eng_type_get(wt)->name, (long long)rows,
                           (long long)k, th);
                for (int i = 0; i < nimpl; i++) {
                    j.kn = eng_quant_kern_for(wt, impls[i].mask);
                    res[i] = mv_bench(&j, th, impls[i].mask ? 3 : 1);
                    best = res[i] > best ? res[i] : best;
                    if (!json) {
                        printf(" %10.2f", res[i]);
                        fflush(stdout);
                    } else {
                        char key[96];
                        snprintf(key, sizeof(key), "%s_%lldx%lld_%dt_%s_gbs", eng_type_get(wt)->name,
                                 (long long)rows, (long long)k, th, impls[i].name);
                        perf_json_num(stdout, key, res[i]);
                    }
                }
                if (!json)
                    printf("  %5.0f%%  (%s)\n", 100 * best / bw[th], eng_quant_impl(wt));
                else {
                    char key[96];
                    snprintf(key, sizeof(key), "%s_%lldx%lld_%dt_roofline_frac", eng_type_get(wt)->name,
                             (long long)rows, (long long)k, th);
                    perf_json_num(stdout, key, best / bw[th]);
                }
            }
        }
    }
    if (json)
        perf_json_end(stdout);
    free(xf);
    free(y);
    free(xq);
    free(pool);
    return 0;
}
