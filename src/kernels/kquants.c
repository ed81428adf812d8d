/*
 * kquants.c: reference (de)quantization and dot products of the K-quant types (Q2_K ..
 * Q6_K, with Q8_K activations) and the legacy types Q4_1, Q5_0, Q5_1 (with Q8_1 or Q8_0
 * activations), and the scalar kernel-table entries that multiply them.
 *
 * Dequantization follows the arithmetic of llama.cpp's dequantize_row_* operation for
 * operation (the same float products in the same order), so its output is bit-identical:
 * the tests compare it with values llama.cpp dequantized from real files.
 *
 * The dot products unpack each weight to a small integer, take the integer dot product
 * with the int8 activations per group (16 or 32 values), apply the group's integer scale,
 * and scale the block's sum by the float super-block scales, summing blocks in double. The
 * offsets (mins) of Q2_K, Q4_K and Q5_K use the activation's group sums (bsums), as
 * llama.cpp does; so do Q4_1 and Q5_1 through the Q8_1 block sum.
 */
#include <math.h>

#include "common/common.h"
#include "kernels/kquants.h"

_Static_assert(sizeof(kvp_block_q4_1) == 20, "Q4_1 block must be 20 bytes");
_Static_assert(sizeof(kvp_block_q5_0) == 22, "Q5_0 block must be 22 bytes");
_Static_assert(sizeof(kvp_block_q5_1) == 24, "Q5_1 block must be 24 bytes");
_Static_assert(sizeof(kvp_block_q8_1) == 36, "Q8_1 block must be 36 bytes");
_Static_assert(sizeof(kvp_block_q2_K) == 84, "Q2_K block must be 84 bytes");
_Static_assert(sizeof(kvp_block_q3_K) == 110, "Q3_K block must be 110 bytes");
_Static_assert(sizeof(kvp_block_q4_K) == 144, "Q4_K block must be 144 bytes");
_Static_assert(sizeof(kvp_block_q5_K) == 176, "Q5_K block must be 176 bytes");
_Static_assert(sizeof(kvp_block_q6_K) == 210, "Q6_K block must be 210 bytes");
_Static_assert(sizeof(kvp_block_q8_K) == 292, "Q8_K block must be 292 bytes");

/* ---------------------------------------------------------------------------------------
 * Unpacking helpers shared by dequantization and the dot products.
 * ------------------------------------------------------------------------------------- */

void kvp_kq_q3_scales(const uint8_t packed[12], int8_t out[16]) {
    for (int j = 0; j < 16; j++) {
        const int lo = j < 8 ? packed[j] & 15 : packed[j - 8] >> 4;
        const int hi = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        out[j] = (int8_t)((lo | hi << 4) - 32);
    }
}

/* The 32 five-bit values (0..31) of a Q5_0 / Q5_1 block. */
static void kvp_q5_unpack(const uint8_t qs[16], const uint8_t qh4[4], int q[32]) {
    uint32_t qh;
    memcpy(&qh, qh4, 4);
    for (int j = 0; j < 16; j++) {
        q[j] = (qs[j] & 15) | (int)((qh >> j) & 1) << 4;
        q[j + 16] = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
    }
}

/* Value i (0..255) of a Q2_K block: its 2-bit quant and its group (of 16). */
static int kvp_q2_quant(const uint8_t *qs, int i) {
    const int half = i / 128, j = (i % 128) / 32, l = i % 32;
    return (qs[32 * half + l] >> (2 * j)) & 3;
}

/* Value i of a Q3_K block: low 2 bits minus 4 unless its high bit is set (-4..3). */
static int kvp_q3_quant(const kvp_block_q3_K *b, int i) {
    const int half = i / 128, j = (i % 128) / 32, l = i % 32;
    const int low = (b->qs[32 * half + l] >> (2 * j)) & 3;
    return low - ((b->hmask[l] >> (4 * half + j)) & 1 ? 0 : 4);
}

/* Value i of a Q4_K block (0..15): groups of 32; low nibbles first, then high. */
static int kvp_q4k_quant(const uint8_t *qs, int i) {
    const int chunk = i / 64, hi = (i % 64) / 32, l = i % 32;
    return (qs[32 * chunk + l] >> (4 * hi)) & 15;
}

/* Value i of a Q5_K block (0..31): the Q4_K nibble plus bit (i / 32) of qh[i % 32]. */
static int kvp_q5k_quant(const kvp_block_q5_K *b, int i) {
    return kvp_q4k_quant(b->qs, i) | ((b->qh[i % 32] >> (i / 32)) & 1) << 4;
}

