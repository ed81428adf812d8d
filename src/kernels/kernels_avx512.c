/*
 * kernels_avx512.c: the AVX-512 kernels (F, BW, VL, DQ, VNNI), for Zen 4/5 and Intel
 * Ice Lake and later. Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni
 * -mfma -mf16c -mavx2; only called when the CPU has all of them (kernels.c checks).
 *
 * Matrix multiplication, Y[i][r] = dot(W[r], X[i]), is a dot-product formulation: both W
 * rows and X rows run along the K (cols) dimension, so a register tile of R weight rows x T
 * tokens keeps R*T vector accumulators that collect 16 partial sums each over K, and the
 * partial sums are reduced once per tile at the end (kvp_hsum4: four accumulators into four
 * sums with 9 shuffles and 5 adds). Each weight vector is loaded and converted once per
 * K step and used for all T tokens; each activation vector is used for all R rows.
 *
 * Cache blocking for prefill (n > 1): K is cut into chunks (a chunk of T activation rows
 * stays in L1), rows into blocks (a block of weight rows of one chunk stays in L2); within
 * a block the tokens advance in tiles of T and, for each, the rows in tiles of R. Results
 * of the second and later K chunks are added to Y. Decode (n = 1) streams the weights once,
 * as two linear streams with software prefetch (see KVP_PF_DIST).
 *
 * Q8_0 and Q4_0 weights use VNNI (vpdpbusd: unsigned bytes times signed bytes, summed in
 * groups of 4 into int32 lanes). The unsigned operand is the weight made unsigned by an
 * offset (Q8_0: w + 128, Q4_0: the raw nibble = w + 8) and the signed operand is the
 * activation; the offset times the activation's group sum is subtracted by starting the
 * accumulation from -offset * sum(x) (precomputed per token in a small "panel"). This is
 * exact for every int8 value, -128 included. Two blocks (64 values) make one K step; the
 * int32 lanes of each block are scaled by d_w * d_x in float.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "common/common.h"
#include "kernels/kernels_internal.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && \
    defined(__AVX512DQ__) && defined(__AVX512VNNI__) && defined(__FMA__) && defined(__F16C__)

#define KVP_AI static inline __attribute__((always_inline))
/* Full unrolling of the small constant-count loops over register tiles (rows, tokens,
 * heads, vectors), so that the accumulator arrays live in registers. */
#if defined(__clang__)
#define KVP_UNROLL _Pragma("clang loop unroll(full)")
#else
#define KVP_UNROLL _Pragma("GCC unroll 16")
#endif

/* ---------------------------------------------------------------------------------------
 * Shared helpers.
 * ------------------------------------------------------------------------------------- */

/* [sum(a), sum(b), sum(c), sum(d)] of four 16-lane vectors. */
KVP_AI __m128 kvp_hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    /* 128-bit lanes [a0+a2, a1+a3, b0+b2, b1+b3] and likewise for c, d */
    const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
    /* lanes [a, b, c, d], each four partial sums */
    __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
    s = _mm512_add_ps(s, _mm512_permute_ps(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm512_add_ps(s, _mm512_permute_ps(s, _MM_SHUFFLE(2, 3, 0, 1)));
    const __m512i first = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 8, 4, 0);
    return _mm512_castps512_ps128(_mm512_permutexvar_ps(first, s));
}

/* sum(a) in exactly the order kvp_hsum4 sums each of its vectors, so that a row's result
 * does not depend on whether it was reduced alone or in a group of four (callers split
 * rows across threads, and results must not change with the split). */
