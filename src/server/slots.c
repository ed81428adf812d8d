/*
 * slots.c: the scheduler's contexts ("slots"). A slot remembers the tokens its context holds,
 * so that a later prompt that starts with them reuses its cache, and the most positions it
 * ever held, because a cache keeps its pages after a reset or a truncation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "srv_internal.h"

/* Creates a context for job j's cache (the server's default cache when j is NULL). */
int kvp_slot_new(kvp_srv *s, const char *key, kvp_srv_job *j, kvp_slot **out) {
    *out = NULL;
    kvp_slot *sl = calloc(1, sizeof *sl);
    if (!sl) return kvp_seterr(KVP_ENOMEM, "out of memory creating a context");
    kvp_ctx_params cp = kvp_ctx_default_params();
    cp.n_ctx = s->n_ctx;
    cp.n_threads = s->p.n_threads;
    cp.n_batch = s->p.n_batch;
    cp.kv = j && j->kv ? j->kv : s->kv;
    cp.select = j && j->select ? j->select : s->select;
    cp.budget = j && j->budget ? j->budget : s->budget;
    if (!*cp.select) cp.select = NULL;
    if (!*cp.budget) cp.budget = NULL;
    int rc = kvp_ctx_new(s->m, &cp, &sl->ctx);
    if (rc < 0) {
        free(sl);
        return rc;
    }
    snprintf(sl->key, sizeof sl->key, "%s", key);
    sl->reusable = cp.select == NULL; /* a selection policy evicts tokens: its cache cannot be read back */
    sl->last_used = kvp_now();
    *out = sl;
    return KVP_OK;
}

void kvp_slot_free(kvp_slot *sl) {
    if (!sl) return;
    kvp_ctx_free(sl->ctx);
    free(sl->toks);
    free(sl);
}

int kvp_slot_push(kvp_slot *sl, const int *toks, int n) {
    if (sl->n_toks + n > sl->cap) {
        int cap = KVP_MAX(2 * sl->cap, sl->n_toks + n + 64);
        int *nt = realloc(sl->toks, sizeof(int) * (size_t)cap);
        if (!nt) return kvp_seterr(KVP_ENOMEM, "out of memory recording a context's tokens");
        sl->toks = nt;
        sl->cap = cap;
    }
    memcpy(sl->toks + sl->n_toks, toks, sizeof(int) * (size_t)n);
    sl->n_toks += n;
    sl->hw = KVP_MAX(sl->hw, sl->n_toks);
    return KVP_OK;
}

/* Keeps the first n tokens; a cache that cannot truncate is reset instead. Returns the
 * positions kept. */
int kvp_slot_truncate(kvp_slot *sl, int n) {
    if (n < sl->n_toks && (!sl->reusable || kvp_ctx_truncate(sl->ctx, n) < 0)) n = 0;
    if (n == 0) kvp_ctx_reset(sl->ctx);
    sl->n_toks = KVP_MIN(sl->n_toks, n);
    return sl->n_toks;
}

/* A first guess of the bytes per position of the cache of a key ("kv|select|budget") before
 * it holds any: F32 storage takes 4 bytes per value, every other cache at most the 2 of F16. */
uint64_t kvp_srv_bpt_guess(const kvp_srv *s, const char *key) {
    const kvp_model_info *in = kvp_model_get_info(s->m);
    uint64_t values = 2 * (uint64_t)in->n_layers * (uint64_t)in->n_kv_heads * (uint64_t)in->head_dim;
    return values * (!strncmp(key, "f32|", 4) ? 4 : 2);
}

/* The KV memory a slot holds: its most positions at its measured bytes per position. */
uint64_t kvp_slot_bytes(const kvp_srv *s, kvp_slot *sl) {
    if (!sl->bpt) {
        kvp_kv_stats st;
        int pos = kvp_ctx_pos(sl->ctx);
        if (pos > 0 && kvp_ctx_kv_stats(sl->ctx, &st) == KVP_OK && st.bytes_hot + st.bytes_cold > 0)
            sl->bpt = (st.bytes_hot + st.bytes_cold + (uint64_t)pos - 1) / (uint64_t)pos;
    }
    uint64_t bpt = sl->bpt ? sl->bpt : kvp_srv_bpt_guess(s, sl->key);
    return bpt * (uint64_t)sl->hw;
}

/* Frees slot i (idle) and closes the gap. */
void kvp_srv_remove_slot(kvp_srv *s, int i) {
    kvp_slot_free(s->slots[i]);
    memmove(s->slots + i, s->slots + i + 1, sizeof *s->slots * (size_t)(s->n_slots - i - 1));
    s->n_slots--;
}

/* The length of the longest common prefix of a[0..na) and b[0..nb). */
int kvp_lcp(const int *a, int na, const int *b, int nb) {
    int n = KVP_MIN(na, nb), i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}
