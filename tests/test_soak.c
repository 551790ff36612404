/* test_soak.c: the model-based soak (issue 6).
 *
 * A random driver issues operations against a small runtime: open, extend + write (prefill
 * appends), decode appends (extend by one, write the last position), overwrites by batch and by
 * range (fp32 keys, fp8 codes, payload), HISA and flat decode selections (positions or slots),
 * prefill selections, truncate, close, fork (hisa_seq_fork: of any open sequence, forks of forks
 * included, at any length from 0 to the parent's, multiples of B and B +- 1 among them), on up to
 * max_seqs sequences, with a page pool far smaller than max_seqs full contexts so that exhaustion
 * is reached again and again; and deliberately bad calls, each with one defect, that must fail
 * with their code and change nothing. Writes that touch a page several sequences share (random
 * overwrites, and deliberate ones) must fail with HISA_ESHARED and change nothing; truncating into
 * a shared page gives the sequence its own copy, or fails with HISA_EPOOL when no page is free.
 *
 * After every step a plain model (lengths, the expected dequantized key and payload of every
 * written position) is checked against the runtime:
 *   - every sequence's length; every page free, or held by exactly the set of open sequences the
 *     model says share it (the model keeps its own page handles: a fork shares the parent's
 *     complete blocks below its length and copies a partial last one; runtime page ids and model
 *     handles must correspond one to one), through hisa_seq_pages, the free stack, page_refs and
 *     hisa_memory_report (pages_used = distinct held pages, pages_shared = those held by more than
 *     one sequence; none lost);
 *   - for the blocks the step touched (and for every block on a periodic sweep): the written
 *     mask, every stored key (bit-exact with the model's independent quantization), the payload,
 *     and the block summary by its definition (kvcache/layout.h): with sum the fp32 sum of the
 *     model's dequantized keys of the block's written tokens, added in offset order from 0, the
 *     bf16 mean is bf16_rne(sum / count) bit for bit (0 for an empty block), and where the
 *     sequence's running-sum slot names the block's page, the slot holds sum bit for bit;
 *   - every open sequence's running-sum slot (sum_pages) names -1 or one of its own pages;
 *   - every selection against tests/common.c's double-precision brute force over the model's
 *     keys and the runtime's block means, under the SPEC's agreement rule (hisa_agree), with the
 *     SPEC's block near-tie rule where the kept blocks differ.
 * A child's model is its parent's first len positions (keys, written bits, payload); from then on
 * each side's model changes on its own, and selections of parents and children alike are checked.
 * It prints the number of operations, of errors returned on purpose, of pool exhaustions, of
 * running sums compared, of forks and of shared-page writes refused, and of divergences, which
 * must be 0.
 *
 * Length: HISA_SOAK_OPS (environment) operations in all, split between an fp8 and a bf16 runtime;
 * 20,000 by default (make test), 1,000,000 with `make soak`. On a GPU the same driver runs a CUDA
 * runtime (HISA_HOST_IO) in lockstep with the CPU one: same return codes, same tables, its stored
 * data against the same model, its selections against the brute force over its own means. */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/internal.h"
#include "common.h"
#include "model.h"
#include "test.h"

#if HISA_CUDA
#include <cuda_runtime_api.h>
#endif

#define SK_H 4
#define SK_B 32
#define SK_M 4
#define SK_K 48
#define SK_CTX 600
#define SK_SEQS 6
#define SK_LAYERS 2
#define SK_PAGES 40
#define SK_BATCH 4
#define SK_PREFILL 64
#define SK_PAYLOAD 8
#define SK_PPS ((SK_CTX + SK_B - 1) / SK_B)
#define SK_MAXQ 6 /* queries per prefill selection */
#define SK_SWEEP 128 /* full data check every this many steps */

/* --- model --------------------------------------------------------------------------------- */
typedef struct {
    int open;
    int32_t len;
    uint64_t seed; /* keys of structured writes */
    float deq[SK_LAYERS][SK_CTX][128];     /* the key as the cache must store it, dequantized */
    uint8_t written[SK_LAYERS][SK_CTX];
    uint8_t pay[SK_LAYERS][SK_CTX][SK_PAYLOAD];
    uint8_t pay_valid[SK_LAYERS][SK_CTX];
    int32_t pg[SK_PPS]; /* the model's page handle of each block (-1 past the length) */
    int32_t depth;      /* 0: opened; d > 0: a fork of a sequence of depth d - 1 */
} sk_seq;

typedef struct {
    hisa_runtime *rt;
    int cuda;
} sk_be;

typedef struct {
    hisa_test_ctx *ctx;
    const char *name;
    int32_t fmt, payload;
    sk_be be[2]; /* [0] CPU, [1] CUDA twin (rt NULL when none) */
    int n_be;
    sk_seq *seq; /* [SK_SEQS], indexed by the runtime's sequence id */
    uint64_t rng;
    /* blocks touched by the current step */
    uint8_t dirty[SK_SEQS][SK_LAYERS][SK_PPS];
    /* counters */
    int64_t ops, calls, errors_on_purpose, pool_exhausted, pool_full_seen, selections, divergences;
    int64_t near_tie_blocks, sums_checked;
    int64_t forks, forks_of_forks, fork_partial, fork_refused, eshared, eshared_random, trunc_copies;
    int64_t trunc_epool, fork_epool, shared_seen, max_shared;
    /* the model's page pool: holders of each handle (0: free) */
    int32_t mref[SK_PAGES];
    /* scratch */
    float *keys, *q, *w, *I, *J, *means;
    uint8_t *codes, *payload_buf, *snap_host, *snap_dev, *page_buf;
    float *scales;
    int32_t *out, *ref, *out_twin;
} sk;

static void diverge(sk *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void diverge(sk *s, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s->divergences++;
    hisa_test_fail(s->ctx, __FILE__, __LINE__, "%s op %lld: %s", s->name, (long long)s->ops, msg);
}

static uint32_t rnd(sk *s, uint32_t n) { return n ? (uint32_t)(hisa_test_rng(&s->rng) % n) : 0; }
static int32_t blocks_of(int32_t len) { return (len + SK_B - 1) / SK_B; }

/* --- independent quantization (written from the SPEC, not from kvcache/quant.c) ---------- */
/* RNE to e4m3fn, saturating at 448; returns the value. The quantum of a is 2^(E - 3) for
 * a in [2^E, 2^(E+1)), E >= -6, and 2^-9 below 2^-6; an even multiple of the quantum is an even
 * code, so rintf's ties-to-even is the SPEC's. */
static float model_e4m3(float x) {
    float a = fabsf(x), v;
    if (a >= 448.0f) {
        v = 448.0f;
    } else if (a < 0x1p-6f) {
        v = rintf(a * 512.0f) * 0x1p-9f;
    } else {
        int E;
        frexpf(a, &E); /* a = f 2^E, f in [0.5, 1) */
        float quantum = ldexpf(1.0f, E - 1 - 3);
        v = rintf(a / quantum) * quantum;
        if (v > 448.0f) v = 448.0f;
    }
    return signbit(x) ? -v : v;
}

static float model_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}
/* The dequantized key the cache must hold for fp32 input. */
static void model_store_keys(int32_t fmt, const float *x, float *deq) {
    if (fmt == HISA_KEY_BF16) {
        for (int d = 0; d < 128; d++) deq[d] = model_bf16(x[d]);
        return;
    }
    float amax = 0.0f;
    for (int d = 0; d < 128; d++) amax = fmaxf(amax, fabsf(x[d]));
    float scale = amax / 448.0f; /* SPEC: amax / 448, 1 where that is 0 */
    if (!(scale > 0.0f)) scale = 1.0f;
    for (int d = 0; d < 128; d++) deq[d] = model_e4m3(x[d] / scale) * scale;
}
static void model_store_codes(const uint8_t *codes, float scale, float *deq) {
    for (int d = 0; d < 128; d++) {
        float v = hisa_tmodel_e4m3_value(codes[d] & 0x7f);
        deq[d] = ((codes[d] & 0x80) ? -v : v) * scale;
    }
}

/* --- backends ------------------------------------------------------------------------------ */
static void be_fetch(sk *s, const sk_be *b, void *dst, const void *src, size_t n) {
#if HISA_CUDA
    if (b->cuda) {
        if (cudaMemcpy(dst, src, n, cudaMemcpyDeviceToHost) != cudaSuccess)
            diverge(s, "cudaMemcpy of %zu bytes failed", n);
        return;
    }
#endif
    (void)s;
    (void)b;
    memcpy(dst, src, n);
}

/* --- structural check: lengths, pages, report ---------------------------------------------- */
static int32_t model_free_pages(const sk *s) {
    int32_t n = 0;
    for (int32_t h = 0; h < SK_PAGES; h++) n += s->mref[h] == 0;
    return n;
}
static int32_t model_shared_pages(const sk *s) {
    int32_t n = 0;
    for (int32_t h = 0; h < SK_PAGES; h++) n += s->mref[h] > 1;
    return n;
}
/* Is block blk of sq held by more than one sequence (then nobody may write it)? */
static int model_shared(const sk *s, int32_t sq, int32_t blk) {
    int32_t h = s->seq[sq].pg[blk];
    return h >= 0 && s->mref[h] > 1;
}
/* A free handle (the model's, unrelated to the runtime's page ids). */
static int32_t model_take(sk *s) {
    for (int32_t h = 0; h < SK_PAGES; h++)
        if (s->mref[h] == 0) {
            s->mref[h] = 1;
            return h;
        }
    return -1;
}
/* Let go of blocks [from, blocks_of(len)) of sq. */
static void model_release(sk *s, int32_t sq, int32_t from) {
    sk_seq *m = &s->seq[sq];
    for (int32_t blk = from; blk < blocks_of(m->len); blk++) {
        if (m->pg[blk] >= 0) s->mref[m->pg[blk]]--;
        m->pg[blk] = -1;
    }
}
static int32_t n_open_seqs(const sk *s) {
    int32_t n = 0;
    for (int32_t i = 0; i < SK_SEQS; i++) n += s->seq[i].open;
    return n;
}

