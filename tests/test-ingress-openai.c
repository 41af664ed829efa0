/*
 * test-ingress-openai.c - OpenAI request decoding (ingress/ing_openai.h):
 * every parameter valid and invalid on both routes, prompts as text and
 * token ids, messages and content parts, JSON escapes decoded in place,
 * surrogates and invalid UTF-8, limits, and the error body (parsed back
 * with yajl to prove it is valid JSON).
 */
#include "favo_base.h"
#include "ing_openai.h"
#include "t_util.h"

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <yajl/yajl_tree.h>

#define PREFIX "POST / HTTP/1.1\r\n\r\n"   /* the body does not start at 0 */

struct dec {
    int rc;
    struct ing_oai_req q;
    struct ing_oai_err e;
    uint8_t *buf;
    uint32_t tok[16];
};

static struct dec *dec_n(int route, const char *json, size_t n)
{
    struct dec *d = calloc(1, sizeof(*d));
    size_t pre = strlen(PREFIX);

    assert_non_null(d);
    d->buf = malloc(pre + n + 1);
    memcpy(d->buf, PREFIX, pre);
    memcpy(d->buf + pre, json, n);
    d->buf[pre + n] = 0;
    d->rc = ing_oai_decode(&d->q, route, d->buf, (struct ing_span){ (uint32_t)pre, (uint32_t)n },
                           d->tok, FAVO_ARRAY_SIZE(d->tok), &d->e);
    return d;
}

static struct dec *dec(int route, const char *json)
{
    return dec_n(route, json, strlen(json));
}

static void dec_free(struct dec *d)
{
    free(d->buf);
    free(d);
}

static bool span_is(const struct dec *d, struct ing_span s, const char *str)
{
    return s.len == strlen(str) && !memcmp(d->buf + s.off, str, s.len);
}

static void ok(int route, const char *json)
{
    struct dec *d = dec(route, json);

    if (d->rc)
        fprintf(stderr, "unexpected error for %s: %s (param %s)\n", json, d->e.message,
                d->e.param);
    assert_int_equal(d->rc, 0);
    dec_free(d);
}

/* Expect a 400 naming param (NULL: none) with msg in the message. */
static void bad(int route, const char *json, const char *param, const char *msg)
{
    struct dec *d = dec(route, json);

    if (d->rc != -EINVAL || strcmp(d->e.param, param ? param : "") ||
        (msg && !strstr(d->e.message, msg)))
        fprintf(stderr, "case %s: rc %d param '%s' message '%s'\n", json, d->rc, d->e.param,
                d->e.message);
    assert_int_equal(d->rc, -EINVAL);
    assert_int_equal(d->e.status, 400);
    assert_string_equal(d->e.param, param ? param : "");
    if (msg)
        assert_non_null(strstr(d->e.message, msg));
    if (d->e.offset > strlen(json))
        fprintf(stderr, "case %s: offset %u\n", json, d->e.offset);
    assert_true(d->e.offset <= strlen(json));
    dec_free(d);
}

#define C ING_OAI_COMPLETIONS
#define CHAT ING_OAI_CHAT

