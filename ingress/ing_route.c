/*
 * ing_route.c - what ingress answers on each route, and the handoff of
 * generation requests to the batcher (contract: ing_loop.h).
 *
 *   route                   method  answered by
 *   /health                 GET     here: 200 {"status":"ok"} while the loop runs
 *   /ready                  GET     here: 200 when the model is loaded, a batcher
 *                                   is attached (cfg.batcher_up), every stage in
 *                                   the stats segment's stage table is RUNNING,
 *                                   and the worker is not draining; else 503
 *   /metrics                GET     here: Prometheus text of a stats snapshot
 *   /v1/models              GET     here
 *   /tokenize, /detokenize  POST    here (vLLM's bodies)
 *   /v1/completions         POST    decoded, validated, tokenized into the
 *   /v1/chat/completions    POST    cell, then the batcher (503 without one)
 *
 *   Unknown path: 404. Known path, other method: 405 with Allow. Every
 *   error body is OpenAI's shape (ing_oai_error_body).
 *
 *   Specialists (shm/shm_spec.h; the supervisor publishes the table in the
 *   data segment, ingress reads it per request): `model` names the loaded
 *   model, a specialist, or nothing (the loaded model); any other name is
 *   404 model_not_found, as before specialists. A specialist's system
 *   prompt comes first: for chat it is a system message put before the
 *   request's messages (a request's own system message follows it), then
 *   the chat template; for /v1/completions its text is tokenized on its
 *   own with the model's BOS and put before the prompt's ids (tokenized
 *   without BOS), as llama.cpp's server did with its system_prompt; a
 *   token-id prompt gets the same ids in front. /tokenize with `model`
 *   naming a specialist counts the same ids. Parameters the request did
 *   not give take the specialist's defaults; max_tokens is lowered to
 *   its cap (and, not given, is its default_max_tokens, else the server's
 *   choice within the cap); its priority replaces the key's when it sets
 *   one; the shm_req carries its name and cache TTL to the batcher.
 *   /v1/models lists the model, then every specialist ("parent": the
 *   model, as vLLM lists LoRA adapters).
 *
 *   Order of checks on a request: route (404) -> method (405) -> API key
 *   (401; all but /health, /ready, /metrics) -> rate limit (429; the
 *   generation routes after tokenization, when the token cost is known)
 *   -> the route's own validation (400/413/415) -> batcher (503).
 *
 *   Left for the stages that do not exist yet: a connection whose request
 *   went to the batcher stops parsing (pipelined bytes wait in its next
 *   cell) until egress says the response is done, and a client that
 *   disconnects meanwhile is closed here but not yet cancelled in the
 *   batcher (no ingress->batcher cancel message yet).
 */

#include "ing_loop_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_tree.h>

#include "shm_fdpass.h"
#include "shm_spec.h"
#include "../shm/favo_base.h"

enum route_id {
    R_HEALTH, R_READY, R_METRICS, R_MODELS, R_TOKENIZE, R_DETOKENIZE, R_COMPL, R_CHAT,
};

static const struct {
    const char *path;
    int method;
    const char *allow;
} routes[] = {
    [R_HEALTH] = { "/health", ING_HTTP_GET, "GET, HEAD" },
    [R_READY] = { "/ready", ING_HTTP_GET, "GET, HEAD" },
    [R_METRICS] = { "/metrics", ING_HTTP_GET, "GET, HEAD" },
    [R_MODELS] = { "/v1/models", ING_HTTP_GET, "GET, HEAD" },
    [R_TOKENIZE] = { "/tokenize", ING_HTTP_POST, "POST" },
    [R_DETOKENIZE] = { "/detokenize", ING_HTTP_POST, "POST" },
    [R_COMPL] = { "/v1/completions", ING_HTTP_POST, "POST" },
    [R_CHAT] = { "/v1/chat/completions", ING_HTTP_POST, "POST" },
};

/* ------------------------------------------------------------- the model */

int ing_route_model_load(struct ing_loop *L)
{
    const char *path = L->cfg.model_path, *base;
    struct eng_gguf_str arch;
    char err[256], key[96];
    uint32_t n_ctx = 0;
    int rc;

    rc = eng_gguf_open(&L->gguf, path, err, sizeof(err));
    if (rc) {
        favo_err("ingress: model %s: %s", path, err);
        return rc;
    }
    rc = eng_tok_load(&L->tok, L->gguf, err, sizeof(err));
    if (rc) {
        favo_err("ingress: tokenizer of %s: %s", path, err);
        return rc;
    }
    if (eng_gguf_get_str(L->gguf, "general.architecture", &arch) == 0 && arch.len < 64) {
        snprintf(key, sizeof(key), "%.*s.context_length", (int)arch.len, arch.p);
        (void)eng_gguf_get_u32(L->gguf, key, &n_ctx);
    }
    L->n_ctx = n_ctx ? FAVO_MIN(n_ctx, 8192u) : 2048u; /* the engine's default cap */
    if (L->cfg.pipe && L->cfg.pipe->hdr->n_ctx) /* serve's --ctx-size, as the engine runs it */
        L->n_ctx = L->cfg.pipe->hdr->n_ctx;
    L->chat_ok = eng_chat_from_tok(&L->chat, L->tok, L->cfg.chat_template, err, sizeof(err)) == 0;
    if (!L->chat_ok && L->cfg.chat_template) {
        favo_err("ingress: --chat-template %s: %s", L->cfg.chat_template, err);
        return -EINVAL;
    }
    if (!L->chat_ok)
        favo_warn("ingress: %s: no chat template (%s); /v1/chat/completions answers 400",
                  path, err);
    if (L->cfg.model_id) {
        snprintf(L->model_id, sizeof(L->model_id), "%s", L->cfg.model_id);
    } else {
        base = strrchr(path, '/');
        base = base ? base + 1 : path;
        size_t n = strlen(base);
        if (n > 5 && !strcmp(base + n - 5, ".gguf"))
            n -= 5;
        snprintf(L->model_id, sizeof(L->model_id), "%.*s", (int)FAVO_MIN(n, 127), base);
    }
    return 0;
}

