/* api.c: the public C API of runtime/hisa.h: validation, then dispatch to the cache state
 * machine (kvcache/) or to the backend chosen at open (rt->be). Every entry point checks all of
 * its input before it changes anything; library code never prints and never exits. */
#include <assert.h>
#include <stdio.h> /* snprintf only: the library never prints */
#include <string.h>

#include "hisa_dev.h"
#include "internal.h"

const char *hisa_version(void) { return "0.1.0"; }

const char *hisa_strerror(int err) {
    switch (err) {
    case HISA_OK: return "ok";
    case HISA_EINVAL: return "invalid argument";
    case HISA_ECONFIG: return "invalid configuration";
    case HISA_EOVERFLOW: return "configuration sizes overflow";
    case HISA_ENOMEM: return "cannot reserve the arena";
    case HISA_ENODEVICE: return "no supported CUDA device (or built without CUDA)";
    case HISA_EDEVICE: return "CUDA call failed; runtime poisoned";
    case HISA_EPOISONED: return "runtime poisoned by an earlier device failure";
    case HISA_ESEQ: return "unknown or closed sequence";
    case HISA_ESEQFULL: return "too many open sequences";
    case HISA_EPOOL: return "page pool exhausted";
    case HISA_ERANGE: return "layer, position or length out of range";
    case HISA_ELIMIT: return "over a configured maximum";
    case HISA_EFORMAT: return "key data in the wrong format";
    case HISA_EUNWRITTEN: return "selection over an unwritten key";
    case HISA_ESHARED: return "write into a page shared by several sequences";
    case HISA_EUNSUPPORTED: return "not supported on this device";
    default: return "unknown error";
    }
}

/* --- configuration, open, close ------------------------------------------------------------ */

static _Thread_local char g_open_detail[256]; /* hisa_open_detail: per thread, so race-free */

const char *hisa_open_detail(void) { return g_open_detail; }

int hisa_config_resolve(const hisa_config *cfg, hisa_config *resolved) {
    HISA__CHECK(cfg && resolved, HISA_EINVAL);
    const char *field, *rule;
    return hisa__config_check(cfg, resolved, &field, &rule);
}

int hisa_plan_compute(const hisa_config *cfg, hisa_plan *plan) {
    HISA__CHECK(cfg && plan, HISA_EINVAL);
    hisa_config resolved;
    const char *field = NULL, *rule = NULL;
    int err = hisa__config_check(cfg, &resolved, &field, &rule);
    if (!err) err = hisa__plan_build(&resolved, plan);
    if (err && field) { /* a rule broke: the plan says which (an overflow says it itself) */
        memset(plan, 0, sizeof *plan);
        plan->config = *cfg;
        plan->invalid_field = field;
        plan->invalid_rule = rule;
    }
    return err;
}

/* The runtime's cache view: its tables and data in the arena, its backend's operations. */
static void kv_bind(hisa_runtime *rt) {
    hisa__kv *kv = &rt->kv;
    const hisa__geom *g = &rt->g;
    *kv = (hisa__kv){.n_layers = (int32_t)g->n_layers, .n_pages = (int32_t)g->n_pages,
                     .block_size = (int32_t)g->block_size, .key_format = (int32_t)g->key_format,
                     .payload_bytes = (int32_t)g->payload_bytes, .max_seqs = (int32_t)g->max_seqs,
                     .max_context = (int32_t)g->max_context, .pages_per_seq = (int32_t)g->pages_per_seq,
                     .mask_words = (int32_t)g->mask_words, .page_bytes = g->page_bytes,
                     .seq_len = rt->r.seq_len, .seq_is_open = rt->r.seq_is_open, .page_table = rt->r.page_table,
                     .free_pages = rt->r.free_pages, .free_seqs = rt->r.free_seqs, .page_refs = rt->r.page_refs,
                     .keys = rt->r.keys,
                     .means = rt->r.block_means, .masks = rt->r.block_masks, .sums = rt->r.block_sums,
                     .sum_pages = rt->r.sum_pages, .payload = rt->r.payload, .ops = rt->be->kv_ops, .be = rt};
}

static int open_fail(int err, const char *what) {
    if (!g_open_detail[0]) snprintf(g_open_detail, sizeof g_open_detail, "%s", what);
    return err;
}

