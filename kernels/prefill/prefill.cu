/* prefill.cu: chunked causal selection for many queries: prefill chunks, up to HISA_K_CHUNKS_MAX
 * of them (of one or several sequences) in one launch chain, on Hopper tensor cores. The twin is
 * hisa__cpu_select_one (runtime/cpu_backend.c) applied to each query t0 .. t0+n_q-1 of each chunk.
 *
 * Why this shape. A chunk of n_q queries against n keys is a GEMM: [n x 128] keys times
 * [128 x n_q*H] queries, fp32 accumulation. We put the keys (tokens, block means or a query's
 * candidate tokens) on the MMA's M side, 64 per warpgroup tile, loaded straight from the paged
 * cache into A-fragment registers (fp8 codes convert exactly to bf16, or to fp16; with fp8
 * queries and fp8_mma native they go in as they are, e4m3 x e4m3), and the query-heads of NQ queries
 * on the N side (N = NQ * HP <= 256, HP = H padded to a power of two >= 16), held in shared
 * memory as a swizzled K-major tile for the whole CTA (bf16; for fp8 keys by default fp16, see
 * score_kernel: one conversion instruction per code pair instead of four; native fp8: the
 * queries' e4m3 codes).
 * Then the head reduction sum_h w[h] * ReLU(acc[token][h]) runs along N, i.e. inside a thread's
 * registers plus two shuffles, and the per-token fp8 scale multiplies the sum (scale > 0, so
 * ReLU commutes).
 * The K order of A and B is permuted the same way (dot products do not care) so that a thread
 * loads 32 contiguous bytes of each of its two rows.
 *
 * Pipeline (each chunk's rows partitioned on the host by t, all monotone in the row; each kernel
 * takes one class of rows of every chunk, pf_args):
 *   short rows (n <= k)                      top-k kernel writes 0..n-1, -1 padded
 *   flat rows (FLAT, or HISA with nb <= m)    score<TOK> over tokens 0..t, causal mask
 *   HISA rows (nb > m)                       score<MEAN> over blocks 0..last-1, keep (top m-2 of
 *                                            1..last-1 plus 0 and last, ascending) into
 *                                            scratch.blocks, score<CAND> over the kept blocks'
 *                                            tokens (candidate j = token j % B of kept block
 *                                            j / B: index order is position order)
 *   all rows                                 top-k, ties to the lower index as the SPEC asks:
 *                                            HISA rows (and keep) on the shared one-CTA top-k
 *                                            (topk.cuh, rows_kernel) where they fit it; short
 *                                            and flat rows, and longer HISA rows (topk_kernel;
 *                                            keep_kernel for their kept blocks), by a radix
 *                                            select on the 64-bit composite
 *                                            (order key << 32 | ~index).
 * Measured choices (bench/NOTES-prefill.md): one refine CTA per query (its Q tile loaded once),
 * page ids staged in shared memory, one accumulator per warpgroup (two CTAs per SM beat a
 * two-accumulator pipeline at one CTA per SM; again after the instruction diet below, 352 vs 436
 * us), fp16 operands for fp8 keys, and a tile loop read from its SASS: wgmma descriptors built
 * once, e4m3 pairs converted from 16-bit halves, branch-free loads, the refine's weights in
 * registers (~280 -> ~170 instructions a tile; HISA 1024 q at 32K 414 -> 353 us).
 *
 * Invariants: grids are sized on the host from the chunks' t0 and n_q (host-known); a CTA's
 * queries are of one chunk;
 * a CTA reads only pages of positions <= its queries' largest t (valid page-table entries);
 * rows with n > k select exactly k (HISA candidates: (m-1)*B + t%B + 1 >= k); nothing here
 * touches scratch.work, allocates or synchronizes. */
#include <assert.h>
#include <string.h>

#include <algorithm>

#include "../common.cuh"
#include "../topk.cuh"
#include "../wgmma.cuh"

namespace {

constexpr int kScoreThreads = 256; /* two consumer warpgroups, each on its own 64-row tiles */
[[maybe_unused]] constexpr int kTile = 64; /* (unreferenced in the portable image) */
enum { SRC_TOK = 0, SRC_MEAN = 1, SRC_CAND = 2 };

constexpr int kTopkThreads = 512;
constexpr int kHistBins = 4096; /* 12-bit digits */
constexpr int kCandCap = 10240; /* flat rows: threshold-bin entries gathered into shared memory */
constexpr int kCandCapSmall = 4096; /* HISA rows and kept blocks: 4 CTAs per SM */
constexpr int kRankMax = 128;   /* at most this many left: rank by comparison, not radix */

/* A launch serves one class of rows of every chunk (p.chunks): chunk c's rows (chunk-local, by
 * t) are short [0, fb[c]) (n <= k), flat [fb[c], hb[c]) and HISA [hb[c], n_q). A kernel's grid
 * walks the class's rows in units of unit_rows rows (a score CTA's NQ queries, or one row), chunk
 * c's units from unit0[c] on, so the rows of all chunks fill one grid and no unit straddles two
 * chunks (two sequences). */
enum { CLS_SHORT_FLAT = 0, CLS_FLAT = 1, CLS_HISA = 2 };
struct pf_args {
    hisa_k_prefill_params p;
    int32_t fb[HISA_K_CHUNKS_MAX], hb[HISA_K_CHUNKS_MAX]; /* [p.chunks.n] the rows' partition */
    int32_t unit0[HISA_K_CHUNKS_MAX + 1];                 /* [p.chunks.n + 1] this launch's units */
    int cls, unit_rows;
    int span; /* matrix rows per CTA step */
};
static_assert(sizeof(pf_args) <= HISA_K_PARAM_BYTES_MAX, "kernel parameters by value");

/* Chunk c's rows of class cls: chunk-local rows [*lo, *hi). */
__host__ __device__ __forceinline__ void class_rows(const pf_args &a, int cls, int c, int *lo, int *hi) {
    const int n_q = a.p.chunks.row0[c + 1] - a.p.chunks.row0[c];
    *lo = cls == CLS_HISA ? a.hb[c] : cls == CLS_FLAT ? a.fb[c] : 0;
    *hi = cls == CLS_HISA ? n_q : a.hb[c];
}

/* The rows of unit u of the launch: call rows row .. row + n - 1 (of q, w, out and the scratch),
 * the queries at positions t .. t + n - 1 of sequence seq. */
struct pf_rows {
    int seq, row, t, n;
};
__device__ __forceinline__ pf_rows rows_of(const pf_args &a, int u) {
    const hisa_k_chunks &ch = a.p.chunks;
    const int c = hisa__k_last_le(a.unit0, ch.n, u);
    int lo, hi;
    class_rows(a, a.cls, c, &lo, &hi);
    const int first = lo + (u - a.unit0[c]) * a.unit_rows;
    pf_rows r = {ch.seq[c], ch.row0[c] + first, ch.t0[c] + first, min(a.unit_rows, hi - first)};
    /* r.n >= 1: the grids have exactly unit0[n] units (set_class; no device assert here, as the
     * 32-register rows_kernel spills with one) */
    return r;
}

/* rows of the score matrix the query at position t sees (TOK: tokens 0..t, MEAN: blocks
 * 0..last-1, so also last itself, CAND: its candidates); the kernels and the launchers' bounds
 * both use it */
template <int SRC>
__host__ __device__ __forceinline__ int row_limit(const hisa_k_prefill_params &p, int t) {
    const int B = p.cache.block_size;
    if (SRC == SRC_TOK) return t + 1;
    if (SRC == SRC_MEAN) return t / B;
    return (p.top_blocks - 1) * B + t % B + 1;
}

[[maybe_unused]] __device__ __forceinline__ uint32_t e4m3x2_to_bf16x2(uint32_t v16) {
    __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)v16, __NV_E4M3);
    float2 f = __half22float2(__half2(h));
    __nv_bfloat162 b = __floats2bfloat162_rn(f.x, f.y); /* exact: e4m3 values are bf16 values */
    return *reinterpret_cast<uint32_t *>(&b);
}

