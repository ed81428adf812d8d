/*
 * kvq_avx2.c: attention on packed KV tiles with AVX2 (see kvq.h for the layouts).
 * Compiled with -mavx2 -mfma -mf16c; only called when the CPU has them.
 *
 * One unit (32 codes: 8 lanes of 4) is decoded per register. Without VNNI the 4-wide byte
 * dot products are vpmaddubsw (unsigned x signed bytes, pairs summed into int16) followed
 * by vpmaddwd with ones. That is exact while a pair sum stays below 32767: 2 * 15 * 255 for
 * codes of up to 4 bits. 8-bit codes take the 16-bit path instead (bytes widened to int16,
 * vpmaddwd, then vphaddd, which leaves the 8 lanes in the order 0 1 4 5 2 3 6 7 until one
 * permute at the end).
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "common/common.h"
#include "kernels/kvq.h"

#if defined(__AVX2__) && defined(__FMA__)

#define KVP_AI static inline __attribute__((always_inline))
#define KVQ_JB 4 /* query rows per pass */

KVP_AI uint64_t kvq_ld64(const uint8_t *p) {
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}

KVP_AI uint32_t kvq_ld32(const uint8_t *p) {
    uint32_t x;
    memcpy(&x, p, 4);
    return x;
}

/* The 32 codes of the unit at p, one per byte. */
KVP_AI __m256i kvq_decode(const int bits, const uint8_t *p) {
    if (bits == 8) return _mm256_loadu_si256((const __m256i *)p);
    if (bits == 4) {
        const __m128i x = _mm_loadu_si128((const __m128i *)p);
        return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(x, 4), x), _mm256_set1_epi8(15));
    }
    __m256i y = _mm256_srlv_epi64(_mm256_set1_epi64x((long long)kvq_ld64(p)), _mm256_set_epi64x(6, 4, 2, 0));
    y = _mm256_and_si256(y, _mm256_set1_epi8(3));
    if (bits == 3) { /* byte k gets 4 when bit k of the plane is set */
        const __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)kvq_ld32(p + 8)),
                                              _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                               2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
        const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
        const __m256i hit = _mm256_cmpeq_epi8(_mm256_and_si256(b, sel), sel);
        y = _mm256_or_si256(y, _mm256_and_si256(hit, _mm256_set1_epi8(4)));
    }
    return y;
}

/* Lane-wise 4-byte dot products of unsigned u and signed s (both as bytes), for values
 * whose pair sums fit int16 (see the header comment). */
KVP_AI __m256i kvq_dot_bytes(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* The same through int16: x holds 8 lanes of 4 bytes (signed when sx), f4 the 4 factors of
 * every lane as int16 (in both 64-bit halves of each 128-bit lane). Lane order 0 1 4 5 2 3 6 7. */
KVP_AI __m256i kvq_dot_wide(__m256i x, int sx, __m256i f4) {
    const __m128i lo = _mm256_castsi256_si128(x), hi = _mm256_extracti128_si256(x, 1);
    const __m256i a = sx ? _mm256_cvtepi8_epi16(lo) : _mm256_cvtepu8_epi16(lo);
    const __m256i b = sx ? _mm256_cvtepi8_epi16(hi) : _mm256_cvtepu8_epi16(hi);
    return _mm256_hadd_epi32(_mm256_madd_epi16(a, f4), _mm256_madd_epi16(b, f4));
}

/* Restores the lane order of an accumulator of kvq_dot_wide. */
KVP_AI __m256i kvq_unwide(__m256i acc) {
    return _mm256_permutevar8x32_epi32(acc, _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7));
}

/* 4 bytes at p widened to int16 and repeated over the register. */
KVP_AI __m256i kvq_bcast16(const uint8_t *p, int sx) {
    const __m128i x = _mm_cvtsi32_si128((int)kvq_ld32(p));
    return _mm256_broadcastq_epi64(sx ? _mm_cvtepi8_epi16(x) : _mm_cvtepu8_epi16(x));
}

