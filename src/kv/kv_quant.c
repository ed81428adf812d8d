/*
 * kv_quant.c: the KIVI cache ("KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV
 * Cache", Liu et al. 2024): keys quantized per channel over blocks of G tokens, values per
 * token over groups of 32 channels, the most recent R tokens in F16, bit widths of K and V
 * chosen independently. Spec: kXvY[:rR][:gG][:rot|:bal|:none][:a8|:a16], X, Y in 2, 3, 4, 8.
 *
 * Memory. Per layer: an F16 window (quant.h) holding positions [n_blocks * G, n_pos) and
 * the quantized blocks, block b holding positions [b G, b G + G). Block b has
 *   a key tile per KV head        ktile bytes: G tokens x head_dim channels
 *   key parameters per KV head    2 head_dim + 6: 8-bit scale and minimum codes per
 *                                 channel, one F16 super triple
 *   a value tile per KV head      vtile bytes: G tokens x head_dim channels
 *   value parameters per group    2 G + 6: per token, super triple per group
 * and each kind lives in an array of its own per layer, blocks in order per head, so that
 * attention reads every array front to back (kvp_kivi_layer).
 * Value groups are 32 consecutive channels of the kv_dim row, so with head_dim 8 (the
 * stories model) one group spans 4 heads; a head_dim that is not a multiple of 8 groups
 * each head's channels on their own.
 *
 * Aging. end() quantizes the oldest G window tokens of every layer into a block while the
 * window holds at least R + G tokens, so the window keeps the R most recent tokens (and up
 * to G - 1 more) in full precision. A step's own tokens are always in the window: prefill
 * attends in full precision, as KIVI does.
 *
 * Attention. One task per (KV head, block of queries): the head's query rows meet every
 * block through the packed-tile kernels (kernels/kvq.h), then the window through the F16
 * kernels; one softmax over all positions in order. Keys are never dequantized into
 * memory: per block, the query is multiplied by the per-channel scales and rounded to
 * bytes, and the minimums become a bias; per block and value group, the attention weights
 * are multiplied by the per-token scales and rounded to bytes, and the minimums become a
 * bias (see kvq.h for the rounding).
 *
 * MiKV (kv_mikv.c) is this cache at L bits with a high tier of residual tiles on top: when
 * c->hi is set, the kvp_mikv_hi_* hooks of kivi.h run as blocks are made, attended, read,
 * truncated and counted.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "kernels/kvq.h"
#include "kv/kivi.h"

/* ---------------------------------------------------------------------------------------
 * Spec.
 * ------------------------------------------------------------------------------------- */

static int kvp_kivi_bits_ok(int b) { return b == 2 || b == 3 || b == 4 || b == 8; }

/* One byte plane for queries and attention weights by default when keys and values have 4
 * bits or fewer: their codes' rounding dominates (measured KL equal to two planes' at 4 bits
 * and below, docs/kv-quant.md), and decoding is 7-12% faster at 4096 tokens. */
static int kvp_kivi_a8_default(const kvp_kivi_spec *p) { return p->kbits <= 4 && p->vbits <= 4; }

/* Applies one option (kvp_kv_spec_options) to the kvp_kivi_spec at arg; -1 rejects it. */
static int kvp_kivi_option(const char *buf, size_t len, void *arg) {
    kvp_kivi_spec *p = arg;
    int v, used = 0;
    if (kvp_kx_mode(buf) >= 0) p->xmode = kvp_kx_mode(buf);
    else if (!strcmp(buf, "a8")) p->a8 = 1;
    else if (!strcmp(buf, "a16")) p->a8 = 0;
    else if (sscanf(buf, "r%d%n", &v, &used) == 1 && used == (int)len && v >= 0 && v <= (1 << 20)) p->R = v;
    else if (sscanf(buf, "g%d%n", &v, &used) == 1 && used == (int)len && v >= 16 && v <= 256 && v % 16 == 0) p->G = v;
    else return -1;
    return 0;
}

static int kvp_kivi_parse(const char *spec, kvp_kivi_spec *p) {
    *p = (kvp_kivi_spec){0, 0, 128, 32, KVP_KX_NONE, -1}; /* a8 -1: the default, below */
    int used = 0;
    if (sscanf(spec, "k%dv%d%n", &p->kbits, &p->vbits, &used) != 2 || !kvp_kivi_bits_ok(p->kbits) ||
        !kvp_kivi_bits_ok(p->vbits) || kvp_kv_spec_options(spec + used, kvp_kivi_option, p) < 0)
        goto bad;
    if (p->a8 < 0) p->a8 = kvp_kivi_a8_default(p);
    return KVP_OK;
bad:
    return kvp_seterr(KVP_EINVAL,
                      "bad KIVI cache spec '%s': kXvY[:rR][:gG][:rot|:bal|:none][:a8|:a16] with X, Y in 2, 3, 4, 8, "
                      "R >= 0 recent tokens in F16 (default 128), G a multiple of 16 in 16..256 (default 32), "
                      "a8 / a16 for 8-bit / 16-bit queries and weights (default a8 when X, Y <= 4)",
                      spec);
}

