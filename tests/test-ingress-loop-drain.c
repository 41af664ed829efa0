/*
 * test-ingress-loop-drain.c - two ingress workers on one port
 * (SO_REUSEPORT), API keys on the routes (401 in OpenAI's shape), HEAD,
 * and drain on SIGTERM: a request being read when the signal arrives is
 * still answered (with Connection: close), then both workers exit 0 and
 * the port stops accepting. No model needed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ing_keys.h"
#include "ing_loop.h"

static int fails;
#define CHECK(x)                                                                   \
    do {                                                                           \
        if (!(x)) {                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #x); \
            fails++;                                                               \
        }                                                                          \
    } while (0)

static uint16_t port;
static void *rl_mem;
static size_t rl_len;

static int conn_new(int *err)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    *err = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        *err = errno;
        close(fd);
        return -1;
    }
    return fd;
}

/* Everything the server sends until it closes or 3 s of silence. */
static char *read_all(int fd, bool *eof)
{
    size_t len = 0, cap = 65536;
    char *b = malloc(cap + 1);

    *eof = false;
    for (;;) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        if (poll(&p, 1, 3000) <= 0)
            break;
        ssize_t k = recv(fd, b + len, cap - len, 0);
        if (k <= 0) {
            *eof = k == 0;
            break;
        }
        len += (size_t)k;
        if (len == cap)
            break;
    }
    b[len] = 0;
    return b;
}

static char *ask(const char *req)
{
    int e, fd = conn_new(&e);
    bool eof;
    char *r;

    if (fd < 0)
        return strdup("");
    if (send(fd, req, strlen(req), MSG_NOSIGNAL) < 0)
        fails++;
    shutdown(fd, SHUT_WR); /* one request, then the server closes */
    r = read_all(fd, &eof);
    close(fd);
    return r;
}

static pid_t start_worker(unsigned idx, const struct ing_keys *ks, int port_fd)
{
    pid_t pid = fork();

    if (pid == 0) {
        struct ing_cfg cfg = { 0 };
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive a test that died */
        cfg.port = port;
        cfg.worker = idx;
        cfg.port_fd = port_fd;
        cfg.max_conns = 32;
        cfg.keys = ks;
        static struct ing_rl rl;
        if (ing_rl_attach(&rl, rl_mem, rl_len, idx))
            exit(3);
        cfg.rl = &rl;
        cfg.drain_ms = 2000;
        cfg.egress_sock = -1;
        exit(ing_loop_run(&cfg) ? 2 : 0);
    }
    return pid;
}

static uint16_t wait_port(int fd)
{
    char b[16] = { 0 };
    if (read(fd, b, sizeof(b) - 1) <= 0)
        return 0;
    close(fd);
    return (uint16_t)atoi(b);
}

