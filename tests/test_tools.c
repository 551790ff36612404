/* test_tools.c: tests of the hisa command line: the .npy reader and writer, the synthetic
 * generator, select / eval / niah / mem / stream, called directly and end to end through the
 * built binary (env HISA_TOOL, set by `make test`), exit codes checked. Small sizes: the whole
 * file runs in seconds on two CPU cores. */
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../tools/npy.h"
#include "../tools/synth.h"
#include "../tools/tools.h"
#include "test.h"

#define D HISA_HEAD_DIM

/* --- helpers ------------------------------------------------------------------------------ */
typedef struct tmpdir {
    char path[128];
} tmpdir;

static int tmp_make(tmpdir *t) {
    const char *base = getenv("TMPDIR");
    snprintf(t->path, sizeof t->path, "%s/hisa_tools_XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(t->path) ? 0 : -1;
}

static const char *tmp_file(const tmpdir *t, const char *name, char *buf, size_t n) {
    snprintf(buf, n, "%s/%s", t->path, name);
    return buf;
}

static void tmp_remove(tmpdir *t) {
    /* Only the plain files the tests wrote, then the directory itself. */
    DIR *dir = opendir(t->path);
    if (dir) {
        struct dirent *ent;
        while ((ent = readdir(dir)) != NULL) {
            if (strcmp(ent->d_name, ".") == 0 || strcmp(ent->d_name, "..") == 0) continue;
            char p[600];
            snprintf(p, sizeof p, "%s/%s", t->path, ent->d_name);
            unlink(p);
        }
        closedir(dir);
    }
    if (rmdir(t->path) != 0) fprintf(stderr, "warning: could not remove %s\n", t->path);
}

static int write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(data, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = malloc(1 << 20);
    size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
    fclose(f);
    if (buf) buf[n] = 0;
    return buf;
}

/* Runs "$HISA_TOOL args" with stdout and stderr captured under t; returns the exit code, or
 * -1 when the tool did not run. *out / *err (may be NULL) get the texts (caller frees). */
static int run_tool(const tmpdir *t, const char *args, char **out, char **err) {
    const char *tool = getenv("HISA_TOOL");
    char o[300], e[300], cmd[4096];
    tmp_file(t, "stdout.txt", o, sizeof o);
    tmp_file(t, "stderr.txt", e, sizeof e);
    /* a tool that hangs (a FIFO it waits on) fails the test instead of stopping make test */
    snprintf(cmd, sizeof cmd, "timeout 120 %s %s >'%s' 2>'%s' </dev/null", tool, args, o, e);
    int st = system(cmd);
    if (out) *out = read_text(o);
    if (err) *err = read_text(e);
    if (st == -1 || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

/* An npy file image built by hand, for the malformed cases. */
static size_t npy_image(uint8_t *buf, uint8_t major, const char *dict, const void *data,
                        size_t data_len) {
    size_t pre = major == 1 ? 10 : 12, n = strlen(dict);
    size_t total = (pre + n + 1 + 63) / 64 * 64, hl = total - pre;
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = major;
    buf[7] = 0;
    buf[8] = (uint8_t)(hl & 0xff);
    buf[9] = (uint8_t)(hl >> 8);
    if (major != 1) buf[10] = buf[11] = 0;
    memcpy(buf + pre, dict, n);
    memset(buf + pre + n, ' ', hl - n - 1);
    buf[total - 1] = '\n';
    memcpy(buf + total, data, data_len);
    return total + data_len;
}

/* --- the planted selection case ------------------------------------------------------------
 * L = 256 tokens, B = 32 (8 blocks), m = 3, k = 7, H = 2 heads both equal to e0, w = 1.
 * Every key is 0 except ten planted tokens mag * e0, so I(s) = 2 * mag(s) exactly.
 *   block 0: 3 (7.0), 5 (6.5)          block 1: 40 (9.0)
 *   block 3: 100 (5.0), 101 (5.5), 102 (6.0)
 *   block 5: 170 (8.5)   block 6: 200 (8.0)   block 7: 250 (4.0), 251 (4.5)
 * Flat: the 7 largest = {3, 5, 40, 101, 102, 170, 200}.
 * HISA: blocks 0 and 7 always; the one other slot goes to the largest block mean, block 3
 * (16.5 / 32 against 9 / 32 for block 1), so the candidates' positive tokens are exactly
 * {3, 5, 100, 101, 102, 250, 251}. IoU = |{3,5,101,102}| / 10 = 0.4. */
#define PL_L 256
static const int32_t k_pl_pos[10] = {3, 5, 40, 100, 101, 102, 170, 200, 250, 251};
static const float k_pl_mag[10] = {7.0f, 6.5f, 9.0f, 5.0f, 5.5f, 6.0f, 8.5f, 8.0f, 4.0f, 4.5f};
static const int32_t k_pl_flat[7] = {3, 5, 40, 101, 102, 170, 200};
static const int32_t k_pl_hisa[7] = {3, 5, 100, 101, 102, 250, 251};
#define PL_GEOM "--block-size 32 --top-blocks 3 --topk 7"
#define PL_ARGS PL_GEOM " --device cpu"

/* Writes K.npy, Q.npy (n_q queries), W.npy into t. */
static int write_planted(const tmpdir *t, int32_t n_q) {
    static float keys[PL_L * D];
    memset(keys, 0, sizeof keys);
    for (int i = 0; i < 10; i++) keys[(size_t)k_pl_pos[i] * D] = k_pl_mag[i];
    float q[4 * 2 * D], w[4 * 2];
    memset(q, 0, sizeof q);
    for (int i = 0; i < n_q * 2; i++) {
        q[(size_t)i * D] = 1.0f;
        w[i] = 1.0f;
    }
    char p[300], err[NPY_ERR_MAX];
    int64_t ks[2] = {PL_L, D}, qs[3] = {n_q, 2, D}, wsh[2] = {n_q, 2};
    if (npy_write(tmp_file(t, "K.npy", p, sizeof p), NPY_F4, 2, ks, keys, err, sizeof err))
        return -1;
    if (npy_write(tmp_file(t, "Q.npy", p, sizeof p), NPY_F4, 3, qs, q, err, sizeof err))
        return -1;
    if (npy_write(tmp_file(t, "W.npy", p, sizeof p), NPY_F4, 2, wsh, w, err, sizeof err))
        return -1;
    return 0;
}

/* npy_write into the temp dir; 0 on success. */
static int put_npy(const tmpdir *t, const char *name, npy_dtype dt, int32_t ndim,
                   const int64_t *shape, const void *data) {
    char p[300], err[NPY_ERR_MAX];
    return npy_write(tmp_file(t, name, p, sizeof p), dt, ndim, shape, data, err, sizeof err);
}

static int same_set(const int32_t *row, const int32_t *want, int32_t k) {
    for (int32_t i = 0; i < k; i++)
        if (!tool_selected(row, k, want[i])) return 0;
    return 1;
}

/* --- npy ---------------------------------------------------------------------------------- */
HISA_TEST(tools_npy_roundtrip) {
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    char p[300], err[NPY_ERR_MAX];
    float f[6] = {1.5f, -2.0f, 0.0f, 3.25f, 1e-3f, -7.0f};
    int32_t i4[3] = {-1, 0, 2147483647};
    uint8_t u1[5] = {0, 1, 127, 128, 255};
    uint16_t u2[4] = {0, 0x3f80, 0xbf80, 0xffff}; /* bf16 bits: 0, 1, -1, a NaN */
    int64_t s23[2] = {2, 3}, s3[1] = {3}, s5x1[2] = {5, 1}, s4[1] = {4};
    CHECK(npy_write(tmp_file(&t, "f.npy", p, sizeof p), NPY_F4, 2, s23, f, err, sizeof err) == 0);
    CHECK(npy_write(tmp_file(&t, "i.npy", p, sizeof p), NPY_I4, 1, s3, i4, err, sizeof err) == 0);
    CHECK(npy_write(tmp_file(&t, "u.npy", p, sizeof p), NPY_U1, 2, s5x1, u1, err, sizeof err) == 0);
    CHECK(npy_write(tmp_file(&t, "b.npy", p, sizeof p), NPY_U2, 1, s4, u2, err, sizeof err) == 0);
    npy_array a;
    REQUIRE(npy_read(tmp_file(&t, "f.npy", p, sizeof p), &a, err, sizeof err) == 0);
    CHECK(a.dtype == NPY_F4 && a.ndim == 2 && a.shape[0] == 2 && a.shape[1] == 3 && a.count == 6);
    CHECK(memcmp(a.data, f, sizeof f) == 0);
    npy_free(&a);
    REQUIRE(npy_read(tmp_file(&t, "i.npy", p, sizeof p), &a, err, sizeof err) == 0);
    CHECK(a.dtype == NPY_I4 && a.ndim == 1 && a.shape[0] == 3);
    CHECK(memcmp(a.data, i4, sizeof i4) == 0);
    npy_free(&a);
    REQUIRE(npy_read(tmp_file(&t, "u.npy", p, sizeof p), &a, err, sizeof err) == 0);
    CHECK(a.dtype == NPY_U1 && a.ndim == 2 && a.shape[0] == 5 && a.shape[1] == 1);
    CHECK(memcmp(a.data, u1, sizeof u1) == 0);
    npy_free(&a);
    REQUIRE(npy_read(tmp_file(&t, "b.npy", p, sizeof p), &a, err, sizeof err) == 0);
    CHECK(a.dtype == NPY_U2 && a.ndim == 1 && a.shape[0] == 4 && a.count == 4);
    CHECK(memcmp(a.data, u2, sizeof u2) == 0);
    CHECK(npy_dtype_size(NPY_U2) == 2 && strcmp(npy_dtype_descr(NPY_U2), "<u2") == 0);
    npy_free(&a);
    char *bt = read_text(tmp_file(&t, "b.npy", p, sizeof p));
    CHECK(bt && strstr(bt + 10, "{'descr': '<u2', 'fortran_order': False, 'shape': (4,), }"));
    free(bt);
    /* The header numpy writes: text dict, data on a 64-byte boundary. */
    char *txt = read_text(tmp_file(&t, "f.npy", p, sizeof p));
    REQUIRE(txt);
    CHECK(strstr(txt + 10, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }") ==
          txt + 10);
    CHECK(strchr(txt + 10, '\n') == txt + 127); /* 10 + 60-byte dict + padding = 128 */
    free(txt);
    tmp_remove(&t);
}

HISA_TEST(tools_npy_v2_and_variants) {
    uint8_t buf[512];
    float data[4] = {1, 2, 3, 4};
    char err[NPY_ERR_MAX];
    npy_array a;
    /* version 2.0 header, double quotes, no trailing comma, extra spaces, 1-d shape */
    size_t n = npy_image(buf, 2,
                         "{\"shape\": ( 4, ), \"fortran_order\": False, \"descr\": \"<f4\"}",
                         data, sizeof data);
    REQUIRE(npy_parse("v2.npy", buf, n, &a, err, sizeof err) == 0);
    CHECK(a.ndim == 1 && a.shape[0] == 4 && ((float *)a.data)[3] == 4.0f);
    npy_free(&a);
    /* 0-d array: shape () holds one element */
    n = npy_image(buf, 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (), }", data, 4);
    REQUIRE(npy_parse("scalar.npy", buf, n, &a, err, sizeof err) == 0);
    CHECK(a.ndim == 0 && a.count == 1);
    npy_free(&a);
    /* an empty array: shape (0, 128) */
    n = npy_image(buf, 1, "{'descr': '|u1', 'fortran_order': False, 'shape': (0, 128), }", data, 0);
    REQUIRE(npy_parse("empty.npy", buf, n, &a, err, sizeof err) == 0);
    CHECK(a.count == 0 && a.shape[1] == 128);
    npy_free(&a);
}

/* Each malformed file: the parser's message, then `hisa select` with it as --keys (or the
 * named input) must exit 2 and name the file. */
HISA_TEST(tools_npy_malformed_table) {
    float data[8 * D];
    memset(data, 0, sizeof data);
    static const struct {
        const char *name;
        int major;
        const char *dict; /* NULL: raw bytes below */
        size_t data_len;
        const char *raw;
        size_t raw_len;
        const char *message; /* substring of the error */
    } cases[] = {
        {"f8.npy", 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (4, 128), }", 4 * D * 8,
         NULL, 0, "dtype '<f8' (float64) is not supported"},
        {"fortran.npy", 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (4, 128), }",
         4 * D * 4, NULL, 0, "fortran_order is True; expected C order"},
        {"truncated.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (8, 128), }",
         4 * D * 4, NULL, 0, "truncated: shape [8,128] float32 needs 4096 data bytes"},
        {"trailing.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 128), }",
         4 * D * 4, NULL, 0, "bytes after the data"},
        {"bigendian.npy", 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (4, 128), }",
         4 * D * 4, NULL, 0, "big-endian float32"},
        {"v3.npy", 3, "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 128), }", 4 * D * 4,
         NULL, 0, "format version 3.0 is not supported; expected 1.0 or 2.0"},
        {"badkey.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 128), 'x': 1}",
         4 * D * 4, NULL, 0, "unexpected key 'x'"},
        {"badshape.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4, -1), }", 0,
         NULL, 0, "shape entries must be non-negative integers"},
        {"magic.npy", 0, NULL, 0, "PK\x03\x04 this is a zip, not an npy file", 35,
         "bad magic; expected the bytes \\x93NUMPY"},
        {"short.npy", 0, NULL, 0, "\x93NUM", 4, "truncated"},
        {"header.npy", 0, NULL, 0, "\x93NUMPY\x01\x00\x40\x00{'descr'", 18,
         "truncated: the header says 64 header bytes"},
        {"wrongshape.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 64), }",
         4 * 64 * 4, NULL, 0, "expected keys [L,128] (or uint8 fp8 codes): float32 [*,128]; got "
                              "float32 [4,64]"},
        {"int_keys.npy", 1, "{'descr': '<i4', 'fortran_order': False, 'shape': (4, 128), }",
         4 * D * 4, NULL, 0, "got int32 [4,128]"},
    };
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    REQUIRE(write_planted(&t, 1) == 0);
    const char *tool = getenv("HISA_TOOL");
    static uint8_t buf[8 * D * 8 + 256];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t n;
        if (cases[c].dict) {
            n = npy_image(buf, (uint8_t)cases[c].major, cases[c].dict, data, cases[c].data_len);
        } else {
            memcpy(buf, cases[c].raw, cases[c].raw_len);
            n = cases[c].raw_len;
        }
        char p[300], err[NPY_ERR_MAX] = "";
        tmp_file(&t, cases[c].name, p, sizeof p);
        REQUIRE(write_bytes(p, buf, n) == 0);
        /* the parser alone (shape checks come from the command) */
        npy_array a;
        int parsed = npy_read(p, &a, err, sizeof err) == 0;
        if (parsed) npy_free(&a);
        int shape_case = strcmp(cases[c].name, "wrongshape.npy") == 0 ||
                         strcmp(cases[c].name, "int_keys.npy") == 0;
        CHECKF(parsed == shape_case, "%s: parse result %d", cases[c].name, parsed);
        if (!shape_case)
            CHECKF(strstr(err, cases[c].message) && strstr(err, p) == err,
                   "%s: message '%s' lacks '%s'", cases[c].name, err, cases[c].message);
        if (!tool) continue;
        char args[1200], Q[300], W[300];
        snprintf(args, sizeof args, "select --keys '%s' --queries '%s' --weights '%s' " PL_ARGS,
                 p, tmp_file(&t, "Q.npy", Q, sizeof Q), tmp_file(&t, "W.npy", W, sizeof W));
        char *e = NULL;
        int rc = run_tool(&t, args, NULL, &e);
        CHECKF(rc == 2, "%s: exit %d, expected 2", cases[c].name, rc);
        CHECKF(e && strstr(e, cases[c].message) && strstr(e, cases[c].name),
               "%s: stderr '%s' lacks '%s'", cases[c].name, e ? e : "", cases[c].message);
        free(e);
    }
    if (!tool) {
        tmp_remove(&t);
        SKIP("HISA_TOOL not set: end-to-end half not run");
    }
    tmp_remove(&t);
}

