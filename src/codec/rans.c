/*
 * rans.c: bit I/O, histogram codes and the rANS stream framing (the per-symbol steps are
 * inline in rans.h).
 */
#include "rans.h"

#include "common/common.h"

/* ---- bit writer ---- */

void kvp_bitw_init(kvp_bitw *w, uint8_t *buf, size_t cap) {
    *w = (kvp_bitw){buf, cap, 0, 0, 0, 0};
}

/* Writes out the whole bytes of the accumulator. */
static void kvp_bitw_flush(kvp_bitw *w) {
    while (w->n >= 8) {
        if (w->pos < w->cap) w->buf[w->pos++] = (uint8_t)w->acc;
        else w->overflow = 1;
        w->acc >>= 8;
        w->n -= 8;
    }
}

void kvp_bitw_put(kvp_bitw *w, uint32_t v, int nbits) {
    if (nbits <= 0) return;
    w->acc |= (uint64_t)(nbits == 32 ? v : v & ((1u << nbits) - 1)) << w->n;
    w->n += nbits;
    kvp_bitw_flush(w);
}

void kvp_bitw_put_sexp(kvp_bitw *w, int64_t v) {
    uint64_t u = (uint64_t)kvp_zigzag(v) + 1; /* >= 1; zigzag of an in-range value fits 32 bits */
    int len = 63 - __builtin_clzll(u);        /* bits below the top one */
    kvp_bitw_put(w, 0, len);                  /* len zeros, then u itself (top bit first is a 1) */
    kvp_bitw_put(w, 1, 1);
    if (len > 32) {
        kvp_bitw_put(w, (uint32_t)u, 32);
        kvp_bitw_put(w, (uint32_t)(u >> 32), len - 32);
    } else {
        kvp_bitw_put(w, (uint32_t)u, len);
    }
}

size_t kvp_bitw_finish(kvp_bitw *w) {
    w->n += (8 - w->n % 8) % 8; /* zero padding (kvp_bitw_put_fast may have left whole bytes) */
    kvp_bitw_flush(w);
    return w->overflow ? 0 : w->pos;
}

/* ---- bit reader ---- */

void kvp_bitr_init(kvp_bitr *r, const uint8_t *p, size_t size) {
    *r = (kvp_bitr){p, p + size, 0, 0, 0};
}

uint32_t kvp_bitr_get(kvp_bitr *r, int nbits) {
    if (nbits <= 0) return 0;
    while (r->n < nbits) {
        if (r->p < r->end) {
            r->acc |= (uint64_t)*r->p++ << r->n;
        } else {
            r->overrun = 1;
        }
        r->n += 8;
    }
    uint32_t v = (uint32_t)(nbits == 32 ? r->acc : r->acc & ((1ull << nbits) - 1));
    r->acc >>= nbits;
    r->n -= nbits;
    return v;
}

int64_t kvp_bitr_get_sexp(kvp_bitr *r) {
    int len = 0;
    while (kvp_bitr_get(r, 1) == 0) {
        if (++len > 32 || r->overrun) {
            r->overrun = 1;
            return 0;
        }
    }
    uint64_t low = len > 32 ? 0 : kvp_bitr_get(r, len);
    uint64_t u = ((uint64_t)1 << len) | low;
    return kvp_unzigzag((uint32_t)(u - 1));
}

/* ---- histograms ---- */

/* The approximate count of code k (1..63): 2^((k - 1) / 4) in 12-bit fixed point. */
static uint32_t kvp_hist_count(int k) {
    static const uint32_t base[4] = {4096, 4871, 5793, 6889}; /* 2^(j/4) * 4096, rounded */
    return base[(k - 1) & 3] << ((k - 1) >> 2);
}

/* The code whose approximate count is nearest to v in ratio (v >= 1). */
static int kvp_hist_nearest(uint64_t v) {
    int k = 1;
    while (k < KVP_HIST_CODES - 1 && kvp_hist_count(k + 1) <= v) k++;
    if (k < KVP_HIST_CODES - 1 && v * v >= (uint64_t)kvp_hist_count(k) * kvp_hist_count(k + 1)) k++;
    return k;
}

int kvp_hist_codes(const uint32_t *counts, uint8_t *codes) {
    uint64_t max = 0;
    int n = 0;
    for (int s = 0; s < KVP_SYM_MAX; s++) {
        max = KVP_MAX(max, counts[s]);
        if (counts[s]) n = s + 1;
    }
    uint64_t top = kvp_hist_count(KVP_HIST_CODES - 1);
    for (int s = 0; s < KVP_SYM_MAX; s++)
        codes[s] = counts[s] ? (uint8_t)kvp_hist_nearest(KVP_MAX(1, (counts[s] * top + max / 2) / max)) : 0;
    return n;
}

/* Makes the frequencies sum to exactly KVP_RANS_TOTAL: an excess is taken from the largest
 * frequencies (never taking a present symbol below 1), a deficit is given to the largest. */
