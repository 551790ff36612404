/* cache.cu: the cache-state kernels: sequence-table mirror updates, rollback, and key writes.
 *
 * Why: the device keeps a mirror of the host's page table and lengths (so a captured graph reads
 * the state of its own step) plus the paged keys and block summaries (kvcache/layout.h). Each
 * kernel here is the twin of a piece of kvcache/host.c and must leave exactly the bytes it
 * leaves: codes and scales bit-identical, sums added in the same order with the same fp32
 * operations (explicit _rn intrinsics, so nothing is fused into an FMA), means
 * bf16_rne(sum / count).
 *
 * The summary rule (layout.h): a block's sum is its written tokens in offset order from 0; each
 * sequence keeps one running sum per layer, of the page it last wrote. Appending above every
 * written offset of that page adds one term; anything else recomputes from the stored keys. Both
 * give the same bits, so a kernel may always recompute; it may add only under that condition.
 *
 * Invariants: one CTA owns one (page, layer) summary and one running-sum slot at a time (batch
 * writes are to distinct sequences; a range write's CTAs are one per page and only the last
 * page's CTA touches the slot); a thread owns one of the 128 dimensions; every kernel reads what
 * it replaces before a barrier and writes after it. */
#include <assert.h>

#include "common.cuh"

namespace {

constexpr int kThreads = 128; /* one thread per key dimension */

__device__ __forceinline__ int64_t page_index(const hisa_k_cache &c, int layer, int page) {
    return hisa__layer_index(layer, c.n_pages, page);
}
__device__ __forceinline__ uint8_t *page_ptr(const hisa_k_cache &c, int layer, int page) {
    return c.keys + page_index(c, layer, page) * c.page_bytes;
}

/* Dequantized dimension d of token `off` of a page (either format). */
__device__ __forceinline__ float dequant(const hisa_k_cache &c, const uint8_t *page, int off, int d) {
    if (c.key_format == HISA__FMT_FP8) {
        float s = *reinterpret_cast<const float *>(page + hisa__scale_offset(c.block_size, off));
        return __fmul_rn(hisa__k_e4m3_to_f32(page[hisa__code_offset(off) + d]), s);
    }
    return hisa__k_bf16_to_f32(reinterpret_cast<const uint16_t *>(page + hisa__bf16_offset(off))[d]);
}

/* Dimension d of the block's sum by its definition: written offsets in order, from 0. */
__device__ float recompute(const hisa_k_cache &c, const uint8_t *page, const uint32_t *mask, int d) {
    float sum = 0.0f;
    for (int o = 0; o < c.block_size; o++)
        if (hisa__mask_bit(mask, o)) sum = __fadd_rn(sum, dequant(c, page, o, d));
    return sum;
}

/* Every written offset below off? (kvcache/host.c appends) */
__device__ __forceinline__ bool appends(const uint32_t *mask, int mask_words, int off) {
    for (int w = mask_words - 1; w >= 0; w--)
        if (mask[w]) return w * 32 + 31 - __clz(mask[w]) < off;
    return true;
}

__device__ __forceinline__ int popcount(const uint32_t *mask, int mask_words) {
    int n = 0;
    for (int w = 0; w < mask_words; w++) n += __popc(mask[w]);
    return n;
}

__device__ __forceinline__ void copy_payload(const hisa_k_cache &c, int layer, int page, int off,
                                             const uint8_t *src) {
    int64_t pb = c.payload_bytes;
    uint8_t *dst = c.payload + hisa__payload_offset(layer, c.n_pages, c.block_size,
                                                    hisa__slot(page, c.block_size, off), c.payload_bytes);
    for (int64_t b = threadIdx.x; b < pb; b += blockDim.x) dst[b] = src[b];
}

__device__ __forceinline__ uint16_t mean_of(float sum, int count) {
    return count ? hisa__k_bf16_from_f32(__fdiv_rn(sum, (float)count)) : (uint16_t)0;
}

/* amax over the 128 values held one per thread of a 128-thread block. */
__device__ float block_amax(float v, float *red /* [4] */) {
    float a = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = a;
    __syncthreads();
    a = fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
    __syncthreads();
    return a;
}

__global__ void __launch_bounds__(kThreads) seq_set_kernel(const hisa_k_seq_set_params p) {
    const hisa_k_cache &c = p.cache;
    int x = blockIdx.x, layer = blockIdx.y, d = threadIdx.x;
    if (x == 0 && layer == 0 && d == 0) c.seq_len[p.seq] = p.len;
    if (x == 0 && d == 0 && p.len == 0) c.sum_pages[hisa__layer_index(layer, c.max_seqs, p.seq)] = -1;
    if (x >= p.n_pages_new) return;
    int page = p.pages[x];
    if (layer == 0 && d == 0) c.page_table[(int64_t)p.seq * c.pages_per_seq + p.first_index + x] = page;
    if (!p.fresh) return; /* a shared page keeps its summary */
    int64_t pi = page_index(c, layer, page);
    c.means[pi * HISA_D + d] = 0;
    int mask_words = hisa__mask_words(c.block_size);
    if (d < mask_words) c.masks[pi * mask_words + d] = 0u;
}

/* In one layer (the calling CTA): keep offsets < keep of `page`'s mask (new_mask: the mask to
 * start from), recompute the summary from the stored keys, and make it seq's running sum. */
__device__ void keep_and_resum(const hisa_k_cache &c, int layer, int seq, int page, int keep, const uint32_t *new_mask,
                               uint32_t *mask_s /* shared [B / 32] */) {
    int d = threadIdx.x, mask_words = hisa__mask_words(c.block_size);
    int64_t slot = hisa__layer_index(layer, c.max_seqs, seq);
    uint32_t *mask = c.masks + page_index(c, layer, page) * mask_words;
    if (d < mask_words) {
        int lo = d * 32;
        uint32_t keep_bits = keep <= lo ? 0u : (keep - lo >= 32 ? 0xffffffffu : ((1u << (keep - lo)) - 1u));
        mask_s[d] = new_mask[d] & keep_bits;
    }
    __syncthreads(); /* every thread has read new_mask (it may be mask itself) */
    if (d < mask_words) mask[d] = mask_s[d];
    float sum = recompute(c, page_ptr(c, layer, page), mask_s, d);
    c.sums[slot * HISA_D + d] = sum;
    c.means[page_index(c, layer, page) * HISA_D + d] = mean_of(sum, popcount(mask_s, mask_words));
    if (d == 0) c.sum_pages[slot] = page;
}

/* One CTA per layer: clear offsets >= len % B of `page`, recompute its sum into seq's slot. */
__global__ void __launch_bounds__(kThreads) truncate_kernel(const hisa_k_truncate_params p) {
    __shared__ uint32_t mask_s[HISA_BLOCK_MAX / 32];
    const hisa_k_cache &c = p.cache;
    int layer = blockIdx.x, d = threadIdx.x;
    if (layer == 0 && d == 0) c.seq_len[p.seq] = p.len;
    if (p.page < 0) {
        if (d == 0) c.sum_pages[hisa__layer_index(layer, c.max_seqs, p.seq)] = -1;
        return;
    }
    const uint32_t *mask = c.masks + page_index(c, layer, p.page) * hisa__mask_words(c.block_size);
    keep_and_resum(c, layer, p.seq, p.page, p.len % c.block_size, mask, mask_s);
}

/* One CTA per layer: dst becomes src's first `keep` offsets (keys, payload, mask), summarized. */
__global__ void __launch_bounds__(kThreads) copy_page_kernel(const hisa_k_copy_page_params p) {
    __shared__ uint32_t mask_s[HISA_BLOCK_MAX / 32];
    const hisa_k_cache &c = p.cache;
    int layer = blockIdx.x, B = c.block_size;
    const uint8_t *src = page_ptr(c, layer, p.src);
    uint8_t *dst = page_ptr(c, layer, p.dst);
    for (int64_t i = threadIdx.x; i < c.page_bytes; i += kThreads) dst[i] = src[i];
    if (c.payload && c.payload_bytes > 0) {
        int64_t row = (int64_t)B * c.payload_bytes;
        const uint8_t *ps = c.payload + hisa__payload_offset(layer, c.n_pages, B, hisa__slot(p.src, B, 0), c.payload_bytes);
        uint8_t *pd = c.payload + hisa__payload_offset(layer, c.n_pages, B, hisa__slot(p.dst, B, 0), c.payload_bytes);
        for (int64_t i = threadIdx.x; i < row; i += kThreads) pd[i] = ps[i];
    }
    __syncthreads(); /* the copied keys are stored before keep_and_resum reads them */
    const uint32_t *mask = c.masks + page_index(c, layer, p.src) * hisa__mask_words(B);
    keep_and_resum(c, layer, p.seq, p.dst, p.keep, mask, mask_s);
}

/* Store dimension d of one token's key at `off` (fp8 with scale s, or bf16) and return its
 * dequantized value. fp8: thread 0 stores the scale. */
__device__ __forceinline__ float store_dim(const hisa_k_cache &c, uint8_t *page, int off, int d, float x,
                                           const uint8_t *code_in, float s) {
    if (c.key_format == HISA__FMT_FP8) {
        uint8_t code = code_in ? *code_in : hisa__k_e4m3_from_f32(__fdiv_rn(x, s));
        page[hisa__code_offset(off) + d] = code;
        if (d == 0) *reinterpret_cast<float *>(page + hisa__scale_offset(c.block_size, off)) = s;
        return __fmul_rn(hisa__k_e4m3_to_f32(code), s);
    }
    uint16_t b = hisa__k_bf16_from_f32(x);
    reinterpret_cast<uint16_t *>(page + hisa__bf16_offset(off))[d] = b;
    return hisa__k_bf16_to_f32(b);
}

/* Dimension d of token i's key as given: fp32 or bf16 (fp8 codes arrive as codes). */
__device__ __forceinline__ float key_in(const hisa_k_write_params &p, int i, int d) {
    if (p.keys) return p.keys[(int64_t)i * HISA_D + d];
    return p.keys_bf16 ? hisa__k_bf16_to_f32(p.keys_bf16[(int64_t)i * HISA_D + d]) : 0.0f;
}

/* SPEC fp8 scale of a key from its amax: amax / 448, or 1 where that is 0 (as quant.c). */
__device__ __forceinline__ float fp8_scale(float amax) {
    float s = __fdiv_rn(amax, HISA_FP8_MAX);
    return s > 0.0f ? s : 1.0f;
}

/* Batch write: one CTA per token, each to a distinct sequence (so a distinct page and slot). */
__global__ void __launch_bounds__(kThreads) write_batch_kernel(const hisa_k_write_params p) {
    __shared__ float red[4];
    __shared__ uint32_t mask_s[HISA_BLOCK_MAX / 32];
    const hisa_k_cache &c = p.cache;
    int i = blockIdx.x, d = threadIdx.x, B = c.block_size, mask_words = hisa__mask_words(B);
    int seq = p.seq_ids[i];
    int pos = p.positions[i] >= 0 ? p.positions[i] : c.seq_len[seq] - 1;
    if (pos < 0) return; /* validated on the host; a stale mirror must not write out of bounds */
    int page_id = c.page_table[(int64_t)seq * c.pages_per_seq + pos / B], off = pos % B;
    uint8_t *page = page_ptr(c, p.layer, page_id);
    int64_t pi = page_index(c, p.layer, page_id), slot = hisa__layer_index(p.layer, c.max_seqs, seq);
    uint32_t *mask = c.masks + pi * mask_words;
    if (d < mask_words) mask_s[d] = mask[d];
    __syncthreads();
    const bool incremental = c.sum_pages[slot] == page_id && appends(mask_s, mask_words, off); /* uniform */
    float x = key_in(p, i, d), s = 1.0f;
    if (c.key_format == HISA__FMT_FP8)
        s = p.codes ? p.scales[i] : fp8_scale(block_amax(x, red)); /* block_amax has barriers: all reach it */
    float deq_new = store_dim(c, page, off, d, x, p.codes ? p.codes + (int64_t)i * HISA_D + d : nullptr, s);
    __syncthreads(); /* every thread has read mask_s and sum_pages; the key is stored */
    if (d == 0) mask_s[off >> 5] |= 1u << (off & 31);
    __syncthreads();
    float sum = incremental ? __fadd_rn(c.sums[slot * HISA_D + d], deq_new) : recompute(c, page, mask_s, d);
    c.sums[slot * HISA_D + d] = sum;
    c.means[pi * HISA_D + d] = mean_of(sum, popcount(mask_s, mask_words));
    if (d < mask_words) mask[d] = mask_s[d];
    if (d == 0) c.sum_pages[slot] = page_id;
    if (p.payload && c.payload_bytes > 0) copy_payload(c, p.layer, page_id, off, p.payload + (int64_t)i * c.payload_bytes);
}

/* Range write: one CTA per page touched, its tokens in position order. Only the last page's CTA
 * keeps the running sum (the host's last write), so only it reads or writes the slot; the others
 * recompute, which gives the same bits. */
__global__ void __launch_bounds__(kThreads) write_range_kernel(const hisa_k_write_params p) {
    __shared__ float new_scale[HISA_BLOCK_MAX];
    __shared__ uint32_t mask_s[HISA_BLOCK_MAX / 32];
    const hisa_k_cache &c = p.cache;
    int B = c.block_size, mask_words = hisa__mask_words(B), d = threadIdx.x, lane = d & 31, warp = d >> 5;
    int blk = p.range_pos0 / B + blockIdx.x;
    int lo = max(p.range_pos0, blk * B), hi = min(p.range_pos0 + p.n_tokens, blk * B + B);
    if (lo >= hi) return;
    int page_id = c.page_table[(int64_t)p.range_seq * c.pages_per_seq + blk];
    uint8_t *page = page_ptr(c, p.layer, page_id);
    int64_t pi = page_index(c, p.layer, page_id), slot = hisa__layer_index(p.layer, c.max_seqs, p.range_seq);
    uint32_t *mask = c.masks + pi * mask_words;
    const bool fp8 = c.key_format == HISA__FMT_FP8, last_page = blockIdx.x == gridDim.x - 1;

    /* phase 1: the old mask; new scales (a warp per token) */
    if (d < mask_words) mask_s[d] = mask[d];
    for (int pos = lo + warp; fp8 && pos < hi; pos += kThreads / 32) {
        int i = pos - p.range_pos0;
        float sc;
        if (p.codes) {
            sc = p.scales[i];
        } else {
            float a = 0.0f;
            for (int e = lane; e < HISA_D; e += 32) a = fmaxf(a, fabsf(key_in(p, i, e)));
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
            sc = fp8_scale(a);
        }
        if (lane == 0) new_scale[pos - blk * B] = sc;
    }
    __syncthreads();
    /* phase 2: thread d stores its dimension of each token, adding when the rule allows */
    const bool incremental = last_page && c.sum_pages[slot] == page_id && appends(mask_s, mask_words, lo - blk * B);
    float sum = incremental ? c.sums[slot * HISA_D + d] : 0.0f;
    for (int pos = lo; pos < hi; pos++) {
        int off = pos - blk * B, i = pos - p.range_pos0;
        float x = key_in(p, i, d);
        float deq = store_dim(c, page, off, d, x, p.codes ? p.codes + (int64_t)i * HISA_D + d : nullptr,
                              fp8 ? new_scale[off] : 1.0f);
        if (incremental) sum = __fadd_rn(sum, deq);
    }
    __syncthreads(); /* every thread has read mask_s; codes and scales are stored */
    if (d == 0)
        for (int off = lo - blk * B; off < hi - blk * B; off++) mask_s[off >> 5] |= 1u << (off & 31);
    __syncthreads();
    if (!incremental) sum = recompute(c, page, mask_s, d);
    c.means[pi * HISA_D + d] = mean_of(sum, popcount(mask_s, mask_words));
    if (d < mask_words) mask[d] = mask_s[d];
    if (last_page) {
        c.sums[slot * HISA_D + d] = sum;
        if (d == 0) c.sum_pages[slot] = page_id;
    }
    if (p.payload && c.payload_bytes > 0)
        for (int pos = lo; pos < hi; pos++)
            copy_payload(c, p.layer, page_id, pos - blk * B, p.payload + (int64_t)(pos - p.range_pos0) * c.payload_bytes);
}

} // namespace

