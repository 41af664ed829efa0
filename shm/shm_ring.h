/*
 * shm_ring.h - single-producer single-consumer rings of fixed-size
 * descriptors in shared memory, on ConcurrencyKit's struct ck_ring.
 *
 * What it is for
 * --------------
 * Every directed edge between two stages (ingress -> batcher, batcher ->
 * engine rank, ...) is one of these rings; the cell pool returns free cells
 * through one. A descriptor is a small fixed-size record (a cell index, a
 * request id, a few flags): ARCHITECTURE.md invariant 4 passes indices, never
 * request bytes.
 *
 * Layout (one contiguous region the CALLER places in memory it owns, in
 * practice the data segment; everything in it is an offset or an index, so
 * each process maps it at its own address - invariant 1):
 *
 *   offset  size  field                    written by
 *   ------  ----  -----------------------  ---------------------------------
 *        0     8  magic "FAVORNG1"         shm_ring_init (last, after a fence)
 *        8     4  version                  shm_ring_init
 *       12     4  generation               shm_ring_init
 *       16     4  capacity (power of two)  shm_ring_init
 *       20     4  slot_size (bytes)        shm_ring_init
 *       24     8  slots_off  (= 256)       shm_ring_init
 *       32     8  region_bytes             shm_ring_init
 *       64     4  ck.c_head                CONSUMER only (own cache line)
 *      128     4  ck.p_tail                PRODUCER only (own cache line)
 *      132     4  ck.p_head                PRODUCER only (zero-copy reserve)
 *      192     8  ck.size, ck.mask         shm_ring_init (read-only after)
 *      256     -  capacity * slot_size     slots: PRODUCER writes slot i
 *                                          while it is free, CONSUMER reads it
 *                                          while it is published
 *
 * Counters are free-running 32-bit unsigned integers compared by difference
 * (p_tail - c_head), so wrap-around is harmless; slot = counter & mask. All
 * `capacity` slots are usable (unlike ck_ring_enqueue_*, which keeps one slot
 * empty): for that reason only the layout of struct ck_ring and ck_pr_* are
 * used here, never ck_ring_* functions, whose full/valid tests differ.
 *
 * A process uses a ring through a process-local handle, shm_ring_t, made by
 * shm_ring_attach(): it snapshots the geometry (so a scribbled header cannot
 * redirect writes outside the region), keeps the process's own index and a
 * cached copy of the peer's index (so the peer's cache line is touched only
 * when the cached value says full/empty).
 *
 * Invariants (cited by FAVO_ASSERTs as "R<n>")
 * ----------
 *  R1. One writer per word (ARCHITECTURE invariant 2): c_head is written
 *      only by the consumer, p_tail and p_head only by the producer, the
 *      identity line only by shm_ring_init (shm_ring_repair writes indices
 *      only on behalf of a side that is down).
 *  R2. 0 <= p_tail - c_head <= capacity            (published, unreleased)
 *  R3. 0 <= p_head - p_tail <= capacity - (p_tail - c_head)   (reserved)
 *  R4. A slot's bytes are written only while it is free (not in
 *      [c_head, p_tail)) and read only while it is published; p_tail moves
 *      only after the slot stores (release fence), slots are read only after
 *      loading p_tail (acquire fence), and symmetrically for c_head.
 *  R5. Consume, then release (invariant 3): c_head moves past a message only
 *      when the consumer calls shm_ring_release(), after applying it.
 *
 * Slot lifecycle (the counters say which state a slot is in)
 * --------------
 *
 *        shm_ring_enqueue*()  (copy + one p_tail store per burst)
 *     +-------------------------------------------------------+
 *     |                                                       v
 *   FREE --shm_ring_reserve()--> RESERVED --shm_ring_commit()--> PUBLISHED
 *     ^    (p_head += 1)          (producer     (p_tail = p_head)     |
 *     |                           writes it                          |
 *     |                           in place)              shm_ring_peek*()
 *     |                                                 (local only, no
 *     |                                                  shared store)
 *     |                                                       v
 *     +------------ shm_ring_release(n) (c_head += n) ----- PEEKED
 *
 * Crash semantics (what a restarted peer sees)
 * ----------------
 *  - Producer dies: every message whose burst was committed is in the ring;
 *    a burst it was copying or a reservation it had not committed was never
 *    visible and is dropped (shm_ring_repair() rolls p_head back to p_tail
 *    and reports how many slots that discarded). The new producer carries on
 *    at p_tail.
 *  - Consumer dies: c_head still points at the first message it had not
 *    RELEASED. The new consumer starts there, so it sees again exactly the
 *    messages the dead one had peeked but not released - at most one peek
 *    burst if the consumer releases after each burst, at most one message
 *    if it releases after each message (shm_ring_peek_one + release(1)).
 *    Nothing is lost and nothing released is seen twice. Handlers are
 *    idempotent (invariant 3), so the replay is harmless.
 *
 * Error codes: 0 or a count on success; -EAGAIN ring full (producer) or empty
 * (consumer); -EINVAL bad arguments (size not a power of two, region too
 * small, wrong role); -EPROTO foreign region (bad magic or version);
 * -ESTALE generation differs (region left over from an earlier segment);
 * -EMSGSIZE slot size differs from the caller's descriptor size; -EUCLEAN
 * indices break R2/R3 (corrupted or overwritten region).
 *
 * Not thread-safe beyond SPSC: one producer handle and one consumer handle
 * per ring, in any processes or threads.
 */
