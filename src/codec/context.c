/*
 * context.c: saving a context as a .kvz image (in memory or a file) and loading one back,
 * and the controller that picks a level per chunk from a load-time target.
 *
 * Saving streams: the header's size depends only on the token and chunk counts, so chunks
 * are encoded one at a time and written after the space kept for the header, which is
 * written last, once every chunk's size and CRC is known.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codec.h"
#include "common/common.h"
#include "engine/engine.h"
#include "hash.h"
#include "model/model.h"

kvp_save_params kvp_save_default_params(void) {
    kvp_save_params p = {KVP_LEVEL_DEFAULT, KVP_CHUNK_TOKENS_DEFAULT, 0, 0, 0, 0};
    return p;
}

static int kvp_save_check(const kvp_ctx *c, int n_tokens, const kvp_save_params *p) {
    if (p->level < KVP_LEVEL_AUTO || p->level > KVP_LEVEL_LOSSLESS)
        return kvp_seterr(KVP_EINVAL, "quality level %d does not exist (-1 auto, 0 text .. 4 lossless)", p->level);
    if (p->chunk_tokens < 0 || p->chunk_tokens > KVP_KVZ_MAX_CHUNK_TOKENS)
        return kvp_seterr(KVP_EINVAL, "chunk size %d is out of range (1..%d)", p->chunk_tokens, KVP_KVZ_MAX_CHUNK_TOKENS);
    if (p->level == KVP_LEVEL_AUTO && !(p->bandwidth > 0 && p->slo > 0))
        return kvp_seterr(KVP_EINVAL, "the automatic level needs a bandwidth and a load-time target (slo) above 0");
    if (n_tokens < 1 || n_tokens > kvp_ctx_pos(c) || n_tokens > KVP_KVZ_MAX_TOKENS)
        return kvp_seterr(KVP_EINVAL, "cannot save %d tokens of a context that holds %d", n_tokens, kvp_ctx_pos(c));
    return KVP_OK;
}

static int kvp_save_chunk_tokens(const kvp_save_params *p) {
    return p->chunk_tokens > 0 ? p->chunk_tokens : KVP_CHUNK_TOKENS_DEFAULT;
}

/* Fills the header for n tokens of context c. */
static void kvp_save_header(const kvp_ctx *c, int n, const kvp_save_params *p, kvp_kvz_header *h) {
    memset(h, 0, sizeof *h);
    kvp_fingerprint_of(kvp_ctx_model(c), &h->fp);
    h->n_tokens = n;
    h->chunk_tokens = kvp_save_chunk_tokens(p);
    h->n_chunks = (n + h->chunk_tokens - 1) / h->chunk_tokens;
    h->token_bytes = h->fp.vocab_size <= 65536 ? 2 : 4;
    kvp_kv_stats st;
    kvp_ctx_kv_stats(c, &st);
    h->kv_type = st.spec && !strcmp(st.spec, "f16") ? KVP_TYPE_F16 : KVP_TYPE_F32;
    h->header_size = kvp_kvz_header_bytes(n, h->n_chunks, h->token_bytes);
}

int kvp_context_save_bound(const kvp_ctx *c, int n_tokens, const kvp_save_params *p, size_t *bound) {
    kvp_save_params def = kvp_save_default_params();
    if (!p) p = &def;
    KVP_TRY(kvp_save_check(c, n_tokens, p));
    const kvp_model_info *in = kvp_model_get_info(kvp_ctx_model(c));
    kvp_chunk_shape s = {in->n_layers, in->n_kv_heads, in->head_dim, 0, 0, 0}; /* rotary fields: no effect on the bound */
    int ct = kvp_save_chunk_tokens(p), nc = (n_tokens + ct - 1) / ct;
    *bound = (size_t)kvp_kvz_header_bytes(n_tokens, nc, 4) + (size_t)(nc - 1) * kvp_chunk_bound(&s, ct) +
             kvp_chunk_bound(&s, n_tokens - (nc - 1) * ct);
    return KVP_OK;
}

/* ---- where the bytes go ---- */

typedef struct kvp_sink {
    uint8_t *buf; /* memory: the caller's buffer */
    size_t cap;
    int fd;       /* file: the temporary file, else -1 */
    const char *path;
} kvp_sink;

