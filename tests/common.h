/* common.h: what several test files share: the SPEC's agreement rule, data generators, and an
 * independent brute-force selection (double precision, written from the SPEC, not from the
 * backend's code) to hold the CPU reference itself to account. */
#ifndef HISA_TEST_COMMON_H
#define HISA_TEST_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "../runtime/hisa.h"
#include "test.h"

/* SPEC "When two backends agree". ids live in [0, n_ids); score[id] is the reference score;
 * is_cand (NULL: all) marks the candidates; ref and got hold k entries, -1 padded at the end.
 * eps = 1e-4 * max |score| over the candidates. Returns 1 when got agrees with ref; otherwise 0
 * and a reason in why. */
int hisa_agree(const float *score, int32_t n_ids, const uint8_t *is_cand, const int32_t *ref,
               const int32_t *got, int32_t k, char *why, size_t why_len);
/* The same rule with eps widened by eps_extra (>= 0): for arithmetic known to round coarser
 * than SPEC's (hisa.h's HISA_FP8_MMA_NATIVE), judged with its own error bound added. */
int hisa_agree_tol(const float *score, int32_t n_ids, const uint8_t *is_cand, const int32_t *ref,
                   const int32_t *got, int32_t k, float eps_extra, char *why, size_t why_len);

/* SPEC 4's kept blocks of a HISA row with nb > m blocks, judged: blocks [m] holds 0 first and
 * nb - 1 last, ascending, and its middle m - 2 agree (the rule above, with J in place of I) with
 * the best m - 2 of blocks 1 .. nb - 2 by J [nb] (ties to the lower block). Returns 1 or 0 and a
 * reason in why. The reference middle is sorted here, independently of the backends' top-k. */
int hisa_agree_blocks(const float *J, int32_t nb, int32_t m, const int32_t *blocks, char *why, size_t why_len);

/* Keys for positions [pos0, pos0 + n) of a structured context: topic segments (length 16..400)
 * of a topic vector plus noise, a few large sink tokens at positions 0..3. Same seed, same
 * positions: same keys, whatever the chunking. */
void hisa_tgen_keys(uint64_t seed, int64_t pos0, int32_t n, float *keys /* [n,128] */);
/* A query aligned with the topic at position `near` of the keys hisa_tgen_keys(key_seed, ..)
 * writes (or random when near < 0), its noise and weights from seed; weights mostly positive.
 * q [H,128], w [H]. hisa_tgen_query(seed, ..) is key_seed = seed: aligned with the keys only
 * where they were written with that same seed (elsewhere its topic is one direction more). */
void hisa_tgen_query_keys(uint64_t key_seed, uint64_t seed, int32_t H, int64_t near, float *q, float *w);
void hisa_tgen_query(uint64_t seed, int32_t H, int64_t near, float *q, float *w);
/* The fp8 form of H query heads f [H,128] with weights w [H] (SPEC "Queries", DeepSeek's
 * act_quant): codes [H,128] and w8 [H] = w * scale from tool_q_to_fp8, and vals [H,128] = the
 * codes' values (what the fp8 query is). vals may be f and w8 may be w. */
void hisa_tquant_query(const float *f, const float *w, int32_t H, uint8_t *codes, float *vals, float *w8);

/* The score error hisa.h's HISA_FP8_MMA_NATIVE may add to a token with dequantized key `key`
 * for query values q [H,128] and weights w [H]: Hopper's fp8 MMA truncates its fp32 accumulator
 * to 13 fraction bits after each k32 step, so a head's dot over 4 steps is off by under
 * 4 * 2^-13 * max |partial sum| <= 2^-11 * sum_d |q_d k_d|; ReLU does not enlarge it, the
 * weights scale it. Twice that, for rounding inside a step: 2^-10 * sum_h |w_h| sum_d |q_hd k_d|.
 * (On the H200 the largest error seen is 0.04 of it: bench/NOTES-prefill.md.) */
double hisa_t_native_bound(const float *q, const float *w, int32_t H, const float *key);
/* The SPEC score of a key in double, for query values q [H,128] already in their value form
 * (bf16 or e4m3 values; not rounded here) and weights w [H]. */
double hisa_t_score(const float *q, const float *w, int32_t H, const float *key);

/* Independent brute force, from the SPEC, in double precision over the keys as the cache
 * stores them (dequantized by the caller into deq [n,128], block means into means [nb,128]).
 * out [k] ascending, -1 padded; scores I [n] (double, stored as float) for the agreement rule. */
void hisa_brute_select(const float *deq, const float *means, int32_t n, int32_t B, int32_t m,
                       int32_t k, int32_t H, const float *q, const float *w, int flat,
                       int32_t *out, float *I, float *J);

/* The same configuration opened on the CPU reference and on CUDA device 0, for the GPU tests.
 * 1: both open; 0: no CUDA device (both closed; the caller SKIPs); -1: a failure, reported. */
int hisa_tpair_open(hisa_test_ctx *ctx, hisa_config cfg, hisa_runtime **cpu, hisa_runtime **gpu);

/* A GPU test run on both kernel paths, whichever AUTO picks: `name_portable` on
 * HISA_KERNELS_PORTABLE (the mma.sync decode scorer, for GPUs without wgmma/TMA; prefill through
 * the decode kernels) and `name_hopper` on HISA_KERNELS_HOPPER (warpgroup MMA fed by bulk copies;
 * prefill on prefill.cu's wgmma kernels). hisa_tpair_open opens its CUDA runtime with
 * hisa_t_kernels. */
extern int32_t hisa_t_kernels;
#define HISA_GPU_TEST(name)                                              \
    static void hisa_gpu_body_##name(hisa_test_ctx *ctx);                \
    HISA_TEST(name##_portable) {                                         \
        hisa_t_kernels = HISA_KERNELS_PORTABLE;                          \
        hisa_gpu_body_##name(ctx);                                       \
        hisa_t_kernels = HISA_KERNELS_AUTO;                              \
    }                                                                    \
    HISA_TEST(name##_hopper) {                                           \
        hisa_t_kernels = HISA_KERNELS_HOPPER;                            \
        hisa_gpu_body_##name(ctx);                                       \
        hisa_t_kernels = HISA_KERNELS_AUTO;                              \
    }                                                                    \
    static void hisa_gpu_body_##name(hisa_test_ctx *ctx)

/* Open a small runtime or fail the test. */
hisa_config hisa_tconfig(int32_t H, int32_t B, int32_t m, int32_t k, int32_t key_format,
                         int32_t max_context, int32_t max_seqs);

#endif