#ifndef SHM_RING_H
#define SHM_RING_H

#include <assert.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <ck_pr.h>
#include <ck_ring.h>

#include "favo_base.h"

#define SHM_RING_MAGIC 0x31474e524f564146ull /* "FAVORNG1" little-endian */
#define SHM_RING_VERSION 1u
#define SHM_RING_MAX_CAPACITY (1u << 30)
#define SHM_RING_MAX_SLOT 4096u

/* The shared header; the slots follow at slots_off. */
struct shm_ring {
    uint64_t magic;
    uint32_t version;
    uint32_t generation;
    uint32_t capacity;
    uint32_t slot_size;
    uint64_t slots_off;
    uint64_t region_bytes;
    /* c_head on line 1, p_tail + p_head on line 2, size/mask on line 3. */
    struct ck_ring ck FAVO_ALIGNED_CL;
} FAVO_ALIGNED_CL;

enum shm_ring_role { SHM_RING_PRODUCER = 1, SHM_RING_CONSUMER = 2 };

/* Process-local handle (never in shared memory: it holds pointers). */
typedef struct shm_ring_t {
    struct shm_ring *hdr;
    unsigned char *slots;
    uint32_t mask;
    uint32_t capacity;
    uint32_t slot_size;
    uint32_t role;
    uint32_t local;   /* producer: p_tail as published; consumer: c_head */
    uint32_t pending; /* producer: reserved, uncommitted; consumer: peeked */
    uint32_t peer;    /* cached peer index: producer c_head, consumer p_tail */
} shm_ring_t;

/* ---- Cold path (shm_ring.c) ------------------------------------------- */

/* Bytes a ring of `capacity` slots of `slot_size` bytes needs (a multiple of
 * 64); 0 when capacity is not a power of two in [1, 2^30] or slot_size is
 * not in [1, 4096]. */
size_t shm_ring_region_size(uint32_t capacity, uint32_t slot_size);

/* Format `mem` (64-byte aligned, `len` bytes) as an empty ring. Nobody may
 * be attached. The magic is stored last, so a half-formatted region is
 * refused by attach. Returns 0, or -EINVAL. */
int shm_ring_init(void *mem, size_t len, uint32_t capacity, uint32_t slot_size,
                  uint32_t generation);

/* Check `mem` is a ring of this generation and slot size, with consistent
 * indices, and fill the handle for `role`. A consumer starts at c_head (the
 * first unreleased message), a producer at p_tail (any uncommitted
 * reservation of a dead producer is overwritten). Returns 0, -EINVAL,
 * -EPROTO, -ESTALE, -EMSGSIZE or -EUCLEAN. */
int shm_ring_attach(shm_ring_t *r, void *mem, size_t len, uint32_t slot_size,
                    uint32_t generation, enum shm_ring_role role);

/* Why `mem` is not a usable ring of this generation and slot size (0 when it
 * is). Exact when called by one of the two peers while the other runs (it
 * reads c_head, then p_tail, then p_head, once each); a third party racing
 * both peers may see a transient -EUCLEAN. */
