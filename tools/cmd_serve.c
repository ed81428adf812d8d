/*
 * cmd_serve.c: `kvpack serve`: an OpenAI-compatible HTTP server (docs/serve.md). Options,
 * start-up and shutdown: the model is loaded, the engine (src/server) and the HTTP daemon
 * (serve_http.c) started, then the main thread waits for SIGINT or SIGTERM and stops both in
 * order: the engine ends every job ("shutting down"), the daemon joins its threads.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#ifdef KVP_HAVE_SERVE
#include <pthread.h>

#include "serve.h"

typedef struct {
    const char *model, *tok, *kv, *select, *budget, *store, *host, *tmpl, *alias;
    int port, threads, n_ctx, batch, parallel, queue, idle, store_level, cold_level, chunk, timeout, max_conns;
    int store_timeout, verbose, serial_decode;
    uint64_t kv_memory, max_body;
} serve_args;

static const char *serve_synopsis = "-m MODEL [--port 8080] [--kv SPEC] [--select P --budget B] [--store URI] "
                                    "[--kv-memory SIZE] [-t N] [options]";

static int serve_check(const serve_args *a) {
    if (a->port < 0 || a->port > 65535) return cli_usage_error("serve", "--port must be 0..65535");
    if (a->threads < 1 || a->threads > 256 || a->n_ctx < 0 || a->batch < 1)
        return cli_usage_error("serve", "-t must be 1..256, -c >= 0, -b >= 1");
    if (a->parallel < 1 || a->queue < 1 || a->idle < 0 || a->chunk < 1 || a->timeout < 1 || a->max_conns < 4)
        return cli_usage_error("serve", "--parallel, --queue, --chunk, --timeout must be >= 1, --idle >= 0, "
                                        "--max-connections >= 4");
    if (a->store_level < 0 || a->store_level > 4) return cli_usage_error("serve", "--store-level must be 0..4");
    if (a->cold_level < 0 || a->cold_level > 4) return cli_usage_error("serve", "--cold-level must be 0..4");
    if (a->max_body < 1024) return cli_usage_error("serve", "--max-body must be at least 1K");
    if (a->store_timeout < 1) return cli_usage_error("serve", "--store-timeout must be >= 1 ms");
    return 0;
}

static int serve_parse_args(int argc, char **argv, serve_args *a) {
    *a = (serve_args){NULL, NULL, "f16", NULL, NULL, NULL, "127.0.0.1", NULL, NULL, 8080, 1, 0, 256, 16, 64, 0, 4, 2, 256,
                      30, 256, 500, 0, 0, 1ull << 30, 2ull << 20};
    const cli_opt opts[] = {
        {"-m", "--model", CLI_STR, &a->model, "model file (GGUF or llama2.c checkpoint)"},
        {"-z", "--tokenizer", CLI_STR, &a->tok, "tokenizer .bin for a llama2.c checkpoint"},
        {NULL, "--host", CLI_STR, &a->host, "IPv4 address to listen on (default 127.0.0.1)"},
        {NULL, "--port", CLI_INT, &a->port, "port (default 8080; 0 = any free port, printed at start)"},
        {NULL, "--kv", CLI_STR, &a->kv, "default KV cache spec: f16 (default), f32, k4v4, k2v2, ..."},
        {NULL, "--select", CLI_STR, &a->select, "default token selection policy (docs/selection.md)"},
        {NULL, "--budget", CLI_STR, &a->budget, "selection budget: N tokens or P%"},
        {NULL, "--store", CLI_STR, &a->store, "context store: dir:PATH or redis://HOST:PORT/DB"},
        {NULL, "--store-level", CLI_INT, &a->store_level, "codec level of stored chunks: 1 low .. 4 lossless (default 4)"},
        {NULL, "--store-timeout", CLI_INT, &a->store_timeout, "redis deadline per call in ms (default 500)"},
        {NULL, "--chunk", CLI_INT, &a->chunk, "tokens per stored chunk (default 256)"},
        {NULL, "--kv-memory", CLI_SIZE, &a->kv_memory, "KV bytes of all sessions, hot and cold (default 1G; 0 = no limit)"},
        {NULL, "--cold-level", CLI_INT, &a->cold_level, "codec level of the in-memory cold tier: 1 low .. 4 lossless (default 2; 0 = none)"},
        {"-t", "--threads", CLI_INT, &a->threads, "threads per forward pass (default 1)"},
        {"-c", "--ctx-size", CLI_INT, &a->n_ctx, "positions per session (default: the model's, at most 4096)"},
        {"-b", "--batch-size", CLI_INT, &a->batch, "prompt tokens per batch (default 256)"},
        {NULL, "--parallel", CLI_INT, &a->parallel, "sessions running at once (default 16)"},
        {NULL, "--queue", CLI_INT, &a->queue, "requests waiting beyond them; more get 503 (default 64)"},
        {NULL, "--idle", CLI_INT, &a->idle, "idle contexts kept for reuse (default: --parallel)"},
        {NULL, "--template", CLI_STR, &a->tmpl, "chat template: llama3, chatml, llama2, zephyr (default: the model's)"},
        {NULL, "--alias", CLI_STR, &a->alias, "model name in /v1/models (default: the model's)"},
        {NULL, "--max-body", CLI_SIZE, &a->max_body, "request body bytes at most (default 2M)"},
        {NULL, "--timeout", CLI_INT, &a->timeout, "idle connection timeout in seconds (default 30)"},
        {NULL, "--max-connections", CLI_INT, &a->max_conns, "open connections at most (default 256)"},
        {NULL, "--serial-decode", CLI_FLAG, &a->serial_decode, "decode each session in a forward pass of its own "
                                                               "(default: all sessions in one batched pass)"},
        {"-v", "--verbose", CLI_FLAG, &a->verbose, "one line per generation request on stderr"},
        {0},
    };
    int rc = cli_parse("serve", serve_synopsis, opts, argc, argv);
    return rc ? rc : serve_check(a);
}

static kvp_srv_params serve_engine_params(const serve_args *a) {
    kvp_srv_params p = kvp_srv_default_params();
    p.n_ctx = a->n_ctx;
    p.n_threads = a->threads;
    p.n_batch = a->batch;
    p.kv = a->kv;
    p.select = a->select;
    p.budget = a->budget;
    p.store = a->store;
    p.store_level = a->store_level;
    p.store_timeout_ms = a->store_timeout;
    p.chunk_tokens = a->chunk;
    p.cold_level = a->cold_level == 0 ? -2 : a->cold_level;
    p.kv_memory = a->kv_memory;
    p.max_sessions = a->parallel;
    p.max_queue = a->queue;
    p.max_idle = a->idle;
    p.serial_decode = a->serial_decode;
    return p;
}

/* Blocks SIGINT and SIGTERM in every thread (sigwait takes them) and ignores SIGPIPE: a
 * client or a store that goes away must never end the process. */
