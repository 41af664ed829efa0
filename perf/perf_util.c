/*
 * perf_util.c - helpers for the benchmarks.
 */
#include "perf_util.h"

#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

static int json_first;

bool perf_want_json(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--json"))
            return true;
    return false;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

double perf_quantile(double *v, size_t n, double q)
{
    size_t i;

    if (!n)
        return 0;
    qsort(v, n, sizeof(*v), cmp_double);
    i = (size_t)(q * (double)n);
    if (i >= n)
        i = n - 1;
    return v[i];
}

void perf_json_begin(FILE *f)
{
    json_first = 1;
    fputc('{', f);
}

void perf_json_num(FILE *f, const char *key, double v)
{
    fprintf(f, "%s\"%s\":%.6g", json_first ? "" : ",", key, v);
    json_first = 0;
}

void perf_json_str(FILE *f, const char *key, const char *v)
{
    fprintf(f, "%s\"%s\":\"", json_first ? "" : ",", key);
    for (const char *p = v; *p; p++) {
        if (*p == '"' || *p == '\\')
            fputc('\\', f);
        if ((unsigned char)*p >= 0x20)
            fputc(*p, f);
    }
    fputc('"', f);
    json_first = 0;
}

void perf_json_end(FILE *f)
{
    fputs("}\n", f);
}

void perf_machine(char *buf, size_t n)
{
    char model[256] = "unknown cpu", line[512];
    FILE *f = fopen("/proc/cpuinfo", "r");
    struct utsname u;

    if (f) {
        while (fgets(line, sizeof(line), f)) {
            if (!strncmp(line, "model name", 10)) {
                char *c = strchr(line, ':');

                if (c) {
                    snprintf(model, sizeof(model), "%s", c + 2);
                    model[strcspn(model, "\n")] = 0;
                }
                break;
            }
        }
        fclose(f);
    }
    uname(&u);
    snprintf(buf, n, "%s, %ld cores, Linux %s", model, sysconf(_SC_NPROCESSORS_ONLN), u.release);
}
