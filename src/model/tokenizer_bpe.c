/*
 * tokenizer_bpe.c: GPT-2-style byte-level BPE vocabularies (tokenizer.ggml.model = "gpt2"):
 * GPT-2, Llama 3, Qwen2/2.5/3, SmolLM and others, encoding token for token as Hugging Face
 * tokenizers do.
 *
 * Encoding a text:
 *   1. Special tokens are split out first, on the raw text, leftmost-longest: control and
 *      user-defined tokens when parse_special is set, user-defined tokens only otherwise
 *      (Hugging Face matches non-special added tokens even with split_special_tokens).
 *   2. Each remaining fragment is normalized to NFC when the pre-tokenizer asks for it
 *      (Qwen2's tokenizer.json has an NFC normalizer; llama.cpp skips this step).
 *   3. The fragment is cut into words by the pre-tokenizer's split rule (tokenizer.ggml.pre),
 *      each written by hand from its regular expression, over Unicode general categories
 *      from utf8proc: letters \p{L} = L*, numbers \p{N} = N*, and whitespace \s = the
 *      Unicode White_Space characters (tab..CR, U+0085 and the Z* categories). See
 *      kvp_bpe_word_* below for each rule.
 *   4. Each word's UTF-8 bytes are mapped to GPT-2's printable byte alphabet; when the
 *      vocabulary ignores merges (Llama 3) a word that is itself a token becomes that token;
 *      otherwise its bytes start as one symbol each and the adjacent pair with the lowest
 *      merge rank is merged (leftmost on ties) until no pair has a merge. A min-heap keeps
 *      this O(n log n) in the word length.
 * Invalid UTF-8 is not rejected: each stray byte is a character of its own ("other"
 * category), so any byte string encodes and decodes back to itself.
 *
 * Decoding maps the byte alphabet back to bytes; user-defined tokens decode as their text,
 * control tokens as nothing.
 *
 * Without utf8proc (an optional build dependency) these vocabularies are refused with
 * KVP_EUNSUPPORTED.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "tokenizer.h"

#ifdef KVP_HAVE_UTF8PROC
#include <utf8proc.h>

enum { KVP_BT_NORMAL = 1, KVP_BT_UNKNOWN = 2, KVP_BT_CONTROL = 3, KVP_BT_USER = 4, KVP_BT_BYTE = 6 };

/* NFC makes a UTF-8 text at most three times longer (Unicode's stability guarantee). */
#define KVP_BPE_GROWTH 3

/* Pre-tokenizer split rules. */
enum { KVP_PRE_GPT2 = 0, KVP_PRE_LLAMA3 = 1, KVP_PRE_QWEN2 = 2, KVP_PRE_SMOLLM = 3 };

/* tokenizer.ggml.pre names and their rule, as llama.cpp groups them (same expression). */
static const struct { const char *name; int pre; } kvp_bpe_pre_names[] = {
    {"default", KVP_PRE_GPT2},  {"gpt2", KVP_PRE_GPT2},          {"gpt-2", KVP_PRE_GPT2},
    {"mpt", KVP_PRE_GPT2},      {"olmo", KVP_PRE_GPT2},          {"jais", KVP_PRE_GPT2},
    {"llama-bpe", KVP_PRE_LLAMA3}, {"llama3", KVP_PRE_LLAMA3},   {"llama-v3", KVP_PRE_LLAMA3},
    {"dbrx", KVP_PRE_LLAMA3},   {"smaug-bpe", KVP_PRE_LLAMA3},   {"qwen2", KVP_PRE_QWEN2},
    {"stablelm2", KVP_PRE_QWEN2}, {"smollm", KVP_PRE_SMOLLM},    {"starcoder", KVP_PRE_SMOLLM},
    {"refact", KVP_PRE_SMOLLM}, {"command-r", KVP_PRE_SMOLLM},   {"codeshell", KVP_PRE_SMOLLM},
};

/* An open-addressing hash table of strings (pieces) to ids; -1 marks a free slot. */
typedef struct kvp_bpe_strtab {
    int *slot;
    size_t mask;
} kvp_bpe_strtab;

/* A merge: the pair (left, right) of token ids becomes `id` with priority `rank`. */
typedef struct kvp_bpe_merge {
    uint64_t key; /* left << 32 | right, UINT64_MAX when the slot is free */
    int rank, id;
} kvp_bpe_merge;

struct kvp_bpe {
    int n_vocab, bos, eos, eot, add_bos, add_eos;
    int pre, nfc, ignore_merges;
    char *pieces;           /* every piece, NUL-terminated, back to back */
    size_t *off;            /* piece i starts at pieces + off[i] */
    int *len;
    unsigned char *type;    /* GGUF token types */
    kvp_bpe_strtab tab;
    kvp_bpe_merge *merges;  /* hash table, merge_mask + 1 slots */
    size_t merge_mask;
    int byte_id[256];       /* the token of each single byte, or -1 */
    uint16_t byte_cp[256];  /* GPT-2's byte -> printable code point */
    int16_t cp_byte[324];   /* and back (-1: not in the alphabet) */
    int *special;           /* control and user-defined tokens, longest first */
    int n_special;
    int first[257];         /* special[first[b] .. first[b + 1]) start with byte b */
};

