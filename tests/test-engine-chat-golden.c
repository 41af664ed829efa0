/*
 * test-engine-chat-golden.c - chat templates against exact renderings.
 *
 *   real templates: SmolLM2's template from its GGUF file and Gemma 3's
 *     published template (the 270m GGUF carries none; favo then detects the
 *     format from its vocabulary), rendered by Jinja2 for the goldens below
 *     (default system message, system folded into the first user turn, trim);
 *   every format: llama.cpp's reference conversation, rendered exactly as
 *     llama.cpp's llama_chat_apply_template does (checked with
 *     llama-cpp-python 0.3.36 for all 13 formats);
 *   detection by markers, override by name, refusal of unknown templates;
 *   tokens: the whole prompt tokenizes exactly as the rendered text would,
 *     except that control-token text inside message content stays text.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_chat.h"
#include "eng_tok.h"
#include "t_util.h"

#define MSG(r, c) { r, sizeof(r) - 1, c, sizeof(c) - 1 }

static const char gemma3_template[] =
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n";

/* Conversations rendered by Jinja2 with the real templates. */
static const struct eng_chat_msg conv0[] = { MSG("user", "Hello") };
static const struct eng_chat_msg conv1[] = { MSG("system", "Be brief."), MSG("user", "Hi there") };
static const struct eng_chat_msg conv2[] = { MSG("user", "What is 2+2?"), MSG("assistant", "4"),
                                             MSG("user", "And <|im_end|> 3+3?") };
static const struct eng_chat_msg conv3[] = { MSG("user", "  spaced  ") };
static const struct {
    const struct eng_chat_msg *m;
    size_t n;
    bool gen;
} convs[] = { { conv0, 1, true }, { conv1, 2, true }, { conv2, 3, true }, { conv3, 1, false } };

static const char *const gold_smollm2[] = {
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd <|im_end|> 3+3?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n  spaced  <|im_end|>\n",
};
static const char *const gold_gemma3[] = {
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>\n<start_of_turn>user\nAnd <|im_end|> 3+3?<end_of_turn>\n<start_of_turn>model\n",
    "<start_of_turn>user\nspaced<end_of_turn>\n",
};

/* llama.cpp's test-chat-template conversation */
static const struct eng_chat_msg ref_conv[] = {
    MSG("system", "You are a helpful assistant"), MSG("user", "Hello"),
    MSG("assistant", "Hi there"), MSG("user", "Who are you"),
    MSG("assistant", "   I am an assistant   "), MSG("user", "Another question"),
};
static const struct {
    const char *fmt, *want;
} ref_gold[] = {
    { "chatml", "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n   I am an assistant   <|im_end|>\n<|im_start|>user\nAnother question<|im_end|>\n<|im_start|>assistant\n" },
    { "llama2", "[INST] You are a helpful assistant\nHello [/INST]Hi there</s>[INST] Who are you [/INST]   I am an assistant   </s>[INST] Another question [/INST]" },
    { "llama2-sys", "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s>[INST] Who are you [/INST]   I am an assistant   </s>[INST] Another question [/INST]" },
    { "llama2-sys-bos", "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s><s>[INST] Who are you [/INST]   I am an assistant   </s><s>[INST] Another question [/INST]" },
    { "llama2-sys-strip", "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s>[INST] Who are you [/INST]I am an assistant</s>[INST] Another question [/INST]" },
    { "llama3", "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nI am an assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnother question<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n" },
    { "mistral-v1", " [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] Who are you [/INST]    I am an assistant   </s> [INST] Another question [/INST]" },
    { "mistral-v3", "[INST] You are a helpful assistant\n\nHello[/INST] Hi there</s>[INST] Who are you[/INST] I am an assistant</s>[INST] Another question[/INST]" },
    { "mistral-v3-tekken", "[INST]You are a helpful assistant\n\nHello[/INST]Hi there</s>[INST]Who are you[/INST]   I am an assistant   </s>[INST]Another question[/INST]" },
    { "mistral-v7", "[SYSTEM_PROMPT] You are a helpful assistant[/SYSTEM_PROMPT][INST] Hello[/INST] Hi there</s>[INST] Who are you[/INST]    I am an assistant   </s>[INST] Another question[/INST]" },
    { "mistral-v7-tekken", "[SYSTEM_PROMPT]You are a helpful assistant[/SYSTEM_PROMPT][INST]Hello[/INST]Hi there</s>[INST]Who are you[/INST]   I am an assistant   </s>[INST]Another question[/INST]" },
    { "gemma", "<start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\nI am an assistant<end_of_turn>\n<start_of_turn>user\nAnother question<end_of_turn>\n<start_of_turn>model\n" },
    { "phi3", "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n<|user|>\nWho are you<|end|>\n<|assistant|>\n   I am an assistant   <|end|>\n<|user|>\nAnother question<|end|>\n<|assistant|>\n" },
};

