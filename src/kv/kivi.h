/*
 * kivi.h: the KIVI cache's state (internal to kv_quant.c and kv_mikv.c). MiKV is a KIVI
 * cache at L bits plus a high tier of residual tiles (kv_mikv.c): kv_quant.c calls the
 * kvp_mikv_hi_* hooks below whenever c->hi is set.
 */
#ifndef KVP_KV_KIVI_H
#define KVP_KV_KIVI_H

#include "kernels/kvq.h"
#include "kv/quant.h"

typedef struct kvp_mikv_hi kvp_mikv_hi;

typedef struct {
    int kbits, vbits, R, G, xmode;
    int a8; /* 1: queries and weights in one byte plane (faster, 8-bit rounding) */
} kvp_kivi_spec;

typedef struct {
    int u0, u1, g; /* units [u0, u1) of a head share value group g */
} kvp_kivi_run;

/* The arrays of one layer: key tiles (n_kv_heads, max_blocks, ktile), key parameters
 * (n_kv_heads, max_blocks, kpar), value tiles (n_kv_heads, max_blocks, vtile), value
 * parameters (n_vgroups, max_blocks, vpar). Reserved for the whole context with calloc, so
 * the pages of blocks not yet written are never touched. */
typedef struct {
    uint8_t *kt, *kp, *vt, *vp;
} kvp_kivi_layer;

typedef struct {
    kvp_kv base;
    kvp_kivi_spec p;
    int hd, nkv, kvd, hdp, cp4, qb, lds;
    int span;               /* value groups run along kv_dim, across heads */
    int n_vg;               /* value groups per token */
    kvp_kivi_run *runs;     /* (n_kv_heads, n_runs) */
    int n_runs;
    size_t ktile, kpar, vtile, vpar, vrow, block_bytes;
    int max_blocks, n_blocks;
    kvp_kivi_layer *reg;    /* (n_layers) */
    kvp_qwin *win;          /* (n_layers) */
    kvp_kxform kx;
    float *qf;              /* quantization scratch: K and V of a block, (2, G, kv_dim) */
    uint8_t *qc;            /* codes of a block, (G, kv_dim) */
    void **scratch;         /* per thread (kvp_kv_scratch_new), scratch_bytes each */
    int n_scratch;
    size_t scratch_bytes;
    int step_pos, step_n;
    kvp_mikv_hi *hi;        /* MiKV's high tier, or NULL for KIVI (kv_mikv.c) */
} kvp_kv_kivi;

typedef struct {
    float *Qf, *Qx, *S, *Y, *alpha, *beta, *alpha2, *zero;
    float *ps, *pm;         /* (max(head_dim, G)) float parameters of a residual tile */
    int8_t *iq, *iq2;       /* query bytes and their residual plane */
    uint8_t *W, *W2;        /* weight bytes and their residual plane */
    const kvp_kvq_table *k; /* the kernels */
} kvp_kivi_scr;

/* Creates a KIVI cache from a parsed spec (the canonical name is set by the caller). */
int kvp_kivi_create(const kvp_kivi_spec *p, const kvp_kv_shape *shape, kvp_pool *pool, kvp_kv_kivi **out);

/* Parts of block b of layer l (see kv_quant.c): head h's key tile and parameters, value tile,
 * value group g's parameters; decoded parameters; the value group of a head's channel. */
uint8_t *kvp_kivi_ktile(const kvp_kv_kivi *c, int l, int b, int h);
uint8_t *kvp_kivi_vtile(const kvp_kv_kivi *c, int l, int b, int h);
void kvp_kivi_kparams(const kvp_kv_kivi *c, int l, int b, int h, float *s, float *m);
void kvp_kivi_vparams(const kvp_kv_kivi *c, int l, int b, int g, float *s, float *m);
int kvp_kivi_vgroup(const kvp_kv_kivi *c, int h, int ch);

/* Scores of rows against a key tile of `bits` with parameters par, into S (accum: add). */
void kvp_kivi_tile_scores(const kvp_kv_kivi *c, const kvp_kivi_scr *x, int rows, const kvp_kvq_par *par,
                          const uint8_t *tile, int bits, float *S, int accum);
/* Adds the weighted values of a value tile slice (units [u0, u1) of a head, `bits`, rows
 * vrow bytes apart) with per-token parameters par to x->Y, weights P (rows, lds). */
void kvp_kivi_tile_values(const kvp_kv_kivi *c, const kvp_kivi_scr *x, int rows, const float *P,
                          const kvp_kvq_par *par, const uint8_t *tile, int bits, size_t vrow, int u0, int u1);

/* ---------------------------------------------------------------------------------------
 * MiKV hooks (kv_mikv.c), called by kv_quant.c when c->hi is set.
 * ------------------------------------------------------------------------------------- */
/* Window tokens appended to a layer (their importance starts at 0). */
int kvp_mikv_hi_append(kvp_kv_kivi *c, int layer, int n);
/* Block b of a layer was just quantized from kf, vf (G, kv_dim; keys transformed), the
 * window's G oldest tokens: makes it high (residual tiles from the full-precision values),
 * demoting the least important high blocks beyond the tier's share. */
int kvp_mikv_hi_age(kvp_kv_kivi *c, int layer, int b, const float *kf, const float *vf);
/* Attention: adds the residual scores (or values) of block b of head h when it is high. */
void kvp_mikv_hi_scores(const kvp_kv_kivi *c, const kvp_kivi_scr *x, int layer, int b, int h, int rows);
void kvp_mikv_hi_values(const kvp_kv_kivi *c, const kvp_kivi_scr *x, int layer, int b, int h, int rows);
/* Importance: task `task` (KV head task / n_qblocks) adds its rows' attention (x->S, n_cols
 * columns) to its part; attend() prepares the parts of its n_kv_heads * n_qblocks tasks
 * before and absorbs them after, task by task in order (independent of the threads). */
int kvp_mikv_hi_prepare(kvp_kv_kivi *c, int layer, int n_qblocks);
void kvp_mikv_hi_collect(const kvp_kv_kivi *c, const kvp_kivi_scr *x, int layer, int task, int rows, int n_cols);
void kvp_mikv_hi_absorb(kvp_kv_kivi *c, int layer);
/* Adds the residuals of head h in block b, when it is high, to the block's dequantized keys
 * (transformed basis) and values k, v (G, kv_dim). */
void kvp_mikv_hi_read(const kvp_kv_kivi *c, int layer, int b, int h, float *k, float *v);
/* Bytes the tier holds; forgetting blocks >= b0 (truncation); reset; free. */
uint64_t kvp_mikv_hi_bytes(const kvp_kv_kivi *c);
void kvp_mikv_hi_forget(kvp_kv_kivi *c, int b0);
void kvp_mikv_hi_free(kvp_mikv_hi *hi);

#endif
