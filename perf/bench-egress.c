/*
 * bench-egress.c - egress overhead per token: from the moment a token is
 * handed to egress (its TOKENS event published on the ev ring and the
 * egress bell rung, exactly what the batcher does with an engine step's
 * results) to the moment its bytes are on the client's socket.
 *
 * The real egress stage (egr_stage_run) runs in a forked child, through
 * the real pipe in a memfd data segment, with a stats writer and an access
 * log, on real loopback TCP connections handed over with SCM_RIGHTS. This
 * program plays its neighbours, as tests/test-egress-stage.c does:
 *   ingress  opens S keep-alive client connections, hands the accepted
 *            ends to egress, makes one streaming chat request cell per
 *            stream and round (shm_req copy, prompt ids);
 *   batcher  per step: writes one id per stream into its cell, takes
 *            t_pub = CLOCK_MONOTONIC, enqueues the S TOKENS events and
 *            rings the bell once (as bat_stage publishes a step);
 *            FINISH (length) after T steps; reads KEEP messages, drains
 *            returned cells;
 *   client   reads each stream's SSE chunk for the step and takes the
 *            kernel's receive timestamp of its first byte (SO_TIMESTAMPNS:
 *            when the bytes reached the socket; loopback delivers inside
 *            egress's send), so the client's own wake-up is not counted.
 *            The user-space receive time is reported too.
 * Then it waits --step-us between steps (default 1000: an engine step on
 * a CPU takes milliseconds, so egress goes back to sleep between steps and
 * its wake-up is part of the figure, as in production).
 *
 * Why not the CPU engine or the null backend: no stage records when the
 * engine produced a token (shm_ev carries t_ns for START only), so from
 * outside a real pipeline the result time is unknown. Here the token
 * source is the bench itself; the engine -> batcher hop (one ring hop and
 * a wake-up, see bench-ring) is not included. egress_us is per token:
 * t_sock - t_pub for every stream of every step, so a stream served last
 * in a step of S includes the S - 1 before it (egress formats one event
 * after another), which is the cost "many concurrent streams" adds.
 *
 * usage: bench-egress [--json] [--streams S] [--tokens T] [--duration S]
 *                     [--step-us US] [--poll block|adaptive|spin]
 *                     [--model GGUF] [--trace] [--fifo]
 *
 * A reference row follows: the same connections and bytes per event sent
 * by this program alone, one io_uring submit per step (run_floor): the
 * kernel's part, which no change in egress removes.
 *
 * --fifo: egress runs at SCHED_FIFO priority 1 (root or CAP_SYS_NICE), as
 * the change proposed for favo serve's stages sharing cores would run it;
 * it also keeps other programs on a shared machine from preempting it.
 *
 * --trace: egress records its phases per burst of events (FAVO_EGR_TRACE,
 * egr_stage.c) and the bench adds where the time of a step went: the
 * batcher's publication -> egress awake -> every event of the burst
 * formatted -> every send submitted (they run inline in the submit).
 *        bench-egress --pipeline [--backend cpu|null] [--favo PATH] [--json] [--trace]
 *                     [--streams S] [--tokens T] [--duration S] [--model GGUF]
 *
 * --pipeline: the whole `favo serve` with the CPU engine (default; null
 * with --backend null), S concurrent streaming completions of T tokens in
 * rounds for --duration seconds, and the figure read back from the
 * server's own "egress" histogram (`favo stat --json`: the batcher stamps
 * TOKENS events with their publication time, egress observes send
 * completion - stamp). Bucketed (the stats segment's histogram), so
 * coarser than the default mode. A favo without that histogram: exit 77.
 * model: --model, else $FAVO_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf, else
 * the default model; exits 77 when none is found.
 */
#include "dp.h"
#include "egr_stage.h"
#include "eng_tok.h"
#include "favo_base.h"
#include "perf_util.h"
#include "shm_fdpass.h"
#include "shm_pipe.h"
#include "shm_seg.h"
#include "shm_stats.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define GEN 11u
#define MAX_STREAMS 512

struct opts {
    unsigned streams, tokens, step_us, duration;
    int poll;
    bool json, pipeline, trace, fifo;
    const char *backend;
    char model[1024], favo[1024];
};

struct stream {
    int fd;
    uint64_t key;
    shm_cell_ref_t cell;
    char *data;
    struct shm_req *q;
    uint64_t id;
    /* this step */
    bool got, done;
    uint64_t t_sock, t_user;
    size_t nbytes;
    char tail[8]; /* last bytes read, to find a chunk's end */
};

static struct {
    struct shm_seg seg;
    struct shm_pipe p;
    struct shm_cell_pool pool;
    shm_ring_t ev, ctl, conn;
    shm_bell_efd_t egr_bell;
    int egr_efd, ing_efd, sv[2], lfd, log_fd;
    uint16_t port;
    pid_t pid;
    volatile int *stop;
    struct shm_stats stats;
    bool stats_ok;
    const char *model;
    int poll;
    uint64_t next_id;
    int64_t mono_minus_real; /* CLOCK_MONOTONIC - CLOCK_REALTIME, ns */
    char trace[64];          /* FAVO_EGR_TRACE file; "": off */
    bool fifo;               /* egress at SCHED_FIFO 1 */
} H;

static struct stream S[MAX_STREAMS];

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    fputs("bench-egress: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (H.pid > 0)
        kill(H.pid, SIGKILL);
    if (H.stats_ok) /* no stale /favo.bench-egress-PID left behind */
        shm_stats_destroy(&H.stats);
    exit(1);
}

