/* bench.c: `hisa bench decode`: the decode-step selection benchmark of issue 3.
 *
 * Why: the decode path's promise is speed against the memory floor, so the benchmark measures
 * the two ceilings it is judged by in the same run (a large device-to-device copy, counting
 * bytes read plus written) and times hisa_select_decode as an engine would run it: captured
 * once in a CUDA graph, replayed after warm-up, median of many replays timed with CUDA events.
 * Keys are written through the public API (hisa_write_range, HISA_HOST_IO) with structured
 * random data, never zeros. Also times the top-k alone (k of n scores) through hisa_k_topk.
 *
 * Output: a table on stdout; with --json FILE an array of records (device, date, mode, batch,
 * context, key_format, median_us, floor_us, copy_gbps, speedup_vs_flat for hisa). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_prefill.h"
#include "tools.h"

#if HISA_CUDA
#include <cuda_runtime_api.h>

#include "../kernels/kernels.h"

#define BENCH_CUDA(stmt) TOOL_CUDA("bench", stmt)

typedef struct bench_rec {
    char mode[16];
    int32_t batch, context;
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

static int bench_point(int32_t batch, int32_t context, const float *pool, int32_t pool_n, double copy_gbps,
                       int reps, bench_rec *flat, bench_rec *hisa) {
    const int32_t H = 64, B = 128, m = 64, k = 2048;
    hisa_config cfg = {.n_heads = H, .block_size = B, .top_blocks = m, .topk = k, .key_format = HISA_KEY_FP8,
                       .max_seqs = batch, .max_context = context, .max_batch = batch,
                       .max_prefill_queries = 1024, .device = HISA_DEVICE_CUDA(0)};
    hisa_runtime *rt = NULL;
    int err = tool_open("bench", &cfg, &rt);
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
    float *hq = malloc(sizeof(float) * (size_t)batch * H * 128), *hw = malloc(sizeof(float) * (size_t)batch * H);
    uint64_t s = 1234;
    for (int64_t i = 0; i < (int64_t)batch * H * 128; i++) hq[i] = bench_unif(&s);
    for (int64_t i = 0; i < (int64_t)batch * H; i++) hw[i] = 0.25f + 0.75f * fabsf(bench_unif(&s));
    float *dq = NULL, *dw = NULL;
    int32_t *dout = NULL;
    BENCH_CUDA(cudaMalloc((void **)&dq, sizeof(float) * (size_t)batch * H * 128));
    BENCH_CUDA(cudaMalloc((void **)&dw, sizeof(float) * (size_t)batch * H));
    BENCH_CUDA(cudaMalloc((void **)&dout, sizeof(int32_t) * (size_t)batch * k));
    BENCH_CUDA(cudaMemcpy(dq, hq, sizeof(float) * (size_t)batch * H * 128, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemcpy(dw, hw, sizeof(float) * (size_t)batch * H, cudaMemcpyHostToDevice));
    cudaStream_t st;
    BENCH_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    BENCH_CUDA(cudaDeviceSynchronize());
    err = hisa_set_stream(rt, st);
    double med[2] = {0, 0};
    for (int mode = 0; mode < 2 && !err; mode++) {
        hisa_decode req = {.layer = 0, .mode = mode == 0 ? HISA_MODE_FLAT : HISA_MODE_HISA, .n_seqs = batch,
                           .seq_ids = seqs, .q = dq, .w = dw, .out = dout};
        err = hisa_select_decode(rt, &req); /* warm: module load, first launches */
        if (!err) err = hisa_sync(rt);
        if (err) break;
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        BENCH_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        err = hisa_select_decode(rt, &req);
        BENCH_CUDA(cudaStreamEndCapture(st, &graph));
        if (err) break;
        BENCH_CUDA(cudaGraphInstantiate(&exec, graph, 0));
        int e2 = time_graph(exec, st, 10, reps, &med[mode]);
        BENCH_CUDA(cudaGraphExecDestroy(exec));
        BENCH_CUDA(cudaGraphDestroy(graph));
        if (e2) {
            err = e2;
            break;
        }
    }
    if (err) fprintf(stderr, "hisa bench: select at batch %d context %d: %s (%s)\n", batch, context,
                     hisa_strerror(err), hisa_error_detail(rt));
    hisa_set_stream(rt, NULL);
    hisa_close(rt);
    cudaStreamDestroy(st);
    cudaFree(dq);
    cudaFree(dw);
    cudaFree(dout);
    free(hq);
    free(hw);
    if (err) return TOOL_EXIT_FAIL;
    /* bytes that must be read: flat every key (codes + scale); hisa every block mean and the
     * kept blocks' keys */
    double nb = ceil((double)context / B);
    double flat_bytes = (double)batch * context * (128 + 4);
    double kept = nb > m ? m : nb;
    double hisa_bytes = nb > m ? (double)batch * (nb * 256.0 + kept * B * 132.0) : flat_bytes;
    snprintf(flat->mode, sizeof flat->mode, "flat");
    snprintf(hisa->mode, sizeof hisa->mode, "hisa");
    flat->batch = hisa->batch = batch;
    flat->context = hisa->context = context;
    flat->median_us = med[0];
    hisa->median_us = med[1];
    flat->bytes = flat_bytes;
    hisa->bytes = hisa_bytes;
    flat->floor_us = flat_bytes / (copy_gbps * 1e9) * 1e6;
    hisa->floor_us = hisa_bytes / (copy_gbps * 1e9) * 1e6;
    flat->speedup = 0;
    hisa->speedup = med[1] > 0 ? med[0] / med[1] : 0;
    return 0;
}

