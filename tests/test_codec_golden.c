/*
 * test_codec_golden.c: golden .kvz bitstreams (tests/golden/kvz-*.kvz). Each is encoded from
 * synthetic KV made by an integer generator (no model, no floating-point kernels, so the
 * bytes are the same on every machine) with a fixed fingerprint. The test checks that
 * encoding today gives exactly the committed bytes (any format or encoder change shows up
 * here and must come with a version decision and new golden files), and that the committed
 * files decode within each plane's half step (lossless: bit-exact).
 *
 * To regenerate after a deliberate change: KVP_WRITE_GOLDEN=1 build/kvpack-tests codec_golden
 *
 * kvz-v1-*.kvz were written by the version 1 encoder (before rotated keys and today's
 * steps), kvz-v2-*.kvz by the version 2 encoder (plain grids before trellis planes): they must
 * still open and decode within each plane's own half step. The rotary cases
 * take their angles from libm's cos and sin in double precision, which glibc rounds the same
 * way on every x86-64 machine.
 */
#include <math.h>
#include <stdint.h>

#include "codec/codec.h"
#include "codec/hash.h"
#include "common/common.h"
#include "kvpack.h"
#include "test.h"

enum { KVT_L = 2, KVT_KVH = 2, KVT_HD = 8, KVT_KVD = KVT_KVH * KVT_HD, KVT_N = 300, KVT_C = 256 };

/* Value i of plane p: F16 values from an integer generator (exact32: arbitrary F32). */
static float kvt_golden_value(int p, size_t i, int f32) {
    uint64_t s = (uint64_t)p * 0x9E3779B97F4A7C15ull + i * 0xD1B54A32D192ED03ull + 1;
    s ^= s >> 31, s *= 0xBF58476D1CE4E5B9ull, s ^= s >> 29;
    int c = (int)(i % KVT_KVD);
    int32_t q = (int32_t)(s % 4001) - 2000 + (c == 3 ? 6000 : 0); /* an outlier channel */
    float v = (float)q / 1024.0f * (p % 2 ? 0.25f : 1.0f);
    if (f32) v += (float)(s >> 40) * 1e-9f;
    return f32 ? v : kvp_f16_to_f32(kvp_f32_to_f16(v));
}

static void kvt_golden_kv(int pos, int n, int f32, float *kv) {
    for (int p = 0; p < 2 * KVT_L; p++)
        for (size_t j = 0; j < (size_t)n * KVT_KVD; j++)
            kv[(size_t)p * n * KVT_KVD + j] = kvt_golden_value(p, (size_t)pos * KVT_KVD + j, f32);
}

static void kvt_golden_header(kvp_kvz_header *h, int *tokens) {
    memset(h, 0, sizeof *h);
    memcpy(h->fp.arch, "golden", 7);
    h->fp.n_layers = KVT_L, h->fp.n_heads = 4, h->fp.n_kv_heads = KVT_KVH, h->fp.head_dim = KVT_HD;
    h->fp.dim = 32, h->fp.hidden_dim = 64, h->fp.vocab_size = 1000, h->fp.rope_theta_bits = 0x461c4000;
    h->fp.weight_type = KVP_TYPE_F32, h->fp.weight_bytes = 123456, h->fp.weights_hash = 0x0123456789abcdefull;
    h->n_tokens = KVT_N, h->chunk_tokens = KVT_C, h->n_chunks = (KVT_N + KVT_C - 1) / KVT_C;
    h->token_bytes = 2, h->kv_type = KVP_TYPE_F16;
    h->header_size = kvp_kvz_header_bytes(h->n_tokens, h->n_chunks, h->token_bytes);
    for (int i = 0; i < KVT_N; i++) tokens[i] = (i * 37 + 1) % 1000;
}

/* Encodes the golden context with one level per chunk into a malloc'ed image. */
static uint8_t *kvt_golden_encode(const int *levels, int f32, int rope_style, size_t *size) {
    kvp_kvz_header h;
    int tokens[KVT_N];
    kvt_golden_header(&h, tokens);
    if (f32) h.kv_type = KVP_TYPE_F32;
    kvp_chunk_shape s = {KVT_L, KVT_KVH, KVT_HD, rope_style >= 0 ? 10000.0f : 0.0f, KVP_MAX(rope_style, 0), 0};
    kvp_kvz_chunk_info table[2];
    size_t cap = (size_t)h.header_size + 2 * kvp_chunk_bound(&s, KVT_C), at = h.header_size;
    uint8_t *out = malloc(cap);
    float *kv = malloc(sizeof(float) * 2 * KVT_L * KVT_C * KVT_KVD);
    kvp_codec *cd = NULL;
    if (!out || !kv || kvp_codec_new(NULL, &cd) < 0) return NULL;
    for (int i = 0; i < h.n_chunks; i++) {
        int pos = i * KVT_C, n = KVP_MIN(KVT_C, KVT_N - pos);
        size_t cs = 0;
        kvt_golden_kv(pos, n, f32, kv);
        if (kvp_chunk_encode(cd, &s, pos, n, levels[i], kv, NULL, out + at, cap - at, &cs) < 0) return NULL;
        table[i] = (kvp_kvz_chunk_info){pos, n, levels[i], at, (uint32_t)cs, kvp_crc32c(0, out + at, cs)};
        at += cs;
    }
    h.total_size = at;
    kvp_kvz_write_header(&h, tokens, table, out);
    kvp_codec_free(cd);
    free(kv);
    *size = at;
    return out;
}

