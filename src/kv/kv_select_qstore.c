/*
 * kv_select_qstore.c: the token store of KQ rows (select.h): the eviction cache on top of
 * the KIVI formats ("--kv k4v4 --select snapkv --budget 50%").
 *
 * A stream (layer, KV head) is, in position order, its quantized slots and its F16 slots.
 * As in KIVI, the latest tokens stay in F16 (the `recent` latest positions before the
 * current step, R = 128 by default, plus fewer than KVP_KQ_T more), and a step's own tokens
 * are F16 while they are attended; when the F16 slots outnumber R by a tile, the oldest
 * KVP_KQ_T of them become a tile (keys per channel over the tile, values per token). The
 * quantized slots are the live lanes of the stream's tiles, in order.
 *
 * Eviction (compact) clears the lanes of evicted slots: no code moves, no value changes.
 * A tile left empty is freed; two neighbouring tiles whose live lanes fit in one are merged
 * (values move exactly, keys are re-quantized once over the merged rows, within the range
 * of the old tiles' values), so memory follows the budget: at most about twice the live
 * slots in lanes. The attention sees two runs: the tiles (packed-tile kernels, dead lanes
 * dropped) and the F16 slots. bytes() counts the tiles in use (codes and parameters), the
 * F16 rows, and every slot's position and aux values.
 */
#include <stdlib.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "kv/quant.h"
#include "kv/select.h"

typedef struct {
    int nq;          /* quantized slots: the live lanes of the tiles; F16 rows hold [nq, n) */
    int nt, tcap;    /* tiles in use, allocated */
    kvp_kq_tile *t;  /* (tcap), t[i].mem owned for i < nt */
} kvp_kq_stream;

typedef struct {
    kvp_tstore base;
    kvp_kq_fmt f;
    int recent;
    kvp_kq_stream *q; /* (n_layers * n_kv_heads) */
} kvp_tstore_kq;

static size_t kvp_tq_f16_row(const kvp_tstore_kq *s) { return sizeof(uint16_t) * (size_t)s->base.head_dim; }

static kvp_kq_stream *kvp_tq_q(const kvp_tstore_kq *s, int layer, int h) {
    return &s->q[(size_t)layer * (size_t)s->base.n_kv_heads + (size_t)h];
}

static int kvp_tq_popcount(uint32_t x) { return __builtin_popcount(x); }

/* Appends a tile made from F16 rows [0, T) of the stream. */
static int kvp_tq_add_tile(const kvp_tstore_kq *s, const kvp_tstream *st, kvp_kq_stream *q) {
    int hd = s->base.head_dim, T = KVP_KQ_T;
    if (q->nt == q->tcap) {
        int cap = KVP_MAX(8, 2 * q->tcap);
        kvp_kq_tile *t = realloc(q->t, sizeof *t * (size_t)cap);
        if (!t) return kvp_seterr(KVP_ENOMEM, "out of memory growing the token store");
        q->t = t;
        q->tcap = cap;
    }
    kvp_kq_tile *t = &q->t[q->nt];
    float k[KVP_KQ_T * KVP_QHD_MAX], v[KVP_KQ_T * KVP_QHD_MAX];
    if (!(t->mem = kvp_amalloc(s->f.bytes))) return kvp_seterr(KVP_ENOMEM, "out of memory growing the token store");
    kvp_f16_to_f32_row((const uint16_t *)(const void *)st->k, k, T * hd);
    kvp_f16_to_f32_row((const uint16_t *)(const void *)st->v, v, T * hd);
    kvp_kq_tile_make(&s->f, t, k, v, T);
    q->nt++;
    return KVP_OK;
}

/* Turns the oldest F16 slots into tiles while they outnumber `recent` by a tile. */
static int kvp_tq_age(const kvp_tstore_kq *s, kvp_tstream *st, kvp_kq_stream *q) {
    size_t rb = kvp_tq_f16_row(s), T = KVP_KQ_T;
    while (st->n - q->nq >= s->recent + KVP_KQ_T) {
        KVP_TRY(kvp_tq_add_tile(s, st, q));
        memmove(st->k, st->k + T * rb, (size_t)(st->n - q->nq - KVP_KQ_T) * rb);
        memmove(st->v, st->v + T * rb, (size_t)(st->n - q->nq - KVP_KQ_T) * rb);
        q->nq += KVP_KQ_T;
    }
    return KVP_OK;
}

