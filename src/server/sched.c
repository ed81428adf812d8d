/*
 * sched.c: the scheduler thread. Each round it admits waiting jobs (in order, passing over a
 * job whose prompt prefix another session is still prefilling: it waits to reuse it rather
 * than compute it twice) while sessions and the KV budget allow; then it advances the oldest
 * prefilling session by a piece of its prompt (n_batch tokens, or 64 while others decode, so
 * that a long prefill never stalls their streams for long) and every decoding session by one
 * token, all of them in one batched forward pass (continuous batching; serial_decode feeds
 * them one by one); then it applies the memory budget and publishes the gauges. It sleeps
 * when there is nothing to do.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "srv_internal.h"

#define KVP_PIECE_SHARED 64 /* prompt tokens per step while other sessions decode */
#define KVP_WAIT_MIN 64     /* a shared prefix worth waiting for */

/* Waits for work; 0 when the server is stopping. */
static int kvp_sched_wait(kvp_srv *s) {
    pthread_mutex_lock(&s->mu);
    while (!s->stopping && !s->sessions && !s->q_head) pthread_cond_wait(&s->cv, &s->mu);
    int go = !s->stopping;
    pthread_mutex_unlock(&s->mu);
    return go;
}

static kvp_srv_job *kvp_sched_peek(kvp_srv *s) {
    pthread_mutex_lock(&s->mu);
    kvp_srv_job *j = s->q_head;
    pthread_mutex_unlock(&s->mu);
    return j;
}

/* The job after j in the queue (NULL at its end). */
static kvp_srv_job *kvp_sched_next(kvp_srv *s, kvp_srv_job *j) {
    pthread_mutex_lock(&s->mu);
    kvp_srv_job *n = j->next;
    pthread_mutex_unlock(&s->mu);
    return n;
}

/* Takes job j out of the queue (only the scheduler removes jobs, so j is in it). */
static void kvp_sched_unlink(kvp_srv *s, kvp_srv_job *j) {
    pthread_mutex_lock(&s->mu);
    kvp_srv_job **pp = &s->q_head, *prev = NULL;
    while (*pp != j) prev = *pp, pp = &(*pp)->next;
    *pp = j->next;
    if (s->q_tail == j) s->q_tail = prev;
    j->next = NULL;
    s->n_queued--;
    pthread_mutex_unlock(&s->mu);
}

static void kvp_sched_pop(kvp_srv *s) { kvp_sched_unlink(s, kvp_sched_peek(s)); }

/* ---- ending sessions ---- */

static void kvp_sched_count_end(kvp_srv *s, const kvp_sess *ss, int finish) {
    kvp_srv_status st;
    kvp_srv_job_status(ss->job, &st);
    kvp_metrics *m = &s->metrics;
    pthread_mutex_lock(&m->mu);
    m->jobs++;
    m->generated += (uint64_t)ss->n_gen;
    m->cancelled += finish == KVP_SRV_FINISH_CANCELLED;
    if (st.t_first > 0) kvp_hist_add(&m->ttft, st.t_first);
    kvp_hist_add(&m->queue_wait, st.t_queue);
    kvp_hist_add(&m->job_seconds, kvp_now() - ss->job->t_submit);
    pthread_mutex_unlock(&m->mu);
}

/* Ends session ss: the job gets its result, the slot stays as an idle cache. */
static void kvp_sess_end(kvp_srv *s, kvp_sess *ss, int finish, int error, const char *message) {
    if (finish != KVP_SRV_FINISH_ERROR) kvp_gen_flush(ss);
    kvp_sched_count_end(s, ss, finish);
    kvp_srv_job_done(ss->job, finish, error, message);
    if (ss->slot) {
        if (finish == KVP_SRV_FINISH_ERROR) kvp_slot_truncate(ss->slot, 0); /* its state is unknown */
        ss->slot->sess = NULL;
        ss->slot->last_used = kvp_now();
    }
    kvp_sess **pp = &s->sessions;
    while (*pp != ss) pp = &(*pp)->next;
    *pp = ss->next;
    s->n_sessions--;
    kvp_gen_free(ss);
    free(ss);
}

