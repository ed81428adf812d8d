/*
 * model_gguf.c: building a kvp_model from a GGUF file (architectures llama, qwen2, qwen3).
 */
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "model.h"

/* Reads "<arch>.<suffix>" as an integer into *out; a missing key keeps *out when
 * `required` is 0. */
static int kvp_gguf_arch_u32(const kvp_gguf *g, const char *arch, const char *suffix, int *out,
                             int required) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    uint32_t v = 0;
    int rc = kvp_gguf_get_u32(g, key, &v);
    if (rc == KVP_ENOTFOUND && !required) return KVP_OK;
    if (rc == KVP_ENOTFOUND) return kvp_seterr(KVP_EFORMAT, "metadata key '%s' is missing", key);
    if (rc < 0) return rc;
    if (v > (uint32_t)INT32_MAX) return kvp_seterr(KVP_EFORMAT, "metadata '%s' = %u is too large", key, v);
    *out = (int)v;
    return KVP_OK;
}

static int kvp_gguf_arch_f32(const kvp_gguf *g, const char *arch, const char *suffix, float *out) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    int rc = kvp_gguf_get_f32(g, key, out);
    return rc == KVP_ENOTFOUND ? KVP_OK : rc;
}

/* The architectures kvpack runs: the rotary style and what their layers add to llama's.
 * qkv_bias / qk_norm: 1 when the tensors are required; llama may carry optional biases. */
typedef struct kvp_arch_desc {
    const char *name;
    int rope_style, qkv_bias, qk_norm;
} kvp_arch_desc;

static const kvp_arch_desc kvp_archs[] = {
    {"llama", KVP_ROPE_NORM, 0, 0}, /* Llama 1/2/3, TinyLlama, SmolLM, Mistral */
    {"qwen2", KVP_ROPE_NEOX, 1, 0}, /* Qwen2, Qwen2.5: QKV biases */
    {"qwen3", KVP_ROPE_NEOX, 0, 1}, /* Qwen3: per-head q/k RMSNorm */
};

static const kvp_arch_desc *kvp_arch_find(const char *name) {
    for (size_t i = 0; i < KVP_ARRAY_LEN(kvp_archs); i++)
        if (!strcmp(kvp_archs[i].name, name)) return &kvp_archs[i];
    return NULL;
}

/* Refuses rotary variants kvpack does not implement: a partial rotary dimension and the
 * linear / YaRN context scalings (Llama 3's scaling comes as the rope_freqs tensor). */
static int kvp_gguf_check_rope(const kvp_gguf *g, const kvp_model_info *in) {
    int rot = in->head_dim;
    KVP_TRY(kvp_gguf_arch_u32(g, in->arch, "rope.dimension_count", &rot, 0));
    if (rot != in->head_dim)
        return kvp_seterr(KVP_EUNSUPPORTED, "rotary dimension %d differs from the head dimension %d (partial "
                          "rotary embeddings are not supported)", rot, in->head_dim);
    char key[128];
    kvp_gguf_str s;
    snprintf(key, sizeof key, "%s.rope.scaling.type", in->arch);
    if (kvp_gguf_get_str(g, key, &s) == KVP_OK && !(s.len == 4 && !memcmp(s.s, "none", 4)))
        return kvp_seterr(KVP_EUNSUPPORTED, "rope scaling '%.*s' is not supported", (int)KVP_MIN(s.len, 32), s.s);
    return KVP_OK;
}

