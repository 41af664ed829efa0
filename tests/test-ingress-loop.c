/*
 * test-ingress-loop.c - the ingress worker end to end: ing_loop_run in a
 * child process on a loopback port the kernel picks, exercised with raw
 * sockets and curl. Routes, keep-alive, pipelining, chunked bodies,
 * 100-continue, every limit (431/413/414/408, idle close, max connections
 * -> 503), 404/405, /metrics lines, /ready, /tokenize against `favo
 * tokenize`, /detokenize, context_length_exceeded, 503 without a batcher,
 * and the handoff: the descriptor on the ingress->batcher ring, the
 * prompt tokens in the cell, and the client socket received by "egress"
 * over SCM_RIGHTS and answered through.
 *
 * TLS (t_tls, a second loop with --tls-cert/--tls-key from a certificate
 * made with the openssl CLI, no model): keep-alive and pipelined requests
 * in one session, a 100 KB body over many records (the cell grows), TLS
 * 1.2 refused, plain HTTP closed at once, a silent client closed by the
 * header timeout, and a drain that ends an idle session with close_notify.
 *
 * Model routes need models/SmolLM2-135M-Instruct.Q4_1.gguf (FAVO_MODELS);
 * without it those checks are skipped and the rest still run.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/time.h>

#include "eng_chat.h"
#include "eng_gguf.h"
#include "eng_tok.h"
#include "shm_fdpass.h"
#include "ing_loop.h"
#include "shm_cell.h"
#include "shm_ring.h"
#include "shm_stats.h"
#include "t_util.h"

static int fails;
#define CHECK(x)                                                                   \
    do {                                                                           \
        if (!(x)) {                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #x); \
            fails++;                                                               \
        }                                                                          \
    } while (0)

static uint16_t port;
static char model[512];
static bool have_model;

/* ------------------------------------------------------------ client side */

static int conn_new(void)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        perror("connect");
        exit(1);
    }
    return fd;
}

static void send_all(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = send(fd, s, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        s += w;
        n -= (size_t)w;
    }
}

static void send_str(int fd, const char *s) { send_all(fd, s, strlen(s)); }

/* Bytes of complete responses at the start of buf (0: none complete). */
static size_t resp_len(const char *buf, size_t len)
{
    const char *e = memmem(buf, len, "\r\n\r\n", 4);
    const char *cl;
    size_t hl, bl = 0;

    if (!e)
        return 0;
    hl = (size_t)(e - buf) + 4;
    cl = memmem(buf, hl, "Content-Length: ", 16);
    if (cl)
        bl = strtoul(cl + 16, NULL, 10);
    return hl + bl <= len ? hl + bl : 0;
}

/* Read until n complete responses (100 Continue counts as one) or EOF or
 * timeout_ms of silence. Returns a malloc'd NUL-ended string. */
static char *read_resp(int fd, int n, int timeout_ms, bool *eof)
{
    size_t cap = 8u << 20, len = 0, at = 0;
    char *buf = malloc(cap + 1);
    int got = 0;

    if (eof)
        *eof = false;
    while (got < n) {
        size_t r;
        while (got < n && (r = resp_len(buf + at, len - at)) > 0) {
            at += r;
            got++;
        }
        if (got >= n)
            break;
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, timeout_ms) <= 0)
            break;
        ssize_t k = recv(fd, buf + len, cap - len, 0);
        if (k <= 0) {
            if (eof)
                *eof = true;
            break;
        }
        len += (size_t)k;
    }
    buf[len] = 0;
    return buf;
}

/* One request on a fresh connection; the response. */
static char *req1(const char *req)
{
    int fd = conn_new();
    char *r;

    send_str(fd, req);
    r = read_resp(fd, 1, 3000, NULL);
    close(fd);
    return r;
}

static int status_of(const char *r)
{
    return strncmp(r, "HTTP/1.1 ", 9) ? -1 : atoi(r + 9);
}

static char *post(const char *path, const char *body, const char *extra)
{
    char *req = malloc(strlen(body) + 1024);
    char *r;

    sprintf(req,
            "POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n%s"
            "Content-Length: %zu\r\n\r\n%s",
            path, extra ? extra : "", strlen(body), body);
    r = req1(req);
    free(req);
    return r;
}

/* ------------------------------------------------------------ the checks */

