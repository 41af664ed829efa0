/*
 * egr.h - egress response formatting: OpenAI-exact SSE and JSON bodies,
 * HTTP/1.1 heads and chunked framing, the per-response state machine that
 * turns token events into those bytes, and the access-log record.
 *
 * What it is
 *   The egress io_uring loop (not here) calls egr_resp_* once per token
 *   event of a request. Everything here is pure and allocation-free
 *   (invariant 8): bytes are written into a caller buffer, in the real
 *   system the response area of the request's cell in shared memory. The
 *   state (struct egr_resp) is fixed-size and pointer-free (invariant 1),
 *   so it can live in the cell beside the area, and the area is passed to
 *   every call instead of stored.
 *
 * Who writes what: egress is the only writer of struct egr_resp and of the
 *   response area; the socket side of egress drains [0, pending) from the
 *   area and reports it with egr_resp_consume.
 *
 * Lifecycle of one response
 *
 *   egr_resp_init ──► BODY ──token*──► (stop | EOG | max_tokens) ──► DONE
 *        │ (stream: head written now)       │ egr_resp_finish (abort,
 *        │                                  │  context full): also ──► DONE
 *        └ non-stream: head + JSON written at DONE (Content-Length known)
 *
 *   Streaming output, each event in one HTTP chunk:
 *     data: {first chunk, delta {"role":"assistant","content":""}}   (chat)
 *     data: {delta {"content":"..."}} / {"text":"..."}               per text
 *     data: {final chunk: empty delta / text "", finish_reason}
 *     data: {"choices":[], "usage":{...}}          (stream_options.include_usage)
 *     data: [DONE]
 *     0 CRLF CRLF
 *
 * Invariants
 *   1. The area is never written past cap: a call that might not fit
 *      returns -EAGAIN BEFORE changing any state, so the caller drains the
 *      area (egr_resp_consume) and repeats the same call.
 *   2. Every byte of text in the output comes from eng_detok, so it is
 *      complete, valid UTF-8; JSON strings are escaped by egr_json_str and
 *      never split inside a UTF-8 sequence.
 *   3. After DONE nothing more is written; further token events return
 *      EGR_DONE and write nothing.
 *   4. No content (text, token ids) ever reaches struct egr_access or a log
 *      line: egr_access has no field that could hold it.
 *
 * Logprobs (cfg.logprobs, through egr_resp_token_lp only: pieces need the
 * tokenizer). Not requested: "logprobs":null in every choice, as OpenAI
 * sends it. Requested, OpenAI's shapes:
 *   chat:        {"content":[{"token","logprob","bytes","top_logprobs":
 *                [{"token","logprob","bytes"}..]}]}; streaming: one chunk
 *                per token (content "" while text is held back), carrying
 *                that token's entry; non-streaming: all entries.
 *   completions: {"tokens","token_logprobs","top_logprobs","text_offset"};
 *                top_logprobs a list of {piece: logprob} objects, null
 *                with 0 alternatives; streaming: one token per chunk.
 *                text_offset is the token's offset in the completion text
 *                in characters: the characters of the earlier tokens'
 *                pieces (a piece that ends inside a UTF-8 sequence counts
 *                the sequence where it starts).
 *   "token" is the token's own piece (the sampled token's, not the text it
 *   released), "bytes" its bytes (partial UTF-8 included), special tokens
 *   shown. The end-of-generation token that ends a response has no entry.
 *   A body keeps each token's data as a binary record at the end of the
 *   area and renders the JSON at the end, so finishing a body with
 *   logprobs needs the tokenizer: egr_resp_finish_tok (egr_resp_finish
 *   answers -EINVAL for it).
 *   A logprob that is not finite is written as -9999.0 (JSON has no -inf).
 * Left out: n > 1.
 */
#ifndef EGR_H
#define EGR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eng_detok.h"
#include "eng_tok.h"

/* ---- egr_fmt: the building blocks ------------------------------------ */

/* JSON string body (no quotes) of s[0, len): '"' and '\\' escaped, \b \f
 * \n \r \t short, other control chars \u00XX, valid UTF-8 passed through,
 * each invalid byte \ufffd. Returns the length written, or -ENOSPC (out
 * holds a prefix ending on a character boundary). */
int egr_json_str(char *out, size_t cap, const char *s, size_t len);

