/* cuda_prefill.c: the C11 glue for a CUDA prefill chunk: maps the runtime's regions, tables and
 * stream onto hisa_k_prefill_params, stages HISA_HOST_IO tensors through the arena's io_*
 * regions, and reports CUDA failures through hisa__device_failed (poisoning the runtime).
 * Allocates nothing; synchronizes only for HISA_HOST_IO. Without CUDA it returns
 * HISA_ENODEVICE. */
#include "cuda_prefill.h"

#include <assert.h>
#include <string.h>

#include "internal.h"

#if HISA_CUDA
#include "cuda_check.h"

#include "../kernels/kernels.h"


int hisa__cuda_prefill(hisa_runtime *rt, int32_t layer, hisa_mode mode, int32_t seq, int32_t t0,
                       int32_t n_q, const float *q, const float *w, int32_t *out, uint32_t flags) {
    assert(rt && rt->is_cuda && q && w && out && n_q >= 1 && n_q <= rt->g.max_prefill && n_q <= rt->g.rows);
    cudaStream_t s = (cudaStream_t)rt->stream;
    const int host_io = (flags & HISA_HOST_IO) != 0;
    const int64_t H = rt->g.n_heads, k = rt->g.topk;
    hisa_k_prefill_params p;
    memset(&p, 0, sizeof p);
    hisa_k_cache *c = &p.cache;
    c->keys = rt->r.keys;
    c->sums = rt->r.block_sums;
    c->means = rt->r.block_means;
    c->masks = rt->r.block_masks;
    c->payload = rt->g.payload_bytes > 0 ? rt->r.payload : NULL;
    c->page_table = rt->r.dev_page_table;
    c->seq_len = rt->r.dev_seq_len;
    c->page_bytes = rt->g.page_bytes;
    c->n_layers = (int32_t)rt->g.n_layers;
    c->n_pages = (int32_t)rt->g.n_pages;
    c->block_size = (int32_t)rt->g.block_size;
    c->key_format = (int32_t)rt->g.key_format;
    c->payload_bytes = (int32_t)rt->g.payload_bytes;
    c->max_seqs = (int32_t)rt->g.max_seqs;
    c->pages_per_seq = (int32_t)rt->g.pages_per_seq;
    c->n_heads = (int32_t)rt->g.n_heads;
    p.scratch.scores = rt->r.sel_scores;
    p.scratch.block_scores = rt->r.sel_block_scores;
    p.scratch.blocks = rt->r.sel_blocks;
    p.scratch.work = rt->r.sel_work;
    p.scratch.work_words = hisa__sel_work_words(&rt->g);
    p.layer = layer;
    p.mode = (int32_t)mode;
    p.top_blocks = (int32_t)rt->g.top_blocks;
    p.topk = (int32_t)k;
    p.out_slots = (flags & HISA_SLOTS) != 0;
    p.seq = seq;
    p.t0 = t0;
    p.n_q = n_q;
    p.q = q;
    p.w = w;
    p.out = out;
    p.max_context = (int32_t)rt->g.max_context;
    p.scratch_rows = (int32_t)rt->g.rows;
    p.stop_after_scoring = (flags & HISA__PF_SCORING_ONLY) != 0;
    p.sm_count = rt->sm_count;
    p.variant = (flags & HISA__PF_VARIANT_ALT) != 0;
    if (host_io) {
        HISA_CUDA_TRY(rt, cudaMemcpyAsync(rt->r.io_q, q, (size_t)(n_q * H * HISA_D) * sizeof(float),
                                        cudaMemcpyHostToDevice, s));
        HISA_CUDA_TRY(rt, cudaMemcpyAsync(rt->r.io_w, w, (size_t)(n_q * H) * sizeof(float), cudaMemcpyHostToDevice, s));
        p.q = rt->r.io_q;
        p.w = rt->r.io_w;
        p.out = rt->r.io_out;
    }
    HISA_LAUNCH_TRY(rt, hisa_k_prefill(rt->stream, &p));
    if (host_io) {
        HISA_CUDA_TRY(rt, cudaMemcpyAsync(out, rt->r.io_out, (size_t)(n_q * k) * sizeof(int32_t),
                                        cudaMemcpyDeviceToHost, s));
        HISA_CUDA_TRY(rt, cudaStreamSynchronize(s));
    }
    return HISA_OK;
}

#else /* !HISA_CUDA */

int hisa__cuda_prefill(hisa_runtime *rt, int32_t layer, hisa_mode mode, int32_t seq, int32_t t0,
                       int32_t n_q, const float *q, const float *w, int32_t *out, uint32_t flags) {
    (void)rt, (void)layer, (void)mode, (void)seq, (void)t0, (void)n_q, (void)q, (void)w, (void)out;
    (void)flags;
    return HISA_ENODEVICE;
}

#endif /* HISA_CUDA */
