/*
 * synth_recall.c: the key-value recall model, built by construction (no training, no file).
 *
 * The model answers the multi-query associative recall task of kvrecall-format.txt: after
 * "? k" it predicts the value that followed key k earlier in the sequence. It is a 2-layer
 * llama (dim 128, 2 query heads sharing 1 KV head of dim 64, FFN 128 with zero weights,
 * vocabulary 324, context 1024, rotary theta 10000 in interleaved pairs, RMSNorm weights 1,
 * untied classifier) whose weights are an induction circuit written down by hand:
 *
 *   residual dims     0: bias 8 (every token)      1: 4 for key tokens   2: 4 for the rest
 *                     3: sqrt(48) for "other" tokens (pad, BOS, EOS, '?', fillers)
 *                  4-19: sqrt(3) x the key's code  20-35: sqrt(3) x the value's code
 *                 36-51: sqrt(3) x the previous token's key code (written by layer 0)
 *                    52: sqrt(3) x 4 when the previous token was not a key (layer 0)
 *                 53-68: sqrt(3) x the retrieved value code (written by layer 1)
 *   layer 0: a previous-token head: from the bias dimension alone, q and k are set per rotary
 *            pair so that the score q.k/8 after rotation peaks one position back (98) and
 *            stays at least 29.96 lower at every other distance up to 1023.
 *   layer 1: a lookup head on head dims 48-63 (the 8 lowest-frequency rotary pairs): the
 *            query is 6.5 x the current key code, the key 6.5 x the previous-token key code,
 *            the value the token's value code. A match scores >= 72.68, a non-match <= 47.90.
 *   classifier: the row of value v is c x its code on dims 53-68, so after the final RMSNorm
 *            the right value gets logit 32 and the nearest wrong one 8.
 *
 * Codes are the 128 codewords of the [16,7,6] extended BCH code as +-1 vectors, so any two
 * differ in at least 6 of 16 coordinates. Each embedding has RMS exactly 1 and each layer
 * adds 48 to the squared norm (16 coordinates of sqrt(3), or one of sqrt(3) x 4), so the
 * RMSNorm in front of layer l divides by sqrt((128 + 48 l) / 128); the weights undo it.
 *
 * ../shared/models/kvrecall-hand.gguf was built the same way; this code reproduces its
 * tensors (tests/test_recall_model.c compares them). Where issue 8's text says "coordinate
 * j at head dim 48 + PERM[j]", that file (and the 47.9 non-match bound) has the inverse:
 * head dim 48 + i carries code coordinate PERM[i]; this code follows the file.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "gguf.h"

enum {
    KVP_RC_DIM = 128, KVP_RC_LAYERS = 2, KVP_RC_HEADS = 2, KVP_RC_KV_HEADS = 1,
    KVP_RC_HEAD_DIM = 64, KVP_RC_FFN = 128, KVP_RC_VOCAB = 324, KVP_RC_CTX = 1024,
    KVP_RC_Q_DIM = KVP_RC_HEADS * KVP_RC_HEAD_DIM,       /* 128 */
    KVP_RC_KV_DIM = KVP_RC_KV_HEADS * KVP_RC_HEAD_DIM,   /* 64 */
    /* Token ids (kvrecall-format.txt section 1). */
    KVP_RC_QUERY = 3, KVP_RC_KEY0 = 4, KVP_RC_VAL0 = 132, KVP_RC_FILL0 = 260,
    KVP_RC_N_CODES = 128, KVP_RC_N_FILL = 64, KVP_RC_CODE_LEN = 16,
    /* Residual dimensions. */
    KVP_RC_D_BIAS = 0, KVP_RC_D_IS_KEY = 1, KVP_RC_D_NOT_KEY = 2, KVP_RC_D_OTHER = 3,
    KVP_RC_D_KEY = 4, KVP_RC_D_VAL = 20, KVP_RC_D_PREV_KEY = 36, KVP_RC_D_PREV_NOT_KEY = 52,
    KVP_RC_D_RECALL = 53,
    /* Layer 0 value dimension that carries "not a key" (after the 16 code dims). */
    KVP_RC_V_NOT_KEY = 16,
    /* First head dimension of the layer-1 lookup (rotary pairs 24..31). */
    KVP_RC_LOOKUP = 48,
    KVP_RC_PAIRS = KVP_RC_HEAD_DIM / 2,
};

