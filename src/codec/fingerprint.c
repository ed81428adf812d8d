/*
 * fingerprint.c: what identifies a model for the context codec, and the hash of its weights.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "codec.h"
#include "common/common.h"
#include "hash.h"
#include "model/model.h"

/* The bytes that hold a model's weights: a GGUF's tensor data section, or a whole llama2.c
 * checkpoint. */
static void kvp_weight_span(const kvp_model *m, const uint8_t **p, size_t *n) {
    if (m->gguf) {
        *p = m->gguf->image + m->gguf->data_offset;
        *n = m->gguf->size - m->gguf->data_offset;
    } else {
        *p = m->map;
        *n = m->map ? m->map_size : 0;
    }
}

/* The cached weight hash, computed on first use. Two threads may both compute it; they store
 * the same value. 0 is reserved for "not yet", so a hash of 0 is stored as 1. */
static uint64_t kvp_weights_hash(const kvp_model *m) {
    kvp_model *mm = (kvp_model *)m; /* the cache lives in the model; no other field is touched */
    uint64_t h = __atomic_load_n(&mm->weights_hash, __ATOMIC_ACQUIRE);
    if (h) return h;
    const uint8_t *p;
    size_t n;
    kvp_weight_span(m, &p, &n);
    h = kvp_xxh64(p, n, 0);
    h = h ? h : 1;
    __atomic_store_n(&mm->weights_hash, h, __ATOMIC_RELEASE);
    return h;
}

static uint32_t kvp_fbits(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

void kvp_fingerprint_of(const kvp_model *m, kvp_fingerprint *fp) {
    const kvp_model_info *in = &m->info;
    memset(fp, 0, sizeof *fp);
    memcpy(fp->arch, in->arch, strnlen(in->arch, sizeof fp->arch - 1));
    fp->n_layers = (uint32_t)in->n_layers;
    fp->n_heads = (uint32_t)in->n_heads;
    fp->n_kv_heads = (uint32_t)in->n_kv_heads;
    fp->head_dim = (uint32_t)in->head_dim;
    fp->dim = (uint32_t)in->dim;
    fp->hidden_dim = (uint32_t)in->hidden_dim;
    fp->vocab_size = (uint32_t)in->vocab_size;
    fp->rope_style = (uint32_t)in->rope_style;
    fp->rope_theta_bits = kvp_fbits(in->rope_theta);
    fp->norm_eps_bits = kvp_fbits(in->norm_eps);
    fp->weight_type = (uint32_t)in->weight_type;
    fp->weight_bytes = in->weight_bytes;
    fp->weights_hash = kvp_weights_hash(m);
}

/* The u32 fields in their serialized order. */
static uint32_t *kvp_fingerprint_u32(kvp_fingerprint *fp, int i) {
    uint32_t *f[] = {&fp->n_layers, &fp->n_heads, &fp->n_kv_heads, &fp->head_dim, &fp->dim, &fp->hidden_dim,
                     &fp->vocab_size, &fp->rope_style, &fp->rope_theta_bits, &fp->norm_eps_bits, &fp->weight_type};
    return f[i];
}

void kvp_fingerprint_write(const kvp_fingerprint *fp, uint8_t out[KVP_FINGERPRINT_BYTES]) {
    kvp_fingerprint c = *fp;
    memset(out, 0, KVP_FINGERPRINT_BYTES);
    memcpy(out, c.arch, strnlen(c.arch, sizeof c.arch));
    for (int i = 0; i < 11; i++) kvp_wr32(out + 16 + 4 * i, *kvp_fingerprint_u32(&c, i));
    kvp_wr64(out + 64, c.weight_bytes);
    kvp_wr64(out + 72, c.weights_hash);
}

void kvp_fingerprint_read(const uint8_t in[KVP_FINGERPRINT_BYTES], kvp_fingerprint *fp) {
    memset(fp, 0, sizeof *fp);
    memcpy(fp->arch, in, 15); /* always NUL-terminated; byte 15 is checked by the parser */
    for (int i = 0; i < 11; i++) *kvp_fingerprint_u32(fp, i) = kvp_rd32(in + 16 + 4 * i);
    fp->weight_bytes = kvp_rd64(in + 64);
    fp->weights_hash = kvp_rd64(in + 72);
}

uint64_t kvp_fingerprint_digest(const kvp_fingerprint *fp) {
    uint8_t b[KVP_FINGERPRINT_BYTES];
    kvp_fingerprint_write(fp, b);
    return kvp_xxh64(b, sizeof b, 0x6b7670666eull);
}

int kvp_fingerprint_compare(const kvp_fingerprint *s, const kvp_fingerprint *m) {
    static const char *names[] = {"layers", "query heads", "KV heads", "head dimension", "embedding width",
                                  "FFN width", "vocabulary size", "rotary style", "rotary theta (bits)",
                                  "norm epsilon (bits)", "weight type"};
    if (strncmp(s->arch, m->arch, sizeof s->arch))
        return kvp_seterr(KVP_EMISMATCH, "context was saved from a '%.16s' model; this model is '%.16s'", s->arch,
                          m->arch);
    kvp_fingerprint a = *s, b = *m;
    for (int i = 0; i < 11; i++)
        if (*kvp_fingerprint_u32(&a, i) != *kvp_fingerprint_u32(&b, i))
            return kvp_seterr(KVP_EMISMATCH, "context was saved from a model with %s %u; this model has %u", names[i],
                              *kvp_fingerprint_u32(&a, i), *kvp_fingerprint_u32(&b, i));
    if (s->weight_bytes != m->weight_bytes || s->weights_hash != m->weights_hash)
        return kvp_seterr(KVP_EMISMATCH, "context was saved from a model with other weights (%llu bytes, hash "
                          "%016llx; this model: %llu bytes, hash %016llx)", (unsigned long long)s->weight_bytes,
                          (unsigned long long)s->weights_hash, (unsigned long long)m->weight_bytes,
                          (unsigned long long)m->weights_hash);
    return KVP_OK;
}

kvp_chunk_shape kvp_fingerprint_shape(const kvp_fingerprint *fp) {
    float theta;
    memcpy(&theta, &fp->rope_theta_bits, 4);
    kvp_chunk_shape s = {(int)fp->n_layers, (int)fp->n_kv_heads, (int)fp->head_dim,
                         theta > 1.0f && isfinite(theta) ? theta : 0.0f, (int)fp->rope_style, 0};
    return s;
}
