/*
 * test_serve.c: the serving engine (src/server) without HTTP, on stories260K: greedy
 * answers equal `kvpack run --temp 0`, prefixes reused from an idle context, a running
 * session, the cold tier and a directory store give the same answers, stop strings,
 * cancellation, the queue limit and the KV budget, UTF-8 helpers and the metrics text.
 */
#include <unistd.h>

#include "kvpack.h"
#include "serve/serve_test.h"
#include "server/server.h"
#include "test.h"

/* A story prefix of about 100 tokens shared by the prompts below. */
static const char kvt_story[] =
    "Once upon a time, there was a little girl named Mia. She lived in a small house near a big green park. "
    "Every morning, Mia went to the park with her mom. She liked to run on the grass and look at the birds.";

static int *kvt_tok(const kvp_model *m, const char *text, int *n) {
    int *ids = malloc(sizeof(int) * (strlen(text) + 16));
    if (ids && kvp_tokenize(m, text, strlen(text), 1, ids, (int)strlen(text) + 16, n) < 0) {
        free(ids);
        ids = NULL;
    }
    return ids;
}

/* Submits text (greedy, max tokens) and waits for the end; v receives the job's result. */
static int kvt_job(kvp_srv *s, const char *text, int max, const char *stop, int no_reuse, kvp_srv_view *v) {
    int n = 0, err = 0, *ids = kvt_tok(kvp_srv_model(s), text, &n);
    const char *stops[1] = {stop};
    kvp_srv_req r = {ids, n, max, {0, 0, 1, 1}, stops, stop ? 1 : 0, -1, 0, no_reuse, NULL, NULL, NULL};
    kvp_srv_job *j = NULL;
    int rc = ids ? kvp_srv_submit(s, &r, &j, &err) : -1;
    free(ids);
    if (rc < 0) return rc;
    for (int i = 0; i < 600; i++) {
        kvp_srv_status st;
        kvp_srv_job_status(j, &st);
        if (st.finish != KVP_SRV_RUNNING) break;
        kvp_srv_job_wait(j, st.n_tokens, st.text_len, st.admitted, 100);
    }
    rc = kvp_srv_job_view(j, 0, 0, v);
    kvp_srv_job_release(j);
    return rc;
}

static kvp_srv *kvt_engine(kvp_model *m, kvp_srv_params *p) {
    kvp_srv *s = NULL;
    return kvp_srv_new(m, p, &s) == KVP_OK ? s : NULL;
}

TEST(serve_engine_greedy_and_reuse) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    kvp_srv_params p = kvp_srv_default_params();
    kvp_srv *s = kvt_engine(m, &p);
    CHECK(s);
    char *want = kvt_run_greedy(kvt_model("stories260K.gguf"), kvt_story, 40);
    kvp_srv_view v;
    int ok = want && kvt_job(s, kvt_story, 40, NULL, 0, &v) == KVP_OK;
    CHECKF(ok, "%s", kvp_errmsg());
    CHECKF(!strcmp(v.text, want), "engine: '%s'\nrun:    '%s'", v.text, want);
    CHECK(v.st.finish == KVP_SRV_FINISH_LENGTH && v.st.n_tokens == 40 && v.st.n_cached == 0);
    kvp_srv_view_free(&v);
    /* the same prompt again: all but its last token come from the idle context */
    CHECK_OK(kvt_job(s, kvt_story, 40, NULL, 0, &v));
    CHECK(!strcmp(v.text, want) && v.st.reuse == KVP_SRV_REUSE_IDLE && v.st.n_cached == v.st.n_prompt - 1);
    kvp_srv_view_free(&v);
    /* no_reuse: prefilled from scratch, same answer */
    CHECK_OK(kvt_job(s, kvt_story, 40, NULL, 1, &v));
    CHECK(!strcmp(v.text, want) && v.st.n_cached == 0);
    kvp_srv_view_free(&v);
    free(want);
    kvp_srv_free(s);
    kvp_model_free(m);
}