static void test_completions_all_params(void **state)
{
    struct dec *d = dec(C, "{\"model\": \"smollm2\", \"prompt\": \"Hello\", \"max_tokens\": 16,"
                           " \"temperature\": 0.7, \"top_p\": 0.9, \"top_k\": 40, \"min_p\": 0.05,"
                           " \"n\": 1, \"stop\": [\"\\n\", \"END\"], \"stream\": true,"
                           " \"stream_options\": {\"include_usage\": true}, \"seed\": -42,"
                           " \"frequency_penalty\": -1.5, \"presence_penalty\": 2,"
                           " \"logprobs\": 3, \"top_logprobs\": 20, \"user\": \"u-1\"}");

    assert_int_equal(d->rc, 0);
    assert_true(span_is(d, d->q.model, "smollm2"));
    assert_int_equal(d->q.prompt_kind, ING_OAI_PROMPT_TEXT);
    assert_true(span_is(d, d->q.prompt, "Hello"));
    assert_int_equal(d->q.max_tokens, 16);
    assert_true(d->q.temperature == 0.7);
    assert_true(d->q.top_p == 0.9);
    assert_int_equal(d->q.top_k, 40);
    assert_true(d->q.min_p == 0.05);
    assert_int_equal(d->q.nstop, 2);
    assert_true(span_is(d, d->q.stop[0], "\n"));
    assert_true(span_is(d, d->q.stop[1], "END"));
    assert_true(d->q.stream);
    assert_true(d->q.include_usage);
    assert_int_equal(d->q.seed, -42);
    assert_true(d->q.frequency_penalty == -1.5);
    assert_true(d->q.presence_penalty == 2);
    assert_int_equal(d->q.logprobs, 3);
    assert_int_equal(d->q.top_logprobs, 20);
    assert_true(span_is(d, d->q.user, "u-1"));
    assert_int_equal(d->q.set & ING_OAI_SET_SEED, ING_OAI_SET_SEED);
    assert_int_equal(d->q.route, C);
    dec_free(d);

    /* defaults */
    d = dec(C, "{\"prompt\": \"x\"}");
    assert_int_equal(d->rc, 0);
    assert_true(d->q.temperature == 1.0 && d->q.top_p == 1.0 && d->q.min_p == 0);
    assert_int_equal(d->q.max_tokens, 0);
    assert_int_equal(d->q.set, 0);
    assert_false(d->q.stream);
    dec_free(d);
}

static void test_chat_messages(void **state)
{
    struct dec *d = dec(CHAT, "{\"model\":\"m\",\"messages\":["
                              "{\"role\":\"system\",\"content\":\"be brief\"},"
                              "{\"content\":[{\"type\":\"text\",\"text\":\"part one\"},"
                              "{\"text\":\"part two\",\"type\":\"text\",\"extra\":{\"x\":[1]}}],"
                              "\"role\":\"user\",\"name\":\"bob\"},"
                              "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]},"
                              "{\"role\":\"developer\",\"content\":\"\"}],"
                              "\"max_completion_tokens\":5,\"max_tokens\":9,"
                              "\"logprobs\":true,\"top_logprobs\":2}");

    assert_int_equal(d->rc, 0);
    assert_int_equal(d->q.nmsg, 4);
    assert_int_equal(d->q.msg[0].role, ING_OAI_SYSTEM);
    assert_int_equal(d->q.msg[0].nparts, 1);
    assert_true(span_is(d, d->q.part[d->q.msg[0].first_part], "be brief"));
    assert_int_equal(d->q.msg[1].role, ING_OAI_USER);
    assert_int_equal(d->q.msg[1].nparts, 2);
    assert_true(span_is(d, d->q.part[d->q.msg[1].first_part], "part one"));
    assert_true(span_is(d, d->q.part[d->q.msg[1].first_part + 1], "part two"));
    assert_int_equal(d->q.msg[2].role, ING_OAI_ASSISTANT);
    assert_int_equal(d->q.msg[2].nparts, 0);
    assert_int_equal(d->q.msg[3].role, ING_OAI_SYSTEM);   /* developer */
    assert_int_equal(d->q.msg[3].nparts, 1);
    assert_int_equal(d->q.part[d->q.msg[3].first_part].len, 0);
    assert_int_equal(d->q.max_tokens, 5);   /* max_completion_tokens wins */
    assert_int_equal(d->q.logprobs, 1);
    assert_int_equal(d->q.top_logprobs, 2);
    dec_free(d);

    bad(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"tool\","
              "\"content\":\"x\",\"tool_call_id\":\"1\"}]}", "messages[1].role", "tool");
    bad(CHAT, "{\"messages\":[{\"role\":\"function\",\"content\":\"x\"}]}", "messages[0].role",
        "not supported");
    bad(CHAT, "{\"messages\":[{\"role\":\"wizard\",\"content\":\"x\"}]}", "messages[0].role",
        "must be one of");
    bad(CHAT, "{\"messages\":[{\"role\":\"User\",\"content\":\"x\"}]}", "messages[0].role", NULL);
    bad(CHAT, "{\"messages\":[{\"role\":1,\"content\":\"x\"}]}", "messages[0].role",
        "must be a string");
    bad(CHAT, "{\"messages\":[{\"content\":\"x\"}]}", "messages[0]", "'messages[0].role' is required");
    bad(CHAT, "{\"messages\":[{\"role\":\"user\"}]}", "messages[0]", "content' is required");
    bad(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":null}]}", "messages[0]", "content");
    bad(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":5}]}", "messages[0].content",
        "got a number");
    bad(CHAT, "{\"messages\":[{\"role\":\"user\",\"role\":\"user\",\"content\":\"x\"}]}",
        "messages[0].role", "more than once");
    bad(CHAT, "{\"messages\":[\"hi\"]}", "messages[0]", "must be an object");
    bad(CHAT, "{\"messages\":[]}", "messages", "at least one");
    bad(CHAT, "{\"messages\":{}}", "messages", "must be an array");
    bad(CHAT, "{\"model\":\"m\"}", "messages", "'messages' is required");
    bad(CHAT, "{\"messages\":null}", "messages", "'messages' is required");
}