int shm_ring_check(const void *mem, size_t len, uint32_t slot_size, uint32_t generation);
/* shm_ring_check() == 0. */
bool shm_ring_valid(const void *mem, size_t len, uint32_t slot_size, uint32_t generation);

#define SHM_RING_REPAIR_RESET 1u /* also empty a ring whose indices break R2 */

/* For a peer that restarted. Called by the restarted PRODUCER (or by the
 * supervisor while the producer is down): rolls p_head back to p_tail,
 * discarding a reservation the dead producer never committed (a producer's
 * attach does the same silently; repair says how much it dropped, for the
 * log). With
 * SHM_RING_REPAIR_RESET and BOTH sides down, a ring whose indices break R2
 * is emptied (c_head = p_head = p_tail). Returns the number of slots
 * discarded (0 = nothing to repair), -EUCLEAN when R2 is broken and RESET was
 * not given, or the attach errors for a foreign/stale region. */
int shm_ring_repair(void *mem, size_t len, uint32_t slot_size, uint32_t generation,
                    unsigned flags);

/* ---- Hot path (inline; `ts` is the slot size, a constant in typed rings) */

static inline void *_shm_ring_slot(const shm_ring_t *r, uint32_t idx, uint32_t ts)
{
    return r->slots + (size_t)(idx & r->mask) * ts;
}

/* Free slots as the producer sees them, reloading c_head only when the
 * cached value cannot satisfy `want`. */
static inline uint32_t _shm_ring_free(shm_ring_t *r, uint32_t want)
{
    uint32_t used = r->local + r->pending - r->peer;

    assert(r->role == SHM_RING_PRODUCER);
    if (favo_likely(r->capacity - used >= want))
        return r->capacity - used;
    r->peer = ck_pr_load_uint(&r->hdr->ck.c_head);
    /* Acquire: the consumer's reads of the slots it released happen before
     * our writes into them (pairs with the release fence in
     * shm_ring_release). A compiler barrier on x86-TSO. */
    ck_pr_fence_acquire();
    used = r->local + r->pending - r->peer;
    FAVO_ASSERT(used <= r->capacity); /* R2: c_head never passes p_tail */
    return r->capacity - used;
}

/* Copy up to n descriptors in and publish them with ONE p_tail store.
 * Returns the number enqueued (1..n), -EAGAIN when full. */
static inline int _shm_ring_enqueue_burst(shm_ring_t *r, const void *src, uint32_t n,
                                          uint32_t ts)
{
    uint32_t room = _shm_ring_free(r, n), i;
    const unsigned char *s = (const unsigned char *)src;

    if (favo_unlikely(room == 0))
        return -EAGAIN;
    n = FAVO_MIN(n, room);
    for (i = 0; i < n; i++)
        memcpy(_shm_ring_slot(r, r->local + r->pending + i, ts), s + (size_t)i * ts, ts);
    /* Slots reserved in place before this burst (if any) come first; the
     * copy went after them, and both are committed together. */
    r->local += r->pending + n;
    r->pending = 0;
    /* p_head first: a producer dying between the two stores leaves what
     * looks like an uncommitted reservation, which repair drops (R3). */
    ck_pr_store_uint(&r->hdr->ck.p_head, r->local);
    /* Release: the slot stores above are visible before the new p_tail
     * (R4; pairs with the acquire after the consumer loads p_tail). */
    ck_pr_fence_release();
    ck_pr_store_uint(&r->hdr->ck.p_tail, r->local);
    return (int)n;
}

/* Next unpeeked message for the consumer: copy up to n without releasing.
 * Returns the number copied (1..n), -EAGAIN when nothing new. */
static inline int _shm_ring_peek_burst(shm_ring_t *r, void *dst, uint32_t n, uint32_t ts)
{
    uint32_t first = r->local + r->pending, avail = r->peer - first, i;
    unsigned char *d = (unsigned char *)dst;

    assert(r->role == SHM_RING_CONSUMER);
    if (avail < n) {
        r->peer = ck_pr_load_uint(&r->hdr->ck.p_tail);
        /* Acquire: slot reads below happen after the p_tail load (R4;
         * pairs with the producer's release before its p_tail store). */
        ck_pr_fence_acquire();
        avail = r->peer - first;
        FAVO_ASSERT(r->peer - r->local <= r->capacity); /* R2 */
        if (avail == 0)
            return -EAGAIN;
    }
    n = FAVO_MIN(n, avail);
    for (i = 0; i < n; i++)
        memcpy(d + (size_t)i * ts, _shm_ring_slot(r, first + i, ts), ts);
    r->pending += n;
    return (int)n;
}

