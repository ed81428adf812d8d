/*
 * test_kvquant.c: the compressed KV caches and their kernels.
 *
 *   - packing of 2/3/4/8-bit codes into units and tiles round-trips;
 *   - the packed-tile kernels (scores, values, query and weight quantization, softmax) of
 *     every instruction set this CPU runs equal their `_ref` twins over odd sizes, odd
 *     channel counts and misaligned strides, without writing outside their outputs;
 *   - two-level group parameters cover their groups and bound the error by s / 2;
 *   - the KIVI cache: values read back within the error bound of each format, attention on
 *     the packed blocks equal to attention over the dequantized values, exact byte
 *     accounting, truncation, and clear errors for bad specs.
 */
#include <stdint.h>

#include "common/common.h"
#include "kernels/kvq.h"
#include "kv/kv.h"
#include "kv/quant.h"
#include "test.h"

static const char *const kq_isa_names[] = {"scalar", "avx2", "avx512"};
static const int kq_bits[] = {2, 3, 4, 8};

/* Fills t with the kernel table of every instruction set this CPU runs; returns how many. */
static int kq_tables(kvp_kvq_table t[3]) {
    int n = 0;
    for (int i = 0; i < 3; i++)
        if (kvp_kvq_table_build(kq_isa_names[i], &t[n]) == 0) n++;
    return n;
}

static void kq_bytes(uint8_t *x, size_t n, unsigned long long *s) {
    for (size_t i = 0; i < n; i++) x[i] = (uint8_t)(kvt_rand_u64(s) >> 24);
}

static void kq_floats(float *x, size_t n, float scale, unsigned long long *s) {
    for (size_t i = 0; i < n; i++) x[i] = scale * kvt_randf(s);
}

/* ---------------------------------------------------------------------------------------
 * Packing.
 * ------------------------------------------------------------------------------------- */

TEST(kvq_pack_roundtrip) {
    unsigned long long s = 11;
    static const int units[] = {1, 3, 7, 33};
    uint8_t codes[33 * 32], packed[33 * 32], back[33 * 32];
    for (size_t b = 0; b < KVP_ARRAY_LEN(kq_bits); b++)
        for (size_t u = 0; u < KVP_ARRAY_LEN(units); u++) {
            int bits = kq_bits[b], n = units[u] * 32;
            for (int i = 0; i < n; i++) codes[i] = (uint8_t)(kvt_rand_u64(&s) % (1u << bits));
            memset(packed, 0xAA, sizeof packed);
            kvp_kvq_pack(codes, units[u], bits, packed);
            kvp_kvq_unpack(packed, units[u], bits, back);
            CHECKF(!memcmp(codes, back, (size_t)n), "bits %d, %d units", bits, units[u]);
            CHECK(kvp_kvq_unit_bytes(bits) == (size_t)(4 * bits));
            CHECK(units[u] * kvp_kvq_unit_bytes(bits) >= sizeof packed || packed[units[u] * kvp_kvq_unit_bytes(bits)] == 0xAA);
        }
}

TEST(kvq_tile_pack_roundtrip) {
    unsigned long long s = 12;
    static const int chans[] = {1, 7, 8, 33, 64};
    static const int toks[] = {16, 32, 48};
    uint8_t codes[64 * 48], back[64 * 48], tile[64 * 48 * 2];
    for (size_t b = 0; b < KVP_ARRAY_LEN(kq_bits); b++)
        for (size_t c = 0; c < KVP_ARRAY_LEN(chans); c++)
            for (size_t t = 0; t < KVP_ARRAY_LEN(toks); t++) {
                int bits = kq_bits[b], n = chans[c] * toks[t];
                for (int i = 0; i < n; i++) codes[i] = (uint8_t)(kvt_rand_u64(&s) % (1u << bits));
                CHECK(kvp_qt_ktile_bytes(toks[t], chans[c], bits) <= sizeof tile);
                kvp_qt_pack_k(codes, chans[c], toks[t], bits, tile);
                kvp_qt_unpack_k(tile, chans[c], toks[t], bits, back);
                CHECKF(!memcmp(codes, back, (size_t)n), "key tile: bits %d, %d channels, %d tokens", bits, chans[c], toks[t]);
                kvp_qt_pack_v(codes, toks[t], chans[c], bits, tile);
                kvp_qt_unpack_v(tile, toks[t], chans[c], bits, back);
                CHECKF(!memcmp(codes, back, (size_t)n), "value tile: bits %d, %d channels, %d tokens", bits, chans[c], toks[t]);
            }
    /* sizes: 64 channels x 32 tokens at 4 bits is 1 KiB either way; odd channels pad */
    CHECK(kvp_qt_ktile_bytes(32, 64, 4) == 1024 && kvp_qt_vtile_bytes(32, 64, 4) == 1024);
    CHECK(kvp_qt_ktile_bytes(32, 33, 2) == 9 * 4 * 8 && kvp_qt_vtile_bytes(32, 33, 3) == 8 * 5 * 12);
}

/* ---------------------------------------------------------------------------------------
 * Kernels against their `_ref` twins.
 * ------------------------------------------------------------------------------------- */

#define KQ_SENT 12345.0f

