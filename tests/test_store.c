/*
 * test_store.c: context stores. Directory store: put/get semantics, atomic writes, LRU
 * eviction under a size cap, concurrent writers and readers in several processes (fork).
 * Through either store: prefix reuse (the longest stored prefix is loaded, bit-exact at the
 * lossless level), bad entries (corrupt, or another prompt's chunk under a key) never load.
 * Redis: a real server (KVP_TEST_REDIS=host:port, which .ci/run starts; else a redis-server
 * started here; else the tests fail), TTL, a server that is down or never answers (a clear
 * error within the timeout, never a hang).
 */
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/common.h"
#include "kvpack.h"
#include "test.h"

static void kvt_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A fresh, empty directory under /tmp. */
static const char *kvt_tmpdir(const char *tag) {
    static char path[128];
    snprintf(path, sizeof path, "/tmp/kvt-store-%s-%d-XXXXXX", tag, (int)getpid());
    return mkdtemp(path);
}

static void kvt_rmdir(const char *dir) {
    DIR *d = opendir(dir);
    for (struct dirent *e; d && (e = readdir(d));) {
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (e->d_name[0] != '.' || strlen(e->d_name) > 2) unlink(p);
    }
    if (d) closedir(d);
    rmdir(dir);
}

/* Files in dir whose names start with prefix. */
static int kvt_count_files(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) n += !strncmp(e->d_name, prefix, strlen(prefix));
    if (d) closedir(d);
    return n;
}

static void kvt_key(uint8_t key[16], int i) {
    memset(key, 0, 16);
    key[0] = (uint8_t)i, key[1] = (uint8_t)(i >> 8), key[15] = 0x5a;
}

/* The content stored under key i: `size` bytes that depend on i, so readers can check them. */
static void kvt_content(uint8_t *buf, size_t size, int i) {
    for (size_t j = 0; j < size; j++) buf[j] = (uint8_t)(i * 31 + j * 7);
}

TEST(store_dir_basic) {
    const char *dir = kvt_tmpdir("basic");
    CHECK(dir);
    kvp_store *s = NULL;
    CHECK_OK(kvp_store_open(dir, NULL, &s));
    uint8_t key[16], data[1000];
    kvt_key(key, 1);
    void *got = NULL;
    size_t n = 0;
    CHECK(kvp_store_has(s, key) == 0);
    CHECK(kvp_store_get(s, key, &got, &n) == KVP_ENOTFOUND);
    kvt_content(data, sizeof data, 1);
    CHECK_OK(kvp_store_put(s, key, data, sizeof data));
    CHECK(kvp_store_has(s, key) == 1);
    CHECK_OK(kvp_store_get(s, key, &got, &n));
    CHECK(n == sizeof data && !memcmp(got, data, n));
    free(got);
    uint64_t bytes = 0, entries = 0;
    CHECK_OK(kvp_store_usage(s, &bytes, &entries));
    CHECK(bytes == sizeof data && entries == 1);
    CHECK(kvt_count_files(dir, ".tmp") == 0); /* atomic writes leave no temporary file */
    kvp_store_free(s);
    char uri[256];
    snprintf(uri, sizeof uri, "dir:%s", dir);
    CHECK_OK(kvp_store_open(uri, NULL, &s)); /* the dir: form, and persistence */
    CHECK(kvp_store_has(s, key) == 1);
    kvp_store_free(s);
    CHECK(kvp_store_open("/proc/kvt-no-such/dir", NULL, &s) == KVP_ESTORE);
    CHECK(kvp_store_open("ftp://x", NULL, &s) == KVP_EINVAL);
    kvt_rmdir(dir);
}

TEST(store_dir_lru_eviction) {
    const char *dir = kvt_tmpdir("lru");
    CHECK(dir);
    kvp_store_params p = kvp_store_default_params();
    p.max_bytes = 3500; /* room for three entries of 1000 bytes */
    kvp_store *s = NULL;
    CHECK_OK(kvp_store_open(dir, &p, &s));
    uint8_t key[16], data[1000];
    void *got = NULL;
    size_t n = 0;
    for (int i = 0; i < 3; i++) {
        kvt_key(key, i);
        kvt_content(data, sizeof data, i);
        CHECK_OK(kvp_store_put(s, key, data, sizeof data));
        kvt_sleep_ms(30); /* file times have the kernel clock's granularity */
    }
    kvt_key(key, 0);
    CHECK_OK(kvp_store_get(s, key, &got, &n)); /* 0 becomes the most recently used */
    free(got);
    kvt_sleep_ms(30);
    kvt_key(key, 3);
    CHECK_OK(kvp_store_put(s, key, data, sizeof data)); /* over the cap: evicts 1, the oldest */
    int present[4];
    for (int i = 0; i < 4; i++) {
        kvt_key(key, i);
        present[i] = kvp_store_has(s, key);
    }
    CHECKF(present[0] == 1 && present[1] == 0 && present[2] == 1 && present[3] == 1, "present: %d %d %d %d",
           present[0], present[1], present[2], present[3]);
    uint64_t bytes = 0, entries = 0;
    CHECK_OK(kvp_store_usage(s, &bytes, &entries));
    CHECK(bytes <= p.max_bytes && entries == 3);
    kvp_store_free(s);
    kvt_rmdir(dir);
}

