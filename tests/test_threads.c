/*
 * test_threads.c -- one tk_log handle driven from many threads at once.
 *
 * Phase 1, concurrently on one writer handle:
 *   - APPENDERS threads each append PER_THREAD records, as a random mix of
 *     single appends and batches of BATCH;
 *   - READERS threads read random offsets below the high water mark,
 *     iterate ranges, and probe out-of-range offsets;
 *   - one stats thread calls tk_log_offset_for_time, tk_log_segments,
 *     tk_log_num_segments and tk_log_size;
 *   - one snapshot thread calls tk_snap_create on the shared handle: each
 *     snapshot's high water mark lies between the marks read just before
 *     and just after the call.  The appenders wait at SNAP_GATES points
 *     for the next snapshot to finish, so cuts land in the middle of the
 *     appends whatever the relative speeds (plain, TSan, ASan builds);
 *   - one restore thread restores random listed snapshots into fresh
 *     directories (some with upto_offset), opens each read-only and checks
 *     its high water mark and every record (the same identity check the
 *     readers make), verifies random snapshots, then removes the copy;
 *   - DELETERS threads delete random older snapshots (NOT_FOUND when the
 *     other got there first) and now and then tk_snap_cleanup(3, -1).
 *   Every snapshot thread opens its own tk_snapmgr on the log's default
 *   snapshot directory (the manager takes no in-process locks; separate
 *   handles meet only in flock on <snapdir>/.lock).  Opening a manager
 *   sweeps leftover .tmp-* and .del-* directories, so the opens at thread
 *   start and the deleters' reopens now and then run that sweep beside a
 *   create in progress, whose .tmp-<id> must survive it.  A restore,
 *   verify or delete that fails because the snapshot was deleted meanwhile
 *   must fail with NOT_FOUND.
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
 * the snapshot catalog is newest first, holds exactly the snapshots created
 * and not deleted, each verifies, nothing is left half-made, and the newest
 * restores to the whole log; a read-only handle sees it all; after close
 * and reopen nothing changed, and every snapshot still verifies after the
 * reopened writer appended (hard links are never written through).
 *
 * Phase 3, background jobs on another log: threads start async create,
 * verify and restore on shared managers, cancel some at random moments and
 * free some while they run, while other threads append; a manager is
 * closed under its running jobs (see "Phase 3" below for what is checked).
 *
 * Output is TAP; the exit status is non-zero when any test fails.  A
 * watchdog (TK_TEST_TIMEOUT seconds, default 300) turns a hang into a
 * "Bail out!" rather than a stuck CI job.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "takhin.h"
#include "tap.h"

#include <dirent.h>
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

#define SNAP_GATES    8         /* appenders wait for a snapshot 7 times */
#define MIN_SNAPS     10        /* made, even if the appends end first */
#define SNAP_BUDGET_S 6.0       /* then gates open, MIN_SNAPS is waived */
#define MAX_SNAPS     40        /* at most this many created in all */
#define MIN_RESTORES  6         /* checked, even if snapshots end first */
#define MAX_RESTORES  60        /* restore attempts at most */
#define DELETERS      2
#define KEEP          3         /* tk_snap_cleanup's max_snapshots */

#define HDR_LEN       10        /* "T%1u S%05u|" */
#define VALUE_MAX     (HDR_LEN + 40 + 120)
#define KEY_MAX       32
#define TS_BASE       INT64_C(1700000000000)

/* ------------------------------------------------------------------ */
/* Failure bookkeeping (TAP: tap.h)                                     */
/* ------------------------------------------------------------------ */

/*
 * What the threads of phase 1 check, each with a failure count and the
 * message of its first failure.  Only the thread whose increment took the
 * count from 0 writes the message, and main reads it after joining every
 * thread, so the message needs no lock.
 */
enum { CK_APPEND, CK_READ, CK_ITER, CK_TIME, CK_SEGS, CK_SNAP, CK_RESTORE,
       CK_VERIFY, CK_DELETE, CK_GONE, CK_COUNT };

static struct check {
    atomic_long fails;
    atomic_long runs;
    char first[WHY_LEN];
} checks[CK_COUNT];

/* A check counts its runs and failures from any thread and keeps the
 * first failure's text. */
__attribute__((format(printf, 2, 3)))
static void check_fail(struct check *c, const char *fmt, ...) {
    if (atomic_fetch_add(&c->fails, 1) == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->first, sizeof c->first, fmt, ap);
        va_end(ap);
    }
}

static void check_ran(struct check *c) {
    atomic_fetch_add_explicit(&c->runs, 1, memory_order_relaxed);
}

static void check_report(struct check *c, const char *what) {
    long f = atomic_load(&c->fails), r = atomic_load(&c->runs);
    ok(f == 0, "%s (%ld checks, %ld failed)", what, r, f);
    if (f)
        diag(c->first);
}

#define fail(ck, ...)      check_fail(&checks[ck], __VA_ARGS__)
#define ran(ck)            check_ran(&checks[ck])
#define report(ck, what)   check_report(&checks[ck], what)

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
static char g_dir[64];                  /* the log's directory */
static char g_restore_root[64];         /* where restores go */
static atomic_int appends_done;
static atomic_int snaps_taken;          /* creates finished, ok or not */
static atomic_int gates_open;           /* appenders no longer wait for them */
static atomic_int snaps_stopped;        /* the snapshot thread is done */

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

/* Record s of each appender waits until s * SNAP_GATES / PER_THREAD
 * snapshots are done, unless the gates are open (the snapshot thread ran
 * out of time or stopped). */
