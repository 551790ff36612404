/* kvcache.h: the paged key cache: page pool, sequence tables, block-summary state machine.
 *
 * Why a layer of its own: every backend must agree on which page holds which position and on
 * what a block summary is; that bookkeeping is host C that no backend should repeat. The host
 * tables here are the truth. A backend keeps its data (keys, summaries) where it computes, and
 * learns of every change to the tables through the hisa__kv_ops it hands in at open (kvcache
 * calls no backend by name). kvcache/host.c is the host implementation of those operations and
 * of key writes (the CPU backend's, and the twin of kernels/cache.cu).
 *
 * Callers validate first (runtime/api.c): these functions assert their preconditions and only
 * fail when a backend operation fails (its negative code is returned as it is). */
#ifndef HISA_KVCACHE_H
#define HISA_KVCACHE_H

#include <stdint.h>

#include "layout.h"

/* What the cache state machine asks of a backend; be is the backend's own state. */
typedef struct hisa__kv_ops {
    /* The device copy of seq's tables: length = seq_len[seq], page-table entries
     * [first_index, first_index + n_new) from the host table, and, when fresh, those new pages'
     * summaries (means, masks) cleared in every layer (shared pages keep theirs). When the length
     * is 0, seq's running sums are forgotten (sum_pages = -1). */
    int (*seq_set)(void *be, int32_t seq, int32_t first_index, int32_t n_new, int32_t fresh);
    /* Roll seq back to its (already shortened) host length: in `page` (the block holding the new
     * last position when the length is not a multiple of B, else -1) clear the offsets at and
     * above len % B and recompute the summary, in every layer; seq's running sum then holds that
     * page (or none). */
    int (*truncate)(void *be, int32_t seq, int32_t page);
    /* Debug builds: fill a freed page's keys with 0xff (NaN in either format) in every layer. */
    int (*poison_page)(void *be, int32_t page);
    /* seq's own copy of a page: dst gets src's first `keep` offsets (keys, payload, mask) in every
     * layer, its summary recomputed; seq's running sum then holds dst. */
    int (*copy_page)(void *be, int32_t seq, int32_t src, int32_t dst, int32_t keep);
} hisa__kv_ops;

typedef struct hisa__kv {
    /* geometry (resolved configuration) */
    int32_t n_layers, n_pages, block_size, key_format, payload_bytes;
    int32_t max_seqs, max_context, pages_per_seq, mask_words;
    int64_t page_bytes;
    /* host tables: the truth */
    int32_t *seq_len;      /* [max_seqs] */
    uint8_t *seq_is_open;  /* [max_seqs] */
    int32_t *page_table;   /* [max_seqs, pages_per_seq], -1 past the length */
    int32_t *free_pages;   /* free stack [0, n_free_pages) */
    int32_t *free_seqs;    /* free stack [0, n_free_seqs) */
    int32_t *page_refs;    /* [n_pages] sequences holding each page (0: free; > 1: shared by a fork) */
    int32_t n_free_pages, pages_high_water, n_free_seqs, seqs_high_water;
    /* cache data, where the backend computes (layout.h) */
    uint8_t *keys;         /* [n_layers, n_pages, page_bytes] */
    uint16_t *means;       /* [n_layers, n_pages, 128] bf16 */
    uint32_t *masks;       /* [n_layers, n_pages, mask_words] */
    float *sums;           /* [n_layers, max_seqs, 128] */
    int32_t *sum_pages;    /* [n_layers, max_seqs] */
    uint8_t *payload;      /* [n_layers, n_pages * B, payload_bytes], or NULL */
    const hisa__kv_ops *ops;
    void *be;
} hisa__kv;

/* Free stacks full, tables empty; the backend's copy must already be empty too. */
void hisa__kv_init(hisa__kv *kv);

