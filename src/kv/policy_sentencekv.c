/*
 * policy_sentencekv.c: SentenceKV (Zhu et al., 2025): sentence-level retrieval.
 *
 * Tokens are grouped into sentences as they arrive: a sentence closes after a token the
 * vocabulary marks as sentence-ending (kvp_sentence_ends: '.', '!', '?' or a newline), or
 * once it holds `max` tokens (default 32; also the only rule for a vocabulary without such
 * tokens). Each closed sentence keeps one semantic vector per KV head in fast memory, the
 * mean of its keys, while its keys and values go to the cold tier. A query is represented
 * by the mean of the queries of its own sentence so far (itself included); sentences are
 * ranked by the dot product of that mean query with their semantic vectors, summed over the
 * query heads of the group, and attended in rank order while they fit the budget, together
 * with the sink tokens and the recent ones.
 */
#include "common/common.h"
#include "kv/select.h"

int kvp_block_closes(int len, int tok, const uint8_t *sent_end, int vocab, int bmax) {
    if (len >= bmax) return 1;
    return sent_end && tok >= 0 && tok < vocab && sent_end[tok];
}

void kvp_sentkv_mean_query(float *sum, int *cnt, const float *q, int qd, float *mean) {
    for (int c = 0; c < qd; c++) sum[c] += q[c];
    (*cnt)++;
    float inv = 1.0f / (float)*cnt;
    for (int c = 0; c < qd; c++) mean[c] = sum[c] * inv;
}