struct favo_buf;
/* egr_json_str appended to w (favo_buf.h; -ENOSPC latches there) */
void egr_put_js(struct favo_buf *w, const char *s, size_t len);

struct egr_head {
    uint16_t status;            /* 200, 4xx, 5xx */
    uint8_t stream;             /* text/event-stream + chunked, else JSON + length */
    uint8_t keep_alive;         /* Connection: keep-alive, else close */
    uint64_t content_length;    /* non-stream only */
    const char *request_id;     /* X-Request-Id echo; NULL or "" for none */
    const char *extra;          /* complete header lines, each ending CRLF */
};

/* The response head, ending with the empty line. Returns its length or
 * -ENOSPC; -EINVAL when request_id holds a control character (CR/LF:
 * response splitting) or extra does not end CRLF. */
int egr_head(char *out, size_t cap, const struct egr_head *h);

/* Wrap data[0, len) in one chunk: hex size CRLF data CRLF. data may be
 * out + EGR_CHUNK_PAD (formatted in place): it is moved into position.
 * len 0 writes nothing (a zero chunk would end the body). Returns the
 * length written or -ENOSPC. */
#define EGR_CHUNK_PAD 10        /* "ffffffff\r\n" */
int egr_chunk(char *out, size_t cap, const char *data, size_t len);
/* The last chunk: "0\r\n\r\n". */
int egr_chunk_end(char *out, size_t cap);

/* ---- egr_resp: the per-response state machine ------------------------ */

#define EGR_RESP_MAGIC 0x45475231u  /* "EGR1" */
#define EGR_ID_MAX 64
#define EGR_MODEL_MAX 128
#define EGR_FP_MAX 32

enum egr_route { EGR_COMPLETIONS = 1, EGR_CHAT = 2 };   /* = ing_oai_route */
enum egr_finish { EGR_FIN_NONE = 0, EGR_FIN_STOP, EGR_FIN_LENGTH };

/* Return bits of the token calls (>= 0). */
enum {
    EGR_DONE = 1 << 0,          /* the response is complete (area holds the end) */
    EGR_CANCEL = 1 << 1,        /* a stop string ended it: tell the batcher */
};

struct egr_resp_cfg {
    uint8_t route;              /* enum egr_route */
    uint8_t stream, include_usage, keep_alive;
    uint32_t max_tokens;        /* 0: no limit here (the batcher's) */
    uint32_t prompt_tokens;
    uint64_t created;           /* unix seconds */
    const char *id;             /* "chatcmpl-..." / "cmpl-...", < EGR_ID_MAX */
    const char *model;          /* < EGR_MODEL_MAX bytes */
    const char *fingerprint;    /* system_fingerprint, < EGR_FP_MAX */
    const char *request_id;     /* X-Request-Id, < EGR_ID_MAX; NULL: none */
    const char *extra_head;     /* extra header lines (CRLF each); NULL: none */
    const char *const *stops;   /* copied into the detokenizer at init */
    const size_t *stop_lens;
    unsigned n_stops;
    unsigned detok_flags;       /* ENG_DETOK_* */
    uint8_t logprobs;           /* requested (completions: also with 0 alternatives) */
    uint8_t top_logprobs;       /* alternatives per token, <= EGR_TOP_MAX */
};

#define EGR_TOP_MAX 20

/* The sampler's logprob data for one sampled token. */
struct egr_lp {
    float logprob;              /* of the sampled token */
    uint8_t n_top;              /* alternatives given (clipped to top_logprobs) */
    int32_t top_id[EGR_TOP_MAX];
    float top_lp[EGR_TOP_MAX];
};

struct egr_resp {
    uint32_t magic;
    uint8_t route, stream, include_usage, keep_alive;
    uint8_t state;              /* 1 BODY, 2 DONE */
    uint8_t finish;             /* enum egr_finish */
    uint8_t sent_first;         /* chat: the role chunk is out */
    uint32_t max_tokens, prompt_tokens, completion_tokens;
    uint64_t created;
    uint32_t pending;           /* bytes ready in area[0, pending) */
    uint32_t text_len;          /* non-stream: escaped text at area[0, text_len) */
    uint32_t head_extra_len;
    uint8_t logprobs, top_logprobs;
    uint32_t text_off;          /* bytes of completion text released so far */
    uint32_t lp_n;              /* non-stream: binary logprob records at the end of
                                   the area (egr_resp.c), rendered at the end */
    uint32_t char_off;          /* characters of the sampled tokens' pieces so far
                                   (completions' text_offset) */
    char id[EGR_ID_MAX], model[EGR_MODEL_MAX], fp[EGR_FP_MAX], request_id[EGR_ID_MAX];
    char head_extra[256];
    struct eng_detok detok;
};

