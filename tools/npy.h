/* npy.h: a small reader and writer for NumPy .npy files, the tensors users dump from their
 * model to check hisa with `hisa select` / `hisa eval`.
 *
 * Supported: little-endian float32 ('<f4'), int32 ('<i4'), uint16 ('<u2', bf16 bits), uint8
 * ('|u1', fp8 e4m3 codes), C order, format versions 1.0 and 2.0, up to NPY_DIMS_MAX
 * dimensions. Anything else is refused with a message that names the file and says what was
 * expected, so a command can print it and exit 2. */
#ifndef HISA_TOOLS_NPY_H
#define HISA_TOOLS_NPY_H

#include <stddef.h>
#include <stdint.h>

#define NPY_DIMS_MAX 8
#define NPY_ERR_MAX 512 /* size of an error message buffer */
#define NPY_FILE_MAX (1ull << 40) /* the largest file npy_read reads, bytes */

typedef enum { NPY_F4 = 0, NPY_I4 = 1, NPY_U1 = 2, NPY_U2 = 3 } npy_dtype;

typedef struct npy_array {
    npy_dtype dtype;
    int32_t ndim;
    int64_t shape[NPY_DIMS_MAX];
    int64_t count; /* product of shape (1 for a 0-d array) */
    void *data;    /* malloc'd, count * itemsize bytes (at least 1); npy_free releases it */
} npy_array;

/* '<f4' etc. and a readable name ("float32"). */
const char *npy_dtype_descr(npy_dtype dt);
const char *npy_dtype_name(npy_dtype dt);
size_t npy_dtype_size(npy_dtype dt);

/* Read path into *out (zeroed on failure). Returns 0, or -1 with a message in err
 * ("K.npy: truncated: ..."). Only a regular file is read: a directory, a FIFO or a device is
 * refused ("X: a directory, not a regular file; ...") before anything is allocated. */
int npy_read(const char *path, npy_array *out, char *err, size_t err_len);

/* The dtype string of path's header ("<i8"), whatever the dtype, for a message about a file
 * npy_read refused. Returns 0, or -1 with a message in err. */
int npy_read_descr(const char *path, char *descr, size_t descr_len, char *err, size_t err_len);

/* Parse an in-memory file image (what npy_read does after reading the file); name is used in
 * messages. The data is copied into a fresh allocation. */
int npy_parse(const char *name, const uint8_t *buf, size_t len, npy_array *out, char *err,
              size_t err_len);

/* Write a version 1.0 file. Returns 0, or
 * -1 with a message in err. */
int npy_write(const char *path, npy_dtype dt, int32_t ndim, const int64_t *shape,
              const void *data, char *err, size_t err_len);

void npy_free(npy_array *a);

/* Check a loaded array against an expectation: dtype, ndim, and shape (a negative entry in
 * shape matches any extent). what describes the tensor for the message, e.g. "keys [L,128]".
 * Returns 0, or -1 with "PATH: expected WHAT: float32 [L,128]; got int32 [3,4]" in err. */
int npy_expect(const npy_array *a, const char *path, const char *what, npy_dtype dt,
               int32_t ndim, const int64_t *shape, char *err, size_t err_len);

/* "[3,4]" of a shape into buf. */
const char *npy_shape_str(const int64_t *shape, int32_t ndim, char *buf, size_t buf_len);

#endif /* HISA_TOOLS_NPY_H */
