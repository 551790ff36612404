/* niah.c: `hisa niah`, needle in a haystack for the indexer. For each context length and
 * needle depth it plants one needle token in a structured synthetic haystack, asks a decode
 * query aligned with it, and records whether flat DSA and HISA select the needle. Output: the
 * grid as text, a CSV, and an SVG heatmap in the style of the HISA paper's NIAH figure. */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "synth.h"
#include "tools.h"

#define D HISA_HEAD_DIM
#define NIAH_MAX_CONTEXTS 32
#define NIAH_MAX_DEPTHS 64

int32_t tool_niah_position(int32_t context, double depth_pct, int32_t n_sinks) {
    int32_t last = context - 2; /* context - 1 is the query's own token */
    if (last < 0) return 0;
    int32_t first = n_sinks < last ? n_sinks : last;
    double f = depth_pct / 100.0;
    if (f < 0) f = 0;
    if (f > 1) f = 1;
    return first + (int32_t)lround(f * (double)(last - first));
}

int tool_niah_cell(hisa_runtime *rt, const synth_params *sp_in, int32_t context, double depth_pct,
                   tool_niah_result *res) {
    const hisa_config *cfg = hisa_get_config(rt);
    const int32_t chunk = cfg->max_prefill_queries, k = cfg->topk, H = cfg->n_heads;
    synth_params sp = *sp_in;
    sp.n_layers = 1;
    sp.n_heads = H;
    memset(res, 0, sizeof *res);
    res->needle_pos = tool_niah_position(context, depth_pct, sp.n_sinks);
    sp.n_needles = 1;
    sp.needle_pos[0] = res->needle_pos;
    synth_gen g;
    if (synth_init(&g, &sp) != 0) return HISA_EINVAL;
    float *keys = malloc(sizeof(float) * (size_t)chunk * D);
    float *q = malloc(sizeof(float) * (size_t)H * D);
    float *w = malloc(sizeof(float) * (size_t)H);
    int32_t *flat = malloc(sizeof(int32_t) * (size_t)k);
    int32_t *hisa = malloc(sizeof(int32_t) * (size_t)k);
    int32_t *scratch = malloc(sizeof(int32_t) * 2 * (size_t)k);
    int32_t seq = -1;
    int err = HISA_ENOMEM;
    if (!keys || !q || !w || !flat || !hisa || !scratch) goto done;
    err = hisa_seq_open(rt, &seq);
    if (err) {
        seq = -1;
        goto done;
    }
    err = hisa_seq_extend(rt, seq, context);
    for (int32_t p0 = 0; !err && p0 < context; p0 += chunk) {
        int32_t n = context - p0 < chunk ? context - p0 : chunk;
        synth_keys(&g, n, keys, (int64_t)n * D);
        hisa_write req = {.layer = 0, .n_tokens = n, .keys = keys, .flags = HISA_HOST_IO};
        err = hisa_write_range(rt, seq, p0, &req);
    }
    if (err) goto done;
    synth_query(&g, 0, 1, q, w);
    hisa_decode req = {.layer = 0, .mode = HISA_MODE_FLAT, .n_seqs = 1, .seq_ids = &seq,
                       .q = q, .w = w, .out = flat, .flags = HISA_HOST_IO};
    err = hisa_select_decode(rt, &req);
    if (err) goto done;
    req.mode = HISA_MODE_HISA;
    req.out = hisa;
    err = hisa_select_decode(rt, &req);
    if (err) goto done;
    res->found_flat = tool_selected(flat, k, res->needle_pos);
    res->found_hisa = tool_selected(hisa, k, res->needle_pos);
    res->iou = tool_iou(flat, hisa, k, scratch);
done:
    if (seq >= 0) hisa_seq_close(rt, seq);
    synth_free(&g);
    free(keys);
    free(q);
    free(w);
    free(flat);
    free(hisa);
    free(scratch);
    return err;
}

