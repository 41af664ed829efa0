/*
 * ing_tls.h - TLS 1.3 for ingress (OpenSSL 3.0), shaped for an io_uring
 * loop that never blocks and owns every socket operation.
 *
 * What it does. ing_tls_ctx holds the server's certificate chain and key
 * (--tls-cert / --tls-key) and the policy below. ing_tls_conn is one
 * connection's TLS state. The loop does all socket I/O itself; the module
 * only transforms bytes:
 *
 *   socket --recv--> staging buf --ing_tls_conn_feed--> [OpenSSL rbio: a
 *   memory BIO] --ing_tls_conn_read--> the cell (the request's plaintext
 *   is written there once: invariant 4)
 *
 *   the response --ing_tls_conn_write--> [wbio: a queue] --ing_tls_conn_
 *   pending / _sent--> the loop's SEND --> socket
 *
 * The queue carries handshake records, alerts and encrypted responses.
 * When kernel TLS transmit is on (ing_tls_conn_ktls_tx), the kernel
 * encrypts: plaintext is sent on the socket with plain send() - by egress,
 * or by the loop - and ing_tls_conn_write only queues plaintext.
 *
 * Policy (ing_tls_ctx_new), each choice deliberate:
 *   - TLS 1.3 only. A ClientHello without TLS 1.3 is answered with a
 *     protocol_version alert (70) and the handshake fails.
 *   - ALPN: "http/1.1" is the one protocol. A client that offers ALPN
 *     without http/1.1 (e.g. only "h2") is REFUSED with a
 *     no_application_protocol alert (120), as RFC 7301 section 3.2 asks:
 *     serving it HTTP/1.1 anyway would only move the failure to its HTTP/2
 *     preface, which the HTTP/1.1 parser answers with a 400. A client
 *     that offers no ALPN at all (openssl s_client, old tools) gets
 *     HTTP/1.1.
 *   - Session tickets OFF (SSL_CTX_set_num_tickets 0, SSL_OP_NO_TICKET, no
 *     session cache): every ingress worker and every restart would have a
 *     different ticket key, so resumption would mostly fail anyway; a
 *     shared key would be a long-lived secret to keep and rotate; and no
 *     tickets means no 0-RTT (replayable) data. Cost: a full handshake
 *     (one ECDHE + one signature) per connection, amortised by keep-alive.
 *   - SSL_OP_ENABLE_KTLS (unless ING_TLS_NO_KTLS), SSL_OP_NO_RENEGOTIATION,
 *     SSL_OP_CLEANSE_PLAINTEXT, SSL_MODE_RELEASE_BUFFERS. Default TLS 1.3
 *     suites (AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305: all three have
 *     a kernel TLS transmit path).
 *   - Encrypted (passphrase) keys are refused: a server must start
 *     unattended, and OpenSSL would otherwise prompt on a terminal.
 *
 * Where the plaintext goes (invariants 4 and 5). OpenSSL 3.0 decrypts a
 * record in place in its per-connection record buffer and copies the
 * plaintext to the caller; it has no API to decrypt into caller memory.
 * So the request bytes land in the cell exactly once, at
 * ing_tls_conn_read, and the transient record-buffer copy (one record, at
 * most 16 KiB) is wiped by OpenSSL right after the copy
 * (SSL_OP_CLEANSE_PLAINTEXT). The write queue may hold plaintext (kTLS
 * mode) or ciphertext; it is scrubbed when drained and when freed.
 *
 * Kernel TLS transmit - the way chosen and why. OpenSSL's own kTLS code
 * is the maintained way: it derives the keys, checks the suite, fills the
 * kernel's crypto_info, sends alerts and post-handshake messages as
 * kernel control messages, and tracks record sequence numbers. The other
 * way (TLS_TX with keys pulled from the key-log callback) re-implements
 * the key schedule and silently breaks the day OpenSSL writes one record
 * the module did not count. OpenSSL's code only switches TX on through the
 * wbio (BIO_set_ktls, on a socket BIO), at the moment it installs the
 * application write key - inside the handshake call that writes the
 * server's first flight. So the wbio is the module's own BIO method: a
 * queue to the loop, plus a socket BIO on the connection's fd kept for
 * the kTLS controls only. When OpenSSL asks for TX offload, the module
 * (a) checks the socket has the "tls" ULP (setsockopt TCP_ULP, done by
 * OpenSSL's socket BIO when it is created - harmless and ignored when the
 * kernel lacks the module), (b) sends the queued handshake flight at once
 * with a non-blocking send() (typically 1-4 KiB into a fresh socket's
 * empty buffer), because every byte sent after TLS_TX is switched on is
 * encrypted by the kernel, and (c) only when all of it went out, lets the
 * socket BIO set TLS_TX. Any failure declines the offload and the
 * connection stays on the userspace path (queue + loop SEND), which is
 * always correct. That send() and a getsockopt (once per handshake, kTLS
 * hosts only) and close_notify as a kernel control message are the only
 * syscalls the module makes; none is on the per-token path.
 * After the switch, OpenSSL writes only control records (alerts,
 * post-handshake messages): they go through the socket BIO as kernel
 * control messages (sendmsg, TLS_SET_RECORD_TYPE). A client KeyUpdate
 * that requests ours cannot be served under kTLS TX: OpenSSL 3.0 answers
 * it and moves its own write key, never the kernel's (tls13_update_key
 * has no kTLS step). The module sees that KeyUpdate leave (message
 * callback) and fails the connection (-EPROTO at that read), so the loop
 * sends nothing more; bytes egress writes concurrently would be rejected
 * by the client (bad_record_mac). Clients do not request KeyUpdate on
 * HTTP/1.1 connections in practice; the userspace path serves it.
 *
 * What an ingress crash costs a TLS connection (invariant 6 as far as
 * TLS allows). The SSL object - read keys and sequence numbers, and the
 * write keys on the userspace path - lives in ingress memory only and
 * dies with it. Then:
 *   - kTLS TX connection: the transmit state (key, IV, record sequence)
 *     lives in the kernel socket, which egress holds (SCM_RIGHTS copy).
 *     Responses in flight COMPLETE from egress with plain send(); egress
 *     can even end the connection with a valid close_notify (sendmsg with
 *     TLS_SET_RECORD_TYPE = 21, payload {1, 0}). What is lost: the read
 *     side. No one can decrypt the client's next record, so the
 *     connection cannot carry another request: after its in-flight
 *     responses, it must be closed; requests the client pipelined behind
 *     them are lost (it sees a close and retries on a new connection).
 *   - userspace-path connection: egress hands formatted bytes to ingress
 *     to encrypt, and the write keys are gone: the in-flight response
 *     CANNOT complete; the connection must be closed (reset) and the
 *     client retries.
 *   In both cases the restarted ingress cannot adopt the connection; the
 *   handoff must mark TLS connections so egress closes them (kTLS: after
 *   the in-flight response; userspace path: at once). How the pipeline
 *   does it: a userspace-path connection's conn key carries
 *   SHM_CONN_F_TLS and its socket never leaves ingress (shm_pipe.h "TLS",
 *   ing_loop.h "TLS"), so it dies with ingress; egress's ingress-restart
 *   check ends its answers at once. A kTLS connection is an ordinary
 *   handed-over socket to egress: its answer completes, then it closes.
 *
 * Connection lifecycle (ing_tls_conn_state; function making each
 * transition):
 *
 *   conn_new --> HANDSHAKE --feed/read: handshake done--> OPEN
 *                   |                                        |
 *                   | bad ClientHello, TLS 1.2 only, no      | peer close_notify (read -> 0)
 *                   | http/1.1 in ALPN, garbage: alert       | or ing_tls_conn_shutdown
 *                   | queued, -EPROTO                        v
 *                   +--------------> FAILED              CLOSED
 *   FAILED / CLOSED: send what ing_tls_conn_pending still holds (the
 *   alert or close_notify), then close the socket and ing_tls_conn_free.
 *
 * Use from the ingress loop (ing_loop.c; one ing_tls_conn per ing_conn):
 *   start     ing_tls_ctx_new(cfg->tls_cert, cfg->tls_key); failure stops
 *             the worker with the message (it names the file and fault).
 *   accept    ing_tls_conn_new(ctx, fd) and a small staging buffer
 *             (16 KiB: one record plus header).
 *   RECV      into the staging buffer, not the cell. On completion:
 *             res <= 0: ing_tls_conn_feed_eof. Then loop { off +=
 *             feed(stage + off, res - off); while ((n = read(cell + len,
 *             cap - len)) > 0) len += n; } while (n == -EAGAIN && off <
 *             res). n == 0: the client's close_notify (answer what is
 *             queued, then close). n == -EPROTO / -ECONNRESET: log
 *             ing_tls_conn_error and the alert (metadata), close after
 *             sending the queue. The cell filled (len == cap): grow the
 *             cell as for plaintext, keep stage[off..res) for the next
 *             round. Then parse the cell exactly as today.
 *   SEND      before each SEND: responses queued in the connection's
 *             output go through ing_tls_conn_write (userspace path) or
 *             straight from the output buffer (ing_tls_conn_ktls_tx);
 *             then ing_tls_conn_pending -> io_uring SEND of that region;
 *             its completion -> ing_tls_conn_sent(res > 0 ? res : 0).
 *             Check pending after every feed/read too: handshake
 *             flights and alerts appear there without any response.
 *   timers    the header timeout covers the handshake (start it at the
 *             first ciphertext byte: the cell stays empty meanwhile).
 *   close     when the last answer is out: ing_tls_conn_shutdown, send
 *             the queue (close_notify), shutdown(2), close;
 *             ing_tls_conn_free with the slot. A kTLS connection whose
 *             answer egress writes is ended by egress (close_notify as a
 *             control message, above), never by ingress mid-answer.
 *   egress    hand the socket over only when ing_tls_conn_ktls_tx; a
 *             userspace-path connection needs its answers back through
 *             ingress (ARCHITECTURE.md "TLS"), per token for streams.
 *
 * Invariants (cited by FAVO_ASSERT as "tls inv N"):
 *   1. Queue order is wire order: bytes leave in the order OpenSSL wrote
 *      them; a region handed out by ing_tls_conn_pending is never moved
 *      or freed until ing_tls_conn_sent says it went out.
 *   2. Kernel TLS TX is switched on only with the queue empty and nothing
 *      handed out, i.e. after every byte of the handshake flight is in the
 *      socket; afterwards OpenSSL never writes to the queue again.
 *   3. Nothing of the traffic is logged: only sizes, states, alert codes,
 *      protocol and suite names, OpenSSL's reason strings.
 *
 * Errors: functions return 0 / a count, or -errno. -EAGAIN (ING_TLS_WANT_
 * MORE): feed more ciphertext, then call again. -EPROTO: the TLS session
 * failed (ing_tls_conn_error says why; the alert, if any, is queued).
 * -ENOMEM: allocation failed. One connection is used by one thread at a
 * time; contexts are shared read-only between connections of one thread.
 */
