/*
 * shm_cell.h - the cell pool: the buffers requests live in, in the data
 * segment, in a few size classes, owned by one stage at a time and scrubbed
 * before reuse.
 *
 * A request's bytes land in its cell once (recv or TLS decrypt) and never
 * move (invariant 4, write once, pass indices): stages pass a cell
 * reference, shm_cell_ref_t, in their ring messages, and whoever holds the
 * reference AND is named as owner in the cell's descriptor may touch the
 * bytes. References carry the descriptor's generation, so a stale one (a
 * cell freed and reused since) is caught, never followed.
 *
 *   shm_cell_ref_t (u64):  63..32 generation | 31..28 class | 27..0 index
 *   SHM_CELL_REF_NONE (0) is never valid: generations start at 1.
 *
 * Lifecycle of a cell (descriptor field `owner`; the function that makes
 * each transition, and who calls it):
 *
 *              shm_cell_alloc()               shm_cell_give(BATCHER)
 *     FREE ------------------------> INGRESS ------------------------> BATCHER
 *      ^   (allocator = ingress:        |                                 |
 *      |    pops its free stack,        | shm_cell_free()                 | shm_cell_give(EGRESS)
 *      |    verifies poison, zeroes)    | (early 4xx: the allocator       v
 *      |                                |  scrubs, pushes its own stack)  EGRESS
 *      +--------------------------------+                                 |
 *      |                                                                  | shm_cell_free()
 *      |   shm_cell_alloc() drains the return rings                       v
 *      +------------------------------------------------------------ RETURNING
 *          (owner FREE, onto the allocator's stack)     (scrubbed with explicit_bzero,
 *                                                        generation + 1, reference
 *                                                        in the freer's return ring)
 *
 *   shm_cell_give() is called by the current owner just before it enqueues
 *   the reference for the next stage; the ring's release/acquire orders the
 *   owner word and the cell bytes before the receiver's shm_cell_get().
 *   The engine only reads cells the batcher owns (prompt tokens): it calls
 *   shm_cell_get() with me = SHM_CELL_BATCHER and never writes the cell.
 *
 * Free cells go back to their allocator over SPSC rings (shm_ring.h), one
 * per freeing stage worker, never through a shared free list: the
 * allocator's stack is written by the allocator alone.
 *
 * Layout of the pool region (offsets from the region's start; it may sit at
 * any offset of the data segment):
 *
 *   0        struct shm_cell_pool_hdr   magic "FAVOCEL1", version, generation,
 *                                       flags, nclasses, nreturn, class table
 *                                       { cell_size, ncells, desc_off,
 *                                         stack_off, data_off }, ring_off[],
 *                                       ring_bytes
 *   desc_off  ncells x struct shm_cell_desc { gen, owner, len }  per class
 *   stack_off u32 top + ncells x u32 free indices (allocator only) per class
 *   ring_off  nreturn return rings of shm_cell_ref_t, capacity >= all cells
 *   data_off  ncells x cell_size bytes, page aligned                per class
 *
 * Invariants (cited by FAVO_ASSERT as "cell inv N"):
 *   1. One owner at a time: only the stage named in desc.owner writes the
 *      descriptor or the bytes; it names the next owner before handing the
 *      reference on, and never touches the cell afterwards.
 *   2. No retention: a cell's bytes are scrubbed (explicit_bzero, all
 *      cell_size bytes, or all that were written: inv 6) by whoever frees
 *      it, before anyone else can get it; a newly allocated cell reads back
 *      as zeros.
 *   3. A reference is valid only while its generation equals desc.gen;
 *      freeing bumps desc.gen, so every older reference is stale.
 *   4. The allocator's free stack and the return rings together hold each
 *      free cell exactly once; a ring has room for every cell, so a free
 *      never waits.
 *   5. Debug mode (SHM_CELL_F_POISON): freed cells are filled with
 *      SHM_CELL_POISON after the scrub and verified on allocation; a write
 *      to a freed cell aborts, naming class, index and offset (never the
 *      bytes).
 *   6. High-water marks: shm_cell_free_span(lo, hi) scrubs only [0, lo)
 *      and [hi, size); its caller vouches that nobody wrote [lo, hi) since
 *      the allocation (which handed out zeros, inv 2). Checked on every
 *      such free: the 64 bytes after lo and the 64 before hi must be zero
 *      (an overrun of the mark lands there first), all of [lo, hi) in
 *      debug mode (inv 5); a violation aborts, naming the offset.
 *
 * Errors: 0 or -errno. -EAGAIN: no free cell (the caller answers 503 with
 * Retry-After); -EMSGSIZE: larger than the largest class; -ESTALE: stale
 * reference; -EPERM: the caller is not the owner; -EINVAL: a malformed
 * reference or configuration; -EPROTO: not a pool of this version or
 * generation; -EBADMSG: a pool header whose offsets leave the region.
 */