static void test_content_parts(void **state)
{
    bad(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
              "{\"type\":\"image_url\",\"image_url\":{\"url\":\"http://x\"}}]}]}",
        "messages[0].content[1].type", "'image_url' is not supported");
    bad(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"input_audio\"}]}]}",
        "messages[0].content[0].type", "input_audio");
    bad(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"text\":\"a\"}]}]}",
        "messages[0].content[0]", "type' is required");
    bad(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\"}]}]}",
        "messages[0].content[0]", "text' is required");
    bad(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[\"a\"]}]}",
        "messages[0].content[0]", "content part object");
    bad(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":7}]}]}",
        "messages[0].content[0].text", "must be a string");
    bad(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"Text\",\"text\":\"a\"}]}]}",
        "messages[0].content[0].type", "'Text'");
    /* a part array, then a duplicate content: refused */
    bad(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}],"
              "\"content\":\"b\"}]}", "messages[0].content", "more than once");
    ok(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[]}]}");
}

static void test_prompt_forms(void **state)
{
    struct dec *d = dec(C, "{\"prompt\":[\"only one\"]}");

    assert_int_equal(d->rc, 0);
    assert_int_equal(d->q.prompt_kind, ING_OAI_PROMPT_TEXT);
    assert_true(span_is(d, d->q.prompt, "only one"));
    dec_free(d);
    d = dec(C, "{\"prompt\":[1, 2, 3, 0, 2147483647, 5.0]}");
    assert_int_equal(d->rc, 0);
    assert_int_equal(d->q.prompt_kind, ING_OAI_PROMPT_TOKENS);
    assert_int_equal(d->q.prompt_ntok, 6);
    assert_int_equal(d->tok[0], 1);
    assert_int_equal(d->tok[3], 0);
    assert_int_equal(d->tok[4], 2147483647u);
    assert_int_equal(d->tok[5], 5);
    dec_free(d);

    bad(C, "{\"prompt\":[\"a\",\"b\"]}", "prompt", "several prompts");
    bad(C, "{\"prompt\":[[1,2],[3]]}", "prompt", "several token-id prompts");
    bad(C, "{\"prompt\":[]}", "prompt", "empty");
    bad(C, "{\"prompt\":[\"a\", 1]}", "prompt", "mixes");
    bad(C, "{\"prompt\":[1, \"a\"]}", "prompt", "several prompts");
    bad(C, "{\"prompt\":[-1]}", "prompt", "from 0 to");
    bad(C, "{\"prompt\":[1.5]}", "prompt", "got 1.5");
    bad(C, "{\"prompt\":[2147483648]}", "prompt", "from 0 to");
    bad(C, "{\"prompt\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}", "prompt",
        "more than 16 token ids");
    bad(C, "{\"prompt\":7}", "prompt", "must be a string, an array of one string");
    bad(C, "{\"prompt\":{\"a\":1}}", "prompt", "got an object");
    bad(C, "{\"model\":\"m\"}", "prompt", "'prompt' is required");
    bad(C, "{\"prompt\":null}", "prompt", "'prompt' is required");
    /* each route knows only its own input: the other is an unknown field */
    bad(C, "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}", "prompt", "required");
    bad(CHAT, "{\"prompt\":\"x\"}", "messages", "required");

    /* token ids without a place to put them */
    struct ing_oai_req q;
    struct ing_oai_err e;
    uint8_t b[] = "{\"prompt\":[1]}";
    assert_int_equal(ing_oai_decode(&q, C, b, (struct ing_span){ 0, sizeof(b) - 1 }, NULL, 0, &e),
                     -EINVAL);
    assert_string_equal(e.param, "prompt");
    assert_int_equal(ing_oai_decode(&q, 9, b, (struct ing_span){ 0, sizeof(b) - 1 }, NULL, 0, &e),
                     -EINVAL);
}