static void kvp_hist_fix(uint32_t *freq, int n) {
    int64_t sum = 0;
    for (int s = 0; s < n; s++) sum += freq[s];
    int64_t diff = (int64_t)KVP_RANS_TOTAL - sum;
    while (diff != 0) {
        int big = 0;
        for (int s = 1; s < n; s++)
            if (freq[s] > freq[big]) big = s;
        if (diff > 0) {
            freq[big] += (uint32_t)diff;
            return;
        }
        int64_t take = KVP_MIN(-diff, (int64_t)freq[big] - 1);
        if (take <= 0) return; /* unreachable: n < KVP_RANS_TOTAL symbols always fit */
        freq[big] -= (uint32_t)take;
        diff += take;
    }
}

int kvp_hist_model(const uint8_t *codes, int n, kvp_rans_model *m) {
    uint64_t total = 0;
    memset(m, 0, sizeof *m);
    for (int s = 0; s < n; s++)
        if (codes[s]) total += kvp_hist_count(codes[s]);
    if (total == 0) return kvp_seterr(KVP_EFORMAT, "histogram has no symbol");
    for (int s = 0; s < n; s++)
        if (codes[s]) m->freq[s] = (uint32_t)KVP_MAX(1, (uint64_t)kvp_hist_count(codes[s]) * KVP_RANS_TOTAL / total);
    kvp_hist_fix(m->freq, n);
    uint32_t c = 0;
    for (int s = 0; s < KVP_SYM_MAX; s++) {
        m->cum[s] = c;
        c += m->freq[s];
    }
    return KVP_OK;
}

void kvp_hist_write(kvp_bitw *w, const uint8_t *codes, int n) {
    kvp_bitw_put(w, (uint32_t)n, 7);
    for (int s = 0; s < n; s++) kvp_bitw_put(w, codes[s], 6);
}

int kvp_hist_read(kvp_bitr *r, uint8_t *codes, int *n, int max) {
    *n = (int)kvp_bitr_get(r, 7);
    if (*n < 1 || *n > max)
        return kvp_seterr(KVP_EFORMAT, "histogram alphabet of %d symbols (valid: 1..%d)", *n, max);
    memset(codes, 0, KVP_SYM_MAX);
    for (int s = 0; s < *n; s++) codes[s] = (uint8_t)kvp_bitr_get(r, 6);
    if (r->overrun) return kvp_seterr(KVP_EFORMAT, "side information ends inside a histogram");
    if (codes[*n - 1] == 0) return kvp_seterr(KVP_EFORMAT, "histogram's last symbol %d is absent", *n - 1);
    return KVP_OK;
}

/* One symbol's slots; vectorized by gcc on request (clang vectorizes at -O2 anyway). */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic")))
#endif
static void kvp_rans_slots(uint32_t *restrict t, uint32_t base, uint32_t freq) {
    for (uint32_t j = 0; j < freq; j++) t[j] = base | (j << 20);
}

void kvp_rans_table(const kvp_rans_model *m, uint32_t *table) {
    for (int s = 0; s < KVP_SYM_MAX; s++)
        kvp_rans_slots(table + m->cum[s], (uint32_t)s | (m->freq[s] << 7), m->freq[s]);
}

/* ---- rANS framing ---- */

void kvp_rans_enc_init(kvp_rans_enc *e, uint8_t *buf, size_t cap) {
    e->lo = buf;
    e->ptr = e->end = buf + cap;
    for (int i = 0; i < KVP_RANS_LANES; i++) e->x[i] = KVP_RANS_L;
    e->overflow = 0;
}

size_t kvp_rans_enc_finish(kvp_rans_enc *e, uint8_t **start) {
    if (e->ptr - e->lo < 4 * KVP_RANS_LANES) e->overflow = 1;
    if (e->overflow) return 0;
    for (int i = KVP_RANS_LANES - 1; i >= 0; i--) {
        e->ptr -= 4;
        kvp_wr32(e->ptr, e->x[i]);
    }
    *start = e->ptr;
    return (size_t)(e->end - e->ptr);
}

int kvp_rans_dec_init(kvp_rans_dec *d, const uint8_t *p, size_t size) {
    if (size < 4 * KVP_RANS_LANES)
        return kvp_seterr(KVP_EFORMAT, "entropy stream of %zu bytes is shorter than its 16-byte state", size);
    d->p = p + 4 * KVP_RANS_LANES;
    d->end = p + size;
    d->overrun = 0;
    for (int i = 0; i < KVP_RANS_LANES; i++) {
        d->x[i] = kvp_rd32(p + 4 * i);
        if (d->x[i] < KVP_RANS_L)
            return kvp_seterr(KVP_EFORMAT, "entropy stream state %d is 0x%x, below 2^16", i, (unsigned)d->x[i]);
    }
    return KVP_OK;
}

int kvp_rans_dec_finish(const kvp_rans_dec *d) {
    if (d->overrun) return kvp_seterr(KVP_EFORMAT, "entropy stream ends before its last symbol");
    if (d->p != d->end)
        return kvp_seterr(KVP_EFORMAT, "entropy stream has %zu bytes left after its last symbol",
                          (size_t)(d->end - d->p));
    for (int i = 0; i < KVP_RANS_LANES; i++)
        if (d->x[i] != KVP_RANS_L)
            return kvp_seterr(KVP_EFORMAT, "entropy stream state %d ends at 0x%x, not 0x10000 (corrupt data)", i,
                              (unsigned)d->x[i]);
    return KVP_OK;
}