/* The error class of a library failure inside a session. */
static int kvp_sched_class(int rc) {
    if (rc == KVP_EINVAL || rc == KVP_EUNSUPPORTED) return KVP_SRV_EBADREQ;
    if (rc == KVP_ENOMEM) return KVP_SRV_EBUSY;
    return KVP_SRV_EINTERNAL;
}

static void kvp_sess_fail(kvp_srv *s, kvp_sess *ss, int rc) {
    kvp_sess_end(s, ss, KVP_SRV_FINISH_ERROR, kvp_sched_class(rc), kvp_errmsg());
}

/* ---- admission ---- */

static void kvp_sched_link(kvp_srv *s, kvp_sess *ss) {
    kvp_sess **pp = &s->sessions;
    while (*pp) pp = &(*pp)->next;
    *pp = ss;
    s->n_sessions++;
}

/* Starts a session for job j (popped from the queue). */
static void kvp_sched_start(kvp_srv *s, kvp_srv_job *j) {
    kvp_sess *ss = calloc(1, sizeof *ss);
    if (!ss) {
        kvp_srv_job_done(j, KVP_SRV_FINISH_ERROR, KVP_SRV_EBUSY, "out of memory starting a session");
        return;
    }
    ss->job = j;
    kvp_sched_link(s, ss);
    int rc = kvp_gen_start(s, ss);
    if (rc == KVP_OK) rc = kvp_reuse_prepare(s, ss);
    if (rc < 0) kvp_sess_fail(s, ss, rc);
}

/* 1 when job j fits the KV budget next to the running sessions; a job that cannot fit even
 * alone is refused. */
static int kvp_sched_fits(kvp_srv *s, kvp_srv_job *j) {
    uint64_t need = kvp_budget_need(s, j);
    if (!s->p.kv_memory || kvp_budget_reserved(s, NULL) + need <= s->p.kv_memory) return 1;
    if (s->n_sessions > 0) return 0;
    char msg[256];
    snprintf(msg, sizeof msg, "the request needs %llu bytes of KV cache (%d prompt + %d generated positions); "
             "--kv-memory allows %llu", (unsigned long long)need, j->n_tokens, j->max_tokens,
             (unsigned long long)s->p.kv_memory);
    kvp_sched_unlink(s, j);
    kvp_srv_job_done(j, KVP_SRV_FINISH_ERROR, KVP_SRV_EBUSY, msg);
    return -1;
}

/* 1 when a session still prefilling the same prompt prefix will soon give job j more of it
 * than memory holds now: j waits for it rather than computing the prefix twice. */
static int kvp_sched_should_wait(kvp_srv *s, const kvp_srv_job *j) {
    for (const kvp_sess *ss = s->sessions; ss; ss = ss->next) {
        if (ss->state != KVP_SESS_PREFILL || j->no_reuse || ss->job->no_reuse || strcmp(ss->job->key, j->key)) continue;
        int n = kvp_lcp(ss->job->tokens, ss->job->n_tokens, j->tokens, j->n_tokens - 1);
        if (n >= KVP_WAIT_MIN && n > ss->fed) return 1;
    }
    return 0;
}

static void kvp_sched_cancelled(kvp_srv *s, kvp_srv_job *j) {
    kvp_sched_unlink(s, j);
    pthread_mutex_lock(&s->metrics.mu);
    s->metrics.cancelled++;
    pthread_mutex_unlock(&s->metrics.mu);
    kvp_srv_job_done(j, KVP_SRV_FINISH_CANCELLED, 0, "cancelled");
}

/* Admits waiting jobs in order while sessions and the KV budget allow; a job whose prefix
 * another session is prefilling is passed over until that prefill is done. */
static void kvp_sched_admit(kvp_srv *s) {
    kvp_srv_job *j = kvp_sched_peek(s), *next;
    for (; j && s->n_sessions < s->p.max_sessions; j = next) {
        next = kvp_sched_next(s, j);
        if (kvp_job_is_cancelled(j)) {
            kvp_sched_cancelled(s, j);
            continue;
        }
        if (kvp_sched_should_wait(s, j)) continue;
        int fit = kvp_sched_fits(s, j);
        if (fit == 0) break;
        if (fit < 0) continue;
        kvp_sched_unlink(s, j);
        kvp_sched_start(s, j);
        kvp_budget_enforce(s);
    }
}

