/*
 * quant.c: the tensor type tables and the reference row conversions.
 *
 * Two tables indexed by the GGUF type number describe every type: kvp_traits (name, block
 * size, block bytes, whether kvpack supports it) and kvp_ops (how activations are prepared
 * for it, dequantization, quantization and the reference dot product of one weight row with
 * one prepared activation row). Supporting a new type (the K-quants, say) means adding its
 * ops row and flipping `supported` in its traits row; the fast kernels add gemm entries in
 * the ISA tables (kernels_<isa>.c) and fall back to the reference dot product otherwise.
 *
 * The quantizers follow llama.cpp's reference code (ggml's quantize_row_*_ref) exactly, so
 * that kvpack and llama.cpp produce the same bytes for the same floats.
 */
#include <math.h>

#include "common/common.h"
#include "kernels/kernels_internal.h"
#include "kernels/kquants.h"

/* The block layouts are GGUF's; their sizes are part of the file format. */
_Static_assert(sizeof(kvp_block_q8_0) == 34, "Q8_0 block must be 34 bytes (f16 d + 32 int8)");
_Static_assert(sizeof(kvp_block_q4_0) == 18, "Q4_0 block must be 18 bytes (f16 d + 16 nibble pairs)");

#define KVP_QK_K 256

/* Rows for every type GGUF defines. Numbers 4 and 5 (Q4_2, Q4_3) and 31..33, 36..38
 * (removed repacked types) are no types: their rows stay empty (name NULL). */
static const kvp_type_traits kvp_traits[KVP_TYPE_TABLE_SIZE] = {
    [0] = {"F32", 1, 4, 1},
    [1] = {"F16", 1, 2, 1},
    [2] = {"Q4_0", 32, 18, 1},
    [3] = {"Q4_1", 32, 20, 1},
    [6] = {"Q5_0", 32, 22, 1},
    [7] = {"Q5_1", 32, 24, 1},
    [8] = {"Q8_0", 32, 34, 1},
    [9] = {"Q8_1", 32, 36, 0},
    [10] = {"Q2_K", KVP_QK_K, 84, 1},
    [11] = {"Q3_K", KVP_QK_K, 110, 1},
    [12] = {"Q4_K", KVP_QK_K, 144, 1},
    [13] = {"Q5_K", KVP_QK_K, 176, 1},
    [14] = {"Q6_K", KVP_QK_K, 210, 1},
    [15] = {"Q8_K", KVP_QK_K, 292, 0},
    [16] = {"IQ2_XXS", KVP_QK_K, 66, 0},
    [17] = {"IQ2_XS", KVP_QK_K, 74, 0},
    [18] = {"IQ3_XXS", KVP_QK_K, 98, 0},
    [19] = {"IQ1_S", KVP_QK_K, 50, 0},
    [20] = {"IQ4_NL", 32, 18, 0},
    [21] = {"IQ3_S", KVP_QK_K, 110, 0},
    [22] = {"IQ2_S", KVP_QK_K, 82, 0},
    [23] = {"IQ4_XS", KVP_QK_K, 136, 0},
    [24] = {"I8", 1, 1, 0},
    [25] = {"I16", 1, 2, 0},
    [26] = {"I32", 1, 4, 0},
    [27] = {"I64", 1, 8, 0},
    [28] = {"F64", 1, 8, 0},
    [29] = {"IQ1_M", KVP_QK_K, 56, 0},
    [30] = {"BF16", 1, 2, 1},
    [34] = {"TQ1_0", KVP_QK_K, 54, 0},
    [35] = {"TQ2_0", KVP_QK_K, 66, 0},
    [39] = {"MXFP4", 32, 17, 0},
};

const kvp_type_traits *kvp_type_traits_get(int type) {
    if (type < 0 || type >= KVP_TYPE_TABLE_SIZE || !kvp_traits[type].name) return NULL;
    return &kvp_traits[type];
}

const char *kvp_type_name(int type) {
    const kvp_type_traits *t = kvp_type_traits_get(type);
    return t ? t->name : "?";
}

