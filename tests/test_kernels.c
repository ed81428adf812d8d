/*
 * test_kernels.c: the compute kernels against their `_ref` twins under every instruction
 * set this CPU runs, the type tables, (de)quantization with hand-built blocks, f16 special
 * values, and the layer ops against double-precision versions.
 *
 * Sizes are deliberately odd (tokens 1, 3, 7, 33; cols 32, 96, 1056; head sizes 1 to 128;
 * row ranges not starting at 0) and buffers are misaligned, and every output buffer carries
 * sentinels around the part a kernel may write.
 */
#include <stdint.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "kernels/kernels_internal.h"
#include "test.h"

#define KT_SENTINEL 12345.0f

static const char *const kt_isa_names[] = {"scalar", "avx2", "avx512"};

/* Fills tabs with the table of every instruction set this CPU runs; returns how many. */
static int kt_tables(kvp_ktable tabs[3]) {
    int n = 0;
    for (int i = 0; i < 3; i++)
        if (kvp_kernels_cpu_has(kt_isa_names[i]) && kvp_ktable_build(kt_isa_names[i], &tabs[n]) == 0) n++;
    return n;
}

static void kt_fill(float *x, size_t n, float scale, unsigned long long *s) {
    for (size_t i = 0; i < n; i++) x[i] = scale * kvt_randf(s);
}

/* |got - want| within rel times the sum of the magnitudes of the terms that made want. */
static int kt_close(double got, double want, double absum, double rel) {
    return fabs(got - want) <= rel * absum + 1e-30;
}

/* ---------------------------------------------------------------------------------------
 * Type tables.
 * ------------------------------------------------------------------------------------- */

TEST(kernels_type_traits) {
    const kvp_type_traits *t = kvp_type_traits_get(KVP_TYPE_Q8_0);
    CHECK(t && t->block_size == 32 && t->block_bytes == 34 && t->supported);
    t = kvp_type_traits_get(KVP_TYPE_Q4_0);
    CHECK(t && t->block_size == 32 && t->block_bytes == 18 && t->supported);
    t = kvp_type_traits_get(KVP_TYPE_F16);
    CHECK(t && t->block_size == 1 && t->block_bytes == 2 && t->supported);
    t = kvp_type_traits_get(KVP_TYPE_BF16);
    CHECK(t && t->block_size == 1 && t->block_bytes == 2 && t->supported);
    t = kvp_type_traits_get(KVP_TYPE_F32);
    CHECK(t && t->block_bytes == 4 && t->supported);
    t = kvp_type_traits_get(KVP_TYPE_Q4_K);
    CHECK(t && t->block_size == 256 && t->block_bytes == 144 && t->supported);
    t = kvp_type_traits_get(KVP_TYPE_Q6_K);
    CHECK(t && t->block_size == 256 && t->block_bytes == 210 && t->supported);
    t = kvp_type_traits_get(KVP_TYPE_Q8_K);
    CHECK(t && t->block_bytes == 292);
    CHECK(kvp_type_traits_get(4) == NULL && kvp_type_traits_get(5) == NULL);
    CHECK(kvp_type_traits_get(-1) == NULL && kvp_type_traits_get(1000) == NULL);
    CHECK(strcmp(kvp_type_name(KVP_TYPE_Q8_0), "Q8_0") == 0);
    CHECK(strcmp(kvp_type_name(KVP_TYPE_BF16), "BF16") == 0);
    CHECK(strcmp(kvp_type_name(20), "IQ4_NL") == 0);
    CHECK(strcmp(kvp_type_name(4), "?") == 0);
    CHECK(kvp_type_row_bytes(KVP_TYPE_Q8_0, 64) == 68);
    CHECK(kvp_type_row_bytes(KVP_TYPE_Q8_0, 33) == 0);
    CHECK(kvp_type_row_bytes(KVP_TYPE_Q4_K, 512) == 288);
    CHECK(kvp_type_row_bytes(KVP_TYPE_F16, 7) == 14);
    CHECK(kvp_act_bytes(KVP_TYPE_F16, 7) == 28);
    CHECK(kvp_act_bytes(KVP_TYPE_Q4_0, 64) == 68);
    CHECK(kvp_act_bytes(KVP_TYPE_Q4_K, 256) == 292); /* Q8_K activations (test_kquants.c) */
    CHECK(kvp_act_bytes(20, 256) == 0);
    /* every named type has a sane block */
    for (int i = 0; i < KVP_TYPE_TABLE_SIZE; i++) {
        t = kvp_type_traits_get(i);
        if (t) CHECKF(t->block_size >= 1 && t->block_bytes >= 1, "type %d", i);
    }
}

TEST(kernels_quant_errors) {
    float x[64] = {0};
    uint8_t buf[256];
    CHECK(kvp_quant_row(KVP_TYPE_Q8_0, x, buf, 33) == KVP_EINVAL);
    CHECK(kvp_quant_row(KVP_TYPE_Q4_K, x, buf, 256) == KVP_EUNSUPPORTED);
    CHECK(kvp_dequant_row(20 /* IQ4_NL */, buf, x, 32) == KVP_EUNSUPPORTED);
    CHECK(kvp_dequant_row(77, buf, x, 32) == KVP_EINVAL);
    CHECK(kvp_dequant_row(KVP_TYPE_Q4_0, buf, x, 31) == KVP_EINVAL);
}

/* ---------------------------------------------------------------------------------------
 * Dequantization of hand-built blocks.
 * ------------------------------------------------------------------------------------- */

TEST(kernels_dequant_f16_bf16) {
    const uint16_t h[] = {0x3c00, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x3555, 0x8000, 0x7c00, 0xfc00};
    const float hv[] = {1.0f, -2.0f, 65504.0f, 5.9604644775390625e-08f, 6.0975551605224609e-05f,
                        0.333251953125f, -0.0f, INFINITY, -INFINITY};
    float out[9];
    CHECK_OK(kvp_dequant_row(KVP_TYPE_F16, h, out, 9));
    for (int i = 0; i < 9; i++) CHECKF(out[i] == hv[i], "f16 %04x -> %g", h[i], out[i]);
    CHECK(signbit(out[6]));
    const uint16_t b[] = {0x3f80, 0xc040, 0x4049, 0x0000, 0x7f80};
    const float bv[] = {1.0f, -3.0f, 3.140625f, 0.0f, INFINITY};
    CHECK_OK(kvp_dequant_row(KVP_TYPE_BF16, b, out, 5));
    for (int i = 0; i < 5; i++) CHECKF(out[i] == bv[i], "bf16 %04x -> %g", b[i], out[i]);
}

TEST(kernels_dequant_q8_0) {
    kvp_block_q8_0 blk[2];
    blk[0].d = 0x3400; /* 0.25 */
    blk[1].d = 0xbc00; /* -1 */
    for (int j = 0; j < 32; j++) {
        blk[0].qs[j] = (int8_t)(j - 16);
        blk[1].qs[j] = (int8_t)(j == 0 ? -128 : 127 - j);
    }
    float out[64];
    CHECK_OK(kvp_dequant_row(KVP_TYPE_Q8_0, blk, out, 64));
    for (int j = 0; j < 32; j++) {
        CHECK(out[j] == (float)(j - 16) * 0.25f);
        CHECK(out[32 + j] == -(float)(j == 0 ? -128 : 127 - j));
    }
}

