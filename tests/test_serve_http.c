/*
 * test_serve_http.c: `kvpack serve` over HTTP as a client sees it (KVP_CLI, on loopback):
 * the endpoints, completions and chat equal to `kvpack run` / `kvpack chat` at temperature
 * 0, server-sent events, logprobs, per-request cache overrides, and a clear OpenAI-style
 * error with the right status for every kind of bad request, after which it still serves.
 */
#include <unistd.h>

#include "kvpack.h"
#include "serve/serve_test.h"
#include "test.h"

#ifdef KVP_HAVE_SERVE
#include <cJSON.h>

/* POSTs body to path and parses the answer; NULL (and a failed test) when it is not JSON. */
static cJSON *kvt_post(int port, const char *path, const char *body, int *status) {
    kvt_resp r;
    kvt_http(port, "POST", path, body, 60, &r);
    *status = r.status;
    cJSON *o = r.body ? cJSON_Parse(r.body) : NULL;
    kvt_resp_free(&r);
    return o;
}

static const char *kvt_jstr(const cJSON *o, const char *path) {
    char buf[256], *save = NULL;
    snprintf(buf, sizeof buf, "%s", path);
    for (char *k = strtok_r(buf, ".", &save); o && k; k = strtok_r(NULL, ".", &save))
        o = *k >= '0' && *k <= '9' ? cJSON_GetArrayItem(o, atoi(k)) : cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(o) ? o->valuestring : NULL;
}

static double kvt_jnum(const cJSON *o, const char *path) {
    char buf[256], *save = NULL;
    snprintf(buf, sizeof buf, "%s", path);
    for (char *k = strtok_r(buf, ".", &save); o && k; k = strtok_r(NULL, ".", &save))
        o = *k >= '0' && *k <= '9' ? cJSON_GetArrayItem(o, atoi(k)) : cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(o) ? o->valuedouble : -1;
}

static char kvt_log[1 << 14];

#define START(s, args) CHECKF(kvt_serve_start(&(s), args) == 0, "server did not start: %s", kvt_serve_log(&(s), kvt_log, sizeof kvt_log))
#define STOP(s) CHECKF(kvt_serve_stop(&(s)) == 0, "server did not stop cleanly: %s", kvt_serve_log(&(s), kvt_log, sizeof kvt_log))

TEST(serve_http_endpoints) {
    kvt_server s;
    char args[512];
    snprintf(args, sizeof args, "-m %s --alias tiny", kvt_model("stories260K.gguf"));
    START(s, args);
    kvt_resp r;
    CHECK(kvt_http(s.port, "GET", "/health", NULL, 10, &r) == 0 && r.status == 200 && strstr(r.body, "\"status\":\"ok\""));
    kvt_resp_free(&r);
    CHECK(kvt_http(s.port, "GET", "/v1/models", NULL, 10, &r) == 0 && r.status == 200);
    cJSON *o = cJSON_Parse(r.body);
    kvt_resp_free(&r);
    CHECK(o && !strcmp(kvt_jstr(o, "object"), "list") && !strcmp(kvt_jstr(o, "data.0.id"), "tiny"));
    CHECK(kvt_jnum(o, "data.0.meta.n_ctx") == 512);
    cJSON_Delete(o);
    CHECK(kvt_http(s.port, "GET", "/metrics", NULL, 10, &r) == 0 && r.status == 200);
    CHECK(strstr(r.body, "# TYPE kvpack_time_to_first_token_seconds histogram"));
    CHECK(kvt_metric(r.body, "kvpack_http_requests_total{endpoint=\"/v1/models\",status=\"200\"}") == 1);
    kvt_resp_free(&r);
    STOP(s);
}

