/* select.c: `hisa select`, top-k selection on tensors a user dumped from their own model, and
 * the .npy input machinery that `hisa eval` shares. */
#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tools.h"

#define D HISA_HEAD_DIM

/* --- inputs ------------------------------------------------------------------------------- */
void tool_inputs_free(tool_inputs *in) {
    npy_free(&in->keys);
    npy_free(&in->scales);
    npy_free(&in->queries);
    npy_free(&in->weights);
}

static int input_error(const char *cmd, const char *msg) {
    fprintf(stderr, "hisa %s: %s\n", cmd, msg);
    return TOOL_EXIT_USAGE;
}

/* --keys into in: float32 [L,128], or uint8 fp8 e4m3 codes [L,128] with --scales [L] float32.
 * Sets L and fp8_codes. Returns 0, or -1 with the message in err. */
static int load_keys(tool_inputs *in, char *err, size_t err_len) {
    assert(in && in->keys_path && err);
    if (npy_read(in->keys_path, &in->keys, err, err_len) != 0) return -1;
    int64_t shape[2] = {-1, D};
    if (in->keys.dtype == NPY_U1) {
        in->fp8_codes = 1;
        if (npy_expect(&in->keys, in->keys_path, "fp8 key codes [L,128]", NPY_U1, 2, shape, err,
                       err_len) != 0)
            return -1;
        if (!in->scales_path) {
            snprintf(err, err_len,
                     "%s: uint8 keys are fp8 e4m3 codes and need --scales S.npy [L] float32",
                     in->keys_path);
            return -1;
        }
    } else {
        if (npy_expect(&in->keys, in->keys_path, "keys [L,128] (or uint8 fp8 codes)", NPY_F4,
                       2, shape, err, err_len) != 0)
            return -1;
        if (in->scales_path) {
            snprintf(err, err_len,
                     "%s: --scales goes with uint8 fp8 codes, but %s holds float32 keys",
                     in->scales_path, in->keys_path);
            return -1;
        }
    }
    if (in->keys.shape[0] < 1 || in->keys.shape[0] > INT32_MAX) {
        snprintf(err, err_len, "%s: expected at least one key row (L >= 1), got L=%lld",
                 in->keys_path, (long long)in->keys.shape[0]);
        return -1;
    }
    in->L = (int32_t)in->keys.shape[0];
    if (!in->fp8_codes) return 0;
    if (npy_read(in->scales_path, &in->scales, err, err_len) != 0) return -1;
    int64_t scales_shape[1] = {in->L};
    char what[96];
    snprintf(what, sizeof what, "fp8 scales [L] with L=%d rows of %s", in->L, in->keys_path);
    return npy_expect(&in->scales, in->scales_path, what, NPY_F4, 1, scales_shape, err, err_len);
}

/* The dtype --queries must have for in->q_format. Returns 0, or -1 with "Q.npy: --query-format
 * F expects queries [n_q,H,128] as DTYPE; got DTYPE [shape]" (and the format the file's dtype
 * would need) in err. */
static int queries_dtype_check(const tool_inputs *in, char *err, size_t err_len) {
    assert(in && err);
    static const struct {
        npy_dtype dt;
        const char *as, *hint;
    } k[3] = {
        [HISA_Q_F32] = {NPY_F4, "float32 (rounded to bf16 by the library)",
                        "float32 queries take --query-format f32, the default"},
        [HISA_Q_BF16] = {NPY_U2, "uint16 bf16 bits", "uint16 bf16 bits take --query-format bf16"},
        [HISA_Q_FP8] = {NPY_U1, "uint8 fp8 e4m3fn codes (per-head scale folded into --weights)",
                        "uint8 e4m3fn codes take --query-format fp8"},
    };
    const npy_array *q = &in->queries;
    int32_t f = in->q_format;
    assert(f >= HISA_Q_F32 && f <= HISA_Q_FP8);
    if (q->dtype == k[f].dt) return 0;
    char got[96];
    const char *hint = "";
    for (int32_t g = 0; g < 3; g++)
        if (q->dtype == k[g].dt) hint = k[g].hint;
    snprintf(err, err_len, "%s: --query-format %s expects queries [n_q,H,128] as %s; got %s %s%s%s",
             in->queries_path, tool_q_format_name(f), k[f].as, npy_dtype_name(q->dtype),
             npy_shape_str(q->shape, q->ndim, got, sizeof got), *hint ? "; " : "", hint);
    return -1;
}

