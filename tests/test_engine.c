/* test_engine.c: the engine features of the query-format issue: query formats (HISA_Q_F32,
 * HISA_Q_BF16, HISA_Q_FP8) and bf16 key writes, multi-token decode (next_n), batched prefill
 * chunks, and shared prefixes (hisa_seq_fork), on the CPU reference and, where a CUDA device is
 * present, CUDA against the CPU.
 *
 * CPU tests hold the reference to exact identities: bf16 queries are the f32 queries of the same
 * values, a next_n decode row is the single query at its t, a batch of chunks is its chunks one
 * by one, a fork selects what a sequence written into its own pages selects; fp8 queries are
 * judged against the independent brute force (tests/common.c) on the codes' values with the
 * scale folded into w. Every output is poisoned (0x7f7f7f7f) before each call, so an entry the
 * call never wrote fails. GPU tests (SPEC agreement rule against the CPU runtime's scores, kept
 * blocks judged by J, tokens against the candidates the GPU kept) say "skipped: no CUDA device"
 * without a GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kvcache/kvcache.h"
#include "../runtime/internal.h"
#include "common.h"
#include "test.h"

#define POISON 0x7f7f7f7f

/* --- helpers: runtimes, sequences, keys --------------------------------------------------- */

static hisa_runtime *eng_open(hisa_config c) {
    hisa_runtime *rt = NULL;
    return hisa_open(&rt, &c, NULL) == HISA_OK ? rt : NULL;
}

static void poison(int32_t *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = POISON;
}
static int64_t count_poison(const int32_t *out, int64_t n) {
    int64_t c = 0;
    for (int64_t i = 0; i < n; i++) c += out[i] == POISON;
    return c;
}

/* Generated keys (seed) for positions [pos0, pos0 + n) of seq, layer 0, through write_range. */
static int eng_fill(hisa_runtime *rt, int32_t seq, int32_t pos0, int32_t n, uint64_t seed) {
    int32_t chunk = hisa_get_config(rt)->max_prefill_queries;
    float *keys = malloc(sizeof(float) * HISA_D * (size_t)chunk);
    int err = 0;
    for (int32_t p = pos0; p < pos0 + n && !err; p += chunk) {
        int32_t c = pos0 + n - p < chunk ? pos0 + n - p : chunk;
        hisa_tgen_keys(seed, p, c, keys);
        hisa_write w = {.n_tokens = c, .keys = keys, .flags = HISA_HOST_IO};
        err = hisa_write_range(rt, seq, p, &w);
    }
    free(keys);
    return err;
}

/* Extend seq by n and write the new positions' keys from seed. */
static int eng_grow(hisa_runtime *rt, int32_t seq, int32_t n, uint64_t seed) {
    int32_t len = 0;
    int err = hisa_seq_length(rt, seq, &len);
    if (!err) err = hisa_seq_extend(rt, seq, n);
    if (!err) err = eng_fill(rt, seq, len, n, seed);
    return err;
}

static int eng_seq(hisa_runtime *rt, int32_t n, uint64_t seed, int32_t *seq) {
    int err = hisa_seq_open(rt, seq);
    return err ? err : eng_grow(rt, *seq, n, seed);
}

/* A sequence of its own pages written in segments: positions [end of the previous, end) from
 * seed (a fork's unshared twin). */
typedef struct eng_seg {
    int32_t end;
    uint64_t seed;
} eng_seg;
static int eng_seq_segs(hisa_runtime *rt, const eng_seg *segs, int32_t n_segs, int32_t *seq) {
    int err = hisa_seq_open(rt, seq);
    for (int32_t i = 0, len = 0; i < n_segs && !err; len = segs[i++].end)
        err = eng_grow(rt, *seq, segs[i].end - len, segs[i].seed);
    return err;
}

static int32_t eng_len(const hisa_runtime *rt, int32_t seq) {
    int32_t len = -1;
    (void)hisa_seq_length(rt, seq, &len);
    return len;
}

/* Stored keys of seq's first n positions (layer 0) dequantized, and its block means. */
static void eng_stored(const hisa_runtime *rt, int32_t seq, int32_t n, float *deq, float *means) {
    int32_t B = (int32_t)rt->g.block_size;
    const int32_t *pt = hisa__kv_pages(&rt->kv, seq);
    for (int32_t s = 0; s < n; s++) hisa__kv_dequant(&rt->kv, hisa__page(rt, 0, pt[s / B]), s % B, deq + (int64_t)s * HISA_D);
    for (int32_t b = 0; b < hisa__blocks_of(n, B); b++)
        for (int d = 0; d < HISA_D; d++)
            means[(int64_t)b * HISA_D + d] = hisa__bf16_to_f32(rt->r.block_means[hisa__summary_index(rt, 0, pt[b]) * HISA_D + d]);
}

/* --- helpers: queries in the three formats ---------------------------------------------------- */

/* rows queries from the generator, in every format: f (fp32) and w; b = bf16 bits of f; c = e4m3
 * codes of f / scale with scale = amax / 448 per head (1 where amax is 0), w8 = w * scale, v8 =
 * the codes' values (what the fp8 query is, SPEC "Queries"). */
typedef struct eng_qset {
    int32_t H, rows;
    float *f, *w, *w8, *v8;
    uint16_t *b;
    uint8_t *c;
} eng_qset;

static void qset_make(eng_qset *s, int32_t H, int32_t rows, uint64_t seed, const int64_t *near) {
    int64_t n = (int64_t)rows * H * HISA_D;
    s->H = H;
    s->rows = rows;
    s->f = malloc(sizeof(float) * (size_t)n);
    s->v8 = malloc(sizeof(float) * (size_t)n);
    s->w = malloc(sizeof(float) * (size_t)rows * H);
    s->w8 = malloc(sizeof(float) * (size_t)rows * H);
    s->b = malloc(sizeof(uint16_t) * (size_t)n);
    s->c = malloc((size_t)n);
    for (int32_t r = 0; r < rows; r++)
        hisa_tgen_query(seed * 1000 + (uint64_t)r, H, near ? near[r] : -1, s->f + (int64_t)r * H * HISA_D, s->w + (int64_t)r * H);
    for (int64_t i = 0; i < n; i++) s->b[i] = hisa__bf16_from_f32(s->f[i]);
    for (int32_t r = 0; r < rows; r++) {
        int64_t i = (int64_t)r * H * HISA_D;
        hisa_tquant_query(s->f + i, s->w + (int64_t)r * H, H, s->c + i, s->v8 + i, s->w8 + (int64_t)r * H);
    }
}
static void qset_free(eng_qset *s) {
    free(s->f);
    free(s->v8);
    free(s->w);
    free(s->w8);
    free(s->b);
    free(s->c);
}
/* Row r's query / weights in format qf. */
static const void *qset_q(const eng_qset *s, int32_t qf, int32_t r) {
    int64_t i = (int64_t)r * s->H * HISA_D;
    return qf == HISA_Q_F32 ? (const void *)(s->f + i) : qf == HISA_Q_BF16 ? (const void *)(s->b + i) : (const void *)(s->c + i);
}
static const float *qset_w(const eng_qset *s, int32_t qf, int32_t r) {
    return (qf == HISA_Q_FP8 ? s->w8 : s->w) + (int64_t)r * s->H;
}
static const char *qf_name(int32_t qf) { return qf == HISA_Q_F32 ? "f32" : qf == HISA_Q_BF16 ? "bf16" : "fp8"; }

/* --- helpers: calls with poisoned outputs ----------------------------------------------------- */

static int eng_decode(hisa_runtime *rt, const int32_t *seqs, int32_t n_seqs, int32_t next_n, hisa_mode mode,
                      const void *q, int32_t qf, const float *w, uint32_t flags, int32_t *out) {
    poison(out, (int64_t)n_seqs * (next_n > 1 ? next_n : 1) * rt->g.topk);
    hisa_decode d = {.mode = mode, .n_seqs = n_seqs, .seq_ids = seqs, .q = q, .w = w, .out = out, .flags = flags,
                     .q_format = qf, .next_n = next_n};
    return hisa_select_decode(rt, &d);
}

static int eng_prefill1(hisa_runtime *rt, int32_t seq, int32_t t0, int32_t n_q, hisa_mode mode, const void *q,
                        int32_t qf, const float *w, uint32_t flags, int32_t *out) {
    poison(out, (int64_t)n_q * rt->g.topk);
    hisa_prefill p = {.mode = mode, .seq = seq, .t0 = t0, .n_q = n_q, .q = q, .w = w, .out = out, .flags = flags,
                      .q_format = qf};
    return hisa_select_prefill(rt, &p);
}

/* The query at t of seq (values qv, weights w) against the independent brute force over the
 * stored keys, under the SPEC agreement rule. */
static void eng_check_brute(hisa_test_ctx *ctx, const hisa_runtime *rt, int32_t seq, int32_t t, const float *qv,
                            const float *w, int flat, const int32_t *got, const char *what) {
    const int32_t B = (int32_t)rt->g.block_size, m = (int32_t)rt->g.top_blocks, k = (int32_t)rt->g.topk;
    const int32_t H = (int32_t)rt->g.n_heads, n = t + 1, nb = hisa__blocks_of(n, B);
    float *deq = malloc(sizeof(float) * (size_t)n * HISA_D), *means = malloc(sizeof(float) * (size_t)nb * HISA_D);
    float *I = malloc(sizeof(float) * (size_t)n), *J = malloc(sizeof(float) * (size_t)nb);
    int32_t *ref = malloc(sizeof(int32_t) * (size_t)k);
    char why[256] = "";
    eng_stored(rt, seq, n, deq, means);
    hisa_brute_select(deq, means, n, B, m, k, H, qv, w, flat, ref, I, J);
    CHECKF(hisa_agree(I, n, NULL, ref, got, k, why, sizeof why), "%s t=%d flat=%d: %s", what, t, flat, why);
    free(deq);
    free(means);
    free(I);
    free(J);
    free(ref);
}

/* Two sequences hold the same stored bytes for positions 0..n-1 (layer 0): raw token bytes,
 * dequantized keys, block means, masks; and, when sums is set, the same running sums. */
static void eng_same_tokens(hisa_test_ctx *ctx, const hisa_runtime *rt, int32_t a, int32_t b, int32_t n, int sums,
                            const char *what) {
    const int32_t B = (int32_t)rt->g.block_size, fp8 = rt->g.key_format == HISA_KEY_FP8;
    const int32_t *pa = hisa__kv_pages(&rt->kv, a), *pb = hisa__kv_pages(&rt->kv, b);
    int bad_bytes = 0, bad_deq = 0, bad_means = 0, bad_masks = 0;
    for (int32_t s = 0; s < n; s++) {
        const uint8_t *xa = hisa__page(rt, 0, pa[s / B]), *xb = hisa__page(rt, 0, pb[s / B]);
        int32_t off = s % B;
        if (fp8)
            bad_bytes += memcmp(xa + hisa__code_offset(off), xb + hisa__code_offset(off), HISA_D) != 0 ||
                         memcmp(xa + hisa__scale_offset(B, off), xb + hisa__scale_offset(B, off), 4) != 0;
        else
            bad_bytes += memcmp(xa + hisa__bf16_offset(off), xb + hisa__bf16_offset(off), 2 * HISA_D) != 0;
        float da[HISA_D], db[HISA_D];
        hisa__kv_dequant(&rt->kv, xa, off, da);
        hisa__kv_dequant(&rt->kv, xb, off, db);
        bad_deq += memcmp(da, db, sizeof da) != 0;
    }
    for (int32_t blk = 0; blk < hisa__blocks_of(n, B); blk++) {
        int64_t ia = hisa__summary_index(rt, 0, pa[blk]), ib = hisa__summary_index(rt, 0, pb[blk]);
        bad_means += memcmp(rt->r.block_means + ia * HISA_D, rt->r.block_means + ib * HISA_D, 2 * HISA_D) != 0;
        int32_t mw = (int32_t)rt->g.mask_words; /* every offset: none past n may be marked */
        bad_masks += memcmp(rt->r.block_masks + ia * mw, rt->r.block_masks + ib * mw, sizeof(uint32_t) * (size_t)mw) != 0;
    }
    CHECKF(!bad_bytes && !bad_deq && !bad_means && !bad_masks, "%s: differ: token bytes %d, dequantized %d, means %d, masks %d",
           what, bad_bytes, bad_deq, bad_means, bad_masks);
    /* running sums, where both hold one: of the same block, the same bits (-1: none; the next
     * write recomputes) */
    int32_t sa = rt->r.sum_pages[a], sb = rt->r.sum_pages[b], ba = -1, bb = -1;
    for (int32_t blk = 0; blk < hisa__blocks_of(n, B); blk++) {
        ba = pa[blk] == sa ? blk : ba;
        bb = pb[blk] == sb ? blk : bb;
    }
    if (sums && sa >= 0 && sb >= 0)
        CHECKF(ba == bb && memcmp(rt->r.block_sums + (int64_t)a * HISA_D, rt->r.block_sums + (int64_t)b * HISA_D, 4 * HISA_D) == 0,
               "%s: running sums differ (blocks %d, %d)", what, ba, bb);
}

/* Everything a failed call must leave alone: the report, the tables and the cache bytes. */
typedef struct eng_snap {
    hisa_memory_report rep;
    uint8_t *host, *dev;
    size_t host_bytes, dev_bytes;
} eng_snap;

/* The host tables (lengths, open flags, page table, free stacks, refs) and the cache regions
 * (keys, means, masks, sums, sum pages) of a CPU runtime, copied. */
static void snap_take(const hisa_runtime *rt, eng_snap *s) {
    const hisa__geom *g = &rt->g;
    (void)hisa_memory_report_get(rt, &s->rep);
    size_t S = (size_t)g->max_seqs, P = (size_t)g->n_pages, L = (size_t)g->n_layers;
    s->host_bytes = S * 4 + S + S * (size_t)g->pages_per_seq * 4 + P * 4 + S * 4 + P * 4;
    s->dev_bytes = L * P * (size_t)g->page_bytes + L * P * HISA_D * 2 + L * P * (size_t)g->mask_words * 4 + L * S * HISA_D * 4 + L * S * 4;
    s->host = malloc(s->host_bytes);
    s->dev = malloc(s->dev_bytes);
    uint8_t *h = s->host, *d = s->dev;
#define SNAP_PUT(dst, src, bytes) (memcpy(dst, src, bytes), dst += (bytes))
    SNAP_PUT(h, rt->r.seq_len, S * 4);
    SNAP_PUT(h, rt->r.seq_is_open, S);
    SNAP_PUT(h, rt->r.page_table, S * (size_t)g->pages_per_seq * 4);
    SNAP_PUT(h, rt->r.free_pages, P * 4);
    SNAP_PUT(h, rt->r.free_seqs, S * 4);
    SNAP_PUT(h, rt->r.page_refs, P * 4);
    SNAP_PUT(d, rt->r.keys, L * P * (size_t)g->page_bytes);
    SNAP_PUT(d, rt->r.block_means, L * P * HISA_D * 2);
    SNAP_PUT(d, rt->r.block_masks, L * P * (size_t)g->mask_words * 4);
    SNAP_PUT(d, rt->r.block_sums, L * S * HISA_D * 4);
    SNAP_PUT(d, rt->r.sum_pages, L * S * 4);
#undef SNAP_PUT
}
/* 1 when rt still matches the snapshot; otherwise 0 and what differs in why. */
static int snap_same(const hisa_runtime *rt, const eng_snap *s, char *why, size_t why_len) {
    eng_snap now;
    snap_take(rt, &now);
    const char *bad = memcmp(&now.rep, &s->rep, sizeof now.rep) ? "memory report"
                      : memcmp(now.host, s->host, s->host_bytes) ? "host tables"
                      : memcmp(now.dev, s->dev, s->dev_bytes)    ? "cache bytes"
                                                                  : NULL;
    snprintf(why, why_len, "%s", bad ? bad : "");
    free(now.host);
    free(now.dev);
    return bad == NULL;
}
static void snap_free(eng_snap *s) {
    free(s->host);
    free(s->dev);
}

