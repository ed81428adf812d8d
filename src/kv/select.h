/*
 * select.h: token selection and retrieval on top of the KV-cache interface (issue 4).
 * Internal: not part of the public API. docs/selection.md is the long form.
 *
 * Two caches implement kvp_kv_vtbl here:
 *   - the eviction cache (kv_select.c): every (layer, KV head) keeps at most a budget of
 *     tokens in a token store; after every step a policy (StreamingLLM, H2O, SnapKV,
 *     PyramidKV, PrefixKV, KVCrush) picks which stored tokens stay.
 *   - the retrieval cache (kv_select_retr.c): nothing is evicted; tokens are grouped into
 *     blocks (Quest pages, SentenceKV sentences) that move to a cold tier (select_cold.h)
 *     once they leave the recent window, and every query attends over the sinks, the recent
 *     tokens and the best-scoring blocks that fit its budget.
 *
 * Layers, from the bottom:
 *   kvp_rows + kvp_sel_attend   attention of a group of query rows over a list of runs of
 *                               cached rows (F32, F16, 8-bit or KQ), each row with its original
 *                               position; the one attention routine of both caches.
 *   kvp_tstore                  the token store: per (layer, KV head) a dense, position-
 *                               ordered array of slots; append, view as runs, compact, bytes.
 *                               Two stores: F16/F32 rows, and KQ tiles (the KIVI bit widths,
 *                               kv_select_qstore.c), whose runs the packed-tile kernels attend.
 *   kvp_policy                  a policy: what it scores tokens by, how it splits the budget
 *                               over layers, and which slots of a layer it keeps. Pure
 *                               functions over a kvp_sel_view, tested on hand-made inputs.
 *
 * GQA: a KV head is stored once. Scores are pooled over the query heads that share it (the
 * sum of their attention weights, or the maximum of their Quest bounds).
 */
#ifndef KVP_SELECT_H
#define KVP_SELECT_H

#include <stddef.h>
#include <stdint.h>

#include "kv/kv.h"

/* ---------------------------------------------------------------------------------------
 * Budgets: a token count ("512") or a percentage of the positions seen so far ("25%").
 * ------------------------------------------------------------------------------------- */
typedef struct kvp_budget {
    int tokens;   /* > 0 for a fixed count, else 0 */
    double pct;   /* > 0 for a percentage in (0, 100], else 0 */
} kvp_budget;

/* Parses "N" (N >= 1) or "P%" (0 < P <= 100). KVP_EINVAL with a message otherwise. */
int kvp_budget_parse(const char *s, kvp_budget *b);
/* Tokens allowed once n_pos positions have been seen: the count, or ceil(pct * n_pos / 100);
 * never less than 1. */
int kvp_budget_at(const kvp_budget *b, int n_pos);

/* ---------------------------------------------------------------------------------------
 * Policy specs: "name" or "name:key=value,key=value" (at most KVP_SEL_MAX_ARGS pairs).
 * ------------------------------------------------------------------------------------- */
#define KVP_SEL_MAX_ARGS 8
typedef struct kvp_sel_args {
    char name[24];
    int n;
    char key[KVP_SEL_MAX_ARGS][16];
    char val[KVP_SEL_MAX_ARGS][32];
    unsigned used; /* bit i is set once key i has been read */
} kvp_sel_args;

int kvp_sel_args_parse(const char *spec, kvp_sel_args *a); /* pairs separated by ',' or ';' */
/* Copies a spec with every ',' turned into ';' (canonical specs contain no commas, so that
 * they survive comma-separated lists and CSV). */
void kvp_sel_canon(const char *s, char *out, size_t cap);
/* Reads integer `key` into *out (def when absent); KVP_EINVAL when it is not an integer in
 * [lo, hi]. */
int kvp_sel_arg_int(kvp_sel_args *a, const char *key, int def, int lo, int hi, int *out);
/* Reads `key` as one of the words in `choices` (NULL-terminated); *out = its index. */
int kvp_sel_arg_enum(kvp_sel_args *a, const char *key, const char *const *choices, int def, int *out);
/* KVP_EINVAL naming the first key that no policy read (a misspelt parameter). */
int kvp_sel_args_check(const kvp_sel_args *a);

