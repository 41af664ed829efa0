/*
 * test-ingress-fdpass.c - shm_fdpass: a socket handed from one process to
 * another with SCM_RIGHTS arrives usable with its metadata; malformed
 * records (no fd, wrong size, a closed peer) give their errors and leak
 * no fd.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shm_fdpass.h"

#define CHECK(x)                                                                   \
    do {                                                                           \
        if (!(x)) {                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #x); \
            return 1;                                                              \
        }                                                                          \
    } while (0)

static int open_fds(void)
{
    int n = 0;
    for (int fd = 0; fd < 1024; fd++)
        if (fcntl(fd, F_GETFD) >= 0)
            n++;
    return n;
}

/* The child receives a socket and writes through it: the bytes come out
 * of the parent's other end, so the fd crossed the process boundary. */
static int across_processes(void)
{
    int sv[2], data[2];
    pid_t pid;
    char buf[64];
    int status;
    uint64_t meta = 0x1122334455667788ull;

    CHECK(shm_fdpass_pair(sv) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, data) == 0);
    pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        int fd = -1;
        uint64_t m = 0;
        close(sv[0]);
        close(data[0]);
        close(data[1]);
        if (shm_fdpass_recv(sv[1], &fd, &m, sizeof(m)) != 0 || m != 0x1122334455667788ull)
            _exit(2);
        if ((fcntl(fd, F_GETFD) & FD_CLOEXEC) == 0)
            _exit(3);
        if (write(fd, "hello from egress", 17) != 17)
            _exit(4);
        _exit(0);
    }
    close(sv[1]);
    CHECK(shm_fdpass_send(sv[0], data[1], &meta, sizeof(meta)) == 0);
    close(data[1]); /* the child holds the only other copy now */
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    memset(buf, 0, sizeof(buf));
    CHECK(read(data[0], buf, sizeof(buf)) == 17);
    CHECK(!strcmp(buf, "hello from egress"));
    close(data[0]);
    close(sv[0]);
    return 0;
}

static int malformed(void)
{
    int sv[2], fd = 123, p[2];
    uint64_t m = 0;
    int before = open_fds();

    CHECK(shm_fdpass_pair(sv) == 0);
    /* no fd with the record */
    CHECK(send(sv[0], &m, sizeof(m), 0) == sizeof(m));
    CHECK(shm_fdpass_recv(sv[1], &fd, &m, sizeof(m)) == -EBADMSG);
    CHECK(fd == -1);
    /* a record of the wrong size: the fd that came with it is closed */
    CHECK(pipe(p) == 0);
    uint32_t small = 7;
    CHECK(shm_fdpass_send(sv[0], p[0], &small, sizeof(small)) == 0);
    CHECK(shm_fdpass_recv(sv[1], &fd, &m, sizeof(m)) == -EBADMSG);
    close(p[0]);
    close(p[1]);
    /* bad arguments */
    CHECK(shm_fdpass_send(sv[0], -1, &m, sizeof(m)) == -EINVAL);
    CHECK(shm_fdpass_send(sv[0], 0, &m, 0) == -EINVAL);
    /* peer gone */
    close(sv[0]);
    CHECK(shm_fdpass_recv(sv[1], &fd, &m, sizeof(m)) == -EPIPE);
    close(sv[1]);
    CHECK(open_fds() == before); /* nothing leaked */
    return 0;
}

int main(void)
{
    if (across_processes())
        return 1;
    if (malformed())
        return 1;
    printf("ok\n");
    return 0;
}
