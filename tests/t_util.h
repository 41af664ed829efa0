/*
 * t_util.h - helpers shared by the test executables (prefix t_).
 *
 * Conventions (STYLE.md 11): one executable per feature, exit 0 pass,
 * 1 fail, 77 skip. Tests that need a path from the build get it from the
 * environment ctest sets: FAVO_BIN (the favo binary), FAVO_BUILD, FAVO_SRC,
 * FAVO_SHARED (../shared), FAVO_VENV_PY, FAVO_MODELS.
 */
#ifndef T_UTIL_H
#define T_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define T_SKIP 77

/*
 * Soft check for table-driven tests: on failure print file, line and a
 * formatted reason, count it in t_failures, and carry on, so one run lists
 * every mismatching case. main() returns t_failures ? 1 : 0.
 */
extern int t_failures;
#define T_CHECK(cond, ...)                                                    \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);              \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
            t_failures++;                                                     \
        }                                                                     \
    } while (0)

/*
 * Hard check for step-by-step tests, where what follows depends on it: on
 * failure print file, line and the condition, and exit 1 at once.
 */
#define T_REQUIRE(cond)                                                       \
    do {                                                                      \
        if (!(cond)) {                                                        \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__,  \
                    #cond);                                                   \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

/* Environment variable or a fallback; never NULL for a non-NULL fallback. */
const char *t_env(const char *name, const char *fallback);
/* Exit 77 with a message on stderr. */
_Noreturn void t_skip(const char *why);
/* Run argv (execvp) with stdout captured into *out (malloc'd, NUL-ended,
 * may be NULL) and stderr into *err; returns the exit status, or 128+sig. */
int t_run(char *const argv[], char **out, char **err);
/* Read a whole file (malloc'd, NUL-ended); NULL on error. */
char *t_read_file(const char *path, size_t *len);
/* A fresh temporary directory under $TMPDIR; caller frees the string. */
char *t_tmpdir(void);
/* splitmix64: small deterministic PRNG for seeded test inputs. */
static inline uint64_t t_rand(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

#endif