TEST(serve_engine_stop_string) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    kvp_srv_params p = kvp_srv_default_params();
    kvp_srv *s = kvt_engine(m, &p);
    CHECK(s);
    char *full = kvt_run_greedy(kvt_model("stories260K.gguf"), "Once upon a time", 40);
    CHECK(full && strstr(full, "Lily"));
    kvp_srv_view v;
    CHECK_OK(kvt_job(s, "Once upon a time", 40, "Lily", 0, &v));
    size_t at = (size_t)(strstr(full, "Lily") - full);
    CHECKF(strlen(v.text) == at && !strncmp(v.text, full, at), "got '%s'", v.text);
    CHECK(v.st.finish == KVP_SRV_FINISH_STOP);
    kvp_srv_view_free(&v);
    free(full);
    kvp_srv_free(s);
    kvp_model_free(m);
}

/* A session that runs while another with the same prefix arrives: the prefix is copied. */
TEST(serve_engine_copy_from_running_session) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    kvp_srv_params p = kvp_srv_default_params();
    kvp_srv *s = kvt_engine(m, &p);
    CHECK(s);
    int n = 0, err = 0, *ids = kvt_tok(m, kvt_story, &n);
    CHECK(ids);
    char prompt[1024]; /* the expected text first: the long session must still run after it */
    snprintf(prompt, sizeof prompt, "%s One day, Mia saw", kvt_story);
    char *want = kvt_run_greedy(kvt_model("stories260K.gguf"), prompt, 24);
    kvp_srv_req r = {ids, n, 380, {0, 0, 1, 1}, NULL, 0, -1, 1, 0, NULL, NULL, NULL};
    kvp_srv_job *long_job = NULL;
    CHECK_OK(kvp_srv_submit(s, &r, &long_job, &err));
    kvp_srv_status st = {0};
    for (int i = 0; i < 100 && st.n_tokens == 0; i++) {
        kvp_srv_job_wait(long_job, 0, 0, 1, 100);
        kvp_srv_job_status(long_job, &st);
    }
    kvp_srv_view v;
    CHECK_OK(kvt_job(s, prompt, 24, NULL, 0, &v));
    kvp_srv_job_status(long_job, &st);
    CHECKF(st.finish == KVP_SRV_RUNNING, "the long session ended too early (%d tokens)", st.n_tokens);
    CHECKF(v.st.reuse == KVP_SRV_REUSE_COPY && v.st.n_cached >= n - 2, "reuse %d, cached %d of %d", v.st.reuse,
           v.st.n_cached, v.st.n_prompt);
    CHECKF(want && !strcmp(v.text, want), "engine '%s'\nrun    '%s'", v.text, want ? want : "(null)");
    kvp_srv_view_free(&v);
    kvp_srv_job_release(long_job); /* cancels it */
    kvp_srv_stats ss;
    for (int i = 0; i < 100; i++) {
        kvp_srv_get_stats(s, &ss);
        if (ss.cancelled == 1 && ss.sessions == 0) break;
        usleep(20000);
    }
    CHECK(ss.cancelled == 1 && ss.sessions == 0);
    free(want);
    free(ids);
    kvp_srv_free(s);
    kvp_model_free(m);
}

/* A budget too small for two F16 caches: the older goes to the cold tier (medium level,
 * about 5 bits per value) and comes back from it with the same greedy answer. */