static void niah_help(void) {
    printf(
        "usage: hisa niah [--contexts LIST] [--depths LIST] [--trials N] [--csv F] [--svg F]\n"
        "                 [options]\n"
        "\n"
        "Needle in a haystack for the indexer. For every context length x needle depth it\n"
        "builds a structured synthetic haystack (topic segments, attention sinks; see hisa\n"
        "stream --help), plants one needle token at the depth, and makes a decode query at\n"
        "the last position aligned with the needle. The recall is the fraction of trials in\n"
        "which the selection holds the needle, for flat DSA and for HISA. The grid is printed\n"
        "as text and written as CSV and as an SVG heatmap (red 0 .. green 1, like the HISA\n"
        "paper's NIAH figure).\n"
        "\n"
        "The needle's key is needle-gain times a fixed random direction n (plus the usual\n"
        "noise) and the query adds n to every head, so flat DSA ranks it first. HISA finds it\n"
        "only if the coarse stage keeps its block: one token moves its block's mean by about\n"
        "gain / B of its own score, so a small gain probes the block filter hard.\n"
        "Depth d puts the needle at position 4 + round(d/100 * (L - 6)): just after the 4\n"
        "sinks at 0%%, just before the query's own token at 100%%.\n"
        "A context of at most k tokens selects every token (recall 1 in both panels by\n"
        "construction), and one of at most m blocks makes HISA equal flat by construction:\n"
        "such columns are marked * in the SVG, named in a note and in the CSV's\n"
        "by_construction column (all_tokens, all_blocks; none otherwise).\n"
        "\n"
        "options (GPU default / CPU default):\n"
        "  --contexts LIST    context lengths, comma-separated, each 1..16M (HISA_MAX_CONTEXT)\n"
        "                     (8K,16K,32K,64K,128K / 8K,16K,32K: a few seconds on two cores)\n"
        "  --depths LIST      needle depths in %%, comma-separated, each 0..100 (default\n"
        "                     0,10,...,100)\n"
        "  --trials N         haystacks per cell, each with its own seed (default 1), >= 1\n"
        "  --needle-gain G    needle key scale relative to a topic key (default 48), > 0\n"
        "  --seed S           base seed (default 1)\n"
        "  --csv FILE         CSV output (default niah.csv)\n"
        "  --svg FILE         SVG heatmap output (default niah.svg); both files are checked to\n"
        "                     be writable before the run\n"
        "  --key-format F     fp8 (default) or bf16\n"
        "  --heads H          indexer heads (default 64), 1..128\n"
        "  --block-size B     32, 64, 128 (default), 256\n"
        "  --top-blocks M     (64 / 32), 2..1024; (M - 1) x B >= K must hold. On the CPU m is\n"
        "                     32 so that the 8K column (64 blocks of 128) is not HISA = flat\n"
        "  --topk K           (default 2048), 1..16384\n"
        "  --device D         cpu, cuda or cuda:N (default: cuda:0 when available, else cpu)\n");
}

/* One entry of a --contexts (integer) or --depths list into *out. Returns 0, or -1 after the
 * message. */
static int parse_entry(const char *cmd, const char *opt, const char *list, const char *tok,
                       int integer, double *out) {
    if (!*tok) {
        fprintf(stderr,
                "hisa %s: --%s '%s': an empty entry; expected a comma-separated list of %s\n", cmd,
                opt, list, integer ? "token counts (e.g. 8K,16K)" : "percentages 0..100");
        return -1;
    }
    if (integer) {
        int64_t v = 0;
        int r = tool_parse_i64(tok, &v);
        if (r == -1) {
            fprintf(stderr, "hisa %s: --%s: '%s' is not a token count (e.g. 8K,16K)\n", cmd, opt,
                    tok);
            return -1;
        }
        if (r == -2 || v < 1 || v > HISA_MAX_CONTEXT) {
            fprintf(stderr, "hisa %s: --%s: '%s': out of range; expected 1..%d tokens "
                    "(HISA_MAX_CONTEXT)\n", cmd, opt, tok, HISA_MAX_CONTEXT);
            return -1;
        }
        *out = (double)v;
        return 0;
    }
    char *end;
    double v = strtod(tok, &end);
    if (end == tok || *end || !(v >= 0 && v <= 100)) {
        fprintf(stderr, "hisa %s: --%s: '%s'; expected a percentage 0..100\n", cmd, opt, tok);
        return -1;
    }
    *out = v;
    return 0;
}

