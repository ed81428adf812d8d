/*
 * cmd_chat.c: `kvpack chat`: a conversation in the model's chat format (or --template).
 *
 * With -p the one message is answered and the command ends; otherwise each line read from
 * standard input is a user message (an empty line is skipped; end of input or "/exit"
 * ends). Each turn formats the whole conversation (kvp_chat_format), tokenizes it with BOS
 * as the vocabulary asks and special tokens parsed, keeps the KV cache of the tokens it
 * shares with what the context holds and feeds only the rest, then samples until an
 * end-of-generation token (<|eot_id|>, <|im_end|>, EOS) or -n tokens.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

typedef struct {
    const char *model, *tmpl, *system, *prompt, *kv;
    int n_predict, threads, n_ctx, top_k, show_prompt;
    float temp, top_p;
    uint64_t seed;
} chat_args;

/* The conversation so far (owned strings) and the tokens the context holds. */
typedef struct {
    kvp_chat_msg *msgs;
    int n_msgs;
    int *hist, n_hist;
} chat_state;

static int chat_parse(int argc, char **argv, chat_args *a) {
    *a = (chat_args){NULL, NULL, NULL, NULL, "f16", 512, 1, 4096, 40, 0, 0.7f, 0.95f, 42};
    const cli_opt opts[] = {
        {"-m", "--model", CLI_STR, &a->model, "model file (GGUF)"},
        {NULL, "--template", CLI_STR, &a->tmpl, "chat format: llama3, chatml, llama2, zephyr (default: the model's)"},
        {NULL, "--system", CLI_STR, &a->system, "system message"},
        {"-p", "--prompt", CLI_STR, &a->prompt, "one user message: answer it and exit (default: read lines from stdin)"},
        {"-n", "--n-predict", CLI_INT, &a->n_predict, "most tokens per answer (default 512)"},
        {"-t", "--threads", CLI_INT, &a->threads, "threads (default 1)"},
        {"-c", "--ctx-size", CLI_INT, &a->n_ctx, "context size (default 4096, at most the model's)"},
        {"-s", "--seed", CLI_U64, &a->seed, "sampling seed (default 42)"},
        {NULL, "--temp", CLI_FLOAT, &a->temp, "temperature; 0 = greedy (default 0.7)"},
        {NULL, "--top-k", CLI_INT, &a->top_k, "top-k sampling; 0 = off (default 40)"},
        {NULL, "--top-p", CLI_FLOAT, &a->top_p, "top-p sampling; 1 = off (default 0.95)"},
        {NULL, "--kv", CLI_STR, &a->kv, "KV cache spec (default f16)"},
        {NULL, "--show-prompt", CLI_FLAG, &a->show_prompt, "print each formatted prompt to stderr"},
        {0},
    };
    int rc = cli_parse("chat", "-m MODEL [--template NAME] [--system TEXT] [-p MESSAGE] [options]", opts, argc, argv);
    if (rc) return rc;
    if (a->n_predict < 1 || a->threads < 1 || a->threads > 256 || a->n_ctx < 16)
        return cli_usage_error("chat", "-n must be >= 1, -t 1..256, -c >= 16");
    return 0;
}

static void chat_free(chat_state *s) {
    for (int i = 0; i < s->n_msgs; i++) free((char *)s->msgs[i].content);
    free(s->msgs);
    free(s->hist);
}

/* Appends a message (the content is copied). */
static int chat_add(chat_state *s, const char *role, const char *content) {
    kvp_chat_msg *m = realloc(s->msgs, sizeof *m * (size_t)(s->n_msgs + 1));
    char *c = strdup(content);
    if (!m || !c) {
        free(c);
        if (m) s->msgs = m;
        return cli_fail("chat", "adding a message", KVP_ENOMEM);
    }
    s->msgs = m;
    s->msgs[s->n_msgs++] = (kvp_chat_msg){role, c};
    return 0;
}

/* The formatted conversation with the assistant's turn opened (malloc'ed). */
static char *chat_format(const kvp_model *m, const chat_args *a, const chat_state *s) {
    int need = kvp_chat_format(m, a->tmpl, s->msgs, s->n_msgs, 1, NULL, 0);
    if (need < 0) {
        cli_fail("chat", "chat template", need);
        return NULL;
    }
    char *text = malloc((size_t)need + 1);
    if (text) kvp_chat_format(m, a->tmpl, s->msgs, s->n_msgs, 1, text, (size_t)need + 1);
    if (a->show_prompt && text) fprintf(stderr, "[prompt]\n%s\n[/prompt]\n", text);
    return text;
}

/* Feeds the tokens of the formatted conversation that the context does not hold yet;
 * leaves the next-token logits in `logits`. */
static int chat_feed(kvp_ctx *ctx, chat_state *s, int *ids, int n, float *logits) {
    int keep = 0;
    while (keep < n - 1 && keep < s->n_hist && ids[keep] == s->hist[keep]) keep++;
    if (n >= kvp_ctx_n_ctx(ctx)) {
        fprintf(stderr, "kvpack chat: the conversation has %d tokens; the context holds %d (raise -c)\n", n,
                kvp_ctx_n_ctx(ctx));
        return 1;
    }
    int rc = kvp_ctx_truncate(ctx, keep);
    if (rc == 0) rc = kvp_ctx_decode(ctx, ids + keep, n - keep, logits, 0);
    if (rc < 0) return cli_fail("chat", "prefill", rc);
    free(s->hist);
    s->hist = ids;
    s->n_hist = n;
    return 0;
}

/* Appends token id to the history (the context holds it once decoded). */
static int chat_push(chat_state *s, int id) {
    int *h = realloc(s->hist, sizeof(int) * (size_t)(s->n_hist + 1));
    if (!h) return cli_fail("chat", "generating", KVP_ENOMEM);
    s->hist = h;
    s->hist[s->n_hist++] = id;
    return 0;
}

