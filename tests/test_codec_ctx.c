/*
 * test_codec_ctx.c: contexts through the codec: round trips per level on real models
 * (lossless bit-exact, lossy within each plane's step), identical bytes when saved twice or
 * with another thread count, golden bitstreams (tests/golden/kvz-*.kvz) so that any format
 * change is caught, every corruption class (truncation, flipped bits, wrong version, huge
 * counts, a context of another model, a bad chunk with a valid CRC), streaming decode, the
 * level controller, and files.
 */
#include <math.h>
#include <stdint.h>
#include <unistd.h>

#include "codec/codec.h"
#include "codec/hash.h"
#include "common/common.h"
#include "kvpack.h"
#include "test.h"

static const char *kvt_text =
    "The President shall, from time to time, give to the Congress information of the State of the Union, and "
    "recommend to their consideration such measures as he shall judge necessary and expedient. We have come "
    "through a year of trial and of work, and the people of this nation have shown what they can build together. ";

/* A context of model `name` prefilled with n tokens of the text; *ids receives the tokens. */
static kvp_ctx *kvt_ctx(kvp_model **m, const char *name, int n, int threads, int **ids) {
    if (kvp_model_load(kvt_model(name), NULL, m) < 0) return NULL;
    *ids = malloc(sizeof(int) * 4096);
    char text[8192] = "";
    for (int i = 0; i < 8; i++) strcat(text, kvt_text);
    int got = 0;
    if (kvp_tokenize(*m, text, strlen(text), 1, *ids, 4096, &got) < 0 || got < n) return NULL;
    kvp_ctx_params p = kvp_ctx_default_params();
    p.n_ctx = n + 16;
    p.n_threads = threads;
    kvp_ctx *c = NULL;
    if (kvp_ctx_new(*m, &p, &c) < 0 || kvp_ctx_decode(c, *ids, n, NULL, 0) < 0) {
        kvp_ctx_free(c);
        return NULL;
    }
    return c;
}

static kvp_ctx *kvt_empty(kvp_model *m, int n_ctx) {
    kvp_ctx_params p = kvp_ctx_default_params();
    p.n_ctx = n_ctx;
    kvp_ctx *c = NULL;
    return kvp_ctx_new(m, &p, &c) < 0 ? NULL : c;
}

