/*
 * test-batcher-cache.c - the response cache:
 * SHA-256 keys separate every input (tenant, model, tokens, each
 * generation parameter, extra bytes), only deterministic requests are
 * cacheable, TTL expiry, the LRU bound with the least recently used entry
 * evicted, every evicted/expired/replaced entry scrubbed (no value byte
 * left in the region), hits and misses counted, re-attach (the specialist
 * table is tested in test-shm-spec.c).
 */
#include "t_util.h"

#include "bat_cache.h"
#include "bat_sched.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#define SEC 1000000000ull

static void test_keys(void **state)
{
    static uint8_t mem[1 << 16] __attribute__((aligned(64)));
    struct bat_cache c;
    int32_t tok[4] = { 1, 2, 3, 4 };
    struct eng_sample_params sp = { .temperature = 0, .top_p = 1 };
    struct bat_cache_key_in in = { .tenant = 7, .model = "chat", .tokens = tok, .n_tokens = 4,
                                   .sp = &sp, .max_tokens = 64 };
    uint8_t k0[32], k[32];

    (void)state;
    assert_int_equal(bat_cache_init(&c, mem, sizeof(mem), 256), 0);
    assert_int_equal(bat_cache_key(&c, &in, k0), 0);
    assert_int_equal(bat_cache_key(&c, &in, k), 0);
    assert_memory_equal(k0, k, 32);
#define DIFFERS(mutate, undo)                                 \
    do {                                                      \
        mutate;                                               \
        assert_int_equal(bat_cache_key(&c, &in, k), 0);       \
        assert_memory_not_equal(k0, k, 32);                   \
        undo;                                                 \
    } while (0)
    DIFFERS(in.tenant = 8, in.tenant = 7);
    DIFFERS(in.model = "code", in.model = "chat");
    DIFFERS(tok[3] = 5, tok[3] = 4);
    DIFFERS(in.n_tokens = 3, in.n_tokens = 4);
    DIFFERS(sp.temperature = 0.5f, sp.temperature = 0);
    DIFFERS(sp.top_k = 40, sp.top_k = 0);
    DIFFERS(sp.top_p = 0.9f, sp.top_p = 1);
    DIFFERS(sp.min_p = 0.1f, sp.min_p = 0);
    DIFFERS(sp.freq_penalty = 0.1f, sp.freq_penalty = 0);
    DIFFERS(sp.presence_penalty = 0.1f, sp.presence_penalty = 0);
    DIFFERS(sp.n_logprobs = 2, sp.n_logprobs = 0);
    DIFFERS(in.max_tokens = 65, in.max_tokens = 64);
    DIFFERS((in.has_seed = true, sp.seed = 0), in.has_seed = false);
    DIFFERS((in.has_seed = true, sp.seed = 9), (in.has_seed = false, sp.seed = 0));
    DIFFERS((in.extra = "\n\n", in.extra_len = 2), (in.extra = NULL, in.extra_len = 0));
    /* Length prefixes: "ab"+"c" and "a"+"bc" are different inputs. */
    in.model = "chatx";
    in.extra = "y"; in.extra_len = 1;
    assert_int_equal(bat_cache_key(&c, &in, k0), 0);
    in.model = "chat";
    in.extra = "xy"; in.extra_len = 2;
    assert_int_equal(bat_cache_key(&c, &in, k), 0);
    assert_memory_not_equal(k0, k, 32);
    bat_cache_close(&c);
}

static void test_deterministic_only(void **state)
{
    struct eng_sample_params sp = { .temperature = 0 };

    (void)state;
    assert_true(bat_cache_deterministic(&sp, false));
    sp.temperature = 0.7f;
    assert_false(bat_cache_deterministic(&sp, false));
    assert_true(bat_cache_deterministic(&sp, true));
}

static void mkkey(uint8_t k[32], uint32_t i)
{
    memset(k, 0, 32);
    memcpy(k, &i, 4);
    k[31] = 0xa5;
}

/* No byte of any value written with marker m is left in the region. */
static bool region_has(const uint8_t *mem, size_t n, uint8_t m)
{
    for (size_t i = 0; i + 8 <= n; i++)
        if (mem[i] == m && !memcmp(mem + i, (uint8_t[8]){ m, m, m, m, m, m, m, m }, 8))
            return true;
    return false;
}

