/* kernels.h: the plain-C face of hisa's CUDA kernels. Host code (C11) includes only this.
 *
 * Every launcher takes an explicit cudaStream_t (as void *), a params struct passed by value to
 * the kernel (so a launch captured in a CUDA graph replays the same arguments), returns 0 or a
 * negative code (the values of hisa.h's, below), and rejects sizes over the caps of
 * kvcache/limits.h. Launchers never allocate and never synchronize. Every kernel has a C twin
 * (kvcache/host.c for the cache, runtime/cpu_backend.c for selection) that defines what it must
 * compute (docs/SPEC.md). The cache's bytes are kvcache/layout.h's; page_table and seq_len are
 * the device mirror of the host's tables, updated only by hisa_k_seq_set / hisa_k_truncate in
 * stream order. */
#ifndef HISA_KERNELS_H
#define HISA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "../kvcache/layout.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Launcher results: the values of hisa.h's HISA_OK / EINVAL / ELIMIT / EDEVICE (internal.h
 * asserts it). Modes: hisa_mode's values. */
#define HISA_K_OK 0
#define HISA_K_EINVAL (-1)
#define HISA_K_ELIMIT (-12)
#define HISA_K_EDEVICE (-6)
#define HISA_K_EUNSUPPORTED (-16) /* the device has no code for this (prefill, the Hopper scorer) */
#define HISA_K_MODE_HISA 0
#define HISA_K_MODE_FLAT 1
/* Query formats: hisa.h's HISA_Q_F32 / BF16 / FP8; queries per sequence in a decode call. */
#define HISA_K_Q_F32 0
#define HISA_K_Q_BF16 1
#define HISA_K_Q_FP8 2
#define HISA_K_NEXT_N_MAX 4

/* Decode scorer paths (hisa.h's HISA_KERNELS_*): AUTO is resolved by hisa_k_init. */
#define HISA_K_PATH_AUTO 0
#define HISA_K_PATH_PORTABLE 1
#define HISA_K_PATH_HOPPER 2

/* The device, read once per runtime at open by hisa_k_init: what the launchers size grids by. */
typedef struct hisa_k_device {
    int32_t ordinal;
    int32_t path;                     /* in: HISA_K_PATH_*; out: PORTABLE or HOPPER */
    int32_t sm_count;
    int32_t cc_major, cc_minor;
    int32_t hopper;                   /* out: 1 when the loaded kernels are Hopper code (wgmma, bulk
                                         copies, programmatic dependent launch); 0 on other GPUs
                                         (the sm_80 / compute_80 build): decode only, portable */
    /* decode scoring kernel CTAs per SM: [HISA_K_SCORER_*][heads / 16 - 1]; 0 where that many
     * heads' tiles do not fit the device's shared memory per block */
    int32_t score_ctas_per_sm[3][HISA_HEADS_MAX / 16];
    /* the Hopper scorer's CTAs per SM: [exact fp16, e4m3][N = 16, 32, 64, 128 padded heads] */
    int32_t wg_ctas_per_sm[2][4];
    int32_t all_portable;             /* out: 1 when only the portable kernels run (no Hopper image, or
                                         PORTABLE asked for): prefill on the decode kernels
                                         (hisa_k_select with chunk = 1), no e4m3 decode */
} hisa_k_device;

/* The decode scorers (score_ctas_per_sm's rows): fp8 keys, bf16 keys, block means. */
enum { HISA_K_SCORER_FP8 = 0, HISA_K_SCORER_BF16 = 1, HISA_K_SCORER_MEANS = 2 };

/* 1 when decode with n_heads heads of key_format (HISA__FMT_*) fits dev: the keys' scorer and the
 * block-mean scorer (HISA mode) both have room for that many heads' tiles. After hisa_k_init. */
static inline int hisa_k_decode_fits(const hisa_k_device *dev, int32_t n_heads, int32_t key_format) {
    const int32_t t = (n_heads + 15) / 16 - 1;
    const int keys = key_format == HISA__FMT_FP8 ? HISA_K_SCORER_FP8 : HISA_K_SCORER_BF16;
    return t >= 0 && t < HISA_HEADS_MAX / 16 && dev->score_ctas_per_sm[keys][t] > 0 &&
           dev->score_ctas_per_sm[HISA_K_SCORER_MEANS][t] > 0;
}

