/*
 * plane.h: encoding one plane, the keys (or the values) of one layer for the tokens of one
 * chunk: n rows (tokens) of d = n_kv_heads * head_dim channels. docs/FORMAT.md specifies
 * the bytes; docs/codec.md explains the choices.
 *
 * Each value becomes an integer q:
 *   - lossy:    q = round(x / step), -QMAX <= q < QMAX; it decodes to q * step, so the
 *               error is at most step / 2 (then the cache rounds to its own type).
 *   - exact16:  q = magnitude * 2 + sign of the value's F16 bits (every value must be exactly
 *               an F16), so the plane decodes bit-exact; x and -x are neighbours.
 *   - exact32:  q is formed the same way from the top 16 bits of the F32 bits; the low 16 bits
 *               are stored raw. Bit-exact for any finite or non-finite F32.
 * Each channel c predicts q from a per-channel integer m_c (mode "direct") or from the same
 * channel of the previous token (mode "delta", m_c for the first token); the residual's
 * zigzag form is entropy coded with the histogram of the channel's class. Classes group
 * channels of similar residual size (the encoder sorts channels by it), one histogram each.
 * Internal header.
 */
#ifndef KVP_CODEC_PLANE_H
#define KVP_CODEC_PLANE_H

#include <stddef.h>
#include <stdint.h>

#include "rans.h"

enum { KVP_PLANE_LOSSY = 0, KVP_PLANE_EXACT16 = 1, KVP_PLANE_EXACT32 = 2, KVP_PLANE_TRELLIS = 3 };

/* Lossy kinds: a plain grid, or the trellis (dependent quantization, trellis.c). */
static inline int kvp_plane_is_lossy(int kind) { return kind == KVP_PLANE_LOSSY || kind == KVP_PLANE_TRELLIS; }

#define KVP_PLANE_HEADER 20
#define KVP_PLANE_QMAX (1 << 22)
#define KVP_PLANE_MAX_CLASSES 8
#define KVP_PLANE_CLASS_VALUES 4096 /* the encoder makes one class per this many values, up to 8 */


/* Scratch memory for encoding and decoding planes, grown on demand and reused. */
typedef struct kvp_plane_work {
    size_t n_values, n_channels;
    int32_t *q;       /* (n_values) quantized values */
    uint32_t *u;      /* (n_values) zigzag residuals */
    uint8_t *sym;     /* (n_values) encoder: their symbols */
    uint8_t *rans;    /* (rans_cap) encoder output */
    size_t rans_cap;
    int64_t *m;       /* (n_channels) per-channel prediction base m_c */
    int64_t *pred;    /* (n_channels) decoder: the running prediction */
    int64_t *mask;    /* (n_channels) decoder: -1 for delta channels, 0 for direct */
    int32_t *pred32, *mask32; /* (n_channels) the fast path's 32-bit copies of pred and mask */
    int32_t *state;           /* (n_channels) decoder: each channel's trellis state */
    uint64_t *cost;   /* (2 n_channels) encoder: residual sizes of the two modes, then sort keys */
    uint8_t *mode, *cls;       /* (n_channels) */
    uint32_t *tables;          /* (KVP_PLANE_MAX_CLASSES, KVP_RANS_TOTAL) decoding tables */
    uint32_t (*sub)[KVP_PLANE_MAX_CLASSES][KVP_SYM_MAX]; /* (4) encoder: sub-histograms */
    const uint32_t **tabp;     /* (n_channels) decoder: each channel's table */
    kvp_rans_model models[KVP_PLANE_MAX_CLASSES];
    int32_t *tk;               /* (trellis_rows, 4, 16) encoder: the trellis' chosen integers */
    uint8_t *tb;               /* (trellis_rows, 8) encoder: its back pointers */
    size_t trellis_rows;
    int width;                 /* encoder: the trellis search's vector width, 0 for the machine's
                                * best, else 1, 8 or 16 where the CPU has it (for tests) */
    int ref;                   /* decode with the general loop (the reference twin of the fast
                                * path for lossy planes of a width divisible by 4); for tests */
} kvp_plane_work;

/* ---- trellis planes (trellis.c) ---- */

/* The state after state s (0..3) decodes integer q: Q0's states 0, 1 go to 0 or 2, Q1's
 * states 2, 3 go to 1 or 3, by the parity of q (VVC's table {0,2},{2,0},{1,3},{3,1}). */
static inline int kvp_trellis_next(int s, int64_t q) { return (s >> 1) | (int)(((s ^ q) & 1) << 1); }
/* The reconstruction of q in state s, in steps: 2 q (states 0, 1) or 2 q - sgn q (2, 3). */
static inline int64_t kvp_trellis_level(int64_t q, int s) { return 2 * q - (s >> 1) * ((q > 0) - (q < 0)); }