/* One writer process: puts keys [first, first + n) (sizes vary), reading others back. */
static int kvt_writer(const char *dir, uint64_t cap, int first, int n) {
    kvp_store_params p = kvp_store_default_params();
    p.max_bytes = cap;
    kvp_store *s = NULL;
    if (kvp_store_open(dir, &p, &s) < 0) return 1;
    uint8_t key[16], data[4096];
    for (int i = first; i < first + n; i++) {
        int k = i % 40; /* writers overlap on keys */
        size_t size = 500 + (size_t)(k * 97 % 3000);
        kvt_content(data, size, k);
        kvt_key(key, k);
        if (kvp_store_put(s, key, data, size) < 0) return 2;
        void *got = NULL;
        size_t gn = 0;
        kvt_key(key, (k + 7) % 40);
        int rc = kvp_store_get(s, key, &got, &gn);
        if (rc == KVP_OK) {
            kvt_content(data, gn, (k + 7) % 40);
            if (gn != 500 + (size_t)((k + 7) % 40 * 97 % 3000) || memcmp(got, data, gn)) return 3; /* torn */
        } else if (rc != KVP_ENOTFOUND) {
            return 4;
        }
        free(got);
    }
    kvp_store_free(s);
    return 0;
}

TEST(store_dir_concurrent_writers) {
    const char *dir = kvt_tmpdir("conc");
    CHECK(dir);
    uint64_t cap = 40000;
    pid_t kids[4];
    for (int k = 0; k < 4; k++) {
        kids[k] = fork();
        if (kids[k] == 0) _exit(kvt_writer(dir, cap, k * 13, 60));
        CHECK(kids[k] > 0);
    }
    for (int k = 0; k < 4; k++) {
        int st = 0;
        CHECK(waitpid(kids[k], &st, 0) == kids[k]);
        CHECKF(WIFEXITED(st) && WEXITSTATUS(st) == 0, "writer %d failed with %d", k, WEXITSTATUS(st));
    }
    kvp_store *s = NULL;
    CHECK_OK(kvp_store_open(dir, NULL, &s));
    uint64_t bytes = 0, entries = 0;
    CHECK_OK(kvp_store_usage(s, &bytes, &entries));
    CHECKF(bytes <= cap && entries > 0, "%llu bytes in %llu entries", (unsigned long long)bytes, (unsigned long long)entries);
    for (int k = 0; k < 40; k++) { /* every surviving entry is whole */
        uint8_t key[16], want[4096];
        void *got = NULL;
        size_t n = 0;
        kvt_key(key, k);
        int rc = kvp_store_get(s, key, &got, &n);
        CHECK(rc == KVP_OK || rc == KVP_ENOTFOUND);
        kvt_content(want, n, k);
        CHECK(rc != KVP_OK || (n == 500 + (size_t)(k * 97 % 3000) && !memcmp(got, want, n)));
        free(got);
    }
    CHECK(kvt_count_files(dir, ".tmp") == 0);
    kvp_store_free(s);
    kvt_rmdir(dir);
}

/* ---- contexts through a store ---- */

static kvp_ctx *kvt_store_ctx(kvp_model *m, const int *ids, int n) {
    kvp_ctx_params p = kvp_ctx_default_params();
    p.n_ctx = 512;
    kvp_ctx *c = NULL;
    if (kvp_ctx_new(m, &p, &c) < 0) return NULL;
    if (n > 0 && kvp_ctx_decode(c, ids, n, NULL, 0) < 0) {
        kvp_ctx_free(c);
        return NULL;
    }
    return c;
}

/* Prompt tokens: BOS then a deterministic sequence; `variant` changes token `at`. */
static void kvt_prompt(int *ids, int n, int variant, int at) {
    ids[0] = 1;
    for (int i = 1; i < n; i++) ids[i] = 3 + (i * 53) % 900;
    if (variant) ids[at] = 3 + (ids[at] + variant) % 900;
}

