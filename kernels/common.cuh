/* common.cuh: device helpers shared by hisa's kernels (number formats, the score order, error
 * the fp16 scaling of queries). Why a header: cache.cu, decode/select.cu and prefill/prefill.cu
 * must quantize, dequantize and rank bit-for-bit the way kvcache/quant.c, kvcache/host.c and
 * runtime/cpu_backend.c do, and score queries the same way, so those rules live in one place.
 * Invariants: every conversion here is exact or round-to-nearest-even like its C twin; no
 * function here reads memory other than its arguments. Only .cu files include this. */
#ifndef HISA_KERNELS_COMMON_CUH
#define HISA_KERNELS_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels.h"

/* HISA_K_SM90: 1 where the code being compiled may use Hopper's instructions (wgmma, bulk copies,
 * mbarrier transaction counts, griddepcontrol): the host pass and sm_90 device passes. The sm_80
 * and compute_80 images (the portable build for Ampere, Ada and Blackwell cards) compile the
 * Hopper-only kernels as traps, which the host never launches there (hisa_k_device.hopper = 0). */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define HISA_K_SM90 0
#else
#define HISA_K_SM90 1
#endif
/* HISA_K_SM90A: the sm_90a feature set (wgmma, bulk copies), which no other target has (an extra
 * sm_100 target compiles the Hopper-only kernels as traps too); griddepcontrol needs only 9.0.
 * Extra targets of compute capability 9.x must be sm_90a / compute_90a: a plain compute_90 image
 * would hold the traps yet report ptxVersion 90, which hisa_k_init takes for Hopper code. */
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define HISA_K_SM90A 0
#else
#define HISA_K_SM90A 1
#endif

/* Four e4m3 codes (one 32-bit word) to two fp16x2 words (codes 0,1 and 2,3), exactly. On sm_89
 * and newer one conversion per pair that takes the word's 16-bit halves as they are: the shift
 * and mask of the intrinsic form cost the decode and prefill scorers ~48 instructions per tile
 * (SASS, bench/NOTES-prefill.md); elsewhere (sm_80) the intrinsic's software conversion. */
__device__ __forceinline__ void hisa__k_e4m3x4_to_f16x4(uint32_t v, uint32_t &lo, uint32_t &hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    asm("{\n.reg .b16 l, h;\nmov.b32 {l, h}, %2;\ncvt.rn.f16x2.e4m3x2 %0, l;\ncvt.rn.f16x2.e4m3x2 %1, h;\n}\n"
        : "=r"(lo), "=r"(hi)
        : "r"(v));
#else
    const __half2_raw l = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(v & 0xffffu), __NV_E4M3);
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)(v >> 16), __NV_E4M3);
    lo = (uint32_t)l.x | ((uint32_t)l.y << 16);
    hi = (uint32_t)h.x | ((uint32_t)h.y << 16);
#endif
}

/* The per-device setup of each kernel file (shared-memory limits, occupancy), run by hisa_k_init
 * (device.cu) for every runtime with its device current. */
int hisa__k_select_init(hisa_k_device *dev);
int hisa__k_hopper_image(void); /* 1: the loaded decode kernels are sm_90 code (select.cu) */
int hisa__k_prefill_init(void);

/* Kernel parameters are passed by value (graph-replayable launches); the classic limit, which
 * every target of the build has, bounds the argument structs (static asserts at each). */
#define HISA_K_PARAM_BYTES_MAX 4096

/* A launch error (bad configuration) is reported by the launcher; it never syncs. */
static inline int hisa__k_launch_status(void) {
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? HISA_K_OK : HISA_K_EDEVICE;
}

