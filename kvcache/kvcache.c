/* kvcache.c: the paged key cache's state machine.
 *
 * One page = one HISA block of B tokens, shared by all layers (a page id indexes every layer's
 * key pool). The host tables (seq_len, page_table, free lists) in the host arena are the truth;
 * on CUDA, every change is pushed to the device mirrors in stream order (hisa__cuda_seq_set /
 * hisa__cuda_truncate) so kernels, graph replays included, read the state of their step.
 *
 * Invariants: a page is either on the free stack or owned by exactly one open sequence, at
 * page_table[seq][i] for i < ceil(len / B). Every function validates all of its input before it
 * changes anything, so an error leaves every table as it was. */
#include <assert.h>
#include <string.h>

#include "../runtime/internal.h"

static int32_t *seq_pages(const hisa_runtime *rt, int32_t seq) {
    return rt->r.page_table + (int64_t)seq * rt->g.pages_per_seq;
}

int hisa__seq_valid(const hisa_runtime *rt, int32_t seq) {
    return seq >= 0 && seq < rt->g.max_seqs && rt->r.seq_is_open[seq];
}

/* Debug builds poison freed pages (0xff is NaN in e4m3 and in bf16), so a read of a page that
 * nothing wrote shows up as NaN scores instead of a plausible stale key. */
static int poison_page(hisa_runtime *rt, int32_t page) {
#ifndef NDEBUG
    if (rt->is_cuda) return hisa__cuda_poison_page(rt, page);
    for (int32_t l = 0; l < rt->g.n_layers; l++) memset(hisa__page(rt, l, page), 0xff, rt->g.page_bytes);
#else
    (void)rt;
    (void)page;
#endif
    return HISA_OK;
}

static void reset_summary_cpu(hisa_runtime *rt, int32_t page) {
    for (int32_t l = 0; l < rt->g.n_layers; l++) {
        int64_t i = hisa__summary_index(rt, l, page);
        memset(rt->r.block_sums + i * HISA_D, 0, HISA_D * sizeof(float));
        memset(rt->r.block_means + i * HISA_D, 0, HISA_D * sizeof(uint16_t));
        memset(rt->r.block_masks + i * rt->g.mask_words, 0, rt->g.mask_words * sizeof(uint32_t));
    }
}

int hisa__kv_init(hisa_runtime *rt) {
    assert(rt && rt->r.free_pages && rt->r.free_seqs);
    /* Stacks pop from the end: push in reverse so the first pages handed out are 0, 1, 2... */
    for (int32_t i = 0; i < rt->g.n_pages; i++) rt->r.free_pages[i] = (int32_t)rt->g.n_pages - 1 - i;
    rt->n_free_pages = (int32_t)rt->g.n_pages;
    for (int32_t i = 0; i < rt->g.max_seqs; i++) rt->r.free_seqs[i] = (int32_t)rt->g.max_seqs - 1 - i;
    rt->n_free_seqs = (int32_t)rt->g.max_seqs;
#ifndef NDEBUG
    if (!rt->is_cuda) memset(rt->r.keys, 0xff, (size_t)(rt->g.n_layers * rt->g.n_pages * rt->g.page_bytes));
#endif
    assert(rt->n_free_pages >= 1);
    return HISA_OK;
}

int hisa__kv_seq_open(hisa_runtime *rt, int32_t *seq_out) {
    HISA__CHECK(rt->n_free_seqs > 0, HISA_ESEQFULL);
    int32_t seq = rt->r.free_seqs[rt->n_free_seqs - 1];
    assert(!rt->r.seq_is_open[seq]);
    if (rt->is_cuda) {
        rt->r.seq_len[seq] = 0;
        int err = hisa__cuda_seq_set(rt, seq, 0, 0);
        if (err) return err;
    }
    rt->n_free_seqs--;
    rt->r.seq_is_open[seq] = 1;
    rt->r.seq_len[seq] = 0;
    int32_t open = (int32_t)rt->g.max_seqs - rt->n_free_seqs;
    if (open > rt->seqs_high_water) rt->seqs_high_water = open;
    *seq_out = seq;
    return HISA_OK;
}