/* Half the step plane p of a chunk says it uses (its bytes are well-formed: the CRC passed),
 * and the plane's kind. */
static float kvt_plane_half_step(const uint8_t *chunk, int p, int *kind) {
    size_t at = KVP_CHUNK_HEADER + 4 * 2 * KVT_L;
    for (int i = 0; i < p; i++) at += kvp_rd32(chunk + KVP_CHUNK_HEADER + 4 * (size_t)i);
    uint32_t bits = kvp_rd32(chunk + at + 4);
    float step;
    memcpy(&step, &bits, 4);
    *kind = chunk[at];
    return step / 2;
}

/* Decodes a golden image and checks it against the generator: each value within its plane's
 * half step, or two steps for a trellis plane (the farther of the two levels of its state's
 * quantizer that bracket the value); rotated keys: sqrt(2) times that, the rotation of a
 * pair's two errors. */
static void kvt_golden_decode(const uint8_t *buf, size_t size, int f32) {
    kvp_kvz *z = NULL;
    CHECK_OK(kvp_kvz_open(buf, size, &z));
    const kvp_kvz_info *in = kvp_kvz_get_info(z);
    CHECK(in->n_tokens == KVT_N && in->n_chunks == 2 && in->n_layers == KVT_L && !strcmp(in->arch, "golden"));
    float *kv = malloc(sizeof(float) * 2 * KVT_L * KVT_C * KVT_KVD), *src = malloc(sizeof(float) * 2 * KVT_L * KVT_C * KVT_KVD);
    for (int i = 0; i < in->n_chunks; i++) {
        kvp_kvz_chunk_info ci;
        CHECK_OK(kvp_kvz_chunk(z, i, &ci));
        if (ci.level == KVP_LEVEL_TEXT) {
            CHECK(kvp_kvz_decode_chunk(z, i, NULL, 0, kv) == KVP_EINVAL);
            continue;
        }
        CHECK_OK(kvp_kvz_decode_chunk(z, i, NULL, 0, kv));
        kvt_golden_kv(ci.first_pos, ci.n_tokens, f32, src);
        size_t N = (size_t)ci.n_tokens * KVT_KVD;
        for (int p = 0; p < 2 * KVT_L; p++) {
            const float *x = src + (size_t)p * N, *y = kv + (size_t)p * N;
            double ss = 0;
            for (size_t j = 0; j < N; j++) ss += (double)x[j] * x[j];
            const uint8_t *chunk = buf + ci.offset;
            int kind = KVP_PLANE_EXACT16;
            float half = ci.level == KVP_LEVEL_LOSSLESS ? 0 : kvt_plane_half_step(chunk, p, &kind);
            if (ci.level != KVP_LEVEL_LOSSLESS)
                CHECK(fabsf(half - kvp_codec_step(ci.level, p % 2, sqrt(ss / (double)N), 1.0,
                                                  kvp_codec_depth(p / 2, KVT_L)) / 2) <= half * 1e-5f ||
                      in->version < KVP_KVZ_VERSION);
            CHECK((kind == KVP_PLANE_TRELLIS) == (ci.level != KVP_LEVEL_LOSSLESS && in->version >= 3));
            if (kind == KVP_PLANE_TRELLIS) half *= 4;
            if (p % 2 == 0 && (chunk[5] & KVP_CHUNK_ROTARY)) half = half * 1.4143f + 1e-5f;
            for (size_t j = 0; j < N; j++)
                CHECKF(fabsf(x[j] - y[j]) <= half + fabsf(x[j]) * 1e-6f, "chunk %d plane %d value %zu: %g vs %g", i, p,
                       j, x[j], y[j]);
        }
    }
    free(kv), free(src);
    kvp_kvz_free(z);
}

static void kvt_golden_case(const char *name, int l0, int l1, int f32, int rope_style) {
    int levels[2] = {l0, l1};
    size_t size = 0, gsize = 0;
    uint8_t *buf = kvt_golden_encode(levels, f32, rope_style, &size);
    CHECKF(buf, "%s: %s", name, kvp_errmsg());
    char path[256];
    snprintf(path, sizeof path, "tests/golden/%s", name);
    if (getenv("KVP_WRITE_GOLDEN")) {
        FILE *f = fopen(path, "wb");
        CHECKF(f && fwrite(buf, 1, size, f) == size, "cannot write %s", path);
        fclose(f);
        printf("wrote %s (%zu bytes)\n", path, size);
    }
    void *golden = NULL;
    CHECKF(kvp_read_file(path, &golden, &gsize) == KVP_OK, "%s is missing (%s)", path, kvp_errmsg());
    CHECKF(gsize == size && !memcmp(golden, buf, size), "%s: today's encoder gives other bytes (%zu vs %zu): the "
           "format or the encoder changed", path, size, gsize);
    kvt_golden_decode(golden, gsize, f32);
    free(golden);
    free(buf);
}