/* One scores case: every table against scores_ref on random tiles and queries. */
static void kq_scores_case(const kvp_kvq_table *tab, int nt, int bits, int n_tok, int n_rows, int nq, int variant,
                           unsigned long long *s) {
    size_t tile_bytes = (size_t)n_rows * (size_t)(n_tok / 8) * kvp_kvq_unit_bytes(bits);
    int ld = 4 * n_rows + 3, lds = n_tok + 5;
    uint8_t *tile = malloc(tile_bytes + 1), *q = malloc((size_t)nq * ld);
    float *a = malloc(sizeof(float) * n_tok), *m = malloc(sizeof(float) * n_tok), ab[2][32];
    float *want = malloc(sizeof(float) * (size_t)nq * lds), *got = malloc(sizeof(float) * (size_t)nq * lds);
    kq_bytes(tile + 1, tile_bytes, s); /* misaligned on purpose */
    for (int i = 0; i < nq * ld; i++) q[i] = (uint8_t)(int8_t)((int)(kvt_rand_u64(s) % 255) - 127);
    kq_floats(a, (size_t)n_tok, 1, s);
    kq_floats(m, (size_t)n_tok, 2, s);
    kq_floats(ab[0], 32, 0.01f, s);
    kq_floats(ab[1], 32, 3, s);
    kvp_kvq_ktile kt = {tile + 1, bits, n_tok, n_rows, variant & 1 ? a : NULL, variant & 2 ? m : NULL};
    kvp_kvq_rows qr = {q, ld, nq, ab[0], ab[1]};
    for (int i = 0; i < nq * lds; i++) want[i] = (i % lds) < n_tok ? kvt_randf(s) : KQ_SENT;
    memcpy(got, want, sizeof(float) * (size_t)nq * lds);
    kvp_kvq_scores_ref(&kt, &qr, want, lds, variant & 4);
    for (int k = 0; k < nt && !kvt_failed(); k++) {
        float *g = malloc(sizeof(float) * (size_t)nq * lds);
        memcpy(g, got, sizeof(float) * (size_t)nq * lds);
        tab[k].scores(&kt, &qr, g, lds, variant & 4);
        for (int i = 0; i < nq * lds; i++)
            if (!(fabsf(g[i] - want[i]) <= 1e-5f * (fabsf(want[i]) + 1))) {
                kvt_fail(__FILE__, __LINE__, "%s scores: bits %d, %d tokens, %d rows, %d queries, variant %d: [%d] %g vs %g",
                         tab[k].isa, bits, n_tok, n_rows, nq, variant, i, g[i], want[i]);
                break;
            }
        free(g);
    }
    free(tile), free(q), free(a), free(m), free(want), free(got);
}

TEST(kvq_scores_match_ref) {
    kvp_kvq_table tab[3];
    int nt = kq_tables(tab);
    unsigned long long s = 13;
    static const int toks[] = {16, 48, 96}, rows[] = {1, 3, 7, 17}, nqs[] = {1, 3, 7, 13};
    for (size_t b = 0; b < KVP_ARRAY_LEN(kq_bits); b++)
        for (size_t t = 0; t < KVP_ARRAY_LEN(toks); t++)
            for (size_t r = 0; r < KVP_ARRAY_LEN(rows); r++)
                for (size_t q = 0; q < KVP_ARRAY_LEN(nqs) && !kvt_failed(); q++)
                    kq_scores_case(tab, nt, kq_bits[b], toks[t], rows[r], nqs[q], (int)(b + t + r + q) % 8, &s);
}

/* One values case: a slice of n_units units starting one unit into rows `stride` apart. */
static void kq_values_case(const kvp_kvq_table *tab, int nt, int bits, int n_units, int n_ch, int n_rows, int nq,
                           unsigned long long *s) {
    size_t ub = kvp_kvq_unit_bytes(bits), stride = (size_t)(n_units + 2) * ub;
    int ld = 4 * n_rows + 1, ldy = n_ch + 3;
    uint8_t *tile = malloc(stride * n_rows), *w = malloc((size_t)nq * ld);
    float al[32], be[32], *want = malloc(sizeof(float) * (size_t)nq * ldy), *got = malloc(sizeof(float) * (size_t)nq * ldy);
    kq_bytes(tile, stride * n_rows, s);
    kq_bytes(w, (size_t)nq * ld, s);
    kq_floats(al, 32, 0.01f, s);
    kq_floats(be, 32, 2, s);
    kvp_kvq_vtile vt = {tile + ub, bits, n_rows, n_units, stride};
    kvp_kvq_rows wr = {w, ld, nq, al, be};
    for (int i = 0; i < nq * ldy; i++) want[i] = (i % ldy) < n_ch ? kvt_randf(s) : KQ_SENT;
    memcpy(got, want, sizeof(float) * (size_t)nq * ldy);
    kvp_kvq_values_ref(&vt, &wr, n_ch, want, ldy);
    for (int k = 0; k < nt && !kvt_failed(); k++) {
        float *g = malloc(sizeof(float) * (size_t)nq * ldy);
        memcpy(g, got, sizeof(float) * (size_t)nq * ldy);
        tab[k].values(&vt, &wr, n_ch, g, ldy);
        for (int i = 0; i < nq * ldy; i++)
            if (!(fabsf(g[i] - want[i]) <= 1e-5f * (fabsf(want[i]) + 1))) {
                kvt_fail(__FILE__, __LINE__, "%s values: bits %d, %d units, %d channels, %d rows, %d queries: [%d] %g vs %g",
                         tab[k].isa, bits, n_units, n_ch, n_rows, nq, i, g[i], want[i]);
                break;
            }
        free(g);
    }
    free(tile), free(w), free(want), free(got);
}

TEST(kvq_values_match_ref) {
    kvp_kvq_table tab[3];
    int nt = kq_tables(tab);
    unsigned long long s = 14;
    static const int units[] = {1, 2, 3, 5, 8}, rows[] = {1, 3, 8}, nqs[] = {1, 3, 7, 13};
    for (size_t b = 0; b < KVP_ARRAY_LEN(kq_bits); b++)
        for (size_t u = 0; u < KVP_ARRAY_LEN(units); u++)
            for (int trim = 0; trim < 2; trim++)
                for (size_t r = 0; r < KVP_ARRAY_LEN(rows); r++)
                    for (size_t q = 0; q < KVP_ARRAY_LEN(nqs) && !kvt_failed(); q++)
                        kq_values_case(tab, nt, kq_bits[b], units[u], 8 * units[u] - 7 * trim, rows[r], nqs[q], &s);
}

/* A random parameter set of n groups: two-level codes, float arrays, or nothing. */
static kvp_kvq_par kq_par(int kind, int n, uint8_t *sc, uint8_t *mc, uint16_t *sup, float *sf, float *mf,
                          unsigned long long *s) {
    kq_bytes(sc, (size_t)n, s);
    kq_bytes(mc, (size_t)n, s);
    sup[0] = kvp_f32_to_f16(0.013f);
    sup[1] = kvp_f32_to_f16(-1.7f);
    sup[2] = kvp_f32_to_f16(0.011f);
    for (int i = 0; i < n; i++) sf[i] = 0.5f + kvt_randf(s) * 0.4f;
    kq_floats(mf, (size_t)n, 1, s);
    float add = kind >= 3 ? 128.0f : 0.0f;
    if (kind % 3 == 0) return (kvp_kvq_par){sc, mc, sup, NULL, NULL, add};
    if (kind % 3 == 1) return (kvp_kvq_par){NULL, NULL, NULL, sf, mf, add};
    return (kvp_kvq_par){NULL, NULL, NULL, NULL, NULL, add};
}

