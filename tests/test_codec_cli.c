/*
 * test_codec_cli.c: the context codec through the command line as a user runs it: save,
 * inspect, run --load, run --store (reuse on the second run, a dead Redis only warns),
 * codec-bench, and clear errors with non-zero exit codes for bad input.
 */
#include <sys/wait.h>
#include <unistd.h>

#include "kvpack.h"
#include "test.h"

static char kvt_cout[1 << 17];

/* Runs `kvpack ARGS` with stderr merged into stdout; returns the exit code. */
static int kvt_run(const char *args) {
    const char *cli = getenv("KVP_CLI");
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", cli && *cli ? cli : "build/kvpack", args);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(kvt_cout, 1, sizeof kvt_cout - 1, p);
    kvt_cout[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* A prompt file of about 2 KB of story text (more than 256 tokens for the stories model). */
static const char *kvt_prompt_file(void) {
    static char path[64];
    snprintf(path, sizeof path, "/tmp/kvt-cli-prompt-%d.txt", (int)getpid());
    FILE *f = fopen(path, "w");
    for (int i = 0; f && i < 12; i++)
        fprintf(f, "Once upon a time, there was a little girl named Lily. She loved to play outside in the park "
                   "with her friend Tom. ");
    if (f) fclose(f);
    return path;
}

TEST(codec_cli_save_inspect_load) {
    char args[2048], kvz[64];
    snprintf(kvz, sizeof kvz, "/tmp/kvt-cli-%d.kvz", (int)getpid());
    const char *model = kvt_model("stories260K.gguf"), *prompt = kvt_prompt_file();
    snprintf(args, sizeof args, "save -m %s -f %s -o %s --level 4 --chunk 128", model, prompt, kvz);
    CHECKF(kvt_run(args) == 0, "%s", kvt_cout);
    CHECK(strstr(kvt_cout, "bits/value") != NULL);
    snprintf(args, sizeof args, "inspect %s -m %s", kvz, model);
    CHECKF(kvt_run(args) == 0, "%s", kvt_cout);
    CHECK(strstr(kvt_cout, "format version 3") && strstr(kvt_cout, "lossless") && strstr(kvt_cout, "matches"));
    CHECK(strstr(kvt_cout, " ok") && !strstr(kvt_cout, "fail"));
    snprintf(args, sizeof args, "run -m %s --load %s -p ' One day,' -n 12 --temp 0", model, kvz);
    CHECKF(kvt_run(args) == 0, "%s", kvt_cout);
    CHECKF(strstr(kvt_cout, "[loaded ") && strstr(kvt_cout, "without prefill"), "%s", kvt_cout);
    /* another model: a clear error */
    snprintf(args, sizeof args, "run -m %s --load %s -p ' One day,' -n 4", kvt_model("sotu-1M.gguf"), kvz);
    CHECKF(kvt_run(args) == 1 && strstr(kvt_cout, "saved from a model"), "%s", kvt_cout);
    /* a damaged file: inspect and run both fail with the reason */
    FILE *f = fopen(kvz, "r+b");
    CHECK(f && fseek(f, 2000, SEEK_SET) == 0 && fputc(0x55, f) != EOF);
    fclose(f);
    snprintf(args, sizeof args, "inspect %s", kvz);
    CHECKF(kvt_run(args) == 1 && strstr(kvt_cout, "checksum"), "%s", kvt_cout);
    snprintf(args, sizeof args, "run -m %s --load %s -p ' One day,' -n 4", model, kvz);
    CHECKF(kvt_run(args) == 1 && strstr(kvt_cout, "checksum"), "%s", kvt_cout);
    unlink(kvz);
    unlink(prompt);
}

TEST(codec_cli_run_store_reuses) {
    char args[2048], dir[64];
    snprintf(dir, sizeof dir, "/tmp/kvt-cli-store-%d", (int)getpid());
    const char *model = kvt_model("stories260K.gguf"), *prompt = kvt_prompt_file();
    snprintf(args, sizeof args, "run -m %s -f %s --store %s -n 8 --temp 0 -c 512", model, prompt, dir);
    CHECKF(kvt_run(args) == 0, "%s", kvt_cout);
    CHECKF(strstr(kvt_cout, "reused 0 of") && strstr(kvt_cout, "stored 1 new"), "%s", kvt_cout);
    CHECKF(kvt_run(args) == 0, "%s", kvt_cout);
    CHECKF(strstr(kvt_cout, "reused 256 of") && strstr(kvt_cout, "stored 0 new"), "%s", kvt_cout);
    snprintf(args, sizeof args, "run -m %s -f %s --store redis://127.0.0.1:1/0 -n 4 --temp 0 -c 512", model, prompt);
    CHECKF(kvt_run(args) == 0, "%s", kvt_cout); /* a dead store costs a warning, not the answer */
    CHECKF(strstr(kvt_cout, "warning") && strstr(kvt_cout, "recomputing"), "%s", kvt_cout);
    snprintf(args, sizeof args, "rm -rf %s", dir);
    CHECK(system(args) == 0);
    unlink(prompt);
}

TEST(codec_cli_bad_input) {
    char args[2048];
    const char *model = kvt_model("stories260K.gguf");
    snprintf(args, sizeof args, "save -m %s -p 'hello'", model);
    CHECK(kvt_run(args) == 2 && strstr(kvt_cout, "-o OUT.kvz"));
    snprintf(args, sizeof args, "save -m %s -p 'hello' -o /tmp/x.kvz --level 7", model);
    CHECK(kvt_run(args) == 2);
    snprintf(args, sizeof args, "save -m %s -p 'hello' -o /proc/no/such/x.kvz", model);
    CHECK(kvt_run(args) == 1 && strstr(kvt_cout, "cannot"));
    CHECK(kvt_run("inspect /no/such/file.kvz") == 1);
    CHECK(kvt_run("inspect") == 2);
    snprintf(args, sizeof args, "inspect %s", model); /* not a context */
    CHECK(kvt_run(args) == 1 && strstr(kvt_cout, "KVPZ"));
    snprintf(args, sizeof args, "run -m %s -p x --load a.kvz --store d", model);
    CHECK(kvt_run(args) == 2);
    CHECK(kvt_run("codec-bench -m x") == 2);
}

TEST(codec_cli_codec_bench) {
    char args[2048];
    const char *prompt = kvt_prompt_file();
    snprintf(args, sizeof args, "codec-bench -m %s -f %s -n 128 --cont 16 --chunk 64 --json", kvt_model("stories260K.gguf"), prompt);
    CHECKF(kvt_run(args) == 0, "%s", kvt_cout);
    CHECK(strstr(kvt_cout, "\"methods\"") && strstr(kvt_cout, "\"q4_0\"") && strstr(kvt_cout, "\"lossless\""));
    CHECK(strstr(kvt_cout, "\"store_tokens\":128"));
    snprintf(args, sizeof args, "codec-bench -m %s --recall 1", kvt_model("kvrecall-hand.gguf"));
    CHECKF(kvt_run(args) == 0, "%s", kvt_cout);
    CHECK(strstr(kvt_cout, "recall") && strstr(kvt_cout, "100.0%"));
    unlink(prompt);
}
