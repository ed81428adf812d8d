/*
 * policy_streaming.c: StreamingLLM (Xiao et al., 2023): the first `sink` tokens (attention
 * sinks, default 4) and the most recent tokens up to the budget. Token-level: every KV head
 * of every layer keeps the same positions, so nothing is scored.
 */
#include "common/common.h"
#include "kv/select.h"

static int kvp_streaming_init(kvp_sel_cfg *cfg, kvp_sel_args *a) {
    cfg->score = KVP_SCORE_NONE;
    return kvp_sel_arg_int(a, "sink", 4, 0, 1 << 24, &cfg->sinks);
}

static void kvp_streaming_pick(const kvp_sel_view *v, int layer, int budget, uint8_t *const *keep) {
    for (int h = 0; h < v->n_kv_heads; h++) {
        int s = layer * v->n_kv_heads + h;
        kvp_pick_topk(NULL, v->pos[s], v->n[s], budget, v->cfg->sinks, budget, keep[h]);
    }
}

const kvp_policy kvp_policy_streaming = {"streaming", kvp_streaming_init, NULL, kvp_streaming_pick};
