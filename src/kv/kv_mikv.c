/*
 * kv_mikv.c: the MiKV cache ("No Token Left Behind: Reliable KV Cache Compression via
 * Importance-Aware Mixed Precision Quantization", Yang et al. 2024). Every token of every
 * KV head is kept; the important ones at high precision, the rest at low precision.
 * Spec: mikv[:hH][:lL][:pP][:rR][:rot|:bal|:none][:a8] with H = 8 or 16 bits (default 8),
 * L = 2, 3 or 4 bits (default 2), P percent of the tokens kept high (default 20), R
 * recent tokens in F16 (default 32).
 *
 * Importance. As H2O computes it: the attention a token receives, summed over the query
 * heads that share its KV head and over every query so far. It is tracked for the tokens
 * of the window and the high tier.
 *
 * Tiers, per layer and KV head:
 *   window  the R most recent tokens in F16 (shared with KIVI, quant.h); a step's own
 *           tokens are always here, so prefill attends in full precision.
 *   high    tiles of 32 slots: 8-bit codes per token with an F16 scale and minimum per
 *           group of 32 channels (h8), or F16 rows (h16). A token leaving the window takes
 *           a free slot.
 *   low     tiles of 32 tokens, made at once: keys quantized per channel over the tile's
 *           tokens (as KIVI does, so outlier channels cost nothing), values per token and
 *           group of 32 channels; L-bit codes, scale and minimum in 16 bits under F16 super
 *           numbers per tile (and group) (quant.h).
 * Movement. When the high tier holds more than P% of the tokens outside the window plus a
 * tile, the 32 least important high tokens are demoted together into a new low tile: they
 * are requantized from their high-precision codes (the full-precision values no longer
 * exist). A demoted token is never promoted back: its lost precision could not be
 * restored, so a high slot is better spent on a token that still has it.
 *
 * Attention. High keys are quantized per token, so the query is rounded to bytes once per
 * step (per group of 32 channels) and each tile's per-token scales and minimums enter the
 * kernel as per-token factors (kernels/kvq.h); low keys as in KIVI (the query times the
 * channel scales, rounded per tile); values as in KIVI. Vacant slots are masked.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "kernels/kvq.h"
#include "kv/quant.h"

#define KVP_MIKV_T 32 /* tokens per tile */

typedef struct {
    int hbits, lbits, pct, R, xmode, a8;
} kvp_mikv_spec;

/* A tile of one layer and KV head: the codes and parameters (layouts in the header
 * comment), positions, and for high tiles the importance of every slot. */
typedef struct {
    uint8_t *mem;        /* codes and parameters */
    uint32_t pos[KVP_MIKV_T];
    float imp[KVP_MIKV_T];
    uint32_t valid;      /* bit t: slot t holds a token */
} kvp_mikv_tile;

typedef struct {
    kvp_mikv_tile **t;
    int n, cap;
} kvp_mikv_tiles;

typedef struct {
    kvp_mikv_tiles hi, lo;
    int n_hi;            /* tokens in the high tier */
    int n_lo;            /* tokens in the low tier */
} kvp_mikv_head;

typedef struct {
    kvp_kv base;
    kvp_mikv_spec p;
    int hd, nkv, kvd, hdp, cp4, gph, qb, lds;
    size_t pos_bytes;    /* a stored position: 2 bytes when the context fits 16 bits */
    size_t hi_bytes, lo_bytes, lo_kpar, lo_vtile, lo_ktile, hi_ktile, hi_vtile;
    kvp_mikv_head *heads; /* (n_layers, n_kv_heads) */
    kvp_qwin *win;       /* (n_layers) */
    float **wimp;        /* (n_layers): importance of window rows, (n_kv_heads, win cap) */
    int *wcap;
    kvp_kxform kx;
    uint8_t **scratch;
    int n_scratch;
    float *part;         /* importance gathered by the attention tasks of a step */
    size_t part_cap;
    int step_pos, step_n;
} kvp_kv_mikv;

/* ---------------------------------------------------------------------------------------
 * Spec.
 * ------------------------------------------------------------------------------------- */

static int kvp_mikv_option(const char *o, size_t len, kvp_mikv_spec *p) {
    char buf[32];
    if (len == 0 || len >= sizeof buf) return -1;
    memcpy(buf, o, len);
    buf[len] = 0;
    int v, used = 0;
    if (kvp_kx_mode(buf) >= 0) p->xmode = kvp_kx_mode(buf);
    else if (!strcmp(buf, "a8")) p->a8 = 1;
    else if (sscanf(buf, "h%d%n", &v, &used) == 1 && used == (int)len && (v == 8 || v == 16)) p->hbits = v;
    else if (sscanf(buf, "l%d%n", &v, &used) == 1 && used == (int)len && v >= 2 && v <= 4) p->lbits = v;
    else if (sscanf(buf, "p%d%n", &v, &used) == 1 && used == (int)len && v >= 0 && v <= 100) p->pct = v;
    else if (sscanf(buf, "r%d%n", &v, &used) == 1 && used == (int)len && v >= 0 && v <= (1 << 20)) p->R = v;
    else return -1;
    return 0;
}

static int kvp_mikv_parse(const char *spec, kvp_mikv_spec *p) {
    *p = (kvp_mikv_spec){8, 2, 20, 32, KVP_KX_NONE, 0};
    if (strncmp(spec, "mikv", 4) || (spec[4] && spec[4] != ':')) goto bad;
    for (const char *o = spec + 4; *o == ':';) {
        const char *e = strchr(o + 1, ':');
        size_t len = e ? (size_t)(e - o - 1) : strlen(o + 1);
        if (kvp_mikv_option(o + 1, len, p) < 0) goto bad;
        o += 1 + len;
    }
    return KVP_OK;
bad:
    return kvp_seterr(KVP_EINVAL,
                      "bad MiKV cache spec '%s': mikv[:hH][:lL][:pP][:rR][:rot|:bal|:none][:a8] with H = 8 or 16 "
                      "high-precision bits, L = 2, 3 or 4 low-precision bits, P = 0..100 percent of tokens kept high "
                      "(default 20), R >= 0 recent tokens in F16 (default 32)",
                      spec);
}

/* ---------------------------------------------------------------------------------------
 * Tiles.
 * ------------------------------------------------------------------------------------- */

/* Bytes of the parameters of one value group of a low tile: scale and minimum codes of its
 * 32 tokens, then the super triple. (Keys: codes of every channel, then the triple.) */
#define KVP_MIKV_LPAR (2 * KVP_MIKV_T + KVP_QSUPER_BYTES)

/* High tile memory (h8): key tile, value tile, then F16 scale and minimum per (group,
 * slot) for keys and for values. h16: F16 key rows (T, hd), then value rows. */
static uint8_t *kvp_mikv_hk(const kvp_kv_mikv *c, const kvp_mikv_tile *t) { return t->mem; }
static uint8_t *kvp_mikv_hv(const kvp_kv_mikv *c, const kvp_mikv_tile *t) { return t->mem + c->hi_ktile; }
static uint16_t *kvp_mikv_hpar(const kvp_kv_mikv *c, const kvp_mikv_tile *t, int val, int min, int g) {
    uint16_t *p = (uint16_t *)(void *)(t->mem + c->hi_ktile + c->hi_vtile);
    return p + ((size_t)(2 * val + min) * c->gph + (size_t)g) * KVP_MIKV_T;
}

