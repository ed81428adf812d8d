/*
 * kv_mikv.c: the MiKV cache ("No Token Left Behind: Reliable KV Cache Compression via
 * Importance-Aware Mixed Precision Quantization", Yang et al. 2024). Every token of every
 * KV head is kept; the important ones at high precision, the rest at low precision.
 * Spec: mikv[:lL][:hH][:pP][:wW][:rR][:gG][:rot|:bal|:none][:a8]: L = 2, 3 or 4 low bits
 * (default 3), H = L + 2 .. L + 4 high bits (default L + 4), P percent of the blocks kept
 * high for their importance (default 5), W most recent quantized tokens kept high (default
 * 64), R recent tokens in F16 (default 0), G tokens per block (default 32).
 *
 * Low tier. A KIVI cache at L bits (kv_quant.c): blocks of G tokens, keys per channel,
 * values per token and group of 32 channels, scale and minimum in 16 bits, the F16 window
 * of the R most recent tokens (plus the up to G - 1 tokens not yet in a block). Every token
 * is in it.
 *
 * High tier: residual tiles. A block of a KV head is high when it also holds the residual
 * of its tokens on top of the L-bit codes: x - (m + s code) lies in [-s/2, s/2] (the
 * encoder never clamps, quant.h), and is quantized to H - L bits on that interval with no
 * parameters of its own (scale s / (2^(H-L) - 1), minimum -s/2, from the block's). So a
 * high token costs H - L more bits per value and nothing else; demoting a block frees its
 * residual and leaves the L-bit block exactly as KIVI would have made it: no requantizing,
 * no compounding of errors, and the full-precision values (gone by then) are never needed.
 * A block enters high when it leaves the window (its full-precision values exist then);
 * demoted blocks are never promoted (their precision could not be restored).
 *
 * Importance, per layer, KV head and block: the attention its tokens receive, summed over
 * the query heads that share the KV head and over every query so far (H2O's accumulated
 * attention, GQA-pooled), starting with what they received in the window, and divided by
 * the number of queries that have seen them: H2O's sum favours old blocks, which have been
 * seen by more queries (on sotu-1M at 20% high without the recent blocks, mean KL 2.3e-3
 * with the sum against 4.1e-4 with the mean). The newest ceil(W / G) blocks stay high
 * (recency is importance the past queries cannot show yet); of the older ones, the P% of
 * all blocks with the most importance stay high, the least important high block being
 * demoted whenever the share is exceeded.
 *
 * Granularity. Importance and precision are per block of G tokens and KV head rather than
 * per token: the residual then needs no positions, slot masks or per-token parameters (2
 * bytes of position per token and head alone cost 1 bit per value at head dimension 8),
 * and attention on a high block is two passes of the same packed-tile kernels (kvq.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "kv/kivi.h"

typedef struct {
    int lbits, hbits, pct, W, R, G, xmode, a8;
} kvp_mikv_spec;

struct kvp_mikv_hi {
    int rbits, qr, pct, n_recent;     /* residual bits, 2^rbits - 1, P, blocks kept for recency */
    size_t rktile, rvtile, rvrow, slot_bytes;
    int n_layers, n_lh, max_blocks;
    int16_t *slot;   /* (n_layers, n_kv_heads, max_blocks): residual slot of a block, -1 when low */
    int16_t *owner;  /* (n_layers, n_kv_heads, max_blocks): block of a slot, -1 when free */
    float *imp;      /* (n_layers, n_kv_heads, max_blocks): importance of the block in a slot */
    int *hw;         /* (n_layers, n_kv_heads): slots ever used (the touched memory) */
    uint8_t **mem;   /* (n_layers, n_kv_heads): slots of rktile + rvtile bytes, reserved with calloc */
    float **wimp;    /* (n_layers): importance of the window rows, (n_kv_heads, wcap) */
    int *wcap;
    float *part;     /* importance gathered by the attention tasks of a step */
    size_t part_cap;
    int part_stride, n_qblocks;
};

