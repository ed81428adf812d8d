/*
 * kv_select_args.c: budgets, policy specs ("name:key=value,...") and the sentence-ending
 * tokens of a vocabulary: the text-level inputs of the selection caches.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "common/common.h"
#include "kv/select.h"

/* ---- budgets ---- */

int kvp_budget_parse(const char *s, kvp_budget *b) {
    memset(b, 0, sizeof *b);
    if (!s || !*s) return kvp_seterr(KVP_EINVAL, "a selection policy needs a budget: N tokens or P%%");
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    int pct = end && *end == '%' && end[1] == 0;
    if (end == s || errno || (!pct && *end) || !(v > 0) || (pct && v > 100) ||
        (!pct && (v != floor(v) || v > 1 << 24)))
        return kvp_seterr(KVP_EINVAL, "bad budget '%s': give a token count (e.g. 512) or a percentage (e.g. 25%%)", s);
    if (pct) b->pct = v;
    else b->tokens = (int)v;
    return KVP_OK;
}

int kvp_budget_at(const kvp_budget *b, int n_pos) {
    if (b->tokens > 0) return b->tokens;
    double t = ceil(b->pct * (double)n_pos / 100.0 - 1e-9);
    return t < 1 ? 1 : (int)t;
}

/* ---- policy specs ---- */

void kvp_sel_canon(const char *s, char *out, size_t cap) {
    size_t i = 0;
    for (; s && s[i] && i + 1 < cap; i++) out[i] = s[i] == ',' ? ';' : s[i];
    if (cap) out[i] = 0;
}

/* Copies [s, e) into dst (cap bytes); KVP_EINVAL when it does not fit or is empty. */
static int kvp_sel_copy(char *dst, size_t cap, const char *s, const char *e, const char *spec) {
    size_t len = (size_t)(e - s);
    if (len == 0 || len >= cap) return kvp_seterr(KVP_EINVAL, "bad selection spec '%s'", spec);
    memcpy(dst, s, len);
    dst[len] = 0;
    return KVP_OK;
}

/* Parses one "key=value" item [s, e). */
static int kvp_sel_item(kvp_sel_args *a, const char *s, const char *e, const char *spec) {
    const char *eq = memchr(s, '=', (size_t)(e - s));
    if (!eq) return kvp_seterr(KVP_EINVAL, "bad selection parameter in '%s': expected key=value", spec);
    if (a->n == KVP_SEL_MAX_ARGS) return kvp_seterr(KVP_EINVAL, "too many parameters in '%s'", spec);
    KVP_TRY(kvp_sel_copy(a->key[a->n], sizeof a->key[0], s, eq, spec));
    KVP_TRY(kvp_sel_copy(a->val[a->n], sizeof a->val[0], eq + 1, e, spec));
    a->n++;
    return KVP_OK;
}

int kvp_sel_args_parse(const char *spec, kvp_sel_args *a) {
    memset(a, 0, sizeof *a);
    if (!spec || !*spec) return kvp_seterr(KVP_EINVAL, "empty selection spec");
    const char *colon = strchr(spec, ':');
    const char *end = spec + strlen(spec);
    KVP_TRY(kvp_sel_copy(a->name, sizeof a->name, spec, colon ? colon : end, spec));
    for (const char *s = colon ? colon + 1 : end; s < end;) {
        const char *comma = strpbrk(s, ",;");
        const char *e = comma ? comma : end;
        KVP_TRY(kvp_sel_item(a, s, e, spec));
        s = comma ? comma + 1 : end;
    }
    return KVP_OK;
}

static int kvp_sel_find(kvp_sel_args *a, const char *key) {
    for (int i = 0; i < a->n; i++)
        if (!strcmp(a->key[i], key)) {
            a->used |= 1u << i;
            return i;
        }
    return -1;
}

int kvp_sel_arg_int(kvp_sel_args *a, const char *key, int def, int lo, int hi, int *out) {
    int i = kvp_sel_find(a, key);
    *out = def;
    if (i < 0) return KVP_OK;
    char *end = NULL;
    errno = 0;
    long v = strtol(a->val[i], &end, 10);
    if (end == a->val[i] || *end || errno || v < lo || v > hi)
        return kvp_seterr(KVP_EINVAL, "%s: parameter %s=%s must be an integer in [%d, %d]", a->name, key, a->val[i],
                          lo, hi);
    *out = (int)v;
    return KVP_OK;
}

int kvp_sel_arg_enum(kvp_sel_args *a, const char *key, const char *const *choices, int def, int *out) {
    int i = kvp_sel_find(a, key);
    *out = def;
    if (i < 0) return KVP_OK;
    for (int c = 0; choices[c]; c++)
        if (!strcmp(a->val[i], choices[c])) {
            *out = c;
            return KVP_OK;
        }
    return kvp_seterr(KVP_EINVAL, "%s: parameter %s=%s is not one of the accepted values", a->name, key, a->val[i]);
}

int kvp_sel_args_check(const kvp_sel_args *a) {
    for (int i = 0; i < a->n; i++)
        if (!(a->used & (1u << i)))
            return kvp_seterr(KVP_EINVAL, "%s: unknown parameter '%s' (docs/selection.md lists each policy's)", a->name,
                              a->key[i]);
    return KVP_OK;
}

/* ---- sentence-ending tokens ---- */

int kvp_sentence_end_text(const char *text) {
    if (strchr(text, '\n')) return 1;
    size_t n = strlen(text);
    while (n > 0 && strchr(" \t\r\"')]", text[n - 1])) n--;
    return n > 0 && strchr(".!?", text[n - 1]) != NULL;
}

int kvp_sentence_ends(const kvp_model *m, uint8_t **out) {
    int vocab = kvp_model_get_info(m)->vocab_size;
    uint8_t *t = calloc((size_t)vocab, 1);
    if (!t) return kvp_seterr(KVP_ENOMEM, "out of memory reading the vocabulary's sentence ends");
    char buf[256];
    for (int id = 0; id < vocab; id++)
        if (kvp_detokenize(m, -1, id, buf, sizeof buf) > 0) t[id] = (uint8_t)kvp_sentence_end_text(buf);
    *out = t;
    return KVP_OK;
}
