/*
 * util.c: aligned allocation, whole-file reads, the clock.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "common.h"

void *kvp_amalloc(size_t bytes) {
    void *p = NULL;
    if (bytes == 0) bytes = 64;
    bytes = (bytes + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, bytes) != 0) return NULL;
    return p;
}

void *kvp_acalloc(size_t bytes) {
    void *p = kvp_amalloc(bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

void kvp_afree(void *p) { free(p); }

int kvp_read_file(const char *path, void **data, size_t *size) {
    *data = NULL;
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return kvp_seterr(KVP_EIO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *nb = realloc(buf, cap * 2);
        if (!nb) { free(buf); buf = NULL; break; }
        buf = nb;
        cap *= 2;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf) return kvp_seterr(KVP_ENOMEM, "%s: out of memory reading the file", path);
    if (err) { free(buf); return kvp_seterr(KVP_EIO, "%s: read error", path); }
    *data = buf;
    *size = n;
    return KVP_OK;
}

double kvp_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
