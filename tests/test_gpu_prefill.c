/* test_gpu_prefill.c: the CUDA prefill paths against the CPU reference (issue 4), under the SPEC's
 * agreement rule: prefill.cu's wgmma kernels (the `_hopper` tests and AUTO on Hopper) and the
 * portable prefill, the decode kernels taking the chunk's queries as rows (`_portable`,
 * HISA_KERNELS_PORTABLE; what GPUs other than Hopper run). On the portable path the exact
 * alternative operands (PF_ALT) and fp8_mma native do not apply: it computes exactly.
 *
 * Both runtimes get the same sequence operations; keys are written on the CPU runtime and its
 * cache bytes (keys, sums, means, masks) and page table are copied into the CUDA runtime's
 * device arena, so the kernels are judged on exactly the bytes the reference reads (the write
 * kernels have their own tests). Every GPU call runs with its output and the selection scratch
 * poisoned. HISA rows are judged first on their kept blocks (J, against the reference's block
 * choice), then on tokens against the candidates the kernel actually kept (read back from
 * sel_blocks), and, where the kept blocks match the reference's, against its own output.
 * Long contexts check a sample of rows (the reference costs ~0.9 s per flat 128K query). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/hisa_dev.h"
#include "../runtime/internal.h"
#include "common.h"
#include "test.h"

#if HISA_CUDA
#include <cuda_runtime_api.h>

#define POISON_WORD 0x7f7f7f7f

typedef struct pf_pair {
    hisa_runtime *cpu, *gpu;
    hisa_config cfg;
    int32_t seq;
    uint64_t key_seed; /* of the last pf_append: queries lean toward those keys' topics */
} pf_pair;

/* 1: opened both and a sequence in each; 0: no device (SKIP); -1: failure (reported). */
static int pf_open(hisa_test_ctx *ctx, pf_pair *p, hisa_config cfg) {
    memset(p, 0, sizeof *p);
    int r = hisa_tpair_open(ctx, cfg, &p->cpu, &p->gpu);
    if (r != 1) return r;
    p->cfg = *hisa_get_config(p->gpu);
    int32_t s1 = -1, s2 = -1;
    int e1 = hisa_seq_open(p->cpu, &s1), e2 = hisa_seq_open(p->gpu, &s2);
    CHECKF(!e1 && !e2 && s1 == s2, "seq_open: %d %d", e1, e2);
    p->seq = s1;
    return (!e1 && !e2 && s1 == s2) ? 1 : -1;
}
static void pf_close(pf_pair *p) {
    hisa_close(p->cpu);
    hisa_close(p->gpu);
}
#define PF_OPEN(p, cfg)                       \
    do {                                      \
        int r_ = pf_open(ctx, (p), (cfg));    \
        if (r_ == 0) SKIP("no CUDA device");  \
        if (r_ < 0) return;                   \
    } while (0)

static hisa_config pf_config(int32_t H, int32_t B, int32_t m, int32_t k, int32_t fmt, int32_t max_context) {
    hisa_config c = hisa_tconfig(H, B, m, k, fmt, max_context, 1);
    c.max_prefill_queries = 1024;
    return c;
}

/* Extend by n and write keys (seed) on the CPU runtime; the GPU runtime gets the extension. */
static int pf_append(hisa_test_ctx *ctx, pf_pair *p, int32_t n, uint64_t seed) {
    int32_t len = 0;
    hisa_seq_length(p->cpu, p->seq, &len);
    int e1 = hisa_seq_extend(p->cpu, p->seq, n), e2 = hisa_seq_extend(p->gpu, p->seq, n);
    CHECKF(!e1 && !e2, "extend: %s / %s", hisa_strerror(e1), hisa_strerror(e2));
    if (e1 || e2) return -1;
    p->key_seed = seed;
    const int32_t chunk = p->cfg.max_prefill_queries;
    float *keys = malloc(sizeof(float) * (size_t)chunk * 128);
    for (int32_t pos = len; pos < len + n; pos += chunk) {
        int32_t c = len + n - pos < chunk ? len + n - pos : chunk;
        hisa_tgen_keys(seed, pos, c, keys);
        hisa_write w = {.layer = 0, .n_tokens = c, .keys = keys};
        int e = hisa_write_range(p->cpu, p->seq, pos, &w);
        CHECKF(e == HISA_OK, "write_range: %s", hisa_strerror(e));
        if (e) {
            free(keys);
            return -1;
        }
    }
    free(keys);
    return 0;
}

static int pf_truncate(hisa_test_ctx *ctx, pf_pair *p, int32_t len) {
    int e1 = hisa_seq_truncate(p->cpu, p->seq, len), e2 = hisa_seq_truncate(p->gpu, p->seq, len);
    CHECKF(!e1 && !e2, "truncate: %s / %s", hisa_strerror(e1), hisa_strerror(e2));
    return (e1 || e2) ? -1 : 0;
}

/* The CUDA backend's prefill entry straight (validation is api.c's, tested elsewhere); PF_ALT
 * in flags asks for the exact alternative operands of the fp8 path (hisa_dev.h); PF_Q8 hands the
 * kernels fp8 query codes (q is then uint8 codes, w the weights with the scales folded in). */
#define PF_ALT (1u << 29)
#define PF_Q8 (1u << 28)
#define PF_SCORES (1u << 27) /* the scoring kernels alone (HISA_DEV_SCORING_ONLY) */
static int pf_call(hisa_runtime *g, hisa_mode mode, int32_t seq, int32_t t0, int32_t n_q, const void *q,
                   const float *w, int32_t *out, uint32_t flags) {
    hisa_prefill req = {.layer = 0, .mode = mode, .seq = seq, .t0 = t0, .n_q = n_q, .q = q, .w = w, .out = out,
                        .flags = flags & ~(PF_ALT | PF_Q8 | PF_SCORES), .q_format = (flags & PF_Q8) ? HISA_Q_FP8 : HISA_Q_F32};
    return g->be->prefill(g, &req, ((flags & PF_ALT) ? HISA_DEV_VARIANT_ALT : 0) | ((flags & PF_SCORES) ? HISA_DEV_SCORING_ONLY : 0));
}