_Static_assert(KVP_RC_FILL0 + KVP_RC_N_FILL == KVP_RC_VOCAB, "the fillers end the vocabulary");
_Static_assert(KVP_RC_D_PREV_KEY + KVP_RC_V_NOT_KEY == KVP_RC_D_PREV_NOT_KEY, "layer 0 writes dims 36-52");
_Static_assert(KVP_RC_D_RECALL + KVP_RC_CODE_LEN <= KVP_RC_DIM, "layer 1 writes dims 53-68");

static const double kvp_rc_bias = 8.0;        /* residual dim 0 */
static const double kvp_rc_flag = 4.0;        /* residual dims 1 and 2 */
static const double kvp_rc_l0_amp = 28.0;     /* |q| = |k| per unit of sqrt(w_i) in layer 0 */
static const double kvp_rc_l1_amp = 6.5;      /* layer-1 query and key: 6.5 x code */
static const double kvp_rc_logit = 32.0;      /* the right value's logit */

/* Layer-0 weights per rotary pair: an LP optimum of the worst-case score gap over distances
 * 0..1023 (pairs 20..31 get 0). They sum to 1, so the score one position back is 98. */
static const double kvp_rc_w[KVP_RC_PAIRS] = {
    0.6036, 0.0656, 0.0358, 0.0248, 0.0281, 0.0293, 0.0363, 0.0231, 0.0388, 0.0112,
    0.0155, 0.0085, 0,      0.0226, 0.0268, 0.0003, 0.0086, 0,      0.016,  0.0051};

/* Head dim KVP_RC_LOOKUP + i of layer 1 carries code coordinate kvp_rc_perm[i]. */
static const int kvp_rc_perm[KVP_RC_CODE_LEN] = {2, 11, 14, 5, 12, 4, 1, 0, 8, 10, 13, 6, 7, 9, 3, 15};

/* The codeword of message m (0..127) of the [16,7,6] extended BCH code as +-1 values:
 * c(x) = m(x) g(x) over GF(2) with g = x^8+x^7+x^6+x^4+1 and bit b of m the coefficient of
 * x^b, coefficients c0..c14 in out[0..14], the overall parity in out[15]; bit 0 -> +1. */
static void kvp_rc_code(int m, float out[KVP_RC_CODE_LEN]) {
    const unsigned g = 0x1D1u; /* bits 0, 4, 6, 7, 8 */
    unsigned c = 0, parity = 0;
    for (int b = 0; b < 7; b++)
        if ((m >> b) & 1) c ^= g << b;
    for (int j = 0; j < 15; j++) {
        unsigned bit = (c >> j) & 1u;
        parity ^= bit;
        out[j] = bit ? -1.0f : 1.0f;
    }
    out[15] = parity ? -1.0f : 1.0f;
}

/* The RMS of the residual stream in front of layer l (0, 1) or the classifier (2): each
 * layer adds 48 to the squared norm of 128 (see the header comment). */
static double kvp_rc_rms(int l) {
    return sqrt((KVP_RC_DIM + 48.0 * l) / KVP_RC_DIM);
}

/* ---- the weights, as F32 matrices (rows, cols) stored row after row ---- */

