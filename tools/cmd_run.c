/*
 * cmd_run.c: `kvpack run`: generate text from a prompt, printing it as it is produced,
 * then one line of figures on stderr.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct {
    const char *model, *tok, *prompt, *file, *kv;
    int n_predict, threads, n_ctx, batch, top_k, no_bos, ignore_eos;
    float temp, top_p;
    uint64_t seed;
    const char *select, *budget, *cold; /* token selection (docs/selection.md) */
    const char *load, *store;           /* a saved context or a context store (docs/codec.md) */
} run_args;

static const char *run_synopsis = "-m MODEL [-z TOKENIZER] (-p PROMPT | -f FILE) [options]";

static int run_parse(int argc, char **argv, run_args *a) {
    *a = (run_args){NULL, NULL, NULL, NULL, "f16", 128, 1, 0, 256, 40, 0, 0, 0.8f, 0.95f, 42, NULL, NULL, NULL, NULL, NULL};
    const cli_opt opts[] = {
        {"-m", "--model", CLI_STR, &a->model, "model file (GGUF or llama2.c checkpoint)"},
        {"-z", "--tokenizer", CLI_STR, &a->tok, "tokenizer .bin for a llama2.c checkpoint"},
        {"-p", "--prompt", CLI_STR, &a->prompt, "prompt text"},
        {"-f", "--file", CLI_STR, &a->file, "read the prompt from a file ('-' for stdin)"},
        {"-n", "--n-predict", CLI_INT, &a->n_predict, "tokens to generate (default 128)"},
        {"-t", "--threads", CLI_INT, &a->threads, "threads (default 1)"},
        {"-c", "--ctx-size", CLI_INT, &a->n_ctx, "context size (default: the model's, at most 4096)"},
        {"-b", "--batch-size", CLI_INT, &a->batch, "prompt tokens per batch (default 256)"},
        {"-s", "--seed", CLI_U64, &a->seed, "sampling seed (default 42)"},
        {NULL, "--temp", CLI_FLOAT, &a->temp, "temperature; 0 = greedy (default 0.8)"},
        {NULL, "--top-k", CLI_INT, &a->top_k, "top-k sampling; 0 = off (default 40)"},
        {NULL, "--top-p", CLI_FLOAT, &a->top_p, "top-p sampling; 1 = off (default 0.95)"},
        {NULL, "--kv", CLI_STR, &a->kv, "KV cache spec: f16 (default), f32"},
        {NULL, "--select", CLI_STR, &a->select, "token selection policy[:params]: streaming, h2o, snapkv, pyramidkv, "
                                                 "prefixkv, kvcrush, quest, sentencekv (docs/selection.md)"},
        {NULL, "--budget", CLI_STR, &a->budget, "selection budget: N tokens or P% of the positions seen"},
        {NULL, "--cold", CLI_STR, &a->cold, "cold tier of quest/sentencekv: mem (default) or file:PATH [,q8|,f16]"},
        {NULL, "--load", CLI_STR, &a->load, "load a saved context (.kvz) first; the prompt continues it"},
        {NULL, "--store", CLI_STR, &a->store, "context store (DIR or redis://HOST:PORT/DB): reuse and save prefixes"},
        {NULL, "--no-bos", CLI_FLAG, &a->no_bos, "do not prepend the BOS token"},
        {NULL, "--ignore-eos", CLI_FLAG, &a->ignore_eos, "keep generating after end of sequence"},
        {0},
    };
    int rc = cli_parse("run", run_synopsis, opts, argc, argv);
    if (rc) return rc;
    if (!a->prompt && !a->file) return cli_usage_error("run", "give a prompt with -p TEXT or -f FILE");
    if (a->prompt && a->file) return cli_usage_error("run", "give -p or -f, not both");
    if (a->load && a->store) return cli_usage_error("run", "give --load or --store, not both");
    if (a->n_predict < 0 || a->threads < 1 || a->threads > 256 || a->n_ctx < 0 || a->batch < 1)
        return cli_usage_error("run", "-n must be >= 0, -t 1..256, -c >= 0, -b >= 1");
    return 0;
}

/* Generates up to n tokens after the prompt, printing each piece as it comes. */
static int run_generate(kvp_ctx *ctx, const kvp_model *m, const run_args *a, int last, float *logits,
                        int *n_gen, int *n_dec) {
    kvp_sampler_params sp = {a->temp, a->top_k, a->top_p, a->seed};
    kvp_sampler *s = NULL;
    int rc = kvp_sampler_new(&sp, kvp_model_get_info(m)->vocab_size, &s);
    if (rc < 0) return cli_fail("run", "sampler", rc);
    char piece[256];
    *n_gen = *n_dec = 0;
    for (int i = 0; i < a->n_predict && kvp_ctx_pos(ctx) < kvp_ctx_n_ctx(ctx); i++) {
        int tok = kvp_sampler_sample(s, logits);
        if (kvp_token_is_eog(m, tok) && !a->ignore_eos) break;
        if (kvp_detokenize(m, last, tok, piece, sizeof piece) > 0) {
            fputs(piece, stdout);
            fflush(stdout);
        }
        last = tok;
        (*n_gen)++;
        if (i + 1 == a->n_predict) break;
        if ((rc = kvp_ctx_decode(ctx, &tok, 1, logits, 0)) < 0) break;
        (*n_dec)++;
    }
    kvp_sampler_free(s);
    return rc < 0 ? cli_fail("run", "decoding", rc) : 0;
}

