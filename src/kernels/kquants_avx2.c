/*
 * kquants_avx2.c: AVX2 dot-product kernels of the K-quant types (with Q8_K activations)
 * and of Q5_0 (with Q8_0), Q4_1 and Q5_1 (with Q8_1). Compiled with -mavx2 -mfma -mf16c;
 * kernels.c installs them only when the CPU has all three.
 *
 * Every kernel computes what its reference in kquants.c computes, in a different order:
 * weights are unpacked to unsigned bytes u, vpmaddubsw multiplies them with the signed
 * int8 activations into int16 pair sums, vpmaddwd applies the group's integer scale (or
 * ones) into int32 lanes, and each block's int32 sum is scaled by its float scales. Where
 * a type stores signed values as u - offset (Q3_K: offset 4, Q6_K: 32), the offset times
 * the activations' group sums (Q8_K's bsums) is subtracted once per block; the offsets
 * (mins) of Q2_K, Q4_K and Q5_K use the bsums likewise. No int16 pair sum can saturate:
 * u <= 63 and |x| <= 127 for Q8_K (so 2 * 63 * 127 < 32767), u <= 31 and |x| <= 127 for
 * Q8_0 and Q8_1 rows made by kvp_act_prepare.
 *
 * A matrix product runs weight rows in blocks of 16 (a block stays in L1/L2 while every
 * token of the batch passes over it), four rows at a time per token so that four 8-lane
 * accumulators are reduced together. Results equal the reference within float rounding.
 */
#include <immintrin.h>
#include <string.h>

#include "common/common.h"
#include "kernels/kquants.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

#define KVP_AI static inline __attribute__((always_inline))
#define KVP_KQ_RB 16 /* weight rows per block of a matrix product */

/* ---------------------------------------------------------------------------------------
 * Helpers.
 * ------------------------------------------------------------------------------------- */

KVP_AI __m128 kvp_kq_hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

KVP_AI float kvp_kq_hsum(__m256 a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The sum of the eight int32 lanes of v times eight int16 pairs, as one int32. */
KVP_AI int32_t kvp_kq_hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* int16 lanes: 8 copies of word 2k of `w` in the low half, of word 2k+1 in the high half
 * (w holds 8 words in its low 128 bits, repeated in the high 128 bits). */
KVP_AI __m256i kvp_kq_pair_words(__m256i w, int k) {
    const __m256i lo = _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * k)));
    const __m256i hi = _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * k + 1)));
    return _mm256_shuffle_epi8(w, _mm256_blend_epi32(lo, hi, 0xf0));
}

/* int16 lanes: 16 copies of word k of w (8 words, repeated in both halves). */
KVP_AI __m256i kvp_kq_word(__m256i w, int k) {
    return _mm256_shuffle_epi8(w, _mm256_set1_epi16((short)(0x0100 + 0x0202 * k)));
}

/* The 6-bit scales (low 8 bytes) and mins (high 8 bytes) of a Q4_K / Q5_K block. */
KVP_AI __m128i kvp_kq_scales_mins(const uint8_t *s12) {
    uint32_t u[3], v[4];
    memcpy(u, s12, 12);
    v[0] = u[0] & 0x3f3f3f3fu;
    v[1] = (u[2] & 0x0f0f0f0fu) | ((u[0] >> 2) & 0x30303030u);
    v[2] = u[1] & 0x3f3f3f3fu;
    v[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | ((u[1] >> 2) & 0x30303030u);
    return _mm_loadu_si128((const __m128i *)v);
}

/* The 8 sums of 32 activations of a Q8_K block (pairs of bsums) as int16. */
KVP_AI __m128i kvp_kq_bsums32(const kvp_block_q8_K *x) {
    const __m256i b = _mm256_loadu_si256((const __m256i *)x->bsums);
    return _mm_hadd_epi16(_mm256_castsi256_si128(b), _mm256_extracti128_si256(b, 1));
}

/* The 16 signed scales of a Q3_K block as int16. */
KVP_AI __m256i kvp_kq_q3_scales16(const uint8_t *s12) {
    int8_t sc[16];
    kvp_kq_q3_scales(s12, sc);
    return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
}

/* ---------------------------------------------------------------------------------------
 * K-quants: each returns an 8-lane vector whose lane sum is the dot product.
 * ------------------------------------------------------------------------------------- */

/* Sum over the 8 groups of 32 of scale * dot(u, x), for the unsigned values ul, uh of
 * group pairs (low nibbles group 2j, high 2j+1) that the statements given as arguments set. */
#define KVP_KQ_GROUPS32(...)                                                         \
    __m256i sumi = _mm256_setzero_si256();                                              \
    _Pragma("GCC unroll 4")                                                             \
    for (int j = 0; j < 4; j++) {                                                       \
        __m256i ul, uh;                                                                 \
        __VA_ARGS__                                                                     \
        const __m256i xl = _mm256_loadu_si256((const __m256i *)(b->qs + 64 * j));       \
        const __m256i xh = _mm256_loadu_si256((const __m256i *)(b->qs + 64 * j + 32));  \
        const __m256i pl = _mm256_madd_epi16(kvp_kq_word(sc, 2 * j), _mm256_maddubs_epi16(ul, xl)); \
        const __m256i ph = _mm256_madd_epi16(kvp_kq_word(sc, 2 * j + 1), _mm256_maddubs_epi16(uh, xh)); \
        sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));                        \
    }