/* ---------------------------------------------------------------------------------------
 * Scores.
 * ------------------------------------------------------------------------------------- */

/* S rows [j0, j0 + JB) for the NT units of 8 tokens starting at token t0. */
KVP_AI void kvq_scores_pass(const int bits, const int JB, const int NT, const kvp_kvq_ktile *k,
                            const kvp_kvq_rows *q, int j0, int t0, float *S, int lds, int accum) {
    const size_t ub = kvp_kvq_unit_bytes(bits), row_bytes = (size_t)(k->n_tok / 8) * ub;
    const uint8_t *qx = (const uint8_t *)q->x + (size_t)j0 * q->ld;
    __m256i acc[KVQ_JB][2];
#pragma GCC unroll 4
    for (int j = 0; j < JB; j++)
        for (int n = 0; n < NT; n++) acc[j][n] = _mm256_setzero_si256();
    const uint8_t *p = k->codes + (size_t)(t0 / 8) * ub;
    for (int r = 0; r < k->n_rows; r++, p += row_bytes) {
        const __m256i c0 = kvq_decode(bits, p);
        const __m256i c1 = NT == 2 ? kvq_decode(bits, p + ub) : c0;
#pragma GCC unroll 4
        for (int j = 0; j < JB; j++) {
            const uint8_t *qj = qx + (size_t)j * q->ld + 4 * r;
            if (bits == 8) {
                const __m256i f4 = kvq_bcast16(qj, 1);
                acc[j][0] = _mm256_add_epi32(acc[j][0], kvq_dot_wide(c0, 0, f4));
                if (NT == 2) acc[j][1] = _mm256_add_epi32(acc[j][1], kvq_dot_wide(c1, 0, f4));
            } else {
                const __m256i qb = _mm256_set1_epi32((int)kvq_ld32(qj));
                acc[j][0] = _mm256_add_epi32(acc[j][0], kvq_dot_bytes(c0, qb));
                if (NT == 2) acc[j][1] = _mm256_add_epi32(acc[j][1], kvq_dot_bytes(c1, qb));
            }
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < JB; j++)
        for (int n = 0; n < NT; n++) {
            const int t = t0 + 8 * n;
            __m256 f = _mm256_cvtepi32_ps(bits == 8 ? kvq_unwide(acc[j][n]) : acc[j][n]);
            if (k->a) f = _mm256_mul_ps(f, _mm256_loadu_ps(k->a + t));
            const __m256 mb = k->m ? _mm256_loadu_ps(k->m + t) : _mm256_set1_ps(1.0f);
            __m256 v = _mm256_fmadd_ps(_mm256_set1_ps(q->alpha[j0 + j]), f,
                                       _mm256_mul_ps(_mm256_set1_ps(q->beta[j0 + j]), mb));
            float *s = S + (size_t)(j0 + j) * lds + t;
            if (accum) v = _mm256_add_ps(v, _mm256_loadu_ps(s));
            _mm256_storeu_ps(s, v);
        }
}

KVP_AI void kvq_scores_rows(const int bits, const int JB, const kvp_kvq_ktile *k, const kvp_kvq_rows *q,
                            int j0, float *S, int lds, int accum) {
    for (int t = 0; t < k->n_tok; t += 16) kvq_scores_pass(bits, JB, 2, k, q, j0, t, S, lds, accum);
}

KVP_AI void kvq_scores_bits(const int bits, const kvp_kvq_ktile *k, const kvp_kvq_rows *q, float *S, int lds,
                            int accum) {
    for (int j0 = 0; j0 < q->nq; j0 += KVQ_JB) {
        switch (KVP_MIN(KVQ_JB, q->nq - j0)) {
        case 1: kvq_scores_rows(bits, 1, k, q, j0, S, lds, accum); break;
        case 2: kvq_scores_rows(bits, 2, k, q, j0, S, lds, accum); break;
        case 3: kvq_scores_rows(bits, 3, k, q, j0, S, lds, accum); break;
        default: kvq_scores_rows(bits, 4, k, q, j0, S, lds, accum); break;
        }
    }
}

static void kvp_kvq_scores_avx2(const kvp_kvq_ktile *k, const kvp_kvq_rows *q, float *S, int lds, int accum) {
    switch (k->bits) {
    case 2: kvq_scores_bits(2, k, q, S, lds, accum); break;
    case 3: kvq_scores_bits(3, k, q, S, lds, accum); break;
    case 4: kvq_scores_bits(4, k, q, S, lds, accum); break;
    default: kvq_scores_bits(8, k, q, S, lds, accum); break;
    }
}

/* ---------------------------------------------------------------------------------------
 * Values.
 * ------------------------------------------------------------------------------------- */

KVP_AI __m256i kvq_mask8(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* Y rows [j0, j0 + JB), channels [c0, c0 + 8 * NU) (NU units) clipped to n_ch. */
KVP_AI void kvq_values_pass(const int bits, const int JB, const int NU, const kvp_kvq_vtile *v,
                            const kvp_kvq_rows *w, int j0, int c0, int n_ch, float *Y, int ldy) {
    const size_t ub = kvp_kvq_unit_bytes(bits);
    const uint8_t *wx = (const uint8_t *)w->x + (size_t)j0 * w->ld;
    __m256i acc[KVQ_JB][2];
#pragma GCC unroll 4
    for (int j = 0; j < JB; j++)
        for (int n = 0; n < NU; n++) acc[j][n] = _mm256_setzero_si256();
    const uint8_t *p = v->codes + (size_t)(c0 / 8) * ub;
    for (int r = 0; r < v->n_rows; r++, p += v->row_stride) {
        const __m256i c0v = kvq_decode(bits, p);
        const __m256i c1v = NU == 2 ? kvq_decode(bits, p + ub) : c0v;
#pragma GCC unroll 4
        for (int j = 0; j < JB; j++) {
            const uint8_t *wj = wx + (size_t)j * w->ld + 4 * r;
            if (bits == 8) {
                const __m256i f4 = kvq_bcast16(wj, 0);
                acc[j][0] = _mm256_add_epi32(acc[j][0], kvq_dot_wide(c0v, 1, f4));
                if (NU == 2) acc[j][1] = _mm256_add_epi32(acc[j][1], kvq_dot_wide(c1v, 1, f4));
            } else {
                const __m256i wb = _mm256_set1_epi32((int)kvq_ld32(wj));
                acc[j][0] = _mm256_add_epi32(acc[j][0], kvq_dot_bytes(wb, c0v));
                if (NU == 2) acc[j][1] = _mm256_add_epi32(acc[j][1], kvq_dot_bytes(wb, c1v));
            }
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < JB; j++)
        for (int n = 0; n < NU; n++) {
            const int c = c0 + 8 * n;
            const __m256i m = kvq_mask8(n_ch - c);
            float *y = Y + (size_t)(j0 + j) * ldy + c;
            const __m256 f = _mm256_cvtepi32_ps(bits == 8 ? kvq_unwide(acc[j][n]) : acc[j][n]);
            __m256 r = _mm256_fmadd_ps(_mm256_set1_ps(w->alpha[j0 + j]), f, _mm256_set1_ps(w->beta[j0 + j]));
            r = _mm256_add_ps(r, _mm256_maskload_ps(y, m));
            _mm256_maskstore_ps(y, m, r);
        }
}

KVP_AI void kvq_values_rows(const int bits, const int JB, const kvp_kvq_vtile *v, const kvp_kvq_rows *w, int j0,
                            int n_ch, float *Y, int ldy) {
    int u = 0;
    for (; u + 2 <= v->n_units; u += 2) kvq_values_pass(bits, JB, 2, v, w, j0, 8 * u, n_ch, Y, ldy);
    if (u < v->n_units) kvq_values_pass(bits, JB, 1, v, w, j0, 8 * u, n_ch, Y, ldy);
}

KVP_AI void kvq_values_bits(const int bits, const kvp_kvq_vtile *v, const kvp_kvq_rows *w, int n_ch, float *Y,
                            int ldy) {
    for (int j0 = 0; j0 < w->nq; j0 += KVQ_JB) {
        switch (KVP_MIN(KVQ_JB, w->nq - j0)) {
        case 1: kvq_values_rows(bits, 1, v, w, j0, n_ch, Y, ldy); break;
        case 2: kvq_values_rows(bits, 2, v, w, j0, n_ch, Y, ldy); break;
        case 3: kvq_values_rows(bits, 3, v, w, j0, n_ch, Y, ldy); break;
        default: kvq_values_rows(bits, 4, v, w, j0, n_ch, Y, ldy); break;
        }
    }
}

static void kvp_kvq_values_avx2(const kvp_kvq_vtile *v, const kvp_kvq_rows *w, int n_ch, float *Y, int ldy) {
    switch (v->bits) {
    case 2: kvq_values_bits(2, v, w, n_ch, Y, ldy); break;
    case 3: kvq_values_bits(3, v, w, n_ch, Y, ldy); break;
    case 4: kvq_values_bits(4, v, w, n_ch, Y, ldy); break;
    default: kvq_values_bits(8, v, w, n_ch, Y, ldy); break;
    }
}

/* ---------------------------------------------------------------------------------------
 * Query and weight rows to bytes: the reductions in registers, the rounding per element
 * (the same float operations as the `_ref` twins, so the bytes are identical).
 * ------------------------------------------------------------------------------------- */

static float kvq_hmax(__m256 v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    x = _mm_max_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

static float kvq_hsum(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    x = _mm_add_ss(x, _mm_movehdup_ps(x));
    return _mm_cvtss_f32(x);
}

/* A parameter set with its F16 super numbers converted. */
typedef struct {
    const uint8_t *sc, *mc;
    const float *s, *m;
    float d, mlo, dm, madd;
} kvq_pv;

KVP_AI kvq_pv kvq_resolve(const kvp_kvq_par *p) {
    kvq_pv v = {p->sc, p->mc, p->s, p->m, 0, 0, 0, p->m_add_s};
    if (p->sc) {
        v.d = _cvtsh_ss(p->sup[0]);
        v.mlo = _cvtsh_ss(p->sup[1]);
        v.dm = _cvtsh_ss(p->sup[2]);
    }
    return v;
}

/* s and m (kvq.h, kvp_kvq_par) of the lanes [i, i + 8) in mask k (n_lanes of them). */
KVP_AI void kvq_par8(const kvq_pv *p, int i, int n_lanes, __m256i k, __m256 *s, __m256 *m) {
    if (p->sc) {
        uint8_t sb[8] = {0}, mb[8] = {0};
        memcpy(sb, p->sc + i, (size_t)KVP_MIN(8, n_lanes));
        memcpy(mb, p->mc + i, (size_t)KVP_MIN(8, n_lanes));
        const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)sb)));
        const __m256 mc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(const void *)mb)));
        *s = _mm256_mul_ps(_mm256_set1_ps(p->d), sc);
        *m = _mm256_add_ps(_mm256_set1_ps(p->mlo), _mm256_mul_ps(_mm256_set1_ps(p->dm), mc));
    } else {
        *s = p->s ? _mm256_maskload_ps(p->s + i, k) : _mm256_set1_ps(1.0f);
        *m = p->m ? _mm256_maskload_ps(p->m + i, k) : _mm256_set1_ps(1.0f);
    }
    if (p->madd != 0) *m = _mm256_fmadd_ps(_mm256_set1_ps(p->madd), *s, *m);
}

