/*
 * ing_openai.h - decoding OpenAI request bodies in place, and OpenAI's
 * error body.
 *
 * What it is
 *   ingress hands the JSON body of POST /v1/completions or
 *   /v1/chat/completions (a span of the request cell, see ing_http.h) to
 *   ing_oai_decode. yajl's event parser walks it once; nothing is built
 *   but struct ing_oai_req, which holds values for numbers and OFFSETS into
 *   the same buffer for every string (invariant 1: no pointers into the
 *   cell). Strings with escapes are decoded IN PLACE: the decoded bytes
 *   (never longer than the escaped ones) are written over the escaped text
 *   starting at the string's first byte, and the span names them. The body
 *   is therefore modified; decode it once.
 *
 * Memory: yajl allocates through a per-call arena: 16 KiB on the caller's
 *   stack (enough for any body whose escaped strings are shorter than
 *   about 8 KiB), then the heap for longer escaped strings (yajl decodes
 *   those into its own buffer too), all released before return. Nothing
 *   outlives the call but *req and the token ids written to the caller's
 *   array. An allocation failure aborts (FAVO_ASSERT): yajl cannot take one.
 *
 * err->message may quote a number the client sent or up to 32 bytes of an
 *   unsupported content-part type name: it is for the client's response
 *   body, never for a log line (invariant 5; log err->param and code).
 *
 * Strictness
 *   - The body is one JSON object (no comments, no trailing data), strings
 *     valid UTF-8 after decoding; \u escapes must pair surrogates. Invalid
 *     JSON -> 400 naming the byte offset; nesting deeper than
 *     ING_OAI_MAX_DEPTH -> 400.
 *   - Known parameters are type- and range-checked; each failure is a 400
 *     with err->param set to the parameter ("temperature",
 *     "messages[2].content[0].type") and a sentence a person understands
 *     ("'temperature' must be between 0 and 2, got 3.5").
 *   - A known parameter given twice -> 400 (the duplicate could hide from a
 *     policy that reads the first one). JSON null means "not given".
 *   - Unknown fields are ignored, whatever they hold. "prompt" is only
 *     known on /v1/completions, "messages" only on /v1/chat/completions.
 *   - Only what favo can do is accepted: n == 1, one prompt (a string, an
 *     array of one string, or an array of token ids), text content parts.
 *
 * Defaults when not given: temperature 1, top_p 1, top_k 0 (off), min_p 0,
 * penalties 0, max_tokens 0 (= the server's choice), no seed.
 * The "given" bit for each parameter is in req->set (ING_OAI_SET_*).
 */
#ifndef ING_OPENAI_H
#define ING_OPENAI_H

#include "ing_http.h"   /* struct ing_span */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ING_OAI_MAX_MESSAGES 256
#define ING_OAI_MAX_PARTS 512          /* text pieces over all messages */
#define ING_OAI_MAX_STOP 4
#define ING_OAI_MAX_STOP_BYTES 256
#define ING_OAI_MAX_DEPTH 32
#define ING_OAI_MAX_TOP_LOGPROBS 20
/* OpenAI's legacy completions API takes 0..5; favo takes up to 20, as
 * chat's top_logprobs (the engine reports 20). */
#define ING_OAI_MAX_LOGPROBS_COMPLETIONS 20

enum ing_oai_route { ING_OAI_COMPLETIONS = 1, ING_OAI_CHAT = 2 };

/* "developer" is mapped to SYSTEM (OpenAI's newer name for it). */
enum ing_oai_role { ING_OAI_SYSTEM = 0, ING_OAI_USER, ING_OAI_ASSISTANT };

enum ing_oai_prompt { ING_OAI_PROMPT_NONE = 0, ING_OAI_PROMPT_TEXT, ING_OAI_PROMPT_TOKENS };

/* Bits of ing_oai_req.set: which parameters the request gave. */
enum {
    ING_OAI_SET_MODEL = 1u << 0, ING_OAI_SET_MAX_TOKENS = 1u << 1,
    ING_OAI_SET_TEMPERATURE = 1u << 2, ING_OAI_SET_TOP_P = 1u << 3,
    ING_OAI_SET_TOP_K = 1u << 4, ING_OAI_SET_MIN_P = 1u << 5,
    ING_OAI_SET_STOP = 1u << 6, ING_OAI_SET_SEED = 1u << 7,
    ING_OAI_SET_FREQUENCY_PENALTY = 1u << 8, ING_OAI_SET_PRESENCE_PENALTY = 1u << 9,
    ING_OAI_SET_LOGPROBS = 1u << 10, ING_OAI_SET_TOP_LOGPROBS = 1u << 11,
    ING_OAI_SET_USER = 1u << 12, ING_OAI_SET_STREAM_OPTIONS = 1u << 13,
};

