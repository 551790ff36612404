/* select.cu: flat DSA and HISA selection for a batch of queries: scoring on tensor cores and a
 * radix top-k, all launched on the caller's stream with no allocation and no host sync.
 *
 * Why this shape. A decode step reads every key of every sequence (flat) or every block mean
 * plus m pages (HISA); that is memory traffic, so the scoring kernel streams pages once (each
 * warp through its own two-stage cp.async ring in shared memory) and does the H x 128 x tokens
 * products on tensor cores (mma.sync m16n8k16, fp32 accumulate, k-step outermost so 16
 * accumulator chains are in flight). The lengths live on the device (a captured graph replays
 * while sequences grow), so every kernel derives its work from seq_len itself: grids are sized
 * from the configuration and the device lengths are split into per-row chunks, contiguous
 * ranges of chunks per CTA, so one long row spreads over every SM at batch 1.
 *
 * Pipeline (one row = one query; HISA rows with nb > m take the coarse stage, every other row
 * scores all of its tokens, SPEC 3). HISA mode: 4 launches; flat: 2.
 *   score<MEANS>   J(b) of blocks 1..last-1 into block_scores, plus a histogram of the top 11
 *                  bits of the order-preserving keys (NaN lowest)
 *   select         per (slice, row): the threshold bin b1 of that histogram; entries above it are
 *                  emitted, entries in it counted into a second histogram (next 11 bits) and kept
 *                  as candidates (key, index). The last slice of a row to finish (fence + ticket,
 *                  no waiting) finishes the row: level-2 bin from the second histogram, one pass
 *                  over the candidates, then 10 key bits and 12 + 12 index bits for ties (the
 *                  lower index wins). Blocks stage: order the kept blocks, force 0 and last.
 *                  It zeroes the row's histograms again.
 *   score<KEYS>    I(s) of every token (flat) or of the kept blocks' tokens (candidate array of
 *                  m*B: index i is token i % B of kept block i / B; blocks ascending, so index
 *                  order is position order and tie-breaking by index is by position)
 *   select         as above, writing positions or slots.
 * Rows whose whole top-k fits one CTA's shared memory (block rows: nb - 2 <= 16384; HISA-mode
 * token rows: m * B <= 16384) take select_smem instead of select: one CTA per row, three radix
 * passes in shared memory, no histograms (the scorer skips them, a.hist = 0). Measured on the
 * H200: HISA 64 x 128K 115.8 -> 102.9 us, 1 x 128K 45.2 -> 37.0 us (bench/NOTES-decode.md).
 * score<KEYS> has two scorers behind one launcher, chosen at open (hisa_k_device.path): the
 * mma.sync one below (PORTABLE, the default while it measures faster) and score_wg (HOPPER:
 * warpgroup MMA fed by bulk copies, fp8 keys; also, whichever path was picked unless PORTABLE was
 * asked for, fp8 queries with fp8_native); all are tested against the CPU twin.
 * Prefill on the portable path: the same pipeline with prefill chunks' queries as rows (p.chunk:
 * call row r is query r - row0[c] of the chunk c holding it), so GPUs without the Hopper image
 * select prefill chunks with these kernels, all chunks of a launch in one chain.
 * Kernels after the first use programmatic dependent launch: their prologue (plan, query
 * fragments) overlaps the previous kernel, and they wait where they first read its results.
 *
 * Exactness. fp8 keys: e4m3 codes convert exactly to fp16; q (already rounded to bf16) is scaled
 * per head by a power of two so its largest element lies in [2^14, 2^15) and converted to fp16,
 * exact except for elements below 2^-24 of the head's largest (their products are below fp32
 * resolution of the head's dot anyway); the factor is folded into w (w * 2^-e), and the per-token
 * fp8 scale multiplies the ReLU-weighted sum (scale > 0). bf16 keys and block means use bf16 mma
 * with q in bf16, exact products. Accumulation order differs from the CPU: SPEC's agreement rule.
 * The one inexact form, by request only: fp8_native (hisa.h's HISA_FP8_MMA_NATIVE) multiplies fp8
 * query codes by key codes on the e4m3 tensor cores, whose accumulation keeps ~13 fraction bits.
 *
 * Invariants: the per-row histograms and counters in scratch.work are zero between calls; the
 * candidate index of a token fits 24 bits (HISA_CONTEXT_MAX); a row selects exactly k (flat:
 * n > k; HISA: (m-1)*B >= k candidates are valid, padding candidates score NaN = key 0 and sit
 * after every valid one). */
#include <assert.h>
#include <string.h>
#include <cub/block/block_scan.cuh>

#include "../common.cuh"
#include "../topk.cuh"
#include "../wgmma.cuh"

namespace {

constexpr int kScoreThreads = 128;  /* 4 warps */
constexpr int kScoreWarps = kScoreThreads / 32;
constexpr int kUnit = 32;           /* tokens per warp work unit (B is a multiple of 32) */
constexpr int kChunkMinUnits = 4;
constexpr int kChunkMaxUnitsKeys = 512;
constexpr int kChunkMaxUnitsMeans = 16;
constexpr int kPageSlots = 520;     /* >= 512 * 32 / 32 + 1 and >= 16 * 32 */
constexpr int kMaxMTiles = HISA_HEADS_MAX / 16;
constexpr int kSplitThreads = 256;
constexpr int kFinishThreads = 512;
constexpr int kHistBins = HISA_K_HIST_BINS;
constexpr int kHistShift = 32 - HISA_K_HIST_BITS; /* 21 */
constexpr int kOutCounter = kHistBins, kCandCounter = kHistBins + 1, kDoneCounter = kHistBins + 2;
constexpr int kHist2Offset = kHistBins + HISA_K_WORK_HDR_WORDS;
constexpr int kCandOffset = 2 * kHistBins + HISA_K_WORK_HDR_WORDS;
constexpr int kSmemCand = 6144; /* level-2 candidates the finishing CTA holds in shared memory
                                   (48 KB: three 512-thread CTAs per SM) */

enum { SRC_FP8 = HISA_K_SCORER_FP8, SRC_BF16 = HISA_K_SCORER_BF16, SRC_MEANS = HISA_K_SCORER_MEANS };
enum { STAGE_BLOCKS = 0, STAGE_TOKENS = 1, STAGE_RAW = 2 };
enum { PATH_TRIVIAL = 0, PATH_FLAT = 1, PATH_HISA = 2 };

static_assert(HISA_K_HIST_BITS == 11, "finish's passes assume 11 + 11 + 10 key bits");
static_assert(HISA_CONTEXT_MAX <= (1 << 24), "tie passes cover 24 index bits");

/* Everything a kernel of the pipeline needs, by value (graph-replayable). */
struct sel_args {
    hisa_k_select_params p;
    int stage;
    int row0, n_rows;                 /* this launch's rows: call rows row0 .. row0 + n_rows - 1 */
    const float *raw_scores;          /* STAGE_RAW */
    int64_t raw_stride;
    int raw_n;
    int64_t work_row_words;           /* hisa_k_work_row_words(max length) */
    int cand_cap;                     /* hisa_k_cand_cap(max length) */
    int hist;                         /* 1: the scorer fills the rows' histograms in work (the split
                                         top-k reads them); 0: the rows go to select_smem_kernel */
};
static_assert(sizeof(sel_args) <= HISA_K_PARAM_BYTES_MAX, "kernel parameters by value");

struct row_desc {
    int active, trivial;
    int seq, n, nb, last, path;
    int L, valid, ksel;               /* entries scored, entries real, entries to select */
    const float *scores;
    uint32_t *work;
    int crow;                         /* call row */
};

__device__ __forceinline__ row_desc describe(const sel_args &a, int r) {
    const hisa_k_select_params &p = a.p;
    row_desc d;
    d.crow = a.row0 + r;
    d.work = p.scratch.work + (int64_t)d.crow * a.work_row_words;
    d.trivial = 0;
    if (a.stage == STAGE_RAW) {
        d.seq = d.n = d.nb = d.last = 0;
        d.path = PATH_FLAT;
        d.L = d.valid = a.raw_n;
        d.ksel = p.topk;
        d.trivial = a.raw_n <= p.topk;
        d.active = 1;
        d.scores = a.raw_scores + (int64_t)d.crow * a.raw_stride;
        return d;
    }
    const int B = p.cache.block_size, m = p.top_blocks, k = p.topk;
    if (p.chunk) { /* prefill chunks: call row r is a query of the chunk holding it, host-known */
        const int ci = hisa__k_last_le(p.chunks.row0, p.chunks.n, d.crow);
        d.seq = p.chunks.seq[ci];
        d.n = p.chunks.t0[ci] + (d.crow - p.chunks.row0[ci]) + 1;
    } else {
        const int j = p.next_n == 1 ? 0 : d.crow % p.next_n; /* the common case divides nothing */
        d.seq = p.seq_ids[p.next_n == 1 ? d.crow : d.crow / p.next_n];
        /* read on the device (graph replays follow growing sequences); query j of next_n stands
         * at t = len - next_n + j and sees t + 1 positions */
        d.n = p.cache.seq_len[d.seq] - p.next_n + j + 1;
        d.n = max(d.n, 0);
    }
    d.nb = (d.n + B - 1) / B;
    d.last = d.nb - 1;
    d.path = d.n <= k ? PATH_TRIVIAL : ((p.mode == HISA_K_MODE_FLAT || d.nb <= m) ? PATH_FLAT : PATH_HISA);
    if (a.stage == STAGE_BLOCKS) {
        d.active = d.path == PATH_HISA;
        d.L = d.valid = d.active ? d.last - 1 : 0;
        d.ksel = m - 2;
        d.scores = p.scratch.block_scores + (int64_t)d.crow * p.cache.pages_per_seq;
    } else {
        d.active = 1;
        d.trivial = d.path == PATH_TRIVIAL;
        if (d.path == PATH_HISA) {
            d.L = m * B;
            d.valid = (m - 1) * B + (d.n - d.last * B);
        } else {
            d.L = d.valid = d.trivial ? 0 : d.n;
        }
        d.ksel = k;
        d.scores = p.scratch.scores + (int64_t)d.crow * p.max_context;
    }
    return d;
}

/* Output value of entry idx of a row's score array (tokens stage: position or slot). */
__device__ __forceinline__ int32_t token_value(const sel_args &a, const row_desc &d, int idx) {
    const hisa_k_select_params &p = a.p;
    if (a.stage == STAGE_RAW) return idx;
    const int B = p.cache.block_size;
    int pos = idx;
    if (d.path == PATH_HISA) pos = p.scratch.blocks[(int64_t)d.crow * p.top_blocks + idx / B] * B + idx % B;
    if (p.out_slots) pos = (int32_t)hisa__slot(p.cache.page_table[(int64_t)d.seq * p.cache.pages_per_seq + pos / B], B, pos % B);
    return pos;
}

__device__ __forceinline__ void emit(const sel_args &a, const row_desc &d, int slot, int idx) {
    if (slot < 0 || slot >= d.ksel) return; /* never past the row: a counting bug shows as unwritten entries */
    if (a.stage == STAGE_BLOCKS)
        a.p.scratch.blocks[(int64_t)d.crow * a.p.top_blocks + 1 + slot] = idx + 1;
    else
        a.p.out[(int64_t)d.crow * a.p.topk + slot] = token_value(a, d, idx);
}

/* ------------------------------------------------------------------------------------------ */
/* scoring                                                                                     */

/* c = a * b + (start ? 0 : c): the first k-step starts the accumulator, so it is never zeroed
 * (start is a compile-time constant in the unrolled loops). */
template <bool F16>
__device__ __forceinline__ void mma16(float (&c)[4], const uint4 &a, uint32_t b0, uint32_t b1, bool start) {
#define HISA__MMA16(T, C) "mma.sync.aligned.m16n8k16.row.col.f32." T "." T ".f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, " C ";\n"
    if (start && F16)
        asm volatile(HISA__MMA16("f16", "{%10,%10,%10,%10}") : "=f"(c[0]), "=f"(c[1]), "=f"(c[2]), "=f"(c[3])
                     : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1), "f"(0.0f));
    else if (start)
        asm volatile(HISA__MMA16("bf16", "{%10,%10,%10,%10}") : "=f"(c[0]), "=f"(c[1]), "=f"(c[2]), "=f"(c[3])
                     : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1), "f"(0.0f));
    else if (F16)
        asm volatile(HISA__MMA16("f16", "{%0,%1,%2,%3}") : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
    else
        asm volatile(HISA__MMA16("bf16", "{%0,%1,%2,%3}") : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a.x), "r"(a.y), "r"(a.z), "r"(a.w), "r"(b0), "r"(b1));