/* The top-k alone: k of n random scores per row, rows = batch. */
static int bench_topk(int32_t batch, int32_t n, int32_t k, int32_t sm_count, int reps, double *median_us) {
    float *hs = malloc(sizeof(float) * (size_t)batch * n);
    uint64_t s = 99;
    for (int64_t i = 0; i < (int64_t)batch * n; i++) hs[i] = 40.0f * bench_unif(&s) * fabsf(bench_unif(&s));
    float *ds = NULL;
    uint32_t *work = NULL;
    int32_t *out = NULL;
    size_t work_bytes = (size_t)batch * (size_t)hisa_k_work_row_words(n) * 4;
    BENCH_CUDA(cudaMalloc((void **)&ds, sizeof(float) * (size_t)batch * n));
    BENCH_CUDA(cudaMalloc((void **)&work, work_bytes));
    BENCH_CUDA(cudaMalloc((void **)&out, sizeof(int32_t) * (size_t)batch * k));
    BENCH_CUDA(cudaMemcpy(ds, hs, sizeof(float) * (size_t)batch * n, cudaMemcpyHostToDevice));
    BENCH_CUDA(cudaMemset(work, 0, work_bytes));
    cudaStream_t st;
    BENCH_CUDA(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    hisa_k_topk_params p = {.scores = ds, .stride = n, .n = n, .k = k, .n_rows = batch, .work = work, .out = out,
                            .sm_count = sm_count};
    int err = hisa_k_topk(st, &p);
    BENCH_CUDA(cudaStreamSynchronize(st));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    BENCH_CUDA(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    if (!err) err = hisa_k_topk(st, &p);
    BENCH_CUDA(cudaStreamEndCapture(st, &graph));
    BENCH_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    if (!err) err = time_graph(exec, st, 10, reps, median_us);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(st);
    cudaFree(ds);
    cudaFree(work);
    cudaFree(out);
    free(hs);
    return err ? TOOL_EXIT_FAIL : 0;
}

static void print_help(void) {
    printf("usage: hisa bench decode [--json FILE] [--reps N] [--quick]\n"
           "  Times hisa_select_decode (CUDA graph replays, median) for flat and HISA over batch\n"
           "  {1,16,64} x context {8K,32K,64K,128K} plus batch 1 at 1M (H=64, D=128, B=128, m=64,\n"
           "  k=2048, fp8 keys), and the top-k alone (2048 of 128K) at batch 1 and 64.\n"
           "  --quick: batch {1,64} x context {32K,128K} only; --batch N --context N: that point only;\n"
           "  --topk-only: the top-k alone.\n");
}

static int bench_decode(int argc, char **argv) {
    const char *json = NULL;
    int32_t reps = 100;
    int quick = 0;
    int32_t one_batch = 0, one_context = 0;
    int topk_only = 0;
    tool_opt opts[] = {{"json", TOOL_OPT_STR, &json},       {"reps", TOOL_OPT_INT, &reps},
                       {"quick", TOOL_OPT_FLAG, &quick},    {"batch", TOOL_OPT_INT, &one_batch},
                       {"context", TOOL_OPT_INT, &one_context}, {"topk-only", TOOL_OPT_FLAG, &topk_only}};
    int perr = tool_parse_opts("bench decode", argc, argv, opts, 6);
    if (perr < 0) {
        print_help();
        return 0;
    }
    if (perr) return perr;
    if (reps < 5) {
        fprintf(stderr, "hisa bench decode: --reps must be >= 5\n");
        return TOOL_EXIT_USAGE;
    }
    if (!tool_cuda_available()) {
        fprintf(stderr, "hisa bench decode: needs a CUDA device (none found)\n");
        return TOOL_EXIT_FAIL;
    }
    struct cudaDeviceProp prop;
    BENCH_CUDA(cudaGetDeviceProperties(&prop, 0));
    char date[32];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    double copy_gbps = 0;
    if (measure_copy(&copy_gbps)) return TOOL_EXIT_FAIL;
    printf("device %s (%d SMs), copy %.0f GB/s (read + write)\n", prop.name, prop.multiProcessorCount, copy_gbps);

    const int32_t pool_n = 1 << 16;
    float *pool = make_key_pool(pool_n, 42);
    if (!pool) return TOOL_EXIT_FAIL;
    int32_t batches_full[] = {1, 16, 64}, contexts_full[] = {8192, 32768, 65536, 131072};
    int32_t batches_quick[] = {1, 64}, contexts_quick[] = {32768, 131072};
    int32_t *batches = quick ? batches_quick : batches_full, *contexts = quick ? contexts_quick : contexts_full;
    int nbat = quick ? 2 : 3, nctx = quick ? 2 : 4;
    if (one_batch > 0 || one_context > 0) { /* one point (profiling) */
        if (one_batch < 1 || one_batch > 256 || one_context < 1) {
            fprintf(stderr, "hisa bench decode: --batch (1..256) and --context go together\n");
            return TOOL_EXIT_USAGE;
        }
        batches = &one_batch;
        contexts = &one_context;
        nbat = nctx = 1;
        quick = 1;
    }
    bench_rec recs[64];
    int n_recs = 0, err = 0;
    printf("%-5s %6s %8s %12s %10s %8s %9s\n", "mode", "batch", "context", "median_us", "floor_us", "of_floor", "speedup");
    for (int bi = 0; bi <= nbat && !err && !topk_only; bi++) {
        for (int ci = 0; ci < nctx && !err; ci++) {
            int32_t batch, context;
            if (bi == nbat) { /* batch 1 at 1M, once */
                if (ci > 0 || quick) break;
                batch = 1;
                context = 1 << 20;
            } else {
                batch = batches[bi];
                context = contexts[ci];
            }
            err = bench_point(batch, context, pool, pool_n, copy_gbps, reps, &recs[n_recs], &recs[n_recs + 1]);
            if (err) break;
            for (int j = 0; j < 2; j++) {
                bench_rec *r = &recs[n_recs + j];
                printf("%-5s %6d %8d %12.1f %10.1f %7.0f%% ", r->mode, r->batch, r->context, r->median_us,
                       r->floor_us, 100.0 * r->floor_us / r->median_us);
                if (j == 1) printf("%8.2fx\n", r->speedup);
                else printf("%9s\n", "-");
            }
            n_recs += 2;
        }
    }
    free(pool);
    double topk_us[2] = {0, 0};
    int32_t topk_batch[2] = {1, 64};
    for (int i = 0; i < 2 && !err && !one_batch; i++) {
        err = bench_topk(topk_batch[i], 131072, 2048, prop.multiProcessorCount, reps, &topk_us[i]);
        if (!err) printf("topk  %6d %8d %12.1f   (k=2048 of 128K scores, top-k alone)\n", topk_batch[i], 131072, topk_us[i]);
    }
    if (err) return err;
    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) {
            fprintf(stderr, "hisa bench decode: cannot write %s\n", json);
            return TOOL_EXIT_USAGE;
        }
        fprintf(f, "[\n");
        for (int i = 0; i < n_recs; i++) {
            bench_rec *r = &recs[i];
            fprintf(f, "  {\"device\": ");
            tool_json_string(f, prop.name);
            fprintf(f, ", \"date\": \"%s\", \"mode\": \"%s\", \"batch\": %d, \"context\": %d, \"key_format\": \"fp8\", "
                       "\"heads\": 64, \"block_size\": 128, \"top_blocks\": 64, \"topk\": 2048, "
                       "\"median_us\": %.2f, \"floor_us\": %.2f, \"copy_gbps\": %.1f, \"bytes_read\": %.0f",
                    date, r->mode, r->batch, r->context, r->median_us, r->floor_us, copy_gbps, r->bytes);
            if (strcmp(r->mode, "hisa") == 0) fprintf(f, ", \"speedup_vs_flat\": %.3f", r->speedup);
            fprintf(f, "},\n");
        }
        for (int i = 0; i < 2; i++) {
            fprintf(f, "  {\"device\": ");
            tool_json_string(f, prop.name);
            fprintf(f, ", \"date\": \"%s\", \"mode\": \"topk\", \"batch\": %d, \"context\": 131072, \"key_format\": \"fp8\", "
                       "\"topk\": 2048, \"median_us\": %.2f, \"copy_gbps\": %.1f}%s\n",
                    date, topk_batch[i], topk_us[i], copy_gbps, i == 1 ? "" : ",");
        }
        fprintf(f, "]\n");
        fclose(f);
        printf("wrote %s\n", json);
    }
    return 0;
}

int hisa_cmd_bench(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "decode") == 0) return bench_decode(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "prefill") == 0) return hisa_cmd_bench_prefill(argc - 1, argv + 1);
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        print_help();
        return 0;
    }
    fprintf(stderr, "hisa bench: expected a benchmark name: decode or prefill\n");
    return TOOL_EXIT_USAGE;
}

#else /* !HISA_CUDA */

int hisa_cmd_bench(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "prefill") == 0) return hisa_cmd_bench_prefill(argc - 1, argv + 1);
    fprintf(stderr, "hisa bench: this build has no CUDA support\n");
    return TOOL_EXIT_FAIL;
}

#endif
