/*
 * kv.c: choosing a cache from its spec string.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int kvp_kv_step_check(const kvp_kv *kv, int pos, int n) {
    if (pos != kv->n_pos)
        return kvp_seterr(KVP_EINVAL, "KV cache: step at position %d, but %d positions are stored", pos, kv->n_pos);
    if (n <= 0 || pos + n > kv->shape.n_ctx)
        return kvp_seterr(KVP_ERANGE, "context is full: %d + %d tokens exceed the context of %d", pos, n,
                          kv->shape.n_ctx);
    return KVP_OK;
}

void **kvp_kv_scratch_new(int n, size_t bytes) {
    void **scratch = calloc((size_t)n, sizeof *scratch);
    if (!scratch) return NULL;
    for (int i = 0; i < n; i++)
        if (!(scratch[i] = kvp_amalloc(bytes))) {
            kvp_kv_scratch_free(scratch, n);
            return NULL;
        }
    return scratch;
}

void kvp_kv_scratch_free(void **scratch, int n) {
    for (int i = 0; scratch && i < n; i++) kvp_afree(scratch[i]);
    free(scratch);
}

int kvp_kv_spec_options(const char *tail, int (*opt)(const char *o, size_t len, void *arg), void *arg) {
    if (*tail && *tail != ':') return -1;
    for (const char *o = tail; *o == ':';) {
        const char *e = strchr(o + 1, ':');
        size_t len = e ? (size_t)(e - o - 1) : strlen(o + 1);
        char buf[32];
        if (len == 0 || len >= sizeof buf) return -1;
        memcpy(buf, o + 1, len);
        buf[len] = 0;
        if (opt(buf, len, arg) < 0) return -1;
        o += 1 + len;
    }
    return 0;
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
