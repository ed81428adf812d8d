/*
 * fuzz_kvz_rans.c: the entropy decoder's fuzz target: one plane (histograms, rANS stream,
 * raw bits, prediction) from arbitrary bytes.
 *
 * Input: 3 bytes that choose the plane's shape (tokens 1..300, channels 1..64), then the
 * plane's bytes. kvp_fuzz_kvz_rans() decodes them twice, with the fast path and with its
 * reference twin; both must agree on success or failure, and on every output bit. The
 * corpus replay test calls it on corpus/fuzz_kvz_rans; with -DKVP_LIBFUZZER it is also a
 * libFuzzer target.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/plane.h"
#include "common/common.h"

int kvp_fuzz_kvz_rans(const uint8_t *data, size_t size);

int kvp_fuzz_kvz_rans(const uint8_t *data, size_t size) {
    if (size < 3) return 0;
    int n = 1 + (data[0] | data[1] << 8) % 300, d = 1 + data[2] % 64;
    size_t N = (size_t)n * (size_t)d;
    float *a = malloc(sizeof(float) * N), *b = malloc(sizeof(float) * N);
    kvp_plane_work fast = {0}, ref = {0};
    ref.ref = 1;
    if (!a || !b) abort();
    int ka = -1, kb = -1;
    int ra = kvp_plane_decode(data + 3, size - 3, n, d, a, &fast, &ka);
    int rb = kvp_plane_decode(data + 3, size - 3, n, d, b, &ref, &kb);
    if (ra != rb || (ra == KVP_OK && (ka != kb || memcmp(a, b, sizeof(float) * N)))) abort();
    if (ra != KVP_OK && kvp_errmsg()[0] == '\0') abort();
    kvp_plane_work_free(&fast);
    kvp_plane_work_free(&ref);
    free(a);
    free(b);
    return 0;
}

#ifdef KVP_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);
int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return kvp_fuzz_kvz_rans(d, n); }
#endif