static void serve_signals(sigset_t *set) {
    signal(SIGPIPE, SIG_IGN);
    sigemptyset(set);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, set, NULL);
}

static void serve_banner(const serve_app *app, const serve_args *a, int port) {
    char mem[32];
    fprintf(stderr, "kvpack serve: listening on http://%s:%d (model %s, context %d, cache %s%s%s, %d sessions, "
                    "KV memory %s, store %s)\n", a->host, port, app->cfg.model_id, kvp_srv_n_ctx(app->srv), a->kv,
            a->select ? ", select " : "", a->select ? a->select : "", a->parallel,
            a->kv_memory ? cli_bytes(a->kv_memory, mem, sizeof mem) : "unlimited", a->store ? a->store : "none");
}

static int serve_run(kvp_model *m, const serve_args *a) {
    sigset_t set;
    serve_signals(&set);
    serve_app app = {NULL, m, {a->host, a->port, a->alias ? a->alias : kvp_model_get_info(m)->name, a->tmpl,
                               (size_t)a->max_body, a->timeout, a->max_conns, a->verbose}, time(NULL), 0};
    kvp_srv_params p = serve_engine_params(a);
    int rc = kvp_srv_new(m, &p, &app.srv);
    if (rc < 0) return cli_fail("serve", "cannot start the engine", rc);
    void *daemon = NULL;
    if (serve_http_start(&app, &daemon) < 0) {
        fprintf(stderr, "kvpack serve: cannot listen on %s:%d (address in use, or not an IPv4 address)\n", a->host, a->port);
        kvp_srv_free(app.srv);
        return 1;
    }
    serve_banner(&app, a, serve_http_port(daemon));
    int sig = 0;
    sigwait(&set, &sig);
    fprintf(stderr, "kvpack serve: %s: shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    app.stopping = 1;
    kvp_srv_stop(app.srv);
    serve_http_stop(daemon);
    kvp_srv_free(app.srv);
    return 0;
}

int cmd_serve(int argc, char **argv) {
    serve_args a;
    int rc = serve_parse_args(argc, argv, &a);
    if (rc) return rc == 1 ? 0 : rc;
    kvp_model *m = NULL;
    if ((rc = cli_open_model("serve", a.model, a.tok, &m))) return rc;
    rc = serve_run(m, &a);
    kvp_model_free(m);
    return rc;
}

#else /* built without libmicrohttpd or cJSON */

int cmd_serve(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "kvpack serve: this kvpack was built without %s; install %s and rebuild (make)\n",
#if !defined(KVP_HAVE_MHD) && !defined(KVP_HAVE_CJSON)
            "libmicrohttpd and cJSON", "libmicrohttpd-dev and libcjson-dev"
#elif !defined(KVP_HAVE_MHD)
            "libmicrohttpd", "libmicrohttpd-dev"
#else
            "cJSON", "libcjson-dev"
#endif
    );
    return 1;
}

#endif
