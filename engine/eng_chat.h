/*
 * eng_chat.h - chat templates: turn a list of messages into the prompt
 * text (and tokens) a model was trained on.
 *
 * favo does not run Jinja. A model's `tokenizer.chat_template` is matched
 * by its markers to one of the formats below (the detection rules are
 * llama.cpp's), each rendered by a small C function. A template that
 * matches none is refused at load with a message naming the formats and
 * how to choose one (`--chat-template NAME` / config `chat_template`);
 * a model with no template at all is matched by the control tokens its
 * vocabulary has (<|im_start|>, <start_of_turn>, <|start_header_id|>...).
 *
 *   name              markers in the template           looks like
 *   chatml            <|im_start|>                      <|im_start|>user\nHi<|im_end|>\n
 *   llama2[-sys...]   [INST] (+ <<SYS>>, strip, bos)    [INST] <<SYS>>\nS\n<</SYS>>\n\nHi [/INST]
 *   llama3            <|start_header_id|>               <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>
 *   mistral-v1        [INST] + ' [INST] ' + system      " [INST] Hi [/INST]"
 *   mistral-v3        [INST] + [AVAILABLE_TOOLS]        "[INST] Hi[/INST]"
 *   mistral-v3-tekken [INST] + "[INST]" + tools         "[INST]Hi[/INST]"
 *   mistral-v7        [SYSTEM_PROMPT]                   "[SYSTEM_PROMPT] S[/SYSTEM_PROMPT][INST] Hi[/INST]"
 *   gemma             <start_of_turn>                   <start_of_turn>user\nHi<end_of_turn>\n
 *   phi3              <|assistant|> + <|end|>           <|user|>\nHi<|end|>\n
 *
 * A chatml template that injects a default system message when the first
 * message is not a system one (SmolLM2, Qwen2.5) has that text extracted
 * at detection and rendered the same way.
 *
 * BOS is never written as text: eng_chat_encode adds it as a token when
 * the model's add_bos_token says so (as llama.cpp strips a rendered
 * bos_token prefix before tokenizing).
 *
 * Control tokens (invariant): the template's own text is tokenized with
 * ENG_TOK_PARSE_SPECIAL, message contents never are - render records the
 * byte ranges of contents and eng_chat_encode passes them to
 * eng_tok_encode_ex, so a user who writes "<|im_end|>" gets plain text.
 */
#ifndef ENG_CHAT_H
#define ENG_CHAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eng_tok.h"

enum eng_chat_fmt {
    ENG_CHAT_CHATML,
    ENG_CHAT_LLAMA2,
    ENG_CHAT_LLAMA2_SYS,
    ENG_CHAT_LLAMA2_SYS_BOS,
    ENG_CHAT_LLAMA2_SYS_STRIP,
    ENG_CHAT_LLAMA3,
    ENG_CHAT_MISTRAL_V1,
    ENG_CHAT_MISTRAL_V3,
    ENG_CHAT_MISTRAL_V3_TEKKEN,
    ENG_CHAT_MISTRAL_V7,
    ENG_CHAT_MISTRAL_V7_TEKKEN,
    ENG_CHAT_GEMMA,
    ENG_CHAT_PHI3,
    ENG_CHAT_N_FMT
};

#define ENG_CHAT_SYSTEM_MAX 1024

struct eng_chat {
    enum eng_chat_fmt fmt;
    size_t default_system_len;          /* 0: none */
    char default_system[ENG_CHAT_SYSTEM_MAX];
};

/* role is "system", "user" or "assistant" (others pass through as named). */
struct eng_chat_msg {
    const char *role;
    size_t role_len;
    const char *content;
    size_t content_len;
};

/* Format by name ("chatml", "llama3", ...), or -ENOENT. */
int eng_chat_fmt_by_name(const char *name, enum eng_chat_fmt *out);
const char *eng_chat_fmt_name(enum eng_chat_fmt f);
/* "chatml, llama2, ..." for messages. */
const char *eng_chat_fmt_list(void);

/* Detect from template text (may be NULL); `name` (may be NULL) overrides.
 * -ENOTSUP with a message in err when nothing matches. */
int eng_chat_detect(struct eng_chat *c, const char *tmpl, const char *name, char *err,
                    size_t errlen);
/* The same for a loaded model: its template, else its vocabulary. */
int eng_chat_from_tok(struct eng_chat *c, const eng_tok_t *t, const char *name, char *err,
                      size_t errlen);

/* Render into buf (not NUL-terminated). Returns the full length, which may
 * exceed cap (call again). Writes the byte ranges of message contents to
 * spans (at most max_spans; *n_spans gets the count needed). */
int64_t eng_chat_render(const struct eng_chat *c, const struct eng_chat_msg *msgs, size_t n,
                        bool add_generation_prompt, char *buf, size_t cap,
                        struct eng_tok_span *spans, size_t max_spans, size_t *n_spans);

/* Render and tokenize (BOS per the model; template text PARSE_SPECIAL,
 * contents not). Returns the id count (may exceed max_ids), or -errno. */
int64_t eng_chat_encode(const struct eng_chat *c, const eng_tok_t *t,
                        const struct eng_chat_msg *msgs, size_t n, bool add_generation_prompt,
                        int32_t *ids, size_t max_ids);

#endif /* ENG_CHAT_H */
