/*
 * eng_chat.c - chat template detection and rendering (contract and format
 * table in eng_chat.h). Renderings follow llama.cpp's llm_chat_apply_template
 * for each format, plus the default system message some chatml templates
 * inject.
 */
#include "eng_chat.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const fmt_names[ENG_CHAT_N_FMT] = {
    [ENG_CHAT_CHATML] = "chatml",
    [ENG_CHAT_LLAMA2] = "llama2",
    [ENG_CHAT_LLAMA2_SYS] = "llama2-sys",
    [ENG_CHAT_LLAMA2_SYS_BOS] = "llama2-sys-bos",
    [ENG_CHAT_LLAMA2_SYS_STRIP] = "llama2-sys-strip",
    [ENG_CHAT_LLAMA3] = "llama3",
    [ENG_CHAT_MISTRAL_V1] = "mistral-v1",
    [ENG_CHAT_MISTRAL_V3] = "mistral-v3",
    [ENG_CHAT_MISTRAL_V3_TEKKEN] = "mistral-v3-tekken",
    [ENG_CHAT_MISTRAL_V7] = "mistral-v7",
    [ENG_CHAT_MISTRAL_V7_TEKKEN] = "mistral-v7-tekken",
    [ENG_CHAT_GEMMA] = "gemma",
    [ENG_CHAT_PHI3] = "phi3",
};

const char *eng_chat_fmt_name(enum eng_chat_fmt f)
{
    return f < ENG_CHAT_N_FMT ? fmt_names[f] : "?";
}

const char *eng_chat_fmt_list(void)
{
    return "chatml, llama2, llama2-sys, llama2-sys-bos, llama2-sys-strip, llama3, mistral-v1, "
           "mistral-v3, mistral-v3-tekken, mistral-v7, mistral-v7-tekken, gemma, phi3";
}

int eng_chat_fmt_by_name(const char *name, enum eng_chat_fmt *out)
{
    for (int i = 0; i < ENG_CHAT_N_FMT; i++)
        if (!strcmp(name, fmt_names[i])) {
            *out = (enum eng_chat_fmt)i;
            return 0;
        }
    /* common aliases */
    if (!strcmp(name, "qwen2") || !strcmp(name, "smollm"))
        return *out = ENG_CHAT_CHATML, 0;
    if (!strcmp(name, "gemma3"))
        return *out = ENG_CHAT_GEMMA, 0;
    if (!strcmp(name, "mistral"))
        return *out = ENG_CHAT_MISTRAL_V3, 0;
    return -ENOENT;
}

static bool has(const char *t, const char *s)
{
    return strstr(t, s) != NULL;
}

/* A literal "<|im_start|>system\n...<|im_end|>" in a chatml template is a
 * default system message (SmolLM2, Qwen2.5): extract it, unescaping \n. */
static void chatml_default_system(struct eng_chat *c, const char *tmpl)
{
    static const char mark[] = "<|im_start|>system";
    const char *p, *e, *q;
    size_t o = 0;

    /* the first occurrence that is a literal (Qwen2.5 writes the system turn
     * built from the message first, then its default) */
    for (const char *at = strstr(tmpl, mark); at; at = strstr(at + 1, mark)) {
        p = at + sizeof(mark) - 1;
        if (*p == '\n')
            p++;
        else if (p[0] == '\\' && p[1] == 'n')
            p += 2;
        else
            continue;
        e = strstr(p, "<|im_end|>");
        if (!e || e == p)
            continue;
        for (q = p; q < e; q++)
            if (*q == '\'' || *q == '"' || *q == '{' || *q == '}' || *q == '+')
                break;   /* an expression, not a literal */
        if (q < e)
            continue;
        for (q = p; q < e && o < ENG_CHAT_SYSTEM_MAX; q++) {
            if (q[0] == '\\' && q + 1 < e && q[1] == 'n') {
                c->default_system[o++] = '\n';
                q++;
            } else {
                c->default_system[o++] = *q;
            }
        }
        if (o < ENG_CHAT_SYSTEM_MAX)
            c->default_system_len = o;
        return;
    }
}

