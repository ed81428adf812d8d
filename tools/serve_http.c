/*
 * serve_http.c: the HTTP side of `kvpack serve`, on libmicrohttpd with a thread per
 * connection. A connection's thread reads the body (at most --max-body bytes: a larger one
 * is read and discarded, then answered 413), parses it, submits the job to the engine and
 * waits for it: a plain request until the job ends, a stream until its first token, then
 * the job's progress is sent as server-sent events as the scheduler produces it. While it
 * waits, the thread checks that the client is still connected; a client that went away
 * cancels its job. Every error is an OpenAI-style JSON body with its status.
 */
#ifdef KVP_HAVE_SERVE
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "cli.h"
#include "serve.h"

#define HTTP_WAIT_MS 200        /* how often a waiting thread checks its client */
#define HTTP_KEEPALIVE_S 10.0   /* an idle stream sends a comment this often */
#define HTTP_DISCARD_FACTOR 16  /* a body this many times --max-body is cut off, not drained */

/* One request (MHD's per-request pointer). */
typedef struct http_req {
    char *body;
    size_t len, cap, seen;
    int too_big;
    double t0;
    const char *endpoint;   /* the metrics label */
    int status;             /* the status sent */
} http_req;

/* A server-sent event stream; the MHD response owns it. */
typedef struct http_stream {
    serve_app *a;
    serve_request rq;
    kvp_srv_job *job;
    int fd, tok_seen, prev_tok, first, done;
    size_t text_seen;
    char *out;
    size_t out_len, out_off, out_cap;
    double last_write;
} http_stream;

static const char http_oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}";

/* ---- answering ---- */

/* Queues a response with body (malloc'ed, taken; NULL means out of memory: a 500). */
static enum MHD_Result http_send(struct MHD_Connection *c, http_req *hr, int status, const char *ctype, char *body) {
    struct MHD_Response *r = body ? MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE)
                                  : MHD_create_response_from_buffer(sizeof http_oom - 1, (void *)http_oom, MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    if (!body) status = 500, ctype = "application/json";
    MHD_add_response_header(r, "Content-Type", ctype);
    hr->status = status;
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result http_send_json(struct MHD_Connection *c, http_req *hr, int status, char *json) {
    return http_send(c, hr, status, "application/json", json);
}

static enum MHD_Result http_send_error(struct MHD_Connection *c, http_req *hr, const serve_error *e) {
    return http_send_json(c, hr, e->status, serve_error_json(e));
}

static enum MHD_Result http_error(struct MHD_Connection *c, http_req *hr, int status, const char *fmt, const char *arg) {
    serve_error e = {0};
    serve_fail(&e, status, NULL, fmt, arg);
    return http_send_error(c, hr, &e);
}

/* ---- the client ---- */

static int http_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? ci->connect_fd : -1;
}

/* 1 when the peer closed or reset the connection (its request is fully read by now). */
static int http_client_gone(int fd) {
    if (fd < 0) return 0;
    char ch;
    ssize_t n = recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* Waits until the job ends (`first`: or has its first text or token). Returns 0, or -1
 * when the client went away (the job is then cancelled by its release). */
static int http_wait(serve_app *a, struct MHD_Connection *c, kvp_srv_job *job, int first) {
    int fd = http_fd(c);
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, 0u); /* waiting is not idling */
    kvp_srv_status st;
    int rc = 0;
    for (;;) {
        kvp_srv_job_status(job, &st);
        if (st.finish != KVP_SRV_RUNNING || (first && st.text_len > 0)) break;
        if (http_client_gone(fd)) {
            rc = -1;
            break;
        }
        kvp_srv_job_wait(job, st.n_tokens, st.text_len, st.admitted, HTTP_WAIT_MS);
    }
    MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)a->cfg.timeout_s); /* restarts the timer */
    return rc;
}

static void http_log(serve_app *a, const serve_request *rq, kvp_srv_job *job) {
    if (!a->cfg.verbose) return;
    kvp_srv_status st;
    kvp_srv_job_status(job, &st);
    fprintf(stderr, "kvpack serve: %s: prompt %d (reused %d from %s), generated %d, ttft %.1f ms, total %.1f ms\n", rq->id,
            st.n_prompt, st.n_cached, kvp_srv_reuse_name(st.reuse), st.n_tokens, st.t_first * 1e3, st.t_total * 1e3);
}