KVP_AI __m256 kvp_dot8_q4_K(const void *wv, const void *xv, int nb) {
    const kvp_block_q4_K *w = wv;
    const kvp_block_q8_K *x = xv;
    const __m256i m4 = _mm256_set1_epi8(15);
    __m256 acc = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const kvp_block_q4_K *a = &w[i];
        const kvp_block_q8_K *b = &x[i];
        const __m256i sm = _mm256_cvtepu8_epi16(kvp_kq_scales_mins(a->scales));
        const __m128i mins = _mm256_extracti128_si256(sm, 1);
        const __m256i sc = _mm256_permute2x128_si256(sm, sm, 0x00);
        const __m128i pm = _mm_madd_epi16(mins, kvp_kq_bsums32(b));
        accm = _mm_fmadd_ps(_mm_set1_ps(b->d * kvp_f16_to_f32(a->dmin)), _mm_cvtepi32_ps(pm), accm);
        KVP_KQ_GROUPS32({
            const __m256i q = _mm256_loadu_si256((const __m256i *)(a->qs + 32 * j));
            ul = _mm256_and_si256(q, m4);
            uh = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        })
        acc = _mm256_fmadd_ps(_mm256_set1_ps(b->d * kvp_f16_to_f32(a->d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return _mm256_sub_ps(acc, _mm256_insertf128_ps(_mm256_setzero_ps(), accm, 0));
}

KVP_AI __m256 kvp_dot8_q5_K(const void *wv, const void *xv, int nb) {
    const kvp_block_q5_K *w = wv;
    const kvp_block_q8_K *x = xv;
    const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const kvp_block_q5_K *a = &w[i];
        const kvp_block_q8_K *b = &x[i];
        const __m256i sm = _mm256_cvtepu8_epi16(kvp_kq_scales_mins(a->scales));
        const __m128i mins = _mm256_extracti128_si256(sm, 1);
        const __m256i sc = _mm256_permute2x128_si256(sm, sm, 0x00);
        const __m128i pm = _mm_madd_epi16(mins, kvp_kq_bsums32(b));
        accm = _mm_fmadd_ps(_mm_set1_ps(b->d * kvp_f16_to_f32(a->dmin)), _mm_cvtepi32_ps(pm), accm);
        const __m256i qh = _mm256_loadu_si256((const __m256i *)a->qh);
        KVP_KQ_GROUPS32({
            const __m256i q = _mm256_loadu_si256((const __m256i *)(a->qs + 32 * j));
            const __m256i hl = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * j), one);
            const __m256i hh = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * j + 1), one);
            ul = _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_slli_epi16(hl, 4));
            uh = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4), _mm256_slli_epi16(hh, 4));
        })
        acc = _mm256_fmadd_ps(_mm256_set1_ps(b->d * kvp_f16_to_f32(a->d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return _mm256_sub_ps(acc, _mm256_insertf128_ps(_mm256_setzero_ps(), accm, 0));
}

/* Sum over the 16 groups of 16 of scale * dot(u, x): chunk c (0..7) of 32 unsigned values
 * u (two groups) is set by the statements given as arguments; sc16 holds the 16 scales as int16. */
#define KVP_KQ_GROUPS16(...)                                                          \
    __m256i sumi = _mm256_setzero_si256();                                               \
    const __m256i sclo = _mm256_permute2x128_si256(sc16, sc16, 0x00);                    \
    const __m256i schi = _mm256_permute2x128_si256(sc16, sc16, 0x11);                    \
    _Pragma("GCC unroll 8")                                                              \
    for (int c = 0; c < 8; c++) {                                                        \
        __m256i u;                                                                       \
        __VA_ARGS__                                                                      \
        const __m256i xq = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * c));        \
        const __m256i s = kvp_kq_pair_words(c < 4 ? sclo : schi, c & 3);                \
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(s, _mm256_maddubs_epi16(u, xq))); \
    }

