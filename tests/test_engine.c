/*
 * test_engine.c: the forward pass end to end on the shared real models, against the
 * independent double-precision reference (ref_llama.c), against llama.cpp's own greedy
 * output, and across formats, batch sizes, thread counts and cache types.
 */
#include <unistd.h>

#include "kvpack.h"
#include "ref_llama.h"
#include "test.h"

static const int kvt_prompt[] = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 426,
                                 410, 457, 289, 428, 276, 419, 419, 432, 322, 410};
#define KVT_NP ((int)(sizeof kvt_prompt / sizeof kvt_prompt[0]))

static kvp_ctx *kvt_ctx(kvp_model *m, const char *kv, int threads, int batch) {
    kvp_ctx_params p = kvp_ctx_default_params();
    p.n_ctx = 512;
    p.kv = kv;
    p.n_threads = threads;
    p.n_batch = batch;
    kvp_ctx *c = NULL;
    if (kvp_ctx_new(m, &p, &c) != 0) kvt_fail(__FILE__, __LINE__, "kvp_ctx_new: %s", kvp_errmsg());
    return c;
}

static int kvt_argmax_f(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

static int kvt_argmax_d(const double *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++) if (x[i] > x[b]) b = i;
    return b;
}

/* Feeds the prompt token by token to kvpack and the reference; returns the max |diff|. */
static double kvt_compare_ref(const char *bin, const char *model, const char *tok, const char *kv, int vocab_clip) {
    kvt_ref *r = kvt_ref_load(kvt_model(bin), 512);
    kvp_model *m = NULL;
    if (!r || kvp_model_load(kvt_model(model), tok ? kvt_model(tok) : NULL, &m) != 0) {
        kvt_fail(__FILE__, __LINE__, "loading %s / %s: %s", bin, model, kvp_errmsg());
        kvt_ref_free(r);
        return 1e9;
    }
    kvp_ctx *c = kvt_ctx(m, kv, 1, 64);
    int V = kvt_ref_vocab(r);
    double *rl = malloc(sizeof(double) * V), worst = 0;
    float *kl = malloc(sizeof(float) * V);
    for (int i = 0; c && i < KVT_NP; i++) {
        int t = kvt_prompt[i] % vocab_clip;
        kvt_ref_step(r, t, rl);
        if (kvp_ctx_decode(c, &t, 1, kl, 0) != 0) { worst = 1e9; break; }
        for (int j = 0; j < V; j++) worst = fmax(worst, fabs(rl[j] - kl[j]));
    }
    free(rl); free(kl);
    kvp_ctx_free(c); kvp_model_free(m); kvt_ref_free(r);
    return worst;
}

TEST(engine_ref_logits_stories) {
    CHECK(kvt_compare_ref("stories260K.bin", "stories260K.gguf", NULL, "f32", 512) < 1e-3);
    CHECK(kvt_compare_ref("stories260K.bin", "stories260K.bin", "tok512.bin", "f32", 512) < 1e-3);
    CHECK(kvt_compare_ref("stories260K.bin", "stories260K.gguf", NULL, "f16", 512) < 3e-2);
}

TEST(engine_ref_logits_sotu) {
    CHECK(kvt_compare_ref("sotu-1M.bin", "sotu-1M.gguf", NULL, "f32", 1024) < 1e-3);
    CHECK(kvt_compare_ref("sotu-1M.bin", "sotu-1M.bin", "sotu-tok1024.bin", "f32", 1024) < 1e-3);
    CHECK(kvt_compare_ref("sotu-1M.bin", "sotu-1M.gguf", NULL, "f16", 1024) < 3e-2);
}

/* Greedy continuation of kvpack, as token ids. */
static int kvt_greedy(kvp_model *m, const char *kv, int threads, const int *prompt, int np, int n, int *out) {
    kvp_ctx *c = kvt_ctx(m, kv, threads, 256);
    const kvp_model_info *in = kvp_model_get_info(m);
    float *lg = malloc(sizeof(float) * in->vocab_size);
    int rc = c ? kvp_ctx_decode(c, prompt, np, lg, 0) : -1;
    for (int i = 0; rc == 0 && i < n; i++) {
        out[i] = kvt_argmax_f(lg, in->vocab_size);
        if (i + 1 < n) rc = kvp_ctx_decode(c, &out[i], 1, lg, 0);
    }
    free(lg);
    kvp_ctx_free(c);
    return rc;
}

/* The reference's greedy tokens must equal the committed golden file, and kvpack's must
 * equal both, for the llama2.c checkpoints and their GGUF twins. */
