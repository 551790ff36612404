/* fuzz_api.c: libFuzzer target for the public API on a small CPU runtime.
 *
 * The input is a byte stream: a few bytes pick a small configuration (or, rarely, a raw one to
 * fuzz validation), the rest is decoded into up to 96 API calls whose arguments come from the
 * stream, valid or not (unknown sequence ids, negative counts, positions past the end, raw float
 * bit patterns as keys: NaN, infinities, denormals). After every call the target checks the
 * invariants hisa promises and aborts on a violation:
 *   - a call returns 0 or one of the HISA_E* codes; an error changes nothing (host tables, masks,
 *     means, running sums and the pages they name, and the caller's output buffer are
 *     byte-identical afterwards);
 *   - sequence lengths and open/closed state match a tiny model; every page is free, or held by
 *     exactly the open sequences the model says share it: the model keeps page handles of its own
 *     (a fork shares the parent's complete blocks below its length and copies a partial last one;
 *     truncating into a shared block copies it), and runtime page ids and model handles must
 *     correspond one to one (hisa_seq_pages, the free stack, page_refs and hisa_memory_report
 *     agree: pages_used the distinct pages held, pages_shared those held by more than one);
 *   - extend, truncate and fork (hisa_seq_fork, whose parent and length come from the stream,
 *     valid or not) return exactly the code the model predicts, pool exhaustion included; a write
 *     succeeds only where it touches no shared page, and HISA_ESHARED only where it does;
 *   - the written-mask of every block equals the model's written positions (a child's are its
 *     parent's below the fork length);
 *   - block summaries follow their definition (kvcache/layout.h) bit for bit: with sum the fp32
 *     sum of a block's stored (dequantized) keys, written offsets added in order from 0, its mean
 *     is bf16_rne(sum / count) (0 when empty), and a sequence's running-sum slot names -1 or one
 *     of its own pages and, when it names a page, holds that page's sum (with finite keys exactly
 *     these bits; with NaN among them, NaN where the definition gives NaN);
 *   - a selection has min(t + 1, k) distinct entries in [0, t] (or their slots), then -1s.
 * ASan and UBSan catch memory and arithmetic errors. Build and run: `make fuzz`. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../runtime/internal.h"
#include "../model.h"

#define FUZZ_ASSERT(cond)                                                                \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "fuzz_api: invariant failed at %s:%d: %s\n", __FILE__,       \
                    __LINE__, #cond);                                                    \
            abort();                                                                     \
        }                                                                                \
    } while (0)

/* The checks are not coverage-instrumented: their loops would dominate the run time and their
 * branches say nothing about the library. */
#define NOCOV __attribute__((no_sanitize("coverage")))


/* --- the byte stream ------------------------------------------------------------------------ */
typedef struct {
    const uint8_t *p;
    size_t n, i;
} stream;

static uint8_t u8(stream *s) { return s->i < s->n ? s->p[s->i++] : 0; }
static uint16_t u16(stream *s) { return (uint16_t)(u8(s) | (uint16_t)u8(s) << 8); }
static uint32_t u32(stream *s) { return (uint32_t)u16(s) | (uint32_t)u16(s) << 16; }
static int done(const stream *s) { return s->i >= s->n; }

/* --- limits of the small configurations ---------------------------------------------------- */
#define F_LAYERS 2
#define F_SEQS 4
#define F_CTX 320
#define F_PAGES 24
#define F_BATCH 4
#define F_PREFILL 64
#define F_HEADS 4
#define F_TOPK 256
#define F_PAYLOAD 16
#define F_PPS (F_CTX / 32) /* pages per sequence at most (B >= 32) */

/* --- model ------------------------------------------------------------------------------- */
typedef struct {
    int open;
    int32_t len;
    uint8_t written[F_LAYERS][F_CTX];
    int32_t pg[F_PPS]; /* the model's page handle of each block, -1 past the length */
} mseq;

typedef struct {
    hisa_runtime *rt;
    int32_t L, B, k, ctx, max_seqs, n_pages, max_batch, max_prefill, payload;
    mseq seq[F_SEQS];
    int32_t mref[F_PAGES];       /* the model's page pool: holders of each handle, 0 free */
    int32_t prev_h[F_PAGES];     /* model handle of each page at the last check, -1 free */
    uint8_t dirty[F_LAYERS][F_PAGES]; /* summaries to check after this call (all at the end) */
    /* snapshot for "an error changes nothing" */
    uint8_t *snap_host, *snap_dev;
} fuzz;

static const int k_codes[] = {HISA_OK,        HISA_EINVAL, HISA_ECONFIG,   HISA_EOVERFLOW,
                              HISA_ENOMEM,    HISA_ENODEVICE, HISA_EDEVICE, HISA_EPOISONED,
                              HISA_ESEQ,      HISA_ESEQFULL, HISA_EPOOL,    HISA_ERANGE,
                              HISA_ELIMIT,    HISA_EFORMAT, HISA_EUNWRITTEN, HISA_ESHARED};
NOCOV static void check_code(int err) {
    for (size_t i = 0; i < sizeof k_codes / sizeof k_codes[0]; i++)
        if (err == k_codes[i]) {
            FUZZ_ASSERT(err != HISA_EDEVICE && err != HISA_EPOISONED && err != HISA_ENODEVICE);
            return;
        }
    FUZZ_ASSERT(!"unknown error code");
}

