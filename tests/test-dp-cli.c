/*
 * test-dp-cli.c - the favo command line: `favo --help`, every subcommand's
 * --help, unknown commands and options, environment fallback, and jemalloc
 * as the allocator of the release binary.
 */
#include "t_util.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

static const char *favo;

static void test_top_help(void **state)
{
    char *out, *err;
    char *argv[] = { (char *)favo, (char *)"--help", NULL };
    static const char *const cmds[] = { "serve", "run", "tokenize", "model",
                                        "keys", "stat", "bench", "selftest" };

    assert_int_equal(t_run(argv, &out, &err), 0);
    for (unsigned i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
        assert_non_null(strstr(out, cmds[i]));
    free(out);
    free(err);
}

static void test_each_help(void **state)
{
    static const char *const cmds[] = { "serve", "run", "tokenize", "model",
                                        "keys", "stat", "bench", "selftest" };

    for (unsigned i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        char *out, *err;
        char *argv[] = { (char *)favo, (char *)cmds[i], (char *)"--help", NULL };

        assert_int_equal(t_run(argv, &out, &err), 0);
        assert_non_null(strstr(out, "usage: favo "));
        assert_non_null(strstr(out, "--help"));
        free(out);
        free(err);
    }
}

static void test_serve_help_flags(void **state)
{
    char *out, *err;
    char *argv[] = { (char *)favo, (char *)"serve", (char *)"--help", NULL };
    static const char *const flags[] = { "--model", "--host", "--port", "--config", "--keys",
                                         "--instance", "--backend", "--tls-cert", "--tls-key",
                                         "--cores", "--poll", "--kv-cache-type" };

    assert_int_equal(t_run(argv, &out, &err), 0);
    for (unsigned i = 0; i < sizeof(flags) / sizeof(flags[0]); i++)
        assert_non_null(strstr(out, flags[i]));
    free(out);
    free(err);
}

static void test_unknown(void **state)
{
    char *out, *err;
    char *a1[] = { (char *)favo, (char *)"frobnicate", NULL };
    char *a2[] = { (char *)favo, (char *)"stat", (char *)"--no-such-flag", NULL };
    char *a3[] = { (char *)favo, (char *)"bench", (char *)"--rate", (char *)"fast", NULL };

    assert_int_equal(t_run(a1, &out, &err), 2);
    assert_non_null(strstr(err, "unknown command 'frobnicate'"));
    free(out);
    free(err);
    assert_int_equal(t_run(a2, &out, &err), 2);
    assert_non_null(strstr(err, "unknown option '--no-such-flag'"));
    free(out);
    free(err);
    assert_int_equal(t_run(a3, &out, &err), 2);
    assert_non_null(strstr(err, "--rate"));
    assert_non_null(strstr(err, "'fast'"));
    free(out);
    free(err);
}

/* --kv-cache-type takes auto, f16 or f32; anything else is named, at
 * once, by serve and run (exit 1, nothing started). */
static void test_kv_cache_type_checked(void **state)
{
    char model[1024], *out, *err;

    snprintf(model, sizeof(model), "%s/SmolLM2-135M-Instruct.Q4_1.gguf",
             t_env("FAVO_MODELS", "models"));
    if (access(model, R_OK))
        skip();
    char *a1[] = { (char *)favo, (char *)"serve", (char *)"--model", model,
                   (char *)"--kv-cache-type", (char *)"f8", (char *)"--port", (char *)"0", NULL };
    char *a2[] = { (char *)favo, (char *)"run", (char *)"--model", model, (char *)"--kv-cache-type",
                   (char *)"q8", (char *)"-p", (char *)"hi", (char *)"-n", (char *)"1", NULL };

    assert_int_equal(t_run(a1, &out, &err), 1);
    assert_non_null(strstr(err, "--kv-cache-type must be auto, f16 or f32 (got 'f8')"));
    free(out);
    free(err);
    assert_int_equal(t_run(a2, &out, &err), 1);
    assert_non_null(strstr(err, "--kv-cache-type must be auto, f16 or f32 (got 'q8')"));
    free(out);
    free(err);
}

static void test_env_checked(void **state)
{
    char *out, *err;
    char *argv[] = { (char *)favo, (char *)"stat", (char *)"--json", NULL };

    setenv("FAVO_WATCH", "soon", 1);
    assert_int_equal(t_run(argv, &out, &err), 2);
    assert_non_null(strstr(err, "FAVO_WATCH"));
    unsetenv("FAVO_WATCH");
    free(out);
    free(err);
}

static void test_version_allocator(void **state)
{
    char *out, *err;
    char *argv[] = { (char *)favo, (char *)"--version", NULL };

    assert_int_equal(t_run(argv, &out, &err), 0);
    assert_non_null(strstr(out, "favo "));
#ifndef FAVO_SANITIZED
    /* The release binary must run on jemalloc (foundation issue). */
    assert_non_null(strstr(out, "allocator: jemalloc"));
#endif
    free(out);
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_top_help),
        cmocka_unit_test(test_each_help),
        cmocka_unit_test(test_serve_help_flags),
        cmocka_unit_test(test_unknown),
        cmocka_unit_test(test_kv_cache_type_checked),
        cmocka_unit_test(test_env_checked),
        cmocka_unit_test(test_version_allocator),
    };

    favo = t_env("FAVO_BIN", "build/favo");
    return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