/* ---- steps ----
 * A decoding session holds the logits of its last fed token. Each round it samples its next
 * token from them (emitting its text), then feeds that token: every such session's in one
 * batched forward pass (kvp_ctx_decode_batch, the weights read once for all of them), or,
 * with serial_decode, each in a forward pass of its own. */

/* Samples the next token; returns 1 when the session goes on with it in ss->next_tok, 0 when
 * the session ended (and was freed). */
static int kvp_sess_sample(kvp_srv *s, kvp_sess *ss) {
    if (ss->n_gen >= ss->max_gen) {
        kvp_sess_end(s, ss, KVP_SRV_FINISH_LENGTH, 0, NULL);
        return 0;
    }
    int tok = 0, rc = kvp_gen_step(s, ss, &tok);
    if (rc != 0) {
        if (rc < 0) kvp_sess_fail(s, ss, rc);
        else kvp_sess_end(s, ss, ss->finish, 0, NULL);
        return 0;
    }
    ss->next_tok = tok;
    return 1;
}

/* Records the outcome rc of feeding ss->next_tok to the session's context. */
static void kvp_sess_fed(kvp_srv *s, kvp_sess *ss, int rc) {
    if (rc == KVP_OK) rc = kvp_slot_push(ss->slot, &ss->next_tok, 1);
    if (rc < 0) kvp_sess_fail(s, ss, rc);
}

static void kvp_sched_count_steps(kvp_srv *s, int steps, int tokens) {
    pthread_mutex_lock(&s->metrics.mu);
    s->metrics.decode_steps += (uint64_t)steps;
    s->metrics.decode_rows += (uint64_t)tokens;
    pthread_mutex_unlock(&s->metrics.mu);
}

/* Feeds the n sessions' sampled tokens in one batched forward pass. A session that failed
 * gets the call's message when it is the first failure (the message names it), a generic
 * one otherwise. */
static void kvp_sched_feed_batch(kvp_srv *s, kvp_sess **ss, int n) {
    size_t V = (size_t)s->vocab;
    for (int i = 0; i < n; i++) {
        s->b_ctxs[i] = ss[i]->slot->ctx;
        s->b_toks[i] = ss[i]->next_tok;
    }
    int rc = kvp_ctx_decode_batch(s->b_ctxs, s->b_toks, n, s->b_logits, s->b_status), first = 1;
    char msg[256];
    snprintf(msg, sizeof msg, "%s", rc < 0 ? kvp_errmsg() : "");
    for (int i = 0; i < n; i++) {
        int st = s->b_status[i];
        if (st == KVP_OK) memcpy(ss[i]->logits, s->b_logits + (size_t)i * V, sizeof(float) * V);
        else if (first) first = 0, kvp_seterr(st, "%s", msg);
        else kvp_seterr(st, "the batched decode step failed for this session (%s)", kvp_strerror(st));
        kvp_sess_fed(s, ss[i], st);
    }
    kvp_sched_count_steps(s, 1, n);
}

/* Feeds the n sessions' sampled tokens one forward pass each (serial_decode). */
static void kvp_sched_feed_serial(kvp_srv *s, kvp_sess **ss, int n) {
    for (int i = 0; i < n; i++)
        kvp_sess_fed(s, ss[i], kvp_ctx_decode(ss[i]->slot->ctx, &ss[i]->next_tok, 1, ss[i]->logits, 0));
    kvp_sched_count_steps(s, n, n);
}

/* A prompt whose prefill ended in this round, stored once its first token is out. */
typedef struct {
    kvp_slot *slot;
    int *toks, n;
} kvp_sched_save;

/* Feeds the next piece of the prompt; after the last one the session decodes (its first
 * token is sampled in this round) and its prompt is noted in sv for the store. */
static void kvp_sess_prefill(kvp_srv *s, kvp_sess *ss, int piece, kvp_sched_save *sv) {
    kvp_srv_job *j = ss->job;
    int b = KVP_MIN(piece, j->n_tokens - ss->fed), last = ss->fed + b == j->n_tokens;
    int rc = kvp_ctx_decode(ss->slot->ctx, j->tokens + ss->fed, b, last ? ss->logits : NULL, 0);
    if (rc == KVP_OK) rc = kvp_slot_push(ss->slot, j->tokens + ss->fed, b);
    if (rc < 0) {
        kvp_sess_fail(s, ss, rc);
        return;
    }
    ss->fed += b;
    if (!last) return;
    ss->state = KVP_SESS_DECODE;
    if (j->no_reuse || !(sv->toks = malloc(sizeof(int) * (size_t)j->n_tokens))) return;
    memcpy(sv->toks, j->tokens, sizeof(int) * (size_t)j->n_tokens);
    sv->n = j->n_tokens;
    sv->slot = ss->slot;
}

