/*
 * ing_keys.c - the API keys file: strict line parser, digest hash table,
 * constant-time lookup, key generation and atomic rewrite. Format and
 * invariants: ing_keys.h.
 */
#include "ing_keys.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "favo_base.h"

void ing_keys_init(struct ing_keys *ks)
{
    memset(ks, 0, sizeof(*ks));
}

void ing_keys_free(struct ing_keys *ks)
{
    free(ks->keys);
    free(ks->users);
    free(ks->orgs);
    free(ks->table);
    ing_keys_init(ks);
}

static int seterr(struct ing_keys *ks, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int seterr(struct ing_keys *ks, int rc, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(ks->err, sizeof(ks->err), fmt, ap);
    va_end(ap);
    return rc;
}

/* The digest implementation, fetched once: EVP_sha256() makes EVP_Digest
 * look the provider up on every call, which costs more than hashing a key. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

int ing_keys_sha256(const void *data, size_t len, uint8_t out[32])
{
    unsigned int n = 0;

    pthread_once(&sha256_once, sha256_fetch);
    if (!EVP_Digest(data, len, out, &n, sha256_md ? sha256_md : EVP_sha256(), NULL) ||
        n != 32)
        return -EIO;
    return 0;
}

void ing_keys_hex(const uint8_t sha256[32], char out[65])
{
    static const char hex[] = "0123456789abcdef";

    for (int i = 0; i < 32; i++) {
        out[2 * i] = hex[sha256[i] >> 4];
        out[2 * i + 1] = hex[sha256[i] & 15];
    }
    out[64] = 0;
}

int ing_keys_generate(char key[ING_KEYS_KEY_LEN + 1], uint8_t sha256[32])
{
    static const char b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint8_t raw[33];  /* 32 random bytes + a zero pad for the last group */
    size_t o = strlen(ING_KEYS_PREFIX);
    int rc = 0;

    memcpy(key, ING_KEYS_PREFIX, o);
    if (RAND_bytes(raw, 32) != 1) {
        rc = -EIO;
        goto out;
    }
    raw[32] = 0;
    /* 32 bytes = 256 bits = 43 base64url digits (the last holds 4 bits). */
    for (size_t i = 0; i < 33; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)(i + 1 < 33 ? raw[i + 1] : 0) << 8 |
                     (i + 2 < 33 ? raw[i + 2] : 0);

        for (int j = 0; j < 4 && o < ING_KEYS_KEY_LEN; j++)
            key[o++] = b64[(v >> (18 - 6 * j)) & 63];
    }
    key[o] = 0;
    FAVO_ASSERT(o == ING_KEYS_KEY_LEN);
    rc = ing_keys_sha256(key, o, sha256);
out:
    explicit_bzero(raw, sizeof(raw));
    if (rc)
        explicit_bzero(key, ING_KEYS_KEY_LEN + 1);
    return rc;
}

/* ---- the digest table ---------------------------------------------------- */

