/*
 * test_codec.c: the context codec's building blocks: checksums and hashes against published
 * vectors (and the hardware CRC against its table twin), the bit writer's bounds, histogram
 * normalization, rANS round trips, and planes of every kind over odd sizes (fast decoding
 * path against its reference twin, error bounds, bit-exact lossless, identical bytes when
 * encoded twice, hostile bytes).
 */
#include <math.h>
#include <stdint.h>

#include "codec/codec.h"
#include "codec/hash.h"
#include "codec/plane.h"
#include "codec/rans.h"
#include "common/common.h"
#include "kernels/kernels.h"
#include "kvpack.h"
#include "test.h"

TEST(codec_crc32c_vectors) {
    CHECK(kvp_crc32c(0, "123456789", 9) == 0xE3069283u);
    CHECK(kvp_crc32c_ref(0, "123456789", 9) == 0xE3069283u);
    CHECK(kvp_crc32c(0, "", 0) == 0);
    unsigned long long s = 7;
    uint8_t buf[1031];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (uint8_t)kvt_rand_u64(&s);
    for (size_t off = 0; off < 9; off++)
        for (size_t n = 0; n + off <= sizeof buf; n += 1 + n / 7)
            CHECKF(kvp_crc32c(0, buf + off, n) == kvp_crc32c_ref(0, buf + off, n), "offset %zu length %zu", off, n);
    /* continuing a CRC over two pieces equals the CRC of the whole */
    CHECK(kvp_crc32c(kvp_crc32c(0, buf, 100), buf + 100, 931) == kvp_crc32c(0, buf, 1031));
}

TEST(codec_xxh64_vectors) {
    CHECK(kvp_xxh64("", 0, 0) == 0xEF46DB3751D8E999ull);
    CHECK(kvp_xxh64("a", 1, 0) == 0xD24EC4F1A98C6E5Bull);
    CHECK(kvp_xxh64("abc", 3, 0) == 0x44BC2CF5AD770999ull);
    const char *s = "Nobody inspects the spammish repetition";
    CHECK(kvp_xxh64(s, strlen(s), 0) == 0xFBCEA83C8A378BF1ull);
    CHECK(kvp_xxh64(s, strlen(s), 1) != kvp_xxh64(s, strlen(s), 0));
}

TEST(codec_bitwriter_bounds) {
    uint8_t buf[8];
    memset(buf, 0xAB, sizeof buf);
    kvp_bitw w;
    kvp_bitw_init(&w, buf, 5);
    for (int i = 0; i < 20; i++) kvp_bitw_put(&w, 0x1ff, 9); /* 180 bits into 40 */
    CHECK(kvp_bitw_finish(&w) == 0 && w.overflow);
    CHECK(buf[5] == 0xAB && buf[6] == 0xAB && buf[7] == 0xAB); /* nothing past the cap */
    kvp_bitw_init(&w, buf, 8);
    kvp_bitw_put(&w, 5, 3);
    kvp_bitw_put_sexp(&w, -300);
    kvp_bitw_put(&w, 0xdeadbeef, 32);
    size_t n = kvp_bitw_finish(&w);
    CHECK(n > 0 && !w.overflow);
    kvp_bitr r;
    kvp_bitr_init(&r, buf, n);
    CHECK(kvp_bitr_get(&r, 3) == 5);
    CHECK(kvp_bitr_get_sexp(&r) == -300);
    CHECK(kvp_bitr_get(&r, 32) == 0xdeadbeef);
    CHECK(!r.overrun);
    kvp_bitr_get(&r, 32);
    CHECK(r.overrun); /* past the end: flagged, zeros */
}

TEST(codec_histogram_normalizes) {
    unsigned long long s = 3;
    for (int trial = 0; trial < 500; trial++) {
        uint8_t codes[KVP_SYM_MAX] = {0};
        int n = 1 + (int)(kvt_rand_u64(&s) % KVP_SYM_MAX);
        for (int i = 0; i < n; i++) codes[i] = (uint8_t)(kvt_rand_u64(&s) % KVP_HIST_CODES);
        if (trial % 5 == 0) codes[n - 1] = 63, codes[0] = 1; /* extreme ratios */
        codes[n - 1] = codes[n - 1] ? codes[n - 1] : 1;
        kvp_rans_model m;
        CHECK_OK(kvp_hist_model(codes, n, &m));
        uint32_t sum = 0;
        for (int i = 0; i < KVP_SYM_MAX; i++) {
            CHECKF((m.freq[i] > 0) == (i < n && codes[i] > 0), "trial %d symbol %d", trial, i);
            sum += m.freq[i];
        }
        CHECKF(sum == KVP_RANS_TOTAL, "trial %d: sum %u", trial, sum);
    }
    uint8_t none[KVP_SYM_MAX] = {0};
    kvp_rans_model m;
    CHECK(kvp_hist_model(none, 5, &m) == KVP_EFORMAT);
}