extern "C" int hisa_k_seq_set(void *stream, const hisa_k_seq_set_params *p) {
    if (!p || !hisa__k_cache_ok(p->cache)) return HISA_K_EINVAL;
    if (p->seq < 0 || p->seq >= p->cache.max_seqs || p->len < 0) return HISA_K_EINVAL;
    if (p->n_pages_new < 0 || p->n_pages_new > HISA_K_SEQ_SET_PAGES) return HISA_K_ELIMIT;
    if (p->first_index < 0 || p->first_index + p->n_pages_new > p->cache.pages_per_seq) return HISA_K_EINVAL;
    dim3 grid(p->n_pages_new > 0 ? p->n_pages_new : 1, p->cache.n_layers); /* every layer's sum slot */
    seq_set_kernel<<<grid, kThreads, 0, (cudaStream_t)stream>>>(*p);
    return hisa__k_launch_status();
}

extern "C" int hisa_k_truncate(void *stream, const hisa_k_truncate_params *p) {
    if (!p || !hisa__k_cache_ok(p->cache)) return HISA_K_EINVAL;
    if (p->seq < 0 || p->seq >= p->cache.max_seqs || p->len < 0) return HISA_K_EINVAL;
    if (p->page >= p->cache.n_pages || (p->page >= 0) != (p->len % p->cache.block_size != 0)) return HISA_K_EINVAL;
    truncate_kernel<<<p->cache.n_layers, kThreads, 0, (cudaStream_t)stream>>>(*p);
    return hisa__k_launch_status();
}

