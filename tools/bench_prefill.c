/* bench_prefill.c: `hisa bench prefill`: the prefill-chunk benchmark of issue 4, in the paper's
 * setting: n_q = 1024 queries at the end of contexts 8K..128K, H=64, D=128, B=128, m=64,
 * k=2048, fp8 keys; flat DSA and HISA.
 *
 * Why: the prefill indexer is where DSA is O(L^2) and where the paper measured its kernels.
 * The flat path is a GEMM, so it is judged against the bf16 tensor-core rate measured in the
 * same run (cuBLAS cublasGemmEx, 8192^3 bf16 in, fp32 compute, loaded with dlopen so that
 * neither the library nor the tool links cuBLAS; without it the rate is reported as 0).
 *
 * Method: keys written through the public API (hisa_write_range, HISA_HOST_IO) from the
 * structured synthetic generator (never zeros); one 128K sequence serves every context, since a
 * query at t sees only positions <= t. Each point is timed with CUDA events around one call of
 * the CUDA prefill path (runtime/cuda_prefill.c, device pointers, the runtime's stream), after
 * warm-up, median of --reps calls: the whole selection (scoring + top-k) and the scoring alone.
 * tflops counts useful scoring flops only: flat 2*H*128*(t+1) per query; HISA 2*H*128 per
 * ranked block (1..last-1) plus per candidate token ((m-1)*B + t%B + 1), divided by the
 * scoring-only time.
 *
 * Output: a table; with --json FILE an array of records (device, date, mode, queries, context,
 * key_format, median_us, scoring_us, tflops, gemm_tflops, pct_of_gemm, speedup_vs_flat). */
#include "bench_prefill.h"

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../runtime/internal.h"
#include "synth.h"
#include "tools.h"

#if HISA_CUDA
#include <cuda_runtime_api.h>

#define PB_CUDA(stmt) TOOL_CUDA("bench prefill", stmt)

typedef struct pb_rec {
    const char *mode;
    int32_t queries, context;
    double median_us, scoring_us, flops, tflops, speedup;
} pb_rec;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* --- the bf16 GEMM rate through cuBLAS, loaded at run time ---------------------------------- */
typedef int (*pb_create_fn)(void **);
typedef int (*pb_destroy_fn)(void *);
typedef int (*pb_set_stream_fn)(void *, cudaStream_t);
typedef int (*pb_gemm_ex_fn)(void *, int, int, int, int, int, const void *, const void *, int, int, const void *,
                             int, int, const void *, void *, int, int, int, int);
enum { PB_OP_N = 0, PB_OP_T = 1, PB_R_16BF = 14, PB_R_32F = 0, PB_COMPUTE_32F = 68, PB_GEMM_DEFAULT = -1 };