/* Shared memory of score_kernel, from a 1024-byte aligned base: the Q tile (2 atoms x [N][64]
 * 16-bit elements, or [N][128] e4m3 codes), the weights, 2^-s of each Q row (F16), page ids. */
template <int N>
struct score_layout {
    static constexpr int ws = 2 * N * 128, qinv = ws + 4 * N, pg = qinv + 4 * N;
    static constexpr size_t bytes = 1024 + (size_t)pg + 4 * HISA_TOP_BLOCKS_MAX;
};

/* The CTA's Q tile for 16-bit operands: row n = (query n / HP, head n % HP), zero for padding
 * heads and missing queries; 2 atoms x [N][64] elements, swizzled. Logical K pairs (L, L+1), L
 * even, are physical pairs: one load each. QF is the query format, hoisted out of the loop.
 * F16: each row scaled by 2^s into fp16 (see score_kernel), qinv[n] = 2^-s. */
template <int N, int HP, bool F16, int QF>
__device__ void load_q16(const hisa_k_prefill_params &p, int q_first, int nq, uint8_t *qs, float *qinv) {
    const int H = p.cache.n_heads, tid = threadIdx.x;
    static_assert((N * 16) % kScoreThreads == 0, "Q tile chunks per thread");
#pragma unroll 4
    for (int it = 0; it < N * 16 / kScoreThreads; it++) {
        int idx = tid + it * kScoreThreads;
        int n = idx >> 4, ch = idx & 15, atom = ch >> 3, cc = ch & 7;
        int qi = n / HP, h = n % HP;
        uint32_t packed[4] = {0u, 0u, 0u, 0u};
        float2 v[4] = {};
        if (qi < nq && h < H) {
            const int64_t src = ((int64_t)(q_first + qi) * H + h) * HISA_D; /* the head's first element */
#pragma unroll
            for (int e = 0; e < 8; e += 2) v[e >> 1] = hisa__k_q_load2(p.q, src + hisa__wg_phys_dim(atom * 64 + cc * 8 + e), QF);
        }
        if (!F16) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                __nv_bfloat162 b = __floats2bfloat162_rn(v[e].x, v[e].y);
                packed[e] = *reinterpret_cast<uint32_t *>(&b);
            }
        } else {
            /* the row's 16 chunks sit in 16 consecutive lanes: reduce the bf16 amax there */
            float amax = 0.0f;
#pragma unroll
            for (int e = 0; e < 4; e++) {
                v[e].x = hisa__k_bf16_to_f32(hisa__k_bf16_from_f32(v[e].x));
                v[e].y = hisa__k_bf16_to_f32(hisa__k_bf16_from_f32(v[e].y));
                amax = fmaxf(amax, fmaxf(fabsf(v[e].x), fabsf(v[e].y)));
            }
#pragma unroll
            for (int o = 1; o < 16; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
            const int sh = hisa__k_q_f16_shift(amax);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                __half2 hv = __floats2half2_rn(ldexpf(v[e].x, sh), ldexpf(v[e].y, sh));
                packed[e] = *reinterpret_cast<uint32_t *>(&hv);
            }
            if (ch == 0) qinv[n] = ldexpf(1.0f, -sh);
        }
        uint8_t *dst = qs + atom * (N * 128) + n * 128 + ((cc ^ (n & 7)) << 4);
        *reinterpret_cast<uint4 *>(dst) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
    }
}

/* The Q tile for e4m3 operands (fp8 queries): the codes as given, one atom of [N][128] bytes,
 * swizzled, chunk ch of row n from the dims hisa__wg_q8_dim(ch, j). */
template <int N, int HP>
__device__ void load_q8(const hisa_k_prefill_params &p, int q_first, int nq, uint8_t *qs) {
    const int H = p.cache.n_heads;
    const uint8_t *q = static_cast<const uint8_t *>(p.q);
    for (int idx = threadIdx.x; idx < N * 8; idx += kScoreThreads) {
        const int n = idx >> 3, ch = idx & 7, qi = n / HP, h = n % HP;
        uint32_t v[4] = {0u, 0u, 0u, 0u};
        if (qi < nq && h < H) {
            const uint8_t *src = q + ((int64_t)(q_first + qi) * H + h) * HISA_D;
#pragma unroll
            for (int j = 0; j < 4; j++) v[j] = __ldg(reinterpret_cast<const uint32_t *>(src + hisa__wg_q8_dim(ch, j)));
        }
        *reinterpret_cast<uint4 *>(qs + n * 128 + ((ch ^ (n & 7)) << 4)) = make_uint4(v[0], v[1], v[2], v[3]);
    }
}