typedef struct kvp_rc_weights {
    float *embd;                       /* (vocab, dim) */
    float *wq[KVP_RC_LAYERS];          /* (q_dim, dim) */
    float *wk[KVP_RC_LAYERS];          /* (kv_dim, dim) */
    float *wv[KVP_RC_LAYERS];          /* (kv_dim, dim) */
    float *wo[KVP_RC_LAYERS];          /* (dim, q_dim) */
    float *ones;                       /* (dim): every RMSNorm weight */
    float *zero_ffn;                   /* (ffn, dim) = (dim, ffn): every FFN matrix */
    float *output;                     /* (vocab, dim) */
} kvp_rc_weights;

static void kvp_rc_free(kvp_rc_weights *w) {
    free(w->embd);
    for (int l = 0; l < KVP_RC_LAYERS; l++) {
        free(w->wq[l]);
        free(w->wk[l]);
        free(w->wv[l]);
        free(w->wo[l]);
    }
    free(w->ones);
    free(w->zero_ffn);
    free(w->output);
}

/* Allocates every matrix zeroed; KVP_ENOMEM when one fails (free with kvp_rc_free). */
static int kvp_rc_alloc(kvp_rc_weights *w) {
    int ok = (w->embd = calloc((size_t)KVP_RC_VOCAB * KVP_RC_DIM, sizeof(float))) != NULL;
    for (int l = 0; l < KVP_RC_LAYERS; l++) {
        ok &= (w->wq[l] = calloc((size_t)KVP_RC_Q_DIM * KVP_RC_DIM, sizeof(float))) != NULL;
        ok &= (w->wk[l] = calloc((size_t)KVP_RC_KV_DIM * KVP_RC_DIM, sizeof(float))) != NULL;
        ok &= (w->wv[l] = calloc((size_t)KVP_RC_KV_DIM * KVP_RC_DIM, sizeof(float))) != NULL;
        ok &= (w->wo[l] = calloc((size_t)KVP_RC_DIM * KVP_RC_Q_DIM, sizeof(float))) != NULL;
    }
    ok &= (w->ones = calloc(KVP_RC_DIM, sizeof(float))) != NULL;
    ok &= (w->zero_ffn = calloc((size_t)KVP_RC_FFN * KVP_RC_DIM, sizeof(float))) != NULL;
    ok &= (w->output = calloc((size_t)KVP_RC_VOCAB * KVP_RC_DIM, sizeof(float))) != NULL;
    if (!ok) return kvp_seterr(KVP_ENOMEM, "out of memory building the recall model");
    for (int i = 0; i < KVP_RC_DIM; i++) w->ones[i] = 1.0f;
    return KVP_OK;
}

/* Token embeddings (vocab, dim), each of RMS 1: 64 + 16 + 48 = 128 squared. */
static void kvp_rc_embeddings(float *e) {
    float code[KVP_RC_CODE_LEN];
    for (int t = 0; t < KVP_RC_VOCAB; t++) {
        float *row = e + (size_t)t * KVP_RC_DIM;
        int is_key = t >= KVP_RC_KEY0 && t < KVP_RC_VAL0, is_val = t >= KVP_RC_VAL0 && t < KVP_RC_FILL0;
        row[KVP_RC_D_BIAS] = (float)kvp_rc_bias;
        row[is_key ? KVP_RC_D_IS_KEY : KVP_RC_D_NOT_KEY] = (float)kvp_rc_flag;
        if (!is_key && !is_val) row[KVP_RC_D_OTHER] = (float)sqrt(48.0);
        if (!is_key && !is_val) continue;
        kvp_rc_code(t - (is_key ? KVP_RC_KEY0 : KVP_RC_VAL0), code);
        for (int j = 0; j < KVP_RC_CODE_LEN; j++)
            row[(is_key ? KVP_RC_D_KEY : KVP_RC_D_VAL) + j] = (float)(sqrt(3.0) * code[j]);
    }
}

/* Layer 0, previous-token head. With x[0] = 8 after the norm, rotary pair i of each query
 * head gets 28 sqrt(w_i) (cos t_i, -sin t_i) and of the key 28 sqrt(w_i) (1, 0), where
 * t_i = 10000^(-2i/64): after rotation the score at distance d is 98 sum_i w_i cos((d-1) t_i),
 * largest at d = 1. Wq (q_dim, dim), Wk (kv_dim, dim). */
