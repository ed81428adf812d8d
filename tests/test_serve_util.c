/*
 * test_serve_util.c: helpers of the `kvpack serve` tests (tests/serve/serve_test.h).
 * Servers are child processes bound to 127.0.0.1 on ports derived from the PID; they get
 * SIGTERM if the test process dies, and every network call has a deadline.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef KVP_HAVE_CJSON
#include <cJSON.h>
#endif

#include "serve/serve_test.h"

static double kvt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void kvt_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int kvt_port(void) {
    static int counter;
    return 20000 + (int)((getpid() * 7 + 13 * counter++) % 40000);
}

/* ---- processes ---- */

/* Forks `sh -c "exec CMD"` with stdout and stderr to log; the child dies with us. */
static pid_t kvt_spawn(const char *cmd, const char *log) {
    pid_t pid = fork();
    if (pid != 0) return pid;
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    if (!getenv("ASAN_OPTIONS")) setenv("ASAN_OPTIONS", "quarantine_size_mb=1", 1); /* a small quarantine: flat memory under ASan too */
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    _exit(127);
}

/* Waits at most `secs` for pid to end; its exit status, or -2 when it is still running. */
static int kvt_wait_exit(pid_t pid, double secs) {
    double end = kvt_now() + secs;
    int st = 0;
    do {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        if (r < 0) return -1;
        kvt_sleep_ms(20);
    } while (kvt_now() < end);
    return -2;
}

static const char *kvt_cli_path(void) {
    const char *cli = getenv("KVP_CLI");
    return cli && *cli ? cli : "build/kvpack";
}

int kvt_serve_start(kvt_server *s, const char *args) {
    s->port = kvt_port();
    snprintf(s->log, sizeof s->log, "/tmp/kvt_serve_%d_%d.log", (int)getpid(), s->port);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "exec %s serve %s --port %d", kvt_cli_path(), args, s->port);
    if ((s->pid = kvt_spawn(cmd, s->log)) < 0) return -1;
    for (double end = kvt_now() + 60; kvt_now() < end; kvt_sleep_ms(50)) {
        if (kvt_wait_exit(s->pid, 0) != -2) return s->pid = 0, -1;
        kvt_resp r;
        int ok = kvt_http(s->port, "GET", "/health", NULL, 2, &r) == 0 && r.status == 200;
        kvt_resp_free(&r);
        if (ok) return 0;
    }
    kvt_serve_stop(s);
    return -1;
}

int kvt_serve_stop(kvt_server *s) {
    if (s->pid <= 0) return -1;
    kill(s->pid, SIGTERM);
    int rc = kvt_wait_exit(s->pid, 20);
    if (rc == -2) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        rc = -1;
    }
    s->pid = 0;
    return rc;
}

const char *kvt_serve_log(const kvt_server *s, char *buf, size_t cap) {
    FILE *f = fopen(s->log, "r");
    size_t n = f ? fread(buf, 1, cap - 1, f) : 0;
    buf[n] = 0;
    if (f) fclose(f);
    return buf;
}

/* 1 when a redis-server answers PING on port. */
static int kvt_redis_ping(int port) {
    int fd = kvt_connect(port, 1);
    if (fd < 0) return 0;
    char buf[16] = {0};
    int ok = send(fd, "PING\r\n", 6, MSG_NOSIGNAL) == 6 && recv(fd, buf, sizeof buf - 1, 0) > 0 && !strncmp(buf, "+PONG", 5);
    close(fd);
    return ok;
}

int kvt_redis_start(kvt_server *s) {
    s->port = kvt_port();
    snprintf(s->log, sizeof s->log, "/tmp/kvt_redis_%d_%d.log", (int)getpid(), s->port);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "exec redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no --daemonize no",
             s->port);
    if ((s->pid = kvt_spawn(cmd, s->log)) < 0) return -1;
    for (double end = kvt_now() + 20; kvt_now() < end; kvt_sleep_ms(50)) {
        if (kvt_wait_exit(s->pid, 0) != -2) return s->pid = 0, -1;
        if (kvt_redis_ping(s->port)) return 0;
    }
    kvt_redis_stop(s);
    return -1;
}

void kvt_redis_stop(kvt_server *s) {
    if (s->pid <= 0) return;
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
}

/* ---- HTTP ---- */

int kvt_connect(int port, double timeout_s) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct timeval tv = {(time_t)timeout_s, (suseconds_t)((timeout_s - (double)(time_t)timeout_s) * 1e6)};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int kvt_send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k <= 0) return -1;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Reads until EOF or the deadline into r->body (headers included). */
static int kvt_read_all(int fd, double deadline, kvt_resp *r) {
    size_t cap = 4096;
    r->body = malloc(cap);
    r->len = 0;
    while (r->body && kvt_now() < deadline) {
        if (r->len + 2048 > cap && !(r->body = realloc(r->body, cap *= 2))) break;
        ssize_t k = recv(fd, r->body + r->len, cap - r->len - 1, 0);
        if (k == 0) break;
        if (k < 0 && errno != EINTR && errno != EAGAIN) break;
        if (k > 0) r->len += (size_t)k;
    }
    if (r->body) r->body[r->len] = 0;
    return r->body ? 0 : -1;
}

