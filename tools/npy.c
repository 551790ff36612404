/* npy.c: .npy reader and writer (see npy.h for what is supported and why).
 *
 * The format: 6 magic bytes "\x93NUMPY", a major and minor version byte, the header length
 * (uint16 LE for 1.0, uint32 LE for 2.0), then an ASCII Python dict literal such as
 * {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), } padded with spaces and a newline,
 * then the raw data. We parse the dict strictly: the three keys and nothing else, since a file
 * we half-understand would feed garbage keys to the indexer. */
#include "npy.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char k_magic[6] = {(char)0x93, 'N', 'U', 'M', 'P', 'Y'};

const char *npy_dtype_descr(npy_dtype dt) {
    switch (dt) {
    case NPY_F4: return "<f4";
    case NPY_I4: return "<i4";
    case NPY_U1: return "|u1";
    case NPY_U2: return "<u2";
    }
    return "?";
}

const char *npy_dtype_name(npy_dtype dt) {
    switch (dt) {
    case NPY_F4: return "float32";
    case NPY_I4: return "int32";
    case NPY_U1: return "uint8";
    case NPY_U2: return "uint16";
    }
    return "?";
}

size_t npy_dtype_size(npy_dtype dt) { return dt == NPY_U1 ? 1 : dt == NPY_U2 ? 2 : 4; }

static int fail(char *err, size_t err_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t err_len, const char *fmt, ...) {
    if (err && err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return -1;
}

const char *npy_shape_str(const int64_t *shape, int32_t ndim, char *buf, size_t buf_len) {
    size_t used = 0;
    if (buf_len == 0) return buf;
    buf[0] = 0;
    used += (size_t)snprintf(buf + used, buf_len - used, "[");
    for (int32_t i = 0; i < ndim && used < buf_len; i++) {
        if (shape[i] < 0)
            used += (size_t)snprintf(buf + used, buf_len - used, "%s*", i ? "," : "");
        else
            used += (size_t)snprintf(buf + used, buf_len - used, "%s%lld", i ? "," : "",
                                     (long long)shape[i]);
    }
    if (used < buf_len) snprintf(buf + used, buf_len - used, "]");
    return buf;
}

/* --- header dict parsing ---------------------------------------------------------------- */
typedef struct {
    const char *p, *end;
} cursor;

static void skip_ws(cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int eat(cursor *c, char ch) {
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* A quoted Python string ('...' or "...") without escapes (none appear in npy headers). */
static int parse_str(cursor *c, char *out, size_t out_len) {
    skip_ws(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return -1;
    char q = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != q) {
        if (n + 1 >= out_len) return -1;
        out[n++] = *c->p++;
    }
    if (c->p >= c->end) return -1;
    c->p++;
    out[n] = 0;
    return 0;
}

static int parse_int(cursor *c, int64_t *out) {
    skip_ws(c);
    int64_t v = 0;
    int digits = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        if (v > (INT64_MAX - 9) / 10) return -1;
        v = v * 10 + (*c->p - '0');
        c->p++;
        digits++;
    }
    if (!digits) return -1;
    if (c->p < c->end && *c->p == 'L') c->p++; /* Python 2 longs */
    *out = v;
    return 0;
}

static int parse_word(cursor *c, const char *word) {
    skip_ws(c);
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) >= n && memcmp(c->p, word, n) == 0) {
        c->p += n;
        return 1;
    }
    return 0;
}

/* Names for the dtypes people most often dump by mistake, to make the message useful. */
static const char *descr_hint(const char *d) {
    static const struct {
        const char *descr, *name;
    } k[] = {{"<f8", "float64"}, {"<f2", "float16"}, {"<i8", "int64"},  {"<i2", "int16"},
             {"|i1", "int8"},    {">u2", "big-endian uint16"}, {"<u4", "uint32"}, {"<u8", "uint64"},
             {"|b1", "bool"},    {">f4", "big-endian float32"}, {">i4", "big-endian int32"},
             {"<V2", "void16: bfloat16 saved as raw bytes? save x.view(np.uint16)"}};
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        if (strcmp(d, k[i].descr) == 0) return k[i].name;
    return "unsupported";
}

