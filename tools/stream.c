/* stream.c: `hisa stream`, the main job. Streams decode steps over a long structured context
 * the way an inference engine drives the indexer: prefill the prompt's keys, then per step
 * append one token's key (--next-n N: N tokens', speculative / multi-token decode) to every
 * layer and select with HISA, queries in --query-format; every few steps it checks HISA against
 * flat DSA on the same queries. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "synth.h"
#include "tools.h"

#define D HISA_HEAD_DIM

static void stream_help(void) {
    printf(
        "usage: hisa stream [options]\n"
        "\n"
        "Builds a long structured synthetic context (topic segments, attention sinks; see\n"
        "'Synthetic data' below), writes its keys with hisa_write_range in chunks of\n"
        "--prefill-chunk tokens, then streams decode steps: each step extends every stream by\n"
        "--next-n tokens, writes their keys to every layer (hisa_write_keys) and selects with\n"
        "HISA (hisa_select_decode, next_n queries per stream), one call per layer for all\n"
        "streams. Every --check-every steps it also selects with flat DSA on the same queries\n"
        "and reports the IoU, query by query. A live progress line goes to stderr when it is\n"
        "a terminal (a few plain lines otherwise).\n"
        "The summary: p50/p99 select latency per layer, steps/s and tokens/s, mean IoU vs\n"
        "flat, and the arena's memory. Tensors cross as host memory (HISA_HOST_IO), so GPU\n"
        "latencies include the small query/result copies and a stream sync per call.\n"
        "\n"
        "options (GPU default / CPU default); a value is taken as given (0 means zero, and\n"
        "where zero means nothing it is refused), out-of-range values exit 2 with the range:\n"
        "  --context N        prompt tokens before decoding (64K / 8K), 1..16M; K, M suffixes.\n"
        "                     --context + --steps x --next-n <= 16M (HISA_MAX_CONTEXT)\n"
        "  --steps N          decode steps (512 / 64); 0: the prompt only, no decode\n"
        "  --batch N          streams decoded together (4 / 1), 1..256 (HISA_MAX_BATCH)\n"
        "  --layers N         indexer layers (4 / 2), 1..256\n"
        "  --heads H          indexer heads (64), 1..128 (HISA_MAX_HEADS)\n"
        "  --key-format F     fp8 (default) or bf16\n"
        "  --block-size B     tokens per block = page: 32, 64, 128 (default), 256\n"
        "  --top-blocks M     blocks kept by the coarse stage (64 / 32), 2..1024; the m blocks\n"
        "                     must hold k candidates: (M - 1) x B >= K, so --block-size 32\n"
        "                     needs M >= 65 at K = 2048\n"
        "  --topk K           tokens selected per query (2048), 1..16384 (HISA_MAX_TOPK)\n"
        "  --check-every N    flat check period in steps (steps/8: 64 / 8), at least 1; a\n"
        "                     period above --steps runs no check\n"
        "  --prefill-chunk N  tokens per hisa_write_range (1024), 1..16384\n"
        "                     (HISA_MAX_PREFILL_QUERIES)\n"
        "  --seed S           synthetic data seed (1)\n"
        "  --next-n N         1..4 tokens appended and queries selected per stream and step\n"
        "                     (speculative / multi-token-prediction decode; default 1); query\n"
        "                     j of a stream of length L stands at L - N + j\n"
        "  --query-format F   f32 (default), bf16 or fp8: the synthetic float queries are\n"
        "                     converted on the host (outside the timings) and passed in that\n"
        "                     format: bf16 rounded to nearest even; fp8 with a per-head scale\n"
        "                     amax/448 folded into the weights, e4m3fn codes rounded to nearest\n"
        "                     even, saturating at 448\n"
        "  --profile          print the pool figures at the end: pages used / free /\n"
        "                     high-water / shared, sequences, tokens, and the plan's regions\n"
        "  --device D         cpu, cuda or cuda:N (default: cuda:0 when available, else cpu)\n"
        "\n"
        "The CPU defaults keep `make run` on a machine without a GPU well under a minute on\n"
        "two cores: a shorter context, few steps and layers, one stream, and m = 32 (with\n"
        "m = 64 and B = 128 an 8K context has only 64 blocks, every block is a candidate and\n"
        "HISA equals flat; m = 32 makes the coarse stage prune half of them). When the whole\n"
        "run sees at most m blocks (or k tokens), HISA equals flat by construction and the\n"
        "header says so.\n"
        "\n"
        "Synthetic data: topic segments of 32..512 tokens (keys = one of 64 topic vectors +\n"
        "0.5 noise), 4 attention-sink tokens at the start, queries aligned with 3 topics the\n"
        "context has shown (the current one half the time), head weights mostly positive.\n"
        "Seeded and reproducible; every stream has its own seed.\n");
}

typedef struct stream_opts {
    int32_t context, steps, batch, check_every, prefill_chunk; /* 0 / -1: not given */
    int32_t next_n;   /* 1..HISA_NEXT_N_MAX */
    int32_t q_format; /* HISA_Q_*, of q_format_s */
    const char *q_format_s;
    int64_t seed;
    int profile;
    int cpu_m;        /* 1 when m is the CPU default, for the messages */
    tool_cfg_opts c;
} stream_opts;

