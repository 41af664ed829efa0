/*
 * test-engine-sample.c - the sampler: greedy, determinism keyed by
 * (seed, position), the draw distribution against softmax, top-k / top-p /
 * min-p truncation, frequency and presence penalties, logprobs, and the
 * scratch counts left zero between calls.
 */
#include "t_util.h"

#include "eng_sample.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#define NV 1000

static void *scratch;

static void fill(float *l, uint64_t seed)
{
    for (int i = 0; i < NV; i++)
        l[i] = (float)((double)(t_rand(&seed) >> 11) / 9007199254740992.0 * 4.0 - 2.0);
}

static int32_t draw(const float *src, const struct eng_sample_params *sp, const int32_t *hist,
                    uint32_t nh, uint64_t pos, struct eng_sample_out *out)
{
    float l[NV];

    memcpy(l, src, sizeof(l));
    return eng_sample(l, NV, sp, hist, nh, -1, pos, scratch, out);
}

static void test_greedy(void **state)
{
    float l[NV];
    struct eng_sample_params sp = { 0 };

    fill(l, 1);
    l[777] = 9.0f;
    assert_int_equal(draw(l, &sp, NULL, 0, 0, NULL), 777);
    l[12] = 9.0f;                        /* ties: the lower id */
    assert_int_equal(draw(l, &sp, NULL, 0, 0, NULL), 12);
    sp.temperature = 1.0f;
    sp.top_k = 1;                        /* top-k 1 is greedy at any temperature */
    assert_int_equal(draw(l, &sp, NULL, 0, 5, NULL), 12);
}

static void test_uniform_keyed(void **state)
{
    double a = eng_sample_uniform(42, 7), b = eng_sample_uniform(42, 7);

    assert_true(a == b);
    assert_true(a >= 0.0 && a < 1.0);
    assert_true(eng_sample_uniform(42, 8) != a);
    assert_true(eng_sample_uniform(43, 7) != a);
}

/* The same (seed, pos) gives the same token whatever happened before;
 * positions draw independently; the frequencies follow softmax(l / T). */
static void test_distribution(void **state)
{
    float l[NV];
    struct eng_sample_params sp = { .temperature = 0.7f, .seed = 99 };
    static unsigned counts[NV];
    double p[NV], sum = 0, maxdev = 0;
    const int N = 40000;

    for (int i = 0; i < NV; i++)
        l[i] = -30.0f;                   /* negligible */
    l[1] = 1.0f;
    l[2] = 0.5f;
    l[3] = 0.0f;
    l[4] = -1.0f;
    for (int i = 0; i < NV; i++)
        sum += p[i] = exp(l[i] / 0.7);
    memset(counts, 0, sizeof(counts));
    for (int pos = 0; pos < N; pos++)
        counts[draw(l, &sp, NULL, 0, (uint64_t)pos, NULL)]++;
    for (int i = 1; i <= 4; i++) {
        double f = (double)counts[i] / N, e = p[i] / sum;

        maxdev = fmax(maxdev, fabs(f - e) / sqrt(e * (1 - e) / N));
    }
    assert_true(maxdev < 5.0);           /* within 5 sigma */
    assert_int_equal(counts[1] + counts[2] + counts[3] + counts[4], N);
    /* recompute reproduces */
    for (int pos = 100; pos < 200; pos++)
        assert_int_equal(draw(l, &sp, NULL, 0, (uint64_t)pos, NULL),
                         draw(l, &sp, NULL, 0, (uint64_t)pos, NULL));
}

static void test_truncation(void **state)
{
    float l[NV];
    struct eng_sample_params sp = { .temperature = 1.0f, .seed = 5 };

    for (int i = 0; i < NV; i++)
        l[i] = -1.0f;
    l[10] = 3.0f;
    l[11] = 2.9f;
    l[12] = 2.8f;
    /* top-k 2: only 10 and 11 */
    sp.top_k = 2;
    for (int pos = 0; pos < 500; pos++) {
        int32_t t = draw(l, &sp, NULL, 0, (uint64_t)pos, NULL);

        assert_true(t == 10 || t == 11);
    }
    /* top-p 0.01: the best alone */
    sp.top_k = 0;
    sp.top_p = 0.01f;
    for (int pos = 0; pos < 200; pos++)
        assert_int_equal(draw(l, &sp, NULL, 0, (uint64_t)pos, NULL), 10);
    /* min-p 0.5: 10, 11, 12 survive (p12/p10 = e^-0.2), the -1s do not */
    sp.top_p = 1.0f;
    sp.min_p = 0.5f;
    {
        int seen[3] = { 0 };

        for (int pos = 0; pos < 600; pos++) {
            int32_t t = draw(l, &sp, NULL, 0, (uint64_t)pos, NULL);

            assert_true(t >= 10 && t <= 12);
            seen[t - 10] = 1;
        }
        assert_true(seen[0] && seen[1] && seen[2]);
    }
}

static void test_penalties(void **state)
{
    float l[NV], w[NV];
    struct eng_sample_params sp = { .freq_penalty = 0.5f, .presence_penalty = 0.25f };
    int32_t hist[] = { 7, 7, 7, 9, -3, 5000 }; /* out-of-range ids are ignored */
    uint32_t *counts = scratch;

    fill(l, 3);
    l[7] = 5.0f;
    l[9] = 4.0f;
    l[8] = 3.5f;
    memcpy(w, l, sizeof(w));
    /* 7: 5 - 3*0.5 - 0.25 = 3.25; 9: 4 - 0.5 - 0.25 = 3.25; 8 stays 3.5 */
    assert_int_equal(eng_sample(w, NV, &sp, hist, 6, -1, 0, scratch, NULL), 8);
    assert_true(fabsf(w[7] - 3.25f) < 1e-6f && fabsf(w[9] - 3.25f) < 1e-6f);
    for (int i = 0; i < NV; i++)
        assert_int_equal(counts[i], 0);    /* scratch left clean */
    /* without history: the plain argmax */
    assert_int_equal(draw(l, &sp, NULL, 0, 0, NULL), 7);
}

static void test_logprobs(void **state)
{
    float l[NV];
    struct eng_sample_params sp = { .n_logprobs = 5 };
    struct eng_sample_out out;
    double s = 0;

    fill(l, 4);
    l[100] = 6.0f;
    l[200] = 5.0f;
    for (int i = 0; i < NV; i++)
        s += exp(l[i]);
    assert_int_equal(draw(l, &sp, NULL, 0, 0, &out), 100);
    assert_int_equal(out.token, 100);
    assert_int_equal(out.n_top, 5);
    assert_int_equal(out.top_tokens[0], 100);
    assert_int_equal(out.top_tokens[1], 200);
    assert_true(fabs(out.logprob - (6.0 - log(s))) < 1e-4);
    assert_true(fabs(out.top_logprobs[1] - (5.0 - log(s))) < 1e-4);
    for (unsigned i = 1; i < out.n_top; i++)
        assert_true(out.top_logprobs[i] <= out.top_logprobs[i - 1]);
    sp.n_logprobs = 100;                   /* clamped */
    draw(l, &sp, NULL, 0, 0, &out);
    assert_int_equal(out.n_top, ENG_SAMPLE_MAX_LOGPROBS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy),
        cmocka_unit_test(test_uniform_keyed),
        cmocka_unit_test(test_distribution),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_penalties),
        cmocka_unit_test(test_logprobs),
    };
    int rc;

    scratch = calloc(1, eng_sample_scratch_size(NV));
    if (!scratch)
        return 1;
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    free(scratch);
    return rc ? 1 : 0;
}