/* ---------------------------------------------------------------------------------------
 * Runs of cached rows and the attention over them.
 * ------------------------------------------------------------------------------------- */
enum { KVP_ROWS_F32 = 0, KVP_ROWS_F16 = 1, KVP_ROWS_Q8 = 2, KVP_ROWS_KQ = 3 };

/* Rows quantized to low-bit codes in the packed tiles of kernels/kvq.h at the KIVI bit
 * widths (docs/selection.md, "Selection on quantized storage"). A run is a list of tiles of
 * KVP_KQ_T lanes, each lane holding one row or empty (dead): keys quantized per channel
 * over the tile's lanes (KIVI's grouping, two-level 8-bit scale and minimum codes, quant.h),
 * values per lane and group of 32 channels (F16 scale and minimum). The run's rows are the
 * live lanes in tile order. */
#define KVP_KQ_T 16
typedef struct kvp_kq_fmt {
    int kbits, vbits, hd, gph;
    size_t ktile, kpar, vtile, vpar; /* bytes of the parts of a tile */
    size_t off_kp, off_vt, off_vp, bytes; /* offsets of the parts in a tile's memory, total */
} kvp_kq_fmt;

typedef struct kvp_kq_tile {
    uint8_t *mem;   /* key tile | key parameters | value tile | value parameters (fmt offsets) */
    uint32_t live;  /* bit t: lane t holds a row */
} kvp_kq_tile;

typedef struct kvp_rows {
    int fmt;               /* KVP_ROWS_* */
    int n;                 /* rows in the run */
    const void *k, *v;     /* (n, hd) keys and values: float, uint16_t (F16) or int8_t;
                            * KQ: k is the run's tiles (kvp_kq_tile), v unused */
    const float *ks, *vs;  /* Q8 only: one scale per row, value = scale * int8 */
    const int *pos;        /* ascending original position of each row, or NULL: pos0 + t */
    int pos0;
    const kvp_kq_fmt *kq;  /* KQ only: the format; k points to n_tiles kvp_kq_tile whose live
                            * lanes are the n rows; or, with n_tiles 0, k is tile memory
                            * (fmt->bytes per tile, every lane live, as the cold tier keeps
                            * blocks) and the rows are lanes [t0, t0 + n) */
    int n_tiles, t0;
} kvp_rows;

typedef struct kvp_attn_io {
    const float *q;  /* (nq, hd) query rows, row stride hd */
    int nq;
    const int *qpos; /* row r is a query at position qpos[r / group] */
    int group;
    float scale;     /* 1 / sqrt(hd) */
    float *s;        /* scratch (nq, lds): on return the attention weights of every row */
    int lds;         /* >= the total rows of the runs */
    float *y;        /* (nq, hd) output */
    float *buf;      /* NULL, or scratch (lds, hd) used when a run is KQ tiles: the runs' keys,
                      * then values, are gathered into it as floats and attended with one
                      * kernel call each; F32, F16 and 8-bit runs are always attended in place */
    void *kscr;      /* without buf, for KQ runs: kvp_sel_kq_scratch(nq, hd) bytes, 64-aligned */
} kvp_attn_io;

/* Bytes of scratch the packed-tile attention of KQ runs needs for nq query rows. */
size_t kvp_sel_kq_scratch(int nq, int hd);
/* KQ tiles: makes tile t (mem of fmt->bytes) from n <= KVP_KQ_T rows k, v (n, hd) in lanes
 * [0, n); reads lane `lane` back as floats. */
void kvp_kq_tile_make(const kvp_kq_fmt *f, kvp_kq_tile *t, const float *k, const float *v, int n);
void kvp_kq_tile_read(const kvp_kq_fmt *f, const kvp_kq_tile *t, int lane, float *k, float *v);
/* Merges the live lanes of tiles a and b (a's first, at most KVP_KQ_T together) into a:
 * values move code for code, keys are re-quantized per channel over the merged rows from
 * the values their codes represent. b is left empty. */
void kvp_kq_tile_merge(const kvp_kq_fmt *f, kvp_kq_tile *a, kvp_kq_tile *b);
/* The pieces of kvp_sel_attend for a KQ run: scores S (nq, lds)
 * of query rows Q (nq, hd); Y (nq, hd) += P (nq, lds) times the values, both through the
 * packed-tile kernels with scratch scr; the keys (val 0) or values as floats, x (n, hd). */