/* The run: the runtime, its sizes, the generators and buffers allocated once before the
 * prompt, and what it measured (for the report). */
typedef struct stream_run {
    hisa_runtime *rt;
    int32_t L, H, B, k, chunk;
    int32_t N, qf; /* next_n and the query format */
    synth_gen *gens; /* one per stream, each with its own seed */
    int32_t *seqs, *pos;    /* [B], and the positions of one hisa_write_keys */
    int32_t n_gens, n_seqs; /* how many are live, for the cleanup */
    float *prefill_keys;    /* [L, chunk, D] */
    float *step_keys;       /* [L, N, B, D]: token j of every stream is one [B, D] block */
    float *qs, *ws;         /* [L, B, N, H, D], [L, B, N, H]: the synthetic float queries */
    void *q_conv;           /* [L, B, N, H, D] bf16 bits or e4m3 codes (NULL for f32) */
    float *w_fold;          /* [L, B, N, H] fp8: ws with the query scales folded in */
    const void *q_in;       /* what the library gets: qs or q_conv */
    const float *w_in;      /* ws or w_fold */
    size_t q_row;           /* bytes of one query [H, D] in q_in */
    int32_t *sel, *sel_flat, *scratch; /* [B, N, k], [B, N, k], [2k] */
    const char *what; /* the call that failed, for the message */
    /* measured */
    double t_prefill, t_write, t_decode;
    double *lat;      /* [steps + 1, L] select latency per layer */
    double *step_lat; /* [steps + 1] */
    double iou_sum, iou_min, last_iou;
    int64_t iou_n;
    int32_t checks;
} stream_run;

static void progress(int tty, int32_t step, int32_t steps, int64_t context, double step_s,
                     int32_t batch, double last_iou, int final) {
    char iou[32] = "";
    if (last_iou >= 0) snprintf(iou, sizeof iou, "  IoU %.3f", last_iou);
    if (tty)
        fprintf(stderr, "\r\033[Kstep %d/%d  context %lld  step %.3f ms  %.0f tok/s%s%s", step,
                steps, (long long)context, step_s * 1e3, step_s > 0 ? batch / step_s : 0.0, iou,
                final ? "\n" : "");
    else
        fprintf(stderr, "step %d/%d  context %lld  step %.3f ms  %.0f tok/s%s\n", step, steps,
                (long long)context, step_s * 1e3, step_s > 0 ? batch / step_s : 0.0, iou);
}

/* --- parse -------------------------------------------------------------------------------- */

/* Options into o (0, and -1 for --steps: not given; the default depends on the device:
 * stream_configure). Returns tool_parse_opts's codes (-1: --help) or TOOL_EXIT_USAGE. */
