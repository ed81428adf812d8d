/*
 * tokenizer.h: SentencePiece-style BPE (scores, byte fallback), as llama.cpp's `llama`
 * tokenizer model and llama2.c implement it, and GPT-2-style byte-level BPE (the "gpt2"
 * model of Llama 3, Qwen and SmolLM; tokenizer_bpe.c), behind one interface.
 *
 * A tokenizer is built from GGUF metadata (tokenizer.ggml.model = "llama", with
 * tokenizer.ggml.tokens, .scores, .token_type, .bos_token_id, .eos_token_id,
 * .unknown_token_id, .add_bos_token, .add_space_prefix) or from a llama2.c tokenizer .bin.
 * It owns copies of everything it needs (it does not point into the model file).
 * Encoding matches llama.cpp token for token: spaces become U+2581, a space is prefixed
 * when the vocabulary asks for it, the best-scoring adjacent pair is merged first, and
 * bytes with no piece fall back to <0xXX> tokens.
 */
#ifndef KVP_TOKENIZER_H
#define KVP_TOKENIZER_H

#include <stddef.h>

#include "gguf.h"

typedef struct kvp_tokenizer kvp_tokenizer;

/* "llama" (SentencePiece) or "gpt2" (byte-level BPE, tokenizer_bpe.c); KVP_EUNSUPPORTED
 * naming the model for any other tokenizer.ggml.model. */
int kvp_tokenizer_from_gguf(const kvp_gguf *g, kvp_tokenizer **out);
/* A llama2.c tokenizer file: int32 max_token_length, then per token: float score,
 * int32 len, len bytes. vocab_size comes from the checkpoint header. */
int kvp_tokenizer_from_llama2c(const char *path, int vocab_size, kvp_tokenizer **out);
void kvp_tokenizer_free(kvp_tokenizer *t);

int kvp_tokenizer_n_vocab(const kvp_tokenizer *t);
int kvp_tokenizer_bos(const kvp_tokenizer *t);
int kvp_tokenizer_eos(const kvp_tokenizer *t);

/* Same contract as kvp_tokenize() in kvpack.h. */
int kvp_tokenizer_encode(const kvp_tokenizer *t, const char *text, size_t len, int add_bos,
                         int *ids, int cap, int *n);
/* Same contract as kvp_detokenize() in kvpack.h. */
int kvp_tokenizer_decode(const kvp_tokenizer *t, int prev, int id, char *buf, size_t cap);
/* The raw piece of a token as stored in the vocabulary (for `kvpack tokenize --pieces`). */
const char *kvp_tokenizer_piece(const kvp_tokenizer *t, int id);

/* kvp_tokenize_ex() in kvpack.h: flags KVP_TOKENIZE_*. */
int kvp_tokenizer_encode_ex(const kvp_tokenizer *t, const char *text, size_t len, int flags,
                            int *ids, int cap, int *n);
/* 1 when id ends a generation (EOS, EOT, or a control token such as <|eot_id|>, <|im_end|>). */
int kvp_tokenizer_is_eog(const kvp_tokenizer *t, int id);

/* Reads a special token id from GGUF metadata key `key`: any integer type; absent keeps
 * *id; -1 (also written as the unsigned 0xFFFFFFFF) gives -1. */
int kvp_gguf_tok_id(const kvp_gguf *g, const char *key, int *id);

/* ---- GPT-2-style byte-level BPE (tokenizer_bpe.c), used through the functions above ---- */
typedef struct kvp_bpe kvp_bpe;
int kvp_bpe_from_gguf(const kvp_gguf *g, kvp_bpe **out);
void kvp_bpe_free(kvp_bpe *b);
/* add_special: BOS/EOS as the vocabulary's add_bos_token / add_eos_token ask; parse_special:
 * control tokens in the text are matched too (user-defined tokens always are). */
int kvp_bpe_encode(const kvp_bpe *b, const char *text, size_t len, int add_special, int parse_special,
                   int *ids, int cap, int *n);
int kvp_bpe_decode(const kvp_bpe *b, int id, char *buf, size_t cap);
int kvp_bpe_n_vocab(const kvp_bpe *b);
int kvp_bpe_bos(const kvp_bpe *b);
int kvp_bpe_eos(const kvp_bpe *b);
const char *kvp_bpe_piece(const kvp_bpe *b, int id);
int kvp_bpe_is_eog(const kvp_bpe *b, int id);

#endif
