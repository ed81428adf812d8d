/*
 * serve_api.c: the OpenAI-style JSON of `kvpack serve`, with cJSON: parsing and checking
 * completion and chat requests (every field's type and range; a wrong one is a 400 naming
 * it), tokenizing their prompts, and writing responses, stream events and errors.
 */
#ifdef KVP_HAVE_SERVE
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "serve.h"

int serve_fail(serve_error *e, int status, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    e->status = status;
    e->param = param;
    e->type = status == 503 ? "unavailable_error" : status >= 500 ? "server_error"
              : status == 404 ? "not_found_error" : "invalid_request_error";
    return -1;
}

/* ---- typed fields ---- */

/* An integer field in [lo, hi]; absent or null leaves *out. */
static int api_int(const cJSON *o, const char *name, long long lo, long long hi, long long *out, serve_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) return 0;
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d == floor(d)) || d < (double)lo || d > (double)hi)
        return serve_fail(e, 400, name, "'%s' must be an integer in %lld..%lld", name, lo, hi);
    *out = (long long)d;
    return 0;
}

static int api_num(const cJSON *o, const char *name, double lo, double hi, float *out, serve_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi))
        return serve_fail(e, 400, name, "'%s' must be a number in %g..%g", name, lo, hi);
    *out = (float)v->valuedouble;
    return 0;
}

static int api_bool(const cJSON *o, const char *name, int *out, serve_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsBool(v)) return serve_fail(e, 400, name, "'%s' must be true or false", name);
    *out = cJSON_IsTrue(v);
    return 0;
}

/* A string field copied into *out (malloc'ed); absent or null leaves it NULL. */
static int api_str(const cJSON *o, const char *name, char **out, serve_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v)) return serve_fail(e, 400, name, "'%s' must be a string", name);
    if (!(*out = strdup(v->valuestring))) return serve_fail(e, 503, name, "out of memory");
    return 0;
}

/* Fields kvpack does not implement are accepted only at their neutral value. */
static int api_neutral(const cJSON *o, serve_error *e) {
    static const char *const zero[] = {"presence_penalty", "frequency_penalty"};
    for (size_t i = 0; i < sizeof zero / sizeof zero[0]; i++) {
        float v = 0;
        if (api_num(o, zero[i], -2, 2, &v, e)) return -1;
        if (v != 0) return serve_fail(e, 400, zero[i], "'%s' is not supported (only 0)", zero[i]);
    }
    long long n = 1;
    if (api_int(o, "n", 1, 1, &n, e)) return serve_fail(e, 400, "n", "'n' must be 1 (one choice per request)");
    int echo = 0;
    if (api_bool(o, "echo", &echo, e)) return -1;
    if (echo) return serve_fail(e, 400, "echo", "'echo' is not supported");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(o, "model");
    if (model && !cJSON_IsNull(model) && !cJSON_IsString(model)) return serve_fail(e, 400, "model", "'model' must be a string");
    return 0;
}

/* ---- stop strings ---- */

static int api_stop_add(serve_request *r, const cJSON *v, serve_error *e) {
    if (!cJSON_IsString(v) || !v->valuestring[0])
        return serve_fail(e, 400, "stop", "'stop' must be a non-empty string or an array of them");
    if (r->req.n_stop == KVP_SRV_MAX_STOP) return serve_fail(e, 400, "stop", "'stop' has more than %d strings", KVP_SRV_MAX_STOP);
    if (!(r->stop[r->req.n_stop] = strdup(v->valuestring))) return serve_fail(e, 503, "stop", "out of memory");
    r->req.n_stop++;
    return 0;
}

static int api_stop(const cJSON *o, serve_request *r, serve_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "stop"), *it;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsArray(v)) return api_stop_add(r, v, e);
    cJSON_ArrayForEach(it, v) if (api_stop_add(r, it, e)) return -1;
    r->req.stop = (const char *const *)r->stop;
    return 0;
}

