/*
 * cold_tier.c: the cold tier (select_cold.h): blocks of keys and values appended to segments in
 * host memory or in a memory-mapped file, 8-bit per token and head or F16, read in place.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/common.h"
#include "kernels/kernels.h"
#include "kv/select_cold.h"

#define KVP_TIER_SEG ((size_t)4 << 20)

typedef struct {
    uint8_t *base;
    size_t size;
} kvp_tier_seg;

typedef struct {
    int seg, n;    /* segment and token count */
    size_t off;    /* offset in the segment */
} kvp_tier_rec;

struct kvp_tier {
    int enc, nh, hd, fd;    /* fd: -1 for host memory */
    kvp_kq_fmt kq;          /* the KQ encoding's format */
    char *path;
    char spec[64];
    kvp_tier_seg *seg;
    int n_seg, cap_seg, cur_seg;
    size_t cur_off, file_size;
    kvp_tier_rec *rec;
    int64_t n_rec, cap_rec;
    uint64_t bytes;
};

static size_t kvp_tier_align(size_t x) { return (x + 63) & ~(size_t)63; }

/* Byte offsets of a record's parts for n tokens: K/V scales (q8), K rows, V rows, total. */
static void kvp_tier_layout(const kvp_tier *c, int n, size_t *ks, size_t *vs, size_t *k, size_t *v, size_t *total) {
    if (c->enc == KVP_TIER_KQ) { /* per head, the tiles of its n rows */
        *ks = *vs = *k = *v = 0;
        *total = (size_t)c->nh * (size_t)((n + KVP_KQ_T - 1) / KVP_KQ_T) * c->kq.bytes;
        return;
    }
    size_t rows = (size_t)c->nh * (size_t)n, scales = c->enc == KVP_TIER_Q8 ? kvp_tier_align(rows * sizeof(float)) : 0;
    size_t part = kvp_tier_align(rows * (size_t)c->hd * (c->enc == KVP_TIER_Q8 ? 1 : 2));
    *ks = 0;
    *vs = scales;
    *k = 2 * scales;
    *v = *k + part;
    *total = *v + part;
}

/* ---- opening ---- */

