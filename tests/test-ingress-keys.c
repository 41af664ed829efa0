/*
 * test-ingress-keys.c - the API keys file (ingress/ing_keys.h): parsing good
 * and bad files (errors name file, line, column and field), lookup of right,
 * wrong and missing keys, the constant-time compare (CRYPTO_memcmp is
 * interposed here and counted), format/parse round trip, and `favo keys
 * add/list/revoke` end to end through FAVO_BIN in a temporary folder: the
 * printed key authenticates, list, stderr and the file never show it, mode
 * 0600, concurrent adds lose nothing.
 */
#include "t_util.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <dirent.h>
#include <cmocka.h>

#include "ing_keys.h"

/*
 * Interposed: the executable's definition wins over libcrypto's for every
 * caller (ing_keys.c and libcrypto itself), so lookups can be seen to use
 * it. Constant time like the original: OR of all byte differences.
 */
static unsigned long n_ct_compare;
int CRYPTO_memcmp(const void *in_a, const void *in_b, size_t len);
int CRYPTO_memcmp(const void *in_a, const void *in_b, size_t len)
{
    const volatile unsigned char *a = in_a, *b = in_b;
    unsigned char x = 0;

    for (size_t i = 0; i < len; i++)
        x |= a[i] ^ b[i];
    n_ct_compare++;
    return x;
}

static void hex_of(const char *key, char out[65])
{
    uint8_t d[32];

    assert_int_equal(ing_keys_sha256(key, strlen(key), d), 0);
    ing_keys_hex(d, out);
}

/* A file with three keys (two share user bob and org acme), limits for bob
 * and acme, a comment and blank lines. */
static char *good_file(void)
{
    char h1[65], h2[65], h3[65], *s;

    hex_of("favo-one", h1);
    hex_of("favo-two", h2);
    hex_of("favo-three", h3);
    assert_true(asprintf(&s,
                         "# test keys\n"
                         "\n"
                         "user name=bob rpm=10 tpm=1000\n"
                         "org name=acme rpm=20 tpm=5000\n"
                         "key sha256=%s name=one tenant=acme user=bob org=acme rpm=5 tpm=100 priority=3\n"
                         "key\tsha256=%s  name=two tenant=acme user=bob org=acme rpm=6 tpm=200\n"
                         "   \t\n"
                         "key tpm=0 rpm=0 name=three tenant=solo sha256=%s\n",
                         h1, h2, h3) > 0);
    return s;
}