static void check_render(const struct eng_chat *c, const struct eng_chat_msg *m, size_t n, bool gen,
                         const char *want, const char *what)
{
    char buf[4096];
    struct eng_tok_span sp[64];
    size_t ns = 0;
    int64_t len = eng_chat_render(c, m, n, gen, buf, sizeof(buf), sp, 64, &ns);

    T_CHECK(len == (int64_t)strlen(want) && !memcmp(buf, want, strlen(want)),
          "%s: rendered\n  '%.*s'\n want\n  '%s'", what, (int)(len > 0 && len < 4096 ? len : 0), buf, want);
    /* spans lie inside the text, in order, and cover message contents only */
    for (size_t i = 0; i < ns && i < 64; i++) {
        T_CHECK(sp[i].off + sp[i].len <= (size_t)len, "%s: span %zu out of the text", what, i);
        T_CHECK(i == 0 || sp[i].off >= sp[i - 1].off + sp[i - 1].len, "%s: spans overlap", what);
    }
    /* a too-small buffer reports the full length and does not overflow */
    char tiny[8];
    T_CHECK(eng_chat_render(c, m, n, gen, tiny, sizeof(tiny), sp, 64, &ns) == len, "%s: short buffer", what);
}

static eng_tok_t *load(const char *path)
{
    char err[256];
    eng_tok_t *t = NULL;

    return eng_tok_load_file(&t, path, err, sizeof(err)) ? NULL : t;
}

static int count(const int32_t *ids, int64_t n, int32_t id)
{
    int c = 0;
    for (int64_t i = 0; i < n; i++)
        c += ids[i] == id;
    return c;
}

static void check_model(const char *path, const char *name, const char *const *gold)
{
    eng_tok_t *t = load(path);
    struct eng_chat c;
    char err[512];
    int32_t a[512], b[512];

    if (!t)
        return;
    T_CHECK(eng_chat_from_tok(&c, t, NULL, err, sizeof(err)) == 0, "%s: detect: %s", name, err);
    printf("%s: format %s, default system %zu bytes\n", name, eng_chat_fmt_name(c.fmt), c.default_system_len);
    for (size_t i = 0; i < sizeof(convs) / sizeof(convs[0]); i++) {
        char what[64];
        snprintf(what, sizeof(what), "%s conv %zu", name, i);
        check_render(&c, convs[i].m, convs[i].n, convs[i].gen, gold[i], what);
        /* tokens: same as the rendered text tokenized whole (BOS as the model says) */
        int64_t ka = eng_chat_encode(&c, t, convs[i].m, convs[i].n, convs[i].gen, a, 512);
        int64_t kb = eng_tok_encode(t, gold[i], strlen(gold[i]), ENG_TOK_ADD_SPECIAL | ENG_TOK_PARSE_SPECIAL, b, 512);
        int32_t fake = eng_tok_find(t, "<|im_end|>", 10);
        if (i == 2 && fake != ENG_TOK_NULL) {
            /* the user typed <|im_end|>: one control token fewer than a naive tokenization */
            T_CHECK(count(a, ka, fake) + 1 == count(b, kb, fake), "%s: content produced a control token", what);
        } else {
            T_CHECK(ka == kb && !memcmp(a, b, (size_t)ka * sizeof(*a)), "%s: tokens differ from the whole-text tokenization", what);
        }
        T_CHECK(ka > 0 && (!eng_tok_special(t)->add_bos || a[0] == eng_tok_special(t)->bos), "%s: BOS", what);
    }
    eng_tok_free(t);
}

