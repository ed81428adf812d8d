/*
 * eval.c: fidelity of KV caches against the full-precision cache (kvpack.h, "Evaluation").
 *
 * The accumulator compares two next-token distributions per position: KL(ref || cand)
 * from log-softmax in double precision, agreement of the argmax, and the log-likelihood of
 * the true next token under each. The drivers feed a text (or the recall suite) token by
 * token through a reference context and one context per candidate cache, so that every
 * candidate's later tokens really attend to what its cache stored.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "kvpack.h"

struct kvp_eval_acc {
    double *kl;          /* per position */
    int n, cap;
    long top1;
    double nll_ref, nll_cand;
    int n_nll;
};

int kvp_eval_acc_new(kvp_eval_acc **out) {
    *out = calloc(1, sizeof **out);
    return *out ? KVP_OK : kvp_seterr(KVP_ENOMEM, "out of memory (evaluation)");
}

void kvp_eval_acc_free(kvp_eval_acc *a) {
    if (!a) return;
    free(a->kl);
    free(a);
}

void kvp_eval_acc_reset(kvp_eval_acc *a) {
    a->n = 0;
    a->top1 = 0;
    a->nll_ref = a->nll_cand = 0;
    a->n_nll = 0;
}

/* log(sum(exp(x))) in double, and the index of the largest element (first on ties). */
static double kvp_eval_lse(const float *x, int n, int *arg) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    double s = 0, mx = x[best];
    for (int i = 0; i < n; i++) s += exp((double)x[i] - mx);
    *arg = best;
    return mx + log(s);
}

int kvp_eval_acc_add(kvp_eval_acc *a, const float *ref, const float *cand, int vocab, int next) {
    if (vocab <= 0 || next >= vocab) return kvp_seterr(KVP_EINVAL, "evaluation: bad vocabulary %d or token %d", vocab, next);
    if (a->n == a->cap) {
        int cap = a->cap ? 2 * a->cap : 1024;
        double *kl = realloc(a->kl, sizeof(double) * (size_t)cap);
        if (!kl) return kvp_seterr(KVP_ENOMEM, "out of memory (evaluation)");
        a->kl = kl;
        a->cap = cap;
    }
    int ar, ac;
    double lr = kvp_eval_lse(ref, vocab, &ar), lc = kvp_eval_lse(cand, vocab, &ac), kl = 0;
    for (int i = 0; i < vocab; i++) {
        double pr = (double)ref[i] - lr;
        kl += exp(pr) * (pr - ((double)cand[i] - lc));
    }
    a->kl[a->n++] = kl > 0 ? kl : 0; /* rounding can leave a tiny negative for equal inputs */
    a->top1 += ar == ac;
    if (next >= 0) {
        a->nll_ref += lr - ref[next];
        a->nll_cand += lc - cand[next];
        a->n_nll++;
    }
    return KVP_OK;
}

