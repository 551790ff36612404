/* test_faults.c: fault injection (issue 6).
 *
 * Reservations: hisa__arena_fail_at(n) makes the n-th reservation from now fail. For every n up
 * to the number of reservations a successful open makes (counted, not assumed), on the CPU and,
 * where a GPU exists, the CUDA backend, with and without caller memory for one of the arenas:
 * open returns HISA_ENOMEM, leaves *out alone, and leaks nothing (LeakSanitizer under
 * SANITIZE=1; on CUDA, the device's free memory is unchanged after many failed opens); the next
 * open works.
 *
 * CUDA calls: hisa__fault_cuda_at(n) (runtime/fault.h) makes the n-th CUDA call wrapped by
 * runtime/cuda_backend.c fail. For every n across a successful open, open fails cleanly. For
 * every n across a scripted workload (sequences, prefill writes, decode appends, HISA and flat
 * decode and prefill selections, truncate, close) run beside a CPU runtime, the CUDA runtime
 * either goes on giving the CPU's answers, or the failing call returns HISA_EDEVICE and every
 * later call HISA_EPOISONED (with hisa_error_detail naming the call and the report saying
 * poisoned): never a silent wrong answer. Without a GPU these say "skipped: no CUDA device". */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/fault.h"
#include "../runtime/internal.h"
#include "common.h"
#include "test.h"

#if HISA_CUDA
#include <cuda_runtime_api.h>
#endif

static hisa_config fault_config(int32_t fmt, int32_t device) {
    hisa_config c = {.n_layers = 2, .n_heads = 4, .block_size = 32, .top_blocks = 4, .topk = 48,
                     .key_format = fmt, .payload_bytes = 16, .max_seqs = 3, .max_context = 700,
                     .n_pages = 40, .max_batch = 3, .max_prefill_queries = 64, .device = device};
    return c;
}

/* Reservations one successful open of c (with mem) makes. */
static int64_t reservations_of_open(hisa_test_ctx *ctx, const hisa_config *c, const hisa_memory *mem) {
    int64_t before = hisa__arena_reservations();
    hisa_runtime *rt = NULL;
    int err = hisa_open(&rt, c, mem);
    CHECKF(err == HISA_OK, "open: %s", hisa_strerror(err));
    if (err) return -1;
    int64_t n = hisa__arena_reservations() - before;
    hisa_close(rt);
    return n;
}

/* A runtime that works: open a sequence, write, select. */
static int works(const hisa_config *c) {
    hisa_runtime *rt = NULL;
    if (hisa_open(&rt, c, NULL) != HISA_OK) return 0;
    int32_t seq, out[48];
    static float keys[64 * 128], q[4 * 128], w[4];
    uint64_t rng = 11;
    for (int i = 0; i < 64 * 128; i++) keys[i] = hisa_test_gauss(&rng);
    for (int i = 0; i < 4 * 128; i++) q[i] = hisa_test_gauss(&rng);
    for (int i = 0; i < 4; i++) w[i] = 1.0f;
    hisa_write wr = {.n_tokens = 64, .keys = keys, .flags = HISA_HOST_IO};
    hisa_decode d = {.n_seqs = 1, .seq_ids = &seq, .q = q, .w = w, .out = out, .flags = HISA_HOST_IO};
    int ok = hisa_seq_open(rt, &seq) == 0 && hisa_seq_extend(rt, seq, 64) == 0 &&
             hisa_write_range(rt, seq, 0, &wr) == 0 && hisa_select_decode(rt, &d) == 0 && out[47] >= 0;
    hisa_close(rt);
    return ok;
}

#if HISA_CUDA
static uint64_t device_free_bytes(void) {
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return 0;
    return free_b;
}
#endif

