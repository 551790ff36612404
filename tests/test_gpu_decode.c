/* test_gpu_decode.c: the CUDA decode path against the CPU reference (issue 3).
 *
 * Each test opens a CPU runtime and a CUDA runtime with the same configuration, applies the same
 * operations to both, and compares: key bytes bit-identical, block sums within fp32 rounding,
 * means identical or 1 bf16 ulp, masks identical; selections under SPEC's agreement rule, with
 * the kept blocks judged by J and the tokens judged against the candidates the GPU kept. GPU
 * outputs are poisoned (0x7f7f7f7f) before every call so an unwritten entry fails. Without a
 * CUDA device every test says "skipped: no CUDA device". */
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

#include "../kernels/kernels.h"

#define POISON_WORD 0x7f7f7f7f

/* The key seed of each range of positions written to a sequence (newest last), so that a
 * test's queries lean toward the topics actually there (hisa_tgen_query_keys). */
enum { PAIR_SEQS = 64, PAIR_RANGES = 4 };
typedef struct pair_ranges {
    int32_t start[PAIR_RANGES];
    uint64_t seed[PAIR_RANGES];
    int n;
} pair_ranges;

typedef struct pair {
    hisa_runtime *cpu, *gpu;
    hisa_config cfg;
    pair_ranges ranges[PAIR_SEQS];
} pair;

/* Writes of seed from position start on (a new range unless it continues the newest one). */
static void pair_note_seed(hisa_test_ctx *ctx, pair *p, int32_t seq, int32_t start, uint64_t seed) {
    REQUIRE(seq >= 0 && seq < PAIR_SEQS);
    pair_ranges *r = &p->ranges[seq];
    if (r->n > 0 && r->seed[r->n - 1] == seed && r->start[r->n - 1] <= start) return;
    REQUIRE(r->n < PAIR_RANGES);
    r->start[r->n] = start;
    r->seed[r->n] = seed;
    r->n++;
}

/* The seed the keys at position pos of seq were written with: the newest range starting at or
 * before pos (writes after a truncation start at its cut, so they supersede what it removed). */
static uint64_t pair_key_seed(const pair *p, int32_t seq, int64_t pos) {
    if (seq < 0 || seq >= PAIR_SEQS || pos < 0) return 0;
    const pair_ranges *r = &p->ranges[seq];
    for (int i = r->n - 1; i >= 0; i--)
        if (r->start[i] <= pos) return r->seed[i];
    return 0;
}

/* 1: opened both; 0: no device (SKIP); -1: failure (already reported). */
static int pair_open(hisa_test_ctx *ctx, pair *p, hisa_config cfg) {
    memset(p, 0, sizeof *p);
    int r = hisa_tpair_open(ctx, cfg, &p->cpu, &p->gpu);
    if (r != 1) return r;
    p->cfg = *hisa_get_config(p->gpu);
    return 1;
}
static void pair_close(pair *p) {
    hisa_close(p->cpu);
    hisa_close(p->gpu);
}

#define PAIR_OPEN(p, cfg)                       \
    do {                                        \
        int r_ = pair_open(ctx, (p), (cfg));    \
        if (r_ == 0) SKIP(hisa_open_detail());  \
        if (r_ < 0) return;                     \
    } while (0)

#define BOTH(call_cpu, call_gpu)                                                             \
    do {                                                                                     \
        int e1_ = (call_cpu), e2_ = (call_gpu);                                              \
        CHECKF(e1_ == HISA_OK && e2_ == HISA_OK, "%s: cpu %s, cuda %s (%s)", #call_cpu,      \
               hisa_strerror(e1_), hisa_strerror(e2_), hisa_error_detail(p->gpu));          \
        if (e1_ || e2_) return -1;                                                           \
    } while (0)

static int pair_seq_open(hisa_test_ctx *ctx, pair *p, int32_t *seq) {
    int32_t s2 = -1;
    BOTH(hisa_seq_open(p->cpu, seq), hisa_seq_open(p->gpu, &s2));
    CHECK_EQ_INT(*seq, s2);
    return 0;
}

/* Extend seq by n and write keys for the new positions with generator seed (range writes in
 * chunks of `chunk` tokens, host IO on the GPU). */
static int pair_append(hisa_test_ctx *ctx, pair *p, int32_t seq, int32_t n, uint64_t seed, int32_t chunk) {
    int32_t len = 0;
    hisa_seq_length(p->cpu, seq, &len);
    BOTH(hisa_seq_extend(p->cpu, seq, n), hisa_seq_extend(p->gpu, seq, n));
    pair_note_seed(ctx, p, seq, len, seed);
    float *keys = malloc(sizeof(float) * (size_t)chunk * 128);
    for (int32_t pos = len; pos < len + n; pos += chunk) {
        int32_t c = len + n - pos < chunk ? len + n - pos : chunk;
        hisa_tgen_keys(seed, pos, c, keys);
        hisa_write w = {.layer = 0, .n_tokens = c, .keys = keys, .flags = HISA_HOST_IO};
        int e1 = hisa_write_range(p->cpu, seq, pos, &w), e2 = hisa_write_range(p->gpu, seq, pos, &w);
        CHECKF(e1 == HISA_OK && e2 == HISA_OK, "write_range: %s / %s (%s)", hisa_strerror(e1), hisa_strerror(e2),
               hisa_error_detail(p->gpu));
        if (e1 || e2) {
            free(keys);
            return -1;
        }
    }
    free(keys);
    return 0;
}

/* Open n sequences on both backends and fill sequence i with lens[i] keys of seed seed0 + i *
 * step (range writes of `chunk`). 1: all done; 0: a failure (already reported). */
static int pair_open_filled(hisa_test_ctx *ctx, pair *p, int32_t *seqs, const int32_t *lens, int n, uint64_t seed0,
                            uint64_t step, int32_t chunk) {
    for (int i = 0; i < n; i++)
        if (pair_seq_open(ctx, p, &seqs[i]) || pair_append(ctx, p, seqs[i], lens[i], seed0 + (uint64_t)i * step, chunk))
            return 0;
    return 1;
}

