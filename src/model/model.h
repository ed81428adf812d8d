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
    const float *bq, *bk, *bv;              /* QKV biases or NULL (qwen2): (q_dim), (kv_dim) */
    const float *q_norm, *k_norm;           /* per-head RMSNorm weights or NULL (qwen3): (head_dim) */
} kvp_layer_weights;

struct kvp_model {
    kvp_model_info info;
    kvp_weight tok_embd;                    /* (vocab, dim) */
    const float *out_norm;                  /* (dim) */
    kvp_weight output;                      /* (vocab, dim); the embedding when tied */
    kvp_layer_weights *layers;              /* (n_layers) */
    const float *rope_freqs;                /* rotary frequency factors or NULL (Llama 3): (head_dim / 2) */
    kvp_tokenizer *tok;
    kvp_gguf *gguf;                         /* GGUF models: the parsed, mapped file */
    void *map;                              /* llama2.c models: the mapping */
    size_t map_size;
    float **owned;                          /* vectors converted to F32, freed with the model */
    int n_owned;
    char *path;
    uint64_t weights_hash;                  /* context codec: XXH64 of the weight bytes, 0 until first needed
                                             * (src/codec/fingerprint.c; read and written atomically) */
};

/* Shared by the loaders: shape validation, keeping converted vectors, byte accounting. */
int kvp_model_check_shape(const kvp_model_info *info);
int kvp_model_own(kvp_model *m, float *p);
void kvp_model_account(kvp_model *m);

int kvp_model_load_gguf(kvp_model *m, const char *path);
/* A GGUF image in memory that outlives the model (borrowed); `label` names it in errors. */
int kvp_model_load_gguf_memory(kvp_model *m, const void *buf, size_t size, const char *label);
int kvp_model_load_llama2c(kvp_model *m, const char *path, const char *tokenizer_path);

#endif
