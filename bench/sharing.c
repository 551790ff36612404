/* sharing.c: `make sharing`: how many kept blocks neighbouring queries of a prefill chunk share,
 * on the workload of `hisa bench prefill` (issue 13's "shared kept blocks" asks for the factor).
 *
 * Why: a refine tile that serves G queries at once (N = G x 64 query-heads, like the flat kernel's
 * tiles) pays off by how many of the G queries keep the tile's block. The kept blocks are defined
 * by the SPEC, so the CPU reference gives them exactly, with no GPU: this runs hisa's CPU backend.
 *
 * Method: the bench's setting (tools/bench_prefill.h: H 64, B 128, m 64, k 2048, its seed; fp8
 * keys; 128K keys from the generator, then 1024 queries from it, as `hisa bench prefill` makes
 * them); the chunk is the last 1024 positions of each context L. Every query's HISA selection runs on the CPU reference
 * (hisa__cpu_select_one, which leaves the query's m kept blocks in r.cpu_blocks), one runtime per
 * thread. For groups of G consecutive queries: distinct kept blocks per group, and the sharing
 * factor G * m / distinct (1 = no block shared; G = every query keeps the same m blocks).
 *
 * Usage: build/bench_sharing [--json FILE] [L ...]   (default L: 32768 65536 131072) */
#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../runtime/internal.h"
#include "../tools/bench_prefill.h"
#include "../tools/synth.h"

enum { SH_H = PB_H, SH_B = PB_B, SH_M = PB_M, SH_K = PB_K, SH_NQ = 1024, SH_MAXC = 131072, SH_THREADS_MAX = 64 };

typedef struct sh_job {
    const float *keys, *q, *w; /* [SH_MAXC,128], [SH_NQ,H,128], [SH_NQ,H] */
    int32_t ctx, tix, n_threads;
    int32_t *kept; /* [SH_NQ, m] */
    int err;
} sh_job;

/* Thread tix: its own CPU runtime holding the first ctx keys, then queries tix, tix + n, ... */
static void *sh_work(void *arg) {
    sh_job *j = arg;
    assert(j && j->ctx >= SH_NQ && j->ctx <= SH_MAXC && j->ctx % 1024 == 0);
    hisa_config cfg = {.n_heads = SH_H, .block_size = SH_B, .top_blocks = SH_M, .topk = SH_K,
                       .key_format = HISA_KEY_FP8, .max_context = j->ctx, .max_seqs = 1, .device = HISA_DEVICE_CPU};
    hisa_runtime *rt = NULL;
    int32_t seq = -1, *out = malloc(sizeof(int32_t) * SH_K);
    j->err = out ? hisa_open(&rt, &cfg, NULL) : HISA_ENOMEM;
    if (!j->err) j->err = hisa_seq_open(rt, &seq);
    if (!j->err) j->err = hisa_seq_extend(rt, seq, j->ctx);
    for (int32_t pos = 0; pos < j->ctx && !j->err; pos += 1024) {
        hisa_write w = {.layer = 0, .n_tokens = 1024, .keys = j->keys + (int64_t)pos * 128};
        j->err = hisa_write_range(rt, seq, pos, &w);
    }
    for (int32_t i = j->tix; i < SH_NQ && !j->err; i += j->n_threads) {
        j->err = hisa__cpu_select_one(rt, 0, HISA_MODE_HISA, seq, j->ctx - SH_NQ + i, j->q + (int64_t)i * SH_H * 128,
                                      HISA_Q_F32, j->w + (int64_t)i * SH_H, 0, out);
        memcpy(j->kept + (int64_t)i * SH_M, rt->r.cpu_blocks, sizeof(int32_t) * SH_M);
    }
    hisa_close(rt);
    free(out);
    return NULL;
}

/* Mean distinct kept blocks over the groups of G consecutive queries. */
static double sh_distinct(const int32_t *kept, int32_t n_blocks, int32_t G, uint8_t *seen) {
    assert(kept && seen && G >= 1 && SH_NQ % G == 0);
    int64_t distinct = 0;
    for (int32_t g0 = 0; g0 < SH_NQ; g0 += G) {
        memset(seen, 0, (size_t)n_blocks);
        for (int32_t i = g0; i < g0 + G; i++)
            for (int32_t b = 0; b < SH_M; b++) {
                int32_t blk = kept[(int64_t)i * SH_M + b];
                assert(blk >= 0 && blk < n_blocks);
                distinct += !seen[blk];
                seen[blk] = 1;
            }
    }
    return (double)distinct / (SH_NQ / G);
}

