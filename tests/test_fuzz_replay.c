/*
 * test_fuzz_replay.c: replays every saved input of every fuzz target (tests/fuzz/corpus/
 * TARGET/ANY) through the target's entry point, so that `make test` (and `make asan`) runs
 * the corpus without libFuzzer. A target returns 0 for any input; a crash or a sanitizer
 * report fails the run.
 */
#include <dirent.h>
#include <stdint.h>

#include "kvpack.h"
#include "test.h"

int kvp_fuzz_gguf(const uint8_t *data, size_t size);
int kvp_fuzz_kvz_header(const uint8_t *data, size_t size);
int kvp_fuzz_kvz_chunk(const uint8_t *data, size_t size);
int kvp_fuzz_kvz_rans(const uint8_t *data, size_t size);

typedef struct {
    const char *name;
    int (*fn)(const uint8_t *, size_t);
} kvt_fuzz_target;

static const kvt_fuzz_target kvt_targets[] = {
    {"fuzz_gguf", kvp_fuzz_gguf},
    {"fuzz_kvz_header", kvp_fuzz_kvz_header},
    {"fuzz_kvz_chunk", kvp_fuzz_kvz_chunk},
    {"fuzz_kvz_rans", kvp_fuzz_kvz_rans},
};

/* Replays one corpus directory; returns the number of inputs, or -1 when it is missing. */
static int kvt_replay_dir(const kvt_fuzz_target *t) {
    char dir[256];
    snprintf(dir, sizeof dir, "tests/fuzz/corpus/%s", t->name);
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char path[600];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) continue;
        static uint8_t buf[1 << 20];
        size_t len = fread(buf, 1, sizeof buf, f);
        fclose(f);
        uint8_t *copy = malloc(len ? len : 1); /* exact size, so ASan sees overreads */
        memcpy(copy, buf, len);
        if (t->fn(copy, len) != 0) kvt_fail(__FILE__, __LINE__, "%s returned non-zero for %s", t->name, path);
        free(copy);
        n++;
    }
    closedir(d);
    return n;
}

TEST(fuzz_corpus_replay) {
    for (size_t i = 0; i < sizeof kvt_targets / sizeof kvt_targets[0]; i++) {
        int n = kvt_replay_dir(&kvt_targets[i]);
        CHECKF(n > 0, "corpus of %s is missing or empty", kvt_targets[i].name);
    }
}
