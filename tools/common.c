/* common.c: option parsing, device choice, error reporting and small helpers shared by the
 * subcommands of the hisa tool (declared in tools.h). */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tools.h"

/* --- numbers ------------------------------------------------------------------------------ */
int tool_parse_i64(const char *s, int64_t *out) {
    if (!s || !*s) return -1;
    errno = 0;
    char *end;
    long long v = strtoll(s, &end, 10);
    if (end == s || (errno && errno != ERANGE)) return -1;
    int overflow = errno == ERANGE;
    int64_t mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1ll << 10, end++;
    else if (*end == 'M' || *end == 'm') mul = 1ll << 20, end++;
    else if (*end == 'G' || *end == 'g') mul = 1ll << 30, end++;
    if (*end) return -1;
    if (overflow || (v > 0 && v > INT64_MAX / mul) || (v < 0 && v < INT64_MIN / mul)) return -2;
    *out = (int64_t)v * mul;
    return 0;
}

int tool_parse_size(const char *s, uint64_t *out) {
    if (!s || !*s || *s == '-') return -1;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0)) return -1;
    double mul = 1;
    switch (*end) {
    case 'K': case 'k': mul = 1024.0; end++; break;
    case 'M': case 'm': mul = 1024.0 * 1024; end++; break;
    case 'G': case 'g': mul = 1024.0 * 1024 * 1024; end++; break;
    case 'T': case 't': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: break;
    }
    /* "80G", "80GB" and "80GiB" all mean 80 * 2^30: GPU memory is quoted in binary units. */
    if (mul > 1 && (strcmp(end, "iB") == 0 || strcmp(end, "B") == 0)) end += strlen(end);
    else if (mul == 1 && strcmp(end, "B") == 0) end++;
    if (*end) return -1;
    double bytes = v * mul;
    if (bytes >= 18446744073709551615.0) return -1;
    *out = (uint64_t)bytes;
    return 0;
}

const char *tool_fmt_bytes(uint64_t bytes, char *buf, size_t buf_len) {
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double v = (double)bytes;
    int u = 0;
    while (v >= 1024 && u < 4) v /= 1024, u++;
    if (u == 0) snprintf(buf, buf_len, "%llu B", (unsigned long long)bytes);
    else snprintf(buf, buf_len, "%.*f %s", v < 10 ? 2 : v < 100 ? 1 : 0, v, units[u]);
    return buf;
}

/* --- options ------------------------------------------------------------------------------ */

/* The option of opts named name[0..name_len), or NULL. */
static const tool_opt *find_opt(const tool_opt *opts, int n_opts, const char *name,
                                size_t name_len) {
    assert(opts && name);
    assert(n_opts >= 0);
    const tool_opt *o = NULL;
    for (int k = 0; k < n_opts; k++)
        if (strlen(opts[k].name) == name_len && strncmp(opts[k].name, name, name_len) == 0)
            o = &opts[k];
    return o;
}

/* "--OPT VALUE: out of range; expected LO..HI (WHAT)"; the number too when a suffix hides it. */
static int range_error(const char *cmd, const tool_opt *o, const char *val, int have_v, int64_t v,
                       int64_t lo, int64_t hi) {
    assert(cmd && o && val);
    char shown[48] = "";
    if (have_v && strspn(val, "+-0123456789") != strlen(val))
        snprintf(shown, sizeof shown, " (%lld)", (long long)v);
    fprintf(stderr, "hisa %s: --%s %s%s: out of range; expected %lld..%lld%s%s%s\n", cmd, o->name,
            val, shown, (long long)lo, (long long)hi, o->what ? " (" : "", o->what ? o->what : "",
            o->what ? ")" : "");
    return TOOL_EXIT_USAGE;
}

/* An integer option: the number, in the option's range (the type's when none is set). */
static int set_int(const char *cmd, const tool_opt *o, const char *val) {
    assert(o->kind == TOOL_OPT_INT || o->kind == TOOL_OPT_I64);
    int is32 = o->kind == TOOL_OPT_INT;
    int64_t lo = o->lo, hi = o->hi, v = 0;
    if (lo == 0 && hi == 0) lo = is32 ? INT32_MIN : INT64_MIN, hi = is32 ? INT32_MAX : INT64_MAX;
    int r = tool_parse_i64(val, &v);
    if (r == -1) {
        fprintf(stderr, "hisa %s: --%s: '%s' is not an integer (suffixes K, M, G)\n", cmd,
                o->name, val);
        return TOOL_EXIT_USAGE;
    }
    if (r == -2 || v < lo || v > hi)
        return range_error(cmd, o, val, r == 0, v, lo, hi);
    if (is32) *(int32_t *)o->dest = (int32_t)v;
    else *(int64_t *)o->dest = v;
    return 0;
}

