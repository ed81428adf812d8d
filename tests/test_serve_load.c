/*
 * test_serve_load.c: `kvpack serve` under load and faults, on loopback only, every loop
 * bounded in count and time:
 *   - 32 concurrent clients (half of them streaming), 6 requests each, every greedy answer
 *     equal to `kvpack run --temp 0`, resident memory flat after the warm-up round;
 *   - slow clients, stalled clients, clients that disconnect mid-stream or before the
 *     answer, bytes that are not HTTP: each gets an error, a timeout or a cancelled job,
 *     and the server keeps serving;
 *   - a client that stops reading its stream: the engine generates it all the same while
 *     others are served; read later, slowly, the stream is whole; never read, the
 *     connection is dropped after --timeout;
 *   - two servers and one redis-server: a prefix prefilled by one is loaded by the other;
 *     Redis killed mid-run: both keep answering (prefill instead), the failures counted.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "kvpack.h"
#include "serve/serve_test.h"
#include "test.h"

#ifdef KVP_HAVE_SERVE
#include <cJSON.h>

#define KVT_CLIENTS 32
#define KVP_MIN_INT(a, b) ((a) < (b) ? (a) : (b))
#define KVT_ROUNDS 6
#define KVT_PROMPTS 4

static const char *const kvt_prompts[KVT_PROMPTS] = {
    "Once upon a time, there was a little girl named Mia. She lived in a small house near a big green park.",
    "Once upon a time, there was a little girl named Mia. She liked to run on the grass and look at the birds.",
    "Once upon a time, there was a little girl named Mia. One day, Mia saw a small dog under a bench.",
    "Lily and Tom were playing in the park with a big red ball when it started to rain.",
};

typedef struct {
    int port, id, bad, done;
    char *want[KVT_PROMPTS];
    pthread_barrier_t *barrier;
    char err[256];
} kvt_client;

/* One request of a client; 0 when the answer is the expected text. */
static int kvt_client_request(kvt_client *c, int round) {
    int p = (c->id + round) % KVT_PROMPTS, stream = c->id % 2, events = 0, done = 0;
    char body[1024];
    snprintf(body, sizeof body, "{\"prompt\":\"%s\",\"max_tokens\":32,\"temperature\":0,\"stream\":%s}", kvt_prompts[p],
             stream ? "true" : "false");
    kvt_resp r;
    if (kvt_http(c->port, "POST", "/v1/completions", body, 120, &r) < 0 || r.status != 200) {
        snprintf(c->err, sizeof c->err, "client %d round %d: status %d", c->id, round, r.status);
        kvt_resp_free(&r);
        return -1;
    }
    char *text = NULL;
    if (stream) {
        text = kvt_sse_text(r.body, 0, &events, &done);
    } else {
        cJSON *o = cJSON_Parse(r.body);
        cJSON *t = cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0), "text");
        text = cJSON_IsString(t) ? strdup(t->valuestring) : NULL;
        cJSON_Delete(o);
    }
    int ok = text && !strcmp(text, c->want[p]) && (!stream || done);
    if (!ok) snprintf(c->err, sizeof c->err, "client %d round %d: '%.80s' instead of '%.80s'", c->id, round, text ? text : "", c->want[p]);
    free(text);
    kvt_resp_free(&r);
    return ok ? 0 : -1;
}

static void *kvt_client_main(void *arg) {
    kvt_client *c = arg;
    for (int round = 0; round < KVT_ROUNDS; round++) {
        if (kvt_client_request(c, round) < 0) c->bad++;
        c->done++;
        if (round < 2) pthread_barrier_wait(c->barrier); /* the warm-up rounds end together */
    }
    return NULL;
}

static char kvt_log[1 << 14];

#define START(s, args) CHECKF(kvt_serve_start(&(s), args) == 0, "server did not start: %s", kvt_serve_log(&(s), kvt_log, sizeof kvt_log))