static int stream_parse(int argc, char **argv, stream_opts *o) {
    assert(argc >= 1 && o);
    *o = (stream_opts){.seed = 1, .next_n = 1, .steps = -1};
    tool_opt opts[24];
    int n = 0;
    opts[n++] = (tool_opt){"context", TOOL_OPT_INT, &o->context, 1, HISA_MAX_CONTEXT,
                           "prompt tokens, HISA_MAX_CONTEXT"};
    opts[n++] = (tool_opt){"steps", TOOL_OPT_INT, &o->steps, 0, INT32_MAX, "decode steps"};
    opts[n++] = (tool_opt){"batch", TOOL_OPT_INT, &o->batch, 1, HISA_MAX_BATCH,
                           "streams decoded together, HISA_MAX_BATCH"};
    opts[n++] = TOOL_OPT_LAYERS(&o->c.layers);
    opts[n++] = (tool_opt){"check-every", TOOL_OPT_INT, &o->check_every, 1, INT32_MAX,
                           "steps between flat checks; above --steps: none"};
    opts[n++] = (tool_opt){"prefill-chunk", TOOL_OPT_INT, &o->prefill_chunk, 1,
                           HISA_MAX_PREFILL_QUERIES,
                           "tokens per hisa_write_range, HISA_MAX_PREFILL_QUERIES"};
    opts[n++] = (tool_opt){"seed", TOOL_OPT_I64, &o->seed, 0, 0, NULL};
    opts[n++] = (tool_opt){"profile", TOOL_OPT_FLAG, &o->profile, 0, 0, NULL};
    opts[n++] = (tool_opt){"next-n", TOOL_OPT_INT, &o->next_n, 1, HISA_NEXT_N_MAX,
                           "tokens appended and queries selected per stream and step; "
                           "HISA_NEXT_N_MAX"};
    opts[n++] = (tool_opt){"query-format", TOOL_OPT_STR, &o->q_format_s, 0, 0, NULL};
    tool_cfg_opts_add(opts, &n, &o->c);
    assert(n <= (int)(sizeof opts / sizeof opts[0]));
    int rc = tool_parse_opts("stream", argc, argv, opts, n);
    if (rc) return rc;
    return tool_parse_q_format("stream", o->q_format_s, &o->q_format);
}

/* How stream names the configuration's fields in messages; without the first entry when m is
 * not the CPU default. */
static const tool_field_name k_stream_names[] = {
    {"top_blocks", "--top-blocks", "the CPU default"},
    {"max_seqs", "--batch", NULL},
    {"max_batch", "--batch", NULL},
    {"max_context", "--context", "plus --steps x --next-n"},
    {"max_prefill_queries", "--prefill-chunk", NULL},
    {NULL, NULL, NULL}};

/* The device, then the defaults that depend on it, then the configuration. *why gets
 * tool_pick_device's reason for the CPU. */
static int stream_configure(stream_opts *o, hisa_config *cfg, const char **why) {
    assert(o && cfg && why);
    *cfg = (hisa_config){0};
    int rc = tool_pick_device("stream", o->c.device, &cfg->device, why);
    if (rc) return rc;
    int gpu = cfg->device != HISA_DEVICE_CPU;
    if (!o->context) o->context = gpu ? 65536 : 8192;
    if (o->steps < 0) o->steps = gpu ? 512 : 64;
    if (!o->batch) o->batch = gpu ? 4 : 1;
    if (!o->c.layers) o->c.layers = gpu ? 4 : 2;
    o->cpu_m = !o->c.top_blocks && !gpu;
    if (o->cpu_m) o->c.top_blocks = 32;
    if (!o->check_every) o->check_every = o->steps >= 8 ? o->steps / 8 : 1;
    if (!o->prefill_chunk) o->prefill_chunk = 1024;
    int64_t total = (int64_t)o->context + (int64_t)o->steps * o->next_n;
    if (total > HISA_MAX_CONTEXT) {
        fprintf(stderr,
                "hisa stream: --context %d + --steps %d x --next-n %d = %lld tokens per stream: "
                "out of range; expected at most %d (HISA_MAX_CONTEXT)\n",
                o->context, o->steps, o->next_n, (long long)total, HISA_MAX_CONTEXT);
        return TOOL_EXIT_USAGE;
    }
    rc = tool_cfg_apply("stream", &o->c, cfg);
    if (rc) return rc;
    cfg->max_seqs = o->batch;
    cfg->max_batch = o->batch;
    cfg->max_context = (int32_t)total;
    cfg->max_prefill_queries = o->prefill_chunk;
    return 0;
}