/* Start a response. Streaming: writes the head into area (returns its
 * length). Non-streaming: writes nothing yet (returns 0). -EINVAL for a
 * bad cfg (strings too long, bad route, stops eng_detok refuses),
 * -ENOSPC if the area cannot hold the head. */
int egr_resp_init(struct egr_resp *r, const struct egr_resp_cfg *cfg, char *area, size_t cap);

/* One sampled token. Counts it, detokenizes it (EOG ends with "stop" and
 * contributes no text), and writes the resulting events. Returns EGR_*
 * bits (0: more to come), -EAGAIN when the area has no room for the worst
 * case of this call (nothing changed: drain and repeat), -ENOBUFS for a
 * non-streaming body that outgrew the area, or a stream whose EMPTY area
 * is smaller than egr_resp_need (the response is lost: answer 500 or
 * close), -ERANGE for a bad id, -E2BIG for a tokenizer whose pieces
 * exceed the internal 2 KiB text buffer. */
int egr_resp_token(struct egr_resp *r, const eng_tok_t *tok, int32_t id, char *area, size_t cap);

/* The same with the token's logprob data (lp NULL: none; with logprobs
 * requested, a NULL lp writes logprob 0 and no alternatives). -EINVAL for
 * an alternative id out of range. */
int egr_resp_token_lp(struct egr_resp *r, const eng_tok_t *tok, int32_t id,
                      const struct egr_lp *lp, char *area, size_t cap);

/* The same for a token already turned into bytes (eog: it was an EOG). */
int egr_resp_bytes(struct egr_resp *r, const char *p, size_t len, bool eog, char *area,
                   size_t cap);

/* End it now with reason (EGR_FIN_STOP or EGR_FIN_LENGTH), e.g. when the
 * context is full. Returns EGR_DONE, or -EAGAIN / -ENOBUFS as above. */
int egr_resp_finish(struct egr_resp *r, int reason, char *area, size_t cap);
/* The same with the tokenizer, which a body with logprobs needs (tok may
 * be NULL otherwise). */
int egr_resp_finish_tok(struct egr_resp *r, const eng_tok_t *tok, int reason, char *area,
                        size_t cap);

/* Bytes ready to send: area[0, egr_resp_pending(r)). */
static inline size_t egr_resp_pending(const struct egr_resp *r) { return r->pending; }
/* n bytes of them were sent; the rest moves to the front. */
void egr_resp_consume(struct egr_resp *r, char *area, size_t n);

/* Bytes of area one token event may need beyond pending (for -EAGAIN). */
size_t egr_resp_need(const struct egr_resp *r, size_t text_max);

/* ---- egr_log: the access record -------------------------------------- */

/* Metadata only (invariant 4): no field can hold text or token ids. */
struct egr_access {
    uint64_t wall_ns;           /* completion time, favo_wall_ns() */
    char request_id[EGR_ID_MAX];
    char tenant[64];
    char model[EGR_MODEL_MAX];
    uint16_t status;
    uint8_t finish;             /* enum egr_finish */
    uint32_t prompt_tokens, completion_tokens;
    uint64_t queue_ns, ttft_ns, total_ns;
};

/* One JSON line, '\n'-ended: {"time":"2026-11-23T10:26:23.123Z",
 * "request_id","tenant","model","status","finish_reason","prompt_tokens",
 * "completion_tokens","queue_ms","ttft_ms","total_ms"}. Returns its length
 * or -ENOSPC. */
int egr_log_line(char *out, size_t cap, const struct egr_access *a);

/* ---- egr_scrub ------------------------------------------------------- */

/* explicit_bzero the state and area[0, cap) (text lives in both: detok's
 * hold buffer and the pending bytes). */
void egr_scrub(struct egr_resp *r, char *area, size_t cap);

#endif /* EGR_H */
