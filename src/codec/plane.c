/*
 * plane.c: the plane encoder and decoder (see plane.h and docs/FORMAT.md, "Planes").
 */
#include <math.h>
#include <stdlib.h>

#include "common/common.h"
#include "plane.h"

/* ---- scratch ---- */

static int kvp_grow(void **p, size_t bytes) {
    void *np = realloc(*p, bytes ? bytes : 1);
    if (!np) return kvp_seterr(KVP_ENOMEM, "out of memory for codec scratch (%zu bytes)", bytes);
    *p = np;
    return KVP_OK;
}

static int kvp_plane_work_channels(kvp_plane_work *w, size_t d) {
    if (d <= w->n_channels) return KVP_OK;
    KVP_TRY(kvp_grow((void **)&w->m, d * sizeof *w->m));
    KVP_TRY(kvp_grow((void **)&w->pred, d * sizeof *w->pred));
    KVP_TRY(kvp_grow((void **)&w->mask, d * sizeof *w->mask));
    KVP_TRY(kvp_grow((void **)&w->pred32, d * sizeof *w->pred32));
    KVP_TRY(kvp_grow((void **)&w->mask32, d * sizeof *w->mask32));
    KVP_TRY(kvp_grow((void **)&w->cost, 2 * d * sizeof *w->cost));
    KVP_TRY(kvp_grow((void **)&w->mode, d));
    KVP_TRY(kvp_grow((void **)&w->cls, d));
    KVP_TRY(kvp_grow((void **)&w->state, d * sizeof *w->state));
    KVP_TRY(kvp_grow((void **)&w->tabp, d * sizeof *w->tabp));
    w->n_channels = d;
    return KVP_OK;
}

int kvp_plane_work_reserve(kvp_plane_work *w, int n, int d) {
    if (n < 1 || d < 1) return kvp_seterr(KVP_EINVAL, "plane of %d x %d values", n, d);
    size_t N = (size_t)n * (size_t)d;
    if (!w->tables) KVP_TRY(kvp_grow((void **)&w->tables, KVP_PLANE_MAX_CLASSES * KVP_RANS_TOTAL * 4));
    if (!w->sub) KVP_TRY(kvp_grow((void **)&w->sub, sizeof *w->sub * 4));
    KVP_TRY(kvp_plane_work_channels(w, (size_t)d));
    if (N <= w->n_values) return KVP_OK;
    KVP_TRY(kvp_grow((void **)&w->q, N * sizeof *w->q));
    KVP_TRY(kvp_grow((void **)&w->u, N * sizeof *w->u));
    KVP_TRY(kvp_grow((void **)&w->sym, N));
    w->rans_cap = 2 * N + 4 * KVP_RANS_LANES + 16;
    KVP_TRY(kvp_grow((void **)&w->rans, w->rans_cap));
    w->n_values = N;
    return KVP_OK;
}

int kvp_plane_work_trellis(kvp_plane_work *w, int n) {
    if ((size_t)n <= w->trellis_rows) return KVP_OK;
    KVP_TRY(kvp_grow((void **)&w->tk, sizeof *w->tk * 64 * (size_t)n));
    KVP_TRY(kvp_grow((void **)&w->tb, 8 * (size_t)n));
    w->trellis_rows = (size_t)n;
    return KVP_OK;
}

void kvp_plane_work_free(kvp_plane_work *w) {
    int ref = w->ref, width = w->width;
    void *bufs[] = {w->q, w->u, w->sym, w->rans, w->m, w->pred, w->mask, w->pred32, w->mask32, w->cost, w->mode, w->cls, w->state, w->sub, w->tk, w->tb, w->tables, (void *)w->tabp};
    for (size_t i = 0; i < KVP_ARRAY_LEN(bufs); i++) free(bufs[i]);
    memset(w, 0, sizeof *w);
    w->ref = ref;
    w->width = width;
}

size_t kvp_plane_bound(int n, int d) {
    size_t N = (size_t)n * (size_t)d;
    size_t side = (size_t)d * 80 / 8 + KVP_PLANE_MAX_CLASSES * (7 + 6 * KVP_SYM_MAX) / 8 + 16;
    return KVP_PLANE_HEADER + side + 4 * KVP_RANS_LANES + 2 * N + 6 * N + 16;
}

/* ---- value <-> integer ---- */

/* A sign-magnitude 16-bit pattern <-> magnitude * 2 + sign, so that x and -x are neighbours
 * and a channel whose values straddle zero stays unimodal. */
static inline int32_t kvp_ord16(uint32_t h) { return (int32_t)(((h & 0x7fff) << 1) | ((h >> 15) & 1)); }
static inline uint16_t kvp_unord16(int64_t o) { return (uint16_t)(((uint32_t)o >> 1) | (((uint32_t)o & 1) << 15)); }

static inline uint32_t kvp_f32_bits(float f) {
    uint32_t b;
    memcpy(&b, &f, 4);
    return b;
}

static inline float kvp_bits_f32(uint32_t b) {
    float f;
    memcpy(&f, &b, 4);
    return f;
}