/* Splits the raw answer into status and body. */
static void kvt_parse_resp(kvt_resp *r) {
    char *sep = r->body ? strstr(r->body, "\r\n\r\n") : NULL;
    if (!sep || sscanf(r->body, "HTTP/%*d.%*d %d", &r->status) != 1) {
        r->status = -1;
        return;
    }
    size_t head = (size_t)(sep + 4 - r->body);
    memmove(r->body, sep + 4, r->len - head + 1);
    r->len -= head;
}

int kvt_http(int port, const char *method, const char *path, const char *body, double timeout_s, kvt_resp *r) {
    r->status = -1;
    r->body = NULL;
    r->len = 0;
    double deadline = kvt_now() + timeout_s;
    int fd = kvt_connect(port, timeout_s);
    if (fd < 0) return -1;
    size_t bl = body ? strlen(body) : 0;
    char head[512];
    int hn = snprintf(head, sizeof head, "%s %s HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                                         "Content-Length: %zu\r\n\r\n", method, path, bl);
    int rc = kvt_send_all(fd, head, (size_t)hn);
    if (rc == 0 && bl) rc = kvt_send_all(fd, body, bl);
    if (rc == 0) rc = kvt_read_all(fd, deadline, r);
    close(fd);
    if (rc == 0) kvt_parse_resp(r);
    return r->status > 0 ? 0 : -1;
}

void kvt_resp_free(kvt_resp *r) {
    free(r->body);
    r->body = NULL;
}

/* ---- the CLI ---- */

int kvt_cli_out(const char *args, char *out, size_t cap) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s %s 2>/dev/null", kvt_cli_path(), args);
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

char *kvt_run_greedy(const char *model, const char *prompt, int n) {
    char path[64], args[1024];
    snprintf(path, sizeof path, "/tmp/kvt_prompt_%d.txt", (int)getpid());
    FILE *f = fopen(path, "w");
    if (!f) return NULL;
    fputs(prompt, f);
    fclose(f);
    snprintf(args, sizeof args, "run -m %s -f %s -n %d --temp 0", model, path, n);
    size_t cap = 1 << 16;
    char *out = malloc(cap);
    int rc = out ? kvt_cli_out(args, out, cap) : -1;
    unlink(path);
    size_t pl = strlen(prompt), ol = out ? strlen(out) : 0;
    if (rc != 0 || ol < pl + 1 || strncmp(out, prompt, pl) || out[ol - 1] != '\n') {
        free(out);
        return NULL;
    }
    memmove(out, out + pl, ol - pl);
    out[ol - pl - 1] = 0;
    return out;
}

long kvt_rss_kb(pid_t pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb;
}

double kvt_metric(const char *text, const char *name) {
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, name, n) && p[n] == ' ') return atof(p + n + 1);
    return -1;
}

char *kvt_json_escape(const char *s) {
    char *out = malloc(6 * strlen(s) + 1), *w = out;
    if (!out) return NULL;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') *w++ = '\\', *w++ = (char)c;
        else if (c < 0x20) w += sprintf(w, "\\u%04x", c);
        else *w++ = (char)c;
    }
    *w = 0;
    return out;
}

#ifdef KVP_HAVE_CJSON
/* Appends the text of one event's JSON to out. */
static void kvt_sse_piece(const char *json, int chat, char *out) {
    cJSON *o = cJSON_Parse(json);
    cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0);
    cJSON *t = chat ? cJSON_GetObjectItem(cJSON_GetObjectItem(ch, "delta"), "content") : cJSON_GetObjectItem(ch, "text");
    if (cJSON_IsString(t)) strcat(out, t->valuestring);
    cJSON_Delete(o);
}

char *kvt_sse_text(const char *body, int chat, int *n_events, int *done) {
    char *out = calloc(1, strlen(body) + 1), *copy = strdup(body);
    *n_events = *done = 0;
    for (char *save = NULL, *ev = out && copy ? strtok_r(copy, "\n", &save) : NULL; ev; ev = strtok_r(NULL, "\n", &save)) {
        if (strncmp(ev, "data: ", 6)) continue;
        if (!strcmp(ev + 6, "[DONE]")) {
            *done = 1;
            continue;
        }
        (*n_events)++;
        kvt_sse_piece(ev + 6, chat, out);
    }
    free(copy);
    return out;
}
#else
char *kvt_sse_text(const char *body, int chat, int *n_events, int *done) {
    (void)body, (void)chat;
    *n_events = *done = 0;
    return NULL;
}
#endif