static void kvp_rc_layer0_qk(float *wq, float *wk) {
    for (int i = 0; i < KVP_RC_PAIRS; i++) { /* pairs of weight 0 get -0.0 in odd query rows */
        double t = pow(10000.0, -2.0 * i / KVP_RC_HEAD_DIM);
        double a = kvp_rc_l0_amp * sqrt(kvp_rc_w[i]) / kvp_rc_bias;
        for (int h = 0; h < KVP_RC_HEADS; h++) {
            int r = h * KVP_RC_HEAD_DIM + 2 * i;
            wq[(size_t)r * KVP_RC_DIM + KVP_RC_D_BIAS] = (float)(a * cos(t));
            wq[(size_t)(r + 1) * KVP_RC_DIM + KVP_RC_D_BIAS] = (float)(-a * sin(t));
        }
        wk[(size_t)(2 * i) * KVP_RC_DIM + KVP_RC_D_BIAS] = (float)a;
    }
}

/* Layer 0 values (kv_dim, dim): the key code (+-1) in value dims 0..15 for key tokens, and
 * residual dim 2 (4 for every other token) in value dim 16. */
static void kvp_rc_layer0_v(float *wv) {
    for (int j = 0; j < KVP_RC_CODE_LEN; j++)
        wv[(size_t)j * KVP_RC_DIM + KVP_RC_D_KEY + j] = (float)(1.0 / sqrt(3.0));
    wv[(size_t)KVP_RC_V_NOT_KEY * KVP_RC_DIM + KVP_RC_D_NOT_KEY] = 1.0f;
}

/* An output projection Wo (dim, q_dim) that adds sqrt(3) x value dims 0..n-1 into residual
 * dims first..first+n-1: both query heads attend alike, so each contributes half. */
static void kvp_rc_output_proj(float *wo, int first, int n) {
    for (int j = 0; j < n; j++)
        for (int h = 0; h < KVP_RC_HEADS; h++)
            wo[(size_t)(first + j) * KVP_RC_Q_DIM + h * KVP_RC_HEAD_DIM + j] = (float)(sqrt(3.0) / KVP_RC_HEADS);
}

/* Layer 1, lookup head. The norm divides by rms(1), so a weight of 6.5 rms(1) / sqrt(3) turns
 * sqrt(3) x code into 6.5 x code: the query reads the token's own key code, the key the
 * previous token's, both at head dims 48 + i from code coordinate PERM[i]; the value (dims
 * 0..15) is the value code. Wq (q_dim, dim), Wk and Wv (kv_dim, dim). */
static void kvp_rc_layer1_qkv(float *wq, float *wk, float *wv) {
    float a = (float)(kvp_rc_l1_amp * kvp_rc_rms(1) / sqrt(3.0));
    for (int i = 0; i < KVP_RC_CODE_LEN; i++) {
        int hd = KVP_RC_LOOKUP + i, j = kvp_rc_perm[i];
        for (int h = 0; h < KVP_RC_HEADS; h++)
            wq[(size_t)(h * KVP_RC_HEAD_DIM + hd) * KVP_RC_DIM + KVP_RC_D_KEY + j] = a;
        wk[(size_t)hd * KVP_RC_DIM + KVP_RC_D_PREV_KEY + j] = a;
        wv[(size_t)i * KVP_RC_DIM + KVP_RC_D_VAL + i] = (float)(kvp_rc_rms(1) / sqrt(3.0));
    }
}

/* Classifier (vocab, dim): the row of value v is c x code(v) on dims 53-68, with c chosen so
 * that sqrt(3) / rms(2) x c x 16 = 32 (the right value's logit); every other row is 0. */
