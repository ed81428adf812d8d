/*
 * cmd_save.c: `kvpack save`: prefill a prompt and save its context as a .kvz file or into a
 * store; and the `run --load` / `run --store` prefill (cli_prefill).
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct {
    const char *model, *tok, *prompt, *file, *out, *store, *kv;
    int level, chunk, threads, n_ctx, batch, no_bos, ttl;
    float bandwidth, slo;
    uint64_t cap;
} save_args;

static const char *save_synopsis = "-m MODEL (-p PROMPT | -f FILE) (-o OUT.kvz | --store URI) [--level N] [options]";

static int save_parse(int argc, char **argv, save_args *a) {
    *a = (save_args){NULL, NULL, NULL, NULL, NULL, NULL, "f16", KVP_LEVEL_DEFAULT, 0, 1, 0, 256, 0, 0, 0, 0, 0};
    const cli_opt opts[] = {
        {"-m", "--model", CLI_STR, &a->model, "model file (GGUF or llama2.c checkpoint)"},
        {"-z", "--tokenizer", CLI_STR, &a->tok, "tokenizer .bin for a llama2.c checkpoint"},
        {"-p", "--prompt", CLI_STR, &a->prompt, "prompt text"},
        {"-f", "--file", CLI_STR, &a->file, "read the prompt from a file ('-' for stdin)"},
        {"-o", "--output", CLI_STR, &a->out, "write the context to this .kvz file"},
        {NULL, "--store", CLI_STR, &a->store, "store the context's full chunks: DIR or redis://HOST:PORT/DB"},
        {NULL, "--level", CLI_INT, &a->level, "0 text, 1 low, 2 medium (default), 3 high, 4 lossless, -1 auto"},
        {NULL, "--chunk", CLI_INT, &a->chunk, "tokens per chunk (default 256)"},
        {NULL, "--bandwidth", CLI_FLOAT, &a->bandwidth, "auto level: fetch bandwidth in MB/s"},
        {NULL, "--slo", CLI_FLOAT, &a->slo, "auto level: load-time target in ms for the whole context"},
        {NULL, "--store-cap", CLI_SIZE, &a->cap, "directory store: size cap, LRU eviction (e.g. 2G)"},
        {NULL, "--ttl", CLI_INT, &a->ttl, "redis store: expiry of stored chunks in seconds"},
        {"-t", "--threads", CLI_INT, &a->threads, "threads (default 1)"},
        {"-c", "--ctx-size", CLI_INT, &a->n_ctx, "context size (default: the prompt's length)"},
        {"-b", "--batch-size", CLI_INT, &a->batch, "prompt tokens per batch (default 256)"},
        {NULL, "--kv", CLI_STR, &a->kv, "KV cache spec (default f16)"},
        {NULL, "--no-bos", CLI_FLAG, &a->no_bos, "do not prepend the BOS token"},
        {0},
    };
    int rc = cli_parse("save", save_synopsis, opts, argc, argv);
    if (rc) return rc;
    if (!a->prompt == !a->file) return cli_usage_error("save", "give the prompt with -p TEXT or -f FILE (one of them)");
    if (!a->out && !a->store) return cli_usage_error("save", "give an output file (-o OUT.kvz) or a store (--store URI)");
    if (a->level < KVP_LEVEL_AUTO || a->level > KVP_LEVEL_LOSSLESS) return cli_usage_error("save", "--level must be -1..4");
    if (a->level == KVP_LEVEL_AUTO && !(a->bandwidth > 0 && a->slo > 0))
        return cli_usage_error("save", "--level -1 (auto) needs --bandwidth MB/s and --slo ms");
    if (a->chunk < 0 || a->threads < 1 || a->threads > 256 || a->batch < 1 || a->n_ctx < 0 || a->ttl < 0)
        return cli_usage_error("save", "--chunk must be >= 0, -t 1..256, -b >= 1, -c >= 0, --ttl >= 0");
    return 0;
}

static int save_open_store(const char *cmd, const char *uri, uint64_t cap, int ttl, kvp_store **s) {
    kvp_store_params sp = kvp_store_default_params();
    sp.max_bytes = cap;
    sp.ttl_seconds = ttl;
    int rc = kvp_store_open(uri, &sp, s);
    return rc < 0 ? cli_fail(cmd, "cannot open the store", rc) : 0;
}

/* Prefills ids into a new context; prints errors itself. */
static int save_prefill(kvp_model *m, const save_args *a, const int *ids, int n, kvp_ctx **ctx, double *secs) {
    kvp_ctx_params cp = kvp_ctx_default_params();
    cp.n_ctx = a->n_ctx ? a->n_ctx : n;
    cp.n_threads = a->threads;
    cp.n_batch = a->batch;
    cp.kv = a->kv;
    if (n > cp.n_ctx) return cli_usage_error("save", "the prompt has %d tokens; -c %d is too small", n, cp.n_ctx);
    int rc = kvp_ctx_new(m, &cp, ctx);
    if (rc < 0) return cli_fail("save", "cannot create the context", rc);
    double t0 = cli_now();
    rc = kvp_ctx_decode(*ctx, ids, n, NULL, 0);
    *secs = cli_now() - t0;
    return rc < 0 ? cli_fail("save", "prefill", rc) : 0;
}

