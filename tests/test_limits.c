/* test_limits.c: configuration limits and extreme values (issue 6).
 *
 * test_core.c's config_defaults_and_invalid_configs checks one bad value per field; here every
 * field is taken to both ends of its domain (the bound itself is accepted, one past it is refused
 * with HISA_ECONFIG naming that field, INT32_MIN and INT32_MAX too), the cross-field rules are
 * probed, the plan of the largest configuration is proven exact (no 64-bit wrap anywhere), and
 * the smallest runtime is used for real. Then values at the edge of the number formats: keys so
 * small that amax / 448 underflows, and non-finite keys, must not leave NaN in a block summary
 * once they are replaced. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../runtime/internal.h"
#include "common.h"
#include "test.h"

/* A small valid base configuration that leaves room to move any one field. */
static hisa_config base_config(void) {
    hisa_config c = {.n_layers = 1, .n_heads = 4, .block_size = 32, .top_blocks = 1024, .topk = 64,
                     .max_seqs = 4, .max_context = 1024, .n_pages = 100, .max_batch = 4,
                     .max_prefill_queries = 64};
    return c;
}

typedef struct {
    const char *name;
    size_t offset;
    int32_t lo, hi; /* valid domain; 0 means "default" and is always accepted */
} field_range;

#define FIELD(f, lo, hi) {#f, offsetof(hisa_config, f), (lo), (hi)}

HISA_TEST(limits_every_field_at_both_ends) {
    const field_range fields[] = {
        FIELD(n_layers, 1, HISA_LAYERS_MAX),
        FIELD(n_heads, 1, HISA_HEADS_MAX),
        FIELD(head_dim, HISA_D, HISA_D),
        FIELD(block_size, HISA_BLOCK_MIN, HISA_BLOCK_MAX),
        FIELD(top_blocks, 2, HISA_TOP_BLOCKS_MAX),
        FIELD(topk, 1, HISA_TOPK_MAX),
        FIELD(key_format, HISA_KEY_FP8, HISA_KEY_BF16),
        FIELD(payload_bytes, 0, HISA_PAYLOAD_MAX),
        FIELD(max_seqs, 1, HISA_SEQS_MAX),
        FIELD(max_context, 1, HISA_CONTEXT_MAX),
        FIELD(n_pages, 1, HISA_PAGES_MAX),
        FIELD(max_batch, 1, HISA_BATCH_MAX),
        FIELD(max_prefill_queries, 1, HISA_PREFILL_MAX),
        FIELD(kernels, HISA_KERNELS_AUTO, HISA_KERNELS_HOPPER),
        FIELD(fp8_mma, HISA_FP8_MMA_EXACT, HISA_FP8_MMA_NATIVE),
    };
    /* every int32 field of hisa_config is in the table, but device (checked below) */
    _Static_assert(sizeof(hisa_config) == sizeof(int32_t) * (sizeof fields / sizeof fields[0] + 1),
                   "a hisa_config field is missing from this table");
    int32_t checked = 0;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const field_range *f = &fields[i];
        const int32_t values[] = {f->lo, f->hi, f->lo - 1, f->hi + 1, INT32_MIN, INT32_MAX, -1};
        for (size_t j = 0; j < sizeof values / sizeof values[0]; j++) {
            int32_t v = values[j];
            hisa_config c = base_config();
            if (strcmp(f->name, "topk") == 0 && v > 0) c.top_blocks = HISA_TOP_BLOCKS_MAX; /* (m-1)*B >= k */
            if (strcmp(f->name, "top_blocks") == 0) c.topk = 1;
            if (strcmp(f->name, "block_size") == 0) c.topk = 1;
            *(int32_t *)((char *)&c + f->offset) = v;
            int valid = v == 0 || (v >= f->lo && v <= f->hi);
            if (strcmp(f->name, "block_size") == 0 && valid && v != 0 && (v & (v - 1))) valid = 0;
            hisa_config r;
            hisa_plan plan;
            int err = hisa_plan_compute(&c, &plan);
            int err_resolve = hisa_config_resolve(&c, &r);
            CHECKF(err_resolve == (valid ? HISA_OK : HISA_ECONFIG), "%s = %d: resolve %d, want %s", f->name, v,
                   err_resolve, valid ? "ok" : "HISA_ECONFIG");
            if (valid) {
                CHECKF(err == HISA_OK, "%s = %d: plan %d (%s, field %s)", f->name, v, err, hisa_strerror(err),
                       plan.invalid_field ? plan.invalid_field : "-");
            } else {
                CHECKF(err == HISA_ECONFIG && plan.invalid_field && strcmp(plan.invalid_field, f->name) == 0,
                       "%s = %d: plan %d, field %s; want HISA_ECONFIG naming %s", f->name, v, err,
                       plan.invalid_field ? plan.invalid_field : "(null)", f->name);
            }
            checked++;
        }
    }
    CHECK_EQ_INT(checked, (int32_t)(sizeof fields / sizeof fields[0]) * 7);
    /* device: any ordinal plans (without a GPU too), a negative one is refused */
    hisa_config c = base_config();
    hisa_plan plan;
    c.device = INT32_MAX;
    CHECK_EQ_INT(hisa_plan_compute(&c, &plan), HISA_OK);
    c.device = INT32_MIN;
    CHECK_EQ_INT(hisa_plan_compute(&c, &plan), HISA_ECONFIG);
    CHECK(plan.invalid_field && strcmp(plan.invalid_field, "device") == 0);
    /* only powers of two between the bounds */
    const int32_t odd_blocks[] = {33, 48, 96, 100, 192, 255};
    for (size_t i = 0; i < sizeof odd_blocks / sizeof odd_blocks[0]; i++) {
        c = base_config();
        c.topk = 1;
        c.block_size = odd_blocks[i];
        CHECK_EQ_INT(hisa_plan_compute(&c, &plan), HISA_ECONFIG);
    }
}