static uint64_t ts_ns(clockid_t c)
{
    struct timespec ts;

    clock_gettime(c, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The offset between the clocks, from the tightest of a few reading pairs. */
static void clock_sync(void)
{
    uint64_t best = UINT64_MAX;

    for (int i = 0; i < 16; i++) {
        uint64_t a = ts_ns(CLOCK_MONOTONIC), r = ts_ns(CLOCK_REALTIME),
                 b = ts_ns(CLOCK_MONOTONIC);

        if (b - a < best) {
            best = b - a;
            H.mono_minus_real = (int64_t)(a + (b - a) / 2) - (int64_t)r;
        }
    }
}

static uint64_t child_cpu_ns(void)
{
    char path[64], buf[1024], *p;
    unsigned long ut = 0, st = 0;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/stat", (int)H.pid);
    f = fopen(path, "r");
    if (!f)
        return 0;
    if (!fgets(buf, sizeof(buf), f))
        buf[0] = 0;
    fclose(f);
    p = strrchr(buf, ')');
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (uint64_t)(ut + st) * (1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK));
}

/* ------------------------------------------------------------- set-up */

static void spawn(void)
{
    if (H.trace[0] && setenv("FAVO_EGR_TRACE", H.trace, 1))
        die("setenv: %s", strerror(errno));
    H.pid = fork();
    if (H.pid < 0)
        die("fork: %s", strerror(errno));
    if (H.pid == 0) {
        struct egr_stage_cfg ec = { 0 };
        struct shm_stats_writer w;

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(H.sv[0]);
        if (H.fifo) {
            struct sched_param sp = { .sched_priority = 1 };

            if (sched_setscheduler(0, SCHED_FIFO, &sp))
                fprintf(stderr, "bench-egress: SCHED_FIFO: %s\n", strerror(errno));
        }
        ec.pipe = &H.p;
        ec.fdpass_sock = H.sv[1];
        ec.bell_efd = H.egr_efd;
        for (unsigned i = 0; i < SHM_PIPE_MAX_INGRESS; i++)
            ec.ing_bell_efd[i] = -1;
        ec.ing_bell_efd[0] = H.ing_efd;
        ec.model_path = H.model;
        ec.write_timeout_ms = 30000;
        ec.log_fd = H.log_fd;
        ec.poll = H.poll;
        ec.stop = H.stop;
        if (H.stats_ok && shm_stats_writer_init(&H.stats, 0, SHM_STAGE_EGRESS, 0, 0, &w) == 0) {
            ec.stats = &H.stats;
            ec.stats_w = &w;
        }
        int rc = egr_stage_run(&ec);

        if (ec.stats_w)
            shm_stats_writer_free(ec.stats_w);
        exit(rc == 0 ? 0 : 3);
    }
    close(H.sv[1]);
    shm_pipe_set_sup(&H.p, SHM_PIPE_EGRESS, 0, H.pid); /* the supervisor's word */
}

static void setup(unsigned streams)
{
    struct shm_pipe_cfg c = { 0 };
    struct shm_seg_spec spec = { "pipe", 0, 4096 };
    struct sockaddr_in a = { .sin_family = AF_INET };
    socklen_t al = sizeof(a);
    char path[] = "/tmp/favo-bench-egress-log-XXXXXX", name[64];
    size_t len, cl;
    void *mem, *cm;
    uint32_t ring = 64;

    while (ring < 4 * streams)
        ring <<= 1;
    c.n_ingress = 1;
    c.n_ranks = 1;
    c.sched_bytes = 4096;
    c.plan_bytes = 4096;
    c.max_seqs = 8;
    c.result_size = 8;
    c.ev_ring = ring;
    c.conn_ring = ring;
    c.ctl_ring = ring;
    c.cells.nclasses = 1;
    c.cells.classes[0].cell_size = 64 << 10; /* favo serve's smallest class */
    c.cells.classes[0].ncells = 2 * streams + 8;
    spec.size = shm_pipe_size(&c);
    if (shm_seg_create_data(&H.seg, &spec, 1) || !(mem = shm_seg_region(&H.seg, "pipe", &len)) ||
        shm_pipe_init(&H.p, mem, len, &c, GEN))
        die("data segment set-up failed");
    shm_seg_publish(&H.seg);
    snprintf(H.p.hdr->model_id, sizeof(H.p.hdr->model_id), "bench-model");
    H.egr_efd = shm_bell_efd_open();
    H.ing_efd = shm_bell_efd_open();
    if (H.egr_efd < 0 || H.ing_efd < 0 || shm_fdpass_pair(H.sv))
        die("bells / socket pair");
    H.stop = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (H.stop == MAP_FAILED)
        die("mmap");
    H.log_fd = mkstemp(path); /* the access log: egress writes one line per response */
    if (H.log_fd < 0)
        die("mkstemp: %s", strerror(errno));
    unlink(path);
    snprintf(name, sizeof(name), "bench-egress-%d", (int)getpid());
    H.stats_ok = shm_stats_create(&H.stats, name, 2, 2) == 0;
    spawn();
    cm = shm_pipe_cells(&H.p, &cl);
    if (shm_cell_pool_attach(&H.pool, cm, cl, GEN, SHM_CELL_ROLE_ALLOCATOR, -1) ||
        shm_pipe_ring_ev(&H.p, SHM_RING_PRODUCER, &H.ev) ||
        shm_pipe_ring_ctl(&H.p, SHM_RING_CONSUMER, &H.ctl) ||
        shm_pipe_ring_conn(&H.p, 0, SHM_RING_CONSUMER, &H.conn) ||
        shm_pipe_bell_egr(&H.p, H.egr_efd, false, &H.egr_bell))
        die("pipe attach failed");
    H.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (H.lfd < 0 || bind(H.lfd, (struct sockaddr *)&a, sizeof(a)) || listen(H.lfd, 1024) ||
        getsockname(H.lfd, (struct sockaddr *)&a, &al))
        die("listen: %s", strerror(errno));
    H.port = ntohs(a.sin_port);
    for (uint64_t t0 = favo_now_ns(); !shm_pipe_stage_up(&H.p, SHM_PIPE_EGRESS, 0);) {
        if (favo_now_ns() - t0 > 10000000000ull || waitpid(H.pid, NULL, WNOHANG) == H.pid)
            die("egress did not come up");
        usleep(1000);
    }
}

static void finish(void)
{
    int st;
    uint64_t t0 = favo_now_ns();

    *H.stop = 1;
    shm_bell_efd_ring(&H.egr_bell);
    while (waitpid(H.pid, &st, WNOHANG) != H.pid) {
        if (favo_now_ns() - t0 > 5000000000ull) {
            kill(H.pid, SIGKILL);
            waitpid(H.pid, &st, 0);
            break;
        }
        usleep(1000);
    }
    H.pid = 0;
    if (H.stats_ok)
        shm_stats_destroy(&H.stats);
    H.stats_ok = false;
    shm_seg_destroy(&H.seg);
}

/* A client connection whose accepted end goes to egress (ingress's part). */
static void client_open(struct stream *s, unsigned slot)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(H.port) };
    int one = 1, fd;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s->fd < 0 || connect(s->fd, (struct sockaddr *)&a, sizeof(a)) < 0)
        die("connect: %s", strerror(errno));
    if (setsockopt(s->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)))
        die("SO_TIMESTAMPNS: %s", strerror(errno));
    fd = accept4(H.lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0)
        die("accept: %s", strerror(errno));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* as ingress does */
    s->key = ((uint64_t)(slot + 1) << 24) | ((slot * 7u + 1u) & 0xffffffu);
    if (shm_fdpass_send(H.sv[0], fd, &s->key, sizeof(s->key)))
        die("fd handoff failed");
    close(fd);
}