void ing_route_model_free(struct ing_loop *L)
{
    if (L->tok)
        eng_tok_free(L->tok);
    if (L->gguf)
        eng_gguf_close(L->gguf);
    L->tok = NULL;
    L->gguf = NULL;
}

/* ------------------------------------------------------------ request id */

static void take_reqid(struct ing_loop *L, struct ing_conn *c)
{
    struct ing_span s;

    if (ing_http_request_id(&c->req, c->buf, &s) == 0) {
        memcpy(L->reqid, c->buf + s.off, s.len);
        L->reqid_len = s.len;
    } else {
        /* Generated: not guessable across restarts, unique per worker. */
        uint64_t x = (++L->reqid_seq) * 0x9e3779b97f4a7c15ull ^ L->reqid_salt;
        x ^= x >> 31;
        /* "req-%02x%016llx" (worker, x), by hand: once per request */
        static const char hex[] = "0123456789abcdef";
        unsigned wk = L->cfg.worker & 0xff;
        _Static_assert(sizeof(L->reqid) >= 23, "req- + 18 hex digits + NUL");
        memcpy(L->reqid, "req-", 4);
        L->reqid[4] = hex[wk >> 4];
        L->reqid[5] = hex[wk & 15];
        for (int k = 0; k < 16; k++)
            L->reqid[6 + k] = hex[(x >> (60 - 4 * k)) & 15];
        L->reqid_len = 22;
    }
    L->reqid[L->reqid_len] = 0;
}

/* ------------------------------------------------------------ small routes */

static void respond_scratch(struct ing_loop *L, struct ing_conn *c, int status, const char *ctype)
{
    ing_conn_respond(L, c, status, ctype, NULL, L->scratch, L->scratch_len);
    ing_body_reset(L);
}

bool ing_route_ready(struct ing_loop *L)
{
    if (!L->tok || L->draining)
        return false;
    if (L->cfg.pipe ? !shm_pipe_ready(L->cfg.pipe) : !L->cfg.batcher_up || !*L->cfg.batcher_up)
        return false;
    if (L->cfg.stats) {
        if (shm_stats_snapshot(L->cfg.stats, L->snap))
            return false;
        for (unsigned i = 0; i < L->snap->nstages; i++) {
            const struct shm_stage_info *s = &L->snap->stages[i].info;
            if (s->kind != SHM_STAGE_NONE && s->state != SHM_STAGE_RUNNING)
                return false;
        }
    }
    return true;
}

static void route_metrics(struct ing_loop *L, struct ing_conn *c)
{
    size_t need;

    if (L->cfg.stats && shm_stats_snapshot(L->cfg.stats, L->snap) == 0) {
        need = shm_stats_prom(L->snap, NULL, 0);
        if (ing_body_add(L, "", 0) == 0 && L->scratch_cap < need + 1) {
            /* grow the scratch once to the size the exposition needs */
            char *tmp = malloc(need + 1);
            if (!tmp) {
                ing_conn_error(L, c, 500, "out of memory", NULL, NULL, NULL);
                return;
            }
            free(L->scratch);
            L->scratch = tmp;
            L->scratch_cap = need + 1;
        }
        L->scratch_len = shm_stats_prom(L->snap, L->scratch, L->scratch_cap);
        FAVO_ASSERT(L->scratch_len < L->scratch_cap);
    }
    respond_scratch(L, c, 200, "text/plain; version=0.0.4; charset=utf-8");
}

static void route_models(struct ing_loop *L, struct ing_conn *c)
{
    ing_body_printf(L, "{\"object\":\"list\",\"data\":[");
    if (L->tok) {
        ing_body_printf(L, "{\"id\":");
        ing_body_json_str(L, L->model_id, strlen(L->model_id));
        ing_body_printf(L, ",\"object\":\"model\",\"created\":%llu,\"owned_by\":\"favo\","
                           "\"max_model_len\":%u}",
                        (unsigned long long)L->created, L->n_ctx);
        if (L->cfg.pipe) {
            char names[SHM_SPEC_MAX][SHM_SPEC_NAME_MAX];
            uint32_t n = shm_spec_names(shm_pipe_spec(L->cfg.pipe), names, SHM_SPEC_MAX);
            for (uint32_t i = 0; i < n; i++) {
                ing_body_printf(L, ",{\"id\":");
                ing_body_json_str(L, names[i], strlen(names[i]));
                ing_body_printf(L, ",\"object\":\"model\",\"created\":%llu,"
                                   "\"owned_by\":\"favo\",\"root\":",
                                (unsigned long long)L->created);
                ing_body_json_str(L, L->model_id, strlen(L->model_id));
                ing_body_printf(L, ",\"parent\":");
                ing_body_json_str(L, L->model_id, strlen(L->model_id));
                ing_body_printf(L, ",\"max_model_len\":%u}", L->n_ctx);
            }
        }
    }
    ing_body_printf(L, "]}");
    respond_scratch(L, c, 200, "application/json");
}

/* ----------------------------------------------------------- JSON helpers */

static bool need_json(struct ing_loop *L, struct ing_conn *c)
{
    if (ing_http_is_json(&c->req, c->buf))
        return true;
    ing_conn_error(L, c, 415, "Content-Type must be application/json", NULL, NULL, NULL);
    return false;
}

static bool need_model(struct ing_loop *L, struct ing_conn *c)
{
    if (L->tok)
        return true;
    ing_conn_error(L, c, 503, "no model is loaded", NULL, NULL, "Retry-After: 5\r\n");
    return false;
}