/* ---- sampling, logprobs, kvpack's own fields ---- */

static uint64_t api_random_seed(void) {
    static unsigned counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_nsec * 2654435761u ^ (uint64_t)ts.tv_sec ^ (uint64_t)__atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED) << 32;
}

static int api_sampling(const cJSON *o, serve_request *r, serve_error *e) {
    kvp_sampler_params *sp = &r->req.sampling;
    *sp = (kvp_sampler_params){1.0f, 0, 1.0f, api_random_seed()};
    long long top_k = 0, seed = -1, max = r->chat ? -1 : 16;
    if (api_num(o, "temperature", 0, 100, &sp->temp, e) || api_num(o, "top_p", 0, 1, &sp->top_p, e) ||
        api_int(o, "top_k", 0, 1 << 30, &top_k, e) || api_int(o, "seed", -(1LL << 53), 1LL << 53, &seed, e) ||
        api_int(o, "max_tokens", 0, 1 << 30, &max, e) || (r->chat && api_int(o, "max_completion_tokens", 0, 1 << 30, &max, e)))
        return -1;
    if (!(sp->top_p > 0)) return serve_fail(e, 400, "top_p", "'top_p' must be greater than 0");
    sp->top_k = (int)top_k;
    const cJSON *given = cJSON_GetObjectItemCaseSensitive(o, "seed");
    if (given && !cJSON_IsNull(given)) sp->seed = (uint64_t)seed;
    r->req.max_tokens = max < 0 ? 1 << 30 : (int)max;
    return 0;
}

static int api_logprobs(const cJSON *o, serve_request *r, serve_error *e) {
    long long n = -1;
    r->req.n_probs = -1;
    if (r->chat) {
        int on = 0;
        if (api_bool(o, "logprobs", &on, e) || api_int(o, "top_logprobs", 0, KVP_SRV_MAX_PROBS, &n, e)) return -1;
        if (n >= 0 && !on) return serve_fail(e, 400, "top_logprobs", "'top_logprobs' needs 'logprobs': true");
        r->logprobs = on;
        r->req.n_probs = on ? (int)(n < 0 ? 0 : n) : -1;
        return 0;
    }
    if (api_int(o, "logprobs", 0, KVP_SRV_MAX_PROBS, &n, e) || api_int(o, "n_probs", 0, KVP_SRV_MAX_PROBS, &n, e)) return -1;
    r->logprobs = n >= 0;
    r->req.n_probs = (int)n;
    return 0;
}

/* The "kvpack" object: per-request cache spec and selection policy, prefix reuse. */
static int api_kvpack(const cJSON *o, serve_request *r, serve_error *e) {
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(o, "kvpack");
    if (!k || cJSON_IsNull(k)) return 0;
    if (!cJSON_IsObject(k)) return serve_fail(e, 400, "kvpack", "'kvpack' must be an object");
    int cache = 1;
    if (api_str(k, "kv", &r->kv, e) || api_str(k, "select", &r->select, e) || api_str(k, "budget", &r->budget, e) ||
        api_bool(k, "cache", &cache, e) || api_bool(k, "ignore_eos", &r->req.ignore_eos, e))
        return -1;
    r->req.kv = r->kv;
    r->req.select = r->select;
    r->req.budget = r->budget;
    r->req.no_reuse = !cache;
    return 0;
}

static int api_stream(const cJSON *o, serve_request *r, serve_error *e) {
    if (api_bool(o, "stream", &r->stream, e)) return -1;
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(o, "stream_options");
    if (!so || cJSON_IsNull(so)) return 0;
    if (!cJSON_IsObject(so)) return serve_fail(e, 400, "stream_options", "'stream_options' must be an object");
    return api_bool(so, "include_usage", &r->include_usage, e);
}

/* ---- prompts ---- */

