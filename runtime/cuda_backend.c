/* cuda_backend.c: the CUDA backend: the C11 glue between the runtime's state and the CUDA
 * kernels (kernels.h), as one operations table (hisa__cuda_backend).
 *
 * Why: the runtime (api.c, kvcache/) is backend-neutral; this file maps its host-side state
 * (regions, tables, stream) onto the kernels' plain-C launch structs, and stages host tensors
 * for HISA_HOST_IO requests. It reserves only through the arena (cuda_mem, at open), and syncs
 * only in HISA_HOST_IO paths, sync, probe and start.
 *
 * Every CUDA runtime call and every launcher goes through HISA_CUDA_TRY / HISA_LAUNCH_TRY, which
 * record the statement, file and line in rt->error_detail and poison the runtime (HISA_EDEVICE).
 * Without CUDA (HISA_CUDA == 0) every entry returns HISA_ENODEVICE. */
#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "hisa_dev.h"
#include "internal.h"

#if HISA_CUDA
#include "cuda_check.h"


static cudaStream_t stream_of(const hisa_runtime *rt) { return (cudaStream_t)rt->stream; }

static hisa_k_cache cache_of(const hisa_runtime *rt) {
    hisa_k_cache c;
    memset(&c, 0, sizeof c);
    c.keys = rt->r.keys;
    c.sums = rt->r.block_sums;
    c.sum_pages = rt->r.sum_pages;
    c.means = rt->r.block_means;
    c.masks = rt->r.block_masks;
    c.payload = rt->g.payload_bytes > 0 ? rt->r.payload : NULL;
    c.page_table = rt->r.dev_page_table;
    c.seq_len = rt->r.dev_seq_len;
    c.page_bytes = rt->g.page_bytes;
    c.n_layers = (int32_t)rt->g.n_layers;
    c.n_pages = (int32_t)rt->g.n_pages;
    c.block_size = (int32_t)rt->g.block_size;
    c.key_format = (int32_t)rt->g.key_format;
    c.payload_bytes = (int32_t)rt->g.payload_bytes;
    c.max_seqs = (int32_t)rt->g.max_seqs;
    c.pages_per_seq = (int32_t)rt->g.pages_per_seq;
    c.n_heads = (int32_t)rt->g.n_heads;
    return c;
}

static hisa_k_scratch scratch_of(const hisa_runtime *rt) {
    hisa_k_scratch sc;
    sc.scores = rt->r.sel_scores;
    sc.block_scores = rt->r.sel_block_scores;
    sc.blocks = rt->r.sel_blocks;
    sc.work = rt->r.sel_work;
    sc.work_words = hisa__sel_work_words(&rt->g);
    return sc;
}

/* HISA_HOST_IO selections: q (n_rows queries in q_format) and w go to io_q / io_w, the kernels
 * write io_out, and stage_out copies the result back and waits for it (the caller may reuse its
 * buffers). */
static int stage_in(hisa_runtime *rt, int32_t n_rows, int32_t q_format, const void **q, const float **w, int32_t **out) {
    cudaStream_t s = stream_of(rt);
    int64_t H = rt->g.n_heads;
    HISA_CUDA_TRY(rt, cudaMemcpyAsync(rt->r.io_q, *q, (size_t)(n_rows * hisa__q_bytes(H, q_format)),
                                      cudaMemcpyHostToDevice, s));
    HISA_CUDA_TRY(rt, cudaMemcpyAsync(rt->r.io_w, *w, (size_t)(n_rows * H) * sizeof(float), cudaMemcpyHostToDevice, s));
    *q = rt->r.io_q;
    *w = rt->r.io_w;
    *out = rt->r.io_out;
    return HISA_OK;
}

static int stage_out(hisa_runtime *rt, int32_t n_rows, int32_t *out_host) {
    cudaStream_t s = stream_of(rt);
    HISA_CUDA_TRY(rt, cudaMemcpyAsync(out_host, rt->r.io_out, (size_t)(n_rows * rt->g.topk) * sizeof(int32_t),
                                      cudaMemcpyDeviceToHost, s));
    HISA_CUDA_TRY(rt, cudaStreamSynchronize(s));
    return HISA_OK;
}