static void test_ttl_lru_scrub(void **state)
{
    static uint8_t mem[1 << 15] __attribute__((aligned(64)));
    struct bat_cache c;
    struct bat_cache_stats st;
    uint8_t k[32], v[128], out[128];
    uint64_t now = 100 * SEC;

    (void)state;
    assert_int_equal(bat_cache_init(&c, mem, sizeof(mem), 128), 0);
    bat_cache_get_stats(&c, &st);
    uint32_t n = st.n_ent;
    assert_true(n >= 16 && n * 128 <= sizeof(mem)); /* bounded by the region */
    /* Errors. */
    mkkey(k, 0);
    assert_int_equal(bat_cache_put(&c, k, now, 0, v, 8), -EINVAL);
    assert_int_equal(bat_cache_put(&c, k, now, 86401, v, 8), -EINVAL);
    assert_int_equal(bat_cache_put(&c, k, now, 10, v, 129), -E2BIG);
    assert_int_equal(bat_cache_get(&c, k, now, out, sizeof(out)), -ENOENT);
    /* TTL: alive until now + ttl, then a miss and scrubbed. */
    memset(v, 0xc1, sizeof(v));
    assert_int_equal(bat_cache_put(&c, k, now, 10, v, 100), 0);
    assert_int_equal(bat_cache_get(&c, k, now + 10 * SEC - 1, out, 99), -ENOSPC);
    assert_int_equal(bat_cache_get(&c, k, now + 10 * SEC - 1, out, sizeof(out)), 100);
    assert_memory_equal(out, v, 100);
    assert_true(region_has(mem, sizeof(mem), 0xc1));
    assert_int_equal(bat_cache_get(&c, k, now + 10 * SEC, out, sizeof(out)), -ENOENT);
    assert_false(region_has(mem, sizeof(mem), 0xc1));
    /* bat_cache_expire scrubs without a get. */
    memset(v, 0xc2, sizeof(v));
    assert_int_equal(bat_cache_put(&c, k, now, 5, v, 64), 0);
    assert_int_equal(bat_cache_expire(&c, now + 4 * SEC), 0);
    assert_int_equal(bat_cache_expire(&c, now + 5 * SEC), 1);
    assert_false(region_has(mem, sizeof(mem), 0xc2));
    /* Replace scrubs the old value. */
    memset(v, 0xc3, sizeof(v));
    assert_int_equal(bat_cache_put(&c, k, now, 5, v, 64), 0);
    memset(v, 0xc4, sizeof(v));
    assert_int_equal(bat_cache_put(&c, k, now, 5, v, 32), 0);
    assert_false(region_has(mem, sizeof(mem), 0xc3));
    assert_int_equal(bat_cache_get(&c, k, now, out, sizeof(out)), 32);
    /* LRU: fill, touch entry 1, overflow by 3: entries 0 (0xc4 above is
     * key 0), 2, 3 go; 1 stays. */
    for (uint32_t i = 1; i < n; i++) {
        mkkey(k, i);
        memset(v, (uint8_t)(0x10 + (i & 0x3f)), sizeof(v));
        assert_int_equal(bat_cache_put(&c, k, now, 100, v, 128), 0);
    }
    mkkey(k, 1);
    assert_int_equal(bat_cache_get(&c, k, now, out, sizeof(out)), 128);
    for (uint32_t i = n; i < n + 3; i++) {
        mkkey(k, i);
        memset(v, 0x77, sizeof(v));
        assert_int_equal(bat_cache_put(&c, k, now, 100, v, 128), 0);
    }
    bat_cache_get_stats(&c, &st);
    assert_int_equal(st.evictions, 3);
    assert_int_equal(st.n_live, n);
    assert_false(region_has(mem, sizeof(mem), 0xc4));
    mkkey(k, 0);
    assert_int_equal(bat_cache_get(&c, k, now, out, sizeof(out)), -ENOENT);
    mkkey(k, 2);
    assert_int_equal(bat_cache_get(&c, k, now, out, sizeof(out)), -ENOENT);
    mkkey(k, 3);
    assert_int_equal(bat_cache_get(&c, k, now, out, sizeof(out)), -ENOENT);
    mkkey(k, 1);
    assert_int_equal(bat_cache_get(&c, k, now, out, sizeof(out)), 128);
    mkkey(k, 4);
    assert_int_equal(bat_cache_get(&c, k, now, out, sizeof(out)), 128);
    assert_int_equal(bat_cache_check(&c), 0);
    /* Counted. */
    bat_cache_get_stats(&c, &st);
    assert_int_equal(st.hits, 5);
    assert_int_equal(st.misses, 5);
    assert_int_equal(st.expirations, 2);
    assert_int_equal(st.uncacheable, 1);
    /* Re-attach (restarted batcher) keeps the entries. */
    struct bat_cache c2;
    assert_int_equal(bat_cache_attach(&c2, mem, sizeof(mem)), 0);
    assert_int_equal(bat_cache_get(&c2, k, now, out, sizeof(out)), 128);
    /* Everything expires: the region holds no value byte afterwards. */
    assert_int_equal(bat_cache_expire(&c2, now + 100 * SEC), n);
    assert_false(region_has(mem, sizeof(mem), 0x77));
    assert_int_equal(bat_cache_check(&c2), 0);
    bat_cache_close(&c2);
    bat_cache_close(&c);
    uint8_t junk[4096] __attribute__((aligned(64))) = { 0 };
    assert_int_equal(bat_cache_attach(&c2, junk, sizeof(junk)), -EPROTO);
    assert_int_equal(bat_cache_init(&c2, junk, 64, 128), -EINVAL);
}

/* Random puts/gets/expiry against a tiny cache: structure stays sound. */
static void test_random_ops(void **state)
{
    static uint8_t mem[1 << 14] __attribute__((aligned(64)));
    struct bat_cache c;
    uint64_t r = 99, now = SEC;
    uint8_t k[32], v[64], out[64];

    (void)state;
    assert_int_equal(bat_cache_init(&c, mem, sizeof(mem), 64), 0);
    for (int i = 0; i < 20000; i++) {
        mkkey(k, (uint32_t)(t_rand(&r) % 300));
        switch (t_rand(&r) % 4) {
        case 0:
        case 1:
            memset(v, (int)(t_rand(&r) & 0xff), sizeof(v));
            assert_int_equal(bat_cache_put(&c, k, now, 1 + (uint32_t)(t_rand(&r) % 5), v,
                                           (size_t)(t_rand(&r) % 65)), 0);
            break;
        case 2: {
            int rc = bat_cache_get(&c, k, now, out, sizeof(out));
            assert_true(rc == -ENOENT || (rc >= 0 && rc <= 64));
            break;
        }
        default:
            now += SEC / 4;
            if (t_rand(&r) % 16 == 0)
                bat_cache_expire(&c, now);
        }
        if (i % 2000 == 0)
            assert_int_equal(bat_cache_check(&c), 0);
    }
    assert_int_equal(bat_cache_check(&c), 0);
    bat_cache_close(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_keys),
        cmocka_unit_test(test_deterministic_only),
        cmocka_unit_test(test_ttl_lru_scrub),
        cmocka_unit_test(test_random_ops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
