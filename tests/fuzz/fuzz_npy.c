/* fuzz_npy.c: libFuzzer target for the .npy reader (tools/npy.h).
 *
 * The input bytes are a file image. npy_parse must either refuse it (-1, a NUL-terminated message
 * that names the file, *out zeroed) or accept it with a consistent array: ndim in
 * [0, NPY_DIMS_MAX], count = product of the shape, data holding count * itemsize bytes equal to
 * the file's tail. An accepted array must survive npy_write + npy_read unchanged, and npy_expect /
 * npy_shape_str must be safe on it. Any violation aborts (a finding); ASan/UBSan catch the rest.
 *
 * Build: see `make fuzz`. Run: build/fuzz/fuzz_npy build/fuzz/corpus_npy tests/corpus/npy */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../tools/npy.h"

#define FUZZ_ASSERT(cond)                                                                \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            fprintf(stderr, "fuzz_npy: invariant failed at %s:%d: %s\n", __FILE__,       \
                    __LINE__, #cond);                                                    \
            abort();                                                                     \
        }                                                                                \
    } while (0)

static int all_zero(const void *p, size_t n) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i]) return 0;
    return 1;
}

static char g_tmp[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    npy_array a;
    char err[NPY_ERR_MAX];
    memset(err, 'x', sizeof err);
    /* A copy of exactly `size` bytes, so ASan sees any read past the end of the image. */
    uint8_t *buf = malloc(size ? size : 1);
    FUZZ_ASSERT(buf);
    if (size) memcpy(buf, data, size);
    int rc = npy_parse("fuzz.npy", buf, size, &a, err, sizeof err);
    FUZZ_ASSERT(rc == 0 || rc == -1);
    if (rc != 0) {
        FUZZ_ASSERT(memchr(err, 0, sizeof err) != NULL);  /* terminated */
        FUZZ_ASSERT(strncmp(err, "fuzz.npy: ", 10) == 0); /* names the file */
        FUZZ_ASSERT(all_zero(&a, sizeof a));
        free(buf);
        return 0;
    }
    FUZZ_ASSERT(a.ndim >= 0 && a.ndim <= NPY_DIMS_MAX);
    FUZZ_ASSERT(a.dtype == NPY_F4 || a.dtype == NPY_I4 || a.dtype == NPY_U1 || a.dtype == NPY_U2);
    FUZZ_ASSERT(a.data != NULL);
    int64_t count = 1;
    for (int32_t i = 0; i < a.ndim; i++) {
        FUZZ_ASSERT(a.shape[i] >= 0);
        count *= a.shape[i]; /* npy_parse promised no overflow; UBSan checks */
    }
    FUZZ_ASSERT(count == a.count);
    size_t item = npy_dtype_size(a.dtype), bytes = (size_t)count * item;
    FUZZ_ASSERT(bytes <= size);
    /* The data is the file's tail, byte for byte (no trailing garbage is accepted). */
    FUZZ_ASSERT(bytes == 0 || memcmp(a.data, buf + size - bytes, bytes) == 0);

    char sbuf[8];
    npy_shape_str(a.shape, a.ndim, sbuf, sizeof sbuf); /* truncating buffer: no overflow */
    FUZZ_ASSERT(memchr(sbuf, 0, sizeof sbuf) != NULL);
    int64_t want[NPY_DIMS_MAX];
    for (int32_t i = 0; i < NPY_DIMS_MAX; i++) want[i] = i % 2 ? -1 : 3;
    int e = npy_expect(&a, "fuzz.npy", "thing [3,*]", NPY_F4, a.ndim, want, err, sizeof err);
    FUZZ_ASSERT(e == 0 || (e == -1 && memchr(err, 0, sizeof err) != NULL));

    /* Round trip through the writer and the file reader. */
    if (bytes <= (1u << 20)) {
        if (!g_tmp[0]) snprintf(g_tmp, sizeof g_tmp, "/tmp/hisa_fuzz_npy_%d.npy", (int)getpid());
        FUZZ_ASSERT(npy_write(g_tmp, a.dtype, a.ndim, a.shape, a.data, err, sizeof err) == 0);
        npy_array b;
        FUZZ_ASSERT(npy_read(g_tmp, &b, err, sizeof err) == 0);
        FUZZ_ASSERT(b.dtype == a.dtype && b.ndim == a.ndim && b.count == a.count);
        FUZZ_ASSERT(memcmp(b.shape, a.shape, sizeof(int64_t) * (size_t)a.ndim) == 0);
        FUZZ_ASSERT(bytes == 0 || memcmp(b.data, a.data, bytes) == 0);
        npy_free(&b);
        unlink(g_tmp);
    }
    npy_free(&a);
    FUZZ_ASSERT(a.data == NULL);
    free(buf);
    return 0;
}
