/* hisa.h: the one public header of hisa, the HISA hierarchical sparse-attention indexer.
 *
 * HISA (arXiv 2603.28458) selects, for every query, the top-k past tokens that DeepSeek Sparse
 * Attention's lightning indexer would pick, I(s) = sum_h w[h] * ReLU(q[h] . k_s), in two stages:
 * score one mean key per block of B tokens, keep the m best blocks (block 0 and the query's own
 * block always), then score only the tokens of those blocks. docs/SPEC.md is the contract.
 *
 * Memory: every byte is planned from the configuration (hisa_plan) and reserved once at open.
 * Nothing is allocated afterwards. Threading: one runtime is used by one thread at a time;
 * separate runtimes (on one GPU or several) share no state and may run on separate threads.
 * Errors: 0 is success, a negative HISA_E* code is failure and leaves all state unchanged
 * (except HISA_EDEVICE, which poisons the runtime: every later call fails with HISA_EPOISONED).
 *
 * Memory spaces: for a CUDA runtime the tensor pointers of hisa_write / hisa_decode /
 * hisa_prefill are device pointers read and written on the runtime's stream (no host sync, so
 * a decode step can be captured in a CUDA graph), unless the request sets HISA_HOST_IO: then
 * they are host pointers, staged through the arena, and the call returns when the results are
 * in host memory. For a CPU runtime every pointer is a host pointer. Sequence ids and
 * positions are always host arrays. A device q is read 4 elements at a time: it must be aligned
 * to 4 of its elements (16 bytes for f32, 8 for bf16, 4 for fp8; cudaMalloc and torch
 * allocations are, a slice must start on such a boundary); other device pointers to their
 * element size. */
#ifndef HISA_H
#define HISA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HISA_VERSION_MAJOR 0
#define HISA_VERSION_MINOR 1
#define HISA_VERSION_PATCH 0

#define HISA_HEAD_DIM 128 /* D: the only head size (DeepSeek-V3.2, GLM-5) */

/* The limits a configuration or a call can hit (hisa_config fields, call sizes). */
#define HISA_MAX_HEADS 128             /* n_heads */
#define HISA_MAX_BATCH 256             /* max_batch: sequences per hisa_write_keys / decode call */
#define HISA_MAX_PREFILL_QUERIES 16384 /* max_prefill_queries: tokens per range write, queries per prefill */
#define HISA_MAX_CONTEXT (1 << 24)     /* max_context: tokens per sequence */
#define HISA_MAX_TOPK 16384            /* topk */
#define HISA_MAX_TOP_BLOCKS 1024       /* top_blocks */

/* Error codes. hisa_strerror() names them. */
enum {
    HISA_OK = 0,
    HISA_EINVAL = -1,     /* null pointer, or an argument outside its domain */
    HISA_ECONFIG = -2,    /* invalid configuration; hisa_plan.invalid_field / invalid_rule say why */
    HISA_EOVERFLOW = -3,  /* the configuration's byte counts overflow 64 bits */
    HISA_ENOMEM = -4,     /* reserving the arena failed, or caller memory is too small */
    HISA_ENODEVICE = -5,  /* no CUDA device, or hisa was built without CUDA */
    HISA_EDEVICE = -6,    /* a CUDA call failed; the runtime is poisoned */
    HISA_EPOISONED = -7,  /* an earlier HISA_EDEVICE poisoned this runtime; close it */
    HISA_ESEQ = -8,       /* unknown or closed sequence id */
    HISA_ESEQFULL = -9,   /* max_seqs sequences are open */
    HISA_EPOOL = -10,     /* the page pool has too few free pages */
    HISA_ERANGE = -11,    /* layer, position or length out of range */
    HISA_ELIMIT = -12,    /* a batch, chunk or context over the configured maximum */
    HISA_EFORMAT = -13,   /* key data in the wrong format for this runtime */
    HISA_EUNWRITTEN = -14, /* selection over a position whose key was never written (CPU) */
    HISA_ESHARED = -15,    /* a write into a page that several sequences share (hisa_seq_fork) */
    HISA_EUNSUPPORTED = -16 /* the device cannot run this (kept for the ABI: since every CUDA device
                               prefills, on the portable kernels where it lacks Hopper's, no call returns it) */
};

