/*
 * dp_cmd_keys.c - `favo keys add|list|revoke`: manage the API keys file
 * (format: ingress/ing_keys.h).
 *
 *   add     makes a random key (RAND_bytes), prints it ONCE on stdout and
 *           stores only its SHA-256 with name, tenant, user, org, limits and
 *           priority. Nothing else is printed on stdout, so scripts can do
 *           KEY=$(favo keys add ...).
 *   list    one line per key: name, tenant, user, org, rpm, tpm, priority,
 *           digest prefix. The file holds no key, so none can be shown.
 *   revoke  drops the key named NAME, or whose digest starts with HEX.
 *
 * Every change rewrites the file atomically (ing_keys_write: temp file, mode
 * 0600, fsync, rename). Concurrent `favo keys` runs serialize on an flock of
 * FILE.lock beside it, so two adds never lose one another. A running server
 * picks changes up on SIGHUP.
 */
#include "dp.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include "ing_keys.h"

int dp_cmd_keys(const struct dp_cmd *cmd, int argc, char **argv);

/* flock FILE.lock; returns the fd or -1 after printing why. */
static int keys_lock(const char *path)
{
    char lp[4096];
    int fd;

    if (snprintf(lp, sizeof(lp), "%s.lock", path) >= (int)sizeof(lp)) {
        fprintf(stderr, "favo keys: %s: path too long\n", path);
        return -1;
    }
    fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || flock(fd, LOCK_EX)) {
        fprintf(stderr, "favo keys: %s: cannot lock: %s\n", lp, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* Load path; a missing file is an empty set when missing_ok. */
static int keys_open(struct ing_keys *ks, const char *path, bool missing_ok)
{
    int rc = ing_keys_load(ks, path);

    if (rc == -ENOENT && missing_ok) {
        ing_keys_init(ks);
        return 0;
    }
    if (rc)
        fprintf(stderr, "favo keys: %s\n", ks->err);
    return rc;
}

static int copy_name(char out[ING_KEYS_NAME_MAX], const char *v)
{
    if (!v)
        return 0;
    if (strlen(v) >= ING_KEYS_NAME_MAX)
        return -1;
    strcpy(out, v);
    return 0;
}

static int keys_add(struct dp_opt *opts, const char *path)
{
    const char *tenant = dp_opt_str(opts, "tenant"), *name = dp_opt_str(opts, "name");
    char key[ING_KEYS_KEY_LEN + 1], hex[65];
    struct ing_keys ks;
    struct ing_key k;
    long long rpm, tpm, prio;
    int lock, rc, ret = 1;

    if (!tenant || !dp_opt_find(opts, "rpm")->val || !dp_opt_find(opts, "tpm")->val) {
        fprintf(stderr, "favo keys add: --tenant, --rpm and --tpm are required\n");
        return 2;
    }
    rpm = dp_opt_int(opts, "rpm");
    tpm = dp_opt_int(opts, "tpm");
    prio = dp_opt_int(opts, "priority");
    if (rpm < 0 || rpm > ING_KEYS_LIMIT_MAX || tpm < 0 || tpm > ING_KEYS_LIMIT_MAX) {
        fprintf(stderr, "favo keys add: --rpm and --tpm must be 0..%u (0: no limit)\n",
                ING_KEYS_LIMIT_MAX);
        return 2;
    }
    if (prio < 0 || prio > 255) {
        fprintf(stderr, "favo keys add: --priority must be 0..255\n");
        return 2;
    }
    memset(&k, 0, sizeof(k));
    if (copy_name(k.tenant, tenant) || copy_name(k.name, name) ||
        copy_name(k.user, dp_opt_str(opts, "user")) || copy_name(k.org, dp_opt_str(opts, "org"))) {
        fprintf(stderr, "favo keys add: names are at most %d bytes\n", ING_KEYS_NAME_MAX - 1);
        return 2;
    }
    k.rpm = (uint32_t)rpm;
    k.tpm = (uint32_t)tpm;
    k.priority = (uint32_t)prio;

    lock = keys_lock(path);
    if (lock < 0)
        return 1;
    if (keys_open(&ks, path, true))
        goto out_unlock;
    if (ing_keys_generate(key, k.sha256)) {
        fprintf(stderr, "favo keys add: the random generator failed\n");
        goto out;
    }
    ing_keys_hex(k.sha256, hex);
    if (!name) /* default name: the digest prefix, unique in practice */
        snprintf(k.name, sizeof(k.name), "key-%.12s", hex);
    rc = ing_keys_add(&ks, &k);
    if (!rc)
        rc = ing_keys_write(&ks, path);
    if (rc) {
        fprintf(stderr, "favo keys add: %s\n", ks.err);
        goto out;
    }
    /* The only time the key exists outside the client: stdout, once. */
    printf("%s\n", key);
    fflush(stdout);
    fprintf(stderr, "favo keys: added '%s' (tenant %s, sha256 %.12s...) to %s; the key is "
            "shown only this once\n", k.name, k.tenant, hex, path);
    ret = 0;
out:
    explicit_bzero(key, sizeof(key));
    ing_keys_free(&ks);
out_unlock:
    close(lock);
    return ret;
}

static int keys_list(const char *path)
{
    struct ing_keys ks;
    char hex[65];

    if (keys_open(&ks, path, false))
        return 1;
    printf("%-20s %-16s %-16s %-16s %10s %10s %4s  %s\n", "NAME", "TENANT", "USER", "ORG",
           "RPM", "TPM", "PRIO", "SHA256");
    for (uint32_t i = 0; i < ks.nkeys; i++) {
        const struct ing_key *k = &ks.keys[i];

        ing_keys_hex(k->sha256, hex);
        printf("%-20s %-16s %-16s %-16s %10u %10u %4u  %.12s\n", k->name, k->tenant,
               k->user[0] ? k->user : "-", k->org[0] ? k->org : "-", k->rpm, k->tpm,
               k->priority, hex);
    }
    for (uint32_t i = 0; i < ks.nusers; i++)
        if (ks.users[i].line)
            printf("user %s: rpm %u tpm %u (shared by its keys)\n", ks.users[i].name,
                   ks.users[i].rpm, ks.users[i].tpm);
    for (uint32_t i = 0; i < ks.norgs; i++)
        if (ks.orgs[i].line)
            printf("org %s: rpm %u tpm %u (shared by its keys)\n", ks.orgs[i].name,
                   ks.orgs[i].rpm, ks.orgs[i].tpm);
    ing_keys_free(&ks);
    return 0;
}

static int keys_revoke(const char *path, const char *what)
{
    struct ing_keys ks;
    int lock, ret = 1;

    lock = keys_lock(path);
    if (lock < 0)
        return 1;
    if (keys_open(&ks, path, false))
        goto out_unlock;
    if (ing_keys_revoke(&ks, what) || ing_keys_write(&ks, path)) {
        fprintf(stderr, "favo keys revoke: %s\n", ks.err);
        goto out;
    }
    fprintf(stderr, "favo keys: revoked '%s' in %s\n", what, path);
    ret = 0;
out:
    ing_keys_free(&ks);
out_unlock:
    close(lock);
    return ret;
}

int dp_cmd_keys(const struct dp_cmd *cmd, int argc, char **argv)
{
    struct dp_opt opts[] = {
        { "keys", 0, DP_OPT_STR, "FILE", "favo-keys.conf", "API keys file (holds SHA-256 digests only; format in ingress/ing_keys.h)." },
        { "tenant", 0, DP_OPT_STR, "NAME", NULL, "add: tenant of the new key (required)." },
        { "name", 0, DP_OPT_STR, "NAME", NULL, "add: name of the new key (default key-<digest prefix>)." },
        { "user", 0, DP_OPT_STR, "NAME", NULL, "add: user of the new key; keys of one user share its 'user' line limits." },
        { "org", 0, DP_OPT_STR, "NAME", NULL, "add: org of the new key; keys of one org share its 'org' line limits." },
        { "rpm", 0, DP_OPT_INT, "N", NULL, "add: requests per minute (required; 0 no limit)." },
        { "tpm", 0, DP_OPT_INT, "N", NULL, "add: tokens per minute (required; 0 no limit)." },
        { "priority", 0, DP_OPT_INT, "N", "0", "add: priority class 0..255 (larger served first)." },
        DP_OPT_END
    };
    int npos, rc = dp_opt_parse(cmd, opts, argc, argv, &npos);
    const char *path, *sub;

    if (rc)
        return rc > 0 ? 0 : 2;
    path = dp_opt_str(opts, "keys");
    sub = npos >= 1 ? argv[1] : NULL;
    if (sub && !strcmp(sub, "add") && npos == 1)
        return keys_add(opts, path);
    if (sub && !strcmp(sub, "list") && npos == 1)
        return keys_list(path);
    if (sub && !strcmp(sub, "revoke") && npos == 2)
        return keys_revoke(path, argv[2]);
    fprintf(stderr, "favo keys: want 'add', 'list' or 'revoke NAME|HASHPREFIX' (see favo keys "
            "--help)\n");
    return 2;
}