/* Every reservation of an open, failing in turn. */
static void reservation_sweep(hisa_test_ctx *ctx, int32_t device) {
    for (int fmt = HISA_KEY_FP8; fmt <= HISA_KEY_BF16; fmt++) {
        hisa_config c = fault_config(fmt, device);
        hisa_plan plan;
        REQUIRE(hisa_plan_compute(&c, &plan) == HISA_OK);
        /* 0: hisa reserves both arenas; 1: the caller gives the host arena (only a CPU runtime
         * can take caller memory for the device arena from malloc) */
        for (int variant = 0; variant < (device == HISA_DEVICE_CPU ? 3 : 1); variant++) {
            void *host = NULL, *dev = NULL;
            hisa_memory mem = {0};
            if (variant == 1) {
                host = aligned_alloc(256, plan.host_bytes);
                mem.host_base = host;
                mem.host_bytes = plan.host_bytes;
            } else if (variant == 2) {
                dev = aligned_alloc(256, plan.device_bytes);
                mem.device_base = dev;
                mem.device_bytes = plan.device_bytes;
            }
            int64_t n_res = reservations_of_open(ctx, &c, &mem);
            CHECK_EQ_INT(n_res, variant == 0 ? 2 : 1);
#if HISA_CUDA
            uint64_t free_before = device != HISA_DEVICE_CPU ? device_free_bytes() : 0;
#endif
            for (int round = 0; round < (device == HISA_DEVICE_CPU ? 1 : 10); round++)
                for (int32_t n = 1; n <= n_res; n++) {
                    int64_t before = hisa__arena_reservations();
                    hisa__arena_fail_at(n);
                    hisa_runtime *rt = (hisa_runtime *)0x1;
                    int err = hisa_open(&rt, &c, &mem);
                    hisa__arena_fail_at(0);
                    CHECKF(err == HISA_ENOMEM, "fmt %d variant %d: reservation %d of %lld failing: open %d (%s)", fmt,
                           variant, n, (long long)n_res, err, hisa_strerror(err));
                    CHECK(rt == (hisa_runtime *)0x1);
                    /* the reservations that succeeded before the failing one were released
                     * (LeakSanitizer proves it at exit under SANITIZE=1) */
                    CHECK_EQ_INT(hisa__arena_reservations() - before, n - 1);
                }
#if HISA_CUDA
            if (device != HISA_DEVICE_CPU) { /* 10 rounds of failed opens leaked no device memory */
                uint64_t free_after = device_free_bytes();
                CHECKF(free_after + (2u << 20) >= free_before, "device free memory %llu -> %llu after failed opens",
                       (unsigned long long)free_before, (unsigned long long)free_after);
            }
#endif
            /* a fault past the last reservation does not fire during open */
            hisa__arena_fail_at((int32_t)n_res + 1);
            hisa_runtime *rt = NULL;
            CHECK_EQ_INT(hisa_open(&rt, &c, &mem), HISA_OK);
            hisa__arena_fail_at(0);
            hisa_close(rt);
            if (variant == 0) CHECK(works(&c)); /* nothing global was left broken */
            free(host);
            free(dev);
        }
    }
}

HISA_TEST(faults_every_cpu_reservation_fails_cleanly) { reservation_sweep(ctx, HISA_DEVICE_CPU); }

static int cuda_available(void) {
    hisa_config c = fault_config(HISA_KEY_FP8, HISA_DEVICE_CUDA(0));
    hisa_runtime *rt = NULL;
    int err = hisa_open(&rt, &c, NULL);
    if (err == HISA_OK) hisa_close(rt);
    return err != HISA_ENODEVICE;
}

HISA_TEST_SERIAL(faults_every_cuda_reservation_fails_cleanly) { /* reads the device's free memory */
    if (!cuda_available()) SKIP("no CUDA device");
    reservation_sweep(ctx, HISA_DEVICE_CUDA(0));
}

/* The injector itself: counts, fires once at n, disarms with 0. */
HISA_TEST(faults_cuda_injector_counts_and_fires_once) {
    hisa__fault_cuda_at(3);
    int hits[6];
    for (int i = 0; i < 6; i++) hits[i] = hisa__fault_cuda_hit();
    CHECK(!hits[0] && !hits[1] && hits[2] && !hits[3] && !hits[4] && !hits[5]);
    CHECK_EQ_INT(hisa__fault_cuda_calls(), 6);
    hisa__fault_cuda_at(0);
    CHECK_EQ_INT(hisa__fault_cuda_calls(), 0);
    for (int i = 0; i < 100; i++) CHECK(!hisa__fault_cuda_hit());
    CHECK_EQ_INT(hisa__fault_cuda_calls(), 100);
    hisa__fault_cuda_at(0);
}

/* --- CUDA call faults ------------------------------------------------------------------------ */