/* The sum over 16 groups of scale * bsum, as float (for offsets and mins). */
KVP_AI float kvp_kq_scaled_bsums(__m256i sc16, const kvp_block_q8_K *b) {
    const __m256i bs = _mm256_loadu_si256((const __m256i *)b->bsums);
    return (float)kvp_kq_hsum_i32(_mm256_madd_epi16(sc16, bs));
}

KVP_AI __m256 kvp_dot8_q6_K(const void *wv, const void *xv, int nb) {
    const kvp_block_q6_K *w = wv;
    const kvp_block_q8_K *x = xv;
    const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const kvp_block_q6_K *a = &w[i];
        const kvp_block_q8_K *b = &x[i];
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)a->scales));
        KVP_KQ_GROUPS16({
            const int h = c / 4, j = c % 4;
            const __m256i ql = _mm256_loadu_si256((const __m256i *)(a->ql + 64 * h + 32 * (j & 1)));
            const __m256i qh = _mm256_loadu_si256((const __m256i *)(a->qh + 32 * h));
            const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(ql, 4 * (j >> 1)), m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * j), m2);
            u = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
        })
        const float off = 32.0f * kvp_kq_scaled_bsums(sc16, b);
        const __m256 v = _mm256_sub_ps(_mm256_cvtepi32_ps(sumi), _mm256_setr_ps(off, 0, 0, 0, 0, 0, 0, 0));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(b->d * kvp_f16_to_f32(a->d)), v, acc);
    }
    return acc;
}

KVP_AI __m256 kvp_dot8_q3_K(const void *wv, const void *xv, int nb) {
    const kvp_block_q3_K *w = wv;
    const kvp_block_q8_K *x = xv;
    const __m256i m2 = _mm256_set1_epi8(3), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const kvp_block_q3_K *a = &w[i];
        const kvp_block_q8_K *b = &x[i];
        const __m256i sc16 = kvp_kq_q3_scales16(a->scales);
        const __m256i hm = _mm256_loadu_si256((const __m256i *)a->hmask);
        KVP_KQ_GROUPS16({
            const int h = c / 4, j = c % 4;
            const __m256i q = _mm256_loadu_si256((const __m256i *)(a->qs + 32 * h));
            const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(q, 2 * j), m2);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(hm, 4 * h + j), one);
            u = _mm256_or_si256(lo, _mm256_slli_epi16(hi, 2)); /* value + 4 */
        })
        const float off = 4.0f * kvp_kq_scaled_bsums(sc16, b);
        const __m256 v = _mm256_sub_ps(_mm256_cvtepi32_ps(sumi), _mm256_setr_ps(off, 0, 0, 0, 0, 0, 0, 0));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(b->d * kvp_f16_to_f32(a->d)), v, acc);
    }
    return acc;
}