/* ---------------------------------------------------------------------------------------
 * Tables.
 * ------------------------------------------------------------------------------------- */

static uint32_t kvp_bpe_hash(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static const char *kvp_bpe_piece_at(const kvp_bpe *b, int id) { return b->pieces + b->off[id]; }

/* The id of the piece equal to the n bytes at s, or -1. */
static int kvp_bpe_find(const kvp_bpe *b, const char *s, size_t n) {
    if (n == 0) return -1;
    for (size_t h = kvp_bpe_hash(s, n) & b->tab.mask;; h = (h + 1) & b->tab.mask) {
        const int id = b->tab.slot[h];
        if (id < 0) return -1;
        if ((size_t)b->len[id] == n && !memcmp(kvp_bpe_piece_at(b, id), s, n)) return id;
    }
}

/* Builds the piece table; a piece held by two tokens keeps the first (as llama.cpp's map). */
static int kvp_bpe_build_table(kvp_bpe *b) {
    size_t slots = 16;
    while (slots < 2 * (size_t)b->n_vocab) slots *= 2;
    if (!(b->tab.slot = malloc(slots * sizeof(int)))) return kvp_seterr(KVP_ENOMEM, "out of memory");
    memset(b->tab.slot, 0xff, slots * sizeof(int));
    b->tab.mask = slots - 1;
    for (int id = 0; id < b->n_vocab; id++) {
        const char *p = kvp_bpe_piece_at(b, id);
        if (b->len[id] == 0 || kvp_bpe_find(b, p, (size_t)b->len[id]) >= 0) continue;
        size_t h = kvp_bpe_hash(p, (size_t)b->len[id]) & b->tab.mask;
        while (b->tab.slot[h] >= 0) h = (h + 1) & b->tab.mask;
        b->tab.slot[h] = id;
    }
    return KVP_OK;
}

static size_t kvp_bpe_merge_slot(const kvp_bpe *b, uint64_t key) {
    size_t h = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & b->merge_mask;
    while (b->merges[h].key != key && b->merges[h].key != UINT64_MAX) h = (h + 1) & b->merge_mask;
    return h;
}

/* The merge of the pair (left, right), or NULL. */
static const kvp_bpe_merge *kvp_bpe_merge_find(const kvp_bpe *b, int left, int right) {
    const kvp_bpe_merge *m = &b->merges[kvp_bpe_merge_slot(b, (uint64_t)left << 32 | (uint32_t)right)];
    return m->key == UINT64_MAX ? NULL : m;
}

/* GPT-2's byte alphabet: printable Latin-1 bytes map to themselves, the other 68 bytes to
 * U+0100 onwards in byte order. */
static void kvp_bpe_build_bytes(kvp_bpe *b) {
    int next = 256;
    memset(b->cp_byte, 0xff, sizeof b->cp_byte);
    for (int c = 0; c < 256; c++) {
        const int printable = (c >= '!' && c <= '~') || (c >= 0xa1 && c <= 0xac) || c >= 0xae;
        b->byte_cp[c] = (uint16_t)(printable ? c : next++);
        b->cp_byte[b->byte_cp[c]] = (int16_t)c;
    }
    for (int c = 0; c < 256; c++) {
        char u[4];
        const utf8proc_ssize_t n = utf8proc_encode_char(b->byte_cp[c], (utf8proc_uint8_t *)u);
        b->byte_id[c] = kvp_bpe_find(b, u, (size_t)n);
    }
}

/* ---------------------------------------------------------------------------------------
 * Loading.
 * ------------------------------------------------------------------------------------- */

void kvp_bpe_free(kvp_bpe *b) {
    if (!b) return;
    free(b->pieces);
    free(b->off);
    free(b->len);
    free(b->type);
    free(b->tab.slot);
    free(b->merges);
    free(b->special);
    free(b);
}

/* Copies the pieces and types (types default to normal). */
static int kvp_bpe_load_pieces(kvp_bpe *b, const kvp_gguf_kv *tokens, const kvp_gguf_kv *types) {
    size_t total = 0;
    const size_t nv = tokens->arr_n; /* == n_vocab, checked by the caller */
    for (size_t i = 0; i < nv; i++) total += tokens->strs[i].len + 1;
    b->pieces = malloc(total);
    b->off = malloc(sizeof(size_t) * nv);
    b->len = malloc(sizeof(int) * nv);
    b->type = malloc(nv);
    if (!b->pieces || !b->off || !b->len || !b->type) return kvp_seterr(KVP_ENOMEM, "out of memory loading the vocabulary");
    size_t at = 0;
    for (int i = 0; i < b->n_vocab; i++) {
        const kvp_gguf_str *s = &tokens->strs[i];
        if (s->len > INT_MAX / 4 || memchr(s->s, 0, s->len))
            return kvp_seterr(KVP_EFORMAT, "piece of token %d is too long or contains a NUL byte", i);
        int32_t ty = KVP_BT_NORMAL;
        if (types) memcpy(&ty, (const char *)types->data + 4 * (size_t)i, 4);
        if (ty < 0 || ty > 6) return kvp_seterr(KVP_EFORMAT, "token %d has type %d (expected 0..6)", i, ty);
        memcpy(b->pieces + at, s->s, s->len);
        b->pieces[at + s->len] = 0;
        b->off[i] = at;
        b->len[i] = (int)s->len;
        b->type[i] = (unsigned char)ty;
        at += s->len + 1;
    }
    return KVP_OK;
}

/* Adds merge "A B" with priority rank; pairs whose parts or result are not tokens can
 * never apply and are skipped. */
static void kvp_bpe_add_merge(kvp_bpe *b, const kvp_gguf_str *s, int rank, char *buf) {
    const char *sp = memchr(s->s, ' ', s->len);
    if (!sp || sp == s->s || (size_t)(sp - s->s) + 1 >= s->len) return;
    const size_t la = (size_t)(sp - s->s), lb = s->len - la - 1;
    const int l = kvp_bpe_find(b, s->s, la), r = kvp_bpe_find(b, sp + 1, lb);
    memcpy(buf, s->s, la);
    memcpy(buf + la, sp + 1, lb);
    const int id = kvp_bpe_find(b, buf, la + lb);
    if (l < 0 || r < 0 || id < 0) return;
    const uint64_t key = (uint64_t)l << 32 | (uint32_t)r;
    kvp_bpe_merge *m = &b->merges[kvp_bpe_merge_slot(b, key)];
    if (m->key == UINT64_MAX) *m = (kvp_bpe_merge){key, rank, id}; /* the first rank wins */
}

static int kvp_bpe_load_merges(kvp_bpe *b, const kvp_gguf *g) {
    const kvp_gguf_kv *mk;
    int rc = kvp_gguf_get_arr(g, "tokenizer.ggml.merges", KVP_GGUF_STRING, &mk);
    if (rc == KVP_ENOTFOUND) return kvp_seterr(KVP_EFORMAT, "a gpt2 vocabulary needs tokenizer.ggml.merges");
    KVP_TRY(rc);
    if (mk->arr_n > (1u << 26)) return kvp_seterr(KVP_EFORMAT, "tokenizer.ggml.merges has too many entries");
    size_t slots = 16, longest = 0;
    while (slots < 2 * (size_t)mk->arr_n) slots *= 2;
    for (uint64_t i = 0; i < mk->arr_n; i++) longest = KVP_MAX(longest, (size_t)mk->strs[i].len);
    b->merges = malloc(slots * sizeof *b->merges);
    char *buf = malloc(longest + 1);
    if (!b->merges || !buf) {
        free(buf);
        return kvp_seterr(KVP_ENOMEM, "out of memory loading %llu merges", (unsigned long long)mk->arr_n);
    }
    memset(b->merges, 0xff, slots * sizeof *b->merges);
    b->merge_mask = slots - 1;
    for (uint64_t i = 0; i < mk->arr_n; i++) kvp_bpe_add_merge(b, &mk->strs[i], (int)i, buf);
    free(buf);
    return KVP_OK;
}

/* A special token for sorting: by first byte, then longest first, then lower id. */
typedef struct kvp_bpe_skey {
    int first, len, id;
} kvp_bpe_skey;

static int kvp_bpe_cmp_special(const void *x, const void *y) {
    const kvp_bpe_skey *a = x, *c = y;
    if (a->first != c->first) return a->first < c->first ? -1 : 1;
    if (a->len != c->len) return a->len > c->len ? -1 : 1;
    return (a->id > c->id) - (a->id < c->id);
}

static int kvp_bpe_is_special(const kvp_bpe *b, int id) {
    return (b->type[id] == KVP_BT_CONTROL || b->type[id] == KVP_BT_USER) && b->len[id] > 0;
}

/* Lists the control and user-defined tokens, grouped by first byte, longest first. */
static int kvp_bpe_build_special(kvp_bpe *b) {
    for (int i = 0; i < b->n_vocab; i++) b->n_special += kvp_bpe_is_special(b, i);
    const size_t n = (size_t)KVP_MAX(b->n_special, 1);
    kvp_bpe_skey *keys = malloc(n * sizeof *keys);
    b->special = malloc(n * sizeof(int));
    if (!keys || !b->special) {
        free(keys);
        return kvp_seterr(KVP_ENOMEM, "out of memory");
    }
    int k = 0;
    for (int i = 0; i < b->n_vocab; i++)
        if (kvp_bpe_is_special(b, i)) keys[k++] = (kvp_bpe_skey){(unsigned char)kvp_bpe_piece_at(b, i)[0], b->len[i], i};
    qsort(keys, (size_t)k, sizeof *keys, kvp_bpe_cmp_special);
    for (int i = 0; i < k; i++) b->special[i] = keys[i].id;
    for (int c = 0, i = 0; c <= 256; c++) {
        while (i < k && keys[i].first < c) i++;
        b->first[c] = c == 256 ? k : i;
    }
    free(keys);
    return KVP_OK;
}

/* Reads tokenizer.ggml.pre; a missing key is "default". */
static int kvp_bpe_read_pre(kvp_bpe *b, const kvp_gguf *g) {
    kvp_gguf_str s = {"default", 7};
    int rc = kvp_gguf_get_str(g, "tokenizer.ggml.pre", &s);
    if (rc < 0 && rc != KVP_ENOTFOUND) return rc;
    for (size_t i = 0; i < KVP_ARRAY_LEN(kvp_bpe_pre_names); i++)
        if (strlen(kvp_bpe_pre_names[i].name) == s.len && !memcmp(kvp_bpe_pre_names[i].name, s.s, s.len)) {
            b->pre = kvp_bpe_pre_names[i].pre;
            b->nfc = b->pre == KVP_PRE_QWEN2;
            b->ignore_merges = b->pre == KVP_PRE_LLAMA3;
            return KVP_OK;
        }
    return kvp_seterr(KVP_EUNSUPPORTED, "pre-tokenizer '%.*s' is not supported (supported: default, gpt2, "
                      "llama-bpe, qwen2, smollm and their aliases)", (int)KVP_MIN(s.len, 40), s.s);
}

/* Special ids and the add_bos / add_eos flags. */
static int kvp_bpe_read_params(kvp_bpe *b, const kvp_gguf *g) {
    b->bos = b->eos = b->eot = -1;
    KVP_TRY(kvp_gguf_tok_id(g, "tokenizer.ggml.bos_token_id", &b->bos));
    KVP_TRY(kvp_gguf_tok_id(g, "tokenizer.ggml.eos_token_id", &b->eos));
    KVP_TRY(kvp_gguf_tok_id(g, "tokenizer.ggml.eot_token_id", &b->eot));
    const int ids[3] = {b->bos, b->eos, b->eot};
    for (int i = 0; i < 3; i++)
        if (ids[i] < -1 || ids[i] >= b->n_vocab)
            return kvp_seterr(KVP_EFORMAT, "special token id %d is out of range (vocabulary of %d)", ids[i], b->n_vocab);
    b->add_bos = b->pre == KVP_PRE_LLAMA3; /* llama.cpp's defaults */
    int rc = kvp_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b->add_bos);
    if (rc < 0 && rc != KVP_ENOTFOUND) return rc;
    rc = kvp_gguf_get_bool(g, "tokenizer.ggml.add_eos_token", &b->add_eos);
    return rc == KVP_ENOTFOUND ? KVP_OK : rc;
}