int kvp_plane_exact_kind(const float *x, size_t count) {
    for (size_t i = 0; i < count; i++)
        if (kvp_f32_bits(kvp_f16_to_f32(kvp_f32_to_f16(x[i]))) != kvp_f32_bits(x[i])) return KVP_PLANE_EXACT32;
    return KVP_PLANE_EXACT16;
}

static int kvp_plane_quantize_lossy(const float *x, size_t N, float step, int32_t *q) {
    if (!(step > 0) || !isfinite(step)) return kvp_seterr(KVP_EINVAL, "quantization step %g is not a positive number", step);
    float inv = 1.0f / step, lim = (float)KVP_PLANE_QMAX;
    for (size_t i = 0; i < N; i++) {
        if (!isfinite(x[i])) return kvp_seterr(KVP_EINVAL, "KV value %zu is not finite (%g): lossy levels need finite values", i, x[i]);
        float v = x[i] * inv;
        v = v > lim - 1 ? lim - 1 : v < -lim ? -lim : v;
        q[i] = (int32_t)lrintf(v);
    }
    return KVP_OK;
}

static int kvp_plane_quantize(const float *x, size_t N, int kind, float step, int32_t *q) {
    if (kind == KVP_PLANE_LOSSY) return kvp_plane_quantize_lossy(x, N, step, q);
    for (size_t i = 0; i < N; i++) {
        if (kind == KVP_PLANE_EXACT32) {
            q[i] = kvp_ord16(kvp_f32_bits(x[i]) >> 16);
            continue;
        }
        uint16_t h = kvp_f32_to_f16(x[i]);
        if (kvp_f32_bits(kvp_f16_to_f32(h)) != kvp_f32_bits(x[i]))
            return kvp_seterr(KVP_EINVAL, "KV value %zu (%g) is not exactly an F16", i, x[i]);
        q[i] = kvp_ord16(h);
    }
    return KVP_OK;
}

/* ---- encoder: channel modes and classes ---- */

/* Adds |row[c] - ref[c]| (both in [-QMAX, QMAX)) over rows [t0, t1) to acc (uint32: at most
 * 256 rows at a time); ref is m (stride 0) or the previous row (stride d). */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic")))
#endif
static void kvp_plane_abs_rows(const int32_t *restrict q, int t0, int t1, int d, const int32_t *restrict m,
                               int prev, uint32_t *restrict acc) {
    for (int t = t0; t < t1; t++) {
        const int32_t *row = q + (size_t)t * d, *ref = prev ? row - d : m;
        for (int c = 0; c < d; c++) {
            int32_t e = row[c] - ref[c];
            acc[c] += (uint32_t)(e < 0 ? -e : e);
        }
    }
}

/* Adds rows [t0, t1) (at most 256, values in [-QMAX, QMAX)) to acc, in wrapping 32 bits. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic")))
#endif
static void kvp_plane_sum_rows(const int32_t *restrict q, int t0, int t1, int d, uint32_t *restrict acc) {
    for (int t = t0; t < t1; t++)
        for (int c = 0; c < d; c++) acc[c] += (uint32_t)q[(size_t)t * d + c];
}

/* m_c = the rounded mean of each channel; costs of direct and delta prediction (cost[2c],
 * cost[2c + 1]), summed 256 rows at a time in 32 bits. */
static void kvp_plane_channel_costs(const int32_t *q, int n, int d, kvp_plane_work *w) {
    int32_t *m32 = w->pred32;
    uint32_t *acc = (uint32_t *)w->mask32;
    for (int c = 0; c < d; c++) w->m[c] = 0;
    for (int t0 = 0; t0 < n; t0 += 256) {
        memset(acc, 0, sizeof *acc * (size_t)d);
        kvp_plane_sum_rows(q, t0, KVP_MIN(n, t0 + 256), d, acc);
        for (int c = 0; c < d; c++) w->m[c] += (int32_t)acc[c];
    }
    for (int c = 0; c < d; c++) {
        int64_t s = w->m[c], nn = n; /* round half away from zero, in integers */
        w->m[c] = s >= 0 ? (2 * s + nn) / (2 * nn) : -((-2 * s + nn) / (2 * nn));
        m32[c] = (int32_t)w->m[c];
        w->cost[2 * c] = 0;
        w->cost[2 * c + 1] = (uint64_t)llabs(q[c] - w->m[c]);
    }
    for (int prev = 0; prev < 2; prev++)
        for (int t0 = prev; t0 < n; t0 += 256) {
            memset(acc, 0, sizeof *acc * (size_t)d);
            kvp_plane_abs_rows(q, t0, KVP_MIN(n, t0 + 256), d, m32, prev, acc);
            for (int c = 0; c < d; c++) w->cost[2 * c + prev] += acc[c];
        }
}

static int kvp_plane_cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Picks each channel's mode (the cheaper one) and splits the channels, sorted by their
 * residual size (ties by channel index), into n_classes classes of consecutive ranks.
 * Needs d <= 65536. */
