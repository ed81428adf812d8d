/*
 * kvpack.h: the public API of libkvpack.
 *
 * kvpack runs Llama-family language models on the CPU and keeps their key-value (KV) cache
 * small, fast and portable. This header is the whole public surface of the library:
 *
 *   - errors:     every function that can fail returns an int, 0 on success or a negative
 *                 KVP_E* code from one fixed table; kvp_strerror() names the code and
 *                 kvp_errmsg() gives the detailed message of the calling thread's last error.
 *   - models:     kvp_model_load() opens a GGUF (v2, v3) or llama2.c checkpoint, memory-mapped.
 *   - tokenizer:  kvp_tokenize() / kvp_detokenize() with the model's own vocabulary.
 *   - contexts:   kvp_ctx_new() binds a model to a KV cache and a thread pool;
 *                 kvp_ctx_decode() feeds tokens (batched prefill or one-token decode);
 *                 kvp_ctx_decode_batch() steps several contexts by one token in one pass.
 *   - sampling:   greedy, temperature, top-k, top-p with a fixed seed.
 *   - synth:      kvp_synth_write() writes a random-weight Llama GGUF of any shape.
 *
 * The library never prints and never exits. Handles are opaque; every *_free accepts NULL.
 * Unless said otherwise, a handle may be used by one thread at a time.
 */
#ifndef KVPACK_H
#define KVPACK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KVP_VERSION_MAJOR 0
#define KVP_VERSION_MINOR 1
#define KVP_VERSION_PATCH 0

/* ---------------------------------------------------------------------------------------
 * Errors. The numbers are fixed forever: add new ones at the end, never renumber.
 * ------------------------------------------------------------------------------------- */
enum {
    KVP_OK = 0,
    KVP_ENOMEM = -1,       /* an allocation failed */
    KVP_EIO = -2,          /* a read, write, open or mmap failed */
    KVP_EFORMAT = -3,      /* a file or buffer is malformed (truncated, bad magic, bad field) */
    KVP_EUNSUPPORTED = -4, /* well-formed, but a feature kvpack does not implement */
    KVP_EINVAL = -5,       /* a bad argument from the caller */
    KVP_ERANGE = -6,       /* a value out of range (context full, token id too large) */
    KVP_ECORRUPT = -7,     /* a checksum does not match */
    KVP_EMISMATCH = -8,    /* data made for another model or another configuration */
    KVP_ESTORE = -9,       /* a context store failed (connection refused, server error) */
    KVP_ETIMEOUT = -10,    /* an operation took longer than its deadline */
    KVP_ENOTFOUND = -11,   /* a key, tensor or stored context does not exist */
    KVP_EINTERNAL = -12,   /* a broken invariant inside kvpack: a bug */
};
#define KVP_ERR_COUNT 13

/* Returns a short, static name of an error code ("out of memory"); never NULL. */
const char *kvp_strerror(int code);

/* Returns the detailed message of the calling thread's most recent error, e.g.
 * "model.gguf: tensor 'blk.0.attn_q.weight' ends past the end of the file (offset 123)".
 * The string lives until this thread's next failing kvpack call. Never NULL. */
const char *kvp_errmsg(void);

/* ---------------------------------------------------------------------------------------
 * Tensor types, numbered as GGUF numbers them.
 * ------------------------------------------------------------------------------------- */
enum {
    KVP_TYPE_F32 = 0,
    KVP_TYPE_F16 = 1,
    KVP_TYPE_Q4_0 = 2,
    KVP_TYPE_Q4_1 = 3,
    KVP_TYPE_Q5_0 = 6,
    KVP_TYPE_Q5_1 = 7,
    KVP_TYPE_Q8_0 = 8,
    KVP_TYPE_Q8_1 = 9,
    KVP_TYPE_Q2_K = 10,
    KVP_TYPE_Q3_K = 11,
    KVP_TYPE_Q4_K = 12,
    KVP_TYPE_Q5_K = 13,
    KVP_TYPE_Q6_K = 14,
    KVP_TYPE_Q8_K = 15,
    KVP_TYPE_BF16 = 30,
    KVP_TYPE_COUNT = 31
};

/* Returns the GGUF name of a tensor type ("Q8_0"), or "?" for an unknown number. */
const char *kvp_type_name(int type);

/* ---------------------------------------------------------------------------------------
 * Models.
 * ------------------------------------------------------------------------------------- */
