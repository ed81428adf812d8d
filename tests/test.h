/*
 * test.h: a small test harness. Each TEST(name) registers itself at load time; the runner
 * (tests/run.c) runs them all, or those whose name contains argv[1], and ends with the line
 * "N passed, N failed". A test fails on its first failed CHECK and reports file:line.
 */
#ifndef KVP_TEST_H
#define KVP_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*kvt_fn)(void);
void kvt_register(const char *name, kvt_fn fn);
void kvt_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int kvt_failed(void); /* 1 once the running test has failed */

/* Path of a shared test model (valid until 8 more calls): $KVPACK_MODELS/name, else ../shared/models/name. A missing
 * file fails the test (models are present in CI: tests that need them never skip). */
const char *kvt_model(const char *name);

/* Path of the kvpack command-line binary the tests run: $KVP_CLI (`make test` sets it), else
 * build/kvpack. The string is owned by the environment or is a literal: never free it. */
const char *kvt_cli_path(void);

/* Runs `kvpack ARGS` through the shell (ARGS is shell text: quote it as a user would) with stderr
 * merged into stdout, and stores the first cap - 1 bytes of that output in out, NUL-terminated; the
 * rest is read and dropped so that a long output cannot kill the command with SIGPIPE. out may be
 * NULL (with cap 0) to drop all output. Returns the command's exit code, or -1 when it could not
 * be started, the command line was too long, or the command did not exit normally. Blocks until
 * the command ends. */
int kvt_cli(const char *args, char *out, size_t cap);

#define TEST(name)                                                              \
    static void kvt_test_##name(void);                                          \
    __attribute__((constructor)) static void kvt_reg_##name(void) {             \
        kvt_register(#name, kvt_test_##name);                                   \
    }                                                                           \
    static void kvt_test_##name(void)

#define CHECK(cond)                                                             \
    do {                                                                        \
        if (!(cond)) { kvt_fail(__FILE__, __LINE__, "CHECK(%s)", #cond); return; } \
    } while (0)

#define CHECKF(cond, ...)                                                       \
    do {                                                                        \
        if (!(cond)) { kvt_fail(__FILE__, __LINE__, __VA_ARGS__); return; }     \
    } while (0)

/* A kvpack call that must succeed. */
#define CHECK_OK(expr)                                                          \
    do {                                                                        \
        int kvt_rc_ = (expr);                                                   \
        if (kvt_rc_ != 0) {                                                     \
            kvt_fail(__FILE__, __LINE__, "%s = %d (%s)", #expr, kvt_rc_, kvp_errmsg()); \
            return;                                                             \
        }                                                                       \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                   \
    do {                                                                        \
        double kvt_a_ = (a), kvt_b_ = (b);                                      \
        if (!(fabs(kvt_a_ - kvt_b_) <= (tol))) {                                \
            kvt_fail(__FILE__, __LINE__, "%s = %g, %s = %g, tolerance %g", #a, kvt_a_, #b, \
                     kvt_b_, (double)(tol));                                    \
            return;                                                             \
        }                                                                       \
    } while (0)

/* Deterministic random numbers for tests. */
static inline unsigned long long kvt_rand_u64(unsigned long long *s) {
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}
static inline float kvt_randf(unsigned long long *s) { /* uniform in [-1, 1) */
    return (float)((double)(kvt_rand_u64(s) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

#endif
