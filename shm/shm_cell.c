/*
 * shm_cell.c - the cell pool (shm_cell.h): layout, allocation from the
 * allocator's private stack, ownership hand-off, scrub-on-free and the
 * return rings.
 */
#include "shm_cell.h"

#include <ck_pr.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

SHM_RING_TYPED(shm_cell_ret_ring, shm_cell_ref_t)

#define DRAIN_BURST 64

static size_t align_up(size_t v, size_t a)
{
    return (v + a - 1) & ~(a - 1);
}

static uint32_t pow2_at_least(uint64_t n)
{
    uint32_t c = 1;

    while (c < n && c < SHM_RING_MAX_CAPACITY)
        c <<= 1;
    return c;
}

static bool cfg_valid(const struct shm_cell_cfg *cfg)
{
    uint64_t total = 0;

    if (!cfg || cfg->nclasses == 0 || cfg->nclasses > SHM_CELL_MAX_CLASSES ||
        cfg->nreturn > SHM_CELL_MAX_RETURN || (cfg->flags & ~SHM_CELL_F_POISON))
        return false;
    for (unsigned c = 0; c < cfg->nclasses; c++) {
        if (cfg->classes[c].cell_size == 0 || cfg->classes[c].cell_size % 64 ||
            cfg->classes[c].ncells == 0 || cfg->classes[c].ncells > SHM_CELL_MAX_CELLS)
            return false;
        if (c && cfg->classes[c].cell_size <= cfg->classes[c - 1].cell_size)
            return false;
        total += cfg->classes[c].ncells;
    }
    return total <= SHM_RING_MAX_CAPACITY;
}

/* Compute the layout into h (offsets only); returns the region size. */
static size_t layout(const struct shm_cell_cfg *cfg, struct shm_cell_pool_hdr *h)
{
    size_t off = align_up(sizeof(*h), FAVO_CACHELINE);
    uint64_t total = 0;

    memset(h, 0, sizeof(*h));
    h->nclasses = cfg->nclasses;
    h->nreturn = cfg->nreturn;
    h->flags = cfg->flags;
    for (unsigned c = 0; c < cfg->nclasses; c++) {
        struct shm_cell_class *k = &h->classes[c];

        k->cell_size = cfg->classes[c].cell_size;
        k->ncells = cfg->classes[c].ncells;
        k->desc_off = off;
        off = align_up(off + (size_t)k->ncells * sizeof(struct shm_cell_desc), FAVO_CACHELINE);
        k->stack_off = off;
        off = align_up(off + (1 + (size_t)k->ncells) * sizeof(uint32_t), FAVO_CACHELINE);
        total += k->ncells;
    }
    /* cell inv 4: a return ring can hold every cell at once. */
    h->ring_capacity = pow2_at_least(total);
    h->ring_bytes = shm_ring_region_size(h->ring_capacity, sizeof(shm_cell_ref_t));
    for (unsigned r = 0; r < cfg->nreturn; r++) {
        h->ring_off[r] = off;
        off = align_up(off + h->ring_bytes, FAVO_CACHELINE);
    }
    for (unsigned c = 0; c < cfg->nclasses; c++) {
        struct shm_cell_class *k = &h->classes[c];

        off = align_up(off, 4096);
        k->data_off = off;
        off += (size_t)k->ncells * k->cell_size;
    }
    h->region_bytes = align_up(off, FAVO_CACHELINE);
    return h->region_bytes;
}

size_t shm_cell_pool_size(const struct shm_cell_cfg *cfg)
{
    struct shm_cell_pool_hdr h;

    return cfg_valid(cfg) ? layout(cfg, &h) : 0;
}

static struct shm_cell_desc *desc_of(char *base, const struct shm_cell_class *k, uint32_t idx)
{
    return (struct shm_cell_desc *)(base + k->desc_off) + idx;
}

static uint32_t *stack_of(char *base, const struct shm_cell_class *k)
{
    return (uint32_t *)(base + k->stack_off); /* [0] = top, [1..] = indices */
}

static unsigned char *data_of(char *base, const struct shm_cell_class *k, uint32_t idx)
{
    return (unsigned char *)base + k->data_off + (size_t)idx * k->cell_size;
}

