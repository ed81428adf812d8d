/*
 * test_select.c: the selection layer's pure parts against hand-computed examples: budgets
 * and specs, the 8-bit row kernels against their references over odd sizes, attention over
 * mixed runs against a double-precision reference, and each policy's choice on small,
 * known scores (StreamingLLM, H2O's top-k, SnapKV's pooling, PyramidKV's schedule,
 * PrefixKV's threshold, KVCrush's representatives, Quest's bound, block picking).
 */
#include "common/common.h"
#include "kv/select.h"
#include "kvpack.h"
#include "test.h"

/* ---- budgets and specs ---- */

TEST(select_budget_parse) {
    kvp_budget b;
    CHECK_OK(kvp_budget_parse("512", &b));
    CHECK(b.tokens == 512 && kvp_budget_at(&b, 10) == 512);
    CHECK_OK(kvp_budget_parse("25%", &b));
    CHECK(b.tokens == 0 && kvp_budget_at(&b, 4096) == 1024 && kvp_budget_at(&b, 5) == 2 && kvp_budget_at(&b, 1) == 1);
    CHECK_OK(kvp_budget_parse("12.5%", &b));
    CHECK(kvp_budget_at(&b, 100) == 13);
    const char *bad[] = {"", "0", "-3", "150%", "0%", "abc", "12x", "1.5"};
    for (size_t i = 0; i < KVP_ARRAY_LEN(bad); i++) CHECKF(kvp_budget_parse(bad[i], &b) == KVP_EINVAL, "%s", bad[i]);
}

TEST(select_spec_parse) {
    kvp_sel_args a;
    int v;
    CHECK_OK(kvp_sel_args_parse("snapkv:window=16,kernel=7", &a));
    CHECK(!strcmp(a.name, "snapkv") && a.n == 2);
    CHECK_OK(kvp_sel_arg_int(&a, "window", 32, 1, 100, &v));
    CHECK(v == 16);
    CHECK(kvp_sel_args_check(&a) == KVP_EINVAL); /* kernel was not read */
    CHECK(strstr(kvp_errmsg(), "kernel") != NULL);
    CHECK_OK(kvp_sel_arg_int(&a, "kernel", 5, 1, 63, &v));
    CHECK(v == 7 && kvp_sel_args_check(&a) == KVP_OK);
    CHECK(kvp_sel_arg_int(&a, "window", 32, 1, 8, &v) == KVP_EINVAL); /* out of range */
    CHECK(kvp_sel_args_parse("h2o:recent", &a) == KVP_EINVAL);
    CHECK(kvp_sel_args_parse(":x=1", &a) == KVP_EINVAL);
    CHECK_OK(kvp_sel_args_parse("quest", &a));
    CHECK(a.n == 0 && !strcmp(a.name, "quest"));
}

TEST(select_sentence_end_text) {
    CHECK(kvp_sentence_end_text(".") && kvp_sentence_end_text("end.") && kvp_sentence_end_text("?"));
    CHECK(kvp_sentence_end_text("!\"") && kvp_sentence_end_text("done.) ") && kvp_sentence_end_text("\n"));
    CHECK(!kvp_sentence_end_text("Mr") && !kvp_sentence_end_text("k57") && !kvp_sentence_end_text(""));
    CHECK(!kvp_sentence_end_text(",") && !kvp_sentence_end_text(" the"));
    uint8_t ends[10] = {0};
    ends[9] = 1;
    CHECK(!kvp_block_closes(1, 3, ends, 10, 4) && kvp_block_closes(2, 9, ends, 10, 4));
    CHECK(kvp_block_closes(4, 3, ends, 10, 4) && !kvp_block_closes(3, 9, NULL, 10, 4));
    CHECK(!kvp_block_closes(1, 42, ends, 10, 4)); /* ids outside the table end nothing */
}

/* ---- 8-bit rows ---- */

static void kvt_fill(float *x, size_t n, unsigned long long *s) {
    for (size_t i = 0; i < n; i++) x[i] = kvt_randf(s);
}

