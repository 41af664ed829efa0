/*
 * shm_pipe.c - lay out and attach the serving pipeline's region of the data
 * segment (design in shm_pipe.h).
 */
#include "shm_pipe.h"

#include <errno.h>
#include <string.h>

#include <ck_pr.h>

#define PIPE_ALIGN 64u

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }

static bool pow2(uint32_t x) { return x && !(x & (x - 1)); }

int shm_pipe_cfg_defaults(struct shm_pipe_cfg *c)
{
    if (!c->n_ingress)
        c->n_ingress = 1;
    if (!c->n_ranks)
        c->n_ranks = 1;
    if (!c->req_ring)
        c->req_ring = 1024;
    if (!c->conn_ring)
        c->conn_ring = 4096;
    if (!c->ev_ring)
        c->ev_ring = 8192;
    if (!c->ctl_ring)
        c->ctl_ring = 4096;
    if (!c->plan_ring)
        c->plan_ring = SHM_PIPE_PLAN_SLOTS * 2;
    c->cells.nreturn = SHM_PIPE_NRET;
    if (c->n_ingress > SHM_PIPE_MAX_INGRESS || c->n_ranks > SHM_PIPE_MAX_RANKS)
        return -EINVAL;
    if (!pow2(c->req_ring) || !pow2(c->conn_ring) || !pow2(c->ev_ring) || !pow2(c->ctl_ring) ||
        !pow2(c->plan_ring))
        return -EINVAL;
    if (!c->sched_bytes || !c->plan_bytes || !c->max_seqs || !c->result_size)
        return -EINVAL;
    if (!shm_cell_pool_size(&c->cells))
        return -EINVAL;
    return 0;
}

/* Offsets of everything for cfg; returns the total or 0. */
static uint64_t layout(const struct shm_pipe_cfg *c, struct shm_pipe_hdr *h)
{
    uint64_t off = align_up(sizeof(*h), PIPE_ALIGN);
    size_t r;

#define TAKE(field, bytes)                                                                      \
    do {                                                                                        \
        h->field = off;                                                                         \
        off = align_up(off + (bytes), PIPE_ALIGN);                                              \
    } while (0)

    h->len_req = shm_ring_region_size(c->req_ring, sizeof(struct shm_req));
    h->len_conn = shm_ring_region_size(c->conn_ring, sizeof(struct shm_conn_msg));
    h->len_plan_ring = shm_ring_region_size(c->plan_ring, sizeof(struct shm_plan_msg));
    h->len_done = shm_ring_region_size(c->plan_ring, sizeof(struct shm_plan_msg));
    h->len_ev = shm_ring_region_size(c->ev_ring, sizeof(struct shm_ev));
    h->len_ctl = shm_ring_region_size(c->ctl_ring, sizeof(struct shm_ctl));
    if (!h->len_req || !h->len_conn || !h->len_plan_ring || !h->len_ev || !h->len_ctl)
        return 0;
    for (unsigned w = 0; w < c->n_ingress; w++) {
        TAKE(off_req[w], h->len_req);
        TAKE(off_conn[w], h->len_conn);
        TAKE(off_bell_ing[w], sizeof(struct shm_bell_efd));
    }
    for (unsigned k = 0; k < c->n_ranks; k++) {
        TAKE(off_plan_ring[k], h->len_plan_ring);
        TAKE(off_bell_eng[k], sizeof(struct shm_bell_ec));
    }
    TAKE(off_done, h->len_done);
    TAKE(off_ev, h->len_ev);
    TAKE(off_ctl, h->len_ctl);
    TAKE(off_bell_bat, sizeof(struct shm_bell_ec));
    TAKE(off_bell_egr, sizeof(struct shm_bell_efd));
    h->len_tls_out = shm_ring_region_size(c->conn_ring, sizeof(struct shm_tls_out));
    h->len_tls_ack = shm_ring_region_size(c->conn_ring, sizeof(struct shm_tls_ack));
    if (!h->len_tls_out || !h->len_tls_ack)
        return 0;
    for (unsigned w = 0; w < c->n_ingress; w++) {
        TAKE(off_tls_out[w], h->len_tls_out);
        TAKE(off_tls_ack[w], h->len_tls_ack);
    }
    TAKE(off_results, (uint64_t)SHM_PIPE_PLAN_SLOTS * c->max_seqs * c->result_size);
    off = align_up(off, 4096);
    TAKE(off_plans, (uint64_t)c->n_ranks * SHM_PIPE_PLAN_SLOTS * align_up(c->plan_bytes, 64));
    off = align_up(off, 4096);
    TAKE(off_sched, c->sched_bytes);
    off = align_up(off, 4096);
    r = shm_cell_pool_size(&c->cells);
    if (!r)
        return 0;
    h->len_cells = r;
    TAKE(off_cells, r);
    TAKE(off_spec, shm_spec_region_size());
    if (c->cache_bytes) {
        off = align_up(off, 4096);
        h->len_cache = align_up(c->cache_bytes, 64);
        TAKE(off_cache, h->len_cache);
    }
#undef TAKE
    return off;
}