typedef struct kvp_model kvp_model;

enum { KVP_ROPE_NORM = 0, KVP_ROPE_NEOX = 1 }; /* interleaved pairs / split halves */

typedef struct kvp_model_info {
    char arch[32];        /* "llama" */
    char name[64];        /* general.name, or the file's base name */
    char format[32];      /* "GGUF v3", "llama2.c v0" */
    int dim;              /* embedding width */
    int hidden_dim;       /* FFN width */
    int n_layers;
    int n_heads;          /* query heads */
    int n_kv_heads;       /* key/value heads (grouped-query attention when < n_heads) */
    int head_dim;
    int vocab_size;
    int n_ctx_train;      /* context length the model was trained for */
    float rope_theta;
    float norm_eps;
    int rope_style;       /* KVP_ROPE_NORM or KVP_ROPE_NEOX */
    int tied_output;      /* 1 when the classifier reuses the token embedding */
    int weight_type;      /* the type of most of the weight bytes (KVP_TYPE_*) */
    uint64_t n_params;
    uint64_t weight_bytes;
    uint64_t file_bytes;
} kvp_model_info;

/* Opens a model. The format is detected from the file's first bytes: GGUF (v2 or v3) or a
 * llama2.c checkpoint (legacy v0 header). A llama2.c checkpoint needs its tokenizer .bin in
 * tokenizer_path; GGUF files carry their vocabulary (tokenizer_path may be NULL). The file is
 * memory-mapped read-only and stays mapped until kvp_model_free(). Every field is validated
 * against the file size: a malformed file gives KVP_EFORMAT with a message, never a crash. */
int kvp_model_load(const char *path, const char *tokenizer_path, kvp_model **out);
/* Opens a GGUF model from an image of `size` bytes in memory (validated as a file is). The
 * model borrows the image: it does not copy or free it, and the caller keeps it valid and
 * unchanged until kvp_model_free(). buf must be aligned to 8 bytes (malloc'ed memory is):
 * F32 weights are read in place. KVP_EINVAL for a NULL or misaligned buffer. */
int kvp_model_load_memory(const void *buf, size_t size, kvp_model **out);
void kvp_model_free(kvp_model *m);
const kvp_model_info *kvp_model_get_info(const kvp_model *m);

/* Tensor listing, for `kvpack info`. Returns the number of tensors; fills *name (not
 * NUL-terminated: name_len bytes), type, and up to 4 dimensions (ne[0] is the row length). */
int kvp_model_n_tensors(const kvp_model *m);
int kvp_model_tensor(const kvp_model *m, int i, const char **name, int *name_len, int *type,
                     int64_t ne[4], uint64_t *nbytes);

/* ---------------------------------------------------------------------------------------
 * Tokenizer (the model's own vocabulary).
 * ------------------------------------------------------------------------------------- */
int kvp_token_bos(const kvp_model *m); /* -1 when the vocabulary has none */
int kvp_token_eos(const kvp_model *m);

/* Encodes `len` bytes of UTF-8 text into token ids. Writes at most `cap` ids and sets *n to
 * the number the text needs: when *n > cap the call returns KVP_ERANGE and the caller may
 * retry with a larger buffer. add_bos prepends the BOS token. */
int kvp_tokenize(const kvp_model *m, const char *text, size_t len, int add_bos, int *ids,
                 int cap, int *n);

/* Flags of kvp_tokenize_ex(). */
enum {
    KVP_TOKENIZE_ADD_SPECIAL = 1,   /* add BOS (and EOS) as the vocabulary asks (add_bos_token...) */
    KVP_TOKENIZE_PARSE_SPECIAL = 2, /* match control tokens written in the text ("<|im_start|>") */
};

/* kvp_tokenize() with flags. With PARSE_SPECIAL, the text of control tokens ("<|im_start|>",
 * "</s>") becomes those tokens, as Hugging Face tokenizers encode; without it such text is
 * plain text. User-defined tokens are always matched. A byte-level BPE vocabulary (Llama 3,
 * Qwen) adds BOS with ADD_SPECIAL only when its add_bos_token says so; a SentencePiece
 * vocabulary always does. kvp_tokenize(add_bos) is ADD_SPECIAL when add_bos is set, plus
 * PARSE_SPECIAL for byte-level BPE vocabularies (SentencePiece text stays plain, as in
 * llama.cpp by default). */
