/*
 * chunk.c: one chunk = the K and V planes of every layer for a run of tokens, encoded and
 * decoded plane by plane over the thread pool (docs/FORMAT.md, "Chunks"). A worker's error
 * message is carried back to the calling thread.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "codec.h"
#include "common/common.h"

/* ---- levels ---- */

/* Per lossy level (low, medium, high): tau, the standard deviation of the attention-logit
 * error that key quantization may cause, and alpha, the value step as a fraction of the
 * values' RMS, both for a plain grid; a trellis plane's grid (the union of its two
 * quantizers) is KVP_TRELLIS_STEP times as fine. docs/codec.md records the measurements these
 * come from. */
static const double kvp_level_tau[3] = {0.34, 0.17, 0.068};
static const double kvp_level_alpha[3] = {1.12, 0.56, 0.224};

double kvp_codec_depth(int l, int n_layers) { return n_layers > 1 ? (double)l / (n_layers - 1) : 0.5; }

float kvp_codec_step(int level, int is_value, double rms, double qk, double depth) {
    double tau = kvp_level_tau[level - KVP_LEVEL_LOW], alpha = kvp_level_alpha[level - KVP_LEVEL_LOW];
    alpha *= exp2(0.5 * (depth - 0.5)); /* docs/codec.md: 9-15% lower KL at the same bits */
    /* keys: uniform errors of a step s move the logit q.k / sqrt(head_dim) by a standard
     * deviation |q| s / sqrt(12 head_dim) = rms(q) s / sqrt(12), so s = tau sqrt(12) / rms(q),
     * with rms(q) estimated as rms(K) * qk */
    if (!is_value && depth <= 0) tau *= 0.8; /* the first of several layers: docs/codec.md */
    double step = is_value ? alpha * rms : tau * 3.4641016151377544 / (rms * qk);
    step *= KVP_TRELLIS_STEP; /* the union grid of the trellis' two quantizers */
    return step > 1e-30 && step < 1e30 ? (float)step : 1.0f;
}

const char *kvp_level_name(int level) {
    static const char *names[KVP_LEVEL_COUNT] = {"text", "low", "medium", "high", "lossless"};
    return level >= 0 && level < KVP_LEVEL_COUNT ? names[level] : "?";
}

/* ---- codec state ---- */

struct kvp_codec {
    kvp_pool *pool;
    int n_threads;
    kvp_plane_work *work;   /* (n_threads) */
    uint8_t *scratch;       /* encoder: one region of plane_cap bytes per plane */
    size_t scratch_cap;
    int n_planes;
    size_t *sizes;          /* (n_planes) encoded sizes */
    int *rc;                /* (n_planes) */
    char (*msg)[256];       /* (n_planes) error messages from the workers */
    float *rot;             /* cosines (n, head_dim / 2) then sines of the chunk's rotary angles */
    size_t rot_cap;         /* floats */
    float *keys;            /* encoder: (n_layers, n, kv_dim) keys with the rotation undone */
    size_t keys_cap;        /* floats */
};

int kvp_codec_new(kvp_pool *pool, kvp_codec **out) {
    *out = NULL;
    kvp_codec *cd = calloc(1, sizeof *cd);
    if (!cd) return kvp_seterr(KVP_ENOMEM, "out of memory creating the codec");
    cd->pool = pool;
    cd->n_threads = kvp_pool_size(pool);
    cd->work = calloc((size_t)cd->n_threads, sizeof *cd->work);
    if (!cd->work) {
        free(cd);
        return kvp_seterr(KVP_ENOMEM, "out of memory creating the codec");
    }
    *out = cd;
    return KVP_OK;
}

void kvp_codec_free(kvp_codec *cd) {
    if (!cd) return;
    for (int i = 0; i < cd->n_threads; i++) kvp_plane_work_free(&cd->work[i]);
    free(cd->work);
    free(cd->scratch);
    free(cd->sizes);
    free(cd->rc);
    free(cd->msg);
    free(cd->rot);
    free(cd->keys);
    free(cd);
}

