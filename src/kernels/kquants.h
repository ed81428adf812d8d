/*
 * kquants.h: the K-quant super-block types (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and the Q8_K
 * activation type) and the legacy types Q4_1, Q5_0, Q5_1 (with the Q8_1 activation type),
 * as GGUF stores them. Internal to the kernels: quant.c puts these functions in its type
 * tables, kernels.c calls the table fillers, and the kernel tests use the rest.
 *
 * Activations. Like llama.cpp, a weight of a K-quant type is multiplied with activations
 * quantized to Q8_K (256 int8 values, a float scale and the sums of each 16 values), Q5_0
 * with Q8_0, and Q4_1 / Q5_1 with Q8_1 (Q8_0 plus the scaled sum of the block, which
 * carries the weights' offset m). The dot products are integer sums per (sub-)block
 * scaled in float, so the results match llama.cpp's within float rounding.
 *
 * Every layout is pinned by _Static_assert in kquants.c; all fields are little-endian.
 */
#ifndef KVP_KQUANTS_H
#define KVP_KQUANTS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels_internal.h"

#define KVP_QK_K 256 /* values per K-quant super-block */

/* Q4_1: value = nibble * d + m. Byte j holds value j (low nibble) and j + 16 (high). */
typedef struct { uint16_t d, m; uint8_t qs[16]; } kvp_block_q4_1;
/* Q5_0: value = (nibble | bit << 4) - 16, times d; bit j of qh is value j's fifth bit. */
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } kvp_block_q5_0;
/* Q5_1: value = (nibble | bit << 4) * d + m. */
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } kvp_block_q5_1;
/* Q8_1 (activations): value = q * d; s = d * sum(q) as F16. */
typedef struct { uint16_t d, s; int8_t qs[32]; } kvp_block_q8_1;

/* Q2_K: 16 groups of 16; scales[g] = 4-bit scale | 4-bit min << 4;
 * value = d * scale * q - dmin * min with q in 0..3. */
typedef struct { uint8_t scales[16]; uint8_t qs[64]; uint16_t d, dmin; } kvp_block_q2_K;
/* Q3_K: 16 groups of 16 with 6-bit scales (offset 32) packed in 12 bytes;
 * value = d * (scale - 32) * (q - (high bit ? 0 : 4)) with q the low 2 bits. */
typedef struct { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; uint16_t d; } kvp_block_q3_K;
/* Q4_K: 8 groups of 32 with 6-bit scales and mins packed in 12 bytes;
 * value = d * scale * q - dmin * min with q in 0..15. */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } kvp_block_q4_K;
/* Q5_K: Q4_K plus a fifth bit per value in qh. */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } kvp_block_q5_K;
/* Q6_K: 16 groups of 16 with int8 scales; value = d * scale * (q - 32), q in 0..63. */
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } kvp_block_q6_K;
/* Q8_K (activations): value = q * d; bsums[g] = sum of q over values [16g, 16g + 16). */
typedef struct { float d; int8_t qs[KVP_QK_K]; int16_t bsums[KVP_QK_K / 16]; } kvp_block_q8_K;

/* The 6-bit scale and min of group j (0..7) of a Q4_K / Q5_K block, unpacked. */
static inline void kvp_kq_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* The 16 signed scales (-32..31) of a Q3_K block, unpacked. */
void kvp_kq_q3_scales(const uint8_t packed[12], int8_t out[16]);

/* Dequantization (n a multiple of the block size), as llama.cpp's dequantize_row_*. */
void kvp_q4_1_to_float(const void *src, float *dst, int64_t n);
void kvp_q5_0_to_float(const void *src, float *dst, int64_t n);
void kvp_q5_1_to_float(const void *src, float *dst, int64_t n);
void kvp_q2_K_to_float(const void *src, float *dst, int64_t n);
void kvp_q3_K_to_float(const void *src, float *dst, int64_t n);
void kvp_q4_K_to_float(const void *src, float *dst, int64_t n);
void kvp_q5_K_to_float(const void *src, float *dst, int64_t n);
void kvp_q6_K_to_float(const void *src, float *dst, int64_t n);
void kvp_q8_K_to_float(const void *src, float *dst, int64_t n);
void kvp_q8_1_to_float(const void *src, float *dst, int64_t n);

/* Activation quantizers, as llama.cpp's quantize_row_q8_K_ref / quantize_row_q8_1_ref. */
void kvp_quant_q8_K_ref(const float *x, void *y, int64_t n);
void kvp_quant_q8_1_ref(const float *x, void *y, int64_t n);

/* Reference dot products of one weight row with one prepared activation row of `cols`
 * values: integer sums per group, scaled and summed in double. */
float kvp_dot_q4_1_ref(const void *w, const void *x, int cols);
float kvp_dot_q5_0_ref(const void *w, const void *x, int cols);
float kvp_dot_q5_1_ref(const void *w, const void *x, int cols);
float kvp_dot_q2_K_ref(const void *w, const void *x, int cols);
float kvp_dot_q3_K_ref(const void *w, const void *x, int cols);
float kvp_dot_q4_K_ref(const void *w, const void *x, int cols);
float kvp_dot_q5_K_ref(const void *w, const void *x, int cols);
float kvp_dot_q6_K_ref(const void *w, const void *x, int cols);

/* Table fillers: the scalar one sets a gemm entry for every type above; the AVX2 and
 * AVX-512 ones override the entries they accelerate (kernels.c applies them in order). */
void kvp_ktable_fill_kquants_scalar(kvp_ktable *t);
void kvp_ktable_fill_kquants_avx2(kvp_ktable *t);
void kvp_ktable_fill_kquants_avx512(kvp_ktable *t);

#endif /* KVP_KQUANTS_H */