/* --queries [n_q,H,128] in in->q_format (1 <= n_q <= L, 1 <= H <= 128) and --weights [n_q,H]
 * into in; sets n_q and H. Returns 0, or -1 with the message in err. */
static int load_queries(tool_inputs *in, char *err, size_t err_len) {
    assert(in && in->queries_path && in->weights_path && err);
    assert(in->L >= 1);
    if (npy_read(in->queries_path, &in->queries, err, err_len) != 0) return -1;
    if (queries_dtype_check(in, err, err_len) != 0) return -1;
    int64_t shape[3] = {-1, -1, D};
    if (npy_expect(&in->queries, in->queries_path, "queries [n_q,H,128]", in->queries.dtype, 3,
                   shape, err, err_len) != 0)
        return -1;
    if (in->queries.shape[0] < 1 || in->queries.shape[0] > in->L) {
        snprintf(err, err_len,
                 "%s: expected 1 <= n_q <= L=%d queries (they stand at the last n_q positions "
                 "of %s), got n_q=%lld",
                 in->queries_path, in->L, in->keys_path, (long long)in->queries.shape[0]);
        return -1;
    }
    if (in->queries.shape[1] < 1 || in->queries.shape[1] > 128) {
        snprintf(err, err_len, "%s: expected 1..128 heads, got H=%lld", in->queries_path,
                 (long long)in->queries.shape[1]);
        return -1;
    }
    in->n_q = (int32_t)in->queries.shape[0];
    in->H = (int32_t)in->queries.shape[1];
    if (npy_read(in->weights_path, &in->weights, err, err_len) != 0) return -1;
    int64_t w_shape[2] = {in->n_q, in->H};
    char what[160];
    snprintf(what, sizeof what, "weights [n_q,H] with n_q=%d, H=%d from %s%s", in->n_q, in->H,
             in->queries_path,
             in->q_format == HISA_Q_FP8 ? " (the fp8 queries' scales folded in)" : "");
    return npy_expect(&in->weights, in->weights_path, what, NPY_F4, 2, w_shape, err, err_len);
}

/* "[i,j,k]" of the flat index i of a, in its shape. */
static const char *index_str(const npy_array *a, int64_t i, char *buf, size_t len) {
    assert(a && buf && len > 0);
    int64_t idx[NPY_DIMS_MAX];
    for (int32_t d = a->ndim - 1; d >= 0; d--) {
        idx[d] = a->shape[d] ? i % a->shape[d] : 0;
        i = a->shape[d] ? i / a->shape[d] : 0;
    }
    size_t used = (size_t)snprintf(buf, len, "[");
    for (int32_t d = 0; d < a->ndim && used < len; d++)
        used += (size_t)snprintf(buf + used, len - used, "%s%lld", d ? "," : "", (long long)idx[d]);
    if (used < len) snprintf(buf + used, len - used, "]");
    return buf;
}

/* Element i of a as a float (float32, bf16 bits, e4m3fn codes by dtype) and how to show it. */
static float element(const npy_array *a, int64_t i, char *shown, size_t len) {
    float v;
    if (a->dtype == NPY_U2) {
        uint16_t b = ((const uint16_t *)a->data)[i];
        v = tool_bf16_to_f32(b);
        snprintf(shown, len, "the bf16 bits 0x%04x (%g)", b, (double)v);
    } else if (a->dtype == NPY_U1) {
        uint8_t c = ((const uint8_t *)a->data)[i];
        v = tool_e4m3_to_f32(c);
        snprintf(shown, len, "the e4m3fn code 0x%02x (%g)", c, (double)v);
    } else {
        v = ((const float *)a->data)[i];
        if (isnan(v)) snprintf(shown, len, "NaN");
        else snprintf(shown, len, "%g", (double)v);
    }
    return v;
}

/* Every value of a (what: "keys", ...) finite; with positive also > 0 and < 3e38 (the fp8
 * scales, as the library requires). Returns 0, or -1 with "PATH: WHAT[i,j] is V; RULE". */