static int kvp_bpe_build(kvp_bpe *b, const kvp_gguf *g) {
    const kvp_gguf_kv *tokens, *types = NULL;
    int rc = kvp_gguf_get_arr(g, "tokenizer.ggml.tokens", KVP_GGUF_STRING, &tokens);
    if (rc == KVP_ENOTFOUND) return kvp_seterr(KVP_EFORMAT, "the file has no tokenizer.ggml.tokens");
    KVP_TRY(rc);
    if (tokens->arr_n < 1 || tokens->arr_n > (1u << 24))
        return kvp_seterr(KVP_EFORMAT, "tokenizer.ggml.tokens has %llu tokens", (unsigned long long)tokens->arr_n);
    b->n_vocab = (int)tokens->arr_n;
    rc = kvp_gguf_get_arr(g, "tokenizer.ggml.token_type", KVP_GGUF_INT32, &types);
    if (rc == KVP_ENOTFOUND) types = NULL;
    else KVP_TRY(rc);
    if (types && types->arr_n != tokens->arr_n)
        return kvp_seterr(KVP_EFORMAT, "tokenizer.ggml.token_type has %llu elements for %d tokens",
                          (unsigned long long)types->arr_n, b->n_vocab);
    KVP_TRY(kvp_bpe_read_pre(b, g));
    KVP_TRY(kvp_bpe_read_params(b, g));
    KVP_TRY(kvp_bpe_load_pieces(b, tokens, types));
    KVP_TRY(kvp_bpe_build_table(b));
    KVP_TRY(kvp_bpe_load_merges(b, g));
    kvp_bpe_build_bytes(b);
    return kvp_bpe_build_special(b);
}

