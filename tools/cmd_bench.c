/*
 * cmd_bench.c: `kvpack bench`: prefill and decode speed, as llama-bench measures them.
 *
 * Prefill (ppP): P tokens from an empty cache in batches of -b. Decode (tgN): N tokens one
 * at a time, after a context of D tokens (-d, untimed). Each is repeated -r times; the
 * mean and standard deviation of tokens/s are reported, with the KV bytes and peak RSS.
 * With --sessions S, the decode runs S contexts (each after its D tokens) one token each
 * per step, in one batched forward pass (kvp_ctx_decode_batch, as `kvpack serve` steps its
 * sessions) and, alternately in the same run, one forward pass per context; tokens/s count
 * every context's tokens.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

typedef struct {
    const char *model, *tok, *kv;
    int n_prompt, n_gen, threads, reps, depth, batch, json, sessions;
    const char *select, *budget, *cold; /* token selection (docs/selection.md) */
} bench_args;

typedef struct {
    double mean, sd;
} bench_stat;

static bench_stat bench_summary(const double *v, int n) {
    bench_stat s = {0, 0};
    for (int i = 0; i < n; i++) s.mean += v[i] / n;
    for (int i = 0; i < n && n > 1; i++) s.sd += (v[i] - s.mean) * (v[i] - s.mean) / (n - 1);
    s.sd = sqrt(s.sd);
    return s;
}

static void bench_tokens(int *ids, int n, int vocab) {
    uint64_t s = 0x1234567;
    for (int i = 0; i < n; i++) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        ids[i] = (int)(s % (uint64_t)(vocab > 3 ? vocab - 3 : vocab)) + (vocab > 3 ? 3 : 0);
    }
}

/* Times one prefill of n tokens; returns tokens/s or a negative error. */
static double bench_prefill(kvp_ctx *ctx, const int *ids, int n) {
    kvp_ctx_reset(ctx);
    double t0 = cli_now();
    int rc = kvp_ctx_decode(ctx, ids, n, NULL, 0);
    double t = cli_now() - t0;
    return rc < 0 ? rc : n / t;
}

/* Fills `depth` tokens untimed, then times n single-token steps with logits. */
static double bench_decode(kvp_ctx *ctx, const int *ids, int depth, int n, float *logits) {
    kvp_ctx_reset(ctx);
    int rc = depth > 0 ? kvp_ctx_decode(ctx, ids, depth, NULL, 0) : 0;
    if (rc < 0) return rc;
    double t0 = cli_now();
    for (int i = 0; i < n && rc >= 0; i++) rc = kvp_ctx_decode(ctx, &ids[depth + i], 1, logits, 0);
    double t = cli_now() - t0;
    return rc < 0 ? rc : n / t;
}

static int bench_parse(int argc, char **argv, bench_args *a) {
    *a = (bench_args){NULL, NULL, "f16", 512, 128, 1, 3, 0, 512, 0, 1, NULL, NULL, NULL};
    const cli_opt opts[] = {
        {"-m", "--model", CLI_STR, &a->model, "model file"},
        {"-z", "--tokenizer", CLI_STR, &a->tok, "tokenizer .bin for a llama2.c checkpoint"},
        {"-p", "--n-prompt", CLI_INT, &a->n_prompt, "prefill tokens (default 512; 0 = skip)"},
        {"-n", "--n-gen", CLI_INT, &a->n_gen, "decode tokens (default 128; 0 = skip)"},
        {"-d", "--depth", CLI_INT, &a->depth, "context already in the cache before decoding (default 0)"},
        {"-t", "--threads", CLI_INT, &a->threads, "threads (default 1)"},
        {"-r", "--repetitions", CLI_INT, &a->reps, "repetitions (default 3)"},
        {"-b", "--batch-size", CLI_INT, &a->batch, "prefill batch (default 512)"},
        {NULL, "--kv", CLI_STR, &a->kv, "KV cache spec (default f16)"},
        {NULL, "--select", CLI_STR, &a->select, "token selection policy[:params] (docs/selection.md)"},
        {NULL, "--budget", CLI_STR, &a->budget, "selection budget: N tokens or P%"},
        {NULL, "--cold", CLI_STR, &a->cold, "cold tier of quest/sentencekv: mem (default) or file:PATH"},
        {NULL, "--sessions", CLI_INT, &a->sessions, "decode this many contexts at once: batched vs one by one (default 1)"},
        {NULL, "--json", CLI_FLAG, &a->json, "print one JSON object instead of a table"},
        {0},
    };
    int rc = cli_parse("bench", "-m MODEL [-p 512] [-n 128] [-d 0] [-t 1] [-r 3] [--kv f16] [--sessions S] [--json]",
                       opts, argc, argv);
    if (rc) return rc;
    if (a->n_prompt < 0 || a->n_gen < 0 || a->depth < 0 || a->threads < 1 || a->reps < 1 || a->batch < 1 ||
        a->sessions < 1 || a->sessions > 1024)
        return cli_usage_error("bench", "counts must be >= 0, -t, -r, -b >= 1 and --sessions 1..1024");
    return 0;
}