int shm_cell_pool_init(void *mem, size_t len, const struct shm_cell_cfg *cfg,
                       uint32_t generation)
{
    struct shm_cell_pool_hdr h;
    char *base = mem;
    int rc;

    if (!cfg_valid(cfg) || generation == 0 || ((uintptr_t)mem % FAVO_CACHELINE) ||
        layout(cfg, &h) > len)
        return -EINVAL;
    h.magic = 0; /* stored last: a half-formatted pool is refused */
    h.version = SHM_CELL_VERSION;
    h.generation = generation;
    memcpy(base, &h, sizeof(h));
    for (unsigned c = 0; c < h.nclasses; c++) {
        const struct shm_cell_class *k = &h.classes[c];
        uint32_t *stack = stack_of(base, k);

        for (uint32_t i = 0; i < k->ncells; i++) {
            struct shm_cell_desc *d = desc_of(base, k, i);

            d->gen = 1;
            d->owner = SHM_CELL_FREE;
            d->len = 0;
            d->reserved = 0;
            stack[1 + i] = k->ncells - 1 - i; /* pops cell 0 first */
        }
        stack[0] = k->ncells;
        memset(data_of(base, k, 0), (h.flags & SHM_CELL_F_POISON) ? SHM_CELL_POISON : 0,
               (size_t)k->ncells * k->cell_size);
    }
    for (unsigned r = 0; r < h.nreturn; r++) {
        rc = shm_cell_ret_ring_init(base + h.ring_off[r], h.ring_bytes, h.ring_capacity,
                                    generation);
        if (rc)
            return rc;
    }
    ck_pr_fence_store(); /* everything above before the magic (release) */
    ck_pr_store_64(&((struct shm_cell_pool_hdr *)base)->magic, SHM_CELL_MAGIC);
    return 0;
}

/* The header of a pool another process formatted: every offset inside. */
static int hdr_check(const struct shm_cell_pool_hdr *h, size_t len, uint32_t generation)
{
    struct shm_cell_cfg cfg = { 0 };
    struct shm_cell_pool_hdr want;

    if (len < sizeof(*h) || ck_pr_load_64(&h->magic) != SHM_CELL_MAGIC ||
        h->version != SHM_CELL_VERSION)
        return -EPROTO;
    ck_pr_fence_load(); /* the magic before the rest (acquire) */
    if (h->generation != generation)
        return -EPROTO;
    if (h->nclasses == 0 || h->nclasses > SHM_CELL_MAX_CLASSES ||
        h->nreturn > SHM_CELL_MAX_RETURN)
        return -EBADMSG;
    /* Recompute the layout from the geometry: any other offset is corrupt. */
    cfg.nclasses = h->nclasses;
    cfg.nreturn = h->nreturn;
    cfg.flags = h->flags;
    for (unsigned c = 0; c < h->nclasses; c++) {
        cfg.classes[c].cell_size = h->classes[c].cell_size;
        cfg.classes[c].ncells = h->classes[c].ncells;
    }
    if (!cfg_valid(&cfg) || layout(&cfg, &want) > len || want.region_bytes != h->region_bytes ||
        memcmp(want.classes, h->classes, sizeof(want.classes)) ||
        memcmp(want.ring_off, h->ring_off, sizeof(want.ring_off)) ||
        want.ring_bytes != h->ring_bytes || want.ring_capacity != h->ring_capacity)
        return -EBADMSG;
    return 0;
}

/*
 * A (re)starting allocator: the free stack is exactly the FREE cells. This
 * also returns a cell a dead allocator had popped but not yet handed out
 * (still FREE), and makes drain's replay check sound (cell inv 4).
 */
static void stack_rebuild(char *base, const struct shm_cell_pool_hdr *h)
{
    for (unsigned c = 0; c < h->nclasses; c++) {
        const struct shm_cell_class *k = &h->classes[c];
        uint32_t *stack = stack_of(base, k), top = 0;

        for (uint32_t i = k->ncells; i-- > 0;)
            if (ck_pr_load_32(&desc_of(base, k, i)->owner) == SHM_CELL_FREE)
                stack[1 + top++] = i;
        ck_pr_store_32(&stack[0], top);
    }
}

int shm_cell_pool_attach(struct shm_cell_pool *p, void *mem, size_t len, uint32_t generation,
                         enum shm_cell_role role, int ret)
{
    struct shm_cell_pool_hdr *h = mem;
    int rc;

