/*
 * test_gguf.c: the GGUF reader and writer.
 *
 * Round trips through the writer, the typed getters, a parse of every truncated prefix of a
 * valid image, bit flips, hand-built hostile images (each must fail with a message naming the
 * field), and the shared real models. Images are parsed from heap copies of their exact size
 * so that AddressSanitizer catches any read past the end.
 */
#include <inttypes.h>
#include <stdint.h>
#include <unistd.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "model/gguf.h"
#include "test.h"

/* ---- helpers ---- */

/* Clears the thread's error message, so a test can see that a failure set a new one. */
static void clear_err(void) { kvp_seterr(KVP_OK, "%s", ""); }

/* 1 when the last failure left a message. */
static int has_msg(void) {
    const char *m = kvp_errmsg();
    return m[0] != '\0' && strcmp(m, "no error message") != 0;
}

/* Parses a heap copy of exactly n bytes of img; *copy must be freed after the index. */
static int parse_copy(const void *img, size_t n, void **copy, kvp_gguf **g) {
    *copy = malloc(n ? n : 1);
    if (n) memcpy(*copy, img, n);
    return kvp_gguf_parse(*copy, n, g);
}

/* 1 when s holds exactly the string z. */
static int str_is(kvp_gguf_str s, const char *z) {
    return s.len == strlen(z) && memcmp(s.s, z, s.len) == 0;
}

/* A growable byte buffer for hand-built images. */
typedef struct tb { uint8_t *p; size_t n, cap; } tb;

static void tb_put(tb *b, const void *p, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}
static void tb_u8(tb *b, uint8_t v) { tb_put(b, &v, 1); }
static void tb_u32(tb *b, uint32_t v) { tb_put(b, &v, 4); }
static void tb_u64(tb *b, uint64_t v) { tb_put(b, &v, 8); }
static void tb_str(tb *b, const char *s) { tb_u64(b, strlen(s)); tb_put(b, s, strlen(s)); }
static void tb_hdr(tb *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    tb_put(b, "GGUF", 4);
    tb_u32(b, version);
    tb_u64(b, n_tensors);
    tb_u64(b, n_kv);
}
static void tb_kv_u32(tb *b, const char *key, uint32_t v) {
    tb_str(b, key); tb_u32(b, KVP_GGUF_UINT32); tb_u32(b, v);
}
static void tb_kv_str(tb *b, const char *key, const char *v) {
    tb_str(b, key); tb_u32(b, KVP_GGUF_STRING); tb_str(b, v);
}
static void tb_tensor(tb *b, const char *name, uint32_t n_dims, const uint64_t *ne,
                      uint32_t type, uint64_t offset) {
    tb_str(b, name);
    tb_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) tb_u64(b, ne[d]);
    tb_u32(b, type);
    tb_u64(b, offset);
}
/* Pads with zeros to a multiple of align, then appends n data bytes (0x11). */
static void tb_data(tb *b, size_t align, size_t n) {
    while (b->n % align) tb_u8(b, 0);
    for (size_t i = 0; i < n; i++) tb_u8(b, 0x11);
}

/* Parses b and checks that it fails with `code` (any negative code when code is 0), a
 * message containing `substr`, and no index. Reports the case name on failure. */
#define EXPECT_FAIL(b, code, substr) do {                                              \
        void *cp_; kvp_gguf *g_ = (kvp_gguf *)1;                                        \
        clear_err();                                                                    \
        int rc_ = parse_copy((b)->p, (b)->n, &cp_, &g_);                                \
        int null_ = g_ == NULL;                                                         \
        if (rc_ == 0) kvp_gguf_close(g_);                                               \
        free(cp_); free((b)->p); memset((b), 0, sizeof *(b));                           \
        CHECKF(rc_ < 0 && ((code) == 0 || rc_ == (code)), "rc %d, expected %d (%s)",   \
               rc_, (code), kvp_errmsg());                                              \
        CHECKF(null_, "index set on failure");                                          \
        CHECKF(has_msg() && strstr(kvp_errmsg(), (substr)),                             \
               "message '%s' lacks '%s'", kvp_errmsg(), (substr));                      \
    } while (0)

/* Builds the smallest valid image with one F32 tensor "w" of 8 values. */
static void tb_minimal(tb *b) {
    const uint64_t ne[1] = {8};
    tb_hdr(b, 3, 1, 1);
    tb_kv_str(b, "general.architecture", "llama");
    tb_tensor(b, "w", 1, ne, KVP_TYPE_F32, 0);
    tb_data(b, 32, 32);
}

/* Fills n bytes with a deterministic pattern. */
static void fill(void *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++) ((uint8_t *)p)[i] = (uint8_t)(i * 131u + seed * 7u + 1u);
}

/* A writer with metadata of several kinds and four tensors (F32, F16, Q8_0, Q4_0). */
static int make_small_writer(kvp_gguf_writer **out) {
    kvp_gguf_writer *w;
    KVP_TRY(kvp_gguf_writer_new(&w));
    static uint8_t q8[2 * 34], q4[4 * 18], f16[6 * 2];
    static float f32[5] = {1.0f, -2.5f, 3.25f, 0.0f, 1e-3f};
    fill(q8, sizeof q8, 1); fill(q4, sizeof q4, 2); fill(f16, sizeof f16, 3);
    const int32_t ia[3] = {-1, 0, 7};
    const char *sa[3] = {"<s>", "", "hello"};
    int rc = kvp_gguf_writer_set_str(w, "general.architecture", "llama");
    if (!rc) rc = kvp_gguf_writer_set_u32(w, "llama.embedding_length", 64);
    if (!rc) rc = kvp_gguf_writer_set_f32(w, "eps", 1e-5f);
    if (!rc) rc = kvp_gguf_writer_set_bool(w, "flag", 1);
    if (!rc) rc = kvp_gguf_writer_set_arr(w, "ints", KVP_GGUF_INT32, ia, 3);
    if (!rc) rc = kvp_gguf_writer_set_arr(w, "strs", KVP_GGUF_STRING, sa, 3);
    if (!rc) rc = kvp_gguf_writer_add_tensor(w, "a.f32", KVP_TYPE_F32, 1, (int64_t[]){5}, f32);
    if (!rc) rc = kvp_gguf_writer_add_tensor(w, "b.f16", KVP_TYPE_F16, 2, (int64_t[]){3, 2}, f16);
    if (!rc) rc = kvp_gguf_writer_add_tensor(w, "c.q8", KVP_TYPE_Q8_0, 2, (int64_t[]){32, 2}, q8);
    if (!rc) rc = kvp_gguf_writer_add_tensor(w, "d.q4", KVP_TYPE_Q4_0, 3,
                                             (int64_t[]){64, 1, 2}, q4);
    if (rc) { kvp_gguf_writer_free(w); return rc; }
    *out = w;
    return KVP_OK;
}

