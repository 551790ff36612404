/* host.c: the cache operations on host memory: the CPU backend's, and the C twin of
 * kernels/cache.cu, which must leave exactly these bytes.
 *
 * The summary rule (layout.h): a block's running sum is the fp32 sum of its written tokens'
 * dequantized keys in offset order from 0, and its mean is bf16_rne(sum / count). A sequence
 * keeps one running sum per layer, of the page it last wrote (sum_pages). A write that appends
 * above every written offset of that page adds one term; any other write (a replacement, an
 * offset below a written one, another page) recomputes the page's sum from its stored keys,
 * which by the definition gives the same bits an in-order history would. fp8 scale = amax / 448,
 * or 1 where that is 0. */
#include <assert.h>
#include <string.h>

#include "kvcache.h"

void hisa__kv_dequant(const hisa__kv *kv, const uint8_t *page, int32_t off, float *out) {
    assert(off >= 0 && off < kv->block_size);
    if (kv->key_format == HISA__FMT_FP8) {
        const uint8_t *codes = page + hisa__code_offset(off);
        float s;
        memcpy(&s, page + hisa__scale_offset(kv->block_size, off), 4);
        for (int d = 0; d < HISA_D; d++) out[d] = hisa__e4m3_to_f32(codes[d]) * s;
    } else {
        const uint8_t *p = page + hisa__bf16_offset(off);
        for (int d = 0; d < HISA_D; d++) {
            uint16_t b;
            memcpy(&b, p + 2 * d, 2);
            out[d] = hisa__bf16_to_f32(b);
        }
    }
}

static uint32_t *mask_of(const hisa__kv *kv, int32_t layer, int32_t page) {
    return kv->masks + hisa__layer_index(layer, kv->n_pages, page) * kv->mask_words;
}

static void set_mean(const hisa__kv *kv, int32_t layer, int32_t page, const float *sum) {
    const uint32_t *mask = mask_of(kv, layer, page);
    int32_t count = 0;
    for (int32_t w = 0; w < kv->mask_words; w++) count += __builtin_popcount(mask[w]);
    uint16_t *mean = kv->means + hisa__layer_index(layer, kv->n_pages, page) * HISA_D;
    for (int d = 0; d < HISA_D; d++) mean[d] = count ? hisa__bf16_from_f32(sum[d] / (float)count) : 0;
}

/* sum = the page's written tokens in offset order, from 0 (the definition). */
static void recompute(const hisa__kv *kv, int32_t layer, int32_t page, float *sum) {
    const uint32_t *mask = mask_of(kv, layer, page);
    const uint8_t *p = hisa__kv_page(kv, layer, page);
    float deq[HISA_D];
    memset(sum, 0, HISA_D * sizeof(float));
    for (int32_t off = 0; off < kv->block_size; off++) {
        if (!hisa__mask_bit(mask, off)) continue;
        hisa__kv_dequant(kv, p, off, deq);
        for (int d = 0; d < HISA_D; d++) sum[d] += deq[d];
    }
}

/* Does every written offset of the page lie below off? (then adding off keeps offset order) */
static int appends(const uint32_t *mask, int32_t mask_words, int32_t off) {
    for (int32_t w = mask_words - 1; w >= 0; w--) {
        if (!mask[w]) continue;
        int32_t top = w * 32 + 31 - __builtin_clz(mask[w]);
        return top < off;
    }
    return 1;
}

static void store_key(const hisa__kv *kv, uint8_t *p, int32_t off, const float *key,
                      const uint8_t *codes, const float *scale) {
    if (kv->key_format == HISA__FMT_FP8) {
        uint8_t c[HISA_D];
        float s;
        if (codes) {
            memcpy(c, codes, HISA_D);
            s = *scale;
        } else {
            hisa__quantize_fp8(key, c, &s);
        }
        memcpy(p + hisa__code_offset(off), c, HISA_D);
        memcpy(p + hisa__scale_offset(kv->block_size, off), &s, 4);
    } else {
        assert(key);
        for (int d = 0; d < HISA_D; d++) {
            uint16_t b = hisa__bf16_from_f32(key[d]);
            memcpy(p + hisa__bf16_offset(off) + 2 * d, &b, 2);
        }
    }
}

