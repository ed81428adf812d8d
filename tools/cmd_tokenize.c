/*
 * cmd_tokenize.c: `kvpack tokenize`: the token ids (or pieces) of a text. Special-token
 * text ("<|im_start|>") becomes those tokens unless --no-special, as Hugging Face encodes.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *tok = NULL, *prompt = NULL, *file = NULL;
    int no_bos = 0, pieces = 0, ids_only = 0, no_special = 0;
    const cli_opt opts[] = {
        {"-m", "--model", CLI_STR, &model, "model file"},
        {"-z", "--tokenizer", CLI_STR, &tok, "tokenizer .bin for a llama2.c checkpoint"},
        {"-p", "--prompt", CLI_STR, &prompt, "text"},
        {"-f", "--file", CLI_STR, &file, "read the text from a file"},
        {NULL, "--no-bos", CLI_FLAG, &no_bos, "do not prepend BOS"},
        {NULL, "--pieces", CLI_FLAG, &pieces, "print each token's text next to its id"},
        {NULL, "--ids", CLI_FLAG, &ids_only, "print the ids only, on one line (the default)"},
        {NULL, "--no-special", CLI_FLAG, &no_special, "treat special-token text as plain text"},
        {0},
    };
    int rc = cli_parse("tokenize", "-m MODEL (-p TEXT | -f FILE) [--ids | --pieces] [--no-bos] [--no-special]", opts,
                       argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (!prompt && !file) return cli_usage_error("tokenize", "give a text with -p or -f");
    if (ids_only && pieces) return cli_usage_error("tokenize", "give --ids or --pieces, not both");
    kvp_model *m = NULL;
    if ((rc = cli_open_model("tokenize", model, tok, &m))) return rc;
    char *text = NULL;
    size_t len = 0;
    if (file ? (rc = cli_read_text("tokenize", file, &text, &len)) : !(text = strdup(prompt))) goto out;
    if (!file) len = strlen(text);
    int *ids = NULL, n = 0;
    const int flags = (no_bos ? 0 : KVP_TOKENIZE_ADD_SPECIAL) | (no_special ? 0 : KVP_TOKENIZE_PARSE_SPECIAL);
    if ((rc = cli_tokenize_ex("tokenize", m, text, len, flags, &ids, &n))) goto out;
    char piece[256];
    for (int i = 0; i < n; i++) {
        if (!pieces) { printf(i ? " %d" : "%d", ids[i]); continue; }
        int k = kvp_detokenize(m, i ? ids[i - 1] : -1, ids[i], piece, sizeof piece);
        printf("%6d '%s'\n", ids[i], k >= 0 ? piece : "?");
    }
    if (!pieces) printf("\n");
    free(ids);
out:
    free(text);
    kvp_model_free(m);
    return rc;
}
