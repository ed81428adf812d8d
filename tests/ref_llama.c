/*
 * ref_llama.c: the naive double-precision reference (see ref_llama.h). Written for clarity,
 * not speed: every loop is the textbook formula.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ref_llama.h"

struct kvt_ref {
    int dim, hidden, layers, heads, kv_heads, vocab, seq, hd, max_pos, pos;
    float *w; /* the whole file after the header */
    const float *emb, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final, *wcls;
    double *kc, *vc; /* (layers, max_pos, kv_dim) */
};

static int kvt_ref_read(kvt_ref *r, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    int32_t h[7];
    if (fread(h, 4, 7, f) != 7) { fclose(f); return -1; }
    r->dim = h[0]; r->hidden = h[1]; r->layers = h[2]; r->heads = h[3]; r->kv_heads = h[4];
    r->vocab = abs(h[5]); r->seq = h[6]; r->hd = r->dim / r->heads;
    fseek(f, 0, SEEK_END);
    long size = ftell(f) - 28;
    fseek(f, 28, SEEK_SET);
    r->w = malloc((size_t)size);
    int ok = r->w && fread(r->w, 1, (size_t)size, f) == (size_t)size;
    fclose(f);
    const float *p = r->w;
    size_t d = (size_t)r->dim, L = (size_t)r->layers, kvd = (size_t)r->kv_heads * r->hd, hid = (size_t)r->hidden;
    r->emb = p; p += (size_t)r->vocab * d;
    r->rms_att = p; p += L * d;
    r->wq = p; p += L * d * d;
    r->wk = p; p += L * d * kvd;
    r->wv = p; p += L * d * kvd;
    r->wo = p; p += L * d * d;
    r->rms_ffn = p; p += L * d;
    r->w1 = p; p += L * hid * d;
    r->w2 = p; p += L * d * hid;
    r->w3 = p; p += L * hid * d;
    r->rms_final = p; p += d;
    p += (size_t)r->seq * r->hd; /* freq_cis_real and freq_cis_imag */
    r->wcls = h[5] > 0 ? r->emb : p;
    return ok ? 0 : -1;
}

kvt_ref *kvt_ref_load(const char *path, int max_pos) {
    kvt_ref *r = calloc(1, sizeof *r);
    if (!r || kvt_ref_read(r, path) != 0) { kvt_ref_free(r); return NULL; }
    r->max_pos = max_pos;
    size_t n = (size_t)r->layers * (size_t)max_pos * (size_t)(r->kv_heads * r->hd);
    r->kc = calloc(n, sizeof(double));
    r->vc = calloc(n, sizeof(double));
    if (!r->kc || !r->vc) { kvt_ref_free(r); return NULL; }
    return r;
}

void kvt_ref_free(kvt_ref *r) {
    if (!r) return;
    free(r->w); free(r->kc); free(r->vc); free(r);
}

int kvt_ref_vocab(const kvt_ref *r) { return r->vocab; }

/* out (rows) = W (rows, cols) x (cols) */
static void kvt_matvec(double *out, const float *W, const double *x, int rows, int cols) {
    for (int i = 0; i < rows; i++) {
        double s = 0;
        for (int j = 0; j < cols; j++) s += (double)W[(size_t)i * cols + j] * x[j];
        out[i] = s;
    }
}

static void kvt_rmsnorm(double *out, const double *x, const float *w, int n) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double s = 1.0 / sqrt(ss / n + 1e-5);
    for (int i = 0; i < n; i++) out[i] = x[i] * s * w[i];
}

/* Rotates adjacent pairs of each head by pos * theta^(-2i/hd). */
static void kvt_rope(double *v, int n_heads, int hd, int pos) {
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < hd; i += 2) {
            double ang = pos * pow(10000.0, -(double)i / hd), c = cos(ang), s = sin(ang);
            double *x = v + h * hd + i, a = x[0], b = x[1];
            x[0] = a * c - b * s;
            x[1] = a * s + b * c;
        }
}