/* One case of query (pass 0) and weight (pass 1) quantization, with the residual plane
 * when `planes` is 2: bytes and alpha identical to the `_ref` twin, beta close. */
static void kq_prep_case(const kvp_kvq_table *tab, int nt, int n, int nq, int kind, int planes, unsigned long long *s) {
    int ld = n + 2, ldi = (n + 3) / 4 * 4 + 1;
    size_t nb = (size_t)nq * ldi;
    float *x = malloc(sizeof(float) * (size_t)nq * ld), *sf = malloc(sizeof(float) * n), *mf = malloc(sizeof(float) * n);
    uint8_t *sc = malloc((size_t)n), *mc = malloc((size_t)n), *want = malloc(2 * nb), *got = malloc(2 * nb);
    uint16_t sup[3];
    float wa[4], wb[4], ga[4], gb[4];
    kvp_kvq_par p = kq_par(kind, n, sc, mc, sup, sf, mf, s);
    kvp_kvq_bytes wo = {want, planes == 2 ? want + nb : NULL, ldi, wa, wb}, go = {got, planes == 2 ? got + nb : NULL, ldi, ga, gb};
    for (int pass = 0; pass < 2 && !kvt_failed(); pass++) {
        kq_floats(x, (size_t)nq * ld, 2, s);
        for (int i = 0; pass == 1 && i < nq * ld; i++) x[i] = fabsf(x[i]); /* weights are >= 0 */
        memset(want, 0x55, 2 * nb);
        if (pass == 0) kvp_kvq_query_ref(x, ld, nq, &p, n, 0.125f, &wo);
        else kvp_kvq_weights_ref(x, ld, nq, &p, n, &wo);
        for (int k = 0; k < nt && !kvt_failed(); k++) {
            memset(got, 0x55, 2 * nb);
            if (pass == 0) tab[k].query(x, ld, nq, &p, n, 0.125f, &go);
            else tab[k].weights(x, ld, nq, &p, n, &go);
            CHECKF(!memcmp(want, got, 2 * nb), "%s %s bytes: n %d, %d rows, parameters %d, %d planes", tab[k].isa,
                   pass ? "weights" : "query", n, nq, kind, planes);
            for (int j = 0; j < nq; j++) {
                CHECKF(ga[j] == wa[j], "%s alpha: n %d, %g vs %g", tab[k].isa, n, ga[j], wa[j]);
                CHECKF(fabsf(gb[j] - wb[j]) <= 1e-5f * n * (fabsf(wb[j]) + 300), "%s beta: n %d, %g vs %g", tab[k].isa, n,
                       gb[j], wb[j]);
            }
        }
    }
    /* the two planes reproduce u = x s to 1/65000 of the row's largest element */
    for (int j = 0; planes == 2 && j < nq; j++) {
        double umax = 0, err = 0;
        for (int t = 0; t < n; t++) {
            double u = (double)x[(size_t)j * ld + t] * (p.sc ? kvp_f16_to_f32(sup[0]) * sc[t] : p.s ? p.s[t] : 1.0f);
            double r = wa[j] * (want[(size_t)j * ldi + t] + want[nb + (size_t)j * ldi + t] / 255.0);
            umax = fmax(umax, fabs(u));
            err = fmax(err, fabs(u - r));
        }
        CHECKF(err <= umax / 60000 + 1e-30, "weights: residual plane leaves %g of %g", err, umax);
    }
    free(x), free(sf), free(mf), free(sc), free(mc), free(want), free(got);
}

TEST(kvq_query_weights_match_ref) {
    kvp_kvq_table tab[3];
    int nt = kq_tables(tab);
    unsigned long long s = 15;
    static const int ns[] = {1, 3, 7, 33, 1023}, nqs[] = {1, 3};
    for (size_t i = 0; i < KVP_ARRAY_LEN(ns); i++)
        for (size_t q = 0; q < KVP_ARRAY_LEN(nqs); q++)
            for (int kind = 0; kind < 6 && !kvt_failed(); kind++)
                for (int planes = 1; planes <= 2; planes++) kq_prep_case(tab, nt, ns[i], nqs[q], kind, planes, &s);
}

TEST(kvq_softmax_match_ref) {
    kvp_kvq_table tab[3];
    int nt = kq_tables(tab);
    unsigned long long s = 16;
    static const int ns[] = {1, 3, 7, 33, 1023};
    float want[1024], got[1024];
    for (size_t i = 0; i < KVP_ARRAY_LEN(ns); i++)
        for (int k = 0; k < nt; k++) {
            int n = ns[i];
            for (int t = 0; t < n; t++) want[t] = 20 * kvt_randf(&s) - 5;
            if (n > 3) want[2] = -INFINITY; /* a masked position */
            want[n] = KQ_SENT;
            memcpy(got, want, sizeof(float) * (size_t)(n + 1));
            kvp_kvq_softmax_ref(want, n);
            tab[k].softmax(got, n);
            double sum = 0;
            for (int t = 0; t < n; t++) {
                CHECKF(fabsf(got[t] - want[t]) <= 2e-6f * want[t] + 1e-30f, "%s softmax n %d [%d]: %g vs %g", tab[k].isa,
                       n, t, got[t], want[t]);
                sum += got[t];
            }
            CHECK(fabs(sum - 1) < 1e-5 && got[n] == KQ_SENT && (n <= 3 || got[2] == 0));
        }
    for (int k = 0; k < nt; k++) {
        float all_masked[5] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
        tab[k].softmax(all_masked, 5);
        CHECK(all_masked[0] == 0 && all_masked[4] == 0);
    }
}

/* ---------------------------------------------------------------------------------------
 * Two-level group parameters.
 * ------------------------------------------------------------------------------------- */