/* --- run ---------------------------------------------------------------------------------- */

/* The query buffers the library reads: the float queries themselves (f32), or their bf16 /
 * fp8 conversion (and for fp8 the weights with the scales folded in). Returns 0 or -1. */
static int alloc_query_format(stream_run *r, size_t n_queries) {
    assert(r && r->qs && r->ws);
    const size_t HD = (size_t)r->H * D;
    r->q_row = HD * tool_q_format_bytes(r->qf);
    r->q_in = r->qs;
    r->w_in = r->ws;
    if (r->qf == HISA_Q_F32) return 0;
    r->q_conv = malloc(n_queries * r->q_row);
    r->q_in = r->q_conv;
    if (r->qf == HISA_Q_FP8) {
        r->w_fold = malloc(sizeof(float) * n_queries * (size_t)r->H);
        r->w_in = r->w_fold;
    }
    return r->q_conv && r->w_in ? 0 : -1;
}

/* Every buffer of the run and one generator per stream; sizes from the open runtime. */
static int stream_alloc(stream_run *r, const stream_opts *o) {
    assert(r && r->rt && o);
    const hisa_config *cfg = hisa_get_config(r->rt);
    r->L = cfg->n_layers, r->H = cfg->n_heads, r->B = o->batch, r->k = cfg->topk;
    r->N = o->next_n, r->qf = o->q_format;
    r->chunk = cfg->max_prefill_queries;
    const size_t L = (size_t)r->L, B = (size_t)r->B, H = (size_t)r->H, k = (size_t)r->k;
    const size_t N = (size_t)r->N, steps = (size_t)o->steps + 1;
    r->gens = calloc(B, sizeof *r->gens);
    r->seqs = calloc(B, sizeof *r->seqs);
    r->pos = calloc(B, sizeof *r->pos);
    r->prefill_keys = malloc(sizeof(float) * L * (size_t)r->chunk * D);
    r->step_keys = malloc(sizeof(float) * L * N * B * D);
    r->qs = malloc(sizeof(float) * L * B * N * H * D);
    r->ws = malloc(sizeof(float) * L * B * N * H);
    r->sel = malloc(sizeof(int32_t) * B * N * k);
    r->sel_flat = malloc(sizeof(int32_t) * B * N * k);
    r->scratch = malloc(sizeof(int32_t) * 2 * k);
    r->lat = malloc(sizeof(double) * steps * L);
    r->step_lat = malloc(sizeof(double) * steps);
    if (!r->gens || !r->seqs || !r->pos || !r->prefill_keys || !r->step_keys || !r->qs ||
        !r->ws || !r->sel || !r->sel_flat || !r->scratch || !r->lat || !r->step_lat ||
        alloc_query_format(r, L * B * N) != 0) {
        fprintf(stderr, "hisa stream: out of memory\n");
        return TOOL_EXIT_FAIL;
    }
    for (int32_t b = 0; b < r->B; b++, r->n_gens++) {
        synth_params sp;
        synth_params_default(&sp);
        sp.seed = (uint64_t)o->seed * 1000003u + (uint64_t)b;
        sp.n_heads = r->H;
        sp.n_layers = r->L;
        if (synth_init(&r->gens[b], &sp) != 0) {
            fprintf(stderr, "hisa stream: out of memory for the synthetic generator\n");
            return TOOL_EXIT_FAIL;
        }
    }
    return 0;
}

/* Closes the sequences and the runtime, frees what stream_alloc got (any part of it). */
static void stream_free(stream_run *r) {
    assert(r);
    assert(r->n_seqs == 0 || r->rt);
    for (int32_t b = 0; b < r->n_seqs; b++) hisa_seq_close(r->rt, r->seqs[b]);
    for (int32_t b = 0; b < r->n_gens; b++) synth_free(&r->gens[b]);
    free(r->gens);
    free(r->seqs);
    free(r->pos);
    free(r->prefill_keys);
    free(r->step_keys);
    free(r->qs);
    free(r->ws);
    free(r->q_conv);
    free(r->w_fold);
    free(r->sel);
    free(r->sel_flat);
    free(r->scratch);
    free(r->lat);
    free(r->step_lat);
    hisa_close(r->rt);
}

