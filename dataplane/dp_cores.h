/*
 * dp_cores.h - which cores each pipeline stage runs on.
 *
 * `--cores ingress=2,batcher=3,engine=4-7,9,egress=8`: a stage name, '=',
 * then cores and ranges; a comma-separated item without '=' continues the
 * previous stage's list. Every core must be in the process affinity mask
 * (sched_getaffinity), each stage may appear once, unknown stages are
 * errors; a core given to two stages is allowed with a warning (they then
 * compete, so they should wait with blocking calls, not spin). Stages not
 * named are left unpinned (every available core).
 *
 * `--cores auto` (the default): with at least as many cores as stages,
 * every stage but the engine gets one core of its own, in order, and the
 * engine gets the rest. With fewer, stages share cores round-robin, the
 * engine gets every core, and the note says so and recommends --poll block.
 *
 * The supervisor applies a layout in each child with sched_setaffinity
 * (dp_sup.h: dp_sup_stage_cfg.pin/cpus) before exec.
 */
#ifndef DP_CORES_H
#define DP_CORES_H

#include <sched.h>
#include <stdbool.h>
#include <stddef.h>

#define DP_CORES_MAX_STAGES 8

struct dp_cores {
    unsigned nstages;
    const char *names[DP_CORES_MAX_STAGES];
    cpu_set_t cpus[DP_CORES_MAX_STAGES];
    bool shared; /* some core serves two stages */
};

/*
 * Parse spec for stages[0..n). avail: the usable cores (NULL: this
 * process's affinity mask). Returns 0 (warn, if not NULL, gets an overlap
 * note or ""), or -EINVAL with a message in err naming the item and its
 * offset in spec.
 */
int dp_cores_parse(const char *spec, const char *const *stages, unsigned n,
                   const cpu_set_t *avail, struct dp_cores *out, char *err, size_t errlen,
                   char *warn, size_t warnlen);
/* The automatic layout; note gets a sentence when cores are shared. */
int dp_cores_auto(const char *const *stages, unsigned n, const cpu_set_t *avail,
                  struct dp_cores *out, char *note, size_t notelen);
/* "2-4,7" for a set, into buf. */
void dp_cores_format(const cpu_set_t *set, char *buf, size_t len);
/* sched_setaffinity of the calling thread; 0 or -errno. */
int dp_cores_pin(const cpu_set_t *set);

#endif /* DP_CORES_H */