/* The CPU runtime's cache bytes and page table into the GPU runtime's device arena. */
static int pf_sync_bytes(hisa_test_ctx *ctx, pf_pair *p) {
    hisa_runtime *c = p->cpu, *g = p->gpu;
    int64_t L = c->g.n_layers, pages = c->g.n_pages;
    int ok = hisa_sync(g) == HISA_OK;
    ok = ok && cudaMemcpy(g->r.keys, c->r.keys, (size_t)(L * pages * c->g.page_bytes), cudaMemcpyHostToDevice) == cudaSuccess;
    ok = ok && cudaMemcpy(g->r.block_sums, c->r.block_sums, sizeof(float) * (size_t)(L * c->g.max_seqs * 128),
                          cudaMemcpyHostToDevice) == cudaSuccess;
    ok = ok && cudaMemcpy(g->r.sum_pages, c->r.sum_pages, sizeof(int32_t) * (size_t)(L * c->g.max_seqs),
                          cudaMemcpyHostToDevice) == cudaSuccess;
    ok = ok && cudaMemcpy(g->r.block_means, c->r.block_means, sizeof(uint16_t) * (size_t)(L * pages * 128),
                          cudaMemcpyHostToDevice) == cudaSuccess;
    ok = ok && cudaMemcpy(g->r.block_masks, c->r.block_masks, sizeof(uint32_t) * (size_t)(L * pages * c->g.mask_words),
                          cudaMemcpyHostToDevice) == cudaSuccess;
    ok = ok && cudaMemcpy(g->r.dev_page_table, c->r.page_table, sizeof(int32_t) * (size_t)(c->g.max_seqs * c->g.pages_per_seq),
                          cudaMemcpyHostToDevice) == cudaSuccess;
    ok = ok && cudaMemcpy(g->r.dev_seq_len, c->r.seq_len, sizeof(int32_t) * (size_t)c->g.max_seqs,
                          cudaMemcpyHostToDevice) == cudaSuccess;
    CHECKF(ok, "copying the cache to the device failed");
    return ok ? 0 : -1;
}

static void pf_token_key(const pf_pair *p, int32_t s, float *key) {
    const hisa_runtime *c = p->cpu;
    int32_t B = (int32_t)c->g.block_size;
    int32_t page = c->r.page_table[(int64_t)p->seq * c->g.pages_per_seq + s / B];
    hisa__kv_dequant(&c->kv, hisa__page(c, 0, page), s % B, key);
}
static void pf_mean_key(const pf_pair *p, int32_t b, float *key) {
    const hisa_runtime *c = p->cpu;
    int32_t page = c->r.page_table[(int64_t)p->seq * c->g.pages_per_seq + b];
    const uint16_t *mean = c->r.block_means + hisa__summary_index(c, 0, page) * 128;
    for (int d = 0; d < 128; d++) key[d] = hisa__bf16_to_f32(mean[d]);
}

/* The score error HISA_FP8_MMA_NATIVE may add (hisa_t_native_bound) to token s (position s < n,
 * is_cand NULL: all), maxed over the candidates. */
static double pf_native_eps(const pf_pair *p, const float *q, const float *w, const uint8_t *is_cand, int32_t n) {
    double worst = 0.0;
    float key[128];
    for (int32_t s = 0; s < n; s++) {
        if (is_cand && !is_cand[s]) continue;
        pf_token_key(p, s, key);
        double b = hisa_t_native_bound(q, w, p->cfg.n_heads, key);
        worst = b > worst ? b : worst;
    }
    return worst;
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Judge one row (query at t). got: positions. gblocks: the GPU's m kept blocks for this row.
 * native: the row's tokens were scored by the e4m3 tensor cores (fp8 queries, fp8_mma native),
 * judged with their error bound (pf_native_eps) added to SPEC's eps. */
static void pf_check_row(hisa_test_ctx *ctx, pf_pair *p, hisa_mode mode, int32_t t, const float *q, const float *w,
                         const int32_t *got, const int32_t *gblocks, int native, const char *what) {
    const int32_t H = p->cfg.n_heads, B = p->cfg.block_size, m = p->cfg.top_blocks, k = p->cfg.topk;
    const int32_t n = t + 1, nb = hisa__blocks_of(n, B), last = nb - 1;
    char why[256] = "";
    for (int32_t i = 0; i < k; i++)
        if (got[i] == POISON_WORD) {
            CHECKF(0, "%s t=%d: entry %d never written", what, t, i);
            return;
        }
    int32_t *ref = malloc(sizeof(int32_t) * (size_t)k);
    REQUIRE(hisa__cpu_select_one(p->cpu, 0, mode, p->seq, t, q, HISA_Q_F32, w, 0, ref) == HISA_OK);
    if (n <= k) {
        int32_t *s = malloc(sizeof(int32_t) * (size_t)k);
        memcpy(s, got, sizeof(int32_t) * (size_t)k);
        qsort(s, (size_t)n, sizeof(int32_t), cmp_i32);
        int ok = 1;
        for (int32_t i = 0; i < k; i++) ok &= s[i] == (i < n ? i : -1);
        CHECKF(ok, "%s t=%d (n <= k): not 0..n-1 then -1", what, t);
        free(s);
        free(ref);
        return;
    }
    float *I = malloc(sizeof(float) * (size_t)n);
    uint8_t *is_cand = calloc((size_t)n, 1);
    if (mode == HISA_MODE_FLAT || nb <= m) {
        float *J = malloc(sizeof(float) * (size_t)nb);
        REQUIRE(hisa__cpu_scores(p->cpu, 0, p->seq, t, q, HISA_Q_F32, w, I, J) == HISA_OK);
        const float extra = native ? (float)pf_native_eps(p, q, w, NULL, n) : 0.0f;
        CHECKF(hisa_agree_tol(I, n, NULL, ref, got, k, extra, why, sizeof why), "%s t=%d flat: %s", what, t, why);
        free(J);
    } else {
        int32_t cpu_blocks[HISA_TOP_BLOCKS_MAX];
        memcpy(cpu_blocks, p->cpu->r.cpu_blocks, sizeof(int32_t) * (size_t)m);
        float *qr = malloc(sizeof(float) * (size_t)H * 128), key[128];
        for (int32_t i = 0; i < H * 128; i++) qr[i] = hisa__bf16_to_f32(hisa__bf16_from_f32(q[i]));
        CHECKF(gblocks[0] == 0 && gblocks[m - 1] == last, "%s t=%d: blocks 0 / last not forced (%d, %d)", what, t,
               gblocks[0], gblocks[m - 1]);
        int asc = 1;
        for (int32_t i = 1; i < m; i++) asc &= gblocks[i] > gblocks[i - 1] && gblocks[i] <= last;
        CHECKF(asc, "%s t=%d: kept blocks not ascending / out of range", what, t);
        if (!asc) goto done;
        float *J = malloc(sizeof(float) * (size_t)nb);
        uint8_t *bc = calloc((size_t)nb, 1);
        for (int32_t b = 0; b <= last; b++) {
            pf_mean_key(p, b, key);
            J[b] = (float)hisa_t_score(qr, w, H, key);
            bc[b] = b >= 1 && b < last;
        }
        if (m > 2)
            CHECKF(hisa_agree(J, nb, bc, cpu_blocks + 1, gblocks + 1, m - 2, why, sizeof why), "%s t=%d: kept blocks: %s",
                   what, t, why);
        free(J);
        free(bc);
        /* tokens, against the candidates the GPU kept */
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)m * B), *ref2 = malloc(sizeof(int32_t) * (size_t)k);
        float *cs = malloc(sizeof(float) * (size_t)m * B);
        int32_t nc = 0;
        for (int32_t i = 0; i < m; i++)
            for (int32_t s = gblocks[i] * B; s < gblocks[i] * B + B && s < n; s++) {
                pf_token_key(p, s, key);
                I[s] = (float)hisa_t_score(qr, w, H, key);
                is_cand[s] = 1;
                ids[nc] = s;
                cs[nc++] = I[s];
            }
        int32_t nr = hisa__topk_ref(cs, ids, nc, k, ref2);
        for (int32_t i = nr; i < k; i++) ref2[i] = -1;
        const float extra = native ? (float)pf_native_eps(p, qr, w, is_cand, n) : 0.0f;
        CHECKF(hisa_agree_tol(I, n, is_cand, ref2, got, k, extra, why, sizeof why), "%s t=%d hisa: %s", what, t, why);
        if (!memcmp(cpu_blocks, gblocks, sizeof(int32_t) * (size_t)m))
            CHECKF(hisa_agree_tol(I, n, is_cand, ref, got, k, extra, why, sizeof why), "%s t=%d hisa vs reference: %s",
                   what, t, why);
        free(ids);
        free(ref2);
        free(cs);
    done:
        free(qr);
    }
    free(I);
    free(is_cand);
    free(ref);
}