static uint32_t slot_of(const uint8_t d[32], uint32_t mask)
{
    return ((uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 |
            (uint32_t)d[3] << 24) & mask;
}

static int table_build(struct ing_keys *ks)
{
    uint32_t size = 16;

    while (size < 2 * ks->nkeys)
        size <<= 1;
    free(ks->table);
    ks->table = calloc(size, sizeof(*ks->table));
    if (!ks->table) {
        ks->table_mask = 0;
        return -ENOMEM;
    }
    ks->table_mask = size - 1;
    for (uint32_t i = 0; i < ks->nkeys; i++) {
        uint32_t s = slot_of(ks->keys[i].sha256, ks->table_mask);

        ks->keys[i].id = i;
        while (ks->table[s])
            s = (s + 1) & ks->table_mask;
        ks->table[s] = i + 1;
    }
    return 0;
}

const struct ing_key *ing_keys_lookup(const struct ing_keys *ks, const char *token, size_t len)
{
    static const uint8_t dummy[32];
    const struct ing_key *hit = NULL;
    uint8_t d[32];
    uint32_t s;

    if (!token || !len || len > ING_KEYS_TOKEN_MAX || !ks->table)
        return NULL;
    if (ing_keys_sha256(token, len, d))
        return NULL;
    /* Invariant 2: the slot comes from the presented digest; every
     * candidate is compared in full, in constant time. */
    s = slot_of(d, ks->table_mask);
    if (!ks->table[s]) {
        (void)CRYPTO_memcmp(d, dummy, sizeof(d)); /* a miss costs a compare too */
    } else {
        for (; ks->table[s]; s = (s + 1) & ks->table_mask) {
            const struct ing_key *k = &ks->keys[ks->table[s] - 1];

            if (CRYPTO_memcmp(d, k->sha256, sizeof(d)) == 0) {
                hit = k;
                break;
            }
        }
    }
    explicit_bzero(d, sizeof(d)); /* invariant 1 */
    return hit;
}

static bool token68_char(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/' || c == '=';
}

int ing_keys_auth(const struct ing_keys *ks, const char *val, size_t len,
                  const struct ing_key **out, const char **why)
{
    static const char scheme[] = "bearer";
    const struct ing_key *k;
    size_t i = 0;
    int rc = 0;

    *out = NULL;
    if (!val || !len) {
        *why = "Missing API key: send it as 'Authorization: Bearer YOUR_KEY'.";
        return -ENOENT;
    }
    for (; i < sizeof(scheme) - 1; i++)
        if (i >= len || (val[i] | 0x20) != scheme[i])
            break;
    if (i < sizeof(scheme) - 1 || i == len || val[i] != ' ') {
        *why = "The Authorization header must use the Bearer scheme: "
               "'Authorization: Bearer YOUR_KEY'.";
        rc = -EINVAL;
        i = 0; /* still hash something of the same length below */
    } else {
        while (i < len && val[i] == ' ')
            i++;
        if (i == len) {
            *why = "Missing API key: send it as 'Authorization: Bearer YOUR_KEY'.";
            return -ENOENT;
        }
        for (size_t j = i; j < len; j++)
            if (!token68_char((unsigned char)val[j]) && !rc) {
                *why = "The API key in the Authorization header holds characters no key "
                       "can hold.";
                rc = -EINVAL;
            }
    }
    k = ing_keys_lookup(ks, val + i, len - i);
    if (rc)
        return rc;
    if (!k) {
        *why = "Incorrect API key provided.";
        return -EACCES;
    }
    *out = k;
    *why = NULL;
    return 0;
}

/* ---- entries ------------------------------------------------------------ */

static bool name_char(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '.' || c == '_' || c == ':' || c == '@' || c == '/' || c == '+' || c == '-';
}

/* NULL when v[0..n) is a valid name, else why not. */
static const char *name_bad(const char *v, size_t n)
{
    if (n == 0)
        return "is empty";
    if (n >= ING_KEYS_NAME_MAX)
        return "is longer than 63 bytes";
    for (size_t i = 0; i < n; i++)
        if (!name_char((unsigned char)v[i]))
            return "holds a byte outside [A-Za-z0-9._:@/+-]";
    return NULL;
}

static int grow(void **arr, uint32_t *cap, uint32_t n, size_t elem)
{
    uint32_t nc;
    void *p;

    if (n < *cap)
        return 0;
    if (n >= ING_KEYS_MAX)
        return -ENOSPC;
    nc = *cap ? *cap * 2 : 16;
    p = realloc(*arr, (size_t)nc * elem);
    if (!p)
        return -ENOMEM;
    *arr = p;
    *cap = nc;
    return 0;
}

static int group_find(const struct ing_keys_group *g, uint32_t n, const char *name)
{
    for (uint32_t i = 0; i < n; i++)
        if (!strcmp(g[i].name, name))
            return (int)i;
    return -1;
}

/* Index of the user/org called name, added (no own line, no limit) when new. */
static int group_get(struct ing_keys_group **g, uint32_t *n, uint32_t *cap, const char *name,
                     uint32_t *id)
{
    int i = group_find(*g, *n, name), rc;

    if (i >= 0) {
        *id = (uint32_t)i;
        return 0;
    }
    rc = grow((void **)g, cap, *n, sizeof(**g));
    if (rc)
        return rc;
    memset(&(*g)[*n], 0, sizeof(**g));
    snprintf((*g)[*n].name, sizeof((*g)[*n].name), "%s", name);
    *id = (*n)++;
    return 0;
}

static int key_find_name(const struct ing_keys *ks, const char *name)
{
    for (uint32_t i = 0; i < ks->nkeys; i++)
        if (!strcmp(ks->keys[i].name, name))
            return (int)i;
    return -1;
}

static int key_find_digest(const struct ing_keys *ks, const uint8_t d[32])
{
    for (uint32_t i = 0; i < ks->nkeys; i++)
        if (!memcmp(ks->keys[i].sha256, d, 32)) /* not secret: file content */
            return (int)i;
    return -1;
}

/* Append k without rebuilding the table; messages name "where". */
static int key_append(struct ing_keys *ks, const struct ing_key *k, const char *where)
{
    const char *fields[] = { "name", "tenant", "user", "org" };
    const char *vals[] = { k->name, k->tenant, k->user, k->org };
    struct ing_key *n;
    int i, rc;

    for (int f = 0; f < 4; f++) {
        const char *why = name_bad(vals[f], strnlen(vals[f], ING_KEYS_NAME_MAX));

        if (why && !(f >= 2 && !vals[f][0]))
            return seterr(ks, -EINVAL, "%sfield '%s': '%.63s' %s", where, fields[f], vals[f], why);
    }
    if (k->rpm > ING_KEYS_LIMIT_MAX || k->tpm > ING_KEYS_LIMIT_MAX || k->priority > 255)
        return seterr(ks, -EINVAL, "%srpm and tpm must be 0..%u, priority 0..255", where,
                      ING_KEYS_LIMIT_MAX);
    if ((i = key_find_name(ks, k->name)) >= 0)
        return seterr(ks, -EEXIST, "%sfield 'name': key '%s' already exists (line %u)", where,
                      k->name, ks->keys[i].line);
    if ((i = key_find_digest(ks, k->sha256)) >= 0)
        return seterr(ks, -EEXIST, "%sfield 'sha256': same digest as key '%s' (line %u)",
                      where, ks->keys[i].name, ks->keys[i].line);
    rc = grow((void **)&ks->keys, &ks->cap_keys, ks->nkeys, sizeof(*ks->keys));
    if (rc)
        return seterr(ks, rc, "%stoo many keys", where);
    n = &ks->keys[ks->nkeys];
    *n = *k;
    n->id = ks->nkeys;
    n->user_id = n->org_id = ING_KEYS_NONE;
    if (n->user[0] && (rc = group_get(&ks->users, &ks->nusers, &ks->cap_users, n->user,
                                      &n->user_id)))
        return seterr(ks, rc, "%stoo many users", where);
    if (n->org[0] && (rc = group_get(&ks->orgs, &ks->norgs, &ks->cap_orgs, n->org,
                                     &n->org_id)))
        return seterr(ks, rc, "%stoo many orgs", where);
    ks->nkeys++;
    return 0;
}

int ing_keys_add(struct ing_keys *ks, const struct ing_key *k)
{
    struct ing_key c = *k;
    int rc;

    c.line = 0;
    rc = key_append(ks, &c, "");
    if (rc)
        return rc;
    rc = table_build(ks);
    if (rc) {
        ks->nkeys--;
        return seterr(ks, rc, "out of memory");
    }
    return 0;
}

int ing_keys_revoke(struct ing_keys *ks, const char *what)
{
    int idx = key_find_name(ks, what);
    size_t n = strlen(what);

    if (idx < 0) {
        bool hex = n >= 8 && n <= 64;

        for (size_t i = 0; hex && i < n; i++)
            hex = (what[i] >= '0' && what[i] <= '9') || (what[i] >= 'a' && what[i] <= 'f');
        if (!hex)
            return seterr(ks, -ENOENT, "no key named '%.63s' (a digest prefix needs 8..64 "
                          "lower-case hex digits)", what);
        for (uint32_t i = 0; i < ks->nkeys; i++) {
            char h[65];

            ing_keys_hex(ks->keys[i].sha256, h);
            if (!strncmp(h, what, n)) {
                if (idx >= 0)
                    return seterr(ks, -EINVAL, "digest prefix '%s' matches keys '%s' and "
                                  "'%s': give more digits", what, ks->keys[idx].name,
                                  ks->keys[i].name);
                idx = (int)i;
            }
        }
        if (idx < 0)
            return seterr(ks, -ENOENT, "no key named or with digest prefix '%s'", what);
    }
    memmove(&ks->keys[idx], &ks->keys[idx + 1],
            (ks->nkeys - (uint32_t)idx - 1) * sizeof(*ks->keys));
    ks->nkeys--;
    return table_build(ks) ? seterr(ks, -ENOMEM, "out of memory") : 0;
}

/* ---- the parser --------------------------------------------------------- */

struct field {
    const char *name;
    const char *val;   /* NULL: not given */
    size_t len;
    size_t col;        /* 1-based column of the field */
};

enum { F_SHA, F_NAME, F_TENANT, F_USER, F_ORG, F_RPM, F_TPM, F_PRIO, F_N };

static int parse_num(struct ing_keys *ks, const char *where, const struct field *f,
                     uint32_t max, uint32_t *out)
{
    uint64_t v = 0;

    if (!f->len || f->len > 10)
        goto bad;
    for (size_t i = 0; i < f->len; i++) {
        if (f->val[i] < '0' || f->val[i] > '9')
            goto bad;
        v = v * 10 + (uint64_t)(f->val[i] - '0');
    }
    if (v > max)
        goto bad;
    *out = (uint32_t)v;
    return 0;
bad:
    return seterr(ks, -EINVAL, "%s%zu: field '%s': '%.*s' is not a whole number 0..%u", where,
                  f->col, f->name, (int)FAVO_MIN(f->len, 40), f->val, max);
}

static int parse_name(struct ing_keys *ks, const char *where, const struct field *f,
                      char out[ING_KEYS_NAME_MAX])
{
    const char *why = name_bad(f->val, f->len);

    if (why)
        return seterr(ks, -EINVAL, "%s%zu: field '%s': '%.*s' %s", where, f->col, f->name,
                      (int)FAVO_MIN(f->len, 70), f->val, why);
    memcpy(out, f->val, f->len);
    out[f->len] = 0;
    return 0;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int parse_line(struct ing_keys *ks, const char *path, uint32_t lineno, const char *s,
                      size_t n)
{
    struct field f[F_N] = { { .name = "sha256" }, { .name = "name" }, { .name = "tenant" },
                            { .name = "user" }, { .name = "org" }, { .name = "rpm" },
                            { .name = "tpm" }, { .name = "priority" } };
    char where[300];
    size_t i = 0, kind_len;
    const char *kind;
    int rc;

    /* where = "path:line:" ; the column follows in every message */
    snprintf(where, sizeof(where), "%.250s:%u:", path, lineno);
    kind = s;
    while (i < n && s[i] != ' ' && s[i] != '\t')
        i++;
    kind_len = i;
    while (i < n) {
        size_t st, eq, e;
        int which = -1;

        while (i < n && (s[i] == ' ' || s[i] == '\t'))
            i++;
        if (i == n)
            break;
        st = i;
        while (i < n && s[i] != ' ' && s[i] != '\t')
            i++;
        e = i;
        for (eq = st; eq < e && s[eq] != '='; eq++)
            ;
        if (eq == e)
            return seterr(ks, -EINVAL, "%s%zu: '%.*s' is not field=value", where, st + 1,
                          (int)FAVO_MIN(e - st, 40), s + st);
        for (int k = 0; k < F_N; k++)
            if (strlen(f[k].name) == eq - st && !memcmp(f[k].name, s + st, eq - st))
                which = k;
        if (which < 0)
            return seterr(ks, -EINVAL, "%s%zu: unknown field '%.*s' (known: sha256 name "
                          "tenant user org rpm tpm priority)", where, st + 1,
                          (int)FAVO_MIN(eq - st, 40), s + st);
        if (f[which].val)
            return seterr(ks, -EINVAL, "%s%zu: field '%s' given twice (first at column %zu)",
                          where, st + 1, f[which].name, f[which].col);
        f[which].val = s + eq + 1;
        f[which].len = e - eq - 1;
        f[which].col = st + 1;
    }

    if (kind_len == 3 && !memcmp(kind, "key", 3)) {
        struct ing_key k;

        memset(&k, 0, sizeof(k));
        for (int r = F_SHA; r <= F_TPM; r++) {
            if (r == F_USER || r == F_ORG)
                continue;
            if (!f[r].val)
                return seterr(ks, -EINVAL, "%s1: field '%s' is missing from this key line",
                              where, f[r].name);
        }
        if (f[F_SHA].len != 64)
            return seterr(ks, -EINVAL, "%s%zu: field 'sha256': want 64 hex digits, got %zu "
                          "bytes", where, f[F_SHA].col, f[F_SHA].len);
        for (int b = 0; b < 32; b++) {
            int hi = hexval(f[F_SHA].val[2 * b]), lo = hexval(f[F_SHA].val[2 * b + 1]);

            if (hi < 0 || lo < 0)
                return seterr(ks, -EINVAL, "%s%zu: field 'sha256': byte at column %zu is "
                              "not a hex digit", where, f[F_SHA].col,
                              f[F_SHA].col + 7 + 2 * (size_t)b + (hi < 0 ? 0 : 1));
            k.sha256[b] = (uint8_t)(hi << 4 | lo);
        }
        if ((rc = parse_name(ks, where, &f[F_NAME], k.name)) ||
            (rc = parse_name(ks, where, &f[F_TENANT], k.tenant)) ||
            (f[F_USER].val && (rc = parse_name(ks, where, &f[F_USER], k.user))) ||
            (f[F_ORG].val && (rc = parse_name(ks, where, &f[F_ORG], k.org))) ||
            (rc = parse_num(ks, where, &f[F_RPM], ING_KEYS_LIMIT_MAX, &k.rpm)) ||
            (rc = parse_num(ks, where, &f[F_TPM], ING_KEYS_LIMIT_MAX, &k.tpm)) ||
            (f[F_PRIO].val && (rc = parse_num(ks, where, &f[F_PRIO], 255, &k.priority))))
            return rc;
        k.line = lineno;
        snprintf(where, sizeof(where), "%.250s:%u:%zu: ", path, lineno, f[F_NAME].col);
        return key_append(ks, &k, where);
    }
    if ((kind_len == 4 && !memcmp(kind, "user", 4)) || (kind_len == 3 && !memcmp(kind, "org", 3))) {
        bool user = kind_len == 4;
        char name[ING_KEYS_NAME_MAX];
        uint32_t id, rpm = 0, tpm = 0; /* = 0: gcc -O3 thinks parse_num may leave them */
        struct ing_keys_group *g;

        for (int r = F_SHA; r < F_N; r++) {
            if (r == F_NAME || r == F_RPM || r == F_TPM) {
                if (!f[r].val)
                    return seterr(ks, -EINVAL, "%s1: field '%s' is missing from this %s line",
                                  where, f[r].name, user ? "user" : "org");
            } else if (f[r].val) {
                return seterr(ks, -EINVAL, "%s%zu: field '%s' does not belong on %s line",
                              where, f[r].col, f[r].name, user ? "a user" : "an org");
            }
        }
        if ((rc = parse_name(ks, where, &f[F_NAME], name)) ||
            (rc = parse_num(ks, where, &f[F_RPM], ING_KEYS_LIMIT_MAX, &rpm)) ||
            (rc = parse_num(ks, where, &f[F_TPM], ING_KEYS_LIMIT_MAX, &tpm)))
            return rc;
        rc = user ? group_get(&ks->users, &ks->nusers, &ks->cap_users, name, &id)
                  : group_get(&ks->orgs, &ks->norgs, &ks->cap_orgs, name, &id);
        if (rc)
            return seterr(ks, rc, "%s1: too many %s lines", where, user ? "user" : "org");
        g = user ? &ks->users[id] : &ks->orgs[id];
        if (g->line)
            return seterr(ks, -EEXIST, "%s%zu: field 'name': %s '%s' already has limits "
                          "(line %u)", where, f[F_NAME].col, user ? "user" : "org", name,
                          g->line);
        g->rpm = rpm;
        g->tpm = tpm;
        g->line = lineno;
        return 0;
    }
    return seterr(ks, -EINVAL, "%s1: line starts with '%.*s': want 'key', 'user' or 'org'",
                  where, (int)FAVO_MIN(kind_len, 40), kind);
}

int ing_keys_parse(struct ing_keys *ks, const char *path, const char *text, size_t len)
{
    uint32_t lineno = 0;
    size_t off = 0;
    int rc = 0;

    ing_keys_init(ks);
    while (off < len) {
        const char *s = text + off, *nl = memchr(s, '\n', len - off);
        size_t n = nl ? (size_t)(nl - s) : len - off;
        bool blank = true;

        lineno++;
        off += n + (nl ? 1 : 0);
        if (n > ING_KEYS_LINE_MAX) {
            rc = seterr(ks, -EINVAL, "%.250s:%u:%d: line is longer than %d bytes", path,
                        lineno, ING_KEYS_LINE_MAX + 1, ING_KEYS_LINE_MAX);
            goto fail;
        }
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)s[i];

            if (c != ' ' && c != '\t')
                blank = false;
            if ((c < 0x20 && c != '\t') || c >= 0x7f) {
                rc = seterr(ks, -EINVAL, "%.250s:%u:%zu: byte 0x%02x is not printable ASCII",
                            path, lineno, i + 1, c);
                goto fail;
            }
        }
        if (blank || s[0] == '#')
            continue;
        if (s[0] == ' ' || s[0] == '\t') {
            rc = seterr(ks, -EINVAL, "%.250s:%u:1: line starts with whitespace", path, lineno);
            goto fail;
        }
        rc = parse_line(ks, path, lineno, s, n);
        if (rc)
            goto fail;
    }
    rc = table_build(ks);
    if (rc) {
        seterr(ks, rc, "%.250s: out of memory", path);
        goto fail;
    }
    return 0;
fail: {
        char keep[sizeof(ks->err)];

        memcpy(keep, ks->err, sizeof(keep));
        ing_keys_free(ks);
        memcpy(ks->err, keep, sizeof(keep));
        return rc;
    }
}