/* Tokenizes text: a chat text with kvp_tokenize_ex(ADD_SPECIAL | PARSE_SPECIAL) as `kvpack
 * chat` does, a completion prompt with kvp_tokenize(add_bos) as `kvpack run` does. */
static int api_tokenize(serve_app *a, const char *text, int chat, serve_request *r, serve_error *e) {
    size_t len = strlen(text);
    int cap = len + 16 < (1u << 26) ? (int)len + 16 : 1 << 26, n = 0;
    if (!(r->tokens = malloc(sizeof(int) * (size_t)cap))) return serve_fail(e, 503, "prompt", "out of memory");
    int rc = chat ? kvp_tokenize_ex(a->m, text, len, KVP_TOKENIZE_ADD_SPECIAL | KVP_TOKENIZE_PARSE_SPECIAL, r->tokens, cap, &n)
                  : kvp_tokenize(a->m, text, len, 1, r->tokens, cap, &n);
    if (rc < 0) return serve_fail(e, 400, chat ? "messages" : "prompt", "cannot tokenize the prompt: %s", kvp_errmsg());
    r->req.tokens = r->tokens;
    r->req.n_tokens = n;
    return 0;
}

/* A prompt given as token ids (no BOS is added). */
static int api_token_ids(serve_app *a, const cJSON *v, serve_request *r, serve_error *e) {
    int n = cJSON_GetArraySize(v), V = kvp_model_get_info(a->m)->vocab_size, i = 0;
    if (!(r->tokens = malloc(sizeof(int) * (size_t)(n ? n : 1)))) return serve_fail(e, 503, "prompt", "out of memory");
    const cJSON *it;
    cJSON_ArrayForEach(it, v) {
        if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) || it->valuedouble < 0 || it->valuedouble >= V)
            return serve_fail(e, 400, "prompt", "'prompt' token %d is not a token id (0..%d)", i, V - 1);
        r->tokens[i++] = (int)it->valuedouble;
    }
    r->req.tokens = r->tokens;
    r->req.n_tokens = n;
    return 0;
}

/* "prompt": a string (tokenized with BOS, as `kvpack run` does), an array of token ids, or
 * an array of one string. */
static int api_prompt(serve_app *a, const cJSON *o, serve_request *r, serve_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "prompt");
    if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 1 && cJSON_IsString(cJSON_GetArrayItem(v, 0)))
        v = cJSON_GetArrayItem(v, 0);
    if (cJSON_IsString(v)) {
        if (api_tokenize(a, v->valuestring, 0, r, e)) return -1;
    } else if (cJSON_IsArray(v) && cJSON_GetArraySize(v) > 0 && !cJSON_IsString(cJSON_GetArrayItem(v, 0))) {
        if (api_token_ids(a, v, r, e)) return -1;
    } else {
        return serve_fail(e, 400, "prompt", "'prompt' must be a string, an array of token ids or an array of one string");
    }
    return r->req.n_tokens > 0 ? 0 : serve_fail(e, 400, "prompt", "the prompt is empty");
}

/* A message's content: a string, or an array of {"type":"text","text":...} parts (joined). */
static char *api_content(const cJSON *c, int i, serve_error *e) {
    if (cJSON_IsString(c)) return strdup(c->valuestring);
    if (cJSON_IsNull(c) || !c) return strdup("");
    if (!cJSON_IsArray(c)) return serve_fail(e, 400, "messages", "messages[%d].content must be a string or an array of text parts", i), NULL;
    size_t len = 0;
    const cJSON *p;
    cJSON_ArrayForEach(p, c) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "text");
        if (!cJSON_IsString(t)) return serve_fail(e, 400, "messages", "messages[%d].content has a part that is not text", i), NULL;
        len += strlen(t->valuestring);
    }
    char *out = malloc(len + 1), *w = out;
    if (!out) return serve_fail(e, 503, "messages", "out of memory"), NULL;
    cJSON_ArrayForEach(p, c) w = stpcpy(w, cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring);
    *w = 0;
    return out;
}

