/*
 * codec.h: the context codec's internal interface: model fingerprints, the chunk codec (all
 * planes of one chunk, in parallel over a pool), the quality levels, and the .kvz container.
 * docs/FORMAT.md specifies the bytes, docs/codec.md the design. Internal header.
 */
#ifndef KVP_CODEC_H
#define KVP_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "common/pool.h"
#include "kvpack.h"
#include "plane.h"

/* ---- model fingerprint ---- */

#define KVP_FINGERPRINT_BYTES 80

/* What identifies a model for the codec: a context saved from one model is only ever loaded
 * into a model with the same fingerprint. */
typedef struct kvp_fingerprint {
    char arch[16];
    uint32_t n_layers, n_heads, n_kv_heads, head_dim, dim, hidden_dim, vocab_size, rope_style;
    uint32_t rope_theta_bits, norm_eps_bits, weight_type;
    uint64_t weight_bytes, weights_hash;
} kvp_fingerprint;

/* The fingerprint of a loaded model. The weight hash is computed (XXH64 over the mapped
 * weight bytes) on the first call for a model and cached in it; later calls are free. */
void kvp_fingerprint_of(const kvp_model *m, kvp_fingerprint *fp);
void kvp_fingerprint_write(const kvp_fingerprint *fp, uint8_t out[KVP_FINGERPRINT_BYTES]);
void kvp_fingerprint_read(const uint8_t in[KVP_FINGERPRINT_BYTES], kvp_fingerprint *fp);
/* XXH64 of the serialized fingerprint: the model part of store keys and entries. */
uint64_t kvp_fingerprint_digest(const kvp_fingerprint *fp);
/* KVP_EMISMATCH naming the first field where a saved fingerprint differs from a model's. */
int kvp_fingerprint_compare(const kvp_fingerprint *saved, const kvp_fingerprint *model);

/* ---- levels ---- */

#define KVP_LEVEL_COUNT 5 /* text, low, medium, high, lossless */

/* A trellis plane's step as a fraction of a plain plane's at the same level: each of its two
 * quantizers has 2 x 0.65 of the plain step (fewer bits), their union 0.65 of it (less error).
 * On sotu-1M at medium (version 2's level steps): 2.420 bits per value at KL 7.4e-4 against
 * the plain grid's 2.611 at 8.0e-4 (docs/codec.md, "Trellis planes"). */
#define KVP_TRELLIS_STEP 0.65

/* The quantization step of a lossy (trellis) plane with root mean square rms, in a layer at
 * relative depth `depth` (kvp_codec_depth). Values: a fraction of rms that depends on the level, 2^-0.25
 * of it in the first layer rising to 2^0.25 in the last (coarser bins for deeper layers, as
 * CacheGen does). Keys: the step that keeps the attention-logit error at the level's target
 * (0.8 of it in the first of several layers), given rms(q) ~ rms * qk (qk from kvp_codec_qk;
 * 1 when unknown). */
float kvp_codec_step(int level, int is_value, double rms, double qk, double depth);
/* Layer l of n_layers as a depth in [0, 1] (0.5 for a single layer). */
double kvp_codec_depth(int l, int n_layers);
/* Per layer, the ratio rms(q) / rms(k) the model's weights imply for a normalized input
 * (|W_q g|_F / |W_k g|_F per output row, g the attention norm gain, over a sample of rows). */
void kvp_codec_qk(const kvp_model *m, float *qk);
const char *kvp_level_name(int level);

/* ---- chunks ---- */

#define KVP_CHUNK_HEADER 24
#define KVP_CHUNK_ROTARY 1 /* chunk flag: keys are coded with their rotary embedding undone */
#define KVP_CHUNK_NEOX 2   /* chunk flag: ... on split-halves pairs (else interleaved pairs) */
#define KVP_CHUNK_MAX_VALUES (1u << 28) /* per chunk: n_layers * 2 * n_tokens * kv_dim */

typedef struct kvp_chunk_shape {
    int n_layers, n_kv_heads, head_dim;
    float rope_theta; /* encoder: > 0 to code keys with their rotary embedding undone (base theta) */
    int rope_style;   /* encoder: KVP_ROPE_NORM or KVP_ROPE_NEOX pairs */
    int version;      /* decoder: the container's format version, which bounds the plane kinds
                       * (trellis planes from version 3); 0 for the newest */
} kvp_chunk_shape;

/* Encoding and decoding state: the pool planes are spread over, scratch per thread. */
typedef struct kvp_codec kvp_codec;
int kvp_codec_new(kvp_pool *pool, kvp_codec **out); /* pool may be NULL (one thread) */
void kvp_codec_free(kvp_codec *cd);