/* ---------------------------------------------------------------------------------------
 * Layout.
 * ------------------------------------------------------------------------------------- */

/* The value group of channel ch of head h, and the kv_dim range [*c0, *c1) of group g. */
int kvp_kivi_vgroup(const kvp_kv_kivi *c, int h, int ch) {
    return c->span ? (h * c->hd + ch) / 32 : h * ((c->hd + 31) / 32) + ch / 32;
}

static void kvp_kivi_vrange(const kvp_kv_kivi *c, int g, int *c0, int *c1) {
    if (c->span) {
        *c0 = 32 * g;
        *c1 = KVP_MIN(32 * g + 32, c->kvd);
    } else {
        int gph = (c->hd + 31) / 32, h = g / gph;
        *c0 = h * c->hd + 32 * (g % gph);
        *c1 = h * c->hd + KVP_MIN(32 * (g % gph) + 32, c->hd);
    }
}

/* The parts of block b of layer l: head h's key tile and key parameters, head h's value
 * tile, value group g's parameters. Each part lives in its own array, blocks in order, so
 * that attention streams through memory. */
uint8_t *kvp_kivi_ktile(const kvp_kv_kivi *c, int l, int b, int h) {
    return c->reg[l].kt + ((size_t)h * c->max_blocks + (size_t)b) * c->ktile;
}
static uint8_t *kvp_kivi_kpar(const kvp_kv_kivi *c, int l, int b, int h) {
    return c->reg[l].kp + ((size_t)h * c->max_blocks + (size_t)b) * c->kpar;
}
uint8_t *kvp_kivi_vtile(const kvp_kv_kivi *c, int l, int b, int h) {
    return c->reg[l].vt + ((size_t)h * c->max_blocks + (size_t)b) * c->vtile;
}
static uint8_t *kvp_kivi_vpar(const kvp_kv_kivi *c, int l, int b, int g) {
    return c->reg[l].vp + ((size_t)g * c->max_blocks + (size_t)b) * c->vpar;
}

/* Per-channel scales and minimums of head h's keys in a block. */
void kvp_kivi_kparams(const kvp_kv_kivi *c, int l, int b, int h, float *s, float *m) {
    const uint8_t *p = kvp_kivi_kpar(c, l, b, h);
    kvp_qp_block_get(p, c->hd, s, m);
}

/* Per-token scales and minimums of value group g in a block, as the kernels use them: for
 * 8-bit codes (stored minus 128) the minimum includes 128 s. */
void kvp_kivi_vparams(const kvp_kv_kivi *c, int l, int b, int g, float *s, float *m) {
    const uint8_t *p = kvp_kivi_vpar(c, l, b, g);
    kvp_qp_block_get(p, c->p.G, s, m);
    if (c->p.vbits == 8)
        for (int t = 0; t < c->p.G; t++) m[t] += 128.0f * s[t];
}

/* ---------------------------------------------------------------------------------------
 * Quantizing a block from the window.
 * ------------------------------------------------------------------------------------- */

/* Keys of head h, kf (G, kv_dim) already transformed: per-channel groups. */
static void kvp_kivi_quant_keys(kvp_kv_kivi *c, int l, int b, int h, const float *kf) {
    int G = c->p.G, hd = c->hd, qmax = (1 << c->p.kbits) - 1;
    float lo[KVP_QHD_MAX] = {0}, hi[KVP_QHD_MAX] = {0}, s[KVP_QHD_MAX], m[KVP_QHD_MAX];
    for (int ch = 0; ch < hd; ch++) {
        lo[ch] = hi[ch] = kf[(size_t)h * hd + ch];
        for (int t = 1; t < G; t++) {
            float x = kf[(size_t)t * c->kvd + (size_t)h * hd + ch];
            lo[ch] = x < lo[ch] ? x : lo[ch];
            hi[ch] = x > hi[ch] ? x : hi[ch];
        }
    }
    uint8_t *par = kvp_kivi_kpar(c, l, b, h);
    kvp_qp_block_put(par, lo, hi, hd, qmax, s, m);
    for (int ch = 0; ch < hd; ch++)
        for (int t = 0; t < G; t++)
            c->qc[(size_t)ch * G + t] = kvp_qp_code(kf[(size_t)t * c->kvd + (size_t)h * hd + ch], s[ch], m[ch], qmax);
    kvp_qt_pack_k(c->qc, hd, G, c->p.kbits, kvp_kivi_ktile(c, l, b, h));
}

