/*
 * store_redis.c: the Redis store (hiredis), for machines that share contexts. Keys are
 * PREFIX + the 32 hex digits of the chunk key; values are store entries; SET takes an
 * optional expiry (EX ttl). Connecting and every command have a deadline (timeout_ms), so a
 * slow or dead server gives KVP_ETIMEOUT or KVP_ESTORE, never a hang. After a connection
 * error the store reconnects once on the next call.
 *
 * Built only with hiredis (the Makefile defines KVP_HAVE_HIREDIS when `pkg-config hiredis`
 * finds it, or with KVP_REDIS=1); without it, opening a redis:// store gives
 * KVP_EUNSUPPORTED.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "store.h"

/* Parses "redis://HOST[:PORT][/DB]" into host (cap bytes), *port and *db. */
static int kvp_redis_parse_uri(const char *uri, char *host, size_t cap, int *port, int *db) {
    const char *h = uri + 8, *end = h + strcspn(h, ":/");
    if (end == h || (size_t)(end - h) >= cap) return kvp_seterr(KVP_EINVAL, "redis store '%s': no host name", uri);
    memcpy(host, h, (size_t)(end - h));
    host[end - h] = 0;
    *port = 6379;
    *db = 0;
    char *stop = NULL;
    if (*end == ':') {
        long v = strtol(end + 1, &stop, 10);
        if (stop == end + 1 || v < 1 || v > 65535) return kvp_seterr(KVP_EINVAL, "redis store '%s': bad port", uri);
        *port = (int)v;
        end = stop;
    }
    if (*end == '/' && end[1]) {
        long v = strtol(end + 1, &stop, 10);
        if (stop == end + 1 || *stop || v < 0 || v > 1000000) return kvp_seterr(KVP_EINVAL, "redis store '%s': bad database number", uri);
        *db = (int)v;
    } else if (*end && strcmp(end, "/")) {
        return kvp_seterr(KVP_EINVAL, "redis store '%s': expected redis://HOST:PORT/DB", uri);
    }
    return KVP_OK;
}

#ifdef KVP_HAVE_HIREDIS
#include <hiredis/hiredis.h>

typedef struct {
    kvp_store base;
    redisContext *rc;
    char host[256];
    int port, db;
    struct timeval tv;
} kvp_store_redis;

/* The error of a failed context: a timeout or a server/connection failure. */
static int kvp_redis_ctx_error(const kvp_store_redis *r, const char *what) {
    const char *msg = r->rc ? r->rc->errstr : "cannot allocate a connection";
    int timed_out = r->rc && (strstr(msg, "timed out") ||
                              strstr(msg, "temporarily unavailable"));
    if (timed_out)
        return kvp_seterr(KVP_ETIMEOUT, "redis %s:%d: %s timed out after %ld ms", r->host, r->port, what,
                          (long)(r->tv.tv_sec * 1000 + r->tv.tv_usec / 1000));
    return kvp_seterr(KVP_ESTORE, "redis %s:%d: %s failed: %s", r->host, r->port, what, msg);
}

static void kvp_redis_drop(kvp_store_redis *r) {
    if (r->rc) redisFree(r->rc);
    r->rc = NULL;
}

/* Runs a command; the reply is freed unless *out takes it. */
static int kvp_redis_cmd(kvp_store_redis *r, const char *what, redisReply **out, const char *fmt, ...);

static int kvp_redis_connect(kvp_store_redis *r) {
    r->rc = redisConnectWithTimeout(r->host, r->port, r->tv);
    if (!r->rc || r->rc->err) {
        int e = kvp_redis_ctx_error(r, "connect");
        kvp_redis_drop(r);
        return e;
    }
    if (redisSetTimeout(r->rc, r->tv) != REDIS_OK) {
        int e = kvp_redis_ctx_error(r, "setting the timeout");
        kvp_redis_drop(r);
        return e;
    }
    if (r->db == 0) return KVP_OK;
    char db[16];
    snprintf(db, sizeof db, "%d", r->db);
    return kvp_redis_cmd(r, "SELECT", NULL, "SELECT %s", db);
}

static int kvp_redis_check_reply(kvp_store_redis *r, const char *what, redisReply *rep) {
    if (!rep) {
        int e = kvp_redis_ctx_error(r, what);
        kvp_redis_drop(r); /* the connection is unusable after an I/O error: reconnect next time */
        return e;
    }
    if (rep->type == REDIS_REPLY_ERROR)
        return kvp_seterr(KVP_ESTORE, "redis %s:%d: %s: %.*s", r->host, r->port, what, (int)rep->len, rep->str);
    return KVP_OK;
}

