/*
 * select_cold.h: the cold tier of the retrieval cache (Quest, SentenceKV). Internal.
 *
 * A cold tier holds blocks: the keys and values of `n` consecutive tokens for every KV head
 * of one layer. A block goes in once (kvp_tier_put, when it leaves the hot tier's recent
 * window) and is then read in place, one KV head's rows at a time, as a kvp_rows run that
 * the attention reads directly (kvp_tier_rows): nothing is copied back to the hot tier to
 * be attended. Blocks are appended to fixed segments that never move, so adding a block
 * never copies the others.
 *
 * Backends (spec): "mem" (default): host memory, in segments of 4 MiB or more;
 *                  "file:PATH": a file of the same segments, each memory-mapped on its own;
 *                  the file is created (truncated) when the tier opens and removed when it
 *                  closes.
 * Encodings (spec suffix ",q8" or ",f16", or with ';'): q8 (default): 8 bits per value, one float scale
 *                  per token and head (kvp_sel_quant_q8), about half the bytes of F16;
 *                  f16: the hot tier's F16 rows, bit for bit;
 *                  kXvY (kvp_tier_use_kq, for a cache whose storage is kXvY): KQ tiles
 *                  (select.h), keys per channel over each tile, values per token.
 * Record layout, per block, each part 64-byte aligned:
 *   q8:  K scales (nh, n) float | V scales (nh, n) float | K (nh, n, hd) int8 | V (nh, n, hd) int8
 *   f16: K (nh, n, hd) uint16 | V (nh, n, hd) uint16
 *   kXvY: per head, ceil(n / 16) KQ tiles (rows 16 i .. 16 i + 15 in tile i)
 */
#ifndef KVP_SELECT_COLD_H
#define KVP_SELECT_COLD_H

#include <stdint.h>

#include "kv/select.h"

enum { KVP_TIER_Q8 = 0, KVP_TIER_F16 = 1, KVP_TIER_KQ = 2 };

typedef struct kvp_tier kvp_tier;

/* Opens a cold tier for blocks of nh heads of hd values. spec: NULL or "" = "mem". */
int kvp_tier_new(const char *spec, int nh, int hd, kvp_tier **out);
void kvp_tier_free(kvp_tier *c); /* accepts NULL; removes the backing file */
/* Switches a new tier's encoding to KQ tiles of kXvY (its spec then ends in ";kXvY"). */
int kvp_tier_use_kq(kvp_tier *c, int kbits, int vbits);

/* Stores a block of n tokens: K and V of head h, token t at k + (h * stride + t) * hd, in
 * `type` (KVP_TYPE_F16 or KVP_TYPE_F32). Sets *id to the block's number (0, 1, 2, ...). */
int kvp_tier_put(kvp_tier *c, int type, const void *k, const void *v, int n, int stride, int64_t *id);
/* A run over rows [r0, r0 + cnt) of head h of block id; row r0 is at position pos0. */
void kvp_tier_rows(const kvp_tier *c, int64_t id, int h, int r0, int cnt, int pos0, kvp_rows *out);
/* Decodes head h's rows [0, n) of block id to floats: k, v (n, hd). */
void kvp_tier_read(const kvp_tier *c, int64_t id, int h, float *k, float *v);
/* Copies block id back as F16 rows, bit-exact for the f16 encoding (layout as kvp_tier_put
 * with stride = n). For tests and for promoting a block. */
int kvp_tier_get_f16(const kvp_tier *c, int64_t id, uint16_t *k, uint16_t *v);
int kvp_tier_len(const kvp_tier *c, int64_t id);      /* tokens in block id */
int64_t kvp_tier_count(const kvp_tier *c);            /* blocks stored */
/* Forgets block id and every later one; their space is reused. */
void kvp_tier_rewind(kvp_tier *c, int64_t id);
uint64_t kvp_tier_bytes(const kvp_tier *c);           /* bytes of the stored blocks */
const char *kvp_tier_spec(const kvp_tier *c);         /* canonical spec, e.g. "mem;q8" */

#endif
