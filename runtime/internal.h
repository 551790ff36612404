/* internal.h: the runtime's private state, shared by the files of runtime/ and by the tests.
 * Not installed. Host C11 only.
 *
 * The runtime owns a plan, an arena carved from it, the cache state (kvcache/) and one backend,
 * an operations table chosen at open (the CPU reference, or CUDA). api.c validates every call,
 * then dispatches to the cache or the backend; nothing below runtime/ calls a backend by name. */
#ifndef HISA_INTERNAL_H
#define HISA_INTERNAL_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#include "../arena/arena.h"
#include "../kernels/kernels.h"
#include "../kvcache/kvcache.h"
#include "hisa.h"

/* The facts hisa.h publishes are the ones the lower layers use. */
_Static_assert(HISA_HEAD_DIM == HISA_D, "head dim");
_Static_assert(HISA_MAX_HEADS == HISA_HEADS_MAX && HISA_MAX_BATCH == HISA_BATCH_MAX, "published limits");
_Static_assert(HISA_MAX_PREFILL_QUERIES == HISA_PREFILL_MAX && HISA_MAX_CONTEXT == HISA_CONTEXT_MAX,
               "published limits");
_Static_assert(HISA_MAX_TOPK == HISA_TOPK_MAX && HISA_MAX_TOP_BLOCKS == HISA_TOP_BLOCKS_MAX, "published limits");
_Static_assert((int)HISA_KEY_FP8 == (int)HISA__FMT_FP8 && (int)HISA_KEY_BF16 == (int)HISA__FMT_BF16, "key formats");
_Static_assert(HISA_MODE_HISA == HISA_K_MODE_HISA && HISA_MODE_FLAT == HISA_K_MODE_FLAT, "modes");
_Static_assert(HISA_Q_F32 == HISA_K_Q_F32 && HISA_Q_BF16 == HISA_K_Q_BF16 && HISA_Q_FP8 == HISA_K_Q_FP8, "q formats");
_Static_assert(HISA_NEXT_N_MAX == HISA_K_NEXT_N_MAX, "next_n");
_Static_assert(HISA_K_EINVAL == HISA_EINVAL && HISA_K_ELIMIT == HISA_ELIMIT && HISA_K_EDEVICE == HISA_EDEVICE,
               "launcher codes");

/* Geometry derived once from a resolved configuration (plan.c). */
typedef struct hisa__geom {
    int64_t n_layers, n_heads, block_size, top_blocks, topk, key_format, payload_bytes;
    int64_t max_seqs, max_context, n_pages, max_batch, max_prefill;
    int64_t pages_per_seq;  /* ceil(max_context / B) */
    int64_t page_bytes;     /* layout.h */
    int64_t mask_words;     /* B / 32 */
    int64_t rows;           /* max(max_batch * HISA_NEXT_N_MAX, max_prefill): queries in flight on the GPU */
    int64_t cpu, cuda;      /* 1/0 selectors for backend-only regions */
} hisa__geom;

struct hisa_runtime;

/* The size table: X(name, c_type, space, count), count an expression over `const hisa__geom *g`
 * (0 drops a region). It generates the plan's rows (plan.c) and the pointer struct below. */