static int cuda_probe(int32_t device, hisa_k_device *dev, char *detail, size_t detail_bytes) {
    assert(dev && device >= 1);
    int n = 0, ordinal = device - 1, major = 0, minor = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n <= 0) {
        (void)cudaGetLastError(); /* clear the sticky "no device" status */
        snprintf(detail, detail_bytes, "no CUDA device");
        return HISA_ENODEVICE;
    }
    if (ordinal >= n || cudaSetDevice(ordinal) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ordinal) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, ordinal) != cudaSuccess) {
        snprintf(detail, detail_bytes, "CUDA device %d: not present (%d devices)", ordinal, n);
        return HISA_ENODEVICE;
    }
    if (major < 8) { /* the kernels are sm_90a code plus the portable sm_80 image (Makefile) */
        snprintf(detail, detail_bytes,
                 "CUDA device %d has compute capability %d.%d; hisa's kernels need 8.0 or newer",
                 ordinal, major, minor);
        return HISA_ENODEVICE;
    }
    dev->ordinal = ordinal;
    return HISA_OK;
}

static int cuda_start(hisa_runtime *rt) {
    assert(rt && hisa__is_cuda(rt));
    HISA_CUDA_TRY(rt, cudaSetDevice(rt->dev.ordinal));
    _Static_assert(HISA_K_EUNSUPPORTED == HISA_EUNSUPPORTED, "kernel codes are hisa.h's");
    _Static_assert(HISA_K_PATH_AUTO == HISA_KERNELS_AUTO && HISA_K_PATH_PORTABLE == HISA_KERNELS_PORTABLE &&
                       HISA_K_PATH_HOPPER == HISA_KERNELS_HOPPER,
                   "kernel paths are hisa.h's values");
    rt->dev.path = rt->plan.config.kernels;
    const int kerr = hisa_k_init(&rt->dev);
    if (kerr == HISA_K_EUNSUPPORTED) {
        snprintf(rt->error_detail, sizeof rt->error_detail,
                 "kernels = HISA_KERNELS_HOPPER: CUDA device %d (compute capability %d.%d) runs hisa's portable "
                 "image, not the sm_90a one the Hopper scorer is built in (Hopper, no forced PTX JIT)",
                 rt->dev.ordinal, rt->dev.cc_major, rt->dev.cc_minor);
        return HISA_ENODEVICE;
    }
    HISA_LAUNCH_TRY(rt, kerr);
    /* the decode scorers' query tiles grow with the heads; on parts with 99 KB per block the bf16
     * and block-mean scorers hold at most 80 heads */
    if (!hisa_k_decode_fits(&rt->dev, (int32_t)rt->g.n_heads, (int32_t)rt->g.key_format)) {
        snprintf(rt->error_detail, sizeof rt->error_detail,
                 "n_heads = %d: the decode scorer's shared memory for that many heads does not fit one block of "
                 "CUDA device %d (compute capability %d.%d)",
                 (int)rt->g.n_heads, rt->dev.ordinal, rt->dev.cc_major, rt->dev.cc_minor);
        return HISA_ENODEVICE;
    }
    /* The device mirrors start empty; the top-k histograms start (and stay) zero. */
    cudaStream_t s = stream_of(rt);
    HISA_CUDA_TRY(rt, cudaMemsetAsync(rt->r.dev_page_table, 0xff,
                                      (size_t)(rt->g.max_seqs * rt->g.pages_per_seq) * sizeof(int32_t), s));
    HISA_CUDA_TRY(rt, cudaMemsetAsync(rt->r.sum_pages, 0xff, (size_t)(rt->g.n_layers * rt->g.max_seqs) * sizeof(int32_t), s));
#ifndef NDEBUG
    HISA_CUDA_TRY(rt, cudaMemsetAsync(rt->r.keys, 0xff, (size_t)(rt->g.n_layers * rt->g.n_pages * rt->g.page_bytes), s));
#endif
    HISA_CUDA_TRY(rt, cudaStreamSynchronize(s));
    return HISA_OK;
}

/* --- the cache's device copy (hisa__kv_ops, be = the runtime) ------------------------------- */

