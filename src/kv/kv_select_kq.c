/*
 * kv_select_kq.c: KQ rows (select.h): the KIVI bit widths and groupings in tiles of
 * KVP_KQ_T lanes, attended with the packed-tile kernels (the kvp_kvq_table calls the KIVI
 * cache makes; nothing is dequantized to attend a run of an eviction store).
 *
 * Tile memory (fmt offsets): the key tile (KVP_KQ_T tokens x hd channels), the key
 * parameters (8-bit scale and minimum codes per channel and their F16 super triple, as KIVI
 * stores a block's), the value tile, and per lane and group of 32 channels the value's F16
 * scale and minimum. Keys are quantized per channel over the rows a tile is made from, as
 * KIVI does (outlier channels cost nothing); values per token. A lane can die (its row
 * evicted) without touching the others: the kernels still compute it and its score is
 * dropped, its weight is zero. Two tiles whose live lanes fit in one are merged
 * (kvp_kq_tile_merge): values move code for code, keys are re-quantized once over the
 * merged rows.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "kernels/kvq.h"
#include "kv/quant.h"
#include "kv/select.h"

static size_t kvp_kq_align(size_t x) { return (x + 63) & ~(size_t)63; }

void kvp_kq_fmt_init(kvp_kq_fmt *f, int kbits, int vbits, int hd) {
    f->kbits = kbits;
    f->vbits = vbits;
    f->hd = hd;
    f->gph = (hd + 31) / 32;
    f->ktile = kvp_qt_ktile_bytes(KVP_KQ_T, hd, kbits);
    f->kpar = 2 * (size_t)hd + KVP_QSUPER_BYTES;
    f->vtile = kvp_qt_vtile_bytes(KVP_KQ_T, hd, vbits);
    f->vpar = sizeof(uint16_t) * 2 * (size_t)f->gph * KVP_KQ_T;
    f->off_kp = f->ktile;
    f->off_vt = kvp_kq_align(f->off_kp + f->kpar);
    f->off_vp = f->off_vt + f->vtile;
    f->bytes = kvp_kq_align(f->off_vp + f->vpar);
}

int kvp_kq_spec_parse(const char *spec, int *kbits, int *vbits, int *recent) {
    int used = 0, n2 = 0, ok = sscanf(spec, "k%dv%d%n", kbits, vbits, &used) == 2;
    for (int i = 0; ok && i < 2; i++) {
        int b = i ? *vbits : *kbits;
        ok = b == 2 || b == 3 || b == 4 || b == 8;
    }
    *recent = 128;
    if (ok && spec[used])
        ok = sscanf(spec + used, ":r%d%n", recent, &n2) == 1 && *recent >= 0 && *recent <= (1 << 20) && !spec[used + n2];
    if (ok) return KVP_OK;
    return kvp_seterr(KVP_EINVAL, "selection on quantized storage takes kXvY[:rR] (X, Y in 2, 3, 4, 8; R recent "
                                  "tokens in F16, default 128), not '%s'", spec);
}

/* ---- making and reading tiles ---- */

/* The F16 scale and minimum of lane t's value, group g. */
static uint16_t *kvp_kq_vp(const kvp_kq_fmt *f, const kvp_kq_tile *t, int lane, int g) {
    return (uint16_t *)(void *)(t->mem + f->off_vp) + ((size_t)lane * f->gph + (size_t)g) * 2;
}

