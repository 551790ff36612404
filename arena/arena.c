/* arena.c: configuration defaults and validation, the memory plan, and the one reservation.
 *
 * The plan is a pure function of the configuration, so `hisa mem` can size a GPU on a machine
 * without one. Open makes at most two reservations (device, host); everything else is carved.
 * These are the only allocation calls in the library. */
#include "arena.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/kernels.h"
#include "../runtime/internal.h"
#include "../runtime/limits.h"

#if HISA_CUDA
#include <cuda_runtime_api.h>
#endif

static int is_pow2(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

int hisa__config_resolve(const hisa_config *in, hisa_config *out, const char **field) {
    assert(in && out && field);
    hisa_config c = *in;
    *field = NULL;
#define HISA__FIELD(name, def, lo, hi)                   \
    do {                                                 \
        if (c.name == 0) c.name = (def);                 \
        if (c.name < (lo) || c.name > (hi)) {            \
            *field = #name;                              \
            return HISA_ECONFIG;                         \
        }                                                \
    } while (0)
    HISA__FIELD(n_layers, 1, 1, HISA_LAYERS_MAX);
    HISA__FIELD(n_heads, 64, 1, HISA_HEADS_MAX);
    HISA__FIELD(head_dim, HISA_D, HISA_D, HISA_D);
    HISA__FIELD(block_size, 128, HISA_BLOCK_MIN, HISA_BLOCK_MAX);
    if (!is_pow2(c.block_size)) {
        *field = "block_size";
        return HISA_ECONFIG;
    }
    HISA__FIELD(top_blocks, 64, 2, HISA_TOP_BLOCKS_MAX);
    HISA__FIELD(topk, 2048, 1, HISA_TOPK_MAX);
    HISA__FIELD(key_format, HISA_KEY_FP8, HISA_KEY_FP8, HISA_KEY_BF16);
    if (c.payload_bytes < 0 || c.payload_bytes > HISA_PAYLOAD_MAX) {
        *field = "payload_bytes";
        return HISA_ECONFIG;
    }
    HISA__FIELD(max_seqs, 8, 1, HISA_SEQS_MAX);
    HISA__FIELD(max_context, 131072, 1, HISA_CONTEXT_MAX);
    int64_t pages_per_seq = ((int64_t)c.max_context + c.block_size - 1) / c.block_size;
    if (c.n_pages == 0) {
        int64_t want = pages_per_seq * c.max_seqs;
        c.n_pages = want > HISA_PAGES_MAX ? -1 : (int32_t)want; /* too many: say n_pages */
    }
    HISA__FIELD(n_pages, 1, 1, HISA_PAGES_MAX);
    if ((int64_t)c.n_pages * c.block_size > ((int64_t)1 << 31)) { /* slots page * B + off are int32 */
        *field = "n_pages";
        return HISA_ECONFIG;
    }
    HISA__FIELD(max_batch, c.max_seqs < HISA_BATCH_MAX ? c.max_seqs : HISA_BATCH_MAX, 1,
                HISA_BATCH_MAX);
    HISA__FIELD(max_prefill_queries, c.max_context < 1024 ? c.max_context : 1024, 1,
                HISA_PREFILL_MAX);
    if (c.device < 0) {
        *field = "device";
        return HISA_ECONFIG;
    }
#undef HISA__FIELD
    /* SPEC: the m kept blocks always hold at least k candidates. */
    if ((int64_t)(c.top_blocks - 1) * c.block_size < c.topk) {
        *field = "top_blocks";
        return HISA_ECONFIG;
    }
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
    g->is_cuda = g->cuda;
    g->cpu = !g->cuda;
    g->pages_per_seq = (c->max_context + c->block_size - 1) / c->block_size;
    g->page_bytes = c->key_format == HISA_KEY_FP8 ? (int64_t)c->block_size * (HISA_D + 4)
                                                  : (int64_t)c->block_size * HISA_D * 2;
    g->mask_words = c->block_size / 32;
    g->rows = g->max_batch > g->max_prefill ? g->max_batch : g->max_prefill;
    assert(g->pages_per_seq >= 1 && g->mask_words >= 1);
}

int64_t hisa__sel_work_words(const hisa__geom *g) {
    hisa_k_scratch_sizes s =
        hisa_k_scratch_bytes(g->rows, g->max_context, g->pages_per_seq, g->top_blocks, g->topk);
    return (int64_t)((s.work_bytes + 3) / 4);
}

static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

int hisa__plan_build(const hisa_config *resolved, hisa_plan *plan) {
    assert(resolved && plan);
    hisa__geom geom, *g = &geom;
    hisa__geom_from_config(resolved, g);
    memset(plan, 0, sizeof *plan);
    plan->config = *resolved;
    uint64_t end[2] = {0, 0};
    int overflow = 0;
#define HISA__PLAN_ROW(rname, type, space, ralign, count)                                  \
    do {                                                                                  \
        hisa_region *reg = &plan->regions[plan->n_regions++];                             \
        uint64_t bytes = 0;                                                               \
        int64_t cnt = (int64_t)(count);                                                   \
        overflow |= cnt < 0 || __builtin_mul_overflow((uint64_t)cnt, sizeof(type), &bytes); \
        reg->name = #rname;                                                               \
        reg->align = (ralign);                                                            \
        reg->on_device = (space) == HISA__DEV;                                            \
        reg->offset = align_up(end[reg->on_device], (ralign));                            \
        reg->bytes = bytes;                                                               \
        overflow |= __builtin_add_overflow(reg->offset, bytes, &end[reg->on_device]);     \
    } while (0);
    HISA__REGIONS(HISA__PLAN_ROW)
#undef HISA__PLAN_ROW
    if (overflow) {
        plan->invalid_field = "max_context";
        return HISA_EOVERFLOW;
    }
    plan->device_bytes = align_up(end[1], 256);
    plan->host_bytes = align_up(end[0], 256);
    assert(plan->n_regions == HISA__REGION_COUNT);
    return HISA_OK;
}

/* --- reservation ------------------------------------------------------------------------- */

static int32_t g_fail_at;        /* tests: the n-th reservation from now fails */
static int64_t g_reservations;   /* reservations made by this process */

void hisa__arena_fail_at(int32_t n) { g_fail_at = n; }
int64_t hisa__arena_reservations(void) { return g_reservations; }

/* One reservation; returns NULL on failure (or injected failure). A sealed arena never
 * reserves again: that would be an allocation after open. */
static void *reserve(const hisa__arena *a, uint64_t bytes, int on_device, int is_cuda) {
    assert(!a->sealed && "allocation after open");
    assert(bytes > 0 && bytes % 256 == 0);
    if (g_fail_at > 0 && --g_fail_at == 0) return NULL;
    void *p = NULL;
#if HISA_CUDA
    if (is_cuda) {
        cudaError_t e = on_device ? cudaMalloc(&p, bytes) : cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
        if (e != cudaSuccess) {
            (void)cudaGetLastError(); /* clear the sticky-free error so later calls are clean */
            return NULL;
        }
        g_reservations++;
        return p;
    }
#else
    (void)is_cuda;
#endif
    (void)on_device;
    p = aligned_alloc(256, bytes);
    if (p) g_reservations++;
    return p;
}

static void unreserve(void *p, int on_device, int is_cuda) {
    if (!p) return;
#if HISA_CUDA
    if (is_cuda) {
        if (on_device)
            cudaFree(p);
        else
            cudaFreeHost(p);
        return;
    }
#else
    (void)is_cuda;
#endif
    (void)on_device;
    free(p);
}

static int zero_device(void *p, uint64_t bytes, int is_cuda) {
#if HISA_CUDA
    if (is_cuda) return cudaMemset(p, 0, bytes) == cudaSuccess ? HISA_OK : HISA_ENOMEM;
#else
    (void)is_cuda;
#endif
    memset(p, 0, bytes);
    return HISA_OK;
}

int hisa__arena_open(hisa__arena *a, const hisa_plan *plan, const hisa_memory *mem,
                     int32_t cuda_ordinal, hisa__regions *regions) {
    assert(a && plan && regions);
    (void)cuda_ordinal; /* the device is current already (hisa__cuda_probe) */
    memset(a, 0, sizeof *a);
    memset(regions, 0, sizeof *regions);
    a->is_cuda = plan->config.device != HISA_DEVICE_CPU;
    a->dev_bytes = plan->device_bytes;
    a->host_bytes = plan->host_bytes;
    if (mem && mem->device_base) {
        if (mem->device_bytes < plan->device_bytes || ((uintptr_t)mem->device_base & 255))
            return HISA_ENOMEM;
        a->dev_base = mem->device_base;
    }
    if (mem && mem->host_base) {
        if (mem->host_bytes < plan->host_bytes || ((uintptr_t)mem->host_base & 255))
            return HISA_ENOMEM;
        a->host_base = mem->host_base;
    }
    if (!a->dev_base) {
        a->dev_base = reserve(a, a->dev_bytes, 1, a->is_cuda);
        if (!a->dev_base) return HISA_ENOMEM;
        a->dev_owned = 1;
    }
    if (!a->host_base) {
        a->host_base = reserve(a, a->host_bytes, 0, a->is_cuda);
        if (!a->host_base) {
            hisa__arena_release(*a);
            return HISA_ENOMEM;
        }
        a->host_owned = 1;
    }
    /* Zero both: the runtime struct, free lists and block summaries start from zero. */
    memset(a->host_base, 0, a->host_bytes);
    if (zero_device(a->dev_base, a->dev_bytes, a->is_cuda) != HISA_OK) {
        hisa__arena_release(*a);
        return HISA_ENOMEM;
    }
    void **slot = (void **)regions;
    for (int32_t i = 0; i < plan->n_regions; i++) {
        const hisa_region *reg = &plan->regions[i];
        uint8_t *base = reg->on_device ? a->dev_base : a->host_base;
        slot[i] = reg->bytes ? base + reg->offset : NULL;
        assert(reg->offset + reg->bytes <= (reg->on_device ? a->dev_bytes : a->host_bytes));
    }
    assert(regions->runtime != NULL);
    return HISA_OK;
}

void hisa__arena_seal(hisa__arena *a) {
    assert(a && !a->sealed);
    a->sealed = 1;
}

void hisa__arena_release(hisa__arena a) {
    if (a.dev_owned) unreserve(a.dev_base, 1, a.is_cuda);
    if (a.host_owned) unreserve(a.host_base, 0, a.is_cuda);
}
