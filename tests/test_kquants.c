/*
 * test_kquants.c: the K-quant and legacy offset types (Q2_K..Q6_K, Q4_1, Q5_0, Q5_1).
 *
 *   - dequantization of every tensor of the shared quantized models reproduces, bit for
 *     bit, the values llama.cpp's dequantizer wrote (ref/dequant-index.json, *.deq.f32);
 *   - hand-built blocks dequantize to the values their layout defines;
 *   - each reference dot product equals the double-precision dot product of the
 *     dequantized weights and dequantized activations;
 *   - every instruction set's matrix product equals the reference over odd shapes and row
 *     ranges, and writes nothing outside its rows;
 *   - the activation quantizers (Q8_K, Q8_1) follow llama.cpp's rules;
 *   - whole models: the logits of each randk-*.gguf quantization stay close to those of
 *     randk-f16.gguf (closer for more bits), and every ISA gives the same logits.
 */
#include <stdint.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "kernels/kquants.h"
#include "model/gguf.h"
#include "test.h"

static const char *const kq_isa_names[] = {"scalar", "avx2", "avx512"};

/* ---------------------------------------------------------------------------------------
 * llama.cpp's dequantized values.
 * ------------------------------------------------------------------------------------- */

/* One entry of dequant-index.json. */
typedef struct {
    char file[64], tensor[96], type[16];
    long offset, count;
} kq_ref_entry;

/* Copies the JSON string value of "key" found at or after p (within end) into out. */
static int kq_json_str(const char *p, const char *end, const char *key, char *out, size_t cap) {
    char pat[40];
    snprintf(pat, sizeof pat, "\"%s\": \"", key);
    const char *k = strstr(p, pat);
    if (!k || k >= end) return -1;
    k += strlen(pat);
    const char *q = strchr(k, '"');
    if (!q || (size_t)(q - k) >= cap) return -1;
    memcpy(out, k, (size_t)(q - k));
    out[q - k] = 0;
    return 0;
}

static int kq_json_num(const char *p, const char *end, const char *key, long *out) {
    char pat[40];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *k = strstr(p, pat);
    if (!k || k >= end) return -1;
    *out = strtol(k + strlen(pat), NULL, 10);
    return 0;
}

/* Parses the index (an object of file name -> array of entry objects) into *out. */
static int kq_ref_index(kq_ref_entry **out, int *n) {
    void *data = NULL;
    size_t size = 0;
    if (kvp_read_file(kvt_model("ref/dequant-index.json"), &data, &size) != 0) return -1;
    char *s = realloc(data, size + 1);
    if (!s) { free(data); return -1; }
    s[size] = 0;
    kq_ref_entry *e = calloc(1024, sizeof *e);
    int k = 0;
    char file[64] = "";
    for (char *p = s; e && *p && k < 1024; p++) {
        char *q = *p == '"' ? strchr(p + 1, '"') : NULL;
        if (q && q - p > 6 && !strncmp(q - 5, ".gguf\": [", 9)) { /* a file's key */
            snprintf(file, sizeof file, "%.*s", (int)(q - p - 1), p + 1);
            p = q;
        } else if (q) {
            p = q;
        } else if (*p == '{' && file[0]) {
            char *end = strchr(p, '}');
            if (!end) break;
            snprintf(e[k].file, sizeof e[k].file, "%s", file);
            if (kq_json_str(p, end, "tensor", e[k].tensor, sizeof e[k].tensor) ||
                kq_json_str(p, end, "type", e[k].type, sizeof e[k].type) ||
                kq_json_num(p, end, "offset_values", &e[k].offset) || kq_json_num(p, end, "count", &e[k].count))
                break;
            k++;
            p = end;
        }
    }
    free(s);
    *out = e;
    *n = k;
    return e ? 0 : -1;
}

/* Dequantizes the first e->count values of the entry's tensor and compares them bit for
 * bit with the reference floats. Returns the number of differing values. */