/* A NUL-ended copy of the body for yajl_tree (small routes only). */
static yajl_val body_tree(struct ing_loop *L, struct ing_conn *c)
{
    char *s = malloc((size_t)c->req.body.len + 1);
    yajl_val v;

    if (!s) {
        ing_conn_error(L, c, 500, "out of memory", NULL, NULL, NULL);
        return NULL;
    }
    memcpy(s, c->buf + c->req.body.off, c->req.body.len);
    s[c->req.body.len] = 0;
    v = yajl_tree_parse(s, NULL, 0); /* no verbose error: it quotes the body */
    explicit_bzero(s, c->req.body.len);
    free(s);
    if (!v || !YAJL_IS_OBJECT(v)) {
        ing_conn_error(L, c, 400, "the request body is not a JSON object", NULL, "invalid_json",
                       NULL);
        if (v)
            ing_oai_tree_free(v);
        return NULL;
    }
    return v;
}

static yajl_val obj_get(yajl_val o, const char *key)
{
    for (size_t i = 0; i < o->u.object.len; i++)
        if (!strcmp(o->u.object.keys[i], key))
            return o->u.object.values[i];
    return NULL;
}

/* Messages of a decoded chat request as eng_chat_msg; contents of several
 * parts are joined into *joined (freed and scrubbed by the caller). */
static int chat_msgs(struct ing_loop *L, const uint8_t *buf, struct eng_chat_msg *m,
                     char **joined, size_t *joined_len)
{
    static const char *const role[] = { "system", "user", "assistant" };
    const struct ing_oai_req *o = &L->oai;
    size_t total = 0, at = 0;

    *joined = NULL;
    *joined_len = 0;
    for (uint32_t i = 0; i < o->nmsg; i++)
        if (o->msg[i].nparts > 1)
            for (uint32_t k = 0; k < o->msg[i].nparts; k++)
                total += o->part[o->msg[i].first_part + k].len;
    if (total && !(*joined = malloc(total)))
        return -ENOMEM;
    *joined_len = total;
    for (uint32_t i = 0; i < o->nmsg; i++) {
        const struct ing_oai_msg *g = &o->msg[i];
        m[i].role = role[g->role <= ING_OAI_ASSISTANT ? g->role : ING_OAI_USER];
        m[i].role_len = strlen(m[i].role);
        if (g->nparts == 1) {
            m[i].content = (const char *)buf + o->part[g->first_part].off;
            m[i].content_len = o->part[g->first_part].len;
        } else {
            m[i].content = *joined ? *joined + at : "";
            for (uint32_t k = 0; k < g->nparts; k++) {
                struct ing_span p = o->part[g->first_part + k];
                memcpy(*joined + at, buf + p.off, p.len);
                at += p.len;
            }
            m[i].content_len = (size_t)(*joined + at - m[i].content);
            if (!*joined)
                m[i].content_len = 0;
        }
    }
    return 0;
}

/* Tokenize the decoded request into ids[0, cap): chat through the
 * template, text prompts with BOS/EOS as the model asks. Returns the
 * count (may exceed cap) or -errno. */
static int64_t encode_prompt(struct ing_loop *L, const uint8_t *buf, int route, bool add_special,
                             bool add_gen, const char *system, int32_t *ids, size_t cap)
{
    if (route == ING_OAI_CHAT) {
        size_t k = system && system[0] ? 1 : 0; /* the specialist's system message */
        struct eng_chat_msg *m = calloc(L->oai.nmsg + k ? L->oai.nmsg + k : 1, sizeof(*m));
        char *joined;
        size_t jl;
        int64_t n;
        if (!m || chat_msgs(L, buf, m + k, &joined, &jl)) {
            free(m);
            return -ENOMEM;
        }
        if (k) {
            m[0].role = "system";
            m[0].role_len = 6;
            m[0].content = system;
            m[0].content_len = strlen(system);
        }
        n = eng_chat_encode(&L->chat, L->tok, m, L->oai.nmsg + k, add_gen, ids, cap);
        if (joined) {
            explicit_bzero(joined, jl);
            free(joined);
        }
        free(m);
        return n;
    }
    if (system && system[0]) {
        /* completions: the system text on its own (with BOS), then the
         * prompt without BOS (ing_route.c's top) */
        int64_t ns = eng_tok_encode(L->tok, system, strlen(system),
                                    add_special ? ENG_TOK_ADD_SPECIAL | ENG_TOK_PARSE_SPECIAL
                                                : ENG_TOK_PARSE_SPECIAL, ids, cap);
        if (ns < 0)
            return ns;
        size_t at = (size_t)ns < cap ? (size_t)ns : cap;
        int64_t np = eng_tok_encode(L->tok, (const char *)buf + L->oai.prompt.off,
                                    L->oai.prompt.len, add_special ? ENG_TOK_PARSE_SPECIAL : 0,
                                    ids ? ids + at : NULL, cap - at);
        return np < 0 ? np : ns + np;
    }
    return eng_tok_encode(L->tok, (const char *)buf + L->oai.prompt.off, L->oai.prompt.len,
                          add_special ? ENG_TOK_ADD_SPECIAL | ENG_TOK_PARSE_SPECIAL : 0, ids, cap);
}

/* The specialist the decoded request's `model` names (a pipe only), into
 * *out. 1: found; 0: no model, or the loaded model; -ENOENT: unknown;
 * -EAGAIN: the table is unreadable (its writer died inside a publish). */
static int find_spec(struct ing_loop *L, const uint8_t *buf, struct shm_spec *out)
{
    struct ing_span m = L->oai.model;

    if (!(L->oai.set & ING_OAI_SET_MODEL))
        return 0;
    if (m.len == strlen(L->model_id) && !memcmp(buf + m.off, L->model_id, m.len))
        return 0;
    if (L->cfg.pipe) {
        int rc = shm_spec_find(shm_pipe_spec(L->cfg.pipe), (const char *)buf + m.off, m.len, out);
        if (rc == 0)
            return 1;
        if (rc == -EAGAIN) /* the table's writer died mid-publish: going down */
            return -EAGAIN;
    }
    return -ENOENT;
}

