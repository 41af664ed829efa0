/*
 * fuzz-tls-server.c - random ciphertext into the server side of ing_tls
 * (ingress/ing_tls.h): never crashes, never returns a value outside the
 * documented set, and a failed session stays failed.
 *
 * Input: byte 0 picks the mode (byte 0 % 3), byte 1 the feed chunk size
 * (record boundaries split anywhere), the rest is:
 *   0: what the "client" sends, from the first byte on (ClientHello
 *      parsing, record framing, alerts before any key exists);
 *   1: after a real TLS 1.3 handshake with an in-process OpenSSL client,
 *      the client's next records (record layer under application keys:
 *      bad MACs, bad lengths, forged content types);
 *   2: after a handshake, a program for the write queue (tls inv 1):
 *      each byte < 128 writes a response of a length it picks, a byte
 *      >= 192 hands the pending region out and keeps it out (writes may
 *      grow the queue meanwhile), 128..191 says part of it was sent;
 *      at the end everything is sent and the client must decrypt exactly
 *      the bytes written, in order (metamorphic check).
 * The certificate and key are made once, in memory, written to a
 * temporary directory for ing_tls_ctx_new.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "favo_base.h"
#include "ing_tls.h"

static ing_tls_ctx_t *ctx;
static SSL_CTX *cli_ctx;

static void make_ctx(void)
{
    char dir[] = "/tmp/fuzz-tls-XXXXXX", cert[64], key[64], err[256];
    EVP_PKEY *pk = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    FILE *f;

    FAVO_ASSERT(pk && x && mkdtemp(dir));
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, pk);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)"fuzz", -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    FAVO_ASSERT(X509_sign(x, pk, EVP_sha256()) > 0);
    snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);
    f = fopen(cert, "w");
    FAVO_ASSERT(f && PEM_write_X509(f, x));
    fclose(f);
    f = fopen(key, "w");
    FAVO_ASSERT(f && PEM_write_PrivateKey(f, pk, NULL, NULL, 0, NULL, NULL));
    fclose(f);
    FAVO_ASSERT(ing_tls_ctx_new(&ctx, cert, key, ING_TLS_NO_KTLS, err, sizeof(err)) == 0);
    unlink(cert);
    unlink(key);
    rmdir(dir);
    X509_free(x);
    EVP_PKEY_free(pk);
    cli_ctx = SSL_CTX_new(TLS_client_method());
    FAVO_ASSERT(cli_ctx);
    SSL_CTX_set_verify(cli_ctx, SSL_VERIFY_NONE, NULL);
}

static bool rc_ok(ssize_t r)
{
    return r > 0 || r == 0 || r == -EAGAIN || r == -EPROTO || r == -ECONNRESET;
}

/* Read everything decryptable; returns the last result. */
static ssize_t drain(ing_tls_conn_t *s)
{
    static uint8_t cell[1 << 16];
    ssize_t r;
    enum ing_tls_state before = ing_tls_conn_state(s);

    while ((r = ing_tls_conn_read(s, cell, sizeof(cell))) > 0)
        ;
    FAVO_ASSERT(rc_ok(r));
    if (before == ING_TLS_FAILED)
        FAVO_ASSERT(r == -EPROTO); /* failed stays failed */
    return r;
}

/* Send what the server queued to nowhere (or to the client). */
static void out(ing_tls_conn_t *s, BIO *to)
{
    const uint8_t *p;
    size_t n;

    while (ing_tls_conn_pending(s, &p, &n)) {
        FAVO_ASSERT(p && n);
        if (to)
            BIO_write(to, p, (int)n);
        ing_tls_conn_sent(s, n);
    }
}