static long kq_ref_compare(const kvp_gguf *g, const kq_ref_entry *e, const float *ref, char *why, size_t cap) {
    const kvp_gguf_tensor *t = kvp_gguf_find_tensor(g, e->tensor);
    if (!t) { snprintf(why, cap, "no tensor %s", e->tensor); return -1; }
    if (strcmp(kvp_type_name((int)t->type), e->type)) {
        snprintf(why, cap, "%s: type %s, index says %s", e->tensor, kvp_type_name((int)t->type), e->type);
        return -1;
    }
    float *got = malloc(sizeof(float) * (size_t)e->count);
    int rc = got ? kvp_dequant_row((int)t->type, t->data, got, e->count) : KVP_ENOMEM;
    if (rc != 0) { snprintf(why, cap, "%s: %s", e->tensor, kvp_errmsg()); free(got); return -1; }
    long bad = 0, first = -1;
    for (long i = 0; i < e->count; i++)
        if (memcmp(&got[i], &ref[e->offset + i], 4) != 0 && bad++ == 0) first = i;
    if (bad) snprintf(why, cap, "%s %s: %ld of %ld values differ, first [%ld] = %.9g, llama.cpp %.9g", e->tensor,
                      e->type, bad, e->count, first, got[first], ref[e->offset + first]);
    free(got);
    return bad;
}

/* Checks every entry of one file; returns the number of tensors checked, -1 on failure. */
static int kq_ref_file(const char *file, const kq_ref_entry *e, int n) {
    char path[512], why[512];
    snprintf(path, sizeof path, "ref/%s.deq.f32", file);
    void *ref = NULL;
    size_t size = 0;
    kvp_gguf *g = NULL;
    if (kvp_read_file(kvt_model(path), &ref, &size) != 0 || kvp_gguf_open(kvt_model(file), &g) != 0) {
        kvt_fail(__FILE__, __LINE__, "%s: %s", file, kvp_errmsg());
        free(ref);
        return -1;
    }
    int checked = 0;
    for (int i = 0; i < n && !kvt_failed(); i++) {
        if (strcmp(e[i].file, file)) continue;
        if ((size_t)(e[i].offset + e[i].count) * 4 > size) {
            kvt_fail(__FILE__, __LINE__, "%s: the reference file is too short", file);
            break;
        }
        if (kq_ref_compare(g, &e[i], ref, why, sizeof why) != 0) kvt_fail(__FILE__, __LINE__, "%s: %s", file, why);
        checked++;
    }
    kvp_gguf_close(g);
    free(ref);
    return kvt_failed() ? -1 : checked;
}

TEST(kquants_dequant_matches_llamacpp) {
    static const char *files[] = {"randk-Q2_K.gguf", "randk-Q3_K_M.gguf", "randk-Q4_K_M.gguf", "randk-Q5_K_M.gguf",
                                  "randk-Q6_K.gguf", "randk-Q8_0.gguf", "sotu-1M-Q4_0.gguf", "sotu-1M-Q4_K_M.gguf"};
    kq_ref_entry *e = NULL;
    int n = 0;
    CHECK(kq_ref_index(&e, &n) == 0);
    int total = 0, types[KVP_TYPE_COUNT] = {0};
    for (size_t f = 0; f < KVP_ARRAY_LEN(files); f++) {
        int k = kq_ref_file(files[f], e, n);
        if (k < 0) { free(e); return; }
        CHECKF(k >= 21, "%s: only %d tensors in the index", files[f], k);
        total += k;
    }
    for (int i = 0; i < n; i++)
        for (int t = 0; t < KVP_TYPE_COUNT; t++)
            if (!strcmp(kvp_type_name(t), e[i].type)) types[t]++;
    free(e);
    CHECK(total == n && n >= 200);
    const int want[] = {KVP_TYPE_Q2_K, KVP_TYPE_Q3_K, KVP_TYPE_Q4_K, KVP_TYPE_Q5_K, KVP_TYPE_Q6_K, KVP_TYPE_Q5_0,
                        KVP_TYPE_Q8_0, KVP_TYPE_Q4_0};
    for (size_t i = 0; i < KVP_ARRAY_LEN(want); i++)
        CHECKF(types[want[i]] > 0, "the index has no %s tensor", kvp_type_name(want[i]));
}

/* ---------------------------------------------------------------------------------------
 * Hand-built blocks.
 * ------------------------------------------------------------------------------------- */

