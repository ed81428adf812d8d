/*
 * test_select_cache.c: the selection caches through the KV-cache interface: hand-computed
 * steps for H2O, StreamingLLM, SnapKV, Quest and SentenceKV on tiny shapes; GQA pooling
 * (one stream per KV head, scores summed over its query heads); the budget after every
 * decoding step on a real model for every policy; equality with the full cache when the
 * budget keeps everything; the cold tier's round trips (bit-exact for F16, in memory and in
 * a memory-mapped file).
 */
#include <unistd.h>

#include "common/common.h"
#include "engine/engine.h"
#include "kv/select.h"
#include "kv/select_cold.h"
#include "kvpack.h"
#include "test.h"

/* A selection cache of shape (1 layer, nh heads, nkv KV heads, hd) on one thread. */
static kvp_kv *kvt_sel(const char *select, const char *budget, const char *cold, int nh, int nkv, int hd,
                       const uint8_t *ends, int vocab) {
    kvp_kv_shape sh = {1, nh, nkv, hd, 64};
    kvp_sel_params p = {"f16", select, budget, cold, ends, vocab};
    kvp_kv *kv = NULL;
    if (kvp_kv_select_new(&p, &sh, NULL, &kv) != 0) kvt_fail(__FILE__, __LINE__, "%s: %s", select, kvp_errmsg());
    return kv;
}

/* One step of n tokens with keys k, values v (n, nkv * hd) and queries q (n, nh * hd). */
static int kvt_step(kvp_kv *kv, int n, const int *tok, const float *k, const float *v, const float *q, float *out) {
    int pos = kv->n_pos;
    KVP_TRY(kv->vt->begin(kv, pos, n, tok));
    KVP_TRY(kv->vt->append(kv, 0, pos, n, k, v));
    KVP_TRY(kv->vt->attend(kv, 0, pos, n, q, out));
    return kv->vt->end(kv);
}

/* 1 when stream (0, h) holds exactly the positions `want` (n of them). */
static int kvt_holds(const kvp_kv *kv, int h, const int *want, int n) {
    int pos[64], got = kvp_kv_select_positions(kv, 0, h, pos, 64);
    if (got != n) return 0;
    for (int i = 0; i < n; i++)
        if (pos[i] != want[i]) return 0;
    return 1;
}

/* ---- H2O and StreamingLLM, one token at a time (head dim 1, scale 1) ----
 * Keys 10 0 0 10 0 0, queries 1: every query puts ~all its weight on keys 0 and 3.
 * H2O with budget 3 and one recent token: after token 3 the accumulators are about
 * 3.5, 1.4e-4 (three queries saw token 1), 9e-5 (two saw token 2), 0.5: token 2 goes; after
 * token 4 token 1 goes, after token 5 token 4 goes. StreamingLLM (1 sink) keeps 0, 4, 5. */
static const float kvt_k6[6] = {10, 0, 0, 10, 0, 0}, kvt_v6[6] = {1, 2, 3, 4, 5, 6}, kvt_q1 = 1;

TEST(select_h2o_hand_steps) {
    kvp_kv *kv = kvt_sel("h2o:recent=1", "3", NULL, 1, 1, 1, NULL, 0);
    CHECK(kv);
    static const int after[6][3] = {{0}, {0, 1}, {0, 1, 2}, {0, 1, 3}, {0, 3, 4}, {0, 3, 5}};
    static const int count[6] = {1, 2, 3, 3, 3, 3};
    float out;
    for (int t = 0; t < 6; t++) {
        CHECK_OK(kvt_step(kv, 1, &t, &kvt_k6[t], &kvt_v6[t], &kvt_q1, &out));
        CHECKF(kvt_holds(kv, 0, after[t], count[t]), "after token %d", t);
    }
    float k, v;
    CHECK(kv->vt->read(kv, 0, 2, 1, &k, &v) == KVP_EUNSUPPORTED);
    CHECK_OK(kv->vt->read(kv, 0, 3, 1, &k, &v));
    CHECK(k == 10 && v == 4);
    CHECK_OK(kv->vt->truncate(kv, 4)); /* forgets position 5: 0 and 3 stay */
    const int kept[2] = {0, 3}, next[3] = {0, 3, 4};
    CHECK(kv->n_pos == 4 && kvt_holds(kv, 0, kept, 2));
    int t = 4;
    CHECK_OK(kvt_step(kv, 1, &t, &kvt_k6[4], &kvt_v6[4], &kvt_q1, &out));
    CHECK(kvt_holds(kv, 0, next, 3));
    kvp_kv_free(kv);
}

