/*
 * kvq_avx512.c: attention on packed KV tiles with AVX-512 VNNI (see kvq.h for the
 * layouts). Compiled with the AVX-512 flags; only called when the CPU has them.
 *
 * Two units of a tile row (64 codes: 16 lanes of 4) are decoded into one register with a
 * permute, a variable shift and a mask (plus a masked add of the bit plane for 3 bits),
 * then multiplied by vpdpbusd: scores take the codes as the unsigned operand and 4 query
 * bytes broadcast as the signed one (lanes are 16 tokens); values take 4 attention weights
 * broadcast as the unsigned operand and the codes as the signed one (lanes are 16
 * channels). Each decoded register serves up to 6 query rows, and two registers (32
 * tokens or channels) are in flight, so 12 independent accumulators hide the latency.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "common/common.h"
#include "kernels/kvq.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__AVX512VNNI__) && defined(__FMA__)

#define KVP_AI static inline __attribute__((always_inline))
#define KVQ_JB 6 /* query rows per pass */

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

/* The 64 codes of the two consecutive units at p, one per byte. */
KVP_AI __m512i kvq_decode2(const int bits, const uint8_t *p) {
    if (bits == 8) return _mm512_loadu_si512(p);
    if (bits == 4) {
        __m512i z = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)p));
        z = _mm512_permutexvar_epi64(_mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0), z);
        z = _mm512_srlv_epi64(z, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0));
        return _mm512_and_si512(z, _mm512_set1_epi8(15));
    }
    const uint64_t lo = kvq_ld64(p), hi = kvq_ld64(p + (bits == 3 ? 12 : 8));
    __m512i z = _mm512_castsi128_si512(_mm_set_epi64x((long long)hi, (long long)lo));
    z = _mm512_permutexvar_epi64(_mm512_set_epi64(1, 1, 1, 1, 0, 0, 0, 0), z);
    z = _mm512_srlv_epi64(z, _mm512_set_epi64(6, 4, 2, 0, 6, 4, 2, 0));
    z = _mm512_and_si512(z, _mm512_set1_epi8(3));
    if (bits == 3) {
        const __mmask64 k = (__mmask64)kvq_ld32(p + 8) | (__mmask64)kvq_ld32(p + 20) << 32;
        z = _mm512_mask_add_epi8(z, k, z, _mm512_set1_epi8(4));
    }
    return z;
}

/* The 32 codes of the unit at p in the low half; the high half is zero. */
KVP_AI __m512i kvq_decode1(const int bits, const uint8_t *p) {
    __m256i y;
    if (bits == 8) {
        y = _mm256_loadu_si256((const __m256i *)p);
    } else if (bits == 4) {
        const __m128i x = _mm_loadu_si128((const __m128i *)p);
        y = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(x, 4), x), _mm256_set1_epi8(15));
    } else {
        y = _mm256_srlv_epi64(_mm256_set1_epi64x((long long)kvq_ld64(p)), _mm256_set_epi64x(6, 4, 2, 0));
        y = _mm256_and_si256(y, _mm256_set1_epi8(3));
        if (bits == 3) y = _mm256_mask_add_epi8(y, (__mmask32)kvq_ld32(p + 8), y, _mm256_set1_epi8(4));
    }
    return _mm512_zextsi256_si512(y);
}

/* ---------------------------------------------------------------------------------------
 * Scores.
 * ------------------------------------------------------------------------------------- */

