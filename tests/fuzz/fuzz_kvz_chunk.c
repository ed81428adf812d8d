/*
 * fuzz_kvz_chunk.c: the chunk decoder's fuzz target.
 *
 * Input: 8 bytes that choose what the caller expects (layers 1..3, KV heads 1..2, head
 * dimension 1..16, level -1..4, tokens 1..300, first position 0..65535), then the chunk's
 * bytes. kvp_fuzz_kvz_chunk() decodes them with kvp_chunk_decode into a buffer of exactly
 * the expected size; any result is fine, an out-of-bounds access or a missing error message
 * is not. The corpus replay test calls it on corpus/fuzz_kvz_chunk; with -DKVP_LIBFUZZER it
 * is also a libFuzzer target.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/codec.h"
#include "common/common.h"

int kvp_fuzz_kvz_chunk(const uint8_t *data, size_t size);

int kvp_fuzz_kvz_chunk(const uint8_t *data, size_t size) {
    if (size < 8) return 0;
    kvp_chunk_shape s = {1 + data[0] % 3, 1 + data[1] % 2, 1 + data[2] % 16, 0, 0, 0};
    int level = data[3] % 6 - 1, n = 1 + (data[4] | data[5] << 8) % 300, pos = data[6] | data[7] << 8;
    size_t vals = (size_t)s.n_layers * 2 * (size_t)n * (size_t)s.n_kv_heads * (size_t)s.head_dim;
    float *kv = malloc(sizeof(float) * vals);
    kvp_codec *cd = NULL;
    if (!kv || kvp_codec_new(NULL, &cd) != KVP_OK) abort();
    kvp_seterr(KVP_OK, "%s", "");
    if (kvp_chunk_decode(cd, &s, pos, n, level, data + 8, size - 8, kv) != KVP_OK) {
        const char *m = kvp_errmsg();
        if (m[0] == '\0' || strcmp(m, "no error message") == 0) abort();
    }
    kvp_codec_free(cd);
    free(kv);
    return 0;
}

#ifdef KVP_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return kvp_fuzz_kvz_chunk(d, n); }
#endif