#ifndef ING_TLS_H
#define ING_TLS_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define ING_TLS_WANT_MORE (-EAGAIN)

/* The ciphertext ing_tls_conn_feed buffers at most before the caller must
 * read: two full records and change. Bounds per-connection memory
 * (invariant 7 of ARCHITECTURE.md). */
#define ING_TLS_FEED_MAX (64u * 1024u)

typedef struct ing_tls_ctx ing_tls_ctx_t;
typedef struct ing_tls_conn ing_tls_conn_t;

enum ing_tls_flags {
    ING_TLS_NO_KTLS = 1u << 0,     /* never offer kernel TLS (tests, --tls-no-ktls) */
    ING_TLS_KTLS_ALWAYS = 1u << 1, /* offer it even when the host probe says no
                                      (tests: walks the decline path) */
};

enum ing_tls_state {
    ING_TLS_HANDSHAKE,
    ING_TLS_OPEN,
    ING_TLS_CLOSED, /* close_notify received or sent */
    ING_TLS_FAILED,
};

/* ------------------------------------------------------------- context */

/* Load the certificate chain (PEM: the leaf first, then intermediates) and
 * the private key (PEM, unencrypted) and set the policy above. On error
 * returns -errno and writes a message naming the flag, the file and what
 * is wrong into err (e.g. "--tls-key /x/key.pem: does not match the
 * certificate in --tls-cert /x/cert.pem"):
 *   -ENOENT / -EACCES / ...: the file cannot be opened (strerror)
 *   -EINVAL: not PEM, no certificate/key in it, encrypted key, key does
 *            not match the certificate
 *   -ENOMEM / -EPROTO: OpenSSL failed otherwise (its reason string). */
