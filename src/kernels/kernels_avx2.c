/*
 * kernels_avx2.c: the AVX2 + FMA + F16C kernels (Haswell, Zen 1 and later). Compiled with
 * -mavx2 -mfma -mf16c; only called when the CPU has all three (kernels.c checks).
 *
 * The structure is that of kernels_avx512.c (see its header comment) with 8-lane vectors
 * and 16 registers, hence smaller register tiles: 3 weight rows x 4 tokens for float
 * weights, 2 rows x 3 tokens for quantized weights.
 *
 * Q8_0 and Q4_0 dot products use llama.cpp's sign trick: |w| (unsigned) times x with w's
 * sign (signed) through vpmaddubsw, then vpmaddwd with ones into int32 lanes. The weight
 * is on the unsigned side, so any int8 weight (-128 included) is exact; the activation must
 * lie in [-127, 127], which every Q8_0 row from kvp_act_prepare does. Pair sums stay below
 * 2 * 128 * 127 < 32767, so vpmaddubsw never saturates.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "common/common.h"
#include "kernels/kernels_internal.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)

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

/* [sum(a), sum(b), sum(c), sum(d)] of four 8-lane vectors. */
KVP_AI __m128 kvp_hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

/* sum(a) in exactly the order kvp_hsum4 sums each of its vectors,
 * ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)), so that a row's result does not depend
 * on whether it was reduced alone or in a group (results must not change with the way
 * callers split rows across threads). */
KVP_AI float kvp_hsum(__m256 a) {
    __m256 s = _mm256_hadd_ps(a, a);
    s = _mm256_hadd_ps(s, s);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
}

/* Stores (or with accum adds) scale times the R sums of acc[0..R-1] to y[0..R-1]. */
KVP_AI void kvp_store_sums(const int R, const __m256 *acc, float *y, int accum, float scale) {
    if (R >= 4 && R % 4 == 0) {
KVP_UNROLL
        for (int g = 0; g < R; g += 4) {
            __m128 v = _mm_mul_ps(kvp_hsum4(acc[g], acc[g + 1], acc[g + 2], acc[g + 3]),
                                  _mm_set1_ps(scale));
            if (accum) v = _mm_add_ps(v, _mm_loadu_ps(y + g));
            _mm_storeu_ps(y + g, v);
        }
    } else if (R == 3) {
        float tmp[4];
        _mm_storeu_ps(tmp, _mm_mul_ps(kvp_hsum4(acc[0], acc[1], acc[2], acc[2]), _mm_set1_ps(scale)));
        for (int r = 0; r < 3; r++) y[r] = accum ? y[r] + tmp[r] : tmp[r];
    } else {
KVP_UNROLL
        for (int r = 0; r < R; r++) {
            const float s = kvp_hsum(acc[r]) * scale;
            y[r] = accum ? y[r] + s : s;
        }
    }
}