/* Low tile memory: key tile, key parameters per channel, value tile, value parameters per
 * group. */
static uint8_t *kvp_mikv_lk(const kvp_kv_mikv *c, const kvp_mikv_tile *t) { return t->mem; }
static uint8_t *kvp_mikv_lkpar(const kvp_kv_mikv *c, const kvp_mikv_tile *t) { return t->mem + c->lo_ktile; }
static uint8_t *kvp_mikv_lv(const kvp_kv_mikv *c, const kvp_mikv_tile *t) { return t->mem + c->lo_ktile + c->lo_kpar; }
static uint8_t *kvp_mikv_lvpar(const kvp_kv_mikv *c, const kvp_mikv_tile *t, int g) {
    return t->mem + c->lo_ktile + c->lo_kpar + c->lo_vtile + (size_t)g * KVP_MIKV_LPAR;
}

/* Channels [*c0, *c1) of group g of a head. */
static void kvp_mikv_grange(const kvp_kv_mikv *c, int g, int *c0, int *c1) {
    *c0 = 32 * g;
    *c1 = KVP_MIN(32 * g + 32, c->hd);
}

static int kvp_mikv_tiles_add(kvp_mikv_tiles *ts, size_t bytes, kvp_mikv_tile **out) {
    if (ts->n == ts->cap) {
        int cap = ts->cap ? 2 * ts->cap : 8;
        kvp_mikv_tile **t = realloc(ts->t, sizeof *t * (size_t)cap);
        if (!t) return kvp_seterr(KVP_ENOMEM, "out of memory growing the MiKV cache");
        ts->t = t;
        ts->cap = cap;
    }
    kvp_mikv_tile *t = calloc(1, sizeof *t);
    if (t && !(t->mem = kvp_acalloc(bytes))) {
        free(t);
        t = NULL;
    }
    if (!t) return kvp_seterr(KVP_ENOMEM, "out of memory growing the MiKV cache");
    ts->t[ts->n++] = t;
    *out = t;
    return KVP_OK;
}

static void kvp_mikv_tiles_free(kvp_mikv_tiles *ts) {
    for (int i = 0; i < ts->n; i++) {
        kvp_afree(ts->t[i]->mem);
        free(ts->t[i]);
    }
    free(ts->t);
    memset(ts, 0, sizeof *ts);
}

static kvp_mikv_head *kvp_mikv_head_of(const kvp_kv_mikv *c, int layer, int h) {
    return &c->heads[(size_t)layer * c->nkv + (size_t)h];
}

/* ---------------------------------------------------------------------------------------
 * High tier: writing and reading one slot.
 * ------------------------------------------------------------------------------------- */

/* Writes token x (key or value row of hd values, the key transformed) into slot s. */
static void kvp_mikv_hi_put(const kvp_kv_mikv *c, kvp_mikv_tile *t, int s, const float *x, int val) {
    if (c->p.hbits == 16) {
        uint16_t *rows = (uint16_t *)(void *)(val ? kvp_mikv_hv(c, t) : kvp_mikv_hk(c, t));
        for (int ch = 0; ch < c->hd; ch++) rows[(size_t)s * c->hd + ch] = kvp_f32_to_f16(x[ch]);
        return;
    }
    uint8_t codes[KVP_QHD_MAX];
    for (int g = 0, c0, c1; g < c->gph; g++) {
        uint16_t *ps = kvp_mikv_hpar(c, t, val, 0, g) + s, *pm = kvp_mikv_hpar(c, t, val, 1, g) + s;
        kvp_mikv_grange(c, g, &c0, &c1);
        kvp_qp_token_f16(x + c0, c1 - c0, 255, ps, pm);
        float sf = kvp_f16_to_f32(*ps), mf = kvp_f16_to_f32(*pm);
        for (int ch = c0; ch < c1; ch++) {
            uint8_t q = kvp_qp_code(x[ch], sf, mf, 255);
            codes[ch] = val ? kvp_qt_vstore(q, 8) : q; /* value codes are stored signed */
        }
    }
    if (val) kvp_qt_put_v8(kvp_mikv_hv(c, t), c->hd, s, codes);
    else kvp_qt_put_k8(kvp_mikv_hk(c, t), c->hd, KVP_MIKV_T, s, codes);
}

/* Reads slot s back (key in the transformed basis) into x (hd). */
static void kvp_mikv_hi_get(const kvp_kv_mikv *c, const kvp_mikv_tile *t, int s, float *x, int val) {
    if (c->p.hbits == 16) {
        const uint16_t *rows = (const uint16_t *)(const void *)(val ? kvp_mikv_hv(c, t) : kvp_mikv_hk(c, t));
        for (int ch = 0; ch < c->hd; ch++) x[ch] = kvp_f16_to_f32(rows[(size_t)s * c->hd + ch]);
        return;
    }
    const uint8_t *tile = val ? kvp_mikv_hv(c, t) : kvp_mikv_hk(c, t);
    size_t vrow = kvp_qt_vrow_bytes(c->hd, 8);
    for (int ch = 0; ch < c->hd; ch++) {
        int g = ch / 32;
        float sf = kvp_f16_to_f32(kvp_mikv_hpar(c, t, val, 0, g)[s]), mf = kvp_f16_to_f32(kvp_mikv_hpar(c, t, val, 1, g)[s]);
        int code = val ? kvp_qt_vload(tile[(size_t)(s / 4) * vrow + (size_t)ch * 4 + s % 4], 8)
                       : tile[(size_t)(ch / 4) * KVP_MIKV_T * 4 + (size_t)s * 4 + ch % 4];
        x[ch] = mf + sf * (float)code;
    }
}

/* A free slot of the high tier of (layer, h), adding a tile when all are full. */
static int kvp_mikv_hi_slot(kvp_kv_mikv *c, kvp_mikv_head *hh, kvp_mikv_tile **t, int *s) {
    for (int i = 0; i < hh->hi.n; i++)
        if (hh->hi.t[i]->valid != 0xffffffffu) {
            *t = hh->hi.t[i];
            for (*s = 0; (*t)->valid >> *s & 1; (*s)++) {}
            return KVP_OK;
        }
    KVP_TRY(kvp_mikv_tiles_add(&hh->hi, c->hi_bytes, t));
    *s = 0;
    return KVP_OK;
}

/* Moves one token (key k transformed, value v) with its importance into the high tier. */
static int kvp_mikv_hi_insert(kvp_kv_mikv *c, kvp_mikv_head *hh, const float *k, const float *v, int pos, float imp) {
    kvp_mikv_tile *t;
    int s;
    KVP_TRY(kvp_mikv_hi_slot(c, hh, &t, &s));
    kvp_mikv_hi_put(c, t, s, k, 0);
    kvp_mikv_hi_put(c, t, s, v, 1);
    t->pos[s] = (uint32_t)pos;
    t->imp[s] = imp;
    t->valid |= 1u << s;
    hh->n_hi++;
    return KVP_OK;
}