/* A comma-separated list into out[max]; returns how many, or -1 after the message. */
static int parse_list(const char *cmd, const char *opt, const char *s, double *out, int max,
                      int integer) {
    char buf[512];
    if (strlen(s) >= sizeof buf) {
        fprintf(stderr, "hisa %s: --%s: the list is too long\n", cmd, opt);
        return -1;
    }
    strcpy(buf, s);
    int n = 0;
    for (char *tok = buf;; n++) {
        char *comma = strchr(tok, ',');
        if (comma) *comma = 0;
        if (n >= max) {
            fprintf(stderr, "hisa %s: --%s: more than %d entries\n", cmd, opt, max);
            return -1;
        }
        if (parse_entry(cmd, opt, s, tok, integer, &out[n]) != 0) return -1;
        if (!comma) return n + 1;
        tok = comma + 1;
    }
}

static void print_grid(const char *title, const int32_t *ctx, int nc, const double *dep, int nd,
                       const double *rec) {
    char lab[16];
    printf("%s\n%8s", title, "depth");
    for (int ci = 0; ci < nc; ci++) printf(" %7s", tool_ctx_label(ctx[ci], lab, sizeof lab));
    printf("\n");
    for (int di = 0; di < nd; di++) {
        printf("%7g%%", dep[di]);
        for (int ci = 0; ci < nc; ci++) printf(" %7.2f", rec[di * nc + ci]);
        printf("\n");
    }
}

typedef struct niah_opts {
    tool_cfg_opts c;
    const char *contexts_s, *depths_s; /* contexts_s NULL: the device's default */
    const char *csv_path, *svg_path;
    int32_t trials;
    int64_t seed;
    double gain; /* NAN: the generator's default */
    int cpu_m;   /* 1 when m is the CPU default, for the messages */
} niah_opts;

/* The grid: context lengths (columns) x needle depths (rows). */
typedef struct niah_grid {
    int32_t ctx[NIAH_MAX_CONTEXTS], max_ctx;
    double dep[NIAH_MAX_DEPTHS];
    int nc, nd;
} niah_grid;

/* Per cell (index depth * nc + context), the means over the trials. */
typedef struct niah_cells {
    double *rec_flat, *rec_hisa, *iou;
    int32_t *pos;
    double t0; /* when the run began, for the timings */
} niah_cells;

/* --- parse -------------------------------------------------------------------------------- */

/* Options into o; the output files are checked here, before any work. Returns
 * tool_parse_opts's codes (-1: --help) or TOOL_EXIT_USAGE. */
static int niah_parse(int argc, char **argv, niah_opts *o) {
    assert(argc >= 1 && o);
    *o = (niah_opts){.depths_s = "0,10,20,30,40,50,60,70,80,90,100", .csv_path = "niah.csv",
                     .svg_path = "niah.svg", .trials = 1, .seed = 1, .gain = NAN};
    tool_opt opts[20];
    int n = 0;
    opts[n++] = (tool_opt){"contexts", TOOL_OPT_STR, &o->contexts_s, 0, 0, NULL};
    opts[n++] = (tool_opt){"depths", TOOL_OPT_STR, &o->depths_s, 0, 0, NULL};
    opts[n++] = (tool_opt){"trials", TOOL_OPT_INT, &o->trials, 1, INT32_MAX, "haystacks per cell"};
    opts[n++] = (tool_opt){"needle-gain", TOOL_OPT_DOUBLE, &o->gain, 0, 0, NULL};
    opts[n++] = (tool_opt){"seed", TOOL_OPT_I64, &o->seed, 0, 0, NULL};
    opts[n++] = (tool_opt){"csv", TOOL_OPT_STR, &o->csv_path, 0, 0, NULL};
    opts[n++] = (tool_opt){"svg", TOOL_OPT_STR, &o->svg_path, 0, 0, NULL};
    tool_cfg_opts_add(opts, &n, &o->c);
    assert(n <= (int)(sizeof opts / sizeof opts[0]));
    int rc = tool_parse_opts("niah", argc, argv, opts, n);
    if (rc) return rc;
    if (!isnan(o->gain) && !(o->gain > 0 && o->gain <= 1e6)) {
        fprintf(stderr, "hisa niah: --needle-gain %g: out of range; expected a positive number "
                "up to 1e6 (the needle key's scale; default 48)\n", o->gain);
        return TOOL_EXIT_USAGE;
    }
    rc = tool_check_output("niah", "csv", o->csv_path);
    if (!rc) rc = tool_check_output("niah", "svg", o->svg_path);
    return rc;
}