static int api_role_ok(const char *role) {
    return !strcmp(role, "system") || !strcmp(role, "user") || !strcmp(role, "assistant") || !strcmp(role, "developer");
}

static int api_message(const cJSON *m, int i, kvp_chat_msg *out, serve_error *e) {
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
    if (!cJSON_IsObject(m) || !cJSON_IsString(role) || !api_role_ok(role->valuestring))
        return serve_fail(e, 400, "messages", "messages[%d] must be an object with a role (system, user, assistant) and content", i);
    char *content = api_content(cJSON_GetObjectItemCaseSensitive(m, "content"), i, e);
    if (!content) return e->status ? -1 : serve_fail(e, 503, "messages", "out of memory");
    out->role = !strcmp(role->valuestring, "developer") ? "system" : role->valuestring;
    out->content = content;
    return 0;
}

/* Writes the conversation in the chat template and tokenizes it as `kvpack chat` does. */
static int api_chat_prompt(serve_app *a, const kvp_chat_msg *msgs, int n, serve_request *r, serve_error *e) {
    int need = kvp_chat_format(a->m, a->cfg.tmpl, msgs, n, 1, NULL, 0);
    if (need < 0)
        return serve_fail(e, 400, "messages", "the model has no chat template kvpack recognizes (start the server with "
                          "--template llama3|chatml|llama2|zephyr): %s", kvp_errmsg());
    char *text = malloc((size_t)need + 1);
    if (!text) return serve_fail(e, 503, "messages", "out of memory");
    kvp_chat_format(a->m, a->cfg.tmpl, msgs, n, 1, text, (size_t)need + 1);
    int rc = api_tokenize(a, text, 1, r, e);
    free(text);
    return rc;
}

static int api_messages(serve_app *a, const cJSON *o, serve_request *r, serve_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "messages"), *it;
    int n = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : 0, k = 0, rc = 0;
    if (n == 0) return serve_fail(e, 400, "messages", "'messages' must be a non-empty array of messages");
    kvp_chat_msg *msgs = calloc((size_t)n, sizeof *msgs);
    if (!msgs) return serve_fail(e, 503, "messages", "out of memory");
    cJSON_ArrayForEach(it, v) {
        if ((rc = api_message(it, k, &msgs[k], e))) break;
        k++;
    }
    if (!rc) rc = api_chat_prompt(a, msgs, n, r, e);
    for (int i = 0; i < k; i++) free((char *)msgs[i].content);
    free(msgs);
    return rc;
}

/* ---- a whole request ---- */

static void api_new_id(serve_request *r) {
    static unsigned long counter;
    unsigned long c = __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
    r->created = time(NULL);
    snprintf(r->id, sizeof r->id, "%s-%08lx%08lx", r->chat ? "chatcmpl" : "cmpl", (unsigned long)r->created & 0xffffffffUL,
             c & 0xffffffffUL);
}

static int api_fields(serve_app *a, const cJSON *o, serve_request *r, serve_error *e) {
    if (!cJSON_IsObject(o)) return serve_fail(e, 400, NULL, "the request body must be a JSON object");
    if (api_neutral(o, e) || api_sampling(o, r, e) || api_logprobs(o, r, e) || api_stop(o, r, e) ||
        api_kvpack(o, r, e) || api_stream(o, r, e))
        return -1;
    if (r->chat ? api_messages(a, o, r, e) : api_prompt(a, o, r, e)) return -1;
    int n_ctx = kvp_srv_n_ctx(a->srv);
    if (r->req.n_tokens >= n_ctx)
        return serve_fail(e, 413, r->chat ? "messages" : "prompt", "the prompt has %d tokens; the context holds %d "
                          "(with room for at least one generated token)", r->req.n_tokens, n_ctx);
    return 0;
}

