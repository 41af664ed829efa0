/*
 * perf_util.h - shared by the benchmarks in perf/ (prefix perf_).
 *
 * Convention: build/perf/bench-<name> prints a readable table by default
 * and, with --json, one JSON object holding the same figures. Figures are
 * measured side by side in one run (ratios), never compared with constants.
 */
#ifndef PERF_UTIL_H
#define PERF_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* True when argv holds --json. */
bool perf_want_json(int argc, char **argv);
/* Sort v[0..n) and return the q-quantile (0..1), nearest-rank. */
double perf_quantile(double *v, size_t n, double q);

/* A tiny JSON writer for one flat object: perf_json_begin(f), then
 * perf_json_num / perf_json_str, then perf_json_end(f). */
void perf_json_begin(FILE *f);
void perf_json_num(FILE *f, const char *key, double v);
void perf_json_str(FILE *f, const char *key, const char *v);
void perf_json_end(FILE *f);

/* Machine description for results tables: CPU model, cores, kernel. */
void perf_machine(char *buf, size_t n);

#endif
