/* eval.c: `hisa eval`, HISA against flat DSA on the same .npy inputs: per query the IoU of
 * the two selections (SPEC "Quality figures"), the recall of planted needles, and the time of
 * each mode. */
#include <stdlib.h>
#include <string.h>

#include "tools.h"

static void eval_help(void) {
    printf(
        "usage: hisa eval --keys K.npy [--scales S.npy] --queries Q.npy --weights W.npy\n"
        "                 [--needles N.npy] [--json] [options]\n"
        "\n"
        "Runs flat (DSA) and HISA selection on the same inputs (as hisa select reads them:\n"
        "query i at position L - n_q + i) and reports, per query, the IoU of the two\n"
        "selections |S_hisa & S_flat| / |S_hisa | S_flat| and the needle recall, then a\n"
        "summary with the time of each mode.\n"
        "\n"
        "inputs:\n"
        "  --keys K.npy       [L,128] float32, or [L,128] uint8 fp8 e4m3 codes with --scales\n"
        "  --scales S.npy     [L] float32\n"
        "  --queries Q.npy    [n_q,H,128] float32\n"
        "  --weights W.npy    [n_q,H] float32\n"
        "  --needles N.npy    int32 planted positions: [n] for every query, or [n_q,n] per\n"
        "                     query (-1 entries ignored). Recall counts, over all queries, the\n"
        "                     needles a query can see (position <= its own) that it selected.\n"
        "options:\n"
        "  --json             print one JSON object instead of the text report\n"
        "  --show N           per-query lines in the text report (default 32; all in --json)\n"
        "  --repeat R         run each mode R times and report the mean time (default 1)\n"
        "  --key-format F     fp8 (default) or bf16\n"
        "  --block-size B     32, 64, 128 (default), 256\n"
        "  --top-blocks M     blocks kept by the coarse stage (default 64)\n"
        "  --topk K           tokens per query (default 2048)\n"
        "  --heads H          optional check against Q.npy\n"
        "  --device D         cpu, cuda or cuda:N (default: cuda:0 when available, else cpu)\n"
        "\n"
        "Exit status: 0 ok, 2 usage or input error, 1 runtime failure.\n");
}

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