int kvp_tokenize_ex(const kvp_model *m, const char *text, size_t len, int flags, int *ids,
                    int cap, int *n);

/* 1 when token id ends a generation: EOS, EOT, or a control token that ends a chat turn
 * (<|eot_id|>, <|im_end|>, <|endoftext|>, ...). */
int kvp_token_is_eog(const kvp_model *m, int id);

/* Writes the text of token `id` (following token `prev`, or -1) into buf, NUL-terminated,
 * and returns the number of bytes written (without the NUL), or a negative error. Byte
 * tokens decode to their raw byte; a leading space after BOS is dropped as SentencePiece
 * does. */
int kvp_detokenize(const kvp_model *m, int prev, int id, char *buf, size_t cap);

/* ---------------------------------------------------------------------------------------
 * Chat templates.
 * ------------------------------------------------------------------------------------- */
typedef struct kvp_chat_msg {
    const char *role;     /* "system", "user", "assistant" */
    const char *content;
} kvp_chat_msg;

/* Writes a conversation in a chat format: "llama3", "chatml" (Qwen, SmolLM2), "llama2"
 * (also Mistral's [INST]), "zephyr", or with tmpl NULL or "auto" the model's own, recognized
 * from its tokenizer.chat_template. add_assistant appends the opening of the assistant's
 * turn (Llama 2 always ends ready for it). Like snprintf, writes at most cap bytes with the
 * NUL and returns the length the whole text needs; negative on error (KVP_EUNSUPPORTED when
 * the template is unknown or the model's cannot be recognized). The text leaves BOS to the
 * tokenizer: tokenize it with KVP_TOKENIZE_ADD_SPECIAL | KVP_TOKENIZE_PARSE_SPECIAL. */
int kvp_chat_format(const kvp_model *m, const char *tmpl, const kvp_chat_msg *msgs, int n,
                    int add_assistant, char *buf, size_t cap);
/* The name of the model's own chat format ("llama3", ...), or NULL when none is recognized. */
const char *kvp_chat_template_name(const kvp_model *m);

/* ---------------------------------------------------------------------------------------
 * Contexts: a model, a KV cache and a thread pool.
 * ------------------------------------------------------------------------------------- */
typedef struct kvp_ctx kvp_ctx;

typedef struct kvp_ctx_params {
    int n_ctx;       /* maximum positions; 0 = the model's training context */
    int n_threads;   /* worker threads including the caller; 0 = 1 */
    int n_batch;     /* prompt tokens per forward batch; 0 = 256 */
    const char *kv;  /* KV cache spec: "f16" (default), "f32" (see docs/kv-cache.md) */
    /* Token selection (docs/selection.md); NULL or "" = keep every token. select names a
     * policy with optional parameters ("snapkv", "h2o:recent=64", "quest:page=16"); budget is
     * a token count ("512") or a share of the positions seen ("25%"); cold is the cold tier
     * of the retrieval policies (quest, sentencekv): "mem" (default) or "file:PATH", with an
     * optional ",q8" (default) or ",f16" encoding. */
    const char *select;
    const char *budget;
    const char *cold;
} kvp_ctx_params;

kvp_ctx_params kvp_ctx_default_params(void);
int kvp_ctx_new(kvp_model *m, const kvp_ctx_params *p, kvp_ctx **out);
void kvp_ctx_free(kvp_ctx *c);

/* Feeds n tokens at the next positions (a prompt is cut into batches of n_batch). When
 * logits is not NULL it receives the next-token logits: of the last token only,
 * (vocab_size) floats, or with all_logits set of every token, (n, vocab_size) floats. */
int kvp_ctx_decode(kvp_ctx *c, const int *tokens, int n, float *logits, int all_logits);

