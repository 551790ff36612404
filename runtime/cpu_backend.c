/* cpu_backend.c: the reference. Plain C that computes exactly what shared/SPEC.md says; every
 * CUDA kernel is tested against it. It is also a usable backend: a 128K-token flat selection
 * takes well under a second (the dot products are written with 8 independent accumulators so
 * the compiler can vectorize them without reassociating anything).
 *
 * Determinism rules the kernels share: block sums add dequantized keys in fp32, one token at a
 * time in the order they are written (range writes: position order); a write that replaces a
 * written token recomputes the block's sum from its stored keys in offset order; the mean is
 * bf16_rne(sum / count); fp8 scale = amax / 448, or 1 where that is 0; ranking uses an order-preserving uint32 image of the fp32 score
 * (NaN lowest, -0 == +0) and ties go to the lower position. */
#include <assert.h>
#include <string.h>

#include "internal.h"

/* --- writes ---------------------------------------------------------------------------------- */

static int32_t popcount_words(const uint32_t *w, int64_t n) {
    int32_t c = 0;
    for (int64_t i = 0; i < n; i++) c += __builtin_popcount(w[i]);
    return c;
}

static void refresh_mean(hisa_runtime *rt, int64_t si) {
    const float *sum = rt->r.block_sums + si * HISA_D;
    uint16_t *mean = rt->r.block_means + si * HISA_D;
    int32_t count = popcount_words(rt->r.block_masks + si * rt->g.mask_words, rt->g.mask_words);
    for (int d = 0; d < HISA_D; d++) mean[d] = count ? hisa__bf16_from_f32(sum[d] / (float)count) : 0;
}

int hisa__cpu_write_token(hisa_runtime *rt, int32_t layer, int32_t seq, int32_t pos,
                          const float *key, const uint8_t *codes, const float *scale,
                          const uint8_t *payload) {
    int32_t B = (int32_t)rt->g.block_size;
    assert(pos >= 0 && pos < rt->r.seq_len[seq] && (key || codes));
    int32_t page = rt->r.page_table[(int64_t)seq * rt->g.pages_per_seq + pos / B], off = pos % B;
    uint8_t *p = hisa__page(rt, layer, page);
    int64_t si = hisa__summary_index(rt, layer, page);
    float *sum = rt->r.block_sums + si * HISA_D;
    uint32_t *mask = rt->r.block_masks + si * rt->g.mask_words;
    float deq[HISA_D];
    int replacing = (mask[off / 32] >> (off % 32)) & 1;
    if (rt->g.key_format == HISA_KEY_FP8) {
        uint8_t c[HISA_D];
        float s;
        if (codes) {
            memcpy(c, codes, HISA_D);
            s = *scale;
        } else {
            hisa__quantize_fp8(key, c, &s);
        }
        memcpy(p + (int64_t)off * HISA_D, c, HISA_D);
        memcpy(p + (int64_t)B * HISA_D + (int64_t)off * 4, &s, 4);
    } else {
        assert(key);
        uint8_t *dst = p + (int64_t)off * HISA_D * 2;
        for (int d = 0; d < HISA_D; d++) {
            uint16_t b = hisa__bf16_from_f32(key[d]);
            memcpy(dst + 2 * d, &b, 2);
        }
    }
    mask[off / 32] |= 1u << (off % 32);
    if (replacing) {
        /* Recompute rather than subtract: exact (the block is what it would be had the old key
         * never been written), and a NaN or inf key that is replaced leaves no trace. */
        hisa__cpu_recompute_block(rt, layer, page);
    } else {
        hisa__dequant_token(rt, p, off, deq);
        for (int d = 0; d < HISA_D; d++) sum[d] += deq[d];
        refresh_mean(rt, si);
    }
    if (payload) {
        int64_t pb = rt->g.payload_bytes;
        memcpy(rt->r.payload + ((int64_t)layer * rt->g.n_pages * B + (int64_t)page * B + off) * pb,
               payload, (size_t)pb);
    }
    return HISA_OK;
}

