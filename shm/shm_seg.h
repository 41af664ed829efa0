/*
 * shm_seg.h - favo's two shared-memory segments: the data segment and the
 * stats segment. Both start with the same versioned header and a table of
 * region offsets; everything after the header belongs to the modules that
 * asked for a region (rings, cells, batch plans, stats).
 *
 * The two segments (ARCHITECTURE.md "Two segments"):
 *
 *   data   an unnamed memfd (never in the filesystem), inherited by the stage
 *          processes as a file descriptor. MADV_DONTDUMP in every process
 *          that maps it, so request content never lands in a core dump;
 *          mlock()ed by its creator where RLIMIT_MEMLOCK allows (a favo_warn
 *          at start-up says so when it does not). Sealed against growing
 *          and shrinking, so no stage can truncate it under another (SIGBUS).
 *   stats  shm_open("/favo.<instance>"), mode 0640. Read-only for `favo
 *          stat` and /metrics. Holds numbers only (shm_stats.h).
 *
 * Layout (offsets from the segment base; every region starts at a multiple
 * of its alignment, at least FAVO_CACHELINE):
 *
 *   0      +---------------------------------------------------------+
 *          | struct shm_seg_hdr                                      |
 *          |   magic[16]   "FAVO-DATA" | "FAVO-STATS" (NUL-padded)   |
 *          |   version     layout version of that kind               |
 *          |   hdr_size    sizeof(struct shm_seg_hdr) of the creator |
 *          |   size        bytes in the segment                      |
 *          |   generation  +1 each time the instance recreates it    |
 *          |   created_ns, creator_pid, nregions, state              |
 *          |   regions[16] { name[16], off, size }                   |
 *   4096   +---------------------------------------------------------+
 *          | region 0 (e.g. "meta")                                  |
 *          +---------------------------------------------------------+
 *          | region 1 ...                                            |
 *          +---------------------------------------------------------+
 *          | ...                                          ... size   |
 *          +---------------------------------------------------------+
 *
 * Lifecycle of a segment (field `state`, written by the creator only):
 *
 *   shm_seg_create_*()          shm_seg_publish()          shm_seg_destroy()
 *   ------------------> BUILDING -----------------> READY ------------------> GONE
 *   (regions zeroed; the caller   (release store: readers   (readers holding a
 *    fills them in)                may attach from now on)   mapping see it stale)
 *
 * Invariants (cited by FAVO_ASSERT as "seg inv N"):
 *   1. Offsets, not pointers: the header and every region hold offsets and
 *      indices only; each process maps the segment wherever it likes.
 *   2. The header is written by the creator only, and only while BUILDING,
 *      except `state` (-> GONE) at destroy. Attachers never write it.
 *   3. Every region lies inside the segment: off % 64 == 0 and
 *      off + size <= size of the segment. shm_seg_check() verifies this
 *      before anything is followed, so a foreign, truncated or corrupt
 *      segment is refused with a message, never followed.
 *   4. A reader of another kind or version refuses: it never guesses.
 *
 * Errors: functions return 0 or -errno and leave a one-line message a person
 * can act on in seg->err (naming the segment, the field and the offset):
 *   -EPROTO    another layout version, or not a favo segment of that kind
 *   -EBADMSG   header present but inconsistent (region outside the segment)
 *   -EAGAIN    the creator has not published it yet (retry shortly)
 *   -ENOENT    no stats segment for that instance
 *   -EBUSY     create: a live instance already has that name
 *   -EINVAL    bad instance name or region specification
 *   other      from the failing system call
 */
#ifndef SHM_SEG_H
#define SHM_SEG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "favo_base.h"

#define SHM_SEG_MAGIC_DATA "FAVO-DATA"
#define SHM_SEG_MAGIC_STATS "FAVO-STATS"
/* Bump when the layout of that kind changes incompatibly. Appending a
 * region or, in the stats segment, appending a counter does not. */
#define SHM_SEG_VERSION_DATA 1u
#define SHM_SEG_VERSION_STATS 1u

#define SHM_SEG_MAX_REGIONS 16
#define SHM_SEG_NAME_MAX 16      /* region names, NUL included */
#define SHM_SEG_INSTANCE_MAX 48  /* instance names, NUL excluded */
#define SHM_SEG_HDR_SPACE 4096   /* the first region starts here at the earliest */

enum shm_seg_kind { SHM_SEG_DATA = 1, SHM_SEG_STATS = 2 };
enum shm_seg_state { SHM_SEG_BUILDING = 0, SHM_SEG_READY = 1, SHM_SEG_GONE = 2 };

