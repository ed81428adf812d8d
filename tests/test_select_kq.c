/*
 * test_select_kq.c: selection on quantized storage (KQ rows, kXvY): slot codes moved
 * between lanes at every bit width; the KQ store's attention through the packed-tile
 * kernels against F32 attention over its dequantized rows (odd head dimensions, after
 * compaction, with the causal mask); the kept-token sets against the F16 store; the budget
 * after every decoding step; byte accounting; specs.
 */
#include <math.h>
#include <stdlib.h>

#include "common/common.h"
#include "engine/engine.h"
#include "kernels/kvq.h"
#include "kv/quant.h"
#include "kv/select.h"
#include "kv/select_cold.h"
#include "kvpack.h"
#include "test.h"

static float kvt_rnd(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* Codes written to one lane and read back, and moved to another lane, at every width. */
TEST(select_kq_lane_codes) {
    const int bits[] = {2, 3, 4, 8}, hds[] = {8, 13, 40, 64};
    for (int b = 0; b < 4; b++)
        for (int d = 0; d < 4; d++) {
            int hd = hds[d], T = KVP_KQ_T, qmax = (1 << bits[b]) - 1;
            size_t kb = kvp_qt_ktile_bytes(T, hd, bits[b]), vb = kvp_qt_vtile_bytes(T, hd, bits[b]);
            uint8_t *kt = calloc(1, kb), *vt = calloc(1, vb), want[T][64], got[64];
            uint32_t seed = 7;
            for (int t = 0; t < T; t++) {
                for (int c = 0; c < hd; c++) want[t][c] = (uint8_t)((uint32_t)(kvt_rnd(&seed) * 1000 + 1000) % (qmax + 1));
                kvp_qt_set_k(kt, hd, T, bits[b], t, want[t]);
                kvp_qt_set_v(vt, hd, bits[b], t, want[t]);
            }
            uint8_t *codes = malloc((size_t)T * hd);
            kvp_qt_unpack_k(kt, hd, T, bits[b], codes); /* (hd, T) */
            for (int t = 0; t < T; t++)
                for (int c = 0; c < hd; c++) CHECKF(codes[c * T + t] == want[t][c], "k%d hd %d t %d c %d", bits[b], hd, t, c);
            kvp_qt_unpack_v(vt, T, hd, bits[b], codes); /* (T, hd) */
            for (int t = 0; t < T; t++)
                for (int c = 0; c < hd; c++) CHECKF(codes[t * hd + c] == want[t][c], "v%d hd %d t %d c %d", bits[b], hd, t, c);
            kvp_qt_get_k(kt, hd, T, bits[b], 5, got);
            kvp_qt_set_k(kt, hd, T, bits[b], 2, got);
            kvp_qt_get_k(kt, hd, T, bits[b], 2, got);
            CHECK(!memcmp(got, want[5], (size_t)hd));
            kvp_qt_get_k(kt, hd, T, bits[b], 3, got);
            CHECK(!memcmp(got, want[3], (size_t)hd)); /* neighbours untouched */
            free(codes);
            free(kt);
            free(vt);
        }
}

/* F32 causal attention of nq rows (at position qp) over n rows with positions pos. */
static void kvt_attn_ref(const float *Q, int nq, const float *K, const float *V, const int *pos, int n, int hd, int qp,
                         float *Y) {
    for (int j = 0; j < nq; j++) {
        double s[512], mx = -1e30, sum = 0;
        for (int t = 0; t < n; t++) {
            double d = 0;
            for (int c = 0; c < hd; c++) d += (double)Q[j * hd + c] * K[t * hd + c];
            s[t] = pos[t] <= qp ? d / sqrt((double)hd) : -1e30;
            mx = fmax(mx, s[t]);
        }
        for (int t = 0; t < n; t++) sum += s[t] = pos[t] <= qp ? exp(s[t] - mx) : 0;
        for (int c = 0; c < hd; c++) {
            double y = 0;
            for (int t = 0; t < n; t++) y += s[t] / sum * V[t * hd + c];
            Y[j * hd + c] = (float)y;
        }
    }
}

/* The store's runs attended through kvp_sel_attend (packed-tile kernels for the quantized
 * slots) equal F32 attention over the rows it reads back, after appends (aging into tiles)
 * and compactions, at every width and at odd head dimensions. */
static void kvt_kq_attend_case(int kbits, int vbits, int hd, int recent) {
    kvp_tstore *ts = NULL;
    CHECK_OK(kvp_tstore_kq_new(kbits, vbits, recent, 1, 1, hd, 1, &ts));
    uint32_t seed = (uint32_t)(kbits * 131 + vbits * 17 + hd);
    float *k = malloc(sizeof(float) * 96 * hd), *v = malloc(sizeof(float) * 96 * hd);
    int n_pos = 0;
    uint8_t keep[256];
    for (int round = 0; round < 4; round++) {
        int n = 40 + 7 * round;
        for (int i = 0; i < n * hd; i++) {
            k[i] = 2 * kvt_rnd(&seed) + (i % hd == 3 ? 4 : 0); /* an outlier channel */
            v[i] = kvt_rnd(&seed);
        }
        CHECK_OK(ts->vt->append(ts, 0, n_pos, n, k, v));
        n_pos += n;
        kvp_tstream *st = kvp_tstore_stream(ts, 0, 0);
        for (int t = 0; t < st->n; t++) /* heavy eviction in odd rounds: tiles merge */
            keep[t] = (round % 2 ? (t * 7 + round) % 3 == 0 : (t * 7 + round) % 5 != 0) || t >= st->n - 3;
        if (round < 3) ts->vt->compact(ts, 0, 0, keep);
        if (round == 1) { /* some lanes are dead: evicted lanes stay in place */
            kvp_rows r0[2];
            CHECK(ts->vt->rows(ts, 0, 0, r0, 2) >= 1 && r0[0].fmt == KVP_ROWS_KQ && r0[0].n_tiles * KVP_KQ_T > r0[0].n);
        }
    }
    kvp_tstream *st = kvp_tstore_stream(ts, 0, 0);
    int n = st->n, nq = 6, qp = st->pos[n - 5]; /* the last 4 rows are masked */
    float *K = malloc(sizeof(float) * n * hd), *V = malloc(sizeof(float) * n * hd), Q[6 * 64], Y[6 * 64], R[6 * 64];
    for (int t = 0; t < n; t++) ts->vt->read(ts, 0, 0, t, K + t * hd, V + t * hd);
    for (int i = 0; i < nq * hd; i++) Q[i] = 3 * kvt_rnd(&seed);
    kvt_attn_ref(Q, nq, K, V, st->pos, n, hd, qp, R);
    kvp_rows runs[2];
    int nr = ts->vt->rows(ts, 0, 0, runs, 2), qpos = qp;
    CHECK(nr == 2 && runs[0].fmt == KVP_ROWS_KQ && runs[1].fmt == KVP_ROWS_F16); /* the last append stays F16 */
    const kvp_kq_tile *tl = runs[0].k; /* no two neighbours could have been merged */
    for (int i = 0; i + 1 < runs[0].n_tiles; i++)
        CHECK(tl[i].live && __builtin_popcount(tl[i].live) + __builtin_popcount(tl[i + 1].live) > KVP_KQ_T);
    float *S = malloc(sizeof(float) * nq * (n + 16));
    void *scr = kvp_amalloc(kvp_sel_kq_scratch(nq, hd));
    kvp_attn_io io = {Q, nq, &qpos, nq, 1.0f / sqrtf((float)hd), S, n + 16, Y, NULL, scr};
    CHECK(kvp_sel_attend(runs, nr, hd, &io) == n);
    double worst = 0;
    for (int i = 0; i < nq * hd; i++) worst = fmax(worst, fabs(Y[i] - R[i]));
    CHECKF(worst < 2e-3, "k%dv%d hd %d r%d max difference %g", kbits, vbits, hd, recent, worst);
    /* with a buffer (as the retrieval cache passes for a KQ cold tier) the runs are gathered
     * as floats first: the same attention up to the order of additions */
    float *buf = malloc(sizeof(float) * (size_t)(n + 16) * hd), Yg[6 * 64];
    kvp_attn_io iog = {Q, nq, &qpos, nq, 1.0f / sqrtf((float)hd), S, n + 16, Yg, buf, NULL};
    CHECK(buf && kvp_sel_attend(runs, nr, hd, &iog) == n);
    worst = 0;
    for (int i = 0; i < nq * hd; i++) worst = fmax(worst, fabs(Yg[i] - Y[i]));
    CHECKF(worst < 1e-4, "k%dv%d hd %d r%d gathered: max difference %g", kbits, vbits, hd, recent, worst);
    free(buf);
    kvp_afree(scr);
    free(S);
    free(K);
    free(V);
    free(k);
    free(v);
    ts->vt->free(ts);
}

TEST(select_kq_attend_equals_dequantized) {
    const int kb[] = {4, 2, 3, 8, 4}, vb[] = {4, 2, 8, 3, 2}, hd[] = {8, 32, 40, 13, 64};
    for (int i = 0; i < 5; i++) {
        kvt_kq_attend_case(kb[i], vb[i], hd[i], 0);
        kvt_kq_attend_case(kb[i], vb[i], hd[i], 5);
        if (kvt_failed()) return;
    }
}

/* Merging two tiles: the values move code for code (bit-identical reads), the keys are
 * re-quantized within half a step of the merged tile (its range / 15 / 2 per channel). */
TEST(select_kq_tile_merge) {
    int hd = 24;
    kvp_kq_fmt f;
    kvp_kq_fmt_init(&f, 4, 3, hd);
    kvp_kq_tile a = {kvp_amalloc(f.bytes), 0}, b = {kvp_amalloc(f.bytes), 0};
    float k[32 * 24], v[32 * 24], ka[16 * 24], va[16 * 24], x[24], y[24];
    uint32_t seed = 11;
    for (int i = 0; i < 32 * hd; i++) {
        k[i] = 3 * kvt_rnd(&seed);
        v[i] = kvt_rnd(&seed);
    }
    kvp_kq_tile_make(&f, &a, k, v, 16);
    kvp_kq_tile_make(&f, &b, k + 16 * hd, v + 16 * hd, 16);
    a.live = 0x8421u | 0x0102u; /* lanes 0 1 5 8 10 15 */
    b.live = 0x00f1u;           /* lanes 0 4 5 6 7 */
    int n = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int l = 0; l < 16; l++)
            if ((pass ? b : a).live >> l & 1) {
                kvp_kq_tile_read(&f, pass ? &b : &a, l, ka + n * hd, va + n * hd);
                n++;
            }
    kvp_kq_tile_merge(&f, &a, &b);
    CHECK(n == 11 && a.live == 0x7ffu && b.live == 0);
    float lo[24], hi[24];
    for (int c = 0; c < hd; c++) {
        lo[c] = hi[c] = ka[c];
        for (int r = 1; r < n; r++) lo[c] = fminf(lo[c], ka[r * hd + c]), hi[c] = fmaxf(hi[c], ka[r * hd + c]);
    }
    for (int r = 0; r < n; r++) {
        kvp_kq_tile_read(&f, &a, r, x, y);
        CHECKF(!memcmp(y, va + r * hd, sizeof y), "value of row %d changed", r);
        for (int c = 0; c < hd; c++)
            CHECKF(fabsf(x[c] - ka[r * hd + c]) <= (hi[c] - lo[c]) / 15 / 2 * 1.1f + 1e-3f, "key row %d ch %d", r, c);
    }
    kvp_afree(a.mem);
    kvp_afree(b.mem);
}

