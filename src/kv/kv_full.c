/*
 * kv_full.c: the full-precision KV cache (F32 or F16 storage), the reference every
 * compressed cache and selection policy is measured against.
 *
 * Memory: per layer, a table of pages of KVP_KV_PAGE tokens, allocated when a position
 * first reaches them, so memory follows the context actually used. A page holds
 *   K: (n_kv_heads, KVP_KV_PAGE, head_dim)  then  V: (n_kv_heads, KVP_KV_PAGE, head_dim)
 * so that one KV head's keys in a page are a contiguous run of rows for the kernels.
 *
 * Attention: one task per (KV head, block of up to `qb` queries), spread over the pool.
 * The query heads that share the KV head (grouped-query attention) and the block's queries
 * are gathered into one matrix, so each cached row is loaded once for all of them.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "kv.h"

typedef struct {
    kvp_kv base;
    int type;           /* KVP_TYPE_F32 or KVP_TYPE_F16 */
    size_t esz;         /* bytes per stored value */
    int n_pages;        /* pages per layer */
    size_t page_bytes;  /* K and V of one page */
    uint8_t **pages;    /* (n_layers, n_pages); NULL until used */
    int qb;             /* queries per attention task */
    int lds;            /* row stride of the score matrix (n_ctx rounded up to a page) */
    void **scratch;     /* per thread (floats): Q block, scores, output block */
    int n_scratch;
    int step_pos, step_n;
} kvp_kv_full;

static size_t kvp_full_scratch_floats(const kvp_kv_full *c) {
    const kvp_kv_shape *s = &c->base.shape;
    size_t rows = (size_t)c->qb * (size_t)(s->n_heads / s->n_kv_heads);
    return rows * (size_t)s->head_dim * 2 + rows * (size_t)c->lds;
}

/* The K (or V when `val`) rows of KV head h in page `pg` of `layer`. */
static inline uint8_t *kvp_full_rows(const kvp_kv_full *c, int layer, int pg, int h, int val) {
    const kvp_kv_shape *s = &c->base.shape;
    uint8_t *page = c->pages[(size_t)layer * (size_t)c->n_pages + (size_t)pg];
    size_t half = c->page_bytes / 2;
    return page + (val ? half : 0) + (size_t)h * KVP_KV_PAGE * (size_t)s->head_dim * c->esz;
}

static int kvp_full_begin(kvp_kv *kv, int pos, int n, const int *tokens) {
    kvp_kv_full *c = (kvp_kv_full *)kv;
    KVP_TRY(kvp_kv_step_check(kv, pos, n));
    c->step_pos = pos;
    c->step_n = n;
    return KVP_OK;
}

static int kvp_full_page(kvp_kv_full *c, int layer, int pg) {
    uint8_t **slot = &c->pages[(size_t)layer * (size_t)c->n_pages + (size_t)pg];
    if (*slot) return KVP_OK;
    *slot = kvp_amalloc(c->page_bytes);
    if (!*slot) return kvp_seterr(KVP_ENOMEM, "out of memory growing the KV cache");
    return KVP_OK;
}

/* Stores one head's row of hd values at token slot t of a page run. */
static void kvp_full_store(const kvp_kv_full *c, uint8_t *rows, int t, const float *x, int hd) {
    if (c->type == KVP_TYPE_F32)
        memcpy(rows + (size_t)t * (size_t)hd * 4, x, (size_t)hd * 4);
    else
        kvp_f32_to_f16_row(x, (uint16_t *)(void *)(rows + (size_t)t * (size_t)hd * 2), hd);
}

static int kvp_full_append(kvp_kv *kv, int layer, int pos, int n, const float *k, const float *v) {
    kvp_kv_full *c = (kvp_kv_full *)kv;
    const kvp_kv_shape *s = &kv->shape;
    int hd = s->head_dim, kvd = s->n_kv_heads * hd;
    for (int i = 0; i < n; i++) {
        int p = pos + i, pg = p / KVP_KV_PAGE, t = p % KVP_KV_PAGE;
        KVP_TRY(kvp_full_page(c, layer, pg));
        for (int h = 0; h < s->n_kv_heads; h++) {
            kvp_full_store(c, kvp_full_rows(c, layer, pg, h, 0), t, k + (size_t)i * kvd + (size_t)h * hd, hd);
            kvp_full_store(c, kvp_full_rows(c, layer, pg, h, 1), t, v + (size_t)i * kvd + (size_t)h * hd, hd);
        }
    }
    return KVP_OK;
}

typedef struct {
    kvp_kv_full *c;
    int layer, pos, n, n_blocks;
    const float *q;
    float *out;
} kvp_full_job;