int hisa_open(hisa_runtime **out, const hisa_config *cfg, const hisa_memory *mem) {
    g_open_detail[0] = 0;
    HISA__CHECK(out && cfg, HISA_EINVAL);
    hisa_plan plan;
    int err = hisa_plan_compute(cfg, &plan);
    if (err) return open_fail(err, plan.invalid_rule ? plan.invalid_rule : "invalid configuration");
    const hisa__backend *be = plan.config.device == HISA_DEVICE_CPU ? &hisa__cpu_backend : &hisa__cuda_backend;
    hisa_k_device dev = {.ordinal = plan.config.device - 1};
    err = be->probe(plan.config.device, &dev, g_open_detail, sizeof g_open_detail);
    if (err) return open_fail(err, "no such device");
    hisa__arena arena;
    void *slots[HISA__REGION_COUNT];
    hisa__arena_region rows[HISA__REGION_COUNT];
    for (int32_t i = 0; i < plan.n_regions; i++)
        rows[i] = (hisa__arena_region){plan.regions[i].name, plan.regions[i].offset, plan.regions[i].bytes,
                                       plan.regions[i].align, plan.regions[i].on_device};
    uint64_t bytes[2] = {plan.host_bytes, plan.device_bytes};
    void *const base[2] = {mem ? mem->host_base : NULL, mem ? mem->device_base : NULL};
    const uint64_t have[2] = {mem ? mem->host_bytes : 0, mem ? mem->device_bytes : 0};
    if (hisa__arena_open(&arena, be->mem, bytes, base, have, rows, plan.n_regions, slots))
        return open_fail(HISA_ENOMEM, "cannot reserve (or adopt) the planned memory");
    hisa_runtime *rt = slots[0]; /* the runtime lives in its own host arena (region 0) */
    _Static_assert(offsetof(hisa__regions, runtime) == 0, "the runtime is region 0");
    memcpy(&rt->r, slots, sizeof rt->r);
    rt->plan = plan;
    rt->arena = arena;
    rt->be = be;
    rt->dev = dev;
    hisa__geom_from_config(&plan.config, &rt->g);
    kv_bind(rt);
    err = be->start(rt);
    if (err) {
        if (!g_open_detail[0]) snprintf(g_open_detail, sizeof g_open_detail, "%s", rt->error_detail);
        hisa__arena_release(arena);
        return err;
    }
    hisa__kv_init(&rt->kv);
    hisa__arena_seal(&rt->arena);
    *out = rt;
    return HISA_OK;
}

void hisa_close(hisa_runtime *rt) {
    if (!rt) return;
    if (!rt->poisoned) (void)rt->be->sync(rt);
    hisa__arena arena = rt->arena; /* rt itself is inside the arena being released */
    hisa__arena_release(arena);
}

const hisa_config *hisa_get_config(const hisa_runtime *rt) { return rt ? &rt->plan.config : NULL; }
const hisa_plan *hisa_get_plan(const hisa_runtime *rt) { return rt ? &rt->plan : NULL; }
const char *hisa_error_detail(const hisa_runtime *rt) { return rt ? rt->error_detail : ""; }

int hisa__device_failed(hisa_runtime *rt, const char *stmt, const char *file, int line, const char *msg) {
    assert(rt && stmt && file);
    if (!rt->poisoned) /* keep the first failure: later ones are usually its echo */
        snprintf(rt->error_detail, sizeof rt->error_detail, "%s at %s:%d: %s", stmt, file, line, msg ? msg : "");
    rt->poisoned = 1;
    return HISA_EDEVICE;
}

#define HISA__LIVE(rt)                                \
    do {                                              \
        HISA__CHECK((rt) != NULL, HISA_EINVAL);       \
        HISA__CHECK(!(rt)->poisoned, HISA_EPOISONED); \
    } while (0)

int hisa_set_stream(hisa_runtime *rt, void *cuda_stream) {
    HISA__LIVE(rt);
    rt->stream = hisa__is_cuda(rt) ? cuda_stream : NULL;
    return HISA_OK;
}

int hisa_sync(hisa_runtime *rt) {
    HISA__LIVE(rt);
    return rt->be->sync(rt);
}

/* --- sequences ------------------------------------------------------------------------------ */

