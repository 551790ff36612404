/* fault.c: the CUDA fault injector of fault.h. Pure host C, no CUDA: it only counts. The counter
 * and the trigger are atomics, so runtimes driven from several threads stay race-free (the count
 * is then the process's, which only single-threaded fault tests read). */
#include "fault.h"

#include <stdatomic.h>

static atomic_int g_cuda_fail_at;  /* > 0: the g_cuda_fail_at-th call from the arming fails */
static atomic_llong g_cuda_calls;  /* wrapped calls since the last arming */

void hisa__fault_cuda_at(int32_t n) {
    atomic_store(&g_cuda_fail_at, n > 0 ? n : 0);
    atomic_store(&g_cuda_calls, 0);
}

int hisa__fault_cuda_hit(void) {
    long long call = atomic_fetch_add_explicit(&g_cuda_calls, 1, memory_order_relaxed) + 1;
    int at = atomic_load_explicit(&g_cuda_fail_at, memory_order_relaxed);
    /* once: the calls after it run normally (and must see a poisoned runtime) */
    return at > 0 && call == at && atomic_compare_exchange_strong(&g_cuda_fail_at, &at, 0);
}

int64_t hisa__fault_cuda_calls(void) { return atomic_load(&g_cuda_calls); }
