/*
 * tokenizer.c: SentencePiece-style BPE with scores and byte fallback, token for token as
 * llama.cpp's `llama` (SPM) tokenizer encodes.
 *
 * One internal form for both sources. Pieces are kept as SentencePiece writes them: a
 * space is U+2581 ("▁"), a byte token is "<0xXX>", BOS and EOS are "<s>" and "</s>".
 * GGUF vocabularies already use that form. llama2.c tokenizer files store U+2581 as a plain
 * space and BOS/EOS as "\n<s>\n" and "\n</s>\n" (its export script does so for printing);
 * the loader turns them back, so that both sources give identical pieces, identical
 * encodings and identical decodings.
 *
 * Encoding. First, as llama.cpp does even when it does not parse special tokens, the text
 * is split around occurrences of user-defined tokens (type 4, longest first), which become
 * their token directly (kvp_tok_partition). Control and unknown tokens are looked for only
 * when the caller asks to parse special tokens (kvp_tokenize_ex with
 * KVP_TOKENIZE_PARSE_SPECIAL); otherwise their text is plain text. Each remaining fragment is encoded by kvp_tok_encode_text: it
 * gets a leading space when add_space_prefix is set and it starts the text or follows a
 * matched token (llama.cpp's rule), every space becomes "▁", and the result is cut
 * into UTF-8 characters by the lead byte alone (as llama.cpp's unicode_len_utf8 does, so
 * invalid UTF-8 is cut the same way). The symbols form a doubly linked list; every
 * adjacent pair whose concatenation is a piece goes into a max-heap ordered by the piece's
 * score, ties to the leftmost pair. The best pair is merged, stale heap entries are
 * recognised by their byte length and skipped, and the two new neighbour pairs are pushed.
 * Each merge pushes at most two pairs, so the heap holds under 3n entries and encoding is
 * O(n log n). Finally each symbol is looked up; one that is not a piece becomes one byte
 * token per byte (<0xXX>, else the one-byte piece, else the unknown token).
 *
 * Decoding uses a text per token computed at load time: normal pieces with "▁" turned
 * into spaces, byte tokens as their raw byte, user-defined pieces verbatim, and control,
 * unknown, unused and undefined tokens as the empty string (llama.cpp's default when it
 * does not render special tokens). A normal token right after BOS loses one leading space
 * when add_space_prefix is set: that is the space the encoder prefixed (llama2.c's rule).
 * So decode(encode(text)) == text for valid UTF-8 without user-defined tokens and without
 * a literal U+2581 (which encodes as a space, as in llama.cpp).
 *
 * Thread safety: a built tokenizer is read-only; encode and decode may run concurrently.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "tokenizer.h"

/* Token types as GGUF's tokenizer.ggml.token_type numbers them. */
enum {
    KVP_TOK_UNDEFINED = 0, KVP_TOK_NORMAL = 1, KVP_TOK_UNKNOWN = 2, KVP_TOK_CONTROL = 3,
    KVP_TOK_USER_DEFINED = 4, KVP_TOK_UNUSED = 5, KVP_TOK_BYTE = 6
};

#define KVP_TOK_MAX_VOCAB (1 << 24)
#define KVP_TOK_SPACE "\xe2\x96\x81" /* U+2581, SentencePiece's visible space */

/* A growable byte buffer; owns `p`. */
typedef struct kvp_tok_buf {
    char *p;
    size_t n, cap;
} kvp_tok_buf;

struct kvp_tokenizer {
    int n_vocab;
    int bos, eos, unk;      /* token ids, or -1 when the vocabulary has none */
    int add_space_prefix;   /* 1: a space is prefixed to the text before encoding */
    int max_piece_len;      /* the longest piece, in bytes */
    /* All pieces, NUL-terminated, back to back in `pieces.p`: piece i starts at
     * piece_off[i] and has piece_len[i] bytes. The decoded texts live in `texts` alike. */
    kvp_tok_buf pieces, texts;
    size_t *piece_off, *text_off;
    int *piece_len, *text_len;
    float *scores;
    unsigned char *types;   /* KVP_TOK_* */
    /* Piece -> id hash table, open addressing with linear probing; -1 marks a free slot.
     * Empty pieces are not in it (no text can produce them). */
    int *table;
    size_t table_mask;
    int byte_id[256];       /* the token of each byte for byte fallback, or -1 */
    int *user;              /* user-defined, control and unknown tokens with a piece, longest first */
    int n_user;
    int n_user_defined;     /* how many of them are user-defined (matched without parse_special) */
    kvp_bpe *bpe;           /* a byte-level BPE vocabulary: every call goes to tokenizer_bpe.c */
};

/* ------------------------------------------------------------------------------------
 * Small helpers.
 * ---------------------------------------------------------------------------------- */

/* Appends n bytes to b, growing it geometrically. Returns KVP_ENOMEM on failure. */
static int kvp_tok_buf_add(kvp_tok_buf *b, const void *s, size_t n) {
    if (b->cap - b->n < n + 1) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->n < n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return kvp_seterr(KVP_ENOMEM, "out of memory building the vocabulary");
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    return KVP_OK;
}

