/*
 * quant.h: what the compressed KV caches share (internal): the KIVI and MiKV caches
 * themselves, their two-level group parameters, the packing of codes into tiles for the
 * attention kernels of src/kernels/kvq.h, the outlier control of keys (randomized Hadamard
 * rotation, per-channel balancer) and the full-precision window of recent tokens.
 * docs/kv-quant.md is the long form.
 */
#ifndef KVP_KV_QUANT_H
#define KVP_KV_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "kv/kv.h"

/* The caches (specs parsed by kvp_kv_new: "k4v4:r128:g32:rot", "mikv:l3:h7:p5:w64:r0"). */
int kvp_kv_kivi_new(const char *spec, const kvp_kv_shape *shape, kvp_pool *pool, kvp_kv **out);
int kvp_kv_mikv_new(const char *spec, const kvp_kv_shape *shape, kvp_pool *pool, kvp_kv **out);

/* ---------------------------------------------------------------------------------------
 * Group parameters. A group of values (one key channel over the tokens of a block, or one
 * token's values over 32 channels) is quantized asymmetrically: x ~ m + s * code, code in
 * [0, 2^bits - 1]. The scale s and minimum m take 16 bits together: an 8-bit scale code and
 * an 8-bit minimum code relative to three F16 "super" numbers shared by a set of groups:
 *   s = d * sc,   m = mlo + dm * mc.
 * The encoder rounds m down and s up, so that every value of a group lies in
 * [m, m + s * qmax] and no code is ever clamped: the error of a value is at most s / 2.
 * ------------------------------------------------------------------------------------- */
typedef struct kvp_qsuper {
    uint16_t d, mlo, dm; /* F16 */
} kvp_qsuper;

#define KVP_QSUPER_BYTES 6
#define KVP_QP_MAX 512  /* groups under one super triple, at most */
#define KVP_QHD_MAX 512 /* largest head dimension of the compressed caches */

/* Chooses sc[i], mc[i] and *sp for n groups with value ranges [lo[i], hi[i]] (finite), so
 * that m_i <= lo[i] and m_i + s_i * qmax >= hi[i]. */
void kvp_qp_encode(const float *lo, const float *hi, int n, int qmax, uint8_t *sc, uint8_t *mc, kvp_qsuper *sp);
/* s[i] = d * sc[i], m[i] = mlo + dm * mc[i]. */
void kvp_qp_decode(const uint8_t *sc, const uint8_t *mc, const kvp_qsuper *sp, int n, float *s, float *m);
/* A parameter block of n groups as the caches store it: the n scale codes, the n minimum codes,
 * then the kvp_qsuper (KVP_QSUPER_BYTES), 2 n + KVP_QSUPER_BYTES bytes at par (no alignment).
 * kvp_qp_block_put encodes the ranges [lo[i], hi[i]] (kvp_qp_encode) into it and decodes it back
 * into the scales s and minimums m, (n) each, that codes must be made with; kvp_qp_block_get
 * decodes a stored block into s and m. */
void kvp_qp_block_put(uint8_t *par, const float *lo, const float *hi, int n, int qmax, float *s, float *m);
void kvp_qp_block_get(const uint8_t *par, int n, float *s, float *m);

/* The code of x in a group (s, m): round((x - m) / s) clamped to [0, qmax]; 0 when s = 0. */
static inline uint8_t kvp_qp_code(float x, float s, float m, int qmax) {
    if (!(s > 0)) return 0;
    float c = (x - m) / s + 0.5f;
    return c <= 0 ? 0 : c >= (float)qmax ? (uint8_t)qmax : (uint8_t)c;
}

/* Per-token groups with their own F16 scale and minimum (MiKV's high-precision slots,
 * written one token at a time): s, m of x[0..n) for codes up to qmax. */
void kvp_qp_token_f16(const float *x, int n, int qmax, uint16_t *s, uint16_t *m);

/* ---------------------------------------------------------------------------------------
 * Tiles (layouts in src/kernels/kvq.h).
 * ------------------------------------------------------------------------------------- */

/* Bytes of a key tile of n_tok tokens and n_ch channels, and of a value tile. */
size_t kvp_qt_ktile_bytes(int n_tok, int n_ch, int bits);
size_t kvp_qt_vtile_bytes(int n_tok, int n_ch, int bits);
/* Bytes from one value-tile row (4 tokens) to the next. */
size_t kvp_qt_vrow_bytes(int n_ch, int bits);

/* Packs codes (n_ch, n_tok), channel-major, into a key tile (padding channels get code 0). */
void kvp_qt_pack_k(const uint8_t *codes, int n_ch, int n_tok, int bits, uint8_t *tile);
/* Unpacks a key tile into codes (n_ch, n_tok). */
void kvp_qt_unpack_k(const uint8_t *tile, int n_ch, int n_tok, int bits, uint8_t *codes);
/* Packs codes (n_tok, n_ch), token-major, into a value tile (codes as stored: 8-bit codes
 * minus 128). */
void kvp_qt_pack_v(const uint8_t *codes, int n_tok, int n_ch, int bits, uint8_t *tile);
void kvp_qt_unpack_v(const uint8_t *tile, int n_tok, int n_ch, int bits, uint8_t *codes);
/* Writes (or reads) the codes of one token slot t of an 8-bit tile in place. */
void kvp_qt_put_k8(uint8_t *tile, int n_ch, int n_tok, int t, const uint8_t *codes);
void kvp_qt_put_v8(uint8_t *tile, int n_ch, int t, const uint8_t *codes);