HISA_TEST(faults_every_cuda_call_of_open_fails_cleanly) {
    if (!cuda_available()) SKIP("no CUDA device");
    for (int fmt = HISA_KEY_FP8; fmt <= HISA_KEY_BF16; fmt++) {
        hisa_config c = fault_config(fmt, HISA_DEVICE_CUDA(0));
        hisa_runtime *rt = NULL;
        REQUIRE(hisa_open(&rt, &c, NULL) == HISA_OK); /* warm: one-time setup is behind us */
        hisa_close(rt);
        hisa__fault_cuda_at(0);
        REQUIRE(hisa_open(&rt, &c, NULL) == HISA_OK);
        int64_t calls = hisa__fault_cuda_calls();
        hisa_close(rt);
        CHECKF(calls > 0, "no wrapped CUDA call counted during open: HISA_CUDA_TRY / HISA_LAUNCH_TRY in "
                          "runtime/cuda_backend.c must ask hisa__fault_cuda_hit() (runtime/fault.h)");
        for (int32_t n = 1; n <= calls; n++) {
            hisa__fault_cuda_at(n);
            rt = (hisa_runtime *)0x1;
            int err = hisa_open(&rt, &c, NULL);
            hisa__fault_cuda_at(0);
            CHECKF(err == HISA_EDEVICE, "call %d of %lld failing: open returned %d (%s)", n, (long long)calls, err,
                   hisa_strerror(err));
            if (err == HISA_OK) hisa_close(rt);
            else CHECK(rt == (hisa_runtime *)0x1);
        }
        CHECK(works(&c));
    }
}

/* The scripted workload: the same calls on a CPU runtime (the reference) and a CUDA one. */
typedef struct {
    hisa_runtime *cpu, *cu;
    int poisoned;      /* the CUDA runtime returned HISA_EDEVICE */
    int32_t edevice_calls, after_poison_calls;
    int32_t seqs[3];
    float *keys, *q, *w, *I, *J;
    int32_t *out_cpu, *out_cu;
} wl;

/* Keys whose block means are far apart (J(b) grows ~5% a block) so HISA's kept blocks are
 * unambiguous, with token-level noise so the token ranking is not. */
static void wl_keys(int32_t pos0, int32_t n, float *keys) {
    for (int32_t i = 0; i < n; i++) {
        int32_t pos = pos0 + i, blk = pos / 32;
        uint64_t r = 0x1234567ull + (uint64_t)pos * 0x9E3779B97F4A7C15ull;
        for (int d = 0; d < 128; d++)
            keys[i * 128 + d] = (1.0f + 0.05f * (float)((blk * 7) % 19)) * (d % 2 ? 0.5f : -0.25f) +
                                0.2f * hisa_test_gauss(&r);
    }
}
static void wl_query(uint64_t seed, int32_t n_rows, float *q, float *w) {
    for (int32_t i = 0; i < n_rows * 4 * 128; i++) {
        int d = i % 128;
        q[i] = (d % 2 ? 1.0f : -0.5f) + 0.1f * hisa_test_gauss(&seed);
    }
    for (int32_t i = 0; i < n_rows * 4; i++) w[i] = 0.5f + 0.5f * hisa_test_uniform(&seed) * 0.5f + 0.25f;
}

/* One call on both runtimes; returns 1 when the workload goes on. */
static int wl_codes(hisa_test_ctx *ctx, wl *x, const char *what, int err_cpu, int err_cu) {
    if (x->poisoned) {
        x->after_poison_calls++;
        CHECKF(err_cu == HISA_EPOISONED, "%s after HISA_EDEVICE: %d (%s), want HISA_EPOISONED", what, err_cu,
               hisa_strerror(err_cu));
        return 1;
    }
    if (err_cu == HISA_EDEVICE) {
        x->poisoned = 1;
        x->edevice_calls++;
        return 1;
    }
    CHECKF(err_cu == err_cpu, "%s: cuda %d (%s), cpu %d", what, err_cu, hisa_strerror(err_cu), err_cpu);
    return err_cu == err_cpu;
}

/* Rows of a selection: when the CUDA call succeeded, each row must agree with the CPU's. */
static void wl_rows(hisa_test_ctx *ctx, wl *x, const char *what, int err_cu, const int32_t *seqs, int32_t prefill_seq,
                    int32_t t0, int32_t n_rows, int32_t layer, int flat) {
    if (err_cu != HISA_OK || x->poisoned) return;
    for (int32_t r = 0; r < n_rows; r++) {
        int32_t seq = prefill_seq >= 0 ? prefill_seq : seqs[r], len;
        hisa_seq_length(x->cpu, seq, &len);
        int32_t t = prefill_seq >= 0 ? t0 + r : len - 1;
        hisa__cpu_scores(x->cpu, layer, seq, t, x->q + r * 4 * 128, HISA_Q_F32, x->w + r * 4, x->I, x->J);
        char why[200];
        CHECKF(hisa_agree(x->I, t + 1, NULL, x->out_cpu + r * 48, x->out_cu + r * 48, 48, why, sizeof why),
               "%s row %d (%s): silent wrong answer: %s", what, r, flat ? "flat" : "hisa", why);
    }
}