/* Zero-copy peek of the next unpeeked message; NULL when nothing new. The
 * pointer stays valid until the message is released. */
static inline const void *shm_ring_peek_one(shm_ring_t *r)
{
    uint32_t first = r->local + r->pending;

    assert(r->role == SHM_RING_CONSUMER);
    if (r->peer == first) {
        r->peer = ck_pr_load_uint(&r->hdr->ck.p_tail);
        /* Acquire: see _shm_ring_peek_burst. */
        ck_pr_fence_acquire();
        FAVO_ASSERT(r->peer - r->local <= r->capacity); /* R2 */
        if (r->peer == first)
            return NULL;
    }
    r->pending++;
    return _shm_ring_slot(r, first, r->slot_size);
}

/* Release the oldest n peeked messages (R5: call after applying them). */
static inline void shm_ring_release(shm_ring_t *r, uint32_t n)
{
    assert(r->role == SHM_RING_CONSUMER);
    FAVO_ASSERT(n <= r->pending); /* R5: only what was peeked */
    r->pending -= n;
    r->local += n;
    /* Release: our reads of these slots complete before the producer can
     * see them free and overwrite them (R4; pairs with the acquire in
     * _shm_ring_free). A compiler barrier on x86-TSO. */
    ck_pr_fence_release();
    ck_pr_store_uint(&r->hdr->ck.c_head, r->local);
}

/* Zero-copy produce: a pointer to the next free slot, or NULL when full.
 * The slot is invisible until shm_ring_commit(); reserve several, commit
 * once to publish a burst. */
static inline void *shm_ring_reserve(shm_ring_t *r)
{
    void *slot;

    if (favo_unlikely(_shm_ring_free(r, 1) == 0))
        return NULL;
    slot = _shm_ring_slot(r, r->local + r->pending, r->slot_size);
    r->pending++;
    /* p_head records the reservation for shm_ring_repair(); only ordered
     * before the commit, which nobody else reads before p_tail. */
    ck_pr_store_uint(&r->hdr->ck.p_head, r->local + r->pending);
    return slot;
}

/* Publish every reserved slot with one p_tail store; returns how many. */
static inline uint32_t shm_ring_commit(shm_ring_t *r)
{
    uint32_t n = r->pending;

    assert(r->role == SHM_RING_PRODUCER);
    r->local += n;
    r->pending = 0;
    /* Release: the in-place slot writes are visible before p_tail (R4). */
    ck_pr_fence_release();
    ck_pr_store_uint(&r->hdr->ck.p_tail, r->local);
    return n;
}

/* Generic (untyped) forms: the slot size comes from the handle. */
static inline int shm_ring_enqueue_burst(shm_ring_t *r, const void *src, uint32_t n)
{
    return _shm_ring_enqueue_burst(r, src, n, r->slot_size);
}
static inline int shm_ring_enqueue(shm_ring_t *r, const void *src)
{
    int n = _shm_ring_enqueue_burst(r, src, 1, r->slot_size);
    return n < 0 ? n : 0;
}
static inline int shm_ring_peek_burst(shm_ring_t *r, void *dst, uint32_t n)
{
    return _shm_ring_peek_burst(r, dst, n, r->slot_size);
}
/* peek + release at once: for consumers whose handling cannot fail midway
 * (the copy in dst is all they need). */
static inline int shm_ring_dequeue_burst(shm_ring_t *r, void *dst, uint32_t n)
{
    int got = _shm_ring_peek_burst(r, dst, n, r->slot_size);
    if (got > 0)
        shm_ring_release(r, (uint32_t)got);
    return got;
}

/* Published messages not yet released (consumer: includes peeked ones),
 * read from the shared indices; a snapshot, exact only when both sides
 * are idle. */
