/*
 * trellis_avx2.c: the trellis search (trellis.c) over 8 channels at once with AVX2, one
 * channel per lane: the AVX-512 search's operations on half the width. Every float operation
 * is the one the per-channel reference makes, in the same order (no contraction into FMA), so
 * the chosen integers, and the plane's bytes, are identical; tests/test_codec.c compares them.
 */
#include "plane.h"

#if defined(__AVX2__)
#include <immintrin.h>

const int kvp_trellis_avx2_built = 1;

/* Reconstruction levels, in steps, of the integers k for quantizer z: 2 k - z sgn(k). */
static inline __m256 kvp_t8_level(__m256i k, int z) {
    __m256i two = _mm256_add_epi32(k, k);
    if (z) two = _mm256_sub_epi32(two, _mm256_sign_epi32(_mm256_set1_epi32(1), k));
    return _mm256_cvtepi32_ps(two);
}

typedef struct {
    __m256i ke, ko;
    __m256 de, dq;
} kvp_t8_pair;

static inline __m256i kvp_t8_negate_if(__m256i v, __m256i neg) {
    return _mm256_blendv_epi8(v, _mm256_sub_epi32(_mm256_setzero_si256(), v), neg);
}

/* The even and odd candidates of quantizer z around y, lo the lower magnitude; neg: lanes
 * with y < 0 (all ones). */
static inline kvp_t8_pair kvp_t8_candidates(__m256 y, __m256i neg, __m256i lo, int z) {
    __m256i ka = kvp_t8_negate_if(lo, neg), kb = kvp_t8_negate_if(_mm256_add_epi32(lo, _mm256_set1_epi32(1)), neg);
    __m256 ea = _mm256_sub_ps(y, kvp_t8_level(ka, z)), eb = _mm256_sub_ps(y, kvp_t8_level(kb, z));
    ea = _mm256_mul_ps(ea, ea);
    eb = _mm256_mul_ps(eb, eb);
    __m256i odd = _mm256_cmpeq_epi32(_mm256_and_si256(ka, _mm256_set1_epi32(1)), _mm256_set1_epi32(1));
    kvp_t8_pair p;
    p.ke = _mm256_blendv_epi8(ka, kb, odd);
    p.ko = _mm256_blendv_epi8(kb, ka, odd);
    p.de = _mm256_blendv_ps(ea, eb, _mm256_castsi256_ps(odd));
    p.dq = _mm256_blendv_ps(eb, ea, _mm256_castsi256_ps(odd));
    return p;
}

/* lambda times the price of residual k - pred, from each lane's table. */
static inline __m256 kvp_t8_price(__m256i k, __m256i pred, __m256i off, const float *tab, __m256 lambda) {
    __m256i r = _mm256_sub_epi32(k, pred);
    __m256i u = _mm256_xor_si256(_mm256_slli_epi32(r, 1), _mm256_srai_epi32(r, 31));
    u = _mm256_min_epu32(u, _mm256_set1_epi32(KVP_TRELLIS_TAB - 1));
    return _mm256_mul_ps(lambda, _mm256_i32gather_ps(tab, _mm256_add_epi32(u, off), 4));
}

/* The survivor of next state ns from costs a (first predecessor, integer ka) and b. */
static inline __m256 kvp_t8_pick(__m256 a, __m256 b, __m256i ka, __m256i kb, int32_t *tk, uint16_t *tb,
                                 __m256i *last) {
    __m256 take_b = _mm256_cmp_ps(a, b, _CMP_NLE_UQ);
    *last = _mm256_blendv_epi8(ka, kb, _mm256_castps_si256(take_b));
    _mm256_storeu_si256((__m256i *)tk, *last);
    *tb = (uint16_t)_mm256_movemask_ps(take_b);
    return _mm256_blendv_ps(a, b, take_b);
}