/* Compare every page of the given layer that either backend holds for open sequences. */
static void compare_cache(hisa_test_ctx *ctx, pair *p, const char *what) {
    hisa_runtime *c = p->cpu, *g = p->gpu;
    int64_t pages = c->g.n_pages, pb = c->g.page_bytes, mw = c->g.mask_words, L = c->g.n_layers;
    int32_t B = (int32_t)c->g.block_size;
    uint8_t *keys = malloc((size_t)(L * pages * pb));
    int64_t S = c->g.max_seqs;
    float *sums = malloc(sizeof(float) * (size_t)(L * S * 128));
    int32_t *sum_pages = malloc(sizeof(int32_t) * (size_t)(L * S));
    uint16_t *means = malloc(sizeof(uint16_t) * (size_t)(L * pages * 128));
    uint32_t *masks = malloc(sizeof(uint32_t) * (size_t)(L * pages * mw));
    int32_t *dlen = malloc(sizeof(int32_t) * (size_t)c->g.max_seqs);
    int32_t *dpt = malloc(sizeof(int32_t) * (size_t)(c->g.max_seqs * c->g.pages_per_seq));
    REQUIRE(hisa_sync(g) == HISA_OK);
    REQUIRE(cudaMemcpy(keys, g->r.keys, (size_t)(L * pages * pb), cudaMemcpyDeviceToHost) == cudaSuccess);
    REQUIRE(cudaMemcpy(sums, g->r.block_sums, sizeof(float) * (size_t)(L * S * 128), cudaMemcpyDeviceToHost) == cudaSuccess);
    REQUIRE(cudaMemcpy(sum_pages, g->r.sum_pages, sizeof(int32_t) * (size_t)(L * S), cudaMemcpyDeviceToHost) == cudaSuccess);
    REQUIRE(cudaMemcpy(means, g->r.block_means, sizeof(uint16_t) * (size_t)(L * pages * 128), cudaMemcpyDeviceToHost) == cudaSuccess);
    REQUIRE(cudaMemcpy(masks, g->r.block_masks, sizeof(uint32_t) * (size_t)(L * pages * mw), cudaMemcpyDeviceToHost) == cudaSuccess);
    REQUIRE(cudaMemcpy(dlen, g->r.dev_seq_len, sizeof(int32_t) * (size_t)c->g.max_seqs, cudaMemcpyDeviceToHost) == cudaSuccess);
    REQUIRE(cudaMemcpy(dpt, g->r.dev_page_table, sizeof(int32_t) * (size_t)(c->g.max_seqs * c->g.pages_per_seq),
                       cudaMemcpyDeviceToHost) == cudaSuccess);
    int bad_keys = 0, bad_sums = 0, bad_means = 0, bad_masks = 0, bad_tables = 0;
    for (int32_t s = 0; s < c->g.max_seqs; s++) {
        if (!c->r.seq_is_open[s]) continue;
        int32_t len = c->r.seq_len[s];
        if (dlen[s] != len || g->r.seq_len[s] != len) bad_tables++;
        for (int32_t b = 0; b < hisa__blocks_of(len, B); b++) {
            int32_t page = c->r.page_table[(int64_t)s * c->g.pages_per_seq + b];
            if (g->r.page_table[(int64_t)s * c->g.pages_per_seq + b] != page ||
                dpt[(int64_t)s * c->g.pages_per_seq + b] != page)
                bad_tables++;
            int32_t n_in = len - b * B < B ? len - b * B : B;
            for (int64_t l = 0; l < L; l++) {
                int64_t si = l * pages + page;
                const uint8_t *ck = c->r.keys + si * pb, *gk = keys + si * pb;
                /* written tokens only: codes (or bf16) and scales */
                int row = c->g.key_format == HISA_KEY_FP8 ? 128 : 256;
                for (int32_t off = 0; off < n_in; off++) {
                    if (!(c->r.block_masks[si * mw + off / 32] & (1u << (off % 32)))) continue;
                    if (memcmp(ck + (int64_t)off * row, gk + (int64_t)off * row, (size_t)row)) bad_keys++;
                    if (c->g.key_format == HISA_KEY_FP8 &&
                        memcmp(ck + hisa__scale_offset(B, off), gk + hisa__scale_offset(B, off), 4))
                        bad_keys++;
                }
                if (memcmp(c->r.block_masks + si * mw, masks + si * mw, sizeof(uint32_t) * (size_t)mw)) bad_masks++;
                /* the summary rule makes means a function of the stored keys: bit-identical */
                if (memcmp(c->r.block_means + si * 128, means + si * 128, 256)) bad_means++;
            }
        }
        for (int64_t l = 0; l < L; l++) { /* each sequence's running sums: same page, same bits */
            int64_t slot = l * S + s;
            if (c->r.sum_pages[slot] != sum_pages[slot]) bad_sums++;
            else if (sum_pages[slot] >= 0 && memcmp(c->r.block_sums + slot * 128, sums + slot * 128, 512)) bad_sums++;
        }
    }
    CHECKF(!bad_keys && !bad_sums && !bad_means && !bad_masks && !bad_tables,
           "%s: cache differs: keys %d, sums %d, means %d, masks %d, tables %d", what, bad_keys, bad_sums,
           bad_means, bad_masks, bad_tables);
    free(keys);
    free(sums);
    free(sum_pages);
    free(means);
    free(masks);
    free(dlen);
    free(dpt);
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Judge one GPU row (positions) against the CPU reference. gpu_blocks: the m kept blocks the
 * GPU used for this row (read from its scratch), or NULL when the row did not take HISA.
 * eps_extra widens SPEC's eps for the tokens (fp8_mma native: hisa_t_native_bound). */
static void check_row(hisa_test_ctx *ctx, pair *p, int32_t seq, const float *q, const float *w, hisa_mode mode,
                      const int32_t *got, const int32_t *gpu_blocks, float eps_extra, const char *what) {
    const int32_t B = p->cfg.block_size, m = p->cfg.top_blocks, k = p->cfg.topk;
    int32_t n = 0;
    hisa_seq_length(p->cpu, seq, &n);
    int32_t nb = hisa__blocks_of(n, B), last = nb - 1;
    char why[256] = "";
    for (int32_t i = 0; i < k; i++)
        if (got[i] == POISON_WORD) {
            CHECKF(0, "%s n=%d: entry %d never written", what, n, i);
            return;
        }
    if (n <= k) {
        int32_t *s = malloc(sizeof(int32_t) * (size_t)k);
        memcpy(s, got, sizeof(int32_t) * (size_t)k);
        qsort(s, (size_t)n, sizeof(int32_t), cmp_i32);
        int ok = 1;
        for (int32_t i = 0; i < k; i++) ok &= s[i] == (i < n ? i : -1);
        CHECKF(ok, "%s n=%d <= k: not 0..n-1 then -1", what, n);
        free(s);
        return;
    }
    float *I = malloc(sizeof(float) * (size_t)n), *J = malloc(sizeof(float) * (size_t)nb);
    float *cs = malloc(sizeof(float) * (size_t)n);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n), *ref = malloc(sizeof(int32_t) * (size_t)k);
    uint8_t *is_cand = calloc((size_t)n, 1);
    hisa__cpu_scores(p->cpu, 0, seq, n - 1, q, HISA_Q_F32, w, I, J);
    int32_t n_cand = 0;
    if (mode == HISA_MODE_FLAT || nb <= m) {
        CHECKF(gpu_blocks == NULL, "%s n=%d: took HISA", what, n);
        for (int32_t s = 0; s < n; s++) {
            ids[s] = s;
            is_cand[s] = 1;
        }
        n_cand = n;
        memcpy(cs, I, sizeof(float) * (size_t)n);
    } else {
        REQUIRE(gpu_blocks != NULL);
        CHECKF(hisa_agree_blocks(J, nb, m, gpu_blocks, why, sizeof why), "%s n=%d: kept blocks: %s", what, n, why);
        for (int32_t i = 0; i < m; i++) {
            int32_t b = gpu_blocks[i];
            if (b < 0 || b > last) continue;
            for (int32_t s = b * B; s < b * B + B && s < n; s++) {
                is_cand[s] = 1;
                ids[n_cand] = s;
                cs[n_cand++] = I[s];
            }
        }
    }
    int32_t nr = hisa__topk_ref(cs, ids, n_cand, k, ref);
    for (int32_t i = nr; i < k; i++) ref[i] = -1;
    CHECKF(hisa_agree_tol(I, n, is_cand, ref, got, k, eps_extra, why, sizeof why), "%s n=%d mode=%d: %s", what, n,
           (int)mode, why);
    free(I);
    free(J);
    free(cs);
    free(ids);
    free(ref);
    free(is_cand);
}

