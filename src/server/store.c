/*
 * store.c: the server's use of a context store. Loading the longest stored prefix and
 * storing a prompt's new full chunks go through the codec's store API; a store that fails
 * (Redis stopped, a timeout, a full disk) costs a warning in the metrics and a back-off:
 * for the next KVP_STORE_BACKOFF seconds no call is made and prompts are prefilled, then the
 * store is tried again (a Redis connection is re-opened). A small set remembers which
 * prefixes are known to be stored, so a prompt whose chunks are all known makes no call.
 */
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "common/common.h"
#include "store/store.h"
#include "srv_internal.h"

#define KVP_STORE_BACKOFF 2.0
#define KVP_KNOWN_MAX 4096
#define KVP_HASH0 0xcbf29ce484222325ULL

/* The hash of tokens [0, end), extended from the hash h of a shorter prefix. */
static uint64_t kvp_prefix_hash(uint64_t h, const int *toks, int from, int end) {
    for (int i = from; i < end; i++) {
        h ^= (uint64_t)(uint32_t)toks[i];
        h *= 0x100000001b3ULL;
        h ^= h >> 29;
    }
    return h;
}

static int kvp_known_has(const kvp_srv_store *st, uint64_t h) {
    for (int i = 0; i < st->n_known; i++)
        if (st->known[i] == h) return 1;
    return 0;
}

static void kvp_known_add(kvp_srv_store *st, uint64_t h) {
    if (kvp_known_has(st, h)) return;
    if (st->n_known == KVP_KNOWN_MAX) st->n_known = 0; /* forget everything: costs a few `has` calls */
    if (st->n_known == st->cap_known) {
        int cap = st->cap_known ? 2 * st->cap_known : 64;
        uint64_t *nk = realloc(st->known, sizeof *nk * (size_t)cap);
        if (!nk) return;
        st->known = nk;
        st->cap_known = cap;
    }
    st->known[st->n_known++] = h;
}

/* Records a store failure: counted, and no call before the back-off has passed. */
static void kvp_sstore_failed(kvp_srv *s) {
    s->store.retry_at = kvp_now() + KVP_STORE_BACKOFF;
    s->store.n_known = 0;
    pthread_mutex_lock(&s->metrics.mu);
    s->metrics.store_errors++;
    pthread_mutex_unlock(&s->metrics.mu);
}

int kvp_sstore_open(kvp_srv *s) {
    kvp_srv_store *st = &s->store;
    st->level = s->p.store_level;
    st->chunk = s->p.chunk_tokens;
    st->timeout_ms = s->p.store_timeout_ms;
    if (!s->p.store || !*s->p.store) return KVP_OK;
    kvp_fingerprint fp;
    kvp_fingerprint_of(s->m, &fp);
    st->md = kvp_fingerprint_digest(&fp);
    if (!(st->uri = strdup(s->p.store))) return kvp_seterr(KVP_ENOMEM, "out of memory opening the store");
    kvp_store_params sp = kvp_store_default_params();
    sp.timeout_ms = st->timeout_ms;
    int rc = kvp_store_open(st->uri, &sp, &st->st);
    if (rc == KVP_EUNSUPPORTED || rc == KVP_EINVAL) return rc; /* a bad URI or a store this build lacks */
    if (rc < 0) kvp_sstore_failed(s);                         /* unreachable now: tried again later */
    return KVP_OK;
}

void kvp_sstore_close(kvp_srv_store *st) {
    kvp_store_free(st->st);
    free(st->uri);
    free(st->known);
    memset(st, 0, sizeof *st);
}

/* 1 when a store is configured, open (re-opened if needed) and not backing off. */
int kvp_sstore_usable(kvp_srv *s) {
    kvp_srv_store *st = &s->store;
    if (!st->uri || kvp_now() < st->retry_at) return 0;
    if (st->st) return 1;
    kvp_store_params sp = kvp_store_default_params();
    sp.timeout_ms = st->timeout_ms;
    if (kvp_store_open(st->uri, &sp, &st->st) == KVP_OK) return 1;
    kvp_sstore_failed(s);
    return 0;
}

