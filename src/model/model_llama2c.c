/*
 * model_llama2c.c: llama2.c checkpoints (the legacy "v0" format of Karpathy's run.c).
 *
 * Layout: a header of seven int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
 * vocab_size, seq_len; a negative vocab_size means the classifier is stored separately),
 * then float32 tensors in this order, each row-major (out, in):
 *   token_embedding (vocab, dim), rms_att (L, dim), wq (L, dim, dim), wk (L, kv_dim, dim),
 *   wv (L, kv_dim, dim), wo (L, dim, dim), rms_ffn (L, dim), w1 (L, hidden, dim),
 *   w2 (L, dim, hidden), w3 (L, hidden, dim), rms_final (dim),
 *   freq_cis_real and freq_cis_imag (seq_len * head_dim / 2 each, unused),
 *   wcls (vocab, dim) when unshared.
 * Rotary embedding: interleaved pairs, theta 10000; RMSNorm epsilon 1e-5.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "model.h"

#define KVP_L2C_HEADER 28

static int kvp_l2c_map(kvp_model *m, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return kvp_seterr(KVP_EIO, "cannot open the model file");
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < KVP_L2C_HEADER) {
        close(fd);
        return kvp_seterr(KVP_EFORMAT, "not a GGUF file and too short for a llama2.c checkpoint");
    }
    m->map_size = (size_t)st.st_size;
    void *p = mmap(NULL, m->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return kvp_seterr(KVP_EIO, "cannot map the model file");
    m->map = p;
    return KVP_OK;
}

static int kvp_l2c_header(kvp_model *m) {
    int32_t h[7];
    memcpy(h, m->map, sizeof h);
    kvp_model_info *in = &m->info;
    in->dim = h[0];
    in->hidden_dim = h[1];
    in->n_layers = h[2];
    in->n_heads = h[3];
    in->n_kv_heads = h[4];
    in->tied_output = h[5] > 0;
    in->vocab_size = h[5] > 0 ? h[5] : (h[5] == INT32_MIN ? 0 : -h[5]);
    in->n_ctx_train = h[6];
    in->head_dim = in->n_heads > 0 ? in->dim / in->n_heads : 0;
    if (in->n_heads > 0 && in->dim % in->n_heads != 0)
        return kvp_seterr(KVP_EFORMAT, "dim %d is not a multiple of %d heads", in->dim, in->n_heads);
    in->rope_theta = 10000.0f;
    in->norm_eps = 1e-5f;
    in->rope_style = KVP_ROPE_NORM;
    snprintf(in->arch, sizeof in->arch, "llama");
    snprintf(in->format, sizeof in->format, "llama2.c v0");
    in->file_bytes = m->map_size;
    return kvp_model_check_shape(in);
}

/* Hands out consecutive float tensors from the mapping, checking the file is long enough. */
typedef struct {
    const float *base;
    uint64_t pos, n; /* in floats */
} kvp_l2c_cursor;

static const float *kvp_l2c_take(kvp_l2c_cursor *c, uint64_t count) {
    if (count > c->n - c->pos) return NULL;
    const float *p = c->base + c->pos;
    c->pos += count;
    return p;
}

static kvp_weight kvp_l2c_weight(const float *data, int rows, int cols) {
    kvp_weight w = {KVP_TYPE_F32, cols, rows, sizeof(float) * (size_t)cols, data};
    return w;
}

/* Expected size of the file in floats, for a clear error before any tensor is read. */
static uint64_t kvp_l2c_expected(const kvp_model_info *in) {
    uint64_t d = (uint64_t)in->dim, hd = (uint64_t)in->hidden_dim, L = (uint64_t)in->n_layers;
    uint64_t kvd = (uint64_t)in->n_kv_heads * (uint64_t)in->head_dim, V = (uint64_t)in->vocab_size;
    uint64_t per_layer = 2 * d + 2 * d * d + 2 * kvd * d + 3 * hd * d;
    return V * d + L * per_layer + d + (uint64_t)in->n_ctx_train * (uint64_t)in->head_dim +
           (in->tied_output ? 0 : V * d);
}

