/*
 * cmd_codec_bench.c: `kvpack codec-bench`: what the context codec costs and keeps.
 *
 * For a prompt (the first -n tokens of -f TEXT) it prefills a context, then for every level
 * and for two references (llama.cpp-style q8_0 and q4_0 quantization of the same cache,
 * blocks of 32 values of a token with one F16 scale each) it:
 *   - encodes the context (bits per value over the whole .kvz, ratios against F16, q8_0, q4_0),
 *   - loads it into a fresh context (load time against the prefill time),
 *   - feeds the next --cont tokens of the text to both contexts and compares the next-token
 *     distributions: mean and max KL(original || reloaded) and top-1 agreement.
 * Encode and decode speeds are MB of F16 KV per second (2 bytes per value), each the best of
 * 5 runs; decoding runs on one thread, encoding on -t threads (so with the default -t 1 both
 * are per core); load times include putting the KV into the cache. It also compresses the raw F16 cache with `zstd -19` when the
 * zstd program exists, and times loading the context from a directory store against the
 * prefill. With --recall N it instead runs N sequences of the kvrecall L=512 suite
 * (kvrecall-format.txt) and reports recall accuracy after reload per level.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

typedef struct {
    const char *model, *tok, *file;
    int n_prompt, n_cont, threads, chunk, json, recall, windows;
} cb_args;

typedef struct {
    const char *name;
    double bytes, load_s, enc_s, dec_s, kl_sum, kl_max;
    long n_pos, top1, answers, correct;
} cb_row;

enum { CB_Q8 = 0, CB_Q4 = 1, CB_LEVEL0 = 2, CB_ROWS = 6 }; /* rows: q8_0, q4_0, levels 1..4 */

typedef struct {
    const cb_args *a;
    kvp_model *m;
    kvp_ctx *ref, *test;       /* the original context and the one things are loaded into */
    int V, n_layers, kvd, n_values_per_token;
    float *lref, *ltest;       /* (n_cont, V) logits */
    float *kv;                 /* (n_layers, 2, n_prompt, kvd) */
    cb_row rows[CB_ROWS];
    double prefill_s, zstd_bits, store_load_s, hash_s; /* zstd: on the first window */
    long prompt_tokens, store_tokens;
} cb_state;

static const char *cb_synopsis = "-m MODEL (-f TEXT | --recall N) [-n TOKENS] [--cont N] [-t N] [--json]";

static int cb_parse(int argc, char **argv, cb_args *a) {
    *a = (cb_args){NULL, NULL, NULL, 0, 64, 1, 0, 0, 0, 1};
    const cli_opt opts[] = {
        {"-m", "--model", CLI_STR, &a->model, "model file"},
        {"-z", "--tokenizer", CLI_STR, &a->tok, "tokenizer .bin for a llama2.c checkpoint"},
        {"-f", "--file", CLI_STR, &a->file, "text: the prompt, then the continuation"},
        {"-n", "--n-prompt", CLI_INT, &a->n_prompt, "prompt tokens (default: as many as fit, at most 2048)"},
        {NULL, "--cont", CLI_INT, &a->n_cont, "continuation tokens compared after reload (default 64)"},
        {"-t", "--threads", CLI_INT, &a->threads, "threads (default 1: speeds are per core)"},
        {NULL, "--chunk", CLI_INT, &a->chunk, "tokens per chunk (default 256)"},
        {NULL, "--windows", CLI_INT, &a->windows, "repeat over W consecutive windows of the text (default 1)"},
        {NULL, "--recall", CLI_INT, &a->recall, "score N kvrecall L=512 sequences instead of -f"},
        {NULL, "--json", CLI_FLAG, &a->json, "print one JSON object"},
        {0},
    };
    int rc = cli_parse("codec-bench", cb_synopsis, opts, argc, argv);
    if (rc) return rc;
    if (!a->file == !a->recall) return cli_usage_error("codec-bench", "give -f TEXT or --recall N (one of them)");
    if (a->n_prompt < 0 || a->n_cont < 1 || a->threads < 1 || a->threads > 256 || a->chunk < 0 || a->recall < 0 ||
        a->windows < 1)
        return cli_usage_error("codec-bench", "-n >= 0, --cont >= 1, -t 1..256, --chunk >= 0, --recall >= 0, --windows >= 1");
    return 0;
}