int hisa_seq_open(hisa_runtime *rt, int32_t *seq_out) {
    HISA__LIVE(rt);
    HISA__CHECK(seq_out != NULL, HISA_EINVAL);
    HISA__CHECK(rt->kv.n_free_seqs > 0, HISA_ESEQFULL);
    return hisa__kv_seq_open(&rt->kv, seq_out);
}

int hisa_seq_close(hisa_runtime *rt, int32_t seq) {
    HISA__LIVE(rt);
    HISA__CHECK(hisa__seq_valid(rt, seq), HISA_ESEQ);
    return hisa__kv_seq_close(&rt->kv, seq);
}

int hisa_seq_extend(hisa_runtime *rt, int32_t seq, int32_t n) {
    HISA__LIVE(rt);
    HISA__CHECK(hisa__seq_valid(rt, seq), HISA_ESEQ);
    HISA__CHECK(n >= 0, HISA_EINVAL);
    int64_t new_len = (int64_t)rt->kv.seq_len[seq] + n;
    HISA__CHECK(new_len <= rt->g.max_context, HISA_ELIMIT);
    HISA__CHECK(hisa__kv_pages_needed(&rt->kv, seq, new_len) <= rt->kv.n_free_pages, HISA_EPOOL);
    return hisa__kv_seq_extend(&rt->kv, seq, n);
}

int hisa_seq_truncate(hisa_runtime *rt, int32_t seq, int32_t len) {
    HISA__LIVE(rt);
    HISA__CHECK(hisa__seq_valid(rt, seq), HISA_ESEQ);
    HISA__CHECK(len >= 0 && len <= rt->kv.seq_len[seq], HISA_ERANGE);
    HISA__CHECK(hisa__kv_truncate_pages(&rt->kv, seq, len) <= rt->kv.n_free_pages, HISA_EPOOL);
    return hisa__kv_seq_truncate(&rt->kv, seq, len);
}

int hisa_seq_fork(hisa_runtime *rt, int32_t parent, int32_t len, int32_t *child_out) {
    HISA__LIVE(rt);
    HISA__CHECK(child_out != NULL, HISA_EINVAL);
    HISA__CHECK(hisa__seq_valid(rt, parent), HISA_ESEQ);
    HISA__CHECK(len >= 0 && len <= rt->kv.seq_len[parent], HISA_ERANGE);
    HISA__CHECK(rt->kv.n_free_seqs > 0, HISA_ESEQFULL);
    HISA__CHECK((len % rt->kv.block_size ? 1 : 0) <= rt->kv.n_free_pages, HISA_EPOOL);
    return hisa__kv_seq_fork(&rt->kv, parent, len, child_out);
}

int hisa_seq_length(const hisa_runtime *rt, int32_t seq, int32_t *len_out) {
    HISA__CHECK(rt && len_out, HISA_EINVAL);
    HISA__CHECK(hisa__seq_valid(rt, seq), HISA_ESEQ);
    *len_out = rt->kv.seq_len[seq];
    return HISA_OK;
}

int hisa_seq_pages(const hisa_runtime *rt, int32_t seq, int32_t *pages_out, int32_t pages_max,
                   int32_t *n_pages_out) {
    HISA__CHECK(rt && pages_out && n_pages_out, HISA_EINVAL);
    HISA__CHECK(hisa__seq_valid(rt, seq), HISA_ESEQ);
    int32_t n = hisa__blocks_of(rt->kv.seq_len[seq], rt->kv.block_size);
    HISA__CHECK(n <= pages_max, HISA_ELIMIT);
    memcpy(pages_out, hisa__kv_pages(&rt->kv, seq), (size_t)n * sizeof(int32_t));
    *n_pages_out = n;
    return HISA_OK;
}

/* --- writes --------------------------------------------------------------------------------- */

