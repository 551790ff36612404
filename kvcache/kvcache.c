/* kvcache.c: the paged key cache's state machine: page pool, sequence tables, and the order in
 * which their changes reach the backend.
 *
 * One page = one HISA block of B tokens, shared by all layers. The host tables are the truth;
 * every change is handed to the backend (kv->ops) in the order it happens, so a CUDA backend's
 * mirrors, and graph replays reading them, see the state of their own step.
 *
 * Invariants: a page is either on the free stack (page_refs 0) or held by page_refs[page] >= 1
 * open sequences, at page_table[seq][i] for i < ceil(len / B); entries past that are -1. A page
 * held by several (a fork's shared prefix) is complete and read-only; it returns to the pool
 * when its last holder lets go. Callers validate (api.c),
 * so every function here starts from valid input (asserted) and changes the host tables only
 * after the backend accepted the change, or poisoned the runtime trying. */
#include "kvcache.h"

#include <assert.h>
#include <string.h>

void hisa__kv_init(hisa__kv *kv) {
    assert(kv && kv->free_pages && kv->free_seqs && kv->ops);
    /* Stacks pop from the end: push in reverse so the first pages handed out are 0, 1, 2... */
    for (int32_t i = 0; i < kv->n_pages; i++) kv->free_pages[i] = kv->n_pages - 1 - i;
    kv->n_free_pages = kv->n_pages;
    for (int32_t i = 0; i < kv->max_seqs; i++) kv->free_seqs[i] = kv->max_seqs - 1 - i;
    kv->n_free_seqs = kv->max_seqs;
    memset(kv->page_table, 0xff, (size_t)kv->max_seqs * (size_t)kv->pages_per_seq * sizeof(int32_t));
    assert(kv->n_free_pages >= 1 && kv->n_free_seqs >= 1);
}

int hisa__kv_seq_open(hisa__kv *kv, int32_t *seq_out) {
    assert(kv->n_free_seqs > 0 && seq_out);
    int32_t seq = kv->free_seqs[kv->n_free_seqs - 1];
    assert(!kv->seq_is_open[seq] && kv->seq_len[seq] == 0);
    int err = kv->ops->seq_set(kv->be, seq, 0, 0, 1); /* length 0: running sums forgotten */
    if (err) return err;
    kv->n_free_seqs--;
    kv->seq_is_open[seq] = 1;
    int32_t open = kv->max_seqs - kv->n_free_seqs;
    if (open > kv->seqs_high_water) kv->seqs_high_water = open;
    *seq_out = seq;
    return 0;
}

/* Let go of pages [from, to) of seq, last first; a page nobody else holds returns to the free
 * stack (so a close followed by an extend reuses the same pages in the same order). */
static int release_pages(hisa__kv *kv, int32_t seq, int32_t from, int32_t to) {
    int32_t *pt = hisa__kv_pages(kv, seq);
    assert(from >= 0 && to <= kv->pages_per_seq);
    for (int32_t i = to - 1; i >= from; i--) {
        assert(kv->n_free_pages < kv->n_pages && pt[i] >= 0 && kv->page_refs[pt[i]] >= 1);
        if (--kv->page_refs[pt[i]] > 0) { /* still held by another sequence */
            pt[i] = -1;
            continue;
        }
#ifndef NDEBUG
        int err = kv->ops->poison_page(kv->be, pt[i]);
        if (err) return err;
#endif
        kv->free_pages[kv->n_free_pages++] = pt[i];
        pt[i] = -1;
    }
    return 0;
}

int hisa__kv_seq_close(hisa__kv *kv, int32_t seq) {
    assert(hisa__kv_seq_valid(kv, seq));
    int err = release_pages(kv, seq, 0, hisa__blocks_of(kv->seq_len[seq], kv->block_size));
    if (err) return err;
    kv->seq_len[seq] = 0;
    kv->seq_is_open[seq] = 0;
    kv->free_seqs[kv->n_free_seqs++] = seq;
    assert(kv->n_free_seqs <= kv->max_seqs);
    return kv->ops->seq_set(kv->be, seq, 0, 0, 1);
}

