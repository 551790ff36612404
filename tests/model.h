/* model.h: independent twins of the cache's number formats, written from docs/SPEC.md and not
 * from kvcache/quant.c, for the checks that must not trust the code they check (the soak's model,
 * the API fuzzer's invariants). No test-harness dependency: the fuzzers link it too. */
#ifndef HISA_TEST_MODEL_H
#define HISA_TEST_MODEL_H

#include <stdint.h>

/* Positive e4m3fn value of a code 0..0x7e: 2^-9 m for exponent 0, else (8 + m) 2^(e - 10). */
float hisa_tmodel_e4m3_value(int code);
/* Token `off` of a page image (B tokens, key format fmt) dequantized into 128 floats. */
void hisa_tmodel_dequant(int32_t fmt, int32_t B, const uint8_t *page, int32_t off, float *out);

#endif
