/*
 * kvz.c: the .kvz container: writing and parsing the header (fingerprint, token ids, chunk
 * table, CRC32C), and decoding chunks from it into buffers or a context (docs/FORMAT.md).
 * The parser treats every byte as hostile.
 */
#include <stdio.h>
#include <stdlib.h>

#include "codec.h"
#include "common/common.h"
#include "engine/engine.h"
#include "hash.h"

struct kvp_kvz {
    kvp_kvz_info info;
    kvp_kvz_header h;
    int *tokens;
    kvp_kvz_chunk_info *chunks;
    const uint8_t *data;
    size_t size;
    kvp_codec *codec;       /* decoding state, bound to codec_pool */
    kvp_pool *codec_pool;
    float *kv;              /* one chunk of decoded KV */
};

/* ---- writing ---- */

uint64_t kvp_kvz_header_bytes(int n_tokens, int n_chunks, int token_bytes) {
    return KVP_KVZ_FIXED + (uint64_t)n_tokens * (uint64_t)token_bytes + (uint64_t)n_chunks * KVP_KVZ_ENTRY + 4;
}

static void kvp_kvz_write_table(const kvp_kvz_chunk_info *c, int n, uint8_t *p) {
    for (int i = 0; i < n; i++, p += KVP_KVZ_ENTRY) {
        kvp_wr64(p, c[i].offset);
        kvp_wr32(p + 8, c[i].size);
        kvp_wr32(p + 12, c[i].crc32c);
        kvp_wr32(p + 16, (uint32_t)c[i].n_tokens);
        p[20] = (uint8_t)c[i].level;
        p[21] = p[22] = p[23] = 0;
    }
}

void kvp_kvz_write_header(const kvp_kvz_header *h, const int *tokens, const kvp_kvz_chunk_info *chunks,
                          uint8_t *out) {
    memset(out, 0, KVP_KVZ_FIXED);
    memcpy(out, "KVPZ", 4);
    kvp_wr16(out + 4, KVP_KVZ_VERSION);
    kvp_wr32(out + 8, (uint32_t)h->header_size);
    kvp_wr32(out + 12, (uint32_t)h->n_tokens);
    kvp_wr32(out + 16, (uint32_t)h->n_chunks);
    kvp_wr32(out + 20, (uint32_t)h->chunk_tokens);
    out[24] = (uint8_t)h->token_bytes;
    out[25] = (uint8_t)h->kv_type;
    kvp_wr64(out + 32, h->total_size);
    kvp_fingerprint_write(&h->fp, out + 40);
    uint8_t *p = out + KVP_KVZ_FIXED;
    for (int i = 0; i < h->n_tokens; i++, p += h->token_bytes) {
        if (h->token_bytes == 2) kvp_wr16(p, (uint16_t)tokens[i]);
        else kvp_wr32(p, (uint32_t)tokens[i]);
    }
    kvp_kvz_write_table(chunks, h->n_chunks, p);
    p += (size_t)h->n_chunks * KVP_KVZ_ENTRY;
    kvp_wr32(p, kvp_crc32c(0, out, h->header_size - 4));
}

/* ---- parsing ---- */

int kvp_kvz_header_size(const void *data, size_t size, size_t *need) {
    const uint8_t *p = data;
    if (size < 16) return kvp_seterr(KVP_EFORMAT, "truncated .kvz: %zu bytes, the header starts with 16", size);
    if (memcmp(p, "KVPZ", 4)) return kvp_seterr(KVP_EFORMAT, "not a .kvz context (no 'KVPZ' magic)");
    if (kvp_rd16(p + 4) < KVP_KVZ_VERSION_MIN || kvp_rd16(p + 4) > KVP_KVZ_VERSION)
        return kvp_seterr(KVP_EUNSUPPORTED, ".kvz format version %u is not supported (this kvpack reads versions %d to %d)",
                          kvp_rd16(p + 4), KVP_KVZ_VERSION_MIN, KVP_KVZ_VERSION);
    uint64_t hs = kvp_rd32(p + 8);
    uint64_t max = kvp_kvz_header_bytes(KVP_KVZ_MAX_TOKENS, KVP_KVZ_MAX_TOKENS, 4);
    if (hs < kvp_kvz_header_bytes(1, 1, 2) || hs > max)
        return kvp_seterr(KVP_EFORMAT, ".kvz header size %llu is out of range", (unsigned long long)hs);
    *need = (size_t)hs;
    return KVP_OK;
}