/* Inputs that parse but do not fit together: each exits 2 naming the file. */
HISA_TEST(tools_select_mismatched_inputs) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    REQUIRE(write_planted(&t, 2) == 0);
    float w3[3 * 2] = {0}, sc[PL_L];
    uint8_t codes[PL_L * D];
    memset(codes, 0, sizeof codes);
    for (int i = 0; i < PL_L; i++) sc[i] = 1;
    int64_t s32[2] = {3, 2}, cs[2] = {PL_L, D}, ss[1] = {PL_L}, ss_bad[1] = {PL_L - 1};
    int32_t needles[2] = {3, PL_L + 5};
    int64_t ns[1] = {2};
    REQUIRE(put_npy(&t, "W3.npy", NPY_F4, 2, s32, w3) == 0);
    REQUIRE(put_npy(&t, "C.npy", NPY_U1, 2, cs, codes) == 0);
    REQUIRE(put_npy(&t, "S.npy", NPY_F4, 1, ss, sc) == 0);
    REQUIRE(put_npy(&t, "Sbad.npy", NPY_F4, 1, ss_bad, sc) == 0);
    REQUIRE(put_npy(&t, "N.npy", NPY_I4, 1, ns, needles) == 0);
    const char *d = t.path;
    static const struct {
        const char *args, *message;
    } cases[] = {
        {"select --keys %s/K.npy --queries %s/Q.npy --weights %s/W3.npy",
         "W3.npy: expected weights [n_q,H] with n_q=2, H=2"},
        {"select --keys %s/C.npy --queries %s/Q.npy --weights %s/W.npy",
         "C.npy: uint8 keys are fp8 e4m3 codes and need --scales"},
        {"select --keys %s/C.npy --scales %s/Sbad.npy --queries %s/Q.npy --weights %s/W.npy",
         "Sbad.npy: expected fp8 scales [L] with L=256"},
        {"select --keys %s/K.npy --scales %s/S.npy --queries %s/Q.npy --weights %s/W.npy",
         "S.npy: --scales goes with uint8 fp8 codes"},
        {"select --keys %s/C.npy --scales %s/S.npy --queries %s/Q.npy --weights %s/W.npy "
         "--key-format bf16",
         "holds fp8 codes"},
        {"select --keys %s/Q.npy --queries %s/Q.npy --weights %s/W.npy", "Q.npy: expected keys"},
        {"select --keys %s/K.npy --queries %s/K.npy --weights %s/W.npy",
         "K.npy: expected queries [n_q,H,128]"},
        {"select --keys %s/missing.npy --queries %s/Q.npy --weights %s/W.npy",
         "missing.npy: cannot open"},
        {"select --queries %s/Q.npy --weights %s/W.npy", "--keys FILE.npy is required"},
        {"eval --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy --needles %s/N.npy",
         "N.npy: needle position 261 out of range"},
        {"select --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy --mode fast",
         "--mode: 'fast'"},
        {"select --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy --topk 4096",
         "--top-blocks 3, --block-size 32 and --topk 4096 break the rule (top-blocks - 1) * "
         "block-size >= topk: (3 - 1) * 32 = 64 < 4096"},
        {"select --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy --bogus 1",
         "unknown option '--bogus'"},
        {"select --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy --heads 4",
         "--heads 4, but"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char args[1600], full[1700];
        snprintf(args, sizeof args, cases[c].args, d, d, d, d);
        snprintf(full, sizeof full, "%s %s", args,
                 strstr(args, "--topk") ? "--block-size 32 --top-blocks 3 --device cpu" : PL_ARGS);
        char *e = NULL;
        int rc = run_tool(&t, full, NULL, &e);
        CHECKF(rc == 2, "case %zu (%s): exit %d, expected 2", c, args, rc);
        CHECKF(e && strstr(e, cases[c].message), "case %zu: stderr '%s' lacks '%s'", c,
               e ? e : "", cases[c].message);
        free(e);
    }
    tmp_remove(&t);
}

/* --- select -------------------------------------------------------------------------------- */
HISA_TEST(tools_select_planted_direct) {
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    REQUIRE(write_planted(&t, 2) == 0);
    char K[300], Q[300], W[300];
    tool_inputs in = {.keys_path = tmp_file(&t, "K.npy", K, sizeof K),
                      .queries_path = tmp_file(&t, "Q.npy", Q, sizeof Q),
                      .weights_path = tmp_file(&t, "W.npy", W, sizeof W)};
    REQUIRE(tool_inputs_load("test", &in) == 0);
    CHECK(in.L == PL_L && in.n_q == 2 && in.H == 2 && !in.fp8_codes);
    /* The CPU reference, and the CUDA backend through HISA_HOST_IO when a GPU is here. */
    const char *devices[2] = {"cpu", "cuda"};
    int n_dev = tool_cuda_available() ? 2 : 1;
    for (int dv = 0; dv < n_dev; dv++) {
        tool_cfg_opts c = {.device = devices[dv], .block_size = 32, .top_blocks = 3, .topk = 7};
        hisa_runtime *rt = NULL;
        int32_t seq;
        REQUIRE(tool_inputs_open("test", &in, &c, &rt, &seq) == 0);
        int32_t out[2 * 7];
        double s;
        /* two queries (prefill path) at positions 254 and 255: both see every planted token */
        CHECK(tool_inputs_select(rt, seq, &in, HISA_MODE_FLAT, out, &s) == 0);
        CHECKF(same_set(out, k_pl_flat, 7) && same_set(out + 7, k_pl_flat, 7), "%s flat",
               devices[dv]);
        CHECK(tool_inputs_select(rt, seq, &in, HISA_MODE_HISA, out, &s) == 0);
        CHECKF(same_set(out, k_pl_hisa, 7) && same_set(out + 7, k_pl_hisa, 7), "%s hisa",
               devices[dv]);
        int32_t scratch[14];
        CHECK(tool_iou(out, out + 7, 7, scratch) == 1.0);
        hisa_close(rt);
    }
    tool_inputs_free(&in);
    tmp_remove(&t);
}

HISA_TEST(tools_select_planted_end_to_end) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    REQUIRE(write_planted(&t, 1) == 0);
    const char *modes[2] = {"hisa", "flat"};
    const int32_t *want[2] = {k_pl_hisa, k_pl_flat};
    /* m = 2, 3: the decode path on CUDA when a GPU is here (same answers by construction) */
    for (int m = 0; m < (tool_cuda_available() ? 4 : 2); m++) {
        char args[1200], I[300], err[NPY_ERR_MAX];
        const char *device = m < 2 ? "cpu" : "cuda";
        snprintf(args, sizeof args,
                 "select --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy --mode %s "
                 "--out %s/I.npy --device %s " PL_GEOM,
                 t.path, t.path, t.path, modes[m % 2], t.path, device);
        char *o = NULL;
        int rc = run_tool(&t, args, &o, NULL);
        CHECKF(rc == 0, "select --mode %s --device %s: exit %d", modes[m % 2], device, rc);
        CHECK(o && strstr(o, m < 2 ? "device cpu" : "device cuda:0"));
        free(o);
        npy_array a;
        REQUIRE(npy_read(tmp_file(&t, "I.npy", I, sizeof I), &a, err, sizeof err) == 0);
        CHECK(a.dtype == NPY_I4 && a.ndim == 2 && a.shape[0] == 1 && a.shape[1] == 7);
        /* rows come out sorted ascending */
        CHECKF(memcmp(a.data, want[m % 2], sizeof(int32_t) * 7) == 0, "%s %s", modes[m % 2],
               device);
        npy_free(&a);
    }
    /* fp8 codes + scales give the same answer: code 0x7e is 448, scale mag / 448 */
    static uint8_t codes[PL_L * D];
    float scales[PL_L];
    memset(codes, 0, sizeof codes);
    for (int i = 0; i < PL_L; i++) scales[i] = 1;
    for (int i = 0; i < 10; i++) {
        codes[(size_t)k_pl_pos[i] * D] = 0x7e;
        scales[k_pl_pos[i]] = k_pl_mag[i] / 448.0f;
    }
    char p[300], err[NPY_ERR_MAX];
    int64_t cs[2] = {PL_L, D}, ss[1] = {PL_L};
    REQUIRE(put_npy(&t, "C.npy", NPY_U1, 2, cs, codes) == 0);
    REQUIRE(put_npy(&t, "S.npy", NPY_F4, 1, ss, scales) == 0);
    char args[1200];
    snprintf(args, sizeof args,
             "select --keys %s/C.npy --scales %s/S.npy --queries %s/Q.npy --weights %s/W.npy "
             "--out %s/I.npy " PL_ARGS,
             t.path, t.path, t.path, t.path, t.path);
    CHECK(run_tool(&t, args, NULL, NULL) == 0);
    npy_array a;
    REQUIRE(npy_read(tmp_file(&t, "I.npy", p, sizeof p), &a, err, sizeof err) == 0);
    CHECK(a.count == 7 && memcmp(a.data, k_pl_hisa, sizeof(int32_t) * 7) == 0);
    npy_free(&a);
    /* without --out the selection is printed: "255: 3 5 100 101 102 250 251" */
    snprintf(args, sizeof args,
             "select --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy " PL_ARGS, t.path,
             t.path, t.path);
    char *o = NULL;
    CHECK(run_tool(&t, args, &o, NULL) == 0);
    CHECK(o && strcmp(o, "255: 3 5 100 101 102 250 251\n") == 0);
    free(o);
    tmp_remove(&t);
}