/* SPEC fp8: e4m3fn, RNE, saturating to +-448 (cuda_fp8's SATFINITE is exactly kvcache/quant.c). */
__device__ __forceinline__ uint8_t hisa__k_e4m3_from_f32(float x) {
    return (uint8_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
}
__device__ __forceinline__ float hisa__k_e4m3_to_f32(uint8_t c) {
    __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)c, __NV_E4M3);
    return __half2float(__half(h)); /* exact: every e4m3 value is an fp16 value; 0x7f is NaN */
}
__device__ __forceinline__ uint16_t hisa__k_bf16_from_f32(float x) {
    if (isnan(x)) { /* quant.c: keep the payload's top bits, set the quiet bit */
        uint32_t u = __float_as_uint(x);
        return (uint16_t)((u >> 16) | 0x40);
    }
    __nv_bfloat16 b = __float2bfloat16_rn(x);
    return *reinterpret_cast<uint16_t *>(&b);
}
__device__ __forceinline__ float hisa__k_bf16_to_f32(uint16_t b) {
    return __uint_as_float((uint32_t)b << 16);
}

/* Order-preserving image of a score (cpu_backend.c order_key): NaN lowest (0), -0 == +0. */
__device__ __forceinline__ uint32_t hisa__k_order_key(float x) {
    uint32_t u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0u;
    if (u == 0x80000000u) u = 0u;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* fp8 keys are scored with fp16 operands: e4m3 codes convert exactly, and a query head (bf16
 * values) is scaled by 2^shift so its largest |element| lies in [2^14, 2^15), exact in fp16
 * except elements below 2^-24 of that largest (whose products are below fp32 resolution of the
 * head's dot anyway); the weight takes 2^-shift. amax 0 or not finite: shift 0. The clamp keeps
 * 2^shift and 2^-shift normal floats. */
__device__ __forceinline__ int hisa__k_q_f16_shift(float amax) {
    if (!(amax > 0.0f) || !(amax <= 3.0e38f)) return 0;
    int ex;
    (void)frexpf(amax, &ex); /* amax in [2^(ex-1), 2^ex) */
    return min(max(15 - ex, -120), 120);
}

/* The launchers' one check of a cache description: what their indexing relies on (the
 * configuration's rules themselves are checked once, at plan time, by runtime/plan.c). */
static inline bool hisa__k_cache_ok(const hisa_k_cache &c) {
    return c.keys && c.sums && c.sum_pages && c.means && c.masks && c.page_table && c.seq_len && c.n_layers >= 1 &&
           c.n_pages >= 1 && c.block_size >= HISA_BLOCK_MIN && c.block_size <= HISA_BLOCK_MAX &&
           (c.block_size & (c.block_size - 1)) == 0 && c.max_seqs >= 1 && c.pages_per_seq >= 1 &&
           c.n_heads >= 1 && c.n_heads <= HISA_HEADS_MAX &&
           (c.key_format == HISA__FMT_FP8 || c.key_format == HISA__FMT_BF16);
}
/* ... and of a selection's shape: the caps its fixed-size arrays are sized by. */
static inline bool hisa__k_select_shape_ok(const hisa_k_cache &c, int layer, int top_blocks, int topk) {
    return hisa__k_cache_ok(c) && layer >= 0 && layer < c.n_layers && topk >= 1 && topk <= HISA_TOPK_MAX &&
           top_blocks >= 2 && top_blocks <= HISA_TOP_BLOCKS_MAX;
}
/* ... and of a prefill chunk table (kernels.h): HISA_K_OK, HISA_K_EINVAL for a malformed one
 * (count, rows not increasing from 0, a sequence out of range, t0 < 0), HISA_K_ELIMIT for rows
 * or positions past the caps (rows: HISA_PREFILL_MAX and scratch_rows; positions: max_context
 * and the page table). */
static inline int hisa__k_chunks_check(const hisa_k_chunks &ch, const hisa_k_cache &c, int64_t max_context,
                                       int64_t scratch_rows) {
    if (ch.n < 1 || ch.n > HISA_K_CHUNKS_MAX || ch.row0[0] != 0) return HISA_K_EINVAL;
    for (int i = 0; i < ch.n; i++) {
        const int64_t n_q = (int64_t)ch.row0[i + 1] - ch.row0[i], end = (int64_t)ch.t0[i] + n_q;
        if (n_q < 1 || ch.seq[i] < 0 || ch.seq[i] >= c.max_seqs || ch.t0[i] < 0) return HISA_K_EINVAL;
        if (end > max_context || end > (int64_t)c.pages_per_seq * c.block_size) return HISA_K_ELIMIT;
    }
    const int64_t rows = ch.row0[ch.n];
    return rows > HISA_PREFILL_MAX || rows > scratch_rows ? HISA_K_ELIMIT : HISA_K_OK;
}
/* The last i in [0, n) with a[i] <= x, for a ascending with a[0] <= x (a chunk table's row0, a
 * launch's unit prefix): binary search, log2(HISA_K_CHUNKS_MAX) steps. */
__host__ __device__ __forceinline__ int hisa__k_last_le(const int32_t *a, int n, int x) {
    int lo = 0, hi = n - 1;
    while (lo < hi) { /* a[lo] <= x */
        const int mid = (lo + hi + 1) >> 1;
        if (a[mid] <= x) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* Query values (SPEC "Queries") from a query tensor in format fmt, at element e of the tensor
 * (4 or 2 consecutive elements; e a multiple of 4 or 2): f32 as given (the caller rounds to bf16),
 * bf16 and e4m3 codes exactly (every e4m3 value is a bf16 value, so the bf16 rounding after this
 * is the identity for them). */
__device__ __forceinline__ float4 hisa__k_q_load4(const void *q, int64_t e, int fmt) {
    if (fmt == HISA_K_Q_F32) return __ldg(reinterpret_cast<const float4 *>(static_cast<const float *>(q) + e));
    if (fmt == HISA_K_Q_BF16) {
        uint2 u = __ldg(reinterpret_cast<const uint2 *>(static_cast<const uint16_t *>(q) + e));
        return make_float4(hisa__k_bf16_to_f32((uint16_t)(u.x & 0xffffu)), hisa__k_bf16_to_f32((uint16_t)(u.x >> 16)),
                           hisa__k_bf16_to_f32((uint16_t)(u.y & 0xffffu)), hisa__k_bf16_to_f32((uint16_t)(u.y >> 16)));
    }
    uint32_t c = __ldg(reinterpret_cast<const uint32_t *>(static_cast<const uint8_t *>(q) + e));
    return make_float4(hisa__k_e4m3_to_f32((uint8_t)(c & 0xffu)), hisa__k_e4m3_to_f32((uint8_t)((c >> 8) & 0xffu)),
                       hisa__k_e4m3_to_f32((uint8_t)((c >> 16) & 0xffu)), hisa__k_e4m3_to_f32((uint8_t)(c >> 24)));
}
__device__ __forceinline__ float2 hisa__k_q_load2(const void *q, int64_t e, int fmt) {
    if (fmt == HISA_K_Q_F32) return __ldg(reinterpret_cast<const float2 *>(static_cast<const float *>(q) + e));
    if (fmt == HISA_K_Q_BF16) {
        uint32_t u = __ldg(reinterpret_cast<const uint32_t *>(static_cast<const uint16_t *>(q) + e));
        return make_float2(hisa__k_bf16_to_f32((uint16_t)(u & 0xffffu)), hisa__k_bf16_to_f32((uint16_t)(u >> 16)));
    }
    uint16_t c = __ldg(reinterpret_cast<const unsigned short *>(static_cast<const uint8_t *>(q) + e));
    return make_float2(hisa__k_e4m3_to_f32((uint8_t)(c & 0xffu)), hisa__k_e4m3_to_f32((uint8_t)(c >> 8)));
}

#define HISA_K_NAN_SCORE __uint_as_float(0x7fffffffu) /* a padding candidate: key 0, never chosen */

#endif /* HISA_KERNELS_COMMON_CUH */
