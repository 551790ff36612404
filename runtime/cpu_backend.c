/* cpu_backend.c: the reference backend. Plain C that computes exactly what the SPEC says; every
 * CUDA kernel is tested against it (cache writes against kvcache/host.c, which this backend uses
 * for its cache). It is also a usable backend: a 128K-token flat selection takes well under a
 * second (the dot products are written with 8 independent accumulators so the compiler can
 * vectorize them without reassociating anything).
 *
 * Ranking uses an order-preserving uint32 image of the fp32 score (NaN lowest, -0 == +0) and
 * ties go to the lower position. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

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

/* The query's values (SPEC "Queries") into cpu_q: f32 rounded to bf16, bf16 as given, e4m3
 * codes' values. */
static void load_query(const hisa_runtime *rt, const void *q, int32_t q_format) {
    int64_t n = rt->g.n_heads * HISA_D;
    for (int64_t i = 0; i < n; i++) {
        if (q_format == HISA_Q_F32) {
            rt->r.cpu_q[i] = hisa__bf16_to_f32(hisa__bf16_from_f32(((const float *)q)[i]));
        } else if (q_format == HISA_Q_BF16) {
            uint16_t b;
            memcpy(&b, (const uint8_t *)q + 2 * i, 2);
            rt->r.cpu_q[i] = hisa__bf16_to_f32(b);
        } else {
            rt->r.cpu_q[i] = hisa__e4m3_to_f32(((const uint8_t *)q)[i]);
        }
    }
}

static float token_score(const hisa_runtime *rt, int32_t layer, int32_t seq, int32_t s, const float *w) {
    int32_t B = rt->kv.block_size;
    float key[HISA_D];
    hisa__kv_dequant(&rt->kv, hisa__page(rt, layer, hisa__kv_pages(&rt->kv, seq)[s / B]), s % B, key);
    return index_score(rt->r.cpu_q, w, (int32_t)rt->g.n_heads, key);
}

static float block_score(const hisa_runtime *rt, int32_t layer, int32_t seq, int32_t b, const float *w) {
    int32_t page = hisa__kv_pages(&rt->kv, seq)[b];
    const uint16_t *mean = rt->r.block_means + hisa__summary_index(rt, layer, page) * HISA_D;
    float kbar[HISA_D];
    for (int d = 0; d < HISA_D; d++) kbar[d] = hisa__bf16_to_f32(mean[d]);
    return index_score(rt->r.cpu_q, w, (int32_t)rt->g.n_heads, kbar);
}

