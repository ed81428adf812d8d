/*
 * test_arch.c: the architectures beyond Llama 1/2 (Llama 3 rotary frequency factors,
 * qwen2's QKV biases and split-half rotation, qwen3's per-head q/k RMSNorm, tied
 * embeddings), chat templates, and the chat / tokenize commands on such models.
 *
 * Each test writes a tiny random F32 model with the GGUF writer and compares kvpack's
 * logits with an independent double-precision forward pass written here from the
 * architectures' definitions, and (arch_llamacpp_greedy) kvpack's greedy continuations
 * with llama.cpp's on the same files.
 */
#include <unistd.h>

#include "common/common.h"
#include "model/gguf.h"
#include "test.h"

enum { KA_DIM = 32, KA_HEADS = 4, KA_KV = 2, KA_FFN = 48, KA_LAYERS = 2, KA_VOCAB = 259, KA_CTX = 64 };

/* What a tiny model has. */
typedef struct {
    const char *arch;
    int head_dim;         /* qwen3 may have q_dim != dim */
    int bias, qk_norm, rope_freqs, tied, bpe;
    const char *chat_template;
    const char *rope_scaling;
} ka_spec;

/* The weights of a tiny model, F32, as the reference reads them. */
typedef struct {
    ka_spec s;
    float *embd, *out_norm, *output, *freqs;
    float *attn_norm[KA_LAYERS], *ffn_norm[KA_LAYERS], *wq[KA_LAYERS], *wk[KA_LAYERS], *wv[KA_LAYERS];
    float *wo[KA_LAYERS], *gate[KA_LAYERS], *up[KA_LAYERS], *down[KA_LAYERS];
    float *bq[KA_LAYERS], *bk[KA_LAYERS], *bv[KA_LAYERS], *qn[KA_LAYERS], *kn[KA_LAYERS];
} ka_model;

static float *ka_rand(size_t n, float scale, float offset, unsigned long long *seed) {
    float *p = malloc(sizeof(float) * n);
    for (size_t i = 0; p && i < n; i++) p[i] = offset + scale * kvt_randf(seed);
    return p;
}

static void ka_free(ka_model *m) {
    float **all[] = {m->attn_norm, m->ffn_norm, m->wq, m->wk, m->wv, m->wo, m->gate, m->up, m->down,
                     m->bq, m->bk, m->bv, m->qn, m->kn};
    for (size_t a = 0; a < KVP_ARRAY_LEN(all); a++)
        for (int l = 0; l < KA_LAYERS; l++) free(all[a][l]);
    free(m->embd);
    free(m->out_norm);
    free(m->output);
    free(m->freqs);
}

static void ka_make(ka_model *m, const ka_spec *s, unsigned long long seed) {
    memset(m, 0, sizeof *m);
    m->s = *s;
    const size_t qd = (size_t)KA_HEADS * s->head_dim, kvd = (size_t)KA_KV * s->head_dim;
    m->embd = ka_rand((size_t)KA_VOCAB * KA_DIM, 1.0f, 0, &seed);
    m->out_norm = ka_rand(KA_DIM, 0.2f, 1.0f, &seed);
    m->output = s->tied ? NULL : ka_rand((size_t)KA_VOCAB * KA_DIM, 0.3f, 0, &seed);
    m->freqs = s->rope_freqs ? ka_rand((size_t)s->head_dim / 2, 1.5f, 2.0f, &seed) : NULL;
    for (int l = 0; l < KA_LAYERS; l++) {
        m->attn_norm[l] = ka_rand(KA_DIM, 0.2f, 1.0f, &seed);
        m->ffn_norm[l] = ka_rand(KA_DIM, 0.2f, 1.0f, &seed);
        m->wq[l] = ka_rand(qd * KA_DIM, 0.3f, 0, &seed);
        m->wk[l] = ka_rand(kvd * KA_DIM, 0.3f, 0, &seed);
        m->wv[l] = ka_rand(kvd * KA_DIM, 0.3f, 0, &seed);
        m->wo[l] = ka_rand(qd * KA_DIM, 0.3f, 0, &seed);
        m->gate[l] = ka_rand((size_t)KA_FFN * KA_DIM, 0.3f, 0, &seed);
        m->up[l] = ka_rand((size_t)KA_FFN * KA_DIM, 0.3f, 0, &seed);
        m->down[l] = ka_rand((size_t)KA_FFN * KA_DIM, 0.3f, 0, &seed);
        if (s->bias) {
            m->bq[l] = ka_rand(qd, 0.5f, 0, &seed);
            m->bk[l] = ka_rand(kvd, 0.5f, 0, &seed);
            m->bv[l] = ka_rand(kvd, 0.5f, 0, &seed);
        }
        if (s->qk_norm) {
            m->qn[l] = ka_rand((size_t)s->head_dim, 0.3f, 1.0f, &seed);
            m->kn[l] = ka_rand((size_t)s->head_dim, 0.3f, 1.0f, &seed);
        }
    }
}

