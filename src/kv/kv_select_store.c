/*
 * kv_select_store.c: the token store of F32 or F16 rows (select.h). Each (layer, KV head)
 * stream is a dense array of slots in ascending position order: appending writes at the
 * end, compaction moves the kept slots down in order (one memmove per kept run), and the
 * whole stream is one kvp_rows run for the attention. A stream grows by doubling, which
 * copies that stream only; in steady state it holds its budget plus one step's tokens and
 * stops growing.
 */
#include <stdlib.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "kv/select.h"

typedef struct {
    kvp_tstore base;
    int type;
    size_t esz; /* bytes per value */
} kvp_tstore_rows;

static size_t kvp_ts_row_bytes(const kvp_tstore_rows *s) { return (size_t)s->base.head_dim * s->esz; }

int kvp_tstream_grow(kvp_tstream *st, int need, size_t row_bytes, int n_aux) {
    if (need <= st->cap) return KVP_OK;
    int cap = KVP_MAX(need, KVP_MAX(64, st->cap * 2));
    size_t rb = row_bytes, na = (size_t)n_aux;
    uint8_t *k = realloc(st->k, (size_t)cap * rb), *v = k ? realloc(st->v, (size_t)cap * rb) : NULL;
    if (k) st->k = k;
    if (v) st->v = v;
    int *pos = v ? realloc(st->pos, sizeof(int) * (size_t)cap) : NULL;
    if (pos) st->pos = pos;
    float *aux = pos && na ? realloc(st->aux, sizeof(float) * (size_t)cap * na) : NULL;
    if (aux) st->aux = aux;
    if (!k || !v || !pos || (na && !aux)) return kvp_seterr(KVP_ENOMEM, "out of memory growing the token store");
    st->cap = cap;
    return KVP_OK;
}

void kvp_tstore_free_streams(kvp_tstore *ts) {
    for (int i = 0; ts->st && i < ts->n_layers * ts->n_kv_heads; i++) {
        free(ts->st[i].k);
        free(ts->st[i].v);
        free(ts->st[i].pos);
        free(ts->st[i].aux);
    }
    free(ts->st);
    ts->st = NULL;
}

static void kvp_ts_put(const kvp_tstore_rows *s, uint8_t *dst, const float *x) {
    if (s->type == KVP_TYPE_F32) memcpy(dst, x, sizeof(float) * (size_t)s->base.head_dim);
    else kvp_f32_to_f16_row(x, (uint16_t *)(void *)dst, s->base.head_dim);
}

static int kvp_ts_append(kvp_tstore *ts, int layer, int pos, int n, const float *k, const float *v) {
    kvp_tstore_rows *s = (kvp_tstore_rows *)ts;
    int hd = ts->head_dim, kvd = ts->n_kv_heads * hd;
    size_t rb = kvp_ts_row_bytes(s);
    for (int h = 0; h < ts->n_kv_heads; h++) {
        kvp_tstream *st = kvp_tstore_stream(ts, layer, h);
        KVP_TRY(kvp_tstream_grow(st, st->n + n, rb, ts->n_aux));
        for (int i = 0; i < n; i++) {
            int slot = st->n + i;
            kvp_ts_put(s, st->k + (size_t)slot * rb, k + (size_t)i * kvd + (size_t)h * hd);
            kvp_ts_put(s, st->v + (size_t)slot * rb, v + (size_t)i * kvd + (size_t)h * hd);
            st->pos[slot] = pos + i;
        }
        if (ts->n_aux) memset(st->aux + (size_t)st->n * ts->n_aux, 0, sizeof(float) * (size_t)n * ts->n_aux);
        st->n += n;
    }
    return KVP_OK;
}

static int kvp_ts_rows(const kvp_tstore *ts, int layer, int h, kvp_rows *out, int cap) {
    const kvp_tstore_rows *s = (const kvp_tstore_rows *)ts;
    const kvp_tstream *st = kvp_tstore_stream(ts, layer, h);
    if (cap < 1) return 0;
    *out = (kvp_rows){s->type == KVP_TYPE_F32 ? KVP_ROWS_F32 : KVP_ROWS_F16, st->n, st->k, st->v, NULL, NULL,
                      st->pos, 0, NULL, 0, 0};
    return 1;
}