/* Fills the shape fields of m->info from the metadata. */
static int kvp_gguf_read_hparams(kvp_model *m, const kvp_gguf *g) {
    kvp_model_info *in = &m->info;
    kvp_gguf_str s;
    if (kvp_gguf_get_str(g, "general.architecture", &s) < 0)
        return kvp_seterr(KVP_EFORMAT, "metadata key 'general.architecture' is missing");
    snprintf(in->arch, sizeof in->arch, "%.*s", (int)KVP_MIN(s.len, 31), s.s);
    const kvp_arch_desc *ad = kvp_arch_find(in->arch);
    if (!ad)
        return kvp_seterr(KVP_EUNSUPPORTED, "architecture '%s' is not supported (supported: llama, qwen2, qwen3)",
                          in->arch);
    if (kvp_gguf_get_str(g, "general.name", &s) == KVP_OK)
        snprintf(in->name, sizeof in->name, "%.*s", (int)KVP_MIN(s.len, 63), s.s);
    const char *a = in->arch;
    KVP_TRY(kvp_gguf_arch_u32(g, a, "embedding_length", &in->dim, 1));
    KVP_TRY(kvp_gguf_arch_u32(g, a, "feed_forward_length", &in->hidden_dim, 1));
    KVP_TRY(kvp_gguf_arch_u32(g, a, "block_count", &in->n_layers, 1));
    KVP_TRY(kvp_gguf_arch_u32(g, a, "attention.head_count", &in->n_heads, 1));
    in->n_kv_heads = in->n_heads;
    KVP_TRY(kvp_gguf_arch_u32(g, a, "attention.head_count_kv", &in->n_kv_heads, 0));
    KVP_TRY(kvp_gguf_arch_u32(g, a, "context_length", &in->n_ctx_train, 1));
    in->head_dim = in->n_heads > 0 ? in->dim / in->n_heads : 0;
    KVP_TRY(kvp_gguf_arch_u32(g, a, "attention.key_length", &in->head_dim, 0));
    in->rope_theta = 10000.0f;
    in->norm_eps = 1e-5f;
    KVP_TRY(kvp_gguf_arch_f32(g, a, "rope.freq_base", &in->rope_theta));
    KVP_TRY(kvp_gguf_arch_f32(g, a, "attention.layer_norm_rms_epsilon", &in->norm_eps));
    in->rope_style = ad->rope_style; /* llama: interleaved pairs; qwen: split halves */
    KVP_TRY(kvp_gguf_check_rope(g, in));
    snprintf(in->format, sizeof in->format, "GGUF v%u", g->version);
    in->file_bytes = g->size;
    const kvp_gguf_tensor *te = kvp_gguf_find_tensor(g, "token_embd.weight");
    if (!te) return kvp_seterr(KVP_EFORMAT, "tensor 'token_embd.weight' is missing");
    in->vocab_size = te->ne[1] > 0 && te->ne[1] <= (1 << 24) ? (int)te->ne[1] : 0;
    return kvp_model_check_shape(in);
}

/* Looks a tensor up and checks its shape is (cols, rows). */
static int kvp_gguf_weight(const kvp_gguf *g, const char *name, int cols, int rows, kvp_weight *w) {
    const kvp_gguf_tensor *t = kvp_gguf_find_tensor(g, name);
    if (!t) return kvp_seterr(KVP_EFORMAT, "tensor '%s' is missing", name);
    if (t->ne[0] != cols || t->ne[1] != rows || t->ne[2] != 1 || t->ne[3] != 1)
        return kvp_seterr(KVP_EFORMAT, "tensor '%s' has shape [%lld, %lld], expected [%d, %d]", name,
                          (long long)t->ne[0], (long long)t->ne[1], cols, rows);
    const kvp_type_traits *tr = kvp_type_traits_get((int)t->type);
    if (!tr || !tr->supported)
        return kvp_seterr(KVP_EUNSUPPORTED, "tensor '%s' has type %s, which kvpack cannot compute with yet",
                          name, kvp_type_name((int)t->type));
    w->type = (int)t->type;
    w->cols = cols;
    w->rows = rows;
    w->row_bytes = kvp_type_row_bytes(w->type, cols);
    w->data = t->data;
    return KVP_OK;
}

/* A (n) vector as F32: points into the file when stored as F32, else converted and owned. */
static int kvp_gguf_vector(kvp_model *m, const char *name, int n, const float **out) {
    kvp_weight w;
    KVP_TRY(kvp_gguf_weight(m->gguf, name, n, 1, &w));
    if (w.type == KVP_TYPE_F32 && ((uintptr_t)w.data & 3) == 0) {
        *out = w.data;
        return KVP_OK;
    }
    float *p = kvp_amalloc(sizeof(float) * (size_t)n);
    if (!p) return kvp_seterr(KVP_ENOMEM, "out of memory");
    KVP_TRY(kvp_dequant_row(w.type, w.data, p, n));
    KVP_TRY(kvp_model_own(m, p));
    *out = p;
    return KVP_OK;
}

/* The (n) vector "blk.<l>.<suffix>", or NULL when it is absent and not required. */
static int kvp_gguf_opt_vector(kvp_model *m, int l, const char *suffix, int n, int required, const float **out) {
    char name[96];
    snprintf(name, sizeof name, "blk.%d.%s", l, suffix);
    *out = NULL;
    if (!required && !kvp_gguf_find_tensor(m->gguf, name)) return KVP_OK;
    return kvp_gguf_vector(m, name, n, out);
}

/* QKV biases (required by qwen2, optional for llama) and per-head q/k norms (qwen3). */
static int kvp_gguf_layer_extras(kvp_model *m, int l) {
    const kvp_model_info *in = &m->info;
    const kvp_arch_desc *ad = kvp_arch_find(in->arch);
    kvp_layer_weights *L = &m->layers[l];
    const int qd = in->n_heads * in->head_dim, kvd = in->n_kv_heads * in->head_dim;
    KVP_TRY(kvp_gguf_opt_vector(m, l, "attn_q.bias", qd, ad->qkv_bias, &L->bq));
    KVP_TRY(kvp_gguf_opt_vector(m, l, "attn_k.bias", kvd, ad->qkv_bias, &L->bk));
    KVP_TRY(kvp_gguf_opt_vector(m, l, "attn_v.bias", kvd, ad->qkv_bias, &L->bv));
    KVP_TRY(kvp_gguf_opt_vector(m, l, "attn_q_norm.weight", in->head_dim, ad->qk_norm, &L->q_norm));
    return kvp_gguf_opt_vector(m, l, "attn_k_norm.weight", in->head_dim, ad->qk_norm, &L->k_norm);
}