/* The SPEC's (m - 1) * B >= k: at equality accepted, one short refused naming top_blocks. */
HISA_TEST(limits_candidates_hold_k_tokens) {
    for (int32_t B = HISA_BLOCK_MIN; B <= HISA_BLOCK_MAX; B *= 2)
        for (int32_t m = 2; m <= 66; m += 16) {
            hisa_config c = base_config();
            c.block_size = B;
            c.top_blocks = m;
            c.topk = (m - 1) * B;
            if (c.topk > HISA_TOPK_MAX) continue;
            hisa_plan plan;
            CHECKF(hisa_plan_compute(&c, &plan) == HISA_OK, "B %d m %d k %d", B, m, c.topk);
            c.topk++;
            CHECK_EQ_INT(hisa_plan_compute(&c, &plan), HISA_ECONFIG);
            CHECK(plan.invalid_field && strcmp(plan.invalid_field, "top_blocks") == 0);
        }
}

/* Physical slots page * B + offset are int32 (FlashMLA's index type and hisa's own outputs): a
 * pool whose n_pages * B exceeds 2^31 must be refused, naming n_pages, whether n_pages is given
 * or defaulted from max_seqs * ceil(max_context / B). */
HISA_TEST(limits_slots_fit_int32) {
    hisa_plan plan;
    const int64_t two31 = (int64_t)1 << 31;
    for (int32_t B = HISA_BLOCK_MIN; B <= HISA_BLOCK_MAX; B *= 2) {
        int64_t max_pages = two31 / B; /* slots 0 .. max_pages * B - 1 fit */
        hisa_config c = base_config();
        c.block_size = B;
        c.topk = 1;
        c.top_blocks = 2;
        c.n_pages = max_pages > HISA_PAGES_MAX ? HISA_PAGES_MAX : (int32_t)max_pages;
        CHECKF(hisa_plan_compute(&c, &plan) == HISA_OK, "B %d n_pages %d", B, c.n_pages);
        if (max_pages >= HISA_PAGES_MAX) continue; /* the page limit binds first */
        c.n_pages = (int32_t)max_pages + 1;
        int err = hisa_plan_compute(&c, &plan);
        CHECKF(err == HISA_ECONFIG && plan.invalid_field && strcmp(plan.invalid_field, "n_pages") == 0,
               "B %d n_pages %d: n_pages * B = %lld > 2^31 slots; plan %d (%s)", B, c.n_pages,
               (long long)c.n_pages * B, err, plan.invalid_field ? plan.invalid_field : "-");
        /* the default pool of max_seqs full contexts */
        c.n_pages = 0;
        c.max_context = HISA_CONTEXT_MAX;
        c.max_seqs = (int32_t)((max_pages + (HISA_CONTEXT_MAX / B) - 1) / (HISA_CONTEXT_MAX / B)) + 1;
        err = hisa_plan_compute(&c, &plan);
        CHECKF(err == HISA_ECONFIG && plan.invalid_field && strcmp(plan.invalid_field, "n_pages") == 0,
               "B %d default pool of %d x %d tokens: plan %d (%s)", B, c.max_seqs, c.max_context, err,
               plan.invalid_field ? plan.invalid_field : "-");
    }
}

