/*
 * error.c: the error table and the per-thread detail message.
 */
#include <stdarg.h>
#include <stdio.h>

#include "common.h"

static const char *const kvp_err_names[KVP_ERR_COUNT] = {
    "success",                     /* KVP_OK */
    "out of memory",               /* KVP_ENOMEM */
    "input/output error",          /* KVP_EIO */
    "malformed data",              /* KVP_EFORMAT */
    "unsupported feature",         /* KVP_EUNSUPPORTED */
    "invalid argument",            /* KVP_EINVAL */
    "value out of range",          /* KVP_ERANGE */
    "checksum mismatch",           /* KVP_ECORRUPT */
    "made for another model",      /* KVP_EMISMATCH */
    "context store failure",       /* KVP_ESTORE */
    "timed out",                   /* KVP_ETIMEOUT */
    "not found",                   /* KVP_ENOTFOUND */
    "internal error",              /* KVP_EINTERNAL */
};

static _Thread_local char kvp_err_buf[1024];

const char *kvp_strerror(int code) {
    if (code > 0 || code <= -KVP_ERR_COUNT) return "unknown error";
    return kvp_err_names[-code];
}

const char *kvp_errmsg(void) {
    return kvp_err_buf[0] ? kvp_err_buf : "no error message";
}

int kvp_seterr(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(kvp_err_buf, sizeof kvp_err_buf, fmt, ap);
    va_end(ap);
    return code;
}

int kvp_errprefix(int code, const char *prefix) {
    char tmp[sizeof kvp_err_buf];
    size_t n = strlen(prefix);
    if (n > sizeof tmp / 2) n = sizeof tmp / 2;
    memcpy(tmp, prefix, n);
    memcpy(tmp + n, ": ", 2);
    size_t rest = sizeof tmp - n - 3;
    size_t m = strnlen(kvp_err_buf, rest);
    memcpy(tmp + n + 2, kvp_err_buf, m);
    tmp[n + 2 + m] = 0;
    memcpy(kvp_err_buf, tmp, sizeof tmp);
    return code;
}
