/*
 * eng_tok_pre.c - byte-level BPE pre-tokenizers: the table of regexes real
 * models were trained with, keyed by the name llama.cpp's converter writes
 * to `tokenizer.ggml.pre`, and the PCRE2 splitter that applies them.
 *
 * Semantics (those of llama.cpp's unicode_regex_split, which the vocab
 * fixtures are checked against): the regexes run in order; each one runs
 * separately inside every piece the previous ones produced (lookarounds
 * see only that piece), and both its matches and the stretches between
 * them become pieces. An empty match splits without producing a piece.
 *
 * Where a model's tokenizer.json regex uses Unicode properties PCRE2 has
 * (\p{Lu}, (?i:...)), the original is used; the English contractions are
 * written with explicit [sS] classes as llama.cpp does, so that Unicode
 * case folding (ſ, K) does not change them. `\s` and `\S` are rewritten
 * at compile time into the Unicode White_Space set (what llama.cpp's
 * tables and HF's Rust regex both use), so PCRE2 runs without UCP and
 * `\d`, `\w`, `\b` stay ASCII like C++ std::regex.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "eng_tok.h"
#include "eng_tok_int.h"

#include <errno.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Regex building blocks. */
#define R_CONTR "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
#define R_GPT2 "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#define R_LLAMA3                                                                            \
    R_CONTR "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"     \
            "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define R_QWEN2                                                                             \
    R_CONTR "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"         \
            "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define R_UPPER "[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]"
