/*
 * policy_quest.c: Quest (Tang et al., 2024): query-aware selection of pages, and the block
 * picking that Quest and SentenceKV share.
 *
 * Every page of `page` tokens (default 16) keeps, per KV head, the element-wise minimum and
 * maximum of its keys, stored as the box centre c = (max + min) / 2 and radius
 * r = (max - min) / 2 in F16 (the radius rounded up so that the box still holds every key:
 * half the bytes of F32, and the bound stays a bound). For a query q the largest q.k over the
 * page is at most
 *     sum_i max(q_i min_i, q_i max_i) = q.c + |q|.r,
 * two dot products per page that the attention score kernel computes for all pages at once.
 * Pages are ranked by that bound (the maximum over the query heads of the group) and
 * attended in rank order while they fit the budget.
 */
#include <math.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "kv/select.h"

/* The smallest F16 value >= x (x >= 0). */
static uint16_t kvp_f16_up(float x) {
    uint16_t h = kvp_f32_to_f16(x);
    if (kvp_f16_to_f32(h) < x && (h & 0x7fff) < 0x7c00) h++;
    return h;
}

void kvp_quest_box_f16(const float *lo, const float *hi, int hd, uint16_t *center, uint16_t *radius) {
    for (int i = 0; i < hd; i++) {
        float c = 0.5f * (hi[i] + lo[i]);
        center[i] = kvp_f32_to_f16(c);
        float cc = kvp_f16_to_f32(center[i]); /* the box around the rounded centre must hold [lo, hi] */
        radius[i] = kvp_f16_up(fmaxf(hi[i] - cc, cc - lo[i]));
    }
}

void kvp_quest_bounds(const float *Q, int nq, int hd, const uint16_t *center, const uint16_t *radius, int nb,
                      float *absq, float *tmp, float *ub) {
    for (int i = 0; i < nq * hd; i++) absq[i] = fabsf(Q[i]);
    kvp_attn_scores_f16(center, nb, hd, Q, nq, hd, 1.0f, ub, nb);
    kvp_attn_scores_f16(radius, nb, hd, absq, nq, hd, 1.0f, tmp, nb);
    for (int i = 0; i < nq * nb; i++) ub[i] += tmp[i];
}

/* 1 when block a ranks before block b: higher score, then the earlier block. */
static inline int kvp_blk_better(const float *score, int a, int b) {
    if (score[a] != score[b]) return score[a] > score[b];
    return a < b;
}

/* Reorders idx[0..n) so that its first k entries are the k best blocks. */
static void kvp_blk_select(const float *score, int *idx, int n, int k) {
    if (k <= 0 || k >= n) return;
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2, t = idx[mid];
        idx[mid] = idx[hi];
        idx[hi] = t;
        int piv = idx[hi], store = lo;
        for (int i = lo; i < hi; i++) { /* swap always, advance on a win: no branch to mispredict */
            t = idx[i];
            idx[i] = idx[store];
            idx[store] = t;
            store += kvp_blk_better(score, t, piv);
        }
        idx[hi] = idx[store];
        idx[store] = piv;
        if (store == k || store == k - 1) return;
        if (store < k) lo = store + 1;
        else hi = store - 1;
    }
}

/* Takes the best remaining block that fits, one at a time; idx[0..n) are the remaining. */
static int kvp_blk_fill(const float *score, const int *len, int *idx, int n, int *left, uint8_t *mark) {
    int taken = 0;
    for (;;) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (!mark[idx[i]] && len[idx[i]] <= *left && (best < 0 || kvp_blk_better(score, idx[i], best)))
                best = idx[i];
        if (best < 0 || len[best] <= 0) return taken;
        mark[best] = 1;
        *left -= len[best];
        taken++;
    }
}

int kvp_pick_blocks(const float *score, const int *len, int nb, int budget, int *order, int *sel) {
    int maxlen = 1, left = budget, n = 0, total = 0;
    if (nb <= 0) return 0;
    for (int b = 0; b < nb; b++) {
        maxlen = KVP_MAX(maxlen, len[b]);
        if (len[b] > 0) order[n++] = b;
    }
    uint8_t *mark = (uint8_t *)sel; /* sel doubles as the taken-marks until the end */
    memset(mark, 0, (size_t)nb);
    for (int k = left / maxlen; k > 0 && n > 0; k = left / maxlen) { /* the k best surely fit */
        kvp_blk_select(score, order, n, k);
        for (int i = 0; i < KVP_MIN(k, n); i++) {
            mark[order[i]] = 1;
            left -= len[order[i]];
        }
        memmove(order, order + KVP_MIN(k, n), sizeof(int) * (size_t)(n - KVP_MIN(k, n)));
        n -= KVP_MIN(k, n);
    }
    kvp_blk_fill(score, len, order, n, &left, mark);
    for (int b = 0; b < nb; b++) order[b] = mark[b];
    for (int b = 0; b < nb; b++)
        if (order[b]) sel[total++] = b;
    return total;
}
