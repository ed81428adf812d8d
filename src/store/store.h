/*
 * store.h: context stores (docs/codec.md, "Stores"; entry bytes in docs/FORMAT.md).
 *
 * A store maps a key (16 bytes, written as 32 lowercase hex digits) to an entry: one encoded
 * chunk with the tokens it covers, checksummed. The key of the chunk that ends at position
 * `end` is the XXH64 pair (seeds 1 and 2) of (model digest, chunk size, tokens [0, end))
 * (precisely: of the 24 bytes model digest u64, chunk size u32, end u32, XXH64 of the ids
 * as little-endian u32), so contexts that share a token prefix share its chunks. Backends
 * implement the vtable.
 * Internal header.
 */
#ifndef KVP_STORE_H
#define KVP_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "kvpack.h"

#define KVP_STORE_KEY_HEX 33 /* 32 hex digits and a NUL */

typedef struct kvp_store_vtbl {
    const char *name;
    int (*put)(kvp_store *s, const char *key, const void *data, size_t size);
    int (*get)(kvp_store *s, const char *key, void **data, size_t *size); /* KVP_ENOTFOUND when absent */
    int (*has)(kvp_store *s, const char *key);                            /* 1, 0 or an error */
    int (*usage)(kvp_store *s, uint64_t *bytes, uint64_t *entries);
    void (*free)(kvp_store *s);
} kvp_store_vtbl;

/* The common header of every store; backends embed it first. */
struct kvp_store {
    const kvp_store_vtbl *vt;
    kvp_store_params params;
    char prefix[64]; /* redis key prefix (a copy of params.prefix) */
};

int kvp_store_dir_open(const char *path, const kvp_store_params *p, kvp_store **out);
int kvp_store_redis_open(const char *uri, const kvp_store_params *p, kvp_store **out);

/* The key of the chunk that ends at `end` (chunks of chunk_tokens) for model digest md. */
void kvp_store_key(uint64_t md, int chunk_tokens, const int *tokens, int end, uint8_t key[16]);
void kvp_store_key_hex(const uint8_t key[16], char hex[KVP_STORE_KEY_HEX]);

/* Entries: a chunk blob with its key, model digest, position and tokens (docs/FORMAT.md). */
#define KVP_ENTRY_FIXED 44
size_t kvp_entry_bytes(int n_tokens, size_t blob);
void kvp_entry_write(uint8_t *out, const uint8_t key[16], uint64_t md, int chunk_tokens, int end, const int *tokens,
                     int n_tokens, const uint8_t *blob, size_t blob_size);
/* Checks an entry against everything the caller expects (key, model, position, tokens) and
 * its CRC; *blob and *blob_size point at its chunk. */
int kvp_entry_check(const uint8_t *in, size_t size, const uint8_t key[16], uint64_t md, int chunk_tokens, int end,
                    const int *tokens, int n_tokens, const uint8_t **blob, size_t *blob_size);

#endif