/* ---------------------------------------------------------------------------------------
 * Low tier: a tile made from 32 tokens.
 * ------------------------------------------------------------------------------------- */

/* Quantizes key rows x (T, hd) per channel over the tile's tokens into a low tile. */
static void kvp_mikv_lo_keys(const kvp_kv_mikv *c, kvp_mikv_tile *t, const float *x) {
    int qmax = (1 << c->p.lbits) - 1, T = KVP_MIKV_T, hd = c->hd;
    uint8_t kc[KVP_MIKV_T * KVP_QHD_MAX], *par = kvp_mikv_lkpar(c, t);
    float lo[KVP_QHD_MAX] = {0}, hi[KVP_QHD_MAX] = {0}, s[KVP_QHD_MAX], m[KVP_QHD_MAX];
    for (int ch = 0; ch < hd; ch++) {
        lo[ch] = hi[ch] = x[ch];
        for (int i = 1; i < T; i++) {
            lo[ch] = fminf(lo[ch], x[(size_t)i * hd + ch]);
            hi[ch] = fmaxf(hi[ch], x[(size_t)i * hd + ch]);
        }
    }
    kvp_qsuper sp;
    kvp_qp_encode(lo, hi, hd, qmax, par, par + hd, &sp);
    memcpy(par + 2 * hd, &sp, sizeof sp);
    kvp_qp_decode(par, par + hd, &sp, hd, s, m);
    for (int ch = 0; ch < hd; ch++)
        for (int i = 0; i < T; i++) kc[(size_t)ch * T + i] = kvp_qp_code(x[(size_t)i * hd + ch], s[ch], m[ch], qmax);
    kvp_qt_pack_k(kc, hd, T, c->p.lbits, kvp_mikv_lk(c, t));
}

/* Quantizes value rows x (T, hd) per token and group of 32 channels into a low tile. */
static void kvp_mikv_lo_values_quant(const kvp_kv_mikv *c, kvp_mikv_tile *t, const float *x) {
    int qmax = (1 << c->p.lbits) - 1, T = KVP_MIKV_T;
    uint8_t codes[KVP_MIKV_T * KVP_QHD_MAX];
    for (int g = 0, c0, c1; g < c->gph; g++) {
        float lo[KVP_MIKV_T], hi[KVP_MIKV_T], s[KVP_MIKV_T], m[KVP_MIKV_T];
        kvp_mikv_grange(c, g, &c0, &c1);
        for (int i = 0; i < T; i++) {
            lo[i] = hi[i] = x[(size_t)i * c->hd + c0];
            for (int ch = c0 + 1; ch < c1; ch++) {
                lo[i] = fminf(lo[i], x[(size_t)i * c->hd + ch]);
                hi[i] = fmaxf(hi[i], x[(size_t)i * c->hd + ch]);
            }
        }
        uint8_t *par = kvp_mikv_lvpar(c, t, g);
        kvp_qsuper sp;
        kvp_qp_encode(lo, hi, T, qmax, par, par + T, &sp);
        memcpy(par + 2 * T, &sp, sizeof sp);
        kvp_qp_decode(par, par + T, &sp, T, s, m);
        for (int i = 0; i < T; i++)
            for (int ch = c0; ch < c1; ch++) codes[(size_t)i * c->hd + ch] = kvp_qp_code(x[(size_t)i * c->hd + ch], s[i], m[i], qmax);
    }
    kvp_qt_pack_v(codes, T, c->hd, c->p.lbits, kvp_mikv_lv(c, t));
}

/* Reads token i of a low tile back (key in the transformed basis) into x (hd). */
static void kvp_mikv_lo_get(const kvp_kv_mikv *c, const kvp_mikv_tile *t, int i, float *x, int val) {
    uint8_t codes[KVP_MIKV_T * KVP_QHD_MAX];
    float s[KVP_QHD_MAX], m[KVP_QHD_MAX];
    kvp_qsuper sp;
    if (!val) {
        const uint8_t *par = kvp_mikv_lkpar(c, t);
        kvp_qt_unpack_k(kvp_mikv_lk(c, t), c->hd, KVP_MIKV_T, c->p.lbits, codes);
        memcpy(&sp, par + 2 * c->hd, sizeof sp);
        kvp_qp_decode(par, par + c->hd, &sp, c->hd, s, m);
        for (int ch = 0; ch < c->hd; ch++) x[ch] = m[ch] + s[ch] * (float)codes[(size_t)ch * KVP_MIKV_T + i];
        return;
    }
    kvp_qt_unpack_v(kvp_mikv_lv(c, t), KVP_MIKV_T, c->hd, c->p.lbits, codes);
    for (int g = 0, c0, c1; g < c->gph; g++) {
        const uint8_t *par = kvp_mikv_lvpar(c, t, g);
        memcpy(&sp, par + 2 * KVP_MIKV_T, sizeof sp);
        kvp_qp_decode(par, par + KVP_MIKV_T, &sp, KVP_MIKV_T, s, m);
        kvp_mikv_grange(c, g, &c0, &c1);
        for (int ch = c0; ch < c1; ch++) x[ch] = m[i] + s[i] * (float)codes[(size_t)i * c->hd + ch];
    }
}

typedef struct {
    float imp;
    int tile, slot;
} kvp_mikv_cand;

static int kvp_mikv_cand_cmp(const void *a, const void *b) {
    const kvp_mikv_cand *x = a, *y = b;
    if (x->imp != y->imp) return x->imp < y->imp ? -1 : 1;
    return x->tile != y->tile ? x->tile - y->tile : x->slot - y->slot;
}