/* The batch shape's own rules: live, distinct sequences; positions inside them. */
static int write_batch_validate(const hisa_runtime *rt, const hisa_write *req) {
    HISA__CHECK(req->n_tokens <= rt->g.max_batch, HISA_ELIMIT);
    HISA__CHECK(req->seq_ids != NULL, HISA_EINVAL);
    for (int32_t i = 0; i < req->n_tokens; i++) {
        int32_t seq = req->seq_ids[i];
        HISA__CHECK(hisa__seq_valid(rt, seq), HISA_ESEQ);
        int32_t len = rt->kv.seq_len[seq];
        if (req->positions)
            HISA__CHECK(req->positions[i] >= 0 && req->positions[i] < len, HISA_ERANGE);
        else
            HISA__CHECK(len >= 1, HISA_ERANGE);
        for (int32_t j = 0; j < i; j++) HISA__CHECK(req->seq_ids[j] != seq, HISA_EINVAL);
    }
    for (int32_t i = 0; i < req->n_tokens; i++) { /* shared pages are read-only */
        int32_t seq = req->seq_ids[i], pos = req->positions ? req->positions[i] : rt->kv.seq_len[seq] - 1;
        HISA__CHECK(!hisa__kv_shared(&rt->kv, hisa__kv_pages(&rt->kv, seq)[pos / rt->kv.block_size]), HISA_ESHARED);
    }
    return HISA_OK;
}

/* Validate a write completely before anything is stored; range_seq < 0: the batch shape. */
static int write_validate(const hisa_runtime *rt, const hisa_write *req, int32_t range_seq, int32_t pos0) {
    HISA__CHECK(req != NULL, HISA_EINVAL);
    HISA__CHECK(req->layer >= 0 && req->layer < rt->g.n_layers, HISA_ERANGE);
    HISA__CHECK(req->n_tokens >= 1, HISA_EINVAL);
    HISA__CHECK((req->keys != NULL) + (req->keys_bf16 != NULL) + (req->codes != NULL) == 1, HISA_EINVAL);
    HISA__CHECK(!req->codes || rt->g.key_format == HISA_KEY_FP8, HISA_EFORMAT);
    HISA__CHECK(!req->codes || req->scales, HISA_EINVAL);
    HISA__CHECK(!req->payload || rt->g.payload_bytes > 0, HISA_EINVAL);
    HISA__CHECK((req->flags & ~HISA_HOST_IO) == 0, HISA_EINVAL);
    if (range_seq < 0) {
        int err = write_batch_validate(rt, req);
        if (err) return err;
    } else {
        HISA__CHECK(req->n_tokens <= rt->g.max_prefill, HISA_ELIMIT);
        HISA__CHECK(pos0 >= 0 && (int64_t)pos0 + req->n_tokens <= rt->kv.seq_len[range_seq], HISA_ERANGE);
        int32_t B = rt->kv.block_size;
        for (int32_t b = pos0 / B; b <= (pos0 + req->n_tokens - 1) / B; b++)
            HISA__CHECK(!hisa__kv_shared(&rt->kv, hisa__kv_pages(&rt->kv, range_seq)[b]), HISA_ESHARED);
    }
    /* Scales must be positive: the kernels apply them after the ReLU (SPEC). Checkable only
     * where they are in host memory. */
    if (req->codes && (!hisa__is_cuda(rt) || (req->flags & HISA_HOST_IO)))
        for (int32_t i = 0; i < req->n_tokens; i++)
            HISA__CHECK(req->scales[i] > 0.0f && req->scales[i] < 3.0e38f, HISA_EINVAL);
    return HISA_OK;
}

int hisa_write_keys(hisa_runtime *rt, const hisa_write *req) {
    HISA__LIVE(rt);
    int err = write_validate(rt, req, -1, -1);
    return err ? err : rt->be->write(rt, req, -1, -1);
}

int hisa_write_range(hisa_runtime *rt, int32_t seq, int32_t pos0, const hisa_write *req) {
    HISA__LIVE(rt);
    HISA__CHECK(hisa__seq_valid(rt, seq), HISA_ESEQ);
    int err = write_validate(rt, req, seq, pos0);
    return err ? err : rt->be->write(rt, req, seq, pos0);
}

/* --- selection ------------------------------------------------------------------------------ */

/* CPU only (CUDA cannot check without a sync): every position <= t must be written. */
static int check_written(const hisa_runtime *rt, int32_t layer, int32_t seq, int32_t t) {
    if (hisa__is_cuda(rt)) return HISA_OK;
    for (int32_t s = 0; s <= t; s++)
        HISA__CHECK(hisa__kv_written(&rt->kv, layer, seq, s), HISA_EUNWRITTEN);
    return HISA_OK;
}