/* Reads (or writes) the codes of token slot t, one per channel (n_ch), of a key tile of
 * n_tok tokens or of a value tile, at any bit width (value codes as stored). O(n_ch): for
 * moving single tokens between slots; whole tiles go through pack and unpack. */
void kvp_qt_get_k(const uint8_t *tile, int n_ch, int n_tok, int bits, int t, uint8_t *codes);
void kvp_qt_set_k(uint8_t *tile, int n_ch, int n_tok, int bits, int t, const uint8_t *codes);
void kvp_qt_get_v(const uint8_t *tile, int n_ch, int bits, int t, uint8_t *codes);
void kvp_qt_set_v(uint8_t *tile, int n_ch, int bits, int t, const uint8_t *codes);

/* The stored byte of a value code (8-bit codes are stored signed), and back. */
static inline uint8_t kvp_qt_vstore(int code, int bits) { return (uint8_t)(bits == 8 ? code - 128 : code); }
static inline int kvp_qt_vload(uint8_t b, int bits) { return bits == 8 ? (int)(int8_t)b + 128 : (int)b; }

/* ---------------------------------------------------------------------------------------
 * Outlier control of keys: per layer and KV head, an orthogonal transform T applied to the
 * keys before they are quantized and to the queries that meet them, so q.k is unchanged.
 *   rot: T = H D, D random signs, H the normalized Walsh-Hadamard transform on blocks of
 *        power-of-two size (64 = 64, 33 = 32 + 1): outlier channels spread over the block.
 *   bal: MiKV's balancer, keys divided by b_c and queries multiplied by b_c with
 *        b_c = sqrt(max|k_c| / max|q_c|) from the statistics seen until the layer first
 *        quantizes (before that b = 1 and nothing is quantized).
 * ------------------------------------------------------------------------------------- */
enum { KVP_KX_NONE = 0, KVP_KX_ROT = 1, KVP_KX_BAL = 2 };

typedef struct kvp_kxform {
    int mode, n_layers, n_kv_heads, n_heads, head_dim;
    float *sign;     /* rot: (n_layers, n_kv_heads, head_dim) of +-1 */
    float *bal;      /* bal: (n_layers, n_kv_heads, head_dim) b */
    float *kmax, *qmax; /* bal: statistics until frozen, same shape */
    uint8_t *frozen; /* bal: (n_layers) */
} kvp_kxform;

int kvp_kx_init(kvp_kxform *x, int mode, const kvp_kv_shape *s);
void kvp_kx_free(kvp_kxform *x);
/* Bytes the transform stores (counted in the cache's statistics). */
size_t kvp_kx_bytes(const kvp_kxform *x);
/* Records keys k (n, kv_dim) and queries q (n, n_heads * head_dim) of a layer for the
 * balancer while the layer is not frozen; nothing for other modes. */
void kvp_kx_observe(kvp_kxform *x, int layer, int n, const float *k, const float *q);
/* Freezes the balancer of a layer (idempotent). */
void kvp_kx_freeze(kvp_kxform *x, int layer);
/* In place on one head's vector: a key (query = 0) or a query (query = 1) into the
 * transformed basis; kvp_kx_key_back undoes the key transform. */
void kvp_kx_apply(const kvp_kxform *x, int layer, int kv_head, float *v, int query);
void kvp_kx_key_back(const kvp_kxform *x, int layer, int kv_head, float *v);
/* Parses "none", "rot", "bal" into a mode; -1 for anything else. */
int kvp_kx_mode(const char *name);
const char *kvp_kx_name(int mode);

/* ---------------------------------------------------------------------------------------
 * The full-precision window of one layer: the most recent tokens' keys and values in F16,
 * rows (n_kv_heads, cap, head_dim), covering positions [start, start + n).
 * ------------------------------------------------------------------------------------- */
typedef struct kvp_qwin {
    int n_kv_heads, head_dim, cap, n, start;
    uint16_t *k, *v;
} kvp_qwin;

void kvp_qwin_init(kvp_qwin *w, int n_kv_heads, int head_dim);
void kvp_qwin_free(kvp_qwin *w);
/* Appends n tokens k, v (n, kv_dim) at the end, growing the buffers as needed. */
int kvp_qwin_append(kvp_qwin *w, int n, const float *k, const float *v);
/* Forgets the m oldest tokens (start += m). */
void kvp_qwin_drop(kvp_qwin *w, int m);
/* Rows of KV head h (keys, or values when val). */
static inline uint16_t *kvp_qwin_rows(const kvp_qwin *w, int h, int val) {
    return (val ? w->v : w->k) + (size_t)h * (size_t)w->cap * (size_t)w->head_dim;
}
/* Token i of the window as floats, k and v (kv_dim). */
void kvp_qwin_get(const kvp_qwin *w, int i, float *k, float *v);

/* ---------------------------------------------------------------------------------------
 * Attention helpers shared by the caches.
 * ------------------------------------------------------------------------------------- */

/* Gathers the query rows of KV head h for step queries [i0, i1) into Q (rows, head_dim):
 * row r is query i0 + r / group, head h * group + r % group. */
void kvp_qa_gather(const kvp_kv_shape *s, const float *q, int h, int i0, int i1, float *Q);
/* Scatters Y (rows, ldy) back into out (n, n_heads * head_dim). */
void kvp_qa_scatter(const kvp_kv_shape *s, const float *Y, int ldy, int h, int i0, int i1, float *out);

#endif