/* A size option: bytes, at least lo. */
static int set_size(const char *cmd, const tool_opt *o, const char *val) {
    assert(o->kind == TOOL_OPT_SIZE);
    uint64_t b = 0;
    if (tool_parse_size(val, &b) != 0) {
        fprintf(stderr, "hisa %s: --%s: '%s' is not a size (e.g. 80G, 512M, 1.5T)\n", cmd,
                o->name, val);
        return TOOL_EXIT_USAGE;
    }
    if (b < (uint64_t)o->lo) {
        fprintf(stderr, "hisa %s: --%s %s: out of range; expected at least %lld byte%s%s%s%s\n",
                cmd, o->name, val, (long long)o->lo, o->lo == 1 ? "" : "s", o->what ? " (" : "",
                o->what ? o->what : "", o->what ? ")" : "");
        return TOOL_EXIT_USAGE;
    }
    *(uint64_t *)o->dest = b;
    return 0;
}

/* A number option: finite, in lo..hi when a range is set. */
static int set_double(const char *cmd, const tool_opt *o, const char *val) {
    assert(o->kind == TOOL_OPT_DOUBLE);
    char *end;
    errno = 0;
    double d = strtod(val, &end);
    if (errno || end == val || *end || !isfinite(d)) {
        fprintf(stderr, "hisa %s: --%s: '%s' is not a number\n", cmd, o->name, val);
        return TOOL_EXIT_USAGE;
    }
    if ((o->lo || o->hi) && !(d >= (double)o->lo && d <= (double)o->hi)) {
        fprintf(stderr, "hisa %s: --%s %s: out of range; expected %lld..%lld%s%s%s\n", cmd,
                o->name, val, (long long)o->lo, (long long)o->hi, o->what ? " (" : "",
                o->what ? o->what : "", o->what ? ")" : "");
        return TOOL_EXIT_USAGE;
    }
    *(double *)o->dest = d;
    return 0;
}

/* Stores val into the destination of o (not a flag) by its kind. Returns 0, or
 * TOOL_EXIT_USAGE after printing what was expected. */
static int set_opt(const char *cmd, const tool_opt *o, const char *val) {
    assert(cmd && o && val);
    assert(o->kind != TOOL_OPT_FLAG);
    switch (o->kind) {
    case TOOL_OPT_INT:
    case TOOL_OPT_I64: return set_int(cmd, o, val);
    case TOOL_OPT_SIZE: return set_size(cmd, o, val);
    case TOOL_OPT_DOUBLE: return set_double(cmd, o, val);
    case TOOL_OPT_STR: *(const char **)o->dest = val; return 0;
    case TOOL_OPT_FLAG: break;
    }
    return 0;
}

int tool_parse_opts(const char *cmd, int argc, char **argv, const tool_opt *opts, int n_opts) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) return -1;
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "hisa %s: unexpected argument '%s' (see hisa %s --help)\n", cmd, a,
                    cmd);
            return TOOL_EXIT_USAGE;
        }
        const char *name = a + 2, *eq = strchr(name, '=');
        size_t name_len = eq ? (size_t)(eq - name) : strlen(name);
        const tool_opt *o = find_opt(opts, n_opts, name, name_len);
        if (!o) {
            fprintf(stderr, "hisa %s: unknown option '--%.*s' (see hisa %s --help)\n", cmd,
                    (int)name_len, name, cmd);
            return TOOL_EXIT_USAGE;
        }
        if (o->kind == TOOL_OPT_FLAG) {
            if (eq) {
                fprintf(stderr, "hisa %s: option --%s takes no value\n", cmd, o->name);
                return TOOL_EXIT_USAGE;
            }
            *(int *)o->dest = 1;
            continue;
        }
        if (!eq && i + 1 >= argc) {
            fprintf(stderr, "hisa %s: option --%s needs a value\n", cmd, o->name);
            return TOOL_EXIT_USAGE;
        }
        int rc = set_opt(cmd, o, eq ? eq + 1 : argv[++i]);
        if (rc) return rc;
    }
    return 0;
}

