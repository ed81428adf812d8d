/*
 * run.c: the test runner. Usage: tests [SUBSTRING]. Prints one line per failure and a
 * closing line "N passed, N failed"; exits 1 when any test failed.
 */
#include <stdarg.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kvpack.h"
#include "test.h"

#define KVT_MAX 1024

static struct { const char *name; kvt_fn fn; } kvt_tests[KVT_MAX];
static int kvt_n;
static int kvt_cur_failed;
static const char *kvt_cur_name;

void kvt_register(const char *name, kvt_fn fn) {
    if (kvt_n < KVT_MAX) { kvt_tests[kvt_n].name = name; kvt_tests[kvt_n].fn = fn; kvt_n++; }
}

void kvt_fail(const char *file, int line, const char *fmt, ...) {
    if (kvt_cur_failed) return;
    kvt_cur_failed = 1;
    va_list ap;
    va_start(ap, fmt);
    printf("FAIL %s (%s:%d): ", kvt_cur_name, file, line);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
}

int kvt_failed(void) { return kvt_cur_failed; }

const char *kvt_model(const char *name) {
    static _Thread_local char paths[8][4096]; /* rotating: several paths may be live at once */
    static _Thread_local int next;
    char *path = paths[next++ % 8];
    const char *dir = getenv("KVPACK_MODELS");
    snprintf(path, sizeof paths[0], "%s/%s", dir && *dir ? dir : "../shared/models", name);
    if (access(path, R_OK) != 0)
        kvt_fail(__FILE__, __LINE__, "test model %s is missing (set KVPACK_MODELS)", path);
    return path;
}

const char *kvt_cli_path(void) {
    const char *cli = getenv("KVP_CLI");
    return cli && *cli ? cli : "build/kvpack";
}

int kvt_cli(const char *args, char *out, size_t cap) {
    char cmd[8192], drop[4096];
    const int len = snprintf(cmd, sizeof cmd, "%s %s 2>&1", kvt_cli_path(), args);
    if (out && cap) out[0] = 0;
    if (len < 0 || (size_t)len >= sizeof cmd) return -1;
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = out && cap ? fread(out, 1, cap - 1, p) : 0;
    if (out && cap) out[n] = 0;
    while (fread(drop, 1, sizeof drop, p) > 0) {}
    const int st = pclose(p);
    return st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int kvt_cmp(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int main(int argc, char **argv) {
    const char *filter = argc > 1 ? argv[1] : NULL;
    int verbose = getenv("KVT_VERBOSE") != NULL;
    qsort(kvt_tests, (size_t)kvt_n, sizeof kvt_tests[0], kvt_cmp);
    int passed = 0, failed = 0;
    for (int i = 0; i < kvt_n; i++) {
        if (filter && !strstr(kvt_tests[i].name, filter)) continue;
        kvt_cur_name = kvt_tests[i].name;
        kvt_cur_failed = 0;
        if (verbose) { printf("RUN  %s\n", kvt_cur_name); fflush(stdout); }
        kvt_tests[i].fn();
        if (kvt_cur_failed) failed++; else passed++;
        fflush(stdout);
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