static int cuda_seq_set(void *be, int32_t seq, int32_t first_index, int32_t n_new, int32_t fresh) {
    hisa_runtime *rt = be;
    assert(seq >= 0 && seq < rt->g.max_seqs && first_index >= 0 && n_new >= 0);
    const int32_t *pt = hisa__kv_pages(&rt->kv, seq);
    hisa_k_seq_set_params p;
    int32_t done = 0;
    do { /* at least one launch: seq_len changes even when no page is added */
        int32_t n = n_new - done < HISA_K_SEQ_SET_PAGES ? n_new - done : HISA_K_SEQ_SET_PAGES;
        p.cache = cache_of(rt);
        p.seq = seq;
        p.len = rt->kv.seq_len[seq];
        p.first_index = first_index + done;
        p.n_pages_new = n;
        p.fresh = fresh;
        for (int32_t i = 0; i < n; i++) p.pages[i] = pt[first_index + done + i];
        HISA_LAUNCH_TRY(rt, hisa_k_seq_set(rt->stream, &p));
        done += n;
    } while (done < n_new);
    return HISA_OK;
}

static int cuda_truncate(void *be, int32_t seq, int32_t page) {
    hisa_runtime *rt = be;
    assert(seq >= 0 && seq < rt->g.max_seqs);
    hisa_k_truncate_params p;
    p.cache = cache_of(rt);
    p.seq = seq;
    p.len = rt->kv.seq_len[seq];
    p.page = page;
    HISA_LAUNCH_TRY(rt, hisa_k_truncate(rt->stream, &p));
    return HISA_OK;
}

static int cuda_poison_page(void *be, int32_t page) {
    hisa_runtime *rt = be;
    assert(page >= 0 && page < rt->g.n_pages);
    for (int32_t l = 0; l < rt->g.n_layers; l++)
        HISA_CUDA_TRY(rt, cudaMemsetAsync(hisa__page(rt, l, page), 0xff, (size_t)rt->g.page_bytes, stream_of(rt)));
    return HISA_OK;
}

static int cuda_copy_page(void *be, int32_t seq, int32_t src, int32_t dst, int32_t keep) {
    hisa_runtime *rt = be;
    hisa_k_copy_page_params p = {.cache = cache_of(rt), .seq = seq, .src = src, .dst = dst, .keep = keep};
    HISA_LAUNCH_TRY(rt, hisa_k_copy_page(rt->stream, &p));
    return HISA_OK;
}

static const hisa__kv_ops cuda_kv_ops = {cuda_seq_set, cuda_truncate, cuda_poison_page, cuda_copy_page};

static int cuda_write(hisa_runtime *rt, const hisa_write *req, int32_t range_seq, int32_t range_pos0) {
    assert(rt && req && req->n_tokens >= 1 && req->n_tokens <= rt->g.rows);
    const int is_range = range_seq >= 0;
    cudaStream_t s = stream_of(rt);
    const int host_io = (req->flags & HISA_HOST_IO) != 0;
    const int64_t n = req->n_tokens, pb = rt->g.payload_bytes;
    hisa_k_write_params p;
    memset(&p, 0, sizeof p);
    p.cache = cache_of(rt);
    p.layer = req->layer;
    p.is_range = is_range;
    p.n_tokens = req->n_tokens;
    p.range_seq = range_seq;
    p.range_pos0 = range_pos0;
    if (!is_range)
        for (int32_t i = 0; i < req->n_tokens; i++) {
            p.seq_ids[i] = req->seq_ids[i];
            p.positions[i] = req->positions ? req->positions[i] : -1;
        }
    p.keys = req->keys;
    p.keys_bf16 = req->keys_bf16;
    p.codes = req->codes;
    p.scales = req->scales;
    p.payload = req->payload;
    if (host_io) {
        if (req->keys) {
            HISA_CUDA_TRY(rt, cudaMemcpyAsync(rt->r.io_keys, req->keys, (size_t)(n * HISA_D) * sizeof(float),
                                              cudaMemcpyHostToDevice, s));
            p.keys = rt->r.io_keys;
        }
        if (req->keys_bf16) { /* io_keys holds fp32 keys: bf16 ones take half of it */
            HISA_CUDA_TRY(rt, cudaMemcpyAsync(rt->r.io_keys, req->keys_bf16, (size_t)(n * HISA_D) * sizeof(uint16_t),
                                              cudaMemcpyHostToDevice, s));
            p.keys_bf16 = (const uint16_t *)rt->r.io_keys;
        }
        if (req->codes) {
            HISA_CUDA_TRY(rt, cudaMemcpyAsync(rt->r.io_codes, req->codes, (size_t)(n * HISA_D), cudaMemcpyHostToDevice, s));
            HISA_CUDA_TRY(rt, cudaMemcpyAsync(rt->r.io_scales, req->scales, (size_t)n * sizeof(float),
                                              cudaMemcpyHostToDevice, s));
            p.codes = rt->r.io_codes;
            p.scales = rt->r.io_scales;
        }
        if (req->payload) {
            HISA_CUDA_TRY(rt, cudaMemcpyAsync(rt->r.io_payload, req->payload, (size_t)(n * pb), cudaMemcpyHostToDevice, s));
            p.payload = rt->r.io_payload;
        }
    }
    HISA_LAUNCH_TRY(rt, hisa_k_write(rt->stream, &p));
    /* host inputs must stay valid until the copies ran: the caller may reuse them on return */
    if (host_io) HISA_CUDA_TRY(rt, cudaStreamSynchronize(s));
    return HISA_OK;
}