static int kvp_l2c_tensors(kvp_model *m) {
    kvp_model_info *in = &m->info;
    kvp_l2c_cursor c = {(const float *)((const char *)m->map + KVP_L2C_HEADER), 0,
                        (m->map_size - KVP_L2C_HEADER) / sizeof(float)};
    uint64_t need = kvp_l2c_expected(in);
    if (need > c.n)
        return kvp_seterr(KVP_EFORMAT, "llama2.c checkpoint is truncated: %llu bytes of weights expected, %llu present",
                          (unsigned long long)(need * 4), (unsigned long long)(c.n * 4));
    uint64_t d = (uint64_t)in->dim, hd = (uint64_t)in->hidden_dim, L = (uint64_t)in->n_layers;
    int kvd = in->n_kv_heads * in->head_dim;
    m->tok_embd = kvp_l2c_weight(kvp_l2c_take(&c, (uint64_t)in->vocab_size * d), in->vocab_size, in->dim);
    const float *rms_att = kvp_l2c_take(&c, L * d);
    const float *wq = kvp_l2c_take(&c, L * d * d);
    const float *wk = kvp_l2c_take(&c, L * d * (uint64_t)kvd);
    const float *wv = kvp_l2c_take(&c, L * d * (uint64_t)kvd);
    const float *wo = kvp_l2c_take(&c, L * d * d);
    const float *rms_ffn = kvp_l2c_take(&c, L * d);
    const float *w1 = kvp_l2c_take(&c, L * hd * d);
    const float *w2 = kvp_l2c_take(&c, L * d * hd);
    const float *w3 = kvp_l2c_take(&c, L * hd * d);
    m->out_norm = kvp_l2c_take(&c, d);
    kvp_l2c_take(&c, (uint64_t)in->n_ctx_train * (uint64_t)in->head_dim); /* freq_cis, unused */
    m->output = in->tied_output ? m->tok_embd
                                : kvp_l2c_weight(kvp_l2c_take(&c, (uint64_t)in->vocab_size * d), in->vocab_size, in->dim);
    m->layers = calloc((size_t)in->n_layers, sizeof *m->layers);
    if (!m->layers) return kvp_seterr(KVP_ENOMEM, "out of memory");
    for (uint64_t l = 0; l < L; l++) {
        kvp_layer_weights *W = &m->layers[l];
        W->attn_norm = rms_att + l * d;
        W->ffn_norm = rms_ffn + l * d;
        W->wq = kvp_l2c_weight(wq + l * d * d, in->dim, in->dim);
        W->wk = kvp_l2c_weight(wk + l * d * (uint64_t)kvd, kvd, in->dim);
        W->wv = kvp_l2c_weight(wv + l * d * (uint64_t)kvd, kvd, in->dim);
        W->wo = kvp_l2c_weight(wo + l * d * d, in->dim, in->dim);
        W->w_gate = kvp_l2c_weight(w1 + l * hd * d, in->hidden_dim, in->dim);
        W->w_down = kvp_l2c_weight(w2 + l * d * hd, in->dim, in->hidden_dim);
        W->w_up = kvp_l2c_weight(w3 + l * hd * d, in->hidden_dim, in->dim);
    }
    return KVP_OK;
}

int kvp_model_load_llama2c(kvp_model *m, const char *path, const char *tokenizer_path) {
    int rc = kvp_l2c_map(m, path);
    if (rc == KVP_OK) rc = kvp_l2c_header(m);
    if (rc == KVP_OK) rc = kvp_l2c_tensors(m);
    if (rc < 0) return kvp_errprefix(rc, path);
    if (!tokenizer_path)
        return kvp_seterr(KVP_EINVAL, "%s: a llama2.c checkpoint needs its tokenizer file (-z tokenizer.bin)", path);
    KVP_TRY(kvp_tokenizer_from_llama2c(tokenizer_path, m->info.vocab_size, &m->tok));
    const char *b = strrchr(path, '/');
    snprintf(m->info.name, sizeof m->info.name, "%s", b ? b + 1 : path);
    kvp_model_account(m);
    return KVP_OK;
}