/* ---- round trips ---- */

/* Every numeric array element type, strings and scalars survive writer -> parser. */
TEST(gguf_roundtrip_values) {
    kvp_gguf_writer *w;
    CHECK_OK(kvp_gguf_writer_new(&w));
    const uint8_t u8[3] = {0, 200, 255};
    const int8_t i8[3] = {-128, 0, 127};
    const uint16_t u16[2] = {1, 65535};
    const int16_t i16[2] = {-32768, 32767};
    const uint32_t u32[2] = {0, 4000000000u};
    const int32_t i32[2] = {INT32_MIN, 5};
    const float f32[2] = {1.5f, -0.0f};
    const uint8_t bools[3] = {1, 0, 1};
    const uint64_t u64[2] = {UINT64_MAX, 3};
    const int64_t i64[2] = {INT64_MIN, -9};
    const double f64[2] = {3.141592653589793, -1e300};
    const char *strs[4] = {"a", "", "ünïcode", "the end"};
    const struct { const char *key; uint32_t t; const void *d; uint64_t n; size_t es; } arrs[] = {
        {"a.u8", KVP_GGUF_UINT8, u8, 3, 1}, {"a.i8", KVP_GGUF_INT8, i8, 3, 1},
        {"a.u16", KVP_GGUF_UINT16, u16, 2, 2}, {"a.i16", KVP_GGUF_INT16, i16, 2, 2},
        {"a.u32", KVP_GGUF_UINT32, u32, 2, 4}, {"a.i32", KVP_GGUF_INT32, i32, 2, 4},
        {"a.f32", KVP_GGUF_FLOAT32, f32, 2, 4}, {"a.bool", KVP_GGUF_BOOL, bools, 3, 1},
        {"a.u64", KVP_GGUF_UINT64, u64, 2, 8}, {"a.i64", KVP_GGUF_INT64, i64, 2, 8},
        {"a.f64", KVP_GGUF_FLOAT64, f64, 2, 8}, {"a.empty", KVP_GGUF_UINT32, NULL, 0, 4},
    };
    for (size_t k = 0; k < KVP_ARRAY_LEN(arrs); k++)
        CHECK_OK(kvp_gguf_writer_set_arr(w, arrs[k].key, arrs[k].t, arrs[k].d, arrs[k].n));
    CHECK_OK(kvp_gguf_writer_set_arr(w, "a.str", KVP_GGUF_STRING, strs, 4));
    CHECK_OK(kvp_gguf_writer_set_u32(w, "s.u32", 4000000000u));
    CHECK_OK(kvp_gguf_writer_set_i32(w, "s.i32", -123456));
    CHECK_OK(kvp_gguf_writer_set_f32(w, "s.f32", 0.1f));
    CHECK_OK(kvp_gguf_writer_set_bool(w, "s.bool", 7));
    CHECK_OK(kvp_gguf_writer_set_str(w, "s.str", "hello, world"));
    CHECK_OK(kvp_gguf_writer_set_str(w, "s.empty", ""));
    void *buf, *cp;
    size_t n;
    CHECK_OK(kvp_gguf_writer_to_buffer(w, &buf, &n));
    kvp_gguf_writer_free(w);
    kvp_gguf *g = NULL;
    int rc = parse_copy(buf, n, &cp, &g);
    free(buf);
    CHECKF(rc == 0, "parse: %s", kvp_errmsg());
    CHECK(g->version == 3 && g->n_tensors == 0 && g->alignment == 32);
    CHECK(g->n_kv == KVP_ARRAY_LEN(arrs) + 7);
    for (size_t k = 0; k < KVP_ARRAY_LEN(arrs) && !kvt_failed(); k++) {
        const kvp_gguf_kv *kv = NULL;
        CHECKF(kvp_gguf_get_arr(g, arrs[k].key, arrs[k].t, &kv) == 0, "%s", kvp_errmsg());
        CHECK(kv->arr_n == arrs[k].n && kv->strs == NULL);
        CHECK(arrs[k].n == 0 || memcmp(kv->data, arrs[k].d, arrs[k].n * arrs[k].es) == 0);
    }
    const kvp_gguf_kv *sk = NULL;
    CHECK_OK(kvp_gguf_get_arr(g, "a.str", KVP_GGUF_STRING, &sk));
    CHECK(sk->arr_n == 4 && sk->strs != NULL);
    for (int k = 0; k < 4; k++) CHECKF(str_is(sk->strs[k], strs[k]), "string %d", k);
    uint32_t u; float f; int b; kvp_gguf_str s;
    CHECK_OK(kvp_gguf_get_u32(g, "s.u32", &u)); CHECK(u == 4000000000u);
    CHECK(kvp_gguf_find(g, "s.i32")->type == KVP_GGUF_INT32);
    CHECK(kvp_gguf_find(g, "s.i32")->v.i == -123456);
    CHECK_OK(kvp_gguf_get_f32(g, "s.f32", &f)); CHECK(f == 0.1f);
    CHECK_OK(kvp_gguf_get_bool(g, "s.bool", &b)); CHECK(b == 1);
    CHECK_OK(kvp_gguf_get_str(g, "s.str", &s)); CHECK(str_is(s, "hello, world"));
    CHECK_OK(kvp_gguf_get_str(g, "s.empty", &s)); CHECK(s.len == 0);
    kvp_gguf_close(g);
    free(cp);
}