/* A mask vector whose first m lanes (0 <= m <= 8) are all ones. */
static const int32_t kvp_mask_src[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
KVP_AI __m256i kvp_mask8(int m) { return _mm256_loadu_si256((const __m256i *)(kvp_mask_src + 8 - m)); }

/* Element types; I8: signed 8-bit integers (the cold tier's 8-bit rows, whose per-row
 * scales the callers apply). */
enum { KVP_E_F32 = 0, KVP_E_F16 = 1, KVP_E_BF16 = 2, KVP_E_I8 = 3 };

KVP_AI size_t kvp_esize(const int et) { return et == KVP_E_F32 ? 4 : et == KVP_E_I8 ? 1 : 2; }

/* 8 values of element type et at p, as floats. */
KVP_AI __m256 kvp_ld(const int et, const void *p) {
    if (et == KVP_E_F32) return _mm256_loadu_ps(p);
    if (et == KVP_E_I8) return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
    const __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (et == KVP_E_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* The first m (< 8) values at p; the other lanes are 0 and are not read. */
KVP_AI __m256 kvp_ld_part(const int et, const void *p, int m) {
    if (et == KVP_E_F32) return _mm256_maskload_ps(p, kvp_mask8(m));
    uint16_t tmp[8] = {0};
    memcpy(tmp, p, (size_t)m * kvp_esize(et));
    return kvp_ld(et, tmp);
}

/* ---------------------------------------------------------------------------------------
 * F32 / F16 / BF16 weights x F32 activations.
 * ------------------------------------------------------------------------------------- */

#define KVP_FG_R 3       /* weight rows per prefill tile: 12 accumulators + 3 weights */
#define KVP_FG_T 4       /* tokens per prefill tile */
#define KVP_FG_KC 1024
#define KVP_FG_RB 96

KVP_AI void kvp_fgemm_tile(const int et, const int R, const int T, const char *w, size_t wrow,
                           const float *x, size_t xrow, int k0, int k1, float *y, int ldy,
                           int accum) {
    const size_t es = kvp_esize(et);
    __m256 acc[4][KVP_FG_T];
KVP_UNROLL
    for (int r = 0; r < R; r++)
KVP_UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    int k = k0;
    for (; k + 8 <= k1; k += 8) {
        __m256 wv[4];
KVP_UNROLL
        for (int r = 0; r < R; r++) wv[r] = kvp_ld(et, w + r * wrow + (size_t)k * es);
KVP_UNROLL
        for (int t = 0; t < T; t++) {
            const __m256 xv = _mm256_loadu_ps(x + t * xrow + k);
KVP_UNROLL
            for (int r = 0; r < R; r++) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
    if (k < k1) {
        const int m = k1 - k;
        __m256 wv[4];
KVP_UNROLL
        for (int r = 0; r < R; r++) wv[r] = kvp_ld_part(et, w + r * wrow + (size_t)k * es, m);
KVP_UNROLL
        for (int t = 0; t < T; t++) {
            const __m256 xv = _mm256_maskload_ps(x + t * xrow + k, kvp_mask8(m));
KVP_UNROLL
            for (int r = 0; r < R; r++) acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
        }
    }
KVP_UNROLL
    for (int t = 0; t < T; t++) {
        __m256 col[4];
KVP_UNROLL
        for (int r = 0; r < R; r++) col[r] = acc[r][t];
        kvp_store_sums(R, col, y + (size_t)t * ldy, accum, 1.0f);
    }
}

/* Decode reads the weights as two linear streams with software prefetch KVP_PF_DIST bytes
 * ahead; kernels_avx512.c explains why. */
#define KVP_PF_DIST 4096

/* Prefetches the line KVP_PF_DIST bytes past p into L1; the address may lie past the end of
 * the matrix, so it is formed as an integer. */
KVP_AI void kvp_prefetch(const void *p) {
    _mm_prefetch((const char *)((uintptr_t)p + KVP_PF_DIST), _MM_HINT_T0);
}

/* Decode: dot(W row at wr, x) as 8 partial sums, with 4 accumulators, prefetching ahead. */
KVP_AI __m256 kvp_fgemv_row(const int et, const char *wr, const float *x, int cols) {
    const size_t es = kvp_esize(et);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int k = 0;
    for (; k + 32 <= cols; k += 32) {
        const char *p = wr + (size_t)k * es;
KVP_UNROLL
        for (size_t o = 0; o < 32 * es; o += 64) kvp_prefetch(p + o);
        a0 = _mm256_fmadd_ps(kvp_ld(et, p), _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(kvp_ld(et, p + 8 * es), _mm256_loadu_ps(x + k + 8), a1);
        a2 = _mm256_fmadd_ps(kvp_ld(et, p + 16 * es), _mm256_loadu_ps(x + k + 16), a2);
        a3 = _mm256_fmadd_ps(kvp_ld(et, p + 24 * es), _mm256_loadu_ps(x + k + 24), a3);
    }
    for (; k + 8 <= cols; k += 8)
        a0 = _mm256_fmadd_ps(kvp_ld(et, wr + (size_t)k * es), _mm256_loadu_ps(x + k), a0);
    if (k < cols)
        a1 = _mm256_fmadd_ps(kvp_ld_part(et, wr + (size_t)k * es, cols - k),
                             _mm256_maskload_ps(x + k, kvp_mask8(cols - k)), a1);
    return _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
}

KVP_AI void kvp_fgemm_rows(const int et, const int T, const char *w, size_t wrow, const float *x,
                           size_t xrow, int k0, int k1, float *y, int ldy, int r0, int r1,
                           int accum) {
    int r = r0;
    for (; r + KVP_FG_R <= r1; r += KVP_FG_R)
        kvp_fgemm_tile(et, KVP_FG_R, T, w + r * wrow, wrow, x, xrow, k0, k1, y + r, ldy, accum);
    for (; r < r1; r++)
        kvp_fgemm_tile(et, 1, T, w + r * wrow, wrow, x, xrow, k0, k1, y + r, ldy, accum);
}

static int kvp_even_chunk(int n, int max, int align) {
    int pieces = (n + max - 1) / max;
    int c = (n + pieces - 1) / pieces;
    return (c + align - 1) / align * align;
}

KVP_AI void kvp_fgemm(const int et, const void *wv, int cols, const void *xp, int n, float *y,
                      int ldy, int r0, int r1) {
    const char *w = wv;
    const float *x = xp;
    const size_t wrow = (size_t)cols * kvp_esize(et);
    if (n == 1) { /* decode: two linear streams (the two halves of the rows), 4 rows of each
                   * in turn (see kernels_avx512.c) */
        const int groups = (r1 - r0) / 4, ga = (groups + 1) / 2;
        for (int g = 0; g < groups; g++) {
            const int r = r0 + 4 * (g % 2 ? ga + g / 2 : g / 2);
            __m256 sr[4];
KVP_UNROLL
            for (int i = 0; i < 4; i++) sr[i] = kvp_fgemv_row(et, w + (r + i) * wrow, x, cols);
            kvp_store_sums(4, sr, y + r, 0, 1.0f);
        }
        for (int r = r0 + 4 * groups; r < r1; r++) {
            const __m256 sr = kvp_fgemv_row(et, w + r * wrow, x, cols);
            kvp_store_sums(1, &sr, y + r, 0, 1.0f);
        }
        return;
    }
    const int kc = kvp_even_chunk(cols, KVP_FG_KC, 8);
    for (int rb = r0; rb < r1; rb += KVP_FG_RB) {
        const int re = KVP_MIN(r1, rb + KVP_FG_RB);
        for (int k0 = 0; k0 < cols; k0 += kc) {
            const int k1 = KVP_MIN(cols, k0 + kc), accum = k0 > 0;
            for (int t = 0; t < n; t += KVP_FG_T) {
                const float *xt = x + (size_t)t * cols;
                float *yt = y + (size_t)t * ldy;
                switch (KVP_MIN(KVP_FG_T, n - t)) {
                case 4: kvp_fgemm_rows(et, 4, w, wrow, xt, cols, k0, k1, yt, ldy, rb, re, accum); break;
                case 3: kvp_fgemm_rows(et, 3, w, wrow, xt, cols, k0, k1, yt, ldy, rb, re, accum); break;
                case 2: kvp_fgemm_rows(et, 2, w, wrow, xt, cols, k0, k1, yt, ldy, rb, re, accum); break;
                default: kvp_fgemm_rows(et, 1, w, wrow, xt, cols, k0, k1, yt, ldy, rb, re, accum); break;
                }
            }
        }
    }
}

static void kvp_gemm_f32_avx2(const void *w, int cols, const void *xp, int n, float *y, int ldy,
                              int r0, int r1) {
    kvp_fgemm(KVP_E_F32, w, cols, xp, n, y, ldy, r0, r1);
}
static void kvp_gemm_f16_avx2(const void *w, int cols, const void *xp, int n, float *y, int ldy,
                              int r0, int r1) {
    kvp_fgemm(KVP_E_F16, w, cols, xp, n, y, ldy, r0, r1);
}
static void kvp_gemm_bf16_avx2(const void *w, int cols, const void *xp, int n, float *y,
                               int ldy, int r0, int r1) {
    kvp_fgemm(KVP_E_BF16, w, cols, xp, n, y, ldy, r0, r1);
}

/* ---------------------------------------------------------------------------------------
 * Q8_0 / Q4_0 weights x Q8_0 activations.
 * ------------------------------------------------------------------------------------- */

enum { KVP_Q_Q8_0 = 0, KVP_Q_Q4_0 = 1 };

#define KVP_QG_R 2
#define KVP_QG_T 3
#define KVP_QG_KB 64     /* prefill K chunk in blocks (2048 values) */
#define KVP_QG_RB 96
#define KVP_QG_DX 512    /* activation scales held per call (token-blocks) */

/* Block b of a weight row at p as signed bytes (Q4_0: nibble - 8) and its scale. */
KVP_AI __m256i kvp_qload(const int qt, const char *p, int b, float *d) {
    if (qt == KVP_Q_Q8_0) {
        const kvp_block_q8_0 *wb = (const kvp_block_q8_0 *)p + b;
        *d = _cvtsh_ss(wb->d);
        return _mm256_loadu_si256((const __m256i *)wb->qs);
    }
    const kvp_block_q4_0 *wb = (const kvp_block_q4_0 *)p + b;
    *d = _cvtsh_ss(wb->d);
    const __m128i v = _mm_loadu_si128((const __m128i *)wb->qs);
    const __m128i m = _mm_set1_epi8(0x0f);
    const __m256i q = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
    return _mm256_sub_epi8(q, _mm256_set1_epi8(8));
}

/* R rows x T tokens over blocks [b0, b1); dx[t * nbk + (b - b0)] are the activation scales. */
KVP_AI void kvp_qgemm_tile(const int qt, const int R, const int T, const char *w, size_t wrow,
                           const char *xp, size_t xrow, const float *dx, int nbk, int b0, int b1,
                           float *y, int ldy, int accum) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4][KVP_QG_T];
KVP_UNROLL
    for (int r = 0; r < R; r++)
KVP_UNROLL
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    for (int b = b0; b < b1; b++) {
        __m256i wq[4], wa[4];
        float wd[4];
KVP_UNROLL
        for (int r = 0; r < R; r++) {
            wq[r] = kvp_qload(qt, w + r * wrow, b, &wd[r]);
            wa[r] = _mm256_sign_epi8(wq[r], wq[r]);
        }
KVP_UNROLL
        for (int t = 0; t < T; t++) {
            const __m256i xq = _mm256_loadu_si256((const __m256i *)((const kvp_block_q8_0 *)(xp + t * xrow) + b)->qs);
            const float d = dx[t * nbk + (b - b0)];
KVP_UNROLL
            for (int r = 0; r < R; r++) {
                const __m256i p16 = _mm256_maddubs_epi16(wa[r], _mm256_sign_epi8(xq, wq[r]));
                const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                acc[r][t] = _mm256_fmadd_ps(p, _mm256_set1_ps(wd[r] * d), acc[r][t]);
            }
        }
    }
KVP_UNROLL
    for (int t = 0; t < T; t++) {
        __m256 col[4];
KVP_UNROLL
        for (int r = 0; r < R; r++) col[r] = acc[r][t];
        kvp_store_sums(R, col, y + (size_t)t * ldy, accum, 1.0f);
    }
}

/* Decode of one quantized row of nb blocks against one token row x (block scales dx as
 * floats); returns 8 partial sums. Two accumulators; one prefetch per cache line,
 * KVP_PF_DIST bytes ahead. */
KVP_AI __m256 kvp_qgemv_row(const int qt, const char *wr, const kvp_block_q8_0 *x,
                            const float *dx, int nb) {
    const int bs = qt == KVP_Q_Q8_0 ? (int)sizeof(kvp_block_q8_0) : (int)sizeof(kvp_block_q4_0);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    uintptr_t pf = ((uintptr_t)wr + KVP_PF_DIST) & ~(uintptr_t)63; /* next line to prefetch */
    for (int b = 0; b < nb; b++) {
        const uintptr_t end = (uintptr_t)wr + (uintptr_t)(b + 1) * bs + KVP_PF_DIST;
        for (; pf < end; pf += 64) _mm_prefetch((const char *)pf, _MM_HINT_T0);
        float wd;
        const __m256i wq = kvp_qload(qt, wr, b, &wd);
        const __m256i xq = _mm256_loadu_si256((const __m256i *)x[b].qs);
        const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(wq, wq), _mm256_sign_epi8(xq, wq));
        const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
        if (b & 1) acc1 = _mm256_fmadd_ps(p, _mm256_set1_ps(wd * dx[b]), acc1);
        else acc0 = _mm256_fmadd_ps(p, _mm256_set1_ps(wd * dx[b]), acc0);
    }
    return _mm256_add_ps(acc0, acc1);
}

KVP_AI void kvp_qgemm_rows(const int qt, const int T, const char *w, size_t wrow, const char *xp,
                           size_t xrow, const float *dx, int nbk, int b0, int b1, float *y,
                           int ldy, int r0, int r1, int accum) {
    int r = r0;
    for (; r + KVP_QG_R <= r1; r += KVP_QG_R)
        kvp_qgemm_tile(qt, KVP_QG_R, T, w + r * wrow, wrow, xp, xrow, dx, nbk, b0, b1, y + r, ldy, accum);
    for (; r < r1; r++)
        kvp_qgemm_tile(qt, 1, T, w + r * wrow, wrow, xp, xrow, dx, nbk, b0, b1, y + r, ldy, accum);
}

/* dx[t * (b1 - b0) + b - b0] = scale of block b of token t, as float. */
static void kvp_dx_build(float *dx, const char *xp, size_t xrow, int T, int b0, int b1) {
    for (int t = 0; t < T; t++) {
        const kvp_block_q8_0 *xb = (const kvp_block_q8_0 *)(xp + (size_t)t * xrow);
        for (int b = b0; b < b1; b++) dx[t * (b1 - b0) + b - b0] = _cvtsh_ss(xb[b].d);
    }
}

KVP_AI void kvp_qgemm(const int qt, const void *wv, int cols, const void *xpv, int n, float *y,
                      int ldy, int r0, int r1) {
    const char *w = wv, *xp = xpv;
    const int nb = cols / 32;
    const size_t wrow = (size_t)nb * (qt == KVP_Q_Q8_0 ? sizeof(kvp_block_q8_0) : sizeof(kvp_block_q4_0));
    const size_t xrow = (size_t)nb * sizeof(kvp_block_q8_0);
    float dx[KVP_QG_DX];
    if (n == 1) { /* decode: stream the rows once, in order, 4 rows per reduction */
        const int kb = kvp_even_chunk(nb, KVP_QG_DX, 1);
        for (int b0 = 0; b0 < nb; b0 += kb) {
            const int b1 = KVP_MIN(nb, b0 + kb), accum = b0 > 0;
            kvp_dx_build(dx, xp, xrow, 1, b0, b1);
            const kvp_block_q8_0 *xb = (const kvp_block_q8_0 *)xp + b0;
            const size_t off = (size_t)b0 * (wrow / (size_t)nb);
            /* two linear streams (the two halves of the rows), 4 rows of each in turn */
            const int groups = (r1 - r0) / 4, ga = (groups + 1) / 2;
            for (int g = 0; g < groups; g++) {
                const int r = r0 + 4 * (g % 2 ? ga + g / 2 : g / 2);
                __m256 res[4];
KVP_UNROLL
                for (int i = 0; i < 4; i++) res[i] = kvp_qgemv_row(qt, w + (r + i) * wrow + off, xb, dx, b1 - b0);
                kvp_store_sums(4, res, y + r, accum, 1.0f);
            }
            for (int r = r0 + 4 * groups; r < r1; r++) {
                __m256 res = kvp_qgemv_row(qt, w + r * wrow + off, xb, dx, b1 - b0);
                kvp_store_sums(1, &res, y + r, accum, 1.0f);
            }
        }
        return;
    }
    const int kb = kvp_even_chunk(nb, KVP_QG_KB, 1);
    for (int rb = r0; rb < r1; rb += KVP_QG_RB) {
        const int re = KVP_MIN(r1, rb + KVP_QG_RB);
        for (int b0 = 0; b0 < nb; b0 += kb) {
            const int b1 = KVP_MIN(nb, b0 + kb), accum = b0 > 0, nbk = b1 - b0;
            for (int t = 0; t < n; t += KVP_QG_T) {
                const int T = KVP_MIN(KVP_QG_T, n - t);
                const char *xt = xp + (size_t)t * xrow;
                float *yt = y + (size_t)t * ldy;
                kvp_dx_build(dx, xt, xrow, T, b0, b1);
                switch (T) {
                case 3: kvp_qgemm_rows(qt, 3, w, wrow, xt, xrow, dx, nbk, b0, b1, yt, ldy, rb, re, accum); break;
                case 2: kvp_qgemm_rows(qt, 2, w, wrow, xt, xrow, dx, nbk, b0, b1, yt, ldy, rb, re, accum); break;
                default: kvp_qgemm_rows(qt, 1, w, wrow, xt, xrow, dx, nbk, b0, b1, yt, ldy, rb, re, accum); break;
                }
            }
        }
    }
}

static void kvp_gemm_q8_0_avx2(const void *w, int cols, const void *xp, int n, float *y,
                               int ldy, int r0, int r1) {
    kvp_qgemm(KVP_Q_Q8_0, w, cols, xp, n, y, ldy, r0, r1);
}
static void kvp_gemm_q4_0_avx2(const void *w, int cols, const void *xp, int n, float *y,
                               int ldy, int r0, int r1) {
    kvp_qgemm(KVP_Q_Q4_0, w, cols, xp, n, y, ldy, r0, r1);
}

/* Q8_0 quantization, bit-identical to kvp_quant_q8_0_ref (see kernels_avx512.c). */
KVP_AI __m256i kvp_round_q8(__m256 v, __m256 id) {
    const __m256 s = _mm256_mul_ps(v, id);
    const __m256 t = _mm256_round_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(s, t));
    const __m256 up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_and_ps(s, sign), _mm256_set1_ps(1.0f));
    return _mm256_cvtps_epi32(_mm256_add_ps(t, _mm256_and_ps(up, one)));
}

static void kvp_quant_q8_0_avx2(const float *x, kvp_block_q8_0 *y, int64_t n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < n / 32; b++, x += 32) {
        const __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8);
        const __m256 v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float amax = _mm_cvtss_f32(h);
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = kvp_f32_to_f16(d);
        const __m256 idv = _mm256_set1_ps(id);
        const __m256i i0 = kvp_round_q8(v0, idv), i1 = kvp_round_q8(v1, idv);
        const __m256i i2 = kvp_round_q8(v2, idv), i3 = kvp_round_q8(v3, idv);
        /* packs work within 128-bit lanes: restore the order with a final permutation */
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        _mm256_storeu_si256((__m256i *)y[b].qs, _mm256_permutevar8x32_epi32(p, order));
    }
}