TEST(select_streaming_hand_steps) {
    kvp_kv *kv = kvt_sel("streaming:sink=1", "3", NULL, 1, 1, 1, NULL, 0);
    CHECK(kv);
    float out;
    for (int t = 0; t < 6; t++) CHECK_OK(kvt_step(kv, 1, &t, &kvt_k6[t], &kvt_v6[t], &kvt_q1, &out));
    const int want[3] = {0, 4, 5};
    CHECK(kvt_holds(kv, 0, want, 3));
    kvp_kv_free(kv);
}

/* ---- SnapKV: one prefill batch of 8 then eviction to 4 ----
 * Key 2 is 10, the others 0; the window (queries 6 and 7) puts ~all its weight on token 2,
 * and equal small weights on the rest. Kept: the window 6 7, token 2, and with pooling of
 * width 3 the tie 1 2 3 resolved to the latest (3); without pooling the tie of 0..5 (5). */
TEST(select_snapkv_hand_batch) {
    const float k[8] = {0, 0, 10, 0, 0, 0, 0, 0}, v[8] = {1, 2, 3, 4, 5, 6, 7, 8}, q[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    const int tok[8] = {0}, pooled[4] = {2, 3, 6, 7}, raw[4] = {2, 5, 6, 7};
    float out[8];
    kvp_kv *kv = kvt_sel("snapkv:window=2,kernel=3", "4", NULL, 1, 1, 1, NULL, 0);
    CHECK(kv);
    CHECK_OK(kvt_step(kv, 8, tok, k, v, q, out));
    CHECK(kvt_holds(kv, 0, pooled, 4));
    kvp_kv_free(kv);
    kv = kvt_sel("snapkv:window=2,kernel=1", "4", NULL, 1, 1, 1, NULL, 0);
    CHECK(kv);
    CHECK_OK(kvt_step(kv, 8, tok, k, v, q, out));
    CHECK(kvt_holds(kv, 0, raw, 4));
    kvp_kv_free(kv);
}

/* ---- GQA: scores pooled over the query heads of a KV head; each KV head stored once ----
 * Head dim 2, keys (10,0) (0,10) (0,0) (0,0). Query head 0 asks (1,0), query head 1 asks
 * (0,1). Sharing one KV head (group 2), the pooled accumulators are ~5 (token 0: head 0's 4
 * queries and head 1's first, which sees only token 0) and ~3 (token 1): H2O with budget 2
 * keeps 0 and 1. With two KV heads, each keeps its own favourite and the most recent. */
TEST(select_gqa_pooling) {
    const float k1[8] = {10, 0, 0, 10, 0, 0, 0, 0}, v1[8] = {1, 1, 2, 2, 3, 3, 4, 4};
    const float q[16] = {1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1};
    const int tok[4] = {0}, both[2] = {0, 1};
    float out[16];
    kvp_kv *kv = kvt_sel("h2o:recent=0", "2", NULL, 2, 1, 2, NULL, 0);
    CHECK(kv);
    CHECK_OK(kvt_step(kv, 4, tok, k1, v1, q, out));
    CHECK(kvt_holds(kv, 0, both, 2));
    kvp_kv_stats st;
    kv->vt->stats(kv, &st); /* 2 tokens x (K + V: 2 x 2 x 2 bytes, position 4, accumulator 4) */
    CHECK(st.bytes_hot == 2 * (8 + 4 + 4));
    kvp_kv_free(kv);
    float k2[16], v2[16]; /* two KV heads with the same keys: (t, head) rows */
    for (int t = 0; t < 4; t++)
        for (int h = 0; h < 2; h++) {
            memcpy(k2 + t * 4 + h * 2, k1 + t * 2, 2 * sizeof(float));
            memcpy(v2 + t * 4 + h * 2, v1 + t * 2, 2 * sizeof(float));
        }
    kv = kvt_sel("h2o:recent=1", "2", NULL, 2, 2, 2, NULL, 0);
    CHECK(kv);
    CHECK_OK(kvt_step(kv, 4, tok, k2, v2, q, out));
    const int h0[2] = {0, 3}, h1[2] = {1, 3};
    CHECK(kvt_holds(kv, 0, h0, 2) && kvt_holds(kv, 1, h1, 2));
    kvp_kv_free(kv);
}

/* ---- Quest: pages of 2, budget 3, head dim 2 ----
 * Keys 0 except token 5's (10, 0); values (t, 1); queries (1, 0). At token 8 (alone in its
 * page, the recent part) one page fits: page [4, 6), whose bound 10 beats the others' 0.
 * The output is attention over tokens 4, 5 and 8 exactly. */
static void kvt_quest_feed(kvp_kv *kv, float *out) {
    for (int t = 0; t < 9; t++) {
        float k[2] = {t == 5 ? 10.0f : 0.0f, 0}, v[2] = {(float)t, 1}, q[2] = {1, 0};
        if (kvt_step(kv, 1, &t, k, v, q, out) != 0) kvt_fail(__FILE__, __LINE__, "step %d: %s", t, kvp_errmsg());
    }
}

TEST(select_quest_hand) {
    kvp_kv *kv = kvt_sel("quest:page=2", "3", "mem,f16", 1, 1, 2, NULL, 0);
    CHECK(kv);
    float out[2];
    kvt_quest_feed(kv, out);
    double s = 10 / sqrt(2.0), z = exp(s) + 2, y0 = (4 + 5 * exp(s) + 8) / z;
    CHECK_NEAR(out[0], y0, 1e-4);
    CHECK_NEAR(out[1], 1, 1e-5);
    kvp_sel_info in;
    CHECK_OK(kvp_kv_select_info(kv, &in));
    CHECK(in.max_attended == 3 && in.n_blocks == 5 && in.cold_blocks == 4 && in.hot_tokens == 1);
    kvp_kv_stats st;
    kv->vt->stats(kv, &st);
    CHECK(st.bytes_cold == 4 * 128); /* 4 pages, K and V parts each 64-byte aligned */
    kvp_kv_free(kv);
    kv = kvt_sel("quest:page=2", "3", NULL, 1, 1, 2, NULL, 0); /* the default 8-bit cold tier */
    CHECK(kv);
    kvt_quest_feed(kv, out);
    CHECK_NEAR(out[0], y0, 0.05);
    kvp_kv_free(kv);
}

/* ---- SentenceKV: sentences end at token 9 or after 4 tokens ----
 * Tokens 1 9 | 2 3 9 | 4 9 | 5: sentences A [0,2), B [2,5), C [5,7), D [7,8). Keys 0 except
 * B's (10,0) (8,0) (9,0): mean keys 0, (9,0), 0. At token 7 (query (1,0), its sentence's
 * only query) with budget 4: recent D (1 token), then B (mean score 9, 3 tokens) fits. */
TEST(select_sentencekv_hand) {
    uint8_t ends[10] = {0};
    ends[9] = 1;
    const int tok[8] = {1, 9, 2, 3, 9, 4, 9, 5};
    const float kx[8] = {0, 0, 10, 8, 9, 0, 0, 0};
    kvp_kv *kv = kvt_sel("sentencekv:max=4,sink=0,recent=0", "4", "mem,f16", 1, 1, 2, ends, 10);
    CHECK(kv);
    float out[2];
    for (int t = 0; t < 8; t++) {
        float k[2] = {kx[t], 0}, v[2] = {(float)t, 1}, q[2] = {1, 0};
        CHECK_OK(kvt_step(kv, 1, &tok[t], k, v, q, out));
    }
    double w[4] = {10, 8, 9, 0}, z = 0, y0 = 0; /* rows 2 3 4 7, scale 1/sqrt(2) */
    const int rows[4] = {2, 3, 4, 7};
    for (int i = 0; i < 4; i++) z += w[i] = exp(w[i] / sqrt(2.0));
    for (int i = 0; i < 4; i++) y0 += w[i] / z * rows[i];
    CHECK_NEAR(out[0], y0, 1e-4);
    kvp_sel_info in;
    CHECK_OK(kvp_kv_select_info(kv, &in));
    CHECK(in.n_blocks == 4 && in.max_attended == 4);
    kvp_kv_free(kv);
    kv = kvt_sel("sentencekv:max=4,sink=0,recent=0", "4", "mem,f16", 1, 1, 2, NULL, 0); /* no ends: every 4 */
    CHECK(kv);
    for (int t = 0; t < 8; t++) {
        float k[2] = {kx[t], 0}, v[2] = {(float)t, 1}, q[2] = {1, 0};
        CHECK_OK(kvt_step(kv, 1, &tok[t], k, v, q, out));
    }
    CHECK_OK(kvp_kv_select_info(kv, &in));
    CHECK(in.n_blocks == 2);
    kvp_kv_free(kv);
}

/* ---- on a real model: the budget after every step, and equality at a full budget ---- */

static const char *kvt_policies[] = {"streaming", "h2o", "snapkv", "pyramidkv", "prefixkv", "kvcrush", "quest",
                                     "sentencekv"};

static kvp_ctx *kvt_sel_ctx(kvp_model *m, const char *select, const char *budget, const char *cold, int batch) {
    kvp_ctx_params p = kvp_ctx_default_params();
    p.n_ctx = 512;
    p.n_batch = batch;
    p.select = select;
    p.budget = budget;
    p.cold = cold;
    kvp_ctx *c = NULL;
    if (kvp_ctx_new(m, &p, &c) != 0) kvt_fail(__FILE__, __LINE__, "%s: %s", select ? select : "full", kvp_errmsg());
    return c;
}

/* Checks the budget after the last step: eviction streams hold at most their budget (the
 * sum over layers for per-layer budgets); retrieval queries attended at most it. */
static int kvt_within(kvp_ctx *c, const char *policy, const kvp_model_info *mi) {
    kvp_sel_info in;
    if (kvp_kv_select_info(kvp_ctx_kv(c), &in) != 0) return 0;
    if (!strcmp(policy, "quest") || !strcmp(policy, "sentencekv"))
        return in.max_attended <= in.budget && in.hot_tokens <= 4 + 16 + 2 * 64;
    if (!strcmp(policy, "pyramidkv") || !strcmp(policy, "prefixkv"))
        return in.total_stored <= mi->n_layers * mi->n_kv_heads * in.budget;
    return in.max_stored <= in.budget;
}

TEST(select_budget_holds_every_step) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    const kvp_model_info *mi = kvp_model_get_info(m);
    const char *budgets[] = {"24", "20%"};
    for (size_t b = 0; b < 2; b++)
        for (size_t i = 0; i < KVP_ARRAY_LEN(kvt_policies); i++) {
            kvp_ctx *c = kvt_sel_ctx(m, kvt_policies[i], budgets[b], NULL, 16);
            CHECK(c);
            int tok[40];
            for (int t = 0; t < 40; t++) tok[t] = t ? 3 + (t * 37) % 500 : 1;
            CHECK_OK(kvp_ctx_decode(c, tok, 40, NULL, 0));
            CHECKF(kvt_within(c, kvt_policies[i], mi), "%s %s after the prompt", kvt_policies[i], budgets[b]);
            for (int s = 0; s < 150; s++) {
                int t = 3 + (s * 53) % 500;
                CHECK_OK(kvp_ctx_decode(c, &t, 1, NULL, 0));
                CHECKF(kvt_within(c, kvt_policies[i], mi), "%s %s after step %d", kvt_policies[i], budgets[b], s);
            }
            kvp_ctx_free(c);
        }
    kvp_model_free(m);
}

