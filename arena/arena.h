/* arena.h: hisa's memory plan and its one-shot reservation.
 *
 * Why: an engine must know, before it loads a model, exactly how much GPU memory the indexer
 * takes, and must never see an allocation on the decode path. So every byte hisa uses is a
 * region of this table, sized from the configuration; open reserves two blocks (device, host)
 * or takes them from the caller, carves the regions, and seals the arena. After the seal any
 * reservation is a bug (assert).
 *
 * The table is an X-macro: X(name, c_type, space, align, count) where count is the number of
 * c_type elements, an expression over `const hisa__geom *g`. The same table generates the
 * pointer struct hisa__regions, and a static assert keeps the two in step. */
#ifndef HISA_ARENA_H
#define HISA_ARENA_H

#include <stdint.h>

#include "../runtime/hisa.h"

/* Geometry derived once from a resolved configuration. */
typedef struct hisa__geom {
    int64_t n_layers, n_heads, block_size, top_blocks, topk, key_format, payload_bytes;
    int64_t max_seqs, max_context, n_pages, max_batch, max_prefill, is_cuda;
    int64_t pages_per_seq;  /* ceil(max_context / B) */
    int64_t page_bytes;     /* fp8: B*128 + B*4; bf16: B*256 */
    int64_t mask_words;     /* B / 32 */
    int64_t rows;           /* max(max_batch, max_prefill): queries in flight on the GPU */
    int64_t cpu, cuda;      /* 1/0 selectors for backend-only regions */
} hisa__geom;

struct hisa_runtime;

#define HISA__HOST 0
#define HISA__DEV 1

/* clang-format off */
#define HISA__REGIONS(X) \
    /* host arena: the runtime itself and the authoritative sequence tables */                  \
    X(runtime,        struct hisa_runtime, HISA__HOST, 64,  1)                                    \
    X(seq_len,        int32_t,  HISA__HOST, 64,  g->max_seqs)                                    \
    X(seq_is_open,    uint8_t,  HISA__HOST, 64,  g->max_seqs)                                    \
    X(page_table,     int32_t,  HISA__HOST, 64,  g->max_seqs * g->pages_per_seq)                 \
    X(free_pages,     int32_t,  HISA__HOST, 64,  g->n_pages)                                     \
    X(free_seqs,      int32_t,  HISA__HOST, 64,  g->max_seqs)                                    \
    /* host arena, CPU backend only: selection scratch for one query */                          \
    X(cpu_q,          float,    HISA__HOST, 64,  g->cpu * g->n_heads * 128)                      \
    X(cpu_scores,     float,    HISA__HOST, 64,  g->cpu * g->max_context)                        \
    X(cpu_ids,        int32_t,  HISA__HOST, 64,  g->cpu * g->max_context)                        \
    X(cpu_blocks,     int32_t,  HISA__HOST, 64,  g->cpu * g->top_blocks)                        \
    /* device arena (host memory on the CPU backend): the paged cache */                         \
    X(keys,           uint8_t,  HISA__DEV,  256, g->n_layers * g->n_pages * g->page_bytes)       \
    X(block_sums,     float,    HISA__DEV,  256, g->n_layers * g->n_pages * 128)                 \
    X(block_means,    uint16_t, HISA__DEV,  256, g->n_layers * g->n_pages * 128)                 \
    X(block_masks,    uint32_t, HISA__DEV,  256, g->n_layers * g->n_pages * g->mask_words)       \
    X(payload,        uint8_t,  HISA__DEV,  256, g->n_layers * g->n_pages * g->block_size * g->payload_bytes) \
    /* device arena, CUDA only: mirrors of the sequence tables, selection scratch, staging */    \
    X(dev_page_table, int32_t,  HISA__DEV,  256, g->cuda * g->max_seqs * g->pages_per_seq)       \
    X(dev_seq_len,    int32_t,  HISA__DEV,  256, g->cuda * g->max_seqs)                          \
    X(sel_scores,     float,    HISA__DEV,  256, g->cuda * g->rows * g->max_context)             \
    X(sel_block_scores, float,  HISA__DEV,  256, g->cuda * g->rows * g->pages_per_seq)           \
    X(sel_blocks,     int32_t,  HISA__DEV,  256, g->cuda * g->rows * g->top_blocks)              \
    X(sel_work,       uint32_t, HISA__DEV,  256, g->cuda * hisa__sel_work_words(g))              \
    X(io_q,           float,    HISA__DEV,  256, g->cuda * g->rows * g->n_heads * 128)           \
    X(io_w,           float,    HISA__DEV,  256, g->cuda * g->rows * g->n_heads)                 \
    X(io_out,         int32_t,  HISA__DEV,  256, g->cuda * g->rows * g->topk)                    \
    X(io_keys,        float,    HISA__DEV,  256, g->cuda * g->rows * 128)                        \
    X(io_codes,       uint8_t,  HISA__DEV,  256, g->cuda * g->rows * 128)                        \
    X(io_scales,      float,    HISA__DEV,  256, g->cuda * g->rows)                              \
    X(io_payload,     uint8_t,  HISA__DEV,  256, g->cuda * g->rows * g->payload_bytes)
/* clang-format on */

#define HISA__REGION_FIELD(name, type, space, align, count) type *name;
typedef struct hisa__regions {
    HISA__REGIONS(HISA__REGION_FIELD)
} hisa__regions;
#undef HISA__REGION_FIELD

#define HISA__REGION_ONE(name, type, space, align, count) +1
enum { HISA__REGION_COUNT = 0 HISA__REGIONS(HISA__REGION_ONE) };
#undef HISA__REGION_ONE

_Static_assert(sizeof(hisa__regions) == HISA__REGION_COUNT * sizeof(void *),
               "region table and hisa__regions out of step");
_Static_assert(HISA__REGION_COUNT <= HISA_PLAN_REGIONS_MAX, "plan has too few region slots");

/* The two reservations of an open runtime. */
typedef struct hisa__arena {
    uint8_t *dev_base, *host_base;
    uint64_t dev_bytes, host_bytes;
    int32_t dev_owned, host_owned; /* 1: reserved by hisa, released at close */
    int32_t is_cuda, sealed;
} hisa__arena;

int64_t hisa__sel_work_words(const hisa__geom *g);
/* Resolve defaults and validate; *field names the bad field on error. */
int hisa__config_resolve(const hisa_config *in, hisa_config *out, const char **field);
void hisa__geom_from_config(const hisa_config *resolved, hisa__geom *g);
/* Plan from a resolved configuration. */
int hisa__plan_build(const hisa_config *resolved, hisa_plan *plan);

/* Reserve (or adopt mem), zero nothing, carve regions into *regions. Not sealed yet. */
int hisa__arena_open(hisa__arena *a, const hisa_plan *plan, const hisa_memory *mem,
                     int32_t cuda_ordinal, hisa__regions *regions);
void hisa__arena_seal(hisa__arena *a);
/* Release what hisa reserved. a may live inside the host arena: copy it first. */
void hisa__arena_release(hisa__arena a);

/* Fault injection (tests): the n-th reservation from now fails; 0 disables. */
void hisa__arena_fail_at(int32_t n);
/* Reservations made by this process so far (tests: nothing reserves after open). */
int64_t hisa__arena_reservations(void);

#endif /* HISA_ARENA_H */