/* Values vf (G, kv_dim): per-token groups; codes go to c->qc as (G, kv_dim). */
static void kvp_kivi_quant_vgroup(kvp_kv_kivi *c, int l, int b, int g, const float *vf) {
    int G = c->p.G, qmax = (1 << c->p.vbits) - 1, c0, c1;
    float lo[256] = {0}, hi[256] = {0}, s[256], m[256]; /* [0, G) set below */
    kvp_kivi_vrange(c, g, &c0, &c1);
    for (int t = 0; t < G; t++) {
        const float *x = vf + (size_t)t * c->kvd;
        lo[t] = hi[t] = x[c0];
        for (int ch = c0 + 1; ch < c1; ch++) {
            lo[t] = x[ch] < lo[t] ? x[ch] : lo[t];
            hi[t] = x[ch] > hi[t] ? x[ch] : hi[t];
        }
    }
    uint8_t *par = kvp_kivi_vpar(c, l, b, g);
    kvp_qp_block_put(par, lo, hi, G, qmax, s, m);
    for (int t = 0; t < G; t++)
        for (int ch = c0; ch < c1; ch++)
            c->qc[(size_t)t * c->kvd + ch] =
                kvp_qt_vstore(kvp_qp_code(vf[(size_t)t * c->kvd + ch], s[t], m[t], qmax), c->p.vbits);
}

/* Packs head h's value codes from c->qc (G, kv_dim). */
static void kvp_kivi_pack_values(kvp_kv_kivi *c, int l, int b, int h) {
    int G = c->p.G, hd = c->hd;
    uint8_t *codes = c->qc + (size_t)G * c->kvd; /* second half of the scratch: (G, hd) */
    for (int t = 0; t < G; t++) memcpy(codes + (size_t)t * hd, c->qc + (size_t)t * c->kvd + (size_t)h * hd, (size_t)hd);
    kvp_qt_pack_v(codes, G, hd, c->p.vbits, kvp_kivi_vtile(c, l, b, h));
}

/* Quantizes the G oldest window tokens of a layer into block b and drops them. */
static int kvp_kivi_age(kvp_kv_kivi *c, int layer, int b) {
    kvp_qwin *w = &c->win[layer];
    int G = c->p.G;
    float *kf = c->qf, *vf = c->qf + (size_t)G * c->kvd;
    kvp_kx_freeze(&c->kx, layer);
    for (int t = 0; t < G; t++) {
        kvp_qwin_get(w, t, kf + (size_t)t * c->kvd, vf + (size_t)t * c->kvd);
        for (int h = 0; h < c->nkv; h++) kvp_kx_apply(&c->kx, layer, h, kf + (size_t)t * c->kvd + (size_t)h * c->hd, 0);
    }
    for (int h = 0; h < c->nkv; h++) kvp_kivi_quant_keys(c, layer, b, h, kf);
    for (int g = 0; g < c->n_vg; g++) kvp_kivi_quant_vgroup(c, layer, b, g, vf);
    for (int h = 0; h < c->nkv; h++) kvp_kivi_pack_values(c, layer, b, h);
    if (c->hi) KVP_TRY(kvp_mikv_hi_age(c, layer, b, kf, vf));
    kvp_qwin_drop(w, G);
    return KVP_OK;
}

/* Dequantizes block b of a layer: k, v (G, kv_dim), keys back in the original basis. */
static void kvp_kivi_block_read(const kvp_kv_kivi *c, int layer, int b, float *k, float *v) {
    int G = c->p.G, hd = c->hd;
    uint8_t *codes = c->qc;
    float s[KVP_QHD_MAX], m[KVP_QHD_MAX], vs[256], vm[256];
    for (int h = 0; h < c->nkv; h++) {
        kvp_kivi_kparams(c, layer, b, h, s, m);
        kvp_qt_unpack_k(kvp_kivi_ktile(c, layer, b, h), hd, G, c->p.kbits, codes);
        for (int t = 0; t < G; t++) {
            float *row = k + (size_t)t * c->kvd + (size_t)h * hd;
            for (int ch = 0; ch < hd; ch++) row[ch] = m[ch] + s[ch] * (float)codes[(size_t)ch * G + t];
        }
        kvp_qt_unpack_v(kvp_kivi_vtile(c, layer, b, h), G, hd, c->p.vbits, codes);
        for (int ch = 0; ch < hd; ch++) {
            kvp_kivi_vparams(c, layer, b, kvp_kivi_vgroup(c, h, ch), vs, vm);
            for (int t = 0; t < G; t++)
                v[(size_t)t * c->kvd + (size_t)h * hd + ch] = vm[t] + vs[t] * (float)(int8_t)codes[(size_t)t * hd + ch];
        }
        if (c->hi) kvp_mikv_hi_read(c, layer, b, h, k, v);
        for (int t = 0; t < G; t++) kvp_kx_key_back(&c->kx, layer, h, k + (size_t)t * c->kvd + (size_t)h * hd);
    }
}