/* The configuration, the device (then the defaults that depend on it: the contexts, and m on
 * the CPU) and the grid. One layer, one sequence of the longest context. */
static int niah_configure(niah_opts *o, hisa_config *cfg, niah_grid *g, const char **why) {
    assert(o && cfg && g && why);
    *cfg = (hisa_config){0};
    int rc = tool_cfg_apply("niah", &o->c, cfg);
    if (rc) return rc;
    rc = tool_pick_device("niah", o->c.device, &cfg->device, why);
    if (rc) return rc;
    int gpu = cfg->device != HISA_DEVICE_CPU;
    if (!o->contexts_s) o->contexts_s = gpu ? "8K,16K,32K,64K,128K" : "8K,16K,32K";
    o->cpu_m = !o->c.top_blocks && !gpu;
    if (o->cpu_m) cfg->top_blocks = 32;
    double ctx_d[NIAH_MAX_CONTEXTS];
    g->nc = parse_list("niah", "contexts", o->contexts_s, ctx_d, NIAH_MAX_CONTEXTS, 1);
    if (g->nc < 0) return TOOL_EXIT_USAGE;
    g->nd = parse_list("niah", "depths", o->depths_s, g->dep, NIAH_MAX_DEPTHS, 0);
    if (g->nd < 0) return TOOL_EXIT_USAGE;
    g->max_ctx = 0;
    for (int i = 0; i < g->nc; i++) {
        g->ctx[i] = (int32_t)ctx_d[i];
        if (g->ctx[i] > g->max_ctx) g->max_ctx = g->ctx[i];
    }
    cfg->n_layers = 1;
    cfg->max_seqs = 1;
    cfg->max_batch = 1;
    cfg->max_context = g->max_ctx;
    cfg->max_prefill_queries = 1024;
    return 0;
}

/* --- run ---------------------------------------------------------------------------------- */

static int cells_alloc(niah_cells *cl, size_t cells) {
    assert(cl && cells > 0);
    cl->rec_flat = calloc(cells, sizeof(double));
    cl->rec_hisa = calloc(cells, sizeof(double));
    cl->iou = calloc(cells, sizeof(double));
    cl->pos = calloc(cells, sizeof(int32_t));
    if (!cl->rec_flat || !cl->rec_hisa || !cl->iou || !cl->pos) {
        fprintf(stderr, "hisa niah: out of memory\n");
        return TOOL_EXIT_FAIL;
    }
    return 0;
}

static void cells_free(niah_cells *cl) {
    assert(cl);
    free(cl->rec_flat);
    free(cl->rec_hisa);
    free(cl->iou);
    free(cl->pos);
}

/* Every cell, --trials haystacks each (each trial its own seed), context by context with a
 * progress line on stderr. Returns 0 or an exit code (the message printed). */
static int niah_run(hisa_runtime *rt, synth_params *sp, const niah_opts *o, const niah_grid *g,
                    niah_cells *cl) {
    assert(rt && sp && o && g && cl);
    assert(o->trials >= 1);
    cl->t0 = tool_now_s();
    for (int ci = 0; ci < g->nc; ci++) {
        for (int di = 0; di < g->nd; di++) {
            size_t cell = (size_t)di * g->nc + ci;
            for (int32_t t = 0; t < o->trials; t++) {
                tool_niah_result r;
                sp->seed = (uint64_t)o->seed * 0x100000001b3ull + (uint64_t)ci * 7919u +
                           (uint64_t)di * 104729u + (uint64_t)t * 1299709u;
                int err = tool_niah_cell(rt, sp, g->ctx[ci], g->dep[di], &r);
                if (err) return tool_lib_error("niah", "running a cell", err, NULL);
                cl->rec_flat[cell] += r.found_flat;
                cl->rec_hisa[cell] += r.found_hisa;
                cl->iou[cell] += r.iou;
                cl->pos[cell] = r.needle_pos;
            }
            cl->rec_flat[cell] /= o->trials;
            cl->rec_hisa[cell] /= o->trials;
            cl->iou[cell] /= o->trials;
        }
        fprintf(stderr, "  context %d done (%.1f s)\n", g->ctx[ci], tool_now_s() - cl->t0);
    }
    return 0;
}