/* ---- the eviction cache on KQ rows ---- */

/* A selection cache of shape (1 layer, nh heads, 1 KV head, hd) storing `kv` rows. */
static kvp_kv *kvt_kq_cache(const char *kv, const char *select, const char *budget, int nh, int hd) {
    kvp_kv_shape sh = {1, nh, 1, hd, 256};
    kvp_sel_params p = {kv, select, budget, NULL, NULL, 0};
    kvp_kv *c = NULL;
    if (kvp_kv_select_new(&p, &sh, NULL, &c) != 0) kvt_fail(__FILE__, __LINE__, "%s %s: %s", kv, select, kvp_errmsg());
    return c;
}

static int kvt_kq_step(kvp_kv *kv, const float *k, const float *v, const float *q, float *out) {
    int pos = kv->n_pos, tok = 0;
    KVP_TRY(kv->vt->begin(kv, pos, 1, &tok));
    KVP_TRY(kv->vt->append(kv, 0, pos, 1, k, v));
    KVP_TRY(kv->vt->attend(kv, 0, pos, 1, q, out));
    return kv->vt->end(kv);
}

/* The kept-token relation, by hand: keys take four levels L * (1, 1, 1, 1), L in 0..3, and
 * every query is (1, 1, 1, 1), so the scores of the levels are 0, 2, 4, 6 apart from
 * quantization, whose error is at most a tenth of a level here (4-bit codes per channel over
 * a tile spanning the four levels: s / 2 = 3 / 30), 0.2 in a score. Equal keys get equal
 * codes, so ties stay ties and break by position as in F16. Hence SnapKV and StreamingLLM on
 * k4v4:r0 keep exactly the positions they keep on F16, after every step. */