/* Scalars of every type the writer cannot write (u8, i8, u16, i16, u64, i64, f64) decode
 * with the right sign extension, and the getters convert or refuse as documented. */
TEST(gguf_roundtrip_scalar_types) {
    tb b = {0};
    tb_hdr(&b, 2, 0, 9);
    tb_str(&b, "u8"); tb_u32(&b, KVP_GGUF_UINT8); tb_u8(&b, 250);
    tb_str(&b, "i8"); tb_u32(&b, KVP_GGUF_INT8); tb_u8(&b, 0xfe);
    tb_str(&b, "u16"); tb_u32(&b, KVP_GGUF_UINT16); tb_put(&b, (uint16_t[]){60000}, 2);
    tb_str(&b, "i16"); tb_u32(&b, KVP_GGUF_INT16); tb_put(&b, (int16_t[]){-300}, 2);
    tb_str(&b, "u64"); tb_u32(&b, KVP_GGUF_UINT64); tb_u64(&b, 1ull << 40);
    tb_str(&b, "u64s"); tb_u32(&b, KVP_GGUF_UINT64); tb_u64(&b, 77);
    tb_str(&b, "i64"); tb_u32(&b, KVP_GGUF_INT64); tb_u64(&b, (uint64_t)-5);
    tb_str(&b, "f64"); tb_u32(&b, KVP_GGUF_FLOAT64); tb_put(&b, (double[]){0.25}, 8);
    tb_str(&b, "f64big"); tb_u32(&b, KVP_GGUF_FLOAT64); tb_put(&b, (double[]){1e300}, 8);
    void *cp;
    kvp_gguf *g = NULL;
    int rc = parse_copy(b.p, b.n, &cp, &g);
    free(b.p);
    CHECKF(rc == 0, "%s", kvp_errmsg());
    CHECK(g->version == 2 && g->data_offset == g->size);
    uint32_t u = 0; float f = 0;
    CHECK_OK(kvp_gguf_get_u32(g, "u8", &u)); CHECK(u == 250);
    CHECK(kvp_gguf_find(g, "i8")->v.i == -2);
    CHECK(kvp_gguf_get_u32(g, "i8", &u) == KVP_EFORMAT && has_msg());
    CHECK_OK(kvp_gguf_get_u32(g, "u16", &u)); CHECK(u == 60000);
    CHECK(kvp_gguf_find(g, "i16")->v.i == -300);
    CHECK(kvp_gguf_get_u32(g, "u64", &u) == KVP_EFORMAT);
    CHECK_OK(kvp_gguf_get_u32(g, "u64s", &u)); CHECK(u == 77);
    CHECK(kvp_gguf_find(g, "i64")->v.i == -5);
    CHECK_OK(kvp_gguf_get_f32(g, "f64", &f)); CHECK(f == 0.25f);
    CHECK(kvp_gguf_get_f32(g, "f64big", &f) == KVP_EFORMAT);
    kvp_gguf_close(g);
    free(cp);
}

/* Tensors of four types keep name, shape, type and bytes; data is aligned and in bounds. */
TEST(gguf_roundtrip_tensors) {
    kvp_gguf_writer *w;
    CHECK_OK(make_small_writer(&w));
    void *buf, *cp;
    size_t n;
    int rc = kvp_gguf_writer_to_buffer(w, &buf, &n);
    kvp_gguf_writer_free(w);
    CHECKF(rc == 0, "%s", kvp_errmsg());
    kvp_gguf *g = NULL;
    rc = parse_copy(buf, n, &cp, &g);
    free(buf);
    CHECKF(rc == 0, "%s", kvp_errmsg());
    static const struct { const char *name; uint32_t type, n_dims; int64_t ne[4]; size_t nb; }
    want[4] = {
        {"a.f32", KVP_TYPE_F32, 1, {5, 1, 1, 1}, 20},
        {"b.f16", KVP_TYPE_F16, 2, {3, 2, 1, 1}, 12},
        {"c.q8", KVP_TYPE_Q8_0, 2, {32, 2, 1, 1}, 68},
        {"d.q4", KVP_TYPE_Q4_0, 3, {64, 1, 2, 1}, 72},
    };
    CHECK(g->n_tensors == 4 && g->data_offset % 32 == 0);
    uint8_t expect[72];
    for (int k = 0; k < 4; k++) {
        const kvp_gguf_tensor *t = kvp_gguf_find_tensor(g, want[k].name);
        CHECKF(t == &g->tensors[k], "tensor %s", want[k].name);
        CHECK(t->type == want[k].type && t->n_dims == want[k].n_dims);
        CHECK(memcmp(t->ne, want[k].ne, sizeof t->ne) == 0);
        CHECK(t->nbytes == want[k].nb && t->offset % 32 == 0);
        CHECK(t->nbytes == kvp_type_row_bytes((int)t->type, t->ne[0]) * (uint64_t)(t->ne[1] * t->ne[2] * t->ne[3]));
        CHECK((const uint8_t *)t->data == g->image + g->data_offset + t->offset);
        CHECK(((const uint8_t *)t->data - g->image) % 32 == 0);
        CHECK((const uint8_t *)t->data + t->nbytes <= g->image + g->size);
        if (k > 0) fill(expect, want[k].nb, (unsigned)(k == 1 ? 3 : k == 2 ? 1 : 2));
        if (k > 0) CHECKF(memcmp(t->data, expect, want[k].nb) == 0, "bytes of %s", want[k].name);
    }
    const float *a = kvp_gguf_find_tensor(g, "a.f32")->data;
    CHECK(a[0] == 1.0f && a[1] == -2.5f && a[4] == 1e-3f);
    /* The last tensor ends the file: nothing is padded after it. */
    const kvp_gguf_tensor *last = &g->tensors[3];
    CHECK(g->data_offset + last->offset + last->nbytes == g->size);
    CHECK(kvp_gguf_find_tensor(g, "nope") == NULL && kvp_gguf_find_tensor(g, "a.f3") == NULL);
    kvp_gguf_close(g);
    free(cp);
}

