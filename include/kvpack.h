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
 *                 kvp_ctx_decode() feeds tokens (batched prefill or one-token decode).
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

/* Writes the text of token `id` (following token `prev`, or -1) into buf, NUL-terminated,
 * and returns the number of bytes written (without the NUL), or a negative error. Byte
 * tokens decode to their raw byte; a leading space after BOS is dropped as SentencePiece
 * does. */
int kvp_detokenize(const kvp_model *m, int prev, int id, char *buf, size_t cap);

/* ---------------------------------------------------------------------------------------
 * Contexts: a model, a KV cache and a thread pool.
 * ------------------------------------------------------------------------------------- */
typedef struct kvp_ctx kvp_ctx;

typedef struct kvp_ctx_params {
    int n_ctx;       /* maximum positions; 0 = the model's training context */
    int n_threads;   /* worker threads including the caller; 0 = 1 */
    int n_batch;     /* prompt tokens per forward batch; 0 = 256 */
    const char *kv;  /* KV cache spec: "f16" (default), "f32" (see docs/kv-cache.md) */
} kvp_ctx_params;

kvp_ctx_params kvp_ctx_default_params(void);
int kvp_ctx_new(kvp_model *m, const kvp_ctx_params *p, kvp_ctx **out);
void kvp_ctx_free(kvp_ctx *c);

/* Feeds n tokens at the next positions (a prompt is cut into batches of n_batch). When
 * logits is not NULL it receives the next-token logits: of the last token only,
 * (vocab_size) floats, or with all_logits set of every token, (n, vocab_size) floats. */
int kvp_ctx_decode(kvp_ctx *c, const int *tokens, int n, float *logits, int all_logits);

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
