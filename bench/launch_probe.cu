/* launch_probe.cu: what one stage boundary of the decode chain costs, measured (issue 12's "one
 * fused HISA decode step ... or as few launches as the measurements justify").
 *
 * HISA decode is four dependent stages (block means, kept blocks, refine, tokens). Today each is
 * a kernel and kernels 2..4 use programmatic dependent launch (PDL). A fused persistent kernel
 * would replace the three boundaries with grid-wide barriers. This program times both shapes with
 * no work in them, so the difference is the boundary alone: a CUDA graph of 1, 2 or 4 kernels
 * (with and without PDL) against one cooperative kernel with 0, 1 or 3 grid barriers (counter +
 * acquire spin, reset by the last CTA out), at the scorer's grid shapes. Each stage reads a word
 * its predecessor wrote. Median of graph replays, CUDA events.
 *
 * A measurement for kernel design, not part of the library: `make launch-probe` (needs nvcc and a
 * Hopper GPU for PDL) writes $(BUILD)/launch_probe.json; results in bench/results/. */
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <vector>

#define PROBE_TRY(x)                                                                               \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "launch_probe: %s failed: %s (%s:%d)\n", #x, cudaGetErrorString(e_), __FILE__, __LINE__); \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

constexpr int kWords = 1024; /* words per stage in buf */

/* one stage of the chain: waits for its predecessor (a no-op without PDL), reads its word */
__global__ void stage_kernel(unsigned *buf, int s) {
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    asm volatile("griddepcontrol.wait;" ::: "memory");
    const unsigned v = __ldcg(buf + s * kWords + (blockIdx.x % kWords));
    if (threadIdx.x == 0) buf[(s + 1) * kWords + (blockIdx.x % kWords)] = v + 1;
}

__device__ __forceinline__ unsigned ld_acquire(const unsigned *p) {
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

/* the same stages in one cooperative kernel, n_bar grid barriers between them */
__global__ void fused_kernel(unsigned *buf, unsigned *bar, int n_bar) {
    for (int s = 0; s <= n_bar; s++) {
        const unsigned v = __ldcg(buf + s * kWords + (blockIdx.x % kWords));
        if (threadIdx.x == 0) buf[(s + 1) * kWords + (blockIdx.x % kWords)] = v + 1;
        if (s == n_bar) break;
        __syncthreads();
        if (threadIdx.x == 0) {
            __threadfence();
            atomicAdd(bar, 1u);
            const unsigned target = (unsigned)(s + 1) * gridDim.x;
            for (long spin = 0; ld_acquire(bar) < target; spin++)
                if (spin > (1L << 30)) __trap(); /* bounded: co-residency is guaranteed */
        }
        __syncthreads();
    }
    if (threadIdx.x == 0 && atomicAdd(bar + 1, 1u) == gridDim.x - 1) { /* everyone is past the last barrier */
        bar[0] = 0;
        bar[1] = 0;
    }
}

struct probe_ctx {
    cudaStream_t s;
    unsigned *buf, *bar;
    int reps;
};

/* median us of one replay of the graph captured by capture(s) */
template <class F>
static int time_graph(const probe_ctx &c, F capture, float *median_us) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    PROBE_TRY(cudaStreamBeginCapture(c.s, cudaStreamCaptureModeGlobal));
    PROBE_TRY(capture(c.s));
    PROBE_TRY(cudaStreamEndCapture(c.s, &g));
    PROBE_TRY(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t a, b;
    PROBE_TRY(cudaEventCreate(&a));
    PROBE_TRY(cudaEventCreate(&b));
    for (int i = 0; i < 20; i++) PROBE_TRY(cudaGraphLaunch(ge, c.s));
    std::vector<float> t;
    for (int i = 0; i < c.reps; i++) {
        PROBE_TRY(cudaEventRecord(a, c.s));
        PROBE_TRY(cudaGraphLaunch(ge, c.s));
        PROBE_TRY(cudaEventRecord(b, c.s));
        PROBE_TRY(cudaEventSynchronize(b));
        float ms = 0.0f;
        PROBE_TRY(cudaEventElapsedTime(&ms, a, b));
        t.push_back(ms * 1000.0f);
    }
    std::sort(t.begin(), t.end());
    *median_us = t[t.size() / 2];
    PROBE_TRY(cudaEventDestroy(a));
    PROBE_TRY(cudaEventDestroy(b));
    PROBE_TRY(cudaGraphExecDestroy(ge));
    PROBE_TRY(cudaGraphDestroy(g));
    return 0;
}

/* one launch of kernel on s with the attribute `at` when use is set */
template <typename... Args>
static cudaError_t launch_one(cudaStream_t s, int grid, int threads, cudaLaunchAttribute at, bool use,
                              void (*kernel)(Args...), Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(grid);
    cfg.blockDim = dim3(threads);
    cfg.stream = s;
    cfg.attrs = &at;
    cfg.numAttrs = use ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, args...);
}

static cudaError_t launch_chain(cudaStream_t s, unsigned *buf, int grid, int threads, int n, bool pdl) {
    cudaLaunchAttribute at = {};
    at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at.val.programmaticStreamSerializationAllowed = 1;
    for (int k = 0; k < n; k++) {
        const cudaError_t e = launch_one(s, grid, threads, at, pdl && k > 0, stage_kernel, buf, k);
        if (e != cudaSuccess) return e;
    }
    return cudaSuccess;
}

static cudaError_t launch_fused(cudaStream_t s, unsigned *buf, unsigned *bar, int grid, int threads, int n_bar) {
    cudaLaunchAttribute at = {};
    at.id = cudaLaunchAttributeCooperative;
    at.val.cooperative = 1;
    return launch_one(s, grid, threads, at, true, fused_kernel, buf, bar, n_bar);
}