void hisa__cpu_recompute_block(hisa_runtime *rt, int32_t layer, int32_t page) {
    int64_t si = hisa__summary_index(rt, layer, page);
    float *sum = rt->r.block_sums + si * HISA_D;
    const uint32_t *mask = rt->r.block_masks + si * rt->g.mask_words;
    const uint8_t *p = hisa__page(rt, layer, page);
    float deq[HISA_D];
    memset(sum, 0, HISA_D * sizeof(float));
    for (int32_t off = 0; off < rt->g.block_size; off++) {
        if (!(mask[off / 32] & (1u << (off % 32)))) continue;
        hisa__dequant_token(rt, p, off, deq);
        for (int d = 0; d < HISA_D; d++) sum[d] += deq[d];
    }
    refresh_mean(rt, si);
}

/* --- scores ---------------------------------------------------------------------------------- */

static float dot128(const float *a, const float *b) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int d = 0; d < HISA_D; d += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[d + j] * b[d + j];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/* sum_h w[h] * ReLU(q[h] . key); q already rounded to bf16. */
static float index_score(const float *q, const float *w, int32_t H, const float *key) {
    float total = 0.0f;
    for (int32_t h = 0; h < H; h++) {
        float dot = dot128(q + (int64_t)h * HISA_D, key);
        total += w[h] * (dot > 0.0f ? dot : 0.0f);
    }
    return total;
}

static void round_query(hisa_runtime *rt, const float *q) {
    int64_t n = rt->g.n_heads * HISA_D;
    for (int64_t i = 0; i < n; i++) rt->r.cpu_q[i] = hisa__bf16_to_f32(hisa__bf16_from_f32(q[i]));
}

static float token_score(hisa_runtime *rt, int32_t layer, int32_t seq, int32_t s, const float *w) {
    int32_t B = (int32_t)rt->g.block_size;
    int32_t page = rt->r.page_table[(int64_t)seq * rt->g.pages_per_seq + s / B];
    float key[HISA_D];
    hisa__dequant_token(rt, hisa__page(rt, layer, page), s % B, key);
    return index_score(rt->r.cpu_q, w, (int32_t)rt->g.n_heads, key);
}

static float block_score(hisa_runtime *rt, int32_t layer, int32_t seq, int32_t b, const float *w) {
    int32_t page = rt->r.page_table[(int64_t)seq * rt->g.pages_per_seq + b];
    const uint16_t *mean = rt->r.block_means + hisa__summary_index(rt, layer, page) * HISA_D;
    float kbar[HISA_D];
    for (int d = 0; d < HISA_D; d++) kbar[d] = hisa__bf16_to_f32(mean[d]);
    return index_score(rt->r.cpu_q, w, (int32_t)rt->g.n_heads, kbar);
}

int hisa__cpu_scores(hisa_runtime *rt, int32_t layer, int32_t seq, int32_t t, const float *q,
                     const float *w, float *I, float *J) {
    assert(rt && !rt->is_cuda && hisa__seq_valid(rt, seq) && t < rt->r.seq_len[seq]);
    int32_t B = (int32_t)rt->g.block_size;
    round_query(rt, q);
    for (int32_t s = 0; s <= t; s++) I[s] = token_score(rt, layer, seq, s, w);
    for (int32_t b = 0; b <= t / B; b++) J[b] = block_score(rt, layer, seq, b, w);
    return HISA_OK;
}

/* --- top-k ----------------------------------------------------------------------------------- */

