/*
 * gguf.c: the GGUF (v2, v3) reader and the GGUF v3 writer.
 *
 * The reader treats every image as hostile. A cursor (`rd`) walks the image and every read
 * goes through rd_need(), which checks the remaining byte count first; counts are checked
 * against the bytes that remain before anything is allocated for them; every product is
 * checked for overflow before it is formed. Errors name the item, the field and its byte
 * offset. Multi-byte fields are little-endian and unaligned, so they are read with memcpy
 * (kvpack only runs on little-endian hosts).
 *
 * The writer keeps each metadata value serialized in a small byte buffer and each tensor's
 * data in a private copy; it writes the image through a `sink` that is either a memory
 * buffer of the exact size or a FILE, so saving a large model streams it to disk.
 */
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "model/gguf.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gguf.c reads and writes little-endian fields with memcpy: a little-endian host is needed"
#endif

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_KEY 65535          /* the GGUF specification's limit on key length */
#define GGUF_MAX_NAME 65535         /* our limit on tensor name length */
#define GGUF_HEADER_BYTES 24        /* magic, version, n_tensors, n_kv */
#define GGUF_MIN_KV_BYTES 14        /* key length, a 1-byte key, value type, a 1-byte value */
#define GGUF_MIN_TENSOR_BYTES 33    /* name length, 1-byte name, n_dims, ne[0], type, offset */

static const char *const gguf_type_names[KVP_GGUF_NTYPES] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool",
    "string", "array", "uint64", "int64", "float64",
};

/* Returns the name of a GGUF value type, or "unknown" for a number that is none. */
static const char *type_name(uint32_t type) {
    return type < KVP_GGUF_NTYPES ? gguf_type_names[type] : "unknown";
}

/* Returns the size in bytes of a scalar GGUF value type, or 0 for STRING, ARRAY and any
 * number that is no type. */
