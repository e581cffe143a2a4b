/*
 * test_threads.c -- one tk_log handle driven from many threads at once.
 *
 * Phase 1, concurrently on one writer handle:
 *   - APPENDERS threads each append PER_THREAD records, as a random mix of
 *     single appends and batches of BATCH;
 *   - READERS threads read random offsets below the high water mark,
 *     iterate ranges, and probe out-of-range offsets;
 *   - one stats thread calls tk_log_offset_for_time, tk_log_segments,
 *     tk_log_num_segments and tk_log_size.
 *
 * Every record is self-describing: its value starts with "T<t> S<sssss>|"
 * (thread, sequence number) and the rest of the value, the key, whether the
 * key is present and the timestamp are all functions of (t, s).  A reader
 * that gets any record back can therefore check all of it without knowing
 * what the writers are doing.  Records are also immutable once visible, so
 * the first (t, s) anyone reads at an offset is recorded and every later
 * read of that offset must agree.
 *
 * Phase 2, single-threaded: the high water mark is the number of records
 * appended; every (t, s) appears exactly once and each thread's records
 * appear in sequence order; the offsets append returned hold the records
 * appended; segments rolled and are consistent; offset_for_time is exact;
 * a read-only handle sees it all; after close and reopen nothing changed.
 *
 * Output is TAP; the exit status is non-zero when any test fails.  A
 * watchdog (TK_TEST_TIMEOUT seconds, default 300) turns a hang into a
 * "Bail out!" rather than a stuck CI job.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "takhin.h"

#include <errno.h>
#include <ftw.h>
#include <inttypes.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define APPENDERS     4
#define READERS       3
#define PER_THREAD    2000
#define BATCH         10
#define TOTAL         (APPENDERS * PER_THREAD)
#define SEGMENT_SIZE  (64u * 1024u)
#define INDEX_BYTES   1024u
#define MIN_LOOPS     200       /* reader loops, even if appends end first */
#define MAX_SEGS      4096
#define WHY_LEN       1024      /* room for a tk_err message and context */

#define HDR_LEN       10        /* "T%1u S%05u|" */
#define VALUE_MAX     (HDR_LEN + 40 + 120)
#define KEY_MAX       32
#define TS_BASE       INT64_C(1700000000000)

/* ------------------------------------------------------------------ */
/* TAP and failure bookkeeping                                          */
/* ------------------------------------------------------------------ */

static int n_run, n_failed;

