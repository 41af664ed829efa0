/*
 * dp_cmd_serve.c - `favo serve`: the supervisor side of the pipeline.
 *
 * What it does, in order:
 *   1. options: command line > FAVO_* > --config INI > defaults (dp.h);
 *   2. the model's shape without its weights (eng_stage_model_info), which
 *      sizes the KV pool (--kv-cache-mb), the context and the cells;
 *   3. the stats segment /favo.<instance> and the data segment (a sealed
 *      memfd holding the pipeline, shm_pipe.h), the listening socket, one
 *      eventfd per bell that waits in io_uring, and the SEQPACKET pair that
 *      carries client sockets from ingress to egress;
 *   4. the stages, through the supervisor (dp_sup.h): `favo stage ingress|
 *      batcher|engine|egress` with every resolved value on its command
 *      line and its fds inherited at the same numbers;
 *   5. a tick that prints one summary line and tells systemd READY=1 once
 *      every stage says it is up (shm_pipe_ready), a drain hook that marks
 *      the pipeline draining before the stages get SIGTERM, a pid hook that
 *      keeps the supervisor's half of the up words.
 *
 * The supervisor holds the listening socket for the whole run (invariant
 * 6): while ingress restarts, new connections wait in the backlog.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ck_pr.h>

#include "bat_plan.h"
#include "bat_sched.h"
#include "dp.h"
#include "dp_config.h"
#include "dp_cores.h"
#include "dp_sup.h"
#include "eng_stage.h"
#include "favo_base.h"
#include "ing_tls.h"
#include "shm_bell.h"
#include "shm_fdpass.h"
#include "shm_pipe.h"
#include "shm_seg.h"
#include "shm_stats.h"

int dp_cmd_serve(const struct dp_cmd *cmd, int argc, char **argv);

enum { ST_INGRESS, ST_BATCHER, ST_ENGINE, ST_EGRESS, ST_N };
static const char *const stage_names[ST_N] = { "ingress", "batcher", "engine", "egress" };
static const enum shm_pipe_stage stage_pipe[ST_N] = { SHM_PIPE_INGRESS, SHM_PIPE_BATCHER,
                                                      SHM_PIPE_ENGINE, SHM_PIPE_EGRESS };
static const enum shm_stage_kind stage_kind[ST_N] = { SHM_STAGE_INGRESS, SHM_STAGE_BATCHER,
                                                      SHM_STAGE_ENGINE, SHM_STAGE_EGRESS };

struct serve {
    struct shm_seg data;
    struct shm_stats stats;
    struct shm_pipe pipe;
    bool have_data, have_stats;
    int lfd, efd_ing, efd_egr, fdp[2];
    uint64_t t0;
    char summary[512];
    /* specialists (shm_spec.h): published at start and again on SIGHUP
     * (hook_reload) */
    const char *cfg_path, *model_path;
    char model_id[128];
    /* argument strings of the stages (dp_sup keeps pointers) */
    char argbuf[ST_N][DP_SUP_MAX_ARGS][1024];
};