/* ---------------------------------------------------------------------------------------
 * Spec.
 * ------------------------------------------------------------------------------------- */

/* Applies one option (kvp_kv_spec_options) to the kvp_mikv_spec at arg; -1 rejects it. */
static int kvp_mikv_option(const char *buf, size_t len, void *arg) {
    kvp_mikv_spec *p = arg;
    int v, used = 0;
    char k = buf[0];
    if (kvp_kx_mode(buf) >= 0) p->xmode = kvp_kx_mode(buf);
    else if (!strcmp(buf, "a8")) p->a8 = 1;
    else if (!strchr("lhpwrg", k) || sscanf(buf + 1, "%d%n", &v, &used) != 1 || used != (int)len - 1 || v < 0)
        return -1;
    else if (k == 'l') p->lbits = v;
    else if (k == 'h') p->hbits = v;
    else if (k == 'p') p->pct = v;
    else if (k == 'w') p->W = v;
    else if (k == 'r') p->R = v;
    else p->G = v;
    return 0;
}

static int kvp_mikv_valid(const kvp_mikv_spec *p) {
    int r = p->hbits - p->lbits;
    return p->lbits >= 2 && p->lbits <= 4 && r >= 2 && r <= 4 && p->pct <= 100 && p->W <= (1 << 20) &&
           p->R <= (1 << 20) && p->G >= 16 && p->G <= 256 && p->G % 16 == 0;
}

static int kvp_mikv_parse(const char *spec, kvp_mikv_spec *p) {
    *p = (kvp_mikv_spec){3, -1, 5, 64, 0, 32, KVP_KX_NONE, 0};
    if (strncmp(spec, "mikv", 4) || kvp_kv_spec_options(spec + 4, kvp_mikv_option, p) < 0) goto bad;
    if (p->hbits < 0) p->hbits = p->lbits + 4;
    if (kvp_mikv_valid(p)) return KVP_OK;
bad:
    return kvp_seterr(KVP_EINVAL,
                      "bad MiKV cache spec '%s': mikv[:lL][:hH][:pP][:wW][:rR][:gG][:rot|:bal|:none][:a8] with L = 2, "
                      "3 or 4 low-precision bits (default 3), H = L+2 .. L+4 high-precision bits (default L+4), P = "
                      "0..100 percent of blocks kept high by importance (default 5), W recent tokens kept high "
                      "(default 64), R recent tokens in F16 (default 0), G tokens per block (16..256, multiple of 16)",
                      spec);
}

/* ---------------------------------------------------------------------------------------
 * Blocks and slots.
 * ------------------------------------------------------------------------------------- */

static size_t kvp_mikv_lh(const kvp_kv_kivi *c, int layer, int h) { return (size_t)layer * c->nkv + (size_t)h; }

static int16_t *kvp_mikv_slot(const kvp_kv_kivi *c, int layer, int h, int b) {
    return c->hi->slot + kvp_mikv_lh(c, layer, h) * c->hi->max_blocks + b;
}

/* The importance of a high block (kept with its slot). */
static float *kvp_mikv_imp(const kvp_kv_kivi *c, int layer, int h, int b) {
    return c->hi->imp + kvp_mikv_lh(c, layer, h) * c->hi->max_blocks + *kvp_mikv_slot(c, layer, h, b);
}

/* The residual key tile of a slot; its value tile follows. */
static uint8_t *kvp_mikv_rk(const kvp_kv_kivi *c, int layer, int h, int s) {
    return c->hi->mem[kvp_mikv_lh(c, layer, h)] + (size_t)s * c->hi->slot_bytes;
}

/* A free slot of (layer, h): the first vacant one, else a new one. */
static int kvp_mikv_slot_take(kvp_kv_kivi *c, int layer, int h, int b) {
    kvp_mikv_hi *hi = c->hi;
    size_t lh = kvp_mikv_lh(c, layer, h);
    int16_t *owner = hi->owner + lh * hi->max_blocks;
    int s = 0;
    while (s < hi->hw[lh] && owner[s] >= 0) s++;
    if (s == hi->hw[lh]) hi->hw[lh]++;
    owner[s] = (int16_t)b;
    return s;
}