/* Every policy but PyramidKV (whose linear schedule trims the later layers even at a 100%
 * mean budget) keeps every token at a 100% budget and must then match the full cache. */
TEST(select_full_budget_equals_full_cache) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    int V = kvp_model_get_info(m)->vocab_size, tok[60];
    for (int t = 0; t < 60; t++) tok[t] = t ? 3 + (t * 71) % 500 : 1;
    float *ref = malloc(sizeof(float) * 60 * V), *got = malloc(sizeof(float) * 60 * V);
    kvp_ctx *full = kvt_sel_ctx(m, NULL, NULL, NULL, 7);
    CHECK(full && ref && got);
    CHECK_OK(kvp_ctx_decode(full, tok, 60, ref, 1));
    for (size_t i = 0; i < KVP_ARRAY_LEN(kvt_policies); i++) {
        if (!strcmp(kvt_policies[i], "pyramidkv")) continue; /* its schedule gives later layers less than 100% */
        int retr = !strcmp(kvt_policies[i], "quest") || !strcmp(kvt_policies[i], "sentencekv");
        kvp_ctx *c = kvt_sel_ctx(m, kvt_policies[i], "100%", retr ? "mem,f16" : NULL, 7);
        CHECK(c);
        CHECK_OK(kvp_ctx_decode(c, tok, 60, got, 1));
        double worst = 0;
        for (int j = 0; j < 60 * V; j++) worst = fmax(worst, fabs(ref[j] - got[j]));
        CHECKF(worst < 1e-4, "%s: max logit difference %g", kvt_policies[i], worst);
        kvp_ctx_free(c);
    }
    kvp_ctx_free(full);
    free(ref);
    free(got);
    kvp_model_free(m);
}

