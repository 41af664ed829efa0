/*
 * eng_arch.c - the supported architectures and what sets them apart in the
 * forward pass. Adding one means a row here, its tensors in eng_model.c and
 * whatever new operation it needs in eng_step.c.
 */
#include "eng_model.h"

#include <string.h>

static const struct eng_arch_info archs[ENG_ARCH_COUNT] = {
    [ENG_ARCH_LLAMA] = { .name = "llama" },
    [ENG_ARCH_QWEN2] = { .name = "qwen2", .rope_neox = 1, .qkv_bias = 1 },
    [ENG_ARCH_GEMMA3] = { .name = "gemma3", .rope_neox = 1, .qk_norm = 1, .post_norms = 1,
                          .gelu = 1, .embd_scale = 1, .swa_pattern = 6 },
};

const struct eng_arch_info *eng_arch_get(enum eng_arch a)
{
    return (unsigned)a < ENG_ARCH_COUNT ? &archs[a] : NULL;
}

int eng_arch_by_name(const char *name, size_t len)
{
    for (int a = 0; a < ENG_ARCH_COUNT; a++)
        if (strlen(archs[a].name) == len && !memcmp(archs[a].name, name, len))
            return a;
    return -1;
}

const char *eng_arch_list(void)
{
    return "llama, qwen2, gemma3";
}