/* ---------------------------------------------------------------------------------------
 * Vector kernels.
 * ------------------------------------------------------------------------------------- */

KVP_AI float kvp_dot(const int et, const void *a, const float *b, int n) {
    const size_t es = kvp_esize(et);
    const char *pa = a;
    __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(kvp_ld(et, pa + (size_t)i * es), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(kvp_ld(et, pa + (size_t)(i + 8) * es), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(kvp_ld(et, pa + (size_t)(i + 16) * es), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(kvp_ld(et, pa + (size_t)(i + 24) * es), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(kvp_ld(et, pa + (size_t)i * es), _mm256_loadu_ps(b + i), s0);
    if (i < n)
        s1 = _mm256_fmadd_ps(kvp_ld_part(et, pa + (size_t)i * es, n - i),
                             _mm256_maskload_ps(b + i, kvp_mask8(n - i)), s1);
    return kvp_hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
}

static float kvp_dot_f32_avx2(const float *a, const float *b, int n) { return kvp_dot(KVP_E_F32, a, b, n); }
static float kvp_dot_f16_avx2(const uint16_t *a, const float *b, int n) { return kvp_dot(KVP_E_F16, a, b, n); }

KVP_AI void kvp_axpy(const int et, float *y, float a, const void *x, int n) {
    const size_t es = kvp_esize(et);
    const char *px = x;
    const __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, kvp_ld(et, px + (size_t)i * es), _mm256_loadu_ps(y + i)));
    if (i < n) {
        const __m256i m = kvp_mask8(n - i);
        const __m256 v = _mm256_fmadd_ps(av, kvp_ld_part(et, px + (size_t)i * es, n - i), _mm256_maskload_ps(y + i, m));
        _mm256_maskstore_ps(y + i, m, v);
    }
}

static void kvp_axpy_f32_avx2(float *y, float a, const float *x, int n) { kvp_axpy(KVP_E_F32, y, a, x, n); }
static void kvp_axpy_f16_avx2(float *y, float a, const uint16_t *x, int n) { kvp_axpy(KVP_E_F16, y, a, x, n); }

static void kvp_f32_to_f16_row_avx2(const float *x, uint16_t *y, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) y[i] = kvp_f32_to_f16(x[i]);
}

static void kvp_f16_to_f32_row_avx2(const uint16_t *x, float *y, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + i))));
    for (; i < n; i++) y[i] = kvp_f16_to_f32(x[i]);
}