/* FNV-1a: the hash of the piece-lookup table. */
static uint32_t kvp_tok_hash(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static const char *kvp_tok_piece_at(const kvp_tokenizer *t, int id) {
    return t->pieces.p + t->piece_off[id];
}

/* The id of the piece equal to the n bytes at s, or -1. */
static int kvp_tok_find(const kvp_tokenizer *t, const char *s, size_t n) {
    if (n == 0 || n > (size_t)t->max_piece_len) return -1;
    for (size_t h = kvp_tok_hash(s, n) & t->table_mask;; h = (h + 1) & t->table_mask) {
        int id = t->table[h];
        if (id < 0) return -1;
        if ((size_t)t->piece_len[id] == n && memcmp(kvp_tok_piece_at(t, id), s, n) == 0) return id;
    }
}

/* 1 when the n bytes at s are "<0xXX>" with upper-case hex digits; stores the byte. */
static int kvp_tok_parse_byte(const char *s, size_t n, int *byte) {
    static const char hex[] = "0123456789ABCDEF";
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return 0;
    const char *hi = memchr(hex, s[3], 16), *lo = memchr(hex, s[4], 16);
    if (!hi || !lo) return 0;
    *byte = (int)((hi - hex) * 16 + (lo - hex));
    return 1;
}

/* ------------------------------------------------------------------------------------
 * Building: both loaders allocate with kvp_tok_alloc, append each piece with
 * kvp_tok_add_piece, then call kvp_tok_finish, which validates and builds the indexes.
 * ---------------------------------------------------------------------------------- */

void kvp_tokenizer_free(kvp_tokenizer *t) {
    if (!t) return;
    free(t->pieces.p);
    free(t->texts.p);
    free(t->piece_off);
    free(t->text_off);
    free(t->piece_len);
    free(t->text_len);
    free(t->scores);
    free(t->types);
    free(t->table);
    free(t->user);
    kvp_bpe_free(t->bpe);
    free(t);
}

/* Allocates a tokenizer for n tokens with default special ids (llama's 0/1/2). */
static int kvp_tok_alloc(int n, kvp_tokenizer **out) {
    kvp_tokenizer *t = calloc(1, sizeof *t);
    if (t) {
        t->n_vocab = n;
        t->piece_off = calloc((size_t)n, sizeof *t->piece_off);
        t->text_off = calloc((size_t)n, sizeof *t->text_off);
        t->piece_len = calloc((size_t)n, sizeof *t->piece_len);
        t->text_len = calloc((size_t)n, sizeof *t->text_len);
        t->scores = calloc((size_t)n, sizeof *t->scores);
        t->types = calloc((size_t)n, 1);
    }
    if (!t || !t->piece_off || !t->text_off || !t->piece_len || !t->text_len || !t->scores ||
        !t->types) {
        kvp_tokenizer_free(t);
        return kvp_seterr(KVP_ENOMEM, "out of memory allocating a vocabulary of %d tokens", n);
    }
    t->unk = 0;
    t->bos = 1;
    t->eos = 2;
    t->add_space_prefix = 1;
    *out = t;
    return KVP_OK;
}

/* Appends piece `id` (ids are added in order 0, 1, 2, ...). With `spaces` set (llama2.c
 * files) every plain space is stored as U+2581. A NUL byte inside a piece or a NaN score
 * is malformed: pieces are handed out as C strings and scores must be ordered. */
static int kvp_tok_add_piece(kvp_tokenizer *t, int id, const char *s, size_t n, float score,
                             int spaces) {
    if (n > 0 && memchr(s, '\0', n))
        return kvp_seterr(KVP_EFORMAT, "piece of token %d contains a NUL byte", id);
    if (isnan(score)) return kvp_seterr(KVP_EFORMAT, "score of token %d is NaN", id);
    size_t start = t->pieces.n;
    for (size_t i = 0; i < n; i++) {
        int sp = spaces && s[i] == ' ';
        KVP_TRY(kvp_tok_buf_add(&t->pieces, sp ? KVP_TOK_SPACE : s + i, sp ? 3 : 1));
    }
    KVP_TRY(kvp_tok_buf_add(&t->pieces, "", 1));
    size_t len = t->pieces.n - 1 - start;
    if (len > INT_MAX / 4) return kvp_seterr(KVP_EFORMAT, "piece of token %d is too long", id);
    t->piece_off[id] = start;
    t->piece_len[id] = (int)len;
    t->scores[id] = score;
    t->max_piece_len = KVP_MAX(t->max_piece_len, (int)len);
    return KVP_OK;
}

/* Checks that a special token id is -1 (none) or a token of the vocabulary. */
static int kvp_tok_check_id(const kvp_tokenizer *t, int id, const char *what) {
    if (id >= -1 && id < t->n_vocab) return KVP_OK;
    return kvp_seterr(KVP_EFORMAT, "%s token id %d is out of range (vocabulary of %d)", what, id,
                      t->n_vocab);
}

/* Gives every token a type when the source has none: the unknown id, BOS and EOS are
 * unknown/control tokens, "<0xXX>" pieces are byte tokens, the rest are normal. */
static void kvp_tok_infer_types(kvp_tokenizer *t) {
    for (int i = 0; i < t->n_vocab; i++) {
        int b;
        if (i == t->unk) t->types[i] = KVP_TOK_UNKNOWN;
        else if (i == t->bos || i == t->eos) t->types[i] = KVP_TOK_CONTROL;
        else if (kvp_tok_parse_byte(kvp_tok_piece_at(t, i), (size_t)t->piece_len[i], &b))
            t->types[i] = KVP_TOK_BYTE;
        else t->types[i] = KVP_TOK_NORMAL;
    }
}

/* Appends the decoded text of token id to t->texts (see the file comment). */
static int kvp_tok_add_text(kvp_tokenizer *t, int id) {
    const char *p = kvp_tok_piece_at(t, id);
    size_t n = (size_t)t->piece_len[id], start = t->texts.n;
    int type = t->types[id], byte;
    if (type == KVP_TOK_BYTE) {
        if (!kvp_tok_parse_byte(p, n, &byte))
            return kvp_seterr(KVP_EFORMAT, "byte token %d has the piece '%s', not <0xXX>", id, p);
        unsigned char c = (unsigned char)byte;
        KVP_TRY(kvp_tok_buf_add(&t->texts, &c, 1));
    } else if (type == KVP_TOK_USER_DEFINED) {
        KVP_TRY(kvp_tok_buf_add(&t->texts, p, n));
    } else if (type == KVP_TOK_NORMAL) {
        for (size_t i = 0; i < n;) {
            int sp = n - i >= 3 && memcmp(p + i, KVP_TOK_SPACE, 3) == 0;
            KVP_TRY(kvp_tok_buf_add(&t->texts, sp ? " " : p + i, 1));
            i += sp ? 3 : 1;
        }
    }
    KVP_TRY(kvp_tok_buf_add(&t->texts, "", 1));
    t->text_off[id] = start;
    t->text_len[id] = (int)(t->texts.n - 1 - start);
    return KVP_OK;
}

/* Builds the piece -> id table (twice as many slots as tokens, a power of two). Two
 * tokens with the same piece are malformed: llama.cpp refuses such vocabularies too. */
static int kvp_tok_build_table(kvp_tokenizer *t) {
    size_t slots = 16;
    while (slots < 2 * (size_t)t->n_vocab) slots *= 2;
    t->table = malloc(slots * sizeof *t->table);
    if (!t->table) return kvp_seterr(KVP_ENOMEM, "out of memory building the piece table");
    memset(t->table, 0xff, slots * sizeof *t->table); /* every slot -1 */
    t->table_mask = slots - 1;
    for (int id = 0; id < t->n_vocab; id++) {
        const char *p = kvp_tok_piece_at(t, id);
        size_t n = (size_t)t->piece_len[id];
        if (n == 0) continue;
        int dup = kvp_tok_find(t, p, n);
        if (dup >= 0)
            return kvp_seterr(KVP_EFORMAT, "tokens %d and %d have the same piece '%s'", dup, id, p);
        size_t h = kvp_tok_hash(p, n) & t->table_mask;
        while (t->table[h] >= 0) h = (h + 1) & t->table_mask;
        t->table[h] = id;
    }
    return KVP_OK;
}

/* Fills byte_id: "<0xXX>", else the one-byte piece, else the unknown token (as llama.cpp's
 * byte_to_token, which falls back to the byte as a string). */
static void kvp_tok_build_bytes(kvp_tokenizer *t) {
    for (int b = 0; b < 256; b++) {
        char hex[8], one = (char)b;
        snprintf(hex, sizeof hex, "<0x%02X>", b);
        int id = kvp_tok_find(t, hex, 6);
        if (id < 0) id = kvp_tok_find(t, &one, 1);
        t->byte_id[b] = id >= 0 ? id : t->unk;
    }
}

/* A user-defined token for sorting: longest piece first, then the lower id. */
typedef struct kvp_tok_user {
    int len, id;
} kvp_tok_user;

static int kvp_tok_cmp_user(const void *a, const void *b) {
    const kvp_tok_user *x = a, *y = b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* 1 for the tokens the encoder may split out of the text: user-defined ones always,
 * control and unknown ones with parse_special (llama.cpp's rule). */
static int kvp_tok_is_special(const kvp_tokenizer *t, int id) {
    const int ty = t->types[id];
    return (ty == KVP_TOK_USER_DEFINED || ty == KVP_TOK_CONTROL || ty == KVP_TOK_UNKNOWN) && t->piece_len[id] > 0;
}

/* Lists the tokens that the encoder splits out of the text. */
static int kvp_tok_build_user(kvp_tokenizer *t) {
    for (int id = 0; id < t->n_vocab; id++) {
        t->n_user += kvp_tok_is_special(t, id);
        t->n_user_defined += t->types[id] == KVP_TOK_USER_DEFINED && t->piece_len[id] > 0;
    }
    if (t->n_user == 0) return KVP_OK;
    kvp_tok_user *u = malloc((size_t)t->n_user * sizeof *u);
    t->user = malloc((size_t)t->n_user * sizeof *t->user);
    if (!u || !t->user) {
        free(u);
        return kvp_seterr(KVP_ENOMEM, "out of memory listing user-defined tokens");
    }
    int k = 0;
    for (int id = 0; id < t->n_vocab; id++)
        if (kvp_tok_is_special(t, id)) u[k++] = (kvp_tok_user){t->piece_len[id], id};
    qsort(u, (size_t)k, sizeof *u, kvp_tok_cmp_user);
    for (int i = 0; i < k; i++) t->user[i] = u[i].id;
    free(u);
    return KVP_OK;
}

/* Validates the special ids, completes the types, and builds texts and indexes. When
 * `have_types` is 0 the types are inferred. */
static int kvp_tok_finish(kvp_tokenizer *t, int have_types) {
    KVP_TRY(kvp_tok_check_id(t, t->bos, "BOS"));
    KVP_TRY(kvp_tok_check_id(t, t->eos, "EOS"));
    KVP_TRY(kvp_tok_check_id(t, t->unk, "unknown"));
    if (!have_types) kvp_tok_infer_types(t);
    for (int id = 0; id < t->n_vocab; id++) KVP_TRY(kvp_tok_add_text(t, id));
    KVP_TRY(kvp_tok_build_table(t));
    kvp_tok_build_bytes(t);
    return kvp_tok_build_user(t);
}

/* ------------------------------------------------------------------------------------
 * llama2.c tokenizer files.
 * ---------------------------------------------------------------------------------- */

/* A bounds-checked reader over a file image. */
typedef struct kvp_tok_reader {
    const unsigned char *p;
    size_t size, off;
    const char *path;
} kvp_tok_reader;

static int kvp_tok_read(kvp_tok_reader *r, void *dst, size_t n, int id) {
    if (r->size - r->off < n)
        return kvp_seterr(KVP_EFORMAT, "%s: truncated at byte %zu (reading token %d)", r->path,
                          r->off, id);
    memcpy(dst, r->p + r->off, n);
    r->off += n;
    return KVP_OK;
}

/* Reads token id: float score, int32 length, the bytes. BOS/EOS written as "\n<s>\n" and
 * "\n</s>\n" are stored as "<s>" and "</s>". */
static int kvp_l2c_token(kvp_tokenizer *t, kvp_tok_reader *r, int id, int32_t max_len) {
    float score = 0.0f;
    int32_t len = 0;
    KVP_TRY(kvp_tok_read(r, &score, 4, id));
    KVP_TRY(kvp_tok_read(r, &len, 4, id));
    if (len < 0 || len > max_len)
        return kvp_seterr(KVP_EFORMAT, "%s: token %d has length %d (max_token_length %d)", r->path,
                          id, len, max_len);
    if (r->size - r->off < (size_t)len)
        return kvp_seterr(KVP_EFORMAT, "%s: truncated at byte %zu (piece of token %d)", r->path,
                          r->off, id);
    const char *s = (const char *)r->p + r->off;
    r->off += (size_t)len;
    size_t n = (size_t)len;
    if ((id == t->bos || id == t->eos) && n >= 2 && s[0] == '\n' && s[n - 1] == '\n') {
        s++;
        n -= 2;
    }
    int rc = kvp_tok_add_piece(t, id, s, n, score, 1);
    return rc < 0 ? kvp_errprefix(rc, r->path) : rc;
}

/* Parses the whole image into t; the file must hold exactly vocab_size tokens. */
static int kvp_l2c_parse(kvp_tokenizer *t, kvp_tok_reader *r) {
    int32_t max_len = 0;
    KVP_TRY(kvp_tok_read(r, &max_len, 4, -1));
    if (max_len <= 0)
        return kvp_seterr(KVP_EFORMAT, "%s: max_token_length is %d", r->path, max_len);
    for (int id = 0; id < t->n_vocab; id++) KVP_TRY(kvp_l2c_token(t, r, id, max_len));
    if (r->off != r->size)
        return kvp_seterr(KVP_EMISMATCH, "%s: %zu bytes follow the %d tokens of the model's "
                          "vocabulary: a tokenizer for another model?", r->path,
                          r->size - r->off, t->n_vocab);
    return KVP_OK;
}

int kvp_tokenizer_from_llama2c(const char *path, int vocab_size, kvp_tokenizer **out) {
    if (!out) return kvp_seterr(KVP_EINVAL, "kvp_tokenizer_from_llama2c: no output pointer");
    *out = NULL;
    if (!path) return kvp_seterr(KVP_EINVAL, "no tokenizer path given");
    if (vocab_size < 3 || vocab_size > KVP_TOK_MAX_VOCAB)
        return kvp_seterr(KVP_EINVAL, "%s: vocabulary size %d is out of range (3..%d)", path,
                          vocab_size, KVP_TOK_MAX_VOCAB);
    void *data;
    size_t size;
    KVP_TRY(kvp_read_file(path, &data, &size));
    kvp_tokenizer *t = NULL;
    kvp_tok_reader r = {data, size, 0, path};
    int rc = kvp_tok_alloc(vocab_size, &t);
    if (rc == KVP_OK) rc = kvp_l2c_parse(t, &r);
    if (rc == KVP_OK && (rc = kvp_tok_finish(t, 0)) < 0) kvp_errprefix(rc, path);
    free(data);
    if (rc < 0) {
        kvp_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return KVP_OK;
}

/* ------------------------------------------------------------------------------------
 * GGUF vocabularies.
 * ---------------------------------------------------------------------------------- */

/* Reads a special token id: any integer type; absent keeps *id; -1 (also written as the
 * unsigned 0xFFFFFFFF, as llama.cpp does for "none") gives -1. */
int kvp_gguf_tok_id(const kvp_gguf *g, const char *key, int *id) {
    const kvp_gguf_kv *kv = kvp_gguf_find(g, key);
    if (!kv) return KVP_OK;
    int64_t v;
    switch (kv->type) {
    case KVP_GGUF_UINT8: case KVP_GGUF_UINT16: case KVP_GGUF_UINT32: case KVP_GGUF_UINT64:
        v = kv->v.u == 0xffffffffu || kv->v.u == UINT64_MAX ? -1
            : kv->v.u > INT32_MAX ? INT64_MAX : (int64_t)kv->v.u;
        break;
    case KVP_GGUF_INT8: case KVP_GGUF_INT16: case KVP_GGUF_INT32: case KVP_GGUF_INT64:
        v = kv->v.i;
        break;
    default:
        return kvp_seterr(KVP_EFORMAT, "%s has type %u, not an integer", key, kv->type);
    }
    if (v < -1 || v > INT32_MAX)
        return kvp_seterr(KVP_EFORMAT, "%s = %lld is out of range", key, (long long)v);
    *id = (int)v;
    return KVP_OK;
}

/* Accepts tokenizer.ggml.model "llama" (returns 0) and "gpt2" (returns 1); names any
 * other model in the error. */
static int kvp_gguf_tok_model(const kvp_gguf *g) {
    static const char *const known[][2] = {
        {"bert", "WordPiece"}, {"t5", "Unigram"},
        {"rwkv", "RWKV greedy"}, {"no_vocab", "no vocabulary"}, {"none", "no vocabulary"},
    };
    kvp_gguf_str s;
    int rc = kvp_gguf_get_str(g, "tokenizer.ggml.model", &s);
    if (rc == KVP_ENOTFOUND)
        return kvp_seterr(KVP_EFORMAT, "the file has no vocabulary (tokenizer.ggml.model is missing)");
    KVP_TRY(rc);
    if (s.len == 5 && memcmp(s.s, "llama", 5) == 0) return KVP_OK;
    if (s.len == 4 && memcmp(s.s, "gpt2", 4) == 0) return 1;
    char name[64];
    size_t n = KVP_MIN(s.len, sizeof name - 1);
    for (size_t i = 0; i < n; i++) name[i] = s.s[i] >= 0x20 && s.s[i] < 0x7f ? s.s[i] : '?';
    name[n] = '\0';
    const char *kind = "unknown kind";
    for (size_t i = 0; i < KVP_ARRAY_LEN(known); i++)
        if (strcmp(name, known[i][0]) == 0) kind = known[i][1];
    return kvp_seterr(KVP_EUNSUPPORTED, "tokenizer model '%s' (%s) is not supported yet", name, kind);
}

/* An optional per-token array: absent gives *kv = NULL; present, it needs n elements. */
static int kvp_gguf_tok_arr(const kvp_gguf *g, const char *key, uint32_t type, uint64_t n,
                            const kvp_gguf_kv **kv) {
    int rc = kvp_gguf_get_arr(g, key, type, kv);
    if (rc == KVP_ENOTFOUND) {
        *kv = NULL;
        return KVP_OK;
    }
    KVP_TRY(rc);
    if ((*kv)->arr_n != n)
        return kvp_seterr(KVP_EFORMAT, "%s has %llu elements for %llu tokens", key,
                          (unsigned long long)(*kv)->arr_n, (unsigned long long)n);
    return KVP_OK;
}

/* Copies pieces, scores and types out of the GGUF arrays (which point into the file). */
static int kvp_gguf_tok_pieces(kvp_tokenizer *t, const kvp_gguf_kv *tokens,
                               const kvp_gguf_kv *scores, const kvp_gguf_kv *types) {
    for (int id = 0; id < t->n_vocab; id++) {
        float score = 0.0f;
        if (scores) memcpy(&score, (const char *)scores->data + 4 * (size_t)id, 4);
        const kvp_gguf_str *s = &tokens->strs[id];
        if (s->len > INT_MAX / 4)
            return kvp_seterr(KVP_EFORMAT, "piece of token %d is too long", id);
        KVP_TRY(kvp_tok_add_piece(t, id, s->s, (size_t)s->len, score, 0));
        if (!types) continue;
        int32_t type;
        memcpy(&type, (const char *)types->data + 4 * (size_t)id, 4);
        if (type < KVP_TOK_UNDEFINED || type > KVP_TOK_BYTE)
            return kvp_seterr(KVP_EFORMAT, "token %d has type %d (expected 0..6)", id, type);
        t->types[id] = (unsigned char)type;
    }
    return KVP_OK;
}

/* Reads the special ids and flags of tokenizer.ggml.*. */
static int kvp_gguf_tok_params(const kvp_gguf *g, kvp_tokenizer *t) {
    KVP_TRY(kvp_gguf_tok_id(g, "tokenizer.ggml.bos_token_id", &t->bos));
    KVP_TRY(kvp_gguf_tok_id(g, "tokenizer.ggml.eos_token_id", &t->eos));
    KVP_TRY(kvp_gguf_tok_id(g, "tokenizer.ggml.unknown_token_id", &t->unk));
    int rc = kvp_gguf_get_bool(g, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix);
    return rc == KVP_ENOTFOUND ? KVP_OK : rc;
}

/* A byte-level BPE vocabulary: a tokenizer that hands every call to tokenizer_bpe.c. */
static int kvp_gguf_tok_bpe(const kvp_gguf *g, kvp_tokenizer **out) {
    kvp_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return kvp_seterr(KVP_ENOMEM, "out of memory");
    int rc = kvp_bpe_from_gguf(g, &t->bpe);
    if (rc < 0) {
        free(t);
        return rc;
    }
    t->n_vocab = kvp_bpe_n_vocab(t->bpe);
    *out = t;
    return KVP_OK;
}

static int kvp_gguf_tok_build(const kvp_gguf *g, kvp_tokenizer **out) {
    const kvp_gguf_kv *tokens, *scores, *types;
    const int kind = kvp_gguf_tok_model(g);
    if (kind < 0) return kind;
    if (kind == 1) return kvp_gguf_tok_bpe(g, out);
    int rc = kvp_gguf_get_arr(g, "tokenizer.ggml.tokens", KVP_GGUF_STRING, &tokens);
    if (rc == KVP_ENOTFOUND)
        return kvp_seterr(KVP_EFORMAT, "the file has no tokenizer.ggml.tokens");
    KVP_TRY(rc);
    uint64_t n = tokens->arr_n;
    if (n < 1 || n > KVP_TOK_MAX_VOCAB)
        return kvp_seterr(KVP_EFORMAT, "tokenizer.ggml.tokens has %llu tokens", (unsigned long long)n);
    KVP_TRY(kvp_gguf_tok_arr(g, "tokenizer.ggml.scores", KVP_GGUF_FLOAT32, n, &scores));
    KVP_TRY(kvp_gguf_tok_arr(g, "tokenizer.ggml.token_type", KVP_GGUF_INT32, n, &types));
    kvp_tokenizer *t;
    KVP_TRY(kvp_tok_alloc((int)n, &t));
    rc = kvp_gguf_tok_params(g, t);
    if (rc == KVP_OK) rc = kvp_gguf_tok_pieces(t, tokens, scores, types);
    if (rc == KVP_OK) rc = kvp_tok_finish(t, types != NULL);
    if (rc < 0) {
        kvp_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return KVP_OK;
}

int kvp_tokenizer_from_gguf(const kvp_gguf *g, kvp_tokenizer **out) {
    if (!out) return kvp_seterr(KVP_EINVAL, "kvp_tokenizer_from_gguf: no output pointer");
    *out = NULL;
    if (!g) return kvp_seterr(KVP_EINVAL, "kvp_tokenizer_from_gguf: no GGUF index");
    int rc = kvp_gguf_tok_build(g, out);
    return rc < 0 ? kvp_errprefix(rc, "vocabulary") : rc;
}

/* ------------------------------------------------------------------------------------
 * Accessors.
 * ---------------------------------------------------------------------------------- */

int kvp_tokenizer_n_vocab(const kvp_tokenizer *t) { return t ? t->n_vocab : 0; }
int kvp_tokenizer_bos(const kvp_tokenizer *t) { return !t ? -1 : t->bpe ? kvp_bpe_bos(t->bpe) : t->bos; }
int kvp_tokenizer_eos(const kvp_tokenizer *t) { return !t ? -1 : t->bpe ? kvp_bpe_eos(t->bpe) : t->eos; }

const char *kvp_tokenizer_piece(const kvp_tokenizer *t, int id) {
    if (!t || id < 0 || id >= t->n_vocab) return NULL;
    return t->bpe ? kvp_bpe_piece(t->bpe, id) : kvp_tok_piece_at(t, id);
}

int kvp_tokenizer_is_eog(const kvp_tokenizer *t, int id) {
    if (!t || id < 0 || id >= t->n_vocab) return 0;
    return t->bpe ? kvp_bpe_is_eog(t->bpe, id) : id == t->eos;
}

/* ------------------------------------------------------------------------------------
 * Encoding.
 * ---------------------------------------------------------------------------------- */

/* A run of the escaped text: start offset and byte length (0 once merged into its left
 * neighbour), and its neighbours in the list (-1 at the ends). */
typedef struct kvp_tok_sym {
    int start, len, prev, next;
} kvp_tok_sym;

/* A candidate merge of symbols left and right into a piece of `size` bytes. */
typedef struct kvp_tok_pair {
    float score;
    int left, right, size;
} kvp_tok_pair;

/* The working state of one encode call; owns text, sym and heap. */
typedef struct kvp_tok_session {
    const kvp_tokenizer *t;
    char *text;          /* the escaped text */
    int n_text, n_sym, n_heap;
    kvp_tok_sym *sym;
    kvp_tok_pair *heap;  /* a binary max-heap by kvp_tok_pair_before */
} kvp_tok_session;

/* Heap order: the higher score first; on equal scores the leftmost pair. */
static int kvp_tok_pair_before(const kvp_tok_pair *a, const kvp_tok_pair *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void kvp_tok_heap_push(kvp_tok_session *s, kvp_tok_pair p) {
    int i = s->n_heap++;
    while (i > 0 && kvp_tok_pair_before(&p, &s->heap[(i - 1) / 2])) {
        s->heap[i] = s->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    s->heap[i] = p;
}

static kvp_tok_pair kvp_tok_heap_pop(kvp_tok_session *s) {
    kvp_tok_pair top = s->heap[0], last = s->heap[--s->n_heap];
    int i = 0, n = s->n_heap;
    for (int c = 1; c < n; i = c, c = 2 * c + 1) {
        if (c + 1 < n && kvp_tok_pair_before(&s->heap[c + 1], &s->heap[c])) c++;
        if (!kvp_tok_pair_before(&s->heap[c], &last)) break;
        s->heap[i] = s->heap[c];
    }
    if (n > 0) s->heap[i] = last;
    return top;
}

/* Pushes the pair (left, right) when their concatenation is a piece. */
static void kvp_tok_try_pair(kvp_tok_session *s, int left, int right) {
    if (left < 0 || right < 0) return;
    const kvp_tok_sym *l = &s->sym[left], *r = &s->sym[right];
    int size = l->len + r->len;
    int id = kvp_tok_find(s->t, s->text + l->start, (size_t)size);
    if (id < 0) return;
    kvp_tok_pair p = {s->t->scores[id], left, right, size};
    kvp_tok_heap_push(s, p);
}

/* Writes the escaped text: a leading "▁" when `prefix` is set, then the input with every
 * space as "▁". The caller checked that 3 * (len + 1) fits an int. */
static int kvp_tok_escape(kvp_tok_session *s, const char *text, size_t len, int prefix) {
    s->text = malloc(3 * (len + 1));
    if (!s->text) return kvp_seterr(KVP_ENOMEM, "out of memory encoding %zu bytes", len);
    size_t n = 0;
    if (prefix) {
        memcpy(s->text, KVP_TOK_SPACE, 3);
        n = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(s->text + n, KVP_TOK_SPACE, 3);
            n += 3;
        } else {
            s->text[n++] = text[i];
        }
    }
    s->n_text = (int)n;
    return KVP_OK;
}

/* The byte length of the UTF-8 character led by byte c, as llama.cpp's unicode_len_utf8
 * computes it (from the high four bits; a stray continuation byte counts as one). */
static int kvp_tok_utf8_len(unsigned char c) {
    static const int lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lookup[c >> 4];
}

/* Cuts the escaped text into characters linked in order, and seeds the heap. */
static int kvp_tok_split(kvp_tok_session *s) {
    size_t n = (size_t)s->n_text;
    s->sym = malloc(n * sizeof *s->sym);
    s->heap = malloc(3 * n * sizeof *s->heap);
    if (!s->sym || !s->heap) return kvp_seterr(KVP_ENOMEM, "out of memory encoding %zu bytes", n);
    int k = 0;
    for (int off = 0; off < s->n_text; k++) {
        int len = KVP_MIN(kvp_tok_utf8_len((unsigned char)s->text[off]), s->n_text - off);
        s->sym[k] = (kvp_tok_sym){off, len, k - 1, off + len < s->n_text ? k + 1 : -1};
        off += len;
    }
    s->n_sym = k;
    for (int i = 1; i < k; i++) kvp_tok_try_pair(s, i - 1, i);
    return KVP_OK;
}

/* Merges the best pair until none is left. A pair is stale when either side was merged
 * away (length 0) or grew since it was pushed (the lengths no longer add up). */
static void kvp_tok_merge(kvp_tok_session *s) {
    while (s->n_heap > 0) {
        kvp_tok_pair p = kvp_tok_heap_pop(s);
        kvp_tok_sym *l = &s->sym[p.left], *r = &s->sym[p.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != p.size) continue;
        l->len += r->len;
        r->len = 0;
        l->next = r->next;
        if (r->next >= 0) s->sym[r->next].prev = p.left;
        kvp_tok_try_pair(s, l->prev, p.left);
        kvp_tok_try_pair(s, p.left, l->next);
    }
}

/* Stores id as output number *k when it fits in cap, and counts it. */
static void kvp_tok_emit(int id, int *ids, int cap, int *k) {
    if (*k < cap) ids[*k] = id;
    (*k)++;
}

/* Emits the final symbols: a piece as its token, anything else byte by byte. */
static int kvp_tok_output(const kvp_tok_session *s, int *ids, int cap, int *k) {
    for (int i = s->n_sym > 0 ? 0 : -1; i >= 0; i = s->sym[i].next) {
        const kvp_tok_sym *y = &s->sym[i];
        int id = kvp_tok_find(s->t, s->text + y->start, (size_t)y->len);
        if (id >= 0) {
            kvp_tok_emit(id, ids, cap, k);
            continue;
        }
        for (int j = 0; j < y->len; j++) {
            unsigned char c = (unsigned char)s->text[y->start + j];
            if (s->t->byte_id[c] < 0)
                return kvp_seterr(KVP_EUNSUPPORTED, "the vocabulary cannot represent byte 0x%02X "
                                  "(no byte token and no unknown token)", c);
            kvp_tok_emit(s->t->byte_id[c], ids, cap, k);
        }
    }
    return KVP_OK;
}

/* Encodes a non-empty fragment of text (with a leading space when `prefix` is set),
 * appending to ids from *k on. */
static int kvp_tok_encode_text(const kvp_tokenizer *t, const char *text, size_t len, int prefix,
                               int *ids, int cap, int *k) {
    kvp_tok_session s = {.t = t};
    int rc = kvp_tok_escape(&s, text, len, prefix);
    if (rc == KVP_OK) rc = kvp_tok_split(&s);
    if (rc == KVP_OK) {
        kvp_tok_merge(&s);
        rc = kvp_tok_output(&s, ids, cap, k);
    }
    free(s.text);
    free(s.sym);
    free(s.heap);
    return rc;
}

/* A fragment of the input: `len` bytes of text at `off` (id -1), or a user-defined token. */
typedef struct kvp_tok_frag {
    size_t off, len;
    int id;
} kvp_tok_frag;

/* A growable list of fragments; owns `f`. */
typedef struct kvp_tok_frags {
    kvp_tok_frag *f;
    size_t n, cap;
} kvp_tok_frags;

static int kvp_tok_frag_add(kvp_tok_frags *l, size_t off, size_t len, int id) {
    if (id < 0 && len == 0) return KVP_OK;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        kvp_tok_frag *f = realloc(l->f, cap * sizeof *f);
        if (!f) return kvp_seterr(KVP_ENOMEM, "out of memory splitting the text");
        l->f = f;
        l->cap = cap;
    }
    l->f[l->n++] = (kvp_tok_frag){off, len, id};
    return KVP_OK;
}

/* Appends fragment f of text to out, split around every occurrence of token id (left to
 * right, not overlapping). */
static int kvp_tok_split_frag(const kvp_tokenizer *t, const char *text, kvp_tok_frag f, int id,
                              kvp_tok_frags *out) {
    if (f.id >= 0) return kvp_tok_frag_add(out, f.off, f.len, f.id);
    const char *p = kvp_tok_piece_at(t, id);
    size_t n = (size_t)t->piece_len[id], off = f.off, end = f.off + f.len;
    const char *hit;
    while ((hit = memmem(text + off, end - off, p, n)) != NULL) {
        size_t at = (size_t)(hit - text);
        KVP_TRY(kvp_tok_frag_add(out, off, at - off, -1));
        KVP_TRY(kvp_tok_frag_add(out, at, n, id));
        off = at + n;
    }
    return kvp_tok_frag_add(out, off, end - off, -1);
}

/* Splits the text around the user-defined tokens (and with `parse` the control and
 * unknown tokens), longest first, as llama.cpp does. On success *list holds the fragments
 * in order (the caller frees list->f). */
static int kvp_tok_partition(const kvp_tokenizer *t, const char *text, size_t len, int parse,
                             kvp_tok_frags *list) {
    int rc = kvp_tok_frag_add(list, 0, len, -1);
    for (int u = 0; u < t->n_user && rc == KVP_OK; u++) {
        if (!parse && t->types[t->user[u]] != KVP_TOK_USER_DEFINED) continue;
        kvp_tok_frags next = {0};
        for (size_t i = 0; i < list->n && rc == KVP_OK; i++)
            rc = kvp_tok_split_frag(t, text, list->f[i], t->user[u], &next);
        free(list->f);
        *list = next;
    }
    return rc;
}

/* Encodes the fragments: a token as itself, text with a space prefix when it comes first
 * or right after a token. */
static int kvp_tok_encode_frags(const kvp_tokenizer *t, const char *text, const kvp_tok_frags *l,
                                int *ids, int cap, int *k) {
    int after_token = 1;
    for (size_t i = 0; i < l->n; i++) {
        const kvp_tok_frag *f = &l->f[i];
        if (f->id >= 0) {
            kvp_tok_emit(f->id, ids, cap, k);
        } else {
            int prefix = t->add_space_prefix && after_token;
            KVP_TRY(kvp_tok_encode_text(t, text + f->off, f->len, prefix, ids, cap, k));
        }
        after_token = f->id >= 0;
    }
    return KVP_OK;
}

/* Encodes non-empty text, appending to ids from *k on. */
static int kvp_tok_encode_all(const kvp_tokenizer *t, const char *text, size_t len, int parse,
                              int *ids, int cap, int *k) {
    if ((parse ? t->n_user : t->n_user_defined) == 0)
        return kvp_tok_encode_text(t, text, len, t->add_space_prefix, ids, cap, k);
    kvp_tok_frags list = {0};
    int rc = kvp_tok_partition(t, text, len, parse, &list);
    if (rc == KVP_OK) rc = kvp_tok_encode_frags(t, text, &list, ids, cap, k);
    free(list.f);
    return rc;
}

int kvp_tokenizer_encode(const kvp_tokenizer *t, const char *text, size_t len, int add_bos,
                         int *ids, int cap, int *n) {
    const int parse = t && t->bpe ? KVP_TOKENIZE_PARSE_SPECIAL : 0; /* SentencePiece: as llama.cpp by default */
    return kvp_tokenizer_encode_ex(t, text, len, (add_bos ? KVP_TOKENIZE_ADD_SPECIAL : 0) | parse, ids, cap, n);
}

int kvp_tokenizer_encode_ex(const kvp_tokenizer *t, const char *text, size_t len, int flags,
                            int *ids, int cap, int *n) {
    if (n) *n = 0;
    if (!t || !n || cap < 0 || (!ids && cap > 0) || (!text && len > 0))
        return kvp_seterr(KVP_EINVAL, "kvp_tokenize: bad arguments");
    if (t->bpe)
        return kvp_bpe_encode(t->bpe, text, len, flags & KVP_TOKENIZE_ADD_SPECIAL,
                              (flags & KVP_TOKENIZE_PARSE_SPECIAL) != 0, ids, cap, n);
    const int add_bos = (flags & KVP_TOKENIZE_ADD_SPECIAL) != 0;
    /* A byte yields at most 3 escaped bytes, and a fragment's space prefix 3 more, each at
     * most one token: 6 * len + 4 tokens must fit an int. */
    if (len > (size_t)(INT_MAX / 8))
        return kvp_seterr(KVP_EINVAL, "kvp_tokenize: text of %zu bytes is too long", len);
    int k = 0;
    if (add_bos && t->bos >= 0) kvp_tok_emit(t->bos, ids, cap, &k);
    if (len > 0) KVP_TRY(kvp_tok_encode_all(t, text, len, (flags & KVP_TOKENIZE_PARSE_SPECIAL) != 0, ids, cap, &k));
    *n = k;
    if (k > cap)
        return kvp_seterr(KVP_ERANGE, "the text needs %d tokens, the buffer holds %d", k, cap);
    return KVP_OK;
}

/* ------------------------------------------------------------------------------------
 * Decoding.
 * ---------------------------------------------------------------------------------- */

int kvp_tokenizer_decode(const kvp_tokenizer *t, int prev, int id, char *buf, size_t cap) {
    if (!t || (!buf && cap > 0)) return kvp_seterr(KVP_EINVAL, "kvp_detokenize: bad arguments");
    if (id < 0 || id >= t->n_vocab)
        return kvp_seterr(KVP_ERANGE, "token id %d is out of range (vocabulary of %d)", id,
                          t->n_vocab);
    if (t->bpe) return kvp_bpe_decode(t->bpe, id, buf, cap);
    const char *s = t->texts.p + t->text_off[id];
    size_t n = (size_t)t->text_len[id];
    /* The space the encoder prefixed to the text is not part of it. */
    if (prev >= 0 && prev == t->bos && t->add_space_prefix && t->types[id] == KVP_TOK_NORMAL &&
        n > 0 && s[0] == ' ') {
        s++;
        n--;
    }
    if (n >= cap)
        return kvp_seterr(KVP_ERANGE, "token %d needs %zu bytes with the NUL, the buffer holds %zu",
                          id, n + 1, cap);
    memcpy(buf, s, n);
    buf[n] = '\0';
    return (int)n;
}