static int kvp_tier_parse(kvp_tier *c, const char *spec) {
    if (!spec || !*spec) spec = "mem";
    size_t len = strlen(spec);
    c->enc = KVP_TIER_Q8;
    if (len > 4 && strchr(",;", spec[len - 4]) && !strcmp(spec + len - 3, "f16")) c->enc = KVP_TIER_F16, len -= 4;
    else if (len > 3 && strchr(",;", spec[len - 3]) && !strcmp(spec + len - 2, "q8")) len -= 3;
    const char *enc = c->enc == KVP_TIER_Q8 ? "q8" : "f16";
    if (len == 3 && !strncmp(spec, "mem", 3)) {
        snprintf(c->spec, sizeof c->spec, "mem;%s", enc);
        return KVP_OK;
    }
    if (len <= 5 || strncmp(spec, "file:", 5))
        return kvp_seterr(KVP_EINVAL, "bad cold tier '%s' (valid: mem, file:PATH, each with an optional ,q8 or ,f16)",
                          spec);
    if (!(c->path = malloc(len - 4))) return kvp_seterr(KVP_ENOMEM, "out of memory opening the cold tier");
    memcpy(c->path, spec + 5, len - 5);
    c->path[len - 5] = 0;
    snprintf(c->spec, sizeof c->spec, "file:%s;%s", c->path, enc);
    c->fd = open(c->path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (c->fd < 0) return kvp_seterr(KVP_EIO, "cold tier %s: %s", c->path, strerror(errno));
    return KVP_OK;
}

int kvp_tier_new(const char *spec, int nh, int hd, kvp_tier **out) {
    *out = NULL;
    kvp_tier *c = calloc(1, sizeof *c);
    if (!c) return kvp_seterr(KVP_ENOMEM, "out of memory opening the cold tier");
    c->nh = nh;
    c->hd = hd;
    c->fd = -1;
    int rc = kvp_tier_parse(c, spec);
    if (rc < 0) {
        kvp_tier_free(c);
        return rc;
    }
    *out = c;
    return KVP_OK;
}

void kvp_tier_free(kvp_tier *c) {
    if (!c) return;
    for (int i = 0; i < c->n_seg; i++) {
        if (c->fd >= 0) munmap(c->seg[i].base, c->seg[i].size);
        else free(c->seg[i].base);
    }
    if (c->fd >= 0) {
        close(c->fd);
        unlink(c->path);
    }
    free(c->path);
    free(c->seg);
    free(c->rec);
    free(c);
}

/* ---- segments ---- */

/* Host memory for a segment: 2 MiB aligned and advised to use huge pages where the kernel
 * offers them, since attention reads the chosen blocks scattered over the whole tier (one
 * TLB entry then covers 2 MiB of blocks instead of 4 KiB). Freed with free(). */
static void *kvp_tier_alloc(size_t size) {
    void *p = NULL;
    if (posix_memalign(&p, (size_t)2 << 20, size) != 0) return NULL;
    madvise(p, size, MADV_HUGEPAGE);
    return p;
}

/* Maps or allocates one more segment of at least `need` bytes. */
static int kvp_tier_add_seg(kvp_tier *c, size_t need) {
    size_t size = KVP_MAX(KVP_TIER_SEG, (need + KVP_TIER_SEG - 1) / KVP_TIER_SEG * KVP_TIER_SEG);
    if (c->n_seg == c->cap_seg) {
        int cap = KVP_MAX(8, 2 * c->cap_seg);
        kvp_tier_seg *s = realloc(c->seg, sizeof *s * (size_t)cap);
        if (!s) return kvp_seterr(KVP_ENOMEM, "out of memory growing the cold tier");
        c->seg = s;
        c->cap_seg = cap;
    }
    uint8_t *base;
    if (c->fd < 0) {
        if (!(base = kvp_tier_alloc(size))) return kvp_seterr(KVP_ENOMEM, "out of memory growing the cold tier");
    } else {
        if (ftruncate(c->fd, (off_t)(c->file_size + size)) != 0)
            return kvp_seterr(KVP_EIO, "cold tier %s: cannot grow the file: %s", c->path, strerror(errno));
        base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, (off_t)c->file_size);
        if (base == MAP_FAILED) return kvp_seterr(KVP_EIO, "cold tier %s: mmap: %s", c->path, strerror(errno));
        c->file_size += size;
    }
    c->seg[c->n_seg++] = (kvp_tier_seg){base, size};
    return KVP_OK;
}

/* Reserves `size` bytes for the next record: the current segment, a later one, or a new one. */
static int kvp_tier_reserve(kvp_tier *c, size_t size, int *seg, size_t *off) {
    while (c->cur_seg < c->n_seg && c->cur_off + size > c->seg[c->cur_seg].size) {
        c->cur_seg++;
        c->cur_off = 0;
    }
    if (c->cur_seg == c->n_seg) KVP_TRY(kvp_tier_add_seg(c, size));
    *seg = c->cur_seg;
    *off = c->cur_off;
    c->cur_off += size;
    return KVP_OK;
}

static int kvp_tier_new_rec(kvp_tier *c, int n, size_t size, int64_t *id) {
    if (c->n_rec == c->cap_rec) {
        int64_t cap = KVP_MAX(64, 2 * c->cap_rec);
        kvp_tier_rec *r = realloc(c->rec, sizeof *r * (size_t)cap);
        if (!r) return kvp_seterr(KVP_ENOMEM, "out of memory growing the cold tier");
        c->rec = r;
        c->cap_rec = cap;
    }
    kvp_tier_rec *r = &c->rec[c->n_rec];
    r->n = n;
    KVP_TRY(kvp_tier_reserve(c, size, &r->seg, &r->off));
    *id = c->n_rec++;
    c->bytes += size;
    return KVP_OK;
}

static uint8_t *kvp_tier_base(const kvp_tier *c, int64_t id) {
    return c->seg[c->rec[id].seg].base + c->rec[id].off;
}

/* ---- blocks ---- */

/* Row t of head h of a hot block (type F16 or F32), as floats. */
static void kvp_tier_src(const void *src, int type, size_t row, int hd, float *x) {
    if (type == KVP_TYPE_F32) memcpy(x, (const float *)src + row * hd, sizeof(float) * (size_t)hd);
    else kvp_f16_to_f32_row((const uint16_t *)src + row * hd, x, hd);
}

