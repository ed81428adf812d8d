/*
 * kvpack.c: the command-line entry point: dispatches to a subcommand.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
} cli_command;

static const cli_command cli_commands[] = {
    {"demo", cmd_demo, "recall accuracy of every cache and policy on a model kvpack builds itself (no file needed)"},
    {"run", cmd_run, "generate text from a prompt"},
    {"info", cmd_info, "show a model's architecture, shapes, tensor types and sizes"},
    {"bench", cmd_bench, "measure prefill and decode speed and KV-cache bytes"},
    {"tokenize", cmd_tokenize, "print the token ids (or pieces) of a text"},
    {"chat", cmd_chat, "chat with a model in its chat format (Llama 3, ChatML/Qwen, Llama 2, Zephyr)"},
    {"synth", cmd_synth, "write a random-weight llama GGUF of any shape and weight type"},
    {"eval", cmd_eval, "compare compressed KV caches with the full cache: KL, top-1, recall, bits"},
    {"save", cmd_save, "prefill a prompt and save its context (.kvz) to a file or a store"},
    {"inspect", cmd_inspect, "print a saved context's header, chunks, levels and sizes"},
    {"codec-bench", cmd_codec_bench, "measure the context codec: size, quality after reload, speed"},
    {"serve", cmd_serve, "an OpenAI-compatible HTTP server that reuses cached prefixes (docs/serve.md)"},
};

static void cli_main_usage(FILE *f) {
    fprintf(f, "kvpack %d.%d.%d: Llama-family models on the CPU with a small, fast, portable KV cache\n\n"
               "usage: kvpack COMMAND [options]   (kvpack COMMAND --help for its options)\n\ncommands:\n",
            KVP_VERSION_MAJOR, KVP_VERSION_MINOR, KVP_VERSION_PATCH);
    for (size_t i = 0; i < sizeof cli_commands / sizeof cli_commands[0]; i++)
        fprintf(f, "  %-10s %s\n", cli_commands[i].name, cli_commands[i].help);
    fprintf(f, "\nkernels: %s\n", kvp_isa());
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        cli_main_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("kvpack %d.%d.%d\n", KVP_VERSION_MAJOR, KVP_VERSION_MINOR, KVP_VERSION_PATCH);
        return 0;
    }
    for (size_t i = 0; i < sizeof cli_commands / sizeof cli_commands[0]; i++)
        if (!strcmp(argv[1], cli_commands[i].name)) return cli_commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "kvpack: unknown command '%s' (see 'kvpack --help')\n", argv[1]);
    return 2;
}
