/*
 * fuzz-keys.c - the API keys file parser (ingress/ing_keys.h) on arbitrary
 * bytes: never crashes, and whatever it accepts round-trips through
 * ing_keys_format unchanged (metamorphic check).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "favo_base.h"
#include "ing_keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ing_keys ks, back;
    char *txt;
    size_t len;

    const struct ing_key *k;
    const char *why;

    if (ing_keys_parse(&ks, "fuzz", (const char *)data, size)) {
        /* the same bytes as an Authorization header against an empty set */
        ing_keys_init(&ks);
        FAVO_ASSERT(ing_keys_auth(&ks, (const char *)data, size, &k, &why) < 0 && why);
        return 0;
    }
    FAVO_ASSERT(ing_keys_format(&ks, &txt, &len) == 0);
    FAVO_ASSERT(ing_keys_parse(&back, "fuzz-rt", txt, len) == 0);
    FAVO_ASSERT(back.nkeys == ks.nkeys);
    for (uint32_t i = 0; i < ks.nkeys; i++) {
        FAVO_ASSERT(!memcmp(ks.keys[i].sha256, back.keys[i].sha256, 32));
        FAVO_ASSERT(!strcmp(ks.keys[i].name, back.keys[i].name));
        FAVO_ASSERT(ing_keys_lookup(&back, "favo-x", 6) == NULL ||
                    ing_keys_lookup(&ks, "favo-x", 6) != NULL);
    }
    free(txt);
    ing_keys_free(&back);
    ing_keys_free(&ks);
    return 0;
}
