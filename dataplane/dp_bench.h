/*
 * dp_bench.h - the engine of `favo bench`: an io_uring load generator for
 * OpenAI-compatible servers (favo, llama.cpp's server, vLLM), written for
 * tail-latency work. Prefix dp_bench_.
 *
 * What it measures, per request:
 *   TTFT  first SSE "data:" event (not [DONE]) minus the INTENDED send time
 *   ITL   gap between consecutive data events of one request (events that
 *         arrive in one recv() get a gap of 0: that is what a client saw)
 *   E2E   end of the response body minus the INTENDED send time
 * Non-streaming requests give E2E only.
 *
 * Arrivals:
 *   open loop   --rate R, Poisson (exponential gaps) or constant. Request i
 *               has an intended time t_i fixed by the schedule alone. When
 *               all --max-connections are busy it waits in a FIFO; the wait
 *               counts, because latency starts at t_i (no coordinated
 *               omission: a stalled server shows its stall in the tail).
 *   closed loop --concurrency C: C requests in flight; a request's intended
 *               time is the moment the previous one finished.
 *
 * Connections: one TCP connection per request, "Connection: close"; the
 * connect time is part of every latency (on loopback it is ~20 us). The
 * body ends at the terminal chunk, at Content-Length, or at EOF.
 *
 *   FREE --start--> CONNECT --ok--> SEND --all sent--> RECV --body end/EOF--> FREE
 *                      |              |                  |
 *                      +--error-------+------------------+--> FREE (counted)
 *
 * Statistics: every sample is kept (double, milliseconds). Percentile p of
 * n sorted samples is the nearest rank: x[ceil(p/100 * n) - 1] (p=0: x[0]).
 *
 * Output tokens: usage.completion_tokens, the server's own count. Streams
 * ask for it (stream_options.include_usage); a server that sends no usage
 * event is counted by its data events that carry text (one token per event,
 * as favo, llama.cpp and vLLM stream; role-only, finish-only and usage
 * events are skipped, see event_has_text). Events undercount: a token that
 * ends inside a UTF-8 character or has no text (a special token under
 * ignore_eos) sends none. Inter-token latency is always between events.
 *
 * Prompts: synthesized from common English words that are one token each in
 * GPT-2/Llama/SmolLM BPE vocabularies, so N words ~ N tokens (a request
 * number leads, so prompts never share a cached prefix). --prompts files
 * are sent as given; their length is estimated as whitespace words.
 *
 * Invariants:
 *   1. a connection slot has at most one io_uring operation in flight; its
 *      user_data is the slot index.
 *   2. every request that was scheduled ends in exactly one of: ok, an HTTP
 *      status error, a connection/protocol error, a timeout.
 *   3. no prompt or generated text is logged or written anywhere: the report
 *      holds numbers only (ARCHITECTURE invariant 5).
 */
#ifndef DP_BENCH_H
#define DP_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

struct dp_bench_work {
    int in_tokens;       /* prompt length (synthesized text) */
    int out_tokens;      /* max_tokens */
    double weight;       /* relative frequency */
    char *prompt;        /* NULL: synthesize in_tokens words */
};

/* Built-in profile "mix": the product brief's specialist mix, equal weights. */
extern const struct dp_bench_work dp_bench_mix[6];
extern const char *const dp_bench_mix_names[6];

struct dp_bench_cfg {
    char host[256];
    int port;
    char path[512];      /* full request path, e.g. /v1/chat/completions */
    const char *model;   /* NULL: no "model" field */
    const char *api_key; /* NULL: no Authorization header */
    bool chat, stream, poisson, progress;
    double rate;         /* open loop when > 0 */
    int concurrency;     /* closed loop when > 0 */
    double duration;     /* seconds of arrivals; 0: use requests */
    long requests;       /* 0: use duration */
    int max_conns;
    double timeout_s;    /* per request */
    uint64_t seed;
    const struct dp_bench_work *work;
    int nwork;
    bool keep_records;   /* fill res->rec: one timing record per request */
};

struct dp_bench_samples {
    double *v;
    size_t n, cap;
};

