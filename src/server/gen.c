/*
 * gen.c: what a session does with each new token: sample it, record its log-probability and
 * alternatives, turn it into text, and decide what text may be emitted yet. Text is held
 * back while it could be the start of a stop string or ends inside a UTF-8 sequence, so the
 * emitted text never contains a stop string and is always valid UTF-8 (an invalid byte
 * becomes U+FFFD).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "srv_internal.h"

/* ---- UTF-8 ---- */

/* The length of the sequence a lead byte starts (0 for a byte that cannot start one). */
static int kvp_utf8_len(unsigned char c) {
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) return 2;
    if (c >= 0xe0 && c <= 0xef) return 3;
    if (c >= 0xf0 && c <= 0xf4) return 4;
    return 0;
}

/* 1 when s[0..n) (n <= the sequence's length) can begin a valid sequence. */
static int kvp_utf8_prefix_ok(const unsigned char *s, size_t n) {
    int len = kvp_utf8_len(s[0]);
    if (!len) return 0;
    for (size_t i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80) return 0;
    if (n < 2) return 1;
    if (s[0] == 0xe0 && s[1] < 0xa0) return 0; /* overlong */
    if (s[0] == 0xed && s[1] > 0x9f) return 0; /* surrogates */
    if (s[0] == 0xf0 && s[1] < 0x90) return 0; /* overlong */
    if (s[0] == 0xf4 && s[1] > 0x8f) return 0; /* past U+10FFFF */
    return 1;
}

size_t kvp_utf8_complete(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t back = n < 3 ? n : 3;
    for (size_t k = 1; k <= back; k++) { /* a lead byte in the last 3 bytes? */
        size_t i = n - k;
        if ((u[i] & 0xc0) == 0x80) continue;
        int len = kvp_utf8_len(u[i]);
        return len > (int)k && kvp_utf8_prefix_ok(u + i, k) ? i : n;
    }
    return n;
}

size_t kvp_utf8_sanitize(const char *s, size_t n, char *out) {
    const unsigned char *u = (const unsigned char *)s;
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        size_t len = (size_t)kvp_utf8_len(u[i]);
        if (len && i + len <= n && kvp_utf8_prefix_ok(u + i, len)) {
            memcpy(out + o, s + i, len);
            o += len;
            i += len;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3); /* U+FFFD for one bad byte */
            o += 3;
            i++;
        }
    }
    out[o] = 0;
    return o;
}

/* ---- the session's text ---- */

int kvp_gen_start(kvp_srv *s, kvp_sess *ss) {
    kvp_srv_job *j = ss->job;
    ss->logits = malloc(sizeof(float) * (size_t)s->vocab);
    if (!ss->logits) return kvp_seterr(KVP_ENOMEM, "out of memory for a session's logits");
    ss->max_gen = j->max_tokens;
    ss->last = j->tokens[j->n_tokens - 1];
    ss->stop_at = (size_t)-1;
    return kvp_sampler_new(&j->sampling, s->vocab, &ss->smp);
}

void kvp_gen_free(kvp_sess *ss) {
    kvp_sampler_free(ss->smp);
    free(ss->logits);
    free(ss->gen);
    ss->smp = NULL;
    ss->logits = NULL;
    ss->gen = NULL;
}

static int kvp_gen_append(kvp_sess *ss, const char *p, size_t n) {
    if (ss->n_gen_bytes + n + 1 > ss->cap_gen) {
        size_t cap = KVP_MAX(2 * ss->cap_gen, ss->n_gen_bytes + n + 256);
        char *g = realloc(ss->gen, cap);
        if (!g) return kvp_seterr(KVP_ENOMEM, "out of memory for generated text");
        ss->gen = g;
        ss->cap_gen = cap;
    }
    memcpy(ss->gen + ss->n_gen_bytes, p, n);
    ss->n_gen_bytes += n;
    ss->gen[ss->n_gen_bytes] = 0;
    return KVP_OK;
}

/* Emits gen[emitted..end) to the job (sanitized), or only its complete UTF-8 part unless
 * final. */
static int kvp_gen_emit(kvp_sess *ss, size_t end, int final) {
    if (end <= ss->emitted) return KVP_OK;
    size_t n = end - ss->emitted;
    if (!final) n = kvp_utf8_complete(ss->gen + ss->emitted, n);
    if (n == 0) return KVP_OK;
    char *clean = malloc(3 * n + 1);
    if (!clean) return kvp_seterr(KVP_ENOMEM, "out of memory emitting text");
    size_t k = kvp_utf8_sanitize(ss->gen + ss->emitted, n, clean);
    int rc = kvp_job_push_text(ss->job, clean, k);
    free(clean);
    if (rc == KVP_OK) ss->emitted += n;
    return rc;
}