/* A streaming chat request cell, as ingress leaves it, and START. */
static void req_make(struct stream *s, uint32_t max_tokens)
{
    static const char body[] = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n{}";
    uint32_t tok_off = (sizeof(body) + 63u) & ~63u, ntok = 5;
    size_t need = shm_pipe_cell_need(tok_off, ntok, max_tokens, true), size;
    struct shm_req d;
    void *data;

    if (shm_cell_alloc(&H.pool, need, &s->cell) ||
        shm_cell_get(&H.pool, s->cell, SHM_CELL_INGRESS, &data, &size))
        die("no cell for %zu bytes", need);
    s->data = data;
    memcpy(s->data, body, sizeof(body));
    for (uint32_t i = 0; i < ntok; i++)
        ((int32_t *)(s->data + tok_off))[i] = 100 + (int32_t)i;
    memset(&d, 0, sizeof(d));
    d.magic = SHM_REQ_MAGIC;
    d.kind = SHM_REQ_SUBMIT;
    d.route = SHM_REQ_CHAT;
    d.flags = SHM_REQ_F_STREAM;
    d.cell = s->cell;
    d.conn = s->key;
    d.recv_ns = favo_now_ns();
    d.created = 1700000000;
    d.tok_off = tok_off;
    d.ntok = ntok;
    d.max_tokens = max_tokens;
    d.resp_off = (uint32_t)shm_pipe_resp_off(tok_off, ntok, max_tokens);
    d.prio = 3;
    d.reqid_len = (uint32_t)snprintf(d.reqid, sizeof(d.reqid), "req-bench%04u",
                                     (unsigned)(s - S));
    memcpy(s->data + d.resp_off, &d, sizeof(d));
    s->q = (struct shm_req *)(s->data + d.resp_off);
    if (shm_cell_set_len(&H.pool, s->cell, SHM_CELL_INGRESS, d.resp_off + SHM_PIPE_REQ_COPY) ||
        shm_cell_give(&H.pool, s->cell, SHM_CELL_INGRESS, SHM_CELL_BATCHER))
        die("cell hand-over");
    s->id = ++H.next_id;
}

/* ------------------------------------------------------------ batcher */

static void ev_push(const struct stream *s, unsigned kind, uint32_t n_gen, unsigned reason,
                    uint64_t t)
{
    struct shm_ev e = { .cell = s->cell, .id = s->id, .kind = kind, .n_gen = n_gen,
                        .reason = (uint16_t)reason, .t_ns = t };
    uint64_t t0 = favo_now_ns();

    if (kind == SHM_EV_FINISH &&
        shm_cell_give(&H.pool, s->cell, SHM_CELL_BATCHER, SHM_CELL_EGRESS))
        die("give to egress");
    while (shm_ring_enqueue(&H.ev, &e) < 0) {
        shm_bell_efd_ring(&H.egr_bell);
        if (favo_now_ns() - t0 > 5000000000ull)
            die("the ev ring stays full");
        usleep(50);
    }
}

/* ------------------------------------------------------------- client */

/* Read what is there on s; stamps the first read of the step. Returns
 * bytes read, 0 when nothing was there, -1 on EOF/error. */
static ssize_t client_read(struct stream *s)
{
    char buf[65536], cbuf[CMSG_SPACE(sizeof(struct timespec))];
    struct iovec iov = { buf, sizeof(buf) };
    struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                        .msg_controllen = sizeof(cbuf) };
    ssize_t n = recvmsg(s->fd, &m, MSG_DONTWAIT);

    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
    if (n <= 0)
        return -1;
    if (!s->nbytes) {
        s->t_user = favo_now_ns();
        s->t_sock = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
                struct timespec ts;

                memcpy(&ts, CMSG_DATA(c), sizeof(ts));
                s->t_sock = (uint64_t)((int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec +
                                       H.mono_minus_real);
            }
        }
    }
    s->nbytes += (size_t)n;
    if (n >= (ssize_t)sizeof(s->tail)) {
        memcpy(s->tail, buf + n - (ssize_t)sizeof(s->tail), sizeof(s->tail));
    } else {
        memmove(s->tail, s->tail + n, sizeof(s->tail) - (size_t)n);
        memcpy(s->tail + sizeof(s->tail) - (size_t)n, buf, (size_t)n);
    }
    return n;
}

static bool tail_is(const struct stream *s, const char *end)
{
    size_t l = strlen(end);

    return !memcmp(s->tail + sizeof(s->tail) - l, end, l);
}

/* Read every stream until its data for this step ends with `end` (an SSE
 * event in a chunk: "\n\n\r\n"; the stream's end: "0\r\n\r\n"). Streams
 * that produce nothing within timeout_ms are left (returns how many). */