/* S rows [j0, j0 + JB) for the NT chunks of 16 tokens starting at token t0. */
KVP_AI void kvq_scores_pass(const int bits, const int JB, const int NT, const kvp_kvq_ktile *k,
                            const kvp_kvq_rows *q, int j0, int t0, float *S, int lds, int accum) {
    const size_t ub = kvp_kvq_unit_bytes(bits), row_bytes = (size_t)(k->n_tok / 8) * ub;
    const int8_t *qx = (const int8_t *)q->x + (size_t)j0 * q->ld;
    __m512i acc[KVQ_JB][2];
#pragma GCC unroll 6
    for (int j = 0; j < JB; j++)
        for (int n = 0; n < NT; n++) acc[j][n] = _mm512_setzero_si512();
    const uint8_t *p = k->codes + (size_t)(t0 / 8) * ub;
    for (int r = 0; r < k->n_rows; r++, p += row_bytes) {
        const __m512i c0 = kvq_decode2(bits, p);
        const __m512i c1 = NT == 2 ? kvq_decode2(bits, p + 2 * ub) : c0;
#pragma GCC unroll 6
        for (int j = 0; j < JB; j++) {
            const __m512i qb = _mm512_set1_epi32((int)kvq_ld32((const uint8_t *)(qx + (size_t)j * q->ld + 4 * r)));
            acc[j][0] = _mm512_dpbusd_epi32(acc[j][0], c0, qb);
            if (NT == 2) acc[j][1] = _mm512_dpbusd_epi32(acc[j][1], c1, qb);
        }
    }
#pragma GCC unroll 6
    for (int j = 0; j < JB; j++)
        for (int n = 0; n < NT; n++) {
            const int t = t0 + 16 * n;
            __m512 f = _mm512_cvtepi32_ps(acc[j][n]);
            if (k->a) f = _mm512_mul_ps(f, _mm512_loadu_ps(k->a + t));
            const __m512 mb = k->m ? _mm512_loadu_ps(k->m + t) : _mm512_set1_ps(1.0f);
            __m512 v = _mm512_fmadd_ps(_mm512_set1_ps(q->alpha[j0 + j]), f,
                                       _mm512_mul_ps(_mm512_set1_ps(q->beta[j0 + j]), mb));
            float *s = S + (size_t)(j0 + j) * lds + t;
            if (accum) v = _mm512_add_ps(v, _mm512_loadu_ps(s));
            _mm512_storeu_ps(s, v);
        }
}

KVP_AI void kvq_scores_rows(const int bits, const int JB, const kvp_kvq_ktile *k, const kvp_kvq_rows *q,
                            int j0, float *S, int lds, int accum) {
    int t = 0;
    for (; t + 32 <= k->n_tok; t += 32) kvq_scores_pass(bits, JB, 2, k, q, j0, t, S, lds, accum);
    if (t < k->n_tok) kvq_scores_pass(bits, JB, 1, k, q, j0, t, S, lds, accum);
}

KVP_AI void kvq_scores_bits(const int bits, const kvp_kvq_ktile *k, const kvp_kvq_rows *q, float *S, int lds,
                            int accum) {
    for (int j0 = 0; j0 < q->nq; j0 += KVQ_JB) {
        switch (KVP_MIN(KVQ_JB, q->nq - j0)) {
        case 1: kvq_scores_rows(bits, 1, k, q, j0, S, lds, accum); break;
        case 2: kvq_scores_rows(bits, 2, k, q, j0, S, lds, accum); break;
        case 3: kvq_scores_rows(bits, 3, k, q, j0, S, lds, accum); break;
        case 4: kvq_scores_rows(bits, 4, k, q, j0, S, lds, accum); break;
        case 5: kvq_scores_rows(bits, 5, k, q, j0, S, lds, accum); break;
        default: kvq_scores_rows(bits, 6, k, q, j0, S, lds, accum); break;
        }
    }
}