static void test_parse_good(void **state)
{
    struct ing_keys ks;
    char *txt = good_file();
    uint32_t b[3], rpm, tpm;
    const struct ing_key *k;

    assert_int_equal(ing_keys_parse(&ks, "k.conf", txt, strlen(txt)), 0);
    assert_int_equal(ks.nkeys, 3);
    assert_int_equal(ks.nusers, 1);
    assert_int_equal(ks.norgs, 1);
    assert_string_equal(ks.keys[0].name, "one");
    assert_string_equal(ks.keys[0].tenant, "acme");
    assert_string_equal(ks.keys[0].user, "bob");
    assert_string_equal(ks.keys[0].org, "acme");
    assert_int_equal(ks.keys[0].rpm, 5);
    assert_int_equal(ks.keys[0].tpm, 100);
    assert_int_equal(ks.keys[0].priority, 3);
    assert_int_equal(ks.keys[0].line, 5);
    assert_int_equal(ks.keys[1].priority, 0);
    assert_int_equal(ks.keys[1].line, 6);
    assert_string_equal(ks.keys[2].user, "");
    assert_int_equal(ks.keys[2].user_id, ING_KEYS_NONE);

    /* buckets: keys 0..2, user bob 3, org acme 4 */
    assert_int_equal(ing_keys_nbuckets(&ks), 5);
    k = ing_keys_lookup(&ks, "favo-two", 8);
    assert_non_null(k);
    assert_int_equal(ing_keys_buckets(&ks, k, b), 3);
    assert_int_equal(b[0], 1);
    assert_int_equal(b[1], 3);
    assert_int_equal(b[2], 4);
    assert_int_equal(ing_keys_bucket_limits(&ks, b[1], &rpm, &tpm), 0);
    assert_int_equal(rpm, 10);
    assert_int_equal(tpm, 1000);
    assert_int_equal(ing_keys_bucket_limits(&ks, b[2], &rpm, &tpm), 0);
    assert_int_equal(rpm, 20);
    assert_int_equal(tpm, 5000);
    assert_int_equal(ing_keys_bucket_limits(&ks, 5, &rpm, &tpm), -ERANGE);
    k = ing_keys_lookup(&ks, "favo-three", 10);
    assert_non_null(k);
    assert_int_equal(ing_keys_buckets(&ks, k, b), 1);
    assert_int_equal(b[0], 2);

    /* without a trailing newline, and a user named only by a key: no limit */
    {
        struct ing_keys k2;
        char h[65], *t;

        hex_of("x", h);
        assert_true(asprintf(&t, "key sha256=%s name=a tenant=t user=u rpm=1 tpm=1", h) > 0);
        assert_int_equal(ing_keys_parse(&k2, "k", t, strlen(t)), 0);
        assert_int_equal(k2.nusers, 1);
        assert_int_equal(ing_keys_bucket_limits(&k2, 1, &rpm, &tpm), 0);
        assert_int_equal(rpm, 0);
        assert_int_equal(tpm, 0);
        ing_keys_free(&k2);
        free(t);
    }
    ing_keys_free(&ks);
    free(txt);
}