TEST(engine_golden_greedy) {
    static const struct { const char *bin, *gguf; int vocab; } cases[] = {
        {"stories260K.bin", "stories260K.gguf", 512}, {"sotu-1M.bin", "sotu-1M.gguf", 1024}};
    FILE *f = fopen("tests/golden/greedy.txt", "r");
    CHECKF(f, "tests/golden/greedy.txt is missing");
    for (size_t k = 0; k < 2; k++) {
        int golden[32], ref[32], got[32];
        for (int i = 0; i < 32; i++) CHECK(fscanf(f, "%d", &golden[i]) == 1);
        kvt_ref *r = kvt_ref_load(kvt_model(cases[k].bin), 512);
        CHECK(r);
        double *rl = malloc(sizeof(double) * cases[k].vocab);
        for (int i = 0; i < KVT_NP; i++) kvt_ref_step(r, kvt_prompt[i], rl);
        for (int i = 0; i < 32; i++) { ref[i] = kvt_argmax_d(rl, cases[k].vocab); kvt_ref_step(r, ref[i], rl); }
        free(rl);
        kvt_ref_free(r);
        CHECKF(!memcmp(ref, golden, sizeof ref), "%s: the reference drifted from tests/golden/greedy.txt", cases[k].bin);
        kvp_model *m = NULL;
        CHECK_OK(kvp_model_load(kvt_model(cases[k].gguf), NULL, &m));
        int rc = kvt_greedy(m, "f16", 1, kvt_prompt, KVT_NP, 32, got);
        kvp_model_free(m);
        CHECK_OK(rc);
        CHECKF(!memcmp(got, golden, sizeof got), "%s: kvpack's greedy tokens differ from the golden ones", cases[k].gguf);
    }
    fclose(f);
}

/* Unescapes "\n" in a TSV field in place. */
static void kvt_unescape(char *s) {
    char *o = s;
    for (; *s; s++) {
        if (s[0] == '\\' && s[1] == 'n') { *o++ = '\n'; s++; }
        else *o++ = *s;
    }
    *o = 0;
}

/* The logit gap between kvpack's greedy choice and the best token whose text continues
 * `want` (llama.cpp's choice), at a step where the two differ. */
static double kvt_tie_gap(const kvp_model *m, int prev, const float *lg, int V, int best, const char *want) {
    double gap = 1e9;
    for (int j = 0; j < V; j++) {
        char piece[256];
        int k = kvp_detokenize(m, prev, j, piece, sizeof piece);
        if (k > 0 && !strncmp(want, piece, (size_t)k)) gap = fmin(gap, (double)lg[best] - lg[j]);
    }
    return gap;
}

/* Greedy-decodes 32 tokens after `prompt` (with BOS) and compares the text with llama.cpp's
 * `want`. Returns 0 when identical; else sets *gap to the logit gap at the first step where
 * kvpack's token differs from llama.cpp's (a near-tie when tiny) and returns 1. */
static int kvt_greedy_vs(const char *model, const char *prompt, const char *want, double *gap, char *got, size_t cap) {
    kvp_model *m = NULL;
    int rc = kvp_model_load(kvt_model(model), NULL, &m);
    if (rc != 0) return rc;
    int V = kvp_model_get_info(m)->vocab_size, ids[256], n = 0, diverged = 0;
    float *lg = malloc(sizeof(float) * V);
    kvp_ctx *c = kvt_ctx(m, "f16", 1, 256);
    rc = kvp_tokenize(m, prompt, strlen(prompt), 1, ids, 256, &n);
    if (rc == 0) rc = kvp_ctx_decode(c, ids, n, lg, 0);
    size_t len = 0;
    got[0] = 0;
    for (int i = 0, prev = ids[n - 1]; rc == 0 && i < 32 && !diverged; i++) {
        int tok = kvt_argmax_f(lg, V), k = kvp_detokenize(m, prev, tok, got + len, cap - len);
        if (k < 0) { rc = k; break; }
        if (strncmp(got + len, want + len, (size_t)k) != 0) {
            *gap = kvt_tie_gap(m, prev, lg, V, tok, want + len);
            diverged = 1;
        }
        len += (size_t)k;
        prev = tok;
        if (i + 1 < 32 && !diverged) rc = kvp_ctx_decode(c, &tok, 1, lg, 0);
    }
    free(lg);
    kvp_ctx_free(c);
    kvp_model_free(m);
    return rc < 0 ? rc : diverged;
}