TEST(select_kq_same_kept_set) {
    const char *sel[] = {"snapkv:window=4", "streaming:sink=2", "kvcrush:window=4"};
    for (int s = 0; s < 3; s++) {
        kvp_kv *a = kvt_kq_cache("f16", sel[s], "12", 2, 4), *b = kvt_kq_cache("k4v4:r0", sel[s], "12", 2, 4);
        CHECK(a && b);
        float q[8] = {1, 1, 1, 1, 1, 1, 1, 1}, out[8];
        for (int t = 0; t < 80; t++) {
            float L = (float)((t * 5 + t / 7) % 4), k[4] = {L, L, L, L}, v[4] = {(float)t, 1, -1, 0.5f * L};
            CHECK_OK(kvt_kq_step(a, k, v, q, out));
            CHECK_OK(kvt_kq_step(b, k, v, q, out));
            int pa[64], pb[64], na = kvp_kv_select_positions(a, 0, 0, pa, 64), nb = kvp_kv_select_positions(b, 0, 0, pb, 64);
            CHECKF(na == nb && !memcmp(pa, pb, sizeof(int) * (size_t)na), "%s: kept sets differ after step %d", sel[s], t);
        }
        kvp_kv_free(a);
        kvp_kv_free(b);
    }
}

/* Bytes by hand: 1 layer, 1 KV head, head dim 8, k4v4:r0, StreamingLLM keeping everything.
 * After 40 one-token steps: tiles at the appends of tokens 16 and 32 (the F16 rows outnumber
 * R = 0 by a tile), 8 F16 rows, 40 positions. A tile: key codes 2 rows x 2 units x 16 bytes,
 * key parameters 2 x 8 + 6, value codes 4 rows x 16 bytes, value parameters 16 lanes x 2 x
 * F16 = 64 + 22 + 64 + 64 = 214 bytes. */
