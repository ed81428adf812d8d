/*
 * store.c: opening a store by URI, keys and entries, and saving / loading contexts through a
 * store (the longest stored prefix is loaded; new full chunks are stored).
 */
#include <stdio.h>
#include <stdlib.h>

#include "codec/codec.h"
#include "codec/hash.h"
#include "common/common.h"
#include "engine/engine.h"
#include "store.h"

kvp_store_params kvp_store_default_params(void) {
    kvp_store_params p = {0, 0, 2000, NULL};
    return p;
}

int kvp_store_open(const char *uri, const kvp_store_params *p, kvp_store **out) {
    *out = NULL;
    kvp_store_params def = kvp_store_default_params();
    if (!p) p = &def;
    if (!uri || !*uri) return kvp_seterr(KVP_EINVAL, "no store given");
    if (p->ttl_seconds < 0 || p->timeout_ms < 0 || (p->prefix && strlen(p->prefix) >= 64))
        return kvp_seterr(KVP_EINVAL, "bad store parameters (ttl %d s, timeout %d ms)", p->ttl_seconds, p->timeout_ms);
    if (!strncmp(uri, "redis://", 8)) return kvp_store_redis_open(uri, p, out);
    if (strstr(uri, "://")) return kvp_seterr(KVP_EINVAL, "unknown store '%s' (valid: redis://HOST:PORT/DB, dir:PATH or a directory)", uri);
    return kvp_store_dir_open(!strncmp(uri, "dir:", 4) ? uri + 4 : uri, p, out);
}

void kvp_store_free(kvp_store *s) {
    if (s) s->vt->free(s);
}

int kvp_store_put(kvp_store *s, const uint8_t key[16], const void *data, size_t size) {
    char hex[KVP_STORE_KEY_HEX];
    kvp_store_key_hex(key, hex);
    return s->vt->put(s, hex, data, size);
}

int kvp_store_get(kvp_store *s, const uint8_t key[16], void **data, size_t *size) {
    char hex[KVP_STORE_KEY_HEX];
    kvp_store_key_hex(key, hex);
    *data = NULL;
    *size = 0;
    return s->vt->get(s, hex, data, size);
}

int kvp_store_has(kvp_store *s, const uint8_t key[16]) {
    char hex[KVP_STORE_KEY_HEX];
    kvp_store_key_hex(key, hex);
    return s->vt->has(s, hex);
}

int kvp_store_usage(kvp_store *s, uint64_t *bytes, uint64_t *entries) { return s->vt->usage(s, bytes, entries); }

/* ---- keys ---- */

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "store keys hash the token array as little-endian u32 in place"
#endif

void kvp_store_key(uint64_t md, int chunk_tokens, const int *tokens, int end, uint8_t key[16]) {
    uint8_t b[24];
    kvp_wr64(b, md);
    kvp_wr32(b + 8, (uint32_t)chunk_tokens);
    kvp_wr32(b + 12, (uint32_t)end);
    kvp_wr64(b + 16, kvp_xxh64(tokens, 4 * (size_t)end, 0)); /* the ids as little-endian u32 */
    kvp_wr64(key, kvp_xxh64(b, sizeof b, 1));
    kvp_wr64(key + 8, kvp_xxh64(b, sizeof b, 2));
}

void kvp_store_key_hex(const uint8_t key[16], char hex[KVP_STORE_KEY_HEX]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        hex[2 * i] = digits[key[i] >> 4];
        hex[2 * i + 1] = digits[key[i] & 15];
    }
    hex[32] = 0;
}
