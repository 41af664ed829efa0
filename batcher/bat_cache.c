/*
 * bat_cache.c - the response cache (design in bat_cache.h): fixed-size
 * entries (key, expiry, value of up to val_cap bytes), hash chains by the
 * key's first word, one LRU list, scrub on every way out.
 */
#include "bat_cache.h"

#include <errno.h>
#include <string.h>

#include <openssl/evp.h>

#include "favo_base.h"
#include "shm_stats.h"

#define NIL UINT32_MAX

struct bat_cache_ent {
    uint8_t key[BAT_CACHE_KEY];
    uint64_t expires_ns;
    uint32_t hnext, lprev, lnext;
    uint32_t len;
    uint8_t live, pad_[7];
};

struct bat_cache_hdr {
    uint32_t magic, version;
    uint64_t size;
    uint32_t n_ent, val_cap, hcap, n_live;
    uint32_t lru_head, lru_tail, free_head, pad_;
    uint32_t off_ent, off_bucket, off_val, pad2_;
    uint64_t hits, misses, evictions, expirations, uncacheable;
};

static inline struct bat_cache_ent *ents(struct bat_cache_hdr *h)
{
    return (struct bat_cache_ent *)((char *)h + h->off_ent);
}
static inline uint32_t *buckets(struct bat_cache_hdr *h)
{
    return (uint32_t *)((char *)h + h->off_bucket);
}
static inline uint8_t *val(struct bat_cache_hdr *h, uint32_t i)
{
    return (uint8_t *)h + h->off_val + (size_t)i * h->val_cap;
}
static size_t al64(size_t x) { return (x + 63) & ~(size_t)63; }

static size_t layout(struct bat_cache_hdr *o, uint32_t n, uint32_t val_cap)
{
    uint32_t hc = 1;
    while (hc < n)
        hc <<= 1;
    o->n_ent = n;
    o->val_cap = val_cap;
    o->hcap = hc;
    o->off_ent = (uint32_t)al64(sizeof(*o));
    o->off_bucket = (uint32_t)al64(o->off_ent + (size_t)n * sizeof(struct bat_cache_ent));
    o->off_val = (uint32_t)al64(o->off_bucket + (size_t)hc * 4);
    return o->off_val + (size_t)n * val_cap;
}

static int open_md(struct bat_cache *c)
{
    c->md = EVP_MD_fetch(NULL, "SHA256", NULL);
    c->mdctx = EVP_MD_CTX_new();
    if (!c->md || !c->mdctx) {
        bat_cache_close(c);
        return -EIO;
    }
    return 0;
}

int bat_cache_init(struct bat_cache *c, void *mem, size_t size, uint32_t val_cap)
{
    struct bat_cache_hdr *h = mem, o;
    uint32_t n;

    if (!c || !mem || ((uintptr_t)mem & 63) || val_cap == 0 || val_cap > (1u << 24) ||
        size > UINT32_MAX)
        return -EINVAL;
    /* Largest n that fits (val_cap rounded to keep values 8-aligned). */
    val_cap = (val_cap + 7) & ~7u;
    n = (uint32_t)(size / (sizeof(struct bat_cache_ent) + val_cap + 8));
    while (n > 0 && layout(&o, n, val_cap) > size)
        n--;
    if (n == 0)
        return -EINVAL;
    memset(mem, 0, size);
    layout(h, n, val_cap);
    h->size = size;
    h->lru_head = h->lru_tail = NIL;
    for (uint32_t i = 0; i < n; i++) {
        ents(h)[i].hnext = i + 1 < n ? i + 1 : NIL; /* free list through hnext */
        ents(h)[i].lprev = ents(h)[i].lnext = NIL;
    }
    h->free_head = 0;
    memset(buckets(h), 0xff, (size_t)h->hcap * 4);
    h->version = 1;
    h->magic = BAT_CACHE_MAGIC;
    c->h = h;
    c->stats = NULL;
    return open_md(c);
}

static uint32_t find(struct bat_cache_hdr *h, const uint8_t *key, uint32_t **link);

/* cache inv 2 without reading values: live entries found by their key,
 * LRU and free lists of the right lengths (bounded walks: a cycle left by
 * a crash is caught, not followed forever). */
static int check_links(const struct bat_cache *c)
{
    struct bat_cache_hdr *h = c->h;
    uint32_t live = 0, lru = 0, fr = 0;

    for (uint32_t i = 0; i < h->n_ent; i++)
        if (ents(h)[i].live) {
            live++;
            if (ents(h)[i].len > h->val_cap || find(h, ents(h)[i].key, NULL) != i)
                return -EBADMSG;
        }
    for (uint32_t i = h->lru_head; i != NIL && lru <= h->n_ent; i = ents(h)[i].lnext) {
        if (i >= h->n_ent)
            return -EBADMSG;
        lru++;
    }
    for (uint32_t i = h->free_head; i != NIL && fr <= h->n_ent; i = ents(h)[i].hnext) {
        if (i >= h->n_ent)
            return -EBADMSG;
        fr++;
    }
    return live == h->n_live && lru == live && fr + live == h->n_ent ? 0 : -EBADMSG;
}

