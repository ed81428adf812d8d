/*
 * pool.h: a thread pool for data-parallel kernels.
 *
 * kvp_pool_run(pool, fn, arg, n_chunks) calls fn(arg, chunk, thread) once for every chunk
 * in [0, n_chunks). The calling thread takes part (it is thread 0) and the call returns
 * when every chunk is done. Chunks are claimed dynamically, one at a time: a worker that the
 * operating system has not scheduled claims nothing, so the caller finishes the job alone
 * instead of waiting for a core that is busy elsewhere. Idle workers spin for a short while
 * (up to about 35 microseconds) and then sleep on a futex, so an idle pool costs no CPU.
 * A worker that another process preempts in the middle of a chunk still holds up its job
 * for a time slice; a driver that marks units of comparable work (kvp_pool_unit_begin and
 * kvp_pool_unit_end) lets the pool measure whether its workers help and run on the caller
 * alone when they don't, so that `-t 2` stays about as fast as `-t 1` when the second core
 * is busy.
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
/* The threads the next job will run on: kvp_pool_size, or 1 while the pool has chosen to
 * run on the caller alone (kvp_pool_unit_begin/end). Split jobs by this; size scratch by the size. */
int kvp_pool_active(const kvp_pool *p);

/* Runs the job; with a NULL pool or one thread it simply loops over the chunks. */
void kvp_pool_run(kvp_pool *p, kvp_task_fn fn, void *arg, int n_chunks);

/* Units of comparable work (the engine: a single-token decode step; a prefill batch). Between
 * kvp_pool_unit_begin(p, kind) and kvp_pool_unit_end(p, work) the jobs run either with the
 * workers or on the caller alone, as the pool chose for that kind (0 <= kind <
 * KVP_POOL_KINDS) from what it measured: it times units both ways in short alternating
 * probes (two units each; kind 1 runs 16 units with the workers first) and runs the
 * following units the faster way, probing again after 16 to 256 units or as soon as the
 * chosen way slows down. Whatever else runs on
 * the machine, a pool of n threads is then about as fast as the better of n threads and
 * one. A unit of another kind (say -1) is not timed and always uses the workers. Costs two
 * clock reads per unit; a NULL or one-thread pool ignores both calls. */
#define KVP_POOL_KINDS 2
void kvp_pool_unit_begin(kvp_pool *p, int kind);
void kvp_pool_unit_end(kvp_pool *p, double work); /* work > 0: e.g. tokens in the unit */

#endif