size_t shm_pipe_size(const struct shm_pipe_cfg *cfg)
{
    struct shm_pipe_cfg c = *cfg;
    struct shm_pipe_hdr h;

    if (shm_pipe_cfg_defaults(&c))
        return 0;
    memset(&h, 0, sizeof(h));
    return (size_t)layout(&c, &h);
}

int shm_pipe_init(struct shm_pipe *p, void *mem, size_t len, const struct shm_pipe_cfg *cfg,
                  uint32_t generation)
{
    struct shm_pipe_hdr *h = mem;
    struct shm_pipe_cfg c = *cfg;
    uint64_t need;
    int rc;

    if (!mem || ((uintptr_t)mem & (PIPE_ALIGN - 1)) || shm_pipe_cfg_defaults(&c))
        return -EINVAL;
    memset(h, 0, sizeof(*h));
    need = layout(&c, h);
    if (!need || need > len)
        return -EINVAL;
    h->cfg = c;
    h->version = SHM_PIPE_VERSION;
    h->generation = generation;
    h->region_bytes = need;
    p->hdr = h;
    p->base = mem;
    p->len = need;

    for (unsigned w = 0; w < c.n_ingress; w++) {
        if ((rc = shm_ring_init(p->base + h->off_req[w], h->len_req, c.req_ring,
                                sizeof(struct shm_req), generation)) ||
            (rc = shm_ring_init(p->base + h->off_conn[w], h->len_conn, c.conn_ring,
                                sizeof(struct shm_conn_msg), generation)) ||
            (rc = shm_bell_efd_init(shm_pipe_at(p, h->off_bell_ing[w]), generation)))
            return rc;
    }
    for (unsigned k = 0; k < c.n_ranks; k++) {
        if ((rc = shm_ring_init(p->base + h->off_plan_ring[k], h->len_plan_ring, c.plan_ring,
                                sizeof(struct shm_plan_msg), generation)) ||
            (rc = shm_bell_ec_init(shm_pipe_at(p, h->off_bell_eng[k]), generation,
                                   SHM_BELL_EC_SP)))
            return rc;
    }
    if ((rc = shm_ring_init(p->base + h->off_done, h->len_done, c.plan_ring,
                            sizeof(struct shm_plan_msg), generation)) ||
        (rc = shm_ring_init(p->base + h->off_ev, h->len_ev, c.ev_ring, sizeof(struct shm_ev),
                            generation)) ||
        (rc = shm_ring_init(p->base + h->off_ctl, h->len_ctl, c.ctl_ring,
                            sizeof(struct shm_ctl), generation)) ||
        (rc = shm_bell_ec_init(shm_pipe_at(p, h->off_bell_bat), generation, 0)) ||
        (rc = shm_bell_efd_init(shm_pipe_at(p, h->off_bell_egr), generation)) ||
        (rc = shm_cell_pool_init(p->base + h->off_cells, h->len_cells, &c.cells, generation)) ||
        (rc = shm_spec_init(shm_pipe_spec(p))))
        return rc;
    for (unsigned w = 0; w < c.n_ingress; w++)
        if ((rc = shm_ring_init(p->base + h->off_tls_out[w], h->len_tls_out, c.conn_ring,
                                sizeof(struct shm_tls_out), generation)) ||
            (rc = shm_ring_init(p->base + h->off_tls_ack[w], h->len_tls_ack, c.conn_ring,
                                sizeof(struct shm_tls_ack), generation)))
            return rc;
    ck_pr_fence_store();
    ck_pr_store_64(&h->magic, SHM_PIPE_MAGIC);
    return 0;
}