int kvp_bpe_from_gguf(const kvp_gguf *g, kvp_bpe **out) {
    *out = NULL;
    kvp_bpe *b = calloc(1, sizeof *b);
    if (!b) return kvp_seterr(KVP_ENOMEM, "out of memory");
    int rc = kvp_bpe_build(b, g);
    if (rc < 0) {
        kvp_bpe_free(b);
        return rc;
    }
    *out = b;
    return KVP_OK;
}

/* ---------------------------------------------------------------------------------------
 * Pre-tokenization: characters and their classes.
 * ------------------------------------------------------------------------------------- */

enum { KVP_CL_OTHER = 0, KVP_CL_LETTER = 1, KVP_CL_NUMBER = 2, KVP_CL_SPACE = 3 };

/* A character of the text: code point (a stray byte b is 0x110000 + b), byte offset, class. */
typedef struct kvp_bpe_chr {
    int32_t cp;
    int off;
    int cls;
} kvp_bpe_chr;

static int kvp_bpe_class(int32_t cp) {
    if (cp > 0x10ffff) return KVP_CL_OTHER;
    if ((cp >= 9 && cp <= 13) || cp == 0x85) return KVP_CL_SPACE;
    switch (utf8proc_category(cp)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
    case UTF8PROC_CATEGORY_LM: case UTF8PROC_CATEGORY_LO: return KVP_CL_LETTER;
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_NO: return KVP_CL_NUMBER;
    case UTF8PROC_CATEGORY_ZS: case UTF8PROC_CATEGORY_ZL: case UTF8PROC_CATEGORY_ZP: return KVP_CL_SPACE;
    default: return KVP_CL_OTHER;
    }
}