/* clang-format off */
#define HISA__REGIONS(X) \
    /* host: the runtime itself and the authoritative sequence tables */                          \
    X(runtime,        struct hisa_runtime, HOST, 1)                                               \
    X(seq_len,        int32_t,  HOST,   g->max_seqs)                                             \
    X(seq_is_open,    uint8_t,  HOST,   g->max_seqs)                                             \
    X(page_table,     int32_t,  HOST,   g->max_seqs * g->pages_per_seq)                          \
    X(free_pages,     int32_t,  HOST,   g->n_pages)                                              \
    X(free_seqs,      int32_t,  HOST,   g->max_seqs)                                             \
    X(page_refs,      int32_t,  HOST,   g->n_pages)                                              \
    X(chunk_order,    int32_t,  HOST,   g->max_prefill)  /* prefill chunks sorted (api.c) */      \
    /* host, CPU backend only: selection scratch for one query */                                \
    X(cpu_q,          float,    HOST,   g->cpu * g->n_heads * HISA_D)                            \
    X(cpu_scores,     float,    HOST,   g->cpu * g->max_context)                                 \
    X(cpu_ids,        int32_t,  HOST,   g->cpu * g->max_context)                                 \
    X(cpu_blocks,     int32_t,  HOST,   g->cpu * g->top_blocks)                                  \
    /* device (host memory on the CPU backend): the paged cache, layout.h */                     \
    X(keys,           uint8_t,  DEVICE, g->n_layers * g->n_pages * g->page_bytes)                \
    X(block_means,    uint16_t, DEVICE, g->n_layers * g->n_pages * HISA_D)                       \
    X(block_masks,    uint32_t, DEVICE, g->n_layers * g->n_pages * g->mask_words)                \
    X(block_sums,     float,    DEVICE, g->n_layers * g->max_seqs * HISA_D)                      \
    X(sum_pages,      int32_t,  DEVICE, g->n_layers * g->max_seqs)                               \
    X(payload,        uint8_t,  DEVICE, g->n_layers * g->n_pages * g->block_size * g->payload_bytes) \
    /* device, CUDA only: mirrors of the sequence tables, selection scratch, staging */          \
    X(dev_page_table, int32_t,  DEVICE, g->cuda * g->max_seqs * g->pages_per_seq)                \
    X(dev_seq_len,    int32_t,  DEVICE, g->cuda * g->max_seqs)                                   \
    X(sel_scores,     float,    DEVICE, g->cuda * g->rows * g->max_context)                      \
    X(sel_block_scores, float,  DEVICE, g->cuda * g->rows * g->pages_per_seq)                    \
    X(sel_blocks,     int32_t,  DEVICE, g->cuda * g->rows * g->top_blocks)                       \
    X(sel_work,       uint32_t, DEVICE, g->cuda * hisa__sel_work_words(g))                       \
    X(io_q,           float,    DEVICE, g->cuda * g->rows * g->n_heads * HISA_D)                 \
    X(io_w,           float,    DEVICE, g->cuda * g->rows * g->n_heads)                          \
    X(io_out,         int32_t,  DEVICE, g->cuda * g->rows * g->topk)                             \
    X(io_keys,        float,    DEVICE, g->cuda * g->rows * HISA_D)   /* fp32 or bf16 keys */   \
    X(io_codes,       uint8_t,  DEVICE, g->cuda * g->rows * HISA_D)                              \
    X(io_scales,      float,    DEVICE, g->cuda * g->rows)                                       \
    X(io_payload,     uint8_t,  DEVICE, g->cuda * g->rows * g->payload_bytes)
/* clang-format on */

#define HISA__REGION_FIELD(name, type, space, count) type *name;
typedef struct hisa__regions {
    HISA__REGIONS(HISA__REGION_FIELD)
} hisa__regions;
#undef HISA__REGION_FIELD

#define HISA__REGION_ONE(name, type, space, count) +1
enum { HISA__REGION_COUNT = 0 HISA__REGIONS(HISA__REGION_ONE) };
#undef HISA__REGION_ONE

_Static_assert(sizeof(hisa__regions) == HISA__REGION_COUNT * sizeof(void *), "region table and struct");
_Static_assert(HISA__REGION_COUNT <= HISA_PLAN_REGIONS_MAX, "plan has too few region slots");

/* A backend: the operations table chosen at open (cpu_backend.c, cuda_backend.c). Every entry
 * gets validated input (api.c) and returns 0 or a negative HISA_E* code. */
typedef struct hisa__backend {
    const char *name;
    const hisa__arena_mem *mem;   /* how the arena reserves for this backend */
    const hisa__kv_ops *kv_ops;   /* the cache's device copy; be = start's choice (rt->kv.be) */
    /* Before the arena: is the device there and supported? detail gets the reason if not. */
    int (*probe)(int32_t device, hisa_k_device *dev, char *detail, size_t detail_bytes);
    /* After carving, before the seal: device state, the cache's device copy emptied. */
    int (*start)(struct hisa_runtime *rt);
    int (*sync)(struct hisa_runtime *rt);
    /* Keys of a batch (range_seq < 0: req->seq_ids / positions) or of a range of one sequence. */
    int (*write)(struct hisa_runtime *rt, const hisa_write *req, int32_t range_seq, int32_t range_pos0);
    int (*decode)(struct hisa_runtime *rt, const hisa_decode *req);
    /* dev_flags: hisa_dev.h's HISA_DEV_* (0 for hisa_select_prefill). */
    int (*prefill)(struct hisa_runtime *rt, const hisa_prefill *req, uint32_t dev_flags);
} hisa__backend;