KVP_AI __m256 kvp_dot8_q2_K(const void *wv, const void *xv, int nb) {
    const kvp_block_q2_K *w = wv;
    const kvp_block_q8_K *x = xv;
    const __m256i m2 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(15);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const kvp_block_q2_K *a = &w[i];
        const kvp_block_q8_K *b = &x[i];
        const __m128i s8 = _mm_loadu_si128((const __m128i *)a->scales);
        const __m256i sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(s8, m4));
        const __m256i mn16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s8, 4), m4));
        KVP_KQ_GROUPS16({
            const __m256i q = _mm256_loadu_si256((const __m256i *)(a->qs + 32 * (c / 4)));
            u = _mm256_and_si256(_mm256_srli_epi16(q, 2 * (c % 4)), m2);
        })
        const float mins = kvp_kq_scaled_bsums(mn16, b) * (b->d * kvp_f16_to_f32(a->dmin));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(b->d * kvp_f16_to_f32(a->d)), _mm256_cvtepi32_ps(sumi), acc);
        acc = _mm256_sub_ps(acc, _mm256_setr_ps(mins, 0, 0, 0, 0, 0, 0, 0));
    }
    return acc;
}

/* ---------------------------------------------------------------------------------------
 * Q5_0, Q4_1, Q5_1: blocks of 32.
 * ------------------------------------------------------------------------------------- */

/* 32 bytes: byte j is 0xff where bit j of the 32-bit word is set, else 0. */
KVP_AI __m256i kvp_kq_bits_to_bytes(const uint8_t *qh4) {
    uint32_t bits;
    memcpy(&bits, qh4, 4);
    const __m256i spread = _mm256_setr_epi64x(0, 0x0101010101010101ll, 0x0202020202020202ll,
                                              0x0303030303030303ll);
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), spread);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

/* The 32 nibbles of a block in value order (low nibbles, then high nibbles). */
KVP_AI __m256i kvp_kq_nibbles(const uint8_t *qs) {
    const __m128i v = _mm_loadu_si128((const __m128i *)qs);
    const __m128i m = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}

/* 8 int32 lanes of the sum of u * x over 32 bytes (u unsigned, x signed). */
KVP_AI __m256i kvp_kq_dot32(__m256i u, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1));
}

KVP_AI __m256 kvp_dot8_q5_0(const void *wv, const void *xv, int nb) {
    const kvp_block_q5_0 *w = wv;
    const kvp_block_q8_0 *x = xv;
    const __m256i f0 = _mm256_set1_epi8((char)0xf0);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        /* signed value: the nibble, with 0xf0 (i.e. minus 16) where the fifth bit is clear */
        const __m256i q = _mm256_or_si256(kvp_kq_nibbles(w[i].qs),
                                          _mm256_andnot_si256(kvp_kq_bits_to_bytes(w[i].qh), f0));
        const __m256i xq = _mm256_loadu_si256((const __m256i *)x[i].qs);
        const __m256i p = kvp_kq_dot32(_mm256_sign_epi8(q, q), _mm256_sign_epi8(xq, q));
        const float d = kvp_f16_to_f32(w[i].d) * kvp_f16_to_f32(x[i].d);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(p), acc);
    }
    return acc;
}

/* Q4_1 / Q5_1 block: d * dx * sum(u * x) + m * s, the second term in lane 0. */
KVP_AI __m256 kvp_kq_offset_block(__m256 acc, __m256i u, uint16_t d, uint16_t m, const kvp_block_q8_1 *x) {
    const __m256i p = kvp_kq_dot32(u, _mm256_loadu_si256((const __m256i *)x->qs));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(kvp_f16_to_f32(d) * kvp_f16_to_f32(x->d)), _mm256_cvtepi32_ps(p), acc);
    return _mm256_add_ps(acc, _mm256_setr_ps(kvp_f16_to_f32(m) * kvp_f16_to_f32(x->s), 0, 0, 0, 0, 0, 0, 0));
}

KVP_AI __m256 kvp_dot8_q4_1(const void *wv, const void *xv, int nb) {
    const kvp_block_q4_1 *w = wv;
    const kvp_block_q8_1 *x = xv;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) acc = kvp_kq_offset_block(acc, kvp_kq_nibbles(w[i].qs), w[i].d, w[i].m, &x[i]);
    return acc;
}

