/*
 * pool.c: the thread pool (see pool.h for the contract).
 *
 * One job at a time. The job's state is a 64-bit word `claim`: the job's generation in the
 * high 32 bits and the next unclaimed chunk in the low 32 bits. A worker claims a chunk with
 * a compare-and-swap that also checks the generation, so a worker that wakes up late can
 * never claim a chunk of a newer job with the older job's function.
 */
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common.h"
#include "pool.h"

#define KVP_SPIN_ITERS 20000 /* pause loops before sleeping: tens of microseconds */
#define KVP_LAG_MIN_WAIT 20e-6 /* seconds of waiting on workers that count as lag */
#define KVP_BACKOFF_MIN 64     /* jobs in the first solo stretch */
#define KVP_BACKOFF_MAX 32768
#define KVP_LAG_WINDOW 256     /* two lags within this many jobs start a solo stretch */

struct kvp_pool {
    int n_threads;
    pthread_t *threads;
    _Atomic uint64_t claim;     /* (generation << 32) | next chunk */
    _Atomic uint32_t gen;       /* futex word the workers sleep on */
    _Atomic uint32_t done;      /* chunks finished in the current job; futex word of the caller */
    _Atomic int caller_sleeps;  /* the caller is blocked (or about to block) on done */
    int solo_left;              /* jobs still to run on the caller alone (backing off) */
    int backoff;                /* length of the next solo stretch, in jobs */
    int since_lag;              /* jobs since the caller last waited long on a worker */
    _Atomic int stop;
    _Atomic int sleepers;       /* workers blocked (or about to block) in FUTEX_WAIT on gen */
    kvp_task_fn fn;             /* written after claim changes and before gen is published */
    void *arg;
    _Atomic int n_chunks;
};

typedef struct {
    kvp_pool *pool;
    int ith;
} kvp_worker;

static long kvp_futex(_Atomic uint32_t *addr, int op, uint32_t val) {
    return syscall(SYS_futex, (uint32_t *)addr, op | FUTEX_PRIVATE_FLAG, val, NULL, NULL, 0);
}

static inline void kvp_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Claims and runs chunks of job `gen` until none is left. */
static void kvp_pool_work(kvp_pool *p, uint32_t gen, int ith) {
    for (;;) {
        uint64_t c = atomic_load_explicit(&p->claim, memory_order_acquire);
        if ((uint32_t)(c >> 32) != gen || (int)(uint32_t)c >= atomic_load(&p->n_chunks)) return;
        if (!atomic_compare_exchange_weak(&p->claim, &c, c + 1)) continue;
        p->fn(p->arg, (int)(uint32_t)c, ith);
        uint32_t d = atomic_fetch_add(&p->done, 1) + 1;
        if ((int)d == atomic_load(&p->n_chunks) && atomic_load(&p->caller_sleeps)) kvp_futex(&p->done, FUTEX_WAKE, 1);
    }
}

/* Waits until *word differs from old (or *stop is set): spins first, then sleeps on the
 * futex, counting itself in *sleepers so that wakers can skip the system call when nobody
 * sleeps. The count is raised before the final check, so a waker that changes *word and
 * then reads *sleepers (both sequentially consistent) either sees the sleeper or is seen. */
static uint32_t kvp_wait_change(_Atomic uint32_t *word, uint32_t old, _Atomic int *stop, _Atomic int *sleepers) {
    for (int i = 0; i < KVP_SPIN_ITERS; i++) {
        uint32_t v = atomic_load_explicit(word, memory_order_acquire);
        if (v != old || (stop && atomic_load(stop))) return v;
        kvp_cpu_relax();
    }
    for (;;) {
        atomic_fetch_add(sleepers, 1);
        uint32_t v = atomic_load(word);
        if (v == old && !(stop && atomic_load(stop))) kvp_futex(word, FUTEX_WAIT, old);
        atomic_fetch_sub(sleepers, 1);
        v = atomic_load_explicit(word, memory_order_acquire);
        if (v != old || (stop && atomic_load(stop))) return v;
    }
}

static void *kvp_worker_main(void *varg) {
    kvp_worker *w = varg;
    kvp_pool *p = w->pool;
    int ith = w->ith;
    free(w);
    uint32_t seen = atomic_load(&p->gen);
    for (;;) {
        seen = kvp_wait_change(&p->gen, seen, &p->stop, &p->sleepers);
        if (atomic_load(&p->stop)) return NULL;
        kvp_pool_work(p, seen, ith);
    }
}