/* The fields of a selection launch that decode and the portable prefill share. */
static hisa_k_select_params select_params(const hisa_runtime *rt, int32_t layer, hisa_mode mode, uint32_t flags,
                                          int32_t q_format, int32_t n_rows) {
    assert(rt && n_rows >= 1 && n_rows <= rt->g.rows);
    hisa_k_select_params p;
    memset(&p, 0, sizeof p);
    p.cache = cache_of(rt);
    p.scratch = scratch_of(rt);
    p.layer = layer;
    p.mode = (int32_t)mode;
    p.top_blocks = (int32_t)rt->g.top_blocks;
    p.topk = (int32_t)rt->g.topk;
    p.out_slots = (flags & HISA_SLOTS) != 0;
    p.n_rows = n_rows;
    p.next_n = 1;
    p.q_format = q_format;
    p.max_context = (int32_t)rt->g.max_context;
    p.dev = rt->dev;
    p.scratch_rows = (int32_t)rt->g.rows;
    p.fp8_native = rt->plan.config.fp8_mma == HISA_FP8_MMA_NATIVE;
    return p;
}

static int cuda_decode(hisa_runtime *rt, const hisa_decode *req) {
    const int32_t next_n = req->next_n > 1 ? req->next_n : 1, n_rows = req->n_seqs * next_n;
    const void *q = req->q;
    const float *w = req->w;
    int32_t *out = req->out;
    const int host_io = (req->flags & HISA_HOST_IO) != 0;
    assert(rt && req->seq_ids && req->n_seqs <= HISA_BATCH_MAX && n_rows <= rt->g.rows && q && w && out);
    hisa_k_select_params p = select_params(rt, req->layer, req->mode, req->flags, req->q_format, n_rows);
    p.next_n = next_n;
    for (int32_t i = 0; i < req->n_seqs; i++) p.seq_ids[i] = req->seq_ids[i];
    if (host_io) {
        int err = stage_in(rt, n_rows, req->q_format, &q, &w, &out);
        if (err) return err;
    }
    p.q = q;
    p.w = w;
    p.out = out;
    HISA_LAUNCH_TRY(rt, hisa_k_select(rt->stream, &p));
    return host_io ? stage_out(rt, n_rows, req->out) : HISA_OK;
}

/* One launch chain for chunks [c0, c0 + ch->n) of req, rows [row, row + ch->row0[ch->n]) of the
 * call's q / w / out (the scratch's rows from 0). Where the device has no Hopper image (or the
 * portable kernels were asked for), the decode kernels take the chunks' queries as rows of their
 * own positions (dev.all_portable). */
static int prefill_launch(hisa_runtime *rt, const hisa_prefill *req, uint32_t dev_flags, const hisa_k_chunks *ch,
                          int64_t row, const void *q, const float *w, int32_t *out) {
    assert(ch->n >= 1 && ch->n <= HISA_K_CHUNKS_MAX && row >= 0);
    const int64_t H = rt->g.n_heads;
    q = (const uint8_t *)q + row * hisa__q_bytes(H, req->q_format);
    w += row * H;
    out += row * rt->g.topk;
    if (rt->dev.all_portable) {
        hisa_k_select_params p = select_params(rt, req->layer, req->mode, req->flags, req->q_format, ch->row0[ch->n]);
        p.chunk = 1;
        p.chunks = *ch;
        p.stop_after_scoring = (dev_flags & HISA_DEV_SCORING_ONLY) != 0;
        p.q = q;
        p.w = w;
        p.out = out;
        HISA_LAUNCH_TRY(rt, hisa_k_select(rt->stream, &p));
        return HISA_OK;
    }
    hisa_k_prefill_params p;
    memset(&p, 0, sizeof p);
    p.cache = cache_of(rt);
    p.scratch = scratch_of(rt);
    p.layer = req->layer;
    p.mode = (int32_t)req->mode;
    p.top_blocks = (int32_t)rt->g.top_blocks;
    p.topk = (int32_t)rt->g.topk;
    p.out_slots = (req->flags & HISA_SLOTS) != 0;
    p.chunks = *ch;
    p.max_context = (int32_t)rt->g.max_context;
    p.scratch_rows = (int32_t)rt->g.rows;
    p.stop_after_scoring = (dev_flags & HISA_DEV_SCORING_ONLY) != 0;
    p.dev = rt->dev;
    p.variant = (dev_flags & HISA_DEV_VARIANT_ALT) != 0;
    p.fp8_native = rt->plan.config.fp8_mma == HISA_FP8_MMA_NATIVE;
    p.q_format = req->q_format;
    p.q = q;
    p.w = w;
    p.out = out;
    HISA_LAUNCH_TRY(rt, hisa_k_prefill(rt->stream, &p));
    return HISA_OK;
}

