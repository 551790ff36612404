/* cuda_check.h: the one wrapper around CUDA calls in the C glue (cuda_backend.c).
 * Include only under HISA_CUDA. A failed call records its statement, file, line and CUDA's
 * message in rt->error_detail and poisons the runtime (HISA_EDEVICE). Each call first asks the
 * fault injector (runtime/fault.h), so tests can fail the n-th CUDA call of any path. */
#ifndef HISA_CUDA_CHECK_H
#define HISA_CUDA_CHECK_H

#include <assert.h>
#include <cuda_runtime_api.h>

#include "fault.h"
#include "internal.h"

#define HISA_CUDA_TRY(rt, stmt)                                                                  \
    do {                                                                                         \
        cudaError_t hisa_e_ = hisa__fault_cuda_hit() ? cudaErrorUnknown : (stmt);                \
        if (hisa_e_ != cudaSuccess)                                                              \
            return hisa__device_failed((rt), #stmt, __FILE__, __LINE__, cudaGetErrorString(hisa_e_)); \
    } while (0)

/* A launcher returns a HISA_E* code: argument errors are bugs of the glue's validation (assert)
 * and are returned as they are; a launch failure poisons. */
#define HISA_LAUNCH_TRY(rt, stmt)                                                                \
    do {                                                                                         \
        int hisa_l_ = hisa__fault_cuda_hit() ? HISA_EDEVICE : (stmt);                            \
        if (hisa_l_ == HISA_EDEVICE)                                                             \
            return hisa__device_failed((rt), #stmt, __FILE__, __LINE__,                          \
                                       cudaGetErrorString(cudaGetLastError()));                  \
        assert(hisa_l_ == HISA_OK);                                                              \
        if (hisa_l_) return hisa_l_;                                                             \
    } while (0)

#endif /* HISA_CUDA_CHECK_H */