/* pf_append then pf_sync_bytes; on a failure (reported) the pair is closed and -1 returned. */
static int pf_fill(hisa_test_ctx *ctx, pf_pair *p, int32_t n, uint64_t seed) {
    if (!pf_append(ctx, p, n, seed) && !pf_sync_bytes(ctx, p)) return 0;
    pf_close(p);
    return -1;
}
/* PF_OPEN, then n keys (seed) written and copied to the device; returns from the test on failure. */
#define PF_OPEN_FILLED(p, cfg, n, seed)                  \
    do {                                                 \
        PF_OPEN(p, cfg);                                 \
        if (pf_fill(ctx, (p), (n), (seed))) return;      \
    } while (0)

/* One chunk on the GPU (outputs and scratch poisoned first), then rows judged: every row when
 * the reference is cheap, else `sample` rows (first, last and spread). device_io: q/w/out in
 * device memory instead of HISA_HOST_IO. */
static void pf_chunk(hisa_test_ctx *ctx, pf_pair *p, hisa_mode mode, int32_t t0, int32_t n_q, uint32_t flags,
                     int device_io, int32_t sample, uint64_t qseed, const char *what) {
    const int32_t H = p->cfg.n_heads, k = p->cfg.topk, m = p->cfg.top_blocks, B = p->cfg.block_size;
    hisa_runtime *g = p->gpu;
    float *q = malloc(sizeof(float) * (size_t)n_q * H * 128), *w = malloc(sizeof(float) * (size_t)n_q * H);
    int32_t *out = malloc(sizeof(int32_t) * (size_t)n_q * k), *blocks = malloc(sizeof(int32_t) * (size_t)n_q * m);
    /* PF_Q8: the GPU gets the codes (gq) and w with the scales folded in; the reference gets the
     * codes' values in q (exact in bf16) and the same w */
    const int q8 = (flags & PF_Q8) != 0;
    const int native = q8 && p->cfg.fp8_mma == HISA_FP8_MMA_NATIVE && p->cfg.key_format == HISA_KEY_FP8 &&
                       !g->dev.all_portable; /* the portable prefill computes exactly: SPEC's eps alone */
    uint8_t *codes = q8 ? malloc((size_t)n_q * H * 128) : NULL;
    float *w8 = q8 ? malloc(sizeof(float) * (size_t)n_q * H) : NULL;
    for (int32_t i = 0; i < n_q; i++) {
        int32_t t = t0 + i;
        int64_t near = (i % 5 == 4) ? -1 : (int64_t)((t * 7919ull + (uint64_t)i * 131ull) % (uint64_t)(t + 1));
        float *qi = q + (int64_t)i * H * 128, *wi = w + (int64_t)i * H;
        hisa_tgen_query_keys(p->key_seed, qseed + (uint64_t)i, H, near, qi, wi);
        if (q8) {
            hisa_tquant_query(qi, wi, H, codes + (int64_t)i * H * 128, qi, w8 + (int64_t)i * H);
            memcpy(wi, w8 + (int64_t)i * H, sizeof(float) * (size_t)H);
        }
    }
    const void *gq = q8 ? (const void *)codes : (const void *)q;
    const size_t q_bytes = (q8 ? 1 : sizeof(float)) * (size_t)n_q * H * 128;
    for (int64_t i = 0; i < (int64_t)n_q * k; i++) out[i] = POISON_WORD;
    int ok = cudaMemset(g->r.sel_scores, 0xff, sizeof(float) * (size_t)(g->g.rows * g->g.max_context)) == cudaSuccess;
    ok = ok && cudaMemset(g->r.sel_block_scores, 0xff, sizeof(float) * (size_t)(g->g.rows * g->g.pages_per_seq)) == cudaSuccess;
    ok = ok && cudaMemset(g->r.sel_blocks, 0xff, sizeof(int32_t) * (size_t)(g->g.rows * g->g.top_blocks)) == cudaSuccess;
    REQUIRE(ok);
    int err;
    if (device_io) {
        void *dq = NULL;
        float *dw = NULL;
        int32_t *dout = NULL;
        REQUIRE(cudaMalloc(&dq, q_bytes) == cudaSuccess);
        REQUIRE(cudaMalloc((void **)&dw, sizeof(float) * (size_t)n_q * H) == cudaSuccess);
        REQUIRE(cudaMalloc((void **)&dout, sizeof(int32_t) * (size_t)n_q * k) == cudaSuccess);
        REQUIRE(cudaMemcpy(dq, gq, q_bytes, cudaMemcpyHostToDevice) == cudaSuccess);
        REQUIRE(cudaMemcpy(dw, w, sizeof(float) * (size_t)n_q * H, cudaMemcpyHostToDevice) == cudaSuccess);
        REQUIRE(cudaMemcpy(dout, out, sizeof(int32_t) * (size_t)n_q * k, cudaMemcpyHostToDevice) == cudaSuccess);
        err = pf_call(g, mode, p->seq, t0, n_q, dq, dw, dout, flags);
        REQUIRE(hisa_sync(g) == HISA_OK);
        REQUIRE(cudaMemcpy(out, dout, sizeof(int32_t) * (size_t)n_q * k, cudaMemcpyDeviceToHost) == cudaSuccess);
        cudaFree(dq);
        cudaFree(dw);
        cudaFree(dout);
    } else {
        err = pf_call(g, mode, p->seq, t0, n_q, gq, w, out, flags | HISA_HOST_IO);
    }
    CHECKF(err == HISA_OK, "%s: prefill: %s (%s)", what, hisa_strerror(err), hisa_error_detail(g));
    if (err) goto out;
    REQUIRE(cudaMemcpy(blocks, g->r.sel_blocks, sizeof(int32_t) * (size_t)n_q * m, cudaMemcpyDeviceToHost) == cudaSuccess);
    if (flags & HISA_SLOTS) { /* slots back to positions through the reference's page table */
        const hisa_runtime *c = p->cpu;
        int32_t len = c->r.seq_len[p->seq];
        int32_t *block_of = malloc(sizeof(int32_t) * (size_t)c->g.n_pages);
        for (int32_t i = 0; i < c->g.n_pages; i++) block_of[i] = -1;
        for (int32_t b = 0; b < hisa__blocks_of(len, B); b++)
            block_of[c->r.page_table[(int64_t)p->seq * c->g.pages_per_seq + b]] = b;
        int bad = 0;
        for (int64_t i = 0; i < (int64_t)n_q * k; i++) {
            int32_t v = out[i];
            if (v == -1 || v == POISON_WORD) continue;
            int32_t page = v / B;
            if (v < 0 || page >= c->g.n_pages || block_of[page] < 0) {
                bad++;
                out[i] = -2;
            } else {
                out[i] = block_of[page] * B + v % B;
            }
        }
        CHECKF(!bad, "%s: %d slots outside the sequence's pages", what, bad);
        free(block_of);
    }
    int64_t cost = (int64_t)(t0 + n_q) * n_q * H;
    int all = sample <= 0 || sample >= n_q || cost < 400000000;
    int32_t n_check = all ? n_q : sample;
    for (int32_t j = 0; j < n_check && ctx->failures < 10; j++) {
        int32_t i = all ? j : (j == 0 ? 0 : j == 1 ? n_q - 1 : (int32_t)(((int64_t)j * 7919) % n_q));
        char what2[160];
        snprintf(what2, sizeof what2, "%s row %d", what, i);
        pf_check_row(ctx, p, mode, t0 + i, q + (int64_t)i * H * 128, w + (int64_t)i * H, out + (int64_t)i * k,
                     blocks + (int64_t)i * m, native, what2);
    }
out:
    free(codes);
    free(w8);
    free(q);
    free(w);
    free(out);
    free(blocks);
}