TEST(kvq_group_params_cover_and_bound) {
    unsigned long long s = 17;
    static const int ns[] = {1, 7, 64, 256};
    float lo[256], hi[256], sv[256], mv[256];
    uint8_t sc[256], mc[256];
    for (size_t b = 0; b < KVP_ARRAY_LEN(kq_bits); b++)
        for (size_t i = 0; i < KVP_ARRAY_LEN(ns); i++)
            for (int shape = 0; shape < 3; shape++) {
                int n = ns[i], qmax = (1 << kq_bits[b]) - 1;
                float big = shape == 2 ? 1000.0f : 1.0f, tot_lo = 1e30f, tot_hi = -1e30f;
                for (int g = 0; g < n; g++) { /* shape 1: some empty ranges; 2: an outlier group */
                    lo[g] = big * (g == 0 ? 1 : 0.01f) * kvt_randf(&s) - (shape == 1 ? 0 : 0.5f);
                    hi[g] = shape == 1 && g % 3 == 0 ? lo[g] : lo[g] + fabsf(kvt_randf(&s)) * (g == 0 ? big : 1);
                    tot_lo = fminf(tot_lo, lo[g]);
                    tot_hi = fmaxf(tot_hi, hi[g]);
                }
                kvp_qsuper sp;
                kvp_qp_encode(lo, hi, n, qmax, sc, mc, &sp);
                kvp_qp_decode(sc, mc, &sp, n, sv, mv);
                for (int g = 0; g < n; g++) {
                    CHECKF(mv[g] <= lo[g] && mv[g] + sv[g] * qmax >= hi[g], "group %d of %d, %d bits: [%g, %g] vs m %g s %g",
                           g, n, kq_bits[b], lo[g], hi[g], mv[g], sv[g]);
                    /* s is the range over qmax, widened by the 8-bit rounding of m and s and by
                     * the F16 rounding of the super minimum */
                    float slack = 2.02f * (tot_hi - tot_lo) / 255.0f + 1e-3f * fmaxf(fabsf(tot_lo), fabsf(tot_hi));
                    CHECKF(sv[g] * qmax <= (hi[g] - lo[g]) + slack + 1e-6f, "group %d: s %g too large for [%g, %g]", g,
                           sv[g], lo[g], hi[g]);
                    for (int k = 0; k < 20; k++) { /* values of the group round-trip within s / 2 */
                        float x = lo[g] + (hi[g] - lo[g]) * (0.5f + 0.5f * kvt_randf(&s));
                        float y = mv[g] + sv[g] * kvp_qp_code(x, sv[g], mv[g], qmax);
                        CHECKF(fabsf(x - y) <= 0.5f * sv[g] * 1.0001f + 1e-6f * fabsf(x), "x %g -> %g, s %g", x, y, sv[g]);
                    }
                }
            }
}

/* ---------------------------------------------------------------------------------------
 * The KIVI cache.
 * ------------------------------------------------------------------------------------- */

typedef struct {
    kvp_kv *kv;
    kvp_kv_shape sh;
    int kvd, qd;
    float *k, *v, *q, *out;
} kq_cache;

static int kq_open(kq_cache *c, const char *spec, int layers, int heads, int kv_heads, int hd, int n_ctx) {
    memset(c, 0, sizeof *c);
    c->sh = (kvp_kv_shape){layers, heads, kv_heads, hd, n_ctx};
    c->kvd = kv_heads * hd;
    c->qd = heads * hd;
    c->k = malloc(sizeof(float) * (size_t)n_ctx * c->kvd);
    c->v = malloc(sizeof(float) * (size_t)n_ctx * c->kvd);
    c->q = malloc(sizeof(float) * (size_t)n_ctx * c->qd);
    c->out = malloc(sizeof(float) * (size_t)n_ctx * c->qd);
    return kvp_kv_new(spec, &c->sh, NULL, &c->kv);
}

static void kq_close(kq_cache *c) {
    kvp_kv_free(c->kv);
    free(c->k), free(c->v), free(c->q), free(c->out);
}

/* Keys with an outlier channel (channel 1 ten times larger), values in [-1, 1]. */
static void kq_fill_kv(kq_cache *c, int n, unsigned long long *s) {
    for (int i = 0; i < n * c->kvd; i++) {
        c->k[i] = kvt_randf(s) * (i % c->sh.head_dim == 1 % c->sh.head_dim ? 10.0f : 1.0f) + 0.3f;
        c->v[i] = kvt_randf(s);
    }
    kq_floats(c->q, (size_t)n * c->qd, 1, s);
}

/* One step of n tokens through every layer; with check, compares layer l's attention with
 * attention over what the cache reads back, before end() ages anything. */
static void kq_step(kq_cache *c, int n, unsigned long long *s, double *worst, double *vmax) {
    int pos = c->kv->n_pos, hd = c->sh.head_dim, group = c->sh.n_heads / c->sh.n_kv_heads;
    CHECK_OK(c->kv->vt->begin(c->kv, pos, n, NULL));
    float *rk = malloc(sizeof(float) * (size_t)(pos + n) * c->kvd), *rv = malloc(sizeof(float) * (size_t)(pos + n) * c->kvd);
    double *p = malloc(sizeof(double) * (size_t)(pos + n));
    for (int l = 0; l < c->sh.n_layers && !kvt_failed(); l++) {
        kq_fill_kv(c, n, s);
        CHECK_OK(c->kv->vt->append(c->kv, l, pos, n, c->k, c->v));
        CHECK_OK(c->kv->vt->attend(c->kv, l, pos, n, c->q, c->out));
        CHECK_OK(c->kv->vt->read(c->kv, l, 0, pos + n, rk, rv));
        for (int i = 0; i < n; i++)
            for (int qh = 0; qh < c->sh.n_heads; qh++) {
                const float *qq = c->q + (size_t)i * c->qd + (size_t)qh * hd;
                int h = qh / group, vis = pos + i + 1;
                double mx = -1e300, sum = 0;
                for (int t = 0; t < vis; t++) {
                    double d = 0;
                    for (int ch = 0; ch < hd; ch++) d += (double)qq[ch] * rk[(size_t)t * c->kvd + (size_t)h * hd + ch];
                    p[t] = d / sqrt((double)hd);
                    mx = fmax(mx, p[t]);
                }
                for (int t = 0; t < vis; t++) sum += (p[t] = exp(p[t] - mx));
                for (int ch = 0; ch < hd; ch++) {
                    double y = 0;
                    for (int t = 0; t < vis; t++) y += p[t] / sum * rv[(size_t)t * c->kvd + (size_t)h * hd + ch];
                    *worst = fmax(*worst, fabs(y - c->out[(size_t)i * c->qd + (size_t)qh * hd + ch]));
                    *vmax = fmax(*vmax, fabs(y));
                }
            }
    }
    free(rk), free(rv), free(p);
    CHECK_OK(c->kv->vt->end(c->kv));
}

/* Feeds steps of the given sizes; returns the largest attention error of any step. */
static double kq_run(kq_cache *c, const int *steps, int n_steps, unsigned long long *s) {
    double worst = 0, vmax = 0;
    for (int i = 0; i < n_steps && !kvt_failed(); i++) kq_step(c, steps[i], s, &worst, &vmax);
    return worst;
}