int ing_tls_ctx_new(ing_tls_ctx_t **ctx, const char *cert_path, const char *key_path,
                    unsigned flags, char *err, size_t errcap);
void ing_tls_ctx_free(ing_tls_ctx_t *ctx);

/* Whether this host can do kernel TLS transmit at all: the "tls" TCP ULP
 * is registered (/proc/sys/net/ipv4/tcp_available_ulp) or loads on
 * demand. Logged once at start by the caller; per connection it is
 * ing_tls_conn_ktls_tx that counts. */
bool ing_tls_ktls_available(void);

/* ---------------------------------------------------------- connection */

/* A server-side connection. fd: the accepted TCP socket, used only for
 * the kernel TLS switch (see the top); -1: never kTLS (memory only). */
int ing_tls_conn_new(ing_tls_ctx_t *ctx, int fd, ing_tls_conn_t **conn);
/* Free everything; queued bytes are scrubbed. Sends nothing. */
void ing_tls_conn_free(ing_tls_conn_t *c);

/* Hand in ciphertext received from the socket. Returns how many bytes
 * were taken (0..n; fewer than n when ING_TLS_FEED_MAX are buffered:
 * call ing_tls_conn_read, then feed the rest). Does not process them. */
size_t ing_tls_conn_feed(ing_tls_conn_t *c, const void *cipher, size_t n);
/* The peer closed TCP (recv returned 0). */
void ing_tls_conn_feed_eof(ing_tls_conn_t *c);

