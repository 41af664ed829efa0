/*
 * dp_stages.c - the four pipeline stage processes as `favo stage NAME`
 * starts them (dp_cmd_stage.c dispatches here): parse the values the
 * supervisor resolved (dp_cmd_serve.c), attach the data segment inherited
 * at DP_SUP_DATA_FD and the pipeline in it, take the stage's writer block
 * in the stats segment, turn SIGTERM/SIGINT into the stop word, and call
 * the stage's run function. A stage that cannot attach exits 1 with one
 * line naming what failed; the supervisor restarts it with backoff.
 *
 * Every stage is hardened first (dp_sandbox_harden: RLIMIT_CORE 0, not
 * dumpable), and installs its seccomp profile (dp_sandbox.h) through its
 * run function's on_ready hook, once start-up is over (model and tokenizer
 * opened, io_uring set up, threads started): the engine then has no
 * network calls, egress cannot open files. A forbidden call kills the
 * stage (SIGSYS) and the supervisor restarts it.
 */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "bat_stage.h"
#include "dp_sandbox.h"
#include "dp_stages.h"
#include "dp_sup.h"
#include "egr_stage.h"
#include "eng_stage.h"
#include "favo_base.h"
#include "ing_keys.h"
#include "ing_loop.h"
#include "ing_ratelimit.h"
#include "shm_pipe.h"
#include "shm_seg.h"
#include "shm_stats.h"

static volatile int stage_stop;
static volatile uint32_t stage_reload;

static void on_stop(int sig)
{
    (void)sig;
    stage_stop = 1;
}

static void on_hup(int sig)
{
    (void)sig;
    stage_reload++;
}

struct stage_env {
    struct shm_seg data;
    struct shm_pipe pipe;
    struct shm_stats stats;
    struct shm_stats_writer w;
    bool have_stats;
    unsigned row;
    int poll;
};

/* "--name value" pairs; names must be in `known`. */
struct kv {
    const char *k[32], *v[32];
    unsigned n;
};

static int kv_parse(const char *stage, int argc, char **argv, const char *const *known,
                    struct kv *kv)
{
    kv->n = 0;
    for (int i = 1; i < argc; i += 2) {
        bool ok = false;
        for (unsigned j = 0; known[j]; j++)
            ok |= !strcmp(argv[i], known[j]);
        if (!ok || i + 1 >= argc || kv->n == 32) {
            fprintf(stderr, "favo stage %s: unknown or incomplete argument '%s'\n", stage,
                    argv[i]);
            return -EINVAL;
        }
        kv->k[kv->n] = argv[i];
        kv->v[kv->n++] = argv[i + 1];
    }
    return 0;
}

static const char *kv_str(const struct kv *kv, const char *k)
{
    for (unsigned i = 0; i < kv->n; i++)
        if (!strcmp(kv->k[i], k))
            return kv->v[i];
    return NULL;
}

static long long kv_int(const struct kv *kv, const char *k, long long def)
{
    const char *v = kv_str(kv, k);
    char *end;
    long long x;

    if (!v)
        return def;
    x = strtoll(v, &end, 10);
    if (*end || end == v) {
        fprintf(stderr, "favo stage: %s '%s' is not a whole number\n", k, v);
        exit(2);
    }
    return x;
}

#define STAGE_COMMON "--gen", "--stats", "--row", "--poll"

static int env_open(struct stage_env *E, const char *stage, const struct kv *kv,
                    enum shm_stage_kind kind)
{
    size_t len;
    void *mem;
    int rc;
    const char *poll = kv_str(kv, "--poll"), *inst = kv_str(kv, "--stats");
    struct sigaction sa;