TEST(kivi_attend_matches_dequantized) {
    static const char *const specs[] = {"k2v2:r16:g16:a16", "k3v4:r0:g32:a16", "k4v4:r8:g16:a16", "k8v8:r0:g16",
                                        "k8v2:r16:g32:rot", "k4v3:r0:g16:bal:a16", "k2v8:r0:g48", "k4v4:r0:g32:a8",
                                        "k8v8:r4:g16:a8", "k2v3:r0:g16"}; /* the last: a8 by default */
    static const int hds[] = {8, 7, 33, 64};
    static const int steps[] = {37, 1, 1, 20, 1, 5, 1, 30, 1, 3};
    unsigned long long s = 18;
    for (size_t i = 0; i < KVP_ARRAY_LEN(specs); i++)
        for (size_t h = 0; h < KVP_ARRAY_LEN(hds) && !kvt_failed(); h++) {
            kq_cache c;
            int kvh = hds[h] == 8 ? 4 : 2;
            CHECK_OK(kq_open(&c, specs[i], 2, 3 * kvh, kvh, hds[h], 128));
            double worst = kq_run(&c, steps, (int)KVP_ARRAY_LEN(steps), &s);
            /* 16-bit queries and attention weights (two byte planes, kvq.h): float tolerance;
             * one plane (:a8) rounds them to 8 bits: about 1% of the largest value */
            int kb = 0, vb = 0; /* one activation plane: asked for, or the default at <= 4 bits */
            sscanf(specs[i], "k%dv%d", &kb, &vb);
            const int a8 = strstr(specs[i], "a8") || (!strstr(specs[i], "a16") && kb <= 4 && vb <= 4);
            CHECKF(worst <= (a8 ? 0.02 : 2e-4), "%s, head dim %d: attention differs from the dequantized values by %g", specs[i],
                   hds[h], worst);
            kq_close(&c);
        }
}

TEST(kivi_window_is_exact) {
    /* with nothing quantized yet, attention runs on the F16 window only: float tolerance */
    static const int steps[] = {20, 1, 1, 7};
    unsigned long long s = 19;
    kq_cache c;
    CHECK_OK(kq_open(&c, "k2v2:r64:g32", 2, 4, 2, 33, 64));
    double worst = kq_run(&c, steps, 4, &s);
    CHECKF(worst <= 2e-6, "window attention differs by %g", worst);
    kq_close(&c);
}

/* Blocks are quantized from the F16 window: half an F16 step of the largest magnitude. */
static double kq_f16err(float lo, float hi) { return fmax(fabs(lo), fabs(hi)) / 2048.0 + 1e-6; }

/* Largest |read - written| over the keys (val 0) or values (val 1) of positions [0, n),
 * relative to the bound of each format: half a step of the group's range. */
static double kq_read_error(kq_cache *c, const float *K, const float *V, int n, int bits_k, int bits_v, int G) {
    float *rk = malloc(sizeof(float) * (size_t)n * c->kvd), *rv = malloc(sizeof(float) * (size_t)n * c->kvd);
    double worst = 0;
    int hd = c->sh.head_dim;
    c->kv->vt->read(c->kv, 0, 0, n, rk, rv);
    for (int b = 0; b * G + G <= n; b++) {
        float klo = 1e30f, khi = -1e30f;
        for (int i = b * G * c->kvd; i < (b + 1) * G * c->kvd; i++) klo = fminf(klo, K[i]), khi = fmaxf(khi, K[i]);
        for (int ch = 0; ch < c->kvd; ch++) { /* keys: per channel over the block */
            float lo = 1e30f, hi = -1e30f;
            for (int t = b * G; t < b * G + G; t++) lo = fminf(lo, K[t * c->kvd + ch]), hi = fmaxf(hi, K[t * c->kvd + ch]);
            double bound = 0.5 * (hi - lo + 2.02 * (khi - klo) / 255) / ((1 << bits_k) - 1) + kq_f16err(lo, hi);
            for (int t = b * G; t < b * G + G; t++) worst = fmax(worst, fabs(rk[t * c->kvd + ch] - K[t * c->kvd + ch]) / bound);
        }
        for (int t = b * G; t < b * G + G; t++) /* values: per token over groups of 32 channels (hd 64) */
            for (int g = 0; g < c->kvd / 32; g++) {
                float lo = 1e30f, hi = -1e30f;
                for (int ch = 32 * g; ch < 32 * g + 32; ch++) lo = fminf(lo, V[t * c->kvd + ch]), hi = fmaxf(hi, V[t * c->kvd + ch]);
                double bound = 0.5 * (hi - lo + 2.02 * 2.0 / 255) / ((1 << bits_v) - 1) + kq_f16err(lo, hi);
                for (int ch = 32 * g; ch < 32 * g + 32; ch++)
                    worst = fmax(worst, fabs(rv[t * c->kvd + ch] - V[t * c->kvd + ch]) / bound);
            }
    }
    (void)hd;
    free(rk), free(rv);
    return worst;
}

TEST(kivi_read_within_error_bounds) {
    static const char *const specs[] = {"k2v2:r0:g32", "k3v3:r0:g32", "k4v4:r0:g32", "k8v8:r0:g32", "k2v8:r0:g16"};
    static const int kb[] = {2, 3, 4, 8, 2}, vb[] = {2, 3, 4, 8, 8}, gs[] = {32, 32, 32, 32, 16};
    unsigned long long s = 20;
    for (size_t i = 0; i < KVP_ARRAY_LEN(specs); i++) {
        kq_cache c;
        CHECK_OK(kq_open(&c, specs[i], 1, 2, 2, 64, 96));
        float *K = malloc(sizeof(float) * 96 * c.kvd), *V = malloc(sizeof(float) * 96 * c.kvd);
        CHECK_OK(c.kv->vt->begin(c.kv, 0, 96, NULL));
        kq_fill_kv(&c, 96, &s);
        memcpy(K, c.k, sizeof(float) * 96 * c.kvd);
        memcpy(V, c.v, sizeof(float) * 96 * c.kvd);
        CHECK_OK(c.kv->vt->append(c.kv, 0, 0, 96, c.k, c.v));
        CHECK_OK(c.kv->vt->end(c.kv));
        double e = kq_read_error(&c, K, V, 96, kb[i], vb[i], gs[i]);
        CHECKF(e <= 1.0, "%s: read-back error %.3f times the bound", specs[i], e);
        CHECKF(e >= 0.3, "%s: read-back error %.3f times the bound: is anything quantized?", specs[i], e);
        free(K), free(V);
        kq_close(&c);
    }
}

