/*
 * model.c: opening a model (format detection), the public model and tokenizer calls.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "model.h"

/* Reads the first 4 bytes of a file to tell GGUF from a llama2.c checkpoint. */
static int kvp_model_sniff(const char *path, int *is_gguf) {
    FILE *f = fopen(path, "rb");
    if (!f) return kvp_seterr(KVP_EIO, "%s: cannot open the model file", path);
    unsigned char magic[4] = {0};
    size_t n = fread(magic, 1, 4, f);
    fclose(f);
    if (n < 4) return kvp_seterr(KVP_EFORMAT, "%s: file too short to be a model (%zu bytes)", path, n);
    *is_gguf = memcmp(magic, "GGUF", 4) == 0;
    return KVP_OK;
}

/* Checks the shape fields every format must fill sensibly before any tensor is touched. */
int kvp_model_check_shape(const kvp_model_info *in) {
    if (in->dim <= 0 || in->hidden_dim <= 0 || in->n_layers <= 0 || in->n_heads <= 0 ||
        in->n_kv_heads <= 0 || in->vocab_size <= 0 || in->n_ctx_train <= 0)
        return kvp_seterr(KVP_EFORMAT, "bad model shape: dim %d, hidden %d, layers %d, heads %d, "
                          "kv heads %d, vocab %d, context %d", in->dim, in->hidden_dim, in->n_layers,
                          in->n_heads, in->n_kv_heads, in->vocab_size, in->n_ctx_train);
    if (in->n_layers > 1024 || in->n_heads > 4096 || in->dim > (1 << 20) || in->hidden_dim > (1 << 22))
        return kvp_seterr(KVP_EFORMAT, "implausible model shape (layers %d, heads %d, dim %d)",
                          in->n_layers, in->n_heads, in->dim);
    if (in->n_heads % in->n_kv_heads != 0)
        return kvp_seterr(KVP_EFORMAT, "%d query heads are not a multiple of %d KV heads",
                          in->n_heads, in->n_kv_heads);
    if (in->head_dim <= 0 || in->head_dim % 2 != 0)
        return kvp_seterr(KVP_EFORMAT, "head dimension %d is not a positive even number", in->head_dim);
    return KVP_OK;
}

int kvp_model_load(const char *path, const char *tokenizer_path, kvp_model **out) {
    *out = NULL;
    if (!path) return kvp_seterr(KVP_EINVAL, "no model path given");
    kvp_kernels_init();
    int is_gguf = 0;
    KVP_TRY(kvp_model_sniff(path, &is_gguf));
    kvp_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        return kvp_seterr(KVP_ENOMEM, "out of memory loading %s", path);
    }
    int rc = is_gguf ? kvp_model_load_gguf(m, path) : kvp_model_load_llama2c(m, path, tokenizer_path);
    if (rc < 0) {
        kvp_model_free(m);
        return rc;
    }
    *out = m;
    return KVP_OK;
}

int kvp_model_load_memory(const void *buf, size_t size, kvp_model **out) {
    static const char label[] = "(GGUF image in memory)";
    if (!out) return kvp_seterr(KVP_EINVAL, "kvp_model_load_memory: NULL argument");
    *out = NULL;
    if (!buf || (uintptr_t)buf % 8 != 0)
        return kvp_seterr(KVP_EINVAL, "kvp_model_load_memory: the image must be a non-NULL, 8-byte aligned buffer");
    kvp_kernels_init();
    kvp_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(label))) {
        free(m);
        return kvp_seterr(KVP_ENOMEM, "out of memory loading a model from memory");
    }
    int rc = kvp_model_load_gguf_memory(m, buf, size, label);
    if (rc < 0) {
        kvp_model_free(m);
        return rc;
    }
    *out = m;
    return KVP_OK;
}

void kvp_model_free(kvp_model *m) {
    if (!m) return;
    kvp_tokenizer_free(m->tok);
    kvp_gguf_close(m->gguf);
    if (m->map) munmap(m->map, m->map_size);
    for (int i = 0; i < m->n_owned; i++) kvp_afree(m->owned[i]);
    free(m->owned);
    free(m->layers);
    free(m->path);
    free(m);
}