typedef struct hisa_k_cache {
    uint8_t *keys;         /* [n_layers, n_pages, page_bytes] */
    float *sums;           /* [n_layers, max_seqs, 128] running sum of each sequence's last-written block */
    int32_t *sum_pages;    /* [n_layers, max_seqs] the page each running sum belongs to, -1 none */
    uint16_t *means;       /* [n_layers, n_pages, 128] bf16 bits */
    uint32_t *masks;       /* [n_layers, n_pages, B / 32] */
    uint8_t *payload;      /* [n_layers, n_pages * B, payload_bytes] or NULL */
    int32_t *page_table;   /* [max_seqs, pages_per_seq] */
    int32_t *seq_len;      /* [max_seqs] */
    int64_t page_bytes;
    int32_t n_layers, n_pages, block_size, key_format; /* key_format: HISA_KEY_FP8 / _BF16 */
    int32_t payload_bytes, max_seqs, pages_per_seq, n_heads;
} hisa_k_cache;

/* --- cache state --------------------------------------------------------------------------- */

#define HISA_K_SEQ_SET_PAGES 512 /* page-table entries per hisa_k_seq_set launch */

/* seq_len[seq] = len; page_table[seq][first_index + i] = pages[i] for i < n_pages_new; the
 * summaries of those fresh pages (all layers) reset: means 0, masks 0; when len is 0, seq's
 * running sums forgotten (sum_pages -1). */
typedef struct hisa_k_seq_set_params {
    hisa_k_cache cache;
    int32_t seq, len;
    int32_t first_index, n_pages_new;       /* n_pages_new <= HISA_K_SEQ_SET_PAGES */
    int32_t fresh;                          /* 1: the pages are new (summaries cleared); 0: shared */
    int32_t pages[HISA_K_SEQ_SET_PAGES];    /* [n_pages_new] */
} hisa_k_seq_set_params;
int hisa_k_seq_set(void *stream, const hisa_k_seq_set_params *p);

/* Rollback to len: in page `page` (the block holding position len - 1, when len % B != 0),
 * clear mask bits of offsets >= len % B and recompute the block's sum into seq's running sum
 * (sum_pages = page, or -1 without a page) and its mean, for every layer; seq_len[seq] = len. */
typedef struct hisa_k_truncate_params {
    hisa_k_cache cache;
    int32_t seq, len;
    int32_t page;          /* -1 when len % B == 0: no block to recompute */
} hisa_k_truncate_params;
int hisa_k_truncate(void *stream, const hisa_k_truncate_params *p);

/* A sequence's own copy of a page (a fork's partial last page, or a truncate into a shared one):
 * in every layer, dst gets src's keys, payload rows and mask bits of offsets < keep (1..B), its
 * summary recomputed from them, and seq's running sum becomes dst's (sum_pages = dst). */
typedef struct hisa_k_copy_page_params {
    hisa_k_cache cache;
    int32_t seq, src, dst, keep;
} hisa_k_copy_page_params;
int hisa_k_copy_page(void *stream, const hisa_k_copy_page_params *p);

/* Write keys: quantize (or copy fp8 codes + scales), store, and update the block's mask, mean
 * and the sequence's running sum by the rule of layout.h (kvcache/host.c is the twin).
 * Two shapes: a batch of one token per distinct sequence (position -1 = seq_len - 1, read on the
 * device, so a captured graph appends at the growing end), or a contiguous range of one sequence
 * (one CTA per page touched; tokens summed in position order). */