TEST(kivi_stats_count_every_byte) {
    unsigned long long s = 21;
    kq_cache c;
    static const int steps[] = {60, 1, 39};
    CHECK_OK(kq_open(&c, "k4v4:r16:g32", 2, 4, 2, 64, 128));
    kq_run(&c, steps, 3, &s);
    kvp_kv_stats st;
    c.kv->vt->stats(c.kv, &st);
    /* 100 tokens: window >= R + G = 48 ages 32 tokens at a time: 2 blocks, 36 in the window.
     * A block: per KV head a key tile (16 rows of 4 channels x 32 tokens at 4 bits = 1024 B),
     * key parameters (2 x 64 + 6 = 134 B), a value tile (1024 B); per value group of 32
     * channels (4 of them) 2 x 32 + 6 = 70 B: 2 x 2182 + 4 x 70 = 4644 B. The window: 36
     * tokens x 128 kv values x K, V x 2 bytes. Two layers. */
    uint64_t want = 2 * (2 * 4644 + 36 * 128 * 2 * 2);
    CHECKF(st.bytes_hot == want && st.bytes_cold == 0, "bytes %llu, want %llu", (unsigned long long)st.bytes_hot,
           (unsigned long long)want);
    CHECK(st.n_values == 100ull * 2 * 128 * 2);
    CHECK_NEAR(st.bits_per_value, 8.0 * want / (100.0 * 2 * 128 * 2), 1e-9);
    CHECK(!strcmp(st.spec, "k4v4:r16:g32"));
    kq_close(&c);
}

/* Reads back positions [0, n_read) of layer 1, then truncates the cache to each of `cuts`
 * (descending) and checks after each that n_pos follows, that reading one position past the cut
 * fails with KVP_ERANGE, and that every kept key and value reads back within 2e-3 relative (the
 * tokens of a cut block move back to the F16 window). Fails the running test on a mismatch. */
static void kq_check_truncate(kq_cache *c, int n_read, const int *cuts, size_t n_cuts) {
    float *k0 = malloc(sizeof(float) * n_read * c->kvd), *v0 = malloc(sizeof(float) * n_read * c->kvd);
    float *k1 = malloc(sizeof(float) * n_read * c->kvd), *v1 = malloc(sizeof(float) * n_read * c->kvd);
    CHECK(k0 && v0 && k1 && v1);
    CHECK_OK(c->kv->vt->read(c->kv, 1, 0, n_read, k0, v0));
    for (size_t i = 0; i < n_cuts; i++) {
        int n = cuts[i];
        CHECK_OK(c->kv->vt->truncate(c->kv, n));
        CHECK(c->kv->n_pos == n && c->kv->vt->read(c->kv, 1, 0, n + 1, k1, v1) == KVP_ERANGE);
        CHECK_OK(c->kv->vt->read(c->kv, 1, 0, n, k1, v1));
        for (int j = 0; j < n * c->kvd; j++)
            CHECKF(fabsf(k1[j] - k0[j]) <= 2e-3f * fabsf(k0[j]) + 1e-6f && fabsf(v1[j] - v0[j]) <= 2e-3f * fabsf(v0[j]) + 1e-6f,
                   "cut %d: value %d changed: %g %g -> %g %g", n, j, k0[j], v0[j], k1[j], v1[j]);
    }
    free(k0), free(v0), free(k1), free(v1);
}

TEST(kivi_truncate_keeps_what_remains) {
    unsigned long long s = 22;
    static const int steps[] = {50, 1, 49};
    kq_cache c;
    CHECK_OK(kq_open(&c, "k4v2:r8:g16:a16", 2, 4, 2, 32, 160));
    kq_run(&c, steps, 3, &s);
    static const int cuts[] = {95, 90, 41, 40, 3, 0};
    kq_check_truncate(&c, 100, cuts, KVP_ARRAY_LEN(cuts));
    if (kvt_failed()) return;
    static const int more[] = {30, 1, 40};
    double worst = kq_run(&c, more, 3, &s); /* the cache keeps working after truncation */
    CHECK(c.kv->n_pos == 71 && worst <= 2e-4);
    c.kv->vt->reset(c.kv);
    kvp_kv_stats st;
    c.kv->vt->stats(c.kv, &st);
    CHECK(c.kv->n_pos == 0 && st.bytes_hot == 0 && st.n_values == 0);
    kq_close(&c);
}

TEST(kivi_specs) {
    kvp_kv_shape sh = {1, 2, 2, 16, 64};
    kvp_kv *kv = NULL;
    static const char *const bad[] = {"k5v4", "k4", "k4v", "kxv4", "k4v4:", "k4v4:r-1", "k4v4:g20", "k4v4:g512",
                                      "k4v4:foo", "k4v4x", "k4v4:r128:"};
    for (size_t i = 0; i < KVP_ARRAY_LEN(bad); i++) {
        CHECKF(kvp_kv_new(bad[i], &sh, NULL, &kv) == KVP_EINVAL && kv == NULL, "spec '%s' accepted", bad[i]);
        CHECK(strstr(kvp_errmsg(), bad[i]) && strstr(kvp_errmsg(), "kXvY"));
    }
    static const char *const good[][2] = {{"k4v4", "k4v4:r128:g32"}, {"k2v2:g16:r0", "k2v2:r0:g16"},
                                          {"k8v4:rot", "k8v4:r128:g32:rot"}, {"k3v2:bal:r64", "k3v2:r64:g32:bal"},
                                          {"k4v4:none", "k4v4:r128:g32"}, {"k4v4:a16", "k4v4:r128:g32:a16"},
                                          {"k4v4:a8", "k4v4:r128:g32"}, {"k8v4:a8", "k8v4:r128:g32:a8"}};
    for (size_t i = 0; i < KVP_ARRAY_LEN(good); i++) {
        CHECK_OK(kvp_kv_new(good[i][0], &sh, NULL, &kv));
        CHECKF(!strcmp(kv->spec, good[i][1]), "'%s' became '%s'", good[i][0], kv->spec);
        kvp_kv_free(kv);
    }
    CHECK(kvp_kv_new("bogus", &sh, NULL, &kv) == KVP_EINVAL && strstr(kvp_errmsg(), "k4v4"));
}