/* ---- plain responses ---- */

static enum MHD_Result http_finish_plain(serve_app *a, struct MHD_Connection *c, http_req *hr, serve_request *rq,
                                         kvp_srv_job *job) {
    kvp_srv_view v;
    enum MHD_Result ok;
    if (kvp_srv_job_view(job, 0, 0, &v) < 0) {
        ok = http_send_json(c, hr, 500, NULL);
    } else if (v.st.finish == KVP_SRV_FINISH_ERROR) {
        serve_error e = {0};
        serve_job_error(&v.st, &e);
        ok = http_send_error(c, hr, &e);
    } else {
        ok = http_send_json(c, hr, 200, serve_response_json(a, rq, &v));
    }
    kvp_srv_view_free(&v);
    return ok;
}

/* ---- streams ---- */

static int http_out(http_stream *hs, const char *s, size_t n) {
    if (hs->out_len + n > hs->out_cap) {
        size_t cap = hs->out_len + n + 4096;
        char *o = realloc(hs->out, cap);
        if (!o) return -1;
        hs->out = o;
        hs->out_cap = cap;
    }
    memcpy(hs->out + hs->out_len, s, n);
    hs->out_len += n;
    return 0;
}

/* Appends "data: JSON\n\n" (json malloc'ed, taken). */
static int http_event(http_stream *hs, char *json) {
    int rc = json ? http_out(hs, "data: ", 6) : -1;
    if (!rc) rc = http_out(hs, json, strlen(json));
    if (!rc) rc = http_out(hs, "\n\n", 2);
    free(json);
    return rc;
}

/* The events of a finished job's end: an error event, or the usage chunk; then [DONE]. */
static int http_stream_end(http_stream *hs, const kvp_srv_view *v) {
    int rc = 0;
    if (v->st.finish == KVP_SRV_FINISH_ERROR) {
        serve_error e = {0};
        serve_job_error(&v->st, &e);
        rc = http_event(hs, serve_error_json(&e));
    } else if (hs->rq.include_usage) {
        rc = http_event(hs, serve_usage_chunk_json(hs->a, &hs->rq, v));
    }
    hs->done = 1;
    return rc ? rc : http_out(hs, "data: [DONE]\n\n", 14);
}

/* Turns the job's new progress into events; 0 when there was none. */
static int http_stream_events(http_stream *hs, const kvp_srv_view *v) {
    int final = v->st.finish != KVP_SRV_RUNNING;
    if (!v->n_text && !final) return 0; /* tokens whose text is held back go with the next text */
    int rc = 0;
    if (v->st.finish != KVP_SRV_FINISH_ERROR)
        rc = http_event(hs, serve_chunk_json(hs->a, &hs->rq, v, hs->prev_tok, hs->first, final));
    hs->first = 0;
    hs->tok_seen += v->n_toks;
    hs->text_seen += v->n_text;
    if (v->n_toks) hs->prev_tok = v->toks[v->n_toks - 1].id;
    if (!rc && final) rc = http_stream_end(hs, v);
    return rc < 0 ? -1 : 1;
}

/* Fills the output with the next events, waiting for them; -1 ends the stream. */
static int http_stream_fill(http_stream *hs) {
    for (;;) {
        kvp_srv_view v;
        if (kvp_srv_job_view(hs->job, hs->tok_seen, hs->text_seen, &v) < 0) return -1;
        int rc = http_stream_events(hs, &v), held = v.n_toks; /* tokens whose text is held back */
        kvp_srv_view_free(&v);
        if (rc) return rc < 0 ? -1 : 0;
        if (http_client_gone(hs->fd)) return -1;
        if (cli_now() - hs->last_write > HTTP_KEEPALIVE_S) return http_out(hs, ": keep-alive\n\n", 14);
        kvp_srv_job_wait(hs->job, hs->tok_seen + held, hs->text_seen, 1, HTTP_WAIT_MS);
    }
}

