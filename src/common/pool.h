/*
 * pool.h: a thread pool for data-parallel kernels.
 *
 * kvp_pool_run(pool, fn, arg, n_chunks) calls fn(arg, chunk, thread) once for every chunk
 * in [0, n_chunks). The calling thread takes part (it is thread 0) and the call returns
 * when every chunk is done. Chunks are claimed dynamically, one at a time: a worker that the
 * operating system has not scheduled claims nothing, so the caller finishes the job alone
 * instead of waiting for a core that is busy elsewhere. Idle workers spin for a short while
 * (about 50 microseconds) and then sleep on a futex, so an idle pool costs no CPU. When
 * the caller keeps waiting on a worker that another process has preempted, the pool runs
 * the following jobs on the caller alone for a while (doubling stretches), then tries the
 * workers again: `-t 2` stays about as fast as `-t 1` when the second core is busy.
 *
 * A pool is driven by one thread at a time; fn must not call kvp_pool_run on the same pool.
 */
#ifndef KVP_POOL_H
#define KVP_POOL_H

typedef struct kvp_pool kvp_pool;
typedef void (*kvp_task_fn)(void *arg, int chunk, int thread);

/* Creates a pool of n_threads threads in all (the caller plus n_threads - 1 workers). */
int kvp_pool_new(int n_threads, kvp_pool **out);
void kvp_pool_free(kvp_pool *p); /* joins the workers; accepts NULL */
int kvp_pool_size(const kvp_pool *p); /* 1 for a NULL pool */

/* Runs the job; with a NULL pool or one thread it simply loops over the chunks. */
void kvp_pool_run(kvp_pool *p, kvp_task_fn fn, void *arg, int n_chunks);

#endif