static int kvp_sink_write(kvp_sink *k, uint64_t at, const void *data, size_t n) {
    if (k->fd < 0) {
        if (at > k->cap || k->cap - at < n)
            return kvp_seterr(KVP_ERANGE, "output buffer of %zu bytes is too small for the context", k->cap);
        memcpy(k->buf + at, data, n);
        return KVP_OK;
    }
    for (size_t done = 0; done < n;) {
        ssize_t w = pwrite(k->fd, (const uint8_t *)data + done, n - done, (off_t)(at + done));
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return kvp_seterr(KVP_EIO, "%s: write failed: %s", k->path, strerror(errno));
        done += (size_t)w;
    }
    return KVP_OK;
}

/* ---- the controller ---- */

/* Seconds to fetch and decode an encoded chunk of `bytes` holding `values` values. */
static double kvp_load_seconds(const kvp_save_params *p, size_t bytes, size_t values) {
    double t = (double)bytes / p->bandwidth;
    if (p->decode_rate > 0) t += 2.0 * (double)values / p->decode_rate;
    return t;
}

/* ---- saving ---- */

int kvp_saver_init(kvp_saver *sv, kvp_ctx *c, int n, const kvp_save_params *p) {
    memset(sv, 0, sizeof *sv);
    KVP_TRY(kvp_save_check(c, n, p));
    sv->c = c;
    sv->p = p;
    kvp_save_header(c, n, p, &sv->h);
    sv->s = kvp_fingerprint_shape(&sv->h.fp);
    size_t ct = (size_t)sv->h.chunk_tokens;
    sv->chunk_cap = kvp_chunk_bound(&sv->s, (int)ct);
    sv->kv = malloc(sizeof(float) * (size_t)sv->s.n_layers * 2 * ct * (size_t)sv->s.n_kv_heads * sv->s.head_dim);
    sv->chunk = malloc(sv->chunk_cap);
    sv->table = calloc((size_t)sv->h.n_chunks, sizeof *sv->table);
    sv->qk = malloc(sizeof(float) * (size_t)sv->s.n_layers);
    if (!sv->kv || !sv->chunk || !sv->table || !sv->qk) return kvp_seterr(KVP_ENOMEM, "out of memory saving a context");
    kvp_codec_qk(kvp_ctx_model(c), sv->qk);
    return kvp_codec_new(kvp_ctx_pool(c), &sv->cd);
}

void kvp_saver_free(kvp_saver *sv) {
    kvp_codec_free(sv->cd);
    free(sv->kv);
    free(sv->chunk);
    free(sv->table);
    free(sv->qk);
}

/* Encodes a chunk at the level the controller picks: the highest lossy level that loads
 * within the chunk's share of the target; text when recomputing is faster than loading even
 * the lowest level; else the lowest level. */
static int kvp_save_auto(kvp_saver *sv, int pos, int n, size_t *size) {
    const kvp_save_params *p = sv->p;
    size_t values = (size_t)sv->s.n_layers * 2 * (size_t)n * (size_t)sv->s.n_kv_heads * (size_t)sv->s.head_dim;
    double budget = p->slo * (double)n / (double)sv->h.n_tokens;
    for (int level = KVP_LEVEL_HIGH; level >= KVP_LEVEL_LOW; level--) {
        KVP_TRY(kvp_chunk_encode(sv->cd, &sv->s, pos, n, level, sv->kv, sv->qk, sv->chunk, sv->chunk_cap, size));
        double t = kvp_load_seconds(p, *size, values);
        if (level == KVP_LEVEL_LOW && p->prefill_rate > 0 && (double)n / p->prefill_rate < t)
            return kvp_chunk_encode(sv->cd, &sv->s, pos, n, KVP_LEVEL_TEXT, NULL, NULL, sv->chunk, sv->chunk_cap, size);
        if (t <= budget) return KVP_OK;
    }
    return KVP_OK; /* the lowest level, already in sv->chunk */
}

int kvp_saver_encode(kvp_saver *sv, int i, size_t *size) {
    int pos = i * sv->h.chunk_tokens, n = KVP_MIN(sv->h.chunk_tokens, sv->h.n_tokens - pos);
    int level = sv->p->level;
    if (level != KVP_LEVEL_TEXT) KVP_TRY(kvp_ctx_kv_read(sv->c, pos, n, sv->kv));
    if (level == KVP_LEVEL_AUTO)
        return kvp_save_auto(sv, pos, n, size);
    return kvp_chunk_encode(sv->cd, &sv->s, pos, n, level, sv->kv, sv->qk, sv->chunk, sv->chunk_cap, size);
}