/* Short contexts, every row: all three row kinds in one chunk (n <= k, nb <= m, HISA), chunks at
 * the start, straddling blocks, one query, slots, device pointers, both formats, both modes. */
HISA_GPU_TEST(gpu_prefill_short) {
    for (int fmt = HISA_KEY_FP8; fmt <= HISA_KEY_BF16; fmt++) {
        pf_pair p;
        PF_OPEN_FILLED(&p, pf_config(16, 32, 8, 64, fmt, 4096), 2048, 11);
        char what[96];
        for (int mode = 0; mode <= 1; mode++) {
            snprintf(what, sizeof what, "fmt %d mode %d chunk 0+1024", fmt, mode);
            pf_chunk(ctx, &p, (hisa_mode)mode, 0, 1024, 0, 0, 0, 100, what);
            snprintf(what, sizeof what, "fmt %d mode %d chunk 37+7", fmt, mode);
            pf_chunk(ctx, &p, (hisa_mode)mode, 37, 7, 0, 0, 0, 200, what);
            snprintf(what, sizeof what, "fmt %d mode %d chunk 1000+128 slots", fmt, mode);
            pf_chunk(ctx, &p, (hisa_mode)mode, 1000, 128, HISA_SLOTS, 0, 0, 300, what);
            snprintf(what, sizeof what, "fmt %d mode %d chunk 2047+1 device io", fmt, mode);
            pf_chunk(ctx, &p, (hisa_mode)mode, 2047, 1, 0, 1, 0, 400, what);
            snprintf(what, sizeof what, "fmt %d mode %d chunk 1023+1024 device io", fmt, mode);
            pf_chunk(ctx, &p, (hisa_mode)mode, 1023, 1024, 0, 1, 0, 500, what);
            snprintf(what, sizeof what, "fmt %d mode %d chunk 500+128 bf16 operands", fmt, mode);
            pf_chunk(ctx, &p, (hisa_mode)mode, 500, 128, PF_ALT, 0, 0, 550, what);
            snprintf(what, sizeof what, "fmt %d mode %d chunk 1000+128 fp8 queries", fmt, mode);
            pf_chunk(ctx, &p, (hisa_mode)mode, 1000, 128, PF_Q8, 0, 0, 560, what);
            snprintf(what, sizeof what, "fmt %d mode %d chunk 0+1024 fp8 queries device io", fmt, mode);
            pf_chunk(ctx, &p, (hisa_mode)mode, 0, 1024, PF_Q8, 1, 0, 570, what);
            /* 500 + 128 reaches past k and m blocks: all three row kinds, in bf16 operands */
            snprintf(what, sizeof what, "fmt %d mode %d chunk 500+128 fp8 queries bf16 operands", fmt, mode);
            pf_chunk(ctx, &p, (hisa_mode)mode, 500, 128, PF_Q8 | PF_ALT, 0, 0, 580, what);
        }
        pf_close(&p);
    }
}

/* After a rollback: truncate inside a block, write different keys, select across the seam. */
HISA_GPU_TEST(gpu_prefill_truncate) {
    for (int fmt = HISA_KEY_FP8; fmt <= HISA_KEY_BF16; fmt++) {
        pf_pair p;
        PF_OPEN(&p, pf_config(16, 32, 8, 64, fmt, 4096));
        if (pf_append(ctx, &p, 1500, 21) || pf_truncate(ctx, &p, 1203) || pf_append(ctx, &p, 900, 22) ||
            pf_sync_bytes(ctx, &p)) {
            pf_close(&p);
            return;
        }
        for (int mode = 0; mode <= 1; mode++) {
            char what[96];
            snprintf(what, sizeof what, "truncated fmt %d mode %d chunk 1150+128", fmt, mode);
            pf_chunk(ctx, &p, (hisa_mode)mode, 1150, 128, 0, 0, 0, 600, what);
            snprintf(what, sizeof what, "truncated fmt %d mode %d chunk 1202+7", fmt, mode);
            pf_chunk(ctx, &p, (hisa_mode)mode, 1202, 7, HISA_SLOTS, 0, 0, 700, what);
        }
        pf_close(&p);
    }
}

/* hisa_dev_prefill's HISA_DEV_VARIANT_ALT names operands only prefill.cu's wgmma kernels have: the
 * portable prefill refuses it (HISA_EINVAL, out untouched) instead of running its one arithmetic
 * under that name; the Hopper path runs it. */