    memset(E, 0, sizeof(*E));
    tzset(); /* read /etc/localtime now: the seccomp profiles allow no open later */
    /* every stage holds request content: no core dumps, not dumpable
     * (invariant 5), before the segment is even mapped */
    if ((rc = dp_sandbox_harden()) != 0) {
        favo_err("%s: hardening: %s", stage, strerror(-rc));
        return rc;
    }
    E->row = (unsigned)kv_int(kv, "--row", 0);
    E->poll = !poll || !strcmp(poll, "block") ? 0 : !strcmp(poll, "spin") ? 2 : 1;
    if ((rc = shm_seg_attach_data(&E->data, DP_SUP_DATA_FD)) != 0) {
        favo_err("%s: data segment: %s", stage, E->data.err[0] ? E->data.err : strerror(-rc));
        return rc;
    }
    close(DP_SUP_DATA_FD); /* the segment keeps its own copy */
    mem = shm_seg_region(&E->data, "pipe", &len);
    if (!mem) {
        favo_err("%s: the data segment has no pipeline region", stage);
        return -EPROTO;
    }
    if ((rc = shm_pipe_attach(&E->pipe, mem, len, (uint32_t)kv_int(kv, "--gen", 0))) != 0) {
        favo_err("%s: the pipeline in the data segment: %s", stage, strerror(-rc));
        return rc;
    }
    if (inst) {
        if ((rc = shm_stats_open(&E->stats, inst, true)) != 0 ||
            (rc = shm_stats_writer_init(&E->stats, E->row, kind, 0, SHM_STATS_FLUSH_NS,
                                        &E->w)) != 0) {
            favo_err("%s: stats segment of instance %s: %s", stage, inst, strerror(-rc));
            return rc;
        }
        E->have_stats = true;
        shm_stats_heartbeat(&E->stats, E->row);
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_hup; /* reload: ingress reads its keys file again */
    sigaction(SIGHUP, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    return 0;
}

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define STAGE_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || \
    __has_feature(undefined_behavior_sanitizer)
#define STAGE_SANITIZER 1
#endif
#endif

/* The stage's run function calls this once its start-up is done: from
 * here on it may make only the system calls of its profile (dp_sandbox.h).
 * Not in sanitizer builds, whose runtimes make calls of their own when
 * they report. */
static void sandbox_ready(void *arg)
{
#ifdef STAGE_SANITIZER
    (void)arg;
#else
    const char *profile = arg;

    if (dp_sandbox_install(profile) < 0)
        favo_warn("%s: running without its seccomp profile", profile);
#endif
}

static void env_close(struct stage_env *E)
{
    if (E->have_stats) {
        shm_stats_writer_free(&E->w);
        shm_stats_close(&E->stats);
    }
    shm_seg_close(&E->data);
}

static int fd_arg(const struct kv *kv, const char *k)
{
    long long fd = kv_int(kv, k, -1);

    if (fd < 0 || fd > 65535 || fcntl((int)fd, F_GETFD) < 0) {
        fprintf(stderr, "favo stage: %s: no such inherited descriptor\n", k);
        exit(2);
    }
    fcntl((int)fd, F_SETFD, FD_CLOEXEC);
    return (int)fd;
}

int dp_stage_ingress(int argc, char **argv)
{
    static const char *const known[] = { STAGE_COMMON, "--listen-fd", "--bell-fd",
                                          "--fdpass-fd", "--model", "--model-id", "--max-conns",
                                          "--drain-ms", "--keys", "--chat-template",
                                          "--tls-cert", "--tls-key", "--egr-bell-fd", NULL };
    struct stage_env E;
    struct ing_cfg c;
    struct ing_keys keys;
    struct ing_rl rl;
    void *rl_mem = NULL;
    struct kv kv;
    int rc;

    if (kv_parse("ingress", argc, argv, known, &kv) || env_open(&E, "ingress", &kv,
                                                                SHM_STAGE_INGRESS))
        return 1;
    memset(&c, 0, sizeof(c));
    c.pipe = &E.pipe;
    c.on_ready = sandbox_ready;
    c.on_ready_arg = (void *)"ingress";
    c.listen_fd = fd_arg(&kv, "--listen-fd");
    c.bell_efd = fd_arg(&kv, "--bell-fd");
    c.egress_sock = fd_arg(&kv, "--fdpass-fd");
    c.port_fd = -1;
    c.model_path = kv_str(&kv, "--model");
    c.model_id = kv_str(&kv, "--model-id");
    c.chat_template = kv_str(&kv, "--chat-template");
    c.tls_cert = kv_str(&kv, "--tls-cert"); /* both or neither: serve checked them */
    c.tls_key = kv_str(&kv, "--tls-key");
    c.egr_bell_efd = kv_str(&kv, "--egr-bell-fd") ? fd_arg(&kv, "--egr-bell-fd") : -1;
    c.max_conns = (unsigned)kv_int(&kv, "--max-conns", 1024);
    c.drain_ms = (unsigned)kv_int(&kv, "--drain-ms", 30000);
    c.stop = (const volatile uint32_t *)&stage_stop;
    if (E.have_stats) {
        c.stats = &E.stats;
        c.stats_w = &E.w;
    }
    if (kv_str(&kv, "--keys")) {
        ing_keys_init(&keys);
        if ((rc = ing_keys_load(&keys, kv_str(&kv, "--keys"))) != 0) {
            favo_err("ingress: %s", keys.err[0] ? keys.err : strerror(-rc));
            return 1;
        }
        c.keys = &keys;
        c.keys_path = kv_str(&kv, "--keys");
        c.reload = &stage_reload;
        /* one worker: its buckets live in its own memory (lost on restart) */
        size_t n = ing_rl_size(ing_keys_nbuckets(&keys), 1);
        rl_mem = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (rl_mem == MAP_FAILED ||
            ing_rl_init(rl_mem, n, ing_keys_nbuckets(&keys), 1, favo_now_ns()) ||
            ing_rl_attach(&rl, rl_mem, n, 0)) {
            favo_err("ingress: rate-limit state: out of memory");
            return 1;
        }
        c.rl = &rl;
    }
    rc = ing_loop_run(&c);
    env_close(&E);
    return rc ? 1 : 0;
}

int dp_stage_batcher(int argc, char **argv)
{
    static const char *const known[] = { STAGE_COMMON, "--egr-bell-fd", "--n-blocks",
                                          "--max-batch-tokens", "--max-seqs", "--max-queue",
                                          "--max-queue-tokens", "--max-ctx",
                                          "--queue-timeout-ms", "--no-overlap", NULL };
    struct stage_env E;
    struct bat_stage_cfg c;
    struct kv kv;
    int rc;

    if (kv_parse("batcher", argc, argv, known, &kv) ||
        env_open(&E, "batcher", &kv, SHM_STAGE_BATCHER))
        return 1;
    memset(&c, 0, sizeof(c));
    c.pipe = &E.pipe;
    c.on_ready = sandbox_ready;
    c.on_ready_arg = (void *)"batcher";
    c.egr_bell_efd = fd_arg(&kv, "--egr-bell-fd");
    c.sched.n_blocks = (uint32_t)kv_int(&kv, "--n-blocks", 0);
    c.sched.max_batch_tokens = (uint32_t)kv_int(&kv, "--max-batch-tokens", 0);
    c.sched.max_seqs = (uint32_t)kv_int(&kv, "--max-seqs", 0);
    c.sched.max_queue = (uint32_t)kv_int(&kv, "--max-queue", 0);
    c.sched.max_queue_tokens = (uint32_t)kv_int(&kv, "--max-queue-tokens", 0);
    c.sched.max_ctx = (uint32_t)kv_int(&kv, "--max-ctx", 0);
    c.sched.queue_timeout_ns = (uint64_t)kv_int(&kv, "--queue-timeout-ms", 0) * 1000000ull;
    c.no_overlap = (int)kv_int(&kv, "--no-overlap", 0);
    c.poll = E.poll;
    c.stop = &stage_stop;
    if (E.have_stats) {
        c.stats = &E.stats;
        c.stats_w = &E.w;
        c.stats_row = E.row;
    }
    rc = bat_stage_run(&c);
    env_close(&E);
    return rc ? 1 : 0;
}

int dp_stage_engine(int argc, char **argv)
{
    static const char *const known[] = { STAGE_COMMON, "--rank", "--model", "--backend",
                                          "--threads", "--n-blocks", "--max-tokens",
                                          "--max-seqs", "--n-ctx", "--kv-cache-type", NULL };
    struct stage_env E;
    struct eng_stage_cfg c;
    struct kv kv;
    int rc;

    if (kv_parse("engine", argc, argv, known, &kv) ||
        env_open(&E, "engine", &kv, SHM_STAGE_ENGINE))
        return 1;
    memset(&c, 0, sizeof(c));
    c.pipe = &E.pipe;
    c.on_ready = sandbox_ready;
    c.on_ready_arg = (void *)"engine";
    c.rank = (unsigned)kv_int(&kv, "--rank", 0);
    c.model_path = kv_str(&kv, "--model");
    c.backend = kv_str(&kv, "--backend") ? kv_str(&kv, "--backend") : "cpu";
    c.n_threads = (unsigned)kv_int(&kv, "--threads", 1);
    c.n_blocks = (uint32_t)kv_int(&kv, "--n-blocks", 0);
    c.max_tokens = (uint32_t)kv_int(&kv, "--max-tokens", 0);
    c.max_seqs = (uint32_t)kv_int(&kv, "--max-seqs", 0);
    c.n_ctx = (uint32_t)kv_int(&kv, "--n-ctx", 0);
    c.kv_type = kv_str(&kv, "--kv-cache-type");
    c.poll = E.poll;
    c.stop = &stage_stop;
    if (E.have_stats) {
        c.stats = &E.stats;
        c.stats_w = &E.w;
        c.stats_row = E.row;
    }
    rc = eng_stage_run(&c);
    env_close(&E);
    return rc ? 1 : 0;
}

/* Egress runs briefly once per engine step and every token waits for it:
 * where stages share cores (--poll block) it must not wait out an engine
 * thread's time slice (bench-egress --pipeline on 2 cores: p99 6-12 ms
 * with the default policy, 0.6 ms at SCHED_FIFO 1). Priority 1 where the
 * process may (root, CAP_SYS_NICE or RLIMIT_RTPRIO), else as before; never
 * with spinning, which would starve the stages on its core. Set before the
 * sandbox, which does not allow sched_setscheduler. */
static void stage_rt(const char *name, int poll)
{
    struct sched_param sp = { .sched_priority = 1 };

    if (poll != 0)
        return;
    if (sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, &sp) < 0)
        favo_info("%s: SCHED_FIFO not allowed (%s): on a shared core it waits for the "
                  "engine's time slice", name, strerror(errno));
}

int dp_stage_egress(int argc, char **argv)
{
    static const char *const known[] = { STAGE_COMMON, "--fdpass-fd", "--bell-fd",
                                          "--ing-bell-fd", "--model", "--model-id",
                                          "--write-timeout-ms", "--access-log", NULL };
    struct stage_env E;
    struct egr_stage_cfg c;
    struct kv kv;
    const char *log;
    char fp[32];
    int rc;

    if (kv_parse("egress", argc, argv, known, &kv) ||
        env_open(&E, "egress", &kv, SHM_STAGE_EGRESS))
        return 1;
    memset(&c, 0, sizeof(c));
    c.pipe = &E.pipe;
    c.on_ready = sandbox_ready;
    c.on_ready_arg = (void *)"egress";
    c.fdpass_sock = fd_arg(&kv, "--fdpass-fd");
    c.bell_efd = fd_arg(&kv, "--bell-fd");
    for (unsigned w = 0; w < SHM_PIPE_MAX_INGRESS; w++)
        c.ing_bell_efd[w] = -1;
    c.ing_bell_efd[0] = fd_arg(&kv, "--ing-bell-fd");
    c.model_path = kv_str(&kv, "--model");
    c.model_id = kv_str(&kv, "--model-id");
    snprintf(fp, sizeof(fp), "fp_favo_%.20s", FAVO_VERSION);
    c.fingerprint = fp;
    c.write_timeout_ms = (unsigned)kv_int(&kv, "--write-timeout-ms", 30000);
    log = kv_str(&kv, "--access-log");
    c.log_fd = !log || !strcmp(log, "-") ? STDERR_FILENO
                                         : open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC,
                                                0640);
    if (c.log_fd < 0) {
        favo_err("egress: access log %s: %s", log, strerror(errno));
        return 1;
    }
    c.poll = E.poll;
    c.stop = &stage_stop;
    if (E.have_stats) {
        c.stats = &E.stats;
        c.stats_w = &E.w;
        c.stats_row = E.row;
    }
    stage_rt("egress", E.poll);
    rc = egr_stage_run(&c);
    env_close(&E);
    return rc ? 1 : 0;
}
