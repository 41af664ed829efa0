/*
 * t_util.c - test helpers.
 */
#include "t_util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int t_failures;

const char *t_env(const char *name, const char *fallback)
{
    const char *v = getenv(name);

    return v && *v ? v : fallback;
}

void t_skip(const char *why)
{
    fprintf(stderr, "SKIP: %s\n", why);
    exit(T_SKIP);
}

char *t_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t cap = 0, n = 0;

    if (!f)
        return NULL;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            char *nb;

            cap = cap ? cap * 2 : 65536;
            nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0)
            break;
    }
    fclose(f);
    buf[n] = 0;
    if (len)
        *len = n;
    return buf;
}

char *t_tmpdir(void)
{
    char *p = NULL;

    if (asprintf(&p, "%s/favo-test-XXXXXX", t_env("TMPDIR", "/tmp")) < 0)
        return NULL;
    if (!mkdtemp(p)) {
        free(p);
        return NULL;
    }
    return p;
}

struct buf {
    char *p;
    size_t n, cap;
};

static void buf_read(struct buf *b, int fd, int *open)
{
    char tmp[65536];
    ssize_t r = read(fd, tmp, sizeof(tmp));

    if (r <= 0) {
        *open = 0;
        return;
    }
    if (b->n + (size_t)r + 1 > b->cap) {
        b->cap = (b->n + (size_t)r + 1) * 2;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, tmp, (size_t)r);
    b->n += (size_t)r;
    b->p[b->n] = 0;
}

int t_run(char *const argv[], char **out, char **err)
{
    int po[2], pe[2], st, oo = 1, eo = 1;
    struct buf bo = { 0 }, be = { 0 };
    pid_t pid;

    if (pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC))
        return -errno;
    pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        dup2(po[1], 1);
        dup2(pe[1], 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    while (oo || eo) {
        struct pollfd p[2] = { { oo ? po[0] : -1, POLLIN, 0 }, { eo ? pe[0] : -1, POLLIN, 0 } };

        if (poll(p, 2, -1) < 0 && errno != EINTR)
            break;
        if (p[0].revents)
            buf_read(&bo, po[0], &oo);
        if (p[1].revents)
            buf_read(&be, pe[0], &eo);
    }
    close(po[0]);
    close(pe[0]);
    waitpid(pid, &st, 0);
    if (!bo.p)
        bo.p = calloc(1, 1);
    if (!be.p)
        be.p = calloc(1, 1);
    if (out)
        *out = bo.p;
    else
        free(bo.p);
    if (err)
        *err = be.p;
    else
        free(be.p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}