HISA_GPU_TEST(gpu_dev_prefill_variant_where_it_exists) {
    pf_pair p;
    PF_OPEN_FILLED(&p, pf_config(16, 32, 8, 64, HISA_KEY_FP8, 4096), 300, 51);
    const int32_t n_q = 4, H = 16, k = 64;
    float hq[4 * 16 * 128], hw[4 * 16];
    uint64_t rs = 52;
    for (int i = 0; i < n_q * H * 128; i++) hq[i] = hisa_test_gauss(&rs);
    for (int i = 0; i < n_q * H; i++) hw[i] = 0.5f + 0.01f * (float)i;
    float *dq = NULL, *dw = NULL;
    int32_t *dout = NULL, got[4 * 64];
    REQUIRE(cudaMalloc((void **)&dq, sizeof hq) == cudaSuccess && cudaMalloc((void **)&dw, sizeof hw) == cudaSuccess &&
            cudaMalloc((void **)&dout, sizeof got) == cudaSuccess);
    REQUIRE(cudaMemcpy(dq, hq, sizeof hq, cudaMemcpyHostToDevice) == cudaSuccess &&
            cudaMemcpy(dw, hw, sizeof hw, cudaMemcpyHostToDevice) == cudaSuccess &&
            cudaMemset(dout, 0x7f, sizeof got) == cudaSuccess);
    hisa_prefill req = {.layer = 0, .mode = HISA_MODE_FLAT, .seq = p.seq, .t0 = 290, .n_q = n_q, .q = dq, .w = dw,
                        .out = dout, .q_format = HISA_Q_F32};
    const int portable = p.gpu->dev.all_portable;
    CHECK_EQ_INT(hisa_dev_prefill(p.gpu, &req, HISA_DEV_VARIANT_ALT), portable ? HISA_EINVAL : HISA_OK);
    REQUIRE(hisa_sync(p.gpu) == HISA_OK);
    REQUIRE(cudaMemcpy(got, dout, sizeof got, cudaMemcpyDeviceToHost) == cudaSuccess);
    int untouched = 0;
    for (int i = 0; i < n_q * k; i++) untouched += got[i] == POISON_WORD;
    CHECKF(portable ? untouched == n_q * k : untouched == 0, "portable %d: %d of %d outputs unwritten", portable,
           untouched, n_q * k);
    cudaFree(dq);
    cudaFree(dw);
    cudaFree(dout);
    pf_close(&p);
}

/* Head counts that pad (20 -> 32) and the other tile shapes (64: 4 queries per tile, 128: 2);
 * both exact operand types of the fp8-key path (fp16 by default, bf16 with PF_ALT), for f32 and
 * fp8 queries (the e4m3 path of fp8_mma native: gpu_prefill_native_fp8). */
HISA_GPU_TEST(gpu_prefill_heads) {
    static const int32_t heads[] = {20, 64, 128};
    for (int hi = 0; hi < 3; hi++)
        for (int fmt = HISA_KEY_FP8; fmt <= HISA_KEY_BF16; fmt++) {
            pf_pair p;
            PF_OPEN_FILLED(&p, pf_config(heads[hi], 64, 6, 128, fmt, 4096), 3000, 31);
            int32_t n_q = heads[hi] == 128 ? 7 : 128;
            for (int mode = 0; mode <= 1; mode++) {
                char what[96];
                snprintf(what, sizeof what, "H %d fmt %d mode %d chunk %d+%d", heads[hi], fmt, mode, 3000 - n_q, n_q);
                pf_chunk(ctx, &p, (hisa_mode)mode, 3000 - n_q, n_q, 0, 0, 0, 800, what);
                snprintf(what, sizeof what, "H %d fmt %d mode %d chunk %d+%d bf16 operands", heads[hi], fmt, mode,
                         3000 - n_q, n_q);
                pf_chunk(ctx, &p, (hisa_mode)mode, 3000 - n_q, n_q, PF_ALT, 0, 0, 850, what);
                snprintf(what, sizeof what, "H %d fmt %d mode %d chunk %d+%d fp8 queries", heads[hi], fmt, mode, 3000 - n_q, n_q);
                pf_chunk(ctx, &p, (hisa_mode)mode, 3000 - n_q, n_q, PF_Q8, 0, 0, 860, what);
                snprintf(what, sizeof what, "H %d fmt %d mode %d chunk %d+%d fp8 queries bf16 operands", heads[hi], fmt,
                         mode, 3000 - n_q, n_q);
                pf_chunk(ctx, &p, (hisa_mode)mode, 3000 - n_q, n_q, PF_Q8 | PF_ALT, 0, 0, 870, what);
            }
            pf_close(&p);
        }
}

/* The paper's configuration at 32K and 128K: 1024-query chunks at the end, sampled rows. The
 * portable prefill runs the 32K part without the alternative operands (it has none): its 128K
 * rows are the decode kernels' (gpu_select_long_contexts), and what a chunk adds (rows of their
 * own positions, four launch groups of 256 rows) is all at 32K; the reference's rows cost ~1 s
 * each at 128K. */
HISA_GPU_TEST(gpu_prefill_long) {
    const int portable = hisa_t_kernels == HISA_KERNELS_PORTABLE;
    for (int fmt = HISA_KEY_FP8; fmt <= HISA_KEY_BF16; fmt++) {
        pf_pair p;
        PF_OPEN_FILLED(&p, pf_config(64, 128, 64, 2048, fmt, 131072), 32768, 41);
        char what[96];
        snprintf(what, sizeof what, "32K fmt %d hisa", fmt);
        pf_chunk(ctx, &p, HISA_MODE_HISA, 32768 - 1024, 1024, 0, 1, 12, 900, what);
        snprintf(what, sizeof what, "32K fmt %d hisa bf16 operands", fmt);
        if (!portable) pf_chunk(ctx, &p, HISA_MODE_HISA, 32768 - 1024, 1024, PF_ALT, 1, 6, 905, what);
        snprintf(what, sizeof what, "32K fmt %d flat", fmt);
        pf_chunk(ctx, &p, HISA_MODE_FLAT, 32768 - 128, 128, 0, 0, 4, 901, what);
        snprintf(what, sizeof what, "32K fmt %d hisa fp8 queries", fmt);
        pf_chunk(ctx, &p, HISA_MODE_HISA, 32768 - 1024, 1024, PF_Q8, 1, 12, 906, what);
        snprintf(what, sizeof what, "32K fmt %d flat fp8 queries", fmt);
        pf_chunk(ctx, &p, HISA_MODE_FLAT, 32768 - 128, 128, PF_Q8, 0, 4, 907, what);
        if (portable) {
            pf_close(&p);
            continue;
        }
        if (pf_fill(ctx, &p, 131072 - 32768, 41)) return;
        snprintf(what, sizeof what, "128K fmt %d hisa", fmt);
        pf_chunk(ctx, &p, HISA_MODE_HISA, 131072 - 1024, 1024, HISA_SLOTS, 1, 12, 902, what);
        snprintf(what, sizeof what, "128K fmt %d flat", fmt);
        pf_chunk(ctx, &p, HISA_MODE_FLAT, 131072 - 1024, 1024, 0, 1, 2, 903, what);
        snprintf(what, sizeof what, "128K fmt %d hisa fp8 queries", fmt);
        pf_chunk(ctx, &p, HISA_MODE_HISA, 131072 - 1024, 1024, PF_Q8 | HISA_SLOTS, 1, 12, 908, what);
        snprintf(what, sizeof what, "128K fmt %d flat fp8 queries", fmt);
        pf_chunk(ctx, &p, HISA_MODE_FLAT, 131072 - 1024, 1024, PF_Q8, 1, 2, 909, what);
        pf_close(&p);
    }
}

