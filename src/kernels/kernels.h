/*
 * kernels.h: tensor types, (de)quantization and the compute kernels of the forward pass.
 *
 * Every fast kernel has a plain C `_ref` twin that defines its result; the tests compare
 * the two over odd sizes. The fast versions are chosen once at run time from the CPU's
 * features (AVX-512, AVX2+FMA+F16C, or scalar); KVP_ISA=scalar|avx2|avx512 lowers the
 * choice. kvp_kernels_init() is idempotent and thread-safe; every entry point calls it.
 *
 * Shapes follow GGUF: a weight matrix has `rows` rows of `cols` values each (ne[0] = cols),
 * stored row after row; a row of a block type is cols / block_size blocks.
 */
#ifndef KVP_KERNELS_H
#define KVP_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "kvpack.h"

/* ---- block layouts (pinned with static_assert in quant.c) ---- */
#define KVP_QK8_0 32
#define KVP_QK4_0 32
typedef struct { uint16_t d; int8_t qs[KVP_QK8_0]; } kvp_block_q8_0;          /* 34 bytes */
typedef struct { uint16_t d; uint8_t qs[KVP_QK4_0 / 2]; } kvp_block_q4_0;     /* 18 bytes */

typedef struct kvp_type_traits {
    const char *name;
    int block_size;       /* values per block (1 for F32/F16/BF16) */
    size_t block_bytes;   /* bytes per block */
    int supported;        /* 1 when kvpack can dequantize and multiply this type */
} kvp_type_traits;

/* Returns the traits of a KVP_TYPE_*, or NULL for a number that is no type. */
const kvp_type_traits *kvp_type_traits_get(int type);
/* Bytes of a row of n values; 0 when n is not a multiple of the block size or the type is unknown. */
size_t kvp_type_row_bytes(int type, int64_t n);

/* Dequantizes n values (a multiple of the block size) of `type` into dst. */
int kvp_dequant_row(int type, const void *src, float *dst, int64_t n);
/* Quantizes n values into `type` (F32, F16, BF16, Q8_0, Q4_0), as llama.cpp's reference
 * quantizers do (round to nearest). */
int kvp_quant_row(int type, const float *src, void *dst, int64_t n);

/* ---- matrix multiplication ----
 * Y[i*ldy + r] = sum_c W[r][c] * X[i][c]  for tokens i in [0, n) and rows r in [r0, r1).
 * W is a weight matrix of type wtype with `cols` columns. X is the activations prepared for
 * that type by kvp_act_prepare(): for F32, F16 and BF16 weights plain F32 rows of `cols`
 * floats; for Q8_0, Q4_0 and Q5_0 weights Q8_0 rows, for Q4_1 and Q5_1 Q8_1 rows, for the
 * K-quants Q8_K rows (as llama.cpp does, so results match it within rounding). kvp_act_bytes() is the size of one prepared row. Callers split the row
 * range [0, rows) across threads; n = 1 is the decode (matrix-vector) case.
 * Determinism (F32, F16, BF16, Q8_0, Q4_0; tests/test_kernels.c checks it): for a given
 * instruction set, Y[i][r] is bit-identical whatever [r0, r1) the call covers and, for
 * n > 4, wherever token i sits in the batch, so thread counts and prompt batch splits do not
 * change results; n = 1, small batches (2 <= n <= 4: the AVX-512 F32/F16/BF16 kernels read
 * them as decode does, for the decode steps of a few sessions batched together) and larger
 * batches may differ in the last bits. The attention kernels likewise give
 * a head's result independent of the other heads of the call and a row's score independent
 * of the number of rows. */
size_t kvp_act_bytes(int wtype, int cols);
void kvp_act_prepare(int wtype, const float *x, int n, int cols, void *xp);
void kvp_gemm(int wtype, const void *w, int cols, const void *xp, int n, float *y, int ldy,
              int r0, int r1);
void kvp_gemm_ref(int wtype, const void *w, int cols, const void *xp, int n, float *y, int ldy,
                  int r0, int r1);