TEST(select_q8_kernels_match_ref) {
    unsigned long long seed = 7;
    const int hds[] = {1, 7, 8, 33, 64, 130}, ns[] = {1, 3, 17}, nqs[] = {1, 3, 5};
    for (size_t a = 0; a < KVP_ARRAY_LEN(hds); a++)
        for (size_t b = 0; b < KVP_ARRAY_LEN(ns); b++)
            for (size_t c = 0; c < KVP_ARRAY_LEN(nqs); c++) {
                int hd = hds[a], n = ns[b], nq = nqs[c], lds = n + 3, ldq = hd + 1;
                int8_t K[17 * 130];
                float ks[17], Q[5 * 131], S1[5 * 20], S2[5 * 20], P[5 * 20], Y1[5 * 130], Y2[5 * 130], x[130];
                for (int t = 0; t < n; t++) {
                    kvt_fill(x, (size_t)hd, &seed);
                    kvp_sel_quant_q8(x, hd, K + (size_t)t * hd, &ks[t]);
                }
                kvt_fill(Q, (size_t)nq * ldq, &seed);
                kvt_fill(P, (size_t)nq * lds, &seed);
                kvt_fill(Y1, (size_t)nq * hd, &seed);
                memcpy(Y2, Y1, sizeof(float) * (size_t)nq * hd);
                kvp_sel_scores_q8(K, ks, n, hd, Q, nq, ldq, 0.5f, S1, lds);
                kvp_sel_scores_q8_ref(K, ks, n, hd, Q, nq, ldq, 0.5f, S2, lds);
                kvp_sel_values_q8(Y1, hd, nq, P, lds, K, ks, n, hd);
                kvp_sel_values_q8_ref(Y2, hd, nq, P, lds, K, ks, n, hd);
                for (int j = 0; j < nq; j++)
                    for (int t = 0; t < n; t++) CHECK_NEAR(S1[j * lds + t], S2[j * lds + t], 1e-4 * (1 + hd / 8));
                for (int i = 0; i < nq * hd; i++) CHECK_NEAR(Y1[i], Y2[i], 1e-4 * (1 + n));
            }
}

/* Long runs and many query rows: the scaled weights go through the stack buffer in chunks of
 * rows (256) and of query rows (16 at 256 rows); the result matches the reference. */
TEST(select_q8_values_chunked) {
    enum { N = 600, NY = 20, HD = 33 };
    unsigned long long seed = 11;
    int8_t *V = malloc((size_t)N * HD);
    float *vs = malloc(sizeof(float) * N), *P = malloc(sizeof(float) * NY * (N + 1));
    float *Y1 = malloc(sizeof(float) * NY * HD), *Y2 = malloc(sizeof(float) * NY * HD), *S1 = malloc(sizeof(float) * NY * (N + 1));
    float *S2 = malloc(sizeof(float) * NY * (N + 1)), *Q = malloc(sizeof(float) * NY * HD);
    CHECK(V && vs && P && Y1 && Y2 && S1 && S2 && Q);
    for (int i = 0; i < N * HD; i++) V[i] = (int8_t)(kvt_rand_u64(&seed) % 255 - 127);
    for (int t = 0; t < N; t++) vs[t] = 0.01f * (1 + kvt_randf(&seed));
    kvt_fill(P, (size_t)NY * (N + 1), &seed);
    kvt_fill(Q, (size_t)NY * HD, &seed);
    kvt_fill(Y1, (size_t)NY * HD, &seed);
    memcpy(Y2, Y1, sizeof(float) * NY * HD);
    kvp_sel_values_q8(Y1, HD, NY, P, N + 1, V, vs, N, HD);
    kvp_sel_values_q8_ref(Y2, HD, NY, P, N + 1, V, vs, N, HD);
    for (int i = 0; i < NY * HD; i++) CHECK_NEAR(Y1[i], Y2[i], 1e-3);
    kvp_sel_scores_q8(V, vs, N, HD, Q, NY, HD, 0.5f, S1, N + 1);
    kvp_sel_scores_q8_ref(V, vs, N, HD, Q, NY, HD, 0.5f, S2, N + 1);
    for (int j = 0; j < NY; j++)
        for (int t = 0; t < N; t++) CHECK_NEAR(S1[j * (N + 1) + t], S2[j * (N + 1) + t], 1e-4);
    void *bufs[] = {V, vs, P, Y1, Y2, S1, S2, Q};
    for (size_t i = 0; i < KVP_ARRAY_LEN(bufs); i++) free(bufs[i]);
}