/* The prompt of stream b: its keys chunk by chunk, every layer. Only the library calls count
 * into t_write; the generator is the model's work. */
static int prefill_stream(stream_run *r, const stream_opts *o, int32_t b) {
    assert(r && o);
    assert(b >= 0 && b < r->n_seqs);
    int err = 0;
    for (int32_t p0 = 0; p0 < o->context && !err; p0 += r->chunk) {
        int32_t m = o->context - p0 < r->chunk ? o->context - p0 : r->chunk;
        synth_keys(&r->gens[b], m, r->prefill_keys, (int64_t)m * D);
        double t0 = tool_now_s();
        r->what = "extending a sequence for the prompt";
        err = hisa_seq_extend(r->rt, r->seqs[b], m);
        for (int32_t l = 0; l < r->L && !err; l++) {
            hisa_write req = {.layer = l, .n_tokens = m,
                              .keys = r->prefill_keys + (size_t)l * (size_t)m * D,
                              .flags = HISA_HOST_IO};
            r->what = "writing the prompt's keys";
            err = hisa_write_range(r->rt, r->seqs[b], p0, &req);
        }
        r->t_write += tool_now_s() - t0;
    }
    return err;
}

/* Opens one sequence per stream and writes its prompt. Returns 0 or a library error. */
static int stream_prefill(stream_run *r, const stream_opts *o) {
    assert(r && o);
    assert(r->n_seqs == 0);
    int err = 0;
    r->t_prefill = tool_now_s();
    r->t_write = 0;
    for (int32_t b = 0; b < r->B && !err; b++) {
        r->what = "opening a sequence";
        err = hisa_seq_open(r->rt, &r->seqs[b]);
        if (err) break;
        r->n_seqs++;
        err = prefill_stream(r, o, b);
    }
    if (!err) r->t_prefill = tool_now_s() - r->t_prefill;
    return err;
}

/* The check: flat DSA on the same queries as req (the HISA selection is in r->sel), the IoU of
 * the two selections of every query: B streams x N queries each. */
static int check_flat(stream_run *r, hisa_decode req) {
    assert(r && req.out == r->sel);
    req.mode = HISA_MODE_FLAT;
    req.out = r->sel_flat;
    r->what = "selecting with flat DSA for the check";
    int err = hisa_select_decode(r->rt, &req);
    for (int32_t i = 0; i < r->B * r->N && !err; i++) {
        double v = tool_iou(r->sel + (size_t)i * r->k, r->sel_flat + (size_t)i * r->k, r->k,
                            r->scratch);
        r->iou_sum += v;
        r->iou_n++;
        if (v < r->iou_min) r->iou_min = v;
        r->last_iou = v;
    }
    return err;
}

/* Step s's appends: every stream grows by N tokens, and their keys go to every layer, one
 * hisa_write_keys per layer and new token (the j-th new token of every stream; with N = 1 at
 * positions NULL, each sequence's last). Returns 0 or a library error. */
static int step_append(stream_run *r, const stream_opts *o, int32_t s) {
    assert(r && o);
    const int32_t L = r->L, B = r->B, N = r->N;
    int err = 0;
    for (int32_t b = 0; b < B && !err; b++) {
        r->what = "extending a sequence by next_n tokens";
        err = hisa_seq_extend(r->rt, r->seqs[b], N);
    }
    for (int32_t l = 0; l < L && !err; l++) {
        for (int32_t j = 0; j < N && !err; j++) {
            for (int32_t b = 0; b < B; b++) r->pos[b] = o->context + s * N + j;
            hisa_write req = {.layer = l, .n_tokens = B, .seq_ids = r->seqs,
                              .positions = N == 1 ? NULL : r->pos,
                              .keys = r->step_keys + ((size_t)l * N + j) * B * D,
                              .flags = HISA_HOST_IO};
            r->what = "appending the new tokens' keys";
            err = hisa_write_keys(r->rt, &req);
        }
    }
    return err;
}