int main(void)
{
    struct ing_keys ks;
    struct ing_key k;
    char key[ING_KEYS_KEY_LEN + 1], req[512];
    int p1[2], p2[2], e;
    pid_t w0, w1;
    char *r;

    ing_keys_init(&ks);
    memset(&k, 0, sizeof(k));
    if (ing_keys_generate(key, k.sha256))
        return 1;
    strcpy(k.name, "test");
    strcpy(k.tenant, "t1");
    if (ing_keys_add(&ks, &k)) {
        fprintf(stderr, "keys: %s\n", ks.err);
        return 1;
    }
    /* a second key limited to 2 requests per minute */
    struct ing_key k2;
    char key2[ING_KEYS_KEY_LEN + 1];
    memset(&k2, 0, sizeof(k2));
    if (ing_keys_generate(key2, k2.sha256))
        return 1;
    strcpy(k2.name, "slow");
    strcpy(k2.tenant, "t2");
    k2.rpm = 2;
    if (ing_keys_add(&ks, &k2)) {
        fprintf(stderr, "keys: %s\n", ks.err);
        return 1;
    }
    rl_len = ing_rl_size(ing_keys_nbuckets(&ks), 2);
    rl_mem = mmap(NULL, rl_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (rl_mem == MAP_FAILED || ing_rl_init(rl_mem, rl_len, ing_keys_nbuckets(&ks), 2, 0))
        return 1;
    if (pipe(p1) || pipe(p2))
        return 1;
    port = 0;
    w0 = start_worker(0, &ks, p1[1]);
    close(p1[1]);
    port = wait_port(p1[0]);
    if (!port)
        return 1;
    w1 = start_worker(1, &ks, p2[1]); /* same port: SO_REUSEPORT */
    close(p2[1]);
    CHECK(wait_port(p2[0]) == port);
    fprintf(stderr, "workers on 127.0.0.1:%u\n", port);

    /* keys: /health is open, the API routes want the key */
    r = ask("GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(strstr(r, "HTTP/1.1 200 ") == r);
    free(r);
    r = ask("GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(strstr(r, "HTTP/1.1 401 ") == r);
    CHECK(strstr(r, "\"code\":\"invalid_api_key\"") && strstr(r, "\"type\":\"authentication_error\""));
    CHECK(strstr(r, "WWW-Authenticate: Bearer\r\n") != NULL);
    free(r);
    r = ask("GET /v1/models HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer favo-wrong\r\n\r\n");
    CHECK(strstr(r, "HTTP/1.1 401 ") == r && !strstr(r, "favo-wrong"));
    free(r);
    snprintf(req, sizeof(req), "GET /v1/models HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n\r\n",
             key);
    r = ask(req);
    CHECK(strstr(r, "HTTP/1.1 200 ") == r);
    free(r);

    /* rate limit: 2 requests a minute for key2, over both workers */
    snprintf(req, sizeof(req), "GET /v1/models HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n\r\n",
             key2);
    for (int i = 0; i < 3; i++) {
        r = ask(req);
        if (i < 2) {
            CHECK(strstr(r, "HTTP/1.1 200 ") == r);
            CHECK(strstr(r, "x-ratelimit-limit-requests: 2\r\n") != NULL);
        } else {
            CHECK(strstr(r, "HTTP/1.1 429 ") == r);
            CHECK(strstr(r, "retry-after: ") && strstr(r, "x-ratelimit-remaining-requests: 0\r\n"));
            CHECK(strstr(r, "\"code\":\"rate_limit_exceeded\"") && strstr(r, "\"type\":\"requests\""));
        }
        free(r);
    }
    explicit_bzero(key2, sizeof(key2));

    /* HEAD: the GET's headers, no body */
    r = ask("HEAD /health HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(strstr(r, "HTTP/1.1 200 ") == r && strstr(r, "Content-Length: 15\r\n"));
    CHECK(strstr(r, "\r\n\r\n") && strstr(r, "\r\n\r\n")[4] == 0);
    free(r);

    /* both workers take connections (request ids carry the worker) */
    bool seen[2] = { false, false };
    for (int i = 0; i < 40 && !(seen[0] && seen[1]); i++) {
        r = ask("GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        char *id = strstr(r, "X-Request-Id: req-");
        if (id && (id[18] == '0' && (id[19] == '0' || id[19] == '1')))
            seen[id[19] - '0'] = true;
        free(r);
    }
    CHECK(seen[0] && seen[1]);

    /* drain: requests half-read on both workers when TERM arrives are
     * still answered, with Connection: close */
    int fds[8];
    for (int i = 0; i < 8; i++) {
        fds[i] = conn_new(&e);
        CHECK(fds[i] >= 0);
        if (fds[i] >= 0)
            CHECK(send(fds[i], "GET /health HTTP/1.1\r\nHost: t\r\n", 31, MSG_NOSIGNAL) == 31);
    }
    usleep(200000);
    kill(w0, SIGTERM);
    kill(w1, SIGTERM);
    usleep(200000);
    for (int i = 0; i < 8; i++) {
        bool eof;
        if (fds[i] < 0)
            continue;
        CHECK(send(fds[i], "\r\n", 2, MSG_NOSIGNAL) == 2);
        r = read_all(fds[i], &eof);
        CHECK(strstr(r, "HTTP/1.1 200 ") == r);
        CHECK(strstr(r, "Connection: close\r\n") != NULL);
        CHECK(eof);
        free(r);
        close(fds[i]);
    }
    int st0 = 0, st1 = 0;
    CHECK(waitpid(w0, &st0, 0) == w0 && WIFEXITED(st0) && WEXITSTATUS(st0) == 0);
    CHECK(waitpid(w1, &st1, 0) == w1 && WIFEXITED(st1) && WEXITSTATUS(st1) == 0);
    CHECK(conn_new(&e) < 0 && e == ECONNREFUSED);

    explicit_bzero(key, sizeof(key));
    ing_keys_free(&ks);
    if (fails) {
        fprintf(stderr, "%d checks failed\n", fails);
        return 1;
    }
    printf("ok\n");
    return 0;
}