/* Decodes one token in each of n contexts at once (continuous batching of the decode step,
 * e.g. across a server's sessions): tokens[i] goes to ctxs[i] at its next position, and row
 * i of logits ((n, vocab_size) floats; may be NULL) receives ctxs[i]'s next-token logits.
 * The matrix multiplications run once over all n tokens, so the weights are read from
 * memory once per step rather than once per context; attention runs in each context's own
 * KV cache (any cache type or selection policy; lengths may differ). The logits equal those
 * of kvp_ctx_decode(ctxs[i], &tokens[i], 1, ...) within float rounding (a batch of rows and
 * a single row take different kernel paths).
 * Contract: the n contexts are distinct (KVP_EINVAL otherwise), all run the same kvp_model
 * (KVP_EINVAL otherwise), and no other thread uses any of them during the call. The work
 * runs on ctxs[0]'s thread pool and activation buffers, n_batch tokens (of ctxs[0]) at a
 * time; the other contexts' pools are idle. A context that cannot take its token (token id
 * out of range, context full: KVP_ERANGE) or whose cache fails is left out of the rest of
 * the step; the others complete. status (n ints; may be NULL) receives each context's
 * result, 0 or a KVP_E* code (a failed context's row of logits is meaningless); a context
 * that failed in its cache may only be reset or freed, one refused up front is unchanged.
 * Returns 0 when every context succeeded, otherwise the first failure's code, with
 * kvp_errmsg() naming the context. Costs one forward pass over n rows plus O(n) bookkeeping
 * (n^2 pointer comparisons to check that the contexts are distinct). */
int kvp_ctx_decode_batch(kvp_ctx *const *ctxs, const int *tokens, int n, float *logits, int *status);

int kvp_ctx_pos(const kvp_ctx *c);               /* tokens in the context so far */
int kvp_ctx_n_ctx(const kvp_ctx *c);
int kvp_ctx_truncate(kvp_ctx *c, int n_tokens);  /* forget tokens at positions >= n_tokens */
void kvp_ctx_reset(kvp_ctx *c);                  /* forget every token */
const kvp_model *kvp_ctx_model(const kvp_ctx *c);

typedef struct kvp_kv_stats {
    uint64_t bytes_hot;     /* KV bytes in fast memory, including scales and metadata */
    uint64_t bytes_cold;    /* KV bytes in the cold tier (0 for caches without one) */
    uint64_t n_values;      /* K and V values the cache represents (tokens x layers x kv_dim x 2) */
    double bits_per_value;  /* 8 * (hot + cold) / n_values; 0 when empty */
    const char *spec;       /* the cache spec in canonical form */
} kvp_kv_stats;
int kvp_ctx_kv_stats(const kvp_ctx *c, kvp_kv_stats *st);

/* ---------------------------------------------------------------------------------------
 * Sampling.
 * ------------------------------------------------------------------------------------- */
typedef struct kvp_sampler kvp_sampler;
typedef struct kvp_sampler_params {
    float temp;     /* 0 = greedy */
    int top_k;      /* 0 = off */
    float top_p;    /* 1 = off */
    uint64_t seed;
} kvp_sampler_params;

kvp_sampler_params kvp_sampler_default_params(void); /* temp 0.8, top_k 40, top_p 0.95 */
int kvp_sampler_new(const kvp_sampler_params *p, int vocab_size, kvp_sampler **out);
void kvp_sampler_free(kvp_sampler *s);
/* Picks the next token from logits (vocab_size floats; the sampler may reorder a copy). */
int kvp_sampler_sample(kvp_sampler *s, const float *logits);

/* ---------------------------------------------------------------------------------------
 * Synthetic models, for benchmarks and tests.
 * ------------------------------------------------------------------------------------- */
typedef struct kvp_synth_params {
    int dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, n_ctx;
    int type;           /* weight type of the matrices: F32, F16, BF16, Q8_0 or Q4_0 */
    float rope_theta;
    uint64_t seed;
} kvp_synth_params;

/* Writes a random-weight llama GGUF (v3) with a byte-level SentencePiece vocabulary; the
 * write goes to a temporary name and is renamed into place. */
int kvp_synth_write(const char *path, const kvp_synth_params *p);

/* The key-value recall model of ../shared/models/kvrecall-format.txt, built by construction
 * (an induction circuit; issue 8): a 2-layer F32 llama (dim 128, 2 heads sharing 1 KV head,
 * vocab 324, context 1024) that answers every query of the reference suites with a full
 * cache. kvp_synth_recall_write() writes it as a GGUF (v3) file, through a temporary name;
 * kvp_synth_recall_gguf() returns the same image in *buf (malloc'ed, 8-byte aligned; the
 * caller frees it with free()), e.g. for kvp_model_load_memory(). */
