/*
 * ctx.c: a context (model + KV cache + thread pool + activation buffers) and the forward
 * pass of the llama architecture (and qwen2 / qwen3, which add QKV biases or per-head q/k
 * RMSNorm before the rotation), for a batch of tokens at once.
 *
 * Per layer, for a batch of B tokens at positions [pos, pos + B):
 *   xb = rmsnorm(x) * attn_norm                    (B, dim)
 *   q = xb Wq^T, k = xb Wk^T, v = xb Wv^T          (B, q_dim), (B, kv_dim), (B, kv_dim)
 *   [+ biases; per-head rmsnorm(q), rmsnorm(k)]    (qwen2; qwen3)
 *   rope(q), rope(k)                               (frequencies / rope_freqs when present)
 *   kv.append(k, v); att = kv.attend(q)            (B, q_dim)
 *   x += att Wo^T
 *   xb = rmsnorm(x) * ffn_norm
 *   hb = silu(xb Wgate^T) * (xb Wup^T)             (B, hidden)
 *   x += hb Wdown^T
 * then logits = rmsnorm(x) * out_norm  Wout^T for the rows whose logits are wanted.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "common/pool.h"
#include "kernels/kernels.h"
#include "kv/kv.h"
#include "kv/select.h"
#include "model/model.h"
#include "engine.h"

struct kvp_ctx {
    kvp_model *m;
    kvp_kv *kv;
    kvp_pool *pool;
    int n_ctx, n_batch;
    float *x;       /* (n_batch, dim) residual stream */
    float *xb;      /* (n_batch, dim) normalized input of a sublayer */
    float *q;       /* (n_batch, q_dim) */
    float *k, *v;   /* (n_batch, kv_dim) */
    float *att;     /* (n_batch, q_dim) attention output */
    float *hb, *hb2;/* (n_batch, hidden_dim) */
    void *xp;       /* prepared activations, (n_batch, act_bytes(max cols)) */
};

kvp_ctx_params kvp_ctx_default_params(void) {
    kvp_ctx_params p = {0, 1, 256, "f16", NULL, NULL, NULL};
    return p;
}

/* ---- matrix multiplication over the pool ---- */

typedef struct {
    const kvp_weight *w;
    const void *xp;
    int n;
    float *y;
    int rows_per_chunk;
} kvp_mm_job;

static void kvp_mm_task(void *arg, int chunk, int thread) {
    const kvp_mm_job *j = arg;
    int r0 = chunk * j->rows_per_chunk, r1 = KVP_MIN(j->w->rows, r0 + j->rows_per_chunk);
    kvp_gemm(j->w->type, j->w->data, j->w->cols, j->xp, j->n, j->y, j->w->rows, r0, r1);
}

/* Y (n, w.rows) = X (n, w.cols) W^T, where X was prepared for w's type by kvp_ctx_prep. */
static void kvp_ctx_mm(kvp_ctx *c, const kvp_weight *w, const void *xp, int n, float *y) {
    int nt = kvp_pool_active(c->pool);
    int chunks = nt == 1 ? 1 : KVP_MIN(w->rows / 16, 8 * nt);
    if (chunks < 1) chunks = 1;
    int per = (w->rows + chunks - 1) / chunks;
    per = (per + 15) & ~15; /* keep the kernels' row tiles whole */
    kvp_mm_job j = {w, xp, n, y, per};
    kvp_pool_run(c->pool, kvp_mm_task, &j, (w->rows + per - 1) / per);
}

/* Prepares X (n, cols) for multiplication by weights of type wtype. */
static const void *kvp_ctx_prep(kvp_ctx *c, int wtype, const float *x, int n, int cols) {
    if (kvp_act_bytes(wtype, cols) == sizeof(float) * (size_t)cols) return x;
    kvp_act_prepare(wtype, x, n, cols, c->xp);
    return c->xp;
}

/* y = x W^T for weights that may have different activation formats. */
static void kvp_ctx_matmul(kvp_ctx *c, const kvp_weight *w, const float *x, int n, float *y) {
    kvp_ctx_mm(c, w, kvp_ctx_prep(c, w->type, x, n, w->cols), n, y);
}