/* ---------------------------------------------------------------------------------------
 * Steps.
 * ------------------------------------------------------------------------------------- */

static int kvp_kivi_begin(kvp_kv *kv, int pos, int n, const int *tokens) {
    kvp_kv_kivi *c = (kvp_kv_kivi *)kv;
    KVP_TRY(kvp_kv_step_check(kv, pos, n));
    c->step_pos = pos;
    c->step_n = n;
    return KVP_OK;
}

static int kvp_kivi_append(kvp_kv *kv, int layer, int pos, int n, const float *k, const float *v) {
    kvp_kv_kivi *c = (kvp_kv_kivi *)kv;
    kvp_kx_observe(&c->kx, layer, n, k, NULL);
    if (c->hi) KVP_TRY(kvp_mikv_hi_append(c, layer, n));
    return kvp_qwin_append(&c->win[layer], n, k, v);
}

static int kvp_kivi_end(kvp_kv *kv) {
    kvp_kv_kivi *c = (kvp_kv_kivi *)kv;
    int add = c->win[0].n >= c->p.R + c->p.G ? (c->win[0].n - c->p.R) / c->p.G : 0;
    for (int l = 0; l < kv->shape.n_layers; l++)
        for (int b = 0; b < add; b++) KVP_TRY(kvp_kivi_age(c, l, c->n_blocks + b));
    c->n_blocks += add;
    kv->n_pos = c->step_pos + c->step_n;
    return KVP_OK;
}

/* ---------------------------------------------------------------------------------------
 * Attention.
 * ------------------------------------------------------------------------------------- */

/* Carves one thread's scratch into its arrays (rows = qb * group query rows); with base
 * NULL only measures it. */
static kvp_kivi_scr kvp_kivi_carve(const kvp_kv_kivi *c, uint8_t *base, size_t *total) {
    size_t rows = (size_t)c->qb * (size_t)(c->base.shape.n_heads / c->nkv);
    size_t np = (size_t)KVP_MAX(c->hd, c->p.G);
    size_t sz[14] = {rows * c->hd, rows * c->hd, rows * c->lds, rows * c->hdp, rows, rows, rows, rows, np, np,
                     rows * c->cp4, rows * c->cp4, rows * c->p.G, rows * c->p.G};
    void *p[14];
    size_t off = 0;
    for (int i = 0; i < 14; i++) {
        p[i] = base ? base + off : NULL;
        off += ((i < 10 ? sizeof(float) : 1) * sz[i] + 63) & ~(size_t)63;
    }
    *total = off;
    return (kvp_kivi_scr){p[0], p[1], p[2],  p[3],  p[4],  p[5],  p[6], p[7],
                          p[8], p[9], p[10], p[11], p[12], p[13], kvp_kvq_current()};
}

typedef struct {
    kvp_kv_kivi *c;
    int layer, pos, n, n_qblocks;
    const float *q;
    float *out;
} kvp_kivi_job;

/* The kernels' view of n two-level parameters at p (codes sc, mc, then the super triple). */
static kvp_kvq_par kvp_kivi_par(const uint8_t *p, int n, float m_add_s) {
    return (kvp_kvq_par){p, p + n, (const uint16_t *)(const void *)(p + 2 * n), NULL, NULL, m_add_s};
}

void kvp_kivi_tile_scores(const kvp_kv_kivi *c, const kvp_kivi_scr *x, int rows, const kvp_kvq_par *par,
                          const uint8_t *tile, int bits, float *S, int accum) {
    kvp_kvq_bytes qb = {x->iq, c->p.a8 ? NULL : x->iq2, c->cp4, x->alpha, x->beta};
    x->k->query(x->Qx, c->hd, rows, par, c->hd, 1.0f / sqrtf((float)c->hd), &qb);
    kvp_kvq_ktile kt = {tile, bits, c->p.G, c->cp4 / 4, NULL, NULL};
    kvp_kvq_rows qr = {x->iq, c->cp4, rows, x->alpha, x->beta};
    x->k->scores(&kt, &qr, S, c->lds, accum);
    if (c->p.a8) return;
    for (int j = 0; j < rows; j++) x->alpha2[j] = x->alpha[j] / 256.0f;
    kvp_kvq_rows lo = {x->iq2, c->cp4, rows, x->alpha2, x->zero};
    x->k->scores(&kt, &lo, S, c->lds, 1);
}

/* Scores of head h's query rows against block b: x->S[j][b G + t]. */
static void kvp_kivi_block_scores(const kvp_kv_kivi *c, int layer, int b, int h, int rows, const kvp_kivi_scr *x) {
    kvp_kvq_par par = kvp_kivi_par(kvp_kivi_kpar(c, layer, b, h), c->hd, 0);
    kvp_kivi_tile_scores(c, x, rows, &par, kvp_kivi_ktile(c, layer, b, h), c->p.kbits, x->S + (size_t)b * c->p.G, 0);
    if (c->hi) kvp_mikv_hi_scores(c, x, layer, b, h, rows);
}