KVP_AI float kvp_hsum1(__m512 a) {
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps(a, 1));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_permute_ps(q, _MM_SHUFFLE(1, 0, 3, 2)));
    q = _mm_add_ps(q, _mm_permute_ps(q, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtss_f32(q);
}

/* Stores (or with accum adds) the R sums of acc[0..R-1] to y[0..R-1]; R is 1, 2, 3, 4 or 8.
 * Every sum is formed in the same order whatever R. */
KVP_AI void kvp_store_sums(const int R, const __m512 *acc, float *y, int accum, float scale) {
    if (R >= 4) {
KVP_UNROLL
        for (int g = 0; g < R; g += 4) {
            __m128 v = _mm_mul_ps(kvp_hsum4(acc[g], acc[g + 1], acc[g + 2], acc[g + 3]),
                                  _mm_set1_ps(scale));
            if (accum) v = _mm_add_ps(v, _mm_loadu_ps(y + g));
            _mm_storeu_ps(y + g, v);
        }
    } else {
KVP_UNROLL
        for (int r = 0; r < R; r++) {
            const float s = kvp_hsum1(acc[r]) * scale;
            y[r] = accum ? y[r] + s : s;
        }
    }
}

KVP_AI __mmask16 kvp_mask16(int m) { return (__mmask16)((1u << m) - 1u); }

/* Element types of weights and cached rows; I8: signed 8-bit integers (the cold tier's
 * 8-bit rows, whose per-row scales the callers apply). */
enum { KVP_E_F32 = 0, KVP_E_F16 = 1, KVP_E_BF16 = 2, KVP_E_I8 = 3 };

KVP_AI size_t kvp_esize(const int et) { return et == KVP_E_F32 ? 4 : et == KVP_E_I8 ? 1 : 2; }

/* 16 values of element type et at p, as floats. */
KVP_AI __m512 kvp_ld(const int et, const void *p) {
    if (et == KVP_E_F32) return _mm512_loadu_ps(p);
    if (et == KVP_E_I8) return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
    const __m256i h = _mm256_loadu_si256((const __m256i *)p);
    if (et == KVP_E_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* The first m values (lanes of mask) at p; the other lanes are 0 and are not read. */
KVP_AI __m512 kvp_ld_mask(const int et, const void *p, __mmask16 mask) {
    if (et == KVP_E_F32) return _mm512_maskz_loadu_ps(mask, p);
    if (et == KVP_E_I8) return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mask, p)));
    const __m256i h = _mm256_maskz_loadu_epi16(mask, p);
    if (et == KVP_E_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* ---------------------------------------------------------------------------------------
 * F32 / F16 / BF16 weights x F32 activations.
 * ------------------------------------------------------------------------------------- */

#define KVP_FG_R 4       /* weight rows per prefill tile */
#define KVP_FG_T 6       /* tokens per prefill tile: 24 accumulators + 4 weights + 1 */
#define KVP_FG_KC 1024   /* K chunk: 6 activation rows of it are 24 KB (L1) */
#define KVP_FG_RB 128    /* rows per block: 128 x 1024 F16 values are 256 KB (L2) */

/* Y tile: y[t*ldy + r] (+)= sum_{k in [k0,k1)} W[r][k] X[t][k], r < R, t < T. w points at
 * row 0 of the tile, x at token 0; y at (token 0, row 0). */
KVP_AI void kvp_fgemm_tile(const int et, const int R, const int T, const char *w, size_t wrow,
                           const float *x, size_t xrow, int k0, int k1, float *y, int ldy,
                           int accum) {
    const size_t es = kvp_esize(et);
    __m512 acc[8][KVP_FG_T];
KVP_UNROLL
    for (int r = 0; r < R; r++)
KVP_UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    int k = k0;
    for (; k + 16 <= k1; k += 16) {
        __m512 wv[8];
KVP_UNROLL
        for (int r = 0; r < R; r++) wv[r] = kvp_ld(et, w + r * wrow + (size_t)k * es);
KVP_UNROLL
        for (int t = 0; t < T; t++) {
            const __m512 xv = _mm512_loadu_ps(x + t * xrow + k);
KVP_UNROLL
            for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    if (k < k1) {
        const __mmask16 m = kvp_mask16(k1 - k);
        __m512 wv[8];
KVP_UNROLL
        for (int r = 0; r < R; r++) wv[r] = kvp_ld_mask(et, w + r * wrow + (size_t)k * es, m);
KVP_UNROLL
        for (int t = 0; t < T; t++) {
            const __m512 xv = _mm512_maskz_loadu_ps(m, x + t * xrow + k);
KVP_UNROLL
            for (int r = 0; r < R; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
KVP_UNROLL
    for (int t = 0; t < T; t++) {
        __m512 col[8];
KVP_UNROLL
        for (int r = 0; r < R; r++) col[r] = acc[r][t];
        kvp_store_sums(R, col, y + (size_t)t * ldy, accum, 1.0f);
    }
}

/* Decode is bound by memory bandwidth, and one core reaches the DRAM bandwidth only with
 * enough reads in flight. Measured on Zen 5 (8192 x 768, data cycling through 200 MB):
 * tiles of 8 rows read side by side (8 short streams) reach about 60% of a plain read
 * loop, rows read one after the other (one linear stream) about 65%, and 85-90% with
 * software prefetch KVP_PF_DIST bytes ahead; reading the two halves of the row range as two
 * linear streams, 4 rows of each in turn, with the same prefetch reaches 90-97%. KV rows in
 * attention are read as one linear stream with the same prefetch. */
#ifndef KVP_PF_DIST
#define KVP_PF_DIST 4096 /* bytes; 0 disables software prefetch */
#endif
/* Prefetches the line KVP_PF_DIST bytes past p into L1. The address is formed as an integer:
 * it may lie past the end of the matrix, where a pointer must not point (prefetches never
 * fault). */
KVP_AI void kvp_prefetch(const void *p) {
    if (KVP_PF_DIST) _mm_prefetch((const char *)((uintptr_t)p + KVP_PF_DIST), _MM_HINT_T0);
}

/* Decode: dot(W row at wr, x) as 16 partial sums, with 4 accumulators, prefetching ahead. */
KVP_AI __m512 kvp_fgemv_row(const int et, const char *wr, const float *x, int cols) {
    const size_t es = kvp_esize(et);
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int k = 0;
    for (; k + 64 <= cols; k += 64) {
        const char *p = wr + (size_t)k * es;
KVP_UNROLL
        for (size_t o = 0; o < 64 * es; o += 64) kvp_prefetch(p + o);
        a0 = _mm512_fmadd_ps(kvp_ld(et, p), _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(kvp_ld(et, p + 16 * es), _mm512_loadu_ps(x + k + 16), a1);
        a2 = _mm512_fmadd_ps(kvp_ld(et, p + 32 * es), _mm512_loadu_ps(x + k + 32), a2);
        a3 = _mm512_fmadd_ps(kvp_ld(et, p + 48 * es), _mm512_loadu_ps(x + k + 48), a3);
    }
    for (; k + 16 <= cols; k += 16)
        a0 = _mm512_fmadd_ps(kvp_ld(et, wr + (size_t)k * es), _mm512_loadu_ps(x + k), a0);
    if (k < cols) {
        const __mmask16 m = kvp_mask16(cols - k);
        a1 = _mm512_fmadd_ps(kvp_ld_mask(et, wr + (size_t)k * es, m), _mm512_maskz_loadu_ps(m, x + k), a1);
    }
    return _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
}

/* Small batches (2 to KVP_FG_SMALL tokens, e.g. a decode step of a few sessions) are bound by
 * memory bandwidth like decode: they take its two prefetched linear streams, each weight
 * vector loaded once for all T tokens, instead of the prefill tiles' short row streams. */
#define KVP_FG_SMALL 4

/* dot(W row at wr, token t's x) for T tokens as 16 partial sums each (s[t]), two
 * accumulators per token, prefetching ahead. */
KVP_AI void kvp_fgemv_row_t(const int et, const int T, const char *wr, const float *x, size_t xrow, int cols,
                            __m512 *s) {
    const size_t es = kvp_esize(et);
    __m512 a0[KVP_FG_SMALL], a1[KVP_FG_SMALL];
KVP_UNROLL
    for (int t = 0; t < T; t++) a0[t] = a1[t] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= cols; k += 32) {
        const char *p = wr + (size_t)k * es;
KVP_UNROLL
        for (size_t o = 0; o < 32 * es; o += 64) kvp_prefetch(p + o);
        const __m512 w0 = kvp_ld(et, p), w1 = kvp_ld(et, p + 16 * es);
KVP_UNROLL
        for (int t = 0; t < T; t++) {
            a0[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + t * xrow + k), a0[t]);
            a1[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + t * xrow + k + 16), a1[t]);
        }
    }
    for (; k + 16 <= cols; k += 16) {
        const __m512 w0 = kvp_ld(et, wr + (size_t)k * es);
KVP_UNROLL
        for (int t = 0; t < T; t++) a0[t] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + t * xrow + k), a0[t]);
    }
    if (k < cols) {
        const __mmask16 m = kvp_mask16(cols - k);
        const __m512 w1 = kvp_ld_mask(et, wr + (size_t)k * es, m);
KVP_UNROLL
        for (int t = 0; t < T; t++) a1[t] = _mm512_fmadd_ps(w1, _mm512_maskz_loadu_ps(m, x + t * xrow + k), a1[t]);
    }
KVP_UNROLL
    for (int t = 0; t < T; t++) s[t] = _mm512_add_ps(a0[t], a1[t]);
}

/* Rows r, r + 1, ..., r + R - 1 (R <= 4) for T tokens. */
KVP_AI void kvp_fgemm_small_rows(const int et, const int T, const int R, const char *w, size_t wrow, const float *x,
                                 int cols, float *y, int ldy, int r) {
    __m512 s[4][KVP_FG_SMALL];
KVP_UNROLL
    for (int i = 0; i < R; i++) kvp_fgemv_row_t(et, T, w + (r + i) * wrow, x, (size_t)cols, cols, s[i]);
KVP_UNROLL
    for (int t = 0; t < T; t++) {
        __m512 col[4];
KVP_UNROLL
        for (int i = 0; i < R; i++) col[i] = s[i][t];
        kvp_store_sums(R, col, y + (size_t)t * ldy + r, 0, 1.0f);
    }
}

/* A small batch: the two halves of the rows as two linear streams, 4 rows of each in turn
 * (as decode), then the last rows one by one. A row's sums do not depend on [r0, r1). */
KVP_AI void kvp_fgemm_small(const int et, const int T, const char *w, size_t wrow, const float *x, int cols,
                            float *y, int ldy, int r0, int r1) {
    const int groups = (r1 - r0) / 4, ga = (groups + 1) / 2;
    for (int g = 0; g < groups; g++)
        kvp_fgemm_small_rows(et, T, 4, w, wrow, x, cols, y, ldy, r0 + 4 * (g % 2 ? ga + g / 2 : g / 2));
    for (int r = r0 + 4 * groups; r < r1; r++) kvp_fgemm_small_rows(et, T, 1, w, wrow, x, cols, y, ldy, r);
}

/* Splits n into pieces of at most max, as equal as possible, rounded up to a multiple of
 * align: returns the piece size. */
static int kvp_even_chunk(int n, int max, int align) {
    int pieces = (n + max - 1) / max;
    int c = (n + pieces - 1) / pieces;
    return (c + align - 1) / align * align;
}

/* Rows r .. r + R - 1 for T tokens over columns [k0, k1) (stored, or added to y when accum),
 * each weight vector loaded once for the batch and each activation vector once per R rows,
 * the R row streams prefetched ahead (as decode). One accumulator per (row, token), the same
 * operations as the prefill tiles (kvp_fgemm_tile), so a token's sums are those of any batch
 * of 5 or more. (kvp_fgemm_tile with a prefetch flag instead measured 5-8% slower at 6-8
 * sessions, so the two stay apart.) */
KVP_AI void kvp_fgemm_mid_rows(const int et, const int T, const int R, const char *w, size_t wrow, const float *x,
                               int cols, int k0, int k1, float *y, int ldy, int accum) {
    const size_t es = kvp_esize(et);
    __m512 acc[4][8];
KVP_UNROLL
    for (int i = 0; i < R; i++)
KVP_UNROLL
        for (int t = 0; t < T; t++) acc[i][t] = _mm512_setzero_ps();
    int k = k0;
    for (; k + 16 <= k1; k += 16) {
        __m512 wv[4];
KVP_UNROLL
        for (int i = 0; i < R; i++) {
            const char *p = w + i * wrow + (size_t)k * es;
            if ((k & 31) == 0) kvp_prefetch(p);
            wv[i] = kvp_ld(et, p);
        }
KVP_UNROLL
        for (int t = 0; t < T; t++) {
            const __m512 xv = _mm512_loadu_ps(x + (size_t)t * cols + k);
KVP_UNROLL
            for (int i = 0; i < R; i++) acc[i][t] = _mm512_fmadd_ps(wv[i], xv, acc[i][t]);
        }
    }
    if (k < k1) {
        const __mmask16 m = kvp_mask16(k1 - k);
        __m512 wv[4];
KVP_UNROLL
        for (int i = 0; i < R; i++) wv[i] = kvp_ld_mask(et, w + i * wrow + (size_t)k * es, m);
KVP_UNROLL
        for (int t = 0; t < T; t++) {
            const __m512 xv = _mm512_maskz_loadu_ps(m, x + (size_t)t * cols + k);
KVP_UNROLL
            for (int i = 0; i < R; i++) acc[i][t] = _mm512_fmadd_ps(wv[i], xv, acc[i][t]);
        }
    }
KVP_UNROLL
    for (int t = 0; t < T; t++) {
        __m512 col[4];
KVP_UNROLL
        for (int i = 0; i < R; i++) col[i] = acc[i][t];
        kvp_store_sums(R, col, y + (size_t)t * ldy, accum, 1.0f);
    }
}

/* A batch of 5 to 8 tokens (a decode step of that many sessions): pairs of rows with all T
 * tokens, so each weight is read once for the batch (the prefill tiles take 6 tokens at a
 * time: 7 or 8 would read it twice), the two halves of the rows as two linear streams as
 * decode, the K chunks of the prefill path. A row's sums do not depend on [r0, r1). */
KVP_AI void kvp_fgemm_mid(const int et, const int T, const char *w, size_t wrow, const float *x, int cols, float *y,
                          int ldy, int r0, int r1) {
    const int kc = kvp_even_chunk(cols, KVP_FG_KC, 16), pairs = (r1 - r0) / 2, ha = (pairs + 1) / 2;
    for (int g = 0; g < pairs; g++) {
        const int r = r0 + 2 * (g % 2 ? ha + g / 2 : g / 2);
        for (int k0 = 0; k0 < cols; k0 += kc)
            kvp_fgemm_mid_rows(et, T, 2, w + r * wrow, wrow, x, cols, k0, KVP_MIN(cols, k0 + kc), y + r, ldy, k0 > 0);
    }
    for (int r = r0 + 2 * pairs; r < r1; r++)
        for (int k0 = 0; k0 < cols; k0 += kc)
            kvp_fgemm_mid_rows(et, T, 1, w + r * wrow, wrow, x, cols, k0, KVP_MIN(cols, k0 + kc), y + r, ldy, k0 > 0);
}

/* Rows [r0, r1) of one K chunk for a tile of T tokens: tiles of 4 rows, then single rows. */
KVP_AI void kvp_fgemm_rows(const int et, const int T, const char *w, size_t wrow, const float *x,
                           size_t xrow, int k0, int k1, float *y, int ldy, int r0, int r1,
                           int accum) {
    int r = r0;
    for (; r + KVP_FG_R <= r1; r += KVP_FG_R)
        kvp_fgemm_tile(et, KVP_FG_R, T, w + r * wrow, wrow, x, xrow, k0, k1, y + r, ldy, accum);
    for (; r < r1; r++)
        kvp_fgemm_tile(et, 1, T, w + r * wrow, wrow, x, xrow, k0, k1, y + r, ldy, accum);
}


KVP_AI void kvp_fgemm(const int et, const void *wv, int cols, const void *xp, int n, float *y,
                      int ldy, int r0, int r1) {
    const char *w = wv;
    const float *x = xp;
    const size_t wrow = (size_t)cols * kvp_esize(et);
    if (n == 1) { /* decode: two linear streams (the two halves of the rows), 4 rows of each
                   * in turn; see KVP_PF_DIST */
        const int groups = (r1 - r0) / 4, ga = (groups + 1) / 2;
        for (int g = 0; g < groups; g++) {
            const int r = r0 + 4 * (g % 2 ? ga + g / 2 : g / 2);
            __m512 sr[4];
KVP_UNROLL
            for (int i = 0; i < 4; i++) sr[i] = kvp_fgemv_row(et, w + (r + i) * wrow, x, cols);
            kvp_store_sums(4, sr, y + r, 0, 1.0f);
        }
        for (int r = r0 + 4 * groups; r < r1; r++) {
            const __m512 sr = kvp_fgemv_row(et, w + r * wrow, x, cols);
            kvp_store_sums(1, &sr, y + r, 0, 1.0f);
        }
        return;
    }
    switch (n) {
    case 2: kvp_fgemm_small(et, 2, w, wrow, x, cols, y, ldy, r0, r1); return;
    case 3: kvp_fgemm_small(et, 3, w, wrow, x, cols, y, ldy, r0, r1); return;
    case 4: kvp_fgemm_small(et, 4, w, wrow, x, cols, y, ldy, r0, r1); return;
    case 5: kvp_fgemm_mid(et, 5, w, wrow, x, cols, y, ldy, r0, r1); return;
    case 6: kvp_fgemm_mid(et, 6, w, wrow, x, cols, y, ldy, r0, r1); return;
    case 7: kvp_fgemm_mid(et, 7, w, wrow, x, cols, y, ldy, r0, r1); return;
    case 8: kvp_fgemm_mid(et, 8, w, wrow, x, cols, y, ldy, r0, r1); return;
    default: break;
    }
    const int kc = kvp_even_chunk(cols, KVP_FG_KC, 16);
    for (int rb = r0; rb < r1; rb += KVP_FG_RB) {
        const int re = KVP_MIN(r1, rb + KVP_FG_RB);
        for (int k0 = 0; k0 < cols; k0 += kc) {
            const int k1 = KVP_MIN(cols, k0 + kc), accum = k0 > 0;
            for (int t = 0; t < n; t += KVP_FG_T) {
                const float *xt = x + (size_t)t * cols;
                float *yt = y + (size_t)t * ldy;
                switch (KVP_MIN(KVP_FG_T, n - t)) {
                case 6: kvp_fgemm_rows(et, 6, w, wrow, xt, cols, k0, k1, yt, ldy, rb, re, accum); break;
                case 5: kvp_fgemm_rows(et, 5, w, wrow, xt, cols, k0, k1, yt, ldy, rb, re, accum); break;
                case 4: kvp_fgemm_rows(et, 4, w, wrow, xt, cols, k0, k1, yt, ldy, rb, re, accum); break;
                case 3: kvp_fgemm_rows(et, 3, w, wrow, xt, cols, k0, k1, yt, ldy, rb, re, accum); break;
                case 2: kvp_fgemm_rows(et, 2, w, wrow, xt, cols, k0, k1, yt, ldy, rb, re, accum); break;
                default: kvp_fgemm_rows(et, 1, w, wrow, xt, cols, k0, k1, yt, ldy, rb, re, accum); break;
                }
            }
        }
    }
}

static void kvp_gemm_f32_avx512(const void *w, int cols, const void *xp, int n, float *y,
                                int ldy, int r0, int r1) {
    kvp_fgemm(KVP_E_F32, w, cols, xp, n, y, ldy, r0, r1);
}
static void kvp_gemm_f16_avx512(const void *w, int cols, const void *xp, int n, float *y,
                                int ldy, int r0, int r1) {
    kvp_fgemm(KVP_E_F16, w, cols, xp, n, y, ldy, r0, r1);
}
static void kvp_gemm_bf16_avx512(const void *w, int cols, const void *xp, int n, float *y,
                                 int ldy, int r0, int r1) {
    kvp_fgemm(KVP_E_BF16, w, cols, xp, n, y, ldy, r0, r1);
}

/* ---------------------------------------------------------------------------------------
 * Q8_0 / Q4_0 weights x Q8_0 activations.
 * ------------------------------------------------------------------------------------- */

/* One K step (two blocks, 64 values) of one token, ready for vpdpbusd:
 *   q: the 64 activation bytes; c: per int32 lane (4 bytes), -offset * (sum of the 4 bytes);
 *   d: the activation scales, block 0's in lanes 0-7 and block 1's in lanes 8-15.
 * An odd last block is padded with a zero block (q = 0, c = 0, d = 0). */
typedef struct {
    __m512i q;
    __m512i c;
    __m512 d;
} kvp_qstep;

enum { KVP_Q_Q8_0 = 0, KVP_Q_Q4_0 = 1 };

#define KVP_QG_R 4               /* weight rows per prefill tile */
#define KVP_QG_T 4               /* tokens per prefill tile: 16 accumulators */
#define KVP_QG_KSTEPS 32         /* prefill K chunk: 32 steps = 2048 values, 24 KB of panel */
#define KVP_QG_RB 128            /* rows per block */
#define KVP_QG_PANEL_STEPS 256   /* panel capacity in token-steps (48 KB on the stack) */

/* Builds the panel of T tokens (rows of Q8_0 blocks, xrow bytes apart) for blocks
 * [b0, b1): panel[s*T + t] is step s of token t. */
static void kvp_qpanel_build(kvp_qstep *panel, const char *xp, size_t xrow, int T, int b0,
                             int b1, int shift) {
    const __m512i ones = _mm512_set1_epi8(1);
    for (int t = 0; t < T; t++) {
        const kvp_block_q8_0 *xb = (const kvp_block_q8_0 *)(xp + (size_t)t * xrow);
        for (int b = b0, s = 0; b < b1; b += 2, s++) {
            const int two = b + 1 < b1;
            const __m256i q0 = _mm256_loadu_si256((const __m256i *)xb[b].qs);
            const __m256i q1 = two ? _mm256_loadu_si256((const __m256i *)xb[b + 1].qs)
                                   : _mm256_setzero_si256();
            const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1);
            const __m512i sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, q);
            const float d0 = kvp_f16_to_f32(xb[b].d), d1 = two ? kvp_f16_to_f32(xb[b + 1].d) : 0.0f;
            kvp_qstep *st = &panel[s * T + t];
            st->q = q;
            st->c = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_sll_epi32(sum, _mm_cvtsi32_si128(shift)));
            st->d = _mm512_insertf32x8(_mm512_set1_ps(d0), _mm256_set1_ps(d1), 1);
        }
    }
}