int ing_keys_load(struct ing_keys *ks, const char *path)
{
    struct stat st;
    char *buf = NULL;
    size_t got = 0;
    int fd, rc;

    ing_keys_init(ks);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return seterr(ks, -errno, "%.250s: %s", path, strerror(errno));
    if (fstat(fd, &st)) {
        rc = seterr(ks, -errno, "%.250s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > (off_t)ING_KEYS_MAX * 3 * ING_KEYS_LINE_MAX) {
        rc = seterr(ks, -EINVAL, "%.250s: not a regular file of sane size", path);
        goto out;
    }
    if (st.st_mode & 022) { /* like sshd's authorized_keys: others could add keys */
        rc = seterr(ks, -EPERM, "%.250s: mode %04o lets group or others write it (add "
                    "keys): chmod 600 it", path, (unsigned)(st.st_mode & 07777));
        goto out;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        rc = seterr(ks, -ENOMEM, "%.250s: out of memory", path);
        goto out;
    }
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);

        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = seterr(ks, r ? -errno : -EIO, "%.250s: read: %s", path,
                        r ? strerror(errno) : "file shrank while reading");
            goto out;
        }
        got += (size_t)r;
    }
    rc = ing_keys_parse(ks, path, buf, got);
out:
    free(buf);
    close(fd);
    return rc;
}

