/* synth.c: the structured synthetic generator (see synth.h for the model and why). */
#include "synth.h"

#include <stdlib.h>
#include <string.h>

#include "../runtime/hisa.h"

#define D HISA_HEAD_DIM

/* splitmix64: small, fast, and good enough for synthetic data; one state per stream so that
 * the layout, the noise of each layer and the queries never perturb each other. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rng_unit(uint64_t *s) { /* [0, 1) */
    return (float)(rng_next(s) >> 40) * (1.0f / 16777216.0f);
}

/* Approximately N(0,1): the sum of four uniforms from two draws, rescaled. Cheaper than
 * Box-Muller and smooth enough; a 64K-token context needs millions of these. */
static float rng_gauss(uint64_t *s) {
    uint64_t a = rng_next(s), b = rng_next(s);
    float u = (float)(a & 0xffffffffu) + (float)(a >> 32) + (float)(b & 0xffffffffu) +
              (float)(b >> 32);
    /* sum of 4 U(0, 2^32): mean 2^33, variance 4 * 2^64 / 12 */
    return (u - 8589934592.0f) * (1.7320508f / 4294967296.0f);
}

static uint64_t mix_seed(uint64_t seed, uint64_t salt) {
    uint64_t s = seed ^ (salt * 0xD1B54A32D192ED03ull);
    return rng_next(&s);
}

void synth_params_default(synth_params *p) {
    memset(p, 0, sizeof *p);
    p->seed = 1;
    p->n_heads = 64;
    p->n_layers = 1;
    p->n_topics = 64;
    p->seg_min = 32;
    p->seg_max = 512;
    p->n_sinks = 4;
    p->noise = 0.5f;
    p->query_noise = 0.5f;
    p->query_topics = 3;
    p->neg_weight_frac = 0.1f;
    p->needle_gain = 48.0f;
}

int synth_init(synth_gen *g, const synth_params *in) {
    memset(g, 0, sizeof *g);
    synth_params p = *in, d;
    synth_params_default(&d);
    if (!p.n_heads) p.n_heads = d.n_heads;
    if (!p.n_layers) p.n_layers = d.n_layers;
    if (!p.n_topics) p.n_topics = d.n_topics;
    if (!p.seg_min) p.seg_min = d.seg_min;
    if (!p.seg_max) p.seg_max = d.seg_max;
    if (!p.query_topics) p.query_topics = d.query_topics;
    if (p.needle_gain == 0) p.needle_gain = d.needle_gain;
    if (p.n_heads < 1 || p.n_layers < 1 || p.n_topics < 1 || p.n_topics > 1 << 16 ||
        p.seg_min < 1 || p.seg_max < p.seg_min || p.n_sinks < 0 || p.noise < 0 ||
        p.query_noise < 0 || p.query_topics < 1 || p.query_topics > SYNTH_QUERY_TOPICS_MAX ||
        p.neg_weight_frac < 0 || p.neg_weight_frac > 1 || p.n_needles < 0 ||
        p.n_needles > SYNTH_NEEDLES_MAX)
        return -1;
    g->p = p;
    size_t L = (size_t)p.n_layers;
    g->topics = malloc(sizeof(float) * L * (size_t)p.n_topics * D);
    g->sink = malloc(sizeof(float) * L * D);
    g->needle = malloc(sizeof(float) * L * D);
    g->topic_tokens = calloc((size_t)p.n_topics, sizeof(int64_t));
    g->rng_noise = malloc(sizeof(uint64_t) * L);
    if (!g->topics || !g->sink || !g->needle || !g->topic_tokens || !g->rng_noise) {
        synth_free(g);
        return -1;
    }
    for (size_t l = 0; l < L; l++) {
        uint64_t s = mix_seed(p.seed, 1000 + l);
        for (size_t i = 0; i < (size_t)p.n_topics * D; i++)
            g->topics[l * (size_t)p.n_topics * D + i] = rng_gauss(&s);
        for (int i = 0; i < D; i++) g->sink[l * D + i] = rng_gauss(&s);
        for (int i = 0; i < D; i++) g->needle[l * D + i] = rng_gauss(&s);
        g->rng_noise[l] = mix_seed(p.seed, 2000 + l);
    }
    g->rng_layout = mix_seed(p.seed, 1);
    g->rng_query = mix_seed(p.seed, 2);
    return 0;
}

