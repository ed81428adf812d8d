/*
 * serve_test.h: helpers of the `kvpack serve` tests (tests/test_serve_util.c): starting and
 * stopping servers and redis-server on loopback ports derived from the test's PID, a small
 * HTTP/1.0 client on raw sockets (every call has a deadline), and running the CLI.
 */
#ifndef KVT_SERVE_TEST_H
#define KVT_SERVE_TEST_H

#include <stddef.h>
#include <sys/types.h>

typedef struct kvt_server {
    pid_t pid;
    int port;
    char log[128];   /* the server's stderr */
} kvt_server;

/* A port no other test of this run uses: from the PID and a counter, in 20000..59999. */
int kvt_port(void);

/* Starts `$KVP_CLI serve ARGS --port P` and waits (at most 60 s) until /health answers.
 * Returns 0, or -1 (the server is stopped; its log is kept). */
int kvt_serve_start(kvt_server *s, const char *args);
/* SIGTERM, then waits at most 20 s (SIGKILL after). Returns the exit status, or -1 when it
 * had to be killed or died by a signal. */
int kvt_serve_stop(kvt_server *s);
/* The first `cap` bytes of the server's log (NUL-terminated). */
const char *kvt_serve_log(const kvt_server *s, char *buf, size_t cap);

/* Starts redis-server on a loopback port (no persistence) and waits until it answers. */
int kvt_redis_start(kvt_server *s);
void kvt_redis_stop(kvt_server *s);

typedef struct kvt_resp {
    int status;      /* HTTP status, or -1 when the exchange failed */
    char *body;      /* malloc'ed, NUL-terminated */
    size_t len;
} kvt_resp;

/* One HTTP/1.0 exchange with 127.0.0.1:port (deadline timeout_s). body may be NULL. */
int kvt_http(int port, const char *method, const char *path, const char *body, double timeout_s, kvt_resp *r);
void kvt_resp_free(kvt_resp *r);
/* Connects to 127.0.0.1:port (blocking socket with send/receive deadlines); -1 on failure. */
int kvt_connect(int port, double timeout_s);

/* Runs `$KVP_CLI ARGS` with stdout only; returns the exit code and the output. */
int kvt_cli_out(const char *args, char *out, size_t cap);
/* The text `kvpack run -n N --temp 0` generates after prompt (its output without the prompt
 * and the final newline); malloc'ed, NULL on failure. */
char *kvt_run_greedy(const char *model, const char *prompt, int n);

/* Resident set size of a process in KiB (0 when unknown). */
long kvt_rss_kb(pid_t pid);
/* A metric's value from a Prometheus text ("name" or "name{labels}"); -1 when absent. */
double kvt_metric(const char *text, const char *name);
/* A JSON string escaped for use inside "..." (malloc'ed). */
char *kvt_json_escape(const char *s);
/* The concatenated "text" / "delta.content" of an SSE body's data events; *n_events gets
 * their number, *done whether [DONE] ended it. malloc'ed. */
char *kvt_sse_text(const char *body, int chat, int *n_events, int *done);

#endif