/* Value i of a Q6_K block (-32..31). */
static int kvp_q6_quant(const kvp_block_q6_K *b, int i) {
    const int half = i / 128, j = (i % 128) / 32, l = i % 32;
    const uint8_t *ql = b->ql + 64 * half, *qh = b->qh + 32 * half;
    const int low = (ql[l + 32 * (j & 1)] >> (4 * (j >> 1))) & 15;
    return (low | ((qh[l] >> (2 * j)) & 3) << 4) - 32;
}

/* ---------------------------------------------------------------------------------------
 * Dequantization.
 * ------------------------------------------------------------------------------------- */

void kvp_q4_1_to_float(const void *src, float *dst, int64_t n) {
    const kvp_block_q4_1 *b = src;
    for (int64_t i = 0; i < n / 32; i++, dst += 32) {
        const float d = kvp_f16_to_f32(b[i].d), m = kvp_f16_to_f32(b[i].m);
        for (int j = 0; j < 16; j++) {
            dst[j] = (float)(b[i].qs[j] & 15) * d + m;
            dst[j + 16] = (float)(b[i].qs[j] >> 4) * d + m;
        }
    }
}

void kvp_q5_0_to_float(const void *src, float *dst, int64_t n) {
    const kvp_block_q5_0 *b = src;
    int q[32];
    for (int64_t i = 0; i < n / 32; i++, dst += 32) {
        const float d = kvp_f16_to_f32(b[i].d);
        kvp_q5_unpack(b[i].qs, b[i].qh, q);
        for (int j = 0; j < 32; j++) dst[j] = (float)(q[j] - 16) * d;
    }
}

void kvp_q5_1_to_float(const void *src, float *dst, int64_t n) {
    const kvp_block_q5_1 *b = src;
    int q[32];
    for (int64_t i = 0; i < n / 32; i++, dst += 32) {
        const float d = kvp_f16_to_f32(b[i].d), m = kvp_f16_to_f32(b[i].m);
        kvp_q5_unpack(b[i].qs, b[i].qh, q);
        for (int j = 0; j < 32; j++) dst[j] = (float)q[j] * d + m;
    }
}

void kvp_q2_K_to_float(const void *src, float *dst, int64_t n) {
    const kvp_block_q2_K *b = src;
    for (int64_t i = 0; i < n / KVP_QK_K; i++, dst += KVP_QK_K) {
        const float d = kvp_f16_to_f32(b[i].d), dmin = kvp_f16_to_f32(b[i].dmin);
        for (int v = 0; v < KVP_QK_K; v++) {
            const int g = 8 * (v / 128) + (v % 128) / 16; /* groups run in value order */
            const float dl = d * (float)(b[i].scales[g] & 15), ml = dmin * (float)(b[i].scales[g] >> 4);
            dst[v] = dl * (float)kvp_q2_quant(b[i].qs, v) - ml;
        }
    }
}

void kvp_q3_K_to_float(const void *src, float *dst, int64_t n) {
    const kvp_block_q3_K *b = src;
    int8_t sc[16];
    for (int64_t i = 0; i < n / KVP_QK_K; i++, dst += KVP_QK_K) {
        const float d = kvp_f16_to_f32(b[i].d);
        kvp_kq_q3_scales(b[i].scales, sc);
        for (int v = 0; v < KVP_QK_K; v++)
            dst[v] = d * (float)sc[v / 16] * (float)kvp_q3_quant(&b[i], v);
    }
}

void kvp_q4_K_to_float(const void *src, float *dst, int64_t n) {
    const kvp_block_q4_K *b = src;
    for (int64_t i = 0; i < n / KVP_QK_K; i++, dst += KVP_QK_K) {
        const float d = kvp_f16_to_f32(b[i].d), dmin = kvp_f16_to_f32(b[i].dmin);
        for (int g = 0; g < 8; g++) {
            uint8_t sc, m;
            kvp_kq_scale_min(g, b[i].scales, &sc, &m);
            const float dl = d * (float)sc, ml = dmin * (float)m;
            for (int l = 0; l < 32; l++) dst[32 * g + l] = dl * (float)kvp_q4k_quant(b[i].qs, 32 * g + l) - ml;
        }
    }
}