static void check_struct(sk *s, const sk_be *b, int32_t pages_of[SK_SEQS][SK_PPS]) {
    hisa_runtime *rt = b->rt;
    const char *who = b->cuda ? "cuda" : "cpu";
    /* runtime page id <-> model handle, one to one; holders of each runtime page */
    int32_t p_to_h[SK_PAGES], h_to_p[SK_PAGES], holders[SK_PAGES], first_holder[SK_PAGES];
    for (int32_t i = 0; i < SK_PAGES; i++) p_to_h[i] = h_to_p[i] = first_holder[i] = -1, holders[i] = 0;
    int32_t open = 0;
    int64_t tokens = 0;
    for (int32_t sq = -1; sq <= SK_SEQS; sq++) {
        int32_t len = -5, np = -5, pages[SK_PPS + 1];
        int err = hisa_seq_length(rt, sq, &len);
        int want_open = sq >= 0 && sq < SK_SEQS && s->seq[sq].open;
        if (err != (want_open ? HISA_OK : HISA_ESEQ)) {
            diverge(s, "%s seq %d: hisa_seq_length %d, model open %d", who, sq, err, want_open);
            continue;
        }
        if (!want_open) continue;
        open++;
        tokens += len;
        if (len != s->seq[sq].len) diverge(s, "%s seq %d: length %d, model %d", who, sq, len, s->seq[sq].len);
        if (hisa_seq_pages(rt, sq, pages, SK_PPS + 1, &np) != HISA_OK || np != blocks_of(s->seq[sq].len)) {
            diverge(s, "%s seq %d: hisa_seq_pages gives %d pages for length %d", who, sq, np, s->seq[sq].len);
            continue;
        }
        for (int32_t i = 0; i < np; i++) {
            int32_t p = pages[i], h = s->seq[sq].pg[i];
            if (p < 0 || p >= SK_PAGES) {
                diverge(s, "%s seq %d block %d: page %d out of range", who, sq, i, p);
                continue;
            }
            if (h < 0 || h >= SK_PAGES) {
                diverge(s, "seq %d block %d: the model has no page handle (%d)", sq, i, h);
                continue;
            }
            if (p_to_h[p] < 0 && h_to_p[h] < 0) {
                p_to_h[p] = h;
                h_to_p[h] = p;
            } else if (p_to_h[p] != h || h_to_p[h] != p) {
                /* p also names another model page (held twice where the model has two pages), or the
                 * model's page is another runtime page (copied where the model shares) */
                diverge(s, "%s seq %d block %d: page %d is held by seq %d too, but the model %s", who, sq, i, p,
                        first_holder[p], p_to_h[p] != h && p_to_h[p] >= 0
                            ? "gives them different pages" : "shares this block with a sequence on another page");
            }
            if (holders[p]++ == 0) first_holder[p] = sq;
            if (pages_of) pages_of[sq][i] = p;
        }
    }
    int32_t held = 0, shared = 0;
    for (int32_t p = 0; p < SK_PAGES; p++) {
        held += holders[p] > 0;
        shared += holders[p] > 1;
        if (rt->r.page_refs[p] != holders[p])
            diverge(s, "%s page %d: page_refs %d, held by %d open sequences", who, p, rt->r.page_refs[p], holders[p]);
    }
    if (!b->cuda) { /* the free stack holds exactly the pages nobody holds */
        uint8_t listed[SK_PAGES] = {0};
        for (int32_t i = 0; i < rt->kv.n_free_pages; i++) {
            int32_t p = rt->r.free_pages[i];
            if (p < 0 || p >= SK_PAGES || holders[p] || listed[p])
                diverge(s, "free page %d is held or listed twice", p);
            else listed[p] = 1;
        }
        for (int32_t p = 0; p < SK_PAGES; p++)
            if (!holders[p] && !listed[p]) diverge(s, "page %d is lost: neither free nor held", p);
    }
    hisa_memory_report rep;
    if (hisa_memory_report_get(rt, &rep) != HISA_OK) {
        diverge(s, "memory report failed");
        return;
    }
    int32_t want_free = model_free_pages(s), want_shared = model_shared_pages(s);
    if (rep.pages_total != SK_PAGES || rep.pages_used != held || rep.pages_free != want_free ||
        rep.pages_used + rep.pages_free != SK_PAGES || rep.pages_shared != shared || shared != want_shared ||
        rep.seqs_open != open || rep.tokens != tokens || rep.pages_high_water < rep.pages_used ||
        rep.seqs_high_water < rep.seqs_open || rep.poisoned)
        diverge(s, "%s report: used %d free %d (model %d) shared %d (held by several %d, model %d) open %d tokens "
                "%lld; distinct pages held %d, open %d, tokens %lld", who, rep.pages_used, rep.pages_free, want_free,
                rep.pages_shared, shared, want_shared, rep.seqs_open, (long long)rep.tokens, held, open,
                (long long)tokens);
    if (rep.pages_free == 0) s->pool_full_seen++;
    if (shared) s->shared_seen++;
    if (shared > s->max_shared) s->max_shared = shared;
}

/* --- data check of one block --------------------------------------------------------------- */
/* The bits of a float, to compare sums and means exactly (-0 and +0 differ; a NaN is no match). */
static uint32_t f32_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

/* sum_pages of backend b, [SK_LAYERS, SK_SEQS]. */
static void fetch_sum_pages(sk *s, const sk_be *b, int32_t *sum_pages) {
    be_fetch(s, b, sum_pages, b->rt->r.sum_pages, sizeof(int32_t) * SK_LAYERS * SK_SEQS);
}

/* slot_page: what seq's running-sum slot of layer l names (sum_pages). */
static void check_block(sk *s, const sk_be *b, int32_t sq, int32_t l, int32_t blk, int32_t page, int32_t slot_page) {
    hisa_runtime *rt = b->rt;
    const sk_seq *m = &s->seq[sq];
    const char *who = b->cuda ? "cuda" : "cpu";
    int64_t si = hisa__summary_index(rt, l, page);
    uint32_t mask[SK_B / 32];
    uint16_t means[128];
    be_fetch(s, b, mask, rt->r.block_masks + si * rt->g.mask_words, sizeof mask);
    be_fetch(s, b, means, rt->r.block_means + si * 128, sizeof means);
    be_fetch(s, b, s->page_buf, hisa__page(rt, l, page), (size_t)rt->g.page_bytes);
    uint8_t pay[SK_B * SK_PAYLOAD];
    if (s->payload)
        be_fetch(s, b, pay, rt->r.payload + ((int64_t)l * SK_PAGES * SK_B + (int64_t)page * SK_B) * SK_PAYLOAD,
                 sizeof pay);
    /* the block's sum by its definition: the model's keys, written offsets in order from 0, in
     * fp32 (plain float additions, as kvcache/host.c's recompute) */
    float sum[128] = {0};
    int32_t cnt = 0;
    for (int32_t off = 0; off < SK_B; off++) {
        int32_t pos = blk * SK_B + off;
        int want = pos < m->len && m->written[l][pos];
        int bit = (int)(mask[off / 32] >> (off % 32) & 1);
        if (bit != want) {
            diverge(s, "%s seq %d layer %d pos %d: written bit %d, model %d", who, sq, l, pos, bit, want);
            return;
        }
        if (!want) continue;
        cnt++;
        float deq[128];
        hisa_tmodel_dequant(s->fmt, SK_B, s->page_buf, off, deq);
        for (int d = 0; d < 128; d++) {
            if (deq[d] != m->deq[l][pos][d]) {
                diverge(s, "%s seq %d layer %d pos %d dim %d: stored key %.9g, model %.9g", who, sq, l, pos, d,
                        deq[d], m->deq[l][pos][d]);
                return;
            }
            sum[d] += m->deq[l][pos][d];
        }
        if (s->payload && m->pay_valid[l][pos] && memcmp(pay + off * SK_PAYLOAD, m->pay[l][pos], SK_PAYLOAD))
            diverge(s, "seq %d layer %d pos %d: payload differs", sq, l, pos);
    }
    for (int d = 0; d < 128; d++) {
        /* the model's own bf16 rounding (RNE), not kvcache/quant.c's */
        uint16_t want = cnt ? (uint16_t)(f32_bits(model_bf16(sum[d] / (float)cnt)) >> 16) : 0;
        if (means[d] != want) {
            diverge(s, "%s seq %d layer %d block %d (page %d) dim %d: mean 0x%04x (%.9g), want 0x%04x (%.9g) "
                    "= bf16(%.9g / %d)", who, sq, l, blk, page, d, means[d], hisa__bf16_to_f32(means[d]), want,
                    hisa__bf16_to_f32(want), sum[d], cnt);
            return;
        }
    }
    if (slot_page != page) return;
    float got[128];
    be_fetch(s, b, got, rt->r.block_sums + hisa__layer_index(l, SK_SEQS, sq) * 128, sizeof got);
    s->sums_checked++;
    for (int d = 0; d < 128; d++)
        if (f32_bits(got[d]) != f32_bits(sum[d])) {
            diverge(s, "%s seq %d layer %d block %d (page %d) dim %d: running sum %.9g (0x%08x), offset-order "
                    "sum %.9g (0x%08x) of %d tokens", who, sq, l, blk, page, d, got[d], f32_bits(got[d]), sum[d],
                    f32_bits(sum[d]), cnt);
            return;
        }
}

static void check_data(sk *s, int full) {
    for (int bi = 0; bi < s->n_be; bi++) {
        int32_t pages_of[SK_SEQS][SK_PPS], sum_pages[SK_LAYERS * SK_SEQS];
        memset(pages_of, 0xff, sizeof pages_of); /* -1 where check_struct found no valid page */
        check_struct(s, &s->be[bi], pages_of);
        fetch_sum_pages(s, &s->be[bi], sum_pages);
        for (int32_t sq = 0; sq < SK_SEQS; sq++) {
            if (!s->seq[sq].open) continue;
            int32_t nb = blocks_of(s->seq[sq].len);
            for (int32_t l = 0; l < SK_LAYERS; l++) {
                int32_t slot_page = sum_pages[hisa__layer_index(l, SK_SEQS, sq)], own = slot_page == -1;
                for (int32_t blk = 0; blk < nb; blk++) own |= pages_of[sq][blk] == slot_page;
                if (!own)
                    diverge(s, "%s seq %d layer %d: the running sum names page %d, not -1 nor one of the %d pages "
                            "of the sequence", s->be[bi].cuda ? "cuda" : "cpu", sq, l, slot_page, nb);
                for (int32_t blk = 0; blk < nb; blk++)
                    if ((full || s->dirty[sq][l][blk]) && pages_of[sq][blk] >= 0)
                        check_block(s, &s->be[bi], sq, l, blk, pages_of[sq][blk], own ? slot_page : -1);
            }
        }
    }
    memset(s->dirty, 0, sizeof s->dirty);
}

