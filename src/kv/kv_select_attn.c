/*
 * kv_select_attn.c: attention over a list of runs of cached rows (kvp_sel_attend), and the
 * 8-bit row kernels of the cold tier with their scalar references.
 *
 * A run is F32, F16 or 8-bit rows of one KV head, each with its original position. The runs
 * are taken in order as one sequence: scores of every run into one row of S per query row,
 * the causal mask by position, one softmax per row, then the values of every run. The
 * eviction cache passes one run (its whole stream); the retrieval cache passes the sinks,
 * the chosen blocks (hot or cold) and the recent tokens.
 */
#include <math.h>
#include <stdatomic.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "kv/select.h"

/* ---- 8-bit rows ---- */

void kvp_sel_quant_q8(const float *x, int hd, int8_t *q, float *scale) {
    float amax = 0;
    for (int c = 0; c < hd; c++) amax = fmaxf(amax, fabsf(x[c]));
    *scale = amax / 127.0f;
    float inv = amax > 0 ? 127.0f / amax : 0;
    for (int c = 0; c < hd; c++) q[c] = (int8_t)lrintf(fminf(127.0f, fmaxf(-127.0f, x[c] * inv)));
}

void kvp_sel_scores_q8_ref(const int8_t *K, const float *ks, int n, int hd, const float *Q, int nq, int ldq,
                           float scale, float *S, int lds) {
    for (int j = 0; j < nq; j++)
        for (int t = 0; t < n; t++) {
            float acc = 0;
            for (int c = 0; c < hd; c++) acc += (float)K[(size_t)t * hd + c] * Q[(size_t)j * ldq + c];
            S[(size_t)j * lds + t] = scale * ks[t] * acc;
        }
}

void kvp_sel_values_q8_ref(float *Y, int ldy, int ny, const float *P, int ldp, const int8_t *V,
                           const float *vs, int n, int hd) {
    for (int j = 0; j < ny; j++)
        for (int t = 0; t < n; t++) {
            float w = P[(size_t)j * ldp + t] * vs[t];
            for (int c = 0; c < hd; c++) Y[(size_t)j * ldy + c] += w * (float)V[(size_t)t * hd + c];
        }
}

void kvp_sel_dequant_q8_ref(const int8_t *q, const float *scale, int n, int hd, float *x) {
    for (int t = 0; t < n; t++)
        for (int c = 0; c < hd; c++) x[(size_t)t * hd + c] = scale[t] * (float)q[(size_t)t * hd + c];
}

/* 1 when the AVX2 twin may run: the kernels' chosen instruction set is not scalar. */
static int kvp_sel_use_avx2(void) {
    static atomic_int state; /* 0 unknown, 1 no, 2 yes */
    int s = atomic_load_explicit(&state, memory_order_relaxed);
    if (!s) {
        s = strcmp(kvp_isa(), "scalar") ? 2 : 1;
        atomic_store_explicit(&state, s, memory_order_relaxed);
    }
    return s == 2;
}

void kvp_sel_dequant_q8(const int8_t *q, const float *scale, int n, int hd, float *x) {
    if (kvp_sel_use_avx2()) kvp_sel_dequant_q8_avx2(q, scale, n, hd, x);
    else kvp_sel_dequant_q8_ref(q, scale, n, hd, x);
}

/* The fast 8-bit scores and values attend the rows in place with the int8 attention kernels
 * (each row loaded and converted once for all the query rows, no float copy of the rows):
 * the row scales multiply the scores afterwards, and the weights P before the values, in
 * chunks of at most KVP_Q8_BUF scaled weights on the stack. */
#define KVP_Q8_BUF 4096
#define KVP_Q8_ROWS 256

void kvp_sel_scores_q8(const int8_t *K, const float *ks, int n, int hd, const float *Q, int nq, int ldq,
                       float scale, float *S, int lds) {
    kvp_attn_scores_i8(K, n, hd, Q, nq, ldq, scale, S, lds);
    for (int j = 0; j < nq; j++)
        for (int t = 0; t < n; t++) S[(size_t)j * lds + t] *= ks[t];
}

void kvp_sel_values_q8(float *Y, int ldy, int ny, const float *P, int ldp, const int8_t *V, const float *vs,
                       int n, int hd) {
    float w[KVP_Q8_BUF];
    const int tc = KVP_MAX(1, KVP_MIN(n, KVP_Q8_ROWS)), jc = KVP_Q8_BUF / tc;
    for (int t0 = 0; t0 < n; t0 += tc) {
        const int tn = KVP_MIN(tc, n - t0);
        for (int j0 = 0; j0 < ny; j0 += jc) {
            const int jn = KVP_MIN(jc, ny - j0);
            for (int j = 0; j < jn; j++)
                for (int t = 0; t < tn; t++) w[(size_t)j * tc + t] = P[(size_t)(j0 + j) * ldp + t0 + t] * vs[t0 + t];
            kvp_attn_values_i8(Y + (size_t)j0 * ldy, ldy, jn, w, tc, V + (size_t)t0 * hd, tn, hd);
        }
    }
}

/* ---- attention over runs ---- */