TEST(kquants_hand_q4_K) {
    kvp_block_q4_K b;
    memset(&b, 0, sizeof b);
    b.d = kvp_f32_to_f16(0.5f);
    b.dmin = kvp_f32_to_f16(0.25f);
    /* groups 0..3: scale g + 1, min 2g; groups 4..7: scale 40 + g, min 50 + g (6 bits) */
    for (int g = 0; g < 4; g++) {
        b.scales[g] = (uint8_t)((g + 1) | (((40 + g + 4) >> 4) << 6));
        b.scales[g + 4] = (uint8_t)((2 * g) | (((50 + g + 4) >> 4) << 6));
        b.scales[g + 8] = (uint8_t)(((40 + g + 4) & 15) | (((50 + g + 4) & 15) << 4));
    }
    for (int i = 0; i < 128; i++) b.qs[i] = (uint8_t)((i % 16) | ((15 - i % 16) << 4));
    float y[256];
    CHECK_OK(kvp_dequant_row(KVP_TYPE_Q4_K, &b, y, 256));
    for (int v = 0; v < 256; v++) {
        const int g = v / 32, l = v % 32, hi = g % 2;
        const int q = hi ? 15 - (l % 16) : l % 16;
        const int sc = g < 4 ? g + 1 : 40 + g, mn = g < 4 ? 2 * g : 50 + g;
        CHECKF(y[v] == 0.5f * sc * q - 0.25f * mn, "value %d = %g, want %g", v, y[v], 0.5f * sc * q - 0.25f * mn);
    }
}

TEST(kquants_hand_q6_K) {
    kvp_block_q6_K b;
    memset(&b, 0, sizeof b);
    b.d = kvp_f32_to_f16(0.125f);
    for (int g = 0; g < 16; g++) b.scales[g] = (int8_t)(g % 2 ? -(g + 1) : g + 1);
    /* value v = q - 32 with q = v % 64: low nibble from ql, high 2 bits from qh */
    for (int v = 0; v < 256; v++) {
        const int q = v % 64, half = v / 128, j = (v % 128) / 32, l = v % 32;
        b.ql[64 * half + l + 32 * (j & 1)] |= (uint8_t)((q & 15) << (4 * (j >> 1)));
        b.qh[32 * half + l] |= (uint8_t)((q >> 4) << (2 * j));
    }
    float y[256];
    CHECK_OK(kvp_dequant_row(KVP_TYPE_Q6_K, &b, y, 256));
    for (int v = 0; v < 256; v++) {
        const float want = 0.125f * (float)b.scales[v / 16] * (float)(v % 64 - 32);
        CHECKF(y[v] == want, "value %d = %g, want %g", v, y[v], want);
    }
}

TEST(kquants_hand_q5_0_q5_1_q4_1) {
    kvp_block_q5_0 a;
    kvp_block_q5_1 b;
    kvp_block_q4_1 c;
    a.d = b.d = c.d = kvp_f32_to_f16(2.0f);
    b.m = c.m = kvp_f32_to_f16(-3.0f);
    const uint32_t qh = 0xA5C3F00Fu;
    memcpy(a.qh, &qh, 4);
    memcpy(b.qh, &qh, 4);
    for (int j = 0; j < 16; j++) a.qs[j] = b.qs[j] = c.qs[j] = (uint8_t)(j | ((15 - j) << 4));
    float ya[32], yb[32], yc[32];
    CHECK_OK(kvp_dequant_row(KVP_TYPE_Q5_0, &a, ya, 32));
    CHECK_OK(kvp_dequant_row(KVP_TYPE_Q5_1, &b, yb, 32));
    CHECK_OK(kvp_dequant_row(KVP_TYPE_Q4_1, &c, yc, 32));
    for (int v = 0; v < 32; v++) {
        const int nib = v < 16 ? v : 15 - (v - 16), q5 = nib | (int)((qh >> v) & 1) << 4;
        CHECKF(ya[v] == 2.0f * (float)(q5 - 16), "Q5_0 value %d = %g", v, ya[v]);
        CHECKF(yb[v] == 2.0f * (float)q5 - 3.0f, "Q5_1 value %d = %g", v, yb[v]);
        CHECKF(yc[v] == 2.0f * (float)nib - 3.0f, "Q4_1 value %d = %g", v, yc[v]);
    }
}

