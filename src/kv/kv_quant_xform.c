/*
 * kv_quant_xform.c: outlier control of keys (see quant.h): the randomized Hadamard
 * rotation and MiKV's per-channel balancer, applied per layer and KV head.
 */
#include <math.h>
#include <stdlib.h>

#include "common/common.h"
#include "kv/quant.h"

int kvp_kx_mode(const char *name) {
    if (!strcmp(name, "none")) return KVP_KX_NONE;
    if (!strcmp(name, "rot")) return KVP_KX_ROT;
    if (!strcmp(name, "bal")) return KVP_KX_BAL;
    return -1;
}

const char *kvp_kx_name(int mode) { return mode == KVP_KX_ROT ? "rot" : mode == KVP_KX_BAL ? "bal" : "none"; }

static size_t kvp_kx_count(const kvp_kxform *x) {
    return (size_t)x->n_layers * (size_t)x->n_kv_heads * (size_t)x->head_dim;
}

/* Random signs from a fixed seed (splitmix64), the same for every run. */
static void kvp_kx_signs(kvp_kxform *x) {
    uint64_t st = 0x6b7670616b2d726fULL;
    for (size_t i = 0; i < kvp_kx_count(x); i++) {
        uint64_t z = (st += 0x9E3779B97F4A7C15ULL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
        x->sign[i] = ((z ^ (z >> 31)) & 1) ? -1.0f : 1.0f;
    }
}

int kvp_kx_init(kvp_kxform *x, int mode, const kvp_kv_shape *s) {
    memset(x, 0, sizeof *x);
    x->mode = mode;
    x->n_layers = s->n_layers;
    x->n_kv_heads = s->n_kv_heads;
    x->n_heads = s->n_heads;
    x->head_dim = s->head_dim;
    size_t n = kvp_kx_count(x);
    if (mode == KVP_KX_ROT) {
        if (!(x->sign = malloc(sizeof(float) * n))) return kvp_seterr(KVP_ENOMEM, "out of memory (key rotation)");
        kvp_kx_signs(x);
    } else if (mode == KVP_KX_BAL) {
        x->bal = malloc(sizeof(float) * n);
        x->kmax = calloc(n, sizeof(float));
        x->qmax = calloc(n, sizeof(float));
        x->frozen = calloc((size_t)s->n_layers, 1);
        if (!x->bal || !x->kmax || !x->qmax || !x->frozen) return kvp_seterr(KVP_ENOMEM, "out of memory (key balancer)");
        for (size_t i = 0; i < n; i++) x->bal[i] = 1.0f;
    }
    return KVP_OK;
}

void kvp_kx_free(kvp_kxform *x) {
    free(x->sign);
    free(x->bal);
    free(x->kmax);
    free(x->qmax);
    free(x->frozen);
    memset(x, 0, sizeof *x);
}

size_t kvp_kx_bytes(const kvp_kxform *x) {
    if (x->mode == KVP_KX_ROT) return kvp_kx_count(x) / 8; /* one sign bit per channel */
    if (x->mode == KVP_KX_BAL) return kvp_kx_count(x) * sizeof(float);
    return 0;
}

void kvp_kx_observe(kvp_kxform *x, int layer, int n, const float *k, const float *q) {
    if (x->mode != KVP_KX_BAL || x->frozen[layer]) return;
    int hd = x->head_dim, kvd = x->n_kv_heads * hd, group = x->n_heads / x->n_kv_heads;
    float *km = x->kmax + (size_t)layer * kvd, *qm = x->qmax + (size_t)layer * kvd;
    for (int i = 0; i < n && k; i++)
        for (int c = 0; c < kvd; c++) km[c] = fmaxf(km[c], fabsf(k[(size_t)i * kvd + c]));
    for (int i = 0; i < n && q; i++)
        for (int qh = 0; qh < x->n_heads; qh++)
            for (int c = 0; c < hd; c++) {
                float *m = &qm[(qh / group) * hd + c];
                *m = fmaxf(*m, fabsf(q[(size_t)i * x->n_heads * hd + (size_t)qh * hd + c]));
            }
}

void kvp_kx_freeze(kvp_kxform *x, int layer) {
    if (x->mode != KVP_KX_BAL || x->frozen[layer]) return;
    size_t kvd = (size_t)x->n_kv_heads * x->head_dim, o = (size_t)layer * kvd;
    for (size_t c = 0; c < kvd; c++) {
        float km = x->kmax[o + c], qm = x->qmax[o + c];
        float b = km > 0 && qm > 0 ? sqrtf(km / qm) : 1.0f;
        x->bal[o + c] = fminf(fmaxf(b, 1e-4f), 1e4f);
    }
    x->frozen[layer] = 1;
}

/* The normalized Walsh-Hadamard transform on consecutive power-of-two blocks of v (its own
 * inverse): 64 is one block, 33 is 32 + 1, 7 is 4 + 2 + 1. */
static void kvp_kx_hadamard(float *v, int n) {
    while (n > 0) {
        int b = 1;
        while (2 * b <= n) b *= 2;
        for (int len = 1; len < b; len *= 2)
            for (int i = 0; i < b; i += 2 * len)
                for (int j = i; j < i + len; j++) {
                    float a = v[j], c = v[j + len];
                    v[j] = a + c;
                    v[j + len] = a - c;
                }
        float norm = 1.0f / sqrtf((float)b);
        for (int j = 0; j < b; j++) v[j] *= norm;
        v += b;
        n -= b;
    }
}

void kvp_kx_apply(const kvp_kxform *x, int layer, int kv_head, float *v, int query) {
    size_t o = ((size_t)layer * x->n_kv_heads + (size_t)kv_head) * x->head_dim;
    if (x->mode == KVP_KX_ROT) {
        for (int c = 0; c < x->head_dim; c++) v[c] *= x->sign[o + c];
        kvp_kx_hadamard(v, x->head_dim);
    } else if (x->mode == KVP_KX_BAL) {
        for (int c = 0; c < x->head_dim; c++) v[c] = query ? v[c] * x->bal[o + c] : v[c] / x->bal[o + c];
    }
}

void kvp_kx_key_back(const kvp_kxform *x, int layer, int kv_head, float *v) {
    size_t o = ((size_t)layer * x->n_kv_heads + (size_t)kv_head) * x->head_dim;
    if (x->mode == KVP_KX_ROT) {
        kvp_kx_hadamard(v, x->head_dim);
        for (int c = 0; c < x->head_dim; c++) v[c] *= x->sign[o + c];
    } else if (x->mode == KVP_KX_BAL) {
        for (int c = 0; c < x->head_dim; c++) v[c] *= x->bal[o + c];
    }
}