/* The CTA's shared inputs (queries q_first .. of sequence seq), staged once before its tiles: the Q tile in the operand form of OP
 * (qs; qinv for F16), the weights ws[N] (times qinv for F16), and the page ids pg of the rows
 * r_begin .. r_end - 1, so the tile loads need no dependent global read: TOK: blocks of the span
 * (r_begin is a multiple of B); MEAN: the blocks themselves; CAND: the kept blocks (candidate r
 * is token r % B of kept block r / B). Ends with a barrier. */
template <int N, int HP, int SRC, int OP>
__device__ __forceinline__ void stage_cta(const hisa_k_prefill_params &p, int seq, int q_first, int nq, int r_begin,
                                          int r_end, uint8_t *qs, float *ws, float *qinv, int *pg) {
    constexpr bool F16 = OP == HISA_WG_F16;
    const hisa_k_cache &c = p.cache;
    const int B = c.block_size, H = c.n_heads, tid = threadIdx.x;
    if constexpr (OP == HISA_WG_E4M3) load_q8<N, HP>(p, q_first, nq, qs);
    else if (p.q_format == HISA_K_Q_F32) load_q16<N, HP, F16, HISA_K_Q_F32>(p, q_first, nq, qs, qinv);
    else if (p.q_format == HISA_K_Q_BF16) load_q16<N, HP, F16, HISA_K_Q_BF16>(p, q_first, nq, qs, qinv);
    else load_q16<N, HP, F16, HISA_K_Q_FP8>(p, q_first, nq, qs, qinv);
    if (F16) __syncthreads(); /* qinv */
    for (int n = tid; n < N; n += kScoreThreads) {
        int qi = n / HP, h = n % HP;
        float wv = (qi < nq && h < H) ? __ldg(p.w + (int64_t)(q_first + qi) * H + h) : 0.0f;
        ws[n] = F16 ? wv * qinv[n] : wv;
    }
    const int32_t *pt = c.page_table + (int64_t)seq * c.pages_per_seq;
    if (SRC == SRC_TOK)
        for (int i = tid; i < (r_end - r_begin + B - 1) / B; i += kScoreThreads) pg[i] = pt[r_begin / B + i];
    else if (SRC == SRC_MEAN)
        for (int i = tid; i < r_end - r_begin; i += kScoreThreads) pg[i] = pt[r_begin + i];
    else
        for (int i = tid; i < p.top_blocks; i += kScoreThreads)
            pg[i] = pt[p.scratch.blocks[(int64_t)q_first * p.top_blocks + i]];
    hisa__fence_proxy_async();
    __syncthreads();
}

/* The four steps of one warpgroup's 64-row tile (load, convert, issue, epilogue), over the
 * CTA's staged inputs. A thread owns rows r0 + 16 * warp4 + g and + 8 of a tile. */
template <int N, int HP, int SRC, bool FP8, int OP>
struct pf_tiles {
    static constexpr bool F16 = OP == HISA_WG_F16, E4M3 = OP == HISA_WG_E4M3;
    static constexpr int KS = hisa__wg_ksteps<OP>, NQ = N / HP;
    static constexpr int RAW = FP8 ? 2 : 4; /* uint4 per row per thread: 32 fp8 codes or 32 bf16 */
    const hisa_k_prefill_params &p;
    const int *pg;     /* staged page ids */
    const float *ws;   /* [N] staged weights */
    uint64_t desc0;    /* the Q tile's wgmma descriptor (hisa__pf_desc of its shared address) */
    int q_first, r_begin, lim_max, B, lb, warp4, g, t4;
    int64_t layer_pages;