/* ---- reference quantizers (llama.cpp's q8_0 and q4_0 reference rounding) ---- */

/* A float rounded to F16 precision as llama.cpp stores a block scale (round to nearest even;
 * scales are in F16's normal range). */
static float cb_f16_round(float x) {
    union { float f; uint32_t u; } v = {x};
    v.u = (v.u + 0x00000fffu + ((v.u >> 13) & 1)) & 0xffffe000u;
    return v.f;
}

/* One block as llama.cpp's quantize_row_q8_0_reference / q4_0_reference and dequantize. */
static void cb_quant_block(float *x, int n, int bits) {
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }
    float d = bits == 8 ? amax / 127.0f : max / -8.0f, id = d ? 1.0f / d : 0, dq = cb_f16_round(d);
    for (int i = 0; i < n; i++) {
        if (bits == 8) {
            x[i] = roundf(x[i] * id) * dq;
        } else {
            int q = (int)(int8_t)(x[i] * id + 8.5f);
            x[i] = (float)((q > 15 ? 15 : q) - 8) * dq;
        }
    }
}

/* Quantizes every token row of every plane in blocks of 32 values. */
static void cb_quantize(float *kv, size_t rows, int kvd, int bits) {
    for (size_t r = 0; r < rows; r++)
        for (int b = 0; b < kvd; b += 32) cb_quant_block(kv + r * (size_t)kvd + b, kvd - b < 32 ? kvd - b : 32, bits);
}

/* ---- distributions ---- */

static void cb_log_softmax(const float *x, int n, double *out) {
    double mx = x[0], s = 0;
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < n; i++) s += exp((double)x[i] - mx);
    double ls = log(s) + mx;
    for (int i = 0; i < n; i++) out[i] = (double)x[i] - ls;
}

static int cb_argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* KL(ref || test) and top-1 agreement over the continuation's positions. */
static void cb_compare(cb_state *st, cb_row *row, int n_cont) {
    double *lp = malloc(sizeof(double) * (size_t)st->V * 2), *lq = lp + st->V;
    for (int j = 0; lp && j < n_cont; j++) {
        const float *r = st->lref + (size_t)j * st->V, *t = st->ltest + (size_t)j * st->V;
        cb_log_softmax(r, st->V, lp);
        cb_log_softmax(t, st->V, lq);
        double kl = 0;
        for (int i = 0; i < st->V; i++) kl += exp(lp[i]) * (lp[i] - lq[i]);
        row->kl_sum += kl;
        row->kl_max = kl > row->kl_max ? kl : row->kl_max;
        row->top1 += cb_argmax(r, st->V) == cb_argmax(t, st->V);
        row->n_pos++;
    }
    free(lp);
}

/* Recall scoring: positions j of the continuation whose previous token is '?' (id 3). */
static void cb_score_recall(cb_state *st, cb_row *row, const int *cont, int n_cont, int prev) {
    for (int j = 0; j + 1 < n_cont; j++) {
        if ((j ? cont[j - 1] : prev) != 3) continue;
        row->answers++;
        row->correct += cb_argmax(st->ltest + (size_t)j * st->V, st->V) == cont[j + 1];
    }
}

/* ---- one evaluation: a prefix in `test`, then the continuation ---- */

/* Feeds the continuation to the test context (filled with the prefix) and scores it. */
static int cb_continue(cb_state *st, cb_row *row, const int *cont, int n_cont, int prev) {
    int rc = kvp_ctx_decode(st->test, cont, n_cont, st->ltest, 1);
    if (rc < 0) return cli_fail("codec-bench", "decoding the continuation", rc);
    cb_compare(st, row, n_cont);
    cb_score_recall(st, row, cont, n_cont, prev);
    return 0;
}