static unsigned client_collect(struct stream *ss, unsigned ns, const char *end,
                               unsigned timeout_ms)
{
    struct pollfd pf[MAX_STREAMS];
    uint64_t t0 = favo_now_ns();
    unsigned left = ns;

    for (unsigned i = 0; i < ns; i++) {
        ss[i].done = false;
        ss[i].nbytes = 0;
    }
    while (left) {
        unsigned np = 0;
        int idx[MAX_STREAMS];

        for (unsigned i = 0; i < ns; i++) {
            if (ss[i].done)
                continue;
            pf[np].fd = ss[i].fd;
            pf[np].events = POLLIN;
            idx[np++] = (int)i;
        }
        int r = poll(pf, np, 50);

        if (r < 0 && errno != EINTR)
            die("poll: %s", strerror(errno));
        for (unsigned k = 0; k < np && r > 0; k++) {
            struct stream *s = &ss[idx[k]];

            if (!(pf[k].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            while (client_read(s) > 0)
                ;
            if (s->nbytes && tail_is(s, end)) {
                s->done = true;
                left--;
            }
        }
        if (favo_now_ns() - t0 > (uint64_t)timeout_ms * 1000000ull)
            break;
    }
    return left;
}

/* ------------------------------------------------------------- floor */

/*
 * The kernel's part, for reference: the same S loopback connections and
 * bytes per event (a chunk-framed SSE event of --floor-bytes), written by
 * this program alone in one io_uring submit per step, as egress submits a
 * burst - no events, no formatting, no wake-up. What is left above this
 * in egress_us is egress's own.
 */
/*
 * reader: the clients are read by a second thread that sleeps in poll()
 * while the sends run, as egress's clients do (in the default mode this
 * program's main thread reads while egress sends from another process).
 * Then every send that finds the reader asleep wakes it from inside the
 * send (sock_def_readable -> try_to_wake_up), which the plain reference,
 * whose reader is the sending thread itself, never pays.
 */
static struct {
    struct stream *F;
    unsigned ns, left;
    sem_t go, done;
    bool stop;
} RD;

static void *floor_reader(void *arg)
{
    (void)arg;
    for (;;) {
        while (sem_wait(&RD.go) < 0 && errno == EINTR)
            ;
        if (RD.stop)
            return NULL;
        RD.left = client_collect(RD.F, RD.ns, "\n\n\r\n", 2000);
        sem_post(&RD.done);
    }
}

static void run_floor(unsigned ns, unsigned steps, unsigned step_us, size_t bytes, bool reader,
                      uint64_t *lat, size_t *nlat, uint64_t *span, size_t *nspan)
{
    pthread_t rt;
    static struct stream F[MAX_STREAMS];
    static char ev[4096];
    int srv[MAX_STREAMS], one = 1;
    struct io_uring ring;
    struct io_uring_params p;

    if (bytes < 16 || bytes > sizeof(ev))
        die("floor: bad event size %zu", bytes);
    memset(ev, 'x', bytes);
    memcpy(ev, "ff\r\ndata: ", 10);
    memcpy(ev + bytes - 4, "\n\n\r\n", 4);
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    if (io_uring_queue_init_params(MAX_STREAMS, &ring, &p) < 0 &&
        io_uring_queue_init(MAX_STREAMS, &ring, 0) < 0)
        die("floor: io_uring set-up failed");
    for (unsigned i = 0; i < ns; i++) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(H.port) };

        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        F[i].fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (F[i].fd < 0 || connect(F[i].fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
            setsockopt(F[i].fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)))
            die("floor: connect: %s", strerror(errno));
        srv[i] = accept4(H.lfd, NULL, NULL, SOCK_CLOEXEC);
        if (srv[i] < 0)
            die("floor: accept: %s", strerror(errno));
        setsockopt(srv[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    if (reader) {
        RD.F = F;
        RD.ns = ns;
        RD.stop = false;
        if (sem_init(&RD.go, 0, 0) || sem_init(&RD.done, 0, 0) ||
            pthread_create(&rt, NULL, floor_reader, NULL))
            die("floor: reader thread");
    }
    for (unsigned k = 0; k < steps; k++) {
        struct io_uring_cqe *cqe;
        uint64_t t_pub, last = 0;
        unsigned head, n = 0;

        if (reader)
            sem_post(&RD.go); /* it polls, finds nothing and sleeps */
        usleep(step_us);
        t_pub = favo_now_ns();
        for (unsigned i = 0; i < ns; i++) {
            struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);

            io_uring_prep_send(sqe, srv[i], ev, bytes, MSG_NOSIGNAL);
        }
        io_uring_submit_and_get_events(&ring);
        io_uring_for_each_cqe(&ring, head, cqe) {
            if (cqe->res != (int)bytes)
                die("floor: send returned %d", cqe->res);
            n++;
        }
        io_uring_cq_advance(&ring, n);
        if (n != ns)
            die("floor: %u of %u sends completed inline", n, ns);
        if (reader) {
            while (sem_wait(&RD.done) < 0 && errno == EINTR)
                ;
        } else {
            RD.left = client_collect(F, ns, "\n\n\r\n", 2000);
        }
        if (RD.left)
            die("floor: a stream missed a step");
        for (unsigned i = 0; i < ns; i++) {
            uint64_t t = F[i].t_sock;

            if (t > last)
                last = t;
            lat[(*nlat)++] = t > t_pub ? t - t_pub : 0;
        }
        span[(*nspan)++] = last > t_pub ? last - t_pub : 0;
    }
    if (reader) {
        RD.stop = true;
        sem_post(&RD.go);
        pthread_join(rt, NULL);
        sem_destroy(&RD.go);
        sem_destroy(&RD.done);
    }
    io_uring_queue_exit(&ring);
    for (unsigned i = 0; i < ns; i++) {
        close(F[i].fd);
        close(srv[i]);
    }
}

/* ---------------------------------------------------------------- main */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return (x > y) - (x < y);
}

static double q_us(uint64_t *v, size_t n, double q)
{
    size_t i = (size_t)(q * (double)n);

    if (!n)
        return 0;
    if (i >= n)
        i = n - 1;
    return (double)v[i] / 1000.0;
}

/* --trace: egress's per-burst phase records (egr_stage.c, FAVO_EGR_TRACE)
 * turned into quantiles: where the time between the batcher's publication
 * and the last send of its burst went. */
enum { TR_WAKE, TR_START, TR_FMT_EV, TR_FMT, TR_SEND_EV, TR_SEND, TR_SPAN, TR__N };
static const char *const tr_name[TR__N] = {
    "publish -> egress awake (after a sleep)",
    "publish -> first event applied",
    "applying an event (format + prepare send)",
    "burst: applying all its events",
    "send, per send (inline in the submit)",
    "burst: submitting all its sends",
    "publish -> burst's last send returned",
};
static const char *const tr_key[TR__N] = { "wake", "start", "apply_event", "apply_burst",
                                           "send_each", "send_burst", "span" };

static void trace_report(const struct opts *o)
{
    FILE *f = fopen(H.trace, "r");
    uint64_t *v[TR__N], pub, wake, d0, d1, s1;
    size_t n[TR__N] = { 0 }, cap = 1u << 17, bursts = 0, evs = 0;
    unsigned nev, nsend;
    char line[256];

    if (!f) {
        fprintf(stderr, "bench-egress: no trace from egress (%s)\n", H.trace);
        return;
    }
    for (int k = 0; k < TR__N; k++)
        if (!(v[k] = malloc(cap * sizeof(uint64_t))))
            die("out of memory");
    while (fgets(line, sizeof(line), f)) {
        if (line[0] == '#' ||
            sscanf(line, "%" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %u %u", &pub, &wake, &d0, &d1, &s1, &nev,
                   &nsend) != 7 || !pub || !nev || n[TR_SPAN] >= cap)
            continue;
        bursts++;
        evs += nev;
        if (wake > pub)
            v[TR_WAKE][n[TR_WAKE]++] = wake - pub;
        v[TR_START][n[TR_START]++] = d0 > pub ? d0 - pub : 0;
        v[TR_FMT_EV][n[TR_FMT_EV]++] = (d1 - d0) / nev;
        v[TR_FMT][n[TR_FMT]++] = d1 - d0;
        if (nsend)
            v[TR_SEND_EV][n[TR_SEND_EV]++] = (s1 - d1) / nsend;
        v[TR_SEND][n[TR_SEND]++] = s1 - d1;
        v[TR_SPAN][n[TR_SPAN]++] = s1 > pub ? s1 - pub : 0;
    }
    fclose(f);
    unlink(H.trace);
    for (int k = 0; k < TR__N; k++)
        qsort(v[k], n[k], sizeof(uint64_t), cmp_u64);
    if (o->json) {
        char key[64];

        for (int k = 0; k < TR__N; k++) {
            snprintf(key, sizeof(key), "trace_%s_us_p50", tr_key[k]);
            perf_json_num(stdout, key, q_us(v[k], n[k], 0.5));
            snprintf(key, sizeof(key), "trace_%s_us_p99", tr_key[k]);
            perf_json_num(stdout, key, q_us(v[k], n[k], 0.99));
        }
        perf_json_num(stdout, "trace_bursts", (double)bursts);
    } else {
        printf("\negress phases (--trace: %zu bursts of token events, %.1f events each)\n",
               bursts, bursts ? (double)evs / (double)bursts : 0);
        printf("%-44s %9s %9s %9s %9s\n", "per burst (us)", "p50", "p90", "p99", "max");
        for (int k = 0; k < TR__N; k++)
            printf("%-44s %9.2f %9.2f %9.2f %9.2f\n", tr_name[k], q_us(v[k], n[k], 0.5),
                   q_us(v[k], n[k], 0.9), q_us(v[k], n[k], 0.99), q_us(v[k], n[k], 1.0));
    }
    for (int k = 0; k < TR__N; k++)
        free(v[k]);
}

static void loadavg(char *buf, size_t n)
{
    FILE *f = fopen("/proc/loadavg", "r");

    snprintf(buf, n, "?");
    if (f) {
        if (fgets(buf, (int)n, f))
            buf[strcspn(buf, "\n")] = 0;
        fclose(f);
    }
}

/* ------------------------------------------------- --pipeline: favo serve */

static pid_t serve_pid;

static void serve_stop(void)
{
    int st;

    if (serve_pid <= 0)
        return;
    kill(serve_pid, SIGTERM);
    for (int i = 0; i < 1500 && waitpid(serve_pid, &st, WNOHANG) != serve_pid; i++)
        usleep(20000);
    if (waitpid(serve_pid, &st, WNOHANG) == 0) {
        kill(serve_pid, SIGKILL);
        waitpid(serve_pid, &st, 0);
    }
    serve_pid = 0;
}

static char *slurp(FILE *f)
{
    size_t cap = 1 << 16, n = 0, r;
    char *buf = malloc(cap);

    while (buf && (r = fread(buf + n, 1, cap - 1 - n, f)) > 0) {
        n += r;
        if (n + 1 == cap) {
            char *nb = realloc(buf, cap *= 2);

            if (!nb) {
                free(buf);
                return NULL;
            }
            buf = nb;
        }
    }
    if (buf)
        buf[n] = 0;
    return buf;
}

/* "key":number inside the object that follows `"name":{` in json. */
static double json_hist(const char *json, const char *name, const char *key)
{
    char pat[64];
    const char *h, *e, *k;

    snprintf(pat, sizeof(pat), "\"%s\":{", name);
    h = strstr(json, pat);
    if (!h)
        return -1;
    e = strchr(h, '}');
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    k = strstr(h, pat);
    if (!k || (e && k > e))
        return -1;
    return strtod(k + strlen(pat), NULL);
}

static int stream_open(uint16_t port, unsigned i, unsigned tokens)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    char body[256], req[1024];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), n, b;

    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)))
        die("connect to favo: %s", strerror(errno));
    b = snprintf(body, sizeof(body),
                 "{\"prompt\":\"Write a long story about the number %u.\",\"max_tokens\":%u,"
                 "\"stream\":true,\"temperature\":0.9,\"seed\":%u}",
                 i, tokens, i + 1);
    n = snprintf(req, sizeof(req),
                 "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                 b, body);
    if (write(fd, req, (size_t)n) != n)
        die("write to favo: %s", strerror(errno));
    return fd;
}

