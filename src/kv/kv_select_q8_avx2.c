/*
 * kv_select_q8_avx2.c: the AVX2 twin of kvp_sel_dequant_q8 (select.h), compiled with
 * -mavx2 -mfma -mf16c (the Makefile's rule for *_avx2.c) and called only when the kernels'
 * instruction set is avx2 or avx512 (kv_select_attn.c checks). Without those flags it is
 * the scalar reference. The result is bit-identical to the reference: each value is one
 * int8-to-float conversion and one multiplication by its row's scale.
 */
#include <immintrin.h>

#include "common/common.h"
#include "kv/select.h"

#if defined(__AVX2__) && defined(__FMA__)

void kvp_sel_dequant_q8_avx2(const int8_t *q, const float *scale, int n, int hd, float *x) {
    for (int t = 0; t < n; t++) {
        const int8_t *r = q + (size_t)t * hd;
        float *o = x + (size_t)t * hd;
        const __m256 s = _mm256_set1_ps(scale[t]);
        int c = 0;
        for (; c + 8 <= hd; c += 8) {
            __m128i b = _mm_loadl_epi64((const __m128i *)(const void *)(r + c));
            _mm256_storeu_ps(o + c, _mm256_mul_ps(s, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b))));
        }
        for (; c < hd; c++) o[c] = scale[t] * (float)r[c];
    }
}

#else /* no AVX2 at compile time: the reference */

void kvp_sel_dequant_q8_avx2(const int8_t *q, const float *scale, int n, int hd, float *x) {
    kvp_sel_dequant_q8_ref(q, scale, n, hd, x);
}

#endif