TEST(kquants_hand_q2_K_q3_K) {
    kvp_block_q2_K a;
    kvp_block_q3_K b;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    a.d = b.d = kvp_f32_to_f16(1.0f);
    a.dmin = kvp_f32_to_f16(0.5f);
    for (int g = 0; g < 16; g++) a.scales[g] = (uint8_t)((g % 16) | ((15 - g) << 4));
    /* Q3_K scales: scale g = g - 8 (stored g + 24: low 4 bits, then 2 high bits) */
    for (int g = 0; g < 16; g++) {
        const int s = g + 24;
        if (g < 8) b.scales[g] |= (uint8_t)(s & 15);
        else b.scales[g - 8] |= (uint8_t)((s & 15) << 4);
        b.scales[8 + g % 4] |= (uint8_t)((s >> 4) << (2 * (g / 4)));
    }
    for (int v = 0; v < 256; v++) {
        const int half = v / 128, j = (v % 128) / 32, l = v % 32, q = (v / 7) % 4;
        a.qs[32 * half + l] |= (uint8_t)(q << (2 * j));
        b.qs[32 * half + l] |= (uint8_t)(q << (2 * j));
        if (v % 3 == 0) b.hmask[l] |= (uint8_t)(1 << (4 * half + j));
    }
    float ya[256], yb[256];
    CHECK_OK(kvp_dequant_row(KVP_TYPE_Q2_K, &a, ya, 256));
    CHECK_OK(kvp_dequant_row(KVP_TYPE_Q3_K, &b, yb, 256));
    for (int v = 0; v < 256; v++) {
        const int g = v / 16, q = (v / 7) % 4;
        CHECKF(ya[v] == (float)(g * q) - 0.5f * (float)(15 - g), "Q2_K value %d = %g", v, ya[v]);
        CHECKF(yb[v] == (float)((g - 8) * (q - (v % 3 == 0 ? 0 : 4))), "Q3_K value %d = %g", v, yb[v]);
    }
}

/* ---------------------------------------------------------------------------------------
 * Activation quantizers.
 * ------------------------------------------------------------------------------------- */

TEST(kquants_quant_q8_K) {
    float x[512];
    unsigned long long s = 5;
    for (int i = 0; i < 512; i++) x[i] = 3.0f * kvt_randf(&s);
    x[17] = -4.0f; /* the largest magnitude maps to -127: here d > 0 */
    x[300] = 5.0f;  /* and here d < 0 */
    kvp_block_q8_K q[2];
    CHECK_OK(kvp_quant_row(KVP_TYPE_Q8_K, x, q, 512));
    CHECK(q[0].qs[17] == -127 && q[0].d > 0 && q[1].qs[44] == -127 && q[1].d < 0);
    float y[512];
    CHECK_OK(kvp_dequant_row(KVP_TYPE_Q8_K, q, y, 512));
    for (int b = 0; b < 2; b++) {
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int l = 0; l < 16; l++) sum += q[b].qs[16 * g + l];
            CHECK(q[b].bsums[g] == sum);
        }
        for (int i = 0; i < 256; i++) CHECK(fabsf(y[256 * b + i] - x[256 * b + i]) <= fabsf(q[b].d) * 0.5001f);
    }
    memset(x, 0, sizeof x);
    CHECK_OK(kvp_quant_row(KVP_TYPE_Q8_K, x, q, 256));
    CHECK(q[0].d == 0 && q[0].qs[0] == 0 && q[0].bsums[3] == 0);
}

TEST(kquants_quant_q8_1) {
    float x[64];
    unsigned long long s = 6;
    for (int i = 0; i < 64; i++) x[i] = kvt_randf(&s);
    kvp_block_q8_1 q[2];
    CHECK_OK(kvp_quant_row(KVP_TYPE_Q8_1, x, q, 64));
    for (int b = 0; b < 2; b++) {
        int sum = 0, amax = 0;
        for (int j = 0; j < 32; j++) {
            sum += q[b].qs[j];
            amax = KVP_MAX(amax, abs(q[b].qs[j]));
        }
        const float d = kvp_f16_to_f32(q[b].d);
        CHECK(amax == 127);
        CHECK_NEAR(kvp_f16_to_f32(q[b].s), sum * d, fabs(sum * d) * 1e-3 + 1e-4);
    }
}