static int kvp_kvz_check_fingerprint(const uint8_t *fpb, const kvp_fingerprint *fp) {
    if (fpb[15] != 0) return kvp_seterr(KVP_EFORMAT, ".kvz architecture name is not terminated");
    if (kvp_rd32(fpb + 60) != 0) return kvp_seterr(KVP_EFORMAT, ".kvz fingerprint's reserved field is not zero");
    if (fp->n_layers < 1 || fp->n_layers > 1024 || fp->n_kv_heads < 1 || fp->head_dim < 1 ||
        fp->n_kv_heads > 65535 || fp->head_dim > 65535 || (uint64_t)fp->n_kv_heads * fp->head_dim > 65536 ||
        fp->vocab_size < 1 || fp->vocab_size > (1u << 30))
        return kvp_seterr(KVP_EFORMAT, ".kvz model shape is implausible (%u layers, %u KV heads x %u, vocabulary %u)",
                          fp->n_layers, fp->n_kv_heads, fp->head_dim, fp->vocab_size);
    return KVP_OK;
}

/* The fixed fields after the CRC was checked. */
static int kvp_kvz_parse_fixed(const uint8_t *p, kvp_kvz_header *h) {
    h->version = kvp_rd16(p + 4);
    h->header_size = kvp_rd32(p + 8);
    uint32_t nt = kvp_rd32(p + 12), nc = kvp_rd32(p + 16), ct = kvp_rd32(p + 20);
    h->token_bytes = p[24];
    h->kv_type = p[25];
    h->total_size = kvp_rd64(p + 32);
    if (kvp_rd16(p + 6) || kvp_rd16(p + 26) || kvp_rd32(p + 28))
        return kvp_seterr(KVP_EFORMAT, ".kvz header's reserved fields are not zero");
    if (nt < 1 || nt > KVP_KVZ_MAX_TOKENS || ct < 1 || ct > KVP_KVZ_MAX_CHUNK_TOKENS || nc != (nt + ct - 1) / ct)
        return kvp_seterr(KVP_EFORMAT, ".kvz counts are inconsistent: %u tokens, %u chunks of %u", nt, nc, ct);
    if ((h->token_bytes != 2 && h->token_bytes != 4) || (h->kv_type != KVP_TYPE_F16 && h->kv_type != KVP_TYPE_F32))
        return kvp_seterr(KVP_EFORMAT, ".kvz token width %d or cache type %d is invalid", h->token_bytes, h->kv_type);
    h->n_tokens = (int)nt;
    h->n_chunks = (int)nc;
    h->chunk_tokens = (int)ct;
    if (h->header_size != kvp_kvz_header_bytes(h->n_tokens, h->n_chunks, h->token_bytes))
        return kvp_seterr(KVP_EFORMAT, ".kvz header size %llu does not fit %d tokens and %d chunks",
                          (unsigned long long)h->header_size, h->n_tokens, h->n_chunks);
    kvp_fingerprint_read(p + 40, &h->fp);
    return kvp_kvz_check_fingerprint(p + 40, &h->fp);
}

static int kvp_kvz_parse_tokens(kvp_kvz *z, const uint8_t *p) {
    const kvp_kvz_header *h = &z->h;
    for (int i = 0; i < h->n_tokens; i++, p += h->token_bytes) {
        uint32_t t = h->token_bytes == 2 ? kvp_rd16(p) : kvp_rd32(p);
        if (t >= h->fp.vocab_size)
            return kvp_seterr(KVP_EFORMAT, ".kvz token %d is id %u, outside the vocabulary of %u", i, t, h->fp.vocab_size);
        z->tokens[i] = (int)t;
    }
    return KVP_OK;
}

static int kvp_kvz_parse_table(kvp_kvz *z, const uint8_t *p) {
    const kvp_kvz_header *h = &z->h;
    uint64_t at = h->header_size;
    for (int i = 0; i < h->n_chunks; i++, p += KVP_KVZ_ENTRY) {
        kvp_kvz_chunk_info *c = &z->chunks[i];
        c->offset = kvp_rd64(p);
        c->size = kvp_rd32(p + 8);
        c->crc32c = kvp_rd32(p + 12);
        c->n_tokens = (int)kvp_rd32(p + 16);
        c->level = p[20];
        c->first_pos = i * h->chunk_tokens;
        int want = KVP_MIN(h->chunk_tokens, h->n_tokens - c->first_pos);
        if (c->offset != at || c->size < KVP_CHUNK_HEADER || c->n_tokens != want || c->level >= KVP_LEVEL_COUNT ||
            p[21] || p[22] || p[23])
            return kvp_seterr(KVP_EFORMAT, ".kvz chunk %d: entry (offset %llu, %u bytes, %d tokens, level %d) is "
                              "invalid (expected offset %llu, %d tokens)", i, (unsigned long long)c->offset, c->size,
                              c->n_tokens, c->level, (unsigned long long)at, want);
        at += c->size;
    }
    if (at != h->total_size)
        return kvp_seterr(KVP_EFORMAT, ".kvz chunks end at byte %llu, the header says %llu", (unsigned long long)at,
                          (unsigned long long)h->total_size);
    return KVP_OK;
}

