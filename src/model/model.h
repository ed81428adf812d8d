/*
 * model.h: the in-memory model. Weights point into the memory-mapped file (GGUF or
 * llama2.c); only small vectors stored in another type than F32 (norm weights) are
 * converted into owned buffers. Internal header.
 */
#ifndef KVP_MODEL_H
#define KVP_MODEL_H

#include "gguf.h"
#include "kvpack.h"
#include "tokenizer.h"

/* A weight matrix: `rows` rows of `cols` values of `type`, row after row. */
typedef struct kvp_weight {
    int type;
    int cols, rows;
    size_t row_bytes;
    const void *data;
} kvp_weight;

typedef struct kvp_layer_weights {
    const float *attn_norm;                 /* (dim) */
    const float *ffn_norm;                  /* (dim) */
    kvp_weight wq;                          /* (n_heads * head_dim, dim) */
    kvp_weight wk, wv;                      /* (n_kv_heads * head_dim, dim) */
    kvp_weight wo;                          /* (dim, n_heads * head_dim) */
    kvp_weight w_gate, w_up;                /* (hidden_dim, dim) */
    kvp_weight w_down;                      /* (dim, hidden_dim) */
} kvp_layer_weights;

struct kvp_model {
    kvp_model_info info;
    kvp_weight tok_embd;                    /* (vocab, dim) */
    const float *out_norm;                  /* (dim) */
    kvp_weight output;                      /* (vocab, dim); the embedding when tied */
    kvp_layer_weights *layers;              /* (n_layers) */
    kvp_tokenizer *tok;
    kvp_gguf *gguf;                         /* GGUF models: the parsed, mapped file */
    void *map;                              /* llama2.c models: the mapping */
    size_t map_size;
    float **owned;                          /* vectors converted to F32, freed with the model */
    int n_owned;
    char *path;
};

/* Shared by the loaders: shape validation, keeping converted vectors, byte accounting. */
int kvp_model_check_shape(const kvp_model_info *info);
int kvp_model_own(kvp_model *m, float *p);
void kvp_model_account(kvp_model *m);

int kvp_model_load_gguf(kvp_model *m, const char *path);
int kvp_model_load_llama2c(kvp_model *m, const char *path, const char *tokenizer_path);

#endif