/* Decodes 80 tokens of m (48 in one batch, then 32 one at a time; context 128, batch 16) under
 * KV cache `kv` (NULL: the default) and policy `select` at a 30% budget, once on 1 thread and once
 * on 3, into logits a and b, (80, vocab) floats each, owned by the caller. Returns 1 when a and b
 * are identical bit for bit, 0 when they differ, or the negative KVP_E* code of a failed call.
 * Shared with test_select_kq.c. */
int kvt_sel_threads_identical(kvp_model *m, const char *kv, const char *select, float *a, float *b) {
    int V = kvp_model_get_info(m)->vocab_size, tok[80], rc = 0;
    for (int t = 0; t < 80; t++) tok[t] = t ? 3 + (t * 29) % 500 : 1;
    for (int k = 0; k < 2 && rc == 0; k++) {
        kvp_ctx_params p = kvp_ctx_default_params();
        kvp_ctx *c = NULL;
        p.n_ctx = 128;
        p.n_batch = 16;
        p.n_threads = k ? 3 : 1;
        if (kv) p.kv = kv;
        p.select = select;
        p.budget = "30%";
        float *out = k ? b : a;
        rc = kvp_ctx_new(m, &p, &c);
        if (rc == 0) rc = kvp_ctx_decode(c, tok, 48, out, 1);
        for (int t = 48; t < 80 && rc == 0; t++) rc = kvp_ctx_decode(c, &tok[t], 1, out + (size_t)t * V, 0);
        kvp_ctx_free(c);
    }
    return rc < 0 ? rc : !memcmp(a, b, sizeof(float) * 80 * (size_t)V);
}