/* Key storage formats (SPEC "Keys"). 0 picks the default, fp8. */
enum { HISA_KEY_DEFAULT = 0, HISA_KEY_FP8 = 1, HISA_KEY_BF16 = 2 };

/* Query formats (SPEC "Queries"): q of hisa_decode / hisa_prefill is [.., H, 128] of
 *   HISA_Q_F32: float, rounded to bf16 (nearest even) before use (the default);
 *   HISA_Q_BF16: uint16 bf16 bits, used as given;
 *   HISA_Q_FP8: uint8 e4m3fn codes, each query value the code's value; the per-head scale is
 *     already folded into w (DeepSeek-V3.2's act_quant; DeepGEMM's fp8_mqa_logits input). */
enum { HISA_Q_F32 = 0, HISA_Q_BF16 = 1, HISA_Q_FP8 = 2 };

/* Queries per sequence in one decode call (speculative decoding, multi-token prediction). */
#define HISA_NEXT_N_MAX 4

/* Selection modes. */
typedef enum { HISA_MODE_HISA = 0, HISA_MODE_FLAT = 1 } hisa_mode;

/* CUDA decode scorer, chosen at open. AUTO takes the one measured fastest on the device (today the
 * mma.sync scorer on Hopper too: bench/NOTES-decode.md); PORTABLE forces the mma.sync scorer (the
 * path for GPUs without wgmma/TMA) for decode and for prefill, whose queries it then takes as
 * rows of their own positions (on Hopper, AUTO and HOPPER prefill on the wgmma kernels); HOPPER
 * forces the warpgroup-MMA scorer fed by bulk copies (fp8 keys; compute capability 9.x, else
 * hisa_open fails with HISA_ENODEVICE). Tests run both on one Hopper GPU. The CPU backend ignores
 * it. CUDA devices of compute capability 8.0 and newer open; those other than Hopper run decode
 * and prefill on the portable kernels. */
enum { HISA_KERNELS_AUTO = 0, HISA_KERNELS_PORTABLE = 1, HISA_KERNELS_HOPPER = 2 };

/* CUDA arithmetic for fp8 queries over fp8 keys, chosen at open.
 * EXACT (the default): the codes go to the tensor cores as fp16 (exact); products and sums are
 *   the SPEC formula's up to fp32 rounding (measured: 1.5e-7 of max |I|), so selections agree
 *   with the CPU reference under SPEC's rule.
 * NATIVE: e4m3 x e4m3 tensor cores, the arithmetic of DeepGEMM's fp8_mqa_logits: the codes as
 *   they sit in the pages, half the MMA instructions and no conversion (prefill ~1.2x faster on
 *   an H200; decode scores them on the Hopper scorer, whichever `kernels` AUTO picks). Hopper's
 *   fp8 MMA keeps about 13 fraction bits while it accumulates, so a score can be off by
 *   ~1e-4 of max |I| (measured: up to 1.5e-4), as much as SPEC's agreement eps: near ties may
 *   select otherwise than the reference would. Outside SPEC's rule; opt in knowingly.
 * The portable kernels (HISA_KERNELS_PORTABLE, GPUs other than Hopper), bf16 / f32 queries,
 * bf16 keys, block means and the CPU backend always compute exactly. */
enum { HISA_FP8_MMA_EXACT = 0, HISA_FP8_MMA_NATIVE = 1 };

/* Devices: 0 (the default) is the CPU reference backend; HISA_DEVICE_CUDA(i) is CUDA device i. */
#define HISA_DEVICE_CPU 0
#define HISA_DEVICE_CUDA(ordinal) ((ordinal) + 1)