    /* raw A data of one tile (B is a power of two: shifts). A thread's rows r0 and r0 + 8 lie in
     * one aligned 16-row group, so in one block (B >= 16): one page id and page address per tile.
     * Rows at or past lim_max read row lim_max - 1 instead (a staged page; the epilogue never
     * writes them, and an MMA row depends only on its own A row), so the loads take no branch and
     * no zeroing. */
    static_assert(HISA_BLOCK_MIN >= 16, "a thread's two rows of a tile share a block");
    __device__ __forceinline__ void load(int tile_r0, uint4 (&raw)[2][RAW], float (&sc)[2]) const {
        const hisa_k_cache &c = p.cache;
        const int r0 = tile_r0 + 16 * warp4 + g;
        const int rr[2] = {min(r0, lim_max - 1), min(r0 + 8, lim_max - 1)};
        const uint8_t *page = nullptr;
        if (SRC != SRC_MEAN) {
            const int page_id = SRC == SRC_TOK ? pg[(rr[0] - r_begin) >> lb] : pg[rr[0] >> lb];
            page = c.keys + (layer_pages + page_id) * c.page_bytes;
        }
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            const uint8_t *row;
            sc[hr] = 1.0f;
            if (SRC == SRC_MEAN) {
                row = reinterpret_cast<const uint8_t *>(c.means + (layer_pages + pg[rr[hr] - r_begin]) * HISA_D);
            } else {
                const int off = rr[hr] & (B - 1);
                if (FP8) {
                    row = page + hisa__code_offset(off);
                    sc[hr] = __ldg(reinterpret_cast<const float *>(page + hisa__scale_offset(B, off)));
                } else {
                    row = page + hisa__bf16_offset(off);
                }
            }
            const uint4 *src = reinterpret_cast<const uint4 *>(row) + RAW * t4;
#pragma unroll
            for (int j = 0; j < RAW; j++) raw[hr][j] = __ldg(src + j);
        }
    }
    /* one tile's raw rows into A fragments: E4M3 takes the code words as they are (k-step kk:
     * words 2kk, 2kk+1 of rows g, g+8; wgmma.cuh), F16 / BF16 convert fp8 codes (or take bf16
     * pairs), 4 bytes (2 words) per row and k-step */
    __device__ __forceinline__ static void convert(const uint4 (&raw)[2][RAW], uint32_t (&af)[KS][4]) {
#pragma unroll
        for (int kk = 0; kk < KS; kk++)
#pragma unroll
            for (int hr = 0; hr < 2; hr++) {
                if (E4M3 || !FP8) { /* code words, or bf16 pairs: taken as they are */
                    const uint32_t *wv = reinterpret_cast<const uint32_t *>(&raw[hr][kk >> 1]);
                    af[kk][hr] = wv[(kk & 1) * 2];
                    af[kk][2 + hr] = wv[(kk & 1) * 2 + 1];
                } else if (F16) {
                    const uint32_t *wv = reinterpret_cast<const uint32_t *>(&raw[hr][kk >> 2]);
                    hisa__k_e4m3x4_to_f16x4(wv[kk & 3], af[kk][hr], af[kk][2 + hr]);
                } else {
                    const uint32_t *wv = reinterpret_cast<const uint32_t *>(&raw[hr][kk >> 2]);
                    uint32_t v = wv[kk & 3];
                    af[kk][hr] = e4m3x2_to_bf16x2(v & 0xffffu);
                    af[kk][2 + hr] = e4m3x2_to_bf16x2(v >> 16);
                }
            }
    }
    /* one asynchronous group: acc = A(tile) x Q^T over K = 128, waited for; after the wait the
     * compiler may use acc and af again only from the fences on */
    __device__ __forceinline__ void mma(float (&acc)[N / 2], uint32_t (&af)[KS][4]) const {
        hisa__wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < KS; kk++)
            wgmma_rs<OP, N>::mma(acc, af[kk], hisa__wg_b_desc<OP, N>(desc0, kk), kk > 0);
        hisa__wgmma_commit();
        hisa__wgmma_wait<0>();
        hisa__wg_settle(acc, af);
    }
    /* the weights of this thread's accumulator columns (2 * t4 + 8 * j, + 1) in registers for
     * the refine's 16-bit tiles (N <= 64: 16 registers), so its epilogue reads no shared memory
     * (HISA 32K 369 -> 353 us). Not for e4m3 tiles (measured 302 -> 313 us there) nor wider
     * tiles (64 registers would cost the flat tile its occupancy): they read ws. */
    static constexpr bool kWeightRegs = N <= 64 && OP != HISA_WG_E4M3;
    __device__ __forceinline__ void weights(float2 (&wr)[N / 8]) const {
        if constexpr (kWeightRegs)
#pragma unroll
            for (int j = 0; j < N / 8; j++) wr[j] = *reinterpret_cast<const float2 *>(ws + 8 * j + 2 * t4);
    }
    /* per query, sum over its heads of w * ReLU, rows g and g+8, times the row's scale; rows from
     * each query's limit lims[qi] on are not written */
    __device__ __forceinline__ void epilogue(const float (&acc)[N / 2], const float (&scl)[2], int cur,
                                             const int (&lims)[NQ], const float2 (&wr)[N / 8]) const {
        float part[NQ][2];
#pragma unroll
        for (int qi = 0; qi < NQ; qi++) part[qi][0] = part[qi][1] = 0.0f;
#pragma unroll
        for (int j = 0; j < N / 8; j++) {
            const int qi = (8 * j) / HP;
            float2 wv;
            if constexpr (kWeightRegs) wv = wr[j];
            else wv = *reinterpret_cast<const float2 *>(ws + 8 * j + 2 * t4);
            part[qi][0] = fmaf(wv.x, fmaxf(acc[4 * j + 0], 0.0f), part[qi][0]);
            part[qi][0] = fmaf(wv.y, fmaxf(acc[4 * j + 1], 0.0f), part[qi][0]);
            part[qi][1] = fmaf(wv.x, fmaxf(acc[4 * j + 2], 0.0f), part[qi][1]);
            part[qi][1] = fmaf(wv.y, fmaxf(acc[4 * j + 3], 0.0f), part[qi][1]);
        }
#pragma unroll
        for (int qi = 0; qi < NQ; qi++)
#pragma unroll
            for (int hr = 0; hr < 2; hr++) {
                float v = part[qi][hr];
                v += __shfl_xor_sync(0xffffffffu, v, 1);
                v += __shfl_xor_sync(0xffffffffu, v, 2);
                int r = cur + 16 * warp4 + g + 8 * hr;
                if (t4 == ((qi * 2 + hr) & 3) && r < lims[qi]) {
                    float *dst = SRC == SRC_MEAN
                                     ? p.scratch.block_scores + (int64_t)(q_first + qi) * p.cache.pages_per_seq
                                     : p.scratch.scores + (int64_t)(q_first + qi) * p.max_context;
                    dst[r] = v * scl[hr];
                }
            }
    }
};

/* OP (wgmma.cuh's operand kinds): BF16, all exact; F16 (fp8 keys): A and B in fp16. The codes
 * convert exactly (one instruction per pair); each query-head row of Q is scaled by a power of two
 * 2^s so its largest |element| lies in [2^14, 2^15), which keeps every bf16 value exact in fp16
 * except elements below 2^-28 of the row's largest (their products are far under the fp32
 * rounding of the dot); w[h] * 2^-s undoes the scale (ReLU commutes with a positive factor).
 * E4M3 (fp8 keys and fp8 queries, fp8_mma native only): both operands are the codes, no
 * conversion at all; the products are exact, but the fp8 tensor core accumulates with about 13
 * fraction bits (truncating), so a score is off by up to ~1e-4 of max |I|, SPEC's whole
 * agreement eps (measured: tests/test_gpu_prefill.c, gpu_prefill_scores_of_fp8_queries). */