static void kvp_rc_classifier(float *out) {
    float code[KVP_RC_CODE_LEN];
    double c = kvp_rc_logit / KVP_RC_CODE_LEN * kvp_rc_rms(2) / sqrt(3.0);
    for (int v = 0; v < KVP_RC_N_CODES; v++) {
        kvp_rc_code(v, code);
        for (int j = 0; j < KVP_RC_CODE_LEN; j++)
            out[(size_t)(KVP_RC_VAL0 + v) * KVP_RC_DIM + KVP_RC_D_RECALL + j] = (float)(c * code[j]);
    }
}

static int kvp_rc_build(kvp_rc_weights *w) {
    KVP_TRY(kvp_rc_alloc(w));
    kvp_rc_embeddings(w->embd);
    kvp_rc_layer0_qk(w->wq[0], w->wk[0]);
    kvp_rc_layer0_v(w->wv[0]);
    kvp_rc_output_proj(w->wo[0], KVP_RC_D_PREV_KEY, KVP_RC_CODE_LEN + 1);
    kvp_rc_layer1_qkv(w->wq[1], w->wk[1], w->wv[1]);
    kvp_rc_output_proj(w->wo[1], KVP_RC_D_RECALL, KVP_RC_CODE_LEN);
    kvp_rc_classifier(w->output);
    return KVP_OK;
}

/* ---- GGUF ---- */

/* Piece i of the vocabulary of kvrecall-vocab.txt into buf (unique, no spaces). */
static void kvp_rc_piece(int i, char *buf, size_t cap) {
    static const char *const special[] = {"<pad>", "<s>", "</s>", "?"};
    if (i <= KVP_RC_QUERY) snprintf(buf, cap, "%s", special[i]);
    else if (i < KVP_RC_VAL0) snprintf(buf, cap, "k%d", i - KVP_RC_KEY0);
    else if (i < KVP_RC_FILL0) snprintf(buf, cap, "v%d", i - KVP_RC_VAL0);
    else snprintf(buf, cap, "f%d", i - KVP_RC_FILL0);
}

/* The tokenizer as a SentencePiece `llama` vocabulary: equal scores (pieces merge in text
 * order), <pad> the unknown token, <s> and </s> control tokens, the rest normal; no space
 * prefix, so "?k11" encodes as the two tokens "?" and "k11". */
static int kvp_rc_vocab(kvp_gguf_writer *w) {
    char text[KVP_RC_VOCAB][8];
    const char *pieces[KVP_RC_VOCAB];
    float scores[KVP_RC_VOCAB];
    int32_t types[KVP_RC_VOCAB];
    for (int i = 0; i < KVP_RC_VOCAB; i++) {
        kvp_rc_piece(i, text[i], sizeof text[i]);
        pieces[i] = text[i];
        scores[i] = 0.0f;
        types[i] = i == 0 ? 2 : i < KVP_RC_QUERY ? 3 : 1; /* unknown, control, normal */
    }
    KVP_TRY(kvp_gguf_writer_set_str(w, "tokenizer.ggml.model", "llama"));
    KVP_TRY(kvp_gguf_writer_set_arr(w, "tokenizer.ggml.tokens", KVP_GGUF_STRING, pieces, KVP_RC_VOCAB));
    KVP_TRY(kvp_gguf_writer_set_arr(w, "tokenizer.ggml.scores", KVP_GGUF_FLOAT32, scores, KVP_RC_VOCAB));
    KVP_TRY(kvp_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", KVP_GGUF_INT32, types, KVP_RC_VOCAB));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", 0));
    KVP_TRY(kvp_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", 1));
    KVP_TRY(kvp_gguf_writer_set_bool(w, "tokenizer.ggml.add_eos_token", 0));
    return kvp_gguf_writer_set_bool(w, "tokenizer.ggml.add_space_prefix", 0);
}