/* ---- the forward pass ---- */

static void kvp_ctx_embed(kvp_ctx *c, const int *tokens, int n) {
    const kvp_weight *e = &c->m->tok_embd;
    for (int i = 0; i < n; i++)
        kvp_dequant_row(e->type, (const uint8_t *)e->data + (size_t)tokens[i] * e->row_bytes,
                        c->x + (size_t)i * (size_t)e->cols, e->cols);
}

static void kvp_ctx_norm(kvp_ctx *c, const float *w, int n) {
    int dim = c->m->info.dim;
    for (int i = 0; i < n; i++)
        kvp_rmsnorm(c->xb + (size_t)i * dim, c->x + (size_t)i * dim, w, dim, c->m->info.norm_eps);
}

static void kvp_ctx_residual(float *x, const float *d, size_t count) {
    for (size_t i = 0; i < count; i++) x[i] += d[i];
}

/* Adds bias b (width values) to each of the n rows of y, when b is not NULL. */
static void kvp_ctx_bias(float *y, const float *b, int n, int width) {
    for (int i = 0; b && i < n; i++)
        for (int j = 0; j < width; j++) y[(size_t)i * width + j] += b[j];
}

/* RMS-normalizes each head of the n rows of x (heads heads of hd values) in place with
 * weight w, when w is not NULL (qwen3's q/k norm). */
static void kvp_ctx_head_norm(float *x, const float *w, int n, int heads, int hd, float eps) {
    for (int i = 0; w && i < n * heads; i++) kvp_rmsnorm(x + (size_t)i * hd, x + (size_t)i * hd, w, hd, eps);
}

/* The optional QKV biases (qwen2) and per-head q/k norms (qwen3), before the rotation. */
static void kvp_ctx_qkv_extras(kvp_ctx *c, const kvp_layer_weights *L, int n) {
    const kvp_model_info *in = &c->m->info;
    int qd = in->n_heads * in->head_dim, kvd = in->n_kv_heads * in->head_dim;
    kvp_ctx_bias(c->q, L->bq, n, qd);
    kvp_ctx_bias(c->k, L->bk, n, kvd);
    kvp_ctx_bias(c->v, L->bv, n, kvd);
    kvp_ctx_head_norm(c->q, L->q_norm, n, in->n_heads, in->head_dim, in->norm_eps);
    kvp_ctx_head_norm(c->k, L->k_norm, n, in->n_kv_heads, in->head_dim, in->norm_eps);
}

/* xb = rmsnorm(x) * attn_norm; q, k, v = xb Wq^T, xb Wk^T, xb Wv^T with the optional biases
 * and per-head norms, for the n rows of the batch (not rotated yet). */
static void kvp_ctx_qkv(kvp_ctx *c, const kvp_layer_weights *L, int n) {
    const kvp_model_info *in = &c->m->info;
    kvp_ctx_norm(c, L->attn_norm, n);
    const void *xp = kvp_ctx_prep(c, L->wq.type, c->xb, n, in->dim);
    kvp_ctx_mm(c, &L->wq, xp, n, c->q);
    if (L->wk.type != L->wq.type) xp = kvp_ctx_prep(c, L->wk.type, c->xb, n, in->dim);
    kvp_ctx_mm(c, &L->wk, xp, n, c->k);
    if (L->wv.type != L->wk.type) xp = kvp_ctx_prep(c, L->wv.type, c->xb, n, in->dim);
    kvp_ctx_mm(c, &L->wv, xp, n, c->v);
    kvp_ctx_qkv_extras(c, L, n);
}

/* Rotates row i of q and k to position pos. */
static void kvp_ctx_rope_row(kvp_ctx *c, int i, int pos) {
    const kvp_model_info *in = &c->m->info;
    int qd = in->n_heads * in->head_dim, kvd = in->n_kv_heads * in->head_dim;
    const float *ff = c->m->rope_freqs;
    kvp_rope(c->q + (size_t)i * qd, in->n_heads, in->head_dim, pos, in->rope_theta, in->rope_style, ff);
    kvp_rope(c->k + (size_t)i * kvd, in->n_kv_heads, in->head_dim, pos, in->rope_theta, in->rope_style, ff);
}