static int run_pipeline(const struct opts *o)
{
    char dir[] = "/tmp/favo-bench-egress-XXXXXX", log[1200], acc[1200], inst[64], cmd[2600];
    char *text = NULL, *m, *json, machine[256], load[128];
    uint16_t port = 0;
    uint64_t t0;
    unsigned rounds = 0;
    double count, p50, p90, p99, sum;
    FILE *f;

    if (!mkdtemp(dir))
        die("mkdtemp: %s", strerror(errno));
    snprintf(log, sizeof(log), "%s/favo.log", dir);
    snprintf(acc, sizeof(acc), "%s/access.log", dir);
    snprintf(inst, sizeof(inst), "bench-egress-%d", (int)getpid());
    if (H.trace[0] && setenv("FAVO_EGR_TRACE", H.trace, 1)) /* favo serve's egress */
        die("setenv: %s", strerror(errno));
    serve_pid = fork();
    if (serve_pid < 0)
        die("fork: %s", strerror(errno));
    if (serve_pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
            _exit(127);
        execl(o->favo, o->favo, "serve", "--backend", o->backend, "--port", "0", "--instance",
              inst, "--access-log", acc, "--model", o->model, (char *)NULL);
        _exit(127);
    }
    atexit(serve_stop);
    for (t0 = favo_now_ns(); favo_now_ns() - t0 < 120000000000ull; usleep(50000)) {
        FILE *lf = fopen(log, "r");

        free(text);
        text = lf ? slurp(lf) : NULL;
        if (lf)
            fclose(lf);
        if (text && strstr(text, "ready in") && (m = strstr(text, "on http://127.0.0.1:"))) {
            port = (uint16_t)atoi(m + 20);
            break;
        }
        if (waitpid(serve_pid, NULL, WNOHANG) == serve_pid) {
            serve_pid = 0;
            die("favo serve exited:\n%s", text ? text : "");
        }
    }
    free(text);
    if (!port)
        die("favo serve was not ready in 120 s");

    t0 = favo_now_ns();
    do {
        struct pollfd pf[MAX_STREAMS];
        char tail[MAX_STREAMS][5], buf[65536];
        unsigned left = o->streams;

        memset(tail, 0, sizeof(tail));
        for (unsigned i = 0; i < o->streams; i++) {
            pf[i].fd = stream_open(port, rounds * o->streams + i, o->tokens);
            pf[i].events = POLLIN;
        }
        while (left) {
            if (poll(pf, o->streams, 60000) <= 0)
                die("streams stalled for 60 s");
            for (unsigned i = 0; i < o->streams; i++) {
                ssize_t n;

                if (pf[i].fd < 0 || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR)))
                    continue;
                n = read(pf[i].fd, buf, sizeof(buf));
                if (n <= 0)
                    die("stream %u ended early", i);
                if (n >= 5) {
                    memcpy(tail[i], buf + n - 5, 5);
                } else {
                    memmove(tail[i], tail[i] + n, (size_t)(5 - n));
                    memcpy(tail[i] + 5 - n, buf, (size_t)n);
                }
                if (!memcmp(tail[i], "0\r\n\r\n", 5)) {
                    close(pf[i].fd);
                    pf[i].fd = -1;
                    left--;
                }
            }
        }
        rounds++;
    } while (favo_now_ns() - t0 < (uint64_t)o->duration * 1000000000ull);

    snprintf(cmd, sizeof(cmd), "'%s' stat --instance '%s' --json", o->favo, inst);
    f = popen(cmd, "r");
    json = f ? slurp(f) : NULL;
    if (f)
        pclose(f);
    serve_stop();
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench-egress: could not remove %s\n", dir);
    if (!json)
        die("favo stat failed");
    count = json_hist(json, "egress", "count");
    if (count < 0) {
        fprintf(stderr, "bench-egress: SKIP: this favo's stats have no \"egress\" histogram "
                        "(the batcher/egress timestamps are not in this build)\n");
        free(json);
        return 77;
    }
    sum = json_hist(json, "egress", "sum_s");
    p50 = json_hist(json, "egress", "p50_s") * 1e6;
    p90 = json_hist(json, "egress", "p90_s") * 1e6;
    p99 = json_hist(json, "egress", "p99_s") * 1e6;
    perf_machine(machine, sizeof(machine));
    loadavg(load, sizeof(load));
    if (o->json) {
        perf_json_begin(stdout);
        perf_json_num(stdout, "egress_us_p50", p50);
        perf_json_num(stdout, "egress_us_p90", p90);
        perf_json_num(stdout, "egress_us_p99", p99);
        perf_json_num(stdout, "egress_us_mean", count > 0 ? sum * 1e6 / count : 0);
        perf_json_num(stdout, "samples", count);
        perf_json_num(stdout, "itl_ms_p50", json_hist(json, "itl", "p50_s") * 1e3);
        perf_json_num(stdout, "streams", o->streams);
        perf_json_num(stdout, "tokens", o->tokens);
        perf_json_num(stdout, "rounds", rounds);
        perf_json_str(stdout, "source", "favo serve, stats histogram");
        perf_json_str(stdout, "backend", o->backend);
        perf_json_str(stdout, "machine", machine);
        perf_json_str(stdout, "loadavg_after", load);
        if (o->trace)
            trace_report(o);
        perf_json_end(stdout);
    } else {
        printf("bench-egress --pipeline: favo serve --backend %s, %u concurrent streams x "
               "max %u tokens, %u rounds\n",
               o->backend, o->streams, o->tokens, rounds);
        printf("figure: favo's own \"egress\" histogram (batcher publishes TOKENS -> send "
               "completes), bucketed\n");
        printf("machine: %s; load average after: %s\n\n", machine, load);
        printf("%-44s %9s %9s %9s %9s\n", "per token (us)", "p50", "p90", "p99", "mean");
        printf("%-44s %9.1f %9.1f %9.1f %9.1f\n", "batcher publish -> send completed", p50, p90,
               p99, count > 0 ? sum * 1e6 / count : 0);
        printf("\n%.0f tokens; inter-token latency p50 %.2f ms\n", count,
               json_hist(json, "itl", "p50_s") * 1e3);
        if (o->trace)
            trace_report(o);
    }
    free(json);
    return 0;
}