/* Pool accounting against a model built from hisa_seq_pages: pages_used = distinct pages held by
 * open sequences, pages_shared = those held by more than one, tokens = the sum of lengths. */
static void eng_check_pool(hisa_test_ctx *ctx, const hisa_runtime *rt, const char *what) {
    const int32_t P = (int32_t)rt->g.n_pages;
    int32_t *holders = calloc((size_t)P, sizeof(int32_t)), *pages = malloc(sizeof(int32_t) * (size_t)rt->g.pages_per_seq);
    int64_t tokens = 0;
    int32_t open = 0, used = 0, shared = 0;
    for (int32_t s = 0; s < rt->g.max_seqs; s++) {
        int32_t np = 0;
        if (hisa_seq_pages(rt, s, pages, (int32_t)rt->g.pages_per_seq, &np) != HISA_OK) continue;
        open++;
        tokens += eng_len(rt, s);
        for (int32_t i = 0; i < np; i++) holders[pages[i]]++;
    }
    for (int32_t p = 0; p < P; p++) {
        used += holders[p] > 0;
        shared += holders[p] > 1;
    }
    hisa_memory_report rep;
    CHECK(hisa_memory_report_get(rt, &rep) == HISA_OK);
    CHECKF(rep.pages_used == used && rep.pages_free == P - used && rep.pages_shared == shared && rep.seqs_open == open &&
               rep.tokens == tokens && rep.pages_total == P,
           "%s: report used %d free %d shared %d open %d tokens %lld; model used %d free %d shared %d open %d tokens %lld",
           what, rep.pages_used, rep.pages_free, rep.pages_shared, rep.seqs_open, (long long)rep.tokens, used, P - used,
           shared, open, (long long)tokens);
    free(holders);
    free(pages);
}

/* Decode of one sequence, queries qs rows 0..rows-1 one by one (f32, positions), into out [rows, k]. */
static int eng_decode_rows(hisa_runtime *rt, int32_t seq, const eng_qset *qs, hisa_mode mode, uint32_t flags, int32_t *out) {
    int err = 0;
    for (int32_t r = 0; r < qs->rows && !err; r++)
        err = eng_decode(rt, &seq, 1, 1, mode, qset_q(qs, HISA_Q_F32, r), HISA_Q_F32, qset_w(qs, HISA_Q_F32, r), flags,
                         out + (int64_t)r * rt->g.topk);
    return err;
}

/* --- query formats and bf16 key writes (CPU) -------------------------------------------------- */

/* Decode, both key formats, both modes, lengths under k, flat (nb <= m) and HISA: bf16 queries
 * select exactly what f32 queries of the same values select (f32 is rounded to bf16 first, so
 * the pre-rounded floats too); fp8 queries agree with the brute force on the codes' values with
 * the scale folded into w. */
HISA_TEST(engine_q_formats_decode_cpu) {
    const int32_t H = 8, B = 32, m = 8, k = 64, n_seqs = 3;
    const int32_t lens[3] = {50, 200, 1000};
    for (int32_t kf = HISA_KEY_FP8; kf <= HISA_KEY_BF16; kf++) {
        hisa_runtime *rt = eng_open(hisa_tconfig(H, B, m, k, kf, 2048, 4));
        REQUIRE(rt);
        int32_t seqs[3];
        for (int i = 0; i < n_seqs; i++) REQUIRE(eng_seq(rt, lens[i], 40 + (uint64_t)i, &seqs[i]) == HISA_OK);
        int64_t near[3] = {lens[0] / 2, -1, lens[2] / 3};
        eng_qset qs;
        qset_make(&qs, H, n_seqs, 90 + (uint64_t)kf, near);
        float *rounded = malloc(sizeof(float) * (size_t)n_seqs * H * HISA_D);
        for (int64_t i = 0; i < (int64_t)n_seqs * H * HISA_D; i++) rounded[i] = hisa__bf16_to_f32(qs.b[i]);
        int32_t *o32 = malloc(sizeof(int32_t) * 3 * (size_t)k), *obf = malloc(sizeof(int32_t) * 3 * (size_t)k);
        int32_t *ornd = malloc(sizeof(int32_t) * 3 * (size_t)k), *o8 = malloc(sizeof(int32_t) * 3 * (size_t)k);
        for (int mode = 0; mode < 2; mode++) {
            hisa_mode md = (hisa_mode)mode;
            CHECK_EQ_INT(eng_decode(rt, seqs, n_seqs, 1, md, qs.f, HISA_Q_F32, qs.w, 0, o32), HISA_OK);
            CHECK_EQ_INT(eng_decode(rt, seqs, n_seqs, 1, md, rounded, HISA_Q_F32, qs.w, 0, ornd), HISA_OK);
            CHECK_EQ_INT(eng_decode(rt, seqs, n_seqs, 1, md, qs.b, HISA_Q_BF16, qs.w, 0, obf), HISA_OK);
            CHECK_EQ_INT(eng_decode(rt, seqs, n_seqs, 1, md, qs.c, HISA_Q_FP8, qs.w8, 0, o8), HISA_OK);
            CHECKF(memcmp(o32, obf, sizeof(int32_t) * 3 * (size_t)k) == 0, "key fmt %d mode %d: bf16 queries differ from f32", kf, mode);
            CHECKF(memcmp(o32, ornd, sizeof(int32_t) * 3 * (size_t)k) == 0, "key fmt %d mode %d: f32 not rounded to bf16", kf, mode);
            CHECK(count_poison(o8, 3 * (int64_t)k) == 0 && count_poison(o32, 3 * (int64_t)k) == 0);
            for (int i = 0; i < n_seqs; i++) {
                char what[96];
                snprintf(what, sizeof what, "decode key fmt %d n %d fp8 queries", kf, lens[i]);
                eng_check_brute(ctx, rt, seqs[i], lens[i] - 1, qs.v8 + (int64_t)i * H * HISA_D, qs.w8 + (int64_t)i * H, mode,
                                o8 + (int64_t)i * k, what);
                snprintf(what, sizeof what, "decode key fmt %d n %d f32 queries", kf, lens[i]);
                eng_check_brute(ctx, rt, seqs[i], lens[i] - 1, qs.f + (int64_t)i * H * HISA_D, qs.w + (int64_t)i * H, mode,
                                o32 + (int64_t)i * k, what);
            }
        }
        free(rounded);
        free(o32);
        free(obf);
        free(ornd);
        free(o8);
        qset_free(&qs);
        hisa_close(rt);
    }
}

/* Prefill chunks (one crossing t = k, one past m * B) in every query format, both key formats:
 * bf16 rows equal the f32 rows exactly, fp8 rows (and f32 rows) agree with the brute force at
 * their own t. */
HISA_TEST(engine_q_formats_prefill_cpu) {
    const int32_t H = 8, B = 32, m = 8, k = 64, n = 1000;
    const int32_t t0s[2] = {20, 900}, n_qs[2] = {70, 100};
    for (int32_t kf = HISA_KEY_FP8; kf <= HISA_KEY_BF16; kf++) {
        hisa_runtime *rt = eng_open(hisa_tconfig(H, B, m, k, kf, 2048, 4));
        REQUIRE(rt);
        int32_t seq;
        REQUIRE(eng_seq(rt, n, 60 + (uint64_t)kf, &seq) == HISA_OK);
        for (int c = 0; c < 2; c++) {
            int32_t t0 = t0s[c], n_q = n_qs[c];
            int64_t near[100];
            for (int32_t i = 0; i < n_q; i++) near[i] = i % 5 == 4 ? -1 : ((t0 + i) * 7919ll) % (t0 + i + 1);
            eng_qset qs;
            qset_make(&qs, H, n_q, 70 + (uint64_t)(kf * 2 + c), near);
            int32_t *o[3];
            for (int32_t qf = 0; qf < 3; qf++) {
                o[qf] = malloc(sizeof(int32_t) * (size_t)n_q * k);
                CHECKF(eng_prefill1(rt, seq, t0, n_q, HISA_MODE_HISA, qset_q(&qs, qf, 0), qf, qset_w(&qs, qf, 0), 0, o[qf]) == HISA_OK,
                       "prefill %s", qf_name(qf));
                CHECK(count_poison(o[qf], (int64_t)n_q * k) == 0);
            }
            CHECKF(memcmp(o[HISA_Q_F32], o[HISA_Q_BF16], sizeof(int32_t) * (size_t)n_q * k) == 0,
                   "key fmt %d chunk %d: bf16 rows differ from f32 rows", kf, c);
            for (int32_t i = 0; i < n_q; i = i == n_q - 1 ? n_q : (i + 11 < n_q ? i + 11 : n_q - 1)) { /* every 11th, the last */
                char what[96];
                snprintf(what, sizeof what, "prefill key fmt %d row %d fp8", kf, i);
                eng_check_brute(ctx, rt, seq, t0 + i, qs.v8 + (int64_t)i * H * HISA_D, qs.w8 + (int64_t)i * H, 0,
                                o[HISA_Q_FP8] + (int64_t)i * k, what);
                snprintf(what, sizeof what, "prefill key fmt %d row %d f32", kf, i);
                eng_check_brute(ctx, rt, seq, t0 + i, qs.f + (int64_t)i * H * HISA_D, qs.w + (int64_t)i * H, 0,
                                o[HISA_Q_F32] + (int64_t)i * k, what);
            }
            for (int32_t qf = 0; qf < 3; qf++) free(o[qf]);
            qset_free(&qs);
        }
        hisa_close(rt);
    }
}

/* bf16-exact keys written as fp32 (keys) and as bf16 bits (keys_bf16) store the same bytes, bit
 * for bit: range writes, single-token appends, a batch of two, replacements; zero and tiny and
 * large keys among them. bf16 runtimes store exactly the given bits. */
static void bf16_keys(int32_t n, uint64_t seed, float *kf, uint16_t *kb) {
    hisa_tgen_keys(seed, 0, n, kf);
    for (int d = 0; d < HISA_D; d++) {
        kf[5 * HISA_D + d] *= 1000.0f; /* large */
        kf[6 * HISA_D + d] = 0.0f;     /* all zero: fp8 scale 1 */
        kf[7 * HISA_D + d] *= 1e-30f;  /* tiny */
    }
    kf[8 * HISA_D + 3] = -0.0f;
    for (int64_t i = 0; i < (int64_t)n * HISA_D; i++) {
        kb[i] = hisa__bf16_from_f32(kf[i]);
        kf[i] = hisa__bf16_to_f32(kb[i]);
    }
}

HISA_TEST(engine_keys_bf16_writes_equal_fp32_writes) {
    const int32_t H = 8, B = 32, m = 4, k = 64, n = 100;
    float *kf = malloc(sizeof(float) * (size_t)(n + 2) * HISA_D);
    uint16_t *kb = malloc(sizeof(uint16_t) * (size_t)(n + 2) * HISA_D);
    bf16_keys(n + 2, 123, kf, kb);
    for (int32_t fmt = HISA_KEY_FP8; fmt <= HISA_KEY_BF16; fmt++) {
        hisa_runtime *rt = eng_open(hisa_tconfig(H, B, m, k, fmt, 2048, 4));
        REQUIRE(rt);
        int32_t a, b;
        REQUIRE(hisa_seq_open(rt, &a) == 0 && hisa_seq_open(rt, &b) == 0);
        REQUIRE(hisa_seq_extend(rt, a, n) == 0 && hisa_seq_extend(rt, b, n) == 0);
        hisa_write wa = {.n_tokens = 60, .keys = kf}, wb = {.n_tokens = 60, .keys_bf16 = kb};
        CHECK(hisa_write_range(rt, a, 0, &wa) == HISA_OK && hisa_write_range(rt, b, 0, &wb) == HISA_OK);
        for (int32_t p = 60; p < n; p++) {
            hisa_write sa = {.n_tokens = 1, .seq_ids = &a, .positions = &p, .keys = kf + (int64_t)p * HISA_D};
            hisa_write sb = {.n_tokens = 1, .seq_ids = &b, .positions = &p, .keys_bf16 = kb + (int64_t)p * HISA_D};
            CHECK(hisa_write_keys(rt, &sa) == HISA_OK && hisa_write_keys(rt, &sb) == HISA_OK);
        }
        int32_t p10 = 10; /* a replacement: the block's sum is recomputed */
        hisa_write ra = {.n_tokens = 1, .seq_ids = &a, .positions = &p10, .keys = kf + (int64_t)(n + 1) * HISA_D};
        hisa_write rb = {.n_tokens = 1, .seq_ids = &b, .positions = &p10, .keys_bf16 = kb + (int64_t)(n + 1) * HISA_D};
        CHECK(hisa_write_keys(rt, &ra) == HISA_OK && hisa_write_keys(rt, &rb) == HISA_OK);
        eng_same_tokens(ctx, rt, a, b, n, 1, fmt == HISA_KEY_FP8 ? "fp8 runtime" : "bf16 runtime");
        /* a batch of both sequences (append at len - 1): same row twice through keys_bf16 */
        REQUIRE(hisa_seq_extend(rt, a, 1) == 0 && hisa_seq_extend(rt, b, 1) == 0);
        uint16_t two[2 * HISA_D];
        memcpy(two, kb + (int64_t)n * HISA_D, sizeof(uint16_t) * HISA_D);
        memcpy(two + HISA_D, kb + (int64_t)n * HISA_D, sizeof(uint16_t) * HISA_D);
        int32_t ab[2] = {a, b};
        CHECK(hisa_write_keys(rt, &(hisa_write){.n_tokens = 2, .seq_ids = ab, .keys_bf16 = two}) == HISA_OK);
        eng_same_tokens(ctx, rt, a, b, n + 1, 1, "batch append");
        if (fmt == HISA_KEY_BF16) { /* the given bits, stored as they are */
            const int32_t *pb = hisa__kv_pages(&rt->kv, b);
            int bad = 0;
            for (int32_t s = 0; s <= n; s++) {
                const uint16_t *want = kb + (int64_t)(s == 10 ? n + 1 : s) * HISA_D;
                bad += memcmp(hisa__page(rt, 0, pb[s / B]) + hisa__bf16_offset(s % B), want, 2 * HISA_D) != 0;
            }
            CHECKF(bad == 0, "%d bf16 tokens not stored as given", bad);
        }
        eng_qset qs;
        qset_make(&qs, H, 2, 7, (int64_t[]){40, -1});
        int32_t oa[2 * 64], ob[2 * 64];
        CHECK(eng_decode_rows(rt, a, &qs, HISA_MODE_HISA, 0, oa) == 0 && eng_decode_rows(rt, b, &qs, HISA_MODE_HISA, 0, ob) == 0);
        CHECK(memcmp(oa, ob, sizeof oa) == 0 && count_poison(oa, 2 * k) == 0);
        qset_free(&qs);
        hisa_close(rt);
    }
    free(kf);
    free(kb);
}

