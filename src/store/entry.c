/*
 * entry.c: store entries (one chunk with its key, model digest, position and tokens), and
 * saving and loading contexts through a store.
 */
#include <stdio.h>
#include <stdlib.h>

#include "codec/codec.h"
#include "codec/hash.h"
#include "common/common.h"
#include "engine/engine.h"
#include "store.h"

#define KVP_ENTRY_VERSION 3 /* written; entry version N holds chunks of .kvz version N */

/* ---- entries ---- */

size_t kvp_entry_bytes(int n_tokens, size_t blob) { return KVP_ENTRY_FIXED + 4 * (size_t)n_tokens + 4 + blob + 4; }

void kvp_entry_write(uint8_t *out, const uint8_t key[16], uint64_t md, int chunk_tokens, int end, const int *tokens,
                     int n_tokens, const uint8_t *blob, size_t blob_size) {
    memcpy(out, "KVPE", 4);
    kvp_wr16(out + 4, KVP_ENTRY_VERSION);
    kvp_wr16(out + 6, 0);
    memcpy(out + 8, key, 16);
    kvp_wr64(out + 24, md);
    kvp_wr32(out + 32, (uint32_t)chunk_tokens);
    kvp_wr32(out + 36, (uint32_t)end);
    kvp_wr32(out + 40, (uint32_t)n_tokens);
    uint8_t *p = out + KVP_ENTRY_FIXED;
    for (int i = 0; i < n_tokens; i++, p += 4) kvp_wr32(p, (uint32_t)tokens[i]);
    kvp_wr32(p, (uint32_t)blob_size);
    memcpy(p + 4, blob, blob_size);
    p += 4 + blob_size;
    kvp_wr32(p, kvp_crc32c(0, out, (size_t)(p - out)));
}

static int kvp_entry_head(const uint8_t *in, size_t size, int n_tokens) {
    if (size < kvp_entry_bytes(n_tokens, 0))
        return kvp_seterr(KVP_EFORMAT, "store entry of %zu bytes is too short for %d tokens", size, n_tokens);
    if (memcmp(in, "KVPE", 4)) return kvp_seterr(KVP_EFORMAT, "store entry does not start with 'KVPE'");
    if (kvp_rd16(in + 4) < 1 || kvp_rd16(in + 4) > KVP_ENTRY_VERSION)
        return kvp_seterr(KVP_EUNSUPPORTED, "store entry version %u is not supported (1 to %d)", kvp_rd16(in + 4),
                          KVP_ENTRY_VERSION);
    uint32_t crc = kvp_rd32(in + size - 4), got = kvp_crc32c(0, in, size - 4);
    if (crc != got) return kvp_seterr(KVP_ECORRUPT, "store entry checksum mismatch (stored %08x, computed %08x)", crc, got);
    if (kvp_rd16(in + 6)) return kvp_seterr(KVP_EFORMAT, "store entry's reserved field is not zero");
    return KVP_OK;
}

int kvp_entry_check(const uint8_t *in, size_t size, const uint8_t key[16], uint64_t md, int chunk_tokens, int end,
                    const int *tokens, int n_tokens, const uint8_t **blob, size_t *blob_size) {
    KVP_TRY(kvp_entry_head(in, size, n_tokens));
    if (memcmp(in + 8, key, 16)) return kvp_seterr(KVP_EMISMATCH, "store entry holds another key");
    if (kvp_rd64(in + 24) != md) return kvp_seterr(KVP_EMISMATCH, "store entry was made by another model");
    if (kvp_rd32(in + 32) != (uint32_t)chunk_tokens || kvp_rd32(in + 36) != (uint32_t)end ||
        kvp_rd32(in + 40) != (uint32_t)n_tokens)
        return kvp_seterr(KVP_EMISMATCH, "store entry covers %u tokens ending at %u (chunks of %u), expected %d at %d (%d)",
                          kvp_rd32(in + 40), kvp_rd32(in + 36), kvp_rd32(in + 32), n_tokens, end, chunk_tokens);
    const uint8_t *p = in + KVP_ENTRY_FIXED;
    for (int i = 0; i < n_tokens; i++, p += 4)
        if (kvp_rd32(p) != (uint32_t)tokens[i])
            return kvp_seterr(KVP_EMISMATCH, "store entry's token %d is %u, the prompt has %d", end - n_tokens + i,
                              kvp_rd32(p), tokens[i]);
    *blob_size = kvp_rd32(p);
    if (*blob_size != size - kvp_entry_bytes(n_tokens, 0))
        return kvp_seterr(KVP_EFORMAT, "store entry's chunk of %zu bytes does not fill it", *blob_size);
    *blob = p + 4;
    return KVP_OK;
}

/* ---- saving through a store ---- */

/* Stores chunk i of the saver under its key unless the store holds it already. */
static int kvp_store_chunk(kvp_saver *sv, kvp_store *s, const int *tokens, uint64_t md, int i, int *stored) {
    int C = sv->h.chunk_tokens, end = (i + 1) * C;
    uint8_t key[16];
    kvp_store_key(md, C, tokens, end, key);
    int has = kvp_store_has(s, key);
    if (has != 0) return has < 0 ? has : KVP_OK;
    size_t size = 0;
    KVP_TRY(kvp_saver_encode(sv, i, &size));
    if (sv->chunk[4] == KVP_LEVEL_TEXT) return KVP_OK; /* recomputing needs no entry */
    size_t n = kvp_entry_bytes(C, size);
    uint8_t *e = malloc(n);
    if (!e) return kvp_seterr(KVP_ENOMEM, "out of memory for a store entry of %zu bytes", n);
    kvp_entry_write(e, key, md, C, end, tokens + end - C, C, sv->chunk, size);
    int rc = kvp_store_put(s, key, e, n);
    free(e);
    *stored += rc == KVP_OK;
    return rc;
}