/* Moves slots [from, from + cnt) down to `to` (to <= from). */
static void kvp_ts_move(const kvp_tstore_rows *s, kvp_tstream *st, int to, int from, int cnt) {
    if (to == from || cnt <= 0) return;
    size_t rb = kvp_ts_row_bytes(s), na = (size_t)s->base.n_aux;
    memmove(st->k + (size_t)to * rb, st->k + (size_t)from * rb, (size_t)cnt * rb);
    memmove(st->v + (size_t)to * rb, st->v + (size_t)from * rb, (size_t)cnt * rb);
    memmove(st->pos + to, st->pos + from, sizeof(int) * (size_t)cnt);
    if (na) memmove(st->aux + (size_t)to * na, st->aux + (size_t)from * na, sizeof(float) * (size_t)cnt * na);
}

static void kvp_ts_compact(kvp_tstore *ts, int layer, int h, const uint8_t *keep) {
    kvp_tstore_rows *s = (kvp_tstore_rows *)ts;
    kvp_tstream *st = kvp_tstore_stream(ts, layer, h);
    int out = 0;
    for (int i = 0; i < st->n;) {
        if (!keep[i]) {
            i++;
            continue;
        }
        int j = i;
        while (j < st->n && keep[j]) j++;
        kvp_ts_move(s, st, out, i, j - i);
        out += j - i;
        i = j;
    }
    st->n = out;
}

static void kvp_ts_read(const kvp_tstore *ts, int layer, int h, int slot, float *k, float *v) {
    const kvp_tstore_rows *s = (const kvp_tstore_rows *)ts;
    const kvp_tstream *st = kvp_tstore_stream(ts, layer, h);
    size_t rb = kvp_ts_row_bytes(s);
    if (s->type == KVP_TYPE_F32) {
        memcpy(k, st->k + (size_t)slot * rb, rb);
        memcpy(v, st->v + (size_t)slot * rb, rb);
    } else {
        kvp_f16_to_f32_row((const uint16_t *)(const void *)(st->k + (size_t)slot * rb), k, ts->head_dim);
        kvp_f16_to_f32_row((const uint16_t *)(const void *)(st->v + (size_t)slot * rb), v, ts->head_dim);
    }
}

static uint64_t kvp_ts_bytes(const kvp_tstore *ts) {
    const kvp_tstore_rows *s = (const kvp_tstore_rows *)ts;
    uint64_t per = 2 * kvp_ts_row_bytes(s) + sizeof(int) + sizeof(float) * (size_t)ts->n_aux, total = 0;
    for (int i = 0; i < ts->n_layers * ts->n_kv_heads; i++) total += per * (uint64_t)ts->st[i].n;
    return total;
}

static void kvp_ts_reset(kvp_tstore *ts) {
    for (int i = 0; i < ts->n_layers * ts->n_kv_heads; i++) ts->st[i].n = 0;
}

static void kvp_ts_free(kvp_tstore *ts) {
    if (!ts) return;
    kvp_tstore_free_streams(ts);
    free(ts);
}

static const kvp_tstore_vtbl kvp_ts_vtbl = {
    kvp_ts_append, kvp_ts_rows, kvp_ts_compact, kvp_ts_read, kvp_ts_bytes, kvp_ts_reset, kvp_ts_free,
};

int kvp_tstore_new(int type, int n_layers, int n_kv_heads, int head_dim, int n_aux, kvp_tstore **out) {
    *out = NULL;
    if (type != KVP_TYPE_F32 && type != KVP_TYPE_F16)
        return kvp_seterr(KVP_EINVAL, "the token store holds F32 or F16 rows, not %s", kvp_type_name(type));
    kvp_tstore_rows *s = calloc(1, sizeof *s);
    if (!s) return kvp_seterr(KVP_ENOMEM, "out of memory creating the token store");
    s->base = (kvp_tstore){&kvp_ts_vtbl, n_layers, n_kv_heads, head_dim, n_aux, NULL};
    s->type = type;
    s->esz = type == KVP_TYPE_F32 ? 4 : 2;
    s->base.st = calloc((size_t)n_layers * (size_t)n_kv_heads, sizeof *s->base.st);
    if (!s->base.st) {
        free(s);
        return kvp_seterr(KVP_ENOMEM, "out of memory creating the token store");
    }
    *out = &s->base;
    return KVP_OK;
}
