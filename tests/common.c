/* common.c: shared test helpers (see common.h). */
#include "common.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "../runtime/internal.h"
#include "../tools/tools.h"

int hisa_agree(const float *score, int32_t n_ids, const uint8_t *is_cand, const int32_t *ref,
               const int32_t *got, int32_t k, char *why, size_t why_len) {
    return hisa_agree_tol(score, n_ids, is_cand, ref, got, k, 0.0f, why, why_len);
}

int hisa_agree_tol(const float *score, int32_t n_ids, const uint8_t *is_cand, const int32_t *ref,
                   const int32_t *got, int32_t k, float eps_extra, char *why, size_t why_len) {
    assert(eps_extra >= 0.0f);
    int32_t n_ref = 0, n_got = 0;
    while (n_ref < k && ref[n_ref] >= 0) n_ref++;
    while (n_got < k && got[n_got] >= 0) n_got++;
    for (int32_t i = n_got; i < k; i++)
        if (got[i] != -1) {
            snprintf(why, why_len, "entry %d is %d after the -1 padding began at %d", i, got[i], n_got);
            return 0;
        }
    if (n_ref != n_got) {
        snprintf(why, why_len, "size %d, reference %d", n_got, n_ref);
        return 0;
    }
    uint8_t *in_ref = calloc((size_t)n_ids + 1, 1), *in_got = calloc((size_t)n_ids + 1, 1);
    int ok = 1;
    float max_abs = 0.0f, tau = INFINITY;
    for (int32_t i = 0; i < n_ids; i++)
        if (!is_cand || is_cand[i]) max_abs = fmaxf(max_abs, fabsf(score[i]));
    float eps = 1e-4f * max_abs + eps_extra;
    for (int32_t i = 0; i < n_ref; i++) {
        in_ref[ref[i]] = 1;
        tau = fminf(tau, score[ref[i]]);
    }
    for (int32_t i = 0; i < n_got && ok; i++) {
        int32_t s = got[i];
        if (s < 0 || s >= n_ids || (is_cand && !is_cand[s])) {
            snprintf(why, why_len, "entry %d = %d is not a valid candidate", i, s);
            ok = 0;
        } else if (in_got[s]) {
            snprintf(why, why_len, "duplicate %d", s);
            ok = 0;
        } else {
            in_got[s] = 1;
            if (!in_ref[s] && !(score[s] >= tau - eps)) {
                snprintf(why, why_len, "extra %d scores %.6g < tau %.6g - eps %.3g", s, score[s], tau, eps);
                ok = 0;
            }
        }
    }
    for (int32_t i = 0; i < n_ref && ok; i++) {
        int32_t s = ref[i];
        if (!in_got[s] && !(score[s] <= tau + eps)) {
            snprintf(why, why_len, "missing %d scores %.6g > tau %.6g + eps %.3g", s, score[s], tau, eps);
            ok = 0;
        }
    }
    free(in_ref);
    free(in_got);
    return ok;
}

static uint64_t mix(uint64_t a, uint64_t b) {
    uint64_t s = a * 0x9E3779B97F4A7C15ull ^ (b + 0x632BE59BD9B4E019ull);
    return hisa_test_rng(&s);
}

/* Segment boundaries are a deterministic function of the seed: segment j starts at start(j). */
static int64_t segment_of(uint64_t seed, int64_t pos, int64_t *seg_start) {
    int64_t start = 0, j = 0;
    for (;;) {
        int64_t len = 16 + (int64_t)(mix(seed, (uint64_t)j) % 385);
        if (pos < start + len) break;
        start += len;
        j++;
    }
    *seg_start = start;
    return j;
}

static void topic_vector(uint64_t seed, int64_t topic, float *v) {
    uint64_t s = mix(seed ^ 0xABCDEFull, (uint64_t)topic);
    for (int d = 0; d < 128; d++) v[d] = hisa_test_gauss(&s);
}

static const float *g_sort_j; /* qsort has no context argument; tests run on one thread */

static int by_j_desc(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    float jx = g_sort_j[x], jy = g_sort_j[y];
    if (jx != jy) return jx > jy ? -1 : 1; /* NaN scores do not occur in these tests' means */
    return (x > y) - (x < y);
}