/* ---- writing ------------------------------------------------------------ */

struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    if (b->oom)
        return;
    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if (b->p && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t nc = FAVO_MAX(b->cap * 2, b->len + (size_t)n + 256);
        char *np = realloc(b->p, nc);

        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
}

int ing_keys_format(const struct ing_keys *ks, char **text, size_t *len)
{
    struct sbuf b = { 0 };

    sb_printf(&b, "# favo API keys (format: ingress/ing_keys.h). SHA-256 digests only.\n"
                  "# Managed by 'favo keys'; comments are not kept.\n");
    for (uint32_t i = 0; i < ks->nusers; i++)
        if (ks->users[i].line)
            sb_printf(&b, "user name=%s rpm=%u tpm=%u\n", ks->users[i].name, ks->users[i].rpm,
                      ks->users[i].tpm);
    for (uint32_t i = 0; i < ks->norgs; i++)
        if (ks->orgs[i].line)
            sb_printf(&b, "org name=%s rpm=%u tpm=%u\n", ks->orgs[i].name, ks->orgs[i].rpm,
                      ks->orgs[i].tpm);
    for (uint32_t i = 0; i < ks->nkeys; i++) {
        const struct ing_key *k = &ks->keys[i];
        char h[65];

        ing_keys_hex(k->sha256, h);
        sb_printf(&b, "key sha256=%s name=%s tenant=%s", h, k->name, k->tenant);
        if (k->user[0])
            sb_printf(&b, " user=%s", k->user);
        if (k->org[0])
            sb_printf(&b, " org=%s", k->org);
        sb_printf(&b, " rpm=%u tpm=%u priority=%u\n", k->rpm, k->tpm, k->priority);
    }
    if (b.oom) {
        free(b.p);
        return -ENOMEM;
    }
    *text = b.p;
    *len = b.len;
    return 0;
}

