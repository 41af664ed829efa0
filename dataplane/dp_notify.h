/*
 * dp_notify.h - systemd readiness and watchdog (sd_notify, libsystemd).
 *
 * The supervisor is the only caller: READY=1 once every stage is spawned,
 * WATCHDOG=1 every half WATCHDOG_USEC from its event loop (so a wedged loop
 * stops the pings and systemd restarts the service), STOPPING=1 when a
 * drain starts, STATUS=... one line of metadata on each state change.
 * Without NOTIFY_SOCKET every call is a cheap no-op. Status lines carry
 * metadata only (invariant 5).
 */
#ifndef DP_NOTIFY_H
#define DP_NOTIFY_H

#include <stdint.h>

int dp_notify_ready(void);
int dp_notify_stopping(void);
int dp_notify_watchdog(void);
int dp_notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Ping interval: half of WATCHDOG_USEC in ns, or 0 when the watchdog is off. */
uint64_t dp_notify_watchdog_interval_ns(void);

#endif /* DP_NOTIFY_H */