/* Results do not depend on the thread count: every policy, 1 and 3 threads, bit for bit. */
TEST(select_threads_identical) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    int V = kvp_model_get_info(m)->vocab_size;
    float *a = malloc(sizeof(float) * 80 * V), *b = malloc(sizeof(float) * 80 * V);
    CHECK(a && b);
    for (size_t i = 0; i < KVP_ARRAY_LEN(kvt_policies); i++) {
        const int same = kvt_sel_threads_identical(m, NULL, kvt_policies[i], a, b);
        CHECKF(same == 1, "%s: %d (%s)", kvt_policies[i], same, same < 0 ? kvp_errmsg() : "logits differ");
    }
    free(a);
    free(b);
    kvp_model_free(m);
}

TEST(select_bad_specs) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    kvp_ctx_params p = kvp_ctx_default_params();
    kvp_ctx *c = NULL;
    const char *sel[] = {"lru", "snapkv:windw=3", "snapkv:kernel=4", "h2o", "quest:page=0", "h2o", NULL};
    const char *bud[] = {"10", "10", "10", "0", "10", NULL, "10"};
    for (int i = 0; i < 7; i++) {
        p.select = sel[i];
        p.budget = bud[i];
        CHECKF(kvp_ctx_new(m, &p, &c) == KVP_EINVAL && !c, "%s / %s", sel[i] ? sel[i] : "-", bud[i] ? bud[i] : "-");
    }
    p.select = "h2o";
    p.budget = "10";
    p.cold = "file:/tmp/x";
    CHECK(kvp_ctx_new(m, &p, &c) == KVP_EINVAL); /* a cold tier is for retrieval policies */
    p.select = "quest";
    p.cold = "disk";
    CHECK(kvp_ctx_new(m, &p, &c) == KVP_EINVAL);
    kvp_model_free(m);
}

/* A composite spec names storage, policy, budget and cold tier in one string (what eval's
 * --kv takes); the cache reports it back in the same canonical form. */