static int kvp_saver_run(kvp_saver *sv, const int *tokens, kvp_sink *k, size_t *total) {
    for (int i = 0; i < sv->h.n_tokens; i++)
        if (tokens[i] < 0 || (uint32_t)tokens[i] >= sv->h.fp.vocab_size)
            return kvp_seterr(KVP_EINVAL, "token %d is id %d, outside the vocabulary", i, tokens[i]);
    uint64_t at = sv->h.header_size;
    for (int i = 0; i < sv->h.n_chunks; i++) {
        size_t size = 0;
        KVP_TRY(kvp_saver_encode(sv, i, &size));
        KVP_TRY(kvp_sink_write(k, at, sv->chunk, size));
        int pos = i * sv->h.chunk_tokens;
        sv->table[i] = (kvp_kvz_chunk_info){pos, KVP_MIN(sv->h.chunk_tokens, sv->h.n_tokens - pos), sv->chunk[4], at,
                                            (uint32_t)size, kvp_crc32c(0, sv->chunk, size)};
        at += size;
    }
    sv->h.total_size = at;
    uint8_t *head = malloc(sv->h.header_size);
    if (!head) return kvp_seterr(KVP_ENOMEM, "out of memory writing a .kvz header");
    kvp_kvz_write_header(&sv->h, tokens, sv->table, head);
    int rc = kvp_sink_write(k, 0, head, sv->h.header_size);
    free(head);
    *total = at;
    return rc;
}

static int kvp_context_save_to(kvp_ctx *c, const int *tokens, int n, const kvp_save_params *p, kvp_sink *k,
                               size_t *size) {
    kvp_save_params def = kvp_save_default_params();
    if (!p) p = &def;
    if (!tokens) return kvp_seterr(KVP_EINVAL, "no token ids given for the context");
    kvp_saver sv;
    size_t total = 0;
    int rc = kvp_saver_init(&sv, c, n, p);
    if (rc == KVP_OK) rc = kvp_saver_run(&sv, tokens, k, &total);
    kvp_saver_free(&sv);
    if (rc == KVP_OK && size) *size = total;
    return rc;
}

int kvp_context_save(kvp_ctx *c, const int *tokens, int n_tokens, const kvp_save_params *p, void *buf,
                     size_t cap, size_t *size) {
    kvp_sink k = {buf, cap, -1, NULL};
    return kvp_context_save_to(c, tokens, n_tokens, p, &k, size);
}