#undef HISA__MMA16
}

/* The physical dimension of element t (0..3) of k-step j for lane column c: the reduction over
 * K may use any permutation as long as q and keys agree; these make each lane's key loads two
 * (fp8) or four (bf16) 16-byte pieces that together cover whole 32-byte sectors. Elements t = 0,1
 * are fragment k = 2c, 2c+1 and t = 2,3 are k = 2c+8, 2c+9. */
template <bool F16>
__device__ __forceinline__ int frag_dim(int j, int c) {
    return F16 ? 64 * (j >> 2) + 16 * c + 4 * (j & 3) : 32 * (j >> 1) + 8 * c + 4 * (j & 1);
}

/* Programmatic dependent launch: a kernel lets its successor start early (launch_dependents) and
 * waits for its predecessor's results (wait) only where it first touches them; before that it
 * reads only the call's inputs (q, w, seq_len), which no kernel of the chain writes. Both are
 * no-ops when the launch carries no programmatic dependency, and absent from the portable image
 * (sm_80), whose launches therefore never carry one (launch: pdl needs dev.hopper). */
__device__ __forceinline__ void pdl_trigger() {
#if HISA_K_SM90
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if HISA_K_SM90
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

/* 2^e exactly, for |e| <= 126 (the per-head q scaling keeps e in [-120, 120]). */
__device__ __forceinline__ float pow2(int e) { return __int_as_float((127 + e) << 23); }

/* Slot for each lane of the calling (possibly partial) warp whose pred holds: one shared atomic
 * per warp instead of one per lane (a single counter would serialize every lane). */
__device__ __forceinline__ uint32_t warp_slot(bool pred, uint32_t *counter) {
    const uint32_t active = __activemask();
    const uint32_t ball = __ballot_sync(active, pred);
    const int lane = threadIdx.x & 31, leader = __ffs(active) - 1;
    uint32_t base = 0;
    if (lane == leader && ball) base = atomicAdd(counter, (uint32_t)__popc(ball));
    base = __shfl_sync(active, base, leader);
    return base + __popc(ball & ((1u << lane) - 1u));
}

/* Per-warp staging of one 32-token step: rows of 128 (fp8 codes) or 256 bytes (bf16), 16-byte
 * chunks of odd rows XOR-swizzled by 4 so the fragment reads are free of bank conflicts, then the
 * step's 32 fp8 scales. */
constexpr int kScoreStages = 2;
__host__ __device__ constexpr int score_row_bytes(int src) { return src == SRC_FP8 ? 128 : 256; }
__host__ __device__ constexpr int score_stage_bytes(int src) { return 32 * score_row_bytes(src) + (src == SRC_FP8 ? 128 : 0); }

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
    unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

/* Eight float4 of a query row (vector idx = base + i * kScoreThreads, element 4 * idx from q0). */
template <int FMT>
__device__ __forceinline__ void load_q8(float4 (&v)[8], const void *q, int64_t q0, int base, int n_vec) {
#pragma unroll
    for (int i = 0; i < 8; i++) {
        int idx = base + i * kScoreThreads;
        v[i] = idx < n_vec ? hisa__k_q_load4(q, q0 + 4 * (int64_t)idx, FMT) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
}

/* A scoring CTA's shared histogram of one row into the row's work words (nonzero bins only),
 * leaving it zero for the next row; by threads 0 .. NT - 1 (the Hopper scorer's consumer
 * warpgroup, not its producer warp). */
template <int NT>
__device__ __forceinline__ void flush_hist(uint32_t *hist, uint32_t *work) {
    for (int b = threadIdx.x; b < kHistBins; b += NT) {
        const uint32_t v = hist[b];
        if (v) {
            atomicAdd(work + b, v);
            hist[b] = 0;
        }
    }
}

template <int NT = kScoreThreads>
using plan_scan_t = cub::BlockScan<int, NT>;

/* The work plan of a scoring launch, derived by every CTA alike from the device lengths: row r
 * of the launch has ceil(L / UNIT) units of work, cut into chunks of C units (C sized so the grid
 * gets ~PER_CTA chunks per CTA, within [kChunkMinUnits, cmax]); prefix[r] is the row's first chunk
 * and prefix[n_rows] the total. Returns C. Called by all NT threads of the CTA; ends on a barrier.
 * PER_CTA: 4 for token rows (several chunks a CTA even out uneven rows); 1 for block means, whose
 * chunks are short next to the query setup each one pays (a row's q fragments). */
template <int UNIT, int PER_CTA, int NT = kScoreThreads>
__device__ int plan_chunks(const sel_args &a, int cmax, int *prefix, int *s_chunk_units,
                           typename plan_scan_t<NT>::TempStorage &tmp) {
    static_assert(HISA_K_ROWS_PER_LAUNCH <= 2 * NT, "two rows per thread");
    const int tid = threadIdx.x;
    int units[2], pre[2], total;
#pragma unroll
    for (int i = 0; i < 2; i++) {
        int r = 2 * tid + i;
        units[i] = 0;
        if (r < a.n_rows) {
            row_desc d = describe(a, r);
            units[i] = d.active && !d.trivial && d.ksel > 0 ? (d.L + UNIT - 1) / UNIT : 0;
        }
    }
    plan_scan_t<NT>(tmp).ExclusiveSum(units, pre, total);
    if (tid == 0) {
        const long long per = (long long)gridDim.x * PER_CTA;
        long long want = ((long long)total + per - 1) / per;
        *s_chunk_units = (int)min(max(want, (long long)kChunkMinUnits), (long long)cmax);
    }
    __syncthreads();
    const int C = *s_chunk_units;
    int chunks[2], cpre[2], n_chunks;
#pragma unroll
    for (int i = 0; i < 2; i++) chunks[i] = (units[i] + C - 1) / C;
    __syncthreads(); /* tmp is reused */
    plan_scan_t<NT>(tmp).ExclusiveSum(chunks, cpre, n_chunks);
#pragma unroll
    for (int i = 0; i < 2; i++)
        if (2 * tid + i < a.n_rows) prefix[2 * tid + i] = cpre[i];
    if (tid == 0) prefix[a.n_rows] = n_chunks;
    __syncthreads();
    return C;
}

/* NMT: the head tiles (ceil(H / 16)) fixed at compile time, or 0 for any. The production shape
 * (H 64, NMT 4) gets its own instance: with the tile loops resolved the per-unit body loses its
 * predicated MMA groups (each needed a warp-convergence barrier) and their address arithmetic. */
template <int SRC, int NMT>
__global__ void __launch_bounds__(kScoreThreads, 3) score_kernel(const sel_args a) {
    constexpr bool F16 = SRC == SRC_FP8;
    constexpr bool MEANS = SRC == SRC_MEANS;
    constexpr int CMAX = MEANS ? kChunkMaxUnitsMeans : kChunkMaxUnitsKeys;
    constexpr int kRowBytes = score_row_bytes(SRC);
    constexpr int kStageBytes = score_stage_bytes(SRC);
    constexpr int kStages = kScoreStages;

    extern __shared__ uint4 qfrag[]; /* [n_mt * 8][32] A fragments, then the warps' rings (which
                                        also stage q as bf16 [n_mt * 16][32] uint2 between chunks) */
    __shared__ float wsm[kMaxMTiles * 16];
    __shared__ uint32_t amax_s[kMaxMTiles * 16];
    __shared__ int esm[kMaxMTiles * 16];
    __shared__ uint32_t hist[kHistBins];
    __shared__ int prefix[HISA_K_ROWS_PER_LAUNCH + 1];
    __shared__ int pg[kPageSlots];
    __shared__ int s_chunk_units;
    __shared__ typename plan_scan_t<>::TempStorage scan_tmp;

    pdl_trigger();
    const hisa_k_select_params &p = a.p;
    const hisa_k_cache &cache = p.cache;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, c = lane & 3;
    const int H = cache.n_heads, n_mt = NMT ? NMT : (H + 15) / 16, B = cache.block_size;
    const int lb = __ffs(B) - 1; /* B is a power of two: page and offset of a token by shifts */
    bool waited = false;
    uint2 *qb = reinterpret_cast<uint2 *>(qfrag + n_mt * 8 * 32);

    for (int b = tid; b < kHistBins; b += kScoreThreads) hist[b] = 0;
    const int C = plan_chunks<kUnit, MEANS ? 1 : 4>(a, CMAX, prefix, &s_chunk_units, scan_tmp);
    const int n_chunks = prefix[a.n_rows];

    int cur_row = -1;
    row_desc d;
    d.work = nullptr;
    /* a contiguous range of chunks per CTA, walked in pieces: the range's chunks of one row merge
     * into runs of up to CMAX units (one pipeline fill and drain per run, not per chunk), and the
     * query fragments are rebuilt only when the row changes. (chunk, off): the next unit is unit
     * off of chunk. */
    const int c_begin = (int)((int64_t)n_chunks * blockIdx.x / gridDim.x);
    const int c_end = (int)((int64_t)n_chunks * (blockIdx.x + 1) / gridDim.x);
    int chunk = c_begin, off = 0;
    for (int piece = 0; chunk < c_end; piece++) {
        assert(piece <= c_end - c_begin + (c_end - c_begin) * C / CMAX);
        const int r = hisa__k_last_le(prefix, a.n_rows, chunk); /* the row holding the chunk */
        __syncthreads(); /* the previous piece is done with pg, qfrag, hist */
        if (r != cur_row) {
            if (cur_row >= 0 && a.hist) flush_hist<kScoreThreads>(hist, d.work);
            d = describe(a, r);
            cur_row = r;
            /* query fragments for this row: stage q as bf16 (all loads in flight at once), the
             * per-head amax by shared atomics (non-negative floats order like their bits) */
            const int64_t q0 = (int64_t)d.crow * H * HISA_D; /* the row's first query element */
            const float *w = p.w + (int64_t)d.crow * H;
            for (int h = tid; h < n_mt * 16; h += kScoreThreads) amax_s[h] = 0u;
            __syncthreads();
            const int n_vec = H * (HISA_D / 4);
            for (int base = tid; base < n_vec; base += kScoreThreads * 8) {
                float4 v[8];
                /* the format branch outside the unrolled loads keeps all eight in flight */
                if (p.q_format == HISA_K_Q_F32)
                    load_q8<HISA_K_Q_F32>(v, p.q, q0, base, n_vec);
                else if (p.q_format == HISA_K_Q_BF16)
                    load_q8<HISA_K_Q_BF16>(v, p.q, q0, base, n_vec);
                else
                    load_q8<HISA_K_Q_FP8>(v, p.q, q0, base, n_vec);
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    int idx = base + i * kScoreThreads;
                    if (base - tid + i * kScoreThreads >= n_vec) break; /* warp-uniform: n_vec is a multiple of 32 */
                    uint16_t b0 = hisa__k_bf16_from_f32(v[i].x), b1 = hisa__k_bf16_from_f32(v[i].y);
                    uint16_t b2 = hisa__k_bf16_from_f32(v[i].z), b3 = hisa__k_bf16_from_f32(v[i].w);
                    qb[idx] = make_uint2((uint32_t)b0 | ((uint32_t)b1 << 16), (uint32_t)b2 | ((uint32_t)b3 << 16));
                    if (F16) { /* a warp's 32 float4 are one head's 128 dims: reduce, then one atomic */
                        float mx = fmaxf(fmaxf(fabsf(hisa__k_bf16_to_f32(b0)), fabsf(hisa__k_bf16_to_f32(b1))),
                                         fmaxf(fabsf(hisa__k_bf16_to_f32(b2)), fabsf(hisa__k_bf16_to_f32(b3))));
#pragma unroll
                        for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
                        if (lane == 0 && mx > 0.0f) atomicMax(&amax_s[idx / (HISA_D / 4)], __float_as_uint(mx));
                    }
                }
            }
            for (int idx = n_vec + tid; idx < n_mt * 16 * (HISA_D / 4); idx += kScoreThreads) qb[idx] = make_uint2(0u, 0u);
            __syncthreads();
            for (int h = tid; h < n_mt * 16; h += kScoreThreads) {
                const int e = F16 && h < H ? hisa__k_q_f16_shift(__uint_as_float(amax_s[h])) : 0;
                esm[h] = e;
                wsm[h] = h < H ? w[h] * pow2(-e) : 0.0f;
            }
            __syncthreads();
            for (int i = tid; i < n_mt * 8 * 32; i += kScoreThreads) {
                int mt = i >> 8, j = (i >> 5) & 7, ln = i & 31, gg = ln >> 2, cc = ln & 3;
                int dim = frag_dim<F16>(j, cc);
                uint32_t v[4];
#pragma unroll
                for (int half = 0; half < 2; half++) { /* rows gg and gg + 8 */
                    int h = mt * 16 + gg + 8 * half;
                    uint2 x = qb[h * (HISA_D / 4) + dim / 4];
                    if (F16) {
                        uint16_t o[4] = {(uint16_t)(x.x & 0xffffu), (uint16_t)(x.x >> 16), (uint16_t)(x.y & 0xffffu),
                                         (uint16_t)(x.y >> 16)};
#pragma unroll
                        for (int t = 0; t < 4; t++) {
                            __half hv = __float2half_rn(hisa__k_bf16_to_f32(o[t]) * pow2(esm[h]));
                            o[t] = *reinterpret_cast<uint16_t *>(&hv);
                        }
                        x.x = (uint32_t)o[0] | ((uint32_t)o[1] << 16);
                        x.y = (uint32_t)o[2] | ((uint32_t)o[3] << 16);
                    }
                    v[half] = x.x;     /* a0 / a1: dims dim, dim + 1 */
                    v[2 + half] = x.y; /* a2 / a3: dims dim + 2, dim + 3 */
                }
                qfrag[i] = make_uint4(v[0], v[1], v[2], v[3]);
            }
        }
        const int run_end = min((min(c_end, prefix[r + 1]) - prefix[r]) * C, (d.L + kUnit - 1) / kUnit);
        const int u0 = (chunk - prefix[r]) * C + off;
        const int u1 = min(run_end, u0 + CMAX);
        if (u1 == run_end) {
            chunk = min(c_end, prefix[r + 1]);
            off = 0;
        } else {
            off += u1 - u0;
        }
        if (!waited) { /* from here on: kept blocks, the histogram, the scores (predecessor's) */
            pdl_wait();
            waited = true;
        }
        /* page ids of the chunk */
        const int slot_size = MEANS ? 1 : B;
        const int e_first = u0 * kUnit, e_end = min(u1 * kUnit, d.L);
        const int s0 = e_first / slot_size, s1 = (e_end - 1) / slot_size;
        const int32_t *pt = cache.page_table + (int64_t)d.seq * cache.pages_per_seq;
        for (int s = s0 + tid; s <= s1; s += kScoreThreads) {
            int blk = MEANS ? s + 1
                            : (d.path == PATH_HISA ? p.scratch.blocks[(int64_t)d.crow * p.top_blocks + s] : s);
            pg[s - s0] = pt[blk];
        }
        __syncthreads();

        /* each warp: units u0 + warp, u0 + warp + 4, ...; one 32-token step per unit, streamed
         * through the warp's own ring of kStages shared-memory stages by cp.async */
        const int n_steps = u1 - u0 > warp ? (u1 - u0 - warp + kScoreWarps - 1) / kScoreWarps : 0;
        const int64_t layer_pages = (int64_t)p.layer * cache.n_pages;
        uint8_t *ring = reinterpret_cast<uint8_t *>(qfrag + n_mt * 8 * 32) + warp * kStages * kStageBytes;
        auto step_base = [&](int i) { return (u0 + warp + kScoreWarps * i) * kUnit; };
        auto issue = [&](int i) {
            if (i < n_steps) {
                const int e0 = step_base(i);
                uint8_t *dst = ring + (i % kStages) * kStageBytes;
                if (MEANS) {
#pragma unroll
                    for (int k = 0; k < 16; k++) {
                        int q = lane + 32 * k, t = q >> 4, ch = q & 15;
                        int e = min(e0 + t, d.L - 1);
                        const uint8_t *src = reinterpret_cast<const uint8_t *>(cache.means + (layer_pages + pg[e - s0]) * HISA_D) + 16 * ch;
                        cp_async16(dst + t * kRowBytes + 16 * (ch ^ ((t & 1) << 2)), src);
                    }
                } else {
                    const int page = pg[(e0 >> lb) - s0], off0 = e0 & (B - 1);
                    const uint8_t *pbase = cache.keys + (layer_pages + page) * cache.page_bytes;
                    const uint8_t *src = pbase + (F16 ? hisa__code_offset(off0) : hisa__bf16_offset(off0));
                    constexpr int CHUNKS = kRowBytes / 16;
#pragma unroll
                    for (int k = 0; k < 32 * CHUNKS / 32; k++) {
                        int q = lane + 32 * k, t = q / CHUNKS, ch = q % CHUNKS;
                        cp_async16(dst + t * kRowBytes + 16 * (ch ^ ((t & 1) << 2)), src + 16 * q);
                    }
                    if (F16 && lane < 8) cp_async16(dst + 32 * kRowBytes + 16 * lane, pbase + hisa__scale_offset(B, off0) + 16 * lane);
                }
            }
            cp_async_commit(); /* possibly empty: keeps the group count uniform */
        };
        const int n_hg = (n_mt + 3) / 4;
        auto compute = [&](int i) {
            const int e0 = step_base(i);
            const uint8_t *stage = ring + (i % kStages) * kStageBytes;
            const int swz = (g & 1) << 2; /* tokens 8u + g: odd rows have their halves swapped */
            float part[4][2];
#pragma unroll
            for (int u = 0; u < 4; u++) part[u][0] = part[u][1] = 0.0f;
            for (int hg = 0; hg < n_hg; hg++) {
                const int mts = min(4, n_mt - 4 * hg);
                float acc[4][4][4]; /* started by the k-step j = 0 */
#pragma unroll
                for (int piece = 0; piece < (F16 ? 2 : 4); piece++) {
                    uint4 raw[4];
#pragma unroll
                    for (int u = 0; u < 4; u++)
                        raw[u] = *reinterpret_cast<const uint4 *>(stage + (8 * u + g) * kRowBytes + 16 * ((4 * piece + c) ^ swz));
#pragma unroll
                    for (int jj = 0; jj < (F16 ? 4 : 2); jj++) {
                        const int j = F16 ? 4 * piece + jj : 2 * piece + jj;
                        uint32_t bf[4][2];
#pragma unroll
                        for (int u = 0; u < 4; u++) {
                            if (F16) {
                                uint32_t wd = jj == 0 ? raw[u].x : jj == 1 ? raw[u].y : jj == 2 ? raw[u].z : raw[u].w;
                                hisa__k_e4m3x4_to_f16x4(wd, bf[u][0], bf[u][1]);
                            } else {
                                bf[u][0] = jj ? raw[u].z : raw[u].x;
                                bf[u][1] = jj ? raw[u].w : raw[u].y;
                            }
                        }
#pragma unroll
                        for (int mt = 0; mt < 4; mt++) {
                            if (mt < mts) {
                                uint4 af = qfrag[((4 * hg + mt) * 8 + j) * 32 + lane];
#pragma unroll
                                for (int u = 0; u < 4; u++) {
                                    mma16<F16>(acc[mt][u], af, bf[u][0], bf[u][1], j == 0);
                                }
                            }
                        }
                    }
                }
#pragma unroll
                for (int mt = 0; mt < 4; mt++) {
                    if (mt < mts) {
                        float w0 = wsm[(4 * hg + mt) * 16 + g], w1 = wsm[(4 * hg + mt) * 16 + g + 8];
#pragma unroll
                        for (int u = 0; u < 4; u++) {
                            part[u][0] = fmaf(w1, fmaxf(acc[mt][u][2], 0.0f), fmaf(w0, fmaxf(acc[mt][u][0], 0.0f), part[u][0]));
                            part[u][1] = fmaf(w1, fmaxf(acc[mt][u][3], 0.0f), fmaf(w0, fmaxf(acc[mt][u][1], 0.0f), part[u][1]));
                        }
                    }
                }
            }
            float v0 = 0.0f, v1 = 0.0f;
#pragma unroll
            for (int u = 0; u < 4; u++) {
#pragma unroll
                for (int t = 0; t < 2; t++) {
                    float v = part[u][t];
                    v += __shfl_xor_sync(0xffffffffu, v, 4);
                    v += __shfl_xor_sync(0xffffffffu, v, 8);
                    v += __shfl_xor_sync(0xffffffffu, v, 16);
                    part[u][t] = v;
                }
                if (u == g) {
                    v0 = part[u][0];
                    v1 = part[u][1];
                }
            }
            if (g < 4) {
                if (F16) {
                    float2 sc = *reinterpret_cast<const float2 *>(stage + 32 * kRowBytes + 4 * (8 * g + 2 * c));
                    v0 *= sc.x;
                    v1 *= sc.y;
                }
                const int e = e0 + 8 * g + 2 * c;
                float *dst = const_cast<float *>(d.scores);
                if (e < d.L) {
                    float sv = e < d.valid ? v0 : HISA_K_NAN_SCORE;
                    dst[e] = sv;
                    if (a.hist) atomicAdd(&hist[hisa__k_order_key(sv) >> kHistShift], 1u);
                }
                if (e + 1 < d.L) {
                    float sv = e + 1 < d.valid ? v1 : HISA_K_NAN_SCORE;
                    dst[e + 1] = sv;
                    if (a.hist) atomicAdd(&hist[hisa__k_order_key(sv) >> kHistShift], 1u);
                }
            }
        };
#pragma unroll
        for (int i = 0; i < kStages - 1; i++) issue(i);
        for (int i = 0; i < n_steps; i++) {
            issue(i + kStages - 1);
            cp_async_wait<kStages - 1>(); /* step i has landed (for this lane) */
            __syncwarp();                 /* ... and for every lane of the warp */
            compute(i);
            __syncwarp(); /* everyone is done with this stage before it is refilled */
        }
        cp_async_wait<0>();
        __syncwarp();
    }
    __syncthreads();
    if (cur_row >= 0 && a.hist) flush_hist<kScoreThreads>(hist, d.work);
}

/* ------------------------------------------------------------------------------------------ */
/* scoring on Hopper: warpgroup MMA fed by the bulk copy engine                                */

/* Why this kernel exists: the mma.sync scorer above is bound by instruction issue (~600 per 32
 * tokens per warp: q fragments from shared memory, one HMMA per 8 tokens x 16 heads, the head sum
 * across lanes), so flat decode reads keys at under half the bandwidth. Here one warpgroup takes
 * 64 entries per step as the MMA's M side (A: fp8 codes converted exactly to fp16 in registers),
 * the query's heads as N (B: an fp16 K-major tile in shared memory, built once per row, scaled per
 * head by a power of two exactly as the portable path does), K = 128: 8 wgmma per 64 entries
 * (OP E4M3, fp8_native: A the codes as they are, B the query's codes, 4 e4m3 wgmma), and
 * the head sum runs along N inside a thread plus two shuffles. Pages arrive by 1-D bulk copies
 * (cp.async.bulk: the TMA engine without a tensor map) into a ring of kWgStages stages.
 * Warp-specialized: a fifth warp only stages page ids (its 32 lanes) and issues the copies (lane
 * 0), so the warpgroup's MMAs never wait on address arithmetic or a CTA barrier; each stage has a
 * full barrier (armed with its byte count, completed by the copies) and an empty one (one
 * arrival per consumer warp once it has read the stage), which the producer waits on before
 * refilling it. Measured (NOTES-decode.md):
 * with thread 0 of the warpgroup issuing the refills behind a CTA barrier per tile, the copies'
 * address arithmetic sat on every tile's MMA path.
 *
 * Invariants: fp8 keys only (bf16 keys keep the portable scorer); a tile is 64 entries of one row
 * in two 32-entry halves, each inside one page (B is a power of two, at least 32; tiles start at
 * multiples of 64); a half at or past L is not copied and rows of it are never written; the CTA's
 * g-th tile uses stage g % S with full-barrier parity (g / S) & 1 and, for g >= S, is issued after
 * the empty barrier's phase (g / S - 1) completed (g counts across chunks, alike on both sides); the
 * producer issues exactly the tiles the consumers read, the two roles deriving the same chunks
 * from the shared plan and meeting only at the stages' barriers (the consumers alone also at a
 * named barrier when the row changes). Same work plan, outputs and histogram contract as
 * score_kernel. */
constexpr int kWgConsumers = 128;              /* one warpgroup multiplies */
constexpr int kWgThreads = kWgConsumers + 32; /* and one warp copies */
constexpr int kWgTile = 64;
constexpr int kWgStages = 6;
constexpr int kWgCodeBytes = kWgTile * HISA_D;            /* 8192 */
constexpr int kWgStageBytes = kWgCodeBytes + kWgTile * 4; /* + 64 fp32 scales */
constexpr int kWgChunkMaxTiles = 256;                     /* 16384 entries: <= 513 pages at B = 32 */
static_assert(kWgConsumers == 128, "one warpgroup");
static_assert(kWgChunkMaxTiles * kWgTile / 32 + 1 <= kPageSlots, "a chunk's page ids fit pg");
static_assert(kWgStageBytes % 128 == 0, "stages stay 16-byte aligned");

template <int N>
constexpr size_t wg_dyn_smem() { return 1024 /* alignment slack */ + 2 * N * 128 + kWgStages * kWgStageBytes; }
constexpr int wg_n_index(int H) { return H <= 16 ? 0 : H <= 32 ? 1 : H <= 64 ? 2 : 3; }

/* The row's query as the B tile: head n's logical K element L at 2 atoms x [N][64] fp16 (128-byte
 * swizzle), scaled by 2^sh(n); ws[n] = w[n] * 2^-sh(n); zero rows for padding heads. The 16
 * chunks of a head are 16 consecutive lanes, which reduce the head's amax by shuffles. */
template <int N>
__device__ void wg_build_q(const hisa_k_select_params &p, int crow, uint8_t *qs, float *ws) {
    const int tid = threadIdx.x, H = p.cache.n_heads;
    static_assert((N * 16) % kWgConsumers == 0, "chunks per thread");
    constexpr int IT = N * 16 / kWgConsumers, G = IT < 4 ? IT : 4;
    for (int it0 = 0; it0 < IT; it0 += G) {
        float2 vv[G][4]; /* G rounds of loads in flight at once (one L2 round trip, not G) */
#pragma unroll
        for (int u = 0; u < G; u++) {
            const int idx = tid + (it0 + u) * kWgConsumers, n = idx >> 4, ch = idx & 15, atom = ch >> 3, cc = ch & 7;
            const int64_t src = ((int64_t)crow * H + min(n, H - 1)) * HISA_D;
#pragma unroll
            for (int e = 0; e < 8; e += 2)
                vv[u][e >> 1] = n < H ? hisa__k_q_load2(p.q, src + hisa__wg_phys_dim(atom * 64 + cc * 8 + e), p.q_format)
                                      : make_float2(0.0f, 0.0f);
        }
#pragma unroll
        for (int u = 0; u < G; u++) {
            const int idx = tid + (it0 + u) * kWgConsumers, n = idx >> 4, ch = idx & 15, atom = ch >> 3, cc = ch & 7;
            float2 (&v)[4] = vv[u];
            float amax = 0.0f;
#pragma unroll
            for (int e = 0; e < 4; e++) { /* f32 queries are rounded to bf16 first (SPEC); a no-op otherwise */
                v[e].x = hisa__k_bf16_to_f32(hisa__k_bf16_from_f32(v[e].x));
                v[e].y = hisa__k_bf16_to_f32(hisa__k_bf16_from_f32(v[e].y));
                amax = fmaxf(amax, fmaxf(fabsf(v[e].x), fabsf(v[e].y)));
            }
#pragma unroll
            for (int o = 1; o < 16; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
            const int sh = n < H ? hisa__k_q_f16_shift(amax) : 0;
            uint32_t packed[4];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                __half2 hv = __floats2half2_rn(v[e].x * pow2(sh), v[e].y * pow2(sh));
                packed[e] = *reinterpret_cast<uint32_t *>(&hv);
            }
            if (ch == 0) ws[n] = n < H ? __ldg(p.w + (int64_t)crow * H + n) * pow2(-sh) : 0.0f;
            *reinterpret_cast<uint4 *>(qs + atom * (N * 128) + n * 128 + ((cc ^ (n & 7)) << 4)) =
                make_uint4(packed[0], packed[1], packed[2], packed[3]);
            }
    }
    hisa__fence_proxy_async(); /* the generic stores above, before wgmma reads them */
}

/* The row's fp8 query codes as the B tile of the e4m3 MMA (HISA_FP8_MMA_NATIVE): one atom of
 * [N][128] codes as given (hisa__wg_q8_dim's order, 128-byte swizzle), ws[n] = w[n] (the codes
 * are the values: no per-head scaling); zero rows for padding heads. */
template <int N>
__device__ void wg_build_q8(const hisa_k_select_params &p, int crow, uint8_t *qs, float *ws) {
    const int H = p.cache.n_heads;
    const uint8_t *q = static_cast<const uint8_t *>(p.q) + (int64_t)crow * H * HISA_D;
    for (int idx = threadIdx.x; idx < N * 8; idx += kWgConsumers) {
        const int n = idx >> 3, ch = idx & 7;
        uint32_t v[4] = {0u, 0u, 0u, 0u};
        if (n < H)
#pragma unroll
            for (int j = 0; j < 4; j++) v[j] = __ldg(reinterpret_cast<const uint32_t *>(q + n * HISA_D + hisa__wg_q8_dim(ch, j)));
        *reinterpret_cast<uint4 *>(qs + n * 128 + ((ch ^ (n & 7)) << 4)) = make_uint4(v[0], v[1], v[2], v[3]);
    }
    for (int n = threadIdx.x; n < N; n += kWgConsumers) ws[n] = n < H ? __ldg(p.w + (int64_t)crow * H + n) : 0.0f;
    hisa__fence_proxy_async(); /* the generic stores above, before wgmma reads them */
}

/* The producer's lane 0: arm stage (gi % S) with the bytes of tile `tile` of row d and start its copies. */
[[maybe_unused]] __device__ __forceinline__ void wg_issue(const hisa_k_select_params &p, const row_desc &d, const int *pg, int s0,
                                         int tile, uint32_t gi, uint8_t *ring, uint64_t *full) {
    const hisa_k_cache &c = p.cache;
    const int B = c.block_size, lb = __ffs(B) - 1, e0 = tile * kWgTile; /* B is a power of two */
    uint8_t *st = ring + (gi % kWgStages) * kWgStageBytes;
    uint64_t *bar = full + gi % kWgStages;
    const int halves = e0 + 32 < d.L ? 2 : 1;
    hisa__mbar_expect_tx(bar, (uint32_t)halves * (32 * HISA_D + 32 * 4));
    for (int h = 0; h < halves; h++) {
        const int e = e0 + 32 * h, off = e & (B - 1);
        const uint8_t *page = c.keys + ((int64_t)p.layer * c.n_pages + pg[(e >> lb) - s0]) * c.page_bytes;
        hisa__bulk_copy(st + h * 32 * HISA_D, page + hisa__code_offset(off), 32 * HISA_D, bar);
        hisa__bulk_copy(st + kWgCodeBytes + h * 128, page + hisa__scale_offset(B, off), 128, bar);
    }
}

/* The producer warp's share of a chunk: lane 0 issues its nt tiles (CTA tiles gtile ..), each
 * into its stage once the consumers have released that stage's previous tile. */
[[maybe_unused]] __device__ __forceinline__ void wg_produce(const hisa_k_select_params &p, const row_desc &d, const int *pg,
                                                            int s0, int t0, int nt, uint32_t gtile, uint8_t *ring,
                                                            uint64_t *full, uint64_t *empty) {
    const int lane = threadIdx.x & 31;
    for (int i = 0; i < nt; i++) {
        const uint32_t gi = gtile + (uint32_t)i;
        if (gi >= (uint32_t)kWgStages) hisa__mbar_wait(empty + gi % kWgStages, (gi / kWgStages - 1) & 1u);
        if (lane == 0) {
            hisa__fence_proxy_async(); /* the consumers' reads of the stage, before the copy's writes */
            wg_issue(p, d, pg, s0, t0 + i, gi, ring, full);
        }
        __syncwarp();
    }
}

/* A thread's 32 code bytes of tile row g + 8 * hr (two uint4) into its A fragments: E4M3 takes
 * the words as they are (k-step kk: words 2kk, 2kk + 1, hisa__wg_phys_dim8); F16 converts each
 * word's four codes exactly (k-step kk: word kk, hisa__wg_phys_dim). */
template <int OP, int KS>
__device__ __forceinline__ void wg_frags(const uint4 *src, int hr, uint32_t (&af)[KS][4]) {
#pragma unroll
    for (int half = 0; half < 2; half++) {
        const uint4 x = src[half];
        if constexpr (OP == HISA_WG_E4M3) {
            af[2 * half][hr] = x.x, af[2 * half][2 + hr] = x.y;
            af[2 * half + 1][hr] = x.z, af[2 * half + 1][2 + hr] = x.w;
        } else {
            hisa__k_e4m3x4_to_f16x4(x.x, af[4 * half + 0][hr], af[4 * half + 0][2 + hr]);
            hisa__k_e4m3x4_to_f16x4(x.y, af[4 * half + 1][hr], af[4 * half + 1][2 + hr]);
            hisa__k_e4m3x4_to_f16x4(x.z, af[4 * half + 2][hr], af[4 * half + 2][2 + hr]);
            hisa__k_e4m3x4_to_f16x4(x.w, af[4 * half + 3][hr], af[4 * half + 3][2 + hr]);
        }
    }
}

/* The consumer warpgroup's share of a chunk: tiles t0 .. t0 + nt - 1 of row d (CTA tiles gtile ..),
 * each read from its stage (OP F16: fp8 codes converted exactly to fp16 A fragments; E4M3: the
 * codes as they are), multiplied by the query tile of descriptor desc0, reduced over heads into d.scores
 * (and hist when a.hist). Software-pipelined with two accumulators: the MMAs of tile i run while
 * the epilogue of tile i - 1 does; af is rewritten only after wait<0>. (Hopper image only.) */
template <int N, int OP>
__device__ __forceinline__ void wg_consume(const sel_args &a, const row_desc &d, int t0, int nt, uint32_t gtile,
                                           const uint8_t *ring, uint64_t *full, uint64_t *empty, uint64_t desc0,
                                           const float *ws, uint32_t *hist) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
    /* rows 16 * warp + g (+8) of a tile: 32 code bytes at 32 * t4 (a quarter-warp's rows g, g+1
     * share banks: a 2-way conflict on 4 loads a tile, cheaper than ordering the loads by row) */
    const int code_off = (16 * warp + g) * HISA_D + 32 * t4, sc_off = kWgCodeBytes + 4 * (16 * warp + g);
    constexpr int KS = hisa__wg_ksteps<OP>;
    float sc[2], sc_prev[2] = {0.0f, 0.0f};
    uint32_t af[KS][4];
    float acc0[N / 2] = {}, acc1[N / 2] = {}; /* defined once; each tile's first MMA overwrites */
    auto load_stage = [&](int i) { /* tile i's codes (converted) into af, scales into sc; release */
        const uint32_t gi = gtile + i;
        const uint8_t *st = ring + (gi % kWgStages) * kWgStageBytes;
        hisa__mbar_wait(full + gi % kWgStages, (gi / kWgStages) & 1u);
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            wg_frags<OP>(reinterpret_cast<const uint4 *>(st + code_off + hr * 8 * HISA_D), hr, af);
            sc[hr] = *reinterpret_cast<const float *>(st + sc_off + 32 * hr);
        }
        __syncwarp();
        if (lane == 0) hisa__mbar_arrive(empty + gi % kWgStages);
    };
    auto mma = [&](float (&acc)[N / 2]) { /* KS asynchronous wgmma over af */
        hisa__wgmma_fence(); /* kk = 0 overwrites acc (scale_d 0): no zeroing per tile */
#pragma unroll
        for (int kk = 0; kk < KS; kk++)
            wgmma_rs<OP, N>::mma(acc, af[kk], hisa__wg_b_desc<OP, N>(desc0, kk), kk > 0);
        hisa__wgmma_commit();
    };
    auto settle = [&](float (&acc)[N / 2]) { hisa__wg_settle(acc, af); }; /* after wait<0> */
    auto epilogue = [&](const float (&acc)[N / 2], int i, const float (&scl)[2]) {
        /* four independent partial sums per row: the FMA chains are N/16 long, not N/4 */
        float part[2][4] = {};
#pragma unroll
        for (int j = 0; j < N / 8; j++) {
            const float2 wv = *reinterpret_cast<const float2 *>(ws + 8 * j + 2 * t4);
            part[0][(2 * j) & 3] = fmaf(wv.x, fmaxf(acc[4 * j + 0], 0.0f), part[0][(2 * j) & 3]);
            part[0][(2 * j + 1) & 3] = fmaf(wv.y, fmaxf(acc[4 * j + 1], 0.0f), part[0][(2 * j + 1) & 3]);
            part[1][(2 * j) & 3] = fmaf(wv.x, fmaxf(acc[4 * j + 2], 0.0f), part[1][(2 * j) & 3]);
            part[1][(2 * j + 1) & 3] = fmaf(wv.y, fmaxf(acc[4 * j + 3], 0.0f), part[1][(2 * j + 1) & 3]);
        }
#pragma unroll
        for (int hr = 0; hr < 2; hr++) {
            float v = (part[hr][0] + part[hr][1]) + (part[hr][2] + part[hr][3]);
            v += __shfl_xor_sync(0xffffffffu, v, 1);
            v += __shfl_xor_sync(0xffffffffu, v, 2);
            const int e = (t0 + i) * kWgTile + 16 * warp + g + 8 * hr;
            if (t4 == hr && e < d.L) {
                const float sv = e < d.valid ? v * scl[hr] : HISA_K_NAN_SCORE;
                const_cast<float *>(d.scores)[e] = sv;
                if (a.hist) atomicAdd(&hist[hisa__k_order_key(sv) >> kHistShift], 1u);
            }
        }
    };
    /* tile i in acc (i even: acc0), tile i - 1 in the other */
    auto step = [&](int i, float (&acc)[N / 2], float (&prev)[N / 2]) {
        hisa__wgmma_wait<0>(); /* tile i - 1's MMAs: af and prev are free */
        settle(prev);
        load_stage(i);
        mma(acc);
        if (i > 0) epilogue(prev, i - 1, sc_prev);
        sc_prev[0] = sc[0];
        sc_prev[1] = sc[1];
    };
    for (int i = 0; i < nt; i += 2) {
        step(i, acc0, acc1);
        if (i + 1 < nt) step(i + 1, acc1, acc0);
    }
    hisa__wgmma_wait<0>();
    if (nt & 1) {
        settle(acc0);
        epilogue(acc0, nt - 1, sc_prev);
    } else {
        settle(acc1);
        epilogue(acc1, nt - 1, sc_prev);
    }
}

