/* mem.c: `hisa mem`, the memory plan of a configuration region by region, and how many
 * sequences of a context fit in a GPU. Nothing is reserved: it is hisa_plan_compute alone, the
 * same arithmetic hisa_open uses, so the numbers are exact. */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "tools.h"

static void mem_help(void) {
    printf(
        "usage: hisa mem [options] [--gpu-mem SIZE] [--json]\n"
        "\n"
        "The memory plan of a configuration (hisa_plan_compute: what hisa_open reserves, in\n"
        "two reservations, device and host), region by region with offsets and totals. Unset\n"
        "options take the library's defaults; a value is taken as given (0 is refused where it\n"
        "means nothing) and one out of range exits 2 with the range. The live figures of a\n"
        "running pool (pages used / free / high-water) come from `hisa stream --profile`.\n"
        "\n"
        "options:\n"
        "  --context N          max_context, tokens per sequence (default 131072), 1..16M\n"
        "                       (HISA_MAX_CONTEXT); K, M ok\n"
        "  --seqs N             max_seqs, sequences open at once (default 8), 1..65536\n"
        "  --layers N           indexer layers sharing one page table (default 1), 1..256\n"
        "  --heads H            indexer heads (default 64), 1..128 (HISA_MAX_HEADS)\n"
        "  --key-format F       fp8 (default) or bf16\n"
        "  --block-size B       32, 64, 128 (default), 256\n"
        "  --top-blocks M       (default 64), 2..1024; (M - 1) x B >= K must hold\n"
        "  --topk K             (default 2048), 1..16384 (HISA_MAX_TOPK)\n"
        "  --payload-bytes N    opaque bytes per token per layer, e.g. a latent KV (default 0,\n"
        "                       none), 0..65536\n"
        "  --pages N            pages in the pool (default seqs * ceil(context / B))\n"
        "  --max-batch N        sequences per decode call, 1..256 (HISA_MAX_BATCH; default\n"
        "                       min(seqs, 256))\n"
        "  --prefill-queries N  tokens per write_range / queries per prefill, 1..16384\n"
        "                       (HISA_MAX_PREFILL_QUERIES; default min(context, 1024))\n"
        "  --gpu-mem SIZE       e.g. 80G: the largest number of sequences of --context whose\n"
        "                       device reservation fits in SIZE bytes, with the pool sized to\n"
        "                       match; the table (and --json) then describe that configuration.\n"
        "                       Plans for CUDA unless --device cpu is given; --seqs and --pages\n"
        "                       are what it searches, so they cannot be given with it\n"
        "  --json               one JSON object instead of the table\n"
        "  --device D           plan for cpu, cuda or cuda:N (default: cuda:0 when available,\n"
        "                       else cpu; regions differ by backend)\n");
}

typedef struct mem_opts {
    int32_t context, seqs, payload_bytes, pages, max_batch, prefill_queries; /* 0: not given */
    uint64_t gpu_mem;
    int json;
    tool_cfg_opts c;
} mem_opts;

static void print_config_json(const hisa_config *c, const char *dev) {
    printf("\"device\": \"%s\", \"config\": {\"n_layers\": %d, \"n_heads\": %d, \"head_dim\": %d, "
           "\"block_size\": %d, \"top_blocks\": %d, \"topk\": %d, \"key_format\": \"%s\", "
           "\"payload_bytes\": %d, \"max_seqs\": %d, \"max_context\": %d, \"n_pages\": %d, "
           "\"max_batch\": %d, \"max_prefill_queries\": %d, \"kernels\": \"%s\", \"fp8_mma\": \"%s\"}",
           dev, c->n_layers, c->n_heads, c->head_dim, c->block_size, c->top_blocks, c->topk,
           tool_key_format_name(c->key_format), c->payload_bytes, c->max_seqs, c->max_context,
           c->n_pages, c->max_batch, c->max_prefill_queries,
           tool_kernels_name(c->kernels), tool_fp8_mma_name(c->fp8_mma));
}

/* The --gpu-mem answer: how many sequences fit, their plan, and the configuration rule that
 * stopped the search (NULL when memory did), in the command's terms. */