static void kvp_mikv_demote(kvp_kv_kivi *c, int layer, int h, int b) {
    int16_t *slot = kvp_mikv_slot(c, layer, h, b);
    if (*slot >= 0) c->hi->owner[kvp_mikv_lh(c, layer, h) * c->hi->max_blocks + *slot] = -1;
    *slot = -1;
}

/* The importance of block b with accumulated attention imp, per query that has seen it: the
 * mean number of queries its tokens have seen so far is n_pos - b G - (G - 1) / 2. */
static float kvp_mikv_score(const kvp_kv_kivi *c, int b, float imp) {
    float seen = (float)(c->step_pos + c->step_n - b * c->p.G) - 0.5f * (float)(c->p.G - 1);
    return imp / KVP_MAX(seen, 1.0f);
}

/* The least important high block among blocks [0, n) of (layer, h), or -1 (ties: older). */
static int kvp_mikv_least(const kvp_kv_kivi *c, int layer, int h, int n) {
    int best = -1;
    float least = 0;
    for (int b = 0; b < n; b++) {
        if (*kvp_mikv_slot(c, layer, h, b) < 0) continue;
        float sc = kvp_mikv_score(c, b, *kvp_mikv_imp(c, layer, h, b));
        if (best < 0 || sc < least) best = b, least = sc;
    }
    return best;
}

/* Block b is new, with importance imp: demotes the least important blocks older than the
 * recent ones (b itself when it is not recent) while more than P% of the b + 1 blocks are
 * high. Returns whether b stays high. */
static int kvp_mikv_balance(kvp_kv_kivi *c, int layer, int h, int b, float imp) {
    int old = b + 1 - c->hi->n_recent, cap = (int)((int64_t)(b + 1) * c->hi->pct / 100);
    int n_old = KVP_MIN(old, b), high = 1, n_high = old > b;
    for (int i = 0; i < n_old; i++) n_high += *kvp_mikv_slot(c, layer, h, i) >= 0;
    for (; n_high > cap; n_high--) {
        int least = kvp_mikv_least(c, layer, h, n_old);
        if (old > b && high &&
            (least < 0 || kvp_mikv_score(c, b, imp) <= kvp_mikv_score(c, least, *kvp_mikv_imp(c, layer, h, least))))
            high = 0;
        else kvp_mikv_demote(c, layer, h, least);
    }
    return high;
}

/* ---------------------------------------------------------------------------------------
 * Residuals.
 * ------------------------------------------------------------------------------------- */

/* The residual code of x in a group (s, m) of the low tier: x minus its low-tier value, in
 * [-s/2, s/2], on qr + 1 levels. */
static uint8_t kvp_mikv_rcode(float x, float s, float m, int qmax, int qr) {
    float e = x - (m + s * (float)kvp_qp_code(x, s, m, qmax));
    return kvp_qp_code(e, s / (float)qr, -0.5f * s, qr);
}

/* Residual key tile of head h of block b from kf (G, kv_dim, transformed). */
static void kvp_mikv_res_keys(kvp_kv_kivi *c, int layer, int b, int h, const float *kf, uint8_t *tile) {
    int G = c->p.G, hd = c->hd, qmax = (1 << c->p.kbits) - 1, qr = c->hi->qr;
    float s[KVP_QHD_MAX], m[KVP_QHD_MAX];
    uint8_t *codes = c->qc;
    kvp_kivi_kparams(c, layer, b, h, s, m);
    for (int ch = 0; ch < hd; ch++)
        for (int t = 0; t < G; t++)
            codes[(size_t)ch * G + t] = kvp_mikv_rcode(kf[(size_t)t * c->kvd + (size_t)h * hd + ch], s[ch], m[ch], qmax, qr);
    kvp_qt_pack_k(codes, hd, G, c->hi->rbits, tile);
}