static void kvp_kvz_fill_info(kvp_kvz *z) {
    const kvp_kvz_header *h = &z->h;
    kvp_kvz_info *in = &z->info;
    in->version = h->version;
    in->n_tokens = h->n_tokens;
    in->n_chunks = h->n_chunks;
    in->chunk_tokens = h->chunk_tokens;
    in->kv_type = h->kv_type;
    in->header_size = h->header_size;
    in->total_size = h->total_size;
    memcpy(in->arch, h->fp.arch, sizeof in->arch);
    in->n_layers = (int)h->fp.n_layers;
    in->n_heads = (int)h->fp.n_heads;
    in->n_kv_heads = (int)h->fp.n_kv_heads;
    in->head_dim = (int)h->fp.head_dim;
    in->dim = (int)h->fp.dim;
    in->hidden_dim = (int)h->fp.hidden_dim;
    in->vocab_size = (int)h->fp.vocab_size;
    in->weight_bytes = h->fp.weight_bytes;
    in->weights_hash = h->fp.weights_hash;
}

static int kvp_kvz_parse(kvp_kvz *z, const uint8_t *p, size_t need) {
    uint32_t crc = kvp_rd32(p + need - 4), got = kvp_crc32c(0, p, need - 4);
    if (crc != got)
        return kvp_seterr(KVP_ECORRUPT, ".kvz header checksum mismatch (stored %08x, computed %08x)", crc, got);
    KVP_TRY(kvp_kvz_parse_fixed(p, &z->h));
    z->tokens = malloc(sizeof *z->tokens * (size_t)z->h.n_tokens);
    z->chunks = calloc((size_t)z->h.n_chunks, sizeof *z->chunks);
    if (!z->tokens || !z->chunks) return kvp_seterr(KVP_ENOMEM, "out of memory reading a .kvz header");
    KVP_TRY(kvp_kvz_parse_tokens(z, p + KVP_KVZ_FIXED));
    KVP_TRY(kvp_kvz_parse_table(z, p + KVP_KVZ_FIXED + (size_t)z->h.n_tokens * (size_t)z->h.token_bytes));
    kvp_kvz_fill_info(z);
    return KVP_OK;
}

int kvp_kvz_open(const void *data, size_t size, kvp_kvz **out) {
    *out = NULL;
    size_t need = 0;
    KVP_TRY(kvp_kvz_header_size(data, size, &need));
    if (size < need) return kvp_seterr(KVP_EFORMAT, "truncated .kvz header: %zu of %zu bytes", size, need);
    kvp_kvz *z = calloc(1, sizeof *z);
    if (!z) return kvp_seterr(KVP_ENOMEM, "out of memory opening a .kvz");
    z->data = data;
    z->size = size;
    int rc = kvp_kvz_parse(z, data, need);
    if (rc < 0) {
        kvp_kvz_free(z);
        return rc;
    }
    *out = z;
    return KVP_OK;
}

void kvp_kvz_free(kvp_kvz *z) {
    if (!z) return;
    kvp_codec_free(z->codec);
    free(z->tokens);
    free(z->chunks);
    free(z->kv);
    free(z);
}

const kvp_kvz_info *kvp_kvz_get_info(const kvp_kvz *z) { return &z->info; }
const int *kvp_kvz_tokens(const kvp_kvz *z) { return z->tokens; }

int kvp_kvz_chunk(const kvp_kvz *z, int i, kvp_kvz_chunk_info *ci) {
    if (i < 0 || i >= z->h.n_chunks) return kvp_seterr(KVP_ERANGE, "chunk %d does not exist (%d chunks)", i, z->h.n_chunks);
    *ci = z->chunks[i];
    return KVP_OK;
}

int kvp_kvz_check_model(const kvp_kvz *z, const kvp_model *m) {
    kvp_fingerprint fp;
    kvp_fingerprint_of(m, &fp);
    return kvp_fingerprint_compare(&z->h.fp, &fp);
}

/* ---- decoding chunks ---- */

/* The bytes of chunk i: given, or inside the image; checked against the CRC. */
static int kvp_kvz_chunk_bytes(const kvp_kvz *z, int i, const void **chunk, size_t *size) {
    const kvp_kvz_chunk_info *c = &z->chunks[i];
    if (!*chunk) {
        if (c->offset > z->size || z->size - c->offset < c->size)
            return kvp_seterr(KVP_EFORMAT, "truncated .kvz: chunk %d ends at byte %llu, the data has %zu", i,
                              (unsigned long long)(c->offset + c->size), z->size);
        *chunk = z->data + c->offset;
        *size = c->size;
    }
    if (*size != c->size) return kvp_seterr(KVP_EFORMAT, "chunk %d has %zu bytes, its table entry says %u", i, *size, c->size);
    uint32_t got = kvp_crc32c(0, *chunk, *size);
    if (got != c->crc32c)
        return kvp_seterr(KVP_ECORRUPT, "chunk %d checksum mismatch (stored %08x, computed %08x)", i, c->crc32c, got);
    return KVP_OK;
}

