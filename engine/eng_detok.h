/*
 * eng_detok.h - streaming detokenization with stop strings, for egress's
 * per-token path (and `favo run`).
 *
 * Tokens arrive one at a time. Each push turns the token into its bytes
 * (eng_tok_piece: SentencePiece '▁' already a space, byte-level BPE bytes
 * decoded) and releases only text that is final:
 *
 *   1. complete UTF-8 only: a character split across byte tokens (<0xE2>
 *      <0x9C> <0x93>, or a byte-level BPE token ending mid-character) is
 *      held until its last byte arrives; an invalid or interrupted
 *      sequence becomes U+FFFD, so the output is always valid UTF-8;
 *   2. nothing that could be the start of a stop string: the longest
 *      suffix that is a proper prefix of some stop string is held back,
 *      and only that;
 *   3. nothing at or past a stop: when a stop string completes, the text
 *      before its first occurrence is released, the stop itself never, and
 *      the detokenizer is finished (ENG_DETOK_STOP).
 *
 * The state is one fixed-size, pointer-free struct (no malloc per token,
 * ARCHITECTURE.md invariant 8): it can live in the request's shared-memory
 * cell, so a restarted egress continues the stream where the old one
 * stopped. The tokenizer is passed to each call instead of stored.
 *
 *   init ──push*──► (STOP) ──► done      each push: 0 or ENG_DETOK_STOP
 *     └────push*──► flush ──► done       flush: releases what was held
 *
 * Output buffers: push and flush write at most eng_detok_out_max(tok) bytes.
 */
#ifndef ENG_DETOK_H
#define ENG_DETOK_H

#include <stddef.h>
#include <stdint.h>

#include "eng_tok.h"

#define ENG_DETOK_MAX_STOPS 8
#define ENG_DETOK_STOP_MAX 128      /* bytes per stop string */
#define ENG_DETOK_STOP 1            /* a stop string completed */

enum {
    ENG_DETOK_SHOW_SPECIAL = 1 << 0,  /* render control tokens as their text */
    ENG_DETOK_STRIP_FIRST = 1 << 1,   /* drop a leading space of the first piece */
};

struct eng_detok {
    uint8_t flags;
    uint8_t n_stops;
    uint8_t done;                     /* stop seen or flushed */
    uint8_t started;                  /* a non-empty piece was seen */
    uint8_t n_utf8, need_utf8;        /* pending incomplete character */
    uint8_t utf8[4];
    uint16_t n_hold;                  /* held possible stop prefix */
    uint16_t stop_len[ENG_DETOK_MAX_STOPS];
    char stop[ENG_DETOK_MAX_STOPS][ENG_DETOK_STOP_MAX];
    char hold[ENG_DETOK_STOP_MAX];
};

/* Reset for a new stream. stops[i] has stop_lens[i] bytes (1..STOP_MAX);
 * -EINVAL for more than ENG_DETOK_MAX_STOPS, an empty or too long stop. */
int eng_detok_init(struct eng_detok *d, unsigned flags, const char *const *stops,
                   const size_t *stop_lens, unsigned n_stops);

/* Bytes an output buffer needs for any push/flush with this tokenizer. */
size_t eng_detok_out_max(const eng_tok_t *t);

/* Feed one token. Writes the newly final text to out (cap >=
 * eng_detok_out_max) and its length to *n. Returns 0, ENG_DETOK_STOP when a
 * stop string completed (out holds the text before it; later pushes give
 * nothing), -ERANGE for a bad id, -ENOSPC when cap is too small. */
int eng_detok_push(struct eng_detok *d, const eng_tok_t *t, int32_t id, char *out, size_t cap,
                   size_t *n);

/* The same for raw bytes (cap >= 3 * len + ENG_DETOK_STOP_MAX + 8). */
int eng_detok_push_bytes(struct eng_detok *d, const char *p, size_t len, char *out, size_t cap,
                         size_t *n);

/* End of stream (EOS or length): release held text; an incomplete
 * character becomes U+FFFD. cap >= ENG_DETOK_STOP_MAX + 8. */
int eng_detok_flush(struct eng_detok *d, char *out, size_t cap, size_t *n);

#endif /* ENG_DETOK_H */