/* Two f16 scales d0 (lanes 0-7) and d1 (lanes 8-15) as floats: two word broadcasts (the
 * second merged into the upper half) and one conversion. */
KVP_AI __m512 kvp_scale2(uint16_t d0, uint16_t d1) {
    const __m256i h = _mm256_mask_set1_epi16(_mm256_set1_epi16((short)d0), 0xff00, (short)d1);
    return _mm512_cvtph_ps(h);
}

/* Loads blocks b and b+1 (only b when !two; the other half is then zero) of a weight row at
 * p as unsigned bytes (weight + offset) and their scales. */
KVP_AI void kvp_qload(const int qt, const char *p, int b, int two, __m512i *q, __m512 *d) {
    if (qt == KVP_Q_Q8_0) {
        const kvp_block_q8_0 *wb = (const kvp_block_q8_0 *)p + b;
        const __m256i q0 = _mm256_loadu_si256((const __m256i *)wb[0].qs);
        const __m256i q1 = two ? _mm256_loadu_si256((const __m256i *)wb[1].qs)
                               : _mm256_setzero_si256();
        *q = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(q0), q1, 1),
                              _mm512_set1_epi8((char)0x80));
        *d = kvp_scale2(wb[0].d, two ? wb[1].d : 0);
    } else {
        /* 128-bit lanes [qs(b), qs(b), qs(b+1), qs(b+1)] by two broadcast loads, then
         * shifted by [0, 4, 0, 4] and masked: [lo(b), hi(b), lo(b+1), hi(b+1)], which is
         * value order (low nibbles hold values 0-15, high nibbles 16-31). */
        const kvp_block_q4_0 *wb = (const kvp_block_q4_0 *)p + b;
        __m512i z = _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)wb[0].qs));
        z = two ? _mm512_mask_broadcast_i32x4(z, 0xff00, _mm_loadu_si128((const __m128i *)wb[1].qs))
                : _mm512_maskz_mov_epi32(0x00ff, z);
        z = _mm512_srlv_epi64(z, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0));
        *q = _mm512_and_si512(z, _mm512_set1_epi8(0x0f));
        *d = kvp_scale2(wb[0].d, two ? wb[1].d : 0);
    }
}