typedef struct mem_fit {
    int32_t seqs;
    hisa_plan plan;
    char limit[256];
} mem_fit;

/* The plan of base with seqs sequences (the pool follows them); 1 when its device reservation
 * fits in gpu_mem, 0 when not, -1 when a rule refuses it (the rule in fit->limit). */
static int fits(const hisa_config *base, int32_t seqs, uint64_t gpu_mem, hisa_plan *p,
                mem_fit *fit) {
    hisa_config c = *base;
    c.max_seqs = seqs;
    c.n_pages = 0;
    int err = hisa_plan_compute(&c, p);
    if (err) {
        tool_rule_text(p->invalid_rule ? p->invalid_rule : hisa_strerror(err), NULL, fit->limit,
                       sizeof fit->limit);
        return -1;
    }
    return p->device_bytes <= gpu_mem;
}

/* The largest max_seqs whose plan fits in gpu_mem device bytes (0 if none) into fit. */
static void fit_seqs(const hisa_config *base, uint64_t gpu_mem, mem_fit *fit) {
    int32_t lo = 0, hi = 1;
    hisa_plan p;
    for (;;) { /* doubling until hi does not fit */
        if (fits(base, hi, gpu_mem, &p, fit) != 1) break;
        lo = hi;
        fit->plan = p;
        if (hi > (1 << 29)) break;
        hi *= 2;
    }
    while (hi - lo > 1) { /* lo fits (or is 0); hi does not: bisect */
        int32_t mid = lo + (hi - lo) / 2;
        if (fits(base, mid, gpu_mem, &p, fit) == 1) lo = mid, fit->plan = p;
        else hi = mid;
    }
    fit->limit[0] = 0;
    if (hi == lo + 1) (void)fits(base, hi, gpu_mem, &p, fit); /* a rule that stops lo + 1 */
    fit->seqs = lo;
}

/* --- parse -------------------------------------------------------------------------------- */

/* Options into o. Returns tool_parse_opts's codes (-1: --help) or TOOL_EXIT_USAGE. */
static int mem_parse(int argc, char **argv, mem_opts *o) {
    assert(argc >= 1 && o);
    *o = (mem_opts){0};
    tool_opt opts[24];
    int n = 0;
    opts[n++] = (tool_opt){"context", TOOL_OPT_INT, &o->context, 1, HISA_MAX_CONTEXT,
                           "tokens per sequence, HISA_MAX_CONTEXT"};
    opts[n++] = (tool_opt){"seqs", TOOL_OPT_INT, &o->seqs, 1, INT32_MAX, "sequences"};
    opts[n++] = TOOL_OPT_LAYERS(&o->c.layers);
    opts[n++] = (tool_opt){"payload-bytes", TOOL_OPT_INT, &o->payload_bytes, 0, INT32_MAX,
                           "bytes per token per layer"};
    opts[n++] = (tool_opt){"pages", TOOL_OPT_INT, &o->pages, 1, INT32_MAX, "pages in the pool"};
    opts[n++] = (tool_opt){"max-batch", TOOL_OPT_INT, &o->max_batch, 1, HISA_MAX_BATCH,
                           "sequences per decode call, HISA_MAX_BATCH"};
    opts[n++] = (tool_opt){"prefill-queries", TOOL_OPT_INT, &o->prefill_queries, 1,
                           HISA_MAX_PREFILL_QUERIES,
                           "tokens per write_range, queries per prefill, HISA_MAX_PREFILL_QUERIES"};
    opts[n++] = (tool_opt){"gpu-mem", TOOL_OPT_SIZE, &o->gpu_mem, 1, 0, "device memory, e.g. 80G"};
    opts[n++] = (tool_opt){"json", TOOL_OPT_FLAG, &o->json, 0, 0, NULL};
    tool_cfg_opts_add(opts, &n, &o->c);
    assert(n <= (int)(sizeof opts / sizeof opts[0]));
    int rc = tool_parse_opts("mem", argc, argv, opts, n);
    if (rc) return rc;
    if (o->gpu_mem && (o->seqs || o->pages)) {
        fprintf(stderr,
                "hisa mem: --gpu-mem searches the number of sequences and sizes the pool to "
                "match; it cannot be given with %s\n",
                o->seqs ? "--seqs" : "--pages");
        return TOOL_EXIT_USAGE;
    }
    return 0;
}

