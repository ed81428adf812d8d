/*
 * kvq.c: packing of low-bit codes, the `_ref` kernels of attention on packed KV tiles
 * (they define the results; see kvq.h), and the choice of the AVX2 / AVX-512 versions,
 * which follows the instruction set of the other kernels (kvp_kernels_isa()).
 */
#include <math.h>
#include <pthread.h>
#include <string.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "kernels/kernels_internal.h"
#include "kernels/kvq.h"

/* ---------------------------------------------------------------------------------------
 * Packing.
 * ------------------------------------------------------------------------------------- */

static void kvp_kvq_pack_unit(const uint8_t *c, int bits, uint8_t *d) {
    switch (bits) {
    case 8: memcpy(d, c, 32); break;
    case 4:
        for (int k = 0; k < 16; k++) d[k] = (uint8_t)((c[k] & 15) | (c[k + 16] & 15) << 4);
        break;
    default: /* 2 and 3: the low two bits, then (3) the bit plane */
        for (int k = 0; k < 8; k++)
            d[k] = (uint8_t)((c[k] & 3) | (c[k + 8] & 3) << 2 | (c[k + 16] & 3) << 4 | (c[k + 24] & 3) << 6);
        if (bits == 3) {
            memset(d + 8, 0, 4);
            for (int k = 0; k < 32; k++) d[8 + k / 8] |= (uint8_t)(((c[k] >> 2) & 1) << (k % 8));
        }
    }
}

static void kvp_kvq_unpack_unit(const uint8_t *d, int bits, uint8_t *c) {
    switch (bits) {
    case 8: memcpy(c, d, 32); break;
    case 4:
        for (int k = 0; k < 16; k++) {
            c[k] = d[k] & 15;
            c[k + 16] = d[k] >> 4;
        }
        break;
    default:
        for (int k = 0; k < 32; k++) c[k] = (d[k % 8] >> (2 * (k / 8))) & 3;
        if (bits == 3)
            for (int k = 0; k < 32; k++) c[k] |= (uint8_t)(((d[8 + k / 8] >> (k % 8)) & 1) << 2);
    }
}

void kvp_kvq_pack(const uint8_t *codes, int n_units, int bits, uint8_t *dst) {
    for (int u = 0; u < n_units; u++)
        kvp_kvq_pack_unit(codes + (size_t)u * KVP_KVQ_UNIT, bits, dst + (size_t)u * kvp_kvq_unit_bytes(bits));
}

void kvp_kvq_unpack(const uint8_t *src, int n_units, int bits, uint8_t *codes) {
    for (int u = 0; u < n_units; u++)
        kvp_kvq_unpack_unit(src + (size_t)u * kvp_kvq_unit_bytes(bits), bits, codes + (size_t)u * KVP_KVQ_UNIT);
}

/* ---------------------------------------------------------------------------------------
 * Reference kernels.
 * ------------------------------------------------------------------------------------- */

/* Code (row r, lane l, i) of a tile whose rows hold `lanes` lanes of 4 codes. */
static int kvp_kvq_code(const uint8_t *row, int bits, int lane, int i) {
    uint8_t unit[KVP_KVQ_UNIT];
    int k = lane * 4 + i;
    kvp_kvq_unpack_unit(row + (size_t)(k / KVP_KVQ_UNIT) * kvp_kvq_unit_bytes(bits), bits, unit);
    return unit[k % KVP_KVQ_UNIT];
}

void kvp_kvq_scores_ref(const kvp_kvq_ktile *k, const kvp_kvq_rows *q, float *S, int lds, int accum) {
    size_t row_bytes = (size_t)(k->n_tok / 8) * kvp_kvq_unit_bytes(k->bits);
    for (int j = 0; j < q->nq; j++) {
        const int8_t *qj = (const int8_t *)q->x + (size_t)j * q->ld;
        for (int t = 0; t < k->n_tok; t++) {
            int32_t dot = 0;
            for (int r = 0; r < k->n_rows; r++)
                for (int i = 0; i < 4; i++) dot += qj[4 * r + i] * kvp_kvq_code(k->codes + r * row_bytes, k->bits, t, i);
            float f = (float)dot * (k->a ? k->a[t] : 1.0f);
            float v = q->alpha[j] * f + q->beta[j] * (k->m ? k->m[t] : 1.0f);
            S[(size_t)j * lds + t] = accum ? S[(size_t)j * lds + t] + v : v;
        }
    }
}