static int check_values(const npy_array *a, const char *path, const char *what, int positive,
                        char *err, size_t err_len) {
    assert(a && path && what && err);
    assert(a->dtype != NPY_I4);
    for (int64_t i = 0; i < a->count; i++) {
        char shown[64], at[96];
        float v = element(a, i, shown, sizeof shown);
        if (isfinite(v) && (!positive || (v > 0.0f && v < 3.0e38f))) continue;
        snprintf(err, err_len, "%s: %s%s is %s; %s", path, what, index_str(a, i, at, sizeof at),
                 shown,
                 positive ? "every fp8 scale must be a positive finite number below 3e38"
                          : "every value must be a finite number (no NaN or infinity)");
        return -1;
    }
    return 0;
}

/* The values of the loaded inputs: finite keys, queries and weights, positive scales. */
static int check_inputs(const tool_inputs *in, char *err, size_t err_len) {
    assert(in && err);
    if (check_values(&in->keys, in->keys_path, in->fp8_codes ? "key codes" : "keys", 0, err,
                     err_len) != 0)
        return -1;
    if (in->fp8_codes &&
        check_values(&in->scales, in->scales_path, "scales", 1, err, err_len) != 0)
        return -1;
    if (check_values(&in->queries, in->queries_path, "queries", 0, err, err_len) != 0) return -1;
    return check_values(&in->weights, in->weights_path, "weights", 0, err, err_len);
}

void tool_inputs_opts_add(tool_opt *opts, int *n, tool_inputs *in) {
    assert(opts && n && in);
    opts[(*n)++] = (tool_opt){"keys", TOOL_OPT_STR, &in->keys_path, 0, 0, NULL};
    opts[(*n)++] = (tool_opt){"scales", TOOL_OPT_STR, &in->scales_path, 0, 0, NULL};
    opts[(*n)++] = (tool_opt){"queries", TOOL_OPT_STR, &in->queries_path, 0, 0, NULL};
    opts[(*n)++] = (tool_opt){"weights", TOOL_OPT_STR, &in->weights_path, 0, 0, NULL};
    opts[(*n)++] = (tool_opt){"query-format", TOOL_OPT_STR, &in->q_format_name, 0, 0, NULL};
    opts[(*n)++] = (tool_opt){"fp8-mma", TOOL_OPT_STR, &in->fp8_mma_name, 0, 0, NULL};
}

int tool_inputs_parse_names(const char *cmd, tool_inputs *in) {
    assert(cmd && in);
    int rc = tool_parse_q_format(cmd, in->q_format_name, &in->q_format);
    return rc ? rc : tool_parse_fp8_mma(cmd, in->fp8_mma_name, &in->fp8_mma);
}

int tool_inputs_load(const char *cmd, tool_inputs *in) {
    char err[NPY_ERR_MAX];
    const struct {
        const char *opt, *path;
    } need[] = {{"--keys", in->keys_path}, {"--queries", in->queries_path},
                {"--weights", in->weights_path}};
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++)
        if (!need[i].path) {
            fprintf(stderr, "hisa %s: %s FILE.npy is required (see hisa %s --help)\n", cmd,
                    need[i].opt, cmd);
            return TOOL_EXIT_USAGE;
        }
    if (load_keys(in, err, sizeof err) != 0 || load_queries(in, err, sizeof err) != 0 ||
        check_inputs(in, err, sizeof err) != 0) {
        tool_inputs_free(in);
        return input_error(cmd, err);
    }
    return 0;
}