#define R_LOWER "[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]"
#define R_TEKKEN                                                                            \
    "[^\\r\\n\\p{L}\\p{N}]?" R_UPPER "*" R_LOWER "+|[^\\r\\n\\p{L}\\p{N}]?" R_UPPER "+"     \
    R_LOWER "*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define R_GPT4O                                                                             \
    "[^\\r\\n\\p{L}\\p{N}]?" R_UPPER "*" R_LOWER "+" R_CONTR "?|[^\\r\\n\\p{L}\\p{N}]?"     \
    R_UPPER "+" R_LOWER "*" R_CONTR "?|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|"        \
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
#define R_PORO " ?[^(\\s|.,!?…。，、।۔،)]+"
#define R_DS3                                                                               \
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?"      \
    "[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"

#define C PRE_CLEAN_SPACES
#define IM PRE_IGNORE_MERGES
#define AB PRE_ADD_BOS

static const struct eng_tok_pre_def pre_defs[] = {
    /* llama.cpp's fallback when a model names none */
    { "default", C, { "[\\p{P}\\$\\+<=>\\^~\\|]+", R_GPT2, "\\p{N}+", "[0-9][0-9][0-9]" } },
    /* GPT-2 family */
    { "gpt-2", C, { R_GPT2 } },
    { "phi-2", C, { R_GPT2 } },
    { "jina-es", C, { R_GPT2 } },
    { "jina-de", C, { R_GPT2 } },
    { "gigachat", C, { R_GPT2 } },
    { "jina-v2-es", C, { R_GPT2 } },
    { "jina-v2-de", C, { R_GPT2 } },
    { "jina-v1-en", C, { R_GPT2 } },
    { "jina-v2-code", C, { R_GPT2 } },
    { "roberta-bpe", C, { R_GPT2 } },
    { "a.x-4.0", C, { R_GPT2 } },
    { "mellum", C, { R_GPT2 } },
    { "modern-bert", C, { R_GPT2 } },
    { "exaone4", C, { R_GPT2 } },
    { "mpt", C, { R_GPT2 } },
    { "olmo", C, { R_GPT2 } },
    { "jais", C, { R_GPT2 } },
    { "trillion", 0, { R_GPT2 } },
    { "granite-docling", 0, { R_GPT2 } },
    /* Llama 3 family */
    { "llama3", C | IM | AB, { R_LLAMA3 } },
    { "llama-v3", C | IM | AB, { R_LLAMA3 } },
    { "llama-bpe", C | IM | AB, { R_LLAMA3 } },
    { "falcon3", C | IM | AB, { R_LLAMA3 } },
    { "falcon-h1", C | IM | AB, { R_LLAMA3 } },
    { "pixtral", C | IM | AB, { R_LLAMA3 } },
    { "midm-2.0", C | IM | AB, { R_LLAMA3 } },
    { "lfm2", C | IM | AB, { R_LLAMA3 } },
    { "jina-v5-nano", C | IM | AB, { R_LLAMA3 } },
    { "dbrx", C, { R_LLAMA3 } },
    { "smaug-bpe", C, { R_LLAMA3 } },
    { "glm4", C | PRE_NO_BOS, { R_LLAMA3 } },
    { "chatglm-bpe", C | PRE_NO_BOS, { R_LLAMA3 } },
    { "jais-2", C,
      { R_CONTR "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                "\\s*[\\r\\n]+|\\s{512}(?!\\S)|\\s{256}(?!\\S)|\\s{128}(?!\\S)|\\s{64}(?!\\S)|"
                "\\s{32}(?!\\S)|\\s{16}(?!\\S)|\\s{8}(?!\\S)|\\s{4}(?!\\S)|\\s{1,2}(?!\\S)|\\s{1}" } },
    /* Qwen 2 family */
    { "qwen2", 0, { R_QWEN2 } },
    { "deepseek-r1-qwen", 0, { R_QWEN2 } },
    { "kormo", 0, { R_QWEN2 } },
    { "f2llmv2", 0, { R_QWEN2 } },
    { "megrez", C, { R_QWEN2 } },
    { "stablelm2", C, { R_QWEN2 } },
    { "hunyuan", 0, { R_QWEN2 } },
    { "solar-open", 0, { R_QWEN2 } },
    { "grok-2", 0, { R_QWEN2 } },
    { "qwen35", 0,
      { R_CONTR "|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|"
                "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" } },
    { "ufakzeka", 0,
      { "[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
        "\\s+(?!\\S)|\\s+" } },
    { "seed-coder", 0,
      { R_CONTR "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1}| ?[^\\s\\p{L}\\p{N}\\r\\n]+|"
                "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" } },
    { "bailingmoe", 0,
      { "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"
        " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+" } },
    { "bailingmoe2", 0,
      { "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"
        " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+" } },
    { "llada-moe", 0,
      { "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}|"
        " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+" } },
    { "minicpm5", C | IM,
      { "\\p{N}{1,3}",
        R_CONTR "|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}+| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" } },
    { "laguna", 0, { "[^\\n]+|[\\n]+", R_QWEN2 } },
    { "exaone-moe", C,
      { R_CONTR "|[^\\r\\n\\p{L}\\p{N}]?(?:\\p{L}\\p{M}*(?: \\p{L}\\p{M}*)*)+|\\p{N}|"
                " ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]?|\\s*[\\r\\n]|\\s+(?!\\S)|\\s+" } },
    /* StarCoder family: single digits, then GPT-2 */
    { "starcoder", C, { "\\p{N}", R_GPT2 } },
    { "refact", C, { "\\p{N}", R_GPT2 } },
    { "command-r", 0, { "\\p{N}", R_GPT2 } },
    { "smollm", 0, { "\\p{N}", R_GPT2 } },
    { "codeshell", C, { "\\p{N}", R_GPT2 } },
    { "exaone", C, { "\\p{N}", R_GPT2 } },
    { "minerva-7b", C, { "\\p{N}", R_GPT2 } },
    { "mellum2", C, { "\\p{N}", R_GPT2 } },
    /* Falcon */
    { "falcon", C, { "[\\p{P}\\$\\+<=>\\^~\\|`]+", R_GPT2, "[0-9][0-9][0-9]" } },
    /* DeepSeek */
    { "deepseek-llm", 0,
      { "[\r\n]",
        "\\s?[" /* cased letters (Lu, Ll, Lt), as DeepSeek's tokenizer.json lists them */
        "A-Za-z\\x{B5}\\x{C0}-\\x{D6}\\x{D8}-\\x{F6}\\x{F8}-\\x{1BA}\\x{1BC}-\\x{1BF}"
        "\\x{1C4}-\\x{293}\\x{295}-\\x{2AF}\\x{370}-\\x{373}\\x{376}\\x{377}\\x{37B}-\\x{37D}"
        "\\x{37F}\\x{386}\\x{388}-\\x{38A}\\x{38C}\\x{38E}-\\x{3A1}\\x{3A3}-\\x{3F5}"
        "\\x{3F7}-\\x{481}\\x{48A}-\\x{52F}\\x{531}-\\x{556}\\x{10A0}-\\x{10C5}"
        "\\x{13A0}-\\x{13F5}\\x{13F8}-\\x{13FD}\\x{1C90}-\\x{1CBA}\\x{1CBD}-\\x{1CBF}"
        "\\x{1D00}-\\x{1D2B}\\x{1D6B}-\\x{1D77}\\x{1D79}-\\x{1D9A}\\x{1E00}-\\x{1F15}"
        "\\x{1F18}-\\x{1F1D}\\x{1F20}-\\x{1F45}\\x{1F48}-\\x{1F4D}\\x{1F50}-\\x{1F57}"
        "\\x{1F59}\\x{1F5B}\\x{1F5D}\\x{1F5F}-\\x{1F7D}\\x{1F80}-\\x{1FB4}\\x{1FB6}-\\x{1FBC}"
        "\\x{1FBE}\\x{1FC2}-\\x{1FC4}\\x{1FC6}-\\x{1FCC}\\x{1FD0}-\\x{1FD3}"
        "\\x{1FD6}-\\x{1FDB}\\x{1FE0}-\\x{1FEC}\\x{1FF2}-\\x{1FF4}\\x{1FF6}-\\x{1FFC}"
        "\\x{2102}\\x{2107}\\x{210A}-\\x{2113}\\x{2115}\\x{2119}-\\x{211D}\\x{2124}\\x{2126}"
        "\\x{2128}\\x{212A}-\\x{212D}\\x{212F}-\\x{2134}\\x{2139}\\x{213C}-\\x{213F}"
        "\\x{2145}-\\x{2149}\\x{214E}\\x{2183}\\x{2184}\\x{2C00}-\\x{2C7B}\\x{2C7E}-\\x{2CE4}"
        "\\x{2CEB}-\\x{2CEE}\\x{2CF2}\\x{2CF3}\\x{A640}-\\x{A66D}\\x{A680}-\\x{A69B}"
        "\\x{A722}-\\x{A76F}\\x{A771}-\\x{A787}\\x{A78B}-\\x{A78E}\\x{AB70}-\\x{ABBF}"
        "\\x{FB00}-\\x{FB06}\\x{FB13}-\\x{FB17}\\x{FF21}-\\x{FF3A}\\x{FF41}-\\x{FF5A}"
        "\\x{10400}-\\x{1044F}\\x{104B0}-\\x{104D3}\\x{104D8}-\\x{104FB}\\x{10C80}-\\x{10CB2}"
        "\\x{10CC0}-\\x{10CF2}\\x{118A0}-\\x{118DF}\\x{1E900}-\\x{1E943}"
        "]+"
        "\\s?[!-/:-~！-／：-～‘-‟　-。]+", "\\s+$", "[一-龥ࠀ-一가-퟿]+", "\\p{N}+" } },
    { "deepseek-coder", 0,
      { "[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", "[一-龥ࠀ-一가-퟿]+", "\\p{N}" } },
    { "deepseek-v3", 0, { "\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", R_DS3 } },
    { "hunyuan-dense", 0, { "\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", R_DS3 } },
    { "joyai-llm", 0, { "\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", R_DS3 } },
    { "hy_v4", 0, { "\\p{N}{1,3}", "[一-龥぀-ゟ゠-ヿ]+", R_DS3 } },
    /* BLOOM / Poro / Viking */
    { "poro-chat", 0, { R_PORO } },
    { "bloom", C, { R_PORO } },
    { "gpt3-finnish", C, { R_PORO } },
    { "viking", 0, { R_PORO, "\\p{N}" } },
    /* Mistral tekken, GPT-4o (o200k) */
    { "tekken", IM | AB, { R_TEKKEN } },
    { "gpt-4o", 0, { R_GPT4O } },
    { "llama4", 0, { R_GPT4O } },
    { "kanana2", 0, { R_GPT4O } },
    { "talkie", 0, { R_GPT4O } },
    { "minimax-m2", 0, { R_GPT4O } },
    { "tiny_aya", 0, { "\\d{1,3}(?=(?:\\d{3})*\\b)", R_GPT4O } },
    { "cohere2moe", 0, { "\\d{1,3}(?=(?:\\d{3})*\\b)", R_GPT4O } },
    { "superbpe", 0, { "\\p{N}+", "(?=(\\d{3})+(?!\\d))" } },
    { "youtu", IM,
      { "[\\x{AC00}-\\x{D7A3}\\x{3131}-\\x{318E}]+|[\\x{FF01}\\x{2026}\\x{201C}\\x{201D}\\x{2018}"
        "\\x{2019}\\x{2014}\\x{FF1A}\\x{FF1B}\\x{FF0C}\\x{3001}-\\x{303F}\\x{FE30}-\\x{FE4F}]+|"
        "[\\x{3105}-\\x{312F}]+|[\\x{4E00}-\\x{9FA5}\\x{3040}-\\x{309F}\\x{30A0}-\\x{30FF}]+",
        "[^\\r\\n\\p{L}\\p{N}]?" R_UPPER "*" R_LOWER "+" R_CONTR "?|[^\\r\\n\\p{L}\\p{N}]?" R_UPPER "+"
        R_LOWER "*" R_CONTR "?|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" } },
    { "chameleon", AB,
      { "<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )",
        "\\p{N}", "[\\p{P}!-/:-@\\[-`{-~]", R_GPT2 } },
};

#undef C
#undef IM
#undef AB

const struct eng_tok_pre_def *eng_tok_pre_find(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(pre_defs) / sizeof(pre_defs[0]); i++)
        if (strlen(pre_defs[i].name) == len && !memcmp(pre_defs[i].name, name, len))
            return &pre_defs[i];
    return NULL;
}