template <int N, int HP, int SRC, bool FP8, int OP>
__global__ void __launch_bounds__(kScoreThreads, N >= 128 ? 1 : 2) score_kernel(const pf_args a) {
#if HISA_K_SM90A
    static_assert(FP8 || OP == HISA_WG_BF16, "fp16 and e4m3 operands only for fp8 codes");
    static_assert(OP != HISA_WG_E4M3 || SRC != SRC_MEAN, "block means are bf16");
    using T = pf_tiles<N, HP, SRC, FP8, OP>;
    constexpr int NQ = T::NQ;
    const hisa_k_prefill_params &p = a.p;
    const hisa_k_cache &c = p.cache;
    const int B = c.block_size;
    /* (no device asserts: a call in the kernel costs its main loop ~5% in registers and
     * scheduling, measured; launch_score checks unit_rows == NQ on the host) */
    const pf_rows u = rows_of(a, blockIdx.y);
    const int q_first = u.row, nq = u.n;
    const int lim_max = row_limit<SRC>(p, u.t + nq - 1); /* monotone in the row */
    const int r_begin = blockIdx.x * a.span;
    if (r_begin >= lim_max) return;

    using L = score_layout<N>;
    extern __shared__ uint8_t smem_raw[];
    /* aligned by an offset, not through an integer, so the compiler still knows it points to
     * shared memory: the epilogue's weight reads and the tile loads' page ids are LDS, not
     * generic loads */
    uint8_t *sm = smem_raw + ((1024 - (reinterpret_cast<uintptr_t>(smem_raw) & 1023)) & 1023);
    uint8_t *qs = sm;
    float *ws = reinterpret_cast<float *>(sm + L::ws);     /* [N] */
    float *qinv = reinterpret_cast<float *>(sm + L::qinv); /* [N] */
    int *pg = reinterpret_cast<int *>(sm + L::pg);         /* [<= 1024] pages of the CTA's rows */
    const int tid = threadIdx.x;
    const int r_end = min(r_begin + a.span, lim_max);
    stage_cta<N, HP, SRC, OP>(p, u.seq, q_first, nq, r_begin, r_end, qs, ws, qinv, pg);

    const int wg = tid >> 7, lane = tid & 31;
    T t{p, pg, ws, hisa__pf_desc((uint32_t)__cvta_generic_to_shared(qs)), q_first, r_begin, lim_max, B, __ffs(B) - 1,
        (tid >> 5) & 3, lane >> 2, lane & 3, (int64_t)p.layer * c.n_pages};
    int lims[NQ];
#pragma unroll
    for (int qi = 0; qi < NQ; qi++) lims[qi] = qi < nq ? row_limit<SRC>(p, u.t + qi) : 0;

    uint4 raw[2][T::RAW];
    float sc[2];
    uint32_t af[T::KS][4];
    const int step = 2 * kTile; /* the other warpgroup takes the tiles in between */
    int cur = r_begin + wg * kTile;
    if (cur >= r_end) return; /* warpgroup-uniform; no barrier follows */
    t.load(cur, raw, sc);
    float2 wr[N / 8]; /* read only when T::kWeightRegs, which fills it */
    t.weights(wr);
    float acc[N / 2] = {};
    for (; cur < r_end; cur += step) {
        T::convert(raw, af);
        float scl[2] = {sc[0], sc[1]};
        if (cur + step < r_end) t.load(cur + step, raw, sc); /* prefetch the next tile */
        t.mma(acc, af);
        t.epilogue(acc, scl, cur, lims, wr);
    }
#else
    __trap(); /* never launched without Hopper code (hisa_k_device.hopper) */
#endif
}

/* --- top-k ---------------------------------------------------------------------------------- */

template <int CAP>
struct topk_smem {
    uint32_t hist[kHistBins];
    uint32_t ck[CAP]; /* gathered order keys */
    uint32_t ci[CAP]; /* and their indices */
    uint32_t sel_above;
    int n_out, n_cand, sel_bin;
    int kept[HISA_TOP_BLOCKS_MAX];
    int row, seq; /* the CTA's (rows_of), read back by the emits: see pf_reload */
};

/* The one-row kernels run at their register caps (topk_kernel 64, rows_kernel<false> 32), and
 * their emits need the CTA's call row (and sequence) only after the selection's barriers. Held in
 * registers across the selection they spill (the chunk lookup that made them cannot be redone
 * cheaply, unlike blockIdx arithmetic), so thread 0 parks them in shared memory and the emits
 * read them back with a volatile load, which the compiler can neither hoist nor keep. */
__device__ __forceinline__ int pf_reload(const int &x) { return *reinterpret_cast<const volatile int *>(&x); }

/* The k largest of row[0..n) (n > k) by (order key desc, index asc); emit(index, slot) once for
 * each, slots 0..k-1. Radix select over the unique 64-bit composite key << 32 | ~index, 12 bits
 * at a time; the threshold bin is gathered into shared memory as soon as it fits. */
template <int CAP, class Emit>
__device__ void row_topk(const float *row, int n, int k, topk_smem<CAP> &s, Emit emit) {
    const int tid = threadIdx.x, lane = tid & 31;
    uint64_t P = 0, M = 0;
    int rem = k, n_src = n;
    bool in_smem = false;
    if (tid == 0) s.n_out = 0;
    /* body(composite, index, valid) for every entry of the current source, warp-uniformly */
    auto for_each = [&](auto body) {
        if (in_smem) {
            for (int i0 = tid & ~31, it = 0; i0 < n_src; i0 += kTopkThreads, it++) {
                assert(it <= n_src / kTopkThreads);
                const int i = i0 + lane;
                const bool ok = i < n_src;
                const uint32_t key = ok ? s.ck[i] : 0u, idx = ok ? s.ci[i] : 0u;
                body(((uint64_t)key << 32) | (uint32_t)~idx, idx, ok);
            }
        } else {
            hisa__k_stream_row<kTopkThreads, 4>(row, n_src, [&](int i, float x, bool ok) {
                body(((uint64_t)hisa__k_order_key(x) << 32) | (uint32_t)~(uint32_t)i, (uint32_t)i, ok);
            });
        }
    };
    for (int level = 0; level < 6; level++) {
        const int sh = level < 5 ? 52 - 12 * level : 0, wd = level < 5 ? 12 : 4;
        const uint64_t dmask = (1ull << wd) - 1;
        for (int b = tid; b < kHistBins; b += kTopkThreads) s.hist[b] = 0; /* all: find_bin walks them */
        __syncthreads();
        for_each([&](uint64_t cv, uint32_t, bool ok) {
            if (ok && (cv & M) == P) atomicAdd(&s.hist[(cv >> sh) & dmask], 1u);
        });
        __syncthreads();
        hisa__k_find_bin<kTopkThreads, kHistBins>(s.hist, (uint32_t)rem, true, &s.sel_bin, &s.sel_above);
        const uint32_t b = (uint32_t)s.sel_bin;
        rem -= (int)s.sel_above;
        const int cnt = (int)s.hist[b];
        const bool take_all = cnt == rem, gather = !in_smem && !take_all && cnt <= CAP;
        if (tid == 0) s.n_cand = 0;
        __syncthreads();
        /* warp-uniform calls, so slots are taken once per warp (ballot + popc) */
        for_each([&](uint64_t cv, uint32_t idx, bool ok) {
            bool sel = false, keep = false;
            if (ok && (cv & M) == P) {
                const uint32_t d = (uint32_t)((cv >> sh) & dmask);
                sel = d > b || (d == b && take_all);
                keep = d == b && gather;
            }
            const uint32_t ms = __ballot_sync(0xffffffffu, sel), mk = __ballot_sync(0xffffffffu, keep);
            const uint32_t lt = (1u << lane) - 1u;
            if (ms) { /* warp-uniform */
                int base = 0;
                if (lane == 0) base = atomicAdd(&s.n_out, __popc(ms));
                base = __shfl_sync(0xffffffffu, base, 0);
                if (sel) emit((int)idx, base + __popc(ms & lt));
            }
            if (mk) {
                int base = 0;
                if (lane == 0) base = atomicAdd(&s.n_cand, __popc(mk));
                base = __shfl_sync(0xffffffffu, base, 0);
                if (keep) {
                    const int slot = base + __popc(mk & lt);
                    s.ck[slot] = (uint32_t)(cv >> 32);
                    s.ci[slot] = idx;
                }
            }
        });
        __syncthreads();
        if (take_all) return;
        P |= (uint64_t)b << sh;
        M |= dmask << sh;
        if (gather) {
            in_smem = true;
            n_src = cnt;
            if (cnt <= kRankMax) { /* few left: rank each against all (composites are unique) */
                uint64_t mine = 0;
                if (tid < cnt) mine = ((uint64_t)s.ck[tid] << 32) | (uint32_t)~s.ci[tid];
                int rank = 0;
                for (int j = 0; j < cnt; j++) rank += (((uint64_t)s.ck[j] << 32) | (uint32_t)~s.ci[j]) > mine;
                if (tid < cnt && rank < rem) emit((int)s.ci[tid], atomicAdd(&s.n_out, 1));
                __syncthreads();
                return;
            }
        }
    }
}