/* Byte counts: the largest configuration the limits allow plans, and its sizes are exact: every
 * region's bytes equal count * element size computed in 128 bits, regions lie inside their arena
 * in order, and the totals are the aligned ends. (With limits.h's bounds nothing reaches 2^64, so
 * HISA_EOVERFLOW is a guard; this proves no intermediate wrapped.) */
HISA_TEST(limits_largest_plan_is_exact) {
    for (int device = 0; device < 2; device++)
        for (int fmt = HISA_KEY_FP8; fmt <= HISA_KEY_BF16; fmt++) {
            hisa_config c = {.n_layers = HISA_LAYERS_MAX, .n_heads = HISA_HEADS_MAX, .block_size = 32,
                             .top_blocks = HISA_TOP_BLOCKS_MAX, .topk = HISA_TOPK_MAX, .key_format = fmt,
                             .payload_bytes = HISA_PAYLOAD_MAX, .max_seqs = HISA_SEQS_MAX,
                             .max_context = HISA_CONTEXT_MAX, .n_pages = HISA_PAGES_MAX,
                             .max_batch = HISA_BATCH_MAX, .max_prefill_queries = HISA_PREFILL_MAX,
                             .device = device ? HISA_DEVICE_CUDA(0) : HISA_DEVICE_CPU};
            hisa_plan plan;
            int err = hisa_plan_compute(&c, &plan);
            CHECKF(err == HISA_OK || err == HISA_EOVERFLOW, "largest plan: %d", err);
            if (err) continue;
            unsigned __int128 L = HISA_LAYERS_MAX, P = HISA_PAGES_MAX, B = 32;
            unsigned __int128 page_bytes = fmt == HISA_KEY_FP8 ? B * 132 : B * 256;
            struct {
                const char *name;
                unsigned __int128 bytes;
            } want[] = {
                {"keys", L * P * page_bytes},
                {"block_sums", L * HISA_SEQS_MAX * 128 * 4}, /* one running sum per sequence */
                {"sum_pages", L * HISA_SEQS_MAX * 4},
                {"block_means", L * P * 128 * 2},
                {"payload", L * P * B * HISA_PAYLOAD_MAX},
                {"page_table", (unsigned __int128)HISA_SEQS_MAX * (HISA_CONTEXT_MAX / 32) * 4},
                {"sel_scores", device ? (unsigned __int128)HISA_PREFILL_MAX * HISA_CONTEXT_MAX * 4 : 0},
                {"cpu_scores", device ? 0 : (unsigned __int128)HISA_CONTEXT_MAX * 4},
            };
            for (size_t w = 0; w < sizeof want / sizeof want[0]; w++) {
                int found = 0;
                for (int32_t i = 0; i < plan.n_regions; i++)
                    if (strcmp(plan.regions[i].name, want[w].name) == 0) {
                        found = 1;
                        CHECKF((unsigned __int128)plan.regions[i].bytes == want[w].bytes,
                               "device %d fmt %d region %s: %llu bytes, want %.0Lf", device, fmt, want[w].name,
                               (unsigned long long)plan.regions[i].bytes, (long double)want[w].bytes);
                    }
                CHECKF(found, "region %s not in the plan", want[w].name);
            }
            unsigned __int128 end[2] = {0, 0};
            for (int32_t i = 0; i < plan.n_regions; i++) {
                const hisa_region *g = &plan.regions[i];
                CHECK(g->offset % g->align == 0 && (unsigned __int128)g->offset >= end[g->on_device]);
                end[g->on_device] = (unsigned __int128)g->offset + g->bytes;
            }
            CHECK(end[1] <= plan.device_bytes && plan.device_bytes - end[1] < 256);
            CHECK(end[0] <= plan.host_bytes && plan.host_bytes - end[0] < 256);
        }
}