/* x += att Wo^T for the n rows of the batch. */
static void kvp_ctx_attn_out(kvp_ctx *c, const kvp_layer_weights *L, int n) {
    kvp_ctx_matmul(c, &L->wo, c->att, n, c->xb);
    kvp_ctx_residual(c->x, c->xb, (size_t)n * c->m->info.dim);
}

static int kvp_ctx_attention(kvp_ctx *c, int l, int pos, int n) {
    const kvp_layer_weights *L = &c->m->layers[l];
    kvp_ctx_qkv(c, L, n);
    for (int i = 0; i < n; i++) kvp_ctx_rope_row(c, i, pos + i);
    KVP_TRY(c->kv->vt->append(c->kv, l, pos, n, c->k, c->v));
    KVP_TRY(c->kv->vt->attend(c->kv, l, pos, n, c->q, c->att));
    kvp_ctx_attn_out(c, L, n);
    return KVP_OK;
}

static void kvp_ctx_ffn(kvp_ctx *c, int l, int n) {
    const kvp_model_info *in = &c->m->info;
    const kvp_layer_weights *L = &c->m->layers[l];
    kvp_ctx_norm(c, L->ffn_norm, n);
    const void *xp = kvp_ctx_prep(c, L->w_gate.type, c->xb, n, in->dim);
    kvp_ctx_mm(c, &L->w_gate, xp, n, c->hb);
    if (L->w_up.type != L->w_gate.type) xp = kvp_ctx_prep(c, L->w_up.type, c->xb, n, in->dim);
    kvp_ctx_mm(c, &L->w_up, xp, n, c->hb2);
    kvp_swiglu(c->hb, c->hb, c->hb2, n * in->hidden_dim);
    kvp_ctx_matmul(c, &L->w_down, c->hb, n, c->xb);
    kvp_ctx_residual(c->x, c->xb, (size_t)n * in->dim);
}

/* Logits of rows [first, n) of the batch into out ((n - first), vocab). */
static void kvp_ctx_logits(kvp_ctx *c, int first, int n, float *out) {
    const kvp_model_info *in = &c->m->info;
    for (int i = first; i < n; i++)
        kvp_rmsnorm(c->xb + (size_t)(i - first) * in->dim, c->x + (size_t)i * in->dim, c->m->out_norm,
                    in->dim, in->norm_eps);
    kvp_ctx_matmul(c, &c->m->output, c->xb, n - first, out);
}

/* One batch of n <= n_batch tokens; logits as in kvp_ctx_decode. */
static int kvp_ctx_batch(kvp_ctx *c, const int *tokens, int n, float *logits, int all_logits) {
    int pos = c->kv->n_pos;
    KVP_TRY(c->kv->vt->begin(c->kv, pos, n, tokens));
    kvp_ctx_embed(c, tokens, n);
    for (int l = 0; l < c->m->info.n_layers; l++) {
        KVP_TRY(kvp_ctx_attention(c, l, pos, n));
        kvp_ctx_ffn(c, l, n);
    }
    KVP_TRY(c->kv->vt->end(c->kv));
    if (!logits) return KVP_OK;
    kvp_ctx_logits(c, all_logits ? 0 : n - 1, n, logits);
    return KVP_OK;
}

static int kvp_ctx_check_tokens(const kvp_ctx *c, const int *tokens, int n) {
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->m->info.vocab_size)
            return kvp_seterr(KVP_ERANGE, "token id %d at index %d is outside the vocabulary (0..%d)",
                              tokens[i], i, c->m->info.vocab_size - 1);
    if (c->kv->n_pos + n > c->n_ctx)
        return kvp_seterr(KVP_ERANGE, "context is full: %d tokens stored, %d more do not fit in %d",
                          c->kv->n_pos, n, c->n_ctx);
    return KVP_OK;
}