static void bench_print(const bench_args *a, const kvp_model *m, kvp_ctx *ctx, bench_stat pp, bench_stat tg) {
    const kvp_model_info *in = kvp_model_get_info(m);
    kvp_kv_stats st;
    kvp_ctx_kv_stats(ctx, &st);
    uint64_t kvb = st.bytes_hot + st.bytes_cold;
    if (a->json) {
        printf("{\"model\":\"%s\",\"params\":%llu,\"weight_type\":\"%s\",\"threads\":%d,\"kv\":\"%s\",\"isa\":\"%s\","
               "\"n_prompt\":%d,\"pp_tps\":%.3f,\"pp_sd\":%.3f,\"n_gen\":%d,\"depth\":%d,\"tg_tps\":%.3f,\"tg_sd\":%.3f,"
               "\"kv_bytes\":%llu,\"kv_bits_per_value\":%.4f,\"peak_rss\":%llu}\n",
               in->name, (unsigned long long)in->n_params, kvp_type_name(in->weight_type), a->threads, st.spec,
               kvp_isa(), a->n_prompt, pp.mean, pp.sd, a->n_gen, a->depth, tg.mean, tg.sd, (unsigned long long)kvb,
               st.bits_per_value, (unsigned long long)cli_peak_rss());
        return;
    }
    char b1[32], b2[32];
    printf("| model | params | weights | threads | kv | test | t/s |\n|---|---|---|---|---|---|---|\n");
    if (a->n_prompt)
        printf("| %s | %.1fM | %s | %d | %s | pp%d | %.2f ± %.2f |\n", in->name, in->n_params / 1e6,
               kvp_type_name(in->weight_type), a->threads, st.spec, a->n_prompt, pp.mean, pp.sd);
    if (a->n_gen)
        printf("| %s | %.1fM | %s | %d | %s | tg%d%s%.0d | %.2f ± %.2f |\n", in->name, in->n_params / 1e6,
               kvp_type_name(in->weight_type), a->threads, st.spec, a->n_gen, a->depth ? " @ d" : "", a->depth, tg.mean, tg.sd);
    printf("KV cache after the last test: %s (%.2f bits/value); peak RSS %s; kernels %s\n", cli_bytes(kvb, b1, sizeof b1),
           st.bits_per_value, cli_bytes(cli_peak_rss(), b2, sizeof b2), kvp_isa());
}

static int bench_run(const bench_args *a, kvp_model *m, kvp_ctx *ctx, int *ids, float *logits) {
    double pp[64], tg[64];
    int reps = a->reps > 64 ? 64 : a->reps;
    for (int r = 0; r < reps; r++) {
        pp[r] = a->n_prompt ? bench_prefill(ctx, ids, a->n_prompt) : 0;
        tg[r] = a->n_gen ? bench_decode(ctx, ids, a->depth, a->n_gen, logits) : 0;
        if (pp[r] < 0 || tg[r] < 0) return cli_fail("bench", "forward pass", (int)(pp[r] < 0 ? pp[r] : tg[r]));
    }
    bench_print(a, m, ctx, bench_summary(pp, reps), bench_summary(tg, reps));
    return 0;
}

/* ---- several sessions (--sessions) ---- */

/* Fills each context with its `depth` tokens (untimed, once), then times n steps of one token per
 * context: one kvp_ctx_decode_batch per step, or one kvp_ctx_decode per context. Returns
 * tokens/s over all contexts, or a negative error. logits: (S, vocab). */
static double bench_decode_multi(kvp_ctx **ctxs, int S, const int *ids, int depth, int n, float *logits, int batched) {
    int rc = 0, V = kvp_model_get_info(kvp_ctx_model(ctxs[0]))->vocab_size, *toks = malloc(sizeof(int) * (size_t)S);
    for (int c = 0; c < S && rc >= 0; c++) { /* a context filled by an earlier run is cut back to its depth */
        if (kvp_ctx_pos(ctxs[c]) >= depth && kvp_ctx_truncate(ctxs[c], depth) == KVP_OK) continue;
        kvp_ctx_reset(ctxs[c]);
        if (depth > 0) rc = kvp_ctx_decode(ctxs[c], ids, depth, NULL, 0);
    }
    if (!toks) rc = KVP_ENOMEM;
    double t0 = cli_now();
    for (int i = 0; i < n && rc >= 0; i++) {
        for (int c = 0; c < S; c++) toks[c] = ids[depth + (i + c) % (n + 1)];
        if (batched) rc = kvp_ctx_decode_batch(ctxs, toks, S, logits, NULL);
        for (int c = 0; c < S && !batched && rc >= 0; c++) rc = kvp_ctx_decode(ctxs[c], &toks[c], 1, logits + (size_t)c * V, 0);
    }
    double t = cli_now() - t0;
    free(toks);
    return rc < 0 ? rc : (double)S * n / t;
}