/* Quantizes keys k (n, hd) per channel into the tile's key part (lanes >= n get code 0). */
static void kvp_kq_keys(const kvp_kq_fmt *f, kvp_kq_tile *t, const float *k, int n) {
    int hd = f->hd, qmax = (1 << f->kbits) - 1;
    float lo[KVP_QHD_MAX] = {0}, hi[KVP_QHD_MAX] = {0}, s[KVP_QHD_MAX], m[KVP_QHD_MAX];
    uint8_t codes[KVP_QHD_MAX * KVP_KQ_T] = {0}, *par = t->mem + f->off_kp;
    for (int c = 0; c < hd; c++) {
        lo[c] = hi[c] = k[c];
        for (int i = 1; i < n; i++) {
            lo[c] = fminf(lo[c], k[(size_t)i * hd + c]);
            hi[c] = fmaxf(hi[c], k[(size_t)i * hd + c]);
        }
    }
    kvp_qp_block_put(par, lo, hi, hd, qmax, s, m);
    for (int c = 0; c < hd; c++)
        for (int i = 0; i < n; i++) codes[(size_t)c * KVP_KQ_T + i] = kvp_qp_code(k[(size_t)i * hd + c], s[c], m[c], qmax);
    kvp_qt_pack_k(codes, hd, KVP_KQ_T, f->kbits, t->mem);
}

/* Quantizes one value row x (hd) into lane `lane` with its per-group parameters. */
static void kvp_kq_value(const kvp_kq_fmt *f, kvp_kq_tile *t, int lane, const float *x) {
    uint8_t codes[KVP_QHD_MAX];
    int qmax = (1 << f->vbits) - 1;
    for (int g = 0; g < f->gph; g++) {
        int c0 = 32 * g, c1 = KVP_MIN(f->hd, c0 + 32);
        uint16_t *p = kvp_kq_vp(f, t, lane, g);
        kvp_qp_token_f16(x + c0, c1 - c0, qmax, &p[0], &p[1]);
        float s = kvp_f16_to_f32(p[0]), m = kvp_f16_to_f32(p[1]);
        for (int c = c0; c < c1; c++) codes[c] = kvp_qt_vstore(kvp_qp_code(x[c], s, m, qmax), f->vbits);
    }
    kvp_qt_set_v(t->mem + f->off_vt, f->hd, f->vbits, lane, codes);
}

void kvp_kq_tile_make(const kvp_kq_fmt *f, kvp_kq_tile *t, const float *k, const float *v, int n) {
    memset(t->mem, 0, f->bytes);
    kvp_kq_keys(f, t, k, n);
    for (int i = 0; i < n; i++) kvp_kq_value(f, t, i, v + (size_t)i * f->hd);
    t->live = n >= 32 ? 0xffffffffu : (1u << n) - 1;
}

/* Lane `lane`'s key as floats. */
static void kvp_kq_key_read(const kvp_kq_fmt *f, const kvp_kq_tile *t, int lane, float *k) {
    uint8_t codes[KVP_QHD_MAX];
    float s[KVP_QHD_MAX], m[KVP_QHD_MAX];
    const uint8_t *par = t->mem + f->off_kp;
    kvp_qp_block_get(par, f->hd, s, m);
    kvp_qt_get_k(t->mem, f->hd, KVP_KQ_T, f->kbits, lane, codes);
    for (int c = 0; c < f->hd; c++) k[c] = m[c] + s[c] * (float)codes[c];
}

void kvp_kq_tile_read(const kvp_kq_fmt *f, const kvp_kq_tile *t, int lane, float *k, float *v) {
    uint8_t codes[KVP_QHD_MAX];
    if (k) kvp_kq_key_read(f, t, lane, k);
    if (!v) return;
    kvp_qt_get_v(t->mem + f->off_vt, f->hd, f->vbits, lane, codes);
    for (int c = 0; c < f->hd; c++) {
        const uint16_t *p = kvp_kq_vp(f, t, lane, c / 32);
        v[c] = kvp_f16_to_f32(p[1]) + kvp_f16_to_f32(p[0]) * (float)kvp_qt_vload(codes[c], f->vbits);
    }
}

/* Moves lane i's value (codes and parameters) of tile a to lane o of tile b. */
static void kvp_kq_value_move(const kvp_kq_fmt *f, const kvp_kq_tile *a, int i, kvp_kq_tile *b, int o) {
    uint8_t codes[KVP_QHD_MAX];
    kvp_qt_get_v(a->mem + f->off_vt, f->hd, f->vbits, i, codes);
    kvp_qt_set_v(b->mem + f->off_vt, f->hd, f->vbits, o, codes);
    memmove(kvp_kq_vp(f, b, o, 0), kvp_kq_vp(f, a, i, 0), sizeof(uint16_t) * 2 * (size_t)f->gph);
}