int kvp_ctx_decode(kvp_ctx *c, const int *tokens, int n, float *logits, int all_logits) {
    if (n <= 0) return kvp_seterr(KVP_EINVAL, "no tokens to decode");
    KVP_TRY(kvp_ctx_check_tokens(c, tokens, n));
    int V = c->m->info.vocab_size;
    for (int i = 0; i < n; i += c->n_batch) {
        int b = KVP_MIN(c->n_batch, n - i), last = i + b == n;
        float *lg = !logits ? NULL : all_logits ? logits + (size_t)i * V : (last ? logits : NULL);
        kvp_pool_unit_begin(c->pool, b > 1); /* decode steps and prefill batches, timed apart */
        KVP_TRY(kvp_ctx_batch(c, tokens + i, b, lg, all_logits));
        kvp_pool_unit_end(c->pool, b);
    }
    return KVP_OK;
}

/* ---- one token from each of several contexts (kvp_ctx_decode_batch) ----
 *
 * Row i of the lead context's (ctxs[0]'s) activation buffers carries context i's token
 * through the layers: the matrix multiplications run once over all the rows, so the weights
 * are streamed from memory once per step instead of once per context, and each row's
 * attention goes through its own context's cache at its own position. The rows' cache calls
 * run in parallel over the lead's pool when there are at least as many rows as its threads
 * (each cache on one thread: its pool is detached for the call; kv.h allows it), otherwise
 * one row after another, each cache over its own context's pool. */

#define KVP_XB_MSG 200

typedef struct kvp_xbatch {
    kvp_ctx *lead;            /* its buffers and pool run the shared part */
    kvp_ctx *const *ctxs;     /* (n) row i belongs to ctxs[i] */
    const int *tokens;        /* (n) the rows' tokens (0 for a row refused up front) */
    const int *pos;           /* (n) the rows' positions */
    int *rc;                  /* (n) a row's status: a failed row makes no further cache calls */
    char (*msg)[KVP_XB_MSG];  /* (n) the message of a row's failure */
    int n, layer, parallel;
} kvp_xbatch;

typedef int (*kvp_xb_fn)(kvp_xbatch *b, int i);

static int kvp_xb_begin(kvp_xbatch *b, int i) {
    kvp_kv *kv = b->ctxs[i]->kv;
    return kv->vt->begin(kv, b->pos[i], 1, b->tokens + i);
}

/* Appends row i's key and value to its cache and attends for its query (layer b->layer). */
static int kvp_xb_attend(kvp_xbatch *b, int i) {
    const kvp_model_info *in = &b->lead->m->info;
    size_t qd = (size_t)in->n_heads * in->head_dim, kvd = (size_t)in->n_kv_heads * in->head_dim;
    kvp_ctx *c = b->lead;
    kvp_kv *kv = b->ctxs[i]->kv;
    KVP_TRY(kv->vt->append(kv, b->layer, b->pos[i], 1, c->k + (size_t)i * kvd, c->v + (size_t)i * kvd));
    return kv->vt->attend(kv, b->layer, b->pos[i], 1, c->q + (size_t)i * qd, c->att + (size_t)i * qd);
}

static int kvp_xb_end(kvp_xbatch *b, int i) { return b->ctxs[i]->kv->vt->end(b->ctxs[i]->kv); }

/* Runs fn on row i unless it failed before; records a failure and its message. */
static void kvp_xb_row(kvp_xbatch *b, kvp_xb_fn fn, int i) {
    if (b->rc[i]) return;
    int rc = fn(b, i);
    if (rc < 0) {
        b->rc[i] = rc;
        snprintf(b->msg[i], KVP_XB_MSG, "%s", kvp_errmsg());
    }
}

typedef struct {
    kvp_xbatch *b;
    kvp_xb_fn fn;
} kvp_xb_job;

static void kvp_xb_task(void *arg, int chunk, int thread) {
    const kvp_xb_job *j = arg;
    (void)thread;
    kvp_xb_row(j->b, j->fn, chunk);
}

/* Runs fn on every live row: in parallel over the lead's pool with the caches' own pools
 * detached, or one row after another. */