/* Fewer visible tokens than k: every position, then -1 padding. */
HISA_TEST(tools_select_short_context_pads) {
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    float keys[5 * D], q[2 * 2 * D], w[2 * 2];
    for (int i = 0; i < 5 * D; i++) keys[i] = (float)((i * 37) % 11) - 5.0f;
    for (int i = 0; i < 2 * 2 * D; i++) q[i] = (float)((i * 13) % 7) - 3.0f;
    for (int i = 0; i < 4; i++) w[i] = 1.0f;
    int64_t ks[2] = {5, D}, qs[3] = {2, 2, D}, wsh[2] = {2, 2};
    REQUIRE(put_npy(&t, "K.npy", NPY_F4, 2, ks, keys) == 0);
    REQUIRE(put_npy(&t, "Q.npy", NPY_F4, 3, qs, q) == 0);
    REQUIRE(put_npy(&t, "W.npy", NPY_F4, 2, wsh, w) == 0);
    char K[300], Q[300], W[300];
    tool_inputs in = {.keys_path = tmp_file(&t, "K.npy", K, sizeof K),
                      .queries_path = tmp_file(&t, "Q.npy", Q, sizeof Q),
                      .weights_path = tmp_file(&t, "W.npy", W, sizeof W)};
    REQUIRE(tool_inputs_load("test", &in) == 0);
    tool_cfg_opts c = {.device = "cpu", .block_size = 32, .top_blocks = 3, .topk = 7};
    hisa_runtime *rt = NULL;
    int32_t seq;
    REQUIRE(tool_inputs_open("test", &in, &c, &rt, &seq) == 0);
    int32_t out[2 * 7];
    double s;
    REQUIRE(tool_inputs_select(rt, seq, &in, HISA_MODE_HISA, out, &s) == 0);
    tool_sort_rows(out, 2, 7);
    /* query 0 at position 3 sees 0..3; query 1 at position 4 sees 0..4 */
    const int32_t want0[7] = {0, 1, 2, 3, -1, -1, -1}, want1[7] = {0, 1, 2, 3, 4, -1, -1};
    CHECK(memcmp(out, want0, sizeof want0) == 0);
    CHECK(memcmp(out + 7, want1, sizeof want1) == 0);
    hisa_close(rt);
    tool_inputs_free(&in);
    tmp_remove(&t);
}

/* --- eval ---------------------------------------------------------------------------------- */
HISA_TEST(tools_iou_helper) {
    int32_t a[6] = {5, 1, 9, -1, 3, -1}, b[6] = {3, 9, 1, 5, -1, -1}, scratch[12];
    CHECK(tool_iou(a, b, 6, scratch) == 1.0);
    int32_t c[6] = {5, 1, 7, 8, -1, -1};
    CHECK(tool_iou(a, c, 6, scratch) == 2.0 / 6.0); /* {1,5} of {1,3,5,7,8,9} */
    int32_t e[3] = {-1, -1, -1};
    CHECK(tool_iou(e, e, 3, scratch) == 1.0);
    int32_t d[3] = {2, 2, 4}; /* duplicates count once */
    int32_t d2[3] = {2, 4, -1};
    CHECK(tool_iou(d, d2, 3, scratch) == 1.0);
}

static double json_number(const char *json, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = json ? strstr(json, pat) : NULL;
    return p ? atof(p + strlen(pat)) : -1.0;
}

HISA_TEST(tools_eval_planted) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    REQUIRE(write_planted(&t, 2) == 0);
    int32_t needles[2] = {40, 3};
    int64_t ns[1] = {2};
    REQUIRE(put_npy(&t, "N.npy", NPY_I4, 1, ns, needles) == 0);
    char args[1200];
    /* m = 3 of 8 blocks: IoU 0.4 by construction; needle 40 only in flat, 3 in both */
    snprintf(args, sizeof args,
             "eval --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy --needles %s/N.npy "
             "--json " PL_ARGS,
             t.path, t.path, t.path, t.path);
    char *o = NULL;
    CHECK(run_tool(&t, args, &o, NULL) == 0);
    CHECKF(o && json_number(o, "iou_mean") > 0.3999 && json_number(o, "iou_mean") < 0.4001,
           "eval json: %s", o ? o : "");
    CHECK(json_number(o, "recall_flat") == 1.0);
    CHECK(json_number(o, "recall_hisa") == 0.5);
    CHECK(json_number(o, "needles_visible") == 4.0); /* 2 needles x 2 queries */
    CHECK(o && strstr(o, "\"device\": \"cpu\""));
    free(o);
    /* m = 8 covers every block: HISA is flat (SPEC rule 3), identical selections, IoU 1 */
    snprintf(args, sizeof args,
             "eval --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy --needles %s/N.npy "
             "--json --block-size 32 --top-blocks 8 --topk 7 --device cpu",
             t.path, t.path, t.path, t.path);
    CHECK(run_tool(&t, args, &o, NULL) == 0);
    CHECKF(json_number(o, "iou_mean") == 1.0 && json_number(o, "iou_min") == 1.0,
           "eval json: %s", o ? o : "");
    CHECK(json_number(o, "recall_hisa") == 1.0);
    free(o);
    /* the text report */
    snprintf(args, sizeof args,
             "eval --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy " PL_ARGS, t.path,
             t.path, t.path);
    CHECK(run_tool(&t, args, &o, NULL) == 0);
    CHECK(o && strstr(o, "IoU HISA vs flat: mean 0.4000, min 0.4000 over 2 queries"));
    free(o);
    tmp_remove(&t);
}

/* --- query formats ------------------------------------------------------------------------ */
HISA_TEST(tools_qformat_converters) {
    /* every finite e4m3fn code survives decode + encode; 0x7f / 0xff are NaN */
    for (int c = 0; c < 256; c++) {
        float v = tool_e4m3_to_f32((uint8_t)c);
        if ((c & 0x7f) == 0x7f) {
            CHECKF(v != v, "code 0x%02x should be NaN", c);
            continue;
        }
        CHECKF(tool_e4m3_from_f32(v) == c, "code 0x%02x -> %g -> 0x%02x", c, (double)v,
               tool_e4m3_from_f32(v));
        /* e4m3 values are exact in bf16 */
        CHECK(tool_bf16_to_f32(tool_bf16_from_f32(v)) == v);
    }
    CHECK(tool_e4m3_from_f32(1.0f) == 0x38 && tool_e4m3_from_f32(-1.0f) == 0xb8);
    CHECK(tool_e4m3_from_f32(448.0f) == 0x7e && tool_e4m3_from_f32(1e6f) == 0x7e);
    CHECK(tool_e4m3_from_f32(-500.0f) == 0xfe);      /* saturates, never NaN */
    CHECK(tool_e4m3_from_f32(0x1p-9f) == 0x01);      /* the smallest subnormal */
    CHECK(tool_e4m3_from_f32(1.0625f) == 0x38);      /* tie 1 | 1.125: to even, 1 */
    CHECK(tool_e4m3_from_f32(1.1875f) == 0x3a);      /* tie 1.125 | 1.25: to even, 1.25 */
    CHECK(tool_e4m3_from_f32(15.5f) == 0x58);        /* tie 15 | 16: to even, the next binade */
    CHECK(tool_bf16_from_f32(1.0f) == 0x3f80);
    CHECK(tool_bf16_from_f32(1.00390625f) == 0x3f80); /* 1 + 2^-8, a tie: to even */
    CHECK(tool_bf16_from_f32(1.01171875f) == 0x3f82); /* 1 + 3 * 2^-8, a tie: to even */
    /* an fp8 query: per head scale amax / 448 folded into w; the amax element is code 448 */
    float q[2 * D], w[2] = {0.5f, -2.0f}, wf[2];
    uint8_t codes[2 * D];
    for (int d = 0; d < D; d++) q[d] = (float)(d - 40) / 8.0f; /* amax 87/8 at d = 127 */
    memset(q + D, 0, sizeof(float) * D);                      /* a zero head: scale 1 */
    tool_q_to_fp8(q, w, 2, codes, wf);
    float s0 = (87.0f / 8.0f) / 448.0f;
    CHECK(codes[127] == 0x7e && codes[40] == 0x00 && codes[D] == 0x00);
    CHECK(wf[0] == 0.5f * s0 && wf[1] == -2.0f);
    for (int d = 0; d < D; d++)
        CHECK(codes[d] == tool_e4m3_from_f32(q[d] / s0));
    int32_t f;
    CHECK(tool_parse_q_format("t", "bf16", &f) == 0 && f == HISA_Q_BF16);
    CHECK(tool_parse_q_format("t", NULL, &f) == 0 && f == HISA_Q_F32);
    CHECK(strcmp(tool_q_format_name(HISA_Q_FP8), "fp8") == 0);
    CHECK(tool_q_format_bytes(HISA_Q_BF16) == 2 && tool_q_format_bytes(HISA_Q_FP8) == 1);
}

/* The query-format case: L = 300 random keys, H = 4, B = 32, m = 4, k = 64 (10 blocks: the
 * coarse stage prunes). Queries are known e4m3 codes (no NaN), with folded weights. Written as
 * Q8_N.npy (uint8 codes), Qf_N.npy (float32: exactly the codes' values) and Qb_N.npy (uint16:
 * their bf16 bits, also exact), W_N.npy for N = 3 queries (prefill path) and 1 (decode). */
#define QF_L 300
#define QF_H 4
#define QF_GEOM "--block-size 32 --top-blocks 4 --topk 64 --device cpu"
static float g_qf_keys[QF_L * D];
static uint8_t g_qf_codes[3 * QF_H * D];
static float g_qf_w[3 * QF_H];

static int write_qformat_case(const tmpdir *t) {
    uint64_t rng = 2024;
    for (int i = 0; i < QF_L * D; i++) g_qf_keys[i] = hisa_test_gauss(&rng);
    for (int i = 0; i < 3 * QF_H * D; i++) {
        uint8_t c = (uint8_t)(hisa_test_rng(&rng) >> 56);
        g_qf_codes[i] = (c & 0x7f) == 0x7f ? (uint8_t)(c - 1) : c;
    }
    for (int i = 0; i < 3 * QF_H; i++) /* folded weights: w * scale, one head negative */
        g_qf_w[i] = (i % 4 == 3 ? -1.0f : 1.0f) * (0.5f + 0.1f * (float)i) / 448.0f;
    static float qf[3 * QF_H * D];
    static uint16_t qb[3 * QF_H * D];
    for (int i = 0; i < 3 * QF_H * D; i++) {
        qf[i] = tool_e4m3_to_f32(g_qf_codes[i]);
        qb[i] = tool_bf16_from_f32(qf[i]);
    }
    int64_t ks[2] = {QF_L, D};
    if (put_npy(t, "K.npy", NPY_F4, 2, ks, g_qf_keys)) return -1;
    for (int n = 1; n <= 3; n += 2) {
        int64_t qs[3] = {n, QF_H, D}, wsh[2] = {n, QF_H};
        size_t off = (size_t)(3 - n) * QF_H; /* the last n queries of the three */
        char name[32];
        snprintf(name, sizeof name, "Q8_%d.npy", n);
        if (put_npy(t, name, NPY_U1, 3, qs, g_qf_codes + off * D)) return -1;
        snprintf(name, sizeof name, "Qf_%d.npy", n);
        if (put_npy(t, name, NPY_F4, 3, qs, qf + off * D)) return -1;
        snprintf(name, sizeof name, "Qb_%d.npy", n);
        if (put_npy(t, name, NPY_U2, 3, qs, qb + off * D)) return -1;
        snprintf(name, sizeof name, "W_%d.npy", n);
        if (put_npy(t, name, NPY_F4, 2, wsh, g_qf_w + off)) return -1;
    }
    return 0;
}