/* kvpack's greedy continuations equal llama.cpp's (ref/llama.cpp-greedy.tsv, made by a
 * llama.cpp build of February 2025 on another machine). A divergence is accepted only at a
 * near-tie (the two tokens' logits within 0.05): the sotu-1M-Q8_0 row diverges at a gap of
 * 0.033 logits, where llama.cpp built on this machine makes kvpack's choice too. */
TEST(engine_llamacpp_greedy) {
    FILE *f = fopen(kvt_model("ref/llama.cpp-greedy.tsv"), "r");
    CHECK(f);
    char line[4096];
    int rows = 0, exact = 0;
    CHECK(fgets(line, sizeof line, f)); /* header */
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\r\n")] = 0;
        char *model = strtok(line, "\t"), *prompt = strtok(NULL, "\t"), *want = strtok(NULL, "\t");
        CHECK(model && prompt && want);
        kvt_unescape(want);
        char got[4096];
        double gap = 0;
        int rc = kvt_greedy_vs(model, prompt, want, &gap, got, sizeof got);
        CHECKF(rc >= 0, "%s: %s", model, kvp_errmsg());
        CHECKF(rc == 0 || gap < 0.05, "%s '%s': diverges from llama.cpp at a logit gap of %.4f:\n  kvpack:    '%s'\n  llama.cpp: '%s'",
               model, prompt, gap, got, want);
        rows++;
        exact += rc == 0;
    }
    fclose(f);
    CHECK(rows >= 7 && exact >= rows - 1);
}

/* Logits of every position, fed with the given batch size and thread count. */
static float *kvt_all_logits(const char *model, const char *tok, const char *kv, int threads, int batch, int n) {
    kvp_model *m = NULL;
    if (kvp_model_load(kvt_model(model), tok ? kvt_model(tok) : NULL, &m) != 0) return NULL;
    int V = kvp_model_get_info(m)->vocab_size;
    kvp_ctx *c = kvt_ctx(m, kv, threads, batch);
    float *lg = malloc(sizeof(float) * (size_t)V * n);
    int ids[512];
    for (int i = 0; i < n; i++) ids[i] = i ? 3 + (i * 7919) % (V - 3) : 1;
    if (!c || kvp_ctx_decode(c, ids, n, lg, 1) != 0) { free(lg); lg = NULL; }
    kvp_ctx_free(c);
    kvp_model_free(m);
    return lg;
}

static double kvt_maxdiff(const float *a, const float *b, size_t n) {
    double w = 0;
    for (size_t i = 0; i < n; i++) w = fmax(w, fabs((double)a[i] - b[i]));
    return w;
}

TEST(engine_bin_equals_gguf) {
    float *a = kvt_all_logits("sotu-1M.gguf", NULL, "f32", 1, 64, 50);
    float *b = kvt_all_logits("sotu-1M.bin", "sotu-tok1024.bin", "f32", 1, 64, 50);
    CHECK(a && b);
    CHECK(kvt_maxdiff(a, b, (size_t)50 * 1024) == 0);
    free(a); free(b);
}

TEST(engine_batch_equals_single) {
    float *a = kvt_all_logits("sotu-1M.gguf", NULL, "f32", 1, 1, 100);
    float *b = kvt_all_logits("sotu-1M.gguf", NULL, "f32", 1, 37, 100);
    float *c = kvt_all_logits("sotu-1M.gguf", NULL, "f32", 1, 256, 100);
    CHECK(a && b && c);
    CHECK(kvt_maxdiff(a, b, (size_t)100 * 1024) < 2e-4);
    CHECK(kvt_maxdiff(a, c, (size_t)100 * 1024) < 2e-4);
    free(a); free(b); free(c);
}

TEST(engine_threads_identical) {
    float *a = kvt_all_logits("stories260K.gguf", NULL, "f16", 1, 16, 120);
    float *b = kvt_all_logits("stories260K.gguf", NULL, "f16", 2, 16, 120);
    float *c = kvt_all_logits("stories260K.gguf", NULL, "f16", 3, 16, 120);
    CHECK(a && b && c);
    CHECK(kvt_maxdiff(a, b, (size_t)120 * 512) == 0);
    CHECK(kvt_maxdiff(a, c, (size_t)120 * 512) == 0);
    free(a); free(b); free(c);
}