extern "C" int hisa_k_copy_page(void *stream, const hisa_k_copy_page_params *p) {
    if (!p || !hisa__k_cache_ok(p->cache)) return HISA_K_EINVAL;
    if (p->seq < 0 || p->seq >= p->cache.max_seqs || p->src < 0 || p->src >= p->cache.n_pages || p->dst < 0 ||
        p->dst >= p->cache.n_pages || p->src == p->dst || p->keep < 1 || p->keep > p->cache.block_size)
        return HISA_K_EINVAL;
    copy_page_kernel<<<p->cache.n_layers, kThreads, 0, (cudaStream_t)stream>>>(*p);
    return hisa__k_launch_status();
}

extern "C" int hisa_k_write(void *stream, const hisa_k_write_params *p) {
    if (!p || !hisa__k_cache_ok(p->cache)) return HISA_K_EINVAL;
    if (p->layer < 0 || p->layer >= p->cache.n_layers || p->n_tokens < 1) return HISA_K_EINVAL;
    if ((p->keys != NULL) + (p->keys_bf16 != NULL) + (p->codes != NULL) != 1) return HISA_K_EINVAL;
    if (p->codes && (!p->scales || p->cache.key_format != HISA__FMT_FP8)) return HISA_K_EINVAL;
    cudaStream_t s = (cudaStream_t)stream;
    if (p->is_range) {
        if (p->n_tokens > HISA_PREFILL_MAX) return HISA_K_ELIMIT;
        if (p->range_seq < 0 || p->range_seq >= p->cache.max_seqs || p->range_pos0 < 0) return HISA_K_EINVAL;
        int B = p->cache.block_size;
        int blocks = (p->range_pos0 + p->n_tokens - 1) / B - p->range_pos0 / B + 1;
        write_range_kernel<<<blocks, kThreads, 0, s>>>(*p);
    } else {
        if (p->n_tokens > HISA_BATCH_MAX) return HISA_K_ELIMIT;
        write_batch_kernel<<<p->n_tokens, kThreads, 0, s>>>(*p);
    }
    return hisa__k_launch_status();
}