/* ---- vector kernels used by attention and the layers ---- */
float kvp_dot_f32(const float *a, const float *b, int n);
float kvp_dot_f32_ref(const float *a, const float *b, int n);
float kvp_dot_f16(const uint16_t *a, const float *b, int n);     /* a in F16 */
float kvp_dot_f16_ref(const uint16_t *a, const float *b, int n);
void kvp_axpy_f32(float *y, float a, const float *x, int n);      /* y += a * x */
void kvp_axpy_f32_ref(float *y, float a, const float *x, int n);
void kvp_axpy_f16(float *y, float a, const uint16_t *x, int n);   /* x in F16 */
void kvp_axpy_f16_ref(float *y, float a, const uint16_t *x, int n);
/* Attention over a run of n cached rows of hd values (keys or values of one KV head), for a
 * group of nq query heads that share it (grouped-query attention loads each row once):
 *   scores:  S[j*lds + t] = scale * dot(K[t], Q[j*ldq ..])          j < nq, t < n
 *   values:  Y[j*ldy ..] += sum_t P[j*ldp + t] * V[t]                j < ny
 * Rows are contiguous (row t starts at t*hd). F32 and F16 storage. */
void kvp_attn_scores_f32(const float *K, int n, int hd, const float *Q, int nq, int ldq,
                         float scale, float *S, int lds);
void kvp_attn_scores_f32_ref(const float *K, int n, int hd, const float *Q, int nq, int ldq,
                             float scale, float *S, int lds);
void kvp_attn_scores_f16(const uint16_t *K, int n, int hd, const float *Q, int nq, int ldq,
                         float scale, float *S, int lds);
void kvp_attn_scores_f16_ref(const uint16_t *K, int n, int hd, const float *Q, int nq, int ldq,
                             float scale, float *S, int lds);
void kvp_attn_values_f32(float *Y, int ldy, int ny, const float *P, int ldp, const float *V,
                         int n, int hd);
void kvp_attn_values_f32_ref(float *Y, int ldy, int ny, const float *P, int ldp,
                             const float *V, int n, int hd);
void kvp_attn_values_f16(float *Y, int ldy, int ny, const float *P, int ldp,
                         const uint16_t *V, int n, int hd);
void kvp_attn_values_f16_ref(float *Y, int ldy, int ny, const float *P, int ldp,
                             const uint16_t *V, int n, int hd);
/* The same over rows of signed 8-bit integers (no scale: a caller with per-row scales
 * multiplies the scores, or the weights P, by them): the cold tier's 8-bit rows attended in
 * place, each row loaded once for the group instead of converted to floats first. */
void kvp_attn_scores_i8(const int8_t *K, int n, int hd, const float *Q, int nq, int ldq,
                        float scale, float *S, int lds);
void kvp_attn_scores_i8_ref(const int8_t *K, int n, int hd, const float *Q, int nq, int ldq,
                            float scale, float *S, int lds);
void kvp_attn_values_i8(float *Y, int ldy, int ny, const float *P, int ldp,
                        const int8_t *V, int n, int hd);
void kvp_attn_values_i8_ref(float *Y, int ldy, int ny, const float *P, int ldp,
                            const int8_t *V, int n, int hd);

void kvp_f32_to_f16_row(const float *x, uint16_t *y, int n);
void kvp_f16_to_f32_row(const uint16_t *x, float *y, int n);

/* out = x / rms(x) * w, rms over n values with eps. */
void kvp_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
void kvp_rmsnorm_ref(float *out, const float *x, const float *w, int n, float eps);
/* In-place softmax over n values; returns nothing. */
void kvp_softmax(float *x, int n);
/* h[i] = silu(g[i]) * u[i] */
void kvp_swiglu(float *h, const float *g, const float *u, int n);
void kvp_swiglu_ref(float *h, const float *g, const float *u, int n);

/* Rotary embedding of one vector of n_heads heads of head_dim values at position pos, in
 * place. style KVP_ROPE_NORM rotates adjacent pairs (2i, 2i+1); KVP_ROPE_NEOX rotates
 * (i, i + head_dim/2). freq_i = theta^(-2i/head_dim), optionally divided by freq_factors[i]. */
void kvp_rope(float *x, int n_heads, int head_dim, int pos, float theta, int style,
              const float *freq_factors);

/* Which kernel set is active: "avx512", "avx2" or "scalar". */
const char *kvp_kernels_isa(void);
void kvp_kernels_init(void);

#endif