/* Encodes n symbols drawn from `counts`, decodes them back. */
static void kvt_rans_trip(const uint32_t *counts, int n, unsigned long long seed) {
    uint8_t codes[KVP_SYM_MAX];
    int len = kvp_hist_codes(counts, codes);
    kvp_rans_model m;
    CHECK_OK(kvp_hist_model(codes, len, &m));
    int *sym = malloc(sizeof(int) * (size_t)n);
    uint32_t tot = 0, *table = malloc(sizeof(uint32_t) * KVP_RANS_TOTAL);
    for (int s = 0; s < KVP_SYM_MAX; s++) tot += counts[s];
    for (int i = 0; i < n; i++) { /* draw symbols in proportion to counts */
        uint32_t r = (uint32_t)(kvt_rand_u64(&seed) % tot), s = 0;
        while (r >= counts[s]) r -= counts[s++];
        sym[i] = (int)s;
    }
    size_t cap = 2 * (size_t)n + 64;
    uint8_t *buf = malloc(cap), *start = NULL;
    kvp_rans_enc e;
    kvp_rans_enc_init(&e, buf, cap);
    for (int i = n - 1; i >= 0; i--) kvp_rans_enc_put(&e, i & 3, m.cum[sym[i]], m.freq[sym[i]]);
    size_t size = kvp_rans_enc_finish(&e, &start);
    CHECK(size >= 16);
    kvp_rans_table(&m, table);
    kvp_rans_dec d;
    CHECK_OK(kvp_rans_dec_init(&d, start, size));
    for (int i = 0; i < n; i++) CHECKF(kvp_rans_dec_get(&d, i & 3, table) == sym[i], "symbol %d of %d", i, n);
    CHECK_OK(kvp_rans_dec_finish(&d));
    free(sym);
    free(table);
    free(buf);
}

TEST(codec_rans_roundtrip) {
    static const int sizes[] = {1, 2, 3, 4, 5, 7, 64, 1001, 20000};
    uint32_t counts[KVP_SYM_MAX];
    unsigned long long s = 11;
    for (size_t k = 0; k < KVP_ARRAY_LEN(sizes); k++) {
        for (int shape = 0; shape < 4; shape++) {
            memset(counts, 0, sizeof counts);
            if (shape == 0) counts[0] = 1;                                          /* one symbol */
            if (shape == 1) for (int i = 0; i < 20; i++) counts[i] = 1000 >> (i / 2); /* geometric */
            if (shape == 2) for (int i = 0; i < KVP_SYM_MAX; i++) counts[i] = 1;  /* flat, all 116 */
            if (shape == 3) counts[0] = 100000, counts[85] = 1, counts[40] = 3;     /* skewed */
            kvt_rans_trip(counts, sizes[k], s++);
            if (kvt_failed()) return;
        }
    }
}

TEST(codec_rans_rejects_bad_streams) {
    uint8_t buf[16] = {0};
    kvp_rans_dec d;
    CHECK(kvp_rans_dec_init(&d, buf, 15) == KVP_EFORMAT); /* shorter than the states */
    CHECK(kvp_rans_dec_init(&d, buf, 16) == KVP_EFORMAT); /* states below 2^16 */
}

/* ---- planes ---- */

/* Fills x with values of kind `kind`: lossy and exact16 get F16 values with an outlier
 * channel, random-walk channels (which delta prediction suits) and specials; exact32 gets
 * arbitrary F32 bit patterns. */
