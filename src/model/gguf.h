/*
 * gguf.h: reading and writing GGUF files (versions 2 and 3).
 *
 * Reading: kvp_gguf_parse() validates a whole GGUF image held in memory (usually a
 * read-only mmap made by kvp_gguf_open()) and builds an index of its metadata and tensors.
 * Every field is checked against the buffer size before it is read: magic, version, counts,
 * string and array lengths, value types, tensor dimensions and types, offsets, alignment
 * and each tensor's byte size against the file size. Any violation returns KVP_EFORMAT with
 * a message naming the field and offset; nothing is read out of bounds. Strings in the index
 * point into the image (they are not NUL-terminated: use the length).
 *
 * Writing: kvp_gguf_writer collects metadata and tensors in memory and writes a GGUF v3 file
 * with kvp_gguf_writer_save(), to a temporary name that is renamed into place.
 */
#ifndef KVP_GGUF_H
#define KVP_GGUF_H

#include <stddef.h>
#include <stdint.h>

enum {
    KVP_GGUF_UINT8 = 0, KVP_GGUF_INT8 = 1, KVP_GGUF_UINT16 = 2, KVP_GGUF_INT16 = 3,
    KVP_GGUF_UINT32 = 4, KVP_GGUF_INT32 = 5, KVP_GGUF_FLOAT32 = 6, KVP_GGUF_BOOL = 7,
    KVP_GGUF_STRING = 8, KVP_GGUF_ARRAY = 9, KVP_GGUF_UINT64 = 10, KVP_GGUF_INT64 = 11,
    KVP_GGUF_FLOAT64 = 12, KVP_GGUF_NTYPES = 13
};

typedef struct kvp_gguf_str {
    const char *s; /* points into the image; not NUL-terminated */
    uint64_t len;
} kvp_gguf_str;

typedef struct kvp_gguf_kv {
    kvp_gguf_str key;
    uint32_t type;            /* KVP_GGUF_* */
    union {
        uint64_t u;           /* unsigned integers and bool */
        int64_t i;            /* signed integers */
        double f;             /* FLOAT32 and FLOAT64 */
        kvp_gguf_str str;
    } v;
    /* For ARRAY: element type, count, and the elements. Numeric arrays: `data` points to
     * n packed little-endian elements in the image. String arrays: `strs` is an index of n
     * strings allocated by the parser. Nested arrays are rejected as unsupported. */
    uint32_t arr_type;
    uint64_t arr_n;
    const void *data;
    kvp_gguf_str *strs;
} kvp_gguf_kv;

typedef struct kvp_gguf_tensor {
    kvp_gguf_str name;
    uint32_t n_dims;          /* 1..4 */
    int64_t ne[4];            /* ne[0] is the row length (contiguous); unused dims are 1 */
    uint32_t type;            /* KVP_TYPE_* */
    uint64_t offset;          /* relative to the data section */
    uint64_t nbytes;
    const void *data;         /* points into the image */
} kvp_gguf_tensor;

typedef struct kvp_gguf {
    uint32_t version;
    uint64_t n_kv, n_tensors;
    kvp_gguf_kv *kv;
    kvp_gguf_tensor *tensors;
    uint64_t alignment;       /* general.alignment or 32 */
    uint64_t data_offset;     /* start of the tensor data section in the image */
    const uint8_t *image;
    size_t size;
    void *map;                /* set by kvp_gguf_open: the mmap to release */
} kvp_gguf;

/* Parses an image of `size` bytes. The image must outlive the returned index. */
int kvp_gguf_parse(const void *image, size_t size, kvp_gguf **out);
/* Maps a file read-only and parses it; errors are prefixed with the path. */
int kvp_gguf_open(const char *path, kvp_gguf **out);
void kvp_gguf_close(kvp_gguf *g); /* frees the index and unmaps; accepts NULL */

const kvp_gguf_kv *kvp_gguf_find(const kvp_gguf *g, const char *key);
const kvp_gguf_tensor *kvp_gguf_find_tensor(const kvp_gguf *g, const char *name);

/* Typed getters. Integer getters accept any integer type whose value fits; float getters
 * accept FLOAT32 and FLOAT64. Return KVP_ENOTFOUND when the key is absent and KVP_EFORMAT
 * (with a message) when its type or value does not fit. */
int kvp_gguf_get_u32(const kvp_gguf *g, const char *key, uint32_t *out);
int kvp_gguf_get_f32(const kvp_gguf *g, const char *key, float *out);
int kvp_gguf_get_bool(const kvp_gguf *g, const char *key, int *out);
int kvp_gguf_get_str(const kvp_gguf *g, const char *key, kvp_gguf_str *out);
/* An array of the given element type (KVP_GGUF_STRING for string arrays). */
int kvp_gguf_get_arr(const kvp_gguf *g, const char *key, uint32_t elem_type,
                     const kvp_gguf_kv **out);

/* ---- writer ---- */
typedef struct kvp_gguf_writer kvp_gguf_writer;

int kvp_gguf_writer_new(kvp_gguf_writer **out);
void kvp_gguf_writer_free(kvp_gguf_writer *w);
int kvp_gguf_writer_set_u32(kvp_gguf_writer *w, const char *key, uint32_t v);
int kvp_gguf_writer_set_i32(kvp_gguf_writer *w, const char *key, int32_t v);
int kvp_gguf_writer_set_f32(kvp_gguf_writer *w, const char *key, float v);
int kvp_gguf_writer_set_bool(kvp_gguf_writer *w, const char *key, int v);
int kvp_gguf_writer_set_str(kvp_gguf_writer *w, const char *key, const char *v);
/* Arrays: elem_type is a numeric KVP_GGUF_* type (data holds n packed elements) or
 * KVP_GGUF_STRING (data is a const char *const[n] of NUL-terminated strings). */
int kvp_gguf_writer_set_arr(kvp_gguf_writer *w, const char *key, uint32_t elem_type,
                            const void *data, uint64_t n);
/* Adds a tensor; `data` (nbytes = the type's row size x rows) is copied. */
int kvp_gguf_writer_add_tensor(kvp_gguf_writer *w, const char *name, uint32_t type,
                               int n_dims, const int64_t *ne, const void *data);
/* Serializes to a malloc'ed buffer (caller frees): for tests that corrupt images. */
int kvp_gguf_writer_to_buffer(const kvp_gguf_writer *w, void **buf, size_t *size);
/* Writes PATH.tmp, fsyncs it and renames it to PATH. */
int kvp_gguf_writer_save(const kvp_gguf_writer *w, const char *path);

#endif
