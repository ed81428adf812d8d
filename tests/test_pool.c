/*
 * test_pool.c: the thread pool runs every chunk exactly once, for any thread and chunk
 * count, across many consecutive jobs (the generation check against late workers).
 */
#include <stdatomic.h>
#include <unistd.h>

#include "common/pool.h"
#include "kvpack.h"
#include "test.h"

typedef struct {
    _Atomic int hits[257];
    _Atomic int bad_thread;
    int n_threads;
} kvt_pool_job;

static void kvt_pool_task(void *arg, int chunk, int thread) {
    kvt_pool_job *j = arg;
    atomic_fetch_add(&j->hits[chunk], 1);
    if (thread < 0 || thread >= j->n_threads) atomic_store(&j->bad_thread, 1);
}

TEST(pool_every_chunk_once) {
    for (int nt = 1; nt <= 4; nt++) {
        kvp_pool *p = NULL;
        CHECK_OK(kvp_pool_new(nt, &p));
        CHECK(kvp_pool_size(p) == nt);
        static kvt_pool_job j;
        for (int rep = 0; rep < 3000; rep++) {
            int n = 1 + (rep * 37) % 257;
            memset(&j, 0, sizeof j);
            j.n_threads = nt;
            kvp_pool_run(p, kvt_pool_task, &j, n);
            for (int c = 0; c < 257; c++) CHECKF(j.hits[c] == (c < n), "threads %d, job %d: chunk %d ran %d times", nt, rep, c, j.hits[c]);
            CHECK(!j.bad_thread);
        }
        kvp_pool_free(p);
    }
    kvp_pool_free(NULL);
    kvp_pool *p = NULL;
    CHECK(kvp_pool_new(0, &p) == KVP_EINVAL && !p);
}

/* kvp_pool_unit_begin/end's measured choice. Sleeps stand in for work, so the margins (3 ms against
 * 0.8 ms, 8 ms against 4) hold on a loaded machine: the test checks which way the pool
 * picks, not how fast anything runs. */
typedef struct {
    _Atomic int worker_chunks;
    int lagging_workers;  /* workers sleep 3 ms per chunk: a preempted core */
    int sleep_us;         /* every chunk sleeps this long: parallel work */
} kvt_adapt_job;

static void kvt_adapt_task(void *arg, int chunk, int thread) {
    kvt_adapt_job *j = arg;
    if (thread != 0) atomic_fetch_add(&j->worker_chunks, 1);
    if (thread != 0 && j->lagging_workers) usleep(3000);
    if (j->sleep_us) usleep((useconds_t)j->sleep_us);
}

/* Runs `units` units of 4 jobs of 8 chunks each; returns how many of the last 8 units used
 * a worker. */
static int kvt_adapt_units(kvp_pool *p, kvt_adapt_job *j, int units) {
    int pooled = 0;
    for (int u = 0; u < units; u++) {
        atomic_store(&j->worker_chunks, 0);
        kvp_pool_unit_begin(p, 0);
        for (int k = 0; k < 4; k++) kvp_pool_run(p, kvt_adapt_task, j, 8);
        kvp_pool_unit_end(p, 1);
        if (u >= units - 8) pooled += atomic_load(&j->worker_chunks) > 0;
    }
    return pooled;
}

TEST(pool_units_choose_the_faster_way) {
    kvp_pool *p = NULL;
    CHECK_OK(kvp_pool_new(2, &p));
    kvt_adapt_job lag = {.lagging_workers = 1, .sleep_us = 100};
    int pooled = kvt_adapt_units(p, &lag, 30); /* 16 units with the workers, a probe, then alone */
    CHECKF(pooled <= 2, "workers that hold up every job were used in %d of 8 units", pooled); /* a probe: 2 */
    kvt_adapt_job untimed = {.sleep_us = 200};
    kvp_pool_unit_begin(p, -1); /* an untimed unit always uses the workers */
    for (int k = 0; k < 50 && !atomic_load(&untimed.worker_chunks); k++) kvp_pool_run(p, kvt_adapt_task, &untimed, 8);
    kvp_pool_unit_end(p, 1);
    CHECK(atomic_load(&untimed.worker_chunks) > 0);
    kvt_adapt_job par = {.sleep_us = 300};
    pooled = kvt_adapt_units(p, &par, 300); /* the next probe comes within 256 units */
    CHECKF(pooled >= 6, "workers that halve the time were used in only %d of 8 units", pooled);
    kvp_pool_free(p);
}