/* Runs the workload; with fault n armed (0: none). Returns the number of wrapped calls made. */
static int64_t workload(hisa_test_ctx *ctx, int32_t fmt, int32_t fault_n, wl *res) {
    wl x;
    memset(&x, 0, sizeof x);
    hisa_config c = fault_config(fmt, HISA_DEVICE_CPU), cc = fault_config(fmt, HISA_DEVICE_CUDA(0));
    if (hisa_open(&x.cpu, &c, NULL) != HISA_OK || hisa_open(&x.cu, &cc, NULL) != HISA_OK) {
        hisa_test_fail(ctx, __FILE__, __LINE__, "workload open failed");
        if (x.cpu) hisa_close(x.cpu);
        return 0;
    }
    x.keys = malloc(sizeof(float) * 128 * 64);
    x.q = malloc(sizeof(float) * 64 * 4 * 128);
    x.w = malloc(sizeof(float) * 64 * 4);
    x.I = malloc(sizeof(float) * 700);
    x.J = malloc(sizeof(float) * 32);
    x.out_cpu = malloc(sizeof(int32_t) * 64 * 48);
    x.out_cu = malloc(sizeof(int32_t) * 64 * 48);
    hisa__fault_cuda_at(fault_n); /* counting starts here: open is done */
    int e1, e2;
#define BOTH(what, CALL_CPU, CALL_CU)          \
    do {                                       \
        e1 = (CALL_CPU);                       \
        e2 = (CALL_CU);                        \
        wl_codes(ctx, &x, (what), e1, e2);     \
    } while (0)
    for (int32_t i = 0; i < 3; i++) {
        int32_t a = -1, b = -1;
        BOTH("seq_open", hisa_seq_open(x.cpu, &a), hisa_seq_open(x.cu, &b));
        x.seqs[i] = a;
        if (!x.poisoned && e2 == HISA_OK) CHECK_EQ_INT(a, b);
    }
    static const int32_t lens[3] = {650, 200, 33};
    for (int32_t i = 0; i < 3; i++) {
        BOTH("extend", hisa_seq_extend(x.cpu, x.seqs[i], lens[i]), hisa_seq_extend(x.cu, x.seqs[i], lens[i]));
        for (int32_t p = 0; p < lens[i]; p += 64) {
            int32_t n = lens[i] - p < 64 ? lens[i] - p : 64;
            wl_keys(p, n, x.keys);
            for (int32_t l = 0; l < 2; l++) {
                hisa_write w = {.layer = l, .n_tokens = n, .keys = x.keys};
                hisa_write wc = w;
                wc.flags = HISA_HOST_IO;
                BOTH("write_range", hisa_write_range(x.cpu, x.seqs[i], p, &w), hisa_write_range(x.cu, x.seqs[i], p, &wc));
            }
        }
    }
    for (int32_t step = 0; step < 6; step++) {
        /* decode append: one token per sequence (fp8 codes on the fp8 runtime every other step) */
        for (int32_t i = 0; i < 3; i++)
            BOTH("extend 1", hisa_seq_extend(x.cpu, x.seqs[i], 1), hisa_seq_extend(x.cu, x.seqs[i], 1));
        wl_keys(700 + step * 3, 3, x.keys);
        static uint8_t codes[3 * 128];
        static float scales[3];
        for (int32_t i = 0; i < 3 * 128; i++) codes[i] = (uint8_t)(0x30 + (i * 7 + step) % 16);
        for (int32_t i = 0; i < 3; i++) scales[i] = 0.05f + 0.01f * (float)i;
        int use_codes = fmt == HISA_KEY_FP8 && step % 2;
        for (int32_t l = 0; l < 2; l++) {
            hisa_write w = {.layer = l, .n_tokens = 3, .seq_ids = x.seqs, .keys = use_codes ? NULL : x.keys,
                            .codes = use_codes ? codes : NULL, .scales = use_codes ? scales : NULL};
            hisa_write wc = w;
            wc.flags = HISA_HOST_IO;
            BOTH("write_keys", hisa_write_keys(x.cpu, &w), hisa_write_keys(x.cu, &wc));
        }
        /* decode, HISA then flat, positions then slots-free comparison */
        for (int mode = 0; mode < 2; mode++) {
            wl_query(100 + (uint64_t)step * 2 + (uint64_t)mode, 3, x.q, x.w);
            memset(x.out_cu, 0x5a, sizeof(int32_t) * 3 * 48);
            hisa_decode d = {.layer = step % 2, .mode = (hisa_mode)mode, .n_seqs = 3, .seq_ids = x.seqs, .q = x.q,
                             .w = x.w, .out = x.out_cpu};
            hisa_decode dc = d;
            dc.out = x.out_cu;
            dc.flags = HISA_HOST_IO;
            BOTH("decode", hisa_select_decode(x.cpu, &d), hisa_select_decode(x.cu, &dc));
            wl_rows(ctx, &x, "decode", e2, x.seqs, -1, -1, 3, d.layer, mode);
        }
        /* a prefill chunk of the long sequence */
        wl_query(500 + (uint64_t)step, 20, x.q, x.w);
        hisa_prefill p = {.layer = 0, .mode = (hisa_mode)(step % 2), .seq = x.seqs[0], .t0 = 400 + step * 30,
                          .n_q = 20, .q = x.q, .w = x.w, .out = x.out_cpu};
        hisa_prefill pc = p;
        pc.out = x.out_cu;
        pc.flags = HISA_HOST_IO;
        BOTH("prefill", hisa_select_prefill(x.cpu, &p), hisa_select_prefill(x.cu, &pc));
        wl_rows(ctx, &x, "prefill", e2, NULL, x.seqs[0], p.t0, 20, 0, step % 2);
        /* rollback the short one into a partial block, and sync */
        BOTH("truncate", hisa_seq_truncate(x.cpu, x.seqs[2], 20 + step), hisa_seq_truncate(x.cu, x.seqs[2], 20 + step));
        BOTH("sync", hisa_sync(x.cpu), hisa_sync(x.cu));
    }
    BOTH("close", hisa_seq_close(x.cpu, x.seqs[1]), hisa_seq_close(x.cu, x.seqs[1]));
    int32_t again = -1, again_cu = -1;
    BOTH("reopen", hisa_seq_open(x.cpu, &again), hisa_seq_open(x.cu, &again_cu));
    BOTH("extend after reopen", hisa_seq_extend(x.cpu, again, 40), hisa_seq_extend(x.cu, again, 40));
#undef BOTH
    int64_t calls = hisa__fault_cuda_calls();
    hisa__fault_cuda_at(0);
    hisa_memory_report rep;
    CHECK(hisa_memory_report_get(x.cu, &rep) == HISA_OK);
    CHECK_EQ_INT(rep.poisoned, x.poisoned);
    if (x.poisoned) {
        const char *detail = hisa_error_detail(x.cu);
        CHECKF(detail && detail[0], "poisoned runtime without an error detail");
        CHECK_EQ_INT(hisa_set_stream(x.cu, NULL), HISA_EPOISONED);
        CHECK_EQ_INT(hisa_sync(x.cu), HISA_EPOISONED);
        void *base = NULL;
        CHECK_EQ_INT(hisa_payload_pool(x.cu, 0, &base), HISA_EPOISONED);
    }
    *res = x;
    hisa_close(x.cpu);
    hisa_close(x.cu);
    free(x.keys); free(x.q); free(x.w); free(x.I); free(x.J); free(x.out_cpu); free(x.out_cu);
    return calls;
}