/* Request flags. */
#define HISA_HOST_IO 1u /* tensor pointers are host memory (staged; the call synchronizes) */
#define HISA_SLOTS 2u   /* write physical slots page * B + offset instead of positions */

/* Configuration. Fill with designated initializers; a field left 0 takes its default. */
typedef struct hisa_config {
    int32_t n_layers;            /* indexer layers sharing one page table; default 1 */
    int32_t n_heads;             /* H indexer heads, 1..128; default 64 */
    int32_t head_dim;            /* D, must be 128; default 128 */
    int32_t block_size;          /* B tokens per HISA block = per page: 32, 64, 128, 256; default 128 */
    int32_t top_blocks;          /* m blocks kept by the coarse stage, >= 2; default 64 */
    int32_t topk;                /* k tokens selected per query; default 2048 */
    int32_t key_format;          /* HISA_KEY_FP8 (default) or HISA_KEY_BF16 */
    int32_t payload_bytes;       /* opaque bytes per token per layer (latent KV); default 0, none */
    int32_t max_seqs;            /* sequences open at once; default 8 */
    int32_t max_context;         /* tokens per sequence; default 131072 */
    int32_t n_pages;             /* pages in the pool; default max_seqs * ceil(max_context / B) */
    int32_t max_batch;           /* sequences per hisa_write / hisa_decode call; default min(max_seqs, 256) */
    int32_t max_prefill_queries; /* tokens per hisa_write_range, queries per hisa_prefill; default min(max_context, 1024) */
    int32_t device;              /* HISA_DEVICE_CPU (default) or HISA_DEVICE_CUDA(ordinal) */
    int32_t kernels;             /* CUDA kernels (decode scorer, prefill path): HISA_KERNELS_AUTO (default), _PORTABLE or _HOPPER */
    int32_t fp8_mma;             /* CUDA, fp8 queries: HISA_FP8_MMA_EXACT (default) or _NATIVE */
} hisa_config;

/* The memory plan: named regions carved from two reservations. */
#define HISA_PLAN_REGIONS_MAX 40
typedef struct hisa_region {
    const char *name;   /* static string, e.g. "keys" */
    uint64_t offset;    /* from the start of its arena */
    uint64_t bytes;
    uint32_t align;
    int32_t on_device;  /* 1: device arena (GPU memory, or host memory for the CPU backend); 0: host arena */
} hisa_region;

typedef struct hisa_plan {
    hisa_config config;           /* resolved: every default filled in */
    const char *invalid_field;    /* on HISA_ECONFIG / HISA_EOVERFLOW: the offending field */
    const char *invalid_rule;     /* and the rule it broke, e.g. "(top_blocks - 1) * block_size >= topk" */
    int32_t n_regions;
    hisa_region regions[HISA_PLAN_REGIONS_MAX];
    uint64_t device_bytes;        /* one device reservation */
    uint64_t host_bytes;          /* one host reservation (pinned for CUDA) */
} hisa_plan;

/* Memory handed in by the caller instead of reserved at open; a NULL base means "reserve it".
 * Bases must be 256-byte aligned and at least the plan's sizes. hisa never frees them. */
typedef struct hisa_memory {
    void *device_base;
    uint64_t device_bytes;
    void *host_base;
    uint64_t host_bytes;
} hisa_memory;

typedef struct hisa_memory_report {
    uint64_t device_bytes, host_bytes; /* reserved at open */
    int32_t pages_total, pages_used, pages_free, pages_high_water; /* a shared page counts once */
    int32_t pages_shared;              /* pages held by more than one sequence (hisa_seq_fork) */
    int32_t seqs_open, seqs_high_water;
    int64_t tokens; /* sum of the open sequences' lengths */
    int32_t poisoned;
} hisa_memory_report;

typedef struct hisa_runtime hisa_runtime;