static int select_common(const hisa_runtime *rt, int32_t layer, hisa_mode mode, const void *q, int32_t q_format,
                         const float *w, const int32_t *out, uint32_t flags) {
    HISA__CHECK(layer >= 0 && layer < rt->g.n_layers, HISA_ERANGE);
    HISA__CHECK(mode == HISA_MODE_HISA || mode == HISA_MODE_FLAT, HISA_EINVAL);
    HISA__CHECK(q && w && out, HISA_EINVAL);
    HISA__CHECK(q_format >= HISA_Q_F32 && q_format <= HISA_Q_FP8, HISA_EINVAL);
    HISA__CHECK((flags & ~(HISA_HOST_IO | HISA_SLOTS)) == 0, HISA_EINVAL);
    return HISA_OK;
}

int hisa_select_decode(hisa_runtime *rt, const hisa_decode *req) {
    HISA__LIVE(rt);
    HISA__CHECK(req != NULL, HISA_EINVAL);
    int err = select_common(rt, req->layer, req->mode, req->q, req->q_format, req->w, req->out, req->flags);
    if (err) return err;
    HISA__CHECK(req->n_seqs >= 1 && req->seq_ids, HISA_EINVAL);
    HISA__CHECK(req->next_n >= 0 && req->next_n <= HISA_NEXT_N_MAX, HISA_EINVAL); /* 0 means 1 */
    HISA__CHECK(req->n_seqs <= rt->g.max_batch, HISA_ELIMIT);
    for (int32_t i = 0; i < req->n_seqs; i++) {
        int32_t seq = req->seq_ids[i];
        HISA__CHECK(hisa__seq_valid(rt, seq), HISA_ESEQ);
        HISA__CHECK(rt->kv.seq_len[seq] >= (req->next_n > 1 ? req->next_n : 1), HISA_ERANGE);
        if ((err = check_written(rt, req->layer, seq, rt->kv.seq_len[seq] - 1))) return err;
    }
    return rt->be->decode(rt, req);
}

/* Chunk a before chunk b: by sequence, then by first position. */
static int chunk_before(const hisa_prefill *req, int32_t a, int32_t b) {
    return req->seqs[a] != req->seqs[b] ? req->seqs[a] < req->seqs[b] : req->t0s[a] < req->t0s[b];
}

/* Chunks of one sequence are disjoint: sort the chunk indices (heap sort in the arena's
 * chunk_order, no allocation, O(n log n)) and compare neighbours. */
static int chunks_disjoint(const hisa_runtime *rt, const hisa_prefill *req) {
    int32_t n = req->n_chunks, *o = rt->r.chunk_order;
    for (int32_t i = 0; i < n; i++) o[i] = i;
    for (int32_t end = n; end > 1; end--) {
        for (int32_t start = (end == n ? n / 2 - 1 : 0); start >= 0; start--) { /* heapify once, then sift the root */
            for (int32_t root = start, child; (child = 2 * root + 1) < end; root = child) {
                if (child + 1 < end && chunk_before(req, o[child], o[child + 1])) child++;
                if (!chunk_before(req, o[root], o[child])) break;
                int32_t t = o[root];
                o[root] = o[child];
                o[child] = t;
            }
        }
        int32_t t = o[0];
        o[0] = o[end - 1];
        o[end - 1] = t;
    }
    for (int32_t i = 1; i < n; i++)
        HISA__CHECK(req->seqs[o[i]] != req->seqs[o[i - 1]] || req->t0s[o[i - 1]] + req->n_qs[o[i - 1]] <= req->t0s[o[i]],
                    HISA_EINVAL);
    return HISA_OK;
}