/* --- multi-token decode (CPU) ------------------------------------------------------------------ */

/* One next_n decode over {X, Z}; every row r = i * next_n + j must equal the single query at its
 * t = len - next_n + j: the one-query prefill at t on the same sequence, and (for X) a next_n = 1
 * decode of Y, X's twin truncated to t + 1 (then grown back from seed). */
static void next_n_case(hisa_test_ctx *ctx, hisa_runtime *rt, const int32_t seqs[2], int32_t Y, uint64_t x_seed,
                        int32_t next_n, int32_t qf, uint64_t qseed) {
    const int32_t H = (int32_t)rt->g.n_heads, k = (int32_t)rt->g.topk, rows = 2 * next_n;
    const hisa_mode mode = next_n == 3 ? HISA_MODE_FLAT : HISA_MODE_HISA;
    const int32_t lens[2] = {eng_len(rt, seqs[0]), eng_len(rt, seqs[1])};
    int64_t near[2 * HISA_NEXT_N_MAX];
    for (int32_t r = 0; r < rows; r++) near[r] = r % 3 == 2 ? -1 : (lens[r / next_n] - next_n + r % next_n) / 2;
    eng_qset qs;
    qset_make(&qs, H, rows, qseed, near);
    int32_t *out = malloc(sizeof(int32_t) * (size_t)rows * k), *ref = malloc(sizeof(int32_t) * (size_t)k);
    int err = eng_decode(rt, seqs, 2, next_n, mode, qset_q(&qs, qf, 0), qf, qset_w(&qs, qf, 0), 0, out);
    CHECKF(err == HISA_OK, "next_n %d lens %d/%d: %s", next_n, lens[0], lens[1], hisa_strerror(err));
    for (int32_t r = 0; r < rows && !err; r++) {
        int32_t i = r / next_n, t = lens[i] - next_n + r % next_n;
        const int32_t *row = out + (int64_t)r * k;
        CHECK(eng_prefill1(rt, seqs[i], t, 1, mode, qset_q(&qs, qf, r), qf, qset_w(&qs, qf, r), 0, ref) == HISA_OK);
        CHECKF(memcmp(row, ref, sizeof(int32_t) * (size_t)k) == 0 && count_poison(row, k) == 0,
               "next_n %d %s len %d row %d (t %d): differs from the query alone at t", next_n, qf_name(qf), lens[i], r, t);
        if (i) continue;
        CHECK(hisa_seq_truncate(rt, Y, t + 1) == HISA_OK);
        CHECK(eng_decode(rt, &Y, 1, 1, mode, qset_q(&qs, qf, r), qf, qset_w(&qs, qf, r), 0, ref) == HISA_OK);
        CHECKF(memcmp(row, ref, sizeof(int32_t) * (size_t)k) == 0,
               "next_n %d %s len %d row %d: differs from a decode at length %d", next_n, qf_name(qf), lens[0], r, t + 1);
        CHECK(eng_grow(rt, Y, lens[0] - (t + 1), x_seed) == HISA_OK);
    }
    if (next_n == 1 && !err) { /* 0 means 1 */
        int32_t *zero = malloc(sizeof(int32_t) * 2 * (size_t)k);
        CHECK(eng_decode(rt, seqs, 2, 0, mode, qset_q(&qs, qf, 0), qf, qset_w(&qs, qf, 0), 0, zero) == HISA_OK);
        CHECKF(memcmp(zero, out, sizeof(int32_t) * 2 * (size_t)k) == 0, "next_n 0 differs from next_n 1");
        free(zero);
    }
    free(out);
    free(ref);
    qset_free(&qs);
}

/* next_n 1..4 at lengths around B, k, m * B and (m + 1) * B, both key formats, the query format
 * rotating (row offsets of every format), HISA and flat. */
HISA_TEST(engine_next_n_rows_equal_single_queries) {
    const int32_t H = 8, B = 32, m = 8, k = 64, mb = m * B;
    const int32_t lens[] = {1,      2,      3,  4,      5,      B - 1,      B,      B + 1,      k - 2,  k - 1, k,
                            k + 1,  k + 2,  mb - 2, mb - 1, mb, mb + 1, mb + 2, mb + B - 1, mb + B, mb + B + 1, 700};
    const int32_t n_lens = (int32_t)(sizeof lens / sizeof lens[0]);
    for (int32_t kf = HISA_KEY_FP8; kf <= HISA_KEY_BF16; kf++) {
        hisa_runtime *rt = eng_open(hisa_tconfig(H, B, m, k, kf, 2048, 4));
        REQUIRE(rt);
        const uint64_t x_seed = 5 + (uint64_t)kf, z_seed = 6 + (uint64_t)kf;
        int32_t seqs[2], Y;
        REQUIRE(hisa_seq_open(rt, &seqs[0]) == 0 && hisa_seq_open(rt, &seqs[1]) == 0 && hisa_seq_open(rt, &Y) == 0);
        int before = ctx->failures;
        for (int32_t li = 0; li < n_lens && ctx->failures == before; li++) {
            int32_t L = lens[li];
            REQUIRE(eng_grow(rt, seqs[0], L - eng_len(rt, seqs[0]), x_seed) == HISA_OK);
            REQUIRE(eng_grow(rt, Y, L - eng_len(rt, Y), x_seed) == HISA_OK);
            REQUIRE(eng_grow(rt, seqs[1], L + 5 - eng_len(rt, seqs[1]), z_seed) == HISA_OK);
            for (int32_t next_n = 1; next_n <= HISA_NEXT_N_MAX && next_n <= L; next_n++)
                next_n_case(ctx, rt, seqs, Y, x_seed, next_n, (li + next_n) % 3, (uint64_t)(L * 8 + next_n));
        }
        eng_same_tokens(ctx, rt, seqs[0], Y, eng_len(rt, Y), 1, "X and its truncated-and-regrown twin");
        hisa_close(rt);
    }
}

/* --- batched prefill (CPU) ------------------------------------------------------------------- */

/* Chunks of 3 sequences in one call (two chunks of A and three of C, two of them touching) equal
 * the chunks called one by one, row for row in the call's order: every query format, positions
 * and slots, both modes, both key formats. */
HISA_TEST(engine_batched_prefill_equals_single_chunks) {
    const int32_t H = 8, B = 32, m = 8, k = 64, n_chunks = 6;
    const int32_t lens[3] = {90, 400, 1000}, which[6] = {0, 2, 1, 0, 2, 2};
    const int32_t t0s[6] = {0, 900, 250, 50, 100, 106}, n_qs[6] = {6, 12, 10, 8, 6, 4};
    int32_t total = 0;
    for (int32_t c = 0; c < n_chunks; c++) total += n_qs[c];
    for (int32_t kf = HISA_KEY_FP8; kf <= HISA_KEY_BF16; kf++) {
        hisa_runtime *rt = eng_open(hisa_tconfig(H, B, m, k, kf, 2048, 4));
        REQUIRE(rt);
        int32_t s[3], seqs[6];
        for (int i = 0; i < 3; i++) REQUIRE(eng_seq(rt, lens[i], 80 + (uint64_t)(i + 3 * kf), &s[i]) == HISA_OK);
        for (int32_t c = 0; c < n_chunks; c++) seqs[c] = s[which[c]];
        int64_t near[64];
        for (int32_t c = 0, r = 0; c < n_chunks; c++)
            for (int32_t i = 0; i < n_qs[c]; i++, r++) near[r] = r % 4 == 3 ? -1 : (t0s[c] + i) / 3;
        int32_t *batch = malloc(sizeof(int32_t) * (size_t)total * k), *single = malloc(sizeof(int32_t) * (size_t)total * k);
        for (int32_t v = 0; v < 6; v++) {
            const int32_t qf = v % 3;
            const uint32_t flags = v < 3 ? 0 : HISA_SLOTS;
            const hisa_mode mode = qf == HISA_Q_BF16 ? HISA_MODE_FLAT : HISA_MODE_HISA;
            eng_qset qs;
            qset_make(&qs, H, total, 30 + (uint64_t)v, near);
            poison(batch, (int64_t)total * k);
            hisa_prefill p = {.mode = mode, .q = qset_q(&qs, qf, 0), .w = qset_w(&qs, qf, 0), .out = batch, .flags = flags,
                              .q_format = qf, .n_chunks = n_chunks, .seqs = seqs, .t0s = t0s, .n_qs = n_qs};
            CHECK_EQ_INT(hisa_select_prefill(rt, &p), HISA_OK);
            for (int32_t c = 0, row = 0; c < n_chunks; row += n_qs[c++])
                CHECK(eng_prefill1(rt, seqs[c], t0s[c], n_qs[c], mode, qset_q(&qs, qf, row), qf, qset_w(&qs, qf, row), flags,
                                   single + (int64_t)row * k) == HISA_OK);
            CHECKF(count_poison(batch, (int64_t)total * k) == 0, "key fmt %d %s flags %u: batch left entries unwritten", kf,
                   qf_name(qf), flags);
            for (int32_t c = 0, row = 0; c < n_chunks; row += n_qs[c++])
                CHECKF(memcmp(batch + (int64_t)row * k, single + (int64_t)row * k, sizeof(int32_t) * (size_t)n_qs[c] * k) == 0,
                       "key fmt %d %s flags %u: chunk %d (seq %d, t0 %d) differs from its single call", kf, qf_name(qf), flags, c,
                       seqs[c], t0s[c]);
            qset_free(&qs);
        }
        free(batch);
        free(single);
        hisa_close(rt);
    }
}

/* --- shared prefixes (CPU) ------------------------------------------------------------------- */

/* Selections of seq and of its unshared twin R under the same queries (decode rows one by one in
 * both modes, with slots for a; a prefill chunk), exactly equal as positions. */
static void eng_same_selections(hisa_test_ctx *ctx, hisa_runtime *rt, int32_t a, int32_t r, uint64_t qseed, const char *what) {
    const int32_t H = (int32_t)rt->g.n_heads, k = (int32_t)rt->g.topk, len = eng_len(rt, a);
    REQUIRE(len == eng_len(rt, r) && len >= 1);
    eng_qset qs;
    qset_make(&qs, H, 4, qseed, (int64_t[]){len / 2, -1, len - 1, len / 5});
    int32_t *oa = malloc(sizeof(int32_t) * 16 * (size_t)k), *orr = malloc(sizeof(int32_t) * 16 * (size_t)k);
    for (int mode = 0; mode < 2; mode++) {
        CHECK(eng_decode_rows(rt, a, &qs, (hisa_mode)mode, 0, oa) == HISA_OK);
        CHECK(eng_decode_rows(rt, r, &qs, (hisa_mode)mode, 0, orr) == HISA_OK);
        CHECKF(memcmp(oa, orr, sizeof(int32_t) * 4 * (size_t)k) == 0 && count_poison(oa, 4 * (int64_t)k) == 0,
               "%s: decode (mode %d, len %d) differs from the unshared twin", what, mode, len);
    }
    int32_t n_q = len < 16 ? len : 16, t0 = len - n_q;
    eng_qset pq;
    qset_make(&pq, H, n_q, qseed + 1, NULL);
    CHECK(eng_prefill1(rt, a, t0, n_q, HISA_MODE_HISA, pq.f, HISA_Q_F32, pq.w, 0, oa) == HISA_OK);
    CHECK(eng_prefill1(rt, r, t0, n_q, HISA_MODE_HISA, pq.f, HISA_Q_F32, pq.w, 0, orr) == HISA_OK);
    CHECKF(memcmp(oa, orr, sizeof(int32_t) * (size_t)n_q * k) == 0, "%s: prefill differs from the unshared twin", what);
    eng_same_tokens(ctx, rt, a, r, len, 1, what);
    free(oa);
    free(orr);
    qset_free(&qs);
    qset_free(&pq);
}

/* Fork P at len, check the pool, grow the child and compare it with its unshared twin; P's own
 * selections (p_out, taken before) must not move. */
static void fork_case(hisa_test_ctx *ctx, hisa_runtime *rt, int32_t P, uint64_t p_seed, int32_t len, const eng_qset *pq,
                      const int32_t *p_out) {
    const int32_t B = (int32_t)rt->g.block_size, k = (int32_t)rt->g.topk;
    hisa_memory_report r0, r1;
    CHECK(hisa_memory_report_get(rt, &r0) == HISA_OK);
    int32_t C = -1, R = -1;
    int err = hisa_seq_fork(rt, P, len, &C);
    CHECKF(err == HISA_OK, "fork at %d: %s", len, hisa_strerror(err));
    if (err) return;
    CHECK(eng_len(rt, C) == len && C != P);
    CHECK(hisa_memory_report_get(rt, &r1) == HISA_OK);
    CHECKF(r1.pages_used == r0.pages_used + (len % B != 0) && r1.pages_shared == len / B && r1.seqs_open == r0.seqs_open + 1 &&
               r1.tokens == r0.tokens + len,
           "fork at %d: used %d -> %d, shared %d, open %d", len, r0.pages_used, r1.pages_used, r1.pages_shared, r1.seqs_open);
    eng_check_pool(ctx, rt, "after fork");
    const uint64_t c_seed = 500 + (uint64_t)len;
    const eng_seg segs[1] = {{len, p_seed}};
    CHECK(eng_seq_segs(rt, segs, 1, &R) == HISA_OK);
    char what[64];
    snprintf(what, sizeof what, "child just forked at %d", len);
    if (len > 0) eng_same_selections(ctx, rt, C, R, 800 + (uint64_t)len, what);
    CHECK(eng_grow(rt, C, 150, c_seed) == HISA_OK && eng_grow(rt, R, 150, c_seed) == HISA_OK);
    eng_check_pool(ctx, rt, "after growing the child");
    snprintf(what, sizeof what, "child forked at %d, grown", len);
    eng_same_selections(ctx, rt, C, R, 900 + (uint64_t)len, what);
    int32_t *now = malloc(sizeof(int32_t) * (size_t)pq->rows * k);
    CHECK(eng_decode_rows(rt, P, pq, HISA_MODE_HISA, 0, now) == HISA_OK);
    CHECKF(memcmp(now, p_out, sizeof(int32_t) * (size_t)pq->rows * k) == 0, "fork at %d: the parent's selection moved", len);
    free(now);
    CHECK(hisa_seq_close(rt, C) == HISA_OK && hisa_seq_close(rt, R) == HISA_OK);
    CHECK(hisa_memory_report_get(rt, &r1) == HISA_OK);
    CHECKF(r1.pages_used == r0.pages_used && r1.pages_shared == 0, "fork at %d: after closing, used %d (was %d), shared %d",
           len, r1.pages_used, r0.pages_used, r1.pages_shared);
}