static int kvp_tq_append(kvp_tstore *ts, int layer, int pos, int n, const float *k, const float *v) {
    kvp_tstore_kq *s = (kvp_tstore_kq *)ts;
    int hd = ts->head_dim, kvd = ts->n_kv_heads * hd;
    size_t rb = kvp_tq_f16_row(s);
    for (int h = 0; h < ts->n_kv_heads; h++) {
        kvp_tstream *st = kvp_tstore_stream(ts, layer, h);
        kvp_kq_stream *q = kvp_tq_q(s, layer, h);
        KVP_TRY(kvp_tstream_grow(st, st->n + n, rb, ts->n_aux)); /* its F16 rows, positions, aux */
        KVP_TRY(kvp_tq_age(s, st, q));
        for (int i = 0; i < n; i++) {
            size_t row = (size_t)(st->n - q->nq + i) * rb;
            kvp_f32_to_f16_row(k + (size_t)i * kvd + (size_t)h * hd, (uint16_t *)(void *)(st->k + row), hd);
            kvp_f32_to_f16_row(v + (size_t)i * kvd + (size_t)h * hd, (uint16_t *)(void *)(st->v + row), hd);
            st->pos[st->n + i] = pos + i;
        }
        if (ts->n_aux) memset(st->aux + (size_t)st->n * ts->n_aux, 0, sizeof(float) * (size_t)n * ts->n_aux);
        st->n += n;
    }
    return KVP_OK;
}

static int kvp_tq_rows(const kvp_tstore *ts, int layer, int h, kvp_rows *out, int cap) {
    const kvp_tstore_kq *s = (const kvp_tstore_kq *)ts;
    const kvp_tstream *st = kvp_tstore_stream(ts, layer, h);
    const kvp_kq_stream *q = kvp_tq_q(s, layer, h);
    int k = 0;
    if (q->nq > 0 && k < cap)
        out[k++] = (kvp_rows){KVP_ROWS_KQ, q->nq, q->t, NULL, NULL, NULL, st->pos, 0, &s->f, q->nt, 0};
    if (st->n > q->nq && k < cap)
        out[k++] = (kvp_rows){KVP_ROWS_F16, st->n - q->nq, st->k, st->v, NULL, NULL, st->pos + q->nq, 0, NULL, 0, 0};
    return k;
}

/* Frees the empty tiles and merges neighbours whose live lanes fit in one tile. */
static void kvp_tq_tidy(const kvp_tstore_kq *s, kvp_kq_stream *q) {
    int out = 0;
    for (int i = 0; i < q->nt; i++) {
        if (!q->t[i].live) {
            kvp_afree(q->t[i].mem);
            continue;
        }
        if (out > 0 && kvp_tq_popcount(q->t[out - 1].live) + kvp_tq_popcount(q->t[i].live) <= KVP_KQ_T) {
            kvp_kq_tile_merge(&s->f, &q->t[out - 1], &q->t[i]);
            kvp_afree(q->t[i].mem);
            continue;
        }
        q->t[out++] = q->t[i];
    }
    q->nt = out;
}

/* Clears the lanes of the quantized slots whose keep mark is 0. */
static void kvp_tq_evict_lanes(kvp_kq_stream *q, const uint8_t *keep) {
    for (int i = 0, slot = 0; i < q->nt; i++)
        for (int l = 0; l < KVP_KQ_T; l++)
            if (q->t[i].live >> l & 1 && !keep[slot++]) q->t[i].live &= ~(1u << l);
}

static void kvp_tq_compact(kvp_tstore *ts, int layer, int h, const uint8_t *keep) {
    kvp_tstore_kq *s = (kvp_tstore_kq *)ts;
    kvp_tstream *st = kvp_tstore_stream(ts, layer, h);
    kvp_kq_stream *q = kvp_tq_q(s, layer, h);
    size_t na = (size_t)ts->n_aux, rb = kvp_tq_f16_row(s);
    int nq_new = 0, out = 0;
    for (int i = 0; i < q->nq; i++) nq_new += keep[i] != 0;
    kvp_tq_evict_lanes(q, keep);
    for (int i = 0; i < st->n; i++) {
        if (!keep[i]) continue;
        st->pos[out] = st->pos[i];
        if (na) memmove(st->aux + (size_t)out * na, st->aux + (size_t)i * na, sizeof(float) * na);
        if (i >= q->nq && out - nq_new != i - q->nq) {
            memmove(st->k + (size_t)(out - nq_new) * rb, st->k + (size_t)(i - q->nq) * rb, rb);
            memmove(st->v + (size_t)(out - nq_new) * rb, st->v + (size_t)(i - q->nq) * rb, rb);
        }
        out++;
    }
    st->n = out;
    q->nq = nq_new;
    kvp_tq_tidy(s, q);
}

