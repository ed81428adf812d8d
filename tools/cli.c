/*
 * cli.c: option parsing and the helpers the subcommands share.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "cli.h"

static const char *cli_kind_arg(int kind) {
    switch (kind) {
    case CLI_STR: return " S";
    case CLI_INT: return " N";
    case CLI_FLOAT: return " X";
    case CLI_U64: return " N";
    case CLI_SIZE: return " SIZE";
    default: return "";
    }
}

void cli_usage(FILE *f, const char *cmd, const char *synopsis, const cli_opt *opts) {
    fprintf(f, "usage: kvpack %s %s\n\noptions:\n", cmd, synopsis);
    for (const cli_opt *o = opts; o->lng; o++) {
        char left[64];
        snprintf(left, sizeof left, "%s%s%s%s", o->shrt ? o->shrt : "", o->shrt ? ", " : "    ", o->lng,
                 cli_kind_arg(o->kind));
        fprintf(f, "  %-26s %s\n", left, o->help);
    }
    fprintf(f, "  %-26s %s\n", "-h, --help", "show this help");
}

int cli_usage_error(const char *cmd, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "kvpack %s: ", cmd);
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, " (see 'kvpack %s --help')\n", cmd);
    va_end(ap);
    return 2;
}

/* Parses a decimal number with an optional K/M/G (KiB...) suffix for CLI_SIZE. */
static int cli_number(const char *s, int kind, void *dst) {
    char *end = NULL;
    errno = 0;
    if (kind == CLI_FLOAT) {
        float v = strtof(s, &end);
        if (end == s || *end || errno) return -1;
        *(float *)dst = v;
        return 0;
    }
    if (*s == '-' && kind != CLI_INT) return -1;
    unsigned long long v = kind == CLI_INT ? (unsigned long long)strtoll(s, &end, 10) : strtoull(s, &end, 10);
    if (end == s || errno) return -1;
    if (kind == CLI_SIZE && *end) {
        unsigned long long mul = strchr("kK", *end) ? 1ull << 10 : strchr("mM", *end) ? 1ull << 20
                                 : strchr("gG", *end) ? 1ull << 30 : 0;
        if (!mul) return -1;
        v *= mul;
        end++;
        if (!strcmp(end, "iB") || !strcmp(end, "B")) end += strlen(end);
    }
    if (*end) return -1;
    if (kind == CLI_INT) {
        long long sv = (long long)v;
        if (sv < -2147483647LL || sv > 2147483647LL) return -1;
        *(int *)dst = (int)sv;
    } else {
        *(uint64_t *)dst = v;
    }
    return 0;
}

static const cli_opt *cli_find(const cli_opt *opts, const char *a) {
    for (const cli_opt *o = opts; o->lng; o++)
        if ((o->shrt && !strcmp(a, o->shrt)) || !strcmp(a, o->lng)) return o;
    return NULL;
}

int cli_parse(const char *cmd, const char *synopsis, const cli_opt *opts, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            cli_usage(stdout, cmd, synopsis, opts);
            return 1;
        }
        const cli_opt *o = cli_find(opts, a);
        if (!o) return cli_usage_error(cmd, "unknown option '%s'", a);
        if (o->kind == CLI_FLAG) {
            *(int *)o->dst = 1;
            continue;
        }
        if (i + 1 >= argc) return cli_usage_error(cmd, "option %s needs a value", a);
        const char *v = argv[++i];
        if (o->kind == CLI_STR)
            *(const char **)o->dst = v;
        else if (cli_number(v, o->kind, o->dst) != 0)
            return cli_usage_error(cmd, "option %s: '%s' is not a valid %s", a, v,
                                   o->kind == CLI_FLOAT ? "number" : o->kind == CLI_SIZE ? "size" : "integer");
    }
    return 0;
}

int cli_fail(const char *cmd, const char *what, int rc) {
    fprintf(stderr, "kvpack %s: %s: %s (%s)\n", cmd, what, kvp_errmsg(), kvp_strerror(rc));
    return 1;
}

int cli_open_model(const char *cmd, const char *path, const char *tok, kvp_model **out) {
    if (!path) return cli_usage_error(cmd, "no model given (-m MODEL.gguf)");
    int rc = kvp_model_load(path, tok, out);
    if (rc < 0) return cli_fail(cmd, "cannot load the model", rc);
    return 0;
}

int cli_read_text(const char *cmd, const char *path, char **out, size_t *len) {
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) {
        fprintf(stderr, "kvpack %s: cannot open '%s': %s\n", cmd, path, strerror(errno));
        return 1;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap) {
            char *nb = realloc(buf, 2 * cap + 1);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
    }
    int err = ferror(f);
    if (f != stdin) fclose(f);
    if (!buf || err) {
        free(buf);
        fprintf(stderr, "kvpack %s: cannot read '%s'\n", cmd, path);
        return 1;
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return 0;
}

int cli_tokenize(const char *cmd, const kvp_model *m, const char *text, size_t len, int add_bos, int **ids,
                 int *n) {
    int cap = len + 16 < (1u << 28) ? (int)len + 16 : 1 << 28;
    *ids = malloc(sizeof(int) * (size_t)cap);
    if (!*ids) return cli_fail(cmd, "tokenizing", KVP_ENOMEM);
    int rc = kvp_tokenize(m, text, len, add_bos, *ids, cap, n);
    if (rc < 0) {
        free(*ids);
        *ids = NULL;
        return cli_fail(cmd, "cannot tokenize the prompt", rc);
    }
    return 0;
}

int cli_tokenize_ex(const char *cmd, const kvp_model *m, const char *text, size_t len, int flags, int **ids,
                    int *n) {
    int cap = len + 16 < (1u << 28) ? (int)len + 16 : 1 << 28;
    *ids = malloc(sizeof(int) * (size_t)cap);
    if (!*ids) return cli_fail(cmd, "tokenizing", KVP_ENOMEM);
    int rc = kvp_tokenize_ex(m, text, len, flags, *ids, cap, n);
    if (rc < 0) {
        free(*ids);
        *ids = NULL;
        return cli_fail(cmd, "cannot tokenize the prompt", rc);
    }
    return 0;
}

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

uint64_t cli_peak_rss(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)ru.ru_maxrss * 1024;
}

const char *cli_bytes(uint64_t b, char *buf, size_t cap) {
    if (b < 1024) snprintf(buf, cap, "%llu B", (unsigned long long)b);
    else if (b < (1ull << 20)) snprintf(buf, cap, "%.1f KiB", (double)b / 1024);
    else if (b < (1ull << 30)) snprintf(buf, cap, "%.1f MiB", (double)b / (1 << 20));
    else snprintf(buf, cap, "%.2f GiB", (double)b / (1 << 30));
    return buf;
}