/* ---------------------------------------------------------------------------------------
 * Attention.
 * ------------------------------------------------------------------------------------- */

#define KVP_AT_RB 64

/* S[h*lds + r] = scale * dot(K[r], Q[h]) for R rows and H heads. */
KVP_AI void kvp_scores_tile(const int et, const int R, const int H, const char *K, int hd,
                            const float *Q, int ldq, float scale, float *S, int lds) {
    const size_t es = kvp_esize(et), krow = (size_t)hd * es;
    __m256 acc[4][2];
KVP_UNROLL
    for (int r = 0; r < R; r++)
KVP_UNROLL
        for (int h = 0; h < H; h++) acc[r][h] = _mm256_setzero_ps();
    int c = 0;
    for (; c + 8 <= hd; c += 8) {
        __m256 q[2];
KVP_UNROLL
        for (int h = 0; h < H; h++) q[h] = _mm256_loadu_ps(Q + (size_t)h * ldq + c);
KVP_UNROLL
        for (int r = 0; r < R; r++) {
            const __m256 k = kvp_ld(et, K + r * krow + (size_t)c * es);
KVP_UNROLL
            for (int h = 0; h < H; h++) acc[r][h] = _mm256_fmadd_ps(k, q[h], acc[r][h]);
        }
    }
    if (c < hd) {
        const int m = hd - c;
        __m256 q[2];
KVP_UNROLL
        for (int h = 0; h < H; h++) q[h] = _mm256_maskload_ps(Q + (size_t)h * ldq + c, kvp_mask8(m));
KVP_UNROLL
        for (int r = 0; r < R; r++) {
            const __m256 k = kvp_ld_part(et, K + r * krow + (size_t)c * es, m);
KVP_UNROLL
            for (int h = 0; h < H; h++) acc[r][h] = _mm256_fmadd_ps(k, q[h], acc[r][h]);
        }
    }
KVP_UNROLL
    for (int h = 0; h < H; h++) {
        __m256 row[4];
KVP_UNROLL
        for (int r = 0; r < R; r++) row[r] = acc[r][h];
        kvp_store_sums(R, row, S + (size_t)h * lds, 0, scale);
    }
}