/* Return pages [from, to) of seq to the free stack, last first, so a close followed by an
 * extend reuses the same pages in the same order. */
static int release_pages(hisa_runtime *rt, int32_t seq, int32_t from, int32_t to) {
    int32_t *pt = seq_pages(rt, seq);
    for (int32_t i = to - 1; i >= from; i--) {
        assert(rt->n_free_pages < rt->g.n_pages);
        int err = poison_page(rt, pt[i]);
        if (err) return err;
        rt->r.free_pages[rt->n_free_pages++] = pt[i];
        pt[i] = -1;
    }
    return HISA_OK;
}

int hisa__kv_seq_close(hisa_runtime *rt, int32_t seq) {
    HISA__CHECK(hisa__seq_valid(rt, seq), HISA_ESEQ);
    int32_t n_blocks = hisa__blocks_of(rt->r.seq_len[seq], (int32_t)rt->g.block_size);
    int err = release_pages(rt, seq, 0, n_blocks);
    if (err) return err;
    rt->r.seq_len[seq] = 0;
    rt->r.seq_is_open[seq] = 0;
    rt->r.free_seqs[rt->n_free_seqs++] = seq;
    if (rt->is_cuda) return hisa__cuda_seq_set(rt, seq, 0, 0);
    assert(rt->n_free_seqs <= rt->g.max_seqs);
    return HISA_OK;
}

int hisa__kv_seq_extend(hisa_runtime *rt, int32_t seq, int32_t n) {
    HISA__CHECK(hisa__seq_valid(rt, seq), HISA_ESEQ);
    HISA__CHECK(n >= 0, HISA_EINVAL);
    int64_t len = rt->r.seq_len[seq], new_len = len + n;
    HISA__CHECK(new_len <= rt->g.max_context, HISA_ELIMIT);
    int32_t B = (int32_t)rt->g.block_size;
    int32_t have = hisa__blocks_of(len, B), need = hisa__blocks_of(new_len, B) - have;
    HISA__CHECK(need <= rt->n_free_pages, HISA_EPOOL);
    int32_t *pt = seq_pages(rt, seq);
    for (int32_t i = 0; i < need; i++) {
        int32_t page = rt->r.free_pages[--rt->n_free_pages];
        assert(page >= 0 && page < rt->g.n_pages);
        pt[have + i] = page;
        if (!rt->is_cuda) reset_summary_cpu(rt, page);
    }
    rt->r.seq_len[seq] = (int32_t)new_len;
    int32_t used = (int32_t)rt->g.n_pages - rt->n_free_pages;
    if (used > rt->pages_high_water) rt->pages_high_water = used;
    if (rt->is_cuda) return hisa__cuda_seq_set(rt, seq, have, need);
    return HISA_OK;
}

int hisa__kv_seq_truncate(hisa_runtime *rt, int32_t seq, int32_t len) {
    HISA__CHECK(hisa__seq_valid(rt, seq), HISA_ESEQ);
    HISA__CHECK(len >= 0 && len <= rt->r.seq_len[seq], HISA_ERANGE);
    int32_t B = (int32_t)rt->g.block_size;
    int32_t keep = hisa__blocks_of(len, B), had = hisa__blocks_of(rt->r.seq_len[seq], B);
    int err = release_pages(rt, seq, keep, had);
    if (err) return err;
    rt->r.seq_len[seq] = len;
    /* The new last block, when partial, must summarize only the tokens that remain. */
    int32_t page = (len % B) ? seq_pages(rt, seq)[len / B] : -1;
    if (rt->is_cuda) return hisa__cuda_truncate(rt, seq, len, page);
    if (page >= 0) {
        for (int32_t l = 0; l < rt->g.n_layers; l++) {
            uint32_t *mask = rt->r.block_masks + hisa__summary_index(rt, l, page) * rt->g.mask_words;
            for (int32_t off = len % B; off < B; off++) mask[off / 32] &= ~(1u << (off % 32));
            hisa__cpu_recompute_block(rt, l, page);
        }
    }
    return HISA_OK;
}