/* The library called directly on the fp8 codes: the last n_q of the three queries, rows sorted. */
static int qformat_library(int32_t n_q, hisa_mode mode, int32_t *out) {
    hisa_config cfg = {.n_layers = 1, .n_heads = QF_H, .block_size = 32, .top_blocks = 4,
                       .topk = 64, .max_seqs = 1, .max_batch = 1, .max_context = QF_L,
                       .max_prefill_queries = QF_L, .device = HISA_DEVICE_CPU};
    hisa_runtime *rt = NULL;
    int32_t seq;
    int err = hisa_open(&rt, &cfg, NULL);
    if (!err) err = hisa_seq_open(rt, &seq);
    if (!err) err = hisa_seq_extend(rt, seq, QF_L);
    hisa_write wr = {.layer = 0, .n_tokens = QF_L, .keys = g_qf_keys};
    if (!err) err = hisa_write_range(rt, seq, 0, &wr);
    size_t off = (size_t)(3 - n_q) * QF_H;
    if (!err && n_q == 1) {
        hisa_decode req = {.layer = 0, .mode = mode, .n_seqs = 1, .seq_ids = &seq,
                           .q = g_qf_codes + off * D, .w = g_qf_w + off, .out = out,
                           .q_format = HISA_Q_FP8};
        err = hisa_select_decode(rt, &req);
    } else if (!err) {
        hisa_prefill req = {.layer = 0, .mode = mode, .seq = seq, .t0 = QF_L - n_q, .n_q = n_q,
                            .q = g_qf_codes + off * D, .w = g_qf_w + off, .out = out,
                            .q_format = HISA_Q_FP8};
        err = hisa_select_prefill(rt, &req);
    }
    hisa_close(rt);
    if (!err) tool_sort_rows(out, n_q, 64);
    return err;
}

/* `select --out` into I.npy of the temp dir; the rows [n_q, 64] into out. 0 on success. */
static int qformat_select(const tmpdir *t, const char *args, int32_t n_q, int32_t *out) {
    char full[1600], p[300], err[NPY_ERR_MAX];
    snprintf(full, sizeof full, "select %s --out %s/I.npy " QF_GEOM, args, t->path);
    if (run_tool(t, full, NULL, NULL) != 0) return -1;
    npy_array a;
    if (npy_read(tmp_file(t, "I.npy", p, sizeof p), &a, err, sizeof err) != 0) return -1;
    int ok = a.dtype == NPY_I4 && a.count == (int64_t)n_q * 64;
    if (ok) memcpy(out, a.data, sizeof(int32_t) * (size_t)n_q * 64);
    npy_free(&a);
    return ok ? 0 : -1;
}

/* fp8 query codes give exactly the library's own answer, and exactly what f32 (and bf16)
 * queries holding the codes' values give with the same weights: on the CPU a query's value is
 * all that counts (SPEC "Queries"). Both modes, the decode path (1 query) and prefill (3). */
HISA_TEST(tools_select_query_formats) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    REQUIRE(write_qformat_case(&t) == 0);
    const char *modes[2] = {"hisa", "flat"};
    const char *d = t.path;
    int differs = 0; /* query sets where HISA's answer is not flat's: the coarse stage acts */
    for (int n = 1; n <= 3; n += 2) {
        int32_t hisa_rows[3 * 64];
        for (int m = 0; m < 2; m++) {
            int32_t lib[3 * 64], i8[3 * 64], f32[3 * 64], b16[3 * 64], nat[3 * 64];
            char a[1200];
            REQUIRE(qformat_library(n, m ? HISA_MODE_FLAT : HISA_MODE_HISA, lib) == 0);
            snprintf(a, sizeof a, "--keys %s/K.npy --queries %s/Q8_%d.npy --weights %s/W_%d.npy "
                     "--query-format fp8 --mode %s", d, d, n, d, n, modes[m]);
            CHECKF(qformat_select(&t, a, n, i8) == 0, "%s", a);
            /* --fp8-mma native is accepted; the CPU backend computes exactly whatever it says */
            snprintf(a, sizeof a, "--keys %s/K.npy --queries %s/Q8_%d.npy --weights %s/W_%d.npy "
                     "--query-format fp8 --fp8-mma native --mode %s", d, d, n, d, n, modes[m]);
            CHECKF(qformat_select(&t, a, n, nat) == 0, "%s", a);
            snprintf(a, sizeof a, "--keys %s/K.npy --queries %s/Qf_%d.npy --weights %s/W_%d.npy "
                     "--mode %s", d, d, n, d, n, modes[m]);
            CHECKF(qformat_select(&t, a, n, f32) == 0, "%s", a);
            snprintf(a, sizeof a, "--keys %s/K.npy --queries %s/Qb_%d.npy --weights %s/W_%d.npy "
                     "--query-format bf16 --mode %s", d, d, n, d, n, modes[m]);
            CHECKF(qformat_select(&t, a, n, b16) == 0, "%s", a);
            size_t bytes = sizeof(int32_t) * (size_t)n * 64;
            CHECKF(memcmp(i8, lib, bytes) == 0, "n_q %d %s: fp8 != library", n, modes[m]);
            CHECKF(memcmp(i8, nat, bytes) == 0, "n_q %d %s: fp8 --fp8-mma native != exact on the CPU", n, modes[m]);
            CHECKF(memcmp(i8, f32, bytes) == 0, "n_q %d %s: fp8 != f32 values", n, modes[m]);
            CHECKF(memcmp(i8, b16, bytes) == 0, "n_q %d %s: fp8 != bf16 values", n, modes[m]);
            CHECK(lib[63] >= 0); /* 300 visible tokens: k = 64 full */
            if (m == 0) memcpy(hisa_rows, i8, bytes);
            else differs += memcmp(hisa_rows, i8, bytes) != 0;
        }
    }
    CHECK_EQ_INT(differs, 2);
    /* the summary names the format; eval reports it and the same IoU as the f32 run */
    char a[1200], *o = NULL, *o2 = NULL;
    snprintf(a, sizeof a, "select --keys %s/K.npy --queries %s/Q8_3.npy --weights %s/W_3.npy "
             "--query-format fp8 --out %s/I.npy " QF_GEOM, d, d, d, d);
    CHECK(run_tool(&t, a, &o, NULL) == 0);
    CHECKF(o && strstr(o, "queries fp8"), "select: %s", o ? o : "");
    free(o);
    snprintf(a, sizeof a, "eval --keys %s/K.npy --queries %s/Q8_3.npy --weights %s/W_3.npy "
             "--query-format fp8 --json " QF_GEOM, d, d, d);
    CHECK(run_tool(&t, a, &o, NULL) == 0);
    snprintf(a, sizeof a, "eval --keys %s/K.npy --queries %s/Qf_3.npy --weights %s/W_3.npy "
             "--json " QF_GEOM, d, d, d);
    CHECK(run_tool(&t, a, &o2, NULL) == 0);
    CHECKF(o && strstr(o, "\"query_format\": \"fp8\""), "eval: %s", o ? o : "");
    CHECKF(o2 && strstr(o2, "\"query_format\": \"f32\""), "eval: %s", o2 ? o2 : "");
    CHECK(json_number(o, "iou_mean") >= 0);
    CHECK(json_number(o, "iou_mean") == json_number(o2, "iou_mean"));
    CHECK(json_number(o, "iou_min") == json_number(o2, "iou_min"));
    free(o);
    free(o2);
    tmp_remove(&t);
}

/* Queries whose dtype is not the --query-format's, and bad --query-format values: exit 2, the
 * message naming the file or option, the value and the rule. */
HISA_TEST(tools_select_query_format_errors) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    REQUIRE(write_qformat_case(&t) == 0);
    static const struct {
        const char *cmd, *q, *fmt, *message;
    } cases[] = {
        {"select", "Qf_3", "fp8",
         "Qf_3.npy: --query-format fp8 expects queries [n_q,H,128] as uint8 fp8 e4m3fn codes"},
        {"eval", "Qf_3", "fp8", "got float32 [3,4,128]; float32 queries take --query-format f32"},
        {"select", "Q8_3", "f32",
         "Q8_3.npy: --query-format f32 expects queries [n_q,H,128] as float32"},
        {"select", "Q8_1", "f32",
         "got uint8 [1,4,128]; uint8 e4m3fn codes take --query-format fp8"},
        {"select", "Qb_3", "fp8", "Qb_3.npy: --query-format fp8 expects"},
        {"eval", "Qb_1", "f32", "got uint16 [1,4,128]; uint16 bf16 bits take --query-format bf16"},
        {"select", "Q8_3", "bf16", "--query-format bf16 expects queries [n_q,H,128] as uint16"},
        {"select", "Q8_3", "xyz", "--query-format: 'xyz'; expected f32"},
        {"eval", "Q8_3", "FP8", "--query-format: 'FP8'; expected f32"},
        {"select", "K", "fp8", "K.npy: --query-format fp8 expects"},
        {"select", "Q8_3", "fp8 --fp8-mma fast", "--fp8-mma: 'fast'; expected exact"},
        {"eval", "Q8_3", "fp8 --fp8-mma NATIVE", "--fp8-mma: 'NATIVE'; expected exact"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char a[1200], *e = NULL;
        /* W_3 fits the 3-query files; a 1-query file fails on its dtype before the weights */
        snprintf(a, sizeof a, "%s --keys %s/K.npy --queries %s/%s.npy --weights %s/W_3.npy "
                 "--query-format %s " QF_GEOM, cases[c].cmd, t.path, t.path, cases[c].q, t.path,
                 cases[c].fmt);
        int rc = run_tool(&t, a, NULL, &e);
        CHECKF(rc == 2, "case %zu (%s): exit %d, expected 2", c, a, rc);
        CHECKF(e && strstr(e, cases[c].message), "case %zu: stderr '%s' lacks '%s'", c,
               e ? e : "", cases[c].message);
        free(e);
    }
    tmp_remove(&t);
}

/* --- synthetic data -------------------------------------------------------------------------- */
HISA_TEST(tools_synth_reproducible) {
    synth_params sp;
    synth_params_default(&sp);
    sp.n_heads = 4;
    sp.n_layers = 2;
    sp.seed = 42;
    sp.n_needles = 1;
    sp.needle_pos[0] = 700;
    enum { N = 1000 };
    float *a = malloc(sizeof(float) * 2 * N * D), *b = malloc(sizeof(float) * 2 * N * D);
    REQUIRE(a && b);
    synth_gen g1, g2;
    REQUIRE(synth_init(&g1, &sp) == 0 && synth_init(&g2, &sp) == 0);
    synth_keys(&g1, N, a, (int64_t)N * D);
    /* the same tokens in uneven chunks: identical numbers */
    float chunk[2 * 333 * D];
    for (int32_t p0 = 0; p0 < N; p0 += 333) {
        int32_t n = N - p0 < 333 ? N - p0 : 333;
        synth_keys(&g2, n, chunk, (int64_t)n * D);
        for (int l = 0; l < 2; l++)
            memcpy(b + ((size_t)l * N + p0) * D, chunk + (size_t)l * n * D, sizeof(float) * n * D);
    }
    CHECK(memcmp(a, b, sizeof(float) * 2 * N * D) == 0);
    float q1[4 * D], q2[4 * D], w1[4], w2[4];
    synth_query(&g1, 1, 1, q1, w1);
    synth_query(&g2, 1, 1, q2, w2);
    CHECK(memcmp(q1, q2, sizeof q1) == 0 && memcmp(w1, w2, sizeof w1) == 0);
    /* structure: the needle key is far larger than its neighbours; layers differ */
    double nn = 0, nb = 0;
    for (int d = 0; d < D; d++) {
        nn += (double)a[700 * D + d] * a[700 * D + d];
        nb += (double)a[699 * D + d] * a[699 * D + d];
    }
    CHECK(nn > 100 * nb);
    CHECK(memcmp(a, a + (size_t)N * D, sizeof(float) * D) != 0);
    synth_free(&g1);
    synth_free(&g2);
    /* another seed, other numbers */
    sp.seed = 43;
    REQUIRE(synth_init(&g1, &sp) == 0);
    synth_keys(&g1, N, b, (int64_t)N * D);
    CHECK(memcmp(a, b, sizeof(float) * N * D) != 0);
    synth_free(&g1);
    /* invalid parameters are refused */
    sp.seg_min = 10;
    sp.seg_max = 5;
    CHECK(synth_init(&g1, &sp) != 0);
    free(a);
    free(b);
}