TEST(select_q8_dequant_matches_ref) {
    unsigned long long seed = 21;
    const int hds[] = {1, 7, 8, 9, 64, 67};
    for (size_t a = 0; a < KVP_ARRAY_LEN(hds); a++) {
        int hd = hds[a], n = 5;
        int8_t q[5 * 67];
        float sc[5], x1[5 * 67], x2[5 * 67], x3[5 * 67];
        for (int i = 0; i < n * hd; i++) q[i] = (int8_t)(kvt_rand_u64(&seed) % 255 - 127);
        for (int t = 0; t < n; t++) sc[t] = kvt_randf(&seed);
        kvp_sel_dequant_q8(q, sc, n, hd, x1);
        kvp_sel_dequant_q8_ref(q, sc, n, hd, x2);
        memcpy(x3, x2, sizeof(float) * (size_t)(n * hd));
        if (__builtin_cpu_supports("avx2")) kvp_sel_dequant_q8_avx2(q, sc, n, hd, x3); /* the twin itself */
        CHECK(!memcmp(x1, x2, sizeof(float) * (size_t)(n * hd)) && !memcmp(x3, x2, sizeof(float) * (size_t)(n * hd)));
    }
}

TEST(select_q8_quant_round_trip) {
    float x[9] = {0.5f, -1.0f, 0.25f, 0.0f, 1.0f / 127, -0.75f, 0.125f, 1e-3f, -0.5f}, s;
    int8_t q[9];
    kvp_sel_quant_q8(x, 9, q, &s);
    CHECK_NEAR(s, 1.0 / 127, 1e-9);
    CHECK(q[1] == -127 && q[0] == 64 && q[3] == 0 && q[4] == 1 && q[5] == -95);
    for (int i = 0; i < 9; i++) CHECK_NEAR(s * q[i], x[i], 0.5 * s + 1e-7);
    float z[4] = {0};
    kvp_sel_quant_q8(z, 4, q, &s);
    CHECK(s == 0 && q[0] == 0 && q[3] == 0);
}

/* ---- attention over runs ---- */

/* Double-precision attention of query q (at position qp) over rows (k, v, pos). */
static void kvt_ref_attend(const float *k, const float *v, const int *pos, int n, const float *q, int qp, int hd,
                           double *y) {
    double w[64], m = -1e300, sum = 0;
    for (int t = 0; t < n; t++) {
        double s = 0;
        for (int c = 0; c < hd; c++) s += (double)q[c] * k[t * hd + c];
        w[t] = pos[t] <= qp ? s / sqrt((double)hd) : -1e300;
        m = fmax(m, w[t]);
    }
    for (int t = 0; t < n; t++) sum += w[t] = pos[t] <= qp ? exp(w[t] - m) : 0;
    for (int c = 0; c < hd; c++) y[c] = 0;
    for (int t = 0; t < n; t++)
        for (int c = 0; c < hd; c++) y[c] += w[t] / sum * v[t * hd + c];
}