/* Decoding state for a pool, and room for one chunk of KV. */
static int kvp_kvz_prepare(kvp_kvz *z, kvp_pool *pool) {
    if (z->codec && z->codec_pool != pool) {
        kvp_codec_free(z->codec);
        z->codec = NULL;
    }
    if (!z->codec) KVP_TRY(kvp_codec_new(pool, &z->codec));
    z->codec_pool = pool;
    if (!z->kv) {
        size_t vals = (size_t)z->h.fp.n_layers * 2 * (size_t)z->h.chunk_tokens * z->h.fp.n_kv_heads * z->h.fp.head_dim;
        if (vals > KVP_CHUNK_MAX_VALUES) return kvp_seterr(KVP_EFORMAT, ".kvz chunks of %d tokens are too large", z->h.chunk_tokens);
        z->kv = malloc(sizeof(float) * vals);
        if (!z->kv) return kvp_seterr(KVP_ENOMEM, "out of memory for a chunk of %zu values", vals);
    }
    return KVP_OK;
}

static int kvp_kvz_decode_into(kvp_kvz *z, int i, const void *chunk, size_t size, float *kv, kvp_pool *pool) {
    if (i < 0 || i >= z->h.n_chunks) return kvp_seterr(KVP_ERANGE, "chunk %d does not exist (%d chunks)", i, z->h.n_chunks);
    KVP_TRY(kvp_kvz_chunk_bytes(z, i, &chunk, &size));
    KVP_TRY(kvp_kvz_prepare(z, pool));
    kvp_chunk_shape s = kvp_fingerprint_shape(&z->h.fp);
    s.version = z->h.version;
    const kvp_kvz_chunk_info *c = &z->chunks[i];
    if (z->h.version < 2 && size > 5 && ((const uint8_t *)chunk)[5])
        return kvp_seterr(KVP_EFORMAT, "chunk %d has flags 0x%02x, which .kvz version %d does not have", i,
                          ((const uint8_t *)chunk)[5], z->h.version);
    return kvp_chunk_decode(z->codec, &s, c->first_pos, c->n_tokens, c->level, chunk, size, kv ? kv : z->kv);
}

int kvp_kvz_decode_chunk(kvp_kvz *z, int i, const void *chunk, size_t size, float *kv) {
    if (!kv) return kvp_seterr(KVP_EINVAL, "kvp_kvz_decode_chunk: no output buffer");
    return kvp_kvz_decode_into(z, i, chunk, size, kv, NULL);
}

/* A text chunk: checks its bytes, then recomputes its tokens. */
static int kvp_kvz_load_text(kvp_kvz *z, kvp_ctx *c, int i, const void *chunk, size_t size) {
    const kvp_kvz_chunk_info *ci = &z->chunks[i];
    KVP_TRY(kvp_kvz_chunk_bytes(z, i, &chunk, &size));
    kvp_chunk_shape s = kvp_fingerprint_shape(&z->h.fp);
    KVP_TRY(kvp_chunk_check_text(chunk, size, &s, ci->first_pos, ci->n_tokens));
    return kvp_ctx_decode(c, z->tokens + ci->first_pos, ci->n_tokens, NULL, 0);
}

int kvp_kvz_load_chunk(kvp_kvz *z, kvp_ctx *c, int i, const void *chunk, size_t size) {
    if (i < 0 || i >= z->h.n_chunks) return kvp_seterr(KVP_ERANGE, "chunk %d does not exist (%d chunks)", i, z->h.n_chunks);
    const kvp_kvz_chunk_info *ci = &z->chunks[i];
    if (kvp_ctx_pos(c) != ci->first_pos)
        return kvp_seterr(KVP_EINVAL, "chunk %d starts at position %d, but the context holds %d tokens", i,
                          ci->first_pos, kvp_ctx_pos(c));
    KVP_TRY(kvp_kvz_check_model(z, kvp_ctx_model(c)));
    if (ci->level == KVP_LEVEL_TEXT) return kvp_kvz_load_text(z, c, i, chunk, size);
    KVP_TRY(kvp_kvz_decode_into(z, i, chunk, size, NULL, kvp_ctx_pool(c)));
    return kvp_ctx_kv_import(c, z->tokens + ci->first_pos, ci->n_tokens, z->kv);
}