static int detect_text(const char *t, enum eng_chat_fmt *f)
{
    if (has(t, "<|im_start|>")) {
        *f = ENG_CHAT_CHATML;
    } else if (!strncmp(t, "mistral", 7) || has(t, "[INST]")) {
        if (has(t, "[SYSTEM_PROMPT]")) {
            *f = ENG_CHAT_MISTRAL_V7;
        } else if (has(t, "' [INST] ' + system_message") || has(t, "[AVAILABLE_TOOLS]")) {
            if (has(t, " [INST]"))
                *f = ENG_CHAT_MISTRAL_V1;
            else if (has(t, "\"[INST]\""))
                *f = ENG_CHAT_MISTRAL_V3_TEKKEN;
            else
                *f = ENG_CHAT_MISTRAL_V3;
        } else if (has(t, "content.strip()")) {
            *f = ENG_CHAT_LLAMA2_SYS_STRIP;
        } else if (has(t, "bos_token + '[INST]")) {
            *f = ENG_CHAT_LLAMA2_SYS_BOS;
        } else if (has(t, "<<SYS>>")) {
            *f = ENG_CHAT_LLAMA2_SYS;
        } else {
            *f = ENG_CHAT_LLAMA2;
        }
    } else if (has(t, "<|assistant|>") && has(t, "<|end|>")) {
        *f = ENG_CHAT_PHI3;
    } else if (has(t, "<start_of_turn>")) {
        *f = ENG_CHAT_GEMMA;
    } else if (has(t, "<|start_header_id|>") && has(t, "<|end_header_id|>")) {
        *f = ENG_CHAT_LLAMA3;
    } else {
        return -ENOTSUP;
    }
    return 0;
}

int eng_chat_detect(struct eng_chat *c, const char *tmpl, const char *name, char *err,
                    size_t errlen)
{
    memset(c, 0, sizeof(*c));
    if (name && *name) {
        if (eng_chat_fmt_by_name(name, &c->fmt)) {
            snprintf(err, errlen, "chat template '%s' is not one favo knows (%s)", name,
                     eng_chat_fmt_list());
            return -ENOENT;
        }
    } else if (!tmpl || detect_text(tmpl, &c->fmt)) {
        snprintf(err, errlen,
                 "tokenizer.chat_template: %s; choose a format with --chat-template NAME "
                 "(config key chat_template), one of: %s",
                 tmpl ? "the model's template matches no format favo renders"
                      : "the model has no chat template",
                 eng_chat_fmt_list());
        return -ENOTSUP;
    }
    if (c->fmt == ENG_CHAT_CHATML && tmpl)
        chatml_default_system(c, tmpl);
    return 0;
}

int eng_chat_from_tok(struct eng_chat *c, const eng_tok_t *t, const char *name, char *err,
                      size_t errlen)
{
    const char *tmpl = eng_tok_chat_template(t);
    static const struct {
        const char *tok;
        enum eng_chat_fmt fmt;
    } by_vocab[] = {
        { "<|im_start|>", ENG_CHAT_CHATML },
        { "<start_of_turn>", ENG_CHAT_GEMMA },
        { "<|start_header_id|>", ENG_CHAT_LLAMA3 },
        { "[SYSTEM_PROMPT]", ENG_CHAT_MISTRAL_V7 },
        { "[INST]", ENG_CHAT_MISTRAL_V3 },
        { "<|assistant|>", ENG_CHAT_PHI3 },
    };

    if ((name && *name) || tmpl)
        return eng_chat_detect(c, tmpl, name, err, errlen);
    /* no template in the file: the control tokens tell the family */
    for (size_t i = 0; i < sizeof(by_vocab) / sizeof(by_vocab[0]); i++)
        if (eng_tok_find(t, by_vocab[i].tok, strlen(by_vocab[i].tok)) != ENG_TOK_NULL) {
            memset(c, 0, sizeof(*c));
            c->fmt = by_vocab[i].fmt;
            return 0;
        }
    return eng_chat_detect(c, NULL, NULL, err, errlen);
}

/* ---- rendering ---- */

struct w {
    char *buf;
    size_t cap, len;
    struct eng_tok_span *spans;
    size_t max_spans, n_spans;
};

static void put(struct w *w, const char *s, size_t n)
{
    if (w->len < w->cap)
        memcpy(w->buf + w->len, s, n < w->cap - w->len ? n : w->cap - w->len);
    w->len += n;
}

static void puts_(struct w *w, const char *s)
{
    put(w, s, strlen(s));
}

/* Message content: recorded as a plain span (no control tokens inside). */
static void put_content(struct w *w, const char *s, size_t n)
{
    if (!n)
        return;
    if (w->n_spans < w->max_spans)
        w->spans[w->n_spans] = (struct eng_tok_span){ w->len, n };
    w->n_spans++;
    put(w, s, n);
}