static void kvt_attention(kvt_ref *r, int l, const double *q, double *out) {
    int kvd = r->kv_heads * r->hd, group = r->heads / r->kv_heads;
    double *att = malloc(sizeof(double) * (size_t)(r->pos + 1));
    for (int h = 0; h < r->heads; h++) {
        int kh = h / group;
        double mx = -INFINITY, sum = 0;
        for (int t = 0; t <= r->pos; t++) {
            const double *k = r->kc + ((size_t)l * r->max_pos + t) * kvd + kh * r->hd;
            double s = 0;
            for (int i = 0; i < r->hd; i++) s += q[h * r->hd + i] * k[i];
            att[t] = s / sqrt((double)r->hd);
            if (att[t] > mx) mx = att[t];
        }
        for (int t = 0; t <= r->pos; t++) sum += (att[t] = exp(att[t] - mx));
        for (int i = 0; i < r->hd; i++) {
            double acc = 0;
            for (int t = 0; t <= r->pos; t++)
                acc += att[t] / sum * r->vc[((size_t)l * r->max_pos + t) * kvd + kh * r->hd + i];
            out[h * r->hd + i] = acc;
        }
    }
    free(att);
}

static void kvt_layer(kvt_ref *r, int l, double *x, double *xb, double *q, double *tmp, double *h1, double *h3) {
    size_t d = (size_t)r->dim, kvd = (size_t)r->kv_heads * r->hd, hid = (size_t)r->hidden;
    double *kc = r->kc + ((size_t)l * r->max_pos + r->pos) * kvd, *vc = r->vc + ((size_t)l * r->max_pos + r->pos) * kvd;
    kvt_rmsnorm(xb, x, r->rms_att + l * d, r->dim);
    kvt_matvec(q, r->wq + l * d * d, xb, r->dim, r->dim);
    kvt_matvec(kc, r->wk + l * d * kvd, xb, (int)kvd, r->dim);
    kvt_matvec(vc, r->wv + l * d * kvd, xb, (int)kvd, r->dim);
    kvt_rope(q, r->heads, r->hd, r->pos);
    kvt_rope(kc, r->kv_heads, r->hd, r->pos);
    kvt_attention(r, l, q, tmp);
    kvt_matvec(xb, r->wo + l * d * d, tmp, r->dim, r->dim);
    for (size_t i = 0; i < d; i++) x[i] += xb[i];
    kvt_rmsnorm(xb, x, r->rms_ffn + l * d, r->dim);
    kvt_matvec(h1, r->w1 + l * hid * d, xb, r->hidden, r->dim);
    kvt_matvec(h3, r->w3 + l * hid * d, xb, r->hidden, r->dim);
    for (size_t i = 0; i < hid; i++) h1[i] = h1[i] / (1 + exp(-h1[i])) * h3[i];
    kvt_matvec(xb, r->w2 + l * d * hid, h1, r->dim, r->hidden);
    for (size_t i = 0; i < d; i++) x[i] += xb[i];
}

void kvt_ref_step(kvt_ref *r, int token, double *logits) {
    size_t d = (size_t)r->dim, big = d > (size_t)r->hidden ? d : (size_t)r->hidden;
    double *x = malloc(sizeof(double) * d), *xb = malloc(sizeof(double) * big), *q = malloc(sizeof(double) * d);
    double *tmp = malloc(sizeof(double) * d), *h1 = malloc(sizeof(double) * big), *h3 = malloc(sizeof(double) * big);
    for (size_t i = 0; i < d; i++) x[i] = r->emb[(size_t)token * d + i];
    for (int l = 0; l < r->layers; l++) kvt_layer(r, l, x, xb, q, tmp, h1, h3);
    kvt_rmsnorm(xb, x, r->rms_final, r->dim);
    kvt_matvec(logits, r->wcls, xb, r->vocab, r->dim);
    r->pos++;
    free(x); free(xb); free(q); free(tmp); free(h1); free(h3);
}
