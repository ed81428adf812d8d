/*
 * cmd_info.c: `kvpack info`: a model's architecture, shapes, tensor types and sizes.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void info_types(const kvp_model *m, int list) {
    int n = kvp_model_n_tensors(m);
    uint64_t count[KVP_TYPE_COUNT] = {0}, bytes[KVP_TYPE_COUNT] = {0};
    for (int i = 0; i < n; i++) {
        const char *name;
        int len, type;
        int64_t ne[4];
        uint64_t nb;
        if (kvp_model_tensor(m, i, &name, &len, &type, ne, &nb) < 0 || type < 0 || type >= KVP_TYPE_COUNT) continue;
        count[type]++;
        bytes[type] += nb;
        if (list)
            printf("  %-32.*s %-5s [%lld, %lld, %lld, %lld] %llu bytes\n", len, name, kvp_type_name(type),
                   (long long)ne[0], (long long)ne[1], (long long)ne[2], (long long)ne[3], (unsigned long long)nb);
    }
    if (n == 0) return;
    printf("tensor types:   ");
    char b[32];
    for (int t = 0; t < KVP_TYPE_COUNT; t++)
        if (count[t]) printf(" %s x%llu (%s)", kvp_type_name(t), (unsigned long long)count[t], cli_bytes(bytes[t], b, sizeof b));
    printf("\n");
}

static void info_print(const kvp_model *m) {
    const kvp_model_info *in = kvp_model_get_info(m);
    char b1[32], b2[32];
    printf("model:           %s\n", in->name);
    printf("format:          %s\n", in->format);
    printf("architecture:    %s\n", in->arch);
    printf("parameters:      %.2f M\n", (double)in->n_params / 1e6);
    printf("dim:             %d\n", in->dim);
    printf("ffn dim:         %d\n", in->hidden_dim);
    printf("layers:          %d\n", in->n_layers);
    printf("heads:           %d query, %d key/value (head dim %d)\n", in->n_heads, in->n_kv_heads, in->head_dim);
    printf("vocabulary:      %d tokens (BOS %d, EOS %d)\n", in->vocab_size, kvp_token_bos(m), kvp_token_eos(m));
    printf("context:         %d tokens\n", in->n_ctx_train);
    printf("rope:            theta %g, %s\n", in->rope_theta, in->rope_style == KVP_ROPE_NEOX ? "neox (split halves)" : "normal (interleaved pairs)");
    printf("rms norm eps:    %g\n", in->norm_eps);
    printf("classifier:      %s\n", in->tied_output ? "tied to the token embedding" : "separate");
    printf("weights:         %s, mostly %s\n", cli_bytes(in->weight_bytes, b1, sizeof b1), kvp_type_name(in->weight_type));
    printf("file:            %s\n", cli_bytes(in->file_bytes, b2, sizeof b2));
    uint64_t per_tok = (uint64_t)in->n_layers * (uint64_t)in->n_kv_heads * (uint64_t)in->head_dim * 2 * 2;
    printf("F16 KV per token: %llu bytes (%s at the full context)\n", (unsigned long long)per_tok,
           cli_bytes(per_tok * (uint64_t)in->n_ctx_train, b1, sizeof b1));
}

int cmd_info(int argc, char **argv) {
    const char *model = NULL, *tok = NULL;
    int tensors = 0;
    const cli_opt opts[] = {
        {"-m", "--model", CLI_STR, &model, "model file (GGUF or llama2.c checkpoint)"},
        {"-z", "--tokenizer", CLI_STR, &tok, "tokenizer .bin for a llama2.c checkpoint"},
        {NULL, "--tensors", CLI_FLAG, &tensors, "list every tensor"},
        {0},
    };
    int rc = cli_parse("info", "-m MODEL [--tensors]", opts, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    kvp_model *m = NULL;
    if ((rc = cli_open_model("info", model, tok, &m))) return rc;
    info_print(m);
    info_types(m, tensors);
    kvp_model_free(m);
    return 0;
}