static void kvp_kvq_scores_avx512(const kvp_kvq_ktile *k, const kvp_kvq_rows *q, float *S, int lds, int accum) {
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

/* Y rows [j0, j0 + JB), channels [c0, c0 + 16 * NP) (NP registers of 16 lanes) clipped to
 * n_ch; `half` decodes a single unit (8 channels) instead of pairs. */
KVP_AI void kvq_values_pass(const int bits, const int JB, const int NP, const int half, const kvp_kvq_vtile *v,
                            const kvp_kvq_rows *w, int j0, int c0, int n_ch, float *Y, int ldy) {
    const size_t ub = kvp_kvq_unit_bytes(bits);
    const uint8_t *wx = (const uint8_t *)w->x + (size_t)j0 * w->ld;
    __m512i acc[KVQ_JB][2];
#pragma GCC unroll 6
    for (int j = 0; j < JB; j++)
        for (int n = 0; n < NP; n++) acc[j][n] = _mm512_setzero_si512();
    const uint8_t *p = v->codes + (size_t)(c0 / 8) * ub;
    for (int r = 0; r < v->n_rows; r++, p += v->row_stride) {
        const __m512i c0v = half ? kvq_decode1(bits, p) : kvq_decode2(bits, p);
        const __m512i c1v = NP == 2 ? kvq_decode2(bits, p + 2 * ub) : c0v;
#pragma GCC unroll 6
        for (int j = 0; j < JB; j++) {
            const __m512i wb = _mm512_set1_epi32((int)kvq_ld32(wx + (size_t)j * w->ld + 4 * r));
            acc[j][0] = _mm512_dpbusd_epi32(acc[j][0], wb, c0v);
            if (NP == 2) acc[j][1] = _mm512_dpbusd_epi32(acc[j][1], wb, c1v);
        }
    }
#pragma GCC unroll 6
    for (int j = 0; j < JB; j++)
        for (int n = 0; n < NP; n++) {
            const int c = c0 + 16 * n;
            const __mmask16 m = c >= n_ch ? 0 : c + 16 <= n_ch ? (__mmask16)0xffff : (__mmask16)((1u << (n_ch - c)) - 1u);
            float *y = Y + (size_t)(j0 + j) * ldy + c;
            __m512 r = _mm512_fmadd_ps(_mm512_set1_ps(w->alpha[j0 + j]), _mm512_cvtepi32_ps(acc[j][n]),
                                       _mm512_set1_ps(w->beta[j0 + j]));
            r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, y));
            _mm512_mask_storeu_ps(y, m, r);
        }
}

KVP_AI void kvq_values_rows(const int bits, const int JB, const kvp_kvq_vtile *v, const kvp_kvq_rows *w, int j0,
                            int n_ch, float *Y, int ldy) {
    const int n_pairs = v->n_units / 2;
    int p = 0;
    for (; p + 2 <= n_pairs; p += 2) kvq_values_pass(bits, JB, 2, 0, v, w, j0, 16 * p, n_ch, Y, ldy);
    if (p < n_pairs) kvq_values_pass(bits, JB, 1, 0, v, w, j0, 16 * p, n_ch, Y, ldy);
    if (v->n_units % 2) kvq_values_pass(bits, JB, 1, 1, v, w, j0, 16 * n_pairs, n_ch, Y, ldy);
}

KVP_AI void kvq_values_bits(const int bits, const kvp_kvq_vtile *v, const kvp_kvq_rows *w, int n_ch, float *Y,
                            int ldy) {
    for (int j0 = 0; j0 < w->nq; j0 += KVQ_JB) {
        switch (KVP_MIN(KVQ_JB, w->nq - j0)) {
        case 1: kvq_values_rows(bits, 1, v, w, j0, n_ch, Y, ldy); break;
        case 2: kvq_values_rows(bits, 2, v, w, j0, n_ch, Y, ldy); break;
        case 3: kvq_values_rows(bits, 3, v, w, j0, n_ch, Y, ldy); break;
        case 4: kvq_values_rows(bits, 4, v, w, j0, n_ch, Y, ldy); break;
        case 5: kvq_values_rows(bits, 5, v, w, j0, n_ch, Y, ldy); break;
        default: kvq_values_rows(bits, 6, v, w, j0, n_ch, Y, ldy); break;
        }
    }
}

static void kvp_kvq_values_avx512(const kvp_kvq_vtile *v, const kvp_kvq_rows *w, int n_ch, float *Y, int ldy) {
    switch (v->bits) {
    case 2: kvq_values_bits(2, v, w, n_ch, Y, ldy); break;
    case 3: kvq_values_bits(3, v, w, n_ch, Y, ldy); break;
    case 4: kvq_values_bits(4, v, w, n_ch, Y, ldy); break;
    default: kvq_values_bits(8, v, w, n_ch, Y, ldy); break;
    }
}