void synth_free(synth_gen *g) {
    free(g->topics);
    free(g->sink);
    free(g->needle);
    free(g->topic_tokens);
    free(g->rng_noise);
    memset(g, 0, sizeof *g);
}

static int is_needle(const synth_gen *g, int64_t pos) {
    for (int32_t i = 0; i < g->p.n_needles; i++)
        if (g->p.needle_pos[i] == pos) return 1;
    return 0;
}

void synth_keys(synth_gen *g, int32_t n, float *keys, int64_t layer_stride) {
    const synth_params *p = &g->p;
    for (int32_t i = 0; i < n; i++, g->pos++) {
        int sink = g->pos < p->n_sinks;
        if (!sink) {
            if (g->seg_left == 0) {
                g->seg_topic = (int32_t)(rng_next(&g->rng_layout) % (uint64_t)p->n_topics);
                g->seg_left = p->seg_min + (int32_t)(rng_next(&g->rng_layout) %
                                                     (uint64_t)(p->seg_max - p->seg_min + 1));
            }
            g->seg_left--;
            g->topic_tokens[g->seg_topic]++;
            g->topic_tokens_total++;
        }
        int needle = is_needle(g, g->pos);
        for (int32_t l = 0; l < p->n_layers; l++) {
            float *k = keys + l * layer_stride + (int64_t)i * D;
            const float *base = sink     ? g->sink + (size_t)l * D
                                : needle ? g->needle + (size_t)l * D
                                         : g->topics + ((size_t)l * (size_t)p->n_topics +
                                                        (size_t)g->seg_topic) * D;
            float gain = needle && !sink ? p->needle_gain : 1.0f;
            float noise = sink ? 0.1f : p->noise;
            uint64_t *s = &g->rng_noise[l];
            for (int d = 0; d < D; d++) k[d] = gain * base[d] + noise * rng_gauss(s);
        }
    }
}

/* A topic drawn with probability proportional to the tokens it covers so far. */
static int32_t draw_seen_topic(synth_gen *g) {
    if (g->topic_tokens_total == 0)
        return (int32_t)(rng_next(&g->rng_query) % (uint64_t)g->p.n_topics);
    int64_t r = (int64_t)(rng_next(&g->rng_query) % (uint64_t)g->topic_tokens_total);
    for (int32_t t = 0; t < g->p.n_topics; t++) {
        if (r < g->topic_tokens[t]) return t;
        r -= g->topic_tokens[t];
    }
    return g->p.n_topics - 1;
}

void synth_query(synth_gen *g, int32_t layer, int with_needle, float *q, float *w) {
    const synth_params *p = &g->p;
    int32_t focus[SYNTH_QUERY_TOPICS_MAX];
    int32_t nf = p->query_topics;
    for (int32_t j = 0; j < nf; j++) {
        if (j == 0 && g->topic_tokens_total > 0 && rng_unit(&g->rng_query) < 0.5f)
            focus[j] = g->seg_topic;
        else
            focus[j] = draw_seen_topic(g);
    }
    const float *topics = g->topics + (size_t)layer * (size_t)p->n_topics * D;
    const float *sink = g->sink + (size_t)layer * D;
    const float *needle = g->needle + (size_t)layer * D;
    for (int32_t h = 0; h < p->n_heads; h++) {
        float c[SYNTH_QUERY_TOPICS_MAX];
        for (int32_t j = 0; j < nf; j++) c[j] = j == h % nf ? 1.0f : 0.3f * rng_unit(&g->rng_query);
        float *qh = q + (size_t)h * D;
        for (int d = 0; d < D; d++) {
            float v = 0.5f * sink[d] + p->query_noise * rng_gauss(&g->rng_query);
            for (int32_t j = 0; j < nf; j++) v += c[j] * topics[(size_t)focus[j] * D + d];
            if (with_needle) v += needle[d];
            qh[d] = v;
        }
        float wh = 0.5f + 0.5f * rng_unit(&g->rng_query);
        if (rng_unit(&g->rng_query) < p->neg_weight_frac) wh = -wh;
        w[h] = wh;
    }
}
