/*
 * bat_plan.c - layout of a batch plan in caller-provided (shared) memory.
 */
#include "bat_plan.h"

#include <errno.h>
#include <string.h>

static size_t al64(size_t x) { return (x + 63) & ~(size_t)63; }

size_t bat_plan_size(uint32_t max_seqs, uint32_t max_blocks_per_seq, uint32_t n_blocks)
{
    return al64(sizeof(struct bat_plan)) + al64((size_t)max_seqs * sizeof(struct bat_plan_seq)) +
           al64((size_t)max_seqs * max_blocks_per_seq * 4) + al64((size_t)n_blocks * 4);
}

int bat_plan_init(struct bat_plan *p, size_t size, uint32_t max_seqs,
                  uint32_t max_blocks_per_seq, uint32_t n_blocks)
{
    size_t need = bat_plan_size(max_seqs, max_blocks_per_seq, n_blocks);

    if (!p || !max_seqs || size < need || need > UINT32_MAX)
        return -EINVAL;
    memset(p, 0, sizeof(*p));
    p->cap_seqs = max_seqs;
    p->cap_tables = max_seqs * max_blocks_per_seq;
    p->cap_freed = n_blocks;
    p->off_seqs = (uint32_t)al64(sizeof(struct bat_plan));
    p->off_tables = p->off_seqs + (uint32_t)al64((size_t)max_seqs * sizeof(struct bat_plan_seq));
    p->off_freed = p->off_tables + (uint32_t)al64((size_t)max_seqs * max_blocks_per_seq * 4);
    p->magic = BAT_PLAN_MAGIC;
    return 0;
}