HISA_TEST(faults_every_cuda_call_of_a_workload_poisons_or_is_harmless) {
    if (!cuda_available()) SKIP("no CUDA device");
    for (int fmt = HISA_KEY_FP8; fmt <= HISA_KEY_BF16; fmt++) {
        wl res;
        int64_t calls = workload(ctx, fmt, 0, &res);
        REQUIRE(!res.poisoned);
        CHECKF(calls > 0, "no wrapped CUDA call counted: HISA_CUDA_TRY / HISA_LAUNCH_TRY in "
                          "runtime/cuda_backend.c must ask hisa__fault_cuda_hit() (runtime/fault.h)");
        /* every call when there are few; else every call of the first 150 and a stride after */
        int32_t n_poisoned = 0, n_harmless = 0;
        for (int64_t n = 1; n <= calls; n += n < 150 ? 1 : 1 + calls / 150) {
            int64_t got = workload(ctx, fmt, (int32_t)n, &res);
            (void)got;
            if (res.poisoned) {
                n_poisoned++;
                CHECK_EQ_INT(res.edevice_calls, 1);
            } else {
                n_harmless++;
            }
            if (ctx->failures) {
                printf("  (fault at wrapped call %lld of %lld, fmt %d)\n", (long long)n, (long long)calls, fmt);
                break;
            }
        }
        /* harmless: the call went on with correct answers (every one was checked) */
        printf("  fmt %d: %lld wrapped CUDA calls; injected faults poisoned the runtime %d times, were "
               "harmless %d times\n", fmt, (long long)calls, n_poisoned, n_harmless);
        CHECK(n_poisoned > 0);
    }
}