/* What an error must leave alone: the whole host arena (the runtime struct, the tables, even the
 * selection scratch) and the cache's summary state: means [L, n_pages, 128] bf16, masks
 * [L, n_pages, B / 32], the running sums [L, max_seqs, 128] fp32 and sum_pages [L, max_seqs]. The
 * keys themselves are covered by the mean check (a key changed behind the summary's back shows
 * in its block's mean, up to bf16 rounding) and by the slot's exact sum. */
typedef struct {
    const void *base;
    size_t bytes;
} region;
NOCOV static int summary_regions(const fuzz *f, region *r) {
    const hisa_runtime *rt = f->rt;
    size_t pages = (size_t)(rt->g.n_layers * rt->g.n_pages), slots = (size_t)(rt->g.n_layers * rt->g.max_seqs);
    r[0] = (region){rt->r.block_means, pages * 128 * sizeof(uint16_t)};
    r[1] = (region){rt->r.block_masks, pages * (size_t)rt->g.mask_words * sizeof(uint32_t)};
    r[2] = (region){rt->r.block_sums, slots * 128 * sizeof(float)};
    r[3] = (region){rt->r.sum_pages, slots * sizeof(int32_t)};
    return 4;
}
NOCOV static size_t summary_bytes(const fuzz *f) {
    region r[4];
    size_t n = 0;
    for (int i = 0, k = summary_regions(f, r); i < k; i++) n += r[i].bytes;
    return n;
}
NOCOV static void snapshot(fuzz *f) {
    hisa__arena *a = &f->rt->arena;
    memcpy(f->snap_host, a->base[HISA__ARENA_HOST], a->bytes[HISA__ARENA_HOST]);
    region r[4];
    uint8_t *d = f->snap_dev;
    for (int i = 0, k = summary_regions(f, r); i < k; d += r[i].bytes, i++) memcpy(d, r[i].base, r[i].bytes);
}
NOCOV static void check_unchanged(fuzz *f) {
    hisa__arena *a = &f->rt->arena;
    FUZZ_ASSERT(memcmp(f->snap_host, a->base[HISA__ARENA_HOST], a->bytes[HISA__ARENA_HOST]) == 0);
    region r[4];
    const uint8_t *d = f->snap_dev;
    for (int i = 0, k = summary_regions(f, r); i < k; d += r[i].bytes, i++)
        FUZZ_ASSERT(memcmp(d, r[i].base, r[i].bytes) == 0);
}

static int32_t pick_seq(fuzz *f, stream *s) {
    uint8_t b = u8(s);
    switch (b >> 6) {
    case 0:
    case 1: { /* an open one, if any */
        int32_t n = 0, ids[F_SEQS];
        for (int32_t i = 0; i < f->max_seqs; i++)
            if (f->seq[i].open) ids[n++] = i;
        return n ? ids[b % n] : (int32_t)(b % F_SEQS);
    }
    case 2: return (int32_t)(b % 8) - 2; /* -2 .. 5: closed, negative, past max_seqs */
    default: {
        static const int32_t odd[] = {INT32_MIN, INT32_MAX, -1, F_SEQS, 65536, 1 << 30};
        return odd[b % 6];
    }
    }
}

/* --- the model's pages ------------------------------------------------------------------------ */
NOCOV static int32_t blocks_of(const fuzz *f, int64_t len) { return (int32_t)((len + f->B - 1) / f->B); }
NOCOV static int valid_seq(const fuzz *f, int32_t seq) { return seq >= 0 && seq < f->max_seqs && f->seq[seq].open; }
NOCOV static int32_t model_free(const fuzz *f) {
    int32_t n = 0;
    for (int32_t h = 0; h < f->n_pages; h++) n += f->mref[h] == 0;
    return n;
}
NOCOV static int32_t model_n_shared(const fuzz *f) {
    int32_t n = 0;
    for (int32_t h = 0; h < f->n_pages; h++) n += f->mref[h] > 1;
    return n;
}
NOCOV static int32_t model_n_open(const fuzz *f) {
    int32_t n = 0;
    for (int32_t i = 0; i < f->max_seqs; i++) n += f->seq[i].open;
    return n;
}
/* Is position pos of a valid seq in a block several sequences hold? */
NOCOV static int model_shared_at(const fuzz *f, int32_t seq, int64_t pos) {
    if (!valid_seq(f, seq) || pos < 0 || pos >= f->seq[seq].len) return 0;
    int32_t h = f->seq[seq].pg[pos / f->B];
    return h >= 0 && f->mref[h] > 1;
}
NOCOV static int32_t model_take(fuzz *f) {
    for (int32_t h = 0; h < f->n_pages; h++)
        if (f->mref[h] == 0) {
            f->mref[h] = 1;
            return h;
        }
    FUZZ_ASSERT(!"the model's pool is empty");
    return -1;
}
/* Let go of blocks [from, blocks of the length) of seq. */
NOCOV static void model_release(fuzz *f, int32_t seq, int32_t from) {
    mseq *m = &f->seq[seq];
    for (int32_t b = from; b < blocks_of(f, m->len); b++) {
        FUZZ_ASSERT(m->pg[b] >= 0 && f->mref[m->pg[b]] > 0);
        f->mref[m->pg[b]]--;
        m->pg[b] = -1;
    }
}
NOCOV static void model_reset(mseq *m) {
    memset(m, 0, sizeof *m);
    memset(m->pg, 0xff, sizeof m->pg);
}