static int kvp_codec_planes(kvp_codec *cd, int n_planes) {
    if (n_planes <= cd->n_planes) return KVP_OK;
    free(cd->sizes);
    free(cd->rc);
    free(cd->msg);
    cd->sizes = calloc((size_t)n_planes, sizeof *cd->sizes);
    cd->rc = calloc((size_t)n_planes, sizeof *cd->rc);
    cd->msg = calloc((size_t)n_planes, sizeof *cd->msg);
    cd->n_planes = cd->sizes && cd->rc && cd->msg ? n_planes : 0;
    if (!cd->n_planes) return kvp_seterr(KVP_ENOMEM, "out of memory for %d planes", n_planes);
    return KVP_OK;
}

/* Records a worker's result for plane p, keeping its message. */
static void kvp_codec_result(kvp_codec *cd, int p, int rc) {
    cd->rc[p] = rc;
    if (rc < 0) snprintf(cd->msg[p], sizeof cd->msg[p], "%s", kvp_errmsg());
}

/* The first failed plane's error, re-raised on the calling thread. */
static int kvp_codec_first_error(const kvp_codec *cd, int n_planes) {
    for (int p = 0; p < n_planes; p++)
        if (cd->rc[p] < 0) return kvp_seterr(cd->rc[p], "layer %d %s: %s", p / 2, p % 2 ? "values" : "keys", cd->msg[p]);
    return KVP_OK;
}

/* ---- chunk header ---- */

static size_t kvp_chunk_kvd(const kvp_chunk_shape *s) { return (size_t)s->n_kv_heads * (size_t)s->head_dim; }

size_t kvp_chunk_bound(const kvp_chunk_shape *s, int n_tokens) {
    return KVP_CHUNK_HEADER + (size_t)s->n_layers * 2 * (4 + kvp_plane_bound(n_tokens, (int)kvp_chunk_kvd(s)));
}

/* Whether a chunk at `level` codes its keys with the rotary embedding undone. */
static int kvp_chunk_rotates(const kvp_chunk_shape *s, int level) {
    return level >= KVP_LEVEL_LOW && level <= KVP_LEVEL_HIGH && s->rope_theta > 1.0f && isfinite(s->rope_theta) &&
           s->head_dim >= 2;
}

static void kvp_chunk_write_header(uint8_t *out, const kvp_chunk_shape *s, int pos, int n, int level) {
    int rot = kvp_chunk_rotates(s, level);
    memcpy(out, "KVZC", 4);
    out[4] = (uint8_t)level;
    out[5] = (uint8_t)(rot ? KVP_CHUNK_ROTARY | (s->rope_style == KVP_ROPE_NEOX ? KVP_CHUNK_NEOX : 0) : 0);
    kvp_wr16(out + 6, (uint16_t)s->n_layers);
    kvp_wr32(out + 8, (uint32_t)pos);
    kvp_wr32(out + 12, (uint32_t)n);
    kvp_wr16(out + 16, (uint16_t)s->n_kv_heads);
    kvp_wr16(out + 18, (uint16_t)s->head_dim);
    uint32_t theta;
    memcpy(&theta, &s->rope_theta, 4);
    kvp_wr32(out + 20, rot ? theta : 0);
}

int kvp_chunk_level(const uint8_t *in, size_t size, int *level) {
    if (size < KVP_CHUNK_HEADER) return kvp_seterr(KVP_EFORMAT, "chunk of %zu bytes is shorter than its header", size);
    if (memcmp(in, "KVZC", 4)) return kvp_seterr(KVP_EFORMAT, "chunk does not start with 'KVZC'");
    if (in[4] >= KVP_LEVEL_COUNT) return kvp_seterr(KVP_EFORMAT, "chunk level %d is unknown", in[4]);
    *level = in[4];
    return KVP_OK;
}

/* The rotary fields: flags 0 with theta 0, or (lossy levels only) the rotary flag, maybe the
 * split-halves flag, and a finite theta > 1. */
static int kvp_chunk_check_rotary(const uint8_t *in, int level) {
    uint32_t bits = kvp_rd32(in + 20);
    float theta;
    memcpy(&theta, &bits, 4);
    if (in[5] == 0 && bits == 0) return KVP_OK;
    if (in[5] & ~(KVP_CHUNK_ROTARY | KVP_CHUNK_NEOX) || !(in[5] & KVP_CHUNK_ROTARY))
        return kvp_seterr(KVP_EFORMAT, "chunk flags 0x%02x are unknown", in[5]);
    if (level < KVP_LEVEL_LOW || level > KVP_LEVEL_HIGH)
        return kvp_seterr(KVP_EFORMAT, "a %s chunk cannot have rotated keys", kvp_level_name(level));
    if (!(theta > 1.0f) || !isfinite(theta) || kvp_rd16(in + 18) < 2)
        return kvp_seterr(KVP_EFORMAT, "chunk's rotary base %g (head dim %u) is invalid", theta, kvp_rd16(in + 18));
    return KVP_OK;
}