/* ---------------------------------------------------------------------------------------
 * Query and weight rows to bytes.
 * ------------------------------------------------------------------------------------- */

KVP_AI __mmask16 kvq_tail(int c, int n) { return c + 16 <= n ? (__mmask16)0xffff : (__mmask16)((1u << (n - c)) - 1u); }

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

/* s and m (kvq.h, kvp_kvq_par) of the lanes [i, i + 16) in mask k. */
KVP_AI void kvq_par16(const kvq_pv *p, int i, __mmask16 k, __m512 *s, __m512 *m) {
    if (p->sc) {
        const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, p->sc + i)));
        const __m512 mc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(k, p->mc + i)));
        *s = _mm512_mul_ps(_mm512_set1_ps(p->d), sc);
        *m = _mm512_add_ps(_mm512_set1_ps(p->mlo), _mm512_mul_ps(_mm512_set1_ps(p->dm), mc));
    } else {
        *s = p->s ? _mm512_maskz_loadu_ps(k, p->s + i) : _mm512_set1_ps(1.0f);
        *m = p->m ? _mm512_maskz_loadu_ps(k, p->m + i) : _mm512_set1_ps(1.0f);
    }
    if (p->madd != 0) *m = _mm512_fmadd_ps(_mm512_set1_ps(p->madd), *s, *m);
}

#define KVQ_PBUF 512 /* longest rows kept in registers and on the stack by the 4-row paths */

/* Stores the lanes of k of x, clamped to [lo, hi], as bytes. */
KVP_AI void kvq_store8(void *dst, __mmask16 k, __m512i x, int lo, int hi) {
    x = _mm512_max_epi32(_mm512_min_epi32(x, _mm512_set1_epi32(hi)), _mm512_set1_epi32(lo));
    _mm512_mask_cvtepi32_storeu_epi8(dst, k, x);
}

static void kvq_query_row(const float *q, const kvq_pv *p, int n, float scale, int8_t *x, int8_t *lo, float *alpha,
                          float *beta) {
    __m512 vmax = _mm512_setzero_ps(), vb = _mm512_setzero_ps(), s, m;
    for (int c = 0; c < n; c += 16) {
        const __mmask16 k = kvq_tail(c, n);
        const __m512 qv = _mm512_maskz_loadu_ps(k, q + c);
        kvq_par16(p, c, k, &s, &m);
        vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_mul_ps(qv, s)));
        vb = _mm512_fmadd_ps(qv, m, vb);
    }
    const float amax = _mm512_reduce_max_ps(vmax), d = amax / 127.0f, fi = amax > 0 ? 127.0f / amax : 0.0f;
    const __m512 inv = _mm512_set1_ps(fi), inv_lo = _mm512_set1_ps(fi * 256.0f), vd = _mm512_set1_ps(d);
    for (int c = 0; c < n; c += 16) {
        const __mmask16 k = kvq_tail(c, n);
        kvq_par16(p, c, k, &s, &m);
        const __m512 u = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, q + c), s);
        const __m512i xi = _mm512_cvtps_epi32(_mm512_mul_ps(u, inv));
        kvq_store8(x + c, k, xi, -127, 127);
        if (!lo) continue;
        const __m512 xf = _mm512_cvtepi32_ps(_mm512_max_epi32(_mm512_min_epi32(xi, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127)));
        const __m512 r = _mm512_sub_ps(u, _mm512_mul_ps(vd, xf));
        kvq_store8(lo + c, k, _mm512_cvtps_epi32(_mm512_mul_ps(r, inv_lo)), -127, 127);
    }
    for (int c = n; c % 4; c++) {
        x[c] = 0;
        if (lo) lo[c] = 0;
    }
    *alpha = scale * d;
    *beta = scale * _mm512_reduce_add_ps(vb);
}