KVP_AI __m256 kvp_dot8_q5_1(const void *wv, const void *xv, int nb) {
    const kvp_block_q5_1 *w = wv;
    const kvp_block_q8_1 *x = xv;
    const __m256i b4 = _mm256_set1_epi8(16);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        const __m256i u = _mm256_or_si256(kvp_kq_nibbles(w[i].qs), _mm256_and_si256(kvp_kq_bits_to_bytes(w[i].qh), b4));
        acc = kvp_kq_offset_block(acc, u, w[i].d, w[i].m, &x[i]);
    }
    return acc;
}

/* ---------------------------------------------------------------------------------------
 * Matrix products.
 * ------------------------------------------------------------------------------------- */

/* Y[i*ldy + r] = dot(W row r, X row i) with the 8-lane dot `dot8` of one weight type. */
#define KVP_KQ_GEMM(name, WBLK, XBLK, BS)                                                     \
    static void kvp_gemm_##name##_avx2(const void *w, int cols, const void *xp, int n,        \
                                       float *y, int ldy, int r0, int r1) {                   \
        const int nb = cols / (BS);                                                           \
        const size_t wrow = (size_t)nb * sizeof(WBLK), xrow = (size_t)nb * sizeof(XBLK);      \
        for (int rb = r0; rb < r1; rb += KVP_KQ_RB) {                                         \
            const int re = KVP_MIN(r1, rb + KVP_KQ_RB);                                       \
            for (int i = 0; i < n; i++) {                                                     \
                const char *x = (const char *)xp + (size_t)i * xrow, *wr = w;                 \
                float *yi = y + (size_t)i * ldy;                                              \
                int r = rb;                                                                   \
                for (; r + 4 <= re; r += 4)                                                   \
                    _mm_storeu_ps(yi + r, kvp_kq_hsum4(kvp_dot8_##name(wr + (size_t)r * wrow, x, nb), \
                                                       kvp_dot8_##name(wr + (size_t)(r + 1) * wrow, x, nb), \
                                                       kvp_dot8_##name(wr + (size_t)(r + 2) * wrow, x, nb), \
                                                       kvp_dot8_##name(wr + (size_t)(r + 3) * wrow, x, nb))); \
                for (; r < re; r++) yi[r] = kvp_kq_hsum(kvp_dot8_##name(wr + (size_t)r * wrow, x, nb)); \
            }                                                                                 \
        }                                                                                     \
    }

KVP_KQ_GEMM(q2_K, kvp_block_q2_K, kvp_block_q8_K, KVP_QK_K)
KVP_KQ_GEMM(q3_K, kvp_block_q3_K, kvp_block_q8_K, KVP_QK_K)
KVP_KQ_GEMM(q4_K, kvp_block_q4_K, kvp_block_q8_K, KVP_QK_K)
KVP_KQ_GEMM(q5_K, kvp_block_q5_K, kvp_block_q8_K, KVP_QK_K)
KVP_KQ_GEMM(q6_K, kvp_block_q6_K, kvp_block_q8_K, KVP_QK_K)
KVP_KQ_GEMM(q5_0, kvp_block_q5_0, kvp_block_q8_0, 32)
KVP_KQ_GEMM(q4_1, kvp_block_q4_1, kvp_block_q8_1, 32)
KVP_KQ_GEMM(q5_1, kvp_block_q5_1, kvp_block_q8_1, 32)

void kvp_ktable_fill_kquants_avx2(kvp_ktable *t) {
    t->gemm[KVP_TYPE_Q2_K] = kvp_gemm_q2_K_avx2;
    t->gemm[KVP_TYPE_Q3_K] = kvp_gemm_q3_K_avx2;
    t->gemm[KVP_TYPE_Q4_K] = kvp_gemm_q4_K_avx2;
    t->gemm[KVP_TYPE_Q5_K] = kvp_gemm_q5_K_avx2;
    t->gemm[KVP_TYPE_Q6_K] = kvp_gemm_q6_K_avx2;
    t->gemm[KVP_TYPE_Q5_0] = kvp_gemm_q5_0_avx2;
    t->gemm[KVP_TYPE_Q4_1] = kvp_gemm_q4_1_avx2;
    t->gemm[KVP_TYPE_Q5_1] = kvp_gemm_q5_1_avx2;
}

#else /* built without the AVX2 flags: the table keeps the scalar kernels */

void kvp_ktable_fill_kquants_avx2(kvp_ktable *t) { (void)t; }

#endif