/* ---------------------------------------------------------------------------------------
 * Writing the GGUF file.
 * ------------------------------------------------------------------------------------- */

static int ka_tensor(kvp_gguf_writer *w, const char *name, const float *d, int64_t cols, int64_t rows) {
    const int64_t ne[2] = {cols, rows};
    return kvp_gguf_writer_add_tensor(w, name, KVP_TYPE_F32, rows > 1 ? 2 : 1, ne, d);
}

static int ka_layer_tensors(kvp_gguf_writer *w, const ka_model *m, int l) {
    const int qd = KA_HEADS * m->s.head_dim, kvd = KA_KV * m->s.head_dim;
    const struct { const char *n; const float *d; int cols, rows; } t[] = {
        {"attn_norm.weight", m->attn_norm[l], KA_DIM, 1}, {"ffn_norm.weight", m->ffn_norm[l], KA_DIM, 1},
        {"attn_q.weight", m->wq[l], KA_DIM, qd}, {"attn_k.weight", m->wk[l], KA_DIM, kvd},
        {"attn_v.weight", m->wv[l], KA_DIM, kvd}, {"attn_output.weight", m->wo[l], qd, KA_DIM},
        {"ffn_gate.weight", m->gate[l], KA_DIM, KA_FFN}, {"ffn_up.weight", m->up[l], KA_DIM, KA_FFN},
        {"ffn_down.weight", m->down[l], KA_FFN, KA_DIM}, {"attn_q.bias", m->bq[l], qd, 1},
        {"attn_k.bias", m->bk[l], kvd, 1}, {"attn_v.bias", m->bv[l], kvd, 1},
        {"attn_q_norm.weight", m->qn[l], m->s.head_dim, 1}, {"attn_k_norm.weight", m->kn[l], m->s.head_dim, 1}};
    for (size_t i = 0; i < KVP_ARRAY_LEN(t); i++) {
        char name[64];
        snprintf(name, sizeof name, "blk.%d.%s", l, t[i].n);
        if (t[i].d) KVP_TRY(ka_tensor(w, name, t[i].d, t[i].cols, t[i].rows));
    }
    return KVP_OK;
}

/* A SentencePiece vocabulary of <unk>, <s>, </s> and 256 byte tokens, or (bpe) a byte-level
 * one of the same size: the 256 byte characters (id = byte), "He" (the one merge, "H e"),
 * and the control tokens <|im_start|> and <|im_end|> (EOS). */