int shm_pipe_attach(struct shm_pipe *p, void *mem, size_t len, uint32_t generation)
{
    struct shm_pipe_hdr *h = mem;
    struct shm_pipe_hdr chk;
    uint64_t need;

    if (!mem || len < sizeof(*h))
        return -EINVAL;
    if (ck_pr_load_64(&h->magic) != SHM_PIPE_MAGIC || h->version != SHM_PIPE_VERSION)
        return -EPROTO;
    ck_pr_fence_load();
    if (h->generation != generation)
        return -ESTALE;
    /* Recompute the layout from the stored cfg: offsets that disagree mean
     * a corrupt header, never followed. */
    chk = *h;
    memset(&chk.off_cells, 0, offsetof(struct shm_pipe_hdr, sup_pid) -
                                  offsetof(struct shm_pipe_hdr, off_cells));
    need = layout(&h->cfg, &chk);
    if (!need || need != h->region_bytes || need > len ||
        memcmp(&chk.off_cells, &h->off_cells,
               offsetof(struct shm_pipe_hdr, sup_pid) - offsetof(struct shm_pipe_hdr, off_cells)))
        return -EBADMSG;
    p->hdr = h;
    p->base = mem;
    p->len = need;
    return 0;
}

void *shm_pipe_cells(const struct shm_pipe *p, size_t *len)
{
    if (len)
        *len = p->hdr->len_cells;
    return p->base + p->hdr->off_cells;
}

void *shm_pipe_sched(const struct shm_pipe *p, size_t *len)
{
    if (len)
        *len = p->hdr->cfg.sched_bytes;
    return p->base + p->hdr->off_sched;
}

void *shm_pipe_plan(const struct shm_pipe *p, unsigned rank, unsigned slot)
{
    const struct shm_pipe_cfg *c = &p->hdr->cfg;

    FAVO_ASSERT(rank < c->n_ranks && slot < SHM_PIPE_PLAN_SLOTS); /* pipe inv 1 */
    return p->base + p->hdr->off_plans +
           ((uint64_t)rank * SHM_PIPE_PLAN_SLOTS + slot) * align_up(c->plan_bytes, 64);
}

void *shm_pipe_results(const struct shm_pipe *p, unsigned slot)
{
    const struct shm_pipe_cfg *c = &p->hdr->cfg;

    FAVO_ASSERT(slot < SHM_PIPE_PLAN_SLOTS);
    return p->base + p->hdr->off_results + (uint64_t)slot * c->max_seqs * c->result_size;
}

struct shm_spec_region *shm_pipe_spec(const struct shm_pipe *p)
{
    return (struct shm_spec_region *)(p->base + p->hdr->off_spec);
}

void *shm_pipe_cache(const struct shm_pipe *p, size_t *len)
{
    if (len)
        *len = p->hdr->len_cache;
    return p->hdr->len_cache ? p->base + p->hdr->off_cache : NULL;
}

static int ring(const struct shm_pipe *p, uint64_t off, uint64_t len, uint32_t slot,
                enum shm_ring_role role, shm_ring_t *r)
{
    return shm_ring_attach(r, p->base + off, len, slot, p->hdr->generation, role);
}

int shm_pipe_ring_req(const struct shm_pipe *p, unsigned w, enum shm_ring_role role,
                      shm_ring_t *r)
{
    if (w >= p->hdr->cfg.n_ingress)
        return -EINVAL;
    return ring(p, p->hdr->off_req[w], p->hdr->len_req, sizeof(struct shm_req), role, r);
}

int shm_pipe_ring_conn(const struct shm_pipe *p, unsigned w, enum shm_ring_role role,
                       shm_ring_t *r)
{
    if (w >= p->hdr->cfg.n_ingress)
        return -EINVAL;
    return ring(p, p->hdr->off_conn[w], p->hdr->len_conn, sizeof(struct shm_conn_msg), role, r);
}

int shm_pipe_ring_plan(const struct shm_pipe *p, unsigned k, enum shm_ring_role role,
                       shm_ring_t *r)
{
    if (k >= p->hdr->cfg.n_ranks)
        return -EINVAL;
    return ring(p, p->hdr->off_plan_ring[k], p->hdr->len_plan_ring, sizeof(struct shm_plan_msg),
                role, r);
}

int shm_pipe_ring_done(const struct shm_pipe *p, enum shm_ring_role role, shm_ring_t *r)
{
    return ring(p, p->hdr->off_done, p->hdr->len_done, sizeof(struct shm_plan_msg), role, r);
}