void kvp_kvq_values_ref(const kvp_kvq_vtile *v, const kvp_kvq_rows *w, int n_ch, float *Y, int ldy) {
    for (int j = 0; j < w->nq; j++) {
        const uint8_t *wj = (const uint8_t *)w->x + (size_t)j * w->ld;
        for (int c = 0; c < n_ch; c++) {
            int32_t dot = 0;
            for (int r = 0; r < v->n_rows; r++)
                for (int i = 0; i < 4; i++)
                    dot += wj[4 * r + i] * (int8_t)kvp_kvq_code(v->codes + r * v->row_stride, v->bits, c, i);
            Y[(size_t)j * ldy + c] += w->alpha[j] * (float)dot + w->beta[j];
        }
    }
}

/* s[i] and m[i] of a parameter set (kvq.h). */
static float kvp_kvq_s(const kvp_kvq_par *p, int i) {
    return p->sc ? kvp_f16_to_f32(p->sup[0]) * (float)p->sc[i] : p->s ? p->s[i] : 1.0f;
}

static float kvp_kvq_m(const kvp_kvq_par *p, int i) {
    float m = p->sc ? kvp_f16_to_f32(p->sup[1]) + kvp_f16_to_f32(p->sup[2]) * (float)p->mc[i] : p->m ? p->m[i] : 1.0f;
    return m + p->m_add_s * kvp_kvq_s(p, i);
}

/* The byte of x / d rounded to nearest within [lo, hi] (0 when d is 0). */
static int kvp_kvq_round(float x, float inv, int lo, int hi) {
    float r = nearbyintf(x * inv);
    return r < (float)lo ? lo : r > (float)hi ? hi : (int)r;
}

void kvp_kvq_query_ref(const float *Q, int ldq, int nq, const kvp_kvq_par *p, int n, float scale,
                       const kvp_kvq_bytes *o) {
    for (int j = 0; j < nq; j++) {
        const float *q = Q + (size_t)j * ldq;
        int8_t *x = (int8_t *)o->x + (size_t)j * o->ld, *lo = o->lo ? (int8_t *)o->lo + (size_t)j * o->ld : NULL;
        float amax = 0;
        double b = 0;
        for (int c = 0; c < n; c++) {
            float u = q[c] * kvp_kvq_s(p, c);
            amax = fabsf(u) > amax ? fabsf(u) : amax;
            b += (double)q[c] * kvp_kvq_m(p, c);
        }
        float d = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
        for (int c = 0; c < n; c++) {
            float u = q[c] * kvp_kvq_s(p, c);
            x[c] = (int8_t)kvp_kvq_round(u, inv, -127, 127);
            if (lo) lo[c] = (int8_t)kvp_kvq_round(u - d * (float)x[c], inv * 256.0f, -127, 127);
        }
        for (int c = n; c % 4; c++) {
            x[c] = 0;
            if (lo) lo[c] = 0;
        }
        o->alpha[j] = scale * d;
        o->beta[j] = scale * (float)b;
    }
}

void kvp_kvq_weights_ref(const float *P, int ldp, int nq, const kvp_kvq_par *p, int n, const kvp_kvq_bytes *o) {
    for (int j = 0; j < nq; j++) {
        const float *w = P + (size_t)j * ldp;
        uint8_t *x = (uint8_t *)o->x + (size_t)j * o->ld, *lo = o->lo ? (uint8_t *)o->lo + (size_t)j * o->ld : NULL;
        float umax = 0;
        double b = 0;
        for (int t = 0; t < n; t++) {
            float u = w[t] * kvp_kvq_s(p, t);
            umax = u > umax ? u : umax;
            b += (double)w[t] * kvp_kvq_m(p, t);
        }
        float d = umax / 255.0f, inv = umax > 0 ? 255.0f / umax : 0.0f;
        for (int t = 0; t < n; t++) {
            float u = w[t] * kvp_kvq_s(p, t);
            if (!lo) {
                x[t] = (uint8_t)kvp_kvq_round(u, inv, 0, 255);
                continue;
            }
            float f = floorf(u * inv);
            x[t] = (uint8_t)(f < 0 ? 0 : f > 255 ? 255 : f);
            lo[t] = (uint8_t)kvp_kvq_round(u - d * (float)x[t], inv * 255.0f, 0, 255);
        }
        o->alpha[j] = d;
        o->beta[j] = (float)b;
    }
}