/* 1 when the store holds the chunk of toks that ends at `end`, 0 when it does not, -1 when
 * the store failed (counted, backing off). */
static int kvp_sstore_has(kvp_srv *s, const int *toks, int end) {
    kvp_srv_store *st = &s->store;
    if (kvp_known_has(st, kvp_prefix_hash(KVP_HASH0, toks, 0, end))) return 1;
    uint8_t key[16];
    kvp_store_key(st->md, st->chunk, toks, end, key);
    int has = kvp_store_has(st->st, key);
    if (has < 0) kvp_sstore_failed(s);
    return has < 0 ? -1 : has;
}

static void kvp_sstore_count(kvp_srv *s, uint64_t hits, uint64_t misses) {
    pthread_mutex_lock(&s->metrics.mu);
    s->metrics.store_hits += hits;
    s->metrics.store_misses += misses;
    pthread_mutex_unlock(&s->metrics.mu);
}

/* 1 when the store holds more full chunks of toks[0..n) than the `have` positions memory
 * can give: one `has` call for the chunk after them. */
int kvp_sstore_has_more(kvp_srv *s, const int *toks, int n, int have) {
    int C = s->store.chunk;
    if (n / C <= have / C || !kvp_sstore_usable(s)) return 0;
    int has = kvp_sstore_has(s, toks, (have / C + 1) * C);
    if (has == 0) kvp_sstore_count(s, 0, 1);
    return has > 0;
}

/* Loads into the empty slot sl the longest stored prefix of toks[0..n); returns the
 * positions loaded (those before a failure are kept; the failure is counted). */
int kvp_sstore_load(kvp_srv *s, kvp_slot *sl, const int *toks, int n) {
    int C = s->store.chunk, loaded = 0;
    int rc = kvp_context_load_store(sl->ctx, s->store.st, toks, n, C, &loaded);
    if (rc < 0) kvp_sstore_failed(s);
    kvp_sstore_count(s, (uint64_t)(loaded / C), rc == KVP_OK && loaded / C < n / C);
    uint64_t h = KVP_HASH0;
    for (int end = C; end <= loaded; end += C) kvp_known_add(&s->store, h = kvp_prefix_hash(h, toks, end - C, end));
    if (loaded > 0 && kvp_slot_push(sl, toks, loaded) < 0) return kvp_slot_truncate(sl, 0);
    return loaded;
}

/* 1 when every full chunk of toks[0..n) is known to be stored. */
static int kvp_sstore_all_known(kvp_srv_store *st, const int *toks, int n) {
    uint64_t h = KVP_HASH0;
    for (int end = st->chunk; end <= n; end += st->chunk)
        if (!kvp_known_has(st, h = kvp_prefix_hash(h, toks, end - st->chunk, end))) return 0;
    return 1;
}

/* Stores the full chunks of the prompt toks[0..n) that slot sl's context holds and the store
 * may lack. Failures are counted and back off; they never fail the request. */
void kvp_sstore_save(kvp_srv *s, kvp_slot *sl, const int *toks, int n) {
    kvp_srv_store *st = &s->store;
    if (!sl->reusable || n < st->chunk || kvp_sstore_all_known(st, toks, n) || !kvp_sstore_usable(s)) return;
    kvp_save_params sp = kvp_save_default_params();
    sp.level = st->level;
    sp.chunk_tokens = st->chunk;
    int stored = 0, rc = kvp_context_save_store(sl->ctx, toks, n, &sp, st->st, &stored);
    if (rc < 0) {
        kvp_sstore_failed(s);
        return;
    }
    pthread_mutex_lock(&s->metrics.mu);
    s->metrics.store_written += (uint64_t)stored;
    pthread_mutex_unlock(&s->metrics.mu);
    uint64_t h = KVP_HASH0;
    for (int end = st->chunk; end <= n; end += st->chunk) kvp_known_add(st, h = kvp_prefix_hash(h, toks, end - st->chunk, end));
}