/* A reference quantizer: the original KV, quantized, imported into the test context. */
static int cb_eval_quant(cb_state *st, cb_row *row, const int *toks, int n, int bits, const int *cont, int n_cont) {
    kvp_ctx_reset(st->test);
    int rc = kvp_ctx_kv_read(st->ref, 0, n, st->kv);
    if (rc == 0) {
        cb_quantize(st->kv, (size_t)st->n_layers * 2 * (size_t)n, st->kvd, bits);
        rc = kvp_ctx_kv_import(st->test, toks, n, st->kv);
    }
    if (rc < 0) return cli_fail("codec-bench", "quantizing the reference cache", rc);
    row->bytes += (double)n * st->n_values_per_token * (bits == 8 ? 34.0 : 18.0) / 32.0;
    return cb_continue(st, row, cont, n_cont, toks[n - 1]);
}

/* Decodes every KV chunk of a .kvz on this thread alone: the per-core decode time, the best
 * of CB_REPS runs (other processes on the machine only ever add time). */
#define CB_REPS 5
static int cb_decode_all(cb_state *st, const void *buf, size_t size, double *secs) {
    kvp_kvz *z = NULL;
    int rc = kvp_kvz_open(buf, size, &z);
    const kvp_kvz_info *in = rc == 0 ? kvp_kvz_get_info(z) : NULL;
    float *kv = rc == 0 ? malloc(sizeof(float) * (size_t)st->n_values_per_token * (size_t)in->chunk_tokens) : NULL;
    *secs = 1e30;
    for (int r = 0; kv && rc == 0 && r < CB_REPS; r++) {
        double t0 = cli_now();
        for (int i = 0; rc == 0 && i < in->n_chunks; i++) {
            kvp_kvz_chunk_info ci;
            kvp_kvz_chunk(z, i, &ci);
            if (ci.level != KVP_LEVEL_TEXT) rc = kvp_kvz_decode_chunk(z, i, NULL, 0, kv);
        }
        double t = cli_now() - t0;
        *secs = t < *secs ? t : *secs;
    }
    free(kv);
    kvp_kvz_free(z);
    return rc < 0 ? cli_fail("codec-bench", "decoding", rc) : 0;
}

/* Saves the reference context at a level, times encode, per-core decode and load, scores. */
static int cb_eval_level(cb_state *st, cb_row *row, const int *toks, int n, int level, const int *cont, int n_cont) {
    kvp_save_params p = kvp_save_default_params();
    p.level = level;
    p.chunk_tokens = st->a->chunk;
    size_t cap = 0, size = 0;
    int rc = kvp_context_save_bound(st->ref, n, &p, &cap);
    void *buf = rc == 0 ? malloc(cap) : NULL;
    double enc = 1e30, dec = 0;
    for (int r = 0; buf && rc == 0 && r < CB_REPS; r++) {
        double t0 = cli_now();
        rc = kvp_context_save(st->ref, toks, n, &p, buf, cap, &size);
        enc = cli_now() - t0 < enc ? cli_now() - t0 : enc;
    }
    if (buf && rc == 0 && cb_decode_all(st, buf, size, &dec)) rc = KVP_EINTERNAL;
    kvp_ctx_reset(st->test);
    double t2 = cli_now();
    if (buf && rc == 0) rc = kvp_context_load(st->test, buf, size, NULL);
    double t3 = cli_now();
    free(buf);
    if (!buf || rc < 0) return rc == KVP_EINTERNAL ? 1 : cli_fail("codec-bench", "saving and loading", buf ? rc : KVP_ENOMEM);
    row->bytes += (double)size;
    row->enc_s += enc;
    row->dec_s += dec;
    row->load_s += t3 - t2;
    return cb_continue(st, row, cont, n_cont, toks[n - 1]);
}