/* Each bad file gives -EINVAL/-EEXIST and a message holding `want`. */
static void test_parse_bad(void **state)
{
    char h[65], h2[65];
    struct {
        const char *fmt; /* %1$s: a good digest, %2$s: another */
        int rc;
        const char *want;
    } cases[] = {
        { "# c\nkey sha256=%1$s name=a tenant=t rpm=1x tpm=2\n", -EINVAL,
          "bad.conf:2:93: field 'rpm': '1x' is not a whole number 0..1000000000" },
        { "key sha256=%1$s name=a tenant=t rpm=1 tpm=1000000001\n", -EINVAL,
          "bad.conf:1:99: field 'tpm': '1000000001' is not a whole number" },
        { "key sha256=%1$s name=a tenant=t rpm=1 tpm=2 priority=256\n", -EINVAL,
          "bad.conf:1:105: field 'priority': '256'" },
        { "key sha256=abc name=a tenant=t rpm=1 tpm=2\n", -EINVAL,
          "bad.conf:1:5: field 'sha256': want 64 hex digits, got 3 bytes" },
        { "key sha256=%1$.63sg name=a tenant=t rpm=1 tpm=2\n", -EINVAL,
          "bad.conf:1:5: field 'sha256': byte at column 75 is not a hex digit" },
        { "\n\nkey sha256=%1$s tenant=t rpm=1 tpm=2\n", -EINVAL,
          "bad.conf:3:1: field 'name' is missing" },
        { "key sha256=%1$s name=a rpm=1 tpm=2\n", -EINVAL, "bad.conf:1:1: field 'tenant' is missing" },
        { "key sha256=%1$s name=a tenant=t tpm=2\n", -EINVAL, "field 'rpm' is missing" },
        { "key sha256=%1$s name=a tenant=t rpm=1\n", -EINVAL, "field 'tpm' is missing" },
        { "key sha256=%1$s name=a tenant=t rpm=1 tpm=2 rpm=3\n", -EINVAL,
          "bad.conf:1:105: field 'rpm' given twice (first at column 93)" },
        { "key sha256=%1$s name=a tenant=t rpm=1 tpm=2 color=red\n", -EINVAL,
          "bad.conf:1:105: unknown field 'color'" },
        { "key sha256=%1$s name=a tenant=t rpm=1 tpm=2 junk\n", -EINVAL,
          "bad.conf:1:105: 'junk' is not field=value" },
        { "key sha256=%1$s name=a tenant=t\"x rpm=1 tpm=2\n", -EINVAL,
          "bad.conf:1:84: field 'tenant': 't\"x' holds a byte outside" },
        { "key sha256=%1$s name= tenant=t rpm=1 tpm=2\n", -EINVAL,
          "bad.conf:1:77: field 'name': '' is empty" },
        { "key sha256=%1$s name=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa "
          "tenant=t rpm=1 tpm=2\n", -EINVAL, "bad.conf:1:77: field 'name': 'aaaa" },
        { "key sha256=%1$s name=a tenant=t rpm=1 tpm=2\nkey sha256=%2$s name=a tenant=t "
          "rpm=1 tpm=2\n", -EEXIST, "bad.conf:2:77: field 'name': key 'a' already exists (line 1)" },
        { "key sha256=%1$s name=a tenant=t rpm=1 tpm=2\nkey sha256=%1$s name=b tenant=t "
          "rpm=1 tpm=2\n", -EEXIST, "bad.conf:2:77: field 'sha256': same digest as key 'a' (line 1)" },
        { "user name=u rpm=1 tpm=2\nuser name=u rpm=1 tpm=2\n", -EEXIST,
          "bad.conf:2:6: field 'name': user 'u' already has limits (line 1)" },
        { "org name=o rpm=1 tpm=2 tenant=t\n", -EINVAL,
          "bad.conf:1:24: field 'tenant' does not belong on an org line" },
        { "org name=o rpm=1\n", -EINVAL, "bad.conf:1:1: field 'tpm' is missing from this org line" },
        { "keys sha256=%1$s\n", -EINVAL, "bad.conf:1:1: line starts with 'keys'" },
        { " key sha256=%1$s name=a tenant=t rpm=1 tpm=2\n", -EINVAL,
          "bad.conf:1:1: line starts with whitespace" },
        { "key sha256=%1$s name=a tenant=t rpm=1 tpm=2\r\n", -EINVAL,
          "bad.conf:1:104: byte 0x0d is not printable ASCII" },
        { "# caf\xc3\xa9\n", -EINVAL, "bad.conf:1:6: byte 0xc3" },
    };

    hex_of("a", h);
    hex_of("b", h2);
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct ing_keys ks;
        char *txt;
        int rc;

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
#pragma GCC diagnostic ignored "-Wformat-extra-args"
        assert_true(asprintf(&txt, cases[i].fmt, h, h2) > 0);
#pragma GCC diagnostic pop
        rc = ing_keys_parse(&ks, "bad.conf", txt, strlen(txt));
        if (rc != cases[i].rc || !strstr(ks.err, cases[i].want))
            fail_msg("case %u: got %d '%s', want %d '%s'", i, rc, ks.err, cases[i].rc,
                     cases[i].want);
        assert_int_equal(ks.nkeys, 0);
        assert_null(ks.keys);
        free(txt);
    }

    /* a line over the limit */
    {
        struct ing_keys ks;
        size_t n = ING_KEYS_LINE_MAX + 10;
        char *txt = malloc(n + 1);

        memset(txt, 'x', n);
        memcpy(txt, "# ", 2);
        txt[n] = 0;
        assert_int_equal(ing_keys_parse(&ks, "long.conf", txt, n), -EINVAL);
        assert_non_null(strstr(ks.err, "long.conf:1:1025: line is longer than 1024 bytes"));
        free(txt);
    }
    /* a missing file */
    {
        struct ing_keys ks;

        assert_int_equal(ing_keys_load(&ks, "/nonexistent/keys.conf"), -ENOENT);
        assert_non_null(strstr(ks.err, "/nonexistent/keys.conf"));
    }
}