void kvp_q5_K_to_float(const void *src, float *dst, int64_t n) {
    const kvp_block_q5_K *b = src;
    for (int64_t i = 0; i < n / KVP_QK_K; i++, dst += KVP_QK_K) {
        const float d = kvp_f16_to_f32(b[i].d), dmin = kvp_f16_to_f32(b[i].dmin);
        for (int g = 0; g < 8; g++) {
            uint8_t sc, m;
            kvp_kq_scale_min(g, b[i].scales, &sc, &m);
            const float dl = d * (float)sc, ml = dmin * (float)m;
            for (int l = 0; l < 32; l++) dst[32 * g + l] = dl * (float)kvp_q5k_quant(&b[i], 32 * g + l) - ml;
        }
    }
}

void kvp_q6_K_to_float(const void *src, float *dst, int64_t n) {
    const kvp_block_q6_K *b = src;
    for (int64_t i = 0; i < n / KVP_QK_K; i++, dst += KVP_QK_K) {
        const float d = kvp_f16_to_f32(b[i].d);
        for (int v = 0; v < KVP_QK_K; v++)
            dst[v] = d * (float)b[i].scales[v / 16] * (float)kvp_q6_quant(&b[i], v);
    }
}

void kvp_q8_K_to_float(const void *src, float *dst, int64_t n) {
    const kvp_block_q8_K *b = src;
    for (int64_t i = 0; i < n / KVP_QK_K; i++, dst += KVP_QK_K)
        for (int v = 0; v < KVP_QK_K; v++) dst[v] = b[i].d * (float)b[i].qs[v];
}

void kvp_q8_1_to_float(const void *src, float *dst, int64_t n) {
    const kvp_block_q8_1 *b = src;
    for (int64_t i = 0; i < n / 32; i++, dst += 32) {
        const float d = kvp_f16_to_f32(b[i].d);
        for (int v = 0; v < 32; v++) dst[v] = (float)b[i].qs[v] * d;
    }
}

/* ---------------------------------------------------------------------------------------
 * Activation quantizers.
 * ------------------------------------------------------------------------------------- */

/* One Q8_K block: the value of largest magnitude maps to -127 (keeping its sign), the
 * rest round half to even (llama.cpp's nearest_int) and clamp at 127. */
static void kvp_quant_q8_K_block(const float *x, kvp_block_q8_K *y) {
    float max = 0, amax = 0;
    for (int j = 0; j < KVP_QK_K; j++) {
        if (fabsf(x[j]) > amax) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    memset(y, 0, sizeof *y);
    if (amax == 0.0f || !isfinite(amax)) return;
    const float iscale = -127.0f / max;
    for (int j = 0; j < KVP_QK_K; j++) {
        const float v = nearbyintf(iscale * x[j]);
        y->qs[j] = (int8_t)(v > 127.0f ? 127 : v < -128.0f ? -128 : (int)v);
    }
    for (int g = 0; g < KVP_QK_K / 16; g++) {
        int s = 0;
        for (int l = 0; l < 16; l++) s += y->qs[16 * g + l];
        y->bsums[g] = (int16_t)s;
    }
    y->d = 1.0f / iscale;
}

void kvp_quant_q8_K_ref(const float *x, void *y, int64_t n) {
    kvp_block_q8_K *b = y;
    for (int64_t i = 0; i < n / KVP_QK_K; i++) kvp_quant_q8_K_block(x + i * KVP_QK_K, &b[i]);
}

void kvp_quant_q8_1_ref(const float *x, void *y, int64_t n) {
    kvp_block_q8_1 *b = y;
    for (int64_t i = 0; i < n / 32; i++, x += 32) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = KVP_MAX(amax, fabsf(x[j]));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            b[i].qs[j] = (int8_t)roundf(x[j] * id);
            sum += b[i].qs[j];
        }
        b[i].d = kvp_f32_to_f16(d);
        b[i].s = kvp_f32_to_f16((float)sum * d);
    }
}

/* ---------------------------------------------------------------------------------------
 * Reference dot products.
 * ------------------------------------------------------------------------------------- */

float kvp_dot_q5_0_ref(const void *w, const void *x, int cols) {
    const kvp_block_q5_0 *a = w;
    const kvp_block_q8_0 *b = x;
    double s = 0;
    int q[32];
    for (int i = 0; i < cols / 32; i++) {
        kvp_q5_unpack(a[i].qs, a[i].qh, q);
        int32_t sumi = 0;
        for (int j = 0; j < 32; j++) sumi += (q[j] - 16) * (int32_t)b[i].qs[j];
        s += (double)sumi * (double)(kvp_f16_to_f32(a[i].d) * kvp_f16_to_f32(b[i].d));
    }
    return (float)s;
}