int hisa__kv_seq_extend(hisa__kv *kv, int32_t seq, int32_t n) {
    assert(hisa__kv_seq_valid(kv, seq) && n >= 0);
    int64_t new_len = (int64_t)kv->seq_len[seq] + n;
    int32_t have = hisa__blocks_of(kv->seq_len[seq], kv->block_size);
    int32_t need = hisa__kv_pages_needed(kv, seq, new_len);
    assert(new_len <= kv->max_context && need <= kv->n_free_pages);
    int32_t *pt = hisa__kv_pages(kv, seq);
    for (int32_t i = 0; i < need; i++) {
        pt[have + i] = kv->free_pages[--kv->n_free_pages];
        kv->page_refs[pt[have + i]] = 1;
    }
    kv->seq_len[seq] = (int32_t)new_len;
    int32_t used = kv->n_pages - kv->n_free_pages;
    if (used > kv->pages_high_water) kv->pages_high_water = used;
    return kv->ops->seq_set(kv->be, seq, have, need, 1);
}

static int32_t take_page(hisa__kv *kv) {
    assert(kv->n_free_pages > 0);
    int32_t page = kv->free_pages[--kv->n_free_pages];
    assert(kv->page_refs[page] == 0);
    kv->page_refs[page] = 1;
    int32_t used = kv->n_pages - kv->n_free_pages;
    if (used > kv->pages_high_water) kv->pages_high_water = used;
    return page;
}

int hisa__kv_seq_truncate(hisa__kv *kv, int32_t seq, int32_t len) {
    assert(hisa__kv_seq_valid(kv, seq) && len >= 0 && len <= kv->seq_len[seq]);
    assert(hisa__kv_truncate_pages(kv, seq, len) <= kv->n_free_pages);
    int32_t B = kv->block_size, *pt = hisa__kv_pages(kv, seq), own = hisa__kv_truncate_pages(kv, seq, len);
    int err = release_pages(kv, seq, hisa__blocks_of(len, B), hisa__blocks_of(kv->seq_len[seq], B));
    if (err) return err;
    kv->seq_len[seq] = len;
    if (own) { /* the new last block is shared: this sequence continues on its own copy */
        int32_t shared = pt[len / B];
        kv->page_refs[shared]--;
        pt[len / B] = take_page(kv);
        err = kv->ops->seq_set(kv->be, seq, len / B, 1, 0);
        return err ? err : kv->ops->copy_page(kv->be, seq, shared, pt[len / B], len % B);
    }
    /* The new last block, when partial, must summarize only the tokens that remain. */
    return kv->ops->truncate(kv->be, seq, (len % B) ? pt[len / B] : -1);
}

int hisa__kv_seq_fork(hisa__kv *kv, int32_t parent, int32_t len, int32_t *child_out) {
    int32_t B = kv->block_size, full = len / B, partial = (len % B) != 0;
    assert(hisa__kv_seq_valid(kv, parent) && len >= 0 && len <= kv->seq_len[parent] && child_out);
    assert(kv->n_free_seqs > 0 && partial <= kv->n_free_pages);
    int32_t child = kv->free_seqs[--kv->n_free_seqs];
    const int32_t *pp = hisa__kv_pages(kv, parent);
    int32_t *cp = hisa__kv_pages(kv, child);
    assert(!kv->seq_is_open[child] && kv->seq_len[child] == 0);
    for (int32_t i = 0; i < full; i++) {
        cp[i] = pp[i];
        kv->page_refs[pp[i]]++;
    }
    if (partial) cp[full] = take_page(kv);
    kv->seq_is_open[child] = 1;
    kv->seq_len[child] = len;
    int32_t open = kv->max_seqs - kv->n_free_seqs;
    if (open > kv->seqs_high_water) kv->seqs_high_water = open;
    *child_out = child;
    int err = kv->ops->seq_set(kv->be, child, 0, full + partial, 0);
    return err || !partial ? err : kv->ops->copy_page(kv->be, child, pp[full], cp[full], len % B);
}