/* ---- getters ---- */

TEST(gguf_getters_errors) {
    kvp_gguf_writer *w;
    CHECK_OK(make_small_writer(&w));
    void *buf;
    size_t n;
    int rc = kvp_gguf_writer_to_buffer(w, &buf, &n);
    kvp_gguf_writer_free(w);
    CHECK(rc == 0);
    kvp_gguf *g = NULL;
    rc = kvp_gguf_parse(buf, n, &g);
    CHECKF(rc == 0, "%s", kvp_errmsg());
    uint32_t u; float f; int b; kvp_gguf_str s; const kvp_gguf_kv *kv;
    CHECK(kvp_gguf_get_u32(g, "missing", &u) == KVP_ENOTFOUND && strstr(kvp_errmsg(), "missing"));
    CHECK(kvp_gguf_get_f32(g, "missing", &f) == KVP_ENOTFOUND);
    CHECK(kvp_gguf_get_bool(g, "missing", &b) == KVP_ENOTFOUND);
    CHECK(kvp_gguf_get_str(g, "missing", &s) == KVP_ENOTFOUND);
    CHECK(kvp_gguf_get_arr(g, "missing", KVP_GGUF_INT32, &kv) == KVP_ENOTFOUND);
    CHECK(kvp_gguf_find(g, "general") == NULL && kvp_gguf_find(g, "general.architecturex") == NULL);
    clear_err();
    CHECK(kvp_gguf_get_u32(g, "general.architecture", &u) == KVP_EFORMAT);
    CHECK(strstr(kvp_errmsg(), "general.architecture") && strstr(kvp_errmsg(), "string"));
    CHECK(kvp_gguf_get_f32(g, "llama.embedding_length", &f) == KVP_EFORMAT && has_msg());
    CHECK(kvp_gguf_get_bool(g, "eps", &b) == KVP_EFORMAT);
    CHECK(kvp_gguf_get_str(g, "flag", &s) == KVP_EFORMAT);
    CHECK(kvp_gguf_get_u32(g, "flag", &u) == KVP_EFORMAT);
    CHECK(kvp_gguf_get_arr(g, "eps", KVP_GGUF_FLOAT32, &kv) == KVP_EFORMAT);
    CHECK(kvp_gguf_get_arr(g, "ints", KVP_GGUF_UINT32, &kv) == KVP_EFORMAT);
    CHECK(strstr(kvp_errmsg(), "int32") && strstr(kvp_errmsg(), "uint32"));
    CHECK(kvp_gguf_get_arr(g, "strs", KVP_GGUF_INT32, &kv) == KVP_EFORMAT);
    CHECK_OK(kvp_gguf_get_arr(g, "ints", KVP_GGUF_INT32, &kv));
    int32_t third;
    memcpy(&third, (const uint8_t *)kv->data + 8, 4);
    CHECK(kv->arr_n == 3 && third == 7);
    CHECK_OK(kvp_gguf_get_u32(g, "llama.embedding_length", &u)); CHECK(u == 64);
    CHECK_OK(kvp_gguf_get_f32(g, "eps", &f)); CHECK(f == 1e-5f);
    kvp_gguf_close(g);
    free(buf);
    kvp_gguf_close(NULL);
}

/* ---- hostile input ---- */

/* Every proper prefix of a valid image fails cleanly, with a message. */
TEST(gguf_truncation_every_byte) {
    kvp_gguf_writer *w;
    CHECK_OK(make_small_writer(&w));
    void *buf, *cp;
    size_t n;
    int rc = kvp_gguf_writer_to_buffer(w, &buf, &n);
    kvp_gguf_writer_free(w);
    CHECK(rc == 0 && n > 200);
    kvp_gguf *g = NULL;
    rc = parse_copy(buf, n, &cp, &g);
    free(cp);
    kvp_gguf_close(g);
    CHECKF(rc == 0, "the whole image must parse: %s", kvp_errmsg());
    for (size_t len = 0; len < n && !kvt_failed(); len++) {
        g = (kvp_gguf *)1;
        clear_err();
        rc = parse_copy(buf, len, &cp, &g);
        free(cp);
        CHECKF(rc < 0 && g == NULL, "prefix %zu of %zu: rc %d", len, n, rc);
        CHECKF(has_msg(), "prefix %zu: no message", len);
    }
    free(buf);
}

/* Flipping any single byte of a valid image never crashes or reads out of bounds; a
 * failure always comes with a message, a success with tensors inside the image. */
TEST(gguf_byte_flips) {
    kvp_gguf_writer *w;
    CHECK_OK(make_small_writer(&w));
    void *buf;
    size_t n;
    int rc = kvp_gguf_writer_to_buffer(w, &buf, &n);
    kvp_gguf_writer_free(w);
    CHECK(rc == 0);
    static const uint8_t masks[] = {0x01, 0x80, 0xff, 0x40};
    uint8_t *img = malloc(n);
    for (size_t i = 0; i < n && !kvt_failed(); i++) {
        for (size_t m = 0; m < KVP_ARRAY_LEN(masks); m++) {
            memcpy(img, buf, n);
            img[i] ^= masks[m];
            kvp_gguf *g = NULL;
            clear_err();
            rc = kvp_gguf_parse(img, n, &g);
            CHECKF(rc == 0 || has_msg(), "flip at %zu: no message", i);
            for (uint64_t t = 0; g && t < g->n_tensors; t++)
                CHECK((const uint8_t *)g->tensors[t].data + g->tensors[t].nbytes <= img + n);
            kvp_gguf_close(g);
        }
    }
    free(img);
    free(buf);
}

