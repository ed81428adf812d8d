/*
 * trellis.c: the encoder's choice of integers for a trellis plane (dependent quantization).
 *
 * A trellis plane reconstructs the integer q of channel c at token t with one of two scalar
 * quantizers, chosen by a 4-state machine that runs down the channel (tokens in order):
 *   states 0, 1: Q0, levels 2 q step (even multiples of the step);
 *   states 2, 3: Q1, levels (2 q - sgn q) step (zero and the odd multiples);
 * and the parity of q moves the state (kvp_trellis_next). Each quantizer alone has a step of
 * 2 step, so q costs about as many bits as a plain plane with twice the step, but the union
 * of the two grids has the step: a Viterbi search over the states finds the sequence of q
 * whose reconstructions are closest to the values at a given rate, which is the granular gain
 * of trellis-coded quantization (the "dependent quantization" of H.266/VVC). The decoder only
 * follows the state machine (kvp_trellis_value); everything here is the encoder's.
 *
 * The search minimizes squared error (in units of step^2) plus lambda times the bits each
 * residual costs under the plane's class models (from a first, plain quantization), with
 * each channel's prediction (its base m_c, or the previous token's q on the survivor path).
 */
#include <math.h>
#include <stdlib.h>

#include <string.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "plane.h"



static inline float kvp_trellis_price(const float *tab, int64_t r) {
    uint32_t u = kvp_zigzag(r);
    return tab[u < KVP_TRELLIS_TAB ? u : KVP_TRELLIS_TAB - 1];
}

/* One value's candidates: for each quantizer z (0: Q0, 1: Q1), its even integer ke[z] and odd
 * integer ko[z] around y (the two nearest levels), and their squared errors de[z], dq[z]. */
typedef struct {
    int32_t ke[2], ko[2];
    float de[2], dq[2];
} kvp_trellis_cands;

static inline void kvp_trellis_pair(float y, int32_t lo, int z, kvp_trellis_cands *c) {
    int32_t a = y < 0 ? -lo : lo, b = y < 0 ? -(lo + 1) : lo + 1; /* adjacent: parities differ */
    float ea = y - (float)kvp_trellis_level(a, 2 * z), eb = y - (float)kvp_trellis_level(b, 2 * z);
    int a_odd = a & 1;
    c->ke[z] = a_odd ? b : a;
    c->ko[z] = a_odd ? a : b;
    c->de[z] = a_odd ? eb * eb : ea * ea;
    c->dq[z] = a_odd ? ea * ea : eb * eb;
}

/* The candidates around y = x / step, clamped to the plane's range. Q0's levels are
 * 2 lo <= |y| < 2 lo + 2; Q1's are 0 and 1 for |y| < 1, else 2 lo - 1 <= |y| < 2 lo + 1. */
static inline void kvp_trellis_candidates(float y, kvp_trellis_cands *c) {
    const float lim = (float)(KVP_PLANE_QMAX - 4);
    y = y > lim ? lim : y < -lim ? -lim : y;
    float a = fabsf(y);
    kvp_trellis_pair(y, (int32_t)(a * 0.5f), 0, c);
    kvp_trellis_pair(y, a < 1.0f ? 0 : (int32_t)((a + 1.0f) * 0.5f), 1, c);
}

/* One token of one channel. States 0, 1 use Q0 and go to 0 (even) / 2 (odd) from 0, the other
 * way from 1; states 2, 3 use Q1 and go to 1 / 3 from 2, the other way from 3. Each state
 * prices its candidates against its prediction pred[s]; a tie keeps the lower state. */
static void kvp_trellis_step(float J[4], const int64_t pred[4], const kvp_trellis_cands *c, const float *tab,
                             float lambda, int32_t tk[4], uint8_t tb[4]) {
    float ce[4], co[4];
    for (int s = 0; s < 4; s++) {
        int z = s >> 1;
        ce[s] = J[s] + (c->de[z] + lambda * kvp_trellis_price(tab, c->ke[z] - pred[s]));
        co[s] = J[s] + (c->dq[z] + lambda * kvp_trellis_price(tab, c->ko[z] - pred[s]));
    }
    /* next state ns: the costs from its two predecessors, and the integer each one takes */
    const float a[4] = {ce[0], ce[2], co[0], co[2]}, b[4] = {co[1], co[3], ce[1], ce[3]};
    const int32_t ka[4] = {c->ke[0], c->ke[1], c->ko[0], c->ko[1]}, kb[4] = {c->ko[0], c->ko[1], c->ke[0], c->ke[1]};
    for (int ns = 0; ns < 4; ns++) {
        int take_b = !(a[ns] <= b[ns]);
        J[ns] = take_b ? b[ns] : a[ns];
        tk[ns] = take_b ? kb[ns] : ka[ns];
        tb[ns] = (uint8_t)((ns & 1) * 2 + take_b);
    }
}

/* Viterbi over one channel (the reference for the vector search): x (n values, stride d),
 * base m, delta mode, the class' prices; writes the chosen integers to q (stride d). tk, tb:
 * (n, 4) scratch. */