extern const hisa__backend hisa__cpu_backend;
extern const hisa__backend hisa__cuda_backend; /* without CUDA: probe says HISA_ENODEVICE */

struct hisa_runtime {
    hisa_plan plan;          /* plan.config is the resolved configuration */
    hisa__arena arena;
    hisa__regions r;         /* every pointer carved from the arena */
    hisa__geom g;
    hisa__kv kv;             /* page pool and sequence tables (kvcache/) */
    const hisa__backend *be;
    hisa_k_device dev;       /* CUDA: the device as read once at open (kernels.h) */
    void *stream;            /* cudaStream_t */
    int32_t poisoned;
    char error_detail[256];
};

#define HISA__CHECK(cond, code)     \
    do {                            \
        if (!(cond)) return (code); \
    } while (0)

/* plan.c: configuration rules, geometry, the plan. */
int hisa__config_check(const hisa_config *in, hisa_config *out, const char **field, const char **rule);
void hisa__geom_from_config(const hisa_config *resolved, hisa__geom *g);
int64_t hisa__sel_work_words(const hisa__geom *g);
int hisa__plan_build(const hisa_config *resolved, hisa_plan *plan);

/* Record a failed device call and poison the runtime; returns HISA_EDEVICE. */
int hisa__device_failed(struct hisa_runtime *rt, const char *stmt, const char *file, int line, const char *msg);

/* Shorthands over layout.h for the runtime's own cache. */
static inline uint8_t *hisa__page(const struct hisa_runtime *rt, int32_t layer, int32_t page) {
    return hisa__kv_page(&rt->kv, layer, page);
}
static inline int64_t hisa__summary_index(const struct hisa_runtime *rt, int32_t layer, int32_t page) {
    return hisa__layer_index(layer, rt->g.n_pages, page);
}
static inline int hisa__seq_valid(const struct hisa_runtime *rt, int32_t seq) { return hisa__kv_seq_valid(&rt->kv, seq); }
static inline int hisa__is_cuda(const struct hisa_runtime *rt) { return rt->be == &hisa__cuda_backend; }

/* cpu_backend.c: the reference selection, for the tests too. */
/* Scores: I(s) for s in 0..t into I[t+1]; J(b) for b in 0..t/B into J[t/B+1] (J of blocks 0 and
 * last too, though never ranked). */
int hisa__cpu_scores(struct hisa_runtime *rt, int32_t layer, int32_t seq, int32_t t, const void *q,
                     int32_t q_format, const float *w, float *I, float *J);
/* One query at position t of seq (validated): k entries into out, -1 padded; slots on request. */
int hisa__cpu_select_one(const struct hisa_runtime *rt, int32_t layer, hisa_mode mode, int32_t seq, int32_t t,
                         const void *q, int32_t q_format, const float *w, int out_slots, int32_t *out);
/* The chunks of a prefill request: n_chunks 0 is the single-chunk form (seq / t0 / n_q). */
static inline int32_t hisa__prefill_chunks(const hisa_prefill *req) { return req->n_chunks > 0 ? req->n_chunks : 1; }
static inline void hisa__prefill_chunk(const hisa_prefill *req, int32_t c, int32_t *seq, int32_t *t0, int32_t *n_q) {
    *seq = req->n_chunks ? req->seqs[c] : req->seq;
    *t0 = req->n_chunks ? req->t0s[c] : req->t0;
    *n_q = req->n_chunks ? req->n_qs[c] : req->n_q;
}
/* Bytes of one query (H x 128 values) in q_format. */
static inline int64_t hisa__q_bytes(int64_t H, int32_t q_format) {
    return H * HISA_D * (q_format == HISA_Q_F32 ? 4 : q_format == HISA_Q_BF16 ? 2 : 1);
}
/* Top-k of scores[i] for ids[i] (ids ascending); ties to the lower id. Writes the selected ids
 * in ascending order into out, returns how many (min(n, k)). Reference radix select. */
int32_t hisa__topk_ref(const float *scores, const int32_t *ids, int32_t n, int32_t k, int32_t *out);

#endif /* HISA_INTERNAL_H */
