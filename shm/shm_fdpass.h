/*
 * shm_fdpass.h - handing a client socket from ingress to egress with
 * SCM_RIGHTS (ARCHITECTURE.md "Request lifecycle" step 3, invariant 6: the
 * client socket is held by two parties, ingress and egress).
 *
 * ingress sends each client socket ONCE per connection over a connected
 * AF_UNIX SOCK_SEQPACKET socket, with a small fixed-size metadata record
 * beside it (the connection id egress will see again in request
 * descriptors). SEQPACKET keeps record boundaries, so one recvmsg gets
 * exactly one fd and its record, never half of one or two fds.
 *
 * Errors: 0 or -errno. -EAGAIN: the socket is non-blocking and full / empty;
 * -EPIPE / -ECONNRESET: the peer went away; -EBADMSG: a record of the
 * wrong size, no fd, more than one fd, or a truncated control message (any
 * fd that did arrive is closed, never leaked); -EINVAL: bad arguments.
 */
#ifndef SHM_FDPASS_H
#define SHM_FDPASS_H

#include <stddef.h>

/* A connected SOCK_SEQPACKET pair, close-on-exec (for tests and the
 * supervisor, which gives one end to ingress and the other to egress). */
int shm_fdpass_pair(int sv[2]);

/* Send fd with meta[0, len) (1..256 bytes). The caller keeps its fd. */
int shm_fdpass_send(int sock, int fd, const void *meta, size_t len);

/* Receive one fd (close-on-exec) and exactly len bytes of metadata into
 * meta. Returns 0 with *fd set, or -errno (see above; 0 bytes read, peer
 * closed: -EPIPE). */
int shm_fdpass_recv(int sock, int *fd, void *meta, size_t len);

#endif /* SHM_FDPASS_H */