TEST(kernels_dequant_q4_0) {
    kvp_block_q4_0 blk;
    blk.d = 0x3800; /* 0.5 */
    for (int j = 0; j < 16; j++) blk.qs[j] = (uint8_t)(j | ((15 - j) << 4));
    float out[32];
    CHECK_OK(kvp_dequant_row(KVP_TYPE_Q4_0, &blk, out, 32));
    for (int j = 0; j < 16; j++) {
        CHECKF(out[j] == (float)(j - 8) * 0.5f, "low nibble %d -> %g", j, out[j]);
        CHECKF(out[16 + j] == (float)(15 - j - 8) * 0.5f, "high nibble %d -> %g", j, out[16 + j]);
    }
}

/* ---------------------------------------------------------------------------------------
 * Quantization.
 * ------------------------------------------------------------------------------------- */

TEST(kernels_quant_q8_0_hand) {
    /* amax 127 gives d = 1 and id = 1 exactly, so x * id is x and roundf's halfway cases
     * (away from zero) are visible. */
    float x[32] = {127.0f, 2.5f, -2.5f, 0.5f, -0.5f, 1.5f, 0.49999997f, -126.5f, 3.2f, -3.7f};
    const int8_t want[10] = {127, 3, -3, 1, -1, 2, 0, -127, 3, -4};
    kvp_ktable tabs[3];
    const int nt = kt_tables(tabs);
    for (int k = 0; k < nt; k++) {
        kvp_block_q8_0 b;
        tabs[k].quant_q8_0(x, &b, 32);
        CHECKF(b.d == 0x3c00, "%s: d = %04x", tabs[k].isa, b.d);
        for (int j = 0; j < 10; j++) CHECKF(b.qs[j] == want[j], "%s: q[%d] = %d", tabs[k].isa, j, b.qs[j]);
        for (int j = 10; j < 32; j++) CHECK(b.qs[j] == 0);
    }
    /* an all-zero block has d = 0 and q = 0 */
    float z[32] = {0};
    kvp_block_q8_0 b;
    CHECK_OK(kvp_quant_row(KVP_TYPE_Q8_0, z, &b, 32));
    CHECK(b.d == 0);
    for (int j = 0; j < 32; j++) CHECK(b.qs[j] == 0);
}

TEST(kernels_quant_q8_0_roundtrip) {
    unsigned long long s = 11;
    enum { N = 32 * 64 };
    static float x[N], y[N];
    static kvp_block_q8_0 q[N / 32], qr[N / 32];
    for (int i = 0; i < N; i++) x[i] = kvt_randf(&s) * (float)(1 + (i / 32) % 7) * ((i / 32) % 3 ? 1.0f : 1e-3f);
    x[5] = 0.0f;
    CHECK_OK(kvp_quant_row(KVP_TYPE_Q8_0, x, q, N));
    CHECK_OK(kvp_dequant_row(KVP_TYPE_Q8_0, q, y, N));
    for (int b = 0; b < N / 32; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        const double d = amax / 127.0, d16 = kvp_f16_to_f32(q[b].d);
        /* q = round(x / d) is off by at most d/2; storing d in f16 moves q*d by |q| * |d - d16| */
        for (int j = 0; j < 32; j++) {
            const double err = fabs((double)y[b * 32 + j] - x[b * 32 + j]);
            const double bound = d / 2 * (1 + 1e-6) + 127 * fabs(d - d16);
            CHECKF(err <= bound, "block %d value %d: error %g > %g", b, j, err, bound);
        }
    }
    /* the fast quantizers are bit-identical to the reference */
    kvp_quant_q8_0_ref(x, qr, N);
    kvp_ktable tabs[3];
    const int nt = kt_tables(tabs);
    for (int k = 0; k < nt; k++) {
        tabs[k].quant_q8_0(x, q, N);
        CHECKF(memcmp(q, qr, sizeof q) == 0, "%s quantizer differs from the reference", tabs[k].isa);
    }
}

TEST(kernels_quant_q4_0) {
    /* max by magnitude is -8 (negative): d = -8 / -8 = 1, id = 1, q = min(15, (int)(x + 8.5)) */
    float x[32] = {-8.0f, 7.0f, 7.6f, 0.0f, -0.4f, -0.6f, 3.49f, 3.5f};
    const int want[8] = {0, 15, 15, 8, 8, 7, 11, 12};
    kvp_block_q4_0 b;
    CHECK_OK(kvp_quant_row(KVP_TYPE_Q4_0, x, &b, 32));
    CHECK(b.d == 0x3c00);
    for (int j = 0; j < 8; j++) CHECKF((b.qs[j] & 15) == want[j], "q[%d] = %d", j, b.qs[j] & 15);
    for (int j = 0; j < 16; j++) CHECK((b.qs[j] >> 4) == 8); /* values 16..31 are 0 */
    /* max by magnitude positive: d is negative, and the round trip stays within |d| */
    unsigned long long s = 5;
    float r[256], y[256];
    kvp_block_q4_0 q[8];
    for (int i = 0; i < 256; i++) r[i] = kvt_randf(&s) * 3.0f;
    CHECK_OK(kvp_quant_row(KVP_TYPE_Q4_0, r, q, 256));
    CHECK_OK(kvp_dequant_row(KVP_TYPE_Q4_0, q, y, 256));
    for (int i = 0; i < 256; i++) {
        const double d = fabs(kvp_f16_to_f32(q[i / 32].d));
        CHECKF(fabs(y[i] - r[i]) <= d * 1.01, "value %d: %g vs %g (d %g)", i, y[i], r[i], d);
    }
}

TEST(kernels_quant_f16_bf16_rows) {
    const float x[6] = {1.0f, -2.5f, 65504.0f, 1e-8f, 3.0e38f, 0.1f};
    uint16_t h[6], b[6];
    CHECK_OK(kvp_quant_row(KVP_TYPE_F16, x, h, 6));
    CHECK_OK(kvp_quant_row(KVP_TYPE_BF16, x, b, 6));
    for (int i = 0; i < 6; i++) {
        CHECK(h[i] == kvp_f32_to_f16(x[i]));
        CHECK(b[i] == kvp_f32_to_bf16(x[i]));
    }
    CHECK(h[0] == 0x3c00 && h[2] == 0x7bff && h[4] == 0x7c00);
    CHECK(b[0] == 0x3f80 && b[1] == 0xc020);
}

/* ---------------------------------------------------------------------------------------
 * f16 conversions.
 * ------------------------------------------------------------------------------------- */

static float kt_bits_f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

