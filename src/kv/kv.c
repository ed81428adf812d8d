/*
 * kv.c: choosing a cache from its spec string.
 */
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "kv.h"
#include "kv/quant.h"

static int kvp_kv_check_shape(const kvp_kv_shape *s) {
    if (s->n_layers <= 0 || s->n_heads <= 0 || s->n_kv_heads <= 0 || s->head_dim <= 0 ||
        s->n_ctx <= 0 || s->n_heads % s->n_kv_heads != 0)
        return kvp_seterr(KVP_EINVAL, "bad KV cache shape (layers %d, heads %d/%d, head dim %d, context %d)",
                          s->n_layers, s->n_heads, s->n_kv_heads, s->head_dim, s->n_ctx);
    return KVP_OK;
}

int kvp_kv_new(const char *spec, const kvp_kv_shape *shape, kvp_pool *pool, kvp_kv **out) {
    *out = NULL;
    KVP_TRY(kvp_kv_check_shape(shape));
    if (!spec || !*spec || !strcmp(spec, "f16")) return kvp_kv_full_new(KVP_TYPE_F16, shape, pool, out);
    if (!strcmp(spec, "f32")) return kvp_kv_full_new(KVP_TYPE_F32, shape, pool, out);
    if (spec[0] == 'k' && spec[1] >= '0' && spec[1] <= '9') return kvp_kv_kivi_new(spec, shape, pool, out);
    if (!strncmp(spec, "mikv", 4)) return kvp_kv_mikv_new(spec, shape, pool, out);
    return kvp_seterr(KVP_EINVAL, "unknown KV cache spec '%s' (valid: f16, f32, "
                      "kXvY[:rR][:gG][:rot|:bal|:none][:a8|:a16] with X, Y in 2, 3, 4, 8, e.g. k4v4, k2v2:r128:g32; "
                      "mikv[:lL][:hH][:pP][:wW][:rR][:gG][:rot|:bal|:none][:a8], e.g. mikv, mikv:l3:h7:p5:w64)", spec);
}

void kvp_kv_free(kvp_kv *kv) {
    if (kv) kv->vt->free(kv);
}