const char *hisa_version(void);
const char *hisa_strerror(int err);

/* Fill every 0 field of *cfg with its default and validate. */
int hisa_config_resolve(const hisa_config *cfg, hisa_config *resolved);
/* The plan for a configuration, without reserving anything (size a GPU with it). */
int hisa_plan_compute(const hisa_config *cfg, hisa_plan *plan);

/* Open: plan, reserve (or take mem), carve, seal. mem may be NULL. CUDA devices need compute
 * capability 8.0 or newer (else HISA_ENODEVICE); HISA_KERNELS_HOPPER needs Hopper.
 * On parts with 99 KB of shared memory per block (sm_86, sm_89, sm_120) n_heads is at most 80
 * (the decode scorer's query tiles; HISA_ENODEVICE, with hisa_open_detail saying so). */
int hisa_open(hisa_runtime **out, const hisa_config *cfg, const hisa_memory *mem);
/* Why the last failed hisa_open of this thread failed, in words (the device and its compute
 * capability, the memory it could not reserve, the configuration rule), or "". */
const char *hisa_open_detail(void);
void hisa_close(hisa_runtime *rt); /* NULL is a no-op */

/* Resolved configuration and plan of an open runtime. */
const hisa_config *hisa_get_config(const hisa_runtime *rt);
const hisa_plan *hisa_get_plan(const hisa_runtime *rt);
/* Detail of the last HISA_EDEVICE ("cudaMalloc(...) at file:line: message") or
 * HISA_EUNSUPPORTED (what the device lacks), or "". */
const char *hisa_error_detail(const hisa_runtime *rt);

/* CUDA: the stream (a cudaStream_t) all device work goes to; NULL is the legacy default.
 * hisa_sync waits for it. Both are no-ops on the CPU backend. */
int hisa_set_stream(hisa_runtime *rt, void *cuda_stream);
int hisa_sync(hisa_runtime *rt);

/* Sequences. Positions 0..len-1 are reserved; keys must be written before selection uses them. */
int hisa_seq_open(hisa_runtime *rt, int32_t *seq_out);
int hisa_seq_close(hisa_runtime *rt, int32_t seq);                /* returns its pages */
int hisa_seq_extend(hisa_runtime *rt, int32_t seq, int32_t n);    /* all-or-nothing */
/* Rollback; len <= current. Truncating into a page shared with another sequence first gives
 * this sequence its own copy of it (one free page needed: HISA_EPOOL otherwise). */
int hisa_seq_truncate(hisa_runtime *rt, int32_t seq, int32_t len);
/* Shared prefix (SPEC "Shared prefixes"): a new sequence holding parent's first len positions.
 * The complete pages below len are shared, not copied (reference-counted; neither side may write
 * them: HISA_ESHARED); a partial last page is copied (keys, payload, summary). All-or-nothing:
 * HISA_ESEQFULL or HISA_EPOOL change nothing. A shared page returns to the pool when the last
 * sequence holding it closes or truncates below it. */
int hisa_seq_fork(hisa_runtime *rt, int32_t parent, int32_t len, int32_t *child_out);
int hisa_seq_length(const hisa_runtime *rt, int32_t seq, int32_t *len_out);
/* The sequence's page ids [ceil(len / B)]; pages_max is the capacity of pages_out. */
int hisa_seq_pages(const hisa_runtime *rt, int32_t seq, int32_t *pages_out, int32_t pages_max,
                   int32_t *n_pages_out);

/* Keys of one token per sequence (decode append). Exactly one of keys (fp32), keys_bf16, or codes
 * + scales (fp8 runtimes only, already quantized as SPEC says). Writing a written position
 * replaces it; writing into a page shared by several sequences is refused (HISA_ESHARED). */