/* Key data for n tokens of seq starting at pos0, in one of several styles. */
static void gen_keys(sk *s, int32_t sq, int32_t pos0, int32_t n, float *keys) {
    uint32_t style = rnd(s, 100);
    if (style < 60) {
        hisa_tgen_keys(s->seq[sq].seed, pos0, n, keys);
    } else if (style < 88) {
        static const float scales[] = {0.01f, 1.0f, 30.0f, 1000.0f};
        float sc = scales[rnd(s, 4)];
        for (int32_t i = 0; i < n * 128; i++) keys[i] = sc * hisa_test_gauss(&s->rng);
    } else if (style < 94) {
        memset(keys, 0, sizeof(float) * 128 * (size_t)n); /* fp8 scale 1, every score 0: ties */
    } else {
        float base[128];
        for (int d = 0; d < 128; d++) base[d] = hisa_test_gauss(&s->rng);
        for (int32_t i = 0; i < n; i++) memcpy(keys + i * 128, base, sizeof base); /* equal keys */
    }
}

/* --- calls on every backend ---------------------------------------------------------------- */
/* Runs a call on the CPU runtime and on the twin; the twin's code must match. cpu_only: a call
 * the CUDA backend cannot judge the same way (unwritten keys are detected on the CPU only). */
#define ON_ALL(s, err, cpu_only, CALL)                                                         \
    do {                                                                                       \
        hisa_runtime *rt_ = (s)->be[0].rt;                                                     \
        uint32_t io_ = 0;                                                                      \
        (void)io_;                                                                             \
        (err) = (CALL);                                                                        \
        (s)->calls++;                                                                          \
        if ((s)->n_be > 1 && !(cpu_only)) {                                                    \
            rt_ = (s)->be[1].rt;                                                               \
            io_ = HISA_HOST_IO;                                                                \
            int twin_err_ = (CALL);                                                            \
            if (twin_err_ != (err))                                                            \
                diverge((s), "line %d: cuda returned %d (%s), cpu %d", __LINE__, twin_err_,    \
                        hisa_strerror(twin_err_), (err));                                      \
        }                                                                                      \
    } while (0)

/* "An error changes nothing": the CPU runtime's arenas, byte for byte. */
static void snapshot(sk *s) {
    hisa__arena *a = &s->be[0].rt->arena;
    memcpy(s->snap_host, a->base[HISA__ARENA_HOST], a->bytes[HISA__ARENA_HOST]);
    memcpy(s->snap_dev, a->base[HISA__ARENA_DEVICE], a->bytes[HISA__ARENA_DEVICE]);
}
static void check_unchanged(sk *s, const char *what) {
    hisa__arena *a = &s->be[0].rt->arena;
    if (memcmp(s->snap_host, a->base[HISA__ARENA_HOST], a->bytes[HISA__ARENA_HOST]) ||
        memcmp(s->snap_dev, a->base[HISA__ARENA_DEVICE], a->bytes[HISA__ARENA_DEVICE]))
        diverge(s, "%s: the rejected call changed the runtime's memory", what);
}

static int expect(sk *s, int err, int want, const char *what) {
    if (err != want) {
        diverge(s, "%s: returned %d (%s), model expects %d (%s)", what, err, hisa_strerror(err), want,
                hisa_strerror(want));
        return 0;
    }
    if (want != HISA_OK) s->errors_on_purpose++;
    if (want == HISA_ESHARED) s->eshared++;
    return 1;
}

static int model_extend_code(const sk *s, int32_t sq, int32_t n) {
    const sk_seq *m = &s->seq[sq];
    if (n < 0) return HISA_EINVAL;
    if ((int64_t)m->len + n > SK_CTX) return HISA_ELIMIT;
    if (blocks_of(m->len + n) - blocks_of(m->len) > model_free_pages(s)) return HISA_EPOOL;
    return HISA_OK;
}

static void model_extend(sk *s, int32_t sq, int32_t n) {
    sk_seq *m = &s->seq[sq];
    for (int32_t blk = blocks_of(m->len); blk < blocks_of(m->len + n); blk++) {
        for (int32_t l = 0; l < SK_LAYERS; l++) s->dirty[sq][l][blk] = 1; /* a fresh page: empty summaries */
        m->pg[blk] = model_take(s);
    }
    m->len += n;
}

static int32_t pick_open(sk *s) {
    int32_t ids[SK_SEQS], n = 0;
    for (int32_t i = 0; i < SK_SEQS; i++)
        if (s->seq[i].open) ids[n++] = i;
    return n ? ids[rnd(s, (uint32_t)n)] : -1;
}

static int fully_written(const sk_seq *m, int32_t l, int32_t t) {
    for (int32_t p = 0; p <= t; p++)
        if (!m->written[l][p]) return 0;
    return 1;
}

static void do_extend(sk *s, int32_t sq, int32_t n) {
    int err;
    int want = model_extend_code(s, sq, n);
    ON_ALL(s, err, 0, hisa_seq_extend(rt_, sq, n));
    if (expect(s, err, want, "extend") && err == HISA_OK) model_extend(s, sq, n);
    if (want == HISA_EPOOL) s->pool_exhausted++;
}

/* --- fork, truncate, close: the model's pages follow the runtime's ----------------------------- */
static int model_fork_code(const sk *s, int32_t parent, int32_t len) {
    if (parent < 0 || parent >= SK_SEQS || !s->seq[parent].open) return HISA_ESEQ;
    if (len < 0 || len > s->seq[parent].len) return HISA_ERANGE;
    if (n_open_seqs(s) == SK_SEQS) return HISA_ESEQFULL;
    if (len % SK_B && model_free_pages(s) == 0) return HISA_EPOOL; /* the partial last page is copied */
    return HISA_OK;
}

/* hisa_seq_fork on every backend, against the model (the children's ids must agree). A refused
 * fork must change nothing. The child's model is the parent's first len positions; its complete
 * blocks are the parent's pages, a partial last one a fresh page. */
static int do_fork(sk *s, int32_t parent, int32_t len, const char *what) {
    int want = model_fork_code(s, parent, len);
    int32_t ids[2] = {-5, -5};
    if (want != HISA_OK) snapshot(s);
    int err = hisa_seq_fork(s->be[0].rt, parent, len, &ids[0]);
    s->calls++;
    if (s->n_be > 1) {
        int twin_err = hisa_seq_fork(s->be[1].rt, parent, len, &ids[1]);
        if (twin_err != err || ids[1] != ids[0])
            diverge(s, "%s: cuda returned %d child %d, cpu %d child %d", what, twin_err, ids[1], err, ids[0]);
    }
    if (!expect(s, err, want, what)) return err;
    if (err) {
        check_unchanged(s, what);
        if (ids[0] != -5) diverge(s, "%s: the refused fork wrote a child id (%d)", what, ids[0]);
        if (err == HISA_EPOOL) s->fork_epool++;
        s->fork_refused++;
        return err;
    }
    int32_t child = ids[0];
    if (child < 0 || child >= SK_SEQS || s->seq[child].open) {
        diverge(s, "%s: child id %d, open already or out of range", what, child);
        return err;
    }
    sk_seq *pm = &s->seq[parent], *c = &s->seq[child];
    c->open = 1;
    c->len = len;
    c->seed = pm->seed; /* structured writes give both sides the same keys */
    c->depth = pm->depth + 1;
    memset(c->pg, 0xff, sizeof c->pg);
    for (int32_t blk = 0; blk < len / SK_B; blk++) {
        c->pg[blk] = pm->pg[blk];
        s->mref[c->pg[blk]]++;
    }
    if (len % SK_B) {
        c->pg[len / SK_B] = model_take(s);
        s->fork_partial++;
    }
    for (int32_t l = 0; l < SK_LAYERS; l++) {
        memcpy(c->deq[l], pm->deq[l], sizeof(float) * 128 * (size_t)len);
        memset(c->written[l], 0, sizeof c->written[l]);
        memcpy(c->written[l], pm->written[l], (size_t)len);
        memset(c->pay_valid[l], 0, sizeof c->pay_valid[l]);
        memcpy(c->pay_valid[l], pm->pay_valid[l], (size_t)len);
        memcpy(c->pay[l], pm->pay[l], (size_t)len * SK_PAYLOAD);
        for (int32_t blk = 0; blk < blocks_of(len); blk++) s->dirty[child][l][blk] = 1;
    }
    s->forks++;
    if (pm->depth > 0) s->forks_of_forks++;
    return err;
}

/* A fork length for a parent of length len: 0, len, multiples of B, B +- 1 (k B - 1, k B + 1),
 * or any. */
static int32_t pick_fork_len(sk *s, int32_t len) {
    switch (rnd(s, 8)) {
    case 0: return 0;
    case 1: return len;
    case 2: return SK_B * (int32_t)rnd(s, (uint32_t)(len / SK_B + 1));
    case 3:
        if (len >= SK_B - 1) return SK_B * (1 + (int32_t)rnd(s, (uint32_t)((len + 1) / SK_B))) - 1;
        break;
    case 4:
        if (len >= SK_B + 1) return SK_B * (1 + (int32_t)rnd(s, (uint32_t)((len - 1) / SK_B))) + 1;
        break;
    default: break;
    }
    return (int32_t)rnd(s, (uint32_t)len + 1);
}

/* Truncate sq to len on every backend. Into a shared block (len % B != 0) the sequence gets its own
 * copy of that page, one free page needed, else HISA_EPOOL and nothing changes. */