    memset(p, 0, sizeof(*p));
    p->ret = -1;
    rc = hdr_check(h, len, generation);
    if (rc)
        return rc;
    if (role == SHM_CELL_ROLE_ALLOCATOR) {
        for (unsigned r = 0; r < h->nreturn; r++) {
            rc = shm_cell_ret_ring_attach(&p->rings[r], (char *)mem + h->ring_off[r],
                                          h->ring_bytes, generation, SHM_RING_CONSUMER);
            if (rc)
                return rc;
        }
        stack_rebuild(mem, h);
    } else if (role == SHM_CELL_ROLE_USER) {
        if (ret >= (int)h->nreturn || ret < -1)
            return -EINVAL;
        if (ret >= 0) {
            rc = shm_cell_ret_ring_attach(&p->rings[ret], (char *)mem + h->ring_off[ret],
                                          h->ring_bytes, generation, SHM_RING_PRODUCER);
            if (rc)
                return rc;
        }
        p->ret = ret;
    } else {
        return -EINVAL;
    }
    p->hdr = h;
    p->base = mem;
    p->role = role;
    return 0;
}

/* Decode and check a reference; on success *k and *d are the cell's. */
static int ref_check(const struct shm_cell_pool *p, shm_cell_ref_t ref, enum shm_cell_owner me,
                     const struct shm_cell_class **kp, struct shm_cell_desc **dp)
{
    unsigned cls = shm_cell_ref_class(ref);
    uint32_t idx = shm_cell_ref_index(ref);
    const struct shm_cell_class *k;
    struct shm_cell_desc *d;

    if (!p->hdr || cls >= p->hdr->nclasses)
        return -EINVAL;
    k = &p->hdr->classes[cls];
    if (idx >= k->ncells)
        return -EINVAL;
    d = desc_of(p->base, k, idx);
    /* Our own ring acquire ordered these loads after the previous owner's
     * stores (cell inv 1). */
    if (ck_pr_load_32(&d->gen) != shm_cell_ref_gen(ref))
        return -ESTALE; /* cell inv 3 */
    if (ck_pr_load_32(&d->owner) != (uint32_t)me)
        return -EPERM;
    *kp = k;
    *dp = d;
    return 0;
}

static void stack_push(struct shm_cell_pool *p, const struct shm_cell_class *k, uint32_t idx)
{
    uint32_t *stack = stack_of(p->base, k);
    uint32_t top = stack[0];

    FAVO_ASSERT(top < k->ncells); /* cell inv 4: never more free cells than cells */
    stack[1 + top] = idx;
    ck_pr_store_32(&stack[0], top + 1); /* readers of shm_cell_free_count */
}

int shm_cell_drain(struct shm_cell_pool *p)
{
    shm_cell_ref_t refs[DRAIN_BURST];
    int moved = 0;

    if (p->role != SHM_CELL_ROLE_ALLOCATOR)
        return -EINVAL;
    for (unsigned r = 0; r < p->hdr->nreturn; r++) {
        int n;

        while ((n = shm_cell_ret_ring_peek_burst(&p->rings[r], refs, DRAIN_BURST)) > 0) {
            for (int i = 0; i < n; i++) {
                unsigned cls = shm_cell_ref_class(refs[i]);
                uint32_t idx = shm_cell_ref_index(refs[i]);
                const struct shm_cell_class *k;
                struct shm_cell_desc *d;

                /* A malformed return corrupts the pool: stop here. */
                FAVO_ASSERT(cls < p->hdr->nclasses && idx < p->hdr->classes[cls].ncells);
                k = &p->hdr->classes[cls];
                d = desc_of(p->base, k, idx);
                FAVO_ASSERT(ck_pr_load_32(&d->gen) == shm_cell_ref_gen(refs[i])); /* inv 3 */
                if (ck_pr_load_32(&d->owner) == SHM_CELL_FREE)
                    continue; /* replayed after our restart: already on the stack */
                FAVO_ASSERT(ck_pr_load_32(&d->owner) == SHM_CELL_RETURNING); /* inv 4 */
                ck_pr_store_32(&d->owner, SHM_CELL_FREE);
                stack_push(p, k, idx);
            }
            /* Consume, then release (invariant 3): a restarted allocator
             * rebuilds its stack from the FREE descriptors (stack_rebuild)
             * and skips the replayed references of cells already FREE. */
            shm_ring_release(&p->rings[r], (uint32_t)n);
            moved += n;
        }
    }
    return moved;
}

/* cell inv 5: every byte of a free cell still holds the poison. */
static void poison_verify(const struct shm_cell_class *k, unsigned cls, uint32_t idx,
                          const unsigned char *data)
{
    for (size_t i = 0; i < k->cell_size; i++) {
        if (favo_unlikely(data[i] != SHM_CELL_POISON)) {
            favo_err("cell pool: class %u cell %u was written after it was freed (offset %zu "
                     "of %u)", cls, idx, i, k->cell_size);
            FAVO_ASSERT(!"cell inv 5: write to a freed cell");
        }
    }
}