void kvp_kq_tile_merge(const kvp_kq_fmt *f, kvp_kq_tile *a, kvp_kq_tile *b) {
    float k[KVP_KQ_T * KVP_QHD_MAX];
    int n = 0;
    for (int pass = 0; pass < 2; pass++) { /* a's live lanes, then b's, in order */
        kvp_kq_tile *src = pass ? b : a;
        for (int i = 0; i < KVP_KQ_T; i++) {
            if (!(src->live >> i & 1)) continue;
            kvp_kq_key_read(f, src, i, k + (size_t)n * f->hd);
            kvp_kq_value_move(f, src, i, a, n); /* n <= i within a: moves down in order */
            n++;
        }
    }
    kvp_kq_keys(f, a, k, n);
    a->live = (1u << n) - 1;
    b->live = 0;
}

/* ---- attention on KQ runs ---- */

/* One thread's scratch for nq query rows (kvp_sel_kq_scratch bytes). */
typedef struct {
    int8_t *iq, *iq2;            /* (nq, cp4) query bytes and their residual plane */
    uint8_t *W, *W2;             /* (nq, T) weight bytes and their residual plane */
    float *alpha, *beta, *alpha2, *zero; /* (nq) */
    float *ps, *pm;              /* (T) per-lane factors of one tile and value group */
    float *St;                   /* (nq, T) one tile's scores, or its weights */
    float *Yp;                   /* (nq, hdp) values, channel-padded */
} kvp_kq_scr;

static kvp_kq_scr kvp_kq_carve(int nq, int hd, uint8_t *base, size_t *total) {
    size_t rows = (size_t)nq, cp4 = (size_t)(hd + 3) / 4 * 4, hdp = (size_t)(hd + 7) / 8 * 8, T = KVP_KQ_T;
    size_t sz[12] = {rows * cp4, rows * cp4, rows * T, rows * T, rows, rows, rows, rows, T, T, rows * T, rows * hdp};
    void *p[12];
    size_t off = 0;
    for (int i = 0; i < 12; i++) {
        p[i] = base ? base + off : NULL;
        off += ((i < 4 ? 1 : sizeof(float)) * sz[i] + 63) & ~(size_t)63;
    }
    *total = off;
    return (kvp_kq_scr){p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11]};
}

size_t kvp_sel_kq_scratch(int nq, int hd) {
    size_t total;
    kvp_kq_carve(nq, hd, NULL, &total);
    return total;
}

/* Scores of every lane of tile t (KIVI's path: the query times the tile's channel scales,
 * rounded to two byte planes, then the key-tile kernel): x->St (nq, T). */
static void kvp_kq_tile_scores(const kvp_kq_fmt *f, const kvp_kq_tile *t, const float *Q, int nq, float scale,
                               const kvp_kq_scr *x) {
    const kvp_kvq_table *K = kvp_kvq_current();
    int hd = f->hd, cp4 = (hd + 3) / 4 * 4;
    const uint8_t *p = t->mem + f->off_kp;
    kvp_kvq_par par = {p, p + hd, (const uint16_t *)(const void *)(p + 2 * hd), NULL, NULL, 0};
    kvp_kvq_bytes qb = {x->iq, x->iq2, cp4, x->alpha, x->beta};
    K->query(Q, hd, nq, &par, hd, scale, &qb);
    kvp_kvq_ktile kt = {t->mem, f->kbits, KVP_KQ_T, cp4 / 4, NULL, NULL};
    kvp_kvq_rows qr = {x->iq, cp4, nq, x->alpha, x->beta};
    K->scores(&kt, &qr, x->St, KVP_KQ_T, 0);
    for (int j = 0; j < nq; j++) x->alpha2[j] = x->alpha[j] / 256.0f;
    kvp_kvq_rows lo = {x->iq2, cp4, nq, x->alpha2, x->zero};
    K->scores(&kt, &lo, x->St, KVP_KQ_T, 1);
}