/* All chunks of a call in one launch chain, HISA_K_CHUNKS_MAX at a time (the chunk table is
 * passed by value); launches run one after another on the stream, each reusing the scratch. */
static int cuda_prefill(hisa_runtime *rt, const hisa_prefill *req, uint32_t dev_flags) {
    const int32_t n_chunks = hisa__prefill_chunks(req);
    const void *q = req->q;
    const float *w = req->w;
    int32_t *out = req->out;
    const int host_io = (req->flags & HISA_HOST_IO) != 0;
    int64_t total = 0;
    int32_t seq, t0, n_q;
    for (int32_t c = 0; c < n_chunks; c++) {
        hisa__prefill_chunk(req, c, &seq, &t0, &n_q);
        total += n_q;
    }
    assert(rt && q && w && out && total >= 1 && total <= rt->g.max_prefill);
    if (host_io) {
        int err = stage_in(rt, (int32_t)total, req->q_format, &q, &w, &out);
        if (err) return err;
    }
    hisa_k_chunks ch = {0};
    int64_t row = 0;
    for (int32_t c0 = 0; c0 < n_chunks; c0 += HISA_K_CHUNKS_MAX) {
        ch.n = n_chunks - c0 < HISA_K_CHUNKS_MAX ? n_chunks - c0 : HISA_K_CHUNKS_MAX;
        ch.row0[0] = 0;
        for (int32_t i = 0; i < ch.n; i++) {
            hisa__prefill_chunk(req, c0 + i, &ch.seq[i], &ch.t0[i], &n_q);
            ch.row0[i + 1] = ch.row0[i] + n_q;
        }
        int err = prefill_launch(rt, req, dev_flags, &ch, row, q, w, out);
        if (err) return err;
        row += ch.row0[ch.n];
    }
    assert(row == total);
    return host_io ? stage_out(rt, (int32_t)total, req->out) : HISA_OK;
}

uint64_t hisa_dev_topk_work_bytes(int32_t n, int32_t n_rows) {
    return n < 1 || n_rows < 1 ? 0 : (uint64_t)n_rows * (uint64_t)hisa_k_work_row_words(n) * 4u;
}

int hisa_dev_topk(hisa_runtime *rt, const float *scores, int64_t stride, int32_t n, int32_t k,
                  int32_t n_rows, void *work, int32_t *out) {
    HISA__CHECK(rt && scores && work && out, HISA_EINVAL);
    HISA__CHECK(!rt->poisoned, HISA_EPOISONED);
    HISA__CHECK(hisa__is_cuda(rt), HISA_ENODEVICE);
    HISA__CHECK(n >= 1 && k >= 1 && n_rows >= 1 && stride >= n, HISA_EINVAL);
    hisa_k_topk_params p = {.scores = scores, .stride = stride, .n = n, .k = k, .n_rows = n_rows,
                            .work = (uint32_t *)work, .out = out, .dev = rt->dev};
    HISA_LAUNCH_TRY(rt, hisa_k_topk(rt->stream, &p));
    return HISA_OK;
}