static const char *pre_names[sizeof(pre_defs) / sizeof(pre_defs[0]) + 1];

static void pre_names_build(void)
{
    for (size_t i = 0; i < sizeof(pre_defs) / sizeof(pre_defs[0]); i++)
        pre_names[i] = pre_defs[i].name;
}

const char *const *eng_tok_pre_names(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;

    pthread_once(&once, pre_names_build);
    return pre_names;
}

/* Unicode White_Space, as the contents of a character class. */
#define WS_CLASS "\\t-\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

/* Rewrite \s and \S into explicit White_Space classes. */
static char *rewrite_ws(const char *re)
{
    size_t n = strlen(re), cap = n * 8 + sizeof(WS_CLASS) * 4 + 16, o = 0;
    char *out = malloc(cap);
    bool in_class = false;

    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (o + sizeof(WS_CLASS) + 8 >= cap) {
            char *p = realloc(out, cap *= 2);
            if (!p) {
                free(out);
                return NULL;
            }
            out = p;
        }
        if (re[i] == '\\' && i + 1 < n) {
            char c = re[i + 1];
            if (c == 's' || c == 'S') {
                if (in_class) {
                    /* \S inside a class never occurs in the table */
                    memcpy(out + o, WS_CLASS, sizeof(WS_CLASS) - 1);
                    o += sizeof(WS_CLASS) - 1;
                } else {
                    o += (size_t)sprintf(out + o, "[%s" WS_CLASS "]", c == 'S' ? "^" : "");
                }
                i++;
                continue;
            }
            out[o++] = re[i];
            out[o++] = re[i + 1];
            i++;
            continue;
        }
        if (re[i] == '[' && !in_class)
            in_class = true;
        else if (re[i] == ']' && in_class)
            in_class = false;
        out[o++] = re[i];
    }
    out[o] = 0;
    return out;
}