static void test_lookup(void **state)
{
    struct ing_keys ks, empty;
    char *txt = good_file(), big[ING_KEYS_TOKEN_MAX + 2];
    const struct ing_key *k;
    unsigned long before;

    assert_int_equal(ing_keys_parse(&ks, "k.conf", txt, strlen(txt)), 0);
    k = ing_keys_lookup(&ks, "favo-one", 8);
    assert_non_null(k);
    assert_string_equal(k->name, "one");
    k = ing_keys_lookup(&ks, "favo-three", 10);
    assert_non_null(k);
    assert_string_equal(k->name, "three");

    /* wrong: one byte off, a prefix, an extension, case */
    assert_null(ing_keys_lookup(&ks, "favo-onf", 8));
    assert_null(ing_keys_lookup(&ks, "favo-on", 7));
    assert_null(ing_keys_lookup(&ks, "favo-one ", 9));
    assert_null(ing_keys_lookup(&ks, "FAVO-ONE", 8));
    /* missing / empty / too long */
    assert_null(ing_keys_lookup(&ks, "", 0));
    assert_null(ing_keys_lookup(&ks, NULL, 0));
    memset(big, 'a', sizeof(big));
    assert_null(ing_keys_lookup(&ks, big, sizeof(big)));
    ing_keys_init(&empty);
    assert_null(ing_keys_lookup(&empty, "favo-one", 8));

    /* constant-time compare: a hit and a miss each go through it */
    before = n_ct_compare;
    assert_non_null(ing_keys_lookup(&ks, "favo-two", 8));
    assert_true(n_ct_compare > before);
    before = n_ct_compare;
    assert_null(ing_keys_lookup(&ks, "favo-nope", 9));
    assert_true(n_ct_compare > before);
    /* many random misses: every one compares at least once */
    before = n_ct_compare;
    for (int i = 0; i < 1000; i++) {
        char tok[32];

        snprintf(tok, sizeof(tok), "favo-miss-%d", i);
        assert_null(ing_keys_lookup(&ks, tok, strlen(tok)));
    }
    assert_true(n_ct_compare - before >= 1000);
    ing_keys_free(&ks);
    free(txt);
}

static void test_auth_header(void **state)
{
    struct ing_keys ks;
    char *txt = good_file();
    const struct ing_key *k;
    const char *why;
    static const struct {
        const char *h;
        int rc;
    } cases[] = {
        { "Bearer favo-one", 0 },
        { "bearer favo-one", 0 },
        { "BEARER   favo-two", 0 },
        { "Bearer favo-onE", -EACCES },
        { "Bearer favo-one ", -EINVAL },   /* trailing space: not token68 */
        { "Bearer favo\"one", -EINVAL },
        { "Bearer", -EINVAL },
        { "Bearer ", -ENOENT },
        { "Bearer    ", -ENOENT },
        { "Basic Zm9vOmJhcg==", -EINVAL },
        { "Bearerfavo-one", -EINVAL },
        { "", -ENOENT },
    };

    assert_int_equal(ing_keys_parse(&ks, "k.conf", txt, strlen(txt)), 0);
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int rc = ing_keys_auth(&ks, cases[i].h, strlen(cases[i].h), &k, &why);

        if (rc != cases[i].rc)
            fail_msg("'%s': %d, want %d", cases[i].h, rc, cases[i].rc);
        if (rc) {
            assert_null(k);
            assert_non_null(why);
            assert_null(strstr(why, "favo-")); /* never echoes the token */
        } else {
            assert_non_null(k);
            assert_null(why);
        }
    }
    assert_int_equal(ing_keys_auth(&ks, NULL, 0, &k, &why), -ENOENT);
    assert_non_null(strstr(why, "Missing API key"));
    assert_int_equal(ing_keys_auth(&ks, "Bearer favo-three", 17, &k, &why), 0);
    assert_string_equal(k->name, "three");
    ing_keys_free(&ks);
    free(txt);
}