int ing_keys_write(struct ing_keys *ks, const char *path)
{
    char *text = NULL, *dcopy = NULL, tmp[4096];
    size_t len = 0, off = 0;
    int fd = -1, dfd = -1, rc;

    rc = ing_keys_format(ks, &text, &len);
    if (rc)
        return seterr(ks, rc, "%.250s: out of memory", path);
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.XXXXXX", path) >= (int)sizeof(tmp)) {
        rc = seterr(ks, -ENAMETOOLONG, "%.250s: path too long", path);
        goto out;
    }
    fd = mkostemp(tmp, O_CLOEXEC); /* mode 0600 already; fchmod says so anyway */
    if (fd < 0) {
        rc = seterr(ks, -errno, "%.250s: cannot create a temporary file: %s", path,
                    strerror(errno));
        goto out;
    }
    if (fchmod(fd, 0600)) {
        rc = seterr(ks, -errno, "%.250s: chmod: %s", tmp, strerror(errno));
        goto out;
    }
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);

        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            rc = seterr(ks, -errno, "%.250s: write: %s", tmp, strerror(errno));
            goto out;
        }
        off += (size_t)w;
    }
    if (fsync(fd)) {
        rc = seterr(ks, -errno, "%.250s: fsync: %s", tmp, strerror(errno));
        goto out;
    }
    if (close(fd)) {
        fd = -1;
        rc = seterr(ks, -errno, "%.250s: close: %s", tmp, strerror(errno));
        goto out;
    }
    fd = -1;
    if (rename(tmp, path)) {
        rc = seterr(ks, -errno, "%.250s: rename: %s", path, strerror(errno));
        goto out;
    }
    tmp[0] = 0; /* renamed: nothing to unlink */
    /* The rename is durable once the folder is. */
    dcopy = strdup(path);
    if (dcopy && (dfd = open(dirname(dcopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC)) >= 0)
        (void)fsync(dfd);
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    if (dfd >= 0)
        close(dfd);
    if (rc && tmp[0] && strstr(tmp, ".tmp."))
        unlink(tmp);
    free(dcopy);
    free(text);
    return rc;
}