void tool_cfg_opts_add(tool_opt *opts, int *n, tool_cfg_opts *c) {
    opts[(*n)++] = (tool_opt){"device", TOOL_OPT_STR, &c->device, 0, 0, NULL};
    opts[(*n)++] = (tool_opt){"key-format", TOOL_OPT_STR, &c->key_format, 0, 0, NULL};
    opts[(*n)++] = (tool_opt){"heads", TOOL_OPT_INT, &c->heads, 1, HISA_MAX_HEADS,
                              "indexer heads H, HISA_MAX_HEADS"};
    opts[(*n)++] = (tool_opt){"block-size", TOOL_OPT_INT, &c->block_size, 32, 256,
                              "tokens per block B: 32, 64, 128 or 256"};
    opts[(*n)++] = (tool_opt){"top-blocks", TOOL_OPT_INT, &c->top_blocks, 2, HISA_MAX_TOP_BLOCKS,
                              "blocks m kept by the coarse stage, HISA_MAX_TOP_BLOCKS"};
    opts[(*n)++] = (tool_opt){"topk", TOOL_OPT_INT, &c->topk, 1, HISA_MAX_TOPK,
                              "tokens k selected per query, HISA_MAX_TOPK"};
}

int tool_cfg_apply(const char *cmd, const tool_cfg_opts *c, hisa_config *cfg) {
    if (c->key_format && tool_parse_key_format(cmd, c->key_format, &cfg->key_format))
        return TOOL_EXIT_USAGE;
    /* The options' ranges were checked when they were parsed: 0 here means "not given". */
    assert(c->heads >= 0 && c->block_size >= 0 && c->top_blocks >= 0 && c->topk >= 0);
    assert(c->layers >= 0);
    if (c->heads) cfg->n_heads = c->heads;
    if (c->block_size) cfg->block_size = c->block_size;
    if (c->top_blocks) cfg->top_blocks = c->top_blocks;
    if (c->topk) cfg->topk = c->topk;
    if (c->layers) cfg->n_layers = c->layers;
    return 0;
}

/* --- output files ------------------------------------------------------------------------- */
int tool_check_output(const char *cmd, const char *opt, const char *path) {
    assert(cmd && opt && path);
    struct stat st;
    const char *why = NULL;
    if (!*path) why = "an empty file name";
    else if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) why = "is a directory";
    if (!why) {
        /* Create it (and remove it again) or open the existing file for writing; O_NONBLOCK so
         * that a FIFO without a reader fails instead of blocking. */
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NONBLOCK | O_CLOEXEC, 0666);
        int created = fd >= 0, create_err = errno;
        if (fd < 0 && create_err == EEXIST) fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0)
            why = create_err == ENOENT ? "its directory does not exist"
                  : errno == ENXIO     ? "a FIFO that no process reads"
                                       : strerror(errno);
        else close(fd);
        if (created) unlink(path);
    }
    if (!why) return 0;
    fprintf(stderr, "hisa %s: --%s %s: cannot write the output: %s (checked before the run)\n",
            cmd, opt, path, why);
    return TOOL_EXIT_USAGE;
}

/* --- devices ------------------------------------------------------------------------------ */
static int g_cuda_probed, g_cuda_ok, g_cuda_err;

int tool_cuda_available(void) {
    if (!g_cuda_probed) {
        /* The smallest valid configuration: the probe only asks whether a runtime opens. */
        hisa_config cfg = {.n_layers = 1, .n_heads = 1, .block_size = 32, .top_blocks = 2,
                           .topk = 32, .max_seqs = 1, .max_context = 64, .max_batch = 1,
                           .max_prefill_queries = 1, .device = HISA_DEVICE_CUDA(0)};
        hisa_runtime *rt = NULL;
        g_cuda_err = hisa_open(&rt, &cfg, NULL);
        g_cuda_ok = g_cuda_err == HISA_OK;
        hisa_close(rt);
        g_cuda_probed = 1;
    }
    return g_cuda_ok;
}

