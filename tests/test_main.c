/* test_main.c: runs every registered test (or those whose names contain argv[1..]). */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"

#define HISA_TESTS_MAX 512
static struct {
    const char *name;
    hisa_test_fn fn;
} g_tests[HISA_TESTS_MAX];
static int g_n_tests;

void hisa_test_register(const char *name, hisa_test_fn fn) {
    if (g_n_tests >= HISA_TESTS_MAX) abort(); /* raise HISA_TESTS_MAX */
    g_tests[g_n_tests].name = name;
    g_tests[g_n_tests].fn = fn;
    g_n_tests++;
}

void hisa_test_fail(hisa_test_ctx *ctx, const char *file, int line, const char *fmt, ...) {
    ctx->failures++;
    if (ctx->failures > 20) return; /* one broken loop must not flood the log */
    printf("  FAIL %s (%s:%d): ", ctx->name, file, line);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

/* --- allocation counting through -Wl,--wrap ---------------------------------------------- */
static int g_alloc_armed;
static int64_t g_alloc_count;
void *__real_malloc(size_t n);
void *__real_calloc(size_t a, size_t b);
void *__real_realloc(void *p, size_t n);
void *__real_aligned_alloc(size_t a, size_t n);
int __real_posix_memalign(void **p, size_t a, size_t n);
void *__wrap_malloc(size_t n) {
    g_alloc_count += g_alloc_armed;
    return __real_malloc(n);
}
void *__wrap_calloc(size_t a, size_t b) {
    g_alloc_count += g_alloc_armed;
    return __real_calloc(a, b);
}
void *__wrap_realloc(void *p, size_t n) {
    g_alloc_count += g_alloc_armed;
    return __real_realloc(p, n);
}
void *__wrap_aligned_alloc(size_t a, size_t n) {
    g_alloc_count += g_alloc_armed;
    return __real_aligned_alloc(a, n);
}
int __wrap_posix_memalign(void **p, size_t a, size_t n) {
    g_alloc_count += g_alloc_armed;
    return __real_posix_memalign(p, a, n);
}
void hisa_test_alloc_arm(void) {
    g_alloc_count = 0;
    g_alloc_armed = 1;
}
int64_t hisa_test_alloc_disarm(void) {
    g_alloc_armed = 0;
    return g_alloc_count;
}

static int matches(const char *name, int argc, char **argv) {
    if (argc <= 1) return 1;
    for (int i = 1; i < argc; i++)
        if (strstr(name, argv[i])) return 1;
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int passed = 0, failed = 0, skipped = 0;
    for (int i = 0; i < g_n_tests; i++) {
        if (!matches(g_tests[i].name, argc, argv)) continue;
        hisa_test_ctx ctx = {g_tests[i].name, 0, 0};
        g_tests[i].fn(&ctx);
        if (ctx.failures) {
            printf("FAIL %s (%d checks)\n", ctx.name, ctx.failures);
            failed++;
        } else if (ctx.skipped) {
            skipped++;
        } else {
            printf("ok   %s\n", ctx.name);
            passed++;
        }
    }
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