/* The configuration of the options (0 = the library's default) and the device planned for.
 * With --gpu-mem, one sequence: the smallest configuration the search starts from. */
static int mem_configure(const mem_opts *o, hisa_config *cfg) {
    assert(o && cfg);
    *cfg = (hisa_config){0};
    int rc = tool_cfg_apply("mem", &o->c, cfg);
    if (rc) return rc;
    cfg->max_context = o->context;
    cfg->max_seqs = o->gpu_mem ? 1 : o->seqs;
    cfg->payload_bytes = o->payload_bytes;
    cfg->n_pages = o->pages;
    cfg->max_batch = o->max_batch;
    cfg->max_prefill_queries = o->prefill_queries;
    if (o->gpu_mem && !o->c.device) {
        cfg->device = HISA_DEVICE_CUDA(0); /* sizing a GPU: plan for the CUDA backend */
        return 0;
    }
    return tool_pick_device("mem", o->c.device, &cfg->device, NULL);
}

/* --- report ------------------------------------------------------------------------------- */

/* plan is what the table describes: with --gpu-mem the fitting configuration (or the one
 * sequence that does not fit). */
static void print_json(const mem_opts *o, const hisa_plan *plan, const char *dev,
                       const mem_fit *fit) {
    assert(o && plan && dev && fit);
    printf("{");
    print_config_json(&plan->config, dev);
    printf(", \"regions\": [");
    for (int32_t i = 0; i < plan->n_regions; i++) {
        const hisa_region *r = &plan->regions[i];
        printf("%s{\"name\": ", i ? ", " : "");
        tool_json_string(stdout, r->name);
        printf(", \"arena\": \"%s\", \"offset\": %llu, \"bytes\": %llu, \"align\": %u}",
               r->on_device ? "device" : "host", (unsigned long long)r->offset,
               (unsigned long long)r->bytes, r->align);
    }
    printf("], \"device_bytes\": %llu, \"host_bytes\": %llu",
           (unsigned long long)plan->device_bytes, (unsigned long long)plan->host_bytes);
    if (o->gpu_mem) {
        /* config and regions above are the fitting configuration (max_seqs = fit.max_seqs), or
         * the one sequence that does not fit (fits false) */
        printf(", \"fit\": {\"gpu_mem_bytes\": %llu, \"context\": %d, \"max_seqs\": %d, "
               "\"fits\": %s",
               (unsigned long long)o->gpu_mem, plan->config.max_context, fit->seqs,
               fit->seqs ? "true" : "false");
        if (fit->limit[0]) {
            printf(", \"limited_by\": ");
            tool_json_string(stdout, fit->limit);
        }
        printf("}");
    }
    printf("}\n");
}

/* The non-empty regions, device arena first; a count of the empty ones. */
static void print_regions(const hisa_plan *plan) {
    assert(plan);
    assert(plan->n_regions >= 0);
    char b1[32];
    printf("\n%-24s %-6s %14s %16s %12s %6s\n", "region", "arena", "offset", "bytes", "", "align");
    int32_t n_empty = 0;
    for (int pass = 0; pass < 2; pass++) {
        int on_device = pass == 0;
        for (int32_t i = 0; i < plan->n_regions; i++) {
            const hisa_region *r = &plan->regions[i];
            if (r->on_device != on_device) continue;
            /* Regions of the other backend (or of unused features) are planned empty. */
            if (r->bytes == 0) {
                n_empty++;
                continue;
            }
            printf("%-24s %-6s %14llu %16llu %12s %6u\n", r->name, on_device ? "device" : "host",
                   (unsigned long long)r->offset, (unsigned long long)r->bytes,
                   tool_fmt_bytes(r->bytes, b1, sizeof b1), r->align);
        }
    }
    if (n_empty)
        printf("(%d empty regions, of the other backend or unused features, not shown)\n",
               n_empty);
}