static int32_t pick_count(stream *s, int32_t typical) {
    uint8_t b = u8(s);
    if (b < 200) return (int32_t)(b % (typical + 1));
    if (b < 250) return (int32_t)(u16(s) % 1024) - 8;
    return (int32_t)u32(s);
}

/* Key data: generated, raw float bit patterns, or special values. */
static void fill_keys(stream *s, float *keys, int32_t n) {
    uint8_t mode = u8(s);
    uint64_t seed = u8(s) + 1;
    for (int32_t i = 0; i < n * 128; i++) {
        switch (mode % 8) {
        case 0:
        case 1:
        case 2:
        case 3: {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            keys[i] = ((float)(int32_t)(seed >> 40) / 8388608.0f) * (float)(1 + mode / 8);
            break;
        }
        case 4: {
            uint32_t u = u32(s);
            memcpy(&keys[i], &u, 4);
            break;
        }
        case 5: keys[i] = 0.0f; break;
        case 6: { /* one special magnitude per token, in a +-0 pattern */
            static const float sp[] = {0.0f, 1e-44f, 1e-38f, 3e38f, 448.0f, 1e-3f, 1e6f, INFINITY};
            keys[i] = sp[(mode / 8 + i / 128) % 8] * (float)(i % 3 - 1);
            break;
        }
        default: keys[i] = (float)((i % 128) - 64) * 0.25f; break; /* identical tokens: ties */
        }
    }
}

/* Before a write: the page it may touch is checked after the call. pos is int64: a range's
 * pos0 + i may pass INT32_MAX. */
NOCOV static void touch(fuzz *f, int32_t layer, int32_t seq, int64_t pos) {
    if (layer < 0 || layer >= f->L || seq < 0 || seq >= f->max_seqs || !f->seq[seq].open) return;
    if (pos < 0 || pos >= f->seq[seq].len) return;
    f->dirty[layer][f->rt->r.page_table[(int64_t)seq * f->rt->g.pages_per_seq + pos / f->B]] = 1;
}

/* bf16 bits of x, round to nearest even, written here and not taken from kvcache/quant.c; a NaN
 * gives 0x7fc0, compared only as NaN (same_value). */
