/*
 * test-shm-ring.c - shm_ring in one process: geometry and header checks
 * (foreign, stale, wrong slot size, corrupted), FIFO order, full/empty,
 * partial bursts, counter wrap-around, two-step consume with the replay a
 * restarted consumer sees, zero-copy reserve/commit and repair, typed rings,
 * and a seeded random model check against a plain array queue.
 * Cross-process stress and kill -9 live in test-shm-ring-stress.c.
 */
#include "t_util.h"
#include "shm_ring.h"

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#define GEN 7u

struct desc {
    uint32_t cell;
    uint32_t flags;
    uint64_t rid;
};
SHM_RING_TYPED(t_desc_ring, struct desc)
SHM_RING_TYPED(t_u32_ring, uint32_t)

static void *t_region(size_t len)
{
    void *p = NULL;

    assert_int_equal(posix_memalign(&p, 64, len), 0);
    memset(p, 0xa5, len); /* garbage, as a fresh segment might hold */
    return p;
}

static void test_region_size(void **state)
{
    assert_int_equal(shm_ring_region_size(0, 8), 0);
    assert_int_equal(shm_ring_region_size(3, 8), 0);
    assert_int_equal(shm_ring_region_size(1u << 31, 8), 0);
    assert_int_equal(shm_ring_region_size(8, 0), 0);
    assert_int_equal(shm_ring_region_size(8, SHM_RING_MAX_SLOT + 1), 0);
    assert_int_equal(shm_ring_region_size(1, 1), 256 + 64);
    assert_int_equal(shm_ring_region_size(16, 16), 256 + 256);
    assert_int_equal(shm_ring_region_size(4, 12) % 64, 0);
}

static void test_init_attach_errors(void **state)
{
    size_t len = shm_ring_region_size(16, sizeof(struct desc));
    unsigned char *mem = t_region(len + 64);
    shm_ring_t r;

    assert_int_equal(shm_ring_init(mem + 8, len, 16, 16, GEN), -EINVAL); /* misaligned */
    assert_int_equal(shm_ring_init(mem, len - 1, 16, 16, GEN), -EINVAL); /* too small */
    assert_int_equal(shm_ring_init(mem, len, 12, 16, GEN), -EINVAL);     /* not 2^k */

    /* Garbage is foreign, never a ring. */
    assert_int_equal(shm_ring_attach(&r, mem, len, 16, GEN, SHM_RING_CONSUMER), -EPROTO);
    assert_false(shm_ring_valid(mem, len, 16, GEN));

    assert_int_equal(t_desc_ring_init(mem, len, 16, GEN), 0);
    assert_true(shm_ring_valid(mem, len, 16, GEN));
    assert_int_equal(shm_ring_attach(&r, mem, len, 16, GEN + 1, SHM_RING_CONSUMER), -ESTALE);
    assert_int_equal(shm_ring_attach(&r, mem, len, 8, GEN, SHM_RING_CONSUMER), -EMSGSIZE);
    assert_int_equal(shm_ring_attach(&r, mem, len - 64, 16, GEN, SHM_RING_CONSUMER), -EINVAL);
    assert_int_equal(shm_ring_attach(&r, mem, len, 16, GEN, (enum shm_ring_role)3), -EINVAL);
    assert_int_equal(t_desc_ring_attach(&r, mem, len, GEN, SHM_RING_PRODUCER), 0);

    /* Version bump: foreign. */
    ((struct shm_ring *)mem)->version = 2;
    assert_int_equal(shm_ring_check(mem, len, 16, GEN), -EPROTO);
    ((struct shm_ring *)mem)->version = SHM_RING_VERSION;
    /* Geometry scribbled: corrupted. */
    ((struct shm_ring *)mem)->ck.mask = 3;
    assert_int_equal(shm_ring_check(mem, len, 16, GEN), -EUCLEAN);
    ((struct shm_ring *)mem)->ck.mask = 15;
    /* Indices breaking R2 (more published than capacity): corrupted. */
    ((struct shm_ring *)mem)->ck.p_tail = 17;
    ((struct shm_ring *)mem)->ck.p_head = 17;
    assert_int_equal(shm_ring_check(mem, len, 16, GEN), -EUCLEAN);
    assert_int_equal(shm_ring_attach(&r, mem, len, 16, GEN, SHM_RING_CONSUMER), -EUCLEAN);
    /* Consumer ahead of producer: corrupted too (difference wraps). */
    ((struct shm_ring *)mem)->ck.p_tail = 0;
    ((struct shm_ring *)mem)->ck.p_head = 0;
    ((struct shm_ring *)mem)->ck.c_head = 1;
    assert_int_equal(shm_ring_check(mem, len, 16, GEN), -EUCLEAN);
    assert_int_equal(shm_ring_repair(mem, len, 16, GEN, 0), -EUCLEAN);
    assert_true(shm_ring_repair(mem, len, 16, GEN, SHM_RING_REPAIR_RESET) > 0);
    assert_int_equal(shm_ring_check(mem, len, 16, GEN), 0);
    assert_int_equal(shm_ring_count(&r), 0);
    free(mem);
}