static void kvt_plane_data(float *x, int n, int d, int kind, unsigned long long seed) {
    for (int t = 0; t < n; t++)
        for (int c = 0; c < d; c++) {
            float v = kvt_randf(&seed) * (1.0f + (float)(c % 5)) + (c == 1 ? 6.0f : 0.0f) + 0.01f * (float)t;
            if (c % 7 == 3 && t > 0) v = x[(size_t)(t - 1) * d + c] + 0.05f * kvt_randf(&seed);
            if (kind == KVP_PLANE_EXACT32) {
                uint32_t b = (uint32_t)kvt_rand_u64(&seed);
                memcpy(&v, &b, 4);
                if ((t + c) % 3) v = kvt_randf(&seed) * 3.0f;
            }
            if (kind != KVP_PLANE_EXACT32) v = kvp_f16_to_f32(kvp_f32_to_f16(v));
            x[(size_t)t * d + c] = v;
        }
    if (kind == KVP_PLANE_EXACT16 && n * d >= 4) {
        x[0] = -0.0f;
        x[1] = kvp_f16_to_f32(1);      /* smallest subnormal */
        x[2] = kvp_f16_to_f32(0x7c00); /* +inf */
        x[3] = kvp_f16_to_f32(0xfbff); /* most negative finite */
    }
}

static int kvt_bits_equal(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof *a) == 0; }

/* One plane of (n, d) of a kind: the reference search (trellis) gives the same bytes as the
 * vector ones (16 and 8 lanes), and they round trip through both decoding paths within the kind's bound: step / 2
 * on the plain grid, 2 steps on the trellis (the farther of the two levels of its state's
 * quantizer that bracket the value). */
static void kvt_plane_case(int n, int d, int kind, float step) {
    size_t N = (size_t)n * d, cap = kvp_plane_bound(n, d), size = 0, size2 = 0;
    float *x = malloc(N * 4), *y = malloc(N * 4), *z = malloc(N * 4);
    uint8_t *out = malloc(cap), *out2 = malloc(cap);
    kvp_plane_work w = {0}, w2 = {0}, wr = {0};
    wr.ref = 1;
    kvt_plane_data(x, n, d, kind, (unsigned long long)(n * 1000 + d * 10 + kind));
    CHECK_OK(kvp_plane_encode(x, n, d, kind, step, &w, out, cap, &size));
    CHECK_OK(kvp_plane_encode(x, n, d, kind, step, &w2, out2, cap, &size2));
    CHECKF(size == size2 && !memcmp(out, out2, size), "(%d, %d) kind %d: two encodings differ", n, d, kind);
    CHECK_OK(kvp_plane_encode(x, n, d, kind, step, &wr, out2, cap, &size2));
    CHECKF(size == size2 && !memcmp(out, out2, size), "(%d, %d) kind %d: the reference encoder differs", n, d, kind);
    w2.width = 8; /* the AVX2 search where the CPU has it (else the reference again) */
    CHECK_OK(kvp_plane_encode(x, n, d, kind, step, &w2, out2, cap, &size2));
    CHECKF(size == size2 && !memcmp(out, out2, size), "(%d, %d) kind %d: the 8-lane encoder differs", n, d, kind);
    int k = -1;
    CHECK_OK(kvp_plane_decode(out, size, n, d, y, &w, &k));
    CHECK(k == kind);
    CHECK_OK(kvp_plane_decode(out, size, n, d, z, &wr, NULL));
    CHECKF(kvt_bits_equal(y, z, N), "(%d, %d): fast and reference decoding differ", n, d);
    for (size_t i = 0; i < N && !kvp_plane_is_lossy(kind); i++)
        CHECKF(!memcmp(&x[i], &y[i], 4), "(%d, %d) kind %d: value %zu %g != %g", n, d, kind, i, x[i], y[i]);
    float bound = kind == KVP_PLANE_TRELLIS ? 2 * step : step * 0.5f;
    for (size_t i = 0; i < N && kvp_plane_is_lossy(kind); i++)
        CHECKF(fabsf(x[i] - y[i]) <= bound + fabsf(x[i]) * 1e-6f, /* up to float rounding */
               "(%d, %d) kind %d: value %zu error %g > %g", n, d, kind, i, fabsf(x[i] - y[i]), bound);
    kvp_plane_work_free(&w);
    kvp_plane_work_free(&w2);
    kvp_plane_work_free(&wr);
    free(x), free(y), free(z), free(out), free(out2);
}