/* The tiles of a run: its list, or (n_tiles 0) the tiles of lanes [t0, t0 + n) of tile
 * memory, each live where the run's lanes are. */
static int kvp_kq_run_count(const kvp_rows *r) {
    return r->n_tiles ? r->n_tiles : r->n > 0 ? (r->t0 + r->n - 1) / KVP_KQ_T - r->t0 / KVP_KQ_T + 1 : 0;
}

static kvp_kq_tile kvp_kq_run_tile(const kvp_rows *r, int i) {
    if (r->n_tiles) return ((const kvp_kq_tile *)r->k)[i];
    int first = r->t0 / KVP_KQ_T + i, l0 = KVP_MAX(r->t0 - first * KVP_KQ_T, 0);
    int l1 = KVP_MIN(r->t0 + r->n - first * KVP_KQ_T, KVP_KQ_T);
    uint32_t live = (l1 >= 32 ? 0xffffffffu : (1u << l1) - 1) & ~((1u << l0) - 1);
    return (kvp_kq_tile){(uint8_t *)(uintptr_t)r->k + (size_t)first * r->kq->bytes, live};
}

void kvp_kq_run_scores(const kvp_rows *r, const float *Q, int nq, float scale, float *S, int lds, void *scr) {
    size_t total;
    kvp_kq_scr x = kvp_kq_carve(nq, r->kq->hd, scr, &total);
    memset(x.zero, 0, sizeof(float) * (size_t)nq);
    for (int i = 0, col = 0, nt = kvp_kq_run_count(r); i < nt; i++) {
        kvp_kq_tile t = kvp_kq_run_tile(r, i);
        if (!t.live) continue;
        kvp_kq_tile_scores(r->kq, &t, Q, nq, scale, &x);
        for (int l = 0; l < KVP_KQ_T; l++) {
            if (!(t.live >> l & 1)) continue;
            for (int j = 0; j < nq; j++) S[(size_t)j * lds + col] = x.St[(size_t)j * KVP_KQ_T + l];
            col++;
        }
    }
}

/* Per-lane factors of value group g of tile t (0 for dead lanes). */
static void kvp_kq_factors(const kvp_kq_fmt *f, const kvp_kq_tile *t, int g, const kvp_kq_scr *x) {
    for (int l = 0; l < KVP_KQ_T; l++) {
        const uint16_t *p = kvp_kq_vp(f, t, l, g);
        int live = t->live >> l & 1;
        x->ps[l] = live ? kvp_f16_to_f32(p[0]) : 0;
        x->pm[l] = live ? kvp_f16_to_f32(p[1]) : 0;
    }
}

/* Adds tile t's values, weighted by x->St (nq, T), to x->Yp, group by group. */
static void kvp_kq_tile_values(const kvp_kq_fmt *f, const kvp_kq_tile *t, int nq, const kvp_kq_scr *x) {
    const kvp_kvq_table *K = kvp_kvq_current();
    int hd = f->hd, hdp = (hd + 7) / 8 * 8, T = KVP_KQ_T;
    for (int g = 0; g < f->gph; g++) {
        int c0 = 32 * g, c1 = KVP_MIN(hd, c0 + 32);
        kvp_kq_factors(f, t, g, x);
        kvp_kvq_par par = {NULL, NULL, NULL, x->ps, x->pm, f->vbits == 8 ? 128.0f : 0.0f};
        kvp_kvq_bytes wb = {x->W, x->W2, T, x->alpha, x->beta};
        K->weights(x->St, T, nq, &par, T, &wb);
        kvp_kvq_vtile vt = {t->mem + f->off_vt + (size_t)(c0 / 8) * kvp_kvq_unit_bytes(f->vbits), f->vbits, T / 4,
                            (c1 - c0 + 7) / 8, kvp_qt_vrow_bytes(hd, f->vbits)};
        kvp_kvq_rows wr = {x->W, T, nq, x->alpha, x->beta};
        K->values(&vt, &wr, c1 - c0, x->Yp + c0, hdp);
        for (int j = 0; j < nq; j++) x->alpha2[j] = x->alpha[j] / 255.0f;
        kvp_kvq_rows lo = {x->W2, T, nq, x->alpha2, x->zero};
        K->values(&vt, &lo, c1 - c0, x->Yp + c0, hdp);
    }
}