static void kvp_full_scores(const kvp_kv_full *c, int layer, int h, const float *Q, int nq, int n_vis,
                            float scale, float *S) {
    int hd = c->base.shape.head_dim;
    for (int pg = 0; pg * KVP_KV_PAGE < n_vis; pg++) {
        int cnt = KVP_MIN(KVP_KV_PAGE, n_vis - pg * KVP_KV_PAGE);
        const void *K = kvp_full_rows(c, layer, pg, h, 0);
        if (c->type == KVP_TYPE_F32)
            kvp_attn_scores_f32(K, cnt, hd, Q, nq, hd, scale, S + pg * KVP_KV_PAGE, c->lds);
        else
            kvp_attn_scores_f16(K, cnt, hd, Q, nq, hd, scale, S + pg * KVP_KV_PAGE, c->lds);
    }
}

static void kvp_full_values(const kvp_kv_full *c, int layer, int h, const float *P, int nq, int n_vis,
                            float *Y) {
    int hd = c->base.shape.head_dim;
    memset(Y, 0, sizeof(float) * (size_t)nq * (size_t)hd);
    for (int pg = 0; pg * KVP_KV_PAGE < n_vis; pg++) {
        int cnt = KVP_MIN(KVP_KV_PAGE, n_vis - pg * KVP_KV_PAGE);
        const void *V = kvp_full_rows(c, layer, pg, h, 1);
        if (c->type == KVP_TYPE_F32)
            kvp_attn_values_f32(Y, hd, nq, P + pg * KVP_KV_PAGE, c->lds, V, cnt, hd);
        else
            kvp_attn_values_f16(Y, hd, nq, P + pg * KVP_KV_PAGE, c->lds, V, cnt, hd);
    }
}

/* One task: KV head h, queries [i0, i1) of the step. Row r of the gathered block is query
 * i0 + r / group, head h * group + r % group. */
static void kvp_full_task(void *arg, int chunk, int thread) {
    kvp_full_job *j = arg;
    kvp_kv_full *c = j->c;
    const kvp_kv_shape *s = &c->base.shape;
    int group = s->n_heads / s->n_kv_heads, hd = s->head_dim, qd = s->n_heads * hd;
    int h = chunk / j->n_blocks, i0 = (chunk % j->n_blocks) * c->qb, i1 = KVP_MIN(j->n, i0 + c->qb);
    int nq = (i1 - i0) * group, n_vis = j->pos + i1;
    float *Q = c->scratch[thread], *Y = Q + (size_t)c->qb * group * hd, *S = Y + (size_t)c->qb * group * hd;
    for (int r = 0; r < nq; r++)
        memcpy(Q + (size_t)r * hd, j->q + (size_t)(i0 + r / group) * qd + (size_t)(h * group + r % group) * hd,
               sizeof(float) * (size_t)hd);
    kvp_full_scores(c, j->layer, h, Q, nq, n_vis, 1.0f / sqrtf((float)hd), S);
    for (int r = 0; r < nq; r++) { /* causal mask: query i sees positions <= pos + i */
        float *row = S + (size_t)r * c->lds;
        int vis = j->pos + i0 + r / group + 1;
        kvp_softmax(row, vis);
        memset(row + vis, 0, sizeof(float) * (size_t)(n_vis - vis));
    }
    kvp_full_values(c, j->layer, h, S, nq, n_vis, Y);
    for (int r = 0; r < nq; r++)
        memcpy(j->out + (size_t)(i0 + r / group) * qd + (size_t)(h * group + r % group) * hd,
               Y + (size_t)r * hd, sizeof(float) * (size_t)hd);
}

static int kvp_full_attend(kvp_kv *kv, int layer, int pos, int n, const float *q, float *out) {
    kvp_kv_full *c = (kvp_kv_full *)kv;
    kvp_full_job j = {c, layer, pos, n, (n + c->qb - 1) / c->qb, q, out};
    kvp_pool_run(kv->pool, kvp_full_task, &j, kv->shape.n_kv_heads * j.n_blocks);
    return KVP_OK;
}

static int kvp_full_end(kvp_kv *kv) {
    kvp_kv_full *c = (kvp_kv_full *)kv;
    kv->n_pos = c->step_pos + c->step_n;
    return KVP_OK;
}

static void kvp_full_stats(const kvp_kv *kv, kvp_kv_stats *st) {
    const kvp_kv_full *c = (const kvp_kv_full *)kv;
    const kvp_kv_shape *s = &kv->shape;
    memset(st, 0, sizeof *st);
    st->n_values = (uint64_t)kv->n_pos * (uint64_t)s->n_layers * (uint64_t)s->n_kv_heads *
                   (uint64_t)s->head_dim * 2;
    st->bytes_hot = st->n_values * c->esz;
    st->bits_per_value = st->n_values ? 8.0 * (double)st->bytes_hot / (double)st->n_values : 0;
    st->spec = kv->spec;
}

