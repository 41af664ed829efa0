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

void *eng_tok_pre_md_new(void)
{
    return pcre2_match_data_create(16, NULL);
}

void eng_tok_pre_md_free(void *md)
{
    if (md)
        pcre2_match_data_free((pcre2_match_data *)md);
}

static int split_level(const struct eng_tok_pre *p, unsigned lvl, pcre2_match_data *md,
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

        if (p->jit[lvl])
            m = pcre2_jit_match(code, (PCRE2_SPTR)s, n, at, opts, md, NULL);
        else
            m = pcre2_match(code, (PCRE2_SPTR)s, n, at, opts | PCRE2_NO_UTF_CHECK, md, NULL);
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
        ov = pcre2_get_ovector_pointer(md);
        ms = ov[0];
        me = ov[1];
        if (ms > prev && (rc = split_level(p, lvl + 1, md, s + prev, ms - prev, word, ctx)))
            return rc;
        if (me > ms && (rc = split_level(p, lvl + 1, md, s + ms, me - ms, word, ctx)))
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
        return split_level(p, lvl + 1, md, s + prev, n - prev, word, ctx);
    return 0;
}

int eng_tok_pre_split(const struct eng_tok_pre *p, void *md, const char *s, size_t n,
                      eng_tok_word_fn word, void *ctx)
{
    return split_level(p, 0, (pcre2_match_data *)md, s, n, word, ctx);
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