static int ka_vocab(kvp_gguf_writer *w, int bpe) {
    static char pieces[KA_VOCAB][16];
    const char *ptr[KA_VOCAB];
    int32_t types[KA_VOCAB];
    for (int i = 0; i < KA_VOCAB; i++) ptr[i] = pieces[i];
    if (!bpe) {
        strcpy(pieces[0], "<unk>"), strcpy(pieces[1], "<s>"), strcpy(pieces[2], "</s>");
        types[0] = 2, types[1] = types[2] = 3;
        for (int b = 0; b < 256; b++) snprintf(pieces[3 + b], 16, "<0x%02X>", b), types[3 + b] = 6;
        KVP_TRY(kvp_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama"));
    } else {
        int next = 256, k = 0; /* GPT-2's byte alphabet, bytes in order */
        for (int c = 0; c < 256; c++, k++) {
            const int printable = (c >= '!' && c <= '~') || (c >= 0xa1 && c <= 0xac) || c >= 0xae;
            const int cp = printable ? c : next++;
            if (cp < 0x80) pieces[k][0] = (char)cp, pieces[k][1] = 0;
            else pieces[k][0] = (char)(0xc0 | cp >> 6), pieces[k][1] = (char)(0x80 | (cp & 63)), pieces[k][2] = 0;
            types[k] = 1;
        }
        strcpy(pieces[256], "He"), types[256] = 1;
        strcpy(pieces[257], "<|im_start|>"), types[257] = 3;
        strcpy(pieces[258], "<|im_end|>"), types[258] = 3;
        const char *merges[] = {"H e"};
        KVP_TRY(kvp_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2"));
        KVP_TRY(kvp_gguf_writer_set_str(w, "tokenizer.ggml.pre", "qwen2"));
        KVP_TRY(kvp_gguf_writer_set_arr(w, "tokenizer.ggml.merges", KVP_GGUF_STRING, merges, 1));
        KVP_TRY(kvp_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 258));
    }
    KVP_TRY(kvp_gguf_writer_set_arr(w, "tokenizer.ggml.tokens", KVP_GGUF_STRING, ptr, KA_VOCAB));
    return kvp_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", KVP_GGUF_INT32, types, KA_VOCAB);
}

static int ka_meta(kvp_gguf_writer *w, const ka_spec *s) {
    char key[96];
    const struct { const char *k; uint32_t v; } u[] = {
        {"embedding_length", KA_DIM}, {"feed_forward_length", KA_FFN}, {"block_count", KA_LAYERS},
        {"attention.head_count", KA_HEADS}, {"attention.head_count_kv", KA_KV}, {"context_length", KA_CTX},
        {"attention.key_length", (uint32_t)s->head_dim}};
    KVP_TRY(kvp_gguf_writer_set_str(w, "general.architecture", s->arch));
    for (size_t i = 0; i < KVP_ARRAY_LEN(u); i++) {
        snprintf(key, sizeof key, "%s.%s", s->arch, u[i].k);
        KVP_TRY(kvp_gguf_writer_set_u32(w, key, u[i].v));
    }
    snprintf(key, sizeof key, "%s.rope.freq_base", s->arch);
    KVP_TRY(kvp_gguf_writer_set_f32(w, key, 10000.0f));
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", s->arch);
    KVP_TRY(kvp_gguf_writer_set_f32(w, key, 1e-5f));
    snprintf(key, sizeof key, "%s.rope.scaling.type", s->arch);
    if (s->rope_scaling) KVP_TRY(kvp_gguf_writer_set_str(w, key, s->rope_scaling));
    if (s->chat_template) KVP_TRY(kvp_gguf_writer_set_str(w, "tokenizer.chat_template", s->chat_template));
    return KVP_OK;
}

static int ka_write(const ka_model *m, const char *path) {
    kvp_gguf_writer *w = NULL;
    KVP_TRY(kvp_gguf_writer_new(&w));
    int rc = ka_meta(w, &m->s);
    if (rc == 0) rc = ka_vocab(w, m->s.bpe);
    if (rc == 0) rc = ka_tensor(w, "token_embd.weight", m->embd, KA_DIM, KA_VOCAB);
    if (rc == 0) rc = ka_tensor(w, "output_norm.weight", m->out_norm, KA_DIM, 1);
    if (rc == 0 && m->output) rc = ka_tensor(w, "output.weight", m->output, KA_DIM, KA_VOCAB);
    if (rc == 0 && m->freqs) rc = ka_tensor(w, "rope_freqs.weight", m->freqs, m->s.head_dim / 2, 1);
    for (int l = 0; rc == 0 && l < KA_LAYERS; l++) rc = ka_layer_tensors(w, m, l);
    if (rc == 0) rc = kvp_gguf_writer_save(w, path);
    kvp_gguf_writer_free(w);
    return rc;
}

/* ---------------------------------------------------------------------------------------
 * The reference forward pass (double precision, one token at a time).
 * ------------------------------------------------------------------------------------- */

static void ka_rmsnorm(double *o, const double *x, const float *w, int n) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    const double s = 1.0 / sqrt(ss / n + 1e-5);
    for (int i = 0; i < n; i++) o[i] = x[i] * s * w[i];
}