__device__ __forceinline__ int to_slot(const hisa_k_prefill_params &p, int seq, int pos) {
    const int B = p.cache.block_size;
    return p.out_slots ? (int)hisa__slot(p.cache.page_table[(int64_t)seq * p.cache.pages_per_seq + pos / B], B, pos % B)
                       : pos;
}

/* HISA rows: kept blocks = 0, the best m-2 of 1..last-1 by J, last; ascending. */
__global__ void __launch_bounds__(kTopkThreads) keep_kernel(const pf_args a) {
    const hisa_k_prefill_params &p = a.p;
    extern __shared__ uint8_t smem_raw[];
    topk_smem<kCandCapSmall> &s = *reinterpret_cast<topk_smem<kCandCapSmall> *>(smem_raw);
    const pf_rows u = rows_of(a, blockIdx.x);
    const int i = u.row, last = row_limit<SRC_MEAN>(p, u.t), m = p.top_blocks;
    const float *row = p.scratch.block_scores + (int64_t)i * p.cache.pages_per_seq + 1; /* J of blocks 1.. */
    if (m > 2) row_topk(row, last - 1, m - 2, s, [&](int idx, int slot) { s.kept[slot] = idx + 1; });
    __syncthreads();
    hisa__k_write_kept(s.kept, m, last, p.scratch.blocks + (int64_t)i * m);
}

/* HISA rows whose entries fit the shared one-CTA top-k (topk.cuh: keys in registers, three
 * radix passes, ties by one scan) take it instead of keep_kernel and topk_kernel, whose
 * levels of 12-bit digits over 64-bit composites ran ~350 instructions per candidate
 * (bench/NOTES-prefill.md): the token rows (m * B <= 8192 candidates: the production shape) on
 * 1024 threads, the kept-block rows (nb <= 2050 blocks: 256K tokens at B = 128) on 256, as a
 * row's fixed cost (barriers, histogram scans) grows with the threads. At most 8 keys a thread
 * in 32 registers, so 2048 threads per SM. The launcher picks it from host-known bounds. */
template <bool KEEP>
struct rows_shape {
    static constexpr int threads = KEEP ? 256 : 1024;
    static constexpr int cap = 8 * threads;
};
template <bool KEEP>
struct rowsel_smem {
    hisa__k_rowsel_smem<rows_shape<KEEP>::threads> sel;
    int32_t aux[HISA_TOP_BLOCKS_MAX]; /* keep: kept ids by slot; tokens: output value of candidate j * B */
    int row, last;                    /* the CTA's call row; keep: its last block (pf_reload) */
};

template <int NT, class Put>
__device__ void rowsel(const float *row, int L, int ksel, hisa__k_rowsel_smem<NT> &sm, Put put) {
    if (L <= 2 * NT) hisa__k_row_select<NT, 2>(row, L, ksel, sm, put);
    else if (L <= 4 * NT) hisa__k_row_select<NT, 4>(row, L, ksel, sm, put);
    else hisa__k_row_select<NT, 8>(row, L, ksel, sm, put);
}

/* KEEP: the kept blocks of HISA rows (as keep_kernel); else their tokens (as topk_kernel). */
template <bool KEEP>
__global__ void __launch_bounds__(rows_shape<KEEP>::threads, 2048 / rows_shape<KEEP>::threads) rows_kernel(const pf_args a) {
    constexpr int NT = rows_shape<KEEP>::threads;
    __shared__ rowsel_smem<KEEP> f;
    const hisa_k_prefill_params &p = a.p;
    const pf_rows u = rows_of(a, blockIdx.x);
    const int i = u.row, t = u.t, B = p.cache.block_size, m = p.top_blocks;
    if (KEEP) {
        const int last = row_limit<SRC_MEAN>(p, t);
        const float *row = p.scratch.block_scores + (int64_t)i * p.cache.pages_per_seq + 1;
        if (threadIdx.x == 0) {
            f.row = i;
            f.last = last;
        }
        if (m > 2) rowsel(row, last - 1, m - 2, f.sel, [&](uint32_t slot, int idx) { f.aux[slot] = idx + 1; });
        __syncthreads(); /* aux, row and last */
        hisa__k_write_kept(f.aux, m, pf_reload(f.last), p.scratch.blocks + (int64_t)pf_reload(f.row) * m);
        return;
    }
    const int lb = __ffs(B) - 1; /* B is a power of two */
    const int32_t *kept = p.scratch.blocks + (int64_t)i * m;
    for (int j = threadIdx.x; j < m; j += NT) f.aux[j] = to_slot(p, u.seq, kept[j] << lb);
    if (threadIdx.x == 0) f.row = i;
    /* output value = its block start's + the offset; aux and row are read only after rowsel's
     * barriers */
    rowsel(p.scratch.scores + (int64_t)i * p.max_context, (m - 1) * B + t % B + 1, p.topk, f.sel,
           [&](uint32_t slot, int idx) {
               p.out[(int64_t)pf_reload(f.row) * p.topk + slot] = f.aux[idx >> lb] + (idx & (B - 1));
           });
}

