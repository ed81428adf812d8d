/*
 * kernels_internal.h: what the kernel files share and nothing else includes, except the
 * kernel tests and benchmark: the per-type operation rows, the function-pointer table of
 * one instruction set, and the hooks that fill and choose tables.
 *
 * Layering: quant.c owns the type tables (traits and reference row operations),
 * kernels.c owns the `_ref` kernels, the dispatch and the public wrappers, and each
 * kernels_<isa>.c fills in the entries it accelerates. An entry an instruction set does
 * not accelerate keeps the lower set's function, so every table is always complete.
 */
#ifndef KVP_KERNELS_INTERNAL_H
#define KVP_KERNELS_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/kernels.h"

/* Largest type number the tables know (MXFP4 = 39 in GGUF); types past KVP_TYPE_COUNT exist
 * in the tables only to be named. */
#define KVP_TYPE_TABLE_SIZE 40

/* ---- per-type row operations (quant.c) ----
 * A type row says how activations are prepared for a weight of that type (act_type) and
 * gives reference conversions and the reference dot product of one weight row with one
 * prepared activation row of `cols` values. Adding a type means adding a traits row and an
 * ops row in quant.c, and optionally fast gemm entries in the ISA tables. */
typedef void (*kvp_to_float_fn)(const void *src, float *dst, int64_t n);
typedef void (*kvp_from_float_fn)(const float *src, void *dst, int64_t n);
typedef float (*kvp_dot_row_fn)(const void *w, const void *x, int cols);

typedef struct kvp_type_ops {
    int act_type;               /* F32, Q8_0, Q8_1 or Q8_K; -1 when not multipliable */
    kvp_to_float_fn to_float;   /* NULL when kvpack cannot dequantize the type */
    kvp_from_float_fn from_float; /* NULL when kvpack cannot quantize into the type */
    kvp_dot_row_fn dot_ref;     /* NULL when kvpack cannot multiply the type */
} kvp_type_ops;

/* Returns the operations row of a type, or NULL for a number that is no type. */
const kvp_type_ops *kvp_type_ops_get(int type);

/* Reference quantizers of llama.cpp (ggml's quantize_row_*_ref), n a multiple of 32. */
void kvp_quant_q8_0_ref(const float *x, kvp_block_q8_0 *y, int64_t n);
void kvp_quant_q4_0_ref(const float *x, kvp_block_q4_0 *y, int64_t n);

/* ---- one instruction set's kernels ---- */

/* Y[i*ldy + r] = dot(W row r, X row i), i < n, r in [r0, r1); X prepared for the type. */
typedef void (*kvp_gemm_fn)(const void *w, int cols, const void *xp, int n, float *y, int ldy,
                            int r0, int r1);

typedef struct kvp_ktable {
    const char *isa;                           /* "scalar", "avx2", "avx512" */
    kvp_gemm_fn gemm[KVP_TYPE_TABLE_SIZE];     /* NULL for types kvpack cannot multiply */
    /* Quantizes n values (a multiple of 32) to Q8_0, bit-identical to kvp_quant_q8_0_ref. */
    void (*quant_q8_0)(const float *x, kvp_block_q8_0 *y, int64_t n);
    float (*dot_f32)(const float *a, const float *b, int n);
    float (*dot_f16)(const uint16_t *a, const float *b, int n);
    void (*axpy_f32)(float *y, float a, const float *x, int n);
    void (*axpy_f16)(float *y, float a, const uint16_t *x, int n);
    void (*attn_scores_f32)(const float *K, int n, int hd, const float *Q, int nq, int ldq,
                            float scale, float *S, int lds);
    void (*attn_scores_f16)(const uint16_t *K, int n, int hd, const float *Q, int nq, int ldq,
                            float scale, float *S, int lds);
    void (*attn_values_f32)(float *Y, int ldy, int ny, const float *P, int ldp,
                            const float *V, int n, int hd);
    void (*attn_values_f16)(float *Y, int ldy, int ny, const float *P, int ldp,
                            const uint16_t *V, int n, int hd);
    void (*attn_scores_i8)(const int8_t *K, int n, int hd, const float *Q, int nq, int ldq,
                           float scale, float *S, int lds);
    void (*attn_values_i8)(float *Y, int ldy, int ny, const float *P, int ldp,
                           const int8_t *V, int n, int hd);
    /* Bit-identical to the scalar conversions of common.h, except NaN payloads. */
    void (*f32_to_f16_row)(const float *x, uint16_t *y, int n);
    void (*f16_to_f32_row)(const uint16_t *x, float *y, int n);
    /* kvp_softmax (ops.c); every set uses the same exp algorithm as kvp_softmax_c. */
    void (*softmax)(float *x, int n);
} kvp_ktable;

/* The portable softmax of ops.c (the scalar table's entry). */
void kvp_softmax_c(float *x, int n);

/* Fill a table: scalar sets every entry; avx2 and avx512 override the entries they
 * accelerate, so a table is built by applying scalar, then avx2, then avx512. */
void kvp_ktable_fill_scalar(kvp_ktable *t);
void kvp_ktable_fill_avx2(kvp_ktable *t);
void kvp_ktable_fill_avx512(kvp_ktable *t);

/* The table of the active instruction set (initializes the kernels on first use). */
const kvp_ktable *kvp_ktable_active(void);

/* Builds the table of a named instruction set into *t. Returns 0, KVP_EUNSUPPORTED when this
 * CPU lacks the instructions, or KVP_EINVAL for an unknown name. For tests and benchmarks. */
int kvp_ktable_build(const char *isa, kvp_ktable *t);

/* Makes `isa` ("scalar", "avx2", "avx512") the active set, or with NULL restores the choice
 * made at initialization (CPU and KVP_ISA). Returns 0, KVP_EUNSUPPORTED when the CPU lacks
 * the set, KVP_EINVAL for an unknown name. For tests and benchmarks only: not thread-safe
 * with respect to concurrently running kernels. */
int kvp_kernels_force_isa(const char *isa);

/* 1 when this CPU (and OS) can run the named set, else 0. */
int kvp_kernels_cpu_has(const char *isa);

#endif /* KVP_KERNELS_INTERNAL_H */
