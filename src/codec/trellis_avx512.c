/*
 * trellis_avx512.c: the trellis search (trellis.c) over 16 channels at once, one channel per
 * lane. Every float operation is the one the per-channel reference makes, in the same order
 * (no contraction into FMA), so the chosen integers, and the plane's bytes, are identical;
 * tests/test_codec.c compares the two.
 */


#include "plane.h"

#if defined(__AVX512F__)
#include <immintrin.h>

const int kvp_trellis_avx512_built = 1;

/* Reconstruction levels, in steps, of the integers k for quantizer z: 2 k - z sgn(k). */
static inline __m512 kvp_tv_level(__m512i k, int z) {
    __m512i two = _mm512_add_epi32(k, k);
    if (z) {
        __mmask16 pos = _mm512_cmpgt_epi32_mask(k, _mm512_setzero_si512());
        __mmask16 neg = _mm512_cmplt_epi32_mask(k, _mm512_setzero_si512());
        two = _mm512_mask_sub_epi32(two, pos, two, _mm512_set1_epi32(1));
        two = _mm512_mask_add_epi32(two, neg, two, _mm512_set1_epi32(1));
    }
    return _mm512_cvtepi32_ps(two);
}

typedef struct {
    __m512i ke, ko;
    __m512 de, dq;
} kvp_tv_pair;

/* The even and odd candidates of quantizer z around y (|y| = a), lo the lower magnitude. */
static inline kvp_tv_pair kvp_tv_candidates(__m512 y, __mmask16 neg, __m512i lo, int z) {
    __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(1));
    __m512i ka = _mm512_mask_sub_epi32(lo, neg, _mm512_setzero_si512(), lo);
    __m512i kb = _mm512_mask_sub_epi32(hi, neg, _mm512_setzero_si512(), hi);
    __m512 ea = _mm512_sub_ps(y, kvp_tv_level(ka, z)), eb = _mm512_sub_ps(y, kvp_tv_level(kb, z));
    ea = _mm512_mul_ps(ea, ea);
    eb = _mm512_mul_ps(eb, eb);
    __mmask16 odd = _mm512_test_epi32_mask(ka, _mm512_set1_epi32(1));
    kvp_tv_pair p;
    p.ke = _mm512_mask_blend_epi32(odd, ka, kb);
    p.ko = _mm512_mask_blend_epi32(odd, kb, ka);
    p.de = _mm512_mask_blend_ps(odd, ea, eb);
    p.dq = _mm512_mask_blend_ps(odd, eb, ea);
    return p;
}

/* lambda times the price of residual k - pred, from each lane's table. */
static inline __m512 kvp_tv_price(__m512i k, __m512i pred, __m512i off, const float *tab, __m512 lambda) {
    __m512i r = _mm512_sub_epi32(k, pred);
    __m512i u = _mm512_xor_si512(_mm512_slli_epi32(r, 1), _mm512_srai_epi32(r, 31));
    u = _mm512_min_epu32(u, _mm512_set1_epi32(KVP_TRELLIS_TAB - 1));
    return _mm512_mul_ps(lambda, _mm512_i32gather_ps(_mm512_add_epi32(u, off), tab, 4));
}

/* The survivor of next state ns from costs a (first predecessor, integer ka) and b. */
static inline __m512 kvp_tv_pick(__m512 a, __m512 b, __m512i ka, __m512i kb, int32_t *tk, uint16_t *tb,
                                 __m512i *last) {
    __mmask16 take_b = _mm512_cmp_ps_mask(a, b, _CMP_NLE_UQ);
    *last = _mm512_mask_blend_epi32(take_b, ka, kb);
    _mm512_storeu_si512(tk, *last);
    *tb = (uint16_t)take_b;
    return _mm512_mask_blend_ps(take_b, a, b);
}

