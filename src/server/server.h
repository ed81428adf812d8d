/*
 * server.h: the serving engine behind `kvpack serve` (docs/serve.md). It has no HTTP and no
 * JSON: tools/serve_*.c put those around it, and tests drive it directly.
 *
 * One scheduler thread owns the model's contexts. Callers (HTTP threads) tokenize a prompt,
 * submit it as a job and read the job's progress; the scheduler admits jobs within the limits
 * (sessions, queue, KV memory), reuses the longest prompt prefix it can find (an idle
 * context's cache, another session's cache, the in-memory cold tier, the context store),
 * prefills only the rest in pieces, and advances every running session by one token per
 * round, all of them in one batched forward pass, so every stream keeps moving. When the KV of all contexts exceeds the memory budget,
 * idle caches are compressed into the cold tier, then dropped (their full chunks stay in the
 * store when there is one).
 *
 * Every function is thread-safe unless said otherwise. Internal header: not public API.
 */
#ifndef KVP_SERVER_H
#define KVP_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "kvpack.h"

#define KVP_SRV_MAX_PROBS 20 /* most alternatives reported per generated token */
#define KVP_SRV_MAX_STOP 16  /* most stop strings per request */

typedef struct kvp_srv kvp_srv;
typedef struct kvp_srv_job kvp_srv_job;

typedef struct kvp_srv_params {
    int n_ctx;              /* positions per session; 0 = the model's, at most 4096 */
    int n_threads;          /* threads of each forward pass; 0 = 1 */
    int n_batch;            /* prompt tokens per forward batch; 0 = 256 */
    const char *kv;         /* default cache spec of a session (NULL = "f16") */
    const char *select;     /* default selection policy (NULL = keep every token) */
    const char *budget;     /* its budget */
    const char *store;      /* context store URI ("dir:PATH", "redis://..."), or NULL */
    int store_level;        /* KVP_LEVEL_* of the chunks stored; default lossless */
    int store_timeout_ms;   /* redis deadline per call; 0 = 500 */
    int chunk_tokens;       /* tokens per stored chunk; 0 = KVP_CHUNK_TOKENS_DEFAULT */
    int cold_level;         /* KVP_LEVEL_* of the in-memory cold tier (default medium); -2 = none */
    uint64_t kv_memory;     /* bytes for every context's KV, hot and cold; 0 = no limit */
    int max_sessions;       /* sessions running at once; 0 = 16 */
    int max_queue;          /* jobs waiting for a session; more are refused; 0 = 64 */
    int max_idle;           /* idle contexts kept for their caches; 0 = max_sessions */
    int serial_decode;      /* 1: each session's decode step is a forward pass of its own
                               (round-robin); 0: the decoding sessions are stepped together in
                               one batched pass (kvp_ctx_decode_batch) */
} kvp_srv_params;

kvp_srv_params kvp_srv_default_params(void);

/* What a job asks for. Everything is copied by kvp_srv_submit. */
typedef struct kvp_srv_req {
    const int *tokens;           /* the prompt's token ids (BOS included when wanted) */
    int n_tokens;                /* >= 1 */
    int max_tokens;              /* tokens to generate at most (>= 0); capped by the context */
    kvp_sampler_params sampling; /* temp 0 = greedy */
    const char *const *stop;     /* strings that end the generation (not included in the text) */
    int n_stop;                  /* <= KVP_SRV_MAX_STOP */
    int n_probs;                 /* alternatives reported per token (0..20); -1 = no logprobs */
    int ignore_eos;              /* keep generating after an end-of-generation token */
    int no_reuse;                /* neither reuse a cached prefix nor store this prompt */
    const char *kv, *select, *budget; /* per-request cache overrides; NULL = the server's */
} kvp_srv_req;

/* Why a request failed, for the caller's status code. */
enum {
    KVP_SRV_OK = 0,
    KVP_SRV_EBADREQ = 1,   /* the request is invalid (a bad cache spec, ...): HTTP 400 */
    KVP_SRV_ETOOLONG = 2,  /* the prompt does not fit the context: HTTP 413 */
    KVP_SRV_EBUSY = 3,     /* over capacity (queue full, KV budget, shutting down): HTTP 503 */
    KVP_SRV_EINTERNAL = 4, /* a failure inside the engine: HTTP 500 */
};

enum { KVP_SRV_RUNNING = 0, KVP_SRV_FINISH_STOP, KVP_SRV_FINISH_LENGTH, KVP_SRV_FINISH_ERROR, KVP_SRV_FINISH_CANCELLED };

enum { KVP_SRV_REUSE_NONE = 0, KVP_SRV_REUSE_IDLE, KVP_SRV_REUSE_COPY, KVP_SRV_REUSE_COLD, KVP_SRV_REUSE_STORE };
/* "none", "idle" (an idle context's cache), "session" (copied from a running session),
 * "cold" (the in-memory cold tier), "store". */
const char *kvp_srv_reuse_name(int source);

typedef struct kvp_srv_alt {
    int id;
    float logprob;
} kvp_srv_alt;