static void usage(void)
{
    fputs("usage: bench-egress [--json] [--streams S] [--tokens T] [--duration S]\n"
          "                    [--step-us US] [--poll block|adaptive|spin] [--model GGUF]\n"
          "                    [--trace] [--fifo]\n"
          "       bench-egress --pipeline [--backend cpu|null] [--favo PATH] [--json] [--trace]\n"
          "                    [--streams S] [--tokens T] [--duration S] [--model GGUF]\n",
          stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    struct opts o = { .streams = 64, .tokens = 64, .step_us = 1000, .duration = 10,
                      .backend = "cpu" };
    bool set_streams = false, set_duration = false;
    char err[256], machine[256], load[128];
    eng_tok_t *tok = NULL;
    int32_t ids[512];
    int64_t nids;
    uint64_t *lat, *lat_user, *span, t_start, cpu0, cpu1;
    size_t nlat = 0, nspan = 0, cap, missed = 0, nflat = 0, nfspan = 0, ev_bytes = 0, n_ev = 0;
    size_t nrlat = 0, nrspan = 0;
    uint64_t *flat, *fspan, *rlat, *rspan;
    unsigned rounds = 0;
    static const char text[] =
        " the quick brown fox jumps over the lazy dog while a small model streams"
        " its answer word by word to many clients at once and every word becomes"
        " one server sent event on a keep alive connection";

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool v = i + 1 < argc;

        if (!strcmp(a, "--json"))
            o.json = true;
        else if (!strcmp(a, "--pipeline"))
            o.pipeline = true;
        else if (!strcmp(a, "--trace"))
            o.trace = true;
        else if (!strcmp(a, "--fifo"))
            o.fifo = true;
        else if (!strcmp(a, "--backend") && v)
            o.backend = argv[++i];
        else if (!strcmp(a, "--favo") && v)
            snprintf(o.favo, sizeof(o.favo), "%s", argv[++i]);
        else if (!strcmp(a, "--streams") && v) {
            o.streams = (unsigned)atoi(argv[++i]);
            set_streams = true;
        }
        else if (!strcmp(a, "--tokens") && v)
            o.tokens = (unsigned)atoi(argv[++i]);
        else if (!strcmp(a, "--duration") && v) {
            o.duration = (unsigned)atoi(argv[++i]);
            set_duration = true;
        }
        else if (!strcmp(a, "--step-us") && v)
            o.step_us = (unsigned)atoi(argv[++i]);
        else if (!strcmp(a, "--model") && v)
            snprintf(o.model, sizeof(o.model), "%s", argv[++i]);
        else if (!strcmp(a, "--poll") && v) {
            const char *p = argv[++i];

            o.poll = !strcmp(p, "block") ? 0 : !strcmp(p, "adaptive") ? 1 : !strcmp(p, "spin") ? 2 : -1;
            if (o.poll < 0)
                usage();
        } else
            usage();
    }
    if (!o.streams || o.streams > MAX_STREAMS || o.tokens < 2 || o.tokens > 4096 || !o.duration)
        usage();
    if (!o.model[0]) {
        const char *m = getenv("FAVO_MODELS");

        if (m)
            snprintf(o.model, sizeof(o.model), "%s/SmolLM2-135M-Instruct.Q4_1.gguf", m);
        if (!m || access(o.model, R_OK)) {
            const char *d = dp_default_model();

            snprintf(o.model, sizeof(o.model), "%s", d ? d : "");
        }
    }
    if (!o.model[0] || access(o.model, R_OK)) {
        fprintf(stderr, "bench-egress: SKIP: no model (--model, FAVO_MODELS or ./setup.sh)\n");
        return 77;
    }
    if (o.pipeline) {
        /* a CPU engine step for many sequences takes long on small hosts */
        if (!set_streams)
            o.streams = 32;
        if (!set_duration)
            o.duration = 20;
        if (strcmp(o.backend, "cpu") && strcmp(o.backend, "null"))
            usage();
        if (!o.favo[0]) {
            const char *env = getenv("FAVO_BIN");
            char self[900];
            ssize_t n;

            if (env && *env) {
                snprintf(o.favo, sizeof(o.favo), "%s", env);
            } else if ((n = readlink("/proc/self/exe", self, sizeof(self) - 1)) > 0) {
                self[n] = 0;
                snprintf(o.favo, sizeof(o.favo), "%s/../favo", dirname(self));
            }
        }
        if (access(o.favo, X_OK))
            die("favo binary not found at '%s' (--favo PATH or FAVO_BIN)", o.favo);
        if (o.trace)
            snprintf(H.trace, sizeof(H.trace), "/tmp/favo-bench-egress-trace-%d", (int)getpid());
        signal(SIGPIPE, SIG_IGN);
        return run_pipeline(&o);
    }
    if (eng_tok_load_file(&tok, o.model, err, sizeof(err)) < 0)
        die("tokenizer: %s", err);
    nids = eng_tok_encode(tok, text, strlen(text), 0, ids, 512);
    if (nids < 8 || nids > 512)
        die("could not encode the text");
    eng_tok_free(tok);

    signal(SIGPIPE, SIG_IGN);
    H.model = o.model;
    H.poll = o.poll;
    H.fifo = o.fifo;
    if (o.trace)
        snprintf(H.trace, sizeof(H.trace), "/tmp/favo-bench-egress-trace-%d", (int)getpid());
    setup(o.streams);
    for (unsigned i = 0; i < o.streams; i++)
        client_open(&S[i], i);
    clock_sync();

    cap = (size_t)o.streams * o.tokens * 64;
    lat = malloc(cap * sizeof(*lat));
    lat_user = malloc(cap * sizeof(*lat_user));
    span = malloc((size_t)o.tokens * 64 * sizeof(*span));
    if (!lat || !lat_user || !span)
        die("out of memory");

    t_start = favo_now_ns();
    cpu0 = child_cpu_ns();
    while (rounds < 64 && favo_now_ns() - t_start < (uint64_t)o.duration * 1000000000ull &&
           nlat + (size_t)o.streams * o.tokens <= cap) {
        struct shm_conn_msg cm;
        unsigned got_keep = 0;

        /* ingress: a request per stream; batcher: START */
        for (unsigned i = 0; i < o.streams; i++) {
            req_make(&S[i], o.tokens);
            ev_push(&S[i], SHM_EV_START, 0, 0, favo_now_ns());
        }
        shm_bell_efd_ring(&H.egr_bell);
        if (client_collect(S, o.streams, "\n\n\r\n", 5000)) /* head + role chunk */
            die("a stream did not start");
        for (unsigned k = 1; k <= o.tokens; k++) {
            uint64_t t_pub, last = 0;
            bool fin = k == o.tokens;

            usleep(o.step_us);
            for (unsigned i = 0; i < o.streams; i++) {
                int32_t *gen = (int32_t *)(S[i].data + S[i].q->tok_off) + S[i].q->ntok;

                gen[k - 1] = ids[(k - 1 + i) % (uint64_t)nids];
            }
            t_pub = favo_now_ns();
            for (unsigned i = 0; i < o.streams; i++)
                ev_push(&S[i], fin ? SHM_EV_FINISH : SHM_EV_TOKENS, k,
                        fin ? SHM_FIN_LENGTH : 0, t_pub);
            shm_bell_efd_ring(&H.egr_bell);
            missed += client_collect(S, o.streams, fin ? "0\r\n\r\n" : "\n\n\r\n", 2000);
            for (unsigned i = 0; i < o.streams; i++) {
                if (!S[i].done || !S[i].t_sock)
                    continue;
                if (!fin) {
                    ev_bytes += S[i].nbytes;
                    n_ev++;
                }
                /* the last step's figure holds the final chunk + [DONE] + end */
                if (S[i].t_sock > last)
                    last = S[i].t_sock;
                lat[nlat] = S[i].t_sock > t_pub ? S[i].t_sock - t_pub : 0;
                lat_user[nlat++] = S[i].t_user > t_pub ? S[i].t_user - t_pub : 0;
            }
            if (last)
                span[nspan++] = last - t_pub;
        }
        /* ingress: KEEP per response; allocator: returned cells */
        for (uint64_t t0 = favo_now_ns(); got_keep < o.streams;) {
            if (shm_ring_dequeue_burst(&H.conn, &cm, 1) == 1) {
                if (cm.what != SHM_CONN_KEEP)
                    die("egress closed a connection");
                got_keep++;
            } else if (favo_now_ns() - t0 > 5000000000ull) {
                die("only %u of %u KEEP messages", got_keep, o.streams);
            } else {
                usleep(100);
            }
        }
        for (uint64_t t0 = favo_now_ns();
             shm_cell_free_count(&H.pool, 0) < 2 * o.streams + 8;) {
            shm_cell_drain(&H.pool);
            if (favo_now_ns() - t0 > 5000000000ull)
                die("cells not returned");
            if (shm_cell_free_count(&H.pool, 0) < 2 * o.streams + 8)
                usleep(100);
        }
        rounds++;
    }
    cpu1 = child_cpu_ns();
    finish();
    /* the reference: the kernel's part of the same sends (run_floor) */
    unsigned fsteps = 1024;
    flat = malloc((size_t)fsteps * o.streams * sizeof(*flat));
    fspan = malloc(fsteps * sizeof(*fspan));
    if (!flat || !fspan)
        die("out of memory");
    run_floor(o.streams, fsteps, o.step_us, n_ev ? ev_bytes / n_ev : 250, false, flat, &nflat,
              fspan, &nfspan);
    qsort(flat, nflat, sizeof(*flat), cmp_u64);
    qsort(fspan, nfspan, sizeof(*fspan), cmp_u64);
    /* ... and with the clients read by a thread asleep in poll (RD) */
    rlat = malloc((size_t)fsteps * o.streams * sizeof(*rlat));
    rspan = malloc(fsteps * sizeof(*rspan));
    if (!rlat || !rspan)
        die("out of memory");
    run_floor(o.streams, fsteps, o.step_us, n_ev ? ev_bytes / n_ev : 250, true, rlat, &nrlat,
              rspan, &nrspan);
    qsort(rlat, nrlat, sizeof(*rlat), cmp_u64);
    qsort(rspan, nrspan, sizeof(*rspan), cmp_u64);
    for (unsigned i = 0; i < o.streams; i++)
        close(S[i].fd);

    qsort(lat, nlat, sizeof(*lat), cmp_u64);
    qsort(lat_user, nlat, sizeof(*lat_user), cmp_u64);
    qsort(span, nspan, sizeof(*span), cmp_u64);
    double cpu_us_tok = nlat ? (double)(cpu1 - cpu0) / 1000.0 / (double)nlat : 0;

    perf_machine(machine, sizeof(machine));
    loadavg(load, sizeof(load));
    if (o.json) {
        perf_json_begin(stdout);
        perf_json_num(stdout, "egress_us_p50", q_us(lat, nlat, 0.50));
        perf_json_num(stdout, "egress_us_p90", q_us(lat, nlat, 0.90));
        perf_json_num(stdout, "egress_us_p99", q_us(lat, nlat, 0.99));
        perf_json_num(stdout, "egress_us_max", q_us(lat, nlat, 1.0));
        perf_json_num(stdout, "egress_user_us_p50", q_us(lat_user, nlat, 0.50));
        perf_json_num(stdout, "egress_user_us_p99", q_us(lat_user, nlat, 0.99));
        perf_json_num(stdout, "step_span_us_p50", q_us(span, nspan, 0.50));
        perf_json_num(stdout, "step_span_us_p99", q_us(span, nspan, 0.99));
        perf_json_num(stdout, "floor_us_p50", q_us(flat, nflat, 0.50));
        perf_json_num(stdout, "floor_us_p99", q_us(flat, nflat, 0.99));
        perf_json_num(stdout, "floor_span_us_p50", q_us(fspan, nfspan, 0.50));
        perf_json_num(stdout, "floor_span_us_p99", q_us(fspan, nfspan, 0.99));
        perf_json_num(stdout, "floor_reader_us_p50", q_us(rlat, nrlat, 0.50));
        perf_json_num(stdout, "floor_reader_us_p99", q_us(rlat, nrlat, 0.99));
        perf_json_num(stdout, "floor_reader_span_us_p50", q_us(rspan, nrspan, 0.50));
        perf_json_num(stdout, "floor_reader_span_us_p99", q_us(rspan, nrspan, 0.99));
        perf_json_num(stdout, "floor_event_bytes", n_ev ? (double)(ev_bytes / n_ev) : 250);
        perf_json_str(stdout, "egress_sched", o.fifo ? "fifo" : "other");
        perf_json_num(stdout, "egress_cpu_us_per_token", cpu_us_tok);
        perf_json_num(stdout, "samples", (double)nlat);
        perf_json_num(stdout, "missed", (double)missed);
        perf_json_num(stdout, "streams", o.streams);
        perf_json_num(stdout, "tokens", o.tokens);
        perf_json_num(stdout, "rounds", rounds);
        perf_json_num(stdout, "step_us", o.step_us);
        perf_json_str(stdout, "poll", o.poll == 0 ? "block" : o.poll == 1 ? "adaptive" : "spin");
        perf_json_str(stdout, "source", "bench as batcher (no engine)");
        perf_json_str(stdout, "machine", machine);
        perf_json_str(stdout, "loadavg_after", load);
        if (o.trace)
            trace_report(&o);
        perf_json_end(stdout);
    } else {
        printf("bench-egress: %u concurrent streams x %u tokens, %u rounds, a step every "
               "%u us + delivery, egress poll %s%s\n",
               o.streams, o.tokens, rounds, o.step_us,
               o.poll == 0 ? "block" : o.poll == 1 ? "adaptive" : "spin",
               o.fifo ? ", SCHED_FIFO 1" : "");
        printf("token source: this program as the batcher (TOKENS published, bell rung); "
               "t_sock: kernel receive stamp\n");
        printf("machine: %s; load average after: %s\n\n", machine, load);
        printf("%-44s %9s %9s %9s %9s\n", "per token (us)", "p50", "p90", "p99", "max");
        printf("%-44s %9.1f %9.1f %9.1f %9.1f\n", "publish -> bytes on the socket (egress_us)",
               q_us(lat, nlat, 0.5), q_us(lat, nlat, 0.9), q_us(lat, nlat, 0.99),
               q_us(lat, nlat, 1.0));
        printf("%-44s %9.1f %9.1f %9.1f %9.1f\n", "publish -> client read (user space)",
               q_us(lat_user, nlat, 0.5), q_us(lat_user, nlat, 0.9),
               q_us(lat_user, nlat, 0.99), q_us(lat_user, nlat, 1.0));
        printf("%-44s %9.1f %9.1f %9.1f %9.1f\n", "per step: publish -> last stream's bytes",
               q_us(span, nspan, 0.5), q_us(span, nspan, 0.9), q_us(span, nspan, 0.99),
               q_us(span, nspan, 1.0));
        printf("reference, %u bare sends of %zu B per step in one submit, no egress:\n",
               o.streams, n_ev ? ev_bytes / n_ev : 250);
        printf("%-44s %9.1f %9.1f %9.1f %9.1f\n", "  submit -> bytes on the socket",
               q_us(flat, nflat, 0.5), q_us(flat, nflat, 0.9), q_us(flat, nflat, 0.99),
               q_us(flat, nflat, 1.0));
        printf("%-44s %9.1f %9.1f %9.1f %9.1f\n", "  per step: submit -> last stream's bytes",
               q_us(fspan, nfspan, 0.5), q_us(fspan, nfspan, 0.9), q_us(fspan, nfspan, 0.99),
               q_us(fspan, nfspan, 1.0));
        printf("reference, the same with the clients read by a thread asleep in poll (each "
               "send may wake it):\n");
        printf("%-44s %9.1f %9.1f %9.1f %9.1f\n", "  submit -> bytes on the socket",
               q_us(rlat, nrlat, 0.5), q_us(rlat, nrlat, 0.9), q_us(rlat, nrlat, 0.99),
               q_us(rlat, nrlat, 1.0));
        printf("%-44s %9.1f %9.1f %9.1f %9.1f\n", "  per step: submit -> last stream's bytes",
               q_us(rspan, nrspan, 0.5), q_us(rspan, nrspan, 0.9), q_us(rspan, nrspan, 0.99),
               q_us(rspan, nrspan, 1.0));
        printf("\negress CPU per token: %.2f us (%zu tokens, %zu missed)\n", cpu_us_tok, nlat,
               missed);
        if (o.trace)
            trace_report(&o);
    }
    free(lat);
    free(lat_user);
    free(span);
    free(flat);
    free(fspan);
    free(rlat);
    free(rspan);
    return missed && !nlat ? 1 : 0;
}
