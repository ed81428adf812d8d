/*
 * policy_prefix.c: PrefixKV (Wang et al., 2024): per-layer budgets from one global
 * threshold on cumulative importance.
 *
 * Per layer, the importance of a token is its SnapKV window score normalized per KV head
 * and summed over the layer's heads; sorted in descending order and normalized to sum 1, it
 * gives the layer's cumulative-importance curve. For a threshold p, a layer needs the
 * shortest prefix of its sorted tokens whose cumulative importance reaches p. A bisection
 * finds the largest p whose prefixes, plus every layer's first `sink` tokens (default 4,
 * always kept) and observation window, fit in n_layers * budget; the tokens left over go,
 * one at a time, to the layer whose next token is the most important. Within its budget a
 * layer then keeps tokens as SnapKV does.
 */
#include <stdlib.h>

#include "common/common.h"
#include "kv/select.h"

typedef struct {
    int n, fixed;   /* slots stored; sinks + window (always kept) */
    int nc;         /* candidates: the other slots */
    float *imp;     /* (nc) normalized importance, descending */
    double *cum;    /* (nc + 1) cumulative sums, cum[0] = 0 */
} kvp_prefix_layer;

static int kvp_prefix_cmp_desc(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* Fills one layer's curve; returns KVP_ENOMEM when it cannot. */
static int kvp_prefix_curve(const kvp_sel_view *v, int layer, int budget, kvp_prefix_layer *L) {
    int s0 = layer * v->n_kv_heads, n = v->n[s0];
    int ns = kvp_count_sinks(v->pos[s0], n, v->cfg->sinks), win = KVP_MIN(KVP_MIN(v->cfg->window, budget), n - ns);
    L->n = n;
    L->fixed = ns + win;
    L->nc = n - L->fixed;
    L->imp = calloc((size_t)KVP_MAX(L->nc, 1), sizeof(float));
    L->cum = calloc((size_t)L->nc + 1, sizeof(double));
    if (!L->imp || !L->cum) return KVP_ENOMEM;
    for (int h = 0; h < v->n_kv_heads; h++) {
        const float *sc = v->score[s0 + h];
        double sum = 0;
        for (int t = ns; t < ns + L->nc; t++) sum += sc[t];
        for (int t = 0; t < L->nc && sum > 0; t++) L->imp[t] += (float)(sc[ns + t] / sum);
    }
    qsort(L->imp, (size_t)L->nc, sizeof(float), kvp_prefix_cmp_desc);
    double tot = 0;
    for (int t = 0; t < L->nc; t++) tot += L->imp[t];
    for (int t = 0; t < L->nc; t++) L->cum[t + 1] = L->cum[t] + (tot > 0 ? L->imp[t] / tot : 1.0 / L->nc);
    return KVP_OK;
}

/* The shortest prefix of the layer's sorted candidates whose cumulative importance >= p. */
static int kvp_prefix_len(const kvp_prefix_layer *L, double p) {
    int lo = 0, hi = L->nc;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (L->cum[mid] >= p - 1e-12) hi = mid;
        else lo = mid + 1;
    }
    return lo;
}

static long kvp_prefix_total(const kvp_prefix_layer *Ls, int n_layers, double p) {
    long t = 0;
    for (int l = 0; l < n_layers; l++) t += Ls[l].fixed + kvp_prefix_len(&Ls[l], p);
    return t;
}

/* Gives `left` more candidates, one at a time, to the layer with the most important next. */
static void kvp_prefix_spread(const kvp_prefix_layer *Ls, int n_layers, long left, int *len) {
    for (; left > 0; left--) {
        int best = -1;
        for (int l = 0; l < n_layers; l++)
            if (len[l] < Ls[l].nc && (best < 0 || Ls[l].imp[len[l]] > Ls[best].imp[len[best]])) best = l;
        if (best < 0) return;
        len[best]++;
    }
}

/* The bisection and the final budgets. */
static void kvp_prefix_solve(const kvp_prefix_layer *Ls, int n_layers, long total, int *per_layer) {
    double lo = 0, hi = 1;
    for (int it = 0; it < 60; it++) {
        double mid = (lo + hi) / 2;
        if (kvp_prefix_total(Ls, n_layers, mid) <= total) lo = mid;
        else hi = mid;
    }
    long used = 0;
    for (int l = 0; l < n_layers; l++) {
        per_layer[l] = kvp_prefix_len(&Ls[l], lo);
        used += Ls[l].fixed + per_layer[l];
    }
    kvp_prefix_spread(Ls, n_layers, total - used, per_layer);
    for (int l = 0; l < n_layers; l++) per_layer[l] += Ls[l].fixed;
}

static void kvp_prefix_budgets(const kvp_sel_view *v, int budget, int *per_layer) {
    int nl = v->n_layers;
    long total = (long)nl * budget, fixed = 0;
    kvp_prefix_layer *Ls = calloc((size_t)nl, sizeof *Ls);
    int ok = Ls != NULL;
    for (int l = 0; ok && l < nl; l++) {
        ok = kvp_prefix_curve(v, l, budget, &Ls[l]) == KVP_OK;
        fixed += Ls[l].fixed;
    }
    if (ok && fixed <= total) kvp_prefix_solve(Ls, nl, total, per_layer);
    else /* the fixed parts alone overflow (or no memory): a uniform split */
        for (int l = 0; l < nl; l++) per_layer[l] = budget;
    for (int l = 0; Ls && l < nl; l++) {
        free(Ls[l].imp);
        free(Ls[l].cum);
    }
    free(Ls);
}

static int kvp_prefix_init(kvp_sel_cfg *cfg, kvp_sel_args *a) {
    cfg->score = KVP_SCORE_WINDOW;
    KVP_TRY(kvp_sel_arg_int(a, "window", 32, 1, 4096, &cfg->window));
    KVP_TRY(kvp_sel_arg_int(a, "kernel", 5, 1, 63, &cfg->kernel));
    if (cfg->kernel % 2 == 0) return kvp_seterr(KVP_EINVAL, "%s: the pooling kernel must be odd", a->name);
    return kvp_sel_arg_int(a, "sink", 4, 0, 1 << 24, &cfg->sinks);
}

static void kvp_prefix_pick(const kvp_sel_view *v, int layer, int budget, uint8_t *const *keep) {
    const kvp_sel_cfg *c = v->cfg;
    for (int h = 0; h < v->n_kv_heads; h++) {
        int s = layer * v->n_kv_heads + h;
        kvp_snapkv_pick_stream(v->score[s], v->pos[s], v->n[s], budget, c->sinks, c->window, c->kernel, keep[h]);
    }
}

const kvp_policy kvp_policy_prefix = {"prefixkv", kvp_prefix_init, kvp_prefix_budgets, kvp_prefix_pick};