int hisa_agree_blocks(const float *J, int32_t nb, int32_t m, const int32_t *blocks, char *why, size_t why_len) {
    const int32_t last = nb - 1;
    if (blocks[0] != 0 || blocks[m - 1] != last) {
        snprintf(why, why_len, "blocks 0 / last not forced (%d, %d; last %d)", blocks[0], blocks[m - 1], last);
        return 0;
    }
    for (int32_t i = 1; i < m; i++)
        if (blocks[i] <= blocks[i - 1] || blocks[i] > last) {
            snprintf(why, why_len, "kept blocks not ascending in 0 .. %d at %d (%d after %d)", last, i, blocks[i],
                     blocks[i - 1]);
            return 0;
        }
    if (m <= 2) return 1;
    int32_t *order = malloc(sizeof(int32_t) * (size_t)nb), *ref = malloc(sizeof(int32_t) * (size_t)m);
    uint8_t *is_cand = calloc((size_t)nb, 1);
    for (int32_t b = 1; b < last; b++) {
        order[b - 1] = b;
        is_cand[b] = 1;
    }
    g_sort_j = J;
    qsort(order, (size_t)(last - 1), sizeof(int32_t), by_j_desc);
    memcpy(ref, order, sizeof(int32_t) * (size_t)(m - 2));
    int ok = hisa_agree(J, nb, is_cand, ref, blocks + 1, m - 2, why, why_len);
    free(order);
    free(ref);
    free(is_cand);
    return ok;
}

void hisa_tgen_keys(uint64_t seed, int64_t pos0, int32_t n, float *keys) {
    int64_t seg_start = 0, seg = segment_of(seed, pos0, &seg_start), seg_len = 0;
    float topic[128];
    for (int32_t i = 0; i < n; i++) {
        int64_t pos = pos0 + i;
        seg_len = 16 + (int64_t)(mix(seed, (uint64_t)seg) % 385);
        if (pos >= seg_start + seg_len) {
            seg_start += seg_len;
            seg++;
        }
        topic_vector(seed, seg % 37, topic); /* topics recur, as in real text */
        uint64_t s = mix(seed ^ 0x5555ull, (uint64_t)pos);
        float *k = keys + (int64_t)i * 128;
        for (int d = 0; d < 128; d++) k[d] = topic[d] + 0.7f * hisa_test_gauss(&s);
        if (pos < 4)
            for (int d = 0; d < 128; d++) k[d] *= 3.0f; /* attention sinks */
    }
}

void hisa_tgen_query(uint64_t seed, int32_t H, int64_t near, float *q, float *w) {
    hisa_tgen_query_keys(seed, seed, H, near, q, w);
}

void hisa_tgen_query_keys(uint64_t key_seed, uint64_t seed, int32_t H, int64_t near, float *q, float *w) {
    uint64_t s = mix(seed ^ 0x7777ull, (uint64_t)near);
    float topic[128];
    int64_t seg_start;
    if (near >= 0) topic_vector(key_seed, segment_of(key_seed, near, &seg_start) % 37, topic);
    for (int32_t h = 0; h < H; h++) {
        for (int d = 0; d < 128; d++)
            q[h * 128 + d] = (near >= 0 ? 0.5f * topic[d] : 0.0f) + 0.5f * hisa_test_gauss(&s);
        w[h] = 0.2f + 0.8f * (hisa_test_uniform(&s) * 0.5f + 0.5f);
        if (h % 7 == 3) w[h] = -0.1f; /* mostly positive */
    }
}

void hisa_tquant_query(const float *f, const float *w, int32_t H, uint8_t *codes, float *vals, float *w8) {
    tool_q_to_fp8(f, w, H, codes, w8); /* the tools' act_quant (tools/qformat.c, tested there) */
    for (int64_t i = 0; i < (int64_t)H * HISA_D; i++) vals[i] = hisa__e4m3_to_f32(codes[i]);
}

double hisa_t_native_bound(const float *q, const float *w, int32_t H, const float *key) {
    double b = 0.0;
    for (int32_t h = 0; h < H; h++) {
        double a = 0.0;
        for (int d = 0; d < 128; d++) a += fabs((double)q[h * 128 + d] * key[d]);
        b += fabs((double)w[h]) * a;
    }
    return ldexp(b, -10);
}

double hisa_t_score(const float *q, const float *w, int32_t H, const float *key) {
    double total = 0.0;
    for (int32_t h = 0; h < H; h++) {
        double dot = 0.0;
        for (int d = 0; d < 128; d++) dot += (double)q[h * 128 + d] * key[d];
        total += w[h] * (dot > 0 ? dot : 0);
    }
    return total;
}

