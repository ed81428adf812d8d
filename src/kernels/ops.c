/*
 * ops.c: the element-wise and row operations of a layer: RMS normalization, softmax,
 * SwiGLU and rotary embedding.
 *
 * Plain C, compiled for the baseline instruction set. The hot loops work on fixed-size
 * chunks of KVP_OPS_LANES independent lanes, which compilers vectorize at -O2 (gcc's
 * "very cheap" cost model only vectorizes loops whose trip count is a known multiple of
 * the vector width). Results follow llama.cpp's formulas (ggml's CPU ops) so that kvpack's
 * logits match llama.cpp's within rounding.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "kernels/kernels_internal.h"

#define KVP_OPS_LANES 16

/* Four floats in a GCC/Clang vector: the compilers lower it to the baseline SIMD (SSE2 on
 * x86-64, NEON on arm64). Used where gcc -O2 would not vectorize plain loops (the exp). */
typedef float kvp_v4f __attribute__((vector_size(16)));
typedef int32_t kvp_v4i __attribute__((vector_size(16)));

static inline kvp_v4f kvp_v4_splat(float a) { return (kvp_v4f){a, a, a, a}; }
static inline kvp_v4f kvp_v4_load(const float *p) {
    kvp_v4f v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void kvp_v4_store(float *p, kvp_v4f v) { memcpy(p, &v, sizeof v); }
/* Lane-wise m ? a : b for a mask m of all-ones or all-zeros lanes. */
static inline kvp_v4f kvp_v4_sel(kvp_v4i m, kvp_v4f a, kvp_v4f b) {
    return (kvp_v4f)(((kvp_v4i)a & m) | ((kvp_v4i)b & ~m));
}

/* e^(x + xlo) lane-wise, xlo a tiny correction of x (the rounding error of a difference),
 * for x in about [-87, 88], to within 1.1e-7 relative (measured in steps of 1e-5; the tests
 * check 1e-6); below -87 (and for NaN) the result is 0, above 88 it is e^88.
 * Method: x = n ln2 + r with |r| <= ln2/2 (Cody-Waite: ln2 in two parts, the first
 * with few enough bits that n * hi is exact for |n| < 128), e^r by its Taylor polynomial of
 * degree 7 (truncation error < 6e-9), and 2^n built in the exponent field. */
static inline kvp_v4f kvp_v4_exp2(kvp_v4f x, kvp_v4f xlo) {
    const kvp_v4f hi = kvp_v4_splat(88.0f), lo = kvp_v4_splat(-87.0f);
    kvp_v4f xc = kvp_v4_sel(x > hi, hi, x);
    xc = kvp_v4_sel(xc < lo, lo, xc);
    const kvp_v4f magic = kvp_v4_splat(12582912.0f); /* 1.5 * 2^23: adding it rounds */
    const kvp_v4f z = xc * kvp_v4_splat(1.44269504088896341f) + magic;
    const kvp_v4f n = z - magic;
    kvp_v4f r = xc - n * kvp_v4_splat(0.693145751953125f); /* ln2 hi: 0x1.62e4p-1 */
    r = (r + xlo) - n * kvp_v4_splat(1.428606765330187e-06f); /* ln2 lo */
    kvp_v4f p = kvp_v4_splat(1.0f / 5040.0f);
    p = p * r + kvp_v4_splat(1.0f / 720.0f);
    p = p * r + kvp_v4_splat(1.0f / 120.0f);
    p = p * r + kvp_v4_splat(1.0f / 24.0f);
    p = p * r + kvp_v4_splat(1.0f / 6.0f);
    p = p * r + kvp_v4_splat(0.5f);
    p = p * r + kvp_v4_splat(1.0f);
    p = p * r + kvp_v4_splat(1.0f);
    /* The low bits of z hold n; n + 127 lies in [1, 254]. */
    const kvp_v4i e = ((kvp_v4i)z - 0x4B400000 + 127) << 23;
    const kvp_v4f y = p * (kvp_v4f)e;
    return (kvp_v4f)((kvp_v4i)y & (x >= lo));
}

static inline kvp_v4f kvp_v4_exp(kvp_v4f x) { return kvp_v4_exp2(x, kvp_v4_splat(0.0f)); }

/* e^(a - m) with a - m evaluated exactly: the float difference plus its rounding error
 * (Knuth's TwoSum), so that wide score ranges keep full accuracy. */
static inline kvp_v4f kvp_v4_exp_diff(kvp_v4f a, kvp_v4f m) {
    const kvp_v4f b = -m, s = a + b, bb = s - a;
    const kvp_v4f err = (a - (s - bb)) + (b - bb);
    return kvp_v4_exp2(s, err);
}

/* ---- RMS normalization ---- */

/* out[i] = (x[i] * scale) * w[i] with scale = 1 / sqrtf(mean(x^2) + eps), the mean summed
 * in double from float squares as llama.cpp's ggml_compute_forward_rms_norm does. */
void kvp_rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    float lane[KVP_OPS_LANES] = {0};
    int i = 0;
    for (; i + KVP_OPS_LANES <= n; i += KVP_OPS_LANES)
        for (int l = 0; l < KVP_OPS_LANES; l++) lane[l] += x[i + l] * x[i + l];
    double sum = 0;
    for (; i < n; i++) sum += (double)(x[i] * x[i]);
    for (int l = 0; l < KVP_OPS_LANES; l++) sum += lane[l];
    const float scale = 1.0f / sqrtf((float)(sum / n) + eps);
    for (i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
}

void kvp_rmsnorm_ref(float *out, const float *x, const float *w, int n, float eps) {
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (double)x[i] * x[i];
    const double scale = 1.0 / sqrt(sum / n + eps);
    for (int i = 0; i < n; i++) out[i] = (float)(x[i] * scale * w[i]);
}

/* ---- softmax ---- */

/* x[i] = e^(x[i] - max) / sum_j e^(x[j] - max). A row whose maximum is -inf (everything
 * masked) becomes all zeros. The AVX2 and AVX-512 tables have their own copy of this code
 * (wider vectors, same algorithm), chosen by kvp_softmax(). */
void kvp_softmax(float *x, int n) { kvp_ktable_active()->softmax(x, n); }

void kvp_softmax_c(float *x, int n) {
    if (n <= 0) return;
    float mlane[KVP_OPS_LANES];
    for (int l = 0; l < KVP_OPS_LANES; l++) mlane[l] = -INFINITY;
    int i = 0;
    for (; i + KVP_OPS_LANES <= n; i += KVP_OPS_LANES)
        for (int l = 0; l < KVP_OPS_LANES; l++)
            mlane[l] = x[i + l] > mlane[l] ? x[i + l] : mlane[l];
    float max = -INFINITY;
    for (; i < n; i++) max = x[i] > max ? x[i] : max;
    for (int l = 0; l < KVP_OPS_LANES; l++) max = mlane[l] > max ? mlane[l] : max;
    if (max == -INFINITY) {
        memset(x, 0, (size_t)n * sizeof *x);
        return;
    }

    const kvp_v4f vmax = kvp_v4_splat(max);
    kvp_v4f s0 = kvp_v4_splat(0.0f), s1 = s0;
    for (i = 0; i + 8 <= n; i += 8) {
        const kvp_v4f e0 = kvp_v4_exp_diff(kvp_v4_load(x + i), vmax);
        const kvp_v4f e1 = kvp_v4_exp_diff(kvp_v4_load(x + i + 4), vmax);
        kvp_v4_store(x + i, e0);
        kvp_v4_store(x + i + 4, e1);
        s0 += e0;
        s1 += e1;
    }
    for (; i < n; i += 4) { /* the tail, padded with -inf (whose exp is 0) */
        const int m = KVP_MIN(4, n - i);
        float buf[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
        memcpy(buf, x + i, (size_t)m * sizeof *x);
        const kvp_v4f e = kvp_v4_exp_diff(kvp_v4_load(buf), vmax);
        kvp_v4_store(buf, e);
        memcpy(x + i, buf, (size_t)m * sizeof *x);
        s0 += e;
    }
    s0 += s1;
    const double sum = (double)s0[0] + s0[1] + s0[2] + s0[3];
    const float inv = (float)(1.0 / sum);
    for (i = 0; i < n; i++) x[i] *= inv;
}

/* ---- SwiGLU ---- */

/* h = silu(g) * u with silu(g) = g / (1 + e^-g) (llama.cpp's ggml_silu_f32). */
void kvp_swiglu(float *h, const float *g, const float *u, int n) {
    const kvp_v4f one = kvp_v4_splat(1.0f);
    int i = 0;
    for (; i + 4 <= n; i += 4) {
        const kvp_v4f gv = kvp_v4_load(g + i);
        kvp_v4_store(h + i, gv / (one + kvp_v4_exp(-gv)) * kvp_v4_load(u + i));
    }
    if (i < n) { /* the tail, padded with zeros */
        const int m = n - i;
        float gb[4] = {0}, ub[4] = {0};
        memcpy(gb, g + i, (size_t)m * sizeof *g);
        memcpy(ub, u + i, (size_t)m * sizeof *u);
        const kvp_v4f gv = kvp_v4_load(gb);
        kvp_v4_store(gb, gv / (one + kvp_v4_exp(-gv)) * kvp_v4_load(ub));
        memcpy(h + i, gb, (size_t)m * sizeof *h);
    }
}

void kvp_swiglu_ref(float *h, const float *g, const float *u, int n) {
    for (int i = 0; i < n; i++) h[i] = (float)((double)g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
}

/* ---- rotary embedding ---- */

#define KVP_ROPE_CHUNK 64 /* rotation pairs whose cos/sin are computed at a time */

/* As llama.cpp (ggml_rope_cache_init): the angle of pair i is pos * theta_scale^i with
 * theta_scale = powf(theta, -2 / head_dim), the power built by repeated multiplication in
 * float, divided by freq_factors[i] when given. NORM rotates (x[2i], x[2i+1]); NEOX rotates
 * (x[i], x[i + head_dim/2]). An odd head_dim leaves the last value of a head unchanged. */
void kvp_rope(float *x, int n_heads, int head_dim, int pos, float theta, int style,
              const float *freq_factors) {
    const int npairs = head_dim / 2;
    const float theta_scale = powf(theta, -2.0f / (float)head_dim);
    float angle = (float)pos;
    float cs[KVP_ROPE_CHUNK], sn[KVP_ROPE_CHUNK];
    for (int p0 = 0; p0 < npairs; p0 += KVP_ROPE_CHUNK) {
        const int m = KVP_MIN(KVP_ROPE_CHUNK, npairs - p0);
        for (int k = 0; k < m; k++) {
            const float a = freq_factors ? angle / freq_factors[p0 + k] : angle;
            cs[k] = cosf(a);
            sn[k] = sinf(a);
            angle *= theta_scale;
        }
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)h * head_dim;
            if (style == KVP_ROPE_NEOX) {
                float *lo = v + p0, *hi = v + npairs + p0;
                for (int k = 0; k < m; k++) {
                    const float x0 = lo[k], x1 = hi[k];
                    lo[k] = x0 * cs[k] - x1 * sn[k];
                    hi[k] = x0 * sn[k] + x1 * cs[k];
                }
            } else {
                float *pr = v + 2 * p0;
                for (int k = 0; k < m; k++) {
                    const float x0 = pr[2 * k], x1 = pr[2 * k + 1];
                    pr[2 * k] = x0 * cs[k] - x1 * sn[k];
                    pr[2 * k + 1] = x0 * sn[k] + x1 * cs[k];
                }
            }
        }
    }
}