static void kvp_trellis_channel(const float *x, int n, int d, float inv, int32_t m, int delta, const float *tab,
                                float lambda, int32_t *q, int32_t *tk, uint8_t *tb) {
    float J[4] = {0, KVP_TRELLIS_INF, KVP_TRELLIS_INF, KVP_TRELLIS_INF};
    int64_t pred[4] = {m, m, m, m};
    for (int t = 0; t < n; t++) {
        kvp_trellis_cands c;
        kvp_trellis_candidates(x[(size_t)t * d] * inv, &c);
        kvp_trellis_step(J, pred, &c, tab, lambda, tk + 4 * t, tb + 4 * t);
        for (int s = 0; s < 4 && delta; s++) pred[s] = tk[4 * t + s];
    }
    int s = kvp_trellis_best(J);
    for (int t = n - 1; t >= 0; t--) {
        q[(size_t)t * d] = tk[4 * t + s];
        s = tb[4 * t + s];
    }
}

/* Backtracks the W lanes (16 or 8) of a vector search into q (W channels, stride d), all lanes
 * at once so that their dependent chains overlap. tk: (n, 4, W); tb: (n, 4) lane masks. */
static void kvp_trellis_back(const int32_t *tk, const uint16_t *tb, const float *J, int n, int d, int W, int32_t *q) {
    int s[16];
    for (int l = 0; l < W; l++) {
        float Jl[4] = {J[l], J[W + l], J[2 * W + l], J[3 * W + l]};
        s[l] = kvp_trellis_best(Jl);
    }
    for (int t = n - 1; t >= 0; t--) {
        const int32_t *k = tk + (size_t)t * 4 * (size_t)W;
        const uint16_t *b = tb + (size_t)t * 4;
        int32_t *row = q + (size_t)t * d;
        for (int l = 0; l < W; l++) {
            row[l] = k[s[l] * W + l];
            s[l] = (s[l] & 1) * 2 + ((b[s[l]] >> l) & 1);
        }
    }
}

/* The vector width of the search on this machine: 16 (AVX-512), 8 (AVX2) or 1 (per channel). */
static int kvp_trellis_width(const kvp_plane_work *w, int d) {
    const char *isa = kvp_kernels_isa();
    int want = w->ref ? 1 : w->width ? w->width : 16;
    if (want >= 16 && d >= 16 && kvp_trellis_avx512_built && strcmp(isa, "avx512") == 0) return 16;
    if (want >= 8 && d >= 8 && kvp_trellis_avx2_built && (strcmp(isa, "avx512") == 0 || strcmp(isa, "avx2") == 0))
        return 8;
    return 1;
}

/* One block of W channels from c: their bases, delta masks and price offsets, the search, the
 * backtrack. */
static void kvp_trellis_block(const float *x, int n, int d, int c, int W, float inv, float lambda, const float *tab,
                              kvp_plane_work *w) {
    int32_t m[16] = {0}, delta[16] = {0}, off[16] = {0};
    float J[64];
    for (int i = 0; i < W; i++) {
        m[i] = (int32_t)w->m[c + i];
        delta[i] = w->mode[c + i] ? -1 : 0;
        off[i] = w->cls[c + i] * KVP_TRELLIS_TAB;
    }
    if (W == 16) {
        kvp_trellis_block16_avx512(x + c, n, d, inv, lambda, m, delta, off, tab, w->tk, (uint16_t *)w->tb, J);
        kvp_trellis_back16_avx512(w->tk, (const uint16_t *)w->tb, J, n, d, w->q + c);
        return;
    }
    kvp_trellis_block8_avx2(x + c, n, d, inv, lambda, m, delta, off, tab, w->tk, (uint16_t *)w->tb, J);
    kvp_trellis_back(w->tk, (const uint16_t *)w->tb, J, n, d, W, w->q + c);
}

/* A two-sided geometric distribution of the residual r, P(r) = (1 - t) / (1 + t) t^|r|, whose
 * mean |r| is 2 t / (1 - t^2) = mean: r costs -log2((1 - t) / (1 + t)) - |r| log2 t bits, the
 * same for r and -r (zigzag u is -2r - 1 or 2r). The coded models spend more on large |r|
 * (their escapes are logarithmic), which only matters where the search would not go. */
void kvp_trellis_prices_geo(const double *mean_r, int n_classes, float *tab) {
    for (int g = 0; g < n_classes; g++) {
        double m = mean_r[g] > 1e-3 ? mean_r[g] : 1e-3, t = (sqrt(1.0 + m * m) - 1.0) / m;
        double a = -log2((1.0 - t) / (1.0 + t)), b = -log2(t);
        for (int u = 0; u < KVP_TRELLIS_TAB; u++) tab[g * KVP_TRELLIS_TAB + u] = (float)(a + b * ((u + 1) / 2));
    }
}

int kvp_trellis_quantize(const float *x, int n, int d, float step, double lambda, const float *tab, kvp_plane_work *w) {
    KVP_TRY(kvp_plane_work_trellis(w, n));
    float inv = 1.0f / step;
    int c = 0;
    for (int W = kvp_trellis_width(w, d); W > 1 && c + W <= d; c += W)
        kvp_trellis_block(x, n, d, c, W, inv, (float)lambda, tab, w);
    for (; c < d; c++)
        kvp_trellis_channel(x + c, n, d, inv, (int32_t)w->m[c], w->mode[c], tab + w->cls[c] * KVP_TRELLIS_TAB,
                            (float)lambda, w->q + c, w->tk, w->tb);
    return KVP_OK;
}