static void test_param_ranges(void **state)
{
    static const char *const good[] = {
        "\"temperature\":0", "\"temperature\":2", "\"temperature\":2.0", "\"temperature\":null",
        "\"top_p\":1", "\"top_p\":1e-9", "\"min_p\":0", "\"min_p\":1", "\"top_k\":-1",
        "\"top_k\":0", "\"top_k\":100000", "\"n\":1", "\"n\":1.0", "\"n\":null",
        "\"frequency_penalty\":-2", "\"presence_penalty\":2", "\"seed\":-9223372036854775808",
        "\"seed\":9223372036854775807", "\"seed\":0", "\"max_tokens\":1",
        "\"max_tokens\":2147483647", "\"max_tokens\":1e3", "\"stream\":false",
        "\"stop\":null", "\"stop\":\"x\"", "\"stop\":[]", "\"logprobs\":0", "\"logprobs\":20",
        "\"top_logprobs\":0", "\"user\":null", "\"model\":null",
        "\"stream\":true,\"stream_options\":{\"include_usage\":false,\"other\":[1]}",
        "\"stream\":true,\"stream_options\":{\"include_usage\":null}",
    };
    static const struct { const char *kv, *param, *msg; } badc[] = {
        { "\"temperature\":3.5", "temperature", "'temperature' must be between 0 and 2, got 3.5" },
        { "\"temperature\":-0.1", "temperature", "got -0.1" },
        { "\"temperature\":\"hot\"", "temperature", "must be a number, got a string" },
        { "\"temperature\":true", "temperature", "got a boolean" },
        { "\"temperature\":1e999", "temperature", "between 0 and 2" },
        { "\"top_p\":0", "top_p", "greater than 0 and at most 1, got 0" },
        { "\"top_p\":1.01", "top_p", "got 1.01" },
        { "\"min_p\":-0.5", "min_p", "between 0 and 1" },
        { "\"min_p\":[0.1]", "min_p", "got an array" },
        { "\"top_k\":-2", "top_k", "got -2" },
        { "\"top_k\":2.5", "top_k", "must be an integer, got 2.5" },
        { "\"n\":2", "n", "'n' must be 1" },
        { "\"n\":0", "n", "got 0" },
        { "\"n\":\"1\"", "n", "must be an integer" },
        { "\"frequency_penalty\":2.5", "frequency_penalty", "between -2 and 2, got 2.5" },
        { "\"presence_penalty\":-3", "presence_penalty", "between -2 and 2" },
        { "\"seed\":1.5", "seed", "must be an integer" },
        { "\"seed\":99999999999999999999", "seed", "got 99999999999999999999" },
        { "\"seed\":\"7\"", "seed", "got a string" },
        { "\"max_tokens\":0", "max_tokens", "got 0" },
        { "\"max_tokens\":-5", "max_tokens", "got -5" },
        { "\"max_tokens\":\"10\"", "max_tokens", "must be an integer" },
        { "\"max_tokens\":2147483648", "max_tokens", "between 1 and" },
        { "\"max_completion_tokens\":0", "max_completion_tokens", "got 0" },
        { "\"stream\":1", "stream", "must be a boolean" },
        { "\"stream\":\"true\"", "stream", "got a string" },
        { "\"stream_options\":{\"include_usage\":true}", "stream_options",
          "only allowed when 'stream' is true" },
        { "\"stream\":true,\"stream_options\":{\"include_usage\":1}",
          "stream_options.include_usage", "must be a boolean" },
        { "\"stream\":true,\"stream_options\":[]", "stream_options", "must be an object" },
        { "\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\"]", "stop", "at most 4" },
        { "\"stop\":[\"\"]", "stop", "must not be empty" },
        { "\"stop\":\"\"", "stop", "must not be empty" },
        { "\"stop\":[1]", "stop", "got an array holding a number" },
        { "\"stop\":{}", "stop", "got an object" },
        { "\"logprobs\":21", "logprobs", "between 0 and 20, got 21" },
        { "\"logprobs\":true", "logprobs", "must be an integer" },
        { "\"top_logprobs\":21", "top_logprobs", "between 0 and 20, got 21" },
        { "\"user\":5", "user", "must be a string" },
        { "\"model\":[\"a\"]", "model", "must be a string" },
        { "\"temperature\":1,\"temperature\":1", "temperature", "more than once" },
    };
    char json[512];

    for (unsigned i = 0; i < FAVO_ARRAY_SIZE(good); i++) {
        snprintf(json, sizeof(json), "{\"prompt\":\"p\",%s}", good[i]);
        ok(C, json);
        snprintf(json, sizeof(json),
                 "{%s,\"messages\":[{\"role\":\"user\",\"content\":\"c\"}]}", good[i]);
        if (strncmp(good[i], "\"logprobs\"", 10))   /* an int is wrong for chat */
            ok(CHAT, json);
    }
    for (unsigned i = 0; i < FAVO_ARRAY_SIZE(badc); i++) {
        snprintf(json, sizeof(json), "{\"prompt\":\"p\",%s}", badc[i].kv);
        bad(C, json, badc[i].param, badc[i].msg);
    }
    /* stop strings: at most ING_OAI_MAX_STOP_BYTES each */
    char *big = malloc(ING_OAI_MAX_STOP_BYTES + 64);
    int n = snprintf(big, 64, "{\"prompt\":\"p\",\"stop\":\"");
    memset(big + n, 'x', ING_OAI_MAX_STOP_BYTES + 1);
    strcpy(big + n + ING_OAI_MAX_STOP_BYTES + 1, "\"}");
    bad(C, big, "stop", "at most 256 bytes");
    strcpy(big + n + ING_OAI_MAX_STOP_BYTES, "\"}");
    ok(C, big);
    free(big);
}