static int kvp_rc_hparams(kvp_gguf_writer *w) {
    KVP_TRY(kvp_gguf_writer_set_str(w, "general.architecture", "llama"));
    KVP_TRY(kvp_gguf_writer_set_str(w, "general.name", "kvpack-recall"));
    KVP_TRY(kvp_gguf_writer_set_str(w, "general.description",
                                    "Key-value recall model built by construction by kvpack (an induction circuit, "
                                    "no training): see kvrecall-format.txt for the task."));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "general.file_type", 0)); /* all F32 */
    KVP_TRY(kvp_gguf_writer_set_u32(w, "llama.context_length", KVP_RC_CTX));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "llama.embedding_length", KVP_RC_DIM));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "llama.block_count", KVP_RC_LAYERS));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "llama.feed_forward_length", KVP_RC_FFN));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "llama.attention.head_count", KVP_RC_HEADS));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "llama.attention.head_count_kv", KVP_RC_KV_HEADS));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "llama.rope.dimension_count", KVP_RC_HEAD_DIM));
    KVP_TRY(kvp_gguf_writer_set_f32(w, "llama.rope.freq_base", 10000.0f));
    KVP_TRY(kvp_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f));
    KVP_TRY(kvp_gguf_writer_set_u32(w, "llama.vocab_size", KVP_RC_VOCAB));
    return kvp_rc_vocab(w);
}

/* Adds one F32 tensor of `rows` rows of `cols` values (rows = 1: a vector). */
static int kvp_rc_tensor(kvp_gguf_writer *w, const char *name, const float *data, int cols, int rows) {
    int64_t ne[2] = {cols, rows};
    return kvp_gguf_writer_add_tensor(w, name, KVP_TYPE_F32, rows == 1 ? 1 : 2, ne, data);
}

/* Layer l's tensors, in the order kvrecall-hand.gguf stores them. */
static int kvp_rc_layer_tensors(kvp_gguf_writer *w, const kvp_rc_weights *m, int l) {
    struct { const char *s; const float *d; int cols, rows; } t[9] = {
        {"attn_norm", m->ones, KVP_RC_DIM, 1},          {"attn_q", m->wq[l], KVP_RC_DIM, KVP_RC_Q_DIM},
        {"attn_k", m->wk[l], KVP_RC_DIM, KVP_RC_KV_DIM}, {"attn_v", m->wv[l], KVP_RC_DIM, KVP_RC_KV_DIM},
        {"attn_output", m->wo[l], KVP_RC_Q_DIM, KVP_RC_DIM}, {"ffn_norm", m->ones, KVP_RC_DIM, 1},
        {"ffn_gate", m->zero_ffn, KVP_RC_DIM, KVP_RC_FFN}, {"ffn_down", m->zero_ffn, KVP_RC_FFN, KVP_RC_DIM},
        {"ffn_up", m->zero_ffn, KVP_RC_DIM, KVP_RC_FFN}};
    char name[64];
    for (int i = 0; i < 9; i++) {
        snprintf(name, sizeof name, "blk.%d.%s.weight", l, t[i].s);
        KVP_TRY(kvp_rc_tensor(w, name, t[i].d, t[i].cols, t[i].rows));
    }
    return KVP_OK;
}

static int kvp_rc_tensors(kvp_gguf_writer *w, const kvp_rc_weights *m) {
    KVP_TRY(kvp_rc_tensor(w, "token_embd.weight", m->embd, KVP_RC_DIM, KVP_RC_VOCAB));
    for (int l = 0; l < KVP_RC_LAYERS; l++) KVP_TRY(kvp_rc_layer_tensors(w, m, l));
    KVP_TRY(kvp_rc_tensor(w, "output_norm.weight", m->ones, KVP_RC_DIM, 1));
    return kvp_rc_tensor(w, "output.weight", m->output, KVP_RC_DIM, KVP_RC_VOCAB);
}