/* ---------------------------------------------------------------------------------------
 * The MiKV cache.
 * ------------------------------------------------------------------------------------- */

TEST(mikv_attend_matches_dequantized) {
    static const char *const specs[] = {"mikv:w16:p25:g16", "mikv:l2:h6:p50:w0", "mikv:l4:h6:p0:w16:r4",
                                        "mikv:l2:h4:p20:w32:r16:rot", "mikv:p30:w0:g16:bal", "mikv:p25:w16:r8:a8"};
    static const int hds[] = {8, 7, 33, 64};
    static const int steps[] = {45, 1, 1, 30, 1, 5, 1, 40, 1, 3, 1, 1};
    unsigned long long s = 30;
    for (size_t i = 0; i < KVP_ARRAY_LEN(specs); i++)
        for (size_t h = 0; h < KVP_ARRAY_LEN(hds) && !kvt_failed(); h++) {
            kq_cache c;
            int kvh = hds[h] == 8 ? 4 : 2;
            CHECK_OK(kq_open(&c, specs[i], 2, 3 * kvh, kvh, hds[h], 160));
            double worst = kq_run(&c, steps, (int)KVP_ARRAY_LEN(steps), &s);
            CHECKF(worst <= (strstr(specs[i], "a8") ? 0.02 : 2e-4), "%s, head dim %d: attention differs from the "
                   "dequantized values by %g", specs[i], hds[h], worst);
            kq_close(&c);
        }
}

/* Runs n single-token steps of random keys and values (seed s) through one layer; returns
 * the outputs (n, qd) and the keys and values written (n, kvd). */
static void kq_feed(kq_cache *c, int n, unsigned long long s, float *out, float *K, float *V) {
    for (int pos = 0; pos < n && !kvt_failed(); pos++) {
        CHECK_OK(c->kv->vt->begin(c->kv, pos, 1, NULL));
        kq_fill_kv(c, 1, &s);
        if (K) memcpy(K + (size_t)pos * c->kvd, c->k, sizeof(float) * c->kvd);
        if (V) memcpy(V + (size_t)pos * c->kvd, c->v, sizeof(float) * c->kvd);
        CHECK_OK(c->kv->vt->append(c->kv, 0, pos, 1, c->k, c->v));
        CHECK_OK(c->kv->vt->attend(c->kv, 0, pos, 1, c->q, out + (size_t)pos * c->qd));
        CHECK_OK(c->kv->vt->end(c->kv));
    }
}

TEST(mikv_low_tier_is_kivi_and_high_tier_finer) {
    /* with nothing kept high, MiKV is KIVI at L bits bit for bit; with everything high, its
     * read-back error is about 1 / 15 of KIVI's (4 residual bits) plus F16 rounding */
    enum { N = 200 };
    kq_cache a, b, hi;
    CHECK_OK(kq_open(&a, "mikv:l3:p0:w0", 1, 4, 2, 33, N));
    CHECK_OK(kq_open(&b, "k3v3:r0:a16", 1, 4, 2, 33, N)); /* MiKV keeps two planes */
    CHECK_OK(kq_open(&hi, "mikv:l3:h7:p100:w0", 1, 4, 2, 33, N));
    float *oa = malloc(sizeof(float) * N * a.qd), *ob = malloc(sizeof(float) * N * a.qd);
    float *K = malloc(sizeof(float) * N * a.kvd), *V = malloc(sizeof(float) * N * a.kvd);
    kq_feed(&a, N, 40, oa, NULL, NULL);
    kq_feed(&b, N, 40, ob, K, V);
    CHECK(!memcmp(oa, ob, sizeof(float) * N * a.qd));
    kq_feed(&hi, N, 40, oa, NULL, NULL);
    float *rk = malloc(sizeof(float) * N * a.kvd), *rv = malloc(sizeof(float) * N * a.kvd);
    double e_lo = 0, e_hi = 0;
    CHECK_OK(b.kv->vt->read(b.kv, 0, 0, 192, rk, rv));
    for (int i = 0; i < 192 * a.kvd; i++) e_lo = fmax(e_lo, fmax(fabs(rk[i] - K[i]), fabs(rv[i] - V[i])));
    CHECK_OK(hi.kv->vt->read(hi.kv, 0, 0, 192, rk, rv));
    for (int i = 0; i < 192 * a.kvd; i++) e_hi = fmax(e_hi, fmax(fabs(rk[i] - K[i]), fabs(rv[i] - V[i])));
    CHECKF(e_hi < e_lo / 10 && e_hi > e_lo / 40, "high tier error %g, low tier %g", e_hi, e_lo);
    kvp_kv_stats sa, sb;
    a.kv->vt->stats(a.kv, &sa);
    b.kv->vt->stats(b.kv, &sb);
    CHECK(sa.bytes_hot > sb.bytes_hot && sa.bytes_hot < sb.bytes_hot + sb.bytes_hot / 50); /* metadata only */
    free(oa), free(ob), free(K), free(V), free(rk), free(rv);
    kq_close(&a), kq_close(&b), kq_close(&hi);
}

/* Queries all point along channel 0; the keys of blocks 4, 7 and 10 (32 positions each) do
 * too, so those blocks draw most of the attention. */
static int kq_hot_block(int pos) { return pos / 32 == 4 || pos / 32 == 7 || pos / 32 == 10; }

static void kq_fill_focus(kq_cache *c, int pos, int n, unsigned long long *s) {
    int hd = c->sh.head_dim;
    for (int i = 0; i < n; i++)
        for (int ch = 0; ch < c->kvd; ch++) {
            int hot = kq_hot_block(pos + i) && ch % hd == 0;
            c->k[(size_t)i * c->kvd + ch] = hot ? 6.0f : 0.5f * kvt_randf(s);
            c->v[(size_t)i * c->kvd + ch] = kvt_randf(s);
        }
    for (int i = 0; i < n * c->qd; i++) c->q[i] = i % hd == 0 ? 3.0f : 0.1f * kvt_randf(s);
}