TEST(serve_http_completions_match_run) {
    kvt_server s;
    char args[512];
    const char *model = kvt_model("stories260K.gguf");
    snprintf(args, sizeof args, "-m %s -t 2", model);
    START(s, args);
    const char *prompts[] = {"Once upon a time, there was a little girl named Mia. She lived in a small house",
                             "Lily and Tom were playing in the park with a big red ball when",
                             "The little dog ran to the park and saw a big tree with many birds"};
    for (int i = 0; i < 3; i++) {
        char *want = kvt_run_greedy(model, prompts[i], 48), body[1024];
        snprintf(body, sizeof body, "{\"prompt\":\"%s\",\"max_tokens\":48,\"temperature\":0}", prompts[i]);
        int st = 0;
        cJSON *o = kvt_post(s.port, "/v1/completions", body, &st);
        const char *text = kvt_jstr(o, "choices.0.text");
        CHECKF(st == 200 && want && text && !strcmp(text, want), "status %d\nserve '%s'\nrun   '%s'", st, text ? text : "",
               want ? want : "");
        CHECK(!strcmp(kvt_jstr(o, "object"), "text_completion") && kvt_jnum(o, "usage.completion_tokens") > 0);
        CHECK(kvt_jnum(o, "usage.total_tokens") == kvt_jnum(o, "usage.prompt_tokens") + kvt_jnum(o, "usage.completion_tokens"));
        cJSON_Delete(o);
        /* again: the prompt's tokens but the last come from the idle context, same answer */
        o = kvt_post(s.port, "/v1/completions", body, &st);
        CHECK(st == 200 && !strcmp(kvt_jstr(o, "choices.0.text"), want));
        CHECK(kvt_jnum(o, "usage.prompt_tokens_details.cached_tokens") == kvt_jnum(o, "usage.prompt_tokens") - 1);
        cJSON_Delete(o);
        free(want);
    }
    STOP(s);
}

TEST(serve_http_stream_and_chat) {
    kvt_server s;
    char args[512];
    const char *model = kvt_model("stories260K.gguf");
    snprintf(args, sizeof args, "-m %s --template chatml", model);
    START(s, args);
    kvt_resp r;
    const char *body = "{\"prompt\":\"Once upon a time\",\"max_tokens\":40,\"temperature\":0,\"stream\":true,"
                       "\"stream_options\":{\"include_usage\":true}}";
    CHECK(kvt_http(s.port, "POST", "/v1/completions", body, 60, &r) == 0 && r.status == 200);
    int events = 0, done = 0;
    char *text = kvt_sse_text(r.body, 0, &events, &done), *want = kvt_run_greedy(model, "Once upon a time", 40);
    CHECKF(text && want && !strcmp(text, want) && done && events >= 2, "events %d done %d: '%s'", events, done, r.body);
    CHECK(strstr(r.body, "\"finish_reason\":\"length\"") && strstr(r.body, "\"choices\":[],\"usage\""));
    free(text);
    free(want);
    kvt_resp_free(&r);
    /* chat, plain and streamed, equals `kvpack chat` */
    char out[4096];
    snprintf(args, sizeof args, "chat -m %s --template chatml -p 'Tell me a story' -n 24 --temp 0", model);
    CHECK(kvt_cli_out(args, out, sizeof out) == 0 && strlen(out) > 1);
    out[strlen(out) - 1] = 0; /* chat ends the answer with a newline */
    const char *chat = "{\"messages\":[{\"role\":\"user\",\"content\":\"Tell me a story\"}],\"max_tokens\":24,\"temperature\":0";
    char req[512];
    snprintf(req, sizeof req, "%s}", chat);
    int st = 0;
    cJSON *o = kvt_post(s.port, "/v1/chat/completions", req, &st);
    CHECKF(st == 200 && !strcmp(kvt_jstr(o, "choices.0.message.content"), out), "serve '%s'\nchat  '%s'",
           kvt_jstr(o, "choices.0.message.content"), out);
    CHECK(!strcmp(kvt_jstr(o, "object"), "chat.completion") && !strcmp(kvt_jstr(o, "choices.0.message.role"), "assistant"));
    cJSON_Delete(o);
    snprintf(req, sizeof req, "%s,\"stream\":true}", chat);
    CHECK(kvt_http(s.port, "POST", "/v1/chat/completions", req, 60, &r) == 0 && r.status == 200);
    text = kvt_sse_text(r.body, 1, &events, &done);
    CHECK(text && !strcmp(text, out) && done && strstr(r.body, "\"delta\":{\"role\":\"assistant\""));
    CHECK(strstr(r.body, "\"object\":\"chat.completion.chunk\""));
    free(text);
    kvt_resp_free(&r);
    STOP(s);
}