TEST(select_composite_spec) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    const char *in[] = {"f16+snapkv:window=8,kernel=3@50%", "f32+h2o@64", "f16+quest@25%@mem,f16"};
    const char *want[] = {"f16+snapkv:window=8;kernel=3@50%", "f32+h2o@64", "f16+quest@25%@mem;f16"};
    for (int i = 0; i < 3; i++) {
        kvp_ctx_params p = kvp_ctx_default_params();
        p.n_ctx = 128;
        p.kv = in[i];
        kvp_ctx *c = NULL;
        CHECK_OK(kvp_ctx_new(m, &p, &c));
        kvp_kv_stats st;
        kvp_ctx_kv_stats(c, &st);
        CHECKF(!strcmp(st.spec, want[i]), "%s", st.spec);
        kvp_ctx_free(c);
        p.kv = want[i]; /* the canonical form is accepted too */
        CHECK_OK(kvp_ctx_new(m, &p, &c));
        kvp_ctx_free(c);
    }
    kvp_ctx_params p = kvp_ctx_default_params();
    kvp_ctx *c = NULL;
    p.kv = "f16+h2o";
    CHECK(kvp_ctx_new(m, &p, &c) == KVP_EINVAL); /* no budget */
    p.kv = "k4v4+h2o@50%"; /* KIVI-style storage, with its default recent window */
    CHECK_OK(kvp_ctx_new(m, &p, &c));
    kvp_kv_stats st;
    kvp_ctx_kv_stats(c, &st);
    CHECKF(!strcmp(st.spec, "k4v4:r128+h2o@50%"), "%s", st.spec);
    kvp_ctx_free(c);
    c = NULL;
    p.kv = "mikv+h2o@50%";
    CHECK(kvp_ctx_new(m, &p, &c) == KVP_EUNSUPPORTED); /* MiKV is a cache of its own, not a row format */
    p.kv = "f16+h2o@50%";
    p.select = "snapkv";
    CHECK(kvp_ctx_new(m, &p, &c) == KVP_EINVAL); /* two policies */
    kvp_model_free(m);
}

/* ---- the cold tier ---- */

static void kvt_block(uint16_t *k, uint16_t *v, int nh, int n, unsigned long long *s) {
    for (int i = 0; i < nh * n * 24; i++) {
        k[i] = kvp_f32_to_f16(4 * kvt_randf(s));
        v[i] = kvp_f32_to_f16(kvt_randf(s));
    }
}

/* Puts blocks of 5, 16 and 1 tokens, reads them back bit for bit (f16), rewinds and reuses. */
static void kvt_cold_round_trip(const char *spec) {
    enum { NH = 3, HD = 24 };
    kvp_tier *c = NULL;
    CHECK_OK(kvp_tier_new(spec, NH, HD, &c));
    unsigned long long s = 11;
    uint16_t k[3][NH * 16 * HD], v[3][NH * 16 * HD], gk[NH * 16 * HD], gv[NH * 16 * HD];
    const int len[3] = {5, 16, 1};
    int64_t id[3];
    for (int b = 0; b < 3; b++) {
        kvt_block(k[b], v[b], NH, len[b], &s);
        CHECK_OK(kvp_tier_put(c, KVP_TYPE_F16, k[b], v[b], len[b], len[b], &id[b]));
        CHECK(id[b] == b && kvp_tier_len(c, id[b]) == len[b]);
    }
    for (int b = 0; b < 3; b++) {
        CHECK_OK(kvp_tier_get_f16(c, id[b], gk, gv));
        CHECKF(!memcmp(gk, k[b], sizeof(uint16_t) * NH * len[b] * HD) &&
               !memcmp(gv, v[b], sizeof(uint16_t) * NH * len[b] * HD), "%s block %d", spec, b);
    }
    uint64_t two = 0;
    kvp_tier_rewind(c, 2);
    two = kvp_tier_bytes(c);
    kvp_tier_rewind(c, 1);
    CHECK(kvp_tier_count(c) == 1 && kvp_tier_bytes(c) < two);
    CHECK_OK(kvp_tier_put(c, KVP_TYPE_F16, k[2], v[2], 1, 1, &id[2]));
    CHECK(id[2] == 1);
    CHECK_OK(kvp_tier_get_f16(c, 1, gk, gv));
    CHECK(!memcmp(gk, k[2], sizeof(uint16_t) * NH * HD));
    kvp_tier_free(c);
}