/* A barrier of the consumer warpgroup alone (named barrier 1; 0 is __syncthreads). */
[[maybe_unused]] __device__ __forceinline__ void wg_consumers_sync() { asm volatile("bar.sync 1, %0;\n" ::"n"(kWgConsumers) : "memory"); }

template <int N, int OP>
__global__ void __launch_bounds__(kWgThreads, N >= 128 ? 1 : 2) score_wg_kernel(const sel_args a) {
#if HISA_K_SM90A
    extern __shared__ uint8_t wg_smem_raw[];
    /* 1024-byte aligned by offsetting the shared array itself, not through an integer: the
     * pointers below stay in the shared window, so their reads are LDS, not generic loads */
    uint8_t *qs = wg_smem_raw + ((1024u - (hisa__smem_u32(wg_smem_raw) & 1023u)) & 1023u);
    uint8_t *ring = qs + 2 * N * 128;
    __shared__ __align__(8) uint64_t full[kWgStages], empty[kWgStages];
    __shared__ float ws[N];
    __shared__ uint32_t hist[kHistBins];
    __shared__ int prefix[HISA_K_ROWS_PER_LAUNCH + 1];
    __shared__ int pg[kPageSlots];
    __shared__ int s_chunk_units;
    __shared__ typename plan_scan_t<kWgThreads>::TempStorage scan_tmp;

    pdl_trigger();
    const hisa_k_select_params &p = a.p;
    const int tid = threadIdx.x;
    const bool producer = tid >= kWgConsumers;
    if (tid == 0) {
        for (int s = 0; s < kWgStages; s++) {
            hisa__mbar_init(full + s, 1);
            hisa__mbar_init(empty + s, kWgConsumers / 32);
        }
        hisa__mbar_init_fence();
    }
    for (int b = tid; b < kHistBins; b += kWgThreads) hist[b] = 0;
    const int C = plan_chunks<kWgTile, 4, kWgThreads>(a, kWgChunkMaxTiles, prefix, &s_chunk_units, scan_tmp);
    const int n_chunks = prefix[a.n_rows];
    const int c_begin = (int)((int64_t)n_chunks * blockIdx.x / gridDim.x);
    const int c_end = (int)((int64_t)n_chunks * (blockIdx.x + 1) / gridDim.x);
    /* From here the two roles walk the same chunks apart, meeting only at the stages' barriers,
     * so the copies of a CTA's next chunk start while its consumers finish this one (no ring
     * drain per chunk): the producer stages its own page ids; the consumers alone guard qs, ws
     * and hist with a barrier of their own at each change of row. */
    uint32_t gtile = 0; /* tiles this CTA has started: stage and barrier parities */
    int cur_row = -1;
    bool waited = false;
    row_desc d;
    d.work = nullptr;
    for (int chunk = c_begin; chunk < c_end; chunk++) {
        const int r = hisa__k_last_le(prefix, a.n_rows, chunk); /* the row holding the chunk */
        if (r != cur_row) {
            if (!producer && cur_row >= 0) {
                wg_consumers_sync(); /* every consumer warp is past its last MMA (qs) and atomic (hist) */
                if (a.hist) flush_hist<kWgConsumers>(hist, d.work);
            }
            d = describe(a, r);
            cur_row = r;
            if (!producer) {
                if (OP == HISA_WG_E4M3) wg_build_q8<N>(p, d.crow, qs, ws);
                else wg_build_q<N>(p, d.crow, qs, ws);
                wg_consumers_sync(); /* qs, ws and the cleared hist, before any MMA or atomic */
            }
        }
        const int t0 = (chunk - prefix[r]) * C, t1 = min(t0 + C, (d.L + kWgTile - 1) / kWgTile), nt = t1 - t0;
        if (!waited) { /* from here on: kept blocks, histograms and scores (the predecessor's) */
            pdl_wait();
            waited = true;
        }
        if (producer) {
            const int s0 = t0 * kWgTile / p.cache.block_size, s1 = (min(t1 * kWgTile, d.L) - 1) / p.cache.block_size;
            const int32_t *pt = p.cache.page_table + (int64_t)d.seq * p.cache.pages_per_seq;
            for (int s = s0 + (tid & 31); s <= s1; s += 32) /* lane 0 has issued every earlier tile */
                pg[s - s0] = pt[d.path == PATH_HISA ? p.scratch.blocks[(int64_t)d.crow * p.top_blocks + s] : s];
            __syncwarp();
            wg_produce(p, d, pg, s0, t0, nt, gtile, ring, full, empty);
        } else {
            wg_consume<N, OP>(a, d, t0, nt, gtile, ring, full, empty, hisa__pf_desc(hisa__smem_u32(qs)), ws, hist);
        }
        gtile += (uint32_t)nt;
    }
    if (!producer && cur_row >= 0 && a.hist) {
        wg_consumers_sync();
        flush_hist<kWgConsumers>(hist, d.work);
    }
#else
    __trap(); /* never launched without Hopper code (hisa_k_device.hopper) */
#endif
}