static int kvp_chunk_check_header(const uint8_t *in, size_t size, const kvp_chunk_shape *s, int pos, int n,
                                  int level) {
    int lv;
    KVP_TRY(kvp_chunk_level(in, size, &lv));
    if (level >= 0 && lv != level)
        return kvp_seterr(KVP_EFORMAT, "chunk says level %d, its table entry says %d", lv, level);
    KVP_TRY(kvp_chunk_check_rotary(in, lv));
    if (kvp_rd16(in + 6) != s->n_layers || kvp_rd16(in + 16) != s->n_kv_heads || kvp_rd16(in + 18) != s->head_dim)
        return kvp_seterr(KVP_EFORMAT, "chunk shape %u layers x %u KV heads x %u does not match the header's %d x %d x %d",
                          kvp_rd16(in + 6), kvp_rd16(in + 16), kvp_rd16(in + 18), s->n_layers, s->n_kv_heads,
                          s->head_dim);
    if (kvp_rd32(in + 8) != (uint32_t)pos || kvp_rd32(in + 12) != (uint32_t)n)
        return kvp_seterr(KVP_EFORMAT, "chunk covers positions %u + %u, expected %d + %d", kvp_rd32(in + 8),
                          kvp_rd32(in + 12), pos, n);
    return KVP_OK;
}

/* ---- encoding ---- */

typedef struct {
    kvp_codec *cd;
    const kvp_chunk_shape *s;
    int n, level;
    const float *kv;
    const float *qk;
    size_t plane_cap;
    int rotary; /* key planes are rotated back into cd->keys first */
} kvp_chunk_job;

/* Makes room for the rotary table of n tokens and, when keys > 0, that many floats of keys,
 * and fills the table for positions [pos, pos + n). */
static int kvp_codec_rotary(kvp_codec *cd, const kvp_chunk_shape *s, double theta, int pos, int n, size_t keys) {
    size_t tab = 2 * (size_t)n * (size_t)(s->head_dim / 2);
    if (tab > cd->rot_cap) {
        free(cd->rot);
        cd->rot = malloc(sizeof(float) * tab);
        cd->rot_cap = cd->rot ? tab : 0;
    }
    if (keys > cd->keys_cap) {
        free(cd->keys);
        cd->keys = malloc(sizeof(float) * keys);
        cd->keys_cap = cd->keys ? keys : 0;
    }
    if (!cd->rot || (keys && !cd->keys)) return kvp_seterr(KVP_ENOMEM, "out of memory for the rotary tables");
    kvp_rotary_table(pos, n, s->head_dim, theta, cd->rot, cd->rot + tab / 2);
    return KVP_OK;
}

/* Rotates plane x (n rows) forward (dir 1) or back (dir -1) with the codec's table. */
static void kvp_codec_rotate(const kvp_codec *cd, const kvp_chunk_shape *s, int style, float *x, int n, int dir) {
    const float *cs = cd->rot, *sn = cd->rot + (size_t)n * (size_t)(s->head_dim / 2);
    kvp_rotary_apply(x, n, s->n_kv_heads, s->head_dim, style, cs, sn, dir);
}

static double kvp_plane_rms(const float *x, size_t N) {
    double s = 0;
    for (size_t i = 0; i < N; i++) s += (double)x[i] * x[i];
    return sqrt(s / (double)N);
}

static void kvp_chunk_encode_task(void *arg, int p, int thread) {
    kvp_chunk_job *j = arg;
    int d = (int)kvp_chunk_kvd(j->s);
    size_t N = (size_t)j->n * (size_t)d;
    const float *x = j->kv + (size_t)p * N;
    if (j->rotary && p % 2 == 0) {
        float *k = j->cd->keys + (size_t)(p / 2) * N;
        memcpy(k, x, sizeof(float) * N);
        kvp_codec_rotate(j->cd, j->s, j->s->rope_style, k, j->n, -1);
        x = k;
    }
    int kind = KVP_PLANE_TRELLIS;
    float step = 1.0f;
    if (j->level == KVP_LEVEL_LOSSLESS)
        kind = kvp_plane_exact_kind(x, N);
    else
        step = kvp_codec_step(j->level, p % 2, kvp_plane_rms(x, N), j->qk ? j->qk[p / 2] : 1.0,
                              kvp_codec_depth(p / 2, (int)j->s->n_layers));
    int rc = kvp_plane_encode(x, j->n, d, kind, step, &j->cd->work[thread], j->cd->scratch + (size_t)p * j->plane_cap,
                              j->plane_cap, &j->cd->sizes[p]);
    kvp_codec_result(j->cd, p, rc);
}