static void kvp_plane_classes(int d, int n_classes, kvp_plane_work *w) {
    uint64_t *key = w->cost; /* key[c] overwrites cost[c], which channel c / 2 already read */
    for (int c = 0; c < d; c++) {
        w->mode[c] = w->cost[2 * c + 1] < w->cost[2 * c];
        uint64_t chosen = KVP_MIN(w->cost[2 * c + w->mode[c]], (1ull << 47) - 1);
        key[c] = chosen << 16 | (uint64_t)c;
    }
    qsort(key, (size_t)d, sizeof *key, kvp_plane_cmp_u64);
    for (int r = 0; r < d; r++) w->cls[key[r] & 0xffff] = (uint8_t)((int64_t)r * n_classes / d);
}

/* ---- encoder: residuals, side information, streams ---- */

/* One row's zigzag residuals against m (prev NULL) or, in delta channels (dmask -1), the
 * previous row; returns how many are 32 or more. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic")))
#endif
static uint32_t kvp_plane_residual_row(const int32_t *restrict row, const int32_t *restrict prev,
                                       const int32_t *restrict m, const int32_t *restrict dmask, uint32_t *restrict u,
                                       int d) {
    uint32_t big = 0;
    if (!prev) prev = m;
    for (int c = 0; c < d; c++) {
        int32_t pred = m[c] ^ ((m[c] ^ prev[c]) & dmask[c]);
        int32_t r = row[c] - pred; /* both in [-QMAX, QMAX) */
        uint32_t z = ((uint32_t)r << 1) ^ (uint32_t)(r >> 31);
        u[c] = z;
        big += z >= 32;
    }
    return big;
}

/* Zigzag residuals into w->u (each channel's mode and base set; the encoder keeps m_c as
 * int32 in w->pred32 and the delta masks in w->mask32); returns how many are 32 or more. */
static size_t kvp_plane_residuals(const int32_t *q, int n, int d, kvp_plane_work *w) {
    size_t big = 0;
    for (int c = 0; c < d; c++) {
        w->pred32[c] = (int32_t)w->m[c];
        w->mask32[c] = w->mode[c] ? -1 : 0;
    }
    for (int t = 0; t < n; t++) {
        const int32_t *row = q + (size_t)t * d;
        big += kvp_plane_residual_row(row, t ? row - d : NULL, w->pred32, w->mask32, w->u + (size_t)t * d, d);
    }
    return big;
}

/* The direct symbols of a plane: 64 (dbits 6) when more than 1/64 of the residuals would
 * escape to raw bits with 32, which saves the decoder those unpredictable escapes; else 32,
 * whose histograms are shorter. */
static int kvp_plane_dbits(size_t big, size_t N) { return big > N / 64 ? 6 : 5; }

/* Per-class symbol counts, in four sub-histograms by channel (c mod 4) so that runs of the
 * same symbol do not wait on each other's increments. */
static void kvp_plane_counts(size_t N, int d, int dbits, kvp_plane_work *w, uint32_t counts[][KVP_SYM_MAX]) {
    uint32_t(*sub)[KVP_PLANE_MAX_CLASSES][KVP_SYM_MAX] = w->sub;
    memset(sub, 0, sizeof *sub * 4);
    for (size_t row = 0; row < N; row += (size_t)d) {
        const uint32_t *u = w->u + row;
        for (int c = 0; c < d; c++) {
            uint32_t extra;
            int nb;
            int sym = kvp_sym_encode(u[c], dbits, &extra, &nb);
            w->sym[row + (size_t)c] = (uint8_t)sym;
            sub[c & 3][w->cls[c]][sym]++;
        }
    }
    for (int g = 0; g < KVP_PLANE_MAX_CLASSES; g++)
        for (int s = 0; s < KVP_SYM_MAX; s++) counts[g][s] = sub[0][g][s] + sub[1][g][s] + sub[2][g][s] + sub[3][g][s];
}

/* Writes the channel table and the class histograms; builds the class models. */
static int kvp_plane_side(kvp_bitw *bw, int d, int n_classes, kvp_plane_work *w,
                          uint32_t counts[][KVP_SYM_MAX]) {
    int cls_bits = n_classes > 1 ? 32 - __builtin_clz((unsigned)n_classes - 1) : 0;
    for (int c = 0; c < d; c++) {
        kvp_bitw_put(bw, w->mode[c], 1);
        kvp_bitw_put(bw, w->cls[c], cls_bits);
        kvp_bitw_put_sexp(bw, w->m[c]);
    }
    for (int g = 0; g < n_classes; g++) {
        uint8_t codes[KVP_SYM_MAX];
        int len = kvp_hist_codes(counts[g], codes);
        if (len == 0) { /* a class without values (not produced by the encoder) */
            codes[0] = 1;
            len = 1;
        }
        kvp_hist_write(bw, codes, len);
        KVP_TRY(kvp_hist_model(codes, len, &w->models[g]));
    }
    return KVP_OK;
}

/* rANS-encodes every symbol, last to first; returns the stream size (0 on overflow). */
static size_t kvp_plane_rans(int n, int d, int dbits, kvp_plane_work *w, uint8_t **start) {
    kvp_rans_enc e;
    kvp_rans_enc_init(&e, w->rans, w->rans_cap);
    size_t N = (size_t)n * (size_t)d;
    int c = (int)((N - 1) % (size_t)d);
    for (size_t i = N; i-- > 0;) {
        int s = w->sym[i];
        const kvp_rans_model *m = &w->models[w->cls[c]];
        kvp_rans_enc_put(&e, (int)(i & (KVP_RANS_LANES - 1)), m->cum[s], m->freq[s]);
        c = c == 0 ? d - 1 : c - 1;
    }
    return kvp_rans_enc_finish(&e, start);
}

