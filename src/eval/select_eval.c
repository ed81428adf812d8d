/*
 * select_eval.c: evaluations of the token-selection policies (docs/selection.md) that the
 * general evaluation (eval.c) does not cover:
 *   - the recall grid: key-value recall accuracy per budget x sequence length x depth of
 *     the queried pair in the context, on the reference suites of kvrecall-format.txt, with
 *     the full cache as the first row; as a text table and an SVG heat map;
 *   - passkey retrieval in the style of llama.cpp's passkey example: filler text, a pass
 *     key at a random depth, a greedy answer; the full cache first, then the policy.
 * Every sequence is fed token by token, so that eviction between steps shows.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "kvpack.h"

enum { KVP_SE_QUERY = 3 }; /* the recall vocabulary's '?' */

/* ---- the recall grid ---- */

/* A context for one grid row: the full cache (budget NULL) or the policy at a budget. */
static int kvp_se_ctx(kvp_model *m, const kvp_sel_grid_params *p, const char *budget, int n_ctx, kvp_ctx **out) {
    kvp_ctx_params cp = kvp_ctx_default_params();
    cp.n_ctx = n_ctx;
    cp.n_threads = p->n_threads > 0 ? p->n_threads : 1;
    cp.kv = p->kv ? p->kv : "f16";
    if (budget) {
        cp.select = p->select;
        cp.budget = budget;
        cp.cold = p->cold;
    }
    return kvp_ctx_new(m, &cp, out);
}

static int kvp_se_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* The depth bucket of answer a: where the queried key sits in the context (the tokens
 * before the first query), in n_depths equal parts. */
static int kvp_se_depth(const int *tok, int answer, int n_depths) {
    int ctx_len = 0;
    while (tok[ctx_len] != KVP_SE_QUERY) ctx_len++;
    int at = 0;
    for (int j = 1; j < ctx_len; j++)
        if (tok[j] == tok[answer]) at = j;
    return KVP_MIN(n_depths - 1, at * n_depths / KVP_MAX(ctx_len, 1));
}

/* Feeds one sequence and adds its answers to row (n_lengths x n_depths cells) at length li. */
static int kvp_se_sequence(kvp_ctx *c, const int *tok, const int *ans, int Q, int n_depths, float *logits,
                           kvp_sel_grid_cell *row) {
    int V = kvp_model_get_info(kvp_ctx_model(c))->vocab_size, a = 0;
    kvp_ctx_reset(c);
    for (int p = 0; p <= ans[Q - 1]; p++) {
        int want = a < Q && ans[a] == p;
        KVP_TRY(kvp_ctx_decode(c, &tok[p], 1, want ? logits : NULL, 0));
        if (!want) continue;
        kvp_sel_grid_cell *cell = &row[kvp_se_depth(tok, p, n_depths)];
        cell->correct += kvp_se_argmax(logits, V) == tok[p + 1];
        cell->total++;
        a++;
    }
    return KVP_OK;
}

/* Runs the suite of length L through every row's context; cells of length index li. */
static int kvp_se_suite(kvp_model *m, const kvp_sel_grid_params *p, int li, kvp_sel_grid_cell *cells, long *done,
                        long total) {
    kvp_recall_suite s;
    KVP_TRY(kvp_recall_suite_get(p->lengths[li], &s));
    int n_seqs = p->max_seqs > 0 ? KVP_MIN(p->max_seqs, s.n_seqs) : s.n_seqs, rc = KVP_OK;
    int *tok = malloc(sizeof(int) * (size_t)s.L), *ans = malloc(sizeof(int) * (size_t)s.Q);
    float *logits = malloc(sizeof(float) * (size_t)kvp_model_get_info(m)->vocab_size);
    if (!tok || !ans || !logits) rc = kvp_seterr(KVP_ENOMEM, "out of memory (recall grid)");
    for (int r = 0; r <= p->n_budgets && rc == KVP_OK; r++) {
        kvp_ctx *c = NULL;
        rc = kvp_se_ctx(m, p, r ? p->budgets[r - 1] : NULL, s.L, &c);
        kvp_sel_grid_cell *row = cells + ((size_t)r * p->n_lengths + li) * p->n_depths;
        for (int q = 0; q < n_seqs && rc == KVP_OK; q++) {
            rc = kvp_recall_generate(s.seed0 + (uint64_t)q, s.L, s.N, s.Q, tok, ans);
            if (rc == KVP_OK) rc = kvp_se_sequence(c, tok, ans, s.Q, p->n_depths, logits, row);
            if (p->progress) p->progress(p->user, ++*done, total);
        }
        kvp_ctx_free(c);
    }
    free(tok);
    free(ans);
    free(logits);
    return rc;
}