int shm_cell_alloc(struct shm_cell_pool *p, size_t need, shm_cell_ref_t *ref)
{
    const struct shm_cell_pool_hdr *h = p->hdr;
    unsigned first;

    if (p->role != SHM_CELL_ROLE_ALLOCATOR)
        return -EINVAL;
    for (first = 0; first < h->nclasses && h->classes[first].cell_size < need; first++)
        ;
    if (first == h->nclasses)
        return -EMSGSIZE;
    shm_cell_drain(p);
    for (unsigned c = first; c < h->nclasses; c++) {
        const struct shm_cell_class *k = &h->classes[c];
        uint32_t *stack = stack_of(p->base, k);
        uint32_t top = stack[0], idx;
        struct shm_cell_desc *d;

        if (top == 0)
            continue;
        idx = stack[top];
        FAVO_ASSERT(idx < k->ncells); /* cell inv 4 */
        ck_pr_store_32(&stack[0], top - 1);
        d = desc_of(p->base, k, idx);
        FAVO_ASSERT(d->owner == SHM_CELL_FREE); /* cell inv 4 */
        if (h->flags & SHM_CELL_F_POISON) {
            unsigned char *data = data_of(p->base, k, idx);

            poison_verify(k, c, idx, data);
            memset(data, 0, k->cell_size);
        }
        d->len = 0;
        ck_pr_store_32(&d->owner, SHM_CELL_INGRESS);
        *ref = shm_cell_ref(d->gen, c, idx);
        return 0;
    }
    return -EAGAIN;
}

int shm_cell_get(const struct shm_cell_pool *p, shm_cell_ref_t ref, enum shm_cell_owner me,
                 void **data, size_t *size)
{
    const struct shm_cell_class *k;
    struct shm_cell_desc *d;
    int rc = ref_check(p, ref, me, &k, &d);

    if (rc)
        return rc;
    *data = data_of(p->base, k, shm_cell_ref_index(ref));
    if (size)
        *size = k->cell_size;
    return 0;
}

int shm_cell_bytes(const struct shm_cell_pool *p, shm_cell_ref_t ref, void **data, size_t *size)
{
    unsigned cls = shm_cell_ref_class(ref);
    uint32_t idx = shm_cell_ref_index(ref);
    const struct shm_cell_class *k;
    const struct shm_cell_desc *d;
    uint32_t owner;

    if (!p->hdr || cls >= p->hdr->nclasses)
        return -EINVAL;
    k = &p->hdr->classes[cls];
    if (idx >= k->ncells)
        return -EINVAL;
    d = desc_of(p->base, k, idx);
    if (ck_pr_load_32(&d->gen) != shm_cell_ref_gen(ref))
        return -ESTALE; /* cell inv 3 */
    owner = ck_pr_load_32(&d->owner);
    if (owner == SHM_CELL_FREE || owner == SHM_CELL_RETURNING)
        return -ESTALE;
    *data = data_of(p->base, k, idx);
    if (size)
        *size = k->cell_size;
    return 0;
}

int shm_cell_set_len(struct shm_cell_pool *p, shm_cell_ref_t ref, enum shm_cell_owner me,
                     uint32_t len)
{
    const struct shm_cell_class *k;
    struct shm_cell_desc *d;
    int rc = ref_check(p, ref, me, &k, &d);

    if (rc)
        return rc;
    if (len > k->cell_size)
        return -EINVAL;
    ck_pr_store_32(&d->len, len);
    return 0;
}

int shm_cell_give(struct shm_cell_pool *p, shm_cell_ref_t ref, enum shm_cell_owner me,
                  enum shm_cell_owner to)
{
    const struct shm_cell_class *k;
    struct shm_cell_desc *d;
    int rc;

    if (to == SHM_CELL_FREE || to == SHM_CELL_RETURNING || (unsigned)to >= SHM_CELL_OWNER__COUNT)
        return -EINVAL;
    rc = ref_check(p, ref, me, &k, &d);
    if (rc)
        return rc;
    /* cell inv 1: the last store we make to this cell; the ring enqueue
     * that follows releases it to `to`. */
    ck_pr_store_32(&d->owner, (uint32_t)to);
    return 0;
}

/* cell inv 6: [lo, hi) of a cell freed by span still holds the zeros of
 * its allocation. The line after lo and the line before hi always (an
 * overrun of the caller's mark lands there first), every byte in poison
 * (debug) mode. Names class, index and offset, never the bytes. */