/* --- report ------------------------------------------------------------------------------- */

static void niah_header(const hisa_config *cfg, const char *dev, const char *why,
                        const synth_params *sp, int32_t trials) {
    assert(cfg && dev && why && sp);
    assert(trials >= 1);
    printf("hisa niah: device %s%s%s%s; H=%d, B=%d, m=%d, k=%d, keys %s; needle gain %g, "
           "%d trial%s per cell\n",
           dev, *why ? " (" : "", why, *why ? ")" : "", cfg->n_heads, cfg->block_size,
           cfg->top_blocks, cfg->topk, tool_key_format_name(cfg->key_format),
           (double)sp->needle_gain, trials, trials == 1 ? "" : "s");
    fflush(stdout);
}

/* The columns that are trivial by construction: the CSV's word, the SVG's note, the text's. */
static const char *const k_trivial_word[3] = {"none", "all_tokens", "all_blocks"};

/* The SVG footnote of column ci into buf, or NULL when the column is not trivial. */
static const char *svg_note(const hisa_config *cfg, int32_t ctx, char *buf, size_t n) {
    char lab[16];
    int64_t nb = ((int64_t)ctx + cfg->block_size - 1) / cfg->block_size;
    tool_ctx_label(ctx, lab, sizeof lab);
    switch (tool_trivial_kind(ctx, cfg)) {
    case TOOL_TRIVIAL_TOKENS:
        snprintf(buf, n,
                 "* %s: %d tokens <= k=%d: every token is selected, recall 1 by construction", lab,
                 ctx, cfg->topk);
        return buf;
    case TOOL_TRIVIAL_BLOCKS:
        snprintf(buf, n, "* %s: %lld blocks of B=%d <= m=%d: HISA equals flat by construction", lab,
                 (long long)nb, cfg->block_size, cfg->top_blocks);
        return buf;
    default: return NULL;
    }
}

/* The two grids, the means over every cell, and a note per trivial column. */
static void niah_print(const hisa_config *cfg, const niah_grid *g, const niah_cells *cl) {
    assert(cfg && g && cl);
    assert(g->nc >= 1 && g->nd >= 1);
    print_grid("needle recall, flat DSA (rows: depth, columns: context length)", g->ctx, g->nc,
               g->dep, g->nd, cl->rec_flat);
    print_grid("needle recall, HISA", g->ctx, g->nc, g->dep, g->nd, cl->rec_hisa);
    size_t cells = (size_t)g->nc * (size_t)g->nd;
    double sum_f = 0, sum_h = 0, sum_i = 0;
    for (size_t i = 0; i < cells; i++)
        sum_f += cl->rec_flat[i], sum_h += cl->rec_hisa[i], sum_i += cl->iou[i];
    printf("mean recall: flat %.3f, HISA %.3f; mean IoU HISA vs flat %.3f; %.1f s\n",
           sum_f / (double)cells, sum_h / (double)cells, sum_i / (double)cells,
           tool_now_s() - cl->t0);
    for (int ci = 0; ci < g->nc; ci++) {
        char why[256], lab[16];
        if (tool_trivial_why(g->ctx[ci], cfg, why, sizeof why))
            printf("note: context %s: %s\n", tool_ctx_label(g->ctx[ci], lab, sizeof lab), why);
    }
}

/* One line per cell, context-major. Returns 0 or TOOL_EXIT_FAIL (the message printed). */
static int niah_write_csv(const char *path, const hisa_config *cfg, const niah_grid *g,
                          const niah_cells *cl, int32_t trials) {
    assert(path && cfg && g && cl);
    FILE *csv = fopen(path, "w");
    if (!csv) {
        fprintf(stderr, "hisa niah: %s: cannot create: %s\n", path, strerror(errno));
        return TOOL_EXIT_FAIL;
    }
    fprintf(csv, "context,depth_percent,needle_position,trials,recall_flat,recall_hisa,iou,"
                 "by_construction\n");
    for (int ci = 0; ci < g->nc; ci++)
        for (int di = 0; di < g->nd; di++) {
            size_t cell = (size_t)di * g->nc + ci;
            fprintf(csv, "%d,%g,%d,%d,%.4f,%.4f,%.4f,%s\n", g->ctx[ci], g->dep[di], cl->pos[cell],
                    trials, cl->rec_flat[cell], cl->rec_hisa[cell], cl->iou[cell],
                    k_trivial_word[tool_trivial_kind(g->ctx[ci], cfg)]);
        }
    if (fclose(csv) != 0) {
        fprintf(stderr, "hisa niah: %s: write error\n", path);
        return TOOL_EXIT_FAIL;
    }
    return 0;
}