int serve_parse(serve_app *a, const char *body, size_t len, int chat, serve_request *r, serve_error *e) {
    memset(r, 0, sizeof *r);
    memset(e, 0, sizeof *e);
    r->chat = chat;
    r->req.stop = (const char *const *)r->stop;
    api_new_id(r);
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    if (!o) {
        size_t at = end && end >= body ? (size_t)(end - body) : 0;
        return serve_fail(e, 400, NULL, "the request body is not valid JSON (error near byte %zu)", at);
    }
    int rc = api_fields(a, o, r, e);
    cJSON_Delete(o);
    return rc;
}

void serve_request_free(serve_request *r) {
    free(r->tokens);
    for (int i = 0; i < KVP_SRV_MAX_STOP; i++) free(r->stop[i]);
    free(r->kv);
    free(r->select);
    free(r->budget);
    memset(r, 0, sizeof *r);
}

/* ---- responses ---- */

/* Renders o (consumed) unformatted; NULL when out of memory. */
static char *api_print(cJSON *o) {
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

char *serve_error_json(const serve_error *e) {
    cJSON *o = cJSON_CreateObject(), *err = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(err, "message", e->message);
    cJSON_AddStringToObject(err, "type", e->type ? e->type : "server_error");
    if (e->param) cJSON_AddStringToObject(err, "param", e->param);
    else cJSON_AddNullToObject(err, "param");
    if (e->status == 413 && e->param) cJSON_AddStringToObject(err, "code", "context_length_exceeded");
    else cJSON_AddNullToObject(err, "code");
    return api_print(o);
}

void serve_job_error(const kvp_srv_status *st, serve_error *e) {
    static const int status[] = {500, 400, 413, 503, 500};
    int s = st->error >= 0 && st->error <= KVP_SRV_EINTERNAL ? status[st->error] : 500;
    serve_fail(e, s, NULL, "%s", st->message[0] ? st->message : "the request failed");
}

/* The text of token id after prev, valid UTF-8 (malloc'ed), and its raw bytes in *raw. */
static char *api_piece(serve_app *a, int prev, int id, char *raw, int *n_raw) {
    *n_raw = kvp_detokenize(a->m, prev, id, raw, 256);
    if (*n_raw < 0) *n_raw = 0;
    char *clean = malloc(3 * (size_t)*n_raw + 1);
    if (clean) kvp_utf8_sanitize(raw, (size_t)*n_raw, clean);
    return clean;
}

static cJSON *api_bytes(const char *raw, int n) {
    cJSON *b = cJSON_CreateArray();
    for (int i = 0; i < n; i++) cJSON_AddItemToArray(b, cJSON_CreateNumber((unsigned char)raw[i]));
    return b;
}

/* One entry of a chat logprobs "content" list (or of its top_logprobs). */
static cJSON *api_chat_entry(serve_app *a, int prev, int id, float lp) {
    char raw[256];
    int n = 0;
    char *piece = api_piece(a, prev, id, raw, &n);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "token", piece ? piece : "");
    cJSON_AddNumberToObject(o, "logprob", lp);
    cJSON_AddItemToObject(o, "bytes", api_bytes(raw, n));
    free(piece);
    return o;
}

static cJSON *api_chat_logprobs(serve_app *a, const kvp_srv_tok *t, int n, int prev) {
    cJSON *o = cJSON_CreateObject(), *content = cJSON_AddArrayToObject(o, "content");
    for (int i = 0; i < n; prev = t[i].id, i++) {
        cJSON *e = api_chat_entry(a, prev, t[i].id, t[i].logprob), *top = cJSON_AddArrayToObject(e, "top_logprobs");
        for (int k = 0; k < t[i].n_alts; k++) cJSON_AddItemToArray(top, api_chat_entry(a, prev, t[i].alts[k].id, t[i].alts[k].logprob));
        cJSON_AddItemToArray(content, e);
    }
    return o;
}