/* CLS_SHORT_FLAT rows: flat-scored rows (and n <= k rows) with CAP = kCandCap; CLS_HISA rows
 * that rows_kernel cannot take (m * B > 8192 candidates) with the small CAP, more rows at once */
template <int CAP>
__global__ void __launch_bounds__(kTopkThreads, 2) topk_kernel(const pf_args a) {
    const hisa_k_prefill_params &p = a.p;
    extern __shared__ uint8_t smem_raw[];
    topk_smem<CAP> &s = *reinterpret_cast<topk_smem<CAP> *>(smem_raw);
    const pf_rows u = rows_of(a, blockIdx.x);
    const int i = u.row, t = u.t, n = t + 1, k = p.topk, B = p.cache.block_size;
    int32_t *out = p.out + (int64_t)i * k;
    if (n <= k) {
        for (int j = threadIdx.x; j < k; j += kTopkThreads) out[j] = j < n ? to_slot(p, u.seq, j) : -1;
        return;
    }
    const float *row = p.scratch.scores + (int64_t)i * p.max_context;
    if (threadIdx.x == 0) { /* read by the emits after row_topk's barriers */
        s.row = i;
        s.seq = u.seq;
    }
    /* the emit's output row and sequence come back from shared memory (pf_reload) */
    auto out_at = [&](int slot) -> int32_t & { return p.out[(int64_t)pf_reload(s.row) * k + slot]; };
    if (a.cls != CLS_HISA) {
        row_topk(row, n, k, s, [&](int idx, int slot) { out_at(slot) = to_slot(p, pf_reload(s.seq), idx); });
    } else {
        const int m = p.top_blocks;
        const int32_t *kb = p.scratch.blocks + (int64_t)i * m;
        for (int j = threadIdx.x; j < m; j += kTopkThreads) s.kept[j] = kb[j];
        __syncthreads();
        row_topk(row, row_limit<SRC_CAND>(p, t), k, s,
                 [&](int idx, int slot) { out_at(slot) = to_slot(p, pf_reload(s.seq), s.kept[idx / B] * B + idx % B); });
    }
}

/* --- launchers ------------------------------------------------------------------------------ */

template <class K>
int set_smem(K kernel, size_t bytes) {
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes) == cudaSuccess
               ? HISA_K_OK
               : HISA_K_EDEVICE;
}

template <int N, int HP, int SRC, bool FP8, int OP = HISA_WG_BF16>
int launch_score(cudaStream_t s, const pf_args &a, int lim_max, int units) {
    assert(a.unit_rows == N / HP && units >= 1);
    dim3 grid((unsigned)((lim_max + a.span - 1) / a.span), (unsigned)units);
    /* pf_tiles::load: with several CTAs along the rows, a CTA's tiles end on its span (a multiple
     * of the 64-row tile) unless it is the last, and spans start on block boundaries */
    assert(grid.x == 1 || (a.span % kTile == 0 && a.span % a.p.cache.block_size == 0));
    score_kernel<N, HP, SRC, FP8, OP><<<grid, kScoreThreads, score_layout<N>::bytes, s>>>(a);
    return hisa__k_launch_status();
}

/* Token scoring (TOK or CAND) in the operands the key and query formats allow: bf16 keys in bf16;
 * fp8 keys exactly in fp16 (variant 1: bf16), or, fp8 queries with fp8_native set (hisa.h's
 * HISA_FP8_MMA_NATIVE), as e4m3 codes with the fp8 tensor cores' own accumulation. */
template <int N, int HP, int SRC>
int launch_tokens(cudaStream_t s, const pf_args &a, int lim_max, int units) {
    const hisa_k_prefill_params &p = a.p;
    if (p.cache.key_format != HISA__FMT_FP8) return launch_score<N, HP, SRC, false>(s, a, lim_max, units);
    if (p.q_format == HISA_K_Q_FP8 && p.fp8_native)
        return launch_score<N, HP, SRC, true, HISA_WG_E4M3>(s, a, lim_max, units);
    if (p.variant == 0) return launch_score<N, HP, SRC, true, HISA_WG_F16>(s, a, lim_max, units);
    return launch_score<N, HP, SRC, true, HISA_WG_BF16>(s, a, lim_max, units);
}

/* Points the launch at the rows of class cls in units of unit_rows: fills unit0, returns the
 * units, and *t_max, the largest position among the rows (rows are monotone in t per chunk). */
static int set_class(pf_args &a, int cls, int unit_rows, int *t_max) {
    const hisa_k_chunks &ch = a.p.chunks;
    assert(unit_rows >= 1 && ch.n >= 1 && ch.n <= HISA_K_CHUNKS_MAX);
    int units = 0, lo, hi;
    *t_max = -1;
    for (int c = 0; c < ch.n; c++) {
        class_rows(a, cls, c, &lo, &hi);
        a.unit0[c] = units;
        units += (hi - lo + unit_rows - 1) / unit_rows;
        if (hi > lo) *t_max = std::max(*t_max, ch.t0[c] + hi - 1);
    }
    a.unit0[ch.n] = units;
    a.cls = cls;
    a.unit_rows = unit_rows;
    return units;
}

/* Flat rows: spans of about 8 waves of CTAs (one CTA per SM), long enough to amortize the Q
 * tile; a multiple of 256 (>= B: spans start on block boundaries), at most 1024 blocks. */
template <int HP>
int launch_flat(cudaStream_t s, pf_args &a) {
    int t_max;
    const int units = set_class(a, CLS_FLAT, 256 / HP, &t_max);
    if (!units) return HISA_K_OK;
    const int lim = row_limit<SRC_TOK>(a.p, t_max);
    const int64_t want = (8 * (int64_t)a.p.dev.sm_count + units - 1) / units;
    int64_t span = ((lim + want - 1) / want + 255) / 256 * 256;
    span = span < 2048 ? 2048 : span;
    span = span > 1024 * a.p.cache.block_size ? 1024 * a.p.cache.block_size : span;
    a.span = (int)span;
    return launch_tokens<256, HP, SRC_TOK>(s, a, lim, units);
}

/* HISA rows: block means, kept blocks, their tokens. Leaves a on the HISA rows one per unit
 * (*rows of them, 0 when there are none), as their top-k takes them. */