const kvp_model_info *kvp_model_get_info(const kvp_model *m) { return &m->info; }

int kvp_model_n_tensors(const kvp_model *m) {
    if (m->gguf) return (int)m->gguf->n_tensors;
    return 0;
}

int kvp_model_tensor(const kvp_model *m, int i, const char **name, int *name_len, int *type,
                     int64_t ne[4], uint64_t *nbytes) {
    if (!m->gguf || i < 0 || (uint64_t)i >= m->gguf->n_tensors)
        return kvp_seterr(KVP_ERANGE, "tensor index %d out of range", i);
    const kvp_gguf_tensor *t = &m->gguf->tensors[i];
    *name = t->name.s;
    *name_len = (int)t->name.len;
    *type = (int)t->type;
    for (int d = 0; d < 4; d++) ne[d] = t->ne[d];
    *nbytes = t->nbytes;
    return KVP_OK;
}

int kvp_token_bos(const kvp_model *m) { return kvp_tokenizer_bos(m->tok); }
int kvp_token_eos(const kvp_model *m) { return kvp_tokenizer_eos(m->tok); }

int kvp_tokenize(const kvp_model *m, const char *text, size_t len, int add_bos, int *ids,
                 int cap, int *n) {
    return kvp_tokenizer_encode(m->tok, text, len, add_bos, ids, cap, n);
}

int kvp_tokenize_ex(const kvp_model *m, const char *text, size_t len, int flags, int *ids, int cap,
                    int *n) {
    return kvp_tokenizer_encode_ex(m->tok, text, len, flags, ids, cap, n);
}

int kvp_token_is_eog(const kvp_model *m, int id) { return kvp_tokenizer_is_eog(m->tok, id); }

int kvp_detokenize(const kvp_model *m, int prev, int id, char *buf, size_t cap) {
    return kvp_tokenizer_decode(m->tok, prev, id, buf, cap);
}

/* Keeps a converted vector alive as long as the model. */
int kvp_model_own(kvp_model *m, float *p) {
    float **nb = realloc(m->owned, sizeof *nb * (size_t)(m->n_owned + 1));
    if (!nb) {
        kvp_afree(p);
        return kvp_seterr(KVP_ENOMEM, "out of memory");
    }
    m->owned = nb;
    m->owned[m->n_owned++] = p;
    return KVP_OK;
}

/* Adds up parameters and bytes, and finds the type that holds most of the weight bytes. */
void kvp_model_account(kvp_model *m) {
    uint64_t by_type[KVP_TYPE_COUNT] = {0};
    const kvp_weight *all[7];
    m->info.n_params = 0;
    m->info.weight_bytes = 0;
    for (int l = 0; l < m->info.n_layers; l++) {
        const kvp_layer_weights *L = &m->layers[l];
        const kvp_weight *ws[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        memcpy(all, ws, sizeof ws);
        for (int i = 0; i < 7; i++) {
            m->info.n_params += (uint64_t)all[i]->rows * (uint64_t)all[i]->cols;
            by_type[all[i]->type] += (uint64_t)all[i]->rows * all[i]->row_bytes;
        }
        m->info.n_params += 2 * (uint64_t)m->info.dim;
    }
    m->info.n_params += (uint64_t)m->tok_embd.rows * (uint64_t)m->tok_embd.cols + (uint64_t)m->info.dim;
    if (!m->info.tied_output) m->info.n_params += (uint64_t)m->output.rows * (uint64_t)m->output.cols;
    int best = 0;
    for (int t = 0; t < KVP_TYPE_COUNT; t++) {
        m->info.weight_bytes += by_type[t];
        if (by_type[t] > by_type[best]) best = t;
    }
    m->info.weight_bytes += (uint64_t)m->tok_embd.rows * m->tok_embd.row_bytes;
    if (!m->info.tied_output) m->info.weight_bytes += (uint64_t)m->output.rows * m->output.row_bytes;
    m->info.weight_type = best;
}