KVP_AI void kvp_scores_rows(const int et, const int H, const char *K, int t0, int t1, int hd,
                            const float *Q, int ldq, float scale, float *S, int lds) {
    const size_t krow = (size_t)hd * kvp_esize(et);
    int t = t0;
    for (; t + 4 <= t1; t += 4) {
        if (et != KVP_E_I8) /* 8-bit rows: short scattered runs the caller prefetches */
            for (size_t o = 0; o < 4 * krow; o += 64) kvp_prefetch(K + t * krow + o);
        kvp_scores_tile(et, 4, H, K + t * krow, hd, Q, ldq, scale, S + t, lds);
    }
    for (; t < t1; t++) kvp_scores_tile(et, 1, H, K + t * krow, hd, Q, ldq, scale, S + t, lds);
}

KVP_AI void kvp_scores(const int et, const void *Kv, int n, int hd, const float *Q, int nq,
                       int ldq, float scale, float *S, int lds) {
    const char *K = Kv;
    for (int t0 = 0; t0 < n; t0 += KVP_AT_RB) {
        const int t1 = KVP_MIN(n, t0 + KVP_AT_RB);
        int j = 0;
        for (; j + 2 <= nq; j += 2)
            kvp_scores_rows(et, 2, K, t0, t1, hd, Q + (size_t)j * ldq, ldq, scale, S + (size_t)j * lds, lds);
        if (j < nq)
            kvp_scores_rows(et, 1, K, t0, t1, hd, Q + (size_t)j * ldq, ldq, scale, S + (size_t)j * lds, lds);
    }
}

