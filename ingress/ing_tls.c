/*
 * ing_tls.c - TLS 1.3 server connections over a memory read BIO and a
 * queue write BIO, with OpenSSL's own kernel-TLS transmit switch routed
 * through the queue BIO. Design, policy and invariants: ing_tls.h.
 */
#include "ing_tls.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "favo_base.h"

#ifndef TCP_ULP
#define TCP_ULP 31
#endif

/* OpenSSL's kTLS controls on a BIO. 73 (GET_KTLS_SEND) and 76
 * (GET_KTLS_RECV) are public (openssl/bio.h); the three below are
 * OpenSSL-internal (include/internal/bio.h) and reserved by a comment in
 * the public header, so their values are part of libssl's ABI: libssl
 * sends them to whatever BIO is the wbio. */
#define ING_BIO_CTRL_SET_KTLS 72
#define ING_BIO_CTRL_SET_KTLS_TX_SEND_CTRL_MSG 74
#define ING_BIO_CTRL_CLEAR_KTLS_TX_CTRL_MSG 75

/* An empty write queue larger than this is freed (per-connection memory
 * of idle keep-alive connections stays small). */
#define ING_TLS_QUEUE_KEEP (64u * 1024u)

/* Largest certificate or key file read (a chain of a few certificates is
 * a few KiB). */
#define ING_TLS_PEM_MAX (1u << 20)

struct ing_tls_ctx {
    SSL_CTX *ssl;
    bool ktls;               /* offer kTLS TX: allowed and the host has the ULP */
};

struct ing_tls_conn {
    SSL *ssl;
    BIO *rbio;               /* memory BIO, owned by ssl */
    BIO *wbio;               /* queue BIO (q_meth), owned by ssl */
    BIO *sock;               /* socket BIO on fd (kTLS controls only), or NULL */
    int fd;
    enum ing_tls_state st;
    bool ktls_tx;
    const char *ktls_note;   /* why kTLS TX is on or off (ing_tls_info) */
    bool rekey_refused;      /* OpenSSL re-keyed its write side under kTLS TX */
    bool eof;                /* TCP EOF fed */
    bool handed;             /* handed_p/_n are out with the loop (tls inv 1);
                                they are the first handed_n unsent bytes */
    int alert;               /* last alert sent, -1: none */
    /* the write queue: unsent bytes are [q_head, q_tail) of q */
    uint8_t *q;
    size_t q_cap, q_head, q_tail, handed_n;
    const uint8_t *handed_p; /* in q, or in q_old when q grew meanwhile */
    uint8_t *q_old;          /* the buffer a handed region lives in, when q grew */
    size_t q_old_cap;
    char err[160];
};

/* ------------------------------------------------------------ helpers */

static int ctx_err(char *err, size_t cap, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int ctx_err(char *err, size_t cap, int rc, const char *fmt, ...)
{
    va_list ap;

    if (err && cap) {
        va_start(ap, fmt);
        vsnprintf(err, cap, fmt, ap);
        va_end(ap);
    }
    ERR_clear_error();
    return rc;
}

/* The first OpenSSL error reason on this thread's queue, or "unknown". */
static const char *ossl_reason(void)
{
    unsigned long e = ERR_peek_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    return r ? r : "unknown OpenSSL error";
}

static void scrub_free(void *p, size_t n)
{
    if (p) {
        explicit_bzero(p, n);
        free(p);
    }
}

/* Read a whole PEM file (bounded). -errno with err filled. */
static int pem_slurp(const char *flag, const char *path, char **out, char *err, size_t cap)
{
    struct stat st;
    char *buf;
    ssize_t n;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return ctx_err(err, cap, -errno, "%s %s: %s", flag, path, strerror(errno));
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return ctx_err(err, cap, -EINVAL, "%s %s: not a regular file", flag, path);
    }
    if (st.st_size > (off_t)ING_TLS_PEM_MAX) {
        close(fd);
        return ctx_err(err, cap, -EFBIG, "%s %s: %lld bytes, more than any PEM file needs (%u)",
                       flag, path, (long long)st.st_size, ING_TLS_PEM_MAX);
    }
    buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        close(fd);
        return ctx_err(err, cap, -ENOMEM, "%s %s: out of memory", flag, path);
    }
    n = read(fd, buf, (size_t)st.st_size);
    close(fd);
    if (n != st.st_size) {
        scrub_free(buf, (size_t)st.st_size + 1);
        return ctx_err(err, cap, -EIO, "%s %s: short read", flag, path);
    }
    buf[n] = 0;
    if (!memmem(buf, (size_t)n, "-----BEGIN ", 11)) {
        scrub_free(buf, (size_t)n + 1);
        return ctx_err(err, cap, -EINVAL,
                       "%s %s: not a PEM file (no '-----BEGIN' line; a DER file converts with "
                       "'openssl x509|pkey -inform DER')",
                       flag, path);
    }
    *out = buf;
    return (int)n;
}

