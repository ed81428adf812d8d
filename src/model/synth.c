/*
 * synth.c: random-weight llama models written as GGUF, for speed benchmarks and tests.
 *
 * The vocabulary is a SentencePiece-style byte vocabulary: <unk>, <s>, </s>, the 256 byte
 * tokens <0x00>..<0xFF>, then single characters and "▁"-prefixed pairs of letters until
 * vocab_size pieces exist. Weights are uniform in [-a, a] with a = 1/sqrt(cols) so the
 * activations stay in range; norm weights are 1. Values don't change speed.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "gguf.h"
#include "kernels/kernels.h"

static float kvp_synth_rand(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return (float)((double)((*s * 0x2545F4914F6CDD1DULL) >> 11) / 4503599627370496.0 - 1.0);
}

/* Writes one (rows, cols) matrix of `type`, quantized row by row. */
static int kvp_synth_matrix(kvp_gguf_writer *w, const char *name, int type, int cols, int rows, uint64_t *rng) {
    size_t rb = kvp_type_row_bytes(type, cols);
    if (!rb) return kvp_seterr(KVP_EINVAL, "%d columns do not fit type %s", cols, kvp_type_name(type));
    uint8_t *data = malloc(rb * (size_t)rows);
    float *row = malloc(sizeof(float) * (size_t)cols);
    int rc = data && row ? KVP_OK : kvp_seterr(KVP_ENOMEM, "out of memory");
    float a = 1.0f / sqrtf((float)cols);
    for (int r = 0; rc == KVP_OK && r < rows; r++) {
        for (int c = 0; c < cols; c++) row[c] = a * kvp_synth_rand(rng);
        rc = kvp_quant_row(type, row, data + (size_t)r * rb, cols);
    }
    int64_t ne[2] = {cols, rows};
    if (rc == KVP_OK) rc = kvp_gguf_writer_add_tensor(w, name, (uint32_t)type, 2, ne, data);
    free(data);
    free(row);
    return rc;
}

static int kvp_synth_ones(kvp_gguf_writer *w, const char *name, int n) {
    float *v = malloc(sizeof(float) * (size_t)n);
    if (!v) return kvp_seterr(KVP_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) v[i] = 1.0f;
    int64_t ne[1] = {n};
    int rc = kvp_gguf_writer_add_tensor(w, name, KVP_TYPE_F32, 1, ne, v);
    free(v);
    return rc;
}

/* Fills piece i of the synthetic vocabulary into buf. */
static void kvp_synth_piece(int i, char *buf, size_t cap) {
    if (i == 0) { snprintf(buf, cap, "<unk>"); return; }
    if (i == 1) { snprintf(buf, cap, "<s>"); return; }
    if (i == 2) { snprintf(buf, cap, "</s>"); return; }
    if (i < 259) { snprintf(buf, cap, "<0x%02X>", i - 3); return; }
    int j = i - 259;
    if (j == 0) { snprintf(buf, cap, "\xe2\x96\x81"); return; }
    if (j <= 94) { snprintf(buf, cap, "%c", (char)(0x20 + j)); return; } /* '!'..'~' */
    j -= 95;
    snprintf(buf, cap, "\xe2\x96\x81%c%c", 'a' + (j / 26) % 26, 'a' + j % 26);
    if (j >= 26 * 26) snprintf(buf, cap, "\xe2\x96\x81%c%c%d", 'a' + (j / 26) % 26, 'a' + j % 26, j / 676);
}

static int kvp_synth_vocab(kvp_gguf_writer *w, int n) {
    char **pieces = calloc((size_t)n, sizeof *pieces);
    float *scores = malloc(sizeof(float) * (size_t)n);
    int32_t *types = malloc(sizeof(int32_t) * (size_t)n);
    int rc = pieces && scores && types ? KVP_OK : kvp_seterr(KVP_ENOMEM, "out of memory");
    for (int i = 0; rc == KVP_OK && i < n; i++) {
        char buf[32];
        kvp_synth_piece(i, buf, sizeof buf);
        if (!(pieces[i] = strdup(buf))) rc = kvp_seterr(KVP_ENOMEM, "out of memory");
        scores[i] = i < 259 ? 0.0f : -(float)(i - 259);
        types[i] = i == 0 ? 2 : i < 3 ? 3 : i < 259 ? 6 : 1;
    }
    if (rc == KVP_OK) rc = kvp_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama");
    if (rc == KVP_OK) rc = kvp_gguf_writer_set_arr(w, "tokenizer.ggml.tokens", KVP_GGUF_STRING, pieces, (uint64_t)n);
    if (rc == KVP_OK) rc = kvp_gguf_writer_set_arr(w, "tokenizer.ggml.scores", KVP_GGUF_FLOAT32, scores, (uint64_t)n);
    if (rc == KVP_OK) rc = kvp_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", KVP_GGUF_INT32, types, (uint64_t)n);
    if (rc == KVP_OK) rc = kvp_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1);
    if (rc == KVP_OK) rc = kvp_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2);
    for (int i = 0; pieces && i < n; i++) free(pieces[i]);
    free(pieces);
    free(scores);
    free(types);
    return rc;
}

