/*
 * policy_common.c: what the eviction policies share: top-k with sinks and a recent window,
 * 1-D max pooling, and a deterministic partial selection (quickselect over slot indices).
 */
#include <stdlib.h>

#include "common/common.h"
#include "kv/select.h"

/* 1 when slot a ranks before slot b: higher score, then later position. */
static inline int kvp_better(const float *score, const int *pos, int a, int b) {
    if (score[a] != score[b]) return score[a] > score[b];
    return pos[a] > pos[b];
}

static inline void kvp_swap_int(int *a, int *b) {
    int t = *a;
    *a = *b;
    *b = t;
}

/* Reorders idx[0..n) so that its first k entries are the k best slots (in any order).
 * Invariant of the loop: idx[0..lo) rank before idx[lo..n), idx[hi+1..n) after idx[0..hi],
 * and lo <= k <= hi + 1. */
static void kvp_select_best(const float *score, const int *pos, int *idx, int n, int k) {
    if (k <= 0 || k >= n) return;
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        kvp_swap_int(&idx[(lo + hi) / 2], &idx[hi]); /* pivot: the middle element, moved to hi */
        int piv = idx[hi], store = lo;
        for (int i = lo; i < hi; i++)
            if (kvp_better(score, pos, idx[i], piv)) kvp_swap_int(&idx[i], &idx[store++]);
        kvp_swap_int(&idx[store], &idx[hi]);
        if (store == k || store == k - 1) return;
        if (store < k) lo = store + 1;
        else hi = store - 1;
    }
}

int kvp_count_sinks(const int *pos, int n, int sinks) {
    int c = 0;
    while (c < n && pos[c] < sinks) c++;
    return c;
}

void kvp_pick_topk(const float *score, const int *pos, int n, int budget, int sinks, int recent, uint8_t *keep) {
    if (n <= 0) return;
    if (n <= budget) {
        memset(keep, 1, (size_t)n);
        return;
    }
    memset(keep, 0, (size_t)n);
    int ns = KVP_MIN(kvp_count_sinks(pos, n, sinks), budget);
    memset(keep, 1, (size_t)ns);
    int left = budget - ns, rec = KVP_MIN(KVP_MAX(recent, 0), KVP_MIN(left, n - ns));
    memset(keep + n - rec, 1, (size_t)rec);
    left -= rec;
    int nc = n - rec - ns;
    if (left <= 0 || nc <= 0 || !score) return;
    int *idx = malloc(sizeof(int) * (size_t)nc);
    if (!idx) { /* no memory for the ranking: fall back to the most recent candidates */
        memset(keep + n - rec - KVP_MIN(left, nc), 1, (size_t)KVP_MIN(left, nc));
        return;
    }
    for (int i = 0; i < nc; i++) idx[i] = ns + i;
    kvp_select_best(score, pos, idx, nc, left);
    for (int i = 0; i < KVP_MIN(left, nc); i++) keep[idx[i]] = 1;
    free(idx);
}

void kvp_maxpool1d(const float *x, int n, int kernel, float *y) {
    int r = kernel / 2;
    for (int i = 0; i < n; i++) {
        float m = x[i];
        for (int j = KVP_MAX(0, i - r); j <= KVP_MIN(n - 1, i + r); j++) m = x[j] > m ? x[j] : m;
        y[i] = m;
    }
}

/* Ranks the slots [0, n) of one score row and marks the top half: top[t] = 1. */
static void kvp_top_half(const float *score, const int *pos, int n, int *idx, uint8_t *top) {
    if (n <= 0) return;
    for (int i = 0; i < n; i++) idx[i] = i;
    int k = (n + 1) / 2;
    kvp_select_best(score, pos, idx, n, k);
    memset(top, 0, (size_t)n);
    for (int i = 0; i < k; i++) top[idx[i]] = 1;
}

void kvp_kvcrush_signatures(const float *const *score, const int *pos, int n_kv_heads, int n, uint32_t *sig) {
    int *idx = malloc(sizeof(int) * (size_t)KVP_MAX(n, 1));
    uint8_t *top = malloc((size_t)KVP_MAX(n, 1));
    memset(sig, 0, sizeof(uint32_t) * (size_t)n);
    for (int h = 0; idx && top && h < n_kv_heads && h < 32; h++) {
        kvp_top_half(score[h], pos, n, idx, top);
        for (int t = 0; t < n; t++) sig[t] |= (uint32_t)top[t] << h;
    }
    free(idx);
    free(top);
}