#ifndef SHM_CELL_H
#define SHM_CELL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "favo_base.h"
#include "shm_ring.h"

typedef uint64_t shm_cell_ref_t;

#define SHM_CELL_REF_NONE ((shm_cell_ref_t)0)
#define SHM_CELL_MAX_CLASSES 8
#define SHM_CELL_MAX_RETURN 16
#define SHM_CELL_MAX_CELLS (1u << 24) /* per class */
#define SHM_CELL_MAGIC 0x314c45434f564146ull /* "FAVOCEL1" little-endian */
#define SHM_CELL_VERSION 1u
#define SHM_CELL_POISON 0xa5
#define SHM_CELL_F_POISON 1u

enum shm_cell_owner {
    SHM_CELL_FREE = 0,
    SHM_CELL_INGRESS,
    SHM_CELL_BATCHER,
    SHM_CELL_ENGINE,
    SHM_CELL_EGRESS,
    SHM_CELL_RETURNING,
    SHM_CELL_OWNER__COUNT
};

static inline shm_cell_ref_t shm_cell_ref(uint32_t gen, unsigned cls, uint32_t idx)
{
    return ((uint64_t)gen << 32) | ((uint64_t)(cls & 0xf) << 28) | (idx & 0x0fffffffu);
}
static inline uint32_t shm_cell_ref_gen(shm_cell_ref_t r) { return (uint32_t)(r >> 32); }
static inline unsigned shm_cell_ref_class(shm_cell_ref_t r) { return (unsigned)(r >> 28) & 0xf; }
static inline uint32_t shm_cell_ref_index(shm_cell_ref_t r) { return (uint32_t)r & 0x0fffffffu; }

/* What the supervisor asks for. Classes in increasing cell_size. */
struct shm_cell_cfg {
    unsigned nclasses;
    struct {
        uint32_t cell_size;  /* bytes, a multiple of 64 */
        uint32_t ncells;
    } classes[SHM_CELL_MAX_CLASSES];
    unsigned nreturn;        /* return rings: one per freeing worker (1..16) */
    unsigned flags;          /* SHM_CELL_F_POISON */
};

/* ------------------------------------------------------ in shared memory */

struct shm_cell_desc {
    uint32_t gen;            /* cell inv 3; starts at 1 */
    uint32_t owner;          /* enum shm_cell_owner; cell inv 1 */
    uint32_t len;            /* bytes in use, set by the owner (informative) */
    uint32_t reserved;
};

struct shm_cell_class {
    uint32_t cell_size, ncells;
    uint64_t desc_off, stack_off, data_off;
};

struct shm_cell_pool_hdr {
    uint64_t magic;
    uint32_t version;
    uint32_t generation;     /* the data segment's: a region left from before is refused */
    uint32_t flags;
    uint32_t nclasses;
    uint32_t nreturn;
    uint32_t ring_capacity;
    uint64_t region_bytes;
    uint64_t ring_bytes;     /* bytes per return ring */
    uint64_t ring_off[SHM_CELL_MAX_RETURN];
    struct shm_cell_class classes[SHM_CELL_MAX_CLASSES];
} FAVO_ALIGNED_CL;

/* ------------------------------------------------------ process handles */

enum shm_cell_role {
    SHM_CELL_ROLE_ALLOCATOR = 1, /* ingress: allocates, drains every return ring */
    SHM_CELL_ROLE_USER,          /* other stages; with a return ring if they free */
};