void kvp_kq_run_scores(const kvp_rows *r, const float *Q, int nq, float scale, float *S, int lds, void *scr);
void kvp_kq_run_values(const kvp_rows *r, const float *P, int nq, int lds, float *Y, void *scr);
void kvp_kq_run_floats(const kvp_rows *r, int val, float *x);
/* The format of kXvY rows of head dimension hd (bits in 2, 3, 4, 8). */
void kvp_kq_fmt_init(kvp_kq_fmt *f, int kbits, int vbits, int hd);
/* Parses a storage spec "kXvY[:rR]" (the KIVI spec's bit widths and recent window, R
 * default 128). KVP_EINVAL for anything else (the message names what is accepted). */
int kvp_kq_spec_parse(const char *spec, int *kbits, int *vbits, int *recent);

/* Causal attention of io->nq query rows over the runs, taken in order as one sequence of
 * rows: row t of the sequence is visible to query row r iff its position <= qpos[r/group].
 * Fills io->s with the softmax weights (0 where masked) and io->y with the output. Returns
 * the total number of rows. Runs are attended in place, each with the kernels of its format
 * (8-bit rows through the int8 kernels, never copied as floats), while the runs a few places
 * ahead are prefetched: a retrieval query's runs are short blocks scattered over the cold
 * tier. With io->buf and a KQ run, the runs are gathered as floats instead (the result is
 * the same up to the order of float additions). */
int kvp_sel_attend(const kvp_rows *runs, int n_runs, int hd, const kvp_attn_io *io);

/* 8-bit rows (symmetric, one float scale per row of hd values), the cold tier's format:
 *   scores:  S[j*lds + t] = scale * ks[t] * dot(K[t], Q[j*ldq ..])        j < nq, t < n
 *   values:  Y[j*ldy ..] += sum_t P[j*ldp + t] * vs[t] * V[t]                j < ny      */
void kvp_sel_scores_q8(const int8_t *K, const float *ks, int n, int hd, const float *Q, int nq, int ldq,
                       float scale, float *S, int lds);
void kvp_sel_scores_q8_ref(const int8_t *K, const float *ks, int n, int hd, const float *Q, int nq, int ldq,
                           float scale, float *S, int lds);
void kvp_sel_values_q8(float *Y, int ldy, int ny, const float *P, int ldp, const int8_t *V, const float *vs,
                       int n, int hd);
void kvp_sel_values_q8_ref(float *Y, int ldy, int ny, const float *P, int ldp, const int8_t *V,
                           const float *vs, int n, int hd);
/* x (n, hd) = scale[t] * q (n, hd): the rows as floats (the gathered attention of runs
 * that include KQ tiles). The fast scores and values above do not dequantize: they run the
 * int8 attention kernels (kernels.h) on the rows in place and apply the scales to the
 * scores, and to the weights P, in chunks. */
void kvp_sel_dequant_q8(const int8_t *q, const float *scale, int n, int hd, float *x);
void kvp_sel_dequant_q8_ref(const int8_t *q, const float *scale, int n, int hd, float *x);
void kvp_sel_dequant_q8_avx2(const int8_t *q, const float *scale, int n, int hd, float *x);
/* Quantizes one row of hd values: q[c] = round(x[c] / scale), scale = max|x| / 127 (0 for a
 * zero row, whose q is all zeros). */
void kvp_sel_quant_q8(const float *x, int hd, int8_t *q, float *scale);

/* ---------------------------------------------------------------------------------------
 * The token store: per (layer, KV head) a stream of slots [0, n), ordered by position.
 * ------------------------------------------------------------------------------------- */
typedef struct kvp_tstore kvp_tstore;

typedef struct kvp_tstore_vtbl {
    /* Appends tokens [pos, pos + n) of one layer to every KV head's stream; k, v:
     * (n, n_kv_heads * head_dim). Their aux values start at 0. */
    int (*append)(kvp_tstore *ts, int layer, int pos, int n, const float *k, const float *v);
    /* Describes the stream's slots [0, n) as runs (at most cap); returns how many. */
    int (*rows)(const kvp_tstore *ts, int layer, int h, kvp_rows *out, int cap);
    /* Removes the slots whose keep[slot] is 0, keeping the others in order. */
    void (*compact)(kvp_tstore *ts, int layer, int h, const uint8_t *keep);
    /* Copies one slot's key and value out as floats, (head_dim) each. */
    void (*read)(const kvp_tstore *ts, int layer, int h, int slot, float *k, float *v);
    uint64_t (*bytes)(const kvp_tstore *ts); /* rows, positions and aux of the stored slots */
    void (*reset)(kvp_tstore *ts);
    void (*free)(kvp_tstore *ts);
} kvp_tstore_vtbl;