static void run_report(kvp_ctx *ctx, int n_prompt, double t_prompt, int n_gen, int n_dec, double t_gen) {
    kvp_kv_stats st;
    kvp_ctx_kv_stats(ctx, &st);
    char kvb[32], rss[32], hot[32], cold[32];
    fprintf(stderr, "\n[prompt %d tokens, prefill %.1f tok/s, decode %.1f tok/s (%d tokens), KV cache %s (hot %s, cold %s; %s, %.2f bits/value), peak RSS %s]\n",
            n_prompt, t_prompt > 0 ? n_prompt / t_prompt : 0, t_gen > 0 ? n_dec / t_gen : 0,
            n_gen, cli_bytes(st.bytes_hot + st.bytes_cold, kvb, sizeof kvb), cli_bytes(st.bytes_hot, hot, sizeof hot),
            cli_bytes(st.bytes_cold, cold, sizeof cold), st.spec, st.bits_per_value, cli_bytes(cli_peak_rss(), rss, sizeof rss));
}

static int run_ctx(kvp_model *m, const run_args *a, kvp_ctx **ctx) {
    kvp_ctx_params cp = kvp_ctx_default_params();
    int train = kvp_model_get_info(m)->n_ctx_train;
    cp.n_ctx = a->n_ctx ? a->n_ctx : (train < 4096 ? train : 4096);
    cp.n_threads = a->threads;
    cp.n_batch = a->batch;
    cp.kv = a->kv;
    cp.select = a->select;
    cp.budget = a->budget;
    cp.cold = a->cold;
    int rc = kvp_ctx_new(m, &cp, ctx);
    return rc < 0 ? cli_fail("run", "cannot create the context", rc) : 0;
}

static int run_main(kvp_model *m, const run_args *a, const char *text, size_t len) {
    int *ids = NULL, n = 0, rc;
    kvp_ctx *ctx = NULL;
    float *logits = malloc(sizeof(float) * (size_t)kvp_model_get_info(m)->vocab_size);
    if (!logits) return cli_fail("run", "allocating logits", KVP_ENOMEM);
    if ((rc = cli_tokenize("run", m, text, len, !a->no_bos && !a->load, &ids, &n)) || (rc = run_ctx(m, a, &ctx))) goto out;
    if (n == 0) { rc = cli_usage_error("run", "the prompt is empty"); goto out; }
    if (n >= kvp_ctx_n_ctx(ctx)) {
        fprintf(stderr, "kvpack run: the prompt has %d tokens; the context holds %d (raise -c)\n", n, kvp_ctx_n_ctx(ctx));
        rc = 1;
        goto out;
    }
    fputs(text, stdout);
    fflush(stdout);
    double t0 = cli_now();
    int e = a->load || a->store ? cli_prefill("run", ctx, a->load, a->store, ids, n, logits)
                                : kvp_ctx_decode(ctx, ids, n, logits, 0);
    double t1 = cli_now();
    if (e < 0) { rc = cli_fail("run", "prefill", e); goto out; }
    int n_gen = 0, n_dec = 0;
    rc = run_generate(ctx, m, a, ids[n - 1], logits, &n_gen, &n_dec);
    double t2 = cli_now();
    fputc('\n', stdout);
    if (!rc) run_report(ctx, n, t1 - t0, n_gen, n_dec, t2 - t1);
out:
    kvp_ctx_free(ctx);
    free(ids);
    free(logits);
    return rc;
}

int cmd_run(int argc, char **argv) {
    run_args a;
    int rc = run_parse(argc, argv, &a);
    if (rc) return rc == 1 ? 0 : rc;
    kvp_model *m = NULL;
    if ((rc = cli_open_model("run", a.model, a.tok, &m))) return rc;
    char *text = NULL;
    size_t len = 0;
    if (a.file) {
        if ((rc = cli_read_text("run", a.file, &text, &len))) { kvp_model_free(m); return rc; }
    } else {
        text = strdup(a.prompt);
        len = strlen(a.prompt);
    }
    rc = run_main(m, &a, text, len);
    free(text);
    kvp_model_free(m);
    return rc;
}
