/*
 * test-shm-ring-stress.c - shm_ring across processes.
 *
 * 1. stream: a forked producer sends 10^7 sequence-numbered descriptors in
 *    bursts of random size (1..64) to a forked consumer that peeks bursts of
 *    random size and releases them in random pieces; the consumer checks
 *    every descriptor is the next in sequence with an intact checksum (no
 *    loss, duplication, reordering or tearing). Counters start just below
 *    2^32 so they wrap mid-stream. Producer and consumer are pinned to
 *    different cores when there are two. FAVO_LONG=1: 10^8.
 * 2. kill -9: the same stream while the parent kills the consumer (and,
 *    twice, the producer) with SIGKILL at random moments and starts a new
 *    one. Each consumer incarnation records, before applying a burst, how
 *    many messages it could replay if it died now: the peek burst when it
 *    releases per burst, 1 when it releases per message (shm_ring.h, "Crash
 *    semantics"). The next incarnation must start exactly at c_head, at or
 *    before the first message not yet applied (nothing lost), and replay no
 *    more than that bound (nothing repeated beyond the documented replay).
 *
 * "Applying" a message is advancing `applied` in shared memory, an
 * idempotent handler in the sense of ARCHITECTURE.md invariant 3: a replayed
 * message (seq < applied) leaves it unchanged.
 */
#include "t_util.h"
#include "shm_ring.h"

#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct msg {
    uint64_t seq;
    uint64_t check;
};
SHM_RING_TYPED(t_msg_ring, struct msg)

#define CAP 1024u
#define GEN 3u
#define BASE (UINT32_MAX - 3000000u) /* wraps 3 * 10^6 messages in */

/* Shared control block; the comment names each field's one writer. */
struct ctl {
    uint64_t n;            /* parent: messages in this phase */
    uint64_t applied;      /* consumer: next seq not yet applied */
    uint64_t bound;        /* consumer: max replay if it dies now */
    uint64_t replays;      /* consumer: replayed messages, total */
    uint64_t max_replay;   /* consumer: largest replay seen at a restart */
    uint64_t restarts;     /* consumer: incarnations that saw a message */
    uint64_t prod_done;    /* producer: 1 when all n are published */
    uint64_t work_ns;      /* parent: time the consumer spends applying one */
    uint64_t park;         /* parent: 1 = stop right after the next apply */
    uint64_t parked;       /* consumer: 1 = applied, not released, waiting */
    char err[192] FAVO_ALIGNED_CL; /* consumer/producer: first failure */
};

static unsigned char *g_ring;
static size_t g_ring_len;
static struct ctl *g_ctl;
static int g_ncpu;

static uint64_t msg_check(uint64_t seq)
{
    return (seq + 1) * 0x9e3779b97f4a7c15ull ^ 0x5bd1e995u;
}

static void pin(int cpu)
{
    cpu_set_t set;

    if (g_ncpu < 2)
        return;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    (void)sched_setaffinity(0, sizeof(set), &set);
}

/* Spin briefly, then yield: ctest may run two tests on the 2 cores. */
static void backoff(unsigned *spins)
{
    if (++*spins < 64)
        favo_cpu_relax();
    else
        sched_yield();
}

_Noreturn static void child_fail(const char *fmt, uint64_t a, uint64_t b)
{
    snprintf(g_ctl->err, sizeof(g_ctl->err), fmt, (unsigned long long)a, (unsigned long long)b);
    _exit(1);
}

_Noreturn static void producer(uint64_t seed)
{
    shm_ring_t p;
    struct msg buf[64];
    uint64_t n = ck_pr_load_64(&g_ctl->n), next;
    unsigned spins = 0;
    int rc;

    pin(0);
    rc = t_msg_ring_attach(&p, g_ring, g_ring_len, GEN, SHM_RING_PRODUCER);
    if (rc)
        child_fail("producer attach: %llu %llu", (uint64_t)-rc, 0);
    /* A restarted producer resumes after what was published. */
    next = (uint32_t)(p.local - BASE);
    while (next < n) {
        uint64_t want = t_rand(&seed) % 64 + 1; /* not inside FAVO_MIN: twice */
        uint32_t k = (uint32_t)FAVO_MIN(want, n - next);

        for (uint32_t i = 0; i < k; i++)
            buf[i] = (struct msg){ .seq = next + i, .check = msg_check(next + i) };
        rc = t_msg_ring_enqueue_burst(&p, buf, k);
        if (rc == -EAGAIN) {
            backoff(&spins);
            continue;
        }
        spins = 0;
        next += (uint64_t)rc;
    }
    ck_pr_store_64(&g_ctl->prod_done, 1);
    _exit(0);
}