/* Forks at 0, 1, B-1, B, B+1, a middle length and the parent's whole length: each child (and
 * the parent) selects exactly what a sequence with its keys in pages of its own selects. */
HISA_TEST(engine_fork_selects_like_unshared_sequence) {
    const int32_t H = 8, B = 32, m = 8, k = 64, n = 700;
    const int32_t lens[] = {0, 1, B - 1, B, B + 1, 400, n};
    for (int32_t kf = HISA_KEY_FP8; kf <= HISA_KEY_BF16; kf++) {
        hisa_runtime *rt = eng_open(hisa_tconfig(H, B, m, k, kf, 2048, 4));
        REQUIRE(rt);
        const uint64_t p_seed = 300 + (uint64_t)kf;
        int32_t P;
        REQUIRE(eng_seq(rt, n, p_seed, &P) == HISA_OK);
        eng_qset pq;
        qset_make(&pq, H, 3, 17, (int64_t[]){100, -1, 650});
        int32_t *p_out = malloc(sizeof(int32_t) * 3 * (size_t)k);
        CHECK(eng_decode_rows(rt, P, &pq, HISA_MODE_HISA, 0, p_out) == HISA_OK);
        for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) fork_case(ctx, rt, P, p_seed, lens[i], &pq, p_out);
        CHECK(hisa_seq_close(rt, P) == HISA_OK);
        hisa_memory_report rep;
        CHECK(hisa_memory_report_get(rt, &rep) == HISA_OK);
        CHECKF(rep.pages_used == 0 && rep.pages_free == rep.pages_total && rep.pages_shared == 0 && rep.seqs_open == 0,
               "after closing everything: used %d free %d/%d shared %d open %d", rep.pages_used, rep.pages_free, rep.pages_total,
               rep.pages_shared, rep.seqs_open);
        free(p_out);
        qset_free(&pq);
        hisa_close(rt);
    }
}

/* Writes into shared pages are refused with HISA_ESHARED, through every write form and key
 * source, alone or in a batch with a legal write, and change nothing (tables, cache bytes,
 * report, selections); the writes next to them (own pages, the copied partial page) work and
 * leave the other sequences alone. */
static void shared_writes_refused(hisa_test_ctx *ctx, hisa_runtime *rt, int32_t P, int32_t C, int32_t C2) {
    static float keys[32 * HISA_D];
    static uint16_t kb[32 * HISA_D];
    static uint8_t codes[32 * HISA_D];
    static float scales[32];
    hisa_tgen_keys(4242, 0, 32, keys);
    for (int i = 0; i < 32 * HISA_D; i++) kb[i] = hisa__bf16_from_f32(keys[i]);
    for (int i = 0; i < 32; i++) hisa__quantize_fp8(keys + i * HISA_D, codes + i * HISA_D, &scales[i]);
    const int fp8 = rt->g.key_format == HISA_KEY_FP8;
    int32_t p5 = 5, p100 = 100, p10 = 10, c_seq[1] = {C}, p_seq[1] = {P}, mix_seq[2] = {C2, P}, mix_pos[2] = {165, 10};
    struct {
        const char *what;
        int got;
    } cases[] = {
        {"child, position 5", hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = c_seq, .positions = &p5, .keys = keys})},
        {"child, its last position", hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = c_seq, .keys = keys})},
        {"child, bf16 keys", hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = c_seq, .positions = &p100, .keys_bf16 = kb})},
        {"parent, position 100", hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = p_seq, .positions = &p100, .keys = keys})},
        {"batch: legal + shared", hisa_write_keys(rt, &(hisa_write){.n_tokens = 2, .seq_ids = mix_seq, .positions = mix_pos, .keys = keys})},
        {"child range 150..159", hisa_write_range(rt, C, 150, &(hisa_write){.n_tokens = 10, .keys = keys})},
        {"parent range 150..169 (shared + own)", hisa_write_range(rt, P, 150, &(hisa_write){.n_tokens = 20, .keys_bf16 = kb})},
        {"second child range from 0", hisa_write_range(rt, C2, 0, &(hisa_write){.n_tokens = 1, .keys = keys})},
        {"second child, fp8 codes", fp8 ? hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = &C2, .positions = &p10, .codes = codes, .scales = scales})
                                        : HISA_ESHARED},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECKF(cases[i].got == HISA_ESHARED, "%s: got %d (%s), want HISA_ESHARED", cases[i].what, cases[i].got,
               hisa_strerror(cases[i].got));
}

HISA_TEST(engine_fork_shared_writes_refused_and_change_nothing) {
    const int32_t H = 8, B = 32, m = 4, k = 64;
    for (int32_t kf = HISA_KEY_FP8; kf <= HISA_KEY_BF16; kf++) {
        hisa_runtime *rt = eng_open(hisa_tconfig(H, B, m, k, kf, 1024, 4));
        REQUIRE(rt);
        int32_t P, C, C2;
        REQUIRE(eng_seq(rt, 200, 33, &P) == HISA_OK);
        REQUIRE(hisa_seq_fork(rt, P, 160, &C) == HISA_OK && hisa_seq_fork(rt, P, 170, &C2) == HISA_OK);
        eng_qset qs;
        qset_make(&qs, H, 2, 3, (int64_t[]){60, -1});
        int32_t before[3][2 * 64], after[2 * 64], seqs[3] = {P, C, C2};
        for (int i = 0; i < 3; i++) CHECK(eng_decode_rows(rt, seqs[i], &qs, HISA_MODE_HISA, 0, before[i]) == HISA_OK);
        eng_snap snap;
        snap_take(rt, &snap);
        shared_writes_refused(ctx, rt, P, C, C2);
        char why[64];
        CHECKF(snap_same(rt, &snap, why, sizeof why), "refused writes changed the %s", why);
        for (int i = 0; i < 3; i++) {
            CHECK(eng_decode_rows(rt, seqs[i], &qs, HISA_MODE_HISA, 0, after) == HISA_OK);
            CHECKF(memcmp(before[i], after, sizeof after) == 0, "sequence %d's selection moved", i);
        }
        CHECK(eng_len(rt, P) == 200 && eng_len(rt, C) == 160 && eng_len(rt, C2) == 170);
        snap_free(&snap);
        /* legal neighbours: C2's copied page, P's own last page, C's new page */
        float key[HISA_D];
        hisa_tgen_keys(777, 0, 1, key);
        int32_t p165 = 165;
        CHECK(hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = &C2, .positions = &p165, .keys = key}) == HISA_OK);
        CHECK(eng_decode_rows(rt, P, &qs, HISA_MODE_HISA, 0, after) == HISA_OK);
        CHECKF(memcmp(before[0], after, sizeof after) == 0, "a write into the child's copied page moved the parent");
        eng_snap s2;
        snap_take(rt, &s2);
        CHECK(hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = &P, .positions = &p165, .keys = key}) == HISA_OK);
        CHECK(snap_same(rt, &s2, why, sizeof why) == 0); /* P's write happened */
        int32_t R; /* C2's twin: P's keys, its own key at 165 */
        CHECK(eng_seq(rt, 170, 33, &R) == HISA_OK);
        CHECK(hisa_write_range(rt, R, 165, &(hisa_write){.n_tokens = 1, .keys = key}) == HISA_OK);
        eng_same_selections(ctx, rt, C2, R, 71, "second child after its own write");
        CHECK(eng_grow(rt, C, 10, 34) == HISA_OK); /* C's position 160 is in a page of its own */
        eng_check_pool(ctx, rt, "after the legal writes");
        snap_free(&s2);
        qset_free(&qs);
        hisa_close(rt);
    }
}

/* Each open child against its unshared twin (segments), the twin closed again. */
static void chain_check(hisa_test_ctx *ctx, hisa_runtime *rt, int32_t seq, const eng_seg *segs, int32_t n_segs, const char *what) {
    int32_t R = -1;
    int err = eng_seq_segs(rt, segs, n_segs, &R);
    CHECKF(err == HISA_OK, "%s: twin: %s", what, hisa_strerror(err));
    if (!err) eng_same_selections(ctx, rt, seq, R, 40 + (uint64_t)n_segs, what);
    if (R >= 0) CHECK(hisa_seq_close(rt, R) == HISA_OK);
}

/* Forks of forks (a chain P -> C1 -> C2 -> C3, and C4 forked empty), each grown on its own;
 * the pool's accounting exact after every step; the parent closed first, then a middle link:
 * the others still select like their unshared twins; everything closed: every page free. */
HISA_TEST(engine_fork_chains_close_order_and_pool_accounting) {
    const int32_t H = 8, B = 32, m = 4, k = 64;
    hisa_config cfg = hisa_tconfig(H, B, m, k, HISA_KEY_FP8, 1024, 6);
    cfg.n_pages = 60;
    hisa_runtime *rt = eng_open(cfg);
    REQUIRE(rt);
    int32_t P, C1, C2, C3, C4;
    REQUIRE(eng_seq(rt, 300, 5, &P) == HISA_OK); /* 9 full pages + 12 */
    eng_check_pool(ctx, rt, "parent");
    REQUIRE(hisa_seq_fork(rt, P, 250, &C1) == HISA_OK); /* 7 shared + a copy of 26 */
    hisa_memory_report rep;
    CHECK(hisa_memory_report_get(rt, &rep) == HISA_OK);
    CHECKF(rep.pages_used == 11 && rep.pages_shared == 7 && rep.pages_free == 49, "after the first fork: used %d shared %d free %d",
           rep.pages_used, rep.pages_shared, rep.pages_free);
    REQUIRE(eng_grow(rt, C1, 100, 6) == HISA_OK);
    eng_check_pool(ctx, rt, "C1 grown");
    REQUIRE(hisa_seq_fork(rt, C1, 300, &C2) == HISA_OK && eng_grow(rt, C2, 40, 7) == HISA_OK);
    eng_check_pool(ctx, rt, "C2");
    REQUIRE(hisa_seq_fork(rt, C2, 64, &C3) == HISA_OK && eng_grow(rt, C3, 50, 8) == HISA_OK);
    REQUIRE(hisa_seq_fork(rt, C3, 0, &C4) == HISA_OK && eng_grow(rt, C4, 40, 9) == HISA_OK);
    eng_check_pool(ctx, rt, "C3, C4");
    int32_t pc3[8], np = 0, pp[16], npp = 0;
    CHECK(hisa_seq_pages(rt, C3, pc3, 8, &np) == HISA_OK && hisa_seq_pages(rt, P, pp, 16, &npp) == HISA_OK);
    CHECK(np == 4 && pc3[0] == pp[0] && pc3[1] == pp[1] && pc3[2] != pp[2] && rt->kv.page_refs[pp[0]] == 4);
    const eng_seg s1[2] = {{250, 5}, {350, 6}}, s2[3] = {{250, 5}, {300, 6}, {340, 7}}, s3[2] = {{64, 5}, {114, 8}}, s4[1] = {{40, 9}};
    const eng_seg sp[1] = {{300, 5}};
    chain_check(ctx, rt, P, sp, 1, "parent with children");
    chain_check(ctx, rt, C2, s2, 3, "fork of a fork");
    CHECK(hisa_seq_close(rt, P) == HISA_OK);
    eng_check_pool(ctx, rt, "parent closed");
    chain_check(ctx, rt, C1, s1, 2, "C1 after its parent closed");
    chain_check(ctx, rt, C3, s3, 2, "C3 after P closed");
    CHECK(hisa_seq_close(rt, C2) == HISA_OK);
    eng_check_pool(ctx, rt, "middle link closed");
    chain_check(ctx, rt, C1, s1, 2, "C1 after C2 closed");
    chain_check(ctx, rt, C3, s3, 2, "C3 after C2 closed");
    chain_check(ctx, rt, C4, s4, 1, "C4 (forked empty)");
    CHECK(hisa_seq_close(rt, C1) == HISA_OK);
    eng_check_pool(ctx, rt, "C1 closed");
    chain_check(ctx, rt, C3, s3, 2, "C3 last holder of the shared pages");
    CHECK(hisa_seq_close(rt, C3) == HISA_OK && hisa_seq_close(rt, C4) == HISA_OK);
    CHECK(hisa_memory_report_get(rt, &rep) == HISA_OK);
    CHECKF(rep.pages_used == 0 && rep.pages_free == 60 && rep.pages_shared == 0 && rep.seqs_open == 0 && rep.tokens == 0,
           "after closing everything: used %d free %d shared %d open %d", rep.pages_used, rep.pages_free, rep.pages_shared,
           rep.seqs_open);
    int32_t again[2]; /* every page really is free */
    CHECK(eng_seq(rt, 32 * B, 1, &again[0]) == HISA_OK && eng_seq(rt, 28 * B, 2, &again[1]) == HISA_OK);
    hisa_close(rt);
}

/* Truncating a child into a shared page gives it a copy of its own: the prefix pages stay
 * shared, writes there work, and the parent's keys and selections do not move. The parent
 * truncating into a page it shares does the same the other way. */