static void model_not_found(struct ing_loop *L, struct ing_conn *c)
{
    char msg[240];

    snprintf(msg, sizeof(msg), "The model does not exist; this server serves '%s'%s",
             L->model_id, L->cfg.pipe ? " and the specialists /v1/models lists" : "");
    ing_conn_error(L, c, 404, msg, "model", "model_not_found", NULL);
}

/* 503s that more than one route gives, worded once. */
static void spec_unavailable(struct ing_loop *L, struct ing_conn *c)
{
    ing_conn_error(L, c, 503, "the specialist table is unavailable; retry later", "model", NULL,
                   "Retry-After: 1\r\n");
}

static void pipeline_down(struct ing_loop *L, struct ing_conn *c)
{
    ing_conn_error(L, c, 503, "the generation pipeline is not running", NULL, NULL,
                   "Retry-After: 1\r\n");
}

/* 413 naming max_tokens: the ids to come and the response (with lp_top
 * logprob alternatives per token; -1: no logprobs) fit no cell. */
static void too_large(struct ing_loop *L, struct ing_conn *c, uint32_t max_tokens, int lp_top)
{
    char msg[256];

    if (lp_top >= 0)
        snprintf(msg, sizeof(msg), "max_tokens %u with %d logprob alternatives per token "
                 "does not fit this server's response buffers; lower max_tokens or "
                 "top_logprobs", max_tokens, lp_top);
    else
        snprintf(msg, sizeof(msg), "max_tokens %u does not fit this server's response "
                 "buffers; lower max_tokens", max_tokens);
    ing_conn_error(L, c, 413, msg, "max_tokens", NULL, NULL);
}

static void oai_err(struct ing_loop *L, struct ing_conn *c, const struct ing_oai_err *e)
{
    char body[1024];
    int n = ing_oai_err_body(body, sizeof(body), e);

    favo_info("ingress: req %s: 400 param '%s' code '%s'", L->reqid, e->param, e->code);
    if (L->cfg.stats_w)
        shm_stats_add(L->cfg.stats_w, SHM_C_REJ_BAD_REQUEST, 1);
    ing_conn_respond(L, c, e->status ? e->status : 400, "application/json", NULL, body,
                     n < 0 ? 0 : (size_t)n);
}

/* ------------------------------------------------------- /tokenize (vLLM) */

static void route_tokenize(struct ing_loop *L, struct ing_conn *c)
{
    struct ing_oai_err e;
    bool add_special = true, add_gen = true;
    int route;
    yajl_val v, x;
    int32_t *ids = NULL;
    int64_t n;

    if (!need_json(L, c) || !need_model(L, c) || !(v = body_tree(L, c)))
        return;
    route = obj_get(v, "messages") ? ING_OAI_CHAT : ING_OAI_COMPLETIONS;
    if ((x = obj_get(v, "add_special_tokens")) && YAJL_IS_FALSE(x))
        add_special = false;
    if ((x = obj_get(v, "add_generation_prompt")) && YAJL_IS_FALSE(x))
        add_gen = false;
    ing_oai_tree_free(v);
    if (route == ING_OAI_CHAT && !L->chat_ok) {
        ing_conn_error(L, c, 400, "this model has no chat template", "messages", NULL, NULL);
        return;
    }
    /* token-id prompts are written inside the cell after everything
     * received so far (pipelined requests included), scrubbed below */
    uint32_t toff = (c->len + 63u) & ~63u;
    uint32_t tcap = toff < c->cap ? (c->cap - toff) / 4 : 0;
    if (ing_oai_decode(&L->oai, route, c->buf, c->req.body, (uint32_t *)(c->buf + toff), tcap,
                       &e)) {
        oai_err(L, c, &e);
        goto scrub;
    }
    struct shm_spec *spec = calloc(1, sizeof(*spec));
    int has_spec = spec ? find_spec(L, c->buf, spec) : -ENOMEM;
    const char *sys = has_spec == 1 ? spec->system_prompt : NULL;
    if (has_spec == -ENOENT || has_spec == -EAGAIN) {
        if (has_spec == -EAGAIN)
            spec_unavailable(L, c);
        else
            model_not_found(L, c);
        free(spec);
        goto scrub;
    }
    if (route == ING_OAI_COMPLETIONS && L->oai.prompt_kind == ING_OAI_PROMPT_TOKENS) {
        int64_t ns = 0;
        if (sys && sys[0])
            ns = eng_tok_encode(L->tok, sys, strlen(sys),
                                add_special ? ENG_TOK_ADD_SPECIAL | ENG_TOK_PARSE_SPECIAL
                                            : ENG_TOK_PARSE_SPECIAL, NULL, 0);
        ids = ns >= 0 ? malloc(((size_t)L->oai.prompt_ntok + (size_t)ns + 1) * 4) : NULL;
        if (ids) {
            if (ns > 0)
                eng_tok_encode(L->tok, sys, strlen(sys),
                               add_special ? ENG_TOK_ADD_SPECIAL | ENG_TOK_PARSE_SPECIAL
                                           : ENG_TOK_PARSE_SPECIAL, ids, (size_t)ns);
            memcpy(ids + ns, c->buf + toff, (size_t)L->oai.prompt_ntok * 4);
        }
        n = L->oai.prompt_ntok + ns;
    } else {
        n = encode_prompt(L, c->buf, route, add_special, add_gen, sys, NULL, 0);
        if (n >= 0 && (ids = malloc(((size_t)n + 1) * 4)) != NULL)
            n = encode_prompt(L, c->buf, route, add_special, add_gen, sys, ids, (size_t)n);
    }
    if (spec) {
        explicit_bzero(spec, sizeof(*spec));
        free(spec);
    }
    ing_oai_stack_scrub(); /* the tokenizer's frames held pieces of the text */
    if (n < 0 || !ids) {
        ing_conn_error(L, c, 500, "tokenization failed", NULL, NULL, NULL);
        goto scrub;
    }
    ing_body_printf(L, "{\"tokens\":[");
    for (int64_t i = 0; i < n; i++)
        ing_body_printf(L, i ? ",%d" : "%d", ids[i]);
    ing_body_printf(L, "],\"count\":%lld,\"max_model_len\":%u}", (long long)n, L->n_ctx);
    respond_scratch(L, c, 200, "application/json");
    explicit_bzero(ids, (size_t)n * 4);
scrub:
    free(ids);
    if (tcap)
        explicit_bzero(c->buf + toff, (size_t)tcap * 4);
}

