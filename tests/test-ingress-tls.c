/*
 * test-ingress-tls.c - ing_tls (ingress/ing_tls.h): certificate and key
 * errors; the connection API against an in-process OpenSSL client over
 * memory (fragmented handshakes, large bodies into one contiguous buffer,
 * close_notify, TLS 1.2-only and h2-only clients refused with the right
 * alert, garbage, truncation, queue hand-out rules); and a tiny
 * non-blocking server loop using the module over real TCP sockets,
 * answered by curl and openssl s_client (TLS 1.3, TLS 1.2 refused, ALPN,
 * a 6 MiB request body, kernel TLS transmit where the kernel has it).
 *
 * Certificates are made here with the openssl CLI (a CA and a leaf for
 * 127.0.0.1 signed by it). curl and openssl are Debian packages; the
 * socket cases skip (the rest still runs) when they are missing.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include "favo_base.h"
#include "ing_tls.h"
#include "t_util.h"

static char *dir;                    /* temporary directory with the PEM files */
static char p_ca[512], p_chain[512], p_key[512], p_other[512], p_enc[512], p_der[512],
    p_junk[512], p_leaf[512], p_big[512];

#define BIG_BODY (6u << 20)
#define CELL_CAP (16u << 20)
static uint8_t *expect_body;         /* the seeded body every POST carries */

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

static int sh(const char *cmd)
{
    char *argv[] = { "sh", "-c", (char *)cmd, NULL };
    char *out = NULL, *err = NULL;
    int st = t_run(argv, &out, &err);

    if (st != 0)
        fprintf(stderr, "command failed (%d): %s\n%s%s", st, cmd, out ? out : "",
                err ? err : "");
    free(out);
    free(err);
    return st;
}

static bool have(const char *prog)
{
    char cmd[256];

    snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", prog);
    return system(cmd) == 0;
}

static void make_certs(void)
{
    char cmd[4096];

#define P(var, name) snprintf(var, sizeof(var), "%s/%s", dir, name)
    P(p_ca, "ca.pem");
    P(p_chain, "chain.pem");
    P(p_key, "leaf.key");
    P(p_leaf, "leaf.pem");
    P(p_other, "other.key");
    P(p_enc, "enc.key");
    P(p_der, "leaf.der");
    P(p_junk, "junk.txt");
    P(p_big, "big.bin");
#undef P
    snprintf(cmd, sizeof(cmd),
             "set -e; cd '%s';"
             "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key"
             " -out ca.pem -days 2 -subj /CN=favo-test-ca 2>/dev/null;"
             "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout int.key"
             " -out int.csr -subj /CN=favo-test-intermediate 2>/dev/null;"
             "printf 'basicConstraints=critical,CA:TRUE,pathlen:0\\n"
             "keyUsage=critical,keyCertSign,cRLSign\\n' > int.cnf;"
             "openssl x509 -req -in int.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
             " -extfile int.cnf -out int.pem 2>/dev/null;"
             "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout leaf.key"
             " -out leaf.csr -subj /CN=127.0.0.1 2>/dev/null;"
             "printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\n"
             "extendedKeyUsage=serverAuth\\n' > ext.cnf;"
             "openssl x509 -req -in leaf.csr -CA int.pem -CAkey int.key -CAcreateserial -days 2"
             " -extfile ext.cnf -out leaf.pem 2>/dev/null;"
             "cat leaf.pem int.pem > chain.pem;"
             "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other.key;"
             "openssl pkey -in leaf.key -aes256 -passout pass:secret -out enc.key;"
             "openssl x509 -in leaf.pem -outform DER -out leaf.der;"
             "printf 'hello, not a certificate\\n' > junk.txt",
             dir);
    if (sh(cmd))
        t_skip("the openssl CLI could not make test certificates");
}

/* ------------------------------------------------ certificate errors */

static void test_ctx_errors(void)
{
    static const struct {
        const char *cert, *key;
        int rc;
        const char *want1, *want2;
    } cases[] = {
        { "/nonexistent/cert.pem", NULL, -ENOENT, "--tls-cert /nonexistent/cert.pem",
          "No such file" },
        { NULL, "/nonexistent/key.pem", -ENOENT, "--tls-key /nonexistent/key.pem", "No such file" },
        { NULL, NULL, -EINVAL, "--tls-cert", "not a PEM file" },            /* junk */
        { NULL, NULL, -EINVAL, "--tls-cert", "not a PEM file" },            /* DER */
        { NULL, NULL, -EINVAL, "--tls-key", "does not match the certificate" },
        { NULL, NULL, -EINVAL, "--tls-key", "encrypted" },
        { NULL, NULL, -EINVAL, "--tls-key", "swapped with --tls-cert" },    /* key = cert */
        { NULL, NULL, -EINVAL, "--tls-cert", "swapped with --tls-key" },    /* cert = key */
        { NULL, "", -EINVAL, "go together", "--tls-key" },
    };
    const char *certs[] = { "/nonexistent/cert.pem", p_chain, p_junk, p_der, p_chain,
                            p_chain, p_chain, p_key, p_chain };
    const char *keys[] = { p_key, "/nonexistent/key.pem", p_key, p_key, p_other,
                           p_enc, p_leaf, p_key, "" };

    for (size_t i = 0; i < FAVO_ARRAY_SIZE(cases); i++) {
        ing_tls_ctx_t *ctx = NULL;
        char err[512] = "";
        int rc = ing_tls_ctx_new(&ctx, certs[i], keys[i], ING_TLS_NO_KTLS, err, sizeof(err));

        T_CHECK(rc == cases[i].rc, "case %zu: rc %d, want %d (%s)", i, rc, cases[i].rc, err);
        T_CHECK(!ctx, "case %zu: a context on error", i);
        T_CHECK(strstr(err, cases[i].want1) && strstr(err, cases[i].want2),
                "case %zu: message '%s' lacks '%s' / '%s'", i, err, cases[i].want1,
                cases[i].want2);
        ing_tls_ctx_free(ctx);
    }
    {
        ing_tls_ctx_t *ctx = NULL;
        char err[512] = "";
        int rc = ing_tls_ctx_new(&ctx, p_chain, p_key, 0, err, sizeof(err));
        T_CHECK(rc == 0 && ctx, "good files refused: %d %s", rc, err);
        ing_tls_ctx_free(ctx);
    }
}