/* Row lengths on both sides of the one-CTA top-k's reach (prefill.cu rows_shape: token rows of up
 * to 8192 candidates, kept-block rows of up to 2048 blocks, chosen per chunk by its last row):
 * token rows of about m * B candidates and kept-block rows of nb - 2 blocks at 2, 4 and 8 keys per
 * thread, kept-block rows at the cap and one past it, one stage under its cap with the other
 * past (row_topk) and both past. B = 32 keeps the contexts short; the chunk is the last 8
 * positions; every row is judged, with f32 and fp8 queries, positions and slots. */
HISA_GPU_TEST(gpu_prefill_row_lengths) {
    static const struct {
        int32_t m, k, len;
        const char *what;
    } cases[] = {
        {60, 256, 4096, "1.9K candidates, 126 blocks"},
        {120, 512, 20000, "3.8K candidates, 623 blocks"},
        {200, 512, 40000, "6.4K candidates, 1.2K blocks"},
        {200, 512, 65600, "6.4K candidates, 2048 blocks (the cap)"},
        {300, 512, 40000, "9.6K candidates (past the cap), 1.2K blocks"},
        {200, 512, 200000, "6.4K candidates, 6.2K blocks (past the cap)"},
        {300, 512, 65601, "9.6K candidates, 2048-2049 blocks (both past the caps)"},
    };
    for (int c = 0; c < (int)(sizeof cases / sizeof cases[0]); c++) {
        pf_pair p;
        hisa_config cfg = hisa_tconfig(16, 32, cases[c].m, cases[c].k, HISA_KEY_FP8, (cases[c].len + 1023) / 1024 * 1024, 1);
        cfg.max_prefill_queries = 64;
        PF_OPEN_FILLED(&p, cfg, cases[c].len, 61 + (uint64_t)c);
        char what[128];
        snprintf(what, sizeof what, "%s, f32 queries", cases[c].what);
        pf_chunk(ctx, &p, HISA_MODE_HISA, cases[c].len - 8, 8, 0, 0, 0, 1200 + 10 * (uint64_t)c, what);
        snprintf(what, sizeof what, "%s, fp8 queries, slots", cases[c].what);
        pf_chunk(ctx, &p, HISA_MODE_HISA, cases[c].len - 8, 8, PF_Q8 | HISA_SLOTS, 1, 0, 1205 + 10 * (uint64_t)c, what);
        pf_close(&p);
    }
}

/* The scores themselves, not only the selections: flat rows of fp8 queries scored on the GPU
 * against the SPEC formula in double over the same values (selections show an error only where
 * it meets a near-tie; this bounds it at every token). The exact operands (fp16; bf16 with
 * PF_ALT) within 1e-5 of max |I|; the e4m3 tensor cores (fp8_mma native) within pf_native_eps's
 * bound at each token, and their error against max |I| printed (SPEC's eps is 1e-4 of it); and
 * above 1e-6 of max |I|, which the exact operands never reach: the native setting must reach
 * the kernel. H 64 and 128; odd rows are pure noise queries (much cancellation), even rows lean
 * toward the keys' topic at an earlier position. */
static void pf_scores_case(hisa_test_ctx *ctx, pf_pair *p, int32_t t0, int32_t n_q, const float *q, const float *w,
                           const uint8_t *codes, int alt, float *got) {
    hisa_runtime *g = p->gpu;
    const int32_t H = p->cfg.n_heads;
    const int64_t mc = g->g.max_context;
    /* the portable prefill computes exactly whatever fp8_mma says (hisa.h) */
    const int native = p->cfg.fp8_mma == HISA_FP8_MMA_NATIVE && !g->dev.all_portable;
    const char *ops = native ? "e4m3" : g->dev.all_portable ? "portable" : alt ? "bf16" : "fp16";
    REQUIRE(cudaMemset(g->r.sel_scores, 0xff, sizeof(float) * (size_t)(g->g.rows * mc)) == cudaSuccess);
    int32_t *out = malloc(sizeof(int32_t) * (size_t)n_q * (size_t)p->cfg.topk); /* HISA_HOST_IO stages it back */
    int err = pf_call(g, HISA_MODE_FLAT, p->seq, t0, n_q, codes, w, out, HISA_HOST_IO | PF_Q8 | PF_SCORES | (alt ? PF_ALT : 0u));
    free(out);
    CHECKF(err == HISA_OK, "H %d %s: %s (%s)", H, ops, hisa_strerror(err), hisa_error_detail(g));
    if (err) return;
    REQUIRE(hisa_sync(g) == HISA_OK);
    REQUIRE(cudaMemcpy(got, g->r.sel_scores, sizeof(float) * (size_t)(n_q * mc), cudaMemcpyDeviceToHost) == cudaSuccess);
    double worst = 0.0, worst_bound = 0.0; /* error / max |I|; error / the token's native bound */
    int32_t worst_row = -1;
    float key[128];
    for (int32_t i = 0; i < n_q; i++) {
        const int32_t t = t0 + i;
        const float *qi = q + (int64_t)i * H * 128, *wi = w + (int64_t)i * H;
        double amax = 0.0, dmax = 0.0;
        for (int32_t s = 0; s <= t; s++) {
            pf_token_key(p, s, key);
            double ref = hisa_t_score(qi, wi, H, key);
            double d = fabs((double)got[(int64_t)i * mc + s] - ref); /* NaN poison: d is NaN */
            amax = fabs(ref) > amax ? fabs(ref) : amax;
            dmax = (d > dmax || d != d) ? d : dmax;
            if (native) {
                double r = d == 0.0 ? 0.0 : d / hisa_t_native_bound(qi, wi, H, key);
                worst_bound = r <= worst_bound ? worst_bound : r != r ? INFINITY : r;
            }
        }
        if (!(dmax / amax <= worst)) {
            worst = dmax / amax;
            worst_row = i;
        }
    }
    printf("  H %d %s: max |I_gpu - I_ref| / max |I| = %.3g (row %d)", H, ops, worst, worst_row);
    if (native) {
        printf(", / the bound 2^-10 sum |w q k| = %.3g\n", worst_bound);
        CHECKF(worst_bound <= 1.0, "H %d e4m3 operands: a score error %.3g times its bound 2^-10 sum_h |w_h| sum_d |q_hd k_d|",
               H, worst_bound);
        CHECKF(worst > 1e-6, "H %d fp8_mma native: score error %.3g of max |I|, as small as the exact path's: were the "
               "e4m3 tensor cores used?", H, worst);
    } else {
        printf(" (bound 1e-05)\n");
        CHECKF(worst <= 1e-5, "H %d %s operands: score error %.3g of max |I| (row %d) exceeds 1e-5", H, ops, worst,
               worst_row);
    }
}

