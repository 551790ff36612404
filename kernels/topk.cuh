/* topk.cuh: the block-level top-k both selection paths share (decode's select.cu, prefill's
 * prefill.cu), so a row is ranked the same way whichever path scored it.
 *
 * Why one CTA per row, keys in registers. A HISA row's candidates (m * B = 8192 at the production
 * shape) and its block scores (nb - 2) fit one CTA: each thread holds KPT consecutive order keys
 * in registers; three radix passes (11 + 11 + 10 bits, shared histograms) find the threshold key
 * T; one scan of packed (above T, equal to T) counts gives every thread its output slots, so
 * entries above T land in index order and the ties at T go to the lowest indices (SPEC). No
 * 64-bit composites, no per-level gather, three histogram passes whatever the data. The bin
 * search and the scan are warp-shuffle code with a few barriers, not CUB's block scan: their
 * per-thread cost is paid once per pass by every thread of the row.
 * Measured on the H200 (bench/NOTES-prefill.md, 2026-11-30 third session): prefill's HISA token
 * top-k 86 -> 47 us and its kept-block top-m 19.5 -> 11.7 us for 1024 rows at 32K; decode
 * HISA 64 x 128K 88.2 -> 83.6 us.
 *
 * Invariants: 1 <= ksel <= L <= NT * KPT < 2^16 (the packed counts); the scores were written by
 * a predecessor grid and are read after it completed (a plain launch, or after
 * griddepcontrol.wait), through the read-only path; put(slot, i) is called exactly once for each
 * selected entry, slots 0 .. ksel-1. */
#ifndef HISA_KERNELS_TOPK_CUH
#define HISA_KERNELS_TOPK_CUH

#include <assert.h>

#include "common.cuh"

/* Inclusive prefix sum of v over the lanes of a full warp. */
__device__ __forceinline__ uint32_t hisa__k_warp_incl_sum(uint32_t v, int lane) {
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const uint32_t y = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += y;
    }
    return v;
}

/* In a histogram of NBINS (shared memory), walking bins from the top (desc) or the bottom, find
 * the bin where the running count reaches need. Precondition, the callers' to keep: 1 <= need <=
 * the histogram's total (else no warp matches and a stale s_warp may write a wrong bin; every
 * caller's need is a count of entries it knows are there). Returns the bin and the count
 * strictly before it through shared slots; every thread gets them after the last barrier.
 * Each thread sums its NBINS / NT bins (in walk order), warps reduce their sums, warp 0 scans
 * the warp totals and names the warp where the count reaches need, that warp scans its threads'
 * sums, and the one thread found walks its bins: three barriers and ~30 instructions a thread
 * (a CUB block scan of 1024 threads spends ~100 applying 32 warp aggregates). */
template <int NT, int NBINS>
__device__ void hisa__k_find_bin(const uint32_t *hist, uint32_t need, bool desc, int *out_bin, uint32_t *out_before) {
    constexpr int PER = NBINS / NT, NW = NT / 32;
    static_assert(NBINS % NT == 0 && NT % 32 == 0 && NW <= 32, "bins per thread, warps per CTA");
    __shared__ uint32_t tot[NW], s_before;
    __shared__ int s_warp;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    uint32_t local = 0;
#pragma unroll
    for (int i = 0; i < PER; i++) local += hist[desc ? NBINS - 1 - (tid * PER + i) : tid * PER + i];
    const uint32_t wsum = __reduce_add_sync(0xffffffffu, local);
    if (lane == 0) tot[warp] = wsum;
    __syncthreads();
    if (warp == 0) {
        const uint32_t v = lane < NW ? tot[lane] : 0u;
        const uint32_t incl = hisa__k_warp_incl_sum(v, lane);
        if (incl - v < need && need <= incl) {
            s_warp = lane;
            s_before = incl - v;
        }
    }
    __syncthreads();
    if (warp == s_warp) {
        const uint32_t incl = hisa__k_warp_incl_sum(local, lane);
        uint32_t run = s_before + incl - local;
        if (run < need && need <= run + local)
            for (int i = 0; i < PER; i++) {
                const int bin = desc ? NBINS - 1 - (tid * PER + i) : tid * PER + i;
                if (run + hist[bin] >= need) {
                    *out_bin = bin;
                    *out_before = run;
                    break;
                }
                run += hist[bin];
            }
    }
    __syncthreads();
}

/* Exclusive prefix sum of v over the CTA's threads in thread order (tot: NT / 32 words of shared
 * memory). Two barriers. */