static int kvp_codec_scratch(kvp_codec *cd, size_t bytes) {
    if (bytes <= cd->scratch_cap) return KVP_OK;
    free(cd->scratch);
    cd->scratch = malloc(bytes);
    cd->scratch_cap = cd->scratch ? bytes : 0;
    if (!cd->scratch) return kvp_seterr(KVP_ENOMEM, "out of memory for %zu bytes of encoder scratch", bytes);
    return KVP_OK;
}

/* Copies the encoded planes after the header and plane directory. */
static int kvp_chunk_assemble(const kvp_codec *cd, int n_planes, size_t plane_cap, uint8_t *out, size_t cap,
                              size_t *size) {
    size_t at = KVP_CHUNK_HEADER + 4 * (size_t)n_planes;
    if (cap < at) return kvp_seterr(KVP_ERANGE, "chunk output buffer of %zu bytes is too small", cap);
    for (int p = 0; p < n_planes; p++) {
        if (cap - at < cd->sizes[p]) return kvp_seterr(KVP_ERANGE, "chunk output buffer of %zu bytes is too small", cap);
        kvp_wr32(out + KVP_CHUNK_HEADER + 4 * (size_t)p, (uint32_t)cd->sizes[p]);
        memcpy(out + at, cd->scratch + (size_t)p * plane_cap, cd->sizes[p]);
        at += cd->sizes[p];
    }
    *size = at;
    return KVP_OK;
}

int kvp_chunk_encode(kvp_codec *cd, const kvp_chunk_shape *s, int pos, int n, int level, const float *kv,
                     const float *qk, uint8_t *out, size_t cap, size_t *size) {
    if (level < KVP_LEVEL_TEXT || level > KVP_LEVEL_LOSSLESS)
        return kvp_seterr(KVP_EINVAL, "quality level %d does not exist (0 text .. 4 lossless)", level);
    if (n < 1 || cap < KVP_CHUNK_HEADER)
        return kvp_seterr(n < 1 ? KVP_EINVAL : KVP_ERANGE, "cannot encode a chunk of %d tokens into %zu bytes", n, cap);
    kvp_chunk_write_header(out, s, pos, n, level);
    *size = KVP_CHUNK_HEADER;
    if (level == KVP_LEVEL_TEXT) return KVP_OK;
    int n_planes = 2 * s->n_layers;
    size_t plane_cap = kvp_plane_bound(n, (int)kvp_chunk_kvd(s));
    KVP_TRY(kvp_codec_planes(cd, n_planes));
    KVP_TRY(kvp_codec_scratch(cd, plane_cap * (size_t)n_planes));
    kvp_chunk_job j = {cd, s, n, level, kv, qk, plane_cap, kvp_chunk_rotates(s, level)};
    if (j.rotary)
        KVP_TRY(kvp_codec_rotary(cd, s, s->rope_theta, pos, n, (size_t)s->n_layers * (size_t)n * kvp_chunk_kvd(s)));
    kvp_pool_run(cd->pool, kvp_chunk_encode_task, &j, n_planes);
    KVP_TRY(kvp_codec_first_error(cd, n_planes));
    return kvp_chunk_assemble(cd, n_planes, plane_cap, out, cap, size);
}

/* ---- decoding ---- */

typedef struct {
    kvp_codec *cd;
    const kvp_chunk_shape *s;
    int n, level;
    const uint8_t *in;
    const size_t *offsets; /* (n_planes + 1) */
    float *kv;
    int rotary, style;     /* key planes are rotated forward after decoding (style: pairs) */
} kvp_chunk_djob;