/* The largest encoded size of a chunk of n tokens at any level. */
size_t kvp_chunk_bound(const kvp_chunk_shape *s, int n_tokens);
/* Encodes the chunk of n tokens starting at position pos: kv holds (n_layers, 2, n, kv_dim)
 * floats (unused for text); qk (n_layers, or NULL for all 1) scales the key steps.
 * Deterministic: the bytes do not depend on the thread count. */
int kvp_chunk_encode(kvp_codec *cd, const kvp_chunk_shape *s, int pos, int n, int level, const float *kv,
                     const float *qk, uint8_t *out, size_t cap, size_t *size);
/* Decodes a chunk of exactly `size` bytes that must describe positions [pos, pos + n) of a
 * model of shape s at `level` (-1: any); kv receives (n_layers, 2, n, kv_dim) floats.
 * Hostile input gives KVP_EFORMAT with a message. */
int kvp_chunk_decode(kvp_codec *cd, const kvp_chunk_shape *s, int pos, int n, int level, const uint8_t *in,
                     size_t size, float *kv);
/* KVP_OK when the bytes are a well-formed text chunk for positions [pos, pos + n). */
int kvp_chunk_check_text(const uint8_t *in, size_t size, const kvp_chunk_shape *s, int pos, int n);
/* The level a chunk's bytes declare (KVP_EFORMAT when they are not a chunk). */
int kvp_chunk_level(const uint8_t *in, size_t size, int *level);

/* ---- keys before the rotary embedding (transform.c) ---- */

/* cs, sn (n, head_dim / 2): cosine and sine of (pos + t) theta^(-2k / head_dim) for token t
 * and pair k, computed in double (exactly every 32 tokens, by angle addition between), so the
 * encoder and the decoder get the same floats. */
void kvp_rotary_table(int pos, int n, int head_dim, double theta, float *cs, float *sn);
/* Rotates every pair of a key plane x (n, n_kv_heads * head_dim) in place by the table's
 * angles: dir = +1 as the model's rotary embedding does, dir = -1 back. Pairs are channels
 * (2k, 2k + 1) of a head (KVP_ROPE_NORM) or (k, k + head_dim / 2) (KVP_ROPE_NEOX); with an
 * odd head_dim the last channel is left alone. */
void kvp_rotary_apply(float *x, int n, int n_kv_heads, int head_dim, int style, const float *cs, const float *sn,
                      int dir);

/* ---- the .kvz container ---- */

#define KVP_KVZ_VERSION 3     /* written; 2 added rotated keys (chunk flags), 3 trellis planes */
#define KVP_KVZ_VERSION_MIN 1 /* the oldest version read */
#define KVP_KVZ_FIXED 120      /* bytes of the header before the token ids */
#define KVP_KVZ_ENTRY 24       /* bytes of one chunk-table entry */
#define KVP_KVZ_MAX_TOKENS (1 << 24)
#define KVP_KVZ_MAX_CHUNK_TOKENS 65536

/* The header of a .kvz image, as written and parsed. */
typedef struct kvp_kvz_header {
    int version; /* parsed; the writer always writes KVP_KVZ_VERSION */
    int n_tokens, n_chunks, chunk_tokens, token_bytes, kv_type;
    uint64_t header_size, total_size;
    kvp_fingerprint fp;
} kvp_kvz_header;

/* Bytes of the header for n tokens in n_chunks chunks with ids of token_bytes bytes. */
uint64_t kvp_kvz_header_bytes(int n_tokens, int n_chunks, int token_bytes);
/* Serializes the header, tokens and chunk table (whose CRCs and sizes are final) and the
 * header CRC into out (header_size bytes). */
void kvp_kvz_write_header(const kvp_kvz_header *h, const int *tokens, const kvp_kvz_chunk_info *chunks,
                          uint8_t *out);
/* The chunk shape of a fingerprint. */
kvp_chunk_shape kvp_fingerprint_shape(const kvp_fingerprint *fp);

/* ---- saving chunk by chunk (context.c; the stores use it too) ---- */

typedef struct kvp_saver {
    kvp_ctx *c;
    const kvp_save_params *p;
    kvp_kvz_header h;        /* header of the first n tokens (total_size filled when done) */
    kvp_chunk_shape s;
    kvp_codec *cd;
    float *kv;               /* one chunk of KV read from the context */
    uint8_t *chunk;          /* the last encoded chunk */
    size_t chunk_cap;
    kvp_kvz_chunk_info *table;
    float *qk;               /* (n_layers) from kvp_codec_qk */
} kvp_saver;

/* Prepares to encode the first n tokens of context c (the parameters are checked; p must
 * outlive the saver). kvp_saver_free releases it, also after a failed init. */
int kvp_saver_init(kvp_saver *sv, kvp_ctx *c, int n, const kvp_save_params *p);
/* Encodes chunk i (at the level p asks for, or the controller's) into sv->chunk. */
int kvp_saver_encode(kvp_saver *sv, int i, size_t *size);
void kvp_saver_free(kvp_saver *sv);

#endif