/* Demotes the 32 least important high tokens of a head into a new low tile. */
static int kvp_mikv_demote(kvp_kv_mikv *c, kvp_mikv_head *hh) {
    kvp_mikv_cand *cand = malloc(sizeof *cand * (size_t)hh->n_hi);
    float *k = malloc(sizeof(float) * KVP_MIKV_T * (size_t)c->hd), *v = malloc(sizeof(float) * KVP_MIKV_T * (size_t)c->hd);
    kvp_mikv_tile *lo = NULL;
    int n = 0, rc = cand && k && v ? kvp_mikv_tiles_add(&hh->lo, c->lo_bytes, &lo) : kvp_seterr(KVP_ENOMEM, "out of memory (MiKV)");
    for (int i = 0; rc == KVP_OK && i < hh->hi.n; i++)
        for (int s = 0; s < KVP_MIKV_T; s++)
            if (hh->hi.t[i]->valid >> s & 1) cand[n++] = (kvp_mikv_cand){hh->hi.t[i]->imp[s], i, s};
    if (rc == KVP_OK) qsort(cand, (size_t)n, sizeof *cand, kvp_mikv_cand_cmp);
    for (int i = 0; rc == KVP_OK && i < KVP_MIKV_T; i++) {
        kvp_mikv_tile *t = hh->hi.t[cand[i].tile];
        kvp_mikv_hi_get(c, t, cand[i].slot, k + (size_t)i * c->hd, 0);
        kvp_mikv_hi_get(c, t, cand[i].slot, v + (size_t)i * c->hd, 1);
        lo->pos[i] = t->pos[cand[i].slot];
        t->valid &= ~(1u << cand[i].slot);
    }
    if (rc == KVP_OK) {
        kvp_mikv_lo_keys(c, lo, k);
        kvp_mikv_lo_values_quant(c, lo, v);
        lo->valid = 0xffffffffu;
        hh->n_hi -= KVP_MIKV_T;
        hh->n_lo += KVP_MIKV_T;
    }
    free(cand), free(k), free(v);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Steps.
 * ------------------------------------------------------------------------------------- */

static int kvp_mikv_begin(kvp_kv *kv, int pos, int n, const int *tokens) {
    kvp_kv_mikv *c = (kvp_kv_mikv *)kv;
    if (pos != kv->n_pos)
        return kvp_seterr(KVP_EINVAL, "KV cache: step at position %d, but %d positions are stored", pos, kv->n_pos);
    if (n <= 0 || pos + n > kv->shape.n_ctx)
        return kvp_seterr(KVP_ERANGE, "context is full: %d + %d tokens exceed the context of %d", pos, n,
                          kv->shape.n_ctx);
    c->step_pos = pos;
    c->step_n = n;
    return KVP_OK;
}

/* Keeps the window importance array of a layer as long as its window. */
static int kvp_mikv_wimp_fit(kvp_kv_mikv *c, int layer, int rows) {
    if (rows <= c->wcap[layer]) return KVP_OK;
    int cap = KVP_MAX(rows, 2 * c->wcap[layer]);
    float *w = calloc((size_t)c->nkv * (size_t)cap, sizeof(float));
    if (!w) return kvp_seterr(KVP_ENOMEM, "out of memory (MiKV window)");
    for (int h = 0; h < c->nkv && c->wimp[layer]; h++)
        memcpy(w + (size_t)h * cap, c->wimp[layer] + (size_t)h * c->wcap[layer], sizeof(float) * (size_t)c->wcap[layer]);
    free(c->wimp[layer]);
    c->wimp[layer] = w;
    c->wcap[layer] = cap;
    return KVP_OK;
}

static int kvp_mikv_append(kvp_kv *kv, int layer, int pos, int n, const float *k, const float *v) {
    kvp_kv_mikv *c = (kvp_kv_mikv *)kv;
    kvp_kx_observe(&c->kx, layer, n, k, NULL);
    KVP_TRY(kvp_mikv_wimp_fit(c, layer, c->win[layer].n + n));
    for (int h = 0; h < c->nkv; h++)
        memset(c->wimp[layer] + (size_t)h * c->wcap[layer] + c->win[layer].n, 0, sizeof(float) * (size_t)n);
    return kvp_qwin_append(&c->win[layer], n, k, v);
}

/* Moves the m oldest window tokens of a layer into the high tier of every head. */
static int kvp_mikv_age(kvp_kv_mikv *c, int layer, int m) {
    kvp_qwin *w = &c->win[layer];
    float *k = malloc(sizeof(float) * (size_t)c->kvd), *v = malloc(sizeof(float) * (size_t)c->kvd);
    int rc = k && v ? KVP_OK : kvp_seterr(KVP_ENOMEM, "out of memory (MiKV)");
    kvp_kx_freeze(&c->kx, layer);
    for (int i = 0; i < m && rc == KVP_OK; i++) {
        kvp_qwin_get(w, i, k, v);
        for (int h = 0; h < c->nkv && rc == KVP_OK; h++) {
            float *kh = k + (size_t)h * c->hd, imp = c->wimp[layer][(size_t)h * c->wcap[layer] + i];
            kvp_kx_apply(&c->kx, layer, h, kh, 0);
            rc = kvp_mikv_hi_insert(c, kvp_mikv_head_of(c, layer, h), kh, v + (size_t)h * c->hd, w->start + i, imp);
        }
    }
    for (int h = 0; h < c->nkv && rc == KVP_OK; h++) {
        float *wi = c->wimp[layer] + (size_t)h * c->wcap[layer];
        memmove(wi, wi + m, sizeof(float) * (size_t)(w->n - m));
    }
    if (rc == KVP_OK) kvp_qwin_drop(w, m);
    free(k), free(v);
    return rc;
}

/* Demotes while the high tier of a head exceeds its share by a tile. */
static int kvp_mikv_balance(kvp_kv_mikv *c, kvp_mikv_head *hh) {
    for (;;) {
        int old = hh->n_hi + hh->n_lo, cap = (int)ceil(old * c->p.pct / 100.0);
        if (hh->n_hi < cap + KVP_MIKV_T || hh->n_hi < KVP_MIKV_T) return KVP_OK;
        KVP_TRY(kvp_mikv_demote(c, hh));
    }
}

static int kvp_mikv_end(kvp_kv *kv) {
    kvp_kv_mikv *c = (kvp_kv_mikv *)kv;
    for (int l = 0; l < kv->shape.n_layers; l++) {
        int m = c->win[l].n - c->p.R;
        if (m > 0) KVP_TRY(kvp_mikv_age(c, l, m));
        for (int h = 0; h < c->nkv; h++) KVP_TRY(kvp_mikv_balance(c, kvp_mikv_head_of(c, l, h)));
    }
    kv->n_pos = c->step_pos + c->step_n;
    return KVP_OK;
}

/* ---------------------------------------------------------------------------------------
 * Attention.
 * ------------------------------------------------------------------------------------- */

typedef struct {
    float *Qf, *Qx, *S, *Y, *alpha, *beta, *alpha2, *zero, *qa, *qb, *ps, *pm;
    int8_t *iq, *iq2;      /* query bytes per group of 32 channels (high tiles) */
    int8_t *it, *it2;      /* query bytes times a low tile's channel scales */
    uint8_t *W, *W2;
    const kvp_kvq_table *k;
} kvp_mikv_scr;

/* Carves one thread's scratch (rows = qb * group query rows); with base NULL measures it.
 * qa, qb: per group and row the query factors; ps, pm: per-token factors of one tile. */
static kvp_mikv_scr kvp_mikv_carve(const kvp_kv_mikv *c, uint8_t *base, size_t *total) {
    size_t rows = (size_t)c->qb * (size_t)(c->base.shape.n_heads / c->nkv), g = (size_t)c->gph, T = KVP_MIKV_T;
    size_t sz[18] = {rows * c->hd, rows * c->hd, rows * c->lds, rows * c->hdp, rows, rows, rows, rows,
                     2 * g * rows, 2 * g * rows, T, T, rows * c->cp4, rows * c->cp4, rows * c->cp4, rows * c->cp4,
                     rows * T, rows * T};
    void *p[18];
    size_t off = 0;
    for (int i = 0; i < 18; i++) {
        p[i] = base ? base + off : NULL;
        off += ((i < 12 ? sizeof(float) : 1) * sz[i] + 63) & ~(size_t)63;
    }
    *total = off;
    return (kvp_mikv_scr){p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11],
                          p[12], p[13], p[14], p[15], p[16], p[17], kvp_kvq_current()};
}