HISA_TEST(engine_fork_truncate_into_shared_page_copies_it) {
    const int32_t H = 8, B = 32, m = 4, k = 64;
    for (int32_t kf = HISA_KEY_FP8; kf <= HISA_KEY_BF16; kf++) {
        hisa_runtime *rt = eng_open(hisa_tconfig(H, B, m, k, kf, 1024, 4));
        REQUIRE(rt);
        int32_t P, C, pp[16], pc[16], np = 0;
        REQUIRE(eng_seq(rt, 300, 11, &P) == HISA_OK);
        REQUIRE(hisa_seq_fork(rt, P, 256, &C) == HISA_OK); /* pages 0..7 shared */
        eng_qset qs;
        qset_make(&qs, H, 3, 5, (int64_t[]){150, -1, 290});
        int32_t p_before[3 * 64], p_after[3 * 64];
        float *p_keys = malloc(sizeof(float) * 300 * HISA_D), *p_means = malloc(sizeof(float) * 10 * HISA_D);
        float *now_keys = malloc(sizeof(float) * 300 * HISA_D), *now_means = malloc(sizeof(float) * 10 * HISA_D);
        CHECK(eng_decode_rows(rt, P, &qs, HISA_MODE_HISA, 0, p_before) == HISA_OK);
        eng_stored(rt, P, 300, p_keys, p_means);
        CHECK_EQ_INT(hisa_seq_truncate(rt, C, 200), HISA_OK); /* into shared page 6 */
        hisa_memory_report rep;
        CHECK(hisa_memory_report_get(rt, &rep) == HISA_OK);
        CHECKF(rep.pages_used == 11 && rep.pages_shared == 6, "child truncated: used %d shared %d", rep.pages_used, rep.pages_shared);
        CHECK(hisa_seq_pages(rt, P, pp, 16, &np) == HISA_OK && hisa_seq_pages(rt, C, pc, 16, &np) == HISA_OK && np == 7);
        CHECK(memcmp(pp, pc, 6 * sizeof(int32_t)) == 0 && pc[6] != pp[6] && pc[6] != pp[7]);
        float key[HISA_D];
        hisa_tgen_keys(99, 3, 1, key);
        int32_t p205 = 205;
        CHECK_EQ_INT(hisa_write_range(rt, C, 199, &(hisa_write){.n_tokens = 1, .keys = key}), HISA_OK); /* the copy */
        CHECK(eng_grow(rt, C, 60, 12) == HISA_OK);
        CHECK_EQ_INT(hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = &C, .positions = &p205, .keys = key}), HISA_OK);
        CHECK(eng_decode_rows(rt, P, &qs, HISA_MODE_HISA, 0, p_after) == HISA_OK);
        eng_stored(rt, P, 300, now_keys, now_means);
        CHECKF(memcmp(p_before, p_after, sizeof p_after) == 0 && memcmp(p_keys, now_keys, sizeof(float) * 300 * HISA_D) == 0 &&
                   memcmp(p_means, now_means, sizeof(float) * 10 * HISA_D) == 0,
               "key fmt %d: the child's truncate and writes moved the parent", kf);
        int32_t R; /* C's twin */
        const eng_seg segs[2] = {{200, 11}, {260, 12}};
        CHECK(eng_seq_segs(rt, segs, 2, &R) == HISA_OK);
        CHECK(hisa_write_range(rt, R, 199, &(hisa_write){.n_tokens = 1, .keys = key}) == HISA_OK);
        CHECK(hisa_write_range(rt, R, 205, &(hisa_write){.n_tokens = 1, .keys = key}) == HISA_OK);
        eng_same_selections(ctx, rt, C, R, 8, "child truncated into its shared page");
        /* the parent truncates into page 3, which it shares: its own copy; the child stays */
        int32_t c_before[3 * 64], c_after[3 * 64];
        CHECK(eng_decode_rows(rt, C, &qs, HISA_MODE_HISA, 0, c_before) == HISA_OK);
        CHECK_EQ_INT(hisa_seq_truncate(rt, P, 100), HISA_OK);
        CHECK(eng_decode_rows(rt, C, &qs, HISA_MODE_HISA, 0, c_after) == HISA_OK);
        CHECKF(memcmp(c_before, c_after, sizeof c_after) == 0, "the parent's truncate moved the child");
        CHECK(hisa_seq_pages(rt, P, pp, 16, &np) == HISA_OK && np == 4 && pp[3] != pc[3] && pp[2] == pc[2]);
        eng_check_pool(ctx, rt, "parent truncated into a shared page");
        CHECK(hisa_memory_report_get(rt, &rep) == HISA_OK && rep.pages_shared == 3);
        CHECK(hisa_seq_truncate(rt, C, 64) == HISA_OK); /* at a page boundary: no copy */
        eng_check_pool(ctx, rt, "child truncated to a page boundary");
        CHECK(hisa_memory_report_get(rt, &rep) == HISA_OK && rep.pages_shared == 2);
        free(p_keys);
        free(p_means);
        free(now_keys);
        free(now_means);
        qset_free(&qs);
        hisa_close(rt);
    }
}

/* With no free page, truncating into a shared page is refused (HISA_EPOOL) and changes nothing;
 * at a page boundary it needs none; once the other holder is gone it needs none either. */
HISA_TEST(engine_fork_truncate_without_free_page) {
    hisa_config cfg = hisa_tconfig(8, 32, 4, 64, HISA_KEY_FP8, 320, 3);
    cfg.n_pages = 10;
    hisa_runtime *rt = eng_open(cfg);
    REQUIRE(rt);
    int32_t P, C;
    REQUIRE(eng_seq(rt, 320, 3, &P) == HISA_OK); /* every page */
    CHECK_EQ_INT(hisa_seq_fork(rt, P, 320, &C), HISA_OK); /* no partial page: needs none */
    hisa_memory_report rep;
    CHECK(hisa_memory_report_get(rt, &rep) == HISA_OK && rep.pages_free == 0 && rep.pages_shared == 10 && rep.pages_used == 10);
    eng_qset qs;
    qset_make(&qs, 8, 2, 9, (int64_t[]){50, -1});
    int32_t before[2 * 64], after[2 * 64];
    CHECK(eng_decode_rows(rt, C, &qs, HISA_MODE_HISA, 0, before) == HISA_OK);
    eng_snap snap;
    snap_take(rt, &snap);
    CHECK_EQ_INT(hisa_seq_truncate(rt, C, 100), HISA_EPOOL);
    CHECK_EQ_INT(hisa_seq_truncate(rt, P, 319), HISA_EPOOL);
    char why[64];
    CHECKF(snap_same(rt, &snap, why, sizeof why), "a refused truncate changed the %s", why);
    CHECK(eng_decode_rows(rt, C, &qs, HISA_MODE_HISA, 0, after) == HISA_OK && memcmp(before, after, sizeof after) == 0);
    CHECK_EQ_INT(hisa_seq_truncate(rt, C, 96), HISA_OK);
    CHECK(hisa_memory_report_get(rt, &rep) == HISA_OK && rep.pages_shared == 3 && rep.pages_free == 0);
    CHECK_EQ_INT(hisa_seq_truncate(rt, C, 90), HISA_EPOOL); /* page 2 still shared, still no free page */
    CHECK(hisa_seq_close(rt, P) == HISA_OK);
    eng_check_pool(ctx, rt, "parent closed");
    CHECK_EQ_INT(hisa_seq_truncate(rt, C, 90), HISA_OK); /* its own now */
    CHECK(hisa_memory_report_get(rt, &rep) == HISA_OK && rep.pages_used == 3 && rep.pages_shared == 0 && rep.pages_free == 7);
    int32_t R;
    const eng_seg segs[1] = {{90, 3}};
    CHECK(eng_seq_segs(rt, segs, 1, &R) == HISA_OK);
    eng_same_selections(ctx, rt, C, R, 4, "child after the parent closed and a truncate");
    snap_free(&snap);
    qset_free(&qs);
    hisa_close(rt);
}

/* HISA_SLOTS of a child: page * B + offset through the child's page table, which for the shared
 * prefix holds the parent's pages and for the copied page one of the child's own. */
HISA_TEST(engine_fork_slots_point_into_shared_pages) {
    const int32_t H = 8, B = 32, m = 8, k = 64;
    hisa_runtime *rt = eng_open(hisa_tconfig(H, B, m, k, HISA_KEY_BF16, 1024, 4));
    REQUIRE(rt);
    int32_t P, C, pp[16], pc[16], npp = 0, npc = 0;
    REQUIRE(eng_seq(rt, 300, 21, &P) == HISA_OK);
    REQUIRE(hisa_seq_fork(rt, P, 250, &C) == HISA_OK && eng_grow(rt, C, 30, 22) == HISA_OK);
    REQUIRE(hisa_seq_pages(rt, P, pp, 16, &npp) == HISA_OK && hisa_seq_pages(rt, C, pc, 16, &npc) == HISA_OK && npc == 9);
    const int32_t rows = 8, shared_end = (250 / B) * B;
    int64_t near[8] = {20, 100, 240, 245, 230, -1, 270, 60};
    eng_qset qs;
    qset_make(&qs, H, rows, 12, near);
    int32_t pos[8 * 64], slots[8 * 64], n_shared = 0, n_copied = 0, bad = 0;
    for (int flat = 0; flat < 2; flat++) {
        CHECK(eng_decode_rows(rt, C, &qs, (hisa_mode)flat, 0, pos) == HISA_OK);
        CHECK(eng_decode_rows(rt, C, &qs, (hisa_mode)flat, HISA_SLOTS, slots) == HISA_OK);
        CHECK(count_poison(slots, rows * k) == 0);
        for (int32_t i = 0; i < rows * k; i++) {
            int32_t s = pos[i];
            if (s < 0) {
                bad += slots[i] != -1;
                continue;
            }
            bad += slots[i] != pc[s / B] * B + s % B;
            if (s < shared_end) {
                bad += pc[s / B] != pp[s / B];
                n_shared++;
            } else if (s < 256) {
                bad += pc[s / B] == pp[s / B];
                n_copied++;
            }
        }
    }
    CHECKF(bad == 0, "%d slots not page * B + offset through the right pages", bad);
    CHECKF(n_shared > 0 && n_copied > 0, "the test selected %d shared and %d copied positions: it needs both", n_shared, n_copied);
    /* prefill slots too */
    int32_t pre[4 * 64];
    CHECK(eng_prefill1(rt, C, 240, 4, HISA_MODE_HISA, qs.f, HISA_Q_F32, qs.w, HISA_SLOTS, pre) == HISA_OK);
    int32_t pre_pos[4 * 64];
    CHECK(eng_prefill1(rt, C, 240, 4, HISA_MODE_HISA, qs.f, HISA_Q_F32, qs.w, 0, pre_pos) == HISA_OK);
    bad = 0;
    for (int32_t i = 0; i < 4 * k; i++) bad += pre[i] != (pre_pos[i] < 0 ? -1 : pc[pre_pos[i] / B] * B + pre_pos[i] % B);
    CHECKF(bad == 0, "%d prefill slots wrong", bad);
    qset_free(&qs);
    hisa_close(rt);
}

/* --- bad input for every new field ------------------------------------------------------------ */

typedef struct eng_case {
    const char *what;
    int got, want;
} eng_case;

static void eng_cases(hisa_test_ctx *ctx, const eng_case *cases, size_t n) {
    for (size_t i = 0; i < n; i++)
        CHECKF(cases[i].got == cases[i].want, "%s: got %d (%s), want %d (%s)", cases[i].what, cases[i].got,
               hisa_strerror(cases[i].got), cases[i].want, hisa_strerror(cases[i].want));
}

/* Query formats, next_n, chunks, and both-key writes: each refused with its code. */
static void bad_selection_inputs(hisa_test_ctx *ctx, hisa_runtime *rt, int32_t s0, int32_t s1, int32_t s3, int32_t *out) {
    static float q[60 * 4 * 128], w[60 * 4], keys[2 * 128];
    static uint16_t kb[2 * 128];
    static uint8_t codes[2 * 128];
    static float scales[2] = {1.0f, 1.0f};
    for (int i = 0; i < 60 * 4 * 128; i++) q[i] = 0.25f + (float)(i % 7) * 0.125f;
    for (int i = 0; i < 60 * 4; i++) w[i] = 1.0f;
    for (int i = 0; i < 2 * 128; i++) kb[i] = hisa__bf16_from_f32(keys[i] = (float)(i % 5) - 2.0f);
    int32_t one[1] = {s0}, short3[1] = {s3}, both[2] = {s0, s1};
#define DEC(...) hisa_select_decode(rt, &(hisa_decode){.n_seqs = 1, .seq_ids = one, .q = q, .w = w, .out = out, __VA_ARGS__})
#define PRE(...) hisa_select_prefill(rt, &(hisa_prefill){.q = q, .w = w, .out = out, __VA_ARGS__})
#define CHUNKS(n, S, T, N) PRE(.n_chunks = (n), .seqs = (const int32_t[])S, .t0s = (const int32_t[])T, .n_qs = (const int32_t[])N)
#define A(...) {__VA_ARGS__}
    eng_case cases[] = {
        {"decode q_format -1", DEC(.q_format = -1), HISA_EINVAL},
        {"decode q_format 3", DEC(.q_format = 3), HISA_EINVAL},
        {"prefill q_format -1", PRE(.seq = s0, .n_q = 1, .q_format = -1), HISA_EINVAL},
        {"prefill q_format 3", PRE(.seq = s0, .n_q = 1, .q_format = 3), HISA_EINVAL},
        {"chunks q_format 3", PRE(.q_format = 3, .n_chunks = 1, .seqs = one, .t0s = (const int32_t[]){0}, .n_qs = (const int32_t[]){1}), HISA_EINVAL},
        {"decode next_n 5", DEC(.next_n = 5), HISA_EINVAL},
        {"decode next_n -1", DEC(.next_n = -1), HISA_EINVAL},
        {"decode next_n over a length of 3", hisa_select_decode(rt, &(hisa_decode){.n_seqs = 1, .seq_ids = short3, .q = q, .w = w, .out = out, .next_n = 4}), HISA_ERANGE},
        {"decode next_n 4 over a batch with a length of 3", hisa_select_decode(rt, &(hisa_decode){.n_seqs = 2, .seq_ids = (const int32_t[]){s0, s3}, .q = q, .w = w, .out = out, .next_n = 4}), HISA_ERANGE},
        {"prefill n_chunks -1", PRE(.seq = s0, .n_q = 1, .n_chunks = -1), HISA_EINVAL},
        {"chunks without arrays", PRE(.seq = s0, .n_q = 1, .n_chunks = 2), HISA_EINVAL},
        {"chunk with n_q 0", CHUNKS(2, A(s0, s1), A(0, 0), A(3, 0)), HISA_EINVAL},
        {"chunk with n_q -2", CHUNKS(2, A(s0, s1), A(0, 0), A(-2, 3)), HISA_EINVAL},
        {"chunk past its sequence", CHUNKS(2, A(s0, s1), A(0, 15), A(3, 6)), HISA_ERANGE},
        {"chunk at a negative t0", CHUNKS(2, A(s0, s1), A(0, -1), A(3, 2)), HISA_ERANGE},
        {"chunk of an unknown sequence", CHUNKS(2, A(s0, 7), A(0, 0), A(3, 1)), HISA_ESEQ},
        {"chunks overlapping", CHUNKS(3, A(s0, s1, s0), A(10, 0, 29), A(20, 3, 5)), HISA_EINVAL},
        {"chunks identical", CHUNKS(2, A(s0, s0), A(40, 40), A(4, 4)), HISA_EINVAL},
        {"chunk inside another", CHUNKS(2, A(s0, s0), A(40, 41), A(10, 2)), HISA_EINVAL},
        {"chunks over max_prefill_queries", CHUNKS(2, A(s0, s0), A(0, 100), A(30, 21)), HISA_ELIMIT},
        {"write keys and keys_bf16", hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = one, .keys = keys, .keys_bf16 = kb}), HISA_EINVAL},
        {"write keys_bf16 and codes", hisa_write_keys(rt, &(hisa_write){.n_tokens = 1, .seq_ids = one, .keys_bf16 = kb, .codes = codes, .scales = scales}), HISA_EINVAL},
        {"write all three", hisa_write_keys(rt, &(hisa_write){.n_tokens = 2, .seq_ids = both, .keys = keys, .keys_bf16 = kb, .codes = codes, .scales = scales}), HISA_EINVAL},
        {"range keys and keys_bf16", hisa_write_range(rt, s0, 0, &(hisa_write){.n_tokens = 2, .keys = keys, .keys_bf16 = kb}), HISA_EINVAL},
    };