int kvp_sel_recall_grid(kvp_model *m, const kvp_sel_grid_params *p, kvp_sel_grid_cell *cells) {
    if (p->n_budgets < 0 || (p->n_budgets > 0 && (!p->budgets || !p->select)) || p->n_lengths <= 0 || !p->lengths ||
        p->n_depths < 1 || p->n_depths > 16)
        return kvp_seterr(KVP_EINVAL, "recall grid: give a policy with its budgets, lengths and 1..16 depth buckets");
    if (kvp_model_get_info(m)->vocab_size < 324)
        return kvp_seterr(KVP_EINVAL, "the recall grid needs the 324-token recall vocabulary");
    memset(cells, 0, sizeof *cells * (size_t)(p->n_budgets + 1) * p->n_lengths * p->n_depths);
    long done = 0, total = 0;
    for (int li = 0; li < p->n_lengths; li++) {
        kvp_recall_suite s;
        KVP_TRY(kvp_recall_suite_get(p->lengths[li], &s));
        total += (long)(p->max_seqs > 0 ? KVP_MIN(p->max_seqs, s.n_seqs) : s.n_seqs) * (p->n_budgets + 1);
    }
    for (int li = 0; li < p->n_lengths; li++) KVP_TRY(kvp_se_suite(m, p, li, cells, &done, total));
    return KVP_OK;
}

/* ---- the grid as text ---- */

typedef struct {
    char *buf;
    size_t len, cap;
    int oom;
} kvp_se_str;

static void kvp_se_printf(kvp_se_str *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void kvp_se_printf(kvp_se_str *s, const char *fmt, ...) {
    va_list ap;
    for (int pass = 0; pass < 2 && !s->oom; pass++) {
        va_start(ap, fmt);
        int n = vsnprintf(s->buf ? s->buf + s->len : NULL, s->buf ? s->cap - s->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) { s->oom = 1; return; }
        if (s->buf && s->len + (size_t)n < s->cap) { s->len += (size_t)n; return; }
        size_t cap = KVP_MAX(2 * s->cap, s->len + (size_t)n + 256);
        char *b = realloc(s->buf, cap);
        if (!b) { s->oom = 1; return; }
        s->buf = b;
        s->cap = cap;
    }
}

static double kvp_se_acc(const kvp_sel_grid_cell *c) { return c->total ? 100.0 * c->correct / c->total : 0; }

/* One row of the table: the accuracy of every length and depth, then per length overall. */
static void kvp_se_row(kvp_se_str *s, const kvp_sel_grid_params *p, const kvp_sel_grid_cell *cells, int r) {
    kvp_se_printf(s, "%-10s", r ? p->budgets[r - 1] : "full");
    for (int li = 0; li < p->n_lengths; li++) {
        const kvp_sel_grid_cell *row = cells + ((size_t)r * p->n_lengths + li) * p->n_depths;
        kvp_sel_grid_cell all = {0, 0};
        for (int d = 0; d < p->n_depths; d++) {
            kvp_se_printf(s, " %6.1f", kvp_se_acc(&row[d]));
            all.correct += row[d].correct;
            all.total += row[d].total;
        }
        kvp_se_printf(s, " |%6.1f  ", kvp_se_acc(&all));
    }
    kvp_se_printf(s, "\n");
}

int kvp_sel_grid_table(const kvp_sel_grid_params *p, const kvp_sel_grid_cell *cells, char **out) {
    kvp_se_str s = {0};
    kvp_se_printf(&s, "recall accuracy (%%) of %s by budget, length and depth of the queried pair (%d buckets, "
                      "shallow to deep), then overall\n%-10s", p->select ? p->select : "the full cache", p->n_depths,
                  "budget");
    for (int li = 0; li < p->n_lengths; li++)
        kvp_se_printf(&s, " L=%-*d|%6s  ", 7 * p->n_depths - 3, p->lengths[li], "all");
    kvp_se_printf(&s, "\n");
    for (int r = 0; r <= p->n_budgets; r++) kvp_se_row(&s, p, cells, r);
    if (s.oom) {
        free(s.buf);
        return kvp_seterr(KVP_ENOMEM, "out of memory formatting the recall grid");
    }
    *out = s.buf;
    return KVP_OK;
}

/* ---- the grid as an SVG heat map ---- */

enum { KVP_SE_CW = 56, KVP_SE_CH = 26, KVP_SE_LEFT = 90, KVP_SE_TOP = 70, KVP_SE_GAP = 40 };

/* A colour from red (0%) through yellow to green (100%). */
static void kvp_se_colour(double acc, char *buf, size_t cap) {
    double t = acc / 100;
    int r = t < 0.5 ? 230 : (int)(230 - (t - 0.5) * 2 * 180), g = t < 0.5 ? (int)(60 + t * 2 * 160) : 200;
    snprintf(buf, cap, "rgb(%d,%d,80)", r, g);
}

static void kvp_se_panel(FILE *f, const kvp_sel_grid_params *p, const kvp_sel_grid_cell *cells, int li, int x0) {
    fprintf(f, "<text x='%d' y='%d' font-weight='bold'>L = %d</text>\n", x0, KVP_SE_TOP - 28, p->lengths[li]);
    for (int d = 0; d < p->n_depths; d++)
        fprintf(f, "<text x='%d' y='%d' text-anchor='middle'>%d/%d</text>\n", x0 + d * KVP_SE_CW + KVP_SE_CW / 2,
                KVP_SE_TOP - 8, d + 1, p->n_depths);
    for (int r = 0; r <= p->n_budgets; r++)
        for (int d = 0; d < p->n_depths; d++) {
            const kvp_sel_grid_cell *c = cells + ((size_t)r * p->n_lengths + li) * p->n_depths + d;
            char col[32];
            int x = x0 + d * KVP_SE_CW, y = KVP_SE_TOP + r * KVP_SE_CH;
            kvp_se_colour(kvp_se_acc(c), col, sizeof col);
            fprintf(f, "<rect x='%d' y='%d' width='%d' height='%d' fill='%s' stroke='white'/>"
                       "<text x='%d' y='%d' text-anchor='middle'>%.0f</text>\n",
                    x, y, KVP_SE_CW, KVP_SE_CH, col, x + KVP_SE_CW / 2, y + 17, kvp_se_acc(c));
        }
}

int kvp_sel_grid_svg(const char *path, const kvp_sel_grid_params *p, const kvp_sel_grid_cell *cells) {
    FILE *f = fopen(path, "w");
    if (!f) return kvp_seterr(KVP_EIO, "cannot write '%s'", path);
    int pw = p->n_depths * KVP_SE_CW, w = KVP_SE_LEFT + p->n_lengths * (pw + KVP_SE_GAP);
    int h = KVP_SE_TOP + (p->n_budgets + 1) * KVP_SE_CH + 50;
    fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' font-family='sans-serif' "
               "font-size='12'>\n<rect width='100%%' height='100%%' fill='white'/>\n"
               "<text x='10' y='20' font-size='14'>Key-value recall (%%) of %s: budget x length x depth of the "
               "queried pair</text>\n", w, h, p->select ? p->select : "the full cache");
    for (int r = 0; r <= p->n_budgets; r++)
        fprintf(f, "<text x='%d' y='%d' text-anchor='end'>%s</text>\n", KVP_SE_LEFT - 8,
                KVP_SE_TOP + r * KVP_SE_CH + 17, r ? p->budgets[r - 1] : "full");
    for (int li = 0; li < p->n_lengths; li++) kvp_se_panel(f, p, cells, li, KVP_SE_LEFT + li * (pw + KVP_SE_GAP));
    fprintf(f, "<text x='%d' y='%d'>columns: depth of the queried pair in the context, shallow to deep</text>\n"
               "</svg>\n", KVP_SE_LEFT, h - 16);
    int bad = ferror(f) | fclose(f);
    return bad ? kvp_seterr(KVP_EIO, "error writing '%s'", path) : KVP_OK;
}