static void route_detokenize(struct ing_loop *L, struct ing_conn *c)
{
    yajl_val v, t;
    int32_t *ids;
    char *text;
    int64_t len;
    size_t n;

    if (!need_json(L, c) || !need_model(L, c) || !(v = body_tree(L, c)))
        return;
    t = obj_get(v, "tokens");
    if (!t || !YAJL_IS_ARRAY(t)) {
        ing_oai_tree_free(v);
        ing_conn_error(L, c, 400, "'tokens' is required: an array of token ids", "tokens",
                       t ? "invalid_type" : "missing_required_parameter", NULL);
        return;
    }
    n = t->u.array.len;
    ids = malloc((n + 1) * 4);
    if (!ids) {
        ing_oai_tree_free(v);
        ing_conn_error(L, c, 500, "out of memory", NULL, NULL, NULL);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        yajl_val e = t->u.array.values[i];
        if (!YAJL_IS_INTEGER(e) || YAJL_GET_INTEGER(e) < 0 ||
            YAJL_GET_INTEGER(e) >= (long long)eng_tok_n_vocab(L->tok)) {
            char msg[128], param[48];
            snprintf(msg, sizeof(msg), "'tokens[%zu]' must be a token id between 0 and %u", i,
                     eng_tok_n_vocab(L->tok) - 1);
            snprintf(param, sizeof(param), "tokens[%zu]", i);
            ing_oai_tree_free(v);
            explicit_bzero(ids, i * 4);
            free(ids);
            ing_conn_error(L, c, 400, msg, param, "invalid_value", NULL);
            return;
        }
        ids[i] = (int32_t)YAJL_GET_INTEGER(e);
    }
    ing_oai_tree_free(v);
    unsigned fl = ENG_TOK_SHOW_SPECIAL | ENG_TOK_STRIP_SPACE;
    len = eng_tok_decode(L->tok, ids, n, fl, NULL, 0);
    text = len >= 0 ? malloc((size_t)len + 1) : NULL;
    bool decoded = text && eng_tok_decode(L->tok, ids, n, fl, text, (size_t)len) == len;
    ing_oai_stack_scrub(); /* the decoder's piece buffers held the text */
    if (decoded) {
        ing_body_printf(L, "{\"prompt\":");
        ing_body_json_str(L, text, (size_t)len);
        ing_body_printf(L, "}");
        respond_scratch(L, c, 200, "application/json");
    } else {
        ing_conn_error(L, c, 500, "detokenization failed", NULL, NULL, NULL);
    }
    if (text) {
        explicit_bzero(text, (size_t)len);
        free(text);
    }
    explicit_bzero(ids, n * 4);
    free(ids);
}

/* ------------------------------------------------ completions -> batcher */

/* Can a generation request be handed on now? (Not /ready: a request read
 * while draining still completes.) */
static bool pipeline_running(struct ing_loop *L)
{
    const struct shm_pipe *p = L->cfg.pipe;

    if (!p)
        return L->cfg.batcher_up && *L->cfg.batcher_up;
    /* Under the supervisor a stage that is down is being restarted (or
     * the whole instance is about to exit): the request waits in the
     * rings and its cell for the new process rather than failing. The
     * ring having room is what bounds it (checked by the caller). */
    return true;
}