/* Standalone histogram (STAGE_RAW: scores written by someone else): a streaming pass, 16-byte
 * loads with four in flight a thread (hisa__k_stream_row), 32-bit indices. */
__global__ void __launch_bounds__(kSplitThreads) hist_kernel(const sel_args a, int X) {
    __shared__ uint32_t hist[kHistBins];
    const int r = blockIdx.y, x = blockIdx.x, tid = threadIdx.x;
    row_desc d = describe(a, r);
    if (d.trivial) return;
    for (int b = tid; b < kHistBins; b += kSplitThreads) hist[b] = 0;
    __syncthreads();
    const int lo = (int)((int64_t)d.L * x / X), hi = (int)((int64_t)d.L * (x + 1) / X);
    hisa__k_stream_row<kSplitThreads, 4>(d.scores + lo, hi - lo, [&](int, float v, bool ok) {
        if (ok) atomicAdd(&hist[hisa__k_order_key(v) >> kHistShift], 1u);
    });
    __syncthreads();
    for (int b = tid; b < kHistBins; b += kSplitThreads) {
        uint32_t v = hist[b];
        if (v) atomicAdd(d.work + b, v);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* top-k                                                                                       */

/* Blocks stage, after the m - 2 kept ids of row d are emitted (by this CTA, or by others before a
 * fence): read them back into tmp (m entries) and write them in order with the forced blocks. */
__device__ void order_kept_blocks(const sel_args &a, const row_desc &d, int32_t *tmp) {
    const int m = a.p.top_blocks;
    int32_t *blocks = a.p.scratch.blocks + (int64_t)d.crow * m;
    __syncthreads(); /* this CTA's emits are visible to it */
    for (int i = threadIdx.x; i < m - 2; i += blockDim.x) tmp[i] = __ldcg(blocks + 1 + i);
    __syncthreads();
    hisa__k_write_kept(tmp, m, d.last, blocks);
}

/* A row with nothing to rank (n <= k): every entry in index order, then -1. */
__device__ void write_all(const sel_args &a, const row_desc &d) {
    const int n = a.stage == STAGE_RAW ? d.L : d.n;
    for (int i = threadIdx.x; i < a.p.topk; i += blockDim.x)
        a.p.out[(int64_t)d.crow * a.p.topk + i] = i < n ? token_value(a, d, i) : -1;
}

/* The second half of a row's top-k, run by one CTA (the last slice of the row to arrive). Level 1
 * (top 11 key bits, hist1) and level 2 (next 11 bits of the level-1 bin, hist2) are known from the
 * histograms; one pass over the level-1 candidates emits those above the level-2 bin and keeps
 * those in it (shared memory); then key bits 9..0, then index bits for ties (the lowest indices
 * win). Blocks stage: sort the kept blocks, force 0 and last. Leaves the row's histograms and
 * counters zero. */
__device__ void finish_row(const sel_args &a, const row_desc &d, uint32_t *cand_s, uint32_t *hist, int *s_bin,
                           uint32_t *s_before, uint32_t *s_count, int known_b1, uint32_t known_above) {
    const int tid = threadIdx.x;
    if (d.trivial) {
        write_all(a, d);
        return;
    }
    uint32_t need = (uint32_t)max(d.ksel, 0);
    if (need > 0) {
        const uint32_t b1 = (uint32_t)known_b1, above = known_above; /* level 1, from the main phase */
        need -= above;
        const uint32_t n_cand = __ldcg(d.work + kCandCounter); /* in flight with the histogram's loads */
        __syncthreads();
#pragma unroll
        for (int k = 0; k < kHistBins / kFinishThreads; k++)
            hist[tid + k * kFinishThreads] = __ldcg(d.work + kHist2Offset + tid + k * kFinishThreads);
        __syncthreads();
        hisa__k_find_bin<kFinishThreads, kHistBins>(hist, need, true, s_bin, s_before);
        const uint32_t d2 = (uint32_t)*s_bin, pre2 = (b1 << 11) | d2;
        need -= *s_before;
        const uint32_t eq2 = hist[d2];
        const bool from_buffer = n_cand <= (uint32_t)a.cand_cap;
        const bool l2_smem = eq2 <= (uint32_t)kSmemCand;
        if (tid == 0) *s_count = 0;
        __syncthreads();
        /* pass 1 over the level-1 candidates: emit above pre2, keep pre2 */
        auto level1 = [&](uint32_t key, uint32_t idx) {
            uint32_t k2 = key >> 10;
            uint32_t at = warp_slot(k2 > pre2, s_count);
            if (k2 > pre2) emit(a, d, (int)(above + at), (int)idx);
            uint32_t at2 = warp_slot(k2 == pre2 && l2_smem, s_count + 1);
            if (k2 == pre2 && l2_smem) {
                cand_s[at2] = key;
                cand_s[kSmemCand + at2] = idx;
            }
        };
        if (tid == 0) s_count[1] = 0;
        __syncthreads();
        if (from_buffer) {
            const uint2 *cb = reinterpret_cast<const uint2 *>(d.work + kCandOffset);
            constexpr int U = 8;
            for (uint32_t base = tid; base < n_cand; base += kFinishThreads * U) {
                uint2 kv[U];
#pragma unroll
                for (int u = 0; u < U; u++) {
                    uint32_t i = base + u * kFinishThreads;
                    kv[u] = i < n_cand ? __ldcg(cb + i) : make_uint2(0u, 0u);
                }
#pragma unroll
                for (int u = 0; u < U; u++)
                    if (base + u * kFinishThreads < n_cand) level1(kv[u].x, kv[u].y);
            }
        } else {
            for (int i = tid; i < d.L; i += kFinishThreads) {
                uint32_t key = hisa__k_order_key(d.scores[i]);
                if ((key >> kHistShift) == b1) level1(key, (uint32_t)i);
            }
        }
        __syncthreads();
        const uint32_t above2 = above + *s_count; /* emitted so far */
        /* every level-2 candidate (key >> 10 == pre2, index) to f */
        auto for_each = [&](auto f) {
            if (l2_smem) {
                for (uint32_t i = tid; i < eq2; i += kFinishThreads) f(cand_s[i], cand_s[kSmemCand + i]);
            } else if (from_buffer) {
                const uint2 *cb = reinterpret_cast<const uint2 *>(d.work + kCandOffset);
                for (uint32_t i = tid; i < n_cand; i += kFinishThreads) {
                    uint2 kv = __ldcg(cb + i);
                    if ((kv.x >> 10) == pre2) f(kv.x, kv.y);
                }
            } else {
                for (int i = tid; i < d.L; i += kFinishThreads) {
                    uint32_t key = hisa__k_order_key(d.scores[i]);
                    if ((key >> 10) == pre2) f(key, (uint32_t)i);
                }
            }
        };
        auto clear = [&](int nb) {
            for (int b = tid; b < nb; b += kFinishThreads) hist[b] = 0;
            __syncthreads();
        };
        /* key bits 9..0 */
        clear(2048);
        for_each([&](uint32_t key, uint32_t) { atomicAdd(&hist[key & 1023u], 1u); });
        __syncthreads();
        hisa__k_find_bin<kFinishThreads, 1024>(hist, need, true, s_bin, s_before);
        const uint32_t d3 = (uint32_t)*s_bin;
        need -= *s_before;
        const uint32_t T = (pre2 << 10) | d3;
        const uint32_t eq = hist[d3];
        uint32_t idxT = 0xffffffffu;
        __syncthreads();
        if (eq > need) { /* ties at T: the lowest indices win */
            clear(4096);
            for_each([&](uint32_t key, uint32_t idx) {
                if (key == T) atomicAdd(&hist[idx >> 12], 1u);
            });
            __syncthreads();
            hisa__k_find_bin<kFinishThreads, 4096>(hist, need, false, s_bin, s_before);
            const uint32_t ihi = (uint32_t)*s_bin, need2 = need - *s_before;
            clear(4096);
            for_each([&](uint32_t key, uint32_t idx) {
                if (key == T && (idx >> 12) == ihi) atomicAdd(&hist[idx & 4095u], 1u);
            });
            __syncthreads();
            hisa__k_find_bin<kFinishThreads, 4096>(hist, need2, false, s_bin, s_before);
            idxT = (ihi << 12) | (uint32_t)*s_bin;
        }
        if (tid == 0) *s_count = 0;
        __syncthreads();
        for_each([&](uint32_t key, uint32_t idx) {
            bool take = key > T || (key == T && idx <= idxT);
            uint32_t at = warp_slot(take, s_count);
            if (take) emit(a, d, (int)(above2 + at), (int)idx);
        });
        __syncthreads();
    }
    /* the histograms and counters are zero again for the next call */
    for (int b = tid; b < kCandOffset; b += kFinishThreads) d.work[b] = 0;
    if (a.stage == STAGE_BLOCKS) order_kept_blocks(a, d, reinterpret_cast<int32_t *>(cand_s));
}

/* select: per (slice, row) CTA. Entries above the threshold bin are emitted; entries in it are
 * counted into the level-2 histogram and appended to the row's candidate list (up to cand_cap;
 * past it the finish rescans the row). The last slice of a row to finish (fence + ticket, no
 * waiting on other CTAs) finishes the row. */
/* 2 CTAs per SM (64 registers): the split grid is sized for one wave of two per SM */
__global__ void __launch_bounds__(kFinishThreads, 2) select_kernel(const sel_args a, int X) {
    extern __shared__ uint32_t cand_s[]; /* [2 * kSmemCand]: keys, then indices */
    __shared__ uint32_t hist[4096];
    __shared__ int s_bin;
    __shared__ uint32_t s_before, s_count[2], s_last;
    pdl_trigger();
    const int r = blockIdx.y, x = blockIdx.x, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    row_desc d = describe(a, r);
    pdl_wait(); /* the histogram, scores and kept blocks are the predecessors' */
    if (!d.active) return;
    if (d.trivial || d.ksel <= 0) {
        if (x == 0) finish_row(a, d, cand_s, hist, &s_bin, &s_before, s_count, 0, 0u);
        return;
    }
#pragma unroll
    for (int k = 0; k < kHistBins / kFinishThreads; k++) hist[tid + k * kFinishThreads] = __ldcg(d.work + tid + k * kFinishThreads);
    __syncthreads();
    hisa__k_find_bin<kFinishThreads, kHistBins>(hist, (uint32_t)d.ksel, true, &s_bin, &s_before);
    const uint32_t b1 = (uint32_t)s_bin, above1 = s_before;
    uint32_t *hist2 = hist + kHistBins;
    for (int b = tid; b < kHistBins; b += kFinishThreads) hist2[b] = 0;
    __syncthreads();
    const int lo = (int)((int64_t)d.L * x / X), hi = (int)((int64_t)d.L * (x + 1) / X);
    uint2 *cand = reinterpret_cast<uint2 *>(d.work + kCandOffset);
    const uint32_t cap = (uint32_t)a.cand_cap;
    constexpr int U = 8; /* loads in flight per thread */
    constexpr int kStride = kFinishThreads * U;
    /* The next iteration's scores are loaded before this one's atomics and writes, so their
     * latency overlaps the counters' round trip instead of following it (measured: the loop
     * was bound by that chain, one L2 round trip after another). */
    float next[U];
    auto load = [&](int base) {
#pragma unroll
        for (int u = 0; u < U; u++) {
            int i = base + 32 * u + lane;
            next[u] = i < hi ? __ldg(d.scores + i) : 0.0f;
        }
    };
    if (lo + warp * 32 * U < hi) load(lo + warp * 32 * U);
    for (int base = lo + warp * 32 * U, it = 0; base < hi; base += kStride, it++) {
        assert(it <= (hi - lo) / kStride);
        uint32_t keys[U];
#pragma unroll
        for (int u = 0; u < U; u++) keys[u] = base + 32 * u + lane < hi ? hisa__k_order_key(next[u]) : 0u;
        if (base + kStride < hi) load(base + kStride);
        /* one global atomic per list per warp and iteration (same-address atomics serialize) */
        uint32_t m_above[U], m_in[U], n_above = 0, n_in = 0;
        const uint32_t lt = (1u << lane) - 1u;
#pragma unroll
        for (int u = 0; u < U; u++) {
            int i = base + 32 * u + lane;
            uint32_t bin = keys[u] >> kHistShift;
            m_above[u] = __ballot_sync(0xffffffffu, i < hi && bin > b1);
            m_in[u] = __ballot_sync(0xffffffffu, i < hi && bin == b1);
            n_above += __popc(m_above[u]);
            n_in += __popc(m_in[u]);
        }
        uint32_t base_above = 0, base_in = 0;
        if (lane == 0) {
            if (n_above) base_above = atomicAdd(d.work + kOutCounter, n_above);
            if (n_in) base_in = atomicAdd(d.work + kCandCounter, n_in);
        }
        base_above = __shfl_sync(0xffffffffu, base_above, 0);
        base_in = __shfl_sync(0xffffffffu, base_in, 0);
#pragma unroll
        for (int u = 0; u < U; u++) {
            int i = base + 32 * u + lane;
            uint32_t key = keys[u];
            if ((m_above[u] >> lane) & 1u) emit(a, d, (int)(base_above + __popc(m_above[u] & lt)), i);
            if ((m_in[u] >> lane) & 1u) {
                uint32_t pos = base_in + __popc(m_in[u] & lt);
                atomicAdd(&hist2[(key >> 10) & 2047u], 1u);
                if (pos < cap) cand[pos] = make_uint2(key, (uint32_t)i);
            }
            base_above += __popc(m_above[u]);
            base_in += __popc(m_in[u]);
        }
    }
    __syncthreads();
    for (int b = tid; b < kHistBins; b += kFinishThreads) {
        uint32_t v = hist2[b];
        if (v) atomicAdd(d.work + kHist2Offset + b, v);
    }
    /* threadFenceReduction: publish this slice's writes, take a ticket; the last one finishes */
    __threadfence();
    __syncthreads();
    if (tid == 0) s_last = atomicAdd(d.work + kDoneCounter, 1u) == (uint32_t)(X - 1);
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    finish_row(a, d, cand_s, hist, &s_bin, &s_before, s_count, (int)b1, above1);
}

/* select_smem: the whole top-k of one row in one CTA, keys in registers (topk.cuh).
 * Why: a HISA row's candidates (m * B = 8192 at the production shape) and its block scores
 * (nb - 2) fit one CTA, so the split/finish path's global histograms, ticket and chain of
 * dependent L2 round trips become one CTA per row. It is a latency chain (batch 1 runs one
 * CTA), so it is built for a short one: 1024 threads, 2-16 keys each. Output values come from a
 * per-block table in shared memory, so no emit reads global memory. Measured on the H200
 * (bench/NOTES-decode.md): the 512-thread version over shared-memory keys ran ~2400 dependent
 * warp instructions per warp (17 us for 8192 candidates under ncu); this one took HISA 1 x 128K
 * from 36.3 to 30.5 us. Warp-aggregating the first pass's atomics (__match_any_sync) measured
 * slower than plain shared atomics (30.5 vs 29.1 us), so they are plain.
 * Invariants: L <= kSmemSelCap; exactly ksel entries written; the scorer ran with a.hist = 0,
 * so the row's work words are untouched (still zero). */
constexpr int kSmemSelCap = 16384;
constexpr int kSelThreads = 1024;
static_assert(kSmemSelCap % kSelThreads == 0 && kSmemSelCap / kSelThreads <= 16, "keys per thread");
static_assert(kSmemSelCap / HISA_BLOCK_MIN <= HISA_TOP_BLOCKS_MAX, "one output base per block of a row");

__global__ void __launch_bounds__(kSelThreads) select_smem_kernel(const sel_args a) {
    __shared__ hisa__k_rowsel_smem<kSelThreads> sm;
    __shared__ int32_t aux[HISA_TOP_BLOCKS_MAX]; /* tokens: output value of entry j * B; blocks: kept ids by slot */
    pdl_trigger();
    const row_desc d = describe(a, blockIdx.x);
    pdl_wait(); /* the scores and kept blocks are the predecessors' */
    if (!d.active) return;
    const bool blocks = a.stage == STAGE_BLOCKS;
    if (d.trivial || d.ksel <= 0) { /* n <= k, or (blocks, m = 2) no middle block */
        if (!blocks) write_all(a, d);
        else if (threadIdx.x == 0) hisa__keep_forced(a.p.scratch.blocks + (int64_t)d.crow * a.p.top_blocks, a.p.top_blocks, d.last);
        return;
    }
    /* the valid entries only: HISA rows' padding candidates (NaN, key 0, after every valid one)
     * are never among the top k ((m - 1) * B >= k are valid), so they need no ranking */
    const int L = d.valid, B = a.p.cache.block_size, lb = __ffs(B) - 1; /* B is a power of two */
    if (a.stage == STAGE_TOKENS)
        for (int j = threadIdx.x; j < (L + B - 1) >> lb; j += kSelThreads) aux[j] = token_value(a, d, j << lb);
    int32_t *out = a.p.out + (int64_t)d.crow * a.p.topk;
    auto put = [&](uint32_t slot, int i) {
        if (blocks) aux[slot] = i + 1;
        else out[slot] = aux[i >> lb] + (i & (B - 1));
    };
    /* the aux table is read only after the row select's barriers */
    if (L <= 2 * kSelThreads) hisa__k_row_select<kSelThreads, 2>(d.scores, L, d.ksel, sm, put);
    else if (L <= 4 * kSelThreads) hisa__k_row_select<kSelThreads, 4>(d.scores, L, d.ksel, sm, put);
    else if (L <= 8 * kSelThreads) hisa__k_row_select<kSelThreads, 8>(d.scores, L, d.ksel, sm, put);
    else hisa__k_row_select<kSelThreads, 16>(d.scores, L, d.ksel, sm, put);
    if (blocks) {
        __syncthreads();
        hisa__k_write_kept(aux, a.p.top_blocks, d.last, a.p.scratch.blocks + (int64_t)d.crow * a.p.top_blocks);
    }
}

/* q fragments, then max(the warps' rings, the bf16 staging of q) */
size_t score_dyn_smem(int src, int n_mt) {
    size_t frag = (size_t)n_mt * 8 * 32 * sizeof(uint4);
    size_t ring = (size_t)kScoreWarps * kScoreStages * score_stage_bytes(src);
    return frag + (ring > frag ? ring : frag);
}

constexpr size_t kFinishDynSmem = 2 * kSmemCand * sizeof(uint32_t);

int set_smem(const void *kernel, size_t bytes) {
    return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes) == cudaSuccess
               ? HISA_K_OK
               : HISA_K_EDEVICE;
}

/* *room: the dynamic shared memory one CTA of kernel k may have on dev (the per-block opt-in
 * limit less the kernel's static shared memory). */
int smem_room(const hisa_k_device *dev, const void *k, size_t *room) {
    int optin = 0;
    cudaFuncAttributes fa;
    if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev->ordinal) != cudaSuccess ||
        cudaFuncGetAttributes(&fa, k) != cudaSuccess)
        return HISA_K_EDEVICE;
    *room = (size_t)optin > fa.sharedSizeBytes ? (size_t)optin - fa.sharedSizeBytes : 0;
    return HISA_K_OK;
}