/* y (rows) = W (rows x cols) x + b */
static void ka_matvec(double *y, const float *w, const double *x, int rows, int cols, const float *b) {
    for (int r = 0; r < rows; r++) {
        double s = b ? b[r] : 0;
        for (int c = 0; c < cols; c++) s += (double)w[(size_t)r * cols + c] * x[c];
        y[r] = s;
    }
}

/* Rotates one head in place: adjacent pairs (llama) or split halves (qwen). */
static void ka_rope(double *v, int hd, int pos, int neox, const float *freqs) {
    for (int i = 0; i < hd / 2; i++) {
        double a = pos * pow(10000.0, -2.0 * i / hd);
        if (freqs) a /= freqs[i];
        const int i0 = neox ? i : 2 * i, i1 = neox ? i + hd / 2 : 2 * i + 1;
        const double x0 = v[i0], x1 = v[i1];
        v[i0] = x0 * cos(a) - x1 * sin(a);
        v[i1] = x0 * sin(a) + x1 * cos(a);
    }
}

/* The attention output of one query head over positions 0..pos. */
static void ka_attend(double *out, const double *q, const double *K, const double *V, int pos, int kvd, int hd) {
    double sc[KA_CTX], mx = -1e300, sum = 0;
    for (int t = 0; t <= pos; t++) {
        double d = 0;
        for (int i = 0; i < hd; i++) d += q[i] * K[(size_t)t * kvd + i];
        sc[t] = d / sqrt((double)hd);
        mx = fmax(mx, sc[t]);
    }
    for (int t = 0; t <= pos; t++) sum += sc[t] = exp(sc[t] - mx);
    for (int i = 0; i < hd; i++) {
        double s = 0;
        for (int t = 0; t <= pos; t++) s += sc[t] / sum * V[(size_t)t * kvd + i];
        out[i] = s;
    }
}

/* q, k of one token: biases, per-head norms, rotation; then K/V rows at pos. */
static void ka_qkv(const ka_model *m, int l, const double *xb, int pos, double *q, double *K, double *V) {
    const int hd = m->s.head_dim, kvd = KA_KV * hd, neox = strcmp(m->s.arch, "llama") != 0;
    double *k = K + (size_t)pos * kvd;
    ka_matvec(q, m->wq[l], xb, KA_HEADS * hd, KA_DIM, m->bq[l]);
    ka_matvec(k, m->wk[l], xb, kvd, KA_DIM, m->bk[l]);
    ka_matvec(V + (size_t)pos * kvd, m->wv[l], xb, kvd, KA_DIM, m->bv[l]);
    for (int h = 0; h < KA_HEADS; h++) {
        if (m->qn[l]) ka_rmsnorm(q + h * hd, q + h * hd, m->qn[l], hd);
        ka_rope(q + h * hd, hd, pos, neox, m->freqs);
    }
    for (int h = 0; h < KA_KV; h++) {
        if (m->kn[l]) ka_rmsnorm(k + h * hd, k + h * hd, m->kn[l], hd);
        ka_rope(k + h * hd, hd, pos, neox, m->freqs);
    }
}

static void ka_layer(const ka_model *m, int l, double *x, int pos, double *K, double *V) {
    const int hd = m->s.head_dim, qd = KA_HEADS * hd;
    double xb[KA_DIM], q[KA_HEADS * 64], att[KA_HEADS * 64], o[KA_DIM], g[KA_FFN], u[KA_FFN];
    ka_rmsnorm(xb, x, m->attn_norm[l], KA_DIM);
    ka_qkv(m, l, xb, pos, q, K, V);
    for (int h = 0; h < KA_HEADS; h++)
        ka_attend(att + h * hd, q + h * hd, K + (h / (KA_HEADS / KA_KV)) * hd, V + (h / (KA_HEADS / KA_KV)) * hd, pos,
                  KA_KV * hd, hd);
    ka_matvec(o, m->wo[l], att, KA_DIM, qd, NULL);
    for (int i = 0; i < KA_DIM; i++) x[i] += o[i];
    ka_rmsnorm(xb, x, m->ffn_norm[l], KA_DIM);
    ka_matvec(g, m->gate[l], xb, KA_FFN, KA_DIM, NULL);
    ka_matvec(u, m->up[l], xb, KA_FFN, KA_DIM, NULL);
    for (int i = 0; i < KA_FFN; i++) g[i] = g[i] / (1 + exp(-g[i])) * u[i];
    ka_matvec(o, m->down[l], g, KA_DIM, KA_FFN, NULL);
    for (int i = 0; i < KA_DIM; i++) x[i] += o[i];
}

