/*
 * transform.c: keys with their rotary embedding undone (docs/codec.md, "Keys before the
 * rotary embedding"; docs/FORMAT.md, "Chunk").
 *
 * The cache holds keys after the rotary embedding: pair k of a head at position p is rotated
 * by the angle p w_k, w_k = theta^(-2k / head_dim). A channel's pre-rotation mean becomes a
 * sinusoid of the position after it, which neither prediction mode follows; rotating the
 * pairs back makes each channel's values stationary again. The rotation is orthogonal, so a
 * rounding error of e per channel stays an error of norm |e| per pair after the decoder
 * rotates forward.
 */
#include <math.h>

#include "codec.h"

#define KVP_ROTARY_ANCHOR 32 /* exact sine and cosine every this many tokens, angle addition between */

void kvp_rotary_table(int pos, int n, int head_dim, double theta, float *cs, float *sn) {
    int np = head_dim / 2;
    for (int k = 0; k < np; k++) {
        double w = pow(theta, -2.0 * k / head_dim), cw = cos(w), sw = sin(w), c = 0, s = 0;
        for (int t = 0; t < n; t++) {
            if (t % KVP_ROTARY_ANCHOR == 0) {
                c = cos((double)(pos + t) * w);
                s = sin((double)(pos + t) * w);
            }
            cs[(size_t)t * np + k] = (float)c;
            sn[(size_t)t * np + k] = (float)s;
            double c2 = c * cw - s * sw;
            s = s * cw + c * sw;
            c = c2;
        }
    }
}

/* Rotates the pairs (v[a k], v[a k + b]) of one head by the angles (c[k], sg s[k]): a = 2,
 * b = 1 for interleaved pairs, a = 1, b = np for split halves. */
static inline void kvp_rotary_head(float *v, int np, int a, int b, const float *c, const float *s, float sg) {
    for (int k = 0; k < np; k++) {
        float x0 = v[a * k], x1 = v[a * k + b], sk = sg * s[k];
        v[a * k] = x0 * c[k] - x1 * sk;
        v[a * k + b] = x0 * sk + x1 * c[k];
    }
}

void kvp_rotary_apply(float *x, int n, int n_kv_heads, int head_dim, int style, const float *cs, const float *sn,
                      int dir) {
    int np = head_dim / 2, d = n_kv_heads * head_dim, neox = style == KVP_ROPE_NEOX;
    float sg = dir < 0 ? -1.0f : 1.0f;
    for (int t = 0; t < n; t++) {
        const float *c = cs + (size_t)t * np, *s = sn + (size_t)t * np;
        for (int h = 0; h < n_kv_heads; h++) {
            float *v = x + (size_t)t * d + (size_t)h * head_dim;
            if (neox)
                kvp_rotary_head(v, np, 1, np, c, s, sg);
            else
                kvp_rotary_head(v, np, 2, 1, c, s, sg);
        }
    }
}
