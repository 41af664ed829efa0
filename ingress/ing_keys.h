/*
 * ing_keys.h - the API keys file (`--keys FILE`, `favo keys`) and the
 * constant-time lookup of a presented bearer token (ingress).
 *
 * What it is
 *   The server never holds an API key, only its SHA-256. ingress hashes the
 *   token of `Authorization: Bearer TOKEN` (OpenSSL EVP), finds the entry
 *   with that digest and learns the key's name, tenant, user, org, limits
 *   and priority. `favo keys add` makes a key (RAND_bytes), prints it once
 *   and stores only its digest; `list` shows entries (never a key, which the
 *   file does not hold); `revoke` drops one by name or digest prefix.
 *
 * File format (one entry per line; strict - anything else is an error)
 *
 *     # comment (a '#' in column 1; blank lines are skipped)
 *     key sha256=<64 hex> name=N tenant=T [user=U] [org=O] rpm=N tpm=N [priority=P]
 *     user name=U rpm=N tpm=N
 *     org  name=O rpm=N tpm=N
 *
 *   Fields are separated by spaces or tabs, each `field=value` at most once,
 *   in any order. Names (name, tenant, user, org) are 1..63 bytes of
 *   [A-Za-z0-9._:@/+-]. rpm and tpm are requests and tokens per minute,
 *   0..1000000000, 0 meaning "no limit at this level". priority is 0..255
 *   (default 0; the batcher serves larger first). A `key` line's user and
 *   org are optional; a `user`/`org` line sets the limits shared by every
 *   key naming that user/org (rate limits at key, user and org level, see
 *   ing_ratelimit.h); a user or org named by keys but without its own line
 *   has no limit at that level. User and org names are global in the file
 *   (write "tenant/alice" to scope them). Key names and digests are unique,
 *   so are user and org lines. Lines are at most ING_KEYS_LINE_MAX bytes.
 *   `favo keys` rewrites the whole file (comments are not kept).
 *
 *   Every error names the file, line, column and field:
 *     keys.conf:3:40: field 'rpm': '12x' is not a whole number 0..1000000000
 *
 * Invariants
 *   1. No key material is stored or logged: only digests. A presented token
 *      lives in the caller's buffer; this module hashes it into a stack
 *      digest and clears that digest before returning.
 *   2. Lookup does not leak which stored digest, or which prefix of one, a
 *      token came close to: the hash table is indexed by the digest of the
 *      presented token (bits the attacker cannot steer towards a stored
 *      digest without a SHA-256 preimage), every candidate is compared in
 *      full with CRYPTO_memcmp (constant time over all 32 bytes), and a
 *      miss on an empty slot still performs one CRYPTO_memcmp.
 *   3. ks->keys[i].id == i, and the key's rate-limit bucket is i; user u is
 *      bucket nkeys + u and org o is bucket nkeys + nusers + o
 *      (ing_keys_buckets).
 *
 * Errors: functions return 0 or -errno: -EINVAL bad file content (message in
 * ks->err), -ENOENT no such file / entry, -EEXIST duplicate name or digest,
 * -ENOMEM, or the errno of a failed system call (message in ks->err).
 *
 * Threads: a loaded struct ing_keys is read-only, so any number of threads
 * may look up concurrently. Reload (SIGHUP) loads a new one and swaps.
 */
#ifndef ING_KEYS_H
#define ING_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ING_KEYS_NAME_MAX 64          /* including the NUL */
#define ING_KEYS_LINE_MAX 1024
#define ING_KEYS_MAX (1u << 20)       /* entries of each kind */
#define ING_KEYS_LIMIT_MAX 1000000000u
#define ING_KEYS_TOKEN_MAX 1024       /* longer bearer tokens never match */
#define ING_KEYS_NONE UINT32_MAX      /* no user / no org */
#define ING_KEYS_PREFIX "favo-"
/* "favo-" + 43 base64url characters (256 random bits) + NUL */
#define ING_KEYS_KEY_LEN (5 + 43)

struct ing_key {
    uint8_t sha256[32];
    char name[ING_KEYS_NAME_MAX];
    char tenant[ING_KEYS_NAME_MAX];
    char user[ING_KEYS_NAME_MAX];     /* "" when none */
    char org[ING_KEYS_NAME_MAX];      /* "" when none */
    uint32_t rpm, tpm;                /* 0: no limit at key level */
    uint32_t priority;
    uint32_t id;                      /* index in ks->keys (invariant 3) */
    uint32_t user_id, org_id;         /* index in users/orgs, or ING_KEYS_NONE */
    uint32_t line;                    /* line in the file, 0 if added in memory */
};

