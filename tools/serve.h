/*
 * serve.h: what the parts of `kvpack serve` share (docs/serve.md): cmd_serve.c (options,
 * start-up, signals), serve_http.c (libmicrohttpd: routing, bodies, server-sent events) and
 * serve_api.c (cJSON: OpenAI-style requests, responses and errors). The engine is
 * src/server/server.h. Built only when libmicrohttpd and cJSON were found (KVP_HAVE_SERVE).
 */
#ifndef KVP_SERVE_H
#define KVP_SERVE_H

#include <stddef.h>
#include <time.h>

#include "kvpack.h"
#include "server/server.h"

typedef struct serve_cfg {
    const char *host;       /* address to bind (default 127.0.0.1) */
    int port;
    const char *model_id;   /* the name /v1/models reports */
    const char *tmpl;       /* chat template (NULL = the model's) */
    size_t max_body;        /* request body bytes at most */
    int timeout_s;          /* idle connection timeout */
    int max_conns;
    int verbose;            /* one line per generation request on stderr */
} serve_cfg;

typedef struct serve_app {
    kvp_srv *srv;
    const kvp_model *m;
    serve_cfg cfg;
    time_t started;
    volatile int stopping;
} serve_app;

/* An error answer: HTTP status, OpenAI error type, message and the offending field. */
typedef struct serve_error {
    int status;
    const char *type;
    const char *param;
    char message[512];
} serve_error;

/* Fills e and returns -1 (for `return serve_fail(...)`). */
int serve_fail(serve_error *e, int status, const char *param, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* A parsed generation request. */
typedef struct serve_request {
    int chat;               /* /v1/chat/completions */
    int stream, include_usage;
    int logprobs;           /* completions: report logprobs (n alternatives in req.n_probs) */
    kvp_srv_req req;
    int *tokens;
    char *stop[KVP_SRV_MAX_STOP];
    char *kv, *select, *budget;
    char id[48];
    time_t created;
} serve_request;

/* Parses and checks a request body and tokenizes its prompt (the chat messages in the
 * model's template). 0, or -1 with e filled (400 for a bad body, 413 for a prompt over the
 * context). */
int serve_parse(serve_app *a, const char *body, size_t len, int chat, serve_request *r, serve_error *e);
void serve_request_free(serve_request *r);

/* JSON texts (malloc'ed; NULL when out of memory). */
char *serve_error_json(const serve_error *e);
char *serve_response_json(serve_app *a, const serve_request *r, const kvp_srv_view *v);
/* One server-sent event: the text and tokens of v (tokens after token prev_tok) and, when
 * final, the finish reason and usage. The chat stream's first event carries the role. */
char *serve_chunk_json(serve_app *a, const serve_request *r, const kvp_srv_view *v, int prev_tok, int first, int final);
char *serve_usage_chunk_json(serve_app *a, const serve_request *r, const kvp_srv_view *v);
char *serve_models_json(serve_app *a);
char *serve_health_json(serve_app *a);
/* The HTTP status and error of a finished job that failed. */
void serve_job_error(const kvp_srv_status *st, serve_error *e);

/* Starts the HTTP daemon (threads of its own); serve_http_stop stops it. */
int serve_http_start(serve_app *a, void **daemon);
void serve_http_stop(void *daemon);
int serve_http_port(void *daemon);

#endif