/* --- niah ---------------------------------------------------------------------------------- */
HISA_TEST(tools_niah_flat_finds_planted_needle) {
    hisa_config cfg = {.n_layers = 1, .n_heads = 8, .block_size = 32, .top_blocks = 16,
                       .topk = 256, .max_seqs = 1, .max_batch = 1, .max_context = 4096,
                       .max_prefill_queries = 1024, .device = HISA_DEVICE_CPU};
    hisa_runtime *rt = NULL;
    REQUIRE(hisa_open(&rt, &cfg, NULL) == HISA_OK);
    synth_params sp;
    synth_params_default(&sp);
    sp.n_heads = 8;
    const double depths[4] = {0, 33, 71, 100};
    for (int i = 0; i < 4; i++) {
        sp.seed = 100 + (uint64_t)i;
        tool_niah_result r;
        REQUIRE(tool_niah_cell(rt, &sp, 4096, depths[i], &r) == HISA_OK);
        CHECKF(r.found_flat == 1, "depth %g: flat missed the needle at %d", depths[i],
               r.needle_pos);
        CHECK(r.iou > 0 && r.iou <= 1);
    }
    /* positions: after the 4 sinks at 0%, before the query's own token at 100% */
    CHECK_EQ_INT(tool_niah_position(4096, 0, 4), 4);
    CHECK_EQ_INT(tool_niah_position(4096, 100, 4), 4094);
    CHECK_EQ_INT(tool_niah_position(4096, 50, 4), 2049);
    /* the sequence was closed again: the pool is empty */
    hisa_memory_report mr;
    REQUIRE(hisa_memory_report_get(rt, &mr) == HISA_OK);
    CHECK_EQ_INT(mr.seqs_open, 0);
    CHECK_EQ_INT(mr.pages_used, 0);
    hisa_close(rt);
}

HISA_TEST(tools_niah_end_to_end) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    char args[1200];
    snprintf(args, sizeof args,
             "niah --device cpu --contexts 2K,4K --depths 0,50,100 --heads 8 --block-size 32 "
             "--top-blocks 16 --topk 256 --csv %s/n.csv --svg %s/n.svg",
             t.path, t.path);
    char *o = NULL;
    CHECK(run_tool(&t, args, &o, NULL) == 0);
    CHECK(o && strstr(o, "needle recall, flat DSA") && strstr(o, "needle recall, HISA"));
    free(o);
    char p[300];
    char *csv = read_text(tmp_file(&t, "n.csv", p, sizeof p));
    REQUIRE(csv);
    const char *header = "context,depth_percent,needle_position,trials,recall_flat,recall_hisa,"
                         "iou,by_construction\n";
    CHECK(strncmp(csv, header, strlen(header)) == 0);
    int rows = 0, flat_ones = 0;
    for (char *line = strchr(csv, '\n'); line && line[1]; line = strchr(line + 1, '\n')) {
        int ctx, pos, trials;
        double depth, rf, rh, iou;
        if (sscanf(line + 1, "%d,%lf,%d,%d,%lf,%lf,%lf", &ctx, &depth, &pos, &trials, &rf, &rh,
                   &iou) == 7) {
            rows++;
            flat_ones += rf == 1.0;
        }
    }
    CHECK_EQ_INT(rows, 6);
    CHECK_EQ_INT(flat_ones, 6);
    free(csv);
    char *svg = read_text(tmp_file(&t, "n.svg", p, sizeof p));
    CHECK(svg && strncmp(svg, "<svg", 4) == 0 && strstr(svg, "</svg>") && strstr(svg, "HISA"));
    free(svg);
    snprintf(args, sizeof args, "niah --device cpu --depths 0,150 --csv %s/x.csv", t.path);
    CHECK(run_tool(&t, args, NULL, NULL) == 2);
    tmp_remove(&t);
}

/* --- mem, stream, the command line ----------------------------------------------------------- */
HISA_TEST(tools_mem_fit_is_exact) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    char *o = NULL;
    REQUIRE(run_tool(&t, "mem --device cpu --context 64K --layers 4 --gpu-mem 2G --json", &o,
                     NULL) == 0);
    /* the first "max_seqs" is the config's; the fit's follows "fit" */
    const char *f = o ? strstr(o, "\"fit\"") : NULL;
    REQUIRE(f);
    double fit = json_number(f, "max_seqs");
    CHECK(fit >= 1);
    /* fit sequences fit in 2 GiB, one more does not */
    for (int extra = 0; extra < 2; extra++) {
        hisa_config c = {.n_layers = 4, .max_context = 65536, .max_seqs = (int32_t)fit + extra,
                         .device = HISA_DEVICE_CPU};
        c.max_batch = c.max_seqs < 256 ? c.max_seqs : 256;
        hisa_plan plan;
        REQUIRE(hisa_plan_compute(&c, &plan) == HISA_OK);
        if (extra == 0) CHECK(plan.device_bytes <= (2ull << 30));
        else CHECK(plan.device_bytes > (2ull << 30));
    }
    free(o);
    REQUIRE(run_tool(&t, "mem --device cpu", &o, NULL) == 0);
    CHECK(o && strstr(o, "keys") && strstr(o, "total: device"));
    free(o);
    CHECK(run_tool(&t, "mem --gpu-mem 80X", NULL, NULL) == 2);
    CHECK(run_tool(&t, "mem --device cpu --block-size 48", NULL, NULL) == 2);
    tmp_remove(&t);
}

HISA_TEST(tools_stream_small) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    char *o = NULL, *e = NULL;
    int rc = run_tool(&t,
                      "stream --device cpu --context 2K --steps 8 --batch 2 --layers 2 --heads 8 "
                      "--block-size 32 --top-blocks 16 --topk 256 --check-every 4 --profile",
                      &o, &e);
    CHECKF(rc == 0, "stream exit %d: %s", rc, e ? e : "");
    CHECK(o && strstr(o, "device cpu"));
    CHECK(o && strstr(o, "IoU HISA vs flat: mean"));
    CHECK(o && strstr(o, "(2 checks x 2 layers x 2 streams)"));
    CHECK(o && strstr(o, "layer 1: p50"));
    CHECK(o && strstr(o, "pool (profile): pages total"));
    /* stderr is not a terminal here: plain progress lines, the last one at step 8 */
    CHECK(e && strstr(e, "step 8/8  context 2056"));
    free(o);
    free(e);
    tmp_remove(&t);
}

/* Speculative decode with fp8 queries: 2 tokens and 2 queries per stream and step; the IoU
 * is counted per query; then the refused values of --next-n and --query-format. */
HISA_TEST(tools_stream_next_n_fp8) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    char *o = NULL, *e = NULL;
    int rc = run_tool(&t,
                      "stream --device cpu --context 2K --steps 8 --batch 2 --layers 2 --heads 8 "
                      "--block-size 32 --top-blocks 16 --topk 256 --check-every 4 --next-n 2 "
                      "--query-format fp8 --profile",
                      &o, &e);
    CHECKF(rc == 0, "stream exit %d: %s", rc, e ? e : "");
    CHECKF(o && strstr(o, "keys fp8, queries fp8, next_n 2;"), "stream: %s", o ? o : "");
    CHECK(o && strstr(o, "decode: 8 steps, next_n 2, fp8 queries,"));
    CHECK(o && strstr(o, "append 2 tokens + HISA select"));
    CHECK(o && strstr(o, "(2 checks x 2 layers x 2 streams x 2 queries)"));
    /* 8 steps of 2 tokens on a 2K prompt: 2064 tokens per stream */
    CHECK(o && strstr(o, "4128 tokens in 2 sequences"));
    CHECK(e && strstr(e, "step 8/8  context 2064"));
    free(o);
    free(e);
    /* bf16 queries are f32 queries rounded as the library rounds them: the same run */
    char *of = NULL, *ob = NULL;
    const char *base = "stream --device cpu --context 2K --steps 4 --batch 1 --layers 1 --heads 8 "
                       "--block-size 32 --top-blocks 8 --topk 128 --check-every 2 --next-n 3";
    char a[600];
    snprintf(a, sizeof a, "%s --query-format f32", base);
    CHECK(run_tool(&t, a, &of, NULL) == 0);
    snprintf(a, sizeof a, "%s --query-format bf16", base);
    CHECK(run_tool(&t, a, &ob, NULL) == 0);
    const char *iof = of ? strstr(of, "IoU HISA vs flat") : NULL;
    const char *iob = ob ? strstr(ob, "IoU HISA vs flat") : NULL;
    CHECKF(iof && iob && strncmp(iof, iob, (size_t)(strchr(iof, '\n') - iof)) == 0,
           "f32 '%s' vs bf16 '%s'", of ? of : "", ob ? ob : "");
    CHECK(iob && strstr(iob, "x 3 queries)"));
    free(of);
    free(ob);
    static const struct {
        const char *arg, *message;
    } bad[] = {
        {"--next-n 0", "--next-n 0: out of range; expected 1..4"},
        {"--next-n 5", "--next-n 5: out of range; expected 1..4"},
        {"--next-n x", "--next-n: 'x' is not an integer"},
        {"--next-n=-1", "--next-n -1: out of range; expected 1..4"},
        {"--query-format xyz", "--query-format: 'xyz'; expected f32 (float32, the default), bf16"},
        {"--query-format", "option --query-format needs a value"},
    };
    for (size_t c = 0; c < sizeof bad / sizeof bad[0]; c++) {
        snprintf(a, sizeof a, "stream --device cpu --context 1K --steps 1 %s", bad[c].arg);
        e = NULL;
        rc = run_tool(&t, a, NULL, &e);
        CHECKF(rc == 2, "%s: exit %d, expected 2", bad[c].arg, rc);
        CHECKF(e && strstr(e, bad[c].message), "%s: stderr '%s' lacks '%s'", bad[c].arg,
               e ? e : "", bad[c].message);
        free(e);
    }
    tmp_remove(&t);
}

HISA_TEST(tools_cli_help_and_usage) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    const char *cmds[] = {"stream", "mem", "select", "eval", "niah"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char args[64];
        char *o = NULL;
        snprintf(args, sizeof args, "%s --help", cmds[i]);
        CHECKF(run_tool(&t, args, &o, NULL) == 0, "%s --help", cmds[i]);
        CHECKF(o && strstr(o, "usage: hisa") && strstr(o, "--device"), "%s --help text", cmds[i]);
        free(o);
        snprintf(args, sizeof args, "%s --no-such-option", cmds[i]);
        CHECKF(run_tool(&t, args, NULL, NULL) == 2, "%s bad option", cmds[i]);
    }
    char *o = NULL;
    CHECK(run_tool(&t, "--help", &o, NULL) == 0);
    CHECK(o && strstr(o, "stream") && strstr(o, "bench"));
    free(o);
    CHECK(run_tool(&t, "frobnicate", NULL, NULL) == 2);
    CHECK(run_tool(&t, "", NULL, NULL) == 2);
    CHECK(run_tool(&t, "stream --device tpu", NULL, NULL) == 2);
    CHECK(run_tool(&t, "stream --steps many", NULL, NULL) == 2);
    if (!tool_cuda_available()) {
        /* asking for a GPU that is not there is a runtime failure, not a usage error */
        char *e = NULL;
        CHECK(run_tool(&t, "stream --device cuda --context 1K --steps 1", NULL, &e) == 1);
        CHECK(e && strstr(e, "cuda:0"));
        free(e);
    }
    tmp_remove(&t);
}