/* ------------------------------------------------ in-process client */

struct cli {
    SSL_CTX *ctx;
    SSL *ssl;
    BIO *rb, *wb;
    int alert_rcvd;
};

static void cli_info(const SSL *s, int where, int ret)
{
    struct cli *c = SSL_get_app_data(s);

    if (where & SSL_CB_READ_ALERT)
        c->alert_rcvd = ret & 0xff;
}

static int tickets_seen;     /* NewSessionTicket messages the clients got */
static int key_updates_seen; /* KeyUpdate messages the clients got */

static void cli_msg(int write_p, int version, int content_type, const void *buf, size_t len,
                    SSL *s, void *arg)
{
    if (!write_p && content_type == SSL3_RT_HANDSHAKE && len >= 1 &&
        ((const uint8_t *)buf)[0] == SSL3_MT_KEY_UPDATE)
        key_updates_seen++;
}

static int cli_new_session(SSL *s, SSL_SESSION *sess)
{
    tickets_seen++;
    return 0; /* not kept */
}

static void cli_init(struct cli *c, int max_ver, const char *alpn, size_t alpn_len)
{
    memset(c, 0, sizeof(*c));
    c->alert_rcvd = -1;
    c->ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(c->ctx, max_ver);
    SSL_CTX_load_verify_locations(c->ctx, p_ca, NULL);
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_session_cache_mode(c->ctx, SSL_SESS_CACHE_CLIENT);
    SSL_CTX_sess_set_new_cb(c->ctx, cli_new_session);
    c->ssl = SSL_new(c->ctx);
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), "127.0.0.1");
    if (alpn)
        SSL_set_alpn_protos(c->ssl, (const unsigned char *)alpn, (unsigned)alpn_len);
    c->rb = BIO_new(BIO_s_mem());
    c->wb = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(c->rb, -1);
    SSL_set_bio(c->ssl, c->rb, c->wb);
    SSL_set_app_data(c->ssl, c);
    SSL_set_info_callback(c->ssl, cli_info);
    SSL_set_msg_callback(c->ssl, cli_msg);
    SSL_set_connect_state(c->ssl);
}

static void cli_free(struct cli *c)
{
    SSL_free(c->ssl);
    SSL_CTX_free(c->ctx);
    ERR_clear_error();
}

/* Move at most `chunk` bytes client -> server (as many as the server takes:
 * it may push back), then everything server -> client in chunks of
 * `chunk`. Returns bytes moved. */
static size_t pump(struct cli *c, ing_tls_conn_t *s, size_t chunk)
{
    uint8_t sink[4096];
    size_t moved = 0;
    const uint8_t *p;
    size_t n;
    char *data;
    long have = BIO_get_mem_data(c->wb, &data);

    while (have > 0 && moved < chunk) {
        size_t k = ing_tls_conn_feed(s, data, FAVO_MIN((size_t)have, chunk - moved));
        if (!k)
            break; /* backpressure: the server reads first */
        moved += k;
        while (k) {
            int r = BIO_read(c->wb, sink, (int)FAVO_MIN(k, sizeof(sink)));
            k -= (size_t)r;
        }
        have = BIO_get_mem_data(c->wb, &data);
    }
    while (ing_tls_conn_pending(s, &p, &n)) {
        size_t k = FAVO_MIN(n, chunk);
        BIO_write(c->rb, p, (int)k);
        ing_tls_conn_sent(s, k);
        moved += k;
    }
    return moved;
}

static ing_tls_ctx_t *mem_ctx;