int kvp_pool_new(int n_threads, kvp_pool **out) {
    *out = NULL;
    if (n_threads < 1 || n_threads > 1024)
        return kvp_seterr(KVP_EINVAL, "thread count %d is out of range 1..1024", n_threads);
    kvp_pool *p = calloc(1, sizeof *p);
    if (!p) return kvp_seterr(KVP_ENOMEM, "out of memory creating the thread pool");
    p->n_threads = n_threads;
    p->backoff = KVP_BACKOFF_MIN;
    p->since_lag = KVP_LAG_WINDOW;
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) { free(p); return kvp_seterr(KVP_ENOMEM, "out of memory creating the thread pool"); }
    for (int i = 1; i < n_threads; i++) {
        kvp_worker *w = malloc(sizeof *w);
        if (w) { w->pool = p; w->ith = i; }
        if (!w || pthread_create(&p->threads[i], NULL, kvp_worker_main, w) != 0) {
            free(w);
            p->n_threads = i; /* join the ones already running */
            kvp_pool_free(p);
            return kvp_seterr(KVP_ENOMEM, "cannot start worker thread %d", i);
        }
    }
    *out = p;
    return KVP_OK;
}

void kvp_pool_free(kvp_pool *p) {
    if (!p) return;
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->gen, 1);
    kvp_futex(&p->gen, FUTEX_WAKE, INT32_MAX);
    for (int i = 1; i < p->n_threads; i++) pthread_join(p->threads[i], NULL);
    free(p->threads);
    free(p);
}

int kvp_pool_size(const kvp_pool *p) { return p ? p->n_threads : 1; }

/* Backing off when the cores are busy elsewhere. A worker that the operating system
 * preempts in the middle of a chunk holds the whole job until it runs again (a time slice:
 * milliseconds), so when the caller repeatedly waits on workers for much of a job, the pool
 * runs the next `backoff` jobs on the caller alone, then tries the workers again. Two lags
 * within KVP_LAG_WINDOW jobs start a stretch; the stretch doubles while the lag persists
 * (up to 32768 jobs) and resets after 32768 jobs without lag. */

static void kvp_pool_note_lag(kvp_pool *p, double t_total, double t_wait) {
    int lag = t_wait > KVP_LAG_MIN_WAIT && t_wait > 0.3 * t_total;
    if (!lag) {
        if (++p->since_lag > KVP_BACKOFF_MAX) p->backoff = KVP_BACKOFF_MIN; /* calm again */
        return;
    }
    if (p->since_lag < KVP_LAG_WINDOW) { /* a second lag soon after the first: back off */
        p->solo_left = p->backoff;
        p->backoff = KVP_MIN(2 * p->backoff, KVP_BACKOFF_MAX);
    }
    p->since_lag = 0;
}

static void kvp_pool_serial(kvp_task_fn fn, void *arg, int n_chunks) {
    for (int c = 0; c < n_chunks; c++) fn(arg, c, 0);
}

void kvp_pool_run(kvp_pool *p, kvp_task_fn fn, void *arg, int n_chunks) {
    if (n_chunks <= 0) return;
    if (!p || p->n_threads == 1 || n_chunks == 1) {
        kvp_pool_serial(fn, arg, n_chunks);
        return;
    }
    if (p->solo_left > 0) {
        p->solo_left--;
        kvp_pool_serial(fn, arg, n_chunks);
        return;
    }
    double t0 = kvp_now();
    /* The claim word moves to the new generation first: a worker still looking at the
     * previous job then fails its compare-and-swap (or sees the new generation) instead of
     * pairing the old job's claim counter with this job's chunk count. */
    uint32_t gen = atomic_load(&p->gen) + 1;
    atomic_store(&p->claim, (uint64_t)gen << 32);
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->n_chunks, n_chunks);
    atomic_store(&p->done, 0);
    atomic_store(&p->gen, gen);
    if (atomic_load(&p->sleepers)) kvp_futex(&p->gen, FUTEX_WAKE, INT32_MAX);
    kvp_pool_work(p, gen, 0);
    double t1 = kvp_now();
    /* Every chunk is claimed; wait for the ones other threads are still running. */
    for (;;) {
        uint32_t d = atomic_load_explicit(&p->done, memory_order_acquire);
        if ((int)d == n_chunks) break;
        kvp_wait_change(&p->done, d, NULL, &p->caller_sleeps);
    }
    double t2 = kvp_now();
    kvp_pool_note_lag(p, t2 - t0, t2 - t1);
}