#undef A
#undef CHUNKS
#undef PRE
#undef DEC
    eng_cases(ctx, cases, sizeof cases / sizeof cases[0]);
}

HISA_TEST(engine_bad_inputs_return_codes_and_change_nothing) {
    hisa_config c = {.n_heads = 4, .block_size = 32, .top_blocks = 4, .topk = 64, .key_format = HISA_KEY_FP8, .max_seqs = 4,
                     .max_context = 300, .n_pages = 9, .max_batch = 2, .max_prefill_queries = 50};
    hisa_runtime *rt = eng_open(c);
    REQUIRE(rt);
    int32_t s0, s1, s2, s3, child = -1;
    REQUIRE(eng_seq(rt, 200, 1, &s0) == 0 && eng_seq(rt, 20, 2, &s1) == 0 && eng_seq(rt, 3, 3, &s3) == 0);
    REQUIRE(hisa_seq_open(rt, &s2) == 0); /* the table is full, the pool empty */
    static int32_t out[60 * 64];
    poison(out, 60 * 64);
    eng_snap snap;
    snap_take(rt, &snap);
    REQUIRE(snap.rep.pages_free == 0 && snap.rep.seqs_open == 4);
    bad_selection_inputs(ctx, rt, s0, s1, s3, out);
    const eng_case full[] = {
        {"fork, table full", hisa_seq_fork(rt, s0, 100, &child), HISA_ESEQFULL},
        {"fork at a page boundary, table full", hisa_seq_fork(rt, s0, 96, &child), HISA_ESEQFULL},
        {"fork of an unknown sequence", hisa_seq_fork(rt, 7, 0, &child), HISA_ESEQ},
        {"fork of a negative sequence", hisa_seq_fork(rt, -1, 0, &child), HISA_ESEQ},
        {"fork past the parent's length", hisa_seq_fork(rt, s0, 201, &child), HISA_ERANGE},
        {"fork at a negative length", hisa_seq_fork(rt, s0, -1, &child), HISA_ERANGE},
        {"fork without child_out", hisa_seq_fork(rt, s0, 10, NULL), HISA_EINVAL},
    };
    eng_cases(ctx, full, sizeof full / sizeof full[0]);
    char why[64];
    CHECKF(snap_same(rt, &snap, why, sizeof why), "refused calls changed the %s", why);
    CHECKF(count_poison(out, 60 * 64) == 60 * 64, "a refused call wrote its output");
    CHECK(child == -1);
    CHECK(hisa_seq_close(rt, s2) == HISA_OK); /* a free slot, still no free page */
    snap_free(&snap);
    snap_take(rt, &snap);
    const eng_case no_page[] = {
        {"fork with a partial page, pool empty", hisa_seq_fork(rt, s0, 100, &child), HISA_EPOOL},
        {"fork at 1, pool empty", hisa_seq_fork(rt, s1, 1, &child), HISA_EPOOL},
        {"fork of a closed sequence", hisa_seq_fork(rt, s2, 0, &child), HISA_ESEQ},
    };
    eng_cases(ctx, no_page, sizeof no_page / sizeof no_page[0]);
    CHECKF(snap_same(rt, &snap, why, sizeof why), "refused forks changed the %s", why);
    CHECK(child == -1);
    /* the legal neighbours: a fork needing no page, closed again, leaves everything as it was */
    CHECK_EQ_INT(hisa_seq_fork(rt, s0, 96, &child), HISA_OK);
    CHECK(eng_len(rt, child) == 96);
    hisa_memory_report rep;
    CHECK(hisa_memory_report_get(rt, &rep) == HISA_OK && rep.pages_shared == 3 && rep.pages_free == 0);
    CHECK(hisa_seq_close(rt, child) == HISA_OK);
    CHECKF(snap_same(rt, &snap, why, sizeof why), "fork + close changed the %s", why);
    int32_t one3[1] = {s3};
    static float q[3 * 4 * 128], w[3 * 4];
    for (int i = 0; i < 3 * 4 * 128; i++) q[i] = (float)((i * 37) % 11) - 5.0f;
    for (int i = 0; i < 3 * 4; i++) w[i] = 1.0f;
    CHECK_EQ_INT(eng_decode(rt, one3, 1, 3, HISA_MODE_HISA, q, HISA_Q_F32, w, 0, out), HISA_OK); /* next_n == length */
    for (int32_t j = 0; j < 3; j++) /* query j at t = j: positions 0..j, then -1 */
        for (int32_t i = 0; i < 64; i++) CHECK(out[j * 64 + i] == (i <= j ? i : -1));
    snap_free(&snap);
    hisa_close(rt);
}

/* --- CUDA against the CPU reference --------------------------------------------------------- */

#if HISA_CUDA
#include <cuda_runtime_api.h>

typedef struct gpair {
    hisa_runtime *cpu, *gpu;
} gpair;

#define GPAIR_OPEN(p, cfg)                                                 \
    do {                                                                   \
        int r_ = hisa_tpair_open(ctx, (cfg), &(p)->cpu, &(p)->gpu);        \
        if (r_ == 0) SKIP(hisa_open_detail());                             \
        if (r_ < 0) return;                                                \
    } while (0)
static void gpair_close(gpair *p) {
    hisa_close(p->cpu);
    hisa_close(p->gpu);
}

/* The same call on both runtimes; both must succeed (or both give the same code). */
#define GBOTH(p, call_args_cpu, call_args_gpu) (gboth_(ctx, (call_args_cpu), (call_args_gpu), #call_args_cpu, (p)))
static int gboth_(hisa_test_ctx *ctx, int e1, int e2, const char *what, const gpair *p) {
    CHECKF(e1 == e2, "%s: cpu %s, cuda %s (%s)", what, hisa_strerror(e1), hisa_strerror(e2), hisa_error_detail(p->gpu));
    return e1 != e2 ? -1 : e1;
}

static int gp_open(hisa_test_ctx *ctx, gpair *p, int32_t *seq) {
    int32_t s2 = -1;
    int err = GBOTH(p, hisa_seq_open(p->cpu, seq), hisa_seq_open(p->gpu, &s2));
    CHECK(err || *seq == s2);
    return err;
}

/* Extend seq by n on both and write the same keys (seed) with host IO; bf16: through keys_bf16. */
static int gp_grow(hisa_test_ctx *ctx, gpair *p, int32_t seq, int32_t n, uint64_t seed, int bf16) {
    const int32_t chunk = 256, len = eng_len(p->cpu, seq);
    int err = GBOTH(p, hisa_seq_extend(p->cpu, seq, n), hisa_seq_extend(p->gpu, seq, n));
    float *keys = malloc(sizeof(float) * HISA_D * chunk);
    uint16_t *kb = malloc(sizeof(uint16_t) * HISA_D * chunk);
    for (int32_t pos = len; pos < len + n && !err; pos += chunk) {
        int32_t c = len + n - pos < chunk ? len + n - pos : chunk;
        hisa_tgen_keys(seed, pos, c, keys);
        for (int64_t i = 0; i < (int64_t)c * HISA_D; i++) kb[i] = hisa__bf16_from_f32(keys[i]);
        hisa_write w = {.n_tokens = c, .keys = bf16 ? NULL : keys, .keys_bf16 = bf16 ? kb : NULL, .flags = HISA_HOST_IO};
        err = GBOTH(p, hisa_write_range(p->cpu, seq, pos, &w), hisa_write_range(p->gpu, seq, pos, &w));
    }
    free(keys);
    free(kb);
    return err;
}

static int sort_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Kept blocks of a GPU HISA row: forced ends, ascending, the middle against the CPU's J. */
static int gj_blocks(hisa_test_ctx *ctx, const float *J, int32_t nb, int32_t m, const int32_t *gblocks, const char *what, int32_t t) {
    char why[256] = "";
    int ok = hisa_agree_blocks(J, nb, m, gblocks, why, sizeof why);
    CHECKF(ok, "%s t=%d: kept blocks: %s", what, t, why);
    return ok;
}

/* One GPU row (positions) for the query at t of seq (q in qf) against the CPU runtime's scores,
 * SPEC agreement rule; gblocks: the GPU's kept blocks for a HISA row, else NULL. */
static void gj_row(hisa_test_ctx *ctx, hisa_runtime *cpu, int32_t seq, int32_t t, const void *q, int32_t qf, const float *w,
                   hisa_mode mode, const int32_t *got, const int32_t *gblocks, const char *what) {
    const int32_t B = (int32_t)cpu->g.block_size, m = (int32_t)cpu->g.top_blocks, k = (int32_t)cpu->g.topk;
    const int32_t n = t + 1, nb = hisa__blocks_of(n, B);
    if (count_poison(got, k)) {
        CHECKF(0, "%s t=%d: %lld entries never written", what, t, (long long)count_poison(got, k));
        return;
    }
    int32_t *ref = malloc(sizeof(int32_t) * (size_t)k), *ids = malloc(sizeof(int32_t) * (size_t)n);
    float *I = malloc(sizeof(float) * (size_t)n), *J = malloc(sizeof(float) * (size_t)nb), *cs = malloc(sizeof(float) * (size_t)n);
    uint8_t *is_cand = calloc((size_t)n, 1);
    char why[256] = "";
    if (n <= k) {
        memcpy(ref, got, sizeof(int32_t) * (size_t)k);
        qsort(ref, (size_t)n, sizeof(int32_t), sort_i32);
        int ok = 1;
        for (int32_t i = 0; i < k; i++) ok &= ref[i] == (i < n ? i : -1);
        CHECKF(ok, "%s t=%d (n <= k): not 0..n-1 then -1", what, t);
        goto done;
    }
    hisa__cpu_scores(cpu, 0, seq, t, q, qf, w, I, J);
    int32_t n_cand = 0;
    if (mode == HISA_MODE_FLAT || nb <= m) {
        CHECKF(gblocks == NULL, "%s t=%d: a flat row judged as HISA", what, t);
        for (int32_t s = 0; s < n; s++, n_cand++) {
            ids[s] = s;
            cs[s] = I[s];
            is_cand[s] = 1;
        }
    } else {
        if (!gblocks || !gj_blocks(ctx, J, nb, m, gblocks, what, t)) goto done;
        for (int32_t i = 0; i < m; i++)
            for (int32_t s = gblocks[i] * B; s < gblocks[i] * B + B && s < n; s++) {
                is_cand[s] = 1;
                ids[n_cand] = s;
                cs[n_cand++] = I[s];
            }
    }
    int32_t nr = hisa__topk_ref(cs, ids, n_cand, k, ref);
    for (int32_t i = nr; i < k; i++) ref[i] = -1;
    CHECKF(hisa_agree(I, n, is_cand, ref, got, k, why, sizeof why), "%s t=%d %s: %s", what, t, qf_name(qf), why);
done:
    free(ref);
    free(ids);
    free(I);
    free(J);
    free(cs);
    free(is_cand);
}

/* Poison the GPU's staged output and kept-block scratch for rows rows. */
static int gp_poison(hisa_test_ctx *ctx, const gpair *p, int32_t rows) {
    const hisa_runtime *g = p->gpu;
    int ok = cudaMemset(g->r.io_out, 0x7f, sizeof(int32_t) * (size_t)rows * (size_t)g->g.topk) == cudaSuccess;
    ok = ok && cudaMemset(g->r.sel_blocks, 0x7f, sizeof(int32_t) * (size_t)rows * (size_t)g->g.top_blocks) == cudaSuccess;
    CHECKF(ok, "poisoning the GPU outputs failed");
    return ok ? 0 : -1;
}
static int gp_blocks(hisa_test_ctx *ctx, const gpair *p, int32_t rows, int32_t *blocks) {
    int ok = hisa_sync(p->gpu) == HISA_OK &&
             cudaMemcpy(blocks, p->gpu->r.sel_blocks, sizeof(int32_t) * (size_t)rows * (size_t)p->gpu->g.top_blocks,
                        cudaMemcpyDeviceToHost) == cudaSuccess;
    CHECKF(ok, "reading the GPU's kept blocks failed");
    return ok ? 0 : -1;
}
static int gj_hisa_row(const hisa_runtime *rt, hisa_mode mode, int32_t t) {
    return mode == HISA_MODE_HISA && hisa__blocks_of(t + 1, (int32_t)rt->g.block_size) > rt->g.top_blocks && t + 1 > rt->g.topk;
}

/* One GPU decode (host IO, outputs and scratch poisoned) over seqs with next_n queries each in
 * format qf; every row judged against the CPU at its own t, HISA rows by the blocks the GPU kept. */
static void gj_decode(hisa_test_ctx *ctx, gpair *p, const int32_t *seqs, int32_t n_seqs, int32_t next_n, int32_t qf,
                      hisa_mode mode, uint64_t seed, const char *what) {
    const int32_t H = (int32_t)p->cpu->g.n_heads, k = (int32_t)p->cpu->g.topk, m = (int32_t)p->cpu->g.top_blocks;
    const int32_t rows = n_seqs * next_n;
    int64_t *near = malloc(sizeof(int64_t) * (size_t)rows);
    for (int32_t r = 0; r < rows; r++) {
        int32_t t = eng_len(p->cpu, seqs[r / next_n]) - next_n + r % next_n;
        near[r] = r % 3 == 1 ? -1 : (t * 7919ll + r) % (t + 1);
    }
    eng_qset qs;
    qset_make(&qs, H, rows, seed, near);
    int32_t *out = malloc(sizeof(int32_t) * (size_t)rows * k), *blocks = malloc(sizeof(int32_t) * (size_t)rows * m);
    poison(out, (int64_t)rows * k);
    hisa_decode d = {.mode = mode, .n_seqs = n_seqs, .seq_ids = seqs, .q = qset_q(&qs, qf, 0), .w = qset_w(&qs, qf, 0),
                     .out = out, .flags = HISA_HOST_IO, .q_format = qf, .next_n = next_n};
    int err = gp_poison(ctx, p, rows);
    if (!err) err = hisa_select_decode(p->gpu, &d);
    CHECKF(err == HISA_OK, "%s: decode: %s (%s)", what, hisa_strerror(err), hisa_error_detail(p->gpu));
    if (!err) err = gp_blocks(ctx, p, rows, blocks);
    for (int32_t r = 0; r < rows && !err; r++) {
        int32_t seq = seqs[r / next_n], t = eng_len(p->cpu, seq) - next_n + r % next_n;
        char w2[128];
        snprintf(w2, sizeof w2, "%s next_n %d row %d", what, next_n, r);
        gj_row(ctx, p->cpu, seq, t, qset_q(&qs, qf, r), qf, qset_w(&qs, qf, r), mode, out + (int64_t)r * k,
               gj_hisa_row(p->cpu, mode, t) ? blocks + (int64_t)r * m : NULL, w2);
    }
    free(near);
    free(out);
    free(blocks);
    qset_free(&qs);
}

/* Every query format with next_n 1, 2 and 4 over lengths 1 .. past m * B, both key formats (the
 * bf16 runtime's keys written through keys_bf16), HISA and flat. */
