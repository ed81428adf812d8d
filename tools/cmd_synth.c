/*
 * cmd_synth.c: `kvpack synth`: write a random-weight llama GGUF.
 */
#include <string.h>
#include <strings.h>

#include "cli.h"

static int synth_type(const char *s) {
    static const int types[] = {KVP_TYPE_F32, KVP_TYPE_F16, KVP_TYPE_BF16, KVP_TYPE_Q8_0, KVP_TYPE_Q4_0};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcasecmp(s, kvp_type_name(types[i]))) return types[i];
    return -1;
}

/* Writes the recall model: a GGUF at out, or with l2c_tok a llama2.c checkpoint at out and
 * its tokenizer at l2c_tok. */
static int synth_recall(const char *out, const char *l2c_tok) {
    int rc = l2c_tok ? kvp_synth_recall_write_llama2c(out, l2c_tok) : kvp_synth_recall_write(out);
    if (rc < 0) return cli_fail("synth", out, rc);
    fprintf(stderr, "kvpack synth: wrote %s%s%s (the key-value recall model: dim 128, 2 layers, 2/1 heads, vocab 324, "
            "context 1024, F32)\n", out, l2c_tok ? " and " : "", l2c_tok ? l2c_tok : "");
    return 0;
}

int cmd_synth(int argc, char **argv) {
    kvp_synth_params p = {768, 2048, 12, 12, 4, 512, 4096, KVP_TYPE_F16, 10000.0f, 1};
    const char *out = NULL, *type = "f16";
    const char *l2c_tok = NULL;
    int recall = 0;
    const cli_opt opts[] = {
        {"-o", "--output", CLI_STR, &out, "output GGUF path"},
        {NULL, "--type", CLI_STR, &type, "weight type: f32, f16, bf16, q8_0, q4_0 (default f16)"},
        {NULL, "--dim", CLI_INT, &p.dim, "embedding width (default 768)"},
        {NULL, "--ffn", CLI_INT, &p.hidden_dim, "FFN width (default 2048)"},
        {NULL, "--layers", CLI_INT, &p.n_layers, "layers (default 12)"},
        {NULL, "--heads", CLI_INT, &p.n_heads, "query heads (default 12)"},
        {NULL, "--kv-heads", CLI_INT, &p.n_kv_heads, "key/value heads (default 4)"},
        {NULL, "--vocab", CLI_INT, &p.vocab_size, "vocabulary size, >= 260 (default 512)"},
        {NULL, "--ctx", CLI_INT, &p.n_ctx, "context length (default 4096)"},
        {NULL, "--rope-theta", CLI_FLOAT, &p.rope_theta, "rotary base (default 10000)"},
        {"-s", "--seed", CLI_U64, &p.seed, "random seed (default 1)"},
        {NULL, "--recall", CLI_FLAG, &recall, "write the key-value recall model built by construction instead "
                                              "(kvrecall-format.txt; shape options do not apply)"},
        {NULL, "--llama2c", CLI_STR, &l2c_tok, "with --recall: write a llama2.c checkpoint to -o and its tokenizer "
                                               "to this path instead of a GGUF"},
        {0},
    };
    int rc = cli_parse("synth", "-o OUT.gguf [shape options]   (defaults: the 76M benchmark model)", opts, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (!out) return cli_usage_error("synth", "no output path given (-o OUT.gguf)");
    if (l2c_tok && !recall) return cli_usage_error("synth", "--llama2c needs --recall");
    if (recall) return synth_recall(out, l2c_tok);
    if ((p.type = synth_type(type)) < 0) return cli_usage_error("synth", "unknown weight type '%s'", type);
    rc = kvp_synth_write(out, &p);
    if (rc < 0) return cli_fail("synth", out, rc);
    fprintf(stderr, "kvpack synth: wrote %s (dim %d, ffn %d, %d layers, %d/%d heads, vocab %d, context %d, %s)\n", out,
            p.dim, p.hidden_dim, p.n_layers, p.n_heads, p.n_kv_heads, p.vocab_size, p.n_ctx, kvp_type_name(p.type));
    return 0;
}
