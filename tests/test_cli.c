/*
 * test_cli.c: the kvpack command-line tool as a user runs it (KVP_CLI names the binary;
 * `make test` sets it): real output on the shared models, and clear errors with non-zero
 * exit codes for bad input.
 */
#include <unistd.h>

#include "kvpack.h"
#include "test.h"

static char kvt_out[1 << 16];

TEST(cli_run_matches_llamacpp) {
    char args[1024];
    snprintf(args, sizeof args, "run -m %s -p 'Once upon a time' -n 32 --temp 0", kvt_model("stories260K.gguf"));
    CHECKF(kvt_cli(args, kvt_out, sizeof kvt_out) == 0, "%s", kvt_out);
    const char *want = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw";
    CHECKF(!strncmp(kvt_out, want, strlen(want)), "got: %s", kvt_out);
    CHECK(strstr(kvt_out, "prefill") && strstr(kvt_out, "decode") && strstr(kvt_out, "KV cache") && strstr(kvt_out, "peak RSS"));
}

TEST(cli_run_llama2c_checkpoint) {
    char args[1024];
    snprintf(args, sizeof args, "run -m %s -z %s -p 'Lily and Tom' -n 20 --temp 0 -t 2", kvt_model("stories260K.bin"),
             kvt_model("tok512.bin"));
    CHECKF(kvt_cli(args, kvt_out, sizeof kvt_out) == 0, "%s", kvt_out);
    CHECKF(!strncmp(kvt_out, "Lily and Tom were playing in the park. They liked to play with", 60), "got: %s", kvt_out);
}

TEST(cli_info) {
    char args[1024];
    snprintf(args, sizeof args, "info -m %s", kvt_model("sotu-1M-Q8_0.gguf"));
    CHECKF(kvt_cli(args, kvt_out, sizeof kvt_out) == 0, "%s", kvt_out);
    CHECK(strstr(kvt_out, "architecture:    llama"));
    CHECK(strstr(kvt_out, "heads:           4 query, 2 key/value (head dim 32)"));
    CHECK(strstr(kvt_out, "vocabulary:      1024 tokens"));
    CHECK(strstr(kvt_out, "context:         1024 tokens"));
    CHECK(strstr(kvt_out, "Q8_0 x"));
}

TEST(cli_tokenize) {
    char args[1024];
    snprintf(args, sizeof args, "tokenize -m %s -p 'Hello world'", kvt_model("sotu-1M.gguf"));
    CHECKF(kvt_cli(args, kvt_out, sizeof kvt_out) == 0, "%s", kvt_out);
    CHECKF(!strcmp(kvt_out, "1 531 878 949 478\n"), "got: %s", kvt_out);
}

TEST(cli_synth_and_bench) {
    char path[64], args[1024];
    snprintf(path, sizeof path, "/tmp/kvt_cli_synth_%d.gguf", (int)getpid());
    snprintf(args, sizeof args, "synth -o %s --dim 128 --ffn 256 --layers 2 --heads 4 --kv-heads 2 --vocab 300 --ctx 256 --type q8_0", path);
    CHECKF(kvt_cli(args, kvt_out, sizeof kvt_out) == 0, "%s", kvt_out);
    snprintf(args, sizeof args, "bench -m %s -p 64 -n 16 -r 1 -t 2 --json", path);
    CHECKF(kvt_cli(args, kvt_out, sizeof kvt_out) == 0, "%s", kvt_out);
    double pp = 0, tg = 0;
    const char *p = strstr(kvt_out, "\"pp_tps\":"), *t = strstr(kvt_out, "\"tg_tps\":");
    CHECK(p && t && sscanf(p, "\"pp_tps\":%lf", &pp) == 1 && sscanf(t, "\"tg_tps\":%lf", &tg) == 1);
    CHECK(pp > 0 && tg > 0);
    CHECK(strstr(kvt_out, "\"weight_type\":\"Q8_0\""));
    /* 64 prefill tokens in the F16 cache: 64 x 2 layers x 64 kv dims x 2 (K, V) x 2 bytes */
    CHECK(strstr(kvt_out, "\"kv_bytes\":") && strstr(kvt_out, "\"kv_bits_per_value\":16.0000"));
    unlink(path);
}

