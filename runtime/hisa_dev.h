/* hisa_dev.h: development hooks for hisa's own benchmarks (tools/bench*.c) and tests.
 *
 * Why: `hisa bench` times stages that the public API runs back to back (the prefill scoring
 * kernels without their top-k, the top-k alone). These hooks expose exactly those stages and
 * nothing else, so no tool needs the runtime's private state (runtime/internal.h) or the kernels'
 * launch structs (kernels/kernels.h).
 *
 * Not installed, and not exported from libhisa.so (link libhisa.a); may change without notice.
 * Every hook validates like the public API and returns 0 or a negative HISA_E* code. CUDA
 * runtimes only: a CPU runtime gets HISA_ENODEVICE. */
#ifndef HISA_DEV_H
#define HISA_DEV_H

#include <stdint.h>

#include "hisa.h"

#ifdef __cplusplus
extern "C" {
#endif

/* hisa_dev_prefill's dev_flags. */
#define HISA_DEV_SCORING_ONLY 1u /* run the scoring kernels alone: out untouched */
#define HISA_DEV_VARIANT_ALT 2u  /* fp8 keys scored with the other exact operands: bf16 instead of
                                  * fp16 (not the e4m3 path of fp8_mma native, which it leaves);
                                  * HISA_EINVAL where the portable prefill runs (one arithmetic) */

/* hisa_select_prefill (device pointers, no HISA_HOST_IO) with the stage switches above. */
int hisa_dev_prefill(hisa_runtime *rt, const hisa_prefill *req, uint32_t dev_flags);

/* The decode top-k alone: for each of n_rows rows of device scores (row stride `stride` floats,
 * n entries each, n <= max_context of the runtime is not required), the k largest by the SPEC
 * order, written as indices into out [n_rows, k] (-1 padded when n < k), on the runtime's
 * stream. work is caller device memory of hisa_dev_topk_work_bytes(n, n_rows) bytes, zeroed
 * once before the first call (the top-k leaves it zero again). Graph-capturable. */
uint64_t hisa_dev_topk_work_bytes(int32_t n, int32_t n_rows);
int hisa_dev_topk(hisa_runtime *rt, const float *scores, int64_t stride, int32_t n, int32_t k,
                  int32_t n_rows, void *work, int32_t *out);

/* The read-bandwidth probe: read every byte of device buffer buf [bytes] once (bytes a multiple
 * of 16, buf 16-byte aligned) on the runtime's stream; *sum_device (device memory, 8 bytes) gets
 * the wrapping sum of its 32-bit words. Graph-capturable. */
int hisa_dev_read_probe(hisa_runtime *rt, const void *buf, uint64_t bytes, uint64_t *sum_device);

/* The kept blocks the last HISA selection on rt left in its scratch (hisa_select_prefill's rows
 * of its last launch of up to 64 chunks, or a decode call's rows): rows 0 .. n_rows - 1, top_blocks
 * each, ascending, into host memory blocks [n_rows, top_blocks]; waits for the runtime's stream.
 * Only HISA rows (t + 1 > top_blocks * block_size) hold kept blocks; the other rows' entries are
 * whatever the scratch held. n_rows in 1 .. max(max_batch * 4, max_prefill_queries). Not
 * graph-capturable (it waits for the stream). */
int hisa_dev_kept_blocks(hisa_runtime *rt, int32_t n_rows, int32_t *blocks);

#ifdef __cplusplus
}
#endif
#endif /* HISA_DEV_H */
