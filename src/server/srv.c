/*
 * srv.c: the serving engine's lifecycle, the job queue and the jobs callers read.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "srv_internal.h"

kvp_srv_params kvp_srv_default_params(void) {
    kvp_srv_params p;
    memset(&p, 0, sizeof p);
    p.store_level = KVP_LEVEL_LOSSLESS;
    p.cold_level = KVP_LEVEL_MEDIUM;
    return p;
}

const char *kvp_srv_reuse_name(int source) {
    static const char *const names[] = {"none", "idle", "session", "cold", "store"};
    return source >= 0 && source < 5 ? names[source] : "none";
}

/* ---- jobs ---- */

static void kvp_job_free(kvp_srv_job *j) {
    for (int i = 0; i < j->n_stop; i++) free(j->stop[i]);
    free(j->tokens);
    free(j->kv);
    free(j->select);
    free(j->budget);
    free(j->toks);
    free(j->text);
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cv);
    free(j);
}

/* Drops one reference (the caller's or the scheduler's). */
static void kvp_job_unref(kvp_srv_job *j) {
    pthread_mutex_lock(&j->mu);
    int left = --j->refs;
    pthread_mutex_unlock(&j->mu);
    if (left == 0) kvp_job_free(j);
}

void kvp_srv_job_release(kvp_srv_job *j) {
    if (!j) return;
    pthread_mutex_lock(&j->mu);
    if (j->st.finish == KVP_SRV_RUNNING) j->cancelled = 1;
    pthread_mutex_unlock(&j->mu);
    kvp_job_unref(j);
}

int kvp_job_is_cancelled(kvp_srv_job *j) {
    pthread_mutex_lock(&j->mu);
    int c = j->cancelled;
    pthread_mutex_unlock(&j->mu);
    return c;
}

int kvp_job_push_token(kvp_srv_job *j, const kvp_srv_tok *t) {
    pthread_mutex_lock(&j->mu);
    int rc = KVP_OK;
    if (j->st.n_tokens == j->cap_toks) {
        int cap = j->cap_toks ? 2 * j->cap_toks : 16;
        kvp_srv_tok *nt = realloc(j->toks, sizeof *nt * (size_t)cap);
        if (nt) j->toks = nt, j->cap_toks = cap;
        else rc = kvp_seterr(KVP_ENOMEM, "out of memory recording a generated token");
    }
    if (rc == KVP_OK) {
        j->toks[j->st.n_tokens++] = *t;
        if (j->st.n_tokens == 1) j->st.t_first = kvp_now() - j->t_submit;
        pthread_cond_broadcast(&j->cv);
    }
    pthread_mutex_unlock(&j->mu);
    return rc;
}

int kvp_job_push_text(kvp_srv_job *j, const char *s, size_t n) {
    if (n == 0) return KVP_OK;
    pthread_mutex_lock(&j->mu);
    int rc = KVP_OK;
    if (j->st.text_len + n + 1 > j->cap_text) {
        size_t cap = KVP_MAX(2 * j->cap_text, j->st.text_len + n + 64);
        char *nt = realloc(j->text, cap);
        if (nt) j->text = nt, j->cap_text = cap;
        else rc = kvp_seterr(KVP_ENOMEM, "out of memory recording generated text");
    }
    if (rc == KVP_OK) {
        memcpy(j->text + j->st.text_len, s, n);
        j->st.text_len += n;
        j->text[j->st.text_len] = 0;
        pthread_cond_broadcast(&j->cv);
    }
    pthread_mutex_unlock(&j->mu);
    return rc;
}