template <int NT>
__device__ __forceinline__ uint32_t hisa__k_exclusive_sum(uint32_t v, uint32_t *tot) {
    constexpr int NW = NT / 32;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint32_t incl = hisa__k_warp_incl_sum(v, lane);
    if (lane == 31) tot[warp] = incl;
    __syncthreads();
    if (warp == 0) {
        const uint32_t t = lane < NW ? tot[lane] : 0u;
        const uint32_t ti = hisa__k_warp_incl_sum(t, lane);
        if (lane < NW) tot[lane] = ti - t;
    }
    __syncthreads();
    return tot[warp] + incl - v;
}

/* Every entry of row[0..n) to f(i, x, valid), 16-byte loads, V of them in flight per thread (the
 * row need only be 4-byte aligned: a scalar head up to the first 16-byte boundary, then float4s,
 * then a scalar tail). Every thread of the CTA makes the same number of calls in the same order
 * of steps (invalid entries with valid = false), so f may use warp votes.
 * Why: prefill's flat rows' passes loaded one float per thread per iteration, so a 512-thread
 * CTA had ~2 KB in flight and the top-k of 1024 rows of 128K ran at ~1 TB/s (1.08 -> 0.57 ms
 * with this; bench/NOTES-prefill.md). */
template <int NT, int V, class F>
__device__ __forceinline__ void hisa__k_stream_row(const float *row, int n, F f) {
    assert(blockDim.x == NT && n >= 0); /* the strides are the CTA's width */
    const int tid = threadIdx.x;
    const int head = min(n, (int)(((16u - ((uint32_t)reinterpret_cast<uintptr_t>(row) & 15u)) & 15u) >> 2));
    f(tid, tid < head ? __ldg(row + tid) : 0.0f, tid < head);
    const float4 *v = reinterpret_cast<const float4 *>(row + head);
    const int nv = (n - head) >> 2;
    for (int base = 0, it = 0; base < nv; base += NT * V, it++) {
        assert(it <= nv / (NT * V));
        float4 x[V];
#pragma unroll
        for (int u = 0; u < V; u++) {
            const int j = base + u * NT + tid;
            x[u] = j < nv ? __ldg(v + j) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
#pragma unroll
        for (int u = 0; u < V; u++) {
            const int j = base + u * NT + tid, i = head + 4 * j;
            const bool ok = j < nv;
            f(i, x[u].x, ok);
            f(i + 1, x[u].y, ok);
            f(i + 2, x[u].z, ok);
            f(i + 3, x[u].w, ok);
        }
    }
    const int i = head + 4 * nv + tid; /* at most 3 left */
    f(i, i < n ? __ldg(row + i) : 0.0f, i < n);
}

/* The shared memory of hisa__k_row_select for NT threads. */
template <int NT>
struct hisa__k_rowsel_smem {
    uint32_t hist[HISA_K_HIST_BINS];
    uint32_t tot[NT / 32]; /* the final scan's warp totals */
    int bin;
    uint32_t before;
};

/* This thread's KPT consecutive order keys from i0 (0 past L): 16- or 8-byte loads where the
 * row allows (a warp's scalar loads 4 * KPT bytes apart would each touch 32 sectors). */
template <int KPT>
__device__ __forceinline__ void hisa__k_load_keys(const float *scores, int i0, int L, uint32_t (&k)[KPT]) {
    const float *src = scores + i0;
    const uintptr_t at = reinterpret_cast<uintptr_t>(src);
    if constexpr (KPT % 4 == 0) {
        if (i0 + KPT <= L && (at & 15u) == 0) {
#pragma unroll
            for (int v = 0; v < KPT / 4; v++) {
                const float4 f = __ldg(reinterpret_cast<const float4 *>(src) + v);
                k[4 * v] = hisa__k_order_key(f.x);
                k[4 * v + 1] = hisa__k_order_key(f.y);
                k[4 * v + 2] = hisa__k_order_key(f.z);
                k[4 * v + 3] = hisa__k_order_key(f.w);
            }
            return;
        }
    } else if constexpr (KPT == 2) {
        if (i0 + 2 <= L && (at & 7u) == 0) {
            const float2 f = __ldg(reinterpret_cast<const float2 *>(src));
            k[0] = hisa__k_order_key(f.x);
            k[1] = hisa__k_order_key(f.y);
            return;
        }
    }
#pragma unroll
    for (int j = 0; j < KPT; j++) k[j] = i0 + j < L ? hisa__k_order_key(__ldg(src + j)) : 0u;
}

/* One radix pass over this thread's keys: digit (k >> SHIFT) & (2^BITS - 1) of the keys whose bits
 * above SHIFT + BITS match T's; the bin where the descending count reaches need joins T, and need
 * loses the count above it. Ends on find_bin's barrier. */
template <int NT, int KPT, int BITS, int SHIFT>
__device__ __forceinline__ void hisa__k_radix_pass(const uint32_t (&k)[KPT], int i0, int L, uint32_t &T, uint32_t &need,
                                                   hisa__k_rowsel_smem<NT> &sm) {
    constexpr int NB = 1 << BITS, top = SHIFT + BITS;
    static_assert(NB <= HISA_K_HIST_BINS, "the pass's bins fit the histogram");
    for (int b = threadIdx.x; b < NB; b += NT) sm.hist[b] = 0;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < KPT; j++) {
        const bool in = i0 + j < L && (top >= 32 || (k[j] >> (top & 31)) == (T >> (top & 31)));
        if (in) atomicAdd(&sm.hist[(k[j] >> SHIFT) & (NB - 1)], 1u);
    }
    __syncthreads();
    hisa__k_find_bin<NT, NB>(sm.hist, need, true, &sm.bin, &sm.before);
    T |= (uint32_t)sm.bin << SHIFT;
    need -= sm.before;
}

