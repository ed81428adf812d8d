/*
 * recall.c: the key-value recall task of ../shared/models/kvrecall-format.txt (version 1):
 * its random number generator (section 4), the sequence generator (section 5, every draw
 * in the normative order, so sequences are bit-exact), the reference suites (section 6)
 * and scoring through a context (section 3).
 */
#include <stdlib.h>

#include "common/common.h"
#include "kvpack.h"

/* Token ids (section 1). */
enum { KVP_RC_BOS = 1, KVP_RC_QUERY = 3, KVP_RC_KEY = 4, KVP_RC_VALUE = 132, KVP_RC_FILLER = 260 };

void kvp_recall_rng_seed(kvp_recall_rng *r, uint64_t seed) {
    r->s = seed ^ 0x9E3779B97F4A7C15ULL;
    if (r->s == 0) r->s = 1;
}

uint32_t kvp_recall_rng_next(kvp_recall_rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return (uint32_t)((r->s * 0x2545F4914F6CDD1DULL) >> 32);
}

static uint32_t kvp_recall_below(kvp_recall_rng *r, uint32_t n) { return kvp_recall_rng_next(r) % n; }

int kvp_recall_suite_get(int L, kvp_recall_suite *s) {
    switch (L) {
    case 256: *s = (kvp_recall_suite){256, 32, 32, 64, 256000}; return KVP_OK;
    case 512: *s = (kvp_recall_suite){512, 64, 64, 64, 512000}; return KVP_OK;
    case 1024: *s = (kvp_recall_suite){1024, 64, 64, 64, 1024000}; return KVP_OK;
    default: return kvp_seterr(KVP_EINVAL, "no recall suite of length %d (valid: 256, 512, 1024)", L);
    }
}

/* Draws keys (distinct), values and the filler counts of the N + 1 gaps. */
static void kvp_recall_draw_pairs(kvp_recall_rng *r, int N, int F, int *key, int *val, int *gap) {
    int perm[128];
    for (int i = 0; i < 128; i++) perm[i] = i;
    for (int i = 0; i < N; i++) {
        int j = i + (int)kvp_recall_below(r, (uint32_t)(128 - i)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
        key[i] = perm[i];
    }
    for (int i = 0; i < N; i++) val[i] = (int)kvp_recall_below(r, 128);
    for (int i = 0; i <= N; i++) gap[i] = 0;
    for (int f = 0; f < F; f++) gap[kvp_recall_below(r, (uint32_t)(N + 1))]++;
}

/* Emits the context: BOS, then the pairs with their fillers. Returns the length. */
static int kvp_recall_emit_context(kvp_recall_rng *r, int N, const int *key, const int *val, const int *gap,
                                   int *tokens) {
    int n = 0;
    tokens[n++] = KVP_RC_BOS;
    for (int i = 0; i <= N; i++) {
        for (int g = 0; g < gap[i]; g++) tokens[n++] = KVP_RC_FILLER + (int)kvp_recall_below(r, 64);
        if (i == N) break;
        tokens[n++] = KVP_RC_KEY + key[i];
        tokens[n++] = KVP_RC_VALUE + val[i];
    }
    return n;
}

int kvp_recall_generate(uint64_t seed, int L, int N, int Q, int *tokens, int *answers) {
    int F = L - 1 - 2 * N - 3 * Q;
    if (Q < 1 || Q > N || N > 128 || F < 0 || L > 1024)
        return kvp_seterr(KVP_EINVAL, "bad recall parameters L %d, N %d, Q %d (need 1 <= Q <= N <= 128, "
                          "L - 1 - 2N - 3Q >= 0, L <= 1024)", L, N, Q);
    kvp_recall_rng r;
    int key[128], val[128], gap[129], qp[128];
    kvp_recall_rng_seed(&r, seed);
    kvp_recall_draw_pairs(&r, N, F, key, val, gap);
    int n = kvp_recall_emit_context(&r, N, key, val, gap, tokens);
    for (int i = 0; i < N; i++) qp[i] = i;
    for (int i = 0; i < Q; i++) {
        int j = i + (int)kvp_recall_below(&r, (uint32_t)(N - i)), t = qp[i];
        qp[i] = qp[j];
        qp[j] = t;
    }
    for (int i = 0; i < Q; i++) {
        tokens[n++] = KVP_RC_QUERY;
        answers[i] = n;
        tokens[n++] = KVP_RC_KEY + key[qp[i]];
        tokens[n++] = KVP_RC_VALUE + val[qp[i]];
    }
    if (n != L) return kvp_seterr(KVP_EINTERNAL, "recall sequence has %d tokens, not %d", n, L);
    return KVP_OK;
}

/* Index of the largest of n logits (the first on ties). */
static int kvp_recall_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

int kvp_recall_score(kvp_ctx *ctx, const int *tokens, int L, const int *answers, int Q, int *correct) {
    int V = kvp_model_get_info(kvp_ctx_model(ctx))->vocab_size, rc = KVP_OK, a = 0;
    float *logits = malloc(sizeof(float) * (size_t)V);
    if (!logits) return kvp_seterr(KVP_ENOMEM, "out of memory scoring a recall sequence");
    *correct = 0;
    kvp_ctx_reset(ctx);
    int last = Q > 0 ? answers[Q - 1] : -1;
    for (int p = 0; p <= last && rc == KVP_OK; p++) {
        rc = kvp_ctx_decode(ctx, &tokens[p], 1, logits, 0);
        if (rc == KVP_OK && a < Q && answers[a] == p) {
            if (p + 1 < L && kvp_recall_argmax(logits, V) == tokens[p + 1]) (*correct)++;
            a++;
        }
    }
    free(logits);
    return rc;
}