/* Never prompt for a passphrase (a server starts unattended). */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    return -1;
}

/* ------------------------------------------------------------ context */

static int alpn_select(SSL *s, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char ours[] = "\x08http/1.1";
    unsigned char *sel = NULL;

    /* Refuse a client whose list lacks http/1.1 (RFC 7301 3.2; why: the
     * top of ing_tls.h). OpenSSL sends no_application_protocol. */
    if (SSL_select_next_proto(&sel, outlen, ours, sizeof(ours) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* Under kTLS TX, an outgoing KeyUpdate means OpenSSL moved its own write
 * key while the kernel keeps the old one (OpenSSL 3.0's tls13_update_key
 * has no kTLS step): everything after it would go out under a key the
 * client no longer expects. Mark the connection to fail at the next read.
 * Installed only when kTLS is offered. */
static void msg_cb(int write_p, int version, int content_type, const void *buf, size_t len,
                   SSL *s, void *arg)
{
    struct ing_tls_conn *c = SSL_get_app_data(s);

    if (c && c->ktls_tx && write_p && content_type == SSL3_RT_HANDSHAKE && len >= 1 &&
        ((const uint8_t *)buf)[0] == SSL3_MT_KEY_UPDATE)
        c->rekey_refused = true;
}

static void info_cb(const SSL *s, int where, int ret)
{
    struct ing_tls_conn *c = SSL_get_app_data(s);

    if (c && (where & SSL_CB_WRITE_ALERT))
        c->alert = ret & 0xff;
}

/* The "tls" TCP ULP is registered. Setting it on an unconnected socket
 * makes a kernel with the module available autoload it once (the call
 * itself then fails with ENOTCONN), so the per-connection setsockopt
 * never triggers a module load. */
static bool ulp_listed(void)
{
    char buf[256] = { 0 };
    int fd = open("/proc/sys/net/ipv4/tcp_available_ulp", O_RDONLY | O_CLOEXEC);
    ssize_t n;

    if (fd < 0)
        return false;
    n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return false;
    for (char *t = strtok(buf, " \n"); t; t = strtok(NULL, " \n"))
        if (!strcmp(t, "tls"))
            return true;
    return false;
}

bool ing_tls_ktls_available(void)
{
    int s;

    if (ulp_listed())
        return true;
    s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s >= 0) {
        (void)setsockopt(s, IPPROTO_TCP, TCP_ULP, "tls", sizeof("tls"));
        close(s);
    }
    return ulp_listed();
}

int ing_tls_ctx_new(ing_tls_ctx_t **out, const char *cert, const char *key, unsigned flags,
                    char *err, size_t errcap)
{
    struct ing_tls_ctx *t = NULL;
    char *cert_pem = NULL, *key_pem = NULL;
    int cert_len = 0, key_len = 0;
    EVP_PKEY *pkey = NULL;
    BIO *b = NULL;
    int rc;

    *out = NULL;
    if (err && errcap)
        err[0] = 0;
    if (!cert || !key || !*cert || !*key)
        return ctx_err(err, errcap, -EINVAL, "--tls-cert and --tls-key go together: %s is missing",
                       (!cert || !*cert) ? "--tls-cert" : "--tls-key");
    ERR_clear_error();
    rc = cert_len = pem_slurp("--tls-cert", cert, &cert_pem, err, errcap);
    if (rc < 0)
        goto out;
    rc = key_len = pem_slurp("--tls-key", key, &key_pem, err, errcap);
    if (rc < 0)
        goto out;
    if (!strstr(cert_pem, "-----BEGIN CERTIFICATE-----") &&
        !strstr(cert_pem, "-----BEGIN TRUSTED CERTIFICATE-----")) {
        rc = ctx_err(err, errcap, -EINVAL,
                     "--tls-cert %s: no certificate in it (no '-----BEGIN CERTIFICATE-----' "
                     "block)%s",
                     cert, strstr(cert_pem, "PRIVATE KEY-----") ? "; it holds a private key: "
                                                                  "swapped with --tls-key?"
                                                                : "");
        goto out;
    }
    if (strstr(key_pem, "-----BEGIN ENCRYPTED PRIVATE KEY-----") ||
        strstr(key_pem, "Proc-Type: 4,ENCRYPTED")) {
        rc = ctx_err(err, errcap, -EINVAL,
                     "--tls-key %s: the private key is encrypted; favo starts unattended and "
                     "needs it unencrypted (openssl pkey -in KEY -out KEY.plain, mode 0600)",
                     key);
        goto out;
    }

    t = calloc(1, sizeof(*t));
    if (!t) {
        rc = ctx_err(err, errcap, -ENOMEM, "tls: out of memory");
        goto out;
    }
    t->ssl = SSL_CTX_new(TLS_server_method());
    if (!t->ssl) {
        rc = ctx_err(err, errcap, -ENOMEM, "tls: SSL_CTX_new: %s", ossl_reason());
        goto out;
    }
    SSL_CTX_set_default_passwd_cb(t->ssl, no_passphrase);
    if (SSL_CTX_use_certificate_chain_file(t->ssl, cert) != 1) {
        rc = ctx_err(err, errcap, -EINVAL, "--tls-cert %s: not a valid PEM certificate chain (%s)",
                     cert, ossl_reason());
        goto out;
    }
    b = BIO_new_mem_buf(key_pem, key_len);
    pkey = b ? PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL) : NULL;
    if (!pkey) {
        rc = ctx_err(err, errcap, -EINVAL, "--tls-key %s: no usable PEM private key in it (%s)%s",
                     key, ossl_reason(),
                     strstr(key_pem, "-----BEGIN CERTIFICATE-----")
                         ? "; it holds a certificate: swapped with --tls-cert?"
                         : "");
        goto out;
    }
    if (SSL_CTX_use_PrivateKey(t->ssl, pkey) != 1 || SSL_CTX_check_private_key(t->ssl) != 1) {
        rc = ctx_err(err, errcap, -EINVAL,
                     "--tls-key %s: does not match the certificate in --tls-cert %s (%s)", key,
                     cert, ossl_reason());
        goto out;
    }
    {
        X509 *x = SSL_CTX_get0_certificate(t->ssl);
        if (x && X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
            favo_warn("tls: the certificate in --tls-cert %s has expired; clients will refuse it",
                      cert);
    }

    /* Policy: ing_tls.h. */
    SSL_CTX_set_min_proto_version(t->ssl, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(t->ssl, 0);
    SSL_CTX_set_options(t->ssl, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_TICKET |
                                    SSL_OP_CLEANSE_PLAINTEXT | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_num_tickets(t->ssl, 0);
    SSL_CTX_set_session_cache_mode(t->ssl, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(t->ssl, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_alpn_select_cb(t->ssl, alpn_select, NULL);
    SSL_CTX_set_info_callback(t->ssl, info_cb);
    t->ktls = !(flags & ING_TLS_NO_KTLS) &&
              ((flags & ING_TLS_KTLS_ALWAYS) || ing_tls_ktls_available());
    if (t->ktls) {
        SSL_CTX_set_options(t->ssl, SSL_OP_ENABLE_KTLS);
        SSL_CTX_set_msg_callback(t->ssl, msg_cb);
    }
    favo_info("tls: TLS 1.3 only, ALPN http/1.1, tickets off, kernel TLS transmit %s",
              t->ktls ? "available" : (flags & ING_TLS_NO_KTLS) ? "off (by flag)"
                                                                : "unavailable (no tls ULP)");
    *out = t;
    t = NULL;
    rc = 0;
out:
    EVP_PKEY_free(pkey);
    BIO_free(b);
    if (cert_pem)
        scrub_free(cert_pem, (size_t)cert_len + 1);
    if (key_pem)
        scrub_free(key_pem, (size_t)key_len + 1); /* a private key: scrubbed */
    if (t) {
        SSL_CTX_free(t->ssl);
        free(t);
    }
    if (rc < 0 && err && err[0])
        favo_err("%s", err);
    return rc < 0 ? rc : 0;
}

void ing_tls_ctx_free(ing_tls_ctx_t *t)
{
    if (!t)
        return;
    SSL_CTX_free(t->ssl);
    free(t);
}

/* ------------------------------------------------------------ the queue */

static int q_append(struct ing_tls_conn *c, const void *src, size_t n)
{
    if (c->q_tail + n > c->q_cap) {
        size_t live = c->q_tail - c->q_head;

        if (!c->handed && c->q_head && live + n <= c->q_cap) {
            memmove(c->q, c->q + c->q_head, live);
            explicit_bzero(c->q + live, c->q_tail - live);
        } else {
            size_t ncap = c->q_cap ? c->q_cap : 4096;
            uint8_t *nq;

            while (ncap < live + n)
                ncap *= 2;
            nq = malloc(ncap);
            if (!nq)
                return -ENOMEM;
            if (live)
                memcpy(nq, c->q + c->q_head, live);
            if (c->handed && !c->q_old) {
                /* tls inv 1: the handed region must stay where it is until
                 * ing_tls_conn_sent; the old buffer lives until then. */
                c->q_old = c->q;
                c->q_old_cap = c->q_cap;
            } else {
                scrub_free(c->q, c->q_cap);
            }
            c->q = nq;
            c->q_cap = ncap;
        }
        c->q_head = 0;
        c->q_tail = live;
    }
    memcpy(c->q + c->q_tail, src, n);
    c->q_tail += n;
    return 0;
}

size_t ing_tls_conn_pending(ing_tls_conn_t *c, const uint8_t **p, size_t *n)
{
    size_t live = c->q_tail - c->q_head;

    if (c->handed) {
        /* the same region again, wherever it lives (tls inv 1) */
        *p = c->handed_p;
        *n = c->handed_n;
        return c->handed_n;
    }
    if (!live) {
        *p = NULL;
        *n = 0;
        return 0;
    }
    c->handed = true;
    c->handed_p = c->q + c->q_head;
    c->handed_n = live;
    *p = c->handed_p;
    *n = live;
    return live;
}

void ing_tls_conn_sent(ing_tls_conn_t *c, size_t n)
{
    FAVO_ASSERT(c->handed ? n <= c->handed_n : n == 0); /* tls inv 1 */
    c->handed = false;
    c->handed_p = NULL;
    c->handed_n = 0;
    if (c->q_old) {
        scrub_free(c->q_old, c->q_old_cap);
        c->q_old = NULL;
        c->q_old_cap = 0;
    }
    c->q_head += n;
    if (c->q_head == c->q_tail && c->q_tail) {
        explicit_bzero(c->q, c->q_tail); /* may be plaintext (kTLS mode) */
        c->q_head = c->q_tail = 0;
        if (c->q_cap > ING_TLS_QUEUE_KEEP) {
            /* a large answer went out: an idle connection keeps no more
             * than a handshake's worth */
            free(c->q);
            c->q = NULL;
            c->q_cap = 0;
        }
    }
}

/* ------------------------------------------------------- the queue BIO */

/* Send the queued flight now, on the socket (before TLS_TX: tls inv 2).
 * true when nothing is left. */
static bool q_flush_sync(struct ing_tls_conn *c)
{
    while (c->q_head < c->q_tail) {
        ssize_t r = send(c->fd, c->q + c->q_head, c->q_tail - c->q_head,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        c->q_head += (size_t)r;
    }
    if (c->q_tail)
        explicit_bzero(c->q, c->q_tail);
    c->q_head = c->q_tail = 0;
    return true;
}

static long q_set_ktls(struct ing_tls_conn *c, long is_tx, void *crypto_info)
{
    char ulp[16] = { 0 };
    socklen_t len = sizeof(ulp) - 1;
    long r;

    if (!is_tx || !c->sock)
        return 0; /* receive stays in userspace (OpenSSL 3.0: TX only for 1.3) */
    if (c->ktls_tx) {
        /* A second TX switch would be a re-key; OpenSSL 3.0 never asks
         * (see msg_cb), a later version might: decline, fail the
         * connection at the next read. */
        c->rekey_refused = true;
        return 0;
    }
    if (getsockopt(c->fd, IPPROTO_TCP, TCP_ULP, ulp, &len) || strcmp(ulp, "tls")) {
        c->ktls_note = "off: no tls ULP on the socket";
        return 0; /* userspace path */
    }
    if (c->handed || !q_flush_sync(c)) {
        c->ktls_note = "off: the handshake flight could not be sent at once";
        return 0; /* tls inv 2: bytes still to go out; stay in userspace */
    }
    FAVO_ASSERT(c->q_head == c->q_tail && !c->handed); /* tls inv 2 */
    r = BIO_ctrl(c->sock, ING_BIO_CTRL_SET_KTLS, is_tx, crypto_info);
    if (r > 0) {
        c->ktls_tx = true;
        c->ktls_note = "on";
    } else {
        c->ktls_note = "off: the kernel refused TLS_TX";
    }
    return r;
}

static int q_write(BIO *b, const char *data, int len)
{
    struct ing_tls_conn *c = BIO_get_data(b);

    BIO_clear_retry_flags(b);
    if (len <= 0)
        return 0;
    if (c->ktls_tx) {
        /* After the switch OpenSSL writes only control records (alerts,
         * post-handshake messages), flagged by the ctrl-msg control that
         * went to the socket BIO first. */
        int r = BIO_write(c->sock, data, len);
        if (r <= 0 && BIO_should_retry(c->sock))
            BIO_set_retry_write(b);
        return r;
    }
    if (q_append(c, data, (size_t)len))
        return -1;
    return len;
}

static long q_ctrl(BIO *b, int cmd, long larg, void *parg)
{
    struct ing_tls_conn *c = BIO_get_data(b);

    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1; /* the loop sends the queue */
    case BIO_CTRL_WPENDING:
        return (long)(c->q_tail - c->q_head);
    case BIO_CTRL_PENDING:
        return 0;
    case BIO_CTRL_GET_CLOSE:
        return BIO_NOCLOSE;
    case BIO_CTRL_SET_CLOSE:
    case BIO_CTRL_DUP:
        return 1;
    case ING_BIO_CTRL_SET_KTLS:
        return q_set_ktls(c, larg, parg);
    case BIO_CTRL_GET_KTLS_SEND:
        return c->ktls_tx;
    case BIO_CTRL_GET_KTLS_RECV:
        return 0;
    case ING_BIO_CTRL_SET_KTLS_TX_SEND_CTRL_MSG:
    case ING_BIO_CTRL_CLEAR_KTLS_TX_CTRL_MSG:
        return c->ktls_tx ? BIO_ctrl(c->sock, cmd, larg, parg) : 0;
    default:
        return 0;
    }
}

static int q_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *q_meth;
static pthread_once_t q_once = PTHREAD_ONCE_INIT;

static void q_meth_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "favo tls queue");

    if (m && BIO_meth_set_write(m, q_write) && BIO_meth_set_ctrl(m, q_ctrl) &&
        BIO_meth_set_create(m, q_create)) {
        q_meth = m;
        return;
    }
    BIO_meth_free(m);
}

/* ------------------------------------------------------- connections */

int ing_tls_conn_new(ing_tls_ctx_t *t, int fd, ing_tls_conn_t **out)
{
    struct ing_tls_conn *c;

    *out = NULL;
    pthread_once(&q_once, q_meth_init);
    if (!q_meth)
        return -ENOMEM;
    c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->fd = fd;
    c->alert = -1;
    c->st = ING_TLS_HANDSHAKE;
    ERR_clear_error();
    c->ssl = SSL_new(t->ssl);
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(q_meth);
    if (!c->ssl || !c->rbio || !c->wbio) {
        BIO_free(c->rbio);
        BIO_free(c->wbio);
        SSL_free(c->ssl);
        free(c);
        ERR_clear_error();
        return -ENOMEM;
    }
    BIO_set_mem_eof_return(c->rbio, -1); /* empty: "retry", until feed_eof */
    BIO_set_data(c->wbio, c);
    if (t->ktls && fd >= 0) {
        /* OpenSSL's socket BIO sets the tls ULP on fd when created; it
         * never reads or writes fd before kTLS TX is on (tls inv 2). */
        c->sock = BIO_new_socket(fd, BIO_NOCLOSE);
    }
    c->ktls_note = c->sock ? "off: not asked by OpenSSL (suite or build)" : "off: not offered";
    if (!c->sock)
        SSL_clear_options(c->ssl, SSL_OP_ENABLE_KTLS);
    SSL_set_bio(c->ssl, c->rbio, c->wbio); /* ssl owns both now */
    SSL_set_app_data(c->ssl, c);
    SSL_set_accept_state(c->ssl);
    *out = c;
    return 0;
}

void ing_tls_conn_free(ing_tls_conn_t *c)
{
    if (!c)
        return;
    SSL_free(c->ssl);
    BIO_free(c->sock);
    scrub_free(c->q, c->q_cap);
    scrub_free(c->q_old, c->q_old_cap);
    free(c);
    ERR_clear_error();
}

size_t ing_tls_conn_feed(ing_tls_conn_t *c, const void *cipher, size_t n)
{
    size_t have = BIO_ctrl_pending(c->rbio), take;

    if (have >= ING_TLS_FEED_MAX || c->eof)
        return 0;
    take = FAVO_MIN(n, ING_TLS_FEED_MAX - have);
    if (take && BIO_write(c->rbio, cipher, (int)take) != (int)take) {
        ERR_clear_error();
        return 0;
    }
    return take;
}

void ing_tls_conn_feed_eof(ing_tls_conn_t *c)
{
    c->eof = true;
    BIO_set_mem_eof_return(c->rbio, 0);
}

static int conn_fail(struct ing_tls_conn *c, int rc, const char *what)
{
    if (c->st != ING_TLS_FAILED)
        snprintf(c->err, sizeof(c->err), "%s", what);
    c->st = ING_TLS_FAILED;
    ERR_clear_error();
    return rc;
}

/* Map an SSL_* call's failure. */
static int conn_ssl_err(struct ing_tls_conn *c, int r)
{
    int e = SSL_get_error(c->ssl, r);

    switch (e) {
    case SSL_ERROR_WANT_READ:
        if (c->eof)
            return conn_fail(c, -ECONNRESET, "the client closed TCP in the middle of a record");
        return -EAGAIN;
    case SSL_ERROR_WANT_WRITE:
        return -EAGAIN; /* a control record on the kTLS socket: full buffer */
    case SSL_ERROR_ZERO_RETURN:
        c->st = ING_TLS_CLOSED;
        return 0;
    case SSL_ERROR_SYSCALL:
        if (c->eof)
            return conn_fail(c, -ECONNRESET, "the client closed TCP without close_notify");
        return conn_fail(c, -EPROTO, "transport error");
    default:
        if (c->eof && ERR_GET_REASON(ERR_peek_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
            return conn_fail(c, -ECONNRESET, "the client closed TCP without close_notify");
        return conn_fail(c, -EPROTO, ossl_reason());
    }
}

static void conn_note_open(struct ing_tls_conn *c)
{
    if (c->st == ING_TLS_HANDSHAKE && SSL_is_init_finished(c->ssl))
        c->st = ING_TLS_OPEN;
}

int ing_tls_conn_handshake(ing_tls_conn_t *c)
{
    int r;

    if (c->st == ING_TLS_FAILED)
        return -EPROTO;
    if (c->st != ING_TLS_HANDSHAKE)
        return 0;
    ERR_clear_error();
    r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        conn_note_open(c);
        return 0;
    }
    r = conn_ssl_err(c, r);
    return r == 0 ? -EPROTO : r;
}

ssize_t ing_tls_conn_read(ing_tls_conn_t *c, void *dst, size_t cap)
{
    size_t n = 0;
    int r;

    if (!cap)
        return -ENOBUFS;
    if (c->st == ING_TLS_FAILED)
        return -EPROTO;
    if (c->st == ING_TLS_CLOSED)
        return 0;
    ERR_clear_error();
    r = SSL_read_ex(c->ssl, dst, cap, &n);
    conn_note_open(c);
    if (c->rekey_refused) {
        if (r == 1)
            explicit_bzero(dst, n);
        return conn_fail(c, -EPROTO,
                         "the client asked for a KeyUpdate, which kernel TLS transmit cannot "
                         "follow in OpenSSL 3.0");
    }
    if (r == 1)
        return (ssize_t)n;
    return conn_ssl_err(c, r);
}

ssize_t ing_tls_conn_write(ing_tls_conn_t *c, const void *src, size_t n)
{
    size_t w = 0;

    if (c->st == ING_TLS_HANDSHAKE)
        return -EAGAIN;
    /* A client's close_notify closes its direction only (TLS 1.3): the
     * answer to what it sent before still goes out. */
    if (c->st == ING_TLS_FAILED || (SSL_get_shutdown(c->ssl) & SSL_SENT_SHUTDOWN))
        return -EPIPE;
    if (!n)
        return 0;
    if (c->ktls_tx)
        return q_append(c, src, n) ? -ENOMEM : (ssize_t)n;
    ERR_clear_error();
    if (SSL_write_ex(c->ssl, src, n, &w) != 1) {
        int r = conn_ssl_err(c, 0);
        return r == 0 || r == -EAGAIN ? -EPIPE : r;
    }
    FAVO_ASSERT(w == n); /* the queue takes everything */
    return (ssize_t)w;
}

int ing_tls_conn_shutdown(ing_tls_conn_t *c)
{
    int r;

    if (c->st == ING_TLS_FAILED)
        return -EPROTO;
    if (c->st == ING_TLS_HANDSHAKE) {
        c->st = ING_TLS_CLOSED; /* nothing to say to a half-shaken peer */
        return 0;
    }
    if (SSL_get_shutdown(c->ssl) & SSL_SENT_SHUTDOWN)
        return 0;
    if (c->ktls_tx && (c->handed || c->q_tail > c->q_head))
        return -EAGAIN; /* the alert must follow every queued byte */
    ERR_clear_error();
    r = SSL_shutdown(c->ssl);
    if (r < 0) {
        r = conn_ssl_err(c, r);
        if (r == -EAGAIN)
            return r;
        return c->st == ING_TLS_FAILED ? -EPROTO : 0;
    }
    c->st = ING_TLS_CLOSED;
    return 0;
}

enum ing_tls_state ing_tls_conn_state(const ing_tls_conn_t *c)
{
    return c->st;
}

bool ing_tls_conn_ktls_tx(const ing_tls_conn_t *c)
{
    return c->ktls_tx;
}

int ing_tls_conn_alert_sent(const ing_tls_conn_t *c)
{
    return c->alert;
}

const char *ing_tls_conn_error(const ing_tls_conn_t *c)
{
    return c->err;
}

int ing_tls_conn_info(const ing_tls_conn_t *c, struct ing_tls_info *info)
{
    const unsigned char *alpn = NULL;
    unsigned alen = 0;

    memset(info, 0, sizeof(*info));
    if (!SSL_is_init_finished(c->ssl))
        return -EAGAIN;
    info->version = SSL_get_version(c->ssl);
    info->cipher = SSL_get_cipher_name(c->ssl);
    SSL_get0_alpn_selected(c->ssl, &alpn, &alen);
    if (alen >= sizeof(info->alpn))
        alen = sizeof(info->alpn) - 1;
    if (alen)
        memcpy(info->alpn, alpn, alen);
    info->ktls_tx = c->ktls_tx;
    info->ktls_note = c->ktls_note;
    return 0;
}
