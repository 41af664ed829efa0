/*
 * fuzz-openai.c - libFuzzer target for OpenAI request decoding.
 *
 * The first byte picks the route; the rest is the body, placed after a few
 * bytes of "headers" so offsets are not body-relative by accident. Checks:
 * every span lies inside the body, decoded strings are valid UTF-8 (the
 * decoder's promise to the tokenizer), message/part indices are coherent,
 * and an error renders as an error body that yajl parses back. Oracle: the
 * strings decoded in place equal what yajl's own tree parser decodes.
 */
#include "ing_openai.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_tree.h>

#define CHECK(x) do { if (!(x)) __builtin_trap(); } while (0)
#define PAD 7

static void check_utf8(const uint8_t *p, uint32_t n)
{
    uint32_t i = 0;

    while (i < n) {
        uint8_t c = p[i];
        uint32_t l = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3
                   : c >= 0xF0 && c <= 0xF4 ? 4 : 0;

        CHECK(l && i + l <= n);
        for (uint32_t k = 1; k < l; k++)
            CHECK((p[i + k] & 0xC0) == 0x80);
        if (c == 0xE0) CHECK(p[i + 1] >= 0xA0);
        if (c == 0xED) CHECK(p[i + 1] < 0xA0);
        if (c == 0xF0) CHECK(p[i + 1] >= 0x90);
        if (c == 0xF4) CHECK(p[i + 1] < 0x90);
        i += l;
    }
}

static void check_span(const uint8_t *buf, struct ing_span s, struct ing_span body)
{
    CHECK(s.off >= body.off && (uint64_t)s.off + s.len <= (uint64_t)body.off + body.len);
    check_utf8(buf + s.off, s.len);
}

/* Our in-place decoding of s must equal yajl's decoding of the same text. */
static void same_as_tree(yajl_val root, const char **path, const uint8_t *buf,
                         struct ing_span s)
{
    yajl_val v = yajl_tree_get(root, path, yajl_t_any);

    if (v && YAJL_IS_ARRAY(v) && v->u.array.len)
        v = v->u.array.values[0];
    if (!v || !YAJL_IS_STRING(v) || memchr(buf + s.off, 0, s.len))
        return;   /* NUL bytes: the tree's C strings cannot compare */
    CHECK(strlen(YAJL_GET_STRING(v)) == s.len);
    CHECK(!memcmp(YAJL_GET_STRING(v), buf + s.off, s.len));
}

static void oracle(const uint8_t *json, size_t n, const struct ing_oai_req *q,
                   const uint8_t *buf)
{
    static const char *p_prompt[] = { "prompt", NULL }, *p_model[] = { "model", NULL },
                      *p_user[] = { "user", NULL }, *p_msgs[] = { "messages", NULL };
    char *txt;
    yajl_val root;

    if (memchr(json, 0, n))
        return;
    txt = malloc(n + 1);
    memcpy(txt, json, n);
    txt[n] = 0;
    root = yajl_tree_parse(txt, NULL, 0);
    free(txt);
    if (!root)
        return;   /* e.g. deeper than the tree parser likes */
    if (q->prompt_kind == ING_OAI_PROMPT_TEXT)
        same_as_tree(root, p_prompt, buf, q->prompt);
    if (q->set & ING_OAI_SET_MODEL)
        same_as_tree(root, p_model, buf, q->model);
    if (q->set & ING_OAI_SET_USER)
        same_as_tree(root, p_user, buf, q->user);
    yajl_val msgs = yajl_tree_get(root, p_msgs, yajl_t_array);
    if (msgs && q->route == ING_OAI_CHAT && msgs->u.array.len == q->nmsg) {
        for (uint32_t i = 0; i < q->nmsg; i++) {
            static const char *p_content[] = { "content", NULL };
            yajl_val c = yajl_tree_get(msgs->u.array.values[i], p_content, yajl_t_any);

            if (c && YAJL_IS_STRING(c) && q->msg[i].nparts == 1)
                same_as_tree(msgs->u.array.values[i], p_content, buf,
                             q->part[q->msg[i].first_part]);
        }
    }
    yajl_tree_free(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct ing_oai_req q;
    struct ing_oai_err e;
    struct ing_span body;
    uint32_t tok[64];
    uint8_t *buf;
    char out[1024];
    int rc, route;

    if (size < 1)
        return 0;
    route = data[0] & 1 ? ING_OAI_CHAT : ING_OAI_COMPLETIONS;
    buf = malloc(size - 1 + PAD + 1);
    memset(buf, 'H', PAD);
    memcpy(buf + PAD, data + 1, size - 1);
    body = (struct ing_span){ PAD, (uint32_t)(size - 1) };
    rc = ing_oai_decode(&q, route, buf, body, tok, 64, &e);
    if (rc == 0) {
        CHECK(q.route == route);
        if (q.set & ING_OAI_SET_MODEL)
            check_span(buf, q.model, body);
        if (q.set & ING_OAI_SET_USER)
            check_span(buf, q.user, body);
        if (q.prompt_kind == ING_OAI_PROMPT_TEXT)
            check_span(buf, q.prompt, body);
        CHECK(q.prompt_ntok <= 64);
        CHECK(q.nstop <= ING_OAI_MAX_STOP);
        for (uint32_t i = 0; i < q.nstop; i++) {
            check_span(buf, q.stop[i], body);
            CHECK(q.stop[i].len > 0 && q.stop[i].len <= ING_OAI_MAX_STOP_BYTES);
        }
        CHECK(q.nmsg <= ING_OAI_MAX_MESSAGES && q.npart <= ING_OAI_MAX_PARTS);
        for (uint32_t i = 0, next = 0; i < q.nmsg; i++) {
            CHECK(q.msg[i].role <= ING_OAI_ASSISTANT);
            CHECK(q.msg[i].first_part == next);   /* parts in message order */
            next += q.msg[i].nparts;
            CHECK(next <= q.npart);
        }
        for (uint32_t i = 0; i < q.npart; i++)
            check_span(buf, q.part[i], body);
        CHECK(q.temperature >= 0 && q.temperature <= 2);
        CHECK(q.top_p > 0 && q.top_p <= 1);
        if (route == ING_OAI_CHAT)
            CHECK(q.nmsg > 0);
        else
            CHECK(q.prompt_kind != ING_OAI_PROMPT_NONE);
        oracle(data + 1, size - 1, &q, buf);
    } else {
        CHECK(rc == -EINVAL && e.status == 400 && e.message[0]);
        CHECK(e.offset <= body.len);
        int n = ing_oai_err_body(out, sizeof(out), &e);
        CHECK(n > 0);
        yajl_val v = yajl_tree_parse(out, NULL, 0);
        CHECK(v);
        yajl_tree_free(v);
    }
    free(buf);
    return 0;
}