void kvp_kq_run_values(const kvp_rows *r, const float *P, int nq, int lds, float *Y, void *scr) {
    int hd = r->kq->hd, hdp = (hd + 7) / 8 * 8, T = KVP_KQ_T;
    size_t total;
    kvp_kq_scr x = kvp_kq_carve(nq, hd, scr, &total);
    memset(x.zero, 0, sizeof(float) * (size_t)nq);
    memset(x.Yp, 0, sizeof(float) * (size_t)nq * (size_t)hdp);
    for (int i = 0, col = 0, nt = kvp_kq_run_count(r); i < nt; i++) {
        kvp_kq_tile t = kvp_kq_run_tile(r, i);
        if (!t.live) continue;
        for (int l = 0; l < T; l++) { /* the weights of the live lanes, 0 for the dead */
            int live = t.live >> l & 1;
            for (int j = 0; j < nq; j++) x.St[(size_t)j * T + l] = live ? P[(size_t)j * lds + col] : 0;
            col += live;
        }
        kvp_kq_tile_values(r->kq, &t, nq, &x);
    }
    for (int j = 0; j < nq; j++)
        for (int c = 0; c < hd; c++) Y[(size_t)j * hd + c] += x.Yp[(size_t)j * hdp + c];
}

/* The live lanes of tile t as floats, keys (val 0) or values, from row `row` of x on; returns
 * the next row. The tile is unpacked once and its parameters decoded once. */
static int kvp_kq_tile_floats(const kvp_kq_fmt *f, const kvp_kq_tile *t, int val, float *x, int row) {
    uint8_t codes[KVP_QHD_MAX * KVP_KQ_T];
    float s[KVP_QHD_MAX], m[KVP_QHD_MAX];
    int hd = f->hd, T = KVP_KQ_T;
    if (val) kvp_qt_unpack_v(t->mem + f->off_vt, T, hd, f->vbits, codes); /* (T, hd) */
    else {
        const uint8_t *par = t->mem + f->off_kp;
        kvp_qp_block_get(par, hd, s, m);
        kvp_qt_unpack_k(t->mem, hd, T, f->kbits, codes); /* (hd, T) */
    }
    for (int l = 0; l < T; l++) {
        if (!(t->live >> l & 1)) continue;
        float *dst = x + (size_t)row++ * hd;
        for (int g = 0; val && g < f->gph; g++) {
            const uint16_t *p = kvp_kq_vp(f, t, l, g);
            float vs = kvp_f16_to_f32(p[0]), vm = kvp_f16_to_f32(p[1]);
            for (int c = 32 * g; c < KVP_MIN(hd, 32 * g + 32); c++)
                dst[c] = vm + vs * (float)kvp_qt_vload(codes[(size_t)l * hd + c], f->vbits);
        }
        for (int c = 0; !val && c < hd; c++) dst[c] = m[c] + s[c] * (float)codes[(size_t)c * T + l];
    }
    return row;
}

void kvp_kq_run_floats(const kvp_rows *r, int val, float *x) {
    for (int i = 0, row = 0, nt = kvp_kq_run_count(r); i < nt; i++) {
        kvp_kq_tile t = kvp_kq_run_tile(r, i);
        if (t.live) row = kvp_kq_tile_floats(r->kq, &t, val, x, row);
    }
}