static int parse_descr(const char *d, npy_dtype *dt) {
    if (strcmp(d, "<f4") == 0) *dt = NPY_F4;
    else if (strcmp(d, "<i4") == 0) *dt = NPY_I4;
    else if (strcmp(d, "<u2") == 0) *dt = NPY_U2; /* bf16 bits */
    /* byte order is meaningless for one-byte types; numpy writes '|u1' */
    else if (strcmp(d, "|u1") == 0 || strcmp(d, "<u1") == 0 || strcmp(d, "u1") == 0) *dt = NPY_U1;
    else return -1;
    return 0;
}

/* The preamble: the magic, the version (1.0 or 2.0), the header length. Sets *header_off and
 * *header_len, the header checked to lie within len. */
static int parse_preamble(const char *name, const uint8_t *buf, size_t len, size_t *header_off,
                          size_t *header_len, char *err, size_t err_len) {
    assert(name && header_off && header_len);
    if (len < 8 || memcmp(buf, k_magic, 6) != 0) {
        if (len < 6 && memcmp(buf, k_magic, len) == 0)
            return fail(err, err_len, "%s: truncated: %zu bytes, shorter than the .npy magic",
                        name, len);
        return fail(err, err_len,
                    "%s: not a .npy file (bad magic; expected the bytes \\x93NUMPY at the start)",
                    name);
    }
    uint8_t major = buf[6], minor = buf[7];
    if (major == 1 && minor == 0) {
        if (len < 10) return fail(err, err_len, "%s: truncated in the header length", name);
        *header_len = (size_t)buf[8] | (size_t)buf[9] << 8;
        *header_off = 10;
    } else if (major == 2 && minor == 0) {
        if (len < 12) return fail(err, err_len, "%s: truncated in the header length", name);
        *header_len = (size_t)buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 |
                      (size_t)buf[11] << 24;
        *header_off = 12;
    } else {
        return fail(err, err_len,
                    "%s: .npy format version %u.%u is not supported; expected 1.0 or 2.0", name,
                    major, minor);
    }
    if (*header_len > len - *header_off)
        return fail(err, err_len,
                    "%s: truncated: the header says %zu header bytes, the file has %zu after "
                    "the length field",
                    name, *header_len, len - *header_off);
    return 0;
}

/* What the header dict says. A key given twice counts twice (the last value wins; shape
 * entries add up, and the dimension limit catches a runaway). */
typedef struct npy_header {
    char descr[64];
    int fortran, have_descr, have_fortran, have_shape;
    int64_t shape[NPY_DIMS_MAX];
    int32_t ndim;
} npy_header;

/* The shape tuple: "()", "(5,)", "(3, 4)", a trailing comma allowed. */
static int parse_shape(cursor *c, const char *name, npy_header *h, char *err, size_t err_len) {
    assert(c && name && h);
    assert(h->ndim >= 0 && h->ndim <= NPY_DIMS_MAX);
    if (!eat(c, '('))
        return fail(err, err_len, "%s: malformed .npy header: shape must be a tuple", name);
    while (!eat(c, ')')) {
        if (h->ndim >= NPY_DIMS_MAX)
            return fail(err, err_len, "%s: more than %d dimensions", name, NPY_DIMS_MAX);
        if (parse_int(c, &h->shape[h->ndim]) != 0)
            return fail(err, err_len,
                        "%s: malformed .npy header: shape entries must be non-negative "
                        "integers",
                        name);
        h->ndim++;
        if (!eat(c, ',')) {
            if (!eat(c, ')'))
                return fail(err, err_len, "%s: malformed .npy header: bad shape tuple", name);
            break;
        }
    }
    h->have_shape = 1;
    return 0;
}