/* One decode step s: the appends, then one HISA select per layer for all streams, next_n
 * queries each (timed per layer into lat), with the flat check every check_every steps.
 * step_lat[s] is the step without the checks. */
static int stream_step(stream_run *r, const stream_opts *o, int32_t s) {
    assert(r && o);
    assert(s >= 0 && s < o->steps);
    const int32_t L = r->L, B = r->B, H = r->H, N = r->N;
    double t_step = tool_now_s();
    int err = step_append(r, o, s);
    for (int32_t l = 0; l < L && !err; l++) {
        hisa_decode req = {.layer = l, .mode = HISA_MODE_HISA, .n_seqs = B, .seq_ids = r->seqs,
                           .q = (const uint8_t *)r->q_in + (size_t)l * B * N * r->q_row,
                           .w = r->w_in + (size_t)l * B * N * H, .out = r->sel,
                           .flags = HISA_HOST_IO, .q_format = r->qf, .next_n = N};
        double t0 = tool_now_s();
        r->what = "selecting with HISA";
        err = hisa_select_decode(r->rt, &req);
        r->lat[(size_t)s * L + l] = tool_now_s() - t0;
        if (err || (s + 1) % o->check_every != 0) continue;
        double t_check = tool_now_s();
        err = check_flat(r, req);
        t_step += tool_now_s() - t_check; /* the check stays outside the step's time */
    }
    if (!err) r->step_lat[s] = tool_now_s() - t_step;
    return err;
}

/* The new tokens' keys and this step's queries come from the generator, and the queries are
 * converted to the query format (as a model's act_quant would); that is the model's work, not
 * the indexer's, so it stays outside the timed region. Query j of a stream is drawn after its
 * j-th new key: it sees the context up to its own token. */
static void step_inputs(stream_run *r) {
    assert(r && r->n_gens == r->B);
    const int32_t L = r->L, B = r->B, H = r->H, N = r->N;
    for (int32_t b = 0; b < B; b++) {
        for (int32_t j = 0; j < N; j++) {
            synth_keys(&r->gens[b], 1, r->step_keys + ((size_t)j * B + b) * D,
                       (int64_t)N * B * D);
            for (int32_t l = 0; l < L; l++) {
                size_t row = ((size_t)l * B + b) * N + j; /* [L, B, N] */
                synth_query(&r->gens[b], l, 0, r->qs + row * H * D, r->ws + row * H);
            }
        }
    }
    const int64_t heads = (int64_t)L * B * N * H;
    if (r->qf == HISA_Q_BF16) tool_q_to_bf16(r->qs, heads * D, r->q_conv);
    else if (r->qf == HISA_Q_FP8) tool_q_to_fp8(r->qs, r->ws, heads, r->q_conv, r->w_fold);
}

/* Every decode step, with the live progress line (at most 10 a second on a terminal, a few
 * plain lines otherwise). Returns 0 or a library error. */
static int stream_decode(stream_run *r, const stream_opts *o) {
    assert(r && o);
    assert(o->check_every >= 1);
    int tty = isatty(2);
    int32_t plain_every = o->steps >= 4 ? o->steps / 4 : 1;
    double t_last_print = 0;
    r->iou_sum = 0, r->iou_min = 1, r->last_iou = -1, r->iou_n = 0, r->checks = 0;
    r->t_decode = tool_now_s();
    for (int32_t s = 0; s < o->steps; s++) {
        step_inputs(r);
        int err = stream_step(r, o, s);
        if (err) {
            if (tty) fprintf(stderr, "\n");
            return err;
        }
        if ((s + 1) % o->check_every == 0) r->checks++;
        int64_t ctx_now = (int64_t)o->context + (int64_t)(s + 1) * r->N;
        int32_t tokens = r->B * r->N; /* per step */
        double now = tool_now_s();
        if (tty) {
            if (now - t_last_print > 0.1 || s + 1 == o->steps) {
                progress(1, s + 1, o->steps, ctx_now, r->step_lat[s], tokens, r->last_iou,
                         s + 1 == o->steps);
                t_last_print = now;
            }
        } else if ((s + 1) % plain_every == 0 || s + 1 == o->steps) {
            progress(0, s + 1, o->steps, ctx_now, r->step_lat[s], tokens, r->last_iou, 0);
        }
    }
    r->t_decode = tool_now_s() - r->t_decode;
    return 0;
}