/* ---- rate-limit buckets (invariant 3) ----------------------------------- */

uint32_t ing_keys_nbuckets(const struct ing_keys *ks)
{
    return ks->nkeys + ks->nusers + ks->norgs;
}

unsigned ing_keys_buckets(const struct ing_keys *ks, const struct ing_key *k, uint32_t out[3])
{
    unsigned n = 0;

    FAVO_ASSERT(k->id < ks->nkeys && &ks->keys[k->id] == k); /* invariant 3 */
    out[n++] = k->id;
    if (k->user_id != ING_KEYS_NONE)
        out[n++] = ks->nkeys + k->user_id;
    if (k->org_id != ING_KEYS_NONE)
        out[n++] = ks->nkeys + ks->nusers + k->org_id;
    return n;
}

int ing_keys_bucket_limits(const struct ing_keys *ks, uint32_t b, uint32_t *rpm, uint32_t *tpm)
{
    const struct ing_keys_group *g;

    if (b < ks->nkeys) {
        *rpm = ks->keys[b].rpm;
        *tpm = ks->keys[b].tpm;
        return 0;
    }
    b -= ks->nkeys;
    if (b < ks->nusers)
        g = &ks->users[b];
    else if (b - ks->nusers < ks->norgs)
        g = &ks->orgs[b - ks->nusers];
    else
        return -ERANGE;
    *rpm = g->rpm;
    *tpm = g->tpm;
    return 0;
}