TEST(cli_bad_input) {
    CHECK(kvt_cli("run --bogus", kvt_out, sizeof kvt_out) == 2 && strstr(kvt_out, "unknown option '--bogus'"));
    CHECK(kvt_cli("run -m", kvt_out, sizeof kvt_out) == 2 && strstr(kvt_out, "needs a value"));
    CHECK(kvt_cli("run -p hi", kvt_out, sizeof kvt_out) == 2 && strstr(kvt_out, "no model given"));
    CHECK(kvt_cli("run -m /nonexistent.gguf -p hi", kvt_out, sizeof kvt_out) == 1 && strstr(kvt_out, "cannot load the model"));
    CHECK(kvt_cli("frobnicate", kvt_out, sizeof kvt_out) == 2 && strstr(kvt_out, "unknown command"));
    char args[1024];
    snprintf(args, sizeof args, "run -m %s -p hi -n notanumber", kvt_model("stories260K.gguf"));
    CHECK(kvt_cli(args, kvt_out, sizeof kvt_out) == 2 && strstr(kvt_out, "not a valid integer"));
    snprintf(args, sizeof args, "run -m %s -p hi --kv q9", kvt_model("stories260K.gguf"));
    CHECK(kvt_cli(args, kvt_out, sizeof kvt_out) == 1 && strstr(kvt_out, "unknown KV cache spec"));
    snprintf(args, sizeof args, "run -m %s -p hi", kvt_model("stories260K.bin"));
    CHECK(kvt_cli(args, kvt_out, sizeof kvt_out) == 1 && strstr(kvt_out, "tokenizer"));
    /* a truncated GGUF */
    char path[64];
    snprintf(path, sizeof path, "/tmp/kvt_cli_trunc_%d.gguf", (int)getpid());
    snprintf(args, sizeof args, "head -c 5000 %s > %s", kvt_model("sotu-1M.gguf"), path);
    CHECK(system(args) == 0);
    snprintf(args, sizeof args, "run -m %s -p hi", path);
    CHECKF(kvt_cli(args, kvt_out, sizeof kvt_out) == 1 && strstr(kvt_out, "cannot load the model"), "%s", kvt_out);
    unlink(path);
    CHECK(kvt_cli("--help", kvt_out, sizeof kvt_out) == 0 && strstr(kvt_out, "commands:"));
    CHECK(kvt_cli("run --help", kvt_out, sizeof kvt_out) == 0 && strstr(kvt_out, "--temp"));
}

/* `kvpack demo` builds its own model: no file needed; the full cache and 8-bit KIVI answer
 * every query, StreamingLLM at 25% loses most (its pairs are evicted), and the plot is SVG. */
TEST(cli_demo) {
    char args[256], path[64];
    snprintf(path, sizeof path, "/tmp/kvt_demo_%d.svg", (int)getpid());
    snprintf(args, sizeof args, "demo -n 2 -q --plot %s", path);
    CHECKF(kvt_cli(args, kvt_out, sizeof kvt_out) == 0, "%s", kvt_out);
    CHECKF(strstr(kvt_out, "full cache (f16)          100.0%  100.0%  100.0%"), "%s", kvt_out);
    CHECKF(strstr(kvt_out, "KIVI 8-bit                100.0%  100.0%  100.0%"), "%s", kvt_out);
    const char *s = strstr(kvt_out, "StreamingLLM 25%");
    double a256 = 100;
    CHECK(s && sscanf(s + 16, " %lf", &a256) == 1 && a256 < 50);
    FILE *f = fopen(path, "r");
    CHECK(f);
    char head[64] = {0};
    CHECK(fread(head, 1, sizeof head - 1, f) > 0 && !strncmp(head, "<svg", 4));
    fclose(f);
    unlink(path);
    CHECK(kvt_cli("demo -n 0", kvt_out, sizeof kvt_out) == 2);
}