typedef struct hisa_k_write_params {
    hisa_k_cache cache;
    int32_t layer;
    int32_t is_range;                  /* 0: batch, 1: range */
    int32_t n_tokens;                  /* batch: <= HISA_BATCH_MAX; range: <= HISA_PREFILL_MAX */
    int32_t range_seq, range_pos0;     /* range */
    int32_t seq_ids[HISA_BATCH_MAX];   /* batch: [n_tokens] */
    int32_t positions[HISA_BATCH_MAX]; /* batch: [n_tokens], -1 = last */
    const float *keys;                 /* [n_tokens, 128] fp32, or NULL */
    const uint16_t *keys_bf16;         /* [n_tokens, 128] bf16 bits, or NULL (one of keys, keys_bf16, codes) */
    const uint8_t *codes;              /* [n_tokens, 128], or NULL */
    const float *scales;               /* [n_tokens] */
    const uint8_t *payload;            /* [n_tokens, payload_bytes], or NULL */
} hisa_k_write_params;
int hisa_k_write(void *stream, const hisa_k_write_params *p);

/* --- selection ----------------------------------------------------------------------------- */

/* Scratch carved from the arena at open, sized by hisa_k_scratch_bytes for rows queries at once
 * (rows = max(max_batch, max_prefill_queries)). Plain C so the plan needs no nvcc; this function
 * is the single source of truth for the layout the kernels assume.
 *
 * work, per row (hisa_k_work_row_words(max_context) u32): a histogram of the top HISA_K_HIST_BITS
 * bits of the order-preserving score keys (filled by the scoring kernels), a header of counters,
 * a second histogram (the next 11 bits, of the entries in the threshold bin), then up to
 * hisa_k_cand_cap(max_context) (key, index) candidate pairs. The top-k's last CTA of a row zeroes
 * the histograms and counters again, so they are all zero between calls. */
#define HISA_K_HIST_BITS 11
#define HISA_K_HIST_BINS (1 << HISA_K_HIST_BITS)
#define HISA_K_WORK_HDR_WORDS 64
#define HISA_K_ROWS_PER_LAUNCH 256 /* rows per launch group (a decode batch is one group) */

/* Candidates kept per row (entries in the threshold bin); more than this and the top-k rescans
 * the row's scores instead (correct, slower). */
static inline int64_t hisa_k_cand_cap(int64_t max_context) {
    int64_t c = max_context / 2; /* scores cluster: a quarter-octave bin can hold a third of a row */
    return c < 4096 ? 4096 : (c > 65536 ? 65536 : c);
}
static inline int64_t hisa_k_work_row_words(int64_t max_context) {
    return 2 * HISA_K_HIST_BINS + HISA_K_WORK_HDR_WORDS + 2 * hisa_k_cand_cap(max_context);
}

typedef struct hisa_k_scratch {
    float *scores;         /* [rows, max_context]  token scores (flat) or candidate scores (hisa) */
    float *block_scores;   /* [rows, pages_per_seq] */
    int32_t *blocks;       /* [rows, top_blocks] kept block indices, ascending */
    uint32_t *work;        /* [rows, hisa_k_work_row_words(max_context)], zero between calls */
    int64_t work_words;
} hisa_k_scratch;

typedef struct hisa_k_scratch_sizes {
    uint64_t scores_bytes, block_scores_bytes, blocks_bytes, work_bytes;
} hisa_k_scratch_sizes;

static inline hisa_k_scratch_sizes hisa_k_scratch_bytes(int64_t rows, int64_t max_context,
                                                        int64_t pages_per_seq, int64_t top_blocks) {
    hisa_k_scratch_sizes s;
    s.scores_bytes = (uint64_t)(rows * max_context * 4);
    s.block_scores_bytes = (uint64_t)(rows * pages_per_seq * 4);
    s.blocks_bytes = (uint64_t)(rows * top_blocks * 4);
    s.work_bytes = (uint64_t)(rows * hisa_k_work_row_words(max_context) * 4);
    return s;
}

/* Per runtime, at open, with dev->ordinal current: read the device (compute capability 8.0 or
 * newer, else HISA_K_EINVAL), find whether its kernels are Hopper code (dev->hopper; a HOPPER
 * path without it: HISA_K_EUNSUPPORTED), raise the kernels' dynamic shared-memory limits on it,
 * and fill *dev. Not a stream operation; the only call here that queries the device. */
int hisa_k_init(hisa_k_device *dev);