HISA_GPU_TEST(gpu_prefill_scores_of_fp8_queries) {
    static const int32_t heads[] = {64, 128};
    for (int hi = 0; hi < 2; hi++)
        for (int native = 0; native <= 1; native++) {
            const int32_t H = heads[hi], n_q = 16, t0 = 3000;
            hisa_config cfg = pf_config(H, 128, 8, 256, HISA_KEY_FP8, 4096);
            cfg.fp8_mma = native ? HISA_FP8_MMA_NATIVE : HISA_FP8_MMA_EXACT;
            pf_pair p;
            PF_OPEN_FILLED(&p, cfg, t0 + n_q, 71);
            float *q = malloc(sizeof(float) * (size_t)n_q * H * 128), *w = malloc(sizeof(float) * (size_t)n_q * H);
            float *got = malloc(sizeof(float) * (size_t)n_q * (size_t)p.gpu->g.max_context);
            uint8_t *codes = malloc((size_t)n_q * H * 128);
            for (int32_t i = 0; i < n_q; i++) {
                float *qi = q + (int64_t)i * H * 128, *wi = w + (int64_t)i * H;
                hisa_tgen_query_keys(p.key_seed, 980 + (uint64_t)i, H, i % 2 ? -1 : (int64_t)(t0 + i) * 37 % t0, qi, wi);
                hisa_tquant_query(qi, wi, H, codes + (int64_t)i * H * 128, qi, wi);
            }
            for (int alt = 0; alt <= !native; alt++) pf_scores_case(ctx, &p, t0, n_q, q, w, codes, alt, got);
            /* scoring alone leaves the selection state as it found it: a whole selection after */
            pf_chunk(ctx, &p, HISA_MODE_FLAT, t0, n_q, PF_Q8, 0, 0, 990, "flat selection after scoring alone");
            free(q);
            free(w);
            free(got);
            free(codes);
            pf_close(&p);
        }
}

/* fp8_mma native (e4m3 x e4m3 tensor cores) end to end: selections of fp8 queries, flat and
 * HISA, short and long, judged under SPEC's rule with eps widened by the arithmetic's own bound
 * (pf_native_eps; hisa.h says why it is outside SPEC's). f32 queries in the same runtime take
 * the exact path and are judged by SPEC's rule alone. */
HISA_TEST(gpu_prefill_native_fp8) {
    hisa_config cfg = pf_config(16, 32, 8, 64, HISA_KEY_FP8, 4096);
    cfg.fp8_mma = HISA_FP8_MMA_NATIVE;
    pf_pair p;
    PF_OPEN_FILLED(&p, cfg, 2048, 11);
    char what[96];
    for (int mode = 0; mode <= 1; mode++) {
        snprintf(what, sizeof what, "native mode %d chunk 0+1024", mode);
        pf_chunk(ctx, &p, (hisa_mode)mode, 0, 1024, PF_Q8, 0, 0, 1100, what);
        snprintf(what, sizeof what, "native mode %d chunk 500+128 slots", mode);
        pf_chunk(ctx, &p, (hisa_mode)mode, 500, 128, PF_Q8 | HISA_SLOTS, 1, 0, 1110, what);
        snprintf(what, sizeof what, "native mode %d chunk 1000+128 f32 queries", mode);
        pf_chunk(ctx, &p, (hisa_mode)mode, 1000, 128, 0, 0, 0, 1120, what);
    }
    pf_close(&p);
    static const int32_t heads[] = {20, 128};
    for (int hi = 0; hi < 2; hi++) {
        cfg = pf_config(heads[hi], 64, 6, 128, HISA_KEY_FP8, 4096);
        cfg.fp8_mma = HISA_FP8_MMA_NATIVE;
        PF_OPEN_FILLED(&p, cfg, 3000, 31);
        int32_t n_q = heads[hi] == 128 ? 7 : 128;
        for (int mode = 0; mode <= 1; mode++) {
            snprintf(what, sizeof what, "native H %d mode %d chunk %d+%d", heads[hi], mode, 3000 - n_q, n_q);
            pf_chunk(ctx, &p, (hisa_mode)mode, 3000 - n_q, n_q, PF_Q8, 0, 0, 1130, what);
        }
        pf_close(&p);
    }
    cfg = pf_config(64, 128, 64, 2048, HISA_KEY_FP8, 32768);
    cfg.fp8_mma = HISA_FP8_MMA_NATIVE;
    PF_OPEN_FILLED(&p, cfg, 32768, 41);
    pf_chunk(ctx, &p, HISA_MODE_HISA, 32768 - 1024, 1024, PF_Q8, 1, 12, 1140, "native 32K hisa");
    pf_chunk(ctx, &p, HISA_MODE_FLAT, 32768 - 128, 128, PF_Q8, 0, 4, 1150, "native 32K flat");
    pf_close(&p);
}

/* hisa_dev_kept_blocks (hisa_dev.h, what `hisa bench prefill` measures sharing from): after a
 * HISA chunk, the scratch's kept blocks (read here directly) for the rows asked, each HISA row's
 * ascending from block 0 to its own; refused on a CPU runtime, for rows out of range or a null
 * buffer, with the buffer and the runtime untouched. Both paths (their kept blocks). */