static void test_fifo_full_empty(void **state)
{
    size_t len = t_desc_ring_region_size(8);
    void *mem = t_region(len);
    shm_ring_t p, c;
    struct desc d, out;

    assert_int_equal(t_desc_ring_init(mem, len, 8, GEN), 0);
    assert_int_equal(t_desc_ring_attach(&p, mem, len, GEN, SHM_RING_PRODUCER), 0);
    assert_int_equal(t_desc_ring_attach(&c, mem, len, GEN, SHM_RING_CONSUMER), 0);
    assert_int_equal(t_desc_ring_peek(&c, &out), -EAGAIN);
    for (uint32_t i = 0; i < 8; i++) {
        d = (struct desc){ .cell = i, .flags = ~i, .rid = 1000 + i };
        assert_int_equal(t_desc_ring_enqueue(&p, &d), 0);
    }
    /* All capacity slots are usable, then full. */
    assert_int_equal(t_desc_ring_enqueue(&p, &d), -EAGAIN);
    assert_int_equal(shm_ring_count(&c), 8);
    for (uint32_t i = 0; i < 8; i++) {
        assert_int_equal(t_desc_ring_dequeue_burst(&c, &out, 1), 1);
        assert_int_equal(out.cell, i);
        assert_int_equal(out.flags, ~i);
        assert_int_equal(out.rid, 1000 + i);
    }
    assert_int_equal(t_desc_ring_dequeue_burst(&c, &out, 1), -EAGAIN);
    free(mem);
}

static void test_partial_burst_and_wrap(void **state)
{
    size_t len = t_u32_ring_region_size(8);
    void *mem = t_region(len);
    struct shm_ring *h = mem;
    shm_ring_t p, c;
    uint32_t in[12], out[12], next_in = 0, next_out = 0;

    assert_int_equal(t_u32_ring_init(mem, len, 8, GEN), 0);
    /* Start just below the 32-bit wrap so the counters cross it. */
    h->ck.c_head = h->ck.p_tail = h->ck.p_head = UINT32_MAX - 20;
    assert_int_equal(t_u32_ring_attach(&p, mem, len, GEN, SHM_RING_PRODUCER), 0);
    assert_int_equal(t_u32_ring_attach(&c, mem, len, GEN, SHM_RING_CONSUMER), 0);
    for (int round = 0; round < 40; round++) {
        int n;

        for (int i = 0; i < 12; i++)
            in[i] = next_in + (uint32_t)i;
        n = t_u32_ring_enqueue_burst(&p, in, 12);
        assert_true(n > 0 && n <= 8);
        next_in += (uint32_t)n;
        if (round % 3 == 0) /* sometimes leave the ring full */
            assert_int_equal(t_u32_ring_enqueue_burst(&p, in, 1), -EAGAIN);
        n = t_u32_ring_dequeue_burst(&c, out, (uint32_t)(round % 7) + 1);
        assert_true(n > 0);
        for (int i = 0; i < n; i++)
            assert_int_equal(out[i], next_out++);
        if (round % 3 == 0) {
            while ((n = t_u32_ring_dequeue_burst(&c, out, 12)) > 0)
                for (int i = 0; i < n; i++)
                    assert_int_equal(out[i], next_out++);
        }
    }
    assert_true(h->ck.p_tail < 1000); /* it did wrap */
    assert_int_equal(shm_ring_check(mem, len, 4, GEN), 0);
    free(mem);
}

/* Two-step consume: what is peeked and not released comes back to the next
 * consumer; what is released never does. */