int hisa__cpu_scores(hisa_runtime *rt, int32_t layer, int32_t seq, int32_t t, const void *q, int32_t q_format,
                     const float *w, float *I, float *J) {
    assert(rt && !hisa__is_cuda(rt) && hisa__seq_valid(rt, seq) && t < rt->kv.seq_len[seq]);
    int32_t B = (int32_t)rt->g.block_size;
    load_query(rt, q, q_format);
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

/* SPEC 4: blocks 0 and last forced, the best m-2 of 1..last-1; the kept blocks' tokens scored
 * into scores/ids (position order). Returns the candidate count. */
static int32_t hisa_candidates(const hisa_runtime *rt, int32_t layer, int32_t seq, int32_t n, const float *w) {
    int32_t B = rt->kv.block_size, m = (int32_t)rt->g.top_blocks, last = hisa__blocks_of(n, B) - 1;
    float *scores = rt->r.cpu_scores;
    int32_t *ids = rt->r.cpu_ids, *kept = rt->r.cpu_blocks;
    for (int32_t b = 1; b < last; b++) {
        scores[b - 1] = block_score(rt, layer, seq, b, w);
        ids[b - 1] = b;
    }
    int32_t n_mid = hisa__topk_ref(scores, ids, last - 1, m - 2, kept + 1);
    assert(n_mid == m - 2); /* nb > m */
    (void)n_mid;
    hisa__keep_forced(kept, m, last);
    int32_t n_cand = 0;
    for (int32_t i = 0; i < m; i++) {
        int32_t end = kept[i] * B + B < n ? kept[i] * B + B : n;
        for (int32_t s = kept[i] * B; s < end; s++) {
            scores[n_cand] = token_score(rt, layer, seq, s, w);
            ids[n_cand++] = s;
        }
    }
    assert(n_cand >= rt->g.topk); /* (m - 1) * B >= k */
    return n_cand;
}

int hisa__cpu_select_one(const hisa_runtime *rt, int32_t layer, hisa_mode mode, int32_t seq, int32_t t,
                         const void *q, int32_t q_format, const float *w, int out_slots, int32_t *out) {
    int32_t B = rt->kv.block_size, k = (int32_t)rt->g.topk, m = (int32_t)rt->g.top_blocks;
    int32_t n = t + 1, nb = hisa__blocks_of(n, B), n_sel;
    assert(t >= 0 && t < rt->kv.seq_len[seq]);
    if (n <= k) { /* SPEC 1: everything */
        for (int32_t s = 0; s < n; s++) out[s] = s;
        n_sel = n;
    } else if (mode == HISA_MODE_FLAT || nb <= m) { /* SPEC 2, 3 */
        load_query(rt, q, q_format);
        for (int32_t s = 0; s < n; s++) {
            rt->r.cpu_scores[s] = token_score(rt, layer, seq, s, w);
            rt->r.cpu_ids[s] = s;
        }
        n_sel = hisa__topk_ref(rt->r.cpu_scores, rt->r.cpu_ids, n, k, out);
    } else { /* SPEC 4 */
        load_query(rt, q, q_format);
        int32_t n_cand = hisa_candidates(rt, layer, seq, n, w);
        n_sel = hisa__topk_ref(rt->r.cpu_scores, rt->r.cpu_ids, n_cand, k, out);
    }
    for (int32_t i = n_sel; i < k; i++) out[i] = -1;
    const int32_t *pt = hisa__kv_pages(&rt->kv, seq);
    if (out_slots)
        for (int32_t i = 0; i < n_sel; i++) out[i] = (int32_t)hisa__slot(pt[out[i] / B], B, out[i] % B);
    return HISA_OK;
}

/* --- the backend table ---------------------------------------------------------------------- */

static void *cpu_reserve(uint64_t bytes, int32_t space) {
    (void)space;
    return aligned_alloc(HISA_ALIGN, bytes);
}
static void cpu_release(void *p, int32_t space) {
    (void)space;
    free(p);
}
static int cpu_zero(void *p, uint64_t bytes, int32_t space) {
    (void)space;
    memset(p, 0, bytes);
    return 0;
}
static const hisa__arena_mem cpu_mem = {cpu_reserve, cpu_release, cpu_zero};

static int cpu_probe(int32_t device, hisa_k_device *dev, char *detail, size_t detail_bytes) {
    (void)device, (void)dev, (void)detail, (void)detail_bytes;
    assert(device == HISA_DEVICE_CPU);
    return HISA_OK;
}

static int cpu_start(hisa_runtime *rt) {
    rt->kv.be = &rt->kv; /* kvcache/host.c's operations work on the cache view itself */
    memset(rt->r.sum_pages, 0xff, (size_t)(rt->g.n_layers * rt->g.max_seqs) * sizeof(int32_t)); /* none */
#ifndef NDEBUG
    memset(rt->r.keys, 0xff, (size_t)(rt->g.n_layers * rt->g.n_pages * rt->g.page_bytes));
#endif
    return HISA_OK;
}

static int cpu_sync(hisa_runtime *rt) {
    (void)rt;
    return HISA_OK;
}

static int cpu_write(hisa_runtime *rt, const hisa_write *req, int32_t range_seq, int32_t range_pos0) {
    int32_t pb = rt->kv.payload_bytes;
    for (int32_t i = 0; i < req->n_tokens; i++) {
        int32_t seq = range_seq >= 0 ? range_seq : req->seq_ids[i];
        int32_t pos = range_seq >= 0 ? range_pos0 + i
                                     : (req->positions ? req->positions[i] : rt->kv.seq_len[seq] - 1);
        const float *key = req->keys ? req->keys + (int64_t)i * HISA_D : NULL;
        float widened[HISA_D]; /* bf16 keys: their exact fp32 values */
        if (req->keys_bf16) {
            for (int d = 0; d < HISA_D; d++) widened[d] = hisa__bf16_to_f32(req->keys_bf16[(int64_t)i * HISA_D + d]);
            key = widened;
        }
        hisa__kv_host_write(&rt->kv, req->layer, seq, pos, key, req->codes ? req->codes + (int64_t)i * HISA_D : NULL,
                            req->codes ? req->scales + i : NULL,
                            req->payload ? (const uint8_t *)req->payload + (int64_t)i * pb : NULL);
    }
    return HISA_OK;
}

/* Row r of a decode: query r % next_n of seq_ids[r / next_n], at t = len - next_n + j. */
static int cpu_decode(hisa_runtime *rt, const hisa_decode *req) {
    int64_t H = rt->g.n_heads, k = rt->g.topk, qb = hisa__q_bytes(H, req->q_format);
    int32_t next_n = req->next_n > 1 ? req->next_n : 1;
    for (int32_t r = 0; r < req->n_seqs * next_n; r++) {
        int32_t seq = req->seq_ids[r / next_n], t = rt->kv.seq_len[seq] - next_n + r % next_n;
        (void)hisa__cpu_select_one(rt, req->layer, req->mode, seq, t, (const uint8_t *)req->q + r * qb, req->q_format,
                                   req->w + r * H, (req->flags & HISA_SLOTS) != 0, req->out + r * k);
    }
    return HISA_OK;
}

static int cpu_prefill(hisa_runtime *rt, const hisa_prefill *req, uint32_t dev_flags) {
    int64_t H = rt->g.n_heads, k = rt->g.topk, qb = hisa__q_bytes(H, req->q_format), row = 0;
    assert(dev_flags == 0);
    (void)dev_flags;
    for (int32_t c = 0; c < hisa__prefill_chunks(req); c++) {
        int32_t seq, t0, n_q;
        hisa__prefill_chunk(req, c, &seq, &t0, &n_q);
        for (int32_t i = 0; i < n_q; i++, row++)
            (void)hisa__cpu_select_one(rt, req->layer, req->mode, seq, t0 + i, (const uint8_t *)req->q + row * qb,
                                       req->q_format, req->w + row * H, (req->flags & HISA_SLOTS) != 0,
                                       req->out + row * k);
    }
    return HISA_OK;
}

const hisa__backend hisa__cpu_backend = {
    .name = "cpu", .mem = &cpu_mem, .kv_ops = &hisa__kv_host_ops, .probe = cpu_probe, .start = cpu_start,
    .sync = cpu_sync, .write = cpu_write, .decode = cpu_decode, .prefill = cpu_prefill};