/* Handshake both sides; returns the server's last handshake result. */
static int handshake(struct cli *c, ing_tls_conn_t *s, size_t chunk)
{
    int rs = -EAGAIN;

    for (int i = 0; i < 100000; i++) {
        int rc = SSL_do_handshake(c->ssl);
        int ce = rc == 1 ? 0 : SSL_get_error(c->ssl, rc); /* before pump touches the BIOs */
        pump(c, s, chunk);
        rs = ing_tls_conn_handshake(s);
        pump(c, s, chunk);
        if (rs == -EPROTO)
            break;
        if (rc == 1 && rs == 0)
            break;
        if (rc != 1 && ce != SSL_ERROR_WANT_READ) {
            if (getenv("T_VERBOSE")) {
                fprintf(stderr, "client handshake: it %d state %s srv %d alert %d err %d %s (verify %ld)\n", i, SSL_state_string_long(c->ssl), rs, c->alert_rcvd, ce,
                        ERR_reason_error_string(ERR_peek_error()),
                        SSL_get_verify_result(c->ssl));
            }
            break;
        }
    }
    /* let the client see an alert the server queued */
    (void)SSL_do_handshake(c->ssl);
    return rs;
}

static void test_mem_basic(size_t chunk)
{
    struct cli c;
    ing_tls_conn_t *s = NULL;
    struct ing_tls_info info;
    static const char alpn[] = "\x02h2\x08http/1.1";
    uint8_t *cell = malloc(4u << 20), *resp = malloc(1u << 20), *got = malloc(1u << 20);
    size_t len = 0, body = chunk == 1 ? 3000 : (3u << 20) + 17;
    ssize_t r;

    cli_init(&c, 0, alpn, sizeof(alpn) - 1);
    T_CHECK(ing_tls_conn_new(mem_ctx, -1, &s) == 0, "conn_new");
    T_CHECK(ing_tls_conn_write(s, "x", 1) == -EAGAIN, "write before the handshake");
    T_CHECK(handshake(&c, s, chunk) == 0, "handshake (chunk %zu): %s", chunk,
            ing_tls_conn_error(s));
    T_CHECK(ing_tls_conn_state(s) == ING_TLS_OPEN, "state after handshake");
    T_CHECK(ing_tls_conn_info(s, &info) == 0 && !strcmp(info.version, "TLSv1.3") &&
                !strcmp(info.alpn, "http/1.1") && !info.ktls_tx,
            "info: %s %s alpn '%s'", info.version, info.cipher, info.alpn);
    T_CHECK(SSL_version(c.ssl) == TLS1_3_VERSION, "client did not get TLS 1.3");

    /* a large request into one contiguous buffer, with reads of varying caps */
    size_t sent = 0;
    uint64_t seed = 7;
    while (len < body) {
        if (sent < body) {
            size_t w = 0, k = FAVO_MIN(body - sent, (size_t)100000);
            T_CHECK(SSL_write_ex(c.ssl, expect_body + sent, k, &w) == 1 && w == k, "client write");
            sent += k;
        }
        pump(&c, s, chunk);
        for (;;) {
            size_t cap = FAVO_MIN((size_t)(t_rand(&seed) % 40000) + 1, (4u << 20) - len);
            r = ing_tls_conn_read(s, cell + len, cap);
            if (r <= 0)
                break;
            len += (size_t)r;
        }
        if (r != -EAGAIN) {
            T_CHECK(0, "read returned %zd: %s", r, ing_tls_conn_error(s));
            break;
        }
    }
    T_CHECK(len == body && !memcmp(cell, expect_body, body), "body: %zu of %zu bytes, %s", len,
            body, len == body ? "content differs" : "short");

    /* a 1 MiB response, in several writes */
    for (size_t i = 0; i < (1u << 20); i++)
        resp[i] = (uint8_t)(i * 31 + 7);
    for (size_t off = 0; off < (1u << 20); off += 300000) {
        size_t k = FAVO_MIN((size_t)300000, (1u << 20) - off);
        T_CHECK(ing_tls_conn_write(s, resp + off, k) == (ssize_t)k, "server write");
    }
    size_t glen = 0;
    for (int i = 0; i < 1000 && glen < (1u << 20); i++) {
        size_t k = 0;
        pump(&c, s, chunk == 1 ? 4096 : chunk);
        while (SSL_read_ex(c.ssl, got + glen, (1u << 20) - glen, &k) == 1)
            glen += k;
    }
    T_CHECK(glen == (1u << 20) && !memcmp(got, resp, glen), "response: %zu bytes", glen);
    /* session tickets are off (ing_tls.h): none came with the response */
    T_CHECK(tickets_seen == 0, "the client got %d session tickets", tickets_seen);

    /* the client asks for a KeyUpdate (and ours): the userspace path
     * answers it and carries on under the new keys */
    {
        char buf[8] = "";
        size_t k = 0;
        int before = key_updates_seen;

        T_CHECK(SSL_key_update(c.ssl, SSL_KEY_UPDATE_REQUESTED) == 1, "client key update");
        T_CHECK(SSL_write_ex(c.ssl, "ping", 4, &k) == 1, "client write after key update");
        r = -EAGAIN;
        for (int i = 0; i < 1000 && r == -EAGAIN; i++) {
            pump(&c, s, chunk);
            r = ing_tls_conn_read(s, buf, sizeof(buf));
        }
        T_CHECK(r == 4 && !memcmp(buf, "ping", 4), "read after key update: %zd (%s)", r,
                ing_tls_conn_error(s));
        T_CHECK(ing_tls_conn_write(s, "pong", 4) == 4, "write after key update");
        k = 0;
        for (int i = 0; i < 100 && !k; i++) {
            pump(&c, s, chunk == 1 ? 4096 : chunk);
            if (SSL_read_ex(c.ssl, buf, sizeof(buf), &k) != 1)
                k = 0;
        }
        T_CHECK(k == 4 && !memcmp(buf, "pong", 4), "client read after key update: %zu", k);
        T_CHECK(key_updates_seen == before + 1, "the server sent %d KeyUpdates, want 1",
                key_updates_seen - before);
    }

    /* client close_notify -> read 0, CLOSED; our close_notify goes out */
    SSL_shutdown(c.ssl);
    r = -EAGAIN;
    for (int i = 0; i < 1000 && r == -EAGAIN; i++) {
        pump(&c, s, chunk);
        r = ing_tls_conn_read(s, cell, 100);
    }
    T_CHECK(r == 0 && ing_tls_conn_state(s) == ING_TLS_CLOSED, "close_notify: read %zd", r);
    /* a half-close: the answer still goes out, before our close_notify */
    T_CHECK(ing_tls_conn_write(s, "bye", 3) == 3, "write after the client's close_notify");
    {
        char bye[8] = "";
        size_t k = 0;
        for (int i = 0; i < 100 && !k; i++) {
            pump(&c, s, chunk == 1 ? 4096 : chunk);
            if (SSL_read_ex(c.ssl, bye, sizeof(bye), &k) != 1)
                k = 0;
        }
        T_CHECK(k == 3 && !memcmp(bye, "bye", 3), "half-close answer: %zu bytes", k);
    }
    T_CHECK(ing_tls_conn_shutdown(s) == 0, "shutdown");
    pump(&c, s, chunk);
    T_CHECK(SSL_shutdown(c.ssl) == 1, "client did not get our close_notify");
    T_CHECK(ing_tls_conn_write(s, "x", 1) == -EPIPE, "write after close");

    ing_tls_conn_free(s);
    cli_free(&c);
    free(cell);
    free(resp);
    free(got);
}

