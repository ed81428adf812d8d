/*
 * hash.c: CRC32C (hardware instruction with a table-driven twin) and XXH64.
 */
#include <string.h>

#include "hash.h"

/* ---- CRC32C ---- */

static uint32_t kvp_crc_table[256];
static int kvp_crc_ready;

/* Builds the byte table of the reflected Castagnoli polynomial. Idempotent: two threads that
 * race here write the same values. */
static void kvp_crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
        __atomic_store_n(&kvp_crc_table[i], c, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&kvp_crc_ready, 1, __ATOMIC_RELEASE);
}

uint32_t kvp_crc32c_ref(uint32_t crc, const void *data, size_t n) {
    if (!__atomic_load_n(&kvp_crc_ready, __ATOMIC_ACQUIRE)) kvp_crc_init();
    const uint8_t *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) crc = kvp_crc_table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>

__attribute__((target("sse4.2"))) static uint32_t kvp_crc32c_sse42(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = ~crc;
    for (; n >= 8; n -= 8, p += 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
    }
    uint32_t c32 = (uint32_t)c;
    for (; n; n--, p++) c32 = _mm_crc32_u8(c32, *p);
    return ~c32;
}

uint32_t kvp_crc32c(uint32_t crc, const void *data, size_t n) {
    static int have = -1;
    int h = __atomic_load_n(&have, __ATOMIC_RELAXED);
    if (h < 0) {
        __builtin_cpu_init();
        h = __builtin_cpu_supports("sse4.2") ? 1 : 0;
        __atomic_store_n(&have, h, __ATOMIC_RELAXED);
    }
    return h ? kvp_crc32c_sse42(crc, data, n) : kvp_crc32c_ref(crc, data, n);
}
#else
uint32_t kvp_crc32c(uint32_t crc, const void *data, size_t n) { return kvp_crc32c_ref(crc, data, n); }
#endif

/* ---- XXH64 ---- */

#define KVP_P1 0x9E3779B185EBCA87ull
#define KVP_P2 0xC2B2AE3D27D4EB4Full
#define KVP_P3 0x165667B19E3779F9ull
#define KVP_P4 0x85EBCA77C2B2AE63ull
#define KVP_P5 0x27D4EB2F165667C5ull

static inline uint64_t kvp_rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t kvp_xxh_round(uint64_t acc, uint64_t input) {
    acc += input * KVP_P2;
    return kvp_rotl64(acc, 31) * KVP_P1;
}

static inline uint64_t kvp_xxh_merge(uint64_t acc, uint64_t v) {
    acc ^= kvp_xxh_round(0, v);
    return acc * KVP_P1 + KVP_P4;
}

/* The 32-byte stripes of an input of at least 32 bytes; advances *pp past them. */
static uint64_t kvp_xxh_stripes(const uint8_t **pp, const uint8_t *end, uint64_t seed) {
    const uint8_t *p = *pp;
    uint64_t v1 = seed + KVP_P1 + KVP_P2, v2 = seed + KVP_P2, v3 = seed, v4 = seed - KVP_P1;
    for (; end - p >= 32; p += 32) {
        v1 = kvp_xxh_round(v1, kvp_rd64(p));
        v2 = kvp_xxh_round(v2, kvp_rd64(p + 8));
        v3 = kvp_xxh_round(v3, kvp_rd64(p + 16));
        v4 = kvp_xxh_round(v4, kvp_rd64(p + 24));
    }
    *pp = p;
    uint64_t h = kvp_rotl64(v1, 1) + kvp_rotl64(v2, 7) + kvp_rotl64(v3, 12) + kvp_rotl64(v4, 18);
    h = kvp_xxh_merge(h, v1);
    h = kvp_xxh_merge(h, v2);
    h = kvp_xxh_merge(h, v3);
    return kvp_xxh_merge(h, v4);
}

uint64_t kvp_xxh64(const void *data, size_t n, uint64_t seed) {
    const uint8_t *p = data, *end = p + n;
    uint64_t h = n >= 32 ? kvp_xxh_stripes(&p, end, seed) : seed + KVP_P5;
    h += (uint64_t)n;
    for (; end - p >= 8; p += 8) h = kvp_rotl64(h ^ kvp_xxh_round(0, kvp_rd64(p)), 27) * KVP_P1 + KVP_P4;
    if (end - p >= 4) {
        h = kvp_rotl64(h ^ ((uint64_t)kvp_rd32(p) * KVP_P1), 23) * KVP_P2 + KVP_P3;
        p += 4;
    }
    for (; p < end; p++) h = kvp_rotl64(h ^ (*p * KVP_P5), 11) * KVP_P1;
    h ^= h >> 33;
    h *= KVP_P2;
    h ^= h >> 29;
    h *= KVP_P3;
    return h ^ (h >> 32);
}