/* The scoring kernel's CTAs per SM for each head-tile count (its grid is one full wave; its
 * shared memory, so its occupancy, grows with the heads). A head-tile count whose shared memory
 * does not fit one CTA of this device gets 0, and hisa_open refuses that many heads
 * (cuda_backend.c): the bf16-key and means scorers past 80 heads on parts with 99 KB per block
 * (sm_86, sm_89, sm_120). */
template <int SRC>
int score_init(hisa_k_device *dev) {
    const void *k0 = (const void *)score_kernel<SRC, 0>, *k4 = (const void *)score_kernel<SRC, 4>;
    size_t room0 = 0, room4 = 0;
    if (smem_room(dev, k0, &room0) || smem_room(dev, k4, &room4)) return HISA_K_EDEVICE;
    const size_t most0 = score_dyn_smem(SRC, kMaxMTiles), need4 = score_dyn_smem(SRC, 4);
    if (set_smem(k0, most0 < room0 ? most0 : room0)) return HISA_K_EDEVICE;
    if (need4 <= room4 && set_smem(k4, need4)) return HISA_K_EDEVICE;
    for (int n_mt = 1; n_mt <= kMaxMTiles; n_mt++) {
        const size_t need = score_dyn_smem(SRC, n_mt);
        int occ = 0;
        if (need <= (n_mt == 4 ? room4 : room0) &&
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, n_mt == 4 ? score_kernel<SRC, 4> : score_kernel<SRC, 0>,
                                                          kScoreThreads, need) != cudaSuccess)
            return HISA_K_EDEVICE;
        dev->score_ctas_per_sm[SRC][n_mt - 1] = occ; /* 0: does not fit this device */
    }
    return HISA_K_OK;
}