/* Saves 300 tokens (chunks of 64, lossless), then loads prompts that share 300, 150 or 0
 * tokens of it and checks how much is reused and that it is bit-exact. */
static void kvt_prefix_reuse(const char *uri, const kvp_store_params *sp) {
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("sotu-1M.gguf"), NULL, &m));
    int ids[400], other[400];
    kvt_prompt(ids, 400, 0, 0);
    kvp_ctx *c = kvt_store_ctx(m, ids, 300), *r = kvt_store_ctx(m, NULL, 0);
    kvp_store *s = NULL;
    CHECK(c && r);
    CHECK_OK(kvp_store_open(uri, sp, &s));
    kvp_save_params p = kvp_save_default_params();
    p.level = KVP_LEVEL_LOSSLESS;
    p.chunk_tokens = 64;
    int stored = -1, loaded = -1;
    CHECK_OK(kvp_context_save_store(c, ids, 300, &p, s, &stored));
    CHECK(stored == 4); /* 4 full chunks; the last 44 tokens are not a chunk */
    CHECK_OK(kvp_context_save_store(c, ids, 300, &p, s, &stored));
    CHECK(stored == 0); /* already there */
    CHECK_OK(kvp_context_load_store(r, s, ids, 400, 64, &loaded));
    CHECK(loaded == 256 && kvp_ctx_pos(r) == 256);
    size_t N = 4 * 2 * 256 * 64;
    float *a = malloc(N * 4), *b = malloc(N * 4);
    CHECK_OK(kvp_ctx_kv_read(c, 0, 256, a));
    CHECK_OK(kvp_ctx_kv_read(r, 0, 256, b));
    CHECK(!memcmp(a, b, N * 4));
    kvp_ctx_reset(r);
    kvt_prompt(other, 400, 5, 150); /* diverges at token 150: chunks 0 and 1 reused */
    CHECK_OK(kvp_context_load_store(r, s, other, 400, 64, &loaded));
    CHECK(loaded == 128);
    kvp_ctx_reset(r);
    kvt_prompt(other, 400, 5, 3); /* diverges in the first chunk */
    CHECK_OK(kvp_context_load_store(r, s, other, 400, 64, &loaded));
    CHECK(loaded == 0 && kvp_ctx_pos(r) == 0);
    CHECK_OK(kvp_context_load_store(r, s, ids, 400, 128, &loaded)); /* other chunk size: other keys */
    CHECK(loaded == 0);
    free(a), free(b);
    kvp_store_free(s);
    kvp_ctx_free(c), kvp_ctx_free(r);
    kvp_model_free(m);
}

TEST(store_dir_prefix_reuse) {
    const char *dir = kvt_tmpdir("prefix");
    CHECK(dir);
    kvt_prefix_reuse(dir, NULL);
    kvt_rmdir(dir);
}

/* Corrupt entries and another prompt's chunk filed under a key are refused; the chunks
 * before them stay loaded. */
TEST(store_dir_bad_entries) {
    const char *dir = kvt_tmpdir("bad");
    CHECK(dir);
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    int ids[200];
    kvt_prompt(ids, 200, 0, 0);
    for (int i = 1; i < 200; i++) ids[i] = 3 + ids[i] % 500;
    kvp_ctx *c = kvt_store_ctx(m, ids, 192), *r = kvt_store_ctx(m, NULL, 0);
    kvp_store *s = NULL;
    CHECK(c && r);
    CHECK_OK(kvp_store_open(dir, NULL, &s));
    kvp_save_params p = kvp_save_default_params();
    p.chunk_tokens = 64;
    CHECK_OK(kvp_context_save_store(c, ids, 192, &p, s, NULL));
    DIR *d = opendir(dir);
    char names[3][64];
    int k = 0;
    for (struct dirent *e; (e = readdir(d)) && k < 3;)
        if (strstr(e->d_name, ".kvc")) snprintf(names[k++], sizeof names[0], "%.40s", e->d_name);
    closedir(d);
    CHECK(k == 3);
    /* find which file holds the second chunk by loading after deleting each in turn */
    char path[3][700], saved[3][720];
    for (int i = 0; i < 3; i++) {
        snprintf(path[i], sizeof path[i], "%.200s/%.64s", dir, names[i]);
        snprintf(saved[i], sizeof saved[i], "%.200s/%.64s.keep", dir, names[i]);
    }
    int second = -1, loaded = 0;
    for (int i = 0; i < 3 && second < 0; i++) {
        CHECK(rename(path[i], saved[i]) == 0);
        kvp_ctx_reset(r);
        CHECK_OK(kvp_context_load_store(r, s, ids, 200, 64, &loaded));
        if (loaded == 64) second = i;
        CHECK(rename(saved[i], path[i]) == 0);
    }
    CHECK(second >= 0);
    void *data = NULL;
    size_t size = 0;
    CHECK_OK(kvp_read_file(path[second], &data, &size));
    ((uint8_t *)data)[size / 2] ^= 0x10; /* a flipped bit */
    FILE *f = fopen(path[second], "wb");
    CHECK(f && fwrite(data, 1, size, f) == size);
    fclose(f);
    kvp_ctx_reset(r);
    CHECK(kvp_context_load_store(r, s, ids, 200, 64, &loaded) == KVP_ECORRUPT);
    CHECK(loaded == 64 && kvp_ctx_pos(r) == 64);
    CHECK(strstr(kvp_errmsg(), "ending at token 128") != NULL);
    int other = (second + 1) % 3; /* another chunk's entry under the second chunk's key */
    CHECK(unlink(path[second]) == 0);
    CHECK(link(path[other], path[second]) == 0);
    kvp_ctx_reset(r);
    int rc = kvp_context_load_store(r, s, ids, 200, 64, &loaded);
    CHECKF(rc == KVP_EMISMATCH && loaded == 64, "%d, %d loaded (%s)", rc, loaded, kvp_errmsg());
    free(data);
    kvp_store_free(s);
    kvp_ctx_free(c), kvp_ctx_free(r);
    kvp_model_free(m);
    kvt_rmdir(dir);
}

