/*
 * test_group_commit.c -- sync = "always" from several threads at once:
 * group commit (csrc/log.c group_commit, csrc/state.c).
 *
 * Runs, each on a fresh log:
 *
 *   one handle   THREADS threads append through one handle opened with
 *                TK_SYNC_ALWAYS;
 *   two handles  two shared-mode handles of one log (as two nginx workers
 *                would have, here in one process), THREADS / 2 threads on
 *                each: their appends meet only in the shared state.
 *
 * and a third with sync = "none": THREADS shared-mode handles, one per
 * thread, so that appends reserve their place under the lock, write
 * outside it and publish in turn (csrc/log.c, "Shared appends") from
 * THREADS threads at once -- the same checks but the fsync ones.
 *
 * Every thread appends PER_THREAD records, as a mix of single appends and
 * small batches, all starting together at a barrier.  While they run:
 *
 *   - every append succeeds and returns only once its records are durable:
 *     the synced offset of tk_log_stats is past them right after the call;
 *
 * and afterwards, single-threaded:
 *
 *   - the high water mark is the number of records appended, and every
 *     record is there exactly once, contiguous from offset 0, at the
 *     offset its append returned, intact, each thread's in the order it
 *     appended them;
 *   - the appenders shared fsyncs: fewer fdatasync calls than append
 *     calls (one thread's fdatasync covers the records the others
 *     appended meanwhile);
 *   - the log reopens with the same records.
 *
 * Records describe themselves: the value starts with "T<t> S<sssss>|"
 * (thread, sequence number) and its length, filler and key follow from
 * (t, s).  Output is TAP; a watchdog (TK_TEST_TIMEOUT seconds, default
 * 300) turns a hang into "Bail out!".  `make test-tsan` runs it under
 * ThreadSanitizer.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "takhin.h"
#include "tap.h"

#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define THREADS     4
#define PER_THREAD  300
#define MAX_BATCH   4
#define TOTAL       (THREADS * PER_THREAD)
#define HDR_LEN     10                      /* "T0 S00000|" */
#define VALUE_MAX   256
#define KEY_MAX     32
#define WHY_LEN     1024

/* ------------------------------------------------------------------ */
/* Records: everything is a function of (thread, seq)                   */
/* ------------------------------------------------------------------ */

static size_t value_len_of(uint32_t t, uint32_t s) {
    return HDR_LEN + 20 + (s * 31u + t * 7u) % 150u;
}

static size_t make_value(uint32_t t, uint32_t s, unsigned char *v) {
    size_t n = value_len_of(t, s);
    char hdr[HDR_LEN + 1];
    snprintf(hdr, sizeof hdr, "T%1u S%05u|", (unsigned)t, (unsigned)s);
    memcpy(v, hdr, HDR_LEN);
    for (size_t i = HDR_LEN; i < n; i++)
        v[i] = (unsigned char)('a' + (t * 5u + s * 11u + (uint32_t)i) % 26u);
    return n;
}

static size_t make_key(uint32_t t, uint32_t s, char *k) {
    return (size_t)snprintf(k, KEY_MAX, "gc-%u-%05u", (unsigned)t, (unsigned)s);
}

/* The (t, s) a record read back describes, when it is intact; else 0. */
static int parse_record(const tk_record *rec, uint32_t *t, uint32_t *s) {
    unsigned char want[VALUE_MAX];
    char key[KEY_MAX], hdr[HDR_LEN + 1];
    unsigned tt, ss;
    size_t kl;
    if (rec->value_len < HDR_LEN || rec->value_len > VALUE_MAX) return 0;
    memcpy(hdr, rec->value, HDR_LEN);           /* the value has no NUL */
    hdr[HDR_LEN] = '\0';
    if (sscanf(hdr, "T%1u S%5u|", &tt, &ss) != 2) return 0;
    if (tt >= THREADS || ss >= PER_THREAD) return 0;
    if (make_value(tt, ss, want) != rec->value_len ||
        memcmp(want, rec->value, rec->value_len) != 0)
        return 0;
    kl = make_key(tt, ss, key);
    if (!rec->has_key || rec->key_len != kl || memcmp(rec->key, key, kl) != 0) return 0;
    *t = tt;
    *s = ss;
    return 1;
}

/* ------------------------------------------------------------------ */
/* One run                                                              */
/* ------------------------------------------------------------------ */