/* With --gpu-mem, before the table: what fits, and that the table is that configuration. */
static void print_fit(const mem_opts *o, const hisa_plan *plan, const mem_fit *fit) {
    assert(o && o->gpu_mem && plan && fit);
    char b1[32], b2[32];
    tool_fmt_bytes(o->gpu_mem, b1, sizeof b1);
    if (fit->seqs)
        printf("%s of device memory holds %d sequence%s of %d tokens; the plan below is that "
               "configuration (max_seqs %d, the pool sized to match)\n",
               b1, fit->seqs, fit->seqs == 1 ? "" : "s", plan->config.max_context, fit->seqs);
    else
        printf("not even one sequence of %d tokens fits in %s of device memory: it needs %s; "
               "the plan below is that one sequence (shorten --context or raise --gpu-mem)\n",
               plan->config.max_context, b1, tool_fmt_bytes(plan->device_bytes, b2, sizeof b2));
    if (fit->limit[0])
        printf("  (bounded by the configuration rule %s: one more sequence breaks it)\n",
               fit->limit);
}

static void print_text(const mem_opts *o, const hisa_plan *plan, const char *dev,
                       const mem_fit *fit) {
    assert(o && plan && dev && fit);
    const hisa_config *rcfg = &plan->config;
    char b1[32], b2[32];
    printf("hisa mem: plan for %s (nothing reserved)\n", dev);
    if (o->gpu_mem) print_fit(o, plan, fit);
    printf("config: %d layer%s, H=%d, B=%d, m=%d, k=%d, keys %s, payload %d B/token/layer,\n"
           "        %d sequence%s x %d tokens, %d pages, decode batch %d, prefill chunk %d\n",
           rcfg->n_layers, rcfg->n_layers == 1 ? "" : "s", rcfg->n_heads, rcfg->block_size,
           rcfg->top_blocks, rcfg->topk, tool_key_format_name(rcfg->key_format),
           rcfg->payload_bytes, rcfg->max_seqs, rcfg->max_seqs == 1 ? "" : "s",
           rcfg->max_context, rcfg->n_pages, rcfg->max_batch, rcfg->max_prefill_queries);
    print_regions(plan);
    printf("\ntotal: device %llu bytes (%s), host %llu bytes (%s)\n",
           (unsigned long long)plan->device_bytes,
           tool_fmt_bytes(plan->device_bytes, b1, sizeof b1),
           (unsigned long long)plan->host_bytes, tool_fmt_bytes(plan->host_bytes, b2, sizeof b2));
    if (rcfg->max_seqs > 0)
        printf("per sequence slot: %s device (total / %d sequence%s)\n",
               tool_fmt_bytes(plan->device_bytes / (uint64_t)rcfg->max_seqs, b1, sizeof b1),
               rcfg->max_seqs, rcfg->max_seqs == 1 ? "" : "s");
}

int hisa_cmd_mem(int argc, char **argv) {
    mem_opts o;
    int rc = mem_parse(argc, argv, &o);
    if (rc < 0) {
        mem_help();
        return TOOL_EXIT_OK;
    }
    if (rc) return rc;
    hisa_config cfg;
    rc = mem_configure(&o, &cfg);
    if (rc) return rc;
    hisa_plan plan;
    int err = hisa_plan_compute(&cfg, &plan);
    if (err && plan.invalid_field) return tool_config_error("mem", &plan, &cfg, NULL);
    if (err) return tool_lib_error("mem", "configuration", err, NULL);
    char dev[32];
    tool_device_name(plan.config.device, dev, sizeof dev);
    mem_fit fit = {0};
    if (o.gpu_mem) fit_seqs(&cfg, o.gpu_mem, &fit);
    const hisa_plan *shown = fit.seqs ? &fit.plan : &plan;
    if (o.json) print_json(&o, shown, dev, &fit);
    else print_text(&o, shown, dev, &fit);
    return TOOL_EXIT_OK;
}