/* Rounds the query rows to bytes per group of 32 channels: qa[g][j] = scale d, qb[g][j] =
 * scale * sum of the group's query (the factor of the per-token minimums). */
static void kvp_mikv_query(const kvp_kv_mikv *c, int rows, const kvp_mikv_scr *x) {
    kvp_kvq_par one = {NULL, NULL, NULL, NULL, NULL, 0};
    float scale = 1.0f / sqrtf((float)c->hd);
    for (int g = 0, c0, c1; g < c->gph; g++) {
        kvp_mikv_grange(c, g, &c0, &c1);
        kvp_kvq_bytes o = {x->iq + c0, c->p.a8 ? NULL : x->iq2 + c0, c->cp4, x->qa + (size_t)g * rows, x->qb + (size_t)g * rows};
        x->k->query(x->Qx + c0, c->hd, rows, &one, c1 - c0, scale, &o);
    }
}

/* Scores of the query rows against an 8-bit or low key tile with per-token factors,
 * group by group, both byte planes: S[j][t]. */
static void kvp_mikv_tile_scores(const kvp_kv_mikv *c, const uint8_t *codes, int bits, int rows,
                                 const kvp_mikv_scr *x, float *S, int g, int c0, int c1) {
    size_t row_bytes = (size_t)(KVP_MIKV_T / 8) * kvp_kvq_unit_bytes(bits);
    kvp_kvq_ktile kt = {codes + (size_t)(c0 / 4) * row_bytes, bits, KVP_MIKV_T, (c1 - c0 + 3) / 4, x->ps, x->pm};
    kvp_kvq_rows qr = {x->iq + c0, c->cp4, rows, x->qa + (size_t)g * rows, x->qb + (size_t)g * rows};
    x->k->scores(&kt, &qr, S, c->lds, g > 0);
    if (c->p.a8) return;
    for (int j = 0; j < rows; j++) x->alpha2[j] = x->qa[(size_t)g * rows + j] / 256.0f;
    kvp_kvq_rows lo = {x->iq2 + c0, c->cp4, rows, x->alpha2, x->zero};
    x->k->scores(&kt, &lo, S, c->lds, 1);
}

/* Masks the vacant slots of a tile out of the scores (before the softmax). */
static void kvp_mikv_mask(const kvp_kv_mikv *c, uint32_t valid, int rows, float *S) {
    for (int t = 0; t < KVP_MIKV_T && valid != 0xffffffffu; t++)
        if (!(valid >> t & 1))
            for (int j = 0; j < rows; j++) S[(size_t)j * c->lds + t] = -INFINITY;
}

/* Scores against a low tile: its keys are quantized per channel, so the query rows are
 * multiplied by the tile's channel scales and rounded to bytes here (as in KIVI). */
static void kvp_mikv_lo_scores(const kvp_kv_mikv *c, const kvp_mikv_tile *t, int rows, const kvp_mikv_scr *x, float *S) {
    const uint8_t *p = kvp_mikv_lkpar(c, t);
    kvp_kvq_par par = {p, p + c->hd, (const uint16_t *)(const void *)(p + 2 * c->hd), NULL, NULL, 0};
    kvp_kvq_bytes qb = {x->it, c->p.a8 ? NULL : x->it2, c->cp4, x->alpha, x->beta};
    x->k->query(x->Qx, c->hd, rows, &par, c->hd, 1.0f / sqrtf((float)c->hd), &qb);
    kvp_kvq_ktile kt = {kvp_mikv_lk(c, t), c->p.lbits, KVP_MIKV_T, c->cp4 / 4, NULL, NULL};
    kvp_kvq_rows qr = {x->it, c->cp4, rows, x->alpha, x->beta};
    x->k->scores(&kt, &qr, S, c->lds, 0);
    if (!c->p.a8) {
        for (int j = 0; j < rows; j++) x->alpha2[j] = x->alpha[j] / 256.0f;
        kvp_kvq_rows lo = {x->it2, c->cp4, rows, x->alpha2, x->zero};
        x->k->scores(&kt, &lo, S, c->lds, 1);
    }
    kvp_mikv_mask(c, t->valid, rows, S);
}

static void kvp_mikv_hi_scores(const kvp_kv_mikv *c, const kvp_mikv_tile *t, int rows, const kvp_mikv_scr *x, float *S) {
    if (c->p.hbits == 16) {
        kvp_attn_scores_f16((const uint16_t *)(const void *)kvp_mikv_hk(c, t), KVP_MIKV_T, c->hd, x->Qx, rows, c->hd,
                            1.0f / sqrtf((float)c->hd), S, c->lds);
    } else {
        for (int g = 0, c0, c1; g < c->gph; g++) {
            for (int s = 0; s < KVP_MIKV_T; s++) {
                x->ps[s] = kvp_f16_to_f32(kvp_mikv_hpar(c, t, 0, 0, g)[s]);
                x->pm[s] = kvp_f16_to_f32(kvp_mikv_hpar(c, t, 0, 1, g)[s]);
            }
            kvp_mikv_grange(c, g, &c0, &c1);
            kvp_mikv_tile_scores(c, kvp_mikv_hk(c, t), 8, rows, x, S, g, c0, c1);
        }
    }
    kvp_mikv_mask(c, t->valid, rows, S);
}

/* Adds the attention over a value tile to Y, group by group (par(g) gives the per-token
 * parameters of group g), both byte planes. */
static void kvp_mikv_tile_values(const kvp_kv_mikv *c, const uint8_t *codes, int bits, int rows, const kvp_mikv_scr *x,
                                 const float *P, const kvp_kvq_par *par, int g) {
    int c0, c1;
    kvp_mikv_grange(c, g, &c0, &c1);
    kvp_kvq_bytes wb = {x->W, c->p.a8 ? NULL : x->W2, KVP_MIKV_T, x->alpha, x->beta};
    x->k->weights(P, c->lds, rows, par, KVP_MIKV_T, &wb);
    kvp_kvq_vtile vt = {codes + (size_t)(c0 / 8) * kvp_kvq_unit_bytes(bits), bits, KVP_MIKV_T / 4, (c1 - c0 + 7) / 8,
                        kvp_qt_vrow_bytes(c->hd, bits)};
    kvp_kvq_rows wr = {x->W, KVP_MIKV_T, rows, x->alpha, x->beta};
    x->k->values(&vt, &wr, c1 - c0, x->Y + c0, c->hdp);
    if (c->p.a8) return;
    for (int j = 0; j < rows; j++) x->alpha2[j] = x->alpha[j] / 255.0f;
    kvp_kvq_rows lo = {x->W2, KVP_MIKV_T, rows, x->alpha2, x->zero};
    x->k->values(&vt, &lo, c1 - c0, x->Y + c0, c->hdp);
}

