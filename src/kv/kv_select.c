/*
 * kv_select.c: the eviction cache (select.h): a token store whose streams a policy trims to
 * the budget after every step, and the dispatch from a policy spec to the right cache.
 *
 * A step over tokens [pos, pos + n):
 *   append   the token store appends the rows to every (layer, KV head) stream;
 *   attend   one task per KV head (and block of queries, unless the policy accumulates
 *            attention, whose sums must not race): the group's query heads are gathered,
 *            kvp_sel_attend runs over the stream with the causal mask by position, and for
 *            H2O-style scoring the softmax weights are added to the slots' accumulators.
 *            SnapKV-style policies also keep each layer's last `window` query rows;
 *   end      the budget B = budget_at(pos + n); the policy scores the streams (the window
 *            queries' attention, recomputed over what is stored, or the accumulators),
 *            splits the budget over layers, and picks; the store compacts. After end()
 *            every stream of layer l holds at most its layer's budget.
 * Memory: (budget + one step) slots per stream, plus the query window.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "kv/select.h"

typedef struct {
    float *q, *s, *y;  /* (rows, hd), (rows, lds), (rows, hd) */
    void *kscr;        /* the packed-tile attention's scratch (quantized stores) */
    int *qpos;         /* (max(qb, window)) */
    int max_att;       /* the most rows one query attended to in this step */
} kvp_ev_scratch;

typedef struct {
    kvp_kv base;
    kvp_tstore *ts;
    const kvp_policy *pol;
    kvp_sel_cfg cfg;
    kvp_budget budget;
    int quant; /* 1: the store holds KQ rows (kXvY) */
    int step_pos, step_n, qb, group, last_budget, max_att;
    /* the query window (KVP_SCORE_WINDOW): per layer `window` rows of q_dim, a ring */
    float *ring;
    int *ring_pos, *ring_n, *ring_next;
    /* per-thread scratch */
    kvp_ev_scratch *scr;
    int n_scr, scr_rows, scr_lds;
    /* per stream: scores and keep marks, and their capacity; per layer budgets */
    float **score;
    uint8_t **keep;
    int *cap, *per_layer;
} kvp_kv_evict;

static int kvp_ev_streams(const kvp_kv_evict *c) { return c->base.shape.n_layers * c->base.shape.n_kv_heads; }

/* ---- scratch ---- */

static void kvp_ev_scratch_free(kvp_kv_evict *c) {
    for (int i = 0; c->scr && i < c->n_scr; i++) {
        kvp_afree(c->scr[i].q);
        kvp_afree(c->scr[i].s);
        kvp_afree(c->scr[i].y);
        kvp_afree(c->scr[i].kscr);
        free(c->scr[i].qpos);
        c->scr[i] = (kvp_ev_scratch){0};
    }
}

/* Makes every thread's scratch hold `rows` query rows over `lds` stored slots. */
static int kvp_ev_scratch_fit(kvp_kv_evict *c, int rows, int lds) {
    if (rows <= c->scr_rows && lds <= c->scr_lds) return KVP_OK;
    rows = KVP_MAX(rows, c->scr_rows);
    lds = KVP_MAX(lds + 64, c->scr_lds);
    kvp_ev_scratch_free(c);
    size_t hd = (size_t)c->base.shape.head_dim;
    for (int i = 0; i < c->n_scr; i++) {
        kvp_ev_scratch *s = &c->scr[i];
        s->q = kvp_amalloc(sizeof(float) * (size_t)rows * hd);
        s->y = kvp_amalloc(sizeof(float) * (size_t)rows * hd);
        s->s = kvp_amalloc(sizeof(float) * (size_t)rows * (size_t)lds);
        s->qpos = malloc(sizeof(int) * (size_t)rows);
        s->kscr = c->quant ? kvp_amalloc(kvp_sel_kq_scratch(rows, (int)hd)) : NULL;
        if (!s->q || !s->y || !s->s || !s->qpos || (c->quant && !s->kscr)) {
            c->scr_rows = c->scr_lds = 0;
            return kvp_seterr(KVP_ENOMEM, "out of memory for attention scratch (%d x %d)", rows, lds);
        }
    }
    c->scr_rows = rows;
    c->scr_lds = lds;
    return KVP_OK;
}