static ssize_t http_stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    http_stream *hs = cls;
    (void)pos;
    if (hs->out_off == hs->out_len) {
        hs->out_off = hs->out_len = 0;
        if (hs->done) return MHD_CONTENT_READER_END_OF_STREAM;
        if (http_stream_fill(hs) < 0) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = hs->out_len - hs->out_off < max ? hs->out_len - hs->out_off : max;
    memcpy(buf, hs->out + hs->out_off, n);
    hs->out_off += n;
    hs->last_write = cli_now();
    return (ssize_t)n;
}

/* The response is gone (sent, or the client left): a job still running is cancelled. */
static void http_stream_free(void *cls) {
    http_stream *hs = cls;
    http_log(hs->a, &hs->rq, hs->job);
    kvp_srv_job_release(hs->job);
    serve_request_free(&hs->rq);
    free(hs->out);
    free(hs);
}

/* Starts the event stream of a job that has its first token (or ended without error). */
static enum MHD_Result http_stream_start(serve_app *a, struct MHD_Connection *c, http_req *hr, serve_request *rq,
                                         kvp_srv_job *job) {
    http_stream *hs = calloc(1, sizeof *hs);
    struct MHD_Response *r = hs ? MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, http_stream_read, hs,
                                                                    http_stream_free) : NULL;
    if (!r) {
        free(hs);
        kvp_srv_job_release(job);
        serve_request_free(rq);
        return http_send_json(c, hr, 500, NULL);
    }
    *hs = (http_stream){a, *rq, job, http_fd(c), 0, rq->tokens[rq->req.n_tokens - 1], 1, 0, 0, NULL, 0, 0, 0, cli_now()};
    memset(rq, 0, sizeof *rq); /* the stream owns it now */
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    hr->status = 200;
    enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ok;
}

/* ---- generation requests ---- */

static enum MHD_Result http_run_job(serve_app *a, struct MHD_Connection *c, http_req *hr, serve_request *rq,
                                    kvp_srv_job *job) {
    if (http_wait(a, c, job, rq->stream) < 0) { /* the client left: nothing to answer */
        hr->status = 499;
        kvp_srv_job_release(job);
        serve_request_free(rq);
        return MHD_NO;
    }
    kvp_srv_status st;
    kvp_srv_job_status(job, &st);
    if (rq->stream && st.finish != KVP_SRV_FINISH_ERROR) return http_stream_start(a, c, hr, rq, job);
    http_log(a, rq, job);
    enum MHD_Result ok = http_finish_plain(a, c, hr, rq, job);
    kvp_srv_job_release(job);
    serve_request_free(rq);
    return ok;
}

static enum MHD_Result http_generate(serve_app *a, struct MHD_Connection *c, http_req *hr, int chat) {
    serve_request rq;
    serve_error e;
    if (serve_parse(a, hr->body ? hr->body : "", hr->len, chat, &rq, &e) < 0) {
        serve_request_free(&rq);
        return http_send_error(c, hr, &e);
    }
    kvp_srv_job *job = NULL;
    int cls = 0;
    if (kvp_srv_submit(a->srv, &rq.req, &job, &cls) < 0) {
        kvp_srv_status st = {.error = cls};
        snprintf(st.message, sizeof st.message, "%s", kvp_errmsg());
        serve_job_error(&st, &e);
        serve_request_free(&rq);
        return http_send_error(c, hr, &e);
    }
    return http_run_job(a, c, hr, &rq, job);
}

/* ---- routing ---- */

static const char *const http_paths[] = {"/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions"};

/* The metrics label of a path: itself when it is an endpoint, else "other". */
static const char *http_endpoint(const char *url) {
    for (size_t i = 0; i < sizeof http_paths / sizeof http_paths[0]; i++)
        if (!strcmp(url, http_paths[i])) return http_paths[i];
    return "other";
}

static enum MHD_Result http_get(serve_app *a, struct MHD_Connection *c, http_req *hr) {
    if (!strcmp(hr->endpoint, "/health")) return http_send_json(c, hr, a->stopping ? 503 : 200, serve_health_json(a));
    if (!strcmp(hr->endpoint, "/v1/models")) return http_send_json(c, hr, 200, serve_models_json(a));
    return http_send(c, hr, 200, "text/plain; version=0.0.4; charset=utf-8", kvp_srv_metrics(a->srv));
}

