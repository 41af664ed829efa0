/*
 * favo_base.c - the always-on assert and the metadata-only logger.
 *
 * Log lines go to stderr, one write(2) each so lines from the stages of
 * one instance never interleave mid-line:
 *   2026-11-23T08:55:01.123Z favo[engine] info: loaded model in 412 ms
 */
#include "favo_base.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static enum favo_log_level log_level = FAVO_LOG_INFO;
static char log_who[24] = "favo";

void favo_log_init(const char *who)
{
    const char *lvl = getenv("FAVO_LOG_LEVEL");

    if (who)
        snprintf(log_who, sizeof(log_who), "%s", who);
    if (!lvl)
        return;
    if (!strcmp(lvl, "error"))
        log_level = FAVO_LOG_ERROR;
    else if (!strcmp(lvl, "warn"))
        log_level = FAVO_LOG_WARN;
    else if (!strcmp(lvl, "info"))
        log_level = FAVO_LOG_INFO;
    else if (!strcmp(lvl, "debug"))
        log_level = FAVO_LOG_DEBUG;
}

void favo_log(enum favo_log_level lvl, const char *fmt, ...)
{
    static const char *const names[] = { "error", "warn", "info", "debug" };
    char line[1024];
    struct timespec ts;
    struct tm tm;
    va_list ap;
    int n, m;

    if (lvl > log_level)
        return;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ favo[%s] %s: ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                 tm.tm_sec, ts.tv_nsec / 1000000, log_who, names[lvl]);
    if (n < 0 || n >= (int)sizeof(line))
        return;
    va_start(ap, fmt);
    m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        return;
    n += m;
    if (n > (int)sizeof(line) - 2)
        n = (int)sizeof(line) - 2;
    line[n++] = '\n';
    (void)!write(STDERR_FILENO, line, (size_t)n);
}

void favo_assert_fail(const char *expr, const char *file, int line, const char *func)
{
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "favo[%s]: assertion failed: %s (%s:%d, %s)\n",
                     log_who, expr, file, line, func);

    if (n > 0)
        (void)!write(STDERR_FILENO, buf, (size_t)FAVO_MIN(n, (int)sizeof(buf) - 1));
    abort();
}