/* The largest stream of a layer. */
static int kvp_ev_max_n(const kvp_kv_evict *c, int layer) {
    int m = 0;
    for (int h = 0; h < c->base.shape.n_kv_heads; h++) m = KVP_MAX(m, kvp_tstore_stream(c->ts, layer, h)->n);
    return m;
}

/* ---- begin / append ---- */

static int kvp_ev_begin(kvp_kv *kv, int pos, int n, const int *tokens) {
    kvp_kv_evict *c = (kvp_kv_evict *)kv;
    (void)tokens;
    KVP_TRY(kvp_kv_step_check(kv, pos, n));
    c->step_pos = pos;
    c->step_n = n;
    c->max_att = 0;
    for (int i = 0; i < c->n_scr; i++) c->scr[i].max_att = 0;
    return KVP_OK;
}

static int kvp_ev_append(kvp_kv *kv, int layer, int pos, int n, const float *k, const float *v) {
    kvp_kv_evict *c = (kvp_kv_evict *)kv;
    return c->ts->vt->append(c->ts, layer, pos, n, k, v);
}

/* ---- attend ---- */

typedef struct {
    kvp_kv_evict *c;
    int layer, pos, n, n_blocks;
    const float *q;
    float *out;
} kvp_ev_job;

/* Gathers the query rows of KV head h for queries [i0, i0 + cnt): row r = query i0 + r /
 * group, head h * group + r % group. */
static void kvp_ev_gather(const kvp_kv_shape *s, const float *q, int h, int i0, int cnt, float *Q) {
    int group = s->n_heads / s->n_kv_heads, hd = s->head_dim, qd = s->n_heads * hd;
    for (int r = 0; r < cnt * group; r++)
        memcpy(Q + (size_t)r * hd, q + (size_t)(i0 + r / group) * qd + (size_t)(h * group + r % group) * hd,
               sizeof(float) * (size_t)hd);
}

static void kvp_ev_scatter(const kvp_kv_shape *s, const float *Y, int h, int i0, int cnt, float *out) {
    int group = s->n_heads / s->n_kv_heads, hd = s->head_dim, qd = s->n_heads * hd;
    for (int r = 0; r < cnt * group; r++)
        memcpy(out + (size_t)(i0 + r / group) * qd + (size_t)(h * group + r % group) * hd, Y + (size_t)r * hd,
               sizeof(float) * (size_t)hd);
}

/* Adds the attention weights of `rows` rows (pooled over the group) to the accumulators. */
static void kvp_ev_accumulate(const kvp_ev_scratch *w, int rows, int lds, kvp_tstream *st, int n_aux) {
    for (int r = 0; r < rows; r++) {
        const float *p = w->s + (size_t)r * lds;
        for (int t = 0; t < st->n; t++) st->aux[(size_t)t * n_aux] += p[t];
    }
}

/* Queries [i0, i0 + cnt) of the step against KV head h's stream. */
static void kvp_ev_block(kvp_ev_job *j, kvp_ev_scratch *w, int h, int i0, int cnt) {
    kvp_kv_evict *c = j->c;
    const kvp_kv_shape *s = &c->base.shape;
    kvp_tstream *st = kvp_tstore_stream(c->ts, j->layer, h);
    kvp_rows run[2];
    int nr = c->ts->vt->rows(c->ts, j->layer, h, run, 2);
    for (int i = 0; i < cnt; i++) w->qpos[i] = j->pos + i0 + i;
    kvp_ev_gather(s, j->q, h, i0, cnt, w->q);
    kvp_attn_io io = {w->q, cnt * c->group, w->qpos, c->group, 1.0f / sqrtf((float)s->head_dim), w->s,
                      c->scr_lds, w->y, NULL, w->kscr};
    kvp_sel_attend(run, nr, s->head_dim, &io);
    if (c->cfg.score == KVP_SCORE_ACC) kvp_ev_accumulate(w, cnt * c->group, c->scr_lds, st, c->ts->n_aux);
    int lo = 0; /* rows the last query saw: slots at positions <= its own */
    while (lo < st->n && st->pos[lo] <= j->pos + i0 + cnt - 1) lo++;
    w->max_att = KVP_MAX(w->max_att, lo);
    kvp_ev_scatter(s, w->y, h, i0, cnt, j->out);
}