HISA_TEST(tools_option_parsing) {
    int64_t v;
    CHECK(tool_parse_i64("64K", &v) == 0 && v == 65536);
    CHECK(tool_parse_i64("2M", &v) == 0 && v == 2097152);
    CHECK(tool_parse_i64("12", &v) == 0 && v == 12);
    CHECK(tool_parse_i64("12Q", &v) != 0);
    CHECK(tool_parse_i64("", &v) != 0);
    CHECK(tool_parse_i64("99999999999G", &v) != 0);
    uint64_t b;
    CHECK(tool_parse_size("80G", &b) == 0 && b == 80ull << 30);
    CHECK(tool_parse_size("80GiB", &b) == 0 && b == 80ull << 30);
    CHECK(tool_parse_size("1.5T", &b) == 0 && b == 3ull << 39);
    CHECK(tool_parse_size("512", &b) == 0 && b == 512);
    CHECK(tool_parse_size("-1G", &b) != 0);
    CHECK(tool_parse_size("80X", &b) != 0);
    int32_t n = 0;
    int flag = 0;
    const char *s = NULL;
    tool_opt opts[3] = {{"n", TOOL_OPT_INT, &n, 0, 0, NULL},
                        {"flag", TOOL_OPT_FLAG, &flag, 0, 0, NULL},
                        {"s", TOOL_OPT_STR, &s, 0, 0, NULL}};
    char *argv1[] = {"x", "--n=8K", "--flag", "--s", "hello"};
    CHECK(tool_parse_opts("t", 5, argv1, opts, 3) == 0);
    CHECK(n == 8192 && flag && strcmp(s, "hello") == 0);
    /* The refusals below print their messages; keep the test log clean. */
    fflush(stderr);
    int saved_stderr = dup(2), devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) dup2(devnull, 2);
    char *argv2[] = {"x", "--n"};
    CHECK(tool_parse_opts("t", 2, argv2, opts, 3) == TOOL_EXIT_USAGE);
    char *argv3[] = {"x", "--help"};
    CHECK(tool_parse_opts("t", 2, argv3, opts, 3) == -1);
    char *argv4[] = {"x", "positional"};
    CHECK(tool_parse_opts("t", 2, argv4, opts, 3) == TOOL_EXIT_USAGE);
    char *argv5[] = {"x", "--n", "3000000000"};
    CHECK(tool_parse_opts("t", 3, argv5, opts, 3) == TOOL_EXIT_USAGE);
    fflush(stderr);
    if (saved_stderr >= 0) dup2(saved_stderr, 2);
    if (saved_stderr >= 0) close(saved_stderr);
    if (devnull >= 0) close(devnull);
    double pv[5] = {5, 1, 4, 2, 3};
    CHECK(tool_percentile(pv, 5, 50) == 3);
    CHECK(tool_percentile(pv, 5, 99) == 5);
}

/* --- a new user's first hour (the usability issue): every refusal names the option or file,
 * the value and the rule, and exits 2; nothing trivial goes unsaid --------------------------- */

/* One command of a table: args after $HISA_TOOL ("%s" is the temp dir, up to four times), the
 * exit code it must give, and a substring its stderr must hold (NULL: none). */
typedef struct tool_case {
    const char *args;
    int rc;
    const char *message;
} tool_case;

static void run_cases(hisa_test_ctx *ctx, const tmpdir *t, const tool_case *cases, size_t n) {
    for (size_t c = 0; c < n; c++) {
        char args[2000];
        snprintf(args, sizeof args, cases[c].args, t->path, t->path, t->path, t->path);
        char *e = NULL;
        int rc = run_tool(t, args, NULL, &e);
        CHECKF(rc == cases[c].rc, "'%s': exit %d, expected %d (stderr '%s')", args, rc,
               cases[c].rc, e ? e : "");
        if (cases[c].message)
            CHECKF(e && strstr(e, cases[c].message), "'%s': stderr '%s' lacks '%s'", args,
                   e ? e : "", cases[c].message);
        free(e);
    }
}

/* 1 when help lists the option opt ("--seqs") as a whole word. */
static int help_has_option(const char *help, const char *opt, size_t len) {
    for (const char *p = help ? strstr(help, opt) : NULL; p; p = strstr(p + 1, opt)) {
        char after = p[len];
        int word_end = !(after >= 'a' && after <= 'z') && after != '-';
        int word_start = p == help || p[-1] == ' ' || p[-1] == '[' || p[-1] == '(';
        if (strncmp(p, opt, len) == 0 && word_end && word_start) return 1;
    }
    return 0;
}

/* One README line "... build/hisa CMD [SUB] --opt v ... # comment": every option must be in
 * CMD's --help, and a `mem` line (planning only) must run. Returns 1 when it is such a line. */
static int readme_command(hisa_test_ctx *ctx, const tmpdir *t, const char *line) {
    const char *p = strstr(line, "build/hisa ");
    if (!p) return 0;
    char cmdline[512];
    snprintf(cmdline, sizeof cmdline, "%s", p + strlen("build/hisa "));
    cmdline[strcspn(cmdline, "#`\n")] = 0;
    char cmd[32] = "", sub[32] = "";
    if (sscanf(cmdline, "%31s %31s", cmd, sub) < 1) return 0;
    if (strcmp(cmd, "bench") != 0 || strncmp(sub, "--", 2) == 0) sub[0] = 0;
    char help_args[96], *help = NULL;
    snprintf(help_args, sizeof help_args, "%s %s --help", cmd, sub);
    CHECKF(run_tool(t, help_args, &help, NULL) == 0, "README: hisa %s --help fails", cmd);
    char copy[512];
    snprintf(copy, sizeof copy, "%s", cmdline);
    char *save = NULL;
    for (char *tok = strtok_r(copy, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        if (strncmp(tok, "--", 2) != 0 || strcmp(tok, "--help") == 0) continue;
        size_t len = strcspn(tok, "=");
        CHECKF(help_has_option(help, tok, len),
               "README line 'hisa %s': hisa %s %s has no option %.*s", cmdline, cmd, sub,
               (int)len, tok);
    }
    free(help);
    if (strcmp(cmd, "mem") == 0) {
        char *e = NULL;
        int rc = run_tool(t, cmdline, NULL, &e);
        CHECKF(rc == 0, "README line 'hisa %s': exit %d: %s", cmdline, rc, e ? e : "");
        free(e);
    }
    return 1;
}

/* Issue point 2: the README's command lines use options that exist, and its `hisa mem` lines
 * run (`mem --batch 64` did not: the option is --seqs). */
HISA_TEST(tools_readme_commands_exist) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    char *readme = read_text("README.md");
    REQUIRE(readme);
    int lines = 0;
    for (char *line = readme; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        lines += readme_command(ctx, &t, line);
        line = nl ? nl + 1 : NULL;
    }
    CHECKF(lines >= 10, "only %d README lines run build/hisa", lines);
    free(readme);
    tmp_remove(&t);
}

/* Issue point 3: a configuration the library refuses is reported with the options, their
 * values, the rule in the options' names and what to change; the limits are the options'
 * ranges, stated with the value. */
HISA_TEST(tools_config_errors_name_options) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    static const tool_case cases[] = {
        {"mem --device cpu --block-size 32", 2,
         "--top-blocks 64 (default), --block-size 32 and --topk 2048 (default) break the rule "
         "(top-blocks - 1) * block-size >= topk: (64 - 1) * 32 = 2016 < 2048"},
        {"mem --device cpu --block-size 32", 2, "raise --top-blocks to at least 65 or lower --topk "
                                                "to at most 2016"},
        {"stream --device cpu --context 1K --steps 1 --block-size 32", 2,
         "--top-blocks 32 (the CPU default), --block-size 32 and --topk 2048 (default) break"},
        {"stream --device cpu --batch 257", 2, "--batch 257: out of range; expected 1..256"},
        {"stream --device cpu --prefill-chunk 100000", 2,
         "--prefill-chunk 100000: out of range; expected 1..16384"},
        {"stream --device cpu --heads 129", 2, "--heads 129: out of range; expected 1..128"},
        {"mem --device cpu --max-batch 257", 2, "--max-batch 257: out of range; expected 1..256"},
        {"mem --device cpu --layers 300", 2, "--layers 300 breaks the rule 1 <= layers <= 256"},
        {"mem --device cpu --pages 20000000", 2,
         "--pages 20000000 breaks the rule 1 <= pages <= 16777216"},
        {"niah --device cpu --contexts 1K --block-size 32 --csv %s/n.csv --svg %s/n.svg", 2,
         "--top-blocks 32 (the CPU default), --block-size 32 and --topk 2048 (default) break"},
    };
    run_cases(ctx, &t, cases, sizeof cases / sizeof cases[0]);
    /* no message names a struct field any more */
    char *e = NULL;
    CHECK(run_tool(&t, "mem --device cpu --block-size 32", NULL, &e) == 2);
    CHECKF(e && !strstr(e, "field") && !strstr(e, "top_blocks"), "stderr '%s'", e ? e : "");
    free(e);
    /* the limits are documented where the options are */
    char *o = NULL;
    CHECK(run_tool(&t, "stream --help", &o, NULL) == 0);
    CHECK(o && strstr(o, "1..256 (HISA_MAX_BATCH)") && strstr(o, "(M - 1) x B >= K"));
    free(o);
    tmp_remove(&t);
}

/* Issue point 4: SPEC.md is docs/SPEC.md, and nothing points to ../shared/SPEC.md. */
HISA_TEST(tools_spec_is_in_docs) {
    struct stat st;
    CHECK(stat("docs/SPEC.md", &st) == 0 && S_ISREG(st.st_mode));
    char *readme = read_text("README.md");
    REQUIRE(readme);
    CHECK(!strstr(readme, "shared/SPEC.md"));
    CHECK(strstr(readme, "docs/SPEC.md") != NULL);
    free(readme);
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set: the help texts not checked");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    const char *cmds[] = {"stream", "mem", "select", "eval", "niah", "bench", "bench decode",
                          "bench prefill"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char args[64], *o = NULL;
        snprintf(args, sizeof args, "%s --help", cmds[i]);
        CHECKF(run_tool(&t, args, &o, NULL) == 0, "%s", args);
        CHECKF(o && !strstr(o, "shared/SPEC"), "%s points to shared/SPEC.md", args);
        if (strcmp(cmds[i], "select") == 0) CHECK(o && strstr(o, "docs/SPEC.md"));
        free(o);
    }
    tmp_remove(&t);
}

/* Issue point 5: an input that is not a regular file is refused before anything is read or
 * allocated (a directory gave "out of memory reading 9223372036854775807 bytes" and an ASan
 * abort; a FIFO blocked forever). */
HISA_TEST(tools_npy_inputs_are_regular_files) {
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    char err[NPY_ERR_MAX] = "";
    npy_array a;
    CHECK(npy_read(t.path, &a, err, sizeof err) != 0);
    CHECKF(strstr(err, "a directory, not a regular file") && strstr(err, t.path), "'%s'", err);
    CHECK(npy_read("/dev/null", &a, err, sizeof err) != 0);
    CHECKF(strstr(err, "a character device, not a regular file"), "'%s'", err);
    if (!getenv("HISA_TOOL")) {
        tmp_remove(&t);
        SKIP("HISA_TOOL not set: end-to-end half not run");
    }
    REQUIRE(write_planted(&t, 1) == 0);
    char fifo[300];
    REQUIRE(mkfifo(tmp_file(&t, "fifo.npy", fifo, sizeof fifo), 0600) == 0);
    static const tool_case cases[] = {
        {"select --keys %s --queries %s/Q.npy --weights %s/W.npy " PL_ARGS, 2,
         "a directory, not a regular file; expected a .npy file"},
        {"select --keys %s/fifo.npy --queries %s/Q.npy --weights %s/W.npy " PL_ARGS, 2,
         "fifo.npy: a FIFO (named pipe), not a regular file"},
        {"eval --keys %s/K.npy --queries %s/Q.npy --weights %s --needles %s " PL_ARGS, 2,
         "a directory, not a regular file"},
    };
    double t0 = tool_now_s();
    run_cases(ctx, &t, cases, sizeof cases / sizeof cases[0]);
    CHECKF(tool_now_s() - t0 < 30, "the refusals took %.1f s", tool_now_s() - t0);
    tmp_remove(&t);
}

/* Issue points 6 and 11: 0 means zero (refused where it means nothing), every option has its
 * own range message, numbers past int32 or int64 are out of range (not "not an integer"). */
