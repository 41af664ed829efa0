/*
 * fuzz-shm-seg.c - the checks that stand between a process and a segment
 * it did not create: shm_seg_check() on the segment header (both kinds) and
 * the cell pool's header check behind shm_cell_pool_attach(). Whatever the
 * bytes, they must not crash, and what they accept must lie inside the
 * buffer (seg inv 3).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shm_cell.h"
#include "shm_seg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    void *buf;
    size_t len = size < 64 ? 64 : (size + 63) & ~(size_t)63;

    buf = aligned_alloc(64, len);
    if (!buf)
        return 0;
    memset(buf, 0, len);
    memcpy(buf, data, size);
    for (int kind = SHM_SEG_DATA; kind <= SHM_SEG_STATS; kind++) {
        if (shm_seg_check(buf, size, (enum shm_seg_kind)kind, err, sizeof(err)) == 0) {
            const struct shm_seg_hdr *h = buf;

            for (uint32_t i = 0; i < h->nregions; i++)
                if (h->regions[i].off + h->regions[i].size > size)
                    abort();
        } else if (!err[0]) {
            abort(); /* every refusal says why */
        }
    }
    {
        struct shm_cell_pool p;
        const struct shm_cell_pool_hdr *h = buf;

        if (size >= sizeof(*h) &&
            shm_cell_pool_attach(&p, buf, size, h->generation, SHM_CELL_ROLE_USER, -1) == 0) {
            for (unsigned c = 0; c < h->nclasses; c++) {
                const struct shm_cell_class *k = &h->classes[c];

                if (k->data_off + (uint64_t)k->ncells * k->cell_size > size ||
                    k->desc_off + (uint64_t)k->ncells * sizeof(struct shm_cell_desc) > size)
                    abort();
            }
        }
    }
    free(buf);
    return 0;
}