static void kvp_ev_task(void *arg, int chunk, int thread) {
    kvp_ev_job *j = arg;
    kvp_kv_evict *c = j->c;
    int h = chunk / j->n_blocks, b = chunk % j->n_blocks;
    int per = (j->n + j->n_blocks - 1) / j->n_blocks, i0 = b * per, i1 = KVP_MIN(j->n, i0 + per);
    for (int i = i0; i < i1; i += c->qb) kvp_ev_block(j, &c->scr[thread], h, i, KVP_MIN(c->qb, i1 - i));
}

/* Keeps the last `window` query rows of the layer (oldest overwritten first). */
static void kvp_ev_ring_push(kvp_kv_evict *c, int layer, int pos, int n, const float *q) {
    int W = c->cfg.window, qd = c->base.shape.n_heads * c->base.shape.head_dim;
    for (int i = KVP_MAX(0, n - W); i < n; i++) {
        int slot = c->ring_next[layer];
        memcpy(c->ring + ((size_t)layer * W + (size_t)slot) * (size_t)qd, q + (size_t)i * qd, sizeof(float) * (size_t)qd);
        c->ring_pos[(size_t)layer * W + (size_t)slot] = pos + i;
        c->ring_next[layer] = (slot + 1) % W;
        c->ring_n[layer] = KVP_MIN(W, c->ring_n[layer] + 1);
    }
}

static int kvp_ev_attend(kvp_kv *kv, int layer, int pos, int n, const float *q, float *out) {
    kvp_kv_evict *c = (kvp_kv_evict *)kv;
    KVP_TRY(kvp_ev_scratch_fit(c, c->qb * c->group, kvp_ev_max_n(c, layer)));
    int nb = c->cfg.score == KVP_SCORE_ACC ? 1 : (n + c->qb - 1) / c->qb;
    kvp_ev_job j = {c, layer, pos, n, nb, q, out};
    kvp_pool_run(kv->pool, kvp_ev_task, &j, kv->shape.n_kv_heads * nb);
    if (c->cfg.score == KVP_SCORE_WINDOW) kvp_ev_ring_push(c, layer, pos, n, q);
    return KVP_OK;
}

/* ---- end: scoring, budgets, eviction ---- */

/* Window score of stream (layer, h): the attention each slot receives from the layer's
 * window queries (softmax over the stored slots, causal), summed over the group's heads. */
static void kvp_ev_window_score(kvp_kv_evict *c, kvp_ev_scratch *w, int layer, int h, float *score) {
    const kvp_kv_shape *s = &c->base.shape;
    int W = c->cfg.window, nw = c->ring_n[layer], hd = s->head_dim, qd = s->n_heads * hd, g = c->group;
    kvp_tstream *st = kvp_tstore_stream(c->ts, layer, h);
    for (int i = 0; i < nw; i++) {
        int slot = (c->ring_next[layer] - nw + i + W) % W;
        w->qpos[i] = c->ring_pos[(size_t)layer * W + (size_t)slot];
        for (int r = 0; r < g; r++)
            memcpy(w->q + ((size_t)i * g + (size_t)r) * hd,
                   c->ring + ((size_t)layer * W + (size_t)slot) * (size_t)qd + (size_t)(h * g + r) * hd,
                   sizeof(float) * (size_t)hd);
    }
    kvp_rows run[2];
    int nr = c->ts->vt->rows(c->ts, layer, h, run, 2);
    kvp_attn_io io = {w->q, nw * g, w->qpos, g, 1.0f / sqrtf((float)hd), w->s, c->scr_lds, w->y, NULL, w->kscr};
    kvp_sel_attend(run, nr, hd, &io);
    memset(score, 0, sizeof(float) * (size_t)st->n);
    for (int r = 0; r < nw * g; r++)
        for (int t = 0; t < st->n; t++) score[t] += w->s[(size_t)r * c->scr_lds + t];
}

