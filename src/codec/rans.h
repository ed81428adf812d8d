/*
 * rans.h: the entropy coder of the context codec: a bit writer and reader for side
 * information and raw bits, symbolization of unsigned residuals, compact histogram codes
 * (docs/FORMAT.md, "Histograms"), and a static rANS coder with four interleaved states.
 *
 * Symbols, with D = 2^dbits direct symbols (dbits 5 or 6): an unsigned value u < D is its own
 * symbol; a larger u with e = floor(log2 u) (dbits <= e <= 31) is symbol D + 2 (e - dbits) +
 * (the bit of u below its top bit), followed by the low e - 1 bits of u as raw bits. So there
 * are D + 2 (32 - dbits) symbols: 86 for dbits 5 (every version 1 plane), 116 for dbits 6.
 *
 * rANS: probabilities are integers summing to 2^KVP_RANS_BITS; states are 32-bit, kept in
 * [2^16, 2^32) and renormalized 16 bits at a time; symbol i of a stream uses state i % 4.
 * The encoder runs backwards over the symbols and writes its 16-bit words downwards from the
 * end of its buffer, so the decoder reads forwards. The stream starts with the four final
 * encoder states (u32 little-endian); a well-formed stream ends with every state back at
 * 2^16 and every byte consumed, which kvp_rans_dec_finish checks.
 * Internal header.
 */
#ifndef KVP_CODEC_RANS_H
#define KVP_CODEC_RANS_H

#include <stddef.h>
#include <stdint.h>

#include "hash.h"

#define KVP_RANS_BITS 11
#define KVP_RANS_TOTAL (1u << KVP_RANS_BITS)
#define KVP_RANS_L (1u << 16)
#define KVP_RANS_LANES 4
#define KVP_SYM_COUNT 86 /* symbols with 32 direct ones */
#define KVP_SYM_MAX 116  /* symbols with 64 direct ones: the most any plane has */
#define KVP_HIST_CODES 64 /* histogram codes are 6 bits: 0 = absent, 1..63 = an approximate count */

/* ---- symbolization ---- */

/* The number of symbols with 2^dbits direct ones. */
static inline int kvp_sym_count(int dbits) { return (1 << dbits) + 2 * (32 - dbits); }

/* The symbol of u with 2^dbits direct symbols; *extra and *nbits receive the raw bits that
 * follow it. */
static inline int kvp_sym_encode(uint32_t u, int dbits, uint32_t *extra, int *nbits) {
    if (u < (1u << dbits)) {
        *extra = 0;
        *nbits = 0;
        return (int)u;
    }
    int e = 31 - __builtin_clz(u);
    *nbits = e - 1;
    *extra = u & ((1u << (e - 1)) - 1);
    return (1 << dbits) + 2 * (e - dbits) + (int)((u >> (e - 1)) & 1);
}

/* For a symbol >= 2^dbits: the value without its raw bits, and their count in *nbits. */
static inline uint32_t kvp_sym_base(int sym, int dbits, int *nbits) {
    int k = sym - (1 << dbits), e = dbits + (k >> 1);
    *nbits = e - 1;
    return (uint32_t)(2 + (k & 1)) << (e - 1);
}

static inline uint32_t kvp_zigzag(int64_t r) { return (uint32_t)(((uint64_t)r << 1) ^ (uint64_t)(r >> 63)); }
static inline int64_t kvp_unzigzag(uint32_t u) { return (int64_t)(u >> 1) ^ -(int64_t)(u & 1); }

/* ---- bits, least significant first ---- */

/* A bit writer that never writes past its buffer: on overflow it sets `overflow` and drops
 * the bits. */
typedef struct kvp_bitw {
    uint8_t *buf;
    size_t cap, pos;
    uint64_t acc;
    int n;
    int overflow;
} kvp_bitw;

void kvp_bitw_init(kvp_bitw *w, uint8_t *buf, size_t cap);
/* Appends the low nbits (0..32) of v. */
void kvp_bitw_put(kvp_bitw *w, uint32_t v, int nbits);
/* The same for v < 2^nbits, nbits <= 31, inline: whole 32-bit words are flushed at once (the
 * same bytes; on overflow the stream is invalid either way). */
static inline void kvp_bitw_put_fast(kvp_bitw *w, uint32_t v, int nbits) {
    w->acc |= (uint64_t)v << w->n;
    w->n += nbits;
    if (w->n >= 32) {
        if (w->cap - w->pos >= 4) {
            for (int i = 0; i < 4; i++) w->buf[w->pos + (size_t)i] = (uint8_t)(w->acc >> (8 * i));
            w->pos += 4;
        } else {
            w->overflow = 1;
        }
        w->acc >>= 32;
        w->n -= 32;
    }
}
/* Writes a signed value as an order-0 Exp-Golomb code of its zigzag form. */
void kvp_bitw_put_sexp(kvp_bitw *w, int64_t v);
/* Flushes the last partial byte; returns the bytes written (0 after an overflow). */
size_t kvp_bitw_finish(kvp_bitw *w);

/* A bit reader over a bounded buffer: reading past the end sets `overrun` and yields zeros. */
typedef struct kvp_bitr {
    const uint8_t *p, *end;
    uint64_t acc;
    int n;
    int overrun;
} kvp_bitr;

void kvp_bitr_init(kvp_bitr *r, const uint8_t *p, size_t size);
/* Reads nbits (0..32). */
uint32_t kvp_bitr_get(kvp_bitr *r, int nbits);
/* kvp_bitr_get for the decoder's inner loops: when fewer than nbits (0..32) bits are held it
 * loads whole bytes from an 8-byte window at once, which reads the same bits as kvp_bitr_get
 * (its reference twin); within 8 bytes of the end it falls back to it. */