/* Many keys: the table finds every one, misses none, and add/revoke keep it
 * right; format -> parse round-trips. */
static void test_many_and_roundtrip(void **state)
{
    enum { N = 3000 };
    struct ing_keys ks, back;
    static char keys[N][ING_KEYS_KEY_LEN + 1];
    char *txt;
    size_t len;

    ing_keys_init(&ks);
    for (int i = 0; i < N; i++) {
        struct ing_key k;

        memset(&k, 0, sizeof(k));
        assert_int_equal(ing_keys_generate(keys[i], k.sha256), 0);
        assert_int_equal(strlen(keys[i]), ING_KEYS_KEY_LEN);
        assert_memory_equal(keys[i], "favo-", 5);
        for (int j = 5; j < ING_KEYS_KEY_LEN; j++)
            assert_true(strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                               "0123456789-_", keys[i][j]));
        snprintf(k.name, sizeof(k.name), "k%d", i);
        snprintf(k.tenant, sizeof(k.tenant), "t%d", i % 7);
        if (i % 3 == 0)
            snprintf(k.user, sizeof(k.user), "u%d", i % 11);
        k.rpm = (uint32_t)i;
        k.tpm = (uint32_t)i * 10;
        k.priority = (uint32_t)i % 256;
        assert_int_equal(ing_keys_add(&ks, &k), 0);
    }
    {   /* duplicate name and bad name are refused */
        struct ing_key k = ks.keys[5];

        assert_int_equal(ing_keys_add(&ks, &k), -EEXIST);
        k.sha256[0] ^= 1;
        strcpy(k.name, "bad name");
        assert_int_equal(ing_keys_add(&ks, &k), -EINVAL);
        assert_non_null(strstr(ks.err, "field 'name'"));
    }
    for (int i = 0; i < N; i++) {
        const struct ing_key *k = ing_keys_lookup(&ks, keys[i], ING_KEYS_KEY_LEN);

        assert_non_null(k);
        assert_int_equal(k->rpm, (uint32_t)i);
    }
    assert_int_equal(ing_keys_format(&ks, &txt, &len), 0);
    assert_null(strstr(txt, "favo-"));   /* no key in the file */
    assert_int_equal(ing_keys_parse(&back, "rt", txt, len), 0);
    assert_int_equal(back.nkeys, N);
    for (int i = 0; i < N; i++) {
        const struct ing_key *a = &ks.keys[i], *b = &back.keys[i];

        assert_memory_equal(a->sha256, b->sha256, 32);
        assert_string_equal(a->name, b->name);
        assert_string_equal(a->tenant, b->tenant);
        assert_string_equal(a->user, b->user);
        assert_int_equal(a->rpm, b->rpm);
        assert_int_equal(a->tpm, b->tpm);
        assert_int_equal(a->priority, b->priority);
    }
    /* revoke by name and by digest prefix; ambiguous / short prefixes refused */
    {
        char hx[65];

        assert_int_equal(ing_keys_revoke(&ks, "k7"), 0);
        assert_null(ing_keys_lookup(&ks, keys[7], ING_KEYS_KEY_LEN));
        ing_keys_hex(ks.keys[100].sha256, hx); /* k101 now sits at index 100 */
        hx[12] = 0;
        assert_int_equal(ing_keys_revoke(&ks, hx), 0);
        assert_null(ing_keys_lookup(&ks, keys[101], ING_KEYS_KEY_LEN));
        assert_int_equal(ing_keys_revoke(&ks, "abc"), -ENOENT);
        assert_int_equal(ing_keys_revoke(&ks, "k7"), -ENOENT);
        for (int i = 0; i < N; i++)
            if (i != 7 && i != 101)
                assert_non_null(ing_keys_lookup(&ks, keys[i], ING_KEYS_KEY_LEN));
        assert_int_equal(ks.nkeys, N - 2);
    }
    free(txt);
    ing_keys_free(&back);
    ing_keys_free(&ks);
}

