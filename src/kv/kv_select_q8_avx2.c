/*
 * kv_select_q8_avx2.c: AVX2 + FMA twins of the 8-bit row kernels of select.h, compiled with
 * -mavx2 -mfma -mf16c (the Makefile's rule for *_avx2.c) and called only when the kernels'
 * instruction set is avx2 or avx512 (kv_select_attn.c checks). Without those flags they are
 * the scalar references. Each int8 row is widened to floats once (8 lanes at a time) into a
 * small buffer in L1, then multiplied with every query row; results match the references
 * within float rounding (the sums are reassociated).
 */
#include <immintrin.h>

#include "common/common.h"
#include "kv/select.h"

#if defined(__AVX2__) && defined(__FMA__)

#define KVP_Q8_MAXHD 256

/* x (hd floats) = the int8 row r. */
static inline void kvp_q8_widen(const int8_t *r, int hd, float *x) {
    int c = 0;
    for (; c + 8 <= hd; c += 8) {
        __m128i b = _mm_loadl_epi64((const __m128i *)(const void *)(r + c));
        _mm256_storeu_ps(x + c, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)));
    }
    for (; c < hd; c++) x[c] = (float)r[c];
}

static inline float kvp_q8_hsum(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* dot(x, q) over hd values. */
static inline float kvp_q8_dot(const float *x, const float *q, int hd) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int c = 0;
    for (; c + 16 <= hd; c += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c), _mm256_loadu_ps(q + c), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c + 8), _mm256_loadu_ps(q + c + 8), a1);
    }
    for (; c + 8 <= hd; c += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + c), _mm256_loadu_ps(q + c), a0);
    float s = kvp_q8_hsum(_mm256_add_ps(a0, a1));
    for (; c < hd; c++) s += x[c] * q[c];
    return s;
}

/* y (hd) += w * x (hd). */
static inline void kvp_q8_axpy(float *y, float w, const float *x, int hd) {
    const __m256 vw = _mm256_set1_ps(w);
    int c = 0;
    for (; c + 8 <= hd; c += 8)
        _mm256_storeu_ps(y + c, _mm256_fmadd_ps(vw, _mm256_loadu_ps(x + c), _mm256_loadu_ps(y + c)));
    for (; c < hd; c++) y[c] += w * x[c];
}

void kvp_sel_scores_q8_avx2(const int8_t *K, const float *ks, int n, int hd, const float *Q, int nq, int ldq,
                            float scale, float *S, int lds) {
    if (hd > KVP_Q8_MAXHD) {
        kvp_sel_scores_q8_ref(K, ks, n, hd, Q, nq, ldq, scale, S, lds);
        return;
    }
    float x[KVP_Q8_MAXHD];
    for (int t = 0; t < n; t++) {
        kvp_q8_widen(K + (size_t)t * hd, hd, x);
        const float f = scale * ks[t];
        for (int j = 0; j < nq; j++) S[(size_t)j * lds + t] = f * kvp_q8_dot(x, Q + (size_t)j * ldq, hd);
    }
}

void kvp_sel_values_q8_avx2(float *Y, int ldy, int ny, const float *P, int ldp, const int8_t *V,
                            const float *vs, int n, int hd) {
    if (hd > KVP_Q8_MAXHD) {
        kvp_sel_values_q8_ref(Y, ldy, ny, P, ldp, V, vs, n, hd);
        return;
    }
    float x[KVP_Q8_MAXHD];
    for (int t = 0; t < n; t++) {
        kvp_q8_widen(V + (size_t)t * hd, hd, x);
        for (int j = 0; j < ny; j++) {
            const float w = P[(size_t)j * ldp + t] * vs[t];
            if (w != 0) kvp_q8_axpy(Y + (size_t)j * ldy, w, x, hd);
        }
    }
}

#else /* no AVX2 at compile time: the references */

void kvp_sel_scores_q8_avx2(const int8_t *K, const float *ks, int n, int hd, const float *Q, int nq, int ldq,
                            float scale, float *S, int lds) {
    kvp_sel_scores_q8_ref(K, ks, n, hd, Q, nq, ldq, scale, S, lds);
}

void kvp_sel_values_q8_avx2(float *Y, int ldy, int ny, const float *P, int ldp, const int8_t *V,
                            const float *vs, int n, int hd) {
    kvp_sel_values_q8_ref(Y, ldy, ny, P, ldp, V, vs, n, hd);
}

#endif