static inline uint32_t kvp_bitr_get_fast(kvp_bitr *r, int nbits) {
    if (r->n < nbits) {
        if (r->end - r->p < 8) return kvp_bitr_get(r, nbits);
        int k = (63 - r->n) >> 3; /* whole bytes that fit: n + 8k <= 63, and k >= 4 as n < 32 */
        r->acc |= (kvp_rd64(r->p) & ((1ull << (8 * k)) - 1)) << r->n;
        r->p += k;
        r->n += 8 * k;
    }
    uint32_t v = (uint32_t)(r->acc & ((1ull << nbits) - 1));
    r->acc >>= nbits;
    r->n -= nbits;
    return v;
}

/* Reads a signed order-0 Exp-Golomb code; a prefix longer than 32 bits sets `overrun`. */
int64_t kvp_bitr_get_sexp(kvp_bitr *r);

/* ---- histograms and models ---- */

/* A normalized model: freq[s] (summing to KVP_RANS_TOTAL) and cumulative start cum[s]. */
typedef struct kvp_rans_model {
    uint32_t freq[KVP_SYM_MAX];
    uint32_t cum[KVP_SYM_MAX];
} kvp_rans_model;

/* Chooses the 6-bit code of every one of KVP_SYM_MAX symbols from its count (0 for an absent symbol, 1..63 for the
 * approximate count nearest in ratio, scaled so the largest count gets code 63). Returns the
 * alphabet length: one past the last present symbol (0 when every count is 0). */
int kvp_hist_codes(const uint32_t *counts, uint8_t *codes);
/* Builds the normalized model from codes[0..n) (codes past n are absent). Integer arithmetic
 * only, so the encoder and every decoder agree. KVP_EFORMAT when no symbol is present. */
int kvp_hist_model(const uint8_t *codes, int n, kvp_rans_model *m);
/* Writes / reads the alphabet length (7 bits, 1..max) and the n codes (6 bits each); the
 * reader takes max = kvp_sym_count(dbits) of the plane and fills codes[KVP_SYM_MAX]. */
void kvp_hist_write(kvp_bitw *w, const uint8_t *codes, int n);
int kvp_hist_read(kvp_bitr *r, uint8_t *codes, int *n, int max);
/* Fills the decoding table: for each slot of [0, 2^KVP_RANS_BITS) the packed entry
 * sym | freq << 7 | (slot - cum[sym]) << 20. */
void kvp_rans_table(const kvp_rans_model *m, uint32_t *table);

/* ---- rANS ---- */

typedef struct kvp_rans_enc {
    uint8_t *lo, *end, *ptr; /* the buffer's bounds and the current (downward) write position */
    uint32_t x[KVP_RANS_LANES];
    int overflow;
} kvp_rans_enc;

/* The encoder writes downwards from buf + cap. */
void kvp_rans_enc_init(kvp_rans_enc *e, uint8_t *buf, size_t cap);

/* Encodes a symbol of frequency freq starting at cum on state `lane`. */
static inline void kvp_rans_enc_put(kvp_rans_enc *e, int lane, uint32_t cum, uint32_t freq) {
    uint32_t x = e->x[lane];
    uint32_t out = (uint64_t)x >= ((uint64_t)freq << (32 - KVP_RANS_BITS));
    if (e->ptr - e->lo >= 2) { /* branch-free: whether a state emits a word is a coin toss */
        kvp_wr16(e->ptr - 2, (uint16_t)x); /* below the stream: overwritten later when not kept */
        e->ptr -= 2 * out;
    } else {
        e->overflow |= (int)out;
    }
    x >>= 16 * out;
    e->x[lane] = ((x / freq) << KVP_RANS_BITS) + (x % freq) + cum;
}

/* Writes the four states in front of the words; *start receives the stream's first byte.
 * Returns the stream's size, or 0 when the buffer was too small. */
size_t kvp_rans_enc_finish(kvp_rans_enc *e, uint8_t **start);

typedef struct kvp_rans_dec {
    const uint8_t *p, *end;
    uint32_t x[KVP_RANS_LANES];
    int overrun;
} kvp_rans_dec;

/* Reads the four initial states. KVP_EFORMAT when the stream is shorter than 16 bytes or a
 * state is outside [2^16, 2^32). */
int kvp_rans_dec_init(kvp_rans_dec *d, const uint8_t *p, size_t size);

/* Decodes and returns one symbol on state `lane` with a table from kvp_rans_table. */
static inline int kvp_rans_dec_get(kvp_rans_dec *d, int lane, const uint32_t *table) {
    uint32_t x = d->x[lane];
    uint32_t ent = table[x & (KVP_RANS_TOTAL - 1)];
    x = ((ent >> 7) & 0x1fff) * (x >> KVP_RANS_BITS) + (ent >> 20);
    if (x < KVP_RANS_L) {
        if (d->end - d->p >= 2) {
            x = (x << 16) | kvp_rd16(d->p);
            d->p += 2;
        } else {
            d->overrun = 1;
            x = (x << 16) | 0x8000u; /* keeps the state valid; the stream is rejected at the end */
        }
    }
    d->x[lane] = x;
    return (int)(ent & 127);
}

/* KVP_EFORMAT unless every state is back at 2^16 and every byte was consumed. */
int kvp_rans_dec_finish(const kvp_rans_dec *d);

#endif