/* Appends the n bytes at p to the reply (*reply malloc'ed, *len bytes). */
static int chat_append(char **reply, size_t *len, const char *p, int n) {
    char *r = realloc(*reply, *len + (size_t)n + 1);
    if (!r) return cli_fail("chat", "generating", KVP_ENOMEM);
    memcpy(r + *len, p, (size_t)n);
    *len += (size_t)n;
    r[*len] = 0;
    *reply = r;
    return 0;
}

/* Samples the answer, printing it as it comes; the answer's text goes to *reply. */
static int chat_generate(kvp_ctx *ctx, const kvp_model *m, const chat_args *a, kvp_sampler *smp, chat_state *s,
                         float *logits, char **reply) {
    size_t len = 0;
    char piece[256];
    int rc = chat_append(reply, &len, "", 0);
    for (int i = 0; rc == 0 && i < a->n_predict && kvp_ctx_pos(ctx) < kvp_ctx_n_ctx(ctx); i++) {
        const int tok = kvp_sampler_sample(smp, logits);
        if (kvp_token_is_eog(m, tok)) break;
        const int k = kvp_detokenize(m, s->n_hist ? s->hist[s->n_hist - 1] : -1, tok, piece, sizeof piece);
        if (k > 0) {
            fwrite(piece, 1, (size_t)k, stdout);
            fflush(stdout);
            rc = chat_append(reply, &len, piece, k);
        }
        if (rc == 0) rc = chat_push(s, tok);
        if (rc == 0 && (rc = kvp_ctx_decode(ctx, &tok, 1, logits, 0)) < 0) rc = cli_fail("chat", "decoding", rc);
    }
    fputc('\n', stdout);
    fflush(stdout);
    return rc;
}

/* One exchange: the user's message in, the assistant's answer out. */
static int chat_turn(kvp_ctx *ctx, const kvp_model *m, const chat_args *a, kvp_sampler *smp, chat_state *s,
                     const char *message, float *logits) {
    int rc = chat_add(s, "user", message), n = 0, *ids = NULL;
    char *text = rc ? NULL : chat_format(m, a, s), *reply = NULL;
    if (!text) return 1;
    rc = cli_tokenize_ex("chat", m, text, strlen(text), KVP_TOKENIZE_ADD_SPECIAL | KVP_TOKENIZE_PARSE_SPECIAL, &ids, &n);
    free(text);
    if (rc == 0 && (rc = chat_feed(ctx, s, ids, n, logits)) != 0) free(ids);
    if (rc == 0) rc = chat_generate(ctx, m, a, smp, s, logits, &reply);
    if (rc == 0) rc = chat_add(s, "assistant", reply);
    free(reply);
    return rc;
}

/* Reads user messages from stdin until end of input or "/exit". */
static int chat_loop(kvp_ctx *ctx, const kvp_model *m, const chat_args *a, kvp_sampler *smp, chat_state *s,
                     float *logits) {
    char *line = NULL;
    size_t cap = 0;
    int rc = 0, tty = isatty(0);
    for (;;) {
        if (tty) fputs("> ", stderr);
        ssize_t got = getline(&line, &cap, stdin);
        if (got < 0) break;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
        if (!strcmp(line, "/exit")) break;
        if (got == 0) continue;
        if ((rc = chat_turn(ctx, m, a, smp, s, line, logits))) break;
    }
    free(line);
    return rc;
}

static int chat_run(kvp_model *m, const chat_args *a) {
    kvp_ctx_params cp = kvp_ctx_default_params();
    const int train = kvp_model_get_info(m)->n_ctx_train;
    cp.n_ctx = a->n_ctx < train ? a->n_ctx : train;
    cp.n_threads = a->threads;
    cp.kv = a->kv;
    kvp_sampler_params sp = {a->temp, a->top_k, a->top_p, a->seed};
    kvp_ctx *ctx = NULL;
    kvp_sampler *smp = NULL;
    chat_state s = {0};
    float *logits = malloc(sizeof(float) * (size_t)kvp_model_get_info(m)->vocab_size);
    int rc = logits ? 0 : cli_fail("chat", "allocating logits", KVP_ENOMEM);
    if (rc == 0 && (rc = kvp_ctx_new(m, &cp, &ctx)) < 0) rc = cli_fail("chat", "cannot create the context", rc);
    if (rc == 0 && (rc = kvp_sampler_new(&sp, kvp_model_get_info(m)->vocab_size, &smp)) < 0) rc = cli_fail("chat", "sampler", rc);
    if (rc == 0 && a->system) rc = chat_add(&s, "system", a->system);
    if (rc == 0) rc = a->prompt ? chat_turn(ctx, m, a, smp, &s, a->prompt, logits) : chat_loop(ctx, m, a, smp, &s, logits);
    chat_free(&s);
    kvp_sampler_free(smp);
    kvp_ctx_free(ctx);
    free(logits);
    return rc;
}

int cmd_chat(int argc, char **argv) {
    chat_args a;
    int rc = chat_parse(argc, argv, &a);
    if (rc) return rc == 1 ? 0 : rc;
    kvp_model *m = NULL;
    if ((rc = cli_open_model("chat", a.model, NULL, &m))) return rc;
    if (!a.tmpl && !kvp_chat_template_name(m)) {
        fprintf(stderr, "kvpack chat: the model has no chat template kvpack recognizes; give --template "
                        "(llama3, chatml, llama2, zephyr)\n");
        kvp_model_free(m);
        return 2;
    }
    rc = chat_run(m, &a);
    kvp_model_free(m);
    return rc;
}
