/*
 * policy_h2o.c: H2O, heavy-hitter oracle (Zhang et al., 2023). Every stored token carries
 * the attention it has received, accumulated over every query so far (prefill and decode)
 * and pooled over the query heads of its KV head (the cache adds the softmax weights of
 * the group's heads). A stream over budget keeps its `recent` latest tokens (default half
 * of the budget, the paper's 1:1 split) and the heavy hitters: the highest accumulated
 * attention among the rest.
 */
#include "common/common.h"
#include "kv/select.h"

static int kvp_h2o_init(kvp_sel_cfg *cfg, kvp_sel_args *a) {
    cfg->score = KVP_SCORE_ACC;
    KVP_TRY(kvp_sel_arg_int(a, "sink", 0, 0, 1 << 24, &cfg->sinks));
    return kvp_sel_arg_int(a, "recent", -1, -1, 1 << 24, &cfg->recent);
}

/* The recent share of a budget: cfg->recent, or half the budget when it is -1. */
static int kvp_h2o_recent(const kvp_sel_cfg *cfg, int budget) {
    return cfg->recent < 0 ? budget / 2 : KVP_MIN(cfg->recent, budget);
}

static void kvp_h2o_pick(const kvp_sel_view *v, int layer, int budget, uint8_t *const *keep) {
    int recent = kvp_h2o_recent(v->cfg, budget);
    for (int h = 0; h < v->n_kv_heads; h++) {
        int s = layer * v->n_kv_heads + h;
        kvp_pick_topk(v->score[s], v->pos[s], v->n[s], budget, v->cfg->sinks, recent, keep[h]);
    }
}

const kvp_policy kvp_policy_h2o = {"h2o", kvp_h2o_init, NULL, kvp_h2o_pick};