/* Validate a write request completely before anything is stored. */
static int write_validate(const hisa_runtime *rt, const hisa_write *req, int32_t range_seq,
                          int32_t range_pos0, int is_range) {
    HISA__CHECK(req != NULL, HISA_EINVAL);
    HISA__CHECK(req->layer >= 0 && req->layer < rt->g.n_layers, HISA_ERANGE);
    HISA__CHECK(req->n_tokens >= 1, HISA_EINVAL);
    HISA__CHECK((req->keys != NULL) != (req->codes != NULL), HISA_EINVAL);
    HISA__CHECK(!req->codes || rt->g.key_format == HISA_KEY_FP8, HISA_EFORMAT);
    HISA__CHECK(!req->codes || req->scales, HISA_EINVAL);
    HISA__CHECK(!req->payload || rt->g.payload_bytes > 0, HISA_EINVAL);
    HISA__CHECK((req->flags & ~HISA_HOST_IO) == 0, HISA_EINVAL);
    if (is_range) {
        HISA__CHECK(req->n_tokens <= rt->g.max_prefill, HISA_ELIMIT);
        HISA__CHECK(hisa__seq_valid(rt, range_seq), HISA_ESEQ);
        HISA__CHECK(range_pos0 >= 0 && (int64_t)range_pos0 + req->n_tokens <= rt->r.seq_len[range_seq],
                    HISA_ERANGE);
    } else {
        HISA__CHECK(req->n_tokens <= rt->g.max_batch, HISA_ELIMIT);
        HISA__CHECK(req->seq_ids != NULL, HISA_EINVAL);
        for (int32_t i = 0; i < req->n_tokens; i++) {
            int32_t seq = req->seq_ids[i];
            HISA__CHECK(hisa__seq_valid(rt, seq), HISA_ESEQ);
            int32_t len = rt->r.seq_len[seq];
            if (req->positions)
                HISA__CHECK(req->positions[i] >= 0 && req->positions[i] < len, HISA_ERANGE);
            else
                HISA__CHECK(len >= 1, HISA_ERANGE);
            for (int32_t j = 0; j < i; j++) HISA__CHECK(req->seq_ids[j] != seq, HISA_EINVAL);
        }
    }
    /* Scales must be positive: the kernels apply them after the ReLU (SPEC). Checkable only
     * where they are in host memory. */
    if (req->codes && (!rt->is_cuda || (req->flags & HISA_HOST_IO)))
        for (int32_t i = 0; i < req->n_tokens; i++)
            HISA__CHECK(req->scales[i] > 0.0f && req->scales[i] < 3.0e38f, HISA_EINVAL);
    return HISA_OK;
}

int hisa__kv_write(hisa_runtime *rt, const hisa_write *req, int32_t range_seq, int32_t range_pos0,
                   int is_range) {
    int err = write_validate(rt, req, range_seq, range_pos0, is_range);
    if (err) return err;
    if (rt->is_cuda) return hisa__cuda_write(rt, req, range_seq, range_pos0, is_range);
    int64_t pb = rt->g.payload_bytes;
    for (int32_t i = 0; i < req->n_tokens; i++) {
        int32_t seq = is_range ? range_seq : req->seq_ids[i];
        int32_t pos = is_range ? range_pos0 + i
                               : (req->positions ? req->positions[i] : rt->r.seq_len[seq] - 1);
        hisa__cpu_write_token(rt, req->layer, seq, pos, req->keys ? req->keys + (int64_t)i * HISA_D : NULL,
                              req->codes ? req->codes + (int64_t)i * HISA_D : NULL,
                              req->codes ? req->scales + i : NULL,
                              req->payload ? (const uint8_t *)req->payload + i * pb : NULL);
    }
    return HISA_OK;
}