void kvp_kvq_softmax_ref(float *x, int n) {
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    if (mx == -INFINITY) {
        memset(x, 0, sizeof(float) * (size_t)n);
        return;
    }
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (x[i] = expf(x[i] - mx));
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

/* ---------------------------------------------------------------------------------------
 * The portable scalar kernels: the same sums as the `_ref` twins, but each unit is unpacked
 * once for every query row (8 tokens or 8 channels at a time), for CPUs without AVX2.
 * ------------------------------------------------------------------------------------- */

#define KVP_KVQ_SC_ROWS 64 /* query rows per pass */

static void kvp_kvq_scores_sc(const kvp_kvq_ktile *k, const kvp_kvq_rows *q, float *S, int lds, int accum) {
    size_t ub = kvp_kvq_unit_bytes(k->bits), row_bytes = (size_t)(k->n_tok / 8) * ub;
    uint8_t code[KVP_KVQ_UNIT];
    int32_t acc[KVP_KVQ_SC_ROWS][8];
    for (int j0 = 0; j0 < q->nq; j0 += KVP_KVQ_SC_ROWS) {
        int nj = KVP_MIN(KVP_KVQ_SC_ROWS, q->nq - j0);
        for (int u = 0; u < k->n_tok / 8; u++) {
            memset(acc, 0, sizeof acc);
            for (int r = 0; r < k->n_rows; r++) {
                kvp_kvq_unpack_unit(k->codes + r * row_bytes + (size_t)u * ub, k->bits, code);
                for (int j = 0; j < nj; j++) {
                    const int8_t *qr = (const int8_t *)q->x + (size_t)(j0 + j) * q->ld + 4 * r;
                    for (int t = 0; t < 8; t++)
                        acc[j][t] += qr[0] * code[4 * t] + qr[1] * code[4 * t + 1] + qr[2] * code[4 * t + 2] +
                                     qr[3] * code[4 * t + 3];
                }
            }
            for (int j = 0; j < nj; j++)
                for (int t = 0; t < 8; t++) {
                    int tt = 8 * u + t;
                    float *o = S + (size_t)(j0 + j) * lds + tt;
                    float v = q->alpha[j0 + j] * ((float)acc[j][t] * (k->a ? k->a[tt] : 1.0f)) +
                              q->beta[j0 + j] * (k->m ? k->m[tt] : 1.0f);
                    *o = accum ? *o + v : v;
                }
        }
    }
}

static void kvp_kvq_values_sc(const kvp_kvq_vtile *v, const kvp_kvq_rows *w, int n_ch, float *Y, int ldy) {
    size_t ub = kvp_kvq_unit_bytes(v->bits);
    uint8_t code[KVP_KVQ_UNIT];
    int32_t acc[KVP_KVQ_SC_ROWS][8];
    for (int j0 = 0; j0 < w->nq; j0 += KVP_KVQ_SC_ROWS) {
        int nj = KVP_MIN(KVP_KVQ_SC_ROWS, w->nq - j0);
        for (int u = 0; u < v->n_units && 8 * u < n_ch; u++) {
            memset(acc, 0, sizeof acc);
            for (int r = 0; r < v->n_rows; r++) {
                kvp_kvq_unpack_unit(v->codes + r * v->row_stride + (size_t)u * ub, v->bits, code);
                for (int j = 0; j < nj; j++) {
                    const uint8_t *wr = (const uint8_t *)w->x + (size_t)(j0 + j) * w->ld + 4 * r;
                    for (int c = 0; c < 8; c++)
                        acc[j][c] += wr[0] * (int8_t)code[4 * c] + wr[1] * (int8_t)code[4 * c + 1] +
                                     wr[2] * (int8_t)code[4 * c + 2] + wr[3] * (int8_t)code[4 * c + 3];
                }
            }
            for (int j = 0; j < nj; j++)
                for (int c = 0; c < 8 && 8 * u + c < n_ch; c++)
                    Y[(size_t)(j0 + j) * ldy + 8 * u + c] += w->alpha[j0 + j] * (float)acc[j][c] + w->beta[j0 + j];
        }
    }
}

/* Query and weight rows with s and m decoded once per call (n <= KVP_KVQ_SC_PAR): the
 * same float operations as the `_ref` twins, so the same bytes. */
#define KVP_KVQ_SC_PAR 512

static void kvp_kvq_query_sc(const float *Q, int ldq, int nq, const kvp_kvq_par *p, int n, float scale,
                             const kvp_kvq_bytes *o) {
    float sv[KVP_KVQ_SC_PAR], mv[KVP_KVQ_SC_PAR];
    if (n > KVP_KVQ_SC_PAR) {
        kvp_kvq_query_ref(Q, ldq, nq, p, n, scale, o);
        return;
    }
    for (int c = 0; c < n; c++) sv[c] = kvp_kvq_s(p, c), mv[c] = kvp_kvq_m(p, c);
    kvp_kvq_par f = {NULL, NULL, NULL, sv, mv, 0};
    kvp_kvq_query_ref(Q, ldq, nq, &f, n, scale, o);
}

static void kvp_kvq_weights_sc(const float *P, int ldp, int nq, const kvp_kvq_par *p, int n, const kvp_kvq_bytes *o) {
    float sv[KVP_KVQ_SC_PAR], mv[KVP_KVQ_SC_PAR];
    if (n > KVP_KVQ_SC_PAR) {
        kvp_kvq_weights_ref(P, ldp, nq, p, n, o);
        return;
    }
    for (int t = 0; t < n; t++) sv[t] = kvp_kvq_s(p, t), mv[t] = kvp_kvq_m(p, t);
    kvp_kvq_par f = {NULL, NULL, NULL, sv, mv, 0};
    kvp_kvq_weights_ref(P, ldp, nq, &f, n, o);
}

/* ---------------------------------------------------------------------------------------
 * Dispatch.
 * ------------------------------------------------------------------------------------- */

/* The scalar table: the portable kernels above, the `_ref` softmax. */
void kvp_kvq_fill_scalar(kvp_kvq_table *t) {
    t->isa = "scalar";
    t->scores = kvp_kvq_scores_sc;
    t->values = kvp_kvq_values_sc;
    t->query = kvp_kvq_query_sc;
    t->weights = kvp_kvq_weights_sc;
    t->softmax = kvp_kvq_softmax_ref;
}

static kvp_kvq_table kvp_kvq_tables[3]; /* scalar, avx2, avx512 */
static pthread_once_t kvp_kvq_once = PTHREAD_ONCE_INIT;

static void kvp_kvq_init(void) {
    for (int l = 0; l < 3; l++) {
        kvp_kvq_fill_scalar(&kvp_kvq_tables[l]);
        if (l >= 1) kvp_kvq_fill_avx2(&kvp_kvq_tables[l]);
        if (l >= 2) kvp_kvq_fill_avx512(&kvp_kvq_tables[l]);
    }
}

/* The level of an instruction-set name: 0 scalar, 1 avx2, 2 avx512, -1 unknown. */
static int kvp_kvq_level(const char *isa) {
    static const char *const names[3] = {"scalar", "avx2", "avx512"};
    for (int l = 0; l < 3; l++)
        if (isa && !strcmp(isa, names[l])) return l;
    return -1;
}

/* The table of the active kernels (kvp_kernels_isa: "scalar", "avx2" or "avx512"). */
static const kvp_kvq_table *kvp_kvq_active(void) {
    pthread_once(&kvp_kvq_once, kvp_kvq_init);
    const char *isa = kvp_kernels_isa();
    return &kvp_kvq_tables[isa[0] == 's' ? 0 : isa[3] == '5' ? 2 : 1];
}

const kvp_kvq_table *kvp_kvq_current(void) { return kvp_kvq_active(); }

int kvp_kvq_table_build(const char *isa, kvp_kvq_table *t) {
    pthread_once(&kvp_kvq_once, kvp_kvq_init);
    int l = kvp_kvq_level(isa);
    if (l < 0) return kvp_seterr(KVP_EINVAL, "unknown instruction set '%s'", isa ? isa : "(null)");
    if (!kvp_kernels_cpu_has(isa)) return kvp_seterr(KVP_EUNSUPPORTED, "this CPU cannot run the %s kernels", isa);
    *t = kvp_kvq_tables[l];
    return KVP_OK;
}

void kvp_kvq_scores(const kvp_kvq_ktile *k, const kvp_kvq_rows *q, float *S, int lds, int accum) {
    if (k->n_tok > 0 && q->nq > 0) kvp_kvq_active()->scores(k, q, S, lds, accum);
}

void kvp_kvq_values(const kvp_kvq_vtile *v, const kvp_kvq_rows *w, int n_ch, float *Y, int ldy) {
    if (n_ch > 0 && w->nq > 0) kvp_kvq_active()->values(v, w, n_ch, Y, ldy);
}

void kvp_kvq_query(const float *Q, int ldq, int nq, const kvp_kvq_par *p, int n, float scale,
                   const kvp_kvq_bytes *o) {
    if (nq > 0 && n > 0) kvp_kvq_active()->query(Q, ldq, nq, p, n, scale, o);
}

void kvp_kvq_weights(const float *P, int ldp, int nq, const kvp_kvq_par *p, int n, const kvp_kvq_bytes *o) {
    if (nq > 0 && n > 0) kvp_kvq_active()->weights(P, ldp, nq, p, n, o);
}

void kvp_kvq_softmax(float *x, int n) {
    if (n > 0) kvp_kvq_active()->softmax(x, n);
}