/* The raw bits: each value's extra residual bits (the symbols are in w->sym), then (exact32)
 * its low 16 bits. */
static void kvp_plane_raw(kvp_bitw *bw, const float *x, size_t N, int kind, int dbits, const kvp_plane_work *w) {
    for (size_t i = 0; i < N; i++) {
        if (w->sym[i] >= 1u << dbits) {
            int nb;
            uint32_t base = kvp_sym_base(w->sym[i], dbits, &nb);
            kvp_bitw_put_fast(bw, w->u[i] - base, nb);
        }
        if (kind == KVP_PLANE_EXACT32) kvp_bitw_put(bw, kvp_f32_bits(x[i]) & 0xffff, 16);
    }
}

/* Modes, classes, residuals and per-class symbol counts of the integers in w->q; returns the
 * plane's dbits. */
/* Modes and classes of the integers in w->q, and each class' mean |residual| (from the chosen
 * modes' residual sums). */
static void kvp_plane_modes(int n, int d, int n_classes, kvp_plane_work *w, double *mean_r) {
    kvp_plane_channel_costs(w->q, n, d, w);
    double sum[KVP_PLANE_MAX_CLASSES] = {0};
    int cnt[KVP_PLANE_MAX_CLASSES] = {0};
    kvp_plane_classes(d, n_classes, w);
    for (int r = 0; r < d; r++) { /* w->cost now holds the sort keys: cost << 16 | channel */
        int c = (int)(w->cost[r] & 0xffff);
        sum[w->cls[c]] += (double)(w->cost[r] >> 16);
        cnt[w->cls[c]]++;
    }
    for (int g = 0; g < n_classes; g++) mean_r[g] = cnt[g] ? sum[g] / ((double)cnt[g] * n) : 1.0;
}

static int kvp_plane_model(int n, int d, int n_classes, kvp_plane_work *w, uint32_t counts[][KVP_SYM_MAX]) {
    size_t N = (size_t)n * (size_t)d;
    kvp_plane_channel_costs(w->q, n, d, w);
    kvp_plane_classes(d, n_classes, w);
    int dbits = kvp_plane_dbits(kvp_plane_residuals(w->q, n, d, w), N);
    kvp_plane_counts(N, d, dbits, w, counts);
    return dbits;
}

static int kvp_plane_too_small(size_t cap) {
    return kvp_seterr(KVP_ERANGE, "plane output buffer of %zu bytes is too small", cap);
}

int kvp_plane_encode(const float *x, int n, int d, int kind, float step, kvp_plane_work *w, uint8_t *out,
                     size_t cap, size_t *size) {
    if (kind < KVP_PLANE_LOSSY || kind > KVP_PLANE_TRELLIS || d > 65536)
        return kvp_seterr(KVP_EINVAL, "plane kind %d with %d channels", kind, d);
    if (cap < KVP_PLANE_HEADER) return kvp_plane_too_small(cap);
    KVP_TRY(kvp_plane_work_reserve(w, n, d));
    size_t N = (size_t)n * (size_t)d;
    int lossy = kvp_plane_is_lossy(kind);
    /* a trellis plane starts from the plain grid of either quantizer (twice the step) */
    KVP_TRY(kvp_plane_quantize(x, N, lossy ? KVP_PLANE_LOSSY : kind, lossy ? step * (kind == KVP_PLANE_TRELLIS ? 2 : 1) : 1.0f, w->q));
    int n_classes = (int)KVP_MAX(1, KVP_MIN((size_t)KVP_PLANE_MAX_CLASSES, N / KVP_PLANE_CLASS_VALUES));
    n_classes = KVP_MIN(n_classes, d);
    uint32_t counts[KVP_PLANE_MAX_CLASSES][KVP_SYM_MAX];
    if (kind == KVP_PLANE_TRELLIS) { /* residuals priced by the plain grid's modes and classes */
        double mean_r[KVP_PLANE_MAX_CLASSES];
        float tab[KVP_PLANE_MAX_CLASSES * KVP_TRELLIS_TAB];
        kvp_plane_modes(n, d, n_classes, w, mean_r);
        kvp_trellis_prices_geo(mean_r, n_classes, tab);
        KVP_TRY(kvp_trellis_quantize(x, n, d, step, KVP_TRELLIS_LAMBDA, tab, w));
    }
    int dbits = kvp_plane_model(n, d, n_classes, w, counts);
    kvp_bitw bw;
    kvp_bitw_init(&bw, out + KVP_PLANE_HEADER, cap - KVP_PLANE_HEADER);
    KVP_TRY(kvp_plane_side(&bw, d, n_classes, w, counts));
    size_t side = kvp_bitw_finish(&bw);
    uint8_t *rs = NULL;
    size_t rn = kvp_plane_rans(n, d, dbits, w, &rs);
    if (bw.overflow || !rn) return kvp_plane_too_small(cap);
    size_t at = KVP_PLANE_HEADER + side;
    if (cap - at < rn) return kvp_plane_too_small(cap);
    memcpy(out + at, rs, rn);
    at += rn;
    kvp_bitw_init(&bw, out + at, cap - at);
    kvp_plane_raw(&bw, x, N, kind, dbits, w);
    size_t raw = kvp_bitw_finish(&bw);
    if (bw.overflow) return kvp_plane_too_small(cap);
    out[0] = (uint8_t)kind;
    out[1] = (uint8_t)n_classes;
    kvp_wr16(out + 2, (uint16_t)(dbits - 5)); /* 0: 32 direct symbols, 1: 64 */
    kvp_wr32(out + 4, kvp_f32_bits(lossy ? step : 1.0f));
    kvp_wr32(out + 8, (uint32_t)side);
    kvp_wr32(out + 12, (uint32_t)rn);
    kvp_wr32(out + 16, (uint32_t)raw);
    *size = at + raw;
    return KVP_OK;
}

