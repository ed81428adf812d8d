/*
 * fuzz_kvz_header.c: the .kvz header parser's fuzz target.
 *
 * kvp_fuzz_kvz_header() opens an arbitrary image; when the header parses, it reads every
 * field, token and chunk-table entry, and decodes every chunk the image holds (chunks of at
 * most 2^20 values, to bound memory), so that a sanitizer sees any bad offset or count. A
 * failure must leave an error message. The corpus replay test calls it on every file of
 * corpus/fuzz_kvz_header; built with -DKVP_LIBFUZZER it is also a libFuzzer target.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "kvpack.h"

int kvp_fuzz_kvz_header(const uint8_t *data, size_t size);

static void kvp_fuzz_failed(void) {
    const char *m = kvp_errmsg();
    if (m[0] == '\0' || strcmp(m, "no error message") == 0) abort();
}

/* Decodes chunk i when it is small enough; its result does not matter, only its safety. */
static void kvp_fuzz_chunk(kvp_kvz *z, const kvp_kvz_info *in, int i, unsigned *acc) {
    kvp_kvz_chunk_info ci;
    if (kvp_kvz_chunk(z, i, &ci) != KVP_OK) abort(); /* every index below n_chunks exists */
    if (ci.first_pos != i * in->chunk_tokens || ci.n_tokens < 1 || ci.n_tokens > in->chunk_tokens) abort();
    *acc += ci.size + (unsigned)ci.level + ci.crc32c;
    size_t vals = (size_t)in->n_layers * 2 * (size_t)ci.n_tokens * (size_t)in->n_kv_heads * (size_t)in->head_dim;
    size_t chunk_vals = (size_t)in->n_layers * 2 * (size_t)in->chunk_tokens * (size_t)in->n_kv_heads * (size_t)in->head_dim;
    if (chunk_vals > (1u << 20)) return;
    float *kv = malloc(sizeof(float) * (vals ? vals : 1));
    if (kv && kvp_kvz_decode_chunk(z, i, NULL, 0, kv) == KVP_OK)
        for (size_t j = 0; j < vals; j += 97) *acc += (unsigned)(kv[j] == kv[j]);
    else
        kvp_fuzz_failed();
    free(kv);
}

int kvp_fuzz_kvz_header(const uint8_t *data, size_t size) {
    kvp_kvz *z = NULL;
    kvp_seterr(KVP_OK, "%s", ""); /* a failure must leave a message of its own */
    size_t need = 0;
    if (kvp_kvz_header_size(data, size, &need) != KVP_OK) kvp_fuzz_failed();
    if (kvp_kvz_open(data, size, &z) != KVP_OK) {
        if (z != NULL) abort();
        kvp_fuzz_failed();
        return 0;
    }
    const kvp_kvz_info *in = kvp_kvz_get_info(z);
    const int *tokens = kvp_kvz_tokens(z);
    unsigned acc = 0;
    for (int i = 0; i < in->n_tokens; i++) {
        if (tokens[i] < 0 || tokens[i] >= in->vocab_size) abort();
        acc += (unsigned)tokens[i];
    }
    for (int i = 0; i < in->n_chunks; i++) kvp_fuzz_chunk(z, in, i, &acc);
    kvp_kvz_chunk_info ci;
    if (kvp_kvz_chunk(z, in->n_chunks, &ci) == KVP_OK) abort();
    volatile unsigned sink = acc;
    (void)sink;
    kvp_kvz_free(z);
    return 0;
}

#ifdef KVP_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return kvp_fuzz_kvz_header(d, n); }
#endif