static void test_chat_logprobs(void **state)
{
    const char *m = "\"messages\":[{\"role\":\"user\",\"content\":\"c\"}]";
    char json[256];

    snprintf(json, sizeof(json), "{%s,\"logprobs\":3}", m);
    bad(CHAT, json, "logprobs", "must be a boolean");
    snprintf(json, sizeof(json), "{%s,\"top_logprobs\":3}", m);
    bad(CHAT, json, "top_logprobs", "requires 'logprobs'");
    snprintf(json, sizeof(json), "{%s,\"logprobs\":false,\"top_logprobs\":3}", m);
    bad(CHAT, json, "top_logprobs", "requires 'logprobs'");
    snprintf(json, sizeof(json), "{%s,\"top_logprobs\":0}", m);
    ok(CHAT, json);
    snprintf(json, sizeof(json), "{%s,\"logprobs\":true,\"top_logprobs\":3}", m);
    ok(CHAT, json);
}

static void test_unknown_ignored(void **state)
{
    struct dec *d = dec(C, "{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\","
                           "\"parameters\":{\"type\":\"object\",\"properties\":{\"a\":[1,2,"
                           "{\"b\":null}]}}}}],\"response_format\":{\"type\":\"json_object\"},"
                           "\"logit_bias\":{\"50256\":-100},\"prompt\":\"kept\",\"echo\":true,"
                           "\"weird\":\"\\u00e9\\n\",\"best_of\":1,\"suffix\":null,"
                           "\"metadata\":{\"prompt\":\"not this one\",\"temperature\":9}}");

    assert_int_equal(d->rc, 0);
    assert_true(span_is(d, d->q.prompt, "kept"));
    assert_true(d->q.temperature == 1.0);
    dec_free(d);
}