/* Residual value tile of head h of block b from vf (G, kv_dim). */
static void kvp_mikv_res_values(kvp_kv_kivi *c, int layer, int b, int h, const float *vf, uint8_t *tile) {
    int G = c->p.G, hd = c->hd, qmax = (1 << c->p.vbits) - 1, qr = c->hi->qr;
    float s[256], m[256];
    uint8_t *codes = c->qc;
    for (const kvp_kivi_run *r = c->runs + (size_t)h * c->n_runs; r < c->runs + (size_t)(h + 1) * c->n_runs; r++) {
        if (r->u1 <= r->u0) continue;
        kvp_kivi_vparams(c, layer, b, r->g, s, m);
        for (int ch = 8 * r->u0; ch < KVP_MIN(8 * r->u1, hd); ch++)
            for (int t = 0; t < G; t++)
                codes[(size_t)t * hd + ch] = kvp_mikv_rcode(vf[(size_t)t * c->kvd + (size_t)h * hd + ch], s[t], m[t], qmax, qr);
    }
    kvp_qt_pack_v(codes, G, hd, c->hi->rbits, tile);
}

/* Moves the window importance of the G oldest rows of (layer, h) to block b. */
static float kvp_mikv_take_imp(kvp_kv_kivi *c, int layer, int h) {
    float *wi = c->hi->wimp[layer] + (size_t)h * c->hi->wcap[layer], sum = 0;
    int G = c->p.G, n = c->win[layer].n;
    for (int t = 0; t < G; t++) sum += wi[t];
    memmove(wi, wi + G, sizeof(float) * (size_t)(n - G));
    return sum;
}

int kvp_mikv_hi_age(kvp_kv_kivi *c, int layer, int b, const float *kf, const float *vf) {
    for (int h = 0; h < c->nkv; h++) {
        int16_t *slot = kvp_mikv_slot(c, layer, h, b);
        float imp = kvp_mikv_take_imp(c, layer, h);
        if (!kvp_mikv_balance(c, layer, h, b, imp)) continue;
        *slot = (int16_t)kvp_mikv_slot_take(c, layer, h, b);
        *kvp_mikv_imp(c, layer, h, b) = imp;
        uint8_t *rk = kvp_mikv_rk(c, layer, h, *slot);
        kvp_mikv_res_keys(c, layer, b, h, kf, rk);
        kvp_mikv_res_values(c, layer, b, h, vf, rk + c->hi->rktile);
    }
    return KVP_OK;
}

int kvp_mikv_hi_append(kvp_kv_kivi *c, int layer, int n) {
    kvp_mikv_hi *hi = c->hi;
    int rows = c->win[layer].n + n;
    if (rows > hi->wcap[layer]) {
        int cap = KVP_MAX(rows, 2 * hi->wcap[layer]);
        float *w = calloc((size_t)c->nkv * (size_t)cap, sizeof(float));
        if (!w) return kvp_seterr(KVP_ENOMEM, "out of memory (MiKV window)");
        for (int h = 0; h < c->nkv && hi->wimp[layer]; h++)
            memcpy(w + (size_t)h * cap, hi->wimp[layer] + (size_t)h * hi->wcap[layer], sizeof(float) * (size_t)hi->wcap[layer]);
        free(hi->wimp[layer]);
        hi->wimp[layer] = w;
        hi->wcap[layer] = cap;
    }
    for (int h = 0; h < c->nkv; h++)
        memset(hi->wimp[layer] + (size_t)h * hi->wcap[layer] + c->win[layer].n, 0, sizeof(float) * (size_t)n);
    return KVP_OK;
}

/* ---------------------------------------------------------------------------------------
 * Attention.
 * ------------------------------------------------------------------------------------- */