/* A user or org: its name and the limits all its keys share. */
struct ing_keys_group {
    char name[ING_KEYS_NAME_MAX];
    uint32_t rpm, tpm;                /* 0: no limit at this level */
    uint32_t line;                    /* 0: named by keys only, no own line */
};

struct ing_keys {
    struct ing_key *keys;
    uint32_t nkeys, cap_keys;
    struct ing_keys_group *users, *orgs;
    uint32_t nusers, norgs, cap_users, cap_orgs;
    uint32_t *table;                  /* open addressing: key index + 1, 0 empty */
    uint32_t table_mask;
    char err[384];                    /* last error, for a person */
};

/* An empty set (no allocation). ing_keys_free releases any set. */
void ing_keys_init(struct ing_keys *ks);
void ing_keys_free(struct ing_keys *ks);

/*
 * Parse a keys file held in memory (text, len; need not be NUL-ended);
 * path is only used in messages. ks is overwritten, not freed (free an old
 * set first). On error ks is left empty and ks->err
 * names path:line:column and the field. Returns 0 or -EINVAL / -EEXIST /
 * -ENOMEM.
 */
int ing_keys_parse(struct ing_keys *ks, const char *path, const char *text, size_t len);
/* Read and parse a file; -ENOENT (message in ks->err) when it is missing,
 * -EPERM when group or others may write it (they could add keys). */
int ing_keys_load(struct ing_keys *ks, const char *path);

/*
 * The entry whose digest is SHA-256(token), or NULL. Constant time in the
 * comparison of digests (invariant 2). Tokens longer than
 * ING_KEYS_TOKEN_MAX or empty return NULL.
 */
const struct ing_key *ing_keys_lookup(const struct ing_keys *ks, const char *token,
                                      size_t len);

/*
 * Authenticate an `Authorization` header value (val, len; NULL when the
 * header is absent): the scheme "Bearer" (any case), one or more spaces,
 * then a token of token68 bytes (RFC 7235) up to the end. On success *out
 * is the key's entry and 0 is returned; otherwise *why is a sentence for
 * the 401 body (OpenAI's shape, code "invalid_api_key") that never repeats
 * any part of the presented token, and the return is -ENOENT (no header or
 * empty token), -EINVAL (another scheme or malformed) or -EACCES (no such
 * key). A malformed header is still hashed and looked up, so all three
 * failures take about as long as a wrong key.
 */
int ing_keys_auth(const struct ing_keys *ks, const char *val, size_t len,
                  const struct ing_key **out, const char **why);

/* SHA-256 through OpenSSL EVP. Returns 0 or -EIO. */
int ing_keys_sha256(const void *data, size_t len, uint8_t out[32]);

/*
 * Make a new key: "favo-" + base64url of 32 bytes from RAND_bytes, into key
 * (ING_KEYS_KEY_LEN + 1 bytes), and its digest. The caller prints it once
 * and clears it (explicit_bzero). Returns 0 or -EIO.
 */
int ing_keys_generate(char key[ING_KEYS_KEY_LEN + 1], uint8_t sha256[32]);

/*
 * Add an entry (k->sha256, name, tenant, user, org, rpm, tpm, priority are
 * read; id, user_id, org_id, line are set). Names are validated like the
 * file's. Returns 0, -EINVAL (bad field, ks->err), -EEXIST (name or digest
 * taken), -ENOSPC, -ENOMEM.
 */
int ing_keys_add(struct ing_keys *ks, const struct ing_key *k);
/*
 * Remove the key named what, or else the one key whose lower-case hex
 * digest starts with what (at least 8 hex digits). Users and orgs stay.
 * Returns 0, -ENOENT, or -EINVAL for an ambiguous / too short prefix.
 */
int ing_keys_revoke(struct ing_keys *ks, const char *what);

/*
 * Serialize to text (malloc'd, *len bytes, NUL-ended) in the file format,
 * and write atomically: a temporary file in the same folder, mode 0600,
 * written, fsync'd, renamed over path, and the folder fsync'd.
 */
int ing_keys_format(const struct ing_keys *ks, char **text, size_t *len);
int ing_keys_write(struct ing_keys *ks, const char *path);

/* Lower-case hex of a digest into out[65]. */
void ing_keys_hex(const uint8_t sha256[32], char out[65]);

/* Rate-limit buckets (invariant 3): total count, and the buckets of one key
 * (key, then user, then org when present) into out[3]; returns how many. */
uint32_t ing_keys_nbuckets(const struct ing_keys *ks);
unsigned ing_keys_buckets(const struct ing_keys *ks, const struct ing_key *k, uint32_t out[3]);
/* The rpm/tpm limits of bucket b. Returns 0 or -ERANGE. */
int ing_keys_bucket_limits(const struct ing_keys *ks, uint32_t b, uint32_t *rpm, uint32_t *tpm);

#endif /* ING_KEYS_H */