int tool_inputs_open(const char *cmd, const tool_inputs *in, const tool_cfg_opts *c,
                     hisa_runtime **rt_out, int32_t *seq_out) {
    hisa_config cfg = {0};
    int rc = tool_cfg_apply(cmd, c, &cfg);
    if (rc) return rc;
    if (cfg.n_heads && cfg.n_heads != in->H) {
        fprintf(stderr, "hisa %s: --heads %d, but %s holds H=%d heads\n", cmd, cfg.n_heads,
                in->queries_path, in->H);
        return TOOL_EXIT_USAGE;
    }
    if (in->fp8_codes && cfg.key_format == HISA_KEY_BF16) {
        fprintf(stderr,
                "hisa %s: --key-format bf16, but %s holds fp8 codes; use --key-format fp8 or "
                "float32 keys\n",
                cmd, in->keys_path);
        return TOOL_EXIT_USAGE;
    }
    cfg.n_layers = 1;
    cfg.n_heads = in->H;
    cfg.fp8_mma = in->fp8_mma;
    cfg.max_seqs = 1;
    cfg.max_batch = 1;
    cfg.max_context = in->L;
    /* Chunks of up to 1024 tokens / queries: large enough to amortize calls, small enough to
     * keep the scratch regions modest. */
    cfg.max_prefill_queries = in->L < 1024 ? in->L : 1024;
    const char *why;
    rc = tool_pick_device(cmd, c->device, &cfg.device, &why);
    if (rc) return rc;
    static const tool_field_name names[] = {{"max_context", "L", "the rows of --keys"},
                                            {"n_heads", "H", "the heads of --queries"},
                                            {NULL, NULL, NULL}};
    rc = tool_open(cmd, &cfg, names, rt_out);
    if (rc) return rc;
    hisa_runtime *rt = *rt_out;
    int err = hisa_seq_open(rt, seq_out);
    if (!err) err = hisa_seq_extend(rt, *seq_out, in->L);
    int32_t chunk = hisa_get_config(rt)->max_prefill_queries;
    for (int32_t p0 = 0; !err && p0 < in->L; p0 += chunk) {
        int32_t n = in->L - p0 < chunk ? in->L - p0 : chunk;
        hisa_write req = {.layer = 0, .n_tokens = n, .flags = HISA_HOST_IO};
        if (in->fp8_codes) {
            req.codes = (const uint8_t *)in->keys.data + (size_t)p0 * D;
            req.scales = (const float *)in->scales.data + p0;
        } else {
            req.keys = (const float *)in->keys.data + (size_t)p0 * D;
        }
        err = hisa_write_range(rt, *seq_out, p0, &req);
    }
    if (err) {
        rc = tool_lib_error(cmd, "writing the keys", err, NULL);
        hisa_close(rt);
        *rt_out = NULL;
        return rc;
    }
    return 0;
}

int tool_inputs_select(hisa_runtime *rt, int32_t seq, const tool_inputs *in, hisa_mode mode,
                       int32_t *out, double *seconds_out) {
    const hisa_config *cfg = hisa_get_config(rt);
    int32_t k = cfg->topk, H = in->H;
    /* The queries go to the library as read, in their format: no conversion here. */
    const uint8_t *q = in->queries.data;
    const size_t q_row = (size_t)H * D * npy_dtype_size(in->queries.dtype);
    const float *w = in->weights.data;
    double t_start = tool_now_s();
    int err = 0;
    if (in->n_q == 1) {
        /* One query at the last position is exactly a decode step. */
        hisa_decode req = {.layer = 0, .mode = mode, .n_seqs = 1, .seq_ids = &seq, .q = q,
                           .w = w, .out = out, .flags = HISA_HOST_IO, .q_format = in->q_format};
        err = hisa_select_decode(rt, &req);
    } else {
        int32_t chunk = cfg->max_prefill_queries;
        for (int32_t i0 = 0; !err && i0 < in->n_q; i0 += chunk) {
            int32_t n = in->n_q - i0 < chunk ? in->n_q - i0 : chunk;
            hisa_prefill req = {.layer = 0, .mode = mode, .seq = seq,
                                .t0 = in->L - in->n_q + i0, .n_q = n,
                                .q = q + (size_t)i0 * q_row, .w = w + (size_t)i0 * H,
                                .out = out + (size_t)i0 * k, .flags = HISA_HOST_IO,
                                .q_format = in->q_format};
            err = hisa_select_prefill(rt, &req);
        }
    }
    *seconds_out = tool_now_s() - t_start;
    return err;
}

static int cmp_sel(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    /* -1 padding sorts last */
    if (x < 0 || y < 0) return (x < 0) - (y < 0);
    return (x > y) - (x < y);
}

void tool_sort_rows(int32_t *sel, int64_t n_rows, int32_t k) {
    for (int64_t r = 0; r < n_rows; r++) qsort(sel + r * k, (size_t)k, sizeof *sel, cmp_sel);
}

