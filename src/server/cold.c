/*
 * cold.c: the cold tier. An idle context that the memory budget (or the number of contexts)
 * pushes out is encoded with the context codec into memory, at the cold-tier level
 * (lossless by default, so a reload gives exactly the same answers), and its context is
 * freed. A later prompt that starts with its tokens loads it back instead of prefilling.
 * The default level, medium, keeps a few bits per value (a fraction of F16's 16); lossless
 * gives bit-exact reloads but saves little on F16 caches.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "srv_internal.h"

/* Encodes slot sl's context (its tokens and KV) into a new cold entry. Slots that cannot be
 * read back (selection policies) or hold nothing are not encoded (not an error). */
int kvp_cold_put(kvp_srv *s, kvp_slot *sl) {
    int n = KVP_MIN(sl->n_toks, kvp_ctx_pos(sl->ctx));
    if (s->p.cold_level < 0 || !sl->reusable || n < 1) return KVP_OK;
    if (s->n_cold == s->cap_cold) {
        int cap = s->cap_cold ? 2 * s->cap_cold : 8;
        kvp_cold *nc = realloc(s->cold, sizeof *nc * (size_t)cap);
        if (!nc) return kvp_seterr(KVP_ENOMEM, "out of memory for the cold tier");
        s->cold = nc;
        s->cap_cold = cap;
    }
    kvp_save_params sp = kvp_save_default_params();
    sp.level = s->p.cold_level;
    sp.chunk_tokens = s->p.chunk_tokens;
    size_t bound = 0, size = 0;
    KVP_TRY(kvp_context_save_bound(sl->ctx, n, &sp, &bound));
    kvp_cold c = {{0}, malloc(sizeof(int) * (size_t)n), n, malloc(bound), 0, sl->last_used};
    int rc = c.toks && c.kvz ? kvp_context_save(sl->ctx, sl->toks, n, &sp, c.kvz, bound, &size)
                             : kvp_seterr(KVP_ENOMEM, "out of memory for the cold tier");
    void *shrunk = rc == KVP_OK ? realloc(c.kvz, size ? size : 1) : NULL;
    if (rc < 0) {
        free(c.toks);
        free(c.kvz);
        return rc;
    }
    if (shrunk) c.kvz = shrunk;
    memcpy(c.toks, sl->toks, sizeof(int) * (size_t)n);
    snprintf(c.key, sizeof c.key, "%s", sl->key);
    c.size = size;
    s->cold[s->n_cold++] = c;
    return KVP_OK;
}

void kvp_cold_remove(kvp_srv *s, int i) {
    free(s->cold[i].toks);
    free(s->cold[i].kvz);
    memmove(s->cold + i, s->cold + i + 1, sizeof *s->cold * (size_t)(s->n_cold - i - 1));
    s->n_cold--;
}

/* Loads cold entry i into slot sl (reset first) and removes the entry: its cache is hot
 * again. Returns the positions loaded, or a negative error (the slot is then empty). */
int kvp_cold_load(kvp_srv *s, int i, kvp_slot *sl) {
    kvp_slot_truncate(sl, 0);
    int n = 0, rc = kvp_context_load(sl->ctx, s->cold[i].kvz, s->cold[i].size, &n);
    if (rc == KVP_OK && n != s->cold[i].n) rc = kvp_seterr(KVP_EINTERNAL, "a cold entry of %d tokens loaded %d", s->cold[i].n, n);
    if (rc == KVP_OK) rc = kvp_slot_push(sl, s->cold[i].toks, n);
    kvp_cold_remove(s, i);
    if (rc < 0) kvp_slot_truncate(sl, 0);
    return rc < 0 ? rc : n;
}

uint64_t kvp_cold_bytes(const kvp_srv *s) {
    uint64_t b = 0;
    for (int i = 0; i < s->n_cold; i++) b += s->cold[i].size;
    return b;
}
