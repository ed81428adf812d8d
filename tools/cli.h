/*
 * cli.h: what the kvpack subcommands share: option tables, model opening, text input.
 * The CLI is the only part of kvpack that prints or exits.
 */
#ifndef KVP_CLI_H
#define KVP_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "kvpack.h"

enum { CLI_STR, CLI_INT, CLI_FLOAT, CLI_FLAG, CLI_U64, CLI_SIZE };

typedef struct cli_opt {
    const char *shrt;  /* "-m" or NULL */
    const char *lng;   /* "--model" */
    int kind;
    void *dst;         /* const char **, int *, float *, int * (flag), uint64_t * */
    const char *help;
} cli_opt;

/* Parses argv[1..] against opts (terminated by a zeroed entry). Returns 0 on success, 1 when
 * --help was printed, 2 after printing an error and the usage to stderr. */
int cli_parse(const char *cmd, const char *synopsis, const cli_opt *opts, int argc, char **argv);
void cli_usage(FILE *f, const char *cmd, const char *synopsis, const cli_opt *opts);

/* Prints "kvpack CMD: what: message" for a failed library call and returns 1. */
int cli_fail(const char *cmd, const char *what, int rc);
/* Prints "kvpack CMD: message" and returns 2 (a usage error). */
int cli_usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Opens a model (and tokenizer for llama2.c checkpoints); prints the error itself. */
int cli_open_model(const char *cmd, const char *path, const char *tok, kvp_model **out);
/* Reads a text file or "-" (stdin) into a NUL-terminated malloc'ed buffer. */
int cli_read_text(const char *cmd, const char *path, char **out, size_t *len);
/* Tokenizes text (with BOS when add_bos); prints errors itself. *ids is malloc'ed. */
int cli_tokenize(const char *cmd, const kvp_model *m, const char *text, size_t len, int add_bos,
                 int **ids, int *n);
/* The same with kvp_tokenize_ex flags (KVP_TOKENIZE_*). */
int cli_tokenize_ex(const char *cmd, const kvp_model *m, const char *text, size_t len, int flags,
                    int **ids, int *n);
/* Monotonic clock in seconds. */
double cli_now(void);
/* Peak resident set size of this process in bytes. */
uint64_t cli_peak_rss(void);
/* Formats bytes as "12.3 MiB" into buf. */
const char *cli_bytes(uint64_t b, char *buf, size_t cap);

int cmd_run(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_save(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_codec_bench(int argc, char **argv);
int cmd_serve(int argc, char **argv);

/* `run --load FILE` / `run --store URI` (cmd_save.c): fills ctx with the prompt ids[0..n) and
 * puts the last token's logits in `logits`. With load, the saved context is loaded first and
 * ids continue it. With store, the longest stored prefix of ids is loaded, only the rest is
 * prefilled, and the new full chunks are stored; a store that fails gives a warning and the
 * prompt is recomputed. Prints one line of figures on stderr; returns 0 or a library error
 * (its message in kvp_errmsg). */
int cli_prefill(const char *cmd, kvp_ctx *ctx, const char *load, const char *store, const int *ids, int n,
                float *logits);

#endif