static struct dp_opt serve_opts[] = {
    { "model", 'm', DP_OPT_STR, "FILE", NULL, "GGUF model file. Without it: the default model installed by ./setup.sh (SmolLM2-135M-Instruct Q4_1)." },
    { "host", 0, DP_OPT_STR, "ADDR", "127.0.0.1", "IPv4 address to listen on." },
    { "port", 'p', DP_OPT_INT, "PORT", "8080", "TCP port to listen on (0: any free port, printed at start)." },
    { "config", 'c', DP_OPT_STR, "FILE", NULL, "INI config file; every flag is also a key of its [serve] section." },
    { "keys", 0, DP_OPT_STR, "FILE", NULL, "API keys file (see 'favo keys'). Without it the server is open." },
    { "instance", 0, DP_OPT_STR, "NAME", "default", "Instance name: the stats segment is /favo.NAME ('favo stat --instance NAME')." },
    { "backend", 0, DP_OPT_STR, "cpu|cuda|null", "cpu", "Engine backend. null returns tokens without computing them (data-plane measurement only)." },
    { "tls-cert", 0, DP_OPT_STR, "FILE", NULL, "PEM certificate chain (leaf first); enables TLS 1.3 only, ALPN http/1.1." },
    { "tls-key", 0, DP_OPT_STR, "FILE", NULL, "PEM private key for --tls-cert." },
    { "cores", 0, DP_OPT_STR, "SPEC", "auto", "Core layout, e.g. ingress=2,batcher=3,engine=4-7,egress=8; auto shares cores when there are fewer than stages." },
    { "poll", 0, DP_OPT_STR, "spin|adaptive|block", NULL, "How stages wait for work (default: adaptive, or block when stages share cores)." },
    { "threads", 't', DP_OPT_INT, "N", NULL, "Engine threads (default: the engine's cores)." },
    { "max-batch-tokens", 0, DP_OPT_INT, "N", "2048", "Tokens per engine step." },
    { "max-seqs", 0, DP_OPT_INT, "N", "256", "Sequences per engine step (and running at once)." },
    { "max-queue", 0, DP_OPT_INT, "N", "1024", "Requests waiting for a place in the batch; beyond it 503 with Retry-After." },
    { "max-queue-tokens", 0, DP_OPT_INT, "N", "1048576", "Prompt tokens waiting; beyond it 503 with Retry-After." },
    { "queue-timeout", 0, DP_OPT_DOUBLE, "SECONDS", "30", "A request still waiting this long gets 503." },
    { "no-overlap", 0, DP_OPT_FLAG, NULL, NULL, "Plan each engine step only after the previous one is back (overlap off, for comparison)." },
    { "kv-cache-mb", 0, DP_OPT_INT, "MIB", "2048", "Memory for the paged KV cache (16-position blocks)." },
    { "kv-cache-type", 0, DP_OPT_STR, "TYPE", "auto", "KV cache elements: f16, f32, or auto (f32 for F32-weight models, f16 otherwise: half the memory per position)." },
    { "ctx-size", 0, DP_OPT_INT, "N", "8192", "Positions per sequence at most (capped by the model's context)." },
    { "max-conns", 0, DP_OPT_INT, "N", "1024", "Open client connections per ingress worker; beyond it 503 and close." },
    { "write-timeout", 0, DP_OPT_DOUBLE, "SECONDS", "30", "A client that reads nothing for this long is cut off and its sequence cancelled." },
    { "access-log", 0, DP_OPT_STR, "FILE", "-", "Access log, one JSON line per response (metadata only); '-' is standard error." },
    { "drain-timeout", 0, DP_OPT_DOUBLE, "SECONDS", "30", "How long SIGTERM waits for requests in flight." },
    { "cache-mb", 0, DP_OPT_INT, "MIB", "64", "Response cache for specialists with cache_ttl (entries in the data segment, LRU, scrubbed on eviction and expiry); 0: off." },
    { "chat-template", 0, DP_OPT_STR, "NAME", NULL, "Chat format (chatml, llama2, llama3, mistral-v1/v3/v7, gemma, phi3); default: detected from the model's tokenizer.chat_template." },
    DP_OPT_END
};

static void hook_pid(void *arg, unsigned i, pid_t pid)
{
    struct serve *S = arg;

    if (i < ST_N)
        shm_pipe_set_sup(&S->pipe, stage_pipe[i], 0, (int32_t)pid);
}

static void hook_drain(void *arg)
{
    struct serve *S = arg;

    ck_pr_store_32(&S->pipe.hdr->draining, 1);
    /* No ingress will accept again: close the port now, so a load
     * balancer's new connections are refused at once (and go to another
     * replica) instead of waiting in a backlog nobody reads. */
    if (S->lfd >= 0) {
        close(S->lfd);
        S->lfd = -1;
    }
}

/* Build the specialist table from a loaded config and publish it (the
 * supervisor is the table's only writer, shm_spec.h). */
static int spec_publish(struct serve *S, const struct dp_config *conf, char *err, size_t n)
{
    struct shm_spec_table *t = malloc(sizeof(*t));
    int rc;

    if (!t) {
        snprintf(err, n, "out of memory");
        return -ENOMEM;
    }
    rc = dp_config_spec_table(conf, S->cfg_path ? S->cfg_path : "(no config)", S->model_id,
                              S->model_path, t, err, n);
    if (rc == 0) {
        shm_spec_publish(shm_pipe_spec(&S->pipe), t);
        favo_info("specialists: %u loaded", t->n);
    }
    free(t);
    return rc;
}