static void route_generate(struct ing_loop *L, struct ing_conn *c, int route)
{
    struct ing_span body = c->req.body;
    uint32_t end = c->req.next;
    struct ing_oai_err e;
    shm_cell_ref_t cell;
    uint8_t *buf;
    size_t size;
    int64_t n;
    struct shm_req d;
    const char *what = route == ING_OAI_CHAT ? "messages" : "prompt";

    if (!need_json(L, c) || !need_model(L, c))
        return;
    if (route == ING_OAI_CHAT && !L->chat_ok) {
        ing_conn_error(L, c, 400, "this model has no chat template", "messages", NULL, NULL);
        return;
    }
    /* From here the request has its own cell, buf[0, end) (loop inv 4);
     * the connection reads on in a fresh one. */
    if (ing_conn_detach(L, c, &cell, &buf, &size)) {
        ing_conn_error(L, c, 503, "no free request buffer; retry later", NULL, NULL,
                       "Retry-After: 1\r\n");
        return;
    }
    uint32_t toff = (end + 63u) & ~63u;
    size_t tcap = toff < size ? (size - toff) / 4 : 0;
    int32_t *ids = (int32_t *)(buf + toff);

    if (ing_oai_decode(&L->oai, route, buf, body, (uint32_t *)ids, (uint32_t)tcap, &e)) {
        oai_err(L, c, &e);
        goto fail;
    }
    /* The specialist `model` names (ing_route.c's top), copied out of the
     * table once: a reload meanwhile does not change this request. */
    struct shm_spec spec;
    int has_spec = find_spec(L, buf, &spec);
    if (has_spec == -EAGAIN) {
        spec_unavailable(L, c);
        goto fail;
    }
    if (has_spec < 0) {
        model_not_found(L, c);
        goto fail;
    }
    const char *sys = has_spec ? spec.system_prompt : NULL;
    if (route == ING_OAI_COMPLETIONS && L->oai.prompt_kind == ING_OAI_PROMPT_TOKENS) {
        n = L->oai.prompt_ntok;
        int64_t ns = sys && sys[0] ? eng_tok_encode(L->tok, sys, strlen(sys),
                                                    ENG_TOK_ADD_SPECIAL | ENG_TOK_PARSE_SPECIAL,
                                                    NULL, 0) : 0;
        if (ns < 0 || (uint64_t)n + (uint64_t)ns > tcap) {
            ing_conn_error(L, c, ns < 0 ? 500 : 413, ns < 0 ? "tokenization failed"
                           : "the prompt's tokens do not fit the request buffer", what, NULL,
                           NULL);
            goto fail;
        }
        for (int64_t i = 0; i < n; i++)
            if ((uint32_t)ids[i] >= eng_tok_n_vocab(L->tok)) {
                char msg[128], param[40];
                snprintf(msg, sizeof(msg), "'prompt[%lld]' is not a token id of this model "
                         "(0..%u)", (long long)i, eng_tok_n_vocab(L->tok) - 1);
                snprintf(param, sizeof(param), "prompt[%lld]", (long long)i);
                ing_conn_error(L, c, 400, msg, param, "invalid_value", NULL);
                goto fail;
            }
        if (ns > 0) { /* the specialist's system ids in front */
            memmove(ids + ns, ids, (size_t)n * 4);
            eng_tok_encode(L->tok, sys, strlen(sys), ENG_TOK_ADD_SPECIAL | ENG_TOK_PARSE_SPECIAL,
                           ids, (size_t)ns);
            n += ns;
        }
    } else {
        n = encode_prompt(L, buf, route, true, true, sys, ids, tcap);
        if (n < 0) {
            ing_conn_error(L, c, 500, "tokenization failed", NULL, NULL, NULL);
            goto fail;
        }
    }
    /* Generation parameters: the request's, the specialist's defaults for
     * what it did not give, its cap and priority (shm_spec_apply). */
    struct shm_spec_gen g = {
        .temperature = (float)L->oai.temperature, .top_p = (float)L->oai.top_p,
        .min_p = (float)L->oai.min_p, .frequency_penalty = (float)L->oai.frequency_penalty,
        .presence_penalty = (float)L->oai.presence_penalty, .top_k = L->oai.top_k,
        .seed = L->oai.seed, .has_seed = (L->oai.set & ING_OAI_SET_SEED) != 0,
        .max_tokens = L->oai.max_tokens,
        .prio = L->key ? (uint8_t)(3 - FAVO_MIN(L->key->priority, 3u)) : 3,
    };
    if (has_spec) {
        uint32_t o = L->oai.set, given =
            ((o & ING_OAI_SET_TEMPERATURE) ? SHM_SPEC_TEMPERATURE : 0) |
            ((o & ING_OAI_SET_TOP_K) ? SHM_SPEC_TOP_K : 0) |
            ((o & ING_OAI_SET_TOP_P) ? SHM_SPEC_TOP_P : 0) |
            ((o & ING_OAI_SET_MIN_P) ? SHM_SPEC_MIN_P : 0) |
            ((o & ING_OAI_SET_FREQUENCY_PENALTY) ? SHM_SPEC_FREQ : 0) |
            ((o & ING_OAI_SET_PRESENCE_PENALTY) ? SHM_SPEC_PRESENCE : 0) |
            ((o & ING_OAI_SET_SEED) ? SHM_SPEC_SEED : 0) |
            ((o & ING_OAI_SET_MAX_TOKENS) ? SHM_SPEC_MAX_TOKENS : 0);
        shm_spec_apply(&spec, given, &g);
    }
    uint32_t max_tokens = g.max_tokens;
    if ((uint64_t)n + (max_tokens ? max_tokens : 1) > L->n_ctx) {
        char msg[320];
        snprintf(msg, sizeof(msg),
                 "This model's maximum context length is %u tokens. However, you requested "
                 "%llu tokens (%lld in the %s, %u in the completion). Please reduce the "
                 "length of the %s or completion.",
                 L->n_ctx, (unsigned long long)n + max_tokens, (long long)n, what,
                 max_tokens, what);
        ing_conn_error(L, c, 400, msg, what, "context_length_exceeded", NULL);
        goto fail;
    }
    if ((uint64_t)n > tcap) {
        ing_conn_error(L, c, 413, "the prompt's tokens do not fit the request buffer", what,
                       NULL, NULL);
        goto fail;
    }
    if (!max_tokens) {
        max_tokens = L->n_ctx - (uint32_t)n;
        if (L->cfg.max_tokens_default)
            max_tokens = FAVO_MIN(max_tokens, L->cfg.max_tokens_default);
        if (has_spec)
            max_tokens = shm_spec_cap(&spec, max_tokens);
    }
    /* Logprobs (shm_req.logprobs / top_logprobs): chat says logprobs true
     * and top_logprobs alternatives; completions gives the alternatives as
     * `logprobs` itself (0 asks for the sampled tokens' alone). */
    uint8_t lp_on = route == ING_OAI_CHAT ? L->oai.logprobs
                                          : (L->oai.set & ING_OAI_SET_LOGPROBS) != 0;
    uint8_t lp_top = route == ING_OAI_CHAT ? L->oai.top_logprobs : L->oai.logprobs;
    uint32_t lp_alts = shm_pipe_lp_alts(lp_on, lp_top);
    if (L->rl_n && ing_route_ratelimit(L, c, (uint64_t)n + max_tokens))
        goto fail;
    shm_ring_t *to = L->cfg.pipe ? &L->req_ring : L->cfg.to_batcher;
    if (!pipeline_running(L) || !to) {
        pipeline_down(L, c);
        goto fail;
    }
    if (shm_ring_count(to) >= to->capacity) {
        ing_conn_error(L, c, 503, "the server is busy; retry later", NULL, NULL,
                       "Retry-After: 1\r\n");
        goto fail;
    }
    /* The cell must hold the ids to come and egress's response area
     * (shm_pipe.h): a request that needs more moves once into a cell of a
     * larger class. */
    uint64_t need = shm_pipe_cell_need_lp(toff, (uint32_t)n, max_tokens, L->oai.stream, lp_alts);
    /* One answer for a request no cell can hold, logprobs or not: 413
     * naming max_tokens, as the pipeline answers -E2BIG. */
    if (need > L->pool->hdr->classes[L->pool->hdr->nclasses - 1].cell_size ||
        need > UINT32_MAX) {
        too_large(L, c, max_tokens, lp_alts ? lp_top : -1);
        goto fail;
    }
    if (need > size) {
        shm_cell_ref_t big;
        void *nb;
        size_t nsize;
        int arc = shm_cell_alloc(L->pool, need, &big);
        if (arc) {
            if (arc == -EMSGSIZE)
                too_large(L, c, max_tokens, lp_alts ? lp_top : -1);
            else
                ing_conn_error(L, c, 503, "no free response buffer; retry later", NULL, NULL,
                               "Retry-After: 1\r\n");
            goto fail;
        }
        FAVO_ASSERT(shm_cell_get(L->pool, big, SHM_CELL_INGRESS, &nb, &nsize) == 0);
        memcpy(nb, buf, toff + (size_t)n * 4);
        shm_cell_free(L->pool, cell, SHM_CELL_INGRESS); /* scrubs the old copy */
        cell = big;
        buf = nb;
        size = nsize;
    }
    uint32_t resp_off = (uint32_t)shm_pipe_resp_off(toff, (uint32_t)n, max_tokens);

    memset(&d, 0, sizeof(d));
    d.magic = SHM_REQ_MAGIC;
    d.kind = SHM_REQ_SUBMIT;
    d.created = ing_wall_s(L);
    d.route = route == ING_OAI_CHAT ? SHM_REQ_CHAT : SHM_REQ_COMPLETIONS;
    d.flags = (L->oai.stream ? SHM_REQ_F_STREAM : 0) |
              (L->oai.include_usage ? SHM_REQ_F_USAGE : 0) |
              (g.has_seed ? SHM_REQ_F_SEED : 0) |
              (c->closing ? SHM_REQ_F_CLOSE : 0);
    d.worker = (uint8_t)L->cfg.worker;
    d.cell = cell;
    d.conn = ing_conn_key(L, c);
    d.recv_ns = ing_now(L); /* the loop's clock: this burst's wake-up */
    d.tok_off = toff;
    d.ntok = (uint32_t)n;
    d.max_tokens = max_tokens;
    d.resp_off = resp_off;
    if (L->key) {
        /* fairness key: the tenant's name hashed (FNV-1a), never 0 */
        uint32_t h = 2166136261u;
        for (const char *t = L->key->tenant; *t; t++)
            h = (h ^ (uint8_t)*t) * 16777619u;
        d.tenant = h ? h : 1;
        snprintf(d.tenant_name, sizeof(d.tenant_name), "%s", L->key->tenant);
    }
    d.prio = (uint8_t)g.prio; /* the key's (larger serves first), or the specialist's */
    d.top_k = g.top_k;
    d.seed = g.seed;
    d.temperature = g.temperature;
    d.top_p = g.top_p;
    d.min_p = g.min_p;
    d.frequency_penalty = g.frequency_penalty;
    d.presence_penalty = g.presence_penalty;
    if (has_spec) {
        d.cache_ttl = spec.cache_ttl;
        snprintf(d.spec, sizeof(d.spec), "%s", spec.name);
    }
    d.logprobs = lp_on;
    d.top_logprobs = lp_top;
    d.nstop = L->oai.nstop;
    _Static_assert(sizeof(d.stop) == sizeof(L->oai.stop), "stop spans");
    memcpy(d.stop, L->oai.stop, sizeof(d.stop));
    d.reqid_len = (uint8_t)L->reqid_len;
    memcpy(d.reqid, L->reqid, L->reqid_len);
    /* what ingress wrote on the socket before egress answers (its own
     * answers, 100 Continue: sent, or queued and sent first), for egress's
     * exact count of the connection's bytes (egr_stage.h); TLS: ciphertext
     * the kernel counts differently, 0 */
    if (!c->tls)
        d.conn_out = (uint32_t)((c->out_total + (c->out_len - c->out_sent)) & SHM_REQ_OUT_MASK) |
                     (c->egr_used ? SHM_REQ_OUT_EGR : 0u);
    memcpy(buf + resp_off, &d, sizeof(d)); /* egress's copy (shm_pipe.h) */

    /* The socket goes to egress once per connection (invariant 6). */
    if (L->cfg.egress_sock >= 0 && !c->fd_sent) {
        int rc = shm_fdpass_send(L->cfg.egress_sock, c->fd, &d.conn, sizeof(d.conn));
        if (rc) {
            favo_warn("ingress: handing conn to egress: %s", strerror(-rc));
            pipeline_down(L, c);
            goto fail;
        }
        c->fd_sent = true;
    }
    shm_cell_set_len(L->pool, cell, SHM_CELL_INGRESS, resp_off + SHM_PIPE_REQ_COPY);
    FAVO_ASSERT(shm_cell_give(L->pool, cell, SHM_CELL_INGRESS, SHM_CELL_BATCHER) == 0);
    /* the ring's release orders the cell bytes and owner before the batcher's get */
    FAVO_ASSERT(shm_ring_enqueue(to, &d) == 0); /* room checked above */
    if (L->cfg.pipe)
        ing_bat_bell(L); /* rung once before the loop waits again */
    if (L->cfg.stats_w)
        shm_stats_add(L->cfg.stats_w, SHM_C_PROMPT_TOKENS, 0); /* batcher counts prefill */
    favo_debug("ingress: req %s: %s %lld prompt tokens, max_tokens %u -> batcher", L->reqid,
              route == ING_OAI_CHAT ? "chat" : "completion", (long long)n, max_tokens);
    c->parked = true;
    c->parked_cell = cell;
    c->egr_used = true;
    c->cancel_sent = false;
    /* "Connection: close" travels as SHM_REQ_F_CLOSE: egress answers with
     * it, shuts the socket down and says CLOSED. Closing here would cut
     * the socket egress is about to answer on. */
    c->closing = false;
    return;
fail:
    shm_cell_free(L->pool, cell, SHM_CELL_INGRESS); /* scrubs: cell inv 2 */
}