/* Refusals: TLS 1.2 only (alert 70), ALPN without http/1.1 (alert 120);
 * no ALPN at all is served. */
static void test_mem_refusals(void)
{
    static const char h2[] = "\x02h2";
    struct {
        int max_ver;
        const char *alpn;
        size_t alpn_len;
        int want_rc, want_alert;
    } cases[] = {
        { TLS1_2_VERSION, NULL, 0, -EPROTO, 70 },
        { 0, h2, sizeof(h2) - 1, -EPROTO, 120 },
        { 0, NULL, 0, 0, -1 },
    };

    for (size_t i = 0; i < FAVO_ARRAY_SIZE(cases); i++) {
        struct cli c;
        ing_tls_conn_t *s = NULL;
        struct ing_tls_info info;
        int rc;

        cli_init(&c, cases[i].max_ver, cases[i].alpn, cases[i].alpn_len);
        ing_tls_conn_new(mem_ctx, -1, &s);
        rc = handshake(&c, s, 65536);
        T_CHECK(rc == cases[i].want_rc, "refusal case %zu: rc %d (%s)", i, rc,
                ing_tls_conn_error(s));
        T_CHECK(ing_tls_conn_alert_sent(s) == cases[i].want_alert,
                "refusal case %zu: alert sent %d, want %d", i, ing_tls_conn_alert_sent(s),
                cases[i].want_alert);
        T_CHECK(c.alert_rcvd == cases[i].want_alert, "case %zu: the client got alert %d", i,
                c.alert_rcvd);
        if (rc == 0) {
            ing_tls_conn_info(s, &info);
            T_CHECK(info.alpn[0] == 0, "no ALPN offered, '%s' selected", info.alpn);
        } else {
            T_CHECK(ing_tls_conn_state(s) == ING_TLS_FAILED && ing_tls_conn_error(s)[0],
                    "case %zu: state %d", i, ing_tls_conn_state(s));
            T_CHECK(ing_tls_conn_read(s, (uint8_t[8]){ 0 }, 8) == -EPROTO, "read after fail");
        }
        ing_tls_conn_free(s);
        cli_free(&c);
    }
}