void kvp_mikv_hi_scores(const kvp_kv_kivi *c, const kvp_kivi_scr *x, int layer, int b, int h, int rows) {
    int slot = *kvp_mikv_slot(c, layer, h, b);
    if (slot < 0) return;
    float s[KVP_QHD_MAX], m[KVP_QHD_MAX];
    kvp_kivi_kparams(c, layer, b, h, s, m);
    for (int ch = 0; ch < c->hd; ch++) {
        x->ps[ch] = s[ch] / (float)c->hi->qr;
        x->pm[ch] = -0.5f * s[ch];
    }
    kvp_kvq_par par = {NULL, NULL, NULL, x->ps, x->pm, 0};
    kvp_kivi_tile_scores(c, x, rows, &par, kvp_mikv_rk(c, layer, h, slot), c->hi->rbits, x->S + (size_t)b * c->p.G, 1);
}

void kvp_mikv_hi_values(const kvp_kv_kivi *c, const kvp_kivi_scr *x, int layer, int b, int h, int rows) {
    int slot = *kvp_mikv_slot(c, layer, h, b), G = c->p.G;
    if (slot < 0) return;
    float s[256], m[256];
    const uint8_t *rv = kvp_mikv_rk(c, layer, h, slot) + c->hi->rktile;
    for (const kvp_kivi_run *r = c->runs + (size_t)h * c->n_runs; r < c->runs + (size_t)(h + 1) * c->n_runs; r++) {
        if (r->u1 <= r->u0) continue;
        kvp_kivi_vparams(c, layer, b, r->g, s, m);
        for (int t = 0; t < G; t++) {
            x->ps[t] = s[t] / (float)c->hi->qr;
            x->pm[t] = -0.5f * s[t];
        }
        kvp_kvq_par par = {NULL, NULL, NULL, x->ps, x->pm, 0};
        kvp_kivi_tile_values(c, x, rows, x->S + (size_t)b * G, &par, rv, c->hi->rbits, c->hi->rvrow, r->u0, r->u1);
    }
}

int kvp_mikv_hi_prepare(kvp_kv_kivi *c, int layer, int n_qblocks) {
    kvp_mikv_hi *hi = c->hi;
    hi->part_stride = c->n_blocks + c->win[layer].n;
    hi->n_qblocks = n_qblocks;
    size_t need = (size_t)hi->part_stride * (size_t)(c->nkv * n_qblocks);
    if (need > hi->part_cap) {
        float *p = realloc(hi->part, sizeof(float) * need);
        if (!p) return kvp_seterr(KVP_ENOMEM, "out of memory (MiKV importance)");
        hi->part = p;
        hi->part_cap = need;
    }
    memset(hi->part, 0, sizeof(float) * need);
    return KVP_OK;
}

void kvp_mikv_hi_collect(const kvp_kv_kivi *c, const kvp_kivi_scr *x, int layer, int task, int rows, int n_cols) {
    float *part = c->hi->part + (size_t)task * c->hi->part_stride;
    int G = c->p.G, nq = c->n_blocks * G;
    int h = task / c->hi->n_qblocks;
    for (int b = 0; b < c->n_blocks; b++) /* only high blocks keep an importance */
        for (int r = 0; r < rows && *kvp_mikv_slot(c, layer, h, b) >= 0; r++)
            for (int t = 0; t < G; t++) part[b] += x->S[(size_t)r * c->lds + (size_t)b * G + (size_t)t];
    for (int r = 0; r < rows; r++)
        for (int t = nq; t < n_cols; t++) part[c->n_blocks + t - nq] += x->S[(size_t)r * c->lds + (size_t)t];
}