#define KVP_TRELLIS_TAB 256 /* residual prices tabulated per class (zigzag values) */
/* The search's price of a bit, in squared steps: chosen on sotu-1M, stories260K and
 * randk-f16 (docs/codec.md); 0 would be the nearest-level path, larger trades error for bits. */
#define KVP_TRELLIS_LAMBDA 0.1
#define KVP_TRELLIS_INF 1e30f
/* The survivor with the least cost (the lowest state on a tie). */
static inline int kvp_trellis_best(const float J[4]) {
    int s = 0;
    for (int i = 1; i < 4; i++)
        if (J[i] < J[s]) s = i;
    return s;
}
/* The search over 16 channels at once (trellis_avx512.c), the same float operations as the
 * per-channel reference: x (n, stride d) from the block's first channel; per lane its base m,
 * delta mask (-1 for delta channels) and price-table offset into tab. Writes tk (n, 4, 16)
 * each state's chosen integer, tb (n, 4) masks of lanes that took a state's second
 * predecessor, and J (4, 16) the final costs. */
extern const int kvp_trellis_avx512_built; /* 1 when the file was built with AVX-512 */
/* Backtracks a 16-channel search (the per-lane kvp_trellis_back of trellis.c, 16 lanes at
 * once) into q (n rows of stride d). */
void kvp_trellis_back16_avx512(const int32_t *tk, const uint16_t *tb, const float *J, int n, int d, int32_t *q);
extern const int kvp_trellis_avx2_built;   /* 1 when trellis_avx2.c was built with AVX2 */
/* The same over 8 channels (trellis_avx2.c): tk (n, 4, 8), tb (n, 4) masks, J (4, 8). */
void kvp_trellis_block8_avx2(const float *x, int n, int d, float inv, float lambda, const int32_t *m,
                             const int32_t *delta, const int32_t *off, const float *tab, int32_t *tk, uint16_t *tb,
                             float *J);
void kvp_trellis_block16_avx512(const float *x, int n, int d, float inv, float lambda, const int32_t *m,
                                const int32_t *delta, const int32_t *off, const float *tab, int32_t *tk,
                                uint16_t *tb, float *J);

/* Chooses the integers w->q of a trellis plane x (n, d) with the given step: per channel, the
 * sequence minimizing squared error (in step^2) + lambda * bits, the bits of each residual
 * (zigzag u) priced by tab[class * KVP_TRELLIS_TAB + min(u, KVP_TRELLIS_TAB - 1)] under each
 * channel's prediction (w->m, w->mode, w->cls as set by the plane encoder). Costs O(n d). */
int kvp_trellis_quantize(const float *x, int n, int d, float step, double lambda, const float *tab, kvp_plane_work *w);
/* The prices of a two-sided geometric distribution of residuals with mean |r| mean_r[class]
 * (tab as above). */
void kvp_trellis_prices_geo(const double *mean_r, int n_classes, float *tab);

/* Makes room for planes of n rows of d channels. */
int kvp_plane_work_reserve(kvp_plane_work *w, int n, int d);
/* Makes room for the trellis search over n rows (w->tk, w->tb). */
int kvp_plane_work_trellis(kvp_plane_work *w, int n);
void kvp_plane_work_free(kvp_plane_work *w); /* frees the buffers; the struct may be reused */

/* The largest encoded size of an (n, d) plane of any kind. */
size_t kvp_plane_bound(int n, int d);

/* KVP_PLANE_EXACT16 when every one of the count values is exactly an F16 (bit for bit after
 * a round trip), else KVP_PLANE_EXACT32. */
int kvp_plane_exact_kind(const float *x, size_t count);

/* Encodes x (n rows of d floats) into out (cap bytes, at least kvp_plane_bound) and sets
 * *size. A lossy plane needs a finite step > 0 and finite values (KVP_EINVAL otherwise); an
 * exact16 plane needs values that are exactly F16. The bytes depend only on the inputs. */
int kvp_plane_encode(const float *x, int n, int d, int kind, float step, kvp_plane_work *w, uint8_t *out,
                     size_t cap, size_t *size);

/* Decodes a plane of exactly `size` bytes into x (n rows of d floats). Every field is
 * checked: a malformed plane gives KVP_EFORMAT with a message, never an out-of-bounds access.
 * *kind (may be NULL) receives the plane's kind. */
int kvp_plane_decode(const uint8_t *in, size_t size, int n, int d, float *x, kvp_plane_work *w, int *kind);

#endif
