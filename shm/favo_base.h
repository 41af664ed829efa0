/*
 * favo_base.h - what every favo module shares: the always-on assert, the
 * metadata-only log, the clock, and a few compiler helpers.
 *
 * Logging contract (ARCHITECTURE.md invariant 5, "no retention"): favo_log
 * takes a printf format, and callers pass it metadata only - request ids,
 * tenants, counts, sizes, latencies, statuses, file names, error strings.
 * Never prompt text, token ids or generated text, at any level. There is
 * deliberately no "dump this buffer" helper.
 */
#ifndef FAVO_BASE_H
#define FAVO_BASE_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#define FAVO_CACHELINE 64
#define FAVO_ALIGNED_CL __attribute__((aligned(FAVO_CACHELINE)))
#define FAVO_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define favo_likely(x) __builtin_expect(!!(x), 1)
#define favo_unlikely(x) __builtin_expect(!!(x), 0)
#define FAVO_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FAVO_MAX(a, b) ((a) > (b) ? (a) : (b))

/*
 * FAVO_ASSERT: always on, also in release builds. For invariants whose
 * breach would corrupt shared state; reports file, line and expression
 * and aborts. Use plain assert() for debug-only checks.
 */
#define FAVO_ASSERT(expr)                                                    \
    do {                                                                     \
        if (favo_unlikely(!(expr)))                                          \
            favo_assert_fail(#expr, __FILE__, __LINE__, __func__);           \
    } while (0)

_Noreturn void favo_assert_fail(const char *expr, const char *file, int line,
                                const char *func);

enum favo_log_level { FAVO_LOG_ERROR, FAVO_LOG_WARN, FAVO_LOG_INFO, FAVO_LOG_DEBUG };

/* Process-wide log settings: the level (default INFO, env FAVO_LOG_LEVEL=
 * error|warn|info|debug) and a short name shown on every line ("engine"). */
void favo_log_init(const char *who);
void favo_log(enum favo_log_level lvl, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#define favo_err(...) favo_log(FAVO_LOG_ERROR, __VA_ARGS__)
#define favo_warn(...) favo_log(FAVO_LOG_WARN, __VA_ARGS__)
#define favo_info(...) favo_log(FAVO_LOG_INFO, __VA_ARGS__)
#define favo_debug(...) favo_log(FAVO_LOG_DEBUG, __VA_ARGS__)

/* Monotonic clock in nanoseconds (CLOCK_MONOTONIC); vDSO, no syscall. */
static inline uint64_t favo_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Wall clock in nanoseconds since the epoch (CLOCK_REALTIME). */
static inline uint64_t favo_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline void favo_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

#endif /* FAVO_BASE_H */