static void kvp_attn_scores_f32_avx2(const float *K, int n, int hd, const float *Q, int nq,
                                     int ldq, float scale, float *S, int lds) {
    kvp_scores(KVP_E_F32, K, n, hd, Q, nq, ldq, scale, S, lds);
}
static void kvp_attn_scores_f16_avx2(const uint16_t *K, int n, int hd, const float *Q, int nq,
                                     int ldq, float scale, float *S, int lds) {
    kvp_scores(KVP_E_F16, K, n, hd, Q, nq, ldq, scale, S, lds);
}
static void kvp_attn_scores_i8_avx2(const int8_t *K, int n, int hd, const float *Q, int nq,
                                    int ldq, float scale, float *S, int lds) {
    kvp_scores(KVP_E_I8, K, n, hd, Q, nq, ldq, scale, S, lds);
}

/* Y[h][c] += sum_t P[h][t] V[t][c] for H heads, nr rows, the columns [0, width) of a chunk
 * of CW vectors (width > 8 * (CW - 1)). */
KVP_AI void kvp_values_tile(const int et, const int CW, const int H, float *Y, int ldy,
                            const float *P, int ldp, const char *V, int hd, int nr, int width) {
    const size_t es = kvp_esize(et), vrow = (size_t)hd * es;
    const int lastw = width - 8 * (CW - 1);
    const __m256i last = kvp_mask8(lastw);
    __m256 acc[6][4];
KVP_UNROLL
    for (int h = 0; h < H; h++)
KVP_UNROLL
        for (int c = 0; c < CW; c++)
            acc[h][c] = c < CW - 1 ? _mm256_loadu_ps(Y + (size_t)h * ldy + 8 * c)
                                   : _mm256_maskload_ps(Y + (size_t)h * ldy + 8 * c, last);
    for (int t = 0; t < nr; t++) {
        __m256 p[6];
KVP_UNROLL
        for (int h = 0; h < H; h++) p[h] = _mm256_broadcast_ss(P + (size_t)h * ldp + t);
        const char *v = V + t * vrow;
        if (et != KVP_E_I8)
            for (size_t o = 0; o < vrow; o += 64) kvp_prefetch(v + o);
KVP_UNROLL
        for (int c = 0; c < CW; c++) {
            const __m256 x = c < CW - 1 || lastw == 8 ? kvp_ld(et, v + (size_t)(8 * c) * es)
                                                      : kvp_ld_part(et, v + (size_t)(8 * c) * es, lastw);
KVP_UNROLL
            for (int h = 0; h < H; h++) acc[h][c] = _mm256_fmadd_ps(p[h], x, acc[h][c]);
        }
    }
KVP_UNROLL
    for (int h = 0; h < H; h++)
KVP_UNROLL
        for (int c = 0; c < CW; c++) {
            if (c < CW - 1)
                _mm256_storeu_ps(Y + (size_t)h * ldy + 8 * c, acc[h][c]);
            else
                _mm256_maskstore_ps(Y + (size_t)h * ldy + 8 * c, last, acc[h][c]);
        }
}