static void kvp_tq_read(const kvp_tstore *ts, int layer, int h, int slot, float *k, float *v) {
    const kvp_tstore_kq *s = (const kvp_tstore_kq *)ts;
    const kvp_tstream *st = kvp_tstore_stream(ts, layer, h);
    const kvp_kq_stream *q = kvp_tq_q(s, layer, h);
    if (slot >= q->nq) {
        size_t row = (size_t)(slot - q->nq) * kvp_tq_f16_row(s);
        kvp_f16_to_f32_row((const uint16_t *)(const void *)(st->k + row), k, ts->head_dim);
        kvp_f16_to_f32_row((const uint16_t *)(const void *)(st->v + row), v, ts->head_dim);
        return;
    }
    int i = 0;
    while (slot >= kvp_tq_popcount(q->t[i].live)) slot -= kvp_tq_popcount(q->t[i++].live);
    int l = 0;
    for (;; l++)
        if (q->t[i].live >> l & 1 && slot-- == 0) break;
    kvp_kq_tile_read(&s->f, &q->t[i], l, k, v);
}

static uint64_t kvp_tq_bytes(const kvp_tstore *ts) {
    const kvp_tstore_kq *s = (const kvp_tstore_kq *)ts;
    uint64_t slot = sizeof(int) + sizeof(float) * (uint64_t)ts->n_aux, total = 0;
    uint64_t tile = s->f.ktile + s->f.kpar + s->f.vtile + s->f.vpar;
    for (int i = 0; i < ts->n_layers * ts->n_kv_heads; i++) {
        int n = ts->st[i].n;
        total += (uint64_t)s->q[i].nt * tile + (uint64_t)(n - s->q[i].nq) * 2 * kvp_tq_f16_row(s) + (uint64_t)n * slot;
    }
    return total;
}

static void kvp_tq_clear(kvp_kq_stream *q) {
    for (int i = 0; i < q->nt; i++) kvp_afree(q->t[i].mem);
    q->nt = q->nq = 0;
}

static void kvp_tq_reset(kvp_tstore *ts) {
    kvp_tstore_kq *s = (kvp_tstore_kq *)ts;
    for (int i = 0; i < ts->n_layers * ts->n_kv_heads; i++) {
        ts->st[i].n = 0;
        kvp_tq_clear(&s->q[i]);
    }
}

static void kvp_tq_free(kvp_tstore *ts) {
    kvp_tstore_kq *s = (kvp_tstore_kq *)ts;
    if (!ts) return;
    kvp_tstore_free_streams(ts);
    for (int i = 0; s->q && i < ts->n_layers * ts->n_kv_heads; i++) {
        kvp_tq_clear(&s->q[i]);
        free(s->q[i].t);
    }
    free(s->q);
    free(s);
}

static const kvp_tstore_vtbl kvp_tq_vtbl = {
    kvp_tq_append, kvp_tq_rows, kvp_tq_compact, kvp_tq_read, kvp_tq_bytes, kvp_tq_reset, kvp_tq_free,
};

int kvp_tstore_kq_new(int kbits, int vbits, int recent, int n_layers, int n_kv_heads, int head_dim, int n_aux,
                      kvp_tstore **out) {
    *out = NULL;
    if (head_dim > KVP_QHD_MAX)
        return kvp_seterr(KVP_EUNSUPPORTED, "quantized selection: head dimension %d exceeds %d", head_dim, KVP_QHD_MAX);
    kvp_tstore_kq *s = calloc(1, sizeof *s);
    if (!s) return kvp_seterr(KVP_ENOMEM, "out of memory creating the token store");
    s->base = (kvp_tstore){&kvp_tq_vtbl, n_layers, n_kv_heads, head_dim, n_aux, NULL};
    kvp_kq_fmt_init(&s->f, kbits, vbits, head_dim);
    s->recent = recent;
    s->base.st = calloc((size_t)n_layers * (size_t)n_kv_heads, sizeof *s->base.st);
    s->q = calloc((size_t)n_layers * (size_t)n_kv_heads, sizeof *s->q);
    if (!s->base.st || !s->q) {
        kvp_tq_free(&s->base);
        return kvp_seterr(KVP_ENOMEM, "out of memory creating the token store");
    }
    *out = &s->base;
    return KVP_OK;
}