TEST(serve_engine_budget_cold_tier) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    kvp_srv_params p = kvp_srv_default_params();
    const kvp_model_info *in = kvp_model_get_info(m);
    uint64_t bpt = 2ull * in->n_layers * in->n_kv_heads * in->head_dim * 2; /* F16 bytes per position */
    p.kv_memory = bpt * 208; /* one session of ~100 + 40 positions and a cold entry, not two sessions */
    p.cold_level = KVP_LEVEL_MEDIUM;
    kvp_srv *s = kvt_engine(m, &p);
    CHECK(s);
    char other[512];
    snprintf(other, sizeof other, "Lily and Tom were playing with a red ball in the garden. %s", kvt_story);
    char *want = kvt_run_greedy(kvt_model("stories260K.gguf"), kvt_story, 40);
    kvp_srv_view v;
    CHECK_OK(kvt_job(s, kvt_story, 40, NULL, 0, &v));
    kvp_srv_view_free(&v);
    CHECK_OK(kvt_job(s, other, 40, NULL, 0, &v));
    kvp_srv_view_free(&v);
    kvp_srv_stats st;
    kvp_srv_get_stats(s, &st);
    CHECKF(st.compressed >= 1 && st.kv_hot + st.kv_cold <= p.kv_memory, "compressed %llu, dropped %llu, hot %llu, cold %llu",
           (unsigned long long)st.compressed, (unsigned long long)st.dropped, (unsigned long long)st.kv_hot,
           (unsigned long long)st.kv_cold);
    CHECK_OK(kvt_job(s, kvt_story, 40, NULL, 0, &v));
    CHECKF(v.st.reuse == KVP_SRV_REUSE_COLD && v.st.n_cached == v.st.n_prompt - 1, "reuse %s, cached %d",
           kvp_srv_reuse_name(v.st.reuse), v.st.n_cached);
    CHECK(want && !strcmp(v.text, want));
    kvp_srv_view_free(&v);
    free(want);
    kvp_srv_free(s);
    kvp_model_free(m);
}

/* A directory store: a second engine (a restarted server) loads the first one's chunks. */
TEST(serve_engine_dir_store) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    char dir[64], uri[80];
    snprintf(dir, sizeof dir, "/tmp/kvt_serve_store_%d", (int)getpid());
    snprintf(uri, sizeof uri, "dir:%s", dir);
    kvp_srv_params p = kvp_srv_default_params();
    p.store = uri;
    p.chunk_tokens = 32;
    kvp_srv *s = kvt_engine(m, &p);
    CHECK(s);
    kvp_srv_view v;
    CHECK_OK(kvt_job(s, kvt_story, 24, NULL, 0, &v));
    kvp_srv_view_free(&v);
    kvp_srv_stats st;
    kvp_srv_get_stats(s, &st);
    CHECKF(st.store_chunks_written >= 2, "wrote %llu chunks", (unsigned long long)st.store_chunks_written);
    kvp_srv_free(s);
    s = kvt_engine(m, &p);
    CHECK(s);
    CHECK_OK(kvt_job(s, kvt_story, 24, NULL, 0, &v));
    char *want = kvt_run_greedy(kvt_model("stories260K.gguf"), kvt_story, 24);
    CHECKF(v.st.reuse == KVP_SRV_REUSE_STORE && v.st.n_cached > 0 && v.st.n_cached % 32 == 0, "reuse %s, cached %d",
           kvp_srv_reuse_name(v.st.reuse), v.st.n_cached);
    CHECK(want && !strcmp(v.text, want));
    kvp_srv_get_stats(s, &st);
    CHECK(st.store_hits == (uint64_t)v.st.n_cached / 32 && st.store_errors == 0);
    kvp_srv_view_free(&v);
    free(want);
    kvp_srv_free(s);
    kvp_model_free(m);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0);
}