/* ---- decoder ---- */

typedef struct {
    int kind, n_classes, dbits;
    float step;
    size_t side, rans, raw;
} kvp_plane_head;

static int kvp_plane_read_head(const uint8_t *in, size_t size, int d, kvp_plane_head *h) {
    if (size < KVP_PLANE_HEADER) return kvp_seterr(KVP_EFORMAT, "plane of %zu bytes is shorter than its header", size);
    h->kind = in[0];
    h->n_classes = in[1];
    h->step = kvp_bits_f32(kvp_rd32(in + 4));
    h->side = kvp_rd32(in + 8);
    h->rans = kvp_rd32(in + 12);
    h->raw = kvp_rd32(in + 16);
    if (h->kind > KVP_PLANE_TRELLIS) return kvp_seterr(KVP_EFORMAT, "unknown plane kind %d", h->kind);
    if (h->n_classes < 1 || h->n_classes > KVP_MIN(KVP_PLANE_MAX_CLASSES, d))
        return kvp_seterr(KVP_EFORMAT, "plane has %d channel classes (valid: 1..%d)", h->n_classes,
                          KVP_MIN(KVP_PLANE_MAX_CLASSES, d));
    if (kvp_rd16(in + 2) > 1) return kvp_seterr(KVP_EFORMAT, "plane's symbol code %u is unknown", kvp_rd16(in + 2));
    h->dbits = 5 + kvp_rd16(in + 2);
    if (kvp_plane_is_lossy(h->kind) ? !(h->step > 0) || !isfinite(h->step) : h->step != 1.0f)
        return kvp_seterr(KVP_EFORMAT, "plane step %g is invalid for its kind %d", h->step, h->kind);
    if ((uint64_t)h->side + h->rans + h->raw != size - KVP_PLANE_HEADER)
        return kvp_seterr(KVP_EFORMAT, "plane sections (%zu + %zu + %zu bytes) do not fill its %zu bytes", h->side,
                          h->rans, h->raw, size - KVP_PLANE_HEADER);
    return KVP_OK;
}

/* A reader is done when every byte was read and the padding bits are zero. */
static int kvp_bitr_done(const kvp_bitr *r, const char *what) {
    if (r->overrun) return kvp_seterr(KVP_EFORMAT, "plane %s ends early", what);
    if (r->p != r->end || r->n >= 8 || r->acc != 0)
        return kvp_seterr(KVP_EFORMAT, "plane %s has trailing bytes or non-zero padding", what);
    return KVP_OK;
}

static int kvp_plane_read_side(const uint8_t *p, const kvp_plane_head *h, int d, kvp_plane_work *w) {
    kvp_bitr br;
    kvp_bitr_init(&br, p, h->side);
    int cls_bits = h->n_classes > 1 ? 32 - __builtin_clz((unsigned)h->n_classes - 1) : 0;
    int64_t lo = kvp_plane_is_lossy(h->kind) ? -KVP_PLANE_QMAX : 0, lim = kvp_plane_is_lossy(h->kind) ? KVP_PLANE_QMAX : 65536;
    for (int c = 0; c < d; c++) {
        w->mask[c] = kvp_bitr_get(&br, 1) ? -1 : 0;
        w->cls[c] = (uint8_t)kvp_bitr_get(&br, cls_bits);
        w->m[c] = w->pred[c] = kvp_bitr_get_sexp(&br);
        if (w->cls[c] >= h->n_classes || w->m[c] < lo || w->m[c] >= lim || br.overrun)
            return kvp_seterr(KVP_EFORMAT, "plane channel %d: class %d of %d or base %lld out of range%s", c,
                              w->cls[c], h->n_classes, (long long)w->m[c], br.overrun ? " (truncated)" : "");
    }
    for (int g = 0; g < h->n_classes; g++) {
        uint8_t codes[KVP_SYM_MAX];
        int len;
        KVP_TRY(kvp_hist_read(&br, codes, &len, kvp_sym_count(h->dbits)));
        KVP_TRY(kvp_hist_model(codes, len, &w->models[g]));
        kvp_rans_table(&w->models[g], w->tables + (size_t)g * KVP_RANS_TOTAL);
    }
    return kvp_bitr_done(&br, "side information");
}