int kvp_synth_recall_write(const char *path);
int kvp_synth_recall_gguf(void **buf, size_t *size);
/* The same model as a llama2.c checkpoint (legacy v0 header, unshared classifier) at path,
 * and its vocabulary as a llama2.c tokenizer file at tokenizer_path. */
int kvp_synth_recall_write_llama2c(const char *path, const char *tokenizer_path);

/* ---------------------------------------------------------------------------------------
 * Context codec and stores (docs/codec.md; the bytes: docs/FORMAT.md).
 *
 * A context (its tokens and KV cache) is saved as a .kvz bitstream: a checksummed header
 * (model fingerprint, token ids, chunk table) and chunks of chunk_tokens tokens, each
 * decodable on its own at a quality level. Loading puts the KV straight into a context's
 * cache, without recomputing the prefill (text chunks are recomputed). A store keeps chunks
 * content-addressed by (model, token prefix), so contexts that share a prefix share chunks.
 * ------------------------------------------------------------------------------------- */
enum {
    KVP_LEVEL_AUTO = -1,    /* the controller picks per chunk (bandwidth, slo, prefill_rate) */
    KVP_LEVEL_TEXT = 0,     /* tokens only: the chunk is recomputed when loaded */
    KVP_LEVEL_LOW = 1,      /* lossy, smallest */
    KVP_LEVEL_MEDIUM = 2,   /* lossy, the default */
    KVP_LEVEL_HIGH = 3,     /* lossy, closest */
    KVP_LEVEL_LOSSLESS = 4, /* bit-exact: reloads exactly the values the cache held */
};
#define KVP_LEVEL_DEFAULT KVP_LEVEL_MEDIUM
#define KVP_CHUNK_TOKENS_DEFAULT 256

typedef struct kvp_save_params {
    int level;            /* KVP_LEVEL_*; KVP_LEVEL_AUTO lets the controller choose per chunk */
    int chunk_tokens;     /* tokens per chunk; 0 = KVP_CHUNK_TOKENS_DEFAULT */
    double bandwidth;     /* controller: bytes per second the context will be fetched at */
    double slo;           /* controller: seconds allowed for loading the whole context */
    double prefill_rate;  /* controller: tokens per second of recomputing (0 = never text) */
    double decode_rate;   /* controller: bytes of F16 KV decoded per second (0 = not counted) */
} kvp_save_params;

kvp_save_params kvp_save_default_params(void); /* KVP_LEVEL_DEFAULT, 256-token chunks */

/* The largest .kvz a context's first n_tokens can take (for kvp_context_save's buffer). */
int kvp_context_save_bound(const kvp_ctx *c, int n_tokens, const kvp_save_params *p, size_t *bound);

/* Saves the context's first n_tokens positions (1 <= n_tokens <= kvp_ctx_pos), whose token
 * ids are tokens[0..n_tokens) (the context does not keep its token ids), as a .kvz image in
 * buf (cap bytes; kvp_context_save_bound is always enough) and sets *size. The same context
 * and parameters always give the same bytes. */
int kvp_context_save(kvp_ctx *c, const int *tokens, int n_tokens, const kvp_save_params *p, void *buf,
                     size_t cap, size_t *size);
/* The same into a file, written to a temporary name, synced and renamed into place. */
int kvp_context_save_file(kvp_ctx *c, const int *tokens, int n_tokens, const kvp_save_params *p,
                          const char *path, size_t *size);

/* Loads a .kvz image into an empty context (kvp_ctx_pos 0) of the model it was saved from:
 * KVP_EMISMATCH names the first difference when the model (architecture, shapes or weight
 * bytes) is another; KVP_ECORRUPT for a checksum that does not match; KVP_EFORMAT or
 * KVP_EUNSUPPORTED for a malformed or newer file. *n_tokens (may be NULL) receives the number
 * of positions loaded. On an error the context is reset. */
int kvp_context_load(kvp_ctx *c, const void *data, size_t size, int *n_tokens);
/* The same from a file, read chunk by chunk (each chunk is decoded as soon as it is read). */
int kvp_context_load_file(kvp_ctx *c, const char *path, int *n_tokens);

/* Streaming access to a .kvz image: open its header, then decode chunk by chunk, e.g. while
 * the next chunk is still being fetched. kvp_kvz_header_size tells, from the first 16 bytes,
 * how many bytes the header takes. kvp_kvz_open parses and checks the header (and its CRC)
 * from `size` bytes at data, which must hold at least the header; the handle borrows data and
 * keeps decoding scratch (one thread at a time). */