NOCOV static uint16_t model_bf16_bits(float x) {
    if (isnan(x)) return 0x7fc0;
    uint32_t u;
    memcpy(&u, &x, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
NOCOV static int bf16_is_nan(uint16_t b) { return (b & 0x7f80) == 0x7f80 && (b & 0x7f); }
/* Equal bits, or both NaN (finite keys never make a NaN: the check is then bit for bit). */
NOCOV static int same_mean(uint16_t got, uint16_t want) {
    return got == want || (bf16_is_nan(got) && bf16_is_nan(want));
}
NOCOV static int same_sum(float got, float want) {
    return memcmp(&got, &want, 4) == 0 || (isnan(got) && isnan(want));
}

/* The summary of page p, layer l, against its definition over the page's stored keys; and the
 * running sum of slot (layer, seq) when it names p. */
NOCOV static void check_summary(fuzz *f, int32_t l, int32_t p, int32_t seq) {
    hisa_runtime *rt = f->rt;
    int64_t si = hisa__summary_index(rt, l, p), slot = hisa__layer_index(l, rt->g.max_seqs, seq);
    const uint32_t *mask = rt->r.block_masks + si * rt->g.mask_words;
    float sum[128] = {0}, deq[128];
    int32_t cnt = 0;
    for (int32_t off = 0; off < f->B; off++) {
        if (!(mask[off / 32] >> (off % 32) & 1)) continue;
        hisa_tmodel_dequant((int32_t)rt->g.key_format, (int32_t)rt->g.block_size, hisa__page(rt, l, p), off, deq);
        for (int d = 0; d < 128; d++) sum[d] += deq[d]; /* fp32, offset order, from 0 */
        cnt++;
    }
    const uint16_t *mean = rt->r.block_means + si * 128;
    for (int d = 0; d < 128; d++) FUZZ_ASSERT(same_mean(mean[d], cnt ? model_bf16_bits(sum[d] / (float)cnt) : 0));
    if (rt->r.sum_pages[slot] != p) return;
    const float *got = rt->r.block_sums + slot * 128;
    for (int d = 0; d < 128; d++) FUZZ_ASSERT(same_sum(got[d], sum[d]));
}

NOCOV static void check_invariants(fuzz *f, int full) {
    hisa_runtime *rt = f->rt;
    hisa_memory_report rep;
    FUZZ_ASSERT(hisa_memory_report_get(rt, &rep) == HISA_OK);
    FUZZ_ASSERT(rep.pages_total == f->n_pages);
    FUZZ_ASSERT(rep.pages_used + rep.pages_free == rep.pages_total);
    FUZZ_ASSERT(rep.pages_free == rt->kv.n_free_pages);
    FUZZ_ASSERT(rep.pages_free == model_free(f));
    FUZZ_ASSERT(rep.pages_high_water >= rep.pages_used && rep.pages_high_water <= rep.pages_total);
    uint8_t is_free[F_PAGES];
    int32_t p_to_h[F_PAGES], h_to_p[F_PAGES], holders[F_PAGES];
    memset(is_free, 0, sizeof is_free);
    memset(holders, 0, sizeof holders);
    memset(p_to_h, 0xff, sizeof p_to_h);
    memset(h_to_p, 0xff, sizeof h_to_p);
    int32_t open = 0;
    int64_t tokens = 0;
    for (int32_t i = 0; i < rt->kv.n_free_pages; i++) {
        int32_t p = rt->r.free_pages[i];
        FUZZ_ASSERT(p >= 0 && p < f->n_pages && !is_free[p]);
        is_free[p] = 1;
    }
    for (int32_t sq = 0; sq < F_SEQS + 2; sq++) {
        int32_t len = -7, pages[F_PAGES + 1], np = -7;
        int err = hisa_seq_length(rt, sq, &len);
        int model_open = sq < f->max_seqs && f->seq[sq].open;
        FUZZ_ASSERT(model_open ? err == HISA_OK : err == HISA_ESEQ);
        if (!model_open) continue;
        open++;
        FUZZ_ASSERT(len == f->seq[sq].len);
        tokens += len;
        FUZZ_ASSERT(hisa_seq_pages(rt, sq, pages, F_PAGES + 1, &np) == HISA_OK);
        FUZZ_ASSERT(np == (len + f->B - 1) / f->B);
        for (int32_t b = 0; b < np; b++) {
            int32_t p = pages[b], h = f->seq[sq].pg[b];
            FUZZ_ASSERT(p >= 0 && p < f->n_pages && !is_free[p]);
            FUZZ_ASSERT(h >= 0 && h < f->n_pages && f->mref[h] > 0);
            if (p_to_h[p] < 0 && h_to_p[h] < 0) {
                p_to_h[p] = h;
                h_to_p[h] = p;
            }
            /* one runtime page per model page: held by exactly the sequences the model shares it with */
            FUZZ_ASSERT(p_to_h[p] == h && h_to_p[h] == p);
            holders[p]++;
            if (f->prev_h[p] != h) { /* handed out since the last check: fresh summaries */
                for (int32_t l = 0; l < F_LAYERS; l++) f->dirty[l][p] = 1;
                f->prev_h[p] = h;
            }
            for (int32_t l = 0; l < f->L; l++) {
                const uint32_t *mask = rt->r.block_masks + hisa__summary_index(rt, l, p) * rt->g.mask_words;
                for (int32_t off = 0; off < f->B; off++) {
                    int32_t pos = b * f->B + off;
                    int bit = mask[off / 32] >> (off % 32) & 1;
                    int want = pos < len && f->seq[sq].written[l][pos];
                    FUZZ_ASSERT(bit == want);
                }
                /* a shared page's summary once per holder: each one's running-sum slot may name it */
                if (full || f->dirty[l][p]) check_summary(f, l, p, sq);
            }
        }
        /* the running sums: of none of its pages (-1), or of one of them */
        for (int32_t l = 0; l < f->L; l++) {
            int32_t sp = rt->r.sum_pages[hisa__layer_index(l, rt->g.max_seqs, sq)], own = sp == -1;
            for (int32_t b = 0; b < np; b++) own |= pages[b] == sp;
            FUZZ_ASSERT(own);
        }
    }
    int32_t held = 0, shared = 0;
    for (int32_t p = 0; p < f->n_pages; p++) {
        FUZZ_ASSERT(is_free[p] != (holders[p] > 0)); /* none lost, none both free and held */
        FUZZ_ASSERT(rt->r.page_refs[p] == holders[p]);
        if (is_free[p]) f->prev_h[p] = -1;
        held += holders[p] > 0;
        shared += holders[p] > 1;
    }
    memset(f->dirty, 0, sizeof f->dirty);
    FUZZ_ASSERT(held == rep.pages_used);
    FUZZ_ASSERT(shared == rep.pages_shared && shared == model_n_shared(f));
    FUZZ_ASSERT(open == rep.seqs_open);
    FUZZ_ASSERT(tokens == rep.tokens);
}

NOCOV static void check_selection(fuzz *f, const int32_t *out, int32_t t, int32_t seq, int slots) {
    int32_t n = t + 1, want = n < f->k ? n : f->k;
    uint8_t seen[F_CTX];
    memset(seen, 0, sizeof seen);
    int32_t pages[F_PAGES], np;
    FUZZ_ASSERT(hisa_seq_pages(f->rt, seq, pages, F_PAGES, &np) == HISA_OK);
    for (int32_t i = 0; i < f->k; i++) {
        if (i >= want) {
            FUZZ_ASSERT(out[i] == -1);
            continue;
        }
        int32_t pos = out[i];
        if (slots) { /* map the slot back to a position */
            int32_t page = out[i] / f->B, b = 0;
            FUZZ_ASSERT(out[i] >= 0);
            while (b < np && pages[b] != page) b++;
            FUZZ_ASSERT(b < np);
            pos = b * f->B + out[i] % f->B;
        }
        FUZZ_ASSERT(pos >= 0 && pos <= t && !seen[pos]);
        seen[pos] = 1;
    }
}

/* Does every position <= t of seq hold a written key of layer l? */
NOCOV static int all_written(const fuzz *f, int32_t seq, int32_t l, int32_t t) {
    for (int32_t p = 0; p <= t; p++)
        if (!f->seq[seq].written[l][p]) return 0;
    return 1;
}

static float g_keys[F_PREFILL * 128 + 128], g_q[F_PREFILL * F_HEADS * 128], g_w[F_PREFILL * F_HEADS];
static uint8_t g_codes[F_PREFILL * 128], g_payload[F_PREFILL * F_PAYLOAD];
static float g_scales[F_PREFILL];
static int32_t g_out[F_PREFILL * F_TOPK + 64], g_out_snap[F_PREFILL * F_TOPK + 64];

static void run_ops(fuzz *f, stream *s) {
    hisa_runtime *rt = f->rt;
    for (int32_t op = 0; op < 96 && !done(s); op++) {
        uint8_t code = u8(s);
        snapshot(f);
        memcpy(g_out_snap, g_out, sizeof g_out);
        int err = HISA_OK;
        /* codes 0xf0..0xff: fork (the codes of the stored corpus stay what they were) */
        switch (code >= 0xf0 ? 12 : code % 12) {
        case 0: { /* open */
            int32_t id = -5;
            err = hisa_seq_open(rt, &id);
            if (!err) {
                FUZZ_ASSERT(id >= 0 && id < f->max_seqs && !f->seq[id].open);
                model_reset(&f->seq[id]);
                f->seq[id].open = 1;
            } else {
                int32_t n_open = 0;
                for (int32_t i = 0; i < f->max_seqs; i++) n_open += f->seq[i].open;
                FUZZ_ASSERT(err == HISA_ESEQFULL && n_open == f->max_seqs && id == -5);
            }
            break;
        }
        case 1: { /* close */
            int32_t sq = pick_seq(f, s);
            err = hisa_seq_close(rt, sq);
            FUZZ_ASSERT(err == (valid_seq(f, sq) ? HISA_OK : HISA_ESEQ));
            if (!err) {
                model_release(f, sq, 0);
                model_reset(&f->seq[sq]);
            }
            break;
        }
        case 2:
        case 3: { /* extend */
            int32_t sq = pick_seq(f, s), n = pick_count(s, 80);
            int want = !valid_seq(f, sq) ? HISA_ESEQ : n < 0 ? HISA_EINVAL
                     : (int64_t)f->seq[sq].len + n > f->ctx ? HISA_ELIMIT
                     : blocks_of(f, (int64_t)f->seq[sq].len + n) - blocks_of(f, f->seq[sq].len) > model_free(f) ? HISA_EPOOL
                     : HISA_OK;
            err = hisa_seq_extend(rt, sq, n);
            FUZZ_ASSERT(err == want);
            if (!err) {
                mseq *m = &f->seq[sq];
                for (int32_t b = blocks_of(f, m->len); b < blocks_of(f, (int64_t)m->len + n); b++) m->pg[b] = model_take(f);
                m->len += n;
            }
            break;
        }
        case 4: { /* truncate */
            int32_t sq = pick_seq(f, s), len = pick_count(s, F_CTX);
            /* into a shared block (len % B != 0): the sequence's own copy, one free page needed */
            int copy = valid_seq(f, sq) && len >= 0 && len < f->seq[sq].len && len % f->B &&
                       model_shared_at(f, sq, len);
            int want = !valid_seq(f, sq) ? HISA_ESEQ : len < 0 || len > f->seq[sq].len ? HISA_ERANGE
                     : copy && model_free(f) == 0 ? HISA_EPOOL : HISA_OK;
            err = hisa_seq_truncate(rt, sq, len);
            FUZZ_ASSERT(err == want);
            if (!err && len % f->B) { /* the partial last page was recomputed from its keys (or copied) */
                int32_t p = rt->r.page_table[(int64_t)sq * rt->g.pages_per_seq + len / f->B];
                for (int32_t l = 0; l < f->L; l++) f->dirty[l][p] = 1;
            }
            if (!err) {
                mseq *m = &f->seq[sq];
                model_release(f, sq, blocks_of(f, len));
                if (copy) {
                    f->mref[m->pg[len / f->B]]--;
                    m->pg[len / f->B] = model_take(f);
                }
                for (int32_t l = 0; l < F_LAYERS; l++)
                    memset(m->written[l] + len, 0, (size_t)(F_CTX - len));
                m->len = len;
            }
            break;
        }
        case 5:
        case 6: { /* write_keys: a batch */
            hisa_write w = {0};
            int32_t ids[F_BATCH + 2], pos[F_BATCH + 2];
            uint8_t how = u8(s);
            w.layer = (how & 3) == 3 ? (int32_t)(u8(s) % 5) - 1 : (int32_t)(how & 1);
            w.n_tokens = (how >> 2 & 7) == 7 ? pick_count(s, F_BATCH + 2) : 1 + (how >> 2 & 3);
            int32_t n = w.n_tokens < 0 ? 0 : w.n_tokens > F_BATCH + 2 ? F_BATCH + 2 : w.n_tokens;
            for (int32_t i = 0; i < n; i++) {
                ids[i] = pick_seq(f, s);
                uint8_t pb = u8(s);
                int32_t len = ids[i] >= 0 && ids[i] < f->max_seqs ? f->seq[ids[i]].len : 0;
                pos[i] = pb < 230 ? (len ? (int32_t)(pb % len) : 0) : (int32_t)(pb % 8) - 4 + len;
            }
            w.seq_ids = (how & 0x80) && u8(s) == 0 ? NULL : ids;
            w.positions = (how & 0x20) ? pos : NULL;
            uint8_t data = u8(s);
            fill_keys(s, g_keys, n);
            if (data % 4 == 0 || data % 4 == 3) { /* fp8 codes + scales */
                for (int32_t i = 0; i < n * 128; i++) g_codes[i] = u8(s);
                for (int32_t i = 0; i < n; i++) {
                    uint8_t sb = u8(s);
                    g_scales[i] = sb < 200 ? 0.001f + (float)sb * 0.01f : sb < 250 ? g_keys[i] : 0.0f;
                }
                w.codes = g_codes;
                w.scales = (data & 0x40) ? NULL : g_scales;
                if (data % 4 == 3) w.keys = g_keys; /* both: invalid */
            } else {
                w.keys = g_keys;
            }
            if (data & 0x10) w.payload = g_payload;
            if (data & 0x20) w.flags = data >> 5;
            if (w.n_tokens > F_BATCH + 2) w.n_tokens = F_BATCH + 2 + (data & 1) * 100000; /* over */
            for (int32_t i = 0; i < n && w.seq_ids; i++)
                touch(f, w.layer, ids[i], w.positions ? pos[i] : (ids[i] >= 0 && ids[i] < f->max_seqs ? f->seq[ids[i]].len - 1 : -1));
            err = hisa_write_keys(rt, &w);
            if (!err) {
                for (int32_t i = 0; i < w.n_tokens; i++) {
                    int32_t p = w.positions ? pos[i] : f->seq[ids[i]].len - 1;
                    FUZZ_ASSERT(!model_shared_at(f, ids[i], p)); /* shared pages are read-only */
                    f->seq[ids[i]].written[w.layer][p] = 1;
                }
            } else if (err == HISA_ESHARED) { /* some token lands in a shared page */
                int hit = 0;
                for (int32_t i = 0; i < n && w.seq_ids; i++)
                    hit |= model_shared_at(f, ids[i], w.positions ? pos[i] : valid_seq(f, ids[i]) ? f->seq[ids[i]].len - 1 : -1);
                FUZZ_ASSERT(hit);
            }
            break;
        }
        case 7: { /* write_range */
            hisa_write w = {0};
            int32_t sq = pick_seq(f, s);
            uint8_t how = u8(s);
            int32_t len = sq >= 0 && sq < f->max_seqs ? f->seq[sq].len : 0;
            int32_t pos0 = how < 200 && len ? (int32_t)(u8(s) % len) : pick_count(s, F_CTX);
            int32_t n = how < 200 ? 1 + (int32_t)(u8(s) % F_PREFILL) : pick_count(s, F_PREFILL + 1);
            if (n > F_PREFILL) n = F_PREFILL + 1 + (how & 1) * 1000; /* over the limit */
            w.layer = (int32_t)(how & 1);
            w.n_tokens = n;
            int32_t nk = n < 0 ? 0 : n > F_PREFILL ? F_PREFILL : n;
            fill_keys(s, g_keys, nk);
            w.keys = g_keys;
            if (how & 2) w.payload = g_payload;
            for (int32_t i = 0; i < nk; i++) touch(f, w.layer, sq, (int64_t)pos0 + i);
            err = hisa_write_range(rt, sq, pos0, &w);
            if (!err)
                for (int32_t i = 0; i < n; i++) {
                    FUZZ_ASSERT(!model_shared_at(f, sq, (int64_t)pos0 + i)); /* shared pages are read-only */
                    f->seq[sq].written[w.layer][pos0 + i] = 1;
                }
            else if (err == HISA_ESHARED) {
                int hit = 0;
                for (int32_t i = 0; i < nk; i++) hit |= model_shared_at(f, sq, (int64_t)pos0 + i);
                FUZZ_ASSERT(hit);
            }
            break;
        }
        case 8:
        case 9: { /* decode */
            hisa_decode d = {0};
            int32_t ids[F_BATCH + 2];
            uint8_t how = u8(s);
            d.layer = (how & 0x80) ? (int32_t)(u8(s) % 4) - 1 : (int32_t)(how & 1);
            d.mode = (how & 0x40) ? (hisa_mode)(u8(s) % 3) : (hisa_mode)(how >> 1 & 1);
            d.n_seqs = (how >> 2 & 7) == 7 ? pick_count(s, F_BATCH + 1) : 1 + (how >> 2 & 3);
            int32_t n = d.n_seqs < 0 ? 0 : d.n_seqs > F_BATCH + 2 ? F_BATCH + 2 : d.n_seqs;
            for (int32_t i = 0; i < n; i++) ids[i] = pick_seq(f, s);
            if (d.n_seqs > F_BATCH + 2) d.n_seqs = F_BATCH + 2 + (how & 1) * 5000;
            d.seq_ids = ids;
            fill_keys(s, g_q, n * F_HEADS > F_PREFILL ? F_PREFILL : n * F_HEADS);
            for (int32_t i = 0; i < n * F_HEADS; i++) g_w[i] = (float)(int8_t)u8(s) / 16.0f;
            d.q = g_q;
            d.w = g_w;
            d.out = g_out;
            d.flags = (how & 0x20) ? HISA_SLOTS : 0;
            if (u8(s) == 0xff) d.flags = 0x80; /* invalid */
            err = hisa_select_decode(rt, &d);
            if (!err)
                for (int32_t i = 0; i < d.n_seqs; i++) {
                    int32_t sq = ids[i], t = f->seq[sq].len - 1;
                    FUZZ_ASSERT(t >= 0 && all_written(f, sq, d.layer, t));
                    check_selection(f, g_out + (int64_t)i * f->k, t, sq, (d.flags & HISA_SLOTS) != 0);
                }
            else if (err == HISA_EUNWRITTEN) { /* some chosen sequence has a hole */
                int hole = 0;
                for (int32_t i = 0; i < n && d.n_seqs <= f->max_batch; i++)
                    if (ids[i] >= 0 && ids[i] < f->max_seqs && f->seq[ids[i]].open && f->seq[ids[i]].len > 0)
                        hole |= !all_written(f, ids[i], d.layer, f->seq[ids[i]].len - 1);
                FUZZ_ASSERT(hole);
            }
            break;
        }
        case 10: { /* prefill */
            hisa_prefill p = {0};
            uint8_t how = u8(s);
            p.seq = pick_seq(f, s);
            int32_t len = p.seq >= 0 && p.seq < f->max_seqs ? f->seq[p.seq].len : 0;
            p.layer = (int32_t)(how & 1);
            p.mode = (hisa_mode)(how >> 1 & 1);
            if (how < 220 && len) {
                p.t0 = (int32_t)(u8(s) % len);
                p.n_q = 1 + (int32_t)(u8(s) % (len - p.t0));
                if (p.n_q > 8) p.n_q = 8;
            } else {
                p.t0 = pick_count(s, F_CTX);
                p.n_q = pick_count(s, 8);
            }
            int32_t nq = p.n_q < 0 ? 0 : p.n_q > 8 ? 8 : p.n_q;
            fill_keys(s, g_q, nq * F_HEADS);
            for (int32_t i = 0; i < nq * F_HEADS; i++) g_w[i] = (float)(int8_t)u8(s) / 16.0f;
            if (p.n_q > 8) p.n_q = 100000; /* over the limit */
            p.q = g_q;
            p.w = g_w;
            p.out = g_out;
            p.flags = (how & 4) ? HISA_SLOTS : 0;
            err = hisa_select_prefill(rt, &p);
            if (!err)
                for (int32_t i = 0; i < p.n_q; i++) {
                    FUZZ_ASSERT(all_written(f, p.seq, p.layer, p.t0 + i));
                    check_selection(f, g_out + (int64_t)i * f->k, p.t0 + i, p.seq, (p.flags & HISA_SLOTS) != 0);
                }
            break;
        }
        case 12: { /* fork: parent and length from the stream, valid or not */
            uint8_t how = u8(s);
            int32_t parent = pick_seq(f, s), plen = valid_seq(f, parent) ? f->seq[parent].len : 0, len;
            switch (how & 7) {
            case 0: len = 0; break;
            case 1: len = plen; break;
            case 2: len = f->B * (int32_t)(u8(s) % (uint32_t)(plen / f->B + 1)); break; /* a multiple of B */
            case 3: /* k B - 1 or k B + 1 (possibly past the end) */
                len = f->B * (int32_t)(1 + u8(s) % (uint32_t)(plen / f->B + 1)) + ((how & 8) ? 1 : -1);
                break;
            case 4: len = plen + 1 + (int32_t)(u8(s) % 4); break; /* past the end */
            case 5: len = pick_count(s, F_CTX); break; /* anything, negative included */
            default: len = (int32_t)(u8(s) % (uint32_t)(plen + 1));
            }
            int null_out = how == 0x5d; /* one value of the byte: runs of 0xff stay useful forks */
            int want = null_out ? HISA_EINVAL : !valid_seq(f, parent) ? HISA_ESEQ
                     : len < 0 || len > plen ? HISA_ERANGE : model_n_open(f) == f->max_seqs ? HISA_ESEQFULL
                     : len % f->B && model_free(f) == 0 ? HISA_EPOOL : HISA_OK;
            int32_t child = -5;
            err = hisa_seq_fork(rt, parent, len, null_out ? NULL : &child);
            FUZZ_ASSERT(err == want);
            if (err) {
                FUZZ_ASSERT(child == -5);
                break;
            }
            FUZZ_ASSERT(child >= 0 && child < f->max_seqs && !f->seq[child].open && child != parent);
            mseq *pm = &f->seq[parent], *c = &f->seq[child];
            model_reset(c);
            c->open = 1;
            c->len = len;
            for (int32_t l = 0; l < F_LAYERS; l++) memcpy(c->written[l], pm->written[l], (size_t)len);
            for (int32_t b = 0; b < len / f->B; b++) { /* complete blocks: the parent's pages */
                c->pg[b] = pm->pg[b];
                f->mref[c->pg[b]]++;
            }
            if (len % f->B) { /* the partial last block: a copy */
                c->pg[len / f->B] = model_take(f);
                int32_t p = rt->r.page_table[(int64_t)child * rt->g.pages_per_seq + len / f->B];
                for (int32_t l = 0; l < f->L; l++) f->dirty[l][p] = 1;
            }
            break;
        }
        default: { /* the read-only calls */
            int32_t sq = pick_seq(f, s), pages[F_PAGES], np = -3, len = -3;
            int32_t cap = (int32_t)(u8(s) % (F_PAGES + 1)) - 1;
            err = hisa_seq_pages(rt, sq, pages, cap, &np);
            if (!err) FUZZ_ASSERT(np <= cap && sq >= 0 && sq < f->max_seqs && f->seq[sq].open);
            else FUZZ_ASSERT(np == -3);
            check_code(err);
            err = hisa_seq_length(rt, sq, &len);
            if (err) FUZZ_ASSERT(len == -3);
            check_code(err);
            void *base = NULL;
            int32_t layer = (int32_t)(u8(s) % 4) - 1;
            err = hisa_payload_pool(rt, layer, &base);
            if (!err) FUZZ_ASSERT(base != NULL && f->payload > 0 && layer >= 0 && layer < f->L);
            FUZZ_ASSERT(hisa_sync(rt) == HISA_OK && hisa_set_stream(rt, NULL) == HISA_OK);
            break;
        }
        }
        check_code(err);
        if (err) { /* an error changes nothing, the caller's output buffer included */
            check_unchanged(f);
            FUZZ_ASSERT(memcmp(g_out_snap, g_out, sizeof g_out) == 0);
        }
        check_invariants(f, 0);
    }
    check_invariants(f, 1);
}

/* Rarely: a raw configuration straight from the stream, to fuzz validation and planning. */
static void raw_config(stream *s) {
    hisa_config c;
    int32_t *fields = (int32_t *)&c;
    for (size_t i = 0; i < sizeof c / sizeof(int32_t); i++) {
        uint8_t b = u8(s);
        fields[i] = b < 128 ? (int32_t)b : b < 192 ? (int32_t)u16(s) : (int32_t)u32(s);
    }
    hisa_plan plan;
    hisa_config resolved;
    int err = hisa_plan_compute(&c, &plan);
    check_code(err);
    FUZZ_ASSERT((err == HISA_OK) == (hisa_config_resolve(&c, &resolved) == HISA_OK));
    if (err) {
        FUZZ_ASSERT(err == HISA_ECONFIG || err == HISA_EOVERFLOW);
        FUZZ_ASSERT(plan.invalid_field != NULL);
        return;
    }
    FUZZ_ASSERT(memcmp(&plan.config, &resolved, sizeof resolved) == 0);
    const hisa_config *r = &plan.config;
    FUZZ_ASSERT((int64_t)(r->top_blocks - 1) * r->block_size >= r->topk);
    FUZZ_ASSERT((int64_t)r->n_pages * r->block_size <= ((int64_t)1 << 31)); /* int32 slots */
    uint64_t end[2] = {0, 0};
    for (int32_t i = 0; i < plan.n_regions; i++) {
        const hisa_region *g = &plan.regions[i];
        FUZZ_ASSERT(g->offset % g->align == 0 && g->offset >= end[g->on_device]);
        end[g->on_device] = g->offset + g->bytes;
    }
    FUZZ_ASSERT(end[1] <= plan.device_bytes && end[0] <= plan.host_bytes);
    if (plan.device_bytes + plan.host_bytes <= (64u << 20) && r->device == HISA_DEVICE_CPU) {
        hisa_runtime *rt = NULL;
        err = hisa_open(&rt, &c, NULL);
        FUZZ_ASSERT(err == HISA_OK && rt);
        int32_t seq;
        FUZZ_ASSERT(hisa_seq_open(rt, &seq) == HISA_OK);
        hisa_close(rt);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    stream s = {data, size, 0};
    uint8_t sel = u8(&s);
    if (sel == 0xff) {
        raw_config(&s);
        return 0;
    }
    fuzz f;
    memset(&f, 0, sizeof f);
    f.L = 1 + (sel & 1);
    f.B = 32 << (sel >> 1 & 1);
    int32_t H = 1 + (sel >> 2 & 3), m = 2 + (sel >> 4 & 3);
    f.k = 1 + (int32_t)(u16(&s) % (uint32_t)((m - 1) * f.B));
    if (f.k > F_TOPK) f.k = F_TOPK;
    f.max_seqs = 1 + (u8(&s) % F_SEQS);
    f.ctx = 1 + (int32_t)(u16(&s) % F_CTX);
    f.n_pages = 1 + (u8(&s) % F_PAGES);
    f.max_batch = 1 + (u8(&s) % F_BATCH);
    f.max_prefill = 1 + (u8(&s) % F_PREFILL);
    f.payload = (sel & 0x40) ? 1 + u8(&s) % F_PAYLOAD : 0;
    hisa_config c = {.n_layers = f.L, .n_heads = H, .block_size = f.B, .top_blocks = m, .topk = f.k,
                     .key_format = (sel & 0x80) ? HISA_KEY_BF16 : HISA_KEY_FP8,
                     .payload_bytes = f.payload, .max_seqs = f.max_seqs, .max_context = f.ctx,
                     .n_pages = f.n_pages, .max_batch = f.max_batch,
                     .max_prefill_queries = f.max_prefill};
    int err = hisa_open(&f.rt, &c, NULL);
    FUZZ_ASSERT(err == HISA_OK);
    f.snap_dev = malloc(summary_bytes(&f));
    f.snap_host = malloc(f.rt->arena.bytes[HISA__ARENA_HOST]);
    FUZZ_ASSERT(f.snap_dev && f.snap_host);
    for (int32_t i = 0; i < F_PREFILL * F_PAYLOAD; i++) g_payload[i] = (uint8_t)(i * 7);
    for (int32_t p = 0; p < F_PAGES; p++) f.prev_h[p] = -1;
    for (int32_t i = 0; i < F_SEQS; i++) model_reset(&f.seq[i]);
    check_invariants(&f, 1);
    run_ops(&f, &s);
    /* close everything: every page back on the free stack */
    for (int32_t i = 0; i < f.max_seqs; i++)
        if (f.seq[i].open) {
            FUZZ_ASSERT(hisa_seq_close(f.rt, i) == HISA_OK);
            f.seq[i].open = 0;
        }
    hisa_memory_report rep;
    FUZZ_ASSERT(hisa_memory_report_get(f.rt, &rep) == HISA_OK);
    FUZZ_ASSERT(rep.pages_free == f.n_pages && rep.seqs_open == 0 && rep.tokens == 0);
    hisa_close(f.rt);
    free(f.snap_dev);
    free(f.snap_host);
    return 0;
}