static int sh_context(const float *keys, const float *q, const float *w, int32_t ctx, int32_t *kept) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    int32_t n_threads = n < 1 ? 1 : n > SH_THREADS_MAX ? SH_THREADS_MAX : (int32_t)n;
    pthread_t th[SH_THREADS_MAX];
    sh_job jobs[SH_THREADS_MAX];
    int err = 0;
    for (int32_t t = 0; t < n_threads; t++) {
        jobs[t] = (sh_job){.keys = keys, .q = q, .w = w, .ctx = ctx, .tix = t, .n_threads = n_threads, .kept = kept};
        if (pthread_create(&th[t], NULL, sh_work, &jobs[t])) return HISA_ENOMEM;
    }
    for (int32_t t = 0; t < n_threads; t++) {
        pthread_join(th[t], NULL);
        if (jobs[t].err && !err) err = jobs[t].err;
    }
    return err;
}

int main(int argc, char **argv) {
    const char *json = NULL;
    int32_t ctxs[8], n_ctx = 0;
    for (int a = 1; a < argc; a++) {
        if (!strcmp(argv[a], "--json") && a + 1 < argc) json = argv[++a];
        else if (n_ctx < 8 && atoi(argv[a]) >= SH_NQ && atoi(argv[a]) <= SH_MAXC && atoi(argv[a]) % 1024 == 0)
            ctxs[n_ctx++] = atoi(argv[a]);
        else return fprintf(stderr, "bench_sharing: '%s': expected --json FILE or a context, a multiple of 1024 in [1024, 131072]\n", argv[a]), 2;
    }
    if (!n_ctx) ctxs[n_ctx++] = 32768, ctxs[n_ctx++] = 65536, ctxs[n_ctx++] = 131072;
    synth_params sp;
    synth_params_default(&sp);
    sp.seed = PB_SEED;
    sp.n_heads = SH_H;
    synth_gen gen;
    float *keys = malloc(sizeof(float) * (size_t)SH_MAXC * 128), *q = malloc(sizeof(float) * SH_NQ * SH_H * 128);
    float *w = malloc(sizeof(float) * SH_NQ * SH_H);
    int32_t *kept = malloc(sizeof(int32_t) * SH_NQ * SH_M);
    uint8_t *seen = malloc(SH_MAXC / SH_B);
    FILE *f = json ? fopen(json, "w") : NULL;
    if (!keys || !q || !w || !kept || !seen || synth_init(&gen, &sp) || (json && !f))
        return fprintf(stderr, "bench_sharing: out of memory, or cannot write %s\n", json ? json : "-"), 1;
    for (int32_t pos = 0; pos < SH_MAXC; pos += 1024) synth_keys(&gen, 1024, keys + (int64_t)pos * 128, 1024 * 128);
    for (int32_t i = 0; i < SH_NQ; i++) synth_query(&gen, 0, 0, q + (int64_t)i * SH_H * 128, w + (int64_t)i * SH_H);
    char date[32];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    if (f) fprintf(f, "[\n");
    printf("%8s %6s %4s %15s %8s\n", "context", "blocks", "G", "distinct/group", "sharing");
    for (int32_t c = 0; c < n_ctx; c++) {
        int err = sh_context(keys, q, w, ctxs[c], kept);
        if (err) return fprintf(stderr, "bench_sharing: context %d: %s\n", ctxs[c], hisa_strerror(err)), 1;
        for (int32_t G = 1; G <= 64; G *= 2) {
            double d = sh_distinct(kept, ctxs[c] / SH_B, G, seen);
            printf("%8d %6d %4d %15.1f %7.2fx\n", ctxs[c], ctxs[c] / SH_B, G, d, G * SH_M / d);
            if (f)
                fprintf(f, "  {\"device\": \"CPU reference\", \"date\": \"%s\", \"context\": %d, \"queries\": %d, \"heads\": %d, "
                           "\"block_size\": %d, \"top_blocks\": %d, \"topk\": %d, \"group\": %d, \"distinct_per_group\": %.2f, "
                           "\"sharing_factor\": %.3f}%s\n",
                        date, ctxs[c], SH_NQ, SH_H, SH_B, SH_M, SH_K, G, d, G * SH_M / d,
                        c + 1 < n_ctx || G < 64 ? "," : "");
        }
    }
    if (f) fprintf(f, "]\n"), fclose(f);
    synth_free(&gen);
    free(keys), free(q), free(w), free(kept), free(seen);
    return 0;
}