static uint64_t pb_rng(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Median TFLOP/s of an n^3 bf16 GEMM (C bf16, fp32 compute, A and B random). 0 when cuBLAS is
 * not there; -1 on a CUDA failure. */
static double pb_gemm_tflops(int n, int reps, cudaStream_t st, char *lib_used, size_t lib_len) {
    const char *names[] = {"libcublas.so", "libcublas.so.13", "libcublas.so.12"};
    void *h = NULL;
    for (int i = 0; i < 3 && !h; i++) {
        h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
        if (h) snprintf(lib_used, lib_len, "%s", names[i]);
    }
    if (!h) {
        snprintf(lib_used, lib_len, "none");
        return 0.0;
    }
    pb_create_fn create = (pb_create_fn)dlsym(h, "cublasCreate_v2");
    pb_destroy_fn destroy = (pb_destroy_fn)dlsym(h, "cublasDestroy_v2");
    pb_set_stream_fn set_stream = (pb_set_stream_fn)dlsym(h, "cublasSetStream_v2");
    pb_gemm_ex_fn gemm = (pb_gemm_ex_fn)dlsym(h, "cublasGemmEx");
    double result = 0.0;
    void *handle = NULL;
    uint16_t *ha = NULL;
    void *a = NULL, *b = NULL, *c = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    double *ms = calloc((size_t)reps, sizeof(double));
    if (!create || !destroy || !set_stream || !gemm || create(&handle) || set_stream(handle, st)) goto out;
    size_t bytes = (size_t)n * n * 2;
    ha = malloc(bytes);
    if (!ha || cudaMalloc(&a, bytes) || cudaMalloc(&b, bytes) || cudaMalloc(&c, bytes)) {
        result = -1;
        goto out;
    }
    uint64_t s = 7;
    for (size_t i = 0; i < (size_t)n * n; i++) { /* bf16 in [-1, 1): sign, exponent 120..126, mantissa */
        uint64_t r = pb_rng(&s);
        ha[i] = (uint16_t)(((r & 1) << 15) | ((120 + (r >> 1) % 7) << 7) | ((r >> 8) & 0x7f));
    }
    if (cudaMemcpy(a, ha, bytes, cudaMemcpyHostToDevice) || cudaMemcpy(b, ha, bytes, cudaMemcpyHostToDevice) ||
        cudaEventCreate(&e0) || cudaEventCreate(&e1)) {
        result = -1;
        goto out;
    }
    float alpha = 1.0f, beta = 0.0f;
    for (int i = 0; i < reps + 3; i++) {
        if (cudaEventRecord(e0, st)) break;
        if (gemm(handle, PB_OP_T, PB_OP_N, n, n, n, &alpha, a, PB_R_16BF, n, b, PB_R_16BF, n, &beta, c, PB_R_16BF, n,
                 PB_COMPUTE_32F, PB_GEMM_DEFAULT)) {
            result = -1;
            goto out;
        }
        float t = 0;
        if (cudaEventRecord(e1, st) || cudaEventSynchronize(e1) || cudaEventElapsedTime(&t, e0, e1)) {
            result = -1;
            goto out;
        }
        if (i >= 3) ms[i - 3] = t;
    }
    qsort(ms, (size_t)reps, sizeof(double), cmp_double);
    result = 2.0 * n * (double)n * n / (ms[reps / 2] * 1e-3) / 1e12;
out:
    if (handle) destroy(handle);
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    free(ha);
    free(ms);
    dlclose(h);
    return result;
}

/* --- one point ------------------------------------------------------------------------------ */

/* Median microseconds of `reps` calls after 3 warm-ups. */
static int pb_time(hisa_runtime *rt, cudaStream_t st, hisa_mode mode, int32_t seq, int32_t t0, int32_t n_q,
                   const float *dq, const float *dw, int32_t *dout, uint32_t flags, int reps, double *median_us) {
    cudaEvent_t e0, e1;
    PB_CUDA(cudaEventCreate(&e0));
    PB_CUDA(cudaEventCreate(&e1));
    double *us = calloc((size_t)reps, sizeof(double));
    int err = 0;
    for (int i = 0; i < reps + 3 && !err; i++) {
        float ms = 0;
        if (cudaEventRecord(e0, st)) err = 1;
        int e = hisa__cuda_prefill(rt, 0, mode, seq, t0, n_q, dq, dw, dout, flags);
        if (e) {
            fprintf(stderr, "hisa bench prefill: prefill: %s (%s)\n", hisa_strerror(e), hisa_error_detail(rt));
            err = 1;
            break;
        }
        if (cudaEventRecord(e1, st) || cudaEventSynchronize(e1) || cudaEventElapsedTime(&ms, e0, e1)) err = 1;
        if (i >= 3) us[i - 3] = ms * 1e3;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    if (!err) {
        qsort(us, (size_t)reps, sizeof(double), cmp_double);
        *median_us = us[reps / 2];
    }
    free(us);
    return err ? TOOL_EXIT_FAIL : 0;
}

static double pb_flops(hisa_mode mode, int32_t t0, int32_t n_q, int32_t H, int32_t B, int32_t m, int32_t k) {
    double f = 0;
    for (int32_t i = 0; i < n_q; i++) {
        int64_t t = t0 + i, n = t + 1, nb = (n + B - 1) / B, last = nb - 1;
        if (n <= k) continue;
        if (mode == HISA_MODE_FLAT || nb <= m) f += 2.0 * H * 128 * (double)n;
        else f += 2.0 * H * 128 * (double)((last - 1) + (int64_t)(m - 1) * B + t % B + 1);
    }
    return f;
}

static void print_help(void) {
    printf("usage: hisa bench prefill [--json FILE] [--reps N] [--queries N] [--context N] [--key-format fp8|bf16]\n"
           "                          [--variant 0|1]\n"
           "  Times a prefill chunk of --queries (1024) queries at the end of contexts 8K, 16K, 32K,\n"
           "  64K, 128K (or --context N only), H=64, D=128, B=128, m=64, k=2048, flat and HISA:\n"
           "  the whole selection and the scoring alone (CUDA events, median of --reps, default 20),\n"
           "  plus the bf16 GEMM rate of cuBLAS (8192^3) measured in the same run.\n"
           "  --variant 1: fp8 keys scored with bf16 MMA operands instead of fp16.\n");
}

int hisa_cmd_bench_prefill(int argc, char **argv) {
    const char *json = NULL, *fmt_name = "fp8";
    int32_t reps = 20, n_q = 1024, one_context = 0, variant = 0;
    tool_opt opts[] = {{"json", TOOL_OPT_STR, &json},
                       {"reps", TOOL_OPT_INT, &reps},
                       {"queries", TOOL_OPT_INT, &n_q},
                       {"context", TOOL_OPT_INT, &one_context},
                       {"key-format", TOOL_OPT_STR, &fmt_name},
                       {"variant", TOOL_OPT_INT, &variant}};
    int perr = tool_parse_opts("bench prefill", argc, argv, opts, 6);
    if (perr < 0) {
        print_help();
        return 0;
    }
    if (perr) return perr;
    int32_t fmt = strcmp(fmt_name, "fp8") == 0 ? HISA_KEY_FP8 : strcmp(fmt_name, "bf16") == 0 ? HISA_KEY_BF16 : 0;
    if (reps < 5 || n_q < 1 || n_q > 1024 || !fmt || one_context < 0 || (one_context && one_context < n_q) ||
        variant < 0 || variant > 1) {
        fprintf(stderr, "hisa bench prefill: need --reps >= 5, --queries 1..1024, --key-format fp8|bf16, "
                        "--context >= queries, --variant 0|1\n");
        return TOOL_EXIT_USAGE;
    }
    if (!tool_cuda_available()) {
        fprintf(stderr, "hisa bench prefill: needs a CUDA device (none found)\n");
        return TOOL_EXIT_FAIL;
    }
    int32_t contexts_all[] = {8192, 16384, 32768, 65536, 131072};
    int32_t *contexts = one_context ? &one_context : contexts_all, n_ctx = one_context ? 1 : 5;
    int32_t max_ctx = contexts[n_ctx - 1];
    const int32_t H = 64, B = 128, m = 64, k = 2048;

    struct cudaDeviceProp prop;
    PB_CUDA(cudaGetDeviceProperties(&prop, 0));
    char date[32];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    int rtv = 0, drv = 0;
    cudaRuntimeGetVersion(&rtv);
    cudaDriverGetVersion(&drv);
    cudaStream_t st;
    PB_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    char gemm_lib[32];
    double gemm = pb_gemm_tflops(8192, 10, st, gemm_lib, sizeof gemm_lib);
    if (gemm < 0) {
        fprintf(stderr, "hisa bench prefill: the GEMM measurement failed\n");
        return TOOL_EXIT_FAIL;
    }
    printf("device %s (%d SMs), CUDA runtime %d, driver %d; bf16 GEMM 8192^3 (%s): %.1f TFLOP/s\n", prop.name,
           prop.multiProcessorCount, rtv, drv, gemm_lib, gemm);

    hisa_config cfg = {.n_heads = H, .block_size = B, .top_blocks = m, .topk = k, .key_format = fmt,
                       .max_context = max_ctx, .max_seqs = 1, .max_prefill_queries = 1024,
                       .device = HISA_DEVICE_CUDA(0)};
    hisa_runtime *rt = NULL;
    int err = tool_open("bench prefill", &cfg, &rt);
    if (err) return err;
    hisa_set_stream(rt, st);
    int32_t seq = -1;
    err = hisa_seq_open(rt, &seq);
    if (!err) err = hisa_seq_extend(rt, seq, max_ctx);
    if (err) {
        hisa_close(rt);
        return tool_lib_error("bench prefill", "sequence", err, NULL);
    }
    synth_params sp;
    synth_params_default(&sp);
    sp.seed = 4;
    sp.n_heads = H;
    synth_gen gen;
    if (synth_init(&gen, &sp)) {
        hisa_close(rt);
        fprintf(stderr, "hisa bench prefill: out of memory\n");
        return TOOL_EXIT_FAIL;
    }
    float *keys = malloc(sizeof(float) * 1024 * 128);
    double t_write = tool_now_s();
    for (int32_t pos = 0; pos < max_ctx && !err; pos += 1024) {
        int32_t c = max_ctx - pos < 1024 ? max_ctx - pos : 1024;
        synth_keys(&gen, c, keys, (int64_t)c * 128);
        hisa_write w = {.layer = 0, .n_tokens = c, .keys = keys, .flags = HISA_HOST_IO};
        err = hisa_write_range(rt, seq, pos, &w);
    }
    free(keys);
    if (err) {
        synth_free(&gen);
        hisa_close(rt);
        return tool_lib_error("bench prefill", "hisa_write_range", err, NULL);
    }
    printf("wrote %d keys (%s) in %.2f s\n", max_ctx, fmt_name, tool_now_s() - t_write);
    float *hq = malloc(sizeof(float) * (size_t)n_q * H * 128), *hw = malloc(sizeof(float) * (size_t)n_q * H);
    for (int32_t i = 0; i < n_q; i++) synth_query(&gen, 0, 0, hq + (int64_t)i * H * 128, hw + (int64_t)i * H);
    synth_free(&gen);
    float *dq = NULL, *dw = NULL;
    int32_t *dout = NULL;
    PB_CUDA(cudaMalloc((void **)&dq, sizeof(float) * (size_t)n_q * H * 128));
    PB_CUDA(cudaMalloc((void **)&dw, sizeof(float) * (size_t)n_q * H));
    PB_CUDA(cudaMalloc((void **)&dout, sizeof(int32_t) * (size_t)n_q * k));
    PB_CUDA(cudaMemcpy(dq, hq, sizeof(float) * (size_t)n_q * H * 128, cudaMemcpyHostToDevice));
    PB_CUDA(cudaMemcpy(dw, hw, sizeof(float) * (size_t)n_q * H, cudaMemcpyHostToDevice));
    free(hq);
    free(hw);

    pb_rec recs[16];
    int n_recs = 0;
    printf("%-5s %7s %8s %11s %11s %8s %8s %8s\n", "mode", "queries", "context", "median_us", "scoring_us", "tflops",
           "of_gemm", "speedup");
    for (int ci = 0; ci < n_ctx && !err; ci++) {
        int32_t L = contexts[ci], t0 = L - n_q;
        for (int mi = 0; mi < 2 && !err; mi++) {
            hisa_mode mode = mi == 0 ? HISA_MODE_FLAT : HISA_MODE_HISA;
            pb_rec *r = &recs[n_recs];
            r->mode = mi == 0 ? "flat" : "hisa";
            r->queries = n_q;
            r->context = L;
            uint32_t vf = variant ? HISA__PF_VARIANT_ALT : 0u;
            err = pb_time(rt, st, mode, seq, t0, n_q, dq, dw, dout, vf, reps, &r->median_us);
            if (!err)
                err = pb_time(rt, st, mode, seq, t0, n_q, dq, dw, dout, vf | HISA__PF_SCORING_ONLY, reps, &r->scoring_us);
            if (err) break;
            r->flops = pb_flops(mode, t0, n_q, H, B, m, k);
            r->tflops = r->flops / (r->scoring_us * 1e-6) / 1e12;
            r->speedup = mi == 1 ? recs[n_recs - 1].median_us / r->median_us : 1.0;
            printf("%-5s %7d %8d %11.1f %11.1f %8.1f %7.1f%% ", r->mode, n_q, L, r->median_us, r->scoring_us, r->tflops,
                   gemm > 0 ? 100.0 * r->tflops / gemm : 0.0);
            if (mi == 1) printf("%7.2fx\n", r->speedup);
            else printf("%8s\n", "-");
            n_recs++;
        }
    }
    cudaFree(dq);
    cudaFree(dw);
    cudaFree(dout);
    hisa_close(rt);
    cudaStreamDestroy(st);
    if (err) return TOOL_EXIT_FAIL;
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            fprintf(stderr, "hisa bench prefill: cannot write %s\n", json);
            return TOOL_EXIT_USAGE;
        }
        fprintf(f, "[\n");
        for (int i = 0; i < n_recs; i++) {
            pb_rec *r = &recs[i];
            fprintf(f, "  {\"device\": ");
            tool_json_string(f, prop.name);
            fprintf(f,
                    ", \"date\": \"%s\", \"mode\": \"%s\", \"queries\": %d, \"context\": %d, \"key_format\": \"%s\", "
                    "\"heads\": %d, \"block_size\": %d, \"top_blocks\": %d, \"topk\": %d, \"median_us\": %.2f, "
                    "\"scoring_us\": %.2f, \"scoring_flops\": %.6g, \"tflops\": %.2f, \"gemm_tflops\": %.2f, "
                    "\"gemm_lib\": \"%s\", \"pct_of_gemm\": %.2f, \"cuda_runtime\": %d, \"driver\": %d, \"variant\": %d",
                    date, r->mode, r->queries, r->context, fmt_name, H, B, m, k, r->median_us, r->scoring_us, r->flops,
                    r->tflops, gemm, gemm_lib, gemm > 0 ? 100.0 * r->tflops / gemm : 0.0, rtv, drv, variant);
            if (strcmp(r->mode, "hisa") == 0) fprintf(f, ", \"speedup_vs_flat\": %.3f", r->speedup);
            fprintf(f, "}%s\n", i + 1 < n_recs ? "," : "");
        }
        fprintf(f, "]\n");
        fclose(f);
        printf("wrote %s\n", json);
    }
    return 0;
}

#else /* !HISA_CUDA */

int hisa_cmd_bench_prefill(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "hisa bench prefill: this build has no CUDA support\n");
    return TOOL_EXIT_FAIL;
}

#endif /* HISA_CUDA */