/* Ends the cancelled sessions; advances the oldest prefilling one by a piece. */
static void kvp_sched_prefill(kvp_srv *s, kvp_sched_save *sv) {
    int decoding = 0;
    for (kvp_sess *ss = s->sessions; ss; ss = ss->next) decoding += ss->state == KVP_SESS_DECODE;
    int piece = decoding ? KVP_MIN(s->p.n_batch, KVP_PIECE_SHARED) : s->p.n_batch;
    kvp_sess *pre = NULL, *next;
    for (kvp_sess *ss = s->sessions; ss; ss = next) {
        next = ss->next;
        if (kvp_job_is_cancelled(ss->job)) kvp_sess_end(s, ss, KVP_SRV_FINISH_CANCELLED, 0, "cancelled");
        else if (!pre && ss->state == KVP_SESS_PREFILL) pre = ss;
    }
    if (pre) kvp_sess_prefill(s, pre, piece, sv);
}

/* One round: the oldest prefilling session advances by a piece of its prompt (prompts are
 * prefilled first come, first served, so the first of several waiting prompts gets its
 * first token as early as it can); every decoding session (the one whose prefill just
 * ended included) samples a token and feeds it, so every stream moves at every round. */
static void kvp_sched_round(kvp_srv *s) {
    kvp_sched_save sv = {NULL, NULL, 0};
    kvp_sched_prefill(s, &sv);
    int k = 0;
    kvp_sess **go = s->b_sess, *next;
    for (kvp_sess *ss = s->sessions; ss; ss = next) {
        next = ss->next; /* sampling may end (and free) ss */
        if (ss->state == KVP_SESS_DECODE && kvp_sess_sample(s, ss)) go[k++] = ss;
    }
    if (k > 1 && !s->p.serial_decode) kvp_sched_feed_batch(s, go, k);
    else if (k > 0) kvp_sched_feed_serial(s, go, k);
    if (sv.toks && kvp_ctx_pos(sv.slot->ctx) >= sv.n) kvp_sstore_save(s, sv.slot, sv.toks, sv.n);
    free(sv.toks);
}

/* ---- gauges and shutdown ---- */

static void kvp_sched_gauges(kvp_srv *s) {
    int idle = 0;
    for (int i = 0; i < s->n_slots; i++) idle += !s->slots[i]->sess;
    uint64_t hot = kvp_budget_hot(s), cold = kvp_cold_bytes(s);
    pthread_mutex_lock(&s->mu);
    int queued = s->n_queued;
    pthread_mutex_unlock(&s->mu);
    kvp_metrics *m = &s->metrics;
    pthread_mutex_lock(&m->mu);
    m->sessions = s->n_sessions;
    m->queued = queued;
    m->idle = idle;
    m->cold_entries = s->n_cold;
    m->kv_hot = hot;
    m->kv_cold = cold;
    pthread_mutex_unlock(&m->mu);
}

static void kvp_sched_shutdown(kvp_srv *s) {
    while (s->sessions) kvp_sess_end(s, s->sessions, KVP_SRV_FINISH_ERROR, KVP_SRV_EBUSY, "the server is shutting down");
    kvp_srv_job *j;
    while ((j = kvp_sched_peek(s))) {
        kvp_sched_pop(s);
        kvp_srv_job_done(j, KVP_SRV_FINISH_ERROR, KVP_SRV_EBUSY, "the server is shutting down");
    }
    kvp_sched_gauges(s);
}

void *kvp_sched_main(void *arg) {
    kvp_srv *s = arg;
    while (kvp_sched_wait(s)) {
        kvp_sched_admit(s);
        kvp_sched_round(s);
        kvp_budget_enforce(s);
        kvp_sched_gauges(s);
    }
    kvp_sched_shutdown(s);
    return NULL;
}