static void test_peek_release_replay(void **state)
{
    size_t len = t_u32_ring_region_size(16);
    void *mem = t_region(len);
    shm_ring_t p, c;
    uint32_t v[16], out[16];
    const uint32_t *one;

    for (uint32_t i = 0; i < 16; i++)
        v[i] = i;
    assert_int_equal(t_u32_ring_init(mem, len, 16, GEN), 0);
    assert_int_equal(t_u32_ring_attach(&p, mem, len, GEN, SHM_RING_PRODUCER), 0);
    assert_int_equal(t_u32_ring_attach(&c, mem, len, GEN, SHM_RING_CONSUMER), 0);
    assert_int_equal(t_u32_ring_enqueue_burst(&p, v, 10), 10);

    assert_int_equal(t_u32_ring_peek_burst(&c, out, 3), 3); /* 0 1 2 */
    assert_int_equal(out[0], 0);
    assert_int_equal(t_u32_ring_peek_burst(&c, out, 2), 2); /* 3 4: peeks continue */
    assert_int_equal(out[0], 3);
    assert_int_equal(shm_ring_peeked(&c), 5);
    assert_int_equal(shm_ring_available(&c), 5);
    shm_ring_release(&c, 2); /* 0 1 done */
    assert_int_equal(shm_ring_count(&c), 8);

    /* The consumer "dies": a new handle replays exactly 2 3 4. */
    assert_int_equal(t_u32_ring_attach(&c, mem, len, GEN, SHM_RING_CONSUMER), 0);
    assert_int_equal(t_u32_ring_peek_burst(&c, out, 16), 8);
    for (uint32_t i = 0; i < 8; i++)
        assert_int_equal(out[i], 2 + i);
    shm_ring_release(&c, 8);
    assert_int_equal(t_u32_ring_peek_burst(&c, out, 1), -EAGAIN);

    /* Zero-copy peek, one at a time. */
    assert_int_equal(t_u32_ring_enqueue_burst(&p, v, 2), 2);
    one = shm_ring_peek_one(&c);
    assert_non_null(one);
    assert_int_equal(*one, 0);
    one = shm_ring_peek_one(&c);
    assert_non_null(one);
    assert_int_equal(*one, 1);
    assert_null(shm_ring_peek_one(&c));
    shm_ring_release(&c, 2);
    free(mem);
}

/* Releasing more than was peeked would hand the producer slots still
 * unread: FAVO_ASSERT (R5) aborts instead. */