_Noreturn static void consumer(uint64_t seed, int per_message)
{
    shm_ring_t c;
    struct msg buf[64];
    uint64_t n = ck_pr_load_64(&g_ctl->n), expect, applied;
    /* The bound the dead incarnation left, before we overwrite it. */
    uint64_t bound = ck_pr_load_64(&g_ctl->bound);
    unsigned spins = 0;
    int first = 1, rc;

    pin(1);
    rc = t_msg_ring_attach(&c, g_ring, g_ring_len, GEN, SHM_RING_CONSUMER);
    if (rc)
        child_fail("consumer attach: %llu %llu", (uint64_t)-rc, 0);
    expect = (uint32_t)(c.local - BASE); /* c_head: first unreleased */
    applied = ck_pr_load_64(&g_ctl->applied);
    for (;;) {
        uint32_t want = (uint32_t)(t_rand(&seed) % 64 + 1);
        int got = t_msg_ring_peek_burst(&c, buf, want);

        if (got == -EAGAIN) {
            if (ck_pr_load_64(&g_ctl->prod_done) && applied == n)
                _exit(0);
            backoff(&spins);
            continue;
        }
        spins = 0;
        /* What a death from here on would replay (R5): this burst, or
         * the one message being applied. */
        ck_pr_store_64(&g_ctl->bound, per_message ? 1 : (uint64_t)got);
        for (int i = 0; i < got; i++) {
            const struct msg *m = &buf[i];

            if (m->check != msg_check(m->seq))
                child_fail("torn descriptor seq %llu check %llu", m->seq, m->check);
            if (m->seq != expect || m->seq >= n)
                child_fail("out of sequence: got %llu, expected %llu", m->seq, expect);
            if (first) {
                uint64_t replay = applied - m->seq;

                first = 0;
                if (m->seq > applied)
                    child_fail("lost: restart at %llu, applied %llu", m->seq, applied);
                if (replay > bound)
                    child_fail("replayed %llu, more than the bound %llu", replay, bound);
                ck_pr_store_64(&g_ctl->replays, g_ctl->replays + replay);
                ck_pr_store_64(&g_ctl->max_replay, FAVO_MAX(g_ctl->max_replay, replay));
                ck_pr_store_64(&g_ctl->restarts, g_ctl->restarts + 1);
            }
            expect++;
            if (m->seq == applied) { /* the idempotent "handler" */
                uint64_t until = favo_now_ns() + g_ctl->work_ns;

                ck_pr_store_64(&g_ctl->applied, ++applied);
                /* Applying takes time, so kills land between apply and
                 * release as often as a real handler would make them. */
                while (g_ctl->work_ns && favo_now_ns() < until)
                    favo_cpu_relax();
                /* Asked to: wait here, applied but unreleased, for the
                 * parent's kill -9, so the replay path is exercised on
                 * every run rather than when a random kill happens to
                 * land in this window. */
                if (ck_pr_load_64(&g_ctl->park)) {
                    ck_pr_store_64(&g_ctl->parked, 1);
                    for (;;)
                        favo_cpu_relax();
                }
            }
            if (per_message) {
                shm_ring_release(&c, 1);
                ck_pr_store_64(&g_ctl->bound, 1);
            }
        }
        if (!per_message)
            shm_ring_release(&c, (uint32_t)got);
    }
}