typedef struct kvp_kvz kvp_kvz;

typedef struct kvp_kvz_info {
    int version, n_tokens, n_chunks, chunk_tokens;
    int kv_type;          /* KVP_TYPE_F16 or KVP_TYPE_F32: the cache the context was saved from */
    uint64_t header_size, total_size;
    char arch[16];        /* the model fingerprint */
    int n_layers, n_heads, n_kv_heads, head_dim, dim, hidden_dim, vocab_size;
    uint64_t weight_bytes, weights_hash;
} kvp_kvz_info;

typedef struct kvp_kvz_chunk_info {
    int first_pos, n_tokens, level;
    uint64_t offset;      /* from the start of the image */
    uint32_t size, crc32c;
} kvp_kvz_chunk_info;

int kvp_kvz_header_size(const void *data, size_t size, size_t *need);
int kvp_kvz_open(const void *data, size_t size, kvp_kvz **out);
void kvp_kvz_free(kvp_kvz *z);
const kvp_kvz_info *kvp_kvz_get_info(const kvp_kvz *z);
const int *kvp_kvz_tokens(const kvp_kvz *z); /* (n_tokens) token ids */
int kvp_kvz_chunk(const kvp_kvz *z, int i, kvp_kvz_chunk_info *ci);
/* KVP_EMISMATCH (with the first difference) unless z was saved from model m. */
int kvp_kvz_check_model(const kvp_kvz *z, const kvp_model *m);
/* Checks chunk i's bytes (`size` bytes at chunk; NULL = the image given to kvp_kvz_open)
 * against its CRC and decodes it into kv: (n_layers, 2, n_tokens, n_kv_heads * head_dim)
 * floats, keys before values. KVP_EINVAL for a text chunk (it has no KV). */
int kvp_kvz_decode_chunk(kvp_kvz *z, int i, const void *chunk, size_t size, float *kv);
/* Decodes chunk i into context c, which must hold exactly the positions before the chunk
 * (kvp_ctx_pos == first_pos) and run the model z was saved from (check it once with
 * kvp_kvz_check_model); a text chunk is recomputed. */
int kvp_kvz_load_chunk(kvp_kvz *z, kvp_ctx *c, int i, const void *chunk, size_t size);

/* Direct access to a context's KV, in the chunk layout (n_layers, 2, n, kv_dim), keys before
 * values: read copies positions [pos, pos + n) out as F32; import appends n positions with
 * the given token ids at the next position, running no attention (the prefill is skipped). */
int kvp_ctx_kv_read(kvp_ctx *c, int pos, int n, float *kv);
int kvp_ctx_kv_import(kvp_ctx *c, const int *tokens, int n, const float *kv);

/* Stores. A store maps 16-byte keys to chunk entries. URIs:
 *   "redis://HOST:PORT/DB"   a Redis server (needs kvpack built with hiredis; otherwise
 *                            KVP_EUNSUPPORTED); every call has a deadline (KVP_ETIMEOUT);
 *   "dir:PATH" or a PATH     a directory (created when missing): one file per chunk, atomic
 *                            writes, LRU eviction down to max_bytes, safe for many processes. */
typedef struct kvp_store kvp_store;

typedef struct kvp_store_params {
    uint64_t max_bytes;   /* directory: size cap, least recently used chunks evicted (0 = none) */
    int ttl_seconds;      /* redis: expiry of each stored chunk (0 = none) */
    int timeout_ms;       /* redis: connect and per-command deadline (0 = 2000) */
    const char *prefix;   /* redis: key prefix (NULL = "kvp:") */
} kvp_store_params;

kvp_store_params kvp_store_default_params(void);
int kvp_store_open(const char *uri, const kvp_store_params *p, kvp_store **out);
void kvp_store_free(kvp_store *s);
int kvp_store_put(kvp_store *s, const uint8_t key[16], const void *data, size_t size);
/* *data is malloc'ed (the caller frees it); KVP_ENOTFOUND when the key is absent. */
int kvp_store_get(kvp_store *s, const uint8_t key[16], void **data, size_t *size);
int kvp_store_has(kvp_store *s, const uint8_t key[16]); /* 1, 0 or a negative error */
/* Bytes and entries the store holds (directory stores; KVP_EUNSUPPORTED for Redis). */
int kvp_store_usage(kvp_store *s, uint64_t *bytes, uint64_t *entries);