void kvp_trellis_block16_avx512(const float *x, int n, int d, float inv, float lambda, const int32_t *m,
                                const int32_t *delta, const int32_t *off, const float *tab, int32_t *tk,
                                uint16_t *tb, float *J) {
    const __m512 lim = _mm512_set1_ps((float)(KVP_PLANE_QMAX - 4)), vinv = _mm512_set1_ps(inv);
    const __m512 vl = _mm512_set1_ps(lambda), half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    const __m512i vm = _mm512_loadu_si512(m), voff = _mm512_loadu_si512(off);
    const __mmask16 dmask = _mm512_test_epi32_mask(_mm512_loadu_si512(delta), _mm512_loadu_si512(delta));
    __m512 j[4] = {_mm512_setzero_ps(), _mm512_set1_ps(KVP_TRELLIS_INF), _mm512_set1_ps(KVP_TRELLIS_INF),
                   _mm512_set1_ps(KVP_TRELLIS_INF)};
    __m512i last[4] = {vm, vm, vm, vm};
    for (int t = 0; t < n; t++) {
        __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x + (size_t)t * d), vinv);
        y = _mm512_min_ps(_mm512_max_ps(y, _mm512_sub_ps(_mm512_setzero_ps(), lim)), lim);
        __m512 a = _mm512_abs_ps(y);
        __mmask16 neg = _mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_LT_OQ);
        __mmask16 small = _mm512_cmp_ps_mask(a, one, _CMP_LT_OQ);
        __m512i lo1 = _mm512_cvttps_epi32(_mm512_mul_ps(_mm512_add_ps(a, one), half));
        kvp_tv_pair q[2] = {kvp_tv_candidates(y, neg, _mm512_cvttps_epi32(_mm512_mul_ps(a, half)), 0),
                            kvp_tv_candidates(y, neg, _mm512_maskz_mov_epi32((__mmask16)~small, lo1), 1)};
        __m512 ce[4], co[4], pe = _mm512_setzero_ps(), po = pe;
        __mmask16 dm = t > 0 ? dmask : 0;
        for (int s = 0; s < 4; s++) {
            const kvp_tv_pair *p = &q[s >> 1];
            if (dm || !(s & 1)) { /* without delta lanes, both states of a quantizer price alike */
                __m512i pred = _mm512_mask_blend_epi32(dm, vm, last[s]);
                pe = kvp_tv_price(p->ke, pred, voff, tab, vl);
                po = kvp_tv_price(p->ko, pred, voff, tab, vl);
            }
            ce[s] = _mm512_add_ps(j[s], _mm512_add_ps(p->de, pe));
            co[s] = _mm512_add_ps(j[s], _mm512_add_ps(p->dq, po));
        }
        int32_t *k = tk + (size_t)t * 64;
        uint16_t *b = tb + (size_t)t * 4;
        j[0] = kvp_tv_pick(ce[0], co[1], q[0].ke, q[0].ko, k, b, &last[0]);
        j[1] = kvp_tv_pick(ce[2], co[3], q[1].ke, q[1].ko, k + 16, b + 1, &last[1]);
        j[2] = kvp_tv_pick(co[0], ce[1], q[0].ko, q[0].ke, k + 32, b + 2, &last[2]);
        j[3] = kvp_tv_pick(co[2], ce[3], q[1].ko, q[1].ke, k + 48, b + 3, &last[3]);
    }
    for (int s = 0; s < 4; s++) _mm512_storeu_ps(J + 16 * s, j[s]);
}

void kvp_trellis_back16_avx512(const int32_t *tk, const uint16_t *tb, const float *J, int n, int d, int32_t *q) {
    __m512 best = _mm512_loadu_ps(J);
    __m512i s = _mm512_setzero_si512(), one = _mm512_set1_epi32(1);
    for (int i = 1; i < 4; i++) { /* the first least cost, as kvp_trellis_best */
        __m512 ji = _mm512_loadu_ps(J + 16 * i);
        __mmask16 lt = _mm512_cmp_ps_mask(ji, best, _CMP_LT_OQ);
        s = _mm512_mask_mov_epi32(s, lt, _mm512_set1_epi32(i));
        best = _mm512_mask_mov_ps(best, lt, ji);
    }
    for (int t = n - 1; t >= 0; t--) {
        const int32_t *k = tk + (size_t)t * 64;
        const uint16_t *b = tb + (size_t)t * 4;
        __mmask16 e1 = _mm512_cmpeq_epi32_mask(s, one), e2 = _mm512_cmpeq_epi32_mask(s, _mm512_set1_epi32(2));
        __mmask16 e3 = _mm512_cmpeq_epi32_mask(s, _mm512_set1_epi32(3)), e0 = (__mmask16)~(e1 | e2 | e3);
        __m512i v = _mm512_loadu_si512(k);
        v = _mm512_mask_loadu_epi32(v, e1, k + 16);
        v = _mm512_mask_loadu_epi32(v, e2, k + 32);
        v = _mm512_mask_loadu_epi32(v, e3, k + 48);
        _mm512_storeu_si512(q + (size_t)t * d, v);
        __mmask16 bit = (__mmask16)((e0 & b[0]) | (e1 & b[1]) | (e2 & b[2]) | (e3 & b[3]));
        s = _mm512_mask_add_epi32(_mm512_slli_epi32(_mm512_and_si512(s, one), 1), bit,
                                  _mm512_slli_epi32(_mm512_and_si512(s, one), 1), one);
    }
}

#else /* built without the AVX-512 flags: trellis.c keeps to the per-channel search */

const int kvp_trellis_avx512_built = 0;

void kvp_trellis_block16_avx512(const float *x, int n, int d, float inv, float lambda, const int32_t *m,
                                const int32_t *delta, const int32_t *off, const float *tab, int32_t *tk,
                                uint16_t *tb, float *J) {
    (void)x, (void)n, (void)d, (void)inv, (void)lambda, (void)m, (void)delta, (void)off, (void)tab, (void)tk;
    (void)tb, (void)J;
}

void kvp_trellis_back16_avx512(const int32_t *tk, const uint16_t *tb, const float *J, int n, int d, int32_t *q) {
    (void)tk, (void)tb, (void)J, (void)n, (void)d, (void)q;
}

#endif