static pid_t spawn(int who, uint64_t seed, int per_message)
{
    pid_t pid = fork();

    if (pid < 0) {
        perror("fork");
        exit(1);
    }
    if (pid == 0) {
        /* Never outlive a parent that failed or timed out. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() == 1)
            _exit(1);
        if (who == 0)
            producer(seed);
        consumer(seed, per_message);
    }
    return pid;
}

static void phase_init(uint64_t n)
{
    struct shm_ring *h = (struct shm_ring *)g_ring;

    if (t_msg_ring_init(g_ring, g_ring_len, CAP, GEN)) {
        fprintf(stderr, "init failed\n");
        exit(1);
    }
    h->ck.c_head = h->ck.p_tail = h->ck.p_head = BASE;
    memset(g_ctl, 0, sizeof(*g_ctl));
    g_ctl->n = n;
}

/* 0 when the child exited 0 (or, if killed_ok, by SIGKILL). */
static int reap(pid_t pid, const char *who, int killed_ok)
{
    int st;

    if (waitpid(pid, &st, 0) != pid) {
        perror("waitpid");
        return -1;
    }
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        return 0;
    if (killed_ok && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
        return 0;
    fprintf(stderr, "FAIL: %s: status 0x%x: %s\n", who, st, g_ctl->err);
    return -1;
}

static int phase_stream(uint64_t n)
{
    uint64_t t0;
    pid_t c, p;
    int rc = 0;

    phase_init(n);
    t0 = favo_now_ns();
    c = spawn(1, 11, 0);
    p = spawn(0, 12, 0);
    rc |= reap(p, "producer", 0);
    rc |= reap(c, "consumer", 0);
    if (!rc && g_ctl->applied != n) {
        fprintf(stderr, "FAIL: stream: applied %llu of %llu\n",
                (unsigned long long)g_ctl->applied, (unsigned long long)n);
        rc = -1;
    }
    if (!rc && g_ctl->replays != 0) {
        fprintf(stderr, "FAIL: stream: %llu replays without a crash\n",
                (unsigned long long)g_ctl->replays);
        rc = -1;
    }
    printf("stream: %llu messages in %.2f s, no loss/dup/reorder (%s)\n",
           (unsigned long long)n, (double)(favo_now_ns() - t0) / 1e9,
           g_ncpu >= 2 ? "producer on cpu 0, consumer on cpu 1" : "one cpu, not pinned");
    return rc;
}

static void sleep_us(uint64_t us)
{
    struct timespec ts = { .tv_sec = (time_t)(us / 1000000), .tv_nsec = (long)(us % 1000000) * 1000 };
    nanosleep(&ts, NULL);
}

static int phase_kill(uint64_t n, int kills)
{
    uint64_t seed = 0xfeedu, t0 = favo_now_ns();
    pid_t c, p;
    int rc = 0, mid_stream = 0, prod_kills = 0;

    phase_init(n);
    g_ctl->work_ns = 250;
    c = spawn(1, t_rand(&seed), 0);
    p = spawn(0, t_rand(&seed), 0);
    for (int k = 0; k < kills && !rc; k++) {
        uint64_t before = ck_pr_load_64(&g_ctl->applied);

        /* Let the current consumer make some progress first, then kill at
         * a random moment. */
        for (int w = 0; w < 20000 && ck_pr_load_64(&g_ctl->applied) == before &&
                        ck_pr_load_64(&g_ctl->applied) < n; w++)
            sleep_us(50);
        sleep_us(t_rand(&seed) % 2000);
        if (k % 3 == 0) {
            /* Every third kill lands between apply and release for sure. */
            ck_pr_store_64(&g_ctl->park, 1);
            for (int w = 0; w < 100000 && !ck_pr_load_64(&g_ctl->parked) &&
                            ck_pr_load_64(&g_ctl->applied) < n; w++)
                sleep_us(50);
        }
        if (ck_pr_load_64(&g_ctl->applied) < n)
            mid_stream++;
        kill(c, SIGKILL);
        rc |= reap(c, "consumer", 1);
        ck_pr_store_64(&g_ctl->park, 0);
        ck_pr_store_64(&g_ctl->parked, 0);
        if (k % 4 == 2 && prod_kills < 2) { /* now and then the producer too */
            kill(p, SIGKILL);
            rc |= reap(p, "producer", 1);
            prod_kills++;
            if (shm_ring_repair(g_ring, g_ring_len, sizeof(struct msg), GEN, 0) < 0) {
                fprintf(stderr, "FAIL: repair after producer kill\n");
                rc = -1;
            }
            if (!ck_pr_load_64(&g_ctl->prod_done))
                p = spawn(0, t_rand(&seed), 0);
            else
                p = 0;
        }
        c = spawn(1, t_rand(&seed), k & 1); /* alternate release styles */
    }
    if (p > 0)
        rc |= reap(p, "producer", 0);
    rc |= reap(c, "consumer", 0);
    if (!rc && g_ctl->applied != n) {
        fprintf(stderr, "FAIL: kill: applied %llu of %llu\n",
                (unsigned long long)g_ctl->applied, (unsigned long long)n);
        rc = -1;
    }
    if (!rc && g_ctl->replays == 0) {
        fprintf(stderr, "FAIL: no kill landed between apply and release; the replay "
                        "path went untested\n");
        rc = -1;
    }
    if (!rc && mid_stream < kills / 2) {
        fprintf(stderr, "FAIL: only %d of %d kills landed mid-stream\n", mid_stream, kills);
        rc = -1;
    }
    printf("kill -9: %llu messages, %d consumer kills (%d mid-stream), %d producer kills, "
           "%llu restarts saw data, %llu replayed in all, at most %llu at once, %.2f s\n",
           (unsigned long long)n, kills, mid_stream, prod_kills,
           (unsigned long long)g_ctl->restarts, (unsigned long long)g_ctl->replays,
           (unsigned long long)g_ctl->max_replay, (double)(favo_now_ns() - t0) / 1e9);
    return rc;
}

int main(void)
{
    int longrun = atoi(t_env("FAVO_LONG", "0")) > 0;
    size_t ctl_len = (sizeof(struct ctl) + 63) & ~(size_t)63;
    unsigned char *mem;
    cpu_set_t set;
    int rc = 0;

    setvbuf(stdout, NULL, _IONBF, 0);
    alarm(longrun ? 3000 : 240); /* a hang fails (SIGALRM) instead of waiting */
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        g_ncpu = CPU_COUNT(&set);
    g_ring_len = t_msg_ring_region_size(CAP);
    mem = mmap(NULL, g_ring_len + ctl_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
               -1, 0);
    if (mem == MAP_FAILED)
        t_skip("no shared anonymous mapping");
    g_ring = mem;
    g_ctl = (struct ctl *)(mem + g_ring_len);

    rc |= phase_stream(longrun ? 100000000ull : 10000000ull);
    if (!rc)
        rc |= phase_kill(longrun ? 20000000ull : 2000000ull, longrun ? 200 : 12);
    munmap(mem, g_ring_len + ctl_len);
    printf("%s\n", rc ? "FAIL" : "PASS");
    return rc ? 1 : 0;
}
