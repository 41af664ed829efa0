/*
 * shm_ring.c - the cold half of shm_ring.h: formatting, attaching,
 * validating and repairing a ring region. The hot path (enqueue, peek,
 * release) is inline in the header.
 */
#include "shm_ring.h"

#include <stdint.h>
#include <string.h>

_Static_assert(offsetof(struct shm_ring, ck) == 64, "ck_ring starts on line 1");
_Static_assert(offsetof(struct shm_ring, ck.p_tail) == 128, "p_tail on its own line");
_Static_assert(sizeof(struct shm_ring) == 256, "slots start at 256");

size_t shm_ring_region_size(uint32_t capacity, uint32_t slot_size)
{
    size_t bytes;

    if (capacity == 0 || capacity > SHM_RING_MAX_CAPACITY || (capacity & (capacity - 1)))
        return 0;
    if (slot_size == 0 || slot_size > SHM_RING_MAX_SLOT)
        return 0;
    bytes = sizeof(struct shm_ring) + (size_t)capacity * slot_size;
    return (bytes + FAVO_CACHELINE - 1) & ~(size_t)(FAVO_CACHELINE - 1);
}

int shm_ring_init(void *mem, size_t len, uint32_t capacity, uint32_t slot_size,
                  uint32_t generation)
{
    struct shm_ring *h = mem;
    size_t need = shm_ring_region_size(capacity, slot_size);

    if (!mem || ((uintptr_t)mem & (FAVO_CACHELINE - 1)) || need == 0 || len < need)
        return -EINVAL;
    /* Clear the magic first so a peer that attaches while we format sees a
     * foreign region, never a half-made ring. */
    ck_pr_store_64(&h->magic, 0);
    ck_pr_fence_store();
    memset((char *)mem + sizeof(h->magic), 0, sizeof(*h) - sizeof(h->magic));
    h->version = SHM_RING_VERSION;
    h->generation = generation;
    h->capacity = capacity;
    h->slot_size = slot_size;
    h->slots_off = sizeof(*h);
    h->region_bytes = need;
    ck_ring_init(&h->ck, capacity);
    /* Release: every field above is visible before the magic that says
     * the region is a ring (pairs with the acquire in shm_ring_check). */
    ck_pr_fence_release();
    ck_pr_store_64(&h->magic, SHM_RING_MAGIC);
    return 0;
}

/* Identity and geometry only; no indices. */
static int ring_check_header(const struct shm_ring *h, size_t len, uint32_t slot_size,
                             uint32_t generation)
{
    uint32_t cap;

    if (!h || ((uintptr_t)h & (FAVO_CACHELINE - 1)) || len < sizeof(*h))
        return -EINVAL;
    if (ck_pr_load_64(&h->magic) != SHM_RING_MAGIC)
        return -EPROTO;
    /* Acquire: the header fields are read after the magic (pairs with the
     * release in shm_ring_init). */
    ck_pr_fence_acquire();
    if (h->version != SHM_RING_VERSION)
        return -EPROTO;
    if (h->generation != generation)
        return -ESTALE;
    if (h->slot_size != slot_size)
        return -EMSGSIZE;
    cap = h->capacity;
    if (shm_ring_region_size(cap, h->slot_size) == 0 || h->slots_off != sizeof(*h) ||
        h->region_bytes != shm_ring_region_size(cap, h->slot_size) ||
        h->ck.size != cap || h->ck.mask != cap - 1)
        return -EUCLEAN;
    if (h->region_bytes > len)
        return -EINVAL; /* the caller's mapping is smaller than the ring */
    return 0;
}

/* R2 and R3 on one snapshot of the indices. */
static int ring_check_indices(const struct shm_ring *h)
{
    uint32_t c = ck_pr_load_uint(&h->ck.c_head);
    uint32_t t = ck_pr_load_uint(&h->ck.p_tail);
    uint32_t p = ck_pr_load_uint(&h->ck.p_head);

    if (t - c > h->capacity)
        return -EUCLEAN;
    if (p - t > h->capacity - (t - c))
        return -EUCLEAN;
    return 0;
}

int shm_ring_check(const void *mem, size_t len, uint32_t slot_size, uint32_t generation)
{
    const struct shm_ring *h = mem;
    int rc = ring_check_header(h, len, slot_size, generation);

    return rc ? rc : ring_check_indices(h);
}

bool shm_ring_valid(const void *mem, size_t len, uint32_t slot_size, uint32_t generation)
{
    return shm_ring_check(mem, len, slot_size, generation) == 0;
}

int shm_ring_attach(shm_ring_t *r, void *mem, size_t len, uint32_t slot_size,
                    uint32_t generation, enum shm_ring_role role)
{
    struct shm_ring *h = mem;
    int rc;

    if (!r || (role != SHM_RING_PRODUCER && role != SHM_RING_CONSUMER))
        return -EINVAL;
    rc = shm_ring_check(mem, len, slot_size, generation);
    if (rc)
        return rc;
    memset(r, 0, sizeof(*r));
    r->hdr = h;
    r->slots = (unsigned char *)mem + sizeof(*h);
    r->capacity = h->capacity;
    r->mask = h->capacity - 1;
    r->slot_size = h->slot_size;
    r->role = role;
    if (role == SHM_RING_PRODUCER) {
        r->local = ck_pr_load_uint(&h->ck.p_tail);
        r->peer = ck_pr_load_uint(&h->ck.c_head);
        /* A dead producer's uncommitted reservation is dropped: we write
         * from p_tail on, and p_head follows our own reservations. */
        ck_pr_store_uint(&h->ck.p_head, r->local);
    } else {
        r->local = ck_pr_load_uint(&h->ck.c_head);
        r->peer = ck_pr_load_uint(&h->ck.p_tail);
    }
    /* Acquire: later slot accesses are ordered after these index loads. */
    ck_pr_fence_acquire();
    return 0;
}

int shm_ring_repair(void *mem, size_t len, uint32_t slot_size, uint32_t generation,
                    unsigned flags)
{
    struct shm_ring *h = mem;
    uint32_t c, t, p;
    int rc = ring_check_header(h, len, slot_size, generation);

    if (rc)
        return rc;
    c = ck_pr_load_uint(&h->ck.c_head);
    t = ck_pr_load_uint(&h->ck.p_tail);
    p = ck_pr_load_uint(&h->ck.p_head);
    if (t - c > h->capacity) {
        if (!(flags & SHM_RING_REPAIR_RESET))
            return -EUCLEAN;
        /* Both sides are down (the caller's promise): nothing to order
         * against, but keep the stores atomic for a reader of the stats. */
        ck_pr_store_uint(&h->ck.c_head, t);
        ck_pr_store_uint(&h->ck.p_head, t);
        ck_pr_fence_store();
        favo_warn("shm_ring: reset a ring with broken indices (%u published)", t - c);
        return (int)FAVO_MIN(t - c, (uint32_t)INT32_MAX);
    }
    if (p == t)
        return 0;
    if (p - t > h->capacity - (t - c)) {
        /* p_head is the producer's word and nonsense: the producer is down
         * (the caller's promise), so put it back where p_tail is. */
        ck_pr_store_uint(&h->ck.p_head, t);
        return 0;
    }
    /* An uncommitted reservation of the dead producer: never visible to
     * the consumer, so dropping it loses nothing that was published. */
    ck_pr_store_uint(&h->ck.p_head, t);
    return (int)(p - t);
}