/* Launch with or without a programmatic dependency on the previous kernel of the stream; never
 * with one when the loaded kernels are the portable image (no griddepcontrol.wait in them). */
template <typename... Extra>
int launch(void (*kernel)(sel_args, Extra...), dim3 grid, dim3 block, size_t smem, cudaStream_t s, bool pdl,
           const sel_args &a, Extra... extra) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl && a.p.dev.hopper ? 1 : 0;
    if (cudaLaunchKernelEx(&cfg, kernel, a, extra...) != cudaSuccess) return HISA_K_EDEVICE;
    return hisa__k_launch_status();
}

template <int SRC>
int launch_score(const sel_args &a, cudaStream_t s, bool pdl) {
    int n_mt = (a.p.cache.n_heads + 15) / 16;
    size_t smem = score_dyn_smem(SRC, n_mt);
    int grid = a.p.dev.sm_count * a.p.dev.score_ctas_per_sm[SRC][n_mt - 1];
    if (grid < 1) return HISA_K_EUNSUPPORTED; /* refused at open (cuda_backend.c) */
    return launch(n_mt == 4 ? score_kernel<SRC, 4> : score_kernel<SRC, 0>, dim3(grid), dim3(kScoreThreads), smem, s, pdl, a);
}

/* The Hopper scorer's CTAs per SM for each padded head count and operand kind (F16 exact, E4M3). */
template <int N, int OP>
int wg_init(hisa_k_device *dev) {
    const void *k = (const void *)score_wg_kernel<N, OP>;
    if (set_smem(k, wg_dyn_smem<N>())) return HISA_K_EDEVICE;
    int occ = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, score_wg_kernel<N, OP>, kWgThreads, wg_dyn_smem<N>()) != cudaSuccess)
        return HISA_K_EDEVICE;
    dev->wg_ctas_per_sm[OP == HISA_WG_E4M3][wg_n_index(N)] = occ > 0 ? occ : 1;
    return HISA_K_OK;
}
template <int OP>
int wg_init_all(hisa_k_device *dev) {
    int err = wg_init<16, OP>(dev);
    if (!err) err = wg_init<32, OP>(dev);
    if (!err) err = wg_init<64, OP>(dev);
    if (!err) err = wg_init<128, OP>(dev);
    return err;
}

