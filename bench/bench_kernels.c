/*
 * bench_kernels.c: a standalone benchmark of the compute kernels, single-threaded.
 *
 * Usage: bench_kernels [--isa scalar|avx2|avx512] [--quick] [FILTER]
 * Runs every section whose name contains FILTER (stream, gemm, decode, attn, quant, ops) for
 * every instruction set this CPU runs (or only --isa). Prints GFLOP/s and GB/s per case.
 *
 * "hot" cases repeat one buffer (it stays in L2 or L3); "cold" cases rotate over enough
 * copies (>= 192 MB) that every call reads from DRAM, as a real model's weights and KV cache
 * do. Each decode and attention case is printed next to a plain streaming read loop over the
 * same footprint, so "% of stream" compares the kernel with the memory it has to read.
 * Timing: batches of calls lasting >= 40 ms each; the best of 5 batches is reported.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <immintrin.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "kernels/kernels_internal.h"

static int bq_quick;

/* ---- timing ---- */

typedef void (*bench_fn)(void *ctx, int iter);

/* Seconds per call: the best of 5 batches, each batch long enough to time well. */
static double bench_time(bench_fn fn, void *ctx) {
    int reps = 1, iter = 0;
    double t;
    for (;;) { /* calibrate */
        const double t0 = kvp_now();
        for (int i = 0; i < reps; i++) fn(ctx, iter++);
        t = kvp_now() - t0;
        if (t >= 0.04 || reps >= (1 << 24)) break;
        reps = t < 1e-4 ? reps * 16 : (int)(reps * 0.05 / t) + 1;
    }
    double best = t / reps;
    const int batches = bq_quick ? 2 : t / reps > 0.5 ? 2 : 5;
    for (int b = 1; b < batches; b++) {
        const double t0 = kvp_now();
        for (int i = 0; i < reps; i++) fn(ctx, iter++);
        const double tb = (kvp_now() - t0) / reps;
        if (tb < best) best = tb;
    }
    return best;
}