TEST(codec_plane_roundtrip_odd_sizes) {
    static const int shapes[][2] = {{1, 1}, {1, 4}, {2, 3}, {3, 5}, {7, 8}, {17, 12}, {33, 64}, {256, 64}, {64, 130},
                                    {7, 33}, {3, 1023}, {256, 16}};
    for (size_t i = 0; i < KVP_ARRAY_LEN(shapes); i++)
        for (int kind = 0; kind <= KVP_PLANE_TRELLIS; kind++) {
            kvt_plane_case(shapes[i][0], shapes[i][1], kind, 0.05f);
            if (kvt_failed()) return;
        }
    for (int kind = 0; kind <= KVP_PLANE_TRELLIS; kind += KVP_PLANE_TRELLIS) {
        kvt_plane_case(100, 16, kind, 1e-4f); /* fine steps: large residuals and raw bits */
        for (float step = 0.002f; step < 1.0f; step *= 3.0f) /* mixed escapes, every renormalization pattern */
            kvt_plane_case(203, 20, kind, step);
        kvt_plane_case(100, 16, kind, 100.0f); /* coarse: everything rounds to zero */
        float x[64 * 48], top = 0;
        kvt_plane_data(x, 64, 48, kind, 64 * 1000 + 48 * 10 + (unsigned long long)kind);
        for (int i = 0; i < 64 * 48; i++) top = fmaxf(top, fabsf(x[i]));
        kvt_plane_case(64, 48, kind, top / (float)(KVP_PLANE_QMAX - 8)); /* integers near the range's ends */
    }
}

TEST(codec_plane_rejects_bad_input) {
    kvp_plane_work w = {0};
    float x[8] = {0, 1, 2, NAN, 4, 5, 6, 7}, y[12]; /* room for the 3 x 4 shape tried below */
    uint8_t out[4096];
    size_t size;
    CHECK(kvp_plane_encode(x, 2, 4, KVP_PLANE_LOSSY, 0.1f, &w, out, sizeof out, &size) == KVP_EINVAL);
    x[3] = 3.3333333f; /* not an F16 */
    CHECK(kvp_plane_encode(x, 2, 4, KVP_PLANE_EXACT16, 1, &w, out, sizeof out, &size) == KVP_EINVAL);
    CHECK(kvp_plane_encode(x, 2, 4, KVP_PLANE_LOSSY, 0.0f, &w, out, sizeof out, &size) == KVP_EINVAL);
    CHECK(kvp_plane_encode(x, 2, 4, KVP_PLANE_LOSSY, 0.1f, &w, out, 30, &size) == KVP_ERANGE); /* too small */
    CHECK_OK(kvp_plane_encode(x, 2, 4, KVP_PLANE_EXACT32, 1, &w, out, sizeof out, &size));
    for (size_t cut = 0; cut < size; cut++) /* every truncation fails cleanly */
        CHECKF(kvp_plane_decode(out, cut, 2, 4, y, &w, NULL) == KVP_EFORMAT, "truncated at %zu", cut);
    CHECK(kvp_plane_decode(out, size, 3, 4, y, &w, NULL) != KVP_OK); /* wrong shape */
    kvp_plane_work_free(&w);
}

