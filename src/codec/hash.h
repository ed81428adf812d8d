/*
 * hash.h: the checksums and hashes of the context codec and store.
 *
 *   - CRC32C (Castagnoli, reflected polynomial 0x82F63B78, initial value and final XOR
 *     0xFFFFFFFF): the checksum of every .kvz header, chunk and store entry. kvp_crc32c uses
 *     the SSE4.2 crc32 instruction when the processor has it; kvp_crc32c_ref is the portable
 *     table-driven twin it is tested against.
 *   - XXH64 (Yann Collet's xxHash, 64-bit variant, exactly as specified): the hash of a model's
 *     weight bytes and of token prefixes for store keys.
 * Internal header.
 */
#ifndef KVP_CODEC_HASH_H
#define KVP_CODEC_HASH_H

#include <stddef.h>
#include <stdint.h>

/* CRC32C of n bytes, continuing from `crc` (pass 0 to start). */
uint32_t kvp_crc32c(uint32_t crc, const void *data, size_t n);
uint32_t kvp_crc32c_ref(uint32_t crc, const void *data, size_t n);

/* XXH64 of n bytes with a seed. */
uint64_t kvp_xxh64(const void *data, size_t n, uint64_t seed);

/* Little-endian loads and stores used by every codec file. */
static inline uint16_t kvp_rd16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t kvp_rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t kvp_rd64(const uint8_t *p) { return kvp_rd32(p) | ((uint64_t)kvp_rd32(p + 4) << 32); }
static inline void kvp_wr16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void kvp_wr32(uint8_t *p, uint32_t v) {
    kvp_wr16(p, (uint16_t)v);
    kvp_wr16(p + 2, (uint16_t)(v >> 16));
}
static inline void kvp_wr64(uint8_t *p, uint64_t v) {
    kvp_wr32(p, (uint32_t)v);
    kvp_wr32(p + 4, (uint32_t)(v >> 32));
}

#endif