/* One "'key': value" entry of the dict: descr, fortran_order or shape, nothing else. */
static int parse_entry(cursor *c, const char *name, npy_header *h, char *err, size_t err_len) {
    assert(c && name && h);
    char key[32];
    if (parse_str(c, key, sizeof key) != 0 || !eat(c, ':'))
        return fail(err, err_len, "%s: malformed .npy header: expected 'key': value", name);
    if (strcmp(key, "descr") == 0) {
        if (parse_str(c, h->descr, sizeof h->descr) != 0)
            return fail(err, err_len,
                        "%s: .npy header: 'descr' is not a simple dtype string (structured "
                        "dtypes are not supported)",
                        name);
        h->have_descr = 1;
        return 0;
    }
    if (strcmp(key, "fortran_order") == 0) {
        if (parse_word(c, "True")) h->fortran = 1;
        else if (parse_word(c, "False")) h->fortran = 0;
        else
            return fail(err, err_len,
                        "%s: malformed .npy header: fortran_order must be True or False", name);
        h->have_fortran = 1;
        return 0;
    }
    if (strcmp(key, "shape") == 0) return parse_shape(c, name, h, err, err_len);
    return fail(err, err_len, "%s: .npy header has an unexpected key '%s'", name, key);
}

/* The whole dict, which must fill the header exactly (trailing whitespace aside). */
static int parse_dict(cursor *c, const char *name, npy_header *h, char *err, size_t err_len) {
    assert(c && name && h);
    assert(c->p <= c->end);
    memset(h, 0, sizeof *h);
    if (!eat(c, '{'))
        return fail(err, err_len, "%s: malformed .npy header: expected a '{' dict", name);
    for (;;) { /* each entry consumes input, so this ends by the header's end */
        if (eat(c, '}')) break;
        if (parse_entry(c, name, h, err, err_len) != 0) return -1;
        if (!eat(c, ',')) {
            if (!eat(c, '}'))
                return fail(err, err_len, "%s: malformed .npy header: expected ',' or '}'",
                            name);
            break;
        }
    }
    if (!h->have_descr || !h->have_fortran || !h->have_shape)
        return fail(err, err_len, "%s: .npy header lacks '%s'", name,
                    !h->have_descr ? "descr" : !h->have_fortran ? "fortran_order" : "shape");
    skip_ws(c);
    if (c->p != c->end)
        return fail(err, err_len, "%s: malformed .npy header: text after the dict", name);
    return 0;
}

/* The data after the header: a supported dtype in C order, exactly the bytes of the shape,
 * copied into out. */
static int parse_data(const char *name, const npy_header *h, const uint8_t *buf, size_t len,
                      size_t data_off, npy_array *out, char *err, size_t err_len) {
    assert(name && h && out);
    assert(data_off <= len);
    npy_dtype dt;
    if (parse_descr(h->descr, &dt) != 0)
        return fail(err, err_len,
                    "%s: dtype '%s' (%s) is not supported; expected little-endian float32 "
                    "'<f4', int32 '<i4', uint16 '<u2' or uint8 '|u1'",
                    name, h->descr, descr_hint(h->descr));
    if (h->fortran)
        return fail(err, err_len,
                    "%s: fortran_order is True; expected C order (save with "
                    "np.ascontiguousarray)",
                    name);
    size_t item = npy_dtype_size(dt);
    int64_t count = 1;
    for (int32_t i = 0; i < h->ndim; i++) {
        if (h->shape[i] != 0 && count > (INT64_MAX / (int64_t)item) / h->shape[i])
            return fail(err, err_len, "%s: shape too large", name);
        count *= h->shape[i];
    }
    size_t need = (size_t)count * item, have = len - data_off;
    char sbuf[160];
    if (have < need)
        return fail(err, err_len,
                    "%s: truncated: shape %s %s needs %zu data bytes, the file has %zu", name,
                    npy_shape_str(h->shape, h->ndim, sbuf, sizeof sbuf), npy_dtype_name(dt), need,
                    have);
    if (have > need)
        return fail(err, err_len,
                    "%s: %zu bytes after the data of shape %s %s (%zu bytes); expected none",
                    name, have - need, npy_shape_str(h->shape, h->ndim, sbuf, sizeof sbuf),
                    npy_dtype_name(dt), need);
    void *data = malloc(need ? need : 1);
    if (!data) return fail(err, err_len, "%s: out of memory for %zu bytes", name, need);
    memcpy(data, buf + data_off, need);
    out->dtype = dt;
    out->ndim = h->ndim;
    memcpy(out->shape, h->shape, sizeof(int64_t) * (size_t)h->ndim);
    out->count = count;
    out->data = data;
    return 0;
}