TEST(select_attend_mixed_runs) {
    enum { HD = 12, N = 30 };
    unsigned long long seed = 99;
    float k[N * HD], v[N * HD], q[2 * HD], kf[N * HD], vf[N * HD], ks[N], vs[N], s[2 * 64], y[2 * HD];
    uint16_t k16[N * HD], v16[N * HD];
    int8_t k8[N * HD], v8[N * HD];
    int pos[N];
    kvt_fill(k, N * HD, &seed);
    kvt_fill(v, N * HD, &seed);
    kvt_fill(q, 2 * HD, &seed);
    for (int t = 0; t < N; t++) pos[t] = 3 * t + (t > 20); /* gaps, as after eviction */
    /* rows 0..9 F32, 10..19 F16, 20..29 Q8; the reference reads what each run represents */
    for (int t = 0; t < N; t++) {
        kvp_sel_quant_q8(k + t * HD, HD, k8 + t * HD, &ks[t]);
        kvp_sel_quant_q8(v + t * HD, HD, v8 + t * HD, &vs[t]);
        for (int c = 0; c < HD; c++) {
            k16[t * HD + c] = kvp_f32_to_f16(k[t * HD + c]);
            v16[t * HD + c] = kvp_f32_to_f16(v[t * HD + c]);
            kf[t * HD + c] = t < 10 ? k[t * HD + c] : t < 20 ? kvp_f16_to_f32(k16[t * HD + c]) : ks[t] * k8[t * HD + c];
            vf[t * HD + c] = t < 10 ? v[t * HD + c] : t < 20 ? kvp_f16_to_f32(v16[t * HD + c]) : vs[t] * v8[t * HD + c];
        }
    }
    kvp_rows runs[3] = {
        {KVP_ROWS_F32, 10, k, v, NULL, NULL, pos, 0, NULL, 0, 0},
        {KVP_ROWS_F16, 10, k16 + 10 * HD, v16 + 10 * HD, NULL, NULL, pos + 10, 0, NULL, 0, 0},
        {KVP_ROWS_Q8, 10, k8 + 20 * HD, v8 + 20 * HD, ks + 20, vs + 20, pos + 20, 0, NULL, 0, 0},
    };
    int qpos[2] = {50, 200}; /* the first query sees positions <= 50 only */
    float buf[64 * HD];
    for (int pass = 0; pass < 2; pass++) { /* run by run, then gathered into one buffer */
        kvp_attn_io io = {q, 2, qpos, 1, 1.0f / sqrtf((float)HD), s, 64, y, pass ? buf : NULL, NULL};
        CHECK(kvp_sel_attend(runs, 3, HD, &io) == N);
        for (int r = 0; r < 2; r++) {
            double ref[HD];
            kvt_ref_attend(kf, vf, pos, N, q + r * HD, qpos[r], HD, ref);
            for (int c = 0; c < HD; c++) CHECK_NEAR(y[r * HD + c], ref[c], 2e-5);
        }
        for (int t = 0; t < N; t++) CHECK((pos[t] <= 50) == (s[t] > 0)); /* masked weights are exactly 0 */
    }
}

/* A retrieval query's runs as the cache passes them: an F16 sink run, many short 8-bit
 * blocks scattered over a cold tier (including empty and one-row blocks), then F16 recent
 * rows. Attending the 8-bit rows in place (int8 kernels, per-row scales applied to the
 * scores and the weights) gives the attention of the same rows dequantized to floats first
 * (the cold dequantization this path replaced), for GQA groups and odd head sizes. */