/* A GGUF writer holding the whole model (free with kvp_gguf_writer_free). */
static int kvp_rc_writer(kvp_gguf_writer **out) {
    kvp_rc_weights m = {0};
    kvp_gguf_writer *w = NULL;
    int rc = kvp_rc_build(&m);
    if (rc == KVP_OK) rc = kvp_gguf_writer_new(&w);
    if (rc == KVP_OK) rc = kvp_rc_hparams(w);
    if (rc == KVP_OK) rc = kvp_rc_tensors(w, &m);
    kvp_rc_free(&m);
    if (rc < 0) kvp_gguf_writer_free(w);
    *out = rc < 0 ? NULL : w;
    return rc;
}

int kvp_synth_recall_gguf(void **buf, size_t *size) {
    if (!buf || !size) return kvp_seterr(KVP_EINVAL, "kvp_synth_recall_gguf: NULL argument");
    *buf = NULL;
    *size = 0;
    kvp_gguf_writer *w = NULL;
    KVP_TRY(kvp_rc_writer(&w));
    int rc = kvp_gguf_writer_to_buffer(w, buf, size);
    kvp_gguf_writer_free(w);
    return rc;
}

int kvp_synth_recall_write(const char *path) {
    if (!path) return kvp_seterr(KVP_EINVAL, "kvp_synth_recall_write: no path given");
    kvp_gguf_writer *w = NULL;
    KVP_TRY(kvp_rc_writer(&w));
    int rc = kvp_gguf_writer_save(w, path);
    kvp_gguf_writer_free(w);
    return rc;
}

/* ---- llama2.c checkpoint and tokenizer ---- */

/* Writes n floats; KVP_EIO on a short write. */
static int kvp_rc_put(FILE *f, const float *x, size_t n) {
    return fwrite(x, sizeof(float), n, f) == n ? KVP_OK : kvp_seterr(KVP_EIO, "write failed");
}

/* The unused freq_cis_real and freq_cis_imag tables (seq_len, head_dim / 2) of the legacy
 * format, computed in single precision as llama2.c's export script does. */
static int kvp_rc_l2c_freqs(FILE *f) {
    enum { HALF = KVP_RC_HEAD_DIM / 2 };
    float row[HALF];
    for (int part = 0; part < 2; part++)
        for (int p = 0; p < KVP_RC_CTX; p++) {
            for (int i = 0; i < HALF; i++) {
                float freq = (float)(1.0 / (float)pow(10000.0, (double)((float)(2 * i) / KVP_RC_HEAD_DIM)));
                float angle = (float)p * freq;
                row[i] = (float)(part == 0 ? cos((double)angle) : sin((double)angle));
            }
            KVP_TRY(kvp_rc_put(f, row, HALF));
        }
    return KVP_OK;
}

/* One kind of per-layer matrix for every layer: mats[l] holds n floats. */
static int kvp_rc_put_layers(FILE *f, float *const mats[KVP_RC_LAYERS], size_t n) {
    for (int l = 0; l < KVP_RC_LAYERS; l++) KVP_TRY(kvp_rc_put(f, mats[l], n));
    return KVP_OK;
}

/* The legacy v0 checkpoint: header (vocab negative: unshared classifier), then embedding,
 * rms_att, wq, wk, wv, wo, rms_ffn, w1 (gate), w2 (down), w3 (up), rms_final, freq_cis, wcls. */