/* Decodes one value's integer: symbol, raw bits, prediction. Sets *bad when out of range. */
static inline int64_t kvp_plane_value(kvp_rans_dec *rd, kvp_bitr *raw, const kvp_plane_work *w, int c, int lane,
                                      int dbits, int64_t *pred) {
    int sym = kvp_rans_dec_get(rd, lane, w->tabp[c]);
    uint32_t u = (uint32_t)sym;
    if (sym >= 1 << dbits) {
        int nb;
        u = kvp_sym_base(sym, dbits, &nb);
        u |= kvp_bitr_get(raw, nb);
    }
    int64_t q = *pred + kvp_unzigzag(u);
    *pred ^= (*pred ^ q) & w->mask[c];
    return q;
}

/* The fast path of lossy planes whose width is a multiple of 4, in passes. Pass 1 decodes the
 * rANS symbols of all values into w->u, value c of a row on state c % 4, the states kept in
 * registers; then the raw bits of the escape symbols are read, and row by row the residuals
 * are turned into values. Same results as the general loop (its reference twin). */
static inline uint32_t kvp_sym_one(uint32_t *x, const uint8_t **p, const uint8_t *end, int *overrun,
                                   const uint32_t *table) {
    uint32_t s = *x, ent = table[s & (KVP_RANS_TOTAL - 1)];
    s = ((ent >> 7) & 0x1fff) * (s >> KVP_RANS_BITS) + (ent >> 20);
    if (s < KVP_RANS_L) {
        if (end - *p >= 2) {
            s = (s << 16) | kvp_rd16(*p);
            *p += 2;
        } else {
            *overrun = 1;
            s = (s << 16) | 0x8000u;
        }
    }
    *x = s;
    return ent & 127;
}

/* Renormalizes four states that have each decoded one symbol, as the sequential decoder
 * would: the states below 2^16, in lane order, take the next 16-bit words. Branch-free; needs
 * 8 readable bytes at *p. Returns the new first state. */
static inline uint32_t kvp_renorm4(uint32_t x0, const uint8_t **p, uint32_t *x1, uint32_t *x2, uint32_t *x3) {
    uint64_t v = kvp_rd64(*p);
    uint32_t n0 = x0 < KVP_RANS_L, n1 = *x1 < KVP_RANS_L, n2 = *x2 < KVP_RANS_L, n3 = *x3 < KVP_RANS_L;
    uint32_t o1 = n0, o2 = o1 + n1, o3 = o2 + n2;
    x0 = n0 ? (x0 << 16) | (uint32_t)(v & 0xffff) : x0;
    *x1 = n1 ? (*x1 << 16) | (uint32_t)((v >> (16 * o1)) & 0xffff) : *x1;
    *x2 = n2 ? (*x2 << 16) | (uint32_t)((v >> (16 * o2)) & 0xffff) : *x2;
    *x3 = n3 ? (*x3 << 16) | (uint32_t)((v >> (16 * o3)) & 0xffff) : *x3;
    *p += 2 * (o3 + n3);
    return x0;
}

static void kvp_plane_symbols4(kvp_rans_dec *rd, int n, int d, uint32_t *u, const uint32_t **tp) {
    uint32_t x0 = rd->x[0], x1 = rd->x[1], x2 = rd->x[2], x3 = rd->x[3];
    const uint8_t *p = rd->p, *end = rd->end;
    int overrun = 0;
    for (int t = 0; t < n; t++, u += d)
        for (int c = 0; c < d; c += 4) {
            if (end - p >= 8) { /* the four states renormalize together, without branches */
                uint32_t e0 = tp[c][x0 & (KVP_RANS_TOTAL - 1)], e1 = tp[c + 1][x1 & (KVP_RANS_TOTAL - 1)];
                uint32_t e2 = tp[c + 2][x2 & (KVP_RANS_TOTAL - 1)], e3 = tp[c + 3][x3 & (KVP_RANS_TOTAL - 1)];
                x0 = ((e0 >> 7) & 0x1fff) * (x0 >> KVP_RANS_BITS) + (e0 >> 20);
                x1 = ((e1 >> 7) & 0x1fff) * (x1 >> KVP_RANS_BITS) + (e1 >> 20);
                x2 = ((e2 >> 7) & 0x1fff) * (x2 >> KVP_RANS_BITS) + (e2 >> 20);
                x3 = ((e3 >> 7) & 0x1fff) * (x3 >> KVP_RANS_BITS) + (e3 >> 20);
                x0 = kvp_renorm4(x0, &p, &x1, &x2, &x3);
                u[c] = e0 & 127, u[c + 1] = e1 & 127, u[c + 2] = e2 & 127, u[c + 3] = e3 & 127;
                continue;
            }
            u[c] = kvp_sym_one(&x0, &p, end, &overrun, tp[c]);
            u[c + 1] = kvp_sym_one(&x1, &p, end, &overrun, tp[c + 1]);
            u[c + 2] = kvp_sym_one(&x2, &p, end, &overrun, tp[c + 2]);
            u[c + 3] = kvp_sym_one(&x3, &p, end, &overrun, tp[c + 3]);
        }
    rd->x[0] = x0, rd->x[1] = x1, rd->x[2] = x2, rd->x[3] = x3;
    rd->p = p;
    rd->overrun |= overrun;
}

