/* cache.cu: the cache-state kernels: sequence-table mirror updates, rollback, and key writes.
 *
 * Why: the device keeps a mirror of the host's page table and lengths (so a captured graph reads
 * the state of its own step) plus the paged keys and per-block summaries. Each kernel here is the
 * twin of a piece of kvcache/kvcache.c + runtime/cpu_backend.c and must leave exactly the bytes
 * the CPU leaves: codes and scales bit-identical, sums added in the same order with the same
 * fp32 operations (explicit _rn intrinsics, so nothing is fused into an FMA), means
 * bf16_rne(sum / count).
 *
 * Invariants: one CTA owns one (page, layer) summary at a time (batch writes are to distinct
 * sequences, range writes are one CTA per page), so no atomics are needed; a thread owns one of
 * the 128 dimensions; every kernel reads what it replaces before a barrier and writes after it. */
#include <assert.h>

#include "common.cuh"

namespace {

constexpr int kThreads = 128; /* one thread per key dimension */

__device__ __forceinline__ int64_t summary_index(const hisa_k_cache &c, int layer, int page) {
    return (int64_t)layer * c.n_pages + page;
}
__device__ __forceinline__ uint8_t *page_ptr(const hisa_k_cache &c, int layer, int page) {
    return c.keys + summary_index(c, layer, page) * c.page_bytes;
}

/* Dequantized dimension d of token `off` of a page (either format). */
__device__ __forceinline__ float dequant(const hisa_k_cache &c, const uint8_t *page, int off, int d) {
    if (c.key_format == HISA_KEY_FP8) {
        float s = reinterpret_cast<const float *>(page + (int64_t)c.block_size * HISA_D)[off];
        return __fmul_rn(hisa__k_e4m3_to_f32(page[(int64_t)off * HISA_D + d]), s);
    }
    const uint16_t *p = reinterpret_cast<const uint16_t *>(page + (int64_t)off * HISA_D * 2);
    return hisa__k_bf16_to_f32(p[d]);
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
    if (x >= p.n_pages_new) return;
    int page = p.pages[x];
    if (layer == 0 && d == 0) c.page_table[(int64_t)p.seq * c.pages_per_seq + p.first_index + x] = page;
    int64_t si = summary_index(c, layer, page);
    c.sums[si * HISA_D + d] = 0.0f;
    c.means[si * HISA_D + d] = 0;
    int mask_words = c.block_size / 32;
    if (d < mask_words) c.masks[si * mask_words + d] = 0u;
}

/* One CTA per layer: clear offsets >= len % B of `page`, re-add the rest in offset order. */
__global__ void __launch_bounds__(kThreads) truncate_kernel(const hisa_k_truncate_params p) {
    const hisa_k_cache &c = p.cache;
    int layer = blockIdx.x, d = threadIdx.x;
    if (layer == 0 && d == 0) c.seq_len[p.seq] = p.len;
    if (p.page < 0) return;
    int B = c.block_size, keep = p.len % B, mask_words = B / 32;
    int64_t si = summary_index(c, layer, p.page);
    uint32_t *mask = c.masks + si * mask_words;
    const uint8_t *page = page_ptr(c, layer, p.page);
    float sum = 0.0f;
    int count = 0;
    for (int off = 0; off < keep; off++) {
        if (!(mask[off >> 5] & (1u << (off & 31)))) continue;
        sum = __fadd_rn(sum, dequant(c, page, off, d));
        count++;
    }
    __syncthreads(); /* every thread has read the mask */
    if (d < mask_words) {
        int lo = d * 32;
        uint32_t keep_bits = keep <= lo ? 0u : (keep - lo >= 32 ? 0xffffffffu : ((1u << (keep - lo)) - 1u));
        mask[d] &= keep_bits;
    }
    c.sums[si * HISA_D + d] = sum;
    c.means[si * HISA_D + d] = mean_of(sum, count);
}

/* Batch write: one CTA per token, each to a distinct sequence (so a distinct page). */
__global__ void __launch_bounds__(kThreads) write_batch_kernel(const hisa_k_write_params p) {
    __shared__ float red[4];
    const hisa_k_cache &c = p.cache;
    int i = blockIdx.x, d = threadIdx.x, B = c.block_size, mask_words = B / 32;
    int seq = p.seq_ids[i];
    int pos = p.positions[i] >= 0 ? p.positions[i] : c.seq_len[seq] - 1;
    if (pos < 0) return; /* validated on the host; a stale mirror must not write out of bounds */
    int page_id = c.page_table[(int64_t)seq * c.pages_per_seq + pos / B], off = pos % B;
    uint8_t *page = page_ptr(c, p.layer, page_id);
    int64_t si = summary_index(c, p.layer, page_id);
    uint32_t *mask = c.masks + si * mask_words;

    /* read everything that is about to be replaced */
    int count = 0;
    for (int wi = 0; wi < mask_words; wi++) count += __popc(mask[wi]);
    bool had = (mask[off >> 5] >> (off & 31)) & 1u; /* uniform over the CTA */
    float x = p.keys ? p.keys[(int64_t)i * HISA_D + d] : 0.0f;
    float deq_new;
    if (c.key_format == HISA_KEY_FP8) {
        uint8_t code;
        float s;
        if (p.codes) {
            code = p.codes[(int64_t)i * HISA_D + d];
            s = p.scales[i];
        } else {
            float amax = block_amax(x, red); /* contains barriers: all threads reach it */
            s = __fdiv_rn(amax, HISA_FP8_MAX);
            if (!(s > 0.0f)) s = 1.0f; /* as quant.c: amax 0 or underflowed */
            code = hisa__k_e4m3_from_f32(__fdiv_rn(x, s));
        }
        page[(int64_t)off * HISA_D + d] = code;
        if (d == 0) reinterpret_cast<float *>(page + (int64_t)B * HISA_D)[off] = s;
        deq_new = __fmul_rn(hisa__k_e4m3_to_f32(code), s);
    } else {
        uint16_t b = hisa__k_bf16_from_f32(x);
        reinterpret_cast<uint16_t *>(page + (int64_t)off * HISA_D * 2)[d] = b;
        deq_new = hisa__k_bf16_to_f32(b);
    }
    float *sum = c.sums + si * HISA_D + d;
    float s0;
    if (had) {
        /* replacing: recompute from the stored keys in offset order, as cpu_backend.c does
         * (exact, and a replaced NaN or inf key leaves no trace) */
        __syncthreads(); /* the new code and scale are stored before anyone re-reads the page */
        s0 = 0.0f;
        for (int o = 0; o < B; o++)
            if ((mask[o >> 5] >> (o & 31)) & 1u) s0 = __fadd_rn(s0, dequant(c, page, o, d));
    } else {
        s0 = __fadd_rn(*sum, deq_new);
        count++;
    }
    *sum = s0;
    c.means[si * HISA_D + d] = mean_of(s0, count);
    __syncthreads(); /* every thread has read the mask */
    if (d == 0) mask[off >> 5] |= 1u << (off & 31);
    if (p.payload && c.payload_bytes > 0) {
        int64_t pb = c.payload_bytes;
        uint8_t *dst = c.payload + ((int64_t)p.layer * c.n_pages * B + (int64_t)page_id * B + off) * pb;
        const uint8_t *src = p.payload + (int64_t)i * pb;
        for (int64_t b = d; b < pb; b += kThreads) dst[b] = src[b];
    }
}

/* Range write: one CTA per page touched; its tokens go in position order, as on the CPU. */
__global__ void __launch_bounds__(kThreads) write_range_kernel(const hisa_k_write_params p) {
    __shared__ float new_scale[HISA_BLOCK_MAX];
    __shared__ uint32_t mask_s[HISA_BLOCK_MAX / 32];
    const hisa_k_cache &c = p.cache;
    int B = c.block_size, mask_words = B / 32, d = threadIdx.x, lane = d & 31, warp = d >> 5;
    int first_block = p.range_pos0 / B;
    int blk = first_block + blockIdx.x;
    int lo = max(p.range_pos0, blk * B), hi = min(p.range_pos0 + p.n_tokens, blk * B + B);
    if (lo >= hi) return;
    int page_id = c.page_table[(int64_t)p.range_seq * c.pages_per_seq + blk];
    uint8_t *page = page_ptr(c, p.layer, page_id);
    int64_t si = summary_index(c, p.layer, page_id);
    uint32_t *mask = c.masks + si * mask_words;
    bool fp8 = c.key_format == HISA_KEY_FP8;
    float *scales = reinterpret_cast<float *>(page + (int64_t)B * HISA_D);

    /* phase 1: the old mask; new scales (a warp per token) */
    if (d < mask_words) mask_s[d] = mask[d];
    if (fp8) {
        for (int pos = lo + warp; pos < hi; pos += kThreads / 32) {
            int off = pos - blk * B, i = pos - p.range_pos0;
            float s;
            if (p.codes) {
                s = p.scales[i];
            } else {
                const float *x = p.keys + (int64_t)i * HISA_D;
                float a = 0.0f;
                for (int e = lane; e < HISA_D; e += 32) a = fmaxf(a, fabsf(x[e]));
#pragma unroll
                for (int o = 16; o > 0; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, o));
                s = __fdiv_rn(a, HISA_FP8_MAX);
                if (!(s > 0.0f)) s = 1.0f; /* as quant.c */
            }
            if (lane == 0) new_scale[off] = s;
        }
    }
    __syncthreads();
    /* phase 2: thread d walks the tokens in order, adding each to its dimension's sum */
    bool any_had = false; /* uniform: every thread reads the same shared mask */
    for (int off = lo - blk * B; off < hi - blk * B; off++) any_had |= (mask_s[off >> 5] >> (off & 31)) & 1u;
    float sum = c.sums[si * HISA_D + d];
    for (int pos = lo; pos < hi; pos++) {
        int off = pos - blk * B, i = pos - p.range_pos0;
        float deq_new;
        if (fp8) {
            uint8_t code = p.codes ? p.codes[(int64_t)i * HISA_D + d]
                                   : hisa__k_e4m3_from_f32(__fdiv_rn(p.keys[(int64_t)i * HISA_D + d], new_scale[off]));
            page[(int64_t)off * HISA_D + d] = code;
            deq_new = __fmul_rn(hisa__k_e4m3_to_f32(code), new_scale[off]);
        } else {
            uint16_t b = hisa__k_bf16_from_f32(p.keys[(int64_t)i * HISA_D + d]);
            reinterpret_cast<uint16_t *>(page + (int64_t)off * HISA_D * 2)[d] = b;
            deq_new = hisa__k_bf16_to_f32(b);
        }
        sum = __fadd_rn(sum, deq_new);
    }
    if (fp8)
        for (int off = lo - blk * B + d; off < hi - blk * B; off += kThreads) scales[off] = new_scale[off];
    __syncthreads(); /* every thread has read mask_s; codes and scales are stored */
    if (d == 0)
        for (int off = lo - blk * B; off < hi - blk * B; off++) mask_s[off >> 5] |= 1u << (off & 31);
    __syncthreads();
    if (any_had) { /* replaced tokens: recompute from the stored keys in offset order, as the CPU */
        sum = 0.0f;
        for (int o = 0; o < B; o++)
            if ((mask_s[o >> 5] >> (o & 31)) & 1u) sum = __fadd_rn(sum, dequant(c, page, o, d));
    }
    int count = 0;
    for (int wi = 0; wi < mask_words; wi++) count += __popc(mask_s[wi]);
    c.sums[si * HISA_D + d] = sum;
    c.means[si * HISA_D + d] = mean_of(sum, count);
    if (d < mask_words) mask[d] = mask_s[d];
    if (p.payload && c.payload_bytes > 0) {
        int64_t pb = c.payload_bytes;
        for (int pos = lo; pos < hi; pos++) {
            int off = pos - blk * B, i = pos - p.range_pos0;
            uint8_t *dst = c.payload + ((int64_t)p.layer * c.n_pages * B + (int64_t)page_id * B + off) * pb;
            const uint8_t *src = p.payload + (int64_t)i * pb;
            for (int64_t b = d; b < pb; b += kThreads) dst[b] = src[b];
        }
    }
}