static unsigned long long bq_seed = 0x9e3779b97f4a7c15ULL;
static float bq_randf(void) {
    bq_seed ^= bq_seed >> 12;
    bq_seed ^= bq_seed << 25;
    bq_seed ^= bq_seed >> 27;
    return (float)((double)((bq_seed * 0x2545F4914F6CDD1DULL) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

static void *bq_alloc(size_t bytes) {
    void *p = kvp_amalloc(bytes);
    if (!p) {
        fprintf(stderr, "bench: out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    memset(p, 0, bytes);
    return p;
}

/* ---- streaming read: the memory bandwidth a kernel is compared with ---- */

typedef struct {
    const char *buf;
    size_t bytes, copies; /* reads copy iter % copies of `bytes` each */
    uint64_t sink;
} bq_stream;

__attribute__((target("avx2"))) static uint64_t bq_read_avx2(const char *p, size_t bytes) {
    __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
    for (size_t i = 0; i + 128 <= bytes; i += 128) {
        a = _mm256_xor_si256(a, _mm256_load_si256((const __m256i *)(p + i)));
        b = _mm256_xor_si256(b, _mm256_load_si256((const __m256i *)(p + i + 32)));
        c = _mm256_xor_si256(c, _mm256_load_si256((const __m256i *)(p + i + 64)));
        d = _mm256_xor_si256(d, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    a = _mm256_xor_si256(_mm256_xor_si256(a, b), _mm256_xor_si256(c, d));
    return (uint64_t)_mm256_extract_epi64(a, 0) ^ (uint64_t)_mm256_extract_epi64(a, 3);
}

__attribute__((target("avx512f"))) static uint64_t bq_read_avx512(const char *p, size_t bytes) {
    __m512i a = _mm512_setzero_si512(), b = a, c = a, d = a;
    for (size_t i = 0; i + 256 <= bytes; i += 256) {
        a = _mm512_xor_si512(a, _mm512_load_si512(p + i));
        b = _mm512_xor_si512(b, _mm512_load_si512(p + i + 64));
        c = _mm512_xor_si512(c, _mm512_load_si512(p + i + 128));
        d = _mm512_xor_si512(d, _mm512_load_si512(p + i + 192));
    }
    a = _mm512_xor_si512(_mm512_xor_si512(a, b), _mm512_xor_si512(c, d));
    return (uint64_t)_mm512_reduce_add_epi64(a);
}

static uint64_t bq_read_c(const char *p, size_t bytes) {
    uint64_t a = 0, b = 0, c = 0, d = 0, v[4];
    for (size_t i = 0; i + 32 <= bytes; i += 32) {
        memcpy(v, p + i, 32);
        a ^= v[0], b ^= v[1], c ^= v[2], d ^= v[3];
    }
    return a ^ b ^ c ^ d;
}

static void bq_stream_run(void *ctx, int iter) {
    bq_stream *s = ctx;
    const char *p = s->buf + (size_t)(iter % (int)s->copies) * s->bytes;
    if (kvp_kernels_cpu_has("avx512")) s->sink ^= bq_read_avx512(p, s->bytes);
    else if (kvp_kernels_cpu_has("avx2")) s->sink ^= bq_read_avx2(p, s->bytes);
    else s->sink ^= bq_read_c(p, s->bytes);
}

/* Read bandwidth in GB/s over `bytes`, hot (one copy) or cold (rotating over >= 192 MB). */
static double bq_stream_gbs(size_t bytes, int cold) {
    bytes = (bytes + 255) / 256 * 256;
    size_t copies = cold ? (size_t)((192u << 20) / bytes) + 2 : 1;
    bq_stream s = {bq_alloc(bytes * copies), bytes, copies, 0};
    memset((void *)s.buf, 1, bytes * copies);
    const double t = bench_time(bq_stream_run, &s);
    kvp_afree((void *)s.buf);
    return (double)bytes / t / 1e9;
}

static void bench_stream(void) {
    printf("\n== stream: plain read loop (AVX loads, 4 independent streams), GB/s\n");
    const size_t sizes[] = {512u << 10, 1536u << 10, 3u << 20, 12u << 20, 24u << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        printf("  %8.2f MB hot   %7.1f GB/s\n", sizes[i] / 1048576.0, bq_stream_gbs(sizes[i], 0));
    printf("  %8.2f MB cold  %7.1f GB/s   (DRAM)\n", 12.0, bq_stream_gbs(12u << 20, 1));
}

/* ---- matrix multiplication ---- */

typedef struct {
    kvp_gemm_fn fn;
    int type, rows, cols, n;
    char *w;        /* copies of the weights */
    size_t wbytes;  /* bytes of one copy */
    int copies;
    void *xp;
    float *y;
} bq_gemm;

static void bq_gemm_run(void *ctx, int iter) {
    bq_gemm *g = ctx;
    g->fn(g->w + (size_t)(iter % g->copies) * g->wbytes, g->cols, g->xp, g->n, g->y, g->rows, 0, g->rows);
}

static void bq_gemm_setup(bq_gemm *g, int type, int rows, int cols, int n, int copies) {
    g->type = type, g->rows = rows, g->cols = cols, g->n = n, g->copies = copies;
    g->wbytes = (kvp_type_row_bytes(type, cols) * rows + 63) / 64 * 64;
    g->w = bq_alloc(g->wbytes * copies);
    float *row = bq_alloc(sizeof(float) * cols);
    for (int c = 0; c < copies; c++)
        for (int r = 0; r < rows; r++) {
            for (int k = 0; k < cols; k++) row[k] = bq_randf();
            kvp_quant_row(type, row, g->w + c * g->wbytes + r * kvp_type_row_bytes(type, cols), cols);
        }
    kvp_afree(row);
    float *x = bq_alloc(sizeof(float) * (size_t)n * cols);
    for (size_t i = 0; i < (size_t)n * cols; i++) x[i] = bq_randf();
    g->xp = bq_alloc(kvp_act_bytes(type, cols) * n);
    kvp_act_prepare(type, x, n, cols, g->xp);
    kvp_afree(x);
    g->y = bq_alloc(sizeof(float) * (size_t)n * rows);
}

static void bq_gemm_free(bq_gemm *g) {
    kvp_afree(g->w);
    kvp_afree(g->xp);
    kvp_afree(g->y);
}

static const int bq_types[] = {KVP_TYPE_F16, KVP_TYPE_Q8_0, KVP_TYPE_Q4_0, KVP_TYPE_BF16, KVP_TYPE_F32};

static void bench_gemm(const kvp_ktable *tabs, int nt) {
    printf("\n== gemm prefill (n tokens x rows x cols), GFLOP/s = 2*rows*cols*n / time\n");
    const struct { int rows, cols, n; } shapes[] = {{2048, 768, 512}, {768, 2048, 512}, {2048, 768, 64}};
    for (size_t ti = 0; ti < sizeof bq_types / sizeof bq_types[0]; ti++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
            bq_gemm g;
            bq_gemm_setup(&g, bq_types[ti], shapes[si].rows, shapes[si].cols, shapes[si].n, 1);
            for (int k = 0; k < nt; k++) {
                g.fn = tabs[k].gemm[g.type];
                if (!strcmp(tabs[k].isa, "scalar") && (bq_quick || si == 1)) continue; /* slow */
                const double t = bench_time(bq_gemm_run, &g);
                printf("  %-6s %-5s %5d x %5d  n %4d  %8.1f GFLOP/s  %8.2f ms\n", tabs[k].isa,
                       kvp_type_name(g.type), g.rows, g.cols, g.n,
                       2.0 * g.rows * g.cols * g.n / t / 1e9, t * 1e3);
            }
            bq_gemm_free(&g);
        }
}

static void bench_decode(const kvp_ktable *tabs, int nt) {
    printf("\n== decode matvec (n = 1): GB/s of weights read; %% of the stream loop over the same bytes\n");
    const struct { int rows, cols; } shapes[] = {{2048, 768}, {768, 2048}, {8192, 768}, {4096, 4096}};
    for (size_t ti = 0; ti < 3; ti++)
        for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
            for (int cold = 0; cold < 2; cold++) {
                const int type = bq_types[ti];
                const size_t bytes = kvp_type_row_bytes(type, shapes[si].cols) * shapes[si].rows;
                const int copies = cold ? (int)((192u << 20) / bytes) + 2 : 1;
                if (bq_quick && cold && si != 2) continue;
                bq_gemm g;
                bq_gemm_setup(&g, type, shapes[si].rows, shapes[si].cols, 1, copies);
                const double sgbs = bq_stream_gbs(bytes, cold);
                for (int k = 0; k < nt; k++) {
                    g.fn = tabs[k].gemm[type];
                    const double t = bench_time(bq_gemm_run, &g);
                    const double gbs = (double)bytes / t / 1e9;
                    printf("  %-6s %-5s %5d x %5d %-4s %6.2f MB  %7.1f GB/s  %5.1f GFLOP/s  stream %6.1f GB/s  %5.1f%%\n",
                           tabs[k].isa, kvp_type_name(type), g.rows, g.cols, cold ? "cold" : "hot",
                           bytes / 1048576.0, gbs, 2.0 * g.rows * g.cols / t / 1e9, sgbs, 100 * gbs / sgbs);
                }
                bq_gemm_free(&g);
            }
}

/* ---- attention ---- */

typedef struct {
    const kvp_ktable *kt;
    int n, hd, nq, copies;
    uint16_t *K, *V; /* copies of n x hd */
    float *Q, *S, *P, *Y;
} bq_attn;

static void bq_attn_run(void *ctx, int iter) {
    bq_attn *a = ctx;
    const size_t off = (size_t)(iter % a->copies) * a->n * a->hd;
    a->kt->attn_scores_f16(a->K + off, a->n, a->hd, a->Q, a->nq, a->hd, 0.125f, a->S, a->n);
    a->kt->attn_values_f16(a->Y, a->hd, a->nq, a->P, a->n, a->V + off, a->n, a->hd);
}

static void bench_attn(const kvp_ktable *tabs, int nt) {
    printf("\n== attention F16: scores + values over n cached rows, nq query heads per KV head\n");
    printf("   GB/s of K and V read; %% of the stream loop over the same bytes\n");
    const struct { int n, hd, nq; } shapes[] = {{4096, 64, 3}, {4096, 128, 4}, {4096, 64, 8}, {512, 64, 3}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int cold = 0; cold < 2; cold++) {
            bq_attn a;
            a.n = shapes[si].n, a.hd = shapes[si].hd, a.nq = shapes[si].nq;
            const size_t kvbytes = (size_t)a.n * a.hd * 2;
            a.copies = cold ? (int)((96u << 20) / kvbytes) + 2 : 1;
            if (bq_quick && cold && si) continue;
            a.K = bq_alloc(kvbytes * a.copies);
            a.V = bq_alloc(kvbytes * a.copies);
            for (size_t i = 0; i < (size_t)a.n * a.hd * a.copies; i++) {
                a.K[i] = kvp_f32_to_f16(bq_randf());
                a.V[i] = kvp_f32_to_f16(bq_randf());
            }
            a.Q = bq_alloc(sizeof(float) * a.nq * a.hd);
            a.S = bq_alloc(sizeof(float) * a.nq * a.n);
            a.P = bq_alloc(sizeof(float) * a.nq * a.n);
            a.Y = bq_alloc(sizeof(float) * a.nq * a.hd);
            for (int i = 0; i < a.nq * a.hd; i++) a.Q[i] = bq_randf();
            for (int i = 0; i < a.nq * a.n; i++) a.P[i] = (bq_randf() + 1) / a.n;
            const double sgbs = bq_stream_gbs(2 * kvbytes, cold);
            for (int k = 0; k < nt; k++) {
                a.kt = &tabs[k];
                const double t = bench_time(bq_attn_run, &a);
                const double gbs = 2.0 * kvbytes / t / 1e9;
                printf("  %-6s n %5d hd %3d nq %d %-4s  %7.1f GB/s  %6.1f GFLOP/s  %8.1f us  stream %6.1f GB/s  %5.1f%%\n",
                       tabs[k].isa, a.n, a.hd, a.nq, cold ? "cold" : "hot", gbs,
                       4.0 * a.n * a.hd * a.nq / t / 1e9, t * 1e6, sgbs, 100 * gbs / sgbs);
            }
            kvp_afree(a.K), kvp_afree(a.V), kvp_afree(a.Q), kvp_afree(a.S), kvp_afree(a.P), kvp_afree(a.Y);
        }
}

/* ---- activation quantization and layer ops ---- */

typedef struct {
    const kvp_ktable *kt;
    float *x, *w, *out;
    void *q;
    int n;
} bq_vec;

static void bq_quant_run(void *ctx, int iter) {
    bq_vec *v = ctx;
    v->kt->quant_q8_0(v->x, v->q, v->n);
}
static void bq_softmax_run(void *ctx, int iter) {
    bq_vec *v = ctx;
    memcpy(v->out, v->x, sizeof(float) * v->n);
    v->kt->softmax(v->out, v->n);
}
static void bq_rmsnorm_run(void *ctx, int iter) {
    bq_vec *v = ctx;
    kvp_rmsnorm(v->out, v->x, v->w, v->n, 1e-5f);
}
static void bq_swiglu_run(void *ctx, int iter) {
    bq_vec *v = ctx;
    kvp_swiglu(v->out, v->x, v->w, v->n);
}

static void bench_ops(const kvp_ktable *tabs, int nt) {
    printf("\n== activation quantization (Q8_0) and layer ops, n = 4096 floats (rmsnorm and swiglu\n"
           "   are portable C, the same for every ISA)\n");
    bq_vec v;
    v.n = 4096;
    v.x = bq_alloc(sizeof(float) * v.n);
    v.w = bq_alloc(sizeof(float) * v.n);
    v.out = bq_alloc(sizeof(float) * v.n);
    v.q = bq_alloc(kvp_type_row_bytes(KVP_TYPE_Q8_0, v.n));
    for (int i = 0; i < v.n; i++) v.x[i] = 8 * bq_randf(), v.w[i] = bq_randf();
    for (int k = 0; k < nt; k++) {
        v.kt = &tabs[k];
        const double t = bench_time(bq_quant_run, &v);
        printf("  %-6s quant Q8_0      %8.2f us  %6.1f GB/s of floats\n", tabs[k].isa, t * 1e6, 4.0 * v.n / t / 1e9);
    }
    for (int k = 0; k < nt; k++) {
        v.kt = &tabs[k];
        const double t = bench_time(bq_softmax_run, &v);
        printf("  %-6s softmax         %8.2f us  %6.2f ns/value (with a copy)\n", tabs[k].isa, t * 1e6, t * 1e9 / v.n);
    }
    double t = bench_time(bq_rmsnorm_run, &v);
    printf("  -      rmsnorm         %8.2f us  %6.2f ns/value\n", t * 1e6, t * 1e9 / v.n);
    t = bench_time(bq_swiglu_run, &v);
    printf("  -      swiglu          %8.2f us  %6.2f ns/value\n", t * 1e6, t * 1e9 / v.n);
    kvp_afree(v.x), kvp_afree(v.w), kvp_afree(v.out), kvp_afree(v.q);
}

int main(int argc, char **argv) {
    const char *only = NULL, *filter = "";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--isa") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--quick")) bq_quick = 1;
        else filter = argv[i];
    }
    kvp_ktable tabs[3];
    int nt = 0;
    const char *names[3] = {"scalar", "avx2", "avx512"};
    for (int i = 0; i < 3; i++) {
        if (only && strcmp(only, names[i])) continue;
        if (kvp_ktable_build(names[i], &tabs[nt]) == 0) nt++;
    }
    if (!nt) {
        fprintf(stderr, "bench: no usable instruction set%s%s\n", only ? " named " : "", only ? only : "");
        return 1;
    }
    printf("kvpack kernel benchmark, single thread; default kernels: %s\n", kvp_kernels_isa());
    if (!*filter || strstr("stream", filter)) bench_stream();
    if (!*filter || strstr("gemm", filter)) bench_gemm(tabs, nt);
    if (!*filter || strstr("decode", filter)) bench_decode(tabs, nt);
    if (!*filter || strstr("attn", filter)) bench_attn(tabs, nt);
    if (!*filter || strstr("quant ops", filter)) bench_ops(tabs, nt);
    return 0;
}