static enum MHD_Result http_route(serve_app *a, struct MHD_Connection *c, http_req *hr, const char *url, const char *method) {
    int post = !strcmp(hr->endpoint, "/v1/completions") || !strcmp(hr->endpoint, "/v1/chat/completions");
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    if (hr->too_big) {
        char limit[32];
        snprintf(limit, sizeof limit, "%zu", a->cfg.max_body);
        return http_error(c, hr, 413, "the request body is larger than %s bytes (--max-body)", limit);
    }
    if (!strcmp(hr->endpoint, "other"))
        return http_error(c, hr, 404, "no such endpoint '%s' (there are /v1/completions, /v1/chat/completions, "
                          "/v1/models, /health and /metrics)", url);
    if (post && !strcmp(method, "POST")) return http_generate(a, c, hr, !strcmp(hr->endpoint, "/v1/chat/completions"));
    if (!post && get) return http_get(a, c, hr);
    return http_error(c, hr, 405, "method not allowed here (use %s)", post ? "POST" : "GET");
}

/* Appends a piece of the body, or counts it when the body is over the limit. */
static void http_take_body(serve_app *a, http_req *hr, const char *data, size_t n) {
    hr->seen += n;
    if (!hr->too_big && hr->len + n > a->cfg.max_body) {
        hr->too_big = 1;
        free(hr->body);
        hr->body = NULL;
        hr->len = hr->cap = 0;
        return;
    }
    if (hr->too_big) return;
    if (hr->len + n + 1 > hr->cap) {
        size_t cap = hr->len + n + 1 > 2 * hr->cap ? hr->len + n + 1 : 2 * hr->cap;
        char *b = realloc(hr->body, cap);
        if (!b) {
            hr->too_big = 1;
            return;
        }
        hr->body = b;
        hr->cap = cap;
    }
    memcpy(hr->body + hr->len, data, n);
    hr->len += n;
    hr->body[hr->len] = 0;
}

static enum MHD_Result http_handler(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                    const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    serve_app *a = cls;
    http_req *hr = *con_cls;
    (void)version;
    if (!hr) {
        if (!(hr = calloc(1, sizeof *hr))) return MHD_NO;
        hr->t0 = cli_now();
        hr->endpoint = http_endpoint(url);
        *con_cls = hr;
        return MHD_YES;
    }
    if (*upload_size) {
        http_take_body(a, hr, upload, *upload_size);
        *upload_size = 0;
        if (hr->too_big && hr->seen > HTTP_DISCARD_FACTOR * a->cfg.max_body) return http_route(a, c, hr, url, method);
        return MHD_YES;
    }
    return http_route(a, c, hr, url, method);
}

static void http_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    serve_app *a = cls;
    http_req *hr = *con_cls;
    (void)c;
    if (!hr) return;
    int status = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? hr->status : 499; /* 499: the client closed */
    kvp_srv_note_request(a->srv, hr->endpoint, status ? status : 499, cli_now() - hr->t0);
    free(hr->body);
    free(hr);
    *con_cls = NULL;
}

int serve_http_start(serve_app *a, void **daemon) {
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)a->cfg.port);
    if (inet_pton(AF_INET, a->cfg.host, &addr.sin_addr) != 1) return -1;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    *daemon = MHD_start_daemon(flags, (uint16_t)a->cfg.port, NULL, NULL, http_handler, a, MHD_OPTION_SOCK_ADDR, &addr,
                               MHD_OPTION_CONNECTION_LIMIT, (unsigned)a->cfg.max_conns, MHD_OPTION_CONNECTION_TIMEOUT,
                               (unsigned)a->cfg.timeout_s, MHD_OPTION_NOTIFY_COMPLETED, http_completed, a,
                               MHD_OPTION_LISTENING_ADDRESS_REUSE, 1u, MHD_OPTION_END);
    return *daemon ? 0 : -1;
}

void serve_http_stop(void *daemon) {
    if (daemon) MHD_stop_daemon(daemon);
}

int serve_http_port(void *daemon) {
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(daemon, MHD_DAEMON_INFO_BIND_PORT);
    return di ? di->port : -1;
}

#endif /* KVP_HAVE_SERVE */