void kvp_kivi_tile_values(const kvp_kv_kivi *c, const kvp_kivi_scr *x, int rows, const float *P,
                          const kvp_kvq_par *par, const uint8_t *tile, int bits, size_t vrow, int u0, int u1) {
    int G = c->p.G, n_ch = KVP_MIN(8 * (u1 - u0), c->hd - 8 * u0);
    kvp_kvq_bytes wb = {x->W, c->p.a8 ? NULL : x->W2, G, x->alpha, x->beta};
    x->k->weights(P, c->lds, rows, par, G, &wb);
    kvp_kvq_vtile vt = {tile + (size_t)u0 * kvp_kvq_unit_bytes(bits), bits, G / 4, u1 - u0, vrow};
    kvp_kvq_rows wr = {x->W, G, rows, x->alpha, x->beta};
    x->k->values(&vt, &wr, n_ch, x->Y + 8 * u0, c->hdp);
    if (c->p.a8) return;
    for (int j = 0; j < rows; j++) x->alpha2[j] = x->alpha[j] / 255.0f;
    kvp_kvq_rows lo = {x->W2, G, rows, x->alpha2, x->zero};
    x->k->values(&vt, &lo, n_ch, x->Y + 8 * u0, c->hdp);
}

/* Adds head h's attention over block b's values to x->Y, one value group at a time. */
static void kvp_kivi_block_values(const kvp_kv_kivi *c, int layer, int b, int h, int rows, const kvp_kivi_scr *x) {
    int G = c->p.G;
    for (const kvp_kivi_run *r = c->runs + (size_t)h * c->n_runs; r < c->runs + (size_t)(h + 1) * c->n_runs; r++) {
        if (r->u1 <= r->u0) continue;
        kvp_kvq_par par = kvp_kivi_par(kvp_kivi_vpar(c, layer, b, r->g), G, c->p.vbits == 8 ? 128.0f : 0.0f);
        kvp_kivi_tile_values(c, x, rows, x->S + (size_t)b * G, &par, kvp_kivi_vtile(c, layer, b, h), c->p.vbits,
                             c->vrow, r->u0, r->u1);
    }
    if (c->hi) kvp_mikv_hi_values(c, x, layer, b, h, rows);
}

/* Softmax of each query row over the positions it sees (query i sees positions <= pos + i). */
static void kvp_kivi_softmax(const kvp_kv_kivi *c, float *S, int rows, int group, int pos, int i0, int n_cols) {
    for (int r = 0; r < rows; r++) {
        float *row = S + (size_t)r * c->lds;
        int vis = pos + i0 + r / group + 1;
        kvp_kvq_current()->softmax(row, vis);
        memset(row + vis, 0, sizeof(float) * (size_t)(n_cols - vis));
    }
}

/* Asks the memory system for head h's key (or value) tile and parameters of block b. */
static void kvp_kivi_prefetch(const kvp_kv_kivi *c, int layer, int b, int h, int val) {
    if (b >= c->n_blocks) return;
    const uint8_t *t = val ? kvp_kivi_vtile(c, layer, b, h) : kvp_kivi_ktile(c, layer, b, h);
    for (size_t o = 0; o < (val ? c->vtile : c->ktile); o += 64) __builtin_prefetch(t + o);
    if (!val) {
        const uint8_t *p = kvp_kivi_kpar(c, layer, b, h);
        for (size_t o = 0; o < c->kpar + 63; o += 64) __builtin_prefetch(p + o);
        return;
    }
    for (const kvp_kivi_run *r = c->runs + (size_t)h * c->n_runs; r < c->runs + (size_t)(h + 1) * c->n_runs; r++) {
        const uint8_t *p = kvp_kivi_vpar(c, layer, b, r->g);
        for (size_t o = 0; r->u1 > r->u0 && o < c->vpar + 63; o += 64) __builtin_prefetch(p + o);
    }
}