/* Completions logprobs: tokens, token_logprobs, top_logprobs (piece -> logprob), text_offset. */
static cJSON *api_text_logprobs(serve_app *a, const kvp_srv_tok *t, int n, int prev, size_t offset) {
    cJSON *o = cJSON_CreateObject(), *toks = cJSON_AddArrayToObject(o, "tokens");
    cJSON *lps = cJSON_AddArrayToObject(o, "token_logprobs"), *tops = cJSON_AddArrayToObject(o, "top_logprobs");
    cJSON *offs = cJSON_AddArrayToObject(o, "text_offset");
    char raw[256];
    for (int i = 0, nr = 0; i < n; prev = t[i].id, i++) {
        char *piece = api_piece(a, prev, t[i].id, raw, &nr);
        cJSON_AddItemToArray(toks, cJSON_CreateString(piece ? piece : ""));
        cJSON_AddItemToArray(lps, cJSON_CreateNumber(t[i].logprob));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)offset));
        offset += piece ? strlen(piece) : 0;
        free(piece);
        cJSON *top = cJSON_CreateObject();
        for (int k = 0; k < t[i].n_alts; k++) {
            char *alt = api_piece(a, prev, t[i].alts[k].id, raw, &nr);
            if (alt && !cJSON_GetObjectItemCaseSensitive(top, alt)) cJSON_AddNumberToObject(top, alt, t[i].alts[k].logprob);
            free(alt);
        }
        cJSON_AddItemToArray(tops, top);
    }
    return o;
}

static cJSON *api_logprobs_of(serve_app *a, const serve_request *r, const kvp_srv_view *v, int prev, size_t offset) {
    if (!r->logprobs) return cJSON_CreateNull();
    return r->chat ? api_chat_logprobs(a, v->toks, v->n_toks, prev) : api_text_logprobs(a, v->toks, v->n_toks, prev, offset);
}

static const char *api_finish_name(int finish) {
    return finish == KVP_SRV_FINISH_STOP ? "stop" : finish == KVP_SRV_FINISH_LENGTH ? "length" : NULL;
}

static cJSON *api_usage(const kvp_srv_status *st) {
    cJSON *u = cJSON_CreateObject();
    cJSON_AddNumberToObject(u, "prompt_tokens", st->n_prompt);
    cJSON_AddNumberToObject(u, "completion_tokens", st->n_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", st->n_prompt + st->n_tokens);
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(u, "prompt_tokens_details"), "cached_tokens", st->n_cached);
    return u;
}

/* kvpack's figures of a request: where its reused prefix came from and its timings. */
static cJSON *api_timings(const kvp_srv_status *st) {
    cJSON *k = cJSON_CreateObject();
    cJSON_AddNumberToObject(k, "cached_tokens", st->n_cached);
    cJSON_AddStringToObject(k, "reuse_source", kvp_srv_reuse_name(st->reuse));
    cJSON_AddNumberToObject(k, "queue_ms", st->t_queue * 1e3);
    cJSON_AddNumberToObject(k, "ttft_ms", st->t_first * 1e3);
    cJSON_AddNumberToObject(k, "total_ms", st->t_total * 1e3);
    return k;
}

static cJSON *api_envelope(serve_app *a, const serve_request *r, const char *object) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", r->id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)r->created);
    cJSON_AddStringToObject(o, "model", a->cfg.model_id);
    return o;
}

char *serve_response_json(serve_app *a, const serve_request *r, const kvp_srv_view *v) {
    cJSON *o = api_envelope(a, r, r->chat ? "chat.completion" : "text_completion");
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddNumberToObject(ch, "index", 0);
    if (r->chat) {
        cJSON *msg = cJSON_AddObjectToObject(ch, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        cJSON_AddStringToObject(msg, "content", v->text);
    } else {
        cJSON_AddStringToObject(ch, "text", v->text);
    }
    cJSON_AddItemToObject(ch, "logprobs", api_logprobs_of(a, r, v, r->tokens[r->req.n_tokens - 1], 0));
    cJSON_AddStringToObject(ch, "finish_reason", api_finish_name(v->st.finish));
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), ch);
    cJSON_AddItemToObject(o, "usage", api_usage(&v->st));
    cJSON_AddItemToObject(o, "kvpack", api_timings(&v->st));
    return api_print(o);
}