/* ---------------------------------------------------------- rate limits */

int ing_route_ratelimit(struct ing_loop *L, struct ing_conn *c, uint64_t tokens)
{
    struct ing_rl_decision d;
    int rc;

    if (!L->cfg.rl || !L->rl_n)
        return 0;
    rc = ing_rl_check(L->cfg.rl, L->rl_buckets, L->rl_n, tokens, favo_now_ns(), &d);
    if (ing_rl_headers(&d, L->rl_hdr, sizeof(L->rl_hdr)) < 0)
        L->rl_hdr[0] = 0;
    if (rc == 0)
        return 0;
    favo_info("ingress: req %s: 429 (%s)", L->reqid, rc == -E2BIG ? "request over tpm" : "rate");
    ing_conn_error(L, c, 429,
                   rc == -E2BIG ? "this request alone exceeds your tokens-per-minute limit"
                                : "rate limit reached; retry after the time in Retry-After",
                   NULL, rc == -E2BIG ? "tokens_exceeded" : "rate_limit_exceeded", NULL);
    return -EAGAIN;
}

/* ------------------------------------------------------------ dispatch */

void ing_route(struct ing_loop *L, struct ing_conn *c)
{
    const struct ing_http_req *r = &c->req;
    int id = -1;

    take_reqid(L, c);
    for (size_t i = 0; i < FAVO_ARRAY_SIZE(routes); i++)
        if (r->path.len == strlen(routes[i].path) &&
            !memcmp(c->buf + r->path.off, routes[i].path, r->path.len))
            id = (int)i;
    if (id < 0) {
        ing_conn_error(L, c, 404, "Unknown request URL. Please check the URL for typos.", NULL,
                       "unknown_url", NULL);
        return;
    }
    if (r->method != routes[id].method &&
        !(r->method == ING_HTTP_HEAD && routes[id].method == ING_HTTP_GET)) {
        char allow[64], msg[128];
        snprintf(allow, sizeof(allow), "Allow: %s\r\n", routes[id].allow);
        snprintf(msg, sizeof(msg), "Method %s is not allowed on %s; use %s",
                 ing_http_method_name(r->method), routes[id].path,
                 ing_http_method_name(routes[id].method));
        ing_conn_error(L, c, 405, msg, NULL, "method_not_allowed", allow);
        return;
    }
    if (L->cfg.keys && id >= R_MODELS) {
        struct ing_span v;
        const struct ing_key *k = NULL;
        const char *why = NULL;
        bool has = ing_http_header_find(r, c->buf, "Authorization", &v) == 0;
        if (ing_keys_auth(L->cfg.keys, has ? (const char *)c->buf + v.off : NULL,
                          has ? v.len : 0, &k, &why)) {
            ing_conn_error(L, c, 401, why ? why : "invalid API key", NULL, "invalid_api_key",
                           "WWW-Authenticate: Bearer\r\n");
            return;
        }
        favo_debug("ingress: req %s: key '%s' tenant '%s'", L->reqid, k->name, k->tenant);
        L->key = k;
        if (L->cfg.rl) {
            L->rl_n = ing_keys_buckets(L->cfg.keys, k, L->rl_buckets);
            /* generation routes are checked once their token count is known */
            if (id != R_COMPL && id != R_CHAT && ing_route_ratelimit(L, c, 0))
                return;
        }
    }
    if (L->cfg.auth && id >= R_MODELS) {
        char msg[200] = "";
        int st = L->cfg.auth(L->cfg.auth_arg, c->buf, r, msg, sizeof(msg));
        if (st) {
            ing_conn_error(L, c, st, msg[0] ? msg : "invalid API key", NULL,
                           st == 401 ? "invalid_api_key" : NULL,
                           st == 401 ? "WWW-Authenticate: Bearer\r\n" : NULL);
            return;
        }
    }
    switch (id) {
    case R_HEALTH:
        ing_body_printf(L, "{\"status\":\"ok\"}");
        respond_scratch(L, c, 200, "application/json");
        break;
    case R_READY: {
        bool ok = ing_route_ready(L);
        ing_body_printf(L, "{\"status\":\"%s\"}", ok ? "ready" : "not ready");
        respond_scratch(L, c, ok ? 200 : 503, "application/json");
        break;
    }
    case R_METRICS:
        route_metrics(L, c);
        break;
    case R_MODELS:
        route_models(L, c);
        break;
    case R_TOKENIZE:
        route_tokenize(L, c);
        break;
    case R_DETOKENIZE:
        route_detokenize(L, c);
        break;
    case R_COMPL:
        route_generate(L, c, ING_OAI_COMPLETIONS);
        break;
    case R_CHAT:
        route_generate(L, c, ING_OAI_CHAT);
        break;
    }
}
