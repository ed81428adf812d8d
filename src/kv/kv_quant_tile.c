/*
 * kv_quant_tile.c: the parts the compressed caches share: two-level group parameters,
 * packing codes into kernel tiles, the F16 window of recent tokens, and the gathering of a
 * KV head's query rows (see quant.h).
 */
#include <math.h>
#include <stdlib.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "kernels/kvq.h"
#include "kv/quant.h"

/* ---------------------------------------------------------------------------------------
 * Directed rounding to F16 (saturating at the largest finite value, 65504).
 * ------------------------------------------------------------------------------------- */

static uint16_t kvp_f16_up_pos(float y) { /* smallest F16 >= y >= 0 */
    if (!(y <= 65504.0f)) return 0x7bff;
    uint16_t h = kvp_f32_to_f16(y);
    if (kvp_f16_to_f32(h) < y) h++;
    return h > 0x7bff ? 0x7bff : h;
}

static uint16_t kvp_f16_down_pos(float y) { /* largest F16 <= y, y >= 0 */
    if (!(y <= 65504.0f)) return 0x7bff;
    uint16_t h = kvp_f32_to_f16(y);
    if (kvp_f16_to_f32(h) > y) h--;
    return h;
}

static uint16_t kvp_f16_up(float x) { return x >= 0 ? kvp_f16_up_pos(x) : (uint16_t)(kvp_f16_down_pos(-x) | 0x8000); }
static uint16_t kvp_f16_down(float x) { return x >= 0 ? kvp_f16_down_pos(x) : (uint16_t)(kvp_f16_up_pos(-x) | 0x8000); }

/* ---------------------------------------------------------------------------------------
 * Group parameters.
 * ------------------------------------------------------------------------------------- */

/* Minimum codes: m_i = mlo + dm * mc_i <= lo_i, as close below lo_i as 8 bits allow. */
static void kvp_qp_mins(const float *lo, int n, uint8_t *mc, kvp_qsuper *sp, float *m) {
    float mn = lo[0], mx = lo[0];
    for (int i = 1; i < n; i++) {
        mn = lo[i] < mn ? lo[i] : mn;
        mx = lo[i] > mx ? lo[i] : mx;
    }
    sp->mlo = kvp_f16_down(mn);
    float mlo = kvp_f16_to_f32(sp->mlo);
    sp->dm = kvp_f16_up((mx - mlo) / 255.0f);
    float dm = kvp_f16_to_f32(sp->dm);
    for (int i = 0; i < n; i++) {
        float c = dm > 0 ? floorf((lo[i] - mlo) / dm) : 0;
        int code = c < 0 ? 0 : c > 255 ? 255 : (int)c;
        while (code > 0 && mlo + dm * (float)code > lo[i]) code--;
        mc[i] = (uint8_t)code;
        m[i] = mlo + dm * (float)code;
    }
}

void kvp_qp_encode(const float *lo, const float *hi, int n, int qmax, uint8_t *sc, uint8_t *mc, kvp_qsuper *sp) {
    float m[KVP_QP_MAX], need[KVP_QP_MAX], smax = 0; /* n <= KVP_QP_MAX (checked by the caches) */
    kvp_qp_mins(lo, n, mc, sp, m);
    for (int i = 0; i < n; i++) {
        need[i] = (hi[i] - m[i]) / (float)qmax;
        smax = need[i] > smax ? need[i] : smax;
    }
    sp->d = kvp_f16_up(smax / 255.0f);
    float d = kvp_f16_to_f32(sp->d);
    for (int i = 0; i < n; i++) {
        float c = d > 0 ? ceilf(need[i] / d) : 0;
        int code = c < 0 ? 0 : c > 255 ? 255 : (int)c;
        while (code < 255 && m[i] + d * (float)code * (float)qmax < hi[i]) code++;
        sc[i] = (uint8_t)code;
    }
}

void kvp_qp_decode(const uint8_t *sc, const uint8_t *mc, const kvp_qsuper *sp, int n, float *s, float *m) {
    float d = kvp_f16_to_f32(sp->d), mlo = kvp_f16_to_f32(sp->mlo), dm = kvp_f16_to_f32(sp->dm);
    for (int i = 0; i < n; i++) {
        s[i] = d * (float)sc[i];
        m[i] = mlo + dm * (float)mc[i];
    }
}

