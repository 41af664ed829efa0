/*
 * shm_fdpass.c - SCM_RIGHTS send/receive of one client socket with its
 * metadata record (contract in shm_fdpass.h).
 */
#include "shm_fdpass.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define SHM_FDPASS_MAX_META 256

int shm_fdpass_pair(int sv[2])
{
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    return 0;
}

int shm_fdpass_send(int sock, int fd, const void *meta, size_t len)
{
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } u;
    struct iovec iov = { .iov_base = (void *)meta, .iov_len = len };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                          .msg_controllen = sizeof(u.buf) };
    struct cmsghdr *c;
    ssize_t n;

    if (sock < 0 || fd < 0 || !meta || len == 0 || len > SHM_FDPASS_MAX_META)
        return -EINVAL;
    memset(&u, 0, sizeof(u));
    c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    do
        n = sendmsg(sock, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    return (size_t)n == len ? 0 : -EMSGSIZE;
}

int shm_fdpass_recv(int sock, int *fd, void *meta, size_t len)
{
    union {
        char buf[CMSG_SPACE(sizeof(int) * 4)];
        struct cmsghdr align;
    } u;
    struct iovec iov = { .iov_base = meta, .iov_len = len };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                          .msg_controllen = sizeof(u.buf) };
    struct cmsghdr *c;
    int got = -1, extra = 0;
    ssize_t n;

    if (sock < 0 || !fd || !meta || len == 0 || len > SHM_FDPASS_MAX_META)
        return -EINVAL;
    *fd = -1;
    do
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    if (n == 0 && msg.msg_controllen == 0)
        return -EPIPE;
    /* Collect every fd that arrived so none leaks, whatever else is wrong. */
    for (c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < nfd; i++) {
            int f;
            memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
            if (got < 0)
                got = f;
            else {
                close(f);
                extra = 1;
            }
        }
    }
    if (got < 0 || extra || (size_t)n != len || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
        if (got >= 0)
            close(got);
        return -EBADMSG;
    }
    *fd = got;
    return 0;
}