/* SIGHUP (dp_sup's reload hook, before the stages get it): re-read the
 * config file; a bad one keeps the old table. Only the specialists are
 * taken from it: [serve] values need a restart. */
static void hook_reload(void *arg)
{
    struct serve *S = arg;
    struct dp_opt *o;
    struct dp_config conf;
    char err[512];

    if (!S->cfg_path) {
        favo_info("reload: no --config file, no specialists to reload");
        return;
    }
    o = malloc(sizeof(serve_opts));
    if (!o)
        return;
    memcpy(o, serve_opts, sizeof(serve_opts)); /* [serve] keys land in the copy */
    if (dp_config_load(S->cfg_path, o, &conf, err, sizeof(err)) ||
        spec_publish(S, &conf, err, sizeof(err)))
        favo_err("reload: %s; keeping the specialists in use", err);
    dp_config_free(&conf);
    free(o);
}

static int hook_tick(void *arg)
{
    struct serve *S = arg;

    dp_pipe_stats_tick(&S->pipe); /* ring gauges; restarted stages up (dp_sup.h) */

    if (!shm_pipe_ready(&S->pipe))
        return 0;
    if (S->summary[0]) {
        favo_info("%s, ready in %.2f s", S->summary, (double)(favo_now_ns() - S->t0) / 1e9);
        S->summary[0] = 0;
    }
    return 1;
}

/* Append "--name value" to stage st's argv. */
static void arg(struct dp_sup_stage_cfg *c, struct serve *S, unsigned st, const char *name,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void arg(struct dp_sup_stage_cfg *c, struct serve *S, unsigned st, const char *name,
                const char *fmt, ...)
{
    unsigned n = 0;
    va_list ap;

    while (c->args[n])
        n++;
    FAVO_ASSERT(n + 2 < DP_SUP_MAX_ARGS);
    c->args[n] = name;
    va_start(ap, fmt);
    vsnprintf(S->argbuf[st][n + 1], sizeof(S->argbuf[st][n + 1]), fmt, ap);
    va_end(ap);
    c->args[n + 1] = S->argbuf[st][n + 1];
    c->args[n + 2] = NULL;
}

static int listen_socket(const char *host, long port, uint16_t *bound)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    socklen_t alen = sizeof(a);
    int one = 1, fd;

    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        favo_err("--host '%s' is not an IPv4 address", host);
        return -EINVAL;
    }
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 4096) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) < 0) {
        int e = -errno;
        favo_err("listen on %s:%ld: %s", host, port, strerror(-e));
        close(fd);
        return e;
    }
    *bound = ntohs(a.sin_port);
    return fd;
}

static void serve_free(struct serve *S)
{
    if (S->have_data)
        shm_seg_destroy(&S->data);
    if (S->have_stats)
        shm_stats_destroy(&S->stats);
    for (int *fd = &S->lfd; fd <= &S->fdp[1]; fd++)
        if (*fd >= 0)
            close(*fd);
}

static int poll_mode(const char *s, bool shared)
{
    if (!s)
        return shared ? 0 : 1;
    if (!strcmp(s, "block"))
        return 0;
    if (!strcmp(s, "adaptive"))
        return 1;
    if (!strcmp(s, "spin"))
        return 2;
    return -1;
}

