/* probe.cu: a pure streaming read of a device buffer: the bandwidth ceiling a decode scan (which
 * only reads keys) is judged by. A device-to-device copy also writes, so its rate is not the
 * read ceiling; `hisa bench decode` measures both in the same run.
 *
 * Invariants: every 16-byte vector of the buffer is read exactly once (CTAs take 32 KB tiles in
 * turn, four 16-byte loads in flight per thread); the wrapping sum of its 32-bit words goes to *sum (one atomic per warp) so
 * the compiler cannot drop a load, and the tests check that sum against the CPU. */
#include "common.cuh"

namespace {

constexpr int kProbeThreads = 512;

__global__ void __launch_bounds__(kProbeThreads) read_probe_kernel(const hisa_k_read_probe_params p) {
    const uint4 *v = static_cast<const uint4 *>(p.buf);
    const int64_t n = (int64_t)(p.bytes / 16);
    constexpr int64_t kTile = 4 * kProbeThreads; /* a CTA reads 32 KB contiguous per step */
    unsigned long long acc = 0;
    int64_t t = blockIdx.x;
    for (; (t + 1) * kTile <= n; t += gridDim.x) { /* whole tiles: four loads in flight */
        const uint4 *q = v + t * kTile + threadIdx.x;
        uint4 a = __ldcs(q), b = __ldcs(q + kProbeThreads), c = __ldcs(q + 2 * kProbeThreads), d = __ldcs(q + 3 * kProbeThreads);
        acc += (unsigned long long)a.x + a.y + a.z + a.w + b.x + b.y + b.z + b.w;
        acc += (unsigned long long)c.x + c.y + c.z + c.w + d.x + d.y + d.z + d.w;
    }
    if (t * kTile < n) /* the one partial tile, taken by whichever CTA reaches it */
        for (int64_t i = t * kTile + threadIdx.x; i < n; i += kProbeThreads) {
            uint4 a = __ldcs(v + i);
            acc += (unsigned long long)a.x + a.y + a.z + a.w;
        }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if ((threadIdx.x & 31) == 0) atomicAdd(p.sum, acc);
}

} // namespace

extern "C" int hisa_k_read_probe(void *stream, const hisa_k_read_probe_params *p) {
    if (!p || !p->buf || !p->sum || p->bytes == 0 || p->bytes % 16 || ((uintptr_t)p->buf & 15)) return HISA_K_EINVAL;
    if (p->dev.sm_count < 1) return HISA_K_EINVAL; /* hisa_k_init not run */
    cudaStream_t s = (cudaStream_t)stream;
    if (cudaMemsetAsync(p->sum, 0, sizeof(unsigned long long), s) != cudaSuccess) return HISA_K_EDEVICE;
    read_probe_kernel<<<p->dev.sm_count * 4, kProbeThreads, 0, s>>>(*p); /* 4 x 512 threads per SM: full */
    return hisa__k_launch_status();
}
