/*
 * sample.c: choosing the next token: greedy, or temperature with top-k and top-p
 * (nucleus) filtering, from a seeded xorshift64* generator so runs repeat exactly.
 */
#include <math.h>
#include <stdlib.h>

#include "common/common.h"

typedef struct {
    float p;
    int id;
} kvp_cand;

struct kvp_sampler {
    kvp_sampler_params p;
    int vocab;
    uint64_t rng;
    kvp_cand *cand; /* (vocab) */
};

kvp_sampler_params kvp_sampler_default_params(void) {
    kvp_sampler_params p = {0.8f, 40, 0.95f, 42};
    return p;
}

int kvp_sampler_new(const kvp_sampler_params *p, int vocab_size, kvp_sampler **out) {
    *out = NULL;
    if (vocab_size <= 0 || p->temp < 0 || p->top_k < 0 || !(p->top_p > 0 && p->top_p <= 1))
        return kvp_seterr(KVP_EINVAL, "bad sampling parameters (temp %g, top-k %d, top-p %g)", p->temp,
                          p->top_k, p->top_p);
    kvp_sampler *s = calloc(1, sizeof *s);
    if (s) s->cand = malloc(sizeof *s->cand * (size_t)vocab_size);
    if (!s || !s->cand) {
        kvp_sampler_free(s);
        return kvp_seterr(KVP_ENOMEM, "out of memory creating a sampler");
    }
    s->p = *p;
    s->vocab = vocab_size;
    s->rng = p->seed ^ 0x9E3779B97F4A7C15ULL;
    if (!s->rng) s->rng = 1;
    *out = s;
    return KVP_OK;
}

void kvp_sampler_free(kvp_sampler *s) {
    if (!s) return;
    free(s->cand);
    free(s);
}

static double kvp_sampler_uniform(kvp_sampler *s) { /* in [0, 1) */
    s->rng ^= s->rng >> 12;
    s->rng ^= s->rng << 25;
    s->rng ^= s->rng >> 27;
    return (double)((s->rng * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
}

static int kvp_argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static int kvp_cand_cmp(const void *a, const void *b) {
    const kvp_cand *x = a, *y = b;
    if (x->p != y->p) return x->p > y->p ? -1 : 1;
    return x->id - y->id;
}

/* Softmax at temperature over the candidates, sorted by probability, highest first. */
static int kvp_sampler_sorted(kvp_sampler *s, const float *logits) {
    float mx = logits[kvp_argmax(logits, s->vocab)];
    double sum = 0;
    for (int i = 0; i < s->vocab; i++) {
        s->cand[i].id = i;
        s->cand[i].p = expf((logits[i] - mx) / s->p.temp);
        sum += s->cand[i].p;
    }
    for (int i = 0; i < s->vocab; i++) s->cand[i].p = (float)(s->cand[i].p / sum);
    qsort(s->cand, (size_t)s->vocab, sizeof *s->cand, kvp_cand_cmp);
    return s->vocab;
}

int kvp_sampler_sample(kvp_sampler *s, const float *logits) {
    if (s->p.temp == 0) return kvp_argmax(logits, s->vocab);
    int n = kvp_sampler_sorted(s, logits);
    if (s->p.top_k > 0 && s->p.top_k < n) n = s->p.top_k;
    double mass = 0, keep = 0;
    int m = 0;
    while (m < n && (m == 0 || mass < s->p.top_p)) mass += s->cand[m++].p;
    for (int i = 0; i < m; i++) keep += s->cand[i].p;
    double r = kvp_sampler_uniform(s) * keep, acc = 0;
    for (int i = 0; i < m; i++) {
        acc += s->cand[i].p;
        if (r < acc) return s->cand[i].id;
    }
    return s->cand[m - 1].id;
}