/* Y tile over blocks [b0, b1) (panel built for the same blocks): R rows x T tokens. */
KVP_AI void kvp_qgemm_tile(const int qt, const int R, const int T, const char *w, size_t wrow,
                           const kvp_qstep *panel, int b0, int b1, float *y, int ldy, int accum) {
    __m512 acc[8][KVP_QG_T];
KVP_UNROLL
    for (int r = 0; r < R; r++)
KVP_UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    int b = b0;
    const kvp_qstep *st = panel;
    for (; b < b1; b += 2, st += T) {
        const int two = b + 1 < b1;
        __m512i wq[8];
        __m512 wd[8];
KVP_UNROLL
        for (int r = 0; r < R; r++) kvp_qload(qt, w + r * wrow, b, two, &wq[r], &wd[r]);
KVP_UNROLL
        for (int t = 0; t < T; t++) {
            const __m512i xq = st[t].q, xc = st[t].c;
            const __m512 xd = st[t].d;
KVP_UNROLL
            for (int r = 0; r < R; r++) {
                const __m512i p = _mm512_dpbusd_epi32(xc, wq[r], xq);
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(wd[r], xd), acc[r][t]);
            }
        }
    }
KVP_UNROLL
    for (int t = 0; t < T; t++) {
        __m512 col[8];
KVP_UNROLL
        for (int r = 0; r < R; r++) col[r] = acc[r][t];
        kvp_store_sums(R, col, y + (size_t)t * ldy, accum, 1.0f);
    }
}