struct shm_seg_region {
    char name[SHM_SEG_NAME_MAX]; /* NUL-padded, e.g. "cells" */
    uint64_t off;                /* from the segment base */
    uint64_t size;               /* bytes */
};

/* The first bytes of both segments. Written by the creator (inv 2). */
struct shm_seg_hdr {
    char magic[16];
    uint32_t version;
    uint32_t hdr_size;
    uint64_t size;
    uint64_t generation;
    uint64_t created_ns;    /* wall clock, ns since the epoch */
    int32_t creator_pid;
    uint32_t nregions;
    uint32_t state;         /* enum shm_seg_state; ck_pr loads/stores */
    uint32_t reserved;
    struct shm_seg_region regions[SHM_SEG_MAX_REGIONS];
};

/* A region the creator asks for. align: power of two, 0 means 64. */
struct shm_seg_spec {
    const char *name;
    size_t size;
    size_t align;
};

/* Process-local handle (not in shared memory). */
struct shm_seg {
    void *base;
    size_t size;
    int fd;
    enum shm_seg_kind kind;
    bool owner;             /* this process created it */
    bool writable;
    bool locked;            /* mlock succeeded */
    char path[SHM_SEG_INSTANCE_MAX + 8]; /* "/favo.<instance>" for stats */
    char err[256];          /* last error, one line */
};

static inline struct shm_seg_hdr *shm_seg_hdr(const struct shm_seg *seg)
{
    return (struct shm_seg_hdr *)seg->base;
}

/* Instance names: 1..48 of [A-Za-z0-9_.-], not starting with '.'.
 * Returns 0 or -EINVAL. */
int shm_seg_instance_check(const char *instance);

/*
 * Create the data segment: a memfd sized for the regions (each zeroed),
 * mapped read-write, MADV_DONTDUMP, mlock()ed where the limit allows. The
 * fd is close-on-exec: the supervisor dup2()s it into each stage it spawns
 * and the stage calls shm_seg_attach_data(). State BUILDING until
 * shm_seg_publish().
 */
int shm_seg_create_data(struct shm_seg *seg, const struct shm_seg_spec *regions, unsigned n);
/* Map an inherited data-segment fd (dup'ed: seg owns its copy). */
int shm_seg_attach_data(struct shm_seg *seg, int fd);

/*
 * Create the stats segment /favo.<instance>, mode 0640. A leftover segment
 * of that name whose creator is dead is replaced (its generation + 1 is the
 * new generation, and it is marked GONE first so readers still holding it
 * move on); one whose creator lives gives -EBUSY.
 */
int shm_seg_create_stats(struct shm_seg *seg, const char *instance,
                         const struct shm_seg_spec *regions, unsigned n);
/* Attach to /favo.<instance>: read-only for readers (favo stat, /metrics),
 * writable for stages that write their counter block. */
int shm_seg_open_stats(struct shm_seg *seg, const char *instance, bool writable);

/* Creator: the regions are filled in; readers may attach (release store). */
void shm_seg_publish(struct shm_seg *seg);
/* Region by name, or NULL (and *size untouched) when absent. */
void *shm_seg_region(const struct shm_seg *seg, const char *name, size_t *size);
/* True when the creator destroyed the segment (or replaced it): re-open. */
bool shm_seg_stale(const struct shm_seg *seg);
/* Unmap and close; never unlinks; keeps seg->err. Safe to repeat, and on a
 * handle that a failed create or open left behind. */
void shm_seg_close(struct shm_seg *seg);
/* Creator: mark GONE, unlink the stats name, unmap and close. */
int shm_seg_destroy(struct shm_seg *seg);
/* Unlink /favo.<instance> without mapping it (tests, clean-up). */
int shm_seg_unlink_stats(const char *instance);

/*
 * Check the header at base (maplen bytes mapped) against the kind and
 * version this build reads: invariants 3 and 4. Pure function over
 * untrusted bytes (fuzzed). Returns 0, -EPROTO, -EBADMSG or -EAGAIN with a
 * message in err.
 */
int shm_seg_check(const void *base, size_t maplen, enum shm_seg_kind kind, char *err,
                  size_t errlen);

/* Test seam (STYLE.md 12): make the next mlock() calls fail with EPERM. */
void shm_seg_test_fail_mlock(bool fail);

#endif /* SHM_SEG_H */