/* The smallest runtimes work: one page, one token of context, k = 1, m = 2. */
HISA_TEST(limits_smallest_runtimes_work) {
    for (int fmt = HISA_KEY_FP8; fmt <= HISA_KEY_BF16; fmt++) {
        hisa_config c = {.n_layers = 1, .n_heads = 1, .block_size = 32, .top_blocks = 2, .topk = 1,
                         .key_format = fmt, .max_seqs = 1, .max_context = 1, .n_pages = 1, .max_batch = 1,
                         .max_prefill_queries = 1};
        hisa_runtime *rt = NULL;
        REQUIRE(hisa_open(&rt, &c, NULL) == HISA_OK);
        int32_t seq, other, out = -9, pages[1], np;
        float key[128], q[128], w = 1.0f;
        for (int d = 0; d < 128; d++) key[d] = q[d] = 0.5f;
        CHECK_EQ_INT(hisa_seq_open(rt, &seq), HISA_OK);
        CHECK_EQ_INT(hisa_seq_open(rt, &other), HISA_ESEQFULL);
        CHECK_EQ_INT(hisa_seq_extend(rt, seq, 2), HISA_ELIMIT);
        CHECK_EQ_INT(hisa_seq_extend(rt, seq, 1), HISA_OK);
        CHECK_EQ_INT(hisa_seq_extend(rt, seq, 1), HISA_ELIMIT);
        hisa_write wr = {.n_tokens = 1, .seq_ids = &seq, .keys = key};
        CHECK_EQ_INT(hisa_write_keys(rt, &wr), HISA_OK);
        for (int mode = 0; mode < 2; mode++) {
            hisa_decode d = {.mode = (hisa_mode)mode, .n_seqs = 1, .seq_ids = &seq, .q = q, .w = &w, .out = &out,
                             .flags = HISA_SLOTS};
            CHECK_EQ_INT(hisa_select_decode(rt, &d), HISA_OK);
            CHECK_EQ_INT(hisa_seq_pages(rt, seq, pages, 1, &np), HISA_OK);
            CHECK_EQ_INT(out, pages[0] * 32);
        }
        hisa_memory_report rep;
        CHECK(hisa_memory_report_get(rt, &rep) == HISA_OK && rep.pages_free == 0 && rep.tokens == 1);
        CHECK_EQ_INT(hisa_seq_close(rt, seq), HISA_OK);
        CHECK(hisa_memory_report_get(rt, &rep) == HISA_OK && rep.pages_free == 1 && rep.seqs_open == 0);
        hisa_close(rt);
    }
}

