/* test_threads.c: runtimes are independent: two of them, driven from two threads at once, give
 * exactly what each gives alone.
 *
 * Why: nothing in hisa may be process-global state that a second runtime disturbs (the fault
 * counters are atomics, device figures and kernel attributes are per runtime). Each worker runs
 * one deterministic workload (prefill writes in chunks, decode appends, HISA and flat decode
 * selections, a truncate) and folds every selection, sorted (CUDA outputs come in any order),
 * into a hash. The pairs: two CPU runtimes (fp8, bf16); a CPU and a CUDA runtime; two CUDA
 * runtimes on one GPU. A CUDA workload is compared with the same workload run alone on CUDA.
 * Under SANITIZE=1 (no CUDA) the CPU pair runs under ASan; ThreadSanitizer is not part of CI. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "test.h"

typedef struct worker {
    hisa_config cfg;
    uint64_t seed;
    int err;        /* first failing call's code, 0 if none */
    uint64_t hash;  /* of every selection, sorted */
    int32_t n_selections;
} worker;

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static uint64_t fold(uint64_t h, const int32_t *v, int32_t n) {
    for (int32_t i = 0; i < n; i++) h = (h ^ (uint32_t)v[i]) * 0x100000001b3ull;
    return h;
}

/* Prefill 1500 tokens in chunks, then 40 decode steps (append + HISA + flat), then a truncate and
 * 10 more; every selection folded into w->hash. */
static int workload(hisa_runtime *rt, worker *w) {
    const int32_t H = w->cfg.n_heads, k = w->cfg.topk;
    static _Thread_local float keys[256 * 128], q[16 * 128], wt[16];
    static _Thread_local int32_t out[256];
    int32_t seq;
    int err = hisa_seq_open(rt, &seq);
    for (int32_t pos = 0; !err && pos < 1500; pos += 250) {
        hisa_tgen_keys(w->seed, pos, 250, keys);
        hisa_write wr = {.n_tokens = 250, .keys = keys, .flags = HISA_HOST_IO};
        err = hisa_seq_extend(rt, seq, 250);
        if (!err) err = hisa_write_range(rt, seq, pos, &wr);
    }
    for (int32_t step = 0; !err && step < 50; step++) {
        if (step == 40) err = hisa_seq_truncate(rt, seq, 1400);
        int32_t len = 0;
        if (!err) err = hisa_seq_extend(rt, seq, 1);
        if (!err) err = hisa_seq_length(rt, seq, &len);
        hisa_tgen_keys(w->seed, len - 1, 1, keys);
        hisa_write wr = {.n_tokens = 1, .seq_ids = &seq, .keys = keys, .flags = HISA_HOST_IO};
        if (!err) err = hisa_write_keys(rt, &wr);
        hisa_tgen_query(w->seed + (uint64_t)step, H, step * 37 % len, q, wt);
        for (int mode = 0; !err && mode <= 1; mode++) {
            hisa_decode d = {.mode = (hisa_mode)mode, .n_seqs = 1, .seq_ids = &seq, .q = q, .w = wt, .out = out,
                             .flags = HISA_HOST_IO};
            err = hisa_select_decode(rt, &d);
            qsort(out, (size_t)k, sizeof(int32_t), cmp_i32);
            w->hash = fold(w->hash, out, k);
            w->n_selections++;
        }
    }
    if (!err) err = hisa_seq_close(rt, seq);
    return err;
}

static void *run_worker(void *arg) {
    worker *w = arg;
    hisa_runtime *rt = NULL;
    w->hash = 0xcbf29ce484222325ull;
    w->n_selections = 0;
    w->err = hisa_open(&rt, &w->cfg, NULL);
    if (!w->err) w->err = workload(rt, w);
    hisa_close(rt);
    return NULL;
}

static worker make_worker(int32_t key_format, int32_t device, uint64_t seed) {
    worker w;
    memset(&w, 0, sizeof w);
    w.cfg = hisa_tconfig(8, 32, 8, 64, key_format, 2048, 2);
    w.cfg.device = device;
    w.seed = seed;
    return w;
}

/* Run a and b alone, then side by side; each must give what it gave alone. */
static void side_by_side(hisa_test_ctx *ctx, worker a, worker b, const char *what) {
    worker alone[2] = {a, b}, both[2] = {a, b};
    run_worker(&alone[0]);
    run_worker(&alone[1]);
    pthread_t th[2];
    for (int i = 0; i < 2; i++) REQUIRE(pthread_create(&th[i], NULL, run_worker, &both[i]) == 0);
    for (int i = 0; i < 2; i++) REQUIRE(pthread_join(th[i], NULL) == 0);
    for (int i = 0; i < 2; i++) {
        CHECKF(!alone[i].err && !both[i].err, "%s worker %d: alone %s, side by side %s", what, i,
               hisa_strerror(alone[i].err), hisa_strerror(both[i].err));
        CHECKF(both[i].n_selections == 100 && alone[i].n_selections == 100, "%s worker %d: %d / %d selections",
               what, i, alone[i].n_selections, both[i].n_selections);
        CHECKF(alone[i].hash == both[i].hash, "%s worker %d: selections differ side by side", what, i);
    }
}

HISA_TEST(threads_two_cpu_runtimes_side_by_side) {
    side_by_side(ctx, make_worker(HISA_KEY_FP8, HISA_DEVICE_CPU, 5), make_worker(HISA_KEY_BF16, HISA_DEVICE_CPU, 6),
                 "cpu fp8 + cpu bf16");
    /* the same workload on two runtimes: same answers, whichever thread is faster */
    side_by_side(ctx, make_worker(HISA_KEY_FP8, HISA_DEVICE_CPU, 7), make_worker(HISA_KEY_FP8, HISA_DEVICE_CPU, 7),
                 "cpu fp8 twice");
}

HISA_TEST(threads_cpu_and_cuda_and_two_cuda_runtimes) {
    hisa_runtime *probe = NULL;
    hisa_config c = hisa_tconfig(8, 32, 8, 64, HISA_KEY_FP8, 2048, 2);
    c.device = HISA_DEVICE_CUDA(0);
    int err = hisa_open(&probe, &c, NULL);
    hisa_close(probe);
    if (err == HISA_ENODEVICE) SKIP("no CUDA device");
    REQUIRE(err == HISA_OK);
    side_by_side(ctx, make_worker(HISA_KEY_FP8, HISA_DEVICE_CPU, 8), make_worker(HISA_KEY_FP8, HISA_DEVICE_CUDA(0), 9),
                 "cpu + cuda");
    side_by_side(ctx, make_worker(HISA_KEY_FP8, HISA_DEVICE_CUDA(0), 10),
                 make_worker(HISA_KEY_BF16, HISA_DEVICE_CUDA(0), 11), "two cuda runtimes on one GPU");
}
