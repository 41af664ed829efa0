/*
 * dp_cores.c - core layout parsing, the automatic layout and pinning; see
 * dp_cores.h.
 */
#include "dp_cores.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int avail_set(const cpu_set_t *avail, cpu_set_t *out)
{
    if (avail) {
        *out = *avail;
        return 0;
    }
    CPU_ZERO(out);
    return sched_getaffinity(0, sizeof(*out), out) < 0 ? -errno : 0;
}

static int cores_err(char *err, size_t len, const char *spec, const char *at, const char *fmt,
                     const char *what)
{
    char msg[160];

    snprintf(msg, sizeof(msg), fmt, what);
    snprintf(err, len, "--cores: %s (at offset %d)", msg, (int)(at - spec));
    return -EINVAL;
}

static int parse_core(const char **p, long *v)
{
    char *end;

    if (!isdigit((unsigned char)**p))
        return -EINVAL;
    errno = 0;
    *v = strtol(*p, &end, 10);
    if (errno || *v >= CPU_SETSIZE)
        return -EINVAL;
    *p = end;
    return 0;
}

int dp_cores_parse(const char *spec, const char *const *stages, unsigned n,
                   const cpu_set_t *avail, struct dp_cores *out, char *err, size_t errlen,
                   char *warn, size_t warnlen)
{
    cpu_set_t av;
    bool given[DP_CORES_MAX_STAGES] = { false };
    int cur = -1;
    const char *p = spec;

    if (warn && warnlen)
        warn[0] = 0;
    if (n == 0 || n > DP_CORES_MAX_STAGES)
        return -EINVAL;
    if (avail_set(avail, &av) < 0)
        return cores_err(err, errlen, spec, spec, "%s", "sched_getaffinity failed");
    memset(out, 0, sizeof(*out));
    out->nstages = n;
    for (unsigned i = 0; i < n; i++) {
        out->names[i] = stages[i];
        out->cpus[i] = av;
    }
    if (!*p)
        return cores_err(err, errlen, spec, p, "%s", "empty layout");
    while (*p) {
        const char *item = p, *eq = NULL;
        for (const char *q = p; *q && *q != ','; q++)
            if (*q == '=') {
                eq = q;
                break;
            }
        if (eq) {
            char name[32];
            size_t nl = (size_t)(eq - p);
            if (nl == 0 || nl >= sizeof(name))
                return cores_err(err, errlen, spec, item, "%s", "missing or long stage name");
            memcpy(name, p, nl);
            name[nl] = 0;
            cur = -1;
            for (unsigned i = 0; i < n; i++)
                if (!strcmp(stages[i], name))
                    cur = (int)i;
            if (cur < 0)
                return cores_err(err, errlen, spec, item,
                                 "unknown stage '%s' (ingress, batcher, engine, egress)", name);
            if (given[cur])
                return cores_err(err, errlen, spec, item, "stage '%s' given twice", name);
            given[cur] = true;
            CPU_ZERO(&out->cpus[cur]);
            p = eq + 1;
        } else if (cur < 0) {
            return cores_err(err, errlen, spec, item, "%s", "expected STAGE=CORES");
        }
        long a, b;
        const char *at = p;
        if (parse_core(&p, &a) < 0)
            return cores_err(err, errlen, spec, at, "%s", "expected a core number");
        b = a;
        if (*p == '-') {
            p++;
            if (parse_core(&p, &b) < 0)
                return cores_err(err, errlen, spec, p, "%s", "expected the end of a range");
            if (b < a)
                return cores_err(err, errlen, spec, at, "%s", "range ends before it starts");
        }
        if (*p && *p != ',')
            return cores_err(err, errlen, spec, p, "%s", "unexpected character");
        for (long c = a; c <= b; c++) {
            if (!CPU_ISSET((int)c, &av)) {
                char num[24];
                snprintf(num, sizeof(num), "%ld", c);
                return cores_err(err, errlen, spec, at,
                                 "core %s is not in this process's affinity mask", num);
            }
            CPU_SET((int)c, &out->cpus[cur]);
        }
        if (*p == ',') {
            p++;
            if (!*p)
                return cores_err(err, errlen, spec, p, "%s", "trailing comma");
        }
    }
    for (unsigned i = 0; i < n; i++)
        for (unsigned j = i + 1; j < n; j++) {
            cpu_set_t both;
            if (!given[i] || !given[j])
                continue;
            CPU_AND(&both, &out->cpus[i], &out->cpus[j]);
            if (CPU_COUNT(&both)) {
                char c[64];
                out->shared = true;
                dp_cores_format(&both, c, sizeof(c));
                if (warn && warnlen)
                    snprintf(warn, warnlen,
                             "--cores: %s and %s share core(s) %s; use --poll block", stages[i],
                             stages[j], c);
            }
        }
    return 0;
}

int dp_cores_auto(const char *const *stages, unsigned n, const cpu_set_t *avail,
                  struct dp_cores *out, char *note, size_t notelen)
{
    cpu_set_t av;
    int cpu[CPU_SETSIZE], ncpu = 0, engine = (int)n - 1, next = 0;

    if (note && notelen)
        note[0] = 0;
    if (n == 0 || n > DP_CORES_MAX_STAGES || avail_set(avail, &av) < 0)
        return -EINVAL;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (CPU_ISSET(c, &av))
            cpu[ncpu++] = c;
    if (ncpu == 0)
        return -EINVAL;
    memset(out, 0, sizeof(*out));
    out->nstages = n;
    for (unsigned i = 0; i < n; i++) {
        out->names[i] = stages[i];
        CPU_ZERO(&out->cpus[i]);
        if (!strcmp(stages[i], "engine"))
            engine = (int)i;
    }
    if ((unsigned)ncpu >= n) {
        for (unsigned i = 0; i < n; i++)
            if ((int)i != engine)
                CPU_SET(cpu[next++], &out->cpus[i]);
        for (; next < ncpu; next++)
            CPU_SET(cpu[next], &out->cpus[engine]);
        return 0;
    }
    out->shared = true;
    for (unsigned i = 0; i < n; i++) {
        if ((int)i == engine)
            out->cpus[i] = av;
        else
            CPU_SET(cpu[next++ % ncpu], &out->cpus[i]);
    }
    if (note && notelen)
        snprintf(note, notelen,
                 "%d core(s) for %u stages: stages share cores, so they should wait with "
                 "blocking calls (--poll block), not spin", ncpu, n);
    return 0;
}

void dp_cores_format(const cpu_set_t *set, char *buf, size_t len)
{
    size_t o = 0;

    if (len)
        buf[0] = 0;
    for (int c = 0; c < CPU_SETSIZE && o < len; c++) {
        if (!CPU_ISSET(c, set))
            continue;
        int e = c;
        while (e + 1 < CPU_SETSIZE && CPU_ISSET(e + 1, set))
            e++;
        int k = e > c ? snprintf(buf + o, len - o, "%s%d-%d", o ? "," : "", c, e)
                      : snprintf(buf + o, len - o, "%s%d", o ? "," : "", c);
        if (k < 0)
            break;
        o += (size_t)k;
        c = e;
    }
}

int dp_cores_pin(const cpu_set_t *set)
{
    return sched_setaffinity(0, sizeof(*set), set) < 0 ? -errno : 0;
}
