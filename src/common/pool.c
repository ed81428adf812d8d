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

#define KVP_SPIN_ITERS 1500 /* pause loops before sleeping: 2-35 microseconds (Zen 5: 23 ns each) */
#define KVP_PROBE_UNITS 4      /* units per probe, alternately with the workers and alone */
#define KVP_PROBE_MIN 16       /* units between probes while the two ways are close */
#define KVP_PROBE_MAX 256      /* ... growing up to this while one way is clearly faster */

/* The measured choice between running a kind of unit with the workers or alone. */
typedef struct {
    int solo;          /* the chosen way: 1 = the caller alone */
    int probe;         /* units left in the current probe; 0 while running the chosen way */
    int until_probe;   /* units to run the chosen way before the next probe */
    int interval;      /* units between probes */
    int slow;          /* consecutive units 1.5x slower than the chosen way measured */
    int n_run;         /* units run the chosen way since the probe ... */
    double sum_run;    /* ... and their seconds per work */
    double sec[2];     /* probe sums of seconds per work: [0] with the workers, [1] alone */
    double best;       /* seconds per work of the chosen way in the last probe */
} kvp_pool_adapt;

struct kvp_pool {
    int n_threads;
    pthread_t *threads;
    _Atomic uint64_t claim;     /* (generation << 32) | next chunk */
    _Atomic uint32_t gen;       /* futex word the workers sleep on */
    _Atomic uint32_t done;      /* chunks finished in the current job; futex word of the caller */
    _Atomic int caller_sleeps;  /* the caller is blocked (or about to block) on done */
    kvp_pool_adapt adapt[KVP_POOL_KINDS];
    int unit_kind;              /* the kind of the current unit; -1 outside timed units */
    int unit_solo;              /* the current unit runs on the caller alone */
    double unit_t0;             /* when the current unit began */
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
    for (int k = 0; k < KVP_POOL_KINDS; k++) p->adapt[k].interval = KVP_PROBE_MIN;
    p->adapt[1].until_probe = KVP_PROBE_MIN; /* prefill: the workers first, probed after 16 batches */
    p->unit_kind = -1;
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
int kvp_pool_active(const kvp_pool *p) { return p && !p->unit_solo ? p->n_threads : 1; }

static void kvp_pool_serial(kvp_task_fn fn, void *arg, int n_chunks) {
    for (int c = 0; c < n_chunks; c++) fn(arg, c, 0);
}

void kvp_pool_run(kvp_pool *p, kvp_task_fn fn, void *arg, int n_chunks) {
    if (n_chunks <= 0) return;
    if (!p || p->n_threads == 1 || n_chunks == 1 || p->unit_solo) {
        kvp_pool_serial(fn, arg, n_chunks);
        return;
    }
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
    /* Every chunk is claimed; wait for the ones other threads are still running. */
    for (;;) {
        uint32_t d = atomic_load_explicit(&p->done, memory_order_acquire);
        if ((int)d == n_chunks) break;
        kvp_wait_change(&p->done, d, NULL, &p->caller_sleeps);
    }
}

/* Measured choice between the workers and the caller alone (kvp_pool_unit_begin/end).
 * Decode steps are probed at once, prefill batches after 16 with the workers; a probe runs
 * KVP_PROBE_UNITS units alternately both ways and keeps the faster (the workers only when
 * they win by 10%: a worker preempted by another process stalls a whole unit now and then,
 * which two units rarely show); the next probe comes after `interval` units, which grows
 * (x4) while the same way keeps winning, or early when two units in a row run 1.5x slower than
 * the chosen way did in its probe, or 8 or more since the probe run 1.2x slower on average
 * (another process took a core, or gave it back). */

static void kvp_adapt_choose(kvp_pool_adapt *a) {
    int solo = !(a->sec[0] < 0.95 * a->sec[1]); /* the workers must win clearly: they risk stalls */
    a->interval = solo == a->solo ? KVP_MIN(4 * a->interval, KVP_PROBE_MAX) : KVP_PROBE_MIN;
    a->solo = solo;
    a->best = a->sec[solo] / (KVP_PROBE_UNITS / 2);
    a->until_probe = a->interval;
    a->slow = a->n_run = 0;
    a->sum_run = 0;
}

/* Records one unit's seconds per work `t`, run alone (solo) or with the workers. */
static void kvp_adapt_note(kvp_pool_adapt *a, int solo, double t) {
    if (a->probe > 0) {
        a->sec[solo] += t;
        if (--a->probe == 0) kvp_adapt_choose(a);
        return;
    }
    if (a->best == 0) a->best = t; /* the first unit, before any probe */
    a->slow = t > 1.5 * a->best ? a->slow + 1 : 0;
    a->n_run++;
    a->sum_run += t;
    if (a->slow >= 2 || (a->n_run >= 8 && a->sum_run > 1.2 * a->best * a->n_run)) a->until_probe = 0;
    a->until_probe--;
}

/* The way to run the next unit: 1 for the caller alone. */
static int kvp_adapt_next(kvp_pool_adapt *a) {
    if (a->probe == 0 && a->until_probe <= 0) {
        a->probe = KVP_PROBE_UNITS;
        a->sec[0] = a->sec[1] = 0;
    }
    return a->probe > 0 ? a->probe & 1 : a->solo;
}

void kvp_pool_unit_begin(kvp_pool *p, int kind) {
    if (!p || p->n_threads == 1) return;
    int timed = kind >= 0 && kind < KVP_POOL_KINDS;
    p->unit_kind = timed ? kind : -1;
    p->unit_solo = timed ? kvp_adapt_next(&p->adapt[kind]) : 0;
    p->unit_t0 = kvp_now();
}

void kvp_pool_unit_end(kvp_pool *p, double work) {
    if (!p || p->n_threads == 1 || p->unit_kind < 0) return;
    if (work > 0) kvp_adapt_note(&p->adapt[p->unit_kind], p->unit_solo, (kvp_now() - p->unit_t0) / work);
    p->unit_kind = -1;
    p->unit_solo = 0;
}