/* Heads per group for a chunk of CW vectors: H * CW accumulators + H + 1 <= 16 registers. */
static int kvp_values_hmax(int cw) { return cw == 4 ? 2 : cw == 2 ? 4 : 6; }

#define KVP_VT_CASE(cw, h) \
    case h: kvp_values_tile(et, cw, h, Y, ldy, P, ldp, V, hd, nr, width); break

KVP_AI void kvp_values_group(const int et, int cw, int h, float *Y, int ldy, const float *P,
                             int ldp, const char *V, int hd, int nr, int width) {
    if (cw == 4) {
        switch (h) { KVP_VT_CASE(4, 2); default: KVP_VT_CASE(4, 1); }
    } else if (cw == 2) {
        switch (h) { KVP_VT_CASE(2, 4); KVP_VT_CASE(2, 3); KVP_VT_CASE(2, 2); default: KVP_VT_CASE(2, 1); }
    } else {
        switch (h) {
            KVP_VT_CASE(1, 6); KVP_VT_CASE(1, 5); KVP_VT_CASE(1, 4); KVP_VT_CASE(1, 3);
            KVP_VT_CASE(1, 2); default: KVP_VT_CASE(1, 1);
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
            const int nvec = (hd - c0 + 7) / 8;
            int cw = nvec >= 4 ? 4 : nvec >= 2 ? 2 : 1;
            while (cw > 1 && kvp_values_hmax(cw) < ny) cw /= 2;
            const int width = KVP_MIN(8 * cw, hd - c0);
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

static void kvp_attn_values_f32_avx2(float *Y, int ldy, int ny, const float *P, int ldp,
                                     const float *V, int n, int hd) {
    kvp_values(KVP_E_F32, Y, ldy, ny, P, ldp, V, n, hd);
}
static void kvp_attn_values_f16_avx2(float *Y, int ldy, int ny, const float *P, int ldp,
                                     const uint16_t *V, int n, int hd) {
    kvp_values(KVP_E_F16, Y, ldy, ny, P, ldp, V, n, hd);
}
static void kvp_attn_values_i8_avx2(float *Y, int ldy, int ny, const float *P, int ldp,
                                    const int8_t *V, int n, int hd) {
    kvp_values(KVP_E_I8, Y, ldy, ny, P, ldp, V, n, hd);
}

/* ---------------------------------------------------------------------------------------
 * Softmax: the algorithm of ops.c (kvp_softmax_c) on 8 lanes with FMA.
 * ------------------------------------------------------------------------------------- */

/* e^(x + xlo) for x in about [-87, 88], 0 below -87 and for NaN (see ops.c). */
KVP_AI __m256 kvp_exp8(__m256 x, __m256 xlo) {
    const __m256 lo = _mm256_set1_ps(-87.0f), magic = _mm256_set1_ps(12582912.0f);
    const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0f));
    const __m256 z = _mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), magic);
    const __m256 n = _mm256_sub_ps(z, magic);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), xc);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-06f), _mm256_add_ps(r, xlo));
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_castps_si256(z), _mm256_set1_epi32(127 - 0x4B400000)), 23);
    const __m256 keep = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
    return _mm256_and_ps(keep, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

/* e^(a - m) with the difference made exact by TwoSum (see ops.c). */
KVP_AI __m256 kvp_exp8_diff(__m256 a, __m256 m) {
    const __m256 b = _mm256_sub_ps(_mm256_setzero_ps(), m);
    const __m256 s = _mm256_add_ps(a, b), bb = _mm256_sub_ps(s, a);
    const __m256 err = _mm256_add_ps(_mm256_sub_ps(a, _mm256_sub_ps(s, bb)), _mm256_sub_ps(b, bb));
    return kvp_exp8(s, err);
}

/* The first m (< 8) values at p, the other lanes pad. */
KVP_AI __m256 kvp_ld8_pad(const float *p, int m, float pad) {
    float tmp[8] = {pad, pad, pad, pad, pad, pad, pad, pad};
    memcpy(tmp, p, (size_t)m * sizeof *p);
    return _mm256_loadu_ps(tmp);
}

static void kvp_softmax_avx2(float *x, int n) {
    if (n <= 0) return;
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0;
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
        m1 = _mm256_max_ps(m1, _mm256_loadu_ps(x + i + 8));
    }
    for (; i + 8 <= n; i += 8) m0 = _mm256_max_ps(m0, _mm256_loadu_ps(x + i));
    if (i < n) m1 = _mm256_max_ps(m1, kvp_ld8_pad(x + i, n - i, -INFINITY));
    m0 = _mm256_max_ps(m0, m1);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m0), _mm256_extractf128_ps(m0, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float max = _mm_cvtss_f32(h);
    if (max == -INFINITY) {
        memset(x, 0, (size_t)n * sizeof *x);
        return;
    }
    const __m256 vmax = _mm256_set1_ps(max);
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    for (i = 0; i + 16 <= n; i += 16) {
        const __m256 e0 = kvp_exp8_diff(_mm256_loadu_ps(x + i), vmax);
        const __m256 e1 = kvp_exp8_diff(_mm256_loadu_ps(x + i + 8), vmax);
        _mm256_storeu_ps(x + i, e0);
        _mm256_storeu_ps(x + i + 8, e1);
        s0 = _mm256_add_ps(s0, e0);
        s1 = _mm256_add_ps(s1, e1);
    }
    for (; i + 8 <= n; i += 8) {
        const __m256 e = kvp_exp8_diff(_mm256_loadu_ps(x + i), vmax);
        _mm256_storeu_ps(x + i, e);
        s0 = _mm256_add_ps(s0, e);
    }
    if (i < n) { /* the tail, padded with -inf (whose exp is 0) */
        float tmp[8];
        const __m256 e = kvp_exp8_diff(kvp_ld8_pad(x + i, n - i, -INFINITY), vmax);
        _mm256_storeu_ps(tmp, e);
        memcpy(x + i, tmp, (size_t)(n - i) * sizeof *x);
        s1 = _mm256_add_ps(s1, e);
    }
    const __m256 inv = _mm256_set1_ps((float)(1.0 / (double)kvp_hsum(_mm256_add_ps(s0, s1))));
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    for (; i < n; i++) x[i] *= _mm256_cvtss_f32(inv);
}