/* Saves at `level` into a malloc'ed buffer. */
static uint8_t *kvt_save(kvp_ctx *c, const int *ids, int n, int level, int chunk, size_t *size) {
    kvp_save_params p = kvp_save_default_params();
    p.level = level;
    p.chunk_tokens = chunk;
    size_t cap = 0;
    if (kvp_context_save_bound(c, n, &p, &cap) < 0) return NULL;
    uint8_t *buf = malloc(cap);
    if (buf && kvp_context_save(c, ids, n, &p, buf, cap, size) < 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

static size_t kvt_kv_count(const kvp_model *m, int n) {
    const kvp_model_info *in = kvp_model_get_info(m);
    return (size_t)in->n_layers * 2 * (size_t)n * (size_t)in->n_kv_heads * (size_t)in->head_dim;
}

/* The KV a loaded context holds must be exactly the decoder's output stored in the cache's
 * type (F16), and the decoder's output must be within each plane's half step of the
 * original; lossless chunks must give back the original bit for bit. */
static void kvt_check_reload(kvp_model *m, kvp_ctx *orig, const uint8_t *buf, size_t size, int n, int level) {
    size_t N = kvt_kv_count(m, n);
    float *a = malloc(N * 4), *b = malloc(N * 4);
    kvp_ctx *c = kvt_empty(m, n + 16);
    int loaded = 0;
    CHECK(c && a && b);
    CHECK_OK(kvp_context_load(c, buf, size, &loaded));
    CHECK(loaded == n && kvp_ctx_pos(c) == n);
    CHECK_OK(kvp_ctx_kv_read(orig, 0, n, a));
    CHECK_OK(kvp_ctx_kv_read(c, 0, n, b));
    if (level == KVP_LEVEL_LOSSLESS) CHECKF(!memcmp(a, b, N * 4), "lossless reload is not bit-exact");
    double num = 0, den = 0;
    for (size_t i = 0; i < N; i++) num += (double)(a[i] - b[i]) * (a[i] - b[i]), den += (double)a[i] * a[i];
    static const double bound[KVP_LEVEL_COUNT] = {0, 0.5, 0.3, 0.12, 0};
    if (level != KVP_LEVEL_LOSSLESS)
        CHECKF(sqrt(num / den) < bound[level], "level %d: relative RMS error %g", level, sqrt(num / den));
    kvp_ctx_free(c);
    free(a);
    free(b);
}

TEST(codec_ctx_roundtrip_levels) {
    static const char *models[] = {"sotu-1M.gguf", "stories260K.gguf"};
    for (size_t k = 0; k < KVP_ARRAY_LEN(models); k++) {
        kvp_model *m = NULL;
        int *ids = NULL, n = 300;
        kvp_ctx *c = kvt_ctx(&m, models[k], n, 1, &ids);
        CHECKF(c, "%s: %s", models[k], kvp_errmsg());
        for (int level = KVP_LEVEL_LOW; level <= KVP_LEVEL_LOSSLESS; level++) {
            size_t size = 0;
            uint8_t *buf = kvt_save(c, ids, n, level, 0, &size);
            CHECKF(buf, "%s level %d: %s", models[k], level, kvp_errmsg());
            kvt_check_reload(m, c, buf, size, n, level);
            free(buf);
            if (kvt_failed()) return;
        }
        kvp_ctx_free(c);
        kvp_model_free(m);
        free(ids);
    }
}

/* After a lossless reload, the next tokens' logits are bit for bit those of the original. */
TEST(codec_ctx_lossless_continues_identically) {
    kvp_model *m = NULL;
    int *ids = NULL, n = 200;
    kvp_ctx *c = kvt_ctx(&m, "sotu-1M.gguf", n, 1, &ids);
    CHECK(c);
    size_t size = 0;
    uint8_t *buf = kvt_save(c, ids, n, KVP_LEVEL_LOSSLESS, 64, &size);
    CHECK(buf);
    kvp_ctx *r = kvt_empty(m, n + 16);
    CHECK_OK(kvp_context_load(r, buf, size, NULL));
    int V = kvp_model_get_info(m)->vocab_size;
    float *la = malloc(sizeof(float) * (size_t)V * 4), *lb = malloc(sizeof(float) * (size_t)V * 4);
    CHECK_OK(kvp_ctx_decode(c, ids + n, 4, la, 1));
    CHECK_OK(kvp_ctx_decode(r, ids + n, 4, lb, 1));
    CHECK(!memcmp(la, lb, sizeof(float) * (size_t)V * 4));
    free(la), free(lb), free(buf), free(ids);
    kvp_ctx_free(c), kvp_ctx_free(r);
    kvp_model_free(m);
}

TEST(codec_ctx_deterministic) {
    kvp_model *m = NULL, *m2 = NULL;
    int *ids = NULL, *ids2 = NULL, n = 300;
    kvp_ctx *c = kvt_ctx(&m, "sotu-1M.gguf", n, 1, &ids), *c2 = kvt_ctx(&m2, "sotu-1M.gguf", n, 2, &ids2);
    CHECK(c && c2);
    for (int level = KVP_LEVEL_TEXT; level <= KVP_LEVEL_LOSSLESS; level++) {
        size_t s1 = 0, s2 = 0, s3 = 0;
        uint8_t *a = kvt_save(c, ids, n, level, 0, &s1), *b = kvt_save(c, ids, n, level, 0, &s2);
        uint8_t *t = kvt_save(c2, ids2, n, level, 0, &s3); /* two threads: same KV, same bytes */
        CHECK(a && b && t);
        CHECKF(s1 == s2 && !memcmp(a, b, s1), "level %d: saving twice gives other bytes", level);
        CHECKF(s1 == s3 && !memcmp(a, t, s1), "level %d: the thread count changes the bytes", level);
        free(a), free(b), free(t);
    }
    kvp_ctx_free(c), kvp_ctx_free(c2);
    kvp_model_free(m), kvp_model_free(m2);
    free(ids), free(ids2);
}

/* ---- corruption classes ---- */

static int kvt_load_rc(kvp_model *m, const uint8_t *buf, size_t size, int n_ctx) {
    kvp_ctx *c = kvt_empty(m, n_ctx);
    int rc = kvp_context_load(c, buf, size, NULL);
    if (rc != KVP_OK && kvp_ctx_pos(c) != 0) rc = 1000; /* a failed load must leave the context empty */
    kvp_ctx_free(c);
    return rc;
}

/* Rewrites the header CRC after a deliberate edit, so that the edit itself is what is judged. */
static void kvt_fix_crc(uint8_t *buf) {
    uint32_t hs = kvp_rd32(buf + 8);
    kvp_wr32(buf + hs - 4, kvp_crc32c(0, buf, hs - 4));
}

TEST(codec_ctx_corruption_classes) {
    kvp_model *m = NULL;
    int *ids = NULL, n = 70;
    kvp_ctx *c = kvt_ctx(&m, "stories260K.gguf", n, 1, &ids);
    CHECK(c);
    size_t size = 0;
    uint8_t *buf = kvt_save(c, ids, n, KVP_LEVEL_MEDIUM, 32, &size), *bad = malloc(size + 64);
    CHECK(buf && bad);
    CHECK_OK(kvt_load_rc(m, buf, size, 128));
    for (size_t cut = 0; cut < size; cut++) { /* truncated anywhere */
        int rc = kvt_load_rc(m, buf, cut, 128);
        CHECKF(rc == KVP_EFORMAT, "truncated at %zu of %zu: %d (%s)", cut, size, rc, kvp_errmsg());
    }
    uint32_t hs = kvp_rd32(buf + 8);
    for (size_t bit = 0; bit < size * 8; bit++) { /* every single flipped bit */
        memcpy(bad, buf, size);
        bad[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        int rc = kvt_load_rc(m, bad, size, 128);
        CHECKF(rc == KVP_ECORRUPT || rc == KVP_EFORMAT || rc == KVP_EUNSUPPORTED,
               "bit %zu flipped (header %u bytes): %d (%s)", bit, hs, rc, kvp_errmsg());
    }
    memcpy(bad, buf, size);
    kvp_wr16(bad + 4, KVP_KVZ_VERSION + 1); /* a newer version, correctly checksummed */
    kvt_fix_crc(bad);
    CHECK(kvt_load_rc(m, bad, size, 128) == KVP_EUNSUPPORTED);
    memcpy(bad, buf, size);
    kvp_wr32(bad + 12, 0x7fffffff); /* huge token count */
    kvt_fix_crc(bad);
    CHECK(kvt_load_rc(m, bad, size, 128) == KVP_EFORMAT);
    memcpy(bad, buf, size);
    kvp_wr32(bad + 56, 100000); /* huge layer count in the fingerprint */
    kvt_fix_crc(bad);
    CHECK(kvt_load_rc(m, bad, size, 128) == KVP_EFORMAT);
    memcpy(bad, buf, size);
    memcpy(bad + size, bad + hs, 64); /* trailing garbage */
    CHECK(kvt_load_rc(m, bad, size + 64, 128) == KVP_EFORMAT);
    CHECK(kvt_load_rc(m, buf, size, 32) == KVP_ERANGE); /* does not fit the context */
    free(buf), free(bad), free(ids);
    kvp_ctx_free(c);
    kvp_model_free(m);
}

/* A chunk whose bytes are wrong but whose CRC was recomputed: the decoder itself must
 * reject it (or decode values), never read out of bounds. */
TEST(codec_ctx_bad_chunk_valid_crc) {
    kvp_model *m = NULL;
    int *ids = NULL, n = 40;
    kvp_ctx *c = kvt_ctx(&m, "stories260K.gguf", n, 1, &ids);
    CHECK(c);
    size_t size = 0;
    uint8_t *buf = kvt_save(c, ids, n, KVP_LEVEL_LOW, 0, &size), *bad = malloc(size);
    CHECK(buf && bad);
    uint32_t hs = kvp_rd32(buf + 8);
    const uint8_t *entry = buf + hs - 4 - KVP_KVZ_ENTRY;
    uint32_t csize = kvp_rd32(entry + 8);
    int errors = 0;
    for (uint32_t i = 0; i < csize * 8; i += 5) {
        memcpy(bad, buf, size);
        bad[hs + i / 8] ^= (uint8_t)(1u << (i % 8));
        kvp_wr32(bad + (entry - buf) + 12, kvp_crc32c(0, bad + hs, csize)); /* the CRC matches the edit */
        kvt_fix_crc(bad);
        int rc = kvt_load_rc(m, bad, size, 64);
        CHECKF(rc == KVP_OK || rc == KVP_EFORMAT, "bit %u: %d (%s)", i, rc, kvp_errmsg());
        errors += rc != KVP_OK;
    }
    CHECK(errors > 0);
    free(buf), free(bad), free(ids);
    kvp_ctx_free(c);
    kvp_model_free(m);
}

TEST(codec_ctx_other_model) {
    kvp_model *m = NULL, *other = NULL, *bin = NULL;
    int *ids = NULL, n = 50;
    kvp_ctx *c = kvt_ctx(&m, "stories260K.gguf", n, 1, &ids);
    CHECK(c);
    size_t size = 0;
    uint8_t *buf = kvt_save(c, ids, n, KVP_LEVEL_HIGH, 0, &size);
    CHECK(buf);
    CHECK_OK(kvp_model_load(kvt_model("sotu-1M.gguf"), NULL, &other));
    CHECK(kvt_load_rc(other, buf, size, 64) == KVP_EMISMATCH); /* another shape */
    CHECK(strstr(kvp_errmsg(), "layers") != NULL);
    CHECK_OK(kvp_model_load(kvt_model("stories260K.bin"), kvt_model("tok512.bin"), &bin));
    CHECK(kvt_load_rc(bin, buf, size, 64) == KVP_EMISMATCH); /* same shape, other weight bytes */
    CHECK(strstr(kvp_errmsg(), "weights") != NULL);
    kvp_kvz *z = NULL;
    CHECK_OK(kvp_kvz_open(buf, size, &z));
    CHECK_OK(kvp_kvz_check_model(z, m));
    CHECK(kvp_kvz_check_model(z, other) == KVP_EMISMATCH);
    kvp_kvz_free(z);
    free(buf), free(ids);
    kvp_ctx_free(c);
    kvp_model_free(m), kvp_model_free(other), kvp_model_free(bin);
}

/* Synthetic models of one shape but other seeds: the weight hash tells them apart. */
TEST(codec_ctx_same_shape_other_weights) {
    char a[64], b[64];
    snprintf(a, sizeof a, "/tmp/kvt-codec-a-%d.gguf", (int)getpid());
    snprintf(b, sizeof b, "/tmp/kvt-codec-b-%d.gguf", (int)getpid());
    kvp_synth_params sp = {64, 128, 2, 4, 2, 300, 128, KVP_TYPE_F32, 10000.0f, 1};
    CHECK_OK(kvp_synth_write(a, &sp));
    sp.seed = 2;
    CHECK_OK(kvp_synth_write(b, &sp));
    kvp_model *ma = NULL, *mb = NULL;
    CHECK_OK(kvp_model_load(a, NULL, &ma));
    CHECK_OK(kvp_model_load(b, NULL, &mb));
    kvp_ctx *c = kvt_empty(ma, 64);
    int ids[20];
    for (int i = 0; i < 20; i++) ids[i] = 1 + i * 7;
    CHECK_OK(kvp_ctx_decode(c, ids, 20, NULL, 0));
    size_t size = 0;
    uint8_t *buf = kvt_save(c, ids, 20, KVP_LEVEL_MEDIUM, 0, &size);
    CHECK(buf);
    CHECK(kvt_load_rc(ma, buf, size, 64) == KVP_OK);
    CHECK(kvt_load_rc(mb, buf, size, 64) == KVP_EMISMATCH);
    free(buf);
    kvp_ctx_free(c);
    kvp_model_free(ma), kvp_model_free(mb);
    unlink(a), unlink(b);
}

/* Header first, then each chunk from its own buffer, as a stream would deliver them. */
TEST(codec_ctx_streaming) {
    kvp_model *m = NULL;
    int *ids = NULL, n = 150;
    kvp_ctx *c = kvt_ctx(&m, "sotu-1M.gguf", n, 1, &ids);
    CHECK(c);
    size_t size = 0, need = 0;
    uint8_t *buf = kvt_save(c, ids, n, KVP_LEVEL_LOSSLESS, 64, &size);
    CHECK(buf);
    CHECK_OK(kvp_kvz_header_size(buf, 16, &need));
    uint8_t *head = malloc(need);
    memcpy(head, buf, need);
    kvp_kvz *z = NULL;
    CHECK(kvp_kvz_open(head, need - 1, &z) == KVP_EFORMAT);
    CHECK_OK(kvp_kvz_open(head, need, &z));
    const kvp_kvz_info *in = kvp_kvz_get_info(z);
    CHECK(in->n_tokens == n && in->n_chunks == 3 && in->chunk_tokens == 64 && !memcmp(kvp_kvz_tokens(z), ids, 4 * (size_t)n));
    kvp_ctx *r = kvt_empty(m, n + 16);
    CHECK_OK(kvp_kvz_check_model(z, m));
    kvp_kvz_chunk_info ci;
    CHECK_OK(kvp_kvz_chunk(z, 1, &ci));
    CHECK(kvp_kvz_load_chunk(z, r, 1, buf + ci.offset, ci.size) == KVP_EINVAL); /* out of order */
    for (int i = 0; i < in->n_chunks; i++) {
        CHECK_OK(kvp_kvz_chunk(z, i, &ci));
        uint8_t *piece = malloc(ci.size);
        memcpy(piece, buf + ci.offset, ci.size);
        CHECK(kvp_kvz_load_chunk(z, r, i, NULL, 0) == KVP_EFORMAT); /* not in the header's buffer */
        CHECK_OK(kvp_kvz_load_chunk(z, r, i, piece, ci.size));
        CHECK(kvp_ctx_pos(r) == ci.first_pos + ci.n_tokens);
        free(piece);
    }
    size_t N = kvt_kv_count(m, n);
    float *a = malloc(N * 4), *b = malloc(N * 4);
    CHECK_OK(kvp_ctx_kv_read(c, 0, n, a));
    CHECK_OK(kvp_ctx_kv_read(r, 0, n, b));
    CHECK(!memcmp(a, b, N * 4));
    free(a), free(b), free(head), free(buf), free(ids);
    kvp_kvz_free(z);
    kvp_ctx_free(c), kvp_ctx_free(r);
    kvp_model_free(m);
}

static int kvt_levels(const uint8_t *buf, size_t size, int *levels, int cap) {
    kvp_kvz *z = NULL;
    if (kvp_kvz_open(buf, size, &z) < 0) return -1;
    int n = kvp_kvz_get_info(z)->n_chunks;
    for (int i = 0; i < n && i < cap; i++) {
        kvp_kvz_chunk_info ci;
        kvp_kvz_chunk(z, i, &ci);
        levels[i] = ci.level;
    }
    kvp_kvz_free(z);
    return n;
}

TEST(codec_ctx_controller) {
    kvp_model *m = NULL;
    int *ids = NULL, n = 256, levels[8];
    kvp_ctx *c = kvt_ctx(&m, "sotu-1M.gguf", n, 1, &ids);
    CHECK(c);
    kvp_save_params p = kvp_save_default_params();
    p.level = KVP_LEVEL_AUTO;
    p.chunk_tokens = 64;
    p.bandwidth = 1e12, p.slo = 1.0; /* plenty: the highest lossy level everywhere */
    size_t cap = 0, size = 0;
    CHECK_OK(kvp_context_save_bound(c, n, &p, &cap));
    uint8_t *buf = malloc(cap);
    CHECK_OK(kvp_context_save(c, ids, n, &p, buf, cap, &size));
    CHECK(kvt_levels(buf, size, levels, 8) == 4);
    for (int i = 0; i < 4; i++) CHECK(levels[i] == KVP_LEVEL_HIGH);
    p.bandwidth = 1e3, p.slo = 1e-3, p.prefill_rate = 1e9; /* slow link, fast recompute: text */
    CHECK_OK(kvp_context_save(c, ids, n, &p, buf, cap, &size));
    CHECK(kvt_levels(buf, size, levels, 8) == 4);
    for (int i = 0; i < 4; i++) CHECK(levels[i] == KVP_LEVEL_TEXT);
    kvp_ctx *r = kvt_empty(m, n + 16);
    CHECK_OK(kvp_context_load(r, buf, size, NULL)); /* text chunks are recomputed */
    CHECK(kvp_ctx_pos(r) == n);
    p.prefill_rate = 0; /* slow link, no recompute: the lowest level */
    CHECK_OK(kvp_context_save(c, ids, n, &p, buf, cap, &size));
    kvt_levels(buf, size, levels, 8);
    for (int i = 0; i < 4; i++) CHECK(levels[i] == KVP_LEVEL_LOW);
    p.slo = 0;
    CHECK(kvp_context_save(c, ids, n, &p, buf, cap, &size) == KVP_EINVAL);
    free(buf), free(ids);
    kvp_ctx_free(c), kvp_ctx_free(r);
    kvp_model_free(m);
}

TEST(codec_ctx_file_and_arguments) {
    kvp_model *m = NULL;
    int *ids = NULL, n = 100;
    kvp_ctx *c = kvt_ctx(&m, "stories260K.gguf", n, 1, &ids);
    CHECK(c);
    char path[64];
    snprintf(path, sizeof path, "/tmp/kvt-codec-%d.kvz", (int)getpid());
    size_t size = 0;
    CHECK_OK(kvp_context_save_file(c, ids, n, NULL, path, &size));
    kvp_ctx *r = kvt_empty(m, n + 16);
    int loaded = 0;
    CHECK_OK(kvp_context_load_file(r, path, &loaded));
    CHECK(loaded == n);
    CHECK(kvp_context_load_file(r, path, NULL) == KVP_EINVAL); /* not empty */
    kvp_ctx_reset(r);
    CHECK(truncate(path, (off_t)size - 7) == 0);
    CHECK(kvp_context_load_file(r, path, NULL) == KVP_EFORMAT);
    CHECK(strstr(kvp_errmsg(), "truncated") != NULL);
    CHECK(kvp_ctx_pos(r) == 0);
    unlink(path);
    CHECK(kvp_context_load_file(r, path, NULL) == KVP_EIO);
    kvp_save_params p = kvp_save_default_params();
    uint8_t small[64];
    CHECK(kvp_context_save(c, ids, n, &p, small, sizeof small, &size) == KVP_ERANGE);
    CHECK(kvp_context_save(c, ids, n + 1, &p, small, sizeof small, &size) == KVP_EINVAL);
    p.level = 9;
    CHECK(kvp_context_save(c, ids, n, &p, small, sizeof small, &size) == KVP_EINVAL);
    free(ids);
    kvp_ctx_free(c), kvp_ctx_free(r);
    kvp_model_free(m);
}