typedef struct kvp_tstream {
    int n, cap;
    uint8_t *k, *v; /* (cap, head_dim) rows in the store's format */
    int *pos;       /* (cap) original positions, ascending */
    float *aux;     /* (cap, n_aux) per-slot policy values, moved with their slot */
} kvp_tstream;

struct kvp_tstore {
    const kvp_tstore_vtbl *vt;
    int n_layers, n_kv_heads, head_dim, n_aux;
    kvp_tstream *st; /* (n_layers * n_kv_heads) */
};

static inline kvp_tstream *kvp_tstore_stream(const kvp_tstore *ts, int layer, int h) {
    return &ts->st[(size_t)layer * (size_t)ts->n_kv_heads + (size_t)h];
}

/* Grows a stream to hold at least `need` slots (doubling, 64 at least): its K and V rows of
 * row_bytes each, its positions and its n_aux values per slot, keeping the stored slots. Returns
 * KVP_OK, or KVP_ENOMEM with a message and the stream still valid at its old capacity (arrays
 * already grown stay grown). Shared by the token stores. */
int kvp_tstream_grow(kvp_tstream *st, int need, size_t row_bytes, int n_aux);
/* Frees every stream's arrays and the stream table ts->st (which may be NULL), and sets it to
 * NULL; the store itself and its implementation's fields are the caller's to free. */
void kvp_tstore_free_streams(kvp_tstore *ts);

/* A store of F32 or F16 rows (type KVP_TYPE_F32 or KVP_TYPE_F16). */
int kvp_tstore_new(int type, int n_layers, int n_kv_heads, int head_dim, int n_aux, kvp_tstore **out);
/* A store of KQ rows (kXvY) with the `recent` latest positions of every stream in F16
 * (kv_select_qstore.c): its runs are the quantized slots, then the F16 ones. */
int kvp_tstore_kq_new(int kbits, int vbits, int recent, int n_layers, int n_kv_heads, int head_dim,
                      int n_aux, kvp_tstore **out);

/* ---------------------------------------------------------------------------------------
 * Eviction policies.
 * ------------------------------------------------------------------------------------- */
enum { KVP_SCORE_NONE = 0, KVP_SCORE_ACC = 1, KVP_SCORE_WINDOW = 2 };

/* Parameters of every eviction policy; each policy reads the ones it uses. */
typedef struct kvp_sel_cfg {
    int score;   /* KVP_SCORE_*: accumulated attention (H2O) or the last `window` queries (SnapKV) */
    int sinks;   /* first positions that are never evicted */
    int recent;  /* most recent tokens always kept (H2O, StreamingLLM); -1 = half the budget */
    int window;  /* SnapKV observation window: queries scored and tokens always kept */
    int kernel;  /* SnapKV pooling width (odd); 1 = none */
    int beta;    /* PyramidKV: the last layer gets 1/beta of the first's share... */
    int span;    /* ...of a model of `span` layers (default 32); fewer layers keep its fall per layer */
    int share;   /* KVCrush: percent of the budget for representatives */
} kvp_sel_cfg;

/* What a policy sees of the cache when it decides: per stream (layer l, KV head h, index
 * l * n_kv_heads + h) the number of slots, their positions and their scores. */
typedef struct kvp_sel_view {
    int n_layers, n_kv_heads;
    const kvp_sel_cfg *cfg;
    const int *n;               /* (streams) */
    const int *const *pos;      /* (streams)(n) ascending positions */
    const float *const *score;  /* (streams)(n) importance; NULL rows for KVP_SCORE_NONE */
} kvp_sel_view;

