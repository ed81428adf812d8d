/*
 * policy_snapkv.c: SnapKV (Li et al., 2024) and PyramidKV (Cai et al., 2024).
 *
 * SnapKV scores every stored token by the attention it receives from the last `window`
 * queries (default 32; the cache keeps those queries and recomputes their softmax over the
 * stored tokens when it evicts), pooled over the query heads of the KV head, smooths the
 * scores with a 1-D max pooling of width `kernel` (default 5) over the tokens before the
 * window, and keeps, per KV head, the window itself plus the best-scoring others.
 *
 * PyramidKV uses the same scores with per-layer budgets that fall linearly from the first
 * layer to the last (the last gets 1/beta of the first's share above the window, beta 20).
 */
#include <stdlib.h>

#include "common/common.h"
#include "kv/select.h"

void kvp_snapkv_pick_stream(const float *score, const int *pos, int n, int budget, int sinks, int window,
                            int kernel, uint8_t *keep) {
    if (n <= budget) {
        memset(keep, 1, (size_t)n);
        return;
    }
    int win = KVP_MIN(window, budget), nc = n - KVP_MIN(win, n);
    float *pooled = malloc(sizeof(float) * (size_t)n);
    if (!pooled) { /* no memory to pool: rank by the raw scores */
        kvp_pick_topk(score, pos, n, budget, sinks, win, keep);
        return;
    }
    kvp_maxpool1d(score, nc, kernel, pooled);
    memcpy(pooled + nc, score + nc, sizeof(float) * (size_t)(n - nc));
    kvp_pick_topk(pooled, pos, n, budget, sinks, win, keep);
    free(pooled);
}

static int kvp_snapkv_init(kvp_sel_cfg *cfg, kvp_sel_args *a) {
    cfg->score = KVP_SCORE_WINDOW;
    KVP_TRY(kvp_sel_arg_int(a, "window", 32, 1, 4096, &cfg->window));
    KVP_TRY(kvp_sel_arg_int(a, "kernel", 5, 1, 63, &cfg->kernel));
    if (cfg->kernel % 2 == 0) return kvp_seterr(KVP_EINVAL, "%s: the pooling kernel must be odd", a->name);
    return kvp_sel_arg_int(a, "sink", 0, 0, 1 << 24, &cfg->sinks);
}

static void kvp_snapkv_pick(const kvp_sel_view *v, int layer, int budget, uint8_t *const *keep) {
    const kvp_sel_cfg *c = v->cfg;
    for (int h = 0; h < v->n_kv_heads; h++) {
        int s = layer * v->n_kv_heads + h;
        kvp_snapkv_pick_stream(v->score[s], v->pos[s], v->n[s], budget, c->sinks, c->window, c->kernel, keep[h]);
    }
}

const kvp_policy kvp_policy_snapkv = {"snapkv", kvp_snapkv_init, NULL, kvp_snapkv_pick};

/* ---- PyramidKV ---- */

void kvp_pyramid_budgets(int n_layers, int budget, int window, int beta, int span, int *per_layer) {
    int win = KVP_MIN(window, budget), above = budget - win;
    if (n_layers == 1 || above <= 0) {
        for (int l = 0; l < n_layers; l++) per_layer[l] = budget;
        return;
    }
    double lo = (double)above / beta, hi = 2.0 * above - lo;
    if (span > n_layers) { /* the paper's fall per layer, over the model's fewer layers */
        double half = (hi - lo) / (span - 1) * (n_layers - 1) / 2;
        lo = above - half;
        hi = above + half;
    }
    long used = 0;
    for (int l = 0; l < n_layers; l++) { /* floor keeps the sum within n_layers * above */
        per_layer[l] = (int)(hi - (hi - lo) * l / (n_layers - 1) + 1e-9);
        used += per_layer[l];
    }
    for (int l = 0; used < (long)above * n_layers; l = (l + 1) % n_layers, used++) per_layer[l]++;
    for (int l = 0; l < n_layers; l++) per_layer[l] += win;
}

static int kvp_pyramid_init(kvp_sel_cfg *cfg, kvp_sel_args *a) {
    KVP_TRY(kvp_snapkv_init(cfg, a));
    KVP_TRY(kvp_sel_arg_int(a, "span", 32, 0, 4096, &cfg->span));
    return kvp_sel_arg_int(a, "beta", 20, 1, 1000, &cfg->beta);
}

static void kvp_pyramid_budgets_view(const kvp_sel_view *v, int budget, int *per_layer) {
    kvp_pyramid_budgets(v->n_layers, budget, v->cfg->window, v->cfg->beta, v->cfg->span, per_layer);
}

const kvp_policy kvp_policy_pyramid = {"pyramidkv", kvp_pyramid_init, kvp_pyramid_budgets_view, kvp_snapkv_pick};