static size_t scalar_size(uint32_t type) {
    switch (type) {
    case KVP_GGUF_UINT8: case KVP_GGUF_INT8: case KVP_GGUF_BOOL: return 1;
    case KVP_GGUF_UINT16: case KVP_GGUF_INT16: return 2;
    case KVP_GGUF_UINT32: case KVP_GGUF_INT32: case KVP_GGUF_FLOAT32: return 4;
    case KVP_GGUF_UINT64: case KVP_GGUF_INT64: case KVP_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

/* Writes a printable description of `name` into dst: at most 48 bytes of it, with bytes
 * outside printable ASCII replaced by '?', and "..." when it was cut. */
static void printable(char *dst, size_t cap, kvp_gguf_str name) {
    size_t n = name.len < 48 ? (size_t)name.len : 48, j = 0;
    for (size_t i = 0; i < n && j + 1 < cap; i++) {
        unsigned char c = (unsigned char)name.s[i];
        dst[j++] = (c >= 0x20 && c < 0x7f && c != '\'') ? (char)c : '?';
    }
    dst[j] = '\0';
    if (name.len > n && j + 4 < cap) memcpy(dst + j, "...", 4);
}

/* Returns 1 when x is a nonzero power of two. */
static int is_pow2(uint64_t x) { return x != 0 && (x & (x - 1)) == 0; }

/* ------------------------------------------------------------------------------------
 * Tensor sizes, shared by the reader and the writer.
 * ---------------------------------------------------------------------------------- */

/* Computes the byte size of a tensor of `type` and shape ne[4] (every ne >= 1) into *out.
 * On failure returns `code` with a message that starts with `what`: for an unknown type, a
 * row length that is not a multiple of the block size, or a size that overflows. */
static int tensor_nbytes(int code, const char *what, uint32_t type, const int64_t ne[4],
                         uint64_t *out) {
    const kvp_type_traits *tr = type < KVP_TYPE_COUNT ? kvp_type_traits_get((int)type) : NULL;
    if (!tr || tr->block_size <= 0 || tr->block_bytes == 0)
        return kvp_seterr(code, "%s: unknown tensor type %" PRIu32, what, type);
    if (ne[0] % tr->block_size != 0)
        return kvp_seterr(code, "%s: row length %" PRId64 " is not a multiple of the %s block "
                          "size %d", what, ne[0], tr->name, tr->block_size);
    /* The row size is kvp_type_row_bytes(type, ne[0]), computed here from the same traits
     * so that the product can be checked for overflow before it is formed. */
    uint64_t blocks = (uint64_t)(ne[0] / tr->block_size), bytes;
    if (blocks > UINT64_MAX / tr->block_bytes) goto overflow;
    bytes = blocks * tr->block_bytes;
    for (int d = 1; d < 4; d++) {
        if (bytes > UINT64_MAX / (uint64_t)ne[d]) goto overflow;
        bytes *= (uint64_t)ne[d];
    }
    if (bytes > (uint64_t)SIZE_MAX) goto overflow;
    *out = bytes;
    return KVP_OK;
overflow:
    return kvp_seterr(code, "%s: size of a %s tensor of %" PRId64 " x %" PRId64 " x %" PRId64
                      " x %" PRId64 " values overflows", what, tr->name, ne[0], ne[1], ne[2], ne[3]);
}

/* ------------------------------------------------------------------------------------
 * The reader's cursor.
 * ---------------------------------------------------------------------------------- */

typedef struct rd {
    const uint8_t *p;
    size_t size, pos;
    char what[128]; /* the item being read, for messages: "kv 3 ('general.name')" */
} rd;

/* Sets r->what to "KIND INDEX ('NAME')". */
static void rd_describe(rd *r, const char *kind, uint64_t i, kvp_gguf_str name) {
    char pn[64];
    printable(pn, sizeof pn, name);
    snprintf(r->what, sizeof r->what, "%s %" PRIu64 " ('%s')", kind, i, pn);
}

/* Checks that n more bytes remain for `field`; returns 0 or KVP_EFORMAT with a message. */
static int rd_need(rd *r, uint64_t n, const char *field) {
    if (n <= r->size - r->pos) return KVP_OK;
    return kvp_seterr(KVP_EFORMAT, "%s: %s at offset %zu needs %" PRIu64 " bytes but only %zu "
                      "remain (file size %zu)", r->what, field, r->pos, n, r->size - r->pos,
                      r->size);
}

/* Points *out at the next n bytes and moves past them. */
static int rd_bytes(rd *r, uint64_t n, const char *field, const uint8_t **out) {
    KVP_TRY(rd_need(r, n, field));
    *out = r->p + r->pos;
    r->pos += (size_t)n;
    return KVP_OK;
}

static int rd_u32(rd *r, const char *field, uint32_t *out) {
    const uint8_t *b;
    KVP_TRY(rd_bytes(r, 4, field, &b));
    memcpy(out, b, 4);
    return KVP_OK;
}

static int rd_u64(rd *r, const char *field, uint64_t *out) {
    const uint8_t *b;
    KVP_TRY(rd_bytes(r, 8, field, &b));
    memcpy(out, b, 8);
    return KVP_OK;
}

/* Reads a GGUF string (uint64 length, bytes) of at most max_len bytes. Messages give the
 * offset of the length field, where the string starts. */
static int rd_str(rd *r, const char *field, uint64_t max_len, kvp_gguf_str *out) {
    size_t at = r->pos;
    uint64_t len;
    KVP_TRY(rd_u64(r, field, &len));
    if (len > max_len)
        return kvp_seterr(KVP_EFORMAT, "%s: %s at offset %zu has length %" PRIu64 ", more than "
                          "the limit %" PRIu64, r->what, field, at, len, max_len);
    if (len > r->size - r->pos)
        return kvp_seterr(KVP_EFORMAT, "%s: %s at offset %zu has length %" PRIu64 " but only "
                          "%zu bytes remain (file size %zu)", r->what, field, at, len,
                          r->size - r->pos, r->size);
    out->s = (const char *)(r->p + r->pos);
    out->len = len;
    r->pos += (size_t)len;
    return KVP_OK;
}

/* Checks, before anything is allocated for them, that n items of at least `min_bytes`
 * each can fit in the bytes that remain. `at` is the offset of the count field. */
static int rd_count(rd *r, uint64_t n, uint64_t min_bytes, const char *field, size_t at) {
    if (n <= (r->size - r->pos) / min_bytes) return KVP_OK;
    return kvp_seterr(KVP_EFORMAT, "%s: %s = %" PRIu64 " at offset %zu cannot fit in the %zu "
                      "bytes that remain (each needs at least %" PRIu64 ")", r->what, field, n,
                      at, r->size - r->pos, min_bytes);
}

/* ------------------------------------------------------------------------------------
 * Metadata values.
 * ---------------------------------------------------------------------------------- */

/* Decodes a scalar of `type` (scalar_size(type) bytes at b) into v. Booleans must be 0 or
 * 1; `at` is their offset, for the message. */
static int decode_scalar(rd *r, uint32_t type, const uint8_t *b, size_t at,
                         kvp_gguf_kv *kv) {
    uint64_t raw = 0; /* the value's bytes, zero-extended (the host is little-endian) */
    uint32_t raw32;
    float f32;
    memcpy(&raw, b, scalar_size(type));
    switch (type) {
    case KVP_GGUF_INT8: kv->v.i = (int8_t)(uint8_t)raw; break;
    case KVP_GGUF_INT16: kv->v.i = (int16_t)(uint16_t)raw; break;
    case KVP_GGUF_INT32: kv->v.i = (int32_t)(uint32_t)raw; break;
    case KVP_GGUF_INT64: kv->v.i = (int64_t)raw; break;
    case KVP_GGUF_FLOAT32: raw32 = (uint32_t)raw; memcpy(&f32, &raw32, 4); kv->v.f = f32; break;
    case KVP_GGUF_FLOAT64: memcpy(&kv->v.f, &raw, 8); break;
    case KVP_GGUF_BOOL:
        if (raw > 1)
            return kvp_seterr(KVP_EFORMAT, "%s: bool value %u at offset %zu is not 0 or 1",
                              r->what, (unsigned)raw, at);
        kv->v.u = raw;
        break;
    default: kv->v.u = raw; break; /* the unsigned integers */
    }
    return KVP_OK;
}

/* Reports a value type number that is no GGUF type; it was read just before r->pos. */
static int bad_value_type(rd *r, const char *field, uint32_t type) {
    return kvp_seterr(KVP_EFORMAT, "%s: %s %" PRIu32 " at offset %zu is not a GGUF value type "
                      "(0..%d)", r->what, field, type, r->pos - 4, KVP_GGUF_NTYPES - 1);
}

/* Reads the n strings of a string array into a newly allocated kv->strs (freed by
 * kvp_gguf_close, also on failure). */
static int parse_str_array(rd *r, kvp_gguf_kv *kv, size_t count_at) {
    KVP_TRY(rd_count(r, kv->arr_n, 8, "string array count", count_at));
    if (kv->arr_n == 0) return KVP_OK;
    kv->strs = calloc((size_t)kv->arr_n, sizeof *kv->strs);
    if (!kv->strs)
        return kvp_seterr(KVP_ENOMEM, "%s: out of memory for %" PRIu64 " strings", r->what,
                          kv->arr_n);
    for (uint64_t i = 0; i < kv->arr_n; i++) {
        char field[48];
        snprintf(field, sizeof field, "array string %" PRIu64, i);
        KVP_TRY(rd_str(r, field, UINT64_MAX, &kv->strs[i]));
    }
    return KVP_OK;
}

/* Checks that every element of a bool array is 0 or 1. */
static int check_bool_array(rd *r, const uint8_t *b, uint64_t n) {
    for (uint64_t i = 0; i < n; i++)
        if (b[i] > 1)
            return kvp_seterr(KVP_EFORMAT, "%s: bool array element %" PRIu64 " at offset %zu "
                              "is %u, not 0 or 1", r->what, i,
                              (size_t)(b + i - r->p), b[i]);
    return KVP_OK;
}

/* Reads an array value: element type, count, elements. Nested arrays are unsupported. */
static int parse_array(rd *r, kvp_gguf_kv *kv) {
    KVP_TRY(rd_u32(r, "array element type", &kv->arr_type));
    if (kv->arr_type == KVP_GGUF_ARRAY)
        return kvp_seterr(KVP_EUNSUPPORTED, "%s: nested array (element type at offset %zu) is "
                          "not supported", r->what, r->pos - 4);
    size_t es = scalar_size(kv->arr_type), count_at = r->pos;
    if (es == 0 && kv->arr_type != KVP_GGUF_STRING)
        return bad_value_type(r, "array element type", kv->arr_type);
    KVP_TRY(rd_u64(r, "array count", &kv->arr_n));
    if (kv->arr_type == KVP_GGUF_STRING) return parse_str_array(r, kv, count_at);
    KVP_TRY(rd_count(r, kv->arr_n, es, "array count", count_at));
    const uint8_t *b;
    KVP_TRY(rd_bytes(r, kv->arr_n * es, "array elements", &b));
    kv->data = b;
    return kv->arr_type == KVP_GGUF_BOOL ? check_bool_array(r, b, kv->arr_n) : KVP_OK;
}

/* Reads the value of kv (whose type is already read). */
static int parse_value(rd *r, kvp_gguf_kv *kv) {
    if (kv->type == KVP_GGUF_ARRAY) return parse_array(r, kv);
    if (kv->type == KVP_GGUF_STRING) return rd_str(r, "string value", UINT64_MAX, &kv->v.str);
    size_t n = scalar_size(kv->type), at = r->pos;
    if (n == 0) return bad_value_type(r, "value type", kv->type);
    const uint8_t *b;
    KVP_TRY(rd_bytes(r, n, "value", &b));
    return decode_scalar(r, kv->type, b, at, kv);
}

/* Reads key-value pair number i into kv. */
static int parse_kv(rd *r, uint64_t i, kvp_gguf_kv *kv) {
    snprintf(r->what, sizeof r->what, "kv %" PRIu64, i);
    KVP_TRY(rd_str(r, "key", GGUF_MAX_KEY, &kv->key));
    if (kv->key.len == 0)
        return kvp_seterr(KVP_EFORMAT, "%s: empty key at offset %zu", r->what, r->pos - 8);
    rd_describe(r, "kv", i, kv->key);
    KVP_TRY(rd_u32(r, "value type", &kv->type));
    return parse_value(r, kv);
}

/* Makes room for element n of an array of `size`-byte elements with capacity *cap (growing
 * it by doubling) and zeroes it. Returns the (possibly moved) array, or NULL when out of
 * memory, in which case `arr` is still valid. */
static void *grow(void *arr, uint64_t *cap, uint64_t n, size_t size) {
    if (n >= *cap) {
        uint64_t nc = *cap ? *cap * 2 : 16;
        if (nc > SIZE_MAX / size) return NULL;
        void *p = realloc(arr, (size_t)nc * size);
        if (!p) return NULL;
        arr = p;
        *cap = nc;
    }
    memset((char *)arr + (size_t)n * size, 0, size);
    return arr;
}

/* Reads n_kv pairs. g->n_kv counts the slots in use, so that kvp_gguf_close() can free
 * them after a failure; the array grows as pairs are read, never from the count alone. */
static int parse_kvs(rd *r, kvp_gguf *g, uint64_t n_kv) {
    uint64_t cap = 0;
    for (uint64_t i = 0; i < n_kv; i++) {
        void *p = grow(g->kv, &cap, g->n_kv, sizeof *g->kv);
        if (!p) return kvp_seterr(KVP_ENOMEM, "out of memory reading kv %" PRIu64, i);
        g->kv = p;
        g->n_kv++;
        KVP_TRY(parse_kv(r, i, &g->kv[i]));
    }
    return KVP_OK;
}

/* ------------------------------------------------------------------------------------
 * Header, alignment, tensor infos, data.
 * ---------------------------------------------------------------------------------- */

/* Checks the version field: 2 and 3 are read, everything else is refused. */
static int check_version(uint32_t v) {
    if (v == 2 || v == 3) return KVP_OK;
    if (v == 1)
        return kvp_seterr(KVP_EUNSUPPORTED, "header: GGUF version 1 (at offset 4) is not "
                          "supported; only versions 2 and 3 are");
    if (v == 0x02000000u || v == 0x03000000u)
        return kvp_seterr(KVP_EUNSUPPORTED, "header: big-endian GGUF files are not supported");
    if (v > 3 && v < 0x10000u)
        return kvp_seterr(KVP_EUNSUPPORTED, "header: GGUF version %" PRIu32 " (at offset 4) is "
                          "newer than this reader; only versions 2 and 3 are supported", v);
    return kvp_seterr(KVP_EFORMAT, "header: %" PRIu32 " at offset 4 is not a GGUF version", v);
}

/* Reads magic, version and the two counts, and checks that the counts can fit. */
static int parse_header(rd *r, kvp_gguf *g, uint64_t *n_tensors, uint64_t *n_kv) {
    const uint8_t *magic;
    KVP_TRY(rd_bytes(r, 4, "magic", &magic));
    if (memcmp(magic, "GGUF", 4) != 0)
        return kvp_seterr(KVP_EFORMAT, "header: bad magic %02x %02x %02x %02x at offset 0 "
                          "(a GGUF file starts with \"GGUF\")", magic[0], magic[1], magic[2],
                          magic[3]);
    KVP_TRY(rd_u32(r, "version", &g->version));
    KVP_TRY(check_version(g->version));
    KVP_TRY(rd_u64(r, "n_tensors", n_tensors));
    KVP_TRY(rd_u64(r, "n_kv", n_kv));
    KVP_TRY(rd_count(r, *n_kv, GGUF_MIN_KV_BYTES, "n_kv", 16));
    KVP_TRY(rd_count(r, *n_tensors, GGUF_MIN_TENSOR_BYTES, "n_tensors", 8));
    uint64_t need = *n_kv * GGUF_MIN_KV_BYTES + *n_tensors * GGUF_MIN_TENSOR_BYTES;
    if (need > r->size - r->pos)
        return kvp_seterr(KVP_EFORMAT, "header: %" PRIu64 " kvs and %" PRIu64 " tensors cannot "
                          "fit in the %zu bytes after the header", *n_kv, *n_tensors,
                          r->size - r->pos);
    return KVP_OK;
}

/* Reads general.alignment into g->alignment when present: an integer that is a nonzero
 * power of two. */
static int parse_alignment(kvp_gguf *g) {
    const kvp_gguf_kv *kv = kvp_gguf_find(g, "general.alignment");
    if (!kv) return KVP_OK;
    int is_signed = kv->type == KVP_GGUF_INT8 || kv->type == KVP_GGUF_INT16 ||
                    kv->type == KVP_GGUF_INT32 || kv->type == KVP_GGUF_INT64;
    int is_unsigned = kv->type == KVP_GGUF_UINT8 || kv->type == KVP_GGUF_UINT16 ||
                      kv->type == KVP_GGUF_UINT32 || kv->type == KVP_GGUF_UINT64;
    if (!is_signed && !is_unsigned)
        return kvp_seterr(KVP_EFORMAT, "general.alignment has type %s; expected an integer",
                          type_name(kv->type));
    if (is_signed && kv->v.i <= 0)
        return kvp_seterr(KVP_EFORMAT, "general.alignment = %" PRId64 " is not positive",
                          kv->v.i);
    if (!is_pow2(kv->v.u))
        return kvp_seterr(KVP_EFORMAT, "general.alignment = %" PRIu64 " is not a nonzero power "
                          "of two", kv->v.u);
    g->alignment = kv->v.u;
    return KVP_OK;
}

/* Reads dimension count and dimensions of a tensor; unused dimensions become 1. */
static int parse_dims(rd *r, kvp_gguf_tensor *t) {
    KVP_TRY(rd_u32(r, "n_dims", &t->n_dims));
    if (t->n_dims < 1 || t->n_dims > 4)
        return kvp_seterr(KVP_EFORMAT, "%s: n_dims = %" PRIu32 " at offset %zu is not in 1..4",
                          r->what, t->n_dims, r->pos - 4);
    for (uint32_t d = 0; d < 4; d++) {
        uint64_t ne = 1;
        char field[24];
        snprintf(field, sizeof field, "dimension %" PRIu32, d);
        if (d < t->n_dims) KVP_TRY(rd_u64(r, field, &ne));
        if (ne < 1 || ne > (uint64_t)INT64_MAX)
            return kvp_seterr(KVP_EFORMAT, "%s: dimension %" PRIu32 " = %" PRId64 " at offset "
                              "%zu is not positive", r->what, d, (int64_t)ne, r->pos - 8);
        t->ne[d] = (int64_t)ne;
    }
    return KVP_OK;
}

/* Reads tensor info number i: name, dimensions, type, offset; computes its byte size. */
static int parse_tensor_info(rd *r, uint64_t i, kvp_gguf_tensor *t) {
    snprintf(r->what, sizeof r->what, "tensor %" PRIu64, i);
    KVP_TRY(rd_str(r, "name", GGUF_MAX_NAME, &t->name));
    if (t->name.len == 0)
        return kvp_seterr(KVP_EFORMAT, "%s: empty name at offset %zu", r->what, r->pos - 8);
    rd_describe(r, "tensor", i, t->name);
    KVP_TRY(parse_dims(r, t));
    KVP_TRY(rd_u32(r, "type", &t->type));
    char what[192];
    snprintf(what, sizeof what, "%s: type at offset %zu", r->what, r->pos - 4);
    KVP_TRY(tensor_nbytes(KVP_EFORMAT, what, t->type, t->ne, &t->nbytes));
    return rd_u64(r, "offset", &t->offset);
}

/* Reads n_tensors tensor infos (growing g->tensors as they are read, like parse_kvs). */
static int parse_tensor_infos(rd *r, kvp_gguf *g, uint64_t n_tensors) {
    uint64_t cap = 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        void *p = grow(g->tensors, &cap, g->n_tensors, sizeof *g->tensors);
        if (!p) return kvp_seterr(KVP_ENOMEM, "out of memory reading tensor %" PRIu64, i);
        g->tensors = p;
        g->n_tensors++;
        KVP_TRY(parse_tensor_info(r, i, &g->tensors[i]));
    }
    return KVP_OK;
}

/* Returns a + b, or UINT64_MAX when that overflows (for messages). */
static uint64_t sat_add(uint64_t a, uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

/* Checks that tensor i's data is aligned and lies inside the image, and points at it. */
static int place_tensor(kvp_gguf *g, uint64_t i) {
    kvp_gguf_tensor *t = &g->tensors[i];
    char pn[64];
    printable(pn, sizeof pn, t->name);
    if (t->offset % g->alignment != 0)
        return kvp_seterr(KVP_EFORMAT, "tensor %" PRIu64 " ('%s'): data offset %" PRIu64 " is "
                          "not a multiple of the alignment %" PRIu64, i, pn, t->offset,
                          g->alignment);
    uint64_t avail = g->size - g->data_offset;
    if (t->offset > avail || t->nbytes > avail - t->offset) {
        uint64_t start = sat_add(g->data_offset, t->offset), end = sat_add(start, t->nbytes);
        return kvp_seterr(KVP_EFORMAT, "tensor %" PRIu64 " ('%s'): data [%" PRIu64 ", %" PRIu64
                          ") runs past the end of the file (size %zu)", i, pn, start, end,
                          g->size);
    }
    t->data = g->image + g->data_offset + t->offset;
    return KVP_OK;
}

/* Finds the data section (the tensor infos' end, padded to the alignment) and places every
 * tensor in it. A file without tensors may end before the padding. */
static int place_tensors(rd *r, kvp_gguf *g) {
    uint64_t a = g->alignment, pos = r->pos;
    if (a - 1 > UINT64_MAX - pos)
        return kvp_seterr(KVP_EFORMAT, "alignment %" PRIu64 " is too large", a);
    uint64_t off = (pos + a - 1) / a * a;
    if (off > g->size) {
        if (g->n_tensors > 0)
            return kvp_seterr(KVP_EFORMAT, "data section: the tensor infos end at offset %zu; "
                              "padded to the alignment %" PRIu64 " the data would start at %"
                              PRIu64 ", past the end of the file (size %zu)", r->pos, a, off,
                              g->size);
        off = g->size;
    }
    g->data_offset = off;
    for (uint64_t i = 0; i < g->n_tensors; i++) KVP_TRY(place_tensor(g, i));
    return KVP_OK;
}

/* Orders pointers to strings by length, then bytes. */
static int str_ptr_cmp(const void *a, const void *b) {
    const kvp_gguf_str *x = *(const kvp_gguf_str *const *)a;
    const kvp_gguf_str *y = *(const kvp_gguf_str *const *)b;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->len ? memcmp(x->s, y->s, (size_t)x->len) : 0;
}

/* Checks that no string occurs twice among n strings at `base` + k * stride (the key of
 * every kv, or the name of every tensor), by sorting pointers to them. */
static int check_unique(const void *base, uint64_t n, size_t stride, const char *kind) {
    if (n < 2) return KVP_OK;
    const kvp_gguf_str **v = malloc((size_t)n * sizeof *v);
    if (!v) return kvp_seterr(KVP_ENOMEM, "out of memory checking %s names", kind);
    for (uint64_t k = 0; k < n; k++)
        v[k] = (const kvp_gguf_str *)((const char *)base + (size_t)k * stride);
    qsort(v, (size_t)n, sizeof *v, str_ptr_cmp);
    int rc = KVP_OK;
    for (uint64_t k = 1; k < n && rc == KVP_OK; k++) {
        if (str_ptr_cmp(&v[k - 1], &v[k]) != 0) continue;
        char pn[64];
        printable(pn, sizeof pn, *v[k]);
        rc = kvp_seterr(KVP_EFORMAT, "duplicate %s '%s'", kind, pn);
    }
    free(v);
    return rc;
}

/* Runs every stage of parsing on a fresh index; the caller frees it on failure. */
static int parse_all(rd *r, kvp_gguf *g) {
    uint64_t n_tensors = 0, n_kv = 0;
    KVP_TRY(parse_header(r, g, &n_tensors, &n_kv));
    KVP_TRY(parse_kvs(r, g, n_kv));
    KVP_TRY(check_unique(g->kv, g->n_kv, sizeof *g->kv, "key"));
    KVP_TRY(parse_alignment(g));
    KVP_TRY(parse_tensor_infos(r, g, n_tensors));
    KVP_TRY(check_unique(g->tensors, g->n_tensors, sizeof *g->tensors, "tensor name"));
    return place_tensors(r, g);
}

int kvp_gguf_parse(const void *image, size_t size, kvp_gguf **out) {
    if (!out || (!image && size))
        return kvp_seterr(KVP_EINVAL, "kvp_gguf_parse: NULL argument");
    *out = NULL;
    kvp_gguf *g = calloc(1, sizeof *g);
    if (!g) return kvp_seterr(KVP_ENOMEM, "out of memory for the GGUF index");
    g->image = image;
    g->size = size;
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    rd r = {.p = image, .size = size, .pos = 0, .what = "header"};
    int rc = parse_all(&r, g);
    if (rc < 0) { kvp_gguf_close(g); return rc; }
    *out = g;
    return KVP_OK;
}

/* Maps fd (a file of `size` bytes) read-only into *map. */
static int map_file(int fd, size_t size, void **map) {
    *map = NULL;
    if (size == 0) return KVP_OK; /* mmap refuses 0 bytes; the parser rejects it anyway */
    void *p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) return kvp_seterr(KVP_EIO, "cannot mmap: %s", strerror(errno));
    *map = p;
    return KVP_OK;
}

/* Opens path and maps the whole file; *size receives its size. */
static int open_map(const char *path, void **map, size_t *size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kvp_seterr(KVP_EIO, "cannot open: %s", strerror(errno));
    struct stat st;
    int rc = KVP_OK;
    if (fstat(fd, &st) != 0) rc = kvp_seterr(KVP_EIO, "cannot stat: %s", strerror(errno));
    else if (!S_ISREG(st.st_mode)) rc = kvp_seterr(KVP_EIO, "not a regular file");
    else if ((uint64_t)st.st_size > SIZE_MAX) rc = kvp_seterr(KVP_EIO, "file too large");
    if (rc == KVP_OK) {
        *size = (size_t)st.st_size;
        rc = map_file(fd, *size, map);
    }
    close(fd);
    return rc;
}

int kvp_gguf_open(const char *path, kvp_gguf **out) {
    if (!out || !path) return kvp_seterr(KVP_EINVAL, "kvp_gguf_open: NULL argument");
    *out = NULL;
    void *map = NULL;
    size_t size = 0;
    int rc = open_map(path, &map, &size);
    if (rc == KVP_OK) rc = kvp_gguf_parse(map, size, out);
    if (rc < 0) {
        if (map) munmap(map, size);
        return kvp_errprefix(rc, path);
    }
    (*out)->map = map;
    return KVP_OK;
}

void kvp_gguf_close(kvp_gguf *g) {
    if (!g) return;
    for (uint64_t i = 0; i < g->n_kv; i++) free(g->kv[i].strs);
    free(g->kv);
    free(g->tensors);
    if (g->map) munmap(g->map, g->size);
    free(g);
}

/* ------------------------------------------------------------------------------------
 * Look-ups and typed getters.
 * ---------------------------------------------------------------------------------- */

/* Returns 1 when s holds exactly the NUL-terminated string z. */
static int str_eq(kvp_gguf_str s, const char *z) {
    size_t n = strlen(z);
    return s.len == n && (n == 0 || memcmp(s.s, z, n) == 0);
}

const kvp_gguf_kv *kvp_gguf_find(const kvp_gguf *g, const char *key) {
    if (!g || !key) return NULL;
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (str_eq(g->kv[i].key, key)) return &g->kv[i];
    return NULL;
}

const kvp_gguf_tensor *kvp_gguf_find_tensor(const kvp_gguf *g, const char *name) {
    if (!g || !name) return NULL;
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (str_eq(g->tensors[i].name, name)) return &g->tensors[i];
    return NULL;
}

/* Finds key and checks that its type is `type` (or any type when type is UINT32_MAX). */
static int find_typed(const kvp_gguf *g, const char *key, uint32_t type,
                      const kvp_gguf_kv **out) {
    *out = kvp_gguf_find(g, key);
    if (!*out) return kvp_seterr(KVP_ENOTFOUND, "key '%s' not found", key ? key : "(null)");
    if (type != UINT32_MAX && (*out)->type != type)
        return kvp_seterr(KVP_EFORMAT, "key '%s' has type %s; expected %s", key,
                          type_name((*out)->type), type_name(type));
    return KVP_OK;
}

int kvp_gguf_get_u32(const kvp_gguf *g, const char *key, uint32_t *out) {
    const kvp_gguf_kv *kv;
    KVP_TRY(find_typed(g, key, UINT32_MAX, &kv));
    switch (kv->type) {
    case KVP_GGUF_UINT8: case KVP_GGUF_UINT16: case KVP_GGUF_UINT32: case KVP_GGUF_UINT64:
        if (kv->v.u > UINT32_MAX) break;
        *out = (uint32_t)kv->v.u;
        return KVP_OK;
    case KVP_GGUF_INT8: case KVP_GGUF_INT16: case KVP_GGUF_INT32: case KVP_GGUF_INT64:
        if (kv->v.i < 0 || kv->v.i > (int64_t)UINT32_MAX) break;
        *out = (uint32_t)kv->v.i;
        return KVP_OK;
    default:
        return kvp_seterr(KVP_EFORMAT, "key '%s' has type %s; expected an integer", key,
                          type_name(kv->type));
    }
    return kvp_seterr(KVP_EFORMAT, "key '%s': value does not fit in a uint32", key);
}

int kvp_gguf_get_f32(const kvp_gguf *g, const char *key, float *out) {
    const kvp_gguf_kv *kv;
    KVP_TRY(find_typed(g, key, UINT32_MAX, &kv));
    if (kv->type != KVP_GGUF_FLOAT32 && kv->type != KVP_GGUF_FLOAT64)
        return kvp_seterr(KVP_EFORMAT, "key '%s' has type %s; expected a float", key,
                          type_name(kv->type));
    if (isfinite(kv->v.f) && fabs(kv->v.f) > FLT_MAX)
        return kvp_seterr(KVP_EFORMAT, "key '%s': %g does not fit in a float32", key, kv->v.f);
    *out = (float)kv->v.f;
    return KVP_OK;
}

int kvp_gguf_get_bool(const kvp_gguf *g, const char *key, int *out) {
    const kvp_gguf_kv *kv;
    KVP_TRY(find_typed(g, key, KVP_GGUF_BOOL, &kv));
    *out = kv->v.u != 0;
    return KVP_OK;
}

int kvp_gguf_get_str(const kvp_gguf *g, const char *key, kvp_gguf_str *out) {
    const kvp_gguf_kv *kv;
    KVP_TRY(find_typed(g, key, KVP_GGUF_STRING, &kv));
    *out = kv->v.str;
    return KVP_OK;
}

int kvp_gguf_get_arr(const kvp_gguf *g, const char *key, uint32_t elem_type,
                     const kvp_gguf_kv **out) {
    const kvp_gguf_kv *kv;
    KVP_TRY(find_typed(g, key, KVP_GGUF_ARRAY, &kv));
    if (kv->arr_type != elem_type)
        return kvp_seterr(KVP_EFORMAT, "key '%s' is an array of %s; expected an array of %s",
                          key, type_name(kv->arr_type), type_name(elem_type));
    *out = kv;
    return KVP_OK;
}

/* ------------------------------------------------------------------------------------
 * The writer.
 * ---------------------------------------------------------------------------------- */

typedef struct wbuf { uint8_t *p; size_t n, cap; int oom; } wbuf;

typedef struct wkv {
    char *key;
    wbuf val; /* value type and value, serialized */
} wkv;

typedef struct wtensor {
    char *name;
    uint32_t type, n_dims;
    int64_t ne[4];
    uint64_t nbytes;
    void *data;
} wtensor;

struct kvp_gguf_writer {
    wkv *kv;
    size_t n_kv;
    uint64_t cap_kv;
    wtensor *t;
    size_t n_t;
    uint64_t cap_t;
    uint64_t alignment;
};

/* Appends n bytes to b; on allocation failure sets b->oom and drops the bytes. */
static void wb_put(wbuf *b, const void *p, size_t n) {
    if (b->oom || n == 0) return;
    if (n > b->cap - b->n) {
        size_t nc = b->cap ? b->cap : 64;
        while (nc - b->n < n) {
            if (nc > SIZE_MAX / 2) { b->oom = 1; return; }
            nc *= 2;
        }
        uint8_t *q = realloc(b->p, nc);
        if (!q) { b->oom = 1; return; }
        b->p = q;
        b->cap = nc;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void wb_u32(wbuf *b, uint32_t v) { wb_put(b, &v, 4); }
static void wb_u64(wbuf *b, uint64_t v) { wb_put(b, &v, 8); }

static void wb_str(wbuf *b, const char *s) {
    size_t n = strlen(s);
    wb_u64(b, n);
    wb_put(b, s, n);
}

int kvp_gguf_writer_new(kvp_gguf_writer **out) {
    if (!out) return kvp_seterr(KVP_EINVAL, "kvp_gguf_writer_new: NULL argument");
    *out = calloc(1, sizeof **out);
    if (!*out) return kvp_seterr(KVP_ENOMEM, "out of memory for a GGUF writer");
    (*out)->alignment = GGUF_DEFAULT_ALIGNMENT;
    return KVP_OK;
}

void kvp_gguf_writer_free(kvp_gguf_writer *w) {
    if (!w) return;
    for (size_t i = 0; i < w->n_kv; i++) { free(w->kv[i].key); free(w->kv[i].val.p); }
    for (size_t i = 0; i < w->n_t; i++) { free(w->t[i].name); free(w->t[i].data); }
    free(w->kv);
    free(w->t);
    free(w);
}

/* Checks a key or tensor name given to the writer: non-NULL, 1..GGUF_MAX_KEY bytes. */
static int check_name(const char *s, const char *kind) {
    if (!s) return kvp_seterr(KVP_EINVAL, "GGUF writer: NULL %s", kind);
    size_t n = strlen(s);
    if (n == 0 || n > GGUF_MAX_KEY)
        return kvp_seterr(KVP_EINVAL, "GGUF writer: %s of %zu bytes (must be 1..%d)", kind, n,
                          GGUF_MAX_KEY);
    return KVP_OK;
}

/* Duplicates a NUL-terminated string, or returns NULL. */
static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* Appends a new pair (key, val); takes ownership of val's buffer in every case. */
static int append_kv(kvp_gguf_writer *w, const char *key, wbuf val) {
    uint64_t cap = w->cap_kv;
    void *p = grow(w->kv, &cap, w->n_kv, sizeof *w->kv);
    if (p) { w->kv = p; w->cap_kv = cap; }
    char *k = p ? dup_str(key) : NULL;
    if (!k) {
        free(val.p);
        return kvp_seterr(KVP_ENOMEM, "GGUF writer: out of memory");
    }
    w->kv[w->n_kv].key = k;
    w->kv[w->n_kv].val = val;
    w->n_kv++;
    return KVP_OK;
}

/* Stores the serialized value `val` under key, replacing an earlier value of the same key;
 * takes ownership of val's buffer in every case. */
static int put_kv(kvp_gguf_writer *w, const char *key, wbuf val) {
    int rc = check_name(key, "key");
    if (rc == KVP_OK && val.oom) rc = kvp_seterr(KVP_ENOMEM, "GGUF writer: out of memory");
    if (rc < 0) { free(val.p); return rc; }
    for (size_t i = 0; i < w->n_kv; i++) {
        if (strcmp(w->kv[i].key, key) != 0) continue;
        free(w->kv[i].val.p);
        w->kv[i].val = val;
        return KVP_OK;
    }
    return append_kv(w, key, val);
}

/* Serializes a scalar of `type` (scalar_size(type) bytes at v) and stores it under key. */
static int set_scalar(kvp_gguf_writer *w, const char *key, uint32_t type, const void *v) {
    if (!w) return kvp_seterr(KVP_EINVAL, "GGUF writer: NULL writer");
    if (key && strcmp(key, "general.alignment") == 0 && type != KVP_GGUF_UINT32)
        return kvp_seterr(KVP_EINVAL, "GGUF writer: general.alignment must be a uint32");
    wbuf b = {0};
    wb_u32(&b, type);
    wb_put(&b, v, scalar_size(type));
    return put_kv(w, key, b);
}

int kvp_gguf_writer_set_u32(kvp_gguf_writer *w, const char *key, uint32_t v) {
    int is_align = key && strcmp(key, "general.alignment") == 0;
    if (is_align && !is_pow2(v))
        return kvp_seterr(KVP_EINVAL, "GGUF writer: general.alignment %" PRIu32 " is not a "
                          "nonzero power of two", v);
    KVP_TRY(set_scalar(w, key, KVP_GGUF_UINT32, &v));
    if (is_align) w->alignment = v;
    return KVP_OK;
}

int kvp_gguf_writer_set_i32(kvp_gguf_writer *w, const char *key, int32_t v) {
    return set_scalar(w, key, KVP_GGUF_INT32, &v);
}

int kvp_gguf_writer_set_f32(kvp_gguf_writer *w, const char *key, float v) {
    return set_scalar(w, key, KVP_GGUF_FLOAT32, &v);
}

int kvp_gguf_writer_set_bool(kvp_gguf_writer *w, const char *key, int v) {
    uint8_t b = v != 0;
    return set_scalar(w, key, KVP_GGUF_BOOL, &b);
}

int kvp_gguf_writer_set_str(kvp_gguf_writer *w, const char *key, const char *v) {
    if (!w || !v) return kvp_seterr(KVP_EINVAL, "GGUF writer: NULL argument");
    if (key && strcmp(key, "general.alignment") == 0)
        return kvp_seterr(KVP_EINVAL, "GGUF writer: general.alignment must be a uint32");
    wbuf b = {0};
    wb_u32(&b, KVP_GGUF_STRING);
    wb_str(&b, v);
    return put_kv(w, key, b);
}

/* Serializes the elements of an array (after its header) into b. */
static int put_arr_elems(wbuf *b, uint32_t elem_type, const void *data, uint64_t n) {
    if (elem_type == KVP_GGUF_STRING) {
        const char *const *s = data;
        for (uint64_t i = 0; i < n; i++) {
            if (!s[i]) return kvp_seterr(KVP_EINVAL, "GGUF writer: string %" PRIu64 " is NULL", i);
            wb_str(b, s[i]);
        }
        return KVP_OK;
    }
    size_t es = scalar_size(elem_type);
    if (n > SIZE_MAX / es) return kvp_seterr(KVP_EINVAL, "GGUF writer: array too large");
    if (elem_type == KVP_GGUF_BOOL)
        for (uint64_t i = 0; i < n; i++)
            if (((const uint8_t *)data)[i] > 1)
                return kvp_seterr(KVP_EINVAL, "GGUF writer: bool element %" PRIu64 " is not 0 "
                                  "or 1", i);
    wb_put(b, data, (size_t)n * es);
    return KVP_OK;
}

int kvp_gguf_writer_set_arr(kvp_gguf_writer *w, const char *key, uint32_t elem_type,
                            const void *data, uint64_t n) {
    if (!w || (!data && n)) return kvp_seterr(KVP_EINVAL, "GGUF writer: NULL argument");
    if (elem_type != KVP_GGUF_STRING && scalar_size(elem_type) == 0)
        return kvp_seterr(KVP_EINVAL, "GGUF writer: arrays of %s are not supported",
                          type_name(elem_type));
    if (key && strcmp(key, "general.alignment") == 0)
        return kvp_seterr(KVP_EINVAL, "GGUF writer: general.alignment must be a uint32");
    wbuf b = {0};
    wb_u32(&b, KVP_GGUF_ARRAY);
    wb_u32(&b, elem_type);
    wb_u64(&b, n);
    int rc = put_arr_elems(&b, elem_type, data, n);
    if (rc < 0) { free(b.p); return rc; }
    return put_kv(w, key, b);
}

/* Fills t's shape from n_dims and ne (unused dimensions 1) and checks it. */
static int writer_shape(wtensor *t, const char *name, int n_dims, const int64_t *ne) {
    if (n_dims < 1 || n_dims > 4 || !ne)
        return kvp_seterr(KVP_EINVAL, "GGUF writer: tensor '%s': n_dims %d is not in 1..4",
                          name, n_dims);
    t->n_dims = (uint32_t)n_dims;
    for (int d = 0; d < 4; d++) {
        t->ne[d] = d < n_dims ? ne[d] : 1;
        if (t->ne[d] < 1)
            return kvp_seterr(KVP_EINVAL, "GGUF writer: tensor '%s': dimension %d = %" PRId64
                              " is not positive", name, d, t->ne[d]);
    }
    return KVP_OK;
}

/* Checks that no tensor of the writer is named `name`. */
static int check_new_tensor(const kvp_gguf_writer *w, const char *name) {
    for (size_t i = 0; i < w->n_t; i++)
        if (strcmp(w->t[i].name, name) == 0)
            return kvp_seterr(KVP_EINVAL, "GGUF writer: duplicate tensor '%s'", name);
    return KVP_OK;
}

int kvp_gguf_writer_add_tensor(kvp_gguf_writer *w, const char *name, uint32_t type,
                               int n_dims, const int64_t *ne, const void *data) {
    if (!w || !data) return kvp_seterr(KVP_EINVAL, "GGUF writer: NULL argument");
    KVP_TRY(check_name(name, "tensor name"));
    KVP_TRY(check_new_tensor(w, name));
    wtensor t = {.type = type};
    KVP_TRY(writer_shape(&t, name, n_dims, ne));
    char what[96];
    snprintf(what, sizeof what, "GGUF writer: tensor '%.48s'", name);
    KVP_TRY(tensor_nbytes(KVP_EINVAL, what, type, t.ne, &t.nbytes));
    uint64_t cap = w->cap_t;
    void *p = grow(w->t, &cap, w->n_t, sizeof *w->t);
    if (!p) return kvp_seterr(KVP_ENOMEM, "GGUF writer: out of memory");
    w->t = p;
    w->cap_t = cap;
    t.name = dup_str(name);
    t.data = malloc((size_t)t.nbytes);
    if (!t.name || !t.data) {
        free(t.name); free(t.data);
        return kvp_seterr(KVP_ENOMEM, "GGUF writer: out of memory for tensor '%s'", name);
    }
    memcpy(t.data, data, (size_t)t.nbytes);
    w->t[w->n_t++] = t;
    return KVP_OK;
}

/* ---- serialization ---- */

/* Where the writer's bytes go: a memory buffer of the exact size, or a FILE. */
typedef struct sink { uint8_t *buf; FILE *f; uint64_t pos; int failed; } sink;

static void sink_put(sink *s, const void *p, size_t n) {
    if (s->failed || n == 0) return;
    if (s->f) {
        if (fwrite(p, 1, n, s->f) != n) s->failed = 1;
    } else {
        memcpy(s->buf + s->pos, p, n);
    }
    s->pos += n;
}

static void sink_u32(sink *s, uint32_t v) { sink_put(s, &v, 4); }
static void sink_u64(sink *s, uint64_t v) { sink_put(s, &v, 8); }

/* Writes zero bytes up to the next multiple of align. */
static void sink_pad(sink *s, uint64_t align) {
    static const uint8_t zeros[256];
    while (!s->failed && s->pos % align != 0) {
        uint64_t n = align - s->pos % align;
        sink_put(s, zeros, (size_t)KVP_MIN(n, (uint64_t)sizeof zeros));
    }
}

/* Rounds x up to a multiple of a (a power of two). */
static uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }

/* Returns the size of header, metadata and tensor infos (before the padding). */
static uint64_t meta_bytes(const kvp_gguf_writer *w) {
    uint64_t n = GGUF_HEADER_BYTES;
    for (size_t i = 0; i < w->n_kv; i++) n += 8 + strlen(w->kv[i].key) + w->kv[i].val.n;
    for (size_t i = 0; i < w->n_t; i++)
        n += 8 + strlen(w->t[i].name) + 4 + 8 * (uint64_t)w->t[i].n_dims + 4 + 8;
    return n;
}

/* Returns the size of the whole image, or 0 when it would overflow. */
static uint64_t image_bytes(const kvp_gguf_writer *w) {
    uint64_t data = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        data = align_up(data, w->alignment);
        if (w->t[i].nbytes > UINT64_MAX / 2 - data) return 0;
        data += w->t[i].nbytes;
    }
    uint64_t meta = align_up(meta_bytes(w), w->alignment);
    return data > UINT64_MAX / 2 - meta ? 0 : meta + data;
}

/* Writes header, metadata and the tensor infos (with offsets packed at the alignment). */
static void emit_meta(sink *s, const kvp_gguf_writer *w) {
    sink_put(s, "GGUF", 4);
    sink_u32(s, 3);
    sink_u64(s, w->n_t);
    sink_u64(s, w->n_kv);
    for (size_t i = 0; i < w->n_kv; i++) {
        sink_u64(s, strlen(w->kv[i].key));
        sink_put(s, w->kv[i].key, strlen(w->kv[i].key));
        sink_put(s, w->kv[i].val.p, w->kv[i].val.n);
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        off = align_up(off, w->alignment);
        sink_u64(s, strlen(t->name));
        sink_put(s, t->name, strlen(t->name));
        sink_u32(s, t->n_dims);
        for (uint32_t d = 0; d < t->n_dims; d++) sink_u64(s, (uint64_t)t->ne[d]);
        sink_u32(s, t->type);
        sink_u64(s, off);
        off += t->nbytes;
    }
}

/* Writes the whole image: metadata, padding, then each tensor's data, padded between
 * tensors (not after the last one). */
static void emit(sink *s, const kvp_gguf_writer *w) {
    emit_meta(s, w);
    sink_pad(s, w->alignment);
    for (size_t i = 0; i < w->n_t; i++) {
        sink_pad(s, w->alignment);
        sink_put(s, w->t[i].data, (size_t)w->t[i].nbytes);
    }
}

int kvp_gguf_writer_to_buffer(const kvp_gguf_writer *w, void **buf, size_t *size) {
    if (!w || !buf || !size) return kvp_seterr(KVP_EINVAL, "GGUF writer: NULL argument");
    *buf = NULL;
    *size = 0;
    uint64_t n = image_bytes(w);
    if (n == 0 || n > SIZE_MAX) return kvp_seterr(KVP_ENOMEM, "GGUF writer: image too large");
    sink s = {.buf = malloc((size_t)n)};
    if (!s.buf) return kvp_seterr(KVP_ENOMEM, "GGUF writer: out of memory for %" PRIu64
                                  " bytes", n);
    emit(&s, w);
    if (s.pos != n) {
        free(s.buf);
        return kvp_seterr(KVP_EINTERNAL, "GGUF writer: wrote %" PRIu64 " bytes, expected %"
                          PRIu64, s.pos, n);
    }
    *buf = s.buf;
    *size = (size_t)n;
    return KVP_OK;
}

/* Streams the image to an open file, flushes it and syncs it to disk; closes f. */
static int write_file(FILE *f, const kvp_gguf_writer *w, const char *tmp) {
    sink s = {.f = f};
    emit(&s, w);
    int rc = KVP_OK;
    if (s.failed || fflush(f) != 0)
        rc = kvp_seterr(KVP_EIO, "%s: write failed: %s", tmp, strerror(errno));
    else if (fsync(fileno(f)) != 0)
        rc = kvp_seterr(KVP_EIO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (fclose(f) != 0 && rc == KVP_OK)
        rc = kvp_seterr(KVP_EIO, "%s: close failed: %s", tmp, strerror(errno));
    return rc;
}

int kvp_gguf_writer_save(const kvp_gguf_writer *w, const char *path) {
    if (!w || !path) return kvp_seterr(KVP_EINVAL, "GGUF writer: NULL argument");
    if (image_bytes(w) == 0) return kvp_seterr(KVP_EINVAL, "GGUF writer: image too large");
    size_t n = strlen(path);
    char *tmp = malloc(n + 5);
    if (!tmp) return kvp_seterr(KVP_ENOMEM, "GGUF writer: out of memory");
    memcpy(tmp, path, n);
    memcpy(tmp + n, ".tmp", 5);
    FILE *f = fopen(tmp, "wb");
    int rc = f ? write_file(f, w, tmp)
               : kvp_seterr(KVP_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    if (rc == KVP_OK && rename(tmp, path) != 0)
        rc = kvp_seterr(KVP_EIO, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
    if (rc < 0 && f) unlink(tmp);
    free(tmp);
    return rc;
}