static int kvp_eval_cmp(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

void kvp_eval_acc_stats(const kvp_eval_acc *a, kvp_eval_stats *st) {
    memset(st, 0, sizeof *st);
    st->n = a->n;
    if (a->n == 0) return;
    double *s = malloc(sizeof(double) * (size_t)a->n);
    double sum = 0;
    for (int i = 0; i < a->n; i++) sum += a->kl[i];
    st->kl_mean = sum / a->n;
    if (s) { /* the 99th percentile: the smallest value with at least 99% of the values <= it */
        memcpy(s, a->kl, sizeof(double) * (size_t)a->n);
        qsort(s, (size_t)a->n, sizeof(double), kvp_eval_cmp);
        st->kl_p99 = s[(int)ceil(0.99 * a->n) - 1];
        st->kl_max = s[a->n - 1];
        free(s);
    }
    st->top1 = (double)a->top1 / a->n;
    if (a->n_nll) {
        st->nll_ref = a->nll_ref / a->n_nll;
        st->nll_cand = a->nll_cand / a->n_nll;
        st->ppl_ratio = exp(st->nll_cand - st->nll_ref);
    }
}

/* ---------------------------------------------------------------------------------------
 * Drivers.
 * ------------------------------------------------------------------------------------- */

typedef struct {
    kvp_ctx *ctx;
    kvp_eval_acc *acc;
    float *logits;
    double seconds;
    long decoded;
} kvp_eval_arm;

static void kvp_eval_arms_free(kvp_eval_arm *arms, int n) {
    for (int i = 0; arms && i < n; i++) {
        kvp_ctx_free(arms[i].ctx);
        kvp_eval_acc_free(arms[i].acc);
        free(arms[i].logits);
    }
    free(arms);
}

/* Arm 0 is the reference cache, arms 1..n_specs the candidates, each with n_ctx positions. */
static int kvp_eval_arms_new(kvp_model *m, const kvp_eval_params *p, int n_ctx, kvp_eval_arm **out) {
    int n = p->n_specs + 1, V = kvp_model_get_info(m)->vocab_size;
    kvp_eval_arm *arms = calloc((size_t)n, sizeof *arms);
    if (!arms) return kvp_seterr(KVP_ENOMEM, "out of memory (evaluation)");
    for (int i = 0; i < n; i++) {
        kvp_ctx_params cp = kvp_ctx_default_params();
        cp.n_ctx = n_ctx;
        cp.n_threads = p->n_threads > 0 ? p->n_threads : 1;
        cp.kv = i == 0 ? (p->ref_spec ? p->ref_spec : "f32") : p->specs[i - 1];
        int rc = kvp_ctx_new(m, &cp, &arms[i].ctx);
        if (rc == 0) rc = kvp_eval_acc_new(&arms[i].acc);
        if (rc == 0 && !(arms[i].logits = malloc(sizeof(float) * (size_t)V)))
            rc = kvp_seterr(KVP_ENOMEM, "out of memory (evaluation)");
        if (rc < 0) {
            kvp_errprefix(rc, cp.kv);
            kvp_eval_arms_free(arms, n);
            return rc;
        }
    }
    *out = arms;
    return KVP_OK;
}

/* Fills res[i] from arm i: its statistics, its cache's size now, its decode speed. */
static void kvp_eval_report(kvp_eval_arm *arms, int n, kvp_eval_result *res) {
    for (int i = 0; i < n; i++) {
        kvp_kv_stats ks;
        kvp_ctx_kv_stats(arms[i].ctx, &ks);
        memset(&res[i], 0, sizeof res[i]);
        snprintf(res[i].spec, sizeof res[i].spec, "%s", ks.spec);
        kvp_eval_acc_stats(arms[i].acc, &res[i].st);
        res[i].bits_per_value = ks.bits_per_value;
        res[i].kv_bytes = ks.bytes_hot + ks.bytes_cold;
        res[i].kv_bytes_cold = ks.bytes_cold;
        res[i].decode_tps = arms[i].seconds > 0 ? arms[i].decoded / arms[i].seconds : 0;
    }
}

/* Decodes one token in every arm and compares arms 1.. with arm 0 when `score`. */
static int kvp_eval_step(kvp_eval_arm *arms, int n, int V, int tok, int score, int next) {
    for (int i = 0; i < n; i++) {
        double t0 = kvp_now();
        KVP_TRY(kvp_ctx_decode(arms[i].ctx, &tok, 1, arms[i].logits, 0));
        arms[i].seconds += kvp_now() - t0;
        arms[i].decoded++;
    }
    for (int i = 0; i < n && score; i++) KVP_TRY(kvp_eval_acc_add(arms[i].acc, arms[0].logits, arms[i].logits, V, next));
    return KVP_OK;
}

/* One chunk of len tokens (the first replaced by BOS when the model has one), as
 * llama-perplexity cuts a text; positions [skip, len - 1) are scored. */
static int kvp_eval_chunk(kvp_model *m, kvp_eval_arm *arms, int n, const int *tok, int len, const kvp_eval_params *p,
                          long *done, long total) {
    int V = kvp_model_get_info(m)->vocab_size, bos = kvp_token_bos(m);
    for (int i = 0; i < n; i++) kvp_ctx_reset(arms[i].ctx);
    for (int i = 0; i < len; i++) {
        int t = i == 0 && bos >= 0 ? bos : tok[i];
        KVP_TRY(kvp_eval_step(arms, n, V, t, i >= p->skip && i + 1 < len, i + 1 < len ? tok[i + 1] : -1));
        if (p->progress) p->progress(p->user, ++*done, total);
    }
    return KVP_OK;
}

int kvp_eval_text(kvp_model *m, const int *tokens, int n, const kvp_eval_params *p, kvp_eval_result *res) {
    const kvp_model_info *in = kvp_model_get_info(m);
    int len = KVP_MIN(n, p->n_ctx > 0 ? p->n_ctx : in->n_ctx_train);
    if (n < 2 || p->n_specs < 0 || (p->n_specs > 0 && !p->specs))
        return kvp_seterr(KVP_EINVAL, "evaluation needs at least 2 tokens (got %d) and a list of caches", n);
    if (p->skip < 0 || p->skip >= len - 1)
        return kvp_seterr(KVP_EINVAL, "evaluation: skipping %d of %d positions per chunk leaves none to score",
                          p->skip, len);
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= in->vocab_size)
            return kvp_seterr(KVP_ERANGE, "evaluation: token %d at index %d is outside the vocabulary", tokens[i], i);
    kvp_eval_arm *arms;
    KVP_TRY(kvp_eval_arms_new(m, p, len, &arms));
    int n_chunks = n / len, rc = KVP_OK;
    long done = 0, total = (long)n_chunks * len;
    for (int c = 0; c < n_chunks && rc == KVP_OK; c++)
        rc = kvp_eval_chunk(m, arms, p->n_specs + 1, tokens + (size_t)c * len, len, p, &done, total);
    if (rc == KVP_OK) kvp_eval_report(arms, p->n_specs + 1, res);
    kvp_eval_arms_free(arms, p->n_specs + 1);
    return rc;
}

