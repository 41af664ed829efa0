/*
 * eng_tok.h - the model's own tokenizer, loaded from GGUF metadata:
 * text -> token ids (ingress, `favo run`, `favo tokenize`) and token ids ->
 * bytes (egress, through eng_detok.h).
 *
 * Two algorithms, chosen by `tokenizer.ggml.model`:
 *
 *   "llama"  SentencePiece-style BPE (ENG_TOK_SPM). Spaces become U+2581
 *            ("▁"), a space is prepended to each text run that follows the
 *            start or a special token when `add_space_prefix` (default on),
 *            then adjacent pieces are merged highest score first (ties:
 *            leftmost) while the merged text is a vocabulary entry. Pieces
 *            left that are not in the vocabulary fall back to byte tokens
 *            `<0xXX>` (or the unknown token when the vocabulary has none).
 *
 *   "gpt2"   byte-level BPE (ENG_TOK_BPE). The text is cut into words by
 *            the pre-tokenizer named in `tokenizer.ggml.pre` (a list of
 *            PCRE2 regexes applied in turn, each splitting the pieces the
 *            previous one left; unmatched stretches stay pieces too), each
 *            word's bytes are merged lowest merge rank first (ties:
 *            leftmost). Vocabulary strings are stored byte-to-unicode
 *            encoded (GPT-2's table); they are decoded to raw bytes once, at
 *            load, so the hot path works on bytes. Pre-tokenizers that ask
 *            for it (llama3, tekken, ...) look a whole word up first
 *            ("ignore_merges").
 *
 * An unknown model or pre-tokenizer name is a load-time error naming the
 * key and the names that are known; never a silent fallback.
 *
 * Special tokens. Token types come from `tokenizer.ggml.token_type`.
 * Before the algorithm runs, the text is partitioned on special token
 * texts, longest first: user-defined tokens always, control and unknown
 * tokens only with ENG_TOK_PARSE_SPECIAL. So text produced by a chat
 * template (which passes PARSE_SPECIAL) gets its `<|im_start|>` as one
 * token, while a user who types `<|im_start|>` in content (tokenized
 * without the flag) gets plain text tokens. ENG_TOK_ADD_SPECIAL adds BOS /
 * EOS where the model's add_bos_token / add_eos_token ask for them.
 *
 * Exactness: ids match llama.cpp's tokenizer (checked: ../shared/vocab
 * fixtures; tests/test-engine-tok-llamacpp.py against llama-cpp-python),
 * including its load-time rules: control-looking tokens recognised by text
 * (<|im_end|>, </s>, FIM tokens...) become control and end-of-generation.
 * One deliberate difference: invalid UTF-8 keeps its bytes, each its own
 * symbol, where llama.cpp's BPE turns them into U+FFFD and its SPM lets a
 * bad lead byte swallow the next bytes; so such input still round-trips.
 *
 * Invariants:
 *   1. Every id written by eng_tok_encode is < eng_tok_n_vocab().
 *   2. An eng_tok_t is immutable after eng_tok_load: any number of threads
 *      may encode / decode with it at once, without locks. (A byte-level
 *      BPE encode uses its thread's PCRE2 match block, made at the
 *      thread's first encode and freed at its exit: an 8 KiB JIT stack,
 *      zeroed after every call - eng_tok_int.h.)
 *   3. Pieces returned by eng_tok_piece point into the tokenizer's arena
 *      and live until eng_tok_free; producing one never allocates.
 *   4. Round trip: for text s without special-token texts (and, for SPM,
 *      without a literal U+2581), decode(encode(s, 0), STRIP_SPACE) == s
 *      whenever every byte of s is reachable (byte tokens, or the
 *      vocabulary covers it).
 *   5. No token text or id is ever logged (ARCHITECTURE.md invariant 5);
 *      load errors name keys, indices and offsets only.
 *
 * Errors: functions return a count or 0, or -errno: -EINVAL for malformed
 * metadata (with a message in err), -ENOTSUP for an unsupported model /
 * pre-tokenizer, -ENOMEM, -ERANGE for an id out of range.
 */
#ifndef ENG_TOK_H
#define ENG_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "eng_gguf.h"

typedef struct eng_tok eng_tok_t;

#define ENG_TOK_NULL (-1)

enum eng_tok_kind { ENG_TOK_SPM = 1, ENG_TOK_BPE = 2 };

/* Token attributes (bit set), as llama.cpp names them. */
enum eng_tok_attr {
    ENG_TOK_ATTR_UNDEFINED = 0,
    ENG_TOK_ATTR_UNKNOWN = 1 << 0,
    ENG_TOK_ATTR_UNUSED = 1 << 1,
    ENG_TOK_ATTR_NORMAL = 1 << 2,
    ENG_TOK_ATTR_CONTROL = 1 << 3,
    ENG_TOK_ATTR_USER_DEFINED = 1 << 4,
    ENG_TOK_ATTR_BYTE = 1 << 5,
    ENG_TOK_ATTR_LSTRIP = 1 << 7,
    ENG_TOK_ATTR_RSTRIP = 1 << 8,
};

