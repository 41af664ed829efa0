/*
 * test-shm-seg.c - the two segments: layout, inheritance by fd, sealing,
 * MADV_DONTDUMP, the mlock warning, the stats name's mode and take-over, and
 * the header check refusing other versions, foreign and corrupt headers.
 */
#include "t_util.h"

#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "shm_seg.h"

static char inst[64];

static void name_instance(const char *what)
{
    snprintf(inst, sizeof(inst), "t-seg-%d-%s", (int)getpid(), what);
}

/* Capture what fn writes to stderr (fd 2). Returns a malloc'd string. */
static char *capture_stderr(void (*fn)(void *), void *arg)
{
    int p[2], saved = dup(2);
    char *buf = calloc(1, 8192);
    ssize_t n;

    assert_int_equal(pipe(p), 0);
    dup2(p[1], 2);
    close(p[1]);
    fn(arg);
    dup2(saved, 2);
    close(saved);
    n = read(p[0], buf, 8191);
    (void)n;
    close(p[0]);
    return buf;
}

static const struct shm_seg_spec data_regs[] = {
    { "rings", 10000, 0 },
    { "cells", 65536, 4096 },
    { "plans", 100, 128 },
};

static void test_data_layout(void **state)
{
    struct shm_seg seg;
    struct shm_seg_hdr *h;
    size_t sz = 0;
    unsigned char *cells;

    assert_int_equal(shm_seg_create_data(&seg, data_regs, 3), 0);
    h = shm_seg_hdr(&seg);
    assert_memory_equal(h->magic, SHM_SEG_MAGIC_DATA, sizeof(SHM_SEG_MAGIC_DATA));
    assert_int_equal(h->version, SHM_SEG_VERSION_DATA);
    assert_int_equal(h->nregions, 3);
    assert_int_equal(h->state, SHM_SEG_BUILDING);
    assert_int_equal(h->size, seg.size);
    assert_int_equal(h->creator_pid, getpid());
    for (unsigned i = 0; i < 3; i++) {
        void *r = shm_seg_region(&seg, data_regs[i].name, &sz);
        size_t align = data_regs[i].align ? data_regs[i].align : 64;

        assert_non_null(r);
        assert_int_equal(sz, data_regs[i].size);
        assert_int_equal(((char *)r - (char *)seg.base) % align, 0);
        assert_true((char *)r + sz <= (char *)seg.base + seg.size);
        for (size_t k = 0; k < sz; k++)
            assert_int_equal(((unsigned char *)r)[k], 0);
    }
    assert_null(shm_seg_region(&seg, "nope", &sz));
    /* Regions do not overlap. */
    assert_true(h->regions[0].off + h->regions[0].size <= h->regions[1].off);
    assert_true(h->regions[1].off + h->regions[1].size <= h->regions[2].off);
    /* Sealed: no stage can resize the memfd under the others. */
    assert_int_not_equal(ftruncate(seg.fd, (off_t)seg.size * 2), 0);
    assert_int_not_equal(ftruncate(seg.fd, 4096), 0);
    /* Close-on-exec: the supervisor passes it deliberately with dup2. */
    assert_true(fcntl(seg.fd, F_GETFD) & FD_CLOEXEC);
    cells = shm_seg_region(&seg, "cells", NULL);
    cells[0] = 0x42;
    shm_seg_publish(&seg);
    assert_int_equal(h->state, SHM_SEG_READY);
    assert_int_equal(shm_seg_destroy(&seg), 0);
    assert_null(seg.base);
}

static void test_data_inherit(void **state)
{
    struct shm_seg seg;
    unsigned char *cells;
    pid_t pid;
    int st;

    assert_int_equal(shm_seg_create_data(&seg, data_regs, 3), 0);
    shm_seg_publish(&seg);
    cells = shm_seg_region(&seg, "cells", NULL);
    cells[1] = 7;
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* A stage: its own mapping at its own address (invariant 1). */
        struct shm_seg child;
        int fd = dup(seg.fd);
        unsigned char *c;

        if (shm_seg_attach_data(&child, fd) != 0)
            _exit(10);
        close(fd);
        c = shm_seg_region(&child, "cells", NULL);
        if (!c || c[1] != 7)
            _exit(11);
        c[2] = 9;
        shm_seg_close(&child);
        _exit(0);
    }
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    assert_int_equal(cells[2], 9);
    shm_seg_destroy(&seg);
}

/* /proc/self/smaps marks MADV_DONTDUMP mappings with "dd" in VmFlags. */
static bool mapping_has_flag(void *addr, const char *flag)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    bool in = false, found = false;
    unsigned long lo, hi, a = (unsigned long)addr;

    if (!f)
        return false;
    while (fgets(line, sizeof(line), f)) {
        if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            in = a >= lo && a < hi;
            continue;
        }
        if (in && !strncmp(line, "VmFlags:", 8)) {
            char pat[8];

            snprintf(pat, sizeof(pat), " %s", flag);
            found = strstr(line, pat) != NULL;
            break;
        }
    }
    fclose(f);
    return found;
}