/* The raw bits of one row's escape symbols (>= 2^dbits), each becoming its value
 * (kvp_sym_base) with its raw bits: the branch per symbol is cheap when escapes are rare. */
static void kvp_plane_row_raw(uint32_t *u, int d, int dbits, kvp_bitr *raw) {
    for (int c = 0; c < d; c++)
        if (u[c] >= 1u << dbits) {
            int nb;
            uint32_t base = kvp_sym_base((int)u[c], dbits, &nb);
            u[c] = base | kvp_bitr_get_fast(raw, nb);
        }
}

/* The expected share of escapes in a plane, in 1/2048 units per channel summed over channels,
 * from its n_classes class models: decides between the two ways of reading raw bits. */
static uint32_t kvp_plane_escape_rate(int d, int n_classes, int dbits, const kvp_plane_work *w) {
    uint32_t cls_rate[KVP_PLANE_MAX_CLASSES], sum = 0;
    for (int g = 0; g < n_classes; g++) {
        cls_rate[g] = 0;
        for (int sym = 1 << dbits; sym < KVP_SYM_MAX; sym++) cls_rate[g] += w->models[g].freq[sym];
    }
    for (int c = 0; c < d; c++) sum += cls_rate[w->cls[c]];
    return sum;
}

/* The raw bits of the escape symbols (>= 2^dbits) among the N symbols in u, in value order:
 * their positions are gathered first without branches (into esc, N entries), so only the
 * escapes take the (unpredictable) slow path. Each becomes its value (kvp_sym_base) with its
 * raw bits. */
#if defined(__GNUC__)
__attribute__((noinline)) /* kept out of the decoding loop's code: inlined, it slowed planes without escapes */
#endif
static void kvp_plane_raw_escapes(uint32_t *u, size_t N, int dbits, uint32_t *esc, kvp_bitr *raw) {
    size_t k = 0;
    for (size_t i = 0; i < N; i++) {
        esc[k] = (uint32_t)i;
        k += u[i] >= 1u << dbits;
    }
    for (size_t j = 0; j < k; j++) {
        int nb;
        uint32_t base = kvp_sym_base((int)u[esc[j]], dbits, &nb);
        u[esc[j]] = base | kvp_bitr_get_fast(raw, nb);
    }
}

/* The values of one row, in 32-bit wrapping arithmetic: the residual is in [-2^31, 2^31) and the
 * prediction in [-QMAX, QMAX) (or the plane is already bad), so a true q outside the range
 * never wraps into it, and q + QMAX < 2^23 (unsigned) is exactly the range check. Returns
 * the OR of every q + QMAX. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic")))
#endif
static uint32_t kvp_plane_row_values(const uint32_t *restrict u, int d, float step, float *restrict out,
                                     int32_t *restrict pred, const int32_t *restrict mask) {
    uint32_t bad = 0;
    for (int c = 0; c < d; c++) {
        uint32_t r = (u[c] >> 1) ^ (0u - (u[c] & 1)), pr = (uint32_t)pred[c], q = pr + r;
        pred[c] = (int32_t)(pr ^ ((pr ^ q) & (uint32_t)mask[c]));
        bad |= q + KVP_PLANE_QMAX;
        out[c] = (float)(int32_t)q * step;
    }
    return bad;
}

/* The same for a trellis plane: each value's level follows its channel's state, which its
 * integer's parity moves (kvp_trellis_level, kvp_trellis_next), in unsigned arithmetic so
 * that a corrupt plane's wrapped integers stay defined. */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic"), target_clones("avx2", "default")))
#endif
static uint32_t kvp_plane_row_trellis(const uint32_t *restrict u, int d, float step, float *restrict out,
                                      int32_t *restrict pred, const int32_t *restrict mask,
                                      int32_t *restrict state) {
    uint32_t bad = 0;
    for (int c = 0; c < d; c++) {
        uint32_t r = (u[c] >> 1) ^ (0u - (u[c] & 1)), pr = (uint32_t)pred[c], q = pr + r;
        pred[c] = (int32_t)(pr ^ ((pr ^ q) & (uint32_t)mask[c]));
        bad |= q + KVP_PLANE_QMAX;
        uint32_t s = (uint32_t)state[c], z = 0u - (s >> 1), qi = q;
        uint32_t sg = (uint32_t)(((int32_t)qi > 0) - ((int32_t)qi < 0));
        out[c] = (float)(int32_t)(2u * qi - (sg & z)) * step;
        state[c] = (int32_t)((s >> 1) | (((s ^ qi) & 1u) << 1));
    }
    return bad;
}

/* One row of a lossy or trellis plane. */
static inline uint32_t kvp_plane_row(const kvp_plane_head *h, const uint32_t *u, int d, float *out, kvp_plane_work *w) {
    if (h->kind == KVP_PLANE_TRELLIS) return kvp_plane_row_trellis(u, d, h->step, out, w->pred32, w->mask32, w->state);
    return kvp_plane_row_values(u, d, h->step, out, w->pred32, w->mask32);
}

