/* api.c: the public C API of runtime/hisa.h: validation, then dispatch to the cache state
 * machine (kvcache/), the CPU reference (cpu_backend.c) or the CUDA glue (cuda_backend.c).
 * Every entry point checks all of its input before it changes anything; library code never
 * prints and never exits. */
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
    case HISA_ENODEVICE: return "no CUDA device (or built without CUDA)";
    case HISA_EDEVICE: return "CUDA call failed; runtime poisoned";
    case HISA_EPOISONED: return "runtime poisoned by an earlier device failure";
    case HISA_ESEQ: return "unknown or closed sequence";
    case HISA_ESEQFULL: return "too many open sequences";
    case HISA_EPOOL: return "page pool exhausted";
    case HISA_ERANGE: return "layer, position or length out of range";
    case HISA_ELIMIT: return "over a configured maximum";
    case HISA_EFORMAT: return "key data in the wrong format";
    case HISA_EUNWRITTEN: return "selection over an unwritten key";
    default: return "unknown error";
    }
}

int hisa_config_resolve(const hisa_config *cfg, hisa_config *resolved) {
    HISA__CHECK(cfg && resolved, HISA_EINVAL);
    const char *field;
    return hisa__config_resolve(cfg, resolved, &field);
}

int hisa_plan_compute(const hisa_config *cfg, hisa_plan *plan) {
    HISA__CHECK(cfg && plan, HISA_EINVAL);
    hisa_config resolved;
    const char *field = NULL;
    int err = hisa__config_resolve(cfg, &resolved, &field);
    if (!err) err = hisa__plan_build(&resolved, plan);
    if (err) {
        memset(plan, 0, sizeof *plan);
        plan->config = *cfg;
        plan->invalid_field = field ? field : "max_context";
    }
    return err;
}

int hisa_open(hisa_runtime **out, const hisa_config *cfg, const hisa_memory *mem) {
    HISA__CHECK(out && cfg, HISA_EINVAL);
    hisa_plan plan;
    int err = hisa_plan_compute(cfg, &plan);
    if (err) return err;
    int32_t is_cuda = plan.config.device != HISA_DEVICE_CPU, sm_count = 0;
    if (is_cuda) {
        err = hisa__cuda_probe(plan.config.device - 1, &sm_count);
        if (err) return err;
    }
    hisa__arena arena;
    hisa__regions regions;
    err = hisa__arena_open(&arena, &plan, mem, plan.config.device - 1, &regions);
    if (err) return err;
    hisa_runtime *rt = regions.runtime; /* the runtime lives in its own host arena */
    rt->plan = plan;
    rt->arena = arena;
    rt->r = regions;
    hisa__geom_from_config(&plan.config, &rt->g);
    rt->is_cuda = is_cuda;
    rt->cuda_ordinal = is_cuda ? plan.config.device - 1 : -1;
    rt->sm_count = sm_count;
    err = hisa__kv_init(rt);
    if (!err && is_cuda) err = hisa__cuda_after_open(rt);
    if (err) {
        hisa__arena_release(arena);
        return err;
    }
    hisa__arena_seal(&rt->arena);
    *out = rt;
    return HISA_OK;
}

void hisa_close(hisa_runtime *rt) {
    if (!rt) return;
    if (rt->is_cuda && !rt->poisoned) (void)hisa__cuda_sync(rt);
    hisa__arena arena = rt->arena; /* rt itself is inside the arena being released */
    hisa__arena_release(arena);
}

const hisa_config *hisa_get_config(const hisa_runtime *rt) { return rt ? &rt->plan.config : NULL; }
const hisa_plan *hisa_get_plan(const hisa_runtime *rt) { return rt ? &rt->plan : NULL; }
const char *hisa_error_detail(const hisa_runtime *rt) { return rt ? rt->error_detail : ""; }

int hisa__device_failed(hisa_runtime *rt, const char *stmt, const char *file, int line,
                        const char *msg) {
    assert(rt && stmt && file);
    if (!rt->poisoned) /* keep the first failure: later ones are usually its echo */
        snprintf(rt->error_detail, sizeof rt->error_detail, "%s at %s:%d: %s", stmt, file, line,
                 msg ? msg : "");
    rt->poisoned = 1;
    return HISA_EDEVICE;
}

#define HISA__LIVE(rt)                                   \
    do {                                                 \
        HISA__CHECK((rt) != NULL, HISA_EINVAL);          \
        HISA__CHECK(!(rt)->poisoned, HISA_EPOISONED);    \
    } while (0)

int hisa_set_stream(hisa_runtime *rt, void *cuda_stream) {
    HISA__LIVE(rt);
    rt->stream = rt->is_cuda ? cuda_stream : NULL;
    return HISA_OK;
}