/* One decode call on the GPU over seqs (host IO, outputs poisoned first), judged row by row;
 * also checks HISA_SLOTS against the positions. */
static void decode_and_check(hisa_test_ctx *ctx, pair *p, const int32_t *seqs, int32_t n_seqs, hisa_mode mode,
                             uint64_t qseed, int check_slots, const char *what) {
    const int32_t H = p->cfg.n_heads, k = p->cfg.topk, m = p->cfg.top_blocks, B = p->cfg.block_size;
    float *q = malloc(sizeof(float) * (size_t)n_seqs * H * 128), *w = malloc(sizeof(float) * (size_t)n_seqs * H);
    int32_t *out = malloc(sizeof(int32_t) * (size_t)n_seqs * k), *slots = malloc(sizeof(int32_t) * (size_t)n_seqs * k);
    int32_t *blocks = malloc(sizeof(int32_t) * (size_t)n_seqs * m);
    for (int32_t i = 0; i < n_seqs; i++) {
        int32_t len = 0;
        hisa_seq_length(p->cpu, seqs[i], &len);
        /* aligned with the topic of a random earlier position for half the rows (the keys'
         * own seed there), random for the rest */
        const int64_t near = (i & 1) ? (int64_t)((qseed * 31 + (uint64_t)i * 7) % (uint64_t)len) : -1;
        hisa_tgen_query_keys(pair_key_seed(p, seqs[i], near), qseed + (uint64_t)i, H, near, q + (int64_t)i * H * 128,
                             w + (int64_t)i * H);
    }
    hisa_decode req = {.layer = 0, .mode = mode, .n_seqs = n_seqs, .seq_ids = seqs, .q = q, .w = w, .out = out,
                       .flags = HISA_HOST_IO};
    REQUIRE(cudaMemset(p->gpu->r.io_out, 0x7f, sizeof(int32_t) * (size_t)n_seqs * k) == cudaSuccess);
    REQUIRE(cudaMemset(p->gpu->r.sel_blocks, 0x7f, sizeof(int32_t) * (size_t)n_seqs * m) == cudaSuccess);
    int err = hisa_select_decode(p->gpu, &req);
    CHECKF(err == HISA_OK, "%s: select_decode: %s (%s)", what, hisa_strerror(err), hisa_error_detail(p->gpu));
    if (err) goto done;
    REQUIRE(cudaMemcpy(blocks, p->gpu->r.sel_blocks, sizeof(int32_t) * (size_t)n_seqs * m, cudaMemcpyDeviceToHost) ==
            cudaSuccess);
    for (int32_t i = 0; i < n_seqs; i++) {
        int32_t len = 0;
        hisa_seq_length(p->cpu, seqs[i], &len);
        int32_t nb = hisa__blocks_of(len, B);
        int hisa_row = mode == HISA_MODE_HISA && nb > m && len > k;
        check_row(ctx, p, seqs[i], q + (int64_t)i * H * 128, w + (int64_t)i * H, mode, out + (int64_t)i * k,
                  hisa_row ? blocks + (int64_t)i * m : NULL, 0.0f, what);
    }
    if (check_slots) {
        req.out = slots;
        req.flags = HISA_HOST_IO | HISA_SLOTS;
        REQUIRE(cudaMemset(p->gpu->r.io_out, 0x7f, sizeof(int32_t) * (size_t)n_seqs * k) == cudaSuccess);
        err = hisa_select_decode(p->gpu, &req);
        CHECKF(err == HISA_OK, "%s: slots: %s", what, hisa_strerror(err));
        for (int32_t i = 0; i < n_seqs && !err; i++) {
            int32_t *a = out + (int64_t)i * k, *b = slots + (int64_t)i * k;
            int32_t pages[4096], np = 0;
            hisa_seq_pages(p->gpu, seqs[i], pages, 4096, &np);
            for (int32_t j = 0; j < k; j++)
                if (a[j] >= 0) a[j] = pages[a[j] / B] * B + a[j] % B;
            qsort(a, (size_t)k, sizeof(int32_t), cmp_i32);
            qsort(b, (size_t)k, sizeof(int32_t), cmp_i32);
            CHECKF(memcmp(a, b, sizeof(int32_t) * (size_t)k) == 0, "%s row %d: slots differ from positions", what, i);
        }
    }
done:
    free(q);
    free(w);
    free(out);
    free(slots);
    free(blocks);
}

/* --- tests ------------------------------------------------------------------------------------ */

/* Writes (ranges of many chunk sizes, single-token appends, overwrites, pre-quantized codes),
 * truncates, and appends after them: the GPU cache must hold the CPU's bytes. */