/* ---- passkey ---- */

static const char kvp_pk_intro[] = "There is an important info hidden inside a lot of irrelevant text. Find it and "
                                   "memorize them. I will quiz you about the important information there.";
static const char kvp_pk_junk[] = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.";
static const char kvp_pk_info[] = " The pass key is %d. Remember it. %d is the pass key.";
static const char kvp_pk_question[] = " What is the pass key? The pass key is";

/* The prompt with n_junk filler sentences and the key after the first `at` of them. */
static char *kvp_pk_prompt(int n_junk, int at, int key) {
    size_t cap = sizeof kvp_pk_intro + (size_t)n_junk * sizeof kvp_pk_junk + sizeof kvp_pk_info + 32 +
                 sizeof kvp_pk_question;
    char *s = malloc(cap), *e = s;
    if (!s) return NULL;
    e += snprintf(e, cap, "%s", kvp_pk_intro);
    for (int i = 0; i <= n_junk; i++) {
        if (i == at) e += snprintf(e, cap - (size_t)(e - s), kvp_pk_info, key, key);
        if (i < n_junk) e += snprintf(e, cap - (size_t)(e - s), "%s", kvp_pk_junk);
    }
    snprintf(e, cap - (size_t)(e - s), "%s", kvp_pk_question);
    return s;
}

/* Tokenizes text with BOS into *ids (malloc'ed), growing the buffer when the vocabulary
 * needs more tokens than bytes. */
