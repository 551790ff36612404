/* fault.c: the CUDA fault injector of fault.h. Pure host C, no CUDA: it only counts. */
#include "fault.h"

static int32_t g_cuda_fail_at; /* > 0: the g_cuda_fail_at-th call from the arming fails */
static int64_t g_cuda_calls;   /* wrapped calls since the last arming */

void hisa__fault_cuda_at(int32_t n) {
    g_cuda_fail_at = n > 0 ? n : 0;
    g_cuda_calls = 0;
}

int hisa__fault_cuda_hit(void) {
    g_cuda_calls++;
    if (g_cuda_fail_at > 0 && g_cuda_calls == g_cuda_fail_at) {
        g_cuda_fail_at = 0; /* once: the calls after it run normally (and must see a poisoned runtime) */
        return 1;
    }
    return 0;
}

int64_t hisa__fault_cuda_calls(void) { return g_cuda_calls; }
