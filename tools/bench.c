/* bench.c: `hisa bench decode`: the decode-step selection benchmark of issue 3.
 *
 * Why: the decode path's promise is speed against the memory floor, so the benchmark measures
 * the two ceilings it is judged by in the same run (a large device-to-device copy, counting
 * bytes read plus written) and times hisa_select_decode as an engine would run it: captured
 * once in a CUDA graph, replayed after warm-up, median of many replays timed with CUDA events.
 * Keys are written through the public API (hisa_write_range, HISA_HOST_IO) with structured
 * random data, never zeros. Also times the top-k alone (k of n scores) through hisa_dev_topk
 * (runtime/hisa_dev.h, the development hooks: no tool includes the runtime's or the kernels'
 * private headers).
 *
 * Output: a table on stdout; with --json FILE an array of records (device, date, mode, batch,
 * context, key_format, q_format, next_n, median_us, floor_us, copy_gbps, read_gbps,
 * speedup_vs_flat for hisa). */
#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_prefill.h"
#include "tools.h"

/* --- options (every build: --help and the checks work without CUDA) ---------------------- */

static void decode_help(FILE *f) {
    fprintf(f,
            "usage: hisa bench decode [--json FILE] [--reps N] [--quick] [--batch N --context N]\n"
            "                         [--topk-only] [--kernels auto|portable|hopper]\n"
            "                         [--fp8-mma exact|native]\n"
            "  Times hisa_select_decode (CUDA graph replays, median) for flat and HISA over batch\n"
            "  {1,16,64} x context {8K,32K,64K,128K} plus batch 1 at 1M (H=64, D=128, B=128, m=64,\n"
            "  k=2048, fp8 keys), then at 128K and batch 1 and 64 fp8 and bf16 queries and next_n 2,\n"
            "  and the top-k alone (2048 of 128K) at batch 1 and 64. Floors are the bytes read over a\n"
            "  streaming read probe measured in the same run (the copy rate is printed too).\n"
            "  --json FILE: the records as JSON (FILE is checked before the run)\n"
            "  --reps N: graph replays per point, at least 5 (default 100)\n"
            "  --quick: batch {1,64} x context {32K,128K} only\n"
            "  --batch N --context N: that point only (batch 1..256, HISA_MAX_BATCH; context\n"
            "  1..16M, HISA_MAX_CONTEXT)\n"
            "  --topk-only: the top-k alone.\n"
            "  --kernels auto|portable|hopper: the decode scorer (hisa_config.kernels; default auto,\n"
            "  the one measured fastest: portable is mma.sync, hopper is warpgroup MMA + bulk copies).\n"
            "  --fp8-mma exact|native: hisa_config.fp8_mma (default exact); native scores fp8 queries\n"
            "  on the Hopper scorer's e4m3 tensor cores (hisa.h: outside SPEC's agreement rule).\n");
}

typedef struct decode_opts {
    const char *json;
    int32_t reps, one_batch, one_context;
    int quick, topk_only;
    const char *kernels, *fp8_mma;
    int32_t kernels_v; /* HISA_KERNELS_* of kernels */
    int32_t fp8_mma_v; /* HISA_FP8_MMA_* of fp8_mma */
} decode_opts;

/* Options into o. Returns tool_parse_opts's codes (-1: --help) or TOOL_EXIT_USAGE. */
static int decode_parse(int argc, char **argv, decode_opts *o) {
    assert(argc >= 1 && o);
    *o = (decode_opts){.reps = 100};
    tool_opt opts[] = {
        {"json", TOOL_OPT_STR, &o->json, 0, 0, NULL},
        {"reps", TOOL_OPT_INT, &o->reps, 5, INT32_MAX, "graph replays per point"},
        {"quick", TOOL_OPT_FLAG, &o->quick, 0, 0, NULL},
        {"batch", TOOL_OPT_INT, &o->one_batch, 1, HISA_MAX_BATCH, "sequences, HISA_MAX_BATCH"},
        {"context", TOOL_OPT_INT, &o->one_context, 1, HISA_MAX_CONTEXT, "tokens, HISA_MAX_CONTEXT"},
        {"topk-only", TOOL_OPT_FLAG, &o->topk_only, 0, 0, NULL},
        {"kernels", TOOL_OPT_STR, &o->kernels, 0, 0, NULL},
        {"fp8-mma", TOOL_OPT_STR, &o->fp8_mma, 0, 0, NULL}};
    int perr = tool_parse_opts("bench decode", argc, argv, opts, 8);
    if (perr) return perr;
    if (tool_parse_fp8_mma("bench decode", o->fp8_mma, &o->fp8_mma_v)) return TOOL_EXIT_USAGE;
    if (tool_parse_kernels("bench decode", o->kernels, &o->kernels_v)) return TOOL_EXIT_USAGE;
    if (o->json) return tool_check_output("bench decode", "json", o->json);
    return 0;
}

