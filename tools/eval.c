/* eval.c: `hisa eval`, HISA against flat DSA on the same .npy inputs: per query the IoU of
 * the two selections (SPEC "Quality figures"), the recall of planted needles, and the time of
 * each mode. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "tools.h"

static void eval_help(void) {
    printf(
        "usage: hisa eval --keys K.npy [--scales S.npy] --queries Q.npy --weights W.npy\n"
        "                 [--query-format f32|bf16|fp8] [--needles N.npy] [--json] [options]\n"
        "\n"
        "Runs flat (DSA) and HISA selection on the same inputs (as hisa select reads them:\n"
        "query i at position L - n_q + i) and reports, per query, the IoU of the two\n"
        "selections |S_hisa & S_flat| / |S_hisa | S_flat| and the needle recall, then a\n"
        "summary with the time of each mode. Queries whose two selections are equal by\n"
        "construction (they see at most k tokens, or at most m blocks: every block is a\n"
        "candidate and the coarse stage is skipped) are counted and named in a note\n"
        "(trivial_queries in --json).\n"
        "\n"
        "inputs:\n"
        "  --keys K.npy       [L,128] float32, or [L,128] uint8 fp8 e4m3 codes with --scales\n"
        "                     (regular files; keys, queries, weights finite, scales positive)\n"
        "  --scales S.npy     [L] float32\n"
        "  --queries Q.npy    [n_q,H,128] float32, or uint16 bf16 bits / uint8 fp8 e4m3fn\n"
        "                     codes with --query-format bf16 / fp8\n"
        "  --weights W.npy    [n_q,H] float32, used as given (fp8: query scales folded in)\n"
        "  --needles N.npy    int32 ('<i4') planted positions: [n] for every query, or\n"
        "                     [n_q,n] per query (-1 entries ignored). Recall counts, over all\n"
        "                     queries, the needles a query can see (position <= its own) that\n"
        "                     it selected.\n"
        "options:\n"
        "  --query-format F   f32 (default), bf16 or fp8: the dtype of Q.npy, passed to the\n"
        "                     library as is (see hisa select --help)\n"
        "  --fp8-mma A        exact (default) or native (see hisa select --help)\n"
        "  --json             print one JSON object instead of the text report\n"
        "  --show N           per-query lines in the text report (default 32; 0: none; all in\n"
        "                     --json)\n"
        "  --repeat R         run each mode R times and report the mean time (default 1), >= 1\n"
        "  --key-format F     fp8 (default) or bf16\n"
        "  --block-size B     32, 64, 128 (default), 256\n"
        "  --top-blocks M     blocks kept by the coarse stage (default 64), 2..1024\n"
        "  --topk K           tokens per query (default 2048), 1..16384; (M - 1) x B >= K\n"
        "  --heads H          optional check against Q.npy\n"
        "  --device D         cpu, cuda or cuda:N (default: cuda:0 when available, else cpu)\n"
        "\n"
        "Exit status: 0 ok, 2 usage or input error, 1 runtime failure.\n");
}

typedef struct eval_opts {
    tool_inputs in; /* the four input paths; loaded by the command */
    tool_cfg_opts c;
    const char *needles_path;
    int json;
    int32_t show, repeat;
} eval_opts;

/* What eval measured, per query and in all. */
typedef struct eval_query {
    double iou;
    int64_t vis, found_flat, found_hisa; /* needles visible to it, and found by each mode */
} eval_query;

typedef struct eval_result {
    int32_t *flat, *hisa, *scratch; /* [n_q, k], [n_q, k], [2k] */
    eval_query *q;                  /* [n_q] */
    double t_flat, t_hisa;          /* mean seconds per run of each mode */
    double iou_sum, iou_min;
    int64_t vis_total, found_flat_total, found_hisa_total;
    int32_t n_trivial; /* queries whose HISA selection is flat's by construction */
    char why[256];     /* why, for the last of them (the one that sees the most) */
} eval_result;

/* Needles visible to query i (at position t) and how many of them sel holds. */
static void needle_counts(const npy_array *nd, int32_t i, int32_t t, const int32_t *sel, int32_t k,
                          int64_t *visible, int64_t *found) {
    int64_t n = nd->ndim == 1 ? nd->shape[0] : nd->shape[1];
    const int32_t *row = (const int32_t *)nd->data + (nd->ndim == 1 ? 0 : (int64_t)i * n);
    for (int64_t j = 0; j < n; j++) {
        if (row[j] < 0 || row[j] > t) continue;
        (*visible)++;
        *found += tool_selected(sel, k, row[j]);
    }
}

/* --- parse -------------------------------------------------------------------------------- */