/* Decode of one quantized row of nb blocks against one token (its panel, built for the
 * same blocks); returns 16 partial sums. Four accumulators; the row is read in order with
 * software prefetch KVP_PF_DIST bytes ahead (one prefetch per cache line), so consecutive
 * rows form one linear stream. */
KVP_AI __m512 kvp_qgemv_row(const int qt, const char *wr, const kvp_qstep *st, int nb) {
    const int bs = qt == KVP_Q_Q8_0 ? (int)sizeof(kvp_block_q8_0) : (int)sizeof(kvp_block_q4_0);
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    /* one prefetch per cache line: pf is the next line to prefetch, at KVP_PF_DIST ahead
     * (the previous row has prefetched the lines before it) */
    uintptr_t pf = ((uintptr_t)wr + KVP_PF_DIST) & ~(uintptr_t)63;
    int b = 0;
    for (; b + 8 <= nb; b += 8, st += 4) {
        const uintptr_t end = (uintptr_t)wr + (uintptr_t)(b + 8) * bs + KVP_PF_DIST;
        for (; KVP_PF_DIST && pf < end; pf += 64) _mm_prefetch((const char *)pf, _MM_HINT_T0);
KVP_UNROLL
        for (int j = 0; j < 4; j++) {
            __m512i q;
            __m512 d;
            kvp_qload(qt, wr, b + 2 * j, 1, &q, &d);
            const __m512i p = _mm512_dpbusd_epi32(st[j].c, q, st[j].q);
            acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(d, st[j].d), acc[j]);
        }
    }
    __m512 acc0 = _mm512_add_ps(acc[0], acc[2]), acc1 = _mm512_add_ps(acc[1], acc[3]);
    for (; b < nb; b += 2, st++) {
        __m512i q;
        __m512 d;
        kvp_qload(qt, wr, b, b + 1 < nb, &q, &d);
        const __m512i p = _mm512_dpbusd_epi32(st->c, q, st->q);
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(d, st->d), acc0);
    }
    return _mm512_add_ps(acc0, acc1);
}

KVP_AI void kvp_qgemm_rows(const int qt, const int T, const char *w, size_t wrow,
                           const kvp_qstep *panel, int b0, int b1, float *y, int ldy, int r0,
                           int r1, int accum) {
    int r = r0;
    for (; r + KVP_QG_R <= r1; r += KVP_QG_R)
        kvp_qgemm_tile(qt, KVP_QG_R, T, w + r * wrow, wrow, panel, b0, b1, y + r, ldy, accum);
    for (; r < r1; r++)
        kvp_qgemm_tile(qt, 1, T, w + r * wrow, wrow, panel, b0, b1, y + r, ldy, accum);
}

KVP_AI void kvp_qgemm(const int qt, const void *wv, int cols, const void *xpv, int n, float *y,
                      int ldy, int r0, int r1) {
    const char *w = wv, *xp = xpv;
    const int nb = cols / 32;
    const size_t wrow = (size_t)nb * (qt == KVP_Q_Q8_0 ? sizeof(kvp_block_q8_0) : sizeof(kvp_block_q4_0));
    const size_t xrow = (size_t)nb * sizeof(kvp_block_q8_0);
    const int shift = qt == KVP_Q_Q8_0 ? 7 : 3; /* offsets 128 and 8 */
    kvp_qstep panel[KVP_QG_PANEL_STEPS];
    if (n == 1) { /* decode: stream the rows once, in order, 4 rows per reduction */
        const int kb = kvp_even_chunk(nb, 2 * KVP_QG_PANEL_STEPS, 2);
        for (int b0 = 0; b0 < nb; b0 += kb) {
            const int b1 = KVP_MIN(nb, b0 + kb), accum = b0 > 0;
            kvp_qpanel_build(panel, xp, xrow, 1, b0, b1, shift);
            const size_t off = (size_t)b0 * (wrow / (size_t)nb);
            /* two linear streams (the two halves of the rows), 4 rows of each in turn */
            const int groups = (r1 - r0) / 4, ga = (groups + 1) / 2;
            for (int g = 0; g < groups; g++) {
                const int r = r0 + 4 * (g % 2 ? ga + g / 2 : g / 2);
                __m512 sr[4];
KVP_UNROLL
                for (int i = 0; i < 4; i++) sr[i] = kvp_qgemv_row(qt, w + (r + i) * wrow + off, panel, b1 - b0);
                kvp_store_sums(4, sr, y + r, accum, 1.0f);
            }
            for (int r = r0 + 4 * groups; r < r1; r++) {
                __m512 res = kvp_qgemv_row(qt, w + r * wrow + off, panel, b1 - b0);
                kvp_store_sums(1, &res, y + r, accum, 1.0f);
            }
        }
        return;
    }
    const int kb = kvp_even_chunk(nb, 2 * KVP_QG_KSTEPS, 2);
    for (int rb = r0; rb < r1; rb += KVP_QG_RB) {
        const int re = KVP_MIN(r1, rb + KVP_QG_RB);
        for (int b0 = 0; b0 < nb; b0 += kb) {
            const int b1 = KVP_MIN(nb, b0 + kb), accum = b0 > 0;
            for (int t = 0; t < n; t += KVP_QG_T) {
                const int T = KVP_MIN(KVP_QG_T, n - t);
                const char *xt = xp + (size_t)t * xrow;
                float *yt = y + (size_t)t * ldy;
                kvp_qpanel_build(panel, xt, xrow, T, b0, b1, shift);
                switch (T) {
                case 4: kvp_qgemm_rows(qt, 4, w, wrow, panel, b0, b1, yt, ldy, rb, re, accum); break;
                case 3: kvp_qgemm_rows(qt, 3, w, wrow, panel, b0, b1, yt, ldy, rb, re, accum); break;
                case 2: kvp_qgemm_rows(qt, 2, w, wrow, panel, b0, b1, yt, ldy, rb, re, accum); break;
                default: kvp_qgemm_rows(qt, 1, w, wrow, panel, b0, b1, yt, ldy, rb, re, accum); break;
                }
            }
        }
    }
}