static void kvp_xb_each(kvp_xbatch *b, kvp_xb_fn fn) {
    if (!b->parallel) {
        for (int i = 0; i < b->n; i++) kvp_xb_row(b, fn, i);
        return;
    }
    kvp_xb_job j = {b, fn};
    for (int i = 0; i < b->n; i++) b->ctxs[i]->kv->pool = NULL;
    kvp_pool_run(b->lead->pool, kvp_xb_task, &j, b->n);
    for (int i = 0; i < b->n; i++) b->ctxs[i]->kv->pool = b->ctxs[i]->pool;
}

/* One step of the rows through every layer; logits (n, vocab) when not NULL (a failed row's
 * are meaningless). */
static void kvp_xb_forward(kvp_xbatch *b, float *logits) {
    kvp_ctx *c = b->lead;
    size_t qd = (size_t)c->m->info.n_heads * c->m->info.head_dim;
    kvp_xb_each(b, kvp_xb_begin);
    kvp_ctx_embed(c, b->tokens, b->n);
    for (int l = 0; l < c->m->info.n_layers; l++) {
        const kvp_layer_weights *L = &c->m->layers[l];
        kvp_ctx_qkv(c, L, b->n);
        for (int i = 0; i < b->n; i++) kvp_ctx_rope_row(c, i, b->pos[i]);
        b->layer = l;
        kvp_xb_each(b, kvp_xb_attend);
        for (int i = 0; i < b->n; i++) /* a failed row carries zeros on */
            if (b->rc[i]) memset(c->att + (size_t)i * qd, 0, sizeof(float) * qd);
        kvp_ctx_attn_out(c, L, b->n);
        kvp_ctx_ffn(c, l, b->n);
    }
    kvp_xb_each(b, kvp_xb_end);
    if (logits) kvp_ctx_logits(c, 0, b->n, logits);
}

/* The arguments' contract: n distinct contexts of one model. */
static int kvp_xb_check(kvp_ctx *const *ctxs, const int *tokens, int n) {
    if (!ctxs || !tokens || n <= 0) return kvp_seterr(KVP_EINVAL, "no contexts to decode");
    for (int i = 0; i < n; i++) {
        if (!ctxs[i]) return kvp_seterr(KVP_EINVAL, "context %d of the batch is NULL", i);
        if (ctxs[i]->m != ctxs[0]->m)
            return kvp_seterr(KVP_EINVAL, "context %d of the batch runs another model than context 0", i);
        for (int k = 0; k < i; k++)
            if (ctxs[k] == ctxs[i]) return kvp_seterr(KVP_EINVAL, "the batch holds one context twice (%d and %d)", k, i);
    }
    return KVP_OK;
}

/* Per context: its position, and a token it cannot take (out of range, context full) is
 * refused up front (its row then runs token 0 without touching the cache). */
static void kvp_xb_prepare(kvp_ctx *const *ctxs, const int *tokens, int n, kvp_xbatch *b, int *pos, int *tok) {
    for (int i = 0; i < n; i++) {
        pos[i] = ctxs[i]->kv->n_pos;
        b->rc[i] = kvp_ctx_check_tokens(ctxs[i], tokens + i, 1);
        if (b->rc[i]) snprintf(b->msg[i], KVP_XB_MSG, "%s", kvp_errmsg());
        tok[i] = b->rc[i] ? 0 : tokens[i];
    }
}

/* Runs the rows in groups of at most the lead's n_batch. */
static void kvp_xb_groups(kvp_xbatch *all, float *logits) {
    kvp_ctx *c = all->lead;
    size_t V = (size_t)c->m->info.vocab_size;
    for (int g = 0; g < all->n; g += c->n_batch) {
        kvp_xbatch b = *all;
        b.n = KVP_MIN(c->n_batch, all->n - g);
        b.ctxs += g, b.tokens += g, b.pos += g, b.rc += g, b.msg += g;
        b.parallel = kvp_pool_size(c->pool) > 1 && b.n >= kvp_pool_size(c->pool);
        kvp_pool_unit_begin(c->pool, b.n == 1 ? 0 : -1); /* one row: a decode step; more: untimed */
        kvp_xb_forward(&b, logits ? logits + (size_t)g * V : NULL);
        kvp_pool_unit_end(c->pool, b.n);
    }
}