TEST(engine_truncate_replays) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    kvp_ctx *c = kvt_ctx(m, "f16", 1, 8);
    float a[512], b[512];
    CHECK_OK(kvp_ctx_decode(c, kvt_prompt, KVT_NP, a, 0));
    CHECK_OK(kvp_ctx_truncate(c, 10));
    CHECK(kvp_ctx_pos(c) == 10);
    CHECK_OK(kvp_ctx_decode(c, kvt_prompt + 10, KVT_NP - 10, b, 0));
    CHECK(kvt_maxdiff(a, b, 512) == 0);
    kvp_ctx_free(c);
    kvp_model_free(m);
}

TEST(engine_bad_input) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    kvp_ctx_params p = kvp_ctx_default_params();
    p.n_ctx = 16;
    kvp_ctx *c = NULL;
    CHECK_OK(kvp_ctx_new(m, &p, &c));
    int bad = 512;
    CHECK(kvp_ctx_decode(c, &bad, 1, NULL, 0) == KVP_ERANGE);
    CHECK(kvp_ctx_decode(c, kvt_prompt, 16, NULL, 0) == 0);
    CHECK(kvp_ctx_decode(c, kvt_prompt, 1, NULL, 0) == KVP_ERANGE);
    CHECK(strstr(kvp_errmsg(), "context is full"));
    p.kv = "q9";
    kvp_ctx *c2 = NULL;
    CHECK(kvp_ctx_new(m, &p, &c2) == KVP_EINVAL && !c2);
    kvp_ctx_free(c);
    kvp_model_free(m);
    CHECK(kvp_model_load("/nonexistent/model.gguf", NULL, &m) == KVP_EIO && !m);
    CHECK(kvp_model_load(kvt_model("stories260K.bin"), NULL, &m) == KVP_EINVAL);
}

/* Every truncation of a real model file gives an error, never a crash. */
static void kvt_truncations(const char *name, const char *tok) {
    void *data = NULL;
    FILE *f = fopen(kvt_model(name), "rb");
    CHECK(f);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    data = malloc((size_t)size);
    CHECK(fread(data, 1, (size_t)size, f) == (size_t)size);
    fclose(f);
    char path[64];
    snprintf(path, sizeof path, "/tmp/kvt_trunc_%d.model", (int)getpid());
    long cuts[] = {0, 3, 4, 8, 20, 27, 28, 100, 1000, 4096, size / 3, size / 2, size - 4, size - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        FILE *o = fopen(path, "wb");
        CHECK(o);
        fwrite(data, 1, (size_t)cuts[i], o);
        fclose(o);
        kvp_model *m = NULL;
        int rc = kvp_model_load(path, tok ? kvt_model(tok) : NULL, &m);
        CHECKF(rc == KVP_EFORMAT && !m, "%s cut at %ld: rc %d (%s)", name, cuts[i], rc, kvp_errmsg());
    }
    unlink(path);
    free(data);
}

TEST(engine_truncated_models) {
    kvt_truncations("stories260K.gguf", NULL);
    kvt_truncations("stories260K.bin", "tok512.bin");
}

TEST(engine_synth_models_run) {
    static const int types[] = {KVP_TYPE_F32, KVP_TYPE_F16, KVP_TYPE_BF16, KVP_TYPE_Q8_0, KVP_TYPE_Q4_0};
    char path[64];
    snprintf(path, sizeof path, "/tmp/kvt_synth_%d.gguf", (int)getpid());
    for (size_t i = 0; i < 5; i++) {
        kvp_synth_params p = {64, 128, 2, 4, 2, 300, 128, types[i], 10000.0f, 7};
        CHECK_OK(kvp_synth_write(path, &p));
        kvp_model *m = NULL;
        CHECK_OK(kvp_model_load(path, NULL, &m));
        const kvp_model_info *in = kvp_model_get_info(m);
        CHECK(in->dim == 64 && in->n_layers == 2 && in->n_kv_heads == 2 && in->vocab_size == 300);
        CHECK(in->weight_type == types[i]);
        kvp_ctx *c = kvt_ctx(m, "f16", 2, 64);
        float lg[300];
        int toks[10] = {1, 5, 70, 299, 3, 9, 260, 100, 42, 7};
        CHECK_OK(kvp_ctx_decode(c, toks, 10, lg, 0));
        for (int j = 0; j < 300; j++) CHECK(isfinite(lg[j]));
        int ids[16], n = 0;
        CHECK_OK(kvp_tokenize(m, "hello world", 11, 1, ids, 16, &n));
        CHECK(n > 2 && ids[0] == 1);
        kvp_ctx_free(c);
        kvp_model_free(m);
    }
    unlink(path);
}