size_t kvp_type_row_bytes(int type, int64_t n) {
    const kvp_type_traits *t = kvp_type_traits_get(type);
    if (!t || n < 0 || n % t->block_size != 0) return 0;
    return (size_t)(n / t->block_size) * t->block_bytes;
}

/* ---- F32, F16, BF16 ---- */

static void kvp_f32_to_float(const void *src, float *dst, int64_t n) {
    memmove(dst, src, (size_t)n * sizeof(float));
}

static void kvp_f32_from_float(const float *src, void *dst, int64_t n) {
    memmove(dst, src, (size_t)n * sizeof(float));
}

/* F16 rows go through the active ISA's converter: it is bit-identical to kvp_f16_to_f32. */
static void kvp_f16_to_float(const void *src, float *dst, int64_t n) {
    const kvp_ktable *kt = kvp_ktable_active();
    const uint16_t *s = src;
    while (n > 0) {
        int m = n > (1 << 30) ? (1 << 30) : (int)n;
        kt->f16_to_f32_row(s, dst, m);
        s += m;
        dst += m;
        n -= m;
    }
}

static void kvp_f16_from_float(const float *src, void *dst, int64_t n) {
    const kvp_ktable *kt = kvp_ktable_active();
    uint16_t *d = dst;
    while (n > 0) {
        int m = n > (1 << 30) ? (1 << 30) : (int)n;
        kt->f32_to_f16_row(src, d, m);
        src += m;
        d += m;
        n -= m;
    }
}

static void kvp_bf16_to_float(const void *src, float *dst, int64_t n) {
    const uint16_t *s = src;
    for (int64_t i = 0; i < n; i++) dst[i] = kvp_bf16_to_f32(s[i]);
}

static void kvp_bf16_from_float(const float *src, void *dst, int64_t n) {
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++) d[i] = kvp_f32_to_bf16(src[i]);
}

/* Reference dot products of float weight rows with F32 activation rows, summed in double
 * so that the reference is (nearly) exact and the fast kernels are judged against it. */
static float kvp_dot_row_f32(const void *w, const void *x, int cols) {
    const float *a = w, *b = x;
    double s = 0;
    for (int c = 0; c < cols; c++) s += (double)a[c] * b[c];
    return (float)s;
}

static float kvp_dot_row_f16(const void *w, const void *x, int cols) {
    const uint16_t *a = w;
    const float *b = x;
    double s = 0;
    for (int c = 0; c < cols; c++) s += (double)kvp_f16_to_f32(a[c]) * b[c];
    return (float)s;
}

static float kvp_dot_row_bf16(const void *w, const void *x, int cols) {
    const uint16_t *a = w;
    const float *b = x;
    double s = 0;
    for (int c = 0; c < cols; c++) s += (double)kvp_bf16_to_f32(a[c]) * b[c];
    return (float)s;
}

/* ---- Q8_0: 32 values = f16 scale d and 32 int8 q; value = q * d ---- */