int kvp_context_save_store(kvp_ctx *c, const int *tokens, int n_tokens, const kvp_save_params *p, kvp_store *s,
                           int *n_new) {
    kvp_save_params def = kvp_save_default_params();
    if (!p) p = &def;
    if (n_new) *n_new = 0;
    if (!tokens || !s) return kvp_seterr(KVP_EINVAL, "kvp_context_save_store: no tokens or no store");
    int C = p->chunk_tokens > 0 ? p->chunk_tokens : KVP_CHUNK_TOKENS_DEFAULT, full = n_tokens / C;
    if (full == 0) return KVP_OK; /* no full chunk yet */
    kvp_saver sv;
    int rc = kvp_saver_init(&sv, c, full * C, p), stored = 0;
    uint64_t md = kvp_fingerprint_digest(&sv.h.fp);
    for (int i = 0; rc == KVP_OK && i < full; i++) rc = kvp_store_chunk(&sv, s, tokens, md, i, &stored);
    kvp_saver_free(&sv);
    if (n_new) *n_new = stored;
    return rc;
}

/* ---- loading through a store ---- */

typedef struct {
    kvp_ctx *c;
    kvp_store *s;
    const int *tokens;
    int C;
    uint64_t md;
    kvp_chunk_shape shape;
    kvp_codec *cd;
    float *kv;
} kvp_loader;

/* Loads the chunk that ends at `end` into the context. KVP_ENOTFOUND when it is not stored. */
static int kvp_load_entry(kvp_loader *ld, int end) {
    uint8_t key[16];
    kvp_store_key(ld->md, ld->C, ld->tokens, end, key);
    void *data = NULL;
    size_t size = 0;
    KVP_TRY(kvp_store_get(ld->s, key, &data, &size));
    const uint8_t *blob = NULL;
    size_t bn = 0;
    int pos = end - ld->C, level = 0;
    int rc = kvp_entry_check(data, size, key, ld->md, ld->C, end, ld->tokens + pos, ld->C, &blob, &bn);
    if (rc == KVP_OK) rc = kvp_chunk_level(blob, bn, &level);
    ld->shape.version = rc == KVP_OK ? kvp_rd16((const uint8_t *)data + 4) : 0;
    if (rc == KVP_OK && level == KVP_LEVEL_TEXT) rc = kvp_chunk_check_text(blob, bn, &ld->shape, pos, ld->C);
    if (rc == KVP_OK && level == KVP_LEVEL_TEXT) rc = kvp_ctx_decode(ld->c, ld->tokens + pos, ld->C, NULL, 0);
    else if (rc == KVP_OK) rc = kvp_chunk_decode(ld->cd, &ld->shape, pos, ld->C, -1, blob, bn, ld->kv);
    if (rc == KVP_OK && level != KVP_LEVEL_TEXT) rc = kvp_ctx_kv_import(ld->c, ld->tokens + pos, ld->C, ld->kv);
    free(data);
    return rc;
}

static int kvp_loader_init(kvp_loader *ld, kvp_ctx *c, kvp_store *s, const int *tokens, int C) {
    *ld = (kvp_loader){c, s, tokens, C, 0, {0}, NULL, NULL};
    kvp_fingerprint fp;
    kvp_fingerprint_of(kvp_ctx_model(c), &fp);
    ld->md = kvp_fingerprint_digest(&fp);
    ld->shape = kvp_fingerprint_shape(&fp);
    size_t vals = (size_t)ld->shape.n_layers * 2 * (size_t)C * (size_t)ld->shape.n_kv_heads * ld->shape.head_dim;
    if (vals > KVP_CHUNK_MAX_VALUES) return kvp_seterr(KVP_EINVAL, "chunks of %d tokens are too large", C);
    ld->kv = malloc(sizeof(float) * vals);
    if (!ld->kv) return kvp_seterr(KVP_ENOMEM, "out of memory for a chunk of %zu values", vals);
    return kvp_codec_new(kvp_ctx_pool(c), &ld->cd);
}

int kvp_context_load_store(kvp_ctx *c, kvp_store *s, const int *tokens, int n_tokens, int chunk_tokens,
                           int *n_loaded) {
    *n_loaded = 0;
    int C = chunk_tokens > 0 ? chunk_tokens : KVP_CHUNK_TOKENS_DEFAULT;
    if (!tokens || !s || n_tokens < 0 || C > KVP_KVZ_MAX_CHUNK_TOKENS)
        return kvp_seterr(KVP_EINVAL, "kvp_context_load_store: bad arguments (%d tokens, chunks of %d)", n_tokens, C);
    if (kvp_ctx_pos(c) != 0)
        return kvp_seterr(KVP_EINVAL, "stored chunks can only be loaded into an empty context (it holds %d)", kvp_ctx_pos(c));
    kvp_loader ld;
    int rc = kvp_loader_init(&ld, c, s, tokens, C);
    for (int end = C; rc == KVP_OK && end <= KVP_MIN(n_tokens, kvp_ctx_n_ctx(c)); end += C) {
        rc = kvp_load_entry(&ld, end);
        if (rc == KVP_ENOTFOUND) { rc = KVP_OK; break; }
        if (rc != KVP_OK) {
            char what[64];
            snprintf(what, sizeof what, "stored chunk ending at token %d", end);
            kvp_errprefix(rc, what);
            kvp_ctx_truncate(c, end - C); /* keep only the chunks that loaded */
            break;
        }
        *n_loaded = end;
    }
    kvp_codec_free(ld.cd);
    free(ld.kv);
    return rc;
}