/* one grid shape's medians: chains of 1, 2, 4 kernels without and with PDL, fused kernels with 0,
 * 1, 3 barriers; and the cost of one boundary of each kind, (4 stages - 1 stage) / 3 */
struct shape_result {
    int grid, threads;
    float chain[2][3], fused[3];
    float launch_b, pdl_b, barrier_b;
};

static int measure_shape(const probe_ctx &c, int grid, int threads, shape_result *r) {
    const int ns[3] = {1, 2, 4}, nb[3] = {0, 1, 3};
    r->grid = grid;
    r->threads = threads;
    for (int pdl = 0; pdl < 2; pdl++)
        for (int i = 0; i < 3; i++)
            if (time_graph(c, [&](cudaStream_t s) { return launch_chain(s, c.buf, grid, threads, ns[i], pdl); }, &r->chain[pdl][i]))
                return 1;
    for (int i = 0; i < 3; i++)
        if (time_graph(c, [&](cudaStream_t s) { return launch_fused(s, c.buf, c.bar, grid, threads, nb[i]); }, &r->fused[i]))
            return 1;
    r->launch_b = (r->chain[0][2] - r->chain[0][0]) / 3;
    r->pdl_b = (r->chain[1][2] - r->chain[1][0]) / 3;
    r->barrier_b = (r->fused[2] - r->fused[0]) / 3;
    return 0;
}

static int write_json(const char *path, const cudaDeviceProp &prop, const char *date, int reps, const shape_result *res, int n) {
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "launch_probe: --json %s: cannot open for writing\n", path);
        return 1;
    }
    fprintf(f, "{\"device\": \"%s\", \"sm_count\": %d, \"date\": \"%s\", \"reps\": %d, \"records\": [", prop.name,
            prop.multiProcessorCount, date, reps);
    for (int i = 0; i < n; i++) {
        const shape_result &r = res[i];
        fprintf(f, "%s\n  {\"grid\": %d, \"threads\": %d, \"chain_us\": [%.2f, %.2f, %.2f], \"chain_pdl_us\": [%.2f, %.2f, %.2f], "
                   "\"fused_us\": [%.2f, %.2f, %.2f], \"boundary_launch_us\": %.2f, \"boundary_pdl_us\": %.2f, "
                   "\"boundary_grid_barrier_us\": %.2f}",
                i ? "," : "", r.grid, r.threads, r.chain[0][0], r.chain[0][1], r.chain[0][2], r.chain[1][0], r.chain[1][1],
                r.chain[1][2], r.fused[0], r.fused[1], r.fused[2], r.launch_b, r.pdl_b, r.barrier_b);
    }
    fprintf(f, "\n]}\n");
    return fclose(f) == 0 ? 0 : 1;
}

int main(int argc, char **argv) {
    const char *json = nullptr;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0 && i + 1 < argc) json = argv[++i];
        else {
            fprintf(stderr, "usage: launch_probe [--json FILE]\n");
            return 2;
        }
    }
    cudaDeviceProp prop;
    PROBE_TRY(cudaGetDeviceProperties(&prop, 0));
    if (prop.major != 9) { /* the binary is sm_90a code only */
        fprintf(stderr, "launch_probe: device 0 (%s) has compute capability %d.%d; this probe is built for 9.0 (Hopper)\n",
                prop.name, prop.major, prop.minor);
        return 1;
    }
    probe_ctx c;
    c.reps = 2000;
    PROBE_TRY(cudaStreamCreateWithFlags(&c.s, cudaStreamNonBlocking));
    PROBE_TRY(cudaMalloc(&c.buf, 8 * kWords * sizeof(unsigned)));
    PROBE_TRY(cudaMalloc(&c.bar, 2 * sizeof(unsigned)));
    PROBE_TRY(cudaMemset(c.buf, 0, 8 * kWords * sizeof(unsigned)));
    PROBE_TRY(cudaMemset(c.bar, 0, 2 * sizeof(unsigned)));
    char date[32];
    const time_t now = time(nullptr);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    printf("device %s (%d SMs), %s; median of %d graph replays\n", prop.name, prop.multiProcessorCount, date, c.reps);
    printf("shape              kernels: 1      2      4 (no PDL)  2      4 (PDL)  | fused, barriers: 0      1      3\n");
    const int shapes[3][2] = {{1, 128}, {3, 128}, {1, 1024}}; /* CTAs per SM, threads */
    shape_result res[3];
    for (int si = 0; si < 3; si++) {
        shape_result &r = res[si];
        if (measure_shape(c, shapes[si][0] * prop.multiProcessorCount, shapes[si][1], &r)) return 1;
        printf("%4d x %4d threads        %5.2f  %5.2f  %5.2f           %5.2f  %5.2f        |                  %5.2f  %5.2f  %5.2f\n",
               r.grid, r.threads, r.chain[0][0], r.chain[0][1], r.chain[0][2], r.chain[1][1], r.chain[1][2], r.fused[0], r.fused[1],
               r.fused[2]);
        printf("  per boundary: launch %.2f us, PDL launch %.2f us, grid barrier %.2f us\n", r.launch_b, r.pdl_b, r.barrier_b);
    }
    unsigned left[2];
    PROBE_TRY(cudaMemcpy(left, c.bar, sizeof left, cudaMemcpyDeviceToHost));
    if (left[0] || left[1]) {
        fprintf(stderr, "launch_probe: the barrier words were not reset (%u, %u)\n", left[0], left[1]);
        return 1;
    }
    return json ? write_json(json, prop, date, c.reps, res, 3) : 0;
}