static void kvt_q8_in_place_case(int hd, int nq, unsigned long long seed) {
    enum { NB = 40, MAXR = 33, NS = 4, NR = 9 };
    const int lens[] = {16, 16, 3, 0, 16, 31, 1, 16, 33, 16};
    int n8 = 0, len[NB], off[NB], order[NB];
    for (int b = 0; b < NB; b++) n8 += len[b] = lens[b % 10];
    int n = NS + n8 + NR, *pos = malloc(sizeof(int) * (size_t)n);
    int8_t *k8 = malloc((size_t)n8 * hd), *v8 = malloc((size_t)n8 * hd);
    uint16_t *k16 = malloc(sizeof(uint16_t) * (NS + NR) * (size_t)hd), *v16 = malloc(sizeof(uint16_t) * (NS + NR) * (size_t)hd);
    float *ks = malloc(sizeof(float) * (size_t)n8), *vs = malloc(sizeof(float) * (size_t)n8), x[1024];
    float *kf = malloc(sizeof(float) * (size_t)n * hd), *vf = malloc(sizeof(float) * (size_t)n * hd);
    float *q = malloc(sizeof(float) * (size_t)nq * hd), *s1 = malloc(sizeof(float) * (size_t)nq * (n + 8));
    float *s2 = malloc(sizeof(float) * (size_t)nq * (n + 8)), *y1 = malloc(sizeof(float) * (size_t)nq * hd);
    float *y2 = malloc(sizeof(float) * (size_t)nq * hd);
    kvp_rows *runs = malloc(sizeof(kvp_rows) * (NB + 2));
    for (int b = 0; b < NB; b++) order[b] = (b * 17 + 5) % NB; /* blocks stored scrambled, as in the tier */
    for (int b = 0, o = 0; b < NB; b++) {
        off[order[b]] = o;
        o += len[order[b]];
    }
    for (int i = 0; i < n; i++) pos[i] = 2 * i + (i > n / 2); /* gaps: the unchosen blocks */
    for (int i = 0; i < n; i++) { /* row i of the attended sequence, and where it lives */
        kvt_fill(x, (size_t)hd, &seed);
        for (int c = 0; c < hd; c++) x[c] *= 3; /* scores of a few units: a peaked softmax */
        int r = i - NS, b = 0, f16 = i < NS || i >= NS + n8, h = i < NS ? i : i - n8;
        for (; !f16 && r >= len[b]; b++) r -= len[b];
        for (int part = 0; part < 2; part++) {
            float *dst = (part ? vf : kf) + (size_t)i * hd;
            if (part) kvt_fill(x, (size_t)hd, &seed);
            if (f16) {
                uint16_t *h16 = (part ? v16 : k16) + (size_t)h * hd;
                for (int c = 0; c < hd; c++) dst[c] = kvp_f16_to_f32(h16[c] = kvp_f32_to_f16(x[c]));
                continue;
            }
            int8_t *row = (part ? v8 : k8) + (size_t)(off[b] + r) * hd;
            float *sc = (part ? vs : ks) + off[b] + r;
            kvp_sel_quant_q8(x, hd, row, sc);
            kvp_sel_dequant_q8_ref(row, sc, 1, hd, dst);
        }
    }
    int nr = 0, row = NS;
    runs[nr++] = (kvp_rows){KVP_ROWS_F16, NS, k16, v16, NULL, NULL, pos, 0, NULL, 0, 0};
    for (int b = 0; b < NB; row += len[b], b++)
        runs[nr++] = (kvp_rows){KVP_ROWS_Q8, len[b], k8 + (size_t)off[b] * hd, v8 + (size_t)off[b] * hd, ks + off[b],
                                vs + off[b], pos + row, 0, NULL, 0, 0};
    runs[nr++] = (kvp_rows){KVP_ROWS_F16, NR, k16 + (size_t)NS * hd, v16 + (size_t)NS * hd, NULL, NULL, pos + row, 0, NULL, 0, 0};
    kvt_fill(q, (size_t)nq * hd, &seed);
    int qpos = pos[n - 3]; /* the last two recent rows are masked */
    kvp_attn_io io = {q, nq, &qpos, nq, 1.0f / sqrtf((float)hd), s1, n + 8, y1, NULL, NULL};
    CHECK(kvp_sel_attend(runs, nr, hd, &io) == n);
    kvp_rows one = {KVP_ROWS_F32, n, kf, vf, NULL, NULL, pos, 0, NULL, 0, 0};
    io.s = s2;
    io.y = y2;
    CHECK(kvp_sel_attend(&one, 1, hd, &io) == n);
    double wy = 0, ws = 0;
    for (int i = 0; i < nq * hd; i++) wy = fmax(wy, fabs(y1[i] - y2[i]));
    for (int j = 0; j < nq; j++)
        for (int t = 0; t < n; t++) ws = fmax(ws, fabs(s1[j * (n + 8) + t] - s2[j * (n + 8) + t]));
    CHECKF(wy < 2e-6 && ws < 1e-6, "hd %d nq %d: output differs by %g, weights by %g", hd, nq, wy, ws);
    CHECK(s1[n - 1] == 0 && s1[n - 2] == 0 && s1[n - 3] > 0);
    void *bufs[] = {pos, k8, v8, k16, v16, ks, vs, kf, vf, q, s1, s2, y1, y2, runs};
    for (size_t i = 0; i < KVP_ARRAY_LEN(bufs); i++) free(bufs[i]);
}

TEST(select_attend_q8_in_place_equals_dequantized) {
    const int hds[] = {64, 33, 1, 128, 1023}, nqs[] = {3, 1, 4, 2, 3};
    for (int i = 0; i < 5 && !kvt_failed(); i++) kvt_q8_in_place_case(hds[i], nqs[i], 1000 + (unsigned long long)i);
}

/* ---- eviction policies on hand-made scores ---- */