/* The heatmap: the plot of the grid, subtitled with the setting, trivial columns noted. */
static int niah_write_svg(const niah_opts *o, const hisa_config *cfg, const char *dev,
                          const synth_params *sp, const niah_grid *g, const niah_cells *cl) {
    char subtitle[256], notes[NIAH_MAX_CONTEXTS][160];
    const char *col_note[NIAH_MAX_CONTEXTS];
    snprintf(subtitle, sizeof subtitle,
             "%s, H=%d, B=%d, m=%d, k=%d, keys %s, needle gain %g, %d trial%s per cell", dev,
             cfg->n_heads, cfg->block_size, cfg->top_blocks, cfg->topk,
             tool_key_format_name(cfg->key_format), (double)sp->needle_gain, o->trials,
             o->trials == 1 ? "" : "s");
    for (int ci = 0; ci < g->nc; ci++)
        col_note[ci] = svg_note(cfg, g->ctx[ci], notes[ci], sizeof notes[ci]);
    tool_niah_plot p = {.ctx = g->ctx, .nc = g->nc, .dep = g->dep, .nd = g->nd,
                        .rec_flat = cl->rec_flat, .rec_hisa = cl->rec_hisa,
                        .subtitle = subtitle, .col_note = col_note};
    if (tool_niah_svg(o->svg_path, &p) != 0) {
        fprintf(stderr, "hisa niah: %s: cannot write\n", o->svg_path);
        return TOOL_EXIT_FAIL;
    }
    return 0;
}

/* The grids on stdout, then the CSV and the SVG (each written even when the other fails). */
static int niah_report(const niah_opts *o, const hisa_config *cfg, const char *dev,
                       const synth_params *sp, const niah_grid *g, const niah_cells *cl) {
    assert(o && cfg && dev && sp && g && cl);
    niah_print(cfg, g, cl);
    int rc_csv = niah_write_csv(o->csv_path, cfg, g, cl, o->trials);
    int rc_svg = niah_write_svg(o, cfg, dev, sp, g, cl);
    if (!rc_csv) printf("wrote %s\n", o->csv_path);
    if (!rc_svg) printf("wrote %s\n", o->svg_path);
    return rc_csv ? rc_csv : rc_svg;
}

int hisa_cmd_niah(int argc, char **argv) {
    niah_opts o;
    int rc = niah_parse(argc, argv, &o);
    if (rc < 0) {
        niah_help();
        return TOOL_EXIT_OK;
    }
    if (rc) return rc;
    hisa_config cfg;
    niah_grid g;
    const char *why;
    rc = niah_configure(&o, &cfg, &g, &why);
    if (rc) return rc;
    static const tool_field_name names[] = {{"top_blocks", "--top-blocks", "the CPU default"},
                                            {"max_context", "--contexts", "the longest"},
                                            {NULL, NULL, NULL}};
    hisa_runtime *rt = NULL;
    rc = tool_open("niah", &cfg, o.cpu_m ? names : names + 1, &rt);
    if (rc) return rc;
    const hisa_config *rcfg = hisa_get_config(rt);
    char dev[32];
    tool_device_name(rcfg->device, dev, sizeof dev);
    synth_params sp;
    synth_params_default(&sp);
    sp.n_heads = rcfg->n_heads;
    if (!isnan(o.gain)) sp.needle_gain = (float)o.gain;
    niah_header(rcfg, dev, why, &sp, o.trials);
    niah_cells cl = {0};
    rc = cells_alloc(&cl, (size_t)g.nc * (size_t)g.nd);
    if (!rc) rc = niah_run(rt, &sp, &o, &g, &cl);
    if (!rc) rc = niah_report(&o, rcfg, dev, &sp, &g, &cl);
    cells_free(&cl);
    hisa_close(rt);
    return rc;
}
