/*
 * shm_seg.c - creating, attaching and checking favo's segments (shm_seg.h).
 *
 * The header is plain data written by the creator before shm_seg_publish();
 * the only field that changes afterwards is `state`, with ck_pr stores, so
 * a reader that checks `state == READY` (acquire) sees a complete header and
 * complete regions.
 */
#include "shm_seg.h"

#include <ck_pr.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static bool fail_mlock;

void shm_seg_test_fail_mlock(bool fail)
{
    fail_mlock = fail;
}

static int seg_mlock(const void *p, size_t n)
{
    if (fail_mlock) {
        errno = EPERM;
        return -1;
    }
    return mlock(p, n);
}

__attribute__((format(printf, 3, 4))) static int seg_fail(struct shm_seg *seg, int rc,
                                                          const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(seg->err, sizeof(seg->err), fmt, ap);
    va_end(ap);
    return rc;
}

int shm_seg_instance_check(const char *instance)
{
    size_t n;

    if (!instance)
        return -EINVAL;
    n = strlen(instance);
    if (n == 0 || n > SHM_SEG_INSTANCE_MAX || instance[0] == '.')
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        char c = instance[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return -EINVAL;
    }
    return 0;
}

static const char *kind_magic(enum shm_seg_kind kind)
{
    return kind == SHM_SEG_DATA ? SHM_SEG_MAGIC_DATA : SHM_SEG_MAGIC_STATS;
}

static uint32_t kind_version(enum shm_seg_kind kind)
{
    return kind == SHM_SEG_DATA ? SHM_SEG_VERSION_DATA : SHM_SEG_VERSION_STATS;
}

static const char *kind_name(enum shm_seg_kind kind)
{
    return kind == SHM_SEG_DATA ? "data" : "stats";
}

int shm_seg_check(const void *base, size_t maplen, enum shm_seg_kind kind, char *err,
                  size_t errlen)
{
    const struct shm_seg_hdr *h = base;
    const char *magic = kind_magic(kind);
    char got[17];
    uint32_t state;

    if (maplen < sizeof(*h)) {
        snprintf(err, errlen, "%s segment: %zu bytes, smaller than its %zu-byte header",
                 kind_name(kind), maplen, sizeof(*h));
        return -EBADMSG;
    }
    if (memcmp(h->magic, magic, strlen(magic) + 1) != 0) {
        /* Say what it is, printable characters only (untrusted bytes). */
        for (unsigned i = 0; i < 16; i++) {
            unsigned char c = (unsigned char)h->magic[i];

            got[i] = c == 0 ? 0 : (c >= 0x20 && c < 0x7f ? (char)c : '?');
        }
        got[16] = 0;
        snprintf(err, errlen, "%s segment: magic at offset 0 is '%s', expected '%s': not a favo "
                 "%s segment", kind_name(kind), got, magic, kind_name(kind));
        return -EPROTO;
    }
    if (h->version != kind_version(kind)) {
        snprintf(err, errlen, "%s segment: layout version %u (offset %zu), this favo reads "
                 "version %u: use the favo binary of the running instance",
                 kind_name(kind), h->version, offsetof(struct shm_seg_hdr, version),
                 kind_version(kind));
        return -EPROTO;
    }
    if (h->hdr_size != sizeof(*h)) {
        snprintf(err, errlen, "%s segment: hdr_size %u (offset %zu), expected %zu",
                 kind_name(kind), h->hdr_size, offsetof(struct shm_seg_hdr, hdr_size),
                 sizeof(*h));
        return -EBADMSG;
    }
    state = ck_pr_load_32(&h->state);
    ck_pr_fence_load(); /* state (acquire) before the rest of the header */
    if (state == SHM_SEG_BUILDING) {
        snprintf(err, errlen, "%s segment: still being created (state BUILDING)",
                 kind_name(kind));
        return -EAGAIN;
    }
    if (state != SHM_SEG_READY && state != SHM_SEG_GONE) {
        snprintf(err, errlen, "%s segment: state %u at offset %zu is not a known state",
                 kind_name(kind), state, offsetof(struct shm_seg_hdr, state));
        return -EBADMSG;
    }
    if (h->size > maplen || h->size < SHM_SEG_HDR_SPACE) {
        snprintf(err, errlen, "%s segment: size field %llu (offset %zu) but %zu bytes are "
                 "mapped", kind_name(kind), (unsigned long long)h->size,
                 offsetof(struct shm_seg_hdr, size), maplen);
        return -EBADMSG;
    }
    if (h->nregions > SHM_SEG_MAX_REGIONS) {
        snprintf(err, errlen, "%s segment: nregions %u (offset %zu) exceeds %d", kind_name(kind),
                 h->nregions, offsetof(struct shm_seg_hdr, nregions), SHM_SEG_MAX_REGIONS);
        return -EBADMSG;
    }
    for (uint32_t i = 0; i < h->nregions; i++) {
        const struct shm_seg_region *r = &h->regions[i];
        size_t at = offsetof(struct shm_seg_hdr, regions) + i * sizeof(*r);

        if (memchr(r->name, 0, sizeof(r->name)) == NULL || r->name[0] == 0) {
            snprintf(err, errlen, "%s segment: region %u (offset %zu) has no valid name",
                     kind_name(kind), i, at);
            return -EBADMSG;
        }
        /* seg inv 3, overflow-safe: off <= size and size - off >= r->size */
        if (r->off % FAVO_CACHELINE || r->off < SHM_SEG_HDR_SPACE || r->off > h->size ||
            r->size > h->size - r->off) {
            snprintf(err, errlen, "%s segment: region '%s' (offset %zu) at %llu + %llu bytes "
                     "lies outside the %llu-byte segment or is misaligned", kind_name(kind),
                     r->name, at, (unsigned long long)r->off, (unsigned long long)r->size,
                     (unsigned long long)h->size);
            return -EBADMSG;
        }
    }
    return 0;
}