/* Encodes one part (keys or values) of a block: rows (nh, n) from src with `stride`. */
static void kvp_tier_encode(const kvp_tier *c, int type, const void *src, int n, int stride, uint8_t *rows,
                            float *scales, float *x) {
    for (int h = 0; h < c->nh; h++)
        for (int t = 0; t < n; t++) {
            size_t in = (size_t)h * stride + t, out = (size_t)h * n + t;
            if (c->enc == KVP_TIER_F16 && type == KVP_TYPE_F16) {
                memcpy(rows + out * c->hd * 2, (const uint16_t *)src + in * c->hd, (size_t)c->hd * 2);
                continue;
            }
            kvp_tier_src(src, type, in, c->hd, x);
            if (c->enc == KVP_TIER_F16) kvp_f32_to_f16_row(x, (uint16_t *)(void *)(rows + out * c->hd * 2), c->hd);
            else kvp_sel_quant_q8(x, c->hd, (int8_t *)rows + out * c->hd, &scales[out]);
        }
}

/* Encodes a block as KQ tiles: per head, rows [16 i, 16 i + 16) make tile i. */
static int kvp_tier_encode_kq(const kvp_tier *c, int type, const void *k, const void *v, int n, int stride,
                              uint8_t *b) {
    float *xk = malloc(sizeof(float) * KVP_KQ_T * (size_t)c->hd), *xv = malloc(sizeof(float) * KVP_KQ_T * (size_t)c->hd);
    int nt = (n + KVP_KQ_T - 1) / KVP_KQ_T;
    for (int h = 0; xk && xv && h < c->nh; h++)
        for (int i = 0; i < nt; i++) {
            int cnt = KVP_MIN(KVP_KQ_T, n - i * KVP_KQ_T);
            for (int t = 0; t < cnt; t++) {
                size_t in = (size_t)h * stride + (size_t)(i * KVP_KQ_T + t);
                kvp_tier_src(k, type, in, c->hd, xk + (size_t)t * c->hd);
                kvp_tier_src(v, type, in, c->hd, xv + (size_t)t * c->hd);
            }
            kvp_kq_tile tile = {b + ((size_t)h * nt + (size_t)i) * c->kq.bytes, 0};
            kvp_kq_tile_make(&c->kq, &tile, xk, xv, cnt);
        }
    int ok = xk && xv;
    free(xk);
    free(xv);
    return ok ? KVP_OK : kvp_seterr(KVP_ENOMEM, "out of memory moving a block to the cold tier");
}

int kvp_tier_put(kvp_tier *c, int type, const void *k, const void *v, int n, int stride, int64_t *id) {
    size_t ks, vs, ko, vo, total;
    if (c->enc == KVP_TIER_KQ) {
        kvp_tier_layout(c, n, &ks, &vs, &ko, &vo, &total);
        KVP_TRY(kvp_tier_new_rec(c, n, total, id));
        return kvp_tier_encode_kq(c, type, k, v, n, stride, kvp_tier_base(c, *id));
    }
    kvp_tier_layout(c, n, &ks, &vs, &ko, &vo, &total);
    float *x = malloc(sizeof(float) * (size_t)c->hd);
    if (!x) return kvp_seterr(KVP_ENOMEM, "out of memory moving a block to the cold tier");
    int rc = kvp_tier_new_rec(c, n, total, id);
    if (rc == KVP_OK) {
        uint8_t *b = kvp_tier_base(c, *id);
        kvp_tier_encode(c, type, k, n, stride, b + ko, (float *)(void *)(b + ks), x);
        kvp_tier_encode(c, type, v, n, stride, b + vo, (float *)(void *)(b + vs), x);
    }
    free(x);
    return rc;
}

void kvp_tier_rows(const kvp_tier *c, int64_t id, int h, int r0, int cnt, int pos0, kvp_rows *out) {
    size_t ks, vs, ko, vo, total;
    int n = c->rec[id].n;
    if (c->enc == KVP_TIER_KQ) {
        const uint8_t *b = kvp_tier_base(c, id) + (size_t)h * (size_t)((n + KVP_KQ_T - 1) / KVP_KQ_T) * c->kq.bytes;
        *out = (kvp_rows){KVP_ROWS_KQ, cnt, b, NULL, NULL, NULL, NULL, pos0, &c->kq, 0, r0};
        return;
    }
    kvp_tier_layout(c, n, &ks, &vs, &ko, &vo, &total);
    const uint8_t *b = kvp_tier_base(c, id);
    size_t row = (size_t)h * n + r0, esz = c->enc == KVP_TIER_Q8 ? 1 : 2;
    *out = (kvp_rows){c->enc == KVP_TIER_Q8 ? KVP_ROWS_Q8 : KVP_ROWS_F16, cnt, b + ko + row * c->hd * esz,
                      b + vo + row * c->hd * esz, NULL, NULL, NULL, pos0, NULL, 0, 0};
    if (c->enc == KVP_TIER_Q8) {
        out->ks = (const float *)(const void *)(b + ks) + row;
        out->vs = (const float *)(const void *)(b + vs) + row;
    }
}