static int kvp_redis_cmd(kvp_store_redis *r, const char *what, redisReply **out, const char *fmt, ...) {
    if (!r->rc) KVP_TRY(kvp_redis_connect(r));
    va_list ap;
    va_start(ap, fmt);
    redisReply *rep = redisvCommand(r->rc, fmt, ap);
    va_end(ap);
    int rc = kvp_redis_check_reply(r, what, rep);
    if (rc == KVP_OK && out) *out = rep;
    else if (rep) freeReplyObject(rep);
    return rc;
}

static int kvp_redis_put(kvp_store *s, const char *key, const void *data, size_t size) {
    kvp_store_redis *r = (kvp_store_redis *)s;
    char k[128];
    snprintf(k, sizeof k, "%s%s", s->prefix, key);
    if (s->params.ttl_seconds > 0) {
        char ttl[16];
        snprintf(ttl, sizeof ttl, "%d", s->params.ttl_seconds);
        return kvp_redis_cmd(r, "SET", NULL, "SET %s %b EX %s", k, data, size, ttl);
    }
    return kvp_redis_cmd(r, "SET", NULL, "SET %s %b", k, data, size);
}

static int kvp_redis_get(kvp_store *s, const char *key, void **data, size_t *size) {
    kvp_store_redis *r = (kvp_store_redis *)s;
    char k[128];
    snprintf(k, sizeof k, "%s%s", s->prefix, key);
    redisReply *rep = NULL;
    KVP_TRY(kvp_redis_cmd(r, "GET", &rep, "GET %s", k));
    int rc = KVP_OK;
    if (rep->type == REDIS_REPLY_NIL) {
        rc = kvp_seterr(KVP_ENOTFOUND, "no stored chunk %s", key);
    } else if (rep->type != REDIS_REPLY_STRING) {
        rc = kvp_seterr(KVP_ESTORE, "redis %s:%d: GET %s: unexpected reply type %d", r->host, r->port, k, rep->type);
    } else if (!(*data = malloc(rep->len ? rep->len : 1))) {
        rc = kvp_seterr(KVP_ENOMEM, "out of memory for a stored chunk of %zu bytes", (size_t)rep->len);
    } else {
        memcpy(*data, rep->str, rep->len);
        *size = rep->len;
    }
    freeReplyObject(rep);
    return rc;
}

static int kvp_redis_has(kvp_store *s, const char *key) {
    kvp_store_redis *r = (kvp_store_redis *)s;
    char k[128];
    snprintf(k, sizeof k, "%s%s", s->prefix, key);
    redisReply *rep = NULL;
    KVP_TRY(kvp_redis_cmd(r, "EXISTS", &rep, "EXISTS %s", k));
    int v = rep->type == REDIS_REPLY_INTEGER ? rep->integer > 0 : 0;
    freeReplyObject(rep);
    return v;
}

static int kvp_redis_usage(kvp_store *s, uint64_t *bytes, uint64_t *entries) {
    *bytes = *entries = 0;
    return kvp_seterr(KVP_EUNSUPPORTED, "a Redis store does not report its usage (use redis-cli INFO memory)");
}

static void kvp_redis_free(kvp_store *s) {
    kvp_store_redis *r = (kvp_store_redis *)s;
    kvp_redis_drop(r);
    free(r);
}

static const kvp_store_vtbl kvp_redis_vtbl = {"redis", kvp_redis_put, kvp_redis_get, kvp_redis_has, kvp_redis_usage,
                                              kvp_redis_free};

int kvp_store_redis_open(const char *uri, const kvp_store_params *p, kvp_store **out) {
    kvp_store_redis *r = calloc(1, sizeof *r);
    if (!r) return kvp_seterr(KVP_ENOMEM, "out of memory opening a store");
    int rc = kvp_redis_parse_uri(uri, r->host, sizeof r->host, &r->port, &r->db);
    r->base.vt = &kvp_redis_vtbl;
    r->base.params = *p;
    snprintf(r->base.prefix, sizeof r->base.prefix, "%s", p->prefix ? p->prefix : "kvp:");
    int ms = p->timeout_ms > 0 ? p->timeout_ms : 2000;
    r->tv.tv_sec = ms / 1000;
    r->tv.tv_usec = (ms % 1000) * 1000;
    if (rc == KVP_OK) rc = kvp_redis_connect(r);
    if (rc < 0) {
        kvp_redis_free(&r->base);
        return rc;
    }
    *out = &r->base;
    return KVP_OK;
}

#else

int kvp_store_redis_open(const char *uri, const kvp_store_params *p, kvp_store **out) {
    char host[256];
    int port, db;
    KVP_TRY(kvp_redis_parse_uri(uri, host, sizeof host, &port, &db));
    return kvp_seterr(KVP_EUNSUPPORTED, "redis store '%s': this kvpack was built without hiredis (install "
                      "libhiredis-dev and rebuild, or build with KVP_REDIS=1)", uri);
}

#endif