static void api_chunk_choice(serve_app *a, const serve_request *r, const kvp_srv_view *v, int prev, int first, int final,
                             cJSON *ch) {
    if (r->chat) {
        cJSON *d = cJSON_AddObjectToObject(ch, "delta");
        if (first) cJSON_AddStringToObject(d, "role", "assistant");
        if (v->n_text || first) cJSON_AddStringToObject(d, "content", v->text);
    } else {
        cJSON_AddStringToObject(ch, "text", v->text);
    }
    cJSON_AddItemToObject(ch, "logprobs", v->n_toks ? api_logprobs_of(a, r, v, prev, v->st.text_len - v->n_text) : cJSON_CreateNull());
    if (final && api_finish_name(v->st.finish)) cJSON_AddStringToObject(ch, "finish_reason", api_finish_name(v->st.finish));
    else cJSON_AddNullToObject(ch, "finish_reason");
}

char *serve_chunk_json(serve_app *a, const serve_request *r, const kvp_srv_view *v, int prev_tok, int first, int final) {
    cJSON *o = api_envelope(a, r, r->chat ? "chat.completion.chunk" : "text_completion");
    cJSON *ch = cJSON_CreateObject();
    cJSON_AddNumberToObject(ch, "index", 0);
    api_chunk_choice(a, r, v, prev_tok, first, final, ch);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), ch);
    if (final) {
        cJSON_AddItemToObject(o, "usage", api_usage(&v->st));
        cJSON_AddItemToObject(o, "kvpack", api_timings(&v->st));
    }
    return api_print(o);
}

char *serve_usage_chunk_json(serve_app *a, const serve_request *r, const kvp_srv_view *v) {
    cJSON *o = api_envelope(a, r, r->chat ? "chat.completion.chunk" : "text_completion");
    cJSON_AddArrayToObject(o, "choices");
    cJSON_AddItemToObject(o, "usage", api_usage(&v->st));
    return api_print(o);
}

char *serve_models_json(serve_app *a) {
    const kvp_model_info *in = kvp_model_get_info(a->m);
    cJSON *o = cJSON_CreateObject(), *m = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON_AddStringToObject(m, "id", a->cfg.model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)a->started);
    cJSON_AddStringToObject(m, "owned_by", "kvpack");
    cJSON *meta = cJSON_AddObjectToObject(m, "meta");
    cJSON_AddStringToObject(meta, "arch", in->arch);
    cJSON_AddNumberToObject(meta, "n_params", (double)in->n_params);
    cJSON_AddNumberToObject(meta, "vocab_size", in->vocab_size);
    cJSON_AddNumberToObject(meta, "n_ctx", kvp_srv_n_ctx(a->srv));
    cJSON_AddNumberToObject(meta, "n_ctx_train", in->n_ctx_train);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "data"), m);
    return api_print(o);
}

char *serve_health_json(serve_app *a) {
    kvp_srv_stats st;
    kvp_srv_get_stats(a->srv, &st);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "status", a->stopping ? "stopping" : "ok");
    cJSON_AddNumberToObject(o, "sessions", st.sessions);
    cJSON_AddNumberToObject(o, "queued", st.queued);
    cJSON_AddNumberToObject(o, "kv_bytes_hot", (double)st.kv_hot);
    cJSON_AddNumberToObject(o, "kv_bytes_cold", (double)st.kv_cold);
    return api_print(o);
}

#endif /* KVP_HAVE_SERVE */