static kvp_save_params save_params(const save_args *a, int n, double prefill_secs) {
    kvp_save_params p = kvp_save_default_params();
    p.level = a->level;
    p.chunk_tokens = a->chunk;
    p.bandwidth = (double)a->bandwidth * 1e6;
    p.slo = (double)a->slo / 1e3;
    p.prefill_rate = prefill_secs > 0 ? n / prefill_secs : 0;
    return p;
}

static int save_to_file(kvp_ctx *ctx, const save_args *a, const int *ids, int n, const kvp_save_params *p) {
    size_t size = 0;
    double t0 = cli_now();
    int rc = kvp_context_save_file(ctx, ids, n, p, a->out, &size);
    double t = cli_now() - t0;
    if (rc < 0) return cli_fail("save", "cannot save the context", rc);
    kvp_kv_stats st;
    kvp_ctx_kv_stats(ctx, &st);
    char b[32], raw[32];
    fprintf(stderr, "kvpack save: %s: %d tokens, %s (%.3f bits/value; the %s cache holds %s), encoded in %.1f ms\n", a->out,
            n, cli_bytes(size, b, sizeof b), st.n_values ? 8.0 * (double)size / (double)st.n_values : 0, st.spec,
            cli_bytes(st.bytes_hot + st.bytes_cold, raw, sizeof raw), t * 1e3);
    return 0;
}

static int save_to_store(kvp_ctx *ctx, const save_args *a, const int *ids, int n, const kvp_save_params *p) {
    kvp_store *s = NULL;
    int rc = save_open_store("save", a->store, a->cap, a->ttl, &s), stored = 0;
    if (rc) return rc;
    double t0 = cli_now();
    int e = kvp_context_save_store(ctx, ids, n, p, s, &stored);
    double t = cli_now() - t0;
    kvp_store_free(s);
    if (e < 0) return cli_fail("save", "cannot store the context", e);
    int C = p->chunk_tokens > 0 ? p->chunk_tokens : KVP_CHUNK_TOKENS_DEFAULT;
    fprintf(stderr, "kvpack save: %s: %d full chunks of %d tokens (%d new, stored in %.1f ms); the last %d tokens "
            "are not a full chunk\n", a->store, n / C, C, stored, t * 1e3, n % C);
    return 0;
}

static int save_main(kvp_model *m, const save_args *a, const char *text, size_t len) {
    int *ids = NULL, n = 0, rc;
    kvp_ctx *ctx = NULL;
    double secs = 0;
    if ((rc = cli_tokenize("save", m, text, len, !a->no_bos, &ids, &n))) return rc;
    if (n == 0) rc = cli_usage_error("save", "the prompt is empty");
    if (!rc) rc = save_prefill(m, a, ids, n, &ctx, &secs);
    if (!rc) fprintf(stderr, "kvpack save: prefilled %d tokens in %.1f ms (%.1f tok/s)\n", n, secs * 1e3, n / secs);
    kvp_save_params p = save_params(a, n, secs);
    if (!rc && a->out) rc = save_to_file(ctx, a, ids, n, &p);
    if (!rc && a->store) rc = save_to_store(ctx, a, ids, n, &p);
    kvp_ctx_free(ctx);
    free(ids);
    return rc;
}