/* S[j*lds + t] for the run's n rows and nq query rows (stride hd). */
static void kvp_run_scores(const kvp_rows *r, int hd, const float *Q, int nq, float scale, float *S, int lds,
                           void *kscr) {
    if (r->fmt == KVP_ROWS_KQ) kvp_kq_run_scores(r, Q, nq, scale, S, lds, kscr);
    else if (r->fmt == KVP_ROWS_F32) kvp_attn_scores_f32(r->k, r->n, hd, Q, nq, hd, scale, S, lds);
    else if (r->fmt == KVP_ROWS_F16) kvp_attn_scores_f16(r->k, r->n, hd, Q, nq, hd, scale, S, lds);
    else kvp_sel_scores_q8(r->k, r->ks, r->n, hd, Q, nq, hd, scale, S, lds);
}

static void kvp_run_values(const kvp_rows *r, int hd, const float *P, int nq, int lds, float *Y, void *kscr) {
    if (r->fmt == KVP_ROWS_KQ) kvp_kq_run_values(r, P, nq, lds, Y, kscr);
    else if (r->fmt == KVP_ROWS_F32) kvp_attn_values_f32(Y, hd, nq, P, lds, r->v, r->n, hd);
    else if (r->fmt == KVP_ROWS_F16) kvp_attn_values_f16(Y, hd, nq, P, lds, r->v, r->n, hd);
    else kvp_sel_values_q8(Y, hd, nq, P, lds, r->v, r->vs, r->n, hd);
}

/* Rows of the run whose position is <= qp (positions ascend, so they are a prefix). */
static int kvp_run_visible(const kvp_rows *r, int qp) {
    if (!r->pos) return KVP_MAX(0, KVP_MIN(r->n, qp - r->pos0 + 1));
    int lo = 0, hi = r->n; /* first row with pos > qp */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (r->pos[mid] <= qp) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Sets the scores of rows a query row may not see to -inf. */
static void kvp_run_mask(const kvp_rows *r, const kvp_attn_io *io, float *S) {
    for (int j = 0; j < io->nq; j++) {
        int vis = kvp_run_visible(r, io->qpos[j / io->group]);
        float *row = S + (size_t)j * io->lds;
        for (int t = vis; t < r->n; t++) row[t] = -INFINITY;
    }
}

/* Bytes of one row of a run's format, and a hint to the cache to fetch the keys (or the
 * values) of a run: the runs of a retrieval query are scattered blocks, whose first touch
 * would otherwise stall on memory latency one block at a time. */
static size_t kvp_run_row_bytes(const kvp_rows *r, int hd) {
    return (size_t)hd * (r->fmt == KVP_ROWS_F32 ? 4 : r->fmt == KVP_ROWS_F16 ? 2 : 1);
}

/* Prefetches the cache line at p. Inline assembly on x86: GCC deletes a loop whose body is
 * only __builtin_prefetch calls (no side effects), which left kvp_run_prefetch empty. */
static inline void kvp_prefetch_line(const void *p) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __asm__ volatile("prefetcht0 %0" : : "m"(*(const char *)p));
#else
    __builtin_prefetch(p);
#endif
}

/* At most KVP_PREFETCH_RUN bytes of a run (and its scales line) are prefetched: a whole
 * cold block (a 16-row page of 64 values is 1 KiB in 8 bits), only the head of a long run
 * (an eviction stream), whose rest the F16/F32 kernels prefetch as they stream through it;
 * thousands of prefetches at once would overflow the core's miss buffers, which then drop
 * them. */
#define KVP_PREFETCH_RUN 2048
static void kvp_run_prefetch(const kvp_rows *r, int hd, int val) {
    if (r->fmt == KVP_ROWS_KQ || r->n <= 0) return; /* tiles: read in order by the kernels */
    const char *p = val ? r->v : r->k;
    size_t bytes = KVP_MIN((size_t)r->n * kvp_run_row_bytes(r, hd), (size_t)KVP_PREFETCH_RUN);
    for (size_t off = 0; off < bytes; off += 64) kvp_prefetch_line(p + off);
    if (r->fmt == KVP_ROWS_Q8) kvp_prefetch_line(val ? r->vs : r->ks);
}

/* The run's keys (or values) as floats: x (n, hd). */
static void kvp_run_floats(const kvp_rows *r, int hd, int val, float *x) {
    const void *src = val ? r->v : r->k;
    size_t cnt = (size_t)r->n * (size_t)hd;
    if (r->fmt == KVP_ROWS_KQ) kvp_kq_run_floats(r, val, x);
    else if (r->fmt == KVP_ROWS_F32) memcpy(x, src, sizeof(float) * cnt);
    else if (r->fmt == KVP_ROWS_F16) kvp_f16_to_f32_row(src, x, (int)cnt);
    else kvp_sel_dequant_q8(src, val ? r->vs : r->ks, r->n, hd, x);
}