static void do_truncate(sk *s, int32_t sq, int32_t len, const char *what) {
    sk_seq *m = &s->seq[sq];
    int copy = (len % SK_B) && len < m->len && model_shared(s, sq, len / SK_B);
    int want = copy && model_free_pages(s) == 0 ? HISA_EPOOL : HISA_OK, err;
    if (want != HISA_OK) snapshot(s);
    ON_ALL(s, err, 0, hisa_seq_truncate(rt_, sq, len));
    if (!expect(s, err, want, what)) return;
    if (err) {
        check_unchanged(s, what);
        s->trunc_epool++;
        return;
    }
    model_release(s, sq, blocks_of(len));
    if (copy) {
        s->mref[m->pg[len / SK_B]]--;
        m->pg[len / SK_B] = model_take(s);
        s->trunc_copies++;
    }
    for (int32_t l = 0; l < SK_LAYERS; l++) {
        memset(m->written[l] + len, 0, (size_t)(SK_CTX - len));
        memset(m->pay_valid[l] + len, 0, (size_t)(SK_CTX - len));
    }
    m->len = len;
    if (len % SK_B) /* the partial last block was recomputed from its remaining keys (or copied) */
        for (int32_t l = 0; l < SK_LAYERS; l++) s->dirty[sq][l][len / SK_B] = 1;
}

/* A random (sequence, block) held by several sequences; 0 when there is none. */
static int pick_shared(sk *s, int32_t *sq_out, int32_t *blk_out) {
    int32_t n = 0, cand[SK_SEQS * SK_PPS];
    for (int32_t sq = 0; sq < SK_SEQS; sq++)
        for (int32_t blk = 0; s->seq[sq].open && blk < blocks_of(s->seq[sq].len); blk++)
            if (model_shared(s, sq, blk)) cand[n++] = sq * SK_PPS + blk;
    if (!n) return 0;
    int32_t c = cand[rnd(s, (uint32_t)n)];
    *sq_out = c / SK_PPS;
    *blk_out = c % SK_PPS;
    return 1;
}

/* Extend open sequences (reserved, unwritten positions) until the pool is empty, as far as their
 * max_context allows. */
static void fill_pool(sk *s) {
    uint32_t start = rnd(s, SK_SEQS);
    for (int32_t i = 0; i < SK_SEQS && model_free_pages(s) > 0; i++) {
        int32_t c = (int32_t)((start + (uint32_t)i) % SK_SEQS);
        if (!s->seq[c].open) continue;
        int32_t len = s->seq[c].len, have = blocks_of(len), take = blocks_of(SK_CTX) - have;
        if (take > model_free_pages(s)) take = model_free_pages(s);
        if (take <= 0) continue;
        int32_t new_len = (have + take) * SK_B;
        if (new_len > SK_CTX) new_len = SK_CTX;
        do_extend(s, c, new_len - len);
    }
}

/* Write fp32 keys for [pos0, pos0 + n) of layer l by ranges of at most SK_PREFILL. */
static void do_write_range(sk *s, int32_t sq, int32_t l, int32_t pos0, int32_t n, int with_payload) {
    sk_seq *m = &s->seq[sq];
    for (int32_t p = pos0; p < pos0 + n; p += SK_PREFILL) {
        int32_t cnt = pos0 + n - p < SK_PREFILL ? pos0 + n - p : SK_PREFILL;
        gen_keys(s, sq, p, cnt, s->keys);
        for (int32_t i = 0; i < cnt * SK_PAYLOAD; i++) s->payload_buf[i] = (uint8_t)rnd(s, 256);
        hisa_write w = {.layer = l, .n_tokens = cnt, .keys = s->keys,
                        .payload = with_payload ? s->payload_buf : NULL};
        int err, shared = 0;
        for (int32_t blk = p / SK_B; blk <= (p + cnt - 1) / SK_B; blk++) shared |= model_shared(s, sq, blk);
        if (shared) { /* a page several sequences hold: refused, nothing changes */
            snapshot(s);
            ON_ALL(s, err, 0, (w.flags = io_, hisa_write_range(rt_, sq, p, &w)));
            if (expect(s, err, HISA_ESHARED, "write_range over a shared page")) s->eshared_random++;
            check_unchanged(s, "write_range over a shared page");
            continue;
        }
        ON_ALL(s, err, 0, (w.flags = io_, hisa_write_range(rt_, sq, p, &w)));
        if (!expect(s, err, HISA_OK, "write_range")) return;
        for (int32_t i = 0; i < cnt; i++) {
            model_store_keys(s->fmt, s->keys + i * 128, m->deq[l][p + i]);
            m->written[l][p + i] = 1;
            s->dirty[sq][l][(p + i) / SK_B] = 1;
            if (with_payload) {
                memcpy(m->pay[l][p + i], s->payload_buf + i * SK_PAYLOAD, SK_PAYLOAD);
                m->pay_valid[l][p + i] = 1;
            }
        }
    }
}

/* A batch write_keys of one token per sequence in ids (distinct), at pos[i] (NULL: the last). */
static void do_write_batch(sk *s, const int32_t *ids, const int32_t *pos, int32_t n, int32_t l) {
    int use_codes = s->fmt == HISA_KEY_FP8 && rnd(s, 3) == 0, with_payload = s->payload && rnd(s, 2);
    for (int32_t i = 0; i < n; i++) {
        int32_t p = pos ? pos[i] : s->seq[ids[i]].len - 1;
        gen_keys(s, ids[i], p, 1, s->keys + i * 128);
        for (int d = 0; d < 128; d++) {
            uint8_t c = (uint8_t)rnd(s, 256);
            if ((c & 0x7f) == 0x7f) c ^= 1; /* no NaN codes: they are not keys */
            s->codes[i * 128 + d] = c;
        }
        s->scales[i] = 0.001f + (float)rnd(s, 10000) * 0.001f;
        for (int32_t j = 0; j < SK_PAYLOAD; j++) s->payload_buf[i * SK_PAYLOAD + j] = (uint8_t)rnd(s, 256);
    }
    hisa_write w = {.layer = l, .n_tokens = n, .seq_ids = ids, .positions = pos,
                    .keys = use_codes ? NULL : s->keys, .codes = use_codes ? s->codes : NULL,
                    .scales = use_codes ? s->scales : NULL, .payload = with_payload ? s->payload_buf : NULL};
    int err, shared = 0;
    for (int32_t i = 0; i < n; i++) shared |= model_shared(s, ids[i], (pos ? pos[i] : s->seq[ids[i]].len - 1) / SK_B);
    if (shared) { /* one token lands in a page several sequences hold: the whole batch is refused */
        snapshot(s);
        ON_ALL(s, err, 0, (w.flags = io_, hisa_write_keys(rt_, &w)));
        if (expect(s, err, HISA_ESHARED, "write_keys into a shared page")) s->eshared_random++;
        check_unchanged(s, "write_keys into a shared page");
        return;
    }
    ON_ALL(s, err, 0, (w.flags = io_, hisa_write_keys(rt_, &w)));
    if (!expect(s, err, HISA_OK, "write_keys")) return;
    for (int32_t i = 0; i < n; i++) {
        sk_seq *m = &s->seq[ids[i]];
        int32_t p = pos ? pos[i] : m->len - 1;
        if (use_codes) model_store_codes(s->codes + i * 128, s->scales[i], m->deq[l][p]);
        else model_store_keys(s->fmt, s->keys + i * 128, m->deq[l][p]);
        m->written[l][p] = 1;
        s->dirty[ids[i]][l][p / SK_B] = 1;
        if (with_payload) {
            memcpy(m->pay[l][p], s->payload_buf + i * SK_PAYLOAD, SK_PAYLOAD);
            m->pay_valid[l][p] = 1;
        }
    }
}

/* --- selection checks ---------------------------------------------------------------------- */
/* Block means of seq (layer l) as backend b holds them: the brute force ranks blocks by them. */
static void fetch_means(sk *s, const sk_be *b, int32_t sq, int32_t l, int32_t nb, float *means) {
    int32_t pages[SK_PPS], np;
    if (hisa_seq_pages(b->rt, sq, pages, SK_PPS, &np) != HISA_OK || np < nb) {
        diverge(s, "seq %d: pages for the means", sq);
        return;
    }
    for (int32_t blk = 0; blk < nb; blk++) {
        uint16_t raw[128];
        be_fetch(s, b, raw, b->rt->r.block_means + hisa__summary_index(b->rt, l, pages[blk]) * 128, sizeof raw);
        for (int d = 0; d < 128; d++) means[blk * 128 + d] = hisa__bf16_to_f32(raw[d]);
    }
}

typedef struct { float s; int32_t id; } sk_scored;
static int cmp_desc(const void *a, const void *b) {
    const sk_scored *x = a, *y = b;
    if (x->s != y->s) return x->s > y->s ? -1 : 1;
    return x->id - y->id;
}

/* Judge got (positions, -1 padded) for the query at t: the SPEC's agreement rule against the
 * brute force ref; where HISA's kept blocks may differ by a near-tie of J, against the top-k of
 * the candidates of a set of kept blocks an agreeing backend could have kept: blocks 0 and last,
 * every middle block with J > tau + eps (tau: the (m-2)-th best J), and, of the blocks within eps
 * of tau, those the answer draws tokens from plus, to make m - 2, the ones whose best token scores
 * lowest. */
static int judge(sk *s, int32_t n, int flat, const int32_t *ref, const int32_t *got, char *why, size_t wl) {
    if (hisa_agree(s->I, n, NULL, ref, got, SK_K, why, wl)) return 1;
    int32_t nb = blocks_of(n), last = nb - 1;
    if (flat || n <= SK_K || nb <= SK_M) return 0;
    sk_scored mid[SK_PPS];
    float max_abs = 0.0f;
    for (int32_t b = 1; b < last; b++) {
        mid[b - 1] = (sk_scored){s->J[b], b};
        max_abs = fmaxf(max_abs, fabsf(s->J[b]));
    }
    qsort(mid, (size_t)(last - 1), sizeof mid[0], cmp_desc);
    float tau = mid[SK_M - 3].s, eps = 1e-4f * max_abs;
    uint8_t kept[SK_PPS] = {0};
    int32_t n_kept = 0;
    kept[0] = kept[last] = 1;
    for (int32_t b = 1; b < last; b++)
        if (s->J[b] > tau + eps) { /* every agreeing backend keeps it */
            kept[b] = 1;
            n_kept++;
        }
    for (int32_t i = 0; i < SK_K && got[i] >= 0; i++) {
        int32_t b = got[i] / SK_B;
        if (got[i] >= n || kept[b]) continue;
        if (fabsf(s->J[b] - tau) > eps) return 0; /* from a block no agreeing backend keeps */
        kept[b] = 1;
        n_kept++;
    }
    if (n_kept > SK_M - 2) return 0;
    while (n_kept < SK_M - 2) { /* fill with the near-tie blocks least able to change the answer */
        int32_t best = -1;
        float best_max = INFINITY;
        for (int32_t b = 1; b < last; b++) {
            if (kept[b] || fabsf(s->J[b] - tau) > eps) continue;
            float mx = -INFINITY;
            for (int32_t p = b * SK_B; p < (b + 1) * SK_B && p < n; p++) mx = fmaxf(mx, s->I[p]);
            if (mx < best_max) {
                best_max = mx;
                best = b;
            }
        }
        if (best < 0) return 0; /* too few blocks near tau to make m - 2 */
        kept[best] = 1;
        n_kept++;
    }
    uint8_t is_cand[SK_CTX];
    sk_scored c[SK_CTX];
    int32_t nc = 0, ref2[SK_K];
    for (int32_t p = 0; p < n; p++) {
        is_cand[p] = kept[p / SK_B];
        if (is_cand[p]) c[nc++] = (sk_scored){s->I[p], p};
    }
    qsort(c, (size_t)nc, sizeof c[0], cmp_desc);
    for (int32_t i = 0; i < SK_K; i++) ref2[i] = i < nc ? c[i].id : -1;
    if (!hisa_agree(s->I, n, is_cand, ref2, got, SK_K, why, wl)) return 0;
    s->near_tie_blocks++;
    return 1;
}

