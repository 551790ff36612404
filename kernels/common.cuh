/* common.cuh: device helpers shared by hisa's kernels (number formats, the score order, error
 * codes). Why a header: cache.cu and select.cu must quantize, dequantize and rank bit-for-bit
 * the way runtime/cpu_backend.c and kvcache/quant.c do, so those rules live in one place.
 * Invariants: every conversion here is exact or round-to-nearest-even like its C twin; no
 * function here reads memory other than its arguments. Only .cu files include this. */
#ifndef HISA_KERNELS_COMMON_CUH
#define HISA_KERNELS_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "../runtime/hisa.h"
#include "kernels.h"

/* launcher error codes, kept in step with hisa.h */
#define HISA_K_OK 0
#define HISA_K_EINVAL HISA_EINVAL
#define HISA_K_ELIMIT HISA_ELIMIT
#define HISA_K_EDEVICE HISA_EDEVICE

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

#define HISA_K_NAN_SCORE __uint_as_float(0x7fffffffu) /* a padding candidate: key 0, never chosen */

#endif /* HISA_KERNELS_COMMON_CUH */