void kvp_trellis_block8_avx2(const float *x, int n, int d, float inv, float lambda, const int32_t *m,
                             const int32_t *delta, const int32_t *off, const float *tab, int32_t *tk, uint16_t *tb,
                             float *J) {
    const __m256 lim = _mm256_set1_ps((float)(KVP_PLANE_QMAX - 4)), vinv = _mm256_set1_ps(inv);
    const __m256 vl = _mm256_set1_ps(lambda), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    const __m256 sign = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps();
    const __m256i vm = _mm256_loadu_si256((const __m256i *)m), voff = _mm256_loadu_si256((const __m256i *)off);
    const __m256i dmask = _mm256_loadu_si256((const __m256i *)delta);
    __m256 j[4] = {zero, _mm256_set1_ps(KVP_TRELLIS_INF), _mm256_set1_ps(KVP_TRELLIS_INF),
                   _mm256_set1_ps(KVP_TRELLIS_INF)};
    __m256i last[4] = {vm, vm, vm, vm};
    int any_delta = !_mm256_testz_si256(dmask, dmask);
    for (int t = 0; t < n; t++) {
        __m256 y = _mm256_mul_ps(_mm256_loadu_ps(x + (size_t)t * d), vinv);
        y = _mm256_min_ps(_mm256_max_ps(y, _mm256_sub_ps(zero, lim)), lim);
        __m256 a = _mm256_andnot_ps(sign, y);
        __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(y, zero, _CMP_LT_OQ));
        __m256 small = _mm256_cmp_ps(a, one, _CMP_LT_OQ);
        __m256i lo1 = _mm256_cvttps_epi32(_mm256_mul_ps(_mm256_add_ps(a, one), half));
        lo1 = _mm256_andnot_si256(_mm256_castps_si256(small), lo1);
        kvp_t8_pair q[2] = {kvp_t8_candidates(y, neg, _mm256_cvttps_epi32(_mm256_mul_ps(a, half)), 0),
                            kvp_t8_candidates(y, neg, lo1, 1)};
        __m256 ce[4], co[4], pe = zero, po = zero;
        int dm = t > 0 && any_delta;
        for (int s = 0; s < 4; s++) {
            const kvp_t8_pair *p = &q[s >> 1];
            if (dm || !(s & 1)) { /* without delta lanes, both states of a quantizer price alike */
                __m256i pred = dm ? _mm256_blendv_epi8(vm, last[s], dmask) : vm;
                pe = kvp_t8_price(p->ke, pred, voff, tab, vl);
                po = kvp_t8_price(p->ko, pred, voff, tab, vl);
            }
            ce[s] = _mm256_add_ps(j[s], _mm256_add_ps(p->de, pe));
            co[s] = _mm256_add_ps(j[s], _mm256_add_ps(p->dq, po));
        }
        int32_t *k = tk + (size_t)t * 32;
        uint16_t *b = tb + (size_t)t * 4;
        j[0] = kvp_t8_pick(ce[0], co[1], q[0].ke, q[0].ko, k, b, &last[0]);
        j[1] = kvp_t8_pick(ce[2], co[3], q[1].ke, q[1].ko, k + 8, b + 1, &last[1]);
        j[2] = kvp_t8_pick(co[0], ce[1], q[0].ko, q[0].ke, k + 16, b + 2, &last[2]);
        j[3] = kvp_t8_pick(co[2], ce[3], q[1].ko, q[1].ke, k + 24, b + 3, &last[3]);
    }
    for (int s = 0; s < 4; s++) _mm256_storeu_ps(J + 8 * s, j[s]);
}

#else /* built without the AVX2 flags: trellis.c keeps to the per-channel search */

const int kvp_trellis_avx2_built = 0;

void kvp_trellis_block8_avx2(const float *x, int n, int d, float inv, float lambda, const int32_t *m,
                             const int32_t *delta, const int32_t *off, const float *tab, int32_t *tk, uint16_t *tb,
                             float *J) {
    (void)x, (void)n, (void)d, (void)inv, (void)lambda, (void)m, (void)delta, (void)off, (void)tab, (void)tk;
    (void)tb, (void)J;
}

#endif