static void kvp_mikv_lo_values(const kvp_kv_mikv *c, const kvp_mikv_tile *t, int rows, const kvp_mikv_scr *x, const float *P) {
    for (int g = 0; g < c->gph; g++) {
        const uint8_t *p = kvp_mikv_lvpar(c, t, g);
        kvp_kvq_par par = {p, p + KVP_MIKV_T, (const uint16_t *)(const void *)(p + 2 * KVP_MIKV_T), NULL, NULL, 0};
        kvp_mikv_tile_values(c, kvp_mikv_lv(c, t), c->p.lbits, rows, x, P, &par, g);
    }
}

static void kvp_mikv_hi_values(const kvp_kv_mikv *c, const kvp_mikv_tile *t, int rows, const kvp_mikv_scr *x, const float *P) {
    if (c->p.hbits == 16) {
        kvp_attn_values_f16(x->Y, c->hdp, rows, P, c->lds, (const uint16_t *)(const void *)kvp_mikv_hv(c, t), KVP_MIKV_T,
                            c->hd);
        return;
    }
    for (int g = 0; g < c->gph; g++) {
        for (int s = 0; s < KVP_MIKV_T; s++) {
            x->ps[s] = kvp_f16_to_f32(kvp_mikv_hpar(c, t, 1, 0, g)[s]);
            x->pm[s] = kvp_f16_to_f32(kvp_mikv_hpar(c, t, 1, 1, g)[s]);
        }
        kvp_kvq_par par = {NULL, NULL, NULL, x->ps, x->pm, 128.0f};
        kvp_mikv_tile_values(c, kvp_mikv_hv(c, t), 8, rows, x, P, &par, g);
    }
}

typedef struct {
    kvp_kv_mikv *c;
    int layer, pos, n, n_qblocks;
    const float *q;
    float *out;
    size_t part_stride;  /* floats of importance per task: high slots, then window rows */
} kvp_mikv_job;

/* Softmax of each row over the low and high tiles (n_old columns, all visible) and the
 * window tokens the query sees. */
static void kvp_mikv_softmax(const kvp_kv_mikv *c, const kvp_mikv_scr *x, int rows, int group, int n_old, int wstart,
                             int pos, int i0, int n_cols) {
    for (int r = 0; r < rows; r++) {
        float *row = x->S + (size_t)r * c->lds;
        int vis = n_old + (pos + i0 + r / group + 1 - wstart);
        x->k->softmax(row, vis);
        memset(row + vis, 0, sizeof(float) * (size_t)(n_cols - vis));
    }
}

/* Adds the attention each high slot and window token received to the task's part. */
static void kvp_mikv_collect(const kvp_kv_mikv *c, const kvp_mikv_head *hh, int n_win, int rows, const kvp_mikv_scr *x,
                             float *part) {
    int lo_cols = hh->lo.n * KVP_MIKV_T, n = hh->hi.n * KVP_MIKV_T + n_win;
    for (int r = 0; r < rows; r++) {
        const float *row = x->S + (size_t)r * c->lds + lo_cols;
        for (int t = 0; t < n; t++) part[t] += row[t];
    }
}

static void kvp_mikv_task(void *arg, int chunk, int thread) {
    const kvp_mikv_job *j = arg;
    const kvp_kv_mikv *c = j->c;
    int group = c->base.shape.n_heads / c->nkv, h = chunk / j->n_qblocks, T = KVP_MIKV_T;
    int i0 = (chunk % j->n_qblocks) * c->qb, i1 = KVP_MIN(j->n, i0 + c->qb), rows = (i1 - i0) * group;
    size_t total;
    kvp_mikv_scr x = kvp_mikv_carve(c, c->scratch[thread], &total);
    const kvp_mikv_head *hh = kvp_mikv_head_of(c, j->layer, h);
    const kvp_qwin *w = &c->win[j->layer];
    int n_old = (hh->lo.n + hh->hi.n) * T, n_win = j->pos + i1 - w->start, n_cols = n_old + n_win;
    memset(x.zero, 0, sizeof(float) * (size_t)rows);
    kvp_qa_gather(&c->base.shape, j->q, h, i0, i1, x.Qf);
    memcpy(x.Qx, x.Qf, sizeof(float) * (size_t)rows * c->hd);
    for (int r = 0; r < rows; r++) kvp_kx_apply(&c->kx, j->layer, h, x.Qx + (size_t)r * c->hd, 1);
    kvp_mikv_query(c, rows, &x);
    for (int i = 0; i < hh->lo.n; i++) kvp_mikv_lo_scores(c, hh->lo.t[i], rows, &x, x.S + (size_t)i * T);
    for (int i = 0; i < hh->hi.n; i++) kvp_mikv_hi_scores(c, hh->hi.t[i], rows, &x, x.S + (size_t)(hh->lo.n + i) * T);
    kvp_attn_scores_f16(kvp_qwin_rows(w, h, 0), n_win, c->hd, x.Qf, rows, c->hd, 1.0f / sqrtf((float)c->hd),
                        x.S + n_old, c->lds);
    kvp_mikv_softmax(c, &x, rows, group, n_old, w->start, j->pos, i0, n_cols);
    kvp_mikv_collect(c, hh, n_win, rows, &x, c->part + (size_t)chunk * j->part_stride);
    memset(x.Y, 0, sizeof(float) * (size_t)rows * c->hdp);
    for (int i = 0; i < hh->lo.n; i++) kvp_mikv_lo_values(c, hh->lo.t[i], rows, &x, x.S + (size_t)i * T);
    for (int i = 0; i < hh->hi.n; i++) kvp_mikv_hi_values(c, hh->hi.t[i], rows, &x, x.S + (size_t)(hh->lo.n + i) * T);
    kvp_attn_values_f16(x.Y, c->hdp, rows, x.S + n_old, c->lds, kvp_qwin_rows(w, h, 1), n_win, c->hd);
    kvp_qa_scatter(&c->base.shape, x.Y, c->hdp, h, i0, i1, j->out);
}

/* Adds the importance the tasks gathered to the high slots and window tokens, task by task
 * in order (the result does not depend on the thread count). */
static void kvp_mikv_absorb(kvp_kv_mikv *c, const kvp_mikv_job *j) {
    for (int h = 0; h < c->nkv; h++) {
        kvp_mikv_head *hh = kvp_mikv_head_of(c, j->layer, h);
        float *wi = c->wimp[j->layer] + (size_t)h * c->wcap[j->layer];
        for (int b = 0; b < j->n_qblocks; b++) {
            const float *part = c->part + (size_t)(h * j->n_qblocks + b) * j->part_stride;
            for (int i = 0; i < hh->hi.n; i++)
                for (int s = 0; s < KVP_MIKV_T; s++) hh->hi.t[i]->imp[s] += part[i * KVP_MIKV_T + s];
            for (int t = 0; t < c->win[j->layer].n; t++) wi[t] += part[hh->hi.n * KVP_MIKV_T + t];
        }
    }
}

/* Makes every thread's scratch hold score rows of `cols` columns (vacant slots of the
 * tiers make the columns outnumber the positions). */
