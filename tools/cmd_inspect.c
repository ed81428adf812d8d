/*
 * cmd_inspect.c: `kvpack inspect FILE.kvz`: the header (version, model fingerprint, tokens),
 * then one line per chunk (positions, level, bytes, bits per value, CRC check), and totals.
 * With -m MODEL it also tells whether the context fits that model.
 */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *inspect_level(int level) {
    static const char *names[] = {"text", "low", "medium", "high", "lossless"};
    return level >= 0 && level <= 4 ? names[level] : "?";
}

static void inspect_header(const char *path, const kvp_kvz_info *in, const int *tokens) {
    char hb[32], tb[32];
    printf("%s: kvpack context, format version %d, %s (header %s)\n", path, in->version,
           cli_bytes(in->total_size, tb, sizeof tb), cli_bytes(in->header_size, hb, sizeof hb));
    printf("model:   %s, %d layers, %d/%d heads (head dim %d), dim %d, FFN %d, vocab %d\n", in->arch, in->n_layers,
           in->n_heads, in->n_kv_heads, in->head_dim, in->dim, in->hidden_dim, in->vocab_size);
    printf("weights: %llu bytes, XXH64 %016llx\n", (unsigned long long)in->weight_bytes,
           (unsigned long long)in->weights_hash);
    printf("tokens:  %d (cache %s), chunks: %d of %d tokens; first ids:", in->n_tokens,
           in->kv_type == KVP_TYPE_F16 ? "F16" : "F32", in->n_chunks, in->chunk_tokens);
    for (int i = 0; i < in->n_tokens && i < 16; i++) printf(" %d", tokens[i]);
    printf("%s\n", in->n_tokens > 16 ? " ..." : "");
}

/* One line per chunk; returns the number of chunks whose bytes fail their CRC. */
static int inspect_chunks(kvp_kvz *z, const kvp_kvz_info *in, const uint8_t *data, size_t size) {
    int bad = 0;
    uint64_t per_token = (uint64_t)in->n_layers * 2 * (uint64_t)in->n_kv_heads * (uint64_t)in->head_dim;
    uint64_t levels[5] = {0};
    printf("%6s %8s %8s %-9s %10s %10s %s\n", "chunk", "first", "tokens", "level", "bytes", "bits/val", "check");
    for (int i = 0; i < in->n_chunks; i++) {
        kvp_kvz_chunk_info ci;
        kvp_kvz_chunk(z, i, &ci);
        float *kv = NULL;
        int ok = ci.offset + ci.size <= size;
        if (ok && ci.level != 0 && (kv = malloc(sizeof(float) * (size_t)per_token * (size_t)ci.n_tokens)))
            ok = kvp_kvz_decode_chunk(z, i, data + ci.offset, ci.size, kv) == 0;
        free(kv);
        bad += !ok;
        levels[ci.level] += ci.n_tokens;
        printf("%6d %8d %8d %-9s %10u %10.3f %s\n", i, ci.first_pos, ci.n_tokens, inspect_level(ci.level), ci.size,
               8.0 * ci.size / (double)(per_token * (uint64_t)ci.n_tokens), ok ? "ok" : kvp_errmsg());
    }
    printf("levels:  text %llu, low %llu, medium %llu, high %llu, lossless %llu tokens\n", (unsigned long long)levels[0],
           (unsigned long long)levels[1], (unsigned long long)levels[2], (unsigned long long)levels[3],
           (unsigned long long)levels[4]);
    printf("total:   %.3f bits per K/V value over the whole file (F16: 16)\n",
           8.0 * (double)in->total_size / (double)(per_token * (uint64_t)in->n_tokens));
    return bad;
}

static int inspect_model(const char *path, kvp_kvz *z, const char *model) {
    kvp_model *m = NULL;
    int rc = cli_open_model("inspect", model, NULL, &m);
    if (rc) return rc;
    int e = kvp_kvz_check_model(z, m);
    if (e == 0) printf("model %s: matches\n", model);
    else printf("model %s: does not match: %s\n", model, kvp_errmsg());
    kvp_model_free(m);
    return e == 0 ? 0 : 1;
}

/* Takes the first argument that is neither an option nor an option's value out of argv. */
static const char *inspect_take_path(int *argc, char **argv) {
    for (int i = 1; i < *argc; i++) {
        if (!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) {
            i++;
            continue;
        }
        if (argv[i][0] == '-') continue;
        const char *path = argv[i];
        memmove(argv + i, argv + i + 1, sizeof *argv * (size_t)(*argc - i - 1));
        (*argc)--;
        return path;
    }
    return NULL;
}

int cmd_inspect(int argc, char **argv) {
    const char *model = NULL, *path = inspect_take_path(&argc, argv);
    const cli_opt opts[] = {{"-m", "--model", CLI_STR, &model, "also check that the context fits this model"}, {0}};
    int rc = cli_parse("inspect", "FILE.kvz [-m MODEL]", opts, argc, argv);
    if (rc) return rc == 1 ? 0 : rc;
    if (!path) return cli_usage_error("inspect", "give the .kvz file to inspect");
    void *data = NULL;
    size_t size = 0;
    kvp_kvz *z = NULL;
    char *text = NULL;
    if ((rc = cli_read_text("inspect", path, &text, &size))) return rc;
    data = text;
    int e = kvp_kvz_open(data, size, &z);
    if (e < 0) {
        free(text);
        return cli_fail("inspect", path, e);
    }
    const kvp_kvz_info *in = kvp_kvz_get_info(z);
    inspect_header(path, in, kvp_kvz_tokens(z));
    if (size != in->total_size) printf("warning: the file has %zu bytes, the header says %llu\n", size, (unsigned long long)in->total_size);
    int bad = inspect_chunks(z, in, data, size), short_file = size != in->total_size;
    if (!rc && model) rc = inspect_model(path, z, model);
    kvp_kvz_free(z);
    free(text);
    if (bad) fprintf(stderr, "kvpack inspect: %s: %d chunk(s) failed their check\n", path, bad);
    return bad || short_file ? 1 : rc;
}