void hisa__kv_host_write(hisa__kv *kv, int32_t layer, int32_t seq, int32_t pos, const float *key,
                         const uint8_t *codes, const float *scale, const uint8_t *payload) {
    int32_t B = kv->block_size;
    assert(hisa__kv_seq_valid(kv, seq) && pos >= 0 && pos < kv->seq_len[seq] && (key || codes));
    int32_t page = hisa__kv_pages(kv, seq)[pos / B], off = pos % B;
    uint8_t *p = hisa__kv_page(kv, layer, page);
    uint32_t *mask = mask_of(kv, layer, page);
    int64_t slot = hisa__layer_index(layer, kv->max_seqs, seq);
    float *sum = kv->sums + slot * HISA_D;
    int incremental = kv->sum_pages[slot] == page && appends(mask, kv->mask_words, off);
    store_key(kv, p, off, key, codes, scale);
    mask[off / 32] |= 1u << (off % 32);
    if (incremental) {
        float deq[HISA_D];
        hisa__kv_dequant(kv, p, off, deq);
        for (int d = 0; d < HISA_D; d++) sum[d] += deq[d];
    } else {
        recompute(kv, layer, page, sum);
        kv->sum_pages[slot] = page;
    }
    set_mean(kv, layer, page, sum);
    if (payload) {
        int32_t pb = kv->payload_bytes;
        memcpy(kv->payload + hisa__payload_offset(layer, kv->n_pages, B, hisa__slot(page, B, off), pb),
               payload, (size_t)pb);
    }
}

/* --- hisa__kv_ops on host memory ----------------------------------------------------------- */

static int host_seq_set(void *be, int32_t seq, int32_t first_index, int32_t n_new, int32_t fresh) {
    hisa__kv *kv = be;
    const int32_t *pt = hisa__kv_pages(kv, seq);
    assert(first_index >= 0 && first_index + n_new <= kv->pages_per_seq);
    for (int32_t l = 0; l < kv->n_layers; l++) {
        for (int32_t i = first_index; fresh && i < first_index + n_new; i++) {
            int64_t pi = hisa__layer_index(l, kv->n_pages, pt[i]);
            memset(kv->means + pi * HISA_D, 0, HISA_D * sizeof(uint16_t));
            memset(kv->masks + pi * kv->mask_words, 0, (size_t)kv->mask_words * sizeof(uint32_t));
        }
        if (kv->seq_len[seq] == 0) kv->sum_pages[hisa__layer_index(l, kv->max_seqs, seq)] = -1;
    }
    return 0;
}

/* In one layer: keep offsets < keep of page's mask, re-summarize it, make it seq's running sum. */
static void keep_and_resum(hisa__kv *kv, int32_t layer, int32_t seq, int32_t page, int32_t keep) {
    int64_t slot = hisa__layer_index(layer, kv->max_seqs, seq);
    uint32_t *mask = mask_of(kv, layer, page);
    assert(keep >= 1 && keep <= kv->block_size);
    for (int32_t off = keep; off < kv->block_size; off++) mask[off / 32] &= ~(1u << (off % 32));
    kv->sum_pages[slot] = page;
    recompute(kv, layer, page, kv->sums + slot * HISA_D);
    set_mean(kv, layer, page, kv->sums + slot * HISA_D);
}

static int host_truncate(void *be, int32_t seq, int32_t page) {
    hisa__kv *kv = be;
    int32_t keep = kv->seq_len[seq] % kv->block_size;
    assert((page >= 0) == (keep != 0));
    for (int32_t l = 0; l < kv->n_layers; l++) {
        if (page >= 0)
            keep_and_resum(kv, l, seq, page, keep);
        else
            kv->sum_pages[hisa__layer_index(l, kv->max_seqs, seq)] = -1;
    }
    return 0;
}

static int host_copy_page(void *be, int32_t seq, int32_t src, int32_t dst, int32_t keep) {
    hisa__kv *kv = be;
    int32_t B = kv->block_size, pb = kv->payload_bytes;
    assert(src != dst && keep >= 1 && keep <= B);
    for (int32_t l = 0; l < kv->n_layers; l++) {
        memcpy(hisa__kv_page(kv, l, dst), hisa__kv_page(kv, l, src), (size_t)kv->page_bytes);
        memcpy(mask_of(kv, l, dst), mask_of(kv, l, src), (size_t)kv->mask_words * sizeof(uint32_t));
        if (kv->payload && pb > 0)
            memcpy(kv->payload + hisa__payload_offset(l, kv->n_pages, B, hisa__slot(dst, B, 0), pb),
                   kv->payload + hisa__payload_offset(l, kv->n_pages, B, hisa__slot(src, B, 0), pb), (size_t)B * pb);
        keep_and_resum(kv, l, seq, dst, keep);
    }
    return 0;
}

static int host_poison_page(void *be, int32_t page) {
    hisa__kv *kv = be;
    for (int32_t l = 0; l < kv->n_layers; l++) memset(hisa__kv_page(kv, l, page), 0xff, (size_t)kv->page_bytes);
    return 0;
}

const hisa__kv_ops hisa__kv_host_ops = {host_seq_set, host_truncate, host_poison_page, host_copy_page};