static struct run {
    tk_log *handles[THREADS];
    int nhandles, durable;
    pthread_barrier_t start;
    int64_t offset_of[THREADS][PER_THREAD];     /* what append returned */
    atomic_long failures, not_durable;
    char first[WHY_LEN];                        /* the first failure's message */
} R;

__attribute__((format(printf, 1, 2)))
static void fail(const char *fmt, ...) {
    if (atomic_fetch_add(&R.failures, 1) == 0) {    /* only the first writes */
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(R.first, sizeof R.first, fmt, ap);
        va_end(ap);
    }
}

static void *appender(void *arg) {
    uint32_t t = (uint32_t)(uintptr_t)arg;
    tk_log *log = R.handles[t % (uint32_t)R.nhandles];
    unsigned char values[MAX_BATCH][VALUE_MAX];
    char keys[MAX_BATCH][KEY_MAX];
    tk_rec_in in[MAX_BATCH];
    uint32_t s = 0;
    pthread_barrier_wait(&R.start);
    while (s < PER_THREAD) {
        uint32_t n = 1 + (s * 7u + t) % MAX_BATCH;     /* 1 .. MAX_BATCH records */
        int64_t first = -1;
        tk_log_stats st;
        tk_err err;
        if (n > PER_THREAD - s) n = PER_THREAD - s;
        for (uint32_t i = 0; i < n; i++) {
            in[i] = (tk_rec_in){ .key = keys[i], .key_len = make_key(t, s + i, keys[i]),
                                 .has_key = 1, .value = values[i],
                                 .value_len = make_value(t, s + i, values[i]), .timestamp = -1 };
        }
        tk_code rc = tk_log_append(log, in, n, &first, &err);
        if (rc != TK_OK) {
            fail("thread %u: append of %u records at seq %u: %s: %s", t, n, s,
                 tk_code_name(rc), err.msg);
            return NULL;
        }
        tk_log_stats_get(log, &st);
        if (R.durable && st.synced < first + (int64_t)n) {
            atomic_fetch_add(&R.not_durable, 1);
            fail("thread %u: append returned offset %" PRId64 " (+%u) with the synced "
                 "offset at %" PRId64, t, first, n, st.synced);
        }
        for (uint32_t i = 0; i < n; i++) R.offset_of[t][s + i] = first + (int64_t)i;
        s += n;
    }
    return NULL;
}

/* Reads the whole log back: contiguous, intact, each record once, at the
 * offset its append returned, each thread's in order.  Returns 1 when it
 * all holds; else why. */
static int check_log(tk_log *log, char *why, size_t len) {
    static uint8_t seen[THREADS][PER_THREAD];
    int64_t last_seq[THREADS];
    tk_record rec = { 0 };
    tk_err err;
    int good = 1;
    memset(seen, 0, sizeof seen);
    for (int t = 0; t < THREADS; t++) last_seq[t] = -1;
    if (tk_log_high_water_mark(log) != TOTAL || tk_log_base_offset(log) != 0) {
        snprintf(why, len, "high water mark %" PRId64 ", base %" PRId64 ", %d records appended",
                 tk_log_high_water_mark(log), tk_log_base_offset(log), TOTAL);
        return 0;
    }
    for (int64_t o = 0; good && o < TOTAL; o++) {
        uint32_t t, s;
        tk_code rc = tk_log_read(log, o, &rec, &err);
        if (rc != TK_OK) {
            snprintf(why, len, "read %" PRId64 ": %s: %s", o, tk_code_name(rc), err.msg);
            good = 0;
        } else if (rec.offset != o || !parse_record(&rec, &t, &s)) {
            snprintf(why, len, "offset %" PRId64 " holds a record no thread appended", o);
            good = 0;
        } else if (seen[t][s]++) {
            snprintf(why, len, "T%u S%u is in the log twice (again at %" PRId64 ")", t, s, o);
            good = 0;
        } else if (R.offset_of[t][s] != o) {
            snprintf(why, len, "T%u S%u is at %" PRId64 ", its append returned %" PRId64,
                     t, s, o, R.offset_of[t][s]);
            good = 0;
        } else if ((int64_t)s <= last_seq[t]) {
            snprintf(why, len, "T%u S%u comes after S%" PRId64, t, s, last_seq[t]);
            good = 0;
        } else {
            last_seq[t] = s;
        }
    }
    tk_record_free(&rec);
    return good;
}

