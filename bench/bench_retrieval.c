/*
 * bench_retrieval.c: the attention of a retrieval query (Quest at a 25% budget on the 76M
 * synthetic model's shape) over scattered 8-bit cold blocks, through kvp_sel_attend, timed
 * apart from everything else of a decode step. Single-threaded.
 *
 * Usage: bench_retrieval [STEPS] [dram|l3|l2]   (default 100 dram)
 *
 * Shape: 12 layers x 4 KV heads (48 tasks per step), head dim 64, a GQA group of 3 query
 * rows, 256 pages of 16 tokens per layer (4096 tokens) stored as the cold tier stores them
 * (one record per page and layer: K scales, V scales, K rows, V rows of the 4 heads, about
 * 8.5 KiB), 64 pages chosen at random per task (1024 rows: 25%). Modes:
 *   dram: before every step a 150 MiB buffer is read, as the model's weights are, so the
 *         26 MiB of pages come from DRAM (the decode case);
 *   l3:   no streaming: the pages stay in the 32 MiB L3;
 *   l2:   every task reads the same 64 pages (in L2): the compute floor.
 * Prints the attention time per step (48 tasks) and per task.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "common/common.h"
#include "kv/select.h"

enum { BR_HD = 64, BR_PAGE = 16, BR_PAGES = 256, BR_LAYERS = 12, BR_NKV = 4, BR_SEL = 64, BR_GROUP = 3 };
#define BR_REC 8704 /* bytes of one page record: 2 x 256 scale bytes, 2 x 4 KiB rows */
#define BR_WEIGHTS ((size_t)150 << 20)

static double br_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The run of head h's rows in page record `rec`, at position pos0. */
static kvp_rows br_run(uint8_t *rec, int h, int pos0) {
    const float *ks = (const float *)(void *)rec, *vs = (const float *)(void *)(rec + 256);
    const uint8_t *k = rec + 512 + (size_t)h * BR_PAGE * BR_HD, *v = rec + 512 + 4096 + (size_t)h * BR_PAGE * BR_HD;
    return (kvp_rows){KVP_ROWS_Q8, BR_PAGE, k, v, ks + h * BR_PAGE, vs + h * BR_PAGE, NULL, pos0, NULL, 0, 0};
}

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 100;
    const char *mode = argc > 2 ? argv[2] : "dram";
    int stream = !strcmp(mode, "dram"), hot = !strcmp(mode, "l2");
    if (steps <= 0 || (!stream && !hot && strcmp(mode, "l3"))) {
        fprintf(stderr, "usage: bench_retrieval [STEPS] [dram|l3|l2]\n");
        return 2;
    }
    size_t cold = (size_t)BR_PAGES * BR_LAYERS * BR_REC;
    uint8_t *tier = NULL;
    char *weights = malloc(BR_WEIGHTS);
    float *q = malloc(sizeof(float) * BR_GROUP * BR_HD), *y = malloc(sizeof(float) * BR_GROUP * BR_HD);
    float *s = malloc(sizeof(float) * BR_GROUP * (BR_SEL * BR_PAGE + 64));
    kvp_rows *runs = malloc(sizeof(kvp_rows) * BR_SEL);
    if (posix_memalign((void **)&tier, (size_t)2 << 20, cold) || !weights || !q || !y || !s || !runs) {
        fprintf(stderr, "bench_retrieval: out of memory\n");
        return 1;
    }
    madvise(tier, cold, MADV_HUGEPAGE); /* as the cold tier's segments */
    for (size_t i = 0; i < cold; i++) tier[i] = (uint8_t)(i * 131 + 7);
    for (size_t r = 0; r < (size_t)BR_PAGES * BR_LAYERS; r++)
        for (int i = 0; i < 2 * BR_NKV * BR_PAGE; i++) ((float *)(void *)(tier + r * BR_REC))[i] = 0.01f;
    memset(weights, 1, BR_WEIGHTS);
    for (int i = 0; i < BR_GROUP * BR_HD; i++) q[i] = 0.01f * (float)(i % 97);
    unsigned seed = 1;
    double t_att = 0;
    volatile float sink = 0; /* keeps the streaming reads and the outputs live */
    for (int st = 0; st < steps; st++) {
        for (size_t i = 0; stream && i < BR_WEIGHTS; i += 64) sink += weights[i];
        for (int task = 0; task < BR_LAYERS * BR_NKV; task++) {
            int layer = task / BR_NKV, h = task % BR_NKV, qpos = 1 << 20;
            for (int r = 0; r < BR_SEL; r++) {
                seed = seed * 1103515245u + 12345u;
                size_t page = hot ? (size_t)r : (seed >> 8) % BR_PAGES;
                runs[r] = br_run(tier + (page * BR_LAYERS + (size_t)layer) * BR_REC, h, r * BR_PAGE);
            }
            kvp_attn_io io = {q, BR_GROUP, &qpos, BR_GROUP, 0.125f, s, BR_SEL * BR_PAGE + 64, y, NULL, NULL};
            double t0 = br_now();
            kvp_sel_attend(runs, BR_SEL, BR_HD, &io);
            t_att += br_now() - t0;
            sink += y[0];
        }
    }
    printf("%s: attention %.3f ms per step of %d tasks (%.2f us per task)\n", mode, 1e3 * t_att / steps,
           BR_LAYERS * BR_NKV, 1e6 * t_att / steps / (BR_LAYERS * BR_NKV));
    (void)sink;
    free(tier);
    free(weights);
    free(q);
    free(y);
    free(s);
    free(runs);
    return 0;
}
