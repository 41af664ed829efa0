/*
 * test-dp-cores.c - `--cores` parsing (lists, ranges, continuation items,
 * every error with its offset), overlap warnings, the automatic layout with
 * plenty and with too few cores, formatting, and pinning this process.
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dp_cores.h"
#include "t_util.h"

#define CHECK(c) T_REQUIRE(c)

static const char *const stages[] = { "ingress", "batcher", "engine", "egress" };

static cpu_set_t upto(int n)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    for (int i = 0; i < n; i++)
        CPU_SET(i, &s);
    return s;
}

static const char *fmt(const cpu_set_t *s)
{
    static char b[4][64];
    static int k;
    char *o = b[k++ & 3];
    dp_cores_format(s, o, 64);
    return o;
}

static void bad(const char *spec, const char *want)
{
    cpu_set_t av = upto(16);
    struct dp_cores c;
    char err[256] = "", warn[256];

    int rc = dp_cores_parse(spec, stages, 4, &av, &c, err, sizeof(err), warn, sizeof(warn));
    printf("%-28s -> %s\n", spec, err);
    CHECK(rc == -EINVAL);
    CHECK(strstr(err, want));
}

int main(void)
{
    cpu_set_t av = upto(16);
    struct dp_cores c;
    char err[256], warn[256];

    CHECK(dp_cores_parse("ingress=2,batcher=3,engine=4-7,9,egress=8", stages, 4, &av, &c, err,
                         sizeof(err), warn, sizeof(warn)) == 0);
    CHECK(!strcmp(fmt(&c.cpus[0]), "2") && !strcmp(fmt(&c.cpus[1]), "3"));
    CHECK(!strcmp(fmt(&c.cpus[2]), "4-7,9") && !strcmp(fmt(&c.cpus[3]), "8"));
    CHECK(!c.shared && warn[0] == 0);

    /* unnamed stages stay unpinned */
    CHECK(dp_cores_parse("engine=1-3", stages, 4, &av, &c, err, sizeof(err), warn,
                         sizeof(warn)) == 0);
    CHECK(!strcmp(fmt(&c.cpus[0]), "0-15") && !strcmp(fmt(&c.cpus[2]), "1-3"));

    CHECK(dp_cores_parse("ingress=1,engine=1-3", stages, 4, &av, &c, err, sizeof(err), warn,
                         sizeof(warn)) == 0);
    printf("overlap warning: %s\n", warn);
    CHECK(c.shared && strstr(warn, "ingress and engine share core(s) 1"));

    bad("ingres=1", "unknown stage 'ingres'");
    bad("engine=1,engine=2", "given twice (at offset 9)");
    bad("engine=3-1", "range ends before it starts (at offset 7)");
    bad("engine=1-x", "expected the end of a range");
    bad("engine=99", "core 99 is not in this process's affinity mask (at offset 7)");
    bad("engine=", "expected a core number (at offset 7)");
    bad("engine=1,", "trailing comma");
    bad("2,engine=1", "expected STAGE=CORES (at offset 0)");
    bad("engine=1x", "unexpected character (at offset 8)");
    bad("", "empty layout");

    char note[256];
    av = upto(8);
    CHECK(dp_cores_auto(stages, 4, &av, &c, note, sizeof(note)) == 0);
    printf("auto, 8 cores: ingress=%s batcher=%s engine=%s egress=%s\n", fmt(&c.cpus[0]),
           fmt(&c.cpus[1]), fmt(&c.cpus[2]), fmt(&c.cpus[3]));
    CHECK(!c.shared && !note[0]);
    CHECK(!strcmp(fmt(&c.cpus[0]), "0") && !strcmp(fmt(&c.cpus[1]), "1"));
    CHECK(!strcmp(fmt(&c.cpus[3]), "2") && !strcmp(fmt(&c.cpus[2]), "3-7"));

    av = upto(2);
    CHECK(dp_cores_auto(stages, 4, &av, &c, note, sizeof(note)) == 0);
    printf("auto, 2 cores: ingress=%s batcher=%s engine=%s egress=%s; %s\n", fmt(&c.cpus[0]),
           fmt(&c.cpus[1]), fmt(&c.cpus[2]), fmt(&c.cpus[3]), note);
    CHECK(c.shared && strstr(note, "share cores") && strstr(note, "--poll block"));
    CHECK(!strcmp(fmt(&c.cpus[2]), "0-1"));
    for (int i = 0; i < 4; i++)
        CHECK(CPU_COUNT(&c.cpus[i]) >= 1);

    /* pin to the first core we may use, then restore */
    cpu_set_t mine, one;
    CHECK(sched_getaffinity(0, sizeof(mine), &mine) == 0);
    CPU_ZERO(&one);
    for (int i = 0; i < CPU_SETSIZE; i++)
        if (CPU_ISSET(i, &mine)) {
            CPU_SET(i, &one);
            break;
        }
    CHECK(dp_cores_pin(&one) == 0);
    cpu_set_t now;
    CHECK(sched_getaffinity(0, sizeof(now), &now) == 0 && CPU_EQUAL(&now, &one));
    CHECK(dp_cores_pin(&mine) == 0);
    printf("ok\n");
    return 0;
}