void kvp_qp_block_put(uint8_t *par, const float *lo, const float *hi, int n, int qmax, float *s, float *m) {
    kvp_qsuper sp;
    kvp_qp_encode(lo, hi, n, qmax, par, par + n, &sp);
    memcpy(par + 2 * n, &sp, sizeof sp);
    kvp_qp_decode(par, par + n, &sp, n, s, m);
}

void kvp_qp_block_get(const uint8_t *par, int n, float *s, float *m) {
    kvp_qsuper sp;
    memcpy(&sp, par + 2 * n, sizeof sp);
    kvp_qp_decode(par, par + n, &sp, n, s, m);
}

void kvp_qp_token_f16(const float *x, int n, int qmax, uint16_t *s, uint16_t *m) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    *m = kvp_f16_down(lo);
    float mf = kvp_f16_to_f32(*m);
    *s = kvp_f16_up((hi - mf) / (float)qmax);
    while (*s < 0x7bff && mf + kvp_f16_to_f32(*s) * (float)qmax < hi) (*s)++;
}

/* ---------------------------------------------------------------------------------------
 * Tiles.
 * ------------------------------------------------------------------------------------- */

#define KVP_QT_MAX_ROW 2048 /* codes in one unpacked tile row: 4 x 512 */

size_t kvp_qt_ktile_bytes(int n_tok, int n_ch, int bits) {
    return (size_t)((n_ch + 3) / 4) * (size_t)(n_tok / 8) * kvp_kvq_unit_bytes(bits);
}

size_t kvp_qt_vrow_bytes(int n_ch, int bits) { return (size_t)((n_ch + 7) / 8) * kvp_kvq_unit_bytes(bits); }

size_t kvp_qt_vtile_bytes(int n_tok, int n_ch, int bits) { return (size_t)(n_tok / 4) * kvp_qt_vrow_bytes(n_ch, bits); }

void kvp_qt_pack_k(const uint8_t *codes, int n_ch, int n_tok, int bits, uint8_t *tile) {
    uint8_t row[KVP_QT_MAX_ROW];
    size_t row_bytes = (size_t)(n_tok / 8) * kvp_kvq_unit_bytes(bits);
    for (int r = 0; r < (n_ch + 3) / 4; r++) {
        for (int t = 0; t < n_tok; t++)
            for (int i = 0; i < 4; i++) row[t * 4 + i] = 4 * r + i < n_ch ? codes[(size_t)(4 * r + i) * n_tok + t] : 0;
        kvp_kvq_pack(row, n_tok / 8, bits, tile + (size_t)r * row_bytes);
    }
}

void kvp_qt_unpack_k(const uint8_t *tile, int n_ch, int n_tok, int bits, uint8_t *codes) {
    uint8_t row[KVP_QT_MAX_ROW];
    size_t row_bytes = (size_t)(n_tok / 8) * kvp_kvq_unit_bytes(bits);
    for (int r = 0; r < (n_ch + 3) / 4; r++) {
        kvp_kvq_unpack(tile + (size_t)r * row_bytes, n_tok / 8, bits, row);
        for (int t = 0; t < n_tok; t++)
            for (int i = 0; i < 4 && 4 * r + i < n_ch; i++) codes[(size_t)(4 * r + i) * n_tok + t] = row[t * 4 + i];
    }
}

void kvp_qt_pack_v(const uint8_t *codes, int n_tok, int n_ch, int bits, uint8_t *tile) {
    uint8_t row[KVP_QT_MAX_ROW];
    int hdp = (n_ch + 7) / 8 * 8;
    for (int r = 0; r < n_tok / 4; r++) {
        for (int c = 0; c < hdp; c++)
            for (int i = 0; i < 4; i++) row[c * 4 + i] = c < n_ch ? codes[(size_t)(4 * r + i) * n_ch + c] : 0;
        kvp_kvq_pack(row, hdp / 8, bits, tile + (size_t)r * kvp_qt_vrow_bytes(n_ch, bits));
    }
}

void kvp_qt_unpack_v(const uint8_t *tile, int n_tok, int n_ch, int bits, uint8_t *codes) {
    uint8_t row[KVP_QT_MAX_ROW];
    int hdp = (n_ch + 7) / 8 * 8;
    for (int r = 0; r < n_tok / 4; r++) {
        kvp_kvq_unpack(tile + (size_t)r * kvp_qt_vrow_bytes(n_ch, bits), hdp / 8, bits, row);
        for (int c = 0; c < n_ch; c++)
            for (int i = 0; i < 4; i++) codes[(size_t)(4 * r + i) * n_ch + c] = row[c * 4 + i];
    }
}

