/* fault.h: fault injection for the CUDA glue (tests only; not installed).
 *
 * runtime/cuda_backend.c wraps every CUDA runtime call and kernel launch in one macro; that macro
 * asks hisa__fault_cuda_hit() first and, when it returns 1, treats the call as failed (without
 * making it) exactly as if CUDA had returned an error. A test arms the counter with
 * hisa__fault_cuda_at(n): the n-th wrapped call from then on fails, once. The arena's own
 * reservations have their injector in arena/arena.h (hisa__arena_fail_at).
 *
 * Process-wide state (atomics: race-free), meant for single-threaded fault tests; disarmed it costs
 * one relaxed increment per wrapped call. */
#ifndef HISA_FAULT_H
#define HISA_FAULT_H

#include <stdint.h>

/* The n-th wrapped CUDA call from now fails (n >= 1); 0 disarms. Resets the call counter. */
void hisa__fault_cuda_at(int32_t n);
/* Called by the wrapping macro before each CUDA call: counts the call and returns 1 when this
 * call must be treated as failed, 0 otherwise. */
int hisa__fault_cuda_hit(void);
/* Wrapped CUDA calls seen since the last hisa__fault_cuda_at (tests size their sweeps with it). */
int64_t hisa__fault_cuda_calls(void);

#endif /* HISA_FAULT_H */
