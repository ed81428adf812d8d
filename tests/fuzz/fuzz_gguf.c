/*
 * fuzz_gguf.c: the GGUF parser's fuzz target.
 *
 * kvp_fuzz_gguf() parses an arbitrary image from memory and, when the parse succeeds, reads
 * every byte the index points at (keys, string values, array elements, tensor names and the
 * first and last byte of each tensor's data) and calls the look-up and typed getters on
 * every key, so that a sanitizer sees any pointer or length the parser got wrong. The corpus
 * replay test calls it on every file of corpus/fuzz_gguf; built with -DKVP_LIBFUZZER it is
 * also a libFuzzer target.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "model/gguf.h"

int kvp_fuzz_gguf(const uint8_t *data, size_t size);

/* Folds every byte of s into *acc. */
static void touch_str(kvp_gguf_str s, unsigned *acc) {
    for (uint64_t i = 0; i < s.len; i++) *acc = *acc * 31u + (unsigned char)s.s[i];
}

/* Reads every element of an array value. */
static void touch_array(const kvp_gguf_kv *kv, unsigned *acc) {
    static const size_t elem_bytes[KVP_GGUF_NTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    if (kv->arr_type == KVP_GGUF_STRING) {
        for (uint64_t i = 0; i < kv->arr_n; i++) touch_str(kv->strs[i], acc);
        return;
    }
    const uint8_t *p = kv->data;
    size_t n = (size_t)kv->arr_n * elem_bytes[kv->arr_type];
    for (size_t i = 0; i < n; i++) *acc += p[i];
}

/* Looks a key up by name and calls every getter on it (their results do not matter). */
static void query_key(const kvp_gguf *g, const kvp_gguf_kv *kv, unsigned *acc) {
    if (kv->key.len > 256 || memchr(kv->key.s, 0, (size_t)kv->key.len)) return;
    char key[257];
    memcpy(key, kv->key.s, (size_t)kv->key.len);
    key[kv->key.len] = '\0';
    uint32_t u = 0; float f = 0; int b = 0; kvp_gguf_str s = {0}; const kvp_gguf_kv *a = NULL;
    if (kvp_gguf_find(g, key) != kv) abort(); /* keys are unique, so the look-up finds kv */
    *acc += (unsigned)kvp_gguf_get_u32(g, key, &u) + u;
    *acc += (unsigned)kvp_gguf_get_f32(g, key, &f) + (f == f);
    *acc += (unsigned)kvp_gguf_get_bool(g, key, &b) + (unsigned)b;
    *acc += (unsigned)kvp_gguf_get_str(g, key, &s) + (unsigned)s.len;
    *acc += (unsigned)kvp_gguf_get_arr(g, key, kv->arr_type, &a);
    *acc += (unsigned)kvp_gguf_get_arr(g, key, (kv->arr_type + 1) % KVP_GGUF_NTYPES, &a);
}

/* Looks a tensor up by name: names are unique, so the look-up must find t itself. */
static void query_tensor(const kvp_gguf *g, const kvp_gguf_tensor *t) {
    if (t->name.len > 256 || memchr(t->name.s, 0, (size_t)t->name.len)) return;
    char name[257];
    memcpy(name, t->name.s, (size_t)t->name.len);
    name[t->name.len] = '\0';
    if (kvp_gguf_find_tensor(g, name) != t) abort();
}

/* Reads the name and the first and last data byte of every tensor. */
static void touch_tensors(const kvp_gguf *g, unsigned *acc) {
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const kvp_gguf_tensor *t = &g->tensors[i];
        const uint8_t *d = t->data;
        touch_str(t->name, acc);
        query_tensor(g, t);
        if (t->n_dims < 1 || t->n_dims > 4 || t->nbytes == 0) abort();
        if (d < g->image + g->data_offset || t->nbytes > (uint64_t)(g->image + g->size - d))
            abort();
        *acc += d[0] + d[t->nbytes - 1] + (unsigned)t->ne[0] + t->type;
    }
}

int kvp_fuzz_gguf(const uint8_t *data, size_t size) {
    kvp_gguf *g = NULL;
    kvp_seterr(KVP_OK, "%s", ""); /* a failure must leave a message of its own */
    if (kvp_gguf_parse(data, size, &g) != KVP_OK) {
        const char *m = kvp_errmsg();
        if (g != NULL || m[0] == '\0' || strcmp(m, "no error message") == 0) abort();
        return 0;
    }
    unsigned acc = 0;
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const kvp_gguf_kv *kv = &g->kv[i];
        touch_str(kv->key, &acc);
        if (kv->type == KVP_GGUF_STRING) touch_str(kv->v.str, &acc);
        if (kv->type == KVP_GGUF_ARRAY) touch_array(kv, &acc);
        query_key(g, kv, &acc);
    }
    touch_tensors(g, &acc);
    volatile unsigned sink = acc;
    (void)sink;
    kvp_gguf_close(g);
    return 0;
}

#ifdef KVP_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return kvp_fuzz_gguf(d, n); }
#endif