/* Where the first stop string starts in the text not emitted yet, or (size_t)-1. */
static size_t kvp_gen_find_stop(const kvp_sess *ss) {
    size_t best = (size_t)-1;
    const kvp_srv_job *j = ss->job;
    for (int i = 0; i < j->n_stop; i++) {
        const char *hit = memmem(ss->gen + ss->emitted, ss->n_gen_bytes - ss->emitted, j->stop[i], strlen(j->stop[i]));
        if (hit && (size_t)(hit - ss->gen) < best) best = (size_t)(hit - ss->gen);
    }
    return best;
}

/* The end of the text that cannot be the start of a stop string. */
static size_t kvp_gen_safe_end(const kvp_sess *ss) {
    size_t n = ss->n_gen_bytes, keep = 0;
    const kvp_srv_job *j = ss->job;
    for (int i = 0; i < j->n_stop; i++) {
        size_t ls = strlen(j->stop[i]);
        for (size_t k = KVP_MIN(ls - 1, n - ss->emitted); k > keep; k--)
            if (!memcmp(ss->gen + n - k, j->stop[i], k)) {
                keep = k;
                break;
            }
    }
    return n - keep;
}

/* ---- log-probabilities ---- */

/* logprob of tok and the n most likely tokens, from the model's logits (no temperature). */
static void kvp_gen_logprobs(const float *lg, int V, int tok, int n, kvp_srv_tok *t) {
    float mx = lg[0];
    for (int i = 1; i < V; i++) mx = lg[i] > mx ? lg[i] : mx;
    double sum = 0;
    for (int i = 0; i < V; i++) sum += exp((double)(lg[i] - mx));
    float lse = mx + (float)log(sum);
    t->logprob = lg[tok] - lse;
    t->n_alts = 0;
    for (int i = 0; i < V && n > 0; i++) {
        float lp = lg[i] - lse;
        int k;
        if (t->n_alts < n) k = t->n_alts++;
        else if (lp > t->alts[n - 1].logprob) k = n - 1;
        else continue;
        for (; k > 0 && t->alts[k - 1].logprob < lp; k--) t->alts[k] = t->alts[k - 1];
        t->alts[k] = (kvp_srv_alt){i, lp};
    }
}

/* ---- one step ---- */

/* Records token tok: its text, logprobs, and what text can be emitted now. */
static int kvp_gen_record(kvp_srv *s, kvp_sess *ss, int tok) {
    kvp_srv_tok t = {tok, 0, 0, {{0, 0}}};
    if (ss->job->n_probs >= 0) kvp_gen_logprobs(ss->logits, s->vocab, tok, ss->job->n_probs, &t);
    char piece[256];
    int k = kvp_detokenize(s->m, ss->last, tok, piece, sizeof piece);
    if (k > 0) KVP_TRY(kvp_gen_append(ss, piece, (size_t)k));
    ss->last = tok;
    ss->n_gen++;
    KVP_TRY(kvp_job_push_token(ss->job, &t));
    size_t stop = kvp_gen_find_stop(ss);
    if (stop != (size_t)-1) ss->stop_at = stop;
    return kvp_gen_emit(ss, stop != (size_t)-1 ? stop : kvp_gen_safe_end(ss), 0);
}

int kvp_gen_step(kvp_srv *s, kvp_sess *ss, int *tok) {
    *tok = kvp_sampler_sample(ss->smp, ss->logits);
    if (kvp_token_is_eog(s->m, *tok) && !ss->job->ignore_eos) {
        ss->finish = KVP_SRV_FINISH_STOP;
        return 1;
    }
    KVP_TRY(kvp_gen_record(s, ss, *tok));
    if (ss->stop_at != (size_t)-1) ss->finish = KVP_SRV_FINISH_STOP;
    else if (ss->n_gen >= ss->max_gen) ss->finish = KVP_SRV_FINISH_LENGTH;
    return ss->finish != KVP_SRV_RUNNING;
}

void kvp_gen_flush(kvp_sess *ss) {
    kvp_gen_emit(ss, ss->stop_at != (size_t)-1 ? ss->stop_at : ss->n_gen_bytes, 1);
}