TEST(select_kq_bytes_by_hand) {
    kvp_kv *kv = kvt_kq_cache("k4v4:r0", "streaming", "100%", 1, 8);
    CHECK(kv);
    float k[8] = {1, 2, 3, 4, 5, 6, 7, 8}, v[8] = {0}, q[8] = {0}, out[8];
    for (int t = 0; t < 40; t++) CHECK_OK(kvt_kq_step(kv, k, v, q, out));
    kvp_kv_stats st;
    kv->vt->stats(kv, &st);
    CHECKF(st.bytes_hot == 2 * 214 + 8 * 8 * 2 * 2 + 40 * 4, "bytes %llu", (unsigned long long)st.bytes_hot);
    CHECK(st.n_values == 40 * 8 * 2 && !strcmp(st.spec, "k4v4:r0+streaming@100%"));
    CHECK_NEAR(st.bits_per_value, 8.0 * (double)st.bytes_hot / 640.0, 1e-12);
    kvp_kv_free(kv);
}

/* On stories260K, every eviction policy on k4v4 (R 0 and 16) keeps its budget after the
 * prompt and after every decoding step. */
TEST(select_kq_budget_every_step) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    const kvp_model_info *mi = kvp_model_get_info(m);
    const char *pol[] = {"streaming", "h2o", "snapkv", "pyramidkv", "prefixkv", "kvcrush"};
    for (int i = 0; i < 6; i++)
        for (int r = 0; r < 2; r++) {
            kvp_ctx_params p = kvp_ctx_default_params();
            p.n_ctx = 256;
            p.n_batch = 16;
            p.kv = r ? "k4v4:r16" : "k4v4:r0";
            p.select = pol[i];
            p.budget = "25%";
            kvp_ctx *c = NULL;
            CHECK_OK(kvp_ctx_new(m, &p, &c));
            int tok[40];
            for (int t = 0; t < 40; t++) tok[t] = t ? 3 + (t * 37) % 500 : 1;
            CHECK_OK(kvp_ctx_decode(c, tok, 40, NULL, 0));
            for (int s = 0; s < 150; s++) {
                int t = 3 + (s * 53) % 500;
                CHECK_OK(kvp_ctx_decode(c, &t, 1, NULL, 0));
                kvp_sel_info in;
                CHECK_OK(kvp_kv_select_info(kvp_ctx_kv(c), &in));
                int per_layer = !strcmp(pol[i], "pyramidkv") || !strcmp(pol[i], "prefixkv");
                CHECKF(per_layer ? in.total_stored <= mi->n_layers * mi->n_kv_heads * in.budget : in.max_stored <= in.budget,
                       "%s r%d step %d: %d stored, budget %d", pol[i], r, s, in.max_stored, in.budget);
            }
            kvp_ctx_free(c);
        }
    kvp_model_free(m);
}

