/*
 * tap.h -- the Test Anything Protocol for the C tests, header only.
 *
 *     #include "tap.h"
 *     ok(got == want, "read %d gives the record", o);
 *     diag(why);                  -- "#   why", when why is not empty
 *     return tap_done();          -- "1..N", exit status
 *
 * scripts/run-tests.sh counts the "ok" and "not ok" lines of every test.
 * Each test is one translation unit, so the counters are per test.  Call
 * ok() from one thread (test_threads.c collects what its threads saw and
 * reports it from main after joining them).
 */
#ifndef TK_TESTS_TAP_H
#define TK_TESTS_TAP_H

#include <stdarg.h>
#include <stdio.h>

static int tap_run, tap_failed;

/* One test point: "ok N - what" or "not ok N - what". */
__attribute__((format(printf, 2, 3), unused))
static void ok(int cond, const char *fmt, ...) {
    va_list ap;
    tap_run++;
    if (!cond)
        tap_failed++;
    printf("%sok %d - ", cond ? "" : "not ", tap_run);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

/* A diagnostic line under the last test point; nothing for "". */
__attribute__((unused))
static void diag(const char *msg) {
    if (msg[0] != '\0')
        printf("#   %s\n", msg);
}

/* The plan, after the last test point; returns main's exit status. */
__attribute__((unused))
static int tap_done(void) {
    printf("1..%d\n", tap_run);
    if (tap_failed)
        printf("# %d of %d failed\n", tap_failed, tap_run);
    return tap_failed ? 1 : 0;
}

#endif