void kvp_qt_put_k8(uint8_t *tile, int n_ch, int n_tok, int t, const uint8_t *codes) {
    for (int c = 0; c < n_ch; c++) tile[(size_t)(c / 4) * (size_t)n_tok * 4 + (size_t)t * 4 + c % 4] = codes[c];
}

void kvp_qt_put_v8(uint8_t *tile, int n_ch, int t, const uint8_t *codes) {
    size_t row = kvp_qt_vrow_bytes(n_ch, 8);
    for (int c = 0; c < n_ch; c++) tile[(size_t)(t / 4) * row + (size_t)c * 4 + t % 4] = codes[c];
}

/* Code k (< 32) of the unit at d (layout in kvq.h). */
static int kvp_qt_unit_get(const uint8_t *d, int bits, int k) {
    switch (bits) {
    case 8: return d[k];
    case 4: return k < 16 ? d[k] & 15 : d[k - 16] >> 4;
    default: {
        int c = (d[k % 8] >> (2 * (k / 8))) & 3;
        return bits == 3 ? c | ((d[8 + k / 8] >> (k % 8)) & 1) << 2 : c;
    }
    }
}

static void kvp_qt_unit_set(uint8_t *d, int bits, int k, int code) {
    switch (bits) {
    case 8: d[k] = (uint8_t)code; break;
    case 4:
        if (k < 16) d[k] = (uint8_t)((d[k] & 0xf0) | (code & 15));
        else d[k - 16] = (uint8_t)((d[k - 16] & 0x0f) | (code & 15) << 4);
        break;
    default: {
        int sh = 2 * (k / 8);
        d[k % 8] = (uint8_t)((d[k % 8] & ~(3 << sh)) | (code & 3) << sh);
        if (bits == 3) d[8 + k / 8] = (uint8_t)((d[8 + k / 8] & ~(1 << (k % 8))) | ((code >> 2) & 1) << (k % 8));
    }
    }
}

/* The unit holding code (row r, lane index k) of a tile whose rows are row_bytes apart. */
static size_t kvp_qt_unit_off(size_t row_bytes, int bits, int r, int k) {
    return (size_t)r * row_bytes + (size_t)(k / KVP_KVQ_UNIT) * kvp_kvq_unit_bytes(bits);
}

void kvp_qt_get_k(const uint8_t *tile, int n_ch, int n_tok, int bits, int t, uint8_t *codes) {
    size_t rb = (size_t)(n_tok / 8) * kvp_kvq_unit_bytes(bits);
    for (int c = 0; c < n_ch; c++) {
        int k = t * 4 + c % 4;
        codes[c] = (uint8_t)kvp_qt_unit_get(tile + kvp_qt_unit_off(rb, bits, c / 4, k), bits, k % KVP_KVQ_UNIT);
    }
}

void kvp_qt_set_k(uint8_t *tile, int n_ch, int n_tok, int bits, int t, const uint8_t *codes) {
    size_t rb = (size_t)(n_tok / 8) * kvp_kvq_unit_bytes(bits);
    for (int c = 0; c < n_ch; c++) {
        int k = t * 4 + c % 4;
        kvp_qt_unit_set(tile + kvp_qt_unit_off(rb, bits, c / 4, k), bits, k % KVP_KVQ_UNIT, codes[c]);
    }
}

void kvp_qt_get_v(const uint8_t *tile, int n_ch, int bits, int t, uint8_t *codes) {
    size_t rb = kvp_qt_vrow_bytes(n_ch, bits);
    for (int c = 0; c < n_ch; c++) {
        int k = c * 4 + t % 4;
        codes[c] = (uint8_t)kvp_qt_unit_get(tile + kvp_qt_unit_off(rb, bits, t / 4, k), bits, k % KVP_KVQ_UNIT);
    }
}

void kvp_qt_set_v(uint8_t *tile, int n_ch, int bits, int t, const uint8_t *codes) {
    size_t rb = kvp_qt_vrow_bytes(n_ch, bits);
    for (int c = 0; c < n_ch; c++) {
        int k = c * 4 + t % 4;
        kvp_qt_unit_set(tile + kvp_qt_unit_off(rb, bits, t / 4, k), bits, k % KVP_KVQ_UNIT, codes[c]);
    }
}

/* ---------------------------------------------------------------------------------------
 * The window of recent tokens.
 * ------------------------------------------------------------------------------------- */