void kvp_job_finish(kvp_srv_job *j, int finish, int error, const char *message) {
    pthread_mutex_lock(&j->mu);
    if (j->st.finish == KVP_SRV_RUNNING) {
        j->st.finish = finish;
        j->st.error = error;
        snprintf(j->st.message, sizeof j->st.message, "%s", message ? message : "");
        j->st.t_total = kvp_now() - j->t_submit;
        if (!j->st.admitted) j->st.t_queue = j->st.t_total;
    }
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

void kvp_job_set_admitted(kvp_srv_job *j, int n_cached, int reuse) {
    pthread_mutex_lock(&j->mu);
    j->st.admitted = 1;
    j->st.n_cached = n_cached;
    j->st.reuse = reuse;
    j->st.t_queue = kvp_now() - j->t_submit;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

/* The absolute time timeout_ms from now, for pthread_cond_timedwait. */
static struct timespec kvp_deadline(int timeout_ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
    return ts;
}

static int kvp_job_changed(const kvp_srv_job *j, int n_tokens, size_t text_len, int admitted) {
    return j->st.n_tokens > n_tokens || j->st.text_len > text_len || j->st.admitted != admitted ||
           j->st.finish != KVP_SRV_RUNNING;
}

int kvp_srv_job_wait(kvp_srv_job *j, int n_tokens, size_t text_len, int admitted, int timeout_ms) {
    struct timespec dl = kvp_deadline(timeout_ms);
    pthread_mutex_lock(&j->mu);
    int rc = 0;
    while (!(rc = kvp_job_changed(j, n_tokens, text_len, admitted)))
        if (pthread_cond_timedwait(&j->cv, &j->mu, &dl) != 0) break;
    pthread_mutex_unlock(&j->mu);
    return rc;
}

void kvp_srv_job_status(kvp_srv_job *j, kvp_srv_status *st) {
    pthread_mutex_lock(&j->mu);
    *st = j->st;
    pthread_mutex_unlock(&j->mu);
}

int kvp_srv_job_view(kvp_srv_job *j, int tok_from, size_t text_from, kvp_srv_view *v) {
    memset(v, 0, sizeof *v);
    pthread_mutex_lock(&j->mu);
    v->st = j->st;
    int nt = KVP_MAX(0, j->st.n_tokens - tok_from);
    size_t nx = j->st.text_len > text_from ? j->st.text_len - text_from : 0;
    v->toks = malloc(sizeof *v->toks * (size_t)KVP_MAX(nt, 1));
    v->text = malloc(nx + 1);
    if (v->toks && v->text) {
        if (nt) memcpy(v->toks, j->toks + tok_from, sizeof *v->toks * (size_t)nt);
        if (nx) memcpy(v->text, j->text + text_from, nx);
        v->text[nx] = 0;
        v->n_toks = nt;
        v->n_text = nx;
    }
    pthread_mutex_unlock(&j->mu);
    if (v->toks && v->text) return KVP_OK;
    kvp_srv_view_free(v);
    return kvp_seterr(KVP_ENOMEM, "out of memory copying a job's progress");
}

void kvp_srv_view_free(kvp_srv_view *v) {
    free(v->toks);
    free(v->text);
    v->toks = NULL;
    v->text = NULL;
}

/* ---- submitting ---- */

static char *kvp_strdup_or_null(const char *s, int *ok) {
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) *ok = 0;
    return d;
}

/* Copies the request's strings into the job; 0 when out of memory. */
static int kvp_job_copy_strings(kvp_srv_job *j, const kvp_srv_req *r) {
    int ok = 1;
    j->kv = kvp_strdup_or_null(r->kv, &ok);
    j->select = kvp_strdup_or_null(r->select, &ok);
    j->budget = kvp_strdup_or_null(r->budget, &ok);
    for (int i = 0; i < r->n_stop; i++) j->stop[j->n_stop++] = kvp_strdup_or_null(r->stop[i], &ok);
    return ok;
}

static int kvp_req_check(const kvp_srv *s, const kvp_srv_req *r, int *err) {
    *err = KVP_SRV_EBADREQ;
    if (!r->tokens || r->n_tokens < 1) return kvp_seterr(KVP_EINVAL, "the prompt has no tokens");
    for (int i = 0; i < r->n_tokens; i++)
        if (r->tokens[i] < 0 || r->tokens[i] >= s->vocab)
            return kvp_seterr(KVP_EINVAL, "token id %d at index %d is outside the vocabulary (0..%d)", r->tokens[i], i,
                              s->vocab - 1);
    if (r->max_tokens < 0) return kvp_seterr(KVP_EINVAL, "max_tokens must be >= 0");
    if (r->n_stop < 0 || r->n_stop > KVP_SRV_MAX_STOP) return kvp_seterr(KVP_EINVAL, "at most %d stop strings", KVP_SRV_MAX_STOP);
    for (int i = 0; i < r->n_stop; i++)
        if (!r->stop[i] || !r->stop[i][0]) return kvp_seterr(KVP_EINVAL, "stop strings must not be empty");
    if (r->n_probs < -1 || r->n_probs > KVP_SRV_MAX_PROBS)
        return kvp_seterr(KVP_EINVAL, "logprobs must be 0..%d", KVP_SRV_MAX_PROBS);
    const kvp_sampler_params *sp = &r->sampling;
    if (!(sp->temp >= 0) || sp->top_k < 0 || !(sp->top_p > 0 && sp->top_p <= 1))
        return kvp_seterr(KVP_EINVAL, "bad sampling parameters (temperature %g, top_k %d, top_p %g)", sp->temp, sp->top_k,
                          sp->top_p);
    *err = KVP_SRV_ETOOLONG;
    if (r->n_tokens >= s->n_ctx)
        return kvp_seterr(KVP_ERANGE, "the prompt has %d tokens; the context holds %d (with room for at least one "
                          "generated token)", r->n_tokens, s->n_ctx);
    *err = KVP_SRV_OK;
    return KVP_OK;
}

static int kvp_job_new(const kvp_srv *s, const kvp_srv_req *r, kvp_srv_job **out) {
    kvp_srv_job *j = calloc(1, sizeof *j);
    if (!j) return kvp_seterr(KVP_ENOMEM, "out of memory queuing a request");
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    j->refs = 2;
    j->tokens = malloc(sizeof(int) * (size_t)r->n_tokens);
    if (!j->tokens || !kvp_job_copy_strings(j, r)) {
        kvp_job_free(j);
        return kvp_seterr(KVP_ENOMEM, "out of memory queuing a request");
    }
    memcpy(j->tokens, r->tokens, sizeof(int) * (size_t)r->n_tokens);
    j->n_tokens = r->n_tokens;
    j->max_tokens = KVP_MIN(r->max_tokens, s->n_ctx - r->n_tokens);
    j->n_probs = r->n_probs;
    j->ignore_eos = r->ignore_eos;
    j->no_reuse = r->no_reuse;
    j->sampling = r->sampling;
    snprintf(j->key, sizeof j->key, "%s|%s|%s", r->kv ? r->kv : s->kv, r->select ? r->select : s->select,
             r->budget ? r->budget : s->budget);
    j->st.n_prompt = r->n_tokens;
    j->t_submit = kvp_now();
    *out = j;
    return KVP_OK;
}

int kvp_srv_submit(kvp_srv *s, const kvp_srv_req *r, kvp_srv_job **out, int *err) {
    *out = NULL;
    KVP_TRY(kvp_req_check(s, r, err));
    kvp_srv_job *j = NULL;
    *err = KVP_SRV_EINTERNAL;
    KVP_TRY(kvp_job_new(s, r, &j));
    pthread_mutex_lock(&s->mu);
    int rc = KVP_OK;
    if (s->stopping) {
        rc = kvp_seterr(KVP_EINVAL, "the server is shutting down");
    } else if (s->n_queued >= s->p.max_queue) {
        rc = kvp_seterr(KVP_ERANGE, "the server is over capacity: %d requests are waiting; retry later", s->n_queued);
    } else {
        if (s->q_tail) s->q_tail->next = j;
        else s->q_head = j;
        s->q_tail = j;
        s->n_queued++;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (rc < 0) {
        *err = KVP_SRV_EBUSY;
        kvp_job_free(j);
        return rc;
    }
    *err = KVP_SRV_OK;
    *out = j;
    return KVP_OK;
}

void kvp_srv_job_done(kvp_srv_job *j, int finish, int error, const char *message) {
    kvp_job_finish(j, finish, error, message);
    kvp_job_unref(j);
}

/* ---- lifecycle ---- */

static void kvp_srv_fill_defaults(kvp_srv *s, const kvp_srv_params *p) {
    s->p = *p;
    const kvp_model_info *in = kvp_model_get_info(s->m);
    s->n_ctx = p->n_ctx > 0 ? p->n_ctx : KVP_MIN(in->n_ctx_train, 4096);
    s->vocab = in->vocab_size;
    if (s->p.n_threads <= 0) s->p.n_threads = 1;
    if (s->p.n_batch <= 0) s->p.n_batch = 256;
    if (s->p.chunk_tokens <= 0) s->p.chunk_tokens = KVP_CHUNK_TOKENS_DEFAULT;
    if (s->p.max_sessions <= 0) s->p.max_sessions = 16;
    if (s->p.max_queue <= 0) s->p.max_queue = 64;
    if (s->p.max_idle <= 0) s->p.max_idle = s->p.max_sessions;
    if (s->p.store_timeout_ms <= 0) s->p.store_timeout_ms = 500;
    snprintf(s->kv, sizeof s->kv, "%s", p->kv && *p->kv ? p->kv : "f16");
    snprintf(s->select, sizeof s->select, "%s", p->select ? p->select : "");
    snprintf(s->budget, sizeof s->budget, "%s", p->budget ? p->budget : "");
    s->max_slots = s->p.max_sessions + s->p.max_idle;
}

static int kvp_srv_check_params(const kvp_srv_params *p) {
    if (p->n_ctx < 0 || p->n_threads < 0 || p->n_threads > 256 || p->n_batch < 0 || p->chunk_tokens < 0 ||
        p->max_sessions < 0 || p->max_queue < 0 || p->max_idle < 0)
        return kvp_seterr(KVP_EINVAL, "bad server parameters");
    if (p->store_level < KVP_LEVEL_TEXT || p->store_level > KVP_LEVEL_LOSSLESS)
        return kvp_seterr(KVP_EINVAL, "the store level must be 0..4 (got %d)", p->store_level);
    if (p->cold_level != -2 && (p->cold_level < KVP_LEVEL_LOW || p->cold_level > KVP_LEVEL_LOSSLESS))
        return kvp_seterr(KVP_EINVAL, "the cold-tier level must be 1..4, or -2 for no cold tier (got %d)", p->cold_level);
    return KVP_OK;
}

/* Checks the default cache by creating (and freeing) one context with it. */
static int kvp_srv_check_cache(kvp_srv *s) {
    kvp_slot *sl = NULL;
    char key[KVP_SRV_KEY];
    snprintf(key, sizeof key, "%s|%s|%s", s->kv, s->select, s->budget);
    KVP_TRY(kvp_slot_new(s, key, NULL, &sl));
    kvp_slot_free(sl);
    return KVP_OK;
}

static int kvp_srv_init(kvp_srv *s) {
    size_t kvd = (size_t)kvp_model_get_info(s->m)->n_kv_heads * (size_t)kvp_model_get_info(s->m)->head_dim;
    s->slots = calloc((size_t)s->max_slots, sizeof *s->slots);
    s->copy_buf = malloc(sizeof(float) * 64 * 2 * kvd * (size_t)kvp_model_get_info(s->m)->n_layers);
    size_t ns = (size_t)s->p.max_sessions;
    s->b_sess = malloc(sizeof *s->b_sess * ns);
    s->b_ctxs = malloc(sizeof *s->b_ctxs * ns);
    s->b_toks = malloc(sizeof(int) * ns);
    s->b_status = malloc(sizeof(int) * ns);
    s->b_logits = malloc(sizeof(float) * ns * (size_t)s->vocab);
    if (!s->slots || !s->copy_buf || !s->b_sess || !s->b_ctxs || !s->b_toks || !s->b_status || !s->b_logits)
        return kvp_seterr(KVP_ENOMEM, "out of memory creating the server");
    KVP_TRY(kvp_srv_check_cache(s));
    KVP_TRY(kvp_sstore_open(s));
    if (pthread_create(&s->thread, NULL, kvp_sched_main, s) != 0)
        return kvp_seterr(KVP_EINTERNAL, "cannot start the scheduler thread");
    s->started = 1;
    return KVP_OK;
}

int kvp_srv_new(kvp_model *m, const kvp_srv_params *p, kvp_srv **out) {
    *out = NULL;
    kvp_srv_params def = kvp_srv_default_params();
    if (!p) p = &def;
    KVP_TRY(kvp_srv_check_params(p));
    kvp_srv *s = calloc(1, sizeof *s);
    if (!s) return kvp_seterr(KVP_ENOMEM, "out of memory creating the server");
    s->m = m;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    kvp_metrics_init(&s->metrics);
    kvp_srv_fill_defaults(s, p);
    int rc = kvp_srv_init(s);
    if (rc < 0) {
        kvp_srv_free(s);
        return rc;
    }
    *out = s;
    return KVP_OK;
}

void kvp_srv_stop(kvp_srv *s) {
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    int join = s->started && !s->stopped;
    s->stopped = 1;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (join) pthread_join(s->thread, NULL);
}

void kvp_srv_free(kvp_srv *s) {
    if (!s) return;
    kvp_srv_stop(s);
    for (int i = 0; i < s->n_slots; i++) kvp_slot_free(s->slots[i]);
    for (int i = 0; i < s->n_cold; i++) {
        free(s->cold[i].toks);
        free(s->cold[i].kvz);
    }
    free(s->cold);
    free(s->slots);
    free(s->copy_buf);
    free(s->b_sess);
    free(s->b_ctxs);
    free(s->b_toks);
    free(s->b_status);
    free(s->b_logits);
    kvp_sstore_close(&s->store);
    kvp_metrics_destroy(&s->metrics);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
}

const kvp_model *kvp_srv_model(const kvp_srv *s) { return s->m; }
int kvp_srv_n_ctx(const kvp_srv *s) { return s->n_ctx; }

void kvp_srv_get_stats(kvp_srv *s, kvp_srv_stats *st) {
    memset(st, 0, sizeof *st);
    kvp_metrics *m = &s->metrics;
    pthread_mutex_lock(&m->mu);
    st->sessions = m->sessions;
    st->queued = m->queued;
    st->idle_contexts = m->idle;
    st->cold_entries = m->cold_entries;
    st->kv_hot = m->kv_hot;
    st->kv_cold = m->kv_cold;
    st->requests = m->jobs;
    st->prompt_tokens = m->prompt_tokens;
    for (int i = 1; i < 5; i++) st->reused_tokens += m->reused[i];
    st->prefilled_tokens = m->prefilled;
    st->generated_tokens = m->generated;
    st->store_hits = m->store_hits;
    st->store_misses = m->store_misses;
    st->store_errors = m->store_errors;
    st->store_chunks_written = m->store_written;
    st->compressed = m->compressed;
    st->dropped = m->dropped;
    st->cancelled = m->cancelled;
    st->decode_steps = m->decode_steps;
    st->decode_tokens = m->decode_rows;
    pthread_mutex_unlock(&m->mu);
    st->kv_memory = s->p.kv_memory;
}

void kvp_srv_note_request(kvp_srv *s, const char *endpoint, int status, double seconds) {
    kvp_metrics *m = &s->metrics;
    pthread_mutex_lock(&m->mu);
    int i = 0;
    while (i < m->n_req && !(m->req[i].status == status && !strcmp(m->req[i].endpoint, endpoint))) i++;
    if (i == m->n_req && i < KVP_REQ_KINDS) {
        snprintf(m->req[i].endpoint, sizeof m->req[i].endpoint, "%s", endpoint);
        m->req[i].status = status;
        m->n_req++;
    }
    if (i < m->n_req) m->req[i].n++;
    kvp_hist_add(&m->http_seconds, seconds);
    pthread_mutex_unlock(&m->mu);
}

char *kvp_srv_metrics(kvp_srv *s) { return kvp_metrics_render(&s->metrics, s->p.kv_memory); }
