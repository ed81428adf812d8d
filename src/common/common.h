/*
 * common.h: what every kvpack source file shares: error reporting, half-precision
 * conversions, small helpers. Internal: not part of the public API.
 */
#ifndef KVP_COMMON_H
#define KVP_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kvpack.h"

/* Records code and a printf-style detail message for the calling thread (read back with
 * kvp_errmsg()) and returns code, so that `return kvp_seterr(KVP_EFORMAT, "...")` works. */
int kvp_seterr(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prefixes the calling thread's current message with "prefix: " and returns code. */
int kvp_errprefix(int code, const char *prefix);

#define KVP_TRY(expr)              \
    do {                           \
        int kvp_try_rc_ = (expr);  \
        if (kvp_try_rc_ < 0)       \
            return kvp_try_rc_;    \
    } while (0)

#define KVP_MIN(a, b) ((a) < (b) ? (a) : (b))
#define KVP_MAX(a, b) ((a) > (b) ? (a) : (b))
#define KVP_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Aligned allocation (64 bytes) for kernel buffers; kvp_afree accepts NULL. */
void *kvp_amalloc(size_t bytes);
void *kvp_acalloc(size_t bytes);
void kvp_afree(void *p);

/* IEEE half precision <-> float. f32->f16 rounds to nearest even and keeps NaN a NaN. */
static inline float kvp_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalize */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400));
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t kvp_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u) return (uint16_t)(sign | 0x7e00); /* NaN */
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* overflow to inf */
    if (absx < 0x38800000u) { /* subnormal or zero in f16 */
        float g; /* scale so that the f16 subnormal unit becomes 1 (exact), then round */
        memcpy(&g, &absx, 4);
        g *= 16777216.0f;
        uint32_t r = (uint32_t)g;
        float rem = g - (float)r;
        if (rem > 0.5f || (rem == 0.5f && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = absx + 0xc8000fffu + ((absx >> 13) & 1); /* rebias exponent, round to even */
    return (uint16_t)(sign | (r >> 13));
}

static inline float kvp_bf16_to_f32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t kvp_f32_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 64); /* quiet NaN */
    return (uint16_t)((x + (0x7fff + ((x >> 16) & 1))) >> 16);
}

/* Reads a whole file into a malloc'ed buffer (caller frees). */
int kvp_read_file(const char *path, void **data, size_t *size);

/* Monotonic clock in seconds. */
double kvp_now(void);

#endif /* KVP_COMMON_H */