static void kvp_kivi_task(void *arg, int chunk, int thread) {
    const kvp_kivi_job *j = arg;
    const kvp_kv_kivi *c = j->c;
    int group = c->base.shape.n_heads / c->nkv, h = chunk / j->n_qblocks;
    int i0 = (chunk % j->n_qblocks) * c->qb, i1 = KVP_MIN(j->n, i0 + c->qb), rows = (i1 - i0) * group;
    size_t total;
    kvp_kivi_scr x = kvp_kivi_carve(c, c->scratch[thread], &total);
    memset(x.zero, 0, sizeof(float) * (size_t)rows);
    const kvp_qwin *w = &c->win[j->layer];
    int nq = c->n_blocks * c->p.G, n_cols = j->pos + i1;
    kvp_qa_gather(&c->base.shape, j->q, h, i0, i1, x.Qf);
    memcpy(x.Qx, x.Qf, sizeof(float) * (size_t)rows * c->hd);
    for (int r = 0; r < rows; r++) kvp_kx_apply(&c->kx, j->layer, h, x.Qx + (size_t)r * c->hd, 1);
    for (int b = 0; b < c->n_blocks; b++) {
        kvp_kivi_prefetch(c, j->layer, b + 2, h, 0);
        kvp_kivi_block_scores(c, j->layer, b, h, rows, &x);
    }
    kvp_attn_scores_f16(kvp_qwin_rows(w, h, 0), n_cols - nq, c->hd, x.Qf, rows, c->hd, 1.0f / sqrtf((float)c->hd),
                        x.S + nq, c->lds);
    kvp_kivi_softmax(c, x.S, rows, group, j->pos, i0, n_cols);
    if (c->hi) kvp_mikv_hi_collect(c, &x, j->layer, chunk, rows, n_cols);
    memset(x.Y, 0, sizeof(float) * (size_t)rows * c->hdp);
    for (int b = 0; b < c->n_blocks; b++) {
        kvp_kivi_prefetch(c, j->layer, b + 2, h, 1);
        kvp_kivi_block_values(c, j->layer, b, h, rows, &x);
    }
    kvp_attn_values_f16(x.Y, c->hdp, rows, x.S + nq, c->lds, kvp_qwin_rows(w, h, 1), n_cols - nq, c->hd);
    kvp_qa_scatter(&c->base.shape, x.Y, c->hdp, h, i0, i1, j->out);
}

static int kvp_kivi_attend(kvp_kv *kv, int layer, int pos, int n, const float *q, float *out) {
    kvp_kv_kivi *c = (kvp_kv_kivi *)kv;
    kvp_kx_observe(&c->kx, layer, n, NULL, q);
    kvp_kivi_job j = {c, layer, pos, n, (n + c->qb - 1) / c->qb, q, out};
    if (c->hi) KVP_TRY(kvp_mikv_hi_prepare(c, layer, j.n_qblocks));
    kvp_pool_run(kv->pool, kvp_kivi_task, &j, c->nkv * j.n_qblocks);
    if (c->hi) kvp_mikv_hi_absorb(c, layer);
    return KVP_OK;
}

/* ---------------------------------------------------------------------------------------
 * Statistics, reset, truncation, read-back.
 * ------------------------------------------------------------------------------------- */

static void kvp_kivi_stats(const kvp_kv *kv, kvp_kv_stats *st) {
    const kvp_kv_kivi *c = (const kvp_kv_kivi *)kv;
    const kvp_kv_shape *s = &kv->shape;
    memset(st, 0, sizeof *st);
    st->n_values = (uint64_t)kv->n_pos * (uint64_t)s->n_layers * (uint64_t)c->kvd * 2;
    uint64_t win = 0;
    for (int l = 0; l < s->n_layers; l++) win += (uint64_t)c->win[l].n * (uint64_t)c->kvd * 2 * sizeof(uint16_t);
    st->bytes_hot = (uint64_t)c->n_blocks * s->n_layers * c->block_bytes + win + kvp_kx_bytes(&c->kx);
    if (c->hi) st->bytes_hot += kvp_mikv_hi_bytes(c);
    st->bits_per_value = st->n_values ? 8.0 * (double)st->bytes_hot / (double)st->n_values : 0;
    st->spec = kv->spec;
}

static void kvp_kivi_reset(kvp_kv *kv) {
    kvp_kv_kivi *c = (kvp_kv_kivi *)kv;
    for (int l = 0; l < kv->shape.n_layers; l++) c->win[l].n = c->win[l].start = 0;
    if (c->hi) kvp_mikv_hi_forget(c, 0);
    c->n_blocks = 0;
    kv->n_pos = 0;
}

/* Keeps positions [0, n) when n falls inside block b0: its first tokens go back to the
 * window (as the values the block represents), the blocks from b0 on are forgotten. */
static int kvp_kivi_unblock(kvp_kv_kivi *c, int n) {
    int G = c->p.G, b0 = n / G, keep = n - b0 * G;
    float *k = c->qf, *v = c->qf + (size_t)G * c->kvd;
    for (int l = 0; l < c->base.shape.n_layers; l++) {
        c->win[l].n = 0;
        c->win[l].start = b0 * G;
        if (keep == 0) continue;
        kvp_kivi_block_read(c, l, b0, k, v);
        if (c->hi) KVP_TRY(kvp_mikv_hi_append(c, l, keep));
        KVP_TRY(kvp_qwin_append(&c->win[l], keep, k, v));
    }
    if (c->hi) kvp_mikv_hi_forget(c, b0);
    c->n_blocks = b0;
    return KVP_OK;
}