static void wait_for_snapshots(uint32_t s) {
    int gate = (int)((uint64_t)s * SNAP_GATES / PER_THREAD);
    while (gate > atomic_load(&snaps_taken) && !atomic_load(&gates_open))
        sleep_us(100);
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
        wait_for_snapshots(s);
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
/* Snapshot threads                                                     */
/* ------------------------------------------------------------------ */

/* Tallies for the report and the accounting after the run. */
static atomic_long snaps_created, snaps_deleted, deletes_done, deletes_missed,
    cleanups_done, cleanup_deleted, too_soon_seen, restores_done,
    restores_upto, restores_lost, verifies_done, verifies_lost, mgr_opens;

/* The newest snapshot's id and the time creates took: written by the
 * snapshot thread, read by main after the join. */
static char newest_id[TK_SNAP_ID_MAX];
static double create_s, create_max_s;
static int budget_out;                  /* SNAP_BUDGET_S ran out */

static int64_t realtime_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Every thread opens its own manager on the log's default directory. */
static tk_snapmgr *open_mgr(int ck, const char *who) {
    tk_snapmgr *m = NULL;
    tk_err err;
    tk_code rc = tk_snapmgr_open(g_dir, NULL, TK_SNAP_LINK, &m, &err);

    ran(ck);
    atomic_fetch_add(&mgr_opens, 1);
    if (rc != TK_OK) {
        fail(ck, "%s: tk_snapmgr_open(%s): %s: %s", who, g_dir, code_name(rc),
             err.msg);
        return NULL;
    }
    return m;
}

/* What any snapshot of this log looks like, taken while the high water
 * mark was between h0 and h1. */
static int check_snap_meta(const tk_snapshot *sn, int64_t h0, int64_t h1,
                           char *why, size_t whylen) {
    const int64_t *so = sn->segment_offsets;

    if (tk_snap_check_id(sn->id, NULL) != TK_OK || sn->mode != TK_SNAP_LINK) {
        snprintf(why, whylen, "snapshot '%.64s': bad id or mode %d", sn->id,
                 (int)sn->mode);
        return 0;
    }
    if (sn->base_offset != 0 || sn->high_water_mark < h0 ||
        sn->high_water_mark > h1) {
        snprintf(why, whylen, "snapshot %s holds [%" PRId64 ", %" PRId64 "), "
                 "want [0, %" PRId64 "..%" PRId64 ")", sn->id, sn->base_offset,
                 sn->high_water_mark, h0, h1);
        return 0;
    }
    if (sn->num_segments < 1 || so == NULL || so[0] != 0 ||
        (sn->high_water_mark > 0 && sn->total_size == 0)) {
        snprintf(why, whylen, "snapshot %s: %zu segments, first at %" PRId64
                 ", %" PRIu64 " bytes", sn->id, sn->num_segments,
                 so ? so[0] : -1, sn->total_size);
        return 0;
    }
    for (size_t k = 1; k < sn->num_segments; k++)
        if (so[k] <= so[k - 1] || so[k] > sn->high_water_mark) {
            snprintf(why, whylen, "snapshot %s: segment %zu at %" PRId64
                     " after %" PRId64 " (hwm %" PRId64 ")", sn->id, k, so[k],
                     so[k - 1], sn->high_water_mark);
            return 0;
        }
    return 1;
}

/*
 * An operation on snapshot id failed with rc.  That is fine only when the
 * snapshot is gone (another thread deleted it meanwhile) and rc says so:
 * NOT_FOUND.  Another code for a snapshot that is gone fails CK_GONE and
 * the thread goes on; a failure while the snapshot is still listed fails
 * check ck and stops the thread (returns 0).
 */
static int lost_race(tk_snapmgr *m, int ck, const char *op, const char *id,
                     tk_code rc, const tk_err *err, atomic_long *lost) {
    tk_snapshot got;
    tk_err e2;

    memset(&got, 0, sizeof got);
    tk_code g = tk_snap_get(m, id, &got, &e2);
    if (g == TK_OK)
        tk_snapshot_free(&got);
    ran(CK_GONE);
    if (g == TK_NOT_FOUND && rc == TK_NOT_FOUND) {
        atomic_fetch_add(lost, 1);
        return 1;
    }
    if (g == TK_NOT_FOUND) {
        fail(CK_GONE, "%s(%s) returned %s, want NOT_FOUND: the snapshot was "
             "deleted meanwhile: %s", op, id, code_name(rc), err->msg);
        return 1;
    }
    fail(ck, "%s(%s): %s: %s [tk_snap_get then: %s]", op, id, code_name(rc),
         err->msg, g == TK_OK ? "still listed" : code_name(g));
    return 0;
}

/* ---- create ---- */

static void *snapshotter(void *arg) {
    tk_snapmgr *m = open_mgr(CK_SNAP, "snapshot thread");
    char why[WHY_LEN], label[32];
    int k = 0, made = 0, after = 0; /* after: one made after the appends */
    double start = now_s();

    (void)arg;
    /* Slow fsyncs (a busy disk) make creates slow: past the budget the
     * appenders stop waiting and one snapshot after the appends will do. */
    while (m != NULL && k < MAX_SNAPS &&
           (!after || (made < MIN_SNAPS && !budget_out))) {
        if (!budget_out && now_s() - start > SNAP_BUDGET_S) {
            budget_out = 1;
            atomic_store(&gates_open, 1);
        }
        tk_create_opts o;
        tk_snapshot sn, got;
        tk_err err;
        int good = 1;

        memset(&o, 0, sizeof o);
        memset(&sn, 0, sizeof sn);
        memset(&got, 0, sizeof got);
        snprintf(label, sizeof label, "threads-%d", k);
        o.label = label;
        int began_after = atomic_load(&appends_done);
        int64_t t0 = realtime_ms(), h0 = tk_log_high_water_mark(g_log);
        double c0 = now_s();
        tk_code rc = tk_snap_create(m, g_log, &o, &sn, &err);
        double c1 = now_s();
        int64_t h1 = tk_log_high_water_mark(g_log), t1 = realtime_ms();
        atomic_store(&snaps_taken, ++k);        /* let the appenders go on */
        create_s += c1 - c0;
        if (c1 - c0 > create_max_s)
            create_max_s = c1 - c0;
        ran(CK_SNAP);
        if (rc != TK_OK) {              /* noted; the next one may work */
            fail(CK_SNAP, "tk_snap_create #%d (hwm %" PRId64 "): %s: %s", k,
                 h0, code_name(rc), err.msg);
            continue;
        }
        made++;
        after |= began_after;
        atomic_fetch_add(&snaps_created, 1);
        snprintf(newest_id, sizeof newest_id, "%s", sn.id);
        if (!check_snap_meta(&sn, h0, h1, why, sizeof why)) {
            fail(CK_SNAP, "tk_snap_create #%d: %s", k, why);
            good = 0;
        } else if (sn.timestamp < t0 || sn.timestamp > t1 ||
                   strcmp(sn.label, label) != 0) {
            fail(CK_SNAP, "tk_snap_create #%d: snapshot %s has timestamp %"
                 PRId64 " (taken %" PRId64 "..%" PRId64 "), label '%.40s'", k,
                 sn.id, sn.timestamp, t0, t1, sn.label);
            good = 0;
        }
        /* Only older snapshots are deleted: the newest is listed as made. */
        rc = good ? tk_snap_get(m, sn.id, &got, &err) : TK_OK;
        if (good && (rc != TK_OK ||
                     got.high_water_mark != sn.high_water_mark ||
                     got.timestamp != sn.timestamp ||
                     got.num_segments != sn.num_segments ||
                     got.total_size != sn.total_size)) {
            fail(CK_SNAP, "tk_snap_get(%s) right after create: %s %s (hwm %"
                 PRId64 ", want %" PRId64 ")", sn.id, code_name(rc),
                 rc == TK_OK ? "" : err.msg, got.high_water_mark,
                 sn.high_water_mark);
            good = 0;
        }
        tk_snapshot_free(&got);
        /* min_interval refuses while so young a snapshot exists. */
        if (good && k % 4 == 0) {
            o.min_interval_ms = INT64_C(3600000);
            rc = tk_snap_create(m, g_log, &o, &got, &err);
            ran(CK_SNAP);
            if (rc == TK_TOO_SOON) {
                atomic_fetch_add(&too_soon_seen, 1);
            } else {
                fail(CK_SNAP, "tk_snap_create(min_interval 1 h) just after %s:"
                     " %s, want TOO_SOON", sn.id, code_name(rc));
                if (rc == TK_OK) {
                    atomic_fetch_add(&snaps_created, 1);
                    snprintf(newest_id, sizeof newest_id, "%s", got.id);
                    tk_snapshot_free(&got);
                }
                good = 0;
            }
        }
        /* Distinct milliseconds, so that "newest" is never a tie. */
        while (good && realtime_ms() <= sn.timestamp)
            sleep_us(200);
        tk_snapshot_free(&sn);
        if (!good)
            break;
    }
    atomic_store(&gates_open, 1);
    atomic_store(&snaps_stopped, 1);
    tk_snapmgr_close(m);
    return NULL;
}

/* ---- restore and verify ---- */

/*
 * Open the restored log in dir read-only and check it holds [0, want):
 * the segments of sn when whole, every record intact, each appender's
 * records a prefix of its sequence, and each identity either the one in
 * final[] (after the run) or the one any reader saw there (during it).
 */
static int check_restored(const char *dir, const tk_snapshot *sn, int64_t want,
                          int whole, const uint32_t *final, tk_record *rec,
                          char *why, size_t whylen) {
    tk_log_opts o;
    tk_log *ro = NULL;
    tk_iter *it = NULL;
    tk_err err;
    uint32_t next_seq[APPENDERS] = { 0 };
    int64_t off = 0;
    int done = 0, good = 1;

    tk_log_opts_init(&o);
    o.mode = TK_LOG_READONLY;
    tk_code rc = tk_log_open(dir, &o, &ro, &err);
    if (rc != TK_OK) {
        snprintf(why, whylen, "restored %s: tk_log_open(readonly): %s: %.500s",
                 sn->id, code_name(rc), err.msg);
        return 0;
    }
    if (tk_log_high_water_mark(ro) != want || tk_log_base_offset(ro) != 0) {
        snprintf(why, whylen, "restored %s: hwm %" PRId64 " base %" PRId64
                 ", want hwm %" PRId64 " base 0", sn->id,
                 tk_log_high_water_mark(ro), tk_log_base_offset(ro), want);
        good = 0;
    }
    if (good && whole) {
        tk_segment_info segs[64];
        size_t n = tk_log_segments(ro, segs, 64);
        good = n == sn->num_segments && n <= 64;
        for (size_t k = 0; good && k < n; k++)
            good = segs[k].base_offset == sn->segment_offsets[k];
        if (!good)
            snprintf(why, whylen, "restored %s: %zu segments, the snapshot "
                     "lists %zu", sn->id, n, sn->num_segments);
    }
    if (good && (rc = tk_iter_open(ro, 0, -1, &it, &err)) != TK_OK) {
        snprintf(why, whylen, "restored %s: tk_iter_open: %s: %.500s", sn->id,
                 code_name(rc), err.msg);
        good = 0;
    }
    while (good) {
        uint32_t t, s;
        rc = tk_iter_next(it, rec, &done, &err);
        if (rc != TK_OK) {
            snprintf(why, whylen, "restored %s: tk_iter_next at %" PRId64
                     ": %s: %.500s", sn->id, off, code_name(rc), err.msg);
            good = 0;
        } else if (done) {
            break;
        } else if (!check_record(rec, off, &t, &s, why, whylen)) {
            good = 0;
        } else if (s != next_seq[t]) {
            snprintf(why, whylen, "restored %s: offset %" PRId64 " holds t%u "
                     "s%u, want s%u", sn->id, off, t, s, next_seq[t]);
            good = 0;
        } else if (final ? final[off] != record_id(t, s)
                         : !note_identity(off, t, s, why, whylen)) {
            if (final)
                snprintf(why, whylen, "restored %s: offset %" PRId64 " holds "
                         "t%u s%u, the log t%u s%u", sn->id, off, t, s,
                         id_thread(final[off]), id_seq(final[off]));
            good = 0;
        } else {
            next_seq[t]++;
            off++;
        }
    }
    if (good && off != want) {
        snprintf(why, whylen, "restored %s: %" PRId64 " records, want %" PRId64,
                 sn->id, off, want);
        good = 0;
    }
    tk_iter_close(it);
    tk_log_close(ro);
    return good;
}

/* Restore sn into a new directory (a third of the time up to a random
 * offset), check it, remove it.  Returns 0 to stop. */
static int restore_one(tk_snapmgr *m, uint64_t *st, const tk_snapshot *sn,
                       int serial, tk_record *rec) {
    char target[128], why[WHY_LEN];
    tk_restore_opts o;
    tk_err err;
    int64_t want = sn->high_water_mark;

    tk_restore_opts_init(&o);
    if (rng(st) % 3 == 0) {
        o.upto_offset = (int64_t)(rng(st) % (uint64_t)(want + 1));
        want = o.upto_offset;
    }
    snprintf(target, sizeof target, "%s/r-%d", g_restore_root, serial);
    tk_code rc = tk_snap_restore(m, sn->id, target, &o, &err);
    ran(CK_RESTORE);
    if (rc != TK_OK)
        return lost_race(m, CK_RESTORE, "tk_snap_restore", sn->id, rc, &err,
                         &restores_lost);
    int good = check_restored(target, sn, want, o.upto_offset == TK_NONE, NULL, rec,
                              why, sizeof why);
    if (!good)
        fail(CK_RESTORE, "%s (upto_offset %" PRId64 ")", why, o.upto_offset);
    if (nftw(target, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) {
        fail(CK_RESTORE, "remove %s: %s", target, strerror(errno));
        good = 0;
    }
    if (good) {
        atomic_fetch_add(&restores_done, 1);
        if (o.upto_offset != TK_NONE)
            atomic_fetch_add(&restores_upto, 1);
    }
    return good;
}

static int verify_one(tk_snapmgr *m, const char *id) {
    tk_err err;
    tk_code rc = tk_snap_verify(m, id, NULL, &err);
    ran(CK_VERIFY);
    if (rc != TK_OK)
        return lost_race(m, CK_VERIFY, "tk_snap_verify", id, rc, &err,
                         &verifies_lost);
    atomic_fetch_add(&verifies_done, 1);
    return 1;
}

static void *restorer(void *arg) {
    uint64_t st = 0x2E570000u;
    tk_snapmgr *m = open_mgr(CK_RESTORE, "restore thread");
    tk_record rec;
    int attempts = 0;

    (void)arg;
    memset(&rec, 0, sizeof rec);
    while (m != NULL && attempts < MAX_RESTORES &&
           (!atomic_load(&snaps_stopped) ||
            atomic_load(&restores_done) < MIN_RESTORES)) {
        tk_snapshot *list = NULL;
        size_t n = 0;
        tk_err err;
        tk_code rc = tk_snap_list(m, &list, &n, &err);
        ran(CK_RESTORE);
        if (rc != TK_OK) {
            fail(CK_RESTORE, "tk_snap_list: %s: %s", code_name(rc), err.msg);
            break;
        }
        if (n == 0) {
            tk_snapshot_list_free(list, n);
            if (atomic_load(&snaps_stopped))
                break;
            sleep_us(1000);
            continue;
        }
        int good = restore_one(m, &st, &list[rng(&st) % n], attempts, &rec);
        if (good && attempts % 2 == 0)
            good = verify_one(m, list[rng(&st) % n].id);
        attempts++;
        tk_snapshot_list_free(list, n);
        if (!good)
            break;
        sleep_us(2000 + (long)(rng(&st) % 8000));  /* spare the disk a little */
    }
    tk_record_free(&rec);
    tk_snapmgr_close(m);
    return NULL;
}

/* ---- delete and cleanup ---- */

static void *deleter(void *arg) {
    int me = (int)(uintptr_t)arg;
    uint64_t st = 0xDE1E7E00u + (uint64_t)me;
    tk_snapmgr *m = open_mgr(CK_DELETE, "delete thread");
    long loop = 0;

    while (m != NULL && !atomic_load(&snaps_stopped)) {
        tk_snapshot *list = NULL;
        size_t n = 0, deleted = 0;
        tk_err err;
        tk_code rc;

        sleep_us(4000 + (long)(rng(&st) % 16000));
        if (++loop % 8 == 0) {
            /* A fresh handle sweeps leftovers while the others work. */
            tk_snapmgr_close(m);
            if ((m = open_mgr(CK_DELETE, "delete thread (reopen)")) == NULL)
                break;
        }
        uint64_t r = rng(&st) % 8;
        if (r < 2) {
            rc = tk_snap_cleanup(m, KEEP, -1, &deleted, &err);
            ran(CK_DELETE);
            if (rc != TK_OK) {
                fail(CK_DELETE, "tk_snap_cleanup(%d, -1): %s: %s", KEEP,
                     code_name(rc), err.msg);
                break;
            }
            atomic_fetch_add(&cleanups_done, 1);
            atomic_fetch_add(&cleanup_deleted, (long)deleted);
            atomic_fetch_add(&snaps_deleted, (long)deleted);
            continue;
        }
        rc = tk_snap_list(m, &list, &n, &err);
        ran(CK_DELETE);
        if (rc != TK_OK) {
            fail(CK_DELETE, "tk_snap_list: %s: %s", code_name(rc), err.msg);
            break;
        }
        int good = 1;
        if (n >= 2 && r < 5) {              /* else just a list */
            char id[TK_SNAP_ID_MAX];
            snprintf(id, sizeof id, "%s", list[1 + rng(&st) % (n - 1)].id);
            rc = tk_snap_delete(m, id, &err);
            ran(CK_DELETE);
            if (rc == TK_OK) {
                atomic_fetch_add(&deletes_done, 1);
                atomic_fetch_add(&snaps_deleted, 1);
            } else {
                good = lost_race(m, CK_DELETE, "tk_snap_delete", id, rc, &err,
                                 &deletes_missed);
            }
        }
        tk_snapshot_list_free(list, n);
        if (!good)
            break;
    }
    tk_snapmgr_close(m);
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

/* ------------------------------------------------------------------ */
/* Phase 2: snapshots after the run                                     */
/* ------------------------------------------------------------------ */

/* Counts the entries of dir, only those named .tmp-* or .del-* when
 * leftovers_only; the first one found goes to first. */
static long count_entries(const char *dir, int leftovers_only, char *first,
                          size_t cap) {
    DIR *d = opendir(dir);
    struct dirent *de;
    long n = 0;

    if (d == NULL) {
        snprintf(first, cap, "opendir: %s", strerror(errno));
        return -1;
    }
    while ((de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
            continue;
        if (leftovers_only && strncmp(name, ".tmp-", 5) != 0 &&
            strncmp(name, ".del-", 5) != 0)
            continue;
        if (n++ == 0)
            snprintf(first, cap, "%s", name);
    }
    closedir(d);
    return n;
}

/* tk_snap_verify on every listed snapshot. */
static void verify_all(tk_snapmgr *m, const char *when) {
    tk_snapshot *list = NULL;
    size_t n = 0, bad = 0;
    tk_err err;
    char why[WHY_LEN] = "";
    tk_code rc = tk_snap_list(m, &list, &n, &err);

    if (rc != TK_OK)
        snprintf(why, sizeof why, "tk_snap_list: %s: %.500s", code_name(rc),
                 err.msg);
    for (size_t i = 0; rc == TK_OK && i < n; i++) {
        tk_code v = tk_snap_verify(m, list[i].id, NULL, &err);
        if (v != TK_OK && bad++ == 0)
            snprintf(why, sizeof why, "tk_snap_verify(%s): %s: %.500s",
                     list[i].id, code_name(v), err.msg);
    }
    ok(rc == TK_OK && n > 0 && bad == 0, "tk_snap_verify passes for all %zu "
       "listed snapshots %s", n, when);
    diag(why);
    tk_snapshot_list_free(list, n);
}

/* Restore up to 4 listed snapshots and compare them with the log. */
static void restore_listed(tk_snapmgr *m, const tk_snapshot *list, size_t n) {
    tk_record rec;
    tk_err err;
    char why[WHY_LEN] = "", target[128];
    size_t k, upto = n < 4 ? n : 4;
    int good = 1;

    memset(&rec, 0, sizeof rec);
    for (k = 0; good && k < upto; k++) {
        snprintf(target, sizeof target, "%s/final-%zu", g_restore_root, k);
        tk_code rc = tk_snap_restore(m, list[k].id, target, NULL, &err);
        if (rc != TK_OK) {
            snprintf(why, sizeof why, "tk_snap_restore(%s): %s: %.500s",
                     list[k].id, code_name(rc), err.msg);
            good = 0;
            break;
        }
        good = check_restored(target, &list[k], list[k].high_water_mark, 1,
                              final_id, &rec, why, sizeof why);
        if (nftw(target, rm_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 && good) {
            snprintf(why, sizeof why, "remove %s: %s", target, strerror(errno));
            good = 0;
        }
    }
    tk_record_free(&rec);
    ok(good && upto > 0 && list[0].high_water_mark == TOTAL, "the %zu newest "
       "snapshots restore to exactly the log's records below their hwm (the "
       "newest, taken after the appends, holds %" PRId64 " of %d)", upto,
       n ? list[0].high_water_mark : -1, TOTAL);
    diag(why);
}

/* Returns the manager, for verify_all after the reopen; NULL if none. */
static tk_snapmgr *check_snapshots(void) {
    tk_snapmgr *m = NULL;
    tk_snapshot *list = NULL;
    size_t n = 0;
    tk_err err;
    char why[WHY_LEN] = "", first[300] = "";
    long created = atomic_load(&snaps_created);
    long deleted = atomic_load(&snaps_deleted);

    tk_code rc = tk_snapmgr_open(g_dir, NULL, TK_SNAP_LINK, &m, &err);
    ok(rc == TK_OK, "open a tk_snapmgr after the run (%ld were opened during "
       "it)", atomic_load(&mgr_opens));
    if (rc != TK_OK) {
        printf("#   tk_snapmgr_open: %s: %s\n", code_name(rc), err.msg);
        return NULL;
    }
    rc = tk_snap_list(m, &list, &n, &err);
    ok(rc == TK_OK && n >= 1 && (long)n == created - deleted &&
       strcmp(list[0].id, newest_id) == 0,
       "tk_snap_list: %zu snapshots = %ld created - %ld deleted; the first "
       "is the last created", n, created, deleted);
    if (rc != TK_OK) {
        printf("#   tk_snap_list: %s: %s\n", code_name(rc), err.msg);
        tk_snapmgr_close(m);
        return NULL;
    }
    if (n >= 1 && strcmp(list[0].id, newest_id) != 0)
        printf("#   first listed %s, last created %s\n", list[0].id, newest_id);

    int order = 1, meta = 1;
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && order && (list[i].timestamp > list[i - 1].timestamp ||
                               strcmp(list[i].id, list[i - 1].id) == 0)) {
            printf("#   [%zu] %s at %" PRId64 " after [%zu] %s at %" PRId64
                   "\n", i, list[i].id, list[i].timestamp, i - 1,
                   list[i - 1].id, list[i - 1].timestamp);
            order = 0;
        }
        if (meta && !check_snap_meta(&list[i], 0, TOTAL, why, sizeof why))
            meta = 0;
    }
    ok(order, "tk_snap_list is newest first, no id twice");
    ok(meta, "every listed snapshot holds [0, hwm) in increasing segments");
    diag(why);

    verify_all(m, "after the run");

    long left = count_entries(tk_snapmgr_dir(m), 1, first, sizeof first);
    long rest = count_entries(g_restore_root, 0, first, sizeof first);
    ok(left == 0 && rest == 0, "nothing half-made: no .tmp-/.del- in the "
       "snapshot dir (%ld), nothing left in the restore dir (%ld)", left, rest);
    if (left || rest)
        diag(first);

    restore_listed(m, list, n);
    tk_snapshot_list_free(list, n);
    return m;
}

static void check_readonly(const char *dir) {
    tk_log_opts o;
    tk_log *ro = NULL;
    tk_err err;
    char why[WHY_LEN] = "";

    tk_log_opts_init(&o);
    o.mode = TK_LOG_READONLY;
    tk_code rc = tk_log_open(dir, &o, &ro, &err);
    int good = rc == TK_OK;
    if (!good)
        snprintf(why, sizeof why, "tk_log_open(readonly): %s: %s",
                 code_name(rc), err.msg);
    else if (tk_log_high_water_mark(ro) != TOTAL || !(tk_log_get_mode(ro) == TK_LOG_READONLY)) {
        snprintf(why, sizeof why, "read-only hwm %" PRId64 ", readonly %d",
                 tk_log_high_water_mark(ro), (tk_log_get_mode(ro) == TK_LOG_READONLY));
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
    pthread_t app[APPENDERS], rd[READERS], stat_th[1], snap_th[1], rest_th[1],
        del_th[DELETERS];
    char what[WHY_LEN];
    double t0 = now_s();
    int nsn = start_threads(snap_th, 1, snapshotter);
    if (nsn == 0) {                             /* no appender waits for it */
        atomic_store(&gates_open, 1);
        atomic_store(&snaps_stopped, 1);
    }
    int nre = start_threads(rest_th, 1, restorer);
    int nde = start_threads(del_th, DELETERS, deleter);
    int na = start_threads(app, APPENDERS, appender);
    int nr = start_threads(rd, READERS, reader);
    int ns = start_threads(stat_th, 1, stats);

    join_threads(app, na);
    atomic_store(&appends_done, 1);
    double t1 = now_s();
    join_threads(rd, nr);
    join_threads(stat_th, ns);
    join_threads(snap_th, nsn);
    double t2 = now_s();
    join_threads(rest_th, nre);
    join_threads(del_th, nde);
    ok(na == APPENDERS && nr == READERS && ns == 1 && nsn == 1 && nre == 1 &&
       nde == DELETERS, "started %d threads (%d of them on snapshots)",
       na + nr + ns + nsn + nre + nde, nsn + nre + nde);
    printf("# appends took %.2f s, snapshots %.2f s, phase 1 %.2f s\n",
           t1 - t0, t2 - t0, now_s() - t0);
    int taken = atomic_load(&snaps_taken);
    printf("# %d tk_snap_create calls took %.3f s on average, %.3f s at "
           "most%s\n", taken, taken ? create_s / taken : 0.0, create_max_s,
           budget_out ? "; the time budget ran out (slow disk?)" : "");

    report(CK_APPEND, "concurrent appends succeed");
    report(CK_READ, "concurrent tk_log_read of random offsets below the hwm");
    report(CK_ITER, "concurrent iterators yield contiguous, intact records");
    report(CK_TIME, "concurrent tk_log_offset_for_time consistent");
    report(CK_SEGS, "concurrent tk_log_segments, num_segments, size "
           "consistent");
    snprintf(what, sizeof what, "concurrent tk_snap_create on the shared log: "
             "hwm within the marks around the call, listed at once (%ld "
             "created, %ld refused TOO_SOON)", atomic_load(&snaps_created),
             atomic_load(&too_soon_seen));
    report(CK_SNAP, what);
    snprintf(what, sizeof what, "concurrent tk_snap_restore into new dirs: "
             "read-only hwm and every record as appended (%ld restored, %ld "
             "of them upto_offset; %ld NOT_FOUND, deleted meanwhile)",
             atomic_load(&restores_done), atomic_load(&restores_upto),
             atomic_load(&restores_lost));
    report(CK_RESTORE, what);
    snprintf(what, sizeof what, "concurrent tk_snap_verify (%ld verified; %ld "
             "NOT_FOUND, deleted meanwhile)", atomic_load(&verifies_done),
             atomic_load(&verifies_lost));
    report(CK_VERIFY, what);
    snprintf(what, sizeof what, "concurrent tk_snap_delete / tk_snap_cleanup "
             "from %d handles (%ld deleted, %ld NOT_FOUND as the other got "
             "there first; %ld cleanups removed %ld)", DELETERS,
             atomic_load(&deletes_done), atomic_load(&deletes_missed),
             atomic_load(&cleanups_done), atomic_load(&cleanup_deleted));
    report(CK_DELETE, what);
    report(CK_GONE, "a restore, verify or delete that loses the race to a "
           "delete fails with NOT_FOUND, not another code");
    ok(atomic_load(&snaps_created) >= (budget_out ? 2 : MIN_SNAPS) &&
       atomic_load(&restores_done) >= MIN_RESTORES &&
       atomic_load(&snaps_deleted) > 0,
       "the snapshot threads did their share (>= %d created, >= %d restored, "
       "some deleted)", budget_out ? 2 : MIN_SNAPS, MIN_RESTORES);
}

/* ------------------------------------------------------------------ */
/* Phase 3: background jobs                                             */
/* ------------------------------------------------------------------ */

/*
 * A second log, in a directory of its own, grows under J_APPENDERS threads
 * (records as in phase 1) while J_STARTERS threads start background jobs on
 * two managers they all share: one in link mode on the log's default
 * snapshot directory, one in copy mode on a directory of its own.  Each
 * round starts an async create, verify or restore, with 1 to 3 threads,
 * and then either waits for it, cancels it at a random moment (at once;
 * from another thread after a random pause, while this one waits; or once
 * its progress passes a random fraction) and waits, or frees it while it
 * runs (tk_job_free cancels and joins).
 * The appenders wait at J_GATES points for jobs to have started, so the
 * jobs run while the log grows whatever the relative speeds.
 *
 * Checked: a create's snapshot holds the log between the marks read
 * around tk_snap_create_async (the cut is taken before it returns) and is
 * listed; a restore holds exactly the live log's records below its hwm; a
 * verify passes; a job that was not canceled succeeds, one that was ends
 * OK or CANCELED and then leaves no snapshot, no restore target and no
 * temporary directory; the progress of a job on one thread never goes
 * back, never passes its total and ends at it.  Then main closes a third
 * manager while its jobs run (tk_snapmgr_close cancels and joins them:
 * each is done when it returns), and, once the appenders are done, checks
 * the log, every listed snapshot, an async cleanup's count, and that
 * nothing is left half-made.
 */

#define J_APPENDERS   2
#define J_PER_THREAD  1500
#define J_TOTAL       (J_APPENDERS * J_PER_THREAD)
#define J_SEGMENT     (16u * 1024u)     /* a few dozen files per snapshot */
#define J_STARTERS    3
#define J_ROUNDS      30                /* jobs each starter starts */
#define J_GATES       16
#define J_MAX_SNAPS   (J_STARTERS * J_ROUNDS + 8)

enum { JK_APPEND, JK_CREATE, JK_VERIFY, JK_RESTORE, JK_CANCEL, JK_PROGRESS,
       JK_CLOSE, JK_COUNT };

static struct check jchecks[JK_COUNT];

#define jfail(ck, ...)     check_fail(&jchecks[ck], __VA_ARGS__)
#define jran(ck)           check_ran(&jchecks[ck])
#define jreport(ck, what)  check_report(&jchecks[ck], what)

static tk_log *j_log;
static tk_snapmgr *j_link, *j_copy;     /* shared by every starter */
static char j_root[64], j_dir[96], j_copy_dir[96], j_close_dir[96], j_restores[96];
static atomic_int j_started;            /* jobs started, for the appenders' gates */
static atomic_int j_gates_open;

/* Snapshots the jobs created (and waited for), for the others to use. */
static struct j_snap {
    char id[TK_SNAP_ID_MAX];
    int64_t hwm;
    int copy;                           /* made by j_copy */
} j_snaps[J_MAX_SNAPS];
static int j_nsnaps;
static pthread_mutex_t j_mu = PTHREAD_MUTEX_INITIALIZER;

static atomic_long j_creates, j_verifies, j_restores_ok, j_canceled, j_cancel_asked,
    j_freed, j_freed_running, j_progress_watched;
static atomic_long j_freed_creates[2];  /* by manager: 0 link, 1 copy */

static void j_register(const tk_snapshot *sn, int copy) {
    pthread_mutex_lock(&j_mu);
    if (j_nsnaps < J_MAX_SNAPS) {
        snprintf(j_snaps[j_nsnaps].id, TK_SNAP_ID_MAX, "%s", sn->id);
        j_snaps[j_nsnaps].hwm = sn->high_water_mark;
        j_snaps[j_nsnaps].copy = copy;
        j_nsnaps++;
    }
    pthread_mutex_unlock(&j_mu);
}

/* A random registered snapshot into *out; 0 when there is none yet. */
static int j_pick(uint64_t *st, struct j_snap *out) {
    int found = 0;
    pthread_mutex_lock(&j_mu);
    if (j_nsnaps > 0) {
        *out = j_snaps[rng(st) % (uint64_t)j_nsnaps];
        found = 1;
    }
    pthread_mutex_unlock(&j_mu);
    return found;
}

static void *j_appender(void *arg) {
    uint32_t t = (uint32_t)(uintptr_t)arg;
    uint64_t st = 0x10B5A000u + t;
    tk_rec_in in[BATCH];
    struct rec_buf bufs[BATCH];
    tk_err err;
    uint32_t s = 0;

    while (s < J_PER_THREAD) {
        size_t n = (J_PER_THREAD - s >= BATCH && (rng(&st) & 1)) ? BATCH : 1;
        int gate = (int)((uint64_t)s * J_GATES / J_PER_THREAD);
        int64_t first = -1;
        while (gate * (J_STARTERS * J_ROUNDS) / J_GATES > atomic_load(&j_started) &&
               !atomic_load(&j_gates_open))
            sleep_us(100);
        for (size_t i = 0; i < n; i++)
            fill_rec(t, s + (uint32_t)i, &in[i], &bufs[i]);
        tk_code rc = tk_log_append(j_log, in, n, &first, &err);
        jran(JK_APPEND);
        if (rc != TK_OK) {
            jfail(JK_APPEND, "thread %u seq %u: tk_log_append: %s: %s", t, s,
                  code_name(rc), err.msg);
            break;
        }
        s += (uint32_t)n;
    }
    return NULL;
}

/*
 * The restored log in dir holds [0, want): every record intact, each
 * appender's records in order, and each the live log's record at that
 * offset.
 */
static int j_check_restored(const char *dir, int64_t want, tk_record *rec,
                            tk_record *live, char *why, size_t whylen) {
    tk_log_opts o;
    tk_log *ro = NULL;
    tk_iter *it = NULL;
    tk_err err;
    uint32_t next_seq[APPENDERS] = { 0 };
    int64_t off = 0;
    int done = 0, good = 1;

    tk_log_opts_init(&o);
    o.mode = TK_LOG_READONLY;
    tk_code rc = tk_log_open(dir, &o, &ro, &err);
    if (rc != TK_OK) {
        snprintf(why, whylen, "restored %s: tk_log_open(readonly): %s: %.500s", dir,
                 code_name(rc), err.msg);
        return 0;
    }
    if (tk_log_high_water_mark(ro) != want) {
        snprintf(why, whylen, "restored %s: hwm %" PRId64 ", want %" PRId64, dir,
                 tk_log_high_water_mark(ro), want);
        good = 0;
    }
    if (good && (rc = tk_iter_open(ro, 0, -1, &it, &err)) != TK_OK) {
        snprintf(why, whylen, "restored %s: tk_iter_open: %s: %.500s", dir,
                 code_name(rc), err.msg);
        good = 0;
    }
    while (good) {
        uint32_t t, s, lt, ls;
        rc = tk_iter_next(it, rec, &done, &err);
        if (rc != TK_OK) {
            snprintf(why, whylen, "restored %s: tk_iter_next at %" PRId64 ": %s: %.500s",
                     dir, off, code_name(rc), err.msg);
            good = 0;
        } else if (done) {
            break;
        } else if (!check_record(rec, off, &t, &s, why, whylen)) {
            good = 0;
        } else if (t >= J_APPENDERS || s != next_seq[t]) {
            snprintf(why, whylen, "restored %s: offset %" PRId64 " holds t%u s%u, "
                     "want s%u", dir, off, t, s, t < J_APPENDERS ? next_seq[t] : 0);
            good = 0;
        } else if ((rc = tk_log_read(j_log, off, live, &err)) != TK_OK ||
                   !check_record(live, off, &lt, &ls, why, whylen) ||
                   lt != t || ls != s) {
            if (rc != TK_OK)
                snprintf(why, whylen, "live tk_log_read(%" PRId64 "): %s: %.500s", off,
                         code_name(rc), err.msg);
            else
                snprintf(why, whylen, "restored %s: offset %" PRId64 " holds t%u s%u, "
                         "the live log t%u s%u", dir, off, t, s, lt, ls);
            good = 0;
        } else {
            next_seq[t]++;
            off++;
        }
    }
    if (good && off != want) {
        snprintf(why, whylen, "restored %s: %" PRId64 " records, want %" PRId64, dir,
                 off, want);
        good = 0;
    }
    tk_iter_close(it);
    tk_log_close(ro);
    return good;
}

static int path_exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

static void remove_tree(const char *path) {
    if (path_exists(path))
        nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/*
 * Until job is done: polls its progress (single-threaded jobs: it never
 * goes back), and cancels it once done passes cancel_at of the total
 * (cancel_at < 0: never).  Returns whether it asked for a cancel.
 */
static int j_watch(tk_job *job, int one_thread, double cancel_at, const char *what) {
    uint64_t last = 0, d, t;
    int asked = 0;
    jran(JK_PROGRESS);
    while (!tk_job_wait(job, 1)) {
        tk_job_progress(job, &d, &t);
        if (t > 0 && d > t)
            jfail(JK_PROGRESS, "%s: progress %" PRIu64 " of %" PRIu64, what, d, t);
        if (one_thread && d < last)
            jfail(JK_PROGRESS, "%s: progress went from %" PRIu64 " back to %" PRIu64,
                  what, last, d);
        last = d;
        if (!asked && cancel_at >= 0 && t > 0 && (double)d >= cancel_at * (double)t) {
            tk_job_cancel(job);
            asked = 1;
        }
    }
    atomic_fetch_add(&j_progress_watched, 1);
    return asked;
}

/* How a starter ends a job. */
enum { J_WAIT, J_CANCEL_NOW, J_CANCEL_LATER, J_CANCEL_AT, J_FREE };

/* Three in eight are waited for, two freed, one of each cancel. */
static int j_how(uint64_t *st) {
    static const int hows[8] = { J_WAIT, J_WAIT, J_WAIT, J_CANCEL_NOW, J_CANCEL_LATER,
                                 J_CANCEL_AT, J_FREE, J_FREE };
    return hows[rng(st) % 8];
}

struct j_later {
    tk_job *job;
    long pause_us;
};

static void *j_cancel_later(void *arg) {
    struct j_later *l = arg;
    sleep_us(l->pause_us);
    tk_job_cancel(l->job);
    return NULL;
}

/* Ends job as `how` says; returns its result (TK_OK for J_FREE), and
 * whether a cancel was asked in *asked. */
static tk_code j_finish(tk_job *job, int how, uint64_t *st, int one_thread,
                        const char *what, int *asked, tk_err *err) {
    double frac = (double)(rng(st) % 1000) / 1000.0;
    *asked = 0;
    switch (how) {
    case J_CANCEL_NOW:
        tk_job_cancel(job);
        *asked = 1;
        break;
    case J_CANCEL_LATER: {
        /* Another thread cancels while this one waits in tk_job_result. */
        struct j_later later = { job, (long)(rng(st) % 3000) };
        pthread_t th;
        *asked = 1;
        if (pthread_create(&th, NULL, j_cancel_later, &later) != 0) {
            tk_job_cancel(job);
            break;
        }
        atomic_fetch_add(&j_cancel_asked, 1);
        tk_code rc = tk_job_result(job, err);
        pthread_join(th, NULL);
        return rc;
    }
    case J_CANCEL_AT:
        *asked = j_watch(job, one_thread, frac, what);
        break;
    case J_FREE:
        atomic_fetch_add(&j_freed, 1);
        *asked = !tk_job_done(job);
        if (*asked)
            atomic_fetch_add(&j_freed_running, 1);
        tk_job_free(job);
        return TK_OK;
    default:
        j_watch(job, one_thread, -1, what);
        break;
    }
    if (*asked)
        atomic_fetch_add(&j_cancel_asked, 1);
    tk_code rc = tk_job_result(job, err);
    if (rc == TK_OK && how == J_WAIT) {
        uint64_t d, t;
        tk_job_progress(job, &d, &t);
        if (one_thread && d != t)
            jfail(JK_PROGRESS, "%s: done with progress %" PRIu64 " of %" PRIu64, what,
                  d, t);
    }
    return rc;
}

/* A result that is neither OK nor, after a cancel, CANCELED. */
static int j_bad_result(int ck, const char *what, tk_code rc, int asked, const tk_err *err) {
    if (asked)
        jran(JK_CANCEL);
    if (rc == TK_OK)
        return 0;
    if (rc == TK_CANCELED && asked) {
        atomic_fetch_add(&j_canceled, 1);
        return 0;
    }
    jfail(asked ? JK_CANCEL : ck, "%s: %s%s: %s", what, code_name(rc),
          asked ? " after a cancel (want OK or CANCELED)" : "", err->msg);
    return 1;
}

static void j_create(uint64_t *st, int how) {
    int copy = (int)(rng(st) & 1), asked = 0;
    tk_snapmgr *m = copy ? j_copy : j_link;
    tk_create_opts o;
    tk_job *job = NULL;
    tk_err err;
    char what[64];

    tk_create_opts_init(&o);
    o.threads = copy ? 1 + (unsigned)(rng(st) % 3) : 0;
    snprintf(what, sizeof what, "create (%s, %u threads)", copy ? "copy" : "link", o.threads);
    int64_t h0 = tk_log_high_water_mark(j_log);
    tk_code rc = tk_snap_create_async(m, j_log, &o, &job, &err);
    int64_t h1 = tk_log_high_water_mark(j_log);
    atomic_fetch_add(&j_started, 1);
    jran(JK_CREATE);
    if (rc != TK_OK) {
        jfail(JK_CREATE, "tk_snap_create_async: %s: %s", code_name(rc), err.msg);
        return;
    }
    if (how == J_FREE) {
        atomic_fetch_add(&j_freed_creates[copy], 1);
        j_finish(job, how, st, 0, what, &asked, &err);
        return;
    }
    rc = j_finish(job, how, st, !copy || o.threads == 1, what, &asked, &err);
    if (!j_bad_result(JK_CREATE, what, rc, asked, &err) && rc == TK_OK) {
        tk_snapshot sn, got;
        char path[4096] = "";
        memset(&sn, 0, sizeof sn);
        memset(&got, 0, sizeof got);
        if (!tk_job_snapshot(job, &sn, path, sizeof path)) {
            jfail(JK_CREATE, "%s: done, but tk_job_snapshot has no snapshot", what);
        } else if (sn.base_offset != 0 || sn.high_water_mark < h0 ||
                   sn.high_water_mark > h1 || !path_exists(path) ||
                   sn.mode != (copy ? TK_SNAP_COPY : TK_SNAP_LINK)) {
            jfail(JK_CREATE, "%s: snapshot %s holds [%" PRId64 ", %" PRId64 ") (marks "
                  "%" PRId64 "..%" PRId64 " around the call), mode %d, path '%.200s'",
                  what, sn.id, sn.base_offset, sn.high_water_mark, h0, h1, (int)sn.mode,
                  path);
        } else if ((rc = tk_snap_get(m, sn.id, &got, &err)) != TK_OK ||
                   got.high_water_mark != sn.high_water_mark) {
            jfail(JK_CREATE, "%s: tk_snap_get(%s) after the job: %s", what, sn.id,
                  code_name(rc));
        } else {
            j_register(&sn, copy);
            atomic_fetch_add(&j_creates, 1);
        }
        tk_snapshot_free(&got);
        tk_snapshot_free(&sn);
    }
    tk_job_free(job);
}

static void j_verify(uint64_t *st, int how) {
    struct j_snap s;
    tk_verify_opts o;
    tk_job *job = NULL;
    tk_err err;
    char what[128];
    int asked = 0;

    if (!j_pick(st, &s))
        return;
    memset(&o, 0, sizeof o);
    o.threads = 1 + (unsigned)(rng(st) % 3);
    snprintf(what, sizeof what, "verify %s (%u threads)", s.id, o.threads);
    tk_code rc = tk_snap_verify_async(s.copy ? j_copy : j_link, s.id, &o, &job, &err);
    atomic_fetch_add(&j_started, 1);
    jran(JK_VERIFY);
    if (rc != TK_OK) {
        jfail(JK_VERIFY, "tk_snap_verify_async(%s): %s: %s", s.id, code_name(rc), err.msg);
        return;
    }
    rc = j_finish(job, how, st, o.threads == 1, what, &asked, &err);
    if (how != J_FREE) {
        if (!j_bad_result(JK_VERIFY, what, rc, asked, &err) && rc == TK_OK)
            atomic_fetch_add(&j_verifies, 1);
        tk_job_free(job);
    }
}

static void j_restore(uint64_t *st, int how, int me, int round, tk_record *rec,
                      tk_record *live) {
    struct j_snap s;
    tk_restore_opts o;
    tk_job *job = NULL;
    tk_err err;
    char what[320], target[160], why[WHY_LEN];
    int asked = 0;

    if (!j_pick(st, &s))
        return;
    tk_restore_opts_init(&o);
    o.threads = 1 + (unsigned)(rng(st) % 2);
    int64_t want = s.hwm;
    if (rng(st) % 3 == 0) {
        o.upto_offset = (int64_t)(rng(st) % (uint64_t)(s.hwm + 1));
        want = o.upto_offset;
    }
    snprintf(target, sizeof target, "%s/r-%d-%d", j_restores, me, round);
    snprintf(what, sizeof what, "restore %s to %s (%u threads, upto %" PRId64 ")", s.id,
             target, o.threads, o.upto_offset);
    tk_code rc = tk_snap_restore_async(s.copy ? j_copy : j_link, s.id, target, &o, &job, &err);
    atomic_fetch_add(&j_started, 1);
    jran(JK_RESTORE);
    if (rc != TK_OK) {
        jfail(JK_RESTORE, "tk_snap_restore_async: %s: %s", code_name(rc), err.msg);
        return;
    }
    rc = j_finish(job, how, st, o.threads == 1, what, &asked, &err);
    if (how == J_FREE) {
        /* Canceled and joined, or finished first: all of it, or nothing. */
        jran(JK_CANCEL);
        if (path_exists(target) && !j_check_restored(target, want, rec, live, why, sizeof why))
            jfail(JK_CANCEL, "%s, freed while running: %s", what, why);
    } else if (!j_bad_result(JK_RESTORE, what, rc, asked, &err)) {
        if (rc == TK_OK && !j_check_restored(target, want, rec, live, why, sizeof why))
            jfail(JK_RESTORE, "%s: %s", what, why);
        else if (rc == TK_OK)
            atomic_fetch_add(&j_restores_ok, 1);
        else if (path_exists(target))
            jfail(JK_CANCEL, "%s: CANCELED, but the target exists", what);
    }
    if (how != J_FREE)
        tk_job_free(job);
    remove_tree(target);
}

static void *j_starter(void *arg) {
    int me = (int)(uintptr_t)arg;
    uint64_t st = 0x5DA27000u + (uint64_t)me;
    tk_record rec, live;

    memset(&rec, 0, sizeof rec);
    memset(&live, 0, sizeof live);
    for (int round = 0; round < J_ROUNDS; round++) {
        int how = j_how(&st);
        uint64_t op = rng(&st) % 3;
        if (round < 2 || op == 0)           /* something to verify and restore */
            j_create(&st, round < 2 ? J_WAIT : how);
        else if (op == 1)
            j_verify(&st, how);
        else
            j_restore(&st, how, me, round, &rec, &live);
    }
    tk_record_free(&rec);
    tk_record_free(&live);
    return NULL;
}

/* A manager of its own, closed while its jobs run: close cancels them and
 * waits, so each is done when it returns, OK or CANCELED, and nothing is
 * left half-made. */
static void j_close_while_running(void) {
    tk_snapmgr *m = NULL;
    tk_snapshot sn;
    tk_job *jobs[3] = { NULL, NULL, NULL };
    tk_err err;
    char target[160], why[WHY_LEN] = "", first[300] = "";
    tk_record rec, live;
    int good = 1;

    memset(&sn, 0, sizeof sn);
    memset(&rec, 0, sizeof rec);
    memset(&live, 0, sizeof live);
    snprintf(target, sizeof target, "%s/close-r", j_restores);
    tk_code rc = tk_snapmgr_open(j_dir, j_close_dir, TK_SNAP_COPY, &m, &err);
    if (rc == TK_OK)
        rc = tk_snap_create(m, j_log, NULL, &sn, &err);
    if (rc == TK_OK)
        rc = tk_snap_create_async(m, j_log, NULL, &jobs[0], &err);
    if (rc == TK_OK)
        rc = tk_snap_verify_async(m, sn.id, NULL, &jobs[1], &err);
    if (rc == TK_OK)
        rc = tk_snap_restore_async(m, sn.id, target, NULL, &jobs[2], &err);
    jran(JK_CLOSE);
    if (rc != TK_OK) {
        jfail(JK_CLOSE, "starting jobs to close under: %s: %s", code_name(rc), err.msg);
        good = 0;
    }
    tk_snapmgr_close(m);
    for (int i = 0; good && i < 3; i++) {
        jran(JK_CLOSE);
        if (!tk_job_done(jobs[i])) {
            jfail(JK_CLOSE, "%s job not done when tk_snapmgr_close returned",
                  tk_job_kind(jobs[i]));
            continue;
        }
        rc = tk_job_result(jobs[i], &err);
        if (rc != TK_OK && rc != TK_CANCELED)
            jfail(JK_CLOSE, "%s job under a closed manager: %s: %s", tk_job_kind(jobs[i]),
                  code_name(rc), err.msg);
        if (i == 2 && rc == TK_CANCELED && path_exists(target))
            jfail(JK_CLOSE, "restore canceled by close left %s", target);
        if (i == 2 && rc == TK_OK &&
            !j_check_restored(target, sn.high_water_mark, &rec, &live, why, sizeof why))
            jfail(JK_CLOSE, "restore finished before close: %s", why);
    }
    for (int i = 0; i < 3; i++)
        tk_job_free(jobs[i]);
    remove_tree(target);
    /* A new manager on that directory: nothing half-made, all verifies. */
    m = NULL;
    rc = tk_snapmgr_open(j_dir, j_close_dir, TK_SNAP_COPY, &m, &err);
    jran(JK_CLOSE);
    if (rc != TK_OK) {
        jfail(JK_CLOSE, "reopen the closed manager's directory: %s: %s", code_name(rc),
              err.msg);
    } else {
        tk_snapshot *list = NULL;
        size_t n = 0;
        long left = count_entries(j_close_dir, 1, first, sizeof first);
        if (left != 0)
            jfail(JK_CLOSE, "after the close: %ld left in %s, first %s", left, j_close_dir,
                  first);
        if ((rc = tk_snap_list(m, &list, &n, &err)) != TK_OK || n < 1 || n > 2)
            jfail(JK_CLOSE, "after the close: tk_snap_list: %s, %zu snapshots (want 1 or 2)",
                  code_name(rc), n);
        for (size_t i = 0; rc == TK_OK && i < n; i++)
            if (tk_snap_verify(m, list[i].id, NULL, &err) != TK_OK)
                jfail(JK_CLOSE, "after the close: verify %s: %s", list[i].id, err.msg);
        tk_snapshot_list_free(list, n);
    }
    tk_snapmgr_close(m);
    tk_snapshot_free(&sn);
    tk_record_free(&rec);
    tk_record_free(&live);
}

/* Every listed snapshot of m verifies; every one registered is listed,
 * and the others are at most the creates freed unwaited (a canceled create
 * leaves none).  Returns the number listed. */
static size_t j_check_listed(tk_snapmgr *m, int copy, const char *name) {
    tk_snapshot *list = NULL;
    size_t n = 0, bad = 0, missing = 0, registered = 0;
    tk_err err;
    char why[WHY_LEN] = "";
    tk_code rc = tk_snap_list(m, &list, &n, &err);

    if (rc != TK_OK)
        snprintf(why, sizeof why, "tk_snap_list: %s: %.500s", code_name(rc), err.msg);
    for (size_t i = 0; rc == TK_OK && i < n; i++)
        if (tk_snap_verify(m, list[i].id, NULL, &err) != TK_OK && bad++ == 0)
            snprintf(why, sizeof why, "tk_snap_verify(%s): %.500s", list[i].id, err.msg);
    for (int k = 0; rc == TK_OK && k < j_nsnaps; k++) {
        size_t i;
        if (j_snaps[k].copy != copy)
            continue;
        registered++;
        for (i = 0; i < n && strcmp(list[i].id, j_snaps[k].id) != 0; i++) {}
        if (i == n && missing++ == 0)
            snprintf(why, sizeof why, "snapshot %.64s made by a job is not listed",
                     j_snaps[k].id);
    }
    long freed = atomic_load(&j_freed_creates[copy]);
    ok(rc == TK_OK && bad == 0 && missing == 0 && n >= registered &&
       n <= registered + (size_t)freed,
       "jobs: the %s manager lists %zu snapshots: the %zu waited creates made, and at "
       "most the %ld creates freed unwaited; each verifies", name, n, registered, freed);
    diag(why);
    tk_snapshot_list_free(list, n);
    return rc == TK_OK ? n : 0;
}

/* Scan the jobs' log: every (thread, seq) once, each thread's in order. */
static void j_check_log(void) {
    tk_iter *it = NULL;
    tk_record rec;
    tk_err err;
    char why[WHY_LEN] = "";
    uint32_t next_seq[APPENDERS] = { 0 };
    int64_t off = 0;
    int done = 0, good = 1;

    memset(&rec, 0, sizeof rec);
    tk_code rc = tk_iter_open(j_log, 0, -1, &it, &err);
    if (rc != TK_OK) {
        snprintf(why, sizeof why, "tk_iter_open: %s: %s", code_name(rc), err.msg);
        good = 0;
    }
    while (good) {
        uint32_t t, s;
        rc = tk_iter_next(it, &rec, &done, &err);
        if (rc != TK_OK) {
            snprintf(why, sizeof why, "tk_iter_next at %" PRId64 ": %s: %s", off,
                     code_name(rc), err.msg);
            good = 0;
        } else if (done) {
            break;
        } else if (!check_record(&rec, off, &t, &s, why, sizeof why)) {
            good = 0;
        } else if (t >= J_APPENDERS || s != next_seq[t]) {
            snprintf(why, sizeof why, "offset %" PRId64 " holds t%u s%u", off, t, s);
            good = 0;
        } else {
            next_seq[t]++;
            off++;
        }
    }
    tk_iter_close(it);
    tk_record_free(&rec);
    ok(good && off == J_TOTAL && tk_log_high_water_mark(j_log) == J_TOTAL,
       "jobs: the log holds the %d records appended beside the jobs, each once, in "
       "order (%" PRId64 " found)", J_TOTAL, off);
    diag(why);
}

static void run_jobs(void) {
    pthread_t app[J_APPENDERS], starters[J_STARTERS];
    tk_log_opts opts;
    tk_err err;
    char first[300] = "";

    snprintf(j_root, sizeof j_root, "/tmp/takhin-jobs.XXXXXX");
    if (mkdtemp(j_root) == NULL) {
        ok(0, "jobs: mkdtemp: %s", strerror(errno));
        return;
    }
    snprintf(j_dir, sizeof j_dir, "%s/log", j_root);
    snprintf(j_copy_dir, sizeof j_copy_dir, "%s/snaps-copy", j_root);
    snprintf(j_close_dir, sizeof j_close_dir, "%s/snaps-close", j_root);
    snprintf(j_restores, sizeof j_restores, "%s/restores", j_root);
    mkdir(j_restores, 0755);
    printf("# jobs: %s\n", j_root);

    tk_log_opts_init(&opts);
    opts.max_segment_size = J_SEGMENT;
    opts.index_interval_bytes = INDEX_BYTES;
    tk_code rc = tk_log_open(j_dir, &opts, &j_log, &err);
    if (rc == TK_OK)
        rc = tk_snapmgr_open(j_dir, NULL, TK_SNAP_LINK, &j_link, &err);
    if (rc == TK_OK)
        rc = tk_snapmgr_open(j_dir, j_copy_dir, TK_SNAP_COPY, &j_copy, &err);
    ok(rc == TK_OK, "jobs: open a log and two managers to share (link, copy)");
    if (rc != TK_OK) {
        printf("#   %s: %s\n", code_name(rc), err.msg);
        tk_snapmgr_close(j_link);
        tk_log_close(j_log);
        return;
    }

    double t0 = now_s();
    int na = start_threads(app, J_APPENDERS, j_appender);
    int ns = start_threads(starters, J_STARTERS, j_starter);
    if (ns < J_STARTERS)
        atomic_store(&j_gates_open, 1);
    join_threads(starters, ns);
    atomic_store(&j_gates_open, 1);
    j_close_while_running();
    join_threads(app, na);
    ok(na == J_APPENDERS && ns == J_STARTERS, "jobs: started %d appenders and %d job "
       "starters", na, ns);
    printf("# jobs: %d jobs started in %.2f s: %ld creates, %ld verifies, %ld restores "
           "checked; %ld cancels asked, %ld CANCELED; %ld freed unwaited (%ld of them while "
           "running, %ld creates); progress watched on %ld\n", atomic_load(&j_started),
           now_s() - t0, atomic_load(&j_creates), atomic_load(&j_verifies),
           atomic_load(&j_restores_ok), atomic_load(&j_cancel_asked),
           atomic_load(&j_canceled), atomic_load(&j_freed), atomic_load(&j_freed_running),
           atomic_load(&j_freed_creates[0]) + atomic_load(&j_freed_creates[1]),
           atomic_load(&j_progress_watched));
    jreport(JK_APPEND, "jobs: appends beside running jobs succeed");
    jreport(JK_CREATE, "jobs: async creates on shared managers hold the log between the "
            "marks around the call, and are listed");
    jreport(JK_VERIFY, "jobs: async verifies pass");
    jreport(JK_RESTORE, "jobs: async restores hold exactly the live log's records below "
            "their hwm");
    jreport(JK_CANCEL, "jobs: a canceled or freed job ends OK or CANCELED, and a "
            "canceled restore leaves no target");
    jreport(JK_PROGRESS, "jobs: progress never passes the total; on one thread it never "
            "goes back and ends at the total");
    jreport(JK_CLOSE, "jobs: tk_snapmgr_close cancels and waits for its running jobs; "
            "nothing is left half-made");
    ok(atomic_load(&j_creates) >= 2 && atomic_load(&j_cancel_asked) > 0,
       "jobs: some jobs finished, some were canceled");

    j_check_log();
    j_check_listed(j_link, 0, "link");
    size_t n = j_check_listed(j_copy, 1, "copy");

    /* Cleanup as a job: all but the newest. */
    tk_job *job = NULL;
    tk_snapshot *list = NULL;
    size_t left_n = 0;
    rc = tk_snap_cleanup_async(j_copy, 1, -1, &job, &err);
    if (rc == TK_OK)
        rc = tk_job_result(job, &err);
    size_t count = rc == TK_OK ? tk_job_count(job) : 0;
    tk_job_free(job);
    if (rc == TK_OK)
        rc = tk_snap_list(j_copy, &list, &left_n, &err);
    ok(rc == TK_OK && n >= 1 && count == n - 1 && left_n == 1,
       "jobs: an async cleanup keeping 1 of %zu deletes %zu (%zu left)", n, count, left_n);
    if (rc != TK_OK)
        printf("#   %s: %s\n", code_name(rc), err.msg);
    tk_snapshot_list_free(list, left_n);

    char linkdir[128];
    snprintf(linkdir, sizeof linkdir, "%s/.snapshots", j_dir);
    long l1 = count_entries(linkdir, 1, first, sizeof first);
    long l2 = count_entries(j_copy_dir, 1, first, sizeof first);
    long l3 = count_entries(j_restores, 0, first, sizeof first);
    ok(l1 == 0 && l2 == 0 && l3 == 0, "jobs: nothing half-made: no .tmp-/.del- in either "
       "snapshot dir (%ld, %ld), nothing in the restore dir (%ld)", l1, l2, l3);
    if (l1 || l2 || l3)
        diag(first);

    tk_snapmgr_close(j_link);
    tk_snapmgr_close(j_copy);
    tk_log_close(j_log);
    ok(nftw(j_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS) == 0, "jobs: remove %s", j_root);
}

int main(void) {
    char dir[] = "/tmp/takhin-threads.XXXXXX";
    char root[] = "/tmp/takhin-threads-restore.XXXXXX";
    tk_snapmgr *sm = NULL;
    const char *to = getenv("TK_TEST_TIMEOUT");
    tk_log_opts opts;
    tk_err err;

    signal(SIGALRM, watchdog);
    alarm(to ? (unsigned)atoi(to) : 300u);
    if (mkdtemp(dir) == NULL || mkdtemp(root) == NULL) {
        printf("Bail out! mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    snprintf(g_dir, sizeof g_dir, "%s", dir);
    snprintf(g_restore_root, sizeof g_restore_root, "%s", root);
    printf("# dir %s, restores in %s\n", dir, root);

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
        sm = check_snapshots();
        check_readonly(dir);
        check_reopen(dir, &opts);
        if (sm != NULL)
            verify_all(sm, "after the writer reopened and appended");
        tk_snapmgr_close(sm);
        tk_log_close(g_log);
        run_jobs();
    }

    int rm = nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    int rm2 = nftw(root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    ok(rm == 0 && rm2 == 0, "remove %s and %s", dir, root);
    return tap_done();
}
