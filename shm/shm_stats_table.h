/*
 * shm_stats_table.h - every statistic favo keeps, declared ONCE (STYLE.md 8).
 *
 * These X-macro lists generate the enums and the counter block in
 * shm_stats.h, the Prometheus names and HELP lines of /metrics
 * (shm_stats_prom.c), and `favo stat`'s column headings. Nothing else may
 * name a statistic.
 *
 * Rules (Varnish VSC style):
 *   - APPEND ONLY. New entries go at the end of their list; never reorder,
 *     rename or delete one (a retired entry keeps its slot). Readers and
 *     writers of different builds then agree on every common entry; the
 *     segment records a hash of every name, and a reader refuses a segment
 *     whose common entries differ (shm_stats_open).
 *   - Numbers only: counters, gauges and latency histograms. No string a
 *     request could supply can reach the stats segment (invariant 5).
 *   - A Prometheus metric with labels is one entry per label value (all
 *     entries of one metric are adjacent, so one HELP/TYPE line serves them).
 *
 * Columns:
 *   COUNTER(ID, prometheus name, labels, stat column, help)
 *   GAUGE(ID, prometheus name, labels, stat column, aggregate, help)
 *       aggregate across writer blocks: SUM (running requests of all
 *       batchers) or MAX (a ratio that one writer owns)
 *   HIST(ID, prometheus name, stat column, help)     values in nanoseconds,
 *       exported in seconds
 *
 * favo_stage_restarts_total{stage} is not here: it comes from the stage
 * table (shm_stats.h), written by the supervisor, one row per stage; nor
 * are the per-tenant counts (the "tenants" region) and the 10 s / 60 s
 * windows (the "windows" region). The supervisor writes the ring entries
 * (dp_pipe_stats.c) and the restart histogram (dp_sup.c) with its own
 * writer block.
 */
#ifndef SHM_STATS_TABLE_H
#define SHM_STATS_TABLE_H

#define SHM_STATS_COUNTERS(C)                                                              \
    C(PROMPT_TOKENS, "favo_prompt_tokens_total", "", "prompt_tok",                         \
      "Prompt tokens processed (prefill).")                                               \
    C(GENERATION_TOKENS, "favo_generation_tokens_total", "", "gen_tok",                    \
      "Tokens generated (decode).")                                                       \
    C(REQ_OK, "favo_requests_total", "status=\"ok\"", "req_ok",                            \
      "Requests finished, by status.")                                                    \
    C(REQ_ERROR, "favo_requests_total", "status=\"error\"", "req_err",                     \
      "Requests finished, by status.")                                                    \
    C(REQ_CANCELLED, "favo_requests_total", "status=\"cancelled\"", "req_cancel",          \
      "Requests finished, by status.")                                                    \
    C(REQ_TIMEOUT, "favo_requests_total", "status=\"timeout\"", "req_tmo",                 \
      "Requests finished, by status.")                                                    \
    C(REJ_BAD_REQUEST, "favo_requests_rejected_total", "reason=\"bad_request\"", "rej_400", \
      "Requests answered with an early error, by reason.")                                \
    C(REJ_UNAUTHORIZED, "favo_requests_rejected_total", "reason=\"unauthorized\"",         \
      "rej_401", "Requests answered with an early error, by reason.")                     \
    C(REJ_NOT_FOUND, "favo_requests_rejected_total", "reason=\"not_found\"", "rej_404",    \
      "Requests answered with an early error, by reason.")                                \
    C(REJ_TOO_LARGE, "favo_requests_rejected_total", "reason=\"too_large\"", "rej_413",    \
      "Requests answered with an early error, by reason.")                                \
    C(REJ_RATE_LIMIT, "favo_requests_rejected_total", "reason=\"rate_limit\"", "rej_429",  \
      "Requests answered with an early error, by reason.")                                \
    C(REJ_QUEUE_FULL, "favo_requests_rejected_total", "reason=\"queue_full\"", "rej_queue", \
      "Requests answered with an early error, by reason.")                                \
    C(REJ_DRAINING, "favo_requests_rejected_total", "reason=\"draining\"", "rej_drain",    \
      "Requests answered with an early error, by reason.")                                \
    C(RESPONSE_CACHE_HITS, "favo_response_cache_hits_total", "", "cache_hit",             \
      "Requests answered from the response cache.")                                       \
    C(RESPONSE_CACHE_MISSES, "favo_response_cache_misses_total", "", "cache_miss",        \
      "Cacheable requests not found in the response cache.")                              \
    C(PREEMPTIONS, "favo_preemptions_total", "", "preempt",                                \
      "Sequences preempted by recompute (KV blocks exhausted).")                          \
    C(BATCH_STEPS, "favo_batch_steps_total", "", "steps",                                  \
      "Engine steps the batcher planned.")                                                \
    C(ENGINE_STEPS, "favo_engine_steps_total", "", "eng_steps",                           \
      "Engine steps run.")                                                                \
    C(ENGINE_TOKENS, "favo_engine_tokens_total", "", "eng_tok",                           \
      "Tokens computed by engine steps.")                                                 \
    C(ENGINE_PLANS_REFUSED, "favo_engine_plans_refused_total", "", "eng_refused",         \
      "Malformed plans the engine answered with -1.")                                     \
    C(ENGINE_KV_MISSING, "favo_engine_kv_missing_total", "", "eng_kv_miss",               \
      "Sequences answered -1 because their KV is not in this engine (it restarted).")      \
    C(RING_REQ_MSGS, "favo_ring_messages_total", "ring=\"req\"", "req_msgs",               \
      "Messages through each pipeline ring (supervisor, from the ring indices).")          \
    C(RING_PLAN_MSGS, "favo_ring_messages_total", "ring=\"plan\"", "plan_msgs",            \
      "Messages through each pipeline ring (supervisor, from the ring indices).")          \
    C(RING_DONE_MSGS, "favo_ring_messages_total", "ring=\"done\"", "done_msgs",            \
      "Messages through each pipeline ring (supervisor, from the ring indices).")          \
    C(RING_EV_MSGS, "favo_ring_messages_total", "ring=\"ev\"", "ev_msgs",                  \
      "Messages through each pipeline ring (supervisor, from the ring indices).")          \
    C(RING_CTL_MSGS, "favo_ring_messages_total", "ring=\"ctl\"", "ctl_msgs",               \
      "Messages through each pipeline ring (supervisor, from the ring indices).")          \
    C(RING_CONN_MSGS, "favo_ring_messages_total", "ring=\"conn\"", "conn_msgs",            \
      "Messages through each pipeline ring (supervisor, from the ring indices).")

