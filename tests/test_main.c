/* test_main.c: runs every registered test (or those whose names contain argv[1..]), several at
 * once in child processes (HISA_TEST_JOBS). */
#include <assert.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../tools/tools.h"
#include "test.h"

#define HISA_TESTS_MAX 512
static struct {
    const char *name;
    hisa_test_fn fn;
    int serial; /* runs with no other test beside it */
} g_tests[HISA_TESTS_MAX];
static int g_n_tests;

void hisa_test_register(const char *name, hisa_test_fn fn, int serial) {
    if (g_n_tests >= HISA_TESTS_MAX) abort(); /* raise HISA_TESTS_MAX */
    g_tests[g_n_tests].name = name;
    g_tests[g_n_tests].fn = fn;
    g_tests[g_n_tests].serial = serial;
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

enum { R_PASS = 0, R_FAIL = 1, R_SKIP = 2 };
/* A child's exit status for each result: values no runtime uses (the sanitizers exit 1, a test
 * that calls exit() its own), so any other status is a failure named as such. */
static const int k_child_status[3] = {0, 100, 101};

/* Test i in this process: its FAIL line (with the failed-check count) printed here. */
static int run_one(int i) {
    hisa_test_ctx ctx = {g_tests[i].name, 0, 0};
    g_tests[i].fn(&ctx);
    if (ctx.failures) {
        printf("FAIL %s (%d checks)\n", ctx.name, ctx.failures);
        return R_FAIL;
    }
    return ctx.skipped ? R_SKIP : R_PASS;
}

static void report(int i, int r, double secs, int *counts) {
    if (r == R_PASS) printf("ok   %s (%.1f s)\n", g_tests[i].name, secs);
    counts[r]++;
}

/* Tests run in forked children, `jobs` at a time (a serial test alone): each child's stdout and
 * stderr go to its own file, printed whole in registration order once it and every test before
 * it are done, so the log reads as a sequential run's. A child that crashes or exits with a
 * status of its own (a sanitizer's report) fails its test and no other. The parent touches no
 * CUDA (each child opens its own context) and starts no threads before forking. */
typedef struct job {
    int test, result, done;
    pid_t pid;
    FILE *out;
    double t0, secs;
} job;

static int start_job(job *j) {
    j->out = tmpfile();
    if (!j->out) return -1;
    fflush(NULL); /* nothing buffered is inherited and written twice */
    j->t0 = tool_now_s();
    j->pid = fork();
    if (j->pid < 0) {
        fclose(j->out);
        return -1;
    }
    if (j->pid == 0) {
        if (dup2(fileno(j->out), 1) < 0 || dup2(fileno(j->out), 2) < 0) _exit(2);
        int r = run_one(j->test);
        fflush(stdout);
        exit(k_child_status[r]); /* exit, not _exit: the sanitizers' exit checks run */
    }
    return 0;
}

static void finish_job(job *j, int status) {
    j->secs = tool_now_s() - j->t0;
    j->done = 1;
    for (int r = R_PASS; r <= R_SKIP; r++)
        if (WIFEXITED(status) && WEXITSTATUS(status) == k_child_status[r]) {
            j->result = r;
            return;
        }
    j->result = R_FAIL;
    fseek(j->out, 0, SEEK_END);
    if (WIFSIGNALED(status)) fprintf(j->out, "FAIL %s (killed by signal %d)\n", g_tests[j->test].name, WTERMSIG(status));
    else fprintf(j->out, "FAIL %s (exit status %d)\n", g_tests[j->test].name, WEXITSTATUS(status));
    fflush(j->out);
}

static void print_job(job *j, int *counts) {
    rewind(j->out);
    char buf[4096];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, j->out)) > 0) fwrite(buf, 1, got, stdout);
    fclose(j->out);
    report(j->test, j->result, j->secs, counts);
}

static int run_forked(job *jobs, int n, int n_par, int *counts) {
    int started = 0, printed = 0, running = 0, serial_running = 0;
    while (printed < n) {
        assert(running <= n_par && started <= n);
        while (running < n_par && started < n && !serial_running) {
            const int serial = g_tests[jobs[started].test].serial;
            if (serial && running > 0) break; /* it waits for the others, then runs alone */
            if (start_job(&jobs[started])) {
                while (wait(NULL) > 0) continue; /* no child left behind */
                return -1;
            }
            started++, running++;
            serial_running = serial;
        }
        int status = 0;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) return -1;
        for (int k = 0; k < started; k++)
            if (jobs[k].pid == pid && !jobs[k].done) {
                finish_job(&jobs[k], status);
                running--;
                if (g_tests[jobs[k].test].serial) serial_running = 0;
            }
        for (; printed < started && jobs[printed].done; printed++) print_job(&jobs[printed], counts);
    }
    return 0;
}

/* HISA_TEST_JOBS: tests at once (1: one after another in this process, as under a debugger);
 * default the online CPUs, at most 8. */
static int jobs_wanted(void) {
    const char *e = getenv("HISA_TEST_JOBS");
    long n = e && *e ? strtol(e, NULL, 10) : sysconf(_SC_NPROCESSORS_ONLN);
    const long most = e && *e ? 64 : 8;
    return n < 1 ? 1 : n > most ? (int)most : (int)n;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int counts[3] = {0, 0, 0}; /* R_PASS, R_FAIL, R_SKIP */
    static job jobs[HISA_TESTS_MAX];
    int n = 0;
    for (int i = 0; i < g_n_tests; i++)
        if (matches(g_tests[i].name, argc, argv)) jobs[n++] = (job){.test = i};
    const int n_par = jobs_wanted();
    if (n_par > 1 && n > 1) {
        if (run_forked(jobs, n, n_par, counts)) {
            perror("hisa_tests: running tests in child processes");
            return 1;
        }
    } else {
        for (int k = 0; k < n; k++) {
            const double t0 = tool_now_s();
            const int r = run_one(jobs[k].test);
            report(jobs[k].test, r, tool_now_s() - t0, counts);
        }
    }
    printf("%d passed, %d failed, %d skipped\n", counts[R_PASS], counts[R_FAIL], counts[R_SKIP]);
    return counts[R_FAIL] ? 1 : 0;
}