/* ---- Redis ---- */

#ifdef KVP_HAVE_HIREDIS

static pid_t kvt_redis_pid;

static void kvt_redis_stop(void) {
    if (kvt_redis_pid > 0) kill(kvt_redis_pid, SIGTERM), waitpid(kvt_redis_pid, NULL, 0);
    kvt_redis_pid = 0;
}

/* Starts redis-server on a loopback port of its own; returns the port or 0. */
static int kvt_redis_start(void) {
    if (access("/usr/bin/redis-server", X_OK) != 0 && system("command -v redis-server >/dev/null 2>&1") != 0) return 0;
    int port = 21000 + (int)(getpid() % 20000);
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    kvt_redis_pid = fork();
    if (kvt_redis_pid == 0) {
        freopen("/dev/null", "w", stdout);
        execlp("redis-server", "redis-server", "--port", ps, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               (char *)NULL);
        _exit(127);
    }
    atexit(kvt_redis_stop);
    return port;
}

/* The redis:// URI of the test server, waiting up to 5 s for it to answer; NULL on failure
 * (after kvt_fail). */
static const char *kvt_redis_uri(void) {
    static char uri[128];
    static int ready;
    if (ready) return uri;
    const char *env = getenv("KVP_TEST_REDIS");
    int port = 0;
    if (env && *env) snprintf(uri, sizeof uri, "redis://%s/15", env);
    else if ((port = kvt_redis_start())) snprintf(uri, sizeof uri, "redis://127.0.0.1:%d/15", port);
    else {
        kvt_fail(__FILE__, __LINE__, "no Redis server: set KVP_TEST_REDIS=host:port or install redis-server");
        return NULL;
    }
    kvp_store_params p = kvp_store_default_params();
    p.timeout_ms = 300;
    for (int i = 0; i < 50; i++, kvt_sleep_ms(100)) {
        kvp_store *s = NULL;
        if (kvp_store_open(uri, &p, &s) == KVP_OK) {
            kvp_store_free(s);
            ready = 1;
            return uri;
        }
    }
    kvt_fail(__FILE__, __LINE__, "Redis server %s does not answer: %s", uri, kvp_errmsg());
    return NULL;
}

/* A store whose keys are unique to this run. */
static kvp_store *kvt_redis_store(int ttl) {
    const char *uri = kvt_redis_uri();
    static char prefix[64];
    snprintf(prefix, sizeof prefix, "kvt:%d:%ld:", (int)getpid(), (long)time(NULL));
    kvp_store_params p = kvp_store_default_params();
    p.ttl_seconds = ttl;
    p.prefix = prefix;
    kvp_store *s = NULL;
    if (uri && kvp_store_open(uri, &p, &s) < 0) kvt_fail(__FILE__, __LINE__, "%s", kvp_errmsg());
    return s;
}

