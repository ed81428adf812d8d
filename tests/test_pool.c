/*
 * test_pool.c: the thread pool runs every chunk exactly once, for any thread and chunk
 * count, across many consecutive jobs (the generation check against late workers).
 */
#include <stdatomic.h>

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