void kvp_mikv_hi_absorb(kvp_kv_kivi *c, int layer) {
    kvp_mikv_hi *hi = c->hi;
    int n_qblocks = hi->n_qblocks;
    for (int h = 0; h < c->nkv; h++) {
        float *wi = hi->wimp[layer] + (size_t)h * hi->wcap[layer];
        for (int q = 0; q < n_qblocks; q++) {
            const float *part = hi->part + (size_t)(h * n_qblocks + q) * hi->part_stride;
            for (int b = 0; b < c->n_blocks; b++)
                if (*kvp_mikv_slot(c, layer, h, b) >= 0) *kvp_mikv_imp(c, layer, h, b) += part[b];
            for (int t = 0; t < c->win[layer].n; t++) wi[t] += part[c->n_blocks + t];
        }
    }
}

/* ---------------------------------------------------------------------------------------
 * Read-back, statistics, truncation.
 * ------------------------------------------------------------------------------------- */

void kvp_mikv_hi_read(const kvp_kv_kivi *c, int layer, int b, int h, float *k, float *v) {
    int slot = *kvp_mikv_slot(c, layer, h, b), G = c->p.G, hd = c->hd, qr = c->hi->qr;
    if (slot < 0) return;
    uint8_t *codes = c->qc + (size_t)G * c->kvd; /* the second half of the block scratch */
    const uint8_t *rk = kvp_mikv_rk(c, layer, h, slot);
    float s[KVP_QHD_MAX], m[KVP_QHD_MAX], vs[256], vm[256];
    kvp_kivi_kparams(c, layer, b, h, s, m);
    kvp_qt_unpack_k(rk, hd, G, c->hi->rbits, codes);
    for (int t = 0; t < G; t++)
        for (int ch = 0; ch < hd; ch++)
            k[(size_t)t * c->kvd + (size_t)h * hd + ch] += s[ch] * ((float)codes[(size_t)ch * G + t] / (float)qr - 0.5f);
    kvp_qt_unpack_v(rk + c->hi->rktile, G, hd, c->hi->rbits, codes);
    for (int ch = 0; ch < hd; ch++) {
        kvp_kivi_vparams(c, layer, b, kvp_kivi_vgroup(c, h, ch), vs, vm);
        for (int t = 0; t < G; t++)
            v[(size_t)t * c->kvd + (size_t)h * hd + ch] += vs[t] * ((float)codes[(size_t)t * hd + ch] / (float)qr - 0.5f);
    }
}

/* Every byte the tier holds: the slots ever used (their pages are touched) with their owner
 * block and importance, a slot index per block and KV head, an importance per window row
 * and KV head. */
uint64_t kvp_mikv_hi_bytes(const kvp_kv_kivi *c) {
    const kvp_mikv_hi *hi = c->hi;
    uint64_t bytes = 0;
    for (int i = 0; i < hi->n_lh; i++) bytes += (uint64_t)hi->hw[i] * (hi->slot_bytes + sizeof(int16_t) + sizeof(float));
    bytes += (uint64_t)hi->n_lh * (uint64_t)c->n_blocks * sizeof(int16_t);
    for (int l = 0; l < c->base.shape.n_layers; l++) bytes += (uint64_t)c->win[l].n * c->nkv * sizeof(float);
    return bytes;
}

void kvp_mikv_hi_forget(kvp_kv_kivi *c, int b0) {
    kvp_mikv_hi *hi = c->hi;
    for (int l = 0; l < c->base.shape.n_layers; l++)
        for (int h = 0; h < c->nkv; h++)
            for (int b = b0; b < c->n_blocks; b++) kvp_mikv_demote(c, l, h, b);
    if (b0 == 0) memset(hi->hw, 0, sizeof(int) * (size_t)hi->n_lh);
}

void kvp_mikv_hi_free(kvp_mikv_hi *hi) {
    if (!hi) return;
    for (int i = 0; hi->mem && i < hi->n_lh; i++) free(hi->mem[i]);
    for (int l = 0; hi->wimp && l < hi->n_layers; l++) free(hi->wimp[l]);
    free(hi->slot), free(hi->imp), free(hi->owner), free(hi->hw), free(hi->mem), free(hi->wimp), free(hi->wcap);
    free(hi->part);
    free(hi);
}