int eng_tok_pre_compile(struct eng_tok_pre *p, const struct eng_tok_pre_def *def, char *err,
                        size_t errlen)
{
    memset(p, 0, sizeof(*p));
    p->def = def;
    for (unsigned i = 0; i < ENG_TOK_PRE_MAX_REGEX && def->regex[i]; i++) {
        int ec;
        PCRE2_SIZE eo;
        char *re = rewrite_ws(def->regex[i]);
        pcre2_code *code;

        if (!re) {
            eng_tok_pre_free(p);
            return -ENOMEM;
        }
        code = pcre2_compile((PCRE2_SPTR)re, PCRE2_ZERO_TERMINATED,
                             PCRE2_UTF | PCRE2_DOLLAR_ENDONLY | PCRE2_NO_UTF_CHECK, &ec, &eo, NULL);
        free(re);
        if (!code) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(ec, msg, sizeof(msg));
            snprintf(err, errlen, "pre-tokenizer '%s': regex %u does not compile at %zu: %s",
                     def->name, i, (size_t)eo, (char *)msg);
            eng_tok_pre_free(p);
            return -EINVAL;
        }
        p->code[i] = code;
        p->jit[i] = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
        p->n = i + 1;
    }
    return 0;
}

void eng_tok_pre_free(struct eng_tok_pre *p)
{
    for (unsigned i = 0; i < ENG_TOK_PRE_MAX_REGEX; i++)
        if (p->code[i])
            pcre2_code_free((pcre2_code *)p->code[i]);
    memset(p, 0, sizeof(*p));
}

