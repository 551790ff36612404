/* test.h: hisa's tiny test harness. A test is `HISA_TEST(name) { ... }` in any tests/ .c file;
 * it registers itself before main. CHECK records a failure and goes on; REQUIRE stops the test.
 * A test that cannot run here (no GPU) calls SKIP("no CUDA device"): it prints
 * "skipped: no CUDA device" and counts as skipped, never as passed.
 * The runner's last line is "N passed, N failed, N skipped"; exit status 1 on any failure.
 * Tests run several at once, each in a child process of its own (HISA_TEST_JOBS, test_main.c), so
 * a test may not count on another's state; one that reads state of the whole machine (free device
 * memory) is HISA_TEST_SERIAL and runs with no other test beside it. */
#ifndef HISA_TEST_H
#define HISA_TEST_H

#include <stdint.h>
#include <stdio.h>

typedef struct hisa_test_ctx {
    const char *name;
    int failures;
    int skipped;
} hisa_test_ctx;

typedef void (*hisa_test_fn)(hisa_test_ctx *ctx);
void hisa_test_register(const char *name, hisa_test_fn fn, int serial);
void hisa_test_fail(hisa_test_ctx *ctx, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define HISA_TEST_(name, serial)                                                      \
    static void hisa_test_##name(hisa_test_ctx *ctx);                                 \
    __attribute__((constructor)) static void hisa_test_reg_##name(void) {             \
        hisa_test_register(#name, hisa_test_##name, serial);                          \
    }                                                                                 \
    static void hisa_test_##name(hisa_test_ctx *ctx)
#define HISA_TEST(name) HISA_TEST_(name, 0)
#define HISA_TEST_SERIAL(name) HISA_TEST_(name, 1)

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) hisa_test_fail(ctx, __FILE__, __LINE__, "CHECK(%s)", #cond);     \
    } while (0)
#define CHECKF(cond, ...)                                                             \
    do {                                                                              \
        if (!(cond)) hisa_test_fail(ctx, __FILE__, __LINE__, __VA_ARGS__);            \
    } while (0)
#define REQUIRE(cond)                                                                 \
    do {                                                                              \
        if (!(cond)) {                                                                \
            hisa_test_fail(ctx, __FILE__, __LINE__, "REQUIRE(%s)", #cond);            \
            return;                                                                   \
        }                                                                             \
    } while (0)
#define CHECK_EQ_INT(a, b)                                                            \
    do {                                                                              \
        long long a_ = (long long)(a), b_ = (long long)(b);                           \
        if (a_ != b_)                                                                 \
            hisa_test_fail(ctx, __FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, \
                           a_, b_);                                                   \
    } while (0)
#define SKIP(why)                                                                     \
    do {                                                                              \
        printf("  %s: skipped: %s\n", ctx->name, why);                                \
        ctx->skipped = 1;                                                             \
        return;                                                                       \
    } while (0)

/* Allocation counter (the test binary links with --wrap=malloc etc.): arm, run library
 * calls, read how many allocations happened meanwhile. */
void hisa_test_alloc_arm(void);
int64_t hisa_test_alloc_disarm(void);

/* Deterministic RNG for tests (splitmix64). */
static inline uint64_t hisa_test_rng(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static inline float hisa_test_uniform(uint64_t *s) { /* [-1, 1) */
    return (float)((hisa_test_rng(s) >> 40) * (1.0 / 8388608.0) - 1.0);
}
static inline float hisa_test_gauss(uint64_t *s) { /* sum of 4 uniforms, unit-ish variance */
    return (hisa_test_uniform(s) + hisa_test_uniform(s) + hisa_test_uniform(s) +
            hisa_test_uniform(s)) * 0.8660254f;
}

#endif /* HISA_TEST_H */