static int kvp_synth_hparams(kvp_gguf_writer *w, const kvp_synth_params *p) {
    KVP_TRY(kvp_gguf_writer_set_str(w, "general.architecture", "llama"));
    KVP_TRY(kvp_gguf_writer_set_str(w, "general.name", "kvpack-synth"));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "llama.context_length", (uint32_t)p->n_ctx));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "llama.embedding_length", (uint32_t)p->dim));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "llama.feed_forward_length", (uint32_t)p->hidden_dim));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "llama.block_count", (uint32_t)p->n_layers));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "llama.attention.head_count", (uint32_t)p->n_heads));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "llama.attention.head_count_kv", (uint32_t)p->n_kv_heads));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "llama.rope.dimension_count", (uint32_t)(p->dim / p->n_heads)));
    KVP_TRY(kvp_gguf_writer_set_f32(w, "llama.rope.freq_base", p->rope_theta > 0 ? p->rope_theta : 10000.0f));
    KVP_TRY(kvp_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "general.file_type", (uint32_t)(p->type == KVP_TYPE_F32 ? 0 : p->type == KVP_TYPE_F16 ? 1 : p->type == KVP_TYPE_Q8_0 ? 7 : p->type == KVP_TYPE_Q4_0 ? 2 : 32)));
    return kvp_synth_vocab(w, p->vocab_size);
}

static int kvp_synth_layer(kvp_gguf_writer *w, const kvp_synth_params *p, int l, uint64_t *rng) {
    int hd = p->dim / p->n_heads, kvd = hd * p->n_kv_heads;
    char name[64];
    struct { const char *s; int cols, rows; } m[7] = {
        {"attn_q", p->dim, p->dim}, {"attn_k", p->dim, kvd}, {"attn_v", p->dim, kvd},
        {"attn_output", p->dim, p->dim}, {"ffn_gate", p->dim, p->hidden_dim},
        {"ffn_up", p->dim, p->hidden_dim}, {"ffn_down", p->hidden_dim, p->dim}};
    for (int i = 0; i < 7; i++) {
        snprintf(name, sizeof name, "blk.%d.%s.weight", l, m[i].s);
        KVP_TRY(kvp_synth_matrix(w, name, p->type, m[i].cols, m[i].rows, rng));
    }
    snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
    KVP_TRY(kvp_synth_ones(w, name, p->dim));
    snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
    return kvp_synth_ones(w, name, p->dim);
}

static int kvp_synth_check(const kvp_synth_params *p) {
    int types_ok = p->type == KVP_TYPE_F32 || p->type == KVP_TYPE_F16 || p->type == KVP_TYPE_BF16 ||
                   p->type == KVP_TYPE_Q8_0 || p->type == KVP_TYPE_Q4_0;
    if (!types_ok) return kvp_seterr(KVP_EINVAL, "synth writes F32, F16, BF16, Q8_0 or Q4_0 weights, not %s", kvp_type_name(p->type));
    if (p->dim <= 0 || p->hidden_dim <= 0 || p->n_layers <= 0 || p->n_heads <= 0 || p->n_kv_heads <= 0 ||
        p->dim % p->n_heads || p->n_heads % p->n_kv_heads || (p->dim / p->n_heads) % 2 || p->n_ctx <= 0)
        return kvp_seterr(KVP_EINVAL, "bad synthetic shape (dim %d, hidden %d, layers %d, heads %d/%d, context %d)",
                          p->dim, p->hidden_dim, p->n_layers, p->n_heads, p->n_kv_heads, p->n_ctx);
    if (p->vocab_size < 260 || p->vocab_size > 1 << 20)
        return kvp_seterr(KVP_EINVAL, "synthetic vocabulary needs 260..%d tokens, not %d", 1 << 20, p->vocab_size);
    int blk = kvp_type_traits_get(p->type)->block_size;
    if (p->dim % blk || p->hidden_dim % blk)
        return kvp_seterr(KVP_EINVAL, "dim %d and hidden %d must be multiples of %d for %s", p->dim, p->hidden_dim, blk,
                          kvp_type_name(p->type));
    return KVP_OK;
}

int kvp_synth_write(const char *path, const kvp_synth_params *p) {
    KVP_TRY(kvp_synth_check(p));
    kvp_gguf_writer *w = NULL;
    KVP_TRY(kvp_gguf_writer_new(&w));
    uint64_t rng = p->seed * 0x9E3779B97F4A7C15ULL + 1;
    int rc = kvp_synth_hparams(w, p);
    if (rc == KVP_OK) rc = kvp_synth_matrix(w, "token_embd.weight", p->type, p->dim, p->vocab_size, &rng);
    if (rc == KVP_OK) rc = kvp_synth_ones(w, "output_norm.weight", p->dim);
    if (rc == KVP_OK) rc = kvp_synth_matrix(w, "output.weight", p->type, p->dim, p->vocab_size, &rng);
    for (int l = 0; rc == KVP_OK && l < p->n_layers; l++) rc = kvp_synth_layer(w, p, l, &rng);
    if (rc == KVP_OK) rc = kvp_gguf_writer_save(w, path);
    kvp_gguf_writer_free(w);
    return rc;
}
