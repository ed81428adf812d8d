/*
 * kquants_avx512.c: AVX-512 dot-product kernels of Q4_K, Q5_K and Q6_K (the types of
 * Q4_K_M and Q5_K_M files) with Q8_K activations. Compiled with the AVX-512 flags of the
 * Makefile; kernels.c installs them only when the CPU has them. The other types keep their
 * AVX2 kernels (kquants_avx2.c), which this instruction set also runs.
 *
 * The method is that of kquants_avx2.c with 64-byte steps: the unsigned weight values of
 * two groups of 32 (Q4_K, Q5_K) or four groups of 16 (Q6_K) fill one 512-bit register,
 * vpmaddubsw multiplies them with 64 activations, and vpdpwssd (VNNI) applies the groups'
 * scales and accumulates into int32 lanes. The Q6_K offset of 32 is subtracted through
 * the activations' group sums once per block. Results equal the reference in kquants.c
 * within float rounding.
 */
#include <immintrin.h>
#include <string.h>

#include "common/common.h"
#include "kernels/kquants.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512VNNI__) && defined(__FMA__) && defined(__F16C__)

#define KVP_AI static inline __attribute__((always_inline))
#define KVP_KQ_RB 16 /* weight rows per block of a matrix product */

KVP_AI float kvp_kq5_hsum(__m512 a) { return _mm512_reduce_add_ps(a); }

/* The 6-bit scales (words 0..7) and mins (words 8..15) of a Q4_K / Q5_K block as int16. */
KVP_AI __m256i kvp_kq5_scales_mins(const uint8_t *s12) {
    uint32_t u[3], v[4];
    memcpy(u, s12, 12);
    v[0] = u[0] & 0x3f3f3f3fu;
    v[1] = (u[2] & 0x0f0f0f0fu) | ((u[0] >> 2) & 0x30303030u);
    v[2] = u[1] & 0x3f3f3f3fu;
    v[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | ((u[1] >> 2) & 0x30303030u);
    return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)v));
}

/* int16 lanes: 16 copies of word a of w, then 16 copies of word b (w: 16 words). */
KVP_AI __m512i kvp_kq5_words2(__m256i w, int a, int b) {
    const __m512i idx = _mm512_inserti64x4(_mm512_set1_epi16((short)a), _mm256_set1_epi16((short)b), 1);
    return _mm512_permutexvar_epi16(idx, _mm512_castsi256_si512(w));
}

/* int16 lanes: 8 copies each of words a, a+1, a+2, a+3 of w (16 words). */
KVP_AI __m512i kvp_kq5_words4(__m256i w, int a) {
    const __m512i idx = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16((short)a)),
                                                       _mm_set1_epi16((short)(a + 1)), 1)),
        _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi16((short)(a + 2))),
                                _mm_set1_epi16((short)(a + 3)), 1), 1);
    return _mm512_permutexvar_epi16(idx, _mm512_castsi256_si512(w));
}

/* The two 32-byte halves (lo, hi) as one 512-bit register. */
KVP_AI __m512i kvp_kq5_join(__m256i lo, __m256i hi) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* The sum over groups of 32 of mins * (pairs of bsums), as float. */
KVP_AI float kvp_kq5_min_sum(__m256i sm, const kvp_block_q8_K *b) {
    const __m256i bs = _mm256_loadu_si256((const __m256i *)b->bsums);
    const __m128i b32 = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
    __m128i p = _mm_madd_epi16(_mm256_extracti128_si256(sm, 1), b32);
    p = _mm_add_epi32(p, _mm_shuffle_epi32(p, _MM_SHUFFLE(1, 0, 3, 2)));
    p = _mm_add_epi32(p, _mm_shuffle_epi32(p, _MM_SHUFFLE(2, 3, 0, 1)));
    return (float)_mm_cvtsi128_si32(p);
}

/* Q4_K (qh NULL) or Q5_K: one block's sum over the groups of scale * dot(u, x). */
KVP_AI __m512i kvp_kq5_k4_groups(const uint8_t *qs, const uint8_t *qh, __m256i sm, const int8_t *xq) {
    const __m256i m4 = _mm256_set1_epi8(15);
    __m512i sumi = _mm512_setzero_si512();
#pragma GCC unroll 4
    for (int j = 0; j < 4; j++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
        __m512i u = kvp_kq5_join(_mm256_and_si256(q, m4), _mm256_and_si256(_mm256_srli_epi16(q, 4), m4));
        if (qh) {
            const __m512i h = kvp_kq5_join(_mm256_loadu_si256((const __m256i *)qh), _mm256_loadu_si256((const __m256i *)qh));
            const __m512i sh = kvp_kq5_join(_mm256_set1_epi16((short)(2 * j)), _mm256_set1_epi16((short)(2 * j + 1)));
            const __m512i bit = _mm512_and_si512(_mm512_srlv_epi16(h, sh), _mm512_set1_epi8(1));
            u = _mm512_or_si512(u, _mm512_slli_epi16(bit, 4));
        }
        const __m512i p = _mm512_maddubs_epi16(u, _mm512_loadu_si512(xq + 64 * j));
        sumi = _mm512_dpwssd_epi32(sumi, p, kvp_kq5_words2(sm, 2 * j, 2 * j + 1));
    }
    return sumi;
}