/* The prefill chunks of one launch (hisa_k_prefill, and hisa_k_select with chunk = 1): chunk c
 * is the queries at positions t0[c] .. t0[c] + n_q - 1 of sequence seq[c], n_q = row0[c + 1] -
 * row0[c] >= 1, and they are rows row0[c] .. row0[c + 1] - 1 of q, w, out and the scratch
 * (row0[0] = 0: the chunks' queries concatenated in chunk order). Kernel parameters are passed by
 * value, so a launch holds at most HISA_K_CHUNKS_MAX chunks; a call with more runs as several
 * launches (runtime/cuda_backend.c). The launchers check every field. */
#define HISA_K_CHUNKS_MAX 64
typedef struct hisa_k_chunks {
    int32_t n;                           /* 1..HISA_K_CHUNKS_MAX */
    int32_t seq[HISA_K_CHUNKS_MAX];      /* [n] */
    int32_t t0[HISA_K_CHUNKS_MAX];       /* [n] */
    int32_t row0[HISA_K_CHUNKS_MAX + 1]; /* [n + 1], strictly increasing from 0; row0[n] is the launch's rows */
} hisa_k_chunks;

/* Decode selection for n_rows queries: row r is the query of seq_ids[r] at t = seq_len - 1, read
 * on the device (so a captured graph follows growing sequences). With chunk = 1 the rows are
 * prefill chunks instead (chunks; n_rows = chunks.row0[chunks.n] up to HISA_PREFILL_MAX): the
 * portable prefill, for devices without the Hopper image or when dev.all_portable says so;
 * hisa_k_prefill below is the Hopper one. Rows with n <= k get
 * 0..n-1; flat rows and HISA rows with nb <= m score
 * every token; HISA rows with nb > m score block means, keep blocks 0, last and the best m-2,
 * then score only the kept blocks' tokens. Output [n_rows, topk], -1 padded. 4 launches (HISA)
 * or 2 (flat) per 256 rows, no allocation, no host sync; the token scorer is dev.path's
 * (PORTABLE mma.sync, or HOPPER wgmma + bulk copies for fp8 keys); the kept blocks of row r are left in
 * scratch.blocks[r] (tests read them). */
typedef struct hisa_k_select_params {
    hisa_k_cache cache;
    hisa_k_scratch scratch;
    int32_t layer;
    int32_t mode;                     /* HISA_MODE_HISA (0) / HISA_MODE_FLAT (1) */
    int32_t top_blocks, topk;         /* m, k */
    int32_t out_slots;                /* 1: page * B + offset */
    int32_t n_rows;                   /* queries: n_seqs * next_n */
    int32_t seq_ids[HISA_BATCH_MAX];  /* [n_rows / next_n] */
    const void *q;                    /* [n_rows, H, 128] in q_format */
    int32_t q_format;                 /* HISA_K_Q_* */
    int32_t next_n;                   /* queries per sequence: row r is query r % next_n of seq_ids[r / next_n] */
    const float *w;                   /* [n_rows, H] fp32 */
    int32_t *out;                     /* [n_rows, topk] */
    int32_t max_context;              /* scratch row stride of scores */
    hisa_k_device dev;                /* read once at open (hisa_k_init) */
    int32_t scratch_rows;             /* rows the scratch holds (>= n_rows) */
    int32_t chunk;                    /* 0: decode rows; 1: the prefill chunks below (next_n 1) */
    hisa_k_chunks chunks;             /* chunk: t0 + n_q <= max_context each, and the caller sees to
                                         t0 + n_q <= seq_len with every key below written (the
                                         runtime's checks) */
    int32_t stop_after_scoring;       /* benchmarks, tests: no token top-k (out untouched; scores and
                                         kept blocks left in scratch) */
    int32_t fp8_native;               /* fp8 queries over fp8 keys: 1 e4m3 x e4m3 on the Hopper scorer
                                         (HISA_FP8_MMA_NATIVE), unless dev.all_portable: exact */
} hisa_k_select_params;
int hisa_k_select(void *stream, const hisa_k_select_params *p);

