/*
 * kernels.c: the reference (`_ref`) kernels, the portable scalar kernel table, the choice of
 * instruction set at run time, and the public entry points of kernels.h.
 *
 * The `_ref` functions define what every kernel computes: plain C, one output at a time,
 * sums in double. The scalar table is the portable fallback (plain C written to vectorize
 * with the compiler's baseline SIMD); kernels_avx2.c and kernels_avx512.c override entries
 * of it. kvp_kernels_init() picks the best table the CPU runs, lowered by KVP_ISA.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "common/common.h"
#include "kernels/kernels_internal.h"
#include "kernels/kquants.h"

/* ---------------------------------------------------------------------------------------
 * Reference kernels.
 * ------------------------------------------------------------------------------------- */

void kvp_gemm_ref(int wtype, const void *w, int cols, const void *xp, int n, float *y, int ldy,
                  int r0, int r1) {
    const kvp_type_ops *o = kvp_type_ops_get(wtype);
    if (!o || !o->dot_ref) return;
    const size_t wrow = kvp_type_row_bytes(wtype, cols), xrow = kvp_act_bytes(wtype, cols);
    for (int i = 0; i < n; i++) {
        const char *x = (const char *)xp + (size_t)i * xrow;
        for (int r = r0; r < r1; r++)
            y[(size_t)i * ldy + r] = o->dot_ref((const char *)w + (size_t)r * wrow, x, cols);
    }
}

float kvp_dot_f32_ref(const float *a, const float *b, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)a[i] * b[i];
    return (float)s;
}

float kvp_dot_f16_ref(const uint16_t *a, const float *b, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)kvp_f16_to_f32(a[i]) * b[i];
    return (float)s;
}