/* Saves the full chunks of the context's first n_tokens positions (chunk k covers tokens
 * [k * chunk_tokens, (k + 1) * chunk_tokens)) that the store does not hold yet; *n_new (may be
 * NULL) receives how many it stored. */
int kvp_context_save_store(kvp_ctx *c, const int *tokens, int n_tokens, const kvp_save_params *p,
                           kvp_store *s, int *n_new);
/* Loads into an empty context the longest run of stored chunks that starts the prompt
 * tokens[0..n_tokens) (chunk_tokens 0 = the default) and sets *n_loaded to the positions
 * loaded (a multiple of chunk_tokens, possibly 0). An absent chunk ends the run (not an
 * error); a store failure or a bad entry ends it with that error, keeping the chunks before
 * it, so the caller can prefill the rest. Each entry is checked against its key, the model
 * and the prompt's tokens: a wrong context is never loaded. */
int kvp_context_load_store(kvp_ctx *c, kvp_store *s, const int *tokens, int n_tokens, int chunk_tokens,
                           int *n_loaded);

/* ---------------------------------------------------------------------------------------
 * Evaluation: the fidelity of a KV cache against the full-precision cache (kvpack eval).
 * ------------------------------------------------------------------------------------- */
typedef struct kvp_eval_stats {
    int n;              /* positions compared */
    double kl_mean;     /* mean KL(ref || cand) of the next-token distributions, in nats */
    double kl_p99;      /* its 99th percentile */
    double kl_max;
    double top1;        /* share of positions whose most likely token agrees */
    double nll_ref;     /* mean negative log-likelihood of the true next token (nats) */
    double nll_cand;
    double ppl_ratio;   /* perplexity ratio cand / ref = exp(nll_cand - nll_ref) */
} kvp_eval_stats;

/* An accumulator of position-by-position comparisons. */
typedef struct kvp_eval_acc kvp_eval_acc;
int kvp_eval_acc_new(kvp_eval_acc **out);
void kvp_eval_acc_free(kvp_eval_acc *a);
void kvp_eval_acc_reset(kvp_eval_acc *a);
/* Adds one position: the reference's and the candidate's logits (vocab floats each) and
 * the true next token (-1 when unknown: no likelihood is recorded). */
int kvp_eval_acc_add(kvp_eval_acc *a, const float *ref, const float *cand, int vocab, int next);
void kvp_eval_acc_stats(const kvp_eval_acc *a, kvp_eval_stats *st);

typedef struct kvp_eval_params {
    const char *ref_spec;        /* reference cache; NULL = "f32" */
    const char *const *specs;    /* candidate caches */
    int n_specs;
    int n_ctx;                   /* chunk length; 0 = the model's training context */
    int skip;                    /* positions at the start of every chunk not scored */
    int n_threads;               /* per context; 0 = 1 */
    int max_seqs;                /* recall: sequences of the suite to run; 0 = all */
    void (*progress)(void *user, long done, long total); /* may be NULL */
    void *user;
} kvp_eval_params;

typedef struct kvp_eval_result {
    char spec[64];               /* the cache spec in canonical form */
    kvp_eval_stats st;           /* against the reference (the reference's own: KL 0) */
    double bits_per_value;       /* of the cache after the last chunk or sequence */
    uint64_t kv_bytes;
    double decode_tps;           /* tokens per second of this cache's context */
    double recall;               /* recall: share of answers right */
    long recall_correct, recall_total;
    uint64_t kv_bytes_cold;      /* the part of kv_bytes in a cold tier (docs/selection.md) */
} kvp_eval_result;

/* Feeds tokens (n, starting with BOS) token by token through a reference context and one
 * context per candidate, and compares every candidate's next-token distribution with the
 * reference's at each position. The text is cut into chunks of n_ctx tokens as
 * llama-perplexity cuts it (each chunk's first token becomes BOS; a shorter text is one
 * chunk); positions [skip, len - 1) of each chunk are scored (skip = n_ctx / 2 matches
 * llama-perplexity --kl-divergence). res receives n_specs + 1 results: the reference
 * first, then the candidates in order. */
int kvp_eval_text(kvp_model *m, const int *tokens, int n, const kvp_eval_params *p, kvp_eval_result *res);