TEST(select_kq_specs) {
    kvp_kv_shape sh = {1, 2, 1, 8, 64};
    const char *bad[] = {"k5v4", "k4v4:g32", "k4v4:r-1", "k4", "k4v4:r16:rot"};
    for (int i = 0; i < 5; i++) {
        kvp_sel_params p = {bad[i], "snapkv", "50%", NULL, NULL, 0};
        kvp_kv *kv = NULL;
        CHECKF(kvp_kv_select_new(&p, &sh, NULL, &kv) == KVP_EINVAL && !kv, "%s", bad[i]);
    }
    kvp_kv *kv = kvt_kq_cache("k2v8:r4", "h2o", "50%", 2, 8);
    CHECK(kv && !strcmp(kv->spec, "k2v8:r4+h2o@50%"));
    kvp_kv_free(kv);
}

/* A KQ tile's bytes in memory (fmt->bytes, 64-aligned parts). */
static size_t kvt_kq_tile_bytes(int kb, int vb, int hd) {
    kvp_kq_fmt f;
    kvp_kq_fmt_init(&f, kb, vb, hd);
    return f.bytes;
}

/* ---- the retrieval caches on KQ rows: the cold tier's KQ encoding ---- */

/* A block in KQ tiles reads back within the quantization bound (keys per channel over each
 * tile: half a step of its range / 15; values per token and group), and a run over rows
 * [r0, r0 + cnt) of it reads the same rows. */
TEST(select_kq_cold_tier) {
    int nh = 2, hd = 40, n = 21;
    kvp_tier *t = NULL;
    CHECK_OK(kvp_tier_new("mem", nh, hd, &t));
    CHECK_OK(kvp_tier_use_kq(t, 4, 4));
    CHECK(!strcmp(kvp_tier_spec(t), "mem;k4v4"));
    float *k = malloc(sizeof(float) * nh * n * hd), *v = malloc(sizeof(float) * nh * n * hd);
    float *rk = malloc(sizeof(float) * n * hd), *rv = malloc(sizeof(float) * n * hd), *sub = malloc(sizeof(float) * n * hd);
    uint32_t seed = 3;
    for (int i = 0; i < nh * n * hd; i++) {
        k[i] = kvt_rnd(&seed) * (i % hd == 5 ? 8 : 1);
        v[i] = kvt_rnd(&seed);
    }
    int64_t id;
    CHECK_OK(kvp_tier_put(t, KVP_TYPE_F32, k, v, n, n, &id));
    for (int h = 0; h < nh; h++) {
        kvp_tier_read(t, id, h, rk, rv);
        for (int r = 0; r < n; r++)
            for (int c = 0; c < hd; c++) {
                float kb = (c == 5 ? 16.0f : 2.0f) / 15 / 2 * 1.05f + 1e-3f, vb = 2.0f / 15 / 2 * 1.05f + 1e-3f;
                CHECKF(fabsf(rk[r * hd + c] - k[(h * n + r) * hd + c]) <= kb, "key h %d r %d c %d", h, r, c);
                CHECKF(fabsf(rv[r * hd + c] - v[(h * n + r) * hd + c]) <= vb, "value h %d r %d c %d", h, r, c);
            }
        kvp_rows run;
        kvp_tier_rows(t, id, h, 5, 12, 100, &run);
        CHECK(run.fmt == KVP_ROWS_KQ && run.n == 12);
        kvp_kq_run_floats(&run, 0, sub);
        CHECK(!memcmp(sub, rk + 5 * hd, sizeof(float) * 12 * hd));
        kvp_kq_run_floats(&run, 1, sub);
        CHECK(!memcmp(sub, rv + 5 * hd, sizeof(float) * 12 * hd));
    }
    CHECK(kvp_tier_bytes(t) == (uint64_t)nh * 2 * (uint64_t)kvt_kq_tile_bytes(4, 4, hd));
    kvp_tier_free(t);
    free(k);
    free(v);
    free(rk);
    free(rv);
    free(sub);
}

/* Defined in test_select_cache.c: 1 when 1 and 3 threads give bit-identical logits. */
int kvt_sel_threads_identical(kvp_model *m, const char *kv, const char *select, float *a, float *b);

/* On k4v4, results do not depend on the thread count (every policy, 1 and 3 threads). */
TEST(select_kq_threads_identical) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    int V = kvp_model_get_info(m)->vocab_size;
    float *a = malloc(sizeof(float) * 80 * V), *b = malloc(sizeof(float) * 80 * V);
    const char *pol[] = {"h2o", "snapkv", "kvcrush", "quest", "sentencekv"};
    CHECK(a && b);
    for (int i = 0; i < 5; i++) {
        const int same = kvt_sel_threads_identical(m, "k4v4:r8", pol[i], a, b);
        CHECKF(same == 1, "%s: %d (%s)", pol[i], same, same < 0 ? kvp_errmsg() : "logits differ");
    }
    free(a);
    free(b);
    kvp_model_free(m);
}