/* --- hisa select -------------------------------------------------------------------------- */
static void select_help(void) {
    printf(
        "usage: hisa select --keys K.npy [--scales S.npy] --queries Q.npy --weights W.npy\n"
        "                   [--query-format f32|bf16|fp8] [--fp8-mma exact|native]\n"
        "                   [--mode hisa|flat] [--out I.npy]\n"
        "                   [options]\n"
        "\n"
        "Top-k selection for queries on tensors dumped from your own model, exactly as\n"
        "docs/SPEC.md defines it. The queries stand at the last n_q positions of the context:\n"
        "query i at position L - n_q + i, causal (it sees positions 0..L-n_q+i); n_q = 1 is a\n"
        "decode step. The runtime is sized from the inputs (one sequence, max_context L).\n"
        "\n"
        "inputs (.npy regular files, little-endian, C order, version 1.0 or 2.0; keys, queries\n"
        "and weights must be finite, fp8 scales positive and finite: a NaN, an infinity or a\n"
        "NaN code exits 2 naming the file and the index):\n"
        "  --keys K.npy       [L,128] float32 indexer keys, or [L,128] uint8 fp8 e4m3 codes\n"
        "  --scales S.npy     [L] float32 per-token scales (only with uint8 codes)\n"
        "  --queries Q.npy    [n_q,H,128] in --query-format: float32 (rounded to bf16 before\n"
        "                     use), uint16 bf16 bits, or uint8 fp8 e4m3fn codes\n"
        "  --weights W.npy    [n_q,H] float32 head weights, used as given (for fp8 queries\n"
        "                     the per-head query scales are already folded in: w * scale)\n"
        "options:\n"
        "  --query-format F   f32 (default), bf16 or fp8: the dtype of Q.npy (float32,\n"
        "                     uint16, uint8), passed to the library as is (SPEC \"Queries\")\n"
        "  --fp8-mma A        exact (default) or native: with fp8 queries and fp8 keys on a\n"
        "                     Hopper GPU, native multiplies the codes on the e4m3 tensor cores\n"
        "                     (faster; scores off by up to ~1e-4 of the largest, outside\n"
        "                     SPEC's agreement rule: hisa.h)\n"
        "  --mode M           hisa (default) or flat (DSA: the exact top-k of all tokens)\n"
        "  --out I.npy        write [n_q,k] int32 positions, each row ascending, -1 padded\n"
        "                     (checked to be writable before the run); without --out the\n"
        "                     selections are printed, one query per line\n"
        "  --key-format F     fp8 (default) or bf16: how keys are stored (float32 keys are\n"
        "                     quantized on write; uint8 codes need fp8)\n"
        "  --block-size B     tokens per block / page: 32, 64, 128 (default), 256\n"
        "  --top-blocks M     blocks kept by the coarse stage (default 64), 2..1024\n"
        "  --topk K           tokens selected per query (default 2048), 1..16384;\n"
        "                     (M - 1) x B >= K must hold\n"
        "  --heads H          optional check: must equal H of Q.npy\n"
        "  --device D         cpu, cuda or cuda:N (default: cuda:0 when available, else cpu)\n"
        "\n"
        "Exit status: 0 ok, 2 usage or input error (the message names the file and what was\n"
        "expected), 1 runtime failure.\n");
}

typedef struct select_opts {
    tool_inputs in; /* the input paths; loaded by the command */
    tool_cfg_opts c;
    const char *mode_s, *out_path;
    hisa_mode mode; /* of mode_s */
} select_opts;