#define SHM_STATS_GAUGES(G)                                                                \
    G(REQUESTS_RUNNING, "favo_requests_running", "", "running", SUM,                       \
      "Requests in the running batch.")                                                   \
    G(REQUESTS_WAITING, "favo_requests_waiting", "", "waiting", SUM,                       \
      "Requests admitted and queued, not yet running.")                                   \
    G(KV_CACHE_USAGE, "favo_kv_cache_usage_ratio", "", "kv_use", MAX,                      \
      "Fraction of KV cache blocks in use (0..1).")                                        \
    G(RING_REQ_DEPTH, "favo_ring_depth", "ring=\"req\"", "req_depth", SUM,                 \
      "Messages waiting in each pipeline ring (supervisor, every 100 ms).")                \
    G(RING_PLAN_DEPTH, "favo_ring_depth", "ring=\"plan\"", "plan_depth", SUM,              \
      "Messages waiting in each pipeline ring (supervisor, every 100 ms).")                \
    G(RING_DONE_DEPTH, "favo_ring_depth", "ring=\"done\"", "done_depth", SUM,              \
      "Messages waiting in each pipeline ring (supervisor, every 100 ms).")                \
    G(RING_EV_DEPTH, "favo_ring_depth", "ring=\"ev\"", "ev_depth", SUM,                    \
      "Messages waiting in each pipeline ring (supervisor, every 100 ms).")                \
    G(RING_CTL_DEPTH, "favo_ring_depth", "ring=\"ctl\"", "ctl_depth", SUM,                 \
      "Messages waiting in each pipeline ring (supervisor, every 100 ms).")                \
    G(RING_CONN_DEPTH, "favo_ring_depth", "ring=\"conn\"", "conn_depth", SUM,              \
      "Messages waiting in each pipeline ring (supervisor, every 100 ms).")                \
    G(RING_REQ_CAP, "favo_ring_capacity", "ring=\"req\"", "req_cap", SUM,                  \
      "Slots of each pipeline ring (all workers or ranks together).")                      \
    G(RING_PLAN_CAP, "favo_ring_capacity", "ring=\"plan\"", "plan_cap", SUM,               \
      "Slots of each pipeline ring (all workers or ranks together).")                      \
    G(RING_DONE_CAP, "favo_ring_capacity", "ring=\"done\"", "done_cap", SUM,               \
      "Slots of each pipeline ring (all workers or ranks together).")                      \
    G(RING_EV_CAP, "favo_ring_capacity", "ring=\"ev\"", "ev_cap", SUM,                     \
      "Slots of each pipeline ring (all workers or ranks together).")                      \
    G(RING_CTL_CAP, "favo_ring_capacity", "ring=\"ctl\"", "ctl_cap", SUM,                  \
      "Slots of each pipeline ring (all workers or ranks together).")                      \
    G(RING_CONN_CAP, "favo_ring_capacity", "ring=\"conn\"", "conn_cap", SUM,               \
      "Slots of each pipeline ring (all workers or ranks together).")

#define SHM_STATS_HISTS(H)                                                                 \
    H(TTFT, "favo_time_to_first_token_seconds", "ttft",                                    \
      "Time from request received to first token sent.")                                  \
    H(ITL, "favo_inter_token_latency_seconds", "itl",                                      \
      "Time between consecutive tokens of one response.")                                 \
    H(E2E, "favo_e2e_request_latency_seconds", "e2e",                                      \
      "Time from request received to last byte sent.")                                    \
    H(QUEUE, "favo_request_queue_time_seconds", "queue",                                   \
      "Time from admission to the first scheduled step.")                                 \
    H(EGRESS, "favo_egress_token_latency_seconds", "egress",                               \
      "Time from the batcher publishing a step's tokens to their bytes on the socket.")   \
    H(ENGINE_STEP, "favo_engine_step_seconds", "eng_step",                                 \
      "One engine step, plan received to results published.")                              \
    H(STAGE_RESTART, "favo_stage_restart_seconds", "restart",                              \
      "Time from a stage's exit to its replacement being up (supervisor).")

#endif /* SHM_STATS_TABLE_H */