static bool is_ws(char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static void trim(const char **s, size_t *n)
{
    while (*n && is_ws(**s)) {
        (*s)++;
        (*n)--;
    }
    while (*n && is_ws((*s)[*n - 1]))
        (*n)--;
}

static bool role_is(const struct eng_chat_msg *m, const char *r)
{
    return m->role_len == strlen(r) && !memcmp(m->role, r, m->role_len);
}

static void render_llama2(const struct eng_chat *c, const struct eng_chat_msg *m, size_t n, struct w *w)
{
    bool sys_ok = c->fmt != ENG_CHAT_LLAMA2;
    bool bos_inside = c->fmt == ENG_CHAT_LLAMA2_SYS_BOS;
    bool strip = c->fmt == ENG_CHAT_LLAMA2_SYS_STRIP;
    bool inside = true;

    puts_(w, "[INST] ");
    for (size_t i = 0; i < n; i++) {
        const char *s = m[i].content;
        size_t l = m[i].content_len;
        if (strip)
            trim(&s, &l);
        if (!inside) {
            inside = true;
            puts_(w, bos_inside ? "<s>[INST] " : "[INST] ");
        }
        if (role_is(&m[i], "system")) {
            if (sys_ok) {
                puts_(w, "<<SYS>>\n");
                put_content(w, s, l);
                puts_(w, "\n<</SYS>>\n\n");
            } else {
                put_content(w, s, l);
                puts_(w, "\n");
            }
        } else if (role_is(&m[i], "user")) {
            put_content(w, s, l);
            puts_(w, " [/INST]");
        } else {
            put_content(w, s, l);
            puts_(w, "</s>");
            inside = false;
        }
    }
}

static void render_mistral(const struct eng_chat *c, const struct eng_chat_msg *m, size_t n, struct w *w)
{
    const char *lead = c->fmt == ENG_CHAT_MISTRAL_V1 ? " " : "";
    const char *trail = c->fmt == ENG_CHAT_MISTRAL_V3_TEKKEN ? "" : " ";
    bool trim_asst = c->fmt == ENG_CHAT_MISTRAL_V3, inside = false;

    for (size_t i = 0; i < n; i++) {
        const char *s = m[i].content;
        size_t l = m[i].content_len;
        if (!inside) {
            puts_(w, lead);
            puts_(w, "[INST]");
            puts_(w, trail);
            inside = true;
        }
        if (role_is(&m[i], "system")) {
            put_content(w, s, l);
            puts_(w, "\n\n");
        } else if (role_is(&m[i], "user")) {
            put_content(w, s, l);
            puts_(w, lead);
            puts_(w, "[/INST]");
        } else {
            if (trim_asst)
                trim(&s, &l);
            puts_(w, trail);
            put_content(w, s, l);
            puts_(w, "</s>");
            inside = false;
        }
    }
}

int64_t eng_chat_render(const struct eng_chat *c, const struct eng_chat_msg *m, size_t n,
                        bool add_gen, char *buf, size_t cap, struct eng_tok_span *spans,
                        size_t max_spans, size_t *n_spans)
{
    struct w w = { .buf = buf, .cap = cap, .spans = spans, .max_spans = max_spans };

    switch (c->fmt) {
    case ENG_CHAT_CHATML:
        for (size_t i = 0; i < n; i++) {
            if (i == 0 && c->default_system_len && !role_is(&m[0], "system")) {
                puts_(&w, "<|im_start|>system\n");
                put(&w, c->default_system, c->default_system_len);
                puts_(&w, "<|im_end|>\n");
            }
            puts_(&w, "<|im_start|>");
            put_content(&w, m[i].role, m[i].role_len);
            puts_(&w, "\n");
            put_content(&w, m[i].content, m[i].content_len);
            puts_(&w, "<|im_end|>\n");
        }
        if (add_gen)
            puts_(&w, "<|im_start|>assistant\n");
        break;
    case ENG_CHAT_LLAMA2:
    case ENG_CHAT_LLAMA2_SYS:
    case ENG_CHAT_LLAMA2_SYS_BOS:
    case ENG_CHAT_LLAMA2_SYS_STRIP:
        render_llama2(c, m, n, &w);
        break;
    case ENG_CHAT_LLAMA3:
        for (size_t i = 0; i < n; i++) {
            const char *s = m[i].content;
            size_t l = m[i].content_len;
            trim(&s, &l);
            puts_(&w, "<|start_header_id|>");
            put_content(&w, m[i].role, m[i].role_len);
            puts_(&w, "<|end_header_id|>\n\n");
            put_content(&w, s, l);
            puts_(&w, "<|eot_id|>");
        }
        if (add_gen)
            puts_(&w, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case ENG_CHAT_MISTRAL_V1:
    case ENG_CHAT_MISTRAL_V3:
    case ENG_CHAT_MISTRAL_V3_TEKKEN:
        render_mistral(c, m, n, &w);
        break;
    case ENG_CHAT_MISTRAL_V7:
    case ENG_CHAT_MISTRAL_V7_TEKKEN: {
        const char *sp = c->fmt == ENG_CHAT_MISTRAL_V7 ? " " : "";
        for (size_t i = 0; i < n; i++) {
            if (role_is(&m[i], "system")) {
                puts_(&w, "[SYSTEM_PROMPT]");
                puts_(&w, sp);
                put_content(&w, m[i].content, m[i].content_len);
                puts_(&w, "[/SYSTEM_PROMPT]");
            } else if (role_is(&m[i], "user")) {
                puts_(&w, "[INST]");
                puts_(&w, sp);
                put_content(&w, m[i].content, m[i].content_len);
                puts_(&w, "[/INST]");
            } else {
                puts_(&w, sp);
                put_content(&w, m[i].content, m[i].content_len);
                puts_(&w, "</s>");
            }
        }
        break;
    }
    case ENG_CHAT_GEMMA: {
        /* no system role: system text (trimmed, concatenated) opens the next
         * non-model turn */
        size_t sys_from = SIZE_MAX;
        for (size_t i = 0; i < n; i++) {
            const char *s = m[i].content;
            size_t l = m[i].content_len;
            bool model = role_is(&m[i], "assistant");
            if (role_is(&m[i], "system")) {
                if (sys_from == SIZE_MAX)
                    sys_from = i;
                continue;
            }
            puts_(&w, "<start_of_turn>");
            if (model)
                puts_(&w, "model");
            else
                put_content(&w, m[i].role, m[i].role_len);
            puts_(&w, "\n");
            if (sys_from != SIZE_MAX && !model) {
                size_t before = w.len;
                for (size_t k = sys_from; k < i; k++) {
                    const char *ss = m[k].content;
                    size_t sl = m[k].content_len;
                    if (!role_is(&m[k], "system"))
                        continue;
                    trim(&ss, &sl);
                    put_content(&w, ss, sl);
                }
                if (w.len > before)
                    puts_(&w, "\n\n");
                sys_from = SIZE_MAX;
            }
            trim(&s, &l);
            put_content(&w, s, l);
            puts_(&w, "<end_of_turn>\n");
        }
        if (add_gen)
            puts_(&w, "<start_of_turn>model\n");
        break;
    }
    case ENG_CHAT_PHI3:
        for (size_t i = 0; i < n; i++) {
            puts_(&w, "<|");
            put_content(&w, m[i].role, m[i].role_len);
            puts_(&w, "|>\n");
            put_content(&w, m[i].content, m[i].content_len);
            puts_(&w, "<|end|>\n");
        }
        if (add_gen)
            puts_(&w, "<|assistant|>\n");
        break;
    default:
        return -EINVAL;
    }
    if (n_spans)
        *n_spans = w.n_spans;
    return (int64_t)w.len;
}

int64_t eng_chat_encode(const struct eng_chat *c, const eng_tok_t *t,
                        const struct eng_chat_msg *msgs, size_t n, bool add_gen, int32_t *ids,
                        size_t max_ids)
{
    size_t ns = 0, cap = 256;
    int64_t len, k;
    char *buf = NULL;
    struct eng_tok_span *sp = NULL;

    for (size_t i = 0; i < n; i++)
        cap += msgs[i].content_len + msgs[i].role_len + 64;
    cap += c->default_system_len;
    buf = malloc(cap);
    sp = malloc((3 * n + 4) * sizeof(*sp));
    if (!buf || !sp) {
        k = -ENOMEM;
        goto out;
    }
    len = eng_chat_render(c, msgs, n, add_gen, buf, cap, sp, 3 * n + 4, &ns);
    if (len < 0 || (size_t)len > cap || ns > 3 * n + 4) {
        k = len < 0 ? len : -EOVERFLOW;
        goto out;
    }
    k = eng_tok_encode_ex(t, buf, (size_t)len, ENG_TOK_ADD_SPECIAL | ENG_TOK_PARSE_SPECIAL, sp, ns,
                          ids, max_ids);
out:
    if (buf)
        explicit_bzero(buf, cap);   /* prompt text: scrub before free (invariant 5) */
    free(buf);
    free(sp);
    return k;
}