/* [max(a), max(b), max(c), max(d)] (op 0) or the sums (op 1) of four 16-lane vectors. */
KVP_AI __m128 kvq_reduce4(const int op, __m512 a, __m512 b, __m512 c, __m512 d) {
#define KVQ_OP(x, y) (op ? _mm512_add_ps(x, y) : _mm512_max_ps(x, y))
    const __m512 ab = KVQ_OP(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 cd = KVQ_OP(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)), _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 s = KVQ_OP(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
    s = KVQ_OP(s, _mm512_permute_ps(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = KVQ_OP(s, _mm512_permute_ps(s, _MM_SHUFFLE(2, 3, 0, 1)));
#undef KVQ_OP
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0), s));
}

/* Up to 4 query rows at once (n <= KVQ_PBUF): u = q s kept in ub, the reductions of the
 * rows done together. Same bytes as kvq_query_row. */
static void kvq_query_rows4(const float *Q, int ldq, int nr, const kvq_pv *p, int n, float scale,
                            const kvp_kvq_bytes *o, int j0) {
    float ub[4][KVQ_PBUF], amax[4], bias[4];
    __m512 vmax[4], vb[4], s, m;
    for (int r = 0; r < 4; r++) vmax[r] = vb[r] = _mm512_setzero_ps();
    for (int c = 0; c < n; c += 16) {
        const __mmask16 k = kvq_tail(c, n);
        kvq_par16(p, c, k, &s, &m);
        for (int r = 0; r < nr; r++) {
            const __m512 qv = _mm512_maskz_loadu_ps(k, Q + (size_t)r * ldq + c), u = _mm512_mul_ps(qv, s);
            _mm512_storeu_ps(ub[r] + c, u);
            vmax[r] = _mm512_max_ps(vmax[r], _mm512_abs_ps(u));
            vb[r] = _mm512_fmadd_ps(qv, m, vb[r]);
        }
    }
    _mm_storeu_ps(amax, kvq_reduce4(0, vmax[0], vmax[1], vmax[2], vmax[3]));
    _mm_storeu_ps(bias, kvq_reduce4(1, vb[0], vb[1], vb[2], vb[3]));
    for (int r = 0; r < nr; r++) {
        const float d = amax[r] / 127.0f, fi = amax[r] > 0 ? 127.0f / amax[r] : 0.0f;
        const __m512 inv = _mm512_set1_ps(fi), inv_lo = _mm512_set1_ps(fi * 256.0f), vd = _mm512_set1_ps(d);
        int8_t *x = (int8_t *)o->x + (size_t)(j0 + r) * o->ld, *lo = o->lo ? (int8_t *)o->lo + (size_t)(j0 + r) * o->ld : NULL;
        for (int c = 0; c < n; c += 16) {
            const __mmask16 k = kvq_tail(c, n);
            const __m512 u = _mm512_loadu_ps(ub[r] + c);
            const __m512i xi = _mm512_max_epi32(_mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(u, inv)),
                                                                 _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
            _mm512_mask_cvtepi32_storeu_epi8(x + c, k, xi);
            if (!lo) continue;
            const __m512 rr = _mm512_sub_ps(u, _mm512_mul_ps(vd, _mm512_cvtepi32_ps(xi)));
            kvq_store8(lo + c, k, _mm512_cvtps_epi32(_mm512_mul_ps(rr, inv_lo)), -127, 127);
        }
        for (int c = n; c % 4; c++) {
            x[c] = 0;
            if (lo) lo[c] = 0;
        }
        o->alpha[j0 + r] = scale * d;
        o->beta[j0 + r] = scale * bias[r];
    }
}

static void kvp_kvq_query_avx512(const float *Q, int ldq, int nq, const kvp_kvq_par *p, int n, float scale,
                                 const kvp_kvq_bytes *o) {
    const kvq_pv v = kvq_resolve(p);
    for (int j = 0; j < nq; j += 4) {
        if (n <= KVQ_PBUF) {
            kvq_query_rows4(Q + (size_t)j * ldq, ldq, KVP_MIN(4, nq - j), &v, n, scale, o, j);
            continue;
        }
        for (int r = j; r < KVP_MIN(nq, j + 4); r++)
            kvq_query_row(Q + (size_t)r * ldq, &v, n, scale, (int8_t *)o->x + (size_t)r * o->ld,
                          o->lo ? (int8_t *)o->lo + (size_t)r * o->ld : NULL, &o->alpha[r], &o->beta[r]);
    }
}