/* Q4_1 and Q5_1: sum(q * qx) * d * dx plus m * (dx * sum(qx)), the latter from Q8_1's s. */
static double kvp_dot_offset_block(int32_t sumi, uint16_t d, uint16_t m, const kvp_block_q8_1 *x) {
    return (double)sumi * (double)(kvp_f16_to_f32(d) * kvp_f16_to_f32(x->d)) +
           (double)(kvp_f16_to_f32(m) * kvp_f16_to_f32(x->s));
}

float kvp_dot_q4_1_ref(const void *w, const void *x, int cols) {
    const kvp_block_q4_1 *a = w;
    const kvp_block_q8_1 *b = x;
    double s = 0;
    for (int i = 0; i < cols / 32; i++) {
        int32_t sumi = 0;
        for (int j = 0; j < 16; j++)
            sumi += (a[i].qs[j] & 15) * (int32_t)b[i].qs[j] + (a[i].qs[j] >> 4) * (int32_t)b[i].qs[j + 16];
        s += kvp_dot_offset_block(sumi, a[i].d, a[i].m, &b[i]);
    }
    return (float)s;
}

float kvp_dot_q5_1_ref(const void *w, const void *x, int cols) {
    const kvp_block_q5_1 *a = w;
    const kvp_block_q8_1 *b = x;
    double s = 0;
    int q[32];
    for (int i = 0; i < cols / 32; i++) {
        kvp_q5_unpack(a[i].qs, a[i].qh, q);
        int32_t sumi = 0;
        for (int j = 0; j < 32; j++) sumi += q[j] * (int32_t)b[i].qs[j];
        s += kvp_dot_offset_block(sumi, a[i].d, a[i].m, &b[i]);
    }
    return (float)s;
}

/* sum over groups g of scale[g] * (integer dot of group g), for groups of `gsize` values. */
static int32_t kvp_group_sum(const int *q, const int8_t *qx, const int *scale, int gsize) {
    int32_t total = 0;
    for (int g = 0; g < KVP_QK_K / gsize; g++) {
        int32_t s = 0;
        for (int l = 0; l < gsize; l++) s += q[g * gsize + l] * (int32_t)qx[g * gsize + l];
        total += scale[g] * s;
    }
    return total;
}

/* sum over groups of 16 of min[g] * bsums[g] (groups of 32 use two bsums each). */
static int32_t kvp_min_sum(const int *min, int gsize, const int16_t *bsums) {
    int32_t total = 0;
    for (int k = 0; k < KVP_QK_K / 16; k++) total += min[k / (gsize / 16)] * (int32_t)bsums[k];
    return total;
}

float kvp_dot_q2_K_ref(const void *w, const void *x, int cols) {
    const kvp_block_q2_K *a = w;
    const kvp_block_q8_K *b = x;
    double s = 0;
    int q[KVP_QK_K], sc[16], mn[16];
    for (int i = 0; i < cols / KVP_QK_K; i++) {
        for (int v = 0; v < KVP_QK_K; v++) q[v] = kvp_q2_quant(a[i].qs, v);
        for (int g = 0; g < 16; g++) {
            sc[g] = a[i].scales[g] & 15;
            mn[g] = a[i].scales[g] >> 4;
        }
        const float d = b[i].d * kvp_f16_to_f32(a[i].d), dmin = b[i].d * kvp_f16_to_f32(a[i].dmin);
        s += (double)d * kvp_group_sum(q, b[i].qs, sc, 16) - (double)dmin * kvp_min_sum(mn, 16, b[i].bsums);
    }
    return (float)s;
}

float kvp_dot_q3_K_ref(const void *w, const void *x, int cols) {
    const kvp_block_q3_K *a = w;
    const kvp_block_q8_K *b = x;
    double s = 0;
    int q[KVP_QK_K], sc[16];
    int8_t sc8[16];
    for (int i = 0; i < cols / KVP_QK_K; i++) {
        for (int v = 0; v < KVP_QK_K; v++) q[v] = kvp_q3_quant(&a[i], v);
        kvp_kq_q3_scales(a[i].scales, sc8);
        for (int g = 0; g < 16; g++) sc[g] = sc8[g];
        const float d = b[i].d * kvp_f16_to_f32(a[i].d);
        s += (double)d * kvp_group_sum(q, b[i].qs, sc, 16);
    }
    return (float)s;
}

