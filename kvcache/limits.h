/* limits.h: every hard limit of hisa, in one header. Plain C, included by host code and kernels
 * (kvcache/ is the lowest floor that both stand on).
 *
 * The configuration is checked against these once, at plan time (runtime/config.c); the kernels'
 * launchers re-check the caps their fixed-size parameters depend on. The limits a user can hit
 * are published in runtime/hisa.h with the same values (HISA_MAX_*), and runtime/internal.h
 * asserts that the two agree. */
#ifndef HISA_LIMITS_H
#define HISA_LIMITS_H

#define HISA_D 128                 /* head dim: the only one (DeepSeek-V3.2, GLM-5) */
#define HISA_HEADS_MAX 128         /* H */
#define HISA_BLOCK_MIN 32          /* B: a power of two in [32, 256]; a mask word covers 32 */
#define HISA_BLOCK_MAX 256
#define HISA_TOPK_MAX 16384        /* k */
#define HISA_TOP_BLOCKS_MAX 1024   /* m */
#define HISA_LAYERS_MAX 256
#define HISA_SEQS_MAX 65536
#define HISA_CONTEXT_MAX (1 << 24) /* tokens per sequence: candidate indices fit 24 bits */
#define HISA_PAGES_MAX (1 << 24)   /* page ids; pages * B < 2^31 is checked too (int32 slots) */
#define HISA_BATCH_MAX 256         /* sequences per decode / write call (kernel params by value) */
#define HISA_PREFILL_MAX 16384     /* queries per prefill call, tokens per range write */
#define HISA_PAYLOAD_MAX 65536     /* bytes per token per layer */
#define HISA_FP8_MAX 448.0f        /* e4m3fn largest finite */
#define HISA_ALIGN 256             /* every arena region, and the caller's memory, is aligned so */

/* The limits hold together: a mask word is 32 offsets; the largest top-m fits the largest
 * context; slots of the largest pool fit int32; the staging rows of a call fit the caps the
 * kernels size their parameter arrays by. */
#if defined(__cplusplus)
#define HISA__LIMITS_ASSERT static_assert
#else
#define HISA__LIMITS_ASSERT _Static_assert
#endif
HISA__LIMITS_ASSERT(HISA_BLOCK_MIN % 32 == 0 && HISA_BLOCK_MAX % HISA_BLOCK_MIN == 0, "mask words");
HISA__LIMITS_ASSERT((HISA_BLOCK_MAX & (HISA_BLOCK_MAX - 1)) == 0, "B is a power of two");
HISA__LIMITS_ASSERT((long long)HISA_TOP_BLOCKS_MAX * HISA_BLOCK_MAX <= HISA_CONTEXT_MAX, "m * B fits a context");
HISA__LIMITS_ASSERT(HISA_TOPK_MAX < HISA_CONTEXT_MAX, "k fits a context");
HISA__LIMITS_ASSERT(HISA_HEADS_MAX % 16 == 0, "heads come in mma tiles of 16");
HISA__LIMITS_ASSERT(HISA_BATCH_MAX <= HISA_PREFILL_MAX, "staging rows = max(batch, prefill)");
HISA__LIMITS_ASSERT((long long)HISA_PAGES_MAX * HISA_BLOCK_MIN <= (1ll << 31), "smallest B keeps slots int32");
HISA__LIMITS_ASSERT(HISA_ALIGN % 16 == 0 && (HISA_ALIGN & (HISA_ALIGN - 1)) == 0, "16-byte vector loads");
#undef HISA__LIMITS_ASSERT

#endif /* HISA_LIMITS_H */