/* Options into o. Returns tool_parse_opts's codes (-1: --help) or TOOL_EXIT_USAGE. */
static int eval_parse(int argc, char **argv, eval_opts *o) {
    assert(argc >= 1 && o);
    *o = (eval_opts){.show = 32, .repeat = 1};
    tool_opt opts[20];
    int n = 0;
    tool_inputs_opts_add(opts, &n, &o->in);
    opts[n++] = (tool_opt){"needles", TOOL_OPT_STR, &o->needles_path, 0, 0, NULL};
    opts[n++] = (tool_opt){"json", TOOL_OPT_FLAG, &o->json, 0, 0, NULL};
    opts[n++] = (tool_opt){"show", TOOL_OPT_INT, &o->show, 0, INT32_MAX, "per-query lines"};
    opts[n++] = (tool_opt){"repeat", TOOL_OPT_INT, &o->repeat, 1, INT32_MAX, "runs of each mode"};
    tool_cfg_opts_add(opts, &n, &o->c);
    assert(n <= (int)(sizeof opts / sizeof opts[0]));
    int rc = tool_parse_opts("eval", argc, argv, opts, n);
    if (rc) return rc;
    return tool_inputs_parse_names("eval", &o->in);
}

/* Checks the needle file against the inputs: int32 [n] or [n_q,n], positions in 0..L-1 or -1.
 * Returns 0, or -1 with the message in err. */
static int needles_check(const npy_array *nd, const char *path, const tool_inputs *in, char *err,
                         size_t err_len) {
    assert(nd && path && in && err);
    if (nd->dtype != NPY_I4 || nd->ndim < 1 || nd->ndim > 2 ||
        (nd->ndim == 2 && nd->shape[0] != in->n_q)) {
        char got[96];
        snprintf(err, err_len,
                 "%s: expected needle positions int32 [n] or [n_q,n] with n_q=%d from %s; "
                 "got %s %s",
                 path, in->n_q, in->queries_path, npy_dtype_name(nd->dtype),
                 npy_shape_str(nd->shape, nd->ndim, got, sizeof got));
        return -1;
    }
    for (int64_t j = 0; j < nd->count; j++) {
        int32_t p = ((const int32_t *)nd->data)[j];
        if (p < -1 || p >= in->L) {
            snprintf(err, err_len,
                     "%s: needle position %d out of range; expected 0..%d (L of %s) or -1", path,
                     p, in->L - 1, in->keys_path);
            return -1;
        }
    }
    return 0;
}

/* Reads --needles into nd (left empty without it). Returns 0 or TOOL_EXIT_USAGE. */
static int needles_load(const eval_opts *o, npy_array *nd) {
    assert(o && nd);
    if (!o->needles_path) return 0;
    char err[NPY_ERR_MAX], descr[64], derr[NPY_ERR_MAX];
    int bad = npy_read(o->needles_path, nd, err, sizeof err) != 0;
    if (bad && npy_read_descr(o->needles_path, descr, sizeof descr, derr, sizeof derr) == 0 &&
        strcmp(descr, "<i4") != 0)
        snprintf(err, sizeof err,
                 "%s: expected needle positions as int32 '<i4', [n] or [n_q,n]; got dtype '%s': "
                 "save them with np.save(path, x.astype(np.int32))",
                 o->needles_path, descr);
    if (!bad) bad = needles_check(nd, o->needles_path, &o->in, err, sizeof err) != 0;
    if (bad) {
        fprintf(stderr, "hisa eval: %s\n", err);
        npy_free(nd);
        return TOOL_EXIT_USAGE;
    }
    return 0;
}

/* --- run ---------------------------------------------------------------------------------- */

static int result_alloc(eval_result *res, int32_t n_q, int32_t k) {
    assert(res && n_q >= 1 && k >= 1);
    size_t cells = (size_t)n_q * (size_t)k;
    res->flat = malloc(sizeof(int32_t) * cells);
    res->hisa = malloc(sizeof(int32_t) * cells);
    res->scratch = malloc(sizeof(int32_t) * 2 * (size_t)k);
    res->q = calloc((size_t)n_q, sizeof *res->q);
    if (!res->flat || !res->hisa || !res->scratch || !res->q) {
        fprintf(stderr, "hisa eval: out of memory\n");
        return TOOL_EXIT_FAIL;
    }
    return 0;
}

static void result_free(eval_result *res) {
    assert(res);
    free(res->flat);
    free(res->hisa);
    free(res->scratch);
    free(res->q);
}

/* Both modes --repeat times (the mean time of each), then per query the IoU and, with needles,
 * the needles it sees and finds. Returns 0 or an exit code (the message printed). */