static int kvp_full_truncate(kvp_kv *kv, int n_pos) {
    if (n_pos < 0) return kvp_seterr(KVP_EINVAL, "cannot truncate to %d tokens", n_pos);
    if (n_pos < kv->n_pos) kv->n_pos = n_pos; /* pages stay allocated for reuse */
    return KVP_OK;
}

static void kvp_full_reset(kvp_kv *kv) { kv->n_pos = 0; }

/* Loads one head's row of hd values from token slot t of a page run. */
static void kvp_full_load(const kvp_kv_full *c, const uint8_t *rows, int t, float *x, int hd) {
    if (c->type == KVP_TYPE_F32)
        memcpy(x, rows + (size_t)t * (size_t)hd * 4, (size_t)hd * 4);
    else
        kvp_f16_to_f32_row((const uint16_t *)(const void *)(rows + (size_t)t * (size_t)hd * 2), x, hd);
}

static int kvp_full_read(const kvp_kv *kv, int layer, int pos, int n, float *k, float *v) {
    const kvp_kv_full *c = (const kvp_kv_full *)kv;
    const kvp_kv_shape *s = &kv->shape;
    if (layer < 0 || layer >= s->n_layers || pos < 0 || n < 0 || pos + n > kv->n_pos)
        return kvp_seterr(KVP_ERANGE, "KV read of layer %d, positions [%d, %d) outside the %d stored", layer, pos,
                          pos + n, kv->n_pos);
    int hd = s->head_dim, kvd = s->n_kv_heads * hd;
    for (int i = 0; i < n; i++) {
        int p = pos + i, pg = p / KVP_KV_PAGE, t = p % KVP_KV_PAGE;
        for (int h = 0; h < s->n_kv_heads; h++) {
            kvp_full_load(c, kvp_full_rows(c, layer, pg, h, 0), t, k + (size_t)i * kvd + (size_t)h * hd, hd);
            kvp_full_load(c, kvp_full_rows(c, layer, pg, h, 1), t, v + (size_t)i * kvd + (size_t)h * hd, hd);
        }
    }
    return KVP_OK;
}

static void kvp_full_free(kvp_kv *kv) {
    kvp_kv_full *c = (kvp_kv_full *)kv;
    if (c->pages)
        for (size_t i = 0; i < (size_t)kv->shape.n_layers * (size_t)c->n_pages; i++) kvp_afree(c->pages[i]);
    kvp_kv_scratch_free(c->scratch, c->n_scratch);
    free(c->pages);
    free(c);
}

static const kvp_kv_vtbl kvp_full_vtbl = {
    "full", kvp_full_begin, kvp_full_append, kvp_full_attend, kvp_full_end,
    kvp_full_stats, kvp_full_reset, kvp_full_truncate, kvp_full_read, kvp_full_free,
};

static int kvp_full_alloc(kvp_kv_full *c) {
    const kvp_kv_shape *s = &c->base.shape;
    c->pages = calloc((size_t)s->n_layers * (size_t)c->n_pages, sizeof *c->pages);
    c->n_scratch = kvp_pool_size(c->base.pool);
    c->scratch = kvp_kv_scratch_new(c->n_scratch, sizeof(float) * kvp_full_scratch_floats(c));
    if (!c->pages || !c->scratch) return kvp_seterr(KVP_ENOMEM, "out of memory creating the KV cache");
    return KVP_OK;
}

int kvp_kv_full_new(int type, const kvp_kv_shape *shape, kvp_pool *pool, kvp_kv **out) {
    *out = NULL;
    if (type != KVP_TYPE_F32 && type != KVP_TYPE_F16)
        return kvp_seterr(KVP_EINVAL, "the full KV cache stores F32 or F16, not %s", kvp_type_name(type));
    kvp_kv_full *c = calloc(1, sizeof *c);
    if (!c) return kvp_seterr(KVP_ENOMEM, "out of memory creating the KV cache");
    c->base.vt = &kvp_full_vtbl;
    c->base.shape = *shape;
    c->base.pool = pool;
    snprintf(c->base.spec, sizeof c->base.spec, "%s", type == KVP_TYPE_F32 ? "f32" : "f16");
    c->type = type;
    c->esz = type == KVP_TYPE_F32 ? 4 : 2;
    c->n_pages = (shape->n_ctx + KVP_KV_PAGE - 1) / KVP_KV_PAGE;
    c->lds = c->n_pages * KVP_KV_PAGE;
    c->page_bytes = 2 * (size_t)shape->n_kv_heads * KVP_KV_PAGE * (size_t)shape->head_dim * c->esz;
    c->qb = KVP_MAX(1, KVP_MIN(16, 64 / (shape->n_heads / shape->n_kv_heads)));
    int rc = kvp_full_alloc(c);
    if (rc < 0) {
        kvp_full_free(&c->base);
        return rc;
    }
    *out = &c->base;
    return KVP_OK;
}
