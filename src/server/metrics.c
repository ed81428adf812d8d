/*
 * metrics.c: the server's counters, gauges and latency histograms, rendered in the
 * Prometheus text exposition format (version 0.0.4) for GET /metrics.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "srv_internal.h"

/* Upper bounds (seconds) of the histogram buckets; the last bucket is +Inf. */
static const double kvp_hist_bounds[KVP_HIST_BUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                         1,     2.5,  5,     10,   30,  60,   120};

void kvp_metrics_init(kvp_metrics *m) {
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
}

void kvp_metrics_destroy(kvp_metrics *m) { pthread_mutex_destroy(&m->mu); }

void kvp_hist_add(kvp_hist *h, double seconds) {
    int b = 0;
    while (b < KVP_HIST_BUCKETS && seconds > kvp_hist_bounds[b]) b++;
    h->counts[b]++;
    h->sum += seconds;
    h->n++;
}

static void kvp_put_hist(FILE *f, const char *name, const char *help, const kvp_hist *h) {
    fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int b = 0; b < KVP_HIST_BUCKETS; b++) {
        cum += h->counts[b];
        fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, kvp_hist_bounds[b], (unsigned long long)cum);
    }
    fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name, (unsigned long long)h->n, name, h->sum,
            name, (unsigned long long)h->n);
}

static void kvp_put(FILE *f, const char *name, const char *type, const char *help, uint64_t v) {
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name, type, name, (unsigned long long)v);
}

static void kvp_put_http(FILE *f, const kvp_metrics *m) {
    fputs("# HELP kvpack_http_requests_total HTTP requests answered, by endpoint and status.\n"
          "# TYPE kvpack_http_requests_total counter\n", f);
    for (int i = 0; i < m->n_req; i++)
        fprintf(f, "kvpack_http_requests_total{endpoint=\"%s\",status=\"%d\"} %llu\n", m->req[i].endpoint,
                m->req[i].status, (unsigned long long)m->req[i].n);
    kvp_put_hist(f, "kvpack_http_request_duration_seconds", "Time from a request's arrival to its last byte.",
                 &m->http_seconds);
}

static void kvp_put_tokens(FILE *f, const kvp_metrics *m) {
    kvp_put(f, "kvpack_requests_total", "counter", "Generation requests finished (any outcome).", m->jobs);
    kvp_put(f, "kvpack_requests_cancelled_total", "counter", "Requests whose client went away before the end.",
            m->cancelled);
    kvp_put(f, "kvpack_prompt_tokens_total", "counter", "Prompt tokens of admitted requests.", m->prompt_tokens);
    kvp_put(f, "kvpack_prefill_tokens_total", "counter", "Prompt tokens computed by prefill.", m->prefilled);
    fputs("# HELP kvpack_prefill_tokens_saved_total Prompt tokens reused instead of prefilled, by source.\n"
          "# TYPE kvpack_prefill_tokens_saved_total counter\n", f);
    for (int i = KVP_SRV_REUSE_IDLE; i <= KVP_SRV_REUSE_STORE; i++)
        fprintf(f, "kvpack_prefill_tokens_saved_total{source=\"%s\"} %llu\n", kvp_srv_reuse_name(i),
                (unsigned long long)m->reused[i]);
    kvp_put(f, "kvpack_completion_tokens_total", "counter", "Tokens generated.", m->generated);
    kvp_put(f, "kvpack_decode_steps_total", "counter", "Decode forward passes (one per round when batched).",
            m->decode_steps);
    kvp_put(f, "kvpack_decode_tokens_total", "counter", "Session tokens fed by decode passes (/ steps = mean batch).",
            m->decode_rows);
}

static void kvp_put_memory(FILE *f, const kvp_metrics *m, uint64_t kv_memory) {
    fprintf(f, "# HELP kvpack_kv_bytes KV cache bytes held, hot (contexts) and cold (encoded in memory).\n"
               "# TYPE kvpack_kv_bytes gauge\nkvpack_kv_bytes{tier=\"hot\"} %llu\nkvpack_kv_bytes{tier=\"cold\"} %llu\n",
            (unsigned long long)m->kv_hot, (unsigned long long)m->kv_cold);
    kvp_put(f, "kvpack_kv_memory_limit_bytes", "gauge", "The KV memory budget (--kv-memory; 0 = none).", kv_memory);
    fprintf(f, "# HELP kvpack_cache_evictions_total Idle caches pushed out by the budget: compressed into the cold "
               "tier, or dropped.\n# TYPE kvpack_cache_evictions_total counter\n"
               "kvpack_cache_evictions_total{action=\"compressed\"} %llu\nkvpack_cache_evictions_total{action=\"dropped\"} %llu\n",
            (unsigned long long)m->compressed, (unsigned long long)m->dropped);
    kvp_put(f, "kvpack_sessions_active", "gauge", "Sessions prefilling or decoding.", (uint64_t)m->sessions);
    kvp_put(f, "kvpack_requests_queued", "gauge", "Requests waiting for a session.", (uint64_t)m->queued);
    kvp_put(f, "kvpack_contexts_idle", "gauge", "Idle contexts kept for their caches.", (uint64_t)m->idle);
    kvp_put(f, "kvpack_cold_entries", "gauge", "Caches encoded in the cold tier.", (uint64_t)m->cold_entries);
}

static void kvp_put_store(FILE *f, const kvp_metrics *m) {
    kvp_put(f, "kvpack_store_hits_total", "counter", "Chunks loaded from the context store.", m->store_hits);
    kvp_put(f, "kvpack_store_misses_total", "counter", "Store lookups that found no further chunk.", m->store_misses);
    kvp_put(f, "kvpack_store_errors_total", "counter", "Store calls that failed (each starts a back-off).",
            m->store_errors);
    kvp_put(f, "kvpack_store_chunks_written_total", "counter", "Chunks written to the context store.", m->store_written);
}

static void kvp_put_latency(FILE *f, const kvp_metrics *m) {
    kvp_put_hist(f, "kvpack_time_to_first_token_seconds", "Time from a request's submission to its first token.",
                 &m->ttft);
    kvp_put_hist(f, "kvpack_queue_wait_seconds", "Time a request waited for a session.", &m->queue_wait);
    kvp_put_hist(f, "kvpack_request_duration_seconds", "Time from a request's submission to its end.",
                 &m->job_seconds);
}

char *kvp_metrics_render(kvp_metrics *m, uint64_t kv_memory) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    pthread_mutex_lock(&m->mu);
    kvp_put_http(f, m);
    kvp_put_tokens(f, m);
    kvp_put_memory(f, m, kv_memory);
    kvp_put_store(f, m);
    kvp_put_latency(f, m);
    pthread_mutex_unlock(&m->mu);
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}
