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
 * hisa_dev_prefill (runtime/hisa_dev.h: the prefill selection with device pointers on the
 * runtime's stream, and its stage switches), after warm-up, median of --reps calls: the whole
 * selection (scoring + top-k, no switch) and the scoring alone (HISA_DEV_SCORING_ONLY).
 * tflops counts useful scoring flops only: flat 2*H*128*(t+1) per query; HISA 2*H*128 per
 * ranked block (1..last-1) plus per candidate token ((m-1)*B + t%B + 1), divided by the
 * scoring-only time.
 *
 * Batched chunks (--chunks N): the queries as N chunks of one call, which the runtime runs in one
 * launch chain, beside the same chunks as N calls in turn (what a caller without batching pays).
 *
 * Output: a table; with --json FILE an array of records (device, date, mode, queries, context,
 * key_format, q_format, fp8_mma, kernels, median_us, scoring_us, tflops, gemm_tflops, pct_of_gemm,
 * speedup_vs_flat, chunks, one_by_one_us; one-chunk HISA records: share_rows_per_tile and
 * sharing_factor, from the chunk's kept blocks, pb_sharing). */
#include "bench_prefill.h"

#include <assert.h>
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "synth.h"
#include "tools.h"

/* --- options (every build: --help and the checks work without CUDA) ---------------------- */

void hisa_bench_prefill_help(FILE *f) {
    fprintf(f,
            "usage: hisa bench prefill [--json FILE] [--reps N] [--queries N] [--context N]\n"
            "                          [--key-format fp8|bf16] [--variant 0|1] [--query-format F]\n"
            "                          [--fp8-mma exact|native] [--kernels auto|portable|hopper]\n"
            "                          [--chunks N]\n"
            "  Times a prefill chunk of --queries (1..1024, default 1024) queries at the end of\n"
            "  contexts 8K, 16K, 32K, 64K, 128K (or --context N only, at least --queries), H=64,\n"
            "  D=128, B=128, m=64, k=2048, flat and HISA: the whole selection and the scoring\n"
            "  alone (CUDA events, median of --reps, at least 5, default 20), plus the bf16 GEMM\n"
            "  rate of cuBLAS (8192^3) measured in the same run.\n"
            "  --json FILE: the records as JSON (FILE is checked before the run)\n"
            "  --variant 1: fp8 keys scored with the other exact MMA operands: bf16 instead of\n"
            "  fp16.\n"
            "  --query-format f32|bf16|fp8: the queries' form (default f32; fp8 folds each head's\n"
            "  scale into its weight, as an engine's act_quant does).\n"
            "  --fp8-mma exact|native: hisa_config.fp8_mma (default exact); native multiplies fp8\n"
            "  queries by fp8 keys on the e4m3 tensor cores (hisa.h: outside SPEC's agreement rule).\n"
            "  --kernels auto|portable|hopper: hisa_config.kernels (default auto); portable runs the\n"
            "  chunk on the decode kernels, one row per query (the path of GPUs other than Hopper).\n"
            "  --chunks N: the --queries queries as N chunks (dividing --queries) of one call,\n"
            "  chunk c the last queries before position L * (c + 1) / N of context L, timed as one\n"
            "  call (hisa_prefill.n_chunks) and as N calls one after another (one_by_one_us).\n"
            "  One-chunk HISA rows report how many of the chunk's rows keep the same blocks: kept\n"
            "  query-blocks per tile of 4 rows, grouped per block over the chunk (sharing).\n");
}

typedef struct pb_opts {
    const char *json, *fmt_name, *q_format_name, *fp8_mma_name, *kernels_name;
    int32_t reps, n_q, one_context, variant, chunks;
    int32_t kernels;  /* HISA_KERNELS_* of kernels_name (NULL: auto) */
    int32_t fp8_mma;  /* HISA_FP8_MMA_* of fp8_mma_name (NULL: exact) */
    int32_t fmt;      /* HISA_KEY_* of fmt_name */
    int32_t q_format; /* HISA_Q_* of q_format_name */
} pb_opts;

/* Options into o. Returns tool_parse_opts's codes (-1: --help) or TOOL_EXIT_USAGE. */
static int pb_parse(int argc, char **argv, pb_opts *o) {
    assert(argc >= 1 && o);
    *o = (pb_opts){.fmt_name = "fp8", .reps = 20, .n_q = 1024, .chunks = 1};
    tool_opt opts[] = {
        {"json", TOOL_OPT_STR, &o->json, 0, 0, NULL},
        {"reps", TOOL_OPT_INT, &o->reps, 5, INT32_MAX, "timed calls per point"},
        {"queries", TOOL_OPT_INT, &o->n_q, 1, 1024, "queries of the chunk"},
        {"context", TOOL_OPT_INT, &o->one_context, 1, HISA_MAX_CONTEXT, "tokens, HISA_MAX_CONTEXT"},
        {"key-format", TOOL_OPT_STR, &o->fmt_name, 0, 0, NULL},
        {"variant", TOOL_OPT_INT, &o->variant, 0, 1, "0: fp16 MMA operands, 1: bf16"},
        {"query-format", TOOL_OPT_STR, &o->q_format_name, 0, 0, NULL},
        {"fp8-mma", TOOL_OPT_STR, &o->fp8_mma_name, 0, 0, NULL},
        {"kernels", TOOL_OPT_STR, &o->kernels_name, 0, 0, NULL},
        {"chunks", TOOL_OPT_INT, &o->chunks, 1, 1024, "chunks of the call, at most --queries"}};
    int perr = tool_parse_opts("bench prefill", argc, argv, opts, 10);
    if (perr) return perr;
    if (tool_parse_q_format("bench prefill", o->q_format_name, &o->q_format)) return TOOL_EXIT_USAGE;
    if (tool_parse_key_format("bench prefill", o->fmt_name, &o->fmt)) return TOOL_EXIT_USAGE;
    if (tool_parse_fp8_mma("bench prefill", o->fp8_mma_name, &o->fp8_mma)) return TOOL_EXIT_USAGE;
    if (tool_parse_kernels("bench prefill", o->kernels_name, &o->kernels)) return TOOL_EXIT_USAGE;
    if (o->variant && o->kernels == HISA_KERNELS_PORTABLE) {
        fprintf(stderr, "hisa bench prefill: --variant 1 with --kernels portable: the portable prefill has one exact "
                        "arithmetic, no operand variants\n");
        return TOOL_EXIT_USAGE;
    }
    if (o->n_q % o->chunks) {
        fprintf(stderr, "hisa bench prefill: --chunks %d: expected a divisor of --queries %d (chunks of equal size)\n",
                o->chunks, o->n_q);
        return TOOL_EXIT_USAGE;
    }
    if (o->one_context && o->one_context < o->n_q) {
        fprintf(stderr, "hisa bench prefill: --context %d: expected at least --queries %d (the chunk is the last "
                        "--queries positions of the context)\n", o->one_context, o->n_q);
        return TOOL_EXIT_USAGE;
    }
    if (o->json) return tool_check_output("bench prefill", "json", o->json);
    return 0;
}

#if HISA_CUDA
#include <cuda_runtime_api.h>

#include "../runtime/hisa_dev.h"

#define PB_CUDA(stmt) TOOL_CUDA("bench prefill", stmt)

typedef struct pb_rec {
    const char *mode;
    int32_t queries, context, chunks;
    double median_us, scoring_us, flops, tflops, speedup;
    double one_by_one_us; /* chunks > 1: the same chunks as one call each, in turn */
    double sharing; /* one-chunk HISA: query-blocks per tile (0: not measured) */
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

/* n random bf16 values in [-1, 1): sign, exponent 120..126, mantissa (seeded). */
static void pb_fill_bf16(uint16_t *h, size_t n) {
    assert(h && n > 0);
    uint64_t s = 7;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = pb_rng(&s);
        h[i] = (uint16_t)(((r & 1) << 15) | ((120 + (r >> 1) % 7) << 7) | ((r >> 8) & 0x7f));
    }
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
    pb_fill_bf16(ha, (size_t)n * n);
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

/* Median microseconds of `reps` rounds after 3 warm-ups, a round being the n_reqs calls of reqs in
 * turn. */
static int pb_time(hisa_runtime *rt, cudaStream_t st, const hisa_prefill *reqs, int n_reqs, uint32_t dev_flags, int reps,
                   double *median_us) {
    assert(rt && reqs && median_us && n_reqs >= 1);
    assert(reps >= 5);
    cudaEvent_t e0, e1;
    PB_CUDA(cudaEventCreate(&e0));
    PB_CUDA(cudaEventCreate(&e1));
    double *us = calloc((size_t)reps, sizeof(double));
    int err = 0;
    for (int i = 0; i < reps + 3 && !err; i++) {
        float ms = 0;
        if (cudaEventRecord(e0, st)) err = 1;
        int e = 0;
        for (int j = 0; j < n_reqs && !e; j++) e = hisa_dev_prefill(rt, &reqs[j], dev_flags);
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

/* --- the sharing factor of kept blocks ------------------------------------------------------ */

/* Rows per tile of a refine that scored a kept block once for several of the rows keeping it: 4
 * rows of 64 heads make the flat scorer's N = 256 query-heads (bench/NOTES-prefill.md). */
enum { PB_SHARE_G = 4 };

/* From the kept blocks the chunk's HISA rows (t + 1 > m * B) left in the scratch: query-blocks per
 * tile when each block's rows are grouped PB_SHARE_G at a time over the whole chunk (an inverted
 * list block -> rows). Groups of consecutive rows are `make sharing`'s (bench/sharing.c). */
static int pb_sharing(hisa_runtime *rt, int32_t t0, int32_t n_q, double *sharing) {
    assert(rt && sharing && n_q >= 1);
    const int32_t nb = (t0 + n_q - 1) / PB_B + 1, first = t0 + 1 > PB_M * PB_B ? 0 : PB_M * PB_B - t0;
    *sharing = 0.0;
    if (first >= n_q) return 0; /* no HISA rows */
    int32_t *kept = malloc(sizeof(int32_t) * (size_t)n_q * PB_M), *cnt = calloc((size_t)nb, sizeof(int32_t));
    int rc = 0, err = kept && cnt ? hisa_dev_kept_blocks(rt, n_q, kept) : HISA_ENOMEM;
    if (err == HISA_ENOMEM) fprintf(stderr, "hisa bench prefill: out of memory\n");
    else if (err) fprintf(stderr, "hisa bench prefill: hisa_dev_kept_blocks: %s (%s)\n", hisa_strerror(err), hisa_error_detail(rt));
    rc = err ? TOOL_EXIT_FAIL : 0;
    int64_t tiles = 0;
    for (int64_t e = (int64_t)first * PB_M; e < (int64_t)n_q * PB_M && !rc; e++) {
        const int32_t b = kept[e];
        if (b < 0 || b >= nb) {
            fprintf(stderr, "hisa bench prefill: kept block %d of row %d (t = %d) outside blocks 0..%d\n", b,
                    (int32_t)(e / PB_M), t0 + (int32_t)(e / PB_M), nb - 1);
            rc = TOOL_EXIT_FAIL;
            break;
        }
        cnt[b]++;
    }
    for (int32_t b = 0; b < nb && !rc; b++) tiles += (cnt[b] + PB_SHARE_G - 1) / PB_SHARE_G;
    free(kept), free(cnt);
    if (rc) return rc;
    *sharing = (double)(n_q - first) * PB_M / (double)tiles; /* kept query-blocks per tile */
    return 0;
}

/* --- hisa bench prefill --------------------------------------------------------------------- */

/* What every record repeats, and the stream everything runs on. */
typedef struct pb_env {
    struct cudaDeviceProp prop;
    char date[32], gemm_lib[32];
    int rtv, drv;
    double gemm; /* bf16 GEMM TFLOP/s, 0 without cuBLAS */
    cudaStream_t st;
} pb_env;

/* The device inputs of the chunk: queries, head weights, room for the selection. */
typedef struct pb_bufs {
    void *q;  /* [n_q, H, 128] in the chosen query format */
    float *w;
    int32_t *out;
} pb_bufs;

/* The device, the date, the versions, the stream and the GEMM rate, printed as the first line. */
static int pb_env_init(pb_env *e) {
    assert(e);
    PB_CUDA(cudaGetDeviceProperties(&e->prop, 0));
    time_t now = time(NULL);
    strftime(e->date, sizeof e->date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    e->rtv = e->drv = 0;
    cudaRuntimeGetVersion(&e->rtv);
    cudaDriverGetVersion(&e->drv);
    PB_CUDA(cudaStreamCreateWithFlags(&e->st, cudaStreamNonBlocking));
    e->gemm = pb_gemm_tflops(8192, 10, e->st, e->gemm_lib, sizeof e->gemm_lib);
    if (e->gemm < 0) {
        fprintf(stderr, "hisa bench prefill: the GEMM measurement failed\n");
        return TOOL_EXIT_FAIL;
    }
    printf("device %s (%d SMs), CUDA runtime %d, driver %d; bf16 GEMM 8192^3 (%s): %.1f TFLOP/s\n", e->prop.name,
           e->prop.multiProcessorCount, e->rtv, e->drv, e->gemm_lib, e->gemm);
    return 0;
}

/* A runtime for the paper's setting on st, one sequence of max_ctx tokens. */
static int pb_open(const pb_opts *o, cudaStream_t st, int32_t max_ctx, hisa_runtime **rt, int32_t *seq) {
    assert(o && rt && seq);
    assert(max_ctx >= 1);
    hisa_config cfg = {.n_heads = PB_H, .block_size = PB_B, .top_blocks = PB_M, .topk = PB_K, .key_format = o->fmt,
                       .max_context = max_ctx, .max_seqs = 1, .max_prefill_queries = 1024,
                       .device = HISA_DEVICE_CUDA(0), .fp8_mma = o->fp8_mma, .kernels = o->kernels};
    int err = tool_open("bench prefill", &cfg, NULL, rt);
    if (err) return err;
    hisa_set_stream(*rt, st);
    *seq = -1;
    err = hisa_seq_open(*rt, seq);
    if (!err) err = hisa_seq_extend(*rt, *seq, max_ctx);
    if (err) {
        hisa_close(*rt);
        *rt = NULL;
        return tool_lib_error("bench prefill", "sequence", err, NULL);
    }
    return 0;
}

/* Every key of the sequence from the generator, through the public write path. */
static int pb_write_keys(hisa_runtime *rt, int32_t seq, int32_t max_ctx, const char *fmt_name, synth_gen *gen) {
    assert(rt && gen && fmt_name);
    assert(max_ctx >= 1);
    float *keys = malloc(sizeof(float) * 1024 * 128);
    if (!keys) {
        fprintf(stderr, "hisa bench prefill: out of memory\n");
        return TOOL_EXIT_FAIL;
    }
    int err = 0;
    double t_write = tool_now_s();
    for (int32_t pos = 0; pos < max_ctx && !err; pos += 1024) {
        int32_t c = max_ctx - pos < 1024 ? max_ctx - pos : 1024;
        synth_keys(gen, c, keys, (int64_t)c * 128);
        hisa_write w = {.layer = 0, .n_tokens = c, .keys = keys, .flags = HISA_HOST_IO};
        err = hisa_write_range(rt, seq, pos, &w);
    }
    free(keys);
    if (err) return tool_lib_error("bench prefill", "hisa_write_range", err, NULL);
    printf("wrote %d keys (%s) in %.2f s\n", max_ctx, fmt_name, tool_now_s() - t_write);
    return 0;
}

/* The queries in q_format, converted in place at the front of hq (fp8 folds scales into hw). */
static size_t pb_convert(float *hq, float *hw, int32_t n_q, int32_t q_format) {
    size_t n = (size_t)n_q * PB_H * 128;
    void *conv = q_format == HISA_Q_F32 ? NULL : malloc(n * 2);
    if (q_format != HISA_Q_F32 && !conv) return 0;
    if (q_format == HISA_Q_BF16) tool_q_to_bf16(hq, (int64_t)n, conv);
    for (int32_t i = 0; q_format == HISA_Q_FP8 && i < n_q; i++)
        tool_q_to_fp8(hq + (int64_t)i * PB_H * 128, hw + (int64_t)i * PB_H, PB_H,
                      (uint8_t *)conv + (int64_t)i * PB_H * 128, hw + (int64_t)i * PB_H);
    if (conv) memcpy(hq, conv, n * tool_q_format_bytes(q_format));
    free(conv);
    return n * tool_q_format_bytes(q_format);
}

static int pb_copy(const float *hq, const float *hw, int32_t n_q, size_t q_bytes, pb_bufs *d) {
    assert(hq && hw && d);
    assert(n_q >= 1 && q_bytes > 0);
    PB_CUDA(cudaMalloc(&d->q, q_bytes));
    PB_CUDA(cudaMalloc((void **)&d->w, sizeof(float) * (size_t)n_q * PB_H));
    PB_CUDA(cudaMalloc((void **)&d->out, sizeof(int32_t) * (size_t)n_q * PB_K));
    PB_CUDA(cudaMemcpy(d->q, hq, q_bytes, cudaMemcpyHostToDevice));
    PB_CUDA(cudaMemcpy(d->w, hw, sizeof(float) * (size_t)n_q * PB_H, cudaMemcpyHostToDevice));
    return 0;
}

/* n_q decode-style queries from the generator (the same at every context), in q_format, on the
 * device. */
static int pb_upload_queries(synth_gen *gen, int32_t n_q, int32_t q_format, pb_bufs *d) {
    assert(gen && d);
    assert(n_q >= 1 && n_q <= 1024);
    float *hq = malloc(sizeof(float) * (size_t)n_q * PB_H * 128), *hw = malloc(sizeof(float) * (size_t)n_q * PB_H);
    if (!hq || !hw) {
        free(hq);
        free(hw);
        fprintf(stderr, "hisa bench prefill: out of memory\n");
        return TOOL_EXIT_FAIL;
    }
    for (int32_t i = 0; i < n_q; i++) synth_query(gen, 0, 0, hq + (int64_t)i * PB_H * 128, hw + (int64_t)i * PB_H);
    size_t q_bytes = pb_convert(hq, hw, n_q, q_format);
    int rc = q_bytes ? pb_copy(hq, hw, n_q, q_bytes, d) : TOOL_EXIT_FAIL;
    if (!q_bytes) fprintf(stderr, "hisa bench prefill: out of memory\n");
    free(hq);
    free(hw);
    return rc;
}

/* The runtime with every key written, and the chunk's queries on the device. */
static int pb_prepare(const pb_opts *o, cudaStream_t st, int32_t max_ctx, hisa_runtime **rt, int32_t *seq,
                      pb_bufs *d) {
    assert(o && rt && seq && d);
    int rc = pb_open(o, st, max_ctx, rt, seq);
    if (rc) return rc;
    synth_params sp;
    synth_params_default(&sp);
    sp.seed = PB_SEED;
    sp.n_heads = PB_H;
    synth_gen gen;
    if (synth_init(&gen, &sp)) {
        hisa_close(*rt);
        fprintf(stderr, "hisa bench prefill: out of memory\n");
        return TOOL_EXIT_FAIL;
    }
    rc = pb_write_keys(*rt, *seq, max_ctx, o->fmt_name, &gen);
    if (!rc) rc = pb_upload_queries(&gen, o->n_q, o->q_format, d);
    synth_free(&gen);
    if (rc) {
        hisa_close(*rt);
        cudaFree(d->q);
        cudaFree(d->w);
        cudaFree(d->out);
    }
    return rc;
}

/* One mode at one context: the n_q queries as o->chunks chunks of one call, chunk c the last
 * n_q / chunks positions before L * (c + 1) / chunks (one chunk: the last n_q of context L); with
 * several, the same chunks as one call each too. */
static int pb_point(const pb_opts *o, cudaStream_t st, hisa_runtime *rt, int32_t seq, const pb_bufs *d,
                    int32_t L, int mi, pb_rec *r) {
    assert(o && rt && d && r);
    assert(L >= o->n_q && (mi == 0 || mi == 1) && o->chunks >= 1 && o->chunks <= o->n_q);
    hisa_mode mode = mi == 0 ? HISA_MODE_FLAT : HISA_MODE_HISA;
    const int32_t n_c = o->chunks, per = o->n_q / n_c;
    int32_t *seqs = malloc(sizeof(int32_t) * 3 * (size_t)n_c), *t0s = seqs + n_c, *n_qs = t0s + n_c;
    hisa_prefill *one = malloc(sizeof(hisa_prefill) * (size_t)n_c);
    if (!seqs || !one) {
        free(seqs);
        free(one);
        fprintf(stderr, "hisa bench prefill: out of memory\n");
        return TOOL_EXIT_FAIL;
    }
    r->mode = mi == 0 ? "flat" : "hisa";
    r->queries = o->n_q;
    r->context = L;
    r->chunks = n_c;
    r->flops = 0;
    for (int32_t c = 0; c < n_c; c++) { /* chunk c ends at L * (c + 1) / n_c >= (c + 1) * per: disjoint */
        seqs[c] = seq;
        n_qs[c] = per;
        t0s[c] = (int32_t)((int64_t)L * (c + 1) / n_c) - per;
        one[c] = (hisa_prefill){.layer = 0, .mode = mode, .seq = seq, .t0 = t0s[c], .n_q = per,
                                .q = (const uint8_t *)d->q + (size_t)c * per * PB_H * 128 * tool_q_format_bytes(o->q_format),
                                .w = d->w + (size_t)c * per * PB_H, .out = d->out + (size_t)c * per * PB_K,
                                .q_format = o->q_format};
        r->flops += pb_flops(mode, t0s[c], per, PB_H, PB_B, PB_M, PB_K);
    }
    hisa_prefill req = one[0];
    if (n_c > 1) { /* one call of every chunk */
        req.n_chunks = n_c;
        req.seqs = seqs;
        req.t0s = t0s;
        req.n_qs = n_qs;
    }
    uint32_t vf = o->variant ? HISA_DEV_VARIANT_ALT : 0u;
    int err = pb_time(rt, st, &req, 1, vf, o->reps, &r->median_us);
    if (!err) err = pb_time(rt, st, &req, 1, vf | HISA_DEV_SCORING_ONLY, o->reps, &r->scoring_us);
    r->one_by_one_us = 0;
    if (!err && n_c > 1) err = pb_time(rt, st, one, n_c, vf, o->reps, &r->one_by_one_us);
    r->sharing = 0.0;
    if (!err && n_c == 1 && mode == HISA_MODE_HISA) /* the scoring call above left the kept blocks */
        err = pb_sharing(rt, t0s[0], per, &r->sharing);
    free(seqs);
    free(one);
    if (err) return err;
    r->tflops = r->flops / (r->scoring_us * 1e-6) / 1e12;
    return 0;
}

/* The table: flat and HISA at every context, into recs. */
static int pb_run(const pb_opts *o, const pb_env *e, hisa_runtime *rt, int32_t seq, const pb_bufs *d,
                  const int32_t *contexts, int32_t n_ctx, pb_rec *recs, int *n_recs) {
    assert(o && e && rt && d && recs && n_recs);
    assert(n_ctx >= 1 && 2 * n_ctx <= 16);
    int err = 0;
    printf("keys %s, queries %s, fp8_mma %s, variant %d, kernels %s\n", o->fmt_name, tool_q_format_name(o->q_format),
           tool_fp8_mma_name(o->fp8_mma), o->variant, tool_kernels_name(o->kernels));
    if (o->chunks > 1)
        printf("%d chunks of %d queries in one call; one_by_one_us: the same chunks as %d calls in turn\n", o->chunks,
               o->n_q / o->chunks, o->chunks);
    printf("%-5s %7s %8s %11s %11s %8s %8s %8s%s\n", "mode", "queries", "context", "median_us", "scoring_us", "tflops",
           "of_gemm", "speedup", o->chunks > 1 ? "  one_by_one_us" : "");
    for (int ci = 0; ci < n_ctx && !err; ci++) {
        for (int mi = 0; mi < 2 && !err; mi++) {
            pb_rec *r = &recs[*n_recs];
            err = pb_point(o, e->st, rt, seq, d, contexts[ci], mi, r);
            if (err) break;
            r->speedup = mi == 1 ? recs[*n_recs - 1].median_us / r->median_us : 1.0;
            printf("%-5s %7d %8d %11.1f %11.1f %8.1f %7.1f%% ", r->mode, r->queries, r->context, r->median_us,
                   r->scoring_us, r->tflops, e->gemm > 0 ? 100.0 * r->tflops / e->gemm : 0.0);
            if (mi == 1) printf("%7.2fx", r->speedup);
            else printf("%8s", "-");
            if (o->chunks > 1) printf(" %14.1f (%.2fx)", r->one_by_one_us, r->one_by_one_us / r->median_us);
            if (r->sharing > 0) printf("  sharing %.2f (%d rows a tile)", r->sharing, PB_SHARE_G);
            printf("\n");
            (*n_recs)++;
        }
    }
    return err;
}

static int pb_write_json(const pb_opts *o, const pb_env *e, const pb_rec *recs, int n_recs) {
    assert(o && o->json && e && recs);
    FILE *f = fopen(o->json, "w");
    if (!f) {
        fprintf(stderr, "hisa bench prefill: cannot write %s\n", o->json);
        return TOOL_EXIT_USAGE;
    }
    fprintf(f, "[\n");
    for (int i = 0; i < n_recs; i++) {
        const pb_rec *r = &recs[i];
        fprintf(f, "  {\"device\": ");
        tool_json_string(f, e->prop.name);
        fprintf(f,
                ", \"date\": \"%s\", \"mode\": \"%s\", \"queries\": %d, \"context\": %d, \"key_format\": \"%s\", "
                "\"heads\": %d, \"block_size\": %d, \"top_blocks\": %d, \"topk\": %d, \"median_us\": %.2f, "
                "\"scoring_us\": %.2f, \"scoring_flops\": %.6g, \"tflops\": %.2f, \"gemm_tflops\": %.2f, "
                "\"gemm_lib\": \"%s\", \"pct_of_gemm\": %.2f, \"cuda_runtime\": %d, \"driver\": %d, \"variant\": %d, "
                "\"q_format\": \"%s\", \"fp8_mma\": \"%s\", \"kernels\": \"%s\"",
                e->date, r->mode, r->queries, r->context, o->fmt_name, PB_H, PB_B, PB_M, PB_K, r->median_us,
                r->scoring_us, r->flops, r->tflops, e->gemm, e->gemm_lib,
                e->gemm > 0 ? 100.0 * r->tflops / e->gemm : 0.0, e->rtv, e->drv, o->variant,
                tool_q_format_name(o->q_format), tool_fp8_mma_name(o->fp8_mma),
                tool_kernels_name(o->kernels));
        if (strcmp(r->mode, "hisa") == 0) fprintf(f, ", \"speedup_vs_flat\": %.3f", r->speedup);
        fprintf(f, ", \"chunks\": %d", r->chunks);
        if (r->chunks > 1) fprintf(f, ", \"one_by_one_us\": %.2f", r->one_by_one_us);
        if (r->sharing > 0)
            fprintf(f, ", \"share_rows_per_tile\": %d, \"sharing_factor\": %.3f", PB_SHARE_G, r->sharing);
        fprintf(f, "}%s\n", i + 1 < n_recs ? "," : "");
    }
    fprintf(f, "]\n");
    fclose(f);
    printf("wrote %s\n", o->json);
    return 0;
}

/* The prefill benchmark of the parsed options o. */
static int pb_main(pb_opts o) {
    int rc;
    if (!tool_cuda_available()) {
        fprintf(stderr, "hisa bench prefill: needs a CUDA device (none found)\n");
        return TOOL_EXIT_FAIL;
    }
    static const int32_t contexts_all[] = {8192, 16384, 32768, 65536, 131072};
    const int32_t *contexts = o.one_context ? &o.one_context : contexts_all;
    int32_t n_ctx = o.one_context ? 1 : 5, max_ctx = contexts[n_ctx - 1];
    pb_env env;
    rc = pb_env_init(&env);
    if (rc) return rc;
    hisa_runtime *rt = NULL;
    int32_t seq = -1;
    pb_bufs d = {0};
    rc = pb_prepare(&o, env.st, max_ctx, &rt, &seq, &d);
    if (rc) return rc;
    pb_rec recs[16];
    int n_recs = 0;
    int err = pb_run(&o, &env, rt, seq, &d, contexts, n_ctx, recs, &n_recs);
    cudaFree(d.q);
    cudaFree(d.w);
    cudaFree(d.out);
    hisa_close(rt);
    cudaStreamDestroy(env.st);
    if (err) return TOOL_EXIT_FAIL;
    return o.json ? pb_write_json(&o, &env, recs, n_recs) : 0;
}

#endif /* HISA_CUDA */

int hisa_cmd_bench_prefill(int argc, char **argv) {
    pb_opts o;
    int rc = pb_parse(argc, argv, &o);
    if (rc < 0) {
        hisa_bench_prefill_help(stdout);
        return 0;
    }
    if (rc) return rc;
#if HISA_CUDA
    return pb_main(o);
#else
    fprintf(stderr, "hisa bench prefill: this build has no CUDA support\n");
    return TOOL_EXIT_FAIL;
#endif
}