/* Drive the handshake without reading application data. 0: done (OPEN);
 * -EAGAIN: needs more ciphertext (send ing_tls_conn_pending first);
 * -EPROTO: failed (alert queued). */
int ing_tls_conn_handshake(ing_tls_conn_t *c);

/* Decrypt into dst (the cell at its fill offset), at most cap bytes;
 * drives the handshake first when needed. Returns > 0 bytes written to
 * dst; 0: the client sent close_notify (no more requests); -EAGAIN: feed
 * more ciphertext (and send what ing_tls_conn_pending holds: a handshake
 * may be waiting for our flight); -EPROTO: failed (alert queued; includes
 * a KeyUpdate request under kTLS TX); -ECONNRESET: TCP EOF without
 * close_notify (a truncation). Call until it returns -EAGAIN after each
 * feed: one feed may carry several records. cap == 0 returns -ENOBUFS. */
ssize_t ing_tls_conn_read(ing_tls_conn_t *c, void *dst, size_t cap);

/* Encrypt n response bytes into the queue (kTLS TX: queue the plaintext).
 * Returns n, -EAGAIN before the handshake is done, -EPIPE after our
 * close_notify (ing_tls_conn_shutdown) or FAILED, -ENOMEM. A client's
 * close_notify alone (CLOSED by read -> 0) is a half-close in TLS 1.3:
 * the answers to what it sent before may still be written. With kTLS TX the caller may instead send plaintext
 * on the socket itself, in order with what the queue holds. */
ssize_t ing_tls_conn_write(ing_tls_conn_t *c, const void *src, size_t n);

/* What to send next: *p and *n point at the oldest unsent bytes (one
 * contiguous region); returns n (0: nothing). The region stays valid and
 * unmoved until ing_tls_conn_sent (tls inv 1); calling pending again
 * before that returns the same region. */
size_t ing_tls_conn_pending(ing_tls_conn_t *c, const uint8_t **p, size_t *n);
/* n bytes of the region handed out went out (n may be less than it: the
 * rest is handed out again). 0 releases the region without progress. */
void ing_tls_conn_sent(ing_tls_conn_t *c, size_t n);

/* Queue close_notify (userspace path), or send it as a kernel control
 * message (kTLS TX: the queue must be empty and every plaintext byte of
 * the caller's already sent, else -EAGAIN). 0 on success; state CLOSED. */
int ing_tls_conn_shutdown(ing_tls_conn_t *c);

enum ing_tls_state ing_tls_conn_state(const ing_tls_conn_t *c);
/* Kernel TLS transmit is on for this connection's socket. */
bool ing_tls_conn_ktls_tx(const ing_tls_conn_t *c);
/* The last alert we sent (TLS AlertDescription, e.g. 70 protocol_version,
 * 120 no_application_protocol), -1 when none. */
int ing_tls_conn_alert_sent(const ing_tls_conn_t *c);
/* A one-line reason for FAILED (OpenSSL's reason string, no traffic), ""
 * when none. */
const char *ing_tls_conn_error(const ing_tls_conn_t *c);

/* Metadata for logs and stats (no traffic): "TLSv1.3", the suite name,
 * the ALPN protocol ("" when the client offered none). NULL before the
 * handshake finishes. */
struct ing_tls_info {
    const char *version, *cipher;
    char alpn[16];
    bool ktls_tx;
    /* "on", or "off: " and why: not offered (flag, no ULP on the host, no
     * fd), not asked by OpenSSL (suite or build), no tls ULP on the
     * socket, the handshake flight could not be sent at once, the kernel
     * refused TLS_TX. */
    const char *ktls_note;
};
int ing_tls_conn_info(const ing_tls_conn_t *c, struct ing_tls_info *info);

#endif /* ING_TLS_H */