/* Flags for eng_tok_encode. */
enum {
    ENG_TOK_ADD_SPECIAL = 1 << 0,   /* BOS/EOS as add_bos_token/add_eos_token say */
    ENG_TOK_PARSE_SPECIAL = 1 << 1, /* recognise control tokens in the text */
};

/* Flags for eng_tok_piece / eng_tok_decode. */
enum {
    ENG_TOK_SHOW_SPECIAL = 1 << 0,  /* render control/unknown tokens as their text */
    ENG_TOK_STRIP_SPACE = 1 << 1,   /* decode: drop the leading space SPM added */
};

/* Special ids (ENG_TOK_NULL when the model has none). */
struct eng_tok_special {
    int32_t bos, eos, eot, eom, unk, sep, pad, nl;
    bool add_bos, add_eos, add_space_prefix;
};

/* Load from GGUF metadata (a full model or a vocab-only file). The
 * tokenizer keeps pointers into g's mapping only during load; it may
 * outlive g. */
int eng_tok_load(eng_tok_t **out, const eng_gguf_t *g, char *err, size_t errlen);
/* Open a GGUF file, load its tokenizer and close the file again: for
 * callers that need nothing else from it. Same errors as eng_gguf_open and
 * eng_tok_load, with the message in err. */
int eng_tok_load_file(eng_tok_t **out, const char *path, char *err, size_t errlen);
void eng_tok_free(eng_tok_t *t);

enum eng_tok_kind eng_tok_kind(const eng_tok_t *t);
uint32_t eng_tok_n_vocab(const eng_tok_t *t);
const char *eng_tok_pre_name(const eng_tok_t *t);     /* "" for SPM */
const struct eng_tok_special *eng_tok_special(const eng_tok_t *t);
/* The raw chat template from `tokenizer.chat_template`, or NULL. */
const char *eng_tok_chat_template(const eng_tok_t *t);

uint32_t eng_tok_attr(const eng_tok_t *t, int32_t id);     /* 0 when out of range */
bool eng_tok_is_eog(const eng_tok_t *t, int32_t id);       /* EOS, EOT, EOM, <|im_end|>... */
/* The vocabulary text of a token as stored (SPM: with '▁'; BPE: encoded). */
int eng_tok_text(const eng_tok_t *t, int32_t id, const char **p, size_t *len);
/* Id of a token whose stored text is exactly [s, s+len), or ENG_TOK_NULL. */
int32_t eng_tok_find(const eng_tok_t *t, const char *s, size_t len);

/*
 * Tokenize [text, text+len). Writes at most max_ids ids and returns the
 * total count, which may exceed max_ids (call again with a bigger buffer,
 * as with snprintf). Any bytes are accepted (invalid UTF-8 included); the
 * result holds only valid ids (invariant 1). -ENOMEM on allocation failure.
 */
int64_t eng_tok_encode(const eng_tok_t *t, const char *text, size_t len, unsigned flags,
                       int32_t *ids, size_t max_ids);

/* Like eng_tok_encode, but with ENG_TOK_PARSE_SPECIAL control tokens are
 * recognised only outside the `plain` byte ranges (sorted, disjoint): a
 * chat prompt is tokenized in one piece, exactly as a whole, while the
 * user content inside it can never produce a control token. */
struct eng_tok_span {
    size_t off, len;
};
int64_t eng_tok_encode_ex(const eng_tok_t *t, const char *text, size_t len, unsigned flags,
                          const struct eng_tok_span *plain, size_t n_plain, int32_t *ids,
                          size_t max_ids);

/* The bytes one token stands for (SPM '▁' already turned into ' ', BPE
 * bytes decoded, byte tokens as their byte). Control and unknown tokens
 * give an empty piece unless ENG_TOK_SHOW_SPECIAL. Never allocates. */
int eng_tok_piece(const eng_tok_t *t, int32_t id, unsigned flags, const char **p, size_t *len);

/* Length of the longest piece (with ENG_TOK_SHOW_SPECIAL); sizes the
 * streaming detokenizer's output buffer (eng_detok.h). */
size_t eng_tok_max_piece(const eng_tok_t *t);

/* Concatenated pieces into buf (not NUL-terminated); returns the total
 * length, which may exceed cap (nothing past cap is written). With
 * ENG_TOK_STRIP_SPACE and an SPM model that adds a space prefix, the first
 * piece's leading space is dropped (the inverse of the prefix). */
int64_t eng_tok_decode(const eng_tok_t *t, const int32_t *ids, size_t n, unsigned flags,
                       char *buf, size_t cap);

/* Names of the pre-tokenizers this build knows, NULL-terminated. */
const char *const *eng_tok_pre_names(void);

#endif /* ENG_TOK_H */