HISA_TEST(gpu_cache_writes_match_cpu) {
    for (int fmt = 0; fmt < 2; fmt++) {
        int32_t kf = fmt ? HISA_KEY_BF16 : HISA_KEY_FP8;
        hisa_config cfg = hisa_tconfig(32, 64, 8, 256, kf, 4096, 6);
        cfg.n_layers = 2;
        pair pp, *p = &pp;
        PAIR_OPEN(p, cfg);
        int32_t seqs[4];
        for (int i = 0; i < 4; i++)
            if (pair_seq_open(ctx, p, &seqs[i])) goto out;
        if (pair_append(ctx, p, seqs[0], 1000, 11, 256)) goto out;
        if (pair_append(ctx, p, seqs[1], 130, 12, 7)) goto out;
        if (pair_append(ctx, p, seqs[2], 64, 13, 64)) goto out;
        if (pair_append(ctx, p, seqs[3], 1, 14, 1)) goto out;
        compare_cache(ctx, p, "after ranges");
        /* decode appends: one token for each sequence, positions NULL, layer 1 too */
        for (int step = 0; step < 70; step++) {
            float keys[4 * 128];
            for (int i = 0; i < 4; i++) {
                int32_t len = 0;
                hisa_seq_length(p->cpu, seqs[i], &len);
                hisa_tgen_keys(100 + (uint64_t)i, len, 1, keys + i * 128);
                if (step % 5 == 0) keys[i * 128 + step % 128] = 0.0f;
            }
            int bad = 0;
            for (int i = 0; i < 4; i++) {
                int e1 = hisa_seq_extend(p->cpu, seqs[i], 1), e2 = hisa_seq_extend(p->gpu, seqs[i], 1);
                bad |= e1 | e2;
            }
            CHECK(!bad);
            for (int layer = 0; layer < 2; layer++) {
                hisa_write wr = {.layer = layer, .n_tokens = 4, .seq_ids = seqs, .keys = keys, .flags = HISA_HOST_IO};
                int e1 = hisa_write_keys(p->cpu, &wr), e2 = hisa_write_keys(p->gpu, &wr);
                CHECKF(!e1 && !e2, "write_keys: %s / %s", hisa_strerror(e1), hisa_strerror(e2));
            }
        }
        compare_cache(ctx, p, "after appends");
        /* overwrite earlier positions (replacement leaves the sums) */
        {
            float keys[3 * 128];
            int32_t pos[3] = {5, 64, 99}, ids[3] = {seqs[0], seqs[1], seqs[2]};
            hisa_tgen_keys(999, 0, 3, keys);
            hisa_write wr = {.layer = 0, .n_tokens = 3, .seq_ids = ids, .positions = pos, .keys = keys, .flags = HISA_HOST_IO};
            int e1 = hisa_write_keys(p->cpu, &wr), e2 = hisa_write_keys(p->gpu, &wr);
            CHECK(!e1 && !e2);
            float rk[200 * 128];
            hisa_tgen_keys(77, 300, 200, rk);
            hisa_write wr2 = {.layer = 0, .n_tokens = 200, .keys = rk, .flags = HISA_HOST_IO};
            e1 = hisa_write_range(p->cpu, seqs[0], 300, &wr2);
            e2 = hisa_write_range(p->gpu, seqs[0], 300, &wr2);
            CHECK(!e1 && !e2);
        }
        if (kf == HISA_KEY_FP8) { /* pre-quantized codes */
            uint8_t codes[2 * 128];
            float scales[2] = {0.01f, 3.5f};
            for (int i = 0; i < 256; i++) codes[i] = (uint8_t)((i * 37 + 11) & 0xff) == 0x7f ? 0x11 : (uint8_t)((i * 37 + 11) & 0xff);
            for (int i = 0; i < 256; i++)
                if ((codes[i] & 0x7f) == 0x7f) codes[i] = 0x22;
            int32_t ids[2] = {seqs[1], seqs[3]};
            hisa_write wr = {.layer = 1, .n_tokens = 2, .seq_ids = ids, .codes = codes, .scales = scales, .flags = HISA_HOST_IO};
            int e1 = hisa_write_keys(p->cpu, &wr), e2 = hisa_write_keys(p->gpu, &wr);
            CHECK(!e1 && !e2);
        }
        compare_cache(ctx, p, "after overwrites");
        /* truncate mid-block, at a block boundary, to 0; then continue */
        int32_t cut[4] = {777, 128, 1, 0};
        for (int i = 0; i < 4; i++) {
            int e1 = hisa_seq_truncate(p->cpu, seqs[i], cut[i]), e2 = hisa_seq_truncate(p->gpu, seqs[i], cut[i]);
            CHECK(!e1 && !e2);
        }
        compare_cache(ctx, p, "after truncate");
        for (int i = 0; i < 4; i++)
            if (pair_append(ctx, p, seqs[i], 150 + 10 * i, 200 + (uint64_t)i, 100)) goto out;
        compare_cache(ctx, p, "after truncate + append");
    out:
        pair_close(p);
    }
}

/* Lengths 1 .. several blocks past m*B, around k, m*B and multiples of B, in one mixed batch,
 * both modes, both key formats, H 32/64, B 64/128; slots checked against positions. */
HISA_GPU_TEST(gpu_select_lengths_match_cpu) {
    struct {
        int32_t H, B, kf;
    } shapes[] = {{64, 128, HISA_KEY_FP8}, {32, 64, HISA_KEY_BF16}, {32, 128, HISA_KEY_FP8}, {64, 64, HISA_KEY_BF16},
                  /* the Hopper scorer's other head tiles (N 16, 128) and 32-token pages (a tile's
                     two halves in two pages) */
                  {16, 32, HISA_KEY_FP8}, {128, 64, HISA_KEY_FP8}, {8, 256, HISA_KEY_FP8}};
    for (int si = 0; si < (int)(sizeof shapes / sizeof shapes[0]); si++) {
        const int32_t H = shapes[si].H, B = shapes[si].B, m = B == 32 ? 12 : 8, k = 256; /* (m - 1) * B >= k */
        int32_t mb = m * B;
        int32_t lens[] = {1, 2, k - 1, k, k + 1, B - 1, B + 1, 3 * B, 3 * B + 1, mb - 1, mb, mb + 1, mb + B - 1,
                          mb + B + 1, 2 * mb + 5, 5000, 9 * B, 9 * B - 1};
        int32_t n_lens = (int32_t)(sizeof lens / sizeof lens[0]);
        hisa_config cfg = hisa_tconfig(H, B, m, k, shapes[si].kf, 6000, n_lens);
        cfg.max_batch = n_lens;
        pair pp, *p = &pp;
        PAIR_OPEN(p, cfg);
        int32_t seqs[32];
        int ok = pair_open_filled(ctx, p, seqs, lens, n_lens, 500 + (uint64_t)si, 3, 256);
        if (ok) {
            char what[64];
            snprintf(what, sizeof what, "H%d B%d %s", H, B, shapes[si].kf == HISA_KEY_FP8 ? "fp8" : "bf16");
            decode_and_check(ctx, p, seqs, n_lens, HISA_MODE_HISA, 40 + (uint64_t)si, 1, what);
            decode_and_check(ctx, p, seqs, n_lens, HISA_MODE_FLAT, 50 + (uint64_t)si, si == 0, what);
            /* a batch of one, and a reordered batch */
            decode_and_check(ctx, p, seqs + n_lens - 3, 1, HISA_MODE_HISA, 60, 0, what);
            int32_t rev[32];
            for (int i = 0; i < n_lens; i++) rev[i] = seqs[n_lens - 1 - i];
            decode_and_check(ctx, p, rev, n_lens, HISA_MODE_HISA, 70, 0, what);
        }
        pair_close(p);
    }
}