static void bench_print_multi(const bench_args *a, const kvp_model *m, bench_stat bt, bench_stat se) {
    const kvp_model_info *in = kvp_model_get_info(m);
    if (a->json) {
        printf("{\"model\":\"%s\",\"params\":%llu,\"weight_type\":\"%s\",\"threads\":%d,\"kv\":\"%s\",\"isa\":\"%s\","
               "\"sessions\":%d,\"n_gen\":%d,\"depth\":%d,\"tg_batched_tps\":%.3f,\"tg_batched_sd\":%.3f,"
               "\"tg_serial_tps\":%.3f,\"tg_serial_sd\":%.3f,\"peak_rss\":%llu}\n",
               in->name, (unsigned long long)in->n_params, kvp_type_name(in->weight_type), a->threads, a->kv, kvp_isa(),
               a->sessions, a->n_gen, a->depth, bt.mean, bt.sd, se.mean, se.sd, (unsigned long long)cli_peak_rss());
        return;
    }
    char b[32];
    printf("| model | params | weights | threads | kv | test | t/s (all sessions) |\n|---|---|---|---|---|---|---|\n");
    const char *names[2] = {"batched", "serial"};
    bench_stat st[2] = {bt, se};
    for (int k = 0; k < 2; k++)
        printf("| %s | %.1fM | %s | %d | %s | tg%d x %d sessions%s%.0d, %s | %.2f ± %.2f |\n", in->name, in->n_params / 1e6,
               kvp_type_name(in->weight_type), a->threads, a->kv, a->n_gen, a->sessions, a->depth ? " @ d" : "", a->depth,
               names[k], st[k].mean, st[k].sd);
    printf("batched / serial: %.2fx; peak RSS %s; kernels %s\n", bt.mean / se.mean, cli_bytes(cli_peak_rss(), b, sizeof b),
           kvp_isa());
}

/* Batched and serial runs alternate, -r times each. */
static int bench_run_multi(const bench_args *a, kvp_model *m, kvp_ctx **ctxs, const int *ids, float *logits) {
    double bt[64], se[64];
    int reps = a->reps > 64 ? 64 : a->reps;
    for (int r = 0; r < reps; r++) {
        bt[r] = bench_decode_multi(ctxs, a->sessions, ids, a->depth, a->n_gen, logits, 1);
        se[r] = bt[r] < 0 ? 0 : bench_decode_multi(ctxs, a->sessions, ids, a->depth, a->n_gen, logits, 0);
        if (bt[r] < 0 || se[r] < 0) return cli_fail("bench", "forward pass", (int)(bt[r] < 0 ? bt[r] : se[r]));
    }
    bench_print_multi(a, m, bench_summary(bt, reps), bench_summary(se, reps));
    return 0;
}

/* --sessions S: S contexts of the same cache, then the alternating runs. */
static int bench_sessions(const bench_args *a, kvp_model *m, const kvp_ctx_params *cp, const int *ids) {
    int S = a->sessions, rc = 0;
    kvp_ctx **ctxs = calloc((size_t)S, sizeof *ctxs);
    float *logits = malloc(sizeof(float) * (size_t)S * (size_t)kvp_model_get_info(m)->vocab_size);
    if (!ctxs || !logits) rc = cli_fail("bench", "allocating", KVP_ENOMEM);
    for (int c = 0; c < S && rc == 0; c++)
        if ((rc = kvp_ctx_new(m, cp, &ctxs[c])) < 0) rc = cli_fail("bench", "cannot create the contexts", rc);
    if (rc == 0) rc = bench_run_multi(a, m, ctxs, ids, logits);
    for (int c = 0; ctxs && c < S; c++) kvp_ctx_free(ctxs[c]);
    free(ctxs);
    free(logits);
    return rc;
}

int cmd_bench(int argc, char **argv) {
    bench_args a;
    int rc = bench_parse(argc, argv, &a);
    if (rc) return rc == 1 ? 0 : rc;
    kvp_model *m = NULL;
    if ((rc = cli_open_model("bench", a.model, a.tok, &m))) return rc;
    const kvp_model_info *in = kvp_model_get_info(m);
    int need = a.n_prompt > a.depth + a.n_gen ? a.n_prompt : a.depth + a.n_gen;
    if (need < 1) need = 1;
    kvp_ctx_params cp = {need, a.threads, a.batch, a.kv, a.select, a.budget, a.cold};
    kvp_ctx *ctx = NULL;
    int *ids = malloc(sizeof(int) * (size_t)(need + 1));
    float *logits = malloc(sizeof(float) * (size_t)in->vocab_size);
    if (!ids || !logits) rc = cli_fail("bench", "allocating", KVP_ENOMEM);
    else if (a.sessions > 1) {
        bench_tokens(ids, need + 1, in->vocab_size);
        rc = bench_sessions(&a, m, &cp, ids);
    } else if ((rc = kvp_ctx_new(m, &cp, &ctx)) < 0) rc = cli_fail("bench", "cannot create the context", rc);
    else {
        bench_tokens(ids, need + 1, in->vocab_size);
        rc = bench_run(&a, m, ctx, ids, logits);
    }
    kvp_ctx_free(ctx);
    free(ids);
    free(logits);
    kvp_model_free(m);
    return rc;
}