static int kvp_mikv_fit_scratch(kvp_kv_mikv *c, int cols) {
    if (cols <= c->lds) return KVP_OK;
    c->lds = (KVP_MAX(cols, c->lds + c->lds / 2) + 15) / 16 * 16;
    size_t bytes;
    kvp_mikv_carve(c, NULL, &bytes);
    for (int i = 0; i < c->n_scratch; i++) {
        kvp_afree(c->scratch[i]);
        if (!(c->scratch[i] = kvp_amalloc(bytes))) return kvp_seterr(KVP_ENOMEM, "out of memory (MiKV scratch)");
    }
    return KVP_OK;
}

static int kvp_mikv_attend(kvp_kv *kv, int layer, int pos, int n, const float *q, float *out) {
    kvp_kv_mikv *c = (kvp_kv_mikv *)kv;
    kvp_mikv_job j = {c, layer, pos, n, (n + c->qb - 1) / c->qb, q, out, 0};
    int max_hi = 0, cols = 0;
    for (int h = 0; h < c->nkv; h++) {
        const kvp_mikv_head *hh = kvp_mikv_head_of(c, layer, h);
        max_hi = KVP_MAX(max_hi, hh->hi.n);
        cols = KVP_MAX(cols, (hh->hi.n + hh->lo.n) * KVP_MIKV_T + c->win[layer].n);
    }
    KVP_TRY(kvp_mikv_fit_scratch(c, cols));
    j.part_stride = (size_t)max_hi * KVP_MIKV_T + (size_t)c->win[layer].n;
    size_t need = j.part_stride * (size_t)(c->nkv * j.n_qblocks);
    if (need > c->part_cap) {
        float *p = realloc(c->part, sizeof(float) * need);
        if (!p) return kvp_seterr(KVP_ENOMEM, "out of memory (MiKV importance)");
        c->part = p;
        c->part_cap = need;
    }
    memset(c->part, 0, sizeof(float) * need);
    kvp_kx_observe(&c->kx, layer, n, NULL, q);
    kvp_pool_run(kv->pool, kvp_mikv_task, &j, c->nkv * j.n_qblocks);
    kvp_mikv_absorb(c, &j);
    return KVP_OK;
}

/* ---------------------------------------------------------------------------------------
 * Statistics, reset, truncation, read-back.
 * ------------------------------------------------------------------------------------- */

static void kvp_mikv_stats(const kvp_kv *kv, kvp_kv_stats *st) {
    const kvp_kv_mikv *c = (const kvp_kv_mikv *)kv;
    const kvp_kv_shape *s = &kv->shape;
    uint64_t bytes = kvp_kx_bytes(&c->kx), meta_hi = KVP_MIKV_T * (c->pos_bytes + sizeof(float)) + 4;
    uint64_t meta_lo = KVP_MIKV_T * c->pos_bytes + 4;
    for (int l = 0; l < s->n_layers; l++) {
        bytes += (uint64_t)c->win[l].n * ((uint64_t)c->kvd * 2 * sizeof(uint16_t) + (uint64_t)c->nkv * sizeof(float));
        for (int h = 0; h < c->nkv; h++) {
            const kvp_mikv_head *hh = kvp_mikv_head_of(c, l, h);
            bytes += (uint64_t)hh->hi.n * (c->hi_bytes + meta_hi) + (uint64_t)hh->lo.n * (c->lo_bytes + meta_lo);
        }
    }
    memset(st, 0, sizeof *st);
    st->n_values = (uint64_t)kv->n_pos * (uint64_t)s->n_layers * (uint64_t)c->kvd * 2;
    st->bytes_hot = kv->n_pos ? bytes : 0;
    st->bits_per_value = st->n_values ? 8.0 * (double)st->bytes_hot / (double)st->n_values : 0;
    st->spec = kv->spec;
}

static void kvp_mikv_clear(kvp_kv_mikv *c) {
    for (int i = 0; i < c->base.shape.n_layers * c->nkv; i++) {
        kvp_mikv_tiles_free(&c->heads[i].hi);
        kvp_mikv_tiles_free(&c->heads[i].lo);
        c->heads[i].n_hi = c->heads[i].n_lo = 0;
    }
}

static void kvp_mikv_reset(kvp_kv *kv) {
    kvp_kv_mikv *c = (kvp_kv_mikv *)kv;
    kvp_mikv_clear(c);
    for (int l = 0; l < kv->shape.n_layers; l++) c->win[l].n = c->win[l].start = 0;
    kv->n_pos = 0;
}

/* Forgets the tokens of a tier list at positions >= n; returns how many were forgotten. */
static int kvp_mikv_forget(kvp_mikv_tiles *ts, int n) {
    int gone = 0;
    for (int i = 0; i < ts->n; i++)
        for (int s = 0; s < KVP_MIKV_T; s++)
            if ((ts->t[i]->valid >> s & 1) && ts->t[i]->pos[s] >= (uint32_t)n) {
                ts->t[i]->valid &= ~(1u << s);
                gone++;
            }
    return gone;
}

static int kvp_mikv_truncate(kvp_kv *kv, int n_pos) {
    kvp_kv_mikv *c = (kvp_kv_mikv *)kv;
    if (n_pos < 0) return kvp_seterr(KVP_EINVAL, "cannot truncate to %d tokens", n_pos);
    if (n_pos >= kv->n_pos) return KVP_OK;
    for (int l = 0; l < kv->shape.n_layers; l++) {
        kvp_qwin *w = &c->win[l];
        w->n = KVP_MAX(0, n_pos - w->start);
        if (w->n == 0) w->start = n_pos;
        for (int h = 0; h < c->nkv; h++) {
            kvp_mikv_head *hh = kvp_mikv_head_of(c, l, h);
            hh->n_hi -= kvp_mikv_forget(&hh->hi, n_pos);
            hh->n_lo -= kvp_mikv_forget(&hh->lo, n_pos);
        }
    }
    kv->n_pos = n_pos;
    return KVP_OK;
}

/* Copies the tokens of a tier list at positions in [pos, pos + n) of head h into k, v. */
static void kvp_mikv_read_tier(const kvp_kv_mikv *c, const kvp_mikv_tiles *ts, int hi, int layer, int h, int pos, int n,
                               float *k, float *v) {
    for (int i = 0; i < ts->n; i++)
        for (int s = 0; s < KVP_MIKV_T; s++) {
            const kvp_mikv_tile *t = ts->t[i];
            if (!(t->valid >> s & 1) || t->pos[s] < (uint32_t)pos || t->pos[s] >= (uint32_t)(pos + n)) continue;
            size_t o = (size_t)(t->pos[s] - (uint32_t)pos) * c->kvd + (size_t)h * c->hd;
            if (hi) kvp_mikv_hi_get(c, t, s, k + o, 0), kvp_mikv_hi_get(c, t, s, v + o, 1);
            else kvp_mikv_lo_get(c, t, s, k + o, 0), kvp_mikv_lo_get(c, t, s, v + o, 1);
            kvp_kx_key_back(&c->kx, layer, h, k + o);
        }
}