void kvp_qwin_init(kvp_qwin *w, int n_kv_heads, int head_dim) {
    memset(w, 0, sizeof *w);
    w->n_kv_heads = n_kv_heads;
    w->head_dim = head_dim;
}

void kvp_qwin_free(kvp_qwin *w) {
    kvp_afree(w->k);
    kvp_afree(w->v);
    w->k = w->v = NULL;
    w->cap = w->n = 0;
}

/* Moves the rows into buffers of cap rows per head. */
static int kvp_qwin_grow(kvp_qwin *w, int cap) {
    size_t hd = (size_t)w->head_dim, bytes = sizeof(uint16_t) * (size_t)w->n_kv_heads * (size_t)cap * hd;
    uint16_t *k = kvp_amalloc(bytes), *v = kvp_amalloc(bytes);
    if (!k || !v) {
        kvp_afree(k);
        kvp_afree(v);
        return kvp_seterr(KVP_ENOMEM, "out of memory growing the KV window to %d tokens", cap);
    }
    for (int h = 0; h < w->n_kv_heads && w->n > 0; h++) {
        memcpy(k + (size_t)h * cap * hd, kvp_qwin_rows(w, h, 0), sizeof(uint16_t) * (size_t)w->n * hd);
        memcpy(v + (size_t)h * cap * hd, kvp_qwin_rows(w, h, 1), sizeof(uint16_t) * (size_t)w->n * hd);
    }
    kvp_afree(w->k);
    kvp_afree(w->v);
    w->k = k;
    w->v = v;
    w->cap = cap;
    return KVP_OK;
}

int kvp_qwin_append(kvp_qwin *w, int n, const float *k, const float *v) {
    if (w->n + n > w->cap) KVP_TRY(kvp_qwin_grow(w, KVP_MAX(KVP_MAX(2 * w->cap, w->n + n), 64)));
    int hd = w->head_dim, kvd = w->n_kv_heads * hd;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < w->n_kv_heads; h++) {
            size_t off = (size_t)(w->n + i) * hd, src = (size_t)i * kvd + (size_t)h * hd;
            kvp_f32_to_f16_row(k + src, kvp_qwin_rows(w, h, 0) + off, hd);
            kvp_f32_to_f16_row(v + src, kvp_qwin_rows(w, h, 1) + off, hd);
        }
    w->n += n;
    return KVP_OK;
}

void kvp_qwin_drop(kvp_qwin *w, int m) {
    m = KVP_MIN(m, w->n);
    size_t hd = (size_t)w->head_dim;
    for (int h = 0; h < w->n_kv_heads && m > 0; h++)
        for (int val = 0; val < 2; val++) {
            uint16_t *rows = kvp_qwin_rows(w, h, val);
            memmove(rows, rows + (size_t)m * hd, sizeof(uint16_t) * (size_t)(w->n - m) * hd);
        }
    w->n -= m;
    w->start += m;
}

void kvp_qwin_get(const kvp_qwin *w, int i, float *k, float *v) {
    int hd = w->head_dim;
    for (int h = 0; h < w->n_kv_heads; h++) {
        kvp_f16_to_f32_row(kvp_qwin_rows(w, h, 0) + (size_t)i * hd, k + (size_t)h * hd, hd);
        kvp_f16_to_f32_row(kvp_qwin_rows(w, h, 1) + (size_t)i * hd, v + (size_t)h * hd, hd);
    }
}

/* ---------------------------------------------------------------------------------------
 * Query rows of a KV head.
 * ------------------------------------------------------------------------------------- */

void kvp_qa_gather(const kvp_kv_shape *s, const float *q, int h, int i0, int i1, float *Q) {
    int group = s->n_heads / s->n_kv_heads, hd = s->head_dim, qd = s->n_heads * hd;
    for (int r = 0; r < (i1 - i0) * group; r++)
        memcpy(Q + (size_t)r * hd, q + (size_t)(i0 + r / group) * qd + (size_t)(h * group + r % group) * hd,
               sizeof(float) * (size_t)hd);
}

void kvp_qa_scatter(const kvp_kv_shape *s, const float *Y, int ldy, int h, int i0, int i1, float *out) {
    int group = s->n_heads / s->n_kv_heads, hd = s->head_dim, qd = s->n_heads * hd;
    for (int r = 0; r < (i1 - i0) * group; r++)
        memcpy(out + (size_t)(i0 + r / group) * qd + (size_t)(h * group + r % group) * hd, Y + (size_t)r * ldy,
               sizeof(float) * (size_t)hd);
}