TEST(gguf_corrupt_header) {
    tb b = {0};
    tb_minimal(&b);
    void *cp;
    kvp_gguf *g = NULL;
    int rc = parse_copy(b.p, b.n, &cp, &g);
    CHECKF(rc == 0, "baseline: %s", kvp_errmsg());
    kvp_gguf_close(g);
    free(cp);
    b.p[3] = 'G';
    EXPECT_FAIL(&b, KVP_EFORMAT, "magic");
    tb_hdr(&b, 1, 0, 0);
    EXPECT_FAIL(&b, KVP_EUNSUPPORTED, "version 1");
    tb_hdr(&b, 4, 0, 0);
    EXPECT_FAIL(&b, KVP_EUNSUPPORTED, "version 4");
    tb_hdr(&b, 0, 0, 0);
    EXPECT_FAIL(&b, KVP_EFORMAT, "version");
    tb_hdr(&b, 0x03000000u, 0, 0);
    EXPECT_FAIL(&b, KVP_EUNSUPPORTED, "big-endian");
    const uint64_t huge[] = {1ull << 63, 1ull << 40, UINT64_MAX, 1000};
    for (size_t k = 0; k < KVP_ARRAY_LEN(huge); k++) {
        tb_hdr(&b, 3, huge[k], 0); tb_data(&b, 1, 600);
        EXPECT_FAIL(&b, KVP_EFORMAT, "n_tensors");
        tb_hdr(&b, 3, 0, huge[k]); tb_data(&b, 1, 600);
        EXPECT_FAIL(&b, KVP_EFORMAT, "n_kv");
    }
    tb_hdr(&b, 3, 10, 40); tb_data(&b, 1, 600); /* each fits alone, not both */
    EXPECT_FAIL(&b, KVP_EFORMAT, "cannot fit");
    tb_hdr(&b, 3, 0, 1); /* a pair is promised but none follows */
    EXPECT_FAIL(&b, KVP_EFORMAT, "n_kv");
}

TEST(gguf_corrupt_kv) {
    tb b = {0};
    tb_hdr(&b, 3, 0, 1); tb_u64(&b, 1ull << 62); tb_data(&b, 1, 64);
    EXPECT_FAIL(&b, KVP_EFORMAT, "key");
    tb_hdr(&b, 3, 0, 1); tb_u64(&b, 40); tb_data(&b, 1, 30); /* key runs past the end */
    EXPECT_FAIL(&b, KVP_EFORMAT, "kv 0: key at offset 24");
    tb_hdr(&b, 3, 0, 1); tb_str(&b, ""); tb_u32(&b, KVP_GGUF_UINT8); tb_u8(&b, 1);
    tb_data(&b, 1, 8);
    EXPECT_FAIL(&b, KVP_EFORMAT, "empty key");
    tb_hdr(&b, 3, 0, 1); tb_str(&b, "k"); tb_u32(&b, KVP_GGUF_STRING); tb_u64(&b, 1ull << 63);
    tb_data(&b, 1, 40);
    EXPECT_FAIL(&b, KVP_EFORMAT, "kv 0 ('k'): string value at offset 37");
    tb_hdr(&b, 3, 0, 1); tb_str(&b, "k"); tb_u32(&b, 13); tb_data(&b, 1, 16);
    EXPECT_FAIL(&b, KVP_EFORMAT, "value type 13");
    tb_hdr(&b, 3, 0, 1); tb_str(&b, "k"); tb_u32(&b, 0xffffffffu); tb_data(&b, 1, 16);
    EXPECT_FAIL(&b, KVP_EFORMAT, "value type");
    tb_hdr(&b, 3, 0, 1); tb_str(&b, "k"); tb_u32(&b, KVP_GGUF_BOOL); tb_u8(&b, 2);
    EXPECT_FAIL(&b, KVP_EFORMAT, "bool");
    tb_hdr(&b, 3, 0, 1); tb_str(&b, "k"); tb_u32(&b, KVP_GGUF_UINT64); tb_u32(&b, 7);
    EXPECT_FAIL(&b, KVP_EFORMAT, "value at offset");
    tb_hdr(&b, 3, 0, 2); tb_kv_u32(&b, "dup", 1); tb_kv_u32(&b, "dup", 2);
    EXPECT_FAIL(&b, KVP_EFORMAT, "duplicate key 'dup'");
}

TEST(gguf_corrupt_arrays) {
    tb b = {0};
    const uint64_t counts[] = {1ull << 62, 1ull << 61, UINT64_MAX, 100};
    for (size_t k = 0; k < KVP_ARRAY_LEN(counts); k++) {
        tb_hdr(&b, 3, 0, 1); tb_str(&b, "arr"); tb_u32(&b, KVP_GGUF_ARRAY);
        tb_u32(&b, KVP_GGUF_UINT32); tb_u64(&b, counts[k]); tb_data(&b, 1, 64);
        EXPECT_FAIL(&b, KVP_EFORMAT, "array count");
        tb_hdr(&b, 3, 0, 1); tb_str(&b, "arr"); tb_u32(&b, KVP_GGUF_ARRAY);
        tb_u32(&b, KVP_GGUF_STRING); tb_u64(&b, counts[k]); tb_data(&b, 1, 64);
        EXPECT_FAIL(&b, KVP_EFORMAT, "string array count");
    }
    tb_hdr(&b, 3, 0, 1); tb_str(&b, "arr"); tb_u32(&b, KVP_GGUF_ARRAY);
    tb_u32(&b, KVP_GGUF_STRING); tb_u64(&b, 2); tb_str(&b, "ok"); tb_u64(&b, 1ull << 50);
    tb_data(&b, 1, 8);
    EXPECT_FAIL(&b, KVP_EFORMAT, "array string 1");
    tb_hdr(&b, 3, 0, 1); tb_str(&b, "arr"); tb_u32(&b, KVP_GGUF_ARRAY);
    tb_u32(&b, KVP_GGUF_ARRAY); tb_u32(&b, KVP_GGUF_UINT8); tb_u64(&b, 1); tb_u8(&b, 1);
    EXPECT_FAIL(&b, KVP_EUNSUPPORTED, "nested");
    tb_hdr(&b, 3, 0, 1); tb_str(&b, "arr"); tb_u32(&b, KVP_GGUF_ARRAY);
    tb_u32(&b, 13); tb_u64(&b, 1); tb_u8(&b, 1);
    EXPECT_FAIL(&b, KVP_EFORMAT, "array element type 13");
    tb_hdr(&b, 3, 0, 1); tb_str(&b, "arr"); tb_u32(&b, KVP_GGUF_ARRAY);
    tb_u32(&b, KVP_GGUF_BOOL); tb_u64(&b, 2); tb_u8(&b, 1); tb_u8(&b, 9);
    EXPECT_FAIL(&b, KVP_EFORMAT, "bool array element 1");
}