template <int OP>
int launch_score_wg(const sel_args &a, cudaStream_t s, bool pdl) {
    const int H = a.p.cache.n_heads, ni = wg_n_index(H);
    const dim3 grid(a.p.dev.sm_count * a.p.dev.wg_ctas_per_sm[OP == HISA_WG_E4M3][ni]), block(kWgThreads);
    switch (ni) {
    case 0: return launch(score_wg_kernel<16, OP>, grid, block, wg_dyn_smem<16>(), s, pdl, a);
    case 1: return launch(score_wg_kernel<32, OP>, grid, block, wg_dyn_smem<32>(), s, pdl, a);
    case 2: return launch(score_wg_kernel<64, OP>, grid, block, wg_dyn_smem<64>(), s, pdl, a);
    default: return launch(score_wg_kernel<128, OP>, grid, block, wg_dyn_smem<128>(), s, pdl, a);
    }
}

int launch_select_smem(const sel_args &a, cudaStream_t s) {
    return launch(select_smem_kernel, dim3(a.n_rows), dim3(kSelThreads), 0, s, true, a);
}

int slices_for(int sm_count, int n_rows, int64_t max_len) {
    /* one wave: two 512-thread CTAs fit an SM */
    int want = (2 * max(sm_count, 1)) / n_rows;
    int64_t cap64 = (max_len + 4095) / 4096;
    int cap = cap64 < 1 ? 1 : (int)cap64;
    return max(1, min(want, cap));
}