int dp_cmd_serve(const struct dp_cmd *cmd, int argc, char **argv)
{
    struct dp_opt *o = serve_opts;
    struct dp_config conf;
    struct serve *S;
    struct eng_stage_model_info mi;
    struct dp_sup_cfg sup;
    struct dp_cores cores;
    char err[512] = "", note[256] = "", model_id[128];
    int npos, rc, ret = 1;

    memset(&conf, 0, sizeof(conf));
    rc = dp_opt_parse(cmd, o, argc, argv, &npos);
    if (rc)
        return rc > 0 ? 0 : 2;
    if (npos > 0) {
        fprintf(stderr, "favo serve: unexpected argument '%s'\n", argv[1]);
        return 2;
    }
    if (dp_opt_str(o, "config") &&
        dp_config_load(dp_opt_str(o, "config"), o, &conf, err, sizeof(err))) {
        fprintf(stderr, "favo serve: %s\n", err);
        return 2;
    }
    S = calloc(1, sizeof(*S));
    if (!S)
        return 1;
    S->t0 = favo_now_ns();
    S->lfd = S->efd_ing = S->efd_egr = S->fdp[0] = S->fdp[1] = -1;

    /* ---- values */
    const char *model = dp_opt_str(o, "model") ? dp_opt_str(o, "model") : dp_default_model();
    const char *backend = dp_opt_str(o, "backend"), *inst = dp_opt_str(o, "instance");
    long long max_seqs = dp_opt_int(o, "max-seqs"), mbt = dp_opt_int(o, "max-batch-tokens");
    long long kv_mb = dp_opt_int(o, "kv-cache-mb"), ctx = dp_opt_int(o, "ctx-size");
    long long max_conns = dp_opt_int(o, "max-conns"), port = dp_opt_int(o, "port");
    double qto = dp_opt_double(o, "queue-timeout"), wto = dp_opt_double(o, "write-timeout");
    double dto = dp_opt_double(o, "drain-timeout");

    if (!model) {
        fprintf(stderr, "favo serve: no model: pass --model FILE, or run ./setup.sh to install "
                        "the default model (SmolLM2-135M-Instruct)\n");
        goto out;
    }
    if (strcmp(backend, "cpu") && strcmp(backend, "null")) {
        fprintf(stderr, "favo serve: --backend %s is not available in this build (cpu, null)\n",
                backend);
        goto out;
    }
    if (!dp_opt_str(o, "tls-cert") != !dp_opt_str(o, "tls-key")) {
        fprintf(stderr, "favo serve: --tls-cert and --tls-key go together\n");
        goto out;
    }
    if (dp_opt_str(o, "tls-cert")) {
        /* load and check both files now (ingress loads them again at its
         * start): a bad certificate, a key that does not match it or an
         * encrypted key stops serve here, naming the file */
        ing_tls_ctx_t *tls = NULL;
        if (ing_tls_ctx_new(&tls, dp_opt_str(o, "tls-cert"), dp_opt_str(o, "tls-key"), 0, err,
                            sizeof(err)) < 0) {
            fprintf(stderr, "favo serve: %s\n", err);
            goto out;
        }
        ing_tls_ctx_free(tls);
    }
    if (max_seqs < 1 || max_seqs > 4096 || mbt < 1 || mbt > 65536 || mbt < max_seqs) {
        fprintf(stderr, "favo serve: --max-seqs must be 1..4096 and --max-batch-tokens "
                        "max-seqs..65536\n");
        goto out;
    }
    if (kv_mb < 16 || ctx < 16 || max_conns < 1 || max_conns > 65536 || port < 0 ||
        port > 65535 || qto <= 0 || wto <= 0 || dto < 0) {
        fprintf(stderr, "favo serve: out of range: --kv-cache-mb >= 16, --ctx-size >= 16, "
                        "--max-conns 1..65536, --port 0..65535, timeouts > 0\n");
        goto out;
    }
    if (eng_stage_model_info(model, dp_opt_str(o, "kv-cache-type"), &mi, err, sizeof(err))) {
        fprintf(stderr, "favo serve: %s\n", err);
        goto out;
    }
    uint32_t n_ctx = (uint32_t)FAVO_MIN((long long)(mi.n_ctx_train ? mi.n_ctx_train : 2048),
                                        FAVO_MIN(ctx, 8192));
    uint64_t nb = ((uint64_t)kv_mb << 20) / (mi.kv_block_bytes ? mi.kv_block_bytes : 1);
    if (nb < bat_kv_blocks_for(n_ctx) + 1) {
        fprintf(stderr, "favo serve: --kv-cache-mb %lld holds %llu blocks of %llu bytes; one "
                        "full context of %u positions needs %u: raise --kv-cache-mb or lower "
                        "--ctx-size\n", kv_mb, (unsigned long long)nb,
                (unsigned long long)mi.kv_block_bytes, n_ctx, bat_kv_blocks_for(n_ctx) + 1);
        goto out;
    }
    if (nb > 1u << 24)
        nb = 1u << 24;
    {
        const char *base = strrchr(model, '/');
        base = base ? base + 1 : model;
        snprintf(model_id, sizeof(model_id), "%s", base);
        size_t l = strlen(model_id);
        if (l > 5 && !strcmp(model_id + l - 5, ".gguf"))
            model_id[l - 5] = 0;
    }

    /* ---- cores */
    {
        const char *spec = dp_opt_str(o, "cores");
        char warn[256] = "";
        rc = !strcmp(spec, "auto")
                 ? dp_cores_auto(stage_names, ST_N, NULL, &cores, note, sizeof(note))
                 : dp_cores_parse(spec, stage_names, ST_N, NULL, &cores, err, sizeof(err), warn,
                                  sizeof(warn));
        if (rc) {
            fprintf(stderr, "favo serve: --cores: %s\n", err);
            goto out;
        }
        if (warn[0])
            favo_warn("--cores: %s", warn);
        if (note[0])
            favo_info("%s", note);
    }
    int poll = poll_mode(dp_opt_str(o, "poll"), cores.shared);
    if (poll < 0) {
        fprintf(stderr, "favo serve: --poll must be spin, adaptive or block\n");
        goto out;
    }
    long long threads = dp_opt_str(o, "threads") ? dp_opt_int(o, "threads")
                                                 : CPU_COUNT(&cores.cpus[ST_ENGINE]);
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "favo serve: --threads must be 1..256\n");
        goto out;
    }

    /* ---- the pipeline's shape */
    struct bat_sched_cfg sc = { 0 };
    sc.max_batch_tokens = (uint32_t)mbt;
    sc.max_seqs = (uint32_t)max_seqs;
    sc.max_queue = (uint32_t)dp_opt_int(o, "max-queue");
    sc.max_queue_tokens = (uint32_t)dp_opt_int(o, "max-queue-tokens");
    sc.n_blocks = (uint32_t)nb;
    sc.max_ctx = n_ctx;
    sc.queue_timeout_ns = (uint64_t)(qto * 1e9);
    if (bat_sched_cfg_defaults(&sc)) {
        fprintf(stderr, "favo serve: the batcher refuses this configuration\n");
        goto out;
    }
    struct shm_pipe_cfg pc = { 0 };
    pc.n_ingress = 1;
    pc.n_ranks = 1;
    pc.sched_bytes = bat_sched_size(&sc);
    pc.plan_bytes = bat_sched_plan_size(&sc);
    pc.max_seqs = sc.max_seqs;
    pc.result_size = sizeof(struct bat_result);
    pc.cells.nclasses = 4;
    pc.cells.classes[0].cell_size = 64u << 10;
    pc.cells.classes[0].ncells = (uint32_t)max_conns + 64;
    pc.cells.classes[1].cell_size = 256u << 10;
    pc.cells.classes[1].ncells = 128;
    pc.cells.classes[2].cell_size = 1u << 20;
    pc.cells.classes[2].ncells = 64;
    pc.cells.classes[3].cell_size = 9u << 20;
    pc.cells.classes[3].ncells = 4;
    long long cache_mb = dp_opt_int(o, "cache-mb");
    if (cache_mb < 0 || cache_mb > 4095) {
        fprintf(stderr, "favo serve: --cache-mb must be 0..4095\n");
        goto out;
    }
    pc.cache_bytes = (uint64_t)cache_mb << 20;
    struct shm_seg_spec spec = { "pipe", shm_pipe_size(&pc), 4096 };
    if (!spec.size) {
        fprintf(stderr, "favo serve: internal: the pipeline layout was refused\n");
        goto out;
    }

    /* ---- segments, sockets, bells */
    if ((rc = shm_stats_create(&S->stats, inst, ST_N + 1, ST_N)) != 0) {
        fprintf(stderr, "favo serve: stats segment /favo.%s: %s%s\n", inst, strerror(-rc),
                rc == -EBUSY ? " (another favo serve runs with this --instance)" : "");
        goto out;
    }
    S->have_stats = true;
    if ((rc = shm_seg_create_data(&S->data, &spec, 1)) != 0) {
        fprintf(stderr, "favo serve: data segment: %s\n", S->data.err[0] ? S->data.err : strerror(-rc));
        goto out;
    }
    S->have_data = true;
    size_t plen;
    void *pmem = shm_seg_region(&S->data, "pipe", &plen);
    uint32_t gen = (uint32_t)shm_seg_hdr(&S->data)->generation;
    if (!pmem || (rc = shm_pipe_init(&S->pipe, pmem, plen, &pc, gen)) != 0) {
        fprintf(stderr, "favo serve: laying out the pipeline: %s\n", strerror(rc ? -rc : EINVAL));
        goto out;
    }
    S->pipe.hdr->n_vocab = mi.n_vocab;
    S->pipe.hdr->n_ctx = n_ctx;
    snprintf(S->pipe.hdr->model_id, sizeof(S->pipe.hdr->model_id), "%s", model_id);
    S->cfg_path = dp_opt_str(o, "config");
    S->model_path = model;
    snprintf(S->model_id, sizeof(S->model_id), "%s", model_id);
    if (spec_publish(S, &conf, err, sizeof(err))) {
        fprintf(stderr, "favo serve: %s\n", err);
        goto out;
    }
    shm_seg_publish(&S->data);

    uint16_t bound = 0;
    if ((S->lfd = listen_socket(dp_opt_str(o, "host"), port, &bound)) < 0)
        goto out;
    S->efd_ing = shm_bell_efd_open();
    S->efd_egr = shm_bell_efd_open();
    if (S->efd_ing < 0 || S->efd_egr < 0 || shm_fdpass_pair(S->fdp)) {
        fprintf(stderr, "favo serve: eventfds / socketpair: %s\n", strerror(errno));
        goto out;
    }

    /* ---- stages */
    dp_sup_cfg_init(&sup);
    sup.data_fd = S->data.fd;
    sup.stats = &S->stats;
    sup.drain_timeout_s = dto > 0 ? dto : 30;
    sup.hooks = (struct dp_sup_hooks){ S, hook_pid, hook_drain, hook_tick, 20000000ull,
                                       hook_reload };
    const char *pollname[] = { "block", "adaptive", "spin" };
    for (unsigned i = 0; i < ST_N; i++) {
        int k = dp_sup_add(&sup, stage_names[i], NULL);
        FAVO_ASSERT(k == (int)i);
        struct dp_sup_stage_cfg *c = &sup.stages[i];
        c->kind = stage_kind[i];
        c->index = 0;
        c->pin = CPU_COUNT(&cores.cpus[i]) > 0;
        c->cpus = cores.cpus[i];
        arg(c, S, i, "--gen", "%u", gen);
        arg(c, S, i, "--stats", "%s", inst);
        arg(c, S, i, "--row", "%u", i);
        arg(c, S, i, "--poll", "%s", pollname[poll]);
    }
    struct dp_sup_stage_cfg *in = &sup.stages[ST_INGRESS], *ba = &sup.stages[ST_BATCHER];
    struct dp_sup_stage_cfg *en = &sup.stages[ST_ENGINE], *eg = &sup.stages[ST_EGRESS];
    in->keep_fds[in->nkeep++] = S->lfd;
    in->keep_fds[in->nkeep++] = S->efd_ing;
    in->keep_fds[in->nkeep++] = S->fdp[0];
    arg(in, S, ST_INGRESS, "--listen-fd", "%d", S->lfd);
    arg(in, S, ST_INGRESS, "--bell-fd", "%d", S->efd_ing);
    arg(in, S, ST_INGRESS, "--fdpass-fd", "%d", S->fdp[0]);
    arg(in, S, ST_INGRESS, "--model", "%s", model);
    arg(in, S, ST_INGRESS, "--model-id", "%s", model_id);
    arg(in, S, ST_INGRESS, "--max-conns", "%lld", max_conns);
    arg(in, S, ST_INGRESS, "--drain-ms", "%u", (unsigned)(sup.drain_timeout_s * 1000));
    if (dp_opt_str(o, "keys"))
        arg(in, S, ST_INGRESS, "--keys", "%s", dp_opt_str(o, "keys"));
    if (dp_opt_str(o, "chat-template"))
        arg(in, S, ST_INGRESS, "--chat-template", "%s", dp_opt_str(o, "chat-template"));
    if (dp_opt_str(o, "tls-cert")) {
        arg(in, S, ST_INGRESS, "--tls-cert", "%s", dp_opt_str(o, "tls-cert"));
        arg(in, S, ST_INGRESS, "--tls-key", "%s", dp_opt_str(o, "tls-key"));
        /* ingress answers egress's TLS chunks and rings egress's bell */
        in->keep_fds[in->nkeep++] = S->efd_egr;
        arg(in, S, ST_INGRESS, "--egr-bell-fd", "%d", S->efd_egr);
    }

    ba->keep_fds[ba->nkeep++] = S->efd_egr;
    arg(ba, S, ST_BATCHER, "--egr-bell-fd", "%d", S->efd_egr);
    arg(ba, S, ST_BATCHER, "--n-blocks", "%u", sc.n_blocks);
    arg(ba, S, ST_BATCHER, "--max-batch-tokens", "%u", sc.max_batch_tokens);
    arg(ba, S, ST_BATCHER, "--max-seqs", "%u", sc.max_seqs);
    arg(ba, S, ST_BATCHER, "--max-queue", "%u", sc.max_queue);
    arg(ba, S, ST_BATCHER, "--max-queue-tokens", "%u", sc.max_queue_tokens);
    arg(ba, S, ST_BATCHER, "--max-ctx", "%u", sc.max_ctx);
    arg(ba, S, ST_BATCHER, "--queue-timeout-ms", "%llu",
        (unsigned long long)(sc.queue_timeout_ns / 1000000ull));
    arg(ba, S, ST_BATCHER, "--no-overlap", "%d", dp_opt_flag(o, "no-overlap") ? 1 : 0);

    arg(en, S, ST_ENGINE, "--model", "%s", model);
    arg(en, S, ST_ENGINE, "--backend", "%s", backend);
    arg(en, S, ST_ENGINE, "--threads", "%lld", threads);
    arg(en, S, ST_ENGINE, "--n-blocks", "%u", sc.n_blocks);
    arg(en, S, ST_ENGINE, "--max-tokens", "%u", sc.max_batch_tokens);
    arg(en, S, ST_ENGINE, "--max-seqs", "%u", sc.max_seqs);
    arg(en, S, ST_ENGINE, "--n-ctx", "%u", n_ctx);
    /* auto: the engine stage picks what eng_stage_model_info picked */
    if (strcmp(dp_opt_str(o, "kv-cache-type"), "auto"))
        arg(en, S, ST_ENGINE, "--kv-cache-type", "%s", mi.kv_type);

    eg->keep_fds[eg->nkeep++] = S->fdp[1];
    eg->keep_fds[eg->nkeep++] = S->efd_egr;
    eg->keep_fds[eg->nkeep++] = S->efd_ing;
    arg(eg, S, ST_EGRESS, "--fdpass-fd", "%d", S->fdp[1]);
    arg(eg, S, ST_EGRESS, "--bell-fd", "%d", S->efd_egr);
    arg(eg, S, ST_EGRESS, "--ing-bell-fd", "%d", S->efd_ing);
    arg(eg, S, ST_EGRESS, "--model", "%s", model);
    arg(eg, S, ST_EGRESS, "--model-id", "%s", model_id);
    arg(eg, S, ST_EGRESS, "--write-timeout-ms", "%u", (unsigned)(wto * 1000));
    arg(eg, S, ST_EGRESS, "--access-log", "%s", dp_opt_str(o, "access-log"));

    snprintf(S->summary, sizeof(S->summary),
             "serving %s (%s, %u positions, %u KV blocks of %s) with the %s backend on "
             "%s://%s:%u (instance %s)",
             model_id, mi.arch, n_ctx, sc.n_blocks, mi.kv_type, backend,
             dp_opt_str(o, "tls-cert") ? "https" : "http", dp_opt_str(o, "host"), bound, inst);
    /* The stages resolve every symbol at exec, not at its first call: the
     * lazy binder saves the vector registers on the stack
     * (_dl_runtime_resolve_xsave), and the last SIMD memcpy of request
     * content was in them (invariant 5; found by test-serve-retention's
     * cache case). Linking with -Wl,-z,now would do it for every binary. */
    setenv("LD_BIND_NOW", "1", 1);
    favo_info("starting: model %s, %u stages, poll %s", model, ST_N, pollname[poll]);
    ret = dp_sup_run(&sup);
out:
    serve_free(S);
    free(S);
    dp_config_free(&conf);
    return ret;
}