static uint64_t kvp_plane_lossy4(kvp_rans_dec *rd, kvp_bitr *raw, const kvp_plane_head *h, int n, int d, float *out,
                                 kvp_plane_work *w) {
    int dbits = h->dbits;
    kvp_plane_symbols4(rd, n, d, w->u, w->tabp);
    for (int c = 0; c < d; c++) {
        w->pred32[c] = (int32_t)w->pred[c]; /* m_c, in range (checked when read) */
        w->mask32[c] = (int32_t)w->mask[c];
        w->state[c] = 0;
    }
    /* frequent escapes (over 1/32 of the values, by the models): gather them first; rare: a
     * branch per value (measured on stories260K: 1/8 to 1/64 are all within a few percent) */
    int gather = kvp_plane_escape_rate(d, h->n_classes, dbits, w) > (uint32_t)d * (KVP_RANS_TOTAL / 32);
    uint32_t bad = 0;
    if (gather) {
        kvp_plane_raw_escapes(w->u, (size_t)n * (size_t)d, dbits, (uint32_t *)w->q, raw);
        for (int t = 0; t < n; t++)
            bad |= kvp_plane_row(h, w->u + (size_t)t * d, d, out + (size_t)t * d, w);
    } else {
        for (int t = 0; t < n; t++) {
            kvp_plane_row_raw(w->u + (size_t)t * d, d, dbits, raw);
            bad |= kvp_plane_row(h, w->u + (size_t)t * d, d, out + (size_t)t * d, w);
        }
    }
    return bad >> 23; /* non-zero when some q + QMAX is outside [0, 2^23), i.e. q outside [-QMAX, QMAX) */
}

/* The general loop: any width, any kind. */
static uint64_t kvp_plane_general(kvp_rans_dec *rd, kvp_bitr *raw, const kvp_plane_head *h, int n, int d, float *x,
                                  kvp_plane_work *w) {
    int64_t lo = kvp_plane_is_lossy(h->kind) ? -KVP_PLANE_QMAX : 0;
    int64_t hi = kvp_plane_is_lossy(h->kind) ? KVP_PLANE_QMAX - 1 : 65535;
    uint64_t bad = 0;
    size_t i = 0;
    memset(w->state, 0, sizeof *w->state * (size_t)d);
    for (int t = 0; t < n; t++)
        for (int c = 0; c < d; c++, i++) {
            int64_t q = kvp_plane_value(rd, raw, w, c, (int)(i & (KVP_RANS_LANES - 1)), h->dbits, &w->pred[c]);
            bad |= (uint64_t)(q - lo) > (uint64_t)(hi - lo);
            if (h->kind == KVP_PLANE_LOSSY)
                x[i] = (float)q * h->step;
            else if (h->kind == KVP_PLANE_TRELLIS) {
                x[i] = (float)kvp_trellis_level(q, w->state[c]) * h->step;
                w->state[c] = kvp_trellis_next(w->state[c], q);
            }
            else if (h->kind == KVP_PLANE_EXACT16)
                x[i] = kvp_f16_to_f32(kvp_unord16(q));
            else
                x[i] = kvp_bits_f32((uint32_t)kvp_unord16(q) << 16 | kvp_bitr_get(raw, 16));
        }
    return bad;
}

static int kvp_plane_values(const uint8_t *rs, const uint8_t *raws, const kvp_plane_head *h, int n, int d,
                            float *x, kvp_plane_work *w) {
    kvp_rans_dec rd;
    KVP_TRY(kvp_rans_dec_init(&rd, rs, h->rans));
    kvp_bitr raw;
    kvp_bitr_init(&raw, raws, h->raw);
    for (int c = 0; c < d; c++) w->tabp[c] = w->tables + (size_t)w->cls[c] * KVP_RANS_TOTAL;
    uint64_t bad = kvp_plane_is_lossy(h->kind) && d % 4 == 0 && !w->ref ? kvp_plane_lossy4(&rd, &raw, h, n, d, x, w)
                                                           : kvp_plane_general(&rd, &raw, h, n, d, x, w);
    if (bad) return kvp_seterr(KVP_EFORMAT, "plane decodes to values out of range");
    KVP_TRY(kvp_rans_dec_finish(&rd));
    return kvp_bitr_done(&raw, "raw bits");
}

int kvp_plane_decode(const uint8_t *in, size_t size, int n, int d, float *x, kvp_plane_work *w, int *kind) {
    kvp_plane_head h = {0};
    if (d > 65536) return kvp_seterr(KVP_EFORMAT, "plane of %d channels", d);
    KVP_TRY(kvp_plane_read_head(in, size, d, &h));
    KVP_TRY(kvp_plane_work_reserve(w, n, d));
    const uint8_t *p = in + KVP_PLANE_HEADER;
    KVP_TRY(kvp_plane_read_side(p, &h, d, w));
    KVP_TRY(kvp_plane_values(p + h.side, p + h.side + h.rans, &h, n, d, x, w));
    if (kind) *kind = h.kind;
    return KVP_OK;
}
