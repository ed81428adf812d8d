/*
 * ref_llama.h: a deliberately naive double-precision llama forward pass for tests. It reads
 * a llama2.c checkpoint itself (no kvpack code) and keeps its KV cache as plain arrays, so
 * it is an independent reference for kvpack's engine, kernels and caches.
 */
#ifndef KVT_REF_LLAMA_H
#define KVT_REF_LLAMA_H

typedef struct kvt_ref kvt_ref;

/* Loads a llama2.c checkpoint; NULL on any failure. max_pos bounds the context. */
kvt_ref *kvt_ref_load(const char *path, int max_pos);
void kvt_ref_free(kvt_ref *r);
int kvt_ref_vocab(const kvt_ref *r);
/* Feeds one token at the next position and writes (vocab) logits. */
void kvt_ref_step(kvt_ref *r, int token, double *logits);

#endif