static int kvp_mikv_read(const kvp_kv *kv, int layer, int pos, int n, float *k, float *v) {
    const kvp_kv_mikv *c = (const kvp_kv_mikv *)kv;
    int stored = layer >= 0 && layer < kv->shape.n_layers ? c->win[layer].start + c->win[layer].n : 0;
    if (layer < 0 || layer >= kv->shape.n_layers || pos < 0 || n < 0 || pos + n > stored)
        return kvp_seterr(KVP_ERANGE, "KV read of layer %d, positions [%d, %d) outside the %d stored", layer, pos,
                          pos + n, stored);
    const kvp_qwin *w = &c->win[layer];
    for (int h = 0; h < c->nkv; h++) {
        const kvp_mikv_head *hh = kvp_mikv_head_of(c, layer, h);
        kvp_mikv_read_tier(c, &hh->hi, 1, layer, h, pos, n, k, v);
        kvp_mikv_read_tier(c, &hh->lo, 0, layer, h, pos, n, k, v);
    }
    for (int p = KVP_MAX(pos, w->start); p < pos + n; p++)
        kvp_qwin_get(w, p - w->start, k + (size_t)(p - pos) * c->kvd, v + (size_t)(p - pos) * c->kvd);
    return KVP_OK;
}

static void kvp_mikv_free(kvp_kv *kv) {
    kvp_kv_mikv *c = (kvp_kv_mikv *)kv;
    if (c->heads) kvp_mikv_clear(c);
    for (int l = 0; c->win && l < kv->shape.n_layers; l++) kvp_qwin_free(&c->win[l]);
    for (int l = 0; c->wimp && l < kv->shape.n_layers; l++) free(c->wimp[l]);
    for (int i = 0; c->scratch && i < c->n_scratch; i++) kvp_afree(c->scratch[i]);
    kvp_kx_free(&c->kx);
    free(c->heads), free(c->win), free(c->wimp), free(c->wcap), free(c->scratch), free(c->part);
    free(c);
}

static const kvp_kv_vtbl kvp_mikv_vtbl = {
    "mikv", kvp_mikv_begin, kvp_mikv_append, kvp_mikv_attend, kvp_mikv_end,
    kvp_mikv_stats, kvp_mikv_reset, kvp_mikv_truncate, kvp_mikv_read, kvp_mikv_free,
};

/* ---------------------------------------------------------------------------------------
 * Creation.
 * ------------------------------------------------------------------------------------- */

static void kvp_mikv_layout(kvp_kv_mikv *c) {
    const kvp_kv_shape *s = &c->base.shape;
    size_t T = KVP_MIKV_T;
    c->hd = s->head_dim;
    c->nkv = s->n_kv_heads;
    c->kvd = c->hd * c->nkv;
    c->hdp = (c->hd + 7) / 8 * 8;
    c->cp4 = (c->hd + 3) / 4 * 4;
    c->gph = (c->hd + 31) / 32;
    c->qb = KVP_MAX(1, KVP_MIN(16, 64 / (s->n_heads / s->n_kv_heads)));
    c->lds = ((s->n_ctx + 2 * KVP_MIKV_T) + 15) / 16 * 16; /* grows when vacant slots need more */
    c->pos_bytes = s->n_ctx <= 65536 ? 2 : 4;
    if (c->p.hbits == 16) {
        c->hi_ktile = c->hi_vtile = T * (size_t)c->hd * 2;
        c->hi_bytes = 2 * c->hi_ktile;
    } else {
        c->hi_ktile = kvp_qt_ktile_bytes(KVP_MIKV_T, c->hd, 8);
        c->hi_vtile = kvp_qt_vtile_bytes(KVP_MIKV_T, c->hd, 8);
        c->hi_bytes = c->hi_ktile + c->hi_vtile + 4 * (size_t)c->gph * T * sizeof(uint16_t);
    }
    c->lo_ktile = kvp_qt_ktile_bytes(KVP_MIKV_T, c->hd, c->p.lbits);
    c->lo_vtile = kvp_qt_vtile_bytes(KVP_MIKV_T, c->hd, c->p.lbits);
    c->lo_kpar = 2 * (size_t)c->hd + KVP_QSUPER_BYTES;
    c->lo_bytes = c->lo_ktile + c->lo_kpar + c->lo_vtile + (size_t)c->gph * KVP_MIKV_LPAR;
}

static int kvp_mikv_alloc(kvp_kv_mikv *c) {
    const kvp_kv_shape *s = &c->base.shape;
    c->heads = calloc((size_t)s->n_layers * c->nkv, sizeof *c->heads);
    c->win = calloc((size_t)s->n_layers, sizeof *c->win);
    c->wimp = calloc((size_t)s->n_layers, sizeof *c->wimp);
    c->wcap = calloc((size_t)s->n_layers, sizeof *c->wcap);
    c->n_scratch = kvp_pool_size(c->base.pool);
    c->scratch = calloc((size_t)c->n_scratch, sizeof *c->scratch);
    if (!c->heads || !c->win || !c->wimp || !c->wcap || !c->scratch) return KVP_ENOMEM;
    for (int l = 0; l < s->n_layers; l++) kvp_qwin_init(&c->win[l], c->nkv, c->hd);
    size_t bytes;
    kvp_mikv_carve(c, NULL, &bytes);
    for (int i = 0; i < c->n_scratch; i++)
        if (!(c->scratch[i] = kvp_amalloc(bytes))) return KVP_ENOMEM;
    return KVP_OK;
}

/* The canonical spec: every parameter, the outlier control when it is not the default. */
static void kvp_mikv_name(kvp_kv_mikv *c) {
    const kvp_mikv_spec *p = &c->p;
    snprintf(c->base.spec, sizeof c->base.spec, "mikv:h%d:l%d:p%d:r%d%s%s%s", p->hbits, p->lbits, p->pct, p->R,
             p->xmode == KVP_KX_NONE ? "" : ":", p->xmode == KVP_KX_NONE ? "" : kvp_kx_name(p->xmode), p->a8 ? ":a8" : "");
}

int kvp_kv_mikv_new(const char *spec, const kvp_kv_shape *shape, kvp_pool *pool, kvp_kv **out) {
    *out = NULL;
    kvp_mikv_spec p;
    KVP_TRY(kvp_mikv_parse(spec, &p));
    if (shape->head_dim > KVP_QHD_MAX)
        return kvp_seterr(KVP_EUNSUPPORTED, "MiKV cache: head dimension %d exceeds %d", shape->head_dim, KVP_QHD_MAX);
    kvp_kv_mikv *c = calloc(1, sizeof *c);
    if (!c) return kvp_seterr(KVP_ENOMEM, "out of memory creating the KV cache");
    c->base.vt = &kvp_mikv_vtbl;
    c->base.shape = *shape;
    c->base.pool = pool;
    c->p = p;
    kvp_mikv_name(c);
    kvp_mikv_layout(c);
    int rc = kvp_kx_init(&c->kx, p.xmode, shape);
    if (rc == 0 && kvp_mikv_alloc(c) < 0) rc = kvp_seterr(KVP_ENOMEM, "out of memory creating the KV cache");
    if (rc < 0) {
        kvp_mikv_free(&c->base);
        return rc;
    }
    *out = &c->base;
    return KVP_OK;
}