/* Every method on one (prefix, continuation) pair; the reference logits come first. */
static int cb_eval_all(cb_state *st, const int *toks, int n, const int *cont, int n_cont) {
    kvp_ctx_reset(st->ref);
    double t0 = cli_now();
    int rc = kvp_ctx_decode(st->ref, toks, n, NULL, 0);
    st->prefill_s += cli_now() - t0;
    st->prompt_tokens += n;
    if (rc == 0) rc = kvp_ctx_decode(st->ref, cont, n_cont, st->lref, 1);
    if (rc == 0) rc = kvp_ctx_truncate(st->ref, n);
    if (rc < 0) return cli_fail("codec-bench", "prefill", rc);
    if ((rc = cb_eval_quant(st, &st->rows[CB_Q8], toks, n, 8, cont, n_cont)) ||
        (rc = cb_eval_quant(st, &st->rows[CB_Q4], toks, n, 4, cont, n_cont)))
        return rc;
    for (int level = KVP_LEVEL_LOW; level <= KVP_LEVEL_LOSSLESS; level++)
        if ((rc = cb_eval_level(st, &st->rows[CB_LEVEL0 + level - 1], toks, n, level, cont, n_cont))) return rc;
    return 0;
}

/* ---- zstd -19 on the raw F16 cache ---- */

static uint16_t cb_f32_to_f16(float f) {
    union { float f; uint32_t u; } v = {f};
    uint32_t sign = (v.u >> 16) & 0x8000, a = v.u & 0x7fffffffu;
    if (a >= 0x47800000u) return (uint16_t)(sign | (a > 0x7f800000u ? 0x7e00 : 0x7c00)); /* inf, NaN, overflow */
    if (a < 0x38800000u) { /* an F16 subnormal: count units of 2^-24 */
        union { uint32_t u; float f; } w = {a};
        return (uint16_t)(sign | (uint32_t)lrintf(w.f * 16777216.0f));
    }
    return (uint16_t)(sign | ((a + 0xc8000fffu + ((a >> 13) & 1)) >> 13));
}

/* Bytes zstd -19 makes of the reference cache's F16 values, or 0 without a zstd program. */
static double cb_zstd(cb_state *st, int n) {
    if (system("command -v zstd >/dev/null 2>&1") != 0) return 0;
    char path[] = "/tmp/kvpack-codec-bench-XXXXXX";
    int fd = mkstemp(path);
    size_t count = (size_t)st->n_values_per_token * (size_t)n;
    uint16_t *h = malloc(sizeof *h * count);
    double bytes = 0;
    if (fd >= 0 && h && kvp_ctx_kv_read(st->ref, 0, n, st->kv) == 0) {
        for (size_t i = 0; i < count; i++) h[i] = cb_f32_to_f16(st->kv[i]);
        FILE *f = fdopen(fd, "wb");
        int ok = f && fwrite(h, sizeof *h, count, f) == count;
        if (f) fclose(f); else close(fd);
        char cmd[256];
        snprintf(cmd, sizeof cmd, "zstd -19 -q -c %s | wc -c", path);
        FILE *p = ok ? popen(cmd, "r") : NULL;
        if (p && fscanf(p, "%lf", &bytes) != 1) bytes = 0;
        if (p) pclose(p);
    } else if (fd >= 0) {
        close(fd);
    }
    unlink(path);
    free(h);
    return bytes;
}

/* ---- loading from a directory store against the prefill ---- */

static void cb_rmdir(const char *dir) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "kvpack codec-bench: warning: could not remove %s\n", dir);
}

static int cb_store(cb_state *st, const int *toks, int n) {
    char dir[] = "/tmp/kvpack-codec-store-XXXXXX";
    if (!mkdtemp(dir)) return cli_fail("codec-bench", "creating a temporary store", KVP_EIO);
    kvp_store *s = NULL;
    kvp_save_params p = kvp_save_default_params();
    p.chunk_tokens = st->a->chunk;
    int loaded = 0, rc = kvp_store_open(dir, NULL, &s);
    if (rc == 0) rc = kvp_context_save_store(st->ref, toks, n, &p, s, NULL);
    kvp_ctx_reset(st->test);
    double t0 = cli_now();
    if (rc == 0) rc = kvp_context_load_store(st->test, s, toks, n, st->a->chunk, &loaded);
    st->store_load_s = cli_now() - t0;
    st->store_tokens = loaded;
    kvp_store_free(s);
    cb_rmdir(dir);
    return rc < 0 ? cli_fail("codec-bench", "directory store", rc) : 0;
}