/* A valid header and metadata followed by one tensor info with the given fields and
 * `data` bytes of data (after padding to 32). */
static void tb_one_tensor(tb *b, uint32_t n_dims, const uint64_t *ne, uint32_t type,
                          uint64_t offset, size_t data) {
    tb_hdr(b, 3, 1, 1);
    tb_kv_str(b, "general.architecture", "llama");
    tb_tensor(b, "blk.0.attn_q.weight", n_dims, ne, type, offset);
    tb_data(b, 32, data);
}

TEST(gguf_corrupt_tensors) {
    tb b = {0};
    const uint64_t ne8[4] = {8, 1, 1, 1}, ne0[1] = {0}, neneg[1] = {(uint64_t)-32};
    const uint64_t nebig[3] = {1ull << 32, 1ull << 32, 1ull << 10};
    const uint64_t nebig2[2] = {1ull << 62, 2};
    tb_one_tensor(&b, 0, ne8, KVP_TYPE_F32, 0, 32);
    EXPECT_FAIL(&b, KVP_EFORMAT, "n_dims = 0");
    tb_one_tensor(&b, 5, (uint64_t[]){8, 1, 1, 1, 1}, KVP_TYPE_F32, 0, 64);
    EXPECT_FAIL(&b, KVP_EFORMAT, "n_dims = 5");
    tb_one_tensor(&b, 1, ne0, KVP_TYPE_F32, 0, 32);
    EXPECT_FAIL(&b, KVP_EFORMAT, "dimension 0 = 0");
    tb_one_tensor(&b, 1, neneg, KVP_TYPE_F32, 0, 32);
    EXPECT_FAIL(&b, KVP_EFORMAT, "dimension 0 = -32");
    tb_one_tensor(&b, 3, nebig, KVP_TYPE_F32, 0, 32);
    EXPECT_FAIL(&b, KVP_EFORMAT, "overflows");
    tb_one_tensor(&b, 2, nebig2, KVP_TYPE_F32, 0, 32);
    EXPECT_FAIL(&b, KVP_EFORMAT, "overflows");
    tb_one_tensor(&b, 1, ne8, 99, 0, 32);
    EXPECT_FAIL(&b, KVP_EFORMAT, "unknown tensor type 99");
    tb_one_tensor(&b, 1, ne8, 4, 0, 32); /* a retired GGML type number */
    EXPECT_FAIL(&b, KVP_EFORMAT, "unknown tensor type 4");
    tb_one_tensor(&b, 1, ne8, 0x80000000u, 0, 32);
    EXPECT_FAIL(&b, KVP_EFORMAT, "unknown tensor type");
    tb_one_tensor(&b, 1, (uint64_t[]){48}, KVP_TYPE_Q8_0, 0, 64);
    EXPECT_FAIL(&b, KVP_EFORMAT, "block size 32");
    tb_one_tensor(&b, 1, ne8, KVP_TYPE_F32, 16, 64);
    EXPECT_FAIL(&b, KVP_EFORMAT, "not a multiple of the alignment 32");
    tb_one_tensor(&b, 1, ne8, KVP_TYPE_F32, 64, 64);
    EXPECT_FAIL(&b, KVP_EFORMAT, "tensor 0 ('blk.0.attn_q.weight'): data [");
    tb_one_tensor(&b, 1, ne8, KVP_TYPE_F32, 1ull << 63, 64);
    EXPECT_FAIL(&b, KVP_EFORMAT, "runs past the end of the file");
    tb_one_tensor(&b, 1, ne8, KVP_TYPE_F32, 0, 31);
    EXPECT_FAIL(&b, KVP_EFORMAT, "runs past the end of the file (size");
    tb_one_tensor(&b, 1, (uint64_t[]){1ull << 40}, KVP_TYPE_F32, 0, 32);
    EXPECT_FAIL(&b, KVP_EFORMAT, "runs past the end of the file");
    tb_hdr(&b, 3, 1, 0); tb_tensor(&b, "w", 1, ne8, KVP_TYPE_F32, 0); /* no data section */
    EXPECT_FAIL(&b, KVP_EFORMAT, "data section");
    tb_hdr(&b, 3, 1, 0); tb_tensor(&b, "", 1, ne8, KVP_TYPE_F32, 0); tb_data(&b, 32, 32);
    EXPECT_FAIL(&b, KVP_EFORMAT, "empty name");
    tb_hdr(&b, 3, 2, 0); tb_tensor(&b, "w", 1, ne8, KVP_TYPE_F32, 0);
    tb_tensor(&b, "w", 1, ne8, KVP_TYPE_F32, 32); tb_data(&b, 32, 64);
    EXPECT_FAIL(&b, KVP_EFORMAT, "duplicate tensor name 'w'");
    tb_hdr(&b, 3, 1, 0); tb_u64(&b, UINT64_MAX - 3); tb_data(&b, 1, 64);
    EXPECT_FAIL(&b, KVP_EFORMAT, "tensor 0: name at offset 24 has length");
}