int hisa_dev_read_probe(hisa_runtime *rt, const void *buf, uint64_t bytes, uint64_t *sum_device) {
    HISA__CHECK(rt && buf && sum_device, HISA_EINVAL);
    HISA__CHECK(!rt->poisoned, HISA_EPOISONED);
    HISA__CHECK(hisa__is_cuda(rt), HISA_ENODEVICE);
    HISA__CHECK(bytes > 0 && bytes % 16 == 0 && ((uintptr_t)buf & 15) == 0, HISA_EINVAL);
    hisa_k_read_probe_params p = {.buf = buf, .bytes = bytes, .sum = (unsigned long long *)sum_device, .dev = rt->dev};
    HISA_LAUNCH_TRY(rt, hisa_k_read_probe(rt->stream, &p));
    return HISA_OK;
}

static int cuda_sync(hisa_runtime *rt) {
    assert(rt);
    HISA_CUDA_TRY(rt, cudaStreamSynchronize(stream_of(rt)));
    return HISA_OK;
}

/* --- the arena's memory: device blocks and pinned host blocks -------------------------------- */

static void *cuda_reserve(uint64_t bytes, int32_t space) {
    void *p = NULL;
    cudaError_t e = space == HISA__ARENA_DEVICE ? cudaMalloc(&p, bytes) : cudaHostAlloc(&p, bytes, cudaHostAllocDefault);
    if (e == cudaSuccess) return p;
    (void)cudaGetLastError(); /* clear the error so later calls are clean */
    return NULL;
}
static void cuda_release(void *p, int32_t space) {
    if (space == HISA__ARENA_DEVICE)
        (void)cudaFree(p);
    else
        (void)cudaFreeHost(p);
}
static int cuda_zero(void *p, uint64_t bytes, int32_t space) {
    if (space == HISA__ARENA_HOST) {
        memset(p, 0, bytes);
        return 0;
    }
    return cudaMemset(p, 0, bytes) != cudaSuccess;
}
static const hisa__arena_mem cuda_mem = {cuda_reserve, cuda_release, cuda_zero};

const hisa__backend hisa__cuda_backend = {
    .name = "cuda", .mem = &cuda_mem, .kv_ops = &cuda_kv_ops, .probe = cuda_probe, .start = cuda_start,
    .sync = cuda_sync, .write = cuda_write, .decode = cuda_decode, .prefill = cuda_prefill};

int hisa_dev_kept_blocks(hisa_runtime *rt, int32_t n_rows, int32_t *blocks) {
    HISA__CHECK(rt && blocks, HISA_EINVAL);
    HISA__CHECK(!rt->poisoned, HISA_EPOISONED);
    HISA__CHECK(hisa__is_cuda(rt), HISA_ENODEVICE);
    HISA__CHECK(n_rows >= 1 && n_rows <= rt->g.rows, HISA_EINVAL);
    const size_t bytes = sizeof(int32_t) * (size_t)n_rows * (size_t)rt->g.top_blocks;
    HISA_CUDA_TRY(rt, cudaMemcpyAsync(blocks, rt->r.sel_blocks, bytes, cudaMemcpyDeviceToHost, stream_of(rt)));
    HISA_CUDA_TRY(rt, cudaStreamSynchronize(stream_of(rt)));
    return HISA_OK;
}

#else /* !HISA_CUDA */

static int cuda_probe(int32_t device, hisa_k_device *dev, char *detail, size_t detail_bytes) {
    (void)device, (void)dev;
    snprintf(detail, detail_bytes, "hisa was built without CUDA");
    return HISA_ENODEVICE;
}

/* Without CUDA the probe refuses every device, so no other entry is ever reached. */
const hisa__backend hisa__cuda_backend = {.name = "cuda (not built)", .probe = cuda_probe};

uint64_t hisa_dev_topk_work_bytes(int32_t n, int32_t n_rows) {
    (void)n, (void)n_rows;
    return 0;
}
int hisa_dev_topk(hisa_runtime *rt, const float *scores, int64_t stride, int32_t n, int32_t k,
                  int32_t n_rows, void *work, int32_t *out) {
    (void)rt, (void)scores, (void)stride, (void)n, (void)k, (void)n_rows, (void)work, (void)out;
    return HISA_ENODEVICE;
}
int hisa_dev_read_probe(hisa_runtime *rt, const void *buf, uint64_t bytes, uint64_t *sum_device) {
    (void)rt, (void)buf, (void)bytes, (void)sum_device;
    return HISA_ENODEVICE;
}
int hisa_dev_kept_blocks(hisa_runtime *rt, int32_t n_rows, int32_t *blocks) {
    (void)rt, (void)n_rows, (void)blocks;
    return HISA_ENODEVICE;
}

#endif /* HISA_CUDA */