/* Garbage, truncation, backpressure, and the queue's hand-out rules. */
static void test_mem_bad_input(void)
{
    struct cli c;
    ing_tls_conn_t *s = NULL;
    uint8_t rec[5 + 100], buf[256];
    uint64_t seed = 99;

    /* plaintext HTTP at a TLS port */
    ing_tls_conn_new(mem_ctx, -1, &s);
    static const char http[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    T_CHECK(ing_tls_conn_feed(s, http, sizeof(http) - 1) == sizeof(http) - 1, "feed");
    T_CHECK(ing_tls_conn_read(s, buf, sizeof(buf)) == -EPROTO, "plain HTTP accepted");
    T_CHECK(ing_tls_conn_error(s)[0], "no reason for plain HTTP");
    ing_tls_conn_free(s);

    /* a forged application-data record after the handshake: bad_record_mac */
    cli_init(&c, 0, NULL, 0);
    ing_tls_conn_new(mem_ctx, -1, &s);
    T_CHECK(handshake(&c, s, 65536) == 0, "handshake");
    rec[0] = 23, rec[1] = 3, rec[2] = 3, rec[3] = 0, rec[4] = 100;
    for (size_t i = 5; i < sizeof(rec); i++)
        rec[i] = (uint8_t)t_rand(&seed);
    ing_tls_conn_feed(s, rec, sizeof(rec));
    T_CHECK(ing_tls_conn_read(s, buf, sizeof(buf)) == -EPROTO, "forged record accepted");
    T_CHECK(ing_tls_conn_alert_sent(s) == 20, "alert %d, want bad_record_mac (20)",
            ing_tls_conn_alert_sent(s));
    ing_tls_conn_free(s);
    cli_free(&c);

    /* TCP EOF in the middle of a record: -ECONNRESET */
    cli_init(&c, 0, NULL, 0);
    ing_tls_conn_new(mem_ctx, -1, &s);
    T_CHECK(handshake(&c, s, 65536) == 0, "handshake");
    ing_tls_conn_feed(s, rec, 20);
    T_CHECK(ing_tls_conn_read(s, buf, sizeof(buf)) == -EAGAIN, "partial record");
    ing_tls_conn_feed_eof(s);
    T_CHECK(ing_tls_conn_read(s, buf, sizeof(buf)) == -ECONNRESET, "truncation not seen");
    T_CHECK(ing_tls_conn_read(s, buf, 0) == -ENOBUFS, "cap 0");
    ing_tls_conn_free(s);
    cli_free(&c);

    /* backpressure: at most ING_TLS_FEED_MAX buffered */
    {
        uint8_t *big = calloc(1, 100000);
        ing_tls_conn_new(mem_ctx, -1, &s);
        size_t k = ing_tls_conn_feed(s, big, 100000);
        T_CHECK(k == ING_TLS_FEED_MAX, "fed %zu of 100000, want %u", k, ING_TLS_FEED_MAX);
        T_CHECK(ing_tls_conn_feed(s, big, 10) == 0, "fed past the bound");
        ing_tls_conn_free(s);
        free(big);
    }

    /* the queue: a handed region stays put while the queue grows; partial
     * sends hand out the rest; the bytes come out in order */
    {
        uint8_t *payload = malloc(200000), *wire = malloc(400000);
        const uint8_t *p, *p2;
        size_t n, n2, wl = 0;

        cli_init(&c, 0, NULL, 0);
        ing_tls_conn_new(mem_ctx, -1, &s);
        T_CHECK(handshake(&c, s, 65536) == 0, "handshake");
        for (size_t i = 0; i < 200000; i++)
            payload[i] = (uint8_t)(i ^ (i >> 8));
        ing_tls_conn_write(s, payload, 1000);
        ing_tls_conn_pending(s, &p, &n);
        uint8_t first = p[0];
        size_t n_first = n;
        ing_tls_conn_write(s, payload + 1000, 199000); /* grows the queue */
        ing_tls_conn_pending(s, &p2, &n2);
        T_CHECK(p2 == p && n2 == n_first && p[0] == first, "handed region moved");
        memcpy(wire, p, n / 2);
        wl = n / 2;
        ing_tls_conn_sent(s, n / 2);
        while (ing_tls_conn_pending(s, &p, &n)) {
            memcpy(wire + wl, p, n);
            wl += n;
            ing_tls_conn_sent(s, n);
        }
        BIO_write(c.rb, wire, (int)wl);
        size_t got = 0, k;
        uint8_t *out = malloc(200000);
        while (got < 200000 && SSL_read_ex(c.ssl, out + got, 200000 - got, &k) == 1)
            got += k;
        T_CHECK(got == 200000 && !memcmp(out, payload, got), "queued bytes out of order: %zu",
                got);
        ing_tls_conn_free(s);
        cli_free(&c);
        free(out);
        free(payload);
        free(wire);
    }
}

/* ------------------------------------------------ the socket server */

struct result {
    int hs_rc;               /* 0: handshake done; else the failure */
    int alert;
    bool ktls;
    const char *ktls_note;
    char alpn[16];
    size_t body_len;
    bool body_ok;
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct result res[32];
    unsigned nres;
    int lfd, stop_pipe[2];
    uint16_t port;
    ing_tls_ctx_t *ctx;
} srv = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER };

static uint8_t *cell;

/* Send what the module queued; false on a dead socket. */
static bool flush_queue(int fd, ing_tls_conn_t *s)
{
    const uint8_t *p;
    size_t n;

    while (ing_tls_conn_pending(s, &p, &n)) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EAGAIN) {
            ing_tls_conn_sent(s, 0);
            struct pollfd pf = { fd, POLLOUT, 0 };
            if (poll(&pf, 1, 5000) <= 0)
                return false;
            continue;
        }
        if (w <= 0) {
            ing_tls_conn_sent(s, 0);
            return false;
        }
        ing_tls_conn_sent(s, (size_t)w);
    }
    return true;
}

/* Send plaintext straight on a kTLS socket (what egress does). */
static bool send_plain(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EAGAIN) {
            struct pollfd pf = { fd, POLLOUT, 0 };
            if (poll(&pf, 1, 5000) <= 0)
                return false;
            continue;
        }
        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Find the end of the headers and Content-Length; true when the whole
 * request is in the cell. */