TEST(gguf_alignment) {
    tb b = {0};
    const uint64_t ne8[1] = {8};
    const uint32_t bad[] = {0, 3, 48, 0xffffffffu};
    for (size_t k = 0; k < KVP_ARRAY_LEN(bad); k++) {
        tb_hdr(&b, 3, 1, 1); tb_kv_u32(&b, "general.alignment", bad[k]);
        tb_tensor(&b, "w", 1, ne8, KVP_TYPE_F32, 0); tb_data(&b, 32, 64);
        EXPECT_FAIL(&b, KVP_EFORMAT, "power of two");
    }
    tb_hdr(&b, 3, 0, 1); tb_kv_str(&b, "general.alignment", "32");
    EXPECT_FAIL(&b, KVP_EFORMAT, "general.alignment has type string");
    tb_hdr(&b, 3, 0, 1);
    tb_str(&b, "general.alignment"); tb_u32(&b, KVP_GGUF_INT32); tb_u32(&b, (uint32_t)-64);
    EXPECT_FAIL(&b, KVP_EFORMAT, "not positive");
    /* 64 is honoured: a tensor at offset 32 is misaligned, one at 64 is fine. */
    tb_hdr(&b, 3, 2, 1); tb_kv_u32(&b, "general.alignment", 64);
    tb_tensor(&b, "a", 1, ne8, KVP_TYPE_F32, 0); tb_tensor(&b, "b", 1, ne8, KVP_TYPE_F32, 32);
    tb_data(&b, 64, 64);
    EXPECT_FAIL(&b, KVP_EFORMAT, "tensor 1 ('b'): data offset 32 is not a multiple of the alignment 64");
    tb_hdr(&b, 3, 2, 1); tb_kv_u32(&b, "general.alignment", 64);
    tb_tensor(&b, "a", 1, ne8, KVP_TYPE_F32, 0); tb_tensor(&b, "b", 1, ne8, KVP_TYPE_F32, 64);
    tb_data(&b, 64, 96);
    void *cp;
    kvp_gguf *g = NULL;
    int rc = parse_copy(b.p, b.n, &cp, &g);
    free(b.p);
    CHECKF(rc == 0, "%s", kvp_errmsg());
    CHECK(g->alignment == 64 && g->data_offset % 64 == 0);
    CHECK(g->tensors[1].data == g->image + g->data_offset + 64);
    kvp_gguf_close(g);
    free(cp);
}

/* ---- writer ---- */

TEST(gguf_writer_rejects_bad_input) {
    kvp_gguf_writer *w;
    CHECK_OK(kvp_gguf_writer_new(&w));
    float data[64] = {0};
    const int64_t ne[5] = {32, 1, 1, 1, 1};
    CHECK(kvp_gguf_writer_add_tensor(w, "t", 99, 1, ne, data) == KVP_EINVAL);
    CHECK(strstr(kvp_errmsg(), "unknown tensor type 99"));
    CHECK(kvp_gguf_writer_add_tensor(w, "t", KVP_TYPE_F32, 0, ne, data) == KVP_EINVAL);
    CHECK(kvp_gguf_writer_add_tensor(w, "t", KVP_TYPE_F32, 5, ne, data) == KVP_EINVAL);
    CHECK(kvp_gguf_writer_add_tensor(w, "t", KVP_TYPE_F32, 1, (int64_t[]){0}, data) == KVP_EINVAL);
    CHECK(kvp_gguf_writer_add_tensor(w, "t", KVP_TYPE_F32, 2, (int64_t[]){4, -1}, data) == KVP_EINVAL);
    CHECK(kvp_gguf_writer_add_tensor(w, "t", KVP_TYPE_Q8_0, 1, (int64_t[]){16}, data) == KVP_EINVAL);
    CHECK(kvp_gguf_writer_add_tensor(w, "", KVP_TYPE_F32, 1, ne, data) == KVP_EINVAL);
    CHECK(kvp_gguf_writer_add_tensor(w, "t", KVP_TYPE_F32, 2,
                                     (int64_t[]){INT64_MAX, INT64_MAX}, data) == KVP_EINVAL);
    CHECK_OK(kvp_gguf_writer_add_tensor(w, "t", KVP_TYPE_F32, 1, ne, data));
    CHECK(kvp_gguf_writer_add_tensor(w, "t", KVP_TYPE_F32, 1, ne, data) == KVP_EINVAL);
    CHECK(strstr(kvp_errmsg(), "duplicate"));
    CHECK(kvp_gguf_writer_set_arr(w, "a", KVP_GGUF_ARRAY, data, 1) == KVP_EINVAL);
    CHECK(kvp_gguf_writer_set_arr(w, "a", 13, data, 1) == KVP_EINVAL);
    CHECK(kvp_gguf_writer_set_arr(w, "a", KVP_GGUF_BOOL, (uint8_t[]){1, 2}, 2) == KVP_EINVAL);
    CHECK(kvp_gguf_writer_set_arr(w, "a", KVP_GGUF_STRING, (const char *[]){"x", NULL}, 2) == KVP_EINVAL);
    CHECK(kvp_gguf_writer_set_u32(w, "general.alignment", 48) == KVP_EINVAL);
    CHECK(kvp_gguf_writer_set_u32(w, "general.alignment", 0) == KVP_EINVAL);
    CHECK(kvp_gguf_writer_set_str(w, "general.alignment", "32") == KVP_EINVAL);
    CHECK(kvp_gguf_writer_set_u32(w, "", 1) == KVP_EINVAL);
    CHECK(kvp_gguf_writer_set_u32(w, NULL, 1) == KVP_EINVAL);
    /* Setting a key twice keeps one pair with the last value. */
    CHECK_OK(kvp_gguf_writer_set_u32(w, "k", 1));
    CHECK_OK(kvp_gguf_writer_set_str(w, "k", "two"));
    void *buf;
    size_t n;
    CHECK_OK(kvp_gguf_writer_to_buffer(w, &buf, &n));
    kvp_gguf_writer_free(w);
    kvp_gguf *g = NULL;
    int rc = kvp_gguf_parse(buf, n, &g);
    CHECKF(rc == 0, "%s", kvp_errmsg());
    kvp_gguf_str s;
    CHECK(g->n_kv == 1 && g->n_tensors == 1);
    CHECK(kvp_gguf_get_str(g, "k", &s) == 0 && str_is(s, "two"));
    kvp_gguf_close(g);
    free(buf);
    kvp_gguf_writer_free(NULL);
}