static void span_verify(const struct shm_cell_pool *p, const unsigned char *data, unsigned cls,
                        uint32_t idx, size_t lo, size_t hi)
{
    size_t a = lo, b = hi;

    if (!(p->hdr->flags & SHM_CELL_F_POISON) && hi - lo > 128) {
        /* the first 64 bytes from lo, the last 64 before hi */
        for (size_t i = lo; i < lo + 64; i++)
            if (favo_unlikely(data[i])) {
                a = i;
                goto bad;
            }
        a = hi - 64;
    }
    for (size_t i = a; i < b; i++)
        if (favo_unlikely(data[i])) {
            a = i;
            goto bad;
        }
    return;
bad:
    favo_err("cell pool: class %u cell %u was written at offset %zu, inside the span "
             "[%zu, %zu) its freer said was never written", cls, idx, a, lo, hi);
    FAVO_ASSERT(!"cell inv 6: write beyond the freer's high-water mark");
}

static int cell_free(struct shm_cell_pool *p, shm_cell_ref_t ref, enum shm_cell_owner me,
                     size_t lo, size_t hi)
{
    const struct shm_cell_class *k;
    struct shm_cell_desc *d;
    unsigned char *data;
    uint32_t gen;
    int rc;

    if (p->role == SHM_CELL_ROLE_USER && p->ret < 0)
        return -EINVAL; /* this handle has no return ring */
    rc = ref_check(p, ref, me, &k, &d);
    if (rc)
        return rc;
    if (hi == SIZE_MAX)
        lo = hi = k->cell_size; /* shm_cell_free: all of it */
    if (lo > hi || hi > k->cell_size)
        return -EINVAL;
    data = data_of(p->base, k, shm_cell_ref_index(ref));
    /* cell inv 2: no request byte survives its request (inv 6: the bytes
     * in [lo, hi) are zero already; checked, not assumed). */
    if (lo < hi)
        span_verify(p, data, shm_cell_ref_class(ref), shm_cell_ref_index(ref), lo, hi);
    explicit_bzero(data, lo);
    explicit_bzero(data + hi, k->cell_size - hi);
    if (p->hdr->flags & SHM_CELL_F_POISON)
        memset(data, SHM_CELL_POISON, k->cell_size);
    gen = d->gen + 1;
    if (gen == 0)
        gen = 1; /* 0 would make SHM_CELL_REF_NONE valid */
    ck_pr_store_32(&d->len, 0);
    ck_pr_store_32(&d->gen, gen); /* cell inv 3: every older reference is stale */
    if (p->role == SHM_CELL_ROLE_ALLOCATOR) {
        ck_pr_store_32(&d->owner, SHM_CELL_FREE);
        stack_push(p, k, shm_cell_ref_index(ref));
        return 0;
    }
    ck_pr_store_32(&d->owner, SHM_CELL_RETURNING);
    /* The enqueue's release fence orders the scrub and the descriptor
     * before the allocator can see the reference. cell inv 4: the ring has
     * room for every cell, so it cannot be full. */
    rc = shm_cell_ret_ring_enqueue(&p->rings[p->ret],
                                   &(shm_cell_ref_t){ shm_cell_ref(gen, shm_cell_ref_class(ref),
                                                                   shm_cell_ref_index(ref)) });
    FAVO_ASSERT(rc == 0);
    return 0;
}

int shm_cell_free(struct shm_cell_pool *p, shm_cell_ref_t ref, enum shm_cell_owner me)
{
    return cell_free(p, ref, me, 0, SIZE_MAX);
}

int shm_cell_free_span(struct shm_cell_pool *p, shm_cell_ref_t ref, enum shm_cell_owner me,
                       size_t lo, size_t hi)
{
    if (hi == SIZE_MAX)
        return -EINVAL;
    return cell_free(p, ref, me, lo, hi);
}

unsigned shm_cell_free_count(const struct shm_cell_pool *p, unsigned cls)
{
    if (!p->hdr || cls >= p->hdr->nclasses)
        return 0;
    return ck_pr_load_32(stack_of(p->base, &p->hdr->classes[cls]));
}

const char *shm_cell_owner_name(enum shm_cell_owner o)
{
    static const char *const n[] = { "free", "ingress", "batcher", "engine", "egress",
                                     "returning" };

    return (unsigned)o < FAVO_ARRAY_SIZE(n) ? n[o] : "?";
}