static char *run_favo(const char *favo, int want_rc, ...)
{
    char *argv[32], *out = NULL, *err = NULL;
    va_list ap;
    int n = 0, rc;

    argv[n++] = (char *)favo;
    argv[n++] = (char *)"keys";
    va_start(ap, want_rc);
    for (char *a; (a = va_arg(ap, char *));)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    rc = t_run(argv, &out, &err);
    if (rc != want_rc)
        fail_msg("favo keys %s: exit %d, want %d; stderr: %s", argv[2], rc, want_rc,
                 err ? err : "");
    free(err);
    return out;
}

static void test_cli(void **state)
{
    const char *favo = getenv("FAVO_BIN");
    char *dir, path[4096], *out, *file, key[128];
    struct ing_keys ks;
    const struct ing_key *k;
    struct stat st;
    DIR *d;
    struct dirent *e;

    if (!favo || access(favo, X_OK))
        skip();
    dir = t_tmpdir();
    assert_non_null(dir);
    snprintf(path, sizeof(path), "%s/keys.conf", dir);

    {
        char *argv[] = { (char *)favo, (char *)"keys", (char *)"add", (char *)"--keys", path,
                         (char *)"--tenant", (char *)"acme", (char *)"--name", (char *)"ci",
                         (char *)"--user", (char *)"bob", (char *)"--org", (char *)"acme-org",
                         (char *)"--rpm", (char *)"60", (char *)"--tpm", (char *)"9000",
                         (char *)"--priority", (char *)"2", NULL };
        char *err = NULL;

        assert_int_equal(t_run(argv, &out, &err), 0);
        assert_non_null(out);
        assert_non_null(err);
        assert_non_null(strstr(err, "added 'ci'"));
        /* exactly one line on stdout: the key; never on stderr */
        assert_int_equal(strlen(out), ING_KEYS_KEY_LEN + 1);
        assert_int_equal(out[ING_KEYS_KEY_LEN], '\n');
        memcpy(key, out, ING_KEYS_KEY_LEN);
        key[ING_KEYS_KEY_LEN] = 0;
        assert_null(strstr(err, key + 5));
        free(err);
    }
    assert_memory_equal(key, "favo-", 5);
    free(out);

    out = run_favo(favo, 0, "add", "--keys", path, "--tenant", "other", "--rpm", "1",
                   "--tpm", "2", NULL);
    free(out);
    /* a duplicate name fails and leaves the file alone */
    out = run_favo(favo, 1, "add", "--keys", path, "--tenant", "x", "--name", "ci", "--rpm",
                   "1", "--tpm", "2", NULL);
    assert_true(!out || !*out);   /* no key printed for a failed add */
    free(out);
    out = run_favo(favo, 2, "add", "--keys", path, "--name", "x", "--rpm", "1", "--tpm", "2",
                   NULL);   /* no --tenant */
    free(out);

    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    file = t_read_file(path, NULL);
    assert_non_null(file);
    assert_null(strstr(file, key));
    assert_null(strstr(file, key + 5));
    free(file);

    assert_int_equal(ing_keys_load(&ks, path), 0);
    assert_int_equal(ks.nkeys, 2);
    k = ing_keys_lookup(&ks, key, strlen(key));
    assert_non_null(k);
    assert_string_equal(k->name, "ci");
    assert_string_equal(k->tenant, "acme");
    assert_string_equal(k->user, "bob");
    assert_string_equal(k->org, "acme-org");
    assert_int_equal(k->rpm, 60);
    assert_int_equal(k->tpm, 9000);
    assert_int_equal(k->priority, 2);
    ing_keys_free(&ks);

    out = run_favo(favo, 0, "list", "--keys", path, NULL);
    assert_non_null(out);
    assert_non_null(strstr(out, "ci"));
    assert_non_null(strstr(out, "acme-org"));
    assert_non_null(strstr(out, "9000"));
    assert_null(strstr(out, key));
    assert_null(strstr(out, key + 5));
    free(out);

    /* no temporary files left behind */
    d = opendir(dir);
    assert_non_null(d);
    while ((e = readdir(d)))
        assert_null(strstr(e->d_name, ".tmp."));
    closedir(d);

    out = run_favo(favo, 0, "revoke", "--keys", path, "ci", NULL);
    free(out);
    out = run_favo(favo, 1, "revoke", "--keys", path, "ci", NULL);
    free(out);
    assert_int_equal(ing_keys_load(&ks, path), 0);
    assert_int_equal(ks.nkeys, 1);
    assert_null(ing_keys_lookup(&ks, key, strlen(key)));
    {   /* revoke the other one by digest prefix */
        char hx[65];

        ing_keys_hex(ks.keys[0].sha256, hx);
        hx[10] = 0;
        ing_keys_free(&ks);
        out = run_favo(favo, 0, "revoke", "--keys", path, hx, NULL);
        free(out);
    }
    assert_int_equal(ing_keys_load(&ks, path), 0);
    assert_int_equal(ks.nkeys, 0);
    ing_keys_free(&ks);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    {   /* concurrent adds serialize on the lock file: none is lost */
        enum { P = 4 };
        pid_t pids[P];

        for (int i = 0; i < P; i++) {
            pids[i] = fork();
            assert_true(pids[i] >= 0);
            if (!pids[i]) {
                char nm[16];
                char *argv[] = { (char *)favo, (char *)"keys", (char *)"add", (char *)"--keys",
                                 path, (char *)"--tenant", (char *)"t", (char *)"--name", nm,
                                 (char *)"--rpm", (char *)"1", (char *)"--tpm", (char *)"1",
                                 NULL };
                char *po = NULL, *pe = NULL;

                snprintf(nm, sizeof(nm), "par%d", i);
                _exit(t_run(argv, &po, &pe) == 0 ? 0 : 1);
            }
        }
        for (int i = 0; i < P; i++) {
            int ws;

            assert_int_equal(waitpid(pids[i], &ws, 0), pids[i]);
            assert_true(WIFEXITED(ws) && WEXITSTATUS(ws) == 0);
        }
        assert_int_equal(ing_keys_load(&ks, path), 0);
        assert_int_equal(ks.nkeys, P);
        ing_keys_free(&ks);
    }
    /* a file others may write is refused: they could add keys */
    assert_int_equal(chmod(path, 0620), 0);
    assert_int_equal(ing_keys_load(&ks, path), -EPERM);
    assert_non_null(strstr(ks.err, "mode 0620"));
    out = run_favo(favo, 1, "list", "--keys", path, NULL);
    free(out);
    assert_int_equal(chmod(path, 0640), 0);  /* group-readable is fine: digests only */
    assert_int_equal(ing_keys_load(&ks, path), 0);
    ing_keys_free(&ks);
    out = run_favo(favo, 2, "frobnicate", "--keys", path, NULL);
    free(out);
    {   /* list of a broken file: the error names file and line */
        FILE *f = fopen(path, "w");
        char *argv[] = { (char *)favo, (char *)"keys", (char *)"list", (char *)"--keys", path,
                         NULL };
        char *err = NULL;

        fputs("# x\nkey name=a\n", f);
        fclose(f);
        assert_int_equal(t_run(argv, &out, &err), 1);
        assert_non_null(strstr(err, "keys.conf:2:"));
        free(out);
        free(err);
    }
    unlink(path);
    snprintf(path, sizeof(path), "%s/keys.conf.lock", dir);
    unlink(path);
    rmdir(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),
        cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_lookup),
        cmocka_unit_test(test_auth_header),
        cmocka_unit_test(test_many_and_roundtrip),
        cmocka_unit_test(test_cli),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
