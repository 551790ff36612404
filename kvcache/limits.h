/* limits.h: every hard limit of hisa in one place. Plain C, included by host code and kernels.
 * The configuration is validated against these at plan time; launchers re-check their caps. */
#ifndef HISA_LIMITS_H
#define HISA_LIMITS_H

#define HISA_D 128                     /* head dim: the only one */
#define HISA_HEADS_MAX 128             /* H */
#define HISA_BLOCK_MIN 32              /* B: power of two in [32, 256] */
#define HISA_BLOCK_MAX 256
#define HISA_TOPK_MAX 16384            /* k */
#define HISA_TOP_BLOCKS_MAX 1024       /* m */
#define HISA_LAYERS_MAX 256
#define HISA_SEQS_MAX 65536
#define HISA_CONTEXT_MAX (1 << 24)     /* 16M tokens per sequence */
#define HISA_PAGES_MAX (1 << 24)       /* page ids fit int32 slots: pages * B < 2^31 checked too */
#define HISA_BATCH_MAX 256             /* sequences per decode / write call (kernel params by value) */
#define HISA_PREFILL_MAX 16384         /* queries per prefill chunk */
#define HISA_PAYLOAD_MAX 65536         /* bytes per token per layer */
#define HISA_FP8_MAX 448.0f            /* e4m3fn largest finite */

#endif /* HISA_LIMITS_H */