static int kvp_rc_l2c_model(FILE *f, const kvp_rc_weights *m) {
    const int32_t hdr[7] = {KVP_RC_DIM, KVP_RC_FFN, KVP_RC_LAYERS, KVP_RC_HEADS, KVP_RC_KV_HEADS, -KVP_RC_VOCAB, KVP_RC_CTX};
    float *const norms[KVP_RC_LAYERS] = {m->ones, m->ones}, *const ffn[KVP_RC_LAYERS] = {m->zero_ffn, m->zero_ffn};
    size_t dd = (size_t)KVP_RC_DIM * KVP_RC_DIM, kvd = (size_t)KVP_RC_KV_DIM * KVP_RC_DIM, fd = (size_t)KVP_RC_FFN * KVP_RC_DIM;
    if (fwrite(hdr, sizeof hdr, 1, f) != 1) return kvp_seterr(KVP_EIO, "write failed");
    KVP_TRY(kvp_rc_put(f, m->embd, (size_t)KVP_RC_VOCAB * KVP_RC_DIM));
    KVP_TRY(kvp_rc_put_layers(f, norms, KVP_RC_DIM));
    KVP_TRY(kvp_rc_put_layers(f, m->wq, dd));
    KVP_TRY(kvp_rc_put_layers(f, m->wk, kvd));
    KVP_TRY(kvp_rc_put_layers(f, m->wv, kvd));
    KVP_TRY(kvp_rc_put_layers(f, m->wo, dd));
    KVP_TRY(kvp_rc_put_layers(f, norms, KVP_RC_DIM));
    for (int k = 0; k < 3; k++) KVP_TRY(kvp_rc_put_layers(f, ffn, fd));
    KVP_TRY(kvp_rc_put(f, m->ones, KVP_RC_DIM));
    KVP_TRY(kvp_rc_l2c_freqs(f));
    return kvp_rc_put(f, m->output, (size_t)KVP_RC_VOCAB * KVP_RC_DIM);
}

/* The llama2.c tokenizer file: int32 max_token_length, then per token: float score (0),
 * int32 length, the piece's bytes. */
static int kvp_rc_l2c_tokenizer(FILE *f, const kvp_rc_weights *m) {
    char piece[8];
    int32_t max_len = 0;
    for (int i = 0; i < KVP_RC_VOCAB; i++) {
        kvp_rc_piece(i, piece, sizeof piece);
        max_len = KVP_MAX(max_len, (int32_t)strlen(piece));
    }
    int ok = fwrite(&max_len, sizeof max_len, 1, f) == 1;
    for (int i = 0; ok && i < KVP_RC_VOCAB; i++) {
        const float score = 0.0f;
        kvp_rc_piece(i, piece, sizeof piece);
        int32_t len = (int32_t)strlen(piece);
        ok = fwrite(&score, sizeof score, 1, f) == 1 && fwrite(&len, sizeof len, 1, f) == 1 &&
             fwrite(piece, 1, (size_t)len, f) == (size_t)len;
    }
    (void)m;
    return ok ? KVP_OK : kvp_seterr(KVP_EIO, "write failed");
}

/* Writes PATH.tmp with emit(), then renames it to PATH; errors are prefixed with the path. */
static int kvp_rc_save(const char *path, int (*emit)(FILE *, const kvp_rc_weights *), const kvp_rc_weights *m) {
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return kvp_seterr(KVP_EINVAL, "output path too long: %s", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return kvp_errprefix(kvp_seterr(KVP_EIO, "cannot create %s: %s", tmp, strerror(errno)), path);
    int rc = emit(f, m);
    if (fclose(f) != 0 && rc == KVP_OK) rc = kvp_seterr(KVP_EIO, "close failed");
    if (rc == KVP_OK && rename(tmp, path) != 0) rc = kvp_seterr(KVP_EIO, "cannot rename %s into place", tmp);
    if (rc < 0) remove(tmp);
    return rc < 0 ? kvp_errprefix(rc, path) : KVP_OK;
}

int kvp_synth_recall_write_llama2c(const char *path, const char *tokenizer_path) {
    if (!path || !tokenizer_path)
        return kvp_seterr(KVP_EINVAL, "kvp_synth_recall_write_llama2c: a model and a tokenizer path are needed");
    kvp_rc_weights m = {0};
    int rc = kvp_rc_build(&m);
    if (rc == KVP_OK) rc = kvp_rc_save(path, kvp_rc_l2c_model, &m);
    if (rc == KVP_OK) rc = kvp_rc_save(tokenizer_path, kvp_rc_l2c_tokenizer, &m);
    kvp_rc_free(&m);
    return rc;
}