int tool_pick_device(const char *cmd, const char *name, int32_t *device_out,
                     const char **why_out) {
    if (why_out) *why_out = "";
    if (!name || strcmp(name, "auto") == 0) {
        if (tool_cuda_available()) {
            *device_out = HISA_DEVICE_CUDA(0);
        } else {
            *device_out = HISA_DEVICE_CPU;
            if (why_out)
                *why_out = g_cuda_err == HISA_ENODEVICE
                               ? "no CUDA device, or hisa built without CUDA"
                               : "the CUDA runtime failed to open";
        }
        return 0;
    }
    if (strcmp(name, "cpu") == 0) {
        *device_out = HISA_DEVICE_CPU;
        return 0;
    }
    int64_t ordinal = 0;
    if (strcmp(name, "cuda") == 0) ordinal = 0;
    else if (strncmp(name, "cuda:", 5) != 0 || tool_parse_i64(name + 5, &ordinal) != 0 ||
             ordinal < 0 || ordinal > 1023) {
        fprintf(stderr, "hisa %s: --device: '%s'; expected cpu, cuda or cuda:N\n", cmd, name);
        return TOOL_EXIT_USAGE;
    }
    *device_out = HISA_DEVICE_CUDA((int32_t)ordinal);
    return 0;
}

/* --- errors ------------------------------------------------------------------------------- */
int tool_lib_error(const char *cmd, const char *what, int err, const hisa_plan *plan) {
    if ((err == HISA_ECONFIG || err == HISA_EOVERFLOW) && plan && plan->invalid_field)
        return tool_config_error(cmd, plan, &plan->config, NULL);
    fprintf(stderr, "hisa %s: %s: %s\n", cmd, what, hisa_strerror(err));
    return err == HISA_ECONFIG || err == HISA_EOVERFLOW || err == HISA_ELIMIT
               ? TOOL_EXIT_USAGE
               : TOOL_EXIT_FAIL;
}

int tool_open(const char *cmd, const hisa_config *cfg, const tool_field_name *names,
              hisa_runtime **rt_out) {
    hisa_plan plan;
    int err = hisa_plan_compute(cfg, &plan);
    if (err != HISA_OK && plan.invalid_field) return tool_config_error(cmd, &plan, cfg, names);
    if (err != HISA_OK) return tool_lib_error(cmd, "configuration", err, NULL);
    err = hisa_open(rt_out, cfg, NULL);
    if (err != HISA_OK) {
        char dev[32], b_dev[32], b_host[32];
        const char *detail = hisa_open_detail();
        tool_device_name(cfg->device, dev, sizeof dev);
        fprintf(stderr, "hisa %s: opening the runtime on %s (%s device, %s host): %s%s%s\n", cmd,
                dev, tool_fmt_bytes(plan.device_bytes, b_dev, sizeof b_dev),
                tool_fmt_bytes(plan.host_bytes, b_host, sizeof b_host), hisa_strerror(err),
                detail && *detail ? ": " : "", detail ? detail : "");
        return err == HISA_ECONFIG ? TOOL_EXIT_USAGE : TOOL_EXIT_FAIL;
    }
    return 0;
}

/* --- helpers ------------------------------------------------------------------------------ */
double tool_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double tool_percentile(double *v, int64_t n, double p) {
    if (n <= 0) return 0;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    /* nearest rank: the smallest value with at least p% of the samples at or below it */
    int64_t rank = (int64_t)ceil(p / 100.0 * (double)n);
    if (rank < 1) rank = 1;
    if (rank > n) rank = n;
    return v[rank - 1];
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Sorted distinct non-negative entries of sel into out; returns how many. */
static int32_t distinct_sorted(const int32_t *sel, int32_t k, int32_t *out) {
    int32_t n = 0;
    for (int32_t i = 0; i < k; i++)
        if (sel[i] >= 0) out[n++] = sel[i];
    qsort(out, (size_t)n, sizeof *out, cmp_i32);
    int32_t m = 0;
    for (int32_t i = 0; i < n; i++)
        if (m == 0 || out[m - 1] != out[i]) out[m++] = out[i];
    return m;
}

double tool_iou(const int32_t *a, const int32_t *b, int32_t k, int32_t *scratch) {
    int32_t *sa = scratch, *sb = scratch + k;
    int32_t na = distinct_sorted(a, k, sa), nb = distinct_sorted(b, k, sb);
    int32_t i = 0, j = 0, inter = 0;
    while (i < na && j < nb) {
        if (sa[i] == sb[j]) inter++, i++, j++;
        else if (sa[i] < sb[j]) i++;
        else j++;
    }
    int32_t uni = na + nb - inter;
    return uni == 0 ? 1.0 : (double)inter / (double)uni;
}

int tool_selected(const int32_t *sel, int32_t k, int32_t pos) {
    for (int32_t i = 0; i < k; i++)
        if (sel[i] == pos) return 1;
    return 0;
}

void tool_json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20) fprintf(f, "\\u%04x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
}
