/* plan.c: the configuration's defaults and rules, the geometry derived from it, and the plan.
 *
 * Every rule of the configuration is checked here and nowhere else, once, and a failure names the
 * field and the rule it broke (hisa_plan.invalid_field / invalid_rule), so a tool can tell the
 * user which option to change and why. The plan is a pure function of the configuration. */
#include <string.h>

#include "internal.h"

static int is_pow2(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

typedef struct rule_ctx {
    const char **field, **rule;
} rule_ctx;

static int broke(rule_ctx *r, const char *field, const char *rule) {
    *r->field = field;
    *r->rule = rule;
    return HISA_ECONFIG;
}

/* 0 takes the default; then lo <= value <= hi. */
#define HISA__RANGE(c, r, name, def, lo, hi, rule)                      \
    do {                                                                \
        if ((c)->name == 0) (c)->name = (def);                          \
        if ((c)->name < (lo) || (c)->name > (hi)) return broke((r), #name, (rule)); \
    } while (0)

static int check_shape(hisa_config *c, rule_ctx *r) {
    HISA__RANGE(c, r, n_layers, 1, 1, HISA_LAYERS_MAX, "1 <= n_layers <= 256");
    HISA__RANGE(c, r, n_heads, 64, 1, HISA_HEADS_MAX, "1 <= n_heads <= 128");
    HISA__RANGE(c, r, head_dim, HISA_D, HISA_D, HISA_D, "head_dim = 128");
    HISA__RANGE(c, r, block_size, 128, HISA_BLOCK_MIN, HISA_BLOCK_MAX, "block_size is 32, 64, 128 or 256");
    if (!is_pow2(c->block_size)) return broke(r, "block_size", "block_size is 32, 64, 128 or 256");
    HISA__RANGE(c, r, top_blocks, 64, 2, HISA_TOP_BLOCKS_MAX, "2 <= top_blocks <= 1024");
    HISA__RANGE(c, r, topk, 2048, 1, HISA_TOPK_MAX, "1 <= topk <= 16384");
    /* SPEC: the m kept blocks always hold at least k candidates. */
    if ((int64_t)(c->top_blocks - 1) * c->block_size < c->topk)
        return broke(r, "top_blocks", "(top_blocks - 1) * block_size >= topk");
    HISA__RANGE(c, r, key_format, HISA_KEY_FP8, HISA_KEY_FP8, HISA_KEY_BF16, "key_format is fp8 (1) or bf16 (2)");
    if (c->payload_bytes < 0 || c->payload_bytes > HISA_PAYLOAD_MAX)
        return broke(r, "payload_bytes", "0 <= payload_bytes <= 65536");
    return HISA_OK;
}

static int check_capacity(hisa_config *c, rule_ctx *r) {
    HISA__RANGE(c, r, max_seqs, 8, 1, HISA_SEQS_MAX, "1 <= max_seqs <= 65536");
    HISA__RANGE(c, r, max_context, 131072, 1, HISA_CONTEXT_MAX, "1 <= max_context <= 16777216");
    int64_t pages_per_seq = ((int64_t)c->max_context + c->block_size - 1) / c->block_size;
    if (c->n_pages == 0) {
        int64_t want = pages_per_seq * c->max_seqs;
        c->n_pages = want > HISA_PAGES_MAX ? -1 : (int32_t)want; /* too many: say n_pages */
    }
    HISA__RANGE(c, r, n_pages, 1, 1, HISA_PAGES_MAX, "1 <= n_pages <= 16777216 (default max_seqs * ceil(max_context / block_size))");
    if ((int64_t)c->n_pages * c->block_size > ((int64_t)1 << 31)) /* slots page * B + off are int32 */
        return broke(r, "n_pages", "n_pages * block_size <= 2^31 (slots are int32)");
    HISA__RANGE(c, r, max_batch, c->max_seqs < HISA_BATCH_MAX ? c->max_seqs : HISA_BATCH_MAX, 1, HISA_BATCH_MAX,
                "1 <= max_batch <= 256 (default min(max_seqs, 256))");
    HISA__RANGE(c, r, max_prefill_queries, c->max_context < 1024 ? c->max_context : 1024, 1, HISA_PREFILL_MAX,
                "1 <= max_prefill_queries <= 16384 (default min(max_context, 1024))");
    if (c->device < 0) return broke(r, "device", "device >= 0 (0: CPU, i + 1: CUDA device i)");
    if (c->kernels < HISA_KERNELS_AUTO || c->kernels > HISA_KERNELS_HOPPER)
        return broke(r, "kernels", "kernels is 0 (auto), 1 (portable) or 2 (hopper)");
    if (c->fp8_mma != HISA_FP8_MMA_EXACT && c->fp8_mma != HISA_FP8_MMA_NATIVE)
        return broke(r, "fp8_mma", "fp8_mma is 0 (exact) or 1 (native)");
    return HISA_OK;
}
#undef HISA__RANGE

int hisa__config_check(const hisa_config *in, hisa_config *out, const char **field, const char **rule) {
    assert(in && out && field && rule);
    hisa_config c = *in;
    rule_ctx r = {field, rule};
    *field = *rule = NULL;
    int err = check_shape(&c, &r);
    if (!err) err = check_capacity(&c, &r);
    if (err) return err;
    *out = c;
    assert(out->n_pages >= 1 && is_pow2(out->block_size));
    return HISA_OK;
}

void hisa__geom_from_config(const hisa_config *c, hisa__geom *g) {
    assert(c && g && c->block_size >= HISA_BLOCK_MIN);
    memset(g, 0, sizeof *g);
    g->n_layers = c->n_layers;
    g->n_heads = c->n_heads;
    g->block_size = c->block_size;
    g->top_blocks = c->top_blocks;
    g->topk = c->topk;
    g->key_format = c->key_format;
    g->payload_bytes = c->payload_bytes;
    g->max_seqs = c->max_seqs;
    g->max_context = c->max_context;
    g->n_pages = c->n_pages;
    g->max_batch = c->max_batch;
    g->max_prefill = c->max_prefill_queries;
    g->cuda = c->device != HISA_DEVICE_CPU;
    g->cpu = !g->cuda;
    g->pages_per_seq = hisa__blocks_of(c->max_context, c->block_size);
    g->page_bytes = hisa__page_bytes(c->block_size, c->key_format);
    g->mask_words = hisa__mask_words(c->block_size);
    g->rows = g->max_batch * HISA_NEXT_N_MAX > g->max_prefill ? g->max_batch * HISA_NEXT_N_MAX : g->max_prefill;
    assert(g->pages_per_seq >= 1 && g->mask_words >= 1);
}

int64_t hisa__sel_work_words(const hisa__geom *g) {
    hisa_k_scratch_sizes s = hisa_k_scratch_bytes(g->rows, g->max_context, g->pages_per_seq, g->top_blocks);
    return (int64_t)((s.work_bytes + 3) / 4);
}

int hisa__plan_build(const hisa_config *resolved, hisa_plan *plan) {
    assert(resolved && plan);
    hisa__geom geom, *g = &geom;
    hisa__geom_from_config(resolved, g);
    memset(plan, 0, sizeof *plan);
    plan->config = *resolved;
    hisa__arena_region rows[HISA__REGION_COUNT];
    int32_t n = 0;
    int overflow = 0;
#define HISA__PLAN_ROW(rname, type, sp, count)                                               \
    do {                                                                                       \
        int64_t cnt = (int64_t)(count);                                                        \
        rows[n].name = #rname;                                                                 \
        rows[n].space = HISA__ARENA_##sp;                                                   \
        rows[n].align = rows[n].space == HISA__ARENA_DEVICE ? HISA_ALIGN : 64;                 \
        overflow |= cnt < 0 || __builtin_mul_overflow((uint64_t)cnt, sizeof(type), &rows[n].bytes); \
        n++;                                                                                   \
    } while (0);
    HISA__REGIONS(HISA__PLAN_ROW)
#undef HISA__PLAN_ROW
    assert(n == HISA__REGION_COUNT);
    if (hisa__arena_plan(rows, n, overflow, &plan->device_bytes, &plan->host_bytes) != HISA__ARENA_OK) {
        plan->invalid_field = "max_context";
        plan->invalid_rule = "the plan's byte counts fit 64 bits";
        return HISA_EOVERFLOW;
    }
    plan->n_regions = n;
    for (int32_t i = 0; i < n; i++)
        plan->regions[i] = (hisa_region){rows[i].name, rows[i].offset, rows[i].bytes, rows[i].align,
                                         rows[i].space == HISA__ARENA_DEVICE};
    return HISA_OK;
}
