/* cuda_prefill.h: the CUDA backend's prefill selection (runtime/cuda_prefill.c), the glue
 * between hisa_select_prefill and the kernels of kernels/prefill.cu. Not installed. */
#ifndef HISA_CUDA_PREFILL_H
#define HISA_CUDA_PREFILL_H

#include <stdint.h>

#include "hisa.h"

struct hisa_runtime;

/* Internal flag for benchmarks and tests: run the scoring kernels only (no top-k; out is left
 * untouched, scores and kept blocks stay in the selection scratch). */
#define HISA__PF_SCORING_ONLY (1u << 30)
/* Internal flag for benchmarks and tests: fp8 keys scored with bf16 instead of fp16 MMA operands
 * (hisa_k_prefill_params.variant 1). */
#define HISA__PF_VARIANT_ALT (1u << 29)

/* n_q queries at t0 .. t0+n_q-1 of seq (validated by the caller: seq open, t0 + n_q <= len,
 * n_q <= max_prefill_queries). q [n_q, H, 128], w [n_q, H], out [n_q, k]: device pointers, or
 * host pointers with HISA_HOST_IO (staged through io_q / io_w / io_out; the call then returns
 * with the result in host memory). HISA_SLOTS writes slots. Returns 0, HISA_EDEVICE (the runtime
 * is poisoned) or, without CUDA, HISA_ENODEVICE. */
int hisa__cuda_prefill(struct hisa_runtime *rt, int32_t layer, hisa_mode mode, int32_t seq, int32_t t0,
                       int32_t n_q, const float *q, const float *w, int32_t *out, uint32_t flags);

#endif /* HISA_CUDA_PREFILL_H */