/* ---------------------------------------------------------------------------------------
 * Dot products and matrix products.
 * ------------------------------------------------------------------------------------- */

static const int kq_types[] = {KVP_TYPE_Q2_K, KVP_TYPE_Q3_K, KVP_TYPE_Q4_K, KVP_TYPE_Q5_K,
                               KVP_TYPE_Q6_K, KVP_TYPE_Q5_0, KVP_TYPE_Q4_1, KVP_TYPE_Q5_1};

/* Byte offsets of a type's F16 scale fields within its block (-1 ends the list). */
static const int *kq_f16_fields(int type) {
    static const int q2[] = {80, 82, -1}, q3[] = {108, -1}, q4[] = {0, 2, -1}, q6[] = {208, -1};
    static const int q50[] = {0, -1}, q41[] = {0, 2, -1};
    switch (type) {
    case KVP_TYPE_Q2_K: return q2;
    case KVP_TYPE_Q3_K: return q3;
    case KVP_TYPE_Q4_K: case KVP_TYPE_Q5_K: return q4;
    case KVP_TYPE_Q6_K: return q6;
    case KVP_TYPE_Q5_0: return q50;
    default: return q41;
    }
}

/* Random blocks: random bytes, then sane F16 scales (|d| in [1e-3, 2e-2), min offsets
 * of either sign for Q4_1 / Q5_1). */
static void kq_random_blocks(int type, uint8_t *w, size_t nblocks, unsigned long long *s) {
    const size_t bb = kvp_type_traits_get(type)->block_bytes;
    for (size_t i = 0; i < nblocks * bb; i++) w[i] = (uint8_t)kvt_rand_u64(s);
    for (size_t b = 0; b < nblocks; b++)
        for (const int *f = kq_f16_fields(type); *f >= 0; f++) {
            const float v = (1e-3f + 1.9e-2f * fabsf(kvt_randf(s))) * (kvt_randf(s) < 0 ? -1.0f : 1.0f);
            const uint16_t h = kvp_f32_to_f16(v);
            memcpy(w + b * bb + (size_t)*f, &h, 2);
        }
}

/* A random weight matrix of `type` with its dequantized copy, and n random activation
 * rows prepared with kvp_act_prepare with their dequantized copy. Offsets keep the
 * buffers off 64-byte alignment. */
typedef struct {
    int type, rows, cols, n;
    uint8_t *wbuf, *w, *xbuf, *xp;
    float *wf, *xf;
} kq_mm;

static void kq_mm_free(kq_mm *m) {
    free(m->wbuf);
    free(m->xbuf);
    free(m->wf);
    free(m->xf);
}

static int kq_mm_make(kq_mm *m, int type, int rows, int cols, int n, unsigned long long seed) {
    memset(m, 0, sizeof *m);
    *m = (kq_mm){.type = type, .rows = rows, .cols = cols, .n = n};
    const size_t wrow = kvp_type_row_bytes(type, cols), xrow = kvp_act_bytes(type, cols);
    const int act = kvp_type_ops_get(type)->act_type;
    m->wbuf = malloc(wrow * rows + 64);
    m->xbuf = malloc(xrow * n + 64);
    m->wf = malloc(sizeof(float) * (size_t)rows * cols);
    m->xf = malloc(sizeof(float) * (size_t)n * cols);
    float *x = malloc(sizeof(float) * (size_t)n * cols);
    if (!m->wbuf || !m->xbuf || !m->wf || !m->xf || !x || !wrow || !xrow) { free(x); return -1; }
    m->w = m->wbuf + 2;
    m->xp = m->xbuf + 4;
    kq_random_blocks(type, m->w, wrow * rows / kvp_type_traits_get(type)->block_bytes, &seed);
    int rc = kvp_dequant_row(type, m->w, m->wf, (int64_t)rows * cols);
    for (int i = 0; i < n * cols; i++) x[i] = 2.0f * kvt_randf(&seed);
    kvp_act_prepare(type, x, n, cols, m->xp);
    for (int i = 0; i < n && rc == 0; i++) rc = kvp_dequant_row(act, m->xp + i * xrow, m->xf + (size_t)i * cols, cols);
    free(x);
    return rc;
}