/* save() writes the file through PATH.tmp; open() maps it; errors carry the path. */
TEST(gguf_save_and_open) {
    char dir[] = "/tmp/kvt_gguf_XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    char path[256], tmp[300];
    snprintf(path, sizeof path, "%s/m.gguf", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    kvp_gguf_writer *w;
    CHECK_OK(make_small_writer(&w));
    CHECK_OK(kvp_gguf_writer_set_u32(w, "general.alignment", 64));
    int rc = kvp_gguf_writer_save(w, path);
    void *buf = NULL;
    size_t n = 0;
    if (rc == 0) rc = kvp_gguf_writer_to_buffer(w, &buf, &n);
    kvp_gguf_writer_free(w);
    CHECKF(rc == 0, "%s", kvp_errmsg());
    CHECK(access(tmp, F_OK) != 0);
    kvp_gguf *g = NULL;
    rc = kvp_gguf_open(path, &g);
    CHECKF(rc == 0, "%s", kvp_errmsg());
    CHECK(g->map != NULL && g->size == n && memcmp(g->image, buf, n) == 0);
    CHECK(g->alignment == 64 && g->data_offset % 64 == 0);
    for (uint64_t t = 0; t < g->n_tensors; t++) CHECK(g->tensors[t].offset % 64 == 0);
    CHECK(kvp_gguf_find_tensor(g, "d.q4")->nbytes == 72);
    kvp_gguf_close(g);
    free(buf);
    /* A truncated file: the message starts with the path. */
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    fwrite("GGUF\3\0\0\0", 1, 8, f);
    fclose(f);
    g = (kvp_gguf *)1;
    CHECK(kvp_gguf_open(path, &g) == KVP_EFORMAT && g == NULL);
    CHECK(strncmp(kvp_errmsg(), path, strlen(path)) == 0 && strstr(kvp_errmsg(), "n_tensors"));
    f = fopen(path, "wb"); /* an empty file */
    CHECK(f != NULL);
    fclose(f);
    CHECK(kvp_gguf_open(path, &g) == KVP_EFORMAT && strstr(kvp_errmsg(), "magic"));
    unlink(path);
    CHECK(kvp_gguf_open(path, &g) == KVP_EIO);
    CHECK(strncmp(kvp_errmsg(), path, strlen(path)) == 0);
    CHECK(kvp_gguf_open(dir, &g) < 0 && has_msg());
    snprintf(tmp, sizeof tmp, "%s/no/such/dir/m.gguf", dir);
    CHECK_OK(kvp_gguf_writer_new(&w));
    CHECK(kvp_gguf_writer_save(w, tmp) == KVP_EIO && strstr(kvp_errmsg(), "cannot create"));
    kvp_gguf_writer_free(w);
    rmdir(dir);
}

/* ---- the shared real models ---- */

/* Opens a shared model and checks architecture, width, token_embd.weight's shape, the
 * vocabulary array and that every tensor lies aligned inside the file. */
static void check_model(const char *file, uint32_t dim, int64_t vocab, uint32_t embd_type) {
    const char *path = kvt_model(file);
    if (kvt_failed()) return;
    kvp_gguf *g = NULL;
    int rc = kvp_gguf_open(path, &g);
    CHECKF(rc == 0, "%s: %s", file, kvp_errmsg());
    kvp_gguf_str arch;
    uint32_t d = 0;
    const kvp_gguf_kv *toks = NULL;
    CHECK(g->version == 3 && g->alignment == 32 && g->data_offset % 32 == 0);
    CHECK_OK(kvp_gguf_get_str(g, "general.architecture", &arch));
    CHECK(str_is(arch, "llama"));
    CHECK_OK(kvp_gguf_get_u32(g, "llama.embedding_length", &d));
    CHECKF(d == dim, "%s: embedding_length %u", file, d);
    CHECK_OK(kvp_gguf_get_arr(g, "tokenizer.ggml.tokens", KVP_GGUF_STRING, &toks));
    CHECK((int64_t)toks->arr_n == vocab && toks->strs[1].len > 0);
    const kvp_gguf_tensor *te = kvp_gguf_find_tensor(g, "token_embd.weight");
    CHECKF(te != NULL, "%s: no token_embd.weight", file);
    CHECK(te->n_dims == 2 && te->ne[0] == dim && te->ne[1] == vocab && te->type == embd_type);
    CHECK(g->n_tensors > 10);
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const kvp_gguf_tensor *t = &g->tensors[i];
        const uint8_t *p = t->data;
        CHECKF(p >= g->image + g->data_offset && p + t->nbytes <= g->image + g->size &&
               (uint64_t)(p - g->image) % 32 == 0, "%s: tensor %" PRIu64, file, i);
        CHECK(t->nbytes > 0 && t->ne[0] > 0);
    }
    kvp_gguf_close(g);
}

TEST(gguf_real_models) {
    check_model("stories260K.gguf", 64, 512, KVP_TYPE_F32);
    if (kvt_failed()) return;
    check_model("sotu-1M.gguf", 128, 1024, KVP_TYPE_F32);
    if (kvt_failed()) return;
    check_model("randk-Q8_0.gguf", 256, 512, KVP_TYPE_Q8_0);
}