static int eval_run(hisa_runtime *rt, int32_t seq, const eval_opts *o, const npy_array *nd,
                    eval_result *res) {
    assert(rt && o && nd && res);
    const tool_inputs *in = &o->in;
    const int32_t k = hisa_get_config(rt)->topk;
    int rc = result_alloc(res, in->n_q, k);
    if (rc) return rc;
    for (int32_t r = 0; r < o->repeat; r++) {
        double s;
        int err = tool_inputs_select(rt, seq, in, HISA_MODE_FLAT, res->flat, &s);
        res->t_flat += s;
        if (!err) err = tool_inputs_select(rt, seq, in, HISA_MODE_HISA, res->hisa, &s);
        res->t_hisa += s;
        if (err) return tool_lib_error("eval", "selecting", err, NULL);
    }
    res->t_flat /= o->repeat;
    res->t_hisa /= o->repeat;
    res->iou_sum = 0, res->iou_min = 1;
    for (int32_t i = 0; i < in->n_q; i++) {
        eval_query *q = &res->q[i];
        const int32_t *flat = res->flat + (size_t)i * k, *hisa = res->hisa + (size_t)i * k;
        q->iou = tool_iou(flat, hisa, k, res->scratch);
        res->iou_sum += q->iou;
        if (q->iou < res->iou_min) res->iou_min = q->iou;
        if (o->needles_path) {
            int32_t t = in->L - in->n_q + i;
            int64_t dummy = 0;
            needle_counts(nd, i, t, flat, k, &q->vis, &q->found_flat);
            needle_counts(nd, i, t, hisa, k, &dummy, &q->found_hisa);
        }
        res->vis_total += q->vis;
        res->found_flat_total += q->found_flat;
        res->found_hisa_total += q->found_hisa;
    }
    return 0;
}

/* The queries whose selections are the same in both modes by construction (SPEC "Selection"
 * rules 1 and 3: they see at most k tokens, or at most m blocks): counted, with the reason. */
static void eval_trivial(const tool_inputs *in, const hisa_config *cfg, eval_result *res) {
    assert(in && cfg && res);
    res->n_trivial = 0;
    for (int32_t i = 0; i < in->n_q; i++) {
        int64_t visible = (int64_t)in->L - in->n_q + i + 1;
        if (tool_trivial_why(visible, cfg, res->why, sizeof res->why)) res->n_trivial++;
    }
}

/* The note on eval_trivial's queries, if any. */
static void report_trivial(const tool_inputs *in, const hisa_config *cfg, const eval_result *res) {
    assert(in && cfg && res);
    int tokens = tool_trivial_kind(in->L, cfg) == TOOL_TRIVIAL_TOKENS;
    if (res->n_trivial == in->n_q)
        printf("note: every query sees at most %d tokens; %s. %s\n", in->L, res->why,
               tokens ? "Use more than k tokens (or a lower --topk) to compare the selections"
                      : "Lower --top-blocks (or use a longer context) to test the coarse stage");
    else if (res->n_trivial)
        printf("note: %d of %d queries see at most m=%d blocks (%lld tokens): HISA equals flat "
               "for them by construction\n",
               res->n_trivial, in->n_q, cfg->top_blocks,
               (long long)cfg->top_blocks * cfg->block_size);
}

/* --- report ------------------------------------------------------------------------------- */

static void report_json(const eval_opts *o, const hisa_config *cfg, const char *dev,
                        const eval_result *res) {
    assert(o && cfg && dev && res);
    const tool_inputs *in = &o->in;
    printf("{\"device\": \"%s\", \"L\": %d, \"n_q\": %d, \"heads\": %d, \"block_size\": %d, "
           "\"top_blocks\": %d, \"topk\": %d, \"key_format\": \"%s\", \"query_format\": \"%s\", "
           "\"fp8_mma\": \"%s\", \"queries\": [",
           dev, in->L, in->n_q, in->H, cfg->block_size, cfg->top_blocks, cfg->topk,
           tool_key_format_name(cfg->key_format), tool_q_format_name(in->q_format),
           tool_fp8_mma_name(cfg->fp8_mma));
    for (int32_t i = 0; i < in->n_q; i++) {
        const eval_query *q = &res->q[i];
        printf("%s{\"query\": %d, \"position\": %d, \"iou\": %.6f", i ? ", " : "", i,
               in->L - in->n_q + i, q->iou);
        if (o->needles_path)
            printf(", \"needles\": %lld, \"found_flat\": %lld, \"found_hisa\": %lld",
                   (long long)q->vis, (long long)q->found_flat, (long long)q->found_hisa);
        printf("}");
    }
    printf("], \"iou_mean\": %.6f, \"iou_min\": %.6f, \"time_flat_s\": %.6g, "
           "\"time_hisa_s\": %.6g, \"trivial_queries\": %d",
           res->iou_sum / in->n_q, res->iou_min, res->t_flat, res->t_hisa, res->n_trivial);
    if (res->n_trivial) {
        printf(", \"trivial_why\": ");
        tool_json_string(stdout, res->why);
    }
    if (o->needles_path)
        printf(", \"needles_visible\": %lld, \"recall_flat\": %.6f, \"recall_hisa\": %.6f",
               (long long)res->vis_total,
               res->vis_total ? (double)res->found_flat_total / (double)res->vis_total : 1.0,
               res->vis_total ? (double)res->found_hisa_total / (double)res->vis_total : 1.0);
    printf("}\n");
}