static int kvp_pk_tokens(const kvp_model *m, const char *text, int **ids, int *n) {
    int cap = (int)strlen(text) + 8, rc = KVP_ERANGE;
    for (int tries = 0; rc == KVP_ERANGE && tries < 2; tries++) {
        free(*ids);
        if (!(*ids = malloc(sizeof(int) * (size_t)cap))) return kvp_seterr(KVP_ENOMEM, "out of memory (passkey)");
        rc = kvp_tokenize(m, text, strlen(text), 1, *ids, cap, n);
        cap = *n;
    }
    return rc;
}

/* Generates up to n_gen greedy tokens after the prompt; 1 in *ok when the text holds the key. */
static int kvp_pk_answer(kvp_ctx *c, const kvp_model *m, const int *ids, int n, int n_gen, int key, int *ok) {
    int V = kvp_model_get_info(m)->vocab_size, prev = ids[n - 1];
    float *lg = malloc(sizeof(float) * (size_t)V);
    char text[256] = "", piece[64], want[16];
    if (!lg) return kvp_seterr(KVP_ENOMEM, "out of memory (passkey)");
    kvp_ctx_reset(c);
    int rc = kvp_ctx_decode(c, ids, n, lg, 0);
    for (int i = 0; rc == KVP_OK && i < n_gen && kvp_ctx_pos(c) < kvp_ctx_n_ctx(c); i++) {
        int t = kvp_se_argmax(lg, V);
        if (kvp_detokenize(m, prev, t, piece, sizeof piece) > 0 && strlen(text) + strlen(piece) < sizeof text)
            strcat(text, piece);
        prev = t;
        rc = kvp_ctx_decode(c, &t, 1, lg, 0);
    }
    snprintf(want, sizeof want, "%d", key);
    *ok = strstr(text, want) != NULL;
    free(lg);
    return rc;
}

/* The most filler sentences whose prompt still leaves room for the answer. */
static int kvp_pk_fit(const kvp_model *m, int n_ctx, int n_gen, int *n_junk) {
    int lo = 0, hi = 4096;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2, *ids = NULL, n = 0;
        char *s = kvp_pk_prompt(mid, 0, 99999);
        int rc = s ? kvp_pk_tokens(m, s, &ids, &n) : kvp_seterr(KVP_ENOMEM, "out of memory (passkey)");
        free(s);
        free(ids);
        if (rc < 0) return rc;
        if (n + n_gen < n_ctx) lo = mid;
        else hi = mid - 1;
    }
    *n_junk = lo;
    return KVP_OK;
}

/* One trial: a random key at a random depth, answered by both contexts. */
static int kvp_pk_trial(const kvp_model *m, kvp_ctx *const ctx[2], int n_junk, int n_gen, kvp_recall_rng *r,
                        kvp_passkey_result res[2]) {
    int key = 1 + (int)(kvp_recall_rng_next(r) % 50000), at = (int)(kvp_recall_rng_next(r) % (uint32_t)(n_junk + 1));
    char *s = kvp_pk_prompt(n_junk, at, key);
    int *ids = NULL, n = 0, rc = s ? kvp_pk_tokens(m, s, &ids, &n) : kvp_seterr(KVP_ENOMEM, "out of memory (passkey)");
    for (int i = 0; i < 2 && rc == KVP_OK; i++) {
        if (!ctx[i]) continue;
        int ok = 0;
        rc = kvp_pk_answer(ctx[i], m, ids, n, n_gen, key, &ok);
        res[i].correct += ok;
        res[i].total++;
        res[i].n_tokens = n;
    }
    free(s);
    free(ids);
    return rc;
}

int kvp_sel_passkey(kvp_model *m, const kvp_passkey_params *p, kvp_passkey_result res[2]) {
    const kvp_model_info *in = kvp_model_get_info(m);
    int n_ctx = p->n_ctx > 0 ? p->n_ctx : in->n_ctx_train, n_junk = 0, n_gen = 8, rc = KVP_OK;
    memset(res, 0, 2 * sizeof *res);
    KVP_TRY(kvp_pk_fit(m, n_ctx, n_gen, &n_junk));
    kvp_ctx_params cp = kvp_ctx_default_params();
    cp.n_ctx = n_ctx;
    cp.n_threads = p->n_threads > 0 ? p->n_threads : 1;
    cp.kv = p->kv ? p->kv : "f16";
    kvp_ctx *ctx[2] = {NULL, NULL};
    rc = kvp_ctx_new(m, &cp, &ctx[0]);
    cp.select = p->select;
    cp.budget = p->budget;
    cp.cold = p->cold;
    if (rc == KVP_OK && p->select) rc = kvp_ctx_new(m, &cp, &ctx[1]);
    kvp_recall_rng r;
    kvp_recall_rng_seed(&r, p->seed);
    for (int t = 0; t < p->n_trials && rc == KVP_OK; t++) rc = kvp_pk_trial(m, ctx, n_junk, n_gen, &r, res);
    kvp_ctx_free(ctx[0]);
    kvp_ctx_free(ctx[1]);
    return rc;
}