int cmd_save(int argc, char **argv) {
    save_args a;
    int rc = save_parse(argc, argv, &a);
    if (rc) return rc == 1 ? 0 : rc;
    kvp_model *m = NULL;
    if ((rc = cli_open_model("save", a.model, a.tok, &m))) return rc;
    char *text = NULL;
    size_t len = 0;
    if (a.file) rc = cli_read_text("save", a.file, &text, &len);
    else if (!(text = strdup(a.prompt))) rc = cli_fail("save", "reading the prompt", KVP_ENOMEM);
    else len = strlen(text);
    if (!rc) rc = save_main(m, &a, text, len);
    free(text);
    kvp_model_free(m);
    return rc;
}

/* ---- run --load / run --store (cmd_run.c rejects both at once) ---- */

static int prefill_load(const char *cmd, kvp_ctx *ctx, const char *path, const int *ids, int n, float *logits) {
    int loaded = 0;
    double t0 = cli_now();
    int rc = kvp_context_load_file(ctx, path, &loaded);
    double t1 = cli_now();
    if (rc < 0) return rc;
    rc = kvp_ctx_decode(ctx, ids, n, logits, 0);
    fprintf(stderr, "[loaded %d tokens from %s in %.1f ms without prefill; prefilled %d new tokens in %.1f ms]\n", loaded,
            path, (t1 - t0) * 1e3, n, (cli_now() - t1) * 1e3);
    return rc;
}

/* Loads the longest stored prefix of ids[0..n-1) (at least the last token is prefilled, for
 * its logits); a failing store only costs a warning. Returns the positions loaded. */
static int prefill_store_load(const char *cmd, kvp_ctx *ctx, kvp_store *s, const char *uri, const int *ids, int n) {
    int loaded = 0;
    if (kvp_context_load_store(ctx, s, ids, n - 1, 0, &loaded) < 0)
        fprintf(stderr, "kvpack %s: warning: store %s: %s; recomputing from token %d\n", cmd, uri, kvp_errmsg(), loaded);
    return loaded;
}

static int prefill_store(const char *cmd, kvp_ctx *ctx, const char *uri, const int *ids, int n, float *logits) {
    kvp_store *s = NULL;
    kvp_store_params sp = kvp_store_default_params();
    int loaded = 0, stored = 0;
    double t0 = cli_now();
    if (kvp_store_open(uri, &sp, &s) < 0)
        fprintf(stderr, "kvpack %s: warning: %s; recomputing the whole prompt\n", cmd, kvp_errmsg());
    else
        loaded = prefill_store_load(cmd, ctx, s, uri, ids, n);
    double t1 = cli_now();
    int rc = kvp_ctx_decode(ctx, ids + loaded, n - loaded, logits, 0);
    double t2 = cli_now();
    if (rc == KVP_OK && s && kvp_context_save_store(ctx, ids, n, NULL, s, &stored) < 0)
        fprintf(stderr, "kvpack %s: warning: cannot store the new chunks in %s: %s\n", cmd, uri, kvp_errmsg());
    if (rc == KVP_OK)
        fprintf(stderr, "[store %s: reused %d of %d prompt tokens in %.1f ms; prefilled %d in %.1f ms; stored %d new "
                "chunks]\n", uri, loaded, n, (t1 - t0) * 1e3, n - loaded, (t2 - t1) * 1e3, stored);
    kvp_store_free(s);
    return rc;
}

int cli_prefill(const char *cmd, kvp_ctx *ctx, const char *load, const char *store, const int *ids, int n,
                float *logits) {
    return load ? prefill_load(cmd, ctx, load, ids, n, logits) : prefill_store(cmd, ctx, store, ids, n, logits);
}