static bool request_done(size_t len, size_t *hdr_end, size_t *cl)
{
    uint8_t *e = memmem(cell, len, "\r\n\r\n", 4);

    if (!e)
        return false;
    *hdr_end = (size_t)(e - cell) + 4;
    *cl = 0;
    for (size_t i = 0; i + 15 < *hdr_end; i++)
        if (!strncasecmp((char *)cell + i, "\ncontent-length:", 16)) {
            *cl = strtoull((char *)cell + i + 16, NULL, 10);
            break;
        }
    return len >= *hdr_end + *cl;
}

static void serve_conn(int fd)
{
    struct result res = { .hs_rc = -EAGAIN, .alert = -1 };
    ing_tls_conn_t *s = NULL;
    uint8_t staging[16384];
    size_t len = 0, hdr_end = 0, cl = 0;
    bool answered = false, eof = false;

    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    if (ing_tls_conn_new(srv.ctx, fd, &s)) {
        close(fd);
        return;
    }
    for (;;) {
        if (!flush_queue(fd, s))
            break;
        enum ing_tls_state st = ing_tls_conn_state(s);
        if (st == ING_TLS_FAILED || st == ING_TLS_CLOSED || answered || eof)
            break;
        struct pollfd pf = { fd, POLLIN, 0 };
        if (poll(&pf, 1, 10000) <= 0)
            break;
        ssize_t r = recv(fd, staging, sizeof(staging), 0);
        if (r < 0 && errno == EAGAIN)
            continue;
        if (r <= 0) {
            ing_tls_conn_feed_eof(s);
            eof = true;
        }
        if (r < 0)
            r = 0;
        size_t off = 0;
        ssize_t n;
        do {
            off += ing_tls_conn_feed(s, staging + off, (size_t)r - off);
            while ((n = ing_tls_conn_read(s, cell + len, CELL_CAP - len)) > 0)
                len += (size_t)n;
        } while (n == -EAGAIN && off < (size_t)r);
        if (ing_tls_conn_state(s) != ING_TLS_HANDSHAKE && res.hs_rc == -EAGAIN) {
            struct ing_tls_info info;
            res.hs_rc = ing_tls_conn_info(s, &info) ? -EPROTO : 0;
            if (!res.hs_rc) {
                res.ktls = info.ktls_tx;
                res.ktls_note = info.ktls_note;
                memcpy(res.alpn, info.alpn, sizeof(res.alpn));
            }
        }
        if (!answered && request_done(len, &hdr_end, &cl)) {
            char resp[512], body[128];
            int bl = snprintf(body, sizeof(body), "favo tls ok body=%zu fnv=%016llx\n", cl,
                              (unsigned long long)fnv1a(cell + hdr_end, cl));
            int rl = snprintf(resp, sizeof(resp),
                              "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                              "Content-Length: %d\r\nConnection: close\r\n\r\n%s",
                              bl, body);
            res.body_len = cl;
            res.body_ok = cl <= BIG_BODY && !memcmp(cell + hdr_end, expect_body, cl);
            if (ing_tls_conn_ktls_tx(s)) {
                if (!send_plain(fd, resp, (size_t)rl))
                    break;
            } else {
                ing_tls_conn_write(s, resp, (size_t)rl);
            }
            if (!flush_queue(fd, s))
                break;
            ing_tls_conn_shutdown(s);
            answered = true;
        }
    }
    if (res.hs_rc == -EAGAIN && ing_tls_conn_state(s) == ING_TLS_FAILED)
        res.hs_rc = -EPROTO;
    res.alert = ing_tls_conn_alert_sent(s);
    flush_queue(fd, s);
    ing_tls_conn_free(s);
    explicit_bzero(cell, len);
    close(fd);
    pthread_mutex_lock(&srv.mu);
    if (srv.nres < FAVO_ARRAY_SIZE(srv.res))
        srv.res[srv.nres++] = res;
    pthread_cond_broadcast(&srv.cv);
    pthread_mutex_unlock(&srv.mu);
}

static void *server_main(void *arg)
{
    for (;;) {
        struct pollfd pf[2] = { { srv.lfd, POLLIN, 0 }, { srv.stop_pipe[0], POLLIN, 0 } };
        if (poll(pf, 2, -1) < 0 && errno != EINTR)
            break;
        if (pf[1].revents)
            break;
        if (pf[0].revents & POLLIN) {
            int fd = accept4(srv.lfd, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0)
                serve_conn(fd);
        }
    }
    return NULL;
}

/* Wait for connection result number k (0-based). */
static bool result_wait(unsigned k, struct result *out)
{
    struct timespec ts;
    bool ok;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 10;
    pthread_mutex_lock(&srv.mu);
    while (srv.nres <= k)
        if (pthread_cond_timedwait(&srv.cv, &srv.mu, &ts))
            break;
    ok = srv.nres > k;
    if (ok)
        *out = srv.res[k];
    pthread_mutex_unlock(&srv.mu);
    return ok;
}

static int run_cmd(const char *cmd, char **out)
{
    char *argv[] = { "sh", "-c", (char *)cmd, NULL };
    char *err = NULL;
    int st = t_run(argv, out, &err);

    if (st && err && getenv("T_VERBOSE"))
        fprintf(stderr, "%s\n", err);
    free(err);
    return st;
}

