/*
 * test-shm-spec.c - the specialist table (shm/shm_spec.h): validation
 * naming the field, lookup, applying defaults/cap/priority/TTL, and the
 * double-buffered region: a reader in another process never sees a mix of
 * two tables while the writer publishes as fast as it can (spec inv 1).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm_spec.h"
#include "t_util.h"

static struct shm_spec mk(const char *name)
{
    struct shm_spec s;

    shm_spec_clear(&s);
    snprintf(s.name, sizeof(s.name), "%s", name);
    return s;
}

static void test_validate(void)
{
    struct shm_spec s = mk("classify");
    char err[256];

    T_CHECK(shm_spec_validate(&s, err, sizeof(err)) == 0, "minimal spec: %s", err);
#define BAD(field, mutate)                                                                   \
    do {                                                                                     \
        s = mk("classify");                                                                  \
        mutate;                                                                              \
        err[0] = 0;                                                                          \
        T_CHECK(shm_spec_validate(&s, err, sizeof(err)) == -EINVAL, "%s accepted", field);   \
        T_CHECK(strstr(err, field) && strstr(err, "classify"), "error '%s' lacks %s", err,   \
                field);                                                                      \
    } while (0)
    BAD("temperature", (s.set |= SHM_SPEC_TEMPERATURE, s.temperature = 2.5f));
    BAD("top_p", (s.set |= SHM_SPEC_TOP_P, s.top_p = 0));
    BAD("min_p", (s.set |= SHM_SPEC_MIN_P, s.min_p = 1.5f));
    BAD("top_k", (s.set |= SHM_SPEC_TOP_K, s.top_k = -2));
    BAD("frequency_penalty", (s.set |= SHM_SPEC_FREQ, s.frequency_penalty = 3));
    BAD("presence_penalty", (s.set |= SHM_SPEC_PRESENCE, s.presence_penalty = -3));
    BAD("default_max_tokens",
        (s.set |= SHM_SPEC_MAX_TOKENS, s.default_max_tokens = 100, s.max_tokens_cap = 10));
    BAD("priority", (s.set |= SHM_SPEC_PRIORITY, s.priority = 4));
    BAD("cache_ttl", (s.cache_ttl = 86401));
    BAD("system_prompt", memset(s.system_prompt, 'a', sizeof(s.system_prompt)));
    s = mk("a b");
    T_CHECK(shm_spec_validate(&s, err, sizeof(err)) == -EINVAL && strstr(err, "name"),
            "space in name accepted");
    s = mk("");
    T_CHECK(shm_spec_validate(&s, err, sizeof(err)) == -EINVAL, "empty name accepted");
    /* Unset fields are not checked: their values are never used. */
    s = mk("x");
    s.temperature = 99;
    T_CHECK(shm_spec_validate(&s, err, sizeof(err)) == 0, "unset temperature checked");
#undef BAD
}

static void test_table_apply(void)
{
    static struct shm_spec_table t;
    struct shm_spec s = mk("classify");
    char err[256];

    memset(&t, 0, sizeof(t));
    s.set = SHM_SPEC_TEMPERATURE | SHM_SPEC_MAX_TOKENS | SHM_SPEC_PRIORITY | SHM_SPEC_SEED;
    s.temperature = 0;
    s.default_max_tokens = 8;
    s.max_tokens_cap = 16;
    s.priority = 3;
    s.seed = 42;
    s.cache_ttl = 60;
    T_CHECK(shm_spec_add(&t, &s, err, sizeof(err)) == 0, "add: %s", err);
    T_CHECK(shm_spec_add(&t, &s, err, sizeof(err)) == -EEXIST && strstr(err, "twice"),
            "duplicate: %s", err);
    T_CHECK(shm_spec_table_find(&t, "class", 5) == NULL, "prefix matched");
    T_CHECK(shm_spec_table_find(&t, "classifyx", 9) == NULL, "longer name matched");
    const struct shm_spec *f = shm_spec_table_find(&t, "classify-tail", 8);
    T_CHECK(f != NULL, "not found");
    if (!f)
        return;

    struct shm_spec_gen g = { .temperature = 1, .top_p = 1, .prio = 2 };
    shm_spec_apply(f, 0, &g);
    T_CHECK(g.temperature == 0 && g.max_tokens == 8 && g.prio == 0 && g.cache_ttl == 60 &&
                g.has_seed && g.seed == 42,
            "defaults: t %g max %u prio %u ttl %u", g.temperature, g.max_tokens, g.prio,
            g.cache_ttl);
    g = (struct shm_spec_gen){ .temperature = 0.7f, .max_tokens = 100, .prio = 2 };
    shm_spec_apply(f, SHM_SPEC_TEMPERATURE | SHM_SPEC_MAX_TOKENS | SHM_SPEC_SEED, &g);
    T_CHECK(g.temperature == 0.7f && g.max_tokens == 16 && !g.has_seed,
            "given values kept, cap: t %g max %u", g.temperature, g.max_tokens);
    /* No default max_tokens: the server's choice (0), clamped by the caller. */
    s = mk("free");
    s.max_tokens_cap = 5;
    g = (struct shm_spec_gen){ .prio = 1 };
    shm_spec_apply(&s, 0, &g);
    T_CHECK(g.max_tokens == 0 && shm_spec_cap(&s, 300) == 5 && g.prio == 1,
            "no default: max %u prio %u", g.max_tokens, g.prio);

    for (int i = 1; i < SHM_SPEC_MAX; i++) {
        s = mk("");
        snprintf(s.name, sizeof(s.name), "s%d", i);
        T_CHECK(shm_spec_add(&t, &s, err, sizeof(err)) == 0, "add %d: %s", i, err);
    }
    s = mk("one-too-many");
    T_CHECK(shm_spec_add(&t, &s, err, sizeof(err)) == -ENOSPC, "65th accepted");
}