/* Decodes n bytes into characters (c has room for n + 1; the last is a sentinel at
 * offset n). Returns the number of characters. */
static int kvp_bpe_chars(const char *s, int n, kvp_bpe_chr *c) {
    int k = 0;
    for (int i = 0; i < n; k++) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t len = utf8proc_iterate((const utf8proc_uint8_t *)s + i, n - i, &cp);
        if (len <= 0) {
            cp = 0x110000 + (unsigned char)s[i];
            len = 1;
        }
        c[k] = (kvp_bpe_chr){cp, i, kvp_bpe_class(cp)};
        i += (int)len;
    }
    c[k] = (kvp_bpe_chr){0, n, KVP_CL_OTHER};
    return k;
}

static int kvp_bpe_is_nl(const kvp_bpe_chr *c) { return c->cp == '\r' || c->cp == '\n'; }

/* The end of the run of class cls from i (at most max characters), within [i, n). */
static int kvp_bpe_run(const kvp_bpe_chr *c, int i, int n, int cls, int max) {
    int j = i;
    while (j < n && c[j].cls == cls && j - i < max) j++;
    return j;
}

/* The length (2 or 3) of a contraction 's 't 're 've 'm 'll 'd at i, else 0. With `fold`
 * the letters match in either ASCII case. */
static int kvp_bpe_contraction(const kvp_bpe_chr *c, int i, int n, int fold) {
    static const char *const forms[] = {"s", "t", "re", "ve", "m", "ll", "d"};
    if (c[i].cp != '\'') return 0;
    for (int f = 0; f < 7; f++) {
        int k = 0;
        for (; forms[f][k]; k++) {
            if (i + 1 + k >= n) break;
            int32_t cp = c[i + 1 + k].cp;
            if (fold && cp >= 'A' && cp <= 'Z') cp += 'a' - 'A';
            if (cp != forms[f][k]) break;
        }
        if (!forms[f][k]) return 1 + k;
    }
    return 0;
}

/* Whitespace at i (run [i, e)): `\s+(?!\S)` leaves the last space to the next word unless
 * the run ends the text; a single space followed by a word falls to `\s+`. */
static int kvp_bpe_spaces(const kvp_bpe_chr *c, int i, int n) {
    const int e = kvp_bpe_run(c, i, n, KVP_CL_SPACE, INT_MAX);
    return e == n || e - i < 2 ? e : e - 1;
}

/* Llama 3 / Qwen2: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}|
 * ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+  with D = 3 (Llama 3) or 1 (Qwen2). */
static int kvp_bpe_word_llama3(const kvp_bpe_chr *c, int i, int n, int digits) {
    int k = kvp_bpe_contraction(c, i, n, 1);
    if (k) return i + k;
    if (c[i].cls == KVP_CL_LETTER) return kvp_bpe_run(c, i, n, KVP_CL_LETTER, INT_MAX);
    if (c[i].cls != KVP_CL_NUMBER && !kvp_bpe_is_nl(&c[i]) && i + 1 < n && c[i + 1].cls == KVP_CL_LETTER)
        return kvp_bpe_run(c, i + 1, n, KVP_CL_LETTER, INT_MAX);
    if (c[i].cls == KVP_CL_NUMBER) return kvp_bpe_run(c, i, n, KVP_CL_NUMBER, digits);
    int j = i + (c[i].cp == ' ');
    if (j < n && c[j].cls == KVP_CL_OTHER) {
        j = kvp_bpe_run(c, j, n, KVP_CL_OTHER, INT_MAX);
        while (j < n && kvp_bpe_is_nl(&c[j])) j++;
        return j;
    }
    const int e = kvp_bpe_run(c, i, n, KVP_CL_SPACE, INT_MAX);
    for (int m = e - 1; m >= i; m--) /* \s*[\r\n]+ ends after the run's last newline */
        if (kvp_bpe_is_nl(&c[m])) return m + 1;
    return kvp_bpe_spaces(c, i, n);
}

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static int kvp_bpe_word_gpt2(const kvp_bpe_chr *c, int i, int n) {
    const int k = kvp_bpe_contraction(c, i, n, 0);
    if (k) return i + k;
    const int j = i + (c[i].cp == ' ' && i + 1 < n && c[i + 1].cls != KVP_CL_SPACE);
    if (c[j].cls != KVP_CL_SPACE) return kvp_bpe_run(c, j, n, c[j].cls, INT_MAX);
    return kvp_bpe_spaces(c, i, n);
}