static inline int hisa__kv_seq_valid(const hisa__kv *kv, int32_t seq) {
    return seq >= 0 && seq < kv->max_seqs && kv->seq_is_open[seq];
}
static inline int32_t *hisa__kv_pages(const hisa__kv *kv, int32_t seq) {
    return kv->page_table + (int64_t)seq * kv->pages_per_seq;
}
/* Pages seq needs from the pool to grow to new_len. */
static inline int32_t hisa__kv_pages_needed(const hisa__kv *kv, int32_t seq, int64_t new_len) {
    int32_t have = hisa__blocks_of(kv->seq_len[seq], kv->block_size);
    int32_t want = hisa__blocks_of(new_len, kv->block_size);
    return want > have ? want - have : 0;
}
/* Does a page hold positions of more than one sequence? (then nobody may write it) */
static inline int hisa__kv_shared(const hisa__kv *kv, int32_t page) { return kv->page_refs[page] > 1; }
/* Pages seq needs from the pool to truncate to len: one when the new last block is partial and
 * shared (seq gets its own copy). */
static inline int32_t hisa__kv_truncate_pages(const hisa__kv *kv, int32_t seq, int32_t len) {
    int32_t B = kv->block_size;
    return (len % B) && len < kv->seq_len[seq] && hisa__kv_shared(kv, hisa__kv_pages(kv, seq)[len / B]) ? 1 : 0;
}
/* Is position pos of seq written in layer? */
static inline int hisa__kv_written(const hisa__kv *kv, int32_t layer, int32_t seq, int32_t pos) {
    int32_t B = kv->block_size, page = hisa__kv_pages(kv, seq)[pos / B];
    return hisa__mask_bit(kv->masks + hisa__layer_index(layer, kv->n_pages, page) * kv->mask_words, pos % B);
}

/* Preconditions (asserted): a free sequence slot; a valid seq; enough free pages;
 * len <= current length. */
int hisa__kv_seq_open(hisa__kv *kv, int32_t *seq_out);
int hisa__kv_seq_close(hisa__kv *kv, int32_t seq);
int hisa__kv_seq_extend(hisa__kv *kv, int32_t seq, int32_t n);
int hisa__kv_seq_truncate(hisa__kv *kv, int32_t seq, int32_t len);
/* A free sequence slot, a valid parent, len <= its length, one free page when len % B != 0. */
int hisa__kv_seq_fork(hisa__kv *kv, int32_t parent, int32_t len, int32_t *child_out);

/* --- kvcache/host.c: the cache operations on host memory (CPU backend; kernels/cache.cu twin) */

extern const hisa__kv_ops hisa__kv_host_ops; /* be = the hisa__kv itself */
/* Store one token's key at pos of seq (fp32 key, or fp8 codes + scale) and its payload, and
 * update the block summary by the rule of layout.h. */
void hisa__kv_host_write(hisa__kv *kv, int32_t layer, int32_t seq, int32_t pos, const float *key,
                         const uint8_t *codes, const float *scale, const uint8_t *payload);
/* The dequantized key of token `off` of a page (either format) into out[128]. */
void hisa__kv_dequant(const hisa__kv *kv, const uint8_t *page, int32_t off, float *out);
static inline uint8_t *hisa__kv_page(const hisa__kv *kv, int32_t layer, int32_t page) {
    return kv->keys + hisa__layer_index(layer, kv->n_pages, page) * kv->page_bytes;
}

/* --- kvcache/quant.c: number formats, bit-exact with kernels/common.cuh --------------------- */
uint16_t hisa__bf16_from_f32(float x); /* round to nearest even; NaN stays NaN */
float hisa__bf16_to_f32(uint16_t b);
uint8_t hisa__e4m3_from_f32(float x);  /* RNE, saturating at +-448; NaN -> 0x7f */
float hisa__e4m3_to_f32(uint8_t c);
/* SPEC fp8 quantization of one 128-float key: scale = amax / 448 (1 where that is 0). */
void hisa__quantize_fp8(const float *x, uint8_t *codes, float *scale);

#endif /* HISA_KVCACHE_H */
