/* tools.h: declarations shared by the files of the `hisa` command line (the files in tools/).
 *
 * The tools use only the public header hisa.h (the benchmarks also the development hooks of
 * runtime/hisa_dev.h, never the runtime's or the kernels' private headers). Each subcommand
 * is one function `int hisa_cmd_NAME(int argc, char **argv)` that returns the process exit
 * code: 0 success, 2 usage or input error (the message names the option or file and what was
 * expected), 1 runtime failure. argv[0] is the subcommand name. The test binary links every
 * file in tools/ except main.c, so the commands and helpers here are callable from tests. */
#ifndef HISA_TOOLS_H
#define HISA_TOOLS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../runtime/hisa.h"
#include "npy.h"

enum { TOOL_EXIT_OK = 0, TOOL_EXIT_FAIL = 1, TOOL_EXIT_USAGE = 2 };

/* The benchmarks call CUDA directly; each call is checked with this (expand it only where
 * cuda_runtime_api.h is included): it names the command and the call, and fails the command. */
#define TOOL_CUDA(cmd, stmt)                                                                     \
    do {                                                                                         \
        cudaError_t tool_e_ = (stmt);                                                            \
        if (tool_e_ != cudaSuccess) {                                                            \
            fprintf(stderr, "hisa %s: %s failed: %s\n", cmd, #stmt, cudaGetErrorString(tool_e_)); \
            return TOOL_EXIT_FAIL;                                                               \
        }                                                                                        \
    } while (0)

/* Subcommands. hisa_cmd_bench lives in tools/bench.c (decode and prefill benchmarks). */
int hisa_cmd_stream(int argc, char **argv);
int hisa_cmd_mem(int argc, char **argv);
int hisa_cmd_select(int argc, char **argv);
int hisa_cmd_eval(int argc, char **argv);
int hisa_cmd_niah(int argc, char **argv);
int hisa_cmd_bench(int argc, char **argv);

/* --- option parsing (tools/common.c) ----------------------------------------------------
 * A command lists its options in a table; "--name value" and "--name=value" both work.
 * Integers take K/M/G suffixes (binary: 8K = 8192); sizes take K/M/G/T with optional "B"/"iB"
 * (binary, bytes). Anything malformed is a usage error naming the option. A value is taken as
 * given: 0 means zero, never "the default" (an option left out takes the default), and a
 * number outside the option's range is refused with the range ("--batch 257: out of range;
 * expected 1..256 (...)"). */
typedef enum {
    TOOL_OPT_INT,    /* int32_t *, with K/M/G suffixes */
    TOOL_OPT_I64,    /* int64_t *, with K/M/G suffixes */
    TOOL_OPT_SIZE,   /* uint64_t * bytes, e.g. 80G */
    TOOL_OPT_DOUBLE, /* double * (finite) */
    TOOL_OPT_STR,    /* const char ** */
    TOOL_OPT_FLAG    /* int *, set to 1; takes no value */
} tool_opt_kind;

typedef struct tool_opt {
    const char *name; /* without the leading "--" */
    tool_opt_kind kind;
    void *dest;
    /* INT / I64 / DOUBLE: the accepted range lo..hi (both 0: the type's whole range);
     * SIZE: at least lo bytes. */
    int64_t lo, hi;
    const char *what; /* NULL, or what the value is, for the range message */
} tool_opt;

/* Parses argv[1..argc) against opts. Returns 0 on success, TOOL_EXIT_USAGE after printing
 * "hisa CMD: ..." to stderr, or -1 when --help / -h was given (the caller prints its help and
 * exits 0). Positional arguments are refused. */
int tool_parse_opts(const char *cmd, int argc, char **argv, const tool_opt *opts, int n_opts);

/* "64K" -> 65536 into *out; 0 on success, -1 on a malformed number, -2 on one outside int64. */
int tool_parse_i64(const char *s, int64_t *out);
/* "80G", "80GiB", "80GB", "1.5T", "123456" -> bytes; 0 on success, -1 otherwise. */
int tool_parse_size(const char *s, uint64_t *out);
/* Formats bytes as "12.3 MiB" into buf. Returns buf. */
const char *tool_fmt_bytes(uint64_t bytes, char *buf, size_t buf_len);

/* Output files are checked before the work starts: path (the value of --OPT) must be a file
 * that can be created or written (its directory exists and is writable; not a directory).
 * Nothing is left behind. Returns 0, or TOOL_EXIT_USAGE after "hisa CMD: --OPT PATH: ...". */
int tool_check_output(const char *cmd, const char *opt, const char *path);

/* --- named choices (tools/choice.c) --------------------------------------------------------- */
/* An option that takes one of a few names: each with its value and a note for the error message;
 * the first is the default. One table per option serves parsing and naming. */
typedef struct tool_choice {
    const char *name, *note;
    int32_t value;
} tool_choice;
#define TOOL_N_CHOICES(t) (int)(sizeof(t) / sizeof((t)[0]))
/* s (NULL: the first) into *out. Returns 0, or TOOL_EXIT_USAGE after "hisa CMD: --OPT: 'S';
 * expected A (note), B (note) or C (note)". */
int tool_parse_choice(const char *cmd, const char *opt, const char *s, const tool_choice *c, int n, int32_t *out);
/* The name of value in c (the first's where none matches). */
const char *tool_choice_name(const tool_choice *c, int n, int32_t value);
/* --key-format fp8|bf16 into HISA_KEY_* (NULL: fp8), and its name. tool_parse_choice's codes. */
int tool_parse_key_format(const char *cmd, const char *s, int32_t *out);
const char *tool_key_format_name(int32_t key_format); /* "fp8" / "bf16" */
/* --kernels auto|portable|hopper into hisa_config.kernels (NULL: auto), and its name. */
int tool_parse_kernels(const char *cmd, const char *s, int32_t *out);
const char *tool_kernels_name(int32_t kernels); /* "auto" / "portable" / "hopper" */

/* --- the configuration options every command shares -------------------------------------- */
typedef struct tool_cfg_opts {
    const char *device;     /* "cpu", "cuda", "cuda:N" or NULL: probe */
    const char *key_format; /* "fp8", "bf16" or NULL: the library default (fp8) */
    int32_t heads, block_size, top_blocks, topk, layers; /* 0: not given, the default */
} tool_cfg_opts;

/* Appends the shared options (--device --key-format --heads --block-size --top-blocks --topk)
 * with their ranges to opts[*n]; opts must have room for 6 more. Commands with layers add
 * TOOL_OPT_LAYERS themselves. */
void tool_cfg_opts_add(tool_opt *opts, int *n, tool_cfg_opts *c);
#define TOOL_OPT_LAYERS(dest) ((tool_opt){"layers", TOOL_OPT_INT, (dest), 1, INT32_MAX, NULL})
/* Fills device, key_format, n_heads, block_size, top_blocks, topk, n_layers of cfg from c
 * (0 / NULL fields stay 0 = library default). Returns 0 or TOOL_EXIT_USAGE with a message. */
int tool_cfg_apply(const char *cmd, const tool_cfg_opts *c, hisa_config *cfg);

/* How a command names the fields of hisa_config in its messages: the option (or input) that
 * sets each one. A list ends with a NULL field; a field it does not name takes the common
 * name (max_seqs --seqs, max_context --context, n_pages --pages, max_batch --max-batch,
 * max_prefill_queries --prefill-queries, n_layers --layers, block_size --block-size, ...). */
typedef struct tool_field_name {
    const char *field;  /* "max_seqs" */
    const char *option; /* "--batch"; or a name that is not an option, e.g. "L" */
    const char *note;   /* NULL, or where the value comes from: "the rows of --keys" */
} tool_field_name;

/* The message of a configuration the library refused (hisa_plan_compute's invalid_field and
 * invalid_rule), in the command's terms: the options with their values (defaults marked), the
 * rule with the options' names, the numbers that break it, and what to change. cfg is the
 * configuration as passed (0 fields are the library's defaults). Returns TOOL_EXIT_USAGE. */
int tool_config_error(const char *cmd, const hisa_plan *plan, const hisa_config *cfg,
                      const tool_field_name *names);
/* A library rule with the fields replaced by the command's option names, into buf. */
const char *tool_rule_text(const char *rule, const tool_field_name *names, char *buf,
                           size_t buf_len);

/* Device choice. NULL or "auto": CUDA device 0 when a runtime opens on it, else the CPU.
 * "cpu", "cuda" (= cuda:0), "cuda:N". Returns 0 with *device_out set, TOOL_EXIT_USAGE for a
 * malformed name, TOOL_EXIT_FAIL when CUDA was asked for and is not there. *why_out, when not
 * NULL, gets a static phrase on why the CPU was picked ("" otherwise). */
int tool_pick_device(const char *cmd, const char *name, int32_t *device_out, const char **why_out);
/* "cpu" or "cuda:N" into buf. */
const char *tool_device_name(int32_t device, char *buf, size_t buf_len);
/* 1 when the CUDA probe succeeds (cached after the first call). */
int tool_cuda_available(void);

/* Maps a library error to an exit code and prints "hisa CMD: WHAT: strerror" (a configuration
 * error with a plan: tool_config_error's message). HISA_ECONFIG, HISA_EOVERFLOW and
 * HISA_ELIMIT (the user's sizes) map to 2, everything else to 1. */
int tool_lib_error(const char *cmd, const char *what, int err, const hisa_plan *plan);

/* Open a runtime for cfg; on failure prints why (a configuration error in the command's
 * terms, names as for tool_config_error, NULL for the common names; otherwise
 * hisa_open_detail()) and returns the exit code; 0 on success. */
int tool_open(const char *cmd, const hisa_config *cfg, const tool_field_name *names,
              hisa_runtime **rt_out);

/* Selections that are the same for HISA and flat by construction (SPEC "Selection" rules 1
 * and 3): a query that sees n tokens selects all of them when n <= k, and HISA keeps every
 * block when ceil(n / B) <= m. Returns NULL when neither holds, else a phrase saying which,
 * with the numbers, in buf ("8192 tokens: 64 blocks of B=128 <= m=64, every block is a
 * candidate: HISA equals flat by construction"). */
const char *tool_trivial_why(int64_t n_visible, const hisa_config *cfg, char *buf, size_t len);
/* Which of the two holds: TOOL_TRIVIAL_TOKENS (n <= k), TOOL_TRIVIAL_BLOCKS (ceil(n / B) <= m),
 * or TOOL_TRIVIAL_NONE. */
enum { TOOL_TRIVIAL_NONE = 0, TOOL_TRIVIAL_TOKENS = 1, TOOL_TRIVIAL_BLOCKS = 2 };
int tool_trivial_kind(int64_t n_visible, const hisa_config *cfg);

/* --- query formats (tools/qformat.c) ---------------------------------------------------------
 * --query-format f32|bf16|fp8 (SPEC "Queries"), and the host-side conversions of the tools'
 * own float queries (hisa stream). Same rules as the library's number formats: bf16 and e4m3fn
 * round to nearest even, e4m3fn saturates at +-448. */
/* s: "f32" (or NULL: the default), "bf16", "fp8" into *out (HISA_Q_*). Returns 0, or
 * TOOL_EXIT_USAGE after "hisa CMD: --query-format: 'S'; expected ...". */
int tool_parse_q_format(const char *cmd, const char *s, int32_t *out);
/* --fp8-mma exact|native (hisa.h's hisa_config.fp8_mma; NULL: exact) into *out. Returns 0, or
 * TOOL_EXIT_USAGE after "hisa CMD: --fp8-mma: 'S'; expected ...". */
int tool_parse_fp8_mma(const char *cmd, const char *s, int32_t *out);
const char *tool_fp8_mma_name(int32_t fp8_mma); /* "exact" / "native" */
const char *tool_q_format_name(int32_t q_format); /* "f32" / "bf16" / "fp8" */
size_t tool_q_format_bytes(int32_t q_format);     /* bytes per query element: 4, 2, 1 */
uint16_t tool_bf16_from_f32(float x);
float tool_bf16_to_f32(uint16_t b);
uint8_t tool_e4m3_from_f32(float x);
float tool_e4m3_to_f32(uint8_t c);
/* n floats to bf16 bits. */
void tool_q_to_bf16(const float *q, int64_t n, uint16_t *out);
/* n_heads heads of 128 (q [n_heads,128], w [n_heads]) to fp8 queries: per head scale =
 * amax / 448 (1 when not positive), codes = e4m3(q / scale), w_out = w * scale (folded). */
void tool_q_to_fp8(const float *q, const float *w, int64_t n_heads, uint8_t *codes,
                   float *w_out);

/* --- .npy inputs of select and eval (tools/select.c) -----------------------------------------
 * keys [L,128] float32, or fp8 e4m3 codes [L,128] uint8 with scales [L] float32; queries
 * [n_q,H,128] in q_format (float32; uint16 bf16 bits; uint8 e4m3fn codes whose per-head scale
 * is already folded into the weights); weights [n_q,H] float32, used as given. Query i stands
 * at position L - n_q + i. */
typedef struct tool_inputs {
    const char *keys_path, *scales_path, *queries_path, *weights_path;
    const char *q_format_name; /* --query-format as given (NULL: f32) */
    int32_t q_format;          /* HISA_Q_*: what --queries holds; set before tool_inputs_load */
    const char *fp8_mma_name;  /* --fp8-mma as given (NULL: exact) */
    int32_t fp8_mma;           /* HISA_FP8_MMA_* of it: the runtime's hisa_config.fp8_mma */
    npy_array keys, scales, queries, weights;
    int32_t L, n_q, H;
    int fp8_codes; /* keys are uint8 codes with scales */
} tool_inputs;

/* The options naming the inputs (--keys, --scales, --queries, --weights, --query-format) and how
 * fp8 queries are multiplied (--fp8-mma), appended to opts at *n; after parsing,
 * tool_inputs_parse_names turns the names into q_format and fp8_mma (0 or TOOL_EXIT_USAGE with
 * the message). */
void tool_inputs_opts_add(tool_opt *opts, int *n, tool_inputs *in);
int tool_inputs_parse_names(const char *cmd, tool_inputs *in);
/* Loads and cross-checks the four files; prints "hisa CMD: FILE: ..." and returns
 * TOOL_EXIT_USAGE on any problem, 0 on success. */
int tool_inputs_load(const char *cmd, tool_inputs *in);
void tool_inputs_free(tool_inputs *in);
/* Builds the configuration sized from the inputs (one layer, one sequence, max_context L,
 * H heads) and the shared options, opens the runtime, writes every key. */
int tool_inputs_open(const char *cmd, const tool_inputs *in, const tool_cfg_opts *c,
                     hisa_runtime **rt_out, int32_t *seq_out);
/* Selects for every query in mode; out [n_q, k]. *seconds_out gets the time of the selection
 * calls alone. Returns 0 or a library error code. */
int tool_inputs_select(hisa_runtime *rt, int32_t seq, const tool_inputs *in, hisa_mode mode,
                       int32_t *out, double *seconds_out);
/* Sorts each row of sel [n_rows, k] ascending with the -1 padding at the end. */
void tool_sort_rows(int32_t *sel, int64_t n_rows, int32_t k);

/* --- needle in a haystack (tools/niah.c) ---------------------------------------------------- */
struct synth_params;
typedef struct tool_niah_result {
    int32_t needle_pos;
    int found_flat, found_hisa; /* 1 when the needle is in the selection */
    double iou;                 /* HISA vs flat on the same query */
} tool_niah_result;

/* Needle position for a context of `context` tokens at depth_pct (0..100) of the haystack:
 * between the attention sinks and the query's own position, n_sinks + round(depth * (context -
 * 2 - n_sinks)) clamped into [0, context - 2] (a 1-token context puts it at 0). */
int32_t tool_niah_position(int32_t context, double depth_pct, int32_t n_sinks);
/* One cell: a fresh sequence of `context` synthetic tokens (layer 0 of rt; sp sets the
 * generator, its needle list is replaced by the one needle), a decode query at the last
 * position aligned with the needle, flat and HISA selections. The sequence is closed again.
 * Returns 0 or a library error; rt's config must have one sequence free and max_context >=
 * context, and H of rt equal to sp->n_heads. */
int tool_niah_cell(hisa_runtime *rt, const struct synth_params *sp, int32_t context,
                   double depth_pct, tool_niah_result *res);

/* The heatmap (tools/niah_svg.c): the two panels side by side, recall of each cell (index
 * depth * nc + context) from red 0 to green 1. A column with a note (col_note[ci] not NULL,
 * e.g. "HISA equals flat by construction") is marked "*" and the note printed below. The
 * layout grows with its texts, so nothing overlaps or is cut whatever nc and nd are. */
typedef struct tool_niah_plot {
    const int32_t *ctx;
    int nc;
    const double *dep;
    int nd;
    const double *rec_flat, *rec_hisa; /* [nd * nc] */
    const char *subtitle;
    const char *const *col_note;       /* [nc] or NULL */
} tool_niah_plot;
/* Writes the SVG to path; 0, or -1 when the file cannot be written. */
int tool_niah_svg(const char *path, const tool_niah_plot *p);
/* "8K", "1M", "1000" of a context length, into buf. */
const char *tool_ctx_label(int32_t c, char *buf, size_t n);

/* --- small shared helpers ------------------------------------------------------------------ */
double tool_now_s(void); /* monotonic seconds */
/* p-th percentile (0..100) of v[n] (sorted in place, nearest-rank). 0 when n is 0. */
double tool_percentile(double *v, int64_t n, double p);
/* IoU of two k-entry selections (-1 entries ignored, duplicates counted once); 1 when both are
 * empty. scratch must hold 2 * k int32. */
double tool_iou(const int32_t *a, const int32_t *b, int32_t k, int32_t *scratch);
/* 1 when position pos is among the k entries of sel. */
int tool_selected(const int32_t *sel, int32_t k, int32_t pos);
/* Writes a JSON string literal (quoted, escaped) of s to f. */
void tool_json_string(FILE *f, const char *s);

#endif /* HISA_TOOLS_H */