#if HISA_CUDA
#include <cuda_runtime_api.h>

#include "../runtime/hisa_dev.h"

#define BENCH_CUDA(stmt) TOOL_CUDA("bench", stmt)

/* The setting of every decode point: H heads, blocks of B tokens, m blocks kept, k selected. */
enum { BENCH_H = 64, BENCH_B = 128, BENCH_M = 64, BENCH_K = 2048 };

/* The decode scorer and fp8 arithmetic every point opens with (--kernels, --fp8-mma). */
static int32_t g_kernels = HISA_KERNELS_AUTO, g_fp8_mma = HISA_FP8_MMA_EXACT;

typedef struct bench_rec {
    char mode[16];
    int32_t batch, context;
    int32_t q_format, next_n; /* the queries: HISA_Q_*, per sequence */
    double median_us, floor_us, speedup;
    double bytes;
} bench_rec;

static uint64_t bench_rng(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float bench_unif(uint64_t *s) { return (float)((bench_rng(s) >> 40) * (1.0 / 8388608.0) - 1.0); }

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median of `reps` replays of graph g on stream s, each timed with events, after `warm`. */
static int time_graph(cudaGraphExec_t g, cudaStream_t s, int warm, int reps, double *median_us) {
    cudaEvent_t e0, e1;
    BENCH_CUDA(cudaEventCreate(&e0));
    BENCH_CUDA(cudaEventCreate(&e1));
    for (int i = 0; i < warm; i++) BENCH_CUDA(cudaGraphLaunch(g, s));
    BENCH_CUDA(cudaStreamSynchronize(s));
    double *t = malloc(sizeof(double) * (size_t)reps);
    if (!t) return TOOL_EXIT_FAIL;
    for (int i = 0; i < reps; i++) {
        BENCH_CUDA(cudaEventRecord(e0, s));
        BENCH_CUDA(cudaGraphLaunch(g, s));
        BENCH_CUDA(cudaEventRecord(e1, s));
        BENCH_CUDA(cudaEventSynchronize(e1));
        float ms = 0;
        BENCH_CUDA(cudaEventElapsedTime(&ms, e0, e1));
        t[i] = ms * 1000.0;
    }
    qsort(t, (size_t)reps, sizeof(double), cmp_double);
    *median_us = t[reps / 2];
    free(t);
    BENCH_CUDA(cudaEventDestroy(e0));
    BENCH_CUDA(cudaEventDestroy(e1));
    return 0;
}

/* Copy bandwidth: a 2 GiB device-to-device copy, read + write bytes over the median time. */
static int measure_copy(double *gbps) {
    size_t bytes = (size_t)1 << 31;
    void *a = NULL, *b = NULL;
    BENCH_CUDA(cudaMalloc(&a, bytes));
    BENCH_CUDA(cudaMalloc(&b, bytes));
    BENCH_CUDA(cudaMemset(a, 0x3c, bytes));
    cudaEvent_t e0, e1;
    BENCH_CUDA(cudaEventCreate(&e0));
    BENCH_CUDA(cudaEventCreate(&e1));
    double t[9];
    for (int i = 0; i < 11; i++) {
        BENCH_CUDA(cudaEventRecord(e0, 0));
        BENCH_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0));
        BENCH_CUDA(cudaEventRecord(e1, 0));
        BENCH_CUDA(cudaEventSynchronize(e1));
        float ms = 0;
        BENCH_CUDA(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= 2) t[i - 2] = ms;
    }
    qsort(t, 9, sizeof(double), cmp_double);
    *gbps = 2.0 * (double)bytes / (t[4] * 1e-3) / 1e9;
    BENCH_CUDA(cudaFree(a));
    BENCH_CUDA(cudaFree(b));
    BENCH_CUDA(cudaEventDestroy(e0));
    BENCH_CUDA(cudaEventDestroy(e1));
    return 0;
}

/* A pool of structured keys: topic vectors plus noise, a few loud tokens. */
static float *make_key_pool(int32_t n, uint64_t seed) {
    float *pool = malloc(sizeof(float) * (size_t)n * 128);
    float topics[16][128];
    uint64_t s = seed;
    for (int t = 0; t < 16; t++)
        for (int d = 0; d < 128; d++) topics[t][d] = bench_unif(&s) * 2.0f;
    if (!pool) return NULL;
    for (int32_t i = 0; i < n; i++) {
        int t = (i / 97) % 16;
        float amp = (i % 1009 == 0) ? 8.0f : 1.0f;
        for (int d = 0; d < 128; d++) pool[(int64_t)i * 128 + d] = amp * (topics[t][d] + 0.7f * bench_unif(&s));
    }
    return pool;
}

