/* quant.c: the number formats of the key cache, bit-exact with the CUDA kernels.
 *
 * bf16: round to nearest even. e4m3fn: 4 exponent bits (bias 7), 3 mantissa bits, no infinity,
 * 0x7f/0xff NaN, largest finite 448; encoding rounds to nearest even and saturates to +-448
 * (the same as cuda_fp8.h's __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)). */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "kvcache.h"

uint16_t hisa__bf16_from_f32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float hisa__bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

uint8_t hisa__e4m3_from_f32(float x) {
    if (isnan(x)) return 0x7f;
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (a >= HISA_FP8_MAX) return sign | 0x7e;
    if (a < 0x1p-6f) {
        /* subnormal range: multiples of 2^-9; a result of 8 is 2^-6, which is code 8 too */
        float q = rintf(a * 512.0f);
        return sign | (uint8_t)q;
    }
    int e2;
    frexpf(a, &e2); /* a = f * 2^e2, f in [0.5, 1): the exponent of a is e2 - 1 */
    int e = e2 - 1;
    float q = rintf(ldexpf(a, 3 - e)); /* mantissa with 3 fraction bits: 8..16 */
    if (q >= 16.0f) {
        q = 8.0f;
        e++;
    }
    int code = ((e + 7) << 3) | ((int)q - 8);
    assert(code >= 8);
    if (code > 0x7e) code = 0x7e;
    return sign | (uint8_t)code;
}

float hisa__e4m3_to_f32(uint8_t c) {
    int e = (c >> 3) & 15, m = c & 7;
    float v;
    if ((c & 0x7f) == 0x7f)
        v = NAN;
    else if (e == 0)
        v = ldexpf((float)m, -9);
    else
        v = ldexpf(1.0f + (float)m / 8.0f, e - 7);
    return (c & 0x80) ? -v : v;
}

void hisa__quantize_fp8(const float *x, uint8_t *codes, float *scale) {
    assert(x && codes && scale);
    float amax = 0.0f;
    for (int d = 0; d < HISA_D; d++) amax = fmaxf(amax, fabsf(x[d]));
    float s = amax / HISA_FP8_MAX;
    if (!(s > 0.0f)) s = 1.0f; /* amax 0, or so small that amax / 448 underflows: codes are 0 */
    for (int d = 0; d < HISA_D; d++) codes[d] = hisa__e4m3_from_f32(x[d] / s);
    *scale = s;
    assert(*scale > 0.0f);
}