int hisa_sync(hisa_runtime *rt) {
    HISA__LIVE(rt);
    return rt->is_cuda ? hisa__cuda_sync(rt) : HISA_OK;
}

int hisa_seq_open(hisa_runtime *rt, int32_t *seq_out) {
    HISA__LIVE(rt);
    HISA__CHECK(seq_out != NULL, HISA_EINVAL);
    return hisa__kv_seq_open(rt, seq_out);
}

int hisa_seq_close(hisa_runtime *rt, int32_t seq) {
    HISA__LIVE(rt);
    return hisa__kv_seq_close(rt, seq);
}

int hisa_seq_extend(hisa_runtime *rt, int32_t seq, int32_t n) {
    HISA__LIVE(rt);
    return hisa__kv_seq_extend(rt, seq, n);
}

int hisa_seq_truncate(hisa_runtime *rt, int32_t seq, int32_t len) {
    HISA__LIVE(rt);
    return hisa__kv_seq_truncate(rt, seq, len);
}

int hisa_seq_length(const hisa_runtime *rt, int32_t seq, int32_t *len_out) {
    HISA__CHECK(rt && len_out, HISA_EINVAL);
    HISA__CHECK(hisa__seq_valid(rt, seq), HISA_ESEQ);
    *len_out = rt->r.seq_len[seq];
    return HISA_OK;
}

int hisa_seq_pages(const hisa_runtime *rt, int32_t seq, int32_t *pages_out, int32_t pages_max,
                   int32_t *n_pages_out) {
    HISA__CHECK(rt && pages_out && n_pages_out, HISA_EINVAL);
    HISA__CHECK(hisa__seq_valid(rt, seq), HISA_ESEQ);
    int32_t n = hisa__blocks_of(rt->r.seq_len[seq], (int32_t)rt->g.block_size);
    HISA__CHECK(n <= pages_max, HISA_ELIMIT);
    memcpy(pages_out, rt->r.page_table + (int64_t)seq * rt->g.pages_per_seq, (size_t)n * sizeof(int32_t));
    *n_pages_out = n;
    return HISA_OK;
}

int hisa_write_keys(hisa_runtime *rt, const hisa_write *req) {
    HISA__LIVE(rt);
    return hisa__kv_write(rt, req, -1, -1, 0);
}

int hisa_write_range(hisa_runtime *rt, int32_t seq, int32_t pos0, const hisa_write *req) {
    HISA__LIVE(rt);
    return hisa__kv_write(rt, req, seq, pos0, 1);
}

/* CPU only: every position <= t must have been written for this layer. */
static int check_written(const hisa_runtime *rt, int32_t layer, int32_t seq, int32_t t) {
    int32_t B = (int32_t)rt->g.block_size;
    const int32_t *pt = rt->r.page_table + (int64_t)seq * rt->g.pages_per_seq;
    for (int32_t b = 0; b <= t / B; b++) {
        const uint32_t *mask =
            rt->r.block_masks + hisa__summary_index(rt, layer, pt[b]) * rt->g.mask_words;
        int32_t n_in = t - b * B + 1 < B ? t - b * B + 1 : B;
        for (int32_t off = 0; off < n_in; off++)
            if (!(mask[off / 32] & (1u << (off % 32)))) return HISA_EUNWRITTEN;
    }
    return HISA_OK;
}

static int select_common(const hisa_runtime *rt, int32_t layer, hisa_mode mode, const float *q,
                         const float *w, const int32_t *out, uint32_t flags) {
    HISA__CHECK(layer >= 0 && layer < rt->g.n_layers, HISA_ERANGE);
    HISA__CHECK(mode == HISA_MODE_HISA || mode == HISA_MODE_FLAT, HISA_EINVAL);
    HISA__CHECK(q && w && out, HISA_EINVAL);
    HISA__CHECK((flags & ~(HISA_HOST_IO | HISA_SLOTS)) == 0, HISA_EINVAL);
    return HISA_OK;
}

int hisa_select_decode(hisa_runtime *rt, const hisa_decode *req) {
    HISA__LIVE(rt);
    HISA__CHECK(req != NULL, HISA_EINVAL);
    int err = select_common(rt, req->layer, req->mode, req->q, req->w, req->out, req->flags);
    if (err) return err;
    HISA__CHECK(req->n_seqs >= 1 && req->seq_ids, HISA_EINVAL);
    HISA__CHECK(req->n_seqs <= rt->g.max_batch, HISA_ELIMIT);
    for (int32_t i = 0; i < req->n_seqs; i++) {
        HISA__CHECK(hisa__seq_valid(rt, req->seq_ids[i]), HISA_ESEQ);
        HISA__CHECK(rt->r.seq_len[req->seq_ids[i]] >= 1, HISA_ERANGE);
        if (!rt->is_cuda) {
            err = check_written(rt, req->layer, req->seq_ids[i], rt->r.seq_len[req->seq_ids[i]] - 1);
            if (err) return err;
        }
    }
    if (rt->is_cuda)
        return hisa__cuda_select(rt, req->layer, req->mode, req->n_seqs, req->seq_ids, req->q,
                                 req->w, req->out, req->flags);
    int64_t H = rt->g.n_heads, k = rt->g.topk;
    for (int32_t i = 0; i < req->n_seqs; i++) {
        int32_t seq = req->seq_ids[i];
        err = hisa__cpu_select_one(rt, req->layer, req->mode, seq, rt->r.seq_len[seq] - 1,
                                   req->q + i * H * HISA_D, req->w + i * H,
                                   (req->flags & HISA_SLOTS) != 0, req->out + i * k);
        assert(err == HISA_OK);
    }
    return HISA_OK;
}