/* Q4_1 / Q5_1 use Q8_1's F16 block sum s = d * sum(q) for the offset term m * s: the
 * reference may differ from the exact product by |m| * |s| * 2^-11 per block. */
static double kq_offset_slack(const kq_mm *m, int r, int i) {
    if (m->type != KVP_TYPE_Q4_1 && m->type != KVP_TYPE_Q5_1) return 0;
    const size_t wrow = kvp_type_row_bytes(m->type, m->cols), xrow = kvp_act_bytes(m->type, m->cols);
    const kvp_block_q8_1 *x = (const kvp_block_q8_1 *)(m->xp + (size_t)i * xrow);
    double slack = 0;
    for (int b = 0; b < m->cols / 32; b++) {
        uint16_t mh; /* m is the second F16 of both block types */
        memcpy(&mh, m->w + (size_t)r * wrow + (size_t)b * kvp_type_traits_get(m->type)->block_bytes + 2, 2);
        slack += fabs(kvp_f16_to_f32(mh)) * fabs(kvp_f16_to_f32(x[b].s)) / 2048.0;
    }
    return slack;
}

/* The exact product of dequantized row r and token i; *absum gets the sum of |terms| plus
 * the F16 slack of offset types. */
static double kq_exact(const kq_mm *m, int r, int i, double *absum) {
    double e = 0, a = 0;
    for (int c = 0; c < m->cols; c++) {
        const double p = (double)m->wf[(size_t)r * m->cols + c] * m->xf[(size_t)i * m->cols + c];
        e += p;
        a += fabs(p);
    }
    *absum = a + 1e5 * kq_offset_slack(m, r, i);
    return e;
}

/* Runs gemm `fn` over rows [r0, r1) and checks it against the reference and the exact
 * product, and that it wrote nothing else. */
static void kq_mm_check(const kq_mm *m, kvp_gemm_fn fn, const char *isa, int r0, int r1) {
    const int ldy = m->rows + 2;
    float *y = malloc(sizeof(float) * (size_t)m->n * ldy), *yr = malloc(sizeof(float) * (size_t)m->n * ldy);
    CHECK(y && yr);
    for (int i = 0; i < m->n * ldy; i++) y[i] = yr[i] = 777.0f;
    fn(m->w, m->cols, m->xp, m->n, y, ldy, r0, r1);
    kvp_gemm_ref(m->type, m->w, m->cols, m->xp, m->n, yr, ldy, r0, r1);
    for (int i = 0; i < m->n && !kvt_failed(); i++)
        for (int r = 0; r < ldy && !kvt_failed(); r++) {
            const float got = y[i * ldy + r], want = yr[i * ldy + r];
            if (r < r0 || r >= r1) {
                CHECKF(got == 777.0f, "%s %s: wrote y[%d][%d] outside rows [%d,%d)", isa, kvp_type_name(m->type), i, r, r0, r1);
                continue;
            }
            double absum, exact = kq_exact(m, r, i, &absum);
            CHECKF(fabs(got - want) <= 2e-5 * absum + 1e-6 && fabs(want - exact) <= 1e-5 * absum + 1e-6,
                   "%s %s cols %d n %d: y[%d][%d] = %.9g, ref %.9g, exact %.9g", isa, kvp_type_name(m->type),
                   m->cols, m->n, i, r, got, want, exact);
        }
    free(y);
    free(yr);
}

