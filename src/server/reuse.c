/*
 * reuse.c: finding and loading the longest cached prefix of a prompt.
 *
 * Sources, for contexts of the same cache (spec, policy and budget):
 *   idle     an idle context whose tokens start the prompt: it is truncated to the common
 *            prefix and taken over (no copy);
 *   session  a running session's context: its KV for the common prefix is copied (read back
 *            as F32 and appended, which is exact for F16 and F32 caches);
 *   cold     an entry of the in-memory cold tier: decoded by the context codec;
 *   store    the context store, when it holds more full chunks than memory can give.
 * At most all prompt tokens but the last are reused: the last is prefilled for its logits.
 */
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "srv_internal.h"

#define KVP_REUSE_MIN_COPY 16 /* shorter prefixes are prefilled rather than taken, copied or decoded */
#define KVP_COPY_PIECE 64     /* positions per copy step (the size of s->copy_buf) */

typedef struct {
    int src;           /* KVP_SRV_REUSE_* */
    kvp_slot *slot;    /* idle / session */
    int cold;          /* index of a cold entry */
    int n;             /* positions it gives */
} kvp_reuse_plan;

/* Takes a source giving n positions if it is the best so far. An idle context is taken
 * over only when the prefix is worth it or loses nothing of its cache (a one-token match,
 * the BOS, would otherwise throw a whole idle cache away). */
static void kvp_reuse_consider(kvp_reuse_plan *best, int src, kvp_slot *sl, int cold, int n) {
    int whole = src == KVP_SRV_REUSE_IDLE && n > 0 && n == sl->n_toks;
    if (n < KVP_REUSE_MIN_COPY && !whole) return;
    if (n > best->n || (n == best->n && n > 0 && src == KVP_SRV_REUSE_IDLE && best->src != KVP_SRV_REUSE_IDLE))
        *best = (kvp_reuse_plan){src, sl, cold, n};
}

/* The best prefix in memory for job j (its prompt but the last token). */
static kvp_reuse_plan kvp_reuse_scan(kvp_srv *s, const kvp_srv_job *j) {
    kvp_reuse_plan best = {KVP_SRV_REUSE_NONE, NULL, -1, 0};
    int limit = j->n_tokens - 1;
    for (int i = 0; i < s->n_slots; i++) {
        kvp_slot *sl = s->slots[i];
        if (!sl->reusable || strcmp(sl->key, j->key)) continue;
        int n = kvp_lcp(sl->toks, sl->n_toks, j->tokens, limit);
        kvp_reuse_consider(&best, sl->sess ? KVP_SRV_REUSE_COPY : KVP_SRV_REUSE_IDLE, sl, -1, n);
    }
    for (int i = 0; i < s->n_cold; i++)
        if (!strcmp(s->cold[i].key, j->key))
            kvp_reuse_consider(&best, KVP_SRV_REUSE_COLD, NULL, i, kvp_lcp(s->cold[i].toks, s->cold[i].n, j->tokens, limit));
    return best;
}

/* An empty slot for job j: a new context while there is room for one, else the least
 * recently used idle context (of the same cache, else another one is freed for a new
 * context). An idle context's cache goes to the cold tier first. */
static int kvp_reuse_acquire(kvp_srv *s, kvp_srv_job *j, kvp_slot **out) {
    *out = NULL;
    int i = s->n_slots < s->max_slots ? -1 : kvp_budget_lru_idle(s);
    if (s->n_slots >= s->max_slots && i < 0) return kvp_seterr(KVP_EINTERNAL, "no context is free");
    if (i >= 0) {
        kvp_slot *sl = s->slots[i];
        kvp_budget_demote(s, sl);
        if (!strcmp(sl->key, j->key)) {
            *out = sl;
            return KVP_OK;
        }
        kvp_srv_remove_slot(s, i);
    }
    KVP_TRY(kvp_slot_new(s, j->key, j, out));
    s->slots[s->n_slots++] = *out;
    return KVP_OK;
}

/* Copies the first n positions of src's context into the empty dst. */
static int kvp_reuse_copy(kvp_srv *s, kvp_slot *src, kvp_slot *dst, int n) {
    for (int p = 0; p < n; p += KVP_COPY_PIECE) {
        int b = KVP_MIN(KVP_COPY_PIECE, n - p);
        int rc = kvp_ctx_kv_read(src->ctx, p, b, s->copy_buf);
        if (rc == KVP_OK) rc = kvp_ctx_kv_import(dst->ctx, src->toks + p, b, s->copy_buf);
        if (rc == KVP_OK) rc = kvp_slot_push(dst, src->toks + p, b);
        if (rc < 0) return kvp_slot_truncate(dst, 0);
    }
    return n;
}

/* Loads the plan's prefix into the empty slot sl; returns the positions it holds. */
static int kvp_reuse_load(kvp_srv *s, const kvp_reuse_plan *pl, kvp_slot *sl, const kvp_srv_job *j) {
    if (pl->src == KVP_SRV_REUSE_STORE) return kvp_sstore_load(s, sl, j->tokens, j->n_tokens - 1);
    if (pl->src == KVP_SRV_REUSE_COPY) return kvp_reuse_copy(s, pl->slot, sl, pl->n);
    if (pl->src != KVP_SRV_REUSE_COLD) return 0;
    int n = kvp_cold_load(s, pl->cold, sl);
    return n < 0 ? 0 : kvp_slot_truncate(sl, pl->n);
}

static void kvp_reuse_count(kvp_srv *s, const kvp_srv_job *j, int src, int n) {
    pthread_mutex_lock(&s->metrics.mu);
    s->metrics.prompt_tokens += (uint64_t)j->n_tokens;
    s->metrics.reused[src] += (uint64_t)n;
    s->metrics.prefilled += (uint64_t)(j->n_tokens - n);
    pthread_mutex_unlock(&s->metrics.mu);
}

int kvp_reuse_prepare(kvp_srv *s, kvp_sess *ss) {
    kvp_srv_job *j = ss->job;
    kvp_reuse_plan pl = {KVP_SRV_REUSE_NONE, NULL, -1, 0};
    if (!j->no_reuse) pl = kvp_reuse_scan(s, j);
    if (!j->no_reuse && kvp_sstore_has_more(s, j->tokens, j->n_tokens - 1, pl.n))
        pl = (kvp_reuse_plan){KVP_SRV_REUSE_STORE, NULL, -1, 0};
    kvp_slot *sl = pl.src == KVP_SRV_REUSE_IDLE ? pl.slot : NULL;
    if (!sl) KVP_TRY(kvp_reuse_acquire(s, j, &sl));
    int n = pl.src == KVP_SRV_REUSE_IDLE ? kvp_slot_truncate(sl, pl.n) : kvp_reuse_load(s, &pl, sl, j);
    if (pl.src == KVP_SRV_REUSE_NONE) kvp_slot_truncate(sl, 0);
    int src = n > 0 ? pl.src : KVP_SRV_REUSE_NONE;
    sl->sess = ss;
    sl->last_used = kvp_now();
    ss->slot = sl;
    ss->fed = n;
    kvp_reuse_count(s, j, src, n);
    kvp_job_set_admitted(j, n, src);
    return KVP_OK;
}