static void kvq_weights_row(const float *w, const kvq_pv *p, int n, uint8_t *x, uint8_t *lo, float *alpha,
                            float *beta) {
    __m512 vmax = _mm512_setzero_ps(), vb = _mm512_setzero_ps(), s, m;
    for (int t = 0; t < n; t += 16) {
        const __mmask16 k = kvq_tail(t, n);
        const __m512 wv = _mm512_maskz_loadu_ps(k, w + t);
        kvq_par16(p, t, k, &s, &m);
        vmax = _mm512_max_ps(vmax, _mm512_mul_ps(wv, s));
        vb = _mm512_fmadd_ps(wv, m, vb);
    }
    const float umax = _mm512_reduce_max_ps(vmax), d = umax / 255.0f, fi = umax > 0 ? 255.0f / umax : 0.0f;
    const __m512 inv = _mm512_set1_ps(fi), inv_lo = _mm512_set1_ps(fi * 255.0f), vd = _mm512_set1_ps(d);
    for (int t = 0; t < n; t += 16) {
        const __mmask16 k = kvq_tail(t, n);
        kvq_par16(p, t, k, &s, &m);
        const __m512 u = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, w + t), s);
        if (!lo) {
            kvq_store8(x + t, k, _mm512_cvtps_epi32(_mm512_mul_ps(u, inv)), 0, 255);
            continue;
        }
        __m512 f = _mm512_roundscale_ps(_mm512_mul_ps(u, inv), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
        f = _mm512_min_ps(_mm512_max_ps(f, _mm512_setzero_ps()), _mm512_set1_ps(255.0f));
        kvq_store8(x + t, k, _mm512_cvtps_epi32(f), 0, 255);
        const __m512 r = _mm512_sub_ps(u, _mm512_mul_ps(vd, f));
        kvq_store8(lo + t, k, _mm512_cvtps_epi32(_mm512_mul_ps(r, inv_lo)), 0, 255);
    }
    *alpha = d;
    *beta = _mm512_reduce_add_ps(vb);
}