typedef struct kvp_policy {
    const char *name;
    /* Reads the policy's parameters from a into cfg (defaults for the absent ones). */
    int (*init)(kvp_sel_cfg *cfg, kvp_sel_args *a);
    /* Splits the budget over layers: per_layer[l] slots per KV head of layer l, with
     * sum_l per_layer[l] <= n_layers * budget. NULL: every layer gets the budget. */
    void (*budgets)(const kvp_sel_view *v, int budget, int *per_layer);
    /* Marks the slots of layer `layer` to keep, keep[h][slot] = 1, at most `budget` per
     * stream (a stream already within budget keeps everything). */
    void (*pick)(const kvp_sel_view *v, int layer, int budget, uint8_t *const *keep);
} kvp_policy;

extern const kvp_policy kvp_policy_streaming, kvp_policy_h2o, kvp_policy_snapkv, kvp_policy_pyramid,
    kvp_policy_prefix, kvp_policy_kvcrush;

/* Helpers the policies share (policy_common.c). */
/* Keeps the `sinks` earliest and `recent` latest slots, then the best-scoring others up to
 * `budget` in all; ties go to the later position. n <= budget keeps everything. */
void kvp_pick_topk(const float *score, const int *pos, int n, int budget, int sinks, int recent, uint8_t *keep);
/* y[i] = max of x over [i - kernel/2, i + kernel/2] clipped to [0, n) (kernel odd). */
void kvp_maxpool1d(const float *x, int n, int kernel, float *y);
/* Slots of `pos` (n ascending) whose position is below `sinks`: the sink count present. */
int kvp_count_sinks(const int *pos, int n, int sinks);

/* SnapKV's choice for one stream: max-pools the scores of the slots before the last `window`
 * (kernel wide), then keeps the sinks, the window and the best pooled others. */
void kvp_snapkv_pick_stream(const float *score, const int *pos, int n, int budget, int sinks, int window,
                            int kernel, uint8_t *keep);
/* PyramidKV's linear schedule: per_layer[l] for a mean of `budget` tokens, `window` of them
 * the observation window in every layer; over `span` layers the last layer's share above
 * the window is 1/beta of the first's (the paper's schedule); a model of fewer layers
 * (n_layers < span) keeps the same fall per layer around the mean (span 0: the model's
 * own first and last layers get the paper's end points, however few layers it has). */
void kvp_pyramid_budgets(int n_layers, int budget, int window, int beta, int span, int *per_layer);
/* KVCrush: the signature of every slot of a layer: bit h = 1 when the slot is in KV head h's
 * top half by score[h] (the first ceil(n/2) by score, ties to the later position; heads past
 * 32 are ignored). pos: the layer's ascending positions. */
void kvp_kvcrush_signatures(const float *const *score, const int *pos, int n_kv_heads, int n, uint32_t *sig);
/* KVCrush: `m` representatives from the candidate slots cand[0..nc): sorted by Hamming
 * distance of their signature to the anchor (the candidates' bitwise majority), then by
 * position, and taken evenly spaced. Marks keep[cand[i]] = 1 for the chosen ones. */
void kvp_kvcrush_represent(const uint32_t *sig, const int *cand, int nc, int m, uint8_t *keep);

/* ---------------------------------------------------------------------------------------
 * Retrieval policies (Quest, SentenceKV): scoring blocks.
 * ------------------------------------------------------------------------------------- */
/* Quest's page box in F16: centre = (hi + lo) / 2 rounded to nearest, radius the smallest F16
 * with [centre - radius, centre + radius] containing [lo, hi] in every channel. */
void kvp_quest_box_f16(const float *lo, const float *hi, int hd, uint16_t *center, uint16_t *radius);
/* Quest's bounds for query rows Q (nq, hd) against blocks whose keys lie in the boxes
 * [center - radius, center + radius] per channel: ub[j * nb + b] = q_j.center[b] +
 * |q_j|.radius[b] >= max over block b's keys of q_j.k. center, radius: (nb, hd) F16; scratch:
 * absq (nq, hd), tmp (nq, nb). Two calls of the attention score kernel, which loads each
 * centre and radius row once for all the query rows. */
void kvp_quest_bounds(const float *Q, int nq, int hd, const uint16_t *center, const uint16_t *radius, int nb,
                      float *absq, float *tmp, float *ub);