TEST(store_redis_basic) {
    kvp_store *s = kvt_redis_store(0);
    CHECK(s);
    uint8_t key[16], data[100000];
    kvt_key(key, 77);
    kvt_content(data, sizeof data, 77);
    void *got = NULL;
    size_t n = 0;
    CHECK(kvp_store_has(s, key) == 0);
    CHECK(kvp_store_get(s, key, &got, &n) == KVP_ENOTFOUND);
    CHECK_OK(kvp_store_put(s, key, data, sizeof data));
    CHECK(kvp_store_has(s, key) == 1);
    CHECK_OK(kvp_store_get(s, key, &got, &n));
    CHECK(n == sizeof data && !memcmp(got, data, n));
    free(got);
    uint64_t b, e;
    CHECK(kvp_store_usage(s, &b, &e) == KVP_EUNSUPPORTED);
    kvp_store_free(s);
}

TEST(store_redis_ttl) {
    kvp_store *s = kvt_redis_store(1);
    CHECK(s);
    uint8_t key[16] = {9, 9, 9};
    CHECK_OK(kvp_store_put(s, key, "abc", 3));
    CHECK(kvp_store_has(s, key) == 1);
    kvt_sleep_ms(2200);
    CHECK(kvp_store_has(s, key) == 0);
    kvp_store_free(s);
}

TEST(store_redis_prefix_reuse) {
    const char *uri = kvt_redis_uri();
    CHECK(uri);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "kvt:%d:%ld:reuse:", (int)getpid(), (long)time(NULL));
    kvp_store_params p = kvp_store_default_params();
    p.prefix = prefix; /* keys of this run only: the test expects an empty store */
    kvt_prefix_reuse(uri, &p);
}

TEST(store_redis_down_is_an_error_not_a_hang) {
    kvp_store_params p = kvp_store_default_params();
    p.timeout_ms = 500;
    kvp_store *s = NULL;
    double t0 = kvp_now();
    int rc = kvp_store_open("redis://127.0.0.1:1/0", &p, &s); /* nothing listens on port 1 */
    CHECKF(rc == KVP_ESTORE || rc == KVP_ETIMEOUT, "%d (%s)", rc, kvp_errmsg());
    CHECK(kvp_now() - t0 < 2.0);
    CHECK(strstr(kvp_errmsg(), "127.0.0.1:1") != NULL);
    CHECK(kvp_store_open("redis://:6379/0", &p, &s) == KVP_EINVAL);
    CHECK(kvp_store_open("redis://h:99999/0", &p, &s) == KVP_EINVAL);
}

/* A server that accepts connections but never answers: every command times out. */
TEST(store_redis_silent_server_times_out) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 8) == 0);
    CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0);
    char uri[64];
    snprintf(uri, sizeof uri, "redis://127.0.0.1:%d/0", ntohs(a.sin_port));
    kvp_store_params p = kvp_store_default_params();
    p.timeout_ms = 300;
    kvp_store *s = NULL;
    CHECK_OK(kvp_store_open(uri, &p, &s)); /* db 0 sends nothing at connect */
    uint8_t key[16] = {1};
    void *got = NULL;
    size_t n = 0;
    double t0 = kvp_now();
    int rc = kvp_store_get(s, key, &got, &n);
    CHECKF(rc == KVP_ETIMEOUT, "%d (%s)", rc, kvp_errmsg());
    CHECK(kvp_now() - t0 < 2.0);
    kvp_model *m = NULL;
    CHECK_OK(kvp_model_load(kvt_model("stories260K.gguf"), NULL, &m));
    int ids[300], loaded = -1;
    kvt_prompt(ids, 300, 0, 0);
    for (int i = 1; i < 300; i++) ids[i] = 3 + ids[i] % 500;
    kvp_ctx *c = kvt_store_ctx(m, NULL, 0);
    rc = kvp_context_load_store(c, s, ids, 300, 64, &loaded);
    CHECK(rc == KVP_ETIMEOUT || rc == KVP_ESTORE); /* the caller recomputes; nothing was loaded */
    CHECK(loaded == 0 && kvp_ctx_pos(c) == 0);
    kvp_ctx_free(c);
    kvp_model_free(m);
    kvp_store_free(s);
    close(fd);
}

#else

TEST(store_redis_without_hiredis) {
    const char *env = getenv("KVP_TEST_REDIS");
    CHECKF(!env || !*env, "KVP_TEST_REDIS is set but this kvpack was built without hiredis (install libhiredis-dev)");
    kvp_store *s = NULL;
    CHECK(kvp_store_open("redis://127.0.0.1:6379/0", NULL, &s) == KVP_EUNSUPPORTED);
    CHECK(strstr(kvp_errmsg(), "hiredis") != NULL);
    printf("note: built without hiredis: the Redis store tests against a real server are not compiled in\n");
}

#endif