static int fill_seq(hisa_runtime *rt, int32_t seq, int32_t context, const float *pool, int32_t pool_n, int32_t chunk,
                    uint64_t salt) {
    int err = hisa_seq_extend(rt, seq, context);
    if (err) return tool_lib_error("bench", "hisa_seq_extend", err, NULL);
    for (int32_t pos = 0; pos < context; pos += chunk) {
        int32_t n = context - pos < chunk ? context - pos : chunk;
        int32_t start = (int32_t)((salt * 7919u + (uint64_t)pos * 13u) % (uint64_t)(pool_n - chunk));
        hisa_write w = {.layer = 0, .n_tokens = n, .keys = pool + (int64_t)start * 128, .flags = HISA_HOST_IO};
        err = hisa_write_range(rt, seq, pos, &w);
        if (err) return tool_lib_error("bench", "hisa_write_range", err, NULL);
    }
    return 0;
}

/* --- one decode point: both modes at one batch x context ------------------------------------ */

/* The device inputs of a point: random queries and head weights, room for the selection. */
typedef struct point_bufs {
    void *q;       /* [batch, next_n, H, 128] in the point's query format */
    float *w;      /* [batch, next_n, H] */
    int32_t *out;  /* [batch, next_n, k] */
} point_bufs;

static int point_copy(const void *hq, const float *hw, size_t q_bytes, size_t nw, size_t nout, point_bufs *d,
                      cudaStream_t *st) {
    assert(hq && hw && d && st);
    BENCH_CUDA(cudaMalloc(&d->q, q_bytes));
    BENCH_CUDA(cudaMalloc((void **)&d->w, sizeof(float) * nw));
    BENCH_CUDA(cudaMalloc((void **)&d->out, sizeof(int32_t) * nout));
    BENCH_CUDA(cudaMemcpy(d->q, hq, q_bytes, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemcpy(d->w, hw, sizeof(float) * nw, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaStreamCreateWithFlags(st, cudaStreamNonBlocking));
    BENCH_CUDA(cudaDeviceSynchronize());
    return 0;
}

/* The point's float queries in its format, in place of hq (bf16 bits or fp8 codes packed at the
 * front; fp8 folds each head's scale into hw). Returns the bytes of the converted queries. */
static size_t point_convert(float *hq, float *hw, size_t rows, int32_t q_format) {
    size_t n = rows * BENCH_H * 128;
    if (q_format == HISA_Q_BF16) {
        uint16_t *b = malloc(n * sizeof(uint16_t));
        if (!b) return 0;
        tool_q_to_bf16(hq, (int64_t)n, b);
        memcpy(hq, b, n * sizeof(uint16_t));
        free(b);
    } else if (q_format == HISA_Q_FP8) {
        uint8_t *c = malloc(n);
        if (!c) return 0;
        for (size_t r = 0; r < rows; r++)
            tool_q_to_fp8(hq + r * BENCH_H * 128, hw + r * BENCH_H, BENCH_H, c + r * BENCH_H * 128, hw + r * BENCH_H);
        memcpy(hq, c, n);
        free(c);
    }
    return n * tool_q_format_bytes(q_format);
}

/* Uploads batch x next_n queries (seeded, the same at every point, in the point's format) and
 * weights, and makes the stream the point runs on. */
static int point_upload(int32_t batch, int32_t q_format, int32_t next_n, point_bufs *d, cudaStream_t *st) {
    assert(batch >= 1 && next_n >= 1 && d && st);
    size_t rows = (size_t)batch * next_n, nq = rows * BENCH_H * 128, nw = rows * BENCH_H;
    float *hq = malloc(sizeof(float) * nq), *hw = malloc(sizeof(float) * nw);
    size_t q_bytes = 0;
    if (hq && hw) {
        uint64_t s = 1234;
        for (int64_t i = 0; i < (int64_t)nq; i++) hq[i] = bench_unif(&s);
        for (int64_t i = 0; i < (int64_t)nw; i++) hw[i] = 0.25f + 0.75f * fabsf(bench_unif(&s));
        q_bytes = point_convert(hq, hw, rows, q_format);
    }
    int rc = q_bytes ? point_copy(hq, hw, q_bytes, nw, rows * BENCH_K, d, st) : TOOL_EXIT_FAIL;
    if (!q_bytes) fprintf(stderr, "hisa bench: out of memory\n");
    free(hq);
    free(hw);
    return rc;
}

/* Times req in both modes (flat, then HISA) into med[2]: a warm call, one call captured in a
 * graph, then time_graph's replays. Returns TOOL_EXIT_FAIL when a CUDA call of the capture
 * fails (reported here); otherwise 0, with *err the failure the caller reports with the point
 * (a library code, or time_graph's exit code) or 0. */
static int point_time_modes(hisa_runtime *rt, cudaStream_t st, hisa_decode req, int reps, double med[2],
                            int *err) {
    assert(rt && med && err);
    *err = 0;
    for (int mode = 0; mode < 2 && !*err; mode++) {
        req.mode = mode == 0 ? HISA_MODE_FLAT : HISA_MODE_HISA;
        *err = hisa_select_decode(rt, &req); /* warm: module load, first launches */
        if (!*err) *err = hisa_sync(rt);
        if (*err) break;
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        BENCH_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        *err = hisa_select_decode(rt, &req);
        BENCH_CUDA(cudaStreamEndCapture(st, &graph));
        if (*err) break;
        BENCH_CUDA(cudaGraphInstantiate(&exec, graph, 0));
        int e2 = time_graph(exec, st, 10, reps, &med[mode]);
        BENCH_CUDA(cudaGraphExecDestroy(exec));
        BENCH_CUDA(cudaGraphDestroy(graph));
        if (e2) *err = e2;
    }
    return 0;
}

/* The two records of a point from its medians. Bytes that must be read: flat every key (codes +
 * scale); hisa every block mean and the kept blocks' keys. */
static void point_records(int32_t batch, int32_t context, const double med[2], double read_gbps, bench_rec *flat,
                          bench_rec *hisa) {
    assert(batch >= 1 && context >= 1 && read_gbps > 0);
    assert(flat && hisa && flat != hisa);
    double nb = ceil((double)context / BENCH_B);
    double flat_bytes = (double)batch * context * (128 + 4);
    double kept = nb > BENCH_M ? BENCH_M : nb;
    double hisa_bytes = nb > BENCH_M ? (double)batch * (nb * 256.0 + kept * BENCH_B * 132.0) : flat_bytes;
    snprintf(flat->mode, sizeof flat->mode, "flat");
    snprintf(hisa->mode, sizeof hisa->mode, "hisa");
    flat->batch = hisa->batch = batch;
    flat->context = hisa->context = context;
    flat->median_us = med[0];
    hisa->median_us = med[1];
    flat->bytes = flat_bytes;
    hisa->bytes = hisa_bytes;
    flat->floor_us = flat_bytes / (read_gbps * 1e9) * 1e6; /* the keys are only read */
    hisa->floor_us = hisa_bytes / (read_gbps * 1e9) * 1e6;
    flat->speedup = 0;
    hisa->speedup = med[1] > 0 ? med[0] / med[1] : 0;
}

/* One point: a runtime sized for it, batch sequences of context keys from the pool, then both
 * modes timed on a stream of the benchmark's own. */
static int bench_point(int32_t batch, int32_t context, const bench_rec *variant, const float *pool, int32_t pool_n,
                       double read_gbps, int reps, bench_rec *flat, bench_rec *hisa) {
    assert(batch >= 1 && batch <= 256 && context >= 1);
    assert(pool && pool_n > 1024);
    hisa_config cfg = {.n_heads = BENCH_H, .block_size = BENCH_B, .top_blocks = BENCH_M, .topk = BENCH_K,
                       .key_format = HISA_KEY_FP8, .max_seqs = batch, .max_context = context, .max_batch = batch,
                       .max_prefill_queries = 1024, .device = HISA_DEVICE_CUDA(0), .kernels = g_kernels,
                       .fp8_mma = g_fp8_mma};
    hisa_runtime *rt = NULL;
    int err = tool_open("bench", &cfg, NULL, &rt);
    if (err) return err;
    int32_t seqs[256];
    for (int32_t b = 0; b < batch; b++) {
        err = hisa_seq_open(rt, &seqs[b]);
        if (!err) err = fill_seq(rt, seqs[b], context, pool, pool_n, 1024, (uint64_t)b);
        if (err) {
            hisa_close(rt);
            return err > 0 ? err : TOOL_EXIT_FAIL;
        }
    }
    point_bufs d = {0};
    cudaStream_t st = NULL;
    double med[2] = {0, 0};
    int rc = point_upload(batch, variant->q_format, variant->next_n, &d, &st);
    if (!rc) err = hisa_set_stream(rt, st);
    hisa_decode req = {.layer = 0, .n_seqs = batch, .seq_ids = seqs, .q = d.q, .w = d.w, .out = d.out,
                       .q_format = variant->q_format, .next_n = variant->next_n};
    if (!rc && !err) rc = point_time_modes(rt, st, req, reps, med, &err);
    if (!rc && err)
        fprintf(stderr, "hisa bench: select at batch %d context %d: %s (%s)\n", batch, context, hisa_strerror(err),
                hisa_error_detail(rt));
    hisa_set_stream(rt, NULL);
    hisa_close(rt);
    if (st) cudaStreamDestroy(st);
    cudaFree(d.q);
    cudaFree(d.w);
    cudaFree(d.out);
    if (rc || err) return TOOL_EXIT_FAIL;
    point_records(batch * variant->next_n, context, med, read_gbps, flat, hisa); /* every row reads */
    flat->batch = hisa->batch = batch;
    flat->q_format = hisa->q_format = variant->q_format;
    flat->next_n = hisa->next_n = variant->next_n;
    return 0;
}

/* --- the top-k alone ------------------------------------------------------------------------ */

typedef struct topk_bufs {
    float *scores;
    void *work;
    int32_t *out;
} topk_bufs;

static int topk_copy(const float *hs, size_t n_scores, size_t work_bytes, size_t n_out, topk_bufs *d) {
    assert(hs && d && work_bytes > 0);
    BENCH_CUDA(cudaMalloc((void **)&d->scores, sizeof(float) * n_scores));
    BENCH_CUDA(cudaMalloc(&d->work, work_bytes));
    BENCH_CUDA(cudaMalloc((void **)&d->out, sizeof(int32_t) * n_out));
    BENCH_CUDA(cudaMemcpy(d->scores, hs, sizeof(float) * n_scores, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemset(d->work, 0, work_bytes)); /* zeroed once; the top-k leaves it zero */
    return 0;
}

/* Random scores [batch, n] (heavy-tailed, many near ties), zeroed work, room for out. */
static int topk_upload(int32_t batch, int32_t n, int32_t k, topk_bufs *d) {
    assert(batch >= 1 && n >= 1 && k >= 1);
    size_t n_scores = (size_t)batch * n;
    uint64_t work_bytes = hisa_dev_topk_work_bytes(n, batch);
    float *hs = malloc(sizeof(float) * n_scores);
    if (!hs || !work_bytes) {
        free(hs);
        fprintf(stderr, "hisa bench: out of memory\n");
        return TOOL_EXIT_FAIL;
    }
    uint64_t s = 99;
    for (int64_t i = 0; i < (int64_t)n_scores; i++) hs[i] = 40.0f * bench_unif(&s) * fabsf(bench_unif(&s));
    int rc = topk_copy(hs, n_scores, (size_t)work_bytes, (size_t)batch * k, d);
    free(hs);
    return rc;
}

/* A warm call, one call captured in a graph, time_graph's replays. */
static int topk_time(hisa_runtime *rt, cudaStream_t st, const topk_bufs *d, int32_t batch, int32_t n, int32_t k,
                     int reps, double *median_us) {
    assert(rt && d && median_us);
    assert(batch >= 1 && n >= 1 && k >= 1);
    int err = hisa_dev_topk(rt, d->scores, n, n, k, batch, d->work, d->out);
    BENCH_CUDA(cudaStreamSynchronize(st));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    BENCH_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    if (!err) err = hisa_dev_topk(rt, d->scores, n, n, k, batch, d->work, d->out);
    BENCH_CUDA(cudaStreamEndCapture(st, &graph));
    BENCH_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    if (!err) err = time_graph(exec, st, 10, reps, median_us);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    return err ? TOOL_EXIT_FAIL : 0;
}

static int topk_stream(hisa_runtime *rt, cudaStream_t *st) {
    assert(rt && st);
    BENCH_CUDA(cudaStreamCreateWithFlags(st, cudaStreamNonBlocking));
    return hisa_set_stream(rt, *st) ? TOOL_EXIT_FAIL : 0;
}

/* The top-k alone: k of n random scores per row, rows = batch. hisa_dev_topk launches on a
 * runtime's stream; the top-k reads nothing of the runtime but its device and SM count, so the
 * smallest configuration serves. */
static int bench_topk(int32_t batch, int32_t n, int32_t k, int reps, double *median_us) {
    assert(batch >= 1 && n >= k && k >= 1);
    assert(median_us);
    hisa_config cfg = {.n_layers = 1, .n_heads = 1, .block_size = 32, .top_blocks = 2, .topk = 32,
                       .max_seqs = 1, .max_context = 64, .max_batch = 1, .max_prefill_queries = 1,
                       .device = HISA_DEVICE_CUDA(0)};
    hisa_runtime *rt = NULL;
    int rc = tool_open("bench", &cfg, NULL, &rt);
    if (rc) return rc;
    topk_bufs d = {0};
    cudaStream_t st = NULL;
    rc = topk_upload(batch, n, k, &d);
    if (!rc) rc = topk_stream(rt, &st);
    if (!rc) rc = topk_time(rt, st, &d, batch, n, k, reps, median_us);
    hisa_set_stream(rt, NULL);
    hisa_close(rt);
    if (st) cudaStreamDestroy(st);
    cudaFree(d.scores);
    cudaFree(d.work);
    cudaFree(d.out);
    return rc;
}

/* --- hisa bench decode ---------------------------------------------------------------------- */

/* What every record repeats: the device, the date, the ceilings measured in this run. */
typedef struct bench_env {
    struct cudaDeviceProp prop;
    char date[32];
    double copy_gbps, read_gbps;
} bench_env;

/* Read bandwidth: hisa_dev_read_probe over a 2 GiB buffer (not zeros), captured once in a graph
 * and replayed (so no host gap between launches is timed), bytes over the median replay. */
static int read_time(hisa_runtime *rt, const void *buf, size_t bytes, uint64_t *sum, double *gbps) {
    cudaStream_t st;
    BENCH_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    int err = hisa_set_stream(rt, st);
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    BENCH_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    if (!err) err = hisa_dev_read_probe(rt, buf, bytes, sum);
    BENCH_CUDA(cudaStreamEndCapture(st, &graph));
    double us = 0;
    if (!err) {
        BENCH_CUDA(cudaGraphInstantiate(&exec, graph, 0));
        err = time_graph(exec, st, 2, 9, &us);
        BENCH_CUDA(cudaGraphExecDestroy(exec));
    }
    BENCH_CUDA(cudaGraphDestroy(graph));
    hisa_set_stream(rt, NULL);
    BENCH_CUDA(cudaStreamDestroy(st));
    if (err) return err > 0 ? err : tool_lib_error("bench", "hisa_dev_read_probe", err, NULL);
    *gbps = (double)bytes / (us * 1e-6) / 1e9;
    return 0;
}

static int measure_read(double *gbps) {
    hisa_config cfg = {.n_heads = 1, .block_size = 32, .top_blocks = 2, .topk = 32, .max_seqs = 1,
                       .max_context = 64, .max_prefill_queries = 1, .device = HISA_DEVICE_CUDA(0)};
    hisa_runtime *rt = NULL;
    int rc = tool_open("bench", &cfg, NULL, &rt);
    if (rc) return rc;
    size_t bytes = (size_t)1 << 31;
    void *buf = NULL;
    uint64_t *sum = NULL;
    BENCH_CUDA(cudaMalloc(&buf, bytes));
    BENCH_CUDA(cudaMalloc((void **)&sum, sizeof(uint64_t)));
    BENCH_CUDA(cudaMemset(buf, 0x3c, bytes));
    rc = read_time(rt, buf, bytes, sum, gbps);
    hisa_close(rt);
    BENCH_CUDA(cudaFree(buf));
    BENCH_CUDA(cudaFree(sum));
    return rc;
}

/* The points: batches x contexts, then batch 1 at 1M unless quick. */
typedef struct decode_grid {
    const int32_t *batches, *contexts;
    int nbat, nctx, quick;
} decode_grid;

static const int32_t k_batches_full[] = {1, 16, 64}, k_contexts_full[] = {8192, 32768, 65536, 131072};
static const int32_t k_batches_quick[] = {1, 64}, k_contexts_quick[] = {32768, 131072};
static const int32_t k_topk_batch[2] = {1, 64};

/* The device, the date and the copy ceiling, printed as the first line. */
static int decode_env(bench_env *e) {
    assert(e);
    BENCH_CUDA(cudaGetDeviceProperties(&e->prop, 0));
    time_t now = time(NULL);
    strftime(e->date, sizeof e->date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    e->copy_gbps = e->read_gbps = 0;
    if (measure_copy(&e->copy_gbps) || measure_read(&e->read_gbps)) return TOOL_EXIT_FAIL;
    printf("device %s (%d SMs), copy %.0f GB/s (read + write), read %.0f GB/s (streaming read probe;\n"
           "floors are bytes read over it, so of_floor of a flat row is its share of the read bandwidth)\n",
           e->prop.name, e->prop.multiProcessorCount, e->copy_gbps, e->read_gbps);
    return 0;
}

/* The full grid, the quick one, or the one point of --batch and --context (profiling). */
static int decode_grid_pick(const decode_opts *o, decode_grid *g) {
    assert(o && g);
    *g = (decode_grid){.batches = o->quick ? k_batches_quick : k_batches_full,
                       .contexts = o->quick ? k_contexts_quick : k_contexts_full,
                       .nbat = o->quick ? 2 : 3, .nctx = o->quick ? 2 : 4, .quick = o->quick};
    if (o->one_batch > 0 || o->one_context > 0) {
        if (o->one_batch < 1 || o->one_context < 1) { /* the ranges were checked when parsed */
            fprintf(stderr, "hisa bench decode: --batch and --context go together (one point)\n");
            return TOOL_EXIT_USAGE;
        }
        *g = (decode_grid){.batches = &o->one_batch, .contexts = &o->one_context, .nbat = 1, .nctx = 1, .quick = 1};
    }
    return 0;
}

static void print_point(const bench_rec *recs) {
    for (int j = 0; j < 2; j++) {
        const bench_rec *r = &recs[j];
        char qs[16];
        snprintf(qs, sizeof qs, "%sx%d", tool_q_format_name(r->q_format), r->next_n);
        printf("%-5s %6d %8d %7s %12.1f %10.1f %7.0f%% ", r->mode, r->batch, r->context, qs, r->median_us, r->floor_us,
               100.0 * r->floor_us / r->median_us);
        if (j == 1) printf("%8.2fx\n", r->speedup);
        else printf("%9s\n", "-");
    }
}

/* The table: every point of g (none with --topk-only), two records each into recs. */
static int decode_points(const decode_opts *o, const decode_grid *g, const bench_env *e, const float *pool,
                         int32_t pool_n, bench_rec *recs, int cap, int *n_recs) {
    assert(g->nbat >= 1 && g->nctx >= 1);
    assert(cap >= 2 * (g->nbat * g->nctx + 1));
    (void)cap;
    int err = 0;
    printf("%-5s %6s %8s %7s %12s %10s %8s %9s\n", "mode", "batch", "context", "queries", "median_us", "floor_us",
           "of_floor", "speedup");
    const bench_rec plain = {.q_format = HISA_Q_F32, .next_n = 1};
    for (int bi = 0; bi <= g->nbat && !err && !o->topk_only; bi++) {
        for (int ci = 0; ci < g->nctx && !err; ci++) {
            int32_t batch, context;
            if (bi == g->nbat) { /* batch 1 at 1M, once */
                if (ci > 0 || g->quick) break;
                batch = 1;
                context = 1 << 20;
            } else {
                batch = g->batches[bi];
                context = g->contexts[ci];
            }
            err = bench_point(batch, context, &plain, pool, pool_n, e->read_gbps, o->reps, &recs[*n_recs],
                              &recs[*n_recs + 1]);
            if (err) break;
            print_point(&recs[*n_recs]);
            *n_recs += 2;
        }
    }
    return err;
}

/* The engine's query forms at 128K, batch 1 and 64 (not with --batch / --context): fp8 and bf16
 * queries, and two queries per sequence (next_n 2). */
static int decode_variants(const decode_opts *o, const bench_env *e, const float *pool, int32_t pool_n,
                           bench_rec *recs, int cap, int *n_recs) {
    static const bench_rec k_variants[3] = {{.q_format = HISA_Q_FP8, .next_n = 1},
                                            {.q_format = HISA_Q_BF16, .next_n = 1},
                                            {.q_format = HISA_Q_F32, .next_n = 2}};
    int err = 0;
    for (int b = 0; b < 2 && !err && !o->one_batch && !o->topk_only; b++)
        for (int v = 0; v < 3 && !err; v++) {
            assert(*n_recs + 2 <= cap);
            err = bench_point(b ? 64 : 1, 131072, &k_variants[v], pool, pool_n, e->read_gbps, o->reps, &recs[*n_recs],
                              &recs[*n_recs + 1]);
            if (!err) print_point(&recs[*n_recs]);
            *n_recs += err ? 0 : 2;
        }
    (void)cap;
    return err;
}

/* The top-k alone at batch 1 and 64 (not with --batch / --context). */
static int decode_topk(const decode_opts *o, double topk_us[2]) {
    assert(o && topk_us);
    int err = 0;
    for (int i = 0; i < 2 && !err && !o->one_batch; i++) {
        err = bench_topk(k_topk_batch[i], 131072, 2048, o->reps, &topk_us[i]);
        if (!err) printf("topk  %6d %8d %12.1f   (k=2048 of 128K scores, top-k alone)\n", k_topk_batch[i], 131072, topk_us[i]);
    }
    return err;
}

static int decode_write_json(const char *json, const bench_env *e, const bench_rec *recs, int n_recs,
                             const double topk_us[2]) {
    assert(json && e && topk_us);
    FILE *f = fopen(json, "w");
    if (!f) {
        fprintf(stderr, "hisa bench decode: cannot write %s\n", json);
        return TOOL_EXIT_USAGE;
    }
    fprintf(f, "[\n");
    for (int i = 0; i < n_recs; i++) {
        const bench_rec *r = &recs[i];
        fprintf(f, "  {\"device\": ");
        tool_json_string(f, e->prop.name);
        fprintf(f, ", \"date\": \"%s\", \"mode\": \"%s\", \"batch\": %d, \"context\": %d, \"key_format\": \"fp8\", "
                   "\"heads\": 64, \"block_size\": 128, \"top_blocks\": 64, \"topk\": 2048, "
                   "\"q_format\": \"%s\", \"next_n\": %d, \"median_us\": %.2f, \"floor_us\": %.2f, "
                   "\"copy_gbps\": %.1f, \"read_gbps\": %.1f, \"bytes_read\": %.0f, \"kernels\": \"%s\", "
                   "\"fp8_mma\": \"%s\"",
                e->date, r->mode, r->batch, r->context, tool_q_format_name(r->q_format), r->next_n, r->median_us,
                r->floor_us, e->copy_gbps, e->read_gbps, r->bytes,
                tool_kernels_name(g_kernels), tool_fp8_mma_name(g_fp8_mma));
        if (strcmp(r->mode, "hisa") == 0) fprintf(f, ", \"speedup_vs_flat\": %.3f", r->speedup);
        fprintf(f, "},\n");
    }
    for (int i = 0; i < 2; i++) {
        fprintf(f, "  {\"device\": ");
        tool_json_string(f, e->prop.name);
        fprintf(f, ", \"date\": \"%s\", \"mode\": \"topk\", \"batch\": %d, \"context\": 131072, \"key_format\": \"fp8\", "
                   "\"topk\": 2048, \"median_us\": %.2f, \"copy_gbps\": %.1f, \"read_gbps\": %.1f}%s\n",
                e->date, k_topk_batch[i], topk_us[i], e->copy_gbps, e->read_gbps, i == 1 ? "" : ",");
    }
    fprintf(f, "]\n");
    fclose(f);
    printf("wrote %s\n", json);
    return 0;
}

/* The decode benchmark of the parsed options o. */
static int decode_run(const decode_opts *o) {
    assert(o);
    if (!tool_cuda_available()) {
        fprintf(stderr, "hisa bench decode: needs a CUDA device (none found)\n");
        return TOOL_EXIT_FAIL;
    }
    g_kernels = o->kernels_v;
    g_fp8_mma = o->fp8_mma_v;
    bench_env env;
    if (decode_env(&env)) return TOOL_EXIT_FAIL;
    const int32_t pool_n = 1 << 16;
    float *pool = make_key_pool(pool_n, 42);
    if (!pool) return TOOL_EXIT_FAIL;
    decode_grid g;
    int rc = decode_grid_pick(o, &g); /* after the device line, as it always was */
    if (rc) {
        free(pool);
        return rc;
    }
    bench_rec recs[64];
    int n_recs = 0;
    int err = decode_points(o, &g, &env, pool, pool_n, recs, 64, &n_recs);
    if (!err) err = decode_variants(o, &env, pool, pool_n, recs, 64, &n_recs);
    free(pool);
    double topk_us[2] = {0, 0};
    if (!err) err = decode_topk(o, topk_us);
    if (err) return err;
    return o->json ? decode_write_json(o->json, &env, recs, n_recs, topk_us) : 0;
}

#endif /* HISA_CUDA */

static int bench_decode(int argc, char **argv) {
    decode_opts o;
    int rc = decode_parse(argc, argv, &o);
    if (rc < 0) {
        decode_help(stdout);
        return 0;
    }
    if (rc) return rc;
#if HISA_CUDA
    return decode_run(&o);
#else
    fprintf(stderr, "hisa bench decode: this build has no CUDA support\n");
    return TOOL_EXIT_FAIL;
#endif
}

static void bench_help(FILE *f) {
    fprintf(f, "usage: hisa bench decode|prefill [options]     hisa bench NAME --help\n"
               "The benchmarks need a CUDA device (Hopper)%s.\n\n",
            HISA_CUDA ? "" : "; this build has no CUDA support");
    decode_help(f);
    fprintf(f, "\n");
    hisa_bench_prefill_help(f);
}

int hisa_cmd_bench(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "decode") == 0) return bench_decode(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "prefill") == 0) return hisa_cmd_bench_prefill(argc - 1, argv + 1);
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        bench_help(stdout);
        return 0;
    }
    fprintf(stderr, "hisa bench: expected a benchmark name: decode or prefill (hisa bench --help)\n");
    return TOOL_EXIT_USAGE;
}