void kvp_ktable_fill_avx2(kvp_ktable *t) {
    t->isa = "avx2";
    t->gemm[KVP_TYPE_F32] = kvp_gemm_f32_avx2;
    t->gemm[KVP_TYPE_F16] = kvp_gemm_f16_avx2;
    t->gemm[KVP_TYPE_BF16] = kvp_gemm_bf16_avx2;
    t->gemm[KVP_TYPE_Q8_0] = kvp_gemm_q8_0_avx2;
    t->gemm[KVP_TYPE_Q4_0] = kvp_gemm_q4_0_avx2;
    t->quant_q8_0 = kvp_quant_q8_0_avx2;
    t->dot_f32 = kvp_dot_f32_avx2;
    t->dot_f16 = kvp_dot_f16_avx2;
    t->axpy_f32 = kvp_axpy_f32_avx2;
    t->axpy_f16 = kvp_axpy_f16_avx2;
    t->attn_scores_f32 = kvp_attn_scores_f32_avx2;
    t->attn_scores_f16 = kvp_attn_scores_f16_avx2;
    t->attn_values_f32 = kvp_attn_values_f32_avx2;
    t->attn_values_f16 = kvp_attn_values_f16_avx2;
    t->attn_scores_i8 = kvp_attn_scores_i8_avx2;
    t->attn_values_i8 = kvp_attn_values_i8_avx2;
    t->f32_to_f16_row = kvp_f32_to_f16_row_avx2;
    t->f16_to_f32_row = kvp_f16_to_f32_row_avx2;
    t->softmax = kvp_softmax_avx2;
}

#else /* built without the AVX2 flags: the table keeps the scalar kernels */

void kvp_ktable_fill_avx2(kvp_ktable *t) { (void)t; }

#endif