HISA_GPU_TEST(gpu_dev_kept_blocks) {
    const int32_t B = 128, m = 8, n_q = 200, t0 = 3000;
    hisa_config cfg = pf_config(16, B, m, 256, HISA_KEY_FP8, 4096);
    hisa_runtime *cpu = NULL;
    int32_t got[8] = {-7, -7, -7, -7, -7, -7, -7, -7}; /* one row of m */
    REQUIRE(hisa_open(&cpu, &cfg, NULL) == HISA_OK);
    CHECK_EQ_INT(hisa_dev_kept_blocks(cpu, 1, got), HISA_ENODEVICE);
    hisa_close(cpu);
    pf_pair p;
    PF_OPEN_FILLED(&p, cfg, t0 + n_q, 1400);
    pf_chunk(ctx, &p, HISA_MODE_HISA, t0, n_q, 0, 1, 0, 1410, "kept blocks");
    int32_t *hook = malloc(sizeof(int32_t) * n_q * m), *direct = malloc(sizeof(int32_t) * n_q * m);
    CHECK_EQ_INT(hisa_dev_kept_blocks(p.gpu, n_q, hook), HISA_OK);
    const int copied =
        cudaMemcpy(direct, p.gpu->r.sel_blocks, sizeof(int32_t) * n_q * m, cudaMemcpyDeviceToHost) == cudaSuccess;
    CHECK(copied && memcmp(hook, direct, sizeof(int32_t) * n_q * m) == 0);
    int bad = 0;
    for (int32_t i = 0; i < n_q; i++) {
        const int32_t *k = hook + (int64_t)i * m;
        bad += k[0] != 0 || k[m - 1] != (t0 + i) / B;
        for (int32_t j = 1; j < m; j++) bad += k[j] <= k[j - 1];
    }
    CHECKF(!bad, "%d kept-block rows out of order or without block 0 and their own", bad);
    CHECK_EQ_INT(hisa_dev_kept_blocks(p.gpu, 0, got), HISA_EINVAL);
    CHECK_EQ_INT(hisa_dev_kept_blocks(p.gpu, (int32_t)p.gpu->g.rows + 1, got), HISA_EINVAL);
    CHECK_EQ_INT(hisa_dev_kept_blocks(p.gpu, 1, NULL), HISA_EINVAL);
    CHECK(got[0] == -7 && got[m - 1] == -7);
    CHECK(!p.gpu->poisoned); /* refused calls leave the runtime as it was: the next one works */
    CHECK_EQ_INT(hisa_dev_kept_blocks(p.gpu, 1, got), HISA_OK);
    CHECK(got[0] == 0 && got[m - 1] == t0 / B);
    free(hook);
    free(direct);
    pf_close(&p);
}

/* A decode step at t (the CUDA decode path) and a one-query chunk at t agree. */
HISA_TEST(gpu_prefill_decode_agree) {
    for (int fmt = HISA_KEY_FP8; fmt <= HISA_KEY_BF16; fmt++) {
        pf_pair p;
        PF_OPEN_FILLED(&p, pf_config(64, 64, 8, 256, fmt, 8192), 5000, 51);
        const int32_t H = 64, k = 256, t = 4999;
        float *q = malloc(sizeof(float) * H * 128), w[64];
        int32_t *dec = malloc(sizeof(int32_t) * k), *pre = malloc(sizeof(int32_t) * k);
        float *I = malloc(sizeof(float) * (t + 1)), *J = malloc(sizeof(float) * 128);
        hisa_tgen_query_keys(p.key_seed, 61, H, 1234, q, w);
        REQUIRE(hisa__cpu_scores(p.cpu, 0, p.seq, t, q, HISA_Q_F32, w, I, J) == HISA_OK);
        for (int mode = 0; mode <= 1; mode++) {
            for (int32_t i = 0; i < k; i++) dec[i] = pre[i] = POISON_WORD;
            hisa_decode d = {.layer = 0, .mode = (hisa_mode)mode, .n_seqs = 1, .seq_ids = &p.seq, .q = q, .w = w,
                             .out = dec, .flags = HISA_HOST_IO};
            int32_t dblocks[8], pblocks[8];
            int e1 = hisa_select_decode(p.gpu, &d);
            int ok = !e1 && cudaMemcpy(dblocks, p.gpu->r.sel_blocks, sizeof dblocks, cudaMemcpyDeviceToHost) == cudaSuccess;
            int e2 = pf_call(p.gpu, (hisa_mode)mode, p.seq, t, 1, q, w, pre, HISA_HOST_IO);
            ok = ok && !e2 && cudaMemcpy(pblocks, p.gpu->r.sel_blocks, sizeof pblocks, cudaMemcpyDeviceToHost) == cudaSuccess;
            CHECKF(ok, "fmt %d mode %d: decode %s, prefill %s (%s)", fmt, mode, hisa_strerror(e1), hisa_strerror(e2),
                   hisa_error_detail(p.gpu));
            if (!ok) break;
            char why[256] = "";
            uint8_t *is_cand = calloc((size_t)t + 1, 1);
            if (mode == HISA_MODE_FLAT) { /* same candidates: the two selections agree outright */
                memset(is_cand, 1, (size_t)t + 1);
            } else { /* each against the reference; directly when they kept the same blocks */
                pf_check_row(ctx, &p, HISA_MODE_HISA, t, q, w, dec, dblocks, 0, "decode");
                pf_check_row(ctx, &p, HISA_MODE_HISA, t, q, w, pre, pblocks, 0, "one-query chunk");
                if (!memcmp(dblocks, pblocks, sizeof dblocks))
                    for (int i = 0; i < 8; i++)
                        for (int32_t s = pblocks[i] * 64; s < pblocks[i] * 64 + 64 && s <= t; s++) is_cand[s] = 1;
            }
            int any = 0;
            for (int32_t s = 0; s <= t; s++) any |= is_cand[s];
            if (any)
                CHECKF(hisa_agree(I, t + 1, is_cand, dec, pre, k, why, sizeof why), "fmt %d mode %d decode vs chunk: %s",
                       fmt, mode, why);
            free(is_cand);
        }
        free(q);
        free(dec);
        free(pre);
        free(I);
        free(J);
        pf_close(&p);
    }
}

#else /* !HISA_CUDA */

HISA_TEST(gpu_dev_kept_blocks) {
    hisa_config cfg = hisa_tconfig(16, 128, 8, 256, HISA_KEY_FP8, 4096, 1);
    hisa_runtime *cpu = NULL;
    int32_t got[1] = {-7};
    REQUIRE(hisa_open(&cpu, &cfg, NULL) == HISA_OK);
    CHECK_EQ_INT(hisa_dev_kept_blocks(cpu, 1, got), HISA_ENODEVICE);
    CHECK(got[0] == -7);
    hisa_close(cpu);
    SKIP("no CUDA device");
}

HISA_TEST(gpu_prefill_short) {
    hisa_runtime *rt = NULL;
    hisa_config cfg = hisa_tconfig(16, 32, 8, 64, HISA_KEY_FP8, 4096, 1);
    cfg.device = HISA_DEVICE_CUDA(0);
    int err = hisa_open(&rt, &cfg, NULL);
    hisa_close(rt);
    CHECK_EQ_INT(err, HISA_ENODEVICE);
    SKIP("no CUDA device");
}

#endif /* HISA_CUDA */