/* ---------------------------------------------------------------------------------------
 * Creation.
 * ------------------------------------------------------------------------------------- */

static int kvp_mikv_hi_alloc(kvp_kv_kivi *c, const kvp_mikv_spec *p) {
    kvp_mikv_hi *hi = c->hi = calloc(1, sizeof *hi);
    if (!hi) return KVP_ENOMEM;
    int G = p->G, nl = c->base.shape.n_layers;
    hi->rbits = p->hbits - p->lbits;
    hi->qr = (1 << hi->rbits) - 1;
    hi->pct = p->pct;
    hi->n_recent = (p->W + G - 1) / G;
    hi->rktile = kvp_qt_ktile_bytes(G, c->hd, hi->rbits);
    hi->rvtile = kvp_qt_vtile_bytes(G, c->hd, hi->rbits);
    hi->rvrow = kvp_qt_vrow_bytes(c->hd, hi->rbits);
    hi->slot_bytes = hi->rktile + hi->rvtile;
    hi->n_layers = nl;
    hi->n_lh = nl * c->nkv;
    hi->max_blocks = c->max_blocks;
    size_t n = (size_t)hi->n_lh * (size_t)hi->max_blocks;
    hi->slot = malloc(sizeof(int16_t) * n);
    hi->owner = malloc(sizeof(int16_t) * n);
    hi->imp = calloc(n, sizeof(float));
    hi->hw = calloc((size_t)hi->n_lh, sizeof(int));
    hi->mem = calloc((size_t)hi->n_lh, sizeof *hi->mem);
    hi->wimp = calloc((size_t)nl, sizeof *hi->wimp);
    hi->wcap = calloc((size_t)nl, sizeof(int));
    if (!hi->slot || !hi->owner || !hi->imp || !hi->hw || !hi->mem || !hi->wimp || !hi->wcap) return KVP_ENOMEM;
    for (size_t i = 0; i < n; i++) hi->slot[i] = hi->owner[i] = -1;
    for (int i = 0; i < hi->n_lh; i++)
        if (!(hi->mem[i] = calloc((size_t)hi->max_blocks, hi->slot_bytes))) return KVP_ENOMEM;
    return KVP_OK;
}

/* The canonical spec: every parameter, the outlier control when it is not the default. */
static void kvp_mikv_name(kvp_kv_kivi *c, const kvp_mikv_spec *p) {
    char g[16] = "";
    if (p->G != 32) snprintf(g, sizeof g, ":g%d", p->G);
    snprintf(c->base.spec, sizeof c->base.spec, "mikv:l%d:h%d:p%d:w%d:r%d%s%s%s%s", p->lbits, p->hbits, p->pct, p->W,
             p->R, g, p->xmode == KVP_KX_NONE ? "" : ":", p->xmode == KVP_KX_NONE ? "" : kvp_kx_name(p->xmode),
             p->a8 ? ":a8" : "");
}

int kvp_kv_mikv_new(const char *spec, const kvp_kv_shape *shape, kvp_pool *pool, kvp_kv **out) {
    *out = NULL;
    kvp_mikv_spec p;
    KVP_TRY(kvp_mikv_parse(spec, &p));
    kvp_kivi_spec ks = {p.lbits, p.lbits, p.R, p.G, p.xmode, p.a8};
    if (shape->n_ctx / p.G + 1 > INT16_MAX)
        return kvp_seterr(KVP_EUNSUPPORTED, "MiKV cache: a context of %d tokens exceeds %d blocks of %d", shape->n_ctx,
                          INT16_MAX - 1, p.G);
    kvp_kv_kivi *c;
    KVP_TRY(kvp_kivi_create(&ks, shape, pool, &c));
    if (kvp_mikv_hi_alloc(c, &p) < 0) {
        kvp_kv_free(&c->base);
        return kvp_seterr(KVP_ENOMEM, "out of memory creating the KV cache");
    }
    kvp_mikv_name(c, &p);
    *out = &c->base;
    return KVP_OK;
}