/* Exactly at each runtime limit works; one past fails with its code and changes nothing. */
HISA_TEST(limits_runtime_maxima_exactly) {
    hisa_config c = {.n_layers = 1, .n_heads = 2, .block_size = 32, .top_blocks = 3, .topk = 40,
                     .max_seqs = 3, .max_context = 100, .n_pages = 8, .max_batch = 3, .max_prefill_queries = 100};
    hisa_runtime *rt = NULL;
    REQUIRE(hisa_open(&rt, &c, NULL) == HISA_OK);
    int32_t s[3];
    for (int i = 0; i < 3; i++) REQUIRE(hisa_seq_open(rt, &s[i]) == HISA_OK);
    float *keys = calloc(128 * 100, sizeof(float)), q[3 * 2 * 128], w[3 * 2];
    int32_t *out = malloc(sizeof(int32_t) * 100 * 40);
    for (int i = 0; i < 128 * 100; i++) keys[i] = (float)(i % 31) * 0.1f - 1.0f;
    for (int i = 0; i < 3 * 2 * 128; i++) q[i] = (float)(i % 5) * 0.2f;
    for (int i = 0; i < 6; i++) w[i] = 1.0f;
    CHECK_EQ_INT(hisa_seq_extend(rt, s[0], 100), HISA_OK); /* max_context exactly: 4 pages */
    hisa_write wr = {.n_tokens = 100, .keys = keys};
    CHECK_EQ_INT(hisa_write_range(rt, s[0], 0, &wr), HISA_OK); /* max_prefill exactly */
    CHECK_EQ_INT(hisa_seq_extend(rt, s[1], 95), HISA_OK);      /* 3 pages */
    CHECK_EQ_INT(hisa_seq_extend(rt, s[2], 33), HISA_EPOOL);   /* 2 pages wanted, 1 left */
    CHECK_EQ_INT(hisa_seq_extend(rt, s[2], 32), HISA_OK);      /* the pool exactly */
    hisa_memory_report rep;
    REQUIRE(hisa_memory_report_get(rt, &rep) == HISA_OK);
    CHECK_EQ_INT(rep.pages_free, 0);
    CHECK_EQ_INT(hisa_seq_extend(rt, s[1], 1), HISA_OK); /* 96: inside its last page, no page needed */
    CHECK_EQ_INT(hisa_seq_extend(rt, s[1], 0), HISA_OK);
    CHECK_EQ_INT(hisa_seq_extend(rt, s[1], 1), HISA_EPOOL); /* 97: a fourth page */
    CHECK_EQ_INT(hisa_seq_extend(rt, s[2], 1), HISA_EPOOL);
    wr.n_tokens = 96;
    CHECK_EQ_INT(hisa_write_range(rt, s[1], 0, &wr), HISA_OK);
    wr.n_tokens = 32;
    CHECK_EQ_INT(hisa_write_range(rt, s[2], 0, &wr), HISA_OK);
    hisa_decode d = {.n_seqs = 3, .seq_ids = s, .q = q, .w = w, .out = out}; /* max_batch exactly */
    CHECK_EQ_INT(hisa_select_decode(rt, &d), HISA_OK);
    hisa_prefill p = {.seq = s[0], .t0 = 0, .n_q = 100, .q = keys, .w = w, .out = out};
    float *qs = malloc(sizeof(float) * 100 * 2 * 128), *ws = malloc(sizeof(float) * 100 * 2);
    for (int i = 0; i < 100 * 2 * 128; i++) qs[i] = (float)(i % 7) * 0.1f;
    for (int i = 0; i < 200; i++) ws[i] = 1.0f;
    p.q = qs;
    p.w = ws;
    CHECK_EQ_INT(hisa_select_prefill(rt, &p), HISA_OK); /* max_prefill queries exactly */
    for (int32_t r = 0; r < 100; r++) {
        int32_t want = r + 1 < 40 ? r + 1 : 40, n = 0;
        for (int32_t i = 0; i < 40; i++) n += out[r * 40 + i] >= 0 && out[r * 40 + i] <= r;
        CHECKF(n == want, "prefill row %d: %d valid entries, want %d", r, n, want);
    }
    p.n_q = 101;
    CHECK_EQ_INT(hisa_select_prefill(rt, &p), HISA_ELIMIT);
    free(qs);
    free(ws);
    free(keys);
    free(out);
    hisa_close(rt);
}

/* --- number-format edges -------------------------------------------------------------------- */

/* Runs fn in a child process: an abort() (a failed assert in the library) fails the test instead
 * of killing the test binary. Returns 1 when the child exited 0. */