/*
 * The match block: PCRE2's match data and, when it could be set up, a JIT
 * stack of our own (see eng_tok_int.h for why and how it is scrubbed).
 *
 * PCRE2 gives no way to reach a JIT stack's memory, and we must zero it.
 * pcre2_jit_stack_create mmaps it inside sljit (sljit_allocate_stack); the
 * handle it returns is pcre2_real_jit_stack { pcre2_memctl memctl (three
 * pointers); struct sljit_stack *stack; } and sljit's public
 * struct sljit_stack is { top, end, start, min_start } (both unchanged
 * since PCRE2 10.30 moved to a downward-growing stack). We read those
 * words, and use them only after checking what we can: one mapping of
 * exactly the size we asked for (start == min_start, since start size ==
 * max size: the stack never moves), page aligned, top == end, mapped
 * (mincore), and a probe match that must leave its trace inside it. Any
 * check failing leaves the block without a stack of its own: every match
 * then runs on the 32 KiB machine stack and the caller scrubs deep, which
 * is the former behaviour.
 */
#define PRE_JIT_STACK (8u * 1024u) /* PCRE2's smallest (STACK_GROWTH_RATE) */

struct pre_sljit_stack {
    unsigned char *top, *end, *start, *min_start;
};
struct pre_jit_stack_hdr {
    void *memctl[3];
    struct pre_sljit_stack *stack;
};

struct pre_md {
    pcre2_match_data *md;
    pcre2_match_context *mc;  /* with js assigned; NULL: machine stack only */
    pcre2_jit_stack *js;
    unsigned char *js_lo;     /* the JIT stack's memory [js_lo, js_lo + js_len) */
    size_t js_len;
    bool js_used;             /* a match ran on it since the last eng_tok_pre_md_scrub */
    bool deep;                /* a match ran on the C stack since then */
};

/* Does [lo, lo + len) hold a non-zero byte? */
static bool any_set(const unsigned char *lo, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (lo[i])
            return true;
    return false;
}