/* Check one output row of backend b: slots to positions, then the brute force. */
static void check_row(sk *s, const sk_be *b, int32_t sq, int32_t l, int32_t t, int flat, int slots,
                      const float *q, const float *w, int32_t *row) {
    int32_t n = t + 1, nb = blocks_of(n);
    if (slots) {
        int32_t pages[SK_PPS], np;
        if (hisa_seq_pages(b->rt, sq, pages, SK_PPS, &np) != HISA_OK) return;
        for (int32_t i = 0; i < SK_K && row[i] >= 0; i++) {
            int32_t page = row[i] / SK_B, blk = 0;
            while (blk < np && pages[blk] != page) blk++;
            if (blk == np) {
                diverge(s, "seq %d: slot %d is on page %d, not one of the sequence's", sq, row[i], page);
                return;
            }
            row[i] = blk * SK_B + row[i] % SK_B;
        }
    }
    fetch_means(s, b, sq, l, nb, s->means);
    hisa_brute_select(&s->seq[sq].deq[l][0][0], s->means, n, SK_B, SK_M, SK_K, SK_H, q, w, flat, s->ref, s->I, s->J);
    char why[256];
    if (!judge(s, n, flat, s->ref, row, why, sizeof why))
        diverge(s, "%s %s selection seq %d layer %d t %d: %s", b->cuda ? "cuda" : "cpu", flat ? "flat" : "hisa",
                sq, l, t, why);
    s->selections++;
}

static void do_decode(sk *s) {
    int32_t l = (int32_t)rnd(s, SK_LAYERS), ids[SK_BATCH], n = 0;
    int32_t want_n = 1 + (int32_t)rnd(s, SK_BATCH);
    for (int32_t i = 0; i < SK_SEQS && n < want_n; i++) {
        int32_t sq = (int32_t)((i + rnd(s, SK_SEQS)) % SK_SEQS);
        int dup = 0;
        for (int32_t j = 0; j < n; j++) dup |= ids[j] == sq;
        if (!dup && s->seq[sq].open && s->seq[sq].len > 0 && fully_written(&s->seq[sq], l, s->seq[sq].len - 1))
            ids[n++] = sq;
    }
    if (!n) return;
    hisa_mode mode = rnd(s, 2) ? HISA_MODE_FLAT : HISA_MODE_HISA;
    uint32_t slots = rnd(s, 3) == 0 ? HISA_SLOTS : 0;
    for (int32_t i = 0; i < n; i++)
        hisa_tgen_query(hisa_test_rng(&s->rng), SK_H, rnd(s, 4) ? (int64_t)rnd(s, (uint32_t)s->seq[ids[i]].len) : -1,
                        s->q + i * SK_H * 128, s->w + i * SK_H);
    for (int bi = 0; bi < s->n_be; bi++) {
        int32_t *out = bi ? s->out_twin : s->out;
        for (int32_t i = 0; i < n * SK_K; i++) out[i] = -77;
        hisa_decode d = {.layer = l, .mode = mode, .n_seqs = n, .seq_ids = ids, .q = s->q, .w = s->w,
                         .out = out, .flags = slots | (bi ? HISA_HOST_IO : 0)};
        int err = hisa_select_decode(s->be[bi].rt, &d);
        s->calls++;
        if (!expect(s, err, HISA_OK, bi ? "cuda decode" : "decode")) continue;
        for (int32_t i = 0; i < n; i++)
            check_row(s, &s->be[bi], ids[i], l, s->seq[ids[i]].len - 1, mode == HISA_MODE_FLAT, slots != 0,
                      s->q + i * SK_H * 128, s->w + i * SK_H, out + i * SK_K);
    }
}

static void do_prefill(sk *s) {
    int32_t sq = pick_open(s), l = (int32_t)rnd(s, SK_LAYERS);
    if (sq < 0 || s->seq[sq].len == 0) return;
    sk_seq *m = &s->seq[sq];
    int32_t written = 0; /* the written prefix of layer l */
    while (written < m->len && m->written[l][written]) written++;
    if (!written) return;
    int32_t n_q = 1 + (int32_t)rnd(s, SK_MAXQ);
    if (n_q > written) n_q = written;
    int32_t t0 = (int32_t)rnd(s, (uint32_t)(written - n_q + 1));
    hisa_mode mode = rnd(s, 2) ? HISA_MODE_FLAT : HISA_MODE_HISA;
    uint32_t slots = rnd(s, 3) == 0 ? HISA_SLOTS : 0;
    for (int32_t i = 0; i < n_q; i++)
        hisa_tgen_query(hisa_test_rng(&s->rng), SK_H, (int64_t)rnd(s, (uint32_t)(t0 + i + 1)), s->q + i * SK_H * 128,
                        s->w + i * SK_H);
    for (int bi = 0; bi < s->n_be; bi++) {
        int32_t *out = bi ? s->out_twin : s->out;
        hisa_prefill p = {.layer = l, .mode = mode, .seq = sq, .t0 = t0, .n_q = n_q, .q = s->q, .w = s->w,
                          .out = out, .flags = slots | (bi ? HISA_HOST_IO : 0)};
        int err = hisa_select_prefill(s->be[bi].rt, &p);
        s->calls++;
        if (!expect(s, err, HISA_OK, bi ? "cuda prefill" : "prefill")) continue;
        for (int32_t i = 0; i < n_q; i++)
            check_row(s, &s->be[bi], sq, l, t0 + i, mode == HISA_MODE_FLAT, slots != 0, s->q + i * SK_H * 128,
                      s->w + i * SK_H, out + i * SK_K);
    }
}

/* --- deliberately bad calls ---------------------------------------------------------------- */
static int32_t bad_id(sk *s) {
    static const int32_t odd[] = {-1, SK_SEQS, INT32_MAX, INT32_MIN, 1000};
    for (int32_t i = 0; i < SK_SEQS && rnd(s, 2); i++)
        if (!s->seq[i].open) return i; /* a closed one */
    return odd[rnd(s, 5)];
}