__attribute__((format(printf, 2, 3)))
static void ok(int cond, const char *fmt, ...) {
    va_list ap;
    n_run++;
    if (!cond)
        n_failed++;
    printf("%sok %d - ", cond ? "" : "not ", n_run);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static void diag(const char *msg) {
    if (msg[0] != '\0')
        printf("#   %s\n", msg);
}

/*
 * What the threads of phase 1 check, each with a failure count and the
 * message of its first failure.  Only the thread whose increment took the
 * count from 0 writes the message, and main reads it after joining every
 * thread, so the message needs no lock.
 */
enum { CK_APPEND, CK_READ, CK_ITER, CK_TIME, CK_SEGS, CK_COUNT };

static struct check {
    atomic_long fails;
    atomic_long runs;
    char first[WHY_LEN];
} checks[CK_COUNT];

__attribute__((format(printf, 2, 3)))
static void fail(int ck, const char *fmt, ...) {
    if (atomic_fetch_add(&checks[ck].fails, 1) == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(checks[ck].first, sizeof checks[ck].first, fmt, ap);
        va_end(ap);
    }
}

static void ran(int ck) {
    atomic_fetch_add_explicit(&checks[ck].runs, 1, memory_order_relaxed);
}

static void report(int ck, const char *what) {
    long f = atomic_load(&checks[ck].fails), r = atomic_load(&checks[ck].runs);
    ok(f == 0, "%s (%ld checks, %ld failed)", what, r, f);
    if (f)
        diag(checks[ck].first);
}

/* ------------------------------------------------------------------ */
/* Small utilities                                                      */
/* ------------------------------------------------------------------ */

static uint64_t rng(uint64_t *state) {              /* splitmix64 */
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void sleep_us(long us) {
    struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *code_name(tk_code c) {
    const char *s = tk_code_name(c);
    return s ? s : "?";
}

static void watchdog(int sig) {
    static const char msg[] = "Bail out! test_threads: timed out (hang?)\n";
    (void)sig;
    if (write(STDOUT_FILENO, msg, sizeof msg - 1) < 0) {
        /* nothing more to do */
    }
    _exit(2);
}

static int rm_entry(const char *path, const struct stat *sb, int type,
                    struct FTW *ftw) {
    (void)sb; (void)type; (void)ftw;
    return remove(path) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ */
/* Records: everything is a function of (thread, seq)                   */
/* ------------------------------------------------------------------ */

static size_t value_len_of(uint32_t t, uint32_t s) {
    return HDR_LEN + 40 + (s * 37u + t * 11u) % 120u;
}

static int key_absent(uint32_t s) {
    return s % 97u == 13u;
}

/* Per thread increasing but with dips, and the threads interleave, so the
 * log's timestamps are not monotonic: the time index must cope. */
static int64_t timestamp_of(uint32_t t, uint32_t s) {
    return TS_BASE + (int64_t)s * 8 + (int64_t)t * 2 - (s % 7u == 3u ? 40 : 0);
}

#define TS_MIN (TS_BASE - 40)
#define TS_MAX (TS_BASE + (int64_t)(PER_THREAD - 1) * 8 + (APPENDERS - 1) * 2)

static size_t make_value(uint32_t t, uint32_t s, unsigned char *v) {
    size_t n = value_len_of(t, s);
    char hdr[HDR_LEN + 1];
    snprintf(hdr, sizeof hdr, "T%1u S%05u|", (unsigned)t, (unsigned)s);
    memcpy(v, hdr, HDR_LEN);
    for (size_t i = HDR_LEN; i < n; i++)
        v[i] = (unsigned char)('a' + (t * 7u + s * 13u + (uint32_t)i) % 26u);
    return n;
}

static size_t make_key(uint32_t t, uint32_t s, char *k) {
    int n = snprintf(k, KEY_MAX, "key-%u-%05u", (unsigned)t, (unsigned)s);
    return (size_t)n;
}

/* Bytes the record takes in its .log: docs/FORMAT.md. */
static uint64_t framed_size(uint32_t t, uint32_t s) {
    char k[KEY_MAX];
    size_t kl = key_absent(s) ? 0 : make_key(t, s, k);
    return 34 + kl + value_len_of(t, s);
}

static uint32_t record_id(uint32_t t, uint32_t s) {
    return (t << 16 | s) + 1;           /* 0 means "not seen yet" */
}

static uint32_t id_thread(uint32_t id) { return (id - 1) >> 16; }
static uint32_t id_seq(uint32_t id) { return (id - 1) & 0xFFFFu; }

/* A random time around the range of the records' timestamps. */
static int64_t random_time(uint64_t *st, int64_t margin) {
    uint64_t span = (uint64_t)(TS_MAX - TS_MIN + 2 * margin);
    return TS_MIN - margin + (int64_t)(rng(st) % span);
}

/*
 * Check that rec holds a record we appended, at the expected offset.  On
 * success sets *t and *s; on failure writes the reason to why.
 */
static int check_record(const tk_record *rec, int64_t offset,
                        uint32_t *t, uint32_t *s, char *why, size_t whylen) {
    unsigned char want_v[VALUE_MAX];
    char want_k[KEY_MAX], hdr[HDR_LEN + 1];
    unsigned ut, us;

    if (rec->offset != offset) {
        snprintf(why, whylen, "offset %" PRId64 ": record says offset %" PRId64,
                 offset, rec->offset);
        return 0;
    }
    if (rec->value == NULL || rec->value_len < HDR_LEN) {
        snprintf(why, whylen, "offset %" PRId64 ": value of %zu bytes",
                 offset, rec->value_len);
        return 0;
    }
    memcpy(hdr, rec->value, HDR_LEN);
    hdr[HDR_LEN] = '\0';
    if (sscanf(hdr, "T%1u S%5u|", &ut, &us) != 2 || ut >= APPENDERS ||
        us >= PER_THREAD) {
        snprintf(why, whylen, "offset %" PRId64 ": bad value header '%s'",
                 offset, hdr);
        return 0;
    }
    size_t vl = make_value(ut, us, want_v);
    if (rec->value_len != vl || memcmp(rec->value, want_v, vl) != 0) {
        snprintf(why, whylen, "offset %" PRId64 " (t%u s%u): value differs "
                 "(%zu bytes, want %zu)", offset, ut, us, rec->value_len, vl);
        return 0;
    }
    if (key_absent(us)) {
        if (rec->has_key || rec->key_len != 0) {
            snprintf(why, whylen, "offset %" PRId64 " (t%u s%u): key should be "
                     "absent, has_key %d key_len %zu", offset, ut, us,
                     rec->has_key, rec->key_len);
            return 0;
        }
    } else {
        size_t kl = make_key(ut, us, want_k);
        if (!rec->has_key || rec->key_len != kl || rec->key == NULL ||
            memcmp(rec->key, want_k, kl) != 0) {
            snprintf(why, whylen, "offset %" PRId64 " (t%u s%u): key does not "
                     "match value (has_key %d, %zu bytes)", offset, ut, us,
                     rec->has_key, rec->key_len);
            return 0;
        }
    }
    if (rec->timestamp != timestamp_of(ut, us)) {
        snprintf(why, whylen, "offset %" PRId64 " (t%u s%u): timestamp %" PRId64
                 ", want %" PRId64, offset, ut, us, rec->timestamp,
                 timestamp_of(ut, us));
        return 0;
    }
    *t = ut;
    *s = us;
    return 1;
}

/* ------------------------------------------------------------------ */
/* Shared state of phase 1                                              */
/* ------------------------------------------------------------------ */

static tk_log *g_log;
static atomic_int appends_done;

/* Offsets append reported, per (thread, seq); each written by its owner
 * thread only and read by main after the join. */
static int64_t appended_at[APPENDERS][PER_THREAD];
static long batches_of[APPENDERS], singles_of[APPENDERS];

/* First identity anyone read at each offset. */
static atomic_uint seen_id[TOTAL];

static int note_identity(int64_t off, uint32_t t, uint32_t s, char *why,
                         size_t whylen) {
    unsigned want = record_id(t, s), prev = 0;
    if (off < 0 || off >= TOTAL) {
        snprintf(why, whylen, "offset %" PRId64 " beyond the %d appended", off,
                 TOTAL);
        return 0;
    }
    if (atomic_compare_exchange_strong(&seen_id[off], &prev, want) ||
        prev == want)
        return 1;
    snprintf(why, whylen, "offset %" PRId64 " read as t%u s%u, earlier as "
             "t%u s%u", off, t, s, id_thread(prev), id_seq(prev));
    return 0;
}

/* ------------------------------------------------------------------ */
/* Appenders                                                            */
/* ------------------------------------------------------------------ */

struct rec_buf {
    unsigned char value[VALUE_MAX];
    char key[KEY_MAX];
};

static void fill_rec(uint32_t t, uint32_t s, tk_rec_in *in, struct rec_buf *b) {
    memset(in, 0, sizeof *in);
    in->value = b->value;
    in->value_len = make_value(t, s, b->value);
    if (!key_absent(s)) {
        in->key = b->key;
        in->key_len = make_key(t, s, b->key);
        in->has_key = 1;
    }
    in->timestamp = timestamp_of(t, s);
}

static void *appender(void *arg) {
    uint32_t t = (uint32_t)(uintptr_t)arg;
    uint64_t st = 0xA77E4D00u + t;
    tk_rec_in in[BATCH];
    struct rec_buf bufs[BATCH];
    tk_err err;
    uint32_t s = 0;

    while (s < PER_THREAD) {
        size_t n = (PER_THREAD - s >= BATCH && (rng(&st) & 1)) ? BATCH : 1;
        int64_t first = -1;
        for (size_t i = 0; i < n; i++)
            fill_rec(t, s + (uint32_t)i, &in[i], &bufs[i]);
        memset(&err, 0, sizeof err);
        tk_code rc = tk_log_append(g_log, in, n, &first, &err);
        ran(CK_APPEND);
        if (rc != TK_OK) {
            fail(CK_APPEND, "thread %u seq %u (n=%zu): tk_log_append: %s: %s",
                 t, s, n, code_name(rc), err.msg);
            break;
        }
        if (first < 0 || first > TOTAL - (int64_t)n) {
            fail(CK_APPEND, "thread %u seq %u: append returned first offset %"
                 PRId64, t, s, first);
            break;
        }
        for (size_t i = 0; i < n; i++)
            appended_at[t][s + i] = first + (int64_t)i;
        if (n == BATCH)
            batches_of[t]++;
        else
            singles_of[t]++;
        s += (uint32_t)n;
        if ((rng(&st) & 15) == 0)
            sched_yield();          /* shuffle the interleaving a little */
    }
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Readers                                                              */
/* ------------------------------------------------------------------ */

/* One read below the high water mark.  Returns 0 to stop. */
static int read_one(uint64_t *st, tk_record *rec) {
    tk_err err;
    char why[WHY_LEN];
    uint32_t t, s;
    int64_t base = tk_log_base_offset(g_log);
    int64_t h = tk_log_high_water_mark(g_log);

    if (h <= base) {
        sched_yield();
        return 1;
    }
    /* A quarter of the reads go to the newest record: if the engine
     * published the high water mark before the bytes behind it, that is
     * where it shows. */
    uint64_t r = rng(st);
    int64_t off = base + (int64_t)((r >> 2) % (uint64_t)(h - base));
    if ((r & 3) == 0)
        off = h - 1;
    tk_code rc = tk_log_read(g_log, off, rec, &err);
    ran(CK_READ);
    if (rc != TK_OK) {
        fail(CK_READ, "tk_log_read(%" PRId64 ") with hwm %" PRId64 ": %s: %s",
             off, h, code_name(rc), err.msg);
        return 0;
    }
    if (!check_record(rec, off, &t, &s, why, sizeof why) ||
        !note_identity(off, t, s, why, sizeof why)) {
        fail(CK_READ, "tk_log_read: %s", why);
        return 0;
    }
    return 1;
}

/* Offsets outside [base, hwm) must be refused as OUT_OF_RANGE. */
static int read_out_of_range(tk_record *rec) {
    static const int64_t past = 1000000;
    int64_t bad[2] = { -1, tk_log_high_water_mark(g_log) + past };
    tk_err err;

    for (int i = 0; i < 2; i++) {
        tk_code rc = tk_log_read(g_log, bad[i], rec, &err);
        ran(CK_READ);
        if (rc != TK_OUT_OF_RANGE) {
            fail(CK_READ, "tk_log_read(%" PRId64 ") returned %s, "
                 "want OUT_OF_RANGE", bad[i], code_name(rc));
            return 0;
        }
    }
    return 1;
}

/*
 * Iterate [from, to) and check the offsets run from..to-1 without a gap.
 * to < 0 asks for the high water mark at creation, which lies between the
 * marks read just before and just after tk_iter_open.
 */
static int iter_range(int64_t from, int64_t to, tk_record *rec) {
    tk_iter *it = NULL;
    tk_err err;
    char why[WHY_LEN];
    int64_t h0 = tk_log_high_water_mark(g_log);
    tk_code rc = tk_iter_open(g_log, from, to, &it, &err);
    int64_t h1 = tk_log_high_water_mark(g_log);
    int64_t next = from;
    int done = 0, good = 1;

    ran(CK_ITER);
    if (rc != TK_OK) {
        fail(CK_ITER, "tk_iter_open(%" PRId64 ", %" PRId64 ") with hwm %" PRId64
             ": %s: %s", from, to, h0, code_name(rc), err.msg);
        return 0;
    }
    for (;;) {
        uint32_t t, s;
        rc = tk_iter_next(it, rec, &done, &err);
        if (rc != TK_OK) {
            fail(CK_ITER, "tk_iter_next at %" PRId64 " in [%" PRId64 ", %"
                 PRId64 "): %s: %s", next, from, to, code_name(rc), err.msg);
            good = 0;
            break;
        }
        if (done)
            break;
        if (!check_record(rec, next, &t, &s, why, sizeof why) ||
            !note_identity(next, t, s, why, sizeof why)) {
            fail(CK_ITER, "iterating [%" PRId64 ", %" PRId64 "): %s", from,
                 to, why);
            good = 0;
            break;
        }
        next++;
    }
    tk_iter_close(it);
    if (!good)
        return 0;
    int64_t lo = to >= 0 ? to : h0, hi = to >= 0 ? to : h1;
    if (next < lo || next > hi) {
        fail(CK_ITER, "iterating [%" PRId64 ", %" PRId64 ") ended at %" PRId64
             ", want %" PRId64 "..%" PRId64, from, to, next, lo, hi);
        return 0;
    }
    return 1;
}

static int iter_some(uint64_t *st, tk_record *rec) {
    int64_t base = tk_log_base_offset(g_log);
    int64_t h = tk_log_high_water_mark(g_log);

    if (rng(st) & 1)
        return iter_range(base, -1, rec);
    if (h <= base)
        return 1;
    int64_t from = base + (int64_t)(rng(st) % (uint64_t)(h - base));
    int64_t span = h - from < 300 ? h - from : 300;
    int64_t to = from + 1 + (int64_t)(rng(st) % (uint64_t)span);
    return iter_range(from, to, rec);
}

static void *reader(void *arg) {
    uint64_t st = 0x5EAD0000u + (uintptr_t)arg;
    tk_record rec;
    long loop = 0;

    memset(&rec, 0, sizeof rec);
    while (!atomic_load(&appends_done) || loop < MIN_LOOPS) {
        loop++;
        if (!read_one(&st, &rec))
            break;
        if (loop % 50 == 0 && !iter_some(&st, &rec))
            break;
        if (loop % 100 == 0 && !read_out_of_range(&rec))
            break;
    }
    tk_record_free(&rec);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Stats thread                                                         */
/* ------------------------------------------------------------------ */

/*
 * The answer r for time T lies in [0, hwm]; the record before r, which
 * existed when the call ran, is older than T.  If r is below the hwm read
 * before the call, record r existed too and is at or after T; otherwise r
 * may be "none yet" (the hwm the engine saw) and the record that has since
 * landed there can be anything.
 */
static int time_once(uint64_t *st, tk_record *rec) {
    tk_err err;
    int64_t ts = random_time(st, 50);
    int64_t r = -1;
    int64_t h0 = tk_log_high_water_mark(g_log);
    tk_code rc = tk_log_offset_for_time(g_log, ts, &r, &err);
    int64_t h = tk_log_high_water_mark(g_log);

    ran(CK_TIME);
    if (rc != TK_OK) {
        fail(CK_TIME, "tk_log_offset_for_time(%" PRId64 "): %s: %s", ts,
             code_name(rc), err.msg);
        return 0;
    }
    if (r < 0 || r > h) {
        fail(CK_TIME, "tk_log_offset_for_time(%" PRId64 ") = %" PRId64
             ", outside [0, hwm %" PRId64 "]", ts, r, h);
        return 0;
    }
    if (r < h0) {
        rc = tk_log_read(g_log, r, rec, &err);
        if (rc != TK_OK || rec->timestamp < ts) {
            fail(CK_TIME, "tk_log_offset_for_time(%" PRId64 ") = %" PRId64
                 " but that record's timestamp is %" PRId64 " (%s)", ts, r,
                 rc == TK_OK ? rec->timestamp : -1, code_name(rc));
            return 0;
        }
    }
    if (r > 0) {
        rc = tk_log_read(g_log, r - 1, rec, &err);
        if (rc != TK_OK || rec->timestamp >= ts) {
            fail(CK_TIME, "tk_log_offset_for_time(%" PRId64 ") = %" PRId64
                 " but the record before has timestamp %" PRId64 " (%s)", ts, r,
                 rc == TK_OK ? rec->timestamp : -1, code_name(rc));
            return 0;
        }
    }
    return 1;
}

/*
 * A snapshot of the segments: bases increase from 0, sealed segments are
 * non-empty and contiguous with their successor, none is larger than
 * max_segment_size (every record here is far smaller), and only the last
 * is active.  Sealed segments never change, so this holds
 * even if the snapshot were taken piecemeal.  The segment count and the
 * total size only grow in this test.
 */
static int segs_once(tk_segment_info *segs, size_t *last_n,
                     uint64_t *last_size) {
    size_t n0 = tk_log_num_segments(g_log);
    uint64_t size0 = tk_log_size(g_log);
    size_t n = tk_log_segments(g_log, segs, MAX_SEGS);

    ran(CK_SEGS);
    if (n0 < *last_n || size0 < *last_size) {
        fail(CK_SEGS, "went backwards: %zu segments / %" PRIu64 " bytes "
             "after %zu / %" PRIu64, n0, size0, *last_n, *last_size);
        return 0;
    }
    *last_n = n0;
    *last_size = size0;
    if (n < 1 || n > MAX_SEGS || n < n0) {
        fail(CK_SEGS, "tk_log_segments returned %zu (num_segments said %zu)",
             n, n0);
        return 0;
    }
    if (segs[0].base_offset != 0) {
        fail(CK_SEGS, "first segment has base %" PRId64, segs[0].base_offset);
        return 0;
    }
    for (size_t k = 0; k < n; k++) {
        const tk_segment_info *g = &segs[k];
        int last = k + 1 == n;
        if (g->active != last || g->next_offset < g->base_offset ||
            g->size > SEGMENT_SIZE ||
            (!last && (g->next_offset != segs[k + 1].base_offset ||
                       g->size == 0))) {
            fail(CK_SEGS, "segment %zu of %zu: base %" PRId64 " next %" PRId64
                 " size %" PRIu64 " active %d; next segment base %" PRId64,
                 k, n, g->base_offset, g->next_offset, g->size, g->active,
                 last ? -1 : segs[k + 1].base_offset);
            return 0;
        }
    }
    return 1;
}

static void *stats(void *arg) {
    uint64_t st = 0x57A75000u;
    tk_segment_info *segs = calloc(MAX_SEGS, sizeof *segs);
    tk_record rec;
    size_t last_n = 0;
    uint64_t last_size = 0;
    long loop = 0;

    (void)arg;
    memset(&rec, 0, sizeof rec);
    if (segs == NULL) {
        fail(CK_SEGS, "out of memory");
        return NULL;
    }
    while (!atomic_load(&appends_done) || loop < MIN_LOOPS / 4) {
        loop++;
        if (!time_once(&st, &rec) || !segs_once(segs, &last_n, &last_size))
            break;
        sleep_us(200);
    }
    tk_record_free(&rec);
    free(segs);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Phase 2: checks on the quiet log                                     */
/* ------------------------------------------------------------------ */

/* What the log must hold, rebuilt from one full scan. */
static uint32_t final_id[TOTAL];
static int64_t final_ts[TOTAL];

/* Scan [0, TOTAL) once, checking each record and the per-thread order. */
static void check_contents(void) {
    tk_iter *it = NULL;
    tk_record rec;
    tk_err err;
    char why[WHY_LEN] = "";
    uint32_t next_seq[APPENDERS] = { 0 };
    int64_t off = 0;
    int done = 0, good = 1;

    memset(&rec, 0, sizeof rec);
    tk_code rc = tk_iter_open(g_log, 0, -1, &it, &err);
    if (rc != TK_OK) {
        snprintf(why, sizeof why, "tk_iter_open: %s: %s", code_name(rc),
                 err.msg);
        good = 0;
    }
    while (good) {
        uint32_t t, s;
        rc = tk_iter_next(it, &rec, &done, &err);
        if (rc != TK_OK) {
            snprintf(why, sizeof why, "tk_iter_next at %" PRId64 ": %s: %s",
                     off, code_name(rc), err.msg);
            good = 0;
        } else if (done) {
            break;
        } else if (off >= TOTAL) {
            snprintf(why, sizeof why, "record at %" PRId64 " beyond %d", off,
                     TOTAL);
            good = 0;
        } else if (!check_record(&rec, off, &t, &s, why, sizeof why)) {
            good = 0;
        } else if (s != next_seq[t]) {
            snprintf(why, sizeof why, "offset %" PRId64 " holds t%u s%u but "
                     "thread %u's next record should be s%u", off, t, s, t,
                     next_seq[t]);
            good = 0;
        } else {
            next_seq[t]++;
            final_id[off] = record_id(t, s);
            final_ts[off] = rec.timestamp;
            off++;
        }
    }
    if (it != NULL)
        tk_iter_close(it);
    tk_record_free(&rec);
    for (uint32_t t = 0; good && t < APPENDERS; t++)
        if (next_seq[t] != PER_THREAD) {
            snprintf(why, sizeof why, "thread %u: %u records found, want %d", t,
                     next_seq[t], PER_THREAD);
            good = 0;
        }
    ok(good, "every (thread, seq) exactly once, each thread's in order");
    if (!good)
        diag(why);

    /* Identities readers saw while the log grew are the final ones. */
    long mismatched = 0;
    int64_t first_bad = -1;
    for (int64_t o = 0; o < TOTAL; o++) {
        unsigned seen = atomic_load(&seen_id[o]);
        if (seen != 0 && seen != final_id[o] && mismatched++ == 0)
            first_bad = o;
    }
    ok(mismatched == 0, "records read during the appends are the final ones");
    if (mismatched)
        printf("#   %ld offsets differ, first %" PRId64 "\n", mismatched,
               first_bad);
}

static void check_append_offsets(void) {
    long bad = 0, batches = 0, singles = 0;
    char why[WHY_LEN] = "";

    for (uint32_t t = 0; t < APPENDERS; t++) {
        batches += batches_of[t];
        singles += singles_of[t];
        for (uint32_t s = 0; s < PER_THREAD; s++) {
            int64_t o = appended_at[t][s];
            if ((o < 0 || o >= TOTAL || final_id[o] != record_id(t, s)) &&
                bad++ == 0)
                snprintf(why, sizeof why, "t%u s%u: append said offset %"
                         PRId64, t, s, o);
        }
    }
    ok(bad == 0 && batches > 0 && singles > 0,
       "append's first offsets hold the records appended (%ld batches of %d, "
       "%ld single appends)", batches, BATCH, singles);
    if (bad)
        diag(why);
}

static void check_segments(void) {
    tk_segment_info *segs = calloc(MAX_SEGS, sizeof *segs);
    size_t n = segs ? tk_log_segments(g_log, segs, MAX_SEGS) : 0;
    uint64_t want = 0, sum = 0;
    int good = segs != NULL && n > 1 && n <= MAX_SEGS &&
               n == tk_log_num_segments(g_log);

    for (int64_t o = 0; o < TOTAL; o++)
        want += framed_size(id_thread(final_id[o]), id_seq(final_id[o]));
    for (size_t k = 0; good && k < n; k++) {
        sum += segs[k].size;
        good = segs[k].size <= SEGMENT_SIZE && segs[k].active == (k + 1 == n) &&
               segs[k].base_offset == (k ? segs[k - 1].next_offset : 0);
    }
    good = good && segs[n - 1].next_offset == TOTAL;
    ok(good && sum == want && tk_log_size(g_log) == want,
       "%zu segments of at most %u bytes, contiguous, %" PRIu64 " bytes in all "
       "(tk_log_size %" PRIu64 ", want %" PRIu64 ")", n, SEGMENT_SIZE, sum,
       tk_log_size(g_log), want);
    free(segs);
}

/* First offset whose timestamp is >= ts, from the scan. */
static int64_t expected_for_time(int64_t ts) {
    for (int64_t o = 0; o < TOTAL; o++)
        if (final_ts[o] >= ts)
            return o;
    return TOTAL;
}

static int check_times(tk_log *log, char *why, size_t whylen) {
    uint64_t st = 0x71BE0000u;
    for (int i = 0; i < 600; i++) {
        int64_t ts, got = -1;
        tk_err err;
        if (i == 0)
            ts = INT64_MIN;
        else if (i == 1)
            ts = TS_MIN;
        else if (i == 2)
            ts = TS_MAX;
        else if (i == 3)
            ts = TS_MAX + 1;
        else
            ts = random_time(&st, 5);
        int64_t want = expected_for_time(ts);
        tk_code rc = tk_log_offset_for_time(log, ts, &got, &err);
        if (rc != TK_OK || got != want) {
            snprintf(why, whylen, "tk_log_offset_for_time(%" PRId64 ") = %"
                     PRId64 " (%s %s), want %" PRId64, ts, got, code_name(rc),
                     rc == TK_OK ? "" : err.msg, want);
            return 0;
        }
    }
    return 1;
}

/* Read every offset by tk_log_read and compare with the scan. */
static int check_all_reads(tk_log *log, char *why, size_t whylen) {
    tk_record rec;
    tk_err err;
    int good = 1;

    memset(&rec, 0, sizeof rec);
    for (int64_t o = 0; good && o < TOTAL; o++) {
        uint32_t t, s;
        tk_code rc = tk_log_read(log, o, &rec, &err);
        if (rc != TK_OK) {
            snprintf(why, whylen, "tk_log_read(%" PRId64 "): %s: %s", o,
                     code_name(rc), err.msg);
            good = 0;
        } else if (!check_record(&rec, o, &t, &s, why, whylen)) {
            good = 0;
        } else if (record_id(t, s) != final_id[o]) {
            snprintf(why, whylen, "offset %" PRId64 " now holds t%u s%u", o,
                     t, s);
            good = 0;
        }
    }
    tk_record_free(&rec);
    return good;
}

static void check_readonly(const char *dir) {
    tk_log_opts o;
    tk_log *ro = NULL;
    tk_err err;
    char why[WHY_LEN] = "";

    tk_log_opts_init(&o);
    o.readonly = 1;
    tk_code rc = tk_log_open(dir, &o, &ro, &err);
    int good = rc == TK_OK;
    if (!good)
        snprintf(why, sizeof why, "tk_log_open(readonly): %s: %s",
                 code_name(rc), err.msg);
    else if (tk_log_high_water_mark(ro) != TOTAL || !tk_log_readonly(ro)) {
        snprintf(why, sizeof why, "read-only hwm %" PRId64 ", readonly %d",
                 tk_log_high_water_mark(ro), tk_log_readonly(ro));
        good = 0;
    } else {
        good = check_all_reads(ro, why, sizeof why);
    }
    tk_log_close(ro);
    ok(good, "a read-only handle opened beside the writer sees every record");
    if (!good)
        diag(why);
}

static void check_reopen(const char *dir, const tk_log_opts *opts) {
    size_t nseg = tk_log_num_segments(g_log);
    uint64_t size = tk_log_size(g_log);
    tk_err err;
    char why[WHY_LEN] = "";

    tk_log_close(g_log);
    g_log = NULL;
    tk_code rc = tk_log_open(dir, opts, &g_log, &err);
    ok(rc == TK_OK, "reopen");
    if (rc != TK_OK) {
        printf("#   tk_log_open: %s: %s\n", code_name(rc), err.msg);
        return;
    }
    ok(tk_log_high_water_mark(g_log) == TOTAL &&
       tk_log_base_offset(g_log) == 0 &&
       tk_log_num_segments(g_log) == nseg && tk_log_size(g_log) == size,
       "reopened: hwm %" PRId64 " (want %d), %zu segments (want %zu), %" PRIu64
       " bytes (want %" PRIu64 ")", tk_log_high_water_mark(g_log), TOTAL,
       tk_log_num_segments(g_log), nseg, tk_log_size(g_log), size);

    int good = check_all_reads(g_log, why, sizeof why);
    ok(good, "reopened: every record intact (tk_log_read of all %d)", TOTAL);
    if (!good)
        diag(why);
    good = check_times(g_log, why, sizeof why);
    ok(good, "reopened: tk_log_offset_for_time exact");
    if (!good)
        diag(why);

    /* The writer carries on where it stopped. */
    tk_rec_in in;
    struct rec_buf b;
    int64_t first = -1;
    fill_rec(0, 0, &in, &b);
    rc = tk_log_append(g_log, &in, 1, &first, &err);
    ok(rc == TK_OK && first == TOTAL &&
       tk_log_high_water_mark(g_log) == TOTAL + 1,
       "reopened: next append gets offset %" PRId64 " (want %d)", first, TOTAL);
    if (rc != TK_OK)
        printf("#   tk_log_append: %s: %s\n", code_name(rc), err.msg);
}

/* ------------------------------------------------------------------ */
/* Main                                                                 */
/* ------------------------------------------------------------------ */

static int start_threads(pthread_t *th, int n, void *(*fn)(void *)) {
    for (int i = 0; i < n; i++)
        if (pthread_create(&th[i], NULL, fn, (void *)(uintptr_t)i) != 0)
            return i;
    return n;
}

static void join_threads(pthread_t *th, int n) {
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
}

static void run_concurrent(void) {
    pthread_t app[APPENDERS], rd[READERS], stat_th[1];
    double t0 = now_s();
    int na = start_threads(app, APPENDERS, appender);
    int nr = start_threads(rd, READERS, reader);
    int ns = start_threads(stat_th, 1, stats);

    join_threads(app, na);
    atomic_store(&appends_done, 1);
    double t1 = now_s();
    join_threads(rd, nr);
    join_threads(stat_th, ns);
    ok(na == APPENDERS && nr == READERS && ns == 1, "started %d threads",
       na + nr + ns);
    printf("# appends took %.2f s, phase 1 %.2f s\n", t1 - t0, now_s() - t0);

    report(CK_APPEND, "concurrent appends succeed");
    report(CK_READ, "concurrent tk_log_read of random offsets below the hwm");
    report(CK_ITER, "concurrent iterators yield contiguous, intact records");
    report(CK_TIME, "concurrent tk_log_offset_for_time consistent");
    report(CK_SEGS, "concurrent tk_log_segments, num_segments, size "
           "consistent");
}

int main(void) {
    char dir[] = "/tmp/takhin-threads.XXXXXX";
    const char *to = getenv("TK_TEST_TIMEOUT");
    tk_log_opts opts;
    tk_err err;

    signal(SIGALRM, watchdog);
    alarm(to ? (unsigned)atoi(to) : 300u);
    if (mkdtemp(dir) == NULL) {
        printf("Bail out! mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    printf("# dir %s\n", dir);

    tk_log_opts_init(&opts);
    opts.max_segment_size = SEGMENT_SIZE;
    opts.index_interval_bytes = INDEX_BYTES;
    tk_code rc = tk_log_open(dir, &opts, &g_log, &err);
    ok(rc == TK_OK, "open a fresh log (max_segment_size %u)", SEGMENT_SIZE);
    if (rc != TK_OK) {
        printf("#   tk_log_open: %s: %s\n", code_name(rc), err.msg);
    } else {
        run_concurrent();
        ok(tk_log_high_water_mark(g_log) == TOTAL &&
           tk_log_base_offset(g_log) == 0,
           "hwm %" PRId64 " == %d records appended, base %" PRId64,
           tk_log_high_water_mark(g_log), TOTAL, tk_log_base_offset(g_log));
        check_contents();
        check_append_offsets();
        check_segments();
        char why[WHY_LEN] = "";
        int good = check_times(g_log, why, sizeof why);
        ok(good, "tk_log_offset_for_time exact (non-monotonic timestamps)");
        if (!good)
            diag(why);
        check_readonly(dir);
        check_reopen(dir, &opts);
        tk_log_close(g_log);
    }

    int rm = nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    ok(rm == 0, "remove %s", dir);
    printf("1..%d\n", n_run);
    if (n_failed)
        printf("# %d of %d failed\n", n_failed, n_run);
    return n_failed ? 1 : 0;
}