/* Syncs and closes the temporary file and renames it into place (or removes it on error). */
static int kvp_file_commit(int fd, const char *tmp, const char *path, int rc) {
    if (rc == KVP_OK && fsync(fd) != 0) rc = kvp_seterr(KVP_EIO, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && rc == KVP_OK) rc = kvp_seterr(KVP_EIO, "%s: close failed: %s", tmp, strerror(errno));
    if (rc == KVP_OK && rename(tmp, path) != 0)
        rc = kvp_seterr(KVP_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    if (rc != KVP_OK) unlink(tmp);
    return rc;
}

int kvp_context_save_file(kvp_ctx *c, const int *tokens, int n_tokens, const kvp_save_params *p,
                          const char *path, size_t *size) {
    if (!path) return kvp_seterr(KVP_EINVAL, "no output path given");
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return kvp_seterr(KVP_EINVAL, "output path is too long");
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return kvp_seterr(KVP_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    kvp_sink k = {NULL, 0, fd, tmp};
    int rc = kvp_context_save_to(c, tokens, n_tokens, p, &k, size);
    return kvp_file_commit(fd, tmp, path, rc);
}

/* ---- loading ---- */

static int kvp_load_begin(kvp_ctx *c, kvp_kvz *z) {
    if (kvp_ctx_pos(c) != 0)
        return kvp_seterr(KVP_EINVAL, "a context can only be loaded into an empty context (this one holds %d tokens)",
                          kvp_ctx_pos(c));
    const kvp_kvz_info *in = kvp_kvz_get_info(z);
    KVP_TRY(kvp_kvz_check_model(z, kvp_ctx_model(c)));
    if (in->n_tokens > kvp_ctx_n_ctx(c))
        return kvp_seterr(KVP_ERANGE, "the saved context has %d tokens; this context holds %d", in->n_tokens,
                          kvp_ctx_n_ctx(c));
    return KVP_OK;
}

int kvp_context_load(kvp_ctx *c, const void *data, size_t size, int *n_tokens) {
    kvp_kvz *z = NULL;
    KVP_TRY(kvp_kvz_open(data, size, &z));
    const kvp_kvz_info *in = kvp_kvz_get_info(z);
    int rc = kvp_load_begin(c, z);
    if (rc == KVP_OK && in->total_size != size)
        rc = kvp_seterr(KVP_EFORMAT, "the .kvz image has %zu bytes, its header says %llu", size,
                        (unsigned long long)in->total_size);
    for (int i = 0; rc == KVP_OK && i < in->n_chunks; i++) rc = kvp_kvz_load_chunk(z, c, i, NULL, 0);
    if (rc == KVP_OK && n_tokens) *n_tokens = in->n_tokens;
    if (rc != KVP_OK && kvp_ctx_pos(c) > 0) kvp_ctx_reset(c);
    kvp_kvz_free(z);
    return rc;
}

/* Reads exactly n bytes at offset `at`; a short read is a truncated file. */
static int kvp_file_read(int fd, const char *path, uint64_t at, void *buf, size_t n) {
    for (size_t done = 0; done < n;) {
        ssize_t r = pread(fd, (uint8_t *)buf + done, n - done, (off_t)(at + done));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return kvp_seterr(KVP_EIO, "%s: read failed: %s", path, strerror(errno));
        if (r == 0)
            return kvp_seterr(KVP_EFORMAT, "%s: truncated: ends at byte %llu, %zu bytes short", path,
                              (unsigned long long)(at + done), n - done);
        done += (size_t)r;
    }
    return KVP_OK;
}

/* Opens the header of a .kvz file: *head (malloc'ed) holds it, *z parses it. */
static int kvp_file_header(int fd, const char *path, uint8_t **head, kvp_kvz **z) {
    uint8_t first[16];
    size_t need = 0;
    KVP_TRY(kvp_file_read(fd, path, 0, first, sizeof first));
    KVP_TRY(kvp_kvz_header_size(first, sizeof first, &need));
    if (!(*head = malloc(need))) return kvp_seterr(KVP_ENOMEM, "out of memory reading %s", path);
    KVP_TRY(kvp_file_read(fd, path, 0, *head, need));
    KVP_TRY(kvp_kvz_open(*head, need, z));
    struct stat st;
    if (fstat(fd, &st) != 0) return kvp_seterr(KVP_EIO, "%s: stat failed: %s", path, strerror(errno));
    uint64_t total = kvp_kvz_get_info(*z)->total_size;
    if ((uint64_t)st.st_size != total)
        return kvp_seterr(KVP_EFORMAT, "%s: the file has %llu bytes, its header says %llu%s", path,
                          (unsigned long long)st.st_size, (unsigned long long)total,
                          (uint64_t)st.st_size < total ? " (truncated)" : "");
    return KVP_OK;
}

/* Reads and loads chunk after chunk, each decoded as soon as its bytes are in. */
static int kvp_file_chunks(int fd, const char *path, kvp_kvz *z, kvp_ctx *c) {
    const kvp_kvz_info *in = kvp_kvz_get_info(z);
    uint8_t *buf = NULL;
    size_t cap = 0;
    int rc = KVP_OK;
    for (int i = 0; rc == KVP_OK && i < in->n_chunks; i++) {
        kvp_kvz_chunk_info ci;
        kvp_kvz_chunk(z, i, &ci);
        if (ci.size > cap) {
            free(buf);
            cap = ci.size;
            if (!(buf = malloc(cap))) rc = kvp_seterr(KVP_ENOMEM, "out of memory reading %s", path);
        }
        if (rc == KVP_OK) rc = kvp_file_read(fd, path, ci.offset, buf, ci.size);
        if (rc == KVP_OK) rc = kvp_kvz_load_chunk(z, c, i, buf, ci.size);
    }
    free(buf);
    return rc;
}

int kvp_context_load_file(kvp_ctx *c, const char *path, int *n_tokens) {
    if (!path) return kvp_seterr(KVP_EINVAL, "no context file given");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return kvp_seterr(KVP_EIO, "%s: cannot open: %s", path, strerror(errno));
    uint8_t *head = NULL;
    kvp_kvz *z = NULL;
    int rc = kvp_file_header(fd, path, &head, &z);
    if (rc == KVP_OK) rc = kvp_load_begin(c, z);
    if (rc == KVP_OK) rc = kvp_file_chunks(fd, path, z, c);
    if (rc == KVP_OK && n_tokens) *n_tokens = kvp_kvz_get_info(z)->n_tokens;
    if (rc != KVP_OK && kvp_ctx_pos(c) > 0) kvp_ctx_reset(c);
    kvp_kvz_free(z);
    free(head);
    close(fd);
    return rc;
}