static void kvp_gemm_q8_0_avx512(const void *w, int cols, const void *xp, int n, float *y,
                                 int ldy, int r0, int r1) {
    kvp_qgemm(KVP_Q_Q8_0, w, cols, xp, n, y, ldy, r0, r1);
}
static void kvp_gemm_q4_0_avx512(const void *w, int cols, const void *xp, int n, float *y,
                                 int ldy, int r0, int r1) {
    kvp_qgemm(KVP_Q_Q4_0, w, cols, xp, n, y, ldy, r0, r1);
}

/* Q8_0 quantization of activations, bit-identical to kvp_quant_q8_0_ref: d = amax / 127,
 * q = roundf(x * (1 / d)) with roundf's halfway-away-from-zero done as trunc + (|frac| >=
 * 0.5 ? sign : 0), which is exact. */
KVP_AI __m128i kvp_round_q8(__m512 v, __m512 id) {
    const __m512 s = _mm512_mul_ps(v, id);
    const __m512 t = _mm512_roundscale_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 frac = _mm512_abs_ps(_mm512_sub_ps(s, t));
    const __mmask16 up = _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ);
    const __m512 one = _mm512_or_ps(_mm512_and_ps(s, _mm512_set1_ps(-0.0f)), _mm512_set1_ps(1.0f));
    const __m512 r = _mm512_mask_add_ps(t, up, t, one);
    return _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(r));
}

static void kvp_quant_q8_0_avx512(const float *x, kvp_block_q8_0 *y, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++, x += 32) {
        const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = kvp_f32_to_f16(d);
        const __m512 idv = _mm512_set1_ps(id);
        _mm_storeu_si128((__m128i *)y[b].qs, kvp_round_q8(v0, idv));
        _mm_storeu_si128((__m128i *)(y[b].qs + 16), kvp_round_q8(v1, idv));
    }
}

/* ---------------------------------------------------------------------------------------
 * Vector kernels.
 * ------------------------------------------------------------------------------------- */

KVP_AI float kvp_dot(const int et, const void *a, const float *b, int n) {
    const size_t es = kvp_esize(et);
    const char *pa = a;
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_fmadd_ps(kvp_ld(et, pa + (size_t)i * es), _mm512_loadu_ps(b + i), s0);
        s1 = _mm512_fmadd_ps(kvp_ld(et, pa + (size_t)(i + 16) * es), _mm512_loadu_ps(b + i + 16), s1);
        s2 = _mm512_fmadd_ps(kvp_ld(et, pa + (size_t)(i + 32) * es), _mm512_loadu_ps(b + i + 32), s2);
        s3 = _mm512_fmadd_ps(kvp_ld(et, pa + (size_t)(i + 48) * es), _mm512_loadu_ps(b + i + 48), s3);
    }
    for (; i + 16 <= n; i += 16)
        s0 = _mm512_fmadd_ps(kvp_ld(et, pa + (size_t)i * es), _mm512_loadu_ps(b + i), s0);
    if (i < n) {
        const __mmask16 m = kvp_mask16(n - i);
        s1 = _mm512_fmadd_ps(kvp_ld_mask(et, pa + (size_t)i * es, m), _mm512_maskz_loadu_ps(m, b + i), s1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}

static float kvp_dot_f32_avx512(const float *a, const float *b, int n) {
    return kvp_dot(KVP_E_F32, a, b, n);
}
static float kvp_dot_f16_avx512(const uint16_t *a, const float *b, int n) {
    return kvp_dot(KVP_E_F16, a, b, n);
}

KVP_AI void kvp_axpy(const int et, float *y, float a, const void *x, int n) {
    const size_t es = kvp_esize(et);
    const char *px = x;
    const __m512 av = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, kvp_ld(et, px + (size_t)i * es), _mm512_loadu_ps(y + i)));
    if (i < n) {
        const __mmask16 m = kvp_mask16(n - i);
        const __m512 v = _mm512_fmadd_ps(av, kvp_ld_mask(et, px + (size_t)i * es, m), _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, v);
    }
}

static void kvp_axpy_f32_avx512(float *y, float a, const float *x, int n) {
    kvp_axpy(KVP_E_F32, y, a, x, n);
}
static void kvp_axpy_f16_avx512(float *y, float a, const uint16_t *x, int n) {
    kvp_axpy(KVP_E_F16, y, a, x, n);
}

static void kvp_f32_to_f16_row_avx512(const float *x, uint16_t *y, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(y + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (i < n) {
        const __mmask16 m = kvp_mask16(n - i);
        _mm256_mask_storeu_epi16(y + i, m,
                                 _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
}

static void kvp_f16_to_f32_row_avx512(const uint16_t *x, float *y, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + i))));
    if (i < n) {
        const __mmask16 m = kvp_mask16(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x + i)));
    }
}

/* ---------------------------------------------------------------------------------------
 * Attention.
 * ------------------------------------------------------------------------------------- */

#define KVP_AT_RB 64 /* cached rows per block: 64 rows of 128 F16 values are 16 KB (L1) */

/* Scores of R rows (K points at row 0) for H heads (Q at head 0):
 * S[h*lds + r] = scale * dot(K[r], Q[h]). The H query vectors of a 16-value step stay in
 * registers while each row's step is loaded and converted once. */
KVP_AI void kvp_scores_tile(const int et, const int R, const int H, const char *K, int hd,
                            const float *Q, int ldq, float scale, float *S, int lds) {
    const size_t es = kvp_esize(et), krow = (size_t)hd * es;
    __m512 acc[8][6];
KVP_UNROLL
    for (int r = 0; r < R; r++)
KVP_UNROLL
        for (int h = 0; h < H; h++) acc[r][h] = _mm512_setzero_ps();
    int c = 0;
    for (; c + 16 <= hd; c += 16) {
        __m512 q[6];
KVP_UNROLL
        for (int h = 0; h < H; h++) q[h] = _mm512_loadu_ps(Q + (size_t)h * ldq + c);
KVP_UNROLL
        for (int r = 0; r < R; r++) {
            const __m512 k = kvp_ld(et, K + r * krow + (size_t)c * es);
KVP_UNROLL
            for (int h = 0; h < H; h++) acc[r][h] = _mm512_fmadd_ps(k, q[h], acc[r][h]);
        }
    }
    if (c < hd) {
        const __mmask16 m = kvp_mask16(hd - c);
        __m512 q[6];
KVP_UNROLL
        for (int h = 0; h < H; h++) q[h] = _mm512_maskz_loadu_ps(m, Q + (size_t)h * ldq + c);
KVP_UNROLL
        for (int r = 0; r < R; r++) {
            const __m512 k = kvp_ld_mask(et, K + r * krow + (size_t)c * es, m);
KVP_UNROLL
            for (int h = 0; h < H; h++) acc[r][h] = _mm512_fmadd_ps(k, q[h], acc[r][h]);
        }
    }
KVP_UNROLL
    for (int h = 0; h < H; h++) {
        __m512 row[8];
KVP_UNROLL
        for (int r = 0; r < R; r++) row[r] = acc[r][h];
        kvp_store_sums(R, row, S + (size_t)h * lds, 0, scale);
    }
}