/* Fill the header and lay the regions out after it; returns total size. */
static int seg_layout(struct shm_seg *seg, struct shm_seg_hdr *h, enum shm_seg_kind kind,
                      const struct shm_seg_spec *regions, unsigned n, size_t *total)
{
    size_t off = SHM_SEG_HDR_SPACE;

    if (n > SHM_SEG_MAX_REGIONS)
        return seg_fail(seg, -EINVAL, "%s segment: %u regions, at most %d", kind_name(kind), n,
                        SHM_SEG_MAX_REGIONS);
    memset(h, 0, sizeof(*h));
    for (unsigned i = 0; i < n; i++) {
        size_t align = regions[i].align ? regions[i].align : FAVO_CACHELINE;

        if (!regions[i].name || !regions[i].name[0] ||
            strlen(regions[i].name) >= SHM_SEG_NAME_MAX || (align & (align - 1)) ||
            align < FAVO_CACHELINE)
            return seg_fail(seg, -EINVAL, "%s segment: region %u: bad name or alignment",
                            kind_name(kind), i);
        for (unsigned j = 0; j < i; j++)
            if (!strcmp(regions[i].name, regions[j].name))
                return seg_fail(seg, -EINVAL, "%s segment: region '%s' given twice",
                                kind_name(kind), regions[i].name);
        off = (off + align - 1) & ~(align - 1);
        snprintf(h->regions[i].name, sizeof(h->regions[i].name), "%s", regions[i].name);
        h->regions[i].off = off;
        h->regions[i].size = regions[i].size;
        if (regions[i].size > SIZE_MAX / 2 - off)
            return seg_fail(seg, -EINVAL, "%s segment: region '%s' too large", kind_name(kind),
                            regions[i].name);
        off += regions[i].size;
    }
    off = (off + 4095) & ~(size_t)4095;
    memcpy(h->magic, kind_magic(kind), strlen(kind_magic(kind)));
    h->version = kind_version(kind);
    h->hdr_size = sizeof(*h);
    h->size = off;
    h->generation = 1;
    h->created_ns = favo_wall_ns();
    h->creator_pid = (int32_t)getpid();
    h->nregions = n;
    h->state = SHM_SEG_BUILDING;
    *total = off;
    return 0;
}