/* Mode 2: the queue program. */
static void queue_program(ing_tls_conn_t *s, SSL *c, BIO *c_rb, const uint8_t *ops, size_t n)
{
    static uint8_t src[1 << 14], got[1 << 20];
    static bool init;
    size_t wrote = 0, read = 0, k;
    const uint8_t *p, *hp = NULL;
    size_t m, hn = 0;
    bool out = false;

    for (size_t i = 0; !init && i < sizeof(src); i++)
        src[i] = (uint8_t)(i * 131 + (i >> 8));
    init = true;
    for (size_t i = 0; i < n && wrote < sizeof(got) - sizeof(src); i++) {
        if (ops[i] < 128) {
            size_t len = ((size_t)ops[i] * 977u) % (sizeof(src) - 4096) + 1;
            FAVO_ASSERT(ing_tls_conn_write(s, src + wrote % 4096, len) == (ssize_t)len);
            wrote += len;
        } else if (ops[i] >= 192) {
            /* hand the region out and keep it out: later writes may grow
             * the queue meanwhile, the region must stay valid (ASan) */
            if (!out)
                out = ing_tls_conn_pending(s, &hp, &hn) > 0;
        } else {
            if (!out)
                out = ing_tls_conn_pending(s, &hp, &hn) > 0;
            if (out) {
                size_t part = hn * (size_t)(ops[i] - 128) / 63;
                FAVO_ASSERT(ing_tls_conn_pending(s, &p, &m) == hn && p == hp);
                BIO_write(c_rb, hp, (int)part);
                ing_tls_conn_sent(s, part);
                out = false;
            }
        }
    }
    if (out) {
        BIO_write(c_rb, hp, (int)hn);
        ing_tls_conn_sent(s, hn);
    }
    while (ing_tls_conn_pending(s, &p, &m)) {
        BIO_write(c_rb, p, (int)m);
        ing_tls_conn_sent(s, m);
    }
    while (read < wrote && SSL_read_ex(c, got + read, sizeof(got) - read, &k) == 1)
        read += k;
    FAVO_ASSERT(read == wrote); /* every byte, once */
    /* the same bytes in the same order: rebuild the expected stream */
    for (size_t off = 0, i = 0; i < n && off < wrote; i++) {
        if (ops[i] >= 128)
            continue;
        size_t len = ((size_t)ops[i] * 977u) % (sizeof(src) - 4096) + 1;
        FAVO_ASSERT(!memcmp(got + off, src + off % 4096, len));
        off += len;
    }
}

static bool handshake(ing_tls_conn_t *s, SSL *c, BIO *c_rb, BIO *c_wb)
{
    uint8_t buf[8192];

    for (int i = 0; i < 20; i++) {
        int rc = SSL_do_handshake(c);
        int r;

        while ((r = BIO_read(c_wb, buf, sizeof(buf))) > 0)
            FAVO_ASSERT(ing_tls_conn_feed(s, buf, (size_t)r) == (size_t)r);
        int hs = ing_tls_conn_handshake(s);
        out(s, c_rb);
        if (rc == 1 && hs == 0)
            return true;
        if (hs == -EPROTO)
            return false;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ing_tls_conn_t *s = NULL;
    SSL *c = NULL;
    BIO *c_rb = NULL, *c_wb = NULL;
    size_t chunk, off;
    ssize_t r = -EAGAIN;

    if (size < 2)
        return 0;
    if (!ctx)
        make_ctx();
    FAVO_ASSERT(ing_tls_conn_new(ctx, -1, &s) == 0);
    if (data[0] % 3) {
        c = SSL_new(cli_ctx);
        c_rb = BIO_new(BIO_s_mem());
        c_wb = BIO_new(BIO_s_mem());
        BIO_set_mem_eof_return(c_rb, -1);
        SSL_set_bio(c, c_rb, c_wb);
        SSL_set_connect_state(c);
        FAVO_ASSERT(handshake(s, c, c_rb, c_wb));
        FAVO_ASSERT(ing_tls_conn_state(s) == ING_TLS_OPEN);
    }
    chunk = (size_t)data[1] * 64 + 1;
    if (data[0] % 3 == 2) {
        queue_program(s, c, c_rb, data + 2, size - 2);
        ing_tls_conn_free(s);
        SSL_free(c);
        ERR_clear_error();
        return 0;
    }
    data += 2;
    size -= 2;
    for (off = 0; off < size;) {
        size_t k = ing_tls_conn_feed(s, data + off, FAVO_MIN(chunk, size - off));
        off += k;
        r = drain(s);
        out(s, NULL);
        if (r != -EAGAIN)
            break;
        FAVO_ASSERT(k > 0); /* after a drain that wants more, the feed has room */
    }
    if (ing_tls_conn_state(s) == ING_TLS_OPEN) {
        FAVO_ASSERT(ing_tls_conn_write(s, "HTTP/1.1 200 OK\r\n\r\n", 19) == 19);
        out(s, NULL);
        ing_tls_conn_feed_eof(s);
        r = drain(s);
        FAVO_ASSERT(r == -ECONNRESET || r == 0 || r == -EPROTO);
    }
    (void)ing_tls_conn_shutdown(s);
    out(s, NULL);
    ing_tls_conn_free(s);
    SSL_free(c);
    ERR_clear_error();
    return 0;
}