TEST(kernels_f16_special_values) {
    CHECK(kvp_f32_to_f16(0.0f) == 0x0000);
    CHECK(kvp_f32_to_f16(-0.0f) == 0x8000);
    CHECK(kvp_f32_to_f16(65504.0f) == 0x7bff);
    CHECK(kvp_f32_to_f16(65519.99f) == 0x7bff);   /* below the halfway point to 65536 */
    CHECK(kvp_f32_to_f16(65520.0f) == 0x7c00);    /* halfway: rounds to even = overflow */
    CHECK(kvp_f32_to_f16(INFINITY) == 0x7c00);
    CHECK(kvp_f32_to_f16(-INFINITY) == 0xfc00);
    const uint16_t hn = kvp_f32_to_f16(NAN);
    CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x03ff) != 0);
    CHECK(kvp_f32_to_f16(5.9604644775390625e-08f) == 0x0001); /* smallest subnormal 2^-24 */
    CHECK(kvp_f32_to_f16(kt_bits_f(0x33000000)) == 0x0000);   /* 2^-25: tie, to even 0 */
    CHECK(kvp_f32_to_f16(kt_bits_f(0x33400000)) == 0x0001);   /* 0.75 * 2^-24: up to 2^-24 */
    CHECK(kvp_f32_to_f16(kt_bits_f(0x33c00000)) == 0x0002);   /* 1.5 * 2^-24: tie, to even 2 */
    CHECK(kvp_f32_to_f16(kt_bits_f(0x34200000)) == 0x0002);   /* 2.5 * 2^-24: tie, to even 2 */
    CHECK(kvp_f32_to_f16(6.0975551605224609e-05f) == 0x03ff); /* largest subnormal */
    CHECK(kvp_f32_to_f16(6.103515625e-05f) == 0x0400);        /* smallest normal */
    CHECK(kvp_f32_to_f16(1.0f + 1.0f / 2048) == 0x3c00);      /* tie between 1 and 1+2^-10 */
    CHECK(kvp_f32_to_f16(1.0f + 3.0f / 2048) == 0x3c02);      /* tie, to even 0x3c02 */
    CHECK(kvp_f32_to_f16(1.0f + 1.0f / 2048 + 1.0f / 65536) == 0x3c01);
    CHECK(kvp_f16_to_f32(0x7e00) != kvp_f16_to_f32(0x7e00)); /* NaN */

    /* every ISA's row converters agree with the scalar ones: all 65536 halves one way, a
     * sweep of floats (specials, rounding cases, subnormals) the other */
    static uint16_t h[65536], h2[65536];
    static float f[65536], f2[65536];
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    unsigned long long s = 3;
    for (int i = 0; i < 65536; i++) {
        uint32_t u = (uint32_t)kvt_rand_u64(&s);
        if (i % 4 == 1) u = (u & 0x80000000u) | (0x33000000u + (u & 0x0fffffffu) % 0x14800000u); /* f16 range */
        if (i % 4 == 2) u = ((uint32_t)i << 13) | (i & 1 ? 0x1000u : 0); /* halfway points */
        f[i] = kt_bits_f(u);
    }
    kvp_ktable tabs[3];
    const int nt = kt_tables(tabs);
    for (int k = 0; k < nt; k++) {
        for (int len = 65536; len >= 65536 - 17; len -= 17) { /* tails too */
            memset(f2, 0, sizeof f2);
            tabs[k].f16_to_f32_row(h, f2, len);
            for (int i = 0; i < len; i++) {
                const float want = kvp_f16_to_f32(h[i]);
                if (want != want) CHECKF(f2[i] != f2[i], "%s: %04x not NaN", tabs[k].isa, h[i]);
                else CHECKF(memcmp(&want, &f2[i], 4) == 0, "%s: %04x -> %g", tabs[k].isa, h[i], f2[i]);
            }
            memset(h2, 0, sizeof h2);
            tabs[k].f32_to_f16_row(f, h2, len);
            for (int i = 0; i < len; i++) {
                const uint16_t want = kvp_f32_to_f16(f[i]);
                if ((want & 0x7c00) == 0x7c00 && (want & 0x3ff))
                    CHECKF((h2[i] & 0x7c00) == 0x7c00 && (h2[i] & 0x3ff), "%s: NaN", tabs[k].isa);
                else
                    CHECKF(h2[i] == want, "%s: %a -> %04x, want %04x", tabs[k].isa, (double)f[i], h2[i], want);
            }
            CHECK(len < 1 || h2[len - 1] == kvp_f32_to_f16(f[len - 1]) || f[len - 1] != f[len - 1]);
            if (len < 65536) CHECK(h2[len] == 0 && f2[len] == 0); /* nothing past the end */
        }
    }
}

/* ---------------------------------------------------------------------------------------
 * Matrix multiplication.
 * ------------------------------------------------------------------------------------- */

/* A random weight matrix of `type` (rows x cols), its dequantized copy, random activations
 * (n x cols) prepared by the reference quantizer, and their dequantized copy. Buffers are
 * offset by one element so that nothing is 64-byte aligned. */
typedef struct {
    int type, rows, cols, n;
    char *wbuf, *w;      /* weights */
    float *wf;           /* dequantized weights */
    char *xbuf, *xp;     /* prepared activations */
    float *xf;           /* activations as the kernels see them (dequantized) */
} kt_mm;

static void kt_mm_free(kt_mm *m) {
    free(m->wbuf);
    free(m->wf);
    free(m->xbuf);
    free(m->xf);
}

static int kt_mm_make(kt_mm *m, int type, int rows, int cols, int n, unsigned long long seed) {
    memset(m, 0, sizeof *m);
    m->type = type, m->rows = rows, m->cols = cols, m->n = n;
    const size_t wrow = kvp_type_row_bytes(type, cols), xrow = kvp_act_bytes(type, cols);
    m->wbuf = malloc(wrow * rows + 64);
    m->wf = malloc(sizeof(float) * (size_t)rows * cols);
    m->xbuf = malloc(xrow * n + 64);
    m->xf = malloc(sizeof(float) * (size_t)n * cols);
    float *tmp = malloc(sizeof(float) * (size_t)(rows > n ? rows : n) * cols);
    if (!m->wbuf || !m->wf || !m->xbuf || !m->xf || !tmp) {
        free(tmp);
        return -1;
    }
    m->w = m->wbuf + (type == KVP_TYPE_F32 ? 4 : 2); /* element-aligned, never 64-aligned */
    m->xp = m->xbuf + 4;
    kt_fill(tmp, (size_t)rows * cols, 1.0f, &seed);
    for (int r = 0; r < rows; r++) {
        if (kvp_quant_row(type, tmp + (size_t)r * cols, m->w + r * wrow, cols) != 0) return -1;
        if (kvp_dequant_row(type, m->w + r * wrow, m->wf + (size_t)r * cols, cols) != 0) return -1;
    }
    kt_fill(tmp, (size_t)n * cols, 2.0f, &seed);
    const int act = kvp_act_bytes(type, cols) == (size_t)cols * 4 ? KVP_TYPE_F32 : KVP_TYPE_Q8_0;
    for (int i = 0; i < n; i++) {
        const float *src = tmp + (size_t)i * cols;
        if (act == KVP_TYPE_F32) memcpy(m->xp + i * xrow, src, xrow);
        else kvp_quant_q8_0_ref(src, (kvp_block_q8_0 *)(m->xp + i * xrow), cols);
        kvp_dequant_row(act, m->xp + i * xrow, m->xf + (size_t)i * cols, cols);
    }
    free(tmp);
    return 0;
}

/* Runs one gemm over rows [r0, r1) into y (n x ldy, sentinels elsewhere) and compares
 * with the reference. Returns 0, or fails the test. */