/* Decodes the n rows of a run to floats (n, hd). */
static void kvp_tier_decode(const kvp_rows *r, int hd, const void *rows, const float *scales, float *x) {
    for (int t = 0; t < r->n; t++) {
        if (r->fmt == KVP_ROWS_F16) {
            kvp_f16_to_f32_row((const uint16_t *)rows + (size_t)t * hd, x + (size_t)t * hd, hd);
            continue;
        }
        for (int i = 0; i < hd; i++) x[(size_t)t * hd + i] = scales[t] * (float)((const int8_t *)rows)[(size_t)t * hd + i];
    }
}

void kvp_tier_read(const kvp_tier *c, int64_t id, int h, float *k, float *v) {
    kvp_rows r;
    kvp_tier_rows(c, id, h, 0, c->rec[id].n, 0, &r);
    if (r.fmt == KVP_ROWS_KQ) {
        kvp_kq_run_floats(&r, 0, k);
        kvp_kq_run_floats(&r, 1, v);
        return;
    }
    kvp_tier_decode(&r, c->hd, r.k, r.ks, k);
    kvp_tier_decode(&r, c->hd, r.v, r.vs, v);
}

int kvp_tier_get_f16(const kvp_tier *c, int64_t id, uint16_t *k, uint16_t *v) {
    int n = c->rec[id].n;
    size_t per = (size_t)n * c->hd;
    float *xk = malloc(sizeof(float) * per), *xv = malloc(sizeof(float) * per);
    for (int h = 0; xk && xv && h < c->nh; h++) {
        kvp_rows r;
        kvp_tier_rows(c, id, h, 0, n, 0, &r);
        if (c->enc == KVP_TIER_F16) {
            memcpy(k + (size_t)h * per, r.k, per * 2);
            memcpy(v + (size_t)h * per, r.v, per * 2);
            continue;
        }
        kvp_tier_read(c, id, h, xk, xv);
        kvp_f32_to_f16_row(xk, k + (size_t)h * per, (int)per);
        kvp_f32_to_f16_row(xv, v + (size_t)h * per, (int)per);
    }
    int ok = xk && xv;
    free(xk);
    free(xv);
    return ok ? KVP_OK : kvp_seterr(KVP_ENOMEM, "out of memory reading the cold tier");
}

int kvp_tier_use_kq(kvp_tier *c, int kbits, int vbits) {
    if (c->n_rec) return kvp_seterr(KVP_EINVAL, "the cold tier's encoding cannot change once it holds blocks");
    char *semi = strrchr(c->spec, ';');
    c->enc = KVP_TIER_KQ;
    kvp_kq_fmt_init(&c->kq, kbits, vbits, c->hd);
    if (semi) snprintf(semi + 1, sizeof c->spec - (size_t)(semi + 1 - c->spec), "k%dv%d", kbits, vbits);
    return KVP_OK;
}

int kvp_tier_len(const kvp_tier *c, int64_t id) { return c->rec[id].n; }
int64_t kvp_tier_count(const kvp_tier *c) { return c->n_rec; }
uint64_t kvp_tier_bytes(const kvp_tier *c) { return c ? c->bytes : 0; }
const char *kvp_tier_spec(const kvp_tier *c) { return c->spec; }

void kvp_tier_rewind(kvp_tier *c, int64_t id) {
    if (id < 0 || id >= c->n_rec) return;
    for (int64_t i = id; i < c->n_rec; i++) {
        size_t ks, vs, ko, vo, total;
        kvp_tier_layout(c, c->rec[i].n, &ks, &vs, &ko, &vo, &total);
        c->bytes -= total;
    }
    c->cur_seg = c->rec[id].seg;
    c->cur_off = c->rec[id].off;
    c->n_rec = id;
}