static void do_bad(sk *s) {
    int32_t sq = pick_open(s), len = sq >= 0 ? s->seq[sq].len : 0;
    int32_t l = (int32_t)rnd(s, SK_LAYERS), dummy = -3, ids[SK_BATCH + 1], pos[SK_BATCH + 1];
    int err = 0, want = HISA_OK, cpu_only = 0;
    const char *what = "?";
    for (int32_t i = 0; i < SK_BATCH * SK_K; i++) s->out[i] = s->out_twin[i] = -55;
    for (int32_t i = 0; i < (SK_BATCH + 1) * 128; i++) s->keys[i] = 1.0f;
    for (int32_t i = 0; i < SK_BATCH + 1; i++) s->scales[i] = 1.0f;
    memset(s->codes, 0x38, (SK_BATCH + 1) * 128);
    snapshot(s);
    uint32_t kind = rnd(s, 30);
    if (sq < 0 && kind >= 4 && kind != 25) kind = rnd(s, 4);
#define BAD(name, code, cpu, CALL) \
    do {                           \
        what = (name);             \
        want = (code);             \
        cpu_only = (cpu);          \
        ON_ALL(s, err, cpu_only, CALL); \
    } while (0)
    switch (kind) {
    case 0: {
        int32_t id = bad_id(s);
        switch (rnd(s, 6)) {
        case 0: BAD("close unknown", HISA_ESEQ, 0, hisa_seq_close(rt_, id)); break;
        case 1: BAD("extend unknown", HISA_ESEQ, 0, hisa_seq_extend(rt_, id, 1)); break;
        case 2: BAD("truncate unknown", HISA_ESEQ, 0, hisa_seq_truncate(rt_, id, 0)); break;
        case 3: BAD("length unknown", HISA_ESEQ, 0, hisa_seq_length(rt_, id, &dummy)); break;
        case 4: {
            hisa_write w = {.n_tokens = 1, .keys = s->keys};
            BAD("range unknown", HISA_ESEQ, 0, (w.flags = io_, hisa_write_range(rt_, id, 0, &w)));
            break;
        }
        default: {
            hisa_prefill p = {.seq = id, .n_q = 1, .q = s->q, .w = s->w, .out = s->out};
            BAD("prefill unknown", HISA_ESEQ, 0, (p.flags = io_, hisa_select_prefill(rt_, &p)));
        }
        }
        break;
    }
    case 1: {
        int32_t n_open = 0;
        for (int32_t i = 0; i < SK_SEQS; i++) n_open += s->seq[i].open;
        if (n_open == SK_SEQS) BAD("open when full", HISA_ESEQFULL, 0, hisa_seq_open(rt_, &dummy));
        else BAD("open null", HISA_EINVAL, 0, hisa_seq_open(rt_, NULL));
        break;
    }
    case 2: {
        hisa_decode d = {.n_seqs = 1, .seq_ids = ids, .q = s->q, .w = s->w, .out = s->out};
        ids[0] = bad_id(s);
        BAD("decode unknown", HISA_ESEQ, 0, (d.flags = io_, hisa_select_decode(rt_, &d)));
        break;
    }
    case 3: {
        void *base = NULL;
        BAD("payload pool layer", HISA_ERANGE, 0, hisa_payload_pool(rt_, SK_LAYERS, &base));
        break;
    }
    case 4: BAD("extend negative", HISA_EINVAL, 0, hisa_seq_extend(rt_, sq, -1 - (int32_t)rnd(s, 100))); break;
    case 5: BAD("extend past max_context", HISA_ELIMIT, 0, hisa_seq_extend(rt_, sq, SK_CTX - len + 1 + (int32_t)rnd(s, 1000))); break;
    case 6: BAD("truncate longer", HISA_ERANGE, 0, hisa_seq_truncate(rt_, sq, len + 1 + (int32_t)rnd(s, 10))); break;
    case 7: BAD("truncate negative", HISA_ERANGE, 0, hisa_seq_truncate(rt_, sq, -1)); break;
    case 8: { /* a valid batch whose last entry carries the defect */
        int32_t n = 0;
        for (int32_t i = 0; i < SK_SEQS && n < SK_BATCH - 1; i++)
            if (s->seq[i].open && s->seq[i].len > 0) {
                ids[n] = i;
                pos[n] = (int32_t)rnd(s, (uint32_t)s->seq[i].len);
                n++;
            }
        uint32_t defect = rnd(s, 3);
        int32_t code;
        if (defect == 0) { /* a sequence twice */
            if (!n) return;
            ids[n] = ids[0];
            pos[n] = 0;
            code = HISA_EINVAL;
        } else if (defect == 1) {
            ids[n] = bad_id(s);
            pos[n] = 0;
            code = HISA_ESEQ;
        } else {
            ids[n] = sq;
            pos[n] = len + (int32_t)rnd(s, 3);
            code = HISA_ERANGE;
        }
        hisa_write w = {.layer = l, .n_tokens = n + 1, .seq_ids = ids, .positions = pos, .keys = s->keys};
        BAD("batch with a bad last entry", code, 0, (w.flags = io_, hisa_write_keys(rt_, &w)));
        break;
    }
    case 9: {
        hisa_write w = {.layer = SK_LAYERS + (int32_t)rnd(s, 3), .n_tokens = 1, .seq_ids = &sq, .keys = s->keys};
        if (rnd(s, 2)) w.layer = -1;
        BAD("write layer", HISA_ERANGE, 0, (w.flags = io_, hisa_write_keys(rt_, &w)));
        break;
    }
    case 10: {
        hisa_write w = {.n_tokens = rnd(s, 2) ? 0 : -5, .seq_ids = &sq, .keys = s->keys};
        BAD("write no tokens", HISA_EINVAL, 0, (w.flags = io_, hisa_write_keys(rt_, &w)));
        break;
    }
    case 11: {
        int32_t many[SK_BATCH + 1];
        for (int32_t i = 0; i <= SK_BATCH; i++) many[i] = sq;
        hisa_write w = {.n_tokens = SK_BATCH + 1, .seq_ids = many, .keys = s->keys};
        BAD("write over max_batch", HISA_ELIMIT, 0, (w.flags = io_, hisa_write_keys(rt_, &w)));
        break;
    }
    case 12: {
        hisa_write w = {.n_tokens = 1, .seq_ids = &sq, .keys = s->keys, .codes = s->codes, .scales = s->scales};
        switch (rnd(s, 5)) {
        case 0: BAD("keys and codes", HISA_EINVAL, 0, (w.flags = io_, hisa_write_keys(rt_, &w))); break;
        case 1:
            w.keys = NULL;
            w.scales = NULL;
            BAD("codes without scales", s->fmt == HISA_KEY_FP8 ? HISA_EINVAL : HISA_EFORMAT, 0,
                (w.flags = io_, hisa_write_keys(rt_, &w)));
            break;
        case 2: {
            static const float bad_scales[] = {0.0f, -1.0f, NAN, INFINITY, 3.1e38f};
            w.keys = NULL;
            s->scales[0] = bad_scales[rnd(s, 5)];
            /* the scales are judged last: a last position in a shared page is refused first */
            BAD("bad scale", s->fmt == HISA_KEY_FP8 ? (!len ? HISA_ERANGE : model_shared(s, sq, (len - 1) / SK_B)
                                                                  ? HISA_ESHARED : HISA_EINVAL) : HISA_EFORMAT, 0,
                (w.flags = io_, hisa_write_keys(rt_, &w)));
            break;
        }
        case 3:
            w.codes = NULL;
            w.scales = NULL;
            BAD("write flags", HISA_EINVAL, 0, (w.flags = io_ | HISA_SLOTS, hisa_write_keys(rt_, &w)));
            break;
        default:
            w.codes = NULL;
            w.scales = NULL;
            w.payload = s->payload_buf;
            if (s->payload) {
                w.positions = &dummy;
                dummy = len; /* a position past the end */
                BAD("write position past the end", HISA_ERANGE, 0, (w.flags = io_, hisa_write_keys(rt_, &w)));
            } else {
                BAD("payload without payload_bytes", HISA_EINVAL, 0, (w.flags = io_, hisa_write_keys(rt_, &w)));
            }
        }
        break;
    }
    case 13: {
        hisa_write w = {.n_tokens = 1, .seq_ids = &sq, .positions = &dummy, .keys = s->keys};
        dummy = rnd(s, 2) ? -1 : len + (int32_t)rnd(s, 5);
        BAD("write position out of range", HISA_ERANGE, 0, (w.flags = io_, hisa_write_keys(rt_, &w)));
        break;
    }
    case 14: {
        hisa_write w = {.n_tokens = SK_PREFILL + 1, .keys = s->keys};
        BAD("range over max_prefill", HISA_ELIMIT, 0, (w.flags = io_, hisa_write_range(rt_, sq, 0, &w)));
        break;
    }
    case 15: {
        int32_t n = 1 + (int32_t)rnd(s, SK_BATCH);
        hisa_write w = {.n_tokens = n, .keys = s->keys};
        int32_t p0 = rnd(s, 2) ? -1 - (int32_t)rnd(s, 5) : len - n + 1 + (int32_t)rnd(s, 3);
        BAD("range out of range", HISA_ERANGE, 0, (w.flags = io_, hisa_write_range(rt_, sq, p0, &w)));
        break;
    }
    case 16: {
        ids[0] = sq;
        hisa_decode d = {.layer = l, .n_seqs = 1, .seq_ids = ids, .q = s->q, .w = s->w, .out = s->out};
        switch (rnd(s, 6)) {
        case 0: d.n_seqs = 0; BAD("decode zero", HISA_EINVAL, 0, (d.flags = io_, hisa_select_decode(rt_, &d))); break;
        case 1: d.n_seqs = SK_BATCH + 1; BAD("decode over max_batch", HISA_ELIMIT, 0, (d.flags = io_, hisa_select_decode(rt_, &d))); break;
        case 2: d.layer = SK_LAYERS; BAD("decode layer", HISA_ERANGE, 0, (d.flags = io_, hisa_select_decode(rt_, &d))); break;
        case 3: d.mode = (hisa_mode)2; BAD("decode mode", HISA_EINVAL, 0, (d.flags = io_, hisa_select_decode(rt_, &d))); break;
        case 4: d.q = NULL; BAD("decode null q", HISA_EINVAL, 0, (d.flags = io_, hisa_select_decode(rt_, &d))); break;
        default: BAD("decode flags", HISA_EINVAL, 0, (d.flags = io_ | 64, hisa_select_decode(rt_, &d)));
        }
        break;
    }
    case 17: { /* decode over a sequence with nothing reserved, or with a hole */
        ids[0] = sq;
        hisa_decode d = {.layer = l, .n_seqs = 1, .seq_ids = ids, .q = s->q, .w = s->w, .out = s->out};
        if (len == 0) BAD("decode empty", HISA_ERANGE, 0, (d.flags = io_, hisa_select_decode(rt_, &d)));
        else if (!fully_written(&s->seq[sq], l, len - 1))
            BAD("decode unwritten", HISA_EUNWRITTEN, 1, hisa_select_decode(rt_, &d));
        else
            return;
        break;
    }
    case 18: {
        hisa_prefill p = {.layer = l, .seq = sq, .q = s->q, .w = s->w, .out = s->out};
        switch (rnd(s, 4)) {
        case 0: p.n_q = 1; p.t0 = len; BAD("prefill past the end", HISA_ERANGE, 0, (p.flags = io_, hisa_select_prefill(rt_, &p))); break;
        case 1: p.n_q = 1; p.t0 = -1; BAD("prefill negative t0", HISA_ERANGE, 0, (p.flags = io_, hisa_select_prefill(rt_, &p))); break;
        case 2: p.n_q = 0; BAD("prefill zero", HISA_EINVAL, 0, (p.flags = io_, hisa_select_prefill(rt_, &p))); break;
        default: p.n_q = SK_PREFILL + 1; BAD("prefill over max", HISA_ELIMIT, 0, (p.flags = io_, hisa_select_prefill(rt_, &p)));
        }
        break;
    }
    case 19: { /* prefill over a hole */
        int32_t hole = 0;
        while (hole < len && s->seq[sq].written[l][hole]) hole++;
        if (hole == len) return;
        hisa_prefill p = {.layer = l, .seq = sq, .t0 = hole, .n_q = 1, .q = s->q, .w = s->w, .out = s->out};
        BAD("prefill unwritten", HISA_EUNWRITTEN, 1, hisa_select_prefill(rt_, &p));
        break;
    }
    case 20: {
        int32_t pages[SK_PPS];
        if (len == 0) return;
        BAD("pages buffer too small", HISA_ELIMIT, 0, hisa_seq_pages(rt_, sq, pages, blocks_of(len) - 1, &dummy));
        break;
    }
    case 21: BAD("length null", HISA_EINVAL, 0, hisa_seq_length(rt_, sq, NULL)); break;
    case 22: {
        hisa_write w = {.n_tokens = 1, .seq_ids = &sq, .keys = s->keys};
        if (len) return;
        BAD("write last of an empty sequence", HISA_ERANGE, 0, (w.flags = io_, hisa_write_keys(rt_, &w)));
        break;
    }
    case 23: { /* a batch whose token in a shared page is refused; the valid tokens beside it are not
                * written either */
        int32_t ssq, sblk, n = 0;
        if (!pick_shared(s, &ssq, &sblk)) return;
        int32_t spos = sblk * SK_B + (int32_t)rnd(s, SK_B), at = (int32_t)rnd(s, SK_BATCH);
        int last_only = sblk == blocks_of(s->seq[ssq].len) - 1 && rnd(s, 2); /* positions NULL */
        for (int32_t i = 0; i < SK_SEQS && n < SK_BATCH; i++) {
            if (i == ssq) continue;
            const sk_seq *o = &s->seq[i];
            if (!o->open || !o->len || n >= at || model_shared(s, i, (o->len - 1) / SK_B)) continue;
            ids[n] = i;
            pos[n++] = o->len - 1;
        }
        if (n == SK_BATCH) n--;
        ids[n] = ssq;
        pos[n++] = last_only ? s->seq[ssq].len - 1 : spos;
        for (int32_t i = 0; i < n; i++) s->payload_buf[i] = (uint8_t)i;
        hisa_write w = {.layer = l, .n_tokens = n, .seq_ids = ids, .positions = last_only ? NULL : pos,
                        .keys = s->keys, .payload = s->payload && rnd(s, 2) ? s->payload_buf : NULL};
        if (last_only) /* every other token is its sequence's last position too */
            BAD("write the last position, in a shared page", HISA_ESHARED, 0, (w.flags = io_, hisa_write_keys(rt_, &w)));
        else
            BAD("write into a shared page", HISA_ESHARED, 0, (w.flags = io_, hisa_write_keys(rt_, &w)));
        break;
    }
    case 24: { /* a range with at least one token in a shared page */
        int32_t ssq, sblk;
        if (!pick_shared(s, &ssq, &sblk)) return;
        int32_t slen = s->seq[ssq].len, x = sblk * SK_B + (int32_t)rnd(s, SK_B);
        int32_t before = (int32_t)rnd(s, (uint32_t)(x < SK_PREFILL - 1 ? x : SK_PREFILL - 1) + 1);
        int32_t room = SK_PREFILL - before - 1, after = slen - x - 1;
        int32_t p0 = x - before, n = before + 1 + (int32_t)rnd(s, (uint32_t)(room < after ? room : after) + 1);
        hisa_write w = {.layer = l, .n_tokens = n, .keys = s->keys,
                        .payload = s->payload && rnd(s, 2) ? s->payload_buf : NULL};
        BAD("range over a shared page", HISA_ESHARED, 0, (w.flags = io_, hisa_write_range(rt_, ssq, p0, &w)));
        break;
    }
    case 25: { /* a fork with one defect */
        int32_t parent = sq >= 0 ? sq : 0, plen = sq >= 0 ? len : 0;
        switch (rnd(s, 4)) {
        case 0: {
            int32_t id = bad_id(s);
            BAD("fork of an unknown sequence", HISA_ESEQ, 0, hisa_seq_fork(rt_, id, 0, &dummy));
            break;
        }
        case 1:
            if (sq < 0) return;
            BAD("fork without child_out", HISA_EINVAL, 0, hisa_seq_fork(rt_, parent, plen, NULL));
            break;
        case 2: {
            if (sq < 0) return;
            int32_t flen = rnd(s, 2) ? -1 - (int32_t)rnd(s, 40) : plen + 1 + (int32_t)rnd(s, 40);
            if (rnd(s, 4) == 0) flen = rnd(s, 2) ? INT32_MIN : INT32_MAX;
            BAD("fork length out of range", HISA_ERANGE, 0, hisa_seq_fork(rt_, parent, flen, &dummy));
            break;
        }
        default: {
            if (sq < 0 || n_open_seqs(s) < SK_SEQS) return;
            int32_t flen = pick_fork_len(s, plen);
            BAD("fork when every sequence slot is taken", HISA_ESEQFULL, 0, hisa_seq_fork(rt_, parent, flen, &dummy));
        }
        }
        if (dummy != -3) diverge(s, "%s: the refused fork wrote a child id (%d)", what, dummy);
        break;
    }
    case 26: { /* a fork at a partial length into an empty pool: the last page cannot be copied */
        if (n_open_seqs(s) == SK_SEQS) return;
        if (model_free_pages(s) > 0 && rnd(s, 2)) {
            fill_pool(s);
            snapshot(s);
        }
        if (model_free_pages(s) > 0 || len == 0) return;
        int32_t flen = (int32_t)rnd(s, (uint32_t)len) + 1;
        if (flen % SK_B == 0) flen--;
        if (flen == 0) return;
        BAD("fork at a partial length into an empty pool", HISA_EPOOL, 0, hisa_seq_fork(rt_, sq, flen, &dummy));
        if (err == HISA_EPOOL) s->fork_epool++;
        if (dummy != -3) diverge(s, "%s: the refused fork wrote a child id (%d)", what, dummy);
        break;
    }
    case 27: { /* truncate into a shared page with no page free for the copy */
        int32_t ssq, sblk;
        if (!pick_shared(s, &ssq, &sblk)) return;
        if (model_free_pages(s) > 0 && rnd(s, 2)) {
            fill_pool(s);
            snapshot(s);
        }
        if (model_free_pages(s) > 0) return;
        int32_t tlen = sblk * SK_B + 1 + (int32_t)rnd(s, SK_B - 1);
        BAD("truncate into a shared page, the pool empty", HISA_EPOOL, 0, hisa_seq_truncate(rt_, ssq, tlen));
        if (err == HISA_EPOOL) s->trunc_epool++;
        break;
    }
    case 28: { /* every holder of a shared page is refused, whichever writes */
        int32_t ssq, sblk;
        if (!pick_shared(s, &ssq, &sblk)) return;
        int32_t h = s->seq[ssq].pg[sblk], other = -1;
        for (int32_t i = 0; i < SK_SEQS && other < 0; i++)
            if (i != ssq && s->seq[i].open && blocks_of(s->seq[i].len) > sblk && s->seq[i].pg[sblk] == h) other = i;
        if (other < 0) { /* the model shares pages only at one block index */
            diverge(s, "model: shared handle %d of seq %d block %d has no other holder", h, ssq, sblk);
            return;
        }
        int32_t n = 1 + (int32_t)rnd(s, 4), p0 = sblk * SK_B + (int32_t)rnd(s, SK_B - 4);
        hisa_write w = {.layer = l, .n_tokens = n, .keys = s->keys};
        BAD("range into a shared page from its other holder", HISA_ESHARED, 0,
            (w.flags = io_, hisa_write_range(rt_, other, p0, &w)));
        break;
    }
    default: { /* extend into an exhausted pool, within max_context */
        int32_t free_pages = model_free_pages(s), n = (free_pages + 1) * SK_B;
        if (len + n > SK_CTX) return;
        BAD("extend past the pool", HISA_EPOOL, 0, hisa_seq_extend(rt_, sq, n));
        if (err == HISA_EPOOL) s->pool_exhausted++;
        break;
    }
    }
#undef BAD
    if (want == HISA_OK) return; /* nothing was issued, or the case turned out valid */
    (void)cpu_only;
    expect(s, err, want, what);
    check_unchanged(s, what);
    for (int32_t i = 0; i < SK_BATCH * SK_K; i++)
        if (s->out[i] != -55 || s->out_twin[i] != -55) {
            diverge(s, "%s: the rejected call wrote its output", what);
            break;
        }
}