bool cache_ok(const hisa_k_cache &c) {
    return c.keys && c.sums && c.means && c.masks && c.page_table && c.seq_len && c.n_layers >= 1 &&
           c.n_pages >= 1 && c.block_size >= HISA_BLOCK_MIN && c.block_size <= HISA_BLOCK_MAX &&
           (c.block_size & 31) == 0 && c.max_seqs >= 1 && c.pages_per_seq >= 1 &&
           (c.key_format == HISA_KEY_FP8 || c.key_format == HISA_KEY_BF16);
}

} // namespace

extern "C" int hisa_k_seq_set(void *stream, const hisa_k_seq_set_params *p) {
    if (!p || !cache_ok(p->cache)) return HISA_K_EINVAL;
    if (p->seq < 0 || p->seq >= p->cache.max_seqs || p->len < 0) return HISA_K_EINVAL;
    if (p->n_pages_new < 0 || p->n_pages_new > HISA_K_SEQ_SET_PAGES) return HISA_K_ELIMIT;
    if (p->first_index < 0 || p->first_index + p->n_pages_new > p->cache.pages_per_seq) return HISA_K_EINVAL;
    dim3 grid(p->n_pages_new > 0 ? p->n_pages_new : 1, p->n_pages_new > 0 ? p->cache.n_layers : 1);
    seq_set_kernel<<<grid, kThreads, 0, (cudaStream_t)stream>>>(*p);
    return hisa__k_launch_status();
}

extern "C" int hisa_k_truncate(void *stream, const hisa_k_truncate_params *p) {
    if (!p || !cache_ok(p->cache)) return HISA_K_EINVAL;
    if (p->seq < 0 || p->seq >= p->cache.max_seqs || p->len < 0) return HISA_K_EINVAL;
    if (p->page >= p->cache.n_pages || (p->page >= 0) != (p->len % p->cache.block_size != 0)) return HISA_K_EINVAL;
    truncate_kernel<<<p->page >= 0 ? p->cache.n_layers : 1, kThreads, 0, (cudaStream_t)stream>>>(*p);
    return hisa__k_launch_status();
}

extern "C" int hisa_k_write(void *stream, const hisa_k_write_params *p) {
    if (!p || !cache_ok(p->cache)) return HISA_K_EINVAL;
    if (p->layer < 0 || p->layer >= p->cache.n_layers || p->n_tokens < 1) return HISA_K_EINVAL;
    if ((p->keys != NULL) == (p->codes != NULL)) return HISA_K_EINVAL;
    if (p->codes && (!p->scales || p->cache.key_format != HISA_KEY_FP8)) return HISA_K_EINVAL;
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