/* Every pass over the runs prefetches the part it reads (keys or values) of the run
 * KVP_PREFETCH_AHEAD places ahead: enough misses in flight to cover memory latency, few
 * enough not to overflow the core's miss buffers. Measured on the 76M model's shape (64
 * scattered 1 KiB pages per KV head and query, the cold tier in DRAM behind 145 MiB of
 * weights streamed per token): 2.3 ms per token of attention without prefetching, about
 * 0.8 ms with it, 0.6 ms with every page already in L2. */
#define KVP_PREFETCH_AHEAD 4

/* Gathers every run's keys (or values) into io->buf; returns the total rows. */
static int kvp_runs_gather(const kvp_rows *runs, int n_runs, int hd, int val, float *buf) {
    int total = 0;
    for (int i = 0; i < KVP_MIN(KVP_PREFETCH_AHEAD, n_runs); i++) kvp_run_prefetch(&runs[i], hd, val);
    for (int i = 0; i < n_runs; i++) {
        if (i + KVP_PREFETCH_AHEAD < n_runs) kvp_run_prefetch(&runs[i + KVP_PREFETCH_AHEAD], hd, val);
        if (runs[i].n <= 0) continue;
        kvp_run_floats(&runs[i], hd, val, buf + (size_t)total * hd);
        total += runs[i].n;
    }
    return total;
}

/* The causal mask of every run, at its offset in the rows of io->s. */
static void kvp_runs_mask(const kvp_rows *runs, int n_runs, const kvp_attn_io *io) {
    for (int i = 0, off = 0; i < n_runs; i++) {
        if (runs[i].n <= 0) continue;
        kvp_run_mask(&runs[i], io, io->s + off);
        off += runs[i].n;
    }
}

static int kvp_sel_attend_gathered(const kvp_rows *runs, int n_runs, int hd, const kvp_attn_io *io) {
    int total = kvp_runs_gather(runs, n_runs, hd, 0, io->buf);
    for (int i = 0; i < KVP_MIN(KVP_PREFETCH_AHEAD, n_runs); i++) kvp_run_prefetch(&runs[i], hd, 1);
    kvp_attn_scores_f32(io->buf, total, hd, io->q, io->nq, hd, io->scale, io->s, io->lds);
    kvp_runs_mask(runs, n_runs, io);
    for (int j = 0; j < io->nq; j++) kvp_softmax(io->s + (size_t)j * io->lds, total);
    kvp_runs_gather(runs, n_runs, hd, 1, io->buf);
    memset(io->y, 0, sizeof(float) * (size_t)io->nq * (size_t)hd);
    kvp_attn_values_f32(io->y, hd, io->nq, io->s, io->lds, io->buf, total, hd);
    return total;
}

static int kvp_runs_have_kq(const kvp_rows *runs, int n_runs) {
    for (int i = 0; i < n_runs; i++)
        if (runs[i].fmt == KVP_ROWS_KQ && runs[i].n > 0) return 1;
    return 0;
}

/* Scores of every run into io->s, prefetching each run's keys KVP_PREFETCH_AHEAD runs ahead;
 * returns the total rows. */
static int kvp_runs_scores(const kvp_rows *runs, int n_runs, int hd, const kvp_attn_io *io) {
    int total = 0;
    for (int i = 0; i < KVP_MIN(KVP_PREFETCH_AHEAD, n_runs); i++) kvp_run_prefetch(&runs[i], hd, 0);
    for (int i = 0; i < n_runs; i++) {
        if (i + KVP_PREFETCH_AHEAD < n_runs) kvp_run_prefetch(&runs[i + KVP_PREFETCH_AHEAD], hd, 0);
        if (runs[i].n <= 0) continue;
        kvp_run_scores(&runs[i], hd, io->q, io->nq, io->scale, io->s + total, io->lds, io->kscr);
        total += runs[i].n;
    }
    return total;
}

/* io->y = the weights in io->s times every run's values, prefetched as the keys were. */
static void kvp_runs_values(const kvp_rows *runs, int n_runs, int hd, const kvp_attn_io *io) {
    memset(io->y, 0, sizeof(float) * (size_t)io->nq * (size_t)hd);
    for (int i = 0; i < KVP_MIN(KVP_PREFETCH_AHEAD, n_runs); i++) kvp_run_prefetch(&runs[i], hd, 1);
    for (int i = 0, off = 0; i < n_runs; i++) {
        if (i + KVP_PREFETCH_AHEAD < n_runs) kvp_run_prefetch(&runs[i + KVP_PREFETCH_AHEAD], hd, 1);
        if (runs[i].n <= 0) continue;
        kvp_run_values(&runs[i], hd, io->s + off, io->nq, io->lds, io->y, io->kscr);
        off += runs[i].n;
    }
}

int kvp_sel_attend(const kvp_rows *runs, int n_runs, int hd, const kvp_attn_io *io) {
    if (io->buf && kvp_runs_have_kq(runs, n_runs)) return kvp_sel_attend_gathered(runs, n_runs, hd, io);
    int total = kvp_runs_scores(runs, n_runs, hd, io);
    kvp_runs_mask(runs, n_runs, io);
    for (int j = 0; j < io->nq; j++) kvp_softmax(io->s + (size_t)j * io->lds, total);
    kvp_runs_values(runs, n_runs, hd, io);
    return total;
}