void kvp_axpy_f32_ref(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

void kvp_axpy_f16_ref(float *y, float a, const uint16_t *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * kvp_f16_to_f32(x[i]);
}

void kvp_attn_scores_f32_ref(const float *K, int n, int hd, const float *Q, int nq, int ldq,
                             float scale, float *S, int lds) {
    for (int j = 0; j < nq; j++)
        for (int t = 0; t < n; t++)
            S[(size_t)j * lds + t] =
                (float)(scale * (double)kvp_dot_f32_ref(K + (size_t)t * hd, Q + (size_t)j * ldq, hd));
}

void kvp_attn_scores_f16_ref(const uint16_t *K, int n, int hd, const float *Q, int nq, int ldq,
                             float scale, float *S, int lds) {
    for (int j = 0; j < nq; j++)
        for (int t = 0; t < n; t++)
            S[(size_t)j * lds + t] =
                (float)(scale * (double)kvp_dot_f16_ref(K + (size_t)t * hd, Q + (size_t)j * ldq, hd));
}

void kvp_attn_values_f32_ref(float *Y, int ldy, int ny, const float *P, int ldp,
                             const float *V, int n, int hd) {
    for (int j = 0; j < ny; j++)
        for (int c = 0; c < hd; c++) {
            double s = Y[(size_t)j * ldy + c];
            for (int t = 0; t < n; t++) s += (double)P[(size_t)j * ldp + t] * V[(size_t)t * hd + c];
            Y[(size_t)j * ldy + c] = (float)s;
        }
}

void kvp_attn_values_f16_ref(float *Y, int ldy, int ny, const float *P, int ldp,
                             const uint16_t *V, int n, int hd) {
    for (int j = 0; j < ny; j++)
        for (int c = 0; c < hd; c++) {
            double s = Y[(size_t)j * ldy + c];
            for (int t = 0; t < n; t++)
                s += (double)P[(size_t)j * ldp + t] * kvp_f16_to_f32(V[(size_t)t * hd + c]);
            Y[(size_t)j * ldy + c] = (float)s;
        }
}

void kvp_attn_scores_i8_ref(const int8_t *K, int n, int hd, const float *Q, int nq, int ldq,
                            float scale, float *S, int lds) {
    for (int j = 0; j < nq; j++)
        for (int t = 0; t < n; t++) {
            double s = 0;
            for (int c = 0; c < hd; c++) s += (double)K[(size_t)t * hd + c] * Q[(size_t)j * ldq + c];
            S[(size_t)j * lds + t] = (float)(scale * s);
        }
}

void kvp_attn_values_i8_ref(float *Y, int ldy, int ny, const float *P, int ldp,
                            const int8_t *V, int n, int hd) {
    for (int j = 0; j < ny; j++)
        for (int c = 0; c < hd; c++) {
            double s = Y[(size_t)j * ldy + c];
            for (int t = 0; t < n; t++) s += (double)P[(size_t)j * ldp + t] * V[(size_t)t * hd + c];
            Y[(size_t)j * ldy + c] = (float)s;
        }
}

/* ---------------------------------------------------------------------------------------
 * The scalar table: plain C with several independent partial sums, so the compiler's
 * baseline vectorizer (SSE2 on x86-64) can work on it.
 * ------------------------------------------------------------------------------------- */

#define KVP_SC_LANES 8
#define KVP_SC_CHUNK 512 /* values of a weight row converted to float at a time */

static float kvp_sc_dot_f32(const float *a, const float *b, int n) {
    float s[KVP_SC_LANES] = {0};
    int i = 0;
    for (; i + KVP_SC_LANES <= n; i += KVP_SC_LANES)
        for (int l = 0; l < KVP_SC_LANES; l++) s[l] += a[i + l] * b[i + l];
    float r = 0;
    for (; i < n; i++) r += a[i] * b[i];
    for (int l = 0; l < KVP_SC_LANES; l++) r += s[l];
    return r;
}

static void kvp_sc_f16_to_f32_row(const uint16_t *x, float *y, int n) {
    for (int i = 0; i < n; i++) y[i] = kvp_f16_to_f32(x[i]);
}

static void kvp_sc_f32_to_f16_row(const float *x, uint16_t *y, int n) {
    for (int i = 0; i < n; i++) y[i] = kvp_f32_to_f16(x[i]);
}

static float kvp_sc_dot_f16(const uint16_t *a, const float *b, int n) {
    float buf[KVP_SC_CHUNK], s = 0;
    for (int i = 0; i < n; i += KVP_SC_CHUNK) {
        int m = KVP_MIN(KVP_SC_CHUNK, n - i);
        kvp_sc_f16_to_f32_row(a + i, buf, m);
        s += kvp_sc_dot_f32(buf, b + i, m);
    }
    return s;
}

static void kvp_sc_axpy_f32(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

static void kvp_sc_axpy_f16(float *y, float a, const uint16_t *x, int n) {
    float buf[KVP_SC_CHUNK];
    for (int i = 0; i < n; i += KVP_SC_CHUNK) {
        int m = KVP_MIN(KVP_SC_CHUNK, n - i);
        kvp_sc_f16_to_f32_row(x + i, buf, m);
        kvp_sc_axpy_f32(y + i, a, buf, m);
    }
}

/* Float-type weights: each weight row is converted to float a chunk at a time and the
 * chunk is used for every token. */
static void kvp_sc_gemm_float(int wtype, const void *w, int cols, const void *xp, int n,
                              float *y, int ldy, int r0, int r1) {
    const kvp_type_ops *o = kvp_type_ops_get(wtype);
    const size_t wrow = kvp_type_row_bytes(wtype, cols);
    const float *x = xp;
    float buf[KVP_SC_CHUNK];
    for (int r = r0; r < r1; r++) {
        const char *wr = (const char *)w + (size_t)r * wrow;
        for (int i = 0; i < n; i++) y[(size_t)i * ldy + r] = 0;
        for (int k = 0; k < cols; k += KVP_SC_CHUNK) {
            int m = KVP_MIN(KVP_SC_CHUNK, cols - k);
            o->to_float(wr + (size_t)k * (wrow / (size_t)cols), buf, m);
            for (int i = 0; i < n; i++)
                y[(size_t)i * ldy + r] += kvp_sc_dot_f32(buf, x + (size_t)i * cols + k, m);
        }
    }
}

static void kvp_sc_gemm_f32(const void *w, int cols, const void *xp, int n, float *y, int ldy,
                            int r0, int r1) {
    kvp_sc_gemm_float(KVP_TYPE_F32, w, cols, xp, n, y, ldy, r0, r1);
}
static void kvp_sc_gemm_f16(const void *w, int cols, const void *xp, int n, float *y, int ldy,
                            int r0, int r1) {
    kvp_sc_gemm_float(KVP_TYPE_F16, w, cols, xp, n, y, ldy, r0, r1);
}
static void kvp_sc_gemm_bf16(const void *w, int cols, const void *xp, int n, float *y, int ldy,
                             int r0, int r1) {
    kvp_sc_gemm_float(KVP_TYPE_BF16, w, cols, xp, n, y, ldy, r0, r1);
}

/* Quantized weights: integer dot products per block, which is what the reference does. */
static void kvp_sc_gemm_q8_0(const void *w, int cols, const void *xp, int n, float *y, int ldy,
                             int r0, int r1) {
    kvp_gemm_ref(KVP_TYPE_Q8_0, w, cols, xp, n, y, ldy, r0, r1);
}
static void kvp_sc_gemm_q4_0(const void *w, int cols, const void *xp, int n, float *y, int ldy,
                             int r0, int r1) {
    kvp_gemm_ref(KVP_TYPE_Q4_0, w, cols, xp, n, y, ldy, r0, r1);
}

static void kvp_sc_attn_scores_f32(const float *K, int n, int hd, const float *Q, int nq,
                                   int ldq, float scale, float *S, int lds) {
    for (int t = 0; t < n; t++)
        for (int j = 0; j < nq; j++)
            S[(size_t)j * lds + t] = scale * kvp_sc_dot_f32(K + (size_t)t * hd, Q + (size_t)j * ldq, hd);
}

/* Each cached row is converted once and used for every head (rows of up to KVP_SC_CHUNK
 * values; longer rows are converted per head). */
static void kvp_sc_attn_scores_f16(const uint16_t *K, int n, int hd, const float *Q, int nq,
                                   int ldq, float scale, float *S, int lds) {
    float buf[KVP_SC_CHUNK];
    for (int t = 0; t < n; t++) {
        const uint16_t *k = K + (size_t)t * hd;
        if (hd <= KVP_SC_CHUNK) kvp_sc_f16_to_f32_row(k, buf, hd);
        for (int j = 0; j < nq; j++)
            S[(size_t)j * lds + t] = scale * (hd <= KVP_SC_CHUNK ? kvp_sc_dot_f32(buf, Q + (size_t)j * ldq, hd)
                                                                 : kvp_sc_dot_f16(k, Q + (size_t)j * ldq, hd));
    }
}

static void kvp_sc_attn_values_f32(float *Y, int ldy, int ny, const float *P, int ldp,
                                   const float *V, int n, int hd) {
    for (int t = 0; t < n; t++)
        for (int j = 0; j < ny; j++)
            kvp_sc_axpy_f32(Y + (size_t)j * ldy, P[(size_t)j * ldp + t], V + (size_t)t * hd, hd);
}

static void kvp_sc_attn_values_f16(float *Y, int ldy, int ny, const float *P, int ldp,
                                   const uint16_t *V, int n, int hd) {
    float buf[KVP_SC_CHUNK];
    for (int t = 0; t < n; t++) {
        const uint16_t *v = V + (size_t)t * hd;
        if (hd <= KVP_SC_CHUNK) kvp_sc_f16_to_f32_row(v, buf, hd);
        for (int j = 0; j < ny; j++) {
            if (hd <= KVP_SC_CHUNK) kvp_sc_axpy_f32(Y + (size_t)j * ldy, P[(size_t)j * ldp + t], buf, hd);
            else kvp_sc_axpy_f16(Y + (size_t)j * ldy, P[(size_t)j * ldp + t], v, hd);
        }
    }
}

/* 8-bit rows: each row converted to floats once (rows of up to KVP_SC_CHUNK values), then
 * the F32 kernels. */
static void kvp_sc_i8_to_f32(const int8_t *x, float *y, int n) {
    for (int i = 0; i < n; i++) y[i] = (float)x[i];
}

static void kvp_sc_attn_scores_i8(const int8_t *K, int n, int hd, const float *Q, int nq,
                                  int ldq, float scale, float *S, int lds) {
    float buf[KVP_SC_CHUNK];
    for (int t = 0; t < n; t++) {
        const int8_t *k = K + (size_t)t * hd;
        if (hd > KVP_SC_CHUNK) {
            kvp_attn_scores_i8_ref(k, 1, hd, Q, nq, ldq, scale, S + t, lds);
            continue;
        }
        kvp_sc_i8_to_f32(k, buf, hd);
        for (int j = 0; j < nq; j++) S[(size_t)j * lds + t] = scale * kvp_sc_dot_f32(buf, Q + (size_t)j * ldq, hd);
    }
}

static void kvp_sc_attn_values_i8(float *Y, int ldy, int ny, const float *P, int ldp,
                                  const int8_t *V, int n, int hd) {
    float buf[KVP_SC_CHUNK];
    for (int t = 0; t < n; t++) {
        const int8_t *v = V + (size_t)t * hd;
        if (hd > KVP_SC_CHUNK) {
            kvp_attn_values_i8_ref(Y, ldy, ny, P + t, ldp, v, 1, hd);
            continue;
        }
        kvp_sc_i8_to_f32(v, buf, hd);
        for (int j = 0; j < ny; j++) kvp_sc_axpy_f32(Y + (size_t)j * ldy, P[(size_t)j * ldp + t], buf, hd);
    }
}

void kvp_ktable_fill_scalar(kvp_ktable *t) {
    memset(t, 0, sizeof *t);
    t->isa = "scalar";
    t->gemm[KVP_TYPE_F32] = kvp_sc_gemm_f32;
    t->gemm[KVP_TYPE_F16] = kvp_sc_gemm_f16;
    t->gemm[KVP_TYPE_BF16] = kvp_sc_gemm_bf16;
    t->gemm[KVP_TYPE_Q8_0] = kvp_sc_gemm_q8_0;
    t->gemm[KVP_TYPE_Q4_0] = kvp_sc_gemm_q4_0;
    t->quant_q8_0 = kvp_quant_q8_0_ref;
    t->dot_f32 = kvp_sc_dot_f32;
    t->dot_f16 = kvp_sc_dot_f16;
    t->axpy_f32 = kvp_sc_axpy_f32;
    t->axpy_f16 = kvp_sc_axpy_f16;
    t->attn_scores_f32 = kvp_sc_attn_scores_f32;
    t->attn_scores_f16 = kvp_sc_attn_scores_f16;
    t->attn_values_f32 = kvp_sc_attn_values_f32;
    t->attn_values_f16 = kvp_sc_attn_values_f16;
    t->attn_scores_i8 = kvp_sc_attn_scores_i8;
    t->attn_values_i8 = kvp_sc_attn_values_i8;
    t->f32_to_f16_row = kvp_sc_f32_to_f16_row;
    t->f16_to_f32_row = kvp_sc_f16_to_f32_row;
    t->softmax = kvp_softmax_c;
}

/* ---------------------------------------------------------------------------------------
 * Choosing the instruction set.
 * ------------------------------------------------------------------------------------- */

enum { KVP_ISA_SCALAR = 0, KVP_ISA_AVX2 = 1, KVP_ISA_AVX512 = 2, KVP_ISA_N = 3 };
static const char *const kvp_isa_names[KVP_ISA_N] = {"scalar", "avx2", "avx512"};

static kvp_ktable kvp_tables[KVP_ISA_N];
static int kvp_cpu_level;                 /* best level the CPU runs */
static int kvp_default_level;             /* kvp_cpu_level lowered by KVP_ISA */
static const kvp_ktable *volatile kvp_active;
static pthread_once_t kvp_once = PTHREAD_ONCE_INIT;

#if defined(__x86_64__) || defined(__i386__)
/* F16C from CPUID leaf 1 (not every compiler's __builtin_cpu_supports knows "f16c"). It is
 * only consulted after the compiler's runtime has confirmed AVX2, so the OS saves YMM. */
static int kvp_cpu_f16c(void) {
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

/* The highest level whose instructions the CPU and OS support. The compiler's runtime
 * checks the OS's saved-state mask (XCR0) before it reports AVX or AVX-512 features. */
static int kvp_detect_level(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && kvp_cpu_f16c();
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                 __builtin_cpu_supports("avx512vnni");
    return avx512 ? KVP_ISA_AVX512 : avx2 ? KVP_ISA_AVX2 : KVP_ISA_SCALAR;
#else
    return KVP_ISA_SCALAR;
#endif
}

static int kvp_isa_level(const char *name) {
    for (int i = 0; i < KVP_ISA_N; i++)
        if (name && strcmp(name, kvp_isa_names[i]) == 0) return i;
    return -1;
}

static void kvp_build_level(int level, kvp_ktable *t) {
    kvp_ktable_fill_scalar(t);
    kvp_ktable_fill_kquants_scalar(t);
    if (level >= KVP_ISA_AVX2) kvp_ktable_fill_avx2(t);
    if (level >= KVP_ISA_AVX2) kvp_ktable_fill_kquants_avx2(t);
    if (level >= KVP_ISA_AVX512) kvp_ktable_fill_avx512(t);
    if (level >= KVP_ISA_AVX512) kvp_ktable_fill_kquants_avx512(t);
}

static void kvp_kernels_init_once(void) {
    kvp_cpu_level = kvp_detect_level();
    for (int i = 0; i <= kvp_cpu_level; i++) kvp_build_level(i, &kvp_tables[i]);
    kvp_default_level = kvp_cpu_level;
    /* KVP_ISA can only lower the choice; an unknown value is ignored. */
    int want = kvp_isa_level(getenv("KVP_ISA"));
    if (want >= 0 && want < kvp_default_level) kvp_default_level = want;
    kvp_active = &kvp_tables[kvp_default_level];
}

void kvp_kernels_init(void) { pthread_once(&kvp_once, kvp_kernels_init_once); }

const kvp_ktable *kvp_ktable_active(void) {
    kvp_kernels_init();
    return kvp_active;
}

const char *kvp_kernels_isa(void) { return kvp_ktable_active()->isa; }

const char *kvp_isa(void) { return kvp_kernels_isa(); }

int kvp_kernels_cpu_has(const char *isa) {
    kvp_kernels_init();
    int l = kvp_isa_level(isa);
    return l >= 0 && l <= kvp_cpu_level;
}

int kvp_ktable_build(const char *isa, kvp_ktable *t) {
    kvp_kernels_init();
    int l = kvp_isa_level(isa);
    if (l < 0) return kvp_seterr(KVP_EINVAL, "unknown instruction set '%s'", isa ? isa : "(null)");
    if (l > kvp_cpu_level)
        return kvp_seterr(KVP_EUNSUPPORTED, "this CPU cannot run the %s kernels", isa);
    *t = kvp_tables[l];
    return KVP_OK;
}

int kvp_kernels_force_isa(const char *isa) {
    kvp_kernels_init();
    if (!isa) {
        kvp_active = &kvp_tables[kvp_default_level];
        return KVP_OK;
    }
    int l = kvp_isa_level(isa);
    if (l < 0) return kvp_seterr(KVP_EINVAL, "unknown instruction set '%s'", isa);
    if (l > kvp_cpu_level)
        return kvp_seterr(KVP_EUNSUPPORTED, "this CPU cannot run the %s kernels", isa);
    kvp_active = &kvp_tables[l];
    return KVP_OK;
}

/* ---------------------------------------------------------------------------------------
 * Public entry points.
 * ------------------------------------------------------------------------------------- */

size_t kvp_act_bytes(int wtype, int cols) {
    const kvp_type_ops *o = kvp_type_ops_get(wtype);
    if (!o || o->act_type < 0) return 0;
    return kvp_type_row_bytes(o->act_type, cols);
}

void kvp_act_prepare(int wtype, const float *x, int n, int cols, void *xp) {
    const kvp_type_ops *o = kvp_type_ops_get(wtype);
    if (!o || o->act_type < 0 || n <= 0) return;
    const kvp_ktable *kt = kvp_ktable_active();
    if (o->act_type == KVP_TYPE_F32) {
        if ((const void *)x != xp) memmove(xp, x, (size_t)n * (size_t)cols * sizeof(float));
        return;
    }
    const size_t row = kvp_type_row_bytes(o->act_type, cols);
    if (row == 0) return; /* cols is no multiple of the block size: nothing can be prepared */
    if (o->act_type != KVP_TYPE_Q8_0) { /* Q8_K, Q8_1: the reference quantizer of the type */
        const kvp_type_ops *a = kvp_type_ops_get(o->act_type);
        for (int i = 0; i < n; i++) a->from_float(x + (size_t)i * cols, (char *)xp + (size_t)i * row, cols);
        return;
    }
    for (int i = 0; i < n; i++)
        kt->quant_q8_0(x + (size_t)i * cols, (kvp_block_q8_0 *)((char *)xp + (size_t)i * row), cols);
}

void kvp_gemm(int wtype, const void *w, int cols, const void *xp, int n, float *y, int ldy,
              int r0, int r1) {
    if (n <= 0 || r1 <= r0 || cols <= 0 || wtype < 0 || wtype >= KVP_TYPE_TABLE_SIZE) return;
    const kvp_ktable *kt = kvp_ktable_active();
    if (kt->gemm[wtype] && kvp_type_row_bytes(wtype, cols) != 0)
        kt->gemm[wtype](w, cols, xp, n, y, ldy, r0, r1);
}

float kvp_dot_f32(const float *a, const float *b, int n) {
    return kvp_ktable_active()->dot_f32(a, b, n);
}

float kvp_dot_f16(const uint16_t *a, const float *b, int n) {
    return kvp_ktable_active()->dot_f16(a, b, n);
}

void kvp_axpy_f32(float *y, float a, const float *x, int n) {
    kvp_ktable_active()->axpy_f32(y, a, x, n);
}

void kvp_axpy_f16(float *y, float a, const uint16_t *x, int n) {
    kvp_ktable_active()->axpy_f16(y, a, x, n);
}

void kvp_attn_scores_f32(const float *K, int n, int hd, const float *Q, int nq, int ldq,
                         float scale, float *S, int lds) {
    if (n > 0 && nq > 0) kvp_ktable_active()->attn_scores_f32(K, n, hd, Q, nq, ldq, scale, S, lds);
}

void kvp_attn_scores_f16(const uint16_t *K, int n, int hd, const float *Q, int nq, int ldq,
                         float scale, float *S, int lds) {
    if (n > 0 && nq > 0) kvp_ktable_active()->attn_scores_f16(K, n, hd, Q, nq, ldq, scale, S, lds);
}

void kvp_attn_values_f32(float *Y, int ldy, int ny, const float *P, int ldp, const float *V,
                         int n, int hd) {
    if (n > 0 && ny > 0 && hd > 0) kvp_ktable_active()->attn_values_f32(Y, ldy, ny, P, ldp, V, n, hd);
}

void kvp_attn_values_f16(float *Y, int ldy, int ny, const float *P, int ldp,
                         const uint16_t *V, int n, int hd) {
    if (n > 0 && ny > 0 && hd > 0) kvp_ktable_active()->attn_values_f16(Y, ldy, ny, P, ldp, V, n, hd);
}

void kvp_attn_scores_i8(const int8_t *K, int n, int hd, const float *Q, int nq, int ldq,
                        float scale, float *S, int lds) {
    if (n > 0 && nq > 0) kvp_ktable_active()->attn_scores_i8(K, n, hd, Q, nq, ldq, scale, S, lds);
}

void kvp_attn_values_i8(float *Y, int ldy, int ny, const float *P, int ldp, const int8_t *V,
                        int n, int hd) {
    if (n > 0 && ny > 0 && hd > 0) kvp_ktable_active()->attn_values_i8(Y, ldy, ny, P, ldp, V, n, hd);
}

void kvp_f32_to_f16_row(const float *x, uint16_t *y, int n) {
    if (n > 0) kvp_ktable_active()->f32_to_f16_row(x, y, n);
}

void kvp_f16_to_f32_row(const uint16_t *x, float *y, int n) {
    if (n > 0) kvp_ktable_active()->f16_to_f32_row(x, y, n);
}