/* Stores the first n_lanes of x, clamped to [lo, hi], as bytes. */
KVP_AI void kvq_store8(void *dst, int n_lanes, __m256i x, int lo, int hi) {
    x = _mm256_max_epi32(_mm256_min_epi32(x, _mm256_set1_epi32(hi)), _mm256_set1_epi32(lo));
    const __m128i h = _mm_packs_epi32(_mm256_castsi256_si128(x), _mm256_extracti128_si256(x, 1));
    uint8_t b[16];
    _mm_storeu_si128((__m128i *)(void *)b, lo < 0 ? _mm_packs_epi16(h, h) : _mm_packus_epi16(h, h));
    memcpy(dst, b, (size_t)KVP_MIN(8, n_lanes));
}

static void kvq_query_row(const float *q, const kvq_pv *p, int n, float scale, int8_t *x, int8_t *lo, float *alpha,
                          float *beta) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 vmax = _mm256_setzero_ps(), vb = _mm256_setzero_ps(), s, m;
    for (int c = 0; c < n; c += 8) {
        const __m256i k = kvq_mask8(n - c);
        const __m256 qv = _mm256_maskload_ps(q + c, k);
        kvq_par8(p, c, n - c, k, &s, &m);
        vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, _mm256_mul_ps(qv, s)));
        vb = _mm256_fmadd_ps(qv, m, vb);
    }
    const float amax = kvq_hmax(vmax), d = amax / 127.0f, fi = amax > 0 ? 127.0f / amax : 0.0f;
    const __m256 inv = _mm256_set1_ps(fi), inv_lo = _mm256_set1_ps(fi * 256.0f), vd = _mm256_set1_ps(d);
    for (int c = 0; c < n; c += 8) {
        const __m256i k = kvq_mask8(n - c);
        kvq_par8(p, c, n - c, k, &s, &m);
        const __m256 u = _mm256_mul_ps(_mm256_maskload_ps(q + c, k), s);
        __m256i xi = _mm256_cvtps_epi32(_mm256_mul_ps(u, inv));
        xi = _mm256_max_epi32(_mm256_min_epi32(xi, _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
        kvq_store8(x + c, n - c, xi, -127, 127);
        if (!lo) continue;
        const __m256 r = _mm256_sub_ps(u, _mm256_mul_ps(vd, _mm256_cvtepi32_ps(xi)));
        kvq_store8(lo + c, n - c, _mm256_cvtps_epi32(_mm256_mul_ps(r, inv_lo)), -127, 127);
    }
    for (int c = n; c % 4; c++) {
        x[c] = 0;
        if (lo) lo[c] = 0;
    }
    *alpha = scale * d;
    *beta = scale * kvq_hsum(vb);
}

static void kvp_kvq_query_avx2(const float *Q, int ldq, int nq, const kvp_kvq_par *p, int n, float scale,
                               const kvp_kvq_bytes *o) {
    const kvq_pv v = kvq_resolve(p);
    for (int j = 0; j < nq; j++)
        kvq_query_row(Q + (size_t)j * ldq, &v, n, scale, (int8_t *)o->x + (size_t)j * o->ld,
                      o->lo ? (int8_t *)o->lo + (size_t)j * o->ld : NULL, &o->alpha[j], &o->beta[j]);
}

static void kvq_weights_row(const float *w, const kvq_pv *p, int n, uint8_t *x, uint8_t *lo, float *alpha,
                            float *beta) {
    __m256 vmax = _mm256_setzero_ps(), vb = _mm256_setzero_ps(), s, m;
    for (int t = 0; t < n; t += 8) {
        const __m256i k = kvq_mask8(n - t);
        const __m256 wv = _mm256_maskload_ps(w + t, k);
        kvq_par8(p, t, n - t, k, &s, &m);
        vmax = _mm256_max_ps(vmax, _mm256_mul_ps(wv, s));
        vb = _mm256_fmadd_ps(wv, m, vb);
    }
    const float umax = kvq_hmax(vmax), d = umax / 255.0f, fi = umax > 0 ? 255.0f / umax : 0.0f;
    const __m256 inv = _mm256_set1_ps(fi), inv_lo = _mm256_set1_ps(fi * 255.0f), vd = _mm256_set1_ps(d);
    for (int t = 0; t < n; t += 8) {
        const __m256i k = kvq_mask8(n - t);
        kvq_par8(p, t, n - t, k, &s, &m);
        const __m256 u = _mm256_mul_ps(_mm256_maskload_ps(w + t, k), s);
        if (!lo) {
            kvq_store8(x + t, n - t, _mm256_cvtps_epi32(_mm256_mul_ps(u, inv)), 0, 255);
            continue;
        }
        __m256 f = _mm256_round_ps(_mm256_mul_ps(u, inv), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        f = _mm256_min_ps(_mm256_max_ps(f, _mm256_setzero_ps()), _mm256_set1_ps(255.0f));
        kvq_store8(x + t, n - t, _mm256_cvtps_epi32(f), 0, 255);
        const __m256 r = _mm256_sub_ps(u, _mm256_mul_ps(vd, f));
        kvq_store8(lo + t, n - t, _mm256_cvtps_epi32(_mm256_mul_ps(r, inv_lo)), 0, 255);
    }
    *alpha = d;
    *beta = kvq_hsum(vb);
}

static void kvp_kvq_weights_avx2(const float *P, int ldp, int nq, const kvp_kvq_par *p, int n,
                                 const kvp_kvq_bytes *o) {
    const kvq_pv v = kvq_resolve(p);
    for (int j = 0; j < nq; j++)
        kvq_weights_row(P + (size_t)j * ldp, &v, n, (uint8_t *)o->x + (size_t)j * o->ld,
                        o->lo ? (uint8_t *)o->lo + (size_t)j * o->ld : NULL, &o->alpha[j], &o->beta[j]);
}

/* e^x for x <= 0 (0 below -87.3 and for NaN), as in kvq_avx512.c, with 2^n built
 * in the exponent field. */
KVP_AI __m256 kvq_exp(__m256 x) {
    const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_GE_OQ); /* else 0 (and NaN) */
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), r);
    __m256 e = _mm256_set1_ps(1.0f / 5040.0f);
    e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(1.0f / 720.0f));
    e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(1.0f / 120.0f));
    e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(1.0f / 24.0f));
    e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(1.0f / 6.0f));
    e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(0.5f));
    e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(1.0f));
    e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(1.0f));
    const __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(live, _mm256_mul_ps(e, _mm256_castsi256_ps(two_n)));
}