HISA_GPU_TEST(engine_gpu_q_formats_and_next_n_match_cpu) {
    const int32_t shapes[2][4] = {{32, 64, 256, HISA_KEY_FP8}, {64, 128, 512, HISA_KEY_BF16}};
    for (int si = 0; si < 2; si++) {
        const int32_t H = shapes[si][0], B = shapes[si][1], m = 8, k = shapes[si][2], mb = m * B;
        const int32_t lens[] = {1, 3, 4, k - 1, k + 2, B + 1, mb - 1, mb + 1, mb + 3, mb + B + 2, 3000};
        const int32_t n_lens = (int32_t)(sizeof lens / sizeof lens[0]);
        hisa_config cfg = hisa_tconfig(H, B, m, k, shapes[si][3], 4096, n_lens);
        gpair pp, *p = &pp;
        GPAIR_OPEN(p, cfg);
        int32_t seqs[16];
        int ok = 1;
        for (int32_t i = 0; i < n_lens && ok; i++)
            ok = !gp_open(ctx, p, &seqs[i]) && !gp_grow(ctx, p, seqs[i], lens[i], 60 + (uint64_t)i, shapes[si][3] == HISA_KEY_BF16);
        for (int32_t qf = 0; qf < 3 && ok; qf++)
            for (int32_t next_n = 1; next_n <= HISA_NEXT_N_MAX; next_n *= 2) {
                int32_t batch[16], nb = 0;
                for (int32_t i = 0; i < n_lens; i++)
                    if (lens[i] >= next_n) batch[nb++] = seqs[i];
                char what[64];
                snprintf(what, sizeof what, "H%d B%d %s", H, B, qf_name(qf));
                for (int mode = 0; mode < 2; mode++)
                    gj_decode(ctx, p, batch, nb, next_n, qf, (hisa_mode)mode, 100 + (uint64_t)(qf * 8 + next_n + mode), what);
            }
        gpair_close(p);
    }
}

/* One chunk alone on the GPU, rows judged against the CPU (HISA rows by the blocks kept). */
static void gj_chunk(hisa_test_ctx *ctx, gpair *p, int32_t seq, int32_t t0, int32_t n_q, const eng_qset *qs, int32_t row0,
                     int32_t qf, hisa_mode mode, int32_t *out, const char *what) {
    const int32_t k = (int32_t)p->cpu->g.topk, m = (int32_t)p->cpu->g.top_blocks;
    int32_t *blocks = malloc(sizeof(int32_t) * (size_t)n_q * m);
    poison(out, (int64_t)n_q * k);
    hisa_prefill req = {.mode = mode, .seq = seq, .t0 = t0, .n_q = n_q, .q = qset_q(qs, qf, row0), .w = qset_w(qs, qf, row0),
                        .out = out, .flags = HISA_HOST_IO, .q_format = qf};
    int err = gp_poison(ctx, p, n_q);
    if (!err) err = hisa_select_prefill(p->gpu, &req);
    CHECKF(err == HISA_OK, "%s: prefill: %s (%s)", what, hisa_strerror(err), hisa_error_detail(p->gpu));
    if (!err) err = gp_blocks(ctx, p, n_q, blocks);
    for (int32_t i = 0; i < n_q && !err; i++)
        gj_row(ctx, p->cpu, seq, t0 + i, qset_q(qs, qf, row0 + i), qf, qset_w(qs, qf, row0 + i), mode, out + (int64_t)i * k,
               gj_hisa_row(p->cpu, mode, t0 + i) ? blocks + (int64_t)i * m : NULL, what);
    free(blocks);
}

/* Rows a and b (k entries each) hold the same set (selections are sets); sa, sb: room for k. */
static int same_row_sets(const int32_t *a, const int32_t *b, int32_t k, int32_t *sa, int32_t *sb) {
    memcpy(sa, a, sizeof(int32_t) * (size_t)k);
    memcpy(sb, b, sizeof(int32_t) * (size_t)k);
    qsort(sa, (size_t)k, sizeof(int32_t), sort_i32);
    qsort(sb, (size_t)k, sizeof(int32_t), sort_i32);
    return memcmp(sa, sb, sizeof(int32_t) * (size_t)k) == 0;
}

/* The chunks of one GPU call in format qf and mode: each chunk alone is judged against the CPU
 * (positions); the batched call, as positions, must give each row the set the row got alone or
 * agree with the CPU on the CPU's blocks; as slots, the set the chunk alone got as slots (a
 * row's scores do not depend on the rows beside it, so the two are the same selection). */
static void gj_batch(hisa_test_ctx *ctx, gpair *p, int32_t n_chunks, const int32_t *seqs, const int32_t *t0s,
                     const int32_t *n_qs, int32_t qf, hisa_mode mode, const char *tag) {
    const int32_t H = (int32_t)p->cpu->g.n_heads, k = (int32_t)p->cpu->g.topk, m = (int32_t)p->cpu->g.top_blocks;
    int32_t total = 0;
    for (int32_t c = 0; c < n_chunks; c++) total += n_qs[c];
    int64_t *near = malloc(sizeof(int64_t) * (size_t)total);
    for (int32_t c = 0, r = 0; c < n_chunks; c++)
        for (int32_t i = 0; i < n_qs[c]; i++, r++) near[r] = r % 5 == 4 ? -1 : ((t0s[c] + i) * 131ll) % (t0s[c] + i + 1);
    int32_t *single = malloc(sizeof(int32_t) * (size_t)total * k), *batch = malloc(sizeof(int32_t) * (size_t)total * k);
    int32_t *cpu_ref = malloc(sizeof(int32_t) * (size_t)k), *sa = malloc(sizeof(int32_t) * (size_t)k),
            *sb = malloc(sizeof(int32_t) * (size_t)k);
    eng_qset qs;
    qset_make(&qs, H, total, 200 + (uint64_t)qf, near);
    char what[96];
    for (int32_t c = 0, row = 0; c < n_chunks; row += n_qs[c++]) {
        snprintf(what, sizeof what, "%s %s chunk %d alone", tag, qf_name(qf), c);
        gj_chunk(ctx, p, seqs[c], t0s[c], n_qs[c], &qs, row, qf, mode, single + (int64_t)row * k, what);
    }
    for (int slots = 0; slots < 2; slots++) {
        const uint32_t flags = HISA_HOST_IO | (slots ? HISA_SLOTS : 0u);
        hisa_prefill req = {.mode = mode, .q = qset_q(&qs, qf, 0), .w = qset_w(&qs, qf, 0), .out = batch, .flags = flags,
                            .q_format = qf, .n_chunks = n_chunks, .seqs = seqs, .t0s = t0s, .n_qs = n_qs};
        poison(batch, (int64_t)total * k);
        int err = gp_poison(ctx, p, total);
        if (!err) err = hisa_select_prefill(p->gpu, &req);
        CHECKF(err == HISA_OK, "%s %s slots %d: batched prefill: %s (%s)", tag, qf_name(qf), slots, hisa_strerror(err),
               hisa_error_detail(p->gpu));
        for (int32_t c = 0, row = 0; c < n_chunks && !err; row += n_qs[c++]) {
            if (slots) { /* the chunk alone, as slots */
                hisa_prefill one = {.mode = mode, .seq = seqs[c], .t0 = t0s[c], .n_q = n_qs[c], .q = qset_q(&qs, qf, row),
                                    .w = qset_w(&qs, qf, row), .out = single + (int64_t)row * k, .flags = flags, .q_format = qf};
                CHECK(hisa_select_prefill(p->gpu, &one) == HISA_OK);
            }
            for (int32_t i = 0; i < n_qs[c]; i++) {
                const int64_t r = row + i;
                const int32_t t = t0s[c] + i;
                CHECKF(count_poison(batch + r * k, k) == 0, "%s %s slots %d: chunk %d row %d: entries never written", tag,
                       qf_name(qf), slots, c, i);
                if (same_row_sets(batch + r * k, single + r * k, k, sa, sb)) continue;
                snprintf(what, sizeof what, "%s %s batched chunk %d row %d (seq %d, t %d)", tag, qf_name(qf), c, i, seqs[c], t);
                CHECKF(!slots, "%s: slots differ from the chunk alone", what);
                if (slots) continue;
                /* positions differ from the row alone: judge on the CPU's kept blocks */
                CHECK(hisa__cpu_select_one(p->cpu, 0, mode, seqs[c], t, qset_q(&qs, qf, (int32_t)r), qf,
                                           qset_w(&qs, qf, (int32_t)r), 0, cpu_ref) == HISA_OK);
                int32_t cpu_blocks[HISA_MAX_TOP_BLOCKS];
                memcpy(cpu_blocks, p->cpu->r.cpu_blocks, sizeof(int32_t) * (size_t)m);
                gj_row(ctx, p->cpu, seqs[c], t, qset_q(&qs, qf, (int32_t)r), qf, qset_w(&qs, qf, (int32_t)r), mode,
                       batch + r * k, gj_hisa_row(p->cpu, mode, t) ? cpu_blocks : NULL, what);
            }
        }
    }
    qset_free(&qs);
    free(near);
    free(single);
    free(batch);
    free(cpu_ref);
    free(sa);
    free(sb);
}

/* Chunks of 3 sequences in one GPU call (5 chunks), and HISA_K_CHUNKS_MAX + 7 chunks in one call
 * (more than one launch holds): chunks of 1-6 queries all over the three sequences and one of 400
 * whose rows are short (t < k), flat (nb <= m) and HISA; every query format (gj_batch). Twice:
 * B = 64, m = 8, and B = 128, m = 4 (the bench's block size; HISA rows from t = 512 on, in most
 * chunks). */
enum { MANY_CHUNKS = HISA_K_CHUNKS_MAX + 7 };
static void batched_prefill_case(hisa_test_ctx *ctx, int32_t B, int32_t m) {
    const int32_t H = 32, k = 256, lens[3] = {700, 2500, 4000};
    const int32_t which5[5] = {0, 2, 1, 2, 0}, t0s5[5] = {600, 3000, 100, 10, 300}, n_qs5[5] = {50, 120, 30, 20, 40};
    hisa_config cfg = hisa_tconfig(H, B, m, k, HISA_KEY_FP8, 4096, 3);
    cfg.max_prefill_queries = 1024;
    gpair pp, *p = &pp;
    GPAIR_OPEN(p, cfg);
    int32_t s[3], seqs5[5], seqs[MANY_CHUNKS], t0s[MANY_CHUNKS], n_qs[MANY_CHUNKS], cursor[3] = {0, 600, 100};
    int ok = 1;
    for (int i = 0; i < 3 && ok; i++) ok = !gp_open(ctx, p, &s[i]) && !gp_grow(ctx, p, s[i], lens[i], 70 + (uint64_t)i, 0);
    CHECKF(ok, "opening and writing the sequences failed");
    for (int32_t c = 0; c < 5; c++) seqs5[c] = s[which5[c]];
    for (int32_t c = 0; c < MANY_CHUNKS - 1; c++) { /* disjoint in each sequence: a cursor per sequence, gaps between */
        const int32_t j = c % 3;
        seqs[c] = s[j];
        t0s[c] = cursor[j];
        n_qs[c] = 1 + (c * 7) % 6;
        cursor[j] += n_qs[c] + (c * 37) % 29;
        CHECK(cursor[j] <= lens[j]);
    }
    seqs[MANY_CHUNKS - 1] = s[1]; /* sequence 1's chunks above start at 600 */
    t0s[MANY_CHUNKS - 1] = 200;
    n_qs[MANY_CHUNKS - 1] = 400;
    for (int32_t qf = 0; qf < 3 && ok; qf++) {
        const hisa_mode mode = qf == HISA_Q_BF16 ? HISA_MODE_FLAT : HISA_MODE_HISA;
        gj_batch(ctx, p, 5, seqs5, t0s5, n_qs5, qf, mode, "5 chunks");
        gj_batch(ctx, p, MANY_CHUNKS, seqs, t0s, n_qs, qf, mode, "many chunks");
    }
    gpair_close(p);
}
HISA_GPU_TEST(engine_gpu_batched_prefill_matches_cpu) {
    batched_prefill_case(ctx, 64, 8);
    if (!ctx->skipped) batched_prefill_case(ctx, 128, 4);
}

/* Batched chunks on the long-row kernels: m * B = 9600 candidates (more than the one-CTA top-k
 * holds: topk_kernel takes the HISA token rows) and 2157 blocks at t = 69004 (keep_kernel takes
 * the kept blocks of every chunk's HISA rows); chunks with short, flat and HISA rows, two of them
 * straddling a class boundary. */
HISA_GPU_TEST(engine_gpu_batched_prefill_long_rows) {
    const int32_t H = 8, B = 32, m = 300, k = 256, lens[2] = {70000, 20000};
    const int32_t which[6] = {0, 1, 0, 0, 1, 0}, t0s[6] = {69000, 15000, 100, 5000, 250, 9590}, n_qs[6] = {5, 6, 4, 3, 10, 20};
    hisa_config cfg = hisa_tconfig(H, B, m, k, HISA_KEY_FP8, 70016, 2);
    cfg.max_prefill_queries = 256;
    gpair pp, *p = &pp;
    GPAIR_OPEN(p, cfg);
    int32_t s[2], seqs[6];
    int ok = 1;
    for (int i = 0; i < 2 && ok; i++) ok = !gp_open(ctx, p, &s[i]) && !gp_grow(ctx, p, s[i], lens[i], 90 + (uint64_t)i, 0);
    CHECKF(ok, "opening and writing the sequences failed");
    for (int32_t c = 0; c < 6; c++) seqs[c] = s[which[c]];
    for (int32_t qf = 0; qf < 3 && ok; qf++)
        gj_batch(ctx, p, 6, seqs, t0s, n_qs, qf, qf == HISA_Q_BF16 ? HISA_MODE_FLAT : HISA_MODE_HISA, "long rows");
    gpair_close(p);
}

/* The GPU's cache bytes (written tokens' keys, means, masks; layer 0) and tables equal the
 * CPU's for every open sequence: the same operations give the same pages on both. */