TEST(select_cold_round_trip_f16_mem) { kvt_cold_round_trip("mem,f16"); }

TEST(select_cold_round_trip_f16_file) {
    char path[64], spec[80];
    snprintf(path, sizeof path, "/tmp/kvt_cold_%d.bin", (int)getpid());
    snprintf(spec, sizeof spec, "file:%s,f16", path);
    kvp_tier *c = NULL;
    CHECK_OK(kvp_tier_new(spec, 1, 8, &c));
    CHECK(access(path, F_OK) == 0);
    kvp_tier_free(c);
    CHECK(access(path, F_OK) != 0); /* removed when the tier closes */
    kvt_cold_round_trip(spec);
}

/* The 8-bit encoding: what the cold tier reads back is exactly the reference quantizer's
 * dequantization of the F16 rows, the run view reads the same values, and re-encoding the
 * decoded rows gives the same bytes. */
TEST(select_cold_q8_exact) {
    enum { NH = 2, HD = 24, N = 7 };
    kvp_tier *c = NULL;
    CHECK_OK(kvp_tier_new("mem", NH, HD, &c));
    CHECK(!strcmp(kvp_tier_spec(c), "mem;q8"));
    unsigned long long s = 3;
    uint16_t k[NH * N * HD], v[NH * N * HD];
    kvt_block(k, v, NH, N, &s);
    int64_t id, id2;
    CHECK_OK(kvp_tier_put(c, KVP_TYPE_F16, k, v, N, N, &id));
    float dk[N * HD], dv[N * HD], x[HD], scale;
    int8_t q[HD];
    for (int h = 0; h < NH; h++) {
        kvp_tier_read(c, id, h, dk, dv);
        kvp_rows r;
        kvp_tier_rows(c, id, h, 2, 3, 100, &r);
        CHECK(r.fmt == KVP_ROWS_Q8 && r.n == 3 && r.pos0 == 100);
        for (int t = 0; t < N; t++) {
            for (int i = 0; i < HD; i++) x[i] = kvp_f16_to_f32(k[(h * N + t) * HD + i]);
            kvp_sel_quant_q8(x, HD, q, &scale);
            for (int i = 0; i < HD; i++) CHECK(dk[t * HD + i] == scale * (float)q[i]);
            if (t >= 2 && t < 5) CHECK(r.ks[t - 2] == scale && !memcmp(r.k + (size_t)(t - 2) * HD, q, HD));
        }
    }
    uint16_t gk[NH * N * HD], gv[NH * N * HD], gk2[NH * N * HD], gv2[NH * N * HD];
    CHECK_OK(kvp_tier_get_f16(c, id, gk, gv));
    CHECK_OK(kvp_tier_put(c, KVP_TYPE_F16, gk, gv, N, N, &id2));
    CHECK_OK(kvp_tier_get_f16(c, id2, gk2, gv2));
    CHECK(!memcmp(gk, gk2, sizeof gk) && !memcmp(gv, gv2, sizeof gv));
    kvp_tier_free(c);
}

/* Truncating a retrieval cache into a cold block brings that block back (F16: exactly). */
TEST(select_retrieval_truncate) {
    kvp_kv *kv = kvt_sel("quest:page=2", "3", "mem,f16", 1, 1, 2, NULL, 0);
    CHECK(kv);
    float out[2];
    kvt_quest_feed(kv, out);
    CHECK_OK(kv->vt->truncate(kv, 5)); /* keeps [4, 5) of the cold page [4, 6) */
    CHECK(kv->n_pos == 5);
    float k[2], v[2];
    CHECK_OK(kv->vt->read(kv, 0, 4, 1, k, v));
    CHECK(k[0] == 0 && v[0] == 4);
    kvp_sel_info in;
    CHECK_OK(kvp_kv_select_info(kv, &in));
    CHECK(in.n_blocks == 3 && in.cold_blocks == 2);
    kvt_quest_feed(kv, out); /* continue at position 5: 9 more tokens */
    CHECK(kv->n_pos == 14);
    CHECK_OK(kv->vt->read(kv, 0, 10, 1, k, v));
    CHECK(k[0] == 10 && v[0] == 5); /* the second feed's token 5 */
    kvp_kv_free(kv);
}