static inline uint32_t shm_ring_count(const shm_ring_t *r)
{
    uint32_t c = ck_pr_load_uint(&r->hdr->ck.c_head);
    return ck_pr_load_uint(&r->hdr->ck.p_tail) - c;
}
/* Consumer: published messages not yet peeked, from a fresh load of p_tail
 * (the check a consumer makes after announcing it is going to sleep). */
static inline uint32_t shm_ring_available(shm_ring_t *r)
{
    assert(r->role == SHM_RING_CONSUMER);
    r->peer = ck_pr_load_uint(&r->hdr->ck.p_tail);
    /* Acquire: a later peek reads slots after this p_tail load (R4). */
    ck_pr_fence_acquire();
    FAVO_ASSERT(r->peer - r->local <= r->capacity); /* R2 */
    return r->peer - (r->local + r->pending);
}
/* Messages peeked and not yet released by this consumer handle. */
static inline uint32_t shm_ring_peeked(const shm_ring_t *r) { return r->pending; }

/*
 * Typed rings: SHM_RING_TYPED(name, type) defines name_init, name_attach,
 * name_enqueue, name_enqueue_burst, name_peek, name_peek_burst,
 * name_dequeue_burst with `type` descriptors; the constant slot size lets
 * the compiler inline each copy. Example:
 *     struct ing_req_desc { uint32_t cell; uint32_t flags; uint64_t rid; };
 *     SHM_RING_TYPED(ing_req_ring, struct ing_req_desc)
 * (marked unused: clang warns about unused static inline functions that a
 * macro defines in a .c file).
 */
#define _SHM_RING_TYPED_FN static inline __attribute__((unused))
#define SHM_RING_TYPED(name, type)                                                       \
    _SHM_RING_TYPED_FN size_t name##_region_size(uint32_t capacity)                           \
    {                                                                                    \
        return shm_ring_region_size(capacity, (uint32_t)sizeof(type));                   \
    }                                                                                    \
    _SHM_RING_TYPED_FN int name##_init(void *mem, size_t len, uint32_t capacity, uint32_t gen) \
    {                                                                                    \
        return shm_ring_init(mem, len, capacity, (uint32_t)sizeof(type), gen);           \
    }                                                                                    \
    _SHM_RING_TYPED_FN int name##_attach(shm_ring_t *r, void *mem, size_t len, uint32_t gen,  \
                                    enum shm_ring_role role)                             \
    {                                                                                    \
        return shm_ring_attach(r, mem, len, (uint32_t)sizeof(type), gen, role);          \
    }                                                                                    \
    _SHM_RING_TYPED_FN int name##_enqueue_burst(shm_ring_t *r, const type *src, uint32_t n)   \
    {                                                                                    \
        return _shm_ring_enqueue_burst(r, src, n, (uint32_t)sizeof(type));              \
    }                                                                                    \
    _SHM_RING_TYPED_FN int name##_enqueue(shm_ring_t *r, const type *src)                     \
    {                                                                                    \
        int n_ = _shm_ring_enqueue_burst(r, src, 1, (uint32_t)sizeof(type));             \
        return n_ < 0 ? n_ : 0;                                                          \
    }                                                                                    \
    _SHM_RING_TYPED_FN int name##_peek_burst(shm_ring_t *r, type *dst, uint32_t n)            \
    {                                                                                    \
        return _shm_ring_peek_burst(r, dst, n, (uint32_t)sizeof(type));                  \
    }                                                                                    \
    _SHM_RING_TYPED_FN int name##_peek(shm_ring_t *r, type *dst)                              \
    {                                                                                    \
        int n_ = _shm_ring_peek_burst(r, dst, 1, (uint32_t)sizeof(type));                \
        return n_ < 0 ? n_ : 0;                                                          \
    }                                                                                    \
    _SHM_RING_TYPED_FN int name##_dequeue_burst(shm_ring_t *r, type *dst, uint32_t n)         \
    {                                                                                    \
        int n_ = _shm_ring_peek_burst(r, dst, n, (uint32_t)sizeof(type));                \
        if (n_ > 0)                                                                      \
            shm_ring_release(r, (uint32_t)n_);                                           \
        return n_;                                                                       \
    }

#endif /* SHM_RING_H */
