/*
 * test_engine_batch.c: kvp_ctx_decode_batch, one token from each of several contexts in one
 * forward pass, against each context's own one-token kvp_ctx_decode: contexts of different
 * lengths and cache types (f16, f32, KIVI, MiKV, H2O and Quest selection with budgets), F32
 * and Q8_0 weights, one and two threads, a lead context whose batch is smaller than the
 * number of contexts; a full context in the batch fails alone; bad arguments are refused.
 */
#include "kvpack.h"
#include "test.h"

#define KVT_NB 7   /* contexts in the batch */
#define KVT_STEPS 8

typedef struct {
    const char *kv, *select, *budget;
    int prompt;    /* tokens fed before the batched steps */
} kvt_arm;

static const kvt_arm kvt_arms[KVT_NB] = {
    {"f16", NULL, NULL, 37}, {"f32", NULL, NULL, 1},  {"k4v4", NULL, NULL, 90},
    {"mikv:l3:p20", NULL, NULL, 12}, {"f16", "h2o", "24", 70}, {"f16", NULL, NULL, 5}, {"f16", "quest", "32", 100},
};

static kvp_ctx *kvt_bctx(kvp_model *m, const kvt_arm *a, int threads, int batch, int n_ctx) {
    kvp_ctx_params p = kvp_ctx_default_params();
    p.n_ctx = n_ctx;
    p.kv = a->kv;
    p.select = a->select;
    p.budget = a->budget;
    p.n_threads = threads;
    p.n_batch = batch;
    kvp_ctx *c = NULL;
    if (kvp_ctx_new(m, &p, &c) != 0) kvt_fail(__FILE__, __LINE__, "kvp_ctx_new(%s): %s", a->kv, kvp_errmsg());
    return c;
}

/* A deterministic token sequence of arm i. */
static int kvt_tok_at(int i, int k, int vocab) { return (int)((7919u * (unsigned)(i + 1) + 104729u * (unsigned)k) % (unsigned)(vocab - 1)) + 1; }

static int kvt_argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

/* Feeds every arm's prompt to its batched context and to its twin, then runs KVT_STEPS
 * steps: the batched contexts with kvp_ctx_decode_batch, the twins one by one; the logits
 * must agree within tol (relative to the largest logit) and the twins' greedy token is fed
 * to both. Returns the largest relative difference, or a negative value on a failure. */
static double kvt_batch_vs_single(const char *model, int threads, int lead_batch, double tol) {
    kvp_model *m = NULL;
    if (kvp_model_load(kvt_model(model), NULL, &m) != 0) return -1;
    int V = kvp_model_get_info(m)->vocab_size;
    kvp_ctx *a[KVT_NB] = {0}, *b[KVT_NB] = {0};
    float *la = malloc(sizeof(float) * KVT_NB * (size_t)V), *lb = malloc(sizeof(float) * (size_t)V);
    int tok[KVT_NB], status[KVT_NB], ok = la && lb;
    double worst = 0;
    for (int i = 0; ok && i < KVT_NB; i++) {
        a[i] = kvt_bctx(m, &kvt_arms[i], threads, i == 0 ? lead_batch : 64, 256);
        b[i] = kvt_bctx(m, &kvt_arms[i], threads, 64, 256);
        int prompt[128];
        for (int k = 0; k < kvt_arms[i].prompt; k++) prompt[k] = kvt_tok_at(i, k, V);
        ok = a[i] && b[i] && kvp_ctx_decode(a[i], prompt, kvt_arms[i].prompt, NULL, 0) == 0 &&
             kvp_ctx_decode(b[i], prompt, kvt_arms[i].prompt, lb, 0) == 0;
        tok[i] = ok ? kvt_argmax(lb, V) : 0;
    }
    for (int s = 0; ok && s < KVT_STEPS; s++) {
        ok = kvp_ctx_decode_batch(a, tok, KVT_NB, la, status) == 0;
        for (int i = 0; ok && i < KVT_NB; i++) {
            ok = status[i] == 0 && kvp_ctx_decode(b[i], &tok[i], 1, lb, 0) == 0 && kvp_ctx_pos(a[i]) == kvp_ctx_pos(b[i]);
            double mx = 0, d = 0;
            for (int v = 0; ok && v < V; v++) {
                mx = fmax(mx, fabs(lb[v]));
                d = fmax(d, fabs(lb[v] - la[(size_t)i * V + v]));
            }
            worst = fmax(worst, d / (mx > 0 ? mx : 1));
            tok[i] = kvt_argmax(lb, V);
        }
    }
    if (!ok) kvt_fail(__FILE__, __LINE__, "%s: a decode failed: %s", model, kvp_errmsg());
    for (int i = 0; i < KVT_NB; i++) kvp_ctx_free(a[i]), kvp_ctx_free(b[i]);
    free(la);
    free(lb);
    kvp_model_free(m);
    if (worst > tol) kvt_fail(__FILE__, __LINE__, "%s, %d threads, lead batch %d: relative difference %g", model, threads,
                              lead_batch, worst);
    return ok ? worst : -1;
}