static void kvp_ev_score_task(void *arg, int chunk, int thread) {
    kvp_kv_evict *c = arg;
    int layer = chunk / c->base.shape.n_kv_heads, h = chunk % c->base.shape.n_kv_heads;
    kvp_tstream *st = kvp_tstore_stream(c->ts, layer, h);
    if (c->cfg.score == KVP_SCORE_WINDOW) kvp_ev_window_score(c, &c->scr[thread], layer, h, c->score[chunk]);
    else if (c->cfg.score == KVP_SCORE_ACC)
        for (int t = 0; t < st->n; t++) c->score[chunk][t] = st->aux[(size_t)t * c->ts->n_aux];
}

/* Grows the per-stream score and keep buffers to the streams' sizes. */
static int kvp_ev_buffers(kvp_kv_evict *c) {
    for (int i = 0; i < kvp_ev_streams(c); i++) {
        int n = c->ts->st[i].n;
        if (n <= c->cap[i]) continue;
        float *s = realloc(c->score[i], sizeof(float) * (size_t)n);
        if (s) c->score[i] = s;
        uint8_t *k = s ? realloc(c->keep[i], (size_t)n) : NULL;
        if (k) c->keep[i] = k;
        if (!s || !k) return kvp_seterr(KVP_ENOMEM, "out of memory scoring the KV cache");
        c->cap[i] = n;
    }
    return KVP_OK;
}

static kvp_sel_view kvp_ev_view(const kvp_kv_evict *c, int *n, const int **pos) {
    for (int i = 0; i < kvp_ev_streams(c); i++) {
        n[i] = c->ts->st[i].n;
        pos[i] = c->ts->st[i].pos;
    }
    kvp_sel_view v = {c->base.shape.n_layers, c->base.shape.n_kv_heads, &c->cfg, n, pos,
                      (const float *const *)c->score};
    return v;
}

typedef struct {
    kvp_kv_evict *c;
    const kvp_sel_view *v;
} kvp_ev_pick_job;

static void kvp_ev_pick_task(void *arg, int layer, int thread) {
    kvp_ev_pick_job *j = arg;
    kvp_kv_evict *c = j->c;
    int nk = c->base.shape.n_kv_heads, b = c->per_layer[layer];
    (void)thread;
    if (kvp_ev_max_n(c, layer) <= b) return;
    c->pol->pick(j->v, layer, b, c->keep + (size_t)layer * nk);
    for (int h = 0; h < nk; h++) c->ts->vt->compact(c->ts, layer, h, c->keep[(size_t)layer * nk + h]);
}

/* 1 when some stream may exceed its layer's budget. */
static int kvp_ev_over(const kvp_kv_evict *c, int budget) {
    for (int l = 0; l < c->base.shape.n_layers; l++)
        if (kvp_ev_max_n(c, l) > (c->pol->budgets ? KVP_MIN(budget, c->cfg.window) : budget)) return 1;
    return 0;
}

static int kvp_ev_end(kvp_kv *kv) {
    kvp_kv_evict *c = (kvp_kv_evict *)kv;
    const kvp_kv_shape *s = &kv->shape;
    kv->n_pos = c->step_pos + c->step_n;
    int B = c->last_budget = kvp_budget_at(&c->budget, kv->n_pos);
    for (int i = 0; i < c->n_scr; i++) c->max_att = KVP_MAX(c->max_att, c->scr[i].max_att);
    if (!kvp_ev_over(c, B)) return KVP_OK;
    KVP_TRY(kvp_ev_buffers(c));
    int max_n = 0;
    for (int l = 0; l < s->n_layers; l++) max_n = KVP_MAX(max_n, kvp_ev_max_n(c, l));
    KVP_TRY(kvp_ev_scratch_fit(c, KVP_MAX(c->qb, c->cfg.window) * c->group, max_n));
    if (c->cfg.score != KVP_SCORE_NONE) kvp_pool_run(kv->pool, kvp_ev_score_task, c, kvp_ev_streams(c));
    int *n = malloc(sizeof(int) * (size_t)kvp_ev_streams(c));
    const int **pos = malloc(sizeof(int *) * (size_t)kvp_ev_streams(c));
    if (!n || !pos) {
        free(n);
        free(pos);
        return kvp_seterr(KVP_ENOMEM, "out of memory evicting from the KV cache");
    }
    kvp_sel_view v = kvp_ev_view(c, n, pos);
    if (c->pol->budgets) c->pol->budgets(&v, B, c->per_layer);
    else for (int l = 0; l < s->n_layers; l++) c->per_layer[l] = B;
    kvp_ev_pick_job j = {c, &v};
    kvp_pool_run(kv->pool, kvp_ev_pick_task, &j, s->n_layers);
    free(n);
    free(pos);
    return KVP_OK;
}