TEST(kquants_gemm_vs_ref) {
    const int ns[] = {1, 2, 5, 17};
    for (size_t ti = 0; ti < KVP_ARRAY_LEN(kq_types); ti++) {
        const int type = kq_types[ti], bs = kvp_type_traits_get(type)->block_size;
        const int cols[] = {bs, 3 * bs, bs == 32 ? 1056 : 2816};
        for (size_t ci = 0; ci < 3; ci++)
            for (size_t ni = 0; ni < KVP_ARRAY_LEN(ns); ni++) {
                kq_mm m;
                const int rows = 23;
                CHECKF(kq_mm_make(&m, type, rows, cols[ci], ns[ni], 40 + ti * 7 + ci * 3 + ni) == 0, "setup %s",
                       kvp_type_name(type));
                for (int k = 0; k < 3 && !kvt_failed(); k++) {
                    kvp_ktable tab;
                    if (!kvp_kernels_cpu_has(kq_isa_names[k]) || kvp_ktable_build(kq_isa_names[k], &tab) != 0) continue;
                    CHECKF(tab.gemm[type], "%s has no %s kernel", kq_isa_names[k], kvp_type_name(type));
                    const int ranges[4][2] = {{0, rows}, {3, 20}, {5, 6}, {17, 23}};
                    for (int g = 0; g < 4 && !kvt_failed(); g++)
                        kq_mm_check(&m, tab.gemm[type], kq_isa_names[k], ranges[g][0], ranges[g][1]);
                }
                kq_mm_free(&m);
                if (kvt_failed()) return;
            }
    }
}

/* Extreme blocks: every weight at its largest magnitude and activations at +-127, so
 * that any saturation in a fast kernel's int16 pair sums would show. */
TEST(kquants_gemm_extremes) {
    for (size_t ti = 0; ti < KVP_ARRAY_LEN(kq_types); ti++) {
        kq_mm m;
        const int type = kq_types[ti];
        CHECK(kq_mm_make(&m, type, 9, 512, 3, 3) == 0);
        const size_t bytes = kvp_type_row_bytes(type, m.cols) * m.rows;
        const size_t bb = kvp_type_traits_get(type)->block_bytes;
        memset(m.w, 0xff, bytes); /* all quants at their maximum, all scales maximal */
        unsigned long long s = 1;
        kq_random_blocks(type, m.w + bytes - bb, 1, &s); /* one random block for variety */
        for (size_t b = 0; b < bytes / bb; b++)
            for (const int *f = kq_f16_fields(type); *f >= 0; f++) {
                const uint16_t h = kvp_f32_to_f16(b % 2 ? 0.01f : -0.02f);
                memcpy(m.w + b * bb + (size_t)*f, &h, 2);
            }
        CHECK_OK(kvp_dequant_row(type, m.w, m.wf, (int64_t)m.rows * m.cols));
        float *x = malloc(sizeof(float) * m.n * m.cols);
        for (int i = 0; i < m.n * m.cols; i++) x[i] = i % 3 ? 1.0f : -1.0f;
        kvp_act_prepare(type, x, m.n, m.cols, m.xp);
        free(x);
        const size_t xrow = kvp_act_bytes(type, m.cols);
        for (int i = 0; i < m.n; i++)
            CHECK_OK(kvp_dequant_row(kvp_type_ops_get(type)->act_type, m.xp + i * xrow, m.xf + (size_t)i * m.cols, m.cols));
        for (int k = 0; k < 3 && !kvt_failed(); k++) {
            kvp_ktable tab;
            if (kvp_kernels_cpu_has(kq_isa_names[k]) && kvp_ktable_build(kq_isa_names[k], &tab) == 0)
                kq_mm_check(&m, tab.gemm[type], kq_isa_names[k], 0, m.rows);
        }
        kq_mm_free(&m);
        if (kvt_failed()) return;
    }
}

/* ---------------------------------------------------------------------------------------
 * Whole models.
 * ------------------------------------------------------------------------------------- */

/* Logits of every position of a fixed token sequence. */
static float *kq_logits(const char *model, int n, int *vocab) {
    kvp_model *m = NULL;
    if (kvp_model_load(kvt_model(model), NULL, &m) != 0) {
        kvt_fail(__FILE__, __LINE__, "%s: %s", model, kvp_errmsg());
        return NULL;
    }
    const int V = kvp_model_get_info(m)->vocab_size;
    kvp_ctx_params p = kvp_ctx_default_params();
    p.n_ctx = 256;
    kvp_ctx *c = NULL;
    float *lg = malloc(sizeof(float) * (size_t)V * n);
    int ids[256];
    for (int i = 0; i < n; i++) ids[i] = i ? 3 + (i * 7919) % (V - 3) : 1;
    if (!lg || kvp_ctx_new(m, &p, &c) != 0 || kvp_ctx_decode(c, ids, n, lg, 1) != 0) {
        kvt_fail(__FILE__, __LINE__, "%s: %s", model, kvp_errmsg());
        free(lg);
        lg = NULL;
    }
    *vocab = V;
    kvp_ctx_free(c);
    kvp_model_free(m);
    return lg;
}