/* Rows [t0, t1) for H heads: tiles of R rows (8 for up to 3 heads, else 4), then single rows. */
KVP_AI void kvp_scores_rows(const int et, const int H, const char *K, int t0, int t1, int hd,
                            const float *Q, int ldq, float scale, float *S, int lds) {
    const int R = H <= 3 ? 8 : 4;
    const size_t krow = (size_t)hd * kvp_esize(et);
    int t = t0;
    for (; t + R <= t1; t += R) {
        if (et != KVP_E_I8) /* 8-bit rows: short scattered runs the caller prefetches */
            for (size_t o = 0; o < R * krow; o += 64) kvp_prefetch(K + t * krow + o);
        kvp_scores_tile(et, R, H, K + t * krow, hd, Q, ldq, scale, S + t, lds);
    }
    for (; t < t1; t++) kvp_scores_tile(et, 1, H, K + t * krow, hd, Q, ldq, scale, S + t, lds);
}

KVP_AI void kvp_scores(const int et, const void *Kv, int n, int hd, const float *Q, int nq,
                       int ldq, float scale, float *S, int lds) {
    const char *K = Kv;
    const int groups = (nq + 5) / 6, hg = (nq + groups - 1) / groups; /* heads per group <= 6 */
    for (int t0 = 0; t0 < n; t0 += KVP_AT_RB) {
        const int t1 = KVP_MIN(n, t0 + KVP_AT_RB);
        for (int j = 0; j < nq; j += hg) {
            const float *q = Q + (size_t)j * ldq;
            float *s = S + (size_t)j * lds;
            switch (KVP_MIN(hg, nq - j)) {
            case 6: kvp_scores_rows(et, 6, K, t0, t1, hd, q, ldq, scale, s, lds); break;
            case 5: kvp_scores_rows(et, 5, K, t0, t1, hd, q, ldq, scale, s, lds); break;
            case 4: kvp_scores_rows(et, 4, K, t0, t1, hd, q, ldq, scale, s, lds); break;
            case 3: kvp_scores_rows(et, 3, K, t0, t1, hd, q, ldq, scale, s, lds); break;
            case 2: kvp_scores_rows(et, 2, K, t0, t1, hd, q, ldq, scale, s, lds); break;
            default: kvp_scores_rows(et, 1, K, t0, t1, hd, q, ldq, scale, s, lds); break;
            }
        }
    }
}

static void kvp_attn_scores_f32_avx512(const float *K, int n, int hd, const float *Q, int nq,
                                       int ldq, float scale, float *S, int lds) {
    kvp_scores(KVP_E_F32, K, n, hd, Q, nq, ldq, scale, S, lds);
}
static void kvp_attn_scores_f16_avx512(const uint16_t *K, int n, int hd, const float *Q, int nq,
                                       int ldq, float scale, float *S, int lds) {
    kvp_scores(KVP_E_F16, K, n, hd, Q, nq, ldq, scale, S, lds);
}
static void kvp_attn_scores_i8_avx512(const int8_t *K, int n, int hd, const float *Q, int nq,
                                      int ldq, float scale, float *S, int lds) {
    kvp_scores(KVP_E_I8, K, n, hd, Q, nq, ldq, scale, S, lds);
}

/* Y[h][c] += sum_t P[h][t] V[t][c] for H heads, nr rows, and the columns [0, width) of a
 * chunk of CW vectors (width > 16 * (CW - 1)); V points at (row 0, column 0 of the chunk).
 * The H x CW accumulators stay in registers over the rows. */
KVP_AI void kvp_values_tile(const int et, const int CW, const int H, float *Y, int ldy,
                            const float *P, int ldp, const char *V, int hd, int nr, int width) {
    const size_t es = kvp_esize(et), vrow = (size_t)hd * es;
    const __mmask16 last = kvp_mask16(width - 16 * (CW - 1));
    __m512 acc[8][8];
KVP_UNROLL
    for (int h = 0; h < H; h++)
KVP_UNROLL
        for (int c = 0; c < CW; c++)
            acc[h][c] = c < CW - 1 ? _mm512_loadu_ps(Y + (size_t)h * ldy + 16 * c)
                                   : _mm512_maskz_loadu_ps(last, Y + (size_t)h * ldy + 16 * c);
    for (int t = 0; t < nr; t++) {
        __m512 p[8];
KVP_UNROLL
        for (int h = 0; h < H; h++) p[h] = _mm512_set1_ps(P[(size_t)h * ldp + t]);
        const char *v = V + t * vrow;
        if (et != KVP_E_I8)
            for (size_t o = 0; o < vrow; o += 64) kvp_prefetch(v + o);
KVP_UNROLL
        for (int c = 0; c < CW; c++) {
            const __m512 x = c < CW - 1 ? kvp_ld(et, v + (size_t)(16 * c) * es)
                                        : kvp_ld_mask(et, v + (size_t)(16 * c) * es, last);
KVP_UNROLL
            for (int h = 0; h < H; h++) acc[h][c] = _mm512_fmadd_ps(p[h], x, acc[h][c]);
        }
    }
KVP_UNROLL
    for (int h = 0; h < H; h++)
KVP_UNROLL
        for (int c = 0; c < CW; c++) {
            if (c < CW - 1)
                _mm512_storeu_ps(Y + (size_t)h * ldy + 16 * c, acc[h][c]);
            else
                _mm512_mask_storeu_ps(Y + (size_t)h * ldy + 16 * c, last, acc[h][c]);
        }
}

/* Heads per group for a chunk of CW vectors: H * CW accumulators + H + 1 <= 32 registers. */
static int kvp_values_hmax(int cw) { return cw == 8 ? 3 : cw == 4 ? 6 : 8; }

#define KVP_VT_CASE(cw, h) \
    case h: kvp_values_tile(et, cw, h, Y, ldy, P, ldp, V, hd, nr, width); break

KVP_AI void kvp_values_group(const int et, int cw, int h, float *Y, int ldy, const float *P,
                             int ldp, const char *V, int hd, int nr, int width) {
    if (cw == 8) {
        switch (h) { KVP_VT_CASE(8, 3); KVP_VT_CASE(8, 2); default: KVP_VT_CASE(8, 1); }
    } else if (cw == 4) {
        switch (h) {
            KVP_VT_CASE(4, 6); KVP_VT_CASE(4, 5); KVP_VT_CASE(4, 4); KVP_VT_CASE(4, 3);
            KVP_VT_CASE(4, 2); default: KVP_VT_CASE(4, 1);
        }
    } else if (cw == 2) {
        switch (h) {
            KVP_VT_CASE(2, 8); KVP_VT_CASE(2, 7); KVP_VT_CASE(2, 6); KVP_VT_CASE(2, 5);
            KVP_VT_CASE(2, 4); KVP_VT_CASE(2, 3); KVP_VT_CASE(2, 2); default: KVP_VT_CASE(2, 1);
        }
    } else {
        switch (h) {
            KVP_VT_CASE(1, 8); KVP_VT_CASE(1, 7); KVP_VT_CASE(1, 6); KVP_VT_CASE(1, 5);
            KVP_VT_CASE(1, 4); KVP_VT_CASE(1, 3); KVP_VT_CASE(1, 2); default: KVP_VT_CASE(1, 1);
        }
    }
}

