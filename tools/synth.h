/* synth.h: seeded, reproducible structured synthetic indexer data.
 *
 * Why not random Gaussian keys: with them every block mean is noise and a block-level filter
 * has nothing to find. Real indexer keys are structured; the HISA paper shows that high-score
 * tokens form contiguous spans. This generator makes contexts with that structure:
 *
 *   - the context is a run of topic segments of random length (uniform in seg_min..seg_max);
 *     each segment draws one of n_topics topic vectors t (components N(0,1)), and every token of
 *     it has the key  k = t + noise * N(0,1)^128;
 *   - the first n_sinks tokens are attention sinks: k = sink + 0.1 * N(0,1)^128, a direction
 *     every query likes a little;
 *   - a query (one per layer, H heads) is aligned with query_topics topics drawn from those the
 *     context has shown so far, weighted by how many tokens they cover (the current segment's
 *     topic is one of them half the time: recent context matters). Head h leans on one of them
 *     (coefficient 1) and a little on the others (0.3 * U(0,1)), plus 0.5 * sink and
 *     query_noise * N(0,1)^128;
 *   - weights w[h] are mostly positive: U(0.5, 1), negated with probability neg_weight_frac;
 *   - needles: the tokens at needle positions get k = needle_gain * n + noise * N(0,1)^128
 *     where n is a fixed random direction, and a query made "with needle" adds 1.0 * n to every
 *     head: the needle is a single token aligned with the query. Its own score is about
 *     needle_gain times a topic token's, but it moves its block's mean by only needle_gain / B
 *     of that, which is what a needle-in-a-haystack test of a block filter probes.
 *
 * Keys of every layer come from independent topic, sink and needle vectors but share the
 * segment layout (one token sequence seen by n_layers indexers). Everything derives from
 * seed: the same parameters and the same sequence of calls give the same numbers, whatever
 * the chunk sizes passed to synth_keys. */
#ifndef HISA_TOOLS_SYNTH_H
#define HISA_TOOLS_SYNTH_H

#include <stdint.h>

#define SYNTH_NEEDLES_MAX 16
#define SYNTH_QUERY_TOPICS_MAX 8

typedef struct synth_params {
    uint64_t seed;
    int32_t n_heads;         /* H of the queries; default 64 */
    int32_t n_layers;        /* independent key sets; default 1 */
    int32_t n_topics;        /* default 64 */
    int32_t seg_min, seg_max;/* segment length range in tokens; default 32..512 */
    int32_t n_sinks;         /* default 4 */
    float noise;             /* key noise relative to the topic vector; default 0.5 */
    float query_noise;       /* default 0.5 */
    int32_t query_topics;    /* topics a query leans on; default 3 */
    float neg_weight_frac;   /* fraction of negative head weights; default 0.1 */
    float needle_gain;       /* default 48 */
    int32_t n_needles;
    int64_t needle_pos[SYNTH_NEEDLES_MAX];
} synth_params;

/* Defaults for every field (seed 1, no needles). */
void synth_params_default(synth_params *p);

typedef struct synth_gen {
    synth_params p;
    float *topics;          /* [n_layers][n_topics][128] */
    float *sink;            /* [n_layers][128] */
    float *needle;          /* [n_layers][128] */
    int64_t *topic_tokens;  /* [n_topics]: tokens of each topic so far (excluding sinks) */
    int64_t topic_tokens_total;
    uint64_t rng_layout, rng_query;
    uint64_t *rng_noise;    /* [n_layers] */
    int64_t pos;            /* position of the next token */
    int32_t seg_topic, seg_left;
} synth_gen;

/* Validates p (0 fields take defaults) and allocates. Returns 0, or -1 for invalid parameters
 * or no memory. */
int synth_init(synth_gen *g, const synth_params *p);
void synth_free(synth_gen *g);

/* The next n tokens' keys for every layer: layer l's [n,128] block at keys + l * layer_stride
 * floats. */
void synth_keys(synth_gen *g, int32_t n, float *keys, int64_t layer_stride);

/* A query for layer `layer` at the current position: q [H,128], w [H]. with_needle adds the
 * needle direction to every head. Consumes the query random stream only. */
void synth_query(synth_gen *g, int32_t layer, int with_needle, float *q, float *w);

#endif /* HISA_TOOLS_SYNTH_H */