/* Root-mean-square difference of a and b relative to the RMS of b. */
static double kq_rel_rms(const float *a, const float *b, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        s += (double)b[i] * b[i];
    }
    return sqrt(d / (s > 0 ? s : 1));
}

TEST(kquants_randk_logits_close_to_f16) {
    /* Bounds: the errors measured when these tests were written (0.017, 0.046, 0.083,
     * 0.139, 0.224, 0.503: this random model amplifies weight error about fivefold) with a
     * margin of about 30%; more bits must also give a smaller error. */
    static const struct { const char *file; double bound; } q[] = {
        {"randk-Q8_0.gguf", 0.025}, {"randk-Q6_K.gguf", 0.06}, {"randk-Q5_K_M.gguf", 0.11},
        {"randk-Q4_K_M.gguf", 0.18}, {"randk-Q3_K_M.gguf", 0.30}, {"randk-Q2_K.gguf", 0.65}};
    enum { N = 40 };
    int V = 0, V2 = 0;
    float *ref = kq_logits("randk-f16.gguf", N, &V);
    CHECK(ref);
    double prev = 0;
    for (size_t i = 0; i < KVP_ARRAY_LEN(q); i++) {
        float *lg = kq_logits(q[i].file, N, &V2);
        if (!lg) break;
        const double e = kq_rel_rms(lg, ref, (size_t)N * V);
        free(lg);
        if (getenv("KVT_VERBOSE")) printf("  %s: relative RMS logit error %.4f\n", q[i].file, e);
        CHECKF(V2 == V && e < q[i].bound, "%s: relative RMS logit error %.4f (bound %.2f)", q[i].file, e, q[i].bound);
        CHECKF(e > prev, "%s: error %.4f is not above the previous file's %.4f", q[i].file, e, prev);
        prev = e;
    }
    free(ref);
}

/* Every instruction set gives the same logits for the K-quant models, within rounding.
 * Rounding differences of 1e-7 in one layer can move an activation across a Q8_K rounding
 * boundary in the next and so grow (to a relative RMS difference of 1% for Q3_K_M at the
 * time of writing, where the kernels themselves differ by 4e-7): the bound is 3%, a
 * seventh of the quantization error of Q3_K_M. kquants_gemm_vs_ref checks the kernels
 * one product at a time. */
TEST(kquants_randk_isa_agree) {
    static const char *files[] = {"randk-Q4_K_M.gguf", "randk-Q5_K_M.gguf", "randk-Q3_K_M.gguf", "randk-Q2_K.gguf"};
    enum { N = 12 };
    for (size_t f = 0; f < KVP_ARRAY_LEN(files); f++) {
        int V = 0;
        CHECK_OK(kvp_kernels_force_isa("scalar"));
        float *a = kq_logits(files[f], N, &V);
        CHECK_OK(kvp_kernels_force_isa(NULL));
        float *b = kq_logits(files[f], N, &V);
        CHECK(a && b);
        const double e = kq_rel_rms(b, a, (size_t)N * V);
        free(a);
        free(b);
        CHECKF(e < 0.03, "%s: scalar and %s logits differ by a relative RMS of %g", files[f], kvp_isa(), e);
    }
}

/* `kvpack info` names every K-quant type of a file, and a model of them runs from the CLI. */
TEST(kquants_cli_info_and_run) {
    char args[1024], out[8192];
    snprintf(args, sizeof args, "info -m %s", kvt_model("randk-Q3_K_M.gguf"));
    CHECKF(kvt_cli(args, out, sizeof out) == 0 && strstr(out, "mostly Q3_K") && strstr(out, "Q4_K x4") && strstr(out, "Q5_K x2") &&
           strstr(out, "Q6_K x1"), "got: %s", out);
    snprintf(args, sizeof args, "run -m %s -p 'Tonight I' -n 12 --temp 0", kvt_model("sotu-1M-Q4_K_M.gguf"));
    CHECKF(kvt_cli(args, out, sizeof out) == 0 && !strncmp(out, "Tonight I ask you to pass\nthemical", 34), "got: %s", out);
}