/* --- report ------------------------------------------------------------------------------- */

static void report_header(const stream_run *r, const stream_opts *o, const char *why) {
    assert(r && r->rt && o && why);
    const hisa_config *cfg = hisa_get_config(r->rt);
    char dev[32];
    tool_device_name(cfg->device, dev, sizeof dev);
    printf("hisa stream: device %s%s%s%s\n", dev, *why ? " (" : "", why, *why ? ")" : "");
    printf("  %d stream%s x %d layer%s, H=%d, B=%d, m=%d, k=%d, keys %s, queries %s, next_n %d; "
           "prompt %d tokens, %d decode steps\n",
           o->batch, o->batch == 1 ? "" : "s", cfg->n_layers, cfg->n_layers == 1 ? "" : "s",
           cfg->n_heads, cfg->block_size, cfg->top_blocks, cfg->topk,
           tool_key_format_name(cfg->key_format), tool_q_format_name(o->q_format), o->next_n,
           o->context, o->steps);
    char note[256];
    if (tool_trivial_why(cfg->max_context, cfg, note, sizeof note))
        printf("  note: every query of this run sees at most %d tokens; %s\n", cfg->max_context,
               note);
    fflush(stdout);
}

static void report_prefill(const stream_run *r, const stream_opts *o) {
    assert(r && o);
    const int32_t L = r->L, B = r->B;
    printf("prefill: %d tokens x %d layer%s x %d stream%s in %.2f s (hisa writes %.2f s, "
           "%.2f M keys/s)\n",
           o->context, L, L == 1 ? "" : "s", B, B == 1 ? "" : "s", r->t_prefill, r->t_write,
           r->t_write > 0 ? (double)o->context * B * L / r->t_write / 1e6 : 0.0);
    fflush(stdout);
}

/* p50 / p99 of every layer's select latency (lat is [steps, L]). */
static void report_layers(const stream_run *r, int32_t steps) {
    assert(r && steps > 0);
    printf("select latency per layer, HISA decode of %d stream%s x next_n %d (ms):\n", r->B,
           r->B == 1 ? "" : "s", r->N);
    double *col = malloc(sizeof(double) * (size_t)steps);
    if (!col) return;
    for (int32_t l = 0; l < r->L; l++) {
        for (int32_t s = 0; s < steps; s++) col[s] = r->lat[(size_t)s * r->L + l];
        double c50 = tool_percentile(col, steps, 50);
        double c99 = tool_percentile(col, steps, 99);
        printf("  layer %d: p50 %.3f  p99 %.3f\n", l, c50 * 1e3, c99 * 1e3);
    }
    free(col);
}