/* ---- the other calls ---- */

static void kvp_ev_stats(const kvp_kv *kv, kvp_kv_stats *st) {
    const kvp_kv_evict *c = (const kvp_kv_evict *)kv;
    const kvp_kv_shape *s = &kv->shape;
    memset(st, 0, sizeof *st);
    st->n_values = (uint64_t)kv->n_pos * (uint64_t)s->n_layers * (uint64_t)s->n_kv_heads * (uint64_t)s->head_dim * 2;
    st->bytes_hot = c->ts->vt->bytes(c->ts);
    if (c->ring) st->bytes_hot += (uint64_t)s->n_layers * (uint64_t)c->cfg.window *
                                  ((uint64_t)s->n_heads * (uint64_t)s->head_dim * 4 + 4);
    st->bits_per_value = st->n_values ? 8.0 * (double)st->bytes_hot / (double)st->n_values : 0;
    st->spec = kv->spec;
}

static void kvp_ev_reset(kvp_kv *kv) {
    kvp_kv_evict *c = (kvp_kv_evict *)kv;
    c->ts->vt->reset(c->ts);
    for (int l = 0; c->ring_n && l < kv->shape.n_layers; l++) c->ring_n[l] = c->ring_next[l] = 0;
    kv->n_pos = 0;
}

/* Drops the window queries at positions >= n_pos, keeping the others in order. */
static void kvp_ev_ring_truncate(kvp_kv_evict *c, int layer, int n_pos) {
    int W = c->cfg.window, nw = c->ring_n[layer], kept = 0;
    for (int i = 0; i < nw; i++) { /* ring order: oldest first; positions ascend */
        int slot = (c->ring_next[layer] - nw + i + W) % W;
        if (c->ring_pos[(size_t)layer * W + (size_t)slot] < n_pos) kept++;
    }
    int drop = nw - kept;
    c->ring_next[layer] = (c->ring_next[layer] - drop + W) % W;
    c->ring_n[layer] = kept;
}

static int kvp_ev_truncate(kvp_kv *kv, int n_pos) {
    kvp_kv_evict *c = (kvp_kv_evict *)kv;
    if (n_pos < 0) return kvp_seterr(KVP_EINVAL, "cannot truncate to %d tokens", n_pos);
    if (n_pos >= kv->n_pos) return KVP_OK;
    KVP_TRY(kvp_ev_buffers(c));
    for (int i = 0; i < kvp_ev_streams(c); i++) {
        kvp_tstream *st = &c->ts->st[i];
        for (int t = 0; t < st->n; t++) c->keep[i][t] = st->pos[t] < n_pos;
        c->ts->vt->compact(c->ts, i / kv->shape.n_kv_heads, i % kv->shape.n_kv_heads, c->keep[i]);
    }
    for (int l = 0; c->ring_n && l < kv->shape.n_layers; l++) kvp_ev_ring_truncate(c, l, n_pos);
    kv->n_pos = n_pos;
    return KVP_OK;
}

/* The slot holding position p in a stream, or -1. */
static int kvp_ev_find(const kvp_tstream *st, int p) {
    int lo = 0, hi = st->n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (st->pos[mid] < p) lo = mid + 1;
        else hi = mid;
    }
    return lo < st->n && st->pos[lo] == p ? lo : -1;
}