int hisa_cmd_eval(int argc, char **argv) {
    const char *cmd = "eval";
    tool_inputs in = {0};
    tool_cfg_opts c = {0};
    const char *needles_path = NULL;
    int json = 0;
    int32_t show = 32, repeat = 1;
    tool_opt opts[20];
    int n = 0;
    opts[n++] = (tool_opt){"keys", TOOL_OPT_STR, &in.keys_path};
    opts[n++] = (tool_opt){"scales", TOOL_OPT_STR, &in.scales_path};
    opts[n++] = (tool_opt){"queries", TOOL_OPT_STR, &in.queries_path};
    opts[n++] = (tool_opt){"weights", TOOL_OPT_STR, &in.weights_path};
    opts[n++] = (tool_opt){"needles", TOOL_OPT_STR, &needles_path};
    opts[n++] = (tool_opt){"json", TOOL_OPT_FLAG, &json};
    opts[n++] = (tool_opt){"show", TOOL_OPT_INT, &show};
    opts[n++] = (tool_opt){"repeat", TOOL_OPT_INT, &repeat};
    tool_cfg_opts_add(opts, &n, &c);
    int rc = tool_parse_opts(cmd, argc, argv, opts, n);
    if (rc < 0) {
        eval_help();
        return TOOL_EXIT_OK;
    }
    if (rc) return rc;
    if (repeat < 1 || show < 0) {
        fprintf(stderr, "hisa eval: --repeat must be >= 1 and --show >= 0\n");
        return TOOL_EXIT_USAGE;
    }
    rc = tool_inputs_load(cmd, &in);
    if (rc) return rc;

    npy_array nd = {0};
    if (needles_path) {
        char err[NPY_ERR_MAX];
        int bad = npy_read(needles_path, &nd, err, sizeof err) != 0;
        if (!bad && (nd.dtype != NPY_I4 || nd.ndim < 1 || nd.ndim > 2 ||
                     (nd.ndim == 2 && nd.shape[0] != in.n_q))) {
            char got[96];
            snprintf(err, sizeof err,
                     "%s: expected needle positions int32 [n] or [n_q,n] with n_q=%d from %s; "
                     "got %s %s",
                     needles_path, in.n_q, in.queries_path, npy_dtype_name(nd.dtype),
                     npy_shape_str(nd.shape, nd.ndim, got, sizeof got));
            bad = 1;
        }
        for (int64_t j = 0; !bad && j < nd.count; j++) {
            int32_t p = ((const int32_t *)nd.data)[j];
            if (p < -1 || p >= in.L) {
                snprintf(err, sizeof err,
                         "%s: needle position %d out of range; expected 0..%d (L of %s) or -1",
                         needles_path, p, in.L - 1, in.keys_path);
                bad = 1;
            }
        }
        if (bad) {
            fprintf(stderr, "hisa eval: %s\n", err);
            npy_free(&nd);
            tool_inputs_free(&in);
            return TOOL_EXIT_USAGE;
        }
    }

    hisa_runtime *rt = NULL;
    int32_t seq;
    int32_t *flat = NULL, *hisa = NULL, *scratch = NULL;
    double *iou = NULL;
    rc = tool_inputs_open(cmd, &in, &c, &rt, &seq);
    if (rc) goto done;
    const hisa_config *cfg = hisa_get_config(rt);
    int32_t k = cfg->topk;
    size_t cells = (size_t)in.n_q * (size_t)k;
    flat = malloc(sizeof(int32_t) * cells);
    hisa = malloc(sizeof(int32_t) * cells);
    scratch = malloc(sizeof(int32_t) * 2 * (size_t)k);
    iou = malloc(sizeof(double) * (size_t)in.n_q);
    if (!flat || !hisa || !scratch || !iou) {
        fprintf(stderr, "hisa eval: out of memory\n");
        rc = TOOL_EXIT_FAIL;
        goto done;
    }
    double t_flat = 0, t_hisa = 0;
    for (int32_t r = 0; r < repeat; r++) {
        double s;
        int err = tool_inputs_select(rt, seq, &in, HISA_MODE_FLAT, flat, &s);
        t_flat += s;
        if (!err) err = tool_inputs_select(rt, seq, &in, HISA_MODE_HISA, hisa, &s);
        t_hisa += s;
        if (err) {
            rc = tool_lib_error(cmd, "selecting", err, NULL);
            goto done;
        }
    }
    t_flat /= repeat;
    t_hisa /= repeat;

    double iou_sum = 0, iou_min = 1;
    int64_t vis_total = 0, found_flat_total = 0, found_hisa_total = 0;
    for (int32_t i = 0; i < in.n_q; i++) {
        iou[i] = tool_iou(flat + (size_t)i * k, hisa + (size_t)i * k, k, scratch);
        iou_sum += iou[i];
        if (iou[i] < iou_min) iou_min = iou[i];
    }
    char dev[32];
    tool_device_name(cfg->device, dev, sizeof dev);
    if (json) {
        printf("{\"device\": \"%s\", \"L\": %d, \"n_q\": %d, \"heads\": %d, \"block_size\": %d, "
               "\"top_blocks\": %d, \"topk\": %d, \"key_format\": \"%s\", \"queries\": [",
               dev, in.L, in.n_q, in.H, cfg->block_size, cfg->top_blocks, k,
               tool_key_format_name(cfg->key_format));
    } else {
        printf("hisa eval: device %s, L=%d, n_q=%d, H=%d, B=%d, m=%d, k=%d, keys %s\n", dev, in.L,
               in.n_q, in.H, cfg->block_size, cfg->top_blocks, k,
               tool_key_format_name(cfg->key_format));
        printf("%8s %8s %8s%s\n", "query", "position", "IoU",
               needles_path ? "   needles  flat  hisa" : "");
    }
    for (int32_t i = 0; i < in.n_q; i++) {
        int32_t t = in.L - in.n_q + i;
        int64_t vis = 0, ff = 0, fh = 0, dummy = 0;
        if (needles_path) {
            needle_counts(&nd, i, t, flat + (size_t)i * k, k, &vis, &ff);
            needle_counts(&nd, i, t, hisa + (size_t)i * k, k, &dummy, &fh);
        }
        vis_total += vis;
        found_flat_total += ff;
        found_hisa_total += fh;
        if (json) {
            printf("%s{\"query\": %d, \"position\": %d, \"iou\": %.6f", i ? ", " : "", i, t,
                   iou[i]);
            if (needles_path)
                printf(", \"needles\": %lld, \"found_flat\": %lld, \"found_hisa\": %lld",
                       (long long)vis, (long long)ff, (long long)fh);
            printf("}");
        } else if (i < show) {
            printf("%8d %8d %8.4f", i, t, iou[i]);
            if (needles_path)
                printf("   %7lld %5lld %5lld", (long long)vis, (long long)ff, (long long)fh);
            printf("\n");
        }
    }
    double iou_mean = iou_sum / in.n_q;
    if (json) {
        printf("], \"iou_mean\": %.6f, \"iou_min\": %.6f, \"time_flat_s\": %.6g, "
               "\"time_hisa_s\": %.6g",
               iou_mean, iou_min, t_flat, t_hisa);
        if (needles_path)
            printf(", \"needles_visible\": %lld, \"recall_flat\": %.6f, \"recall_hisa\": %.6f",
                   (long long)vis_total,
                   vis_total ? (double)found_flat_total / (double)vis_total : 1.0,
                   vis_total ? (double)found_hisa_total / (double)vis_total : 1.0);
        printf("}\n");
    } else {
        if (in.n_q > show) printf("   ... %d more queries (--show N, or --json)\n", in.n_q - show);
        printf("IoU HISA vs flat: mean %.4f, min %.4f over %d queries\n", iou_mean, iou_min,
               in.n_q);
        if (needles_path) {
            if (vis_total)
                printf("needle recall: flat %.4f (%lld/%lld), hisa %.4f (%lld/%lld)\n",
                       (double)found_flat_total / (double)vis_total, (long long)found_flat_total,
                       (long long)vis_total, (double)found_hisa_total / (double)vis_total,
                       (long long)found_hisa_total, (long long)vis_total);
            else
                printf("needle recall: no needle is visible to any query\n");
        }
        printf("time: flat %.3f ms, hisa %.3f ms (%.3f / %.3f ms per query)%s\n", t_flat * 1e3,
               t_hisa * 1e3, t_flat * 1e3 / in.n_q, t_hisa * 1e3 / in.n_q,
               repeat > 1 ? " (mean of --repeat runs)" : "");
    }
    rc = TOOL_EXIT_OK;
done:
    free(flat);
    free(hisa);
    free(scratch);
    free(iou);
    hisa_close(rt);
    npy_free(&nd);
    tool_inputs_free(&in);
    return rc;
}