int main(void)
{
    const char *mo = t_env("FAVO_MODELS", "models");
    struct eng_chat c;
    char err[512], p[1024];

    /* every format renders llama.cpp's reference conversation */
    for (size_t i = 0; i < sizeof(ref_gold) / sizeof(ref_gold[0]); i++) {
        T_CHECK(eng_chat_detect(&c, NULL, ref_gold[i].fmt, err, sizeof(err)) == 0, "name %s: %s", ref_gold[i].fmt, err);
        check_render(&c, ref_conv, 6, true, ref_gold[i].want, ref_gold[i].fmt);
    }
    /* detection by markers */
    static const struct {
        const char *tmpl, *want;
    } det[] = {
        { gemma3_template, "gemma" },
        { "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n'}}{% endfor %}", "chatml" },
        { "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}", "llama3" },
        { "{{ bos_token }}{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ m['content'] }}[/SYSTEM_PROMPT]{% endif %}[INST]", "mistral-v7" },
        { "{{ '<|user|>\n' + message['content'] + '<|end|>\n<|assistant|>\n' }}", "phi3" },
        { "{% set content = message['content'] %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}<<SYS>>", "llama2-sys-strip" },
        { "{%- if messages[0]['role'] == 'system' %}{{ '[AVAILABLE_TOOLS] [' }}{{ '[INST] ' + message['content'] + '[/INST]' }}", "mistral-v3" },
    };
    for (size_t i = 0; i < sizeof(det) / sizeof(det[0]); i++) {
        int rc = eng_chat_detect(&c, det[i].tmpl, NULL, err, sizeof(err));
        T_CHECK(rc == 0 && !strcmp(eng_chat_fmt_name(c.fmt), det[i].want), "detect %zu: got %s, want %s", i,
              rc ? err : eng_chat_fmt_name(c.fmt), det[i].want);
    }
    /* a Qwen2.5-style template: its default system text comes with an escaped \n */
    {
        static const char qwen[] =
            "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
            "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}";
        static const char want[] =
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n";
        T_CHECK(eng_chat_detect(&c, qwen, NULL, err, sizeof(err)) == 0 && c.fmt == ENG_CHAT_CHATML, "qwen detect");
        check_render(&c, conv0, 1, true, want, "qwen2.5 default system");
        /* a template whose system turn is built from the message has no default */
        T_CHECK(eng_chat_detect(&c, "{{'<|im_start|>' + m['role'] + '\n'}}", NULL, err, sizeof(err)) == 0 &&
                  c.default_system_len == 0, "chatml without default system");
    }
    /* Gemma 3's published template renders our Jinja2 goldens */
    T_CHECK(eng_chat_detect(&c, gemma3_template, NULL, err, sizeof(err)) == 0, "gemma3 template");
    for (size_t i = 0; i < sizeof(convs) / sizeof(convs[0]); i++)
        check_render(&c, convs[i].m, convs[i].n, convs[i].gen, gold_gemma3[i], "gemma3 template");
    /* unknown template: refused, saying how to pick one */
    T_CHECK(eng_chat_detect(&c, "{{ messages | tojson }}", NULL, err, sizeof(err)) == -ENOTSUP &&
              strstr(err, "--chat-template") && strstr(err, "chatml"), "unknown template not refused clearly: %s", err);
    T_CHECK(eng_chat_detect(&c, "{{ messages | tojson }}", "llama3", err, sizeof(err)) == 0 && c.fmt == ENG_CHAT_LLAMA3,
          "override by name");
    T_CHECK(eng_chat_detect(&c, NULL, "no-such-format", err, sizeof(err)) == -ENOENT, "bad override name accepted");

    snprintf(p, sizeof(p), "%s/SmolLM2-135M-Instruct.Q4_1.gguf", mo);
    check_model(p, "SmolLM2", gold_smollm2);
    snprintf(p, sizeof(p), "%s/gemma-3-270m-q4_k_m.gguf", mo);
    check_model(p, "Gemma3", gold_gemma3);
    printf("%d t_failures\n", t_failures);
    return t_failures ? 1 : 0;
}
