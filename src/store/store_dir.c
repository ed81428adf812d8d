/*
 * store_dir.c: the directory store. One file per entry, DIR/KEY.kvc, written to a unique
 * temporary name in the same directory, synced and renamed into place, so a reader sees a
 * whole entry or none, whatever other processes do at the same time. A read refreshes the
 * file's modification time; when max_bytes is set, a write evicts the entries with the
 * oldest modification times (least recently used) until the store fits, under an exclusive
 * lock on DIR/.lock so that concurrent writers do not evict twice. Temporary files older
 * than ten minutes (left by a crashed writer) are removed by eviction.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/common.h"
#include "store.h"

typedef struct {
    kvp_store base;
    char *dir;
} kvp_store_dir;

typedef struct {
    char name[48];
    uint64_t size;
    struct timespec mtime;
} kvp_dir_item;

static int kvp_dir_path(const kvp_store_dir *d, const char *name, char *out, size_t cap) {
    if (snprintf(out, cap, "%s/%s", d->dir, name) >= (int)cap)
        return kvp_seterr(KVP_EINVAL, "store path %s/%s is too long", d->dir, name);
    return KVP_OK;
}

static int kvp_dir_entry_path(const kvp_store_dir *d, const char *key, char *out, size_t cap) {
    char name[64];
    snprintf(name, sizeof name, "%s.kvc", key);
    return kvp_dir_path(d, name, out, cap);
}

/* ---- writing ---- */