static void test_data_dontdump(void **state)
{
    struct shm_seg seg;

    assert_int_equal(shm_seg_create_data(&seg, data_regs, 3), 0);
    if (access("/proc/self/smaps", R_OK) != 0) {
        shm_seg_destroy(&seg);
        skip();
    }
    assert_true(mapping_has_flag(seg.base, "dd"));
    shm_seg_destroy(&seg);
}

static void create_with_failing_mlock(void *arg)
{
    struct shm_seg *seg = arg;

    shm_seg_test_fail_mlock(true);
    assert_int_equal(shm_seg_create_data(seg, data_regs, 3), 0);
    shm_seg_test_fail_mlock(false);
}

static void test_mlock_warning(void **state)
{
    struct shm_seg seg;
    char *err = capture_stderr(create_with_failing_mlock, &seg);

    assert_false(seg.locked);
    assert_non_null(strstr(err, "mlock"));
    assert_non_null(strstr(err, "RLIMIT_MEMLOCK"));
    free(err);
    shm_seg_destroy(&seg);
}

static void test_bad_specs(void **state)
{
    struct shm_seg seg;
    const struct shm_seg_spec dup[] = { { "a", 10, 0 }, { "a", 10, 0 } };
    const struct shm_seg_spec badalign[] = { { "a", 10, 96 } };
    const struct shm_seg_spec longname[] = { { "0123456789abcdefg", 10, 0 } };

    assert_int_equal(shm_seg_create_data(&seg, dup, 2), -EINVAL);
    assert_non_null(strstr(seg.err, "twice"));
    assert_int_equal(shm_seg_create_data(&seg, badalign, 1), -EINVAL);
    assert_int_equal(shm_seg_create_data(&seg, longname, 1), -EINVAL);
    assert_int_equal(shm_seg_create_stats(&seg, "../etc", data_regs, 1), -EINVAL);
    assert_non_null(strstr(seg.err, "instance name"));
    assert_int_equal(shm_seg_create_stats(&seg, "", data_regs, 1), -EINVAL);
    assert_int_equal(shm_seg_create_stats(&seg, ".hidden", data_regs, 1), -EINVAL);
    assert_int_equal(shm_seg_instance_check("ok-name_1.2"), 0);
}

static void test_stats_mode_and_open(void **state)
{
    struct shm_seg seg, rd;
    char path[128];
    struct stat stt;

    name_instance("mode");
    umask(077); /* the mode must not depend on the umask */
    assert_int_equal(shm_seg_create_stats(&seg, inst, data_regs, 1), 0);
    umask(022);
    snprintf(path, sizeof(path), "/dev/shm/favo.%s", inst);
    if (stat(path, &stt) == 0)
        assert_int_equal(stt.st_mode & 0777, 0640);
    assert_int_equal(fstat(seg.fd, &stt), 0);
    assert_int_equal(stt.st_mode & 0777, 0640);
    /* Not published yet: readers are told to retry. */
    assert_int_equal(shm_seg_open_stats(&rd, inst, false), -EAGAIN);
    assert_non_null(strstr(rd.err, "being created"));
    shm_seg_publish(&seg);
    assert_int_equal(shm_seg_open_stats(&rd, inst, false), 0);
    assert_false(rd.writable);
    assert_non_null(shm_seg_region(&rd, "rings", NULL));
    assert_false(shm_seg_stale(&rd));
    assert_int_equal(shm_seg_destroy(&seg), 0);
    assert_true(shm_seg_stale(&rd)); /* a reader holding it learns it is gone */
    shm_seg_close(&rd);
    assert_int_equal(shm_seg_open_stats(&rd, inst, false), -ENOENT);
    assert_non_null(strstr(rd.err, "is instance"));
}