/* Long contexts with the production shape (H 64, B 128, m 64, k 2048): up to 300K tokens, a
 * batch mixing them with short sequences. Few queries: the CPU reference is ~0.5 s per 300K. */
HISA_GPU_TEST(gpu_select_long_contexts_match_cpu) {
    for (int fmt = 0; fmt < 2; fmt++) {
        int32_t kf = fmt ? HISA_KEY_BF16 : HISA_KEY_FP8;
        int32_t lens_fp8[] = {300000, 131073, 8191, 2049, 100};
        int32_t lens_bf16[] = {65536 + 127, 8193};
        int32_t *lens = fmt ? lens_bf16 : lens_fp8, n_lens = fmt ? 2 : 5;
        hisa_config cfg = hisa_tconfig(64, 128, 64, 2048, kf, fmt ? 65536 + 128 : 300032, n_lens);
        cfg.max_batch = n_lens;
        cfg.max_prefill_queries = 2048;
        pair pp, *p = &pp;
        PAIR_OPEN(p, cfg);
        int32_t seqs[8];
        int ok = pair_open_filled(ctx, p, seqs, lens, n_lens, 900, 1, 2048);
        if (ok) {
            decode_and_check(ctx, p, seqs, n_lens, HISA_MODE_HISA, 81, 0, fmt ? "long bf16" : "long fp8");
            if (!fmt) decode_and_check(ctx, p, seqs, n_lens, HISA_MODE_FLAT, 82, 1, "long fp8 flat");
        }
        pair_close(p);
    }
}

/* HISA rows whose m * B candidates exceed one CTA's shared-memory top-k (16384) take the split
 * top-k (global histograms, last-CTA finish) instead: m 300 x B 64 = 19200 candidates. */
HISA_GPU_TEST(gpu_select_wide_hisa_rows_match_cpu) {
    const int32_t lens[] = {30000, 19201, 25000, 5000, 19199};
    const int32_t n_lens = (int32_t)(sizeof lens / sizeof lens[0]);
    hisa_config cfg = hisa_tconfig(32, 64, 300, 512, HISA_KEY_FP8, 30016, n_lens);
    cfg.max_batch = n_lens;
    pair pp, *p = &pp;
    PAIR_OPEN(p, cfg);
    int32_t seqs[8];
    if (pair_open_filled(ctx, p, seqs, lens, n_lens, 1300, 1, 256)) decode_and_check(ctx, p, seqs, n_lens, HISA_MODE_HISA, 91, 1, "wide m*B");
    pair_close(p);
}

/* Random scores with many exact ties through the top-k alone: same set as the reference, at two
 * lengths (the split top-k's slice count and finishing CTA's candidate spill differ). */
static void topk_ties_and_nan(hisa_test_ctx *ctx, hisa_runtime *g, int32_t n);
HISA_TEST(gpu_topk_ties_and_nan_match_reference) {
    hisa_config cfg = hisa_tconfig(32, 64, 8, 256, HISA_KEY_FP8, 4096, 2);
    cfg.device = HISA_DEVICE_CUDA(0);
    hisa_runtime *g = NULL;
    int err = hisa_open(&g, &cfg, NULL);
    if (err == HISA_ENODEVICE) SKIP("no CUDA device");
    REQUIRE(err == HISA_OK);
    topk_ties_and_nan(ctx, g, 70000);
    topk_ties_and_nan(ctx, g, 140000);
    hisa_close(g);
}

static void topk_ties_and_nan(hisa_test_ctx *ctx, hisa_runtime *g, int32_t n) {
    const int32_t rows = 3, k = 1000;
    float *s = malloc(sizeof(float) * (size_t)rows * n);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n), *ref = malloc(sizeof(int32_t) * (size_t)k);
    int32_t *got = malloc(sizeof(int32_t) * (size_t)rows * k);
    uint64_t rs = 5;
    for (int32_t i = 0; i < n; i++) ids[i] = i;
    for (int32_t i = 0; i < rows * n; i++) {
        int32_t r = i / n;
        float v = r == 0 ? (float)(hisa_test_rng(&rs) % 50) : r == 1 ? hisa_test_gauss(&rs) : 1.0f;
        if (r == 1 && i % 97 == 0) v = NAN;
        if (r == 1 && i % 89 == 0) v = -0.0f;
        s[i] = v;
    }
    float *ds = NULL;
    int32_t *dout = NULL;
    uint32_t *dwork = NULL;
    REQUIRE(cudaMalloc((void **)&ds, sizeof(float) * (size_t)rows * n) == cudaSuccess);
    REQUIRE(cudaMalloc((void **)&dout, sizeof(int32_t) * (size_t)rows * k) == cudaSuccess);
    REQUIRE(cudaMalloc((void **)&dwork, sizeof(uint32_t) * (size_t)rows * (size_t)hisa_k_work_row_words(n)) == cudaSuccess);
    REQUIRE(cudaMemcpy(ds, s, sizeof(float) * (size_t)rows * n, cudaMemcpyHostToDevice) == cudaSuccess);
    REQUIRE(cudaMemset(dwork, 0, sizeof(uint32_t) * (size_t)rows * (size_t)hisa_k_work_row_words(n)) == cudaSuccess);
    for (int rep = 0; rep < 2; rep++) { /* twice: the work area must be clean again */
        REQUIRE(cudaMemset(dout, 0x7f, sizeof(int32_t) * (size_t)rows * k) == cudaSuccess);
        hisa_k_topk_params tp = {.scores = ds, .stride = n, .n = n, .k = k, .n_rows = rows, .work = dwork, .out = dout,
                                 .dev = g->dev};
        CHECK_EQ_INT(hisa_k_topk(NULL, &tp), HISA_OK);
        REQUIRE(cudaMemcpy(got, dout, sizeof(int32_t) * (size_t)rows * k, cudaMemcpyDeviceToHost) == cudaSuccess);
        for (int32_t r = 0; r < rows; r++) {
            int32_t nr = hisa__topk_ref(s + (int64_t)r * n, ids, n, k, ref);
            CHECK_EQ_INT(nr, k);
            qsort(ref, (size_t)k, sizeof(int32_t), cmp_i32);
            qsort(got + (int64_t)r * k, (size_t)k, sizeof(int32_t), cmp_i32);
            CHECKF(memcmp(ref, got + (int64_t)r * k, sizeof(int32_t) * (size_t)k) == 0, "row %d rep %d: not the reference set", r,
                   rep);
        }
    }
    cudaFree(ds);
    cudaFree(dout);
    cudaFree(dwork);
    free(s);
    free(ids);
    free(ref);
    free(got);
}