/* The top-k alone (benchmarks, tests): for each of n_rows rows of scores (row stride `stride`
 * floats, n entries each), the k largest by the SPEC order (NaN lowest, ties to the lower
 * index), written as indices into out [n_rows, k] (-1 padded when n < k). work as above. */
typedef struct hisa_k_topk_params {
    const float *scores;
    int64_t stride;
    int32_t n, k, n_rows;
    uint32_t *work;                   /* [n_rows, hisa_k_work_row_words(n)], zero between calls */
    int32_t *out;
    hisa_k_device dev;                /* read once at open (hisa_k_init) */
} hisa_k_topk_params;
int hisa_k_topk(void *stream, const hisa_k_topk_params *p);

/* The read-bandwidth probe (benchmarks): read every byte of buf [bytes] once, 16 bytes at a time
 * (bytes a multiple of 16, buf 16-byte aligned); *sum (device, zeroed by the launch) gets the
 * wrapping sum of its 32-bit words. */
typedef struct hisa_k_read_probe_params {
    const void *buf;
    uint64_t bytes;
    unsigned long long *sum;
    hisa_k_device dev;
} hisa_k_read_probe_params;
int hisa_k_read_probe(void *stream, const hisa_k_read_probe_params *p);

/* --- prefill: chunked causal selection on tensor cores (kernels/prefill.cu, issue 4) ------- */

/* Selection for the queries of up to HISA_K_CHUNKS_MAX chunks (chunks: n_q queries at t0 ..
 * t0+n_q-1 of a sequence each), in one launch chain for all of them; each query sees positions
 * <= its own t (SPEC). Each chunk's rows are partitioned by t: n <= k (all positions), flat (FLAT mode, or HISA
 * with nb <= m: every visible token scored) and HISA (nb > m: block means scored, m blocks
 * kept per row into scratch.blocks ascending, their tokens scored). Scoring is a wgmma GEMM with
 * tokens (or blocks, or candidates) as M, query-heads as N and the 128 dims as K; top-k per row.
 * Rows of one class (flat, HISA, ...) of every chunk share each kernel's grid.
 * Scratch used: scores [rows, stride max_context], block_scores [rows, pages_per_seq],
 * blocks [rows, top_blocks]; work is not touched. Up to 6 launches, no allocation, no sync.
 * Requires the Hopper image (dev.hopper; else HISA_K_EUNSUPPORTED; hisa_k_select's chunk rows are
 * the portable prefill). stop_after_scoring (benchmarks, tests) skips the final top-k: out
 * untouched, scores and blocks left in scratch. */
typedef struct hisa_k_prefill_params {
    hisa_k_cache cache;
    hisa_k_scratch scratch;
    int32_t layer;
    int32_t mode;                     /* HISA_MODE_HISA (0) / HISA_MODE_FLAT (1) */
    int32_t top_blocks, topk;         /* m, k; (m - 1) * B >= k */
    int32_t out_slots;                /* 1: page * B + offset */
    hisa_k_chunks chunks;             /* rows = chunks.row0[chunks.n] <= HISA_PREFILL_MAX, <= scratch_rows;
                                         t0 + n_q <= max_context each */
    const void *q;                    /* [rows, H, 128] in q_format, device */
    int32_t q_format;                 /* HISA_K_Q_* */
    const float *w;                   /* [rows, H] fp32, device */
    int32_t *out;                     /* [rows, topk] int32, device */
    int32_t max_context;              /* row stride of scratch.scores */
    int32_t scratch_rows;             /* rows the scratch holds */
    int32_t stop_after_scoring;       /* 0 normally */
    hisa_k_device dev;                /* read once at open (hisa_k_init) */
    int32_t fp8_native;               /* fp8 queries and keys: 1 e4m3 x e4m3 (HISA_FP8_MMA_NATIVE) */
    int32_t variant;                  /* fp8 keys scored exactly: 0 fp16 operands (default), 1 bf16 */
} hisa_k_prefill_params;
int hisa_k_prefill(void *stream, const hisa_k_prefill_params *p);

#ifdef __cplusplus
}
#endif
#endif /* HISA_KERNELS_H */