/* Logits of every position of tokens[0..n) into lg (n x vocab). */
static void ka_reference(const ka_model *m, const int *tokens, int n, double *lg) {
    const size_t kvd = (size_t)KA_KV * m->s.head_dim;
    double *K = calloc((size_t)KA_LAYERS * KA_CTX * kvd, sizeof(double));
    double *V = calloc((size_t)KA_LAYERS * KA_CTX * kvd, sizeof(double));
    for (int p = 0; p < n; p++) {
        double x[KA_DIM], xb[KA_DIM];
        for (int i = 0; i < KA_DIM; i++) x[i] = m->embd[(size_t)tokens[p] * KA_DIM + i];
        for (int l = 0; l < KA_LAYERS; l++)
            ka_layer(m, l, x, p, K + (size_t)l * KA_CTX * kvd, V + (size_t)l * KA_CTX * kvd);
        ka_rmsnorm(xb, x, m->out_norm, KA_DIM);
        ka_matvec(lg + (size_t)p * KA_VOCAB, m->output ? m->output : m->embd, xb, KA_VOCAB, KA_DIM, NULL);
    }
    free(K);
    free(V);
}

/* ---------------------------------------------------------------------------------------
 * Tests.
 * ------------------------------------------------------------------------------------- */

static const char *ka_path(const char *tag) {
    static char path[8][128];
    static int next;
    char *p = path[next++ % 8];
    snprintf(p, 128, "/tmp/kvt_arch_%s_%d.gguf", tag, (int)getpid());
    return p;
}

/* Writes the model of spec s, runs it on a fixed sequence in batches of `batch` and
 * returns the largest difference from the reference's logits (or 1e9 on an error). */
static double ka_compare(const ka_spec *s, int batch) {
    ka_model m;
    ka_make(&m, s, 11);
    const char *path = ka_path(s->arch);
    kvp_model *km = NULL;
    kvp_ctx *c = NULL;
    enum { N = 20 };
    int toks[N];
    for (int i = 0; i < N; i++) toks[i] = (i * 37 + 5) % KA_VOCAB;
    double *ref = malloc(sizeof(double) * N * KA_VOCAB), worst = 1e9;
    float *lg = malloc(sizeof(float) * N * KA_VOCAB);
    kvp_ctx_params p = kvp_ctx_default_params();
    p.kv = "f32";
    p.n_batch = batch;
    if (ka_write(&m, path) == 0 && kvp_model_load(path, NULL, &km) == 0 && kvp_ctx_new(km, &p, &c) == 0 &&
        kvp_ctx_decode(c, toks, N, lg, 1) == 0) {
        ka_reference(&m, toks, N, ref);
        worst = 0;
        for (int i = 0; i < N * KA_VOCAB; i++) worst = fmax(worst, fabs(ref[i] - lg[i]));
    } else {
        kvt_fail(__FILE__, __LINE__, "%s: %s", s->arch, kvp_errmsg());
    }
    kvp_ctx_free(c);
    kvp_model_free(km);
    unlink(path);
    free(ref);
    free(lg);
    ka_free(&m);
    return worst;
}

TEST(arch_llama3_rope_freqs) {
    const ka_spec s = {.arch = "llama", .head_dim = 8, .rope_freqs = 1};
    CHECK(ka_compare(&s, 64) < 1e-3);
    CHECK(ka_compare(&s, 3) < 1e-3);
}

TEST(arch_qwen2_biases_neox_tied) {
    const ka_spec s = {.arch = "qwen2", .head_dim = 8, .bias = 1, .tied = 1};
    CHECK(ka_compare(&s, 64) < 1e-3);
    CHECK(ka_compare(&s, 1) < 1e-3);
}