/* One generated token: its id, log-probability under the model (before temperature) and,
 * when asked for, the most likely alternatives. */
typedef struct kvp_srv_tok {
    int id;
    float logprob;
    int n_alts;
    kvp_srv_alt alts[KVP_SRV_MAX_PROBS];
} kvp_srv_tok;

typedef struct kvp_srv_status {
    int admitted;      /* 1 once the job holds a session */
    int finish;        /* KVP_SRV_RUNNING or KVP_SRV_FINISH_* */
    int error;         /* KVP_SRV_E* when finish is KVP_SRV_FINISH_ERROR */
    char message[256]; /* the error's message */
    int n_prompt;      /* prompt tokens */
    int n_cached;      /* prompt tokens reused instead of prefilled */
    int reuse;         /* KVP_SRV_REUSE_* */
    int n_tokens;      /* tokens generated so far */
    size_t text_len;   /* bytes of text emitted so far (valid UTF-8) */
    double t_queue;    /* seconds from submit to admission */
    double t_first;    /* seconds from submit to the first token (0 before it) */
    double t_total;    /* seconds from submit to the end (0 while running) */
} kvp_srv_status;

/* A copy of a job's progress: status, the tokens from tok_from on and the text from
 * text_from on (NUL-terminated). Free with kvp_srv_view_free. */
typedef struct kvp_srv_view {
    kvp_srv_status st;
    kvp_srv_tok *toks;
    int n_toks;
    char *text;
    size_t n_text;
} kvp_srv_view;

/* Loads nothing: the model stays the caller's (it must outlive the server). Opens the store
 * (a store that cannot be reached is retried later, never fatal) and starts the scheduler. */
int kvp_srv_new(kvp_model *m, const kvp_srv_params *p, kvp_srv **out);
/* Refuses new jobs, ends the waiting and running ones with KVP_SRV_EBUSY ("shutting down")
 * and joins the scheduler. Idempotent. */
void kvp_srv_stop(kvp_srv *s);
void kvp_srv_free(kvp_srv *s); /* stops first; accepts NULL */
const kvp_model *kvp_srv_model(const kvp_srv *s);
int kvp_srv_n_ctx(const kvp_srv *s);

/* Queues a job. On failure returns a negative KVP_E* code, sets *err to a KVP_SRV_E* class
 * and the message in kvp_errmsg(): KVP_SRV_ETOOLONG when the prompt does not fit the context
 * (it needs at least one free position), KVP_SRV_EBUSY when the queue is full or the server is
 * stopping, KVP_SRV_EBADREQ for bad fields. The caller owns one reference of *out. */
int kvp_srv_submit(kvp_srv *s, const kvp_srv_req *r, kvp_srv_job **out, int *err);
/* Drops the caller's reference; a job still running is cancelled (its session ends at the
 * scheduler's next step and its context is kept for reuse). Accepts NULL. */
void kvp_srv_job_release(kvp_srv_job *j);
/* Waits up to timeout_ms for the job to have more than n_tokens tokens, more than text_len
 * bytes of text, a new admission state, or to finish. Returns 1 when something changed, 0
 * on timeout. */
int kvp_srv_job_wait(kvp_srv_job *j, int n_tokens, size_t text_len, int admitted, int timeout_ms);
void kvp_srv_job_status(kvp_srv_job *j, kvp_srv_status *st);
int kvp_srv_job_view(kvp_srv_job *j, int tok_from, size_t text_from, kvp_srv_view *v);
void kvp_srv_view_free(kvp_srv_view *v);

/* Counts one HTTP request (endpoint like "/v1/completions", its status and duration). */
void kvp_srv_note_request(kvp_srv *s, const char *endpoint, int status, double seconds);
/* The metrics in the Prometheus text format (version 0.0.4), malloc'ed; NULL when out of
 * memory. */
char *kvp_srv_metrics(kvp_srv *s);

/* Engine figures for tests and /health. */
typedef struct kvp_srv_stats {
    int sessions, queued, idle_contexts, cold_entries;
    uint64_t kv_hot, kv_cold, kv_memory;
    uint64_t requests, prompt_tokens, reused_tokens, prefilled_tokens, generated_tokens;
    uint64_t store_hits, store_misses, store_errors, store_chunks_written;
    uint64_t compressed, dropped, cancelled;
    uint64_t decode_steps, decode_tokens; /* decode forward passes; session tokens they fed */
} kvp_srv_stats;
void kvp_srv_get_stats(kvp_srv *s, kvp_srv_stats *st);

/* UTF-8 helpers of the text stream (exposed for tests). kvp_utf8_complete returns the
 * length of the longest prefix of s[0..n) that does not end inside a sequence that more
 * bytes could still complete. kvp_utf8_sanitize appends s[0..n) to out (capacity at least
 * 3 * n + 1) with every invalid byte replaced by U+FFFD and returns the bytes written. */
size_t kvp_utf8_complete(const char *s, size_t n);
size_t kvp_utf8_sanitize(const char *s, size_t n, char *out);

#endif