static int rm_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
    (void)sb; (void)type; (void)ftw;
    return remove(path);
}

static void run(const char *root, const char *name, int nhandles, tk_sync sync) {
    char dir[512], why[WHY_LEN] = "";
    pthread_t th[THREADS];
    tk_log_opts opts;
    tk_log_stats st;
    tk_err err;
    int started = 0, opened = 0;

    memset(&R, 0, sizeof R);
    R.nhandles = nhandles;
    R.durable = sync == TK_SYNC_ALWAYS;
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    tk_log_opts_init(&opts);
    opts.sync = sync;
    opts.max_segment_size = 64 * 1024;          /* a few rolls on the way */
    opts.mode = nhandles > 1 ? TK_LOG_SHARED : TK_LOG_EXCLUSIVE;
    for (int h = 0; h < nhandles; h++) {
        tk_code rc = tk_log_open(dir, &opts, &R.handles[h], &err);
        if (rc != TK_OK) {
            printf("#   open %s: %s: %s\n", dir, tk_code_name(rc), err.msg);
            break;
        }
        opened++;
    }
    ok(opened == nhandles, "%s: open %d handle(s) with sync %s", name, nhandles,
       R.durable ? "always" : "none");
    if (opened == nhandles) {
        pthread_barrier_init(&R.start, NULL, THREADS);
        for (; started < THREADS; started++)
            if (pthread_create(&th[started], NULL, appender, (void *)(uintptr_t)started) != 0)
                break;
        if (started < THREADS) {                /* release the ones waiting */
            printf("Bail out! pthread_create failed\n");
            exit(1);
        }
        for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
        pthread_barrier_destroy(&R.start);

        ok(atomic_load(&R.failures) == 0, "%s: %d threads append %d records each%s", name,
           THREADS, PER_THREAD, R.durable ? "; each append returns with its records durable "
           "(synced offset past them)" : "");
        diag(R.first);
        int good = check_log(R.handles[0], why, sizeof why);
        ok(good, "%s: every record once, contiguous, at the offset append returned, each "
           "thread's in order", name);
        diag(why);
        tk_log_stats_get(R.handles[0], &st);
        if (R.durable) {
            ok(st.fsyncs > 0 && st.fsyncs < st.appends, "%s: concurrent appends share fsyncs: "
               "%" PRIu64 " fdatasyncs for %" PRIu64 " appends of %" PRIu64 " records", name,
               st.fsyncs, st.appends, st.records);
            ok(st.synced == TOTAL, "%s: the synced offset is the high water mark (%" PRId64 ")",
               name, st.synced);
        }
    }
    for (int h = 0; h < opened; h++) tk_log_close(R.handles[h]);

    /* The records are the files' now: a new handle finds all of them. */
    if (opened == nhandles) {
        tk_log *log = NULL;
        opts.mode = TK_LOG_EXCLUSIVE;
        opts.sync = TK_SYNC_NONE;
        tk_code rc = tk_log_open(dir, &opts, &log, &err);
        int good = rc == TK_OK && check_log(log, why, sizeof why);
        if (rc != TK_OK) snprintf(why, sizeof why, "reopen: %s: %s", tk_code_name(rc), err.msg);
        ok(good, "%s: reopened, the log holds the same records", name);
        diag(why);
        tk_log_close(log);
    }
}

static void watchdog(int sig) {
    static const char msg[] = "Bail out! test_group_commit: timed out (hang?)\n";
    (void)sig;
    if (write(STDOUT_FILENO, msg, sizeof msg - 1) < 0) {
        /* nothing more to do */
    }
    _exit(2);
}

int main(void) {
    const char *to = getenv("TK_TEST_TIMEOUT"), *tmp = getenv("TMPDIR");
    char root[512];
    signal(SIGALRM, watchdog);
    alarm(to ? (unsigned)atoi(to) : 300u);
    snprintf(root, sizeof root, "%s/takhin-group-commit.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (mkdtemp(root) == NULL) {
        printf("Bail out! mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    printf("# dir %s\n", root);
    run(root, "one-handle", 1, TK_SYNC_ALWAYS);
    run(root, "two-handles", 2, TK_SYNC_ALWAYS);
    run(root, "shared-handles-no-sync", THREADS, TK_SYNC_NONE);
    ok(nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS) == 0, "remove %s", root);
    return tap_done();
}