/* The end of the word that starts at character i (the text ends at n). SmolLM isolates
 * every digit first (Hugging Face's Digits pre-tokenizer) and applies GPT-2's rule to the
 * text between digits. */
static int kvp_bpe_word(int pre, const kvp_bpe_chr *c, int i, int n) {
    switch (pre) {
    case KVP_PRE_LLAMA3: return kvp_bpe_word_llama3(c, i, n, 3);
    case KVP_PRE_QWEN2: return kvp_bpe_word_llama3(c, i, n, 1);
    case KVP_PRE_SMOLLM: {
        if (c[i].cls == KVP_CL_NUMBER) return i + 1;
        int e = i;
        while (e < n && c[e].cls != KVP_CL_NUMBER) e++;
        return kvp_bpe_word_gpt2(c, i, e);
    }
    default: return kvp_bpe_word_gpt2(c, i, n);
    }
}

/* ---------------------------------------------------------------------------------------
 * Byte-pair merging of one word.
 * ------------------------------------------------------------------------------------- */

/* A symbol of the word being merged: its token, neighbours (-1 at the ends), 0 once merged away. */
typedef struct kvp_bpe_sym {
    int id, prev, next, alive;
} kvp_bpe_sym;

/* A candidate merge of symbol `left` with its right neighbour. */
typedef struct kvp_bpe_cand {
    int rank, left, lid, rid;
} kvp_bpe_cand;

/* Output and scratch of one encode call. */
typedef struct kvp_bpe_out {
    int *ids, cap, n;
    kvp_bpe_sym *sym;
    kvp_bpe_cand *heap;
    int n_heap;
    char *word;          /* a word in the byte alphabet */
    kvp_bpe_chr *chr;
} kvp_bpe_out;

static void kvp_bpe_emit(kvp_bpe_out *o, int id) {
    if (o->n < o->cap) o->ids[o->n] = id;
    o->n++;
}