KVP_AI __m512 kvp_dot16_q4_K(const void *wv, const void *xv, int nb) {
    const kvp_block_q4_K *w = wv;
    const kvp_block_q8_K *x = xv;
    __m512 acc = _mm512_setzero_ps();
    float mins = 0;
    for (int i = 0; i < nb; i++) {
        const __m256i sm = kvp_kq5_scales_mins(w[i].scales);
        mins += x[i].d * kvp_f16_to_f32(w[i].dmin) * kvp_kq5_min_sum(sm, &x[i]);
        const __m512i s = kvp_kq5_k4_groups(w[i].qs, NULL, sm, x[i].qs);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(x[i].d * kvp_f16_to_f32(w[i].d)), _mm512_cvtepi32_ps(s), acc);
    }
    return _mm512_sub_ps(acc, _mm512_zextps128_ps512(_mm_set_ss(mins)));
}

KVP_AI __m512 kvp_dot16_q5_K(const void *wv, const void *xv, int nb) {
    const kvp_block_q5_K *w = wv;
    const kvp_block_q8_K *x = xv;
    __m512 acc = _mm512_setzero_ps();
    float mins = 0;
    for (int i = 0; i < nb; i++) {
        const __m256i sm = kvp_kq5_scales_mins(w[i].scales);
        mins += x[i].d * kvp_f16_to_f32(w[i].dmin) * kvp_kq5_min_sum(sm, &x[i]);
        const __m512i s = kvp_kq5_k4_groups(w[i].qs, w[i].qh, sm, x[i].qs);
        acc = _mm512_fmadd_ps(_mm512_set1_ps(x[i].d * kvp_f16_to_f32(w[i].d)), _mm512_cvtepi32_ps(s), acc);
    }
    return _mm512_sub_ps(acc, _mm512_zextps128_ps512(_mm_set_ss(mins)));
}

KVP_AI __m512 kvp_dot16_q6_K(const void *wv, const void *xv, int nb) {
    const kvp_block_q6_K *w = wv;
    const kvp_block_q8_K *x = xv;
    const __m512i m4 = _mm512_set1_epi8(15), m2 = _mm512_set1_epi8(3);
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const kvp_block_q6_K *a = &w[i];
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)a->scales));
        const __m256i bs = _mm256_loadu_si256((const __m256i *)x[i].bsums);
        __m512i sumi = _mm512_setzero_si512();
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) { /* values [64k, 64k + 64): half k/2, chunks j, j+1 */
            const int h = k / 2, j = 2 * (k % 2);
            const __m512i ql = _mm512_loadu_si512(a->ql + 64 * h);
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(a->qh + 32 * h));
            const __m512i sh = kvp_kq5_join(_mm256_set1_epi16((short)(2 * j)), _mm256_set1_epi16((short)(2 * j + 2)));
            const __m512i hi = _mm512_and_si512(_mm512_srlv_epi16(kvp_kq5_join(qh, qh), sh), m2);
            const __m512i lo = _mm512_and_si512(_mm512_srli_epi16(ql, 2 * j), m4); /* j is 0 or 2: shift 0 or 4 */
            const __m512i u = _mm512_or_si512(lo, _mm512_slli_epi16(hi, 4));
            const __m512i p = _mm512_maddubs_epi16(u, _mm512_loadu_si512(x[i].qs + 64 * k));
            sumi = _mm512_dpwssd_epi32(sumi, p, kvp_kq5_words4(sc16, 4 * k));
        }
        const __m256i off = _mm256_madd_epi16(sc16, bs);
        sumi = _mm512_sub_epi32(sumi, _mm512_zextsi256_si512(_mm256_slli_epi32(off, 5)));
        acc = _mm512_fmadd_ps(_mm512_set1_ps(x[i].d * kvp_f16_to_f32(a->d)), _mm512_cvtepi32_ps(sumi), acc);
    }
    return acc;
}

/* Y[i*ldy + r] = dot(W row r, X row i) with the 16-lane dot `dot16` of one weight type. */
#define KVP_KQ5_GEMM(name, WBLK)                                                              \
    static void kvp_gemm_##name##_avx512(const void *w, int cols, const void *xp, int n,      \
                                         float *y, int ldy, int r0, int r1) {                 \
        const int nb = cols / KVP_QK_K;                                                       \
        const size_t wrow = (size_t)nb * sizeof(WBLK), xrow = (size_t)nb * sizeof(kvp_block_q8_K); \
        for (int rb = r0; rb < r1; rb += KVP_KQ_RB) {                                         \
            const int re = KVP_MIN(r1, rb + KVP_KQ_RB);                                       \
            for (int i = 0; i < n; i++) {                                                     \
                const char *x = (const char *)xp + (size_t)i * xrow, *wr = w;                 \
                for (int r = rb; r < re; r++)                                                 \
                    y[(size_t)i * ldy + r] = kvp_kq5_hsum(kvp_dot16_##name(wr + (size_t)r * wrow, x, nb)); \
            }                                                                                 \
        }                                                                                     \
    }

KVP_KQ5_GEMM(q4_K, kvp_block_q4_K)
KVP_KQ5_GEMM(q5_K, kvp_block_q5_K)
KVP_KQ5_GEMM(q6_K, kvp_block_q6_K)

void kvp_ktable_fill_kquants_avx512(kvp_ktable *t) {
    t->gemm[KVP_TYPE_Q4_K] = kvp_gemm_q4_K_avx512;
    t->gemm[KVP_TYPE_Q5_K] = kvp_gemm_q5_K_avx512;
    t->gemm[KVP_TYPE_Q6_K] = kvp_gemm_q6_K_avx512;
}

#else /* built without the AVX-512 flags: the table keeps the AVX2 kernels */

void kvp_ktable_fill_kquants_avx512(kvp_ktable *t) { (void)t; }

#endif