/* ktls_case: 0 userspace path (ING_TLS_NO_KTLS), 1 kTLS TX expected on,
 * 2 kTLS offered on a host without the tls ULP: OpenSSL must ask for it
 * through the queue BIO, and the module must decline and carry on;
 * 3 a context loaded with the leaf alone (no intermediate): curl, which
 * trusts only the root, must fail verification - the chain file counts. */
static void socket_cases(ing_tls_ctx_t *ctx, int ktls_case)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof(a);
    pthread_t th;
    char cmd[2048], *out = NULL;
    struct result res;
    unsigned k = 0;
    int st, one = 1;

    srv.ctx = ctx;
    srv.nres = 0;
    srv.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    setsockopt(srv.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(srv.lfd, (struct sockaddr *)&a, sizeof(a)) || listen(srv.lfd, 16) ||
        getsockname(srv.lfd, (struct sockaddr *)&a, &al) || pipe2(srv.stop_pipe, O_CLOEXEC)) {
        T_CHECK(0, "listen: %s", strerror(errno));
        return;
    }
    srv.port = ntohs(a.sin_port);
    pthread_create(&th, NULL, server_main, NULL);

    /* 1. curl, TLS 1.3, verifying the chain, GET */
    snprintf(cmd, sizeof(cmd),
             "curl -sS --noproxy '*' --max-time 20 --tlsv1.3 --cacert '%s' -w '\\nhttp=%%{http_version}\\n' "
             "https://127.0.0.1:%u/",
             p_ca, srv.port);
    st = run_cmd(cmd, &out);
    if (ktls_case == 3) {
        T_CHECK(st == 60, "curl trusting the root accepted a server without its intermediate: "
                          "status %d", st);
        free(out);
        goto stop;
    }
    T_CHECK(st == 0 && out && strstr(out, "favo tls ok body=0 ") && strstr(out, "http=1.1"),
            "curl GET: status %d, output '%s'", st, out ? out : "");
    free(out);
    out = NULL;
    T_CHECK(result_wait(k, &res) && res.hs_rc == 0 && !strcmp(res.alpn, "http/1.1"),
            "curl GET: server side hs %d alpn '%s'", res.hs_rc, res.alpn);
    if (ktls_case == 1) {
        T_CHECK(res.ktls, "kernel TLS transmit was not switched on with the tls ULP present: %s",
                res.ktls_note ? res.ktls_note : "?");
        fprintf(stderr, "ktls: curl answered over kernel TLS transmit: %s\n",
                res.ktls_note ? res.ktls_note : "?");
        goto stop;
    }
    if (ktls_case == 2) {
        T_CHECK(!res.ktls && res.ktls_note && !strcmp(res.ktls_note, "off: no tls ULP on the socket"),
                "kTLS decline path: '%s' (OpenSSL must ask through the queue BIO)",
                res.ktls_note ? res.ktls_note : "?");
        goto stop;
    }
    T_CHECK(!res.ktls && res.ktls_note && !strcmp(res.ktls_note, "off: not offered"),
            "kTLS with ING_TLS_NO_KTLS: '%s'", res.ktls_note ? res.ktls_note : "?");
    k++;

    /* 2. curl limited to TLS 1.2: refused with protocol_version */
    snprintf(cmd, sizeof(cmd),
             "curl -sS --noproxy '*' --max-time 20 --tlsv1.2 --tls-max 1.2 --cacert '%s' "
             "https://127.0.0.1:%u/ 2>&1",
             p_ca, srv.port);
    st = run_cmd(cmd, &out);
    T_CHECK(st == 35 && out && strstr(out, "protocol version"),
            "curl TLS 1.2: status %d, output '%s'", st, out ? out : "");
    free(out);
    out = NULL;
    T_CHECK(result_wait(k, &res) && res.hs_rc != 0 && res.alert == 70,
            "TLS 1.2 client: hs %d alert %d", res.hs_rc, res.alert);
    k++;

    /* 3. s_client offering only h2: no_application_protocol */
    snprintf(cmd, sizeof(cmd),
             "openssl s_client -connect 127.0.0.1:%u -tls1_3 -alpn h2 -CAfile '%s' "
             "</dev/null 2>&1",
             srv.port, p_ca);
    st = run_cmd(cmd, &out);
    T_CHECK(st != 0 && out && strstr(out, "no application protocol"),
            "s_client h2: status %d, output '%s'", st, out ? out : "");
    free(out);
    out = NULL;
    T_CHECK(result_wait(k, &res) && res.hs_rc != 0 && res.alert == 120,
            "h2-only client: hs %d alert %d", res.hs_rc, res.alert);
    k++;

    /* 4. s_client without ALPN, a request on stdin: served */
    snprintf(cmd, sizeof(cmd),
             "printf 'GET / HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' | "
             "openssl s_client -quiet -verify_return_error -connect 127.0.0.1:%u -tls1_3 "
             "-CAfile '%s' 2>/dev/null",
             srv.port, p_ca);
    st = run_cmd(cmd, &out);
    T_CHECK(out && strstr(out, "HTTP/1.1 200 OK") && strstr(out, "favo tls ok body=0 "),
            "s_client GET: status %d, output '%s'", st, out ? out : "");
    free(out);
    out = NULL;
    T_CHECK(result_wait(k, &res) && res.hs_rc == 0 && res.alpn[0] == 0,
            "s_client GET: server hs %d alpn '%s'", res.hs_rc, res.alpn);
    k++;

    /* 5. a 6 MiB body, decrypted into one contiguous buffer */
    snprintf(cmd, sizeof(cmd),
             "curl -sS --noproxy '*' --max-time 60 --tlsv1.3 --cacert '%s' -H 'Expect:' "
             "-H 'Content-Type: application/octet-stream' --data-binary @'%s' "
             "https://127.0.0.1:%u/",
             p_ca, p_big, srv.port);
    st = run_cmd(cmd, &out);
    {
        char want[128];
        snprintf(want, sizeof(want), "favo tls ok body=%u fnv=%016llx", BIG_BODY,
                 (unsigned long long)fnv1a(expect_body, BIG_BODY));
        T_CHECK(st == 0 && out && strstr(out, want), "curl POST: status %d, output '%s', want '%s'",
                st, out ? out : "", want);
    }
    free(out);
    out = NULL;
    T_CHECK(result_wait(k, &res) && res.body_len == BIG_BODY && res.body_ok,
            "POST: server saw %zu bytes, intact %d", res.body_len, res.body_ok);
    k++;