/* Copies the rows' statuses out; the first failure becomes the call's error. */
static int kvp_xb_result(const kvp_xbatch *b, int *status) {
    int first = -1;
    for (int i = 0; i < b->n; i++) {
        if (status) status[i] = b->rc[i];
        if (b->rc[i] && first < 0) first = i;
    }
    if (first < 0) return KVP_OK;
    return kvp_seterr(b->rc[first], "context %d of the batch: %s", first, b->msg[first]);
}

int kvp_ctx_decode_batch(kvp_ctx *const *ctxs, const int *tokens, int n, float *logits, int *status) {
    KVP_TRY(kvp_xb_check(ctxs, tokens, n));
    int *ints = malloc(sizeof(int) * 3 * (size_t)n);
    char (*msg)[KVP_XB_MSG] = calloc((size_t)n, sizeof *msg);
    if (!ints || !msg) {
        free(ints);
        free(msg);
        return kvp_seterr(KVP_ENOMEM, "out of memory decoding a batch of %d contexts", n);
    }
    int *pos = ints, *tok = ints + n, *rc = ints + 2 * n;
    kvp_xbatch b = {ctxs[0], ctxs, tok, pos, rc, msg, n, 0, 0};
    kvp_xb_prepare(ctxs, tokens, n, &b, pos, tok);
    kvp_xb_groups(&b, logits);
    int ret = kvp_xb_result(&b, status);
    free(ints);
    free(msg);
    return ret;
}

/* ---- lifetime ---- */

static int kvp_ctx_buffers(kvp_ctx *c) {
    const kvp_model_info *in = &c->m->info;
    size_t B = (size_t)c->n_batch, qd = (size_t)in->n_heads * in->head_dim;
    size_t kvd = (size_t)in->n_kv_heads * in->head_dim;
    size_t wide = (size_t)KVP_MAX(KVP_MAX(in->dim, in->hidden_dim), (int)qd);
    size_t xb_rows = KVP_MAX(B, 1);
    c->x = kvp_amalloc(sizeof(float) * B * in->dim);
    c->xb = kvp_amalloc(sizeof(float) * xb_rows * KVP_MAX((size_t)in->dim, qd));
    c->q = kvp_amalloc(sizeof(float) * B * qd);
    c->k = kvp_amalloc(sizeof(float) * B * kvd);
    c->v = kvp_amalloc(sizeof(float) * B * kvd);
    c->att = kvp_amalloc(sizeof(float) * B * qd);
    c->hb = kvp_amalloc(sizeof(float) * B * in->hidden_dim);
    c->hb2 = kvp_amalloc(sizeof(float) * B * in->hidden_dim);
    c->xp = kvp_amalloc(B * KVP_MAX(kvp_act_bytes(KVP_TYPE_Q8_0, (int)wide), sizeof(float) * wide));
    if (!c->x || !c->xb || !c->q || !c->k || !c->v || !c->att || !c->hb || !c->hb2 || !c->xp)
        return kvp_seterr(KVP_ENOMEM, "out of memory allocating activations for a batch of %d", c->n_batch);
    return KVP_OK;
}

static int kvp_ctx_init(kvp_ctx *c, const kvp_ctx_params *p) {
    const kvp_model_info *in = &c->m->info;
    c->n_ctx = p->n_ctx > 0 ? p->n_ctx : in->n_ctx_train;
    c->n_batch = p->n_batch > 0 ? KVP_MIN(p->n_batch, c->n_ctx) : KVP_MIN(256, c->n_ctx);
    KVP_TRY(kvp_pool_new(p->n_threads > 0 ? p->n_threads : 1, &c->pool));
    kvp_kv_shape shape = {in->n_layers, in->n_heads, in->n_kv_heads, in->head_dim, c->n_ctx};
    KVP_TRY(kvp_kv_for_ctx(c->m, p, &shape, c->pool, &c->kv)); /* kvp_kv_new, or a selection policy */
    return kvp_ctx_buffers(c);
}