void kvp_quant_q8_0_ref(const float *x, kvp_block_q8_0 *y, int64_t n) {
    for (int64_t b = 0; b < n / KVP_QK8_0; b++, x += KVP_QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < KVP_QK8_0; j++) amax = KVP_MAX(amax, fabsf(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = kvp_f32_to_f16(d);
        for (int j = 0; j < KVP_QK8_0; j++) y[b].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

static void kvp_q8_0_to_float(const void *src, float *dst, int64_t n) {
    const kvp_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / KVP_QK8_0; i++, dst += KVP_QK8_0) {
        const float d = kvp_f16_to_f32(b[i].d);
        for (int j = 0; j < KVP_QK8_0; j++) dst[j] = (float)b[i].qs[j] * d;
    }
}

/* Activation rows use the active ISA's quantizer, bit-identical to kvp_quant_q8_0_ref. */
static void kvp_q8_0_from_float(const float *src, void *dst, int64_t n) {
    kvp_ktable_active()->quant_q8_0(src, dst, n);
}

/* The sum over blocks of (integer dot product) * d_w * d_x, as llama.cpp's
 * ggml_vec_dot_q8_0_q8_0 computes it; summed in double (d_w * d_x is exact in float). */
static float kvp_dot_row_q8_0(const void *w, const void *x, int cols) {
    const kvp_block_q8_0 *a = w, *b = x;
    double s = 0;
    for (int i = 0; i < cols / KVP_QK8_0; i++) {
        int32_t sumi = 0;
        for (int j = 0; j < KVP_QK8_0; j++) sumi += (int32_t)a[i].qs[j] * b[i].qs[j];
        s += (double)sumi * (double)(kvp_f16_to_f32(a[i].d) * kvp_f16_to_f32(b[i].d));
    }
    return (float)s;
}

/* ---- Q4_0: 32 values = f16 scale d and 16 bytes; byte j holds value j in its low nibble
 * and value j + 16 in its high nibble; value = (nibble - 8) * d ---- */

void kvp_quant_q4_0_ref(const float *x, kvp_block_q4_0 *y, int64_t n) {
    for (int64_t b = 0; b < n / KVP_QK4_0; b++, x += KVP_QK4_0) {
        float amax = 0.0f, max = 0.0f; /* the value of largest magnitude keeps its sign */
        for (int j = 0; j < KVP_QK4_0; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        const float d = max / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = kvp_f32_to_f16(d);
        for (int j = 0; j < KVP_QK4_0 / 2; j++) {
            /* ggml: MIN(15, (int8_t)(x * id + 8.5f)); the argument lies in [0.5, 16.5] for
             * finite input, and the comparisons keep NaN or inf from overflowing the cast. */
            const float v0 = x[j] * id + 8.5f, v1 = x[j + KVP_QK4_0 / 2] * id + 8.5f;
            const uint8_t q0 = !(v0 < 15.0f) ? 15 : v0 > 0.0f ? (uint8_t)v0 : 0;
            const uint8_t q1 = !(v1 < 15.0f) ? 15 : v1 > 0.0f ? (uint8_t)v1 : 0;
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void kvp_q4_0_to_float(const void *src, float *dst, int64_t n) {
    const kvp_block_q4_0 *b = src;
    for (int64_t i = 0; i < n / KVP_QK4_0; i++, dst += KVP_QK4_0) {
        const float d = kvp_f16_to_f32(b[i].d);
        for (int j = 0; j < KVP_QK4_0 / 2; j++) {
            dst[j] = (float)((b[i].qs[j] & 0x0f) - 8) * d;
            dst[j + KVP_QK4_0 / 2] = (float)((b[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void kvp_q4_0_from_float(const float *src, void *dst, int64_t n) {
    kvp_quant_q4_0_ref(src, dst, n);
}

static float kvp_dot_row_q4_0(const void *w, const void *x, int cols) {
    const kvp_block_q4_0 *a = w;
    const kvp_block_q8_0 *b = x;
    double s = 0;
    for (int i = 0; i < cols / KVP_QK4_0; i++) {
        int32_t sumi = 0;
        for (int j = 0; j < KVP_QK4_0 / 2; j++) {
            sumi += ((a[i].qs[j] & 0x0f) - 8) * (int32_t)b[i].qs[j];
            sumi += ((a[i].qs[j] >> 4) - 8) * (int32_t)b[i].qs[j + KVP_QK4_0 / 2];
        }
        s += (double)sumi * (double)(kvp_f16_to_f32(a[i].d) * kvp_f16_to_f32(b[i].d));
    }
    return (float)s;
}

/* ---- the operations table ---- */

static const kvp_type_ops kvp_ops_none = {-1, NULL, NULL, NULL};

static const kvp_type_ops kvp_ops[KVP_TYPE_TABLE_SIZE] = {
    [KVP_TYPE_F32] = {KVP_TYPE_F32, kvp_f32_to_float, kvp_f32_from_float, kvp_dot_row_f32},
    [KVP_TYPE_F16] = {KVP_TYPE_F32, kvp_f16_to_float, kvp_f16_from_float, kvp_dot_row_f16},
    [KVP_TYPE_BF16] = {KVP_TYPE_F32, kvp_bf16_to_float, kvp_bf16_from_float, kvp_dot_row_bf16},
    [KVP_TYPE_Q8_0] = {KVP_TYPE_Q8_0, kvp_q8_0_to_float, kvp_q8_0_from_float, kvp_dot_row_q8_0},
    [KVP_TYPE_Q4_0] = {KVP_TYPE_Q8_0, kvp_q4_0_to_float, kvp_q4_0_from_float, kvp_dot_row_q4_0},
    /* kquants.c: the legacy offset types, the K-quants and their activation types. */
    [KVP_TYPE_Q4_1] = {KVP_TYPE_Q8_1, kvp_q4_1_to_float, NULL, kvp_dot_q4_1_ref},
    [KVP_TYPE_Q5_0] = {KVP_TYPE_Q8_0, kvp_q5_0_to_float, NULL, kvp_dot_q5_0_ref},
    [KVP_TYPE_Q5_1] = {KVP_TYPE_Q8_1, kvp_q5_1_to_float, NULL, kvp_dot_q5_1_ref},
    [KVP_TYPE_Q8_1] = {-1, kvp_q8_1_to_float, kvp_quant_q8_1_ref, NULL},
    [KVP_TYPE_Q2_K] = {KVP_TYPE_Q8_K, kvp_q2_K_to_float, NULL, kvp_dot_q2_K_ref},
    [KVP_TYPE_Q3_K] = {KVP_TYPE_Q8_K, kvp_q3_K_to_float, NULL, kvp_dot_q3_K_ref},
    [KVP_TYPE_Q4_K] = {KVP_TYPE_Q8_K, kvp_q4_K_to_float, NULL, kvp_dot_q4_K_ref},
    [KVP_TYPE_Q5_K] = {KVP_TYPE_Q8_K, kvp_q5_K_to_float, NULL, kvp_dot_q5_K_ref},
    [KVP_TYPE_Q6_K] = {KVP_TYPE_Q8_K, kvp_q6_K_to_float, NULL, kvp_dot_q6_K_ref},
    [KVP_TYPE_Q8_K] = {-1, kvp_q8_K_to_float, kvp_quant_q8_K_ref, NULL},
};

const kvp_type_ops *kvp_type_ops_get(int type) {
    if (!kvp_type_traits_get(type)) return NULL;
    /* Rows left out of the initializer are all zero: act_type 0 would claim F32, so a row
     * without a dot product is reported as the empty row. */
    return kvp_ops[type].dot_ref || kvp_ops[type].to_float ? &kvp_ops[type] : &kvp_ops_none;
}

/* ---- public row conversions ---- */

int kvp_dequant_row(int type, const void *src, float *dst, int64_t n) {
    const kvp_type_traits *t = kvp_type_traits_get(type);
    const kvp_type_ops *o = kvp_type_ops_get(type);
    if (!t || !o) return kvp_seterr(KVP_EINVAL, "dequantize: unknown tensor type %d", type);
    if (!o->to_float)
        return kvp_seterr(KVP_EUNSUPPORTED, "dequantize: type %s is not supported", t->name);
    if (n < 0 || n % t->block_size != 0)
        return kvp_seterr(KVP_EINVAL, "dequantize: %lld values are not whole %s blocks of %d",
                          (long long)n, t->name, t->block_size);
    o->to_float(src, dst, n);
    return KVP_OK;
}

int kvp_quant_row(int type, const float *src, void *dst, int64_t n) {
    const kvp_type_traits *t = kvp_type_traits_get(type);
    const kvp_type_ops *o = kvp_type_ops_get(type);
    if (!t || !o) return kvp_seterr(KVP_EINVAL, "quantize: unknown tensor type %d", type);
    if (!o->from_float)
        return kvp_seterr(KVP_EUNSUPPORTED, "quantize: type %s is not supported", t->name);
    if (n < 0 || n % t->block_size != 0)
        return kvp_seterr(KVP_EINVAL, "quantize: %lld values are not whole %s blocks of %d",
                          (long long)n, t->name, t->block_size);
    o->from_float(src, dst, n);
    return KVP_OK;
}