static int kvp_bpe_cand_before(const kvp_bpe_cand *a, const kvp_bpe_cand *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void kvp_bpe_push(kvp_bpe_out *o, kvp_bpe_cand c) {
    int i = o->n_heap++;
    while (i > 0 && kvp_bpe_cand_before(&c, &o->heap[(i - 1) / 2])) {
        o->heap[i] = o->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    o->heap[i] = c;
}

static kvp_bpe_cand kvp_bpe_pop(kvp_bpe_out *o) {
    kvp_bpe_cand top = o->heap[0], last = o->heap[--o->n_heap];
    int i = 0;
    for (int c = 1; c < o->n_heap; i = c, c = 2 * c + 1) {
        if (c + 1 < o->n_heap && kvp_bpe_cand_before(&o->heap[c + 1], &o->heap[c])) c++;
        if (!kvp_bpe_cand_before(&o->heap[c], &last)) break;
        o->heap[i] = o->heap[c];
    }
    if (o->n_heap > 0) o->heap[i] = last;
    return top;
}

/* Pushes the merge of symbol l with its right neighbour, when there is one. */
static void kvp_bpe_try(const kvp_bpe *b, kvp_bpe_out *o, int l) {
    if (l < 0 || o->sym[l].next < 0) return;
    const int r = o->sym[l].next;
    const kvp_bpe_merge *m = kvp_bpe_merge_find(b, o->sym[l].id, o->sym[r].id);
    if (m) kvp_bpe_push(o, (kvp_bpe_cand){m->rank, l, o->sym[l].id, o->sym[r].id});
}

/* Merges the n single-byte symbols in o->sym and emits the resulting tokens. A candidate is
 * stale when its left symbol was merged away or either side changed since it was pushed. */
static void kvp_bpe_merge_word(const kvp_bpe *b, kvp_bpe_out *o, int n) {
    o->n_heap = 0;
    for (int i = 0; i + 1 < n; i++) kvp_bpe_try(b, o, i);
    while (o->n_heap > 0) {
        const kvp_bpe_cand c = kvp_bpe_pop(o);
        kvp_bpe_sym *l = &o->sym[c.left];
        if (!l->alive || l->id != c.lid || l->next < 0 || o->sym[l->next].id != c.rid) continue;
        kvp_bpe_sym *r = &o->sym[l->next];
        l->id = kvp_bpe_merge_find(b, c.lid, c.rid)->id;
        r->alive = 0;
        l->next = r->next;
        if (r->next >= 0) o->sym[r->next].prev = c.left;
        kvp_bpe_try(b, o, l->prev);
        kvp_bpe_try(b, o, c.left);
    }
    for (int i = 0; i >= 0; i = o->sym[i].next) kvp_bpe_emit(o, o->sym[i].id);
}

/* Encodes one word (n bytes at s). */
static int kvp_bpe_encode_word(const kvp_bpe *b, kvp_bpe_out *o, const char *s, int n) {
    int wl = 0;
    for (int i = 0; i < n; i++)
        wl += (int)utf8proc_encode_char(b->byte_cp[(unsigned char)s[i]], (utf8proc_uint8_t *)o->word + wl);
    const int whole = b->ignore_merges ? kvp_bpe_find(b, o->word, (size_t)wl) : -1;
    if (whole >= 0) {
        kvp_bpe_emit(o, whole);
        return KVP_OK;
    }
    for (int i = 0; i < n; i++) {
        const int id = b->byte_id[(unsigned char)s[i]];
        if (id < 0) return kvp_seterr(KVP_EUNSUPPORTED, "the vocabulary has no token for byte 0x%02X", (unsigned char)s[i]);
        o->sym[i] = (kvp_bpe_sym){id, i - 1, i + 1 < n ? i + 1 : -1, 1};
    }
    kvp_bpe_merge_word(b, o, n);
    return KVP_OK;
}

/* Pre-tokenizes and encodes n bytes of (normalized) text. */
static int kvp_bpe_encode_text(const kvp_bpe *b, kvp_bpe_out *o, const char *s, int n) {
    const int nc = kvp_bpe_chars(s, n, o->chr);
    for (int i = 0; i < nc;) {
        const int j = kvp_bpe_word(b->pre, o->chr, i, nc);
        KVP_TRY(kvp_bpe_encode_word(b, o, s + o->chr[i].off, o->chr[j].off - o->chr[i].off));
        i = j;
    }
    return KVP_OK;
}

/* Encodes a fragment between special tokens, normalized to NFC when the vocabulary asks
 * for it (text that is not valid UTF-8 is left as it is). */
static int kvp_bpe_encode_fragment(const kvp_bpe *b, kvp_bpe_out *o, const char *s, size_t n) {
    if (!b->nfc) return kvp_bpe_encode_text(b, o, s, (int)n);
    utf8proc_uint8_t *nfc = NULL;
    const utf8proc_ssize_t m = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &nfc,
                                            UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (m < 0 || (size_t)m > KVP_BPE_GROWTH * n) { /* invalid UTF-8: encode the text as it is */
        free(nfc);
        return kvp_bpe_encode_text(b, o, s, (int)n);
    }
    const int rc = kvp_bpe_encode_text(b, o, (const char *)nfc, (int)m);
    free(nfc);
    return rc;
}

/* The special token matching the text at s (n bytes left), longest first, or -1. */
static int kvp_bpe_special_at(const kvp_bpe *b, const char *s, size_t n, int parse_special) {
    const unsigned char c = (unsigned char)s[0];
    for (int k = b->first[c]; k < b->first[c + 1]; k++) {
        const int id = b->special[k];
        if (!parse_special && b->type[id] != KVP_BT_USER) continue;
        if ((size_t)b->len[id] <= n && !memcmp(kvp_bpe_piece_at(b, id), s, (size_t)b->len[id])) return id;
    }
    return -1;
}

static int kvp_bpe_encode_all(const kvp_bpe *b, kvp_bpe_out *o, const char *s, size_t n, int parse_special) {
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        const int id = kvp_bpe_special_at(b, s + i, n - i, parse_special);
        if (id < 0) continue;
        if (i > start) KVP_TRY(kvp_bpe_encode_fragment(b, o, s + start, i - start));
        kvp_bpe_emit(o, id);
        start = i + (size_t)b->len[id];
        i = start - 1;
    }
    return start < n ? kvp_bpe_encode_fragment(b, o, s + start, n - start) : KVP_OK;
}

int kvp_bpe_encode(const kvp_bpe *b, const char *text, size_t len, int add_special, int parse_special,
                   int *ids, int cap, int *n) {
    if (len > (size_t)(INT_MAX / 16)) return kvp_seterr(KVP_EINVAL, "kvp_tokenize: text of %zu bytes is too long", len);
    const size_t room = KVP_BPE_GROWTH * len + 1; /* bytes of a fragment after NFC, at most */
    kvp_bpe_out o = {ids, cap, 0, NULL, NULL, 0, NULL, NULL};
    o.sym = malloc(sizeof *o.sym * room);
    o.heap = malloc(sizeof *o.heap * room);
    o.word = malloc(2 * room);
    o.chr = malloc(sizeof *o.chr * (room + 1));
    int rc = o.sym && o.heap && o.word && o.chr ? KVP_OK : kvp_seterr(KVP_ENOMEM, "out of memory encoding %zu bytes", len);
    if (rc == KVP_OK && add_special && b->add_bos && b->bos >= 0) kvp_bpe_emit(&o, b->bos);
    if (rc == KVP_OK) rc = kvp_bpe_encode_all(b, &o, text, len, parse_special);
    if (rc == KVP_OK && add_special && b->add_eos && b->eos >= 0) kvp_bpe_emit(&o, b->eos);
    free(o.sym);
    free(o.heap);
    free(o.word);
    free(o.chr);
    *n = o.n;
    if (rc == KVP_OK && o.n > cap) rc = kvp_seterr(KVP_ERANGE, "the text needs %d tokens, the buffer holds %d", o.n, cap);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * Decoding and accessors.
 * ------------------------------------------------------------------------------------- */

int kvp_bpe_decode(const kvp_bpe *b, int id, char *buf, size_t cap) {
    const char *p = kvp_bpe_piece_at(b, id);
    const int n = b->len[id], type = b->type[id];
    size_t k = 0;
    if (type == KVP_BT_USER) {
        if ((size_t)n >= cap) return kvp_seterr(KVP_ERANGE, "token %d needs %d bytes with the NUL", id, n + 1);
        memcpy(buf, p, (size_t)n);
        k = (size_t)n;
    } else if (type != KVP_BT_CONTROL && type != KVP_BT_UNKNOWN) {
        for (int i = 0; i < n;) {
            utf8proc_int32_t cp;
            utf8proc_ssize_t l = utf8proc_iterate((const utf8proc_uint8_t *)p + i, n - i, &cp);
            if (l <= 0) { cp = -1; l = 1; }
            const int byte = cp >= 0 && cp < 324 ? b->cp_byte[cp] : -1;
            const size_t w = byte >= 0 ? 1 : (size_t)l; /* characters outside the alphabet stay as they are */
            if (k + w >= cap) return kvp_seterr(KVP_ERANGE, "token %d does not fit in %zu bytes", id, cap);
            if (byte >= 0) buf[k] = (char)byte;
            else memcpy(buf + k, p + i, w);
            k += w;
            i += (int)l;
        }
    }
    if (k >= cap) return kvp_seterr(KVP_ERANGE, "token %d does not fit in %zu bytes", id, cap);
    buf[k] = 0;
    return (int)k;
}

int kvp_bpe_n_vocab(const kvp_bpe *b) { return b->n_vocab; }
int kvp_bpe_bos(const kvp_bpe *b) { return b->bos; }
int kvp_bpe_eos(const kvp_bpe *b) { return b->eos; }
const char *kvp_bpe_piece(const kvp_bpe *b, int id) { return kvp_bpe_piece_at(b, id); }

/* End of generation: EOS, EOT, or a control token whose text ends a turn in a common
 * chat format. */
int kvp_bpe_is_eog(const kvp_bpe *b, int id) {
    static const char *const ends[] = {"<|eot_id|>", "<|im_end|>", "<|end|>", "<|endoftext|>",
                                       "<|end_of_text|>", "<end_of_turn>", "<|eom_id|>"};
    if (id == b->eos || id == b->eot) return 1;
    if (b->type[id] != KVP_BT_CONTROL) return 0;
    for (size_t i = 0; i < KVP_ARRAY_LEN(ends); i++)
        if (!strcmp(kvp_bpe_piece_at(b, id), ends[i])) return 1;
    return 0;
}

#else /* built without utf8proc */

int kvp_bpe_from_gguf(const kvp_gguf *g, kvp_bpe **out) {
    (void)g;
    *out = NULL;
    return kvp_seterr(KVP_EUNSUPPORTED, "byte-level BPE (gpt2) vocabularies need kvpack built with utf8proc "
                      "(install libutf8proc-dev and rebuild)");
}
void kvp_bpe_free(kvp_bpe *b) { (void)b; }
int kvp_bpe_encode(const kvp_bpe *b, const char *text, size_t len, int add_special, int parse_special,
                   int *ids, int cap, int *n) {
    (void)b, (void)text, (void)len, (void)add_special, (void)parse_special, (void)ids, (void)cap;
    *n = 0;
    return kvp_seterr(KVP_EUNSUPPORTED, "built without utf8proc");
}
int kvp_bpe_decode(const kvp_bpe *b, int id, char *buf, size_t cap) {
    (void)b, (void)id, (void)buf, (void)cap;
    return kvp_seterr(KVP_EUNSUPPORTED, "built without utf8proc");
}
int kvp_bpe_n_vocab(const kvp_bpe *b) { (void)b; return 0; }
int kvp_bpe_bos(const kvp_bpe *b) { (void)b; return -1; }
int kvp_bpe_eos(const kvp_bpe *b) { (void)b; return -1; }
const char *kvp_bpe_piece(const kvp_bpe *b, int id) { (void)b, (void)id; return NULL; }
int kvp_bpe_is_eog(const kvp_bpe *b, int id) { (void)b, (void)id; return 0; }

#endif