static int kvp_ev_read(const kvp_kv *kv, int layer, int pos, int n, float *k, float *v) {
    const kvp_kv_evict *c = (const kvp_kv_evict *)kv;
    const kvp_kv_shape *s = &kv->shape;
    if (layer < 0 || layer >= s->n_layers || pos < 0 || n < 0 || pos + n > kv->n_pos)
        return kvp_seterr(KVP_ERANGE, "KV read of layer %d, positions [%d, %d) outside the %d stored", layer, pos,
                          pos + n, kv->n_pos);
    int hd = s->head_dim, kvd = s->n_kv_heads * hd;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < s->n_kv_heads; h++) {
            int slot = kvp_ev_find(kvp_tstore_stream(c->ts, layer, h), pos + i);
            if (slot < 0)
                return kvp_seterr(KVP_EUNSUPPORTED, "KV read: position %d of layer %d, head %d was evicted", pos + i,
                                  layer, h);
            c->ts->vt->read(c->ts, layer, h, slot, k + (size_t)i * kvd + (size_t)h * hd,
                            v + (size_t)i * kvd + (size_t)h * hd);
        }
    return KVP_OK;
}

static void kvp_ev_free(kvp_kv *kv) {
    kvp_kv_evict *c = (kvp_kv_evict *)kv;
    if (c->ts) c->ts->vt->free(c->ts);
    kvp_ev_scratch_free(c);
    free(c->scr);
    for (int i = 0; c->score && i < kvp_ev_streams(c); i++) {
        free(c->score[i]);
        free(c->keep[i]);
    }
    free(c->score);
    free(c->keep);
    free(c->cap);
    free(c->per_layer);
    free(c->ring);
    free(c->ring_pos);
    free(c->ring_n);
    free(c->ring_next);
    free(c);
}

static const kvp_kv_vtbl kvp_ev_vtbl = {
    "evict", kvp_ev_begin, kvp_ev_append, kvp_ev_attend, kvp_ev_end, kvp_ev_stats,
    kvp_ev_reset, kvp_ev_truncate, kvp_ev_read, kvp_ev_free,
};

/* ---- creation ---- */

static int kvp_ev_alloc(kvp_kv_evict *c) {
    const kvp_kv_shape *s = &c->base.shape;
    int ns = kvp_ev_streams(c);
    c->n_scr = kvp_pool_size(c->base.pool);
    c->scr = calloc((size_t)c->n_scr, sizeof *c->scr);
    c->score = calloc((size_t)ns, sizeof *c->score);
    c->keep = calloc((size_t)ns, sizeof *c->keep);
    c->cap = calloc((size_t)ns, sizeof *c->cap);
    c->per_layer = calloc((size_t)s->n_layers, sizeof *c->per_layer);
    if (!c->scr || !c->score || !c->keep || !c->cap || !c->per_layer) return KVP_ENOMEM;
    if (c->cfg.score != KVP_SCORE_WINDOW) return KVP_OK;
    size_t W = (size_t)c->cfg.window, L = (size_t)s->n_layers;
    c->ring = malloc(sizeof(float) * L * W * (size_t)s->n_heads * (size_t)s->head_dim);
    c->ring_pos = calloc(L * W, sizeof(int));
    c->ring_n = calloc(L, sizeof(int));
    c->ring_next = calloc(L, sizeof(int));
    return c->ring && c->ring_pos && c->ring_n && c->ring_next ? KVP_OK : KVP_ENOMEM;
}

/* Creates the token store that the storage spec names: "f16" (default), "f32", or KQ rows
 * "kXvY[:rR]"; writes its canonical name to name. */
static int kvp_ev_store(kvp_kv_evict *c, const char *kv, char *name, size_t cap) {
    const kvp_kv_shape *s = &c->base.shape;
    int n_aux = c->cfg.score == KVP_SCORE_ACC;
    if (kv && kv[0] == 'k') {
        int kb, vb, r;
        KVP_TRY(kvp_kq_spec_parse(kv, &kb, &vb, &r));
        c->quant = 1;
        snprintf(name, cap, "k%dv%d:r%d", kb, vb, r);
        return kvp_tstore_kq_new(kb, vb, r, s->n_layers, s->n_kv_heads, s->head_dim, n_aux, &c->ts);
    }
    int type = !kv || !*kv || !strcmp(kv, "f16") ? KVP_TYPE_F16 : KVP_TYPE_F32;
    snprintf(name, cap, "%s", type == KVP_TYPE_F16 ? "f16" : "f32");
    return kvp_tstore_new(type, s->n_layers, s->n_kv_heads, s->head_dim, n_aux, &c->ts);
}