template <int HP>
int launch_hisa(cudaStream_t s, pf_args &a, int *rows_out) {
    int t_max, err;
    *rows_out = 0;
    const int units = set_class(a, CLS_HISA, 256 / HP, &t_max);
    if (!units) return HISA_K_OK;
    const int last_max = row_limit<SRC_MEAN>(a.p, t_max);
    a.span = 512;
    if ((err = launch_score<256, HP, SRC_MEAN, false>(s, a, last_max, units))) return err;
    const int rows = *rows_out = set_class(a, CLS_HISA, 1, &t_max);
    if (last_max - 1 <= rows_shape<true>::cap) rows_kernel<true><<<rows, rows_shape<true>::threads, 0, s>>>(a);
    else keep_kernel<<<rows, kTopkThreads, sizeof(topk_smem<kCandCapSmall>), s>>>(a);
    if ((err = hisa__k_launch_status())) return err;
    a.span = a.p.top_blocks * a.p.cache.block_size; /* one CTA per query: its Q tile is loaded once */
    return launch_tokens<HP, HP, SRC_CAND>(s, a, a.span, rows);
}

/* The chain for every chunk of p at once, each kernel over one class of rows of all chunks. */
template <int HP>
int launch_all(cudaStream_t s, const hisa_k_prefill_params &p) {
    const int64_t k = p.topk, mB = (int64_t)p.top_blocks * p.cache.block_size;
    pf_args a;
    memset(&a, 0, sizeof a);
    a.p = p;
    for (int c = 0; c < p.chunks.n; c++) { /* rows partition by t = t0 + i: short (t + 1 <= k), flat, HISA (t + 1 > m * B) */
        const int64_t t0 = p.chunks.t0[c], n_q = p.chunks.row0[c + 1] - p.chunks.row0[c];
        const int64_t fb = std::min(std::max(k - t0, (int64_t)0), n_q);
        const int64_t hb = p.mode == HISA_K_MODE_HISA ? std::min(std::max(mB - t0, fb), n_q) : n_q;
        a.fb[c] = (int32_t)fb;
        a.hb[c] = (int32_t)hb;
    }
    int err = launch_flat<HP>(s, a), t_max, rows = 0;
    if (!err) err = launch_hisa<HP>(s, a, &rows);
    if (err || p.stop_after_scoring) return err;
    if (rows) { /* a is still on the HISA rows, one a unit */
        if (mB <= rows_shape<false>::cap) rows_kernel<false><<<rows, rows_shape<false>::threads, 0, s>>>(a);
        else topk_kernel<kCandCapSmall><<<rows, kTopkThreads, sizeof(topk_smem<kCandCapSmall>), s>>>(a);
        if ((err = hisa__k_launch_status())) return err;
    }
    if ((rows = set_class(a, CLS_SHORT_FLAT, 1, &t_max))) {
        topk_kernel<kCandCap><<<rows, kTopkThreads, sizeof(topk_smem<kCandCap>), s>>>(a);
        if ((err = hisa__k_launch_status())) return err;
    }
    return HISA_K_OK;
}

/* Every kernel a launch_all<HP> may run gets its shared-memory limit raised. */
template <int N, int HP, int SRC>
int init_tokens() {
    int err = set_smem(score_kernel<N, HP, SRC, false, HISA_WG_BF16>, score_layout<N>::bytes);
    if (!err) err = set_smem(score_kernel<N, HP, SRC, true, HISA_WG_E4M3>, score_layout<N>::bytes);
    if (!err) err = set_smem(score_kernel<N, HP, SRC, true, HISA_WG_F16>, score_layout<N>::bytes);
    if (!err) err = set_smem(score_kernel<N, HP, SRC, true, HISA_WG_BF16>, score_layout<N>::bytes);
    return err;
}
template <int HP>
int init_heads() {
    int err = init_tokens<256, HP, SRC_TOK>();
    if (!err) err = init_tokens<HP, HP, SRC_CAND>();
    if (!err) err = set_smem(score_kernel<256, HP, SRC_MEAN, false, HISA_WG_BF16>, score_layout<256>::bytes);
    return err;
}

} /* namespace */

/* Called by hisa_k_init (device.cu) for every runtime, with its device current: the attributes
 * are per device, so a second GPU gets its own. */
int hisa__k_prefill_init(void) {
    int err = set_smem(keep_kernel, sizeof(topk_smem<kCandCapSmall>));
    if (!err) err = set_smem(topk_kernel<kCandCap>, sizeof(topk_smem<kCandCap>));
    if (!err) err = set_smem(topk_kernel<kCandCapSmall>, sizeof(topk_smem<kCandCapSmall>));
    if (!err) err = init_heads<16>();
    if (!err) err = init_heads<32>();
    if (!err) err = init_heads<64>();
    if (!err) err = init_heads<128>();
    return err;
}

extern "C" int hisa_k_prefill(void *stream, const hisa_k_prefill_params *p) {
    if (!p || !p->q || !p->w || (!p->out && !p->stop_after_scoring) || !p->scratch.scores ||
        !p->scratch.block_scores || !p->scratch.blocks)
        return HISA_K_EINVAL;
    const hisa_k_cache &c = p->cache;
    if (!hisa__k_select_shape_ok(c, p->layer, p->top_blocks, p->topk)) return HISA_K_EINVAL;
    if (p->mode != HISA_K_MODE_HISA && p->mode != HISA_K_MODE_FLAT) return HISA_K_EINVAL;
    if (p->dev.sm_count < 1) return HISA_K_EINVAL; /* hisa_k_init not run */
    if (!p->dev.hopper) return HISA_K_EUNSUPPORTED;  /* the scorer is wgmma code */
    if (p->q_format < HISA_K_Q_F32 || p->q_format > HISA_K_Q_FP8) return HISA_K_EINVAL;
    if (p->max_context < 1 || p->max_context > HISA_CONTEXT_MAX) return HISA_K_ELIMIT;
    const int err = hisa__k_chunks_check(p->chunks, c, p->max_context, p->scratch_rows);
    if (err) return err;
    cudaStream_t s = (cudaStream_t)stream;
    const int H = c.n_heads;
    if (H <= 16) return launch_all<16>(s, *p);
    if (H <= 32) return launch_all<32>(s, *p);
    if (H <= 64) return launch_all<64>(s, *p);
    return launch_all<128>(s, *p);
}