int bat_cache_attach(struct bat_cache *c, void *mem, size_t size)
{
    struct bat_cache_hdr *h = mem, o;

    if (!c || !mem || size < sizeof(*h))
        return -EINVAL;
    if (h->magic != BAT_CACHE_MAGIC || h->version != 1)
        return -EPROTO;
    if (h->size > size || layout(&o, h->n_ent, h->val_cap) > h->size ||
        o.off_val != h->off_val || o.hcap != h->hcap)
        return -EBADMSG;
    c->h = h;
    c->stats = NULL;
    if (check_links(c)) /* O(n_ent): a restart stays cheap; values are not re-read */
        return -EBADMSG;
    return open_md(c);
}

void bat_cache_close(struct bat_cache *c)
{
    EVP_MD_CTX_free(c->mdctx);
    EVP_MD_free(c->md);
    c->mdctx = NULL;
    c->md = NULL;
}

static int upd(EVP_MD_CTX *x, const void *p, size_t n)
{
    uint64_t len = n;
    if (!EVP_DigestUpdate(x, &len, sizeof(len)))
        return -1;
    return n && !EVP_DigestUpdate(x, p, n) ? -1 : 0;
}

int bat_cache_key(struct bat_cache *c, const struct bat_cache_key_in *in,
                  uint8_t key[BAT_CACHE_KEY])
{
    EVP_MD_CTX *x = c->mdctx;
    const struct eng_sample_params *sp = in->sp;
    /* Every generation parameter, field by field (no struct padding). */
    struct {
        float temperature, top_p, min_p, freq, presence;
        int32_t top_k;
        uint32_t n_logprobs, max_tokens, has_seed, tenant;
        uint64_t seed;
    } g = { sp->temperature, sp->top_p, sp->min_p, sp->freq_penalty, sp->presence_penalty,
            sp->top_k, sp->n_logprobs, in->max_tokens, in->has_seed, in->tenant,
            in->has_seed ? sp->seed : 0 };
    static const char tag[] = "favo-response-cache-v1";
    unsigned int n = 0;
    int bad;

    if (!in->model || (in->n_tokens && !in->tokens))
        return -EINVAL;
    bad = !EVP_DigestInit_ex(x, c->md, NULL) || upd(x, tag, sizeof(tag)) ||
          upd(x, &g, sizeof(g)) || upd(x, in->model, strlen(in->model)) ||
          upd(x, in->tokens, (size_t)in->n_tokens * sizeof(int32_t)) ||
          upd(x, in->extra, in->extra ? in->extra_len : 0) ||
          !EVP_DigestFinal_ex(x, key, &n) || n != BAT_CACHE_KEY;
    explicit_bzero(&g, sizeof(g));
    return bad ? -EIO : 0;
}

static uint32_t bucket_of(const struct bat_cache_hdr *h, const uint8_t *key)
{
    uint32_t w;
    memcpy(&w, key, 4);
    return w & (h->hcap - 1);
}

static uint32_t find(struct bat_cache_hdr *h, const uint8_t *key, uint32_t **link)
{
    uint32_t *l = &buckets(h)[bucket_of(h, key)];

    while (*l != NIL) {
        if (!memcmp(ents(h)[*l].key, key, BAT_CACHE_KEY)) {
            if (link)
                *link = l;
            return *l;
        }
        l = &ents(h)[*l].hnext;
    }
    return NIL;
}

static void lru_unlink(struct bat_cache_hdr *h, uint32_t i)
{
    struct bat_cache_ent *e = &ents(h)[i];
    if (e->lprev != NIL) ents(h)[e->lprev].lnext = e->lnext; else h->lru_head = e->lnext;
    if (e->lnext != NIL) ents(h)[e->lnext].lprev = e->lprev; else h->lru_tail = e->lprev;
    e->lprev = e->lnext = NIL;
}

static void lru_push_head(struct bat_cache_hdr *h, uint32_t i)
{
    struct bat_cache_ent *e = &ents(h)[i];
    e->lprev = NIL;
    e->lnext = h->lru_head;
    if (h->lru_head != NIL) ents(h)[h->lru_head].lprev = i; else h->lru_tail = i;
    h->lru_head = i;
}