/* --- the driver ---------------------------------------------------------------------------- */
static void step(sk *s) {
    uint32_t r = rnd(s, 1000);
    int32_t sq = pick_open(s);
    int32_t n_open = 0;
    for (int32_t i = 0; i < SK_SEQS; i++) n_open += s->seq[i].open;
    if (sq < 0 || (r < 40 && n_open < SK_SEQS)) { /* open */
        int32_t id = -1, twin_id = -1;
        int err = hisa_seq_open(s->be[0].rt, &id);
        s->calls++;
        if (s->n_be > 1) {
            int twin_err = hisa_seq_open(s->be[1].rt, &twin_id);
            if (twin_err != err || twin_id != id) diverge(s, "cuda open %d id %d, cpu %d id %d", twin_err, twin_id, err, id);
        }
        if (!expect(s, err, n_open < SK_SEQS ? HISA_OK : HISA_ESEQFULL, "open") || err) return;
        if (id < 0 || id >= SK_SEQS || s->seq[id].open) {
            diverge(s, "open returned id %d, open already or out of range", id);
            return;
        }
        sk_seq *m = &s->seq[id];
        memset(m->written, 0, sizeof m->written);
        memset(m->pay_valid, 0, sizeof m->pay_valid);
        m->open = 1;
        m->len = 0;
        m->seed = hisa_test_rng(&s->rng);
        m->depth = 0;
        memset(m->pg, 0xff, sizeof m->pg);
        return;
    }
    sk_seq *m = &s->seq[sq];
    if (r < 190) { /* prefill append: extend, then write the new tokens (all layers, or one) */
        uint32_t sz = rnd(s, 100);
        int32_t n = sz < 70 ? 1 + (int32_t)rnd(s, 32) : sz < 95 ? 33 + (int32_t)rnd(s, 170) : 200 + (int32_t)rnd(s, 401);
        int32_t len = m->len;
        int want = model_extend_code(s, sq, n);
        do_extend(s, sq, n);
        if (want != HISA_OK) return;
        int32_t layers = rnd(s, 8) ? SK_LAYERS : 1;
        for (int32_t l = 0; l < layers; l++) do_write_range(s, sq, l, len, n, s->payload && rnd(s, 2));
    } else if (r < 220) { /* extend only: reserved, unwritten positions */
        do_extend(s, sq, 1 + (int32_t)rnd(s, 40));
    } else if (r < 350) { /* decode append: extend a batch by one, write each last position */
        int32_t ids[SK_BATCH], n = 0, want_n = 1 + (int32_t)rnd(s, SK_BATCH);
        for (int32_t i = 0; i < SK_SEQS && n < want_n; i++) {
            int32_t c = (sq + i) % SK_SEQS;
            if (!s->seq[c].open) continue;
            int want = model_extend_code(s, c, 1);
            do_extend(s, c, 1);
            if (want == HISA_OK) ids[n++] = c;
        }
        for (int32_t l = 0; l < SK_LAYERS && n; l++) do_write_batch(s, ids, NULL, n, l);
    } else if (r < 440) { /* overwrite random positions, one per sequence */
        int32_t ids[SK_BATCH], pos[SK_BATCH], n = 0, want_n = 1 + (int32_t)rnd(s, SK_BATCH);
        for (int32_t i = 0; i < SK_SEQS && n < want_n; i++) {
            int32_t c = (sq + i) % SK_SEQS;
            if (!s->seq[c].open || s->seq[c].len == 0) continue;
            ids[n] = c;
            pos[n++] = (int32_t)rnd(s, (uint32_t)s->seq[c].len);
        }
        if (n) do_write_batch(s, ids, pos, n, (int32_t)rnd(s, SK_LAYERS));
    } else if (r < 490) { /* overwrite a range */
        if (m->len == 0) return;
        int32_t pos0 = (int32_t)rnd(s, (uint32_t)m->len), n = 1 + (int32_t)rnd(s, (uint32_t)(m->len - pos0));
        if (n > 3 * SK_PREFILL) n = 3 * SK_PREFILL;
        do_write_range(s, sq, (int32_t)rnd(s, SK_LAYERS), pos0, n, s->payload && rnd(s, 2));
    } else if (r < 660) {
        do_decode(s);
    } else if (r < 740) {
        do_prefill(s);
    } else if (r < 810) { /* truncate (rollback), a third of the time into a shared block if any */
        int32_t len = rnd(s, 4) ? (int32_t)rnd(s, (uint32_t)m->len + 1) : m->len - (int32_t)rnd(s, 3);
        if (len < 0) len = 0;
        int32_t shared_blk = -1;
        for (int32_t blk = 0; blk < blocks_of(m->len); blk++)
            if (model_shared(s, sq, blk) && (shared_blk < 0 || rnd(s, 2))) shared_blk = blk;
        if (shared_blk >= 0 && rnd(s, 3) == 0) len = shared_blk * SK_B + 1 + (int32_t)rnd(s, SK_B - 1);
        do_truncate(s, sq, len, "truncate");
    } else if (r < 850) { /* close */
        int err;
        ON_ALL(s, err, 0, hisa_seq_close(rt_, sq));
        if (expect(s, err, HISA_OK, "close")) {
            model_release(s, sq, 0);
            m->open = 0;
        }
    } else if (r < 890) { /* fork, half the time of a fork if there is one */
        int32_t parent = sq, kids[SK_SEQS], n_kids = 0;
        for (int32_t i = 0; i < SK_SEQS; i++)
            if (s->seq[i].open && s->seq[i].depth > 0) kids[n_kids++] = i;
        if (n_kids && rnd(s, 2)) parent = kids[rnd(s, (uint32_t)n_kids)];
        do_fork(s, parent, pick_fork_len(s, s->seq[parent].len), "fork");
    } else {
        do_bad(s);
    }
}