static int seg_map(struct shm_seg *seg, size_t size, bool writable)
{
    void *p = mmap(NULL, size, writable ? PROT_READ | PROT_WRITE : PROT_READ, MAP_SHARED,
                   seg->fd, 0);

    if (p == MAP_FAILED)
        return seg_fail(seg, -errno, "%s segment: mmap of %zu bytes: %s", kind_name(seg->kind),
                        size, strerror(errno));
    seg->base = p;
    seg->size = size;
    seg->writable = writable;
    return 0;
}

static void seg_reset(struct shm_seg *seg, enum shm_seg_kind kind)
{
    memset(seg, 0, sizeof(*seg));
    seg->fd = -1;
    seg->kind = kind;
}

int shm_seg_create_data(struct shm_seg *seg, const struct shm_seg_spec *regions, unsigned n)
{
    struct shm_seg_hdr h;
    struct rlimit rl;
    size_t total;
    int rc;

    seg_reset(seg, SHM_SEG_DATA);
    rc = seg_layout(seg, &h, SHM_SEG_DATA, regions, n, &total);
    if (rc)
        return rc;
    seg->fd = memfd_create("favo-data", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (seg->fd < 0)
        return seg_fail(seg, -errno, "data segment: memfd_create: %s", strerror(errno));
    if (ftruncate(seg->fd, (off_t)total) < 0) {
        rc = seg_fail(seg, -errno, "data segment: ftruncate to %zu bytes: %s", total,
                      strerror(errno));
        goto out;
    }
    /* A stage that could resize the memfd could SIGBUS every other stage. */
    (void)fcntl(seg->fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
    rc = seg_map(seg, total, true);
    if (rc)
        goto out;
    seg->owner = true;
    /* Invariant 5 (no retention): never in a core dump, never swapped. */
    if (madvise(seg->base, total, MADV_DONTDUMP) < 0)
        favo_warn("data segment: madvise(MADV_DONTDUMP): %s", strerror(errno));
    if (seg_mlock(seg->base, total) == 0) {
        seg->locked = true;
    } else {
        int e = errno;

        getrlimit(RLIMIT_MEMLOCK, &rl);
        favo_warn("data segment: mlock of %zu bytes failed (%s; RLIMIT_MEMLOCK %llu bytes): "
                  "its pages may be swapped to disk; raise the limit (LimitMEMLOCK=) to lock it",
                  total, strerror(e), (unsigned long long)rl.rlim_cur);
    }
    memcpy(seg->base, &h, sizeof(h));
    return 0;
out:
    shm_seg_close(seg);
    return rc;
}

/* Map fd read-only to find the size, check the header, then map for real. */
static int seg_attach_fd(struct shm_seg *seg, bool writable)
{
    struct stat st;
    size_t size;
    int rc;

    if (fstat(seg->fd, &st) < 0)
        return seg_fail(seg, -errno, "%s segment: fstat: %s", kind_name(seg->kind),
                        strerror(errno));
    size = (size_t)st.st_size;
    if (size < SHM_SEG_HDR_SPACE)
        return seg_fail(seg, -EBADMSG, "%s segment: %zu bytes, too small for a favo segment",
                        kind_name(seg->kind), size);
    rc = seg_map(seg, size, writable);
    if (rc)
        return rc;
    rc = shm_seg_check(seg->base, size, seg->kind, seg->err, sizeof(seg->err));
    if (rc)
        return rc;
    if (seg->kind == SHM_SEG_DATA && madvise(seg->base, size, MADV_DONTDUMP) < 0)
        favo_warn("data segment: madvise(MADV_DONTDUMP): %s", strerror(errno));
    return 0;
}

int shm_seg_attach_data(struct shm_seg *seg, int fd)
{
    int rc;

    seg_reset(seg, SHM_SEG_DATA);
    seg->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (seg->fd < 0)
        return seg_fail(seg, -errno, "data segment: fd %d: %s", fd, strerror(errno));
    rc = seg_attach_fd(seg, true);
    if (rc)
        shm_seg_close(seg); /* keeps seg->err */
    return rc;
}

static bool pid_alive(int32_t pid)
{
    if (pid <= 0)
        return false;
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

/*
 * A segment of that name exists: refuse if its creator lives, otherwise
 * mark it GONE (readers holding it re-open) and return its generation.
 */
static int stats_take_over(struct shm_seg *seg, uint64_t *gen)
{
    struct stat st;
    struct shm_seg_hdr *h;
    int fd = shm_open(seg->path, O_RDWR | O_CLOEXEC, 0);
    int rc = 0;

    *gen = 0;
    if (fd < 0)
        return errno == ENOENT ? 0 : seg_fail(seg, -errno, "stats segment %s: open: %s",
                                              seg->path, strerror(errno));
    if (fstat(fd, &st) < 0 || (size_t)st.st_size < sizeof(*h)) {
        close(fd);
        goto unlink; /* not even a header: a crash during creation */
    }
    h = mmap(NULL, sizeof(*h), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (h == MAP_FAILED)
        return seg_fail(seg, -errno, "stats segment %s: mmap: %s", seg->path, strerror(errno));
    if (!memcmp(h->magic, SHM_SEG_MAGIC_STATS, sizeof(SHM_SEG_MAGIC_STATS))) {
        if (ck_pr_load_32(&h->state) != SHM_SEG_GONE && pid_alive(h->creator_pid) &&
            h->creator_pid != (int32_t)getpid()) {
            rc = seg_fail(seg, -EBUSY, "stats segment %s belongs to a running instance (pid "
                          "%d): choose another --instance", seg->path, (int)h->creator_pid);
        } else {
            *gen = h->generation;
            ck_pr_store_32(&h->state, SHM_SEG_GONE);
        }
    }
    munmap(h, sizeof(*h));
    if (rc)
        return rc;
unlink:
    if (shm_unlink(seg->path) < 0 && errno != ENOENT)
        return seg_fail(seg, -errno, "stats segment %s: unlink of the stale one: %s", seg->path,
                        strerror(errno));
    return 0;
}

int shm_seg_create_stats(struct shm_seg *seg, const char *instance,
                         const struct shm_seg_spec *regions, unsigned n)
{
    struct shm_seg_hdr h;
    uint64_t oldgen;
    size_t total;
    int rc;

    seg_reset(seg, SHM_SEG_STATS);
    if (shm_seg_instance_check(instance))
        return seg_fail(seg, -EINVAL, "instance name '%.48s' is not 1..%d characters of "
                        "[A-Za-z0-9_.-] (not starting with '.')", instance ? instance : "",
                        SHM_SEG_INSTANCE_MAX);
    snprintf(seg->path, sizeof(seg->path), "/favo.%s", instance);
    rc = seg_layout(seg, &h, SHM_SEG_STATS, regions, n, &total);
    if (rc)
        return rc;
    rc = stats_take_over(seg, &oldgen);
    if (rc)
        return rc;
    h.generation = oldgen + 1;
    seg->fd = shm_open(seg->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0640);
    if (seg->fd < 0)
        return seg_fail(seg, -errno, "stats segment %s: create: %s", seg->path,
                        strerror(errno));
    seg->owner = true;
    /* The mode is part of the contract: do not let the umask decide. */
    if (fchmod(seg->fd, 0640) < 0 || ftruncate(seg->fd, (off_t)total) < 0) {
        rc = seg_fail(seg, -errno, "stats segment %s: set up %zu bytes: %s", seg->path, total,
                      strerror(errno));
        goto out;
    }
    rc = seg_map(seg, total, true);
    if (rc)
        goto out;
    memcpy(seg->base, &h, sizeof(h));
    return 0;
out:
    shm_unlink(seg->path);
    shm_seg_close(seg);
    return rc;
}

int shm_seg_open_stats(struct shm_seg *seg, const char *instance, bool writable)
{
    int rc;

    seg_reset(seg, SHM_SEG_STATS);
    if (shm_seg_instance_check(instance))
        return seg_fail(seg, -EINVAL, "instance name '%.48s' is not 1..%d characters of "
                        "[A-Za-z0-9_.-]", instance ? instance : "", SHM_SEG_INSTANCE_MAX);
    snprintf(seg->path, sizeof(seg->path), "/favo.%s", instance);
    seg->fd = shm_open(seg->path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC, 0);
    if (seg->fd < 0) {
        rc = -errno;
        if (rc == -ENOENT)
            seg_fail(seg, rc, "no stats segment %s: is instance '%s' running?", seg->path,
                     instance);
        else
            seg_fail(seg, rc, "stats segment %s: open: %s", seg->path, strerror(-rc));
        return rc;
    }
    rc = seg_attach_fd(seg, writable);
    if (rc)
        shm_seg_close(seg); /* keeps seg->err */
    return rc;
}

void shm_seg_publish(struct shm_seg *seg)
{
    struct shm_seg_hdr *h = shm_seg_hdr(seg);

    FAVO_ASSERT(seg->owner && h->state == SHM_SEG_BUILDING); /* seg inv 2 */
    ck_pr_fence_store(); /* regions and header before state (release) */
    ck_pr_store_32(&h->state, SHM_SEG_READY);
}

void *shm_seg_region(const struct shm_seg *seg, const char *name, size_t *size)
{
    const struct shm_seg_hdr *h = shm_seg_hdr(seg);

    for (uint32_t i = 0; i < h->nregions && i < SHM_SEG_MAX_REGIONS; i++) {
        if (strncmp(h->regions[i].name, name, SHM_SEG_NAME_MAX) == 0) {
            /* seg inv 3 was checked at attach; the creator's own layout too */
            FAVO_ASSERT(h->regions[i].off + h->regions[i].size <= seg->size);
            if (size)
                *size = h->regions[i].size;
            return (char *)seg->base + h->regions[i].off;
        }
    }
    return NULL;
}

bool shm_seg_stale(const struct shm_seg *seg)
{
    return ck_pr_load_32(&shm_seg_hdr(seg)->state) == SHM_SEG_GONE;
}

void shm_seg_close(struct shm_seg *seg)
{
    if (seg->base) {
        if (seg->locked)
            munlock(seg->base, seg->size);
        munmap(seg->base, seg->size);
    }
    if (seg->fd >= 0)
        close(seg->fd);
    seg->base = NULL;
    seg->size = 0;
    seg->fd = -1;
    seg->locked = false;
}

int shm_seg_destroy(struct shm_seg *seg)
{
    int rc = 0;

    if (seg->base && seg->owner && seg->writable)
        ck_pr_store_32(&shm_seg_hdr(seg)->state, SHM_SEG_GONE);
    if (seg->owner && seg->kind == SHM_SEG_STATS && seg->path[0] && shm_unlink(seg->path) < 0)
        rc = -errno;
    shm_seg_close(seg);
    return rc;
}

int shm_seg_unlink_stats(const char *instance)
{
    char path[SHM_SEG_INSTANCE_MAX + 8];

    if (shm_seg_instance_check(instance))
        return -EINVAL;
    snprintf(path, sizeof(path), "/favo.%s", instance);
    return shm_unlink(path) < 0 ? -errno : 0;
}