TEST(arch_qwen3_qk_norm) {
    const ka_spec s = {.arch = "qwen3", .head_dim = 16, .qk_norm = 1}; /* q_dim 64 != dim 32 */
    CHECK(ka_compare(&s, 64) < 1e-3);
    CHECK(ka_compare(&s, 5) < 1e-3);
}

TEST(arch_info_and_errors) {
    ka_model m;
    const ka_spec q2 = {.arch = "qwen2", .head_dim = 8, .bias = 1, .tied = 1};
    ka_make(&m, &q2, 3);
    const char *path = ka_path("err");
    CHECK_OK(ka_write(&m, path));
    kvp_model *km = NULL;
    CHECK_OK(kvp_model_load(path, NULL, &km));
    const kvp_model_info *in = kvp_model_get_info(km);
    CHECK(!strcmp(in->arch, "qwen2") && in->rope_style == KVP_ROPE_NEOX && in->tied_output && in->head_dim == 8);
    kvp_model_free(km);
    free(m.bq[1]); /* qwen2 needs its biases */
    m.bq[1] = NULL;
    CHECK_OK(ka_write(&m, path));
    CHECK(kvp_model_load(path, NULL, &km) == KVP_EFORMAT && strstr(kvp_errmsg(), "blk.1.attn_q.bias"));
    m.s.arch = "gemma2";
    CHECK_OK(ka_write(&m, path));
    CHECK(kvp_model_load(path, NULL, &km) == KVP_EUNSUPPORTED && strstr(kvp_errmsg(), "'gemma2'"));
    m.s.arch = "qwen2";
    m.s.rope_scaling = "yarn";
    m.bq[1] = ka_rand(32, 0.1f, 0, &(unsigned long long){1});
    CHECK_OK(ka_write(&m, path));
    CHECK(kvp_model_load(path, NULL, &km) == KVP_EUNSUPPORTED && strstr(kvp_errmsg(), "yarn"));
    unlink(path);
    ka_free(&m);
}

/* ---------------------------------------------------------------------------------------
 * Chat templates and the chat / tokenize commands.
 * ------------------------------------------------------------------------------------- */

/* Loads a tiny model of spec s (written to a temporary file that is removed at once). */
static kvp_model *ka_load(const ka_spec *s) {
    ka_model m;
    ka_make(&m, s, 5);
    const char *path = ka_path("chat");
    kvp_model *km = NULL;
    if (ka_write(&m, path) != 0 || kvp_model_load(path, NULL, &km) != 0) kvt_fail(__FILE__, __LINE__, "%s", kvp_errmsg());
    unlink(path);
    ka_free(&m);
    return km;
}