static int64_t soak_ops_total(void) {
    const char *e = getenv("HISA_SOAK_OPS");
    int64_t n = e ? atoll(e) : 0;
    return n > 0 ? n : 20000;
}

/* Run n_ops steps on a CPU runtime of format fmt (and a CUDA twin when twin). Returns 0 when
 * the runtime(s) could not be opened (ENODEVICE for the twin: skip). */
static int soak_run(hisa_test_ctx *ctx, int32_t fmt, int64_t n_ops, uint64_t seed, int twin, const char *name) {
    hisa_config c = {.n_layers = SK_LAYERS, .n_heads = SK_H, .block_size = SK_B, .top_blocks = SK_M,
                     .topk = SK_K, .key_format = fmt, .payload_bytes = fmt == HISA_KEY_FP8 ? SK_PAYLOAD : 0,
                     .max_seqs = SK_SEQS, .max_context = SK_CTX, .n_pages = SK_PAGES, .max_batch = SK_BATCH,
                     .max_prefill_queries = SK_PREFILL};
    sk *s = calloc(1, sizeof *s);
    s->ctx = ctx;
    s->name = name;
    s->fmt = fmt;
    s->payload = c.payload_bytes;
    s->rng = seed;
    s->seq = calloc(SK_SEQS, sizeof *s->seq);
    int err = hisa_open(&s->be[0].rt, &c, NULL);
    if (err) {
        hisa_test_fail(ctx, __FILE__, __LINE__, "open: %s", hisa_strerror(err));
        free(s->seq);
        free(s);
        return 1;
    }
    s->n_be = 1;
    if (twin) {
        hisa_config cc = c;
        cc.device = HISA_DEVICE_CUDA(0);
        err = hisa_open(&s->be[1].rt, &cc, NULL);
        if (err == HISA_ENODEVICE) {
            hisa_close(s->be[0].rt);
            free(s->seq);
            free(s);
            return 0;
        }
        if (err) hisa_test_fail(ctx, __FILE__, __LINE__, "cuda open: %s", hisa_strerror(err));
        else {
            s->be[1].cuda = 1;
            s->n_be = 2;
        }
    }
    s->keys = malloc(sizeof(float) * 128 * (SK_PREFILL + 8));
    s->q = malloc(sizeof(float) * SK_H * 128 * (SK_BATCH + SK_MAXQ + SK_PREFILL));
    s->w = malloc(sizeof(float) * SK_H * (SK_BATCH + SK_MAXQ + SK_PREFILL));
    s->I = malloc(sizeof(float) * SK_CTX);
    s->J = malloc(sizeof(float) * SK_PPS);
    s->means = malloc(sizeof(float) * 128 * SK_PPS);
    s->codes = malloc(128 * (SK_BATCH + 8));
    s->scales = malloc(sizeof(float) * (SK_BATCH + 8));
    s->payload_buf = malloc(SK_PAYLOAD * (SK_PREFILL + 8));
    s->out = malloc(sizeof(int32_t) * SK_K * (SK_BATCH + SK_PREFILL));
    s->out_twin = malloc(sizeof(int32_t) * SK_K * (SK_BATCH + SK_PREFILL));
    s->ref = malloc(sizeof(int32_t) * SK_K);
    s->page_buf = malloc((size_t)s->be[0].rt->g.page_bytes);
    s->snap_host = malloc(s->be[0].rt->arena.bytes[HISA__ARENA_HOST]);
    s->snap_dev = malloc(s->be[0].rt->arena.bytes[HISA__ARENA_DEVICE]);
    for (int32_t i = 0; i < SK_H * (SK_BATCH + SK_MAXQ + SK_PREFILL); i++) s->w[i] = 1.0f;
    for (int32_t i = 0; i < SK_H * 128 * (SK_BATCH + SK_MAXQ + SK_PREFILL); i++) s->q[i] = 0.1f;
    for (s->ops = 0; s->ops < n_ops && s->divergences < 20; s->ops++) {
        step(s);
        check_data(s, s->ops % SK_SWEEP == SK_SWEEP - 1);
    }
    check_data(s, 1);
    printf("  soak %s: %lld ops (%lld calls), %lld errors returned on purpose, %lld pool exhaustions "
           "(%lld steps with the pool full), %lld forks (%lld of forks, %lld with a partial last page "
           "copied, %lld refused: %lld EPOOL), %lld shared-page writes refused (ESHARED; %lld by random "
           "writes), %lld truncates into a shared page (%lld copied, %lld EPOOL), up to %lld pages "
           "shared (%lld checks with some), %lld selections checked (%lld via the block near-tie rule), "
           "%lld running sums compared bit-exactly, %lld divergences\n",
           name, (long long)s->ops, (long long)s->calls, (long long)s->errors_on_purpose,
           (long long)s->pool_exhausted, (long long)s->pool_full_seen, (long long)s->forks,
           (long long)s->forks_of_forks, (long long)s->fork_partial, (long long)s->fork_refused,
           (long long)s->fork_epool, (long long)s->eshared, (long long)s->eshared_random,
           (long long)(s->trunc_copies + s->trunc_epool), (long long)s->trunc_copies, (long long)s->trunc_epool,
           (long long)s->max_shared, (long long)s->shared_seen, (long long)s->selections,
           (long long)s->near_tie_blocks, (long long)s->sums_checked, (long long)s->divergences);
    CHECK_EQ_INT(s->divergences, 0);
    /* shared prefixes were exercised: forks (of forks too), writes into shared pages refused, and
     * truncates into shared pages, copied and refused for want of a page */
    CHECK(s->forks > 0 && s->eshared > 0);
    if (n_ops >= 5000) { /* seen per 10,000 ops: about 200 forks, 140 of forks, 50 truncate copies, 10 or more
                          * of each EPOOL refusal */
        CHECK(s->forks_of_forks > 0 && s->fork_partial > 0 && s->eshared_random > 0);
        CHECK(s->trunc_copies > 0 && s->trunc_epool > 0 && s->fork_epool > 0);
    }
    /* coverage, not correctness: the pool ran dry many times. Rates seen per op: 0.48% (the CUDA
     * fp8 seed, 2,500 ops on the H100) to 1.8%; the first threshold (0.5%) sat on that edge. */
    CHECK(s->pool_exhausted >= 10 && s->pool_exhausted > n_ops / 400);
    CHECK(s->errors_on_purpose > n_ops / 20);
    CHECK(s->selections > n_ops / 10);
    CHECK(s->sums_checked > n_ops / 4); /* the bit-exact running-sum check ran (about 1.3 per op and backend) */
    for (int bi = 0; bi < s->n_be; bi++) hisa_close(s->be[bi].rt);
    free(s->keys); free(s->q); free(s->w); free(s->I); free(s->J); free(s->means); free(s->codes);
    free(s->scales); free(s->payload_buf); free(s->out); free(s->out_twin); free(s->ref);
    free(s->page_buf); free(s->snap_host); free(s->snap_dev); free(s->seq); free(s);
    return 1;
}

HISA_TEST(soak_cpu_against_model) {
    int64_t total = soak_ops_total();
    soak_run(ctx, HISA_KEY_FP8, total / 2, 0x50a4f8ull, 0, "cpu fp8");
    soak_run(ctx, HISA_KEY_BF16, total - total / 2, 0x50a4bfull, 0, "cpu bf16");
}

HISA_TEST(soak_cuda_against_cpu_and_model) {
    int64_t total = soak_ops_total() / 4; /* the CUDA soak runs the CPU runtime beside it */
    if (total < 2000) total = 2000;
    if (!soak_run(ctx, HISA_KEY_FP8, total / 2, 0xc0da8ull, 1, "cuda+cpu fp8")) SKIP("no CUDA device");
    soak_run(ctx, HISA_KEY_BF16, total - total / 2, 0xc0dabull, 1, "cuda+cpu bf16");
}
