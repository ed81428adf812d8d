/*
 * kv.h: the KV-cache interface. The forward pass never touches KV memory: per layer it
 * appends the new tokens' keys and values and asks the cache to attend for their queries.
 * Because the cache computes attention itself, it sees every query and every attention
 * weight, which is what the compressed caches (KIVI, MiKV) and the selection policies
 * (H2O, SnapKV, Quest, SentenceKV, ...) score tokens by. docs/kv-cache.md is the long form.
 *
 * One forward step over tokens [pos, pos + n) calls, in this order:
 *   begin(pos, n, tokens)                        once, before the first layer
 *   for each layer l: append(l, pos, n, K, V); attend(l, pos, n, Q, out)
 *   end()                                        once, after the last layer
 * Shapes (row-major, one row per token):
 *   K, V: (n, n_kv_heads * head_dim)   rotary embedding already applied to K
 *   Q, out: (n, n_heads * head_dim)    rotary embedding already applied to Q
 * attend() is causal: the query of token pos + i sees the stored tokens at positions
 * <= pos + i (its own included, appended just before). A cache that evicts tokens keeps
 * their original positions; attention covers what it stores. Query head h uses KV head
 * h / (n_heads / n_kv_heads).
 *
 * A cache parallelizes attend() itself over kv->pool, read at each call: the engine sets
 * it to NULL for the length of a step in which it runs several contexts' caches on the
 * threads of another pool (kvp_ctx_decode_batch), so an implementation never keeps a copy
 * of it and sizes per-thread scratch by the pool it was created with (a NULL pool runs
 * everything as thread 0). Every function returns 0 or a
 * negative KVP_E* code with a message; after an error the cache may only be reset or freed.
 */
#ifndef KVP_KV_H
#define KVP_KV_H

#include <stddef.h>
#include <stdint.h>

#include "common/pool.h"
#include "kvpack.h"

typedef struct kvp_kv kvp_kv;

typedef struct kvp_kv_shape {
    int n_layers, n_heads, n_kv_heads, head_dim;
    int n_ctx; /* positions the cache must be able to hold */
} kvp_kv_shape;

typedef struct kvp_kv_vtbl {
    const char *name;
    int (*begin)(kvp_kv *kv, int pos, int n, const int *tokens);
    int (*append)(kvp_kv *kv, int layer, int pos, int n, const float *k, const float *v);
    int (*attend)(kvp_kv *kv, int layer, int pos, int n, const float *q, float *out);
    int (*end)(kvp_kv *kv);
    /* bytes hot and cold, and the number of K and V values represented */
    void (*stats)(const kvp_kv *kv, kvp_kv_stats *st);
    void (*reset)(kvp_kv *kv);
    /* forgets every token at a position >= n_pos */
    int (*truncate)(kvp_kv *kv, int n_pos);
    /* Copies out the keys and values of positions [pos, pos + n) of one layer as the cache
     * represents them (dequantized), k and v: (n, n_kv_heads * head_dim). For the context
     * codec and for tests. KVP_EUNSUPPORTED when the cache no longer holds all of them
     * (evicted, or a cache that cannot read back). */
    int (*read)(const kvp_kv *kv, int layer, int pos, int n, float *k, float *v);
    void (*free)(kvp_kv *kv);
} kvp_kv_vtbl;

/* The common header of every cache; implementations embed it first. */
struct kvp_kv {
    const kvp_kv_vtbl *vt;
    kvp_kv_shape shape;
    kvp_pool *pool;  /* borrowed from the context; may be NULL (one thread) */
    int n_pos;       /* positions seen so far (next token's position) */
    char spec[64];   /* canonical spec, e.g. "f16" */
};

/* Creates a cache from a spec string ("f32", "f16"). KVP_EINVAL with a message listing the
 * valid specs for anything else. */
int kvp_kv_new(const char *spec, const kvp_kv_shape *shape, kvp_pool *pool, kvp_kv **out);
void kvp_kv_free(kvp_kv *kv); /* accepts NULL */

/* Checks that a step over tokens [pos, pos + n) may begin: pos must be the next position
 * (kv->n_pos) and the n >= 1 tokens must fit in the context. Returns KVP_OK, KVP_EINVAL (wrong
 * position) or KVP_ERANGE (context full), with a message; never changes the cache. Every
 * cache's begin() calls it first. */
int kvp_kv_step_check(const kvp_kv *kv, int pos, int n);

/* Walks the options of a cache spec, the tail ":o1:o2..." after its name (e.g. ":r128:g32" of
 * "k4v4:r128:g32"), calling opt(o, len, arg) for each with o a NUL-terminated copy of the option
 * (len characters). Returns 0 when tail is empty or every option was accepted, -1 when tail does
 * not start with ':', an option is empty or longer than 31 characters, or opt rejected one
 * (returned < 0; the options before it have been applied). Sets no message: the caller does. */
int kvp_kv_spec_options(const char *tail, int (*opt)(const char *o, size_t len, void *arg), void *arg);

/* Allocates one scratch buffer per pool thread: a table of n pointers (n = kvp_pool_size of
 * the cache's pool) to buffers of `bytes` bytes each, 64-byte aligned and uninitialized. Returns
 * the table, owned by the caller and freed with kvp_kv_scratch_free(table, n), or NULL when an
 * allocation failed (nothing is then left allocated; no message is set). */
void **kvp_kv_scratch_new(int n, size_t bytes);
void kvp_kv_scratch_free(void **scratch, int n); /* frees the buffers and the table; accepts NULL */

/* The full-precision cache (F32 or F16 storage) over pages of KVP_KV_PAGE tokens. */
#define KVP_KV_PAGE 64
int kvp_kv_full_new(int type, const kvp_kv_shape *shape, kvp_pool *pool, kvp_kv **out);

#endif