/* Options into o. Returns tool_parse_opts's codes (-1: --help) or TOOL_EXIT_USAGE. */
static int select_parse(int argc, char **argv, select_opts *o) {
    assert(argc >= 1 && o);
    *o = (select_opts){.mode_s = "hisa"};
    tool_opt opts[16];
    int n = 0;
    tool_inputs_opts_add(opts, &n, &o->in);
    opts[n++] = (tool_opt){"mode", TOOL_OPT_STR, &o->mode_s, 0, 0, NULL};
    opts[n++] = (tool_opt){"out", TOOL_OPT_STR, &o->out_path, 0, 0, NULL};
    tool_cfg_opts_add(opts, &n, &o->c);
    assert(n <= (int)(sizeof opts / sizeof opts[0]));
    int rc = tool_parse_opts("select", argc, argv, opts, n);
    if (rc) return rc;
    rc = tool_inputs_parse_names("select", &o->in);
    if (rc) return rc;
    static const tool_choice modes[] = {{"hisa", "blocks first, then tokens of the kept blocks", HISA_MODE_HISA},
                                        {"flat", "every token, DSA's indexer", HISA_MODE_FLAT}};
    int32_t mode = HISA_MODE_HISA;
    if (tool_parse_choice("select", "mode", o->mode_s, modes, TOOL_N_CHOICES(modes), &mode)) return TOOL_EXIT_USAGE;
    o->mode = (hisa_mode)mode;
    return o->out_path ? tool_check_output("select", "out", o->out_path) : 0;
}

/* The summary line, then the selections out [n_q, k] (rows sorted) into --out or on stdout. */
static int select_report(const select_opts *o, const hisa_config *cfg, const int32_t *out,
                         double seconds) {
    assert(o && cfg && out);
    const tool_inputs *in = &o->in;
    const int32_t k = cfg->topk;
    char dev[32];
    /* The summary goes to stderr when the selections themselves go to stdout, so that
     * stdout stays machine-readable. */
    FILE *info = o->out_path ? stdout : stderr;
    fprintf(info,
            "hisa select: device %s, mode %s, L=%d, n_q=%d, H=%d, B=%d, m=%d, k=%d, keys %s%s, "
            "queries %s%s: %.3f ms\n",
            tool_device_name(cfg->device, dev, sizeof dev), o->mode_s, in->L, in->n_q, in->H,
            cfg->block_size, cfg->top_blocks, k, tool_key_format_name(cfg->key_format),
            in->fp8_codes ? " (fp8 codes given)" : "", tool_q_format_name(in->q_format),
            cfg->fp8_mma == HISA_FP8_MMA_NATIVE ? " (fp8_mma native)" : "", seconds * 1e3);
    if (o->out_path) {
        char nerr[NPY_ERR_MAX];
        int64_t shape[2] = {in->n_q, k};
        if (npy_write(o->out_path, NPY_I4, 2, shape, out, nerr, sizeof nerr) != 0) {
            fprintf(stderr, "hisa select: %s\n", nerr);
            return TOOL_EXIT_FAIL;
        }
        printf("wrote %s [%d,%d] int32\n", o->out_path, in->n_q, k);
        return TOOL_EXIT_OK;
    }
    for (int32_t i = 0; i < in->n_q; i++) {
        printf("%d:", in->L - in->n_q + i);
        for (int32_t j = 0; j < k && out[(size_t)i * k + j] >= 0; j++)
            printf(" %d", out[(size_t)i * k + j]);
        printf("\n");
    }
    return TOOL_EXIT_OK;
}

int hisa_cmd_select(int argc, char **argv) {
    select_opts o;
    int rc = select_parse(argc, argv, &o);
    if (rc < 0) {
        select_help();
        return TOOL_EXIT_OK;
    }
    if (rc) return rc;
    rc = tool_inputs_load("select", &o.in);
    if (rc) return rc;
    hisa_runtime *rt = NULL;
    int32_t seq;
    rc = tool_inputs_open("select", &o.in, &o.c, &rt, &seq);
    if (rc) {
        tool_inputs_free(&o.in);
        return rc;
    }
    const hisa_config *cfg = hisa_get_config(rt);
    int32_t *out = malloc(sizeof(int32_t) * (size_t)o.in.n_q * (size_t)cfg->topk);
    double seconds = 0;
    int err = 0;
    if (!out) {
        fprintf(stderr, "hisa select: out of memory for the output\n");
        rc = TOOL_EXIT_FAIL;
    } else {
        err = tool_inputs_select(rt, seq, &o.in, o.mode, out, &seconds);
        if (err) rc = tool_lib_error("select", "selecting", err, NULL);
    }
    if (!rc) {
        tool_sort_rows(out, o.in.n_q, cfg->topk);
        rc = select_report(&o, cfg, out, seconds);
    }
    free(out);
    hisa_close(rt);
    tool_inputs_free(&o.in);
    return rc;
}