/* The text report's summary lines: IoU, needle recall, times. */
static void report_text_summary(const eval_opts *o, const eval_result *res) {
    assert(o && res);
    const tool_inputs *in = &o->in;
    if (in->n_q > o->show) printf("   ... %d more queries (--show N, or --json)\n", in->n_q - o->show);
    printf("IoU HISA vs flat: mean %.4f, min %.4f over %d queries\n", res->iou_sum / in->n_q,
           res->iou_min, in->n_q);
    if (o->needles_path) {
        if (res->vis_total)
            printf("needle recall: flat %.4f (%lld/%lld), hisa %.4f (%lld/%lld)\n",
                   (double)res->found_flat_total / (double)res->vis_total,
                   (long long)res->found_flat_total, (long long)res->vis_total,
                   (double)res->found_hisa_total / (double)res->vis_total,
                   (long long)res->found_hisa_total, (long long)res->vis_total);
        else
            printf("needle recall: no needle is visible to any query\n");
    }
    printf("time: flat %.3f ms, hisa %.3f ms (%.3f / %.3f ms per query)%s\n", res->t_flat * 1e3,
           res->t_hisa * 1e3, res->t_flat * 1e3 / in->n_q, res->t_hisa * 1e3 / in->n_q,
           o->repeat > 1 ? " (mean of --repeat runs)" : "");
}

static void report_text(const eval_opts *o, const hisa_config *cfg, const char *dev,
                        const eval_result *res) {
    assert(o && cfg && dev && res);
    const tool_inputs *in = &o->in;
    printf("hisa eval: device %s, L=%d, n_q=%d, H=%d, B=%d, m=%d, k=%d, keys %s, queries %s%s\n",
           dev, in->L, in->n_q, in->H, cfg->block_size, cfg->top_blocks, cfg->topk,
           tool_key_format_name(cfg->key_format), tool_q_format_name(in->q_format),
           cfg->fp8_mma == HISA_FP8_MMA_NATIVE ? " (fp8_mma native)" : "");
    printf("%8s %8s %8s%s\n", "query", "position", "IoU",
           o->needles_path ? "   needles  flat  hisa" : "");
    for (int32_t i = 0; i < in->n_q && i < o->show; i++) {
        const eval_query *q = &res->q[i];
        printf("%8d %8d %8.4f", i, in->L - in->n_q + i, q->iou);
        if (o->needles_path)
            printf("   %7lld %5lld %5lld", (long long)q->vis, (long long)q->found_flat,
                   (long long)q->found_hisa);
        printf("\n");
    }
    report_text_summary(o, res);
    report_trivial(in, cfg, res);
}

int hisa_cmd_eval(int argc, char **argv) {
    eval_opts o;
    int rc = eval_parse(argc, argv, &o);
    if (rc < 0) {
        eval_help();
        return TOOL_EXIT_OK;
    }
    if (rc) return rc;
    rc = tool_inputs_load("eval", &o.in);
    if (rc) return rc;
    npy_array nd = {0};
    rc = needles_load(&o, &nd);
    if (rc) {
        tool_inputs_free(&o.in);
        return rc;
    }
    hisa_runtime *rt = NULL;
    int32_t seq;
    eval_result res = {0};
    rc = tool_inputs_open("eval", &o.in, &o.c, &rt, &seq);
    if (!rc) rc = eval_run(rt, seq, &o, &nd, &res);
    if (!rc) {
        const hisa_config *cfg = hisa_get_config(rt);
        eval_trivial(&o.in, cfg, &res);
        char dev[32];
        tool_device_name(cfg->device, dev, sizeof dev);
        if (o.json) report_json(&o, cfg, dev, &res);
        else report_text(&o, cfg, dev, &res);
    }
    result_free(&res);
    hisa_close(rt);
    npy_free(&nd);
    tool_inputs_free(&o.in);
    return rc;
}