/* ---- kvrecall sequences (kvrecall-format.txt, sections 4 and 5) ---- */

typedef struct { uint64_t s; } cb_rng;

static uint32_t cb_next(cb_rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return (uint32_t)((r->s * 0x2545F4914F6CDD1DULL) >> 32);
}

/* Writes the L tokens of sequence (L, N, Q, seed); returns the index of the first '?'. */
static int cb_recall_seq(int L, int N, int Q, uint64_t seed, int *out) {
    cb_rng r = {seed ^ 0x9E3779B97F4A7C15ULL};
    if (!r.s) r.s = 1;
    int perm[128], key[128], val[128], gap[129] = {0}, qp[128], F = L - 1 - 2 * N - 3 * Q, n = 0;
    for (int i = 0; i < 128; i++) perm[i] = i;
    for (int i = 0; i < N; i++) {
        int j = i + (int)(cb_next(&r) % (uint32_t)(128 - i)), t = perm[i];
        perm[i] = perm[j], perm[j] = t, key[i] = perm[i];
    }
    for (int i = 0; i < N; i++) val[i] = (int)(cb_next(&r) % 128);
    for (int f = 0; f < F; f++) gap[cb_next(&r) % (uint32_t)(N + 1)]++;
    out[n++] = 1;
    for (int i = 0; i <= N; i++) {
        for (int g = 0; g < gap[i]; g++) out[n++] = 260 + (int)(cb_next(&r) % 64);
        if (i < N) out[n++] = 4 + key[i], out[n++] = 132 + val[i];
    }
    int first = n;
    for (int i = 0; i < N; i++) qp[i] = i;
    for (int i = 0; i < Q; i++) {
        int j = i + (int)(cb_next(&r) % (uint32_t)(N - i)), t = qp[i];
        qp[i] = qp[j], qp[j] = t;
    }
    for (int i = 0; i < Q; i++) out[n++] = 3, out[n++] = 4 + key[qp[i]], out[n++] = 132 + val[qp[i]];
    return first;
}

/* ---- set-up ---- */

static int cb_setup(cb_state *st, int n_ctx, int n_prompt) {
    const kvp_model_info *in = kvp_model_get_info(st->m);
    st->V = in->vocab_size;
    st->n_layers = in->n_layers;
    st->kvd = in->n_kv_heads * in->head_dim;
    st->n_values_per_token = 2 * st->n_layers * st->kvd;
    kvp_ctx_params cp = kvp_ctx_default_params();
    cp.n_ctx = n_ctx;
    cp.n_threads = st->a->threads;
    int rc = kvp_ctx_new(st->m, &cp, &st->ref);
    if (rc == 0) rc = kvp_ctx_new(st->m, &cp, &st->test);
    if (rc < 0) return cli_fail("codec-bench", "creating contexts", rc);
    st->lref = malloc(sizeof(float) * (size_t)st->V * (size_t)st->a->n_cont);
    st->ltest = malloc(sizeof(float) * (size_t)st->V * (size_t)st->a->n_cont);
    st->kv = malloc(sizeof(float) * (size_t)st->n_values_per_token * (size_t)n_prompt);
    if (!st->lref || !st->ltest || !st->kv) return cli_fail("codec-bench", "allocating", KVP_ENOMEM);
    static const char *names[CB_ROWS] = {"q8_0", "q4_0", "low", "medium", "high", "lossless"};
    for (int i = 0; i < CB_ROWS; i++) st->rows[i].name = names[i];
    return 0;
}

static void cb_teardown(cb_state *st) {
    kvp_ctx_free(st->ref);
    kvp_ctx_free(st->test);
    free(st->lref);
    free(st->ltest);
    free(st->kv);
}

/* Computes (and caches in the model) the weight hash, timed apart from encoding. */
static void cb_hash(cb_state *st, const int *toks) {
    kvp_save_params p = kvp_save_default_params();
    p.level = KVP_LEVEL_TEXT;
    char buf[4096];
    size_t size = 0;
    double t0 = cli_now();
    kvp_ctx_reset(st->ref);
    if (kvp_ctx_decode(st->ref, toks, 1, NULL, 0) == 0) kvp_context_save(st->ref, toks, 1, &p, buf, sizeof buf, &size);
    st->hash_s = cli_now() - t0;
}