static int kvp_dir_write_all(int fd, const char *path, const void *data, size_t size) {
    for (size_t done = 0; done < size;) {
        ssize_t w = write(fd, (const uint8_t *)data + done, size - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return kvp_seterr(KVP_ESTORE, "%s: write failed: %s", path, strerror(errno));
        done += (size_t)w;
    }
    return KVP_OK;
}

/* Makes the rename durable: syncs the directory itself. */
static void kvp_dir_sync(const kvp_store_dir *d) {
    int fd = open(d->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

/* Writes the bytes to a unique temporary file, syncs it and renames it to final. */
static int kvp_dir_atomic_write(const kvp_store_dir *d, const char *key, const char *final, const void *data,
                                size_t size) {
    static int counter;
    char name[128], tmp[4200];
    snprintf(name, sizeof name, ".tmp.%s.%ld.%d", key, (long)getpid(), __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED));
    KVP_TRY(kvp_dir_path(d, name, tmp, sizeof tmp));
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return kvp_seterr(KVP_ESTORE, "%s: cannot create: %s", tmp, strerror(errno));
    int rc = kvp_dir_write_all(fd, tmp, data, size);
    if (rc == KVP_OK && fsync(fd) != 0) rc = kvp_seterr(KVP_ESTORE, "%s: fsync failed: %s", tmp, strerror(errno));
    if (close(fd) != 0 && rc == KVP_OK) rc = kvp_seterr(KVP_ESTORE, "%s: close failed: %s", tmp, strerror(errno));
    if (rc == KVP_OK && rename(tmp, final) != 0)
        rc = kvp_seterr(KVP_ESTORE, "cannot rename %s to %s: %s", tmp, final, strerror(errno));
    if (rc != KVP_OK) unlink(tmp);
    else kvp_dir_sync(d);
    return rc;
}

/* ---- eviction ---- */

static int kvp_dir_item_cmp(const void *a, const void *b) {
    const kvp_dir_item *x = a, *y = b;
    if (x->mtime.tv_sec != y->mtime.tv_sec) return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
    if (x->mtime.tv_nsec != y->mtime.tv_nsec) return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int kvp_dir_is_entry(const char *name) {
    size_t n = strlen(name);
    return n == 36 && !strcmp(name + 32, ".kvc");
}

/* Removes a temporary file older than ten minutes. */
static void kvp_dir_reap_tmp(const kvp_store_dir *d, const char *name) {
    char path[4200];
    struct stat st;
    if (kvp_dir_path(d, name, path, sizeof path) == KVP_OK && stat(path, &st) == 0 && time(NULL) - st.st_mtime > 600)
        unlink(path);
}

/* Lists the entries (size and modification time) into *items, malloc'ed. */
static int kvp_dir_list(const kvp_store_dir *d, kvp_dir_item **items, size_t *n, int reap) {
    DIR *dh = opendir(d->dir);
    if (!dh) return kvp_seterr(KVP_ESTORE, "%s: cannot list: %s", d->dir, strerror(errno));
    size_t cap = 0;
    *items = NULL;
    *n = 0;
    int rc = KVP_OK;
    for (struct dirent *e; rc == KVP_OK && (e = readdir(dh));) {
        if (reap && !strncmp(e->d_name, ".tmp.", 5)) kvp_dir_reap_tmp(d, e->d_name);
        struct stat st;
        if (!kvp_dir_is_entry(e->d_name) || fstatat(dirfd(dh), e->d_name, &st, 0) != 0) continue; /* raced away */
        if (*n == cap) {
            kvp_dir_item *ni = realloc(*items, sizeof **items * (cap = cap ? 2 * cap : 64));
            if (!ni) { rc = kvp_seterr(KVP_ENOMEM, "out of memory listing %s", d->dir); break; }
            *items = ni;
        }
        kvp_dir_item *it = &(*items)[(*n)++];
        memcpy(it->name, e->d_name, 37); /* kvp_dir_is_entry: exactly 36 bytes and the NUL */
        it->size = (uint64_t)st.st_size;
        it->mtime = st.st_mtim;
    }
    closedir(dh);
    return rc;
}

/* Deletes the least recently used entries until the store holds at most max bytes. */
static int kvp_dir_evict_locked(const kvp_store_dir *d, uint64_t max) {
    kvp_dir_item *items = NULL;
    size_t n = 0;
    int rc = kvp_dir_list(d, &items, &n, 1);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) total += items[i].size;
    if (rc == KVP_OK && total > max) qsort(items, n, sizeof *items, kvp_dir_item_cmp);
    for (size_t i = 0; rc == KVP_OK && i < n && total > max; i++) {
        char path[4200];
        if (kvp_dir_path(d, items[i].name, path, sizeof path) == KVP_OK && (unlink(path) == 0 || errno == ENOENT))
            total -= items[i].size;
    }
    free(items);
    return rc;
}

static int kvp_dir_evict(const kvp_store_dir *d) {
    char lock[4200];
    KVP_TRY(kvp_dir_path(d, ".lock", lock, sizeof lock));
    int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return kvp_seterr(KVP_ESTORE, "%s: cannot open the lock: %s", lock, strerror(errno));
    while (flock(fd, LOCK_EX) != 0)
        if (errno != EINTR) {
            close(fd);
            return kvp_seterr(KVP_ESTORE, "%s: cannot lock: %s", lock, strerror(errno));
        }
    int rc = kvp_dir_evict_locked(d, d->base.params.max_bytes);
    close(fd); /* releases the lock */
    return rc;
}

/* ---- the vtable ---- */

static int kvp_dir_put(kvp_store *s, const char *key, const void *data, size_t size) {
    kvp_store_dir *d = (kvp_store_dir *)s;
    char final[4200];
    KVP_TRY(kvp_dir_entry_path(d, key, final, sizeof final));
    KVP_TRY(kvp_dir_atomic_write(d, key, final, data, size));
    return d->base.params.max_bytes ? kvp_dir_evict(d) : KVP_OK;
}

static int kvp_dir_read_fd(int fd, const char *path, void **data, size_t *size) {
    struct stat st;
    if (fstat(fd, &st) != 0) return kvp_seterr(KVP_ESTORE, "%s: stat failed: %s", path, strerror(errno));
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return kvp_seterr(KVP_ENOMEM, "out of memory reading %s (%zu bytes)", path, n);
    for (size_t done = 0; done < n;) {
        ssize_t r = read(fd, buf + done, n - done);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            free(buf);
            return kvp_seterr(KVP_ESTORE, "%s: read failed: %s", path, r < 0 ? strerror(errno) : "file shrank");
        }
        done += (size_t)r;
    }
    *data = buf;
    *size = n;
    return KVP_OK;
}

static int kvp_dir_get(kvp_store *s, const char *key, void **data, size_t *size) {
    kvp_store_dir *d = (kvp_store_dir *)s;
    char path[4200];
    KVP_TRY(kvp_dir_entry_path(d, key, path, sizeof path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) return kvp_seterr(KVP_ENOTFOUND, "no stored chunk %s", key);
    if (fd < 0) return kvp_seterr(KVP_ESTORE, "%s: cannot open: %s", path, strerror(errno));
    int rc = kvp_dir_read_fd(fd, path, data, size);
    if (rc == KVP_OK) futimens(fd, NULL); /* now: most recently used (best effort) */
    close(fd);
    return rc;
}

static int kvp_dir_has(kvp_store *s, const char *key) {
    kvp_store_dir *d = (kvp_store_dir *)s;
    char path[4200];
    KVP_TRY(kvp_dir_entry_path(d, key, path, sizeof path));
    if (access(path, F_OK) == 0) return 1;
    if (errno == ENOENT) return 0;
    return kvp_seterr(KVP_ESTORE, "%s: %s", path, strerror(errno));
}

static int kvp_dir_usage(kvp_store *s, uint64_t *bytes, uint64_t *entries) {
    kvp_dir_item *items = NULL;
    size_t n = 0;
    int rc = kvp_dir_list((kvp_store_dir *)s, &items, &n, 0);
    *bytes = 0;
    for (size_t i = 0; i < n; i++) *bytes += items[i].size;
    *entries = n;
    free(items);
    return rc;
}

static void kvp_dir_free(kvp_store *s) {
    kvp_store_dir *d = (kvp_store_dir *)s;
    free(d->dir);
    free(d);
}

static const kvp_store_vtbl kvp_dir_vtbl = {"dir", kvp_dir_put, kvp_dir_get, kvp_dir_has, kvp_dir_usage, kvp_dir_free};

int kvp_store_dir_open(const char *path, const kvp_store_params *p, kvp_store **out) {
    if (!*path) return kvp_seterr(KVP_EINVAL, "empty store directory name");
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return kvp_seterr(KVP_ESTORE, "%s: cannot create the store directory: %s", path, strerror(errno));
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return kvp_seterr(KVP_ESTORE, "%s: not a directory", path);
    if (access(path, R_OK | W_OK | X_OK) != 0)
        return kvp_seterr(KVP_ESTORE, "%s: the store directory is not writable: %s", path, strerror(errno));
    kvp_store_dir *d = calloc(1, sizeof *d);
    if (!d || !(d->dir = strdup(path))) {
        free(d);
        return kvp_seterr(KVP_ENOMEM, "out of memory opening a store");
    }
    d->base.vt = &kvp_dir_vtbl;
    d->base.params = *p;
    *out = &d->base;
    return KVP_OK;
}