/* Q4_K and Q5_K once their values are unpacked into q. */
static double kvp_dot_k4_block(const int *q, const uint8_t *scales, uint16_t d16, uint16_t dmin16,
                               const kvp_block_q8_K *b) {
    int sc[8], mn[8];
    for (int g = 0; g < 8; g++) {
        uint8_t s8, m8;
        kvp_kq_scale_min(g, scales, &s8, &m8);
        sc[g] = s8;
        mn[g] = m8;
    }
    const float d = b->d * kvp_f16_to_f32(d16), dmin = b->d * kvp_f16_to_f32(dmin16);
    return (double)d * kvp_group_sum(q, b->qs, sc, 32) - (double)dmin * kvp_min_sum(mn, 32, b->bsums);
}

float kvp_dot_q4_K_ref(const void *w, const void *x, int cols) {
    const kvp_block_q4_K *a = w;
    const kvp_block_q8_K *b = x;
    double s = 0;
    int q[KVP_QK_K];
    for (int i = 0; i < cols / KVP_QK_K; i++) {
        for (int v = 0; v < KVP_QK_K; v++) q[v] = kvp_q4k_quant(a[i].qs, v);
        s += kvp_dot_k4_block(q, a[i].scales, a[i].d, a[i].dmin, &b[i]);
    }
    return (float)s;
}

float kvp_dot_q5_K_ref(const void *w, const void *x, int cols) {
    const kvp_block_q5_K *a = w;
    const kvp_block_q8_K *b = x;
    double s = 0;
    int q[KVP_QK_K];
    for (int i = 0; i < cols / KVP_QK_K; i++) {
        for (int v = 0; v < KVP_QK_K; v++) q[v] = kvp_q5k_quant(&a[i], v);
        s += kvp_dot_k4_block(q, a[i].scales, a[i].d, a[i].dmin, &b[i]);
    }
    return (float)s;
}

float kvp_dot_q6_K_ref(const void *w, const void *x, int cols) {
    const kvp_block_q6_K *a = w;
    const kvp_block_q8_K *b = x;
    double s = 0;
    int q[KVP_QK_K], sc[16];
    for (int i = 0; i < cols / KVP_QK_K; i++) {
        for (int v = 0; v < KVP_QK_K; v++) q[v] = kvp_q6_quant(&a[i], v);
        for (int g = 0; g < 16; g++) sc[g] = a[i].scales[g];
        const float d = b[i].d * kvp_f16_to_f32(a[i].d);
        s += (double)d * kvp_group_sum(q, b[i].qs, sc, 16);
    }
    return (float)s;
}

/* ---------------------------------------------------------------------------------------
 * Scalar table entries: the reference dot product row by row.
 * ------------------------------------------------------------------------------------- */

#define KVP_KQ_SCALAR_GEMM(name, TYPE)                                                        \
    static void kvp_sc_gemm_##name(const void *w, int cols, const void *xp, int n, float *y, \
                                   int ldy, int r0, int r1) {                                \
        kvp_gemm_ref(TYPE, w, cols, xp, n, y, ldy, r0, r1);                                  \
    }
KVP_KQ_SCALAR_GEMM(q4_1, KVP_TYPE_Q4_1)
KVP_KQ_SCALAR_GEMM(q5_0, KVP_TYPE_Q5_0)
KVP_KQ_SCALAR_GEMM(q5_1, KVP_TYPE_Q5_1)
KVP_KQ_SCALAR_GEMM(q2_K, KVP_TYPE_Q2_K)
KVP_KQ_SCALAR_GEMM(q3_K, KVP_TYPE_Q3_K)
KVP_KQ_SCALAR_GEMM(q4_K, KVP_TYPE_Q4_K)
KVP_KQ_SCALAR_GEMM(q5_K, KVP_TYPE_Q5_K)
KVP_KQ_SCALAR_GEMM(q6_K, KVP_TYPE_Q6_K)

void kvp_ktable_fill_kquants_scalar(kvp_ktable *t) {
    t->gemm[KVP_TYPE_Q4_1] = kvp_sc_gemm_q4_1;
    t->gemm[KVP_TYPE_Q5_0] = kvp_sc_gemm_q5_0;
    t->gemm[KVP_TYPE_Q5_1] = kvp_sc_gemm_q5_1;
    t->gemm[KVP_TYPE_Q2_K] = kvp_sc_gemm_q2_K;
    t->gemm[KVP_TYPE_Q3_K] = kvp_sc_gemm_q3_K;
    t->gemm[KVP_TYPE_Q4_K] = kvp_sc_gemm_q4_K;
    t->gemm[KVP_TYPE_Q5_K] = kvp_sc_gemm_q5_K;
    t->gemm[KVP_TYPE_Q6_K] = kvp_sc_gemm_q6_K;
}