TEST(serve_engine_limits) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    kvp_srv_params p = kvp_srv_default_params();
    p.max_sessions = 1;
    p.max_queue = 1;
    kvp_srv *s = kvt_engine(m, &p);
    CHECK(s);
    int n = 0, err = 0, *ids = kvt_tok(m, "Once upon a time", &n);
    kvp_srv_req r = {ids, n, 500, {0, 0, 1, 1}, NULL, 0, -1, 1, 0, NULL, NULL, NULL};
    kvp_srv_job *j[3] = {NULL, NULL, NULL};
    CHECK_OK(kvp_srv_submit(s, &r, &j[0], &err));
    for (int i = 0; i < 100; i++) { /* wait until the first holds the session */
        kvp_srv_status st;
        kvp_srv_job_status(j[0], &st);
        if (st.admitted) break;
        usleep(10000);
    }
    CHECK_OK(kvp_srv_submit(s, &r, &j[1], &err));
    int rc = kvp_srv_submit(s, &r, &j[2], &err);
    CHECKF(rc < 0 && err == KVP_SRV_EBUSY && strstr(kvp_errmsg(), "over capacity"), "rc %d err %d: %s", rc, err, kvp_errmsg());
    int big[600] = {0};
    kvp_srv_req longer = {big, 600, 1, {0, 0, 1, 1}, NULL, 0, -1, 0, 0, NULL, NULL, NULL};
    rc = kvp_srv_submit(s, &longer, &j[2], &err);
    CHECK(rc < 0 && err == KVP_SRV_ETOOLONG);
    kvp_srv_req bad = r;
    bad.kv = "no-such-cache";
    kvp_srv_job_release(j[0]);
    kvp_srv_job_release(j[1]);
    kvp_srv_stats ss = {0};
    for (int i = 0; i < 200; i++) { /* both cancelled: the queue drains */
        kvp_srv_get_stats(s, &ss);
        if (ss.cancelled == 2) break;
        usleep(10000);
    }
    CHECK(ss.cancelled == 2);
    kvp_srv_view v;
    CHECK_OK(kvp_srv_submit(s, &bad, &j[2], &err));
    for (int i = 0; i < 200; i++) {
        kvp_srv_status st;
        kvp_srv_job_status(j[2], &st);
        if (st.finish) break;
        kvp_srv_job_wait(j[2], 0, 0, st.admitted, 50);
    }
    CHECK_OK(kvp_srv_job_view(j[2], 0, 0, &v));
    CHECKF(v.st.finish == KVP_SRV_FINISH_ERROR && v.st.error == KVP_SRV_EBADREQ && strstr(v.st.message, "no-such-cache"),
           "finish %d error %d: %s", v.st.finish, v.st.error, v.st.message);
    kvp_srv_view_free(&v);
    kvp_srv_job_release(j[2]);
    free(ids);
    kvp_srv_free(s);
    kvp_model_free(m);
}

TEST(serve_engine_metrics_text) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    kvp_srv_params p = kvp_srv_default_params();
    kvp_srv *s = kvt_engine(m, &p);
    CHECK(s);
    kvp_srv_view v;
    CHECK_OK(kvt_job(s, kvt_story, 8, NULL, 0, &v));
    kvp_srv_view_free(&v);
    CHECK_OK(kvt_job(s, kvt_story, 8, NULL, 0, &v));
    kvp_srv_view_free(&v);
    kvp_srv_note_request(s, "/v1/completions", 200, 0.01);
    char *t = kvp_srv_metrics(s);
    CHECK(t);
    CHECK(kvt_metric(t, "kvpack_requests_total") == 2 && kvt_metric(t, "kvpack_completion_tokens_total") == 16);
    CHECK(kvt_metric(t, "kvpack_prefill_tokens_saved_total{source=\"idle\"}") == v.st.n_prompt - 1);
    CHECK(kvt_metric(t, "kvpack_http_requests_total{endpoint=\"/v1/completions\",status=\"200\"}") == 1);
    CHECK(kvt_metric(t, "kvpack_time_to_first_token_seconds_count") == 2);
    CHECK(kvt_metric(t, "kvpack_time_to_first_token_seconds_bucket{le=\"+Inf\"}") == 2);
    CHECK(kvt_metric(t, "kvpack_kv_bytes{tier=\"hot\"}") > 0 && kvt_metric(t, "kvpack_kv_bytes{tier=\"cold\"}") == 0);
    CHECK(strstr(t, "# TYPE kvpack_time_to_first_token_seconds histogram\n"));
    free(t);
    kvp_srv_free(s);
    kvp_model_free(m);
}

TEST(serve_utf8_helpers) {
    char out[64];
    CHECK(kvp_utf8_complete("ab\xc3", 3) == 2);             /* a 2-byte sequence cut after its lead */
    CHECK(kvp_utf8_complete("ab\xe2\x82", 4) == 2);         /* a 3-byte one after two bytes */
    CHECK(kvp_utf8_complete("ab\xe2\x82\xac", 5) == 5);     /* complete */
    CHECK(kvp_utf8_complete("ab\xff", 3) == 3);             /* invalid: nothing to wait for */
    CHECK(kvp_utf8_sanitize("a\xff" "b", 3, out) == 5 && !strcmp(out, "a\xef\xbf\xbd" "b"));
    CHECK(kvp_utf8_sanitize("\xc3\xa9", 2, out) == 2 && !strcmp(out, "\xc3\xa9"));
    CHECK(kvp_utf8_sanitize("\xed\xa0\x80", 3, out) == 9); /* a surrogate: three bad bytes */
}