static void test_release_too_many_aborts(void **state)
{
    size_t len = t_u32_ring_region_size(4);
    void *mem = t_region(len);
    shm_ring_t c;
    pid_t pid;
    int st;

    assert_int_equal(t_u32_ring_init(mem, len, 4, GEN), 0);
    assert_int_equal(t_u32_ring_attach(&c, mem, len, GEN, SHM_RING_CONSUMER), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(2); /* the assert message is expected */
        shm_ring_release(&c, 1);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    assert_int_equal(((struct shm_ring *)mem)->ck.c_head, 0);
    free(mem);
}

static void test_reserve_commit_repair(void **state)
{
    size_t len = t_desc_ring_region_size(8);
    void *mem = t_region(len);
    shm_ring_t p, c;
    struct desc *slot, out[8];

    assert_int_equal(t_desc_ring_init(mem, len, 8, GEN), 0);
    assert_int_equal(t_desc_ring_attach(&p, mem, len, GEN, SHM_RING_PRODUCER), 0);
    assert_int_equal(t_desc_ring_attach(&c, mem, len, GEN, SHM_RING_CONSUMER), 0);
    for (uint32_t i = 0; i < 3; i++) {
        slot = shm_ring_reserve(&p);
        assert_non_null(slot);
        *slot = (struct desc){ .cell = i, .rid = i };
    }
    /* Reserved is invisible. */
    assert_int_equal(t_desc_ring_peek_burst(&c, out, 8), -EAGAIN);
    assert_int_equal(shm_ring_commit(&p), 3);
    assert_int_equal(t_desc_ring_peek_burst(&c, out, 8), 3);
    assert_int_equal(out[2].cell, 2);
    shm_ring_release(&c, 3);

    /* A copying burst after reservations commits both, reserved first. */
    slot = shm_ring_reserve(&p);
    slot->cell = 100;
    out[0] = (struct desc){ .cell = 101 };
    assert_int_equal(t_desc_ring_enqueue(&p, &out[0]), 0);
    assert_int_equal(t_desc_ring_dequeue_burst(&c, out, 8), 2);
    assert_int_equal(out[0].cell, 100);
    assert_int_equal(out[1].cell, 101);

    /* Reserve until full, then the producer dies before commit. */
    for (int i = 0; i < 8; i++)
        assert_non_null(shm_ring_reserve(&p));
    assert_null(shm_ring_reserve(&p));
    assert_int_equal(shm_ring_check(mem, len, 16, GEN), 0); /* R3 holds */
    assert_int_equal(shm_ring_repair(mem, len, 16, GEN, 0), 8);
    assert_int_equal(shm_ring_repair(mem, len, 16, GEN, 0), 0);
    assert_int_equal(t_desc_ring_attach(&p, mem, len, GEN, SHM_RING_PRODUCER), 0);
    assert_int_equal(t_desc_ring_peek_burst(&c, out, 8), -EAGAIN);
    out[0].cell = 7;
    assert_int_equal(t_desc_ring_enqueue(&p, &out[0]), 0);
    assert_int_equal(t_desc_ring_dequeue_burst(&c, out, 8), 1);
    assert_int_equal(out[0].cell, 7);
    /* repair refuses foreign and stale regions like attach does. */
    assert_int_equal(shm_ring_repair(mem, len, 16, GEN + 1, 0), -ESTALE);
    free(mem);
}

/* Seeded random operations against a plain array queue, with consumer and
 * producer restarts: the ring must agree with the model at every step. */
static void test_random_model(void **state)
{
    enum { CAP = 32, N = 200000 };
    size_t len = t_u32_ring_region_size(CAP);
    void *mem = t_region(len);
    uint32_t *model = calloc(N + 64, sizeof(uint32_t));
    uint32_t buf[64];
    uint64_t seed = 42;
    /* model: [released, peeked_end) peeked, [peeked_end, published) ready */
    uint32_t released = 0, peeked_end = 0, published = 0, next = 0;
    shm_ring_t p, c;

    assert_int_equal(t_u32_ring_init(mem, len, CAP, GEN), 0);
    assert_int_equal(t_u32_ring_attach(&p, mem, len, GEN, SHM_RING_PRODUCER), 0);
    assert_int_equal(t_u32_ring_attach(&c, mem, len, GEN, SHM_RING_CONSUMER), 0);
    while (next < N) {
        uint64_t x = t_rand(&seed);
        uint32_t k = (uint32_t)(x >> 8) % 40 + 1;
        int n;

        switch (x % 6) {
        case 0:
        case 1: /* produce a burst */
            k = FAVO_MIN(k, (uint32_t)(N - next));
            for (uint32_t i = 0; i < k; i++)
                buf[i] = (uint32_t)t_rand(&seed);
            n = t_u32_ring_enqueue_burst(&p, buf, k);
            if (published - released == CAP) {
                assert_int_equal(n, -EAGAIN);
                break;
            }
            assert_int_equal(n, (int)FAVO_MIN(k, CAP - (published - released)));
            memcpy(model + published, buf, (size_t)n * 4);
            published += (uint32_t)n;
            next += (uint32_t)n;
            break;
        case 2:
        case 3: /* peek a burst */
            n = t_u32_ring_peek_burst(&c, buf, k);
            if (published == peeked_end) {
                assert_int_equal(n, -EAGAIN);
                break;
            }
            assert_int_equal(n, (int)FAVO_MIN(k, published - peeked_end));
            assert_memory_equal(buf, model + peeked_end, (size_t)n * 4);
            peeked_end += (uint32_t)n;
            break;
        case 4: /* release some of what was peeked */
            k = FAVO_MIN(k, peeked_end - released);
            shm_ring_release(&c, k);
            released += k;
            break;
        case 5: /* a restart: consumer replays its peeks, producer resumes */
            if (x & 0x100) {
                assert_int_equal(t_u32_ring_attach(&c, mem, len, GEN, SHM_RING_CONSUMER), 0);
                peeked_end = released;
            } else {
                assert_int_equal(t_u32_ring_attach(&p, mem, len, GEN, SHM_RING_PRODUCER), 0);
            }
            break;
        }
        assert_int_equal(shm_ring_count(&c), published - released);
    }
    free(model);
    free(mem);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_region_size),
        cmocka_unit_test(test_init_attach_errors),
        cmocka_unit_test(test_fifo_full_empty),
        cmocka_unit_test(test_partial_burst_and_wrap),
        cmocka_unit_test(test_peek_release_replay),
        cmocka_unit_test(test_release_too_many_aborts),
        cmocka_unit_test(test_reserve_commit_repair),
        cmocka_unit_test(test_random_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