HISA_TEST(tools_zero_means_zero_and_ranges) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    static const tool_case cases[] = {
        {"stream --device cpu --topk 0", 2, "--topk 0: out of range; expected 1..16384"},
        {"stream --device cpu --heads 0", 2, "--heads 0: out of range; expected 1..128"},
        {"stream --device cpu --top-blocks 0", 2, "--top-blocks 0: out of range; expected 2..1024"},
        {"stream --device cpu --batch 0", 2, "--batch 0: out of range; expected 1..256"},
        {"stream --device cpu --context 0", 2, "--context 0: out of range; expected 1..16777216"},
        {"stream --device cpu --layers 0", 2, "--layers 0: out of range; expected 1.."},
        {"stream --device cpu --check-every 0", 2, "--check-every 0: out of range; expected 1.."},
        {"stream --device cpu --prefill-chunk 0", 2, "--prefill-chunk 0: out of range"},
        {"mem --device cpu --gpu-mem 0", 2, "--gpu-mem 0: out of range; expected at least 1 byte"},
        {"mem --device cpu --seqs 0", 2, "--seqs 0: out of range"},
        {"mem --device cpu --pages 0", 2, "--pages 0: out of range"},
        {"mem --device cpu --prefill-queries 0", 2, "--prefill-queries 0: out of range"},
        {"niah --device cpu --trials 0", 2, "--trials 0: out of range"},
        {"niah --device cpu --needle-gain 0", 2, "--needle-gain 0: out of range"},
        {"eval --repeat 0", 2, "--repeat 0: out of range"},
        /* negatives: each option its own message */
        {"stream --device cpu --steps -1", 2, "--steps -1: out of range; expected 0..2147483647"},
        {"stream --device cpu --batch -3", 2, "--batch -3: out of range; expected 1..256"},
        {"stream --device cpu --check-every -1", 2, "--check-every -1: out of range"},
        {"mem --device cpu --payload-bytes -1", 2, "--payload-bytes -1: out of range"},
        {"eval --show -1", 2, "--show -1: out of range"},
        /* too large: out of range with the range, not "not an integer" */
        {"stream --device cpu --steps 3000000000", 2,
         "--steps 3000000000: out of range; expected 0..2147483647"},
        {"stream --device cpu --context 2G", 2,
         "--context 2G (2147483648): out of range; expected 1..16777216"},
        {"stream --device cpu --seed 99999999999G", 2, "--seed 99999999999G: out of range"},
        {"stream --device cpu --context 16M --steps 1", 2,
         "--context 16777216 + --steps 1 x --next-n 1 = 16777217 tokens per stream: out of range"},
        {"stream --device cpu --steps many", 2, "--steps: 'many' is not an integer"},
        /* named choices: each option names its own choices (tool_parse_choice) */
        {"stream --device cpu --key-format f16", 2, "--key-format: 'f16'; expected fp8 ("},
        {"bench prefill --key-format f16", 2, "--key-format: 'f16'; expected fp8 ("},
        {"bench decode --kernels fast", 2, "--kernels: 'fast'; expected auto ("},
        /* lists: no empty entries, each in range */
        {"niah --device cpu --contexts 2K,,4K", 2, "--contexts '2K,,4K': an empty entry"},
        {"niah --device cpu --contexts 2K,", 2, "an empty entry"},
        {"niah --device cpu --contexts ,2K", 2, "an empty entry"},
        {"niah --device cpu --contexts 32M", 2, "'32M': out of range; expected 1..16777216"},
        {"niah --device cpu --depths 0,,50", 2, "--depths '0,,50': an empty entry"},
    };
    run_cases(ctx, &t, cases, sizeof cases / sizeof cases[0]);
    /* --steps 0 is zero steps (it ran 64): the prompt only */
    char *o = NULL;
    CHECK(run_tool(&t, "stream --device cpu --context 1K --steps 0 --heads 8 --block-size 32 "
                       "--top-blocks 16 --topk 256", &o, NULL) == 0);
    CHECKF(o && strstr(o, "prompt 1024 tokens, 0 decode steps") && strstr(o, "decode: 0 steps") &&
           strstr(o, "--steps 0: the prompt only"), "stream: %s", o ? o : "");
    free(o);
    int64_t v;
    CHECK(tool_parse_i64("99999999999G", &v) == -2);
    CHECK(tool_parse_i64("-99999999999999999999", &v) == -2);
    CHECK(tool_parse_i64("12Q", &v) == -1 && tool_parse_i64("-2K", &v) == 0 && v == -2048);
    tmp_remove(&t);
}

/* Issue point 7: NaN or infinite keys, queries, weights and scales, NaN codes, and scales <= 0
 * exit 2 naming the file, the index and the value (they gave "writing the keys: invalid
 * argument" with exit 1, or nothing at all). */
HISA_TEST(tools_inputs_must_be_finite) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    REQUIRE(write_planted(&t, 2) == 0);
    static float keys[PL_L * D], q[2 * 2 * D], w[2 * 2], sc[PL_L];
    static uint8_t codes[PL_L * D], q8[2 * 2 * D];
    static uint16_t qb[2 * 2 * D];
    for (int i = 0; i < PL_L * D; i++) keys[i] = 0.25f, codes[i] = 0x38;
    for (int i = 0; i < 2 * 2 * D; i++) q[i] = 1.0f, q8[i] = 0x38, qb[i] = 0x3f80;
    for (int i = 0; i < 4; i++) w[i] = 1.0f;
    int64_t ks[2] = {PL_L, D}, qs[3] = {2, 2, D}, wsh[2] = {2, 2}, ss[1] = {PL_L};
    keys[17 * D + 5] = NAN;
    REQUIRE(put_npy(&t, "Kn.npy", NPY_F4, 2, ks, keys) == 0);
    q[(1 * 2 + 1) * D + 3] = INFINITY;
    REQUIRE(put_npy(&t, "Qi.npy", NPY_F4, 3, qs, q) == 0);
    w[1] = NAN;
    REQUIRE(put_npy(&t, "Wn.npy", NPY_F4, 2, wsh, w) == 0);
    const float bad_scales[3] = {-1.0f, NAN, 0.0f};
    const char *scale_names[3] = {"Sneg.npy", "Snan.npy", "S0.npy"};
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < PL_L; j++) sc[j] = 0.5f;
        sc[12 + i] = bad_scales[i];
        REQUIRE(put_npy(&t, scale_names[i], NPY_F4, 1, ss, sc) == 0);
    }
    for (int j = 0; j < PL_L; j++) sc[j] = 0.5f;
    REQUIRE(put_npy(&t, "S.npy", NPY_F4, 1, ss, sc) == 0);
    codes[7 * D + 9] = 0x7f;
    REQUIRE(put_npy(&t, "Cn.npy", NPY_U1, 2, ks, codes) == 0);
    qb[2] = 0x7fc0;
    REQUIRE(put_npy(&t, "Qb.npy", NPY_U2, 3, qs, qb) == 0);
    q8[D + 2] = 0xff;
    REQUIRE(put_npy(&t, "Q8.npy", NPY_U1, 3, qs, q8) == 0);
    static const tool_case cases[] = {
        {"select --keys %s/Kn.npy --queries %s/Q.npy --weights %s/W.npy " PL_ARGS, 2,
         "Kn.npy: keys[17,5] is NaN; every value must be a finite number"},
        {"select --keys %s/K.npy --queries %s/Qi.npy --weights %s/W.npy " PL_ARGS, 2,
         "Qi.npy: queries[1,1,3] is inf"},
        {"eval --keys %s/K.npy --queries %s/Q.npy --weights %s/Wn.npy " PL_ARGS, 2,
         "Wn.npy: weights[0,1] is NaN"},
        {"select --keys %s/Cn.npy --scales %s/S.npy --queries %s/Q.npy --weights %s/W.npy " PL_ARGS,
         2, "Cn.npy: key codes[7,9] is the e4m3fn code 0x7f"},
        {"select --keys %s/K.npy --queries %s/Qb.npy --weights %s/W.npy --query-format bf16 "
         PL_ARGS, 2, "Qb.npy: queries[0,0,2] is the bf16 bits 0x7fc0"},
        {"eval --keys %s/K.npy --queries %s/Q8.npy --weights %s/W.npy --query-format fp8 " PL_ARGS,
         2, "Q8.npy: queries[0,1,2] is the e4m3fn code 0xff"},
    };
    run_cases(ctx, &t, cases, sizeof cases / sizeof cases[0]);
    const char *scale_msg[3] = {"Sneg.npy: scales[12] is -1; every fp8 scale must be a positive",
                                "Snan.npy: scales[13] is NaN", "S0.npy: scales[14] is 0"};
    for (int i = 0; i < 3; i++) {
        char args[1200], *e = NULL;
        snprintf(args, sizeof args, "select --keys %s/C.npy --scales %s/%s --queries %s/Q.npy "
                 "--weights %s/W.npy " PL_ARGS, t.path, t.path, scale_names[i], t.path, t.path);
        codes[7 * D + 9] = 0x38;
        REQUIRE(put_npy(&t, "C.npy", NPY_U1, 2, ks, codes) == 0);
        CHECKF(run_tool(&t, args, NULL, &e) == 2 && e && strstr(e, scale_msg[i]),
               "%s: '%s'", scale_names[i], e ? e : "");
        free(e);
    }
    tmp_remove(&t);
}

/* Issue point 8: output paths are checked before the work (they failed after it, and a bad
 * --csv also kept the SVG from being written). */
HISA_TEST(tools_outputs_checked_before_work) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    REQUIRE(write_planted(&t, 1) == 0);
    static const tool_case cases[] = {
        {"select --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy --out %s/nodir/I.npy "
         PL_ARGS, 2, "nodir/I.npy: cannot write the output: its directory does not exist"},
        {"select --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy --out %s " PL_ARGS, 2,
         "cannot write the output: is a directory"},
        {"niah --device cpu --contexts 1K --depths 0 --heads 8 --csv %s/nodir/x.csv "
         "--svg %s/n.svg", 2, "--csv "},
        {"niah --device cpu --contexts 1K --depths 0 --heads 8 --csv %s/n.csv "
         "--svg %s/nodir/x.svg", 2, "--svg "},
        {"bench decode --json %s/nodir/x.json", 2, "--json "},
        {"bench prefill --json %s/nodir/x.json", 2, "--json "},
    };
    run_cases(ctx, &t, cases, sizeof cases / sizeof cases[0]);
    /* nothing ran and nothing was written */
    char args[1200], *o = NULL, p[300];
    snprintf(args, sizeof args, "niah --device cpu --contexts 1K --depths 0 --heads 8 "
             "--csv %s/nodir/x.csv --svg %s/n.svg", t.path, t.path);
    CHECK(run_tool(&t, args, &o, NULL) == 2);
    CHECKF(o && !strstr(o, "needle recall"), "niah ran: %s", o ? o : "");
    free(o);
    struct stat st;
    CHECK(stat(tmp_file(&t, "n.svg", p, sizeof p), &st) != 0);
    CHECK(stat(tmp_file(&t, "n.csv", p, sizeof p), &st) != 0);
    snprintf(args, sizeof args, "select --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy "
             "--out %s/nodir/I.npy " PL_ARGS, t.path, t.path, t.path, t.path);
    CHECK(run_tool(&t, args, &o, NULL) == 2);
    CHECKF(o && !strstr(o, "hisa select: device"), "select ran: %s", o ? o : "");
    free(o);
    /* an existing file is checked without being changed */
    REQUIRE(write_bytes(tmp_file(&t, "keep.npy", p, sizeof p), "old", 3) == 0);
    CHECK(tool_check_output("t", "out", p) == 0);
    char *kept = read_text(p);
    CHECK(kept && strcmp(kept, "old") == 0);
    free(kept);
    tmp_remove(&t);
}

/* The box of one SVG <text> element: 0.6 em per character (an entity counts one) for every
 * weight, from 1 em above the baseline to 0.25 em below; text-anchor and rotate(-90) honoured. */
typedef struct svg_box {
    double x0, y0, x1, y1;
    char text[80];
} svg_box;

static double svg_attr(const char *tag, const char *end, const char *name, double def) {
    char pat[40];
    snprintf(pat, sizeof pat, " %s=\"", name);
    const char *p = strstr(tag, pat);
    return p && p < end ? atof(p + strlen(pat)) : def;
}