static int kvp_kivi_truncate(kvp_kv *kv, int n_pos) {
    kvp_kv_kivi *c = (kvp_kv_kivi *)kv;
    if (n_pos < 0) return kvp_seterr(KVP_EINVAL, "cannot truncate to %d tokens", n_pos);
    if (n_pos >= kv->n_pos) return KVP_OK;
    int nq = c->n_blocks * c->p.G;
    if (n_pos >= nq)
        for (int l = 0; l < kv->shape.n_layers; l++) c->win[l].n = n_pos - nq;
    else
        KVP_TRY(kvp_kivi_unblock(c, n_pos));
    kv->n_pos = n_pos;
    return KVP_OK;
}

static int kvp_kivi_read(const kvp_kv *kv, int layer, int pos, int n, float *k, float *v) {
    const kvp_kv_kivi *c = (const kvp_kv_kivi *)kv;
    int G = c->p.G, nq = c->n_blocks * G, kvd = c->kvd;
    int stored = layer >= 0 && layer < kv->shape.n_layers ? nq + c->win[layer].n : 0; /* also during a step */
    if (layer < 0 || layer >= kv->shape.n_layers || pos < 0 || n < 0 || pos + n > stored)
        return kvp_seterr(KVP_ERANGE, "KV read of layer %d, positions [%d, %d) outside the %d stored", layer, pos,
                          pos + n, stored);
    float *bk = c->qf, *bv = c->qf + (size_t)G * kvd;
    for (int p = pos; p < pos + n;) {
        if (p >= nq) {
            kvp_qwin_get(&c->win[layer], p - nq, k + (size_t)(p - pos) * kvd, v + (size_t)(p - pos) * kvd);
            p++;
            continue;
        }
        int b = p / G, e = KVP_MIN(pos + n, (b + 1) * G);
        kvp_kivi_block_read(c, layer, b, bk, bv);
        memcpy(k + (size_t)(p - pos) * kvd, bk + (size_t)(p - b * G) * kvd, sizeof(float) * (size_t)(e - p) * kvd);
        memcpy(v + (size_t)(p - pos) * kvd, bv + (size_t)(p - b * G) * kvd, sizeof(float) * (size_t)(e - p) * kvd);
        p = e;
    }
    return KVP_OK;
}

static void kvp_kivi_free(kvp_kv *kv) {
    kvp_kv_kivi *c = (kvp_kv_kivi *)kv;
    for (int l = 0; c->reg && l < kv->shape.n_layers; l++) {
        free(c->reg[l].kt);
        free(c->reg[l].kp);
        free(c->reg[l].vt);
        free(c->reg[l].vp);
    }
    for (int l = 0; c->win && l < kv->shape.n_layers; l++) kvp_qwin_free(&c->win[l]);
    kvp_kx_free(&c->kx);
    kvp_mikv_hi_free(c->hi);
    free(c->reg);
    free(c->win);
    free(c->runs);
    kvp_kv_scratch_free(c->scratch, c->n_scratch);
    kvp_afree(c->qf);
    kvp_afree(c->qc);
    free(c);
}

static const kvp_kv_vtbl kvp_kivi_vtbl = {
    "kivi", kvp_kivi_begin, kvp_kivi_append, kvp_kivi_attend, kvp_kivi_end,
    kvp_kivi_stats, kvp_kivi_reset, kvp_kivi_truncate, kvp_kivi_read, kvp_kivi_free,
};

/* ---------------------------------------------------------------------------------------
 * Creation.
 * ------------------------------------------------------------------------------------- */

static void kvp_kivi_layout(kvp_kv_kivi *c) {
    const kvp_kv_shape *s = &c->base.shape;
    int G = c->p.G;
    c->hd = s->head_dim;
    c->nkv = s->n_kv_heads;
    c->kvd = c->hd * c->nkv;
    c->hdp = (c->hd + 7) / 8 * 8;
    c->cp4 = (c->hd + 3) / 4 * 4;
    c->span = c->hd % 8 == 0;
    c->n_vg = c->span ? (c->kvd + 31) / 32 : c->nkv * ((c->hd + 31) / 32);
    c->ktile = kvp_qt_ktile_bytes(G, c->hd, c->p.kbits);
    c->kpar = 2 * (size_t)c->hd + KVP_QSUPER_BYTES;
    c->vtile = kvp_qt_vtile_bytes(G, c->hd, c->p.vbits);
    c->vrow = kvp_qt_vrow_bytes(c->hd, c->p.vbits);
    c->vpar = 2 * (size_t)G + KVP_QSUPER_BYTES;
    c->block_bytes = (size_t)c->nkv * (c->ktile + c->kpar + c->vtile) + (size_t)c->n_vg * c->vpar;
    c->max_blocks = s->n_ctx / G + 1;
    c->qb = KVP_MAX(1, KVP_MIN(16, 64 / (s->n_heads / s->n_kv_heads)));
    c->lds = (s->n_ctx + 15) / 16 * 16;
    c->n_runs = c->hdp / 8;
}