/* Picks blocks by descending score (ties: the earlier block) while their lengths fit in
 * `budget` tokens, skipping those that do not fit. Writes the chosen indices, in ascending
 * order, to sel and returns how many. order: scratch (nb). */
int kvp_pick_blocks(const float *score, const int *len, int nb, int budget, int *order, int *sel);
/* 1 when a block of `len` tokens whose last token is `tok` is closed: it holds bmax tokens,
 * or tok ends a sentence (sent_end may be NULL: fixed-size blocks, as Quest's pages). */
int kvp_block_closes(int len, int tok, const uint8_t *sent_end, int vocab, int bmax);
/* SentenceKV's running mean query: adds q (qd) to the sentence's sum and count and writes
 * the mean so far to mean (qd). */
void kvp_sentkv_mean_query(float *sum, int *cnt, const float *q, int qd, float *mean);
/* 1 when the text of a token ends a sentence: its last character other than spaces,
 * quotes and closing brackets is '.', '!' or '?', or it contains a newline. */
int kvp_sentence_end_text(const char *text);

/* ---------------------------------------------------------------------------------------
 * Creating the caches.
 * ------------------------------------------------------------------------------------- */
typedef struct kvp_sel_params {
    const char *kv;        /* storage: "f16" (default) or "f32" */
    const char *select;    /* policy spec, e.g. "snapkv:window=32" */
    const char *budget;    /* "N" or "P%" */
    const char *cold;      /* retrieval policies: "mem" (default), "file:PATH", with ",f16" or ",q8" */
    const uint8_t *sent_end; /* (vocab) 1 for sentence-ending tokens; may be NULL */
    int vocab;
} kvp_sel_params;

/* Creates the eviction or the retrieval cache that the policy names. KVP_EINVAL for an
 * unknown policy, parameter or budget (the message lists the valid ones). */
int kvp_kv_select_new(const kvp_sel_params *p, const kvp_kv_shape *shape, kvp_pool *pool, kvp_kv **out);
int kvp_kv_evict_new(const kvp_sel_params *p, const kvp_policy *pol, kvp_sel_args *a, const kvp_kv_shape *shape,
                     kvp_pool *pool, kvp_kv **out);
int kvp_kv_retr_new(const kvp_sel_params *p, kvp_sel_args *a, const kvp_kv_shape *shape, kvp_pool *pool,
                    kvp_kv **out);
/* For contexts: the sentence-ending table of a model's vocabulary (malloc'ed, vocab bytes). */
int kvp_sentence_ends(const kvp_model *m, uint8_t **out);
/* For kvp_ctx_new: the cache a context's parameters ask for: a policy when p->select is
 * set, or when p->kv is a composite spec "KV+POLICY[:params]@BUDGET[@COLD]" (the canonical
 * form the selection caches report, e.g. "f16+snapkv:window=32@50%"), else kvp_kv_new. */
int kvp_kv_for_ctx(const kvp_model *m, const kvp_ctx_params *p, const kvp_kv_shape *shape, kvp_pool *pool,
                   kvp_kv **out);

/* What tests and eval read back from a selection cache after a step. */
typedef struct kvp_sel_info {
    int budget;        /* the budget after the last step (tokens per stream, or per query) */
    int max_stored;    /* eviction: the largest stream (slots) after the last end() */
    int max_attended;  /* rows the largest query attended to during the last step */
    int total_stored;  /* eviction: slots in all streams after the last end() */
    int hot_tokens;    /* retrieval: tokens whose rows are in the hot tier (sinks counted once) */
    int cold_blocks;   /* retrieval: blocks in the cold tier (per layer) */
    int n_blocks;      /* retrieval: blocks (pages or sentences) so far */
} kvp_sel_info;
/* KVP_EINVAL when kv is not a selection cache. */
int kvp_kv_select_info(const kvp_kv *kv, kvp_sel_info *info);
int kvp_kv_retr_info(const kvp_kv *kv, kvp_sel_info *info); /* the retrieval cache's part */
/* The eviction cache's stored positions of stream (layer, h), ascending, at most cap of
 * them; returns how many are stored. KVP_EINVAL for another cache. */
int kvp_kv_select_positions(const kvp_kv *kv, int layer, int h, int *pos, int cap);

/* The largest head dimension the selection caches accept. */
#define KVP_SEL_MAX_HD 1024

#endif