static int kvp_gguf_layer(kvp_model *m, int l) {
    const kvp_model_info *in = &m->info;
    kvp_layer_weights *L = &m->layers[l];
    int qd = in->n_heads * in->head_dim, kvd = in->n_kv_heads * in->head_dim;
    char name[96];
#define KVP_W(field, suffix, cols, rows)                                  \
    snprintf(name, sizeof name, "blk.%d.%s.weight", l, suffix);           \
    KVP_TRY(kvp_gguf_weight(m->gguf, name, cols, rows, &L->field))
    KVP_W(wq, "attn_q", in->dim, qd);
    KVP_W(wk, "attn_k", in->dim, kvd);
    KVP_W(wv, "attn_v", in->dim, kvd);
    KVP_W(wo, "attn_output", qd, in->dim);
    KVP_W(w_gate, "ffn_gate", in->dim, in->hidden_dim);
    KVP_W(w_up, "ffn_up", in->dim, in->hidden_dim);
    KVP_W(w_down, "ffn_down", in->hidden_dim, in->dim);
#undef KVP_W
    snprintf(name, sizeof name, "blk.%d.attn_norm.weight", l);
    KVP_TRY(kvp_gguf_vector(m, name, in->dim, &L->attn_norm));
    snprintf(name, sizeof name, "blk.%d.ffn_norm.weight", l);
    KVP_TRY(kvp_gguf_vector(m, name, in->dim, &L->ffn_norm));
    return kvp_gguf_layer_extras(m, l);
}

/* The vocabulary size is the embedding's row count (read with the shape); the tokenizer must agree. */
static int kvp_gguf_embeddings(kvp_model *m) {
    KVP_TRY(kvp_gguf_weight(m->gguf, "token_embd.weight", m->info.dim, m->info.vocab_size, &m->tok_embd));
    KVP_TRY(kvp_gguf_vector(m, "output_norm.weight", m->info.dim, &m->out_norm));
    if (kvp_gguf_find_tensor(m->gguf, "output.weight")) {
        KVP_TRY(kvp_gguf_weight(m->gguf, "output.weight", m->info.dim, m->info.vocab_size, &m->output));
    } else {
        m->output = m->tok_embd;
        m->info.tied_output = 1;
    }
    if (kvp_gguf_find_tensor(m->gguf, "rope_freqs.weight")) /* Llama 3.1+ rotary scaling */
        KVP_TRY(kvp_gguf_vector(m, "rope_freqs.weight", m->info.head_dim / 2, &m->rope_freqs));
    return KVP_OK;
}

/* Builds the model from the parsed m->gguf; `path` (a file path, or a label for an image in
 * memory) prefixes error messages and names a model that has no general.name. */
static int kvp_gguf_build(kvp_model *m, const char *path) {
    int rc = kvp_gguf_read_hparams(m, m->gguf);
    if (rc == KVP_OK) rc = kvp_gguf_embeddings(m);
    if (rc == KVP_OK && !(m->layers = calloc((size_t)m->info.n_layers, sizeof *m->layers)))
        rc = kvp_seterr(KVP_ENOMEM, "out of memory");
    for (int l = 0; rc == KVP_OK && l < m->info.n_layers; l++) rc = kvp_gguf_layer(m, l);
    if (rc == KVP_OK) rc = kvp_tokenizer_from_gguf(m->gguf, &m->tok);
    if (rc == KVP_OK && kvp_tokenizer_n_vocab(m->tok) != m->info.vocab_size)
        rc = kvp_seterr(KVP_EFORMAT, "the vocabulary has %d tokens but the embedding %d rows",
                        kvp_tokenizer_n_vocab(m->tok), m->info.vocab_size);
    if (rc < 0) return kvp_errprefix(rc, path);
    if (!m->info.name[0]) {
        const char *b = strrchr(path, '/');
        snprintf(m->info.name, sizeof m->info.name, "%s", b ? b + 1 : path);
    }
    kvp_model_account(m);
    return KVP_OK;
}

int kvp_model_load_gguf(kvp_model *m, const char *path) {
    KVP_TRY(kvp_gguf_open(path, &m->gguf));
    return kvp_gguf_build(m, path);
}

int kvp_model_load_gguf_memory(kvp_model *m, const void *buf, size_t size, const char *label) {
    int rc = kvp_gguf_parse(buf, size, &m->gguf);
    if (rc < 0) return kvp_errprefix(rc, label);
    return kvp_gguf_build(m, label);
}