static int prefill_run(hisa_runtime *rt, const hisa_prefill *req, uint32_t internal_flags) {
    HISA__LIVE(rt);
    HISA__CHECK(req != NULL, HISA_EINVAL);
    int err = select_common(rt, req->layer, req->mode, req->q, req->w, req->out, req->flags);
    if (err) return err;
    HISA__CHECK(hisa__seq_valid(rt, req->seq), HISA_ESEQ);
    HISA__CHECK(req->n_q >= 1, HISA_EINVAL);
    HISA__CHECK(req->n_q <= rt->g.max_prefill, HISA_ELIMIT);
    HISA__CHECK(req->t0 >= 0 && (int64_t)req->t0 + req->n_q <= rt->r.seq_len[req->seq], HISA_ERANGE);
    if (rt->is_cuda)
        return hisa__cuda_prefill(rt, req->layer, req->mode, req->seq, req->t0, req->n_q, req->q,
                                  req->w, req->out, req->flags | internal_flags); /* tensor cores */
    assert(internal_flags == 0);
    err = check_written(rt, req->layer, req->seq, req->t0 + req->n_q - 1);
    if (err) return err;
    int64_t H = rt->g.n_heads, k = rt->g.topk;
    for (int32_t i = 0; i < req->n_q; i++) {
        err = hisa__cpu_select_one(rt, req->layer, req->mode, req->seq, req->t0 + i,
                                   req->q + i * H * HISA_D, req->w + i * H,
                                   (req->flags & HISA_SLOTS) != 0, req->out + i * k);
        assert(err == HISA_OK);
    }
    return HISA_OK;
}

int hisa_select_prefill(hisa_runtime *rt, const hisa_prefill *req) { return prefill_run(rt, req, 0); }

int hisa_dev_prefill(hisa_runtime *rt, const hisa_prefill *req, uint32_t dev_flags) {
    HISA__LIVE(rt);
    HISA__CHECK(rt->is_cuda, HISA_ENODEVICE);
    HISA__CHECK(req && (req->flags & HISA_HOST_IO) == 0, HISA_EINVAL);
    HISA__CHECK((dev_flags & ~(HISA_DEV_SCORING_ONLY | HISA_DEV_VARIANT_ALT)) == 0, HISA_EINVAL);
    return prefill_run(rt, req, ((dev_flags & HISA_DEV_SCORING_ONLY) ? HISA__PF_SCORING_ONLY : 0) |
                                    ((dev_flags & HISA_DEV_VARIANT_ALT) ? HISA__PF_VARIANT_ALT : 0));
}

int hisa_payload_pool(hisa_runtime *rt, int32_t layer, void **base_out) {
    HISA__LIVE(rt);
    HISA__CHECK(base_out != NULL, HISA_EINVAL);
    HISA__CHECK(layer >= 0 && layer < rt->g.n_layers, HISA_ERANGE);
    HISA__CHECK(rt->g.payload_bytes > 0, HISA_EINVAL);
    *base_out = rt->r.payload + (int64_t)layer * rt->g.n_pages * rt->g.block_size * rt->g.payload_bytes;
    return HISA_OK;
}

int hisa_memory_report_get(const hisa_runtime *rt, hisa_memory_report *out) {
    HISA__CHECK(rt && out, HISA_EINVAL);
    memset(out, 0, sizeof *out);
    out->device_bytes = rt->arena.dev_bytes;
    out->host_bytes = rt->arena.host_bytes;
    out->pages_total = (int32_t)rt->g.n_pages;
    out->pages_free = rt->n_free_pages;
    out->pages_used = out->pages_total - out->pages_free;
    out->pages_high_water = rt->pages_high_water;
    out->seqs_open = (int32_t)rt->g.max_seqs - rt->n_free_seqs;
    out->seqs_high_water = rt->seqs_high_water;
    for (int32_t s = 0; s < rt->g.max_seqs; s++)
        if (rt->r.seq_is_open[s]) out->tokens += rt->r.seq_len[s];
    out->poisoned = rt->poisoned;
    return HISA_OK;
}