TEST(codec_golden_low) { kvt_golden_case("kvz-low.kvz", KVP_LEVEL_LOW, KVP_LEVEL_LOW, 0, -1); }
TEST(codec_golden_medium) { kvt_golden_case("kvz-medium.kvz", KVP_LEVEL_MEDIUM, KVP_LEVEL_MEDIUM, 0, -1); }
TEST(codec_golden_high) { kvt_golden_case("kvz-high.kvz", KVP_LEVEL_HIGH, KVP_LEVEL_HIGH, 0, -1); }
TEST(codec_golden_lossless16) { kvt_golden_case("kvz-lossless16.kvz", KVP_LEVEL_LOSSLESS, KVP_LEVEL_LOSSLESS, 0, KVP_ROPE_NORM); }
TEST(codec_golden_lossless32) { kvt_golden_case("kvz-lossless32.kvz", KVP_LEVEL_LOSSLESS, KVP_LEVEL_LOSSLESS, 1, -1); }
TEST(codec_golden_mixed_text) { kvt_golden_case("kvz-mixed.kvz", KVP_LEVEL_MEDIUM, KVP_LEVEL_TEXT, 0, -1); }
TEST(codec_golden_rotary) { kvt_golden_case("kvz-medium-rotary.kvz", KVP_LEVEL_MEDIUM, KVP_LEVEL_HIGH, 0, KVP_ROPE_NORM); }
TEST(codec_golden_rotary_neox) { kvt_golden_case("kvz-low-rotary-neox.kvz", KVP_LEVEL_LOW, KVP_LEVEL_TEXT, 0, KVP_ROPE_NEOX); }

/* The files of an older version still open and decode within bounds. */
static void kvt_golden_old(int version, const char *const *names, size_t n_names) {
    for (size_t i = 0; i < n_names; i++) {
        char path[256];
        snprintf(path, sizeof path, "tests/golden/kvz-v%d-%s.kvz", version, names[i]);
        void *buf = NULL;
        size_t size = 0;
        CHECKF(kvp_read_file(path, &buf, &size) == KVP_OK, "%s is missing (%s)", path, kvp_errmsg());
        CHECK(size > 6 && kvp_rd16((const uint8_t *)buf + 4) == version);
        kvt_golden_decode(buf, size, !strcmp(names[i], "lossless32"));
        free(buf);
    }
}

TEST(codec_golden_v1_decodes) {
    static const char *names[] = {"low", "medium", "high", "lossless16", "lossless32", "mixed"};
    kvt_golden_old(1, names, KVP_ARRAY_LEN(names));
}

TEST(codec_golden_v2_decodes) {
    static const char *names[] = {"low", "medium", "high", "lossless16", "lossless32", "mixed", "medium-rotary",
                                  "low-rotary-neox"};
    kvt_golden_old(2, names, KVP_ARRAY_LEN(names));
}

/* Golden file `name` relabelled as format version `version` (header CRC redone) must refuse
 * to decode its first chunk with KVP_EFORMAT and a message naming `what`. */
static void kvt_golden_refused(const char *name, int version, const char *what) {
    void *buf = NULL;
    size_t size = 0;
    CHECK_OK(kvp_read_file(name, &buf, &size));
    uint8_t *b = buf;
    kvp_wr16(b + 4, (uint16_t)version);
    uint32_t hs = kvp_rd32(b + 8);
    kvp_wr32(b + hs - 4, kvp_crc32c(0, b, hs - 4));
    kvp_kvz *z = NULL;
    CHECK_OK(kvp_kvz_open(b, size, &z));
    float *kv = malloc(sizeof(float) * 2 * KVT_L * KVT_C * KVT_KVD);
    CHECKF(kvp_kvz_decode_chunk(z, 0, NULL, 0, kv) == KVP_EFORMAT && strstr(kvp_errmsg(), what), "%s as version %d: %s",
           name, version, kvp_errmsg());
    free(kv);
    kvp_kvz_free(z);
    free(buf);
}

/* A version 2 header in front of trellis planes is refused (version 2 had none). */
TEST(codec_golden_v2_refuses_trellis) { kvt_golden_refused("tests/golden/kvz-medium.kvz", 2, "trellis"); }

/* A version 1 header in front of a chunk with rotated keys is refused (version 1 had no
 * chunk flags), not decoded as unrotated keys. */
TEST(codec_golden_v1_refuses_rotary) { kvt_golden_refused("tests/golden/kvz-medium-rotary.kvz", 1, "flags"); }