static void test_escapes_in_place(void **state)
{
    struct dec *d = dec(C, "{\"prompt\":\"a\\nb\\\"c\\\\d\\/e\\u00e9\\ud83d\\ude00\\t\\u0041"
                           "\\b\\f\\r\",\"user\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"}");
    const char *want = "a\nb\"c\\d/e\xc3\xa9\xf0\x9f\x98\x80\tA\b\f\r";

    assert_int_equal(d->rc, 0);
    assert_true(span_is(d, d->q.prompt, want));
    /* decoded where it was: right after the opening quote */
    assert_int_equal(d->q.prompt.off, strlen(PREFIX) + strlen("{\"prompt\":\""));
    assert_true(span_is(d, d->q.user, "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
    dec_free(d);

    /* escaped strings everywhere we keep strings */
    d = dec(CHAT, "{\"model\":\"m\\u0031\",\"messages\":[{\"role\":\"user\",\"content\":"
                  "[{\"type\":\"te\\u0078t\",\"text\":\"x\\ty\"}]}],\"stop\":[\"\\n\\n\"]}");
    assert_int_equal(d->rc, 0);
    assert_true(span_is(d, d->q.model, "m1"));
    assert_true(span_is(d, d->q.part[0], "x\ty"));
    assert_true(span_is(d, d->q.stop[0], "\n\n"));
    dec_free(d);

    /* a NUL escape is kept as a byte: lengths are explicit */
    d = dec(C, "{\"prompt\":\"a\\u0000b\"}");
    assert_int_equal(d->rc, 0);
    assert_int_equal(d->q.prompt.len, 3);
    assert_memory_equal(d->buf + d->q.prompt.off, "a\0b", 3);
    dec_free(d);

    /* a long escaped prompt: past the inline arena */
    size_t n = 200000;
    char *big = malloc(n * 2 + 64), *p = big;
    p += sprintf(p, "{\"prompt\":\"");
    for (size_t i = 0; i < n; i++)
        *p++ = '\\', *p++ = 'n';
    strcpy(p, "\"}");
    d = dec(C, big);
    assert_int_equal(d->rc, 0);
    assert_int_equal(d->q.prompt.len, n);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(d->buf[d->q.prompt.off + i], '\n');
    dec_free(d);
    free(big);
}

static void test_bad_unicode(void **state)
{
    bad(C, "{\"prompt\":\"\\ud800\"}", "prompt", "surrogate");
    bad(C, "{\"prompt\":\"x\\udc00\"}", "prompt", "surrogate");
    bad(C, "{\"prompt\":\"\\ud800\\u0041\"}", "prompt", "surrogate");
    bad(C, "{\"prompt\":\"\\ud800x\"}", "prompt", "surrogate");
    bad(C, "{\"prompt\":\"\\ud800\\ud800\"}", "prompt", "surrogate");
    bad(C, "{\"prompt\":\"\\udbff\"}", "prompt", "surrogate");
    bad(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"\\udfff\"}]}",
        "messages[0].content", "surrogate");
    bad(C, "{\"prompt\":\"ok\",\"stop\":[\"\\ud83d\"]}", "stop", "surrogate");
    /* raw invalid UTF-8 (yajl or we refuse it; either way a 400) */
    static const char *const raw[] = {
        "{\"prompt\":\"\xff\"}", "{\"prompt\":\"\xc0\xaf\"}", "{\"prompt\":\"\xed\xa0\x80\"}",
        "{\"prompt\":\"\xe0\x80\xaf\"}", "{\"prompt\":\"\xf4\x90\x80\x80\"}",
        "{\"prompt\":\"\xc3\"}", "{\"prompt\":\"\x80\"}",
    };
    for (unsigned i = 0; i < FAVO_ARRAY_SIZE(raw); i++) {
        struct dec *d = dec(C, raw[i]);

        assert_int_equal(d->rc, -EINVAL);
        assert_int_equal(d->e.status, 400);
        dec_free(d);
    }
}

static void test_bad_json(void **state)
{
    struct dec *d = dec(C, "{\"prompt\": \"x\",}");

    assert_int_equal(d->rc, -EINVAL);
    assert_string_equal(d->e.code, "invalid_json");
    assert_non_null(strstr(d->e.message, "invalid JSON at byte"));
    assert_string_equal(d->e.param, "");
    dec_free(d);
    d = dec(C, "{\"prompt\": \"x\"} {}");
    assert_int_equal(d->rc, -EINVAL);
    assert_non_null(strstr(d->e.message, "at byte"));
    dec_free(d);
    bad(C, "", NULL, "body is empty");
    bad(C, " \r\n ", NULL, "body is empty");
    bad(C, "[1]", NULL, "must be a JSON object, got an array");
    bad(C, "\"x\"", NULL, "got a string");
    bad(C, "{\"prompt\":\"x\"", NULL, "invalid JSON");
    bad(C, "{\"prompt\":\"x\" /* c */}", NULL, "invalid JSON");
    bad(C, "{\"prompt\":\"a\nb\"}", NULL, "invalid JSON");   /* raw control char */
    bad(C, "{\"prompt\":\"\\x\"}", NULL, "invalid JSON");
    bad(C, "{\"prompt\":NaN}", NULL, "invalid JSON");
    bad(C, "{\"prompt\":\"p\",\"seed\":0123456789012345678901234567890123456789012345678901234"
           "567890123}", NULL, NULL);

    /* nesting: refused beyond ING_OAI_MAX_DEPTH, also inside unknown fields */
    char deep[256], *p = deep;
    p += sprintf(p, "{\"prompt\":\"p\",\"x\":");
    for (int i = 0; i < ING_OAI_MAX_DEPTH + 1; i++)
        *p++ = '[';
    for (int i = 0; i < ING_OAI_MAX_DEPTH + 1; i++)
        *p++ = ']';
    strcpy(p, "}");
    bad(C, deep, NULL, "nested deeper");
    p = deep + sprintf(deep, "{\"prompt\":\"p\",\"x\":");
    for (int i = 0; i < ING_OAI_MAX_DEPTH - 1; i++)
        *p++ = '[';
    for (int i = 0; i < ING_OAI_MAX_DEPTH - 1; i++)
        *p++ = ']';
    strcpy(p, "}");
    ok(C, deep);
}

static void test_limits(void **state)
{
    size_t cap = 64 + (ING_OAI_MAX_MESSAGES + 1) * 40;
    char *s = malloc(cap), *p = s;

    p += sprintf(p, "{\"messages\":[");
    for (int i = 0; i < ING_OAI_MAX_MESSAGES; i++)
        p += sprintf(p, "%s{\"role\":\"user\",\"content\":\"m\"}", i ? "," : "");
    strcpy(p, "]}");
    ok(CHAT, s);
    strcpy(p, ",{\"role\":\"user\",\"content\":\"m\"}]}");
    bad(CHAT, s, "messages", "at most 256 messages");
    free(s);

    /* content parts over all messages */
    cap = 64 + (ING_OAI_MAX_PARTS + 1) * 32;
    s = malloc(cap);
    p = s + sprintf(s, "{\"messages\":[{\"role\":\"user\",\"content\":[");
    for (int i = 0; i <= ING_OAI_MAX_PARTS; i++)
        p += sprintf(p, "%s{\"type\":\"text\",\"text\":\"t\"}", i ? "," : "");
    strcpy(p, "]}]}");
    bad(CHAT, s, "messages", "content parts");
    free(s);
}

/* ---- error bodies ---- */

static yajl_val parse_back(const char *body)
{
    char eb[256];
    yajl_val v = yajl_tree_parse(body, eb, sizeof(eb));

    if (!v)
        fprintf(stderr, "not JSON: %s (%s)\n", body, eb);
    assert_non_null(v);
    return v;
}

static const char *get_str(yajl_val root, const char *key)
{
    const char *path[] = { "error", key, NULL };
    yajl_val v = yajl_tree_get(root, path, yajl_t_any);

    assert_non_null(v);
    return YAJL_IS_NULL(v) ? NULL : YAJL_GET_STRING(v);
}

static void test_error_body(void **state)
{
    char out[1024];
    int n = ing_oai_error_body(out, sizeof(out), 400, NULL,
                               "'temperature' must be between 0 and 2, got 3.5", "temperature",
                               "invalid_value");
    yajl_val v;

    assert_true(n > 0);
    assert_int_equal((size_t)n, strlen(out));
    v = parse_back(out);
    assert_string_equal(get_str(v, "message"), "'temperature' must be between 0 and 2, got 3.5");
    assert_string_equal(get_str(v, "type"), "invalid_request_error");
    assert_string_equal(get_str(v, "param"), "temperature");
    assert_string_equal(get_str(v, "code"), "invalid_value");
    yajl_tree_free(v);

    /* quotes, backslashes, control bytes and broken UTF-8 stay valid JSON */
    n = ing_oai_error_body(out, sizeof(out), 401, NULL, "a \"b\" \\ c\n\x01\x7f \xff\xc3 \xc3\xa9",
                           NULL, NULL);
    assert_true(n > 0);
    v = parse_back(out);
    assert_string_equal(get_str(v, "message"),
                        "a \"b\" \\ c\n\x01\x7f \xef\xbf\xbd\xef\xbf\xbd \xc3\xa9");
    assert_string_equal(get_str(v, "type"), "authentication_error");
    assert_null(get_str(v, "param"));
    assert_null(get_str(v, "code"));
    yajl_tree_free(v);

    n = ing_oai_error_body(out, sizeof(out), 429, NULL, "slow down", NULL, NULL);
    v = parse_back(out);
    assert_string_equal(get_str(v, "type"), "requests");
    assert_string_equal(get_str(v, "code"), "rate_limit_exceeded");
    yajl_tree_free(v);
    n = ing_oai_error_body(out, sizeof(out), 429, "tokens", "slow down", NULL, "");
    v = parse_back(out);
    assert_string_equal(get_str(v, "type"), "tokens");
    yajl_tree_free(v);

    assert_string_equal(ing_oai_error_type(400), "invalid_request_error");
    assert_string_equal(ing_oai_error_type(413), "invalid_request_error");
    assert_string_equal(ing_oai_error_type(403), "permission_error");
    assert_string_equal(ing_oai_error_type(404), "invalid_request_error");
    assert_string_equal(ing_oai_error_type(500), "server_error");
    assert_string_equal(ing_oai_error_type(503), "server_error");

    /* too small: -ENOSPC, never a truncated body */
    assert_int_equal(ing_oai_error_body(out, 20, 400, NULL, "message", NULL, NULL), -ENOSPC);
    assert_int_equal(out[0], 0);
    n = ing_oai_error_body(out, sizeof(out), 400, NULL, "m", NULL, NULL);
    assert_int_equal(ing_oai_error_body(out, (size_t)n, 400, NULL, "m", NULL, NULL), -ENOSPC);
    assert_int_equal(ing_oai_error_body(out, (size_t)n + 1, 400, NULL, "m", NULL, NULL), n);

    /* a decode error renders with its param; client bytes in it stay JSON */
    struct dec *d = dec(CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                              "\"im\\\"age\\u0001\"}]}]}");
    assert_int_equal(d->rc, -EINVAL);
    n = ing_oai_err_body(out, sizeof(out), &d->e);
    assert_true(n > 0);
    v = parse_back(out);
    assert_string_equal(get_str(v, "param"), "messages[0].content[0].type");
    assert_non_null(strstr(get_str(v, "message"), "im\"age\x01"));
    yajl_tree_free(v);
    dec_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completions_all_params),
        cmocka_unit_test(test_chat_messages),
        cmocka_unit_test(test_content_parts),
        cmocka_unit_test(test_prompt_forms),
        cmocka_unit_test(test_param_ranges),
        cmocka_unit_test(test_chat_logprobs),
        cmocka_unit_test(test_unknown_ignored),
        cmocka_unit_test(test_escapes_in_place),
        cmocka_unit_test(test_bad_unicode),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_error_body),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