/* The decode step (write the new token's key + select) captured once in a CUDA graph on a
 * non-default stream and replayed over 100 growing steps; the host only extends the sequences
 * between replays. Lengths cross k, m*B and block boundaries on the way. */
HISA_GPU_TEST(gpu_graph_replay_over_growing_sequences) {
    const int32_t H = 32, B = 64, m = 8, k = 256;
    hisa_config cfg = hisa_tconfig(H, B, m, k, HISA_KEY_FP8, 4096, 3);
    cfg.max_batch = 3;
    pair pp, *p = &pp;
    PAIR_OPEN(p, cfg);
    int32_t seqs[3], start[3] = {200, m * B - 50, 1000};
    for (int i = 0; i < 3; i++) {
        if (pair_seq_open(ctx, p, &seqs[i]) || pair_append(ctx, p, seqs[i], start[i] - 1, 300 + (uint64_t)i, 256)) {
            pair_close(p);
            return;
        }
    }
    cudaStream_t st;
    REQUIRE(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking) == cudaSuccess);
    float *dkeys, *dq, *dw;
    int32_t *dout;
    REQUIRE(cudaMalloc((void **)&dkeys, sizeof(float) * 3 * 128) == cudaSuccess);
    REQUIRE(cudaMalloc((void **)&dq, sizeof(float) * 3 * H * 128) == cudaSuccess);
    REQUIRE(cudaMalloc((void **)&dw, sizeof(float) * 3 * H) == cudaSuccess);
    REQUIRE(cudaMalloc((void **)&dout, sizeof(int32_t) * 3 * k) == cudaSuccess);
    REQUIRE(hisa_set_stream(p->gpu, st) == HISA_OK);
    /* the graph appends at len - 1, so extend before capturing and before each replay */
    for (int i = 0; i < 3; i++) {
        CHECK(hisa_seq_extend(p->cpu, seqs[i], 1) == HISA_OK);
        CHECK(hisa_seq_extend(p->gpu, seqs[i], 1) == HISA_OK);
    }
    hisa_write wr = {.layer = 0, .n_tokens = 3, .seq_ids = seqs, .keys = dkeys};
    hisa_decode dec = {.layer = 0, .mode = HISA_MODE_HISA, .n_seqs = 3, .seq_ids = seqs, .q = dq, .w = dw, .out = dout};
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    REQUIRE(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    int e1 = hisa_write_keys(p->gpu, &wr), e2 = hisa_select_decode(p->gpu, &dec);
    REQUIRE(cudaStreamEndCapture(st, &graph) == cudaSuccess);
    REQUIRE(e1 == HISA_OK && e2 == HISA_OK);
    REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
    float keys[3 * 128], *q = malloc(sizeof(float) * 3 * H * 128), w[3 * 64];
    int32_t *out = malloc(sizeof(int32_t) * 3 * k), *blocks = malloc(sizeof(int32_t) * 3 * m);
    int failures_before = ctx->failures;
    for (int step = 0; step < 100 && ctx->failures == failures_before; step++) {
        for (int i = 0; i < 3; i++) {
            int32_t len = 0;
            hisa_seq_length(p->cpu, seqs[i], &len);
            hisa_tgen_keys(300 + (uint64_t)i, len - 1, 1, keys + i * 128);
            hisa_tgen_query_keys(300 + (uint64_t)i, 1000 + (uint64_t)step * 3 + (uint64_t)i, H, step % 2 ? len / 2 : -1,
                                 q + (int64_t)i * H * 128, w + i * H);
        }
        hisa_write cw = {.layer = 0, .n_tokens = 3, .seq_ids = seqs, .keys = keys};
        CHECK(hisa_write_keys(p->cpu, &cw) == HISA_OK);
        REQUIRE(cudaMemcpyAsync(dkeys, keys, sizeof keys, cudaMemcpyHostToDevice, st) == cudaSuccess);
        REQUIRE(cudaMemcpyAsync(dq, q, sizeof(float) * 3 * H * 128, cudaMemcpyHostToDevice, st) == cudaSuccess);
        REQUIRE(cudaMemcpyAsync(dw, w, sizeof(float) * 3 * H, cudaMemcpyHostToDevice, st) == cudaSuccess);
        REQUIRE(cudaMemsetAsync(dout, 0x7f, sizeof(int32_t) * 3 * k, st) == cudaSuccess);
        REQUIRE(cudaGraphLaunch(exec, st) == cudaSuccess);
        REQUIRE(cudaMemcpyAsync(out, dout, sizeof(int32_t) * 3 * k, cudaMemcpyDeviceToHost, st) == cudaSuccess);
        REQUIRE(cudaMemcpyAsync(blocks, p->gpu->r.sel_blocks, sizeof(int32_t) * 3 * m, cudaMemcpyDeviceToHost, st) ==
                cudaSuccess);
        REQUIRE(cudaStreamSynchronize(st) == cudaSuccess);
        for (int i = 0; i < 3; i++) {
            int32_t len = 0;
            hisa_seq_length(p->cpu, seqs[i], &len);
            char what[48];
            snprintf(what, sizeof what, "graph step %d row %d", step, i);
            int hisa_row = hisa__blocks_of(len, B) > m && len > k;
            check_row(ctx, p, seqs[i], q + (int64_t)i * H * 128, w + i * H, HISA_MODE_HISA, out + (int64_t)i * k,
                      hisa_row ? blocks + i * m : NULL, 0.0f, what);
        }
        if (step % 33 == 32) compare_cache(ctx, p, "graph");
        for (int i = 0; i < 3; i++) {
            CHECK(hisa_seq_extend(p->cpu, seqs[i], 1) == HISA_OK);
            CHECK(hisa_seq_extend(p->gpu, seqs[i], 1) == HISA_OK);
        }
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    hisa_set_stream(p->gpu, NULL);
    cudaStreamDestroy(st);
    cudaFree(dkeys);
    cudaFree(dq);
    cudaFree(dw);
    cudaFree(dout);
    free(q);
    free(out);
    free(blocks);
    pair_close(p);
}

/* Truncate (mid-block, at a boundary, below k and below m*B), continue appending, select. */
HISA_GPU_TEST(gpu_truncate_then_continue_matches_cpu) {
    const int32_t H = 64, B = 128, m = 8, k = 512;
    hisa_config cfg = hisa_tconfig(H, B, m, k, HISA_KEY_FP8, 8192, 4);
    cfg.max_batch = 4;
    cfg.max_prefill_queries = 512;
    pair pp, *p = &pp;
    PAIR_OPEN(p, cfg);
    int32_t seqs[4], lens[4] = {5000, 3000, 2000, 1500}, cut[4] = {4100, 1024, 300, 1100}, more[4] = {200, 300, 1000, 1};
    int ok = pair_open_filled(ctx, p, seqs, lens, 4, 700, 1, 512);
    if (ok) {
        decode_and_check(ctx, p, seqs, 4, HISA_MODE_HISA, 90, 0, "before truncate");
        for (int i = 0; i < 4; i++) {
            int e1 = hisa_seq_truncate(p->cpu, seqs[i], cut[i]), e2 = hisa_seq_truncate(p->gpu, seqs[i], cut[i]);
            CHECK(!e1 && !e2);
        }
        compare_cache(ctx, p, "truncated");
        decode_and_check(ctx, p, seqs, 4, HISA_MODE_HISA, 91, 0, "truncated");
        for (int i = 0; i < 4 && ok; i++) ok = !pair_append(ctx, p, seqs[i], more[i], 800 + (uint64_t)i, 512);
        compare_cache(ctx, p, "continued");
        decode_and_check(ctx, p, seqs, 4, HISA_MODE_HISA, 92, 1, "continued");
        decode_and_check(ctx, p, seqs, 4, HISA_MODE_FLAT, 93, 0, "continued flat");
    }
    pair_close(p);
}

/* The SPEC formula in double over query values q (exact in bf16: e4m3 codes' values) and the
 * dequantized key of position pos of seq in the CPU runtime; *bound: hisa_t_native_bound. */
static double native_ref(const pair *p, int32_t seq, int32_t pos, const float *q, const float *w, double *bound) {
    const hisa_runtime *c = p->cpu;
    const int32_t B = (int32_t)c->g.block_size, H = p->cfg.n_heads;
    const int32_t page = c->r.page_table[(int64_t)seq * c->g.pages_per_seq + pos / B];
    float key[128];
    hisa__kv_dequant(&c->kv, hisa__page(c, 0, page), pos % B, key);
    *bound = hisa_t_native_bound(q, w, H, key);
    return hisa_t_score(q, w, H, key);
}

/* One batch of fp8 queries (codes; q their values, w with the scales folded in) decoded flat
 * then HISA. Flat: every token's score, left in the selection scratch, against native_ref; the
 * selection judged with eps widened by the rows' largest bound (0 when exact). HISA: kept blocks
 * by J (block means are scored exactly either way), tokens with the same widening. */
static void native_batch(hisa_test_ctx *ctx, pair *p, const int32_t *seqs, int32_t n, const uint8_t *codes,
                         const float *q, const float *w, int exact, const char *what) {
    const int32_t H = p->cfg.n_heads, k = p->cfg.topk, m = p->cfg.top_blocks, B = p->cfg.block_size;
    hisa_runtime *g = p->gpu;
    const int64_t mc = g->g.max_context;
    int32_t *out = malloc(sizeof(int32_t) * (size_t)n * k), *blocks = malloc(sizeof(int32_t) * (size_t)n * m);
    float *got = malloc(sizeof(float) * (size_t)(n * mc)), extra[HISA_MAX_BATCH];
    double worst_rel = 0.0, worst_bound = 0.0; /* error / max |I| of its row; error / the token's bound */
    for (int mode = HISA_MODE_FLAT; mode >= HISA_MODE_HISA; mode--) {
        hisa_decode req = {.layer = 0, .mode = (hisa_mode)mode, .n_seqs = n, .seq_ids = seqs, .q = codes, .w = w,
                           .out = out, .flags = HISA_HOST_IO, .q_format = HISA_Q_FP8};
        REQUIRE(cudaMemset(g->r.io_out, 0x7f, sizeof(int32_t) * (size_t)n * k) == cudaSuccess);
        REQUIRE(cudaMemset(g->r.sel_blocks, 0x7f, sizeof(int32_t) * (size_t)n * m) == cudaSuccess);
        REQUIRE(cudaMemset(g->r.sel_scores, 0xff, sizeof(float) * (size_t)(n * mc)) == cudaSuccess); /* NaN */
        int err = hisa_select_decode(g, &req);
        CHECKF(err == HISA_OK, "%s mode %d: %s (%s)", what, mode, hisa_strerror(err), hisa_error_detail(g));
        if (err) break;
        REQUIRE(cudaMemcpy(blocks, g->r.sel_blocks, sizeof(int32_t) * (size_t)n * m, cudaMemcpyDeviceToHost) == cudaSuccess);
        if (mode == HISA_MODE_FLAT)
            REQUIRE(cudaMemcpy(got, g->r.sel_scores, sizeof(float) * (size_t)(n * mc), cudaMemcpyDeviceToHost) == cudaSuccess);
        for (int32_t i = 0; i < n; i++) {
            int32_t len = 0;
            hisa_seq_length(p->cpu, seqs[i], &len);
            const float *qi = q + (int64_t)i * H * 128, *wi = w + (int64_t)i * H;
            if (mode == HISA_MODE_FLAT) { /* every row here is longer than k: all its tokens scored */
                double amax = 0.0, dmax = 0.0, bmax = 0.0, bound;
                for (int32_t s = 0; s < len; s++) {
                    const double ref = native_ref(p, seqs[i], s, qi, wi, &bound);
                    const double d = fabs((double)got[i * mc + s] - ref); /* NaN poison: d is NaN */
                    amax = fmax(amax, fabs(ref));
                    dmax = (d > dmax || d != d) ? d : dmax;
                    bmax = fmax(bmax, bound);
                    const double r = d == 0.0 ? 0.0 : d / bound;
                    worst_bound = (r > worst_bound || r != r) ? r : worst_bound;
                }
                worst_rel = (dmax / amax > worst_rel || dmax != dmax) ? dmax / amax : worst_rel;
                extra[i] = exact ? 0.0f : (float)bmax;
            }
            const int hisa_row = mode == HISA_MODE_HISA && hisa__blocks_of(len, B) > m && len > k;
            char what2[96];
            snprintf(what2, sizeof what2, "%s mode %d row %d", what, mode, i);
            check_row(ctx, p, seqs[i], qi, wi, (hisa_mode)mode, out + (int64_t)i * k, hisa_row ? blocks + (int64_t)i * m : NULL,
                      extra[i], what2);
        }
    }
    printf("  %s: max |I_gpu - I_ref| / max |I| = %.3g, / the native bound = %.3g\n", what, worst_rel, worst_bound);
    if (exact) {
        CHECKF(worst_rel <= 1e-5, "%s: exact scores off by %.3g of max |I| (over 1e-5)", what, worst_rel);
    } else {
        CHECKF(worst_bound <= 1.0, "%s: a score error %.3g times its bound 2^-10 sum_h |w_h| sum_d |q_hd k_d|", what,
               worst_bound);
        CHECKF(worst_rel > 1e-6, "%s: score error %.3g of max |I|, as small as the exact path's: were the e4m3 tensor "
               "cores used?", what, worst_rel);
    }
    free(out);
    free(blocks);
    free(got);
}

/* fp8_mma native in decode (hisa.h: outside SPEC's rule): fp8 queries over fp8 keys go to the
 * Hopper scorer's e4m3 tensor cores under AUTO and HOPPER; PORTABLE computes them exactly.
 * H 16, 64 and 128 (the scorer's N tiles), B 32 (a tile in two pages), 64 and 128; rows of
 * n > m * B (HISA) and of nb <= m (flat) in one batch; f32 queries in the same runtime stay
 * exact (decode_and_check, SPEC's rule alone). Run on all three `kernels` settings: AUTO keeps
 * the portable scorer for everything else on the H200. */
HISA_GPU_TEST(gpu_decode_native_fp8) {
    static const struct {
        int32_t H, B;
    } shapes[] = {{64, 128}, {16, 32}, {128, 64}};
    for (int si = 0; si < (int)(sizeof shapes / sizeof shapes[0]); si++) {
        const int32_t H = shapes[si].H, B = shapes[si].B, m = B == 32 ? 12 : 8, k = 256, n = 4; /* (m - 1) * B >= k */
        hisa_config cfg = hisa_tconfig(H, B, m, k, HISA_KEY_FP8, 6000, n);
        cfg.max_batch = n;
        cfg.fp8_mma = HISA_FP8_MMA_NATIVE;
        pair pp, *p = &pp;
        PAIR_OPEN(p, cfg);
        const int exact = p->gpu->dev.all_portable; /* what the runtime promises: hisa.h */
        int32_t seqs[4], lens[4] = {5000, 3001, 9 * B + 5, 300};
        if (pair_open_filled(ctx, p, seqs, lens, n, 900 + (uint64_t)si, 1, 256)) {
            float *q = malloc(sizeof(float) * (size_t)n * H * 128), *w = malloc(sizeof(float) * (size_t)n * H);
            uint8_t *codes = malloc((size_t)n * H * 128);
            for (int32_t i = 0; i < n; i++) {
                const int64_t near = (i & 1) ? (int64_t)(lens[i] * 3 / 7) : -1;
                float *qi = q + (int64_t)i * H * 128, *wi = w + (int64_t)i * H;
                hisa_tgen_query_keys(pair_key_seed(p, seqs[i], near), 950 + (uint64_t)(4 * si + i), H, near, qi, wi);
                hisa_tquant_query(qi, wi, H, codes + (int64_t)i * H * 128, qi, wi);
            }
            char what[64];
            snprintf(what, sizeof what, "H %d B %d %s", H, B, exact ? "exact (portable)" : "e4m3");
            native_batch(ctx, p, seqs, n, codes, q, w, exact, what);
            decode_and_check(ctx, p, seqs, n, HISA_MODE_HISA, 960 + (uint64_t)si, 0, "f32 queries beside native");
            free(q);
            free(w);
            free(codes);
        }
        pair_close(p);
    }
}
HISA_TEST(gpu_decode_native_fp8_auto) { hisa_gpu_body_gpu_decode_native_fp8(ctx); }

/* The read-bandwidth probe (hisa_dev.h) reads every word once: its sum equals the CPU's, for a
 * size that leaves a remainder to the grid-stride loop's tail. */
HISA_TEST(gpu_read_probe_reads_every_word) {
    hisa_config cfg = hisa_tconfig(8, 32, 8, 64, HISA_KEY_FP8, 2048, 1);
    cfg.device = HISA_DEVICE_CUDA(0);
    hisa_runtime *g = NULL;
    int err = hisa_open(&g, &cfg, NULL);
    if (err == HISA_ENODEVICE) SKIP("no CUDA device");
    REQUIRE(err == HISA_OK);
    const size_t bytes = ((size_t)37 << 20) + 16 * 4099; /* not a multiple of the grid's stride */
    uint32_t *h = malloc(bytes);
    uint64_t rs = 77, want = 0;
    for (size_t i = 0; i < bytes / 4; i++) want += h[i] = (uint32_t)hisa_test_rng(&rs);
    void *d = NULL;
    uint64_t *dsum = NULL, got = 0;
    REQUIRE(cudaMalloc(&d, bytes) == cudaSuccess && cudaMalloc((void **)&dsum, 8) == cudaSuccess);
    REQUIRE(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice) == cudaSuccess);
    for (int rep = 0; rep < 2; rep++) { /* twice: the launch zeroes the sum itself */
        REQUIRE(cudaMemset(dsum, 0x5a, 8) == cudaSuccess);
        CHECK_EQ_INT(hisa_dev_read_probe(g, d, bytes, dsum), HISA_OK);
        REQUIRE(hisa_sync(g) == HISA_OK);
        REQUIRE(cudaMemcpy(&got, dsum, 8, cudaMemcpyDeviceToHost) == cudaSuccess);
        CHECKF(got == want, "probe sum %llu, CPU %llu", (unsigned long long)got, (unsigned long long)want);
    }
    CHECK_EQ_INT(hisa_dev_read_probe(g, d, bytes - 8, dsum), HISA_EINVAL); /* not a multiple of 16 */
    cudaFree(d);
    cudaFree(dsum);
    free(h);
    hisa_close(g);
}

#else /* !HISA_CUDA */

HISA_TEST(gpu_decode_path) { SKIP("no CUDA device"); }

#endif