/* The key-value recall task (../shared/models/kvrecall-format.txt, version 1). */
typedef struct kvp_recall_rng { uint64_t s; } kvp_recall_rng;
void kvp_recall_rng_seed(kvp_recall_rng *r, uint64_t seed);
uint32_t kvp_recall_rng_next(kvp_recall_rng *r);
typedef struct kvp_recall_suite {
    int L, N, Q, n_seqs;         /* length, pairs, queries, sequences */
    uint64_t seed0;              /* seeds seed0 .. seed0 + n_seqs - 1 */
} kvp_recall_suite;
/* The reference suite of length L: 256, 512 or 1024 (KVP_EINVAL otherwise). */
int kvp_recall_suite_get(int L, kvp_recall_suite *s);
/* Generates the sequence (L tokens) of a seed and the positions of its Q answers (the
 * query key tokens; the answer is the token after each). */
int kvp_recall_generate(uint64_t seed, int L, int N, int Q, int *tokens, int *answers);
/* Resets ctx, feeds the sequence token by token up to the last answer and counts the
 * answer positions whose most likely next token is the right value. */
int kvp_recall_score(kvp_ctx *ctx, const int *tokens, int L, const int *answers, int Q, int *correct);
/* Runs the suite of length L (its first max_seqs sequences) through the reference and
 * every candidate; res (n_specs + 1) receives recall accuracy, bytes and speed. */
int kvp_eval_recall(kvp_model *m, int L, const kvp_eval_params *p, kvp_eval_result *res);

/* Token selection on the recall task (docs/selection.md): accuracy per budget x sequence
 * length x depth of the queried pair in the context, every sequence fed token by token. */
typedef struct kvp_sel_grid_params {
    const char *kv;                /* storage: NULL = "f16" */
    const char *select;            /* the policy spec ("quest"); NULL with no budgets: the full cache only */
    const char *cold;              /* cold tier of quest / sentencekv; NULL = "mem" */
    const char *const *budgets;    /* n_budgets budgets: "25%", "256" */
    int n_budgets;
    const int *lengths;            /* n_lengths reference suites: 256, 512, 1024 */
    int n_lengths;
    int n_depths;                  /* depth buckets of the queried pair, 1..16 */
    int max_seqs;                  /* sequences per suite; 0 = all 64 */
    int n_threads;
    void (*progress)(void *user, long done, long total); /* may be NULL */
    void *user;
} kvp_sel_grid_params;
typedef struct kvp_sel_grid_cell { long correct, total; } kvp_sel_grid_cell;
/* cells: (n_budgets + 1, n_lengths, n_depths); row 0 is the full cache, row b + 1 budget b. */
int kvp_sel_recall_grid(kvp_model *m, const kvp_sel_grid_params *p, kvp_sel_grid_cell *cells);
/* The grid as a text table (malloc'ed; the caller frees it), and as an SVG heat map. */
int kvp_sel_grid_table(const kvp_sel_grid_params *p, const kvp_sel_grid_cell *cells, char **out);
int kvp_sel_grid_svg(const char *path, const kvp_sel_grid_params *p, const kvp_sel_grid_cell *cells);

/* Passkey retrieval in the style of llama.cpp's passkey example: an instruction, filler
 * sentences up to the context, "The pass key is N. Remember it." at a random depth, then
 * "What is the pass key? The pass key is" and 8 greedy tokens, right when they contain N.
 * res[0] is the full cache's result, res[1] the policy's (empty when select is NULL). */
typedef struct kvp_passkey_params {
    const char *kv, *select, *budget, *cold;
    int n_ctx;                     /* 0 = the model's training context */
    int n_trials;
    uint64_t seed;
    int n_threads;
} kvp_passkey_params;
typedef struct kvp_passkey_result { int correct, total, n_tokens; } kvp_passkey_result;
int kvp_sel_passkey(kvp_model *m, const kvp_passkey_params *p, kvp_passkey_result res[2]);

/* ---------------------------------------------------------------------------------------
 * Runtime information.
 * ------------------------------------------------------------------------------------- */
/* Returns the instruction set the kernels use ("avx512", "avx2", "scalar"). The environment
 * variable KVP_ISA (scalar, avx2, avx512) lowers it, for tests and comparisons. */
const char *kvp_isa(void);

#ifdef __cplusplus
}
#endif
#endif /* KVPACK_H */
