/* layout.h: the one definition of the paged key cache's bytes, for C and CUDA alike.
 *
 * One page = one HISA block of B tokens; a page id indexes every layer's pool. Per layer:
 *   keys      [n_pages][page_bytes]     fp8:  B x 128 e4m3 codes, then B fp32 scales
 *                                       bf16: B x 128 bf16
 *   means     [n_pages][128] bf16       bf16(sum / count) of the block's written tokens
 *   masks     [n_pages][B / 32] u32     bit o: offset o of the page was written
 *   payload   [n_pages * B][payload_bytes], indexed by slot = page * B + offset
 * and per (layer, sequence) one running sum, of the block that sequence last wrote:
 *   sums      [max_seqs][128] fp32, sum_pages [max_seqs] i32 (the page it sums; -1 none)
 * A block's sum is, by definition, the fp32 sum of its written tokens' dequantized keys added in
 * offset order from 0; appending a token above every written offset extends it exactly, any other
 * write recomputes it from the stored keys. So a complete block needs only its mean, and one
 * running sum per sequence suffices (kvcache/host.c and kernels/cache.cu hold the rule).
 *
 * Every offset and size of that layout is one of the functions below; no other file writes
 * them out. Layer-major index: layer * n + i for any per-layer array. */
#ifndef HISA_LAYOUT_H
#define HISA_LAYOUT_H

#include <stdint.h>

#include "limits.h"

#if defined(__CUDACC__)
#define HISA__LAYOUT_FN static __host__ __device__ __forceinline__
#else
#define HISA__LAYOUT_FN static inline
#endif

/* Key formats: the values of hisa.h's HISA_KEY_FP8 / HISA_KEY_BF16 (asserted in internal.h). */
enum { HISA__FMT_FP8 = 1, HISA__FMT_BF16 = 2 };

HISA__LAYOUT_FN int64_t hisa__page_bytes(int32_t B, int32_t fmt) {
    return fmt == HISA__FMT_FP8 ? (int64_t)B * (HISA_D + 4) : (int64_t)B * HISA_D * 2;
}
/* fp8: the 128 codes of token `off`, and its scale. */
HISA__LAYOUT_FN int64_t hisa__code_offset(int32_t off) { return (int64_t)off * HISA_D; }
HISA__LAYOUT_FN int64_t hisa__scale_offset(int32_t B, int32_t off) { return (int64_t)B * HISA_D + (int64_t)off * 4; }
/* bf16: the 128 values of token `off`. */
HISA__LAYOUT_FN int64_t hisa__bf16_offset(int32_t off) { return (int64_t)off * HISA_D * 2; }
HISA__LAYOUT_FN int32_t hisa__mask_words(int32_t B) { return B / 32; }
/* Element `i` (page, or sequence) of a layer-major per-layer array of n per layer. */
HISA__LAYOUT_FN int64_t hisa__layer_index(int32_t layer, int64_t n, int64_t i) { return (int64_t)layer * n + i; }
/* The physical slot of a position held in `page`: what HISA_SLOTS outputs, and the payload row. */
HISA__LAYOUT_FN int64_t hisa__slot(int32_t page, int32_t B, int32_t off) { return (int64_t)page * B + off; }
HISA__LAYOUT_FN int64_t hisa__payload_offset(int32_t layer, int32_t n_pages, int32_t B, int64_t slot,
                                             int32_t payload_bytes) {
    return ((int64_t)layer * n_pages * B + slot) * payload_bytes;
}
HISA__LAYOUT_FN int32_t hisa__blocks_of(int64_t len, int32_t B) { return (int32_t)((len + B - 1) / B); }
HISA__LAYOUT_FN int hisa__mask_bit(const uint32_t *mask, int32_t off) { return (int)((mask[off >> 5] >> (off & 31)) & 1u); }

/* The kept-block rule of SPEC 4 (HISA, nb > m), its fixed part: `kept` [m] holds the m-2 ranked
 * middle blocks at kept[1 .. m-2]; blocks 0 and last take the two ends, so kept is ascending
 * when the middle is. Every backend calls this; none writes the rule out. */
HISA__LAYOUT_FN void hisa__keep_forced(int32_t *kept, int32_t m, int32_t last) {
    kept[0] = 0;
    kept[m - 1] = last;
}

#undef HISA__LAYOUT_FN
#endif /* HISA_LAYOUT_H */