int shm_pipe_ring_ev(const struct shm_pipe *p, enum shm_ring_role role, shm_ring_t *r)
{
    return ring(p, p->hdr->off_ev, p->hdr->len_ev, sizeof(struct shm_ev), role, r);
}

int shm_pipe_ring_ctl(const struct shm_pipe *p, enum shm_ring_role role, shm_ring_t *r)
{
    return ring(p, p->hdr->off_ctl, p->hdr->len_ctl, sizeof(struct shm_ctl), role, r);
}

int shm_pipe_ring_tls_out(const struct shm_pipe *p, unsigned w, enum shm_ring_role role,
                          shm_ring_t *r)
{
    if (w >= p->hdr->cfg.n_ingress)
        return -EINVAL;
    return ring(p, p->hdr->off_tls_out[w], p->hdr->len_tls_out, sizeof(struct shm_tls_out),
                role, r);
}

int shm_pipe_ring_tls_ack(const struct shm_pipe *p, unsigned w, enum shm_ring_role role,
                          shm_ring_t *r)
{
    if (w >= p->hdr->cfg.n_ingress)
        return -EINVAL;
    return ring(p, p->hdr->off_tls_ack[w], p->hdr->len_tls_ack, sizeof(struct shm_tls_ack),
                role, r);
}

int shm_pipe_bell_bat(const struct shm_pipe *p, shm_bell_ec_t *b)
{
    return shm_bell_ec_attach(b, shm_pipe_at(p, p->hdr->off_bell_bat), p->hdr->generation);
}

int shm_pipe_bell_eng(const struct shm_pipe *p, unsigned k, shm_bell_ec_t *b)
{
    if (k >= p->hdr->cfg.n_ranks)
        return -EINVAL;
    return shm_bell_ec_attach(b, shm_pipe_at(p, p->hdr->off_bell_eng[k]), p->hdr->generation);
}

int shm_pipe_bell_egr(const struct shm_pipe *p, int efd, bool consumer, shm_bell_efd_t *b)
{
    return shm_bell_efd_attach(b, shm_pipe_at(p, p->hdr->off_bell_egr), p->hdr->generation, efd,
                               consumer);
}

int shm_pipe_bell_ing(const struct shm_pipe *p, unsigned w, int efd, bool consumer,
                      shm_bell_efd_t *b)
{
    if (w >= p->hdr->cfg.n_ingress)
        return -EINVAL;
    return shm_bell_efd_attach(b, shm_pipe_at(p, p->hdr->off_bell_ing[w]), p->hdr->generation,
                               efd, consumer);
}

void shm_pipe_set_up(const struct shm_pipe *p, enum shm_pipe_stage k, unsigned i, int32_t pid)
{
    FAVO_ASSERT(k < SHM_PIPE_NSTAGES && i < SHM_PIPE_MAX_INGRESS);
    ck_pr_store_32((uint32_t *)&p->hdr->up_pid[k][i], (uint32_t)pid);
}

void shm_pipe_set_sup(const struct shm_pipe *p, enum shm_pipe_stage k, unsigned i, int32_t pid)
{
    FAVO_ASSERT(k < SHM_PIPE_NSTAGES && i < SHM_PIPE_MAX_INGRESS);
    ck_pr_store_32((uint32_t *)&p->hdr->sup_pid[k][i], (uint32_t)pid);
}

bool shm_pipe_stage_up(const struct shm_pipe *p, enum shm_pipe_stage k, unsigned i)
{
    uint32_t s = ck_pr_load_32((const uint32_t *)&p->hdr->sup_pid[k][i]);
    uint32_t u = ck_pr_load_32((const uint32_t *)&p->hdr->up_pid[k][i]);

    return s && s == u;
}

bool shm_pipe_ready(const struct shm_pipe *p)
{
    const struct shm_pipe_cfg *c = &p->hdr->cfg;

    if (ck_pr_load_32(&p->hdr->draining))
        return false;
    for (unsigned w = 0; w < c->n_ingress; w++)
        if (!shm_pipe_stage_up(p, SHM_PIPE_INGRESS, w))
            return false;
    for (unsigned k = 0; k < c->n_ranks; k++)
        if (!shm_pipe_stage_up(p, SHM_PIPE_ENGINE, k))
            return false;
    return shm_pipe_stage_up(p, SHM_PIPE_BATCHER, 0) && shm_pipe_stage_up(p, SHM_PIPE_EGRESS, 0);
}