/* LIVE -> FREE: unlink, scrub key and value (cache inv 1). */
static void drop(struct bat_cache_hdr *h, uint32_t i)
{
    struct bat_cache_ent *e = &ents(h)[i];
    uint32_t *l;

    FAVO_ASSERT(e->live && find(h, e->key, &l) == i); /* cache inv 2 */
    *l = e->hnext;
    lru_unlink(h, i);
    explicit_bzero(val(h, i), e->len);
    explicit_bzero(e, sizeof(*e));
    e->lprev = e->lnext = NIL;
    e->hnext = h->free_head;
    h->free_head = i;
    h->n_live--;
}

int bat_cache_get(struct bat_cache *c, const uint8_t key[BAT_CACHE_KEY], uint64_t now_ns,
                  void *out, size_t cap)
{
    struct bat_cache_hdr *h = c->h;
    uint32_t i = find(h, key, NULL);

    if (i != NIL && now_ns >= ents(h)[i].expires_ns) {
        drop(h, i);
        h->expirations++;
        i = NIL;
    }
    if (i == NIL) {
        h->misses++;
        return -ENOENT;
    }
    if (ents(h)[i].len > cap)
        return -ENOSPC;
    memcpy(out, val(h, i), ents(h)[i].len);
    lru_unlink(h, i);
    lru_push_head(h, i);
    h->hits++;
    if (c->stats)
        shm_stats_add(c->stats, SHM_C_RESPONSE_CACHE_HITS, 1);
    return (int)ents(h)[i].len;
}

int bat_cache_put(struct bat_cache *c, const uint8_t key[BAT_CACHE_KEY], uint64_t now_ns,
                  uint32_t ttl_s, const void *v, size_t len)
{
    struct bat_cache_hdr *h = c->h;
    uint32_t i, b;
    struct bat_cache_ent *e;

    if (ttl_s == 0 || ttl_s > BAT_CACHE_TTL_MAX || (len && !v))
        return -EINVAL;
    if (len > h->val_cap) {
        h->uncacheable++;
        return -E2BIG;
    }
    i = find(h, key, NULL);
    if (i != NIL)
        drop(h, i); /* replace */
    if (h->free_head == NIL) {
        FAVO_ASSERT(h->lru_tail != NIL); /* cache inv 2 */
        drop(h, h->lru_tail);
        h->evictions++;
    }
    i = h->free_head;
    e = &ents(h)[i];
    h->free_head = e->hnext;
    memcpy(e->key, key, BAT_CACHE_KEY);
    e->expires_ns = now_ns + (uint64_t)ttl_s * 1000000000ull;
    e->len = (uint32_t)len;
    e->live = 1;
    if (len)
        memcpy(val(h, i), v, len);
    b = bucket_of(h, key);
    e->hnext = buckets(h)[b];
    buckets(h)[b] = i;
    lru_push_head(h, i);
    h->n_live++;
    return 0;
}

uint32_t bat_cache_expire(struct bat_cache *c, uint64_t now_ns)
{
    struct bat_cache_hdr *h = c->h;
    uint32_t n = 0;

    for (uint32_t i = 0; i < h->n_ent; i++)
        if (ents(h)[i].live && now_ns >= ents(h)[i].expires_ns) {
            drop(h, i);
            n++;
        }
    h->expirations += n;
    return n;
}

void bat_cache_get_stats(const struct bat_cache *c, struct bat_cache_stats *o)
{
    const struct bat_cache_hdr *h = c->h;

    o->hits = h->hits;
    o->misses = h->misses;
    o->evictions = h->evictions;
    o->expirations = h->expirations;
    o->uncacheable = h->uncacheable;
    o->n_live = h->n_live;
    o->n_ent = h->n_ent;
    o->val_cap = h->val_cap;
}

int bat_cache_check(const struct bat_cache *c)
{
    struct bat_cache_hdr *h = c->h;
    uint32_t live = 0, lru = 0, fr = 0;

    for (uint32_t i = 0; i < h->n_ent; i++) {
        struct bat_cache_ent *e = &ents(h)[i];
        if (e->live) {
            live++;
            if (find(h, e->key, NULL) != i)
                return -EBADMSG;
            continue;
        }
        for (uint32_t k = 0; k < BAT_CACHE_KEY; k++)
            if (e->key[k])
                return -EBADMSG;
        for (uint32_t k = 0; k < h->val_cap; k++)
            if (val(h, i)[k])
                return -EBADMSG;
    }
    for (uint32_t i = h->lru_head; i != NIL && lru <= h->n_ent; i = ents(h)[i].lnext)
        lru++;
    for (uint32_t i = h->free_head; i != NIL && fr <= h->n_ent; i = ents(h)[i].hnext)
        fr++;
    return live == h->n_live && lru == live && fr + live == h->n_ent ? 0 : -EBADMSG;
}
