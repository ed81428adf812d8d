/*
 * policy_kvcrush.c: KVCrush (Jha et al., 2025): keep representatives of the tokens a base
 * policy would evict, chosen by head-behaviour signatures.
 *
 * Token-level: every KV head of a layer keeps the same positions. The base policy (`base`:
 * snapkv, the default, or h2o) scores tokens per KV head; a token's base score is the sum
 * over heads of its head-normalized scores. Of the layer's budget, `share` percent (default
 * 25) goes to representatives and the rest to the base choice (sinks, the window or recent
 * tokens, the best base scores). Each token's signature has one bit per KV head: is it in
 * that head's top half. The tokens the base choice leaves out are ordered by the Hamming
 * distance of their signature to an anchor (their bitwise majority), then by position, and
 * evenly spaced ones among them are kept.
 */
#include <stdlib.h>

#include "common/common.h"
#include "kv/select.h"

static int kvp_kvcrush_init(kvp_sel_cfg *cfg, kvp_sel_args *a) {
    static const char *const bases[] = {"snapkv", "h2o", NULL};
    int base = 0;
    KVP_TRY(kvp_sel_arg_enum(a, "base", bases, 0, &base));
    cfg->score = base == 0 ? KVP_SCORE_WINDOW : KVP_SCORE_ACC;
    KVP_TRY(kvp_sel_arg_int(a, "share", 25, 0, 100, &cfg->share));
    KVP_TRY(kvp_sel_arg_int(a, "window", 32, 1, 4096, &cfg->window));
    KVP_TRY(kvp_sel_arg_int(a, "kernel", 5, 1, 63, &cfg->kernel));
    if (cfg->kernel % 2 == 0) return kvp_seterr(KVP_EINVAL, "%s: the pooling kernel must be odd", a->name);
    KVP_TRY(kvp_sel_arg_int(a, "recent", -1, -1, 1 << 24, &cfg->recent));
    return kvp_sel_arg_int(a, "sink", 0, 0, 1 << 24, &cfg->sinks);
}

void kvp_kvcrush_represent(const uint32_t *sig, const int *cand, int nc, int m, uint8_t *keep) {
    if (m >= nc) {
        for (int i = 0; i < nc; i++) keep[cand[i]] = 1;
        return;
    }
    if (m <= 0) return;
    int ones[32] = {0};
    for (int i = 0; i < nc; i++)
        for (int b = 0; b < 32; b++) ones[b] += (sig[cand[i]] >> b) & 1;
    uint32_t anchor = 0;
    for (int b = 0; b < 32; b++) anchor |= (uint32_t)(2 * ones[b] > nc) << b;
    int count[34] = {0}, *order = malloc(sizeof(int) * (size_t)nc);
    if (!order) return;
    for (int i = 0; i < nc; i++) count[__builtin_popcount(sig[cand[i]] ^ anchor) + 1]++;
    for (int d = 1; d < 34; d++) count[d] += count[d - 1];
    for (int i = 0; i < nc; i++) order[count[__builtin_popcount(sig[cand[i]] ^ anchor)]++] = cand[i];
    for (int j = 0; j < m; j++) keep[order[(int)(((2L * j + 1) * nc) / (2L * m))]] = 1;
    free(order);
}

/* The base score of each slot: head-normalized scores summed over the layer's heads. */
static void kvp_kvcrush_base(const kvp_sel_view *v, int layer, int n, float *tok) {
    memset(tok, 0, sizeof(float) * (size_t)n);
    for (int h = 0; h < v->n_kv_heads; h++) {
        const float *sc = v->score[layer * v->n_kv_heads + h];
        double sum = 0;
        for (int t = 0; t < n; t++) sum += sc[t];
        for (int t = 0; t < n && sum > 0; t++) tok[t] += (float)(sc[t] / sum);
    }
}

/* The base choice of `main` slots into keep (n). */
static void kvp_kvcrush_main(const kvp_sel_view *v, int layer, int n, int main_budget, const float *tok,
                             uint8_t *keep) {
    const kvp_sel_cfg *c = v->cfg;
    const int *pos = v->pos[layer * v->n_kv_heads];
    if (c->score == KVP_SCORE_WINDOW)
        kvp_snapkv_pick_stream(tok, pos, n, main_budget, c->sinks, c->window, c->kernel, keep);
    else
        kvp_pick_topk(tok, pos, n, main_budget, c->sinks, c->recent < 0 ? main_budget / 2 : c->recent, keep);
}

static void kvp_kvcrush_layer(const kvp_sel_view *v, int layer, int budget, uint8_t *keep, float *tok,
                              uint32_t *sig, int *cand) {
    int s0 = layer * v->n_kv_heads, n = v->n[s0];
    int m = (int)((long)budget * v->cfg->share / 100), main_budget = budget - m;
    kvp_kvcrush_base(v, layer, n, tok);
    kvp_kvcrush_main(v, layer, n, main_budget, tok, keep);
    int nc = 0;
    for (int t = 0; t < n; t++)
        if (!keep[t]) cand[nc++] = t;
    kvp_kvcrush_signatures(v->score + s0, v->pos[s0], v->n_kv_heads, n, sig);
    kvp_kvcrush_represent(sig, cand, nc, m, keep);
}

static void kvp_kvcrush_pick(const kvp_sel_view *v, int layer, int budget, uint8_t *const *keep) {
    int n = v->n[layer * v->n_kv_heads];
    if (n <= budget) {
        for (int h = 0; h < v->n_kv_heads; h++) memset(keep[h], 1, (size_t)n);
        return;
    }
    float *tok = malloc(sizeof(float) * (size_t)n);
    uint32_t *sig = malloc(sizeof(uint32_t) * (size_t)n);
    int *cand = malloc(sizeof(int) * (size_t)n);
    if (tok && sig && cand) kvp_kvcrush_layer(v, layer, budget, keep[0], tok, sig, cand);
    else kvp_pick_topk(NULL, v->pos[layer * v->n_kv_heads], n, budget, v->cfg->sinks, budget, keep[0]);
    for (int h = 1; h < v->n_kv_heads; h++) memcpy(keep[h], keep[0], (size_t)n);
    free(tok);
    free(sig);
    free(cand);
}

const kvp_policy kvp_policy_kvcrush = {"kvcrush", kvp_kvcrush_init, NULL, kvp_kvcrush_pick};