struct shm_cell_pool {
    struct shm_cell_pool_hdr *hdr;
    char *base;
    enum shm_cell_role role;
    int ret;                       /* USER: its return ring, -1 when it never frees */
    shm_ring_t rings[SHM_CELL_MAX_RETURN]; /* allocator: consumers; user: rings[ret] */
};

/* Bytes the pool region needs for cfg (0 when cfg is invalid). */
size_t shm_cell_pool_size(const struct shm_cell_cfg *cfg);
/* Supervisor: format mem (64-byte aligned, len >= shm_cell_pool_size) as a
 * pool with every cell FREE on the allocator's stack. */
int shm_cell_pool_init(void *mem, size_t len, const struct shm_cell_cfg *cfg,
                       uint32_t generation);
/* A stage: attach to a formatted pool. USER with ret >= 0 produces into
 * return ring `ret` (one worker per ring); ret = -1: never frees. The
 * ALLOCATOR (one per pool) rebuilds its free stack from the descriptors,
 * so a restarted ingress loses no cell and drains replayed returns once. */
int shm_cell_pool_attach(struct shm_cell_pool *p, void *mem, size_t len, uint32_t generation,
                         enum shm_cell_role role, int ret);

/* Allocator: the smallest class holding `need` bytes that has a free cell
 * (a larger class when that one is empty); owner INGRESS, bytes all zero. */
int shm_cell_alloc(struct shm_cell_pool *p, size_t need, shm_cell_ref_t *ref);
/* The bytes of a cell the caller owns: -ESTALE, -EPERM or -EINVAL
 * otherwise. *size: the class's cell size. */
int shm_cell_get(const struct shm_cell_pool *p, shm_cell_ref_t ref, enum shm_cell_owner me,
                 void **data, size_t *size);
/* The bytes of a live cell WITHOUT the owner check, for the byte ranges
 * a protocol gives a non-owner (shm_pipe.h: egress's response area and
 * the batcher's generated ids while the other owns the cell; the engine's
 * reads). Generation-checked: -ESTALE for a freed or reused cell. */
int shm_cell_bytes(const struct shm_cell_pool *p, shm_cell_ref_t ref, void **data, size_t *size);
/* Owner: record how many bytes are in use (informative, <= cell size). */
int shm_cell_set_len(struct shm_cell_pool *p, shm_cell_ref_t ref, enum shm_cell_owner me,
                     uint32_t len);
/* Owner: name the next owner, just before enqueueing ref to it. */
int shm_cell_give(struct shm_cell_pool *p, shm_cell_ref_t ref, enum shm_cell_owner me,
                  enum shm_cell_owner to);
/* Owner: scrub, retire the reference, return the cell to the allocator
 * (its own stack when the caller is the allocator, else the return ring). */
int shm_cell_free(struct shm_cell_pool *p, shm_cell_ref_t ref, enum shm_cell_owner me);
/* Owner: shm_cell_free for a caller that knows which bytes it and the
 * owners before it wrote since the allocation: [0, lo) and [hi,
 * cell_size) only (hi = cell_size: nothing at the end). Those are
 * scrubbed; [lo, hi) still reads as the allocation's zeros, so cell inv 2
 * holds without writing it (cell inv 6, checked). A 64 KiB cell of which
 * a request used 2 KiB costs a 2 KiB scrub instead of 64 (the pipeline's
 * per-request cost: egress frees every request's cell). -EINVAL when lo >
 * hi or hi > cell_size (nothing freed). */
int shm_cell_free_span(struct shm_cell_pool *p, shm_cell_ref_t ref, enum shm_cell_owner me,
                       size_t lo, size_t hi);
/* Allocator: move returned cells onto its stack; returns how many. */
int shm_cell_drain(struct shm_cell_pool *p);
/* Cells on the allocator's stack for a class (not counting the rings). */
unsigned shm_cell_free_count(const struct shm_cell_pool *p, unsigned cls);

const char *shm_cell_owner_name(enum shm_cell_owner o);

#endif /* SHM_CELL_H */
