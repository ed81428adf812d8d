/*
 * kvq.h: kernels for attention directly on packed low-bit KV tiles (KIVI, MiKV).
 *
 * Codes. A quantized key or value is an unsigned code of b bits (b = 2, 3, 4 or 8). Codes
 * are stored in units of 32 codes, unit_bytes(b) = 4b bytes each; inside a unit code k is
 *   b = 8: byte k
 *   b = 4: byte k & 15 (k < 16) or byte (k - 16) >> 4
 *   b = 2: bits 2i, 2i+1 of byte k % 8, i = k / 8
 *   b = 3: its low two bits as b = 2 in bytes 0..7, its high bit as bit k of bytes 8..11
 * so that SIMD code turns a unit into 32 bytes with a shift and a mask. 8-bit value codes
 * are stored as signed bytes (code - 128, see the value tile below).
 *
 * Key tile (lanes are tokens). n_tok tokens (a multiple of 16) by 4 * n_rows channels.
 * Row r holds channels 4r .. 4r + 3 of every token: unpacked, its codes are [t][i] (token
 * t, channel 4r + i), n_tok / 8 units, row_bytes = n_tok / 8 * unit_bytes apart. Codes
 * are unsigned, queries signed bytes, so one VNNI instruction (vpdpbusd) multiplies 16
 * tokens by 4 channels.
 *
 * Value tile (lanes are channels). n_rows rows of 4 tokens each; row r holds tokens
 * 4r .. 4r + 3 of every channel: unpacked, its codes are [c][i] (channel c, token 4r + i),
 * 8 channels per unit. Codes are signed bytes (b < 8 codes are small and non-negative;
 * b = 8 codes are stored minus 128), attention weights unsigned bytes.
 *
 * The integer sums are exact. Queries and attention weights enter as bytes with a float
 * scale per row (kvp_kvq_query, kvp_kvq_weights): one byte plane rounds them to 1/254
 * (queries) or 1/510 (weights) of the row's largest element, as llama.cpp's quantized
 * caches round activations to 8 bits; a second plane holding the rounding residual,
 * multiplied by the same codes, brings that to about 1/65000: attention on packed tiles
 * then equals attention over the dequantized values to float tolerance.
 *
 * Every kernel has a plain C `_ref` twin that defines its result; the AVX2 and AVX-512
 * versions are chosen at run time with the rest of the kernels (KVP_ISA lowers the choice).
 */
#ifndef KVP_KVQ_H
#define KVP_KVQ_H

#include <stddef.h>
#include <stdint.h>

#define KVP_KVQ_UNIT 32 /* codes per unit */

/* Bytes of one unit of 32 codes of `bits` bits. */
static inline size_t kvp_kvq_unit_bytes(int bits) { return (size_t)4 * (size_t)bits; }

/* Packs n_units * 32 codes (each < 2^bits; any byte for bits = 8) into units. */
void kvp_kvq_pack(const uint8_t *codes, int n_units, int bits, uint8_t *dst);
/* Unpacks n_units units into n_units * 32 bytes. */
void kvp_kvq_unpack(const uint8_t *src, int n_units, int bits, uint8_t *codes);

/* A key tile and the per-token factors of its scores (see kvp_kvq_scores). */
typedef struct kvp_kvq_ktile {
    const uint8_t *codes; /* row 0 of the tile */
    int bits, n_tok, n_rows;
    const float *a;       /* (n_tok) factor of the dot product per token, or NULL for 1 */
    const float *m;       /* (n_tok) factor of beta per token, or NULL for 1 */
} kvp_kvq_ktile;

/* Rows of 8-bit queries (or attention weights) with their float factors. */
typedef struct kvp_kvq_rows {
    const void *x;       /* (nq, ld) int8 queries or uint8 weights */
    int ld, nq;
    const float *alpha;  /* (nq) */
    const float *beta;   /* (nq) */
} kvp_kvq_rows;

/* Scores of a key tile:
 *   S[j*lds + t] (+)= alpha[j] * a[t] * dot_j(t) + beta[j] * m[t]     j < nq, t < n_tok
 *   dot_j(t) = sum over rows r and i < 4 of q[j*ld + 4r + i] * code(r, t, i)   (int32, exact)
 * with `+=` when accum, else `=`. q holds 4 * n_rows int8 per row. */
void kvp_kvq_scores(const kvp_kvq_ktile *k, const kvp_kvq_rows *q, float *S, int lds, int accum);
void kvp_kvq_scores_ref(const kvp_kvq_ktile *k, const kvp_kvq_rows *q, float *S, int lds, int accum);

/* A slice of a value tile: n_units units (channels 8u .. 8u + 7 of each) of n_rows rows. */
typedef struct kvp_kvq_vtile {
    const uint8_t *codes; /* the slice's first unit in row 0 */
    int bits, n_rows, n_units;
    size_t row_stride;    /* bytes from a row to the next */
} kvp_kvq_vtile;

/* Values of a value-tile slice, for the first n_ch <= 8 * n_units channels:
 *   Y[j*ldy + c] += alpha[j] * dot_j(c) + beta[j]                     j < nq, c < n_ch
 *   dot_j(c) = sum over rows r and i < 4 of w[j*ld + 4r + i] * code(r, c, i)   (int32, exact)
 * w holds 4 * n_rows uint8 weights per row. */