/* Order-preserving image of a float: larger score, larger key. NaN is lowest, -0 equals +0. */
static uint32_t order_key(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0;
    if (u == 0x80000000u) u = 0;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

int32_t hisa__topk_ref(const float *scores, const int32_t *ids, int32_t n, int32_t k, int32_t *out) {
    assert(n >= 0 && k >= 0);
    if (k == 0) return 0; /* m = 2: no middle block is ranked */
    if (n <= k) {
        memcpy(out, ids, (size_t)n * sizeof(int32_t));
        return n;
    }
    /* Radix select, 8 bits at a time from the top: find the key T of the k-th best and how
     * many of the keys equal to T are taken (the lowest ids among them). */
    uint32_t prefix = 0, prefix_mask = 0;
    int32_t remaining = k;
    for (int shift = 24; shift >= 0; shift -= 8) {
        int32_t hist[256];
        memset(hist, 0, sizeof hist);
        for (int32_t i = 0; i < n; i++) {
            uint32_t key = order_key(scores[i]);
            if ((key & prefix_mask) == prefix) hist[(key >> shift) & 255]++;
        }
        int digit = 255;
        while (hist[digit] < remaining) remaining -= hist[digit--];
        assert(digit >= 0);
        prefix |= (uint32_t)digit << shift;
        prefix_mask |= 255u << shift;
    }
    int32_t n_out = 0, eq_taken = 0;
    for (int32_t i = 0; i < n; i++) {
        uint32_t key = order_key(scores[i]);
        if (key > prefix || (key == prefix && eq_taken++ < remaining)) out[n_out++] = ids[i];
    }
    assert(n_out == k);
    return n_out;
}

/* --- selection ------------------------------------------------------------------------------- */

int hisa__cpu_select_one(hisa_runtime *rt, int32_t layer, hisa_mode mode, int32_t seq, int32_t t,
                         const float *q, const float *w, int32_t out_slots, int32_t *out) {
    int32_t B = (int32_t)rt->g.block_size, k = (int32_t)rt->g.topk, m = (int32_t)rt->g.top_blocks;
    int32_t n = t + 1, nb = hisa__blocks_of(n, B), last = nb - 1;
    const int32_t *pt = rt->r.page_table + (int64_t)seq * rt->g.pages_per_seq;
    assert(t >= 0 && t < rt->r.seq_len[seq]);
    float *scores = rt->r.cpu_scores;
    int32_t *ids = rt->r.cpu_ids, n_sel;
    if (n <= k) { /* SPEC 1: everything */
        for (int32_t s = 0; s < n; s++) out[s] = s;
        n_sel = n;
    } else if (mode == HISA_MODE_FLAT || nb <= m) { /* SPEC 2, 3 */
        round_query(rt, q);
        for (int32_t s = 0; s < n; s++) {
            scores[s] = token_score(rt, layer, seq, s, w);
            ids[s] = s;
        }
        n_sel = hisa__topk_ref(scores, ids, n, k, out);
    } else { /* SPEC 4: blocks 0 and last forced, the best m-2 of 1..last-1 */
        round_query(rt, q);
        int32_t *kept = rt->r.cpu_blocks;
        for (int32_t b = 1; b < last; b++) {
            scores[b - 1] = block_score(rt, layer, seq, b, w);
            ids[b - 1] = b;
        }
        int32_t n_mid = hisa__topk_ref(scores, ids, last - 1, m - 2, kept + 1);
        kept[0] = 0;
        kept[n_mid + 1] = last;
        int32_t n_cand = 0;
        for (int32_t i = 0; i < n_mid + 2; i++) {
            int32_t end = kept[i] * B + B < n ? kept[i] * B + B : n;
            for (int32_t s = kept[i] * B; s < end; s++) {
                scores[n_cand] = token_score(rt, layer, seq, s, w);
                ids[n_cand++] = s;
            }
        }
        assert(n_cand >= k); /* (m - 1) * B >= k */
        n_sel = hisa__topk_ref(scores, ids, n_cand, k, out);
    }
    for (int32_t i = n_sel; i < k; i++) out[i] = -1;
    if (out_slots)
        for (int32_t i = 0; i < n_sel; i++) out[i] = pt[out[i] / B] * B + out[i] % B;
    return HISA_OK;
}