int launch_topk(const sel_args &a, int64_t max_len, cudaStream_t s) {
    int X = slices_for(a.p.dev.sm_count, a.n_rows, max_len);
    return launch(select_kernel, dim3(X, a.n_rows), dim3(kFinishThreads), kFinishDynSmem, s, true, a, X);
}

} // namespace

/* Whether the image loaded for this device holds Hopper code: the attributes of a Hopper-only
 * kernel name the PTX it came from (90 for the sm_90a build; 80 when the portable image runs,
 * on a GPU other than Hopper or under a forced PTX JIT). */
int hisa__k_hopper_image(void) {
    cudaFuncAttributes fa;
    if (cudaFuncGetAttributes(&fa, score_wg_kernel<64, HISA_WG_F16>) != cudaSuccess) {
        cudaGetLastError(); /* not sticky: the answer is "no Hopper code" */
        return 0;
    }
    return fa.ptxVersion >= 90;
}

/* Called by hisa_k_init (device.cu) for every runtime, with its device current. */
int hisa__k_select_init(hisa_k_device *dev) {
    int err = set_smem((const void *)select_kernel, kFinishDynSmem);
    if (!err && dev->hopper) { /* the Hopper scorer exists only in the sm_90a image */
        err = wg_init_all<HISA_WG_F16>(dev);
        if (!err) err = wg_init_all<HISA_WG_E4M3>(dev);
    }
    if (!err) err = score_init<SRC_FP8>(dev);
    if (!err) err = score_init<SRC_BF16>(dev);
    if (!err) err = score_init<SRC_MEANS>(dev);
    return err;
}

extern "C" int hisa_k_select(void *stream, const hisa_k_select_params *p) {
    if (!p || !p->q || !p->w || !p->out || !p->scratch.scores || !p->scratch.block_scores ||
        !p->scratch.blocks || !p->scratch.work)
        return HISA_K_EINVAL;
    const hisa_k_cache &c = p->cache;
    if (!hisa__k_select_shape_ok(c, p->layer, p->top_blocks, p->topk)) return HISA_K_EINVAL;
    if (p->next_n < 1 || p->next_n > HISA_K_NEXT_N_MAX || p->q_format < HISA_K_Q_F32 || p->q_format > HISA_K_Q_FP8)
        return HISA_K_EINVAL;
    if (p->n_rows < 1 || p->n_rows % p->next_n || p->n_rows > p->scratch_rows) return HISA_K_ELIMIT;
    if (p->max_context < 1 || p->max_context > HISA_CONTEXT_MAX) return HISA_K_ELIMIT;
    if (p->chunk) {
        const int err = hisa__k_chunks_check(p->chunks, c, p->max_context, p->scratch_rows); /* checks n first */
        if (err) return err;
        if (p->next_n != 1 || p->chunks.row0[p->chunks.n] != p->n_rows) return HISA_K_EINVAL;
    } else {
        if (p->n_rows / p->next_n > HISA_BATCH_MAX) return HISA_K_ELIMIT;
        for (int i = 0; i < p->n_rows / p->next_n; i++)
            if (p->seq_ids[i] < 0 || p->seq_ids[i] >= c.max_seqs) return HISA_K_EINVAL;
    }
    if ((int64_t)p->scratch_rows * hisa_k_work_row_words(p->max_context) > p->scratch.work_words) return HISA_K_EINVAL;
    if (p->mode != HISA_K_MODE_HISA && p->mode != HISA_K_MODE_FLAT) return HISA_K_EINVAL;
    if (p->dev.sm_count < 1) return HISA_K_EINVAL; /* hisa_k_init not run */
    int err = HISA_K_OK;
    cudaStream_t s = (cudaStream_t)stream;
    /* Hopper scorer for fp8 keys when it was asked for at open, and for fp8 queries over them
     * with fp8_native unless only the portable kernels run (e4m3 operands: it is the one scorer
     * with them; the portable kernels compute exactly); rows whose whole top-k fits one CTA's
     * shared memory (every HISA-mode token row: n <= m * B; every block row: nb - 2 <
     * pages_per_seq) take select_smem instead of the split top-k */
    const bool native = p->fp8_native && !p->dev.all_portable && p->q_format == HISA_K_Q_FP8 &&
                        c.key_format == HISA__FMT_FP8;
    const bool hopper = p->dev.path == HISA_K_PATH_HOPPER && c.key_format == HISA__FMT_FP8; /* (native goes first) */
    const bool smem_blocks = c.pages_per_seq <= kSmemSelCap;
    const bool smem_tokens = p->mode == HISA_K_MODE_HISA && (int64_t)p->top_blocks * c.block_size <= kSmemSelCap;
    /* next_n > 1 and prefill chunks make more rows than one launch group holds: groups of 256
     * rows in turn */
    for (int row0 = 0; row0 < p->n_rows; row0 += HISA_K_ROWS_PER_LAUNCH) {
        sel_args a;
        a.p = *p;
        a.row0 = row0;
        a.n_rows = min(HISA_K_ROWS_PER_LAUNCH, p->n_rows - row0);
        a.raw_scores = nullptr;
        a.raw_stride = 0;
        a.raw_n = 0;
        a.work_row_words = hisa_k_work_row_words(p->max_context);
        a.cand_cap = (int)hisa_k_cand_cap(p->max_context);
        /* the chain's first kernel follows foreign work (key writes, table updates): no PDL */
        if (p->mode == HISA_K_MODE_HISA) {
            a.stage = STAGE_BLOCKS;
            a.hist = !smem_blocks;
            if ((err = launch_score<SRC_MEANS>(a, s, false))) return err;
            if ((err = smem_blocks ? launch_select_smem(a, s) : launch_topk(a, c.pages_per_seq, s))) return err;
        }
        a.stage = STAGE_TOKENS;
        a.hist = !smem_tokens && !p->stop_after_scoring; /* no split top-k to read and clear them */
        const bool pdl = p->mode == HISA_K_MODE_HISA;
        if (native) err = launch_score_wg<HISA_WG_E4M3>(a, s, pdl);
        else if (hopper) err = launch_score_wg<HISA_WG_F16>(a, s, pdl);
        else err = c.key_format == HISA__FMT_FP8 ? launch_score<SRC_FP8>(a, s, pdl) : launch_score<SRC_BF16>(a, s, pdl);
        if (err) return err;
        if (p->stop_after_scoring) continue;
        if (smem_tokens) {
            if ((err = launch_select_smem(a, s))) return err;
            continue;
        }
        /* in HISA mode no row scores more than m * B entries */
        int64_t max_len = p->mode == HISA_K_MODE_HISA ? min((int64_t)p->max_context, (int64_t)p->top_blocks * c.block_size)
                                                    : (int64_t)p->max_context;
        if ((err = launch_topk(a, max_len, s))) return err;
    }
    return HISA_K_OK;
}

extern "C" int hisa_k_topk(void *stream, const hisa_k_topk_params *tp) {
    if (!tp || !tp->scores || !tp->work || !tp->out) return HISA_K_EINVAL;
    if (tp->k < 1 || tp->k > HISA_TOPK_MAX || tp->n < 0 || tp->n > HISA_CONTEXT_MAX || tp->stride < tp->n)
        return HISA_K_EINVAL;
    if (tp->n_rows < 1 || tp->n_rows > HISA_K_ROWS_PER_LAUNCH) return HISA_K_ELIMIT;
    if (tp->dev.sm_count < 1) return HISA_K_EINVAL; /* hisa_k_init not run */
    int err = HISA_K_OK;
    cudaStream_t s = (cudaStream_t)stream;
    sel_args a;
    memset(&a, 0, sizeof a);
    a.p.topk = tp->k;
    a.p.out = tp->out;
    a.p.scratch.work = tp->work;
    a.p.dev = tp->dev;
    a.p.next_n = 1;
    a.stage = STAGE_RAW;
    a.row0 = 0;
    a.n_rows = tp->n_rows;
    a.raw_scores = tp->scores;
    a.raw_stride = tp->stride;
    a.raw_n = tp->n;
    a.work_row_words = hisa_k_work_row_words(tp->n);
    a.cand_cap = (int)hisa_k_cand_cap(tp->n);
    /* the histogram is a plain streaming pass: many small slices (several CTAs per SM) */
    const int want = (8 * tp->dev.sm_count + tp->n_rows - 1) / tp->n_rows;
    const int X = max(1, min(want, (tp->n + 2047) / 2048));
    hist_kernel<<<dim3(X, tp->n_rows), kSplitThreads, 0, s>>>(a, X);
    if ((err = hisa__k_launch_status())) return err;
    return launch_topk(a, tp->n, s);
}