/* Up to 4 weight rows at once (n <= KVQ_PBUF), as kvq_query_rows4. */
static void kvq_weights_rows4(const float *P, int ldp, int nr, const kvq_pv *p, int n, const kvp_kvq_bytes *o, int j0) {
    float ub[4][KVQ_PBUF], umax[4], bias[4];
    __m512 vmax[4], vb[4], s, m;
    for (int r = 0; r < 4; r++) vmax[r] = vb[r] = _mm512_setzero_ps();
    for (int t = 0; t < n; t += 16) {
        const __mmask16 k = kvq_tail(t, n);
        kvq_par16(p, t, k, &s, &m);
        for (int r = 0; r < nr; r++) {
            const __m512 wv = _mm512_maskz_loadu_ps(k, P + (size_t)r * ldp + t), u = _mm512_mul_ps(wv, s);
            _mm512_storeu_ps(ub[r] + t, u);
            vmax[r] = _mm512_max_ps(vmax[r], u);
            vb[r] = _mm512_fmadd_ps(wv, m, vb[r]);
        }
    }
    _mm_storeu_ps(umax, kvq_reduce4(0, vmax[0], vmax[1], vmax[2], vmax[3]));
    _mm_storeu_ps(bias, kvq_reduce4(1, vb[0], vb[1], vb[2], vb[3]));
    for (int r = 0; r < nr; r++) {
        const float d = umax[r] / 255.0f, fi = umax[r] > 0 ? 255.0f / umax[r] : 0.0f;
        const __m512 inv = _mm512_set1_ps(fi), inv_lo = _mm512_set1_ps(fi * 255.0f), vd = _mm512_set1_ps(d);
        uint8_t *x = (uint8_t *)o->x + (size_t)(j0 + r) * o->ld, *lo = o->lo ? (uint8_t *)o->lo + (size_t)(j0 + r) * o->ld : NULL;
        for (int t = 0; t < n; t += 16) {
            const __mmask16 k = kvq_tail(t, n);
            const __m512 u = _mm512_loadu_ps(ub[r] + t);
            if (!lo) {
                kvq_store8(x + t, k, _mm512_cvtps_epi32(_mm512_mul_ps(u, inv)), 0, 255);
                continue;
            }
            __m512 f = _mm512_roundscale_ps(_mm512_mul_ps(u, inv), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
            f = _mm512_min_ps(_mm512_max_ps(f, _mm512_setzero_ps()), _mm512_set1_ps(255.0f));
            _mm512_mask_cvtepi32_storeu_epi8(x + t, k, _mm512_cvtps_epi32(f));
            const __m512 rr = _mm512_sub_ps(u, _mm512_mul_ps(vd, f));
            kvq_store8(lo + t, k, _mm512_cvtps_epi32(_mm512_mul_ps(rr, inv_lo)), 0, 255);
        }
        o->alpha[j0 + r] = d;
        o->beta[j0 + r] = bias[r];
    }
}

static void kvp_kvq_weights_avx512(const float *P, int ldp, int nq, const kvp_kvq_par *p, int n,
                                   const kvp_kvq_bytes *o) {
    const kvq_pv v = kvq_resolve(p);
    for (int j = 0; j < nq; j += 4) {
        if (n <= KVQ_PBUF) {
            kvq_weights_rows4(P + (size_t)j * ldp, ldp, KVP_MIN(4, nq - j), &v, n, o, j);
            continue;
        }
        for (int r = j; r < KVP_MIN(nq, j + 4); r++)
            kvq_weights_row(P + (size_t)r * ldp, &v, n, (uint8_t *)o->x + (size_t)r * o->ld,
                            o->lo ? (uint8_t *)o->lo + (size_t)r * o->ld : NULL, &o->alpha[r], &o->beta[r]);
    }
}

/* e^x for x <= 0 (0 below -87.3, where e^x < 1.2e-38, and for NaN): x = n ln2 + r, e^r by its Taylor
 * polynomial of degree 7 (|r| <= ln2 / 2: relative error below 1e-8), times 2^n. */
KVP_AI __m512 kvq_exp(__m512 x) {
    const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3f), _CMP_GE_OQ); /* else 0 (and NaN) */
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 e = _mm512_set1_ps(1.0f / 5040.0f);
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 720.0f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 120.0f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 24.0f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f / 6.0f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(0.5f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f));
    e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(1.0f));
    return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(e, n));
}

static void kvp_kvq_softmax_avx512(float *x, int n) {
    __m512 vmax = _mm512_set1_ps(-INFINITY), vsum = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vmax, kvq_tail(i, n), x + i));
    const float mx = _mm512_reduce_max_ps(vmax);
    if (mx == -INFINITY) {
        memset(x, 0, sizeof(float) * (size_t)n);
        return;
    }
    for (int i = 0; i < n; i += 16) {
        const __mmask16 k = kvq_tail(i, n);
        const __m512 e = kvq_exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), _mm512_set1_ps(mx)));
        _mm512_mask_storeu_ps(x + i, k, e);
        vsum = _mm512_add_ps(vsum, _mm512_maskz_mov_ps(k, e));
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
    for (int i = 0; i < n; i += 16) {
        const __mmask16 k = kvq_tail(i, n);
        _mm512_mask_storeu_ps(x + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), inv));
    }
}

void kvp_kvq_fill_avx512(kvp_kvq_table *t) {
    t->isa = "avx512";
    t->scores = kvp_kvq_scores_avx512;
    t->values = kvp_kvq_values_avx512;
    t->query = kvp_kvq_query_avx512;
    t->weights = kvp_kvq_weights_avx512;
    t->softmax = kvp_kvq_softmax_avx512;
}

#else /* built without the AVX-512 flags: the table keeps the lower set's kernels */

void kvp_kvq_fill_avx512(kvp_kvq_table *t) { (void)t; }

#endif