/* A chat message: its text is parts [first_part, first_part + nparts) of
 * ing_oai_req.part, in order (a string content is one part). */
struct ing_oai_msg {
    uint8_t role;           /* enum ing_oai_role */
    uint16_t first_part;
    uint16_t nparts;
};

struct ing_oai_req {
    uint8_t route;          /* enum ing_oai_route */
    uint8_t prompt_kind;    /* enum ing_oai_prompt (completions) */
    uint8_t stream;
    uint8_t include_usage;  /* stream_options.include_usage */
    uint8_t logprobs;       /* chat: 0/1; completions: 0..20 alternatives
                               (asked when set has ING_OAI_SET_LOGPROBS) */
    uint8_t top_logprobs;   /* 0..20 */
    uint8_t nstop;
    uint32_t set;           /* ING_OAI_SET_* */
    struct ing_span model, user;
    struct ing_span prompt;         /* PROMPT_TEXT */
    uint32_t prompt_ntok;           /* PROMPT_TOKENS: ids in the caller's array */
    struct ing_span stop[ING_OAI_MAX_STOP];
    uint32_t max_tokens;    /* max_completion_tokens, else max_tokens; 0: not given */
    int32_t top_k;          /* 0 or -1: off */
    int64_t seed;
    double temperature, top_p, min_p, frequency_penalty, presence_penalty;
    uint32_t nmsg, npart;
    struct ing_oai_msg msg[ING_OAI_MAX_MESSAGES];
    struct ing_span part[ING_OAI_MAX_PARTS];
};

/* A refused request: what ing_oai_error_body renders. */
struct ing_oai_err {
    uint16_t status;        /* 400 */
    uint32_t offset;        /* byte offset in the body near the problem */
    char param[64];         /* "" when no single parameter is at fault */
    char code[40];          /* "invalid_type", "invalid_value", ... or "" */
    char message[256];
};

/*
 * Decode the JSON body buf[body.off, body.off + body.len) of a request to
 * route into *req (spans are offsets into buf, like ing_http's). Token-id
 * prompts are written to tokens[0, tok_cap). Returns 0, or -EINVAL with
 * *err filled (status 400) for anything the client got wrong. The body is
 * modified in place (escaped strings decoded). An unknown route is the
 * caller's bug: -EINVAL with err->status 500.
 */
int ing_oai_decode(struct ing_oai_req *req, int route, uint8_t *buf, struct ing_span body,
                   uint32_t *tokens, uint32_t tok_cap, struct ing_oai_err *err);

/* OpenAI's error "type" for an HTTP status: "invalid_request_error" (4xx,
 * 404 included, as OpenAI answers an unknown URL), "authentication_error"
 * (401), "permission_error" (403), "requests" (429; "tokens" is the
 * caller's to pass for a token limit), "server_error" (5xx). */
const char *ing_oai_error_type(int status);

/*
 * Write {"error":{"message":...,"type":...,"param":...,"code":...}} into
 * out[0, cap), NUL-ended. type NULL: ing_oai_error_type(status); param or
 * code NULL or "": JSON null (for 429 a NULL code is "rate_limit_exceeded").
 * Strings are JSON-escaped; invalid UTF-8 becomes U+FFFD, so the body is
 * always valid JSON. Returns its length, or -ENOSPC when it does not fit.
 */
int ing_oai_error_body(char *out, size_t cap, int status, const char *type, const char *message,
                       const char *param, const char *code);
/* The same for a decode error. */
int ing_oai_err_body(char *out, size_t cap, const struct ing_oai_err *e);

/*
 * yajl_tree_free that scrubs first: every string value, object key and
 * number text of the tree is zeroed (explicit_bzero) before the tree is
 * freed, so a request body parsed with yajl_tree_parse leaves no copy in
 * freed heap (ARCHITECTURE.md invariant 5). NULL is a no-op. yajl_tree_parse
 * also decodes strings with escapes into a buffer of its own that it frees
 * unscrubbed; bodies with content should go through ing_oai_decode.
 */
struct yajl_val_s;
void ing_oai_tree_free(struct yajl_val_s *v);

/*
 * Zero 16 KiB of stack below the caller's frame: where the frames of the
 * calls it just made lay (the tokenizer's and detokenizer's piece buffers,
 * yajl). Call it after work on content whose callees may leave it on the
 * stack (invariant 5); noinline, never optimised away.
 */
void ing_oai_stack_scrub(void);

#endif /* ING_OPENAI_H */