TEST(codec_plane_survives_flipped_bits) {
    int n = 40, d = 12;
    size_t N = (size_t)n * d, cap = kvp_plane_bound(n, d), size = 0;
    float *x = malloc(N * 4), *y = malloc(N * 4);
    uint8_t *out = malloc(cap), *bad = malloc(cap);
    kvp_plane_work w = {0};
    for (int kind = 0; kind < 3; kind++) {
        kvt_plane_data(x, n, d, kind, 99);
        CHECK_OK(kvp_plane_encode(x, n, d, kind, 0.02f, &w, out, cap, &size));
        for (size_t bit = 0; bit < size * 8; bit += 3) { /* decodes or fails; never reads out of bounds */
            memcpy(bad, out, size);
            bad[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            int rc = kvp_plane_decode(bad, size, n, d, y, &w, NULL);
            CHECK(rc == KVP_OK || rc == KVP_EFORMAT);
        }
    }
    kvp_plane_work_free(&w);
    free(x), free(y), free(out), free(bad);
}

/* ---- keys before the rotary embedding ---- */

/* The table holds the exact angles (within float rounding) even far into a long context. */
TEST(codec_rotary_table_exact) {
    static const int hds[] = {2, 7, 8, 32, 64};
    for (size_t h = 0; h < KVP_ARRAY_LEN(hds); h++) {
        int hd = hds[h], np = hd / 2, n = 301, pos = 1000003;
        float *cs = malloc(sizeof(float) * (size_t)n * np), *sn = malloc(sizeof(float) * (size_t)n * np);
        kvp_rotary_table(pos, n, hd, 10000.0, cs, sn);
        double worst = 0;
        for (int t = 0; t < n; t++)
            for (int k = 0; k < np; k++) {
                double a = (double)(pos + t) * pow(10000.0, -2.0 * k / hd);
                worst = fmax(worst, fabs(cs[t * np + k] - cos(a)) + fabs(sn[t * np + k] - sin(a)));
            }
        CHECKF(worst < 1e-6, "head dim %d: angle error %g", hd, worst);
        free(cs), free(sn);
    }
}

/* Rotating forward matches the engine's rotary embedding (both pair layouts), and back then
 * forward returns the input within float rounding; an odd last channel is left alone. */
TEST(codec_rotary_matches_rope) {
    enum { N = 37, H = 3 };
    static const int hds[] = {2, 5, 8, 16};
    for (size_t h = 0; h < KVP_ARRAY_LEN(hds); h++)
        for (int style = KVP_ROPE_NORM; style <= KVP_ROPE_NEOX; style++) {
            int hd = hds[h], np = hd / 2, d = H * hd, pos = 4093;
            float *x = malloc(sizeof(float) * N * d), *y = malloc(sizeof(float) * N * d), *z = malloc(sizeof(float) * N * d);
            float *cs = malloc(sizeof(float) * N * np), *sn = malloc(sizeof(float) * N * np);
            unsigned long long s = 99 + hd;
            for (int i = 0; i < N * d; i++) x[i] = (float)((s = s * 6364136223846793005ull + 1442695040888963407ull) >> 40) / 1e6f - 8.0f;
            memcpy(y, x, sizeof(float) * N * d);
            memcpy(z, x, sizeof(float) * N * d);
            kvp_rotary_table(pos, N, hd, 10000.0, cs, sn);
            kvp_rotary_apply(y, N, H, hd, style, cs, sn, 1);
            double e_rope = 0, e_trip = 0;
            for (int t = 0; t < N; t++) kvp_rope(z + (size_t)t * d, H, hd, pos + t, 10000.0f, style, NULL);
            for (int i = 0; i < N * d; i++) e_rope = fmax(e_rope, fabs(y[i] - z[i]));
            kvp_rotary_apply(y, N, H, hd, style, cs, sn, -1);
            for (int i = 0; i < N * d; i++) e_trip = fmax(e_trip, fabs(y[i] - x[i]));
            CHECKF(e_rope < 2e-3 && e_trip < 1e-5, "head dim %d style %d: vs rope %g, round trip %g", hd, style, e_rope, e_trip);
            if (hd % 2)
                for (int t = 0; t < N; t++) CHECK(y[(size_t)t * d + hd - 1] == x[(size_t)t * d + hd - 1]);
            free(x), free(y), free(z), free(cs), free(sn);
        }
}

/* A chunk with rotated keys decodes within sqrt(2) times its trellis planes' bound (two
 * steps); lossless chunks never rotate; the chunk's rotary fields are checked. */
TEST(codec_chunk_rotary) {
    kvp_chunk_shape s = {2, 2, 8, 10000.0f, KVP_ROPE_NEOX, 0};
    int n = 77, d = 16, pos = 513;
    size_t N = (size_t)n * d, cap = kvp_chunk_bound(&s, n), size = 0;
    float *kv = malloc(sizeof(float) * 4 * N), *out = malloc(sizeof(float) * 4 * N);
    uint8_t *buf = malloc(cap);
    kvt_plane_data(kv, 4 * n, d, KVP_PLANE_LOSSY, 5);
    kvp_codec *cd = NULL;
    CHECK_OK(kvp_codec_new(NULL, &cd));
    CHECK_OK(kvp_chunk_encode(cd, &s, pos, n, KVP_LEVEL_MEDIUM, kv, NULL, buf, cap, &size));
    CHECK(buf[5] == (KVP_CHUNK_ROTARY | KVP_CHUNK_NEOX) && kvp_rd32(buf + 20) == 0x461c4000);
    CHECK_OK(kvp_chunk_decode(cd, &s, pos, n, KVP_LEVEL_MEDIUM, buf, size, out));
    for (int p = 0; p < 4; p++) {
        double ss = 0;
        for (size_t i = 0; i < N; i++) ss += (double)kv[p * N + i] * kv[p * N + i];
        float half = kvp_codec_step(KVP_LEVEL_MEDIUM, p % 2, sqrt(ss / (double)N), 1.0, kvp_codec_depth(p / 2, 2)) * 2 *
                     (p % 2 ? 1.0f : 1.4143f);
        for (size_t i = 0; i < N; i++)
            CHECKF(fabsf(out[p * N + i] - kv[p * N + i]) <= half * 1.001f + 1e-5f, "plane %d value %zu", p, i);
    }
    uint8_t save = buf[5];
    buf[5] = KVP_CHUNK_NEOX; /* split-halves flag without the rotary flag */
    CHECK(kvp_chunk_decode(cd, &s, pos, n, -1, buf, size, out) == KVP_EFORMAT);
    buf[5] = save | 4; /* unknown flag */
    CHECK(kvp_chunk_decode(cd, &s, pos, n, -1, buf, size, out) == KVP_EFORMAT);
    buf[5] = save;
    kvp_wr32(buf + 20, 0x7f800000); /* infinite base */
    CHECK(kvp_chunk_decode(cd, &s, pos, n, -1, buf, size, out) == KVP_EFORMAT);
    for (int i = 0; i < 4 * (int)N; i++) kv[i] = kvp_f16_to_f32(kvp_f32_to_f16(kv[i]));
    CHECK_OK(kvp_chunk_encode(cd, &s, pos, n, KVP_LEVEL_LOSSLESS, kv, NULL, buf, cap, &size));
    CHECK(buf[5] == 0 && kvp_rd32(buf + 20) == 0);
    CHECK_OK(kvp_chunk_decode(cd, &s, pos, n, KVP_LEVEL_LOSSLESS, buf, size, out));
    CHECK(kvt_bits_equal(kv, out, 4 * N));
    kvp_codec_free(cd);
    free(kv), free(out), free(buf);
}

/* The fast bit reader reads the same bits as its reference twin, over buffers of every small
 * size, widths 0..32, reads past the end included; both end in the same "done" condition. */
TEST(codec_bitreader_fast_matches_ref) {
    unsigned long long seed = 77;
    uint8_t buf[48];
    for (int trial = 0; trial < 2000; trial++) {
        size_t size = (size_t)(trial % 41);
        for (size_t i = 0; i < size; i++) buf[i] = (uint8_t)kvt_rand_u64(&seed);
        kvp_bitr a, b;
        kvp_bitr_init(&a, buf, size);
        kvp_bitr_init(&b, buf, size);
        size_t budget = 8 * size + (trial % 3 == 0 ? 40 : 0); /* every third trial reads past the end */
        for (size_t used = 0; used < budget;) {
            int nb = (int)(kvt_rand_u64(&seed) % 33);
            if (trial % 3 && used + (size_t)nb > budget) nb = (int)(budget - used);
            uint32_t va = kvp_bitr_get(&a, nb), vb = kvp_bitr_get_fast(&b, nb);
            CHECKF(va == vb, "trial %d: %d bits at %zu: %08x vs %08x", trial, nb, used, va, vb);
            used += (size_t)nb;
        }
        CHECK(a.overrun == b.overrun);
        int done_a = a.p == a.end && a.n < 8 && a.acc == 0, done_b = b.p == b.end && b.n < 8 && b.acc == 0;
        CHECKF(done_a == done_b, "trial %d: done %d vs %d", trial, done_a, done_b);
        if (kvt_failed()) return;
    }
}

/* Symbolization with 32 and with 64 direct symbols: every value maps to a symbol below the
 * count, and the symbol's base with its raw bits gives the value back. */
TEST(codec_symbols_roundtrip) {
    static const uint32_t some[] = {0, 1, 31, 32, 33, 63, 64, 65, 127, 128, 1000, 65535, 65536, 0x7fffffffu, 0x80000000u,
                                    0xfffffffeu, 0xffffffffu};
    unsigned long long s = 5;
    for (int dbits = 5; dbits <= 6; dbits++)
        for (int i = 0; i < 20000; i++) {
            uint32_t u = i < (int)KVP_ARRAY_LEN(some) ? some[i] : (uint32_t)kvt_rand_u64(&s) >> (kvt_rand_u64(&s) % 32);
            uint32_t extra;
            int nb, sym = kvp_sym_encode(u, dbits, &extra, &nb);
            CHECKF(sym >= 0 && sym < kvp_sym_count(dbits), "dbits %d: u %u has symbol %d", dbits, u, sym);
            uint32_t back = (uint32_t)sym;
            if (sym >= 1 << dbits) {
                int nb2;
                back = kvp_sym_base(sym, dbits, &nb2) | extra;
                CHECK(nb2 == nb);
            }
            CHECKF(back == u, "dbits %d: u %u comes back as %u", dbits, u, back);
        }
    CHECK(kvp_sym_count(5) == KVP_SYM_COUNT && kvp_sym_count(6) == KVP_SYM_MAX);
}
