/* model.c: see model.h. */
#include "model.h"

#include <math.h>
#include <string.h>

#include "../runtime/hisa.h"

/* The fuzzer keeps its own checks out of coverage: their loops would dominate its time. */
#if defined(__clang__)
#define HISA_TMODEL_NOCOV __attribute__((no_sanitize("coverage")))
#else
#define HISA_TMODEL_NOCOV
#endif

HISA_TMODEL_NOCOV float hisa_tmodel_e4m3_value(int code) {
    int e = code >> 3, m = code & 7;
    return e == 0 ? (float)m * 0x1p-9f : ldexpf((float)(8 + m), e - 10);
}

HISA_TMODEL_NOCOV void hisa_tmodel_dequant(int32_t fmt, int32_t B, const uint8_t *page, int32_t off,
                                           float *out) {
    static float table[256];
    static int ready;
    if (!ready) {
        for (int c = 0; c < 256; c++) {
            float v = (c & 0x7f) == 0x7f ? NAN : hisa_tmodel_e4m3_value(c & 0x7f);
            table[c] = (c & 0x80) ? -v : v;
        }
        ready = 1;
    }
    if (fmt == HISA_KEY_FP8) {
        float scale;
        memcpy(&scale, page + (int64_t)B * 128 + (int64_t)off * 4, 4);
        for (int d = 0; d < 128; d++) out[d] = table[page[(int64_t)off * 128 + d]] * scale;
    } else {
        for (int d = 0; d < 128; d++) {
            uint16_t b;
            memcpy(&b, page + ((int64_t)off * 128 + d) * 2, 2);
            uint32_t u = (uint32_t)b << 16;
            memcpy(&out[d], &u, 4);
        }
    }
}