TEST(arch_chat_templates) {
    const ka_spec s = {.arch = "llama", .head_dim = 8, .chat_template = "{% for m in messages %}<|im_start|>..."};
    kvp_model *m = ka_load(&s);
    CHECK(m);
    const kvp_chat_msg msgs[] = {{"system", "Be brief."}, {"user", " Hi! "}, {"assistant", "Hello."}, {"user", "Bye"}};
    char buf[1024];
    CHECK(!strcmp(kvp_chat_template_name(m), "chatml"));
    CHECK(kvp_chat_format(m, NULL, msgs, 2, 1, buf, sizeof buf) > 0);
    CHECK(!strcmp(buf, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi! <|im_end|>\n<|im_start|>assistant\n"));
    CHECK(kvp_chat_format(m, "llama3", msgs + 1, 1, 1, buf, sizeof buf) > 0);
    CHECK(!strcmp(buf, "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"));
    CHECK(kvp_chat_format(m, "llama2", msgs, 4, 1, buf, sizeof buf) > 0);
    CHECK(!strcmp(buf, "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi! [/INST] Hello. </s><s>[INST] Bye [/INST]"));
    CHECK(kvp_chat_format(m, "zephyr", msgs + 1, 1, 1, buf, sizeof buf) > 0);
    CHECK(!strcmp(buf, "<|user|>\n Hi! </s>\n<|assistant|>\n"));
    const int need = kvp_chat_format(m, "chatml", msgs, 4, 1, buf, 10); /* snprintf-like */
    CHECK(need > 10 && strlen(buf) == 9);
    CHECK(kvp_chat_format(m, "vicuna", msgs, 1, 1, buf, sizeof buf) == KVP_EUNSUPPORTED);
    kvp_model_free(m);
    /* "</s><s>" in a Llama 2 conversation become EOS and BOS with PARSE_SPECIAL */
    int ids[64], n = 0;
    m = ka_load(&(ka_spec){.arch = "llama", .head_dim = 8});
    CHECK(m && kvp_chat_template_name(m) == NULL);
    CHECK_OK(kvp_tokenize_ex(m, "a</s><s>b", 9, KVP_TOKENIZE_ADD_SPECIAL | KVP_TOKENIZE_PARSE_SPECIAL, ids, 64, &n));
    CHECK(n == 11 && ids[0] == 1 && ids[5] == 2 && ids[6] == 1); /* BOS, "▁a" as 4 bytes, EOS, BOS, "▁b" */
    CHECK_OK(kvp_tokenize(m, "a</s>", 5, 1, ids, 64, &n)); /* kvp_tokenize keeps SentencePiece text plain */
    for (int i = 1; i < n; i++) CHECK(ids[i] != 2);
    kvp_model_free(m);
}

TEST(arch_cli_tokenize_and_chat) {
    ka_model m;
    ka_make(&m, &(ka_spec){.arch = "qwen2", .head_dim = 8, .bias = 1, .bpe = 1,
                           .chat_template = "{{'<|im_start|>' + message['role']}}"}, 9);
    const char *path = ka_path("cli");
    CHECK_OK(ka_write(&m, path));
    ka_free(&m);
    char args[512], out[4096];
    snprintf(args, sizeof args, "tokenize -m %s -p '<|im_start|>He!'", path);
    CHECKF(kvt_cli(args, out, sizeof out) == 0 && !strcmp(out, "257 256 33\n"), "got: %s", out);
    snprintf(args, sizeof args, "tokenize -m %s -p '<|im_start|>He' --no-special --ids", path);
    CHECKF(kvt_cli(args, out, sizeof out) == 0 && !strncmp(out, "60 124 ", 7) && strstr(out, " 256\n"), "got: %s", out);
    snprintf(args, sizeof args, "tokenize -m %s -p 'He' --ids --pieces", path);
    CHECKF(kvt_cli(args, out, sizeof out) == 2, "got: %s", out);
    snprintf(args, sizeof args, "chat -m %s -p Hello -n 5 --temp 0 --show-prompt", path);
    CHECKF(kvt_cli(args, out, sizeof out) == 0 && strstr(out, "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"),
           "got: %s", out);
    snprintf(args, sizeof args, "chat -m %s --template llama9 -p Hello", path);
    CHECKF(kvt_cli(args, out, sizeof out) == 1 && strstr(out, "llama9"), "got: %s", out);
    snprintf(args, sizeof args, "printf 'Hi\\n\\nthere\\n' | %s chat -m %s -n 3 --temp 0 --show-prompt 2>&1",
             kvt_cli_path(), path);
    FILE *p = popen(args, "r");
    CHECK(p);
    size_t got = fread(out, 1, sizeof out - 1, p);
    out[got] = 0;
    CHECKF(pclose(p) == 0 && strstr(out, "<|im_start|>user\nthere<|im_end|>\n<|im_start|>assistant\n"), "got: %s", out);
    unlink(path);
}

/* ---------------------------------------------------------------------------------------
 * Against llama.cpp. tests/golden/arch-llamacpp.tsv holds the greedy continuations that
 * llama.cpp's llama-simple (Feb 2025 source, built beside the project) printed for the
 * models below, as hex bytes. Regenerate: KVT_ARCH_DUMP=DIR build/kvpack-tests
 * arch_llamacpp keeps the model files in DIR; then for each, `llama-simple -m DIR/NAME.gguf
 * -n 24 "Hello world"` (its stdout minus the prompt, hex-encoded).
 * ------------------------------------------------------------------------------------- */

#define KA_PROMPT "A quick fox, 13 dogs."

typedef struct {
    const char *name;
    ka_spec s;
} ka_named;

static const ka_named ka_llamacpp_models[] = {
    {"llama3-rope-freqs", {.arch = "llama", .head_dim = 8, .rope_freqs = 1}},
    {"qwen2-bias-tied-bpe", {.arch = "qwen2", .head_dim = 8, .bias = 1, .tied = 1, .bpe = 1}},
    {"qwen2-bias-bpe", {.arch = "qwen2", .head_dim = 8, .bias = 1, .bpe = 1}},
}; /* qwen3 came to llama.cpp after this build; test_arch's reference covers it */

/* Greedy continuation of `prompt` (n tokens at most, stopping at end of generation), as
 * lowercase hex of its bytes, into hex. */
static int ka_greedy_hex(kvp_model *km, const char *prompt, int n, char *hex, size_t cap) {
    kvp_ctx_params p = kvp_ctx_default_params();
    p.kv = "f32";
    kvp_ctx *c = NULL;
    int ids[64], n_ids = 0, prev = -1, rc;
    const int V = kvp_model_get_info(km)->vocab_size;
    float *lg = malloc(sizeof(float) * V);
    size_t used = 0;
    hex[0] = 0;
    rc = kvp_tokenize_ex(km, prompt, strlen(prompt), KVP_TOKENIZE_ADD_SPECIAL, ids, 64, &n_ids);
    if (rc == 0) rc = kvp_ctx_new(km, &p, &c);
    if (rc == 0) rc = kvp_ctx_decode(c, ids, n_ids, lg, 0);
    for (int i = 0; rc == 0 && i < n; i++) {
        int best = 0;
        for (int v = 1; v < V; v++) best = lg[v] > lg[best] ? v : best;
        if (kvp_token_is_eog(km, best)) break;
        char piece[64];
        const int len = kvp_detokenize(km, prev, best, piece, sizeof piece);
        for (int b = 0; b < len && used + 3 < cap; b++) used += (size_t)snprintf(hex + used, 3, "%02x", (unsigned char)piece[b]);
        prev = best;
        rc = kvp_ctx_decode(c, &best, 1, lg, 0);
    }
    kvp_ctx_free(c);
    free(lg);
    return rc;
}

/* The golden hex of model `name`, or NULL. */
static const char *ka_golden(const char *name, char *line, size_t cap) {
    FILE *f = fopen("tests/golden/arch-llamacpp.tsv", "r");
    const char *found = NULL;
    while (f && !found && fgets(line, (int)cap, f)) {
        char *tab = strchr(line, '\t');
        if (!tab || line[0] == '#') continue;
        *tab = 0;
        tab[strcspn(tab + 1, "\r\n") + 1] = 0;
        if (!strcmp(line, name)) found = tab + 1;
    }
    if (f) fclose(f);
    return found;
}

TEST(arch_llamacpp_greedy) {
    const char *dump = getenv("KVT_ARCH_DUMP");
    for (size_t i = 0; i < KVP_ARRAY_LEN(ka_llamacpp_models); i++) {
        const ka_named *t = &ka_llamacpp_models[i];
        ka_model m;
        ka_make(&m, &t->s, 21);
        for (size_t j = 0; !t->s.tied && j < (size_t)KA_VOCAB * KA_DIM; j++) m.embd[j] *= 3; /* no near-ties */
        char path[256], hex[512], line[1024];
        snprintf(path, sizeof path, "%s/%s.gguf", dump ? dump : "/tmp", t->name);
        if (!dump) snprintf(path, sizeof path, "%s", ka_path(t->name));
        kvp_model *km = NULL;
        CHECK_OK(ka_write(&m, path));
        ka_free(&m);
        CHECK_OK(kvp_model_load(path, NULL, &km));
        if (!dump) unlink(path);
        const int rc = ka_greedy_hex(km, KA_PROMPT, 24, hex, sizeof hex);
        kvp_model_free(km);
        CHECK_OK(rc);
        const char *want = ka_golden(t->name, line, sizeof line);
        CHECKF(want, "%s: no line in tests/golden/arch-llamacpp.tsv", t->name);
        CHECKF(!strcmp(hex, want), "%s: kvpack %s, llama.cpp %s", t->name, hex, want);
    }
}