stop:
    fprintf(stderr, "socket cases%s: %u connections served, %d failures so far\n",
            ktls_case == 1   ? " (kTLS)"
            : ktls_case == 2 ? " (kTLS declined)"
            : ktls_case == 3 ? " (leaf without chain)"
                             : "",
            srv.nres,
            t_failures);
    if (write(srv.stop_pipe[1], "x", 1) != 1)
        T_CHECK(0, "stop pipe");
    pthread_join(th, NULL);
    close(srv.lfd);
    close(srv.stop_pipe[0]);
    close(srv.stop_pipe[1]);
}

int main(void)
{
    char err[512];
    uint64_t seed = 1234;

    if (!have("openssl"))
        t_skip("the openssl CLI is not installed (Debian package openssl)");
    dir = t_tmpdir();
    if (!dir)
        t_skip("no temporary directory");
    make_certs();

    expect_body = malloc(BIG_BODY);
    cell = malloc(CELL_CAP);
    for (size_t i = 0; i < BIG_BODY; i++)
        expect_body[i] = (uint8_t)(t_rand(&seed) >> 56);
    {
        FILE *f = fopen(p_big, "wb");
        T_CHECK(f && fwrite(expect_body, 1, BIG_BODY, f) == BIG_BODY, "write big.bin");
        if (f)
            fclose(f);
    }

    test_ctx_errors();

    T_CHECK(ing_tls_ctx_new(&mem_ctx, p_chain, p_key, ING_TLS_NO_KTLS, err, sizeof(err)) == 0,
            "ctx: %s", err);
    if (mem_ctx) {
        test_mem_basic(65536);
        test_mem_basic(1); /* every record byte by byte */
        test_mem_refusals();
        test_mem_bad_input();
        if (have("curl")) {
            ing_tls_ctx_t *leaf_ctx = NULL;
            socket_cases(mem_ctx, 0);
            T_CHECK(ing_tls_ctx_new(&leaf_ctx, p_leaf, p_key, ING_TLS_NO_KTLS, err,
                                    sizeof(err)) == 0,
                    "leaf-only ctx: %s", err);
            if (leaf_ctx)
                socket_cases(leaf_ctx, 3);
            ing_tls_ctx_free(leaf_ctx);
        } else {
            fprintf(stderr, "SKIP socket cases: curl is not installed (Debian package curl)\n");
        }
    }

    /* ing_tls_ktls_available asks the kernel to autoload the tls module
     * (as modprobe would) before it answers */
    if (ing_tls_ktls_available() && have("curl")) {
        ing_tls_ctx_t *kctx = NULL;
        T_CHECK(ing_tls_ctx_new(&kctx, p_chain, p_key, 0, err, sizeof(err)) == 0, "ctx: %s",
                err);
        if (kctx)
            socket_cases(kctx, 1);
        ing_tls_ctx_free(kctx);
    } else if (have("curl")) {
        ing_tls_ctx_t *kctx = NULL;
        fprintf(stderr, "SKIP ktls case: this kernel has no tls ULP "
                        "(/proc/sys/net/ipv4/tcp_available_ulp lacks 'tls'; modprobe tls); "
                        "checking the decline path instead\n");
        T_CHECK(ing_tls_ctx_new(&kctx, p_chain, p_key, ING_TLS_KTLS_ALWAYS, err, sizeof(err)) == 0,
                "ctx: %s", err);
        if (kctx)
            socket_cases(kctx, 2);
        ing_tls_ctx_free(kctx);
    }

    ing_tls_ctx_free(mem_ctx);
    {
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        sh(cmd);
    }
    free(dir);
    free(expect_body);
    free(cell);
    fprintf(stderr, "%s\n", t_failures ? "FAILED" : "ok");
    return t_failures ? 1 : 0;
}