TEST(serve_http_logprobs_stop_overrides) {
    kvt_server s;
    char args[512];
    snprintf(args, sizeof args, "-m %s --template chatml", kvt_model("stories260K.gguf"));
    START(s, args);
    int st = 0;
    cJSON *o = kvt_post(s.port, "/v1/completions", "{\"prompt\":\"Once upon a time\",\"max_tokens\":6,\"temperature\":0,\"logprobs\":3}", &st);
    cJSON *lp = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0), "logprobs");
    CHECK(st == 200 && cJSON_GetArraySize(cJSON_GetObjectItem(lp, "tokens")) == 6);
    cJSON *top0 = cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "top_logprobs"), 0);
    double chosen = cJSON_GetArrayItem(cJSON_GetObjectItem(lp, "token_logprobs"), 0)->valuedouble;
    CHECK(cJSON_GetArraySize(top0) == 3 && chosen <= 0 && fabs(top0->child->valuedouble - chosen) < 1e-6); /* greedy: the top one */
    cJSON_Delete(o);
    o = kvt_post(s.port, "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":4,"
                 "\"temperature\":0,\"logprobs\":true,\"top_logprobs\":2}", &st);
    CHECK(st == 200 && kvt_jstr(o, "choices.0.logprobs.content.0.token") && kvt_jnum(o, "choices.0.logprobs.content.0.top_logprobs.1.logprob") <= 0);
    cJSON_Delete(o);
    o = kvt_post(s.port, "/v1/completions", "{\"prompt\":\"Once upon a time\",\"max_tokens\":40,\"temperature\":0,\"stop\":[\"Lily\"]}", &st);
    CHECK(st == 200 && !strcmp(kvt_jstr(o, "choices.0.finish_reason"), "stop") && !strstr(kvt_jstr(o, "choices.0.text"), "Lily"));
    cJSON_Delete(o);
    /* per-request cache overrides: a 4-bit cache and a selection policy */
    o = kvt_post(s.port, "/v1/completions", "{\"prompt\":\"Once upon a time\",\"max_tokens\":8,\"kvpack\":{\"kv\":\"k4v4\"}}", &st);
    CHECKF(st == 200 && kvt_jnum(o, "usage.completion_tokens") > 0, "status %d", st);
    cJSON_Delete(o);
    o = kvt_post(s.port, "/v1/completions", "{\"prompt\":\"Once upon a time\",\"max_tokens\":8,\"kvpack\":{\"select\":\"h2o\",\"budget\":\"16\"}}", &st);
    CHECKF(st == 200 && kvt_jnum(o, "usage.completion_tokens") > 0, "status %d", st);
    cJSON_Delete(o);
    STOP(s);
}

/* Expects status and an OpenAI error object whose message contains `what`. */
static int kvt_expect_error(int port, const char *method, const char *path, const char *body, int status, const char *what) {
    kvt_resp r;
    kvt_http(port, method, path, body, 30, &r);
    cJSON *o = r.body ? cJSON_Parse(r.body) : NULL;
    const char *msg = kvt_jstr(o, "error.message");
    int ok = r.status == status && msg && strstr(msg, what) && kvt_jstr(o, "error.type");
    if (!ok) printf("  expected %d '%s', got %d: %s\n", status, what, r.status, r.body ? r.body : "(nothing)");
    cJSON_Delete(o);
    kvt_resp_free(&r);
    return ok;
}