/* Groups the units of every head into runs of one value group. */
static int kvp_kivi_make_runs(kvp_kv_kivi *c) {
    if (!(c->runs = calloc((size_t)c->nkv * c->n_runs, sizeof *c->runs))) return KVP_ENOMEM;
    for (int h = 0; h < c->nkv; h++) {
        kvp_kivi_run *r = c->runs + (size_t)h * c->n_runs;
        int k = -1;
        for (int u = 0; u < c->hdp / 8; u++) {
            int g = kvp_kivi_vgroup(c, h, 8 * u);
            if (k < 0 || r[k].g != g) r[++k] = (kvp_kivi_run){u, u, g};
            r[k].u1 = u + 1;
        }
    }
    return KVP_OK;
}

static int kvp_kivi_alloc(kvp_kv_kivi *c) {
    const kvp_kv_shape *s = &c->base.shape;
    if (!(c->reg = calloc((size_t)s->n_layers, sizeof *c->reg))) return KVP_ENOMEM;
    for (int l = 0; l < s->n_layers; l++) {
        kvp_kivi_layer *r = &c->reg[l];
        size_t mb = (size_t)c->max_blocks;
        r->kt = calloc(mb * c->nkv, c->ktile);
        r->kp = calloc(mb * c->nkv, c->kpar);
        r->vt = calloc(mb * c->nkv, c->vtile);
        r->vp = calloc(mb * c->n_vg, c->vpar);
        if (!r->kt || !r->kp || !r->vt || !r->vp) return KVP_ENOMEM;
    }
    c->win = calloc((size_t)s->n_layers, sizeof *c->win);
    c->qf = kvp_amalloc(sizeof(float) * 2 * (size_t)c->p.G * c->kvd);
    c->qc = kvp_amalloc(2 * (size_t)c->p.G * c->kvd);
    if (!c->win || !c->qf || !c->qc || kvp_kivi_make_runs(c) < 0) return KVP_ENOMEM;
    for (int l = 0; l < s->n_layers; l++) kvp_qwin_init(&c->win[l], c->nkv, c->hd);
    kvp_kivi_carve(c, NULL, &c->scratch_bytes);
    c->n_scratch = kvp_pool_size(c->base.pool);
    c->scratch = kvp_kv_scratch_new(c->n_scratch, c->scratch_bytes);
    return c->scratch ? KVP_OK : KVP_ENOMEM;
}

int kvp_kivi_create(const kvp_kivi_spec *p, const kvp_kv_shape *shape, kvp_pool *pool, kvp_kv_kivi **out) {
    *out = NULL;
    if (shape->head_dim > KVP_QHD_MAX)
        return kvp_seterr(KVP_EUNSUPPORTED, "quantized KV cache: head dimension %d exceeds %d", shape->head_dim,
                          KVP_QHD_MAX);
    kvp_kv_kivi *c = calloc(1, sizeof *c);
    if (!c) return kvp_seterr(KVP_ENOMEM, "out of memory creating the KV cache");
    c->base.vt = &kvp_kivi_vtbl;
    c->base.shape = *shape;
    c->base.pool = pool;
    c->p = *p;
    kvp_kivi_layout(c);
    int rc = kvp_kx_init(&c->kx, p->xmode, shape);
    if (rc == 0 && kvp_kivi_alloc(c) < 0) rc = kvp_seterr(KVP_ENOMEM, "out of memory creating the KV cache");
    if (rc < 0) {
        kvp_kivi_free(&c->base);
        return rc;
    }
    *out = c;
    return KVP_OK;
}

int kvp_kv_kivi_new(const char *spec, const kvp_kv_shape *shape, kvp_pool *pool, kvp_kv **out) {
    *out = NULL;
    kvp_kivi_spec p;
    KVP_TRY(kvp_kivi_parse(spec, &p));
    kvp_kv_kivi *c;
    KVP_TRY(kvp_kivi_create(&p, shape, pool, &c));
    const char *planes = p.a8 == kvp_kivi_a8_default(&p) ? "" : p.a8 ? ":a8" : ":a16"; /* only when not the default */
    snprintf(c->base.spec, sizeof c->base.spec, "k%dv%d:r%d:g%d%s%s%s", p.kbits, p.vbits, p.R, p.G,
             p.xmode == KVP_KX_NONE ? "" : ":", p.xmode == KVP_KX_NONE ? "" : kvp_kx_name(p.xmode), planes);
    *out = &c->base;
    return KVP_OK;
}