static int in_child(void (*fn)(void *), void *arg, int *status_out) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) return 0;
    if (pid == 0) {
        fn(arg);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    *status_out = status;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* amax / 448 underflows to 0 for keys whose largest |element| is below ~6e-43 (fp8 runtime):
 * the write must succeed and store finite values, with a finite block mean. */
static void tiny_key_child(void *arg) {
    const float *amax = arg;
    hisa_config c = {.n_heads = 1, .block_size = 32, .top_blocks = 2, .topk = 1, .key_format = HISA_KEY_FP8,
                     .max_seqs = 1, .max_context = 32};
    hisa_runtime *rt = NULL;
    if (hisa_open(&rt, &c, NULL)) _exit(10);
    int32_t seq;
    float key[128] = {0};
    key[3] = *amax;
    key[7] = -*amax * 0.5f;
    if (hisa_seq_open(rt, &seq) || hisa_seq_extend(rt, seq, 1)) _exit(11);
    hisa_write w = {.n_tokens = 1, .seq_ids = &seq, .keys = key};
    if (hisa_write_keys(rt, &w)) _exit(12);
    float deq[128];
    int32_t page = rt->r.page_table[0];
    hisa__kv_dequant(&rt->kv, hisa__page(rt, 0, page), 0, deq);
    for (int d = 0; d < 128; d++) {
        if (!isfinite(deq[d]) || fabsf(deq[d] - key[d]) > 1e-30f) _exit(13);
        if (!isfinite(hisa__bf16_to_f32(rt->r.block_means[page * 128 + d]))) _exit(14);
    }
    hisa_close(rt);
}

HISA_TEST(limits_tiny_fp8_keys_quantize_without_crash_or_nan) {
    const float amaxes[] = {1e-44f, 1e-42f, 6e-43f, 1e-40f, 1e-38f, 0x1p-149f};
    for (size_t i = 0; i < sizeof amaxes / sizeof amaxes[0]; i++) {
        int status = 0;
        float a = amaxes[i];
        int ok = in_child(tiny_key_child, &a, &status);
        CHECKF(ok, "key with amax %g: child %s %d (fp8 scale amax / 448 underflows to 0: "
                   "kvcache/quant.c hisa__quantize_fp8 asserts scale > 0 / stores NaN)",
               (double)a, WIFSIGNALED(status) ? "killed by signal" : "exited",
               WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    }
}

/* A non-finite key (NaN, +-inf as fp32 keys, or NaN e4m3 codes) either is refused with
 * HISA_EINVAL, or, once replaced by a finite key, leaves no trace: the block's sum and mean equal
 * the sum and mean of the keys it now holds. (A running sum that once added NaN or inf stays NaN
 * after the subtraction, so the block's J is NaN for good and the coarse stage never keeps it.) */
HISA_TEST(limits_non_finite_keys_do_not_poison_summaries) {
    for (int fmt = HISA_KEY_FP8; fmt <= HISA_KEY_BF16; fmt++)
        for (int kind = 0; kind < 4; kind++) {
            if (kind == 3 && fmt != HISA_KEY_FP8) continue;
            hisa_config c = {.n_heads = 1, .block_size = 32, .top_blocks = 2, .topk = 8, .key_format = fmt,
                             .max_seqs = 1, .max_context = 64};
            hisa_runtime *rt = NULL;
            REQUIRE(hisa_open(&rt, &c, NULL) == HISA_OK);
            int32_t seq, pos = 5;
            REQUIRE(hisa_seq_open(rt, &seq) == 0 && hisa_seq_extend(rt, seq, 20) == 0);
            float keys[20 * 128];
            for (int i = 0; i < 20 * 128; i++) keys[i] = (float)((i * 37) % 11) * 0.1f - 0.5f;
            hisa_write wr = {.n_tokens = 20, .keys = keys};
            REQUIRE(hisa_write_range(rt, seq, 0, &wr) == 0);
            float bad[128];
            uint8_t codes[128];
            float scale = 1.0f;
            for (int d = 0; d < 128; d++) {
                bad[d] = 1.0f;
                codes[d] = 0x38;
            }
            hisa_write wb = {.n_tokens = 1, .seq_ids = &seq, .positions = &pos, .keys = bad};
            if (kind == 0) bad[9] = NAN;
            if (kind == 1) bad[9] = INFINITY;
            if (kind == 2) bad[9] = -INFINITY;
            if (kind == 3) {
                codes[9] = 0x7f; /* e4m3fn NaN */
                wb.keys = NULL;
                wb.codes = codes;
                wb.scales = &scale;
            }
            int err = hisa_write_keys(rt, &wb);
            CHECKF(err == HISA_OK || err == HISA_EINVAL, "fmt %d kind %d: write %d", fmt, kind, err);
            hisa_write wf = {.n_tokens = 1, .seq_ids = &seq, .positions = &pos, .keys = keys + pos * 128};
            CHECK_EQ_INT(hisa_write_keys(rt, &wf), HISA_OK); /* replace it with the original */
            int32_t page = rt->r.page_table[0];
            double exact[128] = {0};
            float deq[128];
            for (int32_t off = 0; off < 20; off++) {
                hisa__kv_dequant(&rt->kv, hisa__page(rt, 0, page), off, deq);
                for (int d = 0; d < 128; d++) exact[d] += deq[d];
            }
            int bad_dims = 0;
            CHECK_EQ_INT(rt->r.sum_pages[seq], page); /* layer 0's running sum is this block's */
            for (int d = 0; d < 128; d++) {
                float sum = rt->r.block_sums[seq * 128 + d], mean = hisa__bf16_to_f32(rt->r.block_means[page * 128 + d]);
                if (!(fabs(sum - exact[d]) <= 1e-4) || !(fabs(mean - exact[d] / 20) <= fabs(exact[d] / 20) * 0x1p-7 + 1e-5))
                    bad_dims++;
            }
            CHECKF(bad_dims == 0, "fmt %d %s written then replaced: %d dims of the block summary are wrong "
                                  "(sum[9] = %g, mean[9] = %g, want %g)",
                   fmt, kind == 0 ? "NaN key" : kind == 1 ? "+inf key" : kind == 2 ? "-inf key" : "NaN fp8 code",
                   bad_dims, rt->r.block_sums[seq * 128 + 9], hisa__bf16_to_f32(rt->r.block_means[page * 128 + 9]),
                   exact[9] / 20);
            hisa_close(rt);
        }
}

/* top_blocks = 2, the smallest m the configuration allows: HISA keeps blocks 0 and last and no
 * middle block. The middle blocks hold the best tokens here, so only a correct coarse stage
 * gives the brute force's answer. Runs in a child: a failed assert must not end the test binary. */
static void two_blocks_child(void *arg) {
    (void)arg;
    const int32_t B = 32, k = 8, n = 200;
    hisa_config c = {.n_heads = 1, .block_size = B, .top_blocks = 2, .topk = k, .key_format = HISA_KEY_BF16,
                     .max_seqs = 1, .max_context = n, .max_prefill_queries = n};
    hisa_runtime *rt = NULL;
    if (hisa_open(&rt, &c, NULL)) _exit(10);
    int32_t seq, out[8], ref[8];
    static float keys[200 * 128], deq[200 * 128], means[7 * 128], I[200], J[7];
    float q[128], w = 1.0f;
    uint64_t rng = 5;
    for (int d = 0; d < 128; d++) q[d] = 1.0f;
    for (int32_t s = 0; s < n; s++)
        for (int d = 0; d < 128; d++)
            keys[s * 128 + d] = (s / B == 0 || s / B == 6 ? 0.1f : 1.0f) + 0.05f * hisa_test_gauss(&rng);
    if (hisa_seq_open(rt, &seq) || hisa_seq_extend(rt, seq, n)) _exit(11);
    hisa_write wr = {.n_tokens = n, .keys = keys};
    if (hisa_write_range(rt, seq, 0, &wr)) _exit(12);
    hisa_decode d = {.mode = HISA_MODE_HISA, .n_seqs = 1, .seq_ids = &seq, .q = q, .w = &w, .out = out};
    if (hisa_select_decode(rt, &d)) _exit(13);
    for (int32_t s = 0; s < n; s++) {
        int32_t page = rt->r.page_table[s / B];
        hisa__kv_dequant(&rt->kv, hisa__page(rt, 0, page), s % B, deq + s * 128);
    }
    for (int32_t b = 0; b < 7; b++)
        for (int dd = 0; dd < 128; dd++) means[b * 128 + dd] = hisa__bf16_to_f32(rt->r.block_means[rt->r.page_table[b] * 128 + dd]);
    hisa_brute_select(deq, means, n, B, 2, k, 1, q, &w, 0, ref, I, J);
    char why[200];
    if (!hisa_agree(I, n, NULL, ref, out, k, why, sizeof why)) _exit(14);
    for (int32_t i = 0; i < k; i++)
        if (out[i] / B != 0 && out[i] / B != 6) _exit(15); /* a middle block was kept */
    hisa_close(rt);
}

HISA_TEST(limits_two_top_blocks_keep_only_first_and_last) {
    int status = 0;
    int ok = in_child(two_blocks_child, NULL, &status);
    CHECKF(ok, "HISA decode with top_blocks = 2 over 7 blocks: child %s %d (cpu_backend.c asks "
               "hisa__topk_ref for m - 2 = 0 middle blocks, which asserts k >= 1)",
           WIFSIGNALED(status) ? "killed by signal" : "exited",
           WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
}