void kvp_kvq_values(const kvp_kvq_vtile *v, const kvp_kvq_rows *w, int n_ch, float *Y, int ldy);
void kvp_kvq_values_ref(const kvp_kvq_vtile *v, const kvp_kvq_rows *w, int n_ch, float *Y, int ldy);

/* Group parameters as the caches keep them, for n groups: two-level codes (sc != NULL)
 *   s[i] = d * sc[i],   m[i] = mlo + dm * mc[i] + m_add_s * s[i],   sup = {d, mlo, dm} in F16
 * or float arrays (sc == NULL): s[i] = s ? s[i] : 1, m[i] = (m ? m[i] : 1) + m_add_s * s[i].
 * m_add_s is 128 for 8-bit value codes (stored minus 128), else 0. */
typedef struct kvp_kvq_par {
    const uint8_t *sc, *mc;
    const uint16_t *sup;
    const float *s, *m;
    float m_add_s;
} kvp_kvq_par;

/* Byte rows made from float rows, with their factors: plane `x` (and, when lo is not NULL,
 * the residual plane `lo`), ld bytes apart, and per row alpha (the scale of plane x) and
 * beta (the bias). The residual plane's scale is alpha / 256 for queries, alpha / 255 for
 * weights. */
typedef struct kvp_kvq_bytes {
    void *x, *lo;
    int ld;
    float *alpha, *beta;
} kvp_kvq_bytes;

/* Quantizes nq query rows Q (ldq floats apart) for a key tile. For row j, with
 * u[c] = Q[j][c] * s[c] (c < n) and d_j = max|u| / 127: x[c] = round(u[c] / d_j) in
 * [-127, 127] (0 when u = 0); with lo, lo[c] = round((u[c] - d_j x[c]) * 256 / d_j) clamped
 * to [-127, 127]; both are 0 for c in [n, round_up(n, 4)). alpha[j] = scale * d_j and
 * beta[j] = scale * sum_c Q[j][c] * m[c]. */
void kvp_kvq_query(const float *Q, int ldq, int nq, const kvp_kvq_par *p, int n, float scale,
                   const kvp_kvq_bytes *o);
void kvp_kvq_query_ref(const float *Q, int ldq, int nq, const kvp_kvq_par *p, int n, float scale,
                       const kvp_kvq_bytes *o);

/* Quantizes nq rows of attention weights P (ldp floats apart, >= 0) for a value tile. For
 * row j, with u[t] = P[j][t] * s[t] (t < n) and d_j = max u / 255: x[t] = round(u[t] / d_j)
 * in [0, 255] without lo; with lo, x[t] = floor(u[t] / d_j) and lo[t] = round((u[t] - d_j
 * x[t]) * 255 / d_j) in [0, 255]. alpha[j] = d_j, beta[j] = sum_t P[j][t] * m[t]. */
void kvp_kvq_weights(const float *P, int ldp, int nq, const kvp_kvq_par *p, int n, const kvp_kvq_bytes *o);
void kvp_kvq_weights_ref(const float *P, int ldp, int nq, const kvp_kvq_par *p, int n, const kvp_kvq_bytes *o);

/* In-place softmax of n scores (n >= 1): x[i] = e^(x[i] - max) / sum; every x[i] = 0 when
 * the largest is -infinity. */
void kvp_kvq_softmax(float *x, int n);
void kvp_kvq_softmax_ref(float *x, int n);

/* One instruction set's kernels, for the tests (kvp_kvq_table_build) and the dispatch. */
typedef struct kvp_kvq_table {
    const char *isa;
    void (*scores)(const kvp_kvq_ktile *k, const kvp_kvq_rows *q, float *S, int lds, int accum);
    void (*values)(const kvp_kvq_vtile *v, const kvp_kvq_rows *w, int n_ch, float *Y, int ldy);
    void (*query)(const float *Q, int ldq, int nq, const kvp_kvq_par *p, int n, float scale, const kvp_kvq_bytes *o);
    void (*weights)(const float *P, int ldp, int nq, const kvp_kvq_par *p, int n, const kvp_kvq_bytes *o);
    void (*softmax)(float *x, int n);
} kvp_kvq_table;

/* Fill a table: scalar sets every entry (the `_ref` kernels), avx2 and avx512 override the
 * entries they accelerate. */
void kvp_kvq_fill_scalar(kvp_kvq_table *t);
void kvp_kvq_fill_avx2(kvp_kvq_table *t);
void kvp_kvq_fill_avx512(kvp_kvq_table *t);

/* The table of the instruction set the kernels use now (see kvp_kernels_isa()), for
 * callers that make many small calls: fetch it once per task. */
const kvp_kvq_table *kvp_kvq_current(void);

/* The table of a named instruction set: 0, KVP_EUNSUPPORTED when this CPU lacks it, or
 * KVP_EINVAL for an unknown name. */
int kvp_kvq_table_build(const char *isa, kvp_kvq_table *t);

#endif