TEST(serve_load_32_clients) {
    const char *model = kvt_model("stories260K.gguf");
    kvt_client cl[KVT_CLIENTS];
    char *want[KVT_PROMPTS];
    for (int p = 0; p < KVT_PROMPTS; p++) CHECK((want[p] = kvt_run_greedy(model, kvt_prompts[p], 32)));
    kvt_server s;
    char args[512];
    snprintf(args, sizeof args, "-m %s --parallel 16 --queue 64", model);
    START(s, args);
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, KVT_CLIENTS + 1);
    pthread_t th[KVT_CLIENTS];
    for (int i = 0; i < KVT_CLIENTS; i++) {
        cl[i] = (kvt_client){s.port, i, 0, 0, {want[0], want[1], want[2], want[3]}, &barrier, {0}};
        pthread_create(&th[i], NULL, kvt_client_main, &cl[i]);
    }
    pthread_barrier_wait(&barrier); /* round 0 done */
    pthread_barrier_wait(&barrier); /* round 1 done: warmed up */
    long rss_warm = kvt_rss_kb(s.pid);
    int bad = 0, total = 0;
    const char *first_err = NULL;
    for (int i = 0; i < KVT_CLIENTS; i++) {
        pthread_join(th[i], NULL);
        bad += cl[i].bad;
        total += cl[i].done;
        if (cl[i].bad && !first_err) first_err = cl[i].err;
    }
    long rss_end = kvt_rss_kb(s.pid);
    pthread_barrier_destroy(&barrier);
    kvt_resp r;
    CHECK(kvt_http(s.port, "GET", "/metrics", NULL, 10, &r) == 0);
    double saved = kvt_metric(r.body, "kvpack_prefill_tokens_saved_total{source=\"idle\"}") +
                   kvt_metric(r.body, "kvpack_prefill_tokens_saved_total{source=\"session\"}");
    double reqs = kvt_metric(r.body, "kvpack_requests_total");
    kvt_resp_free(&r);
    int stop = kvt_serve_stop(&s);
    for (int p = 0; p < KVT_PROMPTS; p++) free(want[p]);
    CHECKF(bad == 0 && total == KVT_CLIENTS * KVT_ROUNDS, "%d of %d requests wrong; first: %s", bad, total, first_err);
    CHECKF(reqs == KVT_CLIENTS * KVT_ROUNDS && saved > 0, "requests %g, prefill tokens saved %g", reqs, saved);
    CHECKF(rss_warm > 0 && rss_end - rss_warm < 8192 + rss_warm / 10, "RSS %ld KiB after warm-up, %ld KiB at the end",
           rss_warm, rss_end);
    CHECK(stop == 0);
}