typedef struct hisa_write {
    int32_t layer;
    int32_t n_tokens;          /* 1..max_batch */
    const int32_t *seq_ids;    /* [n_tokens] host, distinct */
    const int32_t *positions;  /* [n_tokens] host; NULL: each sequence's last position (len - 1) */
    const float *keys;         /* [n_tokens, 128] fp32, or NULL */
    const uint16_t *keys_bf16; /* [n_tokens, 128] bf16 bits, or NULL */
    const uint8_t *codes;      /* [n_tokens, 128] e4m3fn codes, or NULL */
    const float *scales;       /* [n_tokens] fp32, with codes */
    const void *payload;       /* [n_tokens, payload_bytes], or NULL */
    uint32_t flags;            /* HISA_HOST_IO */
} hisa_write;
int hisa_write_keys(hisa_runtime *rt, const hisa_write *req);

/* Keys of positions pos0 .. pos0+n_tokens-1 of one sequence (prefill chunk), n_tokens up to
 * max_prefill_queries. seq_ids and positions of req are ignored; req->n_tokens is the count. */
int hisa_write_range(hisa_runtime *rt, int32_t seq, int32_t pos0, const hisa_write *req);

/* Decode: next_n queries per sequence at its last next_n positions: query j of a sequence of
 * length L stands at t = L - next_n + j (SPEC), and sees positions <= t. out gets k int32 each. */
typedef struct hisa_decode {
    int32_t layer;
    hisa_mode mode;
    int32_t n_seqs;            /* 1..max_batch */
    const int32_t *seq_ids;    /* [n_seqs] host */
    const void *q;             /* [n_seqs, next_n, H, 128] in q_format */
    const float *w;            /* [n_seqs, next_n, H] fp32 */
    int32_t *out;              /* [n_seqs, next_n, k] positions (or slots), -1 padded */
    uint32_t flags;            /* HISA_HOST_IO | HISA_SLOTS */
    int32_t q_format;          /* HISA_Q_F32 (0), HISA_Q_BF16, HISA_Q_FP8 */
    int32_t next_n;            /* 0 or 1: one query per sequence; up to HISA_NEXT_N_MAX */
} hisa_decode;
int hisa_select_decode(hisa_runtime *rt, const hisa_decode *req);

/* Prefill: chunks of queries, each causal. One chunk: n_q queries at t0 .. t0+n_q-1 of seq
 * (n_chunks 0). Several: n_chunks > 0 and the host arrays seqs / t0s / n_qs describe them (the
 * seq / t0 / n_q fields are then ignored); their queries are concatenated in chunk order, their
 * total is at most max_prefill_queries, and the chunks of one sequence must not overlap. On CUDA
 * the chunks of a call share one launch chain (kernels.h: HISA_K_CHUNKS_MAX chunks a launch). */
typedef struct hisa_prefill {
    int32_t layer;
    hisa_mode mode;
    int32_t seq;
    int32_t t0;                /* t0 + n_q <= len */
    int32_t n_q;               /* 1..max_prefill_queries */
    const void *q;             /* [total n_q, H, 128] in q_format */
    const float *w;            /* [total n_q, H] */
    int32_t *out;              /* [total n_q, k] */
    uint32_t flags;
    int32_t q_format;          /* HISA_Q_F32 (0), HISA_Q_BF16, HISA_Q_FP8 */
    int32_t n_chunks;          /* 0: the one chunk above; else the chunks below */
    const int32_t *seqs;       /* [n_chunks] host */
    const int32_t *t0s;        /* [n_chunks] host */
    const int32_t *n_qs;       /* [n_chunks] host, each >= 1 */
} hisa_prefill;
int hisa_select_prefill(hisa_runtime *rt, const hisa_prefill *req);

/* The payload pool of a layer: [n_pages * B, payload_bytes], indexed by physical slot. */
int hisa_payload_pool(hisa_runtime *rt, int32_t layer, void **base_out);

int hisa_memory_report_get(const hisa_runtime *rt, hisa_memory_report *out);

#ifdef __cplusplus
}
#endif
#endif /* HISA_H */