static void kvp_kvq_softmax_avx2(float *x, int n) {
    __m256 vmax = _mm256_set1_ps(-INFINITY), vsum = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(x + i));
    float mx = kvq_hmax(vmax);
    for (; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    if (mx == -INFINITY) {
        memset(x, 0, sizeof(float) * (size_t)n);
        return;
    }
    for (i = 0; i < n; i += 8) {
        const __m256i k = kvq_mask8(n - i);
        const __m256 e = _mm256_and_ps(kvq_exp(_mm256_sub_ps(_mm256_maskload_ps(x + i, k), _mm256_set1_ps(mx))),
                                       _mm256_castsi256_ps(k));
        _mm256_maskstore_ps(x + i, k, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / kvq_hsum(vsum));
    for (i = 0; i < n; i += 8) {
        const __m256i k = kvq_mask8(n - i);
        _mm256_maskstore_ps(x + i, k, _mm256_mul_ps(_mm256_maskload_ps(x + i, k), inv));
    }
}

void kvp_kvq_fill_avx2(kvp_kvq_table *t) {
    t->isa = "avx2";
    t->scores = kvp_kvq_scores_avx2;
    t->values = kvp_kvq_values_avx2;
    t->query = kvp_kvq_query_avx2;
    t->weights = kvp_kvq_weights_avx2;
    t->softmax = kvp_kvq_softmax_avx2;
}

#else /* built without the AVX2 flags: the table keeps the scalar kernels */

void kvp_kvq_fill_avx2(kvp_kvq_table *t) { (void)t; }

#endif