/* Sends a request one byte at a time (about 1 ms apart) and reads the answer. */
static int kvt_slow_client(int port, char *out, size_t cap) {
    int fd = kvt_connect(port, 30);
    const char *body = "{\"prompt\":\"Once upon a time\",\"max_tokens\":8,\"temperature\":0}";
    char req[512];
    int n = snprintf(req, sizeof req, "POST /v1/completions HTTP/1.0\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
    for (int i = 0; fd >= 0 && i < n; i++) {
        if (send(fd, req + i, 1, MSG_NOSIGNAL) != 1) break;
        usleep(1000);
    }
    size_t got = 0;
    for (ssize_t k; fd >= 0 && got + 1 < cap && (k = recv(fd, out + got, cap - got - 1, 0)) > 0;) got += (size_t)k;
    out[got] = 0;
    if (fd >= 0) close(fd);
    return strncmp(out, "HTTP/1.0 200", 12) && strncmp(out, "HTTP/1.1 200", 12) ? -1 : 0;
}

/* Opens a stream of 400 tokens, reads its first event and hangs up. */
static int kvt_hang_up_mid_stream(int port) {
    int fd = kvt_connect(port, 30);
    const char *body = "{\"prompt\":\"Once upon a time\",\"max_tokens\":400,\"stream\":true,\"kvpack\":{\"ignore_eos\":true}}";
    char req[512], buf[4096] = {0};
    int n = snprintf(req, sizeof req, "POST /v1/completions HTTP/1.0\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
    int ok = fd >= 0 && send(fd, req, (size_t)n, MSG_NOSIGNAL) == n;
    size_t got = 0;
    while (ok && !strstr(buf, "data: ")) {
        ssize_t k = recv(fd, buf + got, sizeof buf - got - 1, 0);
        if (k <= 0) ok = 0;
        else buf[got += (size_t)k] = 0;
        if (got + 1 >= sizeof buf) break;
    }
    if (fd >= 0) close(fd);
    return ok ? 0 : -1;
}

/* Waits (at most `seconds`) until a metric is at least `at_least`; its last value. */
static double kvt_wait_metric_for(int port, const char *name, double at_least, double seconds) {
    double v = -1;
    for (int i = 0; i < (int)(seconds * 10) && v < at_least; i++) {
        kvt_resp r;
        if (kvt_http(port, "GET", "/metrics", NULL, 10, &r) == 0) v = kvt_metric(r.body, name);
        kvt_resp_free(&r);
        if (v < at_least) usleep(100000);
    }
    return v;
}

/* Waits (at most 10 s) until a metric is at most `at_most`; its last value. */
static double kvt_wait_metric_down(int port, const char *name, double at_most) {
    double v = -1;
    for (int i = 0; i < 100 && !(v >= 0 && v <= at_most); i++) {
        kvt_resp r;
        if (kvt_http(port, "GET", "/metrics", NULL, 10, &r) == 0) v = kvt_metric(r.body, name);
        kvt_resp_free(&r);
        if (!(v >= 0 && v <= at_most)) usleep(100000);
    }
    return v;
}

static double kvt_wait_metric(int port, const char *name, double at_least) {
    return kvt_wait_metric_for(port, name, at_least, 10);
}

static int kvt_serves(int port) {
    kvt_resp r;
    int ok = kvt_http(port, "POST", "/v1/completions", "{\"prompt\":\"Once upon a time\",\"max_tokens\":4}", 60, &r) == 0 &&
             r.status == 200 && strstr(r.body, "\"completion_tokens\":4");
    kvt_resp_free(&r);
    return ok;
}

TEST(serve_faults_keep_serving) {
    kvt_server s;
    char args[512], out[8192];
    snprintf(args, sizeof args, "-m %s --timeout 2", kvt_model("stories260K.gguf"));
    START(s, args);
    CHECKF(kvt_slow_client(s.port, out, sizeof out) == 0, "slow client got: %.200s", out);
    /* a client that stops in the middle of its headers is closed by the timeout */
    int fd = kvt_connect(s.port, 10);
    CHECK(fd >= 0 && send(fd, "POST /v1/completions HTTP/1.0\r\nContent-Le", 41, MSG_NOSIGNAL) == 41);
    CHECK(kvt_serves(s.port));
    char c;
    double t0 = (double)time(NULL);
    CHECK(recv(fd, &c, 1, 0) <= 0 && (double)time(NULL) - t0 <= 8);
    close(fd);
    /* bytes that are not HTTP */
    fd = kvt_connect(s.port, 10);
    CHECK(fd >= 0 && send(fd, "\x16\x03\x01garbage\r\n\r\n", 14, MSG_NOSIGNAL) == 14);
    ssize_t k = recv(fd, out, sizeof out - 1, 0);
    out[k > 0 ? k : 0] = 0;
    CHECK(k <= 0 || strstr(out, " 400 ") || strstr(out, " 505 "));
    close(fd);
    /* hanging up mid-stream, and before a plain answer: both jobs are cancelled */
    CHECK(kvt_hang_up_mid_stream(s.port) == 0);
    CHECK(kvt_wait_metric(s.port, "kvpack_requests_cancelled_total", 1) == 1);
    CHECK(kvt_wait_metric_down(s.port, "kvpack_sessions_active", 0) == 0); /* its session is freed */
    CHECK(kvt_wait_metric(s.port, "kvpack_contexts_idle", 1) >= 1);   /* its context kept for reuse */
    fd = kvt_connect(s.port, 10);
    const char *body = "{\"prompt\":\"Once upon a time\",\"max_tokens\":400,\"kvpack\":{\"ignore_eos\":true}}";
    char req[512];
    int n = snprintf(req, sizeof req, "POST /v1/completions HTTP/1.0\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
    CHECK(fd >= 0 && send(fd, req, (size_t)n, MSG_NOSIGNAL) == n);
    usleep(20000);
    close(fd);
    CHECK(kvt_wait_metric(s.port, "kvpack_requests_cancelled_total", 2) == 2);
    CHECK(kvt_wait_metric(s.port, "kvpack_completion_tokens_total", 0) < 800); /* they stopped early */
    CHECK(kvt_serves(s.port));
    CHECKF(kvt_serve_stop(&s) == 0, "%s", kvt_serve_log(&s, kvt_log, sizeof kvt_log));
}

/* ---- slow readers ----
 * The streams are made long enough to fill the sockets' buffers (loopback TCP buffers a few
 * MB): 16000 tokens with 20 alternatives each (about 450 bytes an event, 7 MB in all) from
 * a tiny synthetic model with a 16384-token context, which generates them in a second or
 * two. */

#define KVT_SLOW_TOKENS 16000

static const char *kvt_tiny_model(char *path, size_t cap) {
    snprintf(path, cap, "/tmp/kvt_tiny16k_%d.gguf", (int)getpid());
    kvp_synth_params p = {64, 128, 1, 2, 1, 300, 16384, KVP_TYPE_F32, 10000.0f, 7};
    return kvp_synth_write(path, &p) == KVP_OK ? path : NULL;
}

/* Opens the long stream on a socket with a small receive buffer and reads until its first
 * event; the caller then stops reading, so the server's writes stall. Returns the fd. */
static int kvt_stalled_reader(int port, char *buf, size_t cap, size_t *got) {
    int fd = socket(AF_INET, SOCK_STREAM, 0), small = 4096;
    if (fd < 0) return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small); /* before connect: a small window */
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    char body[256], req[512];
    snprintf(body, sizeof body, "{\"prompt\":\"Once upon a time\",\"max_tokens\":%d,\"stream\":true,\"logprobs\":20,"
             "\"kvpack\":{\"ignore_eos\":true}}", KVT_SLOW_TOKENS);
    int n = snprintf(req, sizeof req, "POST /v1/completions HTTP/1.0\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0 || send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        return -1;
    }
    *got = 0;
    buf[0] = 0;
    while (!strstr(buf, "data: ") && *got + 1 < cap) {
        ssize_t k = recv(fd, buf + *got, KVP_MIN_INT(512, cap - *got - 1), 0);
        if (k <= 0) break;
        buf[*got += (size_t)k] = 0;
    }
    return fd;
}

/* Reads the rest of a response, 16 KB at a time with a pause between reads; keeps its last
 * cap - 1 bytes in buf (NUL-terminated) and returns the number of bytes read in all. */
static size_t kvt_read_slowly(int fd, char *buf, size_t cap, size_t got) {
    char tmp[16384];
    size_t have = strlen(buf);
    for (ssize_t k; (k = recv(fd, tmp, sizeof tmp, 0)) > 0; usleep(1000)) {
        got += (size_t)k;
        if (have + (size_t)k + 1 > cap) have = 0; /* keep the tail only */
        memcpy(buf + have, tmp, (size_t)k);
        buf[have += (size_t)k] = 0;
    }
    return got;
}

typedef struct {
    int port, ok;
    char err[200];
} kvt_other;

static void *kvt_other_main(void *arg) {
    kvt_other *o = arg;
    o->ok = 1;
    for (int i = 0; i < 3 && o->ok; i++) {
        kvt_resp r;
        int rc = kvt_http(o->port, "POST", "/v1/completions", "{\"prompt\":\"Once upon a time\",\"max_tokens\":4,"
                          "\"kvpack\":{\"ignore_eos\":true}}", 60, &r);
        o->ok = rc == 0 && r.status == 200 && strstr(r.body, "\"completion_tokens\":4");
        if (!o->ok) snprintf(o->err, sizeof o->err, "status %d: %.150s", r.status, r.body ? r.body : "");
        kvt_resp_free(&r);
    }
    return NULL;
}

/* Four clients, three requests each, served while a stream is stalled: 1 when all were
 * (else err receives a failure). */
static int kvt_others_served(int port, char *err, size_t cap) {
    kvt_other o[4];
    pthread_t th[4];
    int ok = 0;
    for (int i = 0; i < 4; i++) {
        o[i] = (kvt_other){port, 0, {0}};
        pthread_create(&th[i], NULL, kvt_other_main, &o[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ok += o[i].ok;
        if (!o[i].ok) snprintf(err, cap, "%s", o[i].err);
    }
    return ok == 4;
}

/* The setup of both tests below: a server on the tiny model with --timeout `timeout`, one
 * client that read the first event of a long stream and then stopped reading (its socket
 * is returned, buf holds what it read, *got its length), and 4 other clients that were
 * served meanwhile. Returns -1 (the test has failed) when any of that did not happen. */
static int kvt_stall_setup(int timeout, kvt_server *s, char *model, size_t model_cap, char *buf, size_t cap,
                           size_t *got) {
    char args[512], err[256] = "";
    if (!kvt_tiny_model(model, model_cap)) {
        kvt_fail(__FILE__, __LINE__, "could not write the tiny model");
        return -1;
    }
    snprintf(args, sizeof args, "-m %s -c 16384 --timeout %d --parallel 8", model, timeout);
    if (kvt_serve_start(s, args) != 0) {
        kvt_fail(__FILE__, __LINE__, "server did not start: %s", kvt_serve_log(s, kvt_log, sizeof kvt_log));
        return -1;
    }
    *got = 0;
    int fd = kvt_stalled_reader(s->port, buf, cap, got);
    if (fd < 0 || !strstr(buf, "data: ")) kvt_fail(__FILE__, __LINE__, "no first event: %.200s", buf);
    else if (!kvt_others_served(s->port, err, sizeof err)) kvt_fail(__FILE__, __LINE__, "another client: %s", err);
    else return fd;
    if (fd >= 0) close(fd);
    kvt_serve_stop(s);
    return -1;
}

/* A client that stops reading its stream (without closing) while others are served: the
 * scheduler generates all its tokens anyway (the job keeps them; only the connection's own
 * thread waits for the socket), the other clients get their answers meanwhile, and when the
 * client reads again, slowly, it gets the whole stream. */
TEST(serve_slow_reader_does_not_block) {
    char model[64];
    static char buf[1 << 16];
    kvt_server s;
    size_t got = 0;
    int fd = kvt_stall_setup(120, &s, model, sizeof model, buf, sizeof buf, &got);
    CHECK(fd >= 0);
    /* the stalled stream's job ended in the engine: 1 + 12 requests, all its tokens made */
    CHECK(kvt_wait_metric_for(s.port, "kvpack_requests_total", 13, 120) == 13);
    CHECK(kvt_wait_metric(s.port, "kvpack_completion_tokens_total", KVT_SLOW_TOKENS + 48) == KVT_SLOW_TOKENS + 48);
    CHECK(kvt_wait_metric_down(s.port, "kvpack_sessions_active", 0) == 0);
    got = kvt_read_slowly(fd, buf, sizeof buf, got);
    close(fd);
    CHECKF(strstr(buf, "\"finish_reason\":\"length\"") && strstr(buf, "data: [DONE]"), "%zu bytes, ending '%.200s'", got,
           strlen(buf) > 200 ? buf + strlen(buf) - 200 : buf);
    CHECKF(got > (4u << 20), "the stream was only %zu bytes: too short to fill the socket buffers", got);
    CHECKF(kvt_serve_stop(&s) == 0, "%s", kvt_serve_log(&s, kvt_log, sizeof kvt_log));
    unlink(model);
}

/* A client that stops reading for good: the others are served, its connection is dropped
 * after --timeout seconds without progress (a 499 in the metrics), its session ends (with
 * its generation, or cancelled by the drop if that comes first), and the server stops
 * cleanly. */
TEST(serve_stalled_reader_dropped) {
    char model[64];
    static char buf[1 << 16];
    kvt_server s;
    size_t got = 0;
    int fd = kvt_stall_setup(2, &s, model, sizeof model, buf, sizeof buf, &got);
    CHECK(fd >= 0);
    CHECKF(kvt_wait_metric(s.port, "kvpack_http_requests_total{endpoint=\"/v1/completions\",status=\"499\"}", 1) == 1,
           "the stalled reader's connection was not dropped");
    /* its job ended, whole or cancelled by the drop when the generation was slower (ASan) */
    CHECK(kvt_wait_metric_for(s.port, "kvpack_requests_total", 13, 120) == 13);
    CHECK(kvt_wait_metric_down(s.port, "kvpack_sessions_active", 0) == 0);
    got = kvt_read_slowly(fd, buf, sizeof buf, got);
    close(fd);
    CHECKF(!strstr(buf, "data: [DONE]") && got < (size_t)KVT_SLOW_TOKENS * 400, "the dropped stream ended normally (%zu bytes)", got);
    CHECK(kvt_serves(s.port));
    CHECKF(kvt_serve_stop(&s) == 0, "%s", kvt_serve_log(&s, kvt_log, sizeof kvt_log));
    unlink(model);
}

static cJSON *kvt_complete(int port, const char *prompt, int *status) {
    char body[1024];
    snprintf(body, sizeof body, "{\"prompt\":\"%s\",\"max_tokens\":16,\"temperature\":0}", prompt);
    kvt_resp r;
    kvt_http(port, "POST", "/v1/completions", body, 60, &r);
    *status = r.status;
    cJSON *o = r.body ? cJSON_Parse(r.body) : NULL;
    kvt_resp_free(&r);
    return o;
}

static const char *kvt_field(cJSON *o, const char *a, const char *b) {
    cJSON *x = cJSON_GetObjectItem(o, a);
    cJSON *y = b ? cJSON_GetObjectItem(x, b) : x;
    return cJSON_IsString(y) ? y->valuestring : "";
}

TEST(serve_redis_two_servers_share) {
    kvt_server redis, a, b;
    CHECKF(kvt_redis_start(&redis) == 0, "redis-server did not start (apt-get install redis-server): %s",
           kvt_serve_log(&redis, kvt_log, sizeof kvt_log));
    char args[512];
    snprintf(args, sizeof args, "-m %s --store redis://127.0.0.1:%d/0 --chunk 16 --store-timeout 300",
             kvt_model("stories260K.gguf"), redis.port);
    START(a, args);
    START(b, args);
    int st = 0;
    cJSON *oa = kvt_complete(a.port, kvt_prompts[0], &st);
    CHECK(st == 200 && kvt_wait_metric(a.port, "kvpack_store_chunks_written_total", 1) >= 1);
    cJSON *ob = kvt_complete(b.port, kvt_prompts[0], &st);
    cJSON *kb = cJSON_GetObjectItem(ob, "kvpack");
    double cached = cJSON_GetObjectItem(kb, "cached_tokens") ? cJSON_GetObjectItem(kb, "cached_tokens")->valuedouble : 0;
    CHECKF(st == 200 && !strcmp(kvt_field(kb, "reuse_source", NULL), "store") && cached >= 16,
           "server B: status %d, reuse %s, cached %g", st, kvt_field(kb, "reuse_source", NULL), cached);
    const char *ta = kvt_field(cJSON_GetArrayItem(cJSON_GetObjectItem(oa, "choices"), 0), "text", NULL);
    const char *tb = kvt_field(cJSON_GetArrayItem(cJSON_GetObjectItem(ob, "choices"), 0), "text", NULL);
    CHECKF(*ta && !strcmp(ta, tb), "A '%s', B '%s'", ta, tb);
    cJSON_Delete(oa);
    cJSON_Delete(ob);
    kvt_redis_stop(&redis); /* Redis dies mid-run */
    for (int i = 1; i < KVT_PROMPTS; i++) {
        cJSON *o = kvt_complete(i % 2 ? a.port : b.port, kvt_prompts[i], &st);
        CHECKF(st == 200, "status %d after Redis stopped", st);
        cJSON_Delete(o);
    }
    CHECK(kvt_wait_metric(a.port, "kvpack_store_errors_total", 1) >= 1);
    CHECK(kvt_serves(a.port) && kvt_serves(b.port));
    CHECK(kvt_serve_stop(&a) == 0 && kvt_serve_stop(&b) == 0);
}

#endif