KVP_AI void kvp_values(const int et, float *Y, int ldy, int ny, const float *P, int ldp,
                       const void *Vv, int n, int hd) {
    const char *V = Vv;
    const size_t es = kvp_esize(et), vrow = (size_t)hd * es;
    for (int t0 = 0; t0 < n; t0 += KVP_AT_RB) {
        const int nr = KVP_MIN(KVP_AT_RB, n - t0);
        for (int c0 = 0; c0 < hd;) {
            /* The widest chunk (8, 4, 2 or 1 vectors) that fits the columns left and keeps
             * every head in one group when possible (each row chunk converted once). */
            const int nvec = (hd - c0 + 15) / 16;
            int cw = nvec >= 8 ? 8 : nvec >= 4 ? 4 : nvec >= 2 ? 2 : 1;
            while (cw > 1 && kvp_values_hmax(cw) < ny) cw /= 2;
            const int width = KVP_MIN(16 * cw, hd - c0);
            const int hmax = kvp_values_hmax(cw);
            const int groups = (ny + hmax - 1) / hmax, hg = (ny + groups - 1) / groups;
            for (int j = 0; j < ny; j += hg)
                kvp_values_group(et, cw, KVP_MIN(hg, ny - j), Y + (size_t)j * ldy + c0, ldy,
                                 P + (size_t)j * ldp + t0, ldp, V + t0 * vrow + (size_t)c0 * es,
                                 hd, nr, width);
            c0 += width;
        }
    }
}

static void kvp_attn_values_f32_avx512(float *Y, int ldy, int ny, const float *P, int ldp,
                                       const float *V, int n, int hd) {
    kvp_values(KVP_E_F32, Y, ldy, ny, P, ldp, V, n, hd);
}
static void kvp_attn_values_f16_avx512(float *Y, int ldy, int ny, const float *P, int ldp,
                                       const uint16_t *V, int n, int hd) {
    kvp_values(KVP_E_F16, Y, ldy, ny, P, ldp, V, n, hd);
}
static void kvp_attn_values_i8_avx512(float *Y, int ldy, int ny, const float *P, int ldp,
                                      const int8_t *V, int n, int hd) {
    kvp_values(KVP_E_I8, Y, ldy, ny, P, ldp, V, n, hd);
}

/* ---------------------------------------------------------------------------------------
 * Softmax: the algorithm of ops.c (kvp_softmax_c) on 16 lanes with FMA.
 * ------------------------------------------------------------------------------------- */

/* e^(x + xlo) for x in about [-87, 88], 0 below -87 and for NaN (see ops.c). */
KVP_AI __m512 kvp_exp16(__m512 x, __m512 xlo) {
    const __m512 lo = _mm512_set1_ps(-87.0f), magic = _mm512_set1_ps(12582912.0f);
    const __m512 xc = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(88.0f));
    const __m512 z = _mm512_fmadd_ps(xc, _mm512_set1_ps(1.44269504088896341f), magic);
    const __m512 n = _mm512_sub_ps(z, magic);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), xc);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), _mm512_add_ps(r, xlo));
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_castps_si512(z), _mm512_set1_epi32(127 - 0x4B400000)), 23);
    const __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
    return _mm512_maskz_mul_ps(keep, p, _mm512_castsi512_ps(e));
}

/* e^(a - m) with the difference made exact by TwoSum (see ops.c). */
KVP_AI __m512 kvp_exp16_diff(__m512 a, __m512 m) {
    const __m512 b = _mm512_sub_ps(_mm512_setzero_ps(), m);
    const __m512 s = _mm512_add_ps(a, b), bb = _mm512_sub_ps(s, a);
    const __m512 err = _mm512_add_ps(_mm512_sub_ps(a, _mm512_sub_ps(s, bb)), _mm512_sub_ps(b, bb));
    return kvp_exp16(s, err);
}

static void kvp_softmax_avx512(float *x, int n) {
    if (n <= 0) return;
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    __m512 m0 = ninf, m1 = ninf;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        m0 = _mm512_max_ps(m0, _mm512_loadu_ps(x + i));
        m1 = _mm512_max_ps(m1, _mm512_loadu_ps(x + i + 16));
    }
    for (; i < n; i += 16)
        m0 = _mm512_max_ps(m0, _mm512_mask_loadu_ps(ninf, kvp_mask16(KVP_MIN(16, n - i)), x + i));
    const float max = _mm512_reduce_max_ps(_mm512_max_ps(m0, m1));
    if (max == -INFINITY) {
        memset(x, 0, (size_t)n * sizeof *x);
        return;
    }
    const __m512 vmax = _mm512_set1_ps(max);
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;
    for (i = 0; i + 32 <= n; i += 32) {
        const __m512 e0 = kvp_exp16_diff(_mm512_loadu_ps(x + i), vmax);
        const __m512 e1 = kvp_exp16_diff(_mm512_loadu_ps(x + i + 16), vmax);
        _mm512_storeu_ps(x + i, e0);
        _mm512_storeu_ps(x + i + 16, e1);
        s0 = _mm512_add_ps(s0, e0);
        s1 = _mm512_add_ps(s1, e1);
    }
    for (; i < n; i += 16) { /* the tail, padded with -inf (whose exp is 0) */
        const __mmask16 m = kvp_mask16(KVP_MIN(16, n - i));
        const __m512 e = kvp_exp16_diff(_mm512_mask_loadu_ps(ninf, m, x + i), vmax);
        _mm512_mask_storeu_ps(x + i, m, e);
        s0 = _mm512_add_ps(s0, e);
    }
    const __m512 inv = _mm512_set1_ps((float)(1.0 / (double)_mm512_reduce_add_ps(_mm512_add_ps(s0, s1))));
    for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
    if (i < n) {
        const __mmask16 m = kvp_mask16(n - i);
        _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
    }
}

void kvp_ktable_fill_avx512(kvp_ktable *t) {
    t->isa = "avx512";
    t->gemm[KVP_TYPE_F32] = kvp_gemm_f32_avx512;
    t->gemm[KVP_TYPE_F16] = kvp_gemm_f16_avx512;
    t->gemm[KVP_TYPE_BF16] = kvp_gemm_bf16_avx512;
    t->gemm[KVP_TYPE_Q8_0] = kvp_gemm_q8_0_avx512;
    t->gemm[KVP_TYPE_Q4_0] = kvp_gemm_q4_0_avx512;
    t->quant_q8_0 = kvp_quant_q8_0_avx512;
    t->dot_f32 = kvp_dot_f32_avx512;
    t->dot_f16 = kvp_dot_f16_avx512;
    t->axpy_f32 = kvp_axpy_f32_avx512;
    t->axpy_f16 = kvp_axpy_f16_avx512;
    t->attn_scores_f32 = kvp_attn_scores_f32_avx512;
    t->attn_scores_f16 = kvp_attn_scores_f16_avx512;
    t->attn_values_f32 = kvp_attn_values_f32_avx512;
    t->attn_values_f16 = kvp_attn_values_f16_avx512;
    t->attn_scores_i8 = kvp_attn_scores_i8_avx512;
    t->attn_values_i8 = kvp_attn_values_i8_avx512;
    t->f32_to_f16_row = kvp_f32_to_f16_row_avx512;
    t->f16_to_f32_row = kvp_f16_to_f32_row_avx512;
    t->softmax = kvp_softmax_avx512;
}

#else /* built without the AVX-512 flags: the table keeps the lower set's kernels */

void kvp_ktable_fill_avx512(kvp_ktable *t) { (void)t; }

#endif
