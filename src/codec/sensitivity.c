/*
 * sensitivity.c: how much a key error moves attention, estimated from the model's weights.
 *
 * A query q = W_q x and a key k = W_k x come from the same normalized input x = g * n, where
 * n has unit RMS and g is the attention norm's gain. Taking n isotropic, E|q_j|^2 is the
 * squared norm of row j of W_q scaled by g, and likewise for keys. The ratio of the two RMS
 * values, times the RMS of the keys actually stored, estimates rms(q), which turns a key
 * step into an attention-logit error (kvp_codec_step). Rows are sampled (at most 64 of each
 * matrix, evenly spaced) so that the estimate costs little even for large models.
 */
#include <math.h>
#include <stdlib.h>

#include "codec.h"
#include "common/common.h"
#include "kernels/kernels.h"
#include "model/model.h"

/* Mean over sampled rows of |row * g|^2; 0 when the row buffer cannot be allocated. */
static double kvp_rows_energy(const kvp_weight *w, const float *g) {
    float *row = malloc(sizeof(float) * (size_t)w->cols);
    if (!row) return 0;
    int step = w->rows > 64 ? w->rows / 64 : 1, n = 0;
    double s = 0;
    for (int r = 0; r < w->rows; r += step, n++) {
        kvp_dequant_row(w->type, (const uint8_t *)w->data + (size_t)r * w->row_bytes, row, w->cols);
        for (int i = 0; i < w->cols; i++) s += (double)row[i] * row[i] * (double)g[i] * g[i];
    }
    free(row);
    return n ? s / n : 0;
}

void kvp_codec_qk(const kvp_model *m, float *qk) {
    for (int l = 0; l < m->info.n_layers; l++) {
        const kvp_layer_weights *L = &m->layers[l];
        double q = kvp_rows_energy(&L->wq, L->attn_norm), k = kvp_rows_energy(&L->wk, L->attn_norm);
        double r = q > 0 && k > 0 ? sqrt(q / k) : 1.0;
        qk[l] = (float)(isfinite(r) && r > 1e-3 && r < 1e3 ? r : 1.0);
    }
}