/* Submits the n prompts at once and waits for every answer (texts malloc'ed into out). */
static int kvt_jobs_together(kvp_srv *s, const char *const *prompts, const char *const *kv, int n, int max, char **out) {
    kvp_srv_job *j[8] = {0};
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        int nt = 0, err = 0, *ids = kvt_tok(kvp_srv_model(s), prompts[i], &nt);
        kvp_srv_req r = {ids, nt, max, {0, 0, 1, 1}, NULL, 0, -1, 1, 0, kv[i], NULL, NULL};
        rc = ids ? kvp_srv_submit(s, &r, &j[i], &err) : -1;
        free(ids);
    }
    for (int i = 0; i < n; i++) {
        kvp_srv_status st = {0};
        for (int k = 0; j[i] && k < 600; k++) {
            kvp_srv_job_status(j[i], &st);
            if (st.finish != KVP_SRV_RUNNING) break;
            kvp_srv_job_wait(j[i], st.n_tokens, st.text_len, st.admitted, 100);
        }
        kvp_srv_view v;
        out[i] = j[i] && kvp_srv_job_view(j[i], 0, 0, &v) == KVP_OK ? strdup(v.text) : NULL;
        if (out[i]) {
            if (v.st.finish != KVP_SRV_FINISH_LENGTH || v.st.n_tokens != max) rc = -1;
            kvp_srv_view_free(&v);
        }
        if (!out[i]) rc = -1;
        kvp_srv_job_release(j[i]);
    }
    return rc;
}

/* Sessions of different prompt lengths and caches (f16, f32, k4v4) decoding at the same
 * time: stepped together in batched forward passes, they give the answers they give when
 * each session's step is its own forward pass, and the F16 ones equal `kvpack run`. */
TEST(serve_engine_batched_decode) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    static const char *const prompts[6] = {
        "Once upon a time", "Lily and Tom were playing in the park with a big red ball when it started to rain.",
        kvt_story, "One day, a little bird", "Tom had a dog. The dog was big and brown. Every day they", "Mia saw",
    };
    static const char *const kv[6] = {NULL, "f32", NULL, "k4v4", NULL, "f32"};
    char *got[2][6] = {{0}};
    kvp_srv_stats st[2];
    for (int serial = 0; serial < 2; serial++) {
        kvp_srv_params p = kvp_srv_default_params();
        p.max_sessions = 6;
        p.serial_decode = serial;
        kvp_srv *s = kvt_engine(m, &p);
        CHECK(s);
        int rc = kvt_jobs_together(s, prompts, kv, 6, 48, got[serial]);
        kvp_srv_get_stats(s, &st[serial]);
        kvp_srv_free(s);
        CHECKF(rc == 0, "serial %d: a job failed", serial);
    }
    for (int i = 0; i < 6; i++) {
        CHECKF(!strcmp(got[0][i], got[1][i]), "prompt %d: batched '%s'\nserial  '%s'", i, got[0][i], got[1][i]);
        if (!kv[i]) {
            char *want = kvt_run_greedy(kvt_model("stories260K.gguf"), prompts[i], 48);
            CHECKF(want && !strcmp(want, got[0][i]), "prompt %d: batched '%s'\nrun     '%s'", i, got[0][i], want);
            free(want);
        }
        free(got[0][i]);
        free(got[1][i]);
    }
    /* every fed token went through a decode pass; batched, several per pass */
    CHECK(st[0].decode_tokens == st[1].decode_tokens && st[1].decode_steps == st[1].decode_tokens);
    CHECKF(st[0].decode_steps * 2 < st[0].decode_tokens, "batched: %llu passes for %llu tokens",
           (unsigned long long)st[0].decode_steps, (unsigned long long)st[0].decode_tokens);
    kvp_model_free(m);
}