static void kvp_chunk_decode_task(void *arg, int p, int thread) {
    kvp_chunk_djob *j = arg;
    int d = (int)kvp_chunk_kvd(j->s), kind = 0;
    size_t N = (size_t)j->n * (size_t)d;
    int rc = kvp_plane_decode(j->in + j->offsets[p], j->offsets[p + 1] - j->offsets[p], j->n, d, j->kv + (size_t)p * N,
                              &j->cd->work[thread], &kind);
    if (rc == KVP_OK && kvp_plane_is_lossy(kind) != (j->level != KVP_LEVEL_LOSSLESS))
        rc = kvp_seterr(KVP_EFORMAT, "plane kind %d does not belong to a %s chunk", kind, kvp_level_name(j->level));
    if (rc == KVP_OK && kind == KVP_PLANE_TRELLIS && j->s->version > 0 && j->s->version < 3)
        rc = kvp_seterr(KVP_EFORMAT, "a trellis plane cannot be in a version %d container", j->s->version);
    if (rc == KVP_OK && j->rotary && p % 2 == 0) kvp_codec_rotate(j->cd, j->s, j->style, j->kv + (size_t)p * N, j->n, 1);
    kvp_codec_result(j->cd, p, rc);
}

/* Reads the plane directory into offsets and checks that the planes fill the chunk. */
static int kvp_chunk_offsets(const uint8_t *in, size_t size, int n_planes, size_t *offsets) {
    size_t at = KVP_CHUNK_HEADER + 4 * (size_t)n_planes;
    if (size < at) return kvp_seterr(KVP_EFORMAT, "chunk of %zu bytes ends inside its plane directory", size);
    for (int p = 0; p < n_planes; p++) {
        uint32_t len = kvp_rd32(in + KVP_CHUNK_HEADER + 4 * (size_t)p);
        if (len > size - at) return kvp_seterr(KVP_EFORMAT, "plane %d of %u bytes runs past the chunk's end", p, len);
        offsets[p] = at;
        at += len;
    }
    offsets[n_planes] = at;
    if (at != size) return kvp_seterr(KVP_EFORMAT, "chunk has %zu bytes after its last plane", size - at);
    return KVP_OK;
}

int kvp_chunk_check_text(const uint8_t *in, size_t size, const kvp_chunk_shape *s, int pos, int n) {
    KVP_TRY(kvp_chunk_check_header(in, size, s, pos, n, KVP_LEVEL_TEXT));
    if (size != KVP_CHUNK_HEADER)
        return kvp_seterr(KVP_EFORMAT, "text chunk has %zu bytes after its header", size - KVP_CHUNK_HEADER);
    return KVP_OK;
}

int kvp_chunk_decode(kvp_codec *cd, const kvp_chunk_shape *s, int pos, int n, int level, const uint8_t *in,
                     size_t size, float *kv) {
    KVP_TRY(kvp_chunk_check_header(in, size, s, pos, n, level));
    level = in[4];
    if (level == KVP_LEVEL_TEXT) {
        KVP_TRY(kvp_chunk_check_text(in, size, s, pos, n));
        return kvp_seterr(KVP_EINVAL, "chunk at position %d is stored as text: it has no KV to decode", pos);
    }
    if ((uint64_t)s->n_layers * 2 * (uint64_t)n * kvp_chunk_kvd(s) > KVP_CHUNK_MAX_VALUES)
        return kvp_seterr(KVP_EFORMAT, "chunk of %d tokens holds too many values", n);
    int n_planes = 2 * s->n_layers;
    size_t *offsets = malloc(sizeof *offsets * ((size_t)n_planes + 1));
    if (!offsets) return kvp_seterr(KVP_ENOMEM, "out of memory decoding a chunk");
    int rc = kvp_chunk_offsets(in, size, n_planes, offsets);
    if (rc == KVP_OK) rc = kvp_codec_planes(cd, n_planes);
    int rotary = in[5] & KVP_CHUNK_ROTARY;
    if (rc == KVP_OK && rotary) {
        float theta;
        uint32_t bits = kvp_rd32(in + 20);
        memcpy(&theta, &bits, 4);
        rc = kvp_codec_rotary(cd, s, theta, pos, n, 0);
    }
    if (rc == KVP_OK) {
        kvp_chunk_djob j = {cd, s, n, level, in, offsets, kv, rotary, in[5] & KVP_CHUNK_NEOX ? KVP_ROPE_NEOX : KVP_ROPE_NORM};
        kvp_pool_run(cd->pool, kvp_chunk_decode_task, &j, n_planes);
        rc = kvp_codec_first_error(cd, n_planes);
    }
    free(offsets);
    return rc;
}