/* Brute-force top-k over (score, id) with ties to lower id: selection by repeated scan is too
 * slow, so sort a copy. */
typedef struct { double s; int32_t id; } scored;
static int cmp_scored(const void *a, const void *b) {
    const scored *x = a, *y = b;
    if (x->s != y->s) return x->s > y->s ? -1 : 1;
    return x->id - y->id;
}
static int cmp_int(const void *a, const void *b) { return *(const int32_t *)a - *(const int32_t *)b; }

void hisa_brute_select(const float *deq, const float *means, int32_t n, int32_t B, int32_t m,
                       int32_t k, int32_t H, const float *q, const float *w, int flat,
                       int32_t *out, float *I, float *J) {
    int32_t nb = (n + B - 1) / B, last = nb - 1;
    scored *c = malloc(sizeof(scored) * (size_t)(n > nb ? n : nb));
    uint8_t *cand = calloc((size_t)n, 1);
    float *qr = malloc(sizeof(float) * (size_t)H * 128); /* q rounded to bf16, as the SPEC says */
    for (int32_t i = 0; i < H * 128; i++) qr[i] = hisa__bf16_to_f32(hisa__bf16_from_f32(q[i]));
    for (int32_t s = 0; s < n; s++) I[s] = (float)hisa_t_score(qr, w, H, deq + (int64_t)s * 128);
    for (int32_t b = 0; b < nb; b++) J[b] = (float)hisa_t_score(qr, w, H, means + (int64_t)b * 128);
    if (flat || nb <= m || n <= k) {
        memset(cand, 1, (size_t)n);
    } else {
        int32_t nc = 0;
        for (int32_t b = 1; b < last; b++) c[nc++] = (scored){hisa_t_score(qr, w, H, means + (int64_t)b * 128), b};
        qsort(c, (size_t)nc, sizeof *c, cmp_scored);
        for (int32_t i = 0; i < m - 2; i++)
            for (int32_t s = c[i].id * B; s < c[i].id * B + B; s++) cand[s] = 1;
        for (int32_t s = 0; s < B; s++) cand[s] = 1;
        for (int32_t s = last * B; s < n; s++) cand[s] = 1;
    }
    int32_t nc = 0;
    for (int32_t s = 0; s < n; s++)
        if (cand[s]) c[nc++] = (scored){hisa_t_score(qr, w, H, deq + (int64_t)s * 128), s};
    qsort(c, (size_t)nc, sizeof *c, cmp_scored);
    int32_t n_out = nc < k ? nc : k;
    for (int32_t i = 0; i < n_out; i++) out[i] = c[i].id;
    qsort(out, (size_t)n_out, sizeof *out, cmp_int);
    for (int32_t i = n_out; i < k; i++) out[i] = -1;
    free(qr);
    free(c);
    free(cand);
}

hisa_config hisa_tconfig(int32_t H, int32_t B, int32_t m, int32_t k, int32_t key_format,
                         int32_t max_context, int32_t max_seqs) {
    hisa_config c = {.n_heads = H, .block_size = B, .top_blocks = m, .topk = k,
                     .key_format = key_format, .max_context = max_context, .max_seqs = max_seqs,
                     .max_prefill_queries = 256};
    return c;
}

int32_t hisa_t_kernels = HISA_KERNELS_AUTO;

int hisa_tpair_open(hisa_test_ctx *ctx, hisa_config cfg, hisa_runtime **cpu, hisa_runtime **gpu) {
    *cpu = *gpu = NULL;
    cfg.kernels = hisa_t_kernels;
    cfg.device = HISA_DEVICE_CPU;
    int err = hisa_open(cpu, &cfg, NULL);
    CHECKF(err == HISA_OK, "cpu open: %s", hisa_strerror(err));
    if (err) return -1;
    cfg.device = HISA_DEVICE_CUDA(0);
    err = hisa_open(gpu, &cfg, NULL);
    if (err == HISA_ENODEVICE) {
        hisa_close(*cpu);
        *cpu = NULL;
        return 0;
    }
    CHECKF(err == HISA_OK, "cuda open: %s", hisa_strerror(err));
    if (err) {
        hisa_close(*cpu);
        *cpu = NULL;
        return -1;
    }
    return 1;
}