static int kvt_keep_eq(const uint8_t *keep, const char *want) {
    for (size_t i = 0; i < strlen(want); i++)
        if (keep[i] != (want[i] == '1')) return 0;
    return 1;
}

TEST(select_topk_sinks_recent) {
    const float score[8] = {0.1f, 0.9f, 0.3f, 0.8f, 0.2f, 0.5f, 0.4f, 0.7f};
    const int pos[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    uint8_t keep[8];
    kvp_pick_topk(score, pos, 8, 5, 1, 2, keep); /* sink 0, recent 6 7, best of 1..5: 1 (0.9), 3 (0.8) */
    CHECK(kvt_keep_eq(keep, "11010011"));
    kvp_pick_topk(score, pos, 8, 8, 1, 2, keep); /* within budget: everything */
    CHECK(kvt_keep_eq(keep, "11111111"));
    const float tie[5] = {1, 1, 1, 1, 1};
    kvp_pick_topk(tie, pos, 5, 2, 0, 0, keep); /* ties go to the later position */
    CHECK(kvt_keep_eq(keep, "00011"));
}

TEST(select_streaming_hand) {
    const int pos[9] = {0, 1, 2, 3, 7, 8, 9, 10, 11};
    uint8_t k0[9], *keep[1] = {k0};
    kvp_sel_cfg cfg = {0};
    kvp_sel_args a;
    CHECK_OK(kvp_sel_args_parse("streaming", &a));
    CHECK_OK(kvp_policy_streaming.init(&cfg, &a));
    CHECK(cfg.sinks == 4 && cfg.score == KVP_SCORE_NONE);
    int n = 9;
    const int *pp[1] = {pos};
    kvp_sel_view v = {1, 1, &cfg, &n, pp, NULL};
    kvp_policy_streaming.pick(&v, 0, 6, keep); /* sinks 0..3, then the 2 latest */
    CHECK(kvt_keep_eq(k0, "111100011"));
}

TEST(select_snapkv_pooling_hand) {
    const float score[10] = {0, 0, 5, 0, 0, 0, 0, 1, 0, 0};
    const int pos[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    uint8_t keep[10];
    /* window 2 (slots 8, 9); max pooling of width 3 over slots 0..7 gives 0 5 5 5 0 0 1 1;
     * the two best: slots 1, 2, 3 tie at 5 and the later ones win: 3, 2 */
    kvp_snapkv_pick_stream(score, pos, 10, 4, 0, 2, 3, keep);
    CHECK(kvt_keep_eq(keep, "0011000011"));
    kvp_snapkv_pick_stream(score, pos, 10, 4, 0, 2, 1, keep); /* no pooling: 2 (5) and 7 (1) */
    CHECK(kvt_keep_eq(keep, "0010000111"));
    float y[6];
    const float x[6] = {1, 3, 2, 0, 0, 4};
    kvp_maxpool1d(x, 6, 3, y);
    CHECK(y[0] == 3 && y[1] == 3 && y[2] == 3 && y[3] == 2 && y[4] == 4 && y[5] == 4);
}

TEST(select_pyramid_schedule_hand) {
    int b[5];
    /* above the window: 100 per layer on average; the last layer 100/20 = 5, the first
     * 2 * 100 - 5 = 195; floor(195 - 47.5 l) = 195 147 100 52 5 (499), +1 to layer 0 */
    kvp_pyramid_budgets(5, 120, 20, 20, 0, b);
    CHECK(b[0] == 216 && b[1] == 167 && b[2] == 120 && b[3] == 72 && b[4] == 25);
    kvp_pyramid_budgets(3, 10, 32, 20, 32, b); /* budget below the window: uniform */
    CHECK(b[0] == 10 && b[1] == 10 && b[2] == 10);
    /* span 32: the paper's fall per layer, (195 - 5) / 31 = 6.129, around the mean 100:
     * floor(112.258 - 6.129 l) = 112 106 100 93 87 (498), +1 to layers 0 and 1 */
    kvp_pyramid_budgets(5, 120, 20, 20, 32, b);
    CHECK(b[0] == 133 && b[1] == 127 && b[2] == 120 && b[3] == 113 && b[4] == 107);
    int p32[32], q32[32]; /* a model of 32 layers gets the paper's schedule either way */
    kvp_pyramid_budgets(32, 300, 32, 20, 32, p32);
    kvp_pyramid_budgets(32, 300, 32, 20, 0, q32);
    CHECK(!memcmp(p32, q32, sizeof p32) && p32[31] == 32 + 268 / 20);
}

TEST(select_prefixkv_threshold_hand) {
    /* 2 layers, 1 KV head, 5 slots each, window 1, no sinks, budget 3 per layer (6 in all).
     * Layer 0's candidate importance 0.9 0.05 0.05 0 (cumulative 0.9 0.95 1 1), layer 1's is
     * flat (0.25 0.5 0.75 1). The largest threshold whose prefixes fit 6 - 2 = 4 candidates
     * is 0.75: layer 0 needs 1, layer 1 needs 3; budgets 1 + 1 and 1 + 3. */
    const float s0[5] = {0.9f, 0.05f, 0.05f, 0, 7}, s1[5] = {0.25f, 0.25f, 0.25f, 0.25f, 7};
    const int pos[5] = {0, 1, 2, 3, 4};
    const float *sc[2] = {s0, s1};
    const int *pp[2] = {pos, pos};
    int n[2] = {5, 5}, per[2];
    kvp_sel_cfg cfg = {0};
    kvp_sel_args a;
    CHECK_OK(kvp_sel_args_parse("prefixkv:window=1,sink=0,kernel=1", &a));
    CHECK_OK(kvp_policy_prefix.init(&cfg, &a));
    kvp_sel_view v = {2, 1, &cfg, n, pp, sc};
    kvp_policy_prefix.budgets(&v, 3, per);
    CHECK(per[0] == 2 && per[1] == 4);
    uint8_t k0[5], *keep[1] = {k0};
    kvp_policy_prefix.pick(&v, 1, per[1], keep); /* the window and the 3 latest of the tie */
    CHECK(kvt_keep_eq(k0, "01111"));
    kvp_policy_prefix.pick(&v, 0, per[0], keep);
    CHECK(kvt_keep_eq(k0, "10001"));
}

TEST(select_kvcrush_hand) {
    /* 1 layer, 2 KV heads, 8 slots, budget 4, share 50%: 2 by the base (h2o, no recent), 2
     * representatives. Base score = h0/36 + h1/36: slots 7 (1.11) and 0 (0.22) win. Head 0's
     * top half: 0 2 4 6; head 1's: 7 and, of the zero ties, the later 6 5 4. Signatures of
     * the candidates 1..6: 0 1 0 3 2 3; their majority anchor is 0; by (distance, position):
     * 1 3 2 5 4 6; evenly spaced picks at floor(6/4) = 1 and floor(18/4) = 4: slots 3 and 4. */
    const float h0[8] = {8, 1, 7, 2, 6, 3, 5, 4}, h1[8] = {0, 0, 0, 0, 0, 0, 0, 36};
    const int pos[8] = {0, 1, 2, 3, 4, 5, 6, 7};
    const float *sc[2] = {h0, h1};
    const int *pp[2] = {pos, pos};
    int n[2] = {8, 8};
    kvp_sel_cfg cfg = {0};
    kvp_sel_args a;
    CHECK_OK(kvp_sel_args_parse("kvcrush:base=h2o,share=50,recent=0", &a));
    CHECK_OK(kvp_policy_kvcrush.init(&cfg, &a));
    CHECK_OK(kvp_sel_args_check(&a));
    kvp_sel_view v = {1, 2, &cfg, n, pp, sc};
    uint8_t k0[8], k1[8], *keep[2] = {k0, k1};
    uint32_t sig[8];
    kvp_kvcrush_signatures(sc, pos, 2, 8, sig);
    CHECK(sig[0] == 1 && sig[1] == 0 && sig[2] == 1 && sig[3] == 0 && sig[4] == 3 && sig[5] == 2 && sig[6] == 3 &&
          sig[7] == 2);
    kvp_policy_kvcrush.pick(&v, 0, 4, keep);
    CHECK(kvt_keep_eq(k0, "10011001") && !memcmp(k0, k1, 8)); /* token-level: every head keeps the same */
}

/* ---- Quest and block picking ---- */

TEST(select_quest_bound_hand) {
    /* page A: keys (1,1), (3,-1): centre (2,0), radius (1,1); q = (1,-2): bound 2 + 3 = 5 =
     * the true maximum 3 + 2. Page B: keys (0,2), (-1,-3): centre (-.5,-.5), radius
     * (.5,2.5): bound 0.5 + 5.5 = 6 >= its true maximum 5. (All exact in F16.) */
    const float lo[4] = {1, -1, -1, -3}, hi[4] = {3, 1, 0, 2}, q[4] = {1, -2, -1, 0};
    uint16_t center[4], radius[4];
    kvp_quest_box_f16(lo, hi, 2, center, radius);
    kvp_quest_box_f16(lo + 2, hi + 2, 2, center + 2, radius + 2);
    CHECK(kvp_f16_to_f32(center[0]) == 2 && kvp_f16_to_f32(radius[3]) == 2.5f);
    float absq[4], tmp[4], ub[4];
    kvp_quest_bounds(q, 2, 2, center, radius, 2, absq, tmp, ub);
    CHECK_NEAR(ub[0], 5, 1e-6);
    CHECK_NEAR(ub[1], 6, 1e-6);
    CHECK_NEAR(ub[2], -2 + 1, 1e-6); /* q = (-1, 0): -2 + 1 = -1 = max(-1, -3) */
    CHECK_NEAR(ub[3], 0.5 + 0.5, 1e-6); /* 0.5 + 0.5 = 1 = max(0, 1) */
}

/* With keys that F16 cannot represent exactly, the rounded box still holds every key, so the
 * bound is still an upper bound of every q.k of its page. */
TEST(select_quest_bound_is_upper) {
    enum { HD = 19, T = 16, NB = 7 };
    unsigned long long seed = 5;
    float k[NB][T][HD], lo[HD], hi[HD], q[HD], absq[HD], tmp[NB], ub[NB];
    uint16_t c[NB * HD], r[NB * HD];
    kvt_fill(&k[0][0][0], sizeof k / sizeof(float), &seed);
    for (int b = 0; b < NB; b++) {
        for (int i = 0; i < HD; i++) {
            lo[i] = hi[i] = 3 * k[b][0][i];
            for (int t = 1; t < T; t++) lo[i] = fminf(lo[i], 3 * k[b][t][i]), hi[i] = fmaxf(hi[i], 3 * k[b][t][i]);
        }
        kvp_quest_box_f16(lo, hi, HD, c + b * HD, r + b * HD);
        for (int i = 0; i < HD; i++) {
            float cc = kvp_f16_to_f32(c[b * HD + i]), rr = kvp_f16_to_f32(r[b * HD + i]);
            CHECK(cc - rr <= lo[i] && cc + rr >= hi[i]);
        }
    }
    for (int trial = 0; trial < 20; trial++) {
        kvt_fill(q, HD, &seed);
        kvp_quest_bounds(q, 1, HD, c, r, NB, absq, tmp, ub);
        for (int b = 0; b < NB; b++)
            for (int t = 0; t < T; t++) {
                double d = 0;
                for (int i = 0; i < HD; i++) d += (double)q[i] * 3 * k[b][t][i];
                CHECK(ub[b] >= d - 1e-4);
            }
    }
}

TEST(select_pick_blocks_hand) {
    const float score[5] = {3, 9, 1, 7, 5};
    const int len[5] = {16, 16, 16, 16, 10};
    int order[5], sel[5];
    CHECK(kvp_pick_blocks(score, len, 5, 40, order, sel) == 2); /* 9, 7; then 10 > 8 left */
    CHECK(sel[0] == 1 && sel[1] == 3);
    CHECK(kvp_pick_blocks(score, len, 5, 42, order, sel) == 3); /* 10 left: block 4 fits */
    CHECK(sel[0] == 1 && sel[1] == 3 && sel[2] == 4);
    CHECK(kvp_pick_blocks(score, len, 5, 9, order, sel) == 0);
    const float tie[4] = {1, 1, 1, 1};
    const int l4[4] = {2, 2, 2, 2};
    CHECK(kvp_pick_blocks(tie, l4, 4, 4, order, sel) == 2 && sel[0] == 0 && sel[1] == 1); /* ties: earlier */
}
