/* internal.h: the runtime's private state, shared by runtime/, kvcache/ and the tests.
 * Not installed. Host C11 only. */
#ifndef HISA_INTERNAL_H
#define HISA_INTERNAL_H

#include <assert.h>
#include <stdint.h>

#include "../arena/arena.h"
#include "hisa.h"
#include "limits.h"

struct hisa_runtime {
    hisa_plan plan;      /* plan.config is the resolved configuration */
    hisa__arena arena;
    hisa__regions r;     /* every pointer carved from the arena */
    hisa__geom g;

    int32_t n_free_pages;     /* free_pages[0 .. n_free_pages) is the free stack */
    int32_t pages_high_water;
    int32_t n_free_seqs;      /* free_seqs[0 .. n_free_seqs) */
    int32_t seqs_high_water;

    int32_t is_cuda, cuda_ordinal, sm_count;
    void *stream;             /* cudaStream_t */
    int32_t poisoned;
    char error_detail[256];
};

#define HISA__CHECK(cond, code) \
    do {                        \
        if (!(cond)) return (code); \
    } while (0)

/* Cheap bf16 / fp8 conversions shared by the CPU backend and the tests (kvcache/quant.c). */
uint16_t hisa__bf16_from_f32(float x); /* round to nearest even; NaN stays NaN */
float hisa__bf16_to_f32(uint16_t b);
uint8_t hisa__e4m3_from_f32(float x);  /* RNE, saturating at +-448; NaN -> 0x7f */
float hisa__e4m3_to_f32(uint8_t c);
/* SPEC fp8 quantization of one 128-float key: scale = amax / 448 (1 if 0). */
void hisa__quantize_fp8(const float *x, uint8_t *codes, float *scale);
/* Dequantize token `offset` of a page into 128 floats (either format). */
void hisa__dequant_token(const hisa_runtime *rt, const uint8_t *page, int32_t offset, float *out);

/* Page-level pointers. */
static inline uint8_t *hisa__page(const hisa_runtime *rt, int32_t layer, int32_t page) {
    return rt->r.keys + ((int64_t)layer * rt->g.n_pages + page) * rt->g.page_bytes;
}
static inline int64_t hisa__summary_index(const hisa_runtime *rt, int32_t layer, int32_t page) {
    return (int64_t)layer * rt->g.n_pages + page;
}
static inline int32_t hisa__blocks_of(int64_t len, int32_t B) { return (int32_t)((len + B - 1) / B); }

/* kvcache/ : the cache state machine (host tables, CPU data path, CUDA mirrors through kernels). */
int hisa__kv_init(hisa_runtime *rt);
int hisa__kv_seq_open(hisa_runtime *rt, int32_t *seq_out);
int hisa__kv_seq_close(hisa_runtime *rt, int32_t seq);
int hisa__kv_seq_extend(hisa_runtime *rt, int32_t seq, int32_t n);
int hisa__kv_seq_truncate(hisa_runtime *rt, int32_t seq, int32_t len);
int hisa__kv_write(hisa_runtime *rt, const hisa_write *req, int32_t range_seq, int32_t range_pos0,
                   int is_range);
int hisa__seq_valid(const hisa_runtime *rt, int32_t seq);

/* runtime/cpu_backend.c: the reference. */
int hisa__cpu_write_token(hisa_runtime *rt, int32_t layer, int32_t seq, int32_t pos,
                          const float *key, const uint8_t *codes, const float *scale,
                          const uint8_t *payload);
void hisa__cpu_recompute_block(hisa_runtime *rt, int32_t layer, int32_t page);
int hisa__cpu_select_one(hisa_runtime *rt, int32_t layer, hisa_mode mode, int32_t seq, int32_t t,
                         const float *q, const float *w, int32_t out_slots, int32_t *out);
/* Scores for tests: I(s) for s in 0..t into I[t+1]; J(b) for b in 0..last into J[last+1]
 * (J of blocks 0 and last is computed too, though never ranked). */
int hisa__cpu_scores(hisa_runtime *rt, int32_t layer, int32_t seq, int32_t t, const float *q,
                     const float *w, float *I, float *J);
/* Top-k of scores[i] for ids[i] (ids ascending); ties to the lower id. Writes the selected ids
 * in ascending order into out, returns how many (min(n, k)). Reference radix select. */
int32_t hisa__topk_ref(const float *scores, const int32_t *ids, int32_t n, int32_t k, int32_t *out);

/* runtime/cuda_backend.c (compiled with CUDA=1; stubs returning HISA_ENODEVICE otherwise). */
int hisa__cuda_probe(int32_t ordinal, int32_t *sm_count);
int hisa__cuda_after_open(hisa_runtime *rt);
int hisa__cuda_seq_set(hisa_runtime *rt, int32_t seq, int32_t first_index, int32_t n_new);
int hisa__cuda_truncate(hisa_runtime *rt, int32_t seq, int32_t len, int32_t page);
int hisa__cuda_poison_page(hisa_runtime *rt, int32_t page);
int hisa__cuda_write(hisa_runtime *rt, const hisa_write *req, int32_t range_seq, int32_t range_pos0,
                     int is_range);
/* Decode selection: one query per sequence at its last position. */
int hisa__cuda_select(hisa_runtime *rt, int32_t layer, hisa_mode mode, int32_t n_rows,
                      const int32_t *seq_ids, const float *q, const float *w, int32_t *out,
                      uint32_t flags);
/* Prefill chunk: n_q queries at t0 .. t0+n_q-1 of seq (validated by the caller). Two internal
 * flags, for benchmarks and tests only (hisa_select_prefill refuses them): run the scoring
 * kernels alone (out untouched; scores and kept blocks stay in the scratch), and score fp8 keys
 * with bf16 instead of fp16 operands (hisa_k_prefill_params.variant 1). */
#define HISA__PF_SCORING_ONLY (1u << 30)
#define HISA__PF_VARIANT_ALT (1u << 29)
int hisa__cuda_prefill(hisa_runtime *rt, int32_t layer, hisa_mode mode, int32_t seq, int32_t t0,
                       int32_t n_q, const float *q, const float *w, int32_t *out, uint32_t flags);
int hisa__cuda_sync(hisa_runtime *rt);
/* Record a failed CUDA call and poison the runtime; returns HISA_EDEVICE. */
int hisa__device_failed(hisa_runtime *rt, const char *stmt, const char *file, int line,
                        const char *msg);

#endif /* HISA_INTERNAL_H */
