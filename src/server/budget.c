/*
 * budget.c: the KV memory budget (--kv-memory). It bounds the KV bytes of every context,
 * running or idle ("hot": the most positions each context has held, since caches keep their
 * pages) plus the cold tier's encoded entries. A job is admitted when the running sessions'
 * reservations (prompt + max_tokens positions each) leave room for its own; idle and cold
 * caches never block admission: when the total is over the budget, the least recently used
 * idle context is compressed into the cold tier and freed, then the least recently used cold
 * entries are dropped (their full chunks stay in the store when there is one).
 */
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "srv_internal.h"

uint64_t kvp_budget_hot(kvp_srv *s) {
    uint64_t b = 0;
    for (int i = 0; i < s->n_slots; i++) b += kvp_slot_bytes(s, s->slots[i]);
    return b;
}

/* The measured bytes per position of a cache key, else the guess. */
static uint64_t kvp_budget_bpt(kvp_srv *s, const char *key) {
    for (int i = 0; i < s->n_slots; i++)
        if (s->slots[i]->bpt && !strcmp(s->slots[i]->key, key)) return s->slots[i]->bpt;
    return kvp_srv_bpt_guess(s, key);
}

/* What running sessions may come to hold: each its whole prompt and max_tokens. */
uint64_t kvp_budget_reserved(kvp_srv *s, const kvp_sess *except) {
    uint64_t b = 0;
    for (const kvp_sess *ss = s->sessions; ss; ss = ss->next) {
        if (ss == except) continue;
        uint64_t want = kvp_budget_need(s, ss->job), have = kvp_slot_bytes(s, ss->slot);
        b += want > have ? want : have;
    }
    return b;
}

uint64_t kvp_budget_need(kvp_srv *s, const kvp_srv_job *j) {
    return kvp_budget_bpt(s, j->key) * (uint64_t)(j->n_tokens + j->max_tokens);
}

/* The index of the least recently used idle slot, or -1. */
int kvp_budget_lru_idle(kvp_srv *s) {
    int best = -1;
    for (int i = 0; i < s->n_slots; i++)
        if (!s->slots[i]->sess && (best < 0 || s->slots[i]->last_used < s->slots[best]->last_used)) best = i;
    return best;
}

static int kvp_budget_lru_cold(const kvp_srv *s) {
    int best = -1;
    for (int i = 0; i < s->n_cold; i++)
        if (best < 0 || s->cold[i].last_used < s->cold[best].last_used) best = i;
    return best;
}

static void kvp_budget_count(kvp_srv *s, uint64_t compressed, uint64_t dropped) {
    pthread_mutex_lock(&s->metrics.mu);
    s->metrics.compressed += compressed;
    s->metrics.dropped += dropped;
    pthread_mutex_unlock(&s->metrics.mu);
}

void kvp_budget_demote(kvp_srv *s, kvp_slot *sl) {
    if (sl->n_toks == 0) return;
    int before = s->n_cold;
    kvp_cold_put(s, sl);
    kvp_budget_count(s, s->n_cold > before, s->n_cold == before);
    kvp_slot_truncate(sl, 0);
}

/* Frees one idle context (its cache to the cold tier) or drops one cold entry; 0 when
 * there is neither. */
static int kvp_budget_evict_one(kvp_srv *s) {
    int i = kvp_budget_lru_idle(s);
    if (i >= 0) {
        kvp_budget_demote(s, s->slots[i]);
        kvp_srv_remove_slot(s, i);
        return 1;
    }
    if ((i = kvp_budget_lru_cold(s)) < 0) return 0;
    kvp_cold_remove(s, i);
    kvp_budget_count(s, 0, 1);
    return 1;
}

void kvp_budget_enforce(kvp_srv *s) {
    while (s->n_cold > 4 * s->max_slots) { /* without a budget the cold tier still has a bound */
        kvp_cold_remove(s, kvp_budget_lru_cold(s));
        kvp_budget_count(s, 0, 1);
    }
    if (!s->p.kv_memory) return;
    while (kvp_budget_hot(s) + kvp_cold_bytes(s) > s->p.kv_memory)
        if (!kvp_budget_evict_one(s)) break;
}