/* One request's timeline, in ms since the run's start (NAN: not reached).
 * Numbers only (invariant 3). Lets another tool's definitions be applied
 * to the same requests, e.g. TTFT from the actual send instead of the
 * intended time, or E2E to the last token instead of the end of the body. */
enum dp_bench_outcome { DP_BENCH_OK, DP_BENCH_HTTP, DP_BENCH_CONN, DP_BENCH_PROTO, DP_BENCH_TIMEOUT };
struct dp_bench_rec {
    double intended_ms;  /* from the schedule (open loop) or the previous end */
    double start_ms;     /* socket created, connect submitted */
    double sent_ms;      /* last request byte accepted by the kernel */
    double first_ms;     /* first data event with text (TTFT's end) */
    double last_ms;      /* last data event with text */
    double end_ms;       /* body complete or error (E2E's end) */
    long tokens;
    int status;          /* HTTP status, 0 when none was read */
    int outcome;         /* enum dp_bench_outcome */
};

struct dp_bench_res {
    struct dp_bench_samples ttft, itl, e2e;
    struct dp_bench_rec *rec; /* cfg->keep_records: one per finished request */
    size_t nrec, rec_cap;
    long scheduled, ok, http_err, conn_err, proto_err, timeouts;
    long by_status[600];
    long out_tokens;
    double wall_s;       /* first intended send to last completion */
    double rate;         /* offered rate, 0 for closed loop */
};

/* Parse http://host[:port][/prefix] and set cfg->host, port and path
 * (prefix + /v1/completions or /v1/chat/completions). -EINVAL with a message
 * in err for anything else (https is not supported). */
int dp_bench_set_url(struct dp_bench_cfg *cfg, const char *url, char *err, size_t errn);
/* Read FILE.jsonl ({"prompt":...,"max_tokens":...} per line). Returns the
 * count, or -errno / -EINVAL with err naming the line and field. */
int dp_bench_load_prompts(const char *file, struct dp_bench_work **out, char *err,
                          size_t errn);
void dp_bench_free_prompts(struct dp_bench_work *w, int n);

/* Run one load test. Returns 0, or -errno when it could not run at all. */
int dp_bench_run(const struct dp_bench_cfg *cfg, struct dp_bench_res *res);
void dp_bench_res_free(struct dp_bench_res *res);

/* Nearest-rank percentile of s (sorts it). NAN when empty. */
double dp_bench_pct(struct dp_bench_samples *s, double p);
/* Look up "ttft_p99_ms" style metric names; -EINVAL when unknown. */
int dp_bench_metric(struct dp_bench_res *res, const char *name, double *v);

void dp_bench_table(FILE *f, struct dp_bench_res *res);
/* res->rec as JSON lines, one object per request (keys as in struct
 * dp_bench_rec, null for NAN). Returns 0 or -EIO. */
int dp_bench_records_jsonl(FILE *f, const struct dp_bench_res *res);
/* One JSON object for one run (no trailing newline). */
void dp_bench_json_run(FILE *f, struct dp_bench_res *res);
/* Latency-percentile chart: x = percentile on a "nines" scale
 * (-log10(1 - p/100), 0..99.99), y = ms on a log scale over whole decades
 * (at most six), one line per metric, its p50 and p99 in the legend. */
int dp_bench_svg(FILE *f, struct dp_bench_res *res, const char *title);

/* The response parser on its own, for tests and fuzzing: feed buf[0..n) in
 * pieces of `piece` bytes as recv() would, then EOF. tokens:
 * usage.completion_tokens, or without a usage event the SSE data events with text; complete: the body ended (terminal
 * chunk, Content-Length or EOF). Returns 0, or -EPROTO for malformed
 * framing (bad status line, headers over 16 KiB, bad chunk sizes). */
struct dp_bench_parsed {
    int status;
    long tokens;
    bool complete;
};
int dp_bench_parse_response(bool stream, const char *buf, size_t n, size_t piece,
                            struct dp_bench_parsed *out);

#endif /* DP_BENCH_H */