int npy_parse(const char *name, const uint8_t *buf, size_t len, npy_array *out, char *err,
              size_t err_len) {
    memset(out, 0, sizeof *out);
    size_t header_off = 0, header_len = 0;
    if (parse_preamble(name, buf, len, &header_off, &header_len, err, err_len) != 0) return -1;
    cursor c = {(const char *)buf + header_off, (const char *)buf + header_off + header_len};
    npy_header h;
    if (parse_dict(&c, name, &h, err, err_len) != 0) return -1;
    return parse_data(name, &h, buf, len, header_off + header_len, out, err, err_len);
}

/* What a path that is not a regular file is, for the message. */
static const char *file_kind(mode_t mode) {
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    return "not a regular file";
}

/* The whole of path into a fresh buffer (*buf_out, at least 1 byte; the caller frees it).
 * Only a regular file is read: a directory, a FIFO or a device is refused before anything is
 * read or allocated (O_NONBLOCK: opening a FIFO does not wait for a writer), and so is a file
 * over NPY_FILE_MAX bytes. */
static int read_file(const char *path, uint8_t **buf_out, size_t *len_out, char *err,
                     size_t err_len) {
    assert(path && buf_out && len_out);
    *buf_out = NULL;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return fail(err, err_len, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    int rc = -1;
    if (fstat(fd, &st) != 0) fail(err, err_len, "%s: cannot stat: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        fail(err, err_len, "%s: %s, not a regular file; expected a .npy file", path,
             file_kind(st.st_mode));
    else if ((uint64_t)st.st_size > NPY_FILE_MAX)
        fail(err, err_len, "%s: %lld bytes; expected at most %llu (1 TiB)", path,
             (long long)st.st_size, (unsigned long long)NPY_FILE_MAX);
    else rc = 0;
    size_t len = rc == 0 ? (size_t)st.st_size : 0, got = 0;
    uint8_t *buf = rc == 0 ? malloc(len ? len : 1) : NULL;
    if (rc == 0 && !buf) rc = fail(err, err_len, "%s: out of memory reading %zu bytes", path, len);
    while (rc == 0 && got < len) {
        ssize_t r = read(fd, buf + got, len - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) rc = fail(err, err_len, "%s: read error%s%s", path, r < 0 ? ": " : "",
                              r < 0 ? strerror(errno) : " (the file shrank while read)");
        else got += (size_t)r;
    }
    close(fd);
    if (rc != 0) {
        free(buf);
        return -1;
    }
    *buf_out = buf;
    *len_out = len;
    return 0;
}

int npy_read(const char *path, npy_array *out, char *err, size_t err_len) {
    memset(out, 0, sizeof *out);
    uint8_t *buf;
    size_t len;
    if (read_file(path, &buf, &len, err, err_len) != 0) return -1;
    int rc = npy_parse(path, buf, len, out, err, err_len);
    free(buf);
    return rc;
}

int npy_read_descr(const char *path, char *descr, size_t descr_len, char *err, size_t err_len) {
    assert(descr && descr_len > 0);
    descr[0] = 0;
    uint8_t *buf;
    size_t len, header_off = 0, header_len = 0;
    if (read_file(path, &buf, &len, err, err_len) != 0) return -1;
    int rc = parse_preamble(path, buf, len, &header_off, &header_len, err, err_len);
    npy_header h;
    cursor c = {(const char *)buf + header_off, (const char *)buf + header_off + header_len};
    if (rc == 0) rc = parse_dict(&c, path, &h, err, err_len);
    if (rc == 0) snprintf(descr, descr_len, "%s", h.descr);
    free(buf);
    return rc;
}

int npy_write(const char *path, npy_dtype dt, int32_t ndim, const int64_t *shape,
              const void *data, char *err, size_t err_len) {
    if (ndim < 0 || ndim > NPY_DIMS_MAX)
        return fail(err, err_len, "%s: cannot write %d dimensions", path, ndim);
    char dict[512];
    size_t n = (size_t)snprintf(dict, sizeof dict,
                                "{'descr': '%s', 'fortran_order': False, 'shape': (",
                                npy_dtype_descr(dt));
    int64_t count = 1;
    for (int32_t i = 0; i < ndim; i++) {
        n += (size_t)snprintf(dict + n, sizeof dict - n, "%lld,%s", (long long)shape[i],
                              i + 1 < ndim ? " " : "");
        count *= shape[i];
    }
    /* numpy writes "(5,)" for one dimension and "(3, 4)" for more: drop the trailing comma
     * after the last of several dimensions, as it does. */
    if (ndim > 1 && dict[n - 1] == ',') n--;
    n += (size_t)snprintf(dict + n, sizeof dict - n, "), }");
    /* Pad so the data starts on a 64-byte boundary, header ending in '\n' (numpy >= 1.9).
     * The dict is at most 512 bytes, so version 1.0 (a 16-bit header length) always fits. */
    size_t pre = 10, total = pre + n + 1;
    size_t padded = (total + 63) / 64 * 64;
    size_t header_len = padded - pre;
    uint8_t head[640];
    memcpy(head, k_magic, 6);
    head[6] = 1;
    head[7] = 0;
    head[8] = (uint8_t)(header_len & 0xff);
    head[9] = (uint8_t)(header_len >> 8 & 0xff);
    memcpy(head + pre, dict, n);
    memset(head + pre + n, ' ', header_len - n - 1);
    head[padded - 1] = '\n';
    FILE *f = fopen(path, "wb");
    if (!f) return fail(err, err_len, "%s: cannot create: %s", path, strerror(errno));
    size_t bytes = (size_t)count * npy_dtype_size(dt);
    int ok = fwrite(head, 1, padded, f) == padded &&
             (bytes == 0 || fwrite(data, 1, bytes, f) == bytes);
    if (fclose(f) != 0) ok = 0;
    if (!ok) return fail(err, err_len, "%s: write error: %s", path, strerror(errno));
    return 0;
}

void npy_free(npy_array *a) {
    if (!a) return;
    free(a->data);
    memset(a, 0, sizeof *a);
}

int npy_expect(const npy_array *a, const char *path, const char *what, npy_dtype dt,
               int32_t ndim, const int64_t *shape, char *err, size_t err_len) {
    int ok = a->dtype == dt && a->ndim == ndim;
    for (int32_t i = 0; ok && i < ndim; i++)
        if (shape[i] >= 0 && a->shape[i] != shape[i]) ok = 0;
    if (ok) return 0;
    char want[160], got[160];
    npy_shape_str(shape, ndim, want, sizeof want);
    npy_shape_str(a->shape, a->ndim, got, sizeof got);
    return fail(err, err_len, "%s: expected %s: %s %s; got %s %s", path, what,
                npy_dtype_name(dt), want, npy_dtype_name(a->dtype), got);
}