/* Find the JIT stack's memory (see above); false: do not use it. */
static bool js_locate(struct pre_md *pm)
{
    const struct pre_sljit_stack *st = ((const struct pre_jit_stack_hdr *)pm->js)->stack;
    long page = sysconf(_SC_PAGESIZE);
    unsigned char vec[PRE_JIT_STACK / 4096 + 1];
    pcre2_code *probe;
    int ec, m;
    PCRE2_SIZE eo;
    bool ok;

    if (!st || page <= 0 || st->end - st->min_start != (ptrdiff_t)PRE_JIT_STACK ||
        st->start != st->min_start || st->top != st->end ||
        ((uintptr_t)st->min_start & ((uintptr_t)page - 1)) ||
        PRE_JIT_STACK / (size_t)page > sizeof(vec) ||
        mincore(st->min_start, PRE_JIT_STACK, vec) != 0 || any_set(st->min_start, PRE_JIT_STACK))
        return false;
    /* The probe: a match that saves its backtracking points on the JIT
     * stack (a repeated group of alternatives: 112 bytes here). */
    probe = pcre2_compile((PCRE2_SPTR) "(?:a|bc)+x?", PCRE2_ZERO_TERMINATED, PCRE2_UTF, &ec, &eo,
                          NULL);
    if (!probe)
        return false;
    m = pcre2_jit_compile(probe, PCRE2_JIT_COMPLETE) == 0
            ? pcre2_jit_match(probe, (PCRE2_SPTR) "abcabc", 6, 0, 0, pm->md, pm->mc)
            : -1;
    pcre2_code_free(probe);
    ok = m > 0 && any_set(st->min_start, PRE_JIT_STACK);
    if (ok) {
        pm->js_lo = st->min_start;
        pm->js_len = PRE_JIT_STACK;
        explicit_bzero(pm->js_lo, pm->js_len);
    }
    return ok;
}

static void *md_new(bool own_stack)
{
    struct pre_md *pm = calloc(1, sizeof(*pm));

    if (!pm)
        return NULL;
    pm->md = pcre2_match_data_create(16, NULL);
    if (!pm->md) {
        free(pm);
        return NULL;
    }
    if (own_stack && (pm->js = pcre2_jit_stack_create(PRE_JIT_STACK, PRE_JIT_STACK, NULL)) &&
        (pm->mc = pcre2_match_context_create(NULL))) {
        pcre2_jit_stack_assign(pm->mc, NULL, pm->js);
        if (js_locate(pm))
            return pm;
    }
    /* no stack of our own: the machine stack, scrubbed deep */
    if (pm->mc)
        pcre2_match_context_free(pm->mc);
    if (pm->js)
        pcre2_jit_stack_free(pm->js);
    pm->mc = NULL;
    pm->js = NULL;
    return pm;
}

void *eng_tok_pre_md_new(void)
{
    return md_new(true);
}

void *eng_tok_pre_md_new_machine(void)
{
    return md_new(false);
}

void eng_tok_pre_md_free(void *md)
{
    struct pre_md *pm = md;

    if (!pm)
        return;
    eng_tok_pre_md_scrub(pm);
    pcre2_match_data_free(pm->md);
    if (pm->mc)
        pcre2_match_context_free(pm->mc);
    if (pm->js)
        pcre2_jit_stack_free(pm->js);
    free(pm);
}

bool eng_tok_pre_md_scrub(void *md)
{
    struct pre_md *pm = md;
    bool deep = !pm->mc || pm->deep;

    if (pm->js_used)
        explicit_bzero(pm->js_lo, pm->js_len);
    pm->js_used = false;
    pm->deep = false;
    return deep;
}

bool eng_tok_pre_md_stack(const void *md, const unsigned char **lo, size_t *len)
{
    const struct pre_md *pm = md;

    *lo = pm->js_lo;
    *len = pm->js_len;
    return pm->mc != NULL;
}

/* One block per thread, made at the thread's first encode, freed at its
 * exit (the main thread's lives as long as the process). */
static pthread_key_t md_key;
static pthread_once_t md_once = PTHREAD_ONCE_INIT;
static __thread struct pre_md *md_tls;

static void md_dtor(void *md)
{
    md_tls = NULL;
    eng_tok_pre_md_free(md);
}

static void md_key_init(void)
{
    if (pthread_key_create(&md_key, md_dtor))
        md_key = (pthread_key_t)-1;
}

