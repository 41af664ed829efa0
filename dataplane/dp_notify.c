/*
 * dp_notify.c - thin wrappers over sd_notify; see dp_notify.h.
 */
#include "dp_notify.h"

#include <stdarg.h>
#include <stdio.h>
#include <systemd/sd-daemon.h>

int dp_notify_ready(void)
{
    return sd_notify(0, "READY=1");
}

int dp_notify_stopping(void)
{
    return sd_notify(0, "STOPPING=1");
}

int dp_notify_watchdog(void)
{
    return sd_notify(0, "WATCHDOG=1");
}

int dp_notify_status(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    int n = snprintf(buf, sizeof(buf), "STATUS=");

    va_start(ap, fmt);
    vsnprintf(buf + n, sizeof(buf) - (size_t)n, fmt, ap);
    va_end(ap);
    return sd_notify(0, buf);
}

uint64_t dp_notify_watchdog_interval_ns(void)
{
    uint64_t usec = 0;

    /* unset_environment=0: the stages we spawn must not ping as if they were
     * the main process; the supervisor scrubs WATCHDOG_* from their env. */
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0)
        return 0;
    return usec * 1000ull / 2;
}