/* ---- report ---- */

static void cb_print_row(const cb_state *st, const cb_row *r, double values, double f16) {
    double bits = 8 * r->bytes / values, kl = r->n_pos ? r->kl_sum / r->n_pos : 0;
    double mb = 2 * values / 1e6;
    printf("%-9s %8.3f %7.2fx %7.2fx %7.2fx %10.2e %10.2e %6.1f%%", r->name, bits, f16 / r->bytes,
           st->rows[CB_Q8].bytes / r->bytes, st->rows[CB_Q4].bytes / r->bytes, kl, r->kl_max,
           r->n_pos ? 100.0 * r->top1 / r->n_pos : 0);
    if (r->answers) printf(" %6.1f%%", 100.0 * r->correct / r->answers);
    if (r->enc_s > 0)
        printf(" %9.1f %9.1f %9.2f %8.1fx", mb / r->enc_s, mb / r->dec_s, r->load_s * 1e3, st->prefill_s / r->load_s);
    printf("\n");
}

static void cb_print(const cb_state *st, int recall) {
    double values = (double)st->prompt_tokens * st->n_values_per_token, f16 = 2 * values;
    printf("prompt %ld tokens in %ld window(s) (%d continuation tokens compared in each), %d threads, kernels %s\n",
           st->prompt_tokens, st->rows[0].n_pos / st->a->n_cont, st->a->n_cont, st->a->threads, kvp_isa());
    printf("prefill %.1f ms (%.1f tok/s); weight hash %.1f ms (once per model)\n", st->prefill_s * 1e3,
           st->prompt_tokens / st->prefill_s, st->hash_s * 1e3);
    printf("%-9s %8s %8s %8s %8s %10s %10s %7s%s %9s %9s %9s %9s\n", "method", "bits/val", "vs F16", "vs q8_0",
           "vs q4_0", "KL mean", "KL max", "top-1", recall ? "  recall" : "", "enc MB/s", "dec MB/s", "load ms",
           "prefill/load");
    for (int i = 0; i < CB_ROWS; i++) cb_print_row(st, &st->rows[i], values, f16);
    if (st->zstd_bits > 0)
        printf("zstd -19 on the F16 cache (first window): %.3f bits/value (%.2fx vs F16)\n", st->zstd_bits,
               16 / st->zstd_bits);
    if (st->store_tokens > 0)
        printf("directory store: loaded %ld tokens in %.2f ms; prefill of %ld tokens took %.1f ms: %.1fx faster per token\n",
               st->store_tokens, st->store_load_s * 1e3, st->prompt_tokens, st->prefill_s * 1e3,
               (st->prefill_s / st->prompt_tokens) / (st->store_load_s / st->store_tokens));
}

static void cb_json_row(const cb_state *st, const cb_row *r, double values) {
    double mb = 2 * values / 1e6;
    printf("{\"method\":\"%s\",\"bits_per_value\":%.4f,\"bytes\":%.0f,\"kl_mean\":%.6g,\"kl_max\":%.6g,\"top1\":%.4f",
           r->name, 8 * r->bytes / values, r->bytes, r->n_pos ? r->kl_sum / r->n_pos : 0, r->kl_max,
           r->n_pos ? (double)r->top1 / r->n_pos : 0);
    if (r->answers) printf(",\"recall\":%.4f", (double)r->correct / r->answers);
    if (r->enc_s > 0)
        printf(",\"encode_mb_s\":%.1f,\"decode_mb_s\":%.1f,\"load_ms\":%.3f", mb / r->enc_s, mb / r->dec_s, r->load_s * 1e3);
    printf("}");
}