/* Patch a published stats segment's header through the creator's mapping. */
static void test_stats_refuses_other_version(void **state)
{
    struct shm_seg seg, rd;
    struct shm_seg_hdr *h;

    name_instance("ver");
    assert_int_equal(shm_seg_create_stats(&seg, inst, data_regs, 2), 0);
    shm_seg_publish(&seg);
    h = shm_seg_hdr(&seg);

    h->version = SHM_SEG_VERSION_STATS + 1;
    assert_int_equal(shm_seg_open_stats(&rd, inst, false), -EPROTO);
    assert_non_null(strstr(rd.err, "layout version 2"));
    assert_non_null(strstr(rd.err, "reads version 1"));
    assert_null(rd.base);
    h->version = SHM_SEG_VERSION_STATS;

    memcpy(h->magic, "NOT-FAVO\x01", 9);
    assert_int_equal(shm_seg_open_stats(&rd, inst, false), -EPROTO);
    assert_non_null(strstr(rd.err, "not a favo stats segment"));
    assert_non_null(strstr(rd.err, "NOT-FAVO?"));
    memcpy(h->magic, SHM_SEG_MAGIC_STATS, sizeof(SHM_SEG_MAGIC_STATS));

    h->regions[1].off = h->size - 64;
    assert_int_equal(shm_seg_open_stats(&rd, inst, false), -EBADMSG);
    assert_non_null(strstr(rd.err, "region 'cells'"));
    h->regions[1].off = UINT64_MAX - 63; /* overflow-safe bound check */
    assert_int_equal(shm_seg_open_stats(&rd, inst, false), -EBADMSG);
    h->regions[1].off = 8192 + 1;
    assert_int_equal(shm_seg_open_stats(&rd, inst, false), -EBADMSG);
    assert_non_null(strstr(rd.err, "misaligned"));

    /* The data segment's check refuses a stats segment and vice versa. */
    assert_int_equal(shm_seg_check(seg.base, seg.size, SHM_SEG_DATA, rd.err, sizeof(rd.err)),
                     -EPROTO);
    shm_seg_destroy(&seg);
}

static void test_stats_take_over(void **state)
{
    struct shm_seg seg, old;
    int p[2], q[2], st;
    char c;
    pid_t pid;

    name_instance("take");
    assert_int_equal(pipe(p), 0);
    assert_int_equal(pipe(q), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* Another live instance: created, then crashes without clean-up. */
        struct shm_seg s;

        if (shm_seg_create_stats(&s, inst, data_regs, 1) != 0)
            _exit(1);
        shm_seg_publish(&s);
        (void)!write(p[1], "x", 1);
        (void)!read(q[0], &c, 1);
        _exit(0);
    }
    assert_int_equal(read(p[0], &c, 1), 1);
    assert_int_equal(shm_seg_open_stats(&old, inst, false), 0);
    assert_int_equal(shm_seg_hdr(&old)->generation, 1);
    assert_int_equal(shm_seg_create_stats(&seg, inst, data_regs, 1), -EBUSY);
    assert_non_null(strstr(seg.err, "running instance"));
    (void)!write(q[1], "x", 1);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    /* Its creator is dead: take over with the next generation. */
    assert_int_equal(shm_seg_create_stats(&seg, inst, data_regs, 1), 0);
    assert_int_equal(shm_seg_hdr(&seg)->generation, 2);
    assert_true(shm_seg_stale(&old));
    shm_seg_close(&old);
    shm_seg_publish(&seg);
    assert_int_equal(shm_seg_destroy(&seg), 0);
    close(p[0]);
    close(p[1]);
    close(q[0]);
    close(q[1]);
}

/* The header check over mutated bytes: never crashes, never accepts a
 * region outside the buffer. */
static void test_check_mutations(void **state)
{
    struct shm_seg seg;
    unsigned char *buf;
    char err[256];
    uint64_t s = 12345;
    size_t len;

    assert_int_equal(shm_seg_create_data(&seg, data_regs, 3), 0);
    shm_seg_publish(&seg);
    len = seg.size;
    buf = malloc(len);
    for (int iter = 0; iter < 20000; iter++) {
        const struct shm_seg_hdr *h = (const struct shm_seg_hdr *)buf;
        size_t maplen = len;

        memcpy(buf, seg.base, sizeof(struct shm_seg_hdr));
        for (int k = 0, n = 1 + (int)(t_rand(&s) % 4); k < n; k++)
            buf[t_rand(&s) % sizeof(struct shm_seg_hdr)] = (unsigned char)t_rand(&s);
        if (t_rand(&s) % 8 == 0)
            maplen = t_rand(&s) % len;
        if (shm_seg_check(buf, maplen, SHM_SEG_DATA, err, sizeof(err)) == 0) {
            for (unsigned i = 0; i < h->nregions; i++)
                assert_true(h->regions[i].off + h->regions[i].size <= maplen);
        } else {
            assert_true(err[0] != 0);
        }
    }
    free(buf);
    shm_seg_destroy(&seg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_layout),
        cmocka_unit_test(test_data_inherit),
        cmocka_unit_test(test_data_dontdump),
        cmocka_unit_test(test_mlock_warning),
        cmocka_unit_test(test_bad_specs),
        cmocka_unit_test(test_stats_mode_and_open),
        cmocka_unit_test(test_stats_refuses_other_version),
        cmocka_unit_test(test_stats_take_over),
        cmocka_unit_test(test_check_mutations),
    };

    return cmocka_run_group_tests(tests, NULL, NULL) ? 1 : 0;
}