/* Tables A (every entry's system prompt filled with 'A', n = 3) and B ('B',
 * n = 5): a reader must see n and every byte of one table. */
static void fill(struct shm_spec_table *t, char c, uint32_t n)
{
    memset(t, 0, sizeof(*t));
    for (uint32_t i = 0; i < n; i++) {
        struct shm_spec *s = &t->specs[i];
        shm_spec_clear(s);
        snprintf(s->name, sizeof(s->name), "%c%u", c, i);
        memset(s->system_prompt, c, sizeof(s->system_prompt) - 1);
        s->cache_ttl = n;
    }
    t->n = n;
}

static void test_region(void)
{
    size_t len = shm_spec_region_size();
    struct shm_spec_region *r = mmap(NULL, len, PROT_READ | PROT_WRITE,
                                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    static struct shm_spec_table a, b;
    struct shm_spec out;
    char names[SHM_SPEC_MAX][SHM_SPEC_NAME_MAX];

    T_CHECK(r != MAP_FAILED, "mmap");
    if (r == MAP_FAILED)
        return;
    T_CHECK(shm_spec_find(r, "A0", 2, &out) == -ENOENT, "unformatted region answered");
    shm_spec_init(r);
    T_CHECK(shm_spec_check(r) == 0 && shm_spec_names(r, names, SHM_SPEC_MAX) == 0, "empty");
    fill(&a, 'A', 3);
    fill(&b, 'B', 5);
    uint64_t s1 = shm_spec_publish(r, &a);
    T_CHECK(shm_spec_find(r, "A1", 2, &out) == 0 && out.cache_ttl == 3, "A1 after publish");
    T_CHECK(shm_spec_find(r, "B1", 2, &out) == -ENOENT, "B1 before its publish");
    T_CHECK(shm_spec_publish(r, &b) == s1 + 1 && shm_spec_seq(r) == s1 + 1, "seq");
    T_CHECK(shm_spec_find(r, "A1", 2, &out) == -ENOENT && shm_spec_find(r, "B4", 2, &out) == 0,
            "swap");
    T_CHECK(shm_spec_names(r, names, SHM_SPEC_MAX) == 5 && !strcmp(names[4], "B4"), "names");

    /* A writer that died inside a publish (its buffer's generation left
     * odd) is given up on: -EAGAIN, no names, never a hang. */
    uint64_t *g = &r->buf[shm_spec_seq(r) & 1].gen;
    (*g)++;
    T_CHECK(shm_spec_find(r, "B4", 2, &out) == -EAGAIN, "a dead writer: -EAGAIN");
    T_CHECK(shm_spec_names(r, names, SHM_SPEC_MAX) == 0, "a dead writer: no names");
    (*g)++;
    T_CHECK(shm_spec_find(r, "B4", 2, &out) == 0, "readable again");

    /* A reader process against a writer publishing A and B in turn. */
    pid_t pid = fork();
    if (pid == 0) {
        for (;;) {
            shm_spec_publish(r, &a);
            shm_spec_publish(r, &b);
        }
    }
    unsigned torn = 0, seen_a = 0, seen_b = 0;
    uint64_t t_end = favo_now_ns() + 1000000000ull;
    while (favo_now_ns() < t_end) {
        uint32_t k = shm_spec_names(r, names, SHM_SPEC_MAX);
        char c = names[0][0];
        if (!((k == 3 && c == 'A') || (k == 5 && c == 'B')))
            torn++;
        for (uint32_t i = 0; i < k; i++)
            if (names[i][0] != c)
                torn++;
        const char *want = c == 'A' ? "A2" : "B2";
        if (shm_spec_find(r, want, 2, &out) == 0) {
            char x = out.system_prompt[0];
            if (out.cache_ttl != (x == 'A' ? 3u : 5u))
                torn++;
            for (size_t i = 0; i + 1 < sizeof(out.system_prompt); i += 97)
                if (out.system_prompt[i] != x)
                    torn++;
        }
        seen_a += c == 'A';
        seen_b += c == 'B';
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    T_CHECK(torn == 0, "%u torn reads", torn);
    printf("region: %u reads of A, %u of B, %u torn\n", seen_a, seen_b, torn);
    munmap(r, len);
}

int main(void)
{
    test_validate();
    test_table_apply();
    test_region();
    printf("%s\n", t_failures ? "FAIL" : "ok");
    return t_failures ? 1 : 0;
}