static int kt_mm_check(const kt_mm *m, kvp_gemm_fn fn, const char *isa, int r0, int r1) {
    const int ldy = m->rows + 3;
    float *y = malloc(sizeof(float) * (size_t)m->n * ldy);
    float *yr = malloc(sizeof(float) * (size_t)m->n * ldy);
    if (!y || !yr) {
        free(y);
        free(yr);
        kvt_fail(__FILE__, __LINE__, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < (size_t)m->n * ldy; i++) y[i] = yr[i] = KT_SENTINEL;
    fn(m->w, m->cols, m->xp, m->n, y, ldy, r0, r1);
    kvp_gemm_ref(m->type, m->w, m->cols, m->xp, m->n, yr, ldy, r0, r1);
    int rc = 0;
    for (int i = 0; i < m->n && !rc; i++)
        for (int r = 0; r < ldy && !rc; r++) {
            const float got = y[(size_t)i * ldy + r], want = yr[(size_t)i * ldy + r];
            if (r < r0 || r >= r1) {
                if (got != KT_SENTINEL) {
                    kvt_fail(__FILE__, __LINE__, "%s %s cols %d n %d rows [%d,%d): wrote y[%d][%d]",
                             isa, kvp_type_name(m->type), m->cols, m->n, r0, r1, i, r);
                    rc = -1;
                }
                continue;
            }
            double absum = 0, exact = 0;
            for (int c = 0; c < m->cols; c++) {
                const double p = (double)m->wf[(size_t)r * m->cols + c] * m->xf[(size_t)i * m->cols + c];
                absum += fabs(p);
                exact += p;
            }
            if (!kt_close(got, want, absum, 2e-5) || !kt_close(want, exact, absum, 1e-5)) {
                kvt_fail(__FILE__, __LINE__,
                         "%s %s cols %d n %d rows [%d,%d): y[%d][%d] = %.9g, ref %.9g, exact %.9g",
                         isa, kvp_type_name(m->type), m->cols, m->n, r0, r1, i, r, got, want, exact);
                rc = -1;
            }
        }
    free(y);
    free(yr);
    return rc;
}

static const int kt_gemm_types[] = {KVP_TYPE_F32, KVP_TYPE_F16, KVP_TYPE_BF16, KVP_TYPE_Q8_0,
                                    KVP_TYPE_Q4_0};

TEST(kernels_gemm_vs_ref) {
    kvp_ktable tabs[3];
    const int nt = kt_tables(tabs);
    const int ns[] = {1, 2, 3, 4, 5, 6, 7, 8, 33};
    const int qcols[] = {32, 96, 1056};
    const int fcols[] = {1, 7, 16, 33, 96, 1056};
    for (size_t ti = 0; ti < KVP_ARRAY_LEN(kt_gemm_types); ti++) {
        const int type = kt_gemm_types[ti];
        const int quant = kvp_type_traits_get(type)->block_size > 1;
        const int *cols = quant ? qcols : fcols;
        const int ncols = quant ? 3 : 6;
        for (int ci = 0; ci < ncols; ci++)
            for (size_t ni = 0; ni < KVP_ARRAY_LEN(ns); ni++) {
                kt_mm m;
                const int rows = 21;
                if (kt_mm_make(&m, type, rows, cols[ci], ns[ni], 100 + ci * 10 + ni) != 0) {
                    kt_mm_free(&m);
                    CHECKF(0, "setup %s", kvp_type_name(type));
                }
                for (int k = 0; k < nt; k++) {
                    const int ranges[3][2] = {{0, rows}, {3, 16}, {5, 6}};
                    for (int g = 0; g < 3; g++)
                        if (kt_mm_check(&m, tabs[k].gemm[type], tabs[k].isa, ranges[g][0], ranges[g][1])) {
                            kt_mm_free(&m);
                            return;
                        }
                }
                kt_mm_free(&m);
            }
    }
}

/* Shapes that cross the kernels' cache blocks: several K chunks, row blocks, token tiles. */
TEST(kernels_gemm_blocking) {
    kvp_ktable tabs[3];
    const int nt = kt_tables(tabs);
    const struct { int rows, cols, n, r0, r1; } shapes[] = {
        {300, 4128, 8, 5, 290},  /* prefill: K chunks and row blocks */
        {19, 16448, 1, 1, 18},   /* decode: more than one K chunk of activations */
        {67, 2080, 13, 0, 67},
    };
    for (size_t ti = 0; ti < KVP_ARRAY_LEN(kt_gemm_types); ti++)
        for (size_t si = 0; si < KVP_ARRAY_LEN(shapes); si++) {
            kt_mm m;
            if (kt_mm_make(&m, kt_gemm_types[ti], shapes[si].rows, shapes[si].cols, shapes[si].n, 7 + si) != 0) {
                kt_mm_free(&m);
                CHECKF(0, "setup");
            }
            for (int k = 0; k < nt; k++)
                if (kt_mm_check(&m, tabs[k].gemm[kt_gemm_types[ti]], tabs[k].isa, shapes[si].r0, shapes[si].r1)) {
                    kt_mm_free(&m);
                    return;
                }
            kt_mm_free(&m);
        }
}

/* Weights with the extreme int8 value -128 (no quantizer makes it; a file may hold it). */
TEST(kernels_gemm_q8_0_extremes) {
    kvp_ktable tabs[3];
    const int nt = kt_tables(tabs);
    enum { COLS = 96, ROWS = 9, N = 5 };
    kvp_block_q8_0 w[ROWS][COLS / 32], x[N][COLS / 32];
    unsigned long long s = 99;
    for (int r = 0; r < ROWS; r++)
        for (int b = 0; b < COLS / 32; b++) {
            w[r][b].d = kvp_f32_to_f16(0.01f * (float)(r + b + 1));
            for (int j = 0; j < 32; j++) w[r][b].qs[j] = (int8_t)(j % 3 == 0 ? -128 : (int)(kvt_rand_u64(&s) % 256) - 128);
        }
    for (int i = 0; i < N; i++)
        for (int b = 0; b < COLS / 32; b++) {
            x[i][b].d = kvp_f32_to_f16(0.02f * (float)(i + 1));
            for (int j = 0; j < 32; j++) x[i][b].qs[j] = (int8_t)(j % 2 ? 127 : -127);
        }
    float y[N * ROWS], yr[N * ROWS];
    kvp_gemm_ref(KVP_TYPE_Q8_0, w, COLS, x, N, yr, ROWS, 0, ROWS);
    for (int k = 0; k < nt; k++) {
        tabs[k].gemm[KVP_TYPE_Q8_0](w, COLS, x, N, y, ROWS, 0, ROWS);
        for (int i = 0; i < N * ROWS; i++)
            CHECKF(fabsf(y[i] - yr[i]) <= 1e-5f * fabsf(yr[i]) + 1e-3f, "%s: y[%d] = %g, ref %g",
                   tabs[k].isa, i, y[i], yr[i]);
    }
}

/* Results are bit-identical whatever the row range a call covers (threads split rows) and
 * wherever a token sits in a batch of n > 4 (batches split prompts differently). */
TEST(kernels_gemm_deterministic_splits) {
    kvp_ktable tabs[3];
    const int nt = kt_tables(tabs);
    const int cols_f[] = {64, 77, 1056}, cols_q[] = {64, 96, 1056};
    for (size_t ti = 0; ti < KVP_ARRAY_LEN(kt_gemm_types); ti++)
        for (int ci = 0; ci < 3; ci++) {
            const int type = kt_gemm_types[ti];
            const int cols = kvp_type_traits_get(type)->block_size > 1 ? cols_q[ci] : cols_f[ci];
            enum { ROWS = 23, N = 11 };
            kt_mm m;
            if (kt_mm_make(&m, type, ROWS, cols, N, 300 + ci) != 0) {
                kt_mm_free(&m);
                CHECKF(0, "setup");
            }
            const size_t xrow = kvp_act_bytes(type, cols);
            for (int k = 0; k < nt; k++) {
                static float y[N * ROWS], y2[N * ROWS];
                for (int pass = 0; pass < 5; pass++) { /* small batches, decode, mid batches, N: y keeps N's */
                    const int n = (const int[]){3, 1, 6, 8, N}[pass];
                    tabs[k].gemm[type](m.w, cols, m.xp, n, y, ROWS, 0, ROWS);
                    const int cuts[] = {0, 1, 6, 7, 13, 21, ROWS};
                    for (size_t c = 0; c + 1 < KVP_ARRAY_LEN(cuts); c++)
                        tabs[k].gemm[type](m.w, cols, m.xp, n, y2, ROWS, cuts[c], cuts[c + 1]);
                    CHECKF(memcmp(y, y2, sizeof(float) * n * ROWS) == 0, "%s %s cols %d n %d: row split changes results",
                           tabs[k].isa, kvp_type_name(type), cols, n);
                }
                /* tokens j..n-1 as a batch of n-j: each keeps its result from the batch of n, among
                 * small batches (2-4 tokens) and among all others (5-8: pairs of rows, 9 and up:
                 * tiles, the same operations) */
                for (int pass = 0; pass < 4; pass++) {
                    const int n = (const int[]){4, 8, N, N}[pass], j = (const int[]){1, 2, 3, 5}[pass];
                    tabs[k].gemm[type](m.w, cols, m.xp, n, y, ROWS, 0, ROWS);
                    tabs[k].gemm[type](m.w, cols, m.xp + (size_t)j * xrow, n - j, y2, ROWS, 0, ROWS);
                    CHECKF(memcmp(y + j * ROWS, y2, sizeof(float) * (size_t)(n - j) * ROWS) == 0,
                           "%s %s cols %d n %d: a token's position in the batch changes results", tabs[k].isa,
                           kvp_type_name(type), cols, n);
                }
            }
            kt_mm_free(&m);
        }
}

/* Attention scores and values of a head do not depend on the other heads of the call, and
 * the scores of a row do not depend on how many rows follow it. */
TEST(kernels_attn_deterministic_splits) {
    kvp_ktable tabs[3];
    const int nt = kt_tables(tabs);
    unsigned long long s = 77;
    enum { N = 75, HD = 64, NQ = 7 };
    static float K[N * HD], Q[NQ * HD], S[NQ * N], S1[N], P[NQ * N], Y[NQ * HD], Y1[HD];
    static uint16_t Kh[N * HD];
    kt_fill(K, N * HD, 1.0f, &s);
    kt_fill(Q, NQ * HD, 1.0f, &s);
    kt_fill(P, NQ * N, 1.0f, &s);
    for (int i = 0; i < N * HD; i++) Kh[i] = kvp_f32_to_f16(K[i]);
    for (int k = 0; k < nt; k++)
        for (int hd = 8; hd <= HD; hd += 56) {
            tabs[k].attn_scores_f16(Kh, N, hd, Q, NQ, HD, 0.3f, S, N);
            memset(Y, 0, sizeof Y);
            tabs[k].attn_values_f16(Y, HD, NQ, P, N, Kh, N, hd);
            for (int j = 0; j < NQ; j++) {
                for (int n = N - 9; n <= N; n += 9) {
                    tabs[k].attn_scores_f16(Kh, n, hd, Q + j * HD, 1, HD, 0.3f, S1, N);
                    CHECKF(memcmp(S1, S + j * N, sizeof(float) * n) == 0, "%s scores hd %d head %d n %d", tabs[k].isa, hd, j, n);
                }
                memset(Y1, 0, sizeof Y1);
                tabs[k].attn_values_f16(Y1, HD, 1, P + j * N, N, Kh, N, hd);
                CHECKF(memcmp(Y1, Y + j * HD, sizeof(float) * hd) == 0, "%s values hd %d head %d", tabs[k].isa, hd, j);
            }
        }
}

/* The public path: kvp_act_prepare + kvp_gemm under each forced ISA. */
TEST(kernels_gemm_public) {
    enum { ROWS = 37, COLS = 320, N = 5 };
    unsigned long long s = 17;
    static float wsrc[ROWS * COLS], x[N * COLS], y[N * ROWS], yr[N * ROWS];
    static uint8_t w[ROWS * COLS * 4], xp[N * COLS * 4];
    kt_fill(wsrc, ROWS * COLS, 0.5f, &s);
    kt_fill(x, N * COLS, 1.0f, &s);
    for (int k = 0; k < 3; k++) {
        if (!kvp_kernels_cpu_has(kt_isa_names[k])) {
            CHECK(kvp_kernels_force_isa(kt_isa_names[k]) == KVP_EUNSUPPORTED);
            continue;
        }
        CHECK_OK(kvp_kernels_force_isa(kt_isa_names[k]));
        CHECK(strcmp(kvp_kernels_isa(), kt_isa_names[k]) == 0);
        for (size_t ti = 0; ti < KVP_ARRAY_LEN(kt_gemm_types); ti++) {
            const int type = kt_gemm_types[ti];
            const size_t wrow = kvp_type_row_bytes(type, COLS);
            for (int r = 0; r < ROWS; r++) CHECK_OK(kvp_quant_row(type, wsrc + r * COLS, w + r * wrow, COLS));
            kvp_act_prepare(type, x, N, COLS, xp);
            kvp_gemm(type, w, COLS, xp, N, y, ROWS, 0, ROWS);
            kvp_gemm_ref(type, w, COLS, xp, N, yr, ROWS, 0, ROWS);
            for (int i = 0; i < N * ROWS; i++)
                CHECKF(fabsf(y[i] - yr[i]) <= 1e-4f, "%s %s: y[%d] = %g, ref %g", kt_isa_names[k],
                       kvp_type_name(type), i, y[i], yr[i]);
            /* the result is close to the product of the stored weights with the float
             * activations (the Q8_0 activation rounding is the only difference) */
            for (int r = 0; r < ROWS; r++) {
                float wr[COLS];
                CHECK_OK(kvp_dequant_row(type, w + r * wrow, wr, COLS));
                double e = 0;
                for (int c = 0; c < COLS; c++) e += (double)wr[c] * x[c];
                CHECKF(fabs(y[r] - e) <= 0.05, "%s %s: row %d = %g, float product %g", kt_isa_names[k],
                       kvp_type_name(type), r, y[r], e);
            }
        }
    }
    CHECK(kvp_kernels_force_isa("avx9000") == KVP_EINVAL);
    CHECK_OK(kvp_kernels_force_isa(NULL));
    CHECK(strcmp(kvp_isa(), kvp_kernels_isa()) == 0);
}

/* ---------------------------------------------------------------------------------------
 * Vector kernels.
 * ------------------------------------------------------------------------------------- */

TEST(kernels_dot_axpy) {
    kvp_ktable tabs[3];
    const int nt = kt_tables(tabs);
    const int lens[] = {0, 1, 3, 7, 8, 15, 16, 17, 33, 64, 100, 1000, 1029};
    enum { MAXN = 1029 };
    static float a[MAXN + 1], b[MAXN + 1], y[MAXN + 2], yr[MAXN + 2];
    static uint16_t h[MAXN + 1];
    unsigned long long s = 21;
    kt_fill(a, MAXN + 1, 1.0f, &s);
    kt_fill(b, MAXN + 1, 1.0f, &s);
    for (int i = 0; i <= MAXN; i++) h[i] = kvp_f32_to_f16(a[i]);
    for (int k = 0; k < nt; k++)
        for (size_t li = 0; li < KVP_ARRAY_LEN(lens); li++) {
            const int n = lens[li];
            double absum = 0, absh = 0;
            for (int i = 0; i < n; i++) {
                absum += fabs((double)a[i + 1] * b[i]);
                absh += fabs((double)kvp_f16_to_f32(h[i + 1]) * b[i]);
            }
            CHECKF(kt_close(tabs[k].dot_f32(a + 1, b, n), kvp_dot_f32_ref(a + 1, b, n), absum, 1e-6),
                   "%s dot_f32 n %d", tabs[k].isa, n);
            CHECKF(kt_close(tabs[k].dot_f16(h + 1, b, n), kvp_dot_f16_ref(h + 1, b, n), absh, 1e-6),
                   "%s dot_f16 n %d", tabs[k].isa, n);
            for (int f16 = 0; f16 < 2; f16++) {
                for (int i = 0; i < MAXN + 2; i++) y[i] = yr[i] = (float)i * 0.01f;
                if (f16) {
                    tabs[k].axpy_f16(y + 1, 0.7f, h + 1, n);
                    kvp_axpy_f16_ref(yr + 1, 0.7f, h + 1, n);
                } else {
                    tabs[k].axpy_f32(y + 1, 0.7f, a + 1, n);
                    kvp_axpy_f32_ref(yr + 1, 0.7f, a + 1, n);
                }
                for (int i = 0; i < MAXN + 2; i++)
                    CHECKF(fabsf(y[i] - yr[i]) <= 1e-6f * (1 + fabsf(yr[i])), "%s axpy f16=%d n %d i %d",
                           tabs[k].isa, f16, n, i);
            }
        }
}

/* ---------------------------------------------------------------------------------------
 * Attention.
 * ------------------------------------------------------------------------------------- */

static const int kt_hds[] = {1, 3, 7, 8, 33, 64, 128};
static const int kt_rows[] = {1, 5, 67, 130};
static const int kt_heads[] = {1, 2, 3, 4, 5, 7, 8, 9};

TEST(kernels_attn_scores) {
    kvp_ktable tabs[3];
    const int nt = kt_tables(tabs);
    unsigned long long s = 31;
    enum { MAXN = 130, MAXHD = 128, MAXQ = 9 };
    static float K[MAXN * MAXHD + 1], Q[MAXQ * (MAXHD + 5)], S[MAXQ * (MAXN + 3)], Sr[MAXQ * (MAXN + 3)];
    static uint16_t Kh[MAXN * MAXHD + 1];
    kt_fill(K, KVP_ARRAY_LEN(K), 1.0f, &s);
    kt_fill(Q, KVP_ARRAY_LEN(Q), 1.0f, &s);
    for (size_t i = 0; i < KVP_ARRAY_LEN(K); i++) Kh[i] = kvp_f32_to_f16(K[i]);
    for (int k = 0; k < nt; k++)
        for (size_t hi = 0; hi < KVP_ARRAY_LEN(kt_hds); hi++)
            for (size_t ni = 0; ni < KVP_ARRAY_LEN(kt_rows); ni++)
                for (size_t qi = 0; qi < KVP_ARRAY_LEN(kt_heads); qi++)
                    for (int f16 = 0; f16 < 2; f16++) {
                        const int hd = kt_hds[hi], n = kt_rows[ni], nq = kt_heads[qi];
                        const int ldq = hd + 5, lds = n + 3;
                        const float scale = 0.125f;
                        for (size_t i = 0; i < KVP_ARRAY_LEN(S); i++) S[i] = Sr[i] = KT_SENTINEL;
                        if (f16) {
                            tabs[k].attn_scores_f16(Kh + 1, n, hd, Q, nq, ldq, scale, S, lds);
                            kvp_attn_scores_f16_ref(Kh + 1, n, hd, Q, nq, ldq, scale, Sr, lds);
                        } else {
                            tabs[k].attn_scores_f32(K + 1, n, hd, Q, nq, ldq, scale, S, lds);
                            kvp_attn_scores_f32_ref(K + 1, n, hd, Q, nq, ldq, scale, Sr, lds);
                        }
                        for (int j = 0; j < MAXQ; j++)
                            for (int t = 0; t < lds; t++) {
                                const size_t o = (size_t)j * lds + t;
                                if (j >= nq || t >= n) {
                                    CHECKF(S[o] == KT_SENTINEL, "%s scores wrote S[%d][%d]", tabs[k].isa, j, t);
                                    continue;
                                }
                                double absum = 0;
                                for (int c = 0; c < hd; c++)
                                    absum += fabs((double)(f16 ? kvp_f16_to_f32(Kh[1 + t * hd + c]) : K[1 + t * hd + c]) * Q[j * ldq + c]);
                                CHECKF(kt_close(S[o], Sr[o], scale * absum, 2e-6),
                                       "%s scores f16=%d hd %d n %d nq %d: S[%d][%d] = %g, ref %g",
                                       tabs[k].isa, f16, hd, n, nq, j, t, S[o], Sr[o]);
                            }
                    }
}

TEST(kernels_attn_values) {
    kvp_ktable tabs[3];
    const int nt = kt_tables(tabs);
    unsigned long long s = 41;
    enum { MAXN = 130, MAXHD = 128, MAXQ = 9 };
    static float V[MAXN * MAXHD + 1], P[MAXQ * (MAXN + 2)], Y[MAXQ * (MAXHD + 4)], Yr[MAXQ * (MAXHD + 4)], Y0[MAXQ * (MAXHD + 4)];
    static uint16_t Vh[MAXN * MAXHD + 1];
    kt_fill(V, KVP_ARRAY_LEN(V), 1.0f, &s);
    for (size_t i = 0; i < KVP_ARRAY_LEN(P); i++) P[i] = 0.5f * (kvt_randf(&s) + 1.0f);
    kt_fill(Y0, KVP_ARRAY_LEN(Y0), 1.0f, &s);
    for (size_t i = 0; i < KVP_ARRAY_LEN(V); i++) Vh[i] = kvp_f32_to_f16(V[i]);
    for (int k = 0; k < nt; k++)
        for (size_t hi = 0; hi < KVP_ARRAY_LEN(kt_hds); hi++)
            for (size_t ni = 0; ni < KVP_ARRAY_LEN(kt_rows); ni++)
                for (size_t qi = 0; qi < KVP_ARRAY_LEN(kt_heads); qi++)
                    for (int f16 = 0; f16 < 2; f16++) {
                        const int hd = kt_hds[hi], n = kt_rows[ni], ny = kt_heads[qi];
                        const int ldy = hd + 4, ldp = n + 2;
                        for (int j = 0; j < MAXQ; j++)
                            for (int c = 0; c < ldy; c++) {
                                const size_t o = (size_t)j * ldy + c;
                                Y[o] = Yr[o] = (j < ny && c < hd) ? Y0[o] : KT_SENTINEL;
                            }
                        if (f16) {
                            tabs[k].attn_values_f16(Y, ldy, ny, P, ldp, Vh + 1, n, hd);
                            kvp_attn_values_f16_ref(Yr, ldy, ny, P, ldp, Vh + 1, n, hd);
                        } else {
                            tabs[k].attn_values_f32(Y, ldy, ny, P, ldp, V + 1, n, hd);
                            kvp_attn_values_f32_ref(Yr, ldy, ny, P, ldp, V + 1, n, hd);
                        }
                        for (int j = 0; j < MAXQ; j++)
                            for (int c = 0; c < ldy; c++) {
                                const size_t o = (size_t)j * ldy + c;
                                if (j >= ny || c >= hd) {
                                    CHECKF(Y[o] == KT_SENTINEL, "%s values wrote Y[%d][%d]", tabs[k].isa, j, c);
                                    continue;
                                }
                                double absum = fabs(Y0[o]);
                                for (int t = 0; t < n; t++) absum += fabs((double)P[j * ldp + t] * V[1 + t * hd + c]);
                                CHECKF(kt_close(Y[o], Yr[o], absum, 2e-6),
                                       "%s values f16=%d hd %d n %d ny %d: Y[%d][%d] = %g, ref %g",
                                       tabs[k].isa, f16, hd, n, ny, j, c, Y[o], Yr[o]);
                            }
                    }
}

/* The 8-bit kernels (the cold tier's rows attended in place) against their references under
 * every instruction set, over odd row counts and head sizes up to 1023 (full vectors, a
 * masked tail, and tails alone), misaligned rows, and sentinels around the outputs. */
TEST(kernels_attn_i8_odd_sizes) {
    kvp_ktable tabs[3];
    const int nt = kt_tables(tabs);
    const int sizes[] = {1, 3, 7, 33, 1023}, heads[] = {1, 3, 7};
    enum { MAXN = 1023, MAXHD = 1023, MAXQ = 7 };
    unsigned long long s = 57;
    int8_t *K = malloc((size_t)MAXN * MAXHD + 1);
    float *Q = malloc(sizeof(float) * MAXQ * (MAXHD + 5)), *P = malloc(sizeof(float) * MAXQ * (MAXN + 2));
    float *S = malloc(sizeof(float) * MAXQ * (MAXN + 3)), *Sr = malloc(sizeof(float) * MAXQ * (MAXN + 3));
    float *Y = malloc(sizeof(float) * MAXQ * (MAXHD + 4)), *Yr = malloc(sizeof(float) * MAXQ * (MAXHD + 4));
    CHECK(K && Q && P && S && Sr && Y && Yr);
    for (size_t i = 0; i < (size_t)MAXN * MAXHD + 1; i++) K[i] = (int8_t)(kvt_rand_u64(&s) % 255 - 127);
    kt_fill(Q, (size_t)MAXQ * (MAXHD + 5), 1.0f, &s);
    for (size_t i = 0; i < (size_t)MAXQ * (MAXN + 2); i++) P[i] = 0.5f * (kvt_randf(&s) + 1.0f);
    for (int k = 0; k < nt && !kvt_failed(); k++)
        for (size_t hi = 0; hi < KVP_ARRAY_LEN(sizes); hi++)
            for (size_t ni = 0; ni < KVP_ARRAY_LEN(sizes); ni++)
                for (size_t qi = 0; qi < KVP_ARRAY_LEN(heads); qi++) {
                    const int hd = sizes[hi], n = sizes[ni], nq = heads[qi];
                    const int ldq = hd + 5, lds = n + 3, ldy = hd + 4, ldp = n + 2;
                    for (int i = 0; i < MAXQ * lds; i++) S[i] = Sr[i] = KT_SENTINEL;
                    tabs[k].attn_scores_i8(K + 1, n, hd, Q, nq, ldq, 0.125f, S, lds);
                    kvp_attn_scores_i8_ref(K + 1, n, hd, Q, nq, ldq, 0.125f, Sr, lds);
                    for (int j = 0; j < MAXQ; j++)
                        for (int t = 0; t < lds; t++) {
                            const size_t o = (size_t)j * lds + t;
                            if (j >= nq || t >= n) {
                                CHECKF(S[o] == KT_SENTINEL, "%s i8 scores wrote S[%d][%d]", tabs[k].isa, j, t);
                                continue;
                            }
                            double absum = 0;
                            for (int c = 0; c < hd; c++) absum += fabs((double)K[1 + (size_t)t * hd + c] * Q[j * ldq + c]);
                            CHECKF(kt_close(S[o], Sr[o], 0.125 * absum, 2e-6), "%s i8 scores hd %d n %d nq %d: S[%d][%d] = %g, ref %g",
                                   tabs[k].isa, hd, n, nq, j, t, S[o], Sr[o]);
                        }
                    for (int j = 0; j < MAXQ; j++)
                        for (int c = 0; c < ldy; c++)
                            Y[j * ldy + c] = Yr[j * ldy + c] = j < nq && c < hd ? 0.01f * (float)(c - j) : KT_SENTINEL;
                    tabs[k].attn_values_i8(Y, ldy, nq, P, ldp, K + 1, n, hd);
                    kvp_attn_values_i8_ref(Yr, ldy, nq, P, ldp, K + 1, n, hd);
                    for (int j = 0; j < MAXQ; j++)
                        for (int c = 0; c < ldy; c++) {
                            const size_t o = (size_t)j * ldy + c;
                            if (j >= nq || c >= hd) {
                                CHECKF(Y[o] == KT_SENTINEL, "%s i8 values wrote Y[%d][%d]", tabs[k].isa, j, c);
                                continue;
                            }
                            double absum = 0.01 * abs(c - j);
                            for (int t = 0; t < n; t++) absum += fabs((double)P[j * ldp + t] * K[1 + (size_t)t * hd + c]);
                            CHECKF(kt_close(Y[o], Yr[o], absum, 2e-6), "%s i8 values hd %d n %d nq %d: Y[%d][%d] = %g, ref %g",
                                   tabs[k].isa, hd, n, nq, j, c, Y[o], Yr[o]);
                        }
                }
    free(K);
    free(Q);
    free(P);
    free(S);
    free(Sr);
    free(Y);
    free(Yr);
}

/* ---------------------------------------------------------------------------------------
 * Layer ops against double precision.
 * ------------------------------------------------------------------------------------- */

TEST(kernels_rmsnorm) {
    unsigned long long s = 51;
    const int lens[] = {1, 7, 16, 64, 1000, 4099};
    static float x[4099], w[4099], out[4099], outr[4099];
    kt_fill(x, 4099, 3.0f, &s);
    kt_fill(w, 4099, 1.0f, &s);
    for (size_t li = 0; li < KVP_ARRAY_LEN(lens); li++) {
        const int n = lens[li];
        const float eps = 1e-5f;
        double ss = 0;
        for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
        const double scale = 1.0 / sqrt(ss / n + eps);
        kvp_rmsnorm(out, x, w, n, eps);
        kvp_rmsnorm_ref(outr, x, w, n, eps);
        for (int i = 0; i < n; i++) {
            const double want = x[i] * scale * w[i];
            CHECKF(fabs(out[i] - want) <= 1e-6 * fabs(want) + 1e-30, "n %d i %d: %g vs %g", n, i, out[i], want);
            CHECKF(fabs(outr[i] - want) <= 1e-6 * fabs(want) + 1e-30, "ref n %d i %d", n, i);
        }
    }
    /* in place */
    float v[3] = {3.0f, -4.0f, 0.0f}, one[3] = {1, 1, 1};
    kvp_rmsnorm(v, v, one, 3, 0.0f); /* rms = sqrt(25/3) */
    CHECK_NEAR(v[0], 3.0 / sqrt(25.0 / 3), 1e-6);
    CHECK_NEAR(v[1], -4.0 / sqrt(25.0 / 3), 1e-6);
}

/* Every ISA's softmax against double precision; the public kvp_softmax dispatches. */
TEST(kernels_softmax) {
    kvp_ktable tabs[3];
    const int nt = kt_tables(tabs);
    const int lens[] = {1, 2, 3, 5, 8, 15, 17, 100, 4097};
    static float x[4097], x0[4097];
    static double want[4097];
    unsigned long long s = 61;
    for (int k = 0; k <= nt; k++) { /* k == nt: the public entry point */
        void (*softmax)(float *, int) = k < nt ? tabs[k].softmax : kvp_softmax;
        const char *isa = k < nt ? tabs[k].isa : "public";
        for (size_t li = 0; li < KVP_ARRAY_LEN(lens); li++)
            for (int range = 0; range < 3; range++) {
                const int n = lens[li];
                const float amp = range == 0 ? 1.0f : range == 1 ? 20.0f : 100.0f;
                kt_fill(x0, (size_t)n, amp, &s);
                if (n > 3 && range == 2) x0[2] = -INFINITY; /* a masked position */
                memcpy(x, x0, sizeof(float) * n);
                double max = -INFINITY, sum = 0;
                for (int i = 0; i < n; i++) max = fmax(max, x0[i]);
                for (int i = 0; i < n; i++) sum += want[i] = exp((double)x0[i] - max);
                for (int i = 0; i < n; i++) want[i] /= sum;
                softmax(x, n);
                double total = 0;
                for (int i = 0; i < n; i++) {
                    total += x[i];
                    /* 1e-6 relative wherever the value is a normal float */
                    CHECKF(fabs(x[i] - want[i]) <= 1e-6 * want[i] + 1e-37,
                           "%s n %d amp %g i %d: %.9g vs %.9g (rel %.2g)", isa, n, amp, i, x[i], want[i],
                           fabs(x[i] - want[i]) / want[i]);
                }
                CHECK_NEAR(total, 1.0, 1e-5);
            }
        /* the exp over its whole range: softmax of (x, 0) is e^x / (1 + e^x) */
        for (double v = -87.0; v <= 0.0; v += 0.0123) {
            float p[2] = {(float)v, 0.0f};
            softmax(p, 2);
            const double e = exp((double)(float)v), w0 = e / (1 + e);
            CHECKF(fabs(p[0] - w0) <= 1e-6 * w0, "%s x = %g: %.9g vs %.9g", isa, v, p[0], w0);
        }
        for (int n = 1; n <= 33; n += 4) { /* fully masked rows of any length */
            float m[33];
            for (int i = 0; i < 33; i++) m[i] = i < n ? -INFINITY : 7.0f;
            softmax(m, n);
            for (int i = 0; i < 33; i++) CHECKF(m[i] == (i < n ? 0.0f : 7.0f), "%s masked n %d i %d", isa, n, i);
        }
    }
}

TEST(kernels_swiglu) {
    unsigned long long s = 71;
    enum { N = 1003 };
    static float g[N], u[N], h[N], hr[N];
    kt_fill(g, N, 12.0f, &s);
    kt_fill(u, N, 2.0f, &s);
    g[0] = -100.0f, g[1] = 100.0f, g[2] = 0.0f, g[3] = -87.5f, g[4] = 88.5f;
    kvp_swiglu(h, g, u, N);
    kvp_swiglu_ref(hr, g, u, N);
    for (int i = 0; i < N; i++) {
        const double want = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        CHECKF(fabs(h[i] - want) <= 1e-6 * fabs(want) + 1e-30, "i %d g %g: %.9g vs %.9g", i, g[i], h[i], want);
        CHECKF(fabs(hr[i] - want) <= 1e-6 * fabs(want) + 1e-30, "ref i %d", i);
    }
    for (int n = 1; n < 9; n++) { /* tails */
        float hh[9] = {0};
        kvp_swiglu(hh, g + 5, u + 5, n);
        for (int i = 0; i < 9; i++) CHECK(i < n ? hh[i] == h[5 + i] : hh[i] == 0.0f);
    }
}

TEST(kernels_rope_hand) {
    /* head_dim 4, theta 10000: pair 0 turns by pos * 1, pair 1 by pos * 10000^(-1/2) */
    const double a0 = 1.0, a1 = 0.01;
    float x[8] = {1, 2, 3, 4, 1, 2, 3, 4};
    kvp_rope(x, 2, 4, 1, 10000.0f, KVP_ROPE_NORM, NULL);
    const double norm[4] = {1 * cos(a0) - 2 * sin(a0), 1 * sin(a0) + 2 * cos(a0),
                            3 * cos(a1) - 4 * sin(a1), 3 * sin(a1) + 4 * cos(a1)};
    for (int i = 0; i < 8; i++) CHECKF(fabs(x[i] - norm[i % 4]) <= 1e-6, "NORM x[%d] = %.9g vs %.9g", i, x[i], norm[i % 4]);
    float y[4] = {1, 2, 3, 4};
    kvp_rope(y, 1, 4, 1, 10000.0f, KVP_ROPE_NEOX, NULL);
    const double neox[4] = {1 * cos(a0) - 3 * sin(a0), 2 * cos(a1) - 4 * sin(a1),
                            1 * sin(a0) + 3 * cos(a0), 2 * sin(a1) + 4 * cos(a1)};
    for (int i = 0; i < 4; i++) CHECKF(fabs(y[i] - neox[i]) <= 1e-6, "NEOX y[%d] = %.9g vs %.9g", i, y[i], neox[i]);
    /* freq_factors divide the angles */
    const float ff[2] = {2.0f, 4.0f};
    float z[4] = {1, 2, 3, 4};
    kvp_rope(z, 1, 4, 3, 10000.0f, KVP_ROPE_NORM, ff);
    const double b0 = 3 * 1.0 / 2, b1 = 3 * 0.01 / 4;
    CHECK_NEAR(z[0], 1 * cos(b0) - 2 * sin(b0), 1e-6);
    CHECK_NEAR(z[1], 1 * sin(b0) + 2 * cos(b0), 1e-6);
    CHECK_NEAR(z[2], 3 * cos(b1) - 4 * sin(b1), 1e-6);
    CHECK_NEAR(z[3], 3 * sin(b1) + 4 * cos(b1), 1e-6);
    /* position 0 is the identity */
    float w[4] = {1, 2, 3, 4};
    kvp_rope(w, 1, 4, 0, 10000.0f, KVP_ROPE_NEOX, NULL);
    CHECK(w[0] == 1 && w[1] == 2 && w[2] == 3 && w[3] == 4);
}

TEST(kernels_rope_vs_double) {
    unsigned long long s = 81;
    const int hds[] = {2, 64, 128, 160};
    const int poss[] = {1, 17, 100, 1000};
    static float x[4 * 160], x0[4 * 160];
    for (size_t hi = 0; hi < KVP_ARRAY_LEN(hds); hi++)
        for (size_t pi = 0; pi < KVP_ARRAY_LEN(poss); pi++)
            for (int style = 0; style < 2; style++) {
                const int hd = hds[hi], pos = poss[pi], nh = 3;
                kt_fill(x0, (size_t)nh * hd, 1.0f, &s);
                memcpy(x, x0, sizeof(float) * nh * hd);
                kvp_rope(x, nh, hd, pos, 10000.0f, style, NULL);
                for (int h = 0; h < nh; h++)
                    for (int i = 0; i < hd / 2; i++) {
                        const double ang = pos * pow(10000.0, -2.0 * i / hd);
                        const int i0 = style == KVP_ROPE_NEOX ? i : 2 * i;
                        const int i1 = style == KVP_ROPE_NEOX ? i + hd / 2 : 2 * i + 1;
                        const double v0 = x0[h * hd + i0], v1 = x0[h * hd + i1];
                        const double w0 = v0 * cos(ang) - v1 * sin(ang), w1 = v0 * sin(ang) + v1 * cos(ang);
                        /* the angle is built as llama.cpp builds it (repeated float products),
                         * which is off by up to about pos * 1e-6 radians */
                        const double tol = 2e-6 + 2e-6 * pos;
                        CHECKF(fabs(x[h * hd + i0] - w0) <= tol && fabs(x[h * hd + i1] - w1) <= tol,
                               "style %d hd %d pos %d pair %d", style, hd, pos, i);
                    }
            }
}

TEST(kernels_isa_names) {
    const char *isa = kvp_kernels_isa();
    CHECK(strcmp(isa, "scalar") == 0 || strcmp(isa, "avx2") == 0 || strcmp(isa, "avx512") == 0);
    CHECK(kvp_kernels_cpu_has("scalar"));
    CHECK(!kvp_kernels_cpu_has("sse9"));
    kvp_ktable t;
    CHECK(kvp_ktable_build("nope", &t) == KVP_EINVAL);
    CHECK_OK(kvp_ktable_build("scalar", &t));
    CHECK(strcmp(t.isa, "scalar") == 0);
    if (kvp_kernels_cpu_has("avx512")) CHECK(kvp_kernels_cpu_has("avx2"));
}