TEST(mikv_keeps_important_blocks_high) {
    unsigned long long s = 31;
    kq_cache c;
    CHECK_OK(kq_open(&c, "mikv:l2:h6:p30:w32:r0", 1, 2, 1, 32, 400));
    float *K = malloc(sizeof(float) * 400 * c.kvd), *V = malloc(sizeof(float) * 400 * c.kvd);
    for (int pos = 0; pos < 400; pos++) {
        CHECK_OK(c.kv->vt->begin(c.kv, pos, 1, NULL));
        kq_fill_focus(&c, pos, 1, &s);
        memcpy(K + (size_t)pos * c.kvd, c.k, sizeof(float) * c.kvd);
        memcpy(V + (size_t)pos * c.kvd, c.v, sizeof(float) * c.kvd);
        CHECK_OK(c.kv->vt->append(c.kv, 0, pos, 1, c.k, c.v));
        CHECK_OK(c.kv->vt->attend(c.kv, 0, pos, 1, c.q, c.out));
        CHECK_OK(c.kv->vt->end(c.kv));
    }
    float *rk = malloc(sizeof(float) * 400 * c.kvd), *rv = malloc(sizeof(float) * 400 * c.kvd);
    CHECK_OK(c.kv->vt->read(c.kv, 0, 0, 400, rk, rv));
    /* 12 blocks: the newest (11) stays high for recency, 30% of the blocks made so far for
     * importance (1 from block 3 on, 2 from 5, 3 from 8): the hot blocks 4, 7, 10 read back
     * at 6 bits, the others at 2 */
    int hot_fine = 0, cold_coarse = 0, n_hot = 0, n_cold = 0;
    for (int p = 0; p < 352; p++) {
        double e = 0;
        for (int ch = 0; ch < c.kvd; ch++) e = fmax(e, fabs(rv[(size_t)p * c.kvd + ch] - V[(size_t)p * c.kvd + ch]));
        if (kq_hot_block(p)) n_hot++, hot_fine += e < 0.03;
        else n_cold++, cold_coarse += e > 0.05;
    }
    CHECKF(hot_fine == n_hot, "only %d of %d tokens of important blocks kept at high precision", hot_fine, n_hot);
    CHECKF(cold_coarse >= n_cold * 90 / 100, "only %d of %d other tokens demoted", cold_coarse, n_cold);
    kvp_kv_stats st;
    c.kv->vt->stats(c.kv, &st);
    CHECKF(st.bits_per_value < 4.5 && st.bits_per_value > 2.5, "bits per value %g", st.bits_per_value);
    free(K), free(V), free(rk), free(rv);
    kq_close(&c);
}

TEST(mikv_stats_count_every_byte) {
    unsigned long long s = 32;
    kq_cache c;
    static const int steps[] = {60, 1, 39};
    CHECK_OK(kq_open(&c, "mikv:l2:h4:p0:w32:r0:none", 2, 4, 2, 64, 128));
    kq_run(&c, steps, 3, &s);
    kvp_kv_stats st;
    c.kv->vt->stats(c.kv, &st);
    /* The low tier is k2v2:r0: after 60 tokens one block of 32 (28 in the window), after 100
     * three blocks (4 in the window). A block: per KV head a key tile (16 rows x 32 B), key
     * parameters 2 x 64 + 6 B, a value tile 512 B; per value group of 32 channels (4)
     * 2 x 32 + 6 B: 2 x 1158 + 4 x 70 = 2596 B. Window: 4 x 128 x 2 x 2 B per layer.
     * High tier (w32: the newest block; p0): one residual slot per (layer, KV head) ever
     * used, 2-bit key and value tiles (512 + 512 B) with its owner (2 B) and importance
     * (4 B); a slot index per block and (layer, KV head) (2 B); window importance 4 x 4 B
     * per (layer, KV head). Two layers of two KV heads. */
    uint64_t want = 2 * (3 * 2596 + 4 * 128 * 2 * 2) + 4 * (1030 + 3 * 2 + 4 * 4);
    CHECKF(st.bytes_hot == want, "bytes %llu, want %llu", (unsigned long long)st.bytes_hot, (unsigned long long)want);
    CHECK(st.n_values == 100ull * 2 * 128 * 2);
    CHECK(!strcmp(st.spec, "mikv:l2:h4:p0:w32:r0"));
    kq_close(&c);
}

TEST(mikv_truncate_keeps_what_remains) {
    unsigned long long s = 33;
    static const int steps[] = {70, 1, 49};
    kq_cache c;
    CHECK_OK(kq_open(&c, "mikv:l3:p20:w32:r8:g16", 2, 4, 2, 32, 220));
    kq_run(&c, steps, 3, &s);
    static const int cuts[] = {118, 112, 60, 7, 0};
    kq_check_truncate(&c, 120, cuts, KVP_ARRAY_LEN(cuts));
    if (kvt_failed()) return;
    static const int more[] = {30, 1, 40, 1};
    double worst = kq_run(&c, more, 4, &s);
    CHECK(c.kv->n_pos == 72 && worst <= 2e-4);
    c.kv->vt->reset(c.kv);
    kvp_kv_stats st;
    c.kv->vt->stats(c.kv, &st);
    CHECK(c.kv->n_pos == 0 && st.bytes_hot == 0);
    kq_close(&c);
}

TEST(mikv_specs) {
    kvp_kv_shape sh = {1, 2, 2, 16, 64};
    kvp_kv *kv = NULL;
    static const char *const bad[] = {"mikv:h4", "mikv:l5", "mikv:l8", "mikv:p101", "mikv:r-2", "mikv:", "mikvx",
                                      "mikv:foo", "mikv:h8:", "mikv:l2:h7", "mikv:l3:h16", "mikv:g20", "mikv:w-1"};
    for (size_t i = 0; i < KVP_ARRAY_LEN(bad); i++) {
        CHECKF(kvp_kv_new(bad[i], &sh, NULL, &kv) == KVP_EINVAL && kv == NULL, "spec '%s' accepted", bad[i]);
        CHECK(strstr(kvp_errmsg(), bad[i]) && strstr(kvp_errmsg(), "mikv["));
    }
    static const char *const good[][2] = {{"mikv", "mikv:l3:h7:p5:w64:r0"}, {"mikv:p10:l2", "mikv:l2:h6:p10:w64:r0"},
                                          {"mikv:h5:r16:rot", "mikv:l3:h5:p5:w64:r16:rot"},
                                          {"mikv:bal:a8:g16:w0", "mikv:l3:h7:p5:w0:r0:g16:bal:a8"}};
    for (size_t i = 0; i < KVP_ARRAY_LEN(good); i++) {
        CHECK_OK(kvp_kv_new(good[i][0], &sh, NULL, &kv));
        CHECKF(!strcmp(kv->spec, good[i][1]), "'%s' became '%s'", good[i][0], kv->spec);
        kvp_kv_free(kv);
    }
}