/* The tolerance: the kernels' sums differ between one row and a batch of rows in the last
 * bits (kernels.h), and an F16, KIVI or MiKV cache may then round a key or value the other
 * way (one F16 step is 4.9e-4 relative), which moves later logits by up to about 1e-4 of the
 * largest; 1e-3 still catches any real error (a wrong position or row is off by far more). */
TEST(engine_decode_batch_equals_single) {
    CHECK(kvt_batch_vs_single("stories260K.gguf", 1, 64, 1e-3) >= 0);
    CHECK(kvt_batch_vs_single("stories260K.gguf", 2, 64, 1e-3) >= 0); /* caches in parallel over the lead's pool */
    CHECK(kvt_batch_vs_single("stories260K.gguf", 2, 4, 1e-3) >= 0);  /* groups of 4 and 3 rows (small-batch GEMM) */
    CHECK(kvt_batch_vs_single("stories260K.gguf", 1, 2, 1e-3) >= 0);  /* groups of 2 and 1 */
    CHECK(kvt_batch_vs_single("sotu-1M-Q8_0.gguf", 2, 64, 1e-3) >= 0); /* Q8_0 activations */
    CHECK(kvt_batch_vs_single("sotu-1M.gguf", 1, 3, 1e-3) >= 0);
}

/* A full context fails alone (KVP_ERANGE, unchanged); the others complete with the right
 * logits. Bad arguments are refused before anything runs. */
TEST(engine_decode_batch_errors) {
    kvp_model *m = NULL, *m2 = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m2));
    kvt_arm f16 = {"f16", NULL, NULL, 0};
    kvp_ctx *c[3] = {kvt_bctx(m, &f16, 2, 64, 16), kvt_bctx(m, &f16, 2, 64, 4), kvt_bctx(m, &f16, 2, 64, 16)};
    kvp_ctx *ref = kvt_bctx(m, &f16, 1, 64, 16), *other = kvt_bctx(m2, &f16, 1, 64, 16);
    CHECK(c[0] && c[1] && c[2] && ref && other);
    int four[4] = {1, 20, 30, 40}, status[3] = {9, 9, 9}, tok[3] = {5, 6, 7};
    CHECK_OK(kvp_ctx_decode(c[1], four, 4, NULL, 0)); /* c[1] is full */
    CHECK_OK(kvp_ctx_decode(c[2], four, 3, NULL, 0));
    CHECK_OK(kvp_ctx_decode(ref, four, 3, NULL, 0));
    float lg[3 * 512], want[512];
    CHECK(kvp_ctx_decode_batch(c, tok, 3, lg, status) == KVP_ERANGE);
    CHECKF(strstr(kvp_errmsg(), "context 1"), "%s", kvp_errmsg());
    CHECK(status[0] == 0 && status[1] == KVP_ERANGE && status[2] == 0);
    CHECK(kvp_ctx_pos(c[0]) == 1 && kvp_ctx_pos(c[1]) == 4 && kvp_ctx_pos(c[2]) == 4);
    CHECK_OK(kvp_ctx_decode(ref, &tok[2], 1, want, 0));
    for (int v = 0; v < 512; v++) CHECK_NEAR(lg[2 * 512 + v], want[v], 1e-4 * (1 + fabs(want[v])));
    tok[1] = 512; /* out of the vocabulary: refused like a full context */
    CHECK(kvp_ctx_decode_batch(c, tok, 3, NULL, status) == KVP_ERANGE && status[1] == KVP_ERANGE && status[0] == 0);
    kvp_ctx *dup[2] = {c[0], c[0]}, *mixed[2] = {c[0], other}, *null[2] = {c[0], NULL};
    CHECK(kvp_ctx_decode_batch(dup, tok, 2, NULL, NULL) == KVP_EINVAL);
    CHECK(kvp_ctx_decode_batch(mixed, tok, 2, NULL, NULL) == KVP_EINVAL);
    CHECK(kvp_ctx_decode_batch(null, tok, 2, NULL, NULL) == KVP_EINVAL);
    CHECK(kvp_ctx_decode_batch(c, tok, 0, NULL, NULL) == KVP_EINVAL);
    CHECK(kvp_ctx_pos(c[0]) == 2);
    for (int i = 0; i < 3; i++) kvp_ctx_free(c[i]);
    kvp_ctx_free(ref);
    kvp_ctx_free(other);
    kvp_model_free(m);
    kvp_model_free(m2);
}