static int kvp_ev_init(kvp_kv_evict *c, const kvp_sel_params *p, kvp_sel_args *a) {
    KVP_TRY(c->pol->init(&c->cfg, a));
    KVP_TRY(kvp_sel_args_check(a));
    KVP_TRY(kvp_budget_parse(p->budget, &c->budget));
    char store[24];
    KVP_TRY(kvp_ev_store(c, p->kv, store, sizeof store));
    if (kvp_ev_alloc(c) < 0) return kvp_seterr(KVP_ENOMEM, "out of memory creating the %s cache", c->pol->name);
    char sel[48];
    kvp_sel_canon(p->select, sel, sizeof sel);
    snprintf(c->base.spec, sizeof c->base.spec, "%.16s+%.45s@%s", store, sel, p->budget);
    return KVP_OK;
}

int kvp_kv_evict_new(const kvp_sel_params *p, const kvp_policy *pol, kvp_sel_args *a, const kvp_kv_shape *shape,
                     kvp_pool *pool, kvp_kv **out) {
    *out = NULL;
    kvp_kv_evict *c = calloc(1, sizeof *c);
    if (!c) return kvp_seterr(KVP_ENOMEM, "out of memory creating the %s cache", pol->name);
    c->base.vt = &kvp_ev_vtbl;
    c->base.shape = *shape;
    c->base.pool = pool;
    c->pol = pol;
    c->group = shape->n_heads / shape->n_kv_heads;
    c->qb = KVP_MAX(1, KVP_MIN(16, 64 / c->group));
    int rc = kvp_ev_init(c, p, a);
    if (rc < 0) {
        kvp_ev_free(&c->base);
        return rc;
    }
    *out = &c->base;
    return KVP_OK;
}

/* ---- dispatch ---- */

static const kvp_policy *kvp_sel_find_policy(const char *name) {
    static const struct { const char *name; const kvp_policy *pol; } table[] = {
        {"streaming", &kvp_policy_streaming}, {"streamingllm", &kvp_policy_streaming}, {"h2o", &kvp_policy_h2o},
        {"snapkv", &kvp_policy_snapkv},       {"pyramidkv", &kvp_policy_pyramid},      {"prefixkv", &kvp_policy_prefix},
        {"kvcrush", &kvp_policy_kvcrush},
    };
    for (size_t i = 0; i < KVP_ARRAY_LEN(table); i++)
        if (!strcmp(name, table[i].name)) return table[i].pol;
    return NULL;
}

int kvp_kv_select_info(const kvp_kv *kv, kvp_sel_info *info) {
    if (!strcmp(kv->vt->name, "retrieve")) return kvp_kv_retr_info(kv, info);
    if (strcmp(kv->vt->name, "evict")) return kvp_seterr(KVP_EINVAL, "the %s cache has no selection policy", kv->vt->name);
    const kvp_kv_evict *c = (const kvp_kv_evict *)kv;
    memset(info, 0, sizeof *info);
    info->budget = c->last_budget;
    info->max_attended = c->max_att;
    for (int i = 0; i < kvp_ev_streams(c); i++) {
        info->max_stored = KVP_MAX(info->max_stored, c->ts->st[i].n);
        info->total_stored += c->ts->st[i].n;
    }
    info->hot_tokens = info->max_stored;
    return KVP_OK;
}

int kvp_kv_select_positions(const kvp_kv *kv, int layer, int h, int *pos, int cap) {
    if (strcmp(kv->vt->name, "evict") || layer < 0 || layer >= kv->shape.n_layers || h < 0 || h >= kv->shape.n_kv_heads)
        return kvp_seterr(KVP_EINVAL, "no eviction stream (%d, %d) in the %s cache", layer, h, kv->vt->name);
    const kvp_kv_evict *c = (const kvp_kv_evict *)kv;
    const kvp_tstream *st = kvp_tstore_stream(c->ts, layer, h);
    memcpy(pos, st->pos, sizeof(int) * (size_t)KVP_MIN(cap, st->n));
    return st->n;
}