/* Every chunk live and inside its sequence; chunks of one sequence disjoint; the total bounded. */
static int chunks_validate(const hisa_runtime *rt, const hisa_prefill *req) {
    HISA__CHECK(req->n_chunks >= 0, HISA_EINVAL);
    HISA__CHECK(!req->n_chunks || (req->seqs && req->t0s && req->n_qs), HISA_EINVAL);
    int32_t n_chunks = hisa__prefill_chunks(req);
    HISA__CHECK(n_chunks <= rt->g.max_prefill, HISA_ELIMIT); /* each chunk holds a query */
    int64_t total = 0;
    for (int32_t c = 0; c < n_chunks; c++) {
        int32_t seq, t0, n_q;
        hisa__prefill_chunk(req, c, &seq, &t0, &n_q);
        HISA__CHECK(n_q >= 1, HISA_EINVAL);
        total += n_q;
        HISA__CHECK(total <= rt->g.max_prefill, HISA_ELIMIT);
        HISA__CHECK(hisa__seq_valid(rt, seq), HISA_ESEQ);
        HISA__CHECK(t0 >= 0 && (int64_t)t0 + n_q <= rt->kv.seq_len[seq], HISA_ERANGE);
    }
    return req->n_chunks > 1 ? chunks_disjoint(rt, req) : HISA_OK; /* a position is one query of a call */
}

static int prefill_run(hisa_runtime *rt, const hisa_prefill *req, uint32_t dev_flags) {
    HISA__LIVE(rt);
    HISA__CHECK(req != NULL, HISA_EINVAL);
    int err = select_common(rt, req->layer, req->mode, req->q, req->q_format, req->w, req->out, req->flags);
    if (!err) err = chunks_validate(rt, req);
    for (int32_t c = 0; !err && c < hisa__prefill_chunks(req); c++) {
        int32_t seq, t0, n_q;
        hisa__prefill_chunk(req, c, &seq, &t0, &n_q);
        err = check_written(rt, req->layer, seq, t0 + n_q - 1);
    }
    return err ? err : rt->be->prefill(rt, req, dev_flags);
}

int hisa_select_prefill(hisa_runtime *rt, const hisa_prefill *req) { return prefill_run(rt, req, 0); }

int hisa_dev_prefill(hisa_runtime *rt, const hisa_prefill *req, uint32_t dev_flags) {
    HISA__LIVE(rt);
    HISA__CHECK(hisa__is_cuda(rt), HISA_ENODEVICE);
    HISA__CHECK(req && (req->flags & HISA_HOST_IO) == 0, HISA_EINVAL);
    HISA__CHECK((dev_flags & ~(HISA_DEV_SCORING_ONLY | HISA_DEV_VARIANT_ALT)) == 0, HISA_EINVAL);
    /* the portable prefill (the decode kernels) has one exact arithmetic, no operand variants */
    HISA__CHECK(!(dev_flags & HISA_DEV_VARIANT_ALT) || !rt->dev.all_portable, HISA_EINVAL);
    return prefill_run(rt, req, dev_flags);
}

/* --- memory --------------------------------------------------------------------------------- */

int hisa_payload_pool(hisa_runtime *rt, int32_t layer, void **base_out) {
    HISA__LIVE(rt);
    HISA__CHECK(base_out != NULL, HISA_EINVAL);
    HISA__CHECK(layer >= 0 && layer < rt->g.n_layers, HISA_ERANGE);
    HISA__CHECK(rt->g.payload_bytes > 0, HISA_EINVAL);
    *base_out = rt->r.payload + hisa__payload_offset(layer, rt->kv.n_pages, rt->kv.block_size, 0, rt->kv.payload_bytes);
    return HISA_OK;
}

int hisa_memory_report_get(const hisa_runtime *rt, hisa_memory_report *out) {
    HISA__CHECK(rt && out, HISA_EINVAL);
    const hisa__kv *kv = &rt->kv;
    memset(out, 0, sizeof *out);
    out->device_bytes = rt->arena.bytes[HISA__ARENA_DEVICE];
    out->host_bytes = rt->arena.bytes[HISA__ARENA_HOST];
    out->pages_total = kv->n_pages;
    out->pages_free = kv->n_free_pages;
    out->pages_used = out->pages_total - out->pages_free;
    out->pages_high_water = kv->pages_high_water;
    for (int32_t p = 0; p < kv->n_pages; p++) out->pages_shared += kv->page_refs[p] > 1;
    out->seqs_open = kv->max_seqs - kv->n_free_seqs;
    out->seqs_high_water = kv->seqs_high_water;
    for (int32_t s = 0; s < kv->max_seqs; s++)
        if (kv->seq_is_open[s]) out->tokens += kv->seq_len[s];
    out->poisoned = rt->poisoned;
    return HISA_OK;
}