/* Scores one recall sequence in every arm, adding to correct[i]. */
static int kvp_eval_recall_seq(kvp_eval_arm *arms, int n, const int *tok, int L, const int *ans, int Q,
                               long *correct) {
    for (int i = 0; i < n; i++) {
        int ok = 0;
        double t0 = kvp_now();
        KVP_TRY(kvp_recall_score(arms[i].ctx, tok, L, ans, Q, &ok));
        arms[i].seconds += kvp_now() - t0;
        arms[i].decoded += ans[Q - 1] + 1;
        correct[i] += ok;
    }
    return KVP_OK;
}

int kvp_eval_recall(kvp_model *m, int L, const kvp_eval_params *p, kvp_eval_result *res) {
    kvp_recall_suite s;
    KVP_TRY(kvp_recall_suite_get(L, &s));
    int n = p->n_specs + 1, n_seqs = p->max_seqs > 0 ? KVP_MIN(p->max_seqs, s.n_seqs) : s.n_seqs, rc = KVP_OK;
    if (kvp_model_get_info(m)->vocab_size != 324)
        return kvp_seterr(KVP_EINVAL, "the recall task needs the 324-token recall vocabulary (this model has %d)",
                          kvp_model_get_info(m)->vocab_size);
    kvp_eval_arm *arms;
    KVP_TRY(kvp_eval_arms_new(m, p, s.L, &arms));
    int *tok = malloc(sizeof(int) * (size_t)s.L), *ans = malloc(sizeof(int) * (size_t)s.Q);
    long *correct = calloc((size_t)n, sizeof(long));
    if (!tok || !ans || !correct) rc = kvp_seterr(KVP_ENOMEM, "out of memory (recall evaluation)");
    for (int q = 0; q < n_seqs && rc == KVP_OK; q++) {
        rc = kvp_recall_generate(s.seed0 + (uint64_t)q, s.L, s.N, s.Q, tok, ans);
        if (rc == KVP_OK) rc = kvp_eval_recall_seq(arms, n, tok, s.L, ans, s.Q, correct);
        if (p->progress) p->progress(p->user, q + 1, n_seqs);
    }
    if (rc == KVP_OK) {
        kvp_eval_report(arms, n, res);
        for (int i = 0; i < n; i++) {
            res[i].recall_correct = correct[i];
            res[i].recall_total = (long)n_seqs * s.Q;
            res[i].recall = (double)correct[i] / (double)res[i].recall_total;
        }
    }
    free(tok);
    free(ans);
    free(correct);
    kvp_eval_arms_free(arms, n);
    return rc;
}