int kvp_ctx_new(kvp_model *m, const kvp_ctx_params *p, kvp_ctx **out) {
    *out = NULL;
    kvp_ctx_params def = kvp_ctx_default_params();
    if (!p) p = &def;
    if (p->n_ctx < 0 || p->n_ctx > (1 << 24) || p->n_threads < 0 || p->n_batch < 0)
        return kvp_seterr(KVP_EINVAL, "bad context parameters (n_ctx %d, threads %d, batch %d)", p->n_ctx,
                          p->n_threads, p->n_batch);
    kvp_ctx *c = calloc(1, sizeof *c);
    if (!c) return kvp_seterr(KVP_ENOMEM, "out of memory creating a context");
    c->m = m;
    int rc = kvp_ctx_init(c, p);
    if (rc < 0) {
        kvp_ctx_free(c);
        return rc;
    }
    *out = c;
    return KVP_OK;
}

void kvp_ctx_free(kvp_ctx *c) {
    if (!c) return;
    kvp_kv_free(c->kv);
    kvp_pool_free(c->pool);
    float *bufs[] = {c->x, c->xb, c->q, c->k, c->v, c->att, c->hb, c->hb2};
    for (size_t i = 0; i < KVP_ARRAY_LEN(bufs); i++) kvp_afree(bufs[i]);
    kvp_afree(c->xp);
    free(c);
}

int kvp_ctx_pos(const kvp_ctx *c) { return c->kv->n_pos; }
int kvp_ctx_n_ctx(const kvp_ctx *c) { return c->n_ctx; }
const kvp_model *kvp_ctx_model(const kvp_ctx *c) { return c->m; }
void kvp_ctx_reset(kvp_ctx *c) { c->kv->vt->reset(c->kv); }
int kvp_ctx_truncate(kvp_ctx *c, int n_tokens) { return c->kv->vt->truncate(c->kv, n_tokens); }

int kvp_ctx_kv_stats(const kvp_ctx *c, kvp_kv_stats *st) {
    c->kv->vt->stats(c->kv, st);
    return KVP_OK;
}

kvp_kv *kvp_ctx_kv(kvp_ctx *c) { return c->kv; }
kvp_pool *kvp_ctx_pool(kvp_ctx *c) { return c->pool; }

/* ---- direct KV access for the context codec (layout (n_layers, 2, n, kv_dim)) ---- */

int kvp_ctx_kv_read(kvp_ctx *c, int pos, int n, float *kv) {
    const kvp_model_info *in = &c->m->info;
    size_t plane = (size_t)n * (size_t)in->n_kv_heads * (size_t)in->head_dim;
    for (int l = 0; l < in->n_layers; l++)
        KVP_TRY(c->kv->vt->read(c->kv, l, pos, n, kv + 2 * (size_t)l * plane, kv + (2 * (size_t)l + 1) * plane));
    return KVP_OK;
}

/* Appends tokens [i, i + b) of an import as one cache step, without attention. */
static int kvp_ctx_import_step(kvp_ctx *c, const int *tokens, int n, int i, int b, const float *kv) {
    const kvp_model_info *in = &c->m->info;
    size_t kvd = (size_t)in->n_kv_heads * (size_t)in->head_dim, plane = (size_t)n * kvd;
    int pos = c->kv->n_pos;
    KVP_TRY(c->kv->vt->begin(c->kv, pos, b, tokens + i));
    for (int l = 0; l < in->n_layers; l++) {
        const float *k = kv + 2 * (size_t)l * plane + (size_t)i * kvd;
        KVP_TRY(c->kv->vt->append(c->kv, l, pos, b, k, k + plane));
    }
    return c->kv->vt->end(c->kv);
}

int kvp_ctx_kv_import(kvp_ctx *c, const int *tokens, int n, const float *kv) {
    if (n <= 0) return kvp_seterr(KVP_EINVAL, "no tokens to import");
    KVP_TRY(kvp_ctx_check_tokens(c, tokens, n));
    for (int i = 0; i < n; i += c->n_batch) KVP_TRY(kvp_ctx_import_step(c, tokens, n, i, KVP_MIN(c->n_batch, n - i), kv));
    return KVP_OK;
}