static void cb_json(const cb_state *st) {
    double values = (double)st->prompt_tokens * st->n_values_per_token;
    printf("{\"prompt_tokens\":%ld,\"cont_tokens\":%d,\"threads\":%d,\"isa\":\"%s\",\"prefill_ms\":%.3f,"
           "\"hash_ms\":%.3f,\"f16_bytes\":%.0f,\"zstd19_bits_per_value\":%.4f,\"store_tokens\":%ld,\"store_load_ms\":%.3f,"
           "\"methods\":[", st->prompt_tokens, st->a->n_cont, st->a->threads, kvp_isa(), st->prefill_s * 1e3,
           st->hash_s * 1e3, 2 * values, st->zstd_bits, st->store_tokens, st->store_load_s * 1e3);
    for (int i = 0; i < CB_ROWS; i++) {
        if (i) printf(",");
        cb_json_row(st, &st->rows[i], values);
    }
    printf("]}\n");
}

/* ---- the two modes ---- */

/* Window w of the text: the first token (BOS), then the text from 1 + w * (length - 1). */
static void cb_window(const int *ids, int w, int len, int *out) {
    out[0] = ids[0];
    memcpy(out + 1, ids + 1 + (size_t)w * (size_t)(len - 1), sizeof(int) * (size_t)(len - 1));
}

static int cb_text(cb_state *st, const int *ids, int n) {
    int n_cont = st->a->n_cont, W = st->a->windows;
    int n_prompt = st->a->n_prompt ? st->a->n_prompt : (n - 1) / W + 1 - n_cont;
    if (n_prompt > 2048 && !st->a->n_prompt) n_prompt = 2048;
    int len = n_prompt + n_cont;
    if (n_prompt < 1 || 1 + (long)W * (len - 1) > n)
        return cli_usage_error("codec-bench", "the text has %d tokens: not enough for %d window(s) of %d prompt + %d "
                               "continuation tokens", n, W, n_prompt, n_cont);
    int rc = cb_setup(st, len, n_prompt), *win = malloc(sizeof(int) * (size_t)len);
    if (!rc && !win) rc = cli_fail("codec-bench", "allocating", KVP_ENOMEM);
    if (!rc) cb_hash(st, ids);
    for (int w = 0; !rc && w < W; w++) {
        cb_window(ids, w, len, win);
        rc = cb_eval_all(st, win, n_prompt, win + n_prompt, n_cont);
        if (!rc && w == 0) st->zstd_bits = 8 * cb_zstd(st, n_prompt) / ((double)n_prompt * st->n_values_per_token);
        if (!rc && w == 0) rc = cb_store(st, win, n_prompt);
    }
    free(win);
    return rc;
}

static int cb_recall(cb_state *st) {
    int seq[512], rc = cb_setup(st, 512, 512);
    cb_args *a = (cb_args *)st->a;
    for (int i = 0; !rc && i < a->recall; i++) {
        int first = cb_recall_seq(512, 64, 64, 512000 + (uint64_t)i, seq);
        a->n_cont = 512 - first;
        if (i == 0) cb_hash(st, seq);
        rc = cb_eval_all(st, seq, first, seq + first, 512 - first);
    }
    return rc;
}

int cmd_codec_bench(int argc, char **argv) {
    cb_args a;
    int rc = cb_parse(argc, argv, &a);
    if (rc) return rc == 1 ? 0 : rc;
    if (a.recall) a.n_cont = 512; /* room for the longest query part */
    cb_state st;
    memset(&st, 0, sizeof st);
    st.a = &a;
    if ((rc = cli_open_model("codec-bench", a.model, a.tok, &st.m))) return rc;
    char *text = NULL;
    int *ids = NULL, n = 0;
    size_t len = 0;
    if (a.file && !(rc = cli_read_text("codec-bench", a.file, &text, &len)))
        rc = cli_tokenize("codec-bench", st.m, text, len, 1, &ids, &n);
    if (!rc) rc = a.recall ? cb_recall(&st) : cb_text(&st, ids, n);
    if (!rc && a.json) cb_json(&st);
    else if (!rc) cb_print(&st, a.recall > 0);
    cb_teardown(&st);
    free(ids);
    free(text);
    kvp_model_free(st.m);
    return rc;
}