static void t_basic(void)
{
    char *r = req1("GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: abc-123\r\n\r\n");
    CHECK(status_of(r) == 200);
    CHECK(strstr(r, "X-Request-Id: abc-123\r\n") != NULL);
    CHECK(strstr(r, "{\"status\":\"ok\"}") != NULL);
    free(r);

    r = req1("GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(strstr(r, "X-Request-Id: req-") != NULL); /* generated when not sent */
    free(r);

    r = req1("GET /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(status_of(r) == 404);
    CHECK(strstr(r, "{\"error\":{\"message\":") != NULL);
    CHECK(strstr(r, "\"type\":\"invalid_request_error\"") != NULL);
    free(r);

    r = req1("POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    CHECK(status_of(r) == 405);
    CHECK(strstr(r, "Allow: GET, HEAD\r\n") != NULL);
    CHECK(strstr(r, "\"error\":{") != NULL);
    free(r);

    r = req1("GET /v1/completions HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(status_of(r) == 405);
    CHECK(strstr(r, "Allow: POST\r\n") != NULL);
    free(r);

    /* a smuggling shape: 400 and close */
    r = req1("POST /tokenize HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
             "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    CHECK(status_of(r) == 400);
    CHECK(strstr(r, "Connection: close\r\n") != NULL);
    free(r);

    r = req1("GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(status_of(r) == 200);
    CHECK(strstr(r, "\"object\":\"list\"") != NULL);
    if (have_model)
        CHECK(strstr(r, "\"id\":\"SmolLM2-135M-Instruct.Q4_1\"") != NULL);
    free(r);
}

static void t_keepalive_pipeline(void)
{
    int fd = conn_new();
    char *r;
    bool eof;

    send_str(fd, "GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: k1\r\n\r\n");
    r = read_resp(fd, 1, 3000, NULL);
    CHECK(status_of(r) == 200 && strstr(r, "k1") && !strstr(r, "Connection: close"));
    free(r);
    send_str(fd, "GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: k2\r\n\r\n");
    r = read_resp(fd, 1, 3000, NULL);
    CHECK(status_of(r) == 200 && strstr(r, "k2")); /* same connection, second request */
    free(r);

    /* three pipelined in one write, answered in order */
    send_str(fd, "GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: p1\r\n\r\n"
                 "GET /nope HTTP/1.1\r\nHost: t\r\nX-Request-Id: p2\r\n\r\n"
                 "GET /v1/models HTTP/1.1\r\nHost: t\r\nX-Request-Id: p3\r\nConnection: close\r\n\r\n");
    r = read_resp(fd, 3, 3000, &eof);
    char *a = strstr(r, "X-Request-Id: p1"), *b = strstr(r, "X-Request-Id: p2"),
         *c = strstr(r, "X-Request-Id: p3");
    CHECK(a && b && c && a < b && b < c);
    CHECK(status_of(r) == 200);
    if (b) {
        const char *st = b;
        while (st > r && strncmp(st, "HTTP/1.1 ", 9))
            st--;
        CHECK(status_of(st) == 404); /* the middle one's status */
    }
    free(r);
    r = read_resp(fd, 1, 2000, &eof);
    CHECK(eof); /* Connection: close honoured */
    free(r);
    close(fd);

    /* pipelined answers far larger than the socket buffers, sent while
     * the client reads nothing yet, so the output buffer grows while
     * SENDs are in flight: every byte arrives intact and in order */
    fd = conn_new();
    int rcv = 65536;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
    char batch[64 * 48];
    size_t bl = 0;
    for (int i = 0; i < 64; i++)
        bl += (size_t)sprintf(batch + bl, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    for (int round = 0; round < 3; round++) {
        send_all(fd, batch, bl);
        usleep(50000);
    }
    r = read_resp(fd, 192, 3000, NULL);
    int nok = 0;
    for (char *p = r; (p = strstr(p, "HTTP/1.1 200 OK\r\n")) != NULL; p++)
        nok++;
    CHECK(nok == 192);
    CHECK(strlen(r) > 192 * 1000); /* no NUL (zeroed bytes) inside the stream */
    free(r);
    close(fd);

    /* a request split over many small writes */
    fd = conn_new();
    const char *s = "GET /health HTTP/1.1\r\nHost: t\r\n\r\n";
    for (size_t i = 0; s[i]; i++) {
        send_all(fd, s + i, 1);
        usleep(1000);
    }
    r = read_resp(fd, 1, 3000, NULL);
    CHECK(status_of(r) == 200);
    free(r);
    close(fd);
}

static void t_limits(void)
{
    char big[4096];
    char *r;
    bool eof;
    int fd;

    /* headers over 2 KiB (the child's limit) -> 431 */
    memset(big, 'a', 3000);
    big[3000] = 0;
    char *req = malloc(8192);
    sprintf(req, "GET /health HTTP/1.1\r\nHost: t\r\nX-Big: %s\r\n\r\n", big);
    r = req1(req);
    CHECK(status_of(r) == 431);
    free(r);
    /* URI over 256 -> 414 */
    memset(big, 'u', 400);
    big[400] = 0;
    sprintf(req, "GET /%s HTTP/1.1\r\nHost: t\r\n\r\n", big);
    r = req1(req);
    CHECK(status_of(r) == 414);
    free(r);
    free(req);
    /* body over 4 KiB -> 413 */
    r = req1("POST /tokenize HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
             "Content-Length: 5000\r\n\r\n{");
    CHECK(status_of(r) == 413);
    CHECK(strstr(r, "\"error\":{") != NULL);
    free(r);

    /* header read timeout (600 ms) -> 408 and close */
    fd = conn_new();
    send_str(fd, "GET /health HT");
    r = read_resp(fd, 1, 3000, &eof);
    CHECK(status_of(r) == 408);
    CHECK(strstr(r, "Connection: close") != NULL);
    free(r);
    r = read_resp(fd, 1, 2000, &eof);
    CHECK(eof);
    free(r);
    close(fd);

    /* a body that stops arriving -> 408 and close */
    fd = conn_new();
    send_str(fd, "POST /tokenize HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 "Content-Length: 20\r\n\r\n{\"pr");
    r = read_resp(fd, 1, 3000, &eof);
    CHECK(status_of(r) == 408);
    free(r);
    close(fd);

    /* idle keep-alive (1000 ms) -> closed without a response */
    fd = conn_new();
    send_str(fd, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    r = read_resp(fd, 1, 3000, NULL);
    CHECK(status_of(r) == 200);
    free(r);
    uint64_t t0 = (uint64_t)time(NULL);
    r = read_resp(fd, 1, 4000, &eof);
    CHECK(eof && r[0] == 0);
    CHECK((uint64_t)time(NULL) - t0 <= 3);
    free(r);
    close(fd);

    /* max connections (4): the fifth gets 503 and close */
    int k[4];
    for (int i = 0; i < 4; i++) {
        k[i] = conn_new();
        send_str(k[i], "GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        r = read_resp(k[i], 1, 3000, NULL);
        CHECK(status_of(r) == 200);
        free(r);
    }
    fd = conn_new();
    r = read_resp(fd, 1, 3000, &eof);
    CHECK(status_of(r) == 503);
    CHECK(strstr(r, "Retry-After: 1") && strstr(r, "\"error\":{"));
    free(r);
    close(fd);
    for (int i = 0; i < 4; i++)
        close(k[i]);
    usleep(200000);
}

/* Seeded garbage on a few connections: each gets an answer or a close,
 * and the worker stays up. */
static void t_garbage(void)
{
    uint64_t seed = 42;
    char buf[2048];

    for (int round = 0; round < 12; round++) {
        int fd = conn_new();
        size_t n = 1 + t_rand(&seed) % sizeof(buf);
        for (size_t i = 0; i < n; i++) {
            uint64_t x = t_rand(&seed);
            /* mostly HTTP-looking bytes, some control bytes and high ones */
            static const char alpha[] = "GET /POST HTTP/1.1\r\n:Content-Length: 9chunked";
            buf[i] = (char)(x % 4 == 0 ? alpha[(x >> 2) % (sizeof(alpha) - 1)] : (char)(x >> 8));
        }
        if (round % 3 == 0)
            memcpy(buf, "POST /v1/completions HTTP/1.1\r\n", FAVO_MIN(n, 31u));
        send_all(fd, buf, n);
        shutdown(fd, SHUT_WR);
        char *r = read_resp(fd, 4, 1500, NULL);
        free(r);
        close(fd);
    }
    char *r = req1("GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(status_of(r) == 200);
    free(r);
}

static void t_metrics_ready(volatile uint32_t *batcher_up, struct shm_stats *st)
{
    char *r = req1("GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    regex_t re;
    char *body, *line, *save = NULL;
    int nlines = 0, bad = 0;

    CHECK(status_of(r) == 200);
    CHECK(strstr(r, "Content-Type: text/plain; version=0.0.4") != NULL);
    const char *nf = strstr(r, "favo_requests_rejected_total{reason=\"not_found\"} ");
    CHECK(nf != NULL);
    if (nf) /* the 404s answered so far were counted by the worker */
        CHECK(atof(nf + strlen("favo_requests_rejected_total{reason=\"not_found\"} ")) >= 2);
    regcomp(&re, "^[a-zA-Z_:][a-zA-Z0-9_:]*(\\{[^}]*\\})? [-+0-9.eEInfa]+$", REG_EXTENDED);
    body = strstr(r, "\r\n\r\n");
    for (line = strtok_r(body ? body + 4 : r, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') {
            if (strncmp(line, "# HELP ", 7) && strncmp(line, "# TYPE ", 7))
                bad++;
            continue;
        }
        nlines++;
        if (regexec(&re, line, 0, NULL, 0)) {
            fprintf(stderr, "bad metrics line: %s\n", line);
            bad++;
        }
    }
    regfree(&re);
    CHECK(nlines > 10 && bad == 0);
    free(r);

    r = req1("GET /ready HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(status_of(r) == 503); /* no batcher attached */
    free(r);
    *batcher_up = 1;
    struct shm_stage_info si = { .kind = SHM_STAGE_BATCHER, .state = SHM_STAGE_STARTING };
    shm_stats_stage_set(st, 0, &si);
    r = req1("GET /ready HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(status_of(r) == 503); /* a stage not running yet */
    free(r);
    si.state = SHM_STAGE_RUNNING;
    shm_stats_stage_set(st, 0, &si);
    r = req1("GET /ready HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(status_of(r) == (have_model ? 200 : 503));
    free(r);
    *batcher_up = 0;
}

/* ids from a JSON "tokens":[...] array, space-separated */
static void json_ids(const char *r, char *out, size_t cap)
{
    const char *p = strstr(r, "\"tokens\":[");
    size_t n = 0;

    out[0] = 0;
    if (!p)
        return;
    for (p += 10; *p && *p != ']' && n + 2 < cap; p++)
        out[n++] = *p == ',' ? ' ' : *p;
    out[n] = 0;
}

/* egress side: wait (bounded) for the socket handed over */
static int egress_recv(int egress, int *fd, uint64_t *key)
{
    struct pollfd p = { .fd = egress, .events = POLLIN };
    if (poll(&p, 1, 3000) <= 0)
        return -ETIMEDOUT;
    return shm_fdpass_recv(egress, fd, key, sizeof(*key));
}

static const char *favo_bin(void)
{
    return t_env("FAVO_BIN", "build/favo");
}

static void t_tokenize(void)
{
    static const char *texts[] = { "Hello, world!", "  two  spaces and ünïcödé 日本",
                                   "numbers 12345 and\nnewlines\ttabs" };
    char ids[8192], body[1024];
    char *r;

    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        char *out = NULL, *err = NULL;
        char *argv[] = { (char *)favo_bin(), "tokenize", "--model", model,
                         (char *)texts[i], NULL };
        int rc = t_run(argv, &out, &err);
        CHECK(rc == 0);
        /* JSON-escape the text (only \n and \t occur) */
        char esc[512];
        size_t k = 0;
        for (const char *p = texts[i]; *p; p++) {
            if (*p == '\n' || *p == '\t') {
                esc[k++] = '\\';
                esc[k++] = *p == '\n' ? 'n' : 't';
            } else
                esc[k++] = *p;
        }
        esc[k] = 0;
        snprintf(body, sizeof(body), "{\"prompt\":\"%s\"}", esc);
        r = post("/tokenize", body, NULL);
        CHECK(status_of(r) == 200);
        json_ids(r, ids, sizeof(ids));
        if (out) {
            char *o = out;
            while (*o == ' ')
                o++;
            memmove(out, o, strlen(o) + 1);
            size_t l = strlen(out);
            while (l && (out[l - 1] == '\n' || out[l - 1] == ' '))
                out[--l] = 0;
            if (strcmp(out, ids))
                fprintf(stderr, "tokenize %zu: favo tokenize '%s' vs /tokenize '%s'\n", i, out,
                        ids);
            CHECK(!strcmp(out, ids));
        }
        CHECK(strstr(r, "\"max_model_len\":8192") != NULL);
        free(r);
        free(out);
        free(err);
    }
    /* count agrees with the array */
    r = post("/tokenize", "{\"prompt\":\"a b c\"}", NULL);
    json_ids(r, ids, sizeof(ids));
    int n = 0;
    for (char *p = strtok(ids, " "); p; p = strtok(NULL, " "))
        n++;
    char want[64];
    snprintf(want, sizeof(want), "\"count\":%d,", n);
    CHECK(strstr(r, want) != NULL);
    free(r);

    /* messages go through the chat template */
    r = post("/tokenize", "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}", NULL);
    CHECK(status_of(r) == 200 && strstr(r, "\"count\":"));
    free(r);

    /* detokenize inverts tokenize for plain text */
    r = post("/tokenize", "{\"prompt\":\"Hello, world!\"}", NULL);
    json_ids(r, ids, sizeof(ids));
    free(r);
    for (char *p = ids; *p; p++)
        if (*p == ' ')
            *p = ',';
    snprintf(body, sizeof(body), "{\"tokens\":[%s]}", ids);
    r = post("/detokenize", body, NULL);
    CHECK(status_of(r) == 200);
    CHECK(strstr(r, "{\"prompt\":\"Hello, world!\"}") != NULL);
    free(r);
    r = post("/detokenize", "{\"tokens\":[1,-5]}", NULL);
    CHECK(status_of(r) == 400 && strstr(r, "\"param\":\"tokens[1]\""));
    free(r);
    r = post("/tokenize", "{\"prompt\":", NULL);
    CHECK(status_of(r) == 400 && strstr(r, "\"error\":{"));
    free(r);
}

/* chunked request bodies and 100-continue, raw and with curl */
static void t_chunked_continue(void)
{
    int fd = conn_new();
    char *r, url[128];

    send_str(fd, "POST /tokenize HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n"
                 "5\r\n{\"pro\r\n9\r\nmpt\":\"Hel\r\n5\r\nlo!\"}\r\n0\r\n\r\n");
    r = read_resp(fd, 1, 3000, NULL);
    char *ref = post("/tokenize", "{\"prompt\":\"Hello!\"}", NULL);
    char a[256], b[256];
    json_ids(r, a, sizeof(a));
    json_ids(ref, b, sizeof(b));
    CHECK(status_of(r) == (have_model ? 200 : 503));
    CHECK(!strcmp(a, b));
    free(r);
    free(ref);

    /* Expect: 100-continue: the interim response comes before the body is sent */
    send_str(fd, "POST /tokenize HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 "Expect: 100-continue\r\nContent-Length: 19\r\n\r\n");
    r = read_resp(fd, 1, 3000, NULL);
    CHECK(!strncmp(r, "HTTP/1.1 100 Continue\r\n\r\n", 25));
    free(r);
    send_str(fd, "{\"prompt\":\"Hello!\"}");
    r = read_resp(fd, 1, 3000, NULL);
    CHECK(status_of(r) == (have_model ? 200 : 503));
    json_ids(r, a, sizeof(a));
    CHECK(!strcmp(a, b));
    free(r);
    close(fd);

    /* curl: chunked upload and 100-continue */
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/tokenize", port);
    char *out = NULL, *err = NULL;
    char *argv[] = { "curl", "-sS", "-H", "Content-Type: application/json", "-H",
                     "Transfer-Encoding: chunked", "-H", "Expect: 100-continue",
                     "--data-binary", "{\"prompt\":\"Hello!\"}", "-w", " HTTP%{http_code}",
                     url, NULL };
    CHECK(t_run(argv, &out, &err) == 0);
    if (out) {
        CHECK(strstr(out, have_model ? " HTTP200" : " HTTP503") != NULL);
        json_ids(out, a, sizeof(a));
        CHECK(!strcmp(a, b));
    }
    free(out);
    free(err);
}

static void t_generate_no_batcher(void)
{
    char *r = post("/v1/chat/completions",
                   "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":8}",
                   NULL);
    CHECK(status_of(r) == 503);
    CHECK(strstr(r, "the generation pipeline is not running") != NULL);
    CHECK(strstr(r, "\"type\":\"server_error\"") != NULL);
    free(r);

    r = post("/v1/completions", "{\"prompt\":\"Hi\",\"max_tokens\":100000}", NULL);
    CHECK(status_of(r) == 400);
    CHECK(strstr(r, "\"code\":\"context_length_exceeded\"") != NULL);
    CHECK(strstr(r, "8192") && strstr(r, "100001")); /* both numbers */
    free(r);

    r = post("/v1/completions", "{\"prompt\":\"Hi\",\"temperature\":7}", NULL);
    CHECK(status_of(r) == 400 && strstr(r, "\"param\":\"temperature\""));
    free(r);

    r = post("/v1/completions", "{\"prompt\":\"Hi\",\"model\":\"gpt-9\"}", NULL);
    CHECK(status_of(r) == 404 && strstr(r, "model_not_found"));
    free(r);
}

/* The handoff: the descriptor on the ring, the tokens in the cell, the
 * socket over SCM_RIGHTS (this process plays batcher and egress). */
static void t_handoff(volatile uint32_t *batcher_up, shm_ring_t *ring,
                      struct shm_cell_pool *pool, int egress, const eng_tok_t *tok)
{
    struct eng_chat chat;
    struct eng_chat_msg m[2] = { { "system", 6, "Be brief.", 9 }, { "user", 4, "Hello there", 11 } };
    int32_t want[256];
    char err[128];
    int fd, cfd = -1;
    uint64_t key = 0;
    char *r;

    *batcher_up = 1;
    CHECK(eng_chat_from_tok(&chat, tok, NULL, err, sizeof(err)) == 0);
    int64_t nwant = eng_chat_encode(&chat, tok, m, 2, true, want, 256);
    CHECK(nwant > 0 && nwant < 256);

    fd = conn_new();
    const char *body = "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                       "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"Hello \"},"
                       "{\"type\":\"text\",\"text\":\"there\"}]}],\"max_tokens\":16,"
                       "\"temperature\":0.5,\"seed\":7,\"stream\":true}";
    char req[1024];
    snprintf(req, sizeof(req),
             "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
             "X-Request-Id: hand-1\r\nContent-Length: %zu\r\n\r\n%s"
             "GET /health HTTP/1.1\r\nHost: t\r\n\r\n", /* pipelined behind it */
             strlen(body), body);
    send_str(fd, req);

    /* egress: the socket arrives once, with the connection key */
    CHECK(egress_recv(egress, &cfd, &key) == 0);
    /* batcher: the descriptor */
    const struct shm_req *d = NULL;
    for (int i = 0; i < 300 && !(d = shm_ring_peek_one(ring)); i++)
        usleep(10000);
    CHECK(d != NULL);
    if (d) {
        void *cell;
        size_t size;
        CHECK(d->magic == SHM_REQ_MAGIC);
        CHECK(d->route == SHM_REQ_CHAT);
        CHECK(d->conn == key);
        CHECK(d->reqid_len == 6 && !memcmp(d->reqid, "hand-1", 6));
        CHECK(d->max_tokens == 16 && d->seed == 7 && (d->flags & SHM_REQ_F_STREAM) &&
              (d->flags & SHM_REQ_F_SEED));
        CHECK(d->temperature == 0.5f);
        CHECK(d->ntok == (uint32_t)nwant);
        CHECK(shm_cell_get(pool, d->cell, SHM_CELL_BATCHER, &cell, &size) == 0);
        CHECK(d->tok_off % 64 == 0 && d->tok_off + 4 * d->ntok <= size);
        CHECK(!memcmp((char *)cell + d->tok_off, want, 4 * (size_t)nwant));
        /* the pipelined GET is not in the handed cell (loop inv 4) */
        CHECK(!memmem(cell, d->tok_off, "GET /health", 11));
        CHECK(shm_cell_free(pool, d->cell, SHM_CELL_BATCHER) == 0);
        shm_ring_release(ring, 1);
    }
    /* egress answers through its copy of the socket */
    if (cfd >= 0) {
        send_str(cfd, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\negress");
        close(cfd);
    }
    r = read_resp(fd, 1, 3000, NULL);
    CHECK(status_of(r) == 200 && strstr(r, "egres"));
    if (status_of(r) != 200)
        fprintf(stderr, "handoff answer: %.500s\n", r);
    free(r);
    close(fd);

    /* a completion with token ids: the ids land in the cell as sent */
    r = NULL;
    fd = conn_new();
    const char *b2 = "{\"prompt\":[1,2,3,400],\"max_tokens\":4}";
    snprintf(req, sizeof(req),
             "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
             "Content-Length: %zu\r\n\r\n%s", strlen(b2), b2);
    send_str(fd, req);
    CHECK(egress_recv(egress, &cfd, &key) == 0); /* new connection */
    d = NULL;
    for (int i = 0; i < 300 && !(d = shm_ring_peek_one(ring)); i++)
        usleep(10000);
    CHECK(d != NULL);
    if (d) {
        void *cell;
        size_t size;
        int32_t ids[4] = { 1, 2, 3, 400 };
        CHECK(d->route == SHM_REQ_COMPLETIONS && d->ntok == 4);
        CHECK(d->reqid_len > 4 && !memcmp(d->reqid, "req-", 4));
        CHECK(shm_cell_get(pool, d->cell, SHM_CELL_BATCHER, &cell, &size) == 0);
        CHECK(!memcmp((char *)cell + d->tok_off, ids, sizeof(ids)));
        CHECK(shm_cell_free(pool, d->cell, SHM_CELL_BATCHER) == 0);
        shm_ring_release(ring, 1);
    }
    if (cfd >= 0)
        close(cfd);
    close(fd);

    /* A request no cell can hold (the largest class is 256 KiB here): one
     * answer, 413 naming max_tokens, with logprobs or without (the second
     * was a 400 from the cell allocator's -EMSGSIZE); nothing enqueued. */
    r = post("/v1/completions", "{\"prompt\":\"Hi\",\"max_tokens\":8000}", NULL);
    CHECK(status_of(r) == 413 && strstr(r, "\"param\":\"max_tokens\"") &&
          strstr(r, "max_tokens 8000 does not fit"));
    free(r);
    r = post("/v1/completions", "{\"prompt\":\"Hi\",\"max_tokens\":1000,\"logprobs\":5}", NULL);
    CHECK(status_of(r) == 413 && strstr(r, "\"param\":\"max_tokens\"") &&
          strstr(r, "with 5 logprob alternatives"));
    free(r);
    r = post("/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],"
             "\"max_tokens\":2000,\"logprobs\":true,\"top_logprobs\":20}", NULL);
    CHECK(status_of(r) == 413 && strstr(r, "\"param\":\"max_tokens\"") &&
          strstr(r, "with 20 logprob alternatives"));
    free(r);
    CHECK(shm_ring_peek_one(ring) == NULL);
    *batcher_up = 0;
}

/* ------------------------------------------------------------------ TLS */

/* A client session on a fresh connection (verifying against the test's
 * self-signed certificate); NULL when the handshake failed. */
static SSL *tls_open(SSL_CTX *cx, int *fdp)
{
    struct timeval tv = { 3, 0 };
    int fd = conn_new();
    SSL *s = SSL_new(cx);

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    SSL_set_fd(s, fd);
    if (SSL_connect(s) != 1) {
        ERR_clear_error();
        SSL_free(s);
        close(fd);
        return NULL;
    }
    *fdp = fd;
    return s;
}

static const char HEALTH[] = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";

static void tls_close(SSL *s, int fd)
{
    SSL_free(s);
    close(fd);
}

static void tls_send(SSL *s, const char *p, size_t n)
{
    size_t w;

    while (n && SSL_write_ex(s, p, n, &w) == 1) {
        p += w;
        n -= w;
    }
}

/* Read n complete responses (or until EOF / 3 s of silence). *eof: the
 * session ended (close_notify or TCP). malloc'd. */
static char *tls_resp(SSL *s, int n, bool *eof, bool *notify)
{
    size_t cap = 1u << 20, len = 0, at = 0, got;
    char *buf = malloc(cap + 1);
    int k = 0;

    *eof = false;
    if (notify)
        *notify = false;
    while (k < n) {
        size_t r;
        while (k < n && (r = resp_len(buf + at, len - at)) > 0) {
            at += r;
            k++;
        }
        if (k >= n)
            break;
        if (SSL_read_ex(s, buf + len, cap - len, &got) != 1) {
            int e = SSL_get_error(s, 0);
            if (notify)
                *notify = e == SSL_ERROR_ZERO_RETURN;
            *eof = true;
            ERR_clear_error();
            break;
        }
        len += got;
    }
    buf[len] = 0;
    return buf;
}

static int count_of(const char *s, const char *what)
{
    int n = 0;

    for (const char *p = s; (p = strstr(p, what)) != NULL; p++)
        n++;
    return n;
}

static void t_tls(void)
{
    char *dir = t_tmpdir(), cmd[1024], cert[600], key[600], pbuf[16] = { 0 }, *r;
    SSL_CTX *cx = NULL, *cx12 = NULL;
    int pfd[2], fd, status = 0;
    bool eof, notify;
    pid_t pid;
    SSL *s;

    snprintf(cmd, sizeof(cmd),
             "cd '%s' && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
             "-nodes -keyout key.pem -out cert.pem -days 2 -subj /CN=localhost "
             "-addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1",
             dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "note: openssl CLI could not make a certificate: TLS not checked\n");
        free(dir);
        return;
    }
    snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);
    if (pipe(pfd))
        return;
    pid = fork();
    if (pid == 0) {
        struct ing_cfg cfg = { 0 };
        close(pfd[0]);
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        cfg.port_fd = pfd[1];
        cfg.lim = ing_http_default_limits;
        cfg.max_conns = 8;
        cfg.header_timeout_ms = 600;
        cfg.idle_timeout_ms = 5000;
        cfg.drain_ms = 2000;
        cfg.egress_sock = -1;
        cfg.tls_cert = cert;
        cfg.tls_key = key;
        exit(ing_loop_run(&cfg) ? 2 : 0);
    }
    close(pfd[1]);
    if (read(pfd[0], pbuf, sizeof(pbuf) - 1) <= 0) {
        fprintf(stderr, "the TLS loop did not start\n");
        fails++;
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return;
    }
    close(pfd[0]);
    uint16_t plain_port = port;
    port = (uint16_t)atoi(pbuf);

    cx = SSL_CTX_new(TLS_client_method());
    cx12 = SSL_CTX_new(TLS_client_method());
    CHECK(cx && cx12 && SSL_CTX_load_verify_locations(cx, cert, NULL) == 1);
    SSL_CTX_set_verify(cx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_max_proto_version(cx12, TLS1_2_VERSION);

    /* keep-alive and pipelining in one session */
    s = tls_open(cx, &fd);
    CHECK(s != NULL);
    if (s) {
        static const char two[] = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                                  "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        CHECK(!strcmp(SSL_get_version(s), "TLSv1.3"));
        tls_send(s, HEALTH, strlen(HEALTH));
        r = tls_resp(s, 1, &eof, NULL);
        CHECK(!strncmp(r, "HTTP/1.1 200", 12) && strstr(r, "\"ok\""));
        free(r);
        tls_send(s, two, sizeof(two) - 1);
        r = tls_resp(s, 2, &eof, NULL);
        CHECK(count_of(r, "HTTP/1.1 200 OK") == 2 && !eof);
        free(r);
        /* a 100 KB body: many records, the request moves to a larger cell */
        size_t bl = 100000;
        char *big = malloc(bl + 256);
        int h = snprintf(big, 256, "POST /v1/completions HTTP/1.1\r\nHost: x\r\n"
                                   "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                         bl);
        memcpy(big + h, "{\"prompt\":\"", 11);
        memset(big + h + 11, 'a', bl - 13);
        memcpy(big + h + bl - 2, "\"}", 2);
        tls_send(s, big, (size_t)h + bl);
        free(big);
        tls_send(s, HEALTH, strlen(HEALTH));
        r = tls_resp(s, 2, &eof, NULL);
        CHECK(!strncmp(r, "HTTP/1.1 ", 9) && count_of(r, "HTTP/1.1 ") == 2 &&
              strstr(r, "\"status\":\"ok\"") && !eof); /* the body was read whole */
        free(r);
        tls_close(s, fd);
    }

    /* TLS 1.2 only: refused */
    s = tls_open(cx12, &fd);
    CHECK(s == NULL);
    if (s)
        tls_close(s, fd);

    /* plain HTTP to the TLS port: closed at once, never answered in clear */
    port = (uint16_t)atoi(pbuf);
    fd = conn_new();
    send_str(fd, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    r = read_resp(fd, 1, 2000, &eof);
    CHECK(eof && !strstr(r, "HTTP/1.1"));
    free(r);
    close(fd);

    /* a client that never says anything: closed by the header timeout */
    {
        uint64_t t0 = (uint64_t)time(NULL);
        fd = conn_new();
        r = read_resp(fd, 1, 4000, &eof);
        CHECK(eof && r[0] == 0 && (uint64_t)time(NULL) - t0 <= 3);
        free(r);
        close(fd);
    }

    /* drain: an idle session ends with close_notify, the loop exits 0 */
    s = tls_open(cx, &fd);
    CHECK(s != NULL);
    if (s) {
        tls_send(s, HEALTH, strlen(HEALTH));
        r = tls_resp(s, 1, &eof, NULL);
        free(r);
        kill(pid, SIGTERM);
        r = tls_resp(s, 1, &eof, &notify);
        CHECK(eof && notify && r[0] == 0);
        free(r);
        tls_close(s, fd);
    } else {
        kill(pid, SIGTERM);
    }
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    SSL_CTX_free(cx);
    SSL_CTX_free(cx12);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "note: could not remove %s\n", dir);
    free(dir);
    port = plain_port;
}

int main(void)
{
    struct shm_cell_cfg cc = { .nclasses = 2, .nreturn = 1 };
    size_t plen, rlen;
    void *shared;
    struct shm_stats st;
    char instance[64];
    int pfd[2], eg[2];
    pid_t pid;

    cc.classes[0].cell_size = 64u << 10;
    cc.classes[0].ncells = 16;
    cc.classes[1].cell_size = 256u << 10; /* t_handoff: max_tokens 8000 fits no cell */
    cc.classes[1].ncells = 2;
    plen = (shm_cell_pool_size(&cc) + 4095) & ~(size_t)4095;
    rlen = shm_ring_region_size(64, sizeof(struct shm_req));
    shared = mmap(NULL, plen + rlen + 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                  -1, 0);
    if (shared == MAP_FAILED)
        return 1;
    char *ring_mem = (char *)shared + plen;
    volatile uint32_t *batcher_up = (uint32_t *)((char *)shared + plen + rlen);
    if (shm_cell_pool_init(shared, plen, &cc, 1) || shm_ring_init(ring_mem, rlen, 64,
                                                                  sizeof(struct shm_req), 1))
        return 1;

    snprintf(instance, sizeof(instance), "t-ingress-loop-%d", (int)getpid());
    shm_seg_unlink_stats(instance);
    if (shm_stats_create(&st, instance, 2, 4)) {
        fprintf(stderr, "stats segment: %s\n", st.seg.err);
        return 1;
    }
    snprintf(model, sizeof(model), "%s/SmolLM2-135M-Instruct.Q4_1.gguf",
             t_env("FAVO_MODELS", "models"));
    have_model = access(model, R_OK) == 0;
    if (!have_model)
        fprintf(stderr, "note: %s absent; model routes checked for 503 only\n", model);

    if (pipe(pfd) || shm_fdpass_pair(eg))
        return 1;
    pid = fork();
    if (pid == 0) {
        static struct shm_cell_pool pool;
        static shm_ring_t ring;
        static struct shm_stats cst;
        static struct shm_stats_writer w;
        struct ing_cfg cfg = { 0 };

        close(pfd[0]);
        close(eg[1]);
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive a test that died */
        if (shm_cell_pool_attach(&pool, shared, plen, 1, SHM_CELL_ROLE_ALLOCATOR, -1) ||
            shm_ring_attach(&ring, ring_mem, rlen, sizeof(struct shm_req), 1,
                            SHM_RING_PRODUCER) ||
            shm_stats_open(&cst, instance, true) ||
            shm_stats_writer_init(&cst, 0, SHM_STAGE_INGRESS, 0, 0, &w))
            _exit(3);
        cfg.port_fd = pfd[1];
        cfg.model_path = have_model ? model : NULL;
        cfg.lim = ing_http_default_limits;
        cfg.lim.max_header = 2048;
        cfg.lim.max_body = 4096;
        cfg.lim.max_uri = 256;
        cfg.max_conns = 4;
        cfg.header_timeout_ms = 600;
        cfg.idle_timeout_ms = 1000;
        cfg.drain_ms = 1000;
        cfg.cells = &pool;
        cfg.to_batcher = &ring;
        cfg.batcher_up = (const uint32_t *)batcher_up;
        cfg.egress_sock = eg[0];
        cfg.stats = &cst;
        cfg.stats_w = &w;
        int rc = ing_loop_run(&cfg);
        shm_stats_writer_free(&w);
        shm_stats_close(&cst);
        exit(rc ? 2 : 0); /* exit, not _exit: LeakSanitizer checks the loop */
    }
    close(pfd[1]);
    close(eg[0]);
    char pbuf[16] = { 0 };
    if (read(pfd[0], pbuf, sizeof(pbuf) - 1) <= 0) {
        fprintf(stderr, "the loop did not start\n");
        kill(pid, SIGKILL);
        return 1;
    }
    port = (uint16_t)atoi(pbuf);
    fprintf(stderr, "ingress listening on 127.0.0.1:%u\n", port);

    t_basic();
    t_keepalive_pipeline();
    t_limits();
    t_metrics_ready(batcher_up, &st);
    t_chunked_continue();
    t_garbage();
    if (have_model) {
        eng_gguf_t *g;
        eng_tok_t *tok;
        struct shm_cell_pool pool;
        shm_ring_t ring;
        char err[256];

        t_tokenize();
        t_generate_no_batcher();
        if (eng_gguf_open(&g, model, err, sizeof(err)) || eng_tok_load(&tok, g, err, sizeof(err)) ||
            shm_cell_pool_attach(&pool, shared, plen, 1, SHM_CELL_ROLE_USER, 0) ||
            shm_ring_attach(&ring, ring_mem, rlen, sizeof(struct shm_req), 1,
                            SHM_RING_CONSUMER)) {
            fprintf(stderr, "setup for the handoff: %s\n", err);
            fails++;
        } else {
            t_handoff(batcher_up, &ring, &pool, eg[1], tok);
            eng_tok_free(tok);
            eng_gguf_close(g);
        }
    }

    int status = 0;
    kill(pid, SIGTERM);
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    t_tls();
    shm_stats_destroy(&st);
    /* no cell leaked: a fresh allocator finds every cell free */
    {
        struct shm_cell_pool again;
        CHECK(shm_cell_pool_attach(&again, shared, plen, 1, SHM_CELL_ROLE_ALLOCATOR, -1) == 0);
        shm_cell_drain(&again);
        CHECK(shm_cell_free_count(&again, 0) == 16 && shm_cell_free_count(&again, 1) == 2);
    }
    if (fails) {
        fprintf(stderr, "%d checks failed\n", fails);
        return 1;
    }
    printf("ok%s\n", have_model ? "" : " (model routes skipped: no model)");
    return 0;
}