void *eng_tok_pre_md_thread(void)
{
    if (md_tls)
        return md_tls;
    pthread_once(&md_once, md_key_init);
    md_tls = md_new(true);
    if (md_tls && md_key != (pthread_key_t)-1)
        pthread_setspecific(md_key, md_tls);
    return md_tls;
}

static int split_level(const struct eng_tok_pre *p, unsigned lvl, struct pre_md *pm,
                       const char *s, size_t n, eng_tok_word_fn word, void *ctx)
{
    const pcre2_code *code;
    size_t prev = 0, at = 0;
    uint32_t opts = 0;
    int rc;

    if (n == 0)
        return 0;
    if (lvl == p->n)
        return word(ctx, s, n);
    code = (const pcre2_code *)p->code[lvl];
    while (at <= n) {
        PCRE2_SIZE *ov;
        size_t ms, me;
        int m;

        if (p->jit[lvl] && pm->mc) {
            pm->js_used = true;
            m = pcre2_jit_match(code, (PCRE2_SPTR)s, n, at, opts, pm->md, pm->mc);
            if (m == PCRE2_ERROR_JIT_STACKLIMIT) {
                /* Deeper than our stack: the very call the splitter made
                 * before it had one, on the 32 KiB machine stack - the
                 * same result (same limit), and a deep scrub after. */
                pm->deep = true;
                m = pcre2_jit_match(code, (PCRE2_SPTR)s, n, at, opts, pm->md, NULL);
            }
        } else if (p->jit[lvl]) {
            pm->deep = true;
            m = pcre2_jit_match(code, (PCRE2_SPTR)s, n, at, opts, pm->md, NULL);
        } else {
            pm->deep = true;
            m = pcre2_match(code, (PCRE2_SPTR)s, n, at, opts | PCRE2_NO_UTF_CHECK, pm->md, NULL);
        }
        if (m == PCRE2_ERROR_NOMATCH) {
            if (opts) {
                /* no non-empty match at an empty match's position: step one character */
                opts = 0;
                if (at >= n)
                    break;
                at += eng_utf8_lead_len((unsigned char)s[at]);
                continue;
            }
            break;
        }
        if (m < 0 && m != 0)
            break;   /* resource limit: leave the rest as one piece */
        ov = pcre2_get_ovector_pointer(pm->md);
        ms = ov[0];
        me = ov[1];
        if (ms > prev && (rc = split_level(p, lvl + 1, pm, s + prev, ms - prev, word, ctx)))
            return rc;
        if (me > ms && (rc = split_level(p, lvl + 1, pm, s + ms, me - ms, word, ctx)))
            return rc;
        prev = me;
        if (me == ms) {
            if (me >= n)
                break;
            at = me;
            opts = PCRE2_NOTEMPTY_ATSTART | PCRE2_ANCHORED;
        } else {
            at = me;
            opts = 0;
        }
    }
    if (prev < n)
        return split_level(p, lvl + 1, pm, s + prev, n - prev, word, ctx);
    return 0;
}

int eng_tok_pre_split(const struct eng_tok_pre *p, void *md, const char *s, size_t n,
                      eng_tok_word_fn word, void *ctx)
{
    return split_level(p, 0, (struct pre_md *)md, s, n, word, ctx);
}

size_t eng_utf8_valid_prefix(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            if (i + 1 >= n || (s[i + 1] & 0xC0) != 0x80)
                return i;
            i += 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            unsigned char lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
            if (i + 2 >= n || s[i + 1] < lo || s[i + 1] > hi || (s[i + 2] & 0xC0) != 0x80)
                return i;
            i += 3;
        } else if (c >= 0xF0 && c <= 0xF4) {
            unsigned char lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
            if (i + 3 >= n || s[i + 1] < lo || s[i + 1] > hi || (s[i + 2] & 0xC0) != 0x80 ||
                (s[i + 3] & 0xC0) != 0x80)
                return i;
            i += 4;
        } else {
            return i;
        }
    }
    return n;
}