/* The top ksel of scores[0 .. L) by (order key desc, index asc): thread t holds entries
 * t * KPT .. t * KPT + KPT - 1. put(slot, i) gets every selected entry once.
 * Tried and not kept (bench/NOTES-prefill.md): rebasing the keys on the row's smallest so the
 * first pass's digits span the row's own range instead of the few exponents its scores share
 * (fewer same-address atomics): its extra reduction and barrier cost more than it saved. */
template <int NT, int KPT, typename Put>
__device__ void hisa__k_row_select(const float *scores, int L, int ksel, hisa__k_rowsel_smem<NT> &sm, Put put) {
    static_assert(NT * KPT < (1 << 16), "packed counts");
    static_assert(HISA_K_HIST_BITS == 11, "the passes assume 11 + 11 + 10 key bits");
    const int i0 = threadIdx.x * KPT;
    uint32_t k[KPT];
    hisa__k_load_keys<KPT>(scores, i0, L, k);
    uint32_t T = 0, need = (uint32_t)ksel;
    hisa__k_radix_pass<NT, KPT, 11, 21>(k, i0, L, T, need, sm);
    hisa__k_radix_pass<NT, KPT, 11, 10>(k, i0, L, T, need, sm);
    hisa__k_radix_pass<NT, KPT, 10, 0>(k, i0, L, T, need, sm);
    /* need = how many entries equal to T to take (>= 1): the first ones in index order */
    const uint32_t above = (uint32_t)ksel - need;
    uint32_t cnt = 0; /* above T in the high half, equal in the low; each total < 2^16 */
#pragma unroll
    for (int j = 0; j < KPT; j++) cnt += i0 + j < L ? (k[j] > T ? 0x10000u : k[j] == T ? 1u : 0u) : 0u;
    const uint32_t pre = hisa__k_exclusive_sum<NT>(cnt, sm.tot);
    uint32_t at_above = pre >> 16, at_tie = above + (pre & 0xffffu);
#pragma unroll
    for (int j = 0; j < KPT; j++) {
        if (i0 + j >= L) continue;
        if (k[j] > T) put(at_above++, i0 + j);
        else if (k[j] == T && at_tie < (uint32_t)ksel) put(at_tie++, i0 + j);
    }
}

/* A row's kept blocks (SPEC 4): ids[0 .. m-2) are the m - 2 ranked middle blocks (distinct, in
 * shared memory, visible to every thread: call after a barrier). dst[1 .. m-1) gets them in
 * ascending order (a block's place is the count of ids below it; m is small, no sort), then
 * hisa__keep_forced writes blocks 0 and last at the ends. */
__device__ __forceinline__ void hisa__k_write_kept(const int32_t *ids, int m, int last, int32_t *dst) {
    const int n_mid = m - 2;
    for (int i = threadIdx.x; i < n_mid; i += blockDim.x) {
        const int32_t v = ids[i];
        int rank = 0;
        for (int j = 0; j < n_mid; j++) rank += ids[j] < v;
        dst[1 + rank] = v;
    }
    if (threadIdx.x == 0) hisa__keep_forced(dst, m, last);
}

#endif /* HISA_KERNELS_TOPK_CUH */