int kvp_kv_select_new(const kvp_sel_params *p, const kvp_kv_shape *shape, kvp_pool *pool, kvp_kv **out) {
    *out = NULL;
    if (shape->n_layers <= 0 || shape->n_heads <= 0 || shape->n_kv_heads <= 0 || shape->n_ctx <= 0 ||
        shape->head_dim <= 0 || shape->head_dim > KVP_SEL_MAX_HD || shape->n_heads % shape->n_kv_heads)
        return kvp_seterr(KVP_EINVAL, "bad KV cache shape for a selection policy (heads %d/%d, head dim %d <= %d)",
                          shape->n_heads, shape->n_kv_heads, shape->head_dim, KVP_SEL_MAX_HD);
    if (p->kv && *p->kv && strcmp(p->kv, "f16") && strcmp(p->kv, "f32") && p->kv[0] != 'k')
        return kvp_seterr(KVP_EUNSUPPORTED, "selection policies store f16, f32 or KIVI-style kXvY[:rR] rows, not '%s'",
                          p->kv);
    kvp_sel_args a;
    KVP_TRY(kvp_sel_args_parse(p->select, &a));
    if (!strcmp(a.name, "quest") || !strcmp(a.name, "sentencekv")) return kvp_kv_retr_new(p, &a, shape, pool, out);
    if (p->cold && *p->cold)
        return kvp_seterr(KVP_EINVAL, "--cold applies to the retrieval policies (quest, sentencekv), not %s", a.name);
    const kvp_policy *pol = kvp_sel_find_policy(a.name);
    if (!pol)
        return kvp_seterr(KVP_EINVAL, "unknown selection policy '%s' (valid: streaming, h2o, snapkv, pyramidkv, "
                                      "prefixkv, kvcrush, quest, sentencekv)", a.name);
    return kvp_kv_evict_new(p, pol, &a, shape, pool, out);
}

/* Splits a composite spec "KV+POLICY@BUDGET[@COLD]" (a malloc'ed copy in *buf) into sp. */
static int kvp_sel_split(const char *spec, char **buf, kvp_sel_params *sp) {
    char *s = strdup(spec), *plus = s ? strchr(s, '+') : NULL, *at = plus ? strchr(plus, '@') : NULL;
    *buf = s;
    if (!s) return kvp_seterr(KVP_ENOMEM, "out of memory parsing '%s'", spec);
    if (!at) return kvp_seterr(KVP_EINVAL, "bad cache spec '%s': expected KV+POLICY@BUDGET (e.g. f16+snapkv@50%%)", spec);
    *plus = *at = 0;
    char *cold = strchr(at + 1, '@');
    if (cold) *cold++ = 0;
    sp->kv = s;
    sp->select = plus + 1;
    sp->budget = at + 1;
    sp->cold = cold;
    return KVP_OK;
}

int kvp_kv_for_ctx(const kvp_model *m, const kvp_ctx_params *p, const kvp_kv_shape *shape, kvp_pool *pool,
                   kvp_kv **out) {
    *out = NULL;
    int composite = p->kv && strchr(p->kv, '+');
    if ((!p->select || !*p->select) && !composite) {
        if ((p->budget && *p->budget) || (p->cold && *p->cold))
            return kvp_seterr(KVP_EINVAL, "a budget or a cold tier needs a selection policy (--select)");
        return kvp_kv_new(p->kv, shape, pool, out);
    }
    if (composite && p->select && *p->select)
        return kvp_seterr(KVP_EINVAL, "cache spec '%s' already names a policy; do not also give --select", p->kv);
    kvp_sel_params sp = {p->kv, p->select, p->budget, p->cold, NULL, kvp_model_get_info(m)->vocab_size};
    char *buf = NULL;
    int rc = composite ? kvp_sel_split(p->kv, &buf, &sp) : KVP_OK;
    if (rc == KVP_OK) rc = kvp_sentence_ends(m, (uint8_t **)&sp.sent_end);
    if (rc == KVP_OK) rc = kvp_kv_select_new(&sp, shape, pool, out);
    free((void *)sp.sent_end);
    free(buf);
    return rc;
}