TEST(serve_http_errors) {
    kvt_server s;
    char args[512];
    snprintf(args, sizeof args, "-m %s --max-body 64K", kvt_model("stories260K.gguf"));
    START(s, args);
    const char *c = "/v1/completions";
    CHECK(kvt_expect_error(s.port, "POST", c, "{\"prompt\":", 400, "not valid JSON"));
    CHECK(kvt_expect_error(s.port, "POST", c, "", 400, "not valid JSON"));
    CHECK(kvt_expect_error(s.port, "POST", c, "[1,2]", 400, "must be a JSON object"));
    CHECK(kvt_expect_error(s.port, "POST", c, "{\"prompt\":5}", 400, "'prompt' must be"));
    CHECK(kvt_expect_error(s.port, "POST", c, "{\"prompt\":\"x\",\"max_tokens\":\"9\"}", 400, "'max_tokens' must be an integer"));
    CHECK(kvt_expect_error(s.port, "POST", c, "{\"prompt\":\"x\",\"max_tokens\":1.5}", 400, "'max_tokens'"));
    CHECK(kvt_expect_error(s.port, "POST", c, "{\"prompt\":\"x\",\"temperature\":\"hot\"}", 400, "'temperature'"));
    CHECK(kvt_expect_error(s.port, "POST", c, "{\"prompt\":\"x\",\"stream\":1}", 400, "'stream' must be true or false"));
    CHECK(kvt_expect_error(s.port, "POST", c, "{\"prompt\":\"x\",\"stop\":[\"\"]}", 400, "'stop'"));
    CHECK(kvt_expect_error(s.port, "POST", c, "{\"prompt\":[1,100000]}", 400, "not a token id"));
    CHECK(kvt_expect_error(s.port, "POST", c, "{\"prompt\":\"x\",\"kvpack\":{\"kv\":\"q99\"}}", 400, "unknown KV cache spec"));
    CHECK(kvt_expect_error(s.port, "POST", "/v1/chat/completions", "{\"messages\":[]}", 400, "'messages'"));
    CHECK(kvt_expect_error(s.port, "POST", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", 400,
                           "chat template"));
    CHECK(kvt_expect_error(s.port, "GET", "/v1/nothing", NULL, 404, "no such endpoint"));
    CHECK(kvt_expect_error(s.port, "GET", c, NULL, 405, "method not allowed"));
    /* a prompt over the context (512 tokens) and a body over --max-body */
    size_t n = 40000;
    char *big = malloc(n + 64);
    strcpy(big, "{\"prompt\":\"");
    for (size_t i = 11; i < n; i += 5) memcpy(big + i, "word ", 5);
    strcpy(big + n, "\"}");
    CHECK(kvt_expect_error(s.port, "POST", c, big, 413, "the context holds 512"));
    big = realloc(big, 200000 + 64);
    for (size_t i = n; i < 200000; i += 5) memcpy(big + i, "word ", 5);
    strcpy(big + 200000, "\"}");
    CHECK(kvt_expect_error(s.port, "POST", c, big, 413, "larger than 65536 bytes"));
    free(big);
    /* and it still serves */
    int st = 0;
    cJSON *o = kvt_post(s.port, c, "{\"prompt\":\"Once upon a time\",\"max_tokens\":4}", &st);
    CHECK(st == 200 && kvt_jnum(o, "usage.completion_tokens") == 4);
    cJSON_Delete(o);
    STOP(s);
}

TEST(serve_cli_usage) {
    char out[4096];
    CHECK(kvt_cli_out("serve --port 99999 -m x", out, sizeof out) == 2);
    CHECK(kvt_cli_out("serve --bogus", out, sizeof out) == 2);
    CHECK(kvt_cli_out("serve", out, sizeof out) == 2);
}

#else

TEST(serve_http_built) {
    CHECKF(0, "kvpack was built without libmicrohttpd and cJSON: `kvpack serve` and its tests need them "
              "(apt-get install libmicrohttpd-dev libcjson-dev, then make)");
}

#endif
