/*
 * bench-egress-fmt.c - what egress's formatting costs per token event
 * (egress/egr.h), measured in one run:
 *
 *   stream_chat_ns       one token event of a streaming chat response with
 *                        include_usage and 2 stop strings: detok + stop
 *                        match + SSE event + chunk framing + draining the
 *                        area (egr_resp_consume)
 *   stream_cmpl_ns       the same for /v1/completions
 *   body_chat_ns         a non-streaming chat response (text kept escaped,
 *                        the body assembled once at the end), per token
 *   token_chat_ns        stream_chat with real token ids through the
 *                        SmolLM2 tokenizer ($FAVO_MODELS; -1 without it)
 *   token_chat_lp_ns     the same with logprobs and 5 alternatives per token
 *   bytes_per_event      SSE bytes per streamed token (chat)
 *
 * Each figure is the median of 7 runs of 512-token responses.
 * Usage: bench-egress-fmt [--json]
 */
#include "perf_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "egr.h"
#include "eng_gguf.h"
#include "favo_base.h"

#define NTOK 512
#define RUNS 7

static const char *words[] = {" the", " model", " said", ",", " égal", " \"x\"", "\n", " token"};

static double run(int route, int stream, const eng_tok_t *tok, const int32_t *ids, int top, double *bpe)
{
    static char area[1 << 18];
    const char *stops[] = {"<|END|>", "\n\nUser:"};
    size_t sl[] = {7, 7};
    double v[RUNS];

    for (int k = 0; k < RUNS; k++) {
        struct egr_resp_cfg cfg = {
            .route = (uint8_t)route, .stream = (uint8_t)stream, .include_usage = 1,
            .keep_alive = 1, .max_tokens = NTOK, .prompt_tokens = 100, .created = 1700000000,
            .id = "chatcmpl-0123456789abcdef01234567", .model = "SmolLM2-135M-Instruct",
            .fingerprint = "fp_favo", .request_id = "req-0123456789", .stops = stops,
            .stop_lens = sl, .n_stops = 2, .logprobs = top > 0, .top_logprobs = (uint8_t)top};
        struct egr_lp lp = {.logprob = -0.5f, .n_top = (uint8_t)top};
        struct egr_resp r;
        uint64_t bytes = 0, t0 = favo_now_ns();

        if (egr_resp_init(&r, &cfg, area, sizeof(area)) < 0)
            return -1;
        for (int i = 0; i < NTOK; i++) {
            for (int j = 0; j < top; j++)
                lp.top_id[j] = ids[(i + j) % NTOK], lp.top_lp[j] = -0.5f - (float)j;
            int rc = tok ? egr_resp_token_lp(&r, tok, ids[i], top ? &lp : NULL, area, sizeof(area))
                         : egr_resp_bytes(&r, words[i & 7], strlen(words[i & 7]), false, area,
                                          sizeof(area));
            if (rc < 0)
                return -1;
            if (stream) {
                bytes += egr_resp_pending(&r);
                egr_resp_consume(&r, area, egr_resp_pending(&r));
            }
            if (rc & EGR_DONE)
                break;
        }
        v[k] = (double)(favo_now_ns() - t0) / NTOK;
        if (bpe)
            *bpe = (double)bytes / NTOK;
    }
    return perf_quantile(v, RUNS, 0.5);
}

static double run_tokens(int top)
{
    char path[1024], err[256];
    eng_gguf_t *g = NULL;
    eng_tok_t *tok = NULL;
    const char *m = getenv("FAVO_MODELS");
    static int32_t ids[NTOK * 8];
    static char text[NTOK * 8];
    double ns;

    snprintf(path, sizeof(path), "%s/SmolLM2-135M-Instruct.Q4_1.gguf", m ? m : "models");
    if (eng_gguf_open(&g, path, err, sizeof(err)))
        return -1;
    int rc = eng_tok_load(&tok, g, err, sizeof(err));
    eng_gguf_close(g);
    if (rc)
        return -1;
    size_t tl = 0;
    for (int i = 0; tl + 16 < sizeof(text); i++)
        tl += (size_t)snprintf(text + tl, sizeof(text) - tl, "%s", words[i & 7]);
    int64_t k = eng_tok_encode(tok, text, tl, 0, ids, NTOK * 8);
    ns = k >= NTOK ? run(EGR_CHAT, 1, tok, ids, top, NULL) : -1;
    eng_tok_free(tok);
    return ns;
}

int main(int argc, char **argv)
{
    double bpe = 0;
    double sc = run(EGR_CHAT, 1, NULL, NULL, 0, &bpe);
    double sp = run(EGR_COMPLETIONS, 1, NULL, NULL, 0, NULL);
    double bc = run(EGR_CHAT, 0, NULL, NULL, 0, NULL);
    double tc = run_tokens(0), tl = run_tokens(5);
    char mach[256];

    perf_machine(mach, sizeof(mach));
    if (perf_want_json(argc, argv)) {
        perf_json_begin(stdout);
        perf_json_str(stdout, "machine", mach);
        perf_json_num(stdout, "stream_chat_ns", sc);
        perf_json_num(stdout, "stream_cmpl_ns", sp);
        perf_json_num(stdout, "body_chat_ns", bc);
        perf_json_num(stdout, "token_chat_ns", tc);
        perf_json_num(stdout, "token_chat_lp_ns", tl);
        perf_json_num(stdout, "bytes_per_event", bpe);
        perf_json_end(stdout);
        return 0;
    }
    printf("egress formatting, per token event (median of %d x %d tokens)\n%s\n", RUNS, NTOK, mach);
    printf("  %-22s %10.1f ns\n", "stream chat", sc);
    printf("  %-22s %10.1f ns\n", "stream completions", sp);
    printf("  %-22s %10.1f ns\n", "non-stream chat", bc);
    printf("  %-22s %10.1f ns%s\n", "stream chat, token ids", tc, tc < 0 ? " (no model)" : "");
    printf("  %-22s %10.1f ns%s\n", "  + logprobs, top 5", tl, tl < 0 ? " (no model)" : "");
    printf("  %-22s %10.1f B\n", "SSE bytes per event", bpe);
    return 0;
}