static void gp_compare_cache(hisa_test_ctx *ctx, gpair *p, const char *what) {
    const hisa_runtime *c = p->cpu, *g = p->gpu;
    const int64_t P = c->g.n_pages, pb = c->g.page_bytes, mw = c->g.mask_words;
    const int32_t B = (int32_t)c->g.block_size, row = c->g.key_format == HISA_KEY_FP8 ? HISA_D : 2 * HISA_D;
    uint8_t *keys = malloc((size_t)(P * pb));
    uint16_t *means = malloc(sizeof(uint16_t) * (size_t)P * HISA_D);
    uint32_t *masks = malloc(sizeof(uint32_t) * (size_t)(P * mw));
    int ok = hisa_sync(p->gpu) == HISA_OK && cudaMemcpy(keys, g->r.keys, (size_t)(P * pb), cudaMemcpyDeviceToHost) == cudaSuccess &&
             cudaMemcpy(means, g->r.block_means, sizeof(uint16_t) * (size_t)P * HISA_D, cudaMemcpyDeviceToHost) == cudaSuccess &&
             cudaMemcpy(masks, g->r.block_masks, sizeof(uint32_t) * (size_t)(P * mw), cudaMemcpyDeviceToHost) == cudaSuccess;
    CHECKF(ok, "%s: reading the GPU cache failed", what);
    int bad_tables = 0, bad_keys = 0, bad_means = 0, bad_masks = 0;
    for (int32_t s = 0; s < c->g.max_seqs && ok; s++) {
        if (!c->r.seq_is_open[s]) continue;
        int32_t len = c->r.seq_len[s];
        const int32_t *pt = hisa__kv_pages(&c->kv, s);
        bad_tables += g->r.seq_len[s] != len || memcmp(pt, hisa__kv_pages(&g->kv, s), sizeof(int32_t) * (size_t)hisa__blocks_of(len, B));
        for (int32_t b = 0; b < hisa__blocks_of(len, B); b++) {
            int64_t pg = pt[b];
            const uint8_t *ck = c->r.keys + pg * pb, *gk = keys + pg * pb;
            for (int32_t off = 0; off < B; off++) {
                if (!hisa__mask_bit(c->r.block_masks + pg * mw, off)) continue;
                bad_keys += memcmp(ck + (int64_t)off * row, gk + (int64_t)off * row, (size_t)row) != 0;
                if (row == HISA_D) bad_keys += memcmp(ck + hisa__scale_offset(B, off), gk + hisa__scale_offset(B, off), 4) != 0;
            }
            bad_means += memcmp(c->r.block_means + pg * HISA_D, means + pg * HISA_D, 2 * HISA_D) != 0;
            bad_masks += memcmp(c->r.block_masks + pg * mw, masks + pg * mw, sizeof(uint32_t) * (size_t)mw) != 0;
        }
    }
    CHECKF(!bad_tables && !bad_keys && !bad_means && !bad_masks, "%s: GPU cache differs: tables %d keys %d means %d masks %d",
           what, bad_tables, bad_keys, bad_means, bad_masks);
    free(keys);
    free(means);
    free(masks);
}

/* The device buffers of the captured step, and the host copies of its results. */
typedef struct graph_io {
    cudaStream_t st;
    cudaGraphExec_t exec;
    uint16_t *dkeys, *dq;
    float *dw;
    int32_t *dout, *out, *blocks;
} graph_io;

/* One replay: the new tokens' bf16 keys written on the CPU and staged for the graph, fresh
 * queries, outputs and kept blocks poisoned; every row judged at t = len - 2 + j. */
static int graph_step(hisa_test_ctx *ctx, gpair *p, const int32_t seqs[3], int step, graph_io *g) {
    const int32_t H = (int32_t)p->cpu->g.n_heads, k = (int32_t)p->cpu->g.topk, m = (int32_t)p->cpu->g.top_blocks;
    const int32_t N = 2, rows = 3 * N;
    int64_t near[6];
    for (int r = 0; r < rows; r++) near[r] = (step + r) % 3 ? eng_len(p->cpu, seqs[r / N]) / 2 : -1;
    eng_qset qs;
    qset_make(&qs, H, rows, 1000 + (uint64_t)step, near);
    uint16_t kb[3 * HISA_D];
    float key[HISA_D];
    for (int i = 0; i < 3; i++) {
        hisa_tgen_keys(300 + (uint64_t)i, eng_len(p->cpu, seqs[i]) - 1, 1, key);
        for (int d = 0; d < HISA_D; d++) kb[i * HISA_D + d] = hisa__bf16_from_f32(key[d]);
    }
    int ok = hisa_write_keys(p->cpu, &(hisa_write){.n_tokens = 3, .seq_ids = seqs, .keys_bf16 = kb}) == HISA_OK;
    ok = ok && cudaMemcpyAsync(g->dkeys, kb, sizeof kb, cudaMemcpyHostToDevice, g->st) == cudaSuccess;
    ok = ok && cudaMemcpyAsync(g->dq, qs.b, sizeof(uint16_t) * (size_t)rows * H * HISA_D, cudaMemcpyHostToDevice, g->st) == cudaSuccess;
    ok = ok && cudaMemcpyAsync(g->dw, qs.w, sizeof(float) * (size_t)rows * H, cudaMemcpyHostToDevice, g->st) == cudaSuccess;
    ok = ok && cudaMemsetAsync(g->dout, 0x7f, sizeof(int32_t) * (size_t)rows * k, g->st) == cudaSuccess;
    ok = ok && cudaMemsetAsync(p->gpu->r.sel_blocks, 0x7f, sizeof(int32_t) * (size_t)rows * m, g->st) == cudaSuccess;
    ok = ok && cudaGraphLaunch(g->exec, g->st) == cudaSuccess;
    ok = ok && cudaMemcpyAsync(g->out, g->dout, sizeof(int32_t) * (size_t)rows * k, cudaMemcpyDeviceToHost, g->st) == cudaSuccess;
    ok = ok && cudaMemcpyAsync(g->blocks, p->gpu->r.sel_blocks, sizeof(int32_t) * (size_t)rows * m, cudaMemcpyDeviceToHost,
                               g->st) == cudaSuccess;
    ok = ok && cudaStreamSynchronize(g->st) == cudaSuccess;
    CHECKF(ok, "graph step %d: staging or replay failed", step);
    for (int r = 0; r < rows && ok; r++) {
        int32_t t = eng_len(p->cpu, seqs[r / N]) - N + r % N;
        char what[64];
        snprintf(what, sizeof what, "graph step %d row %d", step, r);
        gj_row(ctx, p->cpu, seqs[r / N], t, qset_q(&qs, HISA_Q_BF16, r), HISA_Q_BF16, qset_w(&qs, HISA_Q_BF16, r), HISA_MODE_HISA,
               g->out + (int64_t)r * k, gj_hisa_row(p->cpu, HISA_MODE_HISA, t) ? g->blocks + (int64_t)r * m : NULL, what);
    }
    qset_free(&qs);
    return ok ? 0 : -1;
}

/* The write + next_n = 2 decode step captured once in a CUDA graph (device pointers: bf16 keys,
 * bf16 queries) and replayed over growing sequences; the host only extends between replays.
 * Lengths cross k, m * B and block boundaries on the way. */
HISA_GPU_TEST(engine_gpu_graph_replay_next_n_2) {
    const int32_t H = 32, B = 64, m = 8, k = 256, rows = 3 * 2;
    gpair pp, *p = &pp;
    GPAIR_OPEN(p, hisa_tconfig(H, B, m, k, HISA_KEY_FP8, 4096, 3));
    int32_t seqs[3], start[3] = {k - 30, m * B - 40, 1000};
    for (int i = 0; i < 3; i++)
        if (gp_open(ctx, p, &seqs[i]) || gp_grow(ctx, p, seqs[i], start[i], 300 + (uint64_t)i, 1)) {
            gpair_close(p);
            return;
        }
    graph_io g = {0};
    g.out = malloc(sizeof(int32_t) * (size_t)rows * k);
    g.blocks = malloc(sizeof(int32_t) * (size_t)rows * m);
    REQUIRE(cudaStreamCreateWithFlags(&g.st, cudaStreamNonBlocking) == cudaSuccess);
    REQUIRE(cudaMalloc((void **)&g.dkeys, sizeof(uint16_t) * 3 * HISA_D) == cudaSuccess);
    REQUIRE(cudaMalloc((void **)&g.dq, sizeof(uint16_t) * (size_t)rows * H * HISA_D) == cudaSuccess);
    REQUIRE(cudaMalloc((void **)&g.dw, sizeof(float) * (size_t)rows * H) == cudaSuccess);
    REQUIRE(cudaMalloc((void **)&g.dout, sizeof(int32_t) * (size_t)rows * k) == cudaSuccess);
    REQUIRE(hisa_set_stream(p->gpu, g.st) == HISA_OK);
    for (int i = 0; i < 3; i++) CHECK(GBOTH(p, hisa_seq_extend(p->cpu, seqs[i], 1), hisa_seq_extend(p->gpu, seqs[i], 1)) == 0);
    hisa_write wr = {.n_tokens = 3, .seq_ids = seqs, .keys_bf16 = g.dkeys};
    hisa_decode dec = {.n_seqs = 3, .seq_ids = seqs, .q = g.dq, .w = g.dw, .out = g.dout, .q_format = HISA_Q_BF16, .next_n = 2};
    cudaGraph_t graph;
    REQUIRE(cudaStreamBeginCapture(g.st, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
    int e1 = hisa_write_keys(p->gpu, &wr), e2 = hisa_select_decode(p->gpu, &dec);
    REQUIRE(cudaStreamEndCapture(g.st, &graph) == cudaSuccess);
    REQUIRE(e1 == HISA_OK && e2 == HISA_OK);
    REQUIRE(cudaGraphInstantiate(&g.exec, graph, 0) == cudaSuccess);
    const int before = ctx->failures;
    for (int step = 0; step < 80 && ctx->failures == before; step++) {
        if (graph_step(ctx, p, seqs, step, &g)) break;
        for (int i = 0; i < 3; i++) CHECK(GBOTH(p, hisa_seq_extend(p->cpu, seqs[i], 1), hisa_seq_extend(p->gpu, seqs[i], 1)) == 0);
    }
    gp_compare_cache(ctx, p, "after the replays");
    cudaGraphExecDestroy(g.exec);
    cudaGraphDestroy(graph);
    hisa_set_stream(p->gpu, NULL);
    cudaStreamDestroy(g.st);
    cudaFree(g.dkeys);
    cudaFree(g.dq);
    cudaFree(g.dw);
    cudaFree(g.dout);
    free(g.out);
    free(g.blocks);
    gpair_close(p);
}

/* Shared prefixes on the GPU: forks (with a partial copy, of a fork), writes into shared pages
 * refused, a truncate into a shared page, the parent closed first; the cache equals the CPU's
 * and every selection (next_n 2, both modes) agrees with it; slots point into the shared pages. */
HISA_GPU_TEST(engine_gpu_fork_matches_cpu) {
    const int32_t H = 32, B = 64, m = 8, k = 256;
    for (int32_t kf = HISA_KEY_FP8; kf <= HISA_KEY_BF16; kf++) {
        gpair pp, *p = &pp;
        GPAIR_OPEN(p, hisa_tconfig(H, B, m, k, kf, 4096, 4));
        int32_t P, C = -1, D = -1, c2 = -1, d2 = -1, pos5 = 5;
        int ok = !gp_open(ctx, p, &P) && !gp_grow(ctx, p, P, 3000, 40, kf == HISA_KEY_BF16);
        ok = ok && !GBOTH(p, hisa_seq_fork(p->cpu, P, 2007, &C), hisa_seq_fork(p->gpu, P, 2007, &c2)) && C == c2;
        ok = ok && !GBOTH(p, hisa_seq_fork(p->cpu, C, 1024, &D), hisa_seq_fork(p->gpu, C, 1024, &d2)) && D == d2;
        ok = ok && !gp_grow(ctx, p, C, 300, 41, 0) && !gp_grow(ctx, p, D, 100, 42, 1);
        ok = ok && !GBOTH(p, hisa_seq_truncate(p->cpu, D, 1000), hisa_seq_truncate(p->gpu, D, 1000)) && !gp_grow(ctx, p, D, 50, 43, 0);
        REQUIRE(ok);
        float key[HISA_D];
        hisa_tgen_keys(1, 0, 1, key);
        hisa_write bad = {.n_tokens = 1, .seq_ids = &C, .positions = &pos5, .keys = key, .flags = HISA_HOST_IO};
        CHECK_EQ_INT(hisa_write_keys(p->gpu, &bad), HISA_ESHARED);
        CHECK_EQ_INT(hisa_write_range(p->gpu, D, 1, &(hisa_write){.n_tokens = 1, .keys = key, .flags = HISA_HOST_IO}), HISA_ESHARED);
        gp_compare_cache(ctx, p, "forks");
        int32_t all[3] = {P, C, D};
        for (int mode = 0; mode < 2; mode++) gj_decode(ctx, p, all, 3, 2, HISA_Q_F32, (hisa_mode)mode, 11 + (uint64_t)mode, "forks");
        /* slots of C through its own page table: the shared prefix in P's pages */
        int32_t *pos = malloc(sizeof(int32_t) * (size_t)k), *slots = malloc(sizeof(int32_t) * (size_t)k), pc[64], pp2[64], nc, np;
        eng_qset qs;
        qset_make(&qs, H, 1, 77, (int64_t[]){500});
        CHECK(eng_decode(p->gpu, &C, 1, 1, HISA_MODE_HISA, qs.f, HISA_Q_F32, qs.w, HISA_HOST_IO, pos) == HISA_OK);
        CHECK(eng_decode(p->gpu, &C, 1, 1, HISA_MODE_HISA, qs.f, HISA_Q_F32, qs.w, HISA_HOST_IO | HISA_SLOTS, slots) == HISA_OK);
        CHECK(hisa_seq_pages(p->gpu, C, pc, 64, &nc) == HISA_OK && hisa_seq_pages(p->gpu, P, pp2, 64, &np) == HISA_OK);
        for (int32_t i = 0; i < k; i++) pos[i] = pos[i] < 0 ? -1 : pc[pos[i] / B] * B + pos[i] % B;
        qsort(pos, (size_t)k, sizeof(int32_t), sort_i32);
        qsort(slots, (size_t)k, sizeof(int32_t), sort_i32);
        CHECKF(memcmp(pos, slots, sizeof(int32_t) * (size_t)k) == 0, "key fmt %d: GPU slots of a child wrong", kf);
        CHECK(memcmp(pc, pp2, sizeof(int32_t) * (2007 / B)) == 0 && pc[2007 / B] != pp2[2007 / B]);
        free(pos);
        free(slots);
        qset_free(&qs);
        CHECK(GBOTH(p, hisa_seq_close(p->cpu, P), hisa_seq_close(p->gpu, P)) == 0);
        gp_compare_cache(ctx, p, "parent closed");
        for (int mode = 0; mode < 2; mode++) gj_decode(ctx, p, all + 1, 2, 2, HISA_Q_FP8, (hisa_mode)mode, 21 + (uint64_t)mode, "parent closed");
        CHECK(GBOTH(p, hisa_seq_close(p->cpu, C), hisa_seq_close(p->gpu, C)) == 0);
        CHECK(GBOTH(p, hisa_seq_close(p->cpu, D), hisa_seq_close(p->gpu, D)) == 0);
        hisa_memory_report rc, rg;
        CHECK(hisa_memory_report_get(p->cpu, &rc) == HISA_OK && hisa_memory_report_get(p->gpu, &rg) == HISA_OK);
        CHECK(rc.pages_used == 0 && rg.pages_used == 0 && rg.pages_shared == 0 && rg.pages_free == rg.pages_total);
        gpair_close(p);
    }
}

#else /* !HISA_CUDA */

HISA_TEST(engine_gpu_paths) { SKIP("no CUDA device"); }

#endif