static svg_box svg_text_box(const char *tag, const char *gt, const char *text, size_t len) {
    svg_box b;
    double size = svg_attr(tag, gt, "font-size", 11), x = svg_attr(tag, gt, "x", 0);
    double y = svg_attr(tag, gt, "y", 0), n = 0;
    for (size_t i = 0; i < len; i++)
        if (text[i] != '&') n += 1;
        else i += strcspn(text + i, ";"), n += 1;
    double w = n * 0.6 * size, start = 0;
    const char *anchor = strstr(tag, "text-anchor=\"");
    if (anchor && anchor < gt && strncmp(anchor + 13, "middle", 6) == 0) start = -w / 2;
    if (anchor && anchor < gt && strncmp(anchor + 13, "end", 3) == 0) start = -w;
    const char *rot = strstr(tag, "rotate(-90");
    if (rot && rot < gt) /* reading upwards: the glyphs stand left of the baseline */
        b = (svg_box){x - size, y - start - w, x + 0.25 * size, y - start, ""};
    else
        b = (svg_box){x + start, y - size, x + start + w, y + 0.25 * size, ""};
    snprintf(b.text, sizeof b.text, "%.*s", (int)(len < 79 ? len : 79), text);
    return b;
}

/* Every text of the SVG inside the picture, no two overlapping. */
static void check_svg_layout(hisa_test_ctx *ctx, const char *svg, const char *what) {
    REQUIRE(svg && strncmp(svg, "<svg", 4) == 0);
    const char *root_end = strchr(svg, '>');
    double W = svg_attr(svg, root_end, "width", 0), H = svg_attr(svg, root_end, "height", 0);
    static svg_box boxes[2048];
    int n = 0;
    for (const char *p = strstr(svg, "<text"); p && n < 2048; p = strstr(p + 1, "<text")) {
        const char *gt = strchr(p, '>'), *close = gt ? strstr(gt, "</text>") : NULL;
        if (!close) break;
        boxes[n++] = svg_text_box(p, gt, gt + 1, (size_t)(close - gt - 1));
    }
    CHECKF(n > 10, "%s: %d texts", what, n);
    for (int i = 0; i < n; i++) {
        const svg_box *a = &boxes[i];
        CHECKF(a->x0 >= 0 && a->y0 >= 0 && a->x1 <= W && a->y1 <= H,
               "%s: '%s' [%.0f,%.0f]..[%.0f,%.0f] leaves the %.0f x %.0f picture", what, a->text,
               a->x0, a->y0, a->x1, a->y1, W, H);
        for (int j = i + 1; j < n; j++) {
            const svg_box *b = &boxes[j];
            CHECKF(!(a->x0 < b->x1 && b->x0 < a->x1 && a->y0 < b->y1 && b->y0 < a->y1),
                   "%s: '%s' overlaps '%s'", what, a->text, b->text);
        }
    }
}

/* Issue point 9: the heatmap holds its title at the CPU default of 3 contexts, and with one
 * context the labels do not overlap; with trivial columns footnoted, too. */
HISA_TEST(tools_niah_svg_layout) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    const char *grids[3][2] = {{"1K", "0,100"}, {"2K,3K,4K", "0,50,100"}, {"4K", "50"}};
    for (int g = 0; g < 3; g++) {
        char args[1200], p[300], name[16];
        snprintf(args, sizeof args, "niah --device cpu --heads 8 --contexts %s --depths %s "
                 "--csv %s/n.csv --svg %s/n%d.svg", grids[g][0], grids[g][1], t.path, t.path, g);
        CHECKF(run_tool(&t, args, NULL, NULL) == 0, "%s", args);
        snprintf(name, sizeof name, "n%d.svg", g);
        char *svg = read_text(tmp_file(&t, name, p, sizeof p));
        check_svg_layout(ctx, svg, grids[g][0]);
        free(svg);
    }
    tmp_remove(&t);
}

/* Issue point 10: results that are equal by construction are flagged. */
HISA_TEST(tools_trivial_results_flagged) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    REQUIRE(write_planted(&t, 2) == 0);
    char args[1200], *o = NULL;
    /* eval: 8 blocks of 32 with m = 8: every block is a candidate; with m = 3 not */
    snprintf(args, sizeof args, "eval --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy "
             "--block-size 32 --top-blocks 8 --topk 7 --device cpu", t.path, t.path, t.path);
    CHECK(run_tool(&t, args, &o, NULL) == 0);
    CHECKF(o && strstr(o, "note: every query sees at most 256 tokens; 256 tokens are 8 blocks of "
                          "B=32 <= m=8: every block is a candidate, the coarse stage is skipped "
                          "and HISA equals flat by construction"), "eval: %s", o ? o : "");
    free(o);
    snprintf(args + strlen(args), sizeof args - strlen(args), " --json");
    CHECK(run_tool(&t, args, &o, NULL) == 0);
    CHECK(json_number(o, "trivial_queries") == 2.0 && o && strstr(o, "\"trivial_why\": "));
    free(o);
    snprintf(args, sizeof args, "eval --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy "
             "--json " PL_ARGS, t.path, t.path, t.path);
    CHECK(run_tool(&t, args, &o, NULL) == 0);
    CHECK(json_number(o, "trivial_queries") == 0.0 && o && !strstr(o, "trivial_why"));
    free(o);
    /* a context of at most k tokens selects everything */
    snprintf(args, sizeof args, "eval --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy "
             "--device cpu", t.path, t.path, t.path);
    CHECK(run_tool(&t, args, &o, NULL) == 0);
    CHECKF(o && strstr(o, "256 tokens <= k=2048: every visible token is selected"), "%s",
           o ? o : "");
    free(o);
    /* niah on the CPU: m = 32, so 8K is not trivial; 2K <= k and 4K (32 blocks) are */
    snprintf(args, sizeof args, "niah --device cpu --heads 8 --contexts 2K,4K,8K --depths 50 "
             "--csv %s/n.csv --svg %s/n.svg", t.path, t.path);
    CHECK(run_tool(&t, args, &o, NULL) == 0);
    CHECKF(o && strstr(o, "m=32") && strstr(o, "note: context 2K: 2048 tokens <= k=2048") &&
           strstr(o, "note: context 4K: 4096 tokens are 32 blocks of B=128 <= m=32") &&
           !strstr(o, "note: context 8K"), "niah: %s", o ? o : "");
    free(o);
    char p[300];
    char *csv = read_text(tmp_file(&t, "n.csv", p, sizeof p));
    CHECKF(csv && strstr(csv, "2048,50,1025,1,1.0000,1.0000,1.0000,all_tokens\n") &&
           strstr(csv, ",all_blocks\n") && strstr(csv, ",none\n"), "csv: %s", csv ? csv : "");
    free(csv);
    char *svg = read_text(tmp_file(&t, "n.svg", p, sizeof p));
    CHECK(svg && strstr(svg, ">2K*</text>") && strstr(svg, ">8K</text>") &&
          strstr(svg, "HISA equals flat by construction"));
    free(svg);
    /* stream: a run that never sees more than m blocks says so */
    CHECK(run_tool(&t, "stream --device cpu --context 1K --steps 2 --heads 8 --block-size 32 "
                       "--top-blocks 64 --topk 256", &o, NULL) == 0);
    CHECKF(o && strstr(o, "note: every query of this run sees at most 1026 tokens; 1026 tokens "
                          "are 33 blocks of B=32 <= m=64"), "stream: %s", o ? o : "");
    free(o);
    tmp_remove(&t);
}

/* Issue point 11 (the needles): int64 needles are told to be int32. */
HISA_TEST(tools_needles_must_be_int32) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    REQUIRE(write_planted(&t, 1) == 0);
    uint8_t buf[512];
    int64_t needles[2] = {3, 40};
    size_t n = npy_image(buf, 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }",
                         needles, sizeof needles);
    char p[300];
    REQUIRE(write_bytes(tmp_file(&t, "N64.npy", p, sizeof p), buf, n) == 0);
    static const tool_case cases[] = {
        {"eval --keys %s/K.npy --queries %s/Q.npy --weights %s/W.npy --needles %s/N64.npy " PL_ARGS,
         2, "N64.npy: expected needle positions as int32 '<i4', [n] or [n_q,n]; got dtype '<i8'"},
    };
    run_cases(ctx, &t, cases, 1);
    char descr[16], err[NPY_ERR_MAX];
    CHECK(npy_read_descr(p, descr, sizeof descr, err, sizeof err) == 0);
    CHECK(strcmp(descr, "<i8") == 0);
    tmp_remove(&t);
}

/* Issue point 12: with --gpu-mem, the table and the JSON describe the configuration that fits
 * (they showed the default 8 sequences next to "holds 4680 sequences"). */
HISA_TEST(tools_mem_gpu_mem_shows_the_fit) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    char *o = NULL;
    REQUIRE(run_tool(&t, "mem --device cpu --context 64K --layers 4 --gpu-mem 2G --json", &o,
                     NULL) == 0);
    const char *f = o ? strstr(o, "\"fit\"") : NULL;
    REQUIRE(f);
    double fit = json_number(f, "max_seqs"), shown = json_number(o, "max_seqs");
    CHECKF(fit >= 2 && shown == fit, "config max_seqs %g, fit %g", shown, fit);
    CHECK(json_number(o, "n_pages") == fit * 512); /* 64K / 128 pages per sequence */
    CHECK(json_number(o, "device_bytes") <= 2.0 * (1 << 30));
    CHECK(strstr(f, "\"fits\": true") != NULL);
    free(o);
    REQUIRE(run_tool(&t, "mem --device cpu --context 64K --layers 4 --gpu-mem 2G", &o, NULL) == 0);
    char want[160];
    snprintf(want, sizeof want, "holds %d sequences of 65536 tokens; the plan below is that "
             "configuration", (int)fit);
    CHECKF(o && strstr(o, want), "mem: %s", o ? o : "");
    snprintf(want, sizeof want, "%d sequences x 65536 tokens, %d pages", (int)fit, (int)fit * 512);
    CHECKF(o && strstr(o, want), "mem table: %s", o ? o : "");
    free(o);
    /* nothing fits: said, and the table is the one sequence */
    REQUIRE(run_tool(&t, "mem --device cpu --context 1M --layers 61 --gpu-mem 1G", &o, NULL) == 0);
    CHECK(o && strstr(o, "not even one sequence of 1048576 tokens fits") &&
          strstr(o, "1 sequence x 1048576 tokens"));
    free(o);
    static const tool_case cases[] = {
        {"mem --device cpu --gpu-mem 80G --seqs 4", 2, "cannot be given with --seqs"},
        {"mem --device cpu --gpu-mem 80G --pages 4", 2, "cannot be given with --pages"},
    };
    run_cases(ctx, &t, cases, 2);
    tmp_remove(&t);
}

/* Issue point 13: bench --help shows both benchmarks (in every build), and max_batch's default
 * is documented as it is: min(max_seqs, 256). */
HISA_TEST(tools_bench_help_and_max_batch_docs) {
    if (!getenv("HISA_TOOL")) SKIP("HISA_TOOL not set");
    tmpdir t;
    REQUIRE(tmp_make(&t) == 0);
    char *o = NULL;
    CHECK(run_tool(&t, "bench --help", &o, NULL) == 0);
    CHECKF(o && strstr(o, "usage: hisa bench decode") && strstr(o, "usage: hisa bench prefill"),
           "bench --help: %s", o ? o : "");
    free(o);
    CHECK(run_tool(&t, "bench decode --help", &o, NULL) == 0);
    CHECK(o && strstr(o, "usage: hisa bench decode"));
    free(o);
    CHECK(run_tool(&t, "bench prefill --help", &o, NULL) == 0);
    CHECK(o && strstr(o, "usage: hisa bench prefill"));
    free(o);
    char *e = NULL; /* a bad --fp8-mma exits 2 before any device work, naming the option */
    CHECK(run_tool(&t, "bench prefill --fp8-mma fast", NULL, &e) == 2);
    CHECKF(e && strstr(e, "hisa bench prefill: --fp8-mma: 'fast'; expected exact"), "%s", e ? e : "");
    free(e);
    CHECK(run_tool(&t, "bench", NULL, NULL) == 2);
    CHECK(run_tool(&t, "mem --help", &o, NULL) == 0);
    CHECK(o && strstr(o, "default\n                       min(seqs, 256)"));
    CHECK(o && !strstr(o, "(default seqs)"));
    free(o);
    char *readme = read_text("README.md");
    CHECK(readme && strstr(readme, "`max_batch` defaults to min(max_seqs, 256)"));
    free(readme);
    tmp_remove(&t);
}