/* The decode figures and the IoU. Sorts step_lat (the percentiles), so it runs once. */
static void report_decode(stream_run *r, const stream_opts *o) {
    assert(r && o);
    const int32_t L = r->L, B = r->B, N = r->N;
    double step_sum = 0;
    for (int32_t s = 0; s < o->steps; s++) step_sum += r->step_lat[s];
    printf("decode: %d steps, next_n %d, %s queries, in %.2f s wall", o->steps, N,
           tool_q_format_name(r->qf), r->t_decode);
    if (o->steps > 0) {
        double p50 = tool_percentile(r->step_lat, o->steps, 50);
        double p99 = tool_percentile(r->step_lat, o->steps, 99);
        printf("; per step (append %d token%s + HISA select, all layers): p50 %.3f ms, "
               "p99 %.3f ms\n",
               N, N == 1 ? "" : "s", p50 * 1e3, p99 * 1e3);
        printf("  %.1f steps/s, %.1f tokens/s (indexer time only; %.1f steps/s wall with the "
               "synthetic model and the flat checks)\n",
               step_sum > 0 ? o->steps / step_sum : 0.0,
               step_sum > 0 ? (double)o->steps * B * N / step_sum : 0.0,
               r->t_decode > 0 ? o->steps / r->t_decode : 0.0);
        report_layers(r, o->steps);
    } else {
        printf("\n");
    }
    char per_stream[32] = ""; /* the IoU is per query: next_n of them per stream */
    if (N > 1) snprintf(per_stream, sizeof per_stream, " x %d queries", N);
    if (r->iou_n)
        printf("IoU HISA vs flat: mean %.4f, min %.4f (%d checks x %d layer%s x %d stream%s%s)\n",
               r->iou_sum / (double)r->iou_n, r->iou_min, r->checks, L, L == 1 ? "" : "s", B,
               B == 1 ? "" : "s", per_stream);
    else if (o->steps == 0)
        printf("IoU HISA vs flat: no decode steps (--steps 0: the prompt only)\n");
    else
        printf("IoU HISA vs flat: no checks ran (--check-every > --steps)\n");
}

/* The arena's figures; with --profile the pool's and the plan's non-empty regions too. */
static void report_memory(hisa_runtime *rt, int profile) {
    assert(rt);
    hisa_memory_report mr;
    if (hisa_memory_report_get(rt, &mr) != HISA_OK) return;
    char bd[32], bh[32];
    printf("arena: %s device + %s host reserved at open; pages %d of %d used (%.1f%%), "
           "%lld tokens in %d sequence%s\n",
           tool_fmt_bytes(mr.device_bytes, bd, sizeof bd),
           tool_fmt_bytes(mr.host_bytes, bh, sizeof bh), mr.pages_used, mr.pages_total,
           mr.pages_total ? 100.0 * mr.pages_used / mr.pages_total : 0.0,
           (long long)mr.tokens, mr.seqs_open, mr.seqs_open == 1 ? "" : "s");
    if (!profile) return;
    printf("pool (profile): pages total %d, used %d, free %d, high-water %d, shared %d; "
           "sequences open %d, high-water %d; tokens %lld\n",
           mr.pages_total, mr.pages_used, mr.pages_free, mr.pages_high_water, mr.pages_shared,
           mr.seqs_open, mr.seqs_high_water, (long long)mr.tokens);
    const hisa_plan *plan = hisa_get_plan(rt);
    printf("plan regions (non-empty; hisa mem lists them all):\n");
    for (int32_t i = 0; i < plan->n_regions; i++) {
        const hisa_region *reg = &plan->regions[i];
        if (reg->bytes == 0) continue; /* the other backend's regions */
        printf("  %-22s %-6s %12s\n", reg->name, reg->on_device ? "device" : "host",
               tool_fmt_bytes(reg->bytes, bd, sizeof bd));
    }
}

int hisa_cmd_stream(int argc, char **argv) {
    stream_opts o;
    int rc = stream_parse(argc, argv, &o);
    if (rc < 0) {
        stream_help();
        return TOOL_EXIT_OK;
    }
    if (rc) return rc;
    hisa_config cfg;
    const char *why;
    rc = stream_configure(&o, &cfg, &why);
    if (rc) return rc;
    stream_run r = {.what = ""};
    rc = tool_open("stream", &cfg, o.cpu_m ? k_stream_names : k_stream_names + 1, &r.rt);
    if (rc) return rc;
    report_header(&r, &o, why);
    rc = stream_alloc(&r, &o);
    int err = 0;
    if (!rc) err = stream_prefill(&r, &o);
    if (!rc && !err) report_prefill(&r, &o);
    if (!rc && !err) err = stream_decode(&r, &o);
    if (!rc && !err) {
        report_decode(&r, &o);
        report_memory(r.rt, o.profile);
    }
    if (err) {
        rc = tool_lib_error("stream", r.what, err, NULL);
        if (err == HISA_EDEVICE) fprintf(stderr, "  detail: %s\n", hisa_error_detail(r.rt));
    }
    stream_free(&r);
    return rc;
}
