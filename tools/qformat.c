/* qformat.c: the query formats of the tools (SPEC "Queries"): the --query-format option, and
 * the host-side conversions `hisa stream` applies to its synthetic queries. The tools include
 * only the public header, so these are the tool's own converters; they follow SPEC's rules
 * (and match the library's number formats bit for bit):
 *   bf16: round to nearest even (a NaN stays a quiet NaN);
 *   e4m3fn: 4 exponent bits (bias 7), 3 mantissa bits, no infinity, 0x7f / 0xff NaN, largest
 *     finite 448; encoding rounds to nearest even and saturates at +-448;
 *   an fp8 query: per head scale = amax / 448 (1 where that is not positive), codes of q / scale,
 *     and the scale folded into the head's weight (w' = w * scale), as act_quant does. */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "tools.h"

#define D HISA_HEAD_DIM
#define E4M3_MAX 448.0f

static const tool_choice k_q_formats[] = {
    {"f32", "float32, the default", HISA_Q_F32},
    {"bf16", "uint16 bf16 bits", HISA_Q_BF16},
    {"fp8", "uint8 e4m3fn codes, scale folded into the weights", HISA_Q_FP8}};
static const tool_choice k_fp8_mma[] = {
    {"exact", "the default: scores within SPEC's agreement rule", HISA_FP8_MMA_EXACT},
    {"native", "CUDA multiplies fp8 queries by fp8 keys on Hopper's e4m3 tensor cores: faster, outside that "
               "rule; hisa.h", HISA_FP8_MMA_NATIVE}};

int tool_parse_q_format(const char *cmd, const char *s, int32_t *out) {
    return tool_parse_choice(cmd, "query-format", s, k_q_formats, TOOL_N_CHOICES(k_q_formats), out);
}
int tool_parse_fp8_mma(const char *cmd, const char *s, int32_t *out) {
    return tool_parse_choice(cmd, "fp8-mma", s, k_fp8_mma, TOOL_N_CHOICES(k_fp8_mma), out);
}
const char *tool_fp8_mma_name(int32_t fp8_mma) { return tool_choice_name(k_fp8_mma, TOOL_N_CHOICES(k_fp8_mma), fp8_mma); }
const char *tool_q_format_name(int32_t q_format) { return tool_choice_name(k_q_formats, TOOL_N_CHOICES(k_q_formats), q_format); }

size_t tool_q_format_bytes(int32_t q_format) {
    return q_format == HISA_Q_BF16 ? 2 : q_format == HISA_Q_FP8 ? 1 : 4;
}

uint16_t tool_bf16_from_f32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* nearest, ties to the even upper half */
    return (uint16_t)(u >> 16);
}

float tool_bf16_to_f32(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

uint8_t tool_e4m3_from_f32(float x) {
    if (isnan(x)) return 0x7f;
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (a >= E4M3_MAX) return sign | 0x7e;
    if (a < 0x1p-6f) /* subnormals: multiples of 2^-9 (code 8, 2^-6, is the first normal) */
        return sign | (uint8_t)rintf(a * 512.0f);
    int e2;
    frexpf(a, &e2);                    /* a in [2^(e2-1), 2^e2) */
    int e = e2 - 1;
    float m = rintf(ldexpf(a, 3 - e)); /* 8..16: the significand with 3 fraction bits */
    if (m >= 16.0f) m = 8.0f, e++;     /* rounded up into the next binade */
    int code = ((e + 7) << 3) | ((int)m - 8);
    return sign | (uint8_t)(code > 0x7e ? 0x7e : code);
}

float tool_e4m3_to_f32(uint8_t c) {
    int e = (c >> 3) & 15, m = c & 7;
    float v;
    if ((c & 0x7f) == 0x7f) v = NAN;
    else if (e == 0) v = ldexpf((float)m, -9);
    else v = ldexpf(1.0f + (float)m / 8.0f, e - 7);
    return (c & 0x80) ? -v : v;
}

void tool_q_to_bf16(const float *q, int64_t n, uint16_t *out) {
    for (int64_t i = 0; i < n; i++) out[i] = tool_bf16_from_f32(q[i]);
}

void tool_q_to_fp8(const float *q, const float *w, int64_t n_heads, uint8_t *codes,
                   float *w_out) {
    for (int64_t h = 0; h < n_heads; h++) {
        const float *qh = q + h * D;
        float amax = 0.0f;
        for (int d = 0; d < D; d++) amax = fmaxf(amax, fabsf(qh[d]));
        float s = amax / E4M3_MAX;
        if (!(s > 0.0f)) s = 1.0f; /* a zero head (or one whose scale underflows): codes 0 */
        for (int d = 0; d < D; d++) codes[h * D + d] = tool_e4m3_from_f32(qh[d] / s);
        w_out[h] = w[h] * s;
    }
}
